//! The system's own initiative: the process manager that turns a confirmed match into
//! a ride, and the scheduler that times out match rounds.
//!
//! Both are driven by what is durable in PostgreSQL — the event feed and the
//! `deadlines` table — and both issue commands with keys derived from what caused
//! them, so running them twice (a restart, two processes) never does anything twice.

use std::time::Duration;

use domain::matching::{MatchCommand, MatchEvent};
use domain::ride::RideCommand;
use domain::{GeoPoint, MatchId, RideId, UserId};
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

/// Creates the ride of every confirmed match after the checkpoint; returns how many
/// confirmations it handled. Exactly once per match: the command key is the match id,
/// and the checkpoint moves only after the ride exists.
pub async fn create_rides_once(bus: &CommandBus) -> Result<usize, PipelineError> {
    let pool = bus.store().pool();
    let checkpoint: i64 = sqlx::query_scalar(
        "INSERT INTO checkpoints (name) VALUES ($1) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name \
         RETURNING position",
    )
    .bind(RIDE_CREATOR)
    .fetch_one(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    // Everything up to the head is committed (positions become visible in order).
    let head = migrations::head_position(pool)
        .await
        .map_err(crate::store::StoreError::from)?;
    if head <= checkpoint {
        return Ok(0);
    }
    let confirmations: Vec<(Uuid, serde_json::Value, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_id, payload, metadata FROM events WHERE position > $1 AND position <= $2 \
         AND aggregate_type = 'match' AND event_type = 'confirmed' ORDER BY position",
    )
    .bind(checkpoint)
    .bind(head)
    .fetch_all(pool)
    .await
    .map_err(crate::store::StoreError::from)?;
    let count = confirmations.len();
    for (match_id, payload, metadata) in confirmations {
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
            tracing::error!(%match_id, ?ack, "a confirmed match's ride was refused");
        }
    }
    sqlx::query("UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1 AND position < $2")
        .bind(RIDE_CREATOR)
        .bind(head)
        .execute(pool)
        .await
        .map_err(crate::store::StoreError::from)?;
    Ok(count)
}

/// Times out every match whose deadline has passed; returns how many.
pub async fn fire_due_deadlines(bus: &CommandBus) -> Result<usize, PipelineError> {
    let now = bus.clock().now();
    let due = bus.store().due_deadlines(now, 500).await?;
    let count = due.len();
    for (aggregate_type, id, due_at) in due {
        if aggregate_type != "match" {
            continue;
        }
        let env = Envelope::system(format!("timeout:{id}:{}", due_at.timestamp_micros()), None);
        let ack = answer(bus.matches().execute(id, &env, &MatchCommand::Timeout).await?);
        tracing::debug!(match_id = %id, ok = ack.ok, "deadline fired");
    }
    Ok(count)
}

/// Runs the ride creator until `shutdown` turns true: woken by the store's NOTIFY, and
/// every second in case a notification was missed.
pub async fn run_ride_creator(bus: CommandBus, mut shutdown: watch::Receiver<bool>) {
    let mut listener = match PgListener::connect_with(bus.store().pool()).await {
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
    };
    loop {
        if let Err(error) = create_rides_once(&bus).await {
            tracing::error!(%error, "ride creator failed; retrying");
        }
        let wake = async {
            match listener.as_mut() {
                Some(l) => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), l.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        tokio::select! {
            _ = wake => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Runs the deadline scheduler until `shutdown` turns true.
pub async fn run_deadlines(bus: CommandBus, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(error) = fire_due_deadlines(&bus).await {
            tracing::error!(%error, "deadline scheduler failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

/// Whether a match event is the confirmation (for callers that watch the feed).
pub fn is_confirmation(event: &serde_json::Value, event_type: &str) -> bool {
    event_type == "confirmed" && parse_event::<MatchEvent>(event_type, event).is_ok()
}
