//! # The operations console
//!
//! A single-page console for analysts and operators at `/console`: OTP login, a live
//! map of drivers and open rides, the rides list with the analysts' filters and a
//! ride's detail (its trace on the map, fare, ledger, payment), charts of revenue and of
//! this process's metrics, and the audit status.
//!
//! ## Layout
//! - [`assets`]: the page, its script, its style and the service area's outline,
//!   embedded in the binary with `include_str!` (no CDN, no build step: plain ES
//!   modules in `api/console/`), served with a strict Content-Security-Policy.
//! - [`live`]: `GET /v1/console/live`, server-sent events with a snapshot of the online
//!   drivers (from the Redis geo projection) and the open rides every second.
//! - [`views`]: the JSON the console needs beyond the analysts' endpoints of
//!   [`crate::reads`]: a ride's GPS trace from its events, and the audit status (the
//!   last `replay-tools verify` run, the latest signed tree head).
//!
//! ## Invariants
//! - Every `/v1/console/*` endpoint takes the [`crate::token::Analyst`] extractor: a
//!   passenger's or driver's token is 403, none is 401. The token travels in the
//!   `Authorization` header only (the page reads the event stream with `fetch`, not
//!   `EventSource`), so it never appears in a URL or a log.
//! - The assets are public and hold nothing secret: they are the same bytes for every
//!   deployment, and the data they show comes only from the analyst-only endpoints.

pub mod assets;
pub mod live;
pub mod views;
