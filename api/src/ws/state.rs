//! What a client is shown of its match and ride: the `session_state` frame sent first
//! on every connect, and the pushes derived from each event of the feed.
//!
//! Both read the aggregates through the command bus's handlers (cached, caught up to
//! the store), so a push carries the same fields whether it is built from the event or
//! from the state after a reconnect. Data that no event holds (a driver's vehicle)
//! comes from the `drivers` table.

use commands::pipeline::{parse_event, PipelineError};
use domain::billing::{metres, AdjustmentFactor, FareBreakdown};
use domain::matching::{Match, MatchEvent};
use domain::ride::{Ride, RideEvent};
use domain::{Actor, GeoPoint, MatchId, PaymentId, Policy, RideId, UserId};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::ApiError;
use crate::users;
use crate::AppState;

/// A push frame: `{"type", "data"}`, no `id`.
pub fn push(kind: &str, data: Value) -> Value {
    json!({ "type": kind, "data": data })
}

/// The straight-line pickup-to-destination distance priced like a fare.
pub fn fare_estimate(policy: &Policy, pickup: GeoPoint, destination: GeoPoint) -> i64 {
    let distance_m = metres(pickup.distance_m(&destination));
    FareBreakdown::compute(distance_m, AdjustmentFactor::ONE, &policy.fare)
        .fare
        .get()
}

/// A match as `session_state` shows it.
pub async fn match_view(state: &AppState, m: &Match) -> Result<Value, ApiError> {
    let (Some(match_id), Some(pickup), Some(destination)) = (m.match_id(), m.pickup(), m.destination())
    else {
        return Ok(Value::Null);
    };
    let mut view = json!({
        "match_id": match_id,
        "status": m.match_status(),
        "passenger_id": m.passenger_id(),
        "pickup": pickup,
        "destination": destination,
        "round": m.round(),
        "fare_estimate": fare_estimate(&state.config().policy, pickup, destination),
        "ride_id": m.ride_id(),
    });
    if let (Some(driver), Some(map)) = (m.accepted_driver(), view.as_object_mut()) {
        let vehicle = users::vehicle(state.pool(), driver.driver_id).await?;
        map.insert("driver_id".into(), json!(driver.driver_id));
        map.insert("distance_km".into(), json!(driver.distance_km));
        map.insert("eta_seconds".into(), json!(driver.eta_seconds));
        map.insert(
            "vehicle_type".into(),
            json!(vehicle.as_ref().map(|v| &v.vehicle_type)),
        );
        map.insert(
            "vehicle_plate".into(),
            json!(vehicle.as_ref().map(|v| &v.vehicle_plate)),
        );
    }
    Ok(view)
}

/// A ride as `session_state` shows it.
pub fn ride_view(ride: &Ride) -> Value {
    let Some(ride_id) = ride.ride_id() else {
        return Value::Null;
    };
    let mut view = json!({
        "ride_id": ride_id,
        "match_id": ride.match_id(),
        "driver_id": ride.driver_id(),
        "passenger_id": ride.passenger_id(),
        "pickup": ride.pickup(),
        "destination": ride.destination(),
        "status": ride.ride_status(),
        "created_at": ride.created_at(),
        "started_at": ride.started_at(),
        "distance_km": ride.distance_km(),
    });
    if let (Some(fare), Some(map)) = (ride.fare_breakdown(), view.as_object_mut()) {
        map.insert("fare".into(), json!(fare.fare));
        map.insert("adjustment_factor".into(), json!(fare.adjustment_factor));
        map.insert("amount".into(), json!(fare.adjusted_fare));
        map.insert("admin_fee".into(), json!(fare.admin_fee));
        map.insert("driver_payout".into(), json!(fare.driver_payout));
        map.insert(
            "payment".into(),
            json!({
                "payment_id": ride.payment_id(),
                "ride_id": ride_id,
                "adjusted_cost": fare.adjusted_fare,
                "admin_fee": fare.admin_fee,
                "driver_payout": fare.driver_payout,
                "status": ride.payment_status(),
                "attempts": ride.payment_attempts(),
            }),
        );
    }
    view
}

/// `session_state {match, ride}`: the user's open match and open ride, `null` where none.
pub async fn session_state(state: &AppState, actor: Actor) -> Result<Value, ApiError> {
    let holder = state
        .bus()
        .store()
        .holder_of(actor.user_id.as_uuid())
        .await
        .map_err(PipelineError::from)?;
    let (mut open_match, mut open_ride) = (Value::Null, Value::Null);
    match holder {
        Some((kind, id)) if kind == "match" => {
            let loaded = state.bus().matches().load(id).await?;
            open_match = match_view(state, &loaded.state).await?;
        }
        Some((kind, id)) if kind == "ride" => {
            let loaded = state.bus().rides().load(id).await?;
            open_ride = ride_view(&loaded.state);
        }
        _ => {
            if actor.role == domain::Role::Driver {
                open_match = pending_proposal(state, actor.user_id).await?;
            }
        }
    }
    Ok(push(
        "session_state",
        json!({ "match": open_match, "ride": open_ride }),
    ))
}

