//! The Ride aggregate (SPEC.md §3 "Ride aggregate" and "Billing").
//!
//! A ride is created by the system from a confirmed match, started by its driver near
//! the passenger, billed from the driver's own GPS trace while `IN_PROGRESS`, priced at
//! arrival and completed by the passenger's payment:
//!
//! ```text
//! (none) ─create─► PENDING ─ride_start─► IN_PROGRESS ─ride_arrived─► ARRIVED ─payment_process─► COMPLETED
//!                     │                    ▲      │                    ▲      │ (charged)
//!                     └─ride_cancel─► CANCELLED   └─trip_location─┘    └──────┘ (declined, failed)
//! ```
//!
//! ## Layout
//! - [`RideCommand`] and [`PaymentOutcome`]: what may be asked, exactly as the command
//!   pipeline and the NATS ingress build it.
//! - [`RideEvent`]: what is recorded, stored as `ride.<event_type>.v1`.
//! - [`Ride`]: the state, a private enum of phases whose variants carry only what that
//!   phase knows; plain accessors for the ack, the pushes and the read models.
//! - `decide` ([`Aggregate::decide`]): input checks, then the actor, then one exhaustive
//!   `match (phase, command)` without a wildcard arm, then the rule. `evolve` copies
//!   event fields into the state and decides nothing.
//! - [`Ride::check_payment`]: the checks of `payment_process` that must pass before the
//!   payment provider is called.
//!
//! ## Decisions where SPEC.md is silent
//! - Participants are recognised by user id alone, not by role: a passenger who
//!   registers as a driver mid-ride can still pay for it.
//! - `create` carries no actor: only the system builds it (from a confirmed match), so
//!   "system only" is enforced by construction in the pipeline, not here. Pickup and
//!   destination were checked against the service area by the match.
//! - The rate per km is fixed when the ride starts (recorded in `started`): segments and
//!   the base fare use the same rate even if the configuration changes mid-ride, so the
//!   ledger always sums to the fare. Minimum, maximum and admin fee are those at arrival.
//! - A trip point's time is checked before its distance: a point whose time is not after
//!   the last accepted point is rejected (`not_after_previous`) even if it is also jitter,
//!   because a stale point says nothing about where the driver is now. Jitter is not an
//!   event (decide returns no events): it changes nothing and would flood the store.
//! - `payment_declined` does not check the amount (the passenger declined to pay; there
//!   is nothing to compare), but the amount must still be positive.
//! - The status of a ride that does not exist is `NONE`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::actor::Actor;
use crate::aggregate::{Aggregate, Context, DomainEvent, Reservation};
use crate::billing::{self, Adjustment, AdjustmentFactor, FareBreakdown, LedgerEntry, LedgerKind};
use crate::error::{DomainError, ErrorCode};
use crate::geo::GeoPoint;
use crate::ids::{EntryId, MatchId, PaymentId, RideId, UserId};
use crate::money::Rupiah;
use crate::policy::FarePolicy;

/// Longest accepted cancellation reason, in characters (after trimming).
pub const MAX_CANCEL_REASON_CHARS: usize = 500;

/// What may be asked of a ride.
#[derive(Clone, Debug, PartialEq)]
pub enum RideCommand {
    /// System only: from a confirmed match.
    Create {
        /// The new ride's id (made at the edge).
        ride_id: RideId,
        /// The confirmed match it comes from.
        match_id: MatchId,
        /// The driver who accepted.
        driver_id: UserId,
        /// The passenger who asked.
        passenger_id: UserId,
        /// Where the passenger is picked up.
        pickup: GeoPoint,
        /// Where the passenger goes.
        destination: GeoPoint,
    },
    /// `ride_start`: the ride's driver. Positions are the last known ones, supplied by the caller.
    Start {
        /// Who asks.
        actor: Actor,
        /// The driver's last known position (`None`: never seen).
        driver_position: Option<GeoPoint>,
        /// The passenger's last known position (`None`: the pickup is used).
        passenger_position: Option<GeoPoint>,
    },
    /// A driver ping while IN_PROGRESS (`cmd.ride.location`).
    RecordTripPoint {
        /// Who asks.
        actor: Actor,
        /// Where the driver is.
        point: GeoPoint,
        /// When the client says it was there (`None`: when the server received it).
        recorded_at: Option<DateTime<Utc>>,
    },
    /// `ride_arrived`: the ride's driver.
    Arrive {
        /// Who asks.
        actor: Actor,
        /// The driver's price factor in (0, 1] (`None`: 1).
        adjustment_factor: Option<AdjustmentFactor>,
    },
    /// `payment_process`: the ride's passenger. `outcome` is what the payment provider
    /// said (the pipeline calls the provider after `check_payment` passed).
    Pay {
        /// Who asks.
        actor: Actor,
        /// What the passenger pays; must be positive, and the adjusted fare to charge.
        amount: Rupiah,
        /// The passenger's decision and the provider's answer.
        outcome: PaymentOutcome,
    },
    /// `ride_cancel`: either participant.
    Cancel {
        /// Who asks.
        actor: Actor,
        /// Why; required, at most 500 characters.
        reason: String,
    },
}

/// What became of a `payment_process`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// `accepted: false`: the passenger declined to pay; the provider was not called.
    Declined,
    /// The provider charged the passenger.
    Charged {
        /// The provider's reference for the charge.
        provider_ref: String,
    },
    /// The provider definitely refused the charge.
    Failed {
        /// The provider's reason.
        reason: String,
    },
}

/// A ride's status as it appears in acks, pushes and the `rides` table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RideStatus {
    /// Created, waiting for the driver to pick the passenger up.
    Pending,
    /// On the way; the trip trace is being billed.
    InProgress,
    /// At the destination; the fare is fixed and waits for payment.
    Arrived,
    /// Paid.
    Completed,
    /// Cancelled before it started.
    Cancelled,
}

impl RideStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            RideStatus::Pending => "PENDING",
            RideStatus::InProgress => "IN_PROGRESS",
            RideStatus::Arrived => "ARRIVED",
            RideStatus::Completed => "COMPLETED",
            RideStatus::Cancelled => "CANCELLED",
        }
    }
}

/// The status of a ride's single payment (created at arrival).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    /// Created at arrival, not paid yet.
    Pending,
    /// The passenger declined to pay (may pay later).
    Declined,
    /// The provider refused the last charge (may be retried).
    Failed,
    /// Charged: the ride is completed.
    Accepted,
}

impl PaymentStatus {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "PENDING",
            PaymentStatus::Declined => "DECLINED",
            PaymentStatus::Failed => "FAILED",
            PaymentStatus::Accepted => "ACCEPTED",
        }
    }
}

/// Which participant cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelledBy {
    /// The ride's driver.
    Driver,
    /// The ride's passenger.
    Passenger,
}

/// Why a trip point was not billed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TripPointRejection {
    /// Its time is not after the last accepted point's.
    NotAfterPrevious,
    /// Reaching it from the last accepted point implies more than the maximum speed.
    TooFast,
}

impl TripPointRejection {
    /// The wire name (the ack's `result {rejected: reason}`).
    pub const fn as_str(self) -> &'static str {
        match self {
            TripPointRejection::NotAfterPrevious => "not_after_previous",
            TripPointRejection::TooFast => "too_fast",
        }
    }
}

/// A position at a time: an accepted point of the trip trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TripPoint {
    /// Where.
    pub point: GeoPoint,
    /// When.
    pub at: DateTime<Utc>,
}

/// What a ride records. Stored as `event_type` (the snake_case variant name), version 1,
/// and the fields as `payload`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum RideEvent {
    /// The ride exists, `PENDING` (from a confirmed match).
    Created {
        /// The ride.
        ride_id: RideId,
        /// The confirmed match.
        match_id: MatchId,
        /// Its driver.
        driver_id: UserId,
        /// Its passenger.
        passenger_id: UserId,
        /// The pickup.
        pickup: GeoPoint,
        /// The destination.
        destination: GeoPoint,
        /// When it was created.
        created_at: DateTime<Utc>,
    },
    /// The driver picked the passenger up: `IN_PROGRESS`. The start point at
    /// `started_at` is the first reference point of the trip trace.
    Started {
        /// When.
        started_at: DateTime<Utc>,
        /// The driver's last known position.
        start_point: GeoPoint,
        /// The rate per km this ride is billed at (fixed for the whole trip).
        rate_per_km: Rupiah,
    },
    /// An accepted trip point: a `trip_segment` ledger entry.
    TripPointRecorded {
        /// `EntryId::derive(ride_id, "trip_segment", n)`, n = 1-based segment count.
        entry_id: EntryId,
        /// The new reference point.
        point: GeoPoint,
        /// Its time.
        at: DateTime<Utc>,
        /// Length of the segment from the previous reference point, whole metres.
        segment_m: i64,
        /// Billed distance so far, whole metres.
        cum_m: i64,
        /// `segment_m / 1000`.
        segment_km: f64,
        /// `cum_m / 1000`.
        cum_km: f64,
        /// `round(cum_km × rate) − round((cum_km − segment_km) × rate)`.
        cost: Rupiah,
    },
    /// A trip point that is not billed (acked with `result {rejected: reason}`).
    TripPointRejected {
        /// Where the driver said they were.
        point: GeoPoint,
        /// Its time.
        at: DateTime<Utc>,
        /// Why it was rejected.
        reason: TripPointRejection,
    },
    /// The driver arrived: `ARRIVED`, the fare is fixed and the payment is created
    /// `PENDING` with no attempt yet.
    Arrived {
        /// The driver, released here (they are free once the trip ends).
        driver_id: UserId,
        /// When.
        arrived_at: DateTime<Utc>,
        /// Billed distance, whole metres (accepted segments only).
        distance_m: i64,
        /// `distance_m / 1000`.
        distance_km: f64,
        /// `round(distance_km × rate)`: the sum of the trip segments.
        base_fare: Rupiah,
        /// `base_fare` clamped to the minimum and maximum fare.
        fare: Rupiah,
        /// The `minimum_fare` or `maximum_fare` entry, when the clamp changed the fare.
        fare_adjustment: Option<LedgerEntry>,
        /// The driver's factor (1 when none was given).
        adjustment_factor: AdjustmentFactor,
        /// `floor(fare × factor)`: the amount to pay.
        adjusted_fare: Rupiah,
        /// The `driver_discount` entry, when the factor lowered the fare.
        discount: Option<LedgerEntry>,
        /// The platform's share.
        admin_fee: Rupiah,
        /// The driver's share.
        driver_payout: Rupiah,
        /// The ride's payment, `PaymentId::for_ride(ride_id)`.
        payment_id: PaymentId,
    },
    /// The passenger declined to pay (`accepted: false`); the ride stays `ARRIVED`.
    PaymentDeclined {
        /// The ride's payment.
        payment_id: PaymentId,
        /// 1-based count of `payment_process` commands that produced an event.
        attempt: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider refused the charge; the ride stays `ARRIVED`, payable again.
    PaymentFailed {
        /// The ride's payment.
        payment_id: PaymentId,
        /// 1-based attempt.
        attempt: u32,
        /// The provider's reason.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider charged the passenger; followed by `completed`.
    PaymentAccepted {
        /// The ride's payment.
        payment_id: PaymentId,
        /// 1-based attempt.
        attempt: u32,
        /// The amount charged (the adjusted fare).
        amount: Rupiah,
        /// The provider's reference.
        provider_ref: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The ride is paid: `COMPLETED`.
    Completed {
        /// The driver (released).
        driver_id: UserId,
        /// The passenger (released).
        passenger_id: UserId,
        /// When.
        completed_at: DateTime<Utc>,
        /// The clamped fare.
        fare: Rupiah,
        /// What was paid.
        adjusted_fare: Rupiah,
        /// The platform's share.
        admin_fee: Rupiah,
        /// The driver's share.
        driver_payout: Rupiah,
        /// Billed distance, 3 decimals.
        distance_km: f64,
    },
    /// The ride was cancelled before it started: `CANCELLED`.
    Cancelled {
        /// The driver (released).
        driver_id: UserId,
        /// The passenger (released).
        passenger_id: UserId,
        /// Who cancelled.
        by: CancelledBy,
        /// Why (trimmed).
        reason: String,
        /// When.
        cancelled_at: DateTime<Utc>,
    },
}

impl DomainEvent for RideEvent {
    fn event_type(&self) -> &'static str {
        match self {
            RideEvent::Created { .. } => "created",
            RideEvent::Started { .. } => "started",
            RideEvent::TripPointRecorded { .. } => "trip_point_recorded",
            RideEvent::TripPointRejected { .. } => "trip_point_rejected",
            RideEvent::Arrived { .. } => "arrived",
            RideEvent::PaymentDeclined { .. } => "payment_declined",
            RideEvent::PaymentFailed { .. } => "payment_failed",
            RideEvent::PaymentAccepted { .. } => "payment_accepted",
            RideEvent::Completed { .. } => "completed",
            RideEvent::Cancelled { .. } => "cancelled",
        }
    }

    /// `created` claims nothing: the match's `confirmed` transfers both participants
    /// to the ride. The driver is released at arrival; the passenger stays in the ride
    /// until it is paid.
    fn reservations(&self) -> Vec<Reservation> {
        match self {
            RideEvent::Arrived { driver_id, .. } => vec![Reservation::Release(*driver_id)],
            RideEvent::Completed {
                driver_id,
                passenger_id,
                ..
            }
            | RideEvent::Cancelled {
                driver_id,
                passenger_id,
                ..
            } => vec![
                Reservation::Release(*passenger_id),
                Reservation::Release(*driver_id),
            ],
            RideEvent::Created { .. }
            | RideEvent::Started { .. }
            | RideEvent::TripPointRecorded { .. }
            | RideEvent::TripPointRejected { .. }
            | RideEvent::PaymentDeclined { .. }
            | RideEvent::PaymentFailed { .. }
            | RideEvent::PaymentAccepted { .. } => Vec::new(),
        }
    }
}

/// Who and where: fixed at creation.
#[derive(Clone, Debug, PartialEq)]
struct Booking {
    ride_id: RideId,
    match_id: MatchId,
    driver_id: UserId,
    passenger_id: UserId,
    pickup: GeoPoint,
    destination: GeoPoint,
    created_at: DateTime<Utc>,
}

/// The trip trace so far: from `started` on.
#[derive(Clone, Debug, PartialEq)]
struct Trip {
    started_at: DateTime<Utc>,
    start_point: GeoPoint,
    rate_per_km: Rupiah,
    /// The last accepted point: the reference for the next one.
    last: TripPoint,
    /// Billed metres: the sum of the accepted segments.
    distance_m: i64,
    /// Accepted segments (the ordinal of the last `trip_segment` entry).
    segments: u32,
    /// Sum of the segments' costs.
    segments_cost: Rupiah,
    /// Points rejected as stale or too fast.
    rejected_points: u32,
}

/// The fixed fare and the payment: from `arrived` on.
#[derive(Clone, Debug, PartialEq)]
struct Bill {
    arrived_at: DateTime<Utc>,
    fare: FareBreakdown,
    payment_id: PaymentId,
    payment_status: PaymentStatus,
    attempts: u32,
    provider_ref: Option<String>,
}

/// How a ride ended before it started.
#[derive(Clone, Debug, PartialEq)]
struct Cancellation {
    by: CancelledBy,
    reason: String,
    cancelled_at: DateTime<Utc>,
}

/// The phases of a ride; each carries what is known in it.
#[derive(Clone, Debug, Default, PartialEq)]
enum Phase {
    /// No event yet: the ride does not exist.
    #[default]
    None,
    Pending(Booking),
    InProgress(Booking, Trip),
    Arrived(Booking, Trip, Bill),
    Completed(Booking, Trip, Bill, DateTime<Utc>),
    Cancelled(Booking, Cancellation),
}

/// The Ride aggregate. `Ride::default()` is a ride that does not exist yet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ride {
    phase: Phase,
}

