//! A small city of apps for the process tests: users log in over HTTP (development
//! OTP echo), hold a WebSocket to one of the edge processes, and drive rides. A socket
//! that closes (its process was killed) is reopened on the next process in turn and the
//! unanswered frame is resent with the same id, as a real app does; every answered frame
//! is recorded in the ack log the tests check against the event store.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// One acknowledged command frame.
#[derive(Debug, Clone)]
pub struct AckRecord {
    /// Who sent it.
    pub user_id: String,
    /// The frame id.
    pub frame_id: String,
    /// The frame type.
    pub kind: String,
    /// The ack's `ok`.
    pub ok: bool,
    /// The ack's `result` or `error`.
    pub body: Value,
}

/// Every ack of a run, shared by the apps.
pub type AckLog = Arc<Mutex<Vec<AckRecord>>>;

/// A minimal HTTP/1.1 JSON request; `(status, body)`.
pub async fn http(base: &str, method: &str, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let body = body.to_string();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw);
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// A logged-in user: `(user_id, token)`. `n` makes the MSISDN unique in the run.
pub async fn login(base: &str, n: u32, driver: bool) -> (String, String) {
    let msisdn = format!("62812{:07}", n);
    let (status, otp) = http(base, "POST", "/v1/auth/otp", None, &json!({ "msisdn": msisdn })).await;
    assert_eq!(status, 202, "otp: {otp}");
    let (status, login) = http(
        base,
        "POST",
        "/v1/auth/token",
        None,
        &json!({ "msisdn": msisdn, "otp": otp["dev_otp"] }),
    )
    .await;
    assert_eq!(status, 200, "token: {login}");
    let id = login["user"]["id"].as_str().expect("user id").to_owned();
    let mut token = login["token"].as_str().expect("token").to_owned();
    if driver {
        let plate = format!("B {} XY", 1000 + n % 9000);
        let (status, became) = http(
            base,
            "POST",
            "/v1/drivers",
            Some(&token),
            &json!({ "vehicle_type": "car", "vehicle_plate": plate }),
        )
        .await;
        assert!(status == 200 || status == 201, "driver: {status} {became}");
        token = became["token"].as_str().expect("driver token").to_owned();
    }
    (id, token)
}

/// One app's WebSocket, reopened as needed.
pub struct App {
    /// The user.
    pub user_id: String,
    token: String,
    urls: Vec<String>,
    next_url: usize,
    socket: Option<Socket>,
    /// Pushes received and not yet taken (including `session_state`).
    pub pushes: Vec<Value>,
    /// Every push ever received, by type.
    pub seen: Vec<String>,
    frames: u64,
    log: AckLog,
    /// Sockets opened (1 + reconnects).
    pub connects: usize,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl App {
    /// An app on `urls`, starting with `urls[first % len]`.
    pub fn new(user_id: String, token: String, urls: Vec<String>, first: usize, log: AckLog) -> App {
        App {
            user_id,
            token,
            next_url: first % urls.len(),
            urls,
            socket: None,
            pushes: Vec::new(),
            seen: Vec::new(),
            frames: 0,
            log,
            connects: 0,
        }
    }

    async fn connect(&mut self, deadline: Instant) {
        while self.socket.is_none() {
            assert!(
                Instant::now() < deadline,
                "{}: no edge process accepted a socket",
                self.user_id
            );
            let base = &self.urls[self.next_url];
            self.next_url = (self.next_url + 1) % self.urls.len();
            let url = format!("{}/ws", base.replace("http://", "ws://"));
            let mut request = url.into_client_request().expect("ws url");
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {}", self.token).parse().expect("header"),
            );
            match tokio::time::timeout(Duration::from_secs(3), tokio_tungstenite::connect_async(request))
                .await
            {
                Ok(Ok((socket, _))) => {
                    self.socket = Some(socket);
                    self.connects += 1;
                }
                // The process is down or restarting: try the next one shortly.
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Reads one frame (reconnecting if the socket is gone); `None` on timeout.
    async fn read(&mut self, until: Instant, deadline: Instant) -> Option<Value> {
        loop {
            self.connect(deadline).await;
            let socket = self.socket.as_mut().expect("socket");
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, socket.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    let frame: Value = serde_json::from_str(text.as_str()).expect("JSON frame");
                    super::schema_check::server_frame(&frame);
                    return Some(frame);
                }
                Ok(Some(Ok(
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) | Message::Binary(_),
                ))) => {}
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => {
                    self.socket = None;
                    return Some(json!({"type": "_disconnected"}));
                }
            }
        }
    }

