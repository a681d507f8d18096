//! `GET /v1/console/live`: the live map's feed, as server-sent events.
//!
//! Every [`INTERVAL`] the stream sends one `snapshot` event: every online driver's last
//! position with whether they are available or busy (read from the Redis geo
//! projection's keys in two round trips, whatever the number of drivers), the open
//! rides with their pickup, destination and driver's position (from the `rides` read
//! model), and the number of matches still looking for a driver. A snapshot replaces the
//! previous one whole, so a console that missed one, or reconnects, is right again at
//! the next.
//!
//! Drivers are sent as one flat array of `lat, lon, state` triples (no ids, five
//! decimals, about 1 m): 10,000 drivers are some 220 kB a second, and the page draws
//! them without building an object per driver.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use domain::location::decode_position;
use futures::Stream;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ErrorResponse};
use crate::token::Analyst;
use crate::AppState;

/// How often a snapshot is sent.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The most open rides one snapshot carries (the newest).
pub const MAX_RIDES: i64 = 2000;

/// A driver's state in [`LiveDrivers::points`].
pub mod state {
    /// Online, but neither available nor in a match or ride (e.g. a stale ping).
    pub const ONLINE: u8 = 0;
    /// In `drivers:available`: may be proposed a match.
    pub const AVAILABLE: u8 = 1;
    /// In an open match or ride.
    pub const BUSY: u8 = 2;
}

/// The service area's bounding box (SPEC.md §3).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Area {
    /// South edge.
    pub min_lat: f64,
    /// North edge.
    pub max_lat: f64,
    /// West edge.
    pub min_lon: f64,
    /// East edge.
    pub max_lon: f64,
}

/// The online drivers.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct LiveDrivers {
    /// Online drivers with a known position.
    pub online: usize,
    /// Of them, available.
    pub available: usize,
    /// Of them, in an open match or ride.
    pub busy: usize,
    /// `lat, lon, state` for each driver, flat; state 0 online, 1 available, 2 busy.
    pub points: Vec<f64>,
}

/// An open ride.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveRide {
    /// The ride.
    pub ride_id: Uuid,
    /// `PENDING`, `IN_PROGRESS` or `ARRIVED`.
    pub status: String,
    /// `[lat, lon]`.
    pub pickup: [f64; 2],
    /// `[lat, lon]`.
    pub destination: [f64; 2],
    /// The driver's last known `[lat, lon]`, if any.
    pub driver: Option<[f64; 2]>,
}

/// One `snapshot` event.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveSnapshot {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// The service area.
    pub service_area: Area,
    /// The online drivers.
    pub drivers: LiveDrivers,
    /// The open rides, newest first.
    pub rides: Vec<LiveRide>,
    /// Matches still looking for a driver or a confirmation.
    pub searching: i64,
}

/// One server-sent event of the live feed, as it is framed on the wire.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LiveEvent {
    /// Always `snapshot`.
    pub event: String,
    /// The JSON text of a [`LiveSnapshot`] (`at`, `service_area`, `drivers`, `rides`,
    /// `searching`).
    pub data: String,
}

/// Analysts: a `snapshot` event every second (`text/event-stream`; the data of each
/// is a [`LiveSnapshot`] as JSON text).
#[utoipa::path(get, path = "/v1/console/live", tag = "console", security(("bearer" = [])),
    responses((status = 200, body = LiveEvent, content_type = "text/event-stream"),
        (status = 401, body = ErrorResponse), (status = 403, body = ErrorResponse)))]
