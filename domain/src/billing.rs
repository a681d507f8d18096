//! Billing: the exact integer arithmetic of SPEC.md §3 "Billing".
//!
//! Everything here is a pure function of whole metres, whole rupiah and basis points;
//! no floating point touches money. Floats appear only where the outside world speaks
//! them (a haversine distance, which is rounded to the metre once, and a JSON number
//! for the adjustment factor, which is read through its shortest decimal rendering).
//!
//! ## Layout
//! - Distances: [`metres`] (a haversine distance rounded to the metre) and
//!   [`km_from_metres`] (`distance_km` with 3 decimals).
//! - Trip segments: [`cost_of_distance`] and [`segment_cost`]. A segment costs
//!   `round(cum_km_after × rate) − round(cum_km_before × rate)`, so the segments of a
//!   ride always telescope to `round(total_km × rate)`.
//! - The driver's discount: [`AdjustmentFactor`], a newtype in basis points.
//! - The fare at arrival: [`FareBreakdown::compute`], clamp, discount, admin fee.
//! - Ledger rows: [`LedgerKind`], [`LedgerEntry`], [`Adjustment`].
//!
//! ## Invariants (proved by the property tests below)
//! - The ledger of a ride (its segment costs, the clamp entry, the discount entry) sums
//!   exactly to the adjusted fare.
//! - `admin_fee + driver_payout = adjusted_fare`, both non-negative.
//!
//! Rounding: "round" is round-half-up (`(x + 500) div 1000` with floor division), "floor"
//! is floor division; both are exact in integers. Intermediate products are taken in
//! `i128` and saturate into `i64`, so no input can overflow or panic.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::DomainError;
use crate::ids::{EntryId, RideId};
use crate::money::Rupiah;
use crate::policy::FarePolicy;

/// Basis points in 1 (the factor 1.0).
pub const BPS_PER_UNIT: u32 = 10_000;

/// Decimals an adjustment factor may carry (basis points).
const FACTOR_DECIMALS: usize = 4;

/// Saturating `i128` → `i64`: amounts never get near the limits, but a hostile
/// configuration must not make arithmetic panic.
fn saturate(x: i128) -> i64 {
    i64::try_from(x).unwrap_or(if x < 0 { i64::MIN } else { i64::MAX })
}

/// A haversine distance in metres rounded (half away from zero) to the whole metre,
/// the unit every billed distance is kept in. Negative or non-finite input gives 0.
pub fn metres(distance_m: f64) -> i64 {
    if distance_m.is_finite() && distance_m > 0.0 {
        // `as` saturates for floats beyond i64, which no distance on earth reaches.
        distance_m.round() as i64
    } else {
        0
    }
}

/// `distance_km` as published: whole metres / 1000, i.e. exactly 3 decimals (the f64
/// nearest to the decimal, which serializes as that decimal).
pub fn km_from_metres(m: i64) -> f64 {
    m as f64 / 1000.0
}

/// `round(km × rate)` for a distance of `m` whole metres, in integers:
/// `round_half_up(m × rate / 1000)`.
pub fn cost_of_distance(m: i64, rate_per_km: Rupiah) -> Rupiah {
    let scaled = i128::from(m) * i128::from(rate_per_km.get());
    Rupiah::new(saturate((scaled + 500).div_euclid(1000)))
}

/// The cost of the trip segment that takes the cumulative distance from
/// `cum_m_before` to `cum_m_after` metres:
/// `round(cum_km_after × rate) − round(cum_km_before × rate)`.
pub fn segment_cost(cum_m_before: i64, cum_m_after: i64, rate_per_km: Rupiah) -> Rupiah {
    cost_of_distance(cum_m_after, rate_per_km) - cost_of_distance(cum_m_before, rate_per_km)
}

/// What a billing-ledger entry is for (stored snake_case in `billing_ledger.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// An accepted segment of the trip trace.
    TripSegment,
    /// Raises a short trip to the minimum fare (positive).
    MinimumFare,
    /// Caps a long trip at the maximum fare (negative).
    MaximumFare,
    /// The driver lowered the price with an adjustment factor (negative).
    DriverDiscount,
}

