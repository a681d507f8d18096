//! Chain version 2 (SPEC.md §5 "Audit proofs"): every event written now is hashed over
//! its RFC 8785 canonical JSON, so an independent JCS library (serde_jcs) and SHA-256
//! recompute the stored hash from the row; events written before say `hash_version` 1
//! and keep verifying, also where one aggregate's chain crosses from 1 to 2.

use std::sync::Arc;

use commands::clock::SystemClock;
use commands::pipeline::{Envelope, Handler, Outcome};
use commands::EventStore;
use domain::chain::{event_hash_v1, HashedFields, GENESIS};
use domain::ride::{Ride, RideCommand};
use domain::{Actor, GeoPoint, MatchId, Policy, RideId, Role, UserId};
use serde_json::json;
use sha2::{Digest, Sha256};
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

fn handler(pool: &PgPool) -> Handler<Ride> {
    Handler::<Ride>::new(
        EventStore::start(pool.clone()),
        Arc::new(Policy::default()),
        Arc::new(SystemClock),
        100,
    )
}

/// A ride created (its first event written as a version-1 event, as before migration
/// 0005) and then cancelled through the pipeline (version 2).
async fn ride_across_versions(pool: &PgPool) -> RideId {
    let ride_id = RideId::from_uuid(Uuid::now_v7());
    let p = GeoPoint::new(-6.2, 106.8).unwrap();
    let driver = Actor::new(UserId::from_uuid(Uuid::now_v7()), Role::Driver);
    let passenger = Actor::new(UserId::from_uuid(Uuid::now_v7()), Role::Passenger);
    let h = handler(pool);
    let create = RideCommand::Create {
        ride_id,
        match_id: MatchId::from_uuid(Uuid::now_v7()),
        driver_id: driver.user_id,
        passenger_id: passenger.user_id,
        pickup: p,
        destination: GeoPoint::new(-6.1, 106.8).unwrap(),
    };
    let outcome = h
        .execute(
            ride_id.as_uuid(),
            &Envelope::system(format!("c{ride_id}"), None),
            &create,
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
    // Make the first event what a pre-0005 writer left: a version-1 hash.
    let (payload, metadata, event_type, version): (serde_json::Value, serde_json::Value, String, i32) =
        sqlx::query_as(
            "SELECT payload, metadata, event_type, event_version FROM events WHERE aggregate_id = $1 AND sequence = 1",
        )
        .bind(ride_id.as_uuid())
        .fetch_one(pool)
        .await
        .unwrap();
    let id = ride_id.as_uuid().to_string();
    let v1 = event_hash_v1(
        &GENESIS,
        &HashedFields {
            aggregate_type: "ride",
            aggregate_id: &id,
            sequence: 1,
            event_type: &event_type,
            event_version: version,
            payload: &payload,
            metadata: &metadata,
        },
    );
    sqlx::query("UPDATE events SET hash = $2, hash_version = 1 WHERE aggregate_id = $1 AND sequence = 1")
        .bind(ride_id.as_uuid())
        .bind(v1.as_slice())
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE streams SET head_hash = $2 WHERE aggregate_id = $1")
        .bind(ride_id.as_uuid())
        .bind(v1.as_slice())
        .execute(pool)
        .await
        .unwrap();
    // A fresh handler: the first one cached the version-2 head.
    let outcome = handler(pool)
        .execute(
            ride_id.as_uuid(),
            &Envelope::from_user(passenger, None),
            &RideCommand::Cancel {
                actor: passenger,
                reason: "changed my mind \"é\" \u{1f697}".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
    ride_id
}

/// aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
/// metadata, hash, hash_version.
type Row = (
    String,
    Uuid,
    i64,
    String,
    i32,
    serde_json::Value,
    serde_json::Value,
    Vec<u8>,
    i16,
);

#[tokio::test]
async fn new_events_are_version_2_and_any_jcs_library_recomputes_their_hash() {
    let pool = fresh_pool().await;
    let ride = ride_across_versions(&pool).await;
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, hash, \
             hash_version FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(ride.as_uuid())
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.iter().map(|r| r.8).collect::<Vec<_>>(), vec![1, 2]);
    let (t, id, sequence, event_type, event_version, payload, metadata, hash, _) = &rows[1];
    let doc = json!({
        "aggregate_type": t,
        "aggregate_id": id.hyphenated().to_string(),
        "sequence": sequence,
        "event_type": event_type,
        "event_version": event_version,
        "payload": payload,
        "metadata": metadata,
    });
    let mut hasher = Sha256::new();
    hasher.update(&rows[0].7);
    hasher.update(serde_jcs::to_vec(&doc).unwrap());
    assert_eq!(hasher.finalize().as_slice(), hash.as_slice());
}

#[tokio::test]
async fn a_chain_across_versions_verifies_and_edits_of_either_are_found() {
    let pool = fresh_pool().await;
    let ride = ride_across_versions(&pool).await;
    let (breaks, checked) = replay_tools::verify_chains(&pool).await.unwrap();
    assert!(breaks.is_empty(), "{breaks:?}");
    assert_eq!(checked, 2);
    let report = replay_tools::audit::verify(&pool, None, false, &|_, _| {})
        .await
        .unwrap();
    assert!(
        report.chain_breaks.is_empty() && report.unreadable.is_empty(),
        "{report:?}"
    );

    // Claiming the other version breaks the link; so does an edit of either event.
    for sql in [
        "UPDATE events SET hash_version = 2 WHERE aggregate_id = $1 AND sequence = 1",
        "UPDATE events SET payload = payload || '{\"x\": 1}' WHERE aggregate_id = $1 AND sequence = 1",
        "UPDATE events SET payload = jsonb_set(payload, '{reason}', '\"none\"') WHERE aggregate_id = $1 AND sequence = 2",
    ] {
        let pool = fresh_pool().await;
        let ride = ride_across_versions(&pool).await;
        sqlx::query(sql).bind(ride.as_uuid()).execute(&pool).await.unwrap();
        let (breaks, _) = replay_tools::verify_chains(&pool).await.unwrap();
        assert!(breaks.iter().any(|b| b.aggregate_id == ride.as_uuid()), "{sql}: {breaks:?}");
        let report = replay_tools::audit::verify(&pool, None, false, &|_, _| {}).await.unwrap();
        assert!(
            report.chain_breaks.iter().any(|b| b.aggregate_id == ride.as_uuid()),
            "verify missed {sql}: {report:?}"
        );
    }
    let _ = ride;
}
