//! Given/when/then tests of the Match aggregate: every transition and every refusal of
//! SPEC.md §3 "Match aggregate", through the public API only.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use domain::aggregate::fold;
use domain::matching::{Candidate, FailureReason, Match, MatchCommand, MatchEvent, MatchStatus};
use domain::policy::MatchPolicy;
use domain::{
    Actor, Aggregate, Context, DomainError, DomainEvent, ErrorCode, GeoPoint, MatchId, Policy, Reservation,
    RideId, Role, UserId,
};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

/// Seconds after a fixed instant.
fn t(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000, 0).unwrap() + TimeDelta::seconds(seconds)
}

const fn user(n: u128) -> UserId {
    UserId::from_uuid(Uuid::from_u128(n))
}

const P: UserId = user(1);
const OTHER_PASSENGER: UserId = user(2);
const D1: UserId = user(11);
const D2: UserId = user(12);
const D3: UserId = user(13);
const D4: UserId = user(14);
const D5: UserId = user(15);
const D6: UserId = user(16);
const D7: UserId = user(17);

fn mid() -> MatchId {
    MatchId::from_uuid(Uuid::from_u128(100))
}

fn ride() -> RideId {
    RideId::from_uuid(Uuid::from_u128(200))
}

fn passenger() -> Actor {
    Actor::new(P, Role::Passenger)
}

fn driver(id: UserId) -> Actor {
    Actor::new(id, Role::Driver)
}

fn pickup() -> GeoPoint {
    GeoPoint::new(-6.2, 106.8).unwrap()
}

fn destination() -> GeoPoint {
    GeoPoint::new(-6.3, 106.9).unwrap()
}

fn cand(driver_id: UserId, distance_km: f64) -> Candidate {
    Candidate {
        driver_id,
        distance_km,
        eta_seconds: (distance_km * 120.0) as u32,
    }
}

fn request() -> MatchCommand {
    MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: pickup(),
        destination: destination(),
    }
}

fn propose(candidates: &[Candidate]) -> MatchCommand {
    MatchCommand::Propose {
        candidates: candidates.to_vec(),
    }
}

// Events, with the timeline used throughout: requested at t(0) (deadline t(30)),
// proposed at t(1), accepted at t(2) (deadline t(32)).

fn requested() -> MatchEvent {
    MatchEvent::Requested {
        match_id: mid(),
        passenger_id: P,
        pickup: pickup(),
        destination: destination(),
        requested_at: t(0),
        round: 1,
        radius_km: 5.0,
        deadline: t(30),
    }
}

fn proposed(round: u32, candidates: &[Candidate], at: i64) -> MatchEvent {
    MatchEvent::Proposed {
        round,
        candidates: candidates.to_vec(),
        proposed_at: t(at),
    }
}

fn accepted(c: Candidate, withdrawn_from: &[UserId]) -> MatchEvent {
    MatchEvent::DriverAccepted {
        driver_id: c.driver_id,
        distance_km: c.distance_km,
        eta_seconds: c.eta_seconds,
        accepted_at: t(2),
        deadline: t(32),
        withdrawn_from: withdrawn_from.to_vec(),
    }
}

fn round_started(round: u32, radius_km: f64, deadline: i64) -> MatchEvent {
    MatchEvent::RoundStarted {
        round,
        radius_km,
        deadline: t(deadline),
    }
}

fn searching() -> Vec<MatchEvent> {
    vec![requested()]
}

fn proposed_to(candidates: &[Candidate]) -> Vec<MatchEvent> {
    vec![requested(), proposed(1, candidates, 1)]
}

/// Proposed to D1 (1 km) and D2 (2 km); D1 accepted.
fn driver_accepted() -> Vec<MatchEvent> {
    let mut events = proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]);
    events.push(accepted(cand(D1, 1.0), &[D2]));
    events
}

fn confirmed() -> Vec<MatchEvent> {
    let mut events = driver_accepted();
    events.push(MatchEvent::Confirmed {
        ride_id: ride(),
        driver_id: D1,
        passenger_id: P,
        pickup: pickup(),
        destination: destination(),
        confirmed_at: t(3),
    });
    events
}

fn cancelled() -> Vec<MatchEvent> {
    let mut events = searching();
    events.push(MatchEvent::Cancelled {
        passenger_id: P,
        driver_id: None,
        cancelled_at: t(1),
        withdrawn_from: vec![],
    });
    events
}

fn expired() -> Vec<MatchEvent> {
    let mut events = proposed_to(&[cand(D1, 1.0)]);
    events.push(MatchEvent::Expired {
        passenger_id: P,
        driver_id: None,
        withdrawn_from: vec![D1],
    });
    events
}

fn failed() -> Vec<MatchEvent> {
    let mut events = searching();
    events.push(MatchEvent::Failed {
        passenger_id: P,
        reason: FailureReason::NoDriver,
    });
    events
}

// ---------------------------------------------------------------------------------------
// given / when / then
// ---------------------------------------------------------------------------------------

struct Given {
    state: Match,
    policy: Policy,
}

fn given(events: impl IntoIterator<Item = MatchEvent>) -> Given {
    let events: Vec<MatchEvent> = events.into_iter().collect();
    Given {
        state: fold(&events),
        policy: Policy::default(),
    }
}

fn nothing() -> Given {
    given([])
}

struct Then {
    state: Match,
    result: Result<Vec<MatchEvent>, DomainError>,
}

impl Given {
    fn with_matching(mut self, matching: MatchPolicy) -> Self {
        self.policy.matching = matching;
        self
    }

    /// Decides the command at `t(now)`.
    fn when(self, command: MatchCommand, now: i64) -> Then {
        let ctx = Context {
            now: t(now),
            policy: &self.policy,
        };
        let result = self.state.decide(&command, &ctx);
        Then {
            state: self.state,
            result,
        }
    }
}

