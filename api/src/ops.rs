//! Operator endpoints: `/healthz`, `/readyz` (PostgreSQL, NATS, Redis, no component
//! stopped and no stalled consumer in this process), `/metrics`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

/// `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the process serves.
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `/readyz`: which dependency answers, and which of this process's consumers is stalled.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// PostgreSQL answers `SELECT 1`.
    pub postgres: bool,
    /// The NATS connection is up.
    pub nats: bool,
    /// Redis answers `PING`.
    pub redis: bool,
    /// The consumers of this process (projectors, relay, geo projection, process
    /// manager, deadline scheduler) that are stopped at an event they cannot handle;
    /// empty when all move.
    pub stalled: Vec<StalledComponent>,
    /// Components of this process that stopped on purpose, each with its reason
    /// (`relay`: the stream's tail is not the store's event). Empty when all run.
    pub stopped: BTreeMap<String, String>,
}

/// A consumer stopped at an event (see `replay-tools status` for every process's).
#[derive(Debug, Serialize, ToSchema)]
pub struct StalledComponent {
    /// Its name: the checkpoint name (`read_models.rides`, `relay.EVENTS`,
    /// `process.ride_creator`), `geo.<stream>` or `scheduler.deadlines`.
    pub component: String,
    /// `projector`, `relay`, `geo`, `process_manager` or `scheduler`.
    pub kind: String,
    /// The feed position of the event it cannot get past (0 for the scheduler, whose
    /// reason names the match and its due time).
    pub position: i64,
    /// Why the last attempt failed.
    pub reason: String,
    /// When it stalled (RFC 3339).
    pub since: chrono::DateTime<chrono::Utc>,
    /// Attempts since then (each after a capped, jittered backoff).
    pub attempts: u32,
}

/// Ready when PostgreSQL, NATS and Redis all answer and no consumer of this process is
/// stalled (503 otherwise, naming each stalled consumer, its position and the reason).
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let within = Duration::from_secs(1);
    let postgres = matches!(
        tokio::time::timeout(within, sqlx::query("SELECT 1").execute(state.pool())).await,
        Ok(Ok(_))
    );
    let nats = state
        .nats()
        .is_some_and(|c| matches!(c.connection_state(), async_nats::connection::State::Connected));
    let mut con = state.redis().clone();
    let ping = async move { redis::cmd("PING").query_async::<String>(&mut con).await };
    let redis = matches!(tokio::time::timeout(within, ping).await, Ok(Ok(ref p)) if p == "PONG");
    let stalled: Vec<StalledComponent> = state
        .consumers()
        .stalls()
        .into_iter()
        .map(|s| StalledComponent {
            component: s.component,
            kind: s.kind.as_str().to_owned(),
            position: s.position,
            reason: s.reason,
            since: s.since,
            attempts: s.attempts,
        })
        .collect();
    let stopped = state.health().stopped();
    let status = if postgres && nats && redis && stalled.is_empty() && stopped.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            postgres,
            nats,
            redis,
            stalled,
            stopped,
        }),
    )
}

/// Prometheus metrics of this process.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> String {
    state.metrics().map(|m| m.render()).unwrap_or_default()
}
