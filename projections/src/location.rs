//! Location ingest: the ping publisher the WebSocket edge calls, and the durable,
//! ack-based, batching consumer that keeps the Redis geo index fresh.
//!
//! Pings go to the JetStream stream `LOCATION` (name configurable, `LOCATION_STREAM`),
//! subject `location.driver.<driver_id>`. The stream keeps **the last ping of each
//! driver** (`max_messages_per_subject = 1`, an hour at most): that is all availability
//! needs, it bounds the stream by the number of drivers, and it lets a rebuild replay
//! "the latest pings" by reading the stream once. The trip trace that billing needs does
//! not come from here: a driver's `location_update` during a ride is recorded on the
//! ride by the command pipeline before it is acked.
//!
//! [`run`] is one task that owns every write to the index, so pings, feed batches,
//! sweeps and rebuilds never race each other: it pulls ping batches (up to 1000, one
//! script each, acknowledged together with `AckPolicy::All`), projects the event feed
//! after the stored checkpoint, sweeps stale drivers every second, and — when it finds
//! the checkpoint gone (a flushed Redis) — replays the latest pings while the feed
//! projection starts again from position 0.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use chrono::{DateTime, Utc};
use domain::location::{self, Ping};
use domain::{GeoPoint, UserId};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::watch;

use migrations::consumers::{Consumer, Kind, Supervision};

use crate::geo::{BatchOutcome, GeoError, GeoIndex, FEED_BATCH};

/// Pings per Redis script and per acknowledgement.
pub const PING_BATCH: usize = 1000;

/// Why a ping could not be published or consumed.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    /// JetStream refused or is unreachable.
    #[error("jetstream: {0}")]
    JetStream(String),
    /// The index failed.
    #[error(transparent)]
    Geo(#[from] GeoError),
}

fn js_error(e: impl std::fmt::Display) -> LocationError {
    LocationError::JetStream(e.to_string())
}

/// Creates the stream if it is missing (an existing one is used as it is).
pub async fn ensure_stream(js: &jetstream::Context, name: &str) -> Result<stream::Stream, LocationError> {
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![location::subjects(name)],
        max_messages_per_subject: 1,
        max_age: Duration::from_secs(location::STREAM_MAX_AGE_S),
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(js_error)
}

/// Publishes drivers' pings (the WebSocket edge's `beacon_update` and a driver's
/// `location_update`).
#[derive(Debug, Clone)]
pub struct LocationPublisher {
    js: jetstream::Context,
    stream: String,
}

impl LocationPublisher {
    /// A publisher on `stream`, created if missing.
    pub async fn new(js: jetstream::Context, stream: &str) -> Result<Self, LocationError> {
        ensure_stream(&js, stream).await?;
        Ok(Self {
            js,
            stream: stream.to_owned(),
        })
    }

    /// Publishes a `beacon_update` (online or not, and where) and waits until JetStream
    /// has stored it.
    pub async fn publish_ping(
        &self,
        driver_id: UserId,
        point: GeoPoint,
        is_active: bool,
        at: DateTime<Utc>,
    ) -> Result<(), LocationError> {
        self.publish(&Ping {
            driver_id,
            point,
            is_active: Some(is_active),
            at,
        })
        .await
    }

    /// Publishes a driver's `location_update` (a position; the online state stays as the
    /// last beacon left it) and waits until JetStream has stored it.
    pub async fn publish_position(
        &self,
        driver_id: UserId,
        point: GeoPoint,
        at: DateTime<Utc>,
    ) -> Result<(), LocationError> {
        self.publish(&Ping {
            driver_id,
            point,
            is_active: None,
            at,
        })
        .await
    }

    /// Publishes a ping and waits until JetStream has stored it.
    pub async fn publish(&self, ping: &Ping) -> Result<(), LocationError> {
        self.send(ping).await?.await.map_err(js_error)?;
        Ok(())
    }

    /// Sends a ping without waiting for JetStream's acknowledgement; the returned future
    /// resolves when it is stored. For callers that pipeline many pings.
    pub async fn send(&self, ping: &Ping) -> Result<jetstream::context::PublishAckFuture, LocationError> {
        let body = serde_json::to_vec(ping).map_err(js_error)?;
        self.js
            .publish(location::subject(&self.stream, ping.driver_id), body.into())
            .await
            .map_err(js_error)
    }
}

