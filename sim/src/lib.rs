//! # sim
//!
//! A city simulator over real WebSocket connections: drivers log in by OTP, register,
//! go online and drive Manhattan-style grid paths in Jakarta sending pings; passengers
//! request rides near them, confirm, sometimes cancel, decline a payment then pay.
//! Every completed ride's amount, admin fee and payout is checked against an
//! independent computation from the points the driver sent (SPEC §3 Billing).
//! Users reconnect after a close (e.g. 1001 when a process goes away), re-read
//! `session_state` and carry on; a command is resent with the same frame id.

use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// HTTP base URLs of one or more edge processes; clients are spread round-robin.
    pub urls: Vec<String>,
    /// Simulated drivers.
    pub drivers: usize,
    /// Simulated passengers.
    pub passengers: usize,
    /// How long users start new rides; rides in flight are then finished.
    pub duration: Duration,
    /// Seed of every random choice.
    pub seed: u64,
    /// Extra connected clients that only hold a socket and heartbeat.
    pub idle_clients: usize,
    /// JSON lines, one per acknowledged (ok) command.
    pub ack_log: Option<PathBuf>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            urls: vec!["http://127.0.0.1:8080".into()],
            drivers: 20,
            passengers: 20,
            duration: Duration::from_secs(60),
            seed: 1,
            idle_clients: 0,
            ack_log: None,
        }
    }
}

/// A live view of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Seconds since start.
    pub elapsed_s: f64,
    /// Sockets open now.
    pub clients: usize,
    /// Rides completed so far.
    pub rides_completed: u64,
    /// Rides that went wrong so far.
    pub rides_failed: u64,
    /// Commands sent so far.
    pub commands: u64,
    /// Commands per second so far.
    pub commands_per_s: f64,
    /// Ack latency median so far.
    pub ack_p50_ms: f64,
    /// Ack latency 99th percentile so far.
    pub ack_p99_ms: f64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub elapsed_s: f64,
    pub clients_held: usize,
    pub rides_requested: u64,
    pub rides_completed: u64,
    pub rides_cancelled: u64,
    pub rides_unmatched: u64,
    pub rides_failed: u64,
    pub failures: Vec<String>,
    pub declines: u64,
    pub payments_declined_then_paid: u64,
    pub commands: u64,
    pub acks_ok: u64,
    pub acks_err: u64,
    pub ack_p50_ms: f64,
    pub ack_p99_ms: f64,
    pub pushes_received: u64,
    pub reconnects: u64,
    pub errors: Vec<String>,
    pub rides_per_s: f64,
    pub commands_per_s: f64,
}

impl Report {
    /// A short Markdown table of the run.
    pub fn markdown(&self) -> String {
        let mut s = String::from("| metric | value |\n| --- | --- |\n");
        let rows: Vec<(&str, String)> = vec![
            ("clients held (peak sockets)", self.clients_held.to_string()),
            ("rides requested", self.rides_requested.to_string()),
            ("rides completed", self.rides_completed.to_string()),
            ("rides cancelled", self.rides_cancelled.to_string()),
            ("rides unmatched", self.rides_unmatched.to_string()),
            ("rides failed", self.rides_failed.to_string()),
            ("driver declines", self.declines.to_string()),
            (
                "payments declined then paid",
                self.payments_declined_then_paid.to_string(),
            ),
            ("commands", self.commands.to_string()),
            ("acks ok / err", format!("{} / {}", self.acks_ok, self.acks_err)),
            (
                "ack p50 / p99 ms",
                format!("{:.1} / {:.1}", self.ack_p50_ms, self.ack_p99_ms),
            ),
            ("pushes received", self.pushes_received.to_string()),
            ("reconnects", self.reconnects.to_string()),
            ("rides/s", format!("{:.2}", self.rides_per_s)),
            ("commands/s", format!("{:.1}", self.commands_per_s)),
        ];
        for (k, v) in rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        for e in self.failures.iter().chain(&self.errors) {
            s.push_str(&format!("\n- {e}"));
        }
        s
    }
}

const MAX_ERRORS: usize = 20;

