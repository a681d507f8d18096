//! Wiring: connections, the bus, the background tasks, and the edge's one router
//! (`api::router`: HTTP, `/ws`, `/openapi.json` and the operator endpoints; a process
//! without the `api` role serves only the operator endpoints, `api::ops_router`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use commands::clock::{Clock, SystemClock};
use commands::ports::{AcceptingProvider, PaymentProvider};
use commands::redis_positions::RedisPositions;
use commands::{CommandBus, EventStore};
use metrics_exporter_prometheus::PrometheusBuilder;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::config::Config;
use crate::Role;

/// Connects to PostgreSQL.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(config.database_max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&config.database_url)
        .await
        .with_context(|| {
            "cannot connect to PostgreSQL at DATABASE_URL (is it running? try scripts/services.sh)"
        })
}

/// Connects to Redis.
pub async fn connect_redis(config: &Config) -> anyhow::Result<redis::aio::ConnectionManager> {
    let client = redis::Client::open(config.redis_url.as_str())
        .with_context(|| format!("REDIS_URL={} is not a Redis URL", config.redis_url))?;
    tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new(client),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "no answer from Redis at REDIS_URL={} within 10 s",
            config.redis_url
        )
    })?
    .with_context(|| format!("cannot connect to Redis at REDIS_URL={}", config.redis_url))
}

/// The service's inbox prefix: `deploy/nats/nats-server.conf` lets only the service
/// read it, so clients (who read `_INBOX.>`) cannot see its JetStream replies.
pub const SERVICE_INBOX_PREFIX: &str = "_NEBENGJEK_INBOX";

