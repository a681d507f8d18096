//! `compare::compare_live` against real PostgreSQL: rows written with the rebuild's
//! COPY compare equal (also where PostgreSQL prints a value differently from the
//! rendering: the typed pass clears those), and every kind of difference — an edited
//! column, a missing row, an unexpected row, a row moved to another ride — is found and
//! names its ride.

mod support;

use chrono::{TimeDelta, TimeZone, Utc};
use projections::compare::compare_live;
use projections::rows::{copy_rows, LedgerRow, PaymentRow, RideFold, RideRow};
use sqlx::PgPool;
use support::fresh_pool;
use uuid::Uuid;

fn ride(n: u8, lat: f64, cancel_reason: Option<&str>) -> RideRow {
    let id = |k: u8| Uuid::from_bytes([n, k, 0, 0, 0, 0, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 1]);
    let t = Utc.with_ymd_and_hms(2026, 12, 2, 5, 38, 58).unwrap();
    RideRow {
        ride_id: id(0),
        match_id: id(1),
        driver_id: id(2),
        passenger_id: id(3),
        status: if cancel_reason.is_some() {
            "CANCELLED"
        } else {
            "COMPLETED"
        }
        .into(),
        pickup_lat: lat,
        pickup_lon: 106.8456,
        destination_lat: -6.17,
        destination_lon: 106.82,
        distance_m: Some(1500),
        fare: Some(4500),
        adjusted_fare: Some(5000),
        admin_fee: Some(250),
        driver_payout: Some(4750),
        adjustment_bps: Some(10_000),
        created_at: t,
        started_at: Some(t + TimeDelta::microseconds(123_450)),
        arrived_at: Some(t + TimeDelta::seconds(60)),
        completed_at: None,
        cancelled_at: cancel_reason.map(|_| t + TimeDelta::seconds(61)),
        cancelled_by: cancel_reason.map(|_| "driver".into()),
        cancel_reason: cancel_reason.map(str::to_owned),
        last_sequence: 7,
        last_hash: vec![n, 0, 255],
        updated_position: i64::from(n) * 10,
    }
}

fn fold() -> RideFold {
    // Values PostgreSQL prints otherwise than the COPY rendering: a latitude it writes
    // with an exponent, a backspace it escapes as \b, a tab and a backslash.
    let rides = [
        ride(1, -6.2, None),
        ride(2, 0.00001, Some("stuck \u{8} in\ttraffic \\ sorry")),
        ride(3, -6.2, None),
    ];
    let mut fold = RideFold::default();
    for r in rides {
        for k in 0..3u8 {
            fold.ledger.push(LedgerRow {
                entry_id: Uuid::from_bytes([
                    r.ride_id.as_bytes()[0],
                    9,
                    k,
                    0,
                    0,
                    0,
                    0x50,
                    0,
                    0x80,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    2,
                ]),
                ride_id: r.ride_id,
                kind: "trip_segment".into(),
                distance_m: Some(500),
                cost: 1500,
                position: i64::from(k) + 1,
                recorded_at: r.created_at + TimeDelta::seconds(i64::from(k)),
            });
        }
        let payment = Uuid::from_bytes([
            r.ride_id.as_bytes()[0],
            8,
            0,
            0,
            0,
            0,
            0x50,
            0,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            3,
        ]);
        fold.payments.insert(
            payment,
            PaymentRow {
                payment_id: payment,
                ride_id: r.ride_id,
                adjusted_cost: 5000,
                admin_fee: 250,
                driver_payout: 4750,
                status: "ACCEPTED".into(),
                attempts: 2,
                provider_ref: Some("psp-1".into()),
                created_at: r.created_at,
                updated_at: r.created_at + TimeDelta::seconds(90),
            },
        );
        fold.rides.insert(r.ride_id, r);
    }
    fold
}

