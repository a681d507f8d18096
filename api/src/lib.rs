//! # NebengJek API: the edge
//!
//! Will hold the axum HTTP and WebSocket gateway (OTP login, JWT, pushes). Not built
//! yet: see issue 4. Commands already arrive over NATS (`commands::nats`).
