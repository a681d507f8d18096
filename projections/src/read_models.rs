//! The PostgreSQL read models analysts query (schema: `migrations/sql/0002_read_models.sql`,
//! columns: `docs/read-models.md`).
//!
//! - [`RidesProjector`] (`read_models.rides`) owns `rides`, `billing_ledger` and
//!   `payments`: it maps each ride event to the rows it changes.
//! - [`MatchesProjector`] (`read_models.matches`) owns `matches`: it folds each touched
//!   match with the domain's own `evolve`, so the status rules (a declined last
//!   candidate, a rejected driver, ...) live in one place.
//!
//! ## Idempotent writes
//! The batch transaction already makes each event apply once; the writes are safe to
//! repeat anyway. Ledger rows are keyed by their derived `entry_id` (`ON CONFLICT DO
//! NOTHING`), a ride row changes only for a sequence above `rides.last_sequence`, a
//! payment only for an attempt above `payments.attempts`, a match row only for a
//! sequence above `matches.last_sequence`.
//!
//! ## Set-based where it is cheap
//! Trip points are most of the feed: their ledger rows go in one `UNNEST` insert per
//! batch and the ride's distance and chain head in one `UNNEST` update. The rarer
//! lifecycle events are one statement each.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::matching::{Match, MatchEvent};
use domain::ride::RideEvent;
use domain::{Aggregate, Rupiah};
use migrations::StoredEvent;
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::runtime::{ProjectionError, Projector};

/// The event version this code reads; a new version needs an upcaster here.
const SUPPORTED_VERSION: i32 = 1;

/// Reads a stored event back into its domain type (`{event_type, payload}`, as the
/// domain's adjacently tagged serde shape expects).
pub(crate) fn parse<E: DeserializeOwned>(event: &StoredEvent) -> Result<E, ProjectionError> {
    if event.event_version != SUPPORTED_VERSION {
        return Err(ProjectionError::corrupt(event, "no upcaster for this version"));
    }
    serde_json::from_value(json!({ "event_type": event.event_type, "payload": event.payload }))
        .map_err(|e| ProjectionError::corrupt(event, e.to_string()))
}

/// Metres as the exact `numeric(10,3)` kilometre text PostgreSQL casts (`1234` → `1.234`).
fn km(metres: i64) -> String {
    let sign = if metres < 0 { "-" } else { "" };
    let m = metres.unsigned_abs();
    format!("{sign}{}.{:03}", m / 1000, m % 1000)
}

/// Basis points as exact `numeric(5,4)` text (`5700` → `0.5700`).
fn factor(bps: u32) -> String {
    format!("{}.{:04}", bps / 10_000, bps % 10_000)
}

/// Ledger rows collected over a batch, inserted with one statement.
#[derive(Default)]
struct LedgerRows {
    entry_id: Vec<Uuid>,
    ride_id: Vec<Uuid>,
    kind: Vec<&'static str>,
    distance_km: Vec<Option<String>>,
    cost: Vec<i64>,
    position: Vec<i64>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl LedgerRows {
    fn push(&mut self, ride: Uuid, entry: (Uuid, &'static str, Option<i64>, Rupiah), event: &StoredEvent) {
        let (entry_id, kind, metres, cost) = entry;
        self.entry_id.push(entry_id);
        self.ride_id.push(ride);
        self.kind.push(kind);
        self.distance_km.push(metres.map(km));
        self.cost.push(cost.get());
        self.position.push(event.position);
        self.recorded_at.push(event.recorded_at);
    }

    async fn insert(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.entry_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO billing_ledger (entry_id, ride_id, kind, distance_km, cost, position, recorded_at) \
             SELECT e, r, k, d::numeric(10,3), c, p, t \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::timestamptz[]) \
                  AS u(e, r, k, d, c, p, t) \
             ON CONFLICT (entry_id) DO NOTHING",
        )
        .bind(&self.entry_id)
        .bind(&self.ride_id)
        .bind(&self.kind)
        .bind(&self.distance_km)
        .bind(&self.cost)
        .bind(&self.position)
        .bind(&self.recorded_at)
        .execute(&mut **tx)
        .await
        .map(drop)
    }
}

/// The last event of a ride seen in a batch, and its billed distance so far.
struct Head {
    sequence: i64,
    hash: Vec<u8>,
    position: i64,
    trip_m: Option<i64>,
}

/// Projects ride events into `rides`, `billing_ledger` and `payments`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RidesProjector;

impl RidesProjector {
    /// Its checkpoint name.
    pub const NAME: &'static str = "read_models.rides";
}

