//! The command pipeline end to end on real PostgreSQL (and NATS): the match → ride
//! process manager, deadlines that survive a restart, the one-open-match-or-ride
//! invariant under concurrency, payments, and the NATS ingress.

mod support;

use chrono::TimeDelta;
use commands::ingress::ClientCommand;
use commands::pipeline::Envelope;
use commands::ports::ChargeError;
use commands::process::{create_rides_once, fire_due_deadlines};
use commands::{Ack, CommandBus};
use domain::matching::{Candidate, MatchCommand};
use domain::{Actor, Aggregate, ErrorCode, GeoPoint, MatchId, Role, UserId};
use futures::future::join_all;
use serde_json::{json, Value};
use support::{another_process, world, World};
use uuid::Uuid;

fn pickup() -> GeoPoint {
    GeoPoint::new(-6.2, 106.8).unwrap()
}

fn destination() -> GeoPoint {
    GeoPoint::new(-6.17, 106.82).unwrap()
}

fn user(role: Role) -> Actor {
    Actor::new(UserId::from_uuid(Uuid::now_v7()), role)
}

async fn request_match(w: &World, passenger: Actor) -> MatchId {
    let ack = w
        .bus
        .dispatch(
            passenger,
            Some(&Uuid::now_v7().to_string()),
            ClientCommand::RequestMatch {
                pickup: pickup(),
                destination: destination(),
            },
        )
        .await;
    assert!(ack.ok, "{ack:?}");
    let id = ack.result.as_ref().and_then(|r| r["match_id"].as_str()).unwrap();
    id.parse().unwrap()
}

async fn propose(w: &World, match_id: MatchId, drivers: &[Actor]) {
    let candidates = drivers
        .iter()
        .map(|d| Candidate {
            driver_id: d.user_id,
            distance_km: 1.0,
            eta_seconds: 120,
        })
        .collect();
    let env = Envelope::system(format!("propose:{match_id}:{}", Uuid::now_v7()), None);
    let ack = commands::bus::answer(
        w.bus
            .matches()
            .execute(match_id.as_uuid(), &env, &MatchCommand::Propose { candidates })
            .await
            .unwrap(),
    );
    assert!(ack.ok, "{ack:?}");
}

async fn confirm(w: &World, actor: Actor, match_id: MatchId, accepted: bool) -> Ack {
    w.bus
        .dispatch(
            actor,
            Some(&Uuid::now_v7().to_string()),
            ClientCommand::MatchConfirm { match_id, accepted },
        )
        .await
}

/// A PENDING ride of `passenger` with `driver`, through the match.
async fn ride_between(w: &World, passenger: Actor, driver: Actor) -> domain::RideId {
    let match_id = request_match(w, passenger).await;
    propose(w, match_id, &[driver]).await;
    assert!(confirm(w, driver, match_id, true).await.ok);
    assert!(confirm(w, passenger, match_id, true).await.ok);
    create_rides_once(&w.bus).await.unwrap();
    let id: Uuid = sqlx::query_scalar(
        "SELECT aggregate_id FROM participant_reservations WHERE user_id = $1 AND aggregate_type = 'ride'",
    )
    .bind(driver.user_id.as_uuid())
    .fetch_one(&w.pool)
    .await
    .unwrap();
    id.into()
}

/// This process for even `i`, the other for odd: spreads concurrent commands over two.
fn alternate(w: &World, other: &CommandBus, i: usize) -> CommandBus {
    if i.is_multiple_of(2) {
        w.bus.clone()
    } else {
        other.clone()
    }
}

async fn count(w: &World, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&w.pool).await.unwrap()
}

/// A confirmed match becomes exactly one ride, however often and from however many
/// processes the process manager runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirmed_match_creates_exactly_one_ride() {
    let w = world().await;
    let passenger = user(Role::Passenger);
    let driver = user(Role::Driver);
    let match_id = request_match(&w, passenger).await;
    propose(&w, match_id, &[driver]).await;
    assert!(confirm(&w, driver, match_id, true).await.ok);
    let confirmed = confirm(&w, passenger, match_id, true).await;
    assert!(confirmed.ok, "{confirmed:?}");
    assert_eq!(confirmed.result.as_ref().unwrap()["status"], "CONFIRMED");

    let other = another_process(&w);
    let runs = join_all((0..4).map(|i| {
        let bus = if i % 2 == 0 { w.bus.clone() } else { other.clone() };
        async move { create_rides_once(&bus).await.unwrap() }
    }))
    .await;
    assert!(runs.iter().sum::<usize>() >= 1);
    create_rides_once(&w.bus).await.unwrap();
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM events WHERE aggregate_type = 'ride' AND event_type = 'created'"
        )
        .await,
        1
    );
    // Both participants are now in the ride, not the match.
    let holders: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT aggregate_type FROM participant_reservations")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    assert_eq!(holders, vec![("ride".to_owned(),)]);
}