impl Aggregate for Ride {
    const TYPE: &'static str = "ride";
    type Command = RideCommand;
    type Event = RideEvent;

    fn decide(&self, command: &RideCommand, ctx: &Context<'_>) -> Result<Vec<RideEvent>, DomainError> {
        // 1. The input itself, whatever the state.
        validate_input(command, ctx)?;
        // 2. not_found comes from the match below (a ride in `Phase::None`); 3. the actor.
        if let Some(booking) = self.booking() {
            authorize(booking, command)?;
        }
        let name = Self::command_name(command);
        let wrong_status = || Err(DomainError::invalid_transition(self.status(), name));
        // 4. The status, then 5. each transition's own rule.
        match (&self.phase, command) {
            (
                Phase::None,
                RideCommand::Create {
                    ride_id,
                    match_id,
                    driver_id,
                    passenger_id,
                    pickup,
                    destination,
                },
            ) => Ok(vec![RideEvent::Created {
                ride_id: *ride_id,
                match_id: *match_id,
                driver_id: *driver_id,
                passenger_id: *passenger_id,
                pickup: *pickup,
                destination: *destination,
                created_at: ctx.now,
            }]),
            (
                Phase::None,
                RideCommand::Start { .. }
                | RideCommand::RecordTripPoint { .. }
                | RideCommand::Arrive { .. }
                | RideCommand::Pay { .. }
                | RideCommand::Cancel { .. },
            ) => Err(DomainError::not_found("no such ride")),

            (
                Phase::Pending(..)
                | Phase::InProgress(..)
                | Phase::Arrived(..)
                | Phase::Completed(..)
                | Phase::Cancelled(..),
                RideCommand::Create { .. },
            ) => wrong_status(),

            (
                Phase::Pending(booking),
                RideCommand::Start {
                    driver_position,
                    passenger_position,
                    ..
                },
            ) => start(booking, *driver_position, *passenger_position, ctx),
            (
                Phase::InProgress(..) | Phase::Arrived(..) | Phase::Completed(..) | Phase::Cancelled(..),
                RideCommand::Start { .. },
            ) => wrong_status(),

            (
                Phase::InProgress(booking, trip),
                RideCommand::RecordTripPoint {
                    point, recorded_at, ..
                },
            ) => {
                ctx.policy.service_area.check(point, "location")?;
                Ok(
                    record_trip_point(booking, trip, *point, recorded_at.unwrap_or(ctx.now), ctx)
                        .into_iter()
                        .collect(),
                )
            }
            (
                Phase::Pending(..) | Phase::Arrived(..) | Phase::Completed(..) | Phase::Cancelled(..),
                RideCommand::RecordTripPoint { .. },
            ) => wrong_status(),

            (
                Phase::InProgress(booking, trip),
                RideCommand::Arrive {
                    adjustment_factor, ..
                },
            ) => Ok(vec![arrive(
                booking,
                trip,
                adjustment_factor.unwrap_or_default(),
                ctx,
            )]),
            (
                Phase::Pending(..) | Phase::Arrived(..) | Phase::Completed(..) | Phase::Cancelled(..),
                RideCommand::Arrive { .. },
            ) => wrong_status(),

            (Phase::Arrived(booking, _, bill), RideCommand::Pay { amount, outcome, .. }) => {
                pay(booking, bill, *amount, outcome, ctx)
            }
            (
                Phase::Pending(..) | Phase::InProgress(..) | Phase::Completed(..) | Phase::Cancelled(..),
                RideCommand::Pay { .. },
            ) => wrong_status(),

            (Phase::Pending(booking), RideCommand::Cancel { actor, reason }) => {
                Ok(vec![RideEvent::Cancelled {
                    driver_id: booking.driver_id,
                    passenger_id: booking.passenger_id,
                    by: if actor.user_id == booking.driver_id {
                        CancelledBy::Driver
                    } else {
                        CancelledBy::Passenger
                    },
                    reason: reason.trim().to_owned(),
                    cancelled_at: ctx.now,
                }])
            }
            (
                Phase::InProgress(..) | Phase::Arrived(..) | Phase::Completed(..) | Phase::Cancelled(..),
                RideCommand::Cancel { .. },
            ) => wrong_status(),
        }
    }

    fn evolve(&mut self, event: &RideEvent) {
        // Each arm applies its event only to the phase it belongs to; an event that does
        // not fit is a bug upstream and leaves the state unchanged (never a panic).
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
                if let Phase::None = self.phase {
                    self.phase = Phase::Pending(Booking {
                        ride_id: *ride_id,
                        match_id: *match_id,
                        driver_id: *driver_id,
                        passenger_id: *passenger_id,
                        pickup: *pickup,
                        destination: *destination,
                        created_at: *created_at,
                    });
                }
            }
            RideEvent::Started {
                started_at,
                start_point,
                rate_per_km,
            } => {
                self.phase = match std::mem::take(&mut self.phase) {
                    Phase::Pending(booking) => Phase::InProgress(
                        booking,
                        Trip {
                            started_at: *started_at,
                            start_point: *start_point,
                            rate_per_km: *rate_per_km,
                            last: TripPoint {
                                point: *start_point,
                                at: *started_at,
                            },
                            distance_m: 0,
                            segments: 0,
                            segments_cost: Rupiah::ZERO,
                            rejected_points: 0,
                        },
                    ),
                    other => other,
                };
            }
            RideEvent::TripPointRecorded {
                point,
                at,
                cum_m,
                cost,
                ..
            } => {
                if let Phase::InProgress(_, trip) = &mut self.phase {
                    trip.last = TripPoint {
                        point: *point,
                        at: *at,
                    };
                    trip.distance_m = *cum_m;
                    trip.segments = trip.segments.saturating_add(1);
                    trip.segments_cost = trip.segments_cost + *cost;
                }
            }
            RideEvent::TripPointRejected { .. } => {
                if let Phase::InProgress(_, trip) = &mut self.phase {
                    trip.rejected_points = trip.rejected_points.saturating_add(1);
                }
            }
            RideEvent::Arrived {
                arrived_at,
                distance_m,
                base_fare,
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
                let as_adjustment = |e: &LedgerEntry| Adjustment {
                    kind: e.kind,
                    cost: e.cost,
                };
                self.phase = match std::mem::take(&mut self.phase) {
                    Phase::InProgress(booking, trip) => Phase::Arrived(
                        booking,
                        trip,
                        Bill {
                            arrived_at: *arrived_at,
                            fare: FareBreakdown {
                                distance_m: *distance_m,
                                base_fare: *base_fare,
                                fare: *fare,
                                fare_adjustment: fare_adjustment.as_ref().map(as_adjustment),
                                adjustment_factor: *adjustment_factor,
                                adjusted_fare: *adjusted_fare,
                                discount: discount.as_ref().map(as_adjustment),
                                admin_fee: *admin_fee,
                                driver_payout: *driver_payout,
                            },
                            payment_id: *payment_id,
                            payment_status: PaymentStatus::Pending,
                            attempts: 0,
                            provider_ref: None,
                        },
                    ),
                    other => other,
                };
            }
            RideEvent::PaymentDeclined { attempt, .. } => {
                if let Phase::Arrived(_, _, bill) = &mut self.phase {
                    bill.payment_status = PaymentStatus::Declined;
                    bill.attempts = *attempt;
                }
            }
            RideEvent::PaymentFailed { attempt, .. } => {
                if let Phase::Arrived(_, _, bill) = &mut self.phase {
                    bill.payment_status = PaymentStatus::Failed;
                    bill.attempts = *attempt;
                }
            }
            RideEvent::PaymentAccepted {
                attempt,
                provider_ref,
                ..
            } => {
                if let Phase::Arrived(_, _, bill) = &mut self.phase {
                    bill.payment_status = PaymentStatus::Accepted;
                    bill.attempts = *attempt;
                    bill.provider_ref = Some(provider_ref.clone());
                }
            }
            RideEvent::Completed { completed_at, .. } => {
                self.phase = match std::mem::take(&mut self.phase) {
                    Phase::Arrived(booking, trip, bill) => {
                        Phase::Completed(booking, trip, bill, *completed_at)
                    }
                    other => other,
                };
            }
            RideEvent::Cancelled {
                by,
                reason,
                cancelled_at,
                ..
            } => {
                self.phase = match std::mem::take(&mut self.phase) {
                    Phase::Pending(booking) => Phase::Cancelled(
                        booking,
                        Cancellation {
                            by: *by,
                            reason: reason.clone(),
                            cancelled_at: *cancelled_at,
                        },
                    ),
                    other => other,
                };
            }
        }
    }

    fn exists(&self) -> bool {
        !matches!(self.phase, Phase::None)
    }

    fn status(&self) -> &'static str {
        self.ride_status().map_or("NONE", RideStatus::as_str)
    }

    fn command_name(command: &RideCommand) -> &'static str {
        match command {
            RideCommand::Create { .. } => "create",
            RideCommand::Start { .. } => "ride_start",
            RideCommand::RecordTripPoint { .. } => "trip_location",
            RideCommand::Arrive { .. } => "ride_arrived",
            RideCommand::Pay { .. } => "payment_process",
            RideCommand::Cancel { .. } => "ride_cancel",
        }
    }
}