impl Then {
    /// Asserts the events and returns the state after them.
    #[track_caller]
    fn then_events(self, expected: &[MatchEvent]) -> Match {
        let events = self.result.unwrap_or_else(|e| panic!("expected events, got {e}"));
        assert_eq!(events, expected);
        let mut state = self.state;
        for event in &events {
            state.evolve(event);
        }
        state
    }

    #[track_caller]
    fn then_nothing(self) -> Match {
        self.then_events(&[])
    }

    #[track_caller]
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

fn reservations(events: &[MatchEvent]) -> Vec<Reservation> {
    events.iter().flat_map(DomainEvent::reservations).collect()
}

// ---------------------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------------------

#[test]
fn request_by_a_passenger_starts_round_one_and_claims_the_passenger() {
    let state = nothing().when(request(), 0).then_events(&[requested()]);
    assert_eq!(state.status(), "SEARCHING");
    assert_eq!(state.round(), 1);
    assert_eq!(state.radius_km(), Some(5.0));
    assert_eq!(state.deadline(), Some(t(30)));
    assert!(state.is_open());
    assert_eq!(reservations(&[requested()]), vec![Reservation::Claim(P)]);
}

#[test]
fn request_by_a_driver_is_forbidden() {
    let command = MatchCommand::Request {
        match_id: mid(),
        actor: driver(D1),
        pickup: pickup(),
        destination: destination(),
    };
    nothing().when(command, 0).then_error(ErrorCode::Forbidden);
}

#[test]
fn request_by_the_system_is_forbidden() {
    let command = MatchCommand::Request {
        match_id: mid(),
        actor: Actor::SYSTEM,
        pickup: pickup(),
        destination: destination(),
    };
    nothing().when(command, 0).then_error(ErrorCode::Forbidden);
}

#[test]
fn request_with_pickup_equal_to_destination_is_a_validation_error() {
    let command = MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: pickup(),
        destination: pickup(),
    };
    nothing().when(command, 0).then_error(ErrorCode::ValidationFailed);
}

#[test]
fn request_with_destination_closer_than_100_m_is_a_validation_error() {
    // 0.0008° of latitude is about 89 m; 0.001° about 111 m.
    let near = GeoPoint::new(-6.2008, 106.8).unwrap();
    let command = |destination| MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: pickup(),
        destination,
    };
    nothing()
        .when(command(near), 0)
        .then_error(ErrorCode::ValidationFailed);
    let far_enough = GeoPoint::new(-6.201, 106.8).unwrap();
    nothing()
        .when(command(far_enough), 0)
        .then_events(&[MatchEvent::Requested {
            match_id: mid(),
            passenger_id: P,
            pickup: pickup(),
            destination: far_enough,
            requested_at: t(0),
            round: 1,
            radius_km: 5.0,
            deadline: t(30),
        }]);
}

#[test]
fn request_outside_the_service_area_is_refused() {
    let singapore = GeoPoint::new(1.35, 103.8).unwrap();
    let bangkok = GeoPoint::new(13.75, 100.5).unwrap();
    let from_pickup = MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: bangkok,
        destination: destination(),
    };
    nothing()
        .when(from_pickup, 0)
        .then_error(ErrorCode::OutsideServiceArea);
    let to_destination = MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: pickup(),
        destination: bangkok,
    };
    nothing()
        .when(to_destination, 0)
        .then_error(ErrorCode::OutsideServiceArea);
    // Singapore is inside Indonesia's bounding box: the area is a rectangle.
    let inside_the_box = MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: singapore,
        destination: destination(),
    };
    assert!(nothing().when(inside_the_box, 0).result.is_ok());
}

#[test]
fn request_on_an_existing_match_is_an_invalid_transition() {
    let e = given(searching())
        .when(request(), 5)
        .then_error(ErrorCode::InvalidTransition);
    assert!(
        e.message.contains("finder_update") && e.message.contains("SEARCHING"),
        "{e}"
    );
}

#[test]
fn request_checks_validation_before_forbidden() {
    let command = MatchCommand::Request {
        match_id: mid(),
        actor: driver(D1),
        pickup: pickup(),
        destination: pickup(),
    };
    nothing().when(command, 0).then_error(ErrorCode::ValidationFailed);
}

#[test]
fn request_checks_forbidden_before_invalid_transition() {
    let command = MatchCommand::Request {
        match_id: mid(),
        actor: driver(D1),
        pickup: pickup(),
        destination: destination(),
    };
    given(searching())
        .when(command, 1)
        .then_error(ErrorCode::Forbidden);
}

#[test]
fn request_checks_invalid_transition_before_outside_service_area() {
    let command = MatchCommand::Request {
        match_id: mid(),
        actor: passenger(),
        pickup: GeoPoint::new(13.75, 100.5).unwrap(),
        destination: destination(),
    };
    given(searching())
        .when(command, 1)
        .then_error(ErrorCode::InvalidTransition);
}

#[test]
fn any_other_command_on_a_match_nobody_requested_is_not_found() {
    let commands = [
        propose(&[cand(D1, 1.0)]),
        MatchCommand::Accept { actor: driver(D1) },
        MatchCommand::Decline { actor: driver(D1) },
        MatchCommand::Confirm {
            actor: passenger(),
            ride_id: ride(),
        },
        MatchCommand::Reject { actor: passenger() },
        MatchCommand::Cancel { actor: passenger() },
        MatchCommand::Timeout,
    ];
    for command in commands {
        nothing().when(command, 100).then_error(ErrorCode::NotFound);
    }
}

#[test]
fn propose_validation_comes_before_not_found() {
    nothing()
        .when(propose(&[cand(D1, -1.0)]), 0)
        .then_error(ErrorCode::ValidationFailed);
}

// ---------------------------------------------------------------------------------------
// Propose
// ---------------------------------------------------------------------------------------

