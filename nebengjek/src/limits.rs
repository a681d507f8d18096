//! The abuse limits' configuration (docs/security.md, "Hostile input and abuse
//! limits"): each is an environment variable with a default, checked at start-up.

use std::time::Duration;

use anyhow::bail;

/// Every abuse limit of the process.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `COMMAND_RATE_PER_SECOND` (20) and `COMMAND_RATE_BURST` (40): each user's token
    /// bucket on the command path (WebSocket and NATS).
    pub command_rate: commands::rate::RateLimit,
    /// `ANALYST_MAX_RANGE_DAYS` (366), `ANALYST_MAX_PAGE` (500),
    /// `ANALYST_STATEMENT_TIMEOUT_MS` (5000): the bounds of the analysts' queries.
    pub analyst: api::reads::AnalystLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            command_rate: commands::rate::RateLimit {
                per_second: 20.0,
                burst: 40,
            },
            analyst: api::reads::AnalystLimits::default(),
        }
    }
}

impl Limits {
    /// Reads the environment; a bad value names its variable.
    pub fn from_env() -> anyhow::Result<Self> {
        let d = Self::default();
        let per_second = parse("COMMAND_RATE_PER_SECOND", d.command_rate.per_second)?;
        let burst = parse("COMMAND_RATE_BURST", d.command_rate.burst)?;
        let command_rate = commands::rate::RateLimit::new(per_second, burst)
            .map_err(|e| anyhow::anyhow!("COMMAND_RATE_PER_SECOND/COMMAND_RATE_BURST: {e}"))?;
        let days: i64 = parse("ANALYST_MAX_RANGE_DAYS", d.analyst.max_range.num_days())?;
        if !(1..=36_500).contains(&days) {
            bail!("ANALYST_MAX_RANGE_DAYS must be between 1 and 36500");
        }
        let max_page: i64 = parse("ANALYST_MAX_PAGE", d.analyst.max_page)?;
        if !(1..=10_000).contains(&max_page) {
            bail!("ANALYST_MAX_PAGE must be between 1 and 10000");
        }
        let timeout = millis("ANALYST_STATEMENT_TIMEOUT_MS", d.analyst.statement_timeout_ms)?;
        Ok(Self {
            command_rate,
            analyst: api::reads::AnalystLimits {
                max_range: chrono::TimeDelta::days(days),
                max_page,
                statement_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            },
        })
    }
}

fn parse<T: std::str::FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name).ok().filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={raw:?} is not valid: {e}")),
    }
}

/// A positive number of milliseconds.
fn millis(name: &str, default_ms: u64) -> anyhow::Result<Duration> {
    let ms: u64 = parse(name, default_ms)?;
    if ms == 0 {
        bail!("{name} must be positive");
    }
    Ok(Duration::from_millis(ms))
}
