//! The HTTP endpoints through the router with `oneshot` (no socket): OTP login and its
//! limits, token claims, driver registration, the role checks, the operator endpoints
//! and the generated OpenAPI document. Real PostgreSQL and Redis.

mod support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use domain::{Actor, Role};
use serde_json::{json, Value};
use support::{app, app_with, test_config, App};

async fn request_otp(app: &App, msisdn: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/v1/auth/otp",
        None,
        Some(json!({ "msisdn": msisdn })),
    )
    .await
}

async fn answer(app: &App, msisdn: &str, otp: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/v1/auth/token",
        None,
        Some(json!({ "msisdn": msisdn, "otp": otp })),
    )
    .await
}

fn wrong(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

fn number() -> String {
    format!("0812{:07}", uuid::Uuid::new_v4().as_u128() % 10_000_000)
}

#[tokio::test]
async fn a_code_logs_in_once_and_the_first_login_makes_a_passenger() {
    let app = app().await;
    let msisdn = number();
    let (status, body) = request_otp(&app, &msisdn).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        body.get("dev_otp").is_none(),
        "the code is echoed only with AUTH_DEV_ECHO_OTP"
    );
    let code = app.sms.last().expect("the SMS port got the code");
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));

    let (status, body) = answer(&app, &msisdn, &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["role"], "passenger");
    assert_eq!(body["user"]["msisdn"], format!("62{}", &msisdn[1..]));
    assert!(body["user"]["fullname"].is_null());
    assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));

    // Single use.
    let (status, body) = answer(&app, &msisdn, &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");

    // The token's claims.
    let token = body_token(&app, &msisdn).await;
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&base64url(payload)).unwrap();
    assert_eq!(claims["iss"], "nebengjek");
    assert_eq!(claims["role"], "passenger");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        24 * 3600
    );
    let header: Value = serde_json::from_slice(&base64url(token.split('.').next().unwrap())).unwrap();
    assert_eq!(header["alg"], "HS256");
    // The same user on a second login.
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
    let (status, me) = app.call(Method::GET, "/v1/me", Some(&token), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], claims["sub"]);
    assert!(me["driver"].is_null());
}

