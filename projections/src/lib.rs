//! # NebengJek projections: the read side
//!
//! Turns the event feed (`migrations::read_feed`) and the drivers' pings into what users
//! read. Today: the Redis geo index of available drivers and the location ingest that
//! feeds it. The PostgreSQL read models and the outbox relay are the lead's (issue 3).
//!
//! ## Layout
//! - [`geo`]: the `drivers:available` GEO set, its exactly-once feed projection (data
//!   and checkpoint in one script) and the analysts' `nearby` query.
//! - [`location`]: the ping publisher (the WebSocket edge calls it), the durable
//!   batching consumer of the `LOCATION` stream, and [`location::run`], the one task
//!   that owns every write to the index.
//!
//! `projections` never depends on `commands`; they meet in `domain` types
//! (`domain::location`: the ping, the subjects, the Redis key names).

pub mod geo;
pub mod location;
