//! Configuration from the environment (a `.env` file is read if present). Every value
//! is parsed at start-up; a bad one stops the process with a message naming the
//! variable.

use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use domain::Policy;

/// `APP_ENV`: where the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// A developer's machine or a test: a development JWT secret is used when
    /// `JWT_SECRET` is unset.
    Development,
    /// Anything real: `JWT_SECRET` is required.
    Production,
}

/// The development JWT secret, used only with `APP_ENV=development` and no
/// `JWT_SECRET`. Public by design: tokens signed with it are worthless elsewhere.
pub const DEVELOPMENT_JWT_SECRET: &str = "nebengjek-development-secret-do-not-use-in-production";

/// Everything the process needs to start.
#[derive(Clone)]
pub struct Config {
    /// `DATABASE_URL`.
    pub database_url: String,
    /// `NATS_URL`.
    pub nats_url: String,
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `HTTP_ADDR`.
    pub http_addr: SocketAddr,
    /// `DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// `EVENTS_STREAM` (`EVENTS`) and `EVENTS_SUBJECT_PREFIX` (`events`): where the
    /// outbox relay publishes the event feed.
    pub events_stream: String,
    /// See `events_stream`.
    pub events_subject_prefix: String,
    /// Location ingest and the geo index (`LOCATION_*`, `MATCHING_ETA_SPEED_KMH`).
    pub location: LocationConfig,
    /// The business parameters (`BILLING_*`, `MATCHING_*`, `TRIP_*`, `SERVICE_AREA_*`).
    pub policy: Policy,
    /// `APP_ENV` (`development` by default, or `production`).
    pub app_env: AppEnv,
    /// `JWT_SECRET`, if set.
    pub jwt_secret: Option<String>,
    /// `AUTH_DEV_ECHO_OTP`: return login codes in the response (development only).
    pub auth_dev_echo_otp: bool,
    /// `REDIS_KEY_PREFIX`: prepended to the edge's Redis keys.
    pub redis_key_prefix: String,
    /// `COMMAND_SUBJECT_PREFIX`: put before the NATS command subjects (`cmd.*`), empty
    /// by default. Processes of one deployment share it; a system started beside
    /// another on the same NATS (a test, a demo) uses its own, so neither serves the
    /// other's commands against the wrong database.
    pub command_subject_prefix: String,
    /// `CONSUMER_RETRY_MIN_MS` (100) and `CONSUMER_RETRY_MAX_MS` (5000): the capped,
    /// jittered backoff of a consumer stalled at an event it cannot handle.
    pub consumer_retry: migrations::consumers::Backoff,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Config")
            .field("database_url", &self.database_url)
            .field("nats_url", &self.nats_url)
            .field("redis_url", &self.redis_url)
            .field("http_addr", &self.http_addr)
            .field("app_env", &self.app_env)
            .field("jwt_secret", &self.jwt_secret.as_ref().map(|_| "<set>"))
            .field("events_stream", &self.events_stream)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The JWT secret the edge signs with: `JWT_SECRET`, or in development the public
    /// development secret. Outside development a missing `JWT_SECRET` stops start-up.
    pub fn jwt_secret(&self) -> anyhow::Result<String> {
        match (&self.jwt_secret, self.app_env) {
            (Some(secret), _) => Ok(secret.clone()),
            (None, AppEnv::Development) => {
                tracing::warn!("JWT_SECRET is not set: signing tokens with the public development secret (APP_ENV=development)");
                Ok(DEVELOPMENT_JWT_SECRET.to_owned())
            }
            (None, AppEnv::Production) => bail!("JWT_SECRET is required when APP_ENV=production"),
        }
    }
}

/// `LOCATION_*` and `MATCHING_ETA_SPEED_KMH`.
#[derive(Debug, Clone)]
pub struct LocationConfig {
    /// `LOCATION_STREAM`: the JetStream stream of drivers' pings (`LOCATION`).
    pub stream: String,
    /// `LOCATION_AVAILABILITY_TTL_SECONDS`: a driver is available this long after a
    /// ping (60).
    pub availability_ttl: std::time::Duration,
    /// `MATCHING_ETA_SPEED_KMH`: the straight-line speed of an ETA (30).
    pub eta_speed_kmh: f64,
}

impl LocationConfig {
    fn from_env() -> anyhow::Result<Self> {
        let stream = nats_token("LOCATION_STREAM", domain::location::DEFAULT_STREAM)?;
        let ttl: u64 = parse("LOCATION_AVAILABILITY_TTL_SECONDS", 60u64)?;
        if ttl == 0 {
            bail!("LOCATION_AVAILABILITY_TTL_SECONDS must be positive");
        }
        Ok(Self {
            stream,
            availability_ttl: std::time::Duration::from_secs(ttl),
            eta_speed_kmh: positive("MATCHING_ETA_SPEED_KMH", parse("MATCHING_ETA_SPEED_KMH", 30.0)?)?,
        })
    }
}

