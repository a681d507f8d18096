//! The system's own initiative: the process manager that turns a confirmed match into
//! a ride, and the scheduler that times out match rounds.
//!
//! Both are driven by what is durable in PostgreSQL — the event feed and the
//! `deadlines` table — and both issue commands with keys derived from what caused
//! them, so running them twice (a restart, two processes) never does anything twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::matching::{MatchCommand, MatchEvent};
use domain::ride::RideCommand;
use domain::{GeoPoint, MatchId, RideId, UserId};
use migrations::consumers::{Consumer, Kind, Supervision};
use serde::Deserialize;
use sqlx::postgres::PgListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::bus::{answer, CommandBus};
use crate::pipeline::{parse_event, Envelope, PipelineError};
use crate::store::NOTIFY_CHANNEL;

/// The checkpoint name of the ride creator.
pub const RIDE_CREATOR: &str = "process.ride_creator";

#[derive(Deserialize)]
struct Confirmed {
    ride_id: RideId,
    driver_id: UserId,
    passenger_id: UserId,
    pickup: GeoPoint,
    destination: GeoPoint,
}

/// The checkpoint-less name the deadline scheduler reports as.
pub const DEADLINES: &str = "scheduler.deadlines";

/// Where the ride creator stopped, and why.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Stopped {
    /// The position of the confirmation it could not handle (or, when the store
    /// failed before it got to one, the position after its checkpoint).
    pub position: i64,
    /// Why.
    pub error: PipelineError,
}

/// Creates the ride of every confirmed match after the checkpoint; returns how many
/// confirmations it handled. Exactly once per match: the command key is the match id,
/// and the checkpoint moves only after the ride exists.
pub async fn create_rides_once(bus: &CommandBus) -> Result<usize, PipelineError> {
    create_rides(bus)
        .await
        .map(|(count, _)| count)
        .map_err(|s| s.error)
}

/// [`create_rides_once`], saying where it stopped: a confirmation it cannot handle
/// stops it *at* that confirmation (the checkpoint is moved to just before it, never
/// past it). Returns the count and the new checkpoint.
pub async fn create_rides(bus: &CommandBus) -> Result<(usize, i64), Stopped> {
    let pool = bus.store().pool();
    let store = |position: i64| {
        move |e: sqlx::Error| Stopped {
            position,
            error: crate::store::StoreError::from(e).into(),
        }
    };
    let checkpoint: i64 = sqlx::query_scalar(
        "INSERT INTO checkpoints (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name \
         RETURNING position",
    )
    .bind(RIDE_CREATOR)
    .fetch_one(pool)
    .await
    .map_err(store(0))?;
    // Everything up to the head is committed (positions become visible in order).
    let head = migrations::head_position(pool)
        .await
        .map_err(store(checkpoint + 1))?;
    if head <= checkpoint {
        return Ok((0, checkpoint));
    }
    let confirmations: Vec<(i64, Uuid, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT position, aggregate_id, payload, metadata FROM events WHERE position > $1 AND position <= $2 \
         AND aggregate_type = 'match' AND event_type = 'confirmed' ORDER BY position",
    )
    .bind(checkpoint)
    .bind(head)
    .fetch_all(pool)
    .await
    .map_err(store(checkpoint + 1))?;
    let mut count = 0;
    for (position, match_id, payload, metadata) in confirmations {
        if let Err(error) = create_ride(bus, match_id, payload, &metadata).await {
            // Keep what is done; stop at this confirmation.
            move_checkpoint(pool, position - 1)
                .await
                .map_err(store(position))?;
            return Err(Stopped { position, error });
        }
        count += 1;
    }
    move_checkpoint(pool, head).await.map_err(store(checkpoint + 1))?;
    Ok((count, head))
}

async fn move_checkpoint(pool: &sqlx::PgPool, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1 AND position < $2")
        .bind(RIDE_CREATOR)
        .bind(position)
        .execute(pool)
        .await
        .map(drop)
}

async fn create_ride(
    bus: &CommandBus,
    match_id: Uuid,
    payload: serde_json::Value,
    metadata: &serde_json::Value,
) -> Result<(), PipelineError> {
    let c: Confirmed = serde_json::from_value(payload).map_err(|e| PipelineError::Corrupt {
        aggregate_type: "match".into(),
        aggregate_id: match_id,
        sequence: 0,
        reason: e.to_string(),
    })?;
    let cause = metadata
        .get("event_id")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse().ok());
    let env = Envelope::system(format!("pm:ride-from-match:{match_id}"), cause);
    let cmd = RideCommand::Create {
        ride_id: c.ride_id,
        match_id: MatchId::from_uuid(match_id),
        driver_id: c.driver_id,
        passenger_id: c.passenger_id,
        pickup: c.pickup,
        destination: c.destination,
    };
    let ack = answer(bus.rides().execute(c.ride_id.as_uuid(), &env, &cmd).await?);
    if !ack.ok {
        // An answer, logged with the command: the refusal is the outcome, not a stall.
        tracing::error!(%match_id, ?ack, "a confirmed match's ride was refused");
    }
    Ok(())
}

