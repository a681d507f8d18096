//! # NebengJek API: the edge
//!
//! Everything a passenger's or driver's app (and an analyst's tool) talks to: the axum
//! HTTP endpoints of SPEC.md §4 — OTP login, JWT, driver registration, ride reads,
//! the analysts' queries, the operator endpoints and `/openapi.json` — and the
//! WebSocket `/ws` that carries commands in and pushes out.
//!
//! ## Layout
//! - [`error`]: the one error type, mapped to a status and `{"error": {...}}` once.
//! - [`token`]: JWT HS256 (`sub`, `role`, `exp`, `iat`, `iss`), the [`token::Caller`]
//!   and [`token::Analyst`] extractors.
//! - [`otp`] and [`sms`]: login codes in Redis (TTL, request limit, wrong-answer limit)
//!   and the SMS port.
//! - [`users`]: the `users` and `drivers` tables; [`auth`] the handlers over them.
//! - [`reads`]: ride reads for participants and the analysts' queries over the read
//!   models (`rides`, `billing_ledger`, `payments`, and the SQL function
//!   `analytics_revenue`), all of `migrations/sql/0002`–`0004`.
//! - [`ws`]: the WebSocket protocol. [`ws::session`] is the socket loop, written over
//!   any `Sink`/`Stream` so it is tested with channels; [`ws::registry`] maps users to
//!   their open sockets; [`ws::feed`] turns the JetStream event feed into pushes (and
//!   notes pending proposals in [`ws::proposals`]); [`ws::state`] builds the pushes and
//!   the `session_state` frame sent first on every connect.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`; served on the edge's address or, with
//!   [`public_router`] and [`ops_router`], on an operators' address of their own.
//! - [`console`]: the operations console at `/console` (embedded page) and its
//!   analyst-only endpoints under `/v1/console/` (live map feed, ride trace, audit).
//!
//! ## Invariants
//! - One router ([`router`]) serves every endpoint, and `/openapi.json` is generated
//!   from the same handler annotations, so the document cannot drift from the routes.
//! - A command frame gets exactly one ack. Its idempotency key is the frame `id` with
//!   the user's id, passed to [`commands::CommandBus::dispatch`], whose store remembers
//!   the first answer; a resend (on any connection, any process) gets that answer.
//! - Pushes come from the event feed (JetStream `EVENTS`), never from the handler that
//!   wrote the event, so a client hears about a command whichever process handled it.
//! - Every socket's first frame is `session_state`, read from the store after the
//!   socket registered for pushes, so a reconnect loses nothing.
//! - Tokens and codes are never logged (the development SMS sender excepted: showing
//!   the code is its job). Internal failures are logged and answered opaquely.

pub mod auth;
pub mod console;
pub mod error;
pub mod ops;
pub mod otp;
pub mod protocol;
pub mod reads;
pub mod sms;
pub mod token;
pub mod users;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use commands::clock::Clock;
use commands::CommandBus;
use domain::Policy;
use metrics_exporter_prometheus::PrometheusHandle;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::ApiError;

use crate::otp::{OtpPolicy, OtpStore};
use crate::sms::SmsSender;
use crate::token::Tokens;
use crate::ws::proposals::Proposals;
use crate::ws::registry::Registry;

/// The edge's settings (read from the environment by the binary).
#[derive(Clone)]
pub struct ApiConfig {
    /// `JWT_SECRET`.
    pub jwt_secret: String,
    /// How long a token is valid (24 h).
    pub token_ttl: Duration,
    /// The login-code limits.
    pub otp: OtpPolicy,
    /// `AUTH_DEV_ECHO_OTP`: return the code as `dev_otp`.
    pub dev_echo_otp: bool,
    /// `REDIS_KEY_PREFIX`: prepended to every Redis key the edge writes.
    pub redis_prefix: String,
    /// `EVENTS_STREAM`: the JetStream stream of the event feed.
    pub events_stream: String,
    /// `EVENTS_SUBJECT_PREFIX`: its subjects are `<prefix>.<aggregate>.<event>`.
    pub events_subject_prefix: String,
    /// The largest WebSocket frame accepted (64 KiB); larger closes with 1009.
    pub max_frame_bytes: usize,
    /// The business parameters (for `fare_estimate`).
    pub policy: Policy,
    /// The bounds of the analysts' queries.
    pub analyst: reads::AnalystLimits,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("ApiConfig")
            .field("token_ttl", &self.token_ttl)
            .field("otp", &self.otp)
            .field("dev_echo_otp", &self.dev_echo_otp)
            .field("redis_prefix", &self.redis_prefix)
            .field("events_stream", &self.events_stream)
            .field("events_subject_prefix", &self.events_subject_prefix)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .finish_non_exhaustive()
    }
}

