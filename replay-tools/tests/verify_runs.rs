//! `replay-tools verify` records each run in `verify_runs` (what the console's audit
//! panel shows): a clean store as passed with its counts, a tampered one as failed with
//! the finding, and the exit status is unchanged by the recording.

use std::process::Command;
use std::sync::Arc;

use commands::clock::SystemClock;
use commands::pipeline::{Envelope, Handler, Outcome};
use commands::EventStore;
use domain::ride::{Ride, RideCommand};
use domain::{Actor, GeoPoint, MatchId, Policy, RideId, Role, UserId};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

async fn fresh_db() -> (PgPool, String) {
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
    let url = format!("{base}/{name}");
    let pool = PgPoolOptions::new().connect(&url).await.unwrap();
    migrations::run(&pool).await.unwrap();
    (pool, url)
}

/// A ride created and cancelled, projected; returns its id.
async fn a_cancelled_ride(pool: &PgPool) -> RideId {
    let handler = Handler::<Ride>::new(
        EventStore::start(pool.clone()),
        Arc::new(Policy::default()),
        Arc::new(SystemClock),
        100,
    );
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
                pickup: GeoPoint::new(-6.2, 106.8).unwrap(),
                destination: GeoPoint::new(-6.1, 106.8).unwrap(),
            },
        ),
        (
            Envelope::from_user(passenger, None),
            RideCommand::Cancel {
                actor: passenger,
                reason: "changed plans".into(),
            },
        ),
    ];
    for (env, cmd) in commands {
        let outcome = handler.execute(ride_id.as_uuid(), &env, &cmd).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
    }
    while projections::run_batch(pool, &projections::RidesProjector, 1000)
        .await
        .unwrap()
        > 0
    {}
    ride_id
}

fn verify(url: &str) -> i32 {
    let output = Command::new(env!("CARGO_BIN_EXE_replay-tools"))
        .arg("verify")
        .env("DATABASE_URL", url)
        .output()
        .expect("replay-tools runs");
    output.status.code().unwrap_or(-1)
}

type Run = (bool, i64, i64, i32, serde_json::Value);

async fn last_run(pool: &PgPool) -> Option<Run> {
    sqlx::query_as(
        "SELECT passed, events, aggregates, chain_breaks, findings FROM verify_runs \
         ORDER BY run_id DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn each_verify_run_is_recorded_with_its_verdict_and_findings() {
    let (pool, url) = fresh_db().await;
    let ride = a_cancelled_ride(&pool).await;
    assert_eq!(last_run(&pool).await, None);

    assert_eq!(verify(&url), 0);
    let (passed, events, aggregates, chain_breaks, findings) = last_run(&pool).await.expect("a recorded run");
    assert!(passed);
    assert_eq!((events, aggregates, chain_breaks), (2, 1, 0));
    assert_eq!(findings, serde_json::json!([]));

    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{reason}', '\"nothing happened\"') \
         WHERE aggregate_id = $1 AND event_type = 'cancelled'",
    )
    .bind(ride.as_uuid())
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(verify(&url), 1);
    let (passed, _, _, chain_breaks, findings) = last_run(&pool).await.unwrap();
    assert!(!passed);
    assert_eq!(chain_breaks, 1);
    let first = findings[0].as_str().unwrap();
    assert!(
        first.starts_with("TAMPERED") && first.contains(&ride.to_string()),
        "{first}"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM verify_runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs, 2);
}
