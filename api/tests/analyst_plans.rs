//! Every documented analyst filter is served by an index: with 100k rows in `rides`,
//! `payments` and `billing_ledger`, the plan of each filter of `GET /v1/rides`,
//! `/v1/payments`, `/v1/billing/ledger` and `/v1/analytics/revenue` (the endpoints' own
//! statements, in a transaction with the endpoints' own settings) has no sequential
//! scan of those tables. Real PostgreSQL; fails, never skips, without it.

mod support;

use api::reads::{limit_transaction, rides_sql, LEDGER_SQL, PAYMENTS_SQL, REVENUE_SQL};
use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

const ROWS: i64 = 100_000;

fn id(prefix: u32, n: i64) -> Uuid {
    format!("{prefix:08x}-0000-0000-0000-{n:012x}").parse().unwrap()
}

async fn load(conn: &mut PgConnection, now: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO rides (ride_id, match_id, driver_id, passenger_id, status, pickup_lat, pickup_lon, \
         destination_lat, destination_lon, distance_km, fare, adjusted_fare, admin_fee, driver_payout, \
         created_at, completed_at, last_sequence, last_hash, updated_position) \
         SELECT ('10000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, \
                ('40000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, \
                ('50000000-0000-0000-0000-' || lpad(to_hex(i % 2000), 12, '0'))::uuid, \
                ('60000000-0000-0000-0000-' || lpad(to_hex(i % 20000), 12, '0'))::uuid, \
                s, -6.2, 106.8, -6.1, 106.9, 5.0, 20000, 20000, 1000, 19000, \
                $1 - make_interval(secs => i * 300), \
                CASE WHEN s = 'COMPLETED' THEN $1 - make_interval(secs => i * 300 - 1200) END, \
                5, '\\x00', i \
         FROM (SELECT i, CASE i % 20 WHEN 0 THEN 'PENDING' WHEN 1 THEN 'IN_PROGRESS' WHEN 2 THEN 'ARRIVED' \
               WHEN 3 THEN 'CANCELLED' ELSE 'COMPLETED' END AS s FROM generate_series(1, $2) AS i) AS g",
    )
    .bind(now)
    .bind(ROWS)
    .execute(&mut *conn)
    .await
    .expect("load rides");
    sqlx::query(
        "INSERT INTO payments (payment_id, ride_id, adjusted_cost, admin_fee, driver_payout, status, attempts, \
         created_at, updated_at) \
         SELECT ('20000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, \
                ('10000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, 20000, 1000, 19000, \
                CASE i % 10 WHEN 0 THEN 'FAILED' WHEN 1 THEN 'PENDING' ELSE 'ACCEPTED' END, 1, \
                $1 - make_interval(secs => i * 300), $1 - make_interval(secs => i * 300) \
         FROM generate_series(1, $2) AS i",
    )
    .bind(now)
    .bind(ROWS)
    .execute(&mut *conn)
    .await
    .expect("load payments");
    sqlx::query(
        "INSERT INTO billing_ledger (entry_id, ride_id, kind, distance_km, cost, position, recorded_at) \
         SELECT ('30000000-0000-0000-0000-' || lpad(to_hex(i), 12, '0'))::uuid, \
                ('10000000-0000-0000-0000-' || lpad(to_hex(i / 4), 12, '0'))::uuid, 'trip_segment', 0.5, 1000, i, \
                $1 - make_interval(secs => i * 300) \
         FROM generate_series(1, $2) AS i",
    )
    .bind(now)
    .bind(ROWS)
    .execute(&mut *conn)
    .await
    .expect("load the ledger");
    sqlx::query("ANALYZE rides, payments, billing_ledger")
        .execute(&mut *conn)
        .await
        .expect("analyze");
}