/// Match round timeouts are kept in PostgreSQL: a process that starts after the
/// deadline passed still times the round out, once.
#[tokio::test]
async fn a_match_deadline_survives_a_restart_and_fires_once() {
    let w = world().await;
    let passenger = user(Role::Passenger);
    let match_id = request_match(&w, passenger).await;
    propose(&w, match_id, &[]).await;
    w.clock.advance(TimeDelta::seconds(31));

    let restarted = another_process(&w);
    assert_eq!(fire_due_deadlines(&restarted).await.unwrap(), 1);
    let state = restarted.matches().load(match_id.as_uuid()).await.unwrap().state;
    assert_eq!(state.round(), 2);
    assert_eq!(state.radius_km(), Some(10.0));
    // The new round has its own deadline, not yet due.
    assert_eq!(fire_due_deadlines(&restarted).await.unwrap(), 0);
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM events WHERE event_type = 'round_timed_out'"
        )
        .await,
        1
    );

    // After the last round the match ends and its deadline is gone.
    w.clock.advance(TimeDelta::seconds(31));
    fire_due_deadlines(&w.bus).await.unwrap();
    w.clock.advance(TimeDelta::seconds(31));
    fire_due_deadlines(&w.bus).await.unwrap();
    let state = w.bus.matches().load(match_id.as_uuid()).await.unwrap().state;
    assert_eq!(domain::Aggregate::status(&state), "FAILED");
    assert_eq!(count(&w, "SELECT count(*) FROM deadlines").await, 0);
    assert_eq!(
        count(&w, "SELECT count(*) FROM participant_reservations").await,
        0
    );
}

/// SPEC.md §3 Match rule 6: one driver proposed to five matches accepts them all at
/// once from two processes; exactly one accept wins, the rest are `already_active`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_driver_accepting_five_matches_at_once_ends_up_in_one() {
    let w = world().await;
    let other = another_process(&w);
    for round in 0..5 {
        let driver = user(Role::Driver);
        let mut matches = Vec::new();
        for _ in 0..5 {
            let m = request_match(&w, user(Role::Passenger)).await;
            propose(&w, m, &[driver]).await;
            other.matches().load(m.as_uuid()).await.unwrap();
            matches.push(m);
        }
        let acks = join_all(matches.iter().enumerate().map(|(i, m)| {
            let bus = alternate(&w, &other, i);
            let m = *m;
            async move {
                bus.dispatch(
                    driver,
                    Some(&Uuid::now_v7().to_string()),
                    ClientCommand::MatchConfirm {
                        match_id: m,
                        accepted: true,
                    },
                )
                .await
            }
        }))
        .await;
        let wins = acks.iter().filter(|a| a.ok).count();
        assert_eq!(wins, 1, "round {round}: {acks:?}");
        for a in acks.iter().filter(|a| !a.ok) {
            assert_eq!(a.code(), Some(ErrorCode::AlreadyActive), "round {round}: {a:?}");
        }
        let held: i64 =
            sqlx::query_scalar("SELECT count(*) FROM participant_reservations WHERE user_id = $1")
                .bind(driver.user_id.as_uuid())
                .fetch_one(&w.pool)
                .await
                .unwrap();
        assert_eq!(held, 1);
    }
}

/// A passenger asking twice at once gets one match; the other request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passenger_requesting_twice_at_once_gets_one_match() {
    let w = world().await;
    let other = another_process(&w);
    for _ in 0..10 {
        let passenger = user(Role::Passenger);
        let request = || ClientCommand::RequestMatch {
            pickup: pickup(),
            destination: destination(),
        };
        let (a, b) = tokio::join!(
            w.bus.dispatch(passenger, Some("a"), request()),
            other.dispatch(passenger, Some("b"), request())
        );
        assert_eq!([&a, &b].iter().filter(|x| x.ok).count(), 1, "{a:?} {b:?}");
        let refused = if a.ok { &b } else { &a };
        assert_eq!(refused.code(), Some(ErrorCode::AlreadyActive));
    }
}

