//! # NebengJek projections: the read side
//!
//! Will turn the event feed (`migrations::read_feed`) into the read models analysts
//! query (`rides`, `billing_ledger`, `payments`, `matches`), the Redis geo index and the
//! outbox relay to NATS JetStream. Not built yet: see issue 3.
