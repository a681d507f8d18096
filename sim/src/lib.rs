//! # sim
//!
//! A city simulator over real WebSocket connections: drivers log in by OTP, register,
//! go online and drive Manhattan-style grid paths in Jakarta sending pings; passengers
//! request rides near them, confirm, sometimes cancel, decline a payment then pay.
//! Every completed ride's amount, admin fee and payout is checked against an
//! independent computation from the points the driver sent (SPEC §3 Billing).
//! Users reconnect after a close (e.g. 1001 when a process goes away), re-read
//! `session_state` and carry on; a command is resent with the same frame id.
//!
//! ## Phases
//! A run has a **ramp** and a **measuring window**. During the ramp every user logs in
//! (`POST /v1/auth/otp`, `POST /v1/auth/token`, drivers `POST /v1/drivers`) and opens
//! its socket, at most [`SimConfig::login_concurrency`] at a time; active users start
//! riding as soon as they are connected. The window opens when the last user has
//! connected (or given up) and lasts [`SimConfig::duration`]; new rides start only
//! until it closes, rides in flight then finish. The headline numbers of the
//! [`Report`] are the window's: commands *sent* inside it (over sockets already open)
//! and their ack latency, measured in the client from writing the frame to reading its
//! ack, whenever that ack arrives. The ramp's commands and the logins are reported
//! apart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
    /// Logins (and first connects) in flight at once during the ramp.
    pub login_concurrency: usize,
    /// The longest ramp: the window opens after this even if users are still logging in.
    pub ramp_timeout: Duration,
    /// End the run close to the window's end (the demo): no new ride starts in the
    /// window's last third (at most [`RIDE_BUDGET`]), a passenger still waiting for a
    /// driver when the window closes cancels the match, and drivers go home as soon as
    /// they have no ride. Without it (a measured load run) every ride started in the
    /// window is given time to finish.
    pub wind_down: bool,
}

/// About how long one simulated ride takes from request to payment.
pub const RIDE_BUDGET: Duration = Duration::from_secs(12);

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
            login_concurrency: 64,
            ramp_timeout: Duration::from_secs(600),
            wind_down: false,
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
    /// Whether the measuring window has opened.
    pub measuring: bool,
    /// Ack latency median so far, of the current phase (ramp, then window).
    pub ack_p50_ms: f64,
    /// Ack latency 99th percentile so far, of the current phase.
    pub ack_p99_ms: f64,
    /// `ramp`, `window`, or `finishing` (the window closed; rides in flight end).
    pub phase: &'static str,
    /// Passengers' rides between request and completion (or giving up) now.
    pub rides_in_flight: u64,
}

/// One second (one progress tick) of the run: the chart of `nebengjek load --report`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since start, at the end of the interval.
    pub t_s: f64,
    /// Commands sent in the interval, per second.
    pub commands_per_s: f64,
    /// Acks read in the interval.
    pub acks: u64,
    /// Ack latency of the acks read in the interval (0 when none).
    pub ack_p50_ms: f64,
    /// The same, 99th percentile.
    pub ack_p99_ms: f64,
    /// Sockets open at the end of the interval.
    pub clients: usize,
    /// The phase at the end of the interval.
    pub phase: &'static str,
}

/// Latency quantiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
    fn cell(&self) -> String {
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1}",
            self.p50_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

/// The measuring window: from the moment every user had logged in and connected, for
/// the configured duration.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// Seconds from the start of the run to the window's opening (the ramp).
    pub opened_after_s: f64,
    /// Its length.
    pub duration_s: f64,
    /// Fewest sockets open at any moment of the window.
    pub clients_min: usize,
    /// Most sockets open at any moment of the window.
    pub clients_max: usize,
    /// Commands sent inside the window.
    pub commands: u64,
    pub commands_per_s: f64,
    pub acks_ok: u64,
    pub acks_err: u64,
    /// Commands sent inside the window that never got an ack.
    pub unacked: u64,
    /// Ack latency of the commands sent inside the window.
    pub ack: Latency,
    /// The same, per command type.
    pub ack_by_type: BTreeMap<String, Latency>,
    /// Rides whose `ride_completed` arrived inside the window.
    pub rides_completed: u64,
    pub rides_per_s: f64,
    /// Socket reconnects inside the window.
    pub reconnects: u64,
}

