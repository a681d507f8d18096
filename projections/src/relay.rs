//! The outbox relay: the event store, in feed order, onto JetStream stream `EVENTS`.
//!
//! Every event is published as `<prefix>.<aggregate>.<event>` (`events.ride.started`)
//! with the feed envelope of SPEC.md §4 as its body and three headers:
//! `Nats-Msg-Id` = the event id (JetStream drops a repeat within its duplicate window),
//! `Nebengjek-Store-Id` and `Nebengjek-Position`.
//!
//! ## Exactly once in the stream, in order
//! - **One relay at a time** per stream: the relay holds a PostgreSQL advisory lock on
//!   a connection of its own while it runs; a second process's relay waits as a standby.
//! - **Resume from what the stream has, not only from what we wrote down.** The
//!   checkpoint (`checkpoints` row `relay.<stream>`) moves after the broker acknowledged
//!   a batch, so a crash between the two leaves it behind. On start (and after any
//!   error) the relay reads the stream's last message: when it carries this store's id,
//!   its position is where to resume. A restart at any point therefore republishes
//!   nothing; the message id de-duplication is the second line of defence.
//! - **No holes.** Each message but the first after a resume says which message must
//!   precede it (`Nats-Expected-Last-Msg-Id`), so if the broker lost message *n* (a
//!   dropped connection) it refuses *n+1* instead of storing the events out of order;
//!   the relay then resumes from the stream's real end.
//!
//! Positions in the stream are namespaced by the store id (SPEC.md §4 "Redis"): a
//! deployment pointed at a new database does not resume from the old one's position.
//!
//! ## A forged tail stops the relay
//! Whoever can publish on the stream's subjects could put a message at its end that
//! claims this store's id and a far position; resuming from it would skip every event
//! up to there, and pushes would stop. So before it resumes from the stream's last
//! message, the relay checks that it *is* the store's event at that position: the
//! `Nats-Msg-Id` is the event's id and the body is the event's envelope, field for
//! field. Otherwise it publishes nothing ([`RelayError::ForgedTail`]): it logs why,
//! sets the gauge [`FORGED_TAIL_GAUGE`] to 1 and records itself as stopped in
//! [`Health`] (`/readyz` answers 503 naming `relay`), and checks again each wake-up,
//! so it resumes by itself once an operator has removed the message. The NATS server's
//! permissions (`deploy/nats/nats-server.conf`) keep clients from publishing there in
//! the first place; this is the second gate.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage, stream};
use migrations::consumers::{Consumer, Kind, Supervision};
use migrations::StoredEvent;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tracing::Instrument;
use uuid::Uuid;

use crate::health::Health;
use crate::runtime::{checkpoint, listen, FALLBACK_WAKE};

/// Header carrying the store id of the event.
pub const STORE_ID_HEADER: &str = "Nebengjek-Store-Id";
/// Header carrying the event's global position.
pub const POSITION_HEADER: &str = "Nebengjek-Position";
/// The gauge of how many events the relay is behind the store's head.
pub const LAG_GAUGE: &str = "nebengjek_relay_lag_events";
/// The gauge that is 1 while the relay refuses to resume after a stream tail that is
/// not the store's event, 0 otherwise.
pub const FORGED_TAIL_GAUGE: &str = "nebengjek_relay_forged_tail";
/// The relay's name in [`Health`] and on `/readyz`.
pub const COMPONENT: &str = "relay";

/// Where the relay publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// The JetStream stream (`EVENTS`).
    pub stream: String,
    /// The subject prefix (`events`): subjects are `<prefix>.<aggregate>.<event>`.
    pub subject_prefix: String,
    /// Events per batch.
    pub batch: i64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            stream: "EVENTS".into(),
            subject_prefix: "events".into(),
            batch: 500,
        }
    }
}

impl RelayConfig {
    /// The checkpoint row's name.
    pub fn checkpoint_name(&self) -> String {
        format!("relay.{}", self.stream)
    }
}