fn app_env() -> anyhow::Result<AppEnv> {
    match var("APP_ENV").map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("development" | "dev") => Ok(AppEnv::Development),
        Some("production" | "prod") => Ok(AppEnv::Production),
        Some(other) => bail!("APP_ENV={other:?} is not valid: use development or production"),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={raw:?} is not valid: {e}")),
    }
}

fn positive(name: &str, value: f64) -> anyhow::Result<f64> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        bail!("{name} must be a positive number, got {value}")
    }
}

/// A NATS stream name or subject token: letters, digits, `_` and `-` only.
fn nats_token(name: &str, default: &str) -> anyhow::Result<String> {
    let value = var(name).unwrap_or_else(|| default.to_owned());
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        Ok(value)
    } else {
        bail!("{name}={value:?} must be letters, digits, '_' or '-' only")
    }
}

impl Config {
    /// Reads the environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let _ = dotenvy::dotenv();
        let mut policy = Policy::default();
        let fare = &mut policy.fare;
        fare.rate_per_km = domain::Rupiah::new(parse("BILLING_BASE_RATE_PER_KM", fare.rate_per_km.get())?);
        fare.minimum_fare = domain::Rupiah::new(parse("BILLING_MINIMUM_FARE", fare.minimum_fare.get())?);
        fare.maximum_fare = domain::Rupiah::new(parse("BILLING_MAXIMUM_FARE", fare.maximum_fare.get())?);
        fare.admin_fee_percent = parse("BILLING_ADMIN_FEE_PERCENT", fare.admin_fee_percent)?;
        if fare.rate_per_km.get() <= 0 {
            bail!("BILLING_BASE_RATE_PER_KM must be positive");
        }
        if fare.minimum_fare.get() <= 0 || fare.minimum_fare > fare.maximum_fare {
            bail!("BILLING_MINIMUM_FARE must be positive and at most BILLING_MAXIMUM_FARE");
        }
        if !(0..=100).contains(&fare.admin_fee_percent) {
            bail!("BILLING_ADMIN_FEE_PERCENT must be between 0 and 100");
        }
        let m = &mut policy.matching;
        m.default_radius_km = positive(
            "MATCHING_DEFAULT_RADIUS_KM",
            parse("MATCHING_DEFAULT_RADIUS_KM", m.default_radius_km)?,
        )?;
        m.max_radius_km = positive(
            "MATCHING_MAX_RADIUS_KM",
            parse("MATCHING_MAX_RADIUS_KM", m.max_radius_km)?,
        )?;
        m.max_drivers_per_request = parse("MATCHING_MAX_DRIVERS_PER_REQUEST", m.max_drivers_per_request)?;
        m.max_rounds = parse("MATCHING_MAX_RETRIES", m.max_rounds)?;
        m.response_timeout_s = parse("MATCHING_RESPONSE_TIMEOUT_SEC", m.response_timeout_s)?;
        if m.max_drivers_per_request == 0 {
            bail!("MATCHING_MAX_DRIVERS_PER_REQUEST must be positive");
        }
        if m.max_rounds == 0 {
            bail!("MATCHING_MAX_RETRIES must be positive");
        }
        if m.response_timeout_s <= 0 {
            bail!("MATCHING_RESPONSE_TIMEOUT_SEC must be positive");
        }
        let t = &mut policy.trip;
        t.jitter_m = positive("TRIP_JITTER_METERS", parse("TRIP_JITTER_METERS", t.jitter_m)?)?;
        t.max_speed_kmh = positive(
            "TRIP_MAX_SPEED_KMH",
            parse("TRIP_MAX_SPEED_KMH", t.max_speed_kmh)?,
        )?;
        let a = &mut policy.service_area;
        a.min_lat = parse("SERVICE_AREA_MIN_LAT", a.min_lat)?;
        a.max_lat = parse("SERVICE_AREA_MAX_LAT", a.max_lat)?;
        a.min_lon = parse("SERVICE_AREA_MIN_LON", a.min_lon)?;
        a.max_lon = parse("SERVICE_AREA_MAX_LON", a.max_lon)?;
        if a.min_lat >= a.max_lat || a.min_lon >= a.max_lon {
            bail!("SERVICE_AREA_MIN_* must be below SERVICE_AREA_MAX_*");
        }
        let events_subject_prefix = nats_token("EVENTS_SUBJECT_PREFIX", "events")?;
        let command_subject_prefix = var("COMMAND_SUBJECT_PREFIX").unwrap_or_default();
        if command_subject_prefix.starts_with(&format!("{events_subject_prefix}.")) {
            // The EVENTS stream would capture the commands and answer them itself.
            bail!("COMMAND_SUBJECT_PREFIX={command_subject_prefix:?} must not be under EVENTS_SUBJECT_PREFIX={events_subject_prefix:?}");
        }
        Ok(Self {
            database_url: var("DATABASE_URL")
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/nebengjek".into()),
            nats_url: var("NATS_URL").unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            redis_url: var("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            http_addr: parse("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))
                .context("HTTP_ADDR must be host:port")?,
            database_max_connections: parse("DATABASE_MAX_CONNECTIONS", 20u32)?,
            events_stream: nats_token("EVENTS_STREAM", "EVENTS")?,
            events_subject_prefix,
            policy,
            location: LocationConfig::from_env()?,
            app_env: app_env()?,
            jwt_secret: var("JWT_SECRET"),
            auth_dev_echo_otp: parse("AUTH_DEV_ECHO_OTP", false)?,
            redis_key_prefix: var("REDIS_KEY_PREFIX").unwrap_or_default(),
            command_subject_prefix,
            consumer_retry: consumer_retry()?,
        })
    }
}

