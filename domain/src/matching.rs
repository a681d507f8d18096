//! The **Match** aggregate: one passenger's search for a driver (SPEC.md §3, "Match
//! aggregate").
//!
//! A match is created by the passenger's request and searched in *rounds*. In each round
//! the matcher (the system) proposes the match to up to `max_drivers_per_request`
//! drivers within the round's radius; the first candidate to accept wins; the passenger
//! then confirms (a ride is created) or rejects that driver (the search starts over).
//! Every round lasts `response_timeout_s`; timeouts are commands too, so their outcome
//! is an event and a replay sees it.
//!
//! ```text
//!  request ─► SEARCHING ──propose──► PROPOSED ──accept──► DRIVER_ACCEPTED ──confirm──► CONFIRMED
//!              ▲   ▲                    │                        │
//!              │   └─ timeout, or the ──┘                        │
//!              │      last candidate declines (next round)       │
//!              └────────────── reject (round 1 again) ───────────┘
//!  exits from any open status: cancel ─► CANCELLED; after the last round ─► EXPIRED / FAILED
//! ```
//!
//! ## Layout
//! - [`MatchCommand`] and [`Candidate`]: what may be asked (the pipeline, the NATS
//!   ingress and the matcher build these).
//! - [`MatchEvent`]: what is recorded, with the [`Reservation`]s that keep a passenger or
//!   driver in at most one open match or ride.
//! - [`Match`]: the state, its accessors for the matcher and the pushes, and
//!   `impl Aggregate` (`decide` holds every rule, `evolve` none; `deadline` tells the
//!   store when to send `Timeout`).
//!
//! ## Rules the SPEC leaves open, decided here
//! - `Propose` and `Timeout` carry no actor: only the system builds them, so there is
//!   nobody to check for `forbidden`.
//! - Candidates already proposed this match (in any round), excluded (declined or
//!   rejected), duplicated in the list, or equal to the passenger are dropped silently:
//!   the matcher works from an eventually consistent index and must not fail for it. The
//!   rest are kept nearest first up to the round's cap, their distances to the metre. A
//!   distance beyond half the earth's circumference is `validation_failed`, like a
//!   negative or non-finite one.
//! - A passenger who rejects the accepted driver restarts the search at round 1 with the
//!   default radius (SPEC rule 4, "back to searching"): the passenger asked for a ride and
//!   should get the full search again; the rejected driver is excluded, and the drivers
//!   already proposed stay "proposed" (never proposed twice), so the search still ends.
//! - Deadlines are enforced by `Timeout` alone: an accept or confirm that arrives after
//!   the deadline but before the timeout was handled still wins, so the outcome is
//!   decided by the order of events, never by a clock read during a replay.
//! - Terminal events carry the passenger (and the accepted driver) so that their
//!   reservations can be read from the event alone.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::actor::{Actor, Role};
use crate::aggregate::{Aggregate, Context, DomainEvent, Reservation};
use crate::error::{DomainError, ErrorCode};
use crate::geo::{GeoPoint, EARTH_RADIUS_KM};
use crate::ids::{MatchId, RideId, UserId};

/// Pickup and destination closer than this (metres) are not a trip.
pub const MIN_TRIP_M: f64 = 100.0;

/// No driver is farther than this from a pickup: half the earth's circumference.
pub const MAX_CANDIDATE_KM: f64 = std::f64::consts::PI * EARTH_RADIUS_KM;

/// A distance to the metre (SPEC.md §3: `distance_km` with 3 decimals). Besides being the
/// contract, a short decimal survives the JSON round trip exactly, so a re-folded
/// state equals the one evolved in memory.
fn to_metre(km: f64) -> f64 {
    (km * 1000.0).round() / 1000.0
}

/// A driver the matcher found for a round, as proposed to them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The driver.
    pub driver_id: UserId,
    /// From the driver to the pickup, km: in `[0, MAX_CANDIDATE_KM]`, kept to the metre.
    pub distance_km: f64,
    /// The matcher's estimate of the time to the pickup.
    pub eta_seconds: u32,
}

/// What may be asked of a match.
#[derive(Clone, Debug, PartialEq)]
pub enum MatchCommand {
    /// `finder_update {is_active: true}`: a passenger asks for a ride.
    Request {
        /// Made at the edge.
        match_id: MatchId,
        /// The passenger.
        actor: Actor,
        /// Where to be picked up.
        pickup: GeoPoint,
        /// Where to go.
        destination: GeoPoint,
    },
    /// System (the matcher): proposes drivers it found for the current round. An empty
    /// list records that the round found nobody (the round still lasts its timeout).
    /// Called again during a round when a driver comes online within reach.
    Propose {
        /// Nearest first, as found; see the module doc for what is dropped.
        candidates: Vec<Candidate>,
    },
    /// `match_confirm {accepted: true}` by a driver.
    Accept {
        /// The driver.
        actor: Actor,
    },
    /// `match_confirm {accepted: false}` by a driver.
    Decline {
        /// The driver.
        actor: Actor,
    },
    /// `match_confirm {accepted: true}` by the passenger; the ride id is made at the edge.
    Confirm {
        /// The passenger.
        actor: Actor,
        /// The id of the ride the confirmation creates.
        ride_id: RideId,
    },
    /// `match_confirm {accepted: false}` by the passenger: reject the accepted driver.
    Reject {
        /// The passenger.
        actor: Actor,
    },
    /// `finder_update {is_active: false}`: the passenger gives up.
    Cancel {
        /// The passenger.
        actor: Actor,
    },
    /// System: the current deadline has passed (`ctx.now >= deadline`).
    Timeout,
}