/// The outcome of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub elapsed_s: f64,
    /// The measuring window: the headline numbers.
    pub window: Window,
    /// Users that logged in and connected during the ramp, of all users.
    pub logins_ok: u64,
    pub users: u64,
    /// One user's login (OTP request, token, driver registration) and first connect up
    /// to its `session_state`, not counting the wait for a login slot.
    pub login: Latency,
    /// Ack latency of the commands sent during the ramp.
    pub ramp_ack: Latency,
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
    pub pushes_received: u64,
    pub reconnects: u64,
    pub errors: Vec<String>,
    /// All errors (only the first are kept in `errors`).
    pub errors_total: u64,
    pub rides_per_s: f64,
    pub commands_per_s: f64,
    /// Per second: commands/s and the ack latency of that second.
    pub timeline: Vec<Sample>,
}

impl Report {
    /// A short Markdown table of the run.
    pub fn markdown(&self) -> String {
        let w = &self.window;
        let mut s = String::from("| metric | value |\n| --- | --- |\n");
        let rows: Vec<(&str, String)> = vec![
            (
                "ramp: users logged in and connected",
                format!(
                    "{} of {} in {:.1} s",
                    self.logins_ok, self.users, w.opened_after_s
                ),
            ),
            (
                "ramp: login + connect p50 / p99 / p99.9 / max ms",
                self.login.cell(),
            ),
            (
                "ramp: ack p50 / p99 / p99.9 / max ms",
                format!("{} ({} commands)", self.ramp_ack.cell(), self.ramp_ack.count),
            ),
            ("window: length s", format!("{:.1}", w.duration_s)),
            (
                "window: sockets open (min / max)",
                format!("{} / {}", w.clients_min, w.clients_max),
            ),
            (
                "window: commands sent (per s)",
                format!("{} ({:.1}/s)", w.commands, w.commands_per_s),
            ),
            (
                "window: acks ok / err / none",
                format!("{} / {} / {}", w.acks_ok, w.acks_err, w.unacked),
            ),
            ("window: ack p50 / p99 / p99.9 / max ms", w.ack.cell()),
            (
                "window: rides completed (per s)",
                format!("{} ({:.2}/s)", w.rides_completed, w.rides_per_s),
            ),
            ("window: reconnects", w.reconnects.to_string()),
            (
                "whole run: clients held (peak sockets)",
                self.clients_held.to_string(),
            ),
            ("whole run: rides requested", self.rides_requested.to_string()),
            ("whole run: rides completed", self.rides_completed.to_string()),
            ("whole run: rides cancelled", self.rides_cancelled.to_string()),
            ("whole run: rides unmatched", self.rides_unmatched.to_string()),
            ("whole run: rides failed", self.rides_failed.to_string()),
            ("whole run: driver declines", self.declines.to_string()),
            (
                "whole run: payments declined then paid",
                self.payments_declined_then_paid.to_string(),
            ),
            ("whole run: commands", self.commands.to_string()),
            (
                "whole run: acks ok / err",
                format!("{} / {}", self.acks_ok, self.acks_err),
            ),
            ("whole run: pushes received", self.pushes_received.to_string()),
            ("whole run: reconnects", self.reconnects.to_string()),
            ("whole run: errors", self.errors_total.to_string()),
            ("whole run: rides/s", format!("{:.2}", self.rides_per_s)),
            ("whole run: commands/s", format!("{:.1}", self.commands_per_s)),
        ];
        for (k, v) in rows {
            s.push_str(&format!("| {k} | {v} |\n"));
        }
        s.push_str(
            "\n| window: ack by type | commands | p50 / p99 / p99.9 / max ms |\n| --- | --- | --- |\n",
        );
        for (kind, latency) in &w.ack_by_type {
            s.push_str(&format!("| {kind} | {} | {} |\n", latency.count, latency.cell()));
        }
        for e in self.failures.iter().chain(&self.errors) {
            s.push_str(&format!("\n- {e}"));
        }
        s
    }
}

const MAX_ERRORS: usize = 20;

fn histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits; the bounds are constants that always hold.
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// Counters of the measuring window.
#[derive(Debug, Default)]
struct WindowStats {
    clients_min: AtomicUsize,
    clients_max: AtomicUsize,
    commands: AtomicU64,
    acks_ok: AtomicU64,
    acks_err: AtomicU64,
    unacked: AtomicU64,
    completed: AtomicU64,
    reconnects: AtomicU64,
}

