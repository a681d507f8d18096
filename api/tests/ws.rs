//! The WebSocket `/ws` with a real server on port 0 and a real client
//! (`tokio-tungstenite`): authentication at the upgrade, malformed frames, the 64 KiB
//! limit, idempotent resends, the authorization matrix, and pushes driven by the event
//! feed across two edge processes. Real PostgreSQL, NATS (JetStream) and Redis.

mod schema_check;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use domain::{Role, UserId};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{app, app_on, destination, pickup, App};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect_status(addr: SocketAddr, token: Option<&str>, query: Option<&str>) -> Result<Ws, u16> {
    let url = match query {
        Some(q) => format!("ws://{addr}/ws?token={q}"),
        None => format!("ws://{addr}/ws"),
    };
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("connect failed: {other}"),
    }
}

/// Connects and reads the first frame, which must be `session_state`.
async fn connect(addr: SocketAddr, token: &str) -> (Ws, Value) {
    let mut ws = connect_status(addr, Some(token), None).await.expect("upgrade");
    let first = next(&mut ws).await;
    assert_eq!(first["type"], "session_state", "{first}");
    (ws, first)
}

async fn next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket is open")
            .expect("a readable frame");
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap();
                schema_check::server_frame(&frame);
                return frame;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next frame of type `kind`, skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    loop {
        let frame = next(ws).await;
        if frame["type"] == kind {
            return frame;
        }
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

async fn command(ws: &mut Ws, id: &str, kind: &str, data: Value) -> Value {
    let sent = json!({"type": kind, "id": id, "data": data});
    send(ws, sent.clone()).await;
    loop {
        let frame = next(ws).await;
        if frame["type"] == "ack" && frame["id"] == id {
            schema_check::client_frame(&sent, &frame);
            return frame;
        }
    }
}

async fn events(app: &App) -> i64 {
    app.count("SELECT count(*) FROM events").await
}

#[tokio::test]
async fn bad_missing_and_expired_tokens_are_401_at_the_upgrade() {
    let app = app().await;
    let (addr, _stop) = app.serve().await;
    let (_, token) = app.user(Role::Passenger).await;
    assert_eq!(connect_status(addr, None, None).await.err(), Some(401));
    assert_eq!(connect_status(addr, Some("garbage"), None).await.err(), Some(401));
    let forged = support::test_config();
    let other = api::token::Tokens::new(b"another secret", forged.token_ttl, app.clock.clone());
    let forged = other
        .issue(UserId::from_uuid(uuid::Uuid::now_v7()), Role::Passenger)
        .unwrap()
        .token;
    assert_eq!(connect_status(addr, Some(&forged), None).await.err(), Some(401));
    // A browser's ?token= works.
    let mut ws = connect_status(addr, None, Some(&token))
        .await
        .expect("query token");
    assert_eq!(next(&mut ws).await["type"], "session_state");
    app.clock.advance(chrono::TimeDelta::hours(24));
    assert_eq!(connect_status(addr, Some(&token), None).await.err(), Some(401));
    app.cleanup().await;
}

#[tokio::test]
async fn malformed_frames_get_answers_and_the_connection_stays_usable() {
    let app = app().await;
    let (addr, _stop) = app.serve().await;
    let (_, token) = app.driver().await;
    let (mut ws, state) = connect(addr, &token).await;
    assert_eq!(state["data"], json!({"match": null, "ride": null}));

    ws.send(Message::text("{not json")).await.unwrap();
    let frame = next(&mut ws).await;
    assert_eq!(
        (&frame["type"], &frame["error"]["code"]),
        (&json!("error"), &json!("invalid_payload"))
    );
    assert!(frame.get("id").is_none());

    send(&mut ws, json!({"type": "beacon_update", "data": {}})).await;
    let frame = next(&mut ws).await;
    assert_eq!(frame["error"]["code"], "invalid_payload");

    send(&mut ws, json!({"id": "t1", "type": 42, "data": {}})).await;
    let frame = next(&mut ws).await;
    assert_eq!(
        (&frame["type"], &frame["id"], &frame["error"]["code"]),
        (&json!("error"), &json!("t1"), &json!("invalid_payload"))
    );

    send(&mut ws, json!({"id": "t2", "data": {}})).await;
    let frame = next(&mut ws).await;
    assert_eq!(
        (&frame["id"], &frame["error"]["code"]),
        (&json!("t2"), &json!("invalid_payload"))
    );

    let ack = command(&mut ws, "t3", "teleport", json!({})).await;
    assert_eq!(
        (&ack["ok"], &ack["error"]["code"]),
        (&json!(false), &json!("unknown_type"))
    );

    let ack = command(
        &mut ws,
        "t4",
        "beacon_update",
        json!({"is_active": "yes", "lat": -6.2, "lon": 106.8}),
    )
    .await;
    assert_eq!(
        (&ack["ok"], &ack["error"]["code"]),
        (&json!(false), &json!("validation_failed"))
    );
    let ack = command(&mut ws, "t5", "ride_start", json!({"ride_id": 12})).await;
    assert_eq!(ack["error"]["code"], "validation_failed");

    let ack = command(
        &mut ws,
        "t6",
        "beacon_update",
        json!({"is_active": true, "lat": -6.2, "lon": 106.8}),
    )
    .await;
    assert_eq!(ack, json!({"type": "ack", "id": "t6", "ok": true, "result": {}}));
    assert_eq!(events(&app).await, 0, "nothing was written for the refusals");

    // Over 64 KiB: closed with 1009.
    let huge = json!({"type": "beacon_update", "id": "big", "data": {"pad": "x".repeat(70 * 1024)}});
    ws.send(Message::text(huge.to_string())).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(u16::from(frame.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(closed, Some(1009));
    // The client may reconnect.
    let (mut ws, _) = connect(addr, &token).await;
    let ack = command(
        &mut ws,
        "t7",
        "beacon_update",
        json!({"is_active": true, "lat": -6.2, "lon": 106.8}),
    )
    .await;
    assert_eq!(ack["ok"], true);
    app.cleanup().await;
}

#[tokio::test]
async fn a_resent_frame_id_gets_the_first_answer_and_writes_nothing_more() {
    let app = app().await;
    let (addr, _stop) = app.serve().await;
    let (_, token) = app.user(Role::Passenger).await;
    let (mut ws, _) = connect(addr, &token).await;
    let data = json!({"is_active": true, "pickup": pickup(), "destination": destination()});
    let first = command(&mut ws, "req-1", "finder_update", data.clone()).await;
    assert_eq!(first["ok"], true, "{first}");
    assert!(first["result"]["match_id"].is_string());
    let written = events(&app).await;
    assert_eq!(written, 1);

    // Same id, same socket; then a different payload on a new socket.
    let again = command(&mut ws, "req-1", "finder_update", data).await;
    assert_eq!(again, first);
    drop(ws);
    let (mut ws, state) = connect(addr, &token).await;
    assert_eq!(
        state["data"]["match"]["match_id"], first["result"]["match_id"],
        "{state}"
    );
    assert_eq!(state["data"]["match"]["status"], "SEARCHING");
    let other = json!({"is_active": true, "pickup": destination(), "destination": pickup()});
    let resent = command(&mut ws, "req-1", "finder_update", other).await;
    assert_eq!(resent, first);
    // And on another process of the same deployment.
    let other = app_on(app.pool.clone(), app.config.clone()).await;
    let (addr_b, _stop_b) = other.serve().await;
    let (mut ws_b, _) = connect(addr_b, &token).await;
    let resent = command(&mut ws_b, "req-1", "finder_update", json!({"is_active": false})).await;
    assert_eq!(resent, first);
    assert_eq!(events(&app).await, written);
    // A new id is a new command (refused: the passenger is already searching).
    let ack = command(
        &mut ws,
        "req-2",
        "finder_update",
        json!({"is_active": true, "pickup": pickup(), "destination": destination()}),
    )
    .await;
    assert_eq!(ack["error"]["code"], "already_active");
    app.cleanup().await;
}

#[tokio::test]
async fn every_ride_and_match_command_from_the_wrong_user_is_forbidden_and_writes_nothing() {
    let app = app().await;
    let (addr, _stop) = app.serve().await;
    let (passenger, _) = app.user(Role::Passenger).await;
    let (driver, _) = app.driver().await;
    let (_, other_driver) = app.driver().await;
    let (_, other_passenger) = app.user(Role::Passenger).await;
    let (_, passenger_token) = {
        let token = app
            .state
            .tokens()
            .issue(passenger, Role::Passenger)
            .unwrap()
            .token;
        (passenger, token)
    };

    // A match proposed to `driver` only (still open), and a ride between the two.
    let (ride_passenger, _) = app.user(Role::Passenger).await;
    let (_, ride) = app.ride_between(ride_passenger, driver).await;
    let ride_passenger_token = app
        .state
        .tokens()
        .issue(ride_passenger, Role::Passenger)
        .unwrap()
        .token;
    let (mut ws, _) = connect(addr, &passenger_token).await;
    let ack = command(
        &mut ws,
        "m",
        "finder_update",
        json!({"is_active": true, "pickup": pickup(), "destination": destination()}),
    )
    .await;
    let match_id: domain::MatchId = ack["result"]["match_id"].as_str().unwrap().parse().unwrap();
    let (proposed, _) = app.driver().await;
    app.propose(match_id, &[proposed]).await;

    let before = events(&app).await;
    let ride_cmds = [
        ("ride_start", json!({"ride_id": ride})),
        ("ride_arrived", json!({"ride_id": ride})),
        ("ride_cancel", json!({"ride_id": ride, "reason": "not mine"})),
        (
            "payment_process",
            json!({"ride_id": ride, "amount": 5000, "accepted": true}),
        ),
    ];
    let mut n = 0;
    // Another driver, another passenger, and the ride's own passenger for the
    // driver's commands.
    for token in [&other_driver, &other_passenger] {
        let (mut ws, _) = connect(addr, token).await;
        for (kind, data) in &ride_cmds {
            n += 1;
            let ack = command(&mut ws, &format!("x{n}"), kind, data.clone()).await;
            assert_eq!(ack["error"]["code"], "forbidden", "{kind} by a stranger: {ack}");
        }
        for accepted in [true, false] {
            n += 1;
            let ack = command(
                &mut ws,
                &format!("x{n}"),
                "match_confirm",
                json!({"match_id": match_id, "accepted": accepted}),
            )
            .await;
            assert_eq!(
                ack["error"]["code"], "forbidden",
                "match_confirm by a stranger: {ack}"
            );
        }
    }
    let (mut ws, _) = connect(addr, &ride_passenger_token).await;
    for (kind, data) in &ride_cmds[..2] {
        n += 1;
        let ack = command(&mut ws, &format!("x{n}"), kind, data.clone()).await;
        assert_eq!(
            ack["error"]["code"], "forbidden",
            "{kind} by the passenger: {ack}"
        );
    }
    // The proposed driver's own passenger-side answer is not theirs to give either:
    // the match's passenger confirming before any driver accepted is a transition error,
    // but a driver token confirming as passenger cannot exist. The passenger of the
    // match cannot accept on a driver's behalf:
    let ack = command(
        &mut ws,
        "y1",
        "match_confirm",
        json!({"match_id": match_id, "accepted": true}),
    )
    .await;
    assert_eq!(ack["error"]["code"], "forbidden", "{ack}");
    assert_eq!(events(&app).await, before, "no refused command wrote anything");
    app.cleanup().await;
}

/// Two edge processes on one store and one event stream: the passenger's socket is on
/// one, the driver's on the other, and every push of the ride's life reaches each of
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_follow_the_feed_to_whichever_process_holds_the_socket() {
    let a = app().await;
    let b = app_on(a.pool.clone(), a.config.clone()).await;
    let (addr_a, stop) = a.serve().await;
    let (addr_b, _stop_b) = b.serve().await;
    a.relay(stop.subscribe()).await;

    let (passenger, _) = a.user(Role::Passenger).await;
    let (driver, driver_token) = a.driver().await;
    let plate: String = sqlx::query_scalar("SELECT vehicle_plate FROM drivers WHERE user_id = $1")
        .bind(driver.as_uuid())
        .fetch_one(&a.pool)
        .await
        .unwrap();
    let passenger_token = a.state.tokens().issue(passenger, Role::Passenger).unwrap().token;
    let (mut p, _) = connect(addr_a, &passenger_token).await;
    let (mut d, _) = connect(addr_b, &driver_token).await;

    let ack = command(
        &mut p,
        "1",
        "finder_update",
        json!({"is_active": true, "pickup": pickup(), "destination": destination()}),
    )
    .await;
    let match_id: domain::MatchId = ack["result"]["match_id"].as_str().unwrap().parse().unwrap();
    a.propose(match_id, &[driver]).await;

    let proposal = next_of(&mut d, "match_proposal").await;
    assert_eq!(proposal["data"]["match_id"], json!(match_id));
    assert_eq!(proposal["data"]["passenger_id"], json!(passenger));
    assert_eq!(proposal["data"]["distance_km"], 1.2);
    assert_eq!(proposal["data"]["eta_seconds"], 180);
    assert!(proposal["data"]["fare_estimate"].as_i64().unwrap() >= 5000);
    assert!(proposal.get("id").is_none(), "pushes carry no id");
    // A driver who reconnects during the proposal sees it again.
    drop(d);
    let (mut d, state) = connect(addr_b, &driver_token).await;
    assert_eq!(state["data"]["match"]["match_id"], json!(match_id), "{state}");
    assert_eq!(state["data"]["match"]["status"], "PROPOSED");
    assert_eq!(state["data"]["match"]["eta_seconds"], 180);

    let ack = command(
        &mut d,
        "2",
        "match_confirm",
        json!({"match_id": match_id, "accepted": true}),
    )
    .await;
    assert_eq!(ack["result"]["status"], "DRIVER_ACCEPTED", "{ack}");
    let accepted = next_of(&mut p, "match_accepted").await;
    assert_eq!(accepted["data"]["driver_id"], json!(driver));
    assert_eq!(accepted["data"]["vehicle_type"], "car");
    assert_eq!(accepted["data"]["vehicle_plate"], json!(plate));

    let ack = command(
        &mut p,
        "3",
        "match_confirm",
        json!({"match_id": match_id, "accepted": true}),
    )
    .await;
    assert_eq!(ack["result"]["status"], "CONFIRMED", "{ack}");
    let confirmed_p = next_of(&mut p, "match_confirmed").await;
    let confirmed_d = next_of(&mut d, "match_confirmed").await;
    assert_eq!(confirmed_p, confirmed_d);
    let ride_id = confirmed_p["data"]["ride_id"].clone();

    commands::process::create_rides_once(&a.bus).await.unwrap();
    for ws in [&mut p, &mut d] {
        let pickup_push = next_of(ws, "ride_pickup").await;
        assert_eq!(pickup_push["data"]["ride_id"], ride_id);
        assert_eq!(pickup_push["data"]["status"], "PENDING");
        assert_eq!(pickup_push["data"]["driver_id"], json!(driver));
    }

    // A reconnect shows the ride.
    drop(p);
    let (mut p, state) = connect(addr_b, &passenger_token).await;
    assert_eq!(state["data"]["ride"]["ride_id"], ride_id, "{state}");
    assert_eq!(state["data"]["ride"]["status"], "PENDING");

    let here = pickup();
    let ack = command(
        &mut d,
        "4",
        "beacon_update",
        json!({"is_active": true, "lat": here.lat(), "lon": here.lon()}),
    )
    .await;
    assert_eq!(ack["ok"], true);
    let ack = command(&mut d, "5", "ride_start", json!({"ride_id": ride_id})).await;
    assert_eq!(ack["result"]["status"], "IN_PROGRESS", "{ack}");
    for ws in [&mut p, &mut d] {
        let started = next_of(ws, "ride_started").await;
        assert_eq!(started["data"]["ride_id"], ride_id);
        assert!(started["data"]["started_at"].as_str().unwrap().ends_with('Z'));
    }
    // A trip point 2 km north a minute later is billed before its ack.
    b.clock.advance(chrono::TimeDelta::seconds(60));
    let ack = command(
        &mut d,
        "5b",
        "location_update",
        json!({"lat": here.lat() + 0.018, "lon": here.lon()}),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(ack["result"].get("rejected").is_none(), "{ack}");
    let ack = command(
        &mut d,
        "6",
        "ride_arrived",
        json!({"ride_id": ride_id, "adjustment_factor": 0.8}),
    )
    .await;
    assert_eq!(ack["result"]["status"], "ARRIVED", "{ack}");
    let request = next_of(&mut p, "payment_request").await;
    let km = request["data"]["distance_km"].as_f64().unwrap();
    assert!((km - 2.0).abs() < 0.05, "{request}");
    let fare = request["data"]["fare"].as_i64().unwrap();
    assert_eq!(fare, (km * 3000.0).round() as i64, "{request}");
    let amount = fare * 8 / 10;
    assert_eq!(request["data"]["amount"], amount);
    assert_eq!(request["data"]["admin_fee"], amount * 5 / 100);
    assert_eq!(request["data"]["driver_payout"], amount - amount * 5 / 100);

    let ack = command(
        &mut p,
        "7",
        "payment_process",
        json!({"ride_id": ride_id, "amount": amount, "accepted": true}),
    )
    .await;
    assert_eq!(ack["result"]["status"], "COMPLETED", "{ack}");
    for ws in [&mut p, &mut d] {
        let done = next_of(ws, "ride_completed").await;
        assert_eq!(done["data"]["ride"]["ride_id"], ride_id);
        assert_eq!(done["data"]["ride"]["status"], "COMPLETED");
        assert_eq!(done["data"]["payment"]["adjusted_cost"], amount);
        assert_eq!(done["data"]["payment"]["status"], "ACCEPTED");
    }
    let _ = stop.send(true);
    a.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_and_withdrawals_are_pushed() {
    let app = app().await;
    let (addr, stop) = app.serve().await;
    app.relay(stop.subscribe()).await;
    let (passenger, _) = app.user(Role::Passenger).await;
    let (winner, winner_token) = app.driver().await;
    let (loser, loser_token) = app.driver().await;
    let passenger_token = app
        .state
        .tokens()
        .issue(passenger, Role::Passenger)
        .unwrap()
        .token;
    let (mut p, _) = connect(addr, &passenger_token).await;
    let (mut w, _) = connect(addr, &winner_token).await;
    let (mut l, _) = connect(addr, &loser_token).await;

    let ack = command(
        &mut p,
        "1",
        "finder_update",
        json!({"is_active": true, "pickup": pickup(), "destination": destination()}),
    )
    .await;
    let match_id: domain::MatchId = ack["result"]["match_id"].as_str().unwrap().parse().unwrap();
    app.propose(match_id, &[winner, loser]).await;
    next_of(&mut l, "match_proposal").await;
    next_of(&mut w, "match_proposal").await;
    let ack = command(
        &mut w,
        "2",
        "match_confirm",
        json!({"match_id": match_id, "accepted": true}),
    )
    .await;
    assert_eq!(ack["ok"], true, "{ack}");
    let withdrawn = next_of(&mut l, "match_withdrawn").await;
    assert_eq!(withdrawn["data"]["match_id"], json!(match_id));
    command(
        &mut p,
        "3",
        "match_confirm",
        json!({"match_id": match_id, "accepted": true}),
    )
    .await;
    commands::process::create_rides_once(&app.bus).await.unwrap();
    let ride_id = next_of(&mut p, "ride_pickup").await["data"]["ride_id"].clone();
    let ack = command(
        &mut p,
        "4",
        "ride_cancel",
        json!({"ride_id": ride_id, "reason": "changed my mind"}),
    )
    .await;
    assert_eq!(ack["result"]["status"], "CANCELLED", "{ack}");
    for ws in [&mut p, &mut w] {
        let cancelled = next_of(ws, "ride_cancelled").await;
        assert_eq!(
            cancelled["data"],
            json!({"ride_id": ride_id, "by": "passenger", "reason": "changed my mind"})
        );
    }
    let _ = stop.send(true);
    app.cleanup().await;
}

#[tokio::test]
async fn a_process_going_away_closes_its_sockets_with_1001() {
    let app = app().await;
    let (addr, _stop) = app.serve().await;
    let (_, token) = app.user(Role::Passenger).await;
    let (mut ws, _) = connect(addr, &token).await;
    app.state.registry().close_all();
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return Some(u16::from(frame.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("closed in time");
    assert_eq!(code, Some(1001));
    app.cleanup().await;
}

/// Timeouts are events too: a proposal nobody answers is withdrawn when its round
/// ends, and after the last round the passenger hears that the match expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_proposals_are_withdrawn_and_the_match_expires() {
    let app = app().await;
    let (addr, stop) = app.serve().await;
    app.relay(stop.subscribe()).await;
    let (passenger, _) = app.user(Role::Passenger).await;
    let (driver, driver_token) = app.driver().await;
    let passenger_token = app
        .state
        .tokens()
        .issue(passenger, Role::Passenger)
        .unwrap()
        .token;
    let (mut p, _) = connect(addr, &passenger_token).await;
    let (mut d, _) = connect(addr, &driver_token).await;
    let ack = command(
        &mut p,
        "1",
        "finder_update",
        json!({"is_active": true, "pickup": pickup(), "destination": destination()}),
    )
    .await;
    let match_id = ack["result"]["match_id"].clone();
    app.propose(match_id.as_str().unwrap().parse().unwrap(), &[driver])
        .await;
    next_of(&mut d, "match_proposal").await;
    for _ in 0..3 {
        app.clock.advance(chrono::TimeDelta::seconds(31));
        commands::process::fire_due_deadlines(&app.bus).await.unwrap();
    }
    let withdrawn = next_of(&mut d, "match_withdrawn").await;
    assert_eq!(withdrawn["data"]["match_id"], match_id);
    let expired = next_of(&mut p, "match_expired").await;
    assert_eq!(expired["data"]["match_id"], match_id);
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_no_driver_was_found_for_fails_and_is_pushed() {
    let app = app().await;
    let (addr, stop) = app.serve().await;
    app.relay(stop.subscribe()).await;
    let (_, token) = app.user(Role::Passenger).await;
    let (mut p, _) = connect(addr, &token).await;
    let ack = command(
        &mut p,
        "1",
        "finder_update",
        json!({"is_active": true, "pickup": pickup(), "destination": destination()}),
    )
    .await;
    for _ in 0..3 {
        app.clock.advance(chrono::TimeDelta::seconds(31));
        commands::process::fire_due_deadlines(&app.bus).await.unwrap();
    }
    let failed = next_of(&mut p, "match_failed").await;
    assert_eq!(
        failed["data"],
        json!({"match_id": ack["result"]["match_id"], "reason": "no_driver"})
    );
    // Nothing is open any more.
    drop(p);
    let (_, state) = connect(addr, &token).await;
    assert_eq!(state["data"], json!({"match": null, "ride": null}));
    let _ = stop.send(true);
}
