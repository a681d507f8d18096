//! `verify`: the whole proof in one pass over the store.
//!
//! One scan of the events in position order (which is sequence order within each
//! aggregate; the cheapest order to read) does two things at once:
//! - checks every aggregate's hash chain against its recorded head (the checks of
//!   [`crate::verify_stream`]);
//! - folds every ride's events into the rows `rides`, `billing_ledger` and `payments`
//!   must hold ([`projections::rows::RideFold`], the same rows a rebuild writes).
//!
//! The folded rows are then diffed with the live tables, and each difference names
//! the ride. With `scratch`, the folded rows are also written into a schema of their
//! own (`verify_<time>`), kept for the auditor to query side by side with `public`.
//! With a window, only the aggregates with an event recorded in it are checked (each
//! with its whole history: a chain can only be checked from its start).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::chain::{event_hash_text, HashError, HashedFields, GENESIS};
use futures::TryStreamExt;
use projections::compare::compare_live;
use projections::rows::{parse_ride_event, At, RideFold, RowDiff};
use sqlx::PgPool;
use uuid::Uuid;

use crate::ChainBreak;

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Events read and hash-checked.
    pub events: u64,
    /// Aggregates whose chain was checked.
    pub aggregates: u64,
    /// Rides folded and compared.
    pub rides: u64,
    /// Broken chains.
    pub chain_breaks: Vec<ChainBreak>,
    /// Read-model rows that differ from the events.
    pub row_diffs: Vec<RowDiff>,
    /// Events whose payload is not a readable ride event.
    pub unreadable: Vec<String>,
    /// The scratch schema written, if asked for.
    pub scratch_schema: Option<String>,
}

impl VerifyReport {
    /// Whether everything held.
    pub fn passed(&self) -> bool {
        self.chain_breaks.is_empty() && self.row_diffs.is_empty() && self.unreadable.is_empty()
    }
}

/// The part of an event `verify` needs, as PostgreSQL sends it (JSON as text),
/// borrowed from a [`Batch`].
struct Row<'a> {
    position: i64,
    aggregate_type: &'a str,
    aggregate_id: Uuid,
    sequence: i64,
    event_type: &'a str,
    event_version: i32,
    payload: &'a str,
    metadata: &'a str,
    recorded_at: DateTime<Utc>,
    hash: &'a [u8],
    hash_version: i16,
}

/// Rows as read, their variable-length fields packed into two buffers: a handful of
/// allocations a batch rather than five a row, freed by the checker in one go.
#[derive(Default)]
struct Batch {
    text: String,
    bytes: Vec<u8>,
    rows: Vec<Packed>,
}

/// A row of a [`Batch`]: fixed fields, and where its strings end in `text` (aggregate
/// type, event type, payload, metadata, each starting where the one before ends).
struct Packed {
    position: i64,
    aggregate_id: Uuid,
    sequence: i64,
    event_version: i32,
    recorded_at: DateTime<Utc>,
    text_start: usize,
    text_ends: [usize; 4],
    hash: std::ops::Range<usize>,
    hash_version: i16,
}

impl Batch {
    fn with_capacity(rows: usize) -> Self {
        Batch {
            text: String::with_capacity(rows * 640),
            bytes: Vec::with_capacity(rows * 32),
            rows: Vec::with_capacity(rows),
        }
    }