/// Checks on the command's own input, before anything else (SPEC.md §3 error order).
fn validate_input(command: &RideCommand, ctx: &Context<'_>) -> Result<(), DomainError> {
    match command {
        RideCommand::Create {
            driver_id,
            passenger_id,
            ..
        } => {
            if driver_id == passenger_id {
                return Err(DomainError::validation(
                    "a ride's driver and passenger must be different users",
                ));
            }
        }
        RideCommand::RecordTripPoint {
            recorded_at: Some(recorded_at),
            ..
        } => {
            let tolerance = chrono::TimeDelta::seconds(ctx.policy.trip.future_tolerance_s);
            if *recorded_at > ctx.now + tolerance {
                return Err(DomainError::validation(format!(
                    "recorded_at {} is more than {} s after the server's clock",
                    recorded_at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    ctx.policy.trip.future_tolerance_s
                )));
            }
        }
        RideCommand::Pay { amount, .. } => check_amount(*amount)?,
        RideCommand::Cancel { reason, .. } => {
            let reason = reason.trim();
            if reason.is_empty() {
                return Err(DomainError::validation("reason is required"));
            }
            if reason.chars().count() > MAX_CANCEL_REASON_CHARS {
                return Err(DomainError::validation(format!(
                    "reason must be at most {MAX_CANCEL_REASON_CHARS} characters"
                )));
            }
        }
        RideCommand::RecordTripPoint {
            recorded_at: None, ..
        }
        | RideCommand::Start { .. }
        | RideCommand::Arrive { .. } => {}
    }
    Ok(())
}

/// Amounts must be positive.
fn check_amount(amount: Rupiah) -> Result<(), DomainError> {
    if amount > Rupiah::ZERO {
        Ok(())
    } else {
        Err(DomainError::validation(format!(
            "amount must be positive, got {}",
            amount.get()
        )))
    }
}

/// The passenger must pay exactly the adjusted fare.
fn check_exact(bill: &Bill, amount: Rupiah) -> Result<Rupiah, DomainError> {
    let due = bill.fare.adjusted_fare;
    if amount == due {
        Ok(due)
    } else {
        Err(DomainError::new(
            ErrorCode::AmountMismatch,
            format!(
                "amount {} does not match the fare to pay, {}",
                amount.get(),
                due.get()
            ),
        ))
    }
}

/// Whether `actor` is the right participant for `command`.
fn authorize(booking: &Booking, command: &RideCommand) -> Result<(), DomainError> {
    let name = Ride::command_name(command);
    match command {
        // No actor: only the system builds it (see the module doc).
        RideCommand::Create { .. } => Ok(()),
        RideCommand::Start { actor, .. }
        | RideCommand::RecordTripPoint { actor, .. }
        | RideCommand::Arrive { actor, .. } => require_driver(booking, actor, name),
        RideCommand::Pay { actor, .. } => require_passenger(booking, actor, name),
        RideCommand::Cancel { actor, .. } => {
            if actor.user_id == booking.driver_id || actor.user_id == booking.passenger_id {
                Ok(())
            } else {
                Err(DomainError::forbidden(format!(
                    "only the ride's driver or passenger may {name}"
                )))
            }
        }
    }
}

fn require_driver(booking: &Booking, actor: &Actor, name: &str) -> Result<(), DomainError> {
    if actor.user_id == booking.driver_id {
        Ok(())
    } else {
        Err(DomainError::forbidden(format!(
            "only the ride's driver may {name}"
        )))
    }
}

fn require_passenger(booking: &Booking, actor: &Actor, name: &str) -> Result<(), DomainError> {
    if actor.user_id == booking.passenger_id {
        Ok(())
    } else {
        Err(DomainError::forbidden(format!(
            "only the ride's passenger may {name}"
        )))
    }
}

/// `ride_start`: the driver must be within the start radius of the passenger (or of the
/// pickup when the passenger's position is unknown).
fn start(
    booking: &Booking,
    driver_position: Option<GeoPoint>,
    passenger_position: Option<GeoPoint>,
    ctx: &Context<'_>,
) -> Result<Vec<RideEvent>, DomainError> {
    let Some(driver_position) = driver_position else {
        return Err(DomainError::new(ErrorCode::TooFar, "driver position unknown"));
    };
    let (target, what) = match passenger_position {
        Some(p) => (p, "passenger"),
        None => (booking.pickup, "pickup"),
    };
    let distance = driver_position.distance_m(&target);
    let radius = ctx.policy.trip.start_radius_m;
    // A NaN distance (never from valid points) is refused rather than let through.
    if distance.is_nan() || distance > radius {
        return Err(DomainError::new(
            ErrorCode::TooFar,
            format!("the driver is {distance:.0} m from the {what}; ride_start needs {radius} m or less"),
        ));
    }
    Ok(vec![RideEvent::Started {
        started_at: ctx.now,
        start_point: driver_position,
        rate_per_km: ctx.policy.fare.rate_per_km,
    }])
}

/// A trip point at time `at` against the last accepted point: rejected, jitter (no
/// event) or a billed segment.
fn record_trip_point(
    booking: &Booking,
    trip: &Trip,
    point: GeoPoint,
    at: DateTime<Utc>,
    ctx: &Context<'_>,
) -> Option<RideEvent> {
    let rejected = |reason| Some(RideEvent::TripPointRejected { point, at, reason });
    let last = trip.last;
    if at <= last.at {
        return rejected(TripPointRejection::NotAfterPrevious);
    }
    let distance = last.point.distance_m(&point);
    if distance < ctx.policy.trip.jitter_m {
        return None;
    }
    let elapsed = at - last.at;
    // Microseconds overflow only beyond 292,000 years; whole seconds are exact enough there.
    let elapsed_s = elapsed
        .num_microseconds()
        .map_or(elapsed.num_seconds() as f64, |us| us as f64 / 1e6);
    let speed_kmh = distance * 3.6 / elapsed_s;
    // NaN (a zero-length interval with no distance) counts as too fast.
    if speed_kmh.is_nan() || speed_kmh > ctx.policy.trip.max_speed_kmh {
        return rejected(TripPointRejection::TooFast);
    }
    let segment_m = billing::metres(distance);
    let cum_m = trip.distance_m.saturating_add(segment_m);
    let ordinal = trip.segments.saturating_add(1);
    Some(RideEvent::TripPointRecorded {
        entry_id: EntryId::derive(booking.ride_id, LedgerKind::TripSegment.as_str(), ordinal),
        point,
        at,
        segment_m,
        cum_m,
        segment_km: billing::km_from_metres(segment_m),
        cum_km: billing::km_from_metres(cum_m),
        cost: billing::segment_cost(trip.distance_m, cum_m, trip.rate_per_km),
    })
}

/// `ride_arrived`: prices the accepted segments at the ride's own rate.
fn arrive(booking: &Booking, trip: &Trip, factor: AdjustmentFactor, ctx: &Context<'_>) -> RideEvent {
    let policy = FarePolicy {
        rate_per_km: trip.rate_per_km,
        ..ctx.policy.fare
    };
    let bill = FareBreakdown::compute(trip.distance_m, factor, &policy);
    RideEvent::Arrived {
        driver_id: booking.driver_id,
        arrived_at: ctx.now,
        distance_m: bill.distance_m,
        distance_km: bill.distance_km(),
        base_fare: bill.base_fare,
        fare: bill.fare,
        fare_adjustment: bill.fare_adjustment.map(|a| a.entry(booking.ride_id)),
        adjustment_factor: bill.adjustment_factor,
        adjusted_fare: bill.adjusted_fare,
        discount: bill.discount.map(|a| a.entry(booking.ride_id)),
        admin_fee: bill.admin_fee,
        driver_payout: bill.driver_payout,
        payment_id: PaymentId::for_ride(booking.ride_id),
    }
}

/// `payment_process` on an `ARRIVED` ride.
fn pay(
    booking: &Booking,
    bill: &Bill,
    amount: Rupiah,
    outcome: &PaymentOutcome,
    ctx: &Context<'_>,
) -> Result<Vec<RideEvent>, DomainError> {
    let attempt = bill.attempts.saturating_add(1);
    let payment_id = bill.payment_id;
    match outcome {
        PaymentOutcome::Declined => Ok(vec![RideEvent::PaymentDeclined {
            payment_id,
            attempt,
            at: ctx.now,
        }]),
        PaymentOutcome::Failed { reason } => {
            check_exact(bill, amount)?;
            Ok(vec![RideEvent::PaymentFailed {
                payment_id,
                attempt,
                reason: reason.clone(),
                at: ctx.now,
            }])
        }
        PaymentOutcome::Charged { provider_ref } => {
            let amount = check_exact(bill, amount)?;
            let fare = &bill.fare;
            Ok(vec![
                RideEvent::PaymentAccepted {
                    payment_id,
                    attempt,
                    amount,
                    provider_ref: provider_ref.clone(),
                    at: ctx.now,
                },
                RideEvent::Completed {
                    driver_id: booking.driver_id,
                    passenger_id: booking.passenger_id,
                    completed_at: ctx.now,
                    fare: fare.fare,
                    adjusted_fare: fare.adjusted_fare,
                    admin_fee: fare.admin_fee,
                    driver_payout: fare.driver_payout,
                    distance_km: fare.distance_km(),
                },
            ])
        }
    }
}

impl Ride {
    /// The checks `payment_process` makes before the payment provider may be called:
    /// a positive amount (`validation_failed`), an existing ride (`not_found`), the
    /// ride's passenger (`forbidden`), `ARRIVED` (`invalid_transition`) and exactly the
    /// adjusted fare (`amount_mismatch`). Returns the amount due.
    ///
    /// For `accepted: true` only: a decline calls no provider and has no amount to
    /// match, so it goes straight to `decide` with [`PaymentOutcome::Declined`].
    pub fn check_payment(&self, actor: &Actor, amount: Rupiah) -> Result<Rupiah, DomainError> {
        check_amount(amount)?;
        let booking = self
            .booking()
            .ok_or_else(|| DomainError::not_found("no such ride"))?;
        require_passenger(booking, actor, "payment_process")?;
        match &self.phase {
            Phase::Arrived(_, _, bill) => check_exact(bill, amount),
            Phase::None
            | Phase::Pending(..)
            | Phase::InProgress(..)
            | Phase::Completed(..)
            | Phase::Cancelled(..) => Err(DomainError::invalid_transition(self.status(), "payment_process")),
        }
    }

    fn booking(&self) -> Option<&Booking> {
        match &self.phase {
            Phase::None => None,
            Phase::Pending(b)
            | Phase::InProgress(b, ..)
            | Phase::Arrived(b, ..)
            | Phase::Completed(b, ..)
            | Phase::Cancelled(b, ..) => Some(b),
        }
    }

    fn trip(&self) -> Option<&Trip> {
        match &self.phase {
            Phase::InProgress(_, t) | Phase::Arrived(_, t, ..) | Phase::Completed(_, t, ..) => Some(t),
            Phase::None | Phase::Pending(..) | Phase::Cancelled(..) => None,
        }
    }

    fn bill(&self) -> Option<&Bill> {
        match &self.phase {
            Phase::Arrived(_, _, b) | Phase::Completed(_, _, b, _) => Some(b),
            Phase::None | Phase::Pending(..) | Phase::InProgress(..) | Phase::Cancelled(..) => None,
        }
    }

