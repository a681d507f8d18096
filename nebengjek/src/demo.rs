//! `nebengjek demo`: migrates, starts the whole system in this process on
//! 127.0.0.1:0 (`APP_ENV=development` and dev OTP echo forced on), runs the city simulator (`sim`) against it
//! with a live progress line, then verifies every hash chain and read model over the
//! period (`replay_tools::audit::verify`) and prints a short report. Exits non-zero if
//! any ride failed or verify fails.

use std::io::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use chrono::Utc;

use crate::config::Config;
use crate::{startup, Role};

/// What `nebengjek demo` simulates.
#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    /// Simulated drivers.
    pub drivers: usize,
    /// Simulated passengers.
    pub passengers: usize,
    /// How long new rides are started, in seconds.
    pub duration_s: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            drivers: 20,
            passengers: 15,
            duration_s: 30,
        }
    }
}

/// What the progress line says the demo is doing (or waiting for).
fn waiting_for(s: &sim::Snapshot) -> String {
    match s.phase {
        "ramp" => format!("logging in ({} connected)", s.clients),
        "window" => format!("riding ({} in flight)", s.rides_in_flight),
        _ => format!("finishing {} rides in flight", s.rides_in_flight),
    }
}

pub async fn run(mut config: Config, options: DemoOptions) -> anyhow::Result<()> {
    let pool = startup::connect(&config).await?;
    migrations::run(&pool).await?;
    config.http_addr = "127.0.0.1:0".parse()?;
    // A demo on a developer's machine: the development secret, codes echoed.
    config.app_env = crate::config::AppEnv::Development;
    config.auth_dev_echo_otp = true;
    let system = startup::start(config, Role::All).await?;
    let url = format!("http://{}", system.http_addr);
    println!(
        "NebengJek demo — {} drivers, {} passengers for {} s against {url}",
        options.drivers, options.passengers, options.duration_s
    );
    println!("  console: {url}/console   metrics: {url}/metrics\n");

    // Projection lag: events written minus the slowest projector's checkpoint.
    let lag = Arc::new(AtomicI64::new(0));
    let lag_task = {
        let (pool, lag) = (pool.clone(), lag.clone());
        tokio::spawn(async move {
            loop {
                let row: Result<(Option<i64>, Option<i64>), _> = sqlx::query_as(
                    "SELECT (SELECT max(position) FROM events), (SELECT min(position) FROM checkpoints)",
                )
                .fetch_one(&pool)
                .await;
                if let Ok((head, done)) = row {
                    lag.store(head.unwrap_or(0) - done.unwrap_or(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    let started = Utc::now();
    let sim_config = sim::SimConfig {
        urls: vec![url],
        drivers: options.drivers,
        passengers: options.passengers,
        duration: Duration::from_secs(options.duration_s),
        wind_down: true,
        ..sim::SimConfig::default()
    };
    let shown_lag = lag.clone();
    let result = sim::run(sim_config, move |s: &sim::Snapshot| {
        print!(
            "\r  {:>5.0} s  {:<30}  rides completed {:>4}  failed {:>2}  commands/s {:>6.1}  ack p50 {:>6.1} ms  p99 {:>7.1} ms  projection lag {:>4}   ",
            s.elapsed_s,
            waiting_for(s),
            s.rides_completed,
            s.rides_failed,
            s.commands_per_s,
            s.ack_p50_ms,
            s.ack_p99_ms,
            shown_lag.load(Ordering::Relaxed).max(0),
        );
        let _ = std::io::stdout().flush();
    })
    .await;
    println!();
    // Let the projectors catch up before verifying.
    for _ in 0..50 {
        let behind = lag.load(Ordering::Relaxed);
        if behind <= 0 {
            break;
        }
        print!("\r  waiting for the read models to catch up: {behind:>4} events behind   ");
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("\r  verifying every hash chain and read model of the period …              ");
    lag_task.abort();
    let report = result?;
    let ended = Utc::now() + chrono::Duration::seconds(1);
    let verify = replay_tools::audit::verify(&pool, Some((started, ended)), false, &|_, _| {}).await;
    system.shutdown().await?;
    println!("\n{}", report.markdown());
    let verify = verify?;
    if !verify.passed() {
        for b in &verify.chain_breaks {
            println!("TAMPERED {b}");
        }
        for d in &verify.row_diffs {
            println!("DIFFERS {d}");
        }
        bail!("verify failed");
    }
    println!(
        "verify: {} events in the period, every hash chain intact; {} rides in the read models agree with their events",
        verify.events, verify.rides
    );
    if report.rides_failed > 0 {
        bail!("{} rides failed", report.rides_failed);
    }
    if report.rides_completed == 0 {
        bail!("no ride completed");
    }
    Ok(())
}