/// Why the relay could not move on. It logs, waits and resumes from the stream's end.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// PostgreSQL refused or was unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker refused or was unreachable.
    #[error("JetStream error: {0}")]
    JetStream(String),
    /// An event cannot be put on the feed.
    #[error("event at position {0} cannot be published: {1}")]
    Event(i64, String),
    /// A test asked the relay to stop here, as a crash would.
    #[error("injected fault after {0} messages of the batch")]
    Injected(usize),
    /// The stream's last message claims to be this store's event but is not: the
    /// relay will not resume from it.
    #[error("the last message of stream {stream} (sequence {sequence}) claims to be this store's event at position {position} but {reason}; not resuming from a forged position: remove the message, then the relay goes on")]
    ForgedTail {
        /// The stream.
        stream: String,
        /// The message's stream sequence.
        sequence: u64,
        /// The position it claims.
        position: i64,
        /// What does not match.
        reason: String,
    },
}

fn js_error(e: impl std::fmt::Display) -> RelayError {
    RelayError::JetStream(e.to_string())
}

/// Where to go on from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The last position known to be in the stream (or checkpointed).
    pub position: i64,
    /// The id of the stream's last message, when it is this store's event at
    /// `position` (the next message then expects it).
    pub last_event_id: Option<Uuid>,
}

/// The outbox relay of one store to one stream.
#[derive(Debug, Clone)]
pub struct Relay {
    pool: PgPool,
    js: jetstream::Context,
    config: RelayConfig,
    store_id: Uuid,
    health: Health,
}

/// The `EVENTS` stream as every process creates it (the relay that writes it, the edges
/// that follow it): whichever starts first decides its settings, so there is one
/// definition. Subjects `<prefix>.>`, a two-minute duplicate window for `Nats-Msg-Id`.
pub fn events_stream_config(name: &str, subject_prefix: &str) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{subject_prefix}.>")],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

impl Relay {
    /// Connects the relay, creating the stream (subjects `<prefix>.>`, two-minute
    /// duplicate window) if it does not exist.
    pub async fn new(
        pool: PgPool,
        client: async_nats::Client,
        config: RelayConfig,
    ) -> Result<Self, RelayError> {
        let store_id = migrations::store_id(&pool).await?;
        let js = jetstream::new(client);
        js.get_or_create_stream(events_stream_config(&config.stream, &config.subject_prefix))
            .await
            .map_err(js_error)?;
        Ok(Relay {
            pool,
            js,
            config,
            store_id,
            health: Health::default(),
        })
    }