    /// The status (`None` before creation).
    pub fn ride_status(&self) -> Option<RideStatus> {
        match self.phase {
            Phase::None => None,
            Phase::Pending(..) => Some(RideStatus::Pending),
            Phase::InProgress(..) => Some(RideStatus::InProgress),
            Phase::Arrived(..) => Some(RideStatus::Arrived),
            Phase::Completed(..) => Some(RideStatus::Completed),
            Phase::Cancelled(..) => Some(RideStatus::Cancelled),
        }
    }

    /// The ride's id.
    pub fn ride_id(&self) -> Option<RideId> {
        self.booking().map(|b| b.ride_id)
    }

    /// The match it was created from.
    pub fn match_id(&self) -> Option<MatchId> {
        self.booking().map(|b| b.match_id)
    }

    /// Its driver.
    pub fn driver_id(&self) -> Option<UserId> {
        self.booking().map(|b| b.driver_id)
    }

    /// Its passenger.
    pub fn passenger_id(&self) -> Option<UserId> {
        self.booking().map(|b| b.passenger_id)
    }

    /// The pickup.
    pub fn pickup(&self) -> Option<GeoPoint> {
        self.booking().map(|b| b.pickup)
    }

    /// The destination.
    pub fn destination(&self) -> Option<GeoPoint> {
        self.booking().map(|b| b.destination)
    }