impl LedgerKind {
    /// The stored name; also the `kind` part of a derived [`EntryId`].
    pub const fn as_str(self) -> &'static str {
        match self {
            LedgerKind::TripSegment => "trip_segment",
            LedgerKind::MinimumFare => "minimum_fare",
            LedgerKind::MaximumFare => "maximum_fare",
            LedgerKind::DriverDiscount => "driver_discount",
        }
    }
}

impl fmt::Display for LedgerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of a ride's billing ledger as carried by an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Derived from the ride id, the kind and an ordinal ([`EntryId::derive`]).
    pub entry_id: EntryId,
    /// What the entry is for.
    pub kind: LedgerKind,
    /// Signed amount the entry adds to the ride's price.
    pub cost: Rupiah,
}

/// An arrival-time correction of the price (the clamp, or the driver's discount),
/// before it is given an entry id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    /// `minimum_fare`, `maximum_fare` or `driver_discount`.
    pub kind: LedgerKind,
    /// Signed amount (never zero: a zero correction is not booked).
    pub cost: Rupiah,
}

impl Adjustment {
    /// The ledger entry of this adjustment on `ride`. A ride has at most one entry of
    /// each adjustment kind, so its ordinal is always 1.
    pub fn entry(self, ride: RideId) -> LedgerEntry {
        LedgerEntry {
            entry_id: EntryId::derive(ride, self.kind.as_str(), 1),
            kind: self.kind,
            cost: self.cost,
        }
    }
}

/// The driver's price factor in (0, 1], at most 4 decimals, kept exactly in basis
/// points (1..=10000). Default 1.
///
/// Serialized as a JSON number (`0.57`, `1`): `bps / 10000` as an f64, whose shortest
/// rendering is exactly the 4-decimal value, so it reads back to the same basis points.
/// Deserializes from a JSON number or a decimal string (`"0.57"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AdjustmentFactor(u32);

impl AdjustmentFactor {
    /// The factor 1: no discount.
    pub const ONE: AdjustmentFactor = AdjustmentFactor(BPS_PER_UNIT);

    /// A factor from basis points, 1..=10000.
    pub fn from_bps(bps: u32) -> Result<Self, DomainError> {
        if (1..=BPS_PER_UNIT).contains(&bps) {
            Ok(Self(bps))
        } else {
            Err(DomainError::validation(format!(
                "adjustment_factor of {bps} basis points is outside (0, 1]"
            )))
        }
    }

