//! The per-user command rate: a token bucket per user, checked once on the command path
//! ([`crate::CommandBus::dispatch`], which the WebSocket edge and the NATS ingress both
//! call), before anything is read or written.
//!
//! A bucket holds at most `burst` tokens and refills at `per_second`; each command takes
//! one. A command that finds the bucket empty is refused with `rate_limited` and the time
//! until a token is back (`retry_after_ms`); nothing is written for it, so a resend with
//! the same id after that time is handled as new. Buckets live in the process: with `P`
//! processes serving one user (sockets on several edges, NATS spread by the queue
//! group) the user's ceiling is at most `P` times the configured rate. The system's own
//! commands (process manager, deadlines, matcher) are never limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use domain::UserId;

/// How fast one user may send commands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (`COMMAND_RATE_PER_SECOND`).
    pub per_second: f64,
    /// The bucket's size: commands that may arrive at once (`COMMAND_RATE_BURST`).
    pub burst: u32,
}

impl RateLimit {
    /// A limit, or why not: a positive, finite rate and a burst of at least 1.
    pub fn new(per_second: f64, burst: u32) -> Result<Self, String> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return Err(format!("the rate must be a positive number, got {per_second}"));
        }
        if burst == 0 {
            return Err("the burst must be at least 1".into());
        }
        Ok(Self { per_second, burst })
    }
}

/// Buckets are split over shards so that users rarely wait on each other's lock.
const SHARDS: usize = 64;
/// A shard this large drops the buckets that are full again (an idle user's bucket is
/// the same as no bucket).
const SHARD_PRUNE_AT: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every user this process has seen recently.
#[derive(Debug)]
pub struct CommandRate {
    limit: Option<RateLimit>,
    shards: Vec<Mutex<HashMap<UserId, Bucket>>>,
}

impl CommandRate {
    /// No limit (the bus's default: tests and benches that do not ask for one).
    pub fn unlimited() -> Self {
        Self {
            limit: None,
            shards: Vec::new(),
        }
    }

    /// Buckets with `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit: Some(limit),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes a token of `user`'s bucket at `now`, or says how long until one is back.
    pub fn take(&self, user: UserId, now: Instant) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let burst = f64::from(limit.burst);
        let shard = &self.shards[shard_of(user)];
        let mut buckets = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= SHARD_PRUNE_AT {
            buckets.retain(|_, b| refilled(b, now, limit) < burst);
        }
        let bucket = buckets.entry(user).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = refilled(bucket, now, limit);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            let wait = (1.0 - tokens) / limit.per_second;
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}

fn refilled(bucket: &Bucket, now: Instant, limit: RateLimit) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * limit.per_second).min(f64::from(limit.burst))
}

fn shard_of(user: UserId) -> usize {
    let bytes = user.as_uuid().as_u128();
    // The low bits of a v7 id are random.
    (bytes as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserId {
        UserId::from_uuid(uuid::Uuid::now_v7())
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let rate = CommandRate::new(RateLimit::new(10.0, 3).unwrap());
        let (alice, bob) = (user(), user());
        let t0 = Instant::now();
        for _ in 0..3 {
            rate.take(alice, t0).unwrap();
        }
        let wait = rate.take(alice, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        // Another user is not affected.
        rate.take(bob, t0).unwrap();
        // A tenth of a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(100);
        rate.take(alice, t1).unwrap();
        assert!(rate.take(alice, t1).is_err());
    }

    #[test]
    fn unlimited_never_refuses() {
        let rate = CommandRate::unlimited();
        let alice = user();
        let now = Instant::now();
        for _ in 0..10_000 {
            rate.take(alice, now).unwrap();
        }
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let rate = CommandRate::new(RateLimit::new(1000.0, 2).unwrap());
        let t0 = Instant::now();
        let mut in_shard_zero = 0;
        while in_shard_zero < SHARD_PRUNE_AT {
            let u = user();
            if shard_of(u) == 0 {
                rate.take(u, t0).unwrap();
                in_shard_zero += 1;
            }
        }
        let newcomer = std::iter::repeat_with(user).find(|u| shard_of(*u) == 0).unwrap();
        rate.take(newcomer, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(
            rate.shards[0].lock().unwrap().len(),
            1,
            "only the newcomer's bucket is left"
        );
    }

    #[test]
    fn bad_limits_are_refused() {
        assert!(RateLimit::new(0.0, 1).is_err());
        assert!(RateLimit::new(f64::NAN, 1).is_err());
        assert!(RateLimit::new(1.0, 0).is_err());
    }
}
