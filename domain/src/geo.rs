//! Positions on the earth and the service area.

use serde::{Deserialize, Serialize};

use crate::error::{DomainError, ErrorCode};

/// Mean earth radius used for every distance in the system (SPEC.md §3 Billing).
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A validated position: finite, lat in [-90, 90], lon in [-180, 180].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPoint")]
pub struct GeoPoint {
    lat: f64,
    lon: f64,
}

#[derive(Deserialize)]
struct RawPoint {
    lat: f64,
    lon: f64,
}

impl TryFrom<RawPoint> for GeoPoint {
    type Error = DomainError;
    fn try_from(raw: RawPoint) -> Result<Self, Self::Error> {
        GeoPoint::new(raw.lat, raw.lon)
    }
}

impl GeoPoint {
    /// A point, or `validation_failed` when a coordinate is not finite or out of range.
    pub fn new(lat: f64, lon: f64) -> Result<Self, DomainError> {
        if !lat.is_finite() || !lon.is_finite() {
            return Err(DomainError::validation("lat and lon must be finite numbers"));
        }
        if !(-90.0..=90.0).contains(&lat) {
            return Err(DomainError::validation(format!("lat {lat} is outside [-90, 90]")));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(DomainError::validation(format!(
                "lon {lon} is outside [-180, 180]"
            )));
        }
        Ok(Self { lat, lon })
    }

    /// Latitude in degrees.
    pub const fn lat(&self) -> f64 {
        self.lat
    }

    /// Longitude in degrees.
    pub const fn lon(&self) -> f64 {
        self.lon
    }

    /// Great-circle (haversine) distance in kilometres, R = 6371.0088 km.
    pub fn distance_km(&self, other: &GeoPoint) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }

    /// Haversine distance in metres.
    pub fn distance_m(&self, other: &GeoPoint) -> f64 {
        self.distance_km(other) * 1000.0
    }
}

/// The largest latitude Redis GEO accepts (`GEOADD` refuses beyond ±85.05112878°, the
/// Web Mercator limit). A service area never reaches past it, so no accepted position
/// can make a geo script fail half-way.
pub const REDIS_GEO_MAX_LAT: f64 = 85.051_128_78;

/// Whether Redis GEO can store the point (|lat| ≤ 85.05112878, |lon| ≤ 180).
pub fn redis_geo_accepts(lat: f64, lon: f64) -> bool {
    lat.is_finite()
        && lon.is_finite()
        && (-REDIS_GEO_MAX_LAT..=REDIS_GEO_MAX_LAT).contains(&lat)
        && (-180.0..=180.0).contains(&lon)
}

/// The rectangle where the service operates (Indonesia by default; configurable).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceArea {
    /// Southern edge, degrees.
    pub min_lat: f64,
    /// Northern edge, degrees.
    pub max_lat: f64,
    /// Western edge, degrees.
    pub min_lon: f64,
    /// Eastern edge, degrees.
    pub max_lon: f64,
}

impl Default for ServiceArea {
    /// Indonesia's bounding box: lat -11..6, lon 95..141.
    fn default() -> Self {
        Self {
            min_lat: -11.0,
            max_lat: 6.0,
            min_lon: 95.0,
            max_lon: 141.0,
        }
    }
}

impl ServiceArea {
    /// A service area, or why it cannot be one: every edge finite, south below north,
    /// west below east, longitudes within [-180, 180] and latitudes within Redis GEO's
    /// range (±85.05112878°), so that every position it accepts can be indexed.
    pub fn new(min_lat: f64, max_lat: f64, min_lon: f64, max_lon: f64) -> Result<Self, String> {
        let edges = [min_lat, max_lat, min_lon, max_lon];
        if edges.iter().any(|e| !e.is_finite()) {
            return Err("every edge of the service area must be a finite number".into());
        }
        if min_lat >= max_lat || min_lon >= max_lon {
            return Err("the service area's minimum edges must be below its maximum edges".into());
        }
        if !redis_geo_accepts(min_lat, min_lon) || !redis_geo_accepts(max_lat, max_lon) {
            return Err(format!(
                "the service area must lie within lat ±{REDIS_GEO_MAX_LAT} (where Redis GEO ends) and lon ±180"
            ));
        }
        Ok(Self {
            min_lat,
            max_lat,
            min_lon,
            max_lon,
        })
    }

