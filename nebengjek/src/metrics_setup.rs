//! How `/metrics` exports what the crates record: every histogram as a Prometheus
//! **histogram with buckets** (`_bucket{le}`, `_sum`, `_count`), never a summary, so
//! that quantiles can be aggregated across processes (`histogram_quantile` over the sum
//! of every process's buckets) and alerted on. `deploy/grafana/nebengjek.json` and
//! `deploy/prometheus/alerts.yml` read these names; `nebengjek/tests/metrics.rs` checks
//! that a running server exports every one of them.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Latencies in seconds: 0.5 ms to 10 s, about three buckets per decade, denser where
/// the acks live (1–50 ms).
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Events per append batch: the writer takes at most 256.
pub const BATCH_SIZE_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The histograms recorded in seconds (every name ending in `_seconds`).
pub const SECONDS_SUFFIX: &str = "_seconds";

/// The append batch size histogram.
pub const BATCH_SIZE: &str = "nebengjek_append_batch_size";

/// A recorder builder with the buckets above.
pub fn prometheus_builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix(SECONDS_SUFFIX.into()), &SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &BATCH_SIZE_BUCKETS)
}

/// Counters that only move on rare paths (a retried conflict, the careful append path,
/// a geo index rebuilt after Redis lost it), exported from the start at zero: `rate()`
/// then sees their first increment, and the dashboard and alerts that read them find
/// the series on a healthy process too.
pub fn register_rare_counters() {
    for aggregate in ["match", "ride"] {
        metrics::counter!("nebengjek_command_conflicts_total", "aggregate" => aggregate).absolute(0);
    }
    metrics::counter!("nebengjek_append_careful_batches_total").absolute(0);
    metrics::counter!("nebengjek_geo_rebuilds_total").absolute(0);
}
