//! # replay-tools
//!
//! What auditors and operators run against the event store (the binary's `--help`
//! is the manual):
//! - [`billing`]: a ride's billing history, or a period's ledger, replayed from the
//!   events and compared with the read models; a ride as it stood at a moment;
//! - [`audit`]: `verify` — every hash chain, and rides / billing_ledger / payments
//!   folded from the events and diffed with the live tables, in one pass;
//! - [`status`]: every consumer of the feed, its checkpoint, lag, stall and last error;
//! - [`report`]: the JSON reports of `verify --json` and `billing period --json`;
//! - [`audit_log`]: `audit verify --receipt`, a signed tree head an auditor kept
//!   checked against the events (the proofs themselves are `projections::audit_log`);
//! - [`runs`]: each `verify` run recorded in the table `verify_runs`;
//! - this module: the chain checks themselves ([`verify_stream`], [`verify_chains`]).
//!
//! Rebuilds are `projections::rebuild`, driven by the binary with a progress bar.
//!
//! ## What `verify_chains` proves
//! For each aggregate: sequences run 1, 2, 3 … without a hole; each event's hash is
//! `domain::chain::event_hash_versioned(its hash_version, previous hash, its stored
//! fields)`; and the last event is
//! the head recorded in `streams` (same version, same hash). So an edited payload or
//! metadata breaks its own hash, a deleted event in the middle breaks the sequence and
//! the next link, and a deleted *last* event leaves `streams` pointing past the end.

pub mod audit;
pub mod audit_log;
pub mod billing;
pub mod report;
pub mod runs;
pub mod status;

use std::collections::HashMap;

use domain::chain::{event_hash_versioned, HashedFields, GENESIS};
use futures::TryStreamExt;
use migrations::StoredEvent;
use sqlx::PgPool;
use uuid::Uuid;

/// One place where the store does not prove itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// `ride`, `match`, ...
    pub aggregate_type: String,
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// The sequence where it breaks (0 when it is about the whole stream).
    pub sequence: i64,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} #{}: {}",
            self.aggregate_type, self.aggregate_id, self.sequence, self.problem
        )
    }
}

/// Verifies one aggregate's events (in sequence order; `hash_versions[i]` is the chain
/// version of `events[i]`) against its recorded head `(version, head_hash)`.
pub fn verify_stream(
    events: &[StoredEvent],
    hash_versions: &[i16],
    head: Option<&(i64, Vec<u8>)>,
) -> Vec<ChainBreak> {
    let mut breaks = Vec::new();
    let Some(first) = events.first() else {
        return breaks;
    };
    let broken = |sequence: i64, problem: String| ChainBreak {
        aggregate_type: first.aggregate_type.clone(),
        aggregate_id: first.aggregate_id,
        sequence,
        problem,
    };
    let mut prev: Vec<u8> = GENESIS.to_vec();
    for (i, event) in events.iter().enumerate() {
        let expected_sequence = i as i64 + 1;
        if event.sequence != expected_sequence {
            breaks.push(broken(
                event.sequence,
                format!(
                    "sequence {} where {expected_sequence} was expected (an event is missing)",
                    event.sequence
                ),
            ));
        }
        let id = event.aggregate_id.to_string();
        let fields = HashedFields {
            aggregate_type: &event.aggregate_type,
            aggregate_id: &id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: event.event_version,
            payload: &event.payload,
            metadata: &event.metadata,
        };
        let version = hash_versions
            .get(i)
            .copied()
            .unwrap_or(domain::chain::CHAIN_VERSION);
        match event_hash_versioned(version, &prev, &fields) {
            Ok(computed) if computed.as_slice() == event.hash.as_slice() => {}
            Ok(_) => breaks.push(broken(
                event.sequence,
                format!(
                    "{} event does not match its hash (edited, or its predecessor was)",
                    event.event_type
                ),
            )),
            Err(error) => breaks.push(broken(
                event.sequence,
                format!("{} event: {error}", event.event_type),
            )),
        }
        prev = event.hash.clone();
    }
    let last = events.last().map(|e| (e.sequence, e.hash.clone()));
    match (head, last) {
        (None, _) => breaks.push(broken(0, "no chain head recorded in streams".into())),
        (Some((version, hash)), Some((seq, last_hash))) => {
            if *version != seq {
                breaks.push(broken(
                    seq,
                    format!("the chain ends at {seq} but streams records version {version} (events deleted at the end?)"),
                ));
            } else if *hash != last_hash {
                breaks.push(broken(
                    seq,
                    "the last event is not the recorded chain head".into(),
                ));
            }
        }
        (Some(_), None) => {}
    }
    breaks
}

/// An event with its chain version.
#[derive(sqlx::FromRow)]
struct Versioned {
    #[sqlx(flatten)]
    event: StoredEvent,
    hash_version: i16,
}

/// Verifies every aggregate's chain; returns what is broken (empty when all is well)
/// and how many events were checked.
pub async fn verify_chains(pool: &PgPool) -> Result<(Vec<ChainBreak>, u64), sqlx::Error> {
    let heads: HashMap<(String, Uuid), (i64, Vec<u8>)> = sqlx::query_as::<_, (String, Uuid, i64, Vec<u8>)>(
        "SELECT aggregate_type, aggregate_id, version, head_hash FROM streams",
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(t, i, v, h)| ((t, i), (v, h)))
    .collect();
    let mut seen: HashMap<(String, Uuid), ()> = HashMap::with_capacity(heads.len());
    let mut breaks = Vec::new();
    let mut checked = 0u64;
    let mut current: Vec<StoredEvent> = Vec::new();
    let mut versions: Vec<i16> = Vec::new();
    let mut rows = sqlx::query_as::<_, Versioned>(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, \
         recorded_at, hash, hash_version FROM events ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .fetch(pool);
    let mut flush =
        |current: &mut Vec<StoredEvent>, versions: &mut Vec<i16>, breaks: &mut Vec<ChainBreak>| {
            if let Some(first) = current.first() {
                let key = (first.aggregate_type.clone(), first.aggregate_id);
                breaks.extend(verify_stream(current, versions, heads.get(&key)));
                seen.insert(key, ());
            }
            current.clear();
            versions.clear();
        };
    while let Some(Versioned { event, hash_version }) = rows.try_next().await? {
        checked += 1;
        let same = current.first().is_some_and(|f| {
            f.aggregate_id == event.aggregate_id && f.aggregate_type == event.aggregate_type
        });
        if !same {
            flush(&mut current, &mut versions, &mut breaks);
        }
        current.push(event);
        versions.push(hash_version);
    }
    flush(&mut current, &mut versions, &mut breaks);
    for ((t, i), (version, _)) in &heads {
        if !seen.contains_key(&(t.clone(), *i)) {
            breaks.push(ChainBreak {
                aggregate_type: t.clone(),
                aggregate_id: *i,
                sequence: *version,
                problem: format!("streams records version {version} but the aggregate has no events"),
            });
        }
    }
    Ok((breaks, checked))
}
