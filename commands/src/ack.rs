//! The answer to every command, the same on the WebSocket and over NATS:
//! `{"ok": true, "result": {...}}` or `{"ok": false, "error": {"code", "message"}}`.

use domain::{DomainError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A command's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// Whether the command was accepted.
    pub ok: bool,
    /// What it produced, when accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Why it was refused, when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<AckError>,
}

/// A refusal on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckError {
    /// The stable code.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
    /// With `rate_limited`: how long to wait before sending again, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl Ack {
    /// An accepted command.
    pub fn ok(result: Value) -> Self {
        Self {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    /// A refused command.
    pub fn refused(error: &DomainError) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(AckError {
                code: error.code,
                message: error.message.clone(),
                retry_after_ms: None,
            }),
        }
    }

    /// A refusal from a code and a message.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::refused(&DomainError::new(code, message))
    }

    /// `rate_limited`, with the time until the sender may try again.
    pub fn rate_limited(retry_after: std::time::Duration) -> Self {
        let retry_after_ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut ack = Self::error(
            ErrorCode::RateLimited,
            format!("too many commands; try again in {retry_after_ms} ms"),
        );
        if let Some(error) = ack.error.as_mut() {
            error.retry_after_ms = Some(retry_after_ms);
        }
        ack
    }

    /// The error code, if refused.
    pub fn code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|e| e.code)
    }

    /// As JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// From logged JSON; a malformed log row becomes `internal`.
    pub fn from_value(value: Value) -> Self {
        serde_json::from_value(value)
            .unwrap_or_else(|_| Self::error(ErrorCode::Internal, "unreadable logged answer"))
    }
}
