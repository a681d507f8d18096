//! The record of `verify` runs: each run's counts and first findings, one row of the
//! table `verify_runs` (`migrations/sql/0009_verify_runs.sql`), so operators and the
//! console see when the store was last verified and what was found.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::audit::VerifyReport;

/// How many findings a row keeps (the run's output has them all).
pub const MAX_FINDINGS: usize = 100;

/// Records one finished `verify` run; returns the row's id.
pub async fn record_verify_run(
    pool: &PgPool,
    report: &VerifyReport,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Result<i64, sqlx::Error> {
    let findings: Vec<String> = report
        .chain_breaks
        .iter()
        .map(|b| format!("TAMPERED {b}"))
        .chain(report.row_diffs.iter().map(|d| format!("DIFFERS {d}")))
        .chain(report.unreadable.iter().map(|u| format!("UNREADABLE {u}")))
        .take(MAX_FINDINGS)
        .collect();
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    sqlx::query_scalar(
        "INSERT INTO verify_runs (started_at, finished_at, window_from, window_to, passed, events, \
         aggregates, rides, chain_breaks, row_diffs, unreadable, findings) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING run_id",
    )
    .bind(started_at)
    .bind(finished_at)
    .bind(window.map(|w| w.0))
    .bind(window.map(|w| w.1))
    .bind(report.passed())
    .bind(as_i64(report.events))
    .bind(as_i64(report.aggregates))
    .bind(as_i64(report.rides))
    .bind(count(report.chain_breaks.len()))
    .bind(count(report.row_diffs.len()))
    .bind(count(report.unreadable.len()))
    .bind(serde_json::Value::from(findings))
    .fetch_one(pool)
    .await
}