/// The whole ride through the bus: start needs the driver near, trip points bill,
/// a failed payment leaves the ride payable, the retry completes it.
#[tokio::test]
async fn a_ride_with_a_failed_then_successful_payment() {
    let w = world().await;
    let passenger = user(Role::Passenger);
    let driver = user(Role::Driver);
    let ride_id = ride_between(&w, passenger, driver).await;
    let send = |actor: Actor, cmd: ClientCommand| {
        let bus = w.bus.clone();
        async move { bus.dispatch(actor, Some(&Uuid::now_v7().to_string()), cmd).await }
    };

    // Too far: the driver is 1 km away.
    let far = GeoPoint::new(-6.209, 106.8).unwrap();
    assert!(
        send(
            driver,
            ClientCommand::BeaconUpdate {
                is_active: true,
                point: far
            }
        )
        .await
        .ok
    );
    let ack = send(driver, ClientCommand::RideStart { ride_id }).await;
    assert_eq!(ack.code(), Some(ErrorCode::TooFar), "{ack:?}");
    // Close enough.
    assert!(
        send(
            driver,
            ClientCommand::BeaconUpdate {
                is_active: true,
                point: pickup()
            }
        )
        .await
        .ok
    );
    let ack = send(driver, ClientCommand::RideStart { ride_id }).await;
    assert_eq!(ack.result.as_ref().unwrap()["status"], "IN_PROGRESS", "{ack:?}");

    // Ten points 500 m apart, 60 s apart: 5 km.
    let mut expected_m = 0i64;
    let mut last = pickup();
    for k in 1..=10 {
        w.clock.advance(TimeDelta::seconds(60));
        let p = GeoPoint::new(-6.2 + 0.0045 * f64::from(k), 106.8).unwrap();
        expected_m += last.distance_m(&p).round() as i64;
        last = p;
        let ack = send(
            driver,
            ClientCommand::LocationUpdate {
                point: p,
                accuracy_m: None,
                recorded_at: None,
                ride_id: None,
            },
        )
        .await;
        assert_eq!(ack, Ack::ok(json!({})), "point {k}");
    }
    let ack = send(
        driver,
        ClientCommand::RideArrived {
            ride_id,
            adjustment_factor: None,
        },
    )
    .await;
    assert_eq!(ack.result.as_ref().unwrap()["status"], "ARRIVED", "{ack:?}");
    let fare = (expected_m * 3000 + 500) / 1000;
    let state = w.bus.rides().load(ride_id.as_uuid()).await.unwrap().state;
    assert_eq!(
        state.amount_due().map(|r| r.get()),
        Some(fare.clamp(5000, 500_000))
    );

    let pay = |accepted: bool| ClientCommand::PaymentProcess {
        ride_id,
        amount: fare,
        accepted,
    };
    let ack = send(
        passenger,
        ClientCommand::PaymentProcess {
            ride_id,
            amount: fare + 1,
            accepted: true,
        },
    )
    .await;
    assert_eq!(ack.code(), Some(ErrorCode::AmountMismatch));
    assert!(
        w.payments.calls().is_empty(),
        "a mismatched amount never reaches the provider"
    );

    w.payments
        .push(Err(ChargeError::Declined("card declined".into())));
    let ack = send(passenger, pay(true)).await;
    assert_eq!(ack.code(), Some(ErrorCode::PaymentFailed), "{ack:?}");
    let ack = send(passenger, pay(false)).await;
    assert_eq!(ack.result.as_ref().unwrap()["status"], "ARRIVED", "{ack:?}");
    let ack = send(passenger, pay(true)).await;
    assert_eq!(ack.result.as_ref().unwrap()["status"], "COMPLETED", "{ack:?}");
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 AND event_type LIKE 'payment_%' ORDER BY sequence",
    )
    .bind(ride_id.as_uuid())
    .fetch_all(&w.pool)
    .await
    .unwrap();
    assert_eq!(kinds, ["payment_failed", "payment_declined", "payment_accepted"]);
    assert_eq!(
        count(&w, "SELECT count(*) FROM participant_reservations").await,
        0
    );
}

const SECRET: &[u8] = b"flows-test-secret-0123456789abcdef";

