//! Consumers of the feed that stall loudly: the health registry, the retry backoff and
//! the `consumer_status` table.
//!
//! Every long-running consumer (each projector, the outbox relay, the geo projection,
//! the process manager, the deadline scheduler) follows one rule: **an event it cannot
//! handle stops it there**. It never skips the event; it retries after a capped,
//! jittered exponential [`Backoff`], and while it fails it is *stalled*:
//! - the process's [`Health`] registry holds the stall (component, the position it is
//!   stuck at, why, since when), which `GET /readyz` reports as 503;
//! - the gauge [`STALLED_GAUGE`]`{component}` is 1 (0 once it moves again);
//! - one ERROR line says so when it stalls (and again if the reason changes), a WARN
//!   per later attempt, an INFO when it resumes;
//! - the `consumer_status` row (migration 0007) records it for `replay-tools status`,
//!   which any operator can run against the database, whichever process stalled.
//!
//! Other consumers keep running: each has its own task, its own [`Consumer`] and its
//! own backoff. The module lives in `migrations` because every consumer crate
//! (`commands`, `projections`) and the edge (`api`, for `/readyz`) can reach it here
//! without depending on each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// The gauge that is 1 while a component is stalled, 0 otherwise.
pub const STALLED_GAUGE: &str = "nebengjek_stalled";

/// How often a healthy consumer writes its position to `consumer_status` at most.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// What kind of consumer a component is (`consumer_status.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A read-model projector (checkpoint = its name).
    Projector,
    /// The outbox relay to JetStream.
    Relay,
    /// The Redis geo projection (checkpoint in Redis).
    Geo,
    /// The process manager (confirmed match → ride).
    ProcessManager,
    /// The deadline scheduler (match timeouts).
    Scheduler,
}

impl Kind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Projector => "projector",
            Kind::Relay => "relay",
            Kind::Geo => "geo",
            Kind::ProcessManager => "process_manager",
            Kind::Scheduler => "scheduler",
        }
    }
}

/// Capped exponential backoff with jitter: attempt `n` (from 0) waits a random time in
/// `[d/2, d]` where `d = min(max, min · 2ⁿ)`. So the first retry comes quickly, a long
/// stall costs one try per `max` at most, and processes that stalled together do not
/// retry in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (`CONSUMER_RETRY_MIN_MS`, 100 ms).
    pub min: Duration,
    /// The longest delay (`CONSUMER_RETRY_MAX_MS`, 5 s): also how late, at most, a
    /// consumer notices that a dependency is back after an outage.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// A backoff from `min` to `max`; `None` when `min` is zero or above `max`.
    pub fn new(min: Duration, max: Duration) -> Option<Self> {
        (!min.is_zero() && min <= max).then_some(Backoff { min, max })
    }

    /// The delay before retry number `attempt` (0 = the first retry), with `jitter` in
    /// `[0, 1]` choosing within `[d/2, d]`.
    pub fn delay_with(&self, attempt: u32, jitter: f64) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        let ceiling = self.min.saturating_mul(factor).min(self.max).max(self.min);
        let half = ceiling / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }

    /// [`Backoff::delay_with`] with a random jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

/// A component that cannot get past an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stall {
    /// The component (`rides`, `relay.EVENTS`, `geo.LOCATION`, ...).
    pub component: String,
    /// What kind of consumer it is.
    pub kind: Kind,
    /// The position it is stopped at: the event it cannot handle (or, for the
    /// scheduler, `0`).
    pub position: i64,
    /// Why, as the last attempt failed.
    pub reason: String,
    /// When it stalled.
    pub since: DateTime<Utc>,
    /// Attempts since it stalled.
    pub attempts: u32,
}

/// The process's registry of stalled components (cheap to clone; clones share it).
#[derive(Clone, Debug, Default)]
pub struct Health {
    stalls: Arc<Mutex<BTreeMap<String, Stall>>>,
}

