//! Test support: a fresh migrated database per test on `DATABASE_URL`'s server, Redis
//! keys under a prefix of the test's own, a JetStream stream and subject prefix of the
//! test's own (deleted at the end), and the edge over them. Tests fail, never skip,
//! when PostgreSQL, Redis or NATS is missing.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::sms::{SmsError, SmsSender};
use api::{ApiConfig, AppState, Dependencies};
use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::{TimeZone, Utc};
use commands::clock::ManualClock;
use commands::ingress::ClientCommand;
use commands::pipeline::Envelope;
use commands::ports::{InMemoryPositions, ScriptedProvider};
use commands::{CommandBus, EventStore};
use domain::matching::{Candidate, MatchCommand};
use domain::msisdn::Msisdn;
use domain::{Actor, GeoPoint, MatchId, Policy, RideId, Role, UserId};
use http_body_util::BodyExt;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tower::ServiceExt;
use uuid::Uuid;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/nebengjek".into())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A new database with the schema applied.
pub async fn fresh_pool() -> PgPool {
    let url = database_url();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(url);
    let name = format!("nebengjek_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {base} (scripts/services.sh): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect to test database");
    migrations::run(&pool).await.expect("migrations apply");
    pool
}

/// Codes sent, for tests that do not echo them.
#[derive(Debug, Default)]
pub struct CapturingSms(pub std::sync::Mutex<Vec<(String, String)>>);

#[async_trait]
impl SmsSender for CapturingSms {
    async fn send_otp(&self, to: &Msisdn, code: &str) -> Result<(), SmsError> {
        self.0.lock().unwrap().push((to.to_string(), code.to_owned()));
        Ok(())
    }
}

impl CapturingSms {
    pub fn last(&self) -> Option<String> {
        self.0.lock().unwrap().last().map(|(_, c)| c.clone())
    }
}

/// Everything a test drives.
pub struct App {
    pub state: AppState,
    pub pool: PgPool,
    pub bus: CommandBus,
    pub clock: Arc<ManualClock>,
    pub positions: Arc<InMemoryPositions>,
    pub sms: Arc<CapturingSms>,
    pub config: ApiConfig,
    pub nats: async_nats::Client,
}

pub fn test_config() -> ApiConfig {
    let mut config = ApiConfig::new("test-secret-for-the-edge");
    let run = Uuid::new_v4().simple().to_string();
    config.redis_prefix = format!("test:{run}:");
    config.events_stream = format!("EDGE_TEST_{run}");
    config.events_subject_prefix = format!("edgetest.{run}");
    config
}

pub async fn app() -> App {
    app_with(test_config()).await
}

pub async fn app_with(config: ApiConfig) -> App {
    let pool = fresh_pool().await;
    app_on(pool, config).await
}

/// An edge process on an existing database (a second process shares it).
pub async fn app_on(pool: PgPool, config: ApiConfig) -> App {
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap(),
    ));
    let positions = Arc::new(InMemoryPositions::default());
    let bus = CommandBus::new(
        EventStore::start(pool.clone()),
        Policy::default(),
        clock.clone(),
        positions.clone(),
        Arc::new(ScriptedProvider::default()),
    );
    let redis_client = redis::Client::open(redis_url()).expect("REDIS_URL");
    let redis = tokio::time::timeout(
        Duration::from_secs(5),
        redis::aio::ConnectionManager::new(redis_client),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis must be running at {}", redis_url()))
    .unwrap_or_else(|e| panic!("Redis must be running at {}: {e}", redis_url()));
    let nats = async_nats::connect(nats_url())
        .await
        .unwrap_or_else(|e| panic!("NATS must be running at {}: {e}", nats_url()));
    let sms = Arc::new(CapturingSms::default());
    let state = AppState::new(
        config.clone(),
        Dependencies {
            pool: pool.clone(),
            bus: bus.clone(),
            redis,
            nats: Some(nats.clone()),
            sms: sms.clone(),
            clock: clock.clone(),
            metrics: None,
            location: None,
            geo: None,
            health: Default::default(),
        },
    );
    App {
        state,
        pool,
        bus,
        clock,
        positions,
        sms,
        config,
        nats,
    }
}