    /// Parses a decimal such as `0.57`, `1`, `1.0` or `0.0001` exactly. Refused with
    /// `validation_failed`: anything that is not a plain decimal, a value outside
    /// (0, 1], or a value with more than 4 significant decimals (trailing zeros do not
    /// count: `0.50000` is 0.5).
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let text = input.trim();
        let (negative, body) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (int_part, frac_part) = match body.split_once('.') {
            Some((int_part, frac_part)) => (int_part, Some(frac_part)),
            None => (body, None),
        };
        let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !is_digits(int_part) || frac_part.is_some_and(|f| !is_digits(f)) {
            return Err(DomainError::validation(format!(
                "adjustment_factor {input:?} is not a decimal number such as 0.85"
            )));
        }
        let int_digits = int_part.trim_start_matches('0');
        let frac_digits = frac_part.unwrap_or("").trim_end_matches('0');
        let is_zero = int_digits.is_empty() && frac_digits.is_empty();
        let above_one = match int_digits {
            "" => false,
            "1" => !frac_digits.is_empty(),
            _ => true,
        };
        if negative || is_zero || above_one {
            return Err(DomainError::validation(format!(
                "adjustment_factor {text} is outside (0, 1]"
            )));
        }
        if frac_digits.len() > FACTOR_DECIMALS {
            return Err(DomainError::validation(format!(
                "adjustment_factor {text} has more than {FACTOR_DECIMALS} decimals"
            )));
        }
        if int_digits == "1" {
            return Ok(Self::ONE);
        }
        // At most 4 ASCII digits, padded on the right: 0.57 → "5700".
        let bps = format!("{frac_digits:0<width$}", width = FACTOR_DECIMALS)
            .parse::<u32>()
            .map_err(|_| DomainError::validation(format!("adjustment_factor {text} is not a decimal")))?;
        Self::from_bps(bps)
    }

    /// For callers that only have a float: the float's shortest decimal rendering
    /// (Rust's `Display`, never scientific) is parsed exactly, so `0.57` is 5700 bps
    /// and `0.1 + 0.2` (0.30000000000000004) is refused. NaN and infinities are refused.
    pub fn from_f64(value: f64) -> Result<Self, DomainError> {
        if !value.is_finite() {
            return Err(DomainError::validation(
                "adjustment_factor must be a finite number",
            ));
        }
        Self::parse(&format!("{value}"))
    }

    /// The factor in basis points, 1..=10000.
    pub const fn bps(self) -> u32 {
        self.0
    }

    /// The factor as the nearest f64 (for display and JSON only, never for money).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(BPS_PER_UNIT)
    }

    /// `floor(amount × factor)`, exactly.
    pub fn apply_floor(self, amount: Rupiah) -> Rupiah {
        let scaled = i128::from(amount.get()) * i128::from(self.0);
        Rupiah::new(saturate(scaled.div_euclid(i128::from(BPS_PER_UNIT))))
    }
}

impl Default for AdjustmentFactor {
    fn default() -> Self {
        Self::ONE
    }
}

impl fmt::Display for AdjustmentFactor {
    /// The shortest decimal: `1`, `0.57`, `0.0001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (int, frac) = (self.0 / BPS_PER_UNIT, self.0 % BPS_PER_UNIT);
        if frac == 0 {
            write!(f, "{int}")
        } else {
            let digits = format!("{frac:04}");
            write!(f, "{int}.{}", digits.trim_end_matches('0'))
        }
    }
}

impl fmt::Debug for AdjustmentFactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AdjustmentFactor({self})")
    }
}

impl FromStr for AdjustmentFactor {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for AdjustmentFactor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for AdjustmentFactor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FactorVisitor;

        impl Visitor<'_> for FactorVisitor {
            type Value = AdjustmentFactor;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number in (0, 1] with at most 4 decimals")
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                AdjustmentFactor::from_f64(v).map_err(|e| E::custom(e.message))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                AdjustmentFactor::parse(&v.to_string()).map_err(|e| E::custom(e.message))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                AdjustmentFactor::parse(&v.to_string()).map_err(|e| E::custom(e.message))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                AdjustmentFactor::parse(v).map_err(|e| E::custom(e.message))
            }
        }

        deserializer.deserialize_any(FactorVisitor)
    }
}

/// The price of a ride at arrival, from its billed distance: a computed record (build
/// it with [`FareBreakdown::compute`]; the fields are public for reading and for
/// rebuilding it from an `arrived` event).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FareBreakdown {
    /// Billed distance: the sum of the accepted segments, whole metres.
    pub distance_m: i64,
    /// `round(distance_km × rate)`: what the trip segments add up to.
    pub base_fare: Rupiah,
    /// `base_fare` clamped to the minimum and maximum fare.
    pub fare: Rupiah,
    /// `fare − base_fare` as a `minimum_fare` or `maximum_fare` entry, when non-zero.
    pub fare_adjustment: Option<Adjustment>,
    /// The driver's factor (1 when none was given).
    pub adjustment_factor: AdjustmentFactor,
    /// `floor(fare × factor)`: what the passenger pays.
    pub adjusted_fare: Rupiah,
    /// `adjusted_fare − fare` as a `driver_discount` entry, when non-zero.
    pub discount: Option<Adjustment>,
    /// `floor(adjusted_fare × admin_fee_percent / 100)`: the platform's share.
    pub admin_fee: Rupiah,
    /// `adjusted_fare − admin_fee`: the driver's share.
    pub driver_payout: Rupiah,
}