/// The durable consumer's name: namespaced by the event store's identity (SPEC.md §4),
/// so a deployment on a new database starts from the stream's current pings.
pub fn consumer_name(store_id: uuid::Uuid) -> String {
    format!("geo-{store_id}")
}

fn parse(message: &jetstream::Message) -> Option<Ping> {
    match serde_json::from_slice::<Ping>(&message.payload) {
        Ok(p) => Some(p),
        Err(error) => {
            tracing::warn!(subject = %message.subject, %error, "unreadable ping skipped");
            None
        }
    }
}

/// Applies the latest ping of every driver still in the stream (a rebuild after Redis
/// lost its keys). Returns how many pings it applied.
pub async fn replay_latest_pings(
    js: &jetstream::Context,
    stream_name: &str,
    index: &GeoIndex,
) -> Result<usize, LocationError> {
    let stream = ensure_stream(js, stream_name).await?;
    let replay = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            filter_subject: location::subjects(stream_name),
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .map_err(js_error)?;
    // What is there now; pings published meanwhile reach the live consumer anyway.
    let mut remaining = replay.cached_info().num_pending as usize;
    let mut total = 0;
    while remaining > 0 {
        let mut batch = replay
            .batch()
            .max_messages(remaining.min(PING_BATCH))
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(js_error)?;
        let mut pings = Vec::new();
        let mut received = 0;
        while let Some(message) = batch.next().await {
            let message = message.map_err(js_error)?;
            received += 1;
            pings.extend(parse(&message));
        }
        if received == 0 {
            break;
        }
        remaining = remaining.saturating_sub(received);
        total += pings.len();
        index.apply_pings(&pings).await?;
    }
    let name = replay.cached_info().name.clone();
    let _ = stream.delete_consumer(&name).await;
    Ok(total)
}

/// What [`run`] needs.
#[derive(Debug, Clone)]
pub struct GeoProjection {
    /// The event store.
    pub pool: PgPool,
    /// JetStream.
    pub js: jetstream::Context,
    /// The `LOCATION` stream's name.
    pub stream: String,
    /// The durable consumer's name ([`consumer_name`]).
    pub consumer: String,
    /// The index it keeps.
    pub index: GeoIndex,
}

impl GeoProjection {
    /// The component name it reports as (`geo.<stream>`, see [`migrations::consumers`]).
    pub fn component(&self) -> String {
        format!("geo.{}", self.stream)
    }

    /// Projects the feed until up to date; on a missing checkpoint after one had been
    /// seen (a flushed Redis) replays the latest pings too. `seen` is the last
    /// checkpoint this task saw. Returns the checkpoint and the lag behind the head.
    async fn project_feed(&self, seen: &mut Option<i64>) -> Result<(i64, Option<i64>), LocationError> {
        let stored = self.index.checkpoint().await?;
        if stored.is_none() && seen.is_some_and(|s| s > 0) {
            tracing::warn!(stream = %self.stream, "geo index keys are gone; rebuilding from position 0 and the latest pings");
            metrics::counter!("nebengjek_geo_rebuilds_total").increment(1);
            let replayed = replay_latest_pings(&self.js, &self.stream, &self.index).await?;
            tracing::info!(replayed, "latest pings replayed");
        }
        loop {
            match self.index.project_once(&self.pool, FEED_BATCH).await? {
                BatchOutcome::UpToDate => break,
                BatchOutcome::Applied(position) => *seen = Some(position),
                BatchOutcome::Lost => {}
            }
        }
        let at = self.index.checkpoint().await?.unwrap_or(0);
        let lag = self.report_lag(at).await;
        Ok((at, lag))
    }

    async fn report_lag(&self, at: i64) -> Option<i64> {
        let head = migrations::head_position(&self.pool).await.ok()?;
        let lag = (head - at).max(0);
        metrics::gauge!("nebengjek_geo_projection_lag_events").set(lag as f64);
        Some(lag)
    }

    /// After a failed feed round: the checkpoint and the position it is stopped at.
    /// A feed batch fails whole, so the events before the bad one are applied here:
    /// the projection stops right before the event it cannot handle.
    async fn stop_at(&self, error: &LocationError) -> i64 {
        let mut at = self.index.checkpoint().await.ok().flatten().unwrap_or(0);
        let stuck = match error {
            LocationError::Geo(GeoError::Corrupt { position, .. }) => *position,
            _ => at + 1,
        };
        if stuck > at + 1 {
            match self.index.project_once(&self.pool, stuck - at - 1).await {
                Ok(BatchOutcome::Applied(position)) => at = position,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "cannot apply the events before the bad one"),
            }
        }
        self.report_lag(at).await;
        stuck
    }
}

