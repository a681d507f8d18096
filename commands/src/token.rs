//! Checking access tokens: JWT HS256 with the claims `sub`, `role`, `exp`, `iat`, `iss =
//! "nebengjek"`. The same check serves every ingress that acts for a user: the HTTP and
//! WebSocket edge (`api`, which also issues tokens) and the NATS command ingress
//! ([`crate::nats`]), so a NATS command carries the same token as the app's requests
//! and acts as its subject, never as a field of the body.
//!
//! Expiry is checked against the injected clock, not the library's wall clock, so tests
//! can make a token old without sleeping; the library still checks the signature, the
//! algorithm, the issuer and that every claim is present.

use std::sync::Arc;

use domain::{Actor, Role, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::Clock;

/// The issuer claim.
pub const ISSUER: &str = "nebengjek";

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// `passenger`, `driver` or `analyst`.
    pub role: Role,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Always `nebengjek`.
    pub iss: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a token of ours (signature, algorithm, issuer, claims).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its `exp`.
    #[error("the token has expired")]
    Expired,
    /// A role that no token may carry.
    #[error("the token's role is not allowed")]
    Role,
}

/// Checks tokens signed with one secret.
#[derive(Clone)]
pub struct TokenVerifier {
    decoding: DecodingKey,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TokenVerifier").finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// A verifier of tokens signed with `secret`, timed by `clock`.
    pub fn new(secret: &[u8], clock: Arc<dyn Clock>) -> Self {
        Self {
            decoding: DecodingKey::from_secret(secret),
            clock,
        }
    }

    /// The actor a token stands for.
    pub fn verify(&self, token: &str) -> Result<Actor, TokenError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if data.claims.exp <= self.clock.now().timestamp() {
            return Err(TokenError::Expired);
        }
        match data.claims.role {
            Role::Passenger | Role::Driver | Role::Analyst => {
                Ok(Actor::new(UserId::from_uuid(data.claims.sub), data.claims.role))
            }
            // `system` is the process itself; no token may speak for it.
            Role::System => Err(TokenError::Role),
        }
    }
}

/// The token of an `Authorization` header value `Bearer <jwt>` (the scheme in any
/// case), if it is one.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use chrono::Utc;
    use jsonwebtoken::{EncodingKey, Header};

    fn sign(secret: &[u8], claims: &Claims) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn claims(role: Role, exp_in: i64) -> Claims {
        let now = Utc::now().timestamp();
        Claims {
            sub: Uuid::now_v7(),
            role,
            exp: now + exp_in,
            iat: now,
            iss: ISSUER.into(),
        }
    }

    #[test]
    fn a_token_is_its_subject_and_role_until_it_expires() {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let verifier = TokenVerifier::new(b"secret", clock.clone());
        let c = claims(Role::Driver, 60);
        let token = sign(b"secret", &c);
        assert_eq!(
            verifier.verify(&token).unwrap(),
            Actor::new(UserId::from_uuid(c.sub), Role::Driver)
        );
        clock.advance(chrono::TimeDelta::seconds(61));
        assert!(matches!(verifier.verify(&token), Err(TokenError::Expired)));
    }

    #[test]
    fn another_secret_garbage_or_the_system_role_is_refused() {
        let verifier = TokenVerifier::new(b"secret", Arc::new(ManualClock::new(Utc::now())));
        let token = sign(b"other", &claims(Role::Passenger, 60));
        assert!(matches!(verifier.verify(&token), Err(TokenError::Invalid(_))));
        assert!(matches!(verifier.verify("a.b.c"), Err(TokenError::Invalid(_))));
        let system = sign(b"secret", &claims(Role::System, 60));
        assert!(matches!(verifier.verify(&system), Err(TokenError::Role)));
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