#[test]
fn propose_in_searching_moves_to_proposed_and_keeps_the_deadline() {
    let state = given(searching())
        .when(propose(&[cand(D1, 1.0), cand(D2, 2.0)]), 1)
        .then_events(&[proposed(1, &[cand(D1, 1.0), cand(D2, 2.0)], 1)]);
    assert_eq!(state.status(), "PROPOSED");
    assert_eq!(state.deadline(), Some(t(30)));
    assert_eq!(state.candidates(), &[cand(D1, 1.0), cand(D2, 2.0)]);
    assert_eq!(state.proposed_ever().collect::<Vec<_>>(), vec![D1, D2]);
    assert!(reservations(&[proposed(1, &[cand(D1, 1.0)], 1)]).is_empty());
}

#[test]
fn propose_orders_the_kept_candidates_nearest_first() {
    given(searching())
        .when(propose(&[cand(D2, 3.0), cand(D1, 1.0)]), 1)
        .then_events(&[proposed(1, &[cand(D1, 1.0), cand(D2, 3.0)], 1)]);
}

#[test]
fn propose_keeps_distances_to_the_metre() {
    let precise = Candidate {
        driver_id: D1,
        distance_km: 1.234_567_890_123_4,
        eta_seconds: 150,
    };
    let kept = Candidate {
        distance_km: 1.235,
        ..precise
    };
    let state = given(searching())
        .when(propose(&[precise]), 1)
        .then_events(&[proposed(1, &[kept], 1)]);
    assert_eq!(state.candidates(), &[kept]);
}

#[test]
fn propose_during_a_round_adds_a_driver_who_came_online() {
    let state = given(proposed_to(&[cand(D1, 1.0)]))
        .when(propose(&[cand(D2, 4.0)]), 10)
        .then_events(&[proposed(1, &[cand(D2, 4.0)], 10)]);
    assert_eq!(state.candidates(), &[cand(D1, 1.0), cand(D2, 4.0)]);
    assert_eq!(state.deadline(), Some(t(30)));
}

#[test]
fn propose_drops_already_proposed_excluded_duplicated_and_passenger_candidates() {
    let mut events = proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]);
    events.push(MatchEvent::DriverDeclined { driver_id: D2 });
    let passenger_as_driver = cand(P, 0.5);
    given(events)
        .when(
            propose(&[
                cand(D1, 1.0),
                cand(D2, 2.0),
                cand(D3, 3.0),
                cand(D3, 3.5),
                passenger_as_driver,
            ]),
            5,
        )
        .then_events(&[proposed(1, &[cand(D3, 3.0)], 5)]);
}

#[test]
fn propose_with_only_dropped_candidates_records_nothing() {
    given(proposed_to(&[cand(D1, 1.0)]))
        .when(propose(&[cand(D1, 1.0)]), 5)
        .then_nothing();
}

#[test]
fn propose_caps_a_round_at_max_drivers_per_request_keeping_the_nearest() {
    let state = given(searching())
        .when(
            propose(&[
                cand(D6, 6.0),
                cand(D1, 1.0),
                cand(D2, 2.0),
                cand(D3, 3.0),
                cand(D4, 4.0),
                cand(D5, 5.0),
            ]),
            1,
        )
        .then_events(&[proposed(
            1,
            &[
                cand(D1, 1.0),
                cand(D2, 2.0),
                cand(D3, 3.0),
                cand(D4, 4.0),
                cand(D5, 5.0),
            ],
            1,
        )]);
    assert_eq!(state.candidates().len(), 5);
    assert!(state.may_propose(D6));
}

#[test]
fn propose_cap_counts_every_driver_proposed_in_the_round_including_decliners() {
    let mut events = proposed_to(&[cand(D1, 1.0), cand(D2, 2.0), cand(D3, 3.0), cand(D4, 4.0)]);
    events.push(MatchEvent::DriverDeclined { driver_id: D1 });
    events.push(MatchEvent::DriverDeclined { driver_id: D2 });
    // Four were proposed this round: one more fits, though only two remain candidates.
    given(events)
        .when(propose(&[cand(D6, 6.0), cand(D5, 5.0)]), 5)
        .then_events(&[proposed(1, &[cand(D5, 5.0)], 5)]);
}

#[test]
fn propose_cap_resets_in_the_next_round() {
    let full = [
        cand(D1, 1.0),
        cand(D2, 2.0),
        cand(D3, 3.0),
        cand(D4, 4.0),
        cand(D5, 5.0),
    ];
    let mut events = proposed_to(&full);
    given(events.clone())
        .when(propose(&[cand(D6, 6.0)]), 5)
        .then_nothing();
    events.push(MatchEvent::RoundTimedOut {
        round: 1,
        withdrawn_from: vec![D1, D2, D3, D4, D5],
    });
    events.push(round_started(2, 10.0, 60));
    given(events)
        .when(propose(&[cand(D6, 6.0)]), 31)
        .then_events(&[proposed(2, &[cand(D6, 6.0)], 31)]);
}

#[test]
fn propose_of_nobody_is_recorded_once_per_round_and_stays_searching() {
    let state = given(searching())
        .when(propose(&[]), 1)
        .then_events(&[proposed(1, &[], 1)]);
    assert_eq!(state.status(), "SEARCHING");
    assert_eq!(state.deadline(), Some(t(30)));
    let mut events = searching();
    events.push(proposed(1, &[], 1));
    given(events.clone()).when(propose(&[]), 2).then_nothing();
    // A driver who comes online later in the round is still proposed.
    given(events)
        .when(propose(&[cand(D1, 1.0)]), 3)
        .then_events(&[proposed(1, &[cand(D1, 1.0)], 3)]);
}

#[test]
fn propose_of_nobody_while_proposed_records_nothing() {
    given(proposed_to(&[cand(D1, 1.0)]))
        .when(propose(&[]), 2)
        .then_nothing();
}

