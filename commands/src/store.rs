//! The PostgreSQL event store: appends with optimistic concurrency, command
//! idempotency, participant reservations and deadlines, all in one transaction.
//!
//! ## How an append works
//! Every process has one writer task. Callers send it an [`AppendRequest`] and wait for
//! the [`AppendOutcome`]. The writer takes every request that is waiting (up to
//! [`MAX_BATCH`]) and commits them together — one fsync for the whole batch:
//!
//! - **fast path** ([`write_batch_fast`]): one autocommitted statement. Its `UPDATE` of
//!   the single `event_store` row is the lock: appends from every process are
//!   serialized there, so positions are dense and committed in order (guarantee 3). It
//!   assumes no request is a duplicate, stale or claiming a held user; the unique
//!   indexes check that against everything committed, and any violation fails the whole
//!   statement;
//! - **careful path** ([`write_batch`]), taken when the fast one failed: lock the same
//!   row, read the command log, stream versions and reservations the batch touches, and
//!   decide each request in order — a known command key is a duplicate (its first answer
//!   is returned, nothing is written — guarantee 2); a stale expected version is a
//!   conflict (guarantee 1); a claim on a user held elsewhere is `already_active` — then
//!   write the survivors and commit.
//!
//! In the careful path the unique `(aggregate_type, aggregate_id, sequence)` constraint
//! is only a backstop: if it fired there, the batch would fail and every caller retry.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

/// The most requests one transaction takes.
pub const MAX_BATCH: usize = 256;

/// The channel that wakes feed readers after a commit; the payload is the new head.
pub const NOTIFY_CHANNEL: &str = "nebengjek_events";

/// Errors of the store itself (not refusals).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The writer task is gone (the store is shutting down).
    #[error("the event store writer has stopped")]
    WriterGone,
}

/// One event to append (its sequence follows from the request's expected version).
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// snake_case name.
    pub event_type: &'static str,
    /// Payload schema version.
    pub event_version: i32,
    /// The payload.
    pub payload: Value,
    /// The metadata (with `event_id`).
    pub metadata: Value,
    /// The chained hash, computed by the caller from the previous head.
    pub hash: Vec<u8>,
}

/// A change to who is in which open match or ride.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReservationOp {
    /// Hold the user for this request's aggregate, unless another holds them.
    Claim(Uuid),
    /// Let the user go, if this request's aggregate holds them.
    Release(Uuid),
    /// Move the user from this request's aggregate to another.
    Transfer {
        /// The user.
        user: Uuid,
        /// The new holder's type.
        to_type: &'static str,
        /// The new holder's id.
        to_id: Uuid,
    },
}

/// What becomes of the aggregate's deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineChange {
    /// Leave it.
    Keep,
    /// Set or move it.
    Set(DateTime<Utc>),
    /// Remove it.
    Clear,
}

/// What the writer is asked to do for one command.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// The idempotency key, if the command has one.
    pub command_key: Option<String>,
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: Uuid,
    /// The version the events were decided against (0 for a new aggregate).
    pub expected_version: i64,
    /// The events (empty for a refusal that is only logged).
    pub events: Vec<NewEvent>,
    /// When the command was handled.
    pub recorded_at: DateTime<Utc>,
    /// Reservation changes, in order.
    pub reservations: Vec<ReservationOp>,
    /// The deadline after the events.
    pub deadline: DeadlineChange,
    /// The answer to log for the command key.
    pub response: Value,
}

/// What became of an [`AppendRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum AppendOutcome {
    /// Written; the events have these positions (empty range for a logged refusal).
    Written {
        /// Position of the first event (0 if none).
        first_position: i64,
        /// Position of the last event (0 if none).
        last_position: i64,
    },
    /// The command key was seen before; this is its first answer. Nothing written.
    Duplicate(Value),
    /// The aggregate moved on since it was read. Nothing written.
    Conflict {
        /// The aggregate's version now.
        actual_version: i64,
    },
    /// A claimed user is in another open match or ride. Nothing written but the answer.
    AlreadyActive {
        /// Who.
        user_id: Uuid,
        /// `ride` or `match`.
        held_by_type: String,
        /// The holder.
        held_by_id: Uuid,
    },
}

/// A stream's new head: version, hash of its last event, when.
type StreamHead = (i64, Vec<u8>, DateTime<Utc>);

