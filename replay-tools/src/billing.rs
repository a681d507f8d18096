//! Billing history replayed from the events: one ride in full, or the ledger of a
//! period — each compared with what the read models say.

use chrono::{DateTime, Utc};
use domain::ride::{Ride, RideEvent};
use domain::Aggregate;
use projections::rows::{diff, fold_rides, read_live, LedgerRow, RideFold, RowDiff};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One step of a ride's billing history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BillingLine {
    /// The event's global position.
    pub position: i64,
    /// When the event was recorded.
    pub recorded_at: DateTime<Utc>,
    /// Who caused it (`driver <id>`, `passenger <id>`, `system`).
    pub actor: String,
    /// What happened (`trip_segment`, `minimum_fare`, `payment_declined`, ...).
    pub what: String,
    /// Distance of a segment, or of the trip at arrival, in metres.
    pub distance_m: Option<i64>,
    /// Money booked by this step (a ledger entry's cost, a fee, a charge), rupiah.
    pub amount: Option<i64>,
    /// Anything else worth reading.
    pub detail: String,
}

/// A ride's billing, replayed.
#[derive(Debug, Serialize)]
pub struct RideBilling {
    pub ride_id: Uuid,
    pub lines: Vec<BillingLine>,
    /// Status after the last event.
    pub status: String,
    pub distance_m: i64,
    /// Sum of the ledger entries replayed.
    pub ledger_total: i64,
    pub fare: Option<i64>,
    pub adjusted_fare: Option<i64>,
    pub admin_fee: Option<i64>,
    pub driver_payout: Option<i64>,
    pub payment_status: Option<String>,
    pub payment_attempts: u32,
    /// Where the read models disagree with the replay (empty: they agree).
    pub differences: Vec<String>,
}

fn actor_of(metadata: &serde_json::Value) -> String {
    let actor = &metadata["actor"];
    match (actor["role"].as_str(), actor["user_id"].as_str()) {
        (Some("system") | None, _) => "system".into(),
        (Some(role), Some(id)) => format!("{role} {id}"),
        (Some(role), None) => role.to_owned(),
    }
}

/// Replays one ride's billing. `None` when the ride has no events.
pub async fn ride(pool: &PgPool, ride_id: Uuid) -> Result<Option<RideBilling>, anyhow::Error> {
    let events = migrations::read_stream(pool, "ride", ride_id, 0).await?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut state = Ride::default();
    let mut lines = Vec::new();
    let mut ledger_total = 0i64;
    for stored in &events {
        let event: RideEvent = serde_json::from_value(serde_json::json!({
            "event_type": stored.event_type, "payload": stored.payload
        }))
        .map_err(|e| {
            anyhow::anyhow!(
                "ride {ride_id} #{} ({}) unreadable: {e}",
                stored.sequence,
                stored.event_type
            )
        })?;
        let line = |what: &str, distance_m: Option<i64>, amount: Option<i64>, detail: String| BillingLine {
            position: stored.position,
            recorded_at: stored.recorded_at,
            actor: actor_of(&stored.metadata),
            what: what.to_owned(),
            distance_m,
            amount,
            detail,
        };
        match &event {
            RideEvent::Created {
                driver_id,
                passenger_id,
                ..
            } => lines.push(line(
                "created",
                None,
                None,
                format!("driver {driver_id}, passenger {passenger_id}"),
            )),
            RideEvent::Started { rate_per_km, .. } => {
                lines.push(line(
                    "started",
                    None,
                    None,
                    format!("rate {} per km", rate_per_km.get()),
                ));
            }
            RideEvent::TripPointRecorded {
                segment_m,
                cum_m,
                cost,
                ..
            } => {
                ledger_total += cost.get();
                lines.push(line(
                    "trip_segment",
                    Some(*segment_m),
                    Some(cost.get()),
                    format!("trip so far {:.3} km", *cum_m as f64 / 1000.0),
                ));
            }
            RideEvent::TripPointRejected { reason, .. } => {
                lines.push(line(
                    "trip_point_rejected",
                    None,
                    None,
                    format!("{reason:?} (not billed)"),
                ));
            }
            RideEvent::Arrived {
                distance_m,
                base_fare,
                fare,
                fare_adjustment,
                adjustment_factor,
                adjusted_fare,
                discount,
                admin_fee,
                driver_payout,
                ..
            } => {
                lines.push(line(
                    "arrived",
                    Some(*distance_m),
                    Some(base_fare.get()),
                    "metered fare round(total km × rate)".into(),
                ));
                if let Some(entry) = fare_adjustment {
                    ledger_total += entry.cost.get();
                    lines.push(line(
                        entry.kind.as_str(),
                        None,
                        Some(entry.cost.get()),
                        format!("fare clamped to {}", fare.get()),
                    ));
                }
                if let Some(entry) = discount {
                    ledger_total += entry.cost.get();
                    lines.push(line(
                        entry.kind.as_str(),
                        None,
                        Some(entry.cost.get()),
                        format!(
                            "factor {} (basis points {})",
                            adjustment_factor.bps() as f64 / 10_000.0,
                            adjustment_factor.bps()
                        ),
                    ));
                }
                lines.push(line(
                    "adjusted_fare",
                    None,
                    Some(adjusted_fare.get()),
                    "what the passenger pays".into(),
                ));
                lines.push(line(
                    "admin_fee",
                    None,
                    Some(admin_fee.get()),
                    "platform fee, floor(5%)".into(),
                ));
                lines.push(line(
                    "driver_payout",
                    None,
                    Some(driver_payout.get()),
                    "adjusted − admin fee".into(),
                ));
            }
            RideEvent::PaymentDeclined { attempt, .. } => {
                lines.push(line(
                    "payment_declined",
                    None,
                    None,
                    format!("attempt {attempt}: the passenger declined"),
                ));
            }
            RideEvent::PaymentFailed { attempt, reason, .. } => {
                lines.push(line(
                    "payment_failed",
                    None,
                    None,
                    format!("attempt {attempt}: {reason}"),
                ));
            }
            RideEvent::PaymentAccepted {
                attempt,
                amount,
                provider_ref,
                ..
            } => lines.push(line(
                "payment_accepted",
                None,
                Some(amount.get()),
                format!("attempt {attempt}, provider ref {provider_ref}"),
            )),
            RideEvent::Completed { .. } => lines.push(line("completed", None, None, String::new())),
            RideEvent::Cancelled { by, reason, .. } => {
                lines.push(line("cancelled", None, None, format!("by {by:?}: {reason}")));
            }
        }
        state.evolve(&event);
    }

    // The read models, against the same rows folded from these events.
    let mut conn = pool.acquire().await?;
    let replayed = fold_rides(&mut conn, 0, i64::MAX, Some(&[ride_id]), &|_, _| {}).await?;
    let live = read_live(&mut conn, Some(&[ride_id])).await?;
    let differences = diff(&replayed, &live).iter().map(RowDiff::to_string).collect();

    let breakdown = state.fare_breakdown();
    Ok(Some(RideBilling {
        ride_id,
        lines,
        status: state.status().to_owned(),
        distance_m: state.distance_m(),
        ledger_total,
        fare: breakdown.map(|b| b.fare.get()),
        adjusted_fare: breakdown.map(|b| b.adjusted_fare.get()),
        admin_fee: breakdown.map(|b| b.admin_fee.get()),
        driver_payout: breakdown.map(|b| b.driver_payout.get()),
        payment_status: state.payment_status().map(|s| s.as_str().to_owned()),
        payment_attempts: state.payment_attempts(),
        differences,
    }))
}

