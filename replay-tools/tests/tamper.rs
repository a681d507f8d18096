//! SPEC.md §5 guarantee 6: an edited or deleted event is detected by the hash chain.

use std::sync::Arc;

use commands::clock::SystemClock;
use commands::pipeline::{Envelope, Handler, Outcome};
use commands::EventStore;
use domain::ride::{Ride, RideCommand};
use domain::{Actor, GeoPoint, MatchId, Policy, RideId, Role, UserId};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn fresh_pool() -> PgPool {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/nebengjek".into());
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(url);
    let name = format!("nebengjek_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {base}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let pool = PgPoolOptions::new()
        .connect(&format!("{base}/{name}"))
        .await
        .unwrap();
    migrations::run(&pool).await.unwrap();
    pool
}

/// Three started-and-cancelled rides; returns their ids.
async fn some_rides(pool: &PgPool) -> Vec<RideId> {
    let handler = Handler::<Ride>::new(
        EventStore::start(pool.clone()),
        Arc::new(Policy::default()),
        Arc::new(SystemClock),
        100,
    );
    let p = GeoPoint::new(-6.2, 106.8).unwrap();
    let mut rides = Vec::new();
    for _ in 0..3 {
        let ride_id = RideId::from_uuid(Uuid::now_v7());
        let driver = Actor::new(UserId::from_uuid(Uuid::now_v7()), Role::Driver);
        let passenger = Actor::new(UserId::from_uuid(Uuid::now_v7()), Role::Passenger);
        let commands = [
            (
                Envelope::system(format!("c{ride_id}"), None),
                RideCommand::Create {
                    ride_id,
                    match_id: MatchId::from_uuid(Uuid::now_v7()),
                    driver_id: driver.user_id,
                    passenger_id: passenger.user_id,
                    pickup: p,
                    destination: GeoPoint::new(-6.1, 106.8).unwrap(),
                },
            ),
            (
                Envelope::from_user(passenger, None),
                RideCommand::Cancel {
                    actor: passenger,
                    reason: "driver too slow".into(),
                },
            ),
        ];
        for (env, cmd) in commands {
            let outcome = handler.execute(ride_id.as_uuid(), &env, &cmd).await.unwrap();
            assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
        }
        rides.push(ride_id);
    }
    rides
}

#[tokio::test]
async fn a_clean_store_verifies() {
    let pool = fresh_pool().await;
    some_rides(&pool).await;
    let (breaks, checked) = replay_tools::verify_chains(&pool).await.unwrap();
    assert!(breaks.is_empty(), "{breaks:?}");
    assert_eq!(checked, 6);
}

#[tokio::test]
async fn an_edited_payload_is_detected_and_names_the_ride() {
    let pool = fresh_pool().await;
    let rides = some_rides(&pool).await;
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{reason}', '\"nothing happened\"') \
         WHERE aggregate_id = $1 AND event_type = 'cancelled'",
    )
    .bind(rides[1].as_uuid())
    .execute(&pool)
    .await
    .unwrap();
    let (breaks, _) = replay_tools::verify_chains(&pool).await.unwrap();
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert_eq!(breaks[0].aggregate_id, rides[1].as_uuid());
    assert_eq!(breaks[0].sequence, 2);
}

#[tokio::test]
async fn edited_metadata_is_detected() {
    let pool = fresh_pool().await;
    let rides = some_rides(&pool).await;
    sqlx::query("UPDATE events SET metadata = jsonb_set(metadata, '{actor,role}', '\"driver\"') WHERE aggregate_id = $1 AND sequence = 2")
        .bind(rides[0].as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let (breaks, _) = replay_tools::verify_chains(&pool).await.unwrap();
    assert!(
        breaks.iter().any(|b| b.aggregate_id == rides[0].as_uuid()),
        "{breaks:?}"
    );
}

#[tokio::test]
async fn a_deleted_last_event_is_detected_against_the_recorded_head() {
    let pool = fresh_pool().await;
    let rides = some_rides(&pool).await;
    sqlx::query("DELETE FROM events WHERE aggregate_id = $1 AND sequence = 2")
        .bind(rides[2].as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let (breaks, _) = replay_tools::verify_chains(&pool).await.unwrap();
    assert_eq!(breaks.len(), 1, "{breaks:?}");
    assert_eq!(breaks[0].aggregate_id, rides[2].as_uuid());
}

#[tokio::test]
async fn a_deleted_middle_event_is_detected() {
    let pool = fresh_pool().await;
    let rides = some_rides(&pool).await;
    sqlx::query("DELETE FROM events WHERE aggregate_id = $1 AND sequence = 1")
        .bind(rides[0].as_uuid())
        .execute(&pool)
        .await
        .unwrap();
    let (breaks, _) = replay_tools::verify_chains(&pool).await.unwrap();
    assert!(
        breaks.iter().all(|b| b.aggregate_id == rides[0].as_uuid()),
        "{breaks:?}"
    );
    assert!(!breaks.is_empty());
}