    /// When it was created.
    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.booking().map(|b| b.created_at)
    }

    /// When it started.
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.trip().map(|t| t.started_at)
    }

    /// The driver's position at the start.
    pub fn start_point(&self) -> Option<GeoPoint> {
        self.trip().map(|t| t.start_point)
    }

    /// The rate per km the ride is billed at (fixed at the start).
    pub fn rate_per_km(&self) -> Option<Rupiah> {
        self.trip().map(|t| t.rate_per_km)
    }

    /// The last accepted trip point (the start point until a segment is accepted).
    pub fn last_trip_point(&self) -> Option<TripPoint> {
        self.trip().map(|t| t.last)
    }

    /// Billed distance so far, whole metres (0 before the start).
    pub fn distance_m(&self) -> i64 {
        self.trip().map_or(0, |t| t.distance_m)
    }

    /// Billed distance so far, km with 3 decimals.
    pub fn distance_km(&self) -> f64 {
        billing::km_from_metres(self.distance_m())
    }

    /// Accepted trip segments (`trip_segment` ledger entries) so far.
    pub fn trip_segments(&self) -> u32 {
        self.trip().map_or(0, |t| t.segments)
    }

    /// Sum of the trip segments' costs so far.
    pub fn trip_segments_cost(&self) -> Rupiah {
        self.trip().map_or(Rupiah::ZERO, |t| t.segments_cost)
    }

    /// Trip points rejected (stale or too fast) so far.
    pub fn rejected_trip_points(&self) -> u32 {
        self.trip().map_or(0, |t| t.rejected_points)
    }

    /// When the driver arrived.
    pub fn arrived_at(&self) -> Option<DateTime<Utc>> {
        self.bill().map(|b| b.arrived_at)
    }

    /// The fare fixed at arrival.
    pub fn fare_breakdown(&self) -> Option<&FareBreakdown> {
        self.bill().map(|b| &b.fare)
    }

    /// What the passenger must pay now: the adjusted fare while `ARRIVED`, else `None`.
    pub fn amount_due(&self) -> Option<Rupiah> {
        match &self.phase {
            Phase::Arrived(_, _, bill) => Some(bill.fare.adjusted_fare),
            Phase::None
            | Phase::Pending(..)
            | Phase::InProgress(..)
            | Phase::Completed(..)
            | Phase::Cancelled(..) => None,
        }
    }

    /// The ride's payment (created at arrival).
    pub fn payment_id(&self) -> Option<PaymentId> {
        self.bill().map(|b| b.payment_id)
    }

    /// The payment's status (`None` before arrival).
    pub fn payment_status(&self) -> Option<PaymentStatus> {
        self.bill().map(|b| b.payment_status)
    }

    /// `payment_process` commands that produced an event (0 before arrival).
    pub fn payment_attempts(&self) -> u32 {
        self.bill().map_or(0, |b| b.attempts)
    }

    /// The provider's reference of the accepted charge.
    pub fn provider_ref(&self) -> Option<&str> {
        self.bill().and_then(|b| b.provider_ref.as_deref())
    }

    /// When it was paid.
    pub fn completed_at(&self) -> Option<DateTime<Utc>> {
        match &self.phase {
            Phase::Completed(.., at) => Some(*at),
            Phase::None
            | Phase::Pending(..)
            | Phase::InProgress(..)
            | Phase::Arrived(..)
            | Phase::Cancelled(..) => None,
        }
    }

    /// Who cancelled, why and when.
    pub fn cancellation(&self) -> Option<(CancelledBy, &str, DateTime<Utc>)> {
        match &self.phase {
            Phase::Cancelled(_, c) => Some((c.by, c.reason.as_str(), c.cancelled_at)),
            Phase::None
            | Phase::Pending(..)
            | Phase::InProgress(..)
            | Phase::Arrived(..)
            | Phase::Completed(..) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actor::Role;
    use crate::aggregate::fold;
    use crate::billing::cost_of_distance;
    use crate::geo::EARTH_RADIUS_KM;
    use crate::policy::Policy;
    use chrono::{TimeDelta, TimeZone};
    use proptest::prelude::*;
    use uuid::Uuid;

    // ---------------------------------------------------------------- fixtures

    const DRIVER: UserId = UserId::from_uuid(Uuid::from_u128(0xD0));
    const PASSENGER: UserId = UserId::from_uuid(Uuid::from_u128(0xA0));
    const STRANGER: UserId = UserId::from_uuid(Uuid::from_u128(0x50));
    const RIDE: RideId = RideId::from_uuid(Uuid::from_u128(0x1D));
    const MATCH: MatchId = MatchId::from_uuid(Uuid::from_u128(0x3A));

    fn driver() -> Actor {
        Actor::new(DRIVER, Role::Driver)
    }
    fn passenger() -> Actor {
        Actor::new(PASSENGER, Role::Passenger)
    }
    fn stranger() -> Actor {
        Actor::new(STRANGER, Role::Passenger)
    }

    /// Seconds after a fixed instant.
    fn t(s: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 8, 0, 0).unwrap() + TimeDelta::seconds(s)
    }

    /// Metres per degree of latitude with the system's earth radius.
    fn metres_per_degree() -> f64 {
        EARTH_RADIUS_KM * 1000.0 * std::f64::consts::PI / 180.0
    }

    /// A point `north_m` / `east_m` metres from the pickup (-6.2, 106.8), rounded to 7
    /// decimals (about a centimetre) so that it survives a JSON round trip exactly.
    fn near(north_m: f64, east_m: f64) -> GeoPoint {
        let lat = -6.2 + north_m / metres_per_degree();
        let lon = 106.8 + east_m / (metres_per_degree() * (6.2f64).to_radians().cos());
        let round7 = |x: f64| format!("{x:.7}").parse::<f64>().unwrap();
        GeoPoint::new(round7(lat), round7(lon)).unwrap()
    }

    fn pickup() -> GeoPoint {
        near(0.0, 0.0)
    }

    fn destination() -> GeoPoint {
        GeoPoint::new(-6.25, 106.85).unwrap()
    }

    fn create_cmd() -> RideCommand {
        RideCommand::Create {
            ride_id: RIDE,
            match_id: MATCH,
            driver_id: DRIVER,
            passenger_id: PASSENGER,
            pickup: pickup(),
            destination: destination(),
        }
    }

    fn start_cmd(
        actor: Actor,
        driver_position: Option<GeoPoint>,
        passenger_position: Option<GeoPoint>,
    ) -> RideCommand {
        RideCommand::Start {
            actor,
            driver_position,
            passenger_position,
        }
    }

    fn point_cmd(actor: Actor, point: GeoPoint, recorded_at: Option<DateTime<Utc>>) -> RideCommand {
        RideCommand::RecordTripPoint {
            actor,
            point,
            recorded_at,
        }
    }

    /// The driver pings `north_m` north of the pickup at `t(s)`.
    fn ping(north_m: f64, s: i64) -> RideCommand {
        point_cmd(driver(), near(north_m, 0.0), Some(t(s)))
    }

    fn arrive_cmd(actor: Actor, factor: Option<&str>) -> RideCommand {
        RideCommand::Arrive {
            actor,
            adjustment_factor: factor.map(|f| AdjustmentFactor::parse(f).unwrap()),
        }
    }

    fn pay_cmd(actor: Actor, amount: i64, outcome: PaymentOutcome) -> RideCommand {
        RideCommand::Pay {
            actor,
            amount: Rupiah::new(amount),
            outcome,
        }
    }

    fn charged() -> PaymentOutcome {
        PaymentOutcome::Charged {
            provider_ref: "prov-1".into(),
        }
    }

    fn failed() -> PaymentOutcome {
        PaymentOutcome::Failed {
            reason: "card declined".into(),
        }
    }

    fn cancel_cmd(actor: Actor, reason: &str) -> RideCommand {
        RideCommand::Cancel {
            actor,
            reason: reason.into(),
        }
    }

    fn created() -> RideEvent {
        RideEvent::Created {
            ride_id: RIDE,
            match_id: MATCH,
            driver_id: DRIVER,
            passenger_id: PASSENGER,
            pickup: pickup(),
            destination: destination(),
            created_at: t(0),
        }
    }

    /// Started at the pickup at `t(10)`, 3000 per km.
    fn started() -> RideEvent {
        RideEvent::Started {
            started_at: t(10),
            start_point: pickup(),
            rate_per_km: Rupiah::new(3000),
        }
    }

    /// Runs commands `(time, command)` from nothing with the default policy; every one
    /// must be accepted. Builds the `given` of longer stories.
    fn history(steps: Vec<(i64, RideCommand)>) -> Vec<RideEvent> {
        history_with(&Policy::default(), steps)
    }

    fn history_with(policy: &Policy, steps: Vec<(i64, RideCommand)>) -> Vec<RideEvent> {
        let mut ride = Ride::default();
        let mut events = Vec::new();
        for (s, cmd) in steps {
            let ctx = Context { now: t(s), policy };
            let new = ride
                .decide(&cmd, &ctx)
                .unwrap_or_else(|e| panic!("{cmd:?} refused: {e}"));
            for e in &new {
                ride.evolve(e);
            }
            events.extend(new);
        }
        events
    }

    fn pending() -> Vec<RideEvent> {
        vec![created()]
    }

    fn in_progress() -> Vec<RideEvent> {
        vec![created(), started()]
    }

    /// In progress with 2 km driven north in four 500 m segments, one a minute.
    fn driven_2km() -> Vec<(i64, RideCommand)> {
        vec![
            (0, create_cmd()),
            (10, start_cmd(driver(), Some(pickup()), None)),
            (70, ping(500.0, 70)),
            (130, ping(1000.0, 130)),
            (190, ping(1500.0, 190)),
            (250, ping(2000.0, 250)),
        ]
    }

    /// Arrived after 2 km: fare 6000, to pay 6000.
    fn arrived() -> Vec<RideEvent> {
        let mut steps = driven_2km();
        steps.push((300, arrive_cmd(driver(), None)));
        history(steps)
    }

    fn completed() -> Vec<RideEvent> {
        let mut steps = driven_2km();
        steps.push((300, arrive_cmd(driver(), None)));
        steps.push((400, pay_cmd(passenger(), 6000, charged())));
        history(steps)
    }

    fn cancelled() -> Vec<RideEvent> {
        history(vec![
            (0, create_cmd()),
            (5, cancel_cmd(passenger(), "changed my mind")),
        ])
    }

    /// Every existing status with the name it reports.
    fn every_existing_status() -> Vec<(&'static str, Vec<RideEvent>)> {
        vec![
            ("PENDING", pending()),
            ("IN_PROGRESS", in_progress()),
            ("ARRIVED", arrived()),
            ("COMPLETED", completed()),
            ("CANCELLED", cancelled()),
        ]
    }

    // ------------------------------------------------------- given / when / then

    struct Given {
        ride: Ride,
        policy: Policy,
        now: DateTime<Utc>,
    }

    fn given(events: Vec<RideEvent>) -> Given {
        Given {
            ride: fold(&events),
            policy: Policy::default(),
            now: t(1000),
        }
    }

    impl Given {
        fn at(mut self, now: DateTime<Utc>) -> Self {
            self.now = now;
            self
        }

        fn policy(mut self, change: impl FnOnce(&mut Policy)) -> Self {
            change(&mut self.policy);
            self
        }

        fn when(self, command: RideCommand) -> Then {
            let ctx = Context {
                now: self.now,
                policy: &self.policy,
            };
            let result = self.ride.decide(&command, &ctx);
            Then {
                ride: self.ride,
                result,
            }
        }
    }

    struct Then {
        ride: Ride,
        result: Result<Vec<RideEvent>, DomainError>,
    }

    impl Then {
        /// The command was accepted with exactly these events; returns the new state.
        fn then_events(self, expected: &[RideEvent]) -> Ride {
            let (ride, events) = self.accepted();
            assert_eq!(events, expected);
            ride
        }

        /// The command was accepted; the events and the new state, to inspect.
        fn accepted(self) -> (Ride, Vec<RideEvent>) {
            let mut ride = self.ride;
            let events = self.result.unwrap_or_else(|e| panic!("refused: {e}"));
            for e in &events {
                ride.evolve(e);
            }
            (ride, events)
        }

        /// The command was refused with `code`; returns the error for its message.
        fn then_error(self, code: ErrorCode) -> DomainError {
            match self.result {
                Ok(events) => panic!("expected {code}, got events {events:?}"),
                Err(e) => {
                    assert_eq!(e.code, code, "{e}");
                    e
                }
            }
        }
    }

    fn only<T: std::fmt::Debug>(mut v: Vec<T>) -> T {
        assert_eq!(v.len(), 1, "{v:?}");
        v.remove(0)
    }

    // ------------------------------------------------------------------ create

    #[test]
    fn create_records_a_pending_ride_with_every_field() {
        let ride = given(vec![])
            .at(t(0))
            .when(create_cmd())
            .then_events(&[created()]);
        assert_eq!(ride.status(), "PENDING");
        assert_eq!(ride.ride_status(), Some(RideStatus::Pending));
        assert!(ride.exists());
        assert_eq!(ride.ride_id(), Some(RIDE));
        assert_eq!(ride.match_id(), Some(MATCH));
        assert_eq!(ride.driver_id(), Some(DRIVER));
        assert_eq!(ride.passenger_id(), Some(PASSENGER));
        assert_eq!(ride.pickup(), Some(pickup()));
        assert_eq!(ride.destination(), Some(destination()));
        assert_eq!(ride.created_at(), Some(t(0)));
        assert_eq!(ride.payment_status(), None);
        assert_eq!(ride.started_at(), None);
    }

    #[test]
    fn create_with_the_driver_as_passenger_is_validation_failed() {
        let cmd = RideCommand::Create {
            ride_id: RIDE,
            match_id: MATCH,
            driver_id: DRIVER,
            passenger_id: DRIVER,
            pickup: pickup(),
            destination: destination(),
        };
        given(vec![])
            .when(cmd.clone())
            .then_error(ErrorCode::ValidationFailed);
        // Validation comes before the status check.
        given(pending()).when(cmd).then_error(ErrorCode::ValidationFailed);
    }

    #[test]
    fn create_on_an_existing_ride_is_invalid_transition_naming_the_status() {
        for (status, events) in every_existing_status() {
            let err = given(events)
                .when(create_cmd())
                .then_error(ErrorCode::InvalidTransition);
            assert!(
                err.message.contains(status) && err.message.contains("create"),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn a_ride_that_does_not_exist_reports_none_and_has_no_details() {
        let ride = Ride::default();
        assert!(!ride.exists());
        assert_eq!(ride.status(), "NONE");
        assert_eq!(ride.ride_status(), None);
        assert_eq!(ride.ride_id(), None);
        assert_eq!(ride.distance_m(), 0);
        assert_eq!(ride.amount_due(), None);
    }

    #[test]
    fn every_other_command_on_a_missing_ride_is_not_found() {
        for cmd in [
            start_cmd(driver(), Some(pickup()), None),
            ping(100.0, 20),
            arrive_cmd(driver(), None),
            pay_cmd(passenger(), 6000, charged()),
            cancel_cmd(passenger(), "bye"),
        ] {
            given(vec![]).when(cmd).then_error(ErrorCode::NotFound);
        }
    }

    #[test]
    fn invalid_input_on_a_missing_ride_is_validation_before_not_found() {
        given(vec![])
            .when(cancel_cmd(passenger(), " "))
            .then_error(ErrorCode::ValidationFailed);
        given(vec![])
            .when(pay_cmd(passenger(), 0, charged()))
            .then_error(ErrorCode::ValidationFailed);
        given(vec![])
            .at(t(0))
            .when(point_cmd(driver(), pickup(), Some(t(60))))
            .then_error(ErrorCode::ValidationFailed);
    }

    // ------------------------------------------------------------------- start

    #[test]
    fn driver_near_the_passenger_starts_the_ride_from_their_position() {
        let driver_at = near(0.0, 60.0);
        let ride = given(pending())
            .at(t(10))
            .when(start_cmd(driver(), Some(driver_at), Some(near(0.0, 10.0))))
            .then_events(&[RideEvent::Started {
                started_at: t(10),
                start_point: driver_at,
                rate_per_km: Rupiah::new(3000),
            }]);
        assert_eq!(ride.status(), "IN_PROGRESS");
        assert_eq!(ride.started_at(), Some(t(10)));
        assert_eq!(ride.start_point(), Some(driver_at));
        assert_eq!(
            ride.last_trip_point(),
            Some(TripPoint {
                point: driver_at,
                at: t(10)
            })
        );
        assert_eq!(ride.distance_m(), 0);
    }

    #[test]
    fn start_measures_against_the_pickup_when_the_passenger_sent_no_position() {
        given(pending())
            .when(start_cmd(driver(), Some(near(99.0, 0.0)), None))
            .accepted();
        let err = given(pending())
            .when(start_cmd(driver(), Some(near(101.0, 0.0)), None))
            .then_error(ErrorCode::TooFar);
        assert!(
            err.message.contains("101 m") && err.message.contains("pickup"),
            "{}",
            err.message
        );
    }

    #[test]
    fn start_measures_against_the_passenger_not_the_pickup_when_known() {
        // At the pickup, but the passenger walked 300 m away.
        let err = given(pending())
            .when(start_cmd(driver(), Some(pickup()), Some(near(300.0, 0.0))))
            .then_error(ErrorCode::TooFar);
        assert!(err.message.contains("passenger"), "{}", err.message);
        // 300 m from the pickup, next to the passenger.
        given(pending())
            .when(start_cmd(
                driver(),
                Some(near(300.0, 5.0)),
                Some(near(300.0, 0.0)),
            ))
            .accepted();
    }

    #[test]
    fn start_without_a_driver_position_is_too_far_driver_position_unknown() {
        let err = given(pending())
            .when(start_cmd(driver(), None, Some(pickup())))
            .then_error(ErrorCode::TooFar);
        assert_eq!(err.message, "driver position unknown");
    }

    #[test]
    fn start_radius_comes_from_the_policy() {
        given(pending())
            .policy(|p| p.trip.start_radius_m = 500.0)
            .when(start_cmd(driver(), Some(near(400.0, 0.0)), None))
            .accepted();
    }

    #[test]
    fn start_by_anyone_but_the_driver_is_forbidden() {
        for actor in [passenger(), stranger(), Actor::SYSTEM] {
            given(pending())
                .when(start_cmd(actor, Some(pickup()), None))
                .then_error(ErrorCode::Forbidden);
        }
    }

    #[test]
    fn start_when_not_pending_is_invalid_transition() {
        for (status, events) in every_existing_status().into_iter().skip(1) {
            let err = given(events)
                .when(start_cmd(driver(), Some(pickup()), None))
                .then_error(ErrorCode::InvalidTransition);
            assert!(err.message.contains(status) && err.message.contains("ride_start"));
        }
    }

    #[test]
    fn forbidden_comes_before_invalid_transition_and_invalid_transition_before_too_far() {
        given(in_progress())
            .when(start_cmd(stranger(), Some(pickup()), None))
            .then_error(ErrorCode::Forbidden);
        given(in_progress())
            .when(start_cmd(driver(), None, None))
            .then_error(ErrorCode::InvalidTransition);
    }

    // ------------------------------------------------------------ trip points

    #[test]
    fn first_point_is_a_segment_from_the_start_point() {
        let ride = given(in_progress())
            .at(t(70))
            .when(ping(500.0, 70))
            .then_events(&[RideEvent::TripPointRecorded {
                entry_id: EntryId::derive(RIDE, "trip_segment", 1),
                point: near(500.0, 0.0),
                at: t(70),
                segment_m: 500,
                cum_m: 500,
                segment_km: 0.5,
                cum_km: 0.5,
                cost: Rupiah::new(1500),
            }]);
        assert_eq!(ride.distance_m(), 500);
        assert_eq!(ride.trip_segments(), 1);
        assert_eq!(ride.trip_segments_cost(), Rupiah::new(1500));
        assert_eq!(
            ride.last_trip_point(),
            Some(TripPoint {
                point: near(500.0, 0.0),
                at: t(70)
            })
        );
    }

    #[test]
    fn segment_costs_telescope_so_rounding_never_accumulates() {
        // At 2999/km: 111 m is 332.889 → 333; 333 m in all is 998.667 → 999, so the
        // second segment costs 666 and the two add up to round(0.333 × 2999).
        let policy = Policy {
            fare: FarePolicy {
                rate_per_km: Rupiah::new(2999),
                ..FarePolicy::default()
            },
            ..Policy::default()
        };
        let events = history_with(
            &policy,
            vec![
                (0, create_cmd()),
                (10, start_cmd(driver(), Some(pickup()), None)),
                (20, ping(111.0, 20)),
                (30, ping(333.0, 30)),
            ],
        );
        let costs: Vec<(i64, i64)> = events
            .iter()
            .filter_map(|e| match e {
                RideEvent::TripPointRecorded { cum_m, cost, .. } => Some((*cum_m, cost.get())),
                _ => None,
            })
            .collect();
        assert_eq!(costs, vec![(111, 333), (333, 666)]);
        assert_eq!(
            fold::<Ride>(&events).trip_segments_cost(),
            cost_of_distance(333, Rupiah::new(2999))
        );
    }

    #[test]
    fn point_without_recorded_at_is_timed_by_the_server() {
        let (_, events) = given(in_progress())
            .at(t(40))
            .when(point_cmd(driver(), near(300.0, 0.0), None))
            .accepted();
        assert!(matches!(only(events), RideEvent::TripPointRecorded { at, .. } if at == t(40)));
    }

    #[test]
    fn recorded_at_up_to_five_seconds_ahead_is_accepted_beyond_is_validation_failed() {
        given(in_progress())
            .at(t(40))
            .when(point_cmd(driver(), near(300.0, 0.0), Some(t(45))))
            .accepted();
        let err = given(in_progress())
            .at(t(40))
            .when(point_cmd(
                driver(),
                near(300.0, 0.0),
                Some(t(45) + TimeDelta::milliseconds(1)),
            ))
            .then_error(ErrorCode::ValidationFailed);
        assert!(err.message.contains("recorded_at"), "{}", err.message);
    }

    #[test]
    fn future_recorded_at_is_validation_failed_before_forbidden_and_invalid_transition() {
        let future = point_cmd(stranger(), pickup(), Some(t(1000)));
        given(in_progress())
            .at(t(40))
            .when(future)
            .then_error(ErrorCode::ValidationFailed);
        let future = point_cmd(driver(), pickup(), Some(t(1000)));
        given(pending())
            .at(t(40))
            .when(future)
            .then_error(ErrorCode::ValidationFailed);
    }

    #[test]
    fn jitter_records_nothing_and_keeps_the_reference_so_slow_movement_is_billed() {
        let ride = given(in_progress())
            .at(t(20))
            .when(ping(9.0, 20))
            .then_events(&[]);
        assert_eq!(ride, fold(&in_progress()), "jitter changes nothing");
        let ride = given(in_progress())
            .at(t(20))
            .when(ping(5.0, 20))
            .then_events(&[]);
        // The next point is 6 m from the jitter point but 15 m from the start point.
        let (ride, events) = Given {
            ride,
            policy: Policy::default(),
            now: t(30),
        }
        .when(ping(15.0, 30))
        .accepted();
        assert!(
            matches!(
                only(events),
                RideEvent::TripPointRecorded {
                    segment_m: 15,
                    cum_m: 15,
                    ..
                }
            ),
            "the segment covers the slow movement from the last accepted point"
        );
        assert_eq!(ride.distance_m(), 15);
    }

    #[test]
    fn jitter_threshold_comes_from_the_policy() {
        given(in_progress())
            .at(t(20))
            .policy(|p| p.trip.jitter_m = 1.0)
            .when(ping(5.0, 20))
            .accepted();
    }

    #[test]
    fn point_not_after_the_last_accepted_one_is_rejected_and_recorded() {
        // Same time as the start point.
        let ride = given(in_progress())
            .at(t(20))
            .when(ping(100.0, 10))
            .then_events(&[RideEvent::TripPointRejected {
                point: near(100.0, 0.0),
                at: t(10),
                reason: TripPointRejection::NotAfterPrevious,
            }]);
        assert_eq!(ride.rejected_trip_points(), 1);
        assert_eq!(
            ride.last_trip_point().map(|p| p.at),
            Some(t(10)),
            "the reference stays"
        );
        // Before the last accepted segment.
        let mut steps = driven_2km();
        steps.truncate(3);
        given(history(steps))
            .at(t(80))
            .when(ping(800.0, 60))
            .then_events(&[RideEvent::TripPointRejected {
                point: near(800.0, 0.0),
                at: t(60),
                reason: TripPointRejection::NotAfterPrevious,
            }]);
    }

    #[test]
    fn stale_jitter_point_is_rejected_as_not_after_previous() {
        // Time is checked before distance: a stale point says nothing about now.
        given(in_progress())
            .at(t(20))
            .when(ping(3.0, 5))
            .then_events(&[RideEvent::TripPointRejected {
                point: near(3.0, 0.0),
                at: t(5),
                reason: TripPointRejection::NotAfterPrevious,
            }]);
    }

    #[test]
    fn point_implying_more_than_200_kmh_is_rejected_too_fast_and_the_reference_stays() {
        // 1 km in 10 s is 360 km/h.
        let ride = given(in_progress())
            .at(t(20))
            .when(ping(1000.0, 20))
            .then_events(&[RideEvent::TripPointRejected {
                point: near(1000.0, 0.0),
                at: t(20),
                reason: TripPointRejection::TooFast,
            }]);
        // 1 km in 19 s from the start point is 189 km/h: accepted, measured from the start.
        let (_, events) = Given {
            ride,
            policy: Policy::default(),
            now: t(29),
        }
        .when(ping(1000.0, 29))
        .accepted();
        assert!(matches!(
            only(events),
            RideEvent::TripPointRecorded { cum_m: 1000, .. }
        ));
    }

    #[test]
    fn entry_ordinals_count_accepted_segments_only() {
        let events = history(vec![
            (0, create_cmd()),
            (10, start_cmd(driver(), Some(pickup()), None)),
            (20, ping(100.0, 20)),
            (21, ping(104.0, 21)),  // jitter
            (22, ping(5000.0, 22)), // too fast
            (23, ping(100.0, 15)),  // stale
            (40, ping(300.0, 40)),
        ]);
        let ids: Vec<EntryId> = events
            .iter()
            .filter_map(|e| match e {
                RideEvent::TripPointRecorded { entry_id, .. } => Some(*entry_id),
                _ => None,
            })
            .collect();
        assert_eq!(
            ids,
            vec![
                EntryId::derive(RIDE, "trip_segment", 1),
                EntryId::derive(RIDE, "trip_segment", 2)
            ]
        );
        assert_eq!(fold::<Ride>(&events).rejected_trip_points(), 2);
    }

    #[test]
    fn trip_point_from_anyone_but_the_driver_is_forbidden() {
        for actor in [passenger(), stranger(), Actor::SYSTEM] {
            given(in_progress())
                .at(t(70))
                .when(point_cmd(actor, near(500.0, 0.0), None))
                .then_error(ErrorCode::Forbidden);
        }
    }

    #[test]
    fn trip_point_outside_in_progress_is_invalid_transition() {
        for (status, events) in every_existing_status() {
            if status == "IN_PROGRESS" {
                continue;
            }
            let err = given(events)
                .when(point_cmd(driver(), near(500.0, 0.0), None))
                .then_error(ErrorCode::InvalidTransition);
            assert!(err.message.contains("trip_location") && err.message.contains(status));
        }
    }

    // ----------------------------------------------------------------- arrive

    #[test]
    fn arrival_prices_the_accepted_distance_and_creates_the_payment() {
        let ride = given(history(driven_2km()))
            .at(t(300))
            .when(arrive_cmd(driver(), None))
            .then_events(&[RideEvent::Arrived {
                driver_id: DRIVER,
                arrived_at: t(300),
                distance_m: 2000,
                distance_km: 2.0,
                base_fare: Rupiah::new(6000),
                fare: Rupiah::new(6000),
                fare_adjustment: None,
                adjustment_factor: AdjustmentFactor::ONE,
                adjusted_fare: Rupiah::new(6000),
                discount: None,
                admin_fee: Rupiah::new(300),
                driver_payout: Rupiah::new(5700),
                payment_id: PaymentId::for_ride(RIDE),
            }]);
        assert_eq!(ride.status(), "ARRIVED");
        assert_eq!(ride.arrived_at(), Some(t(300)));
        assert_eq!(ride.payment_status(), Some(PaymentStatus::Pending));
        assert_eq!(ride.payment_attempts(), 0);
        assert_eq!(ride.payment_id(), Some(PaymentId::for_ride(RIDE)));
        assert_eq!(ride.amount_due(), Some(Rupiah::new(6000)));
        let fare = ride.fare_breakdown().copied().unwrap();
        assert_eq!(
            fare,
            FareBreakdown::compute(2000, AdjustmentFactor::ONE, &FarePolicy::default())
        );
    }

    #[test]
    fn short_trip_is_raised_to_the_minimum_fare_with_a_ledger_entry() {
        let (_, events) = given(history(vec![
            (0, create_cmd()),
            (10, start_cmd(driver(), Some(pickup()), None)),
            (70, ping(500.0, 70)),
        ]))
        .when(arrive_cmd(driver(), None))
        .accepted();
        let RideEvent::Arrived {
            base_fare,
            fare,
            fare_adjustment,
            ..
        } = only(events)
        else {
            panic!("not arrived")
        };
        assert_eq!((base_fare.get(), fare.get()), (1500, 5000));
        assert_eq!(
            fare_adjustment,
            Some(LedgerEntry {
                entry_id: EntryId::derive(RIDE, "minimum_fare", 1),
                kind: LedgerKind::MinimumFare,
                cost: Rupiah::new(3500),
            })
        );
    }

    #[test]
    fn arrival_without_any_segment_charges_the_minimum_fare() {
        let (ride, _) = given(in_progress()).when(arrive_cmd(driver(), None)).accepted();
        let fare = ride.fare_breakdown().unwrap();
        assert_eq!(
            (fare.distance_m, fare.base_fare.get(), fare.fare.get()),
            (0, 0, 5000)
        );
    }

    #[test]
    fn long_trip_is_capped_at_the_maximum_fare_with_a_negative_ledger_entry() {
        // Four 50 km legs at 180 km/h: 200 km would be 600,000.
        let mut steps = vec![(0, create_cmd()), (10, start_cmd(driver(), Some(pickup()), None))];
        for leg in 1..=4i64 {
            let s = 10 + leg * 1000;
            steps.push((s, ping(50_000.0 * leg as f64, s)));
        }
        let (_, events) = given(history(steps))
            .at(t(5000))
            .when(arrive_cmd(driver(), None))
            .accepted();
        let RideEvent::Arrived {
            base_fare,
            fare,
            fare_adjustment,
            ..
        } = only(events)
        else {
            panic!("not arrived")
        };
        assert_eq!((base_fare.get(), fare.get()), (600_000, 500_000));
        assert_eq!(
            fare_adjustment,
            Some(LedgerEntry {
                entry_id: EntryId::derive(RIDE, "maximum_fare", 1),
                kind: LedgerKind::MaximumFare,
                cost: Rupiah::new(-100_000),
            })
        );
    }

    #[test]
    fn adjustment_factor_books_a_driver_discount() {
        let (ride, events) = given(history(driven_2km()))
            .when(arrive_cmd(driver(), Some("0.8")))
            .accepted();
        let RideEvent::Arrived {
            adjustment_factor,
            adjusted_fare,
            discount,
            admin_fee,
            driver_payout,
            ..
        } = only(events)
        else {
            panic!("not arrived")
        };
        assert_eq!(adjustment_factor.bps(), 8000);
        assert_eq!(
            (adjusted_fare.get(), admin_fee.get(), driver_payout.get()),
            (4800, 240, 4560)
        );
        assert_eq!(
            discount,
            Some(LedgerEntry {
                entry_id: EntryId::derive(RIDE, "driver_discount", 1),
                kind: LedgerKind::DriverDiscount,
                cost: Rupiah::new(-1200),
            })
        );
        assert_eq!(ride.amount_due(), Some(Rupiah::new(4800)));
    }

    #[test]
    fn spec_fare_examples_hold_through_the_aggregate() {
        // At 1000/km a trip of `fare` metres costs exactly `fare`.
        let policy = Policy {
            fare: FarePolicy {
                rate_per_km: Rupiah::new(1000),
                ..FarePolicy::default()
            },
            ..Policy::default()
        };
        for (fare, factor, expected) in [
            (10_000, "0.8", (8000, 400, 7600)),
            (9600, "0.9", (8640, 432, 8208)),
            (7500, "0.33", (2475, 123, 2352)),
            (5000, "0.57", (2850, 142, 2708)),
        ] {
            let trip = history_with(
                &policy,
                vec![
                    (0, create_cmd()),
                    (10, start_cmd(driver(), Some(pickup()), None)),
                    (610, ping(fare as f64, 610)),
                ],
            );
            let (ride, _) = given(trip)
                .policy(|p| *p = policy)
                .when(arrive_cmd(driver(), Some(factor)))
                .accepted();
            let b = ride.fare_breakdown().unwrap();
            assert_eq!(b.fare.get(), fare);
            assert_eq!(
                (b.adjusted_fare.get(), b.admin_fee.get(), b.driver_payout.get()),
                expected,
                "{factor}"
            );
        }
    }

    #[test]
    fn jitter_left_at_arrival_is_not_billed() {
        let mut steps = driven_2km();
        steps.push((280, ping(2008.0, 280)));
        let (ride, _) = given(history(steps)).when(arrive_cmd(driver(), None)).accepted();
        assert_eq!(ride.fare_breakdown().unwrap().distance_m, 2000);
    }

    #[test]
    fn rate_is_fixed_at_the_start_so_a_config_change_mid_ride_keeps_the_ledger_whole() {
        let expensive = Policy {
            fare: FarePolicy {
                rate_per_km: Rupiah::new(5000),
                ..FarePolicy::default()
            },
            ..Policy::default()
        };
        // Started at 3000/km; the configuration says 5000/km from then on.
        let mut events = history(vec![
            (0, create_cmd()),
            (10, start_cmd(driver(), Some(pickup()), None)),
        ]);
        let mut ride: Ride = fold(&events);
        for (s, north) in [(70, 500.0), (130, 1000.0)] {
            let ctx = Context {
                now: t(s),
                policy: &expensive,
            };
            let new = ride.decide(&ping(north, s), &ctx).unwrap();
            new.iter().for_each(|e| ride.evolve(e));
            events.extend(new);
        }
        assert_eq!(ride.trip_segments_cost(), Rupiah::new(3000));
        assert_eq!(ride.rate_per_km(), Some(Rupiah::new(3000)));
        let (ride, _) = given(events)
            .policy(|p| *p = expensive)
            .when(arrive_cmd(driver(), Some("1")))
            .accepted();
        assert_eq!(ride.fare_breakdown().unwrap().base_fare, Rupiah::new(3000));
    }

    #[test]
    fn arrive_by_anyone_but_the_driver_is_forbidden() {
        for actor in [passenger(), stranger(), Actor::SYSTEM] {
            given(in_progress())
                .when(arrive_cmd(actor, None))
                .then_error(ErrorCode::Forbidden);
        }
    }

    #[test]
    fn arrive_outside_in_progress_is_invalid_transition() {
        for (status, events) in every_existing_status() {
            if status == "IN_PROGRESS" {
                continue;
            }
            let err = given(events)
                .when(arrive_cmd(driver(), None))
                .then_error(ErrorCode::InvalidTransition);
            assert!(err.message.contains("ride_arrived") && err.message.contains(status));
        }
    }

    // -------------------------------------------------------------------- pay

    #[test]
    fn charged_exact_amount_accepts_the_payment_and_completes_the_ride() {
        let ride = given(arrived())
            .at(t(400))
            .when(pay_cmd(passenger(), 6000, charged()))
            .then_events(&[
                RideEvent::PaymentAccepted {
                    payment_id: PaymentId::for_ride(RIDE),
                    attempt: 1,
                    amount: Rupiah::new(6000),
                    provider_ref: "prov-1".into(),
                    at: t(400),
                },
                RideEvent::Completed {
                    driver_id: DRIVER,
                    passenger_id: PASSENGER,
                    completed_at: t(400),
                    fare: Rupiah::new(6000),
                    adjusted_fare: Rupiah::new(6000),
                    admin_fee: Rupiah::new(300),
                    driver_payout: Rupiah::new(5700),
                    distance_km: 2.0,
                },
            ]);
        assert_eq!(ride.status(), "COMPLETED");
        assert_eq!(ride.payment_status(), Some(PaymentStatus::Accepted));
        assert_eq!(ride.payment_attempts(), 1);
        assert_eq!(ride.provider_ref(), Some("prov-1"));
        assert_eq!(ride.completed_at(), Some(t(400)));
        assert_eq!(ride.amount_due(), None);
        assert!(ride.fare_breakdown().is_some());
    }

    #[test]
    fn charged_or_failed_with_another_amount_is_amount_mismatch() {
        for outcome in [charged(), failed()] {
            let err = given(arrived())
                .when(pay_cmd(passenger(), 5999, outcome))
                .then_error(ErrorCode::AmountMismatch);
            assert!(err.message.contains("6000"), "{}", err.message);
        }
    }

    #[test]
    fn failed_charge_is_recorded_and_leaves_the_ride_payable() {
        let ride = given(arrived())
            .at(t(400))
            .when(pay_cmd(passenger(), 6000, failed()))
            .then_events(&[RideEvent::PaymentFailed {
                payment_id: PaymentId::for_ride(RIDE),
                attempt: 1,
                reason: "card declined".into(),
                at: t(400),
            }]);
        assert_eq!(ride.status(), "ARRIVED");
        assert_eq!(ride.payment_status(), Some(PaymentStatus::Failed));
        assert_eq!(ride.amount_due(), Some(Rupiah::new(6000)));
    }

    #[test]
    fn declined_payment_is_recorded_without_an_amount_check_and_leaves_the_ride_payable() {
        let ride = given(arrived())
            .at(t(400))
            .when(pay_cmd(passenger(), 1, PaymentOutcome::Declined))
            .then_events(&[RideEvent::PaymentDeclined {
                payment_id: PaymentId::for_ride(RIDE),
                attempt: 1,
                at: t(400),
            }]);
        assert_eq!(ride.status(), "ARRIVED");
        assert_eq!(ride.payment_status(), Some(PaymentStatus::Declined));
    }

    #[test]
    fn every_recorded_payment_attempt_counts_and_a_later_charge_completes() {
        let mut events = arrived();
        for (s, outcome) in [(400, PaymentOutcome::Declined), (410, failed())] {
            let (_, new) = given(events.clone())
                .at(t(s))
                .when(pay_cmd(passenger(), 6000, outcome))
                .accepted();
            events.extend(new);
        }
        // A refused attempt (wrong amount) is not an attempt.
        given(events.clone())
            .when(pay_cmd(passenger(), 1, charged()))
            .then_error(ErrorCode::AmountMismatch);
        let (ride, new) = given(events)
            .at(t(420))
            .when(pay_cmd(passenger(), 6000, charged()))
            .accepted();
        assert!(matches!(new[0], RideEvent::PaymentAccepted { attempt: 3, .. }));
        assert_eq!(ride.payment_attempts(), 3);
        assert_eq!(ride.status(), "COMPLETED");
    }

    #[test]
    fn non_positive_amount_is_validation_failed_before_forbidden_and_status() {
        for amount in [0, -6000] {
            for outcome in [PaymentOutcome::Declined, charged(), failed()] {
                given(arrived())
                    .when(pay_cmd(stranger(), amount, outcome.clone()))
                    .then_error(ErrorCode::ValidationFailed);
            }
            given(pending())
                .when(pay_cmd(passenger(), amount, charged()))
                .then_error(ErrorCode::ValidationFailed);
        }
    }

    #[test]
    fn pay_by_anyone_but_the_passenger_is_forbidden() {
        for actor in [driver(), stranger(), Actor::SYSTEM] {
            given(arrived())
                .when(pay_cmd(actor, 6000, charged()))
                .then_error(ErrorCode::Forbidden);
        }
    }

    #[test]
    fn pay_when_not_arrived_is_invalid_transition_even_with_a_wrong_amount() {
        for (status, events) in every_existing_status() {
            if status == "ARRIVED" {
                continue;
            }
            for outcome in [PaymentOutcome::Declined, charged(), failed()] {
                let err = given(events.clone())
                    .when(pay_cmd(passenger(), 123, outcome))
                    .then_error(ErrorCode::InvalidTransition);
                assert!(err.message.contains("payment_process") && err.message.contains(status));
            }
        }
    }

    #[test]
    fn check_payment_makes_the_pre_provider_checks_in_order() {
        let ride: Ride = fold(&arrived());
        assert_eq!(
            ride.check_payment(&passenger(), Rupiah::new(6000)),
            Ok(Rupiah::new(6000))
        );
        let code = |ride: &Ride, actor: Actor, amount: i64| {
            ride.check_payment(&actor, Rupiah::new(amount)).unwrap_err().code
        };
        assert_eq!(code(&ride, passenger(), 5000), ErrorCode::AmountMismatch);
        assert_eq!(code(&ride, driver(), 5000), ErrorCode::Forbidden);
        assert_eq!(code(&ride, driver(), 0), ErrorCode::ValidationFailed);
        assert_eq!(code(&Ride::default(), passenger(), 6000), ErrorCode::NotFound);
        assert_eq!(
            code(&Ride::default(), passenger(), -1),
            ErrorCode::ValidationFailed
        );
        for (status, events) in every_existing_status() {
            if status != "ARRIVED" {
                assert_eq!(
                    code(&fold(&events), passenger(), 1),
                    ErrorCode::InvalidTransition,
                    "{status}"
                );
            }
        }
    }

    // ----------------------------------------------------------------- cancel

    #[test]
    fn passenger_cancels_a_pending_ride_with_a_trimmed_reason() {
        let ride = given(pending())
            .at(t(5))
            .when(cancel_cmd(passenger(), "  changed my mind \n"))
            .then_events(&[RideEvent::Cancelled {
                driver_id: DRIVER,
                passenger_id: PASSENGER,
                by: CancelledBy::Passenger,
                reason: "changed my mind".into(),
                cancelled_at: t(5),
            }]);
        assert_eq!(ride.status(), "CANCELLED");
        assert_eq!(
            ride.cancellation(),
            Some((CancelledBy::Passenger, "changed my mind", t(5)))
        );
    }

    #[test]
    fn driver_cancels_a_pending_ride() {
        let (_, events) = given(pending())
            .when(cancel_cmd(driver(), "flat tyre"))
            .accepted();
        assert!(matches!(
            only(events),
            RideEvent::Cancelled {
                by: CancelledBy::Driver,
                ..
            }
        ));
    }

    #[test]
    fn cancel_reason_is_required_and_at_most_500_characters() {
        for bad in ["", "   ", "\n\t"] {
            let err = given(pending())
                .when(cancel_cmd(passenger(), bad))
                .then_error(ErrorCode::ValidationFailed);
            assert!(err.message.contains("reason"));
        }
        let too_long = "x".repeat(501);
        given(pending())
            .when(cancel_cmd(passenger(), &too_long))
            .then_error(ErrorCode::ValidationFailed);
        // Characters, not bytes; surrounding whitespace does not count.
        let longest = format!("  {}  ", "é".repeat(500));
        given(pending())
            .when(cancel_cmd(passenger(), &longest))
            .accepted();
    }

    #[test]
    fn cancel_reason_is_checked_before_the_actor_and_the_status() {
        given(pending())
            .when(cancel_cmd(stranger(), ""))
            .then_error(ErrorCode::ValidationFailed);
        given(completed())
            .when(cancel_cmd(passenger(), ""))
            .then_error(ErrorCode::ValidationFailed);
    }

    #[test]
    fn cancel_by_anyone_but_a_participant_is_forbidden() {
        for actor in [stranger(), Actor::SYSTEM] {
            given(pending())
                .when(cancel_cmd(actor, "no"))
                .then_error(ErrorCode::Forbidden);
        }
    }

    #[test]
    fn cancel_after_pending_is_invalid_transition() {
        for (status, events) in every_existing_status().into_iter().skip(1) {
            let err = given(events)
                .when(cancel_cmd(driver(), "too late"))
                .then_error(ErrorCode::InvalidTransition);
            assert!(err.message.contains("ride_cancel") && err.message.contains(status));
        }
    }

    // ------------------------------------------------------- events and names

    /// One event of every kind.
    fn one_of_each_event() -> Vec<RideEvent> {
        let mut events = history(vec![
            (0, create_cmd()),
            (10, start_cmd(driver(), Some(pickup()), None)),
            (70, ping(500.0, 70)),
            (71, ping(500.0, 5)),
            (300, arrive_cmd(driver(), Some("0.5"))),
            (310, pay_cmd(passenger(), 1, PaymentOutcome::Declined)),
            (320, pay_cmd(passenger(), 2500, failed())),
            (330, pay_cmd(passenger(), 2500, charged())),
        ]);
        events.extend(cancelled().into_iter().skip(1));
        events
    }

    #[test]
    fn event_type_is_the_serde_tag_and_every_event_round_trips() {
        let events = one_of_each_event();
        let mut names: Vec<&str> = events.iter().map(DomainEvent::event_type).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 10, "one of each of the ten events: {names:?}");
        for event in events {
            let json = serde_json::to_value(&event).unwrap();
            assert_eq!(json["event_type"], event.event_type());
            assert!(json["payload"].is_object());
            assert_eq!(event.event_version(), 1);
            assert_eq!(serde_json::from_value::<RideEvent>(json).unwrap(), event);
        }
    }

    #[test]
    fn stored_payloads_have_the_documented_shape() {
        let json = serde_json::to_value(started()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "event_type": "started",
                "payload": {
                    "started_at": "2024-05-01T08:00:10Z",
                    "start_point": {"lat": -6.2, "lon": 106.8},
                    "rate_per_km": 3000
                }
            })
        );
        let arrived = arrived().pop().unwrap();
        let json = serde_json::to_value(arrived).unwrap();
        assert_eq!(json["event_type"], "arrived");
        assert_eq!(json["payload"]["distance_km"], 2.0);
        assert_eq!(json["payload"]["adjustment_factor"], 1.0);
        assert_eq!(json["payload"]["fare_adjustment"], serde_json::Value::Null);
        let cancelled = serde_json::to_value(cancelled().pop().unwrap()).unwrap();
        assert_eq!(cancelled["payload"]["by"], "passenger");
        let rejected = RideEvent::TripPointRejected {
            point: pickup(),
            at: t(1),
            reason: TripPointRejection::TooFast,
        };
        assert_eq!(
            serde_json::to_value(rejected).unwrap()["payload"]["reason"],
            "too_fast"
        );
    }

    #[test]
    fn statuses_and_command_names_are_the_wire_names() {
        for (status, s) in [
            (RideStatus::Pending, "PENDING"),
            (RideStatus::InProgress, "IN_PROGRESS"),
            (RideStatus::Arrived, "ARRIVED"),
            (RideStatus::Completed, "COMPLETED"),
            (RideStatus::Cancelled, "CANCELLED"),
        ] {
            assert_eq!(status.as_str(), s);
            assert_eq!(serde_json::to_value(status).unwrap(), s);
        }
        for (status, s) in [
            (PaymentStatus::Pending, "PENDING"),
            (PaymentStatus::Declined, "DECLINED"),
            (PaymentStatus::Failed, "FAILED"),
            (PaymentStatus::Accepted, "ACCEPTED"),
        ] {
            assert_eq!(status.as_str(), s);
            assert_eq!(serde_json::to_value(status).unwrap(), s);
        }
        let names: Vec<&str> = [
            create_cmd(),
            start_cmd(driver(), None, None),
            ping(0.0, 0),
            arrive_cmd(driver(), None),
            pay_cmd(passenger(), 1, charged()),
            cancel_cmd(driver(), "x"),
        ]
        .iter()
        .map(Ride::command_name)
        .collect();
        assert_eq!(
            names,
            [
                "create",
                "ride_start",
                "trip_location",
                "ride_arrived",
                "payment_process",
                "ride_cancel"
            ]
        );
        assert_eq!(Ride::TYPE, "ride");
        assert_eq!(
            TripPointRejection::NotAfterPrevious.as_str(),
            "not_after_previous"
        );
    }

    #[test]
    fn reservations_release_the_driver_at_arrival_and_everyone_at_the_end() {
        for event in one_of_each_event() {
            let expected = match event.event_type() {
                "arrived" => vec![Reservation::Release(DRIVER)],
                "completed" | "cancelled" => {
                    vec![Reservation::Release(PASSENGER), Reservation::Release(DRIVER)]
                }
                _ => vec![],
            };
            assert_eq!(event.reservations(), expected, "{}", event.event_type());
        }
    }

    #[test]
    fn an_event_that_does_not_fit_the_state_is_ignored_by_evolve() {
        let mut ride = Ride::default();
        ride.evolve(&started());
        ride.evolve(&arrived().pop().unwrap());
        assert_eq!(ride, Ride::default());
        let mut ride: Ride = fold(&completed());
        let before = ride.clone();
        ride.evolve(&created());
        ride.evolve(&cancelled().pop().unwrap());
        assert_eq!(ride, before);
    }

    // --------------------------------------------------------------- property

    #[derive(Clone, Copy, Debug)]
    enum Who {
        Driver,
        Passenger,
        Stranger,
        System,
    }

    impl Who {
        fn actor(self) -> Actor {
            match self {
                Who::Driver => driver(),
                Who::Passenger => passenger(),
                Who::Stranger => stranger(),
                Who::System => Actor::SYSTEM,
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Create {
            same_people: bool,
        },
        Start {
            who: Who,
            driver: Option<(f64, f64)>,
            passenger: Option<(f64, f64)>,
        },
        /// A step in metres from the last accepted point; `recorded` seconds from now.
        Point {
            who: Who,
            step: (f64, f64),
            recorded: Option<i64>,
        },
        Arrive {
            who: Who,
            bps: Option<u32>,
        },
        Pay {
            who: Who,
            exact: bool,
            amount: i64,
            outcome: u8,
        },
        Cancel {
            who: Who,
            reason: u8,
        },
        Rate(i64),
    }

    fn who() -> impl Strategy<Value = Who> {
        prop_oneof![
            6 => Just(Who::Driver),
            3 => Just(Who::Passenger),
            1 => Just(Who::Stranger),
            1 => Just(Who::System),
        ]
    }

    fn offset(max: f64) -> impl Strategy<Value = (f64, f64)> {
        (-max..max, -max..max)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => prop::bool::weighted(0.3).prop_map(|same_people| Op::Create { same_people }),
            3 => (
                who(),
                prop::option::weighted(0.9, prop_oneof![3 => offset(60.0), 1 => offset(300.0)]),
                prop::option::of(offset(60.0))
            )
                .prop_map(|(who, driver, passenger)| Op::Start { who, driver, passenger }),
            12 => (
                who(),
                prop_oneof![1 => offset(12.0), 3 => offset(400.0), 1 => offset(2000.0)],
                prop::option::weighted(0.3, -40i64..8)
            )
                .prop_map(|(who, step, recorded)| Op::Point { who, step, recorded }),
            2 => (who(), prop::option::of(1u32..=10_000)).prop_map(|(who, bps)| Op::Arrive { who, bps }),
            3 => (who(), prop::bool::weighted(0.7), -100i64..20_000, 0u8..3)
                .prop_map(|(who, exact, amount, outcome)| Op::Pay { who, exact, amount, outcome }),
            1 => (who(), 0u8..8).prop_map(|(who, reason)| Op::Cancel { who, reason }),
            1 => (1i64..10_000).prop_map(Op::Rate),
        ]
    }

    /// Turns an op into a command against the current state.
    fn command(op: &Op, ride: &Ride, now: DateTime<Utc>) -> RideCommand {
        let at = |(north, east): (f64, f64)| near(north, east);
        match op {
            Op::Create { same_people } => RideCommand::Create {
                ride_id: RIDE,
                match_id: MATCH,
                driver_id: DRIVER,
                passenger_id: if *same_people { DRIVER } else { PASSENGER },
                pickup: pickup(),
                destination: destination(),
            },
            Op::Start {
                who,
                driver,
                passenger,
            } => start_cmd(who.actor(), driver.map(at), passenger.map(at)),
            Op::Point { who, step, recorded } => {
                let from = ride.last_trip_point().map_or(pickup(), |p| p.point);
                let lat = from.lat() + step.0 / metres_per_degree();
                let lon = from.lon() + step.1 / metres_per_degree();
                let round7 = |x: f64| format!("{x:.7}").parse::<f64>().unwrap();
                let point = GeoPoint::new(round7(lat), round7(lon)).unwrap();
                point_cmd(who.actor(), point, recorded.map(|s| now + TimeDelta::seconds(s)))
            }
            Op::Arrive { who, bps } => RideCommand::Arrive {
                actor: who.actor(),
                adjustment_factor: bps.map(|b| AdjustmentFactor::from_bps(b).unwrap()),
            },
            Op::Pay {
                who,
                exact,
                amount,
                outcome,
            } => {
                let amount = match ride.amount_due() {
                    Some(due) if *exact => due.get(),
                    _ => *amount,
                };
                let outcome = match outcome {
                    0 => PaymentOutcome::Declined,
                    1 => charged(),
                    _ => failed(),
                };
                pay_cmd(who.actor(), amount, outcome)
            }
            Op::Cancel { who, reason } => {
                let reason = match reason {
                    0 => "driver is late".to_owned(),
                    1 => "x".repeat(501),
                    _ => " ".to_owned(),
                };
                cancel_cmd(who.actor(), &reason)
            }
            Op::Rate(_) => unreachable!("not a command"),
        }
    }

    const LEGAL: [(&str, &str); 7] = [
        ("NONE", "PENDING"),
        ("PENDING", "IN_PROGRESS"),
        ("PENDING", "CANCELLED"),
        ("IN_PROGRESS", "IN_PROGRESS"),
        ("IN_PROGRESS", "ARRIVED"),
        ("ARRIVED", "ARRIVED"),
        ("ARRIVED", "COMPLETED"),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_command_sequence_keeps_legal_states_refolds_and_balances_the_ledger(
            create_first in prop::bool::weighted(0.9),
            ops in prop::collection::vec((op(), 0i64..40), 0..80),
        ) {
            let mut policy = Policy::default();
            let mut ride = Ride::default();
            let mut now = t(0);
            let mut all = Vec::new();
            let mut statuses = vec![ride.status()];
            let first = create_first.then_some((Op::Create { same_people: false }, 0));
            for (op, advance) in first.into_iter().chain(ops) {
                now += TimeDelta::seconds(advance);
                if let Op::Rate(rate) = op {
                    policy.fare.rate_per_km = Rupiah::new(rate);
                    continue;
                }
                let cmd = command(&op, &ride, now);
                let ctx = Context { now, policy: &policy };
                let before = ride.clone();
                let result = ride.decide(&cmd, &ctx);
                if let RideCommand::Pay { actor, amount, outcome: PaymentOutcome::Charged { .. } } = &cmd {
                    // The pre-provider check agrees with the decision.
                    match (&result, ride.check_payment(actor, *amount)) {
                        (Ok(_), Ok(due)) => prop_assert_eq!(due, *amount),
                        (Err(e), Err(c)) => prop_assert_eq!(e.code, c.code),
                        (r, c) => prop_assert!(false, "decide {:?} but check_payment {:?}", r, c),
                    }
                }
                let Ok(events) = result else { continue };
                if events.is_empty() {
                    let is_point = matches!(cmd, RideCommand::RecordTripPoint { .. });
                    prop_assert!(is_point, "only jitter records nothing");
                }
                for event in &events {
                    let from = ride.status();
                    ride.evolve(event);
                    let to = ride.status();
                    prop_assert!(LEGAL.contains(&(from, to)), "{} -> {} by {:?}", from, to, event);
                    if to != *statuses.last().unwrap() {
                        statuses.push(to);
                    }
                }
                let is_pay = matches!(cmd, RideCommand::Pay { .. });
                prop_assert!(events.is_empty() || ride != before || is_pay, "accepted events change the state");
                all.extend(events);
            }

            // Re-folding, also after a JSON round trip, gives the incremental state.
            prop_assert_eq!(&fold::<Ride>(&all), &ride);
            let json = serde_json::to_string(&all).unwrap();
            let reread: Vec<RideEvent> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&reread, &all);
            prop_assert_eq!(&fold::<Ride>(&reread), &ride);

            // The ledger of an arrived ride sums to the adjusted fare.
            let arrival = all.iter().find_map(|e| match e {
                RideEvent::Arrived { distance_m, base_fare, fare_adjustment, discount, adjusted_fare, admin_fee, driver_payout, .. } =>
                    Some((*distance_m, *base_fare, *fare_adjustment, *discount, *adjusted_fare, *admin_fee, *driver_payout)),
                _ => None,
            });
            if let Some((distance_m, base_fare, fare_adjustment, discount, adjusted, admin_fee, payout)) = arrival {
                let segments: Rupiah = all.iter().filter_map(|e| match e {
                    RideEvent::TripPointRecorded { cost, .. } => Some(*cost),
                    _ => None,
                }).sum();
                let cum_m = all.iter().rev().find_map(|e| match e {
                    RideEvent::TripPointRecorded { cum_m, .. } => Some(*cum_m),
                    _ => None,
                }).unwrap_or(0);
                let rate = ride.rate_per_km().unwrap();
                prop_assert_eq!(distance_m, cum_m);
                prop_assert_eq!(segments, cost_of_distance(distance_m, rate));
                prop_assert_eq!(segments, base_fare);
                let entries: Rupiah = [fare_adjustment, discount].into_iter().flatten().map(|e| e.cost).sum();
                prop_assert_eq!(segments + entries, adjusted);
                prop_assert_eq!(admin_fee + payout, adjusted);
                prop_assert!(admin_fee >= Rupiah::ZERO && payout >= Rupiah::ZERO);
            }
            // Statuses only ever move forward along the legal graph.
            for pair in statuses.windows(2) {
                prop_assert!(LEGAL.contains(&(pair[0], pair[1])), "{:?}", statuses);
            }
        }
    }
}
