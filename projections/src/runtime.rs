//! Running projectors: one batch, the long-running loop, a rebuild, and fault injection.
//!
//! ## One batch is one transaction
//! [`run_batch`] opens a transaction, makes sure the projector's `checkpoints` row
//! exists, locks it (`SELECT position ... FOR UPDATE`), reads the feed after it,
//! lets the projector write, moves the checkpoint and commits. Consequences:
//! - the projector's rows and its checkpoint commit together or not at all, so a crash
//!   at any step neither loses nor repeats an event (SPEC.md §5, guarantee 4);
//! - a second worker on the same projector, in this process or another, waits on the
//!   row lock and then reads the *committed* checkpoint (READ COMMITTED re-reads a
//!   row locked by `FOR UPDATE` after the holder commits), so it never applies the
//!   same events; workers serialize per projector, which is what ordering needs anyway.
//!
//! ## Rebuild
//! [`rebuild`] builds the projector's tables anew in a shadow schema and switches them
//! in (see [`crate::rebuild`]): readers never see a half-built table.
//!
//! ## Faults
//! [`run_batch_with_fault`] fails a batch at a chosen [`Fault`] step, dropping the
//! transaction as a crashed process would; tests use it to prove the rerun is exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use migrations::consumers::{Consumer, Kind, Supervision};
use migrations::StoredEvent;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::watch;
use tracing::Instrument;

/// The channel the event store `NOTIFY`s after each append (the same name as
/// `commands::store::NOTIFY_CHANNEL`; `projections` does not depend on `commands`).
pub const NOTIFY_CHANNEL: &str = "nebengjek_events";

/// Events read per batch by [`run`].
pub const BATCH_SIZE: i64 = 500;

/// Events read per step of a [`rebuild`].
const REBUILD_STEP: i64 = 1000;

/// How long [`run`] waits for a notification before looking anyway.
pub const FALLBACK_WAKE: Duration = Duration::from_secs(1);

/// The gauge of how many events a projector is behind the store's head.
pub const LAG_GAUGE: &str = "nebengjek_projection_lag_events";

/// Why a projection step failed. The transaction is rolled back in every case.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// PostgreSQL refused or was unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored event cannot be read as the domain event its name says.
    #[error("event at position {position} ({aggregate_type}.{event_type}.v{event_version}) cannot be read: {reason}")]
    Corrupt {
        /// Where in the feed.
        position: i64,
        /// `ride`, `match`, ...
        aggregate_type: String,
        /// The stored name.
        event_type: String,
        /// The stored version.
        event_version: i32,
        /// What went wrong.
        reason: String,
    },
    /// A value does not fit its column (a count beyond `i32`, ...).
    #[error("value out of range: {0}")]
    OutOfRange(String),
    /// A test asked the batch to fail here.
    #[error("injected fault: {0:?}")]
    Injected(Fault),
}

impl ProjectionError {
    /// A [`ProjectionError::Corrupt`] for `event`.
    pub fn corrupt(event: &StoredEvent, reason: impl Into<String>) -> Self {
        ProjectionError::Corrupt {
            position: event.position,
            aggregate_type: event.aggregate_type.clone(),
            event_type: event.event_type.clone(),
            event_version: event.event_version,
            reason: reason.into(),
        }
    }
}

/// A read model fed from the event store.
///
/// `apply` runs inside the batch's transaction, before the checkpoint moves. It must
/// only write through `tx`, must not use the projector's own clock or random ids (a
/// rebuild has to reproduce the rows exactly), and should be idempotent besides: a
/// second application of the same events must change nothing.
#[async_trait]
pub trait Projector: Send + Sync + std::fmt::Debug {
    /// The checkpoint name: stable forever (renaming it replays everything).
    fn name(&self) -> &str;

    /// Writes what `events` (contiguous, in position order, of every aggregate type)
    /// mean for this read model.
    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError>;

    /// The tables this projector owns (all its rows), in the `public` schema. A
    /// rebuild recreates exactly these in a shadow schema and switches them in.
    fn tables(&self) -> &'static [&'static str];

    /// Fills this projector's (empty) tables in `schema` with every event up to
    /// `up_to`, calling `progress(position, up_to)` now and then, and commits. The
    /// default applies the feed batch by batch with [`Projector::apply`] in one
    /// transaction whose `search_path` puts `schema` first; a projector may do better
    /// in bulk, as long as the rows are the same.
    async fn fill(
        &self,
        pool: &PgPool,
        schema: &str,
        up_to: i64,
        progress: &(dyn Fn(i64, i64) + Sync),
    ) -> Result<(), ProjectionError> {
        let mut tx = pool.begin().await?;
        use_schema(&mut tx, schema).await?;
        let mut position = 0;
        while position < up_to {
            let events =
                migrations::read_feed(&mut *tx, position, REBUILD_STEP.min(up_to - position)).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            self.apply(&mut tx, &events).await?;
            position = last;
            progress(position, up_to);
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl<P: Projector + ?Sized> Projector for Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        (**self).apply(tx, events).await
    }

    fn tables(&self) -> &'static [&'static str] {
        (**self).tables()
    }

    async fn fill(
        &self,
        pool: &PgPool,
        schema: &str,
        up_to: i64,
        progress: &(dyn Fn(i64, i64) + Sync),
    ) -> Result<(), ProjectionError> {
        (**self).fill(pool, schema, up_to, progress).await
    }
}

