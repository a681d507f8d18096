//! NATS identity against real processes: a private `nats-server` with the shipped
//! `deploy/nats/nats-server.conf` (users, subject permissions), a `nebengjek serve`
//! connecting as the service user, and a client that connects as the client user.
//!
//! - The client may request `cmd.>`, but a command without a token is `unauthorized`,
//!   one whose body names another actor than its token is `forbidden`, and nothing is
//!   written for either; with the user's token it acts as that user.
//! - The client cannot publish on `events.>` (a forged feed message), touch JetStream,
//!   or read the service's inbox: the server refuses, the stream is unchanged.
//! - Whoever can publish there anyway (here: with the service's own credentials) and
//!   puts a forged message at the stream's end stops the relay: `/readyz` answers 503
//!   naming it and `nebengjek_relay_forged_tail` is 1, instead of the relay resuming
//!   from the forged position.
//! - `OPS_ADDR` moves `/healthz`, `/readyz` and `/metrics` off the public address, and
//!   `/metrics` shows no store id.

mod cluster;

use std::time::{Duration, Instant};

use cluster::{client, nats_as, Cluster, NATS_CLIENT, NATS_SERVICE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One request as the client user; the reply as JSON.
async fn command(nats: &async_nats::Client, subject: &str, token: Option<&str>, body: &Value) -> Value {
    let mut headers = async_nats::HeaderMap::new();
    if let Some(token) = token {
        headers.insert("Authorization", format!("Bearer {token}").as_str());
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        nats.request_with_headers(subject.to_owned(), headers, body.to_string().into()),
    )
    .await
    .expect("a reply in time")
    .expect("a reply");
    serde_json::from_slice(&reply.payload).expect("JSON")
}

/// GET on a port: status and body text.
async fn get(port: u16, path: &str) -> (u16, String) {
    // Not listening yet: status 0.
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

/// Events in the store, and messages in `EVENTS`.
async fn counts(cluster: &Cluster, service: &async_nats::Client) -> (i64, u64) {
    let events = migrations::head_position(cluster.pool()).await.expect("head");
    let messages = async_nats::jetstream::new(service.clone())
        .get_stream("EVENTS")
        .await
        .expect("EVENTS")
        .get_info()
        .await
        .expect("info")
        .state
        .messages;
    (events, messages)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_client_cannot_act_as_another_user_nor_forge_the_event_feed() {
    let Some(mut cluster) = Cluster::start("natsid").await else {
        return;
    };
    cluster.add_node("all");
    tokio::task::block_in_place(|| cluster.start_all());
    let url = cluster.urls()[0].clone();
    let port = cluster.nodes[0].port;
    let (passenger_id, token) = client::login(&url, 1, false).await;
    let (victim_id, victim_token) = client::login(&url, 2, false).await;
    let (nats, mut refusals) = nats_as(&cluster.nats_url(), NATS_CLIENT).await;
    let (service, _) = nats_as(&cluster.nats_url(), NATS_SERVICE).await;
    // The relay has caught up with the logins' events (none are ride events, but the
    // stream exists and is the store's).
    wait_for("EVENTS holds every event", async || {
        let (events, messages) = counts(&cluster, &service).await;
        events as u64 == messages
    })
    .await;
    let before = counts(&cluster, &service).await;

    let data = json!({"pickup": {"lat": -6.2, "lon": 106.8}, "destination": {"lat": -6.17, "lon": 106.82}});
    let envelope = |actor: Option<(&str, &str)>| {
        let mut body = json!({"command_id": uuid::Uuid::now_v7().to_string(), "data": data.clone()});
        if let Some((user_id, role)) = actor {
            body["actor"] = json!({"user_id": user_id, "role": role});
        }
        body
    };
    // No token, even naming the victim: unauthorized.
    let reply = command(
        &nats,
        "cmd.match.request",
        None,
        &envelope(Some((&victim_id, "passenger"))),
    )
    .await;
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");
    // The passenger's token, the victim's name: forbidden.
    let reply = command(
        &nats,
        "cmd.match.request",
        Some(&token),
        &envelope(Some((&victim_id, "passenger"))),
    )
    .await;
    assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
    assert_eq!(
        counts(&cluster, &service).await,
        before,
        "nothing written for a refusal"
    );
    // The passenger's own token: accepted, as the passenger.
    let reply = command(&nats, "cmd.match.request", Some(&token), &envelope(None)).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let (status, rides) = client::http(&url, "GET", "/v1/me", Some(&token), &Value::Null).await;
    assert_eq!((status, rides["id"].as_str()), (200, Some(passenger_id.as_str())));

    // The client account cannot forge the feed: the server refuses the publish.
    wait_for("the relay publishes the match", async || {
        let (events, messages) = counts(&cluster, &service).await;
        events as u64 == messages
    })
    .await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nebengjek-Position", "1000000");
    nats.publish_with_headers("events.ride.created", headers, "{}".into())
        .await
        .expect("queued");
    // Nor delete the stream, nor read the service's inbox.
    let deleted = tokio::time::timeout(
        Duration::from_secs(3),
        nats.request("$JS.API.STREAM.DELETE.EVENTS", "".into()),
    )
    .await;
    assert!(!matches!(deleted, Ok(Ok(_))), "no JetStream API for clients");
    let _snoop = nats.subscribe("_NEBENGJEK_INBOX.>").await;
    nats.flush().await.ok();
    let subjects = [
        "events.ride.created",
        "$JS.API.STREAM.DELETE.EVENTS",
        "_NEBENGJEK_INBOX",
    ];
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !subjects.iter().all(|s| seen.contains(s)) && Instant::now() < deadline {
        if let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(500), refusals.recv()).await {
            seen.push_str(&e);
            seen.push('\n');
        }
    }
    for subject in subjects {
        assert!(
            seen.contains("Permissions Violation") && seen.contains(subject),
            "the server refused {subject}: {seen}"
        );
    }
    // The store may have moved on meanwhile (the match's own follow-ups), but the
    // stream holds exactly the store's events: a forged message would be one more.
    wait_for("the stream to hold exactly the store's events", async || {
        let (events, messages) = counts(&cluster, &service).await;
        events as u64 == messages
    })
    .await;
    assert_eq!(get(port, "/readyz").await.0, 200);

    // With the service's credentials a forgery reaches the stream; the relay then
    // refuses to resume from it at its next batch, loudly.
    let store_id = migrations::store_id(cluster.pool()).await.expect("store id");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nebengjek-Store-Id", store_id.to_string().as_str());
    headers.insert("Nebengjek-Position", "1000000");
    headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
    async_nats::jetstream::new(service.clone())
        .publish_with_headers("events.ride.created", headers, "{}".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    // A new event makes the relay publish, JetStream refuses (the last message is not
    // the one it expects), the relay resumes from the stream's end: the forgery.
    let reply = command(&nats, "cmd.match.request", Some(&victim_token), &envelope(None)).await;
    assert_eq!(reply["ok"], true, "{reply}");
    wait_for("/readyz turns 503 naming the relay", async || {
        let (status, body) = get(port, "/readyz").await;
        status == 503 && body.contains("relay") && body.contains("1000000")
    })
    .await;
    let (_, metrics) = get(port, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("nebengjek_relay_forged_tail") && l.ends_with(" 1")),
        "{metrics}"
    );
    assert!(
        !metrics.contains(&store_id.to_string()),
        "no store id on /metrics"
    );
    let (events, messages) = counts(&cluster, &service).await;
    assert!(
        events as u64 + 1 > messages,
        "the relay published nothing after the forgery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_addr_takes_the_operator_endpoints_off_the_public_address() {
    let Some(mut cluster) = Cluster::start("opsaddr").await else {
        return;
    };
    let ops_port = cluster::free_port();
    cluster
        .env
        .push(("OPS_ADDR".into(), format!("127.0.0.1:{ops_port}")));
    cluster.add_node("all");
    cluster.spawn_node(0);
    let port = cluster.nodes[0].port;
    wait_for("the operators' /readyz", async || {
        get(ops_port, "/readyz").await.0 == 200
    })
    .await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get(port, path).await.0, 404, "{path} is not public");
        assert_eq!(get(ops_port, path).await.0, 200, "{path} on OPS_ADDR");
    }
    // The public API still answers on HTTP_ADDR.
    let (status, _) = get(port, "/openapi.json").await;
    assert_eq!(status, 200);
}