/// A command log row: key, aggregate type and id, answer, first position, when.
type LogRow = (String, &'static str, Uuid, Value, Option<i64>, DateTime<Utc>);

type Job = (AppendRequest, oneshot::Sender<Result<AppendOutcome, StoreError>>);

/// A handle on the event store: the pool for reads and the writer for appends.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    writer: mpsc::Sender<Job>,
}

impl EventStore {
    /// Starts the writer task. It has connections of its own, on which its statements
    /// are planned once (generic plans): re-planning a 37-parameter statement for every
    /// batch cost more than running it. The task ends when every handle is dropped.
    pub fn start(pool: PgPool) -> Self {
        let options = (*pool.connect_options()).clone();
        let writer_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET plan_cache_mode = force_generic_plan")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect_lazy_with(options);
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer_loop(writer_pool, rx).instrument(tracing::info_span!("event_store_writer")));
        Self { pool, writer: tx }
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends (or logs, or refuses) one command's outcome.
    pub async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send((request, tx))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// The first answer logged for a command key, if any.
    pub async fn logged_response(&self, command_key: &str) -> Result<Option<Value>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT response FROM command_log WHERE command_key = $1")
                .bind(command_key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The open match or ride a user is in, as `(aggregate_type, aggregate_id)`.
    pub async fn holder_of(&self, user_id: Uuid) -> Result<Option<(String, Uuid)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT aggregate_type, aggregate_id FROM participant_reservations WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Deadlines due at or before `now`, earliest first.
    pub async fn due_deadlines(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(String, Uuid, DateTime<Utc>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT aggregate_type, aggregate_id, due_at FROM deadlines WHERE due_at <= $1 \
             ORDER BY due_at LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The open aggregates of a type: every open match (or ride with a deadline) has a
    /// deadline until it closes.
    pub async fn with_deadlines(&self, aggregate_type: &str) -> Result<Vec<Uuid>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT aggregate_id FROM deadlines WHERE aggregate_type = $1")
                .bind(aggregate_type)
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// The earliest deadline, if any.
    pub async fn next_deadline(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT min(due_at) FROM deadlines")
            .fetch_one(&self.pool)
            .await?)
    }
}

async fn writer_loop(pool: PgPool, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Let the callers just woken by the previous commit send their next appends, so
        // the batch is bigger and the fixed cost of a transaction is shared by more.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let requests: Vec<&AppendRequest> = batch.iter().map(|(r, _)| r).collect();
        let started = std::time::Instant::now();
        let result = match write_batch_fast(&pool, &requests).await {
            Ok(Some(outcomes)) => Ok(outcomes),
            Ok(None) | Err(sqlx::Error::Database(_)) => {
                metrics::counter!("nebengjek_append_careful_batches_total").increment(1);
                write_batch(&pool, &requests).await
            }
            Err(error) => Err(error),
        };
        metrics::histogram!("nebengjek_append_batch_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("nebengjek_append_batch_size").record(batch.len() as f64);
        match result {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::warn!(%error, size = batch.len(), "append batch failed; callers will retry");
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(StoreError::Database(sqlx::Error::Protocol(format!(
                        "append batch failed: {error}"
                    )))));
                }
            }
        }
    }
}