#[derive(Debug)]
struct Stats {
    start: Instant,
    /// The window's length.
    duration: Duration,
    users: usize,
    /// Users whose login and first connect ended (either way).
    settled: AtomicUsize,
    logins_ok: AtomicU64,
    /// When the window opened: the last user settled, or the ramp timed out.
    opened: OnceLock<Instant>,
    window: WindowStats,
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
    errors_total: AtomicU64,
    /// Ack latency (µs) of commands sent inside the window.
    hist: Mutex<hdrhistogram::Histogram<u64>>,
    /// The same per command type.
    hist_by_type: Mutex<BTreeMap<String, hdrhistogram::Histogram<u64>>>,
    /// Ack latency (µs) of commands sent during the ramp.
    hist_ramp: Mutex<hdrhistogram::Histogram<u64>>,
    /// Login and first connect (µs) per user.
    hist_login: Mutex<hdrhistogram::Histogram<u64>>,
    /// Ack latency (µs) of every ack since the last progress tick.
    hist_tick: Mutex<hdrhistogram::Histogram<u64>>,
    /// See [`SimConfig::wind_down`].
    wind_down: bool,
    /// Rides between request and completion now.
    in_flight: AtomicU64,
    failures: Mutex<Vec<String>>,
    errors: Mutex<Vec<String>>,
    ack_log: Option<Mutex<std::fs::File>>,
    /// Ride id → (amount, admin fee, payout) computed by its driver from the points sent.
    expected: Mutex<HashMap<String, (i64, i64, i64)>>,
    /// Drivers' current positions, for passengers to request near.
    positions: Mutex<Vec<(f64, f64)>>,
}

fn record(h: &Mutex<hdrhistogram::Histogram<u64>>, d: Duration) {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
    h.saturating_record(micros);
}

impl Stats {
    fn new(config: &SimConfig, ack_log: Option<Mutex<std::fs::File>>) -> Self {
        Self {
            start: Instant::now(),
            duration: config.duration,
            users: config.drivers + config.passengers + config.idle_clients,
            settled: AtomicUsize::new(0),
            logins_ok: AtomicU64::new(0),
            opened: OnceLock::new(),
            window: WindowStats::default(),
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
            errors_total: AtomicU64::new(0),
            hist: Mutex::new(histogram()),
            hist_by_type: Mutex::new(BTreeMap::new()),
            hist_ramp: Mutex::new(histogram()),
            hist_login: Mutex::new(histogram()),
            hist_tick: Mutex::new(histogram()),
            wind_down: config.wind_down,
            in_flight: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            ack_log,
            expected: Mutex::new(HashMap::new()),
            positions: Mutex::new(Vec::new()),
        }
    }

    fn error(&self, message: String) {
        self.errors_total.fetch_add(1, Ordering::Relaxed);
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

    /// A user's login and first connect ended; the last one opens the window.
    fn settle(&self, ok: Option<Duration>) {
        if let Some(took) = ok {
            self.logins_ok.fetch_add(1, Ordering::Relaxed);
            record(&self.hist_login, took);
        }
        if self.settled.fetch_add(1, Ordering::AcqRel) + 1 >= self.users {
            self.open_window();
        }
    }

    /// Opens the measuring window now (once).
    fn open_window(&self) {
        let mut first = false;
        self.opened.get_or_init(|| {
            first = true;
            Instant::now()
        });
        if first {
            let n = self.clients.load(Ordering::Relaxed);
            self.window.clients_min.store(n, Ordering::Relaxed);
            self.window.clients_max.store(n, Ordering::Relaxed);
        }
    }

    /// When the window closes; `None` during the ramp.
    fn window_end(&self) -> Option<Instant> {
        self.opened.get().map(|o| *o + self.duration)
    }

    /// Whether `at` falls inside the window.
    fn in_window(&self, at: Instant) -> bool {
        match self.opened.get() {
            Some(o) => at >= *o && at <= *o + self.duration,
            None => false,
        }
    }

    /// Whether new rides may still start: during the ramp and the window.
    fn riding(&self) -> bool {
        self.window_end().is_none_or(|end| Instant::now() < end)
    }

    /// Whether a passenger may request another ride: while riding, and, winding down,
    /// only while a ride still fits in the window.
    fn starting_rides(&self) -> bool {
        if !self.wind_down {
            return self.riding();
        }
        let budget = RIDE_BUDGET.min(self.duration / 3);
        self.window_end().is_none_or(|end| Instant::now() + budget < end)
    }

    /// Winding down and the window has closed: give up what has not started.
    fn stopping(&self) -> bool {
        self.wind_down && self.window_end().is_some_and(|end| Instant::now() >= end)
    }

    /// `ramp`, `window` or `finishing`.
    fn phase(&self) -> &'static str {
        match self.window_end() {
            None => "ramp",
            Some(end) if Instant::now() < end => "window",
            Some(_) => "finishing",
        }
    }

