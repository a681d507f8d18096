//! Drivers' pings and the names shared by everything that carries or indexes them.
//!
//! `commands` (the ping publisher, the matcher, `RedisPositions`) and `projections` (the
//! location consumer and the Redis geo projection) never depend on each other; they
//! meet here: the ping's wire shape, the JetStream subject, and the documented Redis
//! key names and value formats (README.md, "Redis keys").

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::geo::GeoPoint;
use crate::ids::UserId;

/// Default JetStream stream for pings (`LOCATION_STREAM`).
pub const DEFAULT_STREAM: &str = "LOCATION";

/// The stream's subjects: `location.driver.<driver_id>`.
pub const SUBJECTS: &str = "location.driver.*";

/// Pings older than this are useless to everybody: the stream forgets them (seconds).
pub const STREAM_MAX_AGE_S: u64 = 3600;

/// The subject a driver's pings are published on: `location.driver.<driver_id>` on the
/// default stream. JetStream streams may not share subjects, so a stream with another
/// name (tests give each their own) carries its subjects under its name:
/// `<stream>.location.driver.<driver_id>`.
pub fn subject(stream: &str, driver: UserId) -> String {
    format!("{}{driver}", subject_prefix(stream))
}

/// The stream's subject filter (`location.driver.*`, or `<stream>.location.driver.*`).
pub fn subjects(stream: &str) -> String {
    format!("{}*", subject_prefix(stream))
}

fn subject_prefix(stream: &str) -> String {
    if stream == DEFAULT_STREAM {
        "location.driver.".to_owned()
    } else {
        format!("{stream}.location.driver.")
    }
}

/// One driver position report: a `beacon_update` (`is_active: Some(..)` as sent) or a
/// `location_update` (`is_active: None`: a position, which keeps the driver's online
/// state — online unless their last beacon said offline).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    /// The driver.
    pub driver_id: UserId,
    /// Where.
    pub point: GeoPoint,
    /// Whether the driver is now online (accepting proposals); `None` leaves it as it is.
    #[serde(default)]
    pub is_active: Option<bool>,
    /// When the server received it (or the client's `recorded_at`).
    pub at: DateTime<Utc>,
}

/// Redis key names. Every key is `<prefix>nebengjek:<store_id>:<name>`: namespaced by
/// the event store's identity so a deployment pointed at a new database never inherits
/// the old one's positions or checkpoints, with a free prefix for test isolation.
pub mod keys {
    use uuid::Uuid;

    /// GEO set of available drivers (member = driver id): online, fresh, not in an open
    /// match or ride. The analysts' `GET /v1/drivers/nearby` reads it.
    pub const DRIVERS_AVAILABLE: &str = "drivers:available";
    /// ZSET of online drivers, score = last ping, Unix milliseconds.
    pub const DRIVERS_ONLINE: &str = "drivers:online";
    /// SET of drivers whose last beacon said offline (a `location_update` does not bring
    /// them online).
    pub const DRIVERS_OFFLINE: &str = "drivers:offline";
    /// HASH user id → `<aggregate_type>:<aggregate_id>` holding them (open match or ride).
    pub const BUSY: &str = "participants:busy";
    /// HASH user id → last known position, see [`super::encode_position`].
    pub const POSITIONS: &str = "positions";
    /// STRING: the last event-feed position the geo projection applied.
    pub const GEO_CHECKPOINT: &str = "checkpoint:geo";

    /// The full key of `name`.
    pub fn key(prefix: &str, store_id: Uuid, name: &str) -> String {
        format!("{prefix}nebengjek:{store_id}:{name}")
    }
}

/// A position as stored in the `positions` hash: `<lat>,<lon>,<unix_ms>`.
pub fn encode_position(point: GeoPoint, at: DateTime<Utc>) -> String {
    format!("{},{},{}", point.lat(), point.lon(), at.timestamp_millis())
}

/// The inverse of [`encode_position`]; `None` for anything malformed.
pub fn decode_position(raw: &str) -> Option<(GeoPoint, DateTime<Utc>)> {
    let mut parts = raw.split(',');
    let lat = parts.next()?.parse().ok()?;
    let lon = parts.next()?.parse().ok()?;
    let ms = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        GeoPoint::new(lat, lon).ok()?,
        DateTime::from_timestamp_millis(ms)?,
    ))
}

/// Estimated time to drive `distance_km` at `speed_kmh` (straight line), whole seconds
/// rounded up.
pub fn eta_seconds(distance_km: f64, speed_kmh: f64) -> u32 {
    if !(distance_km.is_finite() && speed_kmh.is_finite() && speed_kmh > 0.0) || distance_km <= 0.0 {
        return 0;
    }
    let s = (distance_km / speed_kmh * 3600.0).ceil();
    if s >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        s as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_to_the_millisecond() {
        let p = GeoPoint::new(-6.2, 106.8).unwrap();
        let at = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        assert_eq!(decode_position(&encode_position(p, at)), Some((p, at)));
        assert_eq!(decode_position("1,2"), None);
        assert_eq!(decode_position("100,2,3"), None);
    }

    #[test]
    fn eta_at_30_kmh_is_two_minutes_per_km() {
        assert_eq!(eta_seconds(1.0, 30.0), 120);
        assert_eq!(eta_seconds(0.0, 30.0), 0);
        assert_eq!(eta_seconds(2.5, 30.0), 300);
    }

    #[test]
    fn keys_are_namespaced_by_store() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            keys::key("t1:", id, keys::DRIVERS_AVAILABLE),
            "t1:nebengjek:00000000-0000-0000-0000-000000000000:drivers:available"
        );
        let driver = UserId::from_uuid(id);
        assert_eq!(
            subject("LOCATION", driver),
            "location.driver.00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(subjects("T1"), "T1.location.driver.*");
        assert_eq!(subjects(DEFAULT_STREAM), SUBJECTS);
    }
}