impl App {
    /// One request through the router, without a socket.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        }
        .unwrap();
        let response = api::router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, value)
    }

    /// A token for a user created directly in the table.
    pub async fn user(&self, role: Role) -> (UserId, String) {
        let id = UserId::from_uuid(Uuid::now_v7());
        let msisdn = format!("62812{:07}", rand_digits());
        sqlx::query("INSERT INTO users (user_id, msisdn, role, fullname, created_at) VALUES ($1, $2, $3, NULL, now())")
            .bind(id.as_uuid())
            .bind(&msisdn)
            .bind(role.as_str())
            .execute(&self.pool)
            .await
            .unwrap();
        let token = self.state.tokens().issue(id, role).unwrap().token;
        (id, token)
    }

    /// A driver with a vehicle.
    pub async fn driver(&self) -> (UserId, String) {
        let (id, token) = self.user(Role::Driver).await;
        sqlx::query("INSERT INTO drivers (user_id, vehicle_type, vehicle_plate, registered_at) VALUES ($1, 'car', $2, now())")
            .bind(id.as_uuid())
            .bind(format!("B {} XYZ", 1000 + rand_digits() % 9000))
            .execute(&self.pool)
            .await
            .unwrap();
        (id, token)
    }

    /// The server on port 0 with the event feed running; returns its address.
    pub async fn serve(&self) -> (SocketAddr, watch::Sender<bool>) {
        let (stop, stopped) = watch::channel(false);
        api::ws::feed::start(self.state.clone(), self.nats.clone(), stopped.clone())
            .await
            .expect("the event feed starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = api::router(self.state.clone());
        let mut until = stopped.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = until.changed().await;
                })
                .await;
        });
        (addr, stop)
    }

    /// Runs the outbox relay (`projections::relay`) into this test's stream until
    /// stopped.
    pub async fn relay(&self, stop: watch::Receiver<bool>) {
        let config = projections::relay::RelayConfig {
            stream: self.config.events_stream.clone(),
            subject_prefix: self.config.events_subject_prefix.clone(),
            batch: 500,
        };
        let relay = projections::relay::Relay::new(self.pool.clone(), self.nats.clone(), config)
            .await
            .expect("the relay starts");
        tokio::spawn(relay.run(stop));
    }

    /// Projects everything so far into the read models.
    pub async fn project(&self) {
        while projections::run_batch(&self.pool, &projections::RidesProjector, 1000)
            .await
            .expect("project")
            > 0
        {}
    }

    /// A passenger's match, proposed to `driver`, accepted and confirmed, and its ride
    /// created: returns the ride id.
    pub async fn ride_between(&self, passenger: UserId, driver: UserId) -> (MatchId, RideId) {
        let passenger = Actor::new(passenger, Role::Passenger);
        let driver = Actor::new(driver, Role::Driver);
        let ack = self
            .bus
            .dispatch(
                passenger,
                Some(&Uuid::now_v7().to_string()),
                ClientCommand::RequestMatch {
                    pickup: pickup(),
                    destination: destination(),
                },
            )
            .await;
        assert!(ack.ok, "{ack:?}");
        let match_id: MatchId = ack.result.as_ref().unwrap()["match_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        self.propose(match_id, &[driver.user_id]).await;
        for (actor, accepted) in [(driver, true), (passenger, true)] {
            let ack = self
                .bus
                .dispatch(
                    actor,
                    Some(&Uuid::now_v7().to_string()),
                    ClientCommand::MatchConfirm { match_id, accepted },
                )
                .await;
            assert!(ack.ok, "{ack:?}");
        }
        commands::process::create_rides_once(&self.bus).await.unwrap();
        let ride: Uuid = sqlx::query_scalar(
            "SELECT aggregate_id FROM events WHERE aggregate_type = 'ride' AND event_type = 'created' \
             AND payload->>'match_id' = $1",
        )
        .bind(match_id.to_string())
        .fetch_one(&self.pool)
        .await
        .unwrap();
        (match_id, RideId::from_uuid(ride))
    }

    /// Drives a ride from PENDING to COMPLETED at the minimum fare (no trip points).
    pub async fn complete_ride(&self, ride: RideId, passenger: UserId, driver: UserId) {
        let driver = Actor::new(driver, Role::Driver);
        let passenger = Actor::new(passenger, Role::Passenger);
        let id = || Some(Uuid::now_v7().to_string());
        let steps = [
            (
                driver,
                ClientCommand::BeaconUpdate {
                    is_active: true,
                    point: pickup(),
                },
            ),
            (driver, ClientCommand::RideStart { ride_id: ride }),
            (
                driver,
                ClientCommand::RideArrived {
                    ride_id: ride,
                    adjustment_factor: None,
                },
            ),
            (
                passenger,
                ClientCommand::PaymentProcess {
                    ride_id: ride,
                    amount: 5000,
                    accepted: true,
                },
            ),
        ];
        for (actor, command) in steps {
            let ack = self.bus.dispatch(actor, id().as_deref(), command).await;
            assert!(ack.ok, "{ack:?}");
        }
    }

    /// The matcher's part: propose `match_id` to `drivers`.
    pub async fn propose(&self, match_id: MatchId, drivers: &[UserId]) {
        let candidates = drivers
            .iter()
            .map(|d| Candidate {
                driver_id: *d,
                distance_km: 1.2,
                eta_seconds: 180,
            })
            .collect();
        let env = Envelope::system(format!("propose:{match_id}:{}", Uuid::now_v7()), None);
        let ack = commands::bus::answer(
            self.bus
                .matches()
                .execute(match_id.as_uuid(), &env, &MatchCommand::Propose { candidates })
                .await
                .unwrap(),
        );
        assert!(ack.ok, "{ack:?}");
    }

    /// Deletes this test's stream (also done on drop, so a failing test leaves none).
    pub async fn cleanup(&self) {
        let js = async_nats::jetstream::new(self.nats.clone());
        let _ = js.delete_stream(&self.config.events_stream).await;
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Only the first process of a test owns the stream; deleting twice is harmless.
        let stream = self.config.events_stream.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let _ = async_nats::jetstream::new(client).delete_stream(&stream).await;
                }
            });
        })
        .join();
    }
}

fn rand_digits() -> u32 {
    (Uuid::new_v4().as_u128() % 10_000_000) as u32
}

pub fn pickup() -> GeoPoint {
    GeoPoint::new(-6.2, 106.8).unwrap()
}

pub fn destination() -> GeoPoint {
    GeoPoint::new(-6.17, 106.82).unwrap()
}
