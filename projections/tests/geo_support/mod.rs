//! Test support: a fresh, migrated database per test, a Redis key prefix and a NATS
//! stream name of its own, and a way to put events in the store without the write side
//! (`projections` does not depend on `commands`). Tests fail, never skip, when
//! PostgreSQL, Redis or NATS is missing; they touch only the keys and streams they made.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use domain::DomainEvent;
use projections::geo::{GeoIndex, GeoKeys, Now};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
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

pub async fn redis() -> redis::aio::ConnectionManager {
    let url = redis_url();
    redis::Client::open(url.as_str())
        .expect("REDIS_URL is a Redis URL")
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| panic!("Redis must be running at {url} (scripts/services.sh): {e}"))
}

pub async fn nats() -> async_nats::Client {
    let url = nats_url();
    async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS must be running at {url} (scripts/services.sh): {e}"))
}

/// A clock tests move by hand.
#[derive(Clone)]
pub struct TestClock(Arc<Mutex<DateTime<Utc>>>);

impl TestClock {
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(
            Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap(),
        )))
    }
    pub fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
    pub fn advance(&self, by: TimeDelta) {
        *self.0.lock().unwrap() += by;
    }
    pub fn as_now(&self) -> Now {
        let me = self.clone();
        Arc::new(move || me.now())
    }
}

/// Everything a geo test drives.
pub struct World {
    pub pool: PgPool,
    pub store_id: Uuid,
    pub prefix: String,
    pub index: GeoIndex,
    pub clock: TestClock,
    pub redis: redis::aio::ConnectionManager,
}

pub async fn world() -> World {
    let pool = fresh_pool().await;
    let store_id = migrations::store_id(&pool).await.unwrap();
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let clock = TestClock::new();
    let redis = redis().await;
    let index = GeoIndex::new(
        redis.clone(),
        GeoKeys::new(&prefix, store_id),
        Duration::from_secs(60),
        clock.as_now(),
    );
    World {
        pool,
        store_id,
        prefix,
        index,
        clock,
        redis,
    }
}

impl World {
    /// Another process on the same keys.
    pub fn another_index(&self) -> GeoIndex {
        GeoIndex::new(
            self.redis.clone(),
            GeoKeys::new(&self.prefix, self.store_id),
            Duration::from_secs(60),
            self.clock.as_now(),
        )
    }

    /// Removes every key this test made.
    pub async fn cleanup(&self) {
        self.index.delete_all().await.unwrap();
    }
}

impl Drop for World {
    /// A failing test leaves nothing behind on the shared Redis either (synchronous:
    /// there is no runtime to await on in `drop`).
    fn drop(&mut self) {
        let keys: Vec<String> = self.index.keys().all().iter().map(|k| (*k).to_owned()).collect();
        if let Ok(mut conn) = redis::Client::open(redis_url().as_str()).and_then(|c| c.get_connection()) {
            let _ = redis::cmd("DEL").arg(keys).query::<()>(&mut conn);
        }
    }
}

/// Appends one event at the next position (the feed is all the projection reads).
pub async fn append<E: DomainEvent>(
    pool: &PgPool,
    aggregate_type: &str,
    aggregate_id: Uuid,
    event: &E,
) -> i64 {
    let tagged = serde_json::to_value(event).unwrap();
    let mut tx = pool.begin().await.unwrap();
    let position: i64 = sqlx::query_scalar(
        "UPDATE event_store SET head_position = head_position + 1 RETURNING head_position",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let sequence: i64 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(sequence), 0) + 1 FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata, recorded_at, hash) VALUES ($1, $2, $3, $4, $5, 1, $6, '{}', now(), '\\x00')",
    )
    .bind(position)
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(sequence)
    .bind(event.event_type())
    .bind(&tagged["payload"])
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    position
}