/// One ledger entry of a period, with the ride's driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeriodEntry {
    pub recorded_at: DateTime<Utc>,
    pub ride_id: Uuid,
    pub driver_id: Uuid,
    pub kind: String,
    pub distance_m: Option<i64>,
    pub cost: i64,
    pub position: i64,
    pub entry_id: Uuid,
}

/// The ledger entries booked in `[from, to)` (by their event's time), replayed from
/// the events, optionally of one driver's rides; in position order.
pub async fn period(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    driver: Option<Uuid>,
) -> Result<Vec<PeriodEntry>, anyhow::Error> {
    let rides: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT aggregate_id FROM events WHERE aggregate_type = 'ride' AND recorded_at >= $1 AND recorded_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let mut conn = pool.acquire().await?;
    let fold: RideFold = fold_rides(&mut conn, 0, i64::MAX, Some(&rides), &|_, _| {}).await?;
    let mut entries: Vec<PeriodEntry> = fold
        .ledger
        .iter()
        .filter(|e: &&LedgerRow| e.recorded_at >= from && e.recorded_at < to)
        .filter_map(|e| {
            let driver_id = fold.rides.get(&e.ride_id)?.driver_id;
            Some(PeriodEntry {
                recorded_at: e.recorded_at,
                ride_id: e.ride_id,
                driver_id,
                kind: e.kind.clone(),
                distance_m: e.distance_m,
                cost: e.cost,
                position: e.position,
                entry_id: e.entry_id,
            })
        })
        .filter(|e| driver.is_none_or(|d| d == e.driver_id))
        .collect();
    entries.sort_by_key(|e| (e.position, e.entry_id));
    Ok(entries)
}

/// The ride as it stood at `as_of`: its events recorded up to then, folded.
pub async fn state_as_of(
    pool: &PgPool,
    ride_id: Uuid,
    as_of: DateTime<Utc>,
) -> Result<Option<(Ride, i64)>, anyhow::Error> {
    let events = migrations::read_stream(pool, "ride", ride_id, 0).await?;
    let mut state = Ride::default();
    let mut applied = 0;
    for stored in events.iter().take_while(|e| e.recorded_at <= as_of) {
        let event: RideEvent = serde_json::from_value(serde_json::json!({
            "event_type": stored.event_type, "payload": stored.payload
        }))?;
        state.evolve(&event);
        applied = stored.sequence;
    }
    Ok((applied > 0).then_some((state, applied)))
}
