//! # NebengJek projections: the read side
//!
//! Turns the ordered, gap-free event feed (`migrations::read_feed`) into the PostgreSQL
//! read models analysts query directly: `rides`, `billing_ledger`, `payments` and
//! `matches` (schema in `migrations/sql/0002_read_models.sql`, every column documented
//! in `docs/read-models.md`).
//!
//! ## Layout
//! - [`runtime`]: the [`Projector`] trait and what drives one: [`run_batch`] (one
//!   transaction: lock the checkpoint, read, apply, move the checkpoint, commit),
//!   [`run`] (the long-running loop woken by `LISTEN nebengjek_events`, reporting lag),
//!   [`rebuild()`] (from position 0 into shadow tables, switched in: see [`mod@rebuild`]) and the
//!   [`Fault`] hook tests use to crash a batch at a chosen step.
//! - [`audit_log`]: the Merkle audit log over every event, its signed tree heads on
//!   JetStream `AUDIT` (a singleton signer), proofs read from the stored tree.
//! - [`relay`]: the outbox relay, the feed onto JetStream `EVENTS` in order, each
//!   event once (a singleton per stream, resuming from the stream's own end once it
//!   has checked that end is the store's event); [`health`] records a component that
//!   stopped on purpose, for `/readyz`.
//! - [`rows`]: the rides read models as Rust rows — folded from events in memory,
//!   read from the tables, written by `COPY` — for bulk rebuilds and audits.
//! - [`read_models`]: the projectors themselves, [`RidesProjector`] (rides, the
//!   billing ledger and payments) and [`MatchesProjector`].
//! - [`geo`]: the Redis `drivers:available` GEO set, its exactly-once feed projection
//!   (data and checkpoint in one Lua script) and the analysts' `nearby` query.
//! - [`location`]: the ping publisher (the WebSocket edge calls it), the durable
//!   batching consumer of the JetStream `LOCATION` stream, and [`location::run`], the
//!   one task that owns every write to the geo index.
//!
//! ## Guarantees (SPEC.md §5)
//! - **4. Exactly-once read models.** (For Redis: the geo index writes each feed batch
//!   and its checkpoint in one script, see [`geo`].) A projector's writes and its checkpoint commit
//!   in the same PostgreSQL transaction, and the checkpoint row is locked
//!   (`SELECT ... FOR UPDATE`) for the length of that transaction, so two workers or
//!   two processes never apply the same events, and a crash at any step either commits
//!   both or neither. Writes are idempotent besides (ledger rows keyed by their derived
//!   `entry_id`, updates guarded by the aggregate's sequence), as a second line of
//!   defence.
//! - **5. Rebuildable.** Read models hold nothing but what the events say: every time
//!   stored is an event's time, never the projector's clock, so [`rebuild`] from
//!   position 0 gives the live tables row for row. Readers see the old rows until the
//!   rebuild commits.
//! - **6. Auditable (support).** `rides.last_sequence` / `rides.last_hash` record the
//!   chain head each ride had when it was projected, for auditors to compare with the
//!   store.
//!
//! `projections` never depends on `commands`: they meet in the `domain` event types and
//! the schema in `migrations`.

pub mod audit_log;
pub mod compare;
pub mod copy_text;
pub mod geo;
pub mod health;
pub mod location;
pub mod read_models;
pub mod rebuild;
pub mod relay;
pub mod rows;
pub mod runtime;

pub use read_models::{MatchesProjector, RidesProjector};
pub use runtime::{
    rebuild, run, run_batch, run_batch_with_fault, run_supervised, Fault, ProjectionError, Projector,
};