impl ApiConfig {
    /// The defaults of SPEC.md with this secret.
    pub fn new(jwt_secret: impl Into<String>) -> Self {
        Self {
            jwt_secret: jwt_secret.into(),
            token_ttl: Duration::from_secs(24 * 3600),
            otp: OtpPolicy::default(),
            dev_echo_otp: false,
            redis_prefix: String::new(),
            events_stream: "EVENTS".into(),
            events_subject_prefix: "events".into(),
            max_frame_bytes: 64 * 1024,
            policy: Policy::default(),
            analyst: reads::AnalystLimits::default(),
        }
    }
}

/// What the handlers share.
#[derive(Clone, Debug)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    config: ApiConfig,
    pool: PgPool,
    bus: CommandBus,
    redis: ConnectionManager,
    nats: Option<async_nats::Client>,
    otp: OtpStore,
    sms: Arc<dyn SmsSender>,
    tokens: Tokens,
    clock: Arc<dyn Clock>,
    registry: Registry,
    proposals: Proposals,
    metrics: Option<PrometheusHandle>,
    location: Option<projections::location::LocationPublisher>,
    geo: Option<projections::geo::GeoIndex>,
    consumers: migrations::consumers::Health,
    health: projections::health::Health,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

/// The connections and ports the edge runs on.
pub struct Dependencies {
    /// PostgreSQL (users, drivers, read models).
    pub pool: PgPool,
    /// The command bus.
    pub bus: CommandBus,
    /// Redis (login codes).
    pub redis: ConnectionManager,
    /// NATS, for readiness (the feed is started separately: [`ws::feed::start`]).
    pub nats: Option<async_nats::Client>,
    /// The SMS port.
    pub sms: Arc<dyn SmsSender>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The Prometheus recorder's handle, if one is installed.
    pub metrics: Option<PrometheusHandle>,
    /// Where drivers' pings go (JetStream `LOCATION`); `None` keeps them local.
    pub location: Option<projections::location::LocationPublisher>,
    /// The available-drivers index, for `GET /v1/drivers/nearby`.
    pub geo: Option<projections::geo::GeoIndex>,
    /// The components of this process that stopped on purpose (`/readyz` names them).
    pub health: projections::health::Health,
}

impl std::fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependencies").finish_non_exhaustive()
    }
}