/// The fast path: the whole batch in **one** autocommitted statement, assuming nothing
/// goes wrong — no known command key, no stale version, no claim on a held user. The
/// unique indexes check those assumptions against everything committed; if one fails
/// the statement fails as a whole and the caller takes the careful path
/// ([`write_batch`]), which finds out which request was at fault. `Ok(None)` means the
/// batch is not eligible (a user, aggregate or key appears twice in it).
///
/// Positions are `head + 1 ...`, read by the same `UPDATE` that moves the head, whose
/// row lock is held until the statement commits: the same single point of order as the
/// careful path.
pub async fn write_batch_fast(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<Option<Vec<AppendOutcome>>, sqlx::Error> {
    let mut seen_users = HashSet::new();
    let mut seen_streams = HashSet::new();
    let mut seen_keys = HashSet::new();
    let mut w = FastWrites::default();
    let mut offsets = Vec::with_capacity(requests.len());
    let mut n: i64 = 0;
    for request in requests {
        // Only a request that writes the stream's events or deadline makes a second one
        // on the same stream ineligible; answers that are only logged (refusals of the
        // drivers who lost a proposal, say) share a batch with anything.
        let writes_stream = !request.events.is_empty() || request.deadline != DeadlineChange::Keep;
        if writes_stream && !seen_streams.insert((request.aggregate_type, request.aggregate_id)) {
            return Ok(None);
        }
        if let Some(key) = &request.command_key {
            if !seen_keys.insert(key.as_str()) {
                return Ok(None);
            }
        }
        for op in &request.reservations {
            let user = match op {
                ReservationOp::Claim(u) | ReservationOp::Release(u) => *u,
                ReservationOp::Transfer { user, .. } => *user,
            };
            if !seen_users.insert(user) {
                return Ok(None);
            }
            match op {
                ReservationOp::Claim(u) => {
                    w.claim_users.push(*u);
                    w.claim_types.push(request.aggregate_type);
                    w.claim_ids.push(request.aggregate_id);
                }
                ReservationOp::Release(u) => {
                    w.release_users.push(*u);
                    w.release_ids.push(request.aggregate_id);
                }
                ReservationOp::Transfer { user, to_type, to_id } => {
                    w.transfer_users.push(*user);
                    w.transfer_from.push(request.aggregate_id);
                    w.transfer_types.push(to_type);
                    w.transfer_ids.push(*to_id);
                }
            }
        }
        let first = n + 1;
        for (i, event) in request.events.iter().enumerate() {
            n += 1;
            w.events
                .push(n, request, request.expected_version + 1 + i as i64, event);
        }
        if let Some(last) = request.events.last() {
            w.stream_types.push(request.aggregate_type);
            w.stream_ids.push(request.aggregate_id);
            w.stream_versions
                .push(request.expected_version + request.events.len() as i64);
            w.stream_hashes.push(last.hash.clone());
            w.stream_times.push(request.recorded_at);
        }
        match request.deadline {
            DeadlineChange::Keep => {}
            DeadlineChange::Set(due) => {
                w.due_types.push(request.aggregate_type);
                w.due_ids.push(request.aggregate_id);
                w.due_at.push(due);
            }
            DeadlineChange::Clear => {
                w.undue_types.push(request.aggregate_type);
                w.undue_ids.push(request.aggregate_id);
            }
        }
        let appended = !request.events.is_empty();
        if let Some(key) = &request.command_key {
            w.log_keys.push(key.as_str());
            w.log_types.push(request.aggregate_type);
            w.log_ids.push(request.aggregate_id);
            w.log_responses.push(&request.response);
            w.log_offsets.push(appended.then_some(first));
            w.log_times.push(request.recorded_at);
        }
        offsets.push(appended.then_some((first, n)));
    }
    w.since = requests.first().map(|r| r.recorded_at);
    let base = w.execute(pool, n).await?;
    Ok(Some(
        offsets
            .into_iter()
            .map(|o| match o {
                Some((first, last)) => AppendOutcome::Written {
                    first_position: base + first,
                    last_position: base + last,
                },
                None => AppendOutcome::Written {
                    first_position: 0,
                    last_position: 0,
                },
            })
            .collect(),
    ))
}

/// The columns of a fast-path batch.
#[derive(Default)]
struct FastWrites<'a> {
    /// Positions here are offsets from the head (1-based).
    events: EventRows,
    stream_types: Vec<&'static str>,
    stream_ids: Vec<Uuid>,
    stream_versions: Vec<i64>,
    stream_hashes: Vec<Vec<u8>>,
    stream_times: Vec<DateTime<Utc>>,
    log_keys: Vec<&'a str>,
    log_types: Vec<&'static str>,
    log_ids: Vec<Uuid>,
    log_responses: Vec<&'a Value>,
    log_offsets: Vec<Option<i64>>,
    log_times: Vec<DateTime<Utc>>,
    claim_users: Vec<Uuid>,
    claim_types: Vec<&'static str>,
    claim_ids: Vec<Uuid>,
    release_users: Vec<Uuid>,
    release_ids: Vec<Uuid>,
    transfer_users: Vec<Uuid>,
    transfer_from: Vec<Uuid>,
    transfer_types: Vec<&'static str>,
    transfer_ids: Vec<Uuid>,
    since: Option<DateTime<Utc>>,
    due_types: Vec<&'static str>,
    due_ids: Vec<Uuid>,
    due_at: Vec<DateTime<Utc>>,
    undue_types: Vec<&'static str>,
    undue_ids: Vec<Uuid>,
}

