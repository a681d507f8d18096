//! # NebengJek commands: the write side
//!
//! Takes a command (from the WebSocket edge, from NATS, or from the system itself),
//! loads the aggregate, decides with the pure `domain`, appends the events to the
//! PostgreSQL event store with optimistic concurrency, and answers.
//!
//! ## Layout
//! - [`store`]: the event store. One writer task per process batches appends into one
//!   transaction; command idempotency, reservations and deadlines commit with the
//!   events. Read `docs/adr/0001-event-store.md` first.
//! - [`pipeline`]: the generic load → decide → append → retry loop with an in-memory
//!   aggregate cache kept correct by the version check.
//! - [`ingress`]: parsing client commands (WebSocket `type` + `data`, NATS subject +
//!   envelope) into typed commands: `validation_failed` is decided here.
//! - [`bus`]: routing a parsed command to the right aggregate, payments included.
//! - [`nats`]: request/reply ingress in a queue group; [`token`] checks the user's
//!   token each NATS command carries (the actor is the token's, never the body's).
//! - [`process`]: the process manager (confirmed match → ride) and the deadline
//!   scheduler (match round timeouts).
//! - [`ports`]: positions and the payment provider, with in-memory adapters;
//!   [`redis_positions`]: the Redis adapter of the positions port.
//! - [`matcher`]: proposes waiting matches to the nearest available drivers, from an
//!   in-process [`nearest`] grid fed by the `LOCATION` stream and the event feed.
//! - [`ack`], [`clock`]: the answer shape; injected time and ids.
//!
//! ## Guarantees (SPEC.md §5)
//! 1. No lost update — `store` refuses a stale expected version under the store lock;
//!    `pipeline` catches up and decides again, at most 5 times, then `conflict`.
//! 2. Idempotent commands — the command log is read under the same lock and written in
//!    the same transaction as the events.
//! 3. Gap-free feed — positions are assigned under the lock, so they commit in order.
//! 6. Auditable — every event carries a hash chained to its predecessor; the chain
//!    head is kept in `streams`.

pub mod ack;
pub mod bus;
pub mod clock;
pub mod ingress;
pub mod matcher;
pub mod nats;
pub mod nearest;
pub mod pipeline;
pub mod ports;
pub mod process;
pub mod rate;
pub mod redis_positions;
pub mod store;
pub mod token;

pub use ack::Ack;
pub use bus::CommandBus;
pub use pipeline::{Envelope, Handler, Outcome};
pub use store::EventStore;
