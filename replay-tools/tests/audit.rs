//! The auditors' tools against real PostgreSQL: `verify` passes on a clean store and
//! fails naming the ride when an event or a read-model row is edited; the billing
//! replay of a ride and of a period agree with the read models; `state ride --as-of`
//! shows the ride as it stood. The binary itself is run for the exit codes.

#[path = "../../projections/tests/support/mod.rs"]
mod support;

use chrono::{TimeDelta, Utc};
use projections::{run_batch, MatchesProjector, RidesProjector};
use rand::rngs::StdRng;
use rand::SeedableRng;
use replay_tools::{audit, billing};
use sqlx::PgPool;
use support::{drive, world, Ending, World};
use uuid::Uuid;

/// A seeded workload of every ending, projected live.
async fn projected_world(seed: u64, rides: usize) -> World {
    let w = world().await;
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..rides {
        let ending = [
            Ending::Completed,
            Ending::DeclinedThenPaid,
            Ending::FailedThenPaid,
            Ending::Cancelled,
            Ending::LeftUnpaid,
            Ending::MatchCancelled,
        ][i % 6];
        drive(&w, &mut rng, ending).await;
    }
    while run_batch(&w.pool, &RidesProjector, 100).await.expect("project") > 0 {}
    while run_batch(&w.pool, &MatchesProjector, 100).await.expect("project") > 0 {}
    w
}

