//! One-time login codes in Redis.
//!
//! Keys, under the configured prefix (tests give each run its own):
//! - `otp:code:<msisdn>` — a hash `{code, wrong}` with the code's TTL (5 minutes).
//! - `otp:requests:<msisdn>` — a counter of code requests, expiring one window (an
//!   hour) after the first request of the window.
//!
//! Each operation is one Lua script, so two concurrent requests cannot both pass the
//! limit and two concurrent answers cannot both use the code.

use std::time::Duration;

use domain::msisdn::Msisdn;
use rand::Rng;
use redis::aio::ConnectionManager;
use redis::Script;

/// The limits.
#[derive(Debug, Clone)]
pub struct OtpPolicy {
    /// How long a code is valid.
    pub ttl: Duration,
    /// Code requests allowed per MSISDN per window.
    pub max_requests: u32,
    /// The request window.
    pub window: Duration,
    /// The wrong answer that voids the code (the 6th).
    pub voiding_wrong_answer: u32,
}

impl Default for OtpPolicy {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(300),
            max_requests: 3,
            window: Duration::from_secs(3600),
            voiding_wrong_answer: 6,
        }
    }
}

/// What an answer turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right: the code is used up.
    Valid,
    /// Wrong: the code stays valid.
    Wrong,
    /// Wrong, and the last allowed: the code is void.
    Voided,
    /// No code pending (never requested, expired, used or voided).
    Missing,
}

const REQUEST: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if n > tonumber(ARGV[2]) then return -1 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'code', ARGV[3], 'wrong', 0)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return n
";

const VERIFY: &str = r"
local stored = redis.call('HGET', KEYS[1], 'code')
if not stored then return 0 end
if stored == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
local wrong = redis.call('HINCRBY', KEYS[1], 'wrong', 1)
if wrong >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return -2
end
return -1
";

/// The code store.
#[derive(Clone)]
pub struct OtpStore {
    redis: ConnectionManager,
    prefix: String,
    policy: OtpPolicy,
}

impl std::fmt::Debug for OtpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtpStore")
            .field("prefix", &self.prefix)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl OtpStore {
    /// A store on `redis` with keys under `prefix`.
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>, policy: OtpPolicy) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            policy,
        }
    }

    fn code_key(&self, msisdn: &Msisdn) -> String {
        format!("{}otp:code:{msisdn}", self.prefix)
    }

    fn requests_key(&self, msisdn: &Msisdn) -> String {
        format!("{}otp:requests:{msisdn}", self.prefix)
    }

    /// How long a code lives.
    pub fn ttl(&self) -> Duration {
        self.policy.ttl
    }

    /// A new code for `msisdn` (replacing any pending one), or `None` when the
    /// request limit of the window is reached.
    pub async fn issue(&self, msisdn: &Msisdn) -> Result<Option<String>, redis::RedisError> {
        let code = format!("{:06}", rand::thread_rng().gen_range(0..1_000_000u32));
        let mut con = self.redis.clone();
        let n: i64 = Script::new(REQUEST)
            .key(self.requests_key(msisdn))
            .key(self.code_key(msisdn))
            .arg(millis(self.policy.window))
            .arg(self.policy.max_requests)
            .arg(&code)
            .arg(millis(self.policy.ttl))
            .invoke_async(&mut con)
            .await?;
        Ok((n > 0).then_some(code))
    }

    /// Checks an answer.
    pub async fn verify(&self, msisdn: &Msisdn, answer: &str) -> Result<Verdict, redis::RedisError> {
        let mut con = self.redis.clone();
        let r: i64 = Script::new(VERIFY)
            .key(self.code_key(msisdn))
            .arg(answer)
            .arg(self.policy.voiding_wrong_answer)
            .invoke_async(&mut con)
            .await?;
        Ok(match r {
            1 => Verdict::Valid,
            -1 => Verdict::Wrong,
            -2 => Verdict::Voided,
            _ => Verdict::Missing,
        })
    }
}
