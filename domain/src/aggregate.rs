//! The shape every aggregate has: `decide` holds all the rules, `evolve` none.
//!
//! This mirrors cqrs-es's `Aggregate` (`handle` / `apply`) without its async runtime, so
//! the domain stays pure; `commands` adapts it to the event store, and the benchmark
//! adapts it to stock cqrs-es.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::error::DomainError;
use crate::ids::UserId;
use crate::policy::Policy;

/// What a decision may look at besides the state and the command: the time and the
/// business parameters. Ids are carried by the commands that need them.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    /// The server's clock when the command was received.
    pub now: DateTime<Utc>,
    /// The business parameters.
    pub policy: &'a Policy,
}

/// A participant's occupation that an event starts, moves or ends.
///
/// A passenger or driver is *in* at most one open match or ride at a time (SPEC.md §3,
/// Match rule 6). The invariant crosses aggregates, so the domain states it as data and
/// the event store enforces it in the same transaction as the append: a `Claim` on a
/// user already held by another aggregate refuses the whole command with
/// `already_active`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// The user is now in the emitting aggregate.
    Claim(UserId),
    /// The user leaves the emitting aggregate (no effect if another holds them).
    Release(UserId),
    /// The user moves from the emitting aggregate to another one (a match's
    /// participants move to the ride it creates).
    Transfer {
        /// Who moves.
        user: UserId,
        /// `aggregate_type` of the new holder.
        to_type: &'static str,
        /// Id of the new holder.
        to_id: Uuid,
    },
}

/// A domain event: serialized with serde as `{"event_type": ..., "payload": {...}}`
/// (adjacently tagged, snake_case), stored as `event_type`, `event_version`, `payload`.
pub trait DomainEvent:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The stored, snake_case name (`started`, `trip_point_recorded`, ...). With the
    /// aggregate type and the version it forms the versioned name `ride.started.v1`.
    fn event_type(&self) -> &'static str;

    /// The schema version of this event's payload.
    fn event_version(&self) -> u16 {
        1
    }

    /// Participant occupations this event starts, moves or ends.
    fn reservations(&self) -> Vec<Reservation> {
        Vec::new()
    }
}

/// An event-sourced aggregate.
pub trait Aggregate: Default + Clone + std::fmt::Debug + Send + Sync + 'static {
    /// The stored `aggregate_type` (`ride`, `match`).
    const TYPE: &'static str;

    /// What may be asked of it.
    type Command: std::fmt::Debug + Send + Sync;

    /// What it records.
    type Event: DomainEvent;

    /// Every rule: either the events the command causes, or why it is refused. Must not
    /// depend on anything but `self`, the command and `ctx`.
    fn decide(&self, command: &Self::Command, ctx: &Context<'_>) -> Result<Vec<Self::Event>, DomainError>;

    /// No rules: folds one event into the state. Never fails; an event that does not
    /// fit the state is a bug upstream and leaves the state as it is.
    fn evolve(&mut self, event: &Self::Event);

    /// Whether any event has been applied (an aggregate with none does not exist, so
    /// commands other than its creation get `not_found`).
    fn exists(&self) -> bool;

    /// The current status as it appears in acks (`PENDING`, `SEARCHING`, ...).
    fn status(&self) -> &'static str;

    /// The name of a command as it appears in error messages (`ride_start`, ...).
    fn command_name(command: &Self::Command) -> &'static str;

    /// When the system must next act on its own (a match round's timeout), if ever.
    /// The event store keeps it beside the events so it survives a restart.
    fn deadline(&self) -> Option<DateTime<Utc>> {
        None
    }
}

/// Folds events into a fresh state.
pub fn fold<A: Aggregate>(events: &[A::Event]) -> A {
    let mut state = A::default();
    for event in events {
        state.evolve(event);
    }
    state
}