async fn a_completed_ride(pool: &PgPool) -> Uuid {
    sqlx::query_scalar("SELECT ride_id FROM rides WHERE status = 'COMPLETED' ORDER BY created_at LIMIT 1")
        .fetch_one(pool)
        .await
        .expect("a completed ride")
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

/// Runs the real binary; returns (exit code, stdout).
fn cli(pool: &PgPool, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replay-tools"))
        .args(args)
        .env("DATABASE_URL", database_url(pool))
        .output()
        .expect("run replay-tools");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_on_a_clean_store_and_names_the_ride_whose_event_was_edited() {
    let w = projected_world(1, 12).await;
    let report = audit::verify(&w.pool, None, false, &|_, _| {})
        .await
        .expect("verify");
    assert!(report.passed(), "{report:?}");
    assert!(report.rides >= 8, "the workload has rides: {report:?}");
    let (code, out) = cli(&w.pool, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("every chain intact, read models agree"), "{out}");

    // An auditor's nightmare: someone lowers a trip segment's cost in SQL.
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
    let report = audit::verify(&w.pool, None, false, &|_, _| {})
        .await
        .expect("verify");
    assert!(!report.passed());
    assert!(
        report.chain_breaks.iter().any(|b| b.aggregate_id == ride),
        "the broken chain names the ride: {report:?}"
    );
    let (code, out) = cli(&w.pool, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("TAMPERED ride {ride}")), "{out}");
    // The edited event also no longer folds to the ledger row the read model holds.
    assert!(report
        .row_diffs
        .iter()
        .any(|d| d.ride_id == ride && d.table == "billing_ledger"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_read_model_row_that_disagrees_with_the_events() {
    let w = projected_world(2, 8).await;
    let ride = a_completed_ride(&w.pool).await;
    sqlx::query("UPDATE payments SET admin_fee = admin_fee + 1 WHERE ride_id = $1")
        .bind(ride)
        .execute(&w.pool)
        .await
        .expect("edit");
    let victim: Uuid = sqlx::query_scalar(
        "SELECT entry_id FROM billing_ledger WHERE ride_id <> $1 ORDER BY position DESC LIMIT 1",
    )
    .bind(ride)
    .fetch_one(&w.pool)
    .await
    .expect("a ledger row");
    sqlx::query("DELETE FROM billing_ledger WHERE entry_id = $1")
        .bind(victim)
        .execute(&w.pool)
        .await
        .expect("delete");
    let report = audit::verify(&w.pool, None, false, &|_, _| {})
        .await
        .expect("verify");
    assert!(report.chain_breaks.is_empty(), "the events themselves are intact");
    assert!(report
        .row_diffs
        .iter()
        .any(|d| d.table == "payments" && d.ride_id == ride && d.what.contains("admin_fee")));
    assert!(report
        .row_diffs
        .iter()
        .any(|d| d.table == "billing_ledger" && d.key == victim && d.what == "missing"));
    assert_eq!(report.row_diffs.len(), 2, "{:?}", report.row_diffs);

    // Within a window that holds every event, the same differences; the scratch schema
    // holds what the events imply.
    let from = Utc::now() - TimeDelta::days(3650);
    let to = Utc::now() + TimeDelta::days(3650);
    let windowed = audit::verify(&w.pool, Some((from, to)), true, &|_, _| {})
        .await
        .expect("verify");
    assert_eq!(windowed.row_diffs, report.row_diffs);
    let schema = windowed.scratch_schema.expect("scratch schema");
    let admin_fee: i64 = sqlx::query_scalar(&format!(
        "SELECT admin_fee FROM {schema}.payments WHERE ride_id = $1"
    ))
    .bind(ride)
    .fetch_one(&w.pool)
    .await
    .expect("scratch row");
    let live: i64 = sqlx::query_scalar("SELECT admin_fee FROM payments WHERE ride_id = $1")
        .bind(ride)
        .fetch_one(&w.pool)
        .await
        .expect("live row");
    assert_eq!(admin_fee + 1, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_replay_of_a_ride_adds_up_and_agrees_with_the_read_models() {
    let w = projected_world(3, 6).await;
    let ride = a_completed_ride(&w.pool).await;
    let b = billing::ride(&w.pool, ride)
        .await
        .expect("replay")
        .expect("the ride exists");
    assert!(b.differences.is_empty(), "{:?}", b.differences);
    assert_eq!(b.status, "COMPLETED");
    let (adjusted, admin_fee, payout, ledger_sum): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT r.adjusted_fare, r.admin_fee, r.driver_payout, \
         (SELECT sum(cost)::int8 FROM billing_ledger l WHERE l.ride_id = r.ride_id) FROM rides r WHERE ride_id = $1",
    )
    .bind(ride)
    .fetch_one(&w.pool)
    .await
    .expect("read model");
    assert_eq!(b.adjusted_fare, Some(adjusted));
    assert_eq!(
        b.ledger_total, adjusted,
        "the replayed ledger sums to the adjusted fare"
    );
    assert_eq!(ledger_sum, adjusted);
    assert_eq!(b.admin_fee, Some(admin_fee));
    assert_eq!(b.driver_payout, Some(payout));
    assert_eq!(admin_fee + payout, adjusted);
    assert!(b.lines.iter().any(|l| l.what == "trip_segment"));
    assert!(b
        .lines
        .iter()
        .any(|l| l.what == "payment_accepted" && l.actor.starts_with("passenger ")));
    assert!(b
        .lines
        .iter()
        .any(|l| l.what == "arrived" && l.actor.starts_with("driver ")));

    // A read model that disagrees is marked, and the tool exits 1.
    sqlx::query("UPDATE rides SET driver_payout = driver_payout - 100 WHERE ride_id = $1")
        .bind(ride)
        .execute(&w.pool)
        .await
        .expect("edit");
    let b = billing::ride(&w.pool, ride)
        .await
        .expect("replay")
        .expect("exists");
    assert!(
        b.differences.iter().any(|d| d.contains("driver_payout")),
        "{:?}",
        b.differences
    );
    let (code, out) = cli(&w.pool, &["billing", "ride", &ride.to_string()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("trip_segment") && out.contains("admin_fee"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_of_a_period_replayed_equals_the_read_model_of_that_period() {
    let w = projected_world(4, 12).await;
    let (from, to): (chrono::DateTime<Utc>, chrono::DateTime<Utc>) =
        sqlx::query_as("SELECT min(recorded_at), max(recorded_at) FROM billing_ledger")
            .fetch_one(&w.pool)
            .await
            .expect("range");
    // The middle of the period: some entries fall outside on each side.
    let mid_from = from + (to - from) / 4;
    let mid_to = to - (to - from) / 4;
    let entries = billing::period(&w.pool, mid_from, mid_to, None)
        .await
        .expect("period");
    let (count, sum): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(cost)::int8 FROM billing_ledger WHERE recorded_at >= $1 AND recorded_at < $2",
    )
    .bind(mid_from)
    .bind(mid_to)
    .fetch_one(&w.pool)
    .await
    .expect("read model");
    assert!(count > 0);
    assert_eq!(entries.len() as i64, count);
    assert_eq!(entries.iter().map(|e| e.cost).sum::<i64>(), sum.unwrap_or(0));

    let driver: Uuid = sqlx::query_scalar("SELECT driver_id FROM rides WHERE status = 'COMPLETED' LIMIT 1")
        .fetch_one(&w.pool)
        .await
        .expect("a driver");
    let theirs = billing::period(&w.pool, from, to + TimeDelta::seconds(1), Some(driver))
        .await
        .expect("period");
    assert!(!theirs.is_empty());
    assert!(theirs.iter().all(|e| e.driver_id == driver));
    let (code, out) = cli(
        &w.pool,
        &[
            "billing",
            "period",
            "--from",
            &from.to_rfc3339(),
            "--to",
            &(to + TimeDelta::seconds(1)).to_rfc3339(),
            "--format",
            "csv",
        ],
    );
    assert_eq!(code, 0);
    assert!(
        out.starts_with("recorded_at,ride_id,driver_id,kind,distance_m,cost,position,entry_id"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ride_as_of_a_moment_is_what_its_events_said_then() {
    let w = projected_world(5, 6).await;
    let ride = a_completed_ride(&w.pool).await;
    let times: Vec<(String, chrono::DateTime<Utc>)> = sqlx::query_as(
        "SELECT event_type, recorded_at FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(ride)
    .fetch_all(&w.pool)
    .await
    .expect("events");
    let at = |name: &str| {
        times
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, at)| *at)
            .expect(name)
    };
    let (state, _) = billing::state_as_of(&w.pool, ride, at("started"))
        .await
        .expect("state")
        .expect("existed");
    assert_eq!(domain::Aggregate::status(&state), "IN_PROGRESS");
    let (state, _) = billing::state_as_of(&w.pool, ride, at("arrived"))
        .await
        .expect("state")
        .expect("existed");
    assert_eq!(domain::Aggregate::status(&state), "ARRIVED");
    assert!(state.fare_breakdown().is_some());
    let before = at("created") - TimeDelta::seconds(1);
    assert!(billing::state_as_of(&w.pool, ride, before)
        .await
        .expect("state")
        .is_none());
    let (code, out) = cli(
        &w.pool,
        &[
            "state",
            "ride",
            &ride.to_string(),
            "--as-of",
            &at("arrived").to_rfc3339(),
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains("ARRIVED"), "{out}");
}
