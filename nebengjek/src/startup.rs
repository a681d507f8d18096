//! Wiring: connections, the bus, the background tasks and the operator endpoints.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use commands::clock::SystemClock;
use commands::ports::AcceptingProvider;
use commands::redis_positions::RedisPositions;
use commands::{CommandBus, EventStore};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
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

#[derive(Clone)]
struct Ops {
    pool: PgPool,
    nats: async_nats::Client,
    redis_addr: String,
    metrics: PrometheusHandle,
}

/// Runs until Ctrl-C or SIGTERM.
pub async fn serve(config: Config, role: Role) -> anyhow::Result<()> {
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let pool = connect(&config).await?;
    migrations::run(&pool).await.context("migrations failed")?;
    let store_id = migrations::store_id(&pool).await?;
    metrics::gauge!("nebengjek_build_info", "version" => env!("CARGO_PKG_VERSION"), "store_id" => store_id.to_string())
        .set(1.0);
    let nats = async_nats::connect(&config.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at NATS_URL={}", config.nats_url))?;

    let redis = redis::Client::open(config.redis_url.as_str())
        .with_context(|| format!("REDIS_URL={} is not a Redis URL", config.redis_url))?
        .get_connection_manager()
        .await
        .with_context(|| format!("cannot connect to Redis at REDIS_URL={}", config.redis_url))?;
    let positions = RedisPositions::new(redis.clone(), &config.location.redis_key_prefix, store_id);

    let store = EventStore::start(pool.clone());
    let bus = CommandBus::new(
        store,
        config.policy,
        Arc::new(SystemClock),
        Arc::new(positions),
        Arc::new(AcceptingProvider),
    );

    let (stop, stopped) = watch::channel(false);
    let mut tasks = Vec::new();
    if matches!(role, Role::All | Role::Commands) {
        let (client, bus, stopped) = (nats.clone(), bus.clone(), stopped.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(error) = commands::nats::serve(client, bus, String::new(), stopped).await {
                tracing::error!(%error, "NATS ingress stopped");
            }
        }));
    }
    if matches!(role, Role::All | Role::Matcher) {
        tasks.push(tokio::spawn(commands::process::run_ride_creator(
            bus.clone(),
            stopped.clone(),
        )));
        tasks.push(tokio::spawn(commands::process::run_deadlines(
            bus.clone(),
            stopped.clone(),
        )));
        tasks.extend(spawn_geo(
            &config,
            &pool,
            &nats,
            redis.clone(),
            store_id,
            &bus,
            &stopped,
        ));
    }
    if matches!(role, Role::All | Role::Projections) {
        let projectors: Vec<Arc<dyn projections::Projector>> = vec![
            Arc::new(projections::RidesProjector),
            Arc::new(projections::MatchesProjector),
        ];
        tasks.push(tokio::spawn(projections::run(
            pool.clone(),
            projectors,
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
        .context("cannot set up the outbox relay (is JetStream enabled on NATS?)")?;
        tasks.push(tokio::spawn(relay.run(stopped.clone())));
    }

    let redis_addr = config
        .redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let ops = Ops {
        pool,
        nats,
        redis_addr,
        metrics,
    };
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move { ops.metrics.render() }),
        )
        .with_state(ops);
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on HTTP_ADDR={}", config.http_addr))?;
    tracing::info!(addr = %listener.local_addr()?, ?role, %store_id, "nebengjek is serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    let _ = stop.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    Ok(())
}

/// The location consumer with the Redis geo projection, and the matcher.
fn spawn_geo(
    config: &Config,
    pool: &PgPool,
    nats: &async_nats::Client,
    redis: redis::aio::ConnectionManager,
    store_id: uuid::Uuid,
    bus: &CommandBus,
    stopped: &watch::Receiver<bool>,
) -> [tokio::task::JoinHandle<()>; 2] {
    let js = async_nats::jetstream::new(nats.clone());
    let location = &config.location;
    let index = projections::geo::GeoIndex::new(
        redis,
        projections::geo::GeoKeys::new(&location.redis_key_prefix, store_id),
        location.availability_ttl,
        projections::geo::system_now(),
    );
    let projection = projections::location::GeoProjection {
        pool: pool.clone(),
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

async fn readyz(State(ops): State<Ops>) -> (StatusCode, Json<serde_json::Value>) {
    let postgres = sqlx::query("SELECT 1").execute(&ops.pool).await.is_ok();
    let nats = matches!(
        ops.nats.connection_state(),
        async_nats::connection::State::Connected
    );
    let redis = redis_pings(&ops.redis_addr).await;
    let status = if postgres && nats && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "postgres": postgres, "nats": nats, "redis": redis })),
    )
}

/// Whether Redis answers `PING` within a second (a bare RESP exchange: readiness needs
/// nothing more until the geo index arrives).
async fn redis_pings(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), attempt).await,
        Ok(Some(true))
    )
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
    tracing::info!("shutting down");
}
