//! End-to-end test support: the whole system (`nebengjek::startup::start` with
//! `Role::All`: edge, commands, matcher, deadlines, projections, relay) on a fresh
//! migrated database, on port 0, with a JetStream `EVENTS` and `LOCATION` stream, NATS
//! command subjects and Redis keys of the test's own. Clients are real: a small HTTP/1.1
//! client over a `TcpStream` and `tokio-tungstenite` WebSockets. Tests fail, never skip,
//! when PostgreSQL, Redis or NATS is missing.
//!
//! Every wait is a wait for something (a frame, a row) with a deadline, never a sleep
//! in its place.

#![allow(dead_code)]

#[path = "../../../api/tests/schema_check/mod.rs"]
mod schema_check;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use nebengjek::config::Config;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

/// How long a test waits for any one frame or row.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running system and what the test needs to clean up after it.
pub struct Harness {
    pub system: Option<nebengjek::startup::System>,
    pub addr: SocketAddr,
    pub config: Config,
    database: String,
    admin_url: String,
}

fn server_base(url: &str) -> String {
    url.rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_else(|| url.to_owned())
}

/// The configuration of a test's own system: the environment's services, a fresh
/// database name, port 0, streams, subjects and keys of its own, login codes echoed.
pub fn test_config() -> (Config, String) {
    let mut config = Config::from_env().expect("the environment's configuration is valid");
    let run = Uuid::new_v4().simple().to_string()[..12].to_uppercase();
    let database = format!("nebengjek_test_{}", run.to_lowercase());
    config.database_url = format!("{}/{database}", server_base(&config.database_url));
    config.database_max_connections = 10;
    config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.events_stream = format!("E2E_EVENTS_{run}");
    config.events_subject_prefix = format!("e2e_{run}");
    config.location.stream = format!("E2E_LOCATION_{run}");
    config.command_subject_prefix = format!("e2ecmd_{run}.");
    config.redis_key_prefix = format!("e2e:{run}:");
    config.auth_dev_echo_otp = true;
    config.app_env = nebengjek::config::AppEnv::Development;
    config.jwt_secret = Some(format!("e2e-secret-{run}"));
    (config, database)
}

/// Starts the whole system, with `tweak` applied to the test configuration.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Harness {
    start_with(tweak, nebengjek::startup::Ports::default()).await
}

/// [`start`] with the given adapters (a payment provider that fails on demand).
pub async fn start_with(tweak: impl FnOnce(&mut Config), ports: nebengjek::startup::Ports) -> Harness {
    let (mut config, database) = test_config();
    tweak(&mut config);
    let admin_url = format!("{}/postgres", server_base(&config.database_url));
    let mut admin = PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {admin_url} (scripts/services.sh): {e}"));
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let system = nebengjek::startup::start_with(config.clone(), nebengjek::Role::All, ports)
        .await
        .unwrap_or_else(|e| {
            panic!("the system starts (PostgreSQL, NATS with JetStream, Redis running?): {e:#}")
        });
    Harness {
        addr: system.http_addr,
        system: Some(system),
        config,
        database,
        admin_url,
    }
}

impl Harness {
    /// Stops the system and starts it again on the same database, streams and keys (a
    /// deploy or a crash-free restart); clients must reconnect, to the new port.
    pub async fn restart(&mut self) {
        if let Some(system) = self.system.take() {
            system.shutdown().await.expect("a clean shutdown");
        }
        let system = nebengjek::startup::start(self.config.clone(), nebengjek::Role::All)
            .await
            .unwrap_or_else(|e| panic!("the system starts again: {e:#}"));
        self.addr = system.http_addr;
        self.system = Some(system);
    }

    /// Another process of the same deployment (same database, streams and keys) with
    /// `role`, on its own port. The test shuts it down.
    pub async fn another(&self, role: nebengjek::Role) -> nebengjek::startup::System {
        nebengjek::startup::start(self.config.clone(), role)
            .await
            .unwrap_or_else(|e| panic!("a second process starts: {e:#}"))
    }

