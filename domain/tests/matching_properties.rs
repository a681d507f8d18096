//! Properties of the Match aggregate over arbitrary command sequences: only legal
//! transitions happen, re-folding the accepted events gives the same state, events
//! survive a serde round trip, and the users the match holds (its reservations) are
//! exactly its passenger while open plus the accepted driver while `DRIVER_ACCEPTED`.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use domain::aggregate::fold;
use domain::matching::{Candidate, FailureReason, Match, MatchCommand, MatchEvent, MatchStatus};
use domain::policy::MatchPolicy;
use domain::{
    Actor, Aggregate, Context, DomainEvent, ErrorCode, GeoPoint, MatchId, Policy, Reservation, RideId, Role,
    UserId,
};
use proptest::prelude::*;
use uuid::Uuid;

const fn user(n: u128) -> UserId {
    UserId::from_uuid(Uuid::from_u128(n))
}

const P: UserId = user(1);
const Q: UserId = user(2);
const DRIVERS: [UserId; 6] = [user(11), user(12), user(13), user(14), user(15), user(16)];

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000, 0).unwrap()
}

/// Who sends a user command: mostly the participants, sometimes someone else.
#[derive(Clone, Copy, Debug)]
enum Who {
    Passenger,
    OtherPassenger,
    Driver(usize),
    PassengerAsDriver,
    System,
}

impl Who {
    fn actor(self) -> Actor {
        match self {
            Who::Passenger => Actor::new(P, Role::Passenger),
            Who::OtherPassenger => Actor::new(Q, Role::Passenger),
            Who::Driver(i) => Actor::new(DRIVERS[i], Role::Driver),
            Who::PassengerAsDriver => Actor::new(P, Role::Driver),
            Who::System => Actor::SYSTEM,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Request { who: Who, points: u8 },
    Propose(Vec<(usize, f64)>),
    Accept(Who),
    Decline(Who),
    Confirm(Who, u128),
    Reject(Who),
    Cancel(Who),
    Timeout,
}

fn who() -> impl Strategy<Value = Who> {
    prop_oneof![
        3 => Just(Who::Passenger),
        1 => Just(Who::OtherPassenger),
        6 => (0..DRIVERS.len()).prop_map(Who::Driver),
        1 => Just(Who::PassengerAsDriver),
        1 => Just(Who::System),
    ]
}

fn driver_who() -> impl Strategy<Value = Who> {
    prop_oneof![8 => (0..DRIVERS.len()).prop_map(Who::Driver), 1 => who()]
}

fn distance() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => 0.0..25.0f64,
        1 => Just(-1.0),
        1 => Just(f64::NAN),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (who(), 0u8..4).prop_map(|(who, points)| Op::Request { who, points }),
        5 => prop::collection::vec((0..DRIVERS.len(), distance()), 0..4).prop_map(Op::Propose),
        4 => driver_who().prop_map(Op::Accept),
        3 => driver_who().prop_map(Op::Decline),
        2 => (who(), 0u128..3).prop_map(|(w, r)| Op::Confirm(w, r)),
        1 => who().prop_map(Op::Reject),
        1 => who().prop_map(Op::Cancel),
        4 => Just(Op::Timeout),
    ]
}

fn step() -> impl Strategy<Value = (u16, Op)> {
    // Time mostly advances a little, sometimes past a deadline.
    let advance = prop_oneof![3 => 0u16..10, 2 => 25u16..45];
    (advance, op())
}

fn policy() -> impl Strategy<Value = Policy> {
    (1u32..5, 1u32..4, 0u32..6).prop_map(|(max_rounds, max_drivers, extra)| Policy {
        matching: MatchPolicy {
            max_rounds,
            max_drivers_per_request: if extra == 0 { 5 } else { max_drivers },
            ..MatchPolicy::default()
        },
        ..Policy::default()
    })
}

