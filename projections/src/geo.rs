//! The Redis geo projection: the GEO set `drivers:available` of SPEC.md §4 — drivers
//! who are online, fresh (a ping within `LOCATION_AVAILABILITY_TTL_SECONDS`) and not in
//! an open match or ride — and the analysts' `nearby` query over it.
//!
//! Two inputs meet here. Pings (from the `LOCATION` stream, see [`crate::location`])
//! say where a driver is and whether they are online. The event feed
//! (`migrations::read_feed`) says who is busy: every event's [`Reservation`]s are
//! mirrored into the `participants:busy` hash (user → holding aggregate) with the event
//! store's exact semantics — a release or transfer only acts when the emitting
//! aggregate is the holder — so a late `ride.completed` never frees a driver who has
//! already accepted the next match.
//!
//! Availability is a *function* of that state (position ∧ online ∧ fresh ∧ ¬busy) and
//! is recomputed, inside the same Lua script, for every driver a write touches. So the
//! order in which pings and events arrive does not matter, and rebuilding from feed
//! position 0 plus the latest ping of every driver yields the live set.
//!
//! ## Exactly once (SPEC.md §5, guarantee 4)
//! A feed batch is applied by one script that first compares the stored checkpoint with
//! the one the batch was read after (compare-and-set: a second process that projected
//! the same batch first wins, the other re-reads), then writes the reservations, the
//! recomputed availability and the new checkpoint. Redis runs a script whole or not at
//! all, and persists it as one MULTI/EXEC block, so a crash can never leave the data
//! ahead of, or behind, the checkpoint. The script only issues commands on keys of known
//! types with arguments built from typed values, so it cannot fail half-way.
//!
//! ## Keys
//! `<prefix>nebengjek:<store_id>:` + the names in [`domain::location::keys`].

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::location::{encode_position, keys, Ping};
use domain::matching::MatchEvent;
use domain::ride::RideEvent;
use domain::{DomainEvent, GeoPoint, Reservation, UserId};
use migrations::StoredEvent;
use redis::aio::ConnectionManager;
use redis::Script;
use sqlx::PgPool;
use tracing::Instrument as _;
use uuid::Uuid;

/// Where "now" comes from (injected so that tests move time).
pub type Now = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock as a [`Now`].
pub fn system_now() -> Now {
    Arc::new(Utc::now)
}

/// Why the projection could not do its work.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL failed or is unreachable.
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    /// A stored event that cannot be read.
    #[error("event at position {position} ({event_type}) is unreadable: {reason}")]
    Corrupt {
        /// Its position.
        position: i64,
        /// Its type.
        event_type: String,
        /// Why.
        reason: String,
    },
    /// A query argument out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
}

/// The full key names of one deployment.
#[derive(Debug, Clone)]
pub struct GeoKeys {
    /// `drivers:available`.
    pub available: String,
    /// `drivers:online`.
    pub online: String,
    /// `drivers:offline`.
    pub offline: String,
    /// `participants:busy`.
    pub busy: String,
    /// `positions`.
    pub positions: String,
    /// `checkpoint:geo`.
    pub checkpoint: String,
}

impl GeoKeys {
    /// The keys under `<prefix>nebengjek:<store_id>:`.
    pub fn new(prefix: &str, store_id: Uuid) -> Self {
        let k = |name| keys::key(prefix, store_id, name);
        Self {
            available: k(keys::DRIVERS_AVAILABLE),
            online: k(keys::DRIVERS_ONLINE),
            offline: k(keys::DRIVERS_OFFLINE),
            busy: k(keys::BUSY),
            positions: k(keys::POSITIONS),
            checkpoint: k(keys::GEO_CHECKPOINT),
        }
    }

    /// Every key, for tests that clean up after themselves or simulate a flush.
    pub fn all(&self) -> [&str; 6] {
        [
            &self.available,
            &self.online,
            &self.offline,
            &self.busy,
            &self.positions,
            &self.checkpoint,
        ]
    }
}

/// A driver near a point (`GET /v1/drivers/nearby`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NearbyDriver {
    /// The driver.
    pub driver_id: UserId,
    /// Where (as stored by Redis: GEO cells are accurate to well under a metre).
    pub lat: f64,
    /// Where.
    pub lon: f64,
    /// From the query point, km.
    pub distance_km: f64,
}

