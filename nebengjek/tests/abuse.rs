//! Abuse cases against the whole system (real PostgreSQL, Redis, NATS; real HTTP and
//! WebSocket clients): each hostile input or flood is refused or contained, nothing is
//! written for a refused command, and honest clients beside the attacker are served as
//! usual. docs/security.md, "Hostile input and abuse limits", names each defence and
//! the test here that plays the attacker.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{point, Harness};

const JAKARTA: (f64, f64) = (-6.2, 106.8);
const PARIS: (f64, f64) = (48.85, 2.35);
const POLAR: (f64, f64) = (89.9, 0.0);

/// Rows in `events` and `command_log`: what a refused command must not add to.
async fn written(h: &Harness) -> (i64, i64) {
    let mut db = h.db().await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log")
        .fetch_one(&mut db)
        .await
        .unwrap();
    (events, logged)
}

fn beacon(p: (f64, f64)) -> Value {
    json!({ "is_active": true, "lat": p.0, "lon": p.1 })
}

/// Issue 13 item 3: positions outside the service area (Indonesia) are refused with
/// `outside_service_area` on every way in — beacon, location, pickup, destination and
/// the nearby query — including a latitude Redis GEO cannot index; the geo index keeps
/// serving the honest driver.
#[tokio::test]
async fn positions_outside_the_service_area_are_refused_everywhere() {
    let h = support::start(|_| {}).await;
    let (_, attacker_token) = h.driver("B 1301 ATK").await;
    let (honest_id, honest_token) = h.driver("B 1302 HON").await;
    let (_, passenger_token) = h.passenger().await;
    let (_, analyst_token) = h.analyst().await;
    let (mut attacker, _) = h.ws(&attacker_token).await;
    let (mut honest, _) = h.ws(&honest_token).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let before = written(&h).await;

    for p in [POLAR, PARIS, (-90.0, 180.0)] {
        attacker
            .refused("beacon_update", beacon(p), "outside_service_area")
            .await;
        attacker
            .refused("location_update", point(p), "outside_service_area")
            .await;
        passenger
            .refused("location_update", point(p), "outside_service_area")
            .await;
    }
    for p in [POLAR, PARIS] {
        let path = format!("/v1/drivers/nearby?lat={}&lon={}&radius_km=5", p.0, p.1);
        let (status, body) = h.http("GET", &path, Some(&analyst_token), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("outside_service_area")),
            "{body}"
        );
    }
    assert_eq!(
        written(&h).await,
        before,
        "nothing is written for a refused position"
    );

    // A match request is refused by the match aggregate (after its own checks, SPEC §3
    // order): no event; its answer is kept in `command_log` like every aggregate's
    // refusal, so that a resend gets the same answer.
    for (pickup, destination) in [(PARIS, JAKARTA), (JAKARTA, POLAR)] {
        passenger
            .refused(
                "finder_update",
                json!({"is_active": true, "pickup": point(pickup), "destination": point(destination)}),
                "outside_service_area",
            )
            .await;
    }
    let after = written(&h).await;
    assert_eq!(after.0, before.0, "no event for a refused match request");
    assert_eq!(after.1, before.1 + 2, "only the two answers are logged");

    // The honest driver beside the attacker is indexed and found.
    assert_eq!(honest.ok("beacon_update", beacon(JAKARTA)).await, json!({}));
    let path = format!(
        "/v1/drivers/nearby?lat={}&lon={}&radius_km=5",
        JAKARTA.0, JAKARTA.1
    );
    let found = h
        .http_until(&path, &analyst_token, |status, body| {
            status == 200 && body["drivers"].as_array().is_some_and(|d| !d.is_empty())
        })
        .await;
    let ids: Vec<&str> = found["drivers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["driver_id"].as_str())
        .collect();
    assert_eq!(ids, vec![honest_id.to_string().as_str()], "{found}");
    for ws in [attacker, honest, passenger] {
        ws.close().await;
    }
    h.finish().await;
}

