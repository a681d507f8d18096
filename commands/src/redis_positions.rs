//! [`RedisPositions`]: the [`Positions`] port backed by Redis, so the 100 m ride-start
//! rule sees the last position a driver or passenger reported to *any* process.
//!
//! One hash, `<prefix>nebengjek:<store_id>:positions`, field = user id, value
//! `<lat>,<lon>,<unix_ms>` (`domain::location::encode_position`). The location
//! consumer of `projections` writes drivers' pings into the same hash, which is how a
//! driver's position reaches the geo index and this port alike.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::location::{decode_position, encode_position, keys};
use domain::{GeoPoint, UserId};
use redis::aio::ConnectionManager;
use uuid::Uuid;

use crate::ports::Positions;

/// Sets a user's position unless the stored one is newer (the geo projection writes the
/// same hash from the `LOCATION` stream, later and possibly redelivered). KEYS: the
/// hash. ARGV: user id, encoded position, its time in ms.
const RECORD_LUA: &str = r"
local old = redis.call('HGET', KEYS[1], ARGV[1])
local at = old and tonumber(string.match(old, ',(%-?%d+)$'))
if at and at > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

static RECORD: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RECORD_LUA));

/// Last known positions in Redis.
#[derive(Clone)]
pub struct RedisPositions {
    redis: ConnectionManager,
    key: String,
}

impl std::fmt::Debug for RedisPositions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPositions")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisPositions {
    /// Positions under `<prefix>nebengjek:<store_id>:positions`.
    pub fn new(redis: ConnectionManager, prefix: &str, store_id: Uuid) -> Self {
        Self {
            redis,
            key: keys::key(prefix, store_id, keys::POSITIONS),
        }
    }

    /// The hash's full key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The user's last known position and when it was reported.
    pub async fn last_with_time(
        &self,
        user: UserId,
    ) -> Result<Option<(GeoPoint, DateTime<Utc>)>, redis::RedisError> {
        let mut conn = self.redis.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&self.key)
            .arg(user.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(raw.as_deref().and_then(decode_position))
    }
}

#[async_trait]
impl Positions for RedisPositions {
    async fn record(&self, user: UserId, point: GeoPoint, at: DateTime<Utc>) {
        let mut conn = self.redis.clone();
        let result: Result<i64, _> = RECORD
            .key(&self.key)
            .arg(user.to_string())
            .arg(encode_position(point, at))
            .arg(at.timestamp_millis())
            .invoke_async(&mut conn)
            .await;
        if let Err(error) = result {
            // The port cannot fail: a lost position makes `ride_start` answer `too_far`
            // until the next ping, which is what a missing position means anyway.
            tracing::warn!(%user, %error, "cannot record a position in Redis");
        }
    }

    async fn last(&self, user: UserId) -> Option<GeoPoint> {
        match self.last_with_time(user).await {
            Ok(found) => found.map(|(p, _)| p),
            Err(error) => {
                tracing::warn!(%user, %error, "cannot read a position from Redis");
                None
            }
        }
    }
}