/// Times out every match whose deadline has passed; returns how many. Stops at the
/// first that fails.
pub async fn fire_due_deadlines(bus: &CommandBus) -> Result<usize, PipelineError> {
    let now = bus.clock().now();
    let due = bus.store().due_deadlines(now, 500).await?;
    let count = due.len();
    for (aggregate_type, id, due_at) in due {
        if aggregate_type == "match" {
            fire(bus, id, due_at).await?;
        }
    }
    Ok(count)
}

async fn fire(bus: &CommandBus, id: Uuid, due_at: DateTime<Utc>) -> Result<(), PipelineError> {
    let env = Envelope::system(format!("timeout:{id}:{}", due_at.timestamp_micros()), None);
    let ack = answer(bus.matches().execute(id, &env, &MatchCommand::Timeout).await?);
    tracing::debug!(match_id = %id, ok = ack.ok, "deadline fired");
    Ok(())
}

async fn listener(pool: &sqlx::PgPool) -> Option<PgListener> {
    match PgListener::connect_with(pool).await {
        Ok(mut l) => match l.listen(NOTIFY_CHANNEL).await {
            Ok(()) => Some(l),
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

/// Runs the ride creator until `shutdown` turns true: woken by the store's NOTIFY, and
/// every second in case a notification was missed. A confirmation it cannot handle
/// stops it there, reported stalled (see [`migrations::consumers`]) and retried after
/// the backoff's delay.
pub async fn run_ride_creator(
    bus: CommandBus,
    supervision: Supervision,
    mut shutdown: watch::Receiver<bool>,
) {
    let pool = bus.store().pool().clone();
    let mut consumer = Consumer::new(pool.clone(), supervision, RIDE_CREATOR, Kind::ProcessManager);
    let mut listener = listener(&pool).await;
    loop {
        let retry = match create_rides(&bus).await {
            Ok((_, checkpoint)) => {
                let lag = migrations::head_position(&pool)
                    .await
                    .ok()
                    .map(|h| (h - checkpoint).max(0));
                consumer.progressed(checkpoint, lag).await;
                None
            }
            Err(stopped) => Some(
                consumer
                    .failed(stopped.position, &stopped.error.to_string())
                    .await,
            ),
        };
        let wake = async {
            match (retry, listener.as_mut()) {
                (Some(delay), _) => tokio::time::sleep(delay).await,
                (None, Some(l)) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), l.recv()).await;
                }
                (None, None) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        tokio::select! {
            _ = wake => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    consumer.retire();
}

/// A deadline that failed to fire: when to try it again.
#[derive(Debug)]
struct Failing {
    attempts: u32,
    retry_at: Instant,
}

/// Runs the deadline scheduler until `shutdown` turns true, every 250 ms. Deadlines are
/// independent of each other, so one that cannot fire does not hold the others back:
/// it is retried on its own backoff, and while any fails the scheduler is reported
/// stalled, naming the match and its due time (see [`migrations::consumers`]).
pub async fn run_deadlines(bus: CommandBus, supervision: Supervision, mut shutdown: watch::Receiver<bool>) {
    let backoff = supervision.backoff;
    let mut consumer = Consumer::new(
        bus.store().pool().clone(),
        supervision,
        DEADLINES,
        Kind::Scheduler,
    );
    let mut failing: HashMap<(Uuid, DateTime<Utc>), Failing> = HashMap::new();
    loop {
        match bus.store().due_deadlines(bus.clock().now(), 500).await {
            Ok(due) => {
                let overdue = due.len() as i64;
                failing.retain(|key, _| due.iter().any(|(_, id, at)| (*id, *at) == *key));
                let mut error = None;
                for (aggregate_type, id, due_at) in due {
                    if aggregate_type != "match" {
                        continue;
                    }
                    let key = (id, due_at);
                    if failing.get(&key).is_some_and(|f| Instant::now() < f.retry_at) {
                        continue;
                    }
                    match fire(&bus, id, due_at).await {
                        Ok(()) => {
                            failing.remove(&key);
                        }
                        Err(e) => {
                            let f = failing.entry(key).or_insert(Failing {
                                attempts: 0,
                                retry_at: Instant::now(),
                            });
                            f.retry_at = Instant::now() + backoff.delay(f.attempts);
                            f.attempts = f.attempts.saturating_add(1);
                            error.get_or_insert(format!("match {id} due {}: {e}", due_at.to_rfc3339()));
                        }
                    }
                }
                match error {
                    Some(reason) => {
                        let reason = format!("{reason} ({} deadline(s) cannot fire)", failing.len());
                        consumer.failed(0, &reason).await;
                    }
                    None if failing.is_empty() => consumer.progressed(0, Some(overdue)).await,
                    None => {} // only deadlines waiting for their retry
                }
            }
            Err(e) => {
                consumer
                    .failed(0, &format!("cannot read the deadlines: {e}"))
                    .await;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    consumer.retire();
}

/// Whether a match event is the confirmation (for callers that watch the feed).
pub fn is_confirmation(event: &serde_json::Value, event_type: &str) -> bool {
    event_type == "confirmed" && parse_event::<MatchEvent>(event_type, event).is_ok()
}