#[test]
fn propose_with_a_negative_or_non_finite_distance_is_a_validation_error() {
    for bad in [-0.1, f64::NAN, f64::INFINITY, 20_100.0] {
        given(searching())
            .when(propose(&[cand(D1, 1.0), cand(D2, bad)]), 1)
            .then_error(ErrorCode::ValidationFailed);
    }
    // Validation comes before the status.
    given(confirmed())
        .when(propose(&[cand(D3, f64::NAN)]), 5)
        .then_error(ErrorCode::ValidationFailed);
}

#[test]
fn propose_after_a_driver_accepted_or_when_terminal_is_an_invalid_transition() {
    for events in [driver_accepted(), confirmed(), cancelled(), expired(), failed()] {
        let e = given(events)
            .when(propose(&[cand(D3, 1.0)]), 5)
            .then_error(ErrorCode::InvalidTransition);
        assert!(e.message.contains("propose"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Accept
// ---------------------------------------------------------------------------------------

#[test]
fn accept_by_a_candidate_wins_withdraws_the_others_and_claims_the_driver() {
    let event = accepted(cand(D2, 2.0), &[D1, D3]);
    let state = given(proposed_to(&[cand(D1, 1.0), cand(D2, 2.0), cand(D3, 3.0)]))
        .when(MatchCommand::Accept { actor: driver(D2) }, 2)
        .then_events(std::slice::from_ref(&event));
    assert_eq!(state.status(), "DRIVER_ACCEPTED");
    assert_eq!(state.accepted_driver(), Some(&cand(D2, 2.0)));
    assert_eq!(
        state.deadline(),
        Some(t(32)),
        "the passenger gets a fresh timeout to confirm"
    );
    assert!(state.candidates().is_empty());
    assert_eq!(event.reservations(), vec![Reservation::Claim(D2)]);
}

#[test]
fn accept_by_a_driver_never_proposed_is_forbidden() {
    given(proposed_to(&[cand(D1, 1.0)]))
        .when(MatchCommand::Accept { actor: driver(D2) }, 2)
        .then_error(ErrorCode::Forbidden);
}

#[test]
fn accept_by_the_passenger_or_the_system_is_forbidden() {
    for actor in [passenger(), Actor::SYSTEM, Actor::new(D1, Role::Passenger)] {
        given(proposed_to(&[cand(D1, 1.0)]))
            .when(MatchCommand::Accept { actor }, 2)
            .then_error(ErrorCode::Forbidden);
    }
}

#[test]
fn accept_after_another_driver_accepted_is_already_taken() {
    let e = given(driver_accepted())
        .when(MatchCommand::Accept { actor: driver(D2) }, 3)
        .then_error(ErrorCode::AlreadyTaken);
    assert_eq!(e.code.as_str(), "already_taken");
}

#[test]
fn accept_after_another_driver_was_confirmed_is_already_taken() {
    given(confirmed())
        .when(MatchCommand::Accept { actor: driver(D2) }, 4)
        .then_error(ErrorCode::AlreadyTaken);
}

#[test]
fn accept_twice_by_the_winner_is_an_invalid_transition() {
    given(driver_accepted())
        .when(MatchCommand::Accept { actor: driver(D1) }, 3)
        .then_error(ErrorCode::InvalidTransition);
    given(confirmed())
        .when(MatchCommand::Accept { actor: driver(D1) }, 4)
        .then_error(ErrorCode::InvalidTransition);
}

#[test]
fn accept_by_a_driver_who_declined_is_an_invalid_transition() {
    let mut events = proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]);
    events.push(MatchEvent::DriverDeclined { driver_id: D1 });
    let e = given(events)
        .when(MatchCommand::Accept { actor: driver(D1) }, 3)
        .then_error(ErrorCode::InvalidTransition);
    assert!(e.message.contains("declined"), "{e}");
}

#[test]
fn accept_by_a_decliner_after_another_driver_accepted_is_already_taken() {
    let mut events = proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]);
    events.push(MatchEvent::DriverDeclined { driver_id: D2 });
    events.push(accepted(cand(D1, 1.0), &[]));
    given(events)
        .when(MatchCommand::Accept { actor: driver(D2) }, 3)
        .then_error(ErrorCode::AlreadyTaken);
}

#[test]
fn accept_by_a_candidate_of_a_round_that_timed_out_is_an_invalid_transition() {
    let mut events = proposed_to(&[cand(D1, 1.0)]);
    events.push(MatchEvent::RoundTimedOut {
        round: 1,
        withdrawn_from: vec![D1],
    });
    events.push(round_started(2, 10.0, 60));
    given(events.clone())
        .when(MatchCommand::Accept { actor: driver(D1) }, 31)
        .then_error(ErrorCode::InvalidTransition);
    // Still not a candidate once others are proposed in the new round.
    events.push(proposed(2, &[cand(D2, 7.0)], 32));
    given(events)
        .when(MatchCommand::Accept { actor: driver(D1) }, 33)
        .then_error(ErrorCode::InvalidTransition);
}

#[test]
fn accept_when_cancelled_expired_or_failed_is_an_invalid_transition() {
    let mut cancelled_while_proposed = proposed_to(&[cand(D1, 1.0)]);
    cancelled_while_proposed.push(MatchEvent::Cancelled {
        passenger_id: P,
        driver_id: None,
        cancelled_at: t(2),
        withdrawn_from: vec![D1],
    });
    for events in [cancelled_while_proposed, expired()] {
        given(events)
            .when(MatchCommand::Accept { actor: driver(D1) }, 40)
            .then_error(ErrorCode::InvalidTransition);
    }
    let mut all_declined = proposed_to(&[cand(D1, 1.0)]);
    all_declined.push(MatchEvent::DriverDeclined { driver_id: D1 });
    all_declined.push(MatchEvent::Failed {
        passenger_id: P,
        reason: FailureReason::AllDeclined,
    });
    given(all_declined)
        .when(MatchCommand::Accept { actor: driver(D1) }, 40)
        .then_error(ErrorCode::InvalidTransition);
}