const WRITE_BATCH_FAST: &str = "WITH \
  hd AS (UPDATE event_store SET head_position = head_position + $36 RETURNING head_position - $36 AS base), \
  ev AS (INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
           payload, metadata, recorded_at, hash) \
         SELECT hd.base + x.o, x.t, x.i, x.s, x.e, x.v, x.p, x.m, x.r, x.h FROM hd, \
           UNNEST($1::bigint[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::int[], \
           $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::bytea[]) AS x(o, t, i, s, e, v, p, m, r, h)), \
  st AS (INSERT INTO streams (aggregate_type, aggregate_id, version, head_hash, updated_at) \
         SELECT * FROM UNNEST($11::text[], $12::uuid[], $13::bigint[], $14::bytea[], $15::timestamptz[]) \
         ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE SET version = EXCLUDED.version, \
           head_hash = EXCLUDED.head_hash, updated_at = EXCLUDED.updated_at), \
  lg AS (INSERT INTO command_log (command_key, aggregate_type, aggregate_id, response, first_position, recorded_at) \
         SELECT x.k, x.t, x.i, x.r, hd.base + x.o, x.at FROM hd, \
           UNNEST($16::text[], $17::text[], $18::uuid[], $19::jsonb[], $20::bigint[], $21::timestamptz[]) \
           AS x(k, t, i, r, o, at)), \
  cl AS (INSERT INTO participant_reservations (user_id, aggregate_type, aggregate_id, since) \
         SELECT u, t, i, $25 FROM UNNEST($22::uuid[], $23::text[], $24::uuid[]) AS x(u, t, i)), \
  rl AS (DELETE FROM participant_reservations r USING UNNEST($26::uuid[], $27::uuid[]) AS x(u, i) \
         WHERE r.user_id = x.u AND r.aggregate_id = x.i), \
  tr AS (UPDATE participant_reservations r SET aggregate_type = x.t, aggregate_id = x.i, since = $25 \
         FROM UNNEST($28::uuid[], $29::uuid[], $30::text[], $31::uuid[]) AS x(u, f, t, i) \
         WHERE r.user_id = x.u AND r.aggregate_id = x.f), \
  dd AS (DELETE FROM deadlines d USING UNNEST($32::text[], $33::uuid[]) AS x(t, i) \
         WHERE d.aggregate_type = x.t AND d.aggregate_id = x.i), \
  di AS (INSERT INTO deadlines (aggregate_type, aggregate_id, due_at) \
         SELECT * FROM UNNEST($34::text[], $35::uuid[], $37::timestamptz[]) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET due_at = EXCLUDED.due_at), \
  nt AS (SELECT pg_notify('nebengjek_events', (base + $36)::text) FROM hd WHERE $36 > 0) \
SELECT base, (SELECT count(*) FROM nt) FROM hd";

impl FastWrites<'_> {
    async fn execute(&self, pool: &PgPool, n: i64) -> Result<i64, sqlx::Error> {
        let e = &self.events;
        let (base, _): (i64, i64) = sqlx::query_as(WRITE_BATCH_FAST)
            .bind(&e.positions)
            .bind(&e.types)
            .bind(&e.ids)
            .bind(&e.sequences)
            .bind(&e.event_types)
            .bind(&e.versions)
            .bind(&e.payloads)
            .bind(&e.metadata)
            .bind(&e.recorded_at)
            .bind(&e.hashes)
            .bind(&self.stream_types)
            .bind(&self.stream_ids)
            .bind(&self.stream_versions)
            .bind(&self.stream_hashes)
            .bind(&self.stream_times)
            .bind(&self.log_keys)
            .bind(&self.log_types)
            .bind(&self.log_ids)
            .bind(&self.log_responses)
            .bind(&self.log_offsets)
            .bind(&self.log_times)
            .bind(&self.claim_users)
            .bind(&self.claim_types)
            .bind(&self.claim_ids)
            .bind(self.since)
            .bind(&self.release_users)
            .bind(&self.release_ids)
            .bind(&self.transfer_users)
            .bind(&self.transfer_from)
            .bind(&self.transfer_types)
            .bind(&self.transfer_ids)
            .bind(&self.undue_types)
            .bind(&self.undue_ids)
            .bind(&self.due_types)
            .bind(&self.due_ids)
            .bind(n)
            .bind(&self.due_at)
            .fetch_one(pool)
            .await?;
        Ok(base)
    }
}