/// Where [`run_batch_with_fault`] fails the batch (as if the process died there).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// After the checkpoint is locked and the events read, before anything is written.
    BeforeApply,
    /// After the first half of the events (at least one) is applied.
    MidApply,
    /// After every event is applied, before the checkpoint moves.
    AfterApply,
    /// After the checkpoint moved, before the commit.
    AfterCheckpoint,
}

impl Fault {
    /// Every step, in batch order.
    pub const ALL: [Fault; 4] = [
        Fault::BeforeApply,
        Fault::MidApply,
        Fault::AfterApply,
        Fault::AfterCheckpoint,
    ];
}

/// `SET LOCAL search_path` so a projector's unqualified table names resolve to
/// `schema`'s tables (and everything else, `events` and `checkpoints`, to `public`).
pub async fn use_schema(tx: &mut Transaction<'_, Postgres>, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("SET LOCAL search_path = {schema}, public"))
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// Locks `name`'s checkpoint row for the rest of `tx` (creating it at 0) and returns it.
pub(crate) async fn lock_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query("INSERT INTO checkpoints (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
        .bind(name)
        .execute(&mut **tx)
        .await?;
    sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE")
        .bind(name)
        .fetch_one(&mut **tx)
        .await
}

pub(crate) async fn store_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    position: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1")
        .bind(name)
        .bind(position)
        .execute(&mut **tx)
        .await
        .map(drop)
}

/// The committed checkpoint of a projector (0 if it never ran).
pub async fn checkpoint(pool: &PgPool, name: &str) -> Result<i64, sqlx::Error> {
    let position: Option<i64> = sqlx::query_scalar("SELECT position FROM checkpoints WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    Ok(position.unwrap_or(0))
}

/// What one batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Batch {
    applied: usize,
    checkpoint: i64,
}

async fn batch<P: Projector + ?Sized>(
    pool: &PgPool,
    projector: &P,
    limit: i64,
    fault: Option<Fault>,
) -> Result<Batch, ProjectionError> {
    let name = projector.name();
    let fail_at = |step: Fault| match fault {
        Some(f) if f == step => Err(ProjectionError::Injected(step)),
        _ => Ok(()),
    };
    let mut tx = pool.begin().await?;
    let from = lock_checkpoint(&mut tx, name).await?;
    let events = migrations::read_feed(&mut *tx, from, limit).await?;
    let Some(last) = events.last().map(|e| e.position) else {
        // Nothing new: release the lock without writing.
        tx.rollback().await?;
        return Ok(Batch {
            applied: 0,
            checkpoint: from,
        });
    };
    fail_at(Fault::BeforeApply)?;
    if fault == Some(Fault::MidApply) {
        let half = (events.len() / 2).max(1);
        projector.apply(&mut tx, &events[..half]).await?;
        return Err(ProjectionError::Injected(Fault::MidApply));
    }
    projector.apply(&mut tx, &events).await?;
    fail_at(Fault::AfterApply)?;
    store_checkpoint(&mut tx, name, last).await?;
    fail_at(Fault::AfterCheckpoint)?;
    tx.commit().await?;
    metrics::counter!("nebengjek_projection_events_total", "projector" => name.to_owned())
        .increment(events.len() as u64);
    Ok(Batch {
        applied: events.len(),
        checkpoint: last,
    })
}

/// Applies up to `limit` events after the projector's checkpoint, in one transaction
/// with the checkpoint (see the module doc). Returns how many were applied (0: caught up).
pub async fn run_batch<P: Projector + ?Sized>(
    pool: &PgPool,
    projector: &P,
    limit: i64,
) -> Result<usize, ProjectionError> {
    run_batch_with_fault(pool, projector, limit, None).await
}

/// [`run_batch`], failing with [`ProjectionError::Injected`] at `fault` (when there are
/// events to apply). The transaction is dropped there, as a crash would drop it.
pub async fn run_batch_with_fault<P: Projector + ?Sized>(
    pool: &PgPool,
    projector: &P,
    limit: i64,
    fault: Option<Fault>,
) -> Result<usize, ProjectionError> {
    let span = tracing::debug_span!("projector_batch", projector = projector.name(), limit);
    batch(pool, projector, limit, fault)
        .instrument(span)
        .await
        .map(|b| b.applied)
}

/// Rebuilds a projector from position 0 into shadow tables and switches them in; see
/// [`crate::rebuild`]. Returns the new checkpoint.
pub async fn rebuild<P: Projector + ?Sized>(pool: &PgPool, projector: &P) -> Result<i64, ProjectionError> {
    crate::rebuild::rebuild(pool, projector, &|_, _| {}).await
}

/// Applies batches until the projector is caught up; returns its checkpoint.
async fn drain<P: Projector + ?Sized>(pool: &PgPool, projector: &P) -> Result<i64, ProjectionError> {
    loop {
        let span = tracing::debug_span!("projector_batch", projector = projector.name());
        let done = batch(pool, projector, BATCH_SIZE, None).instrument(span).await?;
        if done.applied < BATCH_SIZE as usize {
            return Ok(done.checkpoint);
        }
    }
}