/// What applying one feed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Nothing new in the feed.
    UpToDate,
    /// Applied events up to this position.
    Applied(i64),
    /// Another process moved the checkpoint first; nothing was written.
    Lost,
}

/// Batch sizes: feed events per script, pings per script.
pub const FEED_BATCH: i64 = 500;

/// The geo index: writes (pings, feed batches, sweeps) and the `nearby` query.
#[derive(Clone)]
pub struct GeoIndex {
    redis: ConnectionManager,
    keys: Arc<GeoKeys>,
    ttl_ms: i64,
    now: Now,
}

impl fmt::Debug for GeoIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeoIndex")
            .field("keys", &self.keys)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

// Whether GEOADD takes the position (lat within ±85.05112878, lon within ±180). Every
// GEOADD of the scripts asks first: a script that failed half-way would leave the writes
// before it in place (Redis does not roll a script back). The service area keeps such
// positions out (domain::ServiceArea), so this guards what was stored before it did.
const GEO_OK_LUA: &str = r"
local function geo_ok(lat, lon)
  local la, lo = tonumber(lat), tonumber(lon)
  return la ~= nil and lo ~= nil and la >= -85.05112878 and la <= 85.05112878 and lo >= -180 and lo <= 180
end
";

/// A script's text with the guard put in.
fn with_geo_guard(script: &str) -> String {
    script.replacen("GEO_OK", GEO_OK_LUA, 1)
}