    /// Whether the point lies inside the area (edges included).
    pub fn contains(&self, p: &GeoPoint) -> bool {
        (self.min_lat..=self.max_lat).contains(&p.lat) && (self.min_lon..=self.max_lon).contains(&p.lon)
    }

    /// `outside_service_area` unless the point is inside.
    pub fn check(&self, p: &GeoPoint, what: &str) -> Result<(), DomainError> {
        if self.contains(p) {
            Ok(())
        } else {
            Err(DomainError::new(
                ErrorCode::OutsideServiceArea,
                format!("{what} ({}, {}) is outside the service area", p.lat, p.lon),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_non_finite() {
        assert!(GeoPoint::new(91.0, 0.0).is_err());
        assert!(GeoPoint::new(0.0, -180.5).is_err());
        assert!(GeoPoint::new(f64::NAN, 0.0).is_err());
        assert!(GeoPoint::new(0.0, f64::INFINITY).is_err());
        assert!(GeoPoint::new(-90.0, 180.0).is_ok());
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // One degree of latitude is about 111.195 km with R = 6371.0088 km.
        let a = GeoPoint::new(0.0, 106.0).unwrap();
        let b = GeoPoint::new(1.0, 106.0).unwrap();
        assert!((a.distance_km(&b) - 111.195).abs() < 0.001);
    }

    #[test]
    fn deserializing_validates() {
        assert!(serde_json::from_str::<GeoPoint>(r#"{"lat": 100, "lon": 0}"#).is_err());
        let p: GeoPoint = serde_json::from_str(r#"{"lat": -6.2, "lon": 106.8}"#).unwrap();
        assert_eq!(p.lat(), -6.2);
    }

    #[test]
    fn a_service_area_never_leaves_redis_geo_range() {
        assert!(ServiceArea::new(-11.0, 6.0, 95.0, 141.0).is_ok());
        assert!(ServiceArea::new(-85.0, 85.0, -180.0, 180.0).is_ok());
        assert!(ServiceArea::new(-REDIS_GEO_MAX_LAT, REDIS_GEO_MAX_LAT, -180.0, 180.0).is_ok());
        for (a, b, c, d) in [
            (-11.0, 89.0, 95.0, 141.0),
            (-85.1, 6.0, 95.0, 141.0),
            (-11.0, 6.0, -181.0, 141.0),
            (6.0, -11.0, 95.0, 141.0),
            (-11.0, 6.0, 141.0, 95.0),
            (f64::NAN, 6.0, 95.0, 141.0),
        ] {
            assert!(ServiceArea::new(a, b, c, d).is_err(), "{a} {b} {c} {d}");
        }
    }

    #[test]
    fn every_point_of_a_valid_area_is_one_redis_geo_accepts() {
        let area = ServiceArea::new(-REDIS_GEO_MAX_LAT, REDIS_GEO_MAX_LAT, -180.0, 180.0).unwrap();
        for lat in [
            -90.0,
            -85.06,
            -REDIS_GEO_MAX_LAT,
            0.0,
            REDIS_GEO_MAX_LAT,
            85.06,
            89.9,
            90.0,
        ] {
            for lon in [-180.0, 0.0, 180.0] {
                let p = GeoPoint::new(lat, lon).unwrap();
                if area.contains(&p) {
                    assert!(redis_geo_accepts(p.lat(), p.lon()), "{lat} {lon}");
                } else {
                    assert_eq!(
                        area.check(&p, "x").unwrap_err().code,
                        ErrorCode::OutsideServiceArea
                    );
                }
            }
        }
    }

    #[test]
    fn service_area_is_indonesia_by_default() {
        let area = ServiceArea::default();
        assert!(area.contains(&GeoPoint::new(-6.2, 106.8).unwrap()));
        let singapore_north = GeoPoint::new(10.0, 104.0).unwrap();
        assert_eq!(
            area.check(&singapore_north, "pickup").unwrap_err().code,
            ErrorCode::OutsideServiceArea
        );
    }
}