/// A match's status as it appears in acks and read models.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MatchStatus {
    /// Looking for drivers in the current round; none is a candidate right now.
    Searching,
    /// Proposed to one or more candidate drivers who have not answered yet.
    Proposed,
    /// A driver accepted; waiting for the passenger to confirm.
    DriverAccepted,
    /// The passenger confirmed; the ride exists.
    Confirmed,
    /// The passenger gave up.
    Cancelled,
    /// Drivers were proposed but nobody concluded in time.
    Expired,
    /// No driver: nobody found, or every candidate declined.
    Failed,
}

impl MatchStatus {
    /// The status's wire name (`SEARCHING`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            MatchStatus::Searching => "SEARCHING",
            MatchStatus::Proposed => "PROPOSED",
            MatchStatus::DriverAccepted => "DRIVER_ACCEPTED",
            MatchStatus::Confirmed => "CONFIRMED",
            MatchStatus::Cancelled => "CANCELLED",
            MatchStatus::Expired => "EXPIRED",
            MatchStatus::Failed => "FAILED",
        }
    }

    /// Whether the match still holds its passenger (searching or waiting for an answer).
    pub const fn is_open(self) -> bool {
        match self {
            MatchStatus::Searching | MatchStatus::Proposed | MatchStatus::DriverAccepted => true,
            MatchStatus::Confirmed | MatchStatus::Cancelled | MatchStatus::Expired | MatchStatus::Failed => {
                false
            }
        }
    }
}