/// `UPDATE rides SET <set> WHERE ride_id = $1 AND last_sequence < $2`, with the rest
/// of the parameters from `$3` on.
fn ride_update(set: &str) -> String {
    format!("UPDATE rides SET {set} WHERE ride_id = $1 AND last_sequence < $2")
}

async fn apply_ride_event(
    tx: &mut Transaction<'_, Postgres>,
    stored: &StoredEvent,
    event: RideEvent,
    ledger: &mut LedgerRows,
    head: &mut Head,
) -> Result<(), ProjectionError> {
    let ride = stored.aggregate_id;
    let seq = stored.sequence;
    match event {
        RideEvent::Created {
            ride_id,
            match_id,
            driver_id,
            passenger_id,
            pickup,
            destination,
            created_at,
        } => {
            sqlx::query(
                "INSERT INTO rides (ride_id, match_id, driver_id, passenger_id, status, pickup_lat, pickup_lon, \
                 destination_lat, destination_lon, created_at, last_sequence, last_hash, updated_position) \
                 VALUES ($1, $2, $3, $4, 'PENDING', $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (ride_id) DO NOTHING",
            )
            .bind(ride_id.as_uuid())
            .bind(match_id.as_uuid())
            .bind(driver_id.as_uuid())
            .bind(passenger_id.as_uuid())
            .bind(pickup.lat())
            .bind(pickup.lon())
            .bind(destination.lat())
            .bind(destination.lon())
            .bind(created_at)
            .bind(seq)
            .bind(&stored.hash)
            .bind(stored.position)
            .execute(&mut **tx)
            .await?;
        }
        RideEvent::Started { started_at, .. } => {
            sqlx::query(&ride_update(
                "status = 'IN_PROGRESS', started_at = $3, distance_km = 0",
            ))
            .bind(ride)
            .bind(seq)
            .bind(started_at)
            .execute(&mut **tx)
            .await?;
        }
        RideEvent::TripPointRecorded {
            entry_id,
            segment_m,
            cum_m,
            cost,
            ..
        } => {
            ledger.push(
                ride,
                (entry_id.as_uuid(), "trip_segment", Some(segment_m), cost),
                stored,
            );
            head.trip_m = Some(cum_m);
        }
        RideEvent::TripPointRejected { .. } => {}
        RideEvent::Arrived {
            arrived_at,
            distance_m,
            fare,
            fare_adjustment,
            adjustment_factor,
            adjusted_fare,
            discount,
            admin_fee,
            driver_payout,
            payment_id,
            ..
        } => {
            sqlx::query(&ride_update(
                "status = 'ARRIVED', arrived_at = $3, distance_km = $4::numeric(10,3), fare = $5, \
                 adjusted_fare = $6, admin_fee = $7, driver_payout = $8, adjustment_factor = $9::numeric(5,4)",
            ))
            .bind(ride)
            .bind(seq)
            .bind(arrived_at)
            .bind(km(distance_m))
            .bind(fare.get())
            .bind(adjusted_fare.get())
            .bind(admin_fee.get())
            .bind(driver_payout.get())
            .bind(factor(adjustment_factor.bps()))
            .execute(&mut **tx)
            .await?;
            for entry in [fare_adjustment, discount].into_iter().flatten() {
                ledger.push(
                    ride,
                    (entry.entry_id.as_uuid(), entry.kind.as_str(), None, entry.cost),
                    stored,
                );
            }
            head.trip_m = Some(distance_m);
            sqlx::query(
                "INSERT INTO payments (payment_id, ride_id, adjusted_cost, admin_fee, driver_payout, status, \
                 attempts, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'PENDING', 0, $6, $6) \
                 ON CONFLICT (payment_id) DO NOTHING",
            )
            .bind(payment_id.as_uuid())
            .bind(ride)
            .bind(adjusted_fare.get())
            .bind(admin_fee.get())
            .bind(driver_payout.get())
            .bind(arrived_at)
            .execute(&mut **tx)
            .await?;
        }
        RideEvent::PaymentDeclined {
            payment_id,
            attempt,
            at,
        } => payment_attempt(tx, payment_id.as_uuid(), "DECLINED", attempt, None, at).await?,
        RideEvent::PaymentFailed {
            payment_id,
            attempt,
            at,
            ..
        } => payment_attempt(tx, payment_id.as_uuid(), "FAILED", attempt, None, at).await?,
        RideEvent::PaymentAccepted {
            payment_id,
            attempt,
            provider_ref,
            at,
            ..
        } => {
            payment_attempt(
                tx,
                payment_id.as_uuid(),
                "ACCEPTED",
                attempt,
                Some(&provider_ref),
                at,
            )
            .await?;
        }
        RideEvent::Completed { completed_at, .. } => {
            sqlx::query(&ride_update("status = 'COMPLETED', completed_at = $3"))
                .bind(ride)
                .bind(seq)
                .bind(completed_at)
                .execute(&mut **tx)
                .await?;
        }
        RideEvent::Cancelled {
            by,
            reason,
            cancelled_at,
            ..
        } => {
            let by = match by {
                domain::ride::CancelledBy::Driver => "driver",
                domain::ride::CancelledBy::Passenger => "passenger",
            };
            sqlx::query(&ride_update(
                "status = 'CANCELLED', cancelled_at = $3, cancelled_by = $4, cancel_reason = $5",
            ))
            .bind(ride)
            .bind(seq)
            .bind(cancelled_at)
            .bind(by)
            .bind(reason)
            .execute(&mut **tx)
            .await?;
        }
    }
    head.sequence = seq;
    head.hash.clone_from(&stored.hash);
    head.position = stored.position;
    Ok(())
}

