//! The matcher (role `matcher`): proposes waiting matches to the nearest available
//! drivers (SPEC.md §3, Match rule 2).
//!
//! It keeps, in this process's memory, everything it needs to answer "the 5 nearest
//! available drivers within r km of this pickup" in microseconds:
//! - every driver's last ping, from the `LOCATION` stream (an ordered consumer that
//!   starts with the last ping of every driver, then follows);
//! - who is busy (in an open match or ride): a consistent snapshot of
//!   `participant_reservations` at a feed position, then every event's
//!   [`Reservation`](domain::Reservation)s after it, with the store's own semantics (a
//!   release or transfer acts only when the emitting aggregate holds the user);
//! - a [`GridIndex`] of the drivers who are online and not busy (freshness — a ping
//!   within `LOCATION_AVAILABILITY_TTL_SECONDS` — is checked at query time).
//!
//! Redis (`projections::geo`) is the shared truth for other processes; the matcher reads
//! the same stream and feed, so it needs no network hop per search.
//!
//! ## When it proposes
//! - On `requested` and `round_started` (rounds and radius are the domain's): the
//!   nearest `max_drivers_per_request` fresh, free drivers within the round's radius
//!   whom the match may still be proposed (`Match::may_propose`: never a decliner, a
//!   rejected driver, one already proposed, or the passenger — the domain drops them
//!   too). Nobody found: an empty proposal records it, and the match waits.
//! - A waiting match (a round with no candidate) is proposed at once to a driver who
//!   becomes available within its radius (comes online, comes back fresh, or is freed).
//!
//! ## Exactly once, without a checkpoint of its own
//! Every proposal's key is `matcher:<match>:<round>:<round deadline>:<candidates>`:
//! the round deadline (fresh at every round start, restarts included) names the round,
//! and the digest of the candidates names the proposal. The same search repeated (a
//! restart, a second matcher process) repeats the key and appends nothing; a different
//! answer is a different proposal, which the domain caps at the round's limit. On
//! start, the open matches are read from the durable `deadlines` table (every open
//! match has one), so a restart forgets no waiting passenger: see `docs/decisions.md`.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use chrono::{DateTime, TimeDelta, Utc};
use domain::location::{self, Ping};
use domain::matching::{Candidate, Match, MatchCommand, MatchEvent, MatchStatus};
use domain::ride::RideEvent;
use domain::{DomainEvent, GeoPoint, MatchId, Reservation, UserId};
use futures::StreamExt;
use tokio::sync::watch;
use tracing::Instrument as _;
use uuid::Uuid;

use crate::bus::{answer, CommandBus};
use crate::nearest::GridIndex;
use crate::pipeline::{parse_event, Envelope, PipelineError};
use crate::store::StoreError;

/// The speed assumed for an ETA: a city average (`docs/decisions.md`).
pub const DEFAULT_SPEED_KMH: f64 = 30.0;

/// What the matcher needs besides the bus.
#[derive(Debug, Clone, Copy)]
pub struct MatcherConfig {
    /// `LOCATION_AVAILABILITY_TTL_SECONDS`: a driver is fresh this long after a ping.
    pub availability_ttl: Duration,
    /// `MATCHING_MAX_DRIVERS_PER_REQUEST`.
    pub max_candidates: usize,
    /// Straight-line speed for the ETA, km/h.
    pub speed_kmh: f64,
}

