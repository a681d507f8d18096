//! Configuration from the environment (a `.env` file is read if present). Every value
//! is parsed at start-up; a bad one stops the process with a message naming the
//! variable.
//!
//! ## Secrets fail closed
//! `APP_ENV` unset means production. Outside development [`Config::check_secrets`]
//! refuses the public development JWT secret, a `JWT_SECRET` under
//! [`MIN_JWT_SECRET_BYTES`] bytes, and `AUTH_DEV_ECHO_OTP=true`; the edge also needs a
//! real SMS sender (`SMS_WEBHOOK_URL`). The demo, the scripts and the tests say
//! `development` themselves. Secrets may come from files (`JWT_SECRET_FILE`,
//! `NATS_PASSWORD_FILE`) and never appear in `Debug` output.

use std::net::SocketAddr;
use std::str::FromStr;

use anyhow::{bail, Context as _};
use domain::Policy;

/// `APP_ENV`: where the process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    /// A developer's machine or a test (`APP_ENV=development`, said explicitly): a
    /// development JWT secret is used when `JWT_SECRET` is unset, login codes may be
    /// echoed and are logged by the development SMS sender.
    Development,
    /// Anything real, and the default: a `JWT_SECRET` of at least 32 bytes is
    /// required, no login code is echoed or logged.
    Production,
}

/// The shortest `JWT_SECRET` accepted outside development (HS256's key is 256 bits).
pub const MIN_JWT_SECRET_BYTES: usize = 32;

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
    /// `APP_ENV` (`production` by default, or `development`).
    pub app_env: AppEnv,
    /// `JWT_SECRET`, or the contents of `JWT_SECRET_FILE`, if set.
    pub jwt_secret: Option<String>,
    /// `SMS_WEBHOOK_URL`: where login codes are posted for delivery (required for the
    /// edge outside development).
    pub sms_webhook_url: Option<String>,
    /// `OPS_ADDR`: when set, `/healthz`, `/readyz` and `/metrics` answer there and not
    /// on `HTTP_ADDR`.
    pub ops_addr: Option<SocketAddr>,
    /// `NATS_USER` and `NATS_PASSWORD` (or `NATS_PASSWORD_FILE`): the service's NATS
    /// credentials, when the server asks for them.
    pub nats_credentials: Option<(String, String)>,
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
    /// The abuse limits (`COMMAND_RATE_*`, ...): see [`crate::limits`].
    pub limits: crate::limits::Limits,
    /// `AUDIT_SIGNING_KEY_FILE`: the Ed25519 key (PKCS#8 PEM) that signs tree heads.
    pub audit_signing_key_file: Option<std::path::PathBuf>,
    /// `AUDIT_TREE_HEAD_SECONDS`: a new signed tree head at least this often while
    /// events arrive (10).
    pub audit_tree_head_interval: std::time::Duration,
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
            .field("sms_webhook_url", &self.sms_webhook_url.as_ref().map(|_| "<set>"))
            .field("ops_addr", &self.ops_addr)
            .field("nats_user", &self.nats_credentials.as_ref().map(|(user, _)| user))
            .field("events_stream", &self.events_stream)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// The audit log's signing key: `AUDIT_SIGNING_KEY_FILE`, or in development a key
    /// made once at `.nebengjek/audit-signing-key.pem`. Outside development a missing
    /// variable stops start-up; an unreadable file always does, naming the variable.
    pub fn audit_signing_key(&self) -> anyhow::Result<ed25519_dalek::SigningKey> {
        use projections::audit_log::{read_or_create_signing_key, read_signing_key, DEVELOPMENT_KEY_FILE};
        match (&self.audit_signing_key_file, self.app_env) {
            (Some(path), _) => {
                read_signing_key(path).map_err(|e| anyhow::anyhow!("AUDIT_SIGNING_KEY_FILE: {e}"))
            }
            (None, AppEnv::Development) => {
                read_or_create_signing_key(std::path::Path::new(DEVELOPMENT_KEY_FILE))
                    .map_err(|e| anyhow::anyhow!("AUDIT_SIGNING_KEY_FILE (unset, development key): {e}"))
            }
            (None, AppEnv::Production) => bail!("AUDIT_SIGNING_KEY_FILE is required when APP_ENV=production"),
        }
    }

    /// Refuses, outside development, what would let anyone in: the public development
    /// JWT secret, a short one, echoed login codes. Each message names the variable.
    pub fn check_secrets(&self) -> anyhow::Result<()> {
        if self.app_env == AppEnv::Development {
            return Ok(());
        }
        match self.jwt_secret.as_deref() {
            None => bail!(
                "JWT_SECRET (or JWT_SECRET_FILE) is required: APP_ENV is unset or production \
                 (set APP_ENV=development on a developer's machine)"
            ),
            Some(DEVELOPMENT_JWT_SECRET) => {
                bail!("JWT_SECRET is the public development secret: refused outside APP_ENV=development")
            }
            Some(secret) if secret.len() < MIN_JWT_SECRET_BYTES => bail!(
                "JWT_SECRET is {} bytes: at least {MIN_JWT_SECRET_BYTES} are required outside APP_ENV=development",
                secret.len()
            ),
            Some(_) => {}
        }
        if self.auth_dev_echo_otp {
            bail!(
                "AUTH_DEV_ECHO_OTP=true returns login codes to anyone: refused outside APP_ENV=development"
            );
        }
        Ok(())
    }

    /// The JWT secret tokens are signed and checked with: `JWT_SECRET`, or in
    /// development the public development secret. Outside development the checks of
    /// [`Config::check_secrets`] apply.
    pub fn jwt_secret(&self) -> anyhow::Result<String> {
        self.check_secrets()?;
        match &self.jwt_secret {
            Some(secret) => Ok(secret.clone()),
            None => {
                tracing::warn!("JWT_SECRET is not set: signing tokens with the public development secret (APP_ENV=development)");
                Ok(DEVELOPMENT_JWT_SECRET.to_owned())
            }
        }
    }
}