/// Records a payment attempt's outcome, unless a later attempt is already recorded.
async fn payment_attempt(
    tx: &mut Transaction<'_, Postgres>,
    payment_id: Uuid,
    status: &str,
    attempt: u32,
    provider_ref: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let attempt =
        i32::try_from(attempt).map_err(|_| ProjectionError::OutOfRange(format!("attempt {attempt}")))?;
    sqlx::query(
        "UPDATE payments SET status = $2, attempts = $3, provider_ref = COALESCE($4, provider_ref), \
         updated_at = $5 WHERE payment_id = $1 AND attempts < $3",
    )
    .bind(payment_id)
    .bind(status)
    .bind(attempt)
    .bind(provider_ref)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[async_trait]
impl Projector for RidesProjector {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let mut ledger = LedgerRows::default();
        let mut heads: BTreeMap<Uuid, Head> = BTreeMap::new();
        for stored in events.iter().filter(|e| e.aggregate_type == "ride") {
            let event: RideEvent = parse(stored)?;
            let head = heads.entry(stored.aggregate_id).or_insert_with(|| Head {
                sequence: 0,
                hash: Vec::new(),
                position: 0,
                trip_m: None,
            });
            apply_ride_event(tx, stored, event, &mut ledger, head).await?;
        }
        ledger.insert(tx).await?;
        if heads.is_empty() {
            return Ok(());
        }
        // The chain head as projected, and the distance billed so far (trip points are
        // not worth a statement each).
        let mut ids = Vec::with_capacity(heads.len());
        let mut sequences = Vec::with_capacity(heads.len());
        let mut hashes = Vec::with_capacity(heads.len());
        let mut positions = Vec::with_capacity(heads.len());
        let mut distances = Vec::with_capacity(heads.len());
        for (id, head) in heads {
            ids.push(id);
            sequences.push(head.sequence);
            hashes.push(head.hash);
            positions.push(head.position);
            distances.push(head.trip_m.map(km));
        }
        sqlx::query(
            "UPDATE rides r SET last_sequence = u.s, last_hash = u.h, updated_position = u.p, \
             distance_km = COALESCE(u.d::numeric(10,3), r.distance_km) \
             FROM UNNEST($1::uuid[], $2::int8[], $3::bytea[], $4::int8[], $5::text[]) AS u(id, s, h, p, d) \
             WHERE r.ride_id = u.id AND r.last_sequence < u.s",
        )
        .bind(&ids)
        .bind(&sequences)
        .bind(&hashes)
        .bind(&positions)
        .bind(&distances)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rides", "billing_ledger", "payments"]
    }

    /// In bulk: fold every ride event in memory ([`crate::rows::RideFold`]), then `COPY`.
    async fn fill(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        up_to: i64,
        progress: &(dyn Fn(i64, i64) + Sync),
    ) -> Result<(), ProjectionError> {
        let fold = crate::rows::fold_rides(tx, 0, up_to, None, progress).await?;
        crate::rows::copy_rows(tx, &fold).await?;
        Ok(())
    }
}

/// Projects match events into `matches`.
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchesProjector;

impl MatchesProjector {
    /// Its checkpoint name.
    pub const NAME: &'static str = "read_models.matches";
}