/// A token for `actor` as the edge signs them, expiring `ttl` after the world's clock.
fn token(w: &World, actor: Actor, ttl: TimeDelta) -> String {
    use commands::token::{Claims, ISSUER};
    let now = commands::clock::Clock::now(w.clock.as_ref());
    let claims = Claims {
        sub: actor.user_id.as_uuid(),
        role: actor.role,
        exp: (now + ttl).timestamp(),
        iat: now.timestamp(),
        iss: ISSUER.into(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A request with `Authorization: <authorization>` when given.
async fn nats_request_as(
    client: &async_nats::Client,
    subject: String,
    authorization: Option<String>,
    body: Vec<u8>,
) -> Ack {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(value) = authorization {
        headers.insert("Authorization", value.as_str());
    }
    let reply = client
        .request_with_headers(subject, headers, body.into())
        .await
        .expect("NATS must be running (scripts/services.sh)");
    serde_json::from_slice(&reply.payload).unwrap()
}

/// The NATS ingress with the world's bus on subjects of the test's own; the client
/// and the prefix.
async fn nats_ingress(w: &World) -> (async_nats::Client, String) {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS must be running at {url} (scripts/services.sh): {e}"));
    let prefix = format!("t{}.", Uuid::new_v4().simple());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The ingress runs as long as the test: leak the sender.
    std::mem::forget(stop);
    let tokens = commands::token::TokenVerifier::new(SECRET, w.clock.clone());
    tokio::spawn(commands::nats::serve(
        client.clone(),
        w.bus.clone(),
        tokens,
        prefix.clone(),
        stopped,
    ));
    // The subscription is registered once the server has seen it.
    client.flush().await.expect("flush");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    (client, prefix)
}

/// The NATS ingress refuses with the same codes as the in-process bus, and answers
/// `invalid_payload` to what is not an envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_commands_get_the_same_answers_as_in_process_ones() {
    let w = world().await;
    let (client, prefix) = nats_ingress(&w).await;
    let passenger = user(Role::Passenger);
    let driver = user(Role::Driver);
    let stranger = user(Role::Driver);
    let match_id = request_match(&w, passenger).await;
    propose(&w, match_id, &[driver]).await;

    let day = TimeDelta::hours(24);
    let bearer = |actor: Actor| Some(format!("Bearer {}", token(&w, actor, day)));
    let envelope = |data: Value| {
        serde_json::to_vec(&json!({"command_id": Uuid::now_v7().to_string(), "data": data})).unwrap()
    };
    // forbidden: a driver who was never proposed.
    let data = json!({"match_id": match_id, "accepted": true});
    let over_nats = nats_request_as(
        &client,
        format!("{prefix}cmd.match.confirm"),
        bearer(stranger),
        envelope(data.clone()),
    )
    .await;
    let in_process = w
        .bus
        .dispatch(
            stranger,
            Some("x"),
            ClientCommand::parse("match_confirm", &data).unwrap(),
        )
        .await;
    assert_eq!(over_nats.code(), Some(ErrorCode::Forbidden), "{over_nats:?}");
    assert_eq!(over_nats.code(), in_process.code());

    // not_found: no such ride.
    let data = json!({"ride_id": Uuid::now_v7()});
    let over_nats = nats_request_as(
        &client,
        format!("{prefix}cmd.ride.start"),
        bearer(driver),
        envelope(data),
    )
    .await;
    assert_eq!(over_nats.code(), Some(ErrorCode::NotFound), "{over_nats:?}");

    // validation_failed: a wrongly typed field.
    let data = json!({"ride_id": 42});
    let over_nats = nats_request_as(
        &client,
        format!("{prefix}cmd.ride.start"),
        bearer(driver),
        envelope(data),
    )
    .await;
    assert_eq!(
        over_nats.code(),
        Some(ErrorCode::ValidationFailed),
        "{over_nats:?}"
    );

    // invalid_payload: not an envelope at all.
    let ack = nats_request_as(
        &client,
        format!("{prefix}cmd.ride.start"),
        bearer(driver),
        b"not json".to_vec(),
    )
    .await;
    assert_eq!(ack.code(), Some(ErrorCode::InvalidPayload));

    // And an accepted command: the driver accepts over NATS, idempotently; an actor
    // field equal to the token's is accepted too.
    let accept = serde_json::to_vec(&json!({"command_id": Uuid::now_v7().to_string(),
        "actor": {"user_id": driver.user_id, "role": "driver"},
        "data": {"match_id": match_id, "accepted": true}}))
    .unwrap();
    let first = nats_request_as(
        &client,
        format!("{prefix}cmd.match.confirm"),
        bearer(driver),
        accept.clone(),
    )
    .await;
    assert_eq!(
        first.result.as_ref().unwrap()["status"],
        "DRIVER_ACCEPTED",
        "{first:?}"
    );
    let again = nats_request_as(
        &client,
        format!("{prefix}cmd.match.confirm"),
        bearer(driver),
        accept,
    )
    .await;
    assert_eq!(again, first);
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM events WHERE event_type = 'driver_accepted'"
        )
        .await,
        1
    );
}