    /// How long until the window closes (`wait` during the ramp).
    fn until_end(&self, wait: Duration) -> Duration {
        self.window_end().map_or(wait, |end| {
            end.saturating_duration_since(Instant::now()).min(wait)
        })
    }

    /// A socket opened.
    fn socket_opened(&self, reconnect: bool) {
        let n = self.clients.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        let now = Instant::now();
        if reconnect {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        if self.in_window(now) {
            self.window.clients_max.fetch_max(n, Ordering::Relaxed);
            if reconnect {
                self.window.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A socket closed.
    fn socket_closed(&self) {
        let n = self.clients.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        if self.in_window(Instant::now()) {
            self.window.clients_min.fetch_min(n, Ordering::Relaxed);
        }
    }

    /// A command of type `kind` sent at `sent` got its ack.
    fn acked(&self, kind: &str, sent: Instant, ok: bool) {
        let took = sent.elapsed();
        record(&self.hist_tick, took);
        if ok {
            self.acks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.acks_err.fetch_add(1, Ordering::Relaxed);
        }
        let ramp = self.opened.get().is_none_or(|opened| sent < *opened);
        if self.in_window(sent) {
            record(&self.hist, took);
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
            self.hist_by_type
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(kind.to_owned())
                .or_insert_with(histogram)
                .saturating_record(micros);
            let n = if ok {
                &self.window.acks_ok
            } else {
                &self.window.acks_err
            };
            n.fetch_add(1, Ordering::Relaxed);
        } else if ramp {
            record(&self.hist_ramp, took);
        }
    }

    /// A command was sent at `at`.
    fn sent(&self, at: Instant) {
        self.commands.fetch_add(1, Ordering::Relaxed);
        if self.in_window(at) {
            self.window.commands.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn ride_completed(&self) {
        self.completed.fetch_add(1, Ordering::Relaxed);
        if self.in_window(Instant::now()) {
            self.window.completed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn snapshot(&self) -> Snapshot {
        let elapsed = self.start.elapsed().as_secs_f64();
        let commands = self.commands.load(Ordering::Relaxed);
        let measuring = self.opened.get().is_some();
        let h = if measuring { &self.hist } else { &self.hist_ramp };
        let ack = Latency::of(&h.lock().unwrap_or_else(|p| p.into_inner()));
        Snapshot {
            elapsed_s: elapsed,
            clients: self.clients.load(Ordering::Relaxed),
            rides_completed: self.completed.load(Ordering::Relaxed),
            rides_failed: self.failed.load(Ordering::Relaxed),
            commands,
            commands_per_s: commands as f64 / elapsed.max(0.001),
            measuring,
            ack_p50_ms: ack.p50_ms,
            ack_p99_ms: ack.p99_ms,
            phase: self.phase(),
            rides_in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    /// The interval since the last sample: `commands_before` commands had been sent at
    /// `before`.
    fn sample(&self, before: (Instant, u64)) -> Sample {
        let now = Instant::now();
        let seconds = now.duration_since(before.0).as_secs_f64().max(0.001);
        let commands = self.commands.load(Ordering::Relaxed);
        let mut h = self.hist_tick.lock().unwrap_or_else(|p| p.into_inner());
        let ack = Latency::of(&h);
        h.reset();
        Sample {
            t_s: now.duration_since(self.start).as_secs_f64(),
            commands_per_s: commands.saturating_sub(before.1) as f64 / seconds,
            acks: ack.count,
            ack_p50_ms: if ack.count == 0 { 0.0 } else { ack.p50_ms },
            ack_p99_ms: if ack.count == 0 { 0.0 } else { ack.p99_ms },
            clients: self.clients.load(Ordering::Relaxed),
            phase: self.phase(),
        }
    }

    fn window_report(&self) -> Window {
        let Some(opened) = self.opened.get() else {
            return Window::default();
        };
        let duration_s = self.duration.as_secs_f64().max(0.001);
        let w = &self.window;
        let commands = w.commands.load(Ordering::Relaxed);
        let completed = w.completed.load(Ordering::Relaxed);
        Window {
            opened_after_s: opened.duration_since(self.start).as_secs_f64(),
            duration_s,
            clients_min: w.clients_min.load(Ordering::Relaxed),
            clients_max: w.clients_max.load(Ordering::Relaxed),
            commands,
            commands_per_s: commands as f64 / duration_s,
            acks_ok: w.acks_ok.load(Ordering::Relaxed),
            acks_err: w.acks_err.load(Ordering::Relaxed),
            unacked: w.unacked.load(Ordering::Relaxed),
            ack: Latency::of(&self.hist.lock().unwrap_or_else(|p| p.into_inner())),
            ack_by_type: self
                .hist_by_type
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, h)| (k.clone(), Latency::of(h)))
                .collect(),
            rides_completed: completed,
            rides_per_s: completed as f64 / duration_s,
            reconnects: w.reconnects.load(Ordering::Relaxed),
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
    let stats = Arc::new(Stats::new(&config, ack_log));
    // Per-run MSISDN space so the OTP request limit never bites.
    let run_base: u64 = StdRng::seed_from_u64(config.seed ^ now_nanos()).gen_range(0..9_000_000);
    let logins = Arc::new(tokio::sync::Semaphore::new(config.login_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let total = stats.users;
    if total == 0 {
        stats.open_window();
    }
    for i in 0..total {
        let url = config.urls[i % config.urls.len()]
            .trim_end_matches('/')
            .to_owned();
        let stats = stats.clone();
        let logins = logins.clone();
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
            let result = user(kind, url, msisdn, seed, stats.clone(), logins).await;
            if let Err(e) = result {
                stats.error(format!("{kind:?}: {e:#}"));
            }
        });
        if i % 50 == 49 {
            tokio::task::yield_now().await;
        }
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut timeline = Vec::new();
    let mut last_sample = (stats.start, 0u64);
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                match joined {
                    None => break,
                    Some(Err(e)) => stats.error(format!("a user task ended abnormally: {e}")),
                    Some(Ok(())) => {}
                }
            }
            _ = tick.tick() => {
                if stats.opened.get().is_none() && stats.start.elapsed() >= config.ramp_timeout {
                    stats.error(format!(
                        "the ramp did not finish within {:?}: {} of {} users had logged in",
                        config.ramp_timeout,
                        stats.logins_ok.load(Ordering::Relaxed),
                        total
                    ));
                    stats.open_window();
                }
                if stats.start.elapsed() >= Duration::from_millis(500) {
                    let sample = stats.sample(last_sample);
                    last_sample = (Instant::now(), stats.commands.load(Ordering::Relaxed));
                    timeline.push(sample);
                }
                progress(&stats.snapshot());
            }
        }
    }
    timeline.push(stats.sample(last_sample));
    progress(&stats.snapshot());
    let elapsed = stats.start.elapsed().as_secs_f64();
    let completed = stats.completed.load(Ordering::Relaxed);
    let commands = stats.commands.load(Ordering::Relaxed);
    let lock = |m: &Mutex<Vec<String>>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let latency =
        |m: &Mutex<hdrhistogram::Histogram<u64>>| Latency::of(&m.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Report {
        elapsed_s: elapsed,
        window: stats.window_report(),
        logins_ok: stats.logins_ok.load(Ordering::Relaxed),
        users: total as u64,
        login: latency(&stats.hist_login),
        ramp_ack: latency(&stats.hist_ramp),
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
        pushes_received: stats.pushes.load(Ordering::Relaxed),
        reconnects: stats.reconnects.load(Ordering::Relaxed),
        errors: lock(&stats.errors),
        errors_total: stats.errors_total.load(Ordering::Relaxed),
        rides_per_s: completed as f64 / elapsed.max(0.001),
        commands_per_s: commands as f64 / elapsed.max(0.001),
        timeline,
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
    stream.set_nodelay(true)?;
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
            // Nagle off, like a real app's socket: a frame is one small write. A 4 KiB
            // read buffer, not tungstenite's 128 KiB zero-filled before every read:
            // the generator shares the machine with what it measures.
            let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                .read_buffer_size(4 * 1024);
            match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
                Ok((ws, _)) => {
                    self.ws = Some(ws);
                    self.open = true;
                    self.stats.socket_opened(counted);
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
            self.stats.socket_closed();
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
        let started = Instant::now();
        self.stats.sent(started);
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
                    let ok = frame["ok"] == true;
                    self.stats.acked(kind, started, ok);
                    if ok {
                        self.log_ack(&id, kind, &frame);
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
        if self.stats.in_window(started) {
            self.stats.window.unacked.fetch_add(1, Ordering::Relaxed);
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
    logins: Arc<tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..500))).await;
    // Logs in and opens the socket with a login slot held; settles the user either way.
    let connect = |plate: Option<String>| {
        let (url, msisdn, stats) = (url.clone(), msisdn.clone(), stats.clone());
        let logins = logins.clone();
        async move {
            let permit = logins.acquire_owned().await?;
            let began = Instant::now();
            let connected = async {
                let token = login(&url, &msisdn, plate.as_deref()).await?;
                Conn::connect(&url, token, stats.clone()).await
            }
            .await;
            drop(permit);
            stats.settle(connected.as_ref().ok().map(|_| began.elapsed()));
            connected
        }
    };
    match kind {
        Kind::Idle => {
            let mut conn = connect(None).await?;
            while stats.riding() {
                if let Some(ws) = conn.ws.as_mut() {
                    if ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                        conn.close_counted();
                    }
                }
                let _ = conn.read(stats.until_end(Duration::from_secs(10))).await?;
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
            let conn = connect(Some(plate)).await?;
            driver(conn, rng, stats).await
        }
        Kind::Passenger => {
            // Give drivers time to come online.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let conn = connect(None).await?;
            passenger(conn, rng, stats).await
        }
    }
}

async fn driver(mut conn: Conn, mut rng: StdRng, stats: Arc<Stats>) -> anyhow::Result<()> {
    let mut pos = (rng.gen_range(LAT_MIN..LAT_MAX), rng.gen_range(LON_MIN..LON_MAX));
    let slot = {
        let mut p = stats.positions.lock().unwrap_or_else(|e| e.into_inner());
        p.push(pos);
        p.len() - 1
    };
    let mut heading = rng.gen_range(0..4u8);
    // Drive on until well after the window so rides in flight finish.
    let mut last_ride = Instant::now();
    loop {
        if stats.stopping() {
            break;
        }
        if let Some(end) = stats.window_end() {
            let now = Instant::now();
            if now > end + Duration::from_secs(90)
                || (now > end && last_ride.elapsed() > Duration::from_secs(30))
            {
                break;
            }
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
                    &["ride_pickup", "match_failed", "match_expired", "match_withdrawn"],
                    Duration::from_secs(5),
                )
                .await?
            else {
                continue;
            };
            // Only pushes about this match count: one about an earlier match (a
            // proposal that expired after this driver declined it) is stale, and
            // leaving on it abandoned the ride, which stayed PENDING while its
            // passenger waited for a bill (1 ride in ~1,500 of a 10k run).
            let this_match = f["data"]["match_id"] == match_id;
            match f["type"].as_str().unwrap_or_default() {
                "ride_pickup" if this_match => {
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
                "match_failed" | "match_expired" | "match_withdrawn" if this_match => break,
                _ => {}
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

async fn passenger(mut conn: Conn, mut rng: StdRng, stats: Arc<Stats>) -> anyhow::Result<()> {
    while stats.starting_rides() {
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
        // A destination the service accepts: at least 100 m from the pickup.
        let dest = loop {
            let dest = (
                (pickup.0 + rng.gen_range(-0.03..0.03)).clamp(LAT_MIN, LAT_MAX),
                (pickup.1 + rng.gen_range(-0.03..0.03)).clamp(LON_MIN, LON_MAX),
            );
            if haversine_km(pickup, dest) >= 0.2 {
                break dest;
            }
        };
        stats.in_flight.fetch_add(1, Ordering::Relaxed);
        let ride = one_ride(&mut conn, &mut rng, &stats, pickup, dest).await;
        stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = ride {
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
    let mut gave_up = false;
    let step = if stats.wind_down {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    let end = Instant::now() + Duration::from_secs(120);
    while Instant::now() < end && !accepted {
        if stats.stopping() && !gave_up {
            // The demo is over: stop searching rather than wait out the rounds.
            gave_up = true;
            let ack = conn.command("finder_update", json!({"is_active": false})).await?;
            if ack["ok"] == true {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            // A driver got there first: the ride goes on.
        }
        let Some(f) = conn
            .wait_for(&["match_accepted", "match_failed", "match_expired"], step)
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
    stats.ride_completed();
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