// ---------------------------------------------------------------------------------------
// Decline
// ---------------------------------------------------------------------------------------

#[test]
fn decline_by_one_of_several_candidates_removes_and_excludes_them() {
    let state = given(proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]))
        .when(MatchCommand::Decline { actor: driver(D1) }, 2)
        .then_events(&[MatchEvent::DriverDeclined { driver_id: D1 }]);
    assert_eq!(state.status(), "PROPOSED");
    assert_eq!(state.candidates(), &[cand(D2, 2.0)]);
    assert_eq!(state.excluded().collect::<Vec<_>>(), vec![D1]);
    assert_eq!(state.deadline(), Some(t(30)));
    assert!(MatchEvent::DriverDeclined { driver_id: D1 }
        .reservations()
        .is_empty());
}

#[test]
fn decline_by_the_last_candidate_starts_the_next_round_at_once() {
    let state = given(proposed_to(&[cand(D1, 1.0)]))
        .when(MatchCommand::Decline { actor: driver(D1) }, 7)
        .then_events(&[
            MatchEvent::DriverDeclined { driver_id: D1 },
            round_started(2, 10.0, 37),
        ]);
    assert_eq!(state.status(), "SEARCHING");
    assert_eq!(state.round(), 2);
    assert!(state.candidates().is_empty());
}

#[test]
fn decline_by_the_last_candidate_of_the_last_round_fails_with_all_declined() {
    let mut events = proposed_to(&[cand(D1, 1.0)]);
    events.extend([
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![D1],
        },
        round_started(2, 10.0, 60),
        MatchEvent::RoundTimedOut {
            round: 2,
            withdrawn_from: vec![],
        },
        round_started(3, 20.0, 90),
        proposed(3, &[cand(D2, 15.0)], 61),
    ]);
    let failed = MatchEvent::Failed {
        passenger_id: P,
        reason: FailureReason::AllDeclined,
    };
    let state = given(events)
        .when(MatchCommand::Decline { actor: driver(D2) }, 62)
        .then_events(&[MatchEvent::DriverDeclined { driver_id: D2 }, failed.clone()]);
    assert_eq!(state.status(), "FAILED");
    assert_eq!(state.failure_reason(), Some(FailureReason::AllDeclined));
    assert_eq!(state.deadline(), None);
    assert!(!state.is_open());
    assert_eq!(failed.reservations(), vec![Reservation::Release(P)]);
}

#[test]
fn a_decliner_is_never_proposed_the_same_match_again() {
    let mut events = proposed_to(&[cand(D1, 1.0)]);
    events.push(MatchEvent::DriverDeclined { driver_id: D1 });
    events.push(round_started(2, 10.0, 37));
    let state = given(events.clone())
        .when(propose(&[cand(D1, 1.0)]), 8)
        .then_nothing();
    assert!(!state.may_propose(D1));
    given(events)
        .when(propose(&[cand(D1, 1.0), cand(D2, 6.0)]), 8)
        .then_events(&[proposed(2, &[cand(D2, 6.0)], 8)]);
}

#[test]
fn decline_by_a_driver_never_proposed_is_forbidden() {
    given(proposed_to(&[cand(D1, 1.0)]))
        .when(MatchCommand::Decline { actor: driver(D2) }, 2)
        .then_error(ErrorCode::Forbidden);
    given(proposed_to(&[cand(D1, 1.0)]))
        .when(MatchCommand::Decline { actor: passenger() }, 2)
        .then_error(ErrorCode::Forbidden);
}

#[test]
fn decline_twice_is_an_invalid_transition() {
    let mut events = proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]);
    events.push(MatchEvent::DriverDeclined { driver_id: D1 });
    given(events)
        .when(MatchCommand::Decline { actor: driver(D1) }, 3)
        .then_error(ErrorCode::InvalidTransition);
}

#[test]
fn decline_outside_proposed_is_an_invalid_transition() {
    // D2 was withdrawn when D1 accepted; D1 cannot back out by declining.
    for actor in [driver(D1), driver(D2)] {
        given(driver_accepted())
            .when(MatchCommand::Decline { actor }, 3)
            .then_error(ErrorCode::InvalidTransition);
    }
    let mut timed_out = proposed_to(&[cand(D1, 1.0)]);
    timed_out.push(MatchEvent::RoundTimedOut {
        round: 1,
        withdrawn_from: vec![D1],
    });
    timed_out.push(round_started(2, 10.0, 60));
    given(timed_out)
        .when(MatchCommand::Decline { actor: driver(D1) }, 31)
        .then_error(ErrorCode::InvalidTransition);
    for events in [confirmed(), expired()] {
        given(events)
            .when(MatchCommand::Decline { actor: driver(D1) }, 40)
            .then_error(ErrorCode::InvalidTransition);
    }
}

// ---------------------------------------------------------------------------------------
// Confirm
// ---------------------------------------------------------------------------------------

#[test]
fn confirm_by_the_passenger_creates_the_ride_and_moves_both_to_it() {
    let event = MatchEvent::Confirmed {
        ride_id: ride(),
        driver_id: D1,
        passenger_id: P,
        pickup: pickup(),
        destination: destination(),
        confirmed_at: t(3),
    };
    let state = given(driver_accepted())
        .when(
            MatchCommand::Confirm {
                actor: passenger(),
                ride_id: ride(),
            },
            3,
        )
        .then_events(std::slice::from_ref(&event));
    assert_eq!(state.status(), "CONFIRMED");
    assert_eq!(state.ride_id(), Some(ride()));
    assert_eq!(state.accepted_driver(), Some(&cand(D1, 1.0)));
    assert_eq!(state.deadline(), None);
    assert!(!state.is_open());
    let to = |user| Reservation::Transfer {
        user,
        to_type: "ride",
        to_id: ride().as_uuid(),
    };
    assert_eq!(event.reservations(), vec![to(P), to(D1)]);
}

