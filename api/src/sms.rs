//! The SMS port that delivers one-time passwords, and the development sender.

use async_trait::async_trait;
use domain::msisdn::Msisdn;

/// Why a message could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("sms delivery failed: {0}")]
pub struct SmsError(pub String);

/// Delivers a login code to a phone.
#[async_trait]
pub trait SmsSender: Send + Sync + std::fmt::Debug {
    /// Sends `code` to `to`.
    async fn send_otp(&self, to: &Msisdn, code: &str) -> Result<(), SmsError>;
}

/// The development sender: it logs the code. This is the one place a code is logged,
/// by design; a production deployment plugs a real gateway into [`SmsSender`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggingSms;

#[async_trait]
impl SmsSender for LoggingSms {
    async fn send_otp(&self, to: &Msisdn, code: &str) -> Result<(), SmsError> {
        tracing::info!(msisdn = %to, otp = code, "development SMS sender: login code");
        Ok(())
    }
}