impl FareBreakdown {
    /// Prices `distance_m` billed metres with the driver's factor under `policy`.
    pub fn compute(distance_m: i64, factor: AdjustmentFactor, policy: &FarePolicy) -> Self {
        let base_fare = cost_of_distance(distance_m, policy.rate_per_km);
        // max-then-min rather than `clamp`, which panics when a misconfigured minimum
        // exceeds the maximum; the maximum wins then.
        let fare = base_fare.max(policy.minimum_fare).min(policy.maximum_fare);
        let fare_adjustment = match fare.cmp(&base_fare) {
            std::cmp::Ordering::Greater => Some(Adjustment {
                kind: LedgerKind::MinimumFare,
                cost: fare - base_fare,
            }),
            std::cmp::Ordering::Less => Some(Adjustment {
                kind: LedgerKind::MaximumFare,
                cost: fare - base_fare,
            }),
            std::cmp::Ordering::Equal => None,
        };
        let adjusted_fare = factor.apply_floor(fare);
        let discount = (adjusted_fare != fare).then_some(Adjustment {
            kind: LedgerKind::DriverDiscount,
            cost: adjusted_fare - fare,
        });
        let admin_fee = Rupiah::new(saturate(
            (i128::from(adjusted_fare.get()) * i128::from(policy.admin_fee_percent)).div_euclid(100),
        ));
        Self {
            distance_m,
            base_fare,
            fare,
            fare_adjustment,
            adjustment_factor: factor,
            adjusted_fare,
            discount,
            admin_fee,
            driver_payout: adjusted_fare - admin_fee,
        }
    }

    /// The billed distance in km, 3 decimals.
    pub fn distance_km(&self) -> f64 {
        km_from_metres(self.distance_m)
    }