    /// A WebSocket client of the process at `addr`.
    pub async fn ws_at(&self, addr: SocketAddr, token: &str) -> (Client, Value) {
        let mut request = format!("ws://{addr}/ws")
            .into_client_request()
            .expect("a request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header"),
        );
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the upgrade in time")
            .expect("the upgrade");
        let mut client = Client {
            ws,
            buffer: VecDeque::new(),
            seq: 0,
        };
        let first = client.next_frame().await;
        assert_eq!(first["type"], "session_state", "{first}");
        (client, first["data"].clone())
    }

    /// Stops the system and removes the streams, keys and database of the test.
    pub async fn finish(mut self) {
        if let Some(system) = self.system.take() {
            system.shutdown().await.expect("a clean shutdown");
        }
        cleanup(&self.config, &self.database, &self.admin_url).await;
    }

    /// A connection to the test's database (for set-up only: users go through HTTP).
    pub async fn db(&self) -> PgConnection {
        PgConnection::connect(&self.config.database_url)
            .await
            .expect("connect to the test database")
    }

    /// One HTTP request; the answer's status and JSON body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        http(self.addr, method, path, token, body).await
    }

    /// Logs in by OTP (`POST /v1/auth/otp` with the echoed code, `POST /v1/auth/token`):
    /// the user id and token.
    pub async fn login(&self, msisdn: &str) -> (Uuid, String) {
        let (status, sent) = self
            .http("POST", "/v1/auth/otp", None, Some(json!({ "msisdn": msisdn })))
            .await;
        assert_eq!(status, 202, "{sent}");
        let otp = sent["dev_otp"].as_str().expect("the code is echoed").to_owned();
        let (status, login) = self
            .http(
                "POST",
                "/v1/auth/token",
                None,
                Some(json!({ "msisdn": msisdn, "otp": otp })),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        let id = login["user"]["id"]
            .as_str()
            .expect("a user id")
            .parse()
            .expect("a uuid");
        (id, login["token"].as_str().expect("a token").to_owned())
    }

    /// A new passenger (first login).
    pub async fn passenger(&self) -> (Uuid, String) {
        let (id, token) = self.login(&msisdn()).await;
        let (status, me) = self.http("GET", "/v1/me", Some(&token), None).await;
        assert_eq!((status, me["role"].as_str()), (200, Some("passenger")), "{me}");
        (id, token)
    }

    /// A new user who registers as a driver (`POST /v1/drivers`): id and the new token.
    pub async fn driver(&self, plate: &str) -> (Uuid, String) {
        let (id, token) = self.login(&msisdn()).await;
        let (status, body) = self
            .http(
                "POST",
                "/v1/drivers",
                Some(&token),
                Some(json!({ "vehicle_type": "Car", "vehicle_plate": plate })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["user"]["role"], "driver", "{body}");
        assert_eq!(body["driver"]["vehicle_type"], "car", "{body}");
        (id, body["token"].as_str().expect("a driver token").to_owned())
    }

    /// An analyst, made by the operator's command (`api::users::create_analyst`, what
    /// `nebengjek user create-analyst` runs), who then logs in by OTP.
    pub async fn analyst(&self) -> (Uuid, String) {
        let number = msisdn();
        let pool = sqlx::PgPool::connect(&self.config.database_url)
            .await
            .expect("pool");
        let parsed = domain::msisdn::Msisdn::parse(&number).expect("a valid number");
        api::users::create_analyst(&pool, &parsed, Some("Analyst"), chrono::Utc::now())
            .await
            .expect("create the analyst");
        pool.close().await;
        let (id, token) = self.login(&number).await;
        let (status, me) = self.http("GET", "/v1/me", Some(&token), None).await;
        assert_eq!((status, me["role"].as_str()), (200, Some("analyst")), "{me}");
        (id, token)
    }

    /// Polls `GET path` until `done` holds for the answer (read models are eventually
    /// consistent), within [`WAIT`].
    pub async fn http_until(&self, path: &str, token: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (status, body) = self.http("GET", path, Some(token), None).await;
            if done(status, &body) {
                return body;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "GET {path} never answered as expected; last: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A WebSocket client, after its first frame (`session_state`, returned).
    pub async fn ws(&self, token: &str) -> (Client, Value) {
        self.ws_at(self.addr, token).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // A failed test still leaves no streams, keys or database behind.
        if self.system.is_none() {
            return;
        }
        let (config, database, admin) = (self.config.clone(), self.database.clone(), self.admin_url.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(cleanup(&config, &database, &admin));
        })
        .join();
    }
}

pub async fn cleanup(config: &Config, database: &str, admin_url: &str) {
    if let Ok(client) = async_nats::connect(&config.nats_url).await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(&config.events_stream).await;
        let _ = js.delete_stream(&config.location.stream).await;
    }
    if let Ok(client) = redis::Client::open(config.redis_url.as_str()) {
        if let Ok(mut redis) = client.get_multiplexed_async_connection().await {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", config.redis_key_prefix))
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
            }
        }
    }
    if let Ok(mut admin) = PgConnection::connect(admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

/// A fresh Telkomsel number (`62812` and 7 random digits).
pub fn msisdn() -> String {
    format!("62812{:07}", Uuid::new_v4().as_u128() % 10_000_000)
}

/// A minimal HTTP/1.1 client (`Connection: close`): enough for JSON requests to the
/// system under test without another dependency.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut stream = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send the request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, payload) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
    });
    let payload = if chunked {
        dechunk(payload)
    } else {
        payload.to_owned()
    };
    let value = if payload.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&payload).unwrap_or(Value::String(payload))
    };
    (status, value)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}