fn command(op: &Op) -> MatchCommand {
    let jakarta = GeoPoint::new(-6.2, 106.8).unwrap();
    let bogor = GeoPoint::new(-6.6, 106.8).unwrap();
    let bangkok = GeoPoint::new(13.75, 100.5).unwrap();
    match op {
        Op::Request { who, points } => {
            let (pickup, destination) = match points {
                0 => (jakarta, jakarta),
                1 => (bangkok, bogor),
                _ => (jakarta, bogor),
            };
            MatchCommand::Request {
                match_id: MatchId::from_uuid(Uuid::from_u128(100)),
                actor: who.actor(),
                pickup,
                destination,
            }
        }
        Op::Propose(list) => MatchCommand::Propose {
            candidates: list
                .iter()
                .map(|&(i, distance_km)| Candidate {
                    driver_id: DRIVERS[i],
                    distance_km,
                    eta_seconds: 60,
                })
                .collect(),
        },
        Op::Accept(w) => MatchCommand::Accept { actor: w.actor() },
        Op::Decline(w) => MatchCommand::Decline { actor: w.actor() },
        Op::Confirm(w, r) => MatchCommand::Confirm {
            actor: w.actor(),
            ride_id: RideId::from_uuid(Uuid::from_u128(200 + r)),
        },
        Op::Reject(w) => MatchCommand::Reject { actor: w.actor() },
        Op::Cancel(w) => MatchCommand::Cancel { actor: w.actor() },
        Op::Timeout => MatchCommand::Timeout,
    }
}

/// The status changes each accepted command may make (`None`: not yet requested).
fn legal(command: &MatchCommand, from: Option<MatchStatus>, to: Option<MatchStatus>) -> bool {
    use MatchStatus::*;
    let (Some(from), Some(to)) = (from, to) else {
        return matches!(command, MatchCommand::Request { .. }) && from.is_none() && to == Some(Searching);
    };
    match command {
        MatchCommand::Request { .. } => false,
        MatchCommand::Propose { .. } => {
            matches!(
                (from, to),
                (Searching, Searching | Proposed) | (Proposed, Proposed)
            )
        }
        MatchCommand::Accept { .. } => (from, to) == (Proposed, DriverAccepted),
        MatchCommand::Decline { .. } => from == Proposed && matches!(to, Proposed | Searching | Failed),
        MatchCommand::Confirm { .. } => (from, to) == (DriverAccepted, Confirmed),
        MatchCommand::Reject { .. } => (from, to) == (DriverAccepted, Searching),
        MatchCommand::Cancel { .. } => from.is_open() && to == Cancelled,
        MatchCommand::Timeout => matches!(
            (from, to),
            (Searching | Proposed, Searching | Expired | Failed) | (DriverAccepted, Expired)
        ),
    }
}

/// What the state must satisfy whatever led to it.
fn check_invariants(state: &Match, policy: &Policy) -> Result<(), TestCaseError> {
    let Some(status) = state.match_status() else {
        prop_assert!(!state.exists() && state.candidates().is_empty());
        return Ok(());
    };
    let proposed: BTreeSet<UserId> = state.proposed_ever().collect();
    let excluded: BTreeSet<UserId> = state.excluded().collect();
    let candidates: Vec<UserId> = state.candidates().iter().map(|c| c.driver_id).collect();
    let unique: BTreeSet<UserId> = candidates.iter().copied().collect();

    prop_assert!(state.round() >= 1 && state.round() <= policy.matching.max_rounds.max(1));
    prop_assert_eq!(state.radius_km(), Some(policy.matching.radius_km(state.round())));
    prop_assert_eq!(unique.len(), candidates.len(), "duplicate candidates");
    prop_assert!(unique.is_subset(&proposed));
    prop_assert!(unique.is_disjoint(&excluded));
    prop_assert!(excluded.is_subset(&proposed));
    prop_assert!(
        !proposed.contains(&P) && !proposed.contains(&Q),
        "a passenger proposed as driver"
    );
    prop_assert!(candidates.len() <= policy.matching.max_drivers_per_request as usize);
    prop_assert_eq!(status == MatchStatus::Proposed, !candidates.is_empty());
    prop_assert!(state
        .candidates()
        .iter()
        .all(|c| c.distance_km.is_finite() && c.distance_km >= 0.0));
    prop_assert_eq!(
        state.accepted_driver().is_some(),
        matches!(status, MatchStatus::DriverAccepted | MatchStatus::Confirmed)
    );
    if let Some(driver) = state.accepted_driver() {
        prop_assert!(proposed.contains(&driver.driver_id) && !excluded.contains(&driver.driver_id));
    }
    prop_assert_eq!(state.deadline().is_some(), status.is_open());
    prop_assert_eq!(state.is_open(), status.is_open());
    prop_assert_eq!(state.ride_id().is_some(), status == MatchStatus::Confirmed);
    prop_assert_eq!(state.failure_reason().is_some(), status == MatchStatus::Failed);
    if state.failure_reason() == Some(FailureReason::NoDriver) {
        prop_assert!(proposed.is_empty());
    }
    prop_assert_eq!(state.status(), status.as_str());
    Ok(())
}

