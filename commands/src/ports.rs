//! Ports to the world outside the event store: where people last were, and the
//! payment provider. Each has an in-memory adapter here; real ones live at the edge.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{GeoPoint, RideId, Rupiah, UserId};

/// Last known positions of drivers and passengers (for the 100 m start rule).
#[async_trait]
pub trait Positions: Send + Sync + std::fmt::Debug {
    /// Records a user's position.
    async fn record(&self, user: UserId, point: GeoPoint, at: DateTime<Utc>);
    /// The user's last known position.
    async fn last(&self, user: UserId) -> Option<GeoPoint>;
}

/// Positions kept in this process's memory.
#[derive(Debug, Default)]
pub struct InMemoryPositions(Mutex<HashMap<UserId, (GeoPoint, DateTime<Utc>)>>);

#[async_trait]
impl Positions for InMemoryPositions {
    async fn record(&self, user: UserId, point: GeoPoint, at: DateTime<Utc>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(user, (point, at));
    }

    async fn last(&self, user: UserId) -> Option<GeoPoint> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|(p, _)| *p)
    }
}

/// Why a charge did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    /// The provider said no for good (card declined, ...).
    #[error("declined: {0}")]
    Declined(String),
    /// Try again later (timeout, 5xx).
    #[error("transient: {0}")]
    Transient(String),
}

/// Charges a passenger. The ride id is the idempotency key: charging the same ride
/// twice never takes the money twice.
#[async_trait]
pub trait PaymentProvider: Send + Sync + std::fmt::Debug {
    /// Charges `amount` for `ride`; returns the provider's reference.
    async fn charge(&self, ride: RideId, amount: Rupiah) -> Result<String, ChargeError>;
}

/// The default provider: accepts every charge.
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptingProvider;

#[async_trait]
impl PaymentProvider for AcceptingProvider {
    async fn charge(&self, ride: RideId, _amount: Rupiah) -> Result<String, ChargeError> {
        Ok(format!("sim-{ride}"))
    }
}

/// A provider for tests: answers from a script, then accepts.
#[derive(Debug, Default)]
pub struct ScriptedProvider {
    script: Mutex<VecDeque<Result<String, ChargeError>>>,
    calls: Mutex<Vec<(RideId, Rupiah)>>,
}

impl ScriptedProvider {
    /// Queues the next answers.
    pub fn push(&self, answer: Result<String, ChargeError>) {
        self.script
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(answer);
    }

    /// Every charge asked for so far.
    pub fn calls(&self) -> Vec<(RideId, Rupiah)> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[async_trait]
impl PaymentProvider for ScriptedProvider {
    async fn charge(&self, ride: RideId, amount: Rupiah) -> Result<String, ChargeError> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((ride, amount));
        let next = self.script.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        next.unwrap_or_else(|| Ok(format!("scripted-{ride}")))
    }
}

/// Charges with bounded retries of transient errors (50, 100, 200 ms). A transient
/// error that outlasts the retries counts as a failure, which leaves the ride payable.
pub async fn charge_with_retry(
    provider: &dyn PaymentProvider,
    ride: RideId,
    amount: Rupiah,
) -> Result<String, ChargeError> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=4 {
        match provider.charge(ride, amount).await {
            Err(ChargeError::Transient(reason)) if attempt < 4 => {
                tracing::warn!(%ride, attempt, %reason, "payment provider failed transiently; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            other => return other,
        }
    }
    Err(ChargeError::Transient("provider unavailable".into()))
}
