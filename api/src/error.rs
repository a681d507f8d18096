//! The edge's one error type, turned into a response in one place.
//!
//! Every handler returns `Result<_, ApiError>`. The body is always
//! `{"error": {"code", "message", "details"?}}`; the status follows the code
//! (validation 422, unauthorized 401, forbidden 403, not found 404, conflicts 409,
//! rate limited 429). Failures of the layers below (PostgreSQL, Redis, the command
//! pipeline, token signing) are `internal`: logged here with their cause, answered with
//! an opaque 500 so nothing of the inside leaks.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use domain::{DomainError, ErrorCode};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refusal with one of the contract's codes (SPEC.md §3).
    #[error("{0}")]
    Domain(#[from] DomainError),
    /// A missing, malformed, expired or wrong credential (token or OTP).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The request body is not JSON at all (400 `invalid_payload`).
    #[error("invalid payload: {0}")]
    Payload(String),
    /// The request body or query could not be read into the expected fields.
    #[error("validation failed: {message}")]
    Input {
        /// For people.
        message: String,
        /// Where, when known.
        details: Option<Value>,
    },
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The command pipeline failed.
    #[error("pipeline: {0}")]
    Pipeline(#[from] commands::pipeline::PipelineError),
    /// A token could not be signed.
    #[error("token signing: {0}")]
    Signing(jsonwebtoken::errors::Error),
}

/// The error body's inner object.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: one of SPEC.md §3's, or `unauthorized`.
    pub code: String,
    /// For people.
    pub message: String,
    /// More about where the input was wrong, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// What went wrong.
    pub error: ErrorBody,
}

impl ApiError {
    /// A `validation_failed` refusal.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Domain(DomainError::validation(message))
    }

    /// A `forbidden` refusal.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::Domain(DomainError::forbidden(message))
    }

    /// A `not_found` refusal.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::Domain(DomainError::not_found(message))
    }

    /// A `rate_limited` refusal.
    pub fn rate_limited(message: impl Into<String>) -> Self {
        Self::Domain(DomainError::new(ErrorCode::RateLimited, message))
    }

    /// The status, code, message and details this error is answered with.
    pub fn parts(&self) -> (StatusCode, String, String, Option<Value>) {
        match self {
            ApiError::Domain(e) => (
                status_of(e.code),
                e.code.as_str().to_owned(),
                e.message.clone(),
                None,
            ),
            ApiError::Payload(message) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidPayload.as_str().into(),
                message.clone(),
                None,
            ),
            ApiError::Unauthorized(message) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized.as_str().into(),
                message.clone(),
                None,
            ),
            ApiError::Input { message, details } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::ValidationFailed.as_str().into(),
                message.clone(),
                details.clone(),
            ),
            ApiError::Database(_) | ApiError::Redis(_) | ApiError::Pipeline(_) | ApiError::Signing(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal.as_str().into(),
                "internal error".into(),
                None,
            ),
        }
    }
}

/// The HTTP status of a contract code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidPayload | ErrorCode::ValidationFailed | ErrorCode::UnknownType => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::TooFar
        | ErrorCode::OutsideServiceArea
        | ErrorCode::AmountMismatch
        | ErrorCode::PaymentFailed => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::InvalidTransition
        | ErrorCode::AlreadyActive
        | ErrorCode::AlreadyTaken
        | ErrorCode::PlateTaken
        | ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details) = self.parts();
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            // The cause is logged, never sent.
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorResponse {
            error: ErrorBody {
                code,
                message,
                details,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            // Valid JSON without the expected fields: the input is wrong.
            JsonRejection::JsonDataError(e) => ApiError::Input {
                message: e.body_text(),
                details: None,
            },
            // Not JSON, not declared as JSON, or unreadable: not a payload at all.
            other => ApiError::Payload(other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Input {
            message: rejection.body_text(),
            details: None,
        }
    }
}

/// `axum::Json` whose rejection is an [`ApiError`] (so a bad body is
/// `validation_failed` in our shape, not axum's plain text).
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_fitting_statuses() {
        let cases = [
            (ErrorCode::ValidationFailed, 422),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::PlateTaken, 409),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in cases {
            assert_eq!(status_of(code).as_u16(), status, "{code}");
        }
    }

    #[test]
    fn internal_errors_are_opaque() {
        let (status, code, message, _) = ApiError::Database(sqlx::Error::PoolTimedOut).parts();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(code, "internal");
        assert!(!message.contains("pool"), "{message}");
    }
}
