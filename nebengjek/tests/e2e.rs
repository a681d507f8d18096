//! End to end: the whole system in this process (`startup::start` with `Role::All`)
//! against real PostgreSQL, NATS JetStream and Redis, driven only the way apps drive it
//! — HTTP for login and registration, real WebSockets for everything else — with the
//! real matcher proposing from drivers' pings. Fares are computed here from the points
//! sent (haversine and SPEC.md's numbers), never by the domain crate's billing.

mod support;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Value};
use std::sync::Arc;

use commands::ports::{ChargeError, ScriptedProvider};
use domain::{RideId, Rupiah};
use nebengjek::startup::Ports;
use support::{haversine_m, point, start, start_with, Client, Harness};
use uuid::Uuid;

/// SPEC §3 Billing.
const RATE_PER_KM: i64 = 3000;
const MINIMUM_FARE: i64 = 5000;
const MAXIMUM_FARE: i64 = 500_000;
const ADMIN_FEE_PERCENT: i64 = 5;
const JITTER_M: f64 = 10.0;
/// `TRIP_MAX_SPEED_KMH` for these tests: trip points are sent 250 ms apart (their
/// `recorded_at` must stay within 5 s of the server's clock), so a car would be
/// "too fast" at the default 200 km/h.
const MAX_SPEED_KMH: f64 = 10_000.0;

const PICKUP: (f64, f64) = (-6.2, 106.8);
const DESTINATION: (f64, f64) = (-6.17, 106.82);

fn uuid_of(v: &Value) -> Uuid {
    v.as_str()
        .unwrap_or_else(|| panic!("a uuid: {v}"))
        .parse()
        .expect("a uuid")
}

fn km(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number: {v}"))
}

/// A fare from billed metres (SPEC: `clamp(round(total_km × rate), min, max)`).
fn fare_of(total_m: i64) -> i64 {
    let raw = (total_m * RATE_PER_KM + 500) / 1000;
    raw.clamp(MINIMUM_FARE, MAXIMUM_FARE)
}

/// `(adjusted, admin_fee, driver_payout)` for a factor in basis points.
fn split(fare: i64, factor_bp: i64) -> (i64, i64, i64) {
    let adjusted = fare * factor_bp / 10_000;
    let admin = adjusted * ADMIN_FEE_PERCENT / 100;
    (adjusted, admin, adjusted - admin)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The trip as SPEC bills it, followed point by point.
struct Trip {
    last: ((f64, f64), DateTime<Utc>),
    total_m: i64,
    /// Billed metres after each accepted point, from 0.
    cum_m: Vec<i64>,
    /// `TRIP_MAX_SPEED_KMH` of the system under test.
    max_speed_kmh: f64,
}

impl Trip {
    /// What the server must answer to a point: `{}` (billed or jitter) or
    /// `{rejected: reason}`.
    fn feed(&mut self, p: (f64, f64), at: DateTime<Utc>) -> Value {
        let (last_p, last_at) = self.last;
        if at <= last_at {
            return json!({ "rejected": "not_after_previous" });
        }
        let d = haversine_m(last_p, p);
        if d < JITTER_M {
            return json!({});
        }
        let hours = (at - last_at).num_microseconds().expect("short") as f64 / 3.6e9;
        if d / 1000.0 / hours > self.max_speed_kmh {
            return json!({ "rejected": "too_fast" });
        }
        self.total_m += d.round() as i64;
        self.cum_m.push(self.total_m);
        self.last = (p, at);
        json!({})
    }
}

/// A driver's socket, online at `at`.
async fn online(h: &Harness, token: &str, at: (f64, f64)) -> Client {
    let (mut ws, state) = h.ws(token).await;
    assert_eq!(state, json!({"match": null, "ride": null}));
    let ack = ws
        .ok(
            "beacon_update",
            json!({"is_active": true, "lat": at.0, "lon": at.1}),
        )
        .await;
    assert_eq!(ack, json!({}));
    assert_eq!(ws.ok("location_update", point(at)).await, json!({}));
    ws
}

/// The passenger asks for a ride from `PICKUP`: the match id.
async fn request(passenger: &mut Client) -> Uuid {
    assert_eq!(passenger.ok("location_update", point(PICKUP)).await, json!({}));
    let result = passenger
        .ok(
            "finder_update",
            json!({"is_active": true, "pickup": point(PICKUP), "destination": point(DESTINATION)}),
        )
        .await;
    uuid_of(&result["match_id"])
}

/// The driver accepts `match_id` (proposed to them), the passenger confirms: the ride
/// id, after both saw `match_confirmed` and `ride_pickup`.
async fn accept_and_confirm(
    passenger: &mut Client,
    driver: &mut Client,
    match_id: Uuid,
    driver_id: Uuid,
) -> Uuid {
    let ack = driver
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    assert_eq!(ack["status"], "DRIVER_ACCEPTED", "{ack}");
    let accepted = passenger.push("match_accepted").await;
    assert_eq!(
        (uuid_of(&accepted["match_id"]), uuid_of(&accepted["driver_id"])),
        (match_id, driver_id)
    );
    let ack = passenger
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    assert_eq!(ack["status"], "CONFIRMED", "{ack}");
    let mine = passenger.push("match_confirmed").await;
    let theirs = driver.push("match_confirmed").await;
    assert_eq!(mine, theirs);
    assert_eq!(uuid_of(&mine["match_id"]), match_id);
    let ride_id = uuid_of(&mine["ride_id"]);
    for ws in [passenger, driver] {
        let pickup = ws.push("ride_pickup").await;
        assert_eq!(
            (
                uuid_of(&pickup["ride_id"]),
                uuid_of(&pickup["match_id"]),
                pickup["status"].as_str()
            ),
            (ride_id, match_id, Some("PENDING")),
            "{pickup}"
        );
        assert_eq!(uuid_of(&pickup["driver_id"]), driver_id);
    }
    ride_id
}

/// From a request to a PENDING ride with the real matcher: `(match_id, ride_id)`.
async fn matched_ride(passenger: &mut Client, driver: &mut Client, driver_id: Uuid) -> (Uuid, Uuid) {
    let match_id = request(passenger).await;
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id, "{proposal}");
    let ride_id = accept_and_confirm(passenger, driver, match_id, driver_id).await;
    (match_id, ride_id)
}