fn consumer_retry() -> anyhow::Result<migrations::consumers::Backoff> {
    let default = migrations::consumers::Backoff::default();
    let min: u64 = parse("CONSUMER_RETRY_MIN_MS", default.min.as_millis() as u64)?;
    let max: u64 = parse("CONSUMER_RETRY_MAX_MS", default.max.as_millis() as u64)?;
    migrations::consumers::Backoff::new(
        std::time::Duration::from_millis(min),
        std::time::Duration::from_millis(max),
    )
    .with_context(|| {
        format!("CONSUMER_RETRY_MIN_MS={min} must be positive and at most CONSUMER_RETRY_MAX_MS={max}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test owns the process environment (tests in one binary share it).
    #[test]
    fn app_env_decides_whether_jwt_secret_is_required() {
        std::env::remove_var("JWT_SECRET");
        std::env::set_var("APP_ENV", "production");
        let config = Config::from_env().unwrap();
        let error = config.jwt_secret().unwrap_err().to_string();
        assert!(error.contains("JWT_SECRET"), "{error}");

        std::env::set_var("JWT_SECRET", "s3cret");
        assert_eq!(Config::from_env().unwrap().jwt_secret().unwrap(), "s3cret");

        std::env::remove_var("JWT_SECRET");
        std::env::set_var("APP_ENV", "development");
        assert_eq!(
            Config::from_env().unwrap().jwt_secret().unwrap(),
            DEVELOPMENT_JWT_SECRET
        );

        std::env::set_var("APP_ENV", "staging");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("APP_ENV"), "{error}");

        std::env::set_var("APP_ENV", "development");
        std::env::set_var("AUTH_DEV_ECHO_OTP", "maybe");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("AUTH_DEV_ECHO_OTP"), "{error}");
        std::env::remove_var("AUTH_DEV_ECHO_OTP");

        std::env::set_var("COMMAND_SUBJECT_PREFIX", "events.x.");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("COMMAND_SUBJECT_PREFIX"), "{error}");
        std::env::set_var("COMMAND_SUBJECT_PREFIX", "blue.");
        assert_eq!(Config::from_env().unwrap().command_subject_prefix, "blue.");
        std::env::remove_var("COMMAND_SUBJECT_PREFIX");

        let retry = Config::from_env().unwrap().consumer_retry;
        assert_eq!(retry, migrations::consumers::Backoff::default());
        std::env::set_var("CONSUMER_RETRY_MIN_MS", "0");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("CONSUMER_RETRY_MIN_MS"), "{error}");
        std::env::set_var("CONSUMER_RETRY_MIN_MS", "500");
        std::env::set_var("CONSUMER_RETRY_MAX_MS", "200");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("CONSUMER_RETRY_MAX_MS"), "{error}");
        std::env::set_var("CONSUMER_RETRY_MAX_MS", "2000");
        let retry = Config::from_env().unwrap().consumer_retry;
        assert_eq!((retry.min.as_millis(), retry.max.as_millis()), (500, 2000));
        std::env::remove_var("CONSUMER_RETRY_MIN_MS");
        std::env::remove_var("CONSUMER_RETRY_MAX_MS");
        std::env::remove_var("APP_ENV");
    }
}
