//! # NebengJek schema
//!
//! The PostgreSQL schema as versioned SQL files in `migrations/sql/`, applied by
//! `nebengjek migrate` and at start-up, and the one raw read every consumer of the
//! event store shares: the ordered feed.
//!
//! ## Why the feed reader lives here
//! `commands` (the writer) and `projections` (the readers) must not depend on each
//! other; both depend on the schema. The feed is a property of the schema: positions
//! are dense and become visible in order because every append locks the single
//! `event_store` row while it assigns them (see `docs/adr/0001-event-store.md`). So a
//! reader that asks for `position > checkpoint` never skips an event that a slower
//! transaction commits later.

pub mod consumers;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

/// The embedded migrations of `migrations/sql/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./sql");

/// Applies every pending migration.
pub async fn run(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// The event store's identity, made once with the database.
pub async fn store_id<'e>(db: impl PgExecutor<'e>) -> Result<Uuid, sqlx::Error> {
    sqlx::query_scalar("SELECT store_id FROM event_store")
        .fetch_one(db)
        .await
}

/// The last committed position (0 for an empty store).
pub async fn head_position<'e>(db: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT head_position FROM event_store")
        .fetch_one(db)
        .await
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct StoredEvent {
    /// Global position, dense from 1.
    pub position: i64,
    /// `ride`, `match`, ...
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// 1-based sequence within the aggregate.
    pub sequence: i64,
    /// snake_case event name.
    pub event_type: String,
    /// Payload schema version.
    pub event_version: i32,
    /// The event's data.
    pub payload: serde_json::Value,
    /// `event_id`, `command_id`, `correlation_id`, `causation_id`, `actor`, `recorded_at`.
    pub metadata: serde_json::Value,
    /// When it was recorded (UTC).
    pub recorded_at: DateTime<Utc>,
    /// The chained hash.
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

impl StoredEvent {
    /// The event's id, from its metadata.
    pub fn event_id(&self) -> Option<Uuid> {
        self.metadata.get("event_id")?.as_str()?.parse().ok()
    }

    /// The event as published on the event feed (SPEC.md §4 "NATS"): `{event_id,
    /// position, aggregate_type, aggregate_id, sequence, event_type, event_version,
    /// payload, metadata}`.
    pub fn envelope(&self) -> FeedEnvelope {
        FeedEnvelope {
            event_id: self.event_id(),
            position: self.position,
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type.clone(),
            event_version: self.event_version,
            payload: self.payload.clone(),
            metadata: self.metadata.clone(),
        }
    }

    /// The feed subject under `prefix`: `<prefix>.<aggregate>.<event>`, e.g.
    /// `events.ride.started`.
    pub fn subject(&self, prefix: &str) -> String {
        format!("{prefix}.{}.{}", self.aggregate_type, self.event_type)
    }
}

/// One event on the JetStream feed (`EVENTS`), as the relay publishes it and the edge
/// reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEnvelope {
    /// The event's id (also the message's `Nats-Msg-Id`).
    pub event_id: Option<Uuid>,
    /// Global position in the store.
    pub position: i64,
    /// `ride`, `match`, ...
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: Uuid,
    /// 1-based sequence within the aggregate.
    pub sequence: i64,
    /// snake_case event name.
    pub event_type: String,
    /// Payload schema version.
    pub event_version: i32,
    /// The event's data.
    pub payload: serde_json::Value,
    /// `event_id`, `command_id`, `correlation_id`, `causation_id`, `actor`, `recorded_at`.
    pub metadata: serde_json::Value,
}

const SELECT_EVENTS: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata, recorded_at, hash FROM events";

/// Up to `limit` events after `after`, in position order, without gaps: reading stops
/// before a missing position (which the single-writer append makes impossible, but a
/// reader must never step over one if it happened).
pub async fn read_feed<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut events: Vec<StoredEvent> = sqlx::query_as(&format!(
        "{SELECT_EVENTS} WHERE position > $1 ORDER BY position LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await?;
    let contiguous = events
        .iter()
        .enumerate()
        .take_while(|(i, e)| e.position == after + 1 + *i as i64)
        .count();
    events.truncate(contiguous);
    Ok(events)
}

/// Every event of one aggregate, in sequence order.
pub async fn read_stream<'e>(
    db: impl PgExecutor<'e>,
    aggregate_type: &str,
    aggregate_id: Uuid,
    after_sequence: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SELECT_EVENTS} WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence"
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after_sequence)
    .fetch_all(db)
    .await
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        (0..s.len())
            .step_by(2)
            .map(|i| {
                s.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| serde::de::Error::custom("invalid hex"))
            })
            .collect()
    }
}
