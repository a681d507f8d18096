//! The stable error codes of SPEC.md §3 and the domain's error type.
//!
//! Codes are part of the public contract (WebSocket acks, NATS replies, HTTP bodies):
//! they are serialized in snake_case and never renamed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable, machine-readable reason for refusing a command. Checked in the order of
/// the variants below (SPEC.md §3), with one documented exception (`AlreadyTaken`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or envelope itself could not be read.
    InvalidPayload,
    /// The input was read but a field is missing, mistyped or out of range.
    ValidationFailed,
    /// A frame type nobody knows.
    UnknownType,
    /// No such match or ride.
    NotFound,
    /// The actor is not the right participant.
    Forbidden,
    /// The aggregate's status does not allow the command.
    InvalidTransition,
    /// The passenger or driver is already in an open match or ride.
    AlreadyActive,
    /// `ride_start` while the driver is more than 100 m from the passenger.
    TooFar,
    /// A point outside the service area.
    OutsideServiceArea,
    /// Another driver accepted the match first.
    AlreadyTaken,
    /// `payment_process` with an amount other than the fare to pay.
    AmountMismatch,
    /// The payment provider definitely refused the charge.
    PaymentFailed,
    /// The vehicle plate belongs to another driver.
    PlateTaken,
    /// Too many requests.
    RateLimited,
    /// Concurrent writers kept winning after the bounded retries.
    Conflict,
    /// No valid token: a NATS command without `Authorization: Bearer <jwt>`, or with
    /// one that is invalid or expired (the HTTP edge answers 401 with the same code).
    Unauthorized,
    /// Something broke on our side; details are logged, never sent.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InvalidTransition => "invalid_transition",
            ErrorCode::AlreadyActive => "already_active",
            ErrorCode::TooFar => "too_far",
            ErrorCode::OutsideServiceArea => "outside_service_area",
            ErrorCode::AlreadyTaken => "already_taken",
            ErrorCode::AmountMismatch => "amount_mismatch",
            ErrorCode::PaymentFailed => "payment_failed",
            ErrorCode::PlateTaken => "plate_taken",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused command: a stable code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{code}: {message}")]
pub struct DomainError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for people. Never contains secrets.
    pub message: String,
}

impl DomainError {
    /// A refusal with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// `validation_failed` with a message.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
    }

    /// `forbidden` with a message.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// `not_found` with a message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// `invalid_transition`, naming the current status and the command (SPEC.md §3).
    pub fn invalid_transition(status: &str, command: &str) -> Self {
        Self::new(
            ErrorCode::InvalidTransition,
            format!("{command} is not allowed while the status is {status}"),
        )
    }
}
