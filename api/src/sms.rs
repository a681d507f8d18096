//! The SMS port that delivers one-time passwords, its HTTP webhook adapter, and the
//! development sender.
//!
//! Logs never carry a code (outside the development sender, whose job it is) nor a
//! whole phone number: numbers are masked ([`Msisdn::masked`]).

use std::time::Duration;

use async_trait::async_trait;
use domain::msisdn::Msisdn;
use serde::Serialize;

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

/// The development sender: it logs the code, so a developer can log in without a
/// phone. The binary uses it only with `APP_ENV=development`; anywhere else a real
/// gateway ([`WebhookSms`]) is required.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoggingSms;

#[async_trait]
impl SmsSender for LoggingSms {
    async fn send_otp(&self, to: &Msisdn, code: &str) -> Result<(), SmsError> {
        tracing::info!(msisdn = %to.masked(), otp = code, "development SMS sender: login code");
        Ok(())
    }
}

/// The webhook's settings.
#[derive(Debug, Clone, Copy)]
pub struct WebhookPolicy {
    /// The whole request's deadline, per attempt.
    pub timeout: Duration,
    /// Attempts after the first, on a timeout, a connection error, 408, 429 or 5xx.
    pub retries: u32,
    /// The wait before the first retry; doubled before each next one.
    pub backoff: Duration,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retries: 2,
            backoff: Duration::from_millis(200),
        }
    }
}

/// The body posted to the webhook.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    /// The number, `62...`.
    pub to: &'a str,
    /// The code alone, for gateways that render their own text.
    pub code: &'a str,
    /// The text to send.
    pub message: String,
}

/// A real SMS sender: posts `{to, code, message}` as JSON to `SMS_WEBHOOK_URL` (an SMS
/// gateway, or a small service in front of one), with a timeout and retries with
/// exponential backoff. Any 2xx is delivered; another 4xx is a definite refusal and
/// is not retried.
#[derive(Clone)]
pub struct WebhookSms {
    client: reqwest::Client,
    url: reqwest::Url,
    policy: WebhookPolicy,
}

impl std::fmt::Debug for WebhookSms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold the gateway's key: only its host.
        f.debug_struct("WebhookSms")
            .field("host", &self.url.host_str())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl WebhookSms {
    /// A sender posting to `url` (`http://` or `https://`).
    pub fn new(url: &str, policy: WebhookPolicy) -> Result<Self, SmsError> {
        let url = reqwest::Url::parse(url).map_err(|e| SmsError(format!("SMS_WEBHOOK_URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SmsError("SMS_WEBHOOK_URL must be http:// or https://".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(policy.timeout)
            .connect_timeout(policy.timeout)
            .build()
            .map_err(|e| SmsError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client, url, policy })
    }

    async fn attempt(&self, body: &WebhookBody<'_>) -> Result<(), (bool, String)> {
        match self.client.post(self.url.clone()).json(body).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => {
                let status = response.status();
                let retry = status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                Err((retry, format!("the webhook answered {status}")))
            }
            // Without the URL: it may carry the gateway's key.
            Err(error) => Err((true, error.without_url().to_string())),
        }
    }
}

#[async_trait]
impl SmsSender for WebhookSms {
    async fn send_otp(&self, to: &Msisdn, code: &str) -> Result<(), SmsError> {
        let body = WebhookBody {
            to: to.as_str(),
            code,
            message: format!("Your NebengJek login code is {code}. Do not share it."),
        };
        let mut wait = self.policy.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.attempt(&body).await {
                Ok(()) => {
                    tracing::info!(msisdn = %to.masked(), attempt, "login code handed to the SMS webhook");
                    return Ok(());
                }
                Err((retry, reason)) => {
                    tracing::warn!(msisdn = %to.masked(), attempt, %reason, "the SMS webhook did not take a login code");
                    if !retry || attempt > self.policy.retries {
                        return Err(SmsError(reason));
                    }
                }
            }
            tokio::time::sleep(wait).await;
            wait = wait.saturating_mul(2);
        }
    }
}