    /// Appends a row of the verify query (its aggregate id already read), columns
    /// taken by position.
    fn push(&mut self, row: &sqlx::postgres::PgRow, aggregate_id: Uuid) -> Result<(), sqlx::Error> {
        use sqlx::Row as _;
        let text_start = self.text.len();
        let mut text_ends = [0; 4];
        for (end, column) in text_ends.iter_mut().zip([1usize, 4, 6, 7]) {
            self.text.push_str(row.try_get::<&str, _>(column)?);
            *end = self.text.len();
        }
        let hash_start = self.bytes.len();
        self.bytes.extend_from_slice(row.try_get::<&[u8], _>(9)?);
        self.rows.push(Packed {
            position: row.try_get(0)?,
            aggregate_id,
            sequence: row.try_get(3)?,
            event_version: row.try_get(5)?,
            recorded_at: row.try_get(8)?,
            text_start,
            text_ends,
            hash: hash_start..self.bytes.len(),
            hash_version: row.try_get(10)?,
        });
        Ok(())
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    fn clear(&mut self) {
        self.text.clear();
        self.bytes.clear();
        self.rows.clear();
    }

    fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|p| {
            let [t0, t1, t2, t3] = p.text_ends;
            Row {
                position: p.position,
                aggregate_type: &self.text[p.text_start..t0],
                aggregate_id: p.aggregate_id,
                sequence: p.sequence,
                event_type: &self.text[t0..t1],
                event_version: p.event_version,
                payload: &self.text[t1..t2],
                metadata: &self.text[t2..t3],
                recorded_at: p.recorded_at,
                hash: &self.bytes[p.hash.clone()],
                hash_version: p.hash_version,
            }
        })
    }
}

/// Rows per batch handed from the reader to the checker.
const BATCH: usize = 1024;

type Heads = HashMap<(String, Uuid), (i64, Vec<u8>)>;

/// The checker thread: every chain link, every ride folded, every recorded head seen.
/// Events arrive in position order, so the aggregates interleave: each has its chain
/// state in a map (its type interned), closed against its recorded head at the end.
fn check_all(
    inbox: std::sync::mpsc::Receiver<Batch>,
    done: std::sync::mpsc::Sender<Batch>,
    heads: std::sync::Arc<Heads>,
    events: usize,
) -> (VerifyReport, RideFold, Vec<(String, Uuid)>) {
    let mut report = VerifyReport::default();
    let mut fold = RideFold::default();
    // Room for a ledger row per event and a ride per aggregate of the whole store up
    // front (address space, not memory: only what is written is touched), so that
    // neither this part nor the merge of the parts ever copies them to grow.
    fold.ledger.reserve(events);
    fold.rides.reserve(heads.len());
    fold.payments.reserve(heads.len());
    let mut types: Vec<String> = Vec::new();
    let mut chains: HashMap<(Uuid, usize), Chain> = HashMap::with_capacity(heads.len());
    for mut batch in inbox {
        for row in batch.iter() {
            report.events += 1;
            let type_index = match types.iter().position(|t| *t == row.aggregate_type) {
                Some(i) => i,
                None => {
                    types.push(row.aggregate_type.to_owned());
                    types.len() - 1
                }
            };
            let c = chains
                .entry((row.aggregate_id, type_index))
                .or_insert_with(|| Chain {
                    aggregate_type: row.aggregate_type.to_owned(),
                    aggregate_id: row.aggregate_id,
                    expected_sequence: 1,
                    prev: GENESIS.to_vec(),
                });
            if let Err(e) = check_link(c, &row, &mut report.chain_breaks) {
                report.unreadable.push(format!(
                    "{} {} #{}: cannot hash it: {e}",
                    row.aggregate_type, row.aggregate_id, row.sequence
                ));
                continue;
            }
            if row.aggregate_type == "ride" {
                let at = At {
                    position: row.position,
                    sequence: row.sequence,
                    recorded_at: row.recorded_at,
                    hash: row.hash,
                };
                match parse_ride_event(row.event_type, row.event_version, row.payload) {
                    Ok(event) => fold.apply(row.aggregate_id, at, event),
                    Err(reason) => report.unreadable.push(format!(
                        "ride {} #{} ({}): {reason}",
                        row.aggregate_id, row.sequence, row.event_type
                    )),
                }
            }
        }
        // Back to the reader, to be filled again: its buffers stay warm.
        batch.clear();
        let _ = done.send(batch);
    }
    report.aggregates = chains.len() as u64;
    let mut seen = Vec::with_capacity(chains.len());
    for chain in chains.into_values() {
        close_chain(&chain, &heads, &mut report.chain_breaks);
        seen.push((chain.aggregate_type, chain.aggregate_id));
    }
    (report, fold, seen)
}

/// Checker threads: rows are dealt by aggregate, so each chain stays on one thread.
const CHECKERS: usize = 2;

/// The chain of the aggregate being read.
struct Chain {
    aggregate_type: String,
    aggregate_id: Uuid,
    expected_sequence: i64,
    prev: Vec<u8>,
}