/// [`run`], reporting to `supervision` (see [`migrations::consumers`]) and restarted
/// after the backoff's delay on any error, until `shutdown` turns true.
pub async fn run_until_stopped(
    projection: GeoProjection,
    supervision: Supervision,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut consumer = Consumer::new(
        projection.pool.clone(),
        supervision,
        projection.component(),
        Kind::Geo,
    );
    loop {
        let error = match run_reporting(projection.clone(), &mut consumer, shutdown.clone()).await {
            Ok(()) => break,
            Err(error) => error,
        };
        let at = projection.stop_at(&error).await;
        let delay = consumer
            .failed(at, &format!("geo projection stopped: {error}"))
            .await;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    consumer.retire();
}

/// Runs the location consumer, the feed projection and the sweeper until `shutdown`,
/// reporting to a registry of its own; returns the first error that stops it.
pub async fn run(projection: GeoProjection, shutdown: watch::Receiver<bool>) -> Result<(), LocationError> {
    let mut consumer = Consumer::new(
        projection.pool.clone(),
        Supervision::default(),
        projection.component(),
        Kind::Geo,
    );
    let result = run_reporting(projection, &mut consumer, shutdown).await;
    consumer.retire();
    result
}

/// [`run`] with `consumer` for reports: a feed event the projection cannot handle stops
/// the feed projection at it (pings and sweeps go on), retried after the backoff.
async fn run_reporting(
    projection: GeoProjection,
    consumer: &mut Consumer,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), LocationError> {
    let stream = ensure_stream(&projection.js, &projection.stream).await?;
    let durable = stream
        .get_or_create_consumer(
            &projection.consumer,
            consumer::pull::Config {
                durable_name: Some(projection.consumer.clone()),
                ack_policy: consumer::AckPolicy::All,
                deliver_policy: consumer::DeliverPolicy::All,
                max_ack_pending: 100_000,
                ..Default::default()
            },
        )
        .await
        .map_err(js_error)?;
    if projection.index.checkpoint().await?.is_none() {
        replay_latest_pings(&projection.js, &projection.stream, &projection.index).await?;
    }
    let messages = durable
        .stream()
        .max_messages_per_batch(PING_BATCH)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(js_error)?;
    let mut chunks = messages.ready_chunks(PING_BATCH);
    let mut feed_tick = tokio::time::interval(Duration::from_millis(100));
    let mut sweep_tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen = projection.index.checkpoint().await?;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            chunk = chunks.next() => {
                let Some(chunk) = chunk else {
                    return Err(LocationError::JetStream("the ping consumer ended".into()));
                };
                let mut pings = Vec::with_capacity(chunk.len());
                let mut last = None;
                for message in chunk {
                    match message {
                        Ok(m) => {
                            pings.extend(parse(&m));
                            last = Some(m);
                        }
                        Err(error) => tracing::warn!(%error, "ping consumer error"),
                    }
                }
                if let Err(error) = projection.index.apply_pings(&pings).await {
                    // Not acknowledged: JetStream redelivers after the ack wait.
                    tracing::error!(%error, "applying pings failed");
                    continue;
                }
                if let Some(m) = last {
                    if let Err(error) = m.ack().await {
                        tracing::warn!(%error, "ping ack failed; they will be redelivered");
                    }
                }
                metrics::counter!("nebengjek_location_pings_ingested_total").increment(pings.len() as u64);
            }
            _ = feed_tick.tick() => {
                if retry_at.is_some_and(|at| tokio::time::Instant::now() < at) {
                    continue; // stalled: wait for the backoff
                }
                match projection.project_feed(&mut seen).await {
                    Ok((at, lag)) => {
                        retry_at = None;
                        consumer.progressed(at, lag).await;
                    }
                    Err(error) => {
                        let at = projection.stop_at(&error).await;
                        let delay = consumer.failed(at, &error.to_string()).await;
                        retry_at = Some(tokio::time::Instant::now() + delay);
                    }
                }
            }
            _ = sweep_tick.tick() => {
                if let Err(error) = projection.index.sweep().await {
                    tracing::error!(%error, "geo sweep failed; retrying");
                }
            }
            _ = shutdown.changed() => return Ok(()),
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}