/// Takes the store lock as part of `BEGIN` (one round trip). The batch statements are
/// planned once (generic plans): re-planning a 33-parameter statement on every batch
/// cost more than executing it.
const BEGIN_LOCKED: &str = "BEGIN; SET LOCAL plan_cache_mode = auto; SELECT 1 FROM event_store FOR UPDATE";

/// Writes a batch in one transaction and returns one outcome per request, in order.
/// Four round trips whatever the batch size: begin + lock, read, write, commit.
pub async fn write_batch(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<Vec<AppendOutcome>, sqlx::Error> {
    let mut tx = pool.begin_with(BEGIN_LOCKED).await?;
    let outcomes = write_batch_locked(&mut tx, requests).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// The body of [`write_batch`], inside a caller's transaction (tests use it to hold a
/// transaction open and show that later appends wait for it).
pub async fn write_batch_in(
    tx: &mut Transaction<'_, Postgres>,
    requests: &[&AppendRequest],
) -> Result<Vec<AppendOutcome>, sqlx::Error> {
    sqlx::query("SELECT 1 FROM event_store FOR UPDATE")
        .execute(&mut **tx)
        .await?;
    write_batch_locked(tx, requests).await
}

/// Everything the batch must know, read in one statement. It runs after the lock was
/// taken by an earlier statement, so its snapshot includes every earlier append.
const READ_UNDER_LOCK: &str = "SELECT \
    (SELECT head_position FROM event_store), \
    (SELECT coalesce(jsonb_agg(jsonb_build_array(command_key, response)), '[]'::jsonb) \
       FROM command_log WHERE command_key = ANY($1)), \
    (SELECT coalesce(jsonb_agg(jsonb_build_array(aggregate_type, aggregate_id, version)), '[]'::jsonb) \
       FROM streams WHERE aggregate_id = ANY($3) AND aggregate_type = ANY($2)), \
    (SELECT coalesce(jsonb_agg(jsonb_build_array(user_id, aggregate_type, aggregate_id)), '[]'::jsonb) \
       FROM participant_reservations WHERE user_id = ANY($4))";

async fn write_batch_locked(
    tx: &mut Transaction<'_, Postgres>,
    requests: &[&AppendRequest],
) -> Result<Vec<AppendOutcome>, sqlx::Error> {
    let keys: Vec<&str> = requests.iter().filter_map(|r| r.command_key.as_deref()).collect();
    let writers: Vec<&&AppendRequest> = requests.iter().filter(|r| !r.events.is_empty()).collect();
    let types: Vec<&str> = writers.iter().map(|r| r.aggregate_type).collect();
    let ids: Vec<Uuid> = writers.iter().map(|r| r.aggregate_id).collect();
    let users: Vec<Uuid> = requests
        .iter()
        .flat_map(|r| r.reservations.iter())
        .map(|op| match op {
            ReservationOp::Claim(u) | ReservationOp::Release(u) => *u,
            ReservationOp::Transfer { user, .. } => *user,
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let (head, logged_json, versions_json, holders_json): (i64, Value, Value, Value) =
        sqlx::query_as(READ_UNDER_LOCK)
            .bind(&keys)
            .bind(&types)
            .bind(&ids)
            .bind(&users)
            .fetch_one(&mut **tx)
            .await?;
    let decode = |what: &str| sqlx::Error::Protocol(format!("unreadable {what} from the store lock query"));
    let mut logged: HashMap<String, Value> = HashMap::new();
    for row in logged_json.as_array().ok_or_else(|| decode("command log"))? {
        if let (Some(key), Some(response)) = (row[0].as_str(), row.get(1)) {
            logged.insert(key.to_owned(), response.clone());
        }
    }
    let mut versions: HashMap<(String, Uuid), i64> = HashMap::new();
    for row in versions_json.as_array().ok_or_else(|| decode("versions"))? {
        let (Some(t), Some(i), Some(v)) = (row[0].as_str(), row[1].as_str(), row[2].as_i64()) else {
            return Err(decode("versions"));
        };
        versions.insert((t.to_owned(), i.parse().map_err(|_| decode("versions"))?), v);
    }
    let mut holders: HashMap<Uuid, Option<(String, Uuid)>> = users.iter().map(|u| (*u, None)).collect();
    for row in holders_json.as_array().ok_or_else(|| decode("reservations"))? {
        let (Some(u), Some(t), Some(i)) = (row[0].as_str(), row[1].as_str(), row[2].as_str()) else {
            return Err(decode("reservations"));
        };
        let user: Uuid = u.parse().map_err(|_| decode("reservations"))?;
        holders.insert(
            user,
            Some((t.to_owned(), i.parse().map_err(|_| decode("reservations"))?)),
        );
    }
    let original_holders = holders.clone();

    // Decide each request in order.
    let mut rows = EventRows::default();
    let mut streams: HashMap<(String, Uuid), StreamHead> = HashMap::new();
    let mut log_rows: Vec<LogRow> = Vec::new();
    let mut deadlines: HashMap<(String, Uuid), DeadlineChange> = HashMap::new();
    let mut outcomes = Vec::with_capacity(requests.len());
    let mut position = head;

    for request in requests {
        if let Some(response) = request.command_key.as_ref().and_then(|k| logged.get(k)) {
            outcomes.push(AppendOutcome::Duplicate(response.clone()));
            continue;
        }
        let stream_key = (request.aggregate_type.to_owned(), request.aggregate_id);
        if !request.events.is_empty() {
            let actual = versions.get(&stream_key).copied().unwrap_or(0);
            if actual != request.expected_version {
                outcomes.push(AppendOutcome::Conflict {
                    actual_version: actual,
                });
                continue;
            }
        }
        if let Some(refusal) = apply_reservations(request, &mut holders) {
            if let (Some(key), AppendOutcome::AlreadyActive { user_id, .. }) =
                (&request.command_key, &refusal)
            {
                let response = already_active_response(*user_id);
                logged.insert(key.clone(), response.clone());
                log_rows.push((
                    key.clone(),
                    request.aggregate_type,
                    request.aggregate_id,
                    response,
                    None,
                    request.recorded_at,
                ));
            }
            outcomes.push(refusal);
            continue;
        }

        let first = position + 1;
        for (i, event) in request.events.iter().enumerate() {
            position += 1;
            rows.push(position, request, request.expected_version + 1 + i as i64, event);
        }
        if let Some(last) = request.events.last() {
            let version = request.expected_version + request.events.len() as i64;
            versions.insert(stream_key.clone(), version);
            streams.insert(
                stream_key.clone(),
                (version, last.hash.clone(), request.recorded_at),
            );
        }
        if request.deadline != DeadlineChange::Keep {
            deadlines.insert(stream_key, request.deadline);
        }
        let appended = !request.events.is_empty();
        if let Some(key) = &request.command_key {
            logged.insert(key.clone(), request.response.clone());
            log_rows.push((
                key.clone(),
                request.aggregate_type,
                request.aggregate_id,
                request.response.clone(),
                appended.then_some(first),
                request.recorded_at,
            ));
        }
        outcomes.push(if appended {
            AppendOutcome::Written {
                first_position: first,
                last_position: position,
            }
        } else {
            AppendOutcome::Written {
                first_position: 0,
                last_position: 0,
            }
        });
    }

    let mut writes = Writes {
        events: rows,
        ..Writes::default()
    };
    writes.streams(&streams);
    writes.log(&log_rows);
    writes.reservations(&original_holders, &holders, requests);
    writes.deadlines(&deadlines);
    writes.head = position;
    writes.execute(tx, head).await?;
    Ok(outcomes)
}

fn already_active_response(user_id: Uuid) -> Value {
    serde_json::json!({
        "ok": false,
        "error": {
            "code": "already_active",
            "message": format!("user {user_id} is already in an open match or ride"),
        }
    })
}

/// Applies a request's reservation ops to the holders map, or says why it cannot.
/// On refusal the map is left as it was.
fn apply_reservations(
    request: &AppendRequest,
    holders: &mut HashMap<Uuid, Option<(String, Uuid)>>,
) -> Option<AppendOutcome> {
    let me = (request.aggregate_type.to_owned(), request.aggregate_id);
    let mut next = holders.clone();
    for op in &request.reservations {
        match op {
            ReservationOp::Claim(user) => {
                let slot = next.entry(*user).or_insert(None);
                match slot {
                    Some(holder) if *holder != me => {
                        return Some(AppendOutcome::AlreadyActive {
                            user_id: *user,
                            held_by_type: holder.0.clone(),
                            held_by_id: holder.1,
                        })
                    }
                    _ => *slot = Some(me.clone()),
                }
            }
            ReservationOp::Release(user) => {
                let slot = next.entry(*user).or_insert(None);
                if slot.as_ref() == Some(&me) {
                    *slot = None;
                }
            }
            ReservationOp::Transfer { user, to_type, to_id } => {
                // Only what this aggregate holds moves (the fast path does the same).
                let slot = next.entry(*user).or_insert(None);
                if slot.as_ref() == Some(&me) {
                    *slot = Some(((*to_type).to_owned(), *to_id));
                }
            }
        }
    }
    *holders = next;
    None
}

#[derive(Default)]
struct EventRows {
    positions: Vec<i64>,
    types: Vec<&'static str>,
    ids: Vec<Uuid>,
    sequences: Vec<i64>,
    event_types: Vec<&'static str>,
    versions: Vec<i32>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
    recorded_at: Vec<DateTime<Utc>>,
    hashes: Vec<Vec<u8>>,
}

impl EventRows {
    fn push(&mut self, position: i64, request: &AppendRequest, sequence: i64, event: &NewEvent) {
        self.positions.push(position);
        self.types.push(request.aggregate_type);
        self.ids.push(request.aggregate_id);
        self.sequences.push(sequence);
        self.event_types.push(event.event_type);
        self.versions.push(event.event_version);
        self.payloads.push(event.payload.clone());
        self.metadata.push(event.metadata.clone());
        self.recorded_at.push(request.recorded_at);
        self.hashes.push(event.hash.clone());
    }
}

/// Every row a batch writes, as columns, for one statement.
#[derive(Default)]
struct Writes<'a> {
    events: EventRows,
    stream_types: Vec<&'a str>,
    stream_ids: Vec<Uuid>,
    stream_versions: Vec<i64>,
    stream_hashes: Vec<Vec<u8>>,
    stream_times: Vec<DateTime<Utc>>,
    log_keys: Vec<&'a str>,
    log_types: Vec<&'static str>,
    log_ids: Vec<Uuid>,
    log_responses: Vec<&'a Value>,
    log_positions: Vec<Option<i64>>,
    log_times: Vec<DateTime<Utc>>,
    released: Vec<Uuid>,
    held_users: Vec<Uuid>,
    held_types: Vec<&'a str>,
    held_ids: Vec<Uuid>,
    held_since: Option<DateTime<Utc>>,
    due_types: Vec<&'a str>,
    due_ids: Vec<Uuid>,
    due_at: Vec<DateTime<Utc>>,
    undue_types: Vec<&'a str>,
    undue_ids: Vec<Uuid>,
    head: i64,
}

/// One statement for the whole batch: data-modifying CTEs touch disjoint rows, and
/// the head moves (and readers are woken) only when events were appended.
const WRITE_BATCH: &str = "WITH \
  ev AS (INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
           payload, metadata, recorded_at, hash) \
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::uuid[], $4::bigint[], $5::text[], $6::int[], \
           $7::jsonb[], $8::jsonb[], $9::timestamptz[], $10::bytea[])), \
  st AS (INSERT INTO streams (aggregate_type, aggregate_id, version, head_hash, updated_at) \
         SELECT * FROM UNNEST($11::text[], $12::uuid[], $13::bigint[], $14::bytea[], $15::timestamptz[]) \
         ON CONFLICT (aggregate_id, aggregate_type) DO UPDATE SET version = EXCLUDED.version, \
           head_hash = EXCLUDED.head_hash, updated_at = EXCLUDED.updated_at), \
  lg AS (INSERT INTO command_log (command_key, aggregate_type, aggregate_id, response, first_position, recorded_at) \
         SELECT * FROM UNNEST($16::text[], $17::text[], $18::uuid[], $19::jsonb[], $20::bigint[], $21::timestamptz[])), \
  rd AS (DELETE FROM participant_reservations WHERE user_id = ANY($22::uuid[])), \
  ri AS (INSERT INTO participant_reservations (user_id, aggregate_type, aggregate_id, since) \
         SELECT u, t, i, $26 FROM UNNEST($23::uuid[], $24::text[], $25::uuid[]) AS x(u, t, i) \
         ON CONFLICT (user_id) DO UPDATE SET aggregate_type = EXCLUDED.aggregate_type, \
           aggregate_id = EXCLUDED.aggregate_id, since = EXCLUDED.since), \
  dd AS (DELETE FROM deadlines d USING UNNEST($27::text[], $28::uuid[]) AS x(t, i) \
         WHERE d.aggregate_type = x.t AND d.aggregate_id = x.i), \
  di AS (INSERT INTO deadlines (aggregate_type, aggregate_id, due_at) \
         SELECT * FROM UNNEST($29::text[], $30::uuid[], $31::timestamptz[]) \
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET due_at = EXCLUDED.due_at), \
  hd AS (UPDATE event_store SET head_position = $32 WHERE $32 > $33 RETURNING head_position) \