pub(crate) async fn listen(pool: &PgPool) -> Option<PgListener> {
    match PgListener::connect_with(pool).await {
        Ok(mut listener) => match listener.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "LISTEN failed; polling");
                None
            }
        },
        Err(error) => {
            tracing::warn!(%error, "no listener connection; polling");
            None
        }
    }
}

/// Runs `projectors` until `shutdown` turns true, reporting to a registry of its own;
/// see [`run_supervised`].
pub async fn run(pool: PgPool, projectors: Vec<Arc<dyn Projector>>, shutdown: watch::Receiver<bool>) {
    run_supervised(pool, projectors, Supervision::default(), shutdown).await;
}

/// One projector in the loop of [`run_supervised`].
struct Slot {
    projector: Arc<dyn Projector>,
    consumer: Consumer,
    /// Set while stalled: not tried again before then.
    retry_at: Option<Instant>,
}

/// Runs `projectors` until `shutdown` turns true: each is caught up, then the loop
/// sleeps until the store's `NOTIFY` (or [`FALLBACK_WAKE`], in case one was missed).
/// After each round the lag (`head_position - checkpoint`) of every projector is
/// reported as the gauge [`LAG_GAUGE`]`{projector}`, stalled or not.
///
/// A projector that cannot apply an event **stops at it**: the events before it are
/// applied (so its checkpoint is the position just before), the event is never
/// skipped, and the projector is retried after `supervision.backoff`'s delay while it
/// is reported stalled (see [`migrations::consumers`]): `/readyz` 503, the gauge
/// `nebengjek_stalled{component}` 1, its `consumer_status` row. The other projectors
/// keep going in the meantime.
pub async fn run_supervised(
    pool: PgPool,
    projectors: Vec<Arc<dyn Projector>>,
    supervision: Supervision,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = listen(&pool).await;
    let mut slots: Vec<Slot> = projectors
        .into_iter()
        .map(|projector| Slot {
            consumer: Consumer::new(
                pool.clone(),
                supervision.clone(),
                projector.name(),
                Kind::Projector,
            ),
            projector,
            retry_at: None,
        })
        .collect();
    loop {
        for slot in &mut slots {
            if slot.retry_at.is_some_and(|at| Instant::now() < at) {
                continue;
            }
            let name = slot.projector.name().to_owned();
            let head = migrations::head_position(&pool).await.ok();
            match drain(&pool, slot.projector.as_ref()).await {
                Ok(position) => {
                    slot.retry_at = None;
                    let lag = head.map(|h| (h - position).max(0));
                    if let Some(lag) = lag {
                        metrics::gauge!(LAG_GAUGE, "projector" => name).set(lag as f64);
                    }
                    slot.consumer.progressed(position, lag).await;
                }
                Err(error) => {
                    let (checkpoint, at) = stop_at(&pool, slot.projector.as_ref(), &error).await;
                    if let (Some(head), Some(checkpoint)) = (head, checkpoint) {
                        metrics::gauge!(LAG_GAUGE, "projector" => name)
                            .set((head - checkpoint).max(0) as f64);
                    }
                    let delay = slot.consumer.failed(at, &error.to_string()).await;
                    slot.retry_at = Some(Instant::now() + delay);
                }
            }
        }
        let now = Instant::now();
        let sleep = slots
            .iter()
            .filter_map(|s| s.retry_at)
            .map(|at| at.saturating_duration_since(now))
            .fold(FALLBACK_WAKE, Duration::min);
        let wake = async {
            match listener.as_mut() {
                Some(l) => {
                    if let Ok(Err(error)) = tokio::time::timeout(sleep, l.recv()).await {
                        tracing::warn!(%error, "listener failed; it reconnects on the next recv");
                    }
                }
                None => tokio::time::sleep(sleep).await,
            }
        };
        tokio::select! {
            () = wake => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break; // the sender is gone: nobody can ask us to stop any more
                }
            }
        }
        if *shutdown.borrow() {
            break;
        }
    }
    for slot in &slots {
        slot.consumer.retire();
    }
}

/// After `error`, brings the projector up to just before the event it cannot handle
/// (a batch fails whole, so the events before that one in it were rolled back too) and
/// returns its checkpoint and the position it is stopped at.
async fn stop_at<P: Projector + ?Sized>(
    pool: &PgPool,
    projector: &P,
    error: &ProjectionError,
) -> (Option<i64>, i64) {
    let Ok(mut at) = checkpoint(pool, projector.name()).await else {
        return (None, 0);
    };
    if let ProjectionError::Corrupt { position, .. } = error {
        let before = position - at - 1;
        if before > 0 {
            match batch(pool, projector, before, None).await {
                Ok(done) => at = done.checkpoint,
                Err(error) => {
                    tracing::warn!(projector = projector.name(), %error, "cannot apply the events before the bad one");
                }
            }
        }
        return (Some(at), *position);
    }
    (Some(at), at + 1)
}