#[async_trait]
impl Projector for MatchesProjector {
    fn name(&self) -> &str {
        Self::NAME
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let mut touched: Vec<Uuid> = events
            .iter()
            .filter(|e| e.aggregate_type == "match")
            .map(|e| e.aggregate_id)
            .collect();
        touched.sort_unstable();
        touched.dedup();
        let (Some(last), false) = (events.last(), touched.is_empty()) else {
            return Ok(());
        };
        // Each touched match is folded from its first event up to the end of the batch
        // (every earlier position is committed: the feed is gap-free). One query for the
        // whole batch, not `migrations::read_stream` per match.
        let history: Vec<StoredEvent> = sqlx::query_as(
            "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
             metadata, recorded_at, hash FROM events \
             WHERE aggregate_type = 'match' AND aggregate_id = ANY($1) AND position <= $2 \
             ORDER BY aggregate_id, sequence",
        )
        .bind(&touched)
        .bind(last.position)
        .fetch_all(&mut **tx)
        .await?;

        let mut folded: BTreeMap<Uuid, (Match, i64, DateTime<Utc>)> = BTreeMap::new();
        for stored in &history {
            let event: MatchEvent = parse(stored)?;
            let entry = folded
                .entry(stored.aggregate_id)
                .or_insert_with(|| (Match::default(), 0, stored.recorded_at));
            entry.0.evolve(&event);
            entry.1 = stored.sequence;
            entry.2 = stored.recorded_at;
        }

        let mut rows = MatchRows::default();
        for (id, (state, sequence, updated_at)) in folded {
            let (Some(passenger), Some(status), Some(requested_at)) =
                (state.passenger_id(), state.match_status(), state.requested_at())
            else {
                // Events without a `requested` first: nothing a row could say.
                tracing::warn!(match_id = %id, "match events without a request; not projected");
                continue;
            };
            let round = i32::try_from(state.round())
                .map_err(|_| ProjectionError::OutOfRange(format!("round {}", state.round())))?;
            rows.match_id.push(id);
            rows.passenger_id.push(passenger.as_uuid());
            rows.status.push(status.as_str());
            rows.round.push(round);
            rows.radius_km.push(state.radius_km().unwrap_or(0.0));
            rows.driver_id
                .push(state.accepted_driver().map(|c| c.driver_id.as_uuid()));
            rows.ride_id.push(state.ride_id().map(|r| r.as_uuid()));
            rows.requested_at.push(requested_at);
            rows.updated_at.push(updated_at);
            rows.last_sequence.push(sequence);
        }
        if rows.match_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO matches (match_id, passenger_id, status, round, radius_km, driver_id, ride_id, \
             requested_at, updated_at, last_sequence) \
             SELECT m, pa, st, rn, rk::numeric(7,3), d, r, rq, up, ls \
             FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::float8[], $6::uuid[], $7::uuid[], \
                         $8::timestamptz[], $9::timestamptz[], $10::int8[]) AS u(m, pa, st, rn, rk, d, r, rq, up, ls) \
             ON CONFLICT (match_id) DO UPDATE SET status = EXCLUDED.status, round = EXCLUDED.round, \
                 radius_km = EXCLUDED.radius_km, driver_id = EXCLUDED.driver_id, ride_id = EXCLUDED.ride_id, \
                 updated_at = EXCLUDED.updated_at, last_sequence = EXCLUDED.last_sequence \
             WHERE matches.last_sequence < EXCLUDED.last_sequence",
        )
        .bind(&rows.match_id)
        .bind(&rows.passenger_id)
        .bind(&rows.status)
        .bind(&rows.round)
        .bind(&rows.radius_km)
        .bind(&rows.driver_id)
        .bind(&rows.ride_id)
        .bind(&rows.requested_at)
        .bind(&rows.updated_at)
        .bind(&rows.last_sequence)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    fn tables(&self) -> &'static [&'static str] {
        &["matches"]
    }
}

/// `matches` rows of a batch, upserted with one statement.
#[derive(Default)]
struct MatchRows {
    match_id: Vec<Uuid>,
    passenger_id: Vec<Uuid>,
    status: Vec<&'static str>,
    round: Vec<i32>,
    radius_km: Vec<f64>,
    driver_id: Vec<Option<Uuid>>,
    ride_id: Vec<Option<Uuid>>,
    requested_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    last_sequence: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kilometres_and_factors_are_exact_decimal_text() {
        assert_eq!(km(0), "0.000");
        assert_eq!(km(1234), "1.234");
        assert_eq!(km(5), "0.005");
        assert_eq!(km(-1500), "-1.500");
        assert_eq!(factor(10_000), "1.0000");
        assert_eq!(factor(5700), "0.5700");
        assert_eq!(factor(1), "0.0001");
    }
}