SELECT pg_notify('nebengjek_events', head_position::text) FROM hd";

impl<'a> Writes<'a> {
    fn streams(&mut self, streams: &'a HashMap<(String, Uuid), StreamHead>) {
        for ((t, i), (v, h, at)) in streams {
            self.stream_types.push(t.as_str());
            self.stream_ids.push(*i);
            self.stream_versions.push(*v);
            self.stream_hashes.push(h.clone());
            self.stream_times.push(*at);
        }
    }

    fn log(&mut self, rows: &'a [LogRow]) {
        for (key, t, id, response, position, at) in rows {
            self.log_keys.push(key.as_str());
            self.log_types.push(t);
            self.log_ids.push(*id);
            self.log_responses.push(response);
            self.log_positions.push(*position);
            self.log_times.push(*at);
        }
    }

    fn reservations(
        &mut self,
        before: &HashMap<Uuid, Option<(String, Uuid)>>,
        after: &'a HashMap<Uuid, Option<(String, Uuid)>>,
        requests: &[&AppendRequest],
    ) {
        self.held_since = requests.first().map(|r| r.recorded_at);
        for (user, holder) in after {
            if before.get(user) == Some(holder) {
                continue;
            }
            match holder {
                None => self.released.push(*user),
                Some((t, i)) => {
                    self.held_users.push(*user);
                    self.held_types.push(t.as_str());
                    self.held_ids.push(*i);
                }
            }
        }
    }