/// Who the match must hold: its passenger while open, and the accepted driver while
/// `DRIVER_ACCEPTED`; nobody once terminal.
fn expected_held(state: &Match) -> BTreeSet<UserId> {
    let mut held = BTreeSet::new();
    if state.is_open() {
        held.extend(state.passenger_id());
        if state.match_status() == Some(MatchStatus::DriverAccepted) {
            held.extend(state.accepted_driver().map(|d| d.driver_id));
        }
    }
    held
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_command_sequence_moves_only_by_legal_transitions_and_refolds_to_the_same_state(
        policy in policy(),
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut state = Match::default();
        let mut history: Vec<MatchEvent> = Vec::new();
        let mut held: BTreeSet<UserId> = BTreeSet::new();
        let mut now = t0();
        for (advance, op) in &steps {
            now += TimeDelta::seconds(i64::from(*advance));
            let command = command(op);
            let ctx = Context { now, policy: &policy };
            let before = state.match_status();
            match state.decide(&command, &ctx) {
                Ok(events) => {
                    for event in &events {
                        let json = serde_json::to_string(event).unwrap();
                        let back: MatchEvent = serde_json::from_str(&json).unwrap();
                        prop_assert_eq!(&back, event);
                        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
                        prop_assert_eq!(value["event_type"].as_str(), Some(event.event_type()));
                        for reservation in event.reservations() {
                            match reservation {
                                Reservation::Claim(u) => prop_assert!(held.insert(u), "double claim of {u}"),
                                Reservation::Release(u) => prop_assert!(held.remove(&u), "release of {u} not held"),
                                Reservation::Transfer { user, to_type, to_id } => {
                                    prop_assert!(held.remove(&user), "transfer of {user} not held");
                                    prop_assert_eq!(to_type, "ride");
                                    let MatchEvent::Confirmed { ride_id, .. } = event else {
                                        return Err(TestCaseError::fail(format!("transfer on {event:?}")));
                                    };
                                    prop_assert_eq!(RideId::from_uuid(to_id), *ride_id);
                                }
                            }
                        }
                        state.evolve(event);
                    }
                    let after = state.match_status();
                    if events.is_empty() {
                        prop_assert!(matches!(command, MatchCommand::Propose { .. }), "{command:?} accepted without events");
                    } else {
                        prop_assert!(legal(&command, before, after), "{command:?}: {before:?} -> {after:?}");
                    }
                    history.extend(events);
                }
                Err(e) => {
                    prop_assert_ne!(e.code, ErrorCode::Internal);
                    if !state.exists() && !matches!(command, MatchCommand::Request { .. }) {
                        prop_assert!(matches!(e.code, ErrorCode::NotFound | ErrorCode::ValidationFailed));
                    }
                }
            }
            check_invariants(&state, &policy)?;
            prop_assert_eq!(&held, &expected_held(&state));
            prop_assert_eq!(&fold::<Match>(&history), &state);
        }
    }
}

/// The sequences above must reach every status, or the property says little.
#[test]
fn the_generated_sequences_reach_every_status() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let mut seen = BTreeSet::new();
    let strategy = prop::collection::vec(step(), 1..60);
    for _ in 0..2000 {
        let steps = strategy.new_tree(&mut runner).unwrap().current();
        let policy = Policy::default();
        let mut state = Match::default();
        let mut now = t0();
        for (advance, op) in &steps {
            now += TimeDelta::seconds(i64::from(*advance));
            let ctx = Context { now, policy: &policy };
            if let Ok(events) = state.decide(&command(op), &ctx) {
                for event in &events {
                    state.evolve(event);
                }
            }
            seen.extend(state.match_status().map(|s| format!("{s:?}")));
            seen.extend(state.failure_reason().map(|r| format!("{r:?}")));
        }
    }
    let expected = [
        "Searching",
        "Proposed",
        "DriverAccepted",
        "Confirmed",
        "Cancelled",
        "Expired",
        "Failed",
        "NoDriver",
        "AllDeclined",
    ];
    for status in expected {
        assert!(seen.contains(status), "never reached {status}: {seen:?}");
    }
}