#[test]
fn confirm_after_the_deadline_but_before_the_timeout_still_wins() {
    given(driver_accepted())
        .when(
            MatchCommand::Confirm {
                actor: passenger(),
                ride_id: ride(),
            },
            100,
        )
        .then_events(&[MatchEvent::Confirmed {
            ride_id: ride(),
            driver_id: D1,
            passenger_id: P,
            pickup: pickup(),
            destination: destination(),
            confirmed_at: t(100),
        }]);
}

#[test]
fn confirm_by_anyone_but_the_passenger_is_forbidden() {
    for actor in [
        driver(D1),
        Actor::new(OTHER_PASSENGER, Role::Passenger),
        Actor::SYSTEM,
    ] {
        given(driver_accepted())
            .when(
                MatchCommand::Confirm {
                    actor,
                    ride_id: ride(),
                },
                3,
            )
            .then_error(ErrorCode::Forbidden);
    }
}

#[test]
fn confirm_before_a_driver_accepted_or_when_terminal_is_an_invalid_transition() {
    let confirm = || MatchCommand::Confirm {
        actor: passenger(),
        ride_id: ride(),
    };
    for events in [
        searching(),
        proposed_to(&[cand(D1, 1.0)]),
        confirmed(),
        cancelled(),
        expired(),
        failed(),
    ] {
        given(events)
            .when(confirm(), 5)
            .then_error(ErrorCode::InvalidTransition);
    }
}

// ---------------------------------------------------------------------------------------
// Reject
// ---------------------------------------------------------------------------------------

#[test]
fn reject_excludes_and_releases_the_driver_and_restarts_the_search_at_round_one() {
    let mut events = driver_accepted();
    // Make the accepted match be in a later round, to see the restart.
    events.splice(
        1..1,
        [
            MatchEvent::RoundTimedOut {
                round: 1,
                withdrawn_from: vec![],
            },
            round_started(2, 10.0, 60),
        ],
    );
    let rejected = MatchEvent::DriverRejected { driver_id: D1 };
    let state = given(events)
        .when(MatchCommand::Reject { actor: passenger() }, 4)
        .then_events(&[rejected.clone(), round_started(1, 5.0, 34)]);
    assert_eq!(state.status(), "SEARCHING");
    assert_eq!(state.round(), 1);
    assert_eq!(state.radius_km(), Some(5.0));
    assert_eq!(state.accepted_driver(), None);
    assert_eq!(state.excluded().collect::<Vec<_>>(), vec![D1]);
    assert_eq!(rejected.reservations(), vec![Reservation::Release(D1)]);
}

#[test]
fn a_rejected_driver_and_earlier_candidates_are_not_proposed_again_after_the_restart() {
    let mut events = driver_accepted();
    events.push(MatchEvent::DriverRejected { driver_id: D1 });
    events.push(round_started(1, 5.0, 34));
    given(events)
        .when(propose(&[cand(D1, 1.0), cand(D2, 2.0), cand(D3, 3.0)]), 5)
        .then_events(&[proposed(1, &[cand(D3, 3.0)], 5)]);
}

#[test]
fn reject_by_anyone_but_the_passenger_is_forbidden() {
    for actor in [driver(D1), Actor::new(OTHER_PASSENGER, Role::Passenger)] {
        given(driver_accepted())
            .when(MatchCommand::Reject { actor }, 3)
            .then_error(ErrorCode::Forbidden);
    }
}

#[test]
fn reject_without_an_accepted_driver_is_an_invalid_transition() {
    for events in [
        searching(),
        proposed_to(&[cand(D1, 1.0)]),
        confirmed(),
        cancelled(),
        expired(),
        failed(),
    ] {
        given(events)
            .when(MatchCommand::Reject { actor: passenger() }, 5)
            .then_error(ErrorCode::InvalidTransition);
    }
}

// ---------------------------------------------------------------------------------------
// Cancel
// ---------------------------------------------------------------------------------------

#[test]
fn cancel_while_searching_releases_the_passenger() {
    let event = MatchEvent::Cancelled {
        passenger_id: P,
        driver_id: None,
        cancelled_at: t(1),
        withdrawn_from: vec![],
    };
    let state = given(searching())
        .when(MatchCommand::Cancel { actor: passenger() }, 1)
        .then_events(std::slice::from_ref(&event));
    assert_eq!(state.status(), "CANCELLED");
    assert_eq!(state.deadline(), None);
    assert_eq!(event.reservations(), vec![Reservation::Release(P)]);
}

#[test]
fn cancel_while_proposed_withdraws_the_candidates() {
    given(proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]))
        .when(MatchCommand::Cancel { actor: passenger() }, 2)
        .then_events(&[MatchEvent::Cancelled {
            passenger_id: P,
            driver_id: None,
            cancelled_at: t(2),
            withdrawn_from: vec![D1, D2],
        }]);
}

#[test]
fn cancel_after_a_driver_accepted_withdraws_and_releases_the_driver() {
    let event = MatchEvent::Cancelled {
        passenger_id: P,
        driver_id: Some(D1),
        cancelled_at: t(3),
        withdrawn_from: vec![D1],
    };
    given(driver_accepted())
        .when(MatchCommand::Cancel { actor: passenger() }, 3)
        .then_events(std::slice::from_ref(&event));
    assert_eq!(
        event.reservations(),
        vec![Reservation::Release(P), Reservation::Release(D1)]
    );
}

#[test]
fn cancel_by_anyone_but_the_passenger_is_forbidden() {
    for actor in [
        driver(D1),
        Actor::new(OTHER_PASSENGER, Role::Passenger),
        Actor::SYSTEM,
    ] {
        given(driver_accepted())
            .when(MatchCommand::Cancel { actor }, 3)
            .then_error(ErrorCode::Forbidden);
    }
}