impl Health {
    /// Every component stalled now, by name.
    pub fn stalls(&self) -> Vec<Stall> {
        self.lock().values().cloned().collect()
    }

    /// Whether nothing is stalled.
    pub fn is_healthy(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Stall>> {
        // A panic while holding this lock cannot leave the map half-written (each
        // access is one insert or remove), so a poisoned lock is still good.
        self.stalls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a component needs to report on itself: the registry, the backoff, and the
/// database for `consumer_status`. One per process, cloned into every component.
#[derive(Clone, Debug, Default)]
pub struct Supervision {
    /// The process's registry.
    pub health: Health,
    /// The retry policy.
    pub backoff: Backoff,
}

/// One component's reporter: call [`Consumer::progressed`] after each good round and
/// [`Consumer::failed`] after each failed one (then wait the delay it returns).
#[derive(Debug)]
pub struct Consumer {
    name: String,
    kind: Kind,
    pool: PgPool,
    supervision: Supervision,
    attempts: u32,
    last_reason: Option<String>,
    last_written: Option<Instant>,
}

impl Consumer {
    /// A reporter for `name`; its gauge starts at 0.
    pub fn new(pool: PgPool, supervision: Supervision, name: impl Into<String>, kind: Kind) -> Self {
        let name = name.into();
        metrics::gauge!(STALLED_GAUGE, "component" => name.clone()).set(0.0);
        Consumer {
            name,
            kind,
            pool,
            supervision,
            attempts: 0,
            last_reason: None,
            last_written: None,
        }
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the last round failed.
    pub fn is_stalled(&self) -> bool {
        self.last_reason.is_some()
    }

    /// A good round: done up to `position`, `lag` behind the head. Clears a stall (and
    /// says so); writes `consumer_status` on a change and every [`HEARTBEAT`] besides.
    pub async fn progressed(&mut self, position: i64, lag: Option<i64>) {
        let resumed = self.last_reason.take().is_some();
        if resumed {
            self.supervision.health.lock().remove(&self.name);
            metrics::gauge!(STALLED_GAUGE, "component" => self.name.clone()).set(0.0);
            tracing::info!(component = %self.name, position, attempts = self.attempts, "resumed");
            self.attempts = 0;
        }
        let due = self.last_written.is_none_or(|at| at.elapsed() >= HEARTBEAT);
        if resumed || due {
            let written = sqlx::query(
                "INSERT INTO consumer_status (name, kind, position, lag, reported_by) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, position = EXCLUDED.position, \
                 lag = EXCLUDED.lag, stalled = false, stalled_at = NULL, stalled_since = NULL, attempts = 0, \
                 reported_by = EXCLUDED.reported_by, updated_at = now()",
            )
            .bind(&self.name)
            .bind(self.kind.as_str())
            .bind(position)
            .bind(lag)
            .bind(reporter())
            .execute(&self.pool)
            .await;
            self.note_write(written.map(drop));
        }
    }

    /// A failed round: stopped at `position` (the event it cannot handle) because of
    /// `reason`. Marks the stall everywhere and returns how long to wait before the
    /// next attempt.
    pub async fn failed(&mut self, position: i64, reason: &str) -> Duration {
        let delay = self.supervision.backoff.delay(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        let first = self.last_reason.is_none();
        if self.last_reason.as_deref() != Some(reason) {
            tracing::error!(component = %self.name, position, reason, retry_in_ms = delay.as_millis() as u64,
                "stalled: cannot get past this event; retrying, never skipping it");
        } else {
            tracing::warn!(component = %self.name, position, reason, attempts = self.attempts,
                retry_in_ms = delay.as_millis() as u64, "still stalled");
        }
        self.last_reason = Some(reason.to_owned());
        let since = {
            let mut stalls = self.supervision.health.lock();
            let since = stalls.get(&self.name).map_or_else(Utc::now, |s| s.since);
            stalls.insert(
                self.name.clone(),
                Stall {
                    component: self.name.clone(),
                    kind: self.kind,
                    position,
                    reason: reason.to_owned(),
                    since,
                    attempts: self.attempts,
                },
            );
            since
        };
        if first {
            metrics::counter!("nebengjek_stalls_total", "component" => self.name.clone()).increment(1);
        }
        metrics::gauge!(STALLED_GAUGE, "component" => self.name.clone()).set(1.0);
        let written = sqlx::query(
            "INSERT INTO consumer_status (name, kind, stalled, stalled_at, stalled_since, attempts, last_error, \
             last_error_at, reported_by) VALUES ($1, $2, true, $3, $4, $5, $6, now(), $7) \
             ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, stalled = true, stalled_at = EXCLUDED.stalled_at, \
             stalled_since = EXCLUDED.stalled_since, attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error, \
             last_error_at = now(), reported_by = EXCLUDED.reported_by, updated_at = now()",
        )
        .bind(&self.name)
        .bind(self.kind.as_str())
        .bind(position)
        .bind(since)
        .bind(i32::try_from(self.attempts).unwrap_or(i32::MAX))
        .bind(reason)
        .bind(reporter())
        .execute(&self.pool)
        .await;
        self.note_write(written.map(drop));
        delay
    }

    fn note_write(&mut self, written: Result<(), sqlx::Error>) {
        match written {
            Ok(()) => self.last_written = Some(Instant::now()),
            // The status table is advisory (the registry, the gauge and the log still
            // say it): a database that refuses this write is itself what the next round
            // will report.
            Err(error) => tracing::warn!(component = %self.name, %error, "cannot write consumer_status"),
        }
    }

    /// Forgets the component in the registry (its task is ending: a stopped
    /// component is not a stalled one).
    pub fn retire(&self) {
        self.supervision.health.lock().remove(&self.name);
    }
}

/// `host:pid` of this process, for `consumer_status.reported_by`.
fn reporter() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// One row of `consumer_status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct StatusRow {
    /// The component.
    pub name: String,
    /// `projector`, `relay`, `geo`, `process_manager`, `scheduler`.
    pub kind: String,
    /// The last position reported done.
    pub position: i64,
    /// Behind the head at that report.
    pub lag: Option<i64>,
    /// Stalled now (as last reported).
    pub stalled: bool,
    /// Where it is stopped.
    pub stalled_at: Option<i64>,
    /// Since when.
    pub stalled_since: Option<DateTime<Utc>>,
    /// Attempts since it stalled.
    pub attempts: i32,
    /// The last error, kept after it resumes.
    pub last_error: Option<String>,
    /// When that was.
    pub last_error_at: Option<DateTime<Utc>>,
    /// `host:pid`.
    pub reported_by: String,
    /// When the row was written.
    pub updated_at: DateTime<Utc>,
}

/// Every row of `consumer_status`, by name.
pub async fn status_rows(pool: &PgPool) -> Result<Vec<StatusRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, kind, position, lag, stalled, stalled_at, stalled_since, attempts, last_error, \
         last_error_at, reported_by, updated_at FROM consumer_status ORDER BY name",
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_min_is_capped_at_max_and_jitters_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).unwrap();
        assert_eq!(b.delay_with(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay_with(1, 1.0), Duration::from_millis(200));
        assert_eq!(b.delay_with(4, 1.0), Duration::from_millis(1600));
        assert_eq!(b.delay_with(5, 1.0), Duration::from_secs(2), "capped");
        assert_eq!(b.delay_with(u32::MAX, 1.0), Duration::from_secs(2), "no overflow");
        assert_eq!(b.delay_with(40, 0.0), Duration::from_secs(1));
        for attempt in 0..50 {
            let d = b.delay(attempt);
            assert!(
                d >= Duration::from_millis(50) && d <= Duration::from_secs(2),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_refuses_a_zero_or_inverted_range() {
        assert!(Backoff::new(Duration::ZERO, Duration::from_secs(1)).is_none());
        assert!(Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).is_none());
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).is_some());
    }
}