impl Default for MatcherConfig {
    fn default() -> Self {
        Self {
            availability_ttl: Duration::from_secs(60),
            max_candidates: 5,
            speed_kmh: DEFAULT_SPEED_KMH,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    point: GeoPoint,
    at: DateTime<Utc>,
    active: bool,
}

#[derive(Debug, Clone, Copy)]
struct Waiting {
    pickup: GeoPoint,
    radius_km: f64,
}

/// What one step did, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Proposals sent with at least one candidate.
    pub proposals: usize,
    /// Searches that found nobody.
    pub empty: usize,
}

impl Step {
    fn add(&mut self, other: Step) {
        self.proposals += other.proposals;
        self.empty += other.empty;
    }
}

/// The matcher's state. Drive it with [`Matcher::on_pings`] and [`Matcher::poll_feed`]
/// (tests do), or run it with [`run`].
#[derive(Debug)]
pub struct Matcher {
    bus: CommandBus,
    config: MatcherConfig,
    seen: HashMap<UserId, Seen>,
    /// Drivers whose last beacon said offline.
    offline: std::collections::HashSet<UserId>,
    /// Online and not busy (fresh or not).
    index: GridIndex,
    /// User → `<type>:<id>` of the open match or ride holding them.
    holders: HashMap<UserId, String>,
    waiting: HashMap<MatchId, Waiting>,
    /// The last feed position applied.
    position: i64,
}

fn store_error(e: sqlx::Error) -> PipelineError {
    StoreError::from(e).into()
}

impl Matcher {
    /// Starts from a consistent snapshot (`participant_reservations` at the feed head)
    /// and searches every open match that is waiting for drivers.
    pub async fn start(bus: CommandBus, config: MatcherConfig) -> Result<Self, PipelineError> {
        let pool = bus.store().pool().clone();
        let mut tx = pool.begin().await.map_err(store_error)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        let head = migrations::head_position(&mut *tx).await.map_err(store_error)?;
        let held: Vec<(Uuid, String, Uuid)> =
            sqlx::query_as("SELECT user_id, aggregate_type, aggregate_id FROM participant_reservations")
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
        let open: Vec<Uuid> =
            sqlx::query_scalar("SELECT aggregate_id FROM deadlines WHERE aggregate_type = 'match'")
                .fetch_all(&mut *tx)
                .await
                .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        let mut matcher = Self {
            bus,
            config,
            seen: HashMap::new(),
            offline: std::collections::HashSet::new(),
            index: GridIndex::new(),
            holders: held
                .into_iter()
                .map(|(u, t, id)| (UserId::from_uuid(u), format!("{t}:{id}")))
                .collect(),
            waiting: HashMap::new(),
            position: head,
        };
        for id in open {
            matcher.search(MatchId::from_uuid(id)).await?;
        }
        tracing::info!(position = head, busy = matcher.holders.len(), "matcher started");
        Ok(matcher)
    }