#[test]
fn cancel_when_terminal_is_an_invalid_transition() {
    for events in [confirmed(), cancelled(), expired(), failed()] {
        let e = given(events)
            .when(MatchCommand::Cancel { actor: passenger() }, 50)
            .then_error(ErrorCode::InvalidTransition);
        assert!(e.message.contains("finder_update"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Timeout
// ---------------------------------------------------------------------------------------

#[test]
fn timeout_before_the_deadline_is_an_invalid_transition_saying_not_due() {
    for events in [searching(), proposed_to(&[cand(D1, 1.0)]), driver_accepted()] {
        let e = given(events)
            .when(MatchCommand::Timeout, 29)
            .then_error(ErrorCode::InvalidTransition);
        assert!(e.message.contains("not due"), "{e}");
    }
}

#[test]
fn timeout_of_a_proposed_round_withdraws_the_candidates_and_starts_the_next_round() {
    let state = given(proposed_to(&[cand(D1, 1.0), cand(D2, 2.0)]))
        .when(MatchCommand::Timeout, 30)
        .then_events(&[
            MatchEvent::RoundTimedOut {
                round: 1,
                withdrawn_from: vec![D1, D2],
            },
            round_started(2, 10.0, 60),
        ]);
    assert_eq!(state.status(), "SEARCHING");
    assert!(state.candidates().is_empty());
    assert_eq!(state.deadline(), Some(t(60)));
}

#[test]
fn timeout_doubles_the_radius_5_10_20() {
    let state = given(searching()).when(MatchCommand::Timeout, 30).then_events(&[
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![],
        },
        round_started(2, 10.0, 60),
    ]);
    assert_eq!(state.radius_km(), Some(10.0));
    let mut events = searching();
    events.extend([
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![],
        },
        round_started(2, 10.0, 60),
    ]);
    let state = given(events).when(MatchCommand::Timeout, 61).then_events(&[
        MatchEvent::RoundTimedOut {
            round: 2,
            withdrawn_from: vec![],
        },
        round_started(3, 20.0, 91),
    ]);
    assert_eq!((state.round(), state.radius_km()), (3, Some(20.0)));
}

#[test]
fn radius_never_grows_past_the_maximum() {
    let policy = MatchPolicy {
        max_rounds: 5,
        ..MatchPolicy::default()
    };
    let mut events = searching();
    events.extend([
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![],
        },
        round_started(2, 10.0, 60),
        MatchEvent::RoundTimedOut {
            round: 2,
            withdrawn_from: vec![],
        },
        round_started(3, 20.0, 90),
    ]);
    given(events)
        .with_matching(policy)
        .when(MatchCommand::Timeout, 90)
        .then_events(&[
            MatchEvent::RoundTimedOut {
                round: 3,
                withdrawn_from: vec![],
            },
            round_started(4, 20.0, 120),
        ]);
}

/// Round 1 proposed to D1 (timed out), rounds 2 and 3 found nobody.
fn last_round_after_a_proposal() -> Vec<MatchEvent> {
    let mut events = proposed_to(&[cand(D1, 1.0)]);
    events.extend([
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![D1],
        },
        round_started(2, 10.0, 60),
        proposed(2, &[], 31),
        MatchEvent::RoundTimedOut {
            round: 2,
            withdrawn_from: vec![],
        },
        round_started(3, 20.0, 90),
    ]);
    events
}

#[test]
fn timeout_of_the_last_round_expires_when_a_driver_was_ever_proposed() {
    let expired = MatchEvent::Expired {
        passenger_id: P,
        driver_id: None,
        withdrawn_from: vec![],
    };
    let state = given(last_round_after_a_proposal())
        .when(MatchCommand::Timeout, 90)
        .then_events(std::slice::from_ref(&expired));
    assert_eq!(state.status(), "EXPIRED");
    assert_eq!(state.deadline(), None);
    assert_eq!(expired.reservations(), vec![Reservation::Release(P)]);
}

#[test]
fn timeout_of_the_last_round_withdraws_its_candidates() {
    let mut events = last_round_after_a_proposal();
    events.push(proposed(3, &[cand(D2, 12.0)], 70));
    given(events)
        .when(MatchCommand::Timeout, 95)
        .then_events(&[MatchEvent::Expired {
            passenger_id: P,
            driver_id: None,
            withdrawn_from: vec![D2],
        }]);
}

#[test]
fn timeout_of_the_last_round_fails_with_no_driver_when_nobody_was_ever_proposed() {
    let mut events = searching();
    events.extend([
        proposed(1, &[], 1),
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![],
        },
        round_started(2, 10.0, 60),
        MatchEvent::RoundTimedOut {
            round: 2,
            withdrawn_from: vec![],
        },
        round_started(3, 20.0, 90),
    ]);
    let failed = MatchEvent::Failed {
        passenger_id: P,
        reason: FailureReason::NoDriver,
    };
    let state = given(events)
        .when(MatchCommand::Timeout, 90)
        .then_events(std::slice::from_ref(&failed));
    assert_eq!(state.failure_reason(), Some(FailureReason::NoDriver));
    assert_eq!(
        serde_json::to_value(&failed).unwrap()["payload"]["reason"],
        "no_driver"
    );
}

#[test]
fn timeout_while_waiting_for_the_passenger_expires_and_releases_both() {
    given(driver_accepted())
        .when(MatchCommand::Timeout, 31)
        .then_error(ErrorCode::InvalidTransition);
    let expired = MatchEvent::Expired {
        passenger_id: P,
        driver_id: Some(D1),
        withdrawn_from: vec![D1],
    };
    let state = given(driver_accepted())
        .when(MatchCommand::Timeout, 32)
        .then_events(std::slice::from_ref(&expired));
    assert_eq!(state.status(), "EXPIRED");
    assert_eq!(state.accepted_driver(), None);
    assert_eq!(
        expired.reservations(),
        vec![Reservation::Release(P), Reservation::Release(D1)]
    );
}