/// A WebSocket client that keeps the frames it has read but not yet been asked for, so
/// a push that overtakes an ack (or the reverse) is never lost.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    buffer: VecDeque<Value>,
    seq: u64,
}

impl Client {
    async fn next_frame(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("a frame within {WAIT:?}; unread: {:?}", self.buffer))
                .expect("the socket is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).expect("a JSON frame");
                    schema_check::server_frame(&frame);
                    return frame;
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    /// The first frame (buffered or new) that `wanted` accepts.
    pub async fn frame(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.buffer.iter().position(&wanted) {
            return self.buffer.remove(i).expect("present");
        }
        loop {
            let frame = self.next_frame().await;
            if wanted(&frame) {
                return frame;
            }
            self.buffer.push_back(frame);
        }
    }

    /// The next push of type `kind`; returns its `data`.
    pub async fn push(&mut self, kind: &str) -> Value {
        let frame = self.frame(|f| f["type"] == kind).await;
        assert!(frame.get("id").is_none(), "a push carries no id: {frame}");
        frame["data"].clone()
    }

    /// Pushes of type `kind` buffered so far (consumed).
    pub fn take_buffered(&mut self, kind: &str) -> Vec<Value> {
        let (taken, kept): (Vec<Value>, Vec<Value>) = self.buffer.drain(..).partition(|f| f["type"] == kind);
        self.buffer = kept.into();
        taken.into_iter().map(|f| f["data"].clone()).collect()
    }

    /// Sends a command frame with the given id; returns its ack.
    pub async fn send_as(&mut self, id: &str, kind: &str, data: Value) -> Value {
        let frame = json!({ "type": kind, "id": id, "data": data });
        self.ws
            .send(Message::text(frame.to_string()))
            .await
            .expect("send a frame");
        let id = id.to_owned();
        let ack = self
            .frame(move |f| f["type"] == "ack" && f["id"] == id.as_str())
            .await;
        schema_check::client_frame(&frame, &ack);
        ack
    }

    /// Sends a command with a fresh id; returns its ack.
    pub async fn send(&mut self, kind: &str, data: Value) -> Value {
        self.seq += 1;
        let id = format!("{kind}-{}-{}", self.seq, Uuid::now_v7().simple());
        self.send_as(&id, kind, data).await
    }

    /// Sends a command that must succeed; returns its `result`.
    pub async fn ok(&mut self, kind: &str, data: Value) -> Value {
        let ack = self.send(kind, data.clone()).await;
        assert_eq!(ack["ok"], true, "{kind} {data} was refused: {ack}");
        ack["result"].clone()
    }

    /// Sends a command that must be refused with `code`.
    pub async fn refused(&mut self, kind: &str, data: Value, code: &str) {
        let ack = self.send(kind, data.clone()).await;
        assert_eq!(
            (&ack["ok"], ack["error"]["code"].as_str()),
            (&json!(false), Some(code)),
            "{kind} {data}: {ack}"
        );
    }

    /// Closes the socket (the client goes away).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Haversine distance in metres, R = 6371.0088 km (SPEC §3 Billing), computed here
/// independently of the domain crate.
pub fn haversine_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    const R_KM: f64 = 6371.0088;
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h =
        ((lat2 - lat1) / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * R_KM * h.sqrt().asin() * 1000.0
}

/// `{lat, lon}`.
pub fn point(p: (f64, f64)) -> Value {
    json!({ "lat": p.0, "lon": p.1 })
}