/// Logs in again (a new code) and returns the token.
async fn body_token(app: &App, msisdn: &str) -> String {
    let (status, _) = request_otp(app, msisdn).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let code = app.sms.last().unwrap();
    let (status, body) = answer(app, msisdn, &code).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn base64url(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

#[tokio::test]
async fn the_fourth_code_request_within_the_hour_is_rate_limited() {
    let app = app().await;
    let msisdn = number();
    for _ in 0..3 {
        assert_eq!(request_otp(&app, &msisdn).await.0, StatusCode::ACCEPTED);
    }
    let (status, body) = request_otp(&app, &msisdn).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another number is not affected.
    assert_eq!(request_otp(&app, &number()).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn wrong_answers_keep_the_code_until_the_sixth_voids_it() {
    let app = app().await;
    let msisdn = number();
    request_otp(&app, &msisdn).await;
    let code = app.sms.last().unwrap();
    for _ in 0..5 {
        let (status, body) = answer(&app, &msisdn, &wrong(&code)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // Five wrong answers did not use the code up.
    let (status, _) = answer(&app, &msisdn, &code).await;
    assert_eq!(status, StatusCode::OK);

    request_otp(&app, &msisdn).await;
    let code = app.sms.last().unwrap();
    for _ in 0..5 {
        assert_eq!(
            answer(&app, &msisdn, &wrong(&code)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, body) = answer(&app, &msisdn, &wrong(&code)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    // Void: the right code no longer works.
    let (status, _) = answer(&app, &msisdn, &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_code_expires() {
    let mut config = test_config();
    config.otp.ttl = Duration::from_millis(400);
    let app = app_with(config).await;
    let msisdn = number();
    request_otp(&app, &msisdn).await;
    let code = app.sms.last().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, body) = answer(&app, &msisdn, &code).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn dev_echo_returns_the_code_and_bad_numbers_are_validation_failed() {
    let mut config = test_config();
    config.dev_echo_otp = true;
    let app = app_with(config).await;
    let (status, body) = request_otp(&app, "0822-1234-567").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["msisdn"], "628221234567");
    assert_eq!(body["dev_otp"].as_str(), app.sms.last().as_deref());

    for bad in [json!({"msisdn": "08561234567"}), json!({"msisdn": 5}), json!({})] {
        let (status, body) = app
            .call(Method::POST, "/v1/auth/otp", None, Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed", "{bad}");
    }
    let (status, body) = answer(&app, "0822-1234-567", "12ab56").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("validation_failed"))
    );
}

#[tokio::test]
async fn bad_missing_and_expired_tokens_are_401() {
    let app = app().await;
    let (_, token) = app.user(Role::Passenger).await;
    assert_eq!(
        app.call(Method::GET, "/v1/me", Some(&token), None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, "/v1/me", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = app.call(Method::GET, "/v1/me", Some("nonsense"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    app.clock.advance(chrono::TimeDelta::hours(25));
    assert_eq!(
        app.call(Method::GET, "/v1/me", Some(&token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_passenger_becomes_a_driver_once_and_plates_are_unique() {
    let app = app().await;
    let (id, token) = app.user(Role::Passenger).await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/drivers",
            Some(&token),
            Some(json!({"vehicle_type": "CAR", "vehicle_plate": "b1234xyz"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["driver"]["vehicle_type"], "car");
    assert_eq!(body["driver"]["vehicle_plate"], "B 1234 XYZ");
    assert_eq!(body["user"]["role"], "driver");
    let fresh = body["token"].as_str().unwrap();
    assert_eq!(
        app.state.tokens().verify(fresh).unwrap(),
        Actor::new(id, Role::Driver)
    );
    let (_, me) = app.call(Method::GET, "/v1/me", Some(fresh), None).await;
    assert_eq!(me["role"], "driver");
    assert_eq!(me["driver"]["vehicle_plate"], "B 1234 XYZ");

    // Once.
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/drivers",
            Some(fresh),
            Some(json!({"vehicle_type": "van", "vehicle_plate": "D 1 A"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // The same plate, written differently, is taken.
    let (_, other) = app.user(Role::Passenger).await;
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/drivers",
            Some(&other),
            Some(json!({"vehicle_type": "car", "vehicle_plate": "B 1234 xyz"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"]["code"], "plate_taken");
    assert_eq!(app.count("SELECT count(*) FROM drivers").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE role = 'driver'")
            .await,
        1
    );

    for bad in [
        json!({"vehicle_type": "bus", "vehicle_plate": "B 1 A"}),
        json!({"vehicle_type": "car", "vehicle_plate": "12345"}),
        json!({"vehicle_type": "car"}),
    ] {
        let (status, body) = app
            .call(Method::POST, "/v1/drivers", Some(&other), Some(bad.clone()))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "validation_failed");
    }
    let (_, analyst) = app.user(Role::Analyst).await;
    let (status, _) = app
        .call(
            Method::POST,
            "/v1/drivers",
            Some(&analyst),
            Some(json!({"vehicle_type": "car", "vehicle_plate": "F 9 Z"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn analyst_queries_are_for_analysts_only() {
    let app = app().await;
    let (_, passenger) = app.user(Role::Passenger).await;
    let (_, driver) = app.driver().await;
    let (_, analyst) = app.user(Role::Analyst).await;
    for path in [
        "/v1/rides",
        "/v1/billing/ledger",
        "/v1/payments",
        "/v1/analytics/revenue?bucket=hour",
    ] {
        for token in [&passenger, &driver] {
            let (status, body) = app.call(Method::GET, path, Some(token), None).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
            assert_eq!(body["error"]["code"], "forbidden");
        }
        assert_eq!(
            app.call(Method::GET, path, None, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        let (status, body) = app.call(Method::GET, path, Some(&analyst), None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (status, body) = app
        .call(
            Method::GET,
            "/v1/analytics/revenue?bucket=week",
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = app
        .call(Method::GET, "/v1/rides?limit=0", Some(&analyst), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn operator_endpoints_and_the_generated_openapi_document() {
    let app = app().await;
    let (status, body) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"postgres": true, "nats": true, "redis": true, "stalled": [], "stopped": {}})
    );
    // A component that stopped on purpose turns it red, by name and reason.
    app.state.health().stop("relay", "forged tail at position 7");
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["stopped"]["relay"], "forged tail at position 7");
    app.state.health().clear("relay");
    let (status, _) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/auth/otp",
        "/v1/auth/token",
        "/v1/me",
        "/v1/drivers",
        "/v1/rides/{id}",
        "/v1/me/rides",
        "/v1/rides",
        "/v1/billing/ledger",
        "/v1/payments",
        "/v1/analytics/revenue",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} missing from /openapi.json");
    }
    assert!(doc["components"]["schemas"]["TokenResponse"].is_object());
}

#[tokio::test]
async fn operators_create_analysts() {
    let app = app().await;
    let msisdn = domain::msisdn::Msisdn::parse(&number()).unwrap();
    let user = api::users::create_analyst(
        &app.pool,
        &msisdn,
        Some("Ana Lyst"),
        commands::clock::Clock::now(app.clock.as_ref()),
    )
    .await
    .unwrap();
    assert_eq!(user.role, "analyst");
    assert_eq!(user.fullname.as_deref(), Some("Ana Lyst"));
    // Logging in gives an analyst token.
    let token = body_token(&app, msisdn.as_str()).await;
    assert_eq!(app.state.tokens().verify(&token).unwrap().role, Role::Analyst);
}

#[tokio::test]
async fn a_ride_is_read_by_its_participants_and_analysts_and_is_404_to_anyone_else() {
    let app = app().await;
    let (passenger, passenger_token) = app.user(Role::Passenger).await;
    let (driver, driver_token) = app.driver().await;
    let (_, stranger) = app.user(Role::Passenger).await;
    let (_, other_driver) = app.driver().await;
    let (_, analyst) = app.user(Role::Analyst).await;
    let (_, ride) = app.ride_between(passenger, driver).await;
    app.project().await;

    let path = format!("/v1/rides/{ride}");
    for token in [&passenger_token, &driver_token, &analyst] {
        let (status, body) = app.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["ride_id"], json!(ride));
        assert_eq!(body["status"], "PENDING");
        assert_eq!(body["passenger_id"], json!(passenger));
    }
    for token in [&stranger, &other_driver] {
        let (status, body) = app.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let missing = format!("/v1/rides/{}", uuid::Uuid::now_v7());
    assert_eq!(
        app.call(Method::GET, &missing, Some(&analyst), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.call(Method::GET, "/v1/rides/not-a-uuid", Some(&analyst), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Histories.
    let (_, mine) = app
        .call(Method::GET, "/v1/me/rides", Some(&passenger_token), None)
        .await;
    assert_eq!(mine["rides"].as_array().unwrap().len(), 1, "{mine}");
    let (_, theirs) = app.call(Method::GET, "/v1/me/rides", Some(&stranger), None).await;
    assert_eq!(theirs["rides"].as_array().unwrap().len(), 0);

    // The analysts' filters.
    let (_, found) = app
        .call(
            Method::GET,
            &format!("/v1/rides?passenger_id={passenger}&status=pending"),
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(found["rides"].as_array().unwrap().len(), 1, "{found}");
    let (_, none) = app
        .call(
            Method::GET,
            &format!("/v1/rides?driver_id={passenger}"),
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(none["rides"].as_array().unwrap().len(), 0, "{none}");
}

#[tokio::test]
async fn ride_lists_page_with_a_cursor() {
    let app = app().await;
    let (_, analyst) = app.user(Role::Analyst).await;
    let mut rides = Vec::new();
    for _ in 0..3 {
        let (passenger, _) = app.user(Role::Passenger).await;
        let (driver, _) = app.driver().await;
        rides.push(app.ride_between(passenger, driver).await.1);
        app.clock.advance(chrono::TimeDelta::seconds(1));
    }
    app.project().await;
    let (status, first) = app
        .call(Method::GET, "/v1/rides?limit=2", Some(&analyst), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let page: Vec<&Value> = first["rides"].as_array().unwrap().iter().collect();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["ride_id"], json!(rides[2]), "newest first");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .call(
            Method::GET,
            &format!("/v1/rides?limit=2&cursor={cursor}"),
            Some(&analyst),
            None,
        )
        .await;
    let rest = second["rides"].as_array().unwrap();
    assert_eq!(rest.len(), 1, "{second}");
    assert_eq!(rest[0]["ride_id"], json!(rides[0]));
    assert!(second.get("next_cursor").is_none());
    let (status, _) = app
        .call(Method::GET, "/v1/rides?cursor=garbage", Some(&analyst), None)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_websocket_endpoint_asks_for_a_token_before_anything_else() {
    let app = app().await;
    let (status, body) = app.call(Method::GET, "/ws", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (_, token) = app.user(Role::Passenger).await;
    // A valid token on a request that is no upgrade is a client error, not a session.
    let (status, _) = app.call(Method::GET, "/ws", Some(&token), None).await;
    assert!(
        status.is_client_error() && status != StatusCode::UNAUTHORIZED,
        "{status}"
    );
}

#[tokio::test]
async fn analysts_see_the_ledger_payments_and_revenue_of_a_completed_ride() {
    let app = app().await;
    let (_, analyst) = app.user(Role::Analyst).await;
    let (passenger, _) = app.user(Role::Passenger).await;
    let (driver, _) = app.driver().await;
    let (_, ride) = app.ride_between(passenger, driver).await;
    app.complete_ride(ride, passenger, driver).await;
    app.project().await;

    let (status, ledger) = app
        .call(
            Method::GET,
            &format!("/v1/billing/ledger?ride_id={ride}"),
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{ledger}");
    assert_eq!(ledger["total"], 5000, "{ledger}");
    assert_eq!(ledger["entries"][0]["kind"], "minimum_fare");

    let (_, payments) = app
        .call(Method::GET, "/v1/payments?status=accepted", Some(&analyst), None)
        .await;
    let payments = payments["payments"].as_array().unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["ride_id"], json!(ride));
    assert_eq!(
        (&payments[0]["admin_fee"], &payments[0]["driver_payout"]),
        (&json!(250), &json!(4750))
    );

    let (status, revenue) = app
        .call(
            Method::GET,
            "/v1/analytics/revenue?from=2026-11-22T00:00:00Z&to=2026-11-23T00:00:00Z&bucket=hour",
            Some(&analyst),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revenue}");
    let buckets = revenue["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 1, "{revenue}");
    assert_eq!(buckets[0]["bucket_start"], "2026-11-22T08:00:00Z");
    assert_eq!(
        (&buckets[0]["rides"], &buckets[0]["revenue"]),
        (&json!(1), &json!(5000))
    );
    assert_eq!(
        (&buckets[0]["admin_fees"], &buckets[0]["driver_payouts"]),
        (&json!(250), &json!(4750))
    );

    let (_, ride_row) = app
        .call(Method::GET, &format!("/v1/rides/{ride}"), Some(&analyst), None)
        .await;
    assert_eq!(ride_row["status"], "COMPLETED");
    assert_eq!(ride_row["adjusted_fare"], 5000);
}

#[tokio::test]
async fn a_body_that_is_not_json_is_invalid_payload() {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let app = app().await;
    let request = axum::http::Request::post("/v1/auth/otp")
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let response = api::router(app.state.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["error"]["code"], "invalid_payload");
}

/// The limits hold under concurrency: of ten simultaneous requests three get a code,
/// and of five simultaneous right answers one logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limits_hold_when_requests_race() {
    let app = std::sync::Arc::new(app().await);
    let msisdn = number();
    let requests = futures::future::join_all((0..10).map(|_| {
        let (app, msisdn) = (app.clone(), msisdn.clone());
        async move { request_otp(&app, &msisdn).await.0 }
    }))
    .await;
    assert_eq!(
        requests.iter().filter(|s| **s == StatusCode::ACCEPTED).count(),
        3,
        "{requests:?}"
    );
    assert_eq!(
        requests
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        7
    );

    let other = number();
    request_otp(&app, &other).await;
    let code = app.sms.last().unwrap();
    let answers = futures::future::join_all((0..5).map(|_| {
        let (app, other, code) = (app.clone(), other.clone(), code.clone());
        async move { answer(&app, &other, &code).await.0 }
    }))
    .await;
    assert_eq!(
        answers.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{answers:?}"
    );
}
