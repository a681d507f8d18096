//! Latency recording and the printed table.

use std::time::Duration;

use hdrhistogram::Histogram;

/// What one measured run did.
#[derive(Debug)]
pub struct RunStats {
    /// Operations completed.
    pub ops: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-operation latency in microseconds.
    pub latency_us: Histogram<u64>,
}

impl RunStats {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency percentile in microseconds.
    pub fn p(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }
}

/// A fresh histogram from 1 µs to 60 s.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("1 µs to 60 s with 3 significant figures is valid")
}

/// Prints a markdown table row.
pub fn row(cells: &[String]) {
    println!("| {} |", cells.join(" | "));
}