    /// Reports a refusal to resume to `health` (the process's, for `/readyz`).
    #[must_use]
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Its configuration.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The later of the checkpoint and the stream's last message of this store.
    pub async fn resume(&self) -> Result<Resume, RelayError> {
        let checkpointed = checkpoint(&self.pool, &self.config.checkpoint_name()).await?;
        let mut stream = self.js.get_stream(&self.config.stream).await.map_err(js_error)?;
        let last = stream.info().await.map_err(js_error)?.state.last_sequence;
        let in_stream = if last == 0 {
            None
        } else {
            match stream.get_raw_message(last).await {
                Ok(message) => {
                    let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned());
                    let ours =
                        header(STORE_ID_HEADER).and_then(|s| s.parse::<Uuid>().ok()) == Some(self.store_id);
                    let position = header(POSITION_HEADER).and_then(|p| p.parse::<i64>().ok());
                    let id =
                        header(async_nats::header::NATS_MESSAGE_ID.as_ref()).and_then(|i| i.parse().ok());
                    match (ours, position) {
                        (true, Some(position)) => {
                            self.check_tail(last, position, id, &message.payload).await?;
                            Some((position, id))
                        }
                        _ => None,
                    }
                }
                // The last message may have been deleted; the checkpoint decides then.
                Err(error) => {
                    tracing::warn!(%error, sequence = last, "cannot read the stream's last message");
                    None
                }
            }
        };
        Ok(match in_stream {
            Some((position, id)) if position >= checkpointed => Resume {
                position,
                last_event_id: id,
            },
            _ => Resume {
                position: checkpointed,
                last_event_id: None,
            },
        })
    }

    /// Checks that the stream's last message (sequence `sequence`), which claims to be
    /// this store's event at `position`, is that event: its id, and its body field for
    /// field.
    async fn check_tail(
        &self,
        sequence: u64,
        position: i64,
        id: Option<Uuid>,
        payload: &[u8],
    ) -> Result<(), RelayError> {
        let forged = |reason: String| RelayError::ForgedTail {
            stream: self.config.stream.clone(),
            sequence,
            position,
            reason,
        };
        let stored = migrations::read_feed(&self.pool, position - 1, 1).await?;
        let Some(event) = stored.into_iter().next().filter(|e| e.position == position) else {
            return Err(forged("the store has no event at that position".into()));
        };
        if id.is_none() || id != event.event_id() {
            return Err(forged(format!(
                "its Nats-Msg-Id {id:?} is not the event's id {:?}",
                event.event_id()
            )));
        }
        let body: serde_json::Value =
            serde_json::from_slice(payload).map_err(|e| forged(format!("its body is not JSON: {e}")))?;
        let expected =
            serde_json::to_value(event.envelope()).map_err(|e| RelayError::Event(position, e.to_string()))?;
        if body != expected {
            return Err(forged("its body is not the event's envelope".into()));
        }
        Ok(())
    }

    /// Publishes up to `config.batch` events after `from`, waits for every
    /// acknowledgement, then moves the checkpoint. Returns where the stream now ends.
    /// `fault = Some(n)` stops after `n` messages, before the checkpoint, as a crash
    /// would (tests).
    pub async fn step(&self, from: Resume, fault: Option<usize>) -> Result<Resume, RelayError> {
        let events = migrations::read_feed(&self.pool, from.position, self.config.batch).await?;
        if events.is_empty() {
            return Ok(from);
        }
        let span = tracing::debug_span!("relay_batch", stream = %self.config.stream, from = from.position, n = events.len());
        async {
            let mut previous = from.last_event_id;
            let mut acks: Vec<PublishAckFuture> = Vec::with_capacity(events.len());
            for (i, event) in events.iter().enumerate() {
                if fault == Some(i) {
                    break;
                }
                let id = event
                    .event_id()
                    .ok_or_else(|| RelayError::Event(event.position, "no event_id in its metadata".into()))?;
                acks.push(self.publish(event, id, previous).await?);
                previous = Some(id);
            }
            let published = acks.len();
            for ack in acks {
                ack.await.map_err(js_error)?;
            }
            if fault.is_some() {
                return Err(RelayError::Injected(published));
            }
            let last = events.last().map_or(from.position, |e| e.position);
            sqlx::query(
                "INSERT INTO checkpoints (name, position, updated_at) VALUES ($1, $2, now()) \
                 ON CONFLICT (name) DO UPDATE SET position = GREATEST(checkpoints.position, EXCLUDED.position), \
                 updated_at = now()",
            )
            .bind(self.config.checkpoint_name())
            .bind(last)
            .execute(&self.pool)
            .await?;
            metrics::counter!("nebengjek_relay_events_total").increment(published as u64);
            Ok(Resume {
                position: last,
                last_event_id: previous,
            })
        }
        .instrument(span)
        .await
    }

    async fn publish(
        &self,
        event: &StoredEvent,
        id: Uuid,
        previous: Option<Uuid>,
    ) -> Result<PublishAckFuture, RelayError> {
        let body = serde_json::to_vec(&event.envelope())
            .map_err(|e| RelayError::Event(event.position, e.to_string()))?;
        let mut message = PublishMessage::build()
            .payload(body.into())
            .message_id(id.to_string())
            .header(STORE_ID_HEADER, self.store_id.to_string().as_str())
            .header(POSITION_HEADER, event.position.to_string().as_str());
        if let Some(previous) = previous {
            message = message.expected_last_message_id(previous.to_string());
        }
        self.js
            .send_publish(event.subject(&self.config.subject_prefix), message)
            .await
            .map_err(js_error)
    }

    /// Publishes everything after the resume point until caught up; returns the end.
    pub async fn drain(&self) -> Result<Resume, RelayError> {
        let mut at = self.resume().await?;
        loop {
            let next = self.step(at, None).await?;
            if next.position == at.position {
                return Ok(next);
            }
            at = next;
        }
    }

    /// Runs until `shutdown` turns true, reporting to a registry of its own; see
    /// [`Relay::run_supervised`].
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_supervised(Supervision::default(), shutdown).await;
    }

    /// Runs until `shutdown` turns true: takes the relay lock (waiting as a standby
    /// while another process holds it), then follows the store, woken by its `NOTIFY`.
    /// An error stops the relay where it is (an event is never skipped): it is reported
    /// stalled at that position (see [`migrations::consumers`]) and retried after the
    /// backoff's delay with a fresh resume from the stream's end.
    /// A forged tail stops it (gauge, [`Health`]) until the stream's end is the store's
    /// again.
    pub async fn run_supervised(self, supervision: Supervision, mut shutdown: watch::Receiver<bool>) {
        let Some(_lock) = self.lock(&mut shutdown).await else {
            return;
        };
        let mut consumer = Consumer::new(
            self.pool.clone(),
            supervision,
            self.config.checkpoint_name(),
            Kind::Relay,
        );
        let mut listener = listen(&self.pool).await;
        let mut at: Option<Resume> = None;
        let mut forged: Option<String> = None;
        metrics::gauge!(FORGED_TAIL_GAUGE).set(0.0);
        loop {
            let mut reached = at.map(|p| p.position);
            let result = async {
                let mut position = match at {
                    Some(p) => p,
                    None => self.resume().await?,
                };
                loop {
                    reached = Some(position.position);
                    let next = self.step(position, None).await?;
                    if next.position == position.position {
                        return Ok::<_, RelayError>(next);
                    }
                    position = next;
                }
            }
            .await;
            let head = migrations::head_position(&self.pool).await.ok();
            let mut retry = None;
            match result {
                Err(error @ RelayError::ForgedTail { .. }) => {
                    let reason = error.to_string();
                    if forged.as_ref() != Some(&reason) {
                        tracing::error!(%error, "relay stopped");
                        metrics::gauge!(FORGED_TAIL_GAUGE).set(1.0);
                        self.health.stop(COMPONENT, reason.clone());
                        forged = Some(reason);
                    }
                    at = None;
                }
                Ok(p) => {
                    if forged.take().is_some() {
                        tracing::info!("the stream's end is the store's event again; relay resumed");
                        metrics::gauge!(FORGED_TAIL_GAUGE).set(0.0);
                        self.health.clear(COMPONENT);
                    }
                    at = Some(p);
                    let lag = head.map(|h| (h - p.position).max(0));
                    if let Some(lag) = lag {
                        metrics::gauge!(LAG_GAUGE).set(lag as f64);
                    }
                    consumer.progressed(p.position, lag).await;
                }
                Err(error) => {
                    at = None;
                    let done = match reached {
                        Some(p) => p,
                        None => checkpoint(&self.pool, &self.config.checkpoint_name())
                            .await
                            .unwrap_or(0),
                    };
                    if let Some(head) = head {
                        metrics::gauge!(LAG_GAUGE).set((head - done).max(0) as f64);
                    }
                    let stuck = match error {
                        RelayError::Event(position, _) => position,
                        _ => done + 1,
                    };
                    retry = Some(consumer.failed(stuck, &error.to_string()).await);
                }
            }
            let wake = async {
                match (retry, listener.as_mut()) {
                    // Stalled: wait the backoff, not the next append.
                    (Some(delay), _) => tokio::time::sleep(delay).await,
                    (None, Some(l)) => {
                        let _ = tokio::time::timeout(FALLBACK_WAKE, l.recv()).await;
                    }
                    (None, None) => tokio::time::sleep(FALLBACK_WAKE).await,
                }
            };
            tokio::select! {
                () = wake => {}
                changed = shutdown.changed() => if changed.is_err() { break },
            }
            if *shutdown.borrow() {
                break;
            }
        }
        consumer.retire();
    }

    /// The relay's advisory lock, on a connection that lives as long as it is held.
    async fn lock(&self, shutdown: &mut watch::Receiver<bool>) -> Option<PgConnection> {
        let key = format!("nebengjek.relay.{}", self.config.stream);
        let options = self.pool.connect_options();
        let mut announced = false;
        loop {
            let attempt = async {
                let mut conn = PgConnection::connect_with(&options).await?;
                let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .fetch_one(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(held.then_some(conn))
            };
            match attempt.await {
                Ok(Some(conn)) => return Some(conn),
                Ok(None) if !announced => {
                    tracing::info!(stream = %self.config.stream, "another process relays this stream; standing by");
                    announced = true;
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot take the relay lock; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                changed = shutdown.changed() => if changed.is_err() { return None },
            }
            if *shutdown.borrow() {
                return None;
            }
        }
    }
}