/// A proposal still pending for `driver` (checked against the match itself), shown
/// like a match with the driver's own distance and ETA.
async fn pending_proposal(state: &AppState, driver: UserId) -> Result<Value, ApiError> {
    for match_id in state.proposals().of(driver) {
        let loaded = state.bus().matches().load(match_id.as_uuid()).await?;
        let m = &loaded.state;
        let Some(candidate) = m.candidates().iter().find(|c| c.driver_id == driver).copied() else {
            continue;
        };
        let mut view = match_view(state, m).await?;
        if let Some(map) = view.as_object_mut() {
            map.insert("distance_km".into(), json!(candidate.distance_km));
            map.insert("eta_seconds".into(), json!(candidate.eta_seconds));
        }
        return Ok(view);
    }
    Ok(Value::Null)
}

/// One event of the feed (the JetStream envelope; only what the pushes need).
#[derive(Debug, Clone, Deserialize)]
pub struct FeedEvent {
    /// Global position.
    pub position: i64,
    /// `match`, `ride`, ...
    pub aggregate_type: String,
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// snake_case name.
    pub event_type: String,
    /// The domain event's fields.
    pub payload: Value,
}

/// The pushes an event causes: to whom, what.
pub async fn pushes_for(state: &AppState, event: &FeedEvent) -> Result<Vec<(UserId, Value)>, ApiError> {
    match event.aggregate_type.as_str() {
        "match" => match parse_event::<MatchEvent>(&event.event_type, &event.payload) {
            Ok(e) => {
                let match_id = MatchId::from_uuid(event.aggregate_id);
                state.proposals().note(match_id, &e);
                match_pushes(state, match_id, e).await
            }
            Err(error) => {
                tracing::warn!(%error, position = event.position, "unreadable match event on the feed");
                Ok(Vec::new())
            }
        },
        "ride" => match parse_event::<RideEvent>(&event.event_type, &event.payload) {
            Ok(e) => ride_pushes(state, RideId::from_uuid(event.aggregate_id), e).await,
            Err(error) => {
                tracing::warn!(%error, position = event.position, "unreadable ride event on the feed");
                Ok(Vec::new())
            }
        },
        _ => Ok(Vec::new()),
    }
}

fn withdrawn(match_id: MatchId, drivers: &[UserId]) -> Vec<(UserId, Value)> {
    drivers
        .iter()
        .map(|d| (*d, push("match_withdrawn", json!({ "match_id": match_id }))))
        .collect()
}

async fn match_pushes(
    state: &AppState,
    match_id: MatchId,
    event: MatchEvent,
) -> Result<Vec<(UserId, Value)>, ApiError> {
    Ok(match event {
        MatchEvent::Proposed { candidates, .. } => {
            let loaded = state.bus().matches().load(match_id.as_uuid()).await?;
            let m = &loaded.state;
            let (Some(pickup), Some(destination)) = (m.pickup(), m.destination()) else {
                return Ok(Vec::new());
            };
            let fare = fare_estimate(&state.config().policy, pickup, destination);
            candidates
                .iter()
                .map(|c| {
                    let data = json!({
                        "match_id": match_id,
                        "passenger_id": m.passenger_id(),
                        "pickup": pickup,
                        "destination": destination,
                        "distance_km": c.distance_km,
                        "eta_seconds": c.eta_seconds,
                        "fare_estimate": fare,
                    });
                    (c.driver_id, push("match_proposal", data))
                })
                .collect()
        }
        MatchEvent::DriverAccepted {
            driver_id,
            distance_km,
            eta_seconds,
            withdrawn_from,
            ..
        } => {
            let loaded = state.bus().matches().load(match_id.as_uuid()).await?;
            let vehicle = users::vehicle(state.pool(), driver_id).await?;
            let mut out = withdrawn(match_id, &withdrawn_from);
            if let Some(passenger) = loaded.state.passenger_id() {
                let data = json!({
                    "match_id": match_id,
                    "driver_id": driver_id,
                    "vehicle_type": vehicle.as_ref().map(|v| &v.vehicle_type),
                    "vehicle_plate": vehicle.as_ref().map(|v| &v.vehicle_plate),
                    "distance_km": distance_km,
                    "eta_seconds": eta_seconds,
                });
                out.push((passenger, push("match_accepted", data)));
            }
            out
        }
        // The passenger turned the accepted driver down: that driver's match is gone.
        MatchEvent::DriverRejected { driver_id } => withdrawn(match_id, &[driver_id]),
        MatchEvent::RoundTimedOut { withdrawn_from, .. } => withdrawn(match_id, &withdrawn_from),
        MatchEvent::Confirmed {
            ride_id,
            driver_id,
            passenger_id,
            ..
        } => {
            let data = json!({ "match_id": match_id, "ride_id": ride_id });
            vec![
                (driver_id, push("match_confirmed", data.clone())),
                (passenger_id, push("match_confirmed", data)),
            ]
        }
        MatchEvent::Cancelled {
            driver_id,
            withdrawn_from,
            ..
        } => {
            let mut drivers = withdrawn_from;
            drivers.extend(driver_id);
            withdrawn(match_id, &drivers)
        }
        MatchEvent::Expired {
            passenger_id,
            driver_id,
            withdrawn_from,
        } => {
            let mut out = withdrawn(match_id, &withdrawn_from);
            let data = json!({ "match_id": match_id });
            out.push((passenger_id, push("match_expired", data.clone())));
            if let Some(driver) = driver_id {
                out.push((driver, push("match_expired", data)));
            }
            out
        }
        MatchEvent::Failed { passenger_id, reason } => vec![(
            passenger_id,
            push(
                "match_failed",
                json!({ "match_id": match_id, "reason": reason.as_str() }),
            ),
        )],
        MatchEvent::Requested { .. }
        | MatchEvent::DriverDeclined { .. }
        | MatchEvent::RoundStarted { .. } => Vec::new(),
    })
}

