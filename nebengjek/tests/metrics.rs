//! The dashboard and the alert rules read only what a server exports: every metric name
//! in `deploy/grafana/nebengjek.json` and `deploy/prometheus/alerts.yml` appears on a
//! running server's `GET /metrics` after a little traffic, and latencies are
//! histograms with buckets (a `_bucket` series), never summaries.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use support::point;

/// Metrics the dashboard and alerts name that other work adds to the server: each is
/// allowed to be missing from `/metrics` for now, and the test fails once it is
/// exported (then it no longer belongs here). Keep this list the only such place.
const ADDED_BY_OTHER_WORK: &[&str] = &[
    // Empty: every metric the dashboard and the alerts name is exported today.
];

fn repo_file(path: &str) -> String {
    let full = format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// Every `nebengjek_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("nebengjek_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Every expression of the dashboard's panels (rows included).
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().expect("panels").iter().collect();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().expect("a target has an expr").to_owned());
        }
    }
    out
}

/// Every `expr:` of the rule file (single line or a `|` block).
fn alert_exprs(rules: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = rules.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        if rest.trim() == "|" {
            let mut block = String::new();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.len() - next.trim_start().len() <= indent {
                    break;
                }
                block.push_str(next.trim());
                block.push(' ');
                lines.next();
            }
            out.push(block);
        } else {
            out.push(rest.trim().to_owned());
        }
    }
    out
}

/// The series names of a Prometheus text exposition.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_and_the_alerts_name_metrics() {
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/nebengjek.json")).expect("the dashboard is JSON");
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() >= 20, "{exprs:?}");
    let alerts = alert_exprs(&repo_file("deploy/prometheus/alerts.yml"));
    let rules = repo_file("deploy/prometheus/alerts.yml");
    assert_eq!(
        alerts.len(),
        rules.matches("- alert:").count(),
        "one expr per alert: {alerts:?}"
    );
    for expr in exprs.iter().chain(&alerts) {
        assert!(
            !metric_names(expr).is_empty(),
            "an expression without a metric of ours: {expr}"
        );
    }
    // The alerts the operators were promised.
    for needed in [
        "nebengjek_projection_lag_events",
        "nebengjek_relay_lag_events",
        "nebengjek_stalled",
        "nebengjek_ws_command_seconds_bucket",
        "nebengjek_ws_commands_total",
        "nebengjek_http_requests_total",
    ] {
        assert!(
            alerts.iter().any(|e| metric_names(e).contains(needed)),
            "no alert reads {needed}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported_by_a_running_server() {
    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/grafana/nebengjek.json")).expect("the dashboard is JSON");
    let mut wanted = BTreeSet::new();
    for expr in dashboard_exprs(&dashboard)
        .iter()
        .chain(&alert_exprs(&repo_file("deploy/prometheus/alerts.yml")))
    {
        wanted.extend(metric_names(expr));
    }

    let h = support::start(|_| {}).await;
    // A little of everything: HTTP, a driver online (pings to LOCATION, the geo index),
    // a passenger's request (the matcher, the pipeline, appends, projectors, relay),
    // a refusal.
    let at = (-6.2, 106.8);
    let (_, driver_token) = h.driver("B 1234 XYZ").await;
    let (_, passenger_token) = h.passenger().await;
    let (mut driver, _) = h.ws(&driver_token).await;
    driver
        .ok(
            "beacon_update",
            json!({"is_active": true, "lat": at.0, "lon": at.1}),
        )
        .await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    passenger
        .ok(
            "finder_update",
            json!({"is_active": true, "pickup": point(at), "destination": point((-6.21, 106.81))}),
        )
        .await;
    let proposal = driver.push("match_proposal").await;
    driver
        .ok(
            "match_confirm",
            json!({"match_id": proposal["match_id"], "accepted": true}),
        )
        .await;
    passenger
        .refused(
            "ride_start",
            json!({"ride_id": uuid::Uuid::now_v7()}),
            "not_found",
        )
        .await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (missing, have) = loop {
        let (status, body) = h.http("GET", "/metrics", None, None).await;
        assert_eq!(status, 200);
        let text = body.as_str().expect("/metrics is text").to_owned();
        let have = exported(&text);
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|m| !have.contains(*m) && !ADDED_BY_OTHER_WORK.contains(&m.as_str()))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break (missing.into_iter().cloned().collect::<Vec<_>>(), (have, text));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (have, text) = have;
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts but not exported: {missing:?}\n/metrics:\n{text}"
    );
    for name in ADDED_BY_OTHER_WORK {
        assert!(
            !have.contains(*name),
            "{name} is exported now: take it off ADDED_BY_OTHER_WORK"
        );
    }
    // Histograms, not summaries: buckets from 0.5 ms and no quantile series.
    assert!(
        text.contains("nebengjek_ws_command_seconds_bucket{") && text.contains("le=\"0.0005\""),
        "{text}"
    );
    assert!(!text.contains("quantile=\""), "a summary is exported:\n{text}");
    driver.close().await;
    passenger.close().await;
    h.finish().await;
}