/// SPEC.md §4 "NATS": the actor is the token's. A command without a token, with a
/// token that is not ours or has expired, or whose body names another actor than its
/// token, is refused, and nothing is written for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_commands_act_as_their_tokens_subject_only() {
    let w = world().await;
    let (client, prefix) = nats_ingress(&w).await;
    let passenger = user(Role::Passenger);
    let victim = user(Role::Passenger);
    let subject = format!("{prefix}cmd.match.request");
    let data = json!({"pickup": {"lat": -6.2, "lon": 106.8}, "destination": {"lat": -6.17, "lon": 106.82}});
    let body = |actor: Option<Actor>| {
        let mut envelope = json!({"command_id": Uuid::now_v7().to_string(), "data": data.clone()});
        if let Some(a) = actor {
            envelope["actor"] = json!({"user_id": a.user_id, "role": a.role});
        }
        serde_json::to_vec(&envelope).unwrap()
    };
    let events = || count(&w, "SELECT count(*) FROM events");
    let logged = || count(&w, "SELECT count(*) FROM command_log");
    let before = (events().await, logged().await);

    let refusals = [
        ("no header", None, body(Some(victim)), ErrorCode::Unauthorized),
        (
            "not bearer",
            Some(format!("Basic {}", token(&w, victim, TimeDelta::hours(1)))),
            body(None),
            ErrorCode::Unauthorized,
        ),
        (
            "garbage",
            Some("Bearer not.a.token".to_owned()),
            body(None),
            ErrorCode::Unauthorized,
        ),
        (
            "expired",
            Some(format!("Bearer {}", token(&w, victim, TimeDelta::seconds(-1)))),
            body(None),
            ErrorCode::Unauthorized,
        ),
        (
            "forged actor",
            Some(format!("Bearer {}", token(&w, passenger, TimeDelta::hours(1)))),
            body(Some(victim)),
            ErrorCode::Forbidden,
        ),
        (
            "forged role",
            Some(format!("Bearer {}", token(&w, passenger, TimeDelta::hours(1)))),
            body(Some(Actor::new(passenger.user_id, Role::Driver))),
            ErrorCode::Forbidden,
        ),
    ];
    for (case, authorization, body, code) in refusals {
        let ack = nats_request_as(&client, subject.clone(), authorization, body).await;
        assert_eq!(ack.code(), Some(code), "{case}: {ack:?}");
    }
    // Another secret: a token the edge did not sign.
    let other = {
        use commands::token::{Claims, ISSUER};
        let now = chrono::Utc::now();
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &Claims {
                sub: victim.user_id.as_uuid(),
                role: Role::Passenger,
                exp: (now + TimeDelta::hours(1)).timestamp(),
                iat: now.timestamp(),
                iss: ISSUER.into(),
            },
            &jsonwebtoken::EncodingKey::from_secret(b"another secret, not the edge's one"),
        )
        .unwrap()
    };
    let ack = nats_request_as(
        &client,
        subject.clone(),
        Some(format!("Bearer {other}")),
        body(None),
    )
    .await;
    assert_eq!(ack.code(), Some(ErrorCode::Unauthorized), "{ack:?}");
    assert_eq!(
        (events().await, logged().await),
        before,
        "nothing written for a refusal"
    );

    // The same command with the passenger's own token acts as the passenger.
    let ack = nats_request_as(
        &client,
        subject,
        Some(format!("Bearer {}", token(&w, passenger, TimeDelta::hours(1)))),
        body(None),
    )
    .await;
    assert!(ack.ok, "{ack:?}");
    let match_id: Uuid = ack.result.as_ref().unwrap()["match_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let requested_by: Uuid = sqlx::query_scalar(
        "SELECT (payload->>'passenger_id')::uuid FROM events WHERE aggregate_id = $1 ORDER BY sequence LIMIT 1",
    )
    .bind(match_id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(requested_by, passenger.user_id.as_uuid());
}

