//! # NebengJek domain
//!
//! The pure heart of the system: value types, the **Match** and **Ride** aggregates and
//! the fare policy of SPEC.md §3. Nothing here does I/O, spawns, reads a clock or makes
//! up an id: the time comes in through [`Context`], ids through the commands.
//!
//! ## Layout
//! - [`ids`], [`money`], [`geo`], [`msisdn`], [`vehicle`]: value types, parsed once
//!   (a value that exists is valid).
//! - [`error`]: the stable error codes of the contract.
//! - [`aggregate`]: the `decide` / `evolve` shape shared by every aggregate.
//! - [`ride`] and [`billing`]: the ride lifecycle and its exact integer billing.
//! - [`matching`]: finding a driver for a passenger.
//! - [`location`]: drivers' pings and the shared names (stream subject, Redis keys).
//! - [`chain`]: the tamper-evident hash chain over stored events; [`jcs`]: RFC 8785
//!   canonical JSON, which its version 2 hashes.
//! - [`merkle`]: the audit log over every event (RFC 9162 tree, proofs, signed heads).
//!
//! ## Invariants
//! - Money is whole rupiah in `i64`; distances that are billed are whole metres.
//! - `decide` holds every rule and `evolve` none, so re-folding the events of an
//!   accepted command sequence always gives the same state.
//! - A participant is in at most one open match or ride: stated by each event's
//!   [`aggregate::Reservation`]s and enforced by the event store atomically with the
//!   append.

pub mod actor;
pub mod aggregate;
pub mod billing;
pub mod chain;
pub mod error;
pub mod geo;
pub mod ids;
pub mod jcs;
pub mod location;
pub mod matching;
pub mod merkle;
pub mod money;
pub mod msisdn;
pub mod policy;
pub mod ride;
pub mod vehicle;

pub use actor::{Actor, Role};
pub use aggregate::{Aggregate, Context, DomainEvent, Reservation};
pub use error::{DomainError, ErrorCode};
pub use geo::{GeoPoint, ServiceArea};
pub use ids::{EntryId, MatchId, PaymentId, RideId, UserId};
pub use money::Rupiah;
pub use policy::Policy;