impl fmt::Display for MatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a match failed (`match_failed {reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureReason {
    /// No driver was ever proposed in any round.
    NoDriver,
    /// Every candidate of the last round declined.
    AllDeclined,
}

impl FailureReason {
    /// The reason's wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoDriver => "no_driver",
            FailureReason::AllDeclined => "all_declined",
        }
    }
}

/// What a match records. Stored as `match.<event_type>.v1`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "payload", rename_all = "snake_case")]
pub enum MatchEvent {
    /// The passenger asked for a ride; round 1 starts. Claims the passenger.
    Requested {
        /// The match.
        match_id: MatchId,
        /// Who asked.
        passenger_id: UserId,
        /// Where to be picked up.
        pickup: GeoPoint,
        /// Where to go.
        destination: GeoPoint,
        /// When.
        requested_at: DateTime<Utc>,
        /// Always 1.
        round: u32,
        /// The first round's search radius.
        radius_km: f64,
        /// When round 1 times out.
        deadline: DateTime<Utc>,
    },
    /// The matcher proposed the match to these drivers (empty: the round found nobody).
    Proposed {
        /// The current round.
        round: u32,
        /// The new candidates, nearest first, distances to the metre.
        candidates: Vec<Candidate>,
        /// When.
        proposed_at: DateTime<Utc>,
    },
    /// A candidate accepted first; the others are withdrawn. Claims the driver.
    DriverAccepted {
        /// The winner.
        driver_id: UserId,
        /// As proposed to them.
        distance_km: f64,
        /// As proposed to them.
        eta_seconds: u32,
        /// When.
        accepted_at: DateTime<Utc>,
        /// When the passenger's confirmation times out.
        deadline: DateTime<Utc>,
        /// The other candidates, told the proposal is withdrawn.
        withdrawn_from: Vec<UserId>,
    },
    /// A candidate declined; they are never proposed this match again.
    DriverDeclined {
        /// Who declined.
        driver_id: UserId,
    },
    /// The passenger rejected the accepted driver, who is excluded from this match and
    /// released. Followed by `round_started` (round 1).
    DriverRejected {
        /// Who was rejected.
        driver_id: UserId,
    },
    /// The round's deadline passed with nobody accepting. Followed by `round_started`.
    RoundTimedOut {
        /// The round that ended.
        round: u32,
        /// Its candidates, told the proposal is withdrawn.
        withdrawn_from: Vec<UserId>,
    },
    /// A new round: a wider radius, no candidates, a fresh deadline.
    RoundStarted {
        /// The new round (1-based).
        round: u32,
        /// Its search radius.
        radius_km: f64,
        /// When it times out.
        deadline: DateTime<Utc>,
    },
    /// The passenger confirmed the accepted driver; both move to the ride.
    Confirmed {
        /// The ride the confirmation creates.
        ride_id: RideId,
        /// The driver.
        driver_id: UserId,
        /// The passenger.
        passenger_id: UserId,
        /// Where to be picked up.
        pickup: GeoPoint,
        /// Where to go.
        destination: GeoPoint,
        /// When.
        confirmed_at: DateTime<Utc>,
    },
    /// The passenger gave up. Releases the passenger and the accepted driver, if any.
    Cancelled {
        /// The passenger.
        passenger_id: UserId,
        /// The accepted driver, if the match was `DRIVER_ACCEPTED`.
        driver_id: Option<UserId>,
        /// When.
        cancelled_at: DateTime<Utc>,
        /// The current candidates and the accepted driver, told it is withdrawn.
        withdrawn_from: Vec<UserId>,
    },
    /// Nobody concluded in time after drivers were proposed. Releases the passenger and
    /// the accepted driver, if any.
    Expired {
        /// The passenger.
        passenger_id: UserId,
        /// The accepted driver, if the passenger never confirmed.
        driver_id: Option<UserId>,
        /// The current candidates (or the accepted driver), told it is withdrawn.
        withdrawn_from: Vec<UserId>,
    },
    /// No driver. Releases the passenger.
    Failed {
        /// The passenger.
        passenger_id: UserId,
        /// `no_driver` or `all_declined`.
        reason: FailureReason,
    },
}

impl DomainEvent for MatchEvent {
    fn event_type(&self) -> &'static str {
        match self {
            MatchEvent::Requested { .. } => "requested",
            MatchEvent::Proposed { .. } => "proposed",
            MatchEvent::DriverAccepted { .. } => "driver_accepted",
            MatchEvent::DriverDeclined { .. } => "driver_declined",
            MatchEvent::DriverRejected { .. } => "driver_rejected",
            MatchEvent::RoundTimedOut { .. } => "round_timed_out",
            MatchEvent::RoundStarted { .. } => "round_started",
            MatchEvent::Confirmed { .. } => "confirmed",
            MatchEvent::Cancelled { .. } => "cancelled",
            MatchEvent::Expired { .. } => "expired",
            MatchEvent::Failed { .. } => "failed",
        }
    }

    fn reservations(&self) -> Vec<Reservation> {
        match self {
            MatchEvent::Requested { passenger_id, .. } => vec![Reservation::Claim(*passenger_id)],
            MatchEvent::DriverAccepted { driver_id, .. } => vec![Reservation::Claim(*driver_id)],
            MatchEvent::DriverRejected { driver_id } => vec![Reservation::Release(*driver_id)],
            MatchEvent::Confirmed {
                ride_id,
                driver_id,
                passenger_id,
                ..
            } => [passenger_id, driver_id]
                .into_iter()
                .map(|user| Reservation::Transfer {
                    user: *user,
                    to_type: "ride",
                    to_id: ride_id.as_uuid(),
                })
                .collect(),
            MatchEvent::Cancelled {
                passenger_id,
                driver_id,
                ..
            }
            | MatchEvent::Expired {
                passenger_id,
                driver_id,
                ..
            } => std::iter::once(*passenger_id)
                .chain(*driver_id)
                .map(Reservation::Release)
                .collect(),
            MatchEvent::Failed { passenger_id, .. } => vec![Reservation::Release(*passenger_id)],
            MatchEvent::Proposed { .. }
            | MatchEvent::DriverDeclined { .. }
            | MatchEvent::RoundTimedOut { .. }
            | MatchEvent::RoundStarted { .. } => Vec::new(),
        }
    }
}

/// The Match aggregate's state. `Match::default()` is a match nobody requested yet.
///
/// A struct around a phase enum rather than one enum: the request's data, the round and
/// the proposed/excluded sets are shared by every status (an excluded driver stays
/// excluded through a restart), while `Phase` carries only what each status has (its
/// deadline, its candidates, its driver).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Match {
    inner: Option<Requested>,
}

/// A requested match.
#[derive(Clone, Debug, PartialEq)]
struct Requested {
    match_id: MatchId,
    passenger_id: UserId,
    pickup: GeoPoint,
    destination: GeoPoint,
    requested_at: DateTime<Utc>,
    /// The current (or last) round, 1-based.
    round: u32,
    /// The current (or last) round's radius.
    radius_km: f64,
    /// Every driver ever proposed this match: none is proposed twice.
    proposed_ever: BTreeSet<UserId>,
    /// Drivers who declined, or whom the passenger rejected.
    excluded: BTreeSet<UserId>,
    phase: Phase,
}

/// The status with the data only it has.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Searching {
        deadline: DateTime<Utc>,
        /// An empty `proposed` was recorded this round ("the round found nobody"); it is
        /// recorded once per round.
        nobody_recorded: bool,
    },
    Proposed {
        deadline: DateTime<Utc>,
        /// Current candidates: proposed this round, not declined. Never empty.
        candidates: Vec<Candidate>,
        /// Proposed this round in all, declined ones included (the round's cap).
        proposed_in_round: u32,
    },
    DriverAccepted {
        deadline: DateTime<Utc>,
        driver: Candidate,
    },
    Confirmed {
        driver: Candidate,
        ride_id: RideId,
    },
    Cancelled,
    Expired,
    Failed {
        reason: FailureReason,
    },
}

impl Phase {
    const fn status(&self) -> MatchStatus {
        match self {
            Phase::Searching { .. } => MatchStatus::Searching,
            Phase::Proposed { .. } => MatchStatus::Proposed,
            Phase::DriverAccepted { .. } => MatchStatus::DriverAccepted,
            Phase::Confirmed { .. } => MatchStatus::Confirmed,
            Phase::Cancelled => MatchStatus::Cancelled,
            Phase::Expired => MatchStatus::Expired,
            Phase::Failed { .. } => MatchStatus::Failed,
        }
    }

    fn deadline(&self) -> Option<DateTime<Utc>> {
        match self {
            Phase::Searching { deadline, .. }
            | Phase::Proposed { deadline, .. }
            | Phase::DriverAccepted { deadline, .. } => Some(*deadline),
            Phase::Confirmed { .. } | Phase::Cancelled | Phase::Expired | Phase::Failed { .. } => None,
        }
    }

    fn candidates(&self) -> &[Candidate] {
        match self {
            Phase::Proposed { candidates, .. } => candidates,
            Phase::Searching { .. }
            | Phase::DriverAccepted { .. }
            | Phase::Confirmed { .. }
            | Phase::Cancelled
            | Phase::Expired
            | Phase::Failed { .. } => &[],
        }
    }
}

/// The status `status()` reports for a match nobody requested (never in an ack: such a
/// match only answers `not_found`).
const NO_STATUS: &str = "NONE";

/// `finder_update`, as in error messages.
const FINDER_UPDATE: &str = "finder_update";
/// `match_confirm`, as in error messages.
const MATCH_CONFIRM: &str = "match_confirm";

impl Match {
    /// The match's id, once requested.
    pub fn match_id(&self) -> Option<MatchId> {
        self.inner.as_ref().map(|m| m.match_id)
    }

    /// The passenger who asked.
    pub fn passenger_id(&self) -> Option<UserId> {
        self.inner.as_ref().map(|m| m.passenger_id)
    }

    /// Where to be picked up.
    pub fn pickup(&self) -> Option<GeoPoint> {
        self.inner.as_ref().map(|m| m.pickup)
    }

    /// Where to go.
    pub fn destination(&self) -> Option<GeoPoint> {
        self.inner.as_ref().map(|m| m.destination)
    }

    /// When the passenger asked.
    pub fn requested_at(&self) -> Option<DateTime<Utc>> {
        self.inner.as_ref().map(|m| m.requested_at)
    }

    /// The status, once requested.
    pub fn match_status(&self) -> Option<MatchStatus> {
        self.inner.as_ref().map(|m| m.phase.status())
    }

    /// The current round (the last one once terminal), 1-based; 0 before the request.
    pub fn round(&self) -> u32 {
        self.inner.as_ref().map_or(0, |m| m.round)
    }

    /// The current round's search radius.
    pub fn radius_km(&self) -> Option<f64> {
        self.inner.as_ref().map(|m| m.radius_km)
    }

    /// The drivers the match is proposed to right now (empty unless `PROPOSED`).
    pub fn candidates(&self) -> &[Candidate] {
        self.inner.as_ref().map_or(&[], |m| m.phase.candidates())
    }

    /// Drivers who declined or were rejected: never proposed this match again.
    pub fn excluded(&self) -> impl Iterator<Item = UserId> + '_ {
        self.inner.iter().flat_map(|m| m.excluded.iter().copied())
    }

    /// Whether the driver may still be proposed this match (not proposed before, not
    /// excluded, not the passenger).
    pub fn may_propose(&self, driver: UserId) -> bool {
        self.inner.as_ref().is_some_and(|m| m.is_new_candidate(driver))
    }

    /// Every driver ever proposed this match, in any round.
    pub fn proposed_ever(&self) -> impl Iterator<Item = UserId> + '_ {
        self.inner.iter().flat_map(|m| m.proposed_ever.iter().copied())
    }

    /// The driver who accepted, with the distance and ETA proposed to them, while
    /// `DRIVER_ACCEPTED` and once `CONFIRMED`.
    pub fn accepted_driver(&self) -> Option<&Candidate> {
        match &self.inner.as_ref()?.phase {
            Phase::DriverAccepted { driver, .. } | Phase::Confirmed { driver, .. } => Some(driver),
            Phase::Searching { .. }
            | Phase::Proposed { .. }
            | Phase::Cancelled
            | Phase::Expired
            | Phase::Failed { .. } => None,
        }
    }

    /// The ride the match created, once `CONFIRMED`.
    pub fn ride_id(&self) -> Option<RideId> {
        match &self.inner.as_ref()?.phase {
            Phase::Confirmed { ride_id, .. } => Some(*ride_id),
            Phase::Searching { .. }
            | Phase::Proposed { .. }
            | Phase::DriverAccepted { .. }
            | Phase::Cancelled
            | Phase::Expired
            | Phase::Failed { .. } => None,
        }
    }

    /// Why the match failed, once `FAILED`.
    pub fn failure_reason(&self) -> Option<FailureReason> {
        match &self.inner.as_ref()?.phase {
            Phase::Failed { reason } => Some(*reason),
            Phase::Searching { .. }
            | Phase::Proposed { .. }
            | Phase::DriverAccepted { .. }
            | Phase::Confirmed { .. }
            | Phase::Cancelled
            | Phase::Expired => None,
        }
    }

    /// Whether the match is requested and not yet terminal (it holds its passenger).
    pub fn is_open(&self) -> bool {
        self.match_status().is_some_and(MatchStatus::is_open)
    }
}

/// `now + response_timeout_s`, refused (never a panic) if the policy makes it overflow.
fn deadline_after(ctx: &Context<'_>) -> Result<DateTime<Utc>, DomainError> {
    TimeDelta::try_seconds(ctx.policy.matching.response_timeout_s)
        .and_then(|timeout| ctx.now.checked_add_signed(timeout))
        .ok_or_else(|| {
            DomainError::new(
                ErrorCode::Internal,
                "the matching response timeout is out of range",
            )
        })
}

/// The input's own checks, before anything about the match.
fn validate(command: &MatchCommand) -> Result<(), DomainError> {
    match command {
        MatchCommand::Request {
            pickup, destination, ..
        } => {
            if pickup.distance_m(destination) < MIN_TRIP_M {
                return Err(DomainError::validation(format!(
                    "pickup and destination must be at least {MIN_TRIP_M} m apart"
                )));
            }
            Ok(())
        }
        MatchCommand::Propose { candidates } => {
            match candidates
                .iter()
                .find(|c| !(0.0..=MAX_CANDIDATE_KM).contains(&c.distance_km))
            {
                Some(bad) => Err(DomainError::validation(format!(
                    "candidate {}: distance_km must be a number in [0, {MAX_CANDIDATE_KM:.0}]",
                    bad.driver_id
                ))),
                None => Ok(()),
            }
        }
        MatchCommand::Accept { .. }
        | MatchCommand::Decline { .. }
        | MatchCommand::Confirm { .. }
        | MatchCommand::Reject { .. }
        | MatchCommand::Cancel { .. }
        | MatchCommand::Timeout => Ok(()),
    }
}

/// The creating command on a match nobody requested yet.
fn decide_request(command: &MatchCommand, ctx: &Context<'_>) -> Result<Vec<MatchEvent>, DomainError> {
    match command {
        MatchCommand::Request {
            match_id,
            actor,
            pickup,
            destination,
        } => {
            if actor.role != Role::Passenger {
                return Err(DomainError::forbidden("only a passenger may request a ride"));
            }
            ctx.policy.service_area.check(pickup, "pickup")?;
            ctx.policy.service_area.check(destination, "destination")?;
            Ok(vec![MatchEvent::Requested {
                match_id: *match_id,
                passenger_id: actor.user_id,
                pickup: *pickup,
                destination: *destination,
                requested_at: ctx.now,
                round: 1,
                radius_km: ctx.policy.matching.radius_km(1),
                deadline: deadline_after(ctx)?,
            }])
        }
        MatchCommand::Propose { .. }
        | MatchCommand::Accept { .. }
        | MatchCommand::Decline { .. }
        | MatchCommand::Confirm { .. }
        | MatchCommand::Reject { .. }
        | MatchCommand::Cancel { .. }
        | MatchCommand::Timeout => Err(DomainError::not_found("no such match")),
    }
}

impl Requested {
    fn status(&self) -> &'static str {
        self.phase.status().as_str()
    }

    fn invalid(&self, command: &MatchCommand) -> DomainError {
        DomainError::invalid_transition(self.status(), Match::command_name(command))
    }

    fn is_new_candidate(&self, driver: UserId) -> bool {
        driver != self.passenger_id
            && !self.proposed_ever.contains(&driver)
            && !self.excluded.contains(&driver)
    }

    /// `forbidden` unless the actor is the right participant for the command.
    fn authorize(&self, command: &MatchCommand) -> Result<(), DomainError> {
        match command {
            MatchCommand::Request { actor, .. } => {
                if actor.role != Role::Passenger {
                    return Err(DomainError::forbidden("only a passenger may request a ride"));
                }
            }
            // Built by the system only (they carry no actor).
            MatchCommand::Propose { .. } | MatchCommand::Timeout => {}
            MatchCommand::Accept { actor } | MatchCommand::Decline { actor } => {
                if actor.role != Role::Driver || !self.proposed_ever.contains(&actor.user_id) {
                    return Err(DomainError::forbidden("this match was never proposed to you"));
                }
            }
            MatchCommand::Confirm { actor, .. }
            | MatchCommand::Reject { actor }
            | MatchCommand::Cancel { actor } => {
                if actor.is_system() || actor.user_id != self.passenger_id {
                    return Err(DomainError::forbidden("only the match's passenger may do this"));
                }
            }
        }
        Ok(())
    }

    /// Every transition: one exhaustive match over (status, command).
    fn transition(&self, command: &MatchCommand, ctx: &Context<'_>) -> Result<Vec<MatchEvent>, DomainError> {
        use MatchCommand as C;
        use Phase as P;
        match (&self.phase, command) {
            (
                P::Searching { .. }
                | P::Proposed { .. }
                | P::DriverAccepted { .. }
                | P::Confirmed { .. }
                | P::Cancelled
                | P::Expired
                | P::Failed { .. },
                C::Request { .. },
            ) => Err(self.invalid(command)),

            (P::Searching { nobody_recorded, .. }, C::Propose { candidates }) => {
                self.propose(candidates, 0, !*nobody_recorded, ctx)
            }
            (
                P::Proposed {
                    proposed_in_round, ..
                },
                C::Propose { candidates },
            ) => self.propose(candidates, *proposed_in_round, false, ctx),
            (
                P::DriverAccepted { .. } | P::Confirmed { .. } | P::Cancelled | P::Expired | P::Failed { .. },
                C::Propose { .. },
            ) => Err(self.invalid(command)),

            (P::Proposed { candidates, .. }, C::Accept { actor }) => {
                self.accept(candidates, actor, command, ctx)
            }
            // SPEC's one exception to the order: say why the late driver lost.
            (P::DriverAccepted { driver, .. } | P::Confirmed { driver, .. }, C::Accept { actor }) => {
                if driver.driver_id == actor.user_id {
                    Err(self.invalid(command))
                } else {
                    Err(DomainError::new(
                        ErrorCode::AlreadyTaken,
                        "another driver has already accepted this match",
                    ))
                }
            }
            (P::Searching { .. } | P::Cancelled | P::Expired | P::Failed { .. }, C::Accept { .. }) => {
                Err(self.invalid(command))
            }

            (P::Proposed { candidates, .. }, C::Decline { actor }) => {
                self.decline(candidates, actor, command, ctx)
            }
            (
                P::Searching { .. }
                | P::DriverAccepted { .. }
                | P::Confirmed { .. }
                | P::Cancelled
                | P::Expired
                | P::Failed { .. },
                C::Decline { .. },
            ) => Err(self.invalid(command)),

            (P::DriverAccepted { driver, .. }, C::Confirm { ride_id, .. }) => {
                Ok(vec![MatchEvent::Confirmed {
                    ride_id: *ride_id,
                    driver_id: driver.driver_id,
                    passenger_id: self.passenger_id,
                    pickup: self.pickup,
                    destination: self.destination,
                    confirmed_at: ctx.now,
                }])
            }
            (
                P::Searching { .. }
                | P::Proposed { .. }
                | P::Confirmed { .. }
                | P::Cancelled
                | P::Expired
                | P::Failed { .. },
                C::Confirm { .. },
            ) => Err(self.invalid(command)),

            (P::DriverAccepted { driver, .. }, C::Reject { .. }) => Ok(vec![
                MatchEvent::DriverRejected {
                    driver_id: driver.driver_id,
                },
                // The search starts over (module doc).
                MatchEvent::RoundStarted {
                    round: 1,
                    radius_km: ctx.policy.matching.radius_km(1),
                    deadline: deadline_after(ctx)?,
                },
            ]),
            (
                P::Searching { .. }
                | P::Proposed { .. }
                | P::Confirmed { .. }
                | P::Cancelled
                | P::Expired
                | P::Failed { .. },
                C::Reject { .. },
            ) => Err(self.invalid(command)),

            (P::Searching { .. } | P::Proposed { .. }, C::Cancel { .. }) => Ok(vec![MatchEvent::Cancelled {
                passenger_id: self.passenger_id,
                driver_id: None,
                cancelled_at: ctx.now,
                withdrawn_from: self.candidate_ids(),
            }]),
            (P::DriverAccepted { driver, .. }, C::Cancel { .. }) => Ok(vec![MatchEvent::Cancelled {
                passenger_id: self.passenger_id,
                driver_id: Some(driver.driver_id),
                cancelled_at: ctx.now,
                withdrawn_from: vec![driver.driver_id],
            }]),
            (P::Confirmed { .. } | P::Cancelled | P::Expired | P::Failed { .. }, C::Cancel { .. }) => {
                Err(self.invalid(command))
            }

            (P::Searching { deadline, .. } | P::Proposed { deadline, .. }, C::Timeout) => {
                self.check_due(*deadline, ctx)?;
                self.round_timeout(ctx)
            }
            (P::DriverAccepted { deadline, driver }, C::Timeout) => {
                self.check_due(*deadline, ctx)?;
                Ok(vec![MatchEvent::Expired {
                    passenger_id: self.passenger_id,
                    driver_id: Some(driver.driver_id),
                    withdrawn_from: vec![driver.driver_id],
                }])
            }
            (P::Confirmed { .. } | P::Cancelled | P::Expired | P::Failed { .. }, C::Timeout) => {
                Err(self.invalid(command))
            }
        }
    }

    fn candidate_ids(&self) -> Vec<UserId> {
        self.phase.candidates().iter().map(|c| c.driver_id).collect()
    }

    /// `Propose` in `SEARCHING` or `PROPOSED`: keeps the new drivers, nearest first, up to
    /// the round's cap. `may_record_nobody`: an empty list is recorded (once per round).
    fn propose(
        &self,
        given: &[Candidate],
        proposed_in_round: u32,
        may_record_nobody: bool,
        ctx: &Context<'_>,
    ) -> Result<Vec<MatchEvent>, DomainError> {
        let proposed = |candidates| MatchEvent::Proposed {
            round: self.round,
            candidates,
            proposed_at: ctx.now,
        };
        if given.is_empty() {
            return Ok(if may_record_nobody {
                vec![proposed(Vec::new())]
            } else {
                Vec::new()
            });
        }
        let mut seen = BTreeSet::new();
        let mut fresh: Vec<Candidate> = given
            .iter()
            .filter(|c| self.is_new_candidate(c.driver_id) && seen.insert(c.driver_id))
            .map(|c| Candidate {
                distance_km: to_metre(c.distance_km),
                ..*c
            })
            .collect();
        // Stable: among equals, the matcher's order stands.
        fresh.sort_by(|a, b| a.distance_km.total_cmp(&b.distance_km));
        let room = ctx
            .policy
            .matching
            .max_drivers_per_request
            .saturating_sub(proposed_in_round);
        fresh.truncate(usize::try_from(room).unwrap_or(usize::MAX));
        Ok(if fresh.is_empty() {
            Vec::new()
        } else {
            vec![proposed(fresh)]
        })
    }

    fn accept(
        &self,
        candidates: &[Candidate],
        actor: &Actor,
        command: &MatchCommand,
        ctx: &Context<'_>,
    ) -> Result<Vec<MatchEvent>, DomainError> {
        if self.excluded.contains(&actor.user_id) {
            return Err(DomainError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "{MATCH_CONFIRM} is not allowed: you declined or were rejected for this match (status {})",
                    self.status()
                ),
            ));
        }
        let Some(winner) = candidates.iter().find(|c| c.driver_id == actor.user_id) else {
            return Err(self.invalid(command));
        };
        Ok(vec![MatchEvent::DriverAccepted {
            driver_id: winner.driver_id,
            distance_km: winner.distance_km,
            eta_seconds: winner.eta_seconds,
            accepted_at: ctx.now,
            deadline: deadline_after(ctx)?,
            withdrawn_from: candidates
                .iter()
                .map(|c| c.driver_id)
                .filter(|d| *d != winner.driver_id)
                .collect(),
        }])
    }

    fn decline(
        &self,
        candidates: &[Candidate],
        actor: &Actor,
        command: &MatchCommand,
        ctx: &Context<'_>,
    ) -> Result<Vec<MatchEvent>, DomainError> {
        if !candidates.iter().any(|c| c.driver_id == actor.user_id) {
            return Err(self.invalid(command));
        }
        let mut events = vec![MatchEvent::DriverDeclined {
            driver_id: actor.user_id,
        }];
        // The last candidate declined: nobody is left to answer, so the round ends now.
        if candidates.len() == 1 {
            events.push(if self.round < ctx.policy.matching.max_rounds {
                self.next_round(ctx)?
            } else {
                MatchEvent::Failed {
                    passenger_id: self.passenger_id,
                    reason: FailureReason::AllDeclined,
                }
            });
        }
        Ok(events)
    }

    fn next_round(&self, ctx: &Context<'_>) -> Result<MatchEvent, DomainError> {
        let round = self.round.saturating_add(1);
        Ok(MatchEvent::RoundStarted {
            round,
            radius_km: ctx.policy.matching.radius_km(round),
            deadline: deadline_after(ctx)?,
        })
    }

    fn check_due(&self, deadline: DateTime<Utc>, ctx: &Context<'_>) -> Result<(), DomainError> {
        if ctx.now < deadline {
            return Err(DomainError::new(
                ErrorCode::InvalidTransition,
                format!(
                    "timeout is not due yet: the deadline is {} (status {})",
                    deadline.to_rfc3339(),
                    self.status()
                ),
            ));
        }
        Ok(())
    }

    /// The round's deadline passed in `SEARCHING` or `PROPOSED`.
    fn round_timeout(&self, ctx: &Context<'_>) -> Result<Vec<MatchEvent>, DomainError> {
        let withdrawn_from = self.candidate_ids();
        if self.round < ctx.policy.matching.max_rounds {
            return Ok(vec![
                MatchEvent::RoundTimedOut {
                    round: self.round,
                    withdrawn_from,
                },
                self.next_round(ctx)?,
            ]);
        }
        // Someone was asked and never concluded: expired; nobody was ever found: failed.
        Ok(vec![if self.proposed_ever.is_empty() {
            MatchEvent::Failed {
                passenger_id: self.passenger_id,
                reason: FailureReason::NoDriver,
            }
        } else {
            MatchEvent::Expired {
                passenger_id: self.passenger_id,
                driver_id: None,
                withdrawn_from,
            }
        }])
    }

    /// Folds one event; an event that does not fit the phase leaves the state as it is.
    fn apply(&mut self, event: &MatchEvent) {
        use Phase as P;
        match event {
            // Creation is `Match::evolve`'s; a second `requested` does not fit.
            MatchEvent::Requested { .. } => {}
            MatchEvent::Proposed { candidates, .. } => {
                let added = u32::try_from(candidates.len()).unwrap_or(u32::MAX);
                match &mut self.phase {
                    P::Searching {
                        deadline,
                        nobody_recorded,
                    } => {
                        if candidates.is_empty() {
                            *nobody_recorded = true;
                        } else {
                            self.phase = P::Proposed {
                                deadline: *deadline,
                                candidates: candidates.clone(),
                                proposed_in_round: added,
                            };
                        }
                    }
                    P::Proposed {
                        candidates: current,
                        proposed_in_round,
                        ..
                    } => {
                        current.extend_from_slice(candidates);
                        *proposed_in_round = proposed_in_round.saturating_add(added);
                    }
                    P::DriverAccepted { .. }
                    | P::Confirmed { .. }
                    | P::Cancelled
                    | P::Expired
                    | P::Failed { .. } => return,
                }
                self.proposed_ever.extend(candidates.iter().map(|c| c.driver_id));
            }
            MatchEvent::DriverAccepted {
                driver_id,
                distance_km,
                eta_seconds,
                deadline,
                ..
            } => {
                if let P::Proposed { .. } = self.phase {
                    self.phase = P::DriverAccepted {
                        deadline: *deadline,
                        driver: Candidate {
                            driver_id: *driver_id,
                            distance_km: *distance_km,
                            eta_seconds: *eta_seconds,
                        },
                    };
                }
            }
            MatchEvent::DriverDeclined { driver_id } => {
                if let P::Proposed {
                    deadline, candidates, ..
                } = &mut self.phase
                {
                    candidates.retain(|c| c.driver_id != *driver_id);
                    if candidates.is_empty() {
                        // Transient: `round_started` or `failed` follows in the same command.
                        self.phase = P::Searching {
                            deadline: *deadline,
                            nobody_recorded: true,
                        };
                    }
                    self.excluded.insert(*driver_id);
                }
            }
            MatchEvent::DriverRejected { driver_id } => {
                if let P::DriverAccepted { deadline, .. } = self.phase {
                    // Transient: `round_started` follows in the same command.
                    self.phase = P::Searching {
                        deadline,
                        nobody_recorded: false,
                    };
                    self.excluded.insert(*driver_id);
                }
            }
            MatchEvent::RoundTimedOut { .. } => {
                if let P::Searching { deadline, .. } | P::Proposed { deadline, .. } = self.phase {
                    // Transient: `round_started` follows in the same command.
                    self.phase = P::Searching {
                        deadline,
                        nobody_recorded: false,
                    };
                }
            }
            MatchEvent::RoundStarted {
                round,
                radius_km,
                deadline,
            } => {
                if self.phase.status().is_open() {
                    self.round = *round;
                    self.radius_km = *radius_km;
                    self.phase = P::Searching {
                        deadline: *deadline,
                        nobody_recorded: false,
                    };
                }
            }
            MatchEvent::Confirmed { ride_id, .. } => {
                if let P::DriverAccepted { driver, .. } = self.phase {
                    self.phase = P::Confirmed {
                        driver,
                        ride_id: *ride_id,
                    };
                }
            }
            MatchEvent::Cancelled { .. } => self.close(P::Cancelled),
            MatchEvent::Expired { .. } => self.close(P::Expired),
            MatchEvent::Failed { reason, .. } => self.close(P::Failed { reason: *reason }),
        }
    }

    /// Ends an open match.
    fn close(&mut self, terminal: Phase) {
        if self.phase.status().is_open() {
            self.phase = terminal;
        }
    }
}

impl Aggregate for Match {
    const TYPE: &'static str = "match";
    type Command = MatchCommand;
    type Event = MatchEvent;

    fn decide(&self, command: &MatchCommand, ctx: &Context<'_>) -> Result<Vec<MatchEvent>, DomainError> {
        validate(command)?;
        let Some(requested) = &self.inner else {
            return decide_request(command, ctx);
        };
        requested.authorize(command)?;
        requested.transition(command, ctx)
    }

    fn evolve(&mut self, event: &MatchEvent) {
        match (&mut self.inner, event) {
            (
                None,
                MatchEvent::Requested {
                    match_id,
                    passenger_id,
                    pickup,
                    destination,
                    requested_at,
                    round,
                    radius_km,
                    deadline,
                },
            ) => {
                self.inner = Some(Requested {
                    match_id: *match_id,
                    passenger_id: *passenger_id,
                    pickup: *pickup,
                    destination: *destination,
                    requested_at: *requested_at,
                    round: *round,
                    radius_km: *radius_km,
                    proposed_ever: BTreeSet::new(),
                    excluded: BTreeSet::new(),
                    phase: Phase::Searching {
                        deadline: *deadline,
                        nobody_recorded: false,
                    },
                });
            }
            (Some(requested), event) => requested.apply(event),
            // Nothing but the request can happen to a match nobody requested.
            (None, _) => {}
        }
    }

    fn exists(&self) -> bool {
        self.inner.is_some()
    }

    fn status(&self) -> &'static str {
        self.match_status().map_or(NO_STATUS, MatchStatus::as_str)
    }

    /// When the current round (or the passenger's confirmation) times out, so that the
    /// system sends `Timeout`; `None` once terminal.
    fn deadline(&self) -> Option<DateTime<Utc>> {
        self.inner.as_ref().and_then(|m| m.phase.deadline())
    }

    fn command_name(command: &MatchCommand) -> &'static str {
        match command {
            MatchCommand::Request { .. } | MatchCommand::Cancel { .. } => FINDER_UPDATE,
            MatchCommand::Propose { .. } => "propose",
            MatchCommand::Accept { .. }
            | MatchCommand::Decline { .. }
            | MatchCommand::Confirm { .. }
            | MatchCommand::Reject { .. } => MATCH_CONFIRM,
            MatchCommand::Timeout => "timeout",
        }
    }
}