// KEYS: positions, online, busy, available, offline. ARGV: cutoff, then per ping
// id, lon, lat, at_ms, active ('1' beacon on, '0' beacon off, 'k' position only:
// online unless the last beacon said offline), encoded position.
// A ping older than the driver's stored position is dropped first (a redelivered or
// replayed ping must not move a driver back: the command path records positions too).
const PINGS_LUA: &str = r"
GEO_OK
local total = (#ARGV - 1) / 6
local all = {}
for i = 0, total - 1 do all[#all + 1] = ARGV[2 + i * 6] end
local stored = redis.call('HMGET', KEYS[1], unpack(all))
local A = {ARGV[1]}
for i = 0, total - 1 do
  local b = 2 + i * 6
  local old = stored[i + 1] and tonumber(string.match(stored[i + 1], ',(%-?%d+)$'))
  if not old or old <= tonumber(ARGV[b + 3]) then
    for k = 0, 5 do A[#A + 1] = ARGV[b + k] end
  end
end
local cutoff = tonumber(A[1])
local n = (#A - 1) / 6
if n == 0 then return 0 end
local hset, ids, on, off, keep = {}, {}, {}, {}, {}
for i = 0, n - 1 do
  local b = 2 + i * 6
  local id = A[b]
  ids[#ids + 1] = id
  hset[#hset + 1] = id
  hset[#hset + 1] = A[b + 5]
  local a = A[b + 4]
  if a == '1' then on[#on + 1] = id elseif a == '0' then off[#off + 1] = id else keep[#keep + 1] = id end
end
redis.call('HSET', KEYS[1], unpack(hset))
if #on > 0 then redis.call('SREM', KEYS[5], unpack(on)) end
if #off > 0 then
  redis.call('SADD', KEYS[5], unpack(off))
  redis.call('ZREM', KEYS[2], unpack(off))
end
local offline = {}
if #keep > 0 then
  local flags = redis.call('SMISMEMBER', KEYS[5], unpack(keep))
  for j, id in ipairs(keep) do offline[id] = flags[j] == 1 end
end
local online = {}
for i = 0, n - 1 do
  local b = 2 + i * 6
  local a = A[b + 4]
  if a == '1' or (a == 'k' and not offline[A[b]]) then
    online[#online + 1] = A[b + 3]
    online[#online + 1] = A[b]
  end
end
if #online > 0 then redis.call('ZADD', KEYS[2], unpack(online)) end
local busy = redis.call('HMGET', KEYS[3], unpack(ids))
local add, rem = {}, {}
for i = 0, n - 1 do
  local b = 2 + i * 6
  local a = A[b + 4]
  local is_on = a == '1' or (a == 'k' and not offline[A[b]])
  if is_on and not busy[i + 1] and tonumber(A[b + 3]) >= cutoff and geo_ok(A[b + 2], A[b + 1]) then
    add[#add + 1] = A[b + 1]
    add[#add + 1] = A[b + 2]
    add[#add + 1] = A[b]
  else
    rem[#rem + 1] = A[b]
  end
end
if #add > 0 then redis.call('GEOADD', KEYS[4], unpack(add)) end
if #rem > 0 then redis.call('ZREM', KEYS[4], unpack(rem)) end
return #add / 3
";

const EVENTS_LUA: &str = r"
GEO_OK
local current = redis.call('GET', KEYS[5]) or '0'
if current ~= ARGV[1] then return -1 end
local cutoff = tonumber(ARGV[3])
local touched, order = {}, {}
local n = (#ARGV - 3) / 4
for i = 0, n - 1 do
  local b = 4 + i * 4
  local op, user, holder, to = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  if op == 'C' then
    redis.call('HSET', KEYS[1], user, holder)
  else
    local held = redis.call('HGET', KEYS[1], user)
    if held == holder then
      if op == 'R' then redis.call('HDEL', KEYS[1], user) else redis.call('HSET', KEYS[1], user, to) end
    end
  end
  if not touched[user] then touched[user] = true; order[#order + 1] = user end
end
for _, user in ipairs(order) do
  if redis.call('HEXISTS', KEYS[1], user) == 1 then
    redis.call('ZREM', KEYS[4], user)
  else
    local seen = redis.call('ZSCORE', KEYS[2], user)
    local pos = redis.call('HGET', KEYS[3], user)
    if seen and pos and tonumber(seen) >= cutoff then
      local lat, lon = string.match(pos, '^([^,]+),([^,]+),')
      if lat and geo_ok(lat, lon) then redis.call('GEOADD', KEYS[4], lon, lat, user) end
    end
  end
end
redis.call('SET', KEYS[5], ARGV[2])
return n
";

const SWEEP_LUA: &str = r"
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 2000)
if #stale > 0 then
  redis.call('ZREM', KEYS[1], unpack(stale))
  redis.call('ZREM', KEYS[2], unpack(stale))
end
return #stale
";

/// A reservation change as the scripts take it: op, user, holder, new holder.
fn reservation_ops(event: &StoredEvent) -> Result<Vec<[String; 4]>, GeoError> {
    let corrupt = |reason: String| GeoError::Corrupt {
        position: event.position,
        event_type: event.event_type.clone(),
        reason,
    };
    let tagged = serde_json::json!({ "event_type": event.event_type, "payload": event.payload });
    let reservations: Vec<Reservation> = match event.aggregate_type.as_str() {
        "match" => serde_json::from_value::<MatchEvent>(tagged)
            .map_err(|e| corrupt(e.to_string()))?
            .reservations(),
        "ride" => serde_json::from_value::<RideEvent>(tagged)
            .map_err(|e| corrupt(e.to_string()))?
            .reservations(),
        _ => Vec::new(),
    };
    let holder = format!("{}:{}", event.aggregate_type, event.aggregate_id);
    Ok(reservations
        .into_iter()
        .map(|r| match r {
            Reservation::Claim(u) => ["C".into(), u.to_string(), holder.clone(), String::new()],
            Reservation::Release(u) => ["R".into(), u.to_string(), holder.clone(), String::new()],
            Reservation::Transfer { user, to_type, to_id } => [
                "T".into(),
                user.to_string(),
                holder.clone(),
                format!("{to_type}:{to_id}"),
            ],
        })
        .collect())
}

impl GeoIndex {
    /// An index over `redis` with the given keys; availability lasts `ttl` after a ping.
    pub fn new(redis: ConnectionManager, keys: GeoKeys, ttl: std::time::Duration, now: Now) -> Self {
        Self {
            redis,
            keys: Arc::new(keys),
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            now,
        }
    }

    /// The key names.
    pub fn keys(&self) -> &GeoKeys {
        &self.keys
    }

    fn cutoff_ms(&self) -> i64 {
        (self.now)().timestamp_millis().saturating_sub(self.ttl_ms)
    }

    /// Applies pings in one script (the last ping of a driver in the batch wins).
    /// Returns how many drivers are available after it.
    pub async fn apply_pings(&self, pings: &[Ping]) -> Result<usize, GeoError> {
        if pings.is_empty() {
            return Ok(0);
        }
        // Last one wins: keep each driver's last ping, in stream order.
        let mut last = std::collections::HashMap::with_capacity(pings.len());
        for (i, p) in pings.iter().enumerate() {
            last.insert(p.driver_id, i);
        }
        let script = Script::new(&with_geo_guard(PINGS_LUA));
        let mut inv = script.prepare_invoke();
        inv.key(&self.keys.positions)
            .key(&self.keys.online)
            .key(&self.keys.busy)
            .key(&self.keys.available)
            .key(&self.keys.offline)
            .arg(self.cutoff_ms());
        for (i, p) in pings.iter().enumerate() {
            if last.get(&p.driver_id) != Some(&i) {
                continue;
            }
            inv.arg(p.driver_id.to_string())
                .arg(p.point.lon())
                .arg(p.point.lat())
                .arg(p.at.timestamp_millis())
                .arg(match p.is_active {
                    Some(true) => "1",
                    Some(false) => "0",
                    None => "k",
                })
                .arg(encode_position(p.point, p.at));
        }
        let mut conn = self.redis.clone();
        let added: i64 = inv.invoke_async(&mut conn).await?;
        metrics::counter!("nebengjek_location_pings_applied_total").increment(pings.len() as u64);
        Ok(usize::try_from(added).unwrap_or(0))
    }

    /// The last feed position applied (0 when the key is missing: a fresh or flushed
    /// Redis), and whether the key exists.
    pub async fn checkpoint(&self) -> Result<Option<i64>, GeoError> {
        let mut conn = self.redis.clone();
        let raw: Option<i64> = redis::cmd("GET")
            .arg(&self.keys.checkpoint)
            .query_async(&mut conn)
            .await?;
        Ok(raw)
    }

    /// Reads the feed after the stored checkpoint and applies up to `limit` events in one
    /// script together with the new checkpoint.
    pub async fn project_once(&self, pool: &PgPool, limit: i64) -> Result<BatchOutcome, GeoError> {
        let after = self.checkpoint().await?.unwrap_or(0);
        let events = migrations::read_feed(pool, after, limit).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(BatchOutcome::UpToDate);
        };
        let mut ops = Vec::new();
        for event in &events {
            ops.extend(reservation_ops(event)?);
        }
        self.apply_feed_batch(after, last, &ops).await
    }

    /// The one script that writes a feed batch's effects and its checkpoint. Public so
    /// that tests can drive it with a given batch.
    pub async fn apply_feed_batch(
        &self,
        after: i64,
        last: i64,
        ops: &[[String; 4]],
    ) -> Result<BatchOutcome, GeoError> {
        let span = tracing::debug_span!("geo_projection_batch", after, last, ops = ops.len());
        let script = Script::new(&with_geo_guard(EVENTS_LUA));
        let mut inv = script.prepare_invoke();
        inv.key(&self.keys.busy)
            .key(&self.keys.online)
            .key(&self.keys.positions)
            .key(&self.keys.available)
            .key(&self.keys.checkpoint)
            .arg(after.to_string())
            .arg(last.to_string())
            .arg(self.cutoff_ms());
        for op in ops {
            inv.arg(&op[0]).arg(&op[1]).arg(&op[2]).arg(&op[3]);
        }
        let mut conn = self.redis.clone();
        let applied: i64 = inv.invoke_async(&mut conn).instrument(span).await?;
        if applied < 0 {
            return Ok(BatchOutcome::Lost);
        }
        metrics::gauge!("nebengjek_geo_projection_position").set(last as f64);
        Ok(BatchOutcome::Applied(last))
    }

    /// Projects until the feed is exhausted; returns the checkpoint reached.
    pub async fn catch_up(&self, pool: &PgPool) -> Result<i64, GeoError> {
        loop {
            match self.project_once(pool, FEED_BATCH).await? {
                BatchOutcome::UpToDate => return Ok(self.checkpoint().await?.unwrap_or(0)),
                BatchOutcome::Applied(_) | BatchOutcome::Lost => {}
            }
        }
    }

    /// Drops drivers whose last ping is older than the TTL from the online and available
    /// sets; returns how many.
    pub async fn sweep(&self) -> Result<usize, GeoError> {
        let script = Script::new(SWEEP_LUA);
        let mut total = 0;
        loop {
            let mut conn = self.redis.clone();
            let n: i64 = script
                .key(&self.keys.online)
                .key(&self.keys.available)
                .arg(self.cutoff_ms())
                .invoke_async(&mut conn)
                .await?;
            total += usize::try_from(n).unwrap_or(0);
            if n < 2000 {
                return Ok(total);
            }
        }
    }

    /// Available drivers within `radius_km` of (`lat`, `lon`), nearest first, at most
    /// `limit` (SPEC.md §4, `GET /v1/drivers/nearby`).
    pub async fn nearby(
        &self,
        lat: f64,
        lon: f64,
        radius_km: f64,
        limit: usize,
    ) -> Result<Vec<NearbyDriver>, GeoError> {
        let from = GeoPoint::new(lat, lon).map_err(|e| GeoError::InvalidQuery(e.message))?;
        if !(radius_km.is_finite() && radius_km > 0.0 && radius_km <= 100.0) {
            return Err(GeoError::InvalidQuery(format!(
                "radius_km must be in (0, 100], got {radius_km}"
            )));
        }
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.redis.clone();
        let reply: Vec<(String, f64, (f64, f64))> = redis::cmd("GEOSEARCH")
            .arg(&self.keys.available)
            .arg("FROMLONLAT")
            .arg(from.lon())
            .arg(from.lat())
            .arg("BYRADIUS")
            .arg(radius_km)
            .arg("km")
            .arg("ASC")
            .arg("COUNT")
            .arg(limit)
            .arg("WITHDIST")
            .arg("WITHCOORD")
            .query_async(&mut conn)
            .await?;
        Ok(reply
            .into_iter()
            .filter_map(|(member, distance_km, (lon, lat))| {
                Some(NearbyDriver {
                    driver_id: member.parse().ok()?,
                    lat,
                    lon,
                    distance_km,
                })
            })
            .collect())
    }

    /// Every available driver id (tests and operators; O(n)).
    pub async fn available(&self) -> Result<Vec<UserId>, GeoError> {
        let mut conn = self.redis.clone();
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&self.keys.available)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        let mut ids: Vec<UserId> = members.iter().filter_map(|m| m.parse().ok()).collect();
        ids.sort();
        Ok(ids)
    }

    /// Deletes every key of this index (operators' rebuild; tests).
    pub async fn delete_all(&self) -> Result<(), GeoError> {
        let mut conn = self.redis.clone();
        redis::cmd("DEL")
            .arg(&self.keys.all()[..])
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_names_its_holder_and_a_transfer_its_target() {
        let ride = Uuid::from_u128(7);
        let driver = UserId::from_uuid(Uuid::from_u128(1));
        let passenger = UserId::from_uuid(Uuid::from_u128(2));
        let event = StoredEvent {
            position: 3,
            aggregate_type: "match".into(),
            aggregate_id: Uuid::from_u128(9),
            sequence: 4,
            event_type: "confirmed".into(),
            event_version: 1,
            payload: serde_json::json!({
                "ride_id": ride, "driver_id": driver, "passenger_id": passenger,
                "pickup": {"lat": -6.2, "lon": 106.8}, "destination": {"lat": -6.1, "lon": 106.9},
                "confirmed_at": "2026-11-22T08:00:00Z"
            }),
            metadata: serde_json::json!({}),
            recorded_at: Utc::now(),
            hash: Vec::new(),
        };
        let ops = reservation_ops(&event).unwrap();
        let holder = format!("match:{}", Uuid::from_u128(9));
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[1],
            [
                "T".to_string(),
                driver.to_string(),
                holder,
                format!("ride:{ride}")
            ]
        );
        let bad = StoredEvent {
            payload: serde_json::json!({"nonsense": true}),
            ..event
        };
        assert!(matches!(
            reservation_ops(&bad),
            Err(GeoError::Corrupt { position: 3, .. })
        ));
    }
}