async fn written(fold: &RideFold) -> PgPool {
    let pool = fresh_pool().await;
    let mut tx = pool.begin().await.expect("begin");
    copy_rows(&mut tx, fold).await.expect("copy rows");
    tx.commit().await.expect("commit");
    pool
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_by_a_rebuild_compare_equal_even_where_printed_differently() {
    let fold = fold();
    let pool = written(&fold).await;
    // The premise: PostgreSQL does print ride 2 otherwise than the rendering.
    let printed: String = sqlx::query_scalar("SELECT pickup_lat::text FROM rides WHERE pickup_lat > 0")
        .fetch_one(&pool)
        .await
        .expect("ride 2");
    assert_eq!(printed, "1e-05");

    let all = compare_live(&pool, &fold, None).await.expect("compare");
    assert_eq!(all.diffs, vec![]);
    assert_eq!(all.rows, 3 + 9 + 3);
    // Only ride 2 needed the typed pass: the digests cleared every other row.
    assert_eq!(all.rechecked_rides, 1, "{all:?}");
    let some: Vec<Uuid> = fold.rides.keys().copied().take(2).collect();
    let part = compare_live(&pool, &fold, Some(&some)).await.expect("compare");
    assert_eq!(part.diffs, vec![]);
    assert_eq!(part.rows, 2 + 6 + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_difference_is_found_and_names_its_ride() {
    let fold = fold();
    let pool = written(&fold).await;
    let [r1, r2, r3] = [1u8, 2, 3].map(|n| ride(n, 0.0, None).ride_id);

    exec(
        &pool,
        &format!("UPDATE rides SET fare = fare + 1 WHERE ride_id = '{r1}'"),
    )
    .await;
    exec(
        &pool,
        &format!("UPDATE payments SET status = 'FAILED' WHERE ride_id = '{r2}'"),
    )
    .await;
    let gone: Uuid = sqlx::query_scalar(
        "SELECT entry_id FROM billing_ledger WHERE ride_id = $1 ORDER BY position LIMIT 1",
    )
    .bind(r3)
    .fetch_one(&pool)
    .await
    .expect("a ledger row");
    exec(
        &pool,
        &format!("DELETE FROM billing_ledger WHERE entry_id = '{gone}'"),
    )
    .await;
    let stray = Uuid::from_u128(42);
    exec(
        &pool,
        &format!(
            "INSERT INTO billing_ledger (entry_id, ride_id, kind, distance_km, cost, position, recorded_at) \
             SELECT '{stray}', ride_id, kind, distance_km, cost, 99, recorded_at FROM billing_ledger \
             WHERE ride_id = '{r3}' LIMIT 1"
        ),
    )
    .await;
    let moved: Uuid = sqlx::query_scalar(
        "SELECT entry_id FROM billing_ledger WHERE ride_id = $1 ORDER BY position DESC LIMIT 1",
    )
    .bind(r1)
    .fetch_one(&pool)
    .await
    .expect("a ledger row");
    exec(
        &pool,
        &format!("UPDATE billing_ledger SET ride_id = '{r2}' WHERE entry_id = '{moved}'"),
    )
    .await;

    let diffs = compare_live(&pool, &fold, None).await.expect("compare").diffs;
    let has = |table: &str, ride: Uuid, key: Uuid, what: &str| {
        diffs
            .iter()
            .any(|d| d.table == table && d.ride_id == ride && d.key == key && d.what.contains(what))
    };
    assert!(has("rides", r1, r1, "fare"), "{diffs:#?}");
    let payment = fold
        .payments
        .values()
        .find(|p| p.ride_id == r2)
        .expect("payment")
        .payment_id;
    assert!(has("payments", r2, payment, "FAILED"), "{diffs:#?}");
    assert!(has("billing_ledger", r3, gone, "missing"), "{diffs:#?}");
    assert!(has("billing_ledger", r3, stray, "unexpected"), "{diffs:#?}");
    assert!(has("billing_ledger", r1, moved, "ride_id"), "{diffs:#?}");
    assert_eq!(diffs.len(), 5, "nothing else differs: {diffs:#?}");

    // Restricted to one ride, only its differences.
    let only = compare_live(&pool, &fold, Some(&[r3]))
        .await
        .expect("compare")
        .diffs;
    assert_eq!(only.len(), 2, "{only:#?}");
    assert!(only.iter().all(|d| d.ride_id == r3), "{only:#?}");
}