fn plan_of(rows: &[sqlx::postgres::PgRow]) -> String {
    rows.iter()
        .map(|r| r.get::<String, _>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_no_seq_scan(what: &str, plan: &str) {
    for table in ["rides", "payments", "billing_ledger"] {
        assert!(
            !plan.contains(&format!("Seq Scan on {table}")),
            "{what}: a sequential scan of {table}:\n{plan}"
        );
    }
}

#[tokio::test]
#[allow(clippy::type_complexity)]
async fn every_documented_analyst_filter_uses_an_index_at_100k_rows() {
    let pool = support::fresh_pool().await;
    let now = Utc::now();
    let mut conn = pool.acquire().await.unwrap();
    load(&mut conn, now).await;
    let mut tx = pool.begin().await.unwrap();
    limit_transaction(&mut tx, 60_000).await.unwrap();

    let day = (Some(now - TimeDelta::days(30)), Some(now - TimeDelta::days(29)));
    let none: (Option<DateTime<Utc>>, Option<DateTime<Utc>>) = (None, None);
    let driver = id(0x5000_0000, 17);
    let passenger = id(0x6000_0000, 170);
    let ride = id(0x1000_0000, 4242);
    let cursor = (Some(now - TimeDelta::days(100)), Some(id(0x1000_0000, 28_800)));
    let no_cursor: (Option<DateTime<Utc>>, Option<Uuid>) = (None, None);

    // GET /v1/rides: (status, driver_id, passenger_id, from..to, cursor), each alone and
    // some together. Running the same statement more than five times also shows that
    // the plan stays custom (a generic plan would scan).
    let rides: Vec<(&str, Option<&str>, Option<Uuid>, Option<Uuid>, _, _)> = vec![
        ("no filter", None, None, None, none, no_cursor),
        ("status PENDING", Some("PENDING"), None, None, none, no_cursor),
        ("status COMPLETED", Some("COMPLETED"), None, None, none, no_cursor),
        ("driver_id", None, Some(driver), None, none, no_cursor),
        ("passenger_id", None, None, Some(passenger), none, no_cursor),
        ("from..to", None, None, None, day, no_cursor),
        ("cursor", None, None, None, none, cursor),
        ("status + from..to", Some("CANCELLED"), None, None, day, no_cursor),
        ("driver_id + from..to", None, Some(driver), None, day, no_cursor),
    ];
    let sql = format!("EXPLAIN {}", rides_sql());
    for (what, status, driver, passenger, (from, to), (before_at, before_id)) in rides {
        let rows = sqlx::query(&sql)
            .bind(status)
            .bind(driver)
            .bind(passenger)
            .bind(from)
            .bind(to)
            .bind(before_at)
            .bind(before_id)
            .bind(50i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_no_seq_scan(&format!("GET /v1/rides {what}"), &plan_of(&rows));
    }

    // GET /v1/payments: (status, ride_id, from..to).
    let payments: Vec<(&str, Option<&str>, Option<Uuid>, _)> = vec![
        ("no filter", None, None, none),
        ("status FAILED", Some("FAILED"), None, none),
        ("status ACCEPTED", Some("ACCEPTED"), None, none),
        ("ride_id", None, Some(ride), none),
        ("from..to", None, None, day),
        ("status + from..to", Some("PENDING"), None, day),
    ];
    let sql = format!("EXPLAIN {PAYMENTS_SQL}");
    for (what, status, ride_id, (from, to)) in payments {
        let rows = sqlx::query(&sql)
            .bind(status)
            .bind(ride_id)
            .bind(from)
            .bind(to)
            .bind(50i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_no_seq_scan(&format!("GET /v1/payments {what}"), &plan_of(&rows));
    }

    // GET /v1/billing/ledger: (ride_id, from..to), at most a page of 500.
    let ledger: Vec<(&str, Option<Uuid>, _)> = vec![
        ("no filter", None, none),
        ("ride_id", Some(ride), none),
        ("from..to", None, day),
    ];
    let sql = format!("EXPLAIN {LEDGER_SQL}");
    for (what, ride_id, (from, to)) in ledger {
        let rows = sqlx::query(&sql)
            .bind(ride_id)
            .bind(from)
            .bind(to)
            .bind(500i64)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_no_seq_scan(&format!("GET /v1/billing/ledger {what}"), &plan_of(&rows));
    }

    // GET /v1/analytics/revenue: its default week, by hour and by day.
    let sql = format!("EXPLAIN {REVENUE_SQL}");
    for bucket in ["hour", "day"] {
        let rows = sqlx::query(&sql)
            .bind(bucket)
            .bind(now - TimeDelta::days(7))
            .bind(now)
            .fetch_all(&mut *tx)
            .await
            .unwrap();
        assert_no_seq_scan(&format!("GET /v1/analytics/revenue {bucket}"), &plan_of(&rows));
    }
    tx.rollback().await.unwrap();
}