pub async fn live(
    State(state): State<AppState>,
    analyst: Analyst,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // The first snapshot is taken before answering, so a failing Redis or database is
    // an error status rather than a silent, empty stream.
    let first = snapshot(&state).await?;
    tracing::info!(user_id = %analyst.0.user_id, "console live feed opened");
    let stream = futures::stream::unfold(
        (state, Some(first), tokio::time::interval(INTERVAL)),
        |(state, pending, mut ticks)| async move {
            ticks.tick().await;
            let event = match pending {
                Some(snapshot) => encode(&snapshot),
                None => match snapshot(&state).await {
                    Ok(snapshot) => encode(&snapshot),
                    Err(error) => {
                        tracing::warn!(%error, "console snapshot failed");
                        Event::default().event("unavailable").data("{}")
                    }
                },
            };
            Some((Ok(event), (state, None, ticks)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn encode(snapshot: &LiveSnapshot) -> Event {
    match serde_json::to_string(snapshot) {
        Ok(json) => Event::default().event("snapshot").data(json),
        Err(_) => Event::default().event("unavailable").data("{}"),
    }
}

fn round5(x: f64) -> f64 {
    (x * 1e5).round() / 1e5
}

type RideRow = (Uuid, String, f64, f64, f64, f64, Uuid);

/// One snapshot of the drivers and open rides.
pub async fn snapshot(state: &AppState) -> Result<LiveSnapshot, ApiError> {
    let area = state.config().policy.service_area;
    let rides: Vec<RideRow> = sqlx::query_as(
        "SELECT ride_id, status, pickup_lat, pickup_lon, destination_lat, destination_lon, driver_id \
         FROM rides WHERE status IN ('PENDING', 'IN_PROGRESS', 'ARRIVED') \
         ORDER BY created_at DESC LIMIT $1",
    )
    .bind(MAX_RIDES)
    .fetch_all(state.pool())
    .await?;
    let searching: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM matches WHERE status IN ('SEARCHING', 'PROPOSED', 'DRIVER_ACCEPTED')",
    )
    .fetch_one(state.pool())
    .await?;

    let mut drivers = LiveDrivers::default();
    let mut ride_drivers: Vec<Option<[f64; 2]>> = vec![None; rides.len()];
    if let Some(geo) = state.geo() {
        let keys = geo.keys();
        let mut con = state.redis().clone();
        let (online, available, busy, offline): (Vec<String>, Vec<String>, Vec<String>, Vec<String>) =
            redis::pipe()
                .cmd("ZRANGE")
                .arg(&keys.online)
                .arg(0)
                .arg(-1)
                .cmd("ZRANGE")
                .arg(&keys.available)
                .arg(0)
                .arg(-1)
                .cmd("HKEYS")
                .arg(&keys.busy)
                .cmd("SMEMBERS")
                .arg(&keys.offline)
                .query_async(&mut con)
                .await?;
        let available: HashSet<String> = available.into_iter().collect();
        let busy: HashSet<String> = busy.into_iter().collect();
        let offline: HashSet<String> = offline.into_iter().collect();
        let online: Vec<String> = online.into_iter().filter(|d| !offline.contains(d)).collect();
        // One HMGET for the online drivers and the open rides' drivers.
        let mut wanted: Vec<String> = online.clone();
        wanted.extend(rides.iter().map(|r| r.6.to_string()));
        let positions: Vec<Option<String>> = if wanted.is_empty() {
            Vec::new()
        } else {
            redis::cmd("HMGET")
                .arg(&keys.positions)
                .arg(&wanted)
                .query_async(&mut con)
                .await?
        };
        drivers.points.reserve(online.len() * 3);
        for (id, raw) in online.iter().zip(&positions) {
            let Some((point, _)) = raw.as_deref().and_then(decode_position) else {
                continue;
            };
            let s = if available.contains(id) {
                drivers.available += 1;
                state::AVAILABLE
            } else if busy.contains(id) {
                drivers.busy += 1;
                state::BUSY
            } else {
                state::ONLINE
            };
            drivers.online += 1;
            drivers
                .points
                .extend([round5(point.lat()), round5(point.lon()), f64::from(s)]);
        }
        for (slot, raw) in ride_drivers.iter_mut().zip(positions.iter().skip(online.len())) {
            *slot = raw
                .as_deref()
                .and_then(decode_position)
                .map(|(p, _)| [round5(p.lat()), round5(p.lon())]);
        }
    }
    Ok(LiveSnapshot {
        at: state.clock().now(),
        service_area: Area {
            min_lat: area.min_lat,
            max_lat: area.max_lat,
            min_lon: area.min_lon,
            max_lon: area.max_lon,
        },
        drivers,
        rides: rides
            .into_iter()
            .zip(ride_drivers)
            .map(
                |((ride_id, status, plat, plon, dlat, dlon, _), driver)| LiveRide {
                    ride_id,
                    status,
                    pickup: [plat, plon],
                    destination: [dlat, dlon],
                    driver,
                },
            )
            .collect(),
        searching,
    })
}