/// Runs the audit (see the module doc). `progress(events_done, events_total)`.
pub async fn verify(
    pool: &PgPool,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    scratch: bool,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<VerifyReport, anyhow::Error> {
    // Without a window the parameters still bind, to a filter PostgreSQL evaluates once.
    let scope = match window {
        None => " WHERE $1::timestamptz <= $2::timestamptz".to_owned(),
        Some(_) => " WHERE (aggregate_type, aggregate_id) IN (SELECT DISTINCT aggregate_type, aggregate_id \
                    FROM events WHERE recorded_at >= $1 AND recorded_at < $2)"
            .to_owned(),
    };
    let (from, to) = window.unwrap_or((DateTime::<Utc>::UNIX_EPOCH, DateTime::<Utc>::UNIX_EPOCH));
    let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM events{scope}"))
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?;
    let heads: HashMap<(String, Uuid), (i64, Vec<u8>)> = sqlx::query_as::<_, (String, Uuid, i64, Vec<u8>)>(
        &format!("SELECT aggregate_type, aggregate_id, version, head_hash FROM streams{scope}"),
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(t, i, v, h)| ((t, i), (v, h)))
    .collect();

    // Hashing and folding run on a thread of their own, fed batches of rows, so that
    // reading (here) and checking (there) overlap.
    let heads = std::sync::Arc::new(heads);
    let mut outboxes = Vec::with_capacity(CHECKERS);
    let mut checkers = Vec::with_capacity(CHECKERS);
    // Checked batches come back empty and are reused.
    let (done, recycled) = std::sync::mpsc::channel::<Batch>();
    for _ in 0..CHECKERS {
        let (outbox, inbox) = std::sync::mpsc::sync_channel::<Batch>(8);
        let (heads, done) = (heads.clone(), done.clone());
        let events = usize::try_from(total).unwrap_or(0) + BATCH;
        checkers.push(tokio::task::spawn_blocking(move || {
            check_all(inbox, done, heads, events)
        }));
        outboxes.push((outbox, Batch::with_capacity(BATCH)));
    }
    {
        let sql = format!(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
             payload::text AS payload, metadata::text AS metadata, recorded_at, hash, hash_version \
             FROM events{scope} ORDER BY position"
        );
        let mut rows = sqlx::query(&sql).bind(from).bind(to).fetch(pool);
        let mut read = 0u64;
        while let Some(row) = rows.try_next().await? {
            let aggregate: Uuid = sqlx::Row::try_get(&row, 2)?;
            let (outbox, batch) = &mut outboxes[(aggregate.as_u128() % CHECKERS as u128) as usize];
            batch.push(&row, aggregate)?;
            read += 1;
            if batch.len() == BATCH
                && outbox
                    .send(std::mem::replace(
                        batch,
                        recycled
                            .try_recv()
                            .unwrap_or_else(|_| Batch::with_capacity(BATCH)),
                    ))
                    .is_err()
            {
                break;
            }
            if read.is_multiple_of(20_000) {
                progress(read, total as u64);
            }
        }
        for (outbox, batch) in outboxes {
            let _ = outbox.send(batch);
        }
    }
    let mut report = VerifyReport::default();
    let mut fold = RideFold::default();
    let mut seen: std::collections::HashSet<(String, Uuid)> =
        std::collections::HashSet::with_capacity(heads.len());
    for checker in checkers {
        let (part, part_fold, part_seen) = checker.await?;
        report.events += part.events;
        report.aggregates += part.aggregates;
        report.chain_breaks.extend(part.chain_breaks);
        report.unreadable.extend(part.unreadable);
        if fold.rides.is_empty() && fold.ledger.is_empty() {
            fold = part_fold; // the first part as it is, not copied
        } else {
            fold.rides.extend(part_fold.rides);
            fold.ledger.extend(part_fold.ledger);
            fold.payments.extend(part_fold.payments);
        }
        seen.extend(part_seen);
    }
    for ((t, i), (version, _)) in heads.iter() {
        if !seen.contains(&(t.clone(), *i)) {
            report.chain_breaks.push(ChainBreak {
                aggregate_type: t.clone(),
                aggregate_id: *i,
                sequence: *version,
                problem: format!("streams records version {version} but the aggregate has no events"),
            });
        }
    }
    report.chain_breaks.sort_by(|a, b| {
        (&a.aggregate_type, a.aggregate_id, a.sequence).cmp(&(&b.aggregate_type, b.aggregate_id, b.sequence))
    });
    progress(report.events, total as u64);
    report.rides = fold.rides.len() as u64;

    // With a window, the rides of the window (as `streams` knows them, so that a ride
    // whose events were deleted still has its rows looked at).
    let only: Option<Vec<Uuid>> = match window {
        None => None,
        Some(_) => Some(
            sqlx::query_scalar(&format!(
                "SELECT aggregate_id FROM streams{scope} AND aggregate_type = 'ride'"
            ))
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await?,
        ),
    };
    report.row_diffs = compare_live(pool, &fold, only.as_deref()).await?.diffs;
    if scratch {
        report.scratch_schema = Some(write_scratch(pool, &fold).await?);
    }
    Ok(report)
}

/// Checks one link of `chain`; an error when the event's JSON cannot be read (its hash
/// cannot be computed then, and the chain is left where it was).
fn check_link(chain: &mut Chain, row: &Row<'_>, breaks: &mut Vec<ChainBreak>) -> Result<(), HashError> {
    let broken = |sequence: i64, problem: String| ChainBreak {
        aggregate_type: row.aggregate_type.to_owned(),
        aggregate_id: row.aggregate_id,
        sequence,
        problem,
    };
    if row.sequence != chain.expected_sequence {
        breaks.push(broken(
            row.sequence,
            format!(
                "sequence {} where {} was expected (an event is missing)",
                row.sequence, chain.expected_sequence
            ),
        ));
    }
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = row.aggregate_id.hyphenated().encode_lower(&mut id);
    let computed = event_hash_text(
        row.hash_version,
        &chain.prev,
        &HashedFields::<str> {
            aggregate_type: row.aggregate_type,
            aggregate_id: id,
            sequence: row.sequence,
            event_type: row.event_type,
            event_version: row.event_version,
            payload: row.payload,
            metadata: row.metadata,
        },
    )?;
    if computed.as_slice() != row.hash {
        breaks.push(broken(
            row.sequence,
            format!(
                "{} event does not match its hash (edited, or its predecessor was)",
                row.event_type
            ),
        ));
    }
    chain.prev.clear();
    chain.prev.extend_from_slice(row.hash);
    chain.expected_sequence = row.sequence + 1;
    Ok(())
}

fn close_chain(chain: &Chain, heads: &HashMap<(String, Uuid), (i64, Vec<u8>)>, breaks: &mut Vec<ChainBreak>) {
    let last = chain.expected_sequence - 1;
    let broken = |sequence: i64, problem: String| ChainBreak {
        aggregate_type: chain.aggregate_type.clone(),
        aggregate_id: chain.aggregate_id,
        sequence,
        problem,
    };
    match heads.get(&(chain.aggregate_type.clone(), chain.aggregate_id)) {
        None => breaks.push(broken(0, "no chain head recorded in streams".into())),
        Some((version, _)) if *version != last => breaks.push(broken(
            last,
            format!(
                "the chain ends at {last} but streams records version {version} (events deleted at the end?)"
            ),
        )),
        Some((_, hash)) if *hash != chain.prev => {
            breaks.push(broken(
                last,
                "the last event is not the recorded chain head".into(),
            ));
        }
        Some(_) => {}
    }
}

/// Writes the folded rows into a new schema `verify_<unix time>` (tables shaped like
/// the live ones) and returns its name.
async fn write_scratch(pool: &PgPool, fold: &RideFold) -> Result<String, anyhow::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let schema = format!("verify_{now}");
    projections::rebuild::create_shadow(pool, &schema, &["rides", "billing_ledger", "payments"]).await?;
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SET LOCAL search_path = {schema}, public"))
        .execute(&mut *tx)
        .await?;
    projections::rows::copy_rows(&mut tx, fold).await?;
    tx.commit().await?;
    Ok(schema)
}