    /// Drivers in the index (online and free).
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Matches waiting for a driver to come within reach.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn cutoff(&self) -> DateTime<Utc> {
        let ttl = TimeDelta::from_std(self.config.availability_ttl).unwrap_or(TimeDelta::MAX);
        self.bus
            .clock()
            .now()
            .checked_sub_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    fn available(&self, driver: UserId, cutoff: DateTime<Utc>) -> bool {
        self.index.contains(driver) && self.seen.get(&driver).is_some_and(|s| s.active && s.at >= cutoff)
    }

    /// Applies pings (in stream order); a driver who becomes available within reach of
    /// a waiting match is proposed to it at once.
    pub async fn on_pings(&mut self, pings: &[Ping]) -> Result<Step, PipelineError> {
        let cutoff = self.cutoff();
        let mut newly = Vec::new();
        for ping in pings {
            let driver = ping.driver_id;
            if self.seen.get(&driver).is_some_and(|s| s.at > ping.at) {
                continue; // older than what we have
            }
            let was = self.available(driver, cutoff);
            match ping.is_active {
                Some(true) => {
                    self.offline.remove(&driver);
                }
                Some(false) => {
                    self.offline.insert(driver);
                }
                None => {}
            }
            // A position alone keeps the online state: online unless the last beacon
            // said offline.
            let active = !self.offline.contains(&driver);
            self.seen.insert(
                driver,
                Seen {
                    point: ping.point,
                    at: ping.at,
                    active,
                },
            );
            if active && !self.holders.contains_key(&driver) {
                self.index.upsert(driver, ping.point);
            } else {
                self.index.remove(driver);
            }
            if !was && self.available(driver, cutoff) {
                newly.push((driver, ping.point));
            }
        }
        self.propose_to_waiting(&newly).await
    }

    async fn propose_to_waiting(&mut self, newly: &[(UserId, GeoPoint)]) -> Result<Step, PipelineError> {
        let mut step = Step::default();
        if newly.is_empty() || self.waiting.is_empty() {
            return Ok(step);
        }
        let mut reach: Vec<MatchId> = self
            .waiting
            .iter()
            .filter(|(_, w)| newly.iter().any(|(_, p)| w.pickup.distance_km(p) <= w.radius_km))
            .map(|(id, _)| *id)
            .collect();
        reach.sort();
        for id in reach {
            step.add(self.search(id).await?);
        }
        Ok(step)
    }

    /// Applies the feed after the last position seen and searches for the matches that
    /// started a round.
    pub async fn poll_feed(&mut self) -> Result<Step, PipelineError> {
        let mut step = Step::default();
        loop {
            let events = migrations::read_feed(self.bus.store().pool(), self.position, 500)
                .await
                .map_err(store_error)?;
            let Some(last) = events.last().map(|e| e.position) else {
                return Ok(step);
            };
            let mut to_search = Vec::new();
            let mut freed = Vec::new();
            for event in &events {
                let holder = format!("{}:{}", event.aggregate_type, event.aggregate_id);
                let reservations: Vec<Reservation> = match event.aggregate_type.as_str() {
                    "match" => {
                        let Ok(e) = parse_event::<MatchEvent>(&event.event_type, &event.payload) else {
                            tracing::warn!(position = event.position, "unreadable match event skipped");
                            continue;
                        };
                        let id = MatchId::from_uuid(event.aggregate_id);
                        match &e {
                            MatchEvent::Requested { .. } | MatchEvent::RoundStarted { .. } => {
                                to_search.push(id)
                            }
                            MatchEvent::Proposed { candidates, .. } if candidates.is_empty() => {}
                            MatchEvent::Proposed { .. }
                            | MatchEvent::DriverAccepted { .. }
                            | MatchEvent::Confirmed { .. }
                            | MatchEvent::Cancelled { .. }
                            | MatchEvent::Expired { .. }
                            | MatchEvent::Failed { .. } => {
                                self.waiting.remove(&id);
                                to_search.retain(|m| *m != id);
                            }
                            MatchEvent::DriverDeclined { .. }
                            | MatchEvent::DriverRejected { .. }
                            | MatchEvent::RoundTimedOut { .. } => {}
                        }
                        e.reservations()
                    }
                    "ride" => match parse_event::<RideEvent>(&event.event_type, &event.payload) {
                        Ok(e) => e.reservations(),
                        Err(_) => {
                            tracing::warn!(position = event.position, "unreadable ride event skipped");
                            continue;
                        }
                    },
                    _ => Vec::new(),
                };
                for r in reservations {
                    match r {
                        Reservation::Claim(user) => {
                            self.holders.insert(user, holder.clone());
                            self.index.remove(user);
                        }
                        Reservation::Release(user) => {
                            if self.holders.get(&user) == Some(&holder) {
                                self.holders.remove(&user);
                                freed.push(user);
                            }
                        }
                        Reservation::Transfer { user, to_type, to_id } => {
                            if self.holders.get(&user) == Some(&holder) {
                                self.holders.insert(user, format!("{to_type}:{to_id}"));
                            }
                        }
                    }
                }
            }
            self.position = last;
            metrics::gauge!("nebengjek_matcher_position").set(last as f64);
            for id in to_search {
                step.add(self.search(id).await?);
            }
            let cutoff = self.cutoff();
            let mut newly = Vec::new();
            // A freed driver is available again if they are still online.
            for user in freed {
                let Some(point) = self.last_point(user) else {
                    continue;
                };
                if self.seen.get(&user).is_some_and(|s| s.active) && !self.holders.contains_key(&user) {
                    self.index.upsert(user, point);
                    if self.available(user, cutoff) {
                        newly.push((user, point));
                    }
                }
            }
            step.add(self.propose_to_waiting(&newly).await?);
        }
    }

    fn last_point(&self, user: UserId) -> Option<GeoPoint> {
        self.seen.get(&user).map(|s| s.point)
    }

    /// Drops drivers whose last ping is older than the TTL from the index (they are
    /// already never proposed; this keeps the grid small).
    pub fn sweep(&mut self) -> usize {
        let cutoff = self.cutoff();
        let stale: Vec<UserId> = self
            .seen
            .iter()
            .filter(|(_, s)| s.at < cutoff)
            .map(|(id, _)| *id)
            .collect();
        for id in &stale {
            self.index.remove(*id);
            self.seen.remove(id);
        }
        stale.len()
    }

    /// Searches one match (if it is `SEARCHING`) and proposes what it finds.
    async fn search(&mut self, id: MatchId) -> Result<Step, PipelineError> {
        let mut step = Step::default();
        let loaded = self.bus.matches().load(id.as_uuid()).await?;
        let m: &Match = &loaded.state;
        let (Some(MatchStatus::Searching), Some(pickup), Some(radius_km), Some(deadline)) = (
            m.match_status(),
            m.pickup(),
            m.radius_km(),
            domain::Aggregate::deadline(m),
        ) else {
            self.waiting.remove(&id);
            return Ok(step);
        };
        let cutoff = self.cutoff();
        let found = self
            .index
            .nearest(&pickup, radius_km, self.config.max_candidates, |d| {
                self.seen.get(&d).is_some_and(|s| s.active && s.at >= cutoff) && m.may_propose(d)
            });
        let candidates: Vec<Candidate> = found
            .iter()
            .map(|f| Candidate {
                driver_id: f.id,
                distance_km: f.distance_km,
                eta_seconds: location::eta_seconds(f.distance_km, self.config.speed_kmh),
            })
            .collect();
        let digest = if candidates.is_empty() {
            "none".to_owned()
        } else {
            let ids: Vec<String> = candidates.iter().map(|c| c.driver_id.to_string()).collect();
            Uuid::new_v5(&Uuid::NAMESPACE_OID, ids.join(",").as_bytes()).to_string()
        };
        let key = format!(
            "matcher:{id}:{}:{}:{digest}",
            m.round(),
            deadline.timestamp_micros()
        );
        // Instrumented, never entered: a guard held across `.await` leaves the span on
        // whichever thread the task resumes on (clippy.toml forbids it).
        let span = tracing::info_span!("matcher_propose", match_id = %id, round = m.round(), candidates = candidates.len());
        if candidates.is_empty() {
            step.empty += 1;
            self.waiting.insert(id, Waiting { pickup, radius_km });
        } else {
            step.proposals += 1;
            self.waiting.remove(&id);
        }
        let env = Envelope::system(key, None);
        let ack = answer(
            self.bus
                .matches()
                .execute(id.as_uuid(), &env, &MatchCommand::Propose { candidates })
                .instrument(span.clone())
                .await?,
        );
        if !ack.ok {
            span.in_scope(|| tracing::debug!(?ack, "proposal refused (the match moved on)"));
        }
        metrics::counter!("nebengjek_matcher_searches_total").increment(1);
        Ok(step)
    }
}

/// Creates the `LOCATION` stream if it is missing, with the configuration
/// `projections::location::ensure_stream` uses (the constants of `domain::location`).
pub async fn ensure_location_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<stream::Stream, async_nats::error::Error<jetstream::context::CreateStreamErrorKind>> {
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![location::subjects(name)],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(location::STREAM_MAX_AGE_S),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
}

/// Why the matcher loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum MatcherError {
    /// JetStream refused or is unreachable.
    #[error("jetstream: {0}")]
    JetStream(String),
    /// The store failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

fn js_error(e: impl std::fmt::Display) -> MatcherError {
    MatcherError::JetStream(e.to_string())
}

/// Runs the matcher until `shutdown` turns true, restarting from a fresh snapshot after
/// an error.
pub async fn run(
    bus: CommandBus,
    js: jetstream::Context,
    stream: String,
    config: MatcherConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match run_once(&bus, &js, &stream, config, &mut shutdown).await {
            Ok(()) => return,
            Err(error) => tracing::error!(%error, "matcher failed; restarting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn run_once(
    bus: &CommandBus,
    js: &jetstream::Context,
    stream_name: &str,
    config: MatcherConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), MatcherError> {
    let stream = ensure_location_stream(js, stream_name).await.map_err(js_error)?;
    // The last ping of every driver, then every new one.
    let pings = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: location::subjects(stream_name),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(js_error)?
        .messages()
        .await
        .map_err(js_error)?;
    let mut chunks = pings.ready_chunks(1000);
    let mut matcher = Matcher::start(bus.clone(), config).await?;
    // A restarted NATS server has forgotten the ordered consumer, and the client would
    // notice only when a pull fails, seconds later, pings missed meanwhile: start
    // again from a fresh snapshot as soon as the client reconnects.
    let stats = js.client().statistics();
    let connects = stats.connects.load(std::sync::atomic::Ordering::Relaxed);
    let mut reconnect_tick = tokio::time::interval(Duration::from_millis(250));
    let mut feed_tick = tokio::time::interval(Duration::from_millis(100));
    let mut sweep_tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            chunk = chunks.next() => {
                let Some(chunk) = chunk else {
                    return Err(MatcherError::JetStream("the ping consumer ended".into()));
                };
                let mut batch = Vec::with_capacity(chunk.len());
                for message in chunk {
                    let message = message.map_err(js_error)?;
                    match serde_json::from_slice::<Ping>(&message.payload) {
                        Ok(p) => batch.push(p),
                        Err(error) => tracing::warn!(%error, "unreadable ping skipped"),
                    }
                }
                matcher.on_pings(&batch).await?;
            }
            _ = feed_tick.tick() => {
                matcher.poll_feed().await?;
            }
            _ = sweep_tick.tick() => {
                let stale = matcher.sweep();
                metrics::gauge!("nebengjek_matcher_indexed_drivers").set(matcher.indexed() as f64);
                tracing::debug!(stale, waiting = matcher.waiting(), "matcher sweep");
            }
            _ = reconnect_tick.tick() => {
                if stats.connects.load(std::sync::atomic::Ordering::Relaxed) != connects {
                    return Err(MatcherError::JetStream("reconnected to NATS: the ping consumer is gone".into()));
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}
