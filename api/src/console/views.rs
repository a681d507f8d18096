//! The console's JSON beyond the analysts' endpoints: a ride's GPS trace and the audit
//! status.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ErrorResponse};
use crate::token::Analyst;
use crate::AppState;

/// One point of a ride's trace.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TracePoint {
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// The point's time.
    pub at: Option<DateTime<Utc>>,
    /// `start` (the driver's position when the ride started), `recorded` (a billed
    /// point) or `rejected` (a point that was not billed).
    pub kind: String,
    /// Billed distance after this point, km (recorded points).
    pub cum_km: Option<f64>,
    /// Why it was rejected (rejected points).
    pub reason: Option<String>,
}

/// A ride's trace, from its events.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RideTrace {
    /// The ride.
    pub ride_id: Uuid,
    /// `[lat, lon]` of the pickup.
    pub pickup: Option<[f64; 2]>,
    /// `[lat, lon]` of the destination.
    pub destination: Option<[f64; 2]>,
    /// In event order.
    pub points: Vec<TracePoint>,
}

fn lat_lon(v: &Value) -> Option<(f64, f64)> {
    Some((v.get("lat")?.as_f64()?, v.get("lon")?.as_f64()?))
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v?.as_str()?.parse().ok()
}

/// Analysts: a ride's GPS trace as its events recorded it (start point, billed and
/// rejected points), with its pickup and destination.
#[utoipa::path(get, path = "/v1/console/rides/{id}/trace", tag = "console", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "The ride id")),
    responses((status = 200, body = RideTrace), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn trace(
    State(state): State<AppState>,
    _analyst: Analyst,
    Path(id): Path<String>,
) -> Result<Json<RideTrace>, ApiError> {
    let not_found = || ApiError::not_found("no such ride");
    let ride_id: Uuid = id.parse().map_err(|_| not_found())?;
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT event_type, payload FROM events WHERE aggregate_type = 'ride' AND aggregate_id = $1 \
         ORDER BY sequence",
    )
    .bind(ride_id)
    .fetch_all(state.pool())
    .await?;
    if events.is_empty() {
        return Err(not_found());
    }
    let mut trace = RideTrace {
        ride_id,
        pickup: None,
        destination: None,
        points: Vec::new(),
    };
    for (event_type, payload) in &events {
        let point = |key: &str, kind: &str| {
            lat_lon(payload.get(key)?).map(|(lat, lon)| TracePoint {
                lat,
                lon,
                at: None,
                kind: kind.to_owned(),
                cum_km: None,
                reason: None,
            })
        };
        match event_type.as_str() {
            "created" => {
                trace.pickup = payload.get("pickup").and_then(lat_lon).map(|(a, b)| [a, b]);
                trace.destination = payload.get("destination").and_then(lat_lon).map(|(a, b)| [a, b]);
            }
            "started" => trace
                .points
                .extend(point("start_point", "start").map(|p| TracePoint {
                    at: time(payload.get("started_at")),
                    ..p
                })),
            "trip_point_recorded" => trace
                .points
                .extend(point("point", "recorded").map(|p| TracePoint {
                    at: time(payload.get("at")),
                    cum_km: payload.get("cum_km").and_then(Value::as_f64),
                    ..p
                })),
            "trip_point_rejected" => trace
                .points
                .extend(point("point", "rejected").map(|p| TracePoint {
                    at: time(payload.get("at")),
                    reason: payload.get("reason").and_then(Value::as_str).map(str::to_owned),
                    ..p
                })),
            _ => {}
        }
    }
    Ok(Json(trace))
}

/// The last `replay-tools verify` run (a row of `verify_runs`).
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct VerifyRun {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
    /// The window it checked (`--from`), if any.
    pub window_from: Option<DateTime<Utc>>,
    /// ... (`--to`).
    pub window_to: Option<DateTime<Utc>>,
    /// Every chain intact and every read-model row agreeing.
    pub passed: bool,
    /// Events checked.
    pub events: i64,
    /// Aggregates whose chain was checked.
    pub aggregates: i64,
    /// Rides compared with the read models.
    pub rides: i64,
    /// Broken chains found.
    pub chain_breaks: i32,
    /// Differing read-model rows found.
    pub row_diffs: i32,
    /// Unreadable events found.
    pub unreadable: i32,
    /// The first findings, as `verify` printed them.
    pub findings: Value,
}

/// The latest signed tree head (a row of `tree_heads`, SPEC.md §5 "Audit proofs").
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TreeHead {
    /// Events covered.
    pub tree_size: i64,
    /// Lower-case hex.
    pub root_hash: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Lower-case hex SHA-256 of the public key.
    pub key_id: String,
    /// Base64 Ed25519 signature.
    pub signature: String,
}

/// `GET /v1/console/audit`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditStatus {
    /// The last verify run, if any was recorded.
    pub verify: Option<VerifyRun>,
    /// Whether this database keeps an audit log (the table `tree_heads`).
    pub audit_log: bool,
    /// The latest signed tree head, when there is one.
    pub tree_head: Option<TreeHead>,
    /// The event store's last position.
    pub head_position: i64,
}

/// A column of `tree_heads` as text, whatever its SQL type (`bytea` as hex).
fn text_of(row: &Value, key: &str) -> String {
    match row.get(key) {
        Some(Value::String(s)) => s.strip_prefix("\\x").unwrap_or(s).to_owned(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// Analysts: the last `replay-tools verify` run and the latest signed tree head
/// (`audit_log: false` when this database has no `tree_heads` table).
#[utoipa::path(get, path = "/v1/console/audit", tag = "console", security(("bearer" = [])),
    responses((status = 200, body = AuditStatus), (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
pub async fn audit(State(state): State<AppState>, _analyst: Analyst) -> Result<Json<AuditStatus>, ApiError> {
    let pool = state.pool();
    let verify: Option<VerifyRun> = sqlx::query_as(
        "SELECT started_at, finished_at, window_from, window_to, passed, events, aggregates, rides, \
         chain_breaks, row_diffs, unreadable, findings FROM verify_runs ORDER BY finished_at DESC, run_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    let audit_log: bool = sqlx::query_scalar("SELECT to_regclass('tree_heads') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let tree_head = if audit_log {
        // Read as JSON so that the console does not depend on the exact column types.
        let row: Option<Value> =
            sqlx::query_scalar("SELECT to_jsonb(t) FROM tree_heads t ORDER BY tree_size DESC LIMIT 1")
                .fetch_optional(pool)
                .await?;
        row.map(|row| TreeHead {
            tree_size: row.get("tree_size").and_then(Value::as_i64).unwrap_or(0),
            root_hash: text_of(&row, "root_hash"),
            timestamp: text_of(&row, "timestamp"),
            key_id: text_of(&row, "key_id"),
            signature: text_of(&row, "signature"),
        })
    } else {
        None
    };
    let head_position = migrations_head(pool).await?;
    Ok(Json(AuditStatus {
        verify,
        audit_log,
        tree_head,
        head_position,
    }))
}

async fn migrations_head(pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT head_position FROM event_store")
        .fetch_one(pool)
        .await
}