/// Issue 13 item 4: a user's command rate is a token bucket; past its burst a command is
/// refused with `rate_limited` and `retry_after_ms`, nothing is written for it (the same
/// id is handled as new after the wait), and another user is not slowed.
#[tokio::test]
async fn a_flooding_user_is_rate_limited_and_others_are_not() {
    let h = support::start(|c| {
        c.limits.command_rate = commands::rate::RateLimit::new(2.0, 3).unwrap();
    })
    .await;
    let (_, flooder_token) = h.driver("B 1303 FLD").await;
    let (_, other_token) = h.driver("B 1304 OTH").await;
    let (mut flooder, _) = h.ws(&flooder_token).await;
    let (mut other, _) = h.ws(&other_token).await;

    for _ in 0..3 {
        flooder.ok("beacon_update", beacon(JAKARTA)).await;
    }
    // A refused command that would write (a ride command) writes nothing either.
    let before = written(&h).await;
    let ack = flooder
        .send_as("flood-1", "ride_start", json!({"ride_id": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(
        (ack["ok"].as_bool(), ack["error"]["code"].as_str()),
        (Some(false), Some("rate_limited")),
        "{ack}"
    );
    let retry_after_ms = ack["error"]["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=500).contains(&retry_after_ms), "{ack}");
    let ack = flooder.send("beacon_update", beacon(JAKARTA)).await;
    assert_eq!(ack["error"]["code"], "rate_limited", "{ack}");
    assert_eq!(written(&h).await, before);

    // The other driver is not slowed by the flood.
    for _ in 0..3 {
        other.ok("beacon_update", beacon(JAKARTA)).await;
    }

    // After the wait, the same id is handled as new (its refusal was not logged).
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 50)).await;
    let ack = flooder
        .send_as("flood-1", "ride_start", json!({"ride_id": uuid::Uuid::now_v7()}))
        .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");
    for ws in [flooder, other] {
        ws.close().await;
    }
    h.finish().await;
}

/// Issue 13 item 4: a command naming an id that does not exist is refused `not_found`
/// and writes nothing to `command_log`, however many a client makes up.
#[tokio::test]
async fn made_up_ids_are_refused_without_a_row() {
    let h = support::start(|_| {}).await;
    let (_, driver_token) = h.driver("B 1305 IDS").await;
    let (_, passenger_token) = h.passenger().await;
    let (mut driver, _) = h.ws(&driver_token).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let before = written(&h).await;
    for _ in 0..10 {
        let ride = json!({"ride_id": uuid::Uuid::now_v7()});
        driver.refused("ride_start", ride.clone(), "not_found").await;
        passenger
            .refused(
                "ride_cancel",
                json!({"ride_id": ride["ride_id"], "reason": "x"}),
                "not_found",
            )
            .await;
        passenger
            .refused(
                "match_confirm",
                json!({"match_id": uuid::Uuid::now_v7(), "accepted": true}),
                "not_found",
            )
            .await;
        driver
            .refused(
                "location_update",
                json!({"lat": JAKARTA.0, "lon": JAKARTA.1, "ride_id": uuid::Uuid::now_v7()}),
                "not_found",
            )
            .await;
        passenger
            .refused("finder_update", json!({"is_active": false}), "not_found")
            .await;
    }
    assert_eq!(written(&h).await, before, "no command_log row for a made-up id");
    for ws in [driver, passenger] {
        ws.close().await;
    }
    h.finish().await;
}

/// Issue 13 item 3: analyst queries are bounded: a time range over
/// `ANALYST_MAX_RANGE_DAYS` and a page over `ANALYST_MAX_PAGE` are refused with
/// `validation_failed` before they reach PostgreSQL; within the bounds they are served.
#[tokio::test]
async fn analyst_queries_over_the_bounds_are_refused() {
    let h = support::start(|c| {
        c.limits.analyst.max_range = chrono::TimeDelta::days(31);
        c.limits.analyst.max_page = 100;
    })
    .await;
    let (_, analyst) = h.analyst().await;
    let wide = "from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z";
    let narrow = "from=2026-01-01T00:00:00Z&to=2026-01-31T00:00:00Z";
    for path in [
        format!("/v1/rides?{wide}"),
        format!("/v1/payments?{wide}"),
        format!("/v1/billing/ledger?{wide}"),
        format!("/v1/analytics/revenue?{wide}"),
        "/v1/rides?from=2000-01-01T00:00:00Z".to_owned(),
        "/v1/rides?limit=101".to_owned(),
        "/v1/payments?limit=101".to_owned(),
        "/v1/billing/ledger?limit=101".to_owned(),
    ] {
        let (status, body) = h.http("GET", &path, Some(&analyst), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("validation_failed")),
            "{path}: {body}"
        );
    }
    for path in [
        format!("/v1/rides?{narrow}&limit=100"),
        format!("/v1/payments?{narrow}"),
        format!("/v1/billing/ledger?{narrow}"),
        format!("/v1/analytics/revenue?{narrow}"),
    ] {
        let (status, body) = h.http("GET", &path, Some(&analyst), None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    h.finish().await;
}