    /// The arrival-time ledger entries of `ride`: the clamp, then the discount.
    pub fn adjustment_entries(&self, ride: RideId) -> Vec<LedgerEntry> {
        [self.fare_adjustment, self.discount]
            .into_iter()
            .flatten()
            .map(|a| a.entry(ride))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use proptest::prelude::*;

    fn factor(s: &str) -> AdjustmentFactor {
        AdjustmentFactor::parse(s).unwrap()
    }

    /// A fare policy whose limits never clamp, at 1 rupiah per metre, to test the
    /// discount on a given fare.
    fn unclamped() -> FarePolicy {
        FarePolicy {
            rate_per_km: Rupiah::new(1000),
            minimum_fare: Rupiah::ZERO,
            maximum_fare: Rupiah::new(i64::MAX),
            ..FarePolicy::default()
        }
    }

    /// The distance that costs exactly `fare` under [`unclamped`].
    fn metres_for(fare: i64) -> i64 {
        fare
    }

    fn breakdown_for_fare(fare: i64, f: &str) -> FareBreakdown {
        let b = FareBreakdown::compute(metres_for(fare), factor(f), &unclamped());
        assert_eq!(b.fare, Rupiah::new(fare));
        b
    }

    #[test]
    fn spec_example_fare_10000_factor_0_8() {
        let b = breakdown_for_fare(10_000, "0.8");
        assert_eq!(
            (b.adjusted_fare.get(), b.admin_fee.get(), b.driver_payout.get()),
            (8000, 400, 7600)
        );
        assert_eq!(b.discount.map(|d| d.cost), Some(Rupiah::new(-2000)));
    }

    #[test]
    fn spec_example_fare_9600_factor_0_9() {
        let b = breakdown_for_fare(9600, "0.9");
        assert_eq!(
            (b.adjusted_fare.get(), b.admin_fee.get(), b.driver_payout.get()),
            (8640, 432, 8208)
        );
    }

    #[test]
    fn spec_example_fare_7500_factor_0_33() {
        let b = breakdown_for_fare(7500, "0.33");
        assert_eq!(
            (b.adjusted_fare.get(), b.admin_fee.get(), b.driver_payout.get()),
            (2475, 123, 2352)
        );
    }

    #[test]
    fn spec_example_fare_5000_factor_0_57_is_2850_not_a_float_artifact() {
        // 5000 × 0.57 in f64 is 2849.9999999999995; floor of that would be 2849.
        let b = breakdown_for_fare(5000, "0.57");
        assert_eq!(b.adjusted_fare, Rupiah::new(2850));
        let b = FareBreakdown::compute(
            metres_for(5000),
            AdjustmentFactor::from_f64(0.57).unwrap(),
            &unclamped(),
        );
        assert_eq!(b.adjusted_fare, Rupiah::new(2850));
    }

    #[test]
    fn short_trip_is_raised_to_the_minimum_fare_with_an_entry() {
        let b = FareBreakdown::compute(1234, AdjustmentFactor::ONE, &FarePolicy::default());
        assert_eq!(b.base_fare, Rupiah::new(3702));
        assert_eq!(b.fare, Rupiah::new(5000));
        assert_eq!(
            b.fare_adjustment,
            Some(Adjustment {
                kind: LedgerKind::MinimumFare,
                cost: Rupiah::new(1298)
            })
        );
        assert_eq!(b.discount, None);
        assert_eq!((b.admin_fee.get(), b.driver_payout.get()), (250, 4750));
    }

    #[test]
    fn long_trip_is_capped_at_the_maximum_fare_with_a_negative_entry() {
        let b = FareBreakdown::compute(200_000, AdjustmentFactor::ONE, &FarePolicy::default());
        assert_eq!(b.base_fare, Rupiah::new(600_000));
        assert_eq!(b.fare, Rupiah::new(500_000));
        assert_eq!(
            b.fare_adjustment,
            Some(Adjustment {
                kind: LedgerKind::MaximumFare,
                cost: Rupiah::new(-100_000)
            })
        );
    }

    #[test]
    fn fare_within_limits_books_no_clamp_entry_and_factor_one_no_discount() {
        let b = FareBreakdown::compute(3000, AdjustmentFactor::default(), &FarePolicy::default());
        assert_eq!(b.fare, Rupiah::new(9000));
        assert_eq!(b.fare_adjustment, None);
        assert_eq!(b.discount, None);
        assert_eq!(b.adjusted_fare, Rupiah::new(9000));
        assert!(b
            .adjustment_entries(RideId::from_uuid(uuid::Uuid::nil()))
            .is_empty());
    }

    #[test]
    fn adjustment_entries_have_derived_ids_with_ordinal_one() {
        let ride = RideId::from_uuid(uuid::Uuid::from_u128(7));
        let b = FareBreakdown::compute(100, factor("0.5"), &FarePolicy::default());
        let entries = b.adjustment_entries(ride);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].entry_id, EntryId::derive(ride, "minimum_fare", 1));
        assert_eq!(entries[1].entry_id, EntryId::derive(ride, "driver_discount", 1));
        assert_eq!(entries[1].cost, Rupiah::new(-2500));
    }

    #[test]
    fn misconfigured_minimum_above_maximum_does_not_panic() {
        let policy = FarePolicy {
            minimum_fare: Rupiah::new(10),
            maximum_fare: Rupiah::new(5),
            ..FarePolicy::default()
        };
        assert_eq!(
            FareBreakdown::compute(0, AdjustmentFactor::ONE, &policy).fare,
            Rupiah::new(5)
        );
    }

    #[test]
    fn cost_rounds_half_up_to_the_rupiah() {
        let rate = Rupiah::new(3000);
        assert_eq!(cost_of_distance(0, rate), Rupiah::ZERO);
        assert_eq!(cost_of_distance(1, rate), Rupiah::new(3));
        // 1 m at 500/km is exactly 0.5 rupiah: half up gives 1; at 499/km it is 0.499.
        assert_eq!(cost_of_distance(1, Rupiah::new(500)), Rupiah::new(1));
        assert_eq!(cost_of_distance(1, Rupiah::new(499)), Rupiah::ZERO);
        assert_eq!(cost_of_distance(1234, rate), Rupiah::new(3702));
    }

    #[test]
    fn segment_costs_telescope_to_the_rounded_total() {
        let rate = Rupiah::new(2999);
        let cums = [0, 11, 27, 1000, 1001, 12_345];
        let total: Rupiah = cums.windows(2).map(|w| segment_cost(w[0], w[1], rate)).sum();
        assert_eq!(total, cost_of_distance(12_345, rate));
    }

    #[test]
    fn metres_round_and_km_have_three_decimals() {
        assert_eq!(metres(10.4), 10);
        assert_eq!(metres(10.5), 11);
        assert_eq!(metres(f64::NAN), 0);
        assert_eq!(metres(-3.0), 0);
        assert_eq!(km_from_metres(1234), 1.234);
        assert_eq!(serde_json::to_string(&km_from_metres(1234)).unwrap(), "1.234");
        assert_eq!(serde_json::to_string(&km_from_metres(5)).unwrap(), "0.005");
    }

    #[test]
    fn factor_parses_exact_decimals() {
        assert_eq!(factor("0.57").bps(), 5700);
        assert_eq!(factor("1").bps(), 10_000);
        assert_eq!(factor("1.0").bps(), 10_000);
        assert_eq!(factor("1.0000").bps(), 10_000);
        assert_eq!(factor("0.0001").bps(), 1);
        assert_eq!(factor("0.9999").bps(), 9999);
        assert_eq!(factor("00.5").bps(), 5000);
        assert_eq!(factor(" 0.5 ").bps(), 5000);
        assert_eq!(
            factor("0.50000").bps(),
            5000,
            "trailing zeros are not decimals that matter"
        );
    }

    #[test]
    fn factor_outside_zero_one_is_refused_saying_so() {
        for bad in [
            "0",
            "0.0",
            "0.00000",
            "-0",
            "-0.5",
            "1.0001",
            "1.5",
            "2",
            "10",
            "100000000000000000000000",
        ] {
            let err = AdjustmentFactor::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationFailed, "{bad}");
            assert!(err.message.contains("outside (0, 1]"), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn factor_with_more_than_four_decimals_is_refused_saying_so() {
        for bad in ["0.12345", "0.00001", "0.99999"] {
            let err = AdjustmentFactor::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationFailed);
            assert!(
                err.message.contains("more than 4 decimals"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn factor_that_is_not_a_plain_decimal_is_refused() {
        for bad in [
            "", ".5", "1.", "abc", "0,5", "+0.5", "5e-1", "0.5.1", "NaN", "inf",
        ] {
            let err = AdjustmentFactor::parse(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::ValidationFailed, "{bad}");
        }
    }

    #[test]
    fn factor_from_f64_uses_the_shortest_decimal() {
        assert_eq!(AdjustmentFactor::from_f64(0.57).unwrap().bps(), 5700);
        assert_eq!(AdjustmentFactor::from_f64(1.0).unwrap().bps(), 10_000);
        assert_eq!(AdjustmentFactor::from_f64(0.0001).unwrap().bps(), 1);
        assert!(AdjustmentFactor::from_f64(0.1 + 0.2).is_err());
        assert!(AdjustmentFactor::from_f64(1e-7).is_err());
        assert!(AdjustmentFactor::from_f64(0.0).is_err());
        assert!(AdjustmentFactor::from_f64(-0.0).is_err());
        assert!(AdjustmentFactor::from_f64(f64::NAN).is_err());
        assert!(AdjustmentFactor::from_f64(f64::INFINITY).is_err());
        assert!(AdjustmentFactor::from_f64(1e300).is_err());
    }

    #[test]
    fn factor_serializes_as_a_json_number_and_reads_numbers_or_strings() {
        assert_eq!(serde_json::to_string(&factor("0.57")).unwrap(), "0.57");
        assert_eq!(serde_json::to_string(&AdjustmentFactor::ONE).unwrap(), "1.0");
        let read = |s: &str| serde_json::from_str::<AdjustmentFactor>(s);
        assert_eq!(read("0.57").unwrap().bps(), 5700);
        assert_eq!(read("1").unwrap().bps(), 10_000);
        assert_eq!(read("\"0.0001\"").unwrap().bps(), 1);
        assert!(read("0").is_err());
        assert!(read("-1").is_err());
        assert!(read("1.5").is_err());
        assert!(read("0.12345").is_err());
        assert!(read("\"x\"").is_err());
        assert!(read("true").is_err());
    }

    #[test]
    fn every_factor_round_trips_through_json_and_display() {
        for bps in 1..=BPS_PER_UNIT {
            let f = AdjustmentFactor::from_bps(bps).unwrap();
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(
                serde_json::from_str::<AdjustmentFactor>(&json).unwrap(),
                f,
                "{json}"
            );
            assert_eq!(AdjustmentFactor::parse(&f.to_string()).unwrap(), f);
            assert_eq!(AdjustmentFactor::from_f64(f.as_f64()).unwrap(), f);
        }
        assert!(AdjustmentFactor::from_bps(0).is_err());
        assert!(AdjustmentFactor::from_bps(10_001).is_err());
    }

    #[test]
    fn ledger_kinds_serialize_as_their_stored_names() {
        for kind in [
            LedgerKind::TripSegment,
            LedgerKind::MinimumFare,
            LedgerKind::MaximumFare,
            LedgerKind::DriverDiscount,
        ] {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.as_str())
            );
        }
    }

    proptest! {
        #[test]
        fn ledger_always_sums_to_the_adjusted_fare(
            segments in prop::collection::vec(10i64..5_000, 0..60),
            long_leg in prop::option::of(100_000i64..300_000),
            bps in 1u32..=BPS_PER_UNIT,
            rate in 1i64..10_000,
            admin_fee_percent in 0i64..=100,
        ) {
            let policy = FarePolicy { rate_per_km: Rupiah::new(rate), admin_fee_percent, ..FarePolicy::default() };
            let rate = policy.rate_per_km;
            let mut cum = 0i64;
            let mut ledger = Rupiah::ZERO;
            for seg in segments.iter().copied().chain(long_leg) {
                ledger = ledger + segment_cost(cum, cum + seg, rate);
                cum += seg;
            }
            prop_assert_eq!(ledger, cost_of_distance(cum, rate));

            let f = AdjustmentFactor::from_bps(bps).unwrap();
            let b = FareBreakdown::compute(cum, f, &policy);
            prop_assert_eq!(b.base_fare, ledger);
            let adjustments: Rupiah = [b.fare_adjustment, b.discount].into_iter().flatten().map(|a| a.cost).sum();
            prop_assert_eq!(ledger + adjustments, b.adjusted_fare);
            prop_assert_eq!(b.admin_fee + b.driver_payout, b.adjusted_fare);
            prop_assert!(b.admin_fee >= Rupiah::ZERO);
            prop_assert!(b.driver_payout >= Rupiah::ZERO);
            prop_assert!(b.fare >= policy.minimum_fare && b.fare <= policy.maximum_fare);
            prop_assert!(b.adjusted_fare <= b.fare);
            prop_assert!(b.fare_adjustment.is_none_or(|a| a.cost != Rupiah::ZERO));
            prop_assert!(b.discount.is_none_or(|a| a.cost < Rupiah::ZERO));
        }

        #[test]
        fn factor_parsing_agrees_with_basis_points(bps in 1u32..=BPS_PER_UNIT, extra_zeros in 0usize..3) {
            let f = AdjustmentFactor::from_bps(bps).unwrap();
            let text = format!("{}.{:04}{}", bps / BPS_PER_UNIT, bps % BPS_PER_UNIT, "0".repeat(extra_zeros));
            prop_assert_eq!(AdjustmentFactor::parse(&text).unwrap(), f);
        }
    }
}
