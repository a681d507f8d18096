//! `status`: every consumer of the event feed — each projector, the outbox relay, the
//! geo projection, the process manager and the deadline scheduler — with its
//! checkpoint, its lag behind the head, whether it is stalled and its last error.
//!
//! Checkpoints and lag are read live (the `checkpoints` table, the store's head, the
//! `deadlines` table); the stall and the last error come from `consumer_status`, which
//! the running processes write (see `migrations::consumers`). A consumer that never
//! reported is still listed, as such: nothing is left out because it is silent.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use migrations::consumers::StatusRow;
use serde::Serialize;
use sqlx::PgPool;

/// The process manager's checkpoint name (`commands::process::RIDE_CREATOR`).
pub const RIDE_CREATOR: &str = "process.ride_creator";
/// The deadline scheduler's name (`commands::process::DEADLINES`).
pub const DEADLINES: &str = "scheduler.deadlines";
/// The relay of the default stream, listed when no relay has a checkpoint yet.
pub const DEFAULT_RELAY: &str = "relay.EVENTS";
/// The geo projection of the default stream, listed when none has reported yet.
pub const DEFAULT_GEO: &str = "geo.LOCATION";

/// One consumer as `status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsumerStatus {
    /// Its name.
    pub name: String,
    /// `projector`, `relay`, `geo`, `process_manager`, `scheduler`.
    pub kind: String,
    /// Its checkpoint (the last position done); `None` for the scheduler, which
    /// follows the `deadlines` table rather than the feed.
    pub checkpoint: Option<i64>,
    /// Events behind the head (the scheduler: deadlines overdue now).
    pub lag: i64,
    /// Stalled as last reported.
    pub stalled: bool,
    /// The position it is stopped at, while stalled.
    pub stalled_at: Option<i64>,
    /// Since when.
    pub stalled_since: Option<DateTime<Utc>>,
    /// Attempts since it stalled.
    pub attempts: i32,
    /// The last error it reported (kept after it resumed).
    pub last_error: Option<String>,
    /// When.
    pub last_error_at: Option<DateTime<Utc>>,
    /// `host:pid` of the last report, `None` if it never reported.
    pub reported_by: Option<String>,
    /// When it last reported.
    pub updated_at: Option<DateTime<Utc>>,
}

fn kind_of(name: &str) -> &'static str {
    if name == RIDE_CREATOR {
        "process_manager"
    } else if name == DEADLINES {
        "scheduler"
    } else if name.starts_with("relay.") {
        "relay"
    } else if name.starts_with("geo.") {
        "geo"
    } else {
        "projector"
    }
}

/// Every consumer: `projectors` (their checkpoint names), the process manager, the
/// scheduler, every relay and geo projection that has a checkpoint or reported (or
/// the default ones), and anything else in `consumer_status` or `checkpoints`.
pub async fn consumers(pool: &PgPool, projectors: &[&str]) -> Result<Vec<ConsumerStatus>, sqlx::Error> {
    let head = migrations::head_position(pool).await?;
    let checkpoints: BTreeMap<String, i64> =
        sqlx::query_as::<_, (String, i64)>("SELECT name, position FROM checkpoints")
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    let overdue: i64 = sqlx::query_scalar("SELECT count(*) FROM deadlines WHERE due_at <= now()")
        .fetch_one(pool)
        .await?;
    let mut rows: BTreeMap<String, StatusRow> = migrations::consumers::status_rows(pool)
        .await?
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
    let mut names: Vec<String> = projectors.iter().map(|p| (*p).to_owned()).collect();
    names.extend([RIDE_CREATOR.to_owned(), DEADLINES.to_owned()]);
    names.extend(checkpoints.keys().cloned());
    names.extend(rows.keys().cloned());
    if !names.iter().any(|n| n.starts_with("relay.")) {
        names.push(DEFAULT_RELAY.to_owned());
    }
    if !names.iter().any(|n| n.starts_with("geo.")) {
        names.push(DEFAULT_GEO.to_owned());
    }
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|name| {
            let row = rows.remove(&name);
            let kind = row
                .as_ref()
                .map_or_else(|| kind_of(&name).to_owned(), |r| r.kind.clone());
            let (checkpoint, lag) = if kind == "scheduler" {
                (None, overdue)
            } else {
                let at = checkpoints
                    .get(&name)
                    .copied()
                    .or_else(|| row.as_ref().map(|r| r.position))
                    .unwrap_or(0);
                (Some(at), (head - at).max(0))
            };
            ConsumerStatus {
                kind,
                checkpoint,
                lag,
                stalled: row.as_ref().is_some_and(|r| r.stalled),
                stalled_at: row.as_ref().and_then(|r| r.stalled_at),
                stalled_since: row.as_ref().and_then(|r| r.stalled_since),
                attempts: row.as_ref().map_or(0, |r| r.attempts),
                last_error: row.as_ref().and_then(|r| r.last_error.clone()),
                last_error_at: row.as_ref().and_then(|r| r.last_error_at),
                reported_by: row.as_ref().map(|r| r.reported_by.clone()),
                updated_at: row.as_ref().map(|r| r.updated_at),
                name,
            }
        })
        .collect())
}
