//! The machine-readable reports: `verify --json` and `billing period --json` print one
//! JSON document on stdout (progress and the human summary go to stderr), for a
//! monitoring job or an auditor's own tooling to read. Field names are stable.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::audit::VerifyReport;
use crate::billing::PeriodEntry;

/// `verify --json`.
#[derive(Debug, Serialize)]
pub struct VerifyJson {
    /// Every chain intact and every row agrees.
    pub passed: bool,
    /// The period checked (`null`: the whole store).
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub events: u64,
    pub aggregates: u64,
    pub rides: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub chain_breaks: Vec<ChainBreakJson>,
    pub row_diffs: Vec<RowDiffJson>,
    pub unreadable: Vec<String>,
    pub scratch_schema: Option<String>,
}

/// A broken chain.
#[derive(Debug, Serialize)]
pub struct ChainBreakJson {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub sequence: i64,
    pub problem: String,
}

/// A read-model row that differs from the events.
#[derive(Debug, Serialize)]
pub struct RowDiffJson {
    pub table: &'static str,
    pub ride_id: Uuid,
    pub key: Uuid,
    pub what: String,
}

impl VerifyJson {
    /// The report of a `verify` over `window` that took `seconds`.
    pub fn new(report: &VerifyReport, window: Option<(DateTime<Utc>, DateTime<Utc>)>, seconds: f64) -> Self {
        Self {
            passed: report.passed(),
            from: window.map(|w| w.0),
            to: window.map(|w| w.1),
            events: report.events,
            aggregates: report.aggregates,
            rides: report.rides,
            seconds,
            events_per_second: report.events as f64 / seconds.max(1e-9),
            chain_breaks: report
                .chain_breaks
                .iter()
                .map(|b| ChainBreakJson {
                    aggregate_type: b.aggregate_type.clone(),
                    aggregate_id: b.aggregate_id,
                    sequence: b.sequence,
                    problem: b.problem.clone(),
                })
                .collect(),
            row_diffs: report
                .row_diffs
                .iter()
                .map(|d| RowDiffJson {
                    table: d.table,
                    ride_id: d.ride_id,
                    key: d.key,
                    what: d.what.clone(),
                })
                .collect(),
            unreadable: report.unreadable.clone(),
            scratch_schema: report.scratch_schema.clone(),
        }
    }
}

/// `billing period --json`: the entries and their totals.
#[derive(Debug, Serialize)]
pub struct PeriodJson {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only this driver's rides, when asked.
    pub driver_id: Option<Uuid>,
    /// Entries and the sum of their costs, per kind (`trip_segment`, `minimum_fare`,
    /// `maximum_fare`, `driver_discount`).
    pub by_kind: BTreeMap<String, KindTotal>,
    /// Entries in the period.
    pub entries_total: usize,
    /// The sum of every entry's cost (rupiah).
    pub cost_total: i64,
    /// Distinct rides with an entry in the period.
    pub rides: usize,
    pub entries: Vec<PeriodEntry>,
}

/// One kind's totals.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct KindTotal {
    pub entries: usize,
    pub cost: i64,
}

impl PeriodJson {
    /// The report of `entries` booked in `[from, to)`.
    pub fn new(
        entries: Vec<PeriodEntry>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        driver_id: Option<Uuid>,
    ) -> Self {
        let mut by_kind: BTreeMap<String, KindTotal> = BTreeMap::new();
        for e in &entries {
            let k = by_kind.entry(e.kind.clone()).or_default();
            k.entries += 1;
            k.cost += e.cost;
        }
        let rides = entries
            .iter()
            .map(|e| e.ride_id)
            .collect::<std::collections::HashSet<_>>()
            .len();
        Self {
            from,
            to,
            driver_id,
            entries_total: entries.len(),
            cost_total: entries.iter().map(|e| e.cost).sum(),
            rides,
            by_kind,
            entries,
        }
    }
}