    /// Sends a command frame and waits for its ack, reconnecting and resending the
    /// same frame id until `deadline`. Returns the ack.
    pub async fn command(&mut self, kind: &str, data: Value, deadline: Instant) -> Value {
        self.frames += 1;
        let id = format!("f{}", self.frames);
        let sent = json!({ "type": kind, "id": id, "data": data });
        let frame = sent.to_string();
        'send: loop {
            self.connect(deadline).await;
            let socket = self.socket.as_mut().expect("socket");
            if socket.send(Message::Text(frame.clone().into())).await.is_err() {
                self.socket = None;
                continue;
            }
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{}: no ack for {kind} {id}",
                    self.user_id
                );
                let Some(reply) = self.read(deadline, deadline).await else {
                    continue;
                };
                match reply["type"].as_str() {
                    Some("_disconnected") => continue 'send,
                    Some("ack") if reply["id"] == id => {
                        let ok = reply["ok"] == true;
                        let body = if ok {
                            reply["result"].clone()
                        } else {
                            reply["error"].clone()
                        };
                        self.log.lock().unwrap().push(AckRecord {
                            user_id: self.user_id.clone(),
                            frame_id: id.clone(),
                            kind: kind.to_owned(),
                            ok,
                            body,
                        });
                        super::schema_check::client_frame(&sent, &reply);
                        return reply;
                    }
                    Some(_) => self.keep(reply),
                    None => panic!("frame without a type: {reply}"),
                }
            }
        }
    }

    fn keep(&mut self, push: Value) {
        if let Some(kind) = push["type"].as_str() {
            self.seen.push(kind.to_owned());
        }
        self.pushes.push(push);
    }

    /// Waits up to `wait` for a push of `kind` whose `data` satisfies `pred`
    /// (reconnecting as needed); takes it.
    pub async fn push(
        &mut self,
        kind: &str,
        wait: Duration,
        deadline: Instant,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let until = (Instant::now() + wait).min(deadline);
        loop {
            if let Some(i) = self
                .pushes
                .iter()
                .position(|p| p["type"] == kind && pred(&p["data"]))
            {
                return Some(self.pushes.remove(i));
            }
            if Instant::now() >= until {
                return None;
            }
            match self.read(until, deadline).await {
                None => return None,
                Some(frame) if frame["type"] == "_disconnected" => {}
                Some(frame) => self.keep(frame),
            }
        }
    }
}

/// A driver and a passenger who ride together somewhere of their own.
#[derive(Debug)]
pub struct Pair {
    /// The driver's app.
    pub driver: App,
    /// The passenger's app.
    pub passenger: App,
    /// Their pickup (far from every other pair's: no cross-matching).
    pub pickup: (f64, f64),
}

/// How strictly a ride checks pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushes {
    /// Every push must arrive (nothing is killed).
    Required,
    /// Pushes may be missed while a process is down: the apps fall back to the
    /// commands' answers and to the store.
    BestEffort,
}

fn point(lat: f64, lon: f64) -> Value {
    json!({ "lat": lat, "lon": lon })
}

fn id_of(v: &Value, field: &str) -> impl Fn(&Value) -> bool {
    let want = v.clone();
    let field = field.to_owned();
    move |d: &Value| d[&field] == want
}