impl AppState {
    /// The state of an edge process.
    pub fn new(config: ApiConfig, deps: Dependencies) -> Self {
        let tokens = Tokens::new(config.jwt_secret.as_bytes(), config.token_ttl, deps.clock.clone());
        let otp = OtpStore::new(
            deps.redis.clone(),
            config.redis_prefix.clone(),
            config.otp.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                config,
                pool: deps.pool,
                bus: deps.bus,
                redis: deps.redis,
                nats: deps.nats,
                otp,
                sms: deps.sms,
                tokens,
                clock: deps.clock,
                registry: Registry::default(),
                proposals: Proposals::default(),
                metrics: deps.metrics,
                location: deps.location,
                geo: deps.geo,
                consumers: migrations::consumers::Health::default(),
                health: deps.health,
            }),
        }
    }

    /// This state reporting `health`, the registry the process's consumers report
    /// their stalls to (`/readyz` answers 503 while any is stalled). Call it on the
    /// state [`AppState::new`] returned, before cloning it.
    ///
    /// # Panics
    /// If the state was cloned already (a programming error at start-up).
    #[must_use]
    pub fn with_consumers(mut self, consumers: migrations::consumers::Health) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("with_consumers is called before the state is shared")
            .consumers = consumers;
        self
    }

    /// The registry of this process's stalled consumers.
    pub fn consumers(&self) -> &migrations::consumers::Health {
        &self.inner.consumers
    }

    /// The settings.
    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }
    /// PostgreSQL.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }
    /// The command bus.
    pub fn bus(&self) -> &CommandBus {
        &self.inner.bus
    }
    /// Redis.
    pub fn redis(&self) -> &ConnectionManager {
        &self.inner.redis
    }
    /// NATS, if connected.
    pub fn nats(&self) -> Option<&async_nats::Client> {
        self.inner.nats.as_ref()
    }
    /// Login codes.
    pub fn otp(&self) -> &OtpStore {
        &self.inner.otp
    }
    /// The SMS port.
    pub fn sms(&self) -> &dyn SmsSender {
        self.inner.sms.as_ref()
    }
    /// Tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.inner.tokens
    }
    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }
    /// The open sockets of this process.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }
    /// The proposals pending for drivers, as this process's feed saw them.
    pub fn proposals(&self) -> &Proposals {
        &self.inner.proposals
    }
    /// The metrics handle.
    pub fn metrics(&self) -> Option<&PrometheusHandle> {
        self.inner.metrics.as_ref()
    }
    /// The publisher of drivers' pings, if any.
    pub fn location(&self) -> Option<&projections::location::LocationPublisher> {
        self.inner.location.as_ref()
    }
    /// The available-drivers index, if any.
    pub fn geo(&self) -> Option<&projections::geo::GeoIndex> {
        self.inner.geo.as_ref()
    }
    /// The components of this process that stopped on purpose.
    pub fn health(&self) -> &projections::health::Health {
        &self.inner.health
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "NebengJek", description = "Ride-hailing backend: HTTP endpoints of SPEC.md §4. Commands and pushes travel over the WebSocket /ws."),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The router's routes and the OpenAPI document generated from them; the operator
/// endpoints only with `with_ops`.
fn routes(with_ops: bool) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let router = OpenApiRouter::with_openapi(ApiDoc::openapi());
    let router = if with_ops {
        router
            .routes(routes!(ops::healthz))
            .routes(routes!(ops::readyz))
            .routes(routes!(ops::metrics))
    } else {
        router
    };
    router
        .routes(routes!(auth::request_otp))
        .routes(routes!(auth::issue_token))
        .routes(routes!(auth::me))
        .routes(routes!(auth::register_driver))
        .routes(routes!(reads::my_rides))
        .routes(routes!(reads::ride))
        .routes(routes!(reads::rides))
        .routes(routes!(reads::ledger))
        .routes(routes!(reads::payments))
        .routes(routes!(reads::revenue))
        .routes(routes!(reads::nearby))
        .routes(routes!(console::live::live))
        .routes(routes!(console::views::trace))
        .routes(routes!(console::views::audit))
        .split_for_parts()
}

/// The OpenAPI document of every HTTP endpoint.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes(true).1
}

/// The one router: HTTP, `/ws`, `/openapi.json` and the operator endpoints.
pub fn router(state: AppState) -> Router {
    public_router(state, true)
}

/// The edge's router; with `with_ops` false the operator endpoints (`/healthz`,
/// `/readyz`, `/metrics`) are left out, for a process that serves them on their own
/// address (`OPS_ADDR`, [`ops_router`]) where the public cannot reach them.
pub fn public_router(state: AppState, with_ops: bool) -> Router {
    let (routes, doc) = routes(with_ops);
    let doc = Arc::new(doc);
    routes
        .route("/ws", get(ws::upgrade))
        .merge(console::assets::router())
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .layer(axum::middleware::from_fn(trace_requests))
        .with_state(state)
}

/// Only the operator endpoints (`/healthz`, `/readyz`, `/metrics`), for a process that
/// runs without the `api` role.
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .layer(axum::middleware::from_fn(trace_requests))
        .with_state(state)
}

/// A span per request with its own id; the path only, never the query (a browser's
/// `?token=` must not reach the logs).
async fn trace_requests(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    // The route template (`/v1/rides/{id}`), never the raw path, labels the metrics.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!(
        "request",
        request_id = %uuid::Uuid::now_v7(),
        method = %request.method(),
        path = %request.uri().path(),
    );
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    metrics::counter!("nebengjek_http_requests_total", "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("nebengjek_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    span.in_scope(|| tracing::debug!(status, "answered"));
    response
}