    fn deadlines(&mut self, deadlines: &'a HashMap<(String, Uuid), DeadlineChange>) {
        for ((t, i), change) in deadlines {
            match change {
                DeadlineChange::Keep => {}
                DeadlineChange::Set(due) => {
                    self.due_types.push(t.as_str());
                    self.due_ids.push(*i);
                    self.due_at.push(*due);
                }
                DeadlineChange::Clear => {
                    self.undue_types.push(t.as_str());
                    self.undue_ids.push(*i);
                }
            }
        }
    }

    async fn execute(&self, tx: &mut Transaction<'_, Postgres>, old_head: i64) -> Result<(), sqlx::Error> {
        let e = &self.events;
        sqlx::query(WRITE_BATCH)
            .bind(&e.positions)
            .bind(&e.types)
            .bind(&e.ids)
            .bind(&e.sequences)
            .bind(&e.event_types)
            .bind(&e.versions)
            .bind(&e.payloads)
            .bind(&e.metadata)
            .bind(&e.recorded_at)
            .bind(&e.hashes)
            .bind(&self.stream_types)
            .bind(&self.stream_ids)
            .bind(&self.stream_versions)
            .bind(&self.stream_hashes)
            .bind(&self.stream_times)
            .bind(&self.log_keys)
            .bind(&self.log_types)
            .bind(&self.log_ids)
            .bind(&self.log_responses)
            .bind(&self.log_positions)
            .bind(&self.log_times)
            .bind(&self.released)
            .bind(&self.held_users)
            .bind(&self.held_types)
            .bind(&self.held_ids)
            .bind(self.held_since)
            .bind(&self.undue_types)
            .bind(&self.undue_ids)
            .bind(&self.due_types)
            .bind(&self.due_ids)
            .bind(&self.due_at)
            .bind(self.head)
            .bind(old_head)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
