//! Operator endpoints: `/healthz`, `/readyz` (PostgreSQL, NATS, Redis, and no component
//! stopped), `/metrics`.

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

/// `/readyz`: which dependency answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// PostgreSQL answers `SELECT 1`.
    pub postgres: bool,
    /// The NATS connection is up.
    pub nats: bool,
    /// Redis answers `PING`.
    pub redis: bool,
    /// Components of this process that stopped on purpose, each with its reason
    /// (`relay`: the stream's tail is not the store's event). Empty when all run.
    pub stopped: BTreeMap<String, String>,
}

/// Ready when PostgreSQL, NATS and Redis all answer and no component stopped (503
/// otherwise).
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
    let stopped = state.health().stopped();
    let status = if postgres && nats && redis && stopped.is_empty() {
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
            stopped,
        }),
    )
}

/// Prometheus metrics of this process.
#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> String {
    state.metrics().map(|m| m.render()).unwrap_or_default()
}