/// Connects to NATS, with `NATS_USER`/`NATS_PASSWORD` when set.
pub async fn connect_nats(config: &Config) -> anyhow::Result<async_nats::Client> {
    let options = async_nats::ConnectOptions::new().custom_inbox_prefix(SERVICE_INBOX_PREFIX);
    let options = match &config.nats_credentials {
        Some((user, password)) => options.user_and_password(user.clone(), password.clone()),
        None => options,
    };
    options
        .connect(&config.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at NATS_URL={}", config.nats_url))
}

/// The SMS sender of the edge: the webhook when `SMS_WEBHOOK_URL` is set; otherwise,
/// in development only, the sender that logs the code. Outside development without a
/// webhook the edge does not start: no code may be logged there.
pub fn sms_sender(config: &Config) -> anyhow::Result<Arc<dyn api::sms::SmsSender>> {
    match (&config.sms_webhook_url, config.app_env) {
        (Some(url), _) => Ok(Arc::new(
            api::sms::WebhookSms::new(url, api::sms::WebhookPolicy::default())
                .map_err(|e| anyhow::anyhow!("SMS_WEBHOOK_URL is not usable: {e}"))?,
        )),
        (None, crate::config::AppEnv::Development) => Ok(Arc::new(api::sms::LoggingSms)),
        (None, crate::config::AppEnv::Production) => anyhow::bail!(
            "SMS_WEBHOOK_URL is required outside APP_ENV=development (login codes are only logged in development)"
        ),
    }
}

/// The edge's settings from the process configuration.
pub fn api_config(config: &Config) -> anyhow::Result<api::ApiConfig> {
    let mut api = api::ApiConfig::new(config.jwt_secret()?);
    api.dev_echo_otp = config.auth_dev_echo_otp;
    api.redis_prefix = config.redis_key_prefix.clone();
    api.events_stream = config.events_stream.clone();
    api.events_subject_prefix = config.events_subject_prefix.clone();
    api.policy = config.policy;
    api.analyst = config.limits.analyst;
    Ok(api)
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let mut system = start(config, role).await?;
    tokio::select! {
        () = shutdown_signal() => system.shutdown().await,
        result = system.wait() => result,
    }
}

/// A running system (or one role of it) in this process: its HTTP address and the way
/// to stop it.
#[derive(Debug)]
pub struct System {
    /// Where HTTP, `/ws` and the operator endpoints answer (the bound port when
    /// `HTTP_ADDR` asked for port 0).
    pub http_addr: std::net::SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` answer when `OPS_ADDR` is set (the
    /// bound port), and not on `http_addr`.
    pub ops_addr: Option<std::net::SocketAddr>,
    /// The PostgreSQL store id, also the suffix of this store's Redis keys.
    pub store_id: uuid::Uuid,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl System {
    /// Stops gracefully: WebSockets are closed with 1001, the background tasks finish
    /// their batch, and the server drains.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (by itself it only does on an error).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        match (&mut self.server).await {
            Ok(result) => result,
            Err(error) => Err(anyhow::anyhow!("the server task failed: {error}")),
        }
    }
}

/// The process's Prometheus recorder: installed once, shared by every system a process
/// starts (tests start several).
fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = crate::metrics_setup::prometheus_builder()
                .unwrap_or_else(|error| {
                    tracing::error!(%error, "bad histogram buckets; exporting summaries");
                    PrometheusBuilder::new()
                })
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only this one's");
            }
            crate::metrics_setup::register_rare_counters();
            handle
        })
        .clone()
}

/// The adapters a system is handed rather than builds from its configuration.
#[derive(Debug, Clone)]
pub struct Ports {
    /// The payment provider (SPEC §3: the default accepts every charge; tests hand in
    /// one that fails on demand, `commands::ports::ScriptedProvider`).
    pub payments: Arc<dyn PaymentProvider>,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            payments: Arc::new(AcceptingProvider),
        }
    }
}

/// Migrates, connects and starts `role`: returns once HTTP is listening.
pub async fn start(config: Config, role: Role) -> anyhow::Result<System> {
    start_with(config, role, Ports::default()).await
}

/// [`start`] with the given adapters.
pub async fn start_with(config: Config, role: Role, ports: Ports) -> anyhow::Result<System> {
    // Fail closed, before anything connects: secrets, and a real SMS sender for the edge.
    config.check_secrets()?;
    let serves_api = matches!(role, Role::All | Role::Api);
    let serves_commands = matches!(role, Role::All | Role::Commands);
    let sms: Arc<dyn api::sms::SmsSender> = if serves_api {
        sms_sender(&config)?
    } else {
        Arc::new(api::sms::LoggingSms)
    };
    let api_config = if serves_api || serves_commands {
        api_config(&config)?
    } else {
        api::ApiConfig::new(String::new())
    };

    let metrics = metrics_handle();
    let pool = connect(&config).await?;
    migrations::run(&pool).await.context("migrations failed")?;
    let store_id = migrations::store_id(&pool).await?;
    // No store id here: /metrics may be scraped by more than operators, and the id is
    // what a forged event-feed message would need.
    metrics::gauge!("nebengjek_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let nats = connect_nats(&config).await?;
    let health = projections::health::Health::default();
    let redis = connect_redis(&config).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let store = EventStore::start(pool.clone());
    let bus = CommandBus::new(
        store,
        config.policy,
        clock.clone(),
        Arc::new(RedisPositions::new(
            redis.clone(),
            &config.redis_key_prefix,
            store_id,
        )),
        ports.payments,
    )
    .with_command_rate(config.limits.command_rate);

    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    // Every consumer of this process reports its stalls here; `/readyz` reads it.
    let supervision = migrations::consumers::Supervision {
        health: migrations::consumers::Health::default(),
        backoff: config.consumer_retry,
    };
    if serves_commands {
        let (client, bus, stopped) = (nats.clone(), bus.clone(), stopped.clone());
        let prefix = config.command_subject_prefix.clone();
        let tokens = commands::token::TokenVerifier::new(api_config.jwt_secret.as_bytes(), clock.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(error) = commands::nats::serve(client, bus, tokens, prefix, stopped).await {
                tracing::error!(%error, "NATS ingress stopped");
            }
        }));
    }
    if matches!(role, Role::All | Role::Matcher) {
        tasks.push(tokio::spawn(commands::process::run_ride_creator(
            bus.clone(),
            supervision.clone(),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(commands::process::run_deadlines(
            bus.clone(),
            supervision.clone(),
            stopped.clone(),
        )));
        tasks.extend(spawn_geo(
            &config,
            &nats,
            redis.clone(),
            store_id,
            &bus,
            &supervision,
            &stopped,
        ));
    }
    if matches!(role, Role::All | Role::Projections) {
        let projectors: Vec<Arc<dyn projections::Projector>> = vec![
            Arc::new(projections::RidesProjector),
            Arc::new(projections::MatchesProjector),
        ];
        tasks.push(tokio::spawn(projections::run_supervised(
            pool.clone(),
            projectors,
            supervision.clone(),
            stopped.clone(),
        )));
        let relay = projections::relay::Relay::new(
            pool.clone(),
            nats.clone(),
            projections::relay::RelayConfig {
                stream: config.events_stream.clone(),
                subject_prefix: config.events_subject_prefix.clone(),
                ..Default::default()
            },
        )
        .await
        .context("cannot set up the outbox relay (is JetStream enabled on NATS?)")?
        .with_health(health.clone());
        tasks.push(tokio::spawn(
            relay.run_supervised(supervision.clone(), stopped.clone()),
        ));
        let signer = projections::audit_log::Signer::new(
            pool.clone(),
            Some(nats.clone()),
            config.audit_signing_key()?,
            projections::audit_log::AuditConfig {
                head_interval: config.audit_tree_head_interval,
                ..Default::default()
            },
        )
        .await
        .context("cannot set up the audit log (the AUDIT stream on JetStream)")?;
        tasks.push(tokio::spawn(signer.run(stopped.clone())));
    }

    // The edge publishes drivers' pings to LOCATION and answers /v1/drivers/nearby.
    let location_publisher = projections::location::LocationPublisher::new(
        async_nats::jetstream::new(nats.clone()),
        &config.location.stream,
    )
    .await
    .context("cannot set up the LOCATION stream (is JetStream enabled on NATS?)")?;
    let geo_index = projections::geo::GeoIndex::new(
        redis.clone(),
        projections::geo::GeoKeys::new(&config.redis_key_prefix, store_id),
        config.location.availability_ttl,
        projections::geo::system_now(),
    );
    let state = api::AppState::new(
        api_config,
        api::Dependencies {
            pool,
            bus: bus.clone(),
            redis,
            nats: Some(nats.clone()),
            sms,
            clock,
            metrics: Some(metrics),
            location: Some(location_publisher),
            geo: Some(geo_index),
            health,
        },
    )
    .with_consumers(supervision.health.clone());
    let registry = state.registry().clone();
    let app = if serves_api {
        tasks.push(
            api::ws::feed::start(state.clone(), nats.clone(), stopped.clone())
                .await
                .with_context(|| {
                    format!(
                        "cannot follow the event feed (EVENTS_STREAM={}, EVENTS_SUBJECT_PREFIX={})",
                        config.events_stream, config.events_subject_prefix
                    )
                })?,
        );
        Some(api::public_router(state.clone(), config.ops_addr.is_none()))
    } else if config.ops_addr.is_some() {
        None
    } else {
        Some(api::ops_router(state.clone()))
    };
    // The operator endpoints on their own address, when asked.
    let ops = match config.ops_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on OPS_ADDR={addr}"))?;
            let ops_addr = listener.local_addr()?;
            let mut draining = stopped.clone();
            let router = api::ops_router(state);
            let server = tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = draining.wait_for(|stop| *stop).await;
                    })
                    .await
            });
            Some((ops_addr, server))
        }
        None => None,
    };
    let ops_addr = ops.as_ref().map(|(addr, _)| *addr);
    let (http_addr, listener) = match &app {
        Some(_) => {
            let listener = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("cannot listen on HTTP_ADDR={}", config.http_addr))?;
            (listener.local_addr()?, Some(listener))
        }
        // Nothing to serve on HTTP_ADDR: the operator endpoints are on OPS_ADDR.
        None => (ops_addr.unwrap_or(config.http_addr), None),
    };
    tracing::info!(addr = %http_addr, ?ops_addr, ?role, %store_id, "nebengjek is serving");
    let mut draining = stopped.clone();
    let server = tokio::spawn(async move {
        let shutdown = async move {
            let _ = draining.wait_for(|stop| *stop).await;
            tracing::info!("shutting down");
            // WebSockets never end by themselves: tell them to go (1001) so apps
            // reconnect to another process, and the server can drain.
            registry.close_all();
        };
        match (listener, app) {
            (Some(listener), Some(app)) => {
                axum::serve(without_nagle(listener), app)
                    .with_graceful_shutdown(shutdown)
                    .await?;
            }
            _ => shutdown.await,
        }
        if let Some((_, ops)) = ops {
            ops.await??;
        }
        for task in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        Ok(())
    });
    Ok(System {
        http_addr,
        ops_addr,
        store_id,
        stop,
        server,
    })
}

/// The listener with Nagle's algorithm off on every accepted connection.
///
/// An ack or a push is one small write; with Nagle on, a write that follows another
/// still unacknowledged (a push just before an ack) waits for the client's delayed ACK,
/// about 40 ms on Linux. `docs/load-10k.md` shows it as the p99 of a lightly loaded run.
pub fn without_nagle(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
    })
}

/// The location consumer with the Redis geo projection, and the matcher.
fn spawn_geo(
    config: &Config,
    nats: &async_nats::Client,
    redis: redis::aio::ConnectionManager,
    store_id: uuid::Uuid,
    bus: &CommandBus,
    supervision: &migrations::consumers::Supervision,
    stopped: &watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let js = async_nats::jetstream::new(nats.clone());
    let location = &config.location;
    let index = projections::geo::GeoIndex::new(
        redis,
        projections::geo::GeoKeys::new(&config.redis_key_prefix, store_id),
        location.availability_ttl,
        projections::geo::system_now(),
    );
    let projection = projections::location::GeoProjection {
        pool: bus.store().pool().clone(),
        js: js.clone(),
        stream: location.stream.clone(),
        consumer: projections::location::consumer_name(store_id),
        index,
    };
    let matcher = commands::matcher::MatcherConfig {
        availability_ttl: location.availability_ttl,
        max_candidates: usize::try_from(config.policy.matching.max_drivers_per_request).unwrap_or(usize::MAX),
        speed_kmh: location.eta_speed_kmh,
    };
    [
        tokio::spawn(projections::location::run_until_stopped(
            projection,
            supervision.clone(),
            stopped.clone(),
        )),
        tokio::spawn(commands::matcher::run(
            bus.clone(),
            js,
            location.stream.clone(),
            matcher,
            stopped.clone(),
        )),
    ]
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[cfg(test)]
mod tests {
    use axum::serve::Listener as _;

    #[tokio::test]
    async fn accepted_connections_have_nagle_disabled() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut listener = super::without_nagle(listener);
        let client = tokio::net::TcpStream::connect(addr);
        let ((accepted, _), client) = tokio::join!(listener.accept(), client);
        client.unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "TCP_NODELAY is set on the server's side"
        );
    }
}
