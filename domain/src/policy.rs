//! The business parameters of SPEC.md §3 with their defaults. The binary reads them from
//! the environment; the domain only receives them.

use serde::{Deserialize, Serialize};

use crate::geo::ServiceArea;
use crate::money::Rupiah;

/// Pricing: `BILLING_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FarePolicy {
    /// `BILLING_BASE_RATE_PER_KM`, rupiah per km.
    pub rate_per_km: Rupiah,
    /// `BILLING_MINIMUM_FARE`.
    pub minimum_fare: Rupiah,
    /// `BILLING_MAXIMUM_FARE`.
    pub maximum_fare: Rupiah,
    /// `BILLING_ADMIN_FEE_PERCENT`, whole percent.
    pub admin_fee_percent: i64,
}

impl Default for FarePolicy {
    fn default() -> Self {
        Self {
            rate_per_km: Rupiah::new(3000),
            minimum_fare: Rupiah::new(5000),
            maximum_fare: Rupiah::new(500_000),
            admin_fee_percent: 5,
        }
    }
}

/// The trip trace rules: `TRIP_*` and the start rule.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TripPolicy {
    /// `TRIP_JITTER_METERS`: closer than this to the last accepted point is jitter.
    pub jitter_m: f64,
    /// `TRIP_MAX_SPEED_KMH`: faster than this from the last accepted point is rejected.
    pub max_speed_kmh: f64,
    /// `ride_start` needs the driver within this many metres of the passenger.
    pub start_radius_m: f64,
    /// A `recorded_at` more than this many seconds ahead of the server clock is refused.
    pub future_tolerance_s: i64,
}

impl Default for TripPolicy {
    fn default() -> Self {
        Self {
            jitter_m: 10.0,
            max_speed_kmh: 200.0,
            start_radius_m: 100.0,
            future_tolerance_s: 5,
        }
    }
}

/// Matching: `MATCHING_*`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatchPolicy {
    /// `MATCHING_DEFAULT_RADIUS_KM`: the first round's radius.
    pub default_radius_km: f64,
    /// `MATCHING_MAX_RADIUS_KM`: the radius never grows past this.
    pub max_radius_km: f64,
    /// `MATCHING_MAX_DRIVERS_PER_REQUEST`: candidates per round.
    pub max_drivers_per_request: u32,
    /// `MATCHING_MAX_RETRIES`: rounds in all.
    pub max_rounds: u32,
    /// `MATCHING_RESPONSE_TIMEOUT_SEC`: how long a round waits.
    pub response_timeout_s: i64,
}

impl Default for MatchPolicy {
    fn default() -> Self {
        Self {
            default_radius_km: 5.0,
            max_radius_km: 20.0,
            max_drivers_per_request: 5,
            max_rounds: 3,
            response_timeout_s: 30,
        }
    }
}

impl MatchPolicy {
    /// The search radius of a round (1-based): doubling from the default, capped.
    pub fn radius_km(&self, round: u32) -> f64 {
        let factor = 2f64.powi(round.saturating_sub(1).min(30) as i32);
        (self.default_radius_km * factor).min(self.max_radius_km)
    }
}

/// Every parameter the domain needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Pricing.
    pub fare: FarePolicy,
    /// Trip trace rules.
    pub trip: TripPolicy,
    /// Matching.
    pub matching: MatchPolicy,
    /// Where the service operates.
    pub service_area: ServiceArea,
}
