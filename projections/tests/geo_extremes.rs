//! No geo script fails half-way (issue 13): every position the service accepts is one
//! Redis GEO takes, and a position stored before the service area was enforced (lat
//! 89.9: a valid `GeoPoint`, beyond GEO's ±85.05112878°) is skipped by the scripts'
//! guard instead of failing `GEOADD` after the script's earlier writes. Real PostgreSQL
//! and Redis.

mod geo_support;
use geo_support as support;

use chrono::TimeDelta;
use domain::geo::REDIS_GEO_MAX_LAT;
use domain::location::Ping;
use domain::matching::MatchEvent;
use domain::{GeoPoint, ServiceArea, UserId};
use support::{append, world, World};
use uuid::Uuid;

fn user() -> UserId {
    UserId::from_uuid(Uuid::now_v7())
}

fn ping(w: &World, driver: UserId, lat: f64, lon: f64) -> Ping {
    Ping {
        driver_id: driver,
        point: GeoPoint::new(lat, lon).unwrap(),
        is_active: Some(true),
        at: w.clock.now(),
    }
}

fn sorted(mut ids: Vec<UserId>) -> Vec<UserId> {
    ids.sort();
    ids
}

/// The widest service area configuration accepts: its corners are indexed.
#[tokio::test]
async fn the_corners_of_the_widest_service_area_are_indexed() {
    let w = world().await;
    let area = ServiceArea::new(-REDIS_GEO_MAX_LAT, REDIS_GEO_MAX_LAT, -180.0, 180.0).unwrap();
    let corners = [
        (REDIS_GEO_MAX_LAT, 180.0),
        (-REDIS_GEO_MAX_LAT, -180.0),
        (REDIS_GEO_MAX_LAT, -180.0),
        (-REDIS_GEO_MAX_LAT, 180.0),
        (0.0, 0.0),
    ];
    let drivers: Vec<UserId> = corners.iter().map(|_| user()).collect();
    let pings: Vec<Ping> = drivers
        .iter()
        .zip(corners)
        .map(|(d, (lat, lon))| {
            let p = ping(&w, *d, lat, lon);
            area.check(&p.point, "corner").expect("inside the area");
            p
        })
        .collect();
    w.index
        .apply_pings(&pings)
        .await
        .expect("the script takes every accepted position");
    assert_eq!(sorted(w.index.available().await.unwrap()), sorted(drivers));
    w.cleanup().await;
}

/// A position beyond GEO's range in a batch: the other drivers of the batch are indexed,
/// the script does not fail, and the feed script that re-adds a released driver from the
/// stored position does not fail either (its checkpoint moves).
#[tokio::test]
async fn a_position_beyond_geo_range_never_fails_a_script_half_way() {
    let w = world().await;
    let (polar, honest) = (user(), user());
    w.index
        .apply_pings(&[ping(&w, polar, 89.9, 0.0), ping(&w, honest, -6.2, 106.8)])
        .await
        .expect("the pings script skips what GEOADD would refuse");
    assert_eq!(w.index.available().await.unwrap(), vec![honest]);

    // The feed: polar is claimed by a match, then released; the release re-adds the
    // driver from the stored (polar) position, which the guard skips.
    let (m, passenger) = (Uuid::now_v7(), user());
    let accepted = MatchEvent::DriverAccepted {
        driver_id: polar,
        distance_km: 1.0,
        eta_seconds: 120,
        accepted_at: w.clock.now(),
        deadline: w.clock.now() + TimeDelta::seconds(30),
        withdrawn_from: vec![],
    };
    append(&w.pool, "match", m, &accepted).await;
    let cancelled = MatchEvent::Cancelled {
        passenger_id: passenger,
        driver_id: Some(polar),
        cancelled_at: w.clock.now(),
        withdrawn_from: vec![polar],
    };
    let last = append(&w.pool, "match", m, &cancelled).await;
    w.index
        .catch_up(&w.pool)
        .await
        .expect("the feed script skips what GEOADD would refuse");
    assert_eq!(w.index.checkpoint().await.unwrap(), Some(last));
    assert_eq!(w.index.available().await.unwrap(), vec![honest]);
    w.cleanup().await;
}