#[derive(Debug)]
struct Stats {
    start: Instant,
    clients: AtomicUsize,
    peak: AtomicUsize,
    requested: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    unmatched: AtomicU64,
    failed: AtomicU64,
    declines: AtomicU64,
    declined_then_paid: AtomicU64,
    commands: AtomicU64,
    acks_ok: AtomicU64,
    acks_err: AtomicU64,
    pushes: AtomicU64,
    reconnects: AtomicU64,
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    failures: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
    ack_log: Option<Mutex<std::fs::File>>,
    /// Ride id → (amount, admin fee, payout) computed by its driver from the points sent.
    expected: Mutex<HashMap<String, (i64, i64, i64)>>,
    /// Drivers' current positions, for passengers to request near.
    positions: Mutex<Vec<(f64, f64)>>,
}

impl Stats {
    fn error(&self, message: String) {
        let mut e = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        if e.len() < MAX_ERRORS {
            e.push(message);
        }
    }
    fn fail(&self, reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.len() < MAX_ERRORS {
            f.push(reason);
        }
    }
    fn quantile(&self, q: f64) -> f64 {
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        h.value_at_quantile(q) as f64 / 1000.0
    }
    fn snapshot(&self) -> Snapshot {
        let elapsed = self.start.elapsed().as_secs_f64();
        let commands = self.commands.load(Ordering::Relaxed);
        Snapshot {
            elapsed_s: elapsed,
            clients: self.clients.load(Ordering::Relaxed),
            rides_completed: self.completed.load(Ordering::Relaxed),
            rides_failed: self.failed.load(Ordering::Relaxed),
            commands,
            commands_per_s: commands as f64 / elapsed.max(0.001),
            ack_p50_ms: self.quantile(0.5),
            ack_p99_ms: self.quantile(0.99),
        }
    }
}

/// Runs the simulation and reports; `progress` is called about once a second.
pub async fn run(config: SimConfig, mut progress: impl FnMut(&Snapshot)) -> anyhow::Result<Report> {
    if config.urls.is_empty() {
        bail!("the simulator needs at least one edge URL");
    }
    let ack_log = match &config.ack_log {
        Some(p) => Some(Mutex::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let stats = Arc::new(Stats {
        start: Instant::now(),
        clients: AtomicUsize::new(0),
        peak: AtomicUsize::new(0),
        requested: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        cancelled: AtomicU64::new(0),
        unmatched: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        declines: AtomicU64::new(0),
        declined_then_paid: AtomicU64::new(0),
        commands: AtomicU64::new(0),
        acks_ok: AtomicU64::new(0),
        acks_err: AtomicU64::new(0),
        pushes: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        hist: Mutex::new(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)?),
        failures: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        ack_log,
        expected: Mutex::new(HashMap::new()),
        positions: Mutex::new(Vec::new()),
    });
    let deadline = Instant::now() + config.duration;
    // Per-run MSISDN space so the OTP request limit never bites.
    let run_base: u64 = StdRng::seed_from_u64(config.seed ^ now_nanos()).gen_range(0..9_000_000);
    let mut tasks = tokio::task::JoinSet::new();
    let total = config.drivers + config.passengers + config.idle_clients;
    for i in 0..total {
        let url = config.urls[i % config.urls.len()]
            .trim_end_matches('/')
            .to_owned();
        let stats = stats.clone();
        let seed = config.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let msisdn = format!("0812{:07}", (run_base + i as u64) % 10_000_000);
        let kind = if i < config.drivers {
            Kind::Driver
        } else if i < config.drivers + config.passengers {
            Kind::Passenger
        } else {
            Kind::Idle
        };
        tasks.spawn(async move {
            let result = user(kind, url, msisdn, seed, stats.clone(), deadline).await;
            if let Err(e) = result {
                stats.error(format!("{kind:?}: {e:#}"));
            }
        });
        if i % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                match joined {
                    None => break,
                    Some(Err(e)) => stats.error(format!("a user task ended abnormally: {e}")),
                    Some(Ok(())) => {}
                }
            }
            _ = tick.tick() => progress(&stats.snapshot()),
        }
    }
    progress(&stats.snapshot());
    let elapsed = stats.start.elapsed().as_secs_f64();
    let completed = stats.completed.load(Ordering::Relaxed);
    let commands = stats.commands.load(Ordering::Relaxed);
    let lock = |m: &Mutex<Vec<String>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Report {
        elapsed_s: elapsed,
        clients_held: stats.peak.load(Ordering::Relaxed),
        rides_requested: stats.requested.load(Ordering::Relaxed),
        rides_completed: completed,
        rides_cancelled: stats.cancelled.load(Ordering::Relaxed),
        rides_unmatched: stats.unmatched.load(Ordering::Relaxed),
        rides_failed: stats.failed.load(Ordering::Relaxed),
        failures: lock(&stats.failures),
        declines: stats.declines.load(Ordering::Relaxed),
        payments_declined_then_paid: stats.declined_then_paid.load(Ordering::Relaxed),
        commands,
        acks_ok: stats.acks_ok.load(Ordering::Relaxed),
        acks_err: stats.acks_err.load(Ordering::Relaxed),
        ack_p50_ms: stats.quantile(0.5),
        ack_p99_ms: stats.quantile(0.99),
        pushes_received: stats.pushes.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        errors: lock(&stats.errors),
        rides_per_s: completed as f64 / elapsed.max(0.001),
        commands_per_s: commands as f64 / elapsed.max(0.001),
    })
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Driver,
    Passenger,
    Idle,
}

