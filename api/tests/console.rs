//! The operations console (`/console`, `/v1/console/*`), tested as an attacker would
//! try it: every console endpoint refuses no token (401), a forged token (401) and a
//! passenger's or driver's token (403); the live feed cannot be opened without the
//! analyst role, nor with a token in the URL; the page's files carry a strict
//! Content-Security-Policy and hold no secret and no third-party address. And as an
//! analyst uses it: the live snapshot shows the drivers the geo projection indexed and
//! the open rides, a ride's trace is its recorded points, and the audit status shows
//! the last verify run and the signed tree head, or says there is no audit log.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::{AppState, Dependencies};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use commands::clock::Clock;
use commands::ingress::ClientCommand;
use domain::location::Ping;
use domain::{Actor, GeoPoint, Role, UserId};
use http_body_util::BodyExt;
use projections::geo::{GeoIndex, GeoKeys};
use serde_json::Value;
use support::{app, App};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;
use uuid::Uuid;

/// The edge of `app` with a Redis geo index of its own (the test's key prefix).
async fn console_state(app: &App) -> (AppState, GeoIndex) {
    let store_id = migrations::store_id(&app.pool).await.unwrap();
    let clock = app.clock.clone();
    let geo = GeoIndex::new(
        app.state.redis().clone(),
        GeoKeys::new(&app.config.redis_prefix, store_id),
        Duration::from_secs(60),
        Arc::new(move || clock.now()),
    );
    let state = AppState::new(
        app.config.clone(),
        Dependencies {
            pool: app.pool.clone(),
            bus: app.bus.clone(),
            redis: app.state.redis().clone(),
            nats: Some(app.nats.clone()),
            sms: app.sms.clone(),
            clock: app.clock.clone(),
            metrics: None,
            location: None,
            geo: Some(geo.clone()),
            health: Default::default(),
        },
    );
    (state, geo)
}

async fn call(
    state: &AppState,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(Method::GET).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = api::router(state.clone())
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    if headers
        .get("content-type")
        .is_some_and(|c| c.to_str().unwrap_or("").starts_with("text/event-stream"))
    {
        return (status, Value::Null, headers);
    }
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, value, headers)
}