/// Guarantee 1 across processes: a process answers from its cached aggregates, but one
/// that saw a ride only while it was PENDING must not decide on that stale state after
/// another process started the ride — neither drop a driver's trip point (a cached
/// "not in progress") nor refuse an arrival (a refusal is decided again on the stored
/// state; an acceptance is checked by the append's version).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_process_with_a_stale_cached_ride_decides_on_the_stored_state() {
    let w = world().await;
    let passenger = user(Role::Passenger);
    let driver = user(Role::Driver);
    let ride_id = ride_between(&w, passenger, driver).await;
    let (pings, arrivals) = (another_process(&w), another_process(&w));
    for process in [&pings, &arrivals] {
        let seen = process.rides().load(ride_id.as_uuid()).await.unwrap();
        assert_eq!(seen.state.status(), "PENDING");
    }
    let send = |bus: &CommandBus, cmd: ClientCommand| {
        let bus = bus.clone();
        async move { bus.dispatch(driver, Some(&Uuid::now_v7().to_string()), cmd).await }
    };
    let beacon = ClientCommand::BeaconUpdate {
        is_active: true,
        point: pickup(),
    };
    assert!(send(&w.bus, beacon).await.ok);
    let started = send(&w.bus, ClientCommand::RideStart { ride_id }).await;
    assert_eq!(
        started.result.as_ref().unwrap()["status"],
        "IN_PROGRESS",
        "{started:?}"
    );

    w.clock.advance(TimeDelta::seconds(60));
    let point = GeoPoint::new(-6.2045, 106.8).unwrap();
    let ping = ClientCommand::LocationUpdate {
        point,
        accuracy_m: None,
        recorded_at: None,
        ride_id: None,
    };
    assert_eq!(send(&pings, ping).await, Ack::ok(json!({})));
    let recorded = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'trip_point_recorded'",
    )
    .bind(ride_id.as_uuid())
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1, "the point acked by the stale process is on the ride");

    let arrived = send(
        &arrivals,
        ClientCommand::RideArrived {
            ride_id,
            adjustment_factor: None,
        },
    )
    .await;
    assert!(arrived.ok, "{arrived:?}");
    assert_eq!(arrived.result.as_ref().unwrap()["status"], "ARRIVED");
    let distance_m: i64 =
        sqlx::query_scalar("SELECT (payload->>'distance_m')::bigint FROM events WHERE aggregate_id = $1 AND event_type = 'arrived'")
            .bind(ride_id.as_uuid())
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!(distance_m, pickup().distance_m(&point).round() as i64);
}

/// Five drivers answer one proposal at once, from two processes: one wins, the others
/// are refused, and each refusal — logged after the match is let go — is the answer to
/// its frame id for good: a resend, after the match has moved on, gets it again and
/// appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_drivers_answering_one_proposal_at_once_one_wins_and_each_refusal_is_logged() {
    let w = world().await;
    let other = another_process(&w);
    for round in 0..10 {
        let passenger = user(Role::Passenger);
        let drivers: Vec<Actor> = (0..5).map(|_| user(Role::Driver)).collect();
        let match_id = request_match(&w, passenger).await;
        propose(&w, match_id, &drivers).await;
        let answer = |i: usize| {
            let bus = alternate(&w, &other, i);
            let driver = drivers[i];
            async move {
                let confirm = ClientCommand::MatchConfirm {
                    match_id,
                    accepted: true,
                };
                bus.dispatch(driver, Some(&format!("accept-{round}")), confirm)
                    .await
            }
        };
        let acks = join_all((0..5).map(answer)).await;
        assert_eq!(acks.iter().filter(|a| a.ok).count(), 1, "round {round}: {acks:?}");
        for refused in acks.iter().filter(|a| !a.ok) {
            assert!(
                matches!(
                    refused.code(),
                    Some(ErrorCode::AlreadyTaken | ErrorCode::Conflict)
                ),
                "round {round}: {refused:?}"
            );
        }
        let events = format!(
            "SELECT count(*) FROM events WHERE aggregate_id = '{}'",
            match_id.as_uuid()
        );
        // The passenger turns the winner down: the match searches again, so a resend
        // decided anew would be answered differently; the logged answers must stand.
        let turned_down = confirm(&w, passenger, match_id, false).await;
        assert!(turned_down.ok, "round {round}: {turned_down:?}");
        let before = count(&w, &events).await;
        let again = join_all((0..5).rev().map(answer)).await;
        let again: Vec<Ack> = again.into_iter().rev().collect();
        assert_eq!(again, acks, "round {round}: resends get the first answers");
        assert_eq!(count(&w, &events).await, before, "round {round}");
    }
}