/// The driver (at the pickup) starts the ride: the trip's first reference point.
async fn start_ride(passenger: &mut Client, driver: &mut Client, ride_id: Uuid, at: (f64, f64)) -> Trip {
    assert_eq!(driver.ok("location_update", point(at)).await, json!({}));
    let ack = driver.ok("ride_start", json!({"ride_id": ride_id})).await;
    assert_eq!(ack["status"], "IN_PROGRESS", "{ack}");
    let started = driver.push("ride_started").await;
    assert_eq!(passenger.push("ride_started").await, started);
    let started_at: DateTime<Utc> = started["started_at"]
        .as_str()
        .expect("started_at")
        .parse()
        .expect("RFC 3339");
    Trip {
        last: (at, started_at),
        total_m: 0,
        cum_m: vec![0],
        max_speed_kmh: MAX_SPEED_KMH,
    }
}

/// Sends `(point, milliseconds after the ride started)` and checks every ack against
/// the trip computed here.
async fn drive(
    driver: &mut Client,
    trip: &mut Trip,
    started_at: DateTime<Utc>,
    points: &[((f64, f64), i64)],
) {
    for &(p, ms) in points {
        let at = started_at + TimeDelta::milliseconds(ms);
        let expected = trip.feed(p, at);
        let result = driver
            .ok(
                "location_update",
                json!({"lat": p.0, "lon": p.1, "recorded_at": rfc3339(at)}),
            )
            .await;
        assert_eq!(result, expected, "the point {p:?} at +{ms} ms");
    }
}