/// A secret from `NAME` or from the file `NAME_FILE` (its contents, without the final
/// newline); both set is an error.
fn secret(name: &str) -> anyhow::Result<Option<String>> {
    secret_from(name, var(name), var(&format!("{name}_FILE")).as_deref())
}

fn secret_from(name: &str, value: Option<String>, file: Option<&str>) -> anyhow::Result<Option<String>> {
    let file_var = format!("{name}_FILE");
    match (value, file) {
        (Some(_), Some(_)) => bail!("set {name} or {file_var}, not both"),
        (Some(value), None) => Ok(Some(value)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path.trim())
                .with_context(|| format!("{file_var}={path:?} cannot be read"))?;
            let value = text.trim_end_matches(['\n', '\r']).to_owned();
            if value.is_empty() {
                bail!("{file_var}={path:?} is empty");
            }
            Ok(Some(value))
        }
        (None, None) => Ok(None),
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
        Some("development" | "dev") => Ok(AppEnv::Development),
        None | Some("production" | "prod") => Ok(AppEnv::Production),
        Some(other) => bail!("APP_ENV={other:?} is not valid: use development or production"),
    }
}

/// `SMS_WEBHOOK_URL`: an `http://` or `https://` URL.
fn sms_webhook_url() -> anyhow::Result<Option<String>> {
    match var("SMS_WEBHOOK_URL") {
        None => Ok(None),
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => Ok(Some(url)),
        Some(_) => bail!("SMS_WEBHOOK_URL must be an http:// or https:// URL"),
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
        let a = policy.service_area;
        policy.service_area = domain::ServiceArea::new(
            parse("SERVICE_AREA_MIN_LAT", a.min_lat)?,
            parse("SERVICE_AREA_MAX_LAT", a.max_lat)?,
            parse("SERVICE_AREA_MIN_LON", a.min_lon)?,
            parse("SERVICE_AREA_MAX_LON", a.max_lon)?,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "SERVICE_AREA_MIN_LAT, SERVICE_AREA_MAX_LAT, SERVICE_AREA_MIN_LON, SERVICE_AREA_MAX_LON: {e}"
            )
        })?;
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
            jwt_secret: secret("JWT_SECRET")?,
            auth_dev_echo_otp: parse("AUTH_DEV_ECHO_OTP", false)?,
            sms_webhook_url: sms_webhook_url()?,
            ops_addr: match var("OPS_ADDR") {
                None => None,
                Some(_) => Some(parse("OPS_ADDR", SocketAddr::from(([127, 0, 0, 1], 0)))?),
            },
            nats_credentials: match (var("NATS_USER"), secret("NATS_PASSWORD")?) {
                (Some(user), Some(password)) => Some((user, password)),
                (None, None) => None,
                _ => bail!("NATS_USER and NATS_PASSWORD (or NATS_PASSWORD_FILE) go together"),
            },
            redis_key_prefix: var("REDIS_KEY_PREFIX").unwrap_or_default(),
            command_subject_prefix,
            consumer_retry: consumer_retry()?,
            limits: crate::limits::Limits::from_env()?,
            audit_signing_key_file: var("AUDIT_SIGNING_KEY_FILE").map(std::path::PathBuf::from),
            audit_tree_head_interval: {
                let seconds: u64 = parse("AUDIT_TREE_HEAD_SECONDS", 10u64)?;
                if seconds == 0 {
                    bail!("AUDIT_TREE_HEAD_SECONDS must be a positive number of seconds");
                }
                std::time::Duration::from_secs(seconds)
            },
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

    const STRONG: &str = "0123456789abcdef0123456789abcdef";

    fn error_of(config: anyhow::Result<Config>) -> String {
        match config {
            Ok(c) => c.jwt_secret().map(|_| ()).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    }

    fn clear() {
        for name in [
            "APP_ENV",
            "JWT_SECRET",
            "JWT_SECRET_FILE",
            "AUTH_DEV_ECHO_OTP",
            "COMMAND_SUBJECT_PREFIX",
            "SMS_WEBHOOK_URL",
            "OPS_ADDR",
            "NATS_USER",
            "NATS_PASSWORD",
            "NATS_PASSWORD_FILE",
        ] {
            std::env::remove_var(name);
        }
    }

    /// One test owns the process environment (tests in one binary share it).
    #[test]
    fn secrets_fail_closed_unless_app_env_is_development() {
        clear();
        // Unset APP_ENV is production: no secret, no start.
        let config = Config::from_env().unwrap();
        assert_eq!(config.app_env, AppEnv::Production);
        let error = error_of(Ok(config));
        assert!(error.contains("JWT_SECRET"), "{error}");

        // The public development secret and a short one are refused, naming the variable.
        std::env::set_var("JWT_SECRET", DEVELOPMENT_JWT_SECRET);
        let error = error_of(Config::from_env());
        assert!(
            error.contains("JWT_SECRET") && error.contains("development secret"),
            "{error}"
        );
        std::env::set_var("JWT_SECRET", &STRONG[..31]);
        let error = error_of(Config::from_env());
        assert!(error.contains("JWT_SECRET") && error.contains("32"), "{error}");
        std::env::set_var("JWT_SECRET", STRONG);
        assert_eq!(Config::from_env().unwrap().jwt_secret().unwrap(), STRONG);

        // Echoed login codes are refused outside development.
        std::env::set_var("AUTH_DEV_ECHO_OTP", "true");
        let error = error_of(Config::from_env());
        assert!(error.contains("AUTH_DEV_ECHO_OTP"), "{error}");
        std::env::set_var("APP_ENV", "development");
        assert!(Config::from_env().unwrap().jwt_secret().is_ok());
        std::env::remove_var("AUTH_DEV_ECHO_OTP");

        // Development falls back to the public secret.
        std::env::remove_var("JWT_SECRET");
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
        for bad in ["0", "ten", "-1"] {
            std::env::set_var("AUDIT_TREE_HEAD_SECONDS", bad);
            let error = Config::from_env().unwrap_err().to_string();
            assert!(error.contains("AUDIT_TREE_HEAD_SECONDS"), "{error}");
        }
        std::env::set_var("AUDIT_TREE_HEAD_SECONDS", "3");
        assert_eq!(Config::from_env().unwrap().audit_tree_head_interval.as_secs(), 3);
        std::env::remove_var("AUDIT_TREE_HEAD_SECONDS");

        std::env::set_var("AUDIT_SIGNING_KEY_FILE", "/nonexistent/key.pem");
        let error = Config::from_env()
            .unwrap()
            .audit_signing_key()
            .unwrap_err()
            .to_string();
        assert!(error.contains("AUDIT_SIGNING_KEY_FILE"), "{error}");
        std::env::remove_var("AUDIT_SIGNING_KEY_FILE");
        std::env::set_var("APP_ENV", "production");
        let error = Config::from_env()
            .unwrap()
            .audit_signing_key()
            .unwrap_err()
            .to_string();
        assert!(error.contains("AUDIT_SIGNING_KEY_FILE"), "{error}");
        std::env::remove_var("APP_ENV");
        // A service area beyond Redis GEO's ±85.05112878° is refused at start-up.
        std::env::set_var("SERVICE_AREA_MAX_LAT", "89.9");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("SERVICE_AREA_MAX_LAT"), "{error}");
        std::env::set_var("SERVICE_AREA_MAX_LAT", "85");
        assert_eq!(Config::from_env().unwrap().policy.service_area.max_lat, 85.0);
        std::env::remove_var("SERVICE_AREA_MAX_LAT");

        std::env::set_var("COMMAND_RATE_BURST", "0");
        let error = Config::from_env().unwrap_err().to_string();
        assert!(error.contains("COMMAND_RATE_BURST"), "{error}");
        std::env::remove_var("COMMAND_RATE_BURST");

        for (name, bad) in [
            ("OPS_ADDR", "not-an-address"),
            ("SMS_WEBHOOK_URL", "ftp://sms.example"),
            ("NATS_USER", "nebengjek"),
        ] {
            std::env::set_var(name, bad);
            let error = Config::from_env().unwrap_err().to_string();
            assert!(error.contains(name), "{name}: {error}");
            std::env::remove_var(name);
        }
        std::env::set_var("OPS_ADDR", "127.0.0.1:9100");
        std::env::set_var("NATS_USER", "nebengjek");
        std::env::set_var("NATS_PASSWORD", "pw");
        let config = Config::from_env().unwrap();
        assert_eq!(config.ops_addr, Some(SocketAddr::from(([127, 0, 0, 1], 9100))));
        assert_eq!(config.nats_credentials, Some(("nebengjek".into(), "pw".into())));
        assert!(!format!("{config:?}").contains("pw\""), "no password in Debug");

        // Outside development the edge needs a real SMS sender: no login code is ever
        // logged there.
        let mut config = Config::from_env().unwrap();
        config.app_env = AppEnv::Production;
        let error = crate::startup::sms_sender(&config).unwrap_err().to_string();
        assert!(error.contains("SMS_WEBHOOK_URL"), "{error}");
        config.sms_webhook_url = Some("https://sms.example/send".into());
        let sender = crate::startup::sms_sender(&config).expect("the webhook");
        assert!(format!("{sender:?}").contains("WebhookSms"), "{sender:?}");
        config.app_env = AppEnv::Development;
        config.sms_webhook_url = None;
        let sender = crate::startup::sms_sender(&config).expect("the logging sender");
        assert!(format!("{sender:?}").contains("LoggingSms"), "{sender:?}");
        clear();
    }

    #[test]
    fn secrets_come_from_files_and_the_other_new_variables_are_checked() {
        // Runs after the test above in name order is not guaranteed: use only
        // variables that one does not read or write.
        let dir = std::env::temp_dir().join(format!("nj-config-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwt");
        std::fs::write(&file, format!("{STRONG}\n")).unwrap();
        assert_eq!(
            secret_from("NJ_TEST_A", None, Some(file.to_str().unwrap()))
                .unwrap()
                .as_deref(),
            Some(STRONG)
        );
        let error = secret_from("NJ_TEST_A", None, Some("/nonexistent/jwt"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("NJ_TEST_A_FILE"), "{error}");
        let error = secret_from("NJ_TEST_A", Some("x".into()), Some(file.to_str().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("NJ_TEST_A") && error.contains("not both"),
            "{error}"
        );
        std::fs::write(&file, "\n").unwrap();
        let error = secret_from("NJ_TEST_A", None, Some(file.to_str().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(error.contains("empty"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