fn both(ride: &Ride, frame: Value) -> Vec<(UserId, Value)> {
    ride.driver_id()
        .into_iter()
        .chain(ride.passenger_id())
        .map(|u| (u, frame.clone()))
        .collect()
}

async fn ride_pushes(
    state: &AppState,
    ride_id: RideId,
    event: RideEvent,
) -> Result<Vec<(UserId, Value)>, ApiError> {
    Ok(match event {
        RideEvent::Created {
            match_id,
            driver_id,
            passenger_id,
            pickup,
            destination,
            ..
        } => {
            let data = json!({
                "ride_id": ride_id,
                "match_id": match_id,
                "driver_id": driver_id,
                "passenger_id": passenger_id,
                "pickup": pickup,
                "destination": destination,
                "status": "PENDING",
            });
            vec![
                (driver_id, push("ride_pickup", data.clone())),
                (passenger_id, push("ride_pickup", data)),
            ]
        }
        RideEvent::Started { started_at, .. } => {
            let loaded = state.bus().rides().load(ride_id.as_uuid()).await?;
            both(
                &loaded.state,
                push(
                    "ride_started",
                    json!({ "ride_id": ride_id, "started_at": started_at }),
                ),
            )
        }
        RideEvent::Arrived {
            distance_km,
            fare,
            adjustment_factor,
            adjusted_fare,
            admin_fee,
            driver_payout,
            payment_id,
            ..
        } => {
            let loaded = state.bus().rides().load(ride_id.as_uuid()).await?;
            let data = json!({
                "ride_id": ride_id,
                "payment_id": payment_id,
                "distance_km": distance_km,
                "fare": fare,
                "adjustment_factor": adjustment_factor,
                "amount": adjusted_fare,
                "admin_fee": admin_fee,
                "driver_payout": driver_payout,
            });
            loaded
                .state
                .passenger_id()
                .map(|p| (p, push("payment_request", data)))
                .into_iter()
                .collect()
        }
        RideEvent::Completed {
            driver_id,
            passenger_id,
            completed_at,
            fare,
            adjusted_fare,
            admin_fee,
            driver_payout,
            distance_km,
        } => {
            let data = json!({
                "ride": {
                    "ride_id": ride_id,
                    "status": "COMPLETED",
                    "driver_id": driver_id,
                    "passenger_id": passenger_id,
                    "distance_km": distance_km,
                    "fare": fare,
                    "adjusted_fare": adjusted_fare,
                    "admin_fee": admin_fee,
                    "driver_payout": driver_payout,
                    "completed_at": completed_at,
                },
                "payment": {
                    "payment_id": PaymentId::for_ride(ride_id),
                    "ride_id": ride_id,
                    "adjusted_cost": adjusted_fare,
                    "admin_fee": admin_fee,
                    "driver_payout": driver_payout,
                    "status": "ACCEPTED",
                },
            });
            vec![
                (driver_id, push("ride_completed", data.clone())),
                (passenger_id, push("ride_completed", data)),
            ]
        }
        RideEvent::Cancelled {
            driver_id,
            passenger_id,
            by,
            reason,
            ..
        } => {
            let data = json!({ "ride_id": ride_id, "by": by, "reason": reason });
            vec![
                (driver_id, push("ride_cancelled", data.clone())),
                (passenger_id, push("ride_cancelled", data)),
            ]
        }
        RideEvent::TripPointRecorded { .. }
        | RideEvent::TripPointRejected { .. }
        | RideEvent::PaymentDeclined { .. }
        | RideEvent::PaymentFailed { .. }
        | RideEvent::PaymentAccepted { .. } => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fare_estimates_are_priced_like_fares() {
        let policy = Policy::default();
        let here = GeoPoint::new(-6.2, 106.8).unwrap();
        // Next to nothing costs the minimum fare.
        assert_eq!(fare_estimate(&policy, here, here), policy.fare.minimum_fare.get());
        let far = GeoPoint::new(-6.3, 106.8).unwrap();
        let km = here.distance_km(&far);
        let expected = (km * 3000.0).round() as i64;
        assert!((fare_estimate(&policy, here, far) - expected).abs() <= 3, "{km}");
    }
}