/// A minimal HTTP/1.1 JSON request (`Connection: close`).
async fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let host = base
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("cannot connect to {host}"))?;
    let body = body.to_string();
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .context("HTTP answer timed out")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").context("malformed HTTP answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status")?;
    let payload = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((status, serde_json::from_str(&payload).unwrap_or(Value::Null)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

async fn login(base: &str, msisdn: &str, driver: Option<&str>) -> anyhow::Result<String> {
    let (status, sent) = http(base, "POST", "/v1/auth/otp", None, &json!({"msisdn": msisdn})).await?;
    if status != 202 {
        bail!("POST /v1/auth/otp → {status} {sent}");
    }
    let otp = sent["dev_otp"]
        .as_str()
        .context("no dev_otp in the answer: the server needs AUTH_DEV_ECHO_OTP=true")?;
    let (status, issued) = http(
        base,
        "POST",
        "/v1/auth/token",
        None,
        &json!({"msisdn": msisdn, "otp": otp}),
    )
    .await?;
    let token = issued["token"]
        .as_str()
        .with_context(|| format!("POST /v1/auth/token → {status} {issued}"))?
        .to_owned();
    let Some(plate) = driver else { return Ok(token) };
    if issued["user"]["role"] == "driver" {
        return Ok(token);
    }
    let (status, registered) = http(
        base,
        "POST",
        "/v1/drivers",
        Some(&token),
        &json!({"vehicle_type": "motorcycle", "vehicle_plate": plate}),
    )
    .await?;
    Ok(registered["token"]
        .as_str()
        .with_context(|| format!("POST /v1/drivers → {status} {registered}"))?
        .to_owned())
}

/// One user's socket: commands with acks, pushes queued, reconnect on close.
struct Conn {
    url: String,
    token: String,
    ws: Option<Ws>,
    pushes: VecDeque<Value>,
    stats: Arc<Stats>,
    next_id: u64,
    user_id: String,
    open: bool,
    /// Set by a reconnect: a command waiting for its ack resends it.
    resend: bool,
}

impl Conn {
    async fn connect(base: &str, token: String, stats: Arc<Stats>) -> anyhow::Result<Self> {
        let url = format!("{}/ws", base.replacen("http://", "ws://", 1));
        let user_id = token_subject(&token).unwrap_or_default();
        let mut conn = Conn {
            url,
            token,
            ws: None,
            pushes: VecDeque::new(),
            stats,
            next_id: 0,
            user_id,
            open: false,
            resend: false,
        };
        conn.reconnect(false).await?;
        // The connect-time `session_state` is empty for a new user.
        conn.pushes.clear();
        Ok(conn)
    }

    /// (Re)opens the socket and queues its `session_state`.
    async fn reconnect(&mut self, counted: bool) -> anyhow::Result<()> {
        self.close_counted();
        let mut last = None;
        for attempt in 0..40u64 {
            let mut request = self.url.as_str().into_client_request()?;
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {}", self.token).parse()?);
            match tokio_tungstenite::connect_async(request).await {
                Ok((ws, _)) => {
                    self.ws = Some(ws);
                    self.open = true;
                    let n = self.stats.clients.fetch_add(1, Ordering::Relaxed) + 1;
                    self.stats.peak.fetch_max(n, Ordering::Relaxed);
                    if counted {
                        self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    // The server's first frame is `session_state`: queue it for the
                    // ride logic and tell a waiting command to resend.
                    if let Some(ws) = self.ws.as_mut() {
                        if let Ok(Some(Ok(Message::Text(text)))) =
                            tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                        {
                            if let Ok(v) = serde_json::from_str::<Value>(text.as_str()) {
                                self.pushes.push_back(v);
                            }
                        }
                    }
                    self.resend = counted;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100 + 50 * attempt.min(20))).await;
        }
        bail!("cannot connect to {}: {:?}", self.url, last)
    }

    fn close_counted(&mut self) {
        if self.open {
            self.open = false;
            self.stats.clients.fetch_sub(1, Ordering::Relaxed);
        }
        self.ws = None;
    }

    /// Reads one text frame; `None` on timeout; reconnects if the socket closed.
    async fn read(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            if self.ws.is_none() {
                self.reconnect(true).await?;
            }
            let Some(ws) = self.ws.as_mut() else { continue };
            let message = match tokio::time::timeout_at(end, ws.next()).await {
                Err(_) => return Ok(None),
                Ok(m) => m,
            };
            match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(text.as_str()) {
                    Ok(v) => return Ok(Some(v)),
                    Err(e) => self.stats.error(format!("unreadable frame: {e}")),
                },
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    self.close_counted();
                    self.reconnect(true).await?;
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// Sends a command and waits for its ack, resending the same id after a reconnect.
    async fn command(&mut self, kind: &str, data: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = format!("{}-{}", self.next_id, now_nanos() % 1_000_000_007);
        let frame = json!({"type": kind, "id": id, "data": data}).to_string();
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..10 {
            if self.ws.is_none() {
                self.reconnect(true).await?;
            }
            let sent = match self.ws.as_mut() {
                Some(ws) => ws.send(Message::text(frame.clone())).await.is_ok(),
                None => false,
            };
            if !sent {
                self.close_counted();
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let frame = self.read(Duration::from_secs(1)).await?;
                if self.resend {
                    self.resend = false;
                    break;
                }
                let Some(frame) = frame else { continue };
                if frame["type"] == "ack" && frame["id"] == id.as_str() {
                    let micros = started.elapsed().as_micros() as u64;
                    if let Ok(mut h) = self.stats.hist.lock() {
                        let _ = h.record(micros.max(1));
                    }
                    if frame["ok"] == true {
                        self.stats.acks_ok.fetch_add(1, Ordering::Relaxed);
                        self.log_ack(&id, kind, &frame);
                    } else {
                        self.stats.acks_err.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(frame);
                }
                if frame["type"] == "error" {
                    self.stats.error(format!("error frame: {frame}"));
                    continue;
                }
                self.stats.pushes.fetch_add(1, Ordering::Relaxed);
                self.pushes.push_back(frame);
            }
        }
        bail!("no ack for {kind} {id}")
    }

    fn log_ack(&self, id: &str, kind: &str, ack: &Value) {
        let Some(log) = &self.stats.ack_log else { return };
        let result = &ack["result"];
        let mut line = json!({"user_id": self.user_id, "frame_id": id, "type": kind});
        if let Some(m) = result.get("match_id") {
            line["match_id"] = m.clone();
        }
        if let (Some(a), true) = (
            result.get("aggregate_id"),
            kind.starts_with("ride_") || kind == "payment_process",
        ) {
            line["ride_id"] = a.clone();
        }
        if let (Some(a), true) = (result.get("aggregate_id"), kind == "match_confirm") {
            line["match_id"] = a.clone();
        }
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// The next push (or `session_state` after a reconnect) within `wait`.
    async fn push(&mut self, wait: Duration) -> anyhow::Result<Option<Value>> {
        if let Some(p) = self.pushes.pop_front() {
            return Ok(Some(p));
        }
        let frame = self.read(wait).await?;
        if let Some(f) = &frame {
            if f["type"] != "session_state" {
                self.stats.pushes.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(frame)
    }

    /// Waits for a push of one of `kinds`; a `session_state` is returned too.
    async fn wait_for(&mut self, kinds: &[&str], wait: Duration) -> anyhow::Result<Option<Value>> {
        let end = Instant::now() + wait;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self.push(left).await? {
                None => return Ok(None),
                Some(f) => {
                    let t = f["type"].as_str().unwrap_or_default();
                    if t == "session_state" || kinds.contains(&t) {
                        return Ok(Some(f));
                    }
                }
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.close_counted();
    }
}

/// The `sub` claim of a JWT (not verified: only for the ack log).
fn token_subject(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url(payload)?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["sub"].as_str().map(str::to_owned)
}

fn base64url(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

// Jakarta service area and a street grid of ~110 m blocks.
const LAT_MIN: f64 = -6.35;
const LAT_MAX: f64 = -6.15;
const LON_MIN: f64 = 106.75;
const LON_MAX: f64 = 106.95;
const STEP: f64 = 0.000_18; // ≈ 20 m per trip point
const RATE: f64 = 3000.0;

/// Haversine distance, R = 6371.0088 km (SPEC §3).
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let r = 6371.0088_f64;
    let (la1, la2) = (a.0.to_radians(), b.0.to_radians());
    let dla = la2 - la1;
    let dlo = (b.1 - a.1).to_radians();
    let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
    2.0 * r * h.sqrt().asin()
}

/// Amount, admin fee and payout of a trip through `points` (factor 1), SPEC §3 Billing.
pub fn expected_bill(points: &[(f64, f64)]) -> (i64, i64, i64) {
    let km: f64 = points.windows(2).map(|w| haversine_km(w[0], w[1])).sum();
    let km = (km * 1000.0).round() / 1000.0;
    let fare = ((km * RATE).round() as i64).clamp(5000, 500_000);
    let admin = fare * 5 / 100;
    (fare, admin, fare - admin)
}

async fn user(
    kind: Kind,
    url: String,
    msisdn: String,
    seed: u64,
    stats: Arc<Stats>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
    match kind {
        Kind::Idle => {
            let token = login(&url, &msisdn, None).await?;
            let mut conn = Conn::connect(&url, token, stats).await?;
            while Instant::now() < deadline {
                if let Some(ws) = conn.ws.as_mut() {
                    if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                        conn.close_counted();
                    }
                }
                let _ = conn
                    .read(Duration::from_secs(10).min(deadline.saturating_duration_since(Instant::now())))
                    .await?;
                conn.pushes.clear();
            }
            Ok(())
        }
        Kind::Driver => {
            // A valid, per-user-unique plate: `B <4 digits> <3 letters>` from the number.
            let tail: Vec<u8> = msisdn
                .bytes()
                .rev()
                .take(7)
                .map(|b| b.wrapping_sub(b'0') % 10)
                .collect();
            let digits: String = tail.iter().take(3).map(|d| char::from(b'0' + d)).collect();
            let letters: String = tail
                .iter()
                .skip(3)
                .take(3)
                .map(|d| char::from(b'A' + d))
                .collect();
            let plate = format!("B 1{digits} {letters}");
            let token = login(&url, &msisdn, Some(&plate)).await?;
            let conn = Conn::connect(&url, token, stats.clone()).await?;
            driver(conn, rng, stats, deadline).await
        }
        Kind::Passenger => {
            // Give drivers time to come online.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let token = login(&url, &msisdn, None).await?;
            let conn = Conn::connect(&url, token, stats.clone()).await?;
            passenger(conn, rng, stats, deadline).await
        }
    }
}

async fn driver(mut conn: Conn, mut rng: StdRng, stats: Arc<Stats>, deadline: Instant) -> anyhow::Result<()> {
    let mut pos = (rng.gen_range(LAT_MIN..LAT_MAX), rng.gen_range(LON_MIN..LON_MAX));
    let slot = {
        let mut p = stats.positions.lock().unwrap_or_else(|e| e.into_inner());
        p.push(pos);
        p.len() - 1
    };
    let mut heading = rng.gen_range(0..4u8);
    // Drive on until well after the deadline so rides in flight finish.
    let stop = deadline + Duration::from_secs(90);
    let mut last_ride = Instant::now();
    while Instant::now() < stop {
        if Instant::now() > deadline && last_ride.elapsed() > Duration::from_secs(30) {
            break;
        }
        if rng.gen_bool(0.2) {
            heading = rng.gen_range(0..4);
        }
        pos = grid_step(pos, heading, 0.001);
        if let Ok(mut p) = stats.positions.lock() {
            p[slot] = pos;
        }
        conn.command(
            "beacon_update",
            json!({"is_active": true, "lat": pos.0, "lon": pos.1}),
        )
        .await?;
        let Some(push) = conn.push(Duration::from_millis(1000)).await? else {
            continue;
        };
        let t = push["type"].as_str().unwrap_or_default().to_owned();
        let (match_id, pickup) = match t.as_str() {
            "match_proposal" => (push["data"]["match_id"].clone(), push["data"]["pickup"].clone()),
            "session_state" if push["data"]["match"]["status"] == "PROPOSED" => (
                push["data"]["match"]["match_id"].clone(),
                push["data"]["match"]["pickup"].clone(),
            ),
            _ => continue,
        };
        if rng.gen_bool(0.15) {
            stats.declines.fetch_add(1, Ordering::Relaxed);
            conn.command("match_confirm", json!({"match_id": match_id, "accepted": false}))
                .await?;
            continue;
        }
        let ack = conn
            .command("match_confirm", json!({"match_id": match_id, "accepted": true}))
            .await?;
        if ack["ok"] != true {
            continue; // already taken, withdrawn or expired: normal competition
        }
        last_ride = Instant::now();
        // Wait for the ride (or the match ending).
        let mut ride_id = Value::Null;
        let end = Instant::now() + Duration::from_secs(100);
        while Instant::now() < end {
            let Some(f) = conn
                .wait_for(
                    &[
                        "ride_pickup",
                        "match_failed",
                        "match_expired",
                        "match_withdrawn",
                        "ride_cancelled",
                    ],
                    Duration::from_secs(5),
                )
                .await?
            else {
                continue;
            };
            match f["type"].as_str().unwrap_or_default() {
                "ride_pickup" => {
                    ride_id = f["data"]["ride_id"].clone();
                    break;
                }
                "session_state" => {
                    if f["data"]["ride"]["ride_id"].is_string() {
                        ride_id = f["data"]["ride"]["ride_id"].clone();
                        break;
                    }
                    if f["data"]["match"].is_null() {
                        break;
                    }
                }
                "match_withdrawn" if f["data"]["match_id"] != match_id => {}
                _ => break,
            }
        }
        if ride_id.is_null() {
            continue;
        }
        drive_ride(&mut conn, &ride_id, &pickup, &mut rng, &stats, &mut pos).await?;
        last_ride = Instant::now();
    }
    Ok(())
}

async fn drive_ride(
    conn: &mut Conn,
    ride_id: &Value,
    pickup: &Value,
    rng: &mut StdRng,
    stats: &Stats,
    pos: &mut (f64, f64),
) -> anyhow::Result<()> {
    let (Some(lat), Some(lon)) = (pickup["lat"].as_f64(), pickup["lon"].as_f64()) else {
        stats.error(format!("ride {ride_id}: pickup without coordinates"));
        return Ok(());
    };
    *pos = (lat, lon);
    conn.command(
        "beacon_update",
        json!({"is_active": true, "lat": lat, "lon": lon}),
    )
    .await?;
    let ack = conn.command("ride_start", json!({"ride_id": ride_id})).await?;
    if ack["ok"] != true {
        // The passenger cancelled first; anything else went wrong.
        if ack["error"]["code"] != "invalid_transition" {
            stats.error(format!("ride_start {ride_id}: {ack}"));
        }
        return Ok(());
    }
    let mut points = vec![*pos];
    let mut heading = rng.gen_range(0..4u8);
    let n = rng.gen_range(8..20);
    for _ in 0..n {
        if rng.gen_bool(0.25) {
            heading = rng.gen_range(0..4);
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        *pos = grid_step(*pos, heading, STEP);
        let recorded = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let ack = conn
            .command(
                "location_update",
                json!({"lat": pos.0, "lon": pos.1, "recorded_at": recorded}),
            )
            .await?;
        if ack["ok"] != true || ack["result"].get("rejected").is_some() {
            stats.error(format!("trip point of {ride_id}: {ack}"));
            return Ok(());
        }
        points.push(*pos);
    }
    let bill = expected_bill(&points);
    if let Ok(mut e) = stats.expected.lock() {
        e.insert(ride_id.as_str().unwrap_or_default().to_owned(), bill);
    }
    let ack = conn.command("ride_arrived", json!({"ride_id": ride_id})).await?;
    if ack["ok"] != true {
        stats.error(format!("ride_arrived {ride_id}: {ack}"));
        return Ok(());
    }
    let _ = conn
        .wait_for(&["ride_completed"], Duration::from_secs(60))
        .await?;
    Ok(())
}

fn grid_step(pos: (f64, f64), heading: u8, step: f64) -> (f64, f64) {
    let (mut lat, mut lon) = pos;
    match heading {
        0 => lat += step,
        1 => lat -= step,
        2 => lon += step,
        _ => lon -= step,
    }
    if !(LAT_MIN..=LAT_MAX).contains(&lat) {
        lat = pos.0 - (lat - pos.0);
    }
    if !(LON_MIN..=LON_MAX).contains(&lon) {
        lon = pos.1 - (lon - pos.1);
    }
    (lat, lon)
}

async fn passenger(
    mut conn: Conn,
    mut rng: StdRng,
    stats: Arc<Stats>,
    deadline: Instant,
) -> anyhow::Result<()> {
    while Instant::now() < deadline {
        let near = {
            let p = stats.positions.lock().unwrap_or_else(|e| e.into_inner());
            if p.is_empty() {
                None
            } else {
                Some(p[rng.gen_range(0..p.len())])
            }
        };
        let Some(near) = near else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let pickup = (
            near.0 + rng.gen_range(-0.003..0.003),
            near.1 + rng.gen_range(-0.003..0.003),
        );
        let dest = (
            (pickup.0 + rng.gen_range(-0.03..0.03)).clamp(LAT_MIN, LAT_MAX),
            (pickup.1 + rng.gen_range(-0.03..0.03)).clamp(LON_MIN, LON_MAX),
        );
        if let Err(e) = one_ride(&mut conn, &mut rng, &stats, pickup, dest).await {
            stats.fail(format!("passenger {}: {e:#}", conn.user_id));
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1500))).await;
    }
    Ok(())
}

async fn one_ride(
    conn: &mut Conn,
    rng: &mut StdRng,
    stats: &Stats,
    pickup: (f64, f64),
    dest: (f64, f64),
) -> anyhow::Result<()> {
    // A `session_state` from an earlier reconnect describes an earlier ride.
    conn.pushes.retain(|f| f["type"] != "session_state");
    let ack = conn
        .command(
            "finder_update",
            json!({"is_active": true, "pickup": {"lat": pickup.0, "lon": pickup.1},
                   "destination": {"lat": dest.0, "lon": dest.1}}),
        )
        .await?;
    if ack["ok"] != true {
        bail!("finder_update refused: {ack}");
    }
    stats.requested.fetch_add(1, Ordering::Relaxed);
    let match_id = ack["result"]["match_id"].clone();
    // Wait for a driver to accept (matching has up to 3 rounds of 30 s).
    let mut accepted = false;
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && !accepted {
        let Some(f) = conn
            .wait_for(
                &["match_accepted", "match_failed", "match_expired"],
                Duration::from_secs(5),
            )
            .await?
        else {
            continue;
        };
        match f["type"].as_str().unwrap_or_default() {
            "match_accepted" if f["data"]["match_id"] == match_id => accepted = true,
            "session_state" => match f["data"]["match"]["status"].as_str() {
                Some("DRIVER_ACCEPTED") => accepted = true,
                Some(_) => {}
                None => {
                    stats.unmatched.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            },
            "match_failed" | "match_expired" if f["data"]["match_id"] == match_id => {
                stats.unmatched.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            _ => {}
        }
    }
    if !accepted {
        bail!("no match_accepted, match_failed or match_expired for {match_id} within 120 s");
    }
    let ack = conn
        .command("match_confirm", json!({"match_id": match_id, "accepted": true}))
        .await?;
    if ack["result"]["status"] != "CONFIRMED" {
        bail!("match_confirm {match_id}: {ack}");
    }
    let ride_id = match wait_ride(conn, &["ride_pickup"], Duration::from_secs(30)).await? {
        Some(f) => f,
        None => bail!("no ride_pickup for match {match_id} within 30 s"),
    };
    if rng.gen_bool(0.1) {
        let ack = conn
            .command(
                "ride_cancel",
                json!({"ride_id": ride_id, "reason": "changed my mind"}),
            )
            .await?;
        if ack["ok"] == true {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if ack["error"]["code"] != "invalid_transition" {
            bail!("ride_cancel {ride_id}: {ack}");
        }
    }
    // Wait for the bill.
    let mut request = None;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end && request.is_none() {
        let Some(f) = conn
            .wait_for(&["payment_request", "ride_cancelled"], Duration::from_secs(5))
            .await?
        else {
            continue;
        };
        match f["type"].as_str().unwrap_or_default() {
            "payment_request" if f["data"]["ride_id"] == ride_id => request = Some(f["data"].clone()),
            "ride_cancelled" if f["data"]["ride_id"] == ride_id => {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            "session_state" if f["data"]["ride"]["status"] == "ARRIVED" => {
                request = Some(f["data"]["ride"].clone());
            }
            "session_state" if f["data"]["ride"].is_null() => {
                bail!("ride {ride_id} vanished from session_state")
            }
            _ => {}
        }
    }
    let Some(request) = request else {
        bail!("no payment_request for ride {ride_id} within 60 s")
    };
    let amount = request["amount"]
        .as_i64()
        .context("payment_request without amount")?;
    let key = ride_id.as_str().unwrap_or_default().to_owned();
    let expected = stats.expected.lock().ok().and_then(|e| e.get(&key).copied());
    let got = (
        amount,
        request["admin_fee"].as_i64().unwrap_or(-1),
        request["driver_payout"].as_i64().unwrap_or(-1),
    );
    if let Some(expected) = expected {
        // Distances are kept to the metre; allow the last rupiah of rounding.
        if (expected.0 - got.0).abs() > 3 || got.1 + got.2 != got.0 || got.1 != got.0 * 5 / 100 {
            bail!("fare mismatch on ride {ride_id}: expected {expected:?}, server said {got:?}");
        }
    }
    let mut declined = false;
    if rng.gen_bool(0.3) {
        let ack = conn
            .command(
                "payment_process",
                json!({"ride_id": ride_id, "amount": amount, "accepted": false}),
            )
            .await?;
        if ack["result"]["status"] != "ARRIVED" {
            bail!("declined payment of {ride_id}: {ack}");
        }
        declined = true;
    }
    let ack = conn
        .command(
            "payment_process",
            json!({"ride_id": ride_id, "amount": amount, "accepted": true}),
        )
        .await?;
    if ack["result"]["status"] != "COMPLETED" {
        bail!("payment of {ride_id}: {ack}");
    }
    if declined {
        stats.declined_then_paid.fetch_add(1, Ordering::Relaxed);
    }
    if conn
        .wait_for(&["ride_completed"], Duration::from_secs(30))
        .await?
        .is_none()
    {
        bail!("no ride_completed for {ride_id} within 30 s");
    }
    stats.completed.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Waits for a ride push (or a session_state naming a ride) and returns the ride id.
async fn wait_ride(conn: &mut Conn, kinds: &[&str], wait: Duration) -> anyhow::Result<Option<Value>> {
    let end = Instant::now() + wait;
    while Instant::now() < end {
        let Some(f) = conn.wait_for(kinds, Duration::from_secs(5)).await? else {
            continue;
        };
        if f["type"] == "session_state" {
            if f["data"]["ride"]["ride_id"].is_string() {
                return Ok(Some(f["data"]["ride"]["ride_id"].clone()));
            }
            continue;
        }
        return Ok(Some(f["data"]["ride_id"].clone()));
    }
    Ok(None)
}
