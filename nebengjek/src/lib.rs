//! # nebengjek
//!
//! The system assembled: configuration (`config`), wiring (`startup`: one process, or
//! one role of it, started and stopped as a [`startup::System`]) and the demo. The
//! `nebengjek` binary is a thin command line over this library; tests start whole
//! systems through [`startup::start`].

pub mod chart;
pub mod config;
pub mod demo;
pub mod limits;
pub mod load;
pub mod metrics_setup;
pub mod startup;

use clap::ValueEnum;

/// A part of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Everything.
    All,
    /// The edge: HTTP, WebSocket `/ws` and its pushes.
    Api,
    /// The command ingress (NATS).
    Commands,
    /// The process manager, the deadline scheduler, the location consumer with the
    /// Redis geo projection, and the matcher.
    Matcher,
    /// The read-model projectors and the outbox relay to JetStream.
    Projections,
}
