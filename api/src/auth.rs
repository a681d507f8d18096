//! `POST /v1/auth/otp`, `POST /v1/auth/token`, `GET /v1/me`, `POST /v1/drivers`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use domain::msisdn::Msisdn;
use domain::vehicle::{Plate, VehicleType};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiJson, ErrorResponse};
use crate::otp::Verdict;
use crate::token::Caller;
use crate::users::{self, RegisterError, User, Vehicle};
use crate::AppState;

/// `POST /v1/auth/otp` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct OtpRequest {
    /// A Telkomsel number in any usual form (`0812-3456-789`, `+62812…`).
    pub msisdn: String,
}

/// `POST /v1/auth/otp` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct OtpSent {
    /// The normalised number the code was sent to.
    pub msisdn: String,
    /// When the code expires.
    pub expires_at: DateTime<Utc>,
    /// The code itself, only with `AUTH_DEV_ECHO_OTP=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_otp: Option<String>,
}

/// Sends a login code (at most 3 per number per hour).
#[utoipa::path(post, path = "/v1/auth/otp", tag = "auth", request_body = OtpRequest,
    responses((status = 202, body = OtpSent), (status = 400, body = ErrorResponse), (status = 422, body = ErrorResponse), (status = 429, body = ErrorResponse)))]
pub async fn request_otp(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<OtpRequest>,
) -> Result<(StatusCode, Json<OtpSent>), ApiError> {
    let msisdn = Msisdn::parse(&body.msisdn)?;
    let Some(code) = state.otp().issue(&msisdn).await? else {
        return Err(ApiError::rate_limited(
            "too many codes requested for this number; try again later",
        ));
    };
    if let Err(error) = state.sms().send_otp(&msisdn, &code).await {
        tracing::error!(%error, "could not deliver a login code");
        return Err(ApiError::Domain(domain::DomainError::new(
            domain::ErrorCode::Internal,
            "the code could not be delivered",
        )));
    }
    let ttl = chrono::TimeDelta::from_std(state.otp().ttl()).unwrap_or(chrono::TimeDelta::minutes(5));
    let expires_at = state.clock().now() + ttl;
    Ok((
        StatusCode::ACCEPTED,
        Json(OtpSent {
            msisdn: msisdn.to_string(),
            expires_at,
            dev_otp: state.config().dev_echo_otp.then_some(code),
        }),
    ))
}

/// `POST /v1/auth/token` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// The number the code was sent to.
    pub msisdn: String,
    /// The 6-digit code.
    pub otp: String,
}

/// A fresh token and who it is for.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT (HS256) for `Authorization: Bearer`.
    pub token: String,
    /// The user.
    pub user: User,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

/// Exchanges a code for a token; the first login creates a passenger.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 422, body = ErrorResponse), (status = 429, body = ErrorResponse)))]
pub async fn issue_token(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let msisdn = Msisdn::parse(&body.msisdn)?;
    let otp = body.otp.trim();
    if otp.len() != 6 || !otp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::validation("otp must be 6 digits"));
    }
    match state.otp().verify(&msisdn, otp).await? {
        Verdict::Valid => {}
        Verdict::Wrong => return Err(ApiError::Unauthorized("wrong code".into())),
        Verdict::Voided => {
            return Err(ApiError::rate_limited(
                "too many wrong codes; the code is void, request a new one",
            ))
        }
        Verdict::Missing => {
            return Err(ApiError::Unauthorized(
                "no valid code for this number; request a new one".into(),
            ))
        }
    }
    let user = users::login(state.pool(), &msisdn, state.clock().now()).await?;
    let issued = state.tokens().issue(user.user_id(), user.role())?;
    tracing::info!(user_id = %user.id, role = %user.role, "logged in");
    Ok(Json(TokenResponse {
        token: issued.token,
        user,
        expires_at: issued.expires_at,
    }))
}

/// `GET /v1/me` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The user.
    #[serde(flatten)]
    pub user: User,
    /// The vehicle, for drivers.
    pub driver: Option<Vehicle>,
}

/// The caller.
#[utoipa::path(get, path = "/v1/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorResponse)))]
pub async fn me(State(state): State<AppState>, Caller(actor): Caller) -> Result<Json<Me>, ApiError> {
    let user = users::find(state.pool(), actor.user_id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let driver = users::vehicle(state.pool(), actor.user_id).await?;
    Ok(Json(Me { user, driver }))
}

/// `POST /v1/drivers` body.
#[derive(Debug, Deserialize, ToSchema)]
pub struct DriverRequest {
    /// `motorcycle`, `car` or `van`, any case.
    pub vehicle_type: String,
    /// An Indonesian plate (`b1234xyz`, `B 1234 XYZ`).
    pub vehicle_plate: String,
}

/// `POST /v1/drivers` answer: the caller as a driver, with a token for the new role.
#[derive(Debug, Serialize, ToSchema)]
pub struct DriverRegistered {
    /// A fresh token with role `driver`.
    pub token: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The user, now a driver.
    pub user: User,
    /// The vehicle.
    pub driver: Vehicle,
}

/// Makes the caller (a passenger) a driver, once.
#[utoipa::path(post, path = "/v1/drivers", tag = "users", security(("bearer" = [])), request_body = DriverRequest,
    responses((status = 201, body = DriverRegistered), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse),
        (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
pub async fn register_driver(
    State(state): State<AppState>,
    Caller(actor): Caller,
    ApiJson(body): ApiJson<DriverRequest>,
) -> Result<(StatusCode, Json<DriverRegistered>), ApiError> {
    let vehicle_type = VehicleType::parse(&body.vehicle_type)?;
    let plate = Plate::parse(&body.vehicle_plate)?;
    let (user, driver) = match users::register_driver(
        state.pool(),
        actor.user_id,
        vehicle_type,
        &plate,
        state.clock().now(),
    )
    .await
    {
        Ok(done) => done,
        Err(RegisterError::Refused(refusal)) => return Err(refusal.into()),
        Err(RegisterError::Database(e)) => return Err(e.into()),
    };
    let issued = state.tokens().issue(user.user_id(), user.role())?;
    tracing::info!(user_id = %user.id, "registered as a driver");
    Ok((
        StatusCode::CREATED,
        Json(DriverRegistered {
            token: issued.token,
            expires_at: issued.expires_at,
            user,
            driver,
        }),
    ))
}