/// The ride read (`GET /v1/rides/{id}`) once the read model shows `status`.
async fn ride_read(h: &Harness, token: &str, ride_id: Uuid, status: &str) -> Value {
    h.http_until(&format!("/v1/rides/{ride_id}"), token, |code, body| {
        code == 200 && body["status"] == status
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_ride_from_otp_login_to_ride_completed_is_billed_from_the_points_sent() {
    let h = start(|c| c.policy.trip.max_speed_kmh = MAX_SPEED_KMH).await;
    let (passenger_id, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("b1234xyz").await;
    let (status, me) = h.http("GET", "/v1/me", Some(&driver_token), None).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["driver"]["vehicle_plate"], "B 1234 XYZ", "{me}");

    let driver_at = (-6.209, 106.8);
    let mut driver = online(&h, &driver_token, driver_at).await;
    let (mut passenger, state) = h.ws(&passenger_token).await;
    assert_eq!(state, json!({"match": null, "ride": null}));
    let match_id = request(&mut passenger).await;

    // The real matcher proposes the match to the driver, who is ~1 km away.
    let proposal = driver.push("match_proposal").await;
    let to_pickup_km = haversine_m(driver_at, PICKUP) / 1000.0;
    let straight_m = haversine_m(PICKUP, DESTINATION).round() as i64;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id);
    assert_eq!(uuid_of(&proposal["passenger_id"]), passenger_id);
    assert_eq!(
        (&proposal["pickup"], &proposal["destination"]),
        (&point(PICKUP), &point(DESTINATION))
    );
    assert!(
        (km(&proposal["distance_km"]) - to_pickup_km).abs() < 0.0011,
        "{proposal} vs {to_pickup_km}"
    );
    let eta = proposal["eta_seconds"].as_f64().expect("eta");
    assert!((eta - to_pickup_km / 30.0 * 3600.0).abs() <= 1.5, "{proposal}");
    assert!(
        (proposal["fare_estimate"].as_i64().expect("fare_estimate") - fare_of(straight_m)).abs() <= 3,
        "{proposal}"
    );

    let ack = driver
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    assert_eq!(ack["status"], "DRIVER_ACCEPTED");
    let accepted = passenger.push("match_accepted").await;
    assert_eq!(uuid_of(&accepted["driver_id"]), driver_id);
    assert_eq!(
        (
            accepted["vehicle_type"].as_str(),
            accepted["vehicle_plate"].as_str()
        ),
        (Some("car"), Some("B 1234 XYZ"))
    );
    let ack = passenger
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    assert_eq!(ack["status"], "CONFIRMED");
    let ride_id = uuid_of(&passenger.push("match_confirmed").await["ride_id"]);
    assert_eq!(uuid_of(&driver.push("match_confirmed").await["ride_id"]), ride_id);
    for ws in [&mut passenger, &mut driver] {
        let pickup = ws.push("ride_pickup").await;
        assert_eq!(uuid_of(&pickup["ride_id"]), ride_id);
        assert_eq!(uuid_of(&pickup["passenger_id"]), passenger_id);
    }

    // A kilometre from the passenger is too far to start.
    driver
        .refused("ride_start", json!({"ride_id": ride_id}), "too_far")
        .await;
    let at_pickup = (-6.2004, 106.8); // ~44 m from the passenger
    let mut trip = start_ride(&mut passenger, &mut driver, ride_id, at_pickup).await;
    let started_at = trip.last.1;

    let north = |k: f64| (at_pickup.0 + 0.003 * k, at_pickup.1);
    let mut points = vec![
        (north(1.0), 250),
        (north(2.0), 500),
        ((north(2.0).0 + 0.00003, north(2.0).1), 750), // ~3 m: jitter
        ((north(2.0).0 + 0.05, north(2.0).1), 1000),   // ~5.6 km in 0.5 s: too fast
        (north(3.0), 500),                             // not after the last accepted point
    ];
    for k in 3..=10 {
        points.push((north(k as f64), 1000 + 250 * k));
    }
    points.push(((north(10.0).0 + 0.00002, north(10.0).1), 3750)); // jitter at arrival
    drive(&mut driver, &mut trip, started_at, &points).await;
    assert!(
        trip.total_m > 3000,
        "the test's trip is billed above the minimum fare"
    );
    // Each segment costs round(cum_after × rate) − round(cum_before × rate).
    let segment_costs: Vec<i64> = trip
        .cum_m
        .windows(2)
        .map(|w| (w[1] * RATE_PER_KM + 500) / 1000 - (w[0] * RATE_PER_KM + 500) / 1000)
        .collect();

    let ack = driver
        .ok(
            "ride_arrived",
            json!({"ride_id": ride_id, "adjustment_factor": 0.9}),
        )
        .await;
    assert_eq!(ack["status"], "ARRIVED");
    let fare = fare_of(trip.total_m);
    let (adjusted, admin_fee, payout) = split(fare, 9000);
    let total_km = trip.total_m as f64 / 1000.0;
    let request = passenger.push("payment_request").await;
    assert_eq!(uuid_of(&request["ride_id"]), ride_id);
    assert!(
        (km(&request["distance_km"]) - total_km).abs() < 1e-9,
        "{request} vs {total_km}"
    );
    assert_eq!(
        (
            request["fare"].as_i64(),
            request["amount"].as_i64(),
            request["admin_fee"].as_i64(),
            request["driver_payout"].as_i64()
        ),
        (Some(fare), Some(adjusted), Some(admin_fee), Some(payout)),
        "{request}"
    );
    assert_eq!(request["adjustment_factor"].to_string().trim_matches('"'), "0.9");

    passenger
        .refused(
            "payment_process",
            json!({"ride_id": ride_id, "amount": adjusted + 1, "accepted": true}),
            "amount_mismatch",
        )
        .await;
    let ack = passenger
        .ok(
            "payment_process",
            json!({"ride_id": ride_id, "amount": adjusted, "accepted": true}),
        )
        .await;
    assert_eq!(ack["status"], "COMPLETED");
    let completed = passenger.push("ride_completed").await;
    assert_eq!(driver.push("ride_completed").await, completed);
    let (ride, payment) = (&completed["ride"], &completed["payment"]);
    assert_eq!(uuid_of(&ride["ride_id"]), ride_id);
    assert_eq!(ride["status"], "COMPLETED");
    assert!((km(&ride["distance_km"]) - total_km).abs() < 1e-9, "{completed}");
    assert_eq!(ride["fare"].as_i64(), Some(fare), "{completed}");
    assert_eq!(
        (
            payment["adjusted_cost"].as_i64(),
            payment["admin_fee"].as_i64(),
            payment["driver_payout"].as_i64(),
            payment["status"].as_str()
        ),
        (Some(adjusted), Some(admin_fee), Some(payout), Some("ACCEPTED")),
        "{completed}"
    );

    // The read model says the same, to the passenger and to the driver.
    let read = ride_read(&h, &passenger_token, ride_id, "COMPLETED").await;
    assert!((km(&read["distance_km"]) - total_km).abs() < 1e-9, "{read}");
    assert_eq!(
        (
            read["fare"].as_i64(),
            read["adjusted_fare"].as_i64(),
            read["admin_fee"].as_i64(),
            read["driver_payout"].as_i64()
        ),
        (Some(fare), Some(adjusted), Some(admin_fee), Some(payout)),
        "{read}"
    );
    assert_eq!(uuid_of(&read["driver_id"]), driver_id);
    let (status, _) = h
        .http("GET", &format!("/v1/rides/{ride_id}"), Some(&driver_token), None)
        .await;
    assert_eq!(status, 200);
    let (_, stranger) = h.passenger().await;
    let (status, _) = h
        .http("GET", &format!("/v1/rides/{ride_id}"), Some(&stranger), None)
        .await;
    assert_eq!(status, 404, "a stranger does not see the ride");

    // The billing ledger: the segments as computed here, the driver's discount, summing
    // to the amount paid.
    let (_, analyst) = h.analyst().await;
    let ledger = h
        .http_until(
            &format!("/v1/billing/ledger?ride_id={ride_id}"),
            &analyst,
            |code, body| code == 200 && body["total"].as_i64() == Some(adjusted),
        )
        .await;
    let entries = ledger["entries"].as_array().expect("entries");
    let costs = |kind: &str| -> Vec<i64> {
        entries
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| e["cost"].as_i64().expect("cost"))
            .collect()
    };
    assert_eq!(costs("trip_segment"), segment_costs, "{ledger}");
    assert_eq!(costs("driver_discount"), vec![adjusted - fare], "{ledger}");
    assert!(
        costs("minimum_fare").is_empty() && costs("maximum_fare").is_empty(),
        "{ledger}"
    );

    // Nothing is open any more.
    let (_, state) = h.ws(&passenger_token).await;
    assert_eq!(state, json!({"match": null, "ride": null}));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_proposal_is_rematched_to_another_driver() {
    // One candidate per round, so a decline visibly moves the match to the other driver.
    let h = start(|c| c.policy.matching.max_drivers_per_request = 1).await;
    let (_, passenger_token) = h.passenger().await;
    let (a_id, a_token) = h.driver("B 1 A").await;
    let (b_id, b_token) = h.driver("B 2 B").await;
    let mut a = online(&h, &a_token, (-6.205, 106.8)).await;
    let mut b = online(&h, &b_token, (-6.21, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let match_id = request(&mut passenger).await;

    // Whoever the matcher found first declines (the matcher may have seen one driver's
    // pings before the other's).
    let (first, first_id, second, second_id) = tokio::select! {
        p = a.push("match_proposal") => { assert_eq!(uuid_of(&p["match_id"]), match_id); (&mut a, a_id, &mut b, b_id) }
        p = b.push("match_proposal") => { assert_eq!(uuid_of(&p["match_id"]), match_id); (&mut b, b_id, &mut a, a_id) }
    };
    let ack = first
        .ok("match_confirm", json!({"match_id": match_id, "accepted": false}))
        .await;
    assert_eq!(ack["status"], "SEARCHING", "{ack}");
    let proposal = second.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id);
    // The decliner may not change their mind.
    first
        .refused(
            "match_confirm",
            json!({"match_id": match_id, "accepted": true}),
            "invalid_transition",
        )
        .await;
    let ride_id = accept_and_confirm(&mut passenger, second, match_id, second_id).await;
    assert!(
        first.take_buffered("match_proposal").is_empty(),
        "the decliner is never proposed the match again"
    );
    let read = ride_read(&h, &passenger_token, ride_id, "PENDING").await;
    assert_eq!(uuid_of(&read["driver_id"]), second_id);
    assert_ne!(first_id, second_id);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_match_times_out_round_by_round_and_expires() {
    // MATCHING_RESPONSE_TIMEOUT_SEC=1 and MATCHING_MAX_RETRIES=2: the whole search
    // lasts about two seconds.
    let h = start(|c| {
        c.policy.matching.response_timeout_s = 1;
        c.policy.matching.max_rounds = 2;
    })
    .await;
    let (_, passenger_token) = h.passenger().await;
    let (_, driver_token) = h.driver("B 3 C").await;
    let mut driver = online(&h, &driver_token, (-6.205, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let match_id = request(&mut passenger).await;
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id);

    // The driver does not answer: the round times out (the proposal is withdrawn), the
    // second round finds nobody new, and the match expires.
    let withdrawn = driver.push("match_withdrawn").await;
    assert_eq!(uuid_of(&withdrawn["match_id"]), match_id);
    let expired = passenger.push("match_expired").await;
    assert_eq!(uuid_of(&expired["match_id"]), match_id);
    driver
        .refused(
            "match_confirm",
            json!({"match_id": match_id, "accepted": true}),
            "invalid_transition",
        )
        .await;
    // Timeouts are events.
    let mut db = h.db().await;
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'match' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(match_id)
    .fetch_all(&mut db)
    .await
    .expect("the match's events");
    assert!(kinds.iter().any(|k| k == "round_timed_out"), "{kinds:?}");
    assert_eq!(kinds.last().map(String::as_str), Some("expired"), "{kinds:?}");

    // The passenger is free to ask again, and the same driver is proposed the new match.
    let (mut passenger, state) = h.ws(&passenger_token).await;
    assert_eq!(state["match"], Value::Null, "{state}");
    let again = request(&mut passenger).await;
    assert_ne!(again, match_id);
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), again);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_match_and_a_cancelled_ride_free_the_driver_for_the_next_passenger() {
    let h = start(|_| {}).await;
    let (_, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 4 D").await;
    let mut driver = online(&h, &driver_token, (-6.205, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;

    // The passenger gives up while the match is proposed: the proposal is withdrawn.
    let match_id = request(&mut passenger).await;
    assert_eq!(
        uuid_of(&driver.push("match_proposal").await["match_id"]),
        match_id
    );
    passenger.ok("finder_update", json!({"is_active": false})).await;
    assert_eq!(
        uuid_of(&driver.push("match_withdrawn").await["match_id"]),
        match_id
    );

    // The passenger gives up after a driver accepted: that driver is told, and freed.
    let match_id = request(&mut passenger).await;
    assert_eq!(
        uuid_of(&driver.push("match_proposal").await["match_id"]),
        match_id
    );
    driver
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    passenger.push("match_accepted").await;
    let ack = passenger.ok("finder_update", json!({"is_active": false})).await;
    assert_eq!(ack["status"], "CANCELLED", "{ack}");
    assert_eq!(
        uuid_of(&driver.push("match_withdrawn").await["match_id"]),
        match_id
    );
    let (_, state) = h.ws(&driver_token).await;
    assert_eq!(state, json!({"match": null, "ride": null}));

    // A ride cancelled before it starts.
    let (_, ride_id) = matched_ride(&mut passenger, &mut driver, driver_id).await;
    passenger
        .refused(
            "ride_cancel",
            json!({"ride_id": ride_id, "reason": " "}),
            "validation_failed",
        )
        .await;
    let ack = driver
        .ok("ride_cancel", json!({"ride_id": ride_id, "reason": "flat tyre"}))
        .await;
    assert_eq!(ack["status"], "CANCELLED");
    for ws in [&mut passenger, &mut driver] {
        let cancelled = ws.push("ride_cancelled").await;
        assert_eq!(
            cancelled,
            json!({"ride_id": ride_id, "by": "driver", "reason": "flat tyre"})
        );
    }
    driver
        .refused("ride_start", json!({"ride_id": ride_id}), "invalid_transition")
        .await;
    ride_read(&h, &passenger_token, ride_id, "CANCELLED").await;

    // The driver is available again: the next request is proposed to them.
    let (_, next_ride) = matched_ride(&mut passenger, &mut driver, driver_id).await;
    assert_ne!(next_ride, ride_id);
    let ack = passenger
        .ok(
            "ride_cancel",
            json!({"ride_id": next_ride, "reason": "changed my mind"}),
        )
        .await;
    assert_eq!(ack["status"], "CANCELLED");
    assert_eq!(driver.push("ride_cancelled").await["by"], "passenger");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_declined_payments_leave_the_ride_payable_and_a_later_payment_completes_it() {
    // The provider refuses the first charge for good (SPEC §3: "a test provider fails
    // on demand"), then accepts.
    let provider = Arc::new(ScriptedProvider::default());
    provider.push(Err(ChargeError::Declined("card declined".into())));
    let h = start_with(
        |_| {},
        Ports {
            payments: provider.clone(),
        },
    )
    .await;
    let (_, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 5 E").await;
    let (_, analyst) = h.analyst().await;
    let mut driver = online(&h, &driver_token, (-6.2004, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let (_, ride_id) = matched_ride(&mut passenger, &mut driver, driver_id).await;
    start_ride(&mut passenger, &mut driver, ride_id, (-6.2004, 106.8)).await;
    // No trip point: the minimum fare.
    driver.ok("ride_arrived", json!({"ride_id": ride_id})).await;
    let request = passenger.push("payment_request").await;
    let (adjusted, admin_fee, payout) = split(MINIMUM_FARE, 10_000);
    assert_eq!(request["amount"].as_i64(), Some(adjusted), "{request}");
    let pay = json!({"ride_id": ride_id, "amount": adjusted, "accepted": true});

    // The provider refuses: `payment_failed`, the ride stays ARRIVED.
    passenger
        .refused("payment_process", pay.clone(), "payment_failed")
        .await;
    let (_, state) = h.ws(&passenger_token).await;
    assert_eq!(
        (
            state["ride"]["status"].as_str(),
            state["ride"]["payment"]["status"].as_str()
        ),
        (Some("ARRIVED"), Some("FAILED")),
        "{state}"
    );

    // The passenger declines to pay (SPEC §3: `accepted: false`): still ARRIVED.
    let ack = passenger
        .ok(
            "payment_process",
            json!({"ride_id": ride_id, "amount": adjusted, "accepted": false}),
        )
        .await;
    assert_eq!(ack["status"], "ARRIVED", "{ack}");
    let (_, state) = h.ws(&passenger_token).await;
    assert_eq!(
        (
            state["ride"]["status"].as_str(),
            state["ride"]["payment"]["status"].as_str()
        ),
        (Some("ARRIVED"), Some("DECLINED")),
        "{state}"
    );
    assert!(passenger.take_buffered("ride_completed").is_empty());

    // Paid later: completed.
    let ack = passenger.ok("payment_process", pay).await;
    assert_eq!(ack["status"], "COMPLETED");
    let mut completed_payment_id = Value::Null;
    for ws in [&mut passenger, &mut driver] {
        let completed = ws.push("ride_completed").await;
        completed_payment_id = completed["payment"]["payment_id"].clone();
        assert_eq!(
            (
                completed["payment"]["adjusted_cost"].as_i64(),
                completed["payment"]["admin_fee"].as_i64(),
                completed["payment"]["driver_payout"].as_i64(),
                completed["payment"]["status"].as_str()
            ),
            (Some(adjusted), Some(admin_fee), Some(payout), Some("ACCEPTED")),
            "{completed}"
        );
    }
    let ride = RideId::from_uuid(ride_id);
    assert_eq!(
        provider.calls(),
        vec![(ride, Rupiah::new(adjusted)), (ride, Rupiah::new(adjusted))],
        "charged twice (the failure, the success); the decline charges nothing"
    );
    let read = ride_read(&h, &passenger_token, ride_id, "COMPLETED").await;
    assert_eq!(read["adjusted_fare"].as_i64(), Some(adjusted));
    // Every outcome is an attempt.
    let payments = h
        .http_until(
            &format!("/v1/payments?ride_id={ride_id}"),
            &analyst,
            |code, body| code == 200 && body["payments"][0]["status"] == "ACCEPTED",
        )
        .await;
    assert_eq!(
        payments["payments"][0]["attempts"].as_i64(),
        Some(3),
        "{payments}"
    );
    // No trip point: the whole fare is the minimum-fare entry.
    let ledger = h
        .http_until(
            &format!("/v1/billing/ledger?ride_id={ride_id}"),
            &analyst,
            |code, body| code == 200 && body["total"].as_i64() == Some(MINIMUM_FARE),
        )
        .await;
    let entries = ledger["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{ledger}");
    assert_eq!(
        (entries[0]["kind"].as_str(), entries[0]["cost"].as_i64()),
        (Some("minimum_fare"), Some(MINIMUM_FARE)),
        "{ledger}"
    );
    // One payment, named the same everywhere.
    assert_eq!(
        payments["payments"].as_array().map(Vec::len),
        Some(1),
        "{payments}"
    );
    assert_eq!(
        payments["payments"][0]["payment_id"], request["payment_id"],
        "{payments} {request}"
    );
    assert_eq!(completed_payment_id, request["payment_id"], "{request}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_mid_ride_shows_the_open_ride_and_the_ride_goes_on_to_completion() {
    let h = start(|c| c.policy.trip.max_speed_kmh = MAX_SPEED_KMH).await;
    let (_, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 6 F").await;
    let mut driver = online(&h, &driver_token, (-6.2004, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let match_id = request(&mut passenger).await;
    driver.push("match_proposal").await;
    driver
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    passenger.push("match_accepted").await;

    // The passenger's app restarts while a driver waits for confirmation.
    passenger.close().await;
    let (mut passenger, state) = h.ws(&passenger_token).await;
    let open = &state["match"];
    assert_eq!(
        (
            open["status"].as_str(),
            open["driver_id"].as_str().map(|d| d.parse::<Uuid>().ok())
        ),
        (Some("DRIVER_ACCEPTED"), Some(Some(driver_id))),
        "{state}"
    );
    assert_eq!(open["vehicle_plate"], "B 6 F", "{state}");
    passenger
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    let ride_id = uuid_of(&passenger.push("ride_pickup").await["ride_id"]);
    assert_eq!(uuid_of(&driver.push("ride_pickup").await["ride_id"]), ride_id);

    let at_pickup = (-6.2004, 106.8);
    let mut trip = start_ride(&mut passenger, &mut driver, ride_id, at_pickup).await;
    let started_at = trip.last.1;
    let north = |k: f64| (at_pickup.0 + 0.004 * k, at_pickup.1);
    drive(
        &mut driver,
        &mut trip,
        started_at,
        &[(north(1.0), 300), (north(2.0), 600)],
    )
    .await;

    // The driver's socket drops mid-ride: on reconnect, the ride in progress.
    driver.close().await;
    let (mut driver, state) = h.ws(&driver_token).await;
    let open = &state["ride"];
    assert_eq!(state["match"], Value::Null, "{state}");
    assert_eq!(
        (uuid_of(&open["ride_id"]), open["status"].as_str()),
        (ride_id, Some("IN_PROGRESS")),
        "{state}"
    );
    assert!(
        (km(&open["distance_km"]) - trip.total_m as f64 / 1000.0).abs() < 1e-9,
        "{state}"
    );
    drive(
        &mut driver,
        &mut trip,
        started_at,
        &[(north(3.0), 900), (north(4.0), 1200)],
    )
    .await;
    // A point stamped more than 5 s after the server's clock is refused, and not billed.
    let future = rfc3339(Utc::now() + TimeDelta::seconds(60));
    driver
        .refused(
            "location_update",
            json!({"lat": north(5.0).0, "lon": north(5.0).1, "recorded_at": future}),
            "validation_failed",
        )
        .await;

    // The passenger is away when the driver arrives.
    passenger.close().await;
    let arrived = driver
        .send_as("arrive-1", "ride_arrived", json!({"ride_id": ride_id}))
        .await;
    assert_eq!(arrived["result"]["status"], "ARRIVED", "{arrived}");
    // A resend on a new connection gets the same answer and changes nothing.
    driver.close().await;
    let (mut driver, _) = h.ws(&driver_token).await;
    let resent = driver
        .send_as("arrive-1", "ride_arrived", json!({"ride_id": ride_id}))
        .await;
    assert_eq!(resent, arrived);

    let fare = fare_of(trip.total_m);
    let (passenger_again, state) = h.ws(&passenger_token).await;
    let mut passenger = passenger_again;
    let open = &state["ride"];
    assert_eq!(
        (
            uuid_of(&open["ride_id"]),
            open["status"].as_str(),
            open["fare"].as_i64(),
            open["amount"].as_i64(),
            open["payment"]["status"].as_str()
        ),
        (ride_id, Some("ARRIVED"), Some(fare), Some(fare), Some("PENDING")),
        "{state}"
    );
    passenger
        .ok(
            "payment_process",
            json!({"ride_id": ride_id, "amount": fare, "accepted": true}),
        )
        .await;
    let completed = passenger.push("ride_completed").await;
    assert_eq!(driver.push("ride_completed").await, completed);
    assert_eq!(completed["ride"]["fare"].as_i64(), Some(fare));
    let (_, state) = h.ws(&driver_token).await;
    assert_eq!(state, json!({"match": null, "ride": null}));
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysts_see_nearby_drivers_after_their_pings_and_passengers_are_forbidden() {
    let h = start(|_| {}).await;
    let (_, analyst) = h.analyst().await;
    let (_, passenger) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 7 G").await;
    let at = (-6.205, 106.8);
    let mut driver = online(&h, &driver_token, at).await;

    let path = format!("/v1/drivers/nearby?lat={}&lon={}&radius_km=5", PICKUP.0, PICKUP.1);
    let has_driver = |code: u16, body: &Value| {
        code == 200
            && body["drivers"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["driver_id"] == driver_id.to_string()))
    };
    let body = h.http_until(&path, &analyst, has_driver).await;
    let found = body["drivers"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["driver_id"] == driver_id.to_string()))
        .expect("the driver")
        .clone();
    let expected_km = haversine_m(at, PICKUP) / 1000.0;
    assert!(
        (km(&found["distance_km"]) - expected_km).abs() < 0.01,
        "{found} vs {expected_km}"
    );
    assert!(
        (km(&found["lat"]) - at.0).abs() < 1e-4 && (km(&found["lon"]) - at.1).abs() < 1e-4,
        "{found}"
    );

    // Too far away: not listed.
    let far = format!("/v1/drivers/nearby?lat={}&lon={}&radius_km=1", -6.3, 106.8);
    let (status, body) = h.http("GET", &far, Some(&analyst), None).await;
    assert_eq!(
        (status, body["drivers"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{body}"
    );

    for token in [&passenger, &driver_token] {
        let (status, body) = h.http("GET", &path, Some(token), None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{body}"
        );
    }
    let (status, _) = h.http("GET", &path, None, None).await;
    assert_eq!(status, 401);
    for bad in [
        "lat=-6.2&lon=106.8&radius_km=0",
        "lat=-6.2&lon=106.8&radius_km=500",
        "lat=abc&lon=106.8",
        "lon=106.8",
        "lat=95&lon=106.8",
    ] {
        let (status, body) = h
            .http("GET", &format!("/v1/drivers/nearby?{bad}"), Some(&analyst), None)
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("validation_failed")),
            "{bad}: {body}"
        );
    }

    // Offline: gone from the index.
    driver
        .ok(
            "beacon_update",
            json!({"is_active": false, "lat": at.0, "lon": at.1}),
        )
        .await;
    h.http_until(&path, &analyst, |code, body| {
        code == 200 && !has_driver(code, body)
    })
    .await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_match_goes_to_a_driver_who_comes_online_and_a_busy_driver_only_once_free() {
    let h = start(|_| {}).await;
    let (_, analyst) = h.analyst().await;
    let (_, first_token) = h.passenger().await;
    let (_, second_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 8 H").await;
    let (mut first, _) = h.ws(&first_token).await;

    // Nobody is online: the round waits (30 s by default), and a driver who comes
    // online within reach during it is proposed the match at once.
    let match_id = request(&mut first).await;
    first
        .refused(
            "finder_update",
            json!({"is_active": true, "pickup": point(PICKUP), "destination": point(DESTINATION)}),
            "already_active",
        )
        .await;
    let at = (-6.2004, 106.8);
    let driver = online(&h, &driver_token, at).await;
    let mut driver = driver;
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id);
    // Only proposed: still available (listed).
    let path = format!("/v1/drivers/nearby?lat={}&lon={}&radius_km=5", PICKUP.0, PICKUP.1);
    let listed = move |body: &Value| {
        body["drivers"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["driver_id"] == driver_id.to_string()))
    };
    h.http_until(&path, &analyst, |code, body| code == 200 && listed(body))
        .await;

    // A driver who reconnects while proposed sees the proposal again.
    driver.close().await;
    let (mut driver, state) = h.ws(&driver_token).await;
    assert_eq!(uuid_of(&state["match"]["match_id"]), match_id, "{state}");
    assert_eq!(state["match"]["status"], "PROPOSED", "{state}");
    assert_eq!(state["match"]["distance_km"], proposal["distance_km"], "{state}");
    let ride_id = accept_and_confirm(&mut first, &mut driver, match_id, driver_id).await;

    // In a ride: not available to analysts' queries, nor proposed the next passenger.
    h.http_until(&path, &analyst, |code, body| code == 200 && !listed(body))
        .await;
    let (mut second, _) = h.ws(&second_token).await;
    let waiting = request(&mut second).await;

    start_ride(&mut first, &mut driver, ride_id, at).await;
    driver.ok("ride_arrived", json!({"ride_id": ride_id})).await;
    // Free again at arrival (docs/decisions.md): the waiting passenger's match is
    // proposed to them at once, and they are listed again.
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), waiting);
    let mut db = h.db().await;
    let (arrived_at, proposed_at): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT position FROM events WHERE aggregate_id = $1 AND event_type = 'arrived'), \
                (SELECT min(position) FROM events WHERE aggregate_id = $2 AND event_type = 'proposed' \
                   AND jsonb_array_length(payload->'candidates') > 0)",
    )
    .bind(ride_id)
    .bind(waiting)
    .fetch_one(&mut db)
    .await
    .expect("positions");
    assert!(
        proposed_at > arrived_at,
        "a driver in a ride is never proposed another match ({proposed_at} <= {arrived_at})"
    );
    h.http_until(&path, &analyst, |code, body| code == 200 && listed(body))
        .await;
    let amount = first.push("payment_request").await["amount"].clone();
    first
        .ok(
            "payment_process",
            json!({"ride_id": ride_id, "amount": amount, "accepted": true}),
        )
        .await;
    driver.push("ride_completed").await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_drivers_accepting_at_once_one_wins_and_the_other_is_told() {
    let h = start(|_| {}).await;
    let (_, passenger_token) = h.passenger().await;
    let (a_id, a_token) = h.driver("B 11 AA").await;
    let (b_id, b_token) = h.driver("B 12 BB").await;
    let mut a = online(&h, &a_token, (-6.205, 106.8)).await;
    let mut b = online(&h, &b_token, (-6.21, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let match_id = request(&mut passenger).await;
    // Both are proposed (at once, or the second as soon as the matcher sees them).
    assert_eq!(uuid_of(&a.push("match_proposal").await["match_id"]), match_id);
    assert_eq!(uuid_of(&b.push("match_proposal").await["match_id"]), match_id);

    let accept = json!({"match_id": match_id, "accepted": true});
    let (ack_a, ack_b) = tokio::join!(
        a.send("match_confirm", accept.clone()),
        b.send("match_confirm", accept.clone())
    );
    let (winner_id, loser, loser_ack, winner_ack) = if ack_a["ok"] == true {
        (a_id, &mut b, ack_b, ack_a)
    } else {
        (b_id, &mut a, ack_a, ack_b)
    };
    assert_eq!(winner_ack["result"]["status"], "DRIVER_ACCEPTED", "{winner_ack}");
    assert_eq!(
        (&loser_ack["ok"], loser_ack["error"]["code"].as_str()),
        (&json!(false), Some("already_taken")),
        "{loser_ack}"
    );
    assert_eq!(
        uuid_of(&loser.push("match_withdrawn").await["match_id"]),
        match_id
    );
    let accepted = passenger.push("match_accepted").await;
    assert_eq!(uuid_of(&accepted["driver_id"]), winner_id);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_commands_on_the_systems_own_subjects_reach_websocket_clients_as_pushes() {
    let h = start(|_| {}).await;
    let (passenger_id, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 13 CC").await;
    let mut driver = online(&h, &driver_token, (-6.205, 106.8)).await;
    let nats = async_nats::connect(&h.config.nats_url).await.expect("NATS");
    let subject = format!("{}cmd.match.request", h.config.command_subject_prefix);
    // The same token as on HTTP and the WebSocket, in the message header.
    let body = json!({
        "command_id": Uuid::now_v7().to_string(),
        "data": {"is_active": true, "pickup": point(PICKUP), "destination": point(DESTINATION)},
    });
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Authorization", format!("Bearer {passenger_token}").as_str());
    let reply = tokio::time::timeout(
        support::WAIT,
        nats.request_with_headers(subject, headers, body.to_string().into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    let reply: Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert_eq!(reply["ok"], true, "{reply}");
    let match_id = uuid_of(&reply["result"]["match_id"]);
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id);
    assert_eq!(uuid_of(&proposal["passenger_id"]), passenger_id);
    let ack = driver
        .ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    assert_eq!(ack["status"], "DRIVER_ACCEPTED");
    assert_ne!(driver_id, passenger_id);
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loses_neither_a_waiting_match_nor_a_ride_in_progress() {
    let mut h = start(|c| {
        c.policy.trip.max_speed_kmh = MAX_SPEED_KMH;
        c.policy.matching.max_drivers_per_request = 1;
    })
    .await;
    let (_, passenger_token) = h.passenger().await;
    let (a_id, a_token) = h.driver("B 21 AA").await;
    let (b_id, b_token) = h.driver("B 22 BB").await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    // Nobody online: the match waits across the restart.
    let match_id = request(&mut passenger).await;
    let (_, state) = h.ws(&passenger_token).await;
    assert_eq!(
        (
            uuid_of(&state["match"]["match_id"]),
            state["match"]["status"].as_str()
        ),
        (match_id, Some("SEARCHING")),
        "{state}"
    );
    h.restart().await;

    let mut a = online(&h, &a_token, (-6.2004, 106.8)).await;
    let (mut passenger, state) = h.ws(&passenger_token).await;
    assert_eq!(uuid_of(&state["match"]["match_id"]), match_id, "{state}");
    assert_eq!(uuid_of(&a.push("match_proposal").await["match_id"]), match_id);
    // The passenger turns the first driver down: the search goes on to another.
    a.ok("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await;
    passenger.push("match_accepted").await;
    let ack = passenger
        .ok("match_confirm", json!({"match_id": match_id, "accepted": false}))
        .await;
    assert_eq!(ack["status"], "SEARCHING", "{ack}");
    assert_eq!(uuid_of(&a.push("match_withdrawn").await["match_id"]), match_id);
    let mut b = online(&h, &b_token, (-6.2004, 106.8)).await;
    assert_eq!(uuid_of(&b.push("match_proposal").await["match_id"]), match_id);
    let ride_id = accept_and_confirm(&mut passenger, &mut b, match_id, b_id).await;
    assert!(a.take_buffered("match_proposal").is_empty(), "{a_id} is excluded");

    let at_pickup = (-6.2004, 106.8);
    let mut trip = start_ride(&mut passenger, &mut b, ride_id, at_pickup).await;
    let started_at = trip.last.1;
    let north = |k: f64| (at_pickup.0 + 0.004 * k, at_pickup.1);
    drive(&mut b, &mut trip, started_at, &[(north(1.0), 300)]).await;

    // A restart mid-ride: both reconnect and see the ride; it goes on to completion.
    h.restart().await;
    let (mut b, state) = h.ws(&b_token).await;
    assert_eq!(
        (
            uuid_of(&state["ride"]["ride_id"]),
            state["ride"]["status"].as_str()
        ),
        (ride_id, Some("IN_PROGRESS")),
        "{state}"
    );
    let (mut passenger, state) = h.ws(&passenger_token).await;
    assert_eq!(uuid_of(&state["ride"]["ride_id"]), ride_id, "{state}");
    drive(
        &mut b,
        &mut trip,
        started_at,
        &[(north(2.0), 600), (north(3.0), 900)],
    )
    .await;
    b.ok("ride_arrived", json!({"ride_id": ride_id})).await;
    let fare = fare_of(trip.total_m);
    let request = passenger.push("payment_request").await;
    assert_eq!(request["amount"].as_i64(), Some(fare), "{request}");
    passenger
        .ok(
            "payment_process",
            json!({"ride_id": ride_id, "amount": fare, "accepted": true}),
        )
        .await;
    let completed = passenger.push("ride_completed").await;
    assert_eq!(b.push("ride_completed").await, completed);
    let read = ride_read(&h, &passenger_token, ride_id, "COMPLETED").await;
    assert_eq!(read["fare"].as_i64(), Some(fare));
    let (status, history) = h.http("GET", "/v1/me/rides", Some(&b_token), None).await;
    assert_eq!(status, 200, "{history}");
    assert!(history.to_string().contains(&ride_id.to_string()), "{history}");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_proposed_before_a_restart_sees_the_proposal_on_reconnect_and_can_accept_it() {
    let mut h = start(|_| {}).await;
    let (_, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 31 CC").await;
    let mut driver = online(&h, &driver_token, (-6.205, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let match_id = request(&mut passenger).await;
    let proposal = driver.push("match_proposal").await;
    assert_eq!(uuid_of(&proposal["match_id"]), match_id);

    h.restart().await;
    let (mut driver, state) = h.ws(&driver_token).await;
    assert_eq!(
        (
            state["match"]["match_id"].as_str(),
            state["match"]["status"].as_str()
        ),
        (Some(match_id.to_string().as_str()), Some("PROPOSED")),
        "the pending proposal survives the restart: {state}"
    );
    assert_eq!(state["match"]["distance_km"], proposal["distance_km"], "{state}");
    let (mut passenger, _) = h.ws(&passenger_token).await;
    accept_and_confirm(&mut passenger, &mut driver, match_id, driver_id).await;
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passenger_on_an_edge_process_and_a_driver_on_another_ride_together() {
    let h = start(|_| {}).await;
    // A second process serving only the edge (`--role api`), beside the first.
    let edge = h.another(nebengjek::Role::Api).await;
    let (_, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 41 DD").await;
    let at = (-6.2004, 106.8);
    let mut driver = online(&h, &driver_token, at).await;
    let (mut passenger, state) = h.ws_at(edge.http_addr, &passenger_token).await;
    assert_eq!(state, json!({"match": null, "ride": null}));
    let (_, ride_id) = matched_ride(&mut passenger, &mut driver, driver_id).await;
    start_ride(&mut passenger, &mut driver, ride_id, at).await;
    driver.ok("ride_arrived", json!({"ride_id": ride_id})).await;
    let request = passenger.push("payment_request").await;
    passenger
        .ok(
            "payment_process",
            json!({"ride_id": ride_id, "amount": request["amount"], "accepted": true}),
        )
        .await;
    assert_eq!(
        passenger.push("ride_completed").await,
        driver.push("ride_completed").await
    );
    edge.shutdown().await.expect("the edge stops");
    h.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_rule_follows_the_passenger_and_a_long_trip_is_capped_at_the_maximum_fare() {
    // One 170 km segment in a second: the speed limit is out of the way.
    let h = start(|c| c.policy.trip.max_speed_kmh = 1.0e7).await;
    let (_, analyst) = h.analyst().await;
    let (_, passenger_token) = h.passenger().await;
    let (driver_id, driver_token) = h.driver("B 51 EE").await;
    let mut driver = online(&h, &driver_token, (-6.2004, 106.8)).await;
    let (mut passenger, _) = h.ws(&passenger_token).await;
    let (_, ride_id) = matched_ride(&mut passenger, &mut driver, driver_id).await;

    // The passenger walked ~330 m from the pickup: the driver at the pickup is too far
    // from them; next to them, the ride starts.
    let walked = (-6.197, 106.8);
    assert_eq!(passenger.ok("location_update", point(walked)).await, json!({}));
    driver
        .refused("ride_start", json!({"ride_id": ride_id}), "too_far")
        .await;
    let next_to = (-6.1973, 106.8);
    assert!(haversine_m(next_to, walked) < 100.0);
    let mut trip = start_ride(&mut passenger, &mut driver, ride_id, next_to).await;
    trip.max_speed_kmh = 1.0e7;
    let started_at = trip.last.1;
    let far = (-6.1973, 108.34); // ~170 km east
    drive(&mut driver, &mut trip, started_at, &[(far, 1000)]).await;
    assert!(trip.total_m * RATE_PER_KM / 1000 > MAXIMUM_FARE);

    driver.ok("ride_arrived", json!({"ride_id": ride_id})).await;
    let request = passenger.push("payment_request").await;
    assert_eq!(request["fare"].as_i64(), Some(MAXIMUM_FARE), "{request}");
    let (adjusted, admin_fee, payout) = split(MAXIMUM_FARE, 10_000);
    assert_eq!(
        (
            request["amount"].as_i64(),
            request["admin_fee"].as_i64(),
            request["driver_payout"].as_i64()
        ),
        (Some(adjusted), Some(admin_fee), Some(payout)),
        "{request}"
    );
    let ledger = h
        .http_until(
            &format!("/v1/billing/ledger?ride_id={ride_id}"),
            &analyst,
            |code, body| code == 200 && body["total"].as_i64() == Some(MAXIMUM_FARE),
        )
        .await;
    let raw = (trip.total_m * RATE_PER_KM + 500) / 1000;
    let kinds: Vec<(String, i64)> = ledger["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_owned(),
                e["cost"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("trip_segment".to_owned(), raw),
            ("maximum_fare".to_owned(), MAXIMUM_FARE - raw)
        ],
        "{ledger}"
    );
    h.finish().await;
}