/// Drives one ride to `COMPLETED` (retrying a match that expired or failed under
/// [`Pushes::BestEffort`]); returns the ride id.
pub async fn ride(pair: &mut Pair, pool: &sqlx::PgPool, mode: Pushes, deadline: Instant) -> String {
    let strict = mode == Pushes::Required;
    let wait = if strict {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(3)
    };
    let (lat, lon) = pair.pickup;
    let destination = point(lat + 0.02, lon + 0.02);
    let (d, p) = (&mut pair.driver, &mut pair.passenger);
    // Match: request, the driver accepts, the passenger confirms.
    let (match_id, ride_id) = 'matching: loop {
        assert!(Instant::now() < deadline, "no match for {} in time", p.user_id);
        positions(d, p, (lat, lon), deadline).await;
        let ack = p
            .command(
                "finder_update",
                json!({"is_active": true, "pickup": point(lat, lon), "destination": destination}),
                deadline,
            )
            .await;
        let match_id = if ack["ok"] == true {
            ack["result"]["match_id"].clone()
        } else {
            assert_eq!(ack["error"]["code"], "already_active", "finder_update: {ack}");
            // An earlier request of ours is still open (its ack was lost with a process).
            let open: Option<uuid::Uuid> = sqlx::query_scalar(
                "SELECT aggregate_id FROM participant_reservations WHERE user_id = $1 AND aggregate_type = 'match'",
            )
            .bind(uuid::Uuid::parse_str(&p.user_id).unwrap())
            .fetch_optional(pool)
            .await
            .unwrap();
            match open {
                Some(id) => json!(id.to_string()),
                None => continue 'matching,
            }
        };
        let proposal = d
            .push("match_proposal", wait, deadline, id_of(&match_id, "match_id"))
            .await;
        assert!(
            !strict || proposal.is_some(),
            "{}: no match_proposal for {match_id}",
            d.user_id
        );
        // Accept; before the matcher proposed, the driver is not a candidate yet.
        loop {
            let ack = d
                .command(
                    "match_confirm",
                    json!({"match_id": match_id, "accepted": true}),
                    deadline,
                )
                .await;
            if ack["ok"] == true {
                break;
            }
            match ack["error"]["code"].as_str() {
                Some("forbidden" | "invalid_transition")
                    if match_status(pool, &match_id).await.as_deref() != Some("ended") =>
                {
                    assert!(!strict, "accept refused after the proposal: {ack}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    assert!(!strict, "accept refused: {ack}");
                    continue 'matching;
                }
            }
        }
        let accepted = p
            .push("match_accepted", wait, deadline, id_of(&match_id, "match_id"))
            .await;
        assert!(!strict || accepted.is_some(), "{}: no match_accepted", p.user_id);
        let ack = p
            .command(
                "match_confirm",
                json!({"match_id": match_id, "accepted": true}),
                deadline,
            )
            .await;
        if ack["ok"] != true {
            assert!(!strict, "confirm refused: {ack}");
            continue 'matching;
        }
        let confirmed = p
            .push("match_confirmed", wait, deadline, id_of(&match_id, "match_id"))
            .await;
        let confirmed_d = d
            .push("match_confirmed", wait, deadline, id_of(&match_id, "match_id"))
            .await;
        assert!(
            !strict || (confirmed.is_some() && confirmed_d.is_some()),
            "no match_confirmed to both"
        );
        let ride_id = match confirmed.or(confirmed_d) {
            Some(push) => push["data"]["ride_id"].clone(),
            None => json!(ride_of(pool, &match_id, deadline).await),
        };
        break (match_id, ride_id);
    };
    let _ = match_id;
    // The ride: start, a short trip, arrive, pay.
    loop {
        let ack = d
            .command("ride_start", json!({"ride_id": ride_id}), deadline)
            .await;
        if ack["ok"] == true {
            break;
        }
        match ack["error"]["code"].as_str() {
            // The ride is created by the process manager just after the confirmation.
            Some("not_found") => {}
            // Positions live in Redis: a flushed Redis forgets them until the next ping.
            Some("too_far") if !strict => positions(d, p, (lat, lon), deadline).await,
            _ => panic!("ride_start: {ack}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if strict {
        for app in [&mut *p, &mut *d] {
            let started = app
                .push("ride_started", wait, deadline, id_of(&ride_id, "ride_id"))
                .await;
            assert!(started.is_some(), "{}: no ride_started", app.user_id);
        }
    }
    // Each ride's trip points lie on a line of their own (0.0001° ≈ 11 m of longitude
    // per frame the driver has sent, so ≥ 55 m between rides): the ride's start point
    // is the driver's last known position, which may still be an earlier ride's last
    // trip point, and a point within 10 m of it would be jitter (no event, by design).
    let lane = lon + 0.0001 * d.frames as f64;
    for step in 1..=3 {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let trip = json!({"lat": lat + 0.0003 * f64::from(step), "lon": lane, "recorded_at": at});
        let ack = d.command("location_update", trip, deadline).await;
        assert_eq!(ack["ok"], true, "trip point: {ack}");
    }
    let ack = d
        .command("ride_arrived", json!({"ride_id": ride_id}), deadline)
        .await;
    assert_eq!(ack["ok"], true, "ride_arrived: {ack}");
    let request = p
        .push("payment_request", wait, deadline, id_of(&ride_id, "ride_id"))
        .await;
    assert!(!strict || request.is_some(), "{}: no payment_request", p.user_id);
    let amount = match request {
        Some(push) => push["data"]["amount"].clone(),
        None => json!(fare_of(pool, &ride_id, deadline).await),
    };
    let ack = p
        .command(
            "payment_process",
            json!({"ride_id": ride_id, "amount": amount, "accepted": true}),
            deadline,
        )
        .await;
    assert_eq!(ack["ok"], true, "payment_process: {ack}");
    assert_eq!(ack["result"]["status"], "COMPLETED", "payment_process: {ack}");
    if strict {
        for app in [&mut *p, &mut *d] {
            let done = app
                .push("ride_completed", wait, deadline, |d| {
                    d["ride"]["ride_id"].is_string()
                })
                .await;
            assert!(done.is_some(), "{}: no ride_completed", app.user_id);
        }
    }
    ride_id.as_str().expect("ride id").to_owned()
}

/// The driver online at the pickup, the passenger there too.
async fn positions(d: &mut App, p: &mut App, (lat, lon): (f64, f64), deadline: Instant) {
    let ack = d
        .command(
            "beacon_update",
            json!({"is_active": true, "lat": lat, "lon": lon}),
            deadline,
        )
        .await;
    assert_eq!(ack["ok"], true, "beacon: {ack}");
    let ack = p.command("location_update", point(lat, lon), deadline).await;
    assert_eq!(ack["ok"], true, "passenger position: {ack}");
}

/// `"open"` or `"ended"` (or `None`: no such match yet) from the match's events.
async fn match_status(pool: &sqlx::PgPool, match_id: &Value) -> Option<String> {
    let id = uuid::Uuid::parse_str(match_id.as_str()?).ok()?;
    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'match' AND aggregate_id = $1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .ok()?;
    if types.is_empty() {
        return None;
    }
    let ended = types
        .iter()
        .any(|t| ["expired", "failed", "cancelled"].contains(&t.as_str()));
    Some(if ended { "ended" } else { "open" }.into())
}

/// The ride a confirmed match created, from the store (polled).
async fn ride_of(pool: &sqlx::PgPool, match_id: &Value, deadline: Instant) -> String {
    let id = uuid::Uuid::parse_str(match_id.as_str().expect("match id")).unwrap();
    loop {
        let ride: Option<String> = sqlx::query_scalar(
            "SELECT payload->>'ride_id' FROM events WHERE aggregate_type = 'match' AND aggregate_id = $1 AND event_type = 'confirmed'",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
        .flatten();
        if let Some(ride) = ride {
            return ride;
        }
        assert!(Instant::now() < deadline, "no ride for match {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The amount due on an arrived ride, from the store (polled).
async fn fare_of(pool: &sqlx::PgPool, ride_id: &Value, deadline: Instant) -> i64 {
    let id = uuid::Uuid::parse_str(ride_id.as_str().expect("ride id")).unwrap();
    loop {
        let payload: Option<Value> = sqlx::query_scalar(
            "SELECT payload FROM events WHERE aggregate_type = 'ride' AND aggregate_id = $1 AND event_type = 'arrived'",
        )
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap();
        if let Some(amount) = payload.as_ref().and_then(amount_in) {
            return amount;
        }
        assert!(Instant::now() < deadline, "no arrival for ride {id}: {payload:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn amount_in(payload: &Value) -> Option<i64> {
    ["adjusted_fare", "amount", "adjusted"]
        .iter()
        .find_map(|k| payload[*k].as_i64())
}
