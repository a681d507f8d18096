//! `replay-tools verify --json` and `billing period --json` against real PostgreSQL:
//! stdout is one JSON document whose figures are the store's (counted here again in
//! SQL), and a tampered event shows in `verify`'s document with the ride named.

#[path = "../../projections/tests/support/mod.rs"]
mod support;

use chrono::{DateTime, TimeDelta, Utc};
use projections::{run_batch, MatchesProjector, RidesProjector};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::Value;
use sqlx::PgPool;
use support::{drive, world, Ending, World};
use uuid::Uuid;

async fn projected_world(seed: u64, rides: usize) -> World {
    let w = world().await;
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..rides {
        let ending = [
            Ending::Completed,
            Ending::DeclinedThenPaid,
            Ending::Cancelled,
            Ending::Completed,
        ][i % 4];
        drive(&w, &mut rng, ending).await;
    }
    while run_batch(&w.pool, &RidesProjector, 100).await.expect("project") > 0 {}
    while run_batch(&w.pool, &MatchesProjector, 100).await.expect("project") > 0 {}
    w
}

fn database_url(pool: &PgPool) -> String {
    let options = pool.connect_options();
    format!(
        "postgres://postgres@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    )
}

/// Runs the real binary: exit code and stdout parsed as one JSON document.
fn cli_json(pool: &PgPool, args: &[&str]) -> (i32, Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replay-tools"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .output()
        .expect("run replay-tools");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_json_reports_the_counts_and_names_a_tampered_ride() {
    let w = projected_world(11, 8).await;
    let (events, aggregates, rides): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT aggregate_id), (SELECT count(*) FROM rides) FROM events",
    )
    .fetch_one(&w.pool)
    .await
    .expect("counts");

    let (code, doc) = cli_json(&w.pool, &["verify", "--json"]);
    assert_eq!(code, 0, "{doc:#}");
    assert_eq!(doc["passed"], true, "{doc:#}");
    assert_eq!(doc["events"], events, "{doc:#}");
    assert_eq!(doc["aggregates"], aggregates, "{doc:#}");
    assert_eq!(doc["rides"], rides, "{doc:#}");
    assert_eq!(doc["chain_breaks"], serde_json::json!([]));
    assert_eq!(doc["row_diffs"], serde_json::json!([]));
    assert!(
        doc["from"].is_null() && doc["seconds"].as_f64().is_some(),
        "{doc:#}"
    );

    let (ride, position): (Uuid, i64) = sqlx::query_as(
        "SELECT aggregate_id, position FROM events WHERE event_type = 'trip_point_recorded' ORDER BY position LIMIT 1",
    )
    .fetch_one(&w.pool)
    .await
    .expect("a trip point");
    sqlx::query("UPDATE events SET payload = jsonb_set(payload, '{cost}', '1') WHERE position = $1")
        .bind(position)
        .execute(&w.pool)
        .await
        .expect("tamper");
    let (code, doc) = cli_json(&w.pool, &["verify", "--json"]);
    assert_eq!(code, 1, "{doc:#}");
    assert_eq!(doc["passed"], false, "{doc:#}");
    let ride = ride.to_string();
    assert!(
        doc["chain_breaks"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|b| b["aggregate_id"] == ride.as_str() && b["aggregate_type"] == "ride"),
        "{doc:#}"
    );
    assert!(
        doc["row_diffs"]
            .as_array()
            .expect("a list")
            .iter()
            .any(|d| d["ride_id"] == ride.as_str() && d["table"] == "billing_ledger"),
        "{doc:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_period_json_totals_equal_the_ledger_of_the_period() {
    let w = projected_world(12, 8).await;
    let (from, to): (DateTime<Utc>, DateTime<Utc>) =
        sqlx::query_as("SELECT min(recorded_at), max(recorded_at) FROM billing_ledger")
            .fetch_one(&w.pool)
            .await
            .expect("range");
    let to = to + TimeDelta::seconds(1);
    let (code, doc) = cli_json(
        &w.pool,
        &[
            "billing",
            "period",
            "--from",
            &from.to_rfc3339(),
            "--to",
            &to.to_rfc3339(),
            "--json",
        ],
    );
    assert_eq!(code, 0, "{doc:#}");
    let by_kind: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT kind, count(*), sum(cost)::int8 FROM billing_ledger WHERE recorded_at >= $1 AND recorded_at < $2 GROUP BY kind ORDER BY kind",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&w.pool)
    .await
    .expect("read model");
    assert!(!by_kind.is_empty());
    let kinds = doc["by_kind"].as_object().expect("by_kind");
    assert_eq!(kinds.len(), by_kind.len(), "{doc:#}");
    for (kind, entries, cost) in &by_kind {
        assert_eq!(kinds[kind.as_str()]["entries"], *entries, "{kind}: {doc:#}");
        assert_eq!(kinds[kind.as_str()]["cost"], *cost, "{kind}: {doc:#}");
    }
    let entries: i64 = by_kind.iter().map(|k| k.1).sum();
    let cost: i64 = by_kind.iter().map(|k| k.2).sum();
    assert_eq!(doc["entries_total"], entries);
    assert_eq!(doc["cost_total"], cost);
    assert_eq!(doc["entries"].as_array().expect("entries").len() as i64, entries);
    let rides: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT ride_id) FROM billing_ledger WHERE recorded_at >= $1 AND recorded_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&w.pool)
    .await
    .expect("rides");
    assert_eq!(doc["rides"], rides);
    assert!(doc["driver_id"].is_null());
}