fn ping(driver: UserId, lat: f64, lon: f64, at: chrono::DateTime<chrono::Utc>) -> Ping {
    Ping {
        driver_id: driver,
        point: GeoPoint::new(lat, lon).unwrap(),
        is_active: Some(true),
        at,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_endpoint_refuses_no_token_a_forged_one_and_passengers_and_drivers() {
    let app = app().await;
    let (state, _geo) = console_state(&app).await;
    let (passenger, passenger_token) = app.user(Role::Passenger).await;
    let (driver, driver_token) = app.driver().await;
    let (_, analyst_token) = app.user(Role::Analyst).await;
    let (_, ride) = app.ride_between(passenger, driver).await;
    // A token with the analyst role signed with another secret.
    let forged = api::token::Tokens::new(b"not-the-secret", Duration::from_secs(3600), app.clock.clone())
        .issue(passenger, Role::Analyst)
        .unwrap()
        .token;
    let paths = [
        "/v1/console/live".to_owned(),
        "/v1/console/audit".to_owned(),
        format!("/v1/console/rides/{ride}/trace"),
    ];
    for path in &paths {
        let (status, body, _) = call(&state, path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{path}");
        let (status, _, _) = call(&state, path, Some(&forged)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path} with a forged analyst token"
        );
        for (who, token) in [("passenger", &passenger_token), ("driver", &driver_token)] {
            let (status, body, _) = call(&state, path, Some(token)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} as a {who}: {body}");
            assert_eq!(body["error"]["code"], "forbidden", "{path} as a {who}");
        }
        let (status, body, _) = call(&state, path, Some(&analyst_token)).await;
        assert_eq!(status, StatusCode::OK, "{path} as an analyst: {body}");
    }
    app.cleanup().await;
}

/// A GET over a real socket; returns the status line's code, the head, and the socket
/// positioned at the body.
async fn raw_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String, tokio::net::TcpStream, Vec<u8>) {
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: console\r\nAccept: text/event-stream\r\n{auth}\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed before answering");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, head, socket, buf[end..].to_vec())
}

/// Reads a chunked event stream until its first `snapshot` event; returns its data.
async fn first_snapshot(socket: &mut tokio::net::TcpStream, mut raw: Vec<u8>) -> Value {
    let mut body = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        // De-chunk what has arrived.
        while let Some(line_end) = raw.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..line_end]).trim(), 16).unwrap();
            if raw.len() < line_end + 2 + size + 2 {
                break;
            }
            body.extend_from_slice(&raw[line_end + 2..line_end + 2 + size]);
            raw.drain(..line_end + 2 + size + 2);
        }
        let text = String::from_utf8_lossy(&body).to_string();
        for block in text.split("\n\n") {
            if block.lines().any(|l| l == "event: snapshot") && text.contains(&format!("{block}\n\n")) {
                let data: String = block.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
                return serde_json::from_str(&data).unwrap();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .expect("a snapshot within 10 s")
            .unwrap();
        assert!(n > 0, "the stream ended before a snapshot");
        raw.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(state: AppState) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, api::router(state)).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_opens_only_for_an_analysts_header_and_shows_drivers_and_open_rides() {
    let app = app().await;
    let (state, geo) = console_state(&app).await;
    let (passenger, passenger_token) = app.user(Role::Passenger).await;
    let (free, free_token) = app.driver().await;
    let (taken, _) = app.driver().await;
    let (_, analyst_token) = app.user(Role::Analyst).await;
    let now = app.clock.now();
    geo.apply_pings(&[ping(free, -6.2, 106.8, now), ping(taken, -6.25, 106.85, now)])
        .await
        .unwrap();
    let (_, ride) = app.ride_between(passenger, taken).await;
    app.project().await;
    geo.catch_up(&app.pool).await.unwrap();
    let addr = serve(state).await;

    // Refused: nobody, a passenger, a driver, and an analyst's token in the URL (the
    // console sends it in the header only; a URL ends up in logs and histories).
    let (code, _, _, _) = raw_get(addr, "/v1/console/live", None).await;
    assert_eq!(code, 401);
    let (code, _, _, _) = raw_get(addr, "/v1/console/live", Some(&passenger_token)).await;
    assert_eq!(code, 403);
    let (code, _, _, _) = raw_get(addr, "/v1/console/live", Some(&free_token)).await;
    assert_eq!(code, 403);
    let (code, _, _, _) = raw_get(addr, &format!("/v1/console/live?token={analyst_token}"), None).await;
    assert_eq!(code, 401, "a token in the query string must not open the feed");

    let (code, head, mut socket, rest) = raw_get(addr, "/v1/console/live", Some(&analyst_token)).await;
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let snapshot = first_snapshot(&mut socket, rest).await;
    let drivers = &snapshot["drivers"];
    assert_eq!(drivers["online"], 2, "{snapshot}");
    assert_eq!(drivers["available"], 1, "{snapshot}");
    assert_eq!(drivers["busy"], 1, "{snapshot}");
    let points: Vec<f64> = serde_json::from_value(drivers["points"].clone()).unwrap();
    let mut triples: Vec<[f64; 3]> = points.chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    triples.sort_by(|a, b| a[0].total_cmp(&b[0]));
    assert_eq!(triples, vec![[-6.25, 106.85, 2.0], [-6.2, 106.8, 1.0]]);
    let rides = snapshot["rides"].as_array().unwrap();
    assert_eq!(rides.len(), 1, "{snapshot}");
    assert_eq!(rides[0]["ride_id"], ride.to_string());
    assert_eq!(rides[0]["status"], "PENDING");
    assert_eq!(rides[0]["driver"], serde_json::json!([-6.25, 106.85]));
    assert_eq!(snapshot["service_area"]["min_lon"], 95.0);

    // A completed ride leaves the map; its driver is free again.
    app.complete_ride(ride, passenger, taken).await;
    app.project().await;
    geo.catch_up(&app.pool).await.unwrap();
    let snapshot = api::console::live::snapshot(&app_state_with(&app, &geo))
        .await
        .unwrap();
    assert!(snapshot.rides.is_empty(), "{snapshot:?}");
    assert_eq!(snapshot.drivers.busy, 0, "{snapshot:?}");
    app.cleanup().await;
}

fn app_state_with(app: &App, geo: &GeoIndex) -> AppState {
    AppState::new(
        app.config.clone(),
        Dependencies {
            pool: app.pool.clone(),
            bus: app.bus.clone(),
            redis: app.state.redis().clone(),
            nats: None,
            sms: app.sms.clone(),
            clock: app.clock.clone(),
            metrics: None,
            location: None,
            geo: Some(geo.clone()),
            health: Default::default(),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rides_trace_is_its_start_point_and_its_recorded_and_rejected_points() {
    let app = app().await;
    let (state, _geo) = console_state(&app).await;
    let (passenger, _) = app.user(Role::Passenger).await;
    let (driver, _) = app.driver().await;
    let (_, analyst_token) = app.user(Role::Analyst).await;
    let (_, ride) = app.ride_between(passenger, driver).await;
    let actor = Actor::new(driver, Role::Driver);
    let id = || Some(Uuid::now_v7().to_string());
    let start = support::pickup();
    for command in [
        ClientCommand::BeaconUpdate {
            is_active: true,
            point: start,
        },
        ClientCommand::RideStart { ride_id: ride },
    ] {
        let ack = app.bus.dispatch(actor, id().as_deref(), command).await;
        assert!(ack.ok, "{ack:?}");
    }
    // 600 m north a minute later (billed), then 50 km away a second after (too fast).
    app.clock.advance(chrono::TimeDelta::seconds(60));
    let billed = GeoPoint::new(-6.2 + 0.0054, 106.8).unwrap();
    let far = GeoPoint::new(-6.65, 106.8).unwrap();
    for (point, rejected) in [(billed, false), (far, true)] {
        let ack = app
            .bus
            .dispatch(
                actor,
                id().as_deref(),
                ClientCommand::LocationUpdate {
                    point,
                    accuracy_m: None,
                    recorded_at: None,
                    ride_id: Some(ride),
                },
            )
            .await;
        assert!(ack.ok, "{ack:?}");
        assert_eq!(
            ack.result.as_ref().unwrap().get("rejected").is_some(),
            rejected,
            "{ack:?}"
        );
        app.clock.advance(chrono::TimeDelta::seconds(1));
    }

    let (status, trace, _) = call(
        &state,
        &format!("/v1/console/rides/{ride}/trace"),
        Some(&analyst_token),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{trace}");
    assert_eq!(trace["pickup"], serde_json::json!([-6.2, 106.8]));
    assert_eq!(trace["destination"], serde_json::json!([-6.17, 106.82]));
    let kinds: Vec<&str> = trace["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["start", "recorded", "rejected"], "{trace}");
    let points = trace["points"].as_array().unwrap();
    assert_eq!(points[1]["lat"].as_f64().unwrap(), billed.lat());
    assert!(
        (points[1]["cum_km"].as_f64().unwrap() - 0.6).abs() < 0.01,
        "{trace}"
    );
    assert_eq!(points[2]["reason"], "too_fast");

    // No such ride, or not an id: 404 alike.
    for path in [
        format!("/v1/console/rides/{}/trace", Uuid::now_v7()),
        "/v1/console/rides/x/trace".into(),
    ] {
        let (status, _, _) = call(&state, &path, Some(&analyst_token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_status_shows_the_last_verify_run_and_says_when_there_is_no_audit_log() {
    let app = app().await;
    let (state, _geo) = console_state(&app).await;
    let (_, analyst) = app.user(Role::Analyst).await;
    // Whatever the migrations hold, this database starts without an audit log.
    sqlx::query("DROP TABLE IF EXISTS tree_heads CASCADE")
        .execute(&app.pool)
        .await
        .unwrap();

    let (status, audit, _) = call(&state, "/v1/console/audit", Some(&analyst)).await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert_eq!(audit["verify"], Value::Null);
    assert_eq!(audit["audit_log"], false);
    assert_eq!(audit["tree_head"], Value::Null);

    for (finished, passed, diffs) in [
        ("2026-11-22T07:00:00Z", true, 0),
        ("2026-11-22T07:30:00Z", false, 2),
    ] {
        sqlx::query(
            "INSERT INTO verify_runs (started_at, finished_at, passed, events, aggregates, rides, chain_breaks, \
             row_diffs, unreadable, findings) VALUES ($1::timestamptz - interval '5 seconds', $1::timestamptz, $2, 40, 9, 3, 0, $3, 0, $4)",
        )
        .bind(finished)
        .bind(passed)
        .bind(diffs)
        .bind(serde_json::json!(["DIFFERS ride 1 fare"]))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "CREATE TABLE tree_heads (tree_size bigint PRIMARY KEY, root_hash bytea NOT NULL, timestamp timestamptz NOT NULL, \
         key_id text NOT NULL, signature text NOT NULL)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (_, audit, _) = call(&state, "/v1/console/audit", Some(&analyst)).await;
    assert_eq!(audit["audit_log"], true);
    assert_eq!(audit["tree_head"], Value::Null, "no head signed yet");
    sqlx::query(
        "INSERT INTO tree_heads VALUES (10, decode('ab01', 'hex'), '2026-11-22T07:40:00Z', 'k1', 'c2ln'), \
         (12, decode('cd02', 'hex'), '2026-11-22T07:50:00Z', 'k1', 'c2lnMg==')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let (_, audit, _) = call(&state, "/v1/console/audit", Some(&analyst)).await;
    assert_eq!(audit["verify"]["passed"], false, "the latest run: {audit}");
    assert_eq!(audit["verify"]["row_diffs"], 2);
    assert_eq!(audit["verify"]["findings"][0], "DIFFERS ride 1 fare");
    assert_eq!(audit["tree_head"]["tree_size"], 12, "{audit}");
    assert_eq!(audit["tree_head"]["root_hash"], "cd02");
    assert_eq!(audit["tree_head"]["signature"], "c2lnMg==");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_is_served_with_a_strict_policy_and_holds_no_secret_and_no_third_party() {
    let app = app().await;
    let secret = app.config.jwt_secret.clone();
    let (status, page, headers) = call(&app.state, "/console", None).await;
    assert_eq!(status, StatusCode::OK);
    let page = page.as_str().unwrap().to_owned();
    assert!(page.contains("<canvas id=\"map\""), "the page has the map");
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp} lacks {directive}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert!(
        !page.contains("<script>") && !page.contains(" style="),
        "no inline script or style (the policy forbids them)"
    );

    // Every file the page or a module names is served, with the same headers.
    for asset in api::console::assets::ASSETS {
        let (status, body, headers) = call(&app.state, &format!("/console/{}", asset.name), None).await;
        assert_eq!(status, StatusCode::OK, "{}", asset.name);
        assert_eq!(
            headers["content-security-policy"],
            api::console::assets::CONTENT_SECURITY_POLICY
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["content-type"], asset.content_type, "{}", asset.name);
        let body = body.as_str().unwrap_or_default();
        assert_eq!(body, asset.body);
        for needle in [
            "http://",
            "https://",
            "//cdn",
            secret.as_str(),
            "innerHTML",
            "eval(",
            "localStorage",
        ] {
            assert!(!body.contains(needle), "{} contains {needle:?}", asset.name);
        }
        for import in body
            .split(['"', '\''])
            .filter(|s| s.starts_with("./") || s.starts_with("/console/"))
        {
            let name = import.trim_start_matches("./").trim_start_matches("/console/");
            assert!(
                api::console::assets::ASSETS.iter().any(|a| a.name == name),
                "{} names {import}, which is not served",
                asset.name
            );
        }
    }
    // Only the named files: nothing else of the binary's or the disk's.
    for path in [
        "/console/../Cargo.toml",
        "/console/%2e%2e%2fCargo.toml",
        "/console/secrets.js",
        "/console/index.htm",
    ] {
        let (status, _, _) = call(&app.state, path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    app.cleanup().await;
}
