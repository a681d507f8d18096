//! Test support: a fresh, migrated database per test on the server of `DATABASE_URL`,
//! and a command bus over it with a manual clock. Tests fail (never skip) when
//! PostgreSQL or NATS is missing.

#![allow(dead_code)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use commands::clock::ManualClock;
use commands::ports::{InMemoryPositions, ScriptedProvider};
use commands::{CommandBus, EventStore};
use domain::Policy;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The server tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/nebengjek".into())
}

/// A new database with the schema applied.
pub async fn fresh_pool() -> PgPool {
    let url = database_url();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(url);
    let name = format!("nebengjek_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {base} (scripts/services.sh): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect to test database");
    migrations::run(&pool).await.expect("migrations apply");
    pool
}

/// Everything a test drives.
pub struct World {
    pub pool: PgPool,
    pub store: EventStore,
    pub bus: CommandBus,
    pub clock: Arc<ManualClock>,
    pub positions: Arc<InMemoryPositions>,
    pub payments: Arc<ScriptedProvider>,
}

/// A second process on the same database: its own writer and its own caches.
pub fn another_process(world: &World) -> CommandBus {
    CommandBus::new(
        EventStore::start(world.pool.clone()),
        Policy::default(),
        world.clock.clone(),
        world.positions.clone(),
        world.payments.clone(),
    )
}

pub async fn world() -> World {
    let pool = fresh_pool().await;
    let store = EventStore::start(pool.clone());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap(),
    ));
    let positions = Arc::new(InMemoryPositions::default());
    let payments = Arc::new(ScriptedProvider::default());
    let bus = CommandBus::new(
        store.clone(),
        Policy::default(),
        clock.clone(),
        positions.clone(),
        payments.clone(),
    );
    World {
        pool,
        store,
        bus,
        clock,
        positions,
        payments,
    }
}