#[test]
fn timeout_when_terminal_is_an_invalid_transition() {
    for events in [confirmed(), cancelled(), expired(), failed()] {
        let e = given(events)
            .when(MatchCommand::Timeout, 1000)
            .then_error(ErrorCode::InvalidTransition);
        assert!(e.message.contains("timeout"), "{e}");
    }
}

// ---------------------------------------------------------------------------------------
// Terminal statuses, names, serialization
// ---------------------------------------------------------------------------------------

#[test]
fn terminal_statuses_refuse_every_command_except_already_taken() {
    // D1 was proposed in each, so the driver commands pass the actor check.
    let mut cancelled_while_proposed = proposed_to(&[cand(D1, 1.0)]);
    cancelled_while_proposed.push(MatchEvent::Cancelled {
        passenger_id: P,
        driver_id: None,
        cancelled_at: t(2),
        withdrawn_from: vec![D1],
    });
    let mut all_declined = proposed_to(&[cand(D1, 1.0)]);
    all_declined.push(MatchEvent::DriverDeclined { driver_id: D1 });
    all_declined.push(MatchEvent::Failed {
        passenger_id: P,
        reason: FailureReason::AllDeclined,
    });
    for (events, status) in [
        (confirmed(), "CONFIRMED"),
        (cancelled_while_proposed, "CANCELLED"),
        (expired(), "EXPIRED"),
        (all_declined, "FAILED"),
    ] {
        let commands = [
            request(),
            propose(&[cand(D7, 1.0)]),
            MatchCommand::Accept { actor: driver(D1) },
            MatchCommand::Decline { actor: driver(D1) },
            MatchCommand::Confirm {
                actor: passenger(),
                ride_id: ride(),
            },
            MatchCommand::Reject { actor: passenger() },
            MatchCommand::Cancel { actor: passenger() },
            MatchCommand::Timeout,
        ];
        for command in commands {
            let e = given(events.clone())
                .when(command.clone(), 1000)
                .then_error(ErrorCode::InvalidTransition);
            assert!(e.message.contains(status), "{command:?} in {status}: {e}");
        }
    }
}

#[test]
fn command_names_are_the_wire_frames() {
    assert_eq!(Match::command_name(&request()), "finder_update");
    assert_eq!(
        Match::command_name(&MatchCommand::Cancel { actor: passenger() }),
        "finder_update"
    );
    assert_eq!(Match::command_name(&propose(&[])), "propose");
    for command in [
        MatchCommand::Accept { actor: driver(D1) },
        MatchCommand::Decline { actor: driver(D1) },
        MatchCommand::Confirm {
            actor: passenger(),
            ride_id: ride(),
        },
        MatchCommand::Reject { actor: passenger() },
    ] {
        assert_eq!(Match::command_name(&command), "match_confirm");
    }
    assert_eq!(Match::command_name(&MatchCommand::Timeout), "timeout");
    assert_eq!(Match::TYPE, "match");
}

#[test]
fn statuses_serialize_as_their_wire_names() {
    for status in [
        MatchStatus::Searching,
        MatchStatus::Proposed,
        MatchStatus::DriverAccepted,
        MatchStatus::Confirmed,
        MatchStatus::Cancelled,
        MatchStatus::Expired,
        MatchStatus::Failed,
    ] {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        assert_eq!(status.to_string(), status.as_str());
    }
    assert_eq!(MatchStatus::DriverAccepted.as_str(), "DRIVER_ACCEPTED");
}

#[test]
fn a_match_nobody_requested_does_not_exist() {
    let state = Match::default();
    assert!(!state.exists());
    assert!(!state.is_open());
    assert_eq!(state.match_status(), None);
    assert_eq!(state.round(), 0);
    assert!(state.candidates().is_empty());
    assert!(!state.may_propose(D1));
}

#[test]
fn accessors_describe_the_request() {
    let state = given(proposed_to(&[cand(D1, 1.0)])).state;
    assert!(state.exists());
    assert_eq!(state.match_id(), Some(mid()));
    assert_eq!(state.passenger_id(), Some(P));
    assert_eq!(state.pickup(), Some(pickup()));
    assert_eq!(state.destination(), Some(destination()));
    assert_eq!(state.requested_at(), Some(t(0)));
    assert_eq!(state.match_status(), Some(MatchStatus::Proposed));
    assert!(!state.may_propose(D1), "already proposed");
    assert!(
        !state.may_propose(P),
        "the passenger is no driver of their own match"
    );
    assert!(state.may_propose(D2));
}

#[test]
fn events_serialize_adjacently_tagged_with_their_event_type() {
    let all = [
        requested(),
        proposed(1, &[cand(D1, 1.5)], 1),
        accepted(cand(D1, 1.5), &[D2]),
        MatchEvent::DriverDeclined { driver_id: D1 },
        MatchEvent::DriverRejected { driver_id: D1 },
        MatchEvent::RoundTimedOut {
            round: 1,
            withdrawn_from: vec![D1],
        },
        round_started(2, 10.0, 60),
        confirmed().pop().unwrap(),
        cancelled().pop().unwrap(),
        expired().pop().unwrap(),
        failed().pop().unwrap(),
    ];
    for event in all {
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event_type"], event.event_type());
        assert!(json["payload"].is_object());
        let back: MatchEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, event);
    }
    let json = serde_json::to_value(requested()).unwrap();
    assert_eq!(json["payload"]["requested_at"], "2025-06-15T15:06:40Z");
    assert_eq!(
        json["payload"]["pickup"],
        serde_json::json!({"lat": -6.2, "lon": 106.8})
    );
    let json = serde_json::to_value(proposed(1, &[cand(D1, 1.5)], 1)).unwrap();
    assert_eq!(
        json["payload"]["candidates"][0],
        serde_json::json!({"driver_id": D1.to_string(), "distance_km": 1.5, "eta_seconds": 180})
    );
}
