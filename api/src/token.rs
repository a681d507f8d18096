//! Access tokens: JWT HS256 with the claims `sub`, `role`, `exp`, `iat`, `iss =
//! "nebengjek"`, valid 24 hours, and the extractor that checks them.
//!
//! Signing lives here; checking is `commands::token`, shared with the NATS command
//! ingress so that both accept exactly the same tokens.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, TimeZone, Utc};
use commands::clock::Clock;
use commands::token::TokenVerifier;
pub use commands::token::{Claims, TokenError, ISSUER};
use domain::{Actor, Role, UserId};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

use crate::error::ApiError;
use crate::AppState;

/// Signs and checks tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    verifier: TokenVerifier,
    ttl: Duration,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// A signed token and when it expires.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The JWT.
    pub token: String,
    /// Its `exp`.
    pub expires_at: DateTime<Utc>,
}

impl Tokens {
    /// Tokens signed with `secret`, valid for `ttl`, timed by `clock`.
    pub fn new(secret: &[u8], ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            verifier: TokenVerifier::new(secret, clock.clone()),
            ttl,
            clock,
        }
    }

    /// A token for `user` in `role`.
    pub fn issue(&self, user: UserId, role: Role) -> Result<Issued, ApiError> {
        let now = self.clock.now();
        let ttl = chrono::TimeDelta::from_std(self.ttl).unwrap_or(chrono::TimeDelta::hours(24));
        let expires_at = now + ttl;
        let claims = Claims {
            sub: user.as_uuid(),
            role,
            exp: expires_at.timestamp(),
            iat: now.timestamp(),
            iss: ISSUER.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::Signing)?;
        let expires_at = Utc.timestamp_opt(claims.exp, 0).single().unwrap_or(expires_at);
        Ok(Issued { token, expires_at })
    }

    /// The actor a token stands for.
    pub fn verify(&self, token: &str) -> Result<Actor, TokenError> {
        self.verifier.verify(token)
    }

    /// The checking half, for the NATS ingress.
    pub fn verifier(&self) -> &TokenVerifier {
        &self.verifier
    }
}

/// The caller, from `Authorization: Bearer <jwt>`. A missing, malformed or expired
/// token is 401 `unauthorized`.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Actor);

/// The bearer token of a request's headers, if any.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    commands::token::bearer(value)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        state
            .tokens()
            .verify(token)
            .map(Caller)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))
    }
}

/// The caller, who must be an analyst (403 `forbidden` otherwise).
#[derive(Debug, Clone, Copy)]
pub struct Analyst(pub Actor);

impl FromRequestParts<AppState> for Analyst {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Caller(actor) = Caller::from_request_parts(parts, state).await?;
        if actor.role == Role::Analyst {
            Ok(Analyst(actor))
        } else {
            Err(ApiError::forbidden("analysts only"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commands::clock::ManualClock;
    use uuid::Uuid;

    fn tokens(clock: Arc<ManualClock>) -> Tokens {
        Tokens::new(b"test-secret", Duration::from_secs(24 * 3600), clock)
    }

    #[test]
    fn a_token_round_trips_until_it_expires() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let t = tokens(clock.clone());
        let user = UserId::from_uuid(Uuid::now_v7());
        let issued = t.issue(user, Role::Driver).unwrap();
        assert_eq!(t.verify(&issued.token).unwrap(), Actor::new(user, Role::Driver));
        clock.advance(chrono::TimeDelta::hours(24));
        assert!(matches!(t.verify(&issued.token), Err(TokenError::Expired)));
    }

    #[test]
    fn another_secret_or_garbage_is_invalid() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let issued = tokens(clock.clone())
            .issue(UserId::from_uuid(Uuid::now_v7()), Role::Passenger)
            .unwrap();
        let other = Tokens::new(b"other", Duration::from_secs(60), clock);
        assert!(matches!(other.verify(&issued.token), Err(TokenError::Invalid(_))));
        assert!(matches!(other.verify("not.a.token"), Err(TokenError::Invalid(_))));
    }
}
