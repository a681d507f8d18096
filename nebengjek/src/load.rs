//! `nebengjek load`: the city simulator against a running deployment. About a tenth
//! of the clients are active (drivers and passengers), the rest idle sockets that
//! connect and hold; the report is written as JSON and as Markdown.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// What `nebengjek load` runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// HTTP bases of the deployment's edges.
    pub urls: Vec<String>,
    /// All clients, active and idle.
    pub clients: usize,
    /// Active drivers (default: 6% of clients, at least 2).
    pub drivers: Option<usize>,
    /// Active passengers (default: 4% of clients, at least 1).
    pub passengers: Option<usize>,
    /// Seconds during which new rides start.
    pub duration_s: u64,
    /// Where the JSON report goes; Markdown goes beside it with `.md`.
    pub report: PathBuf,
}

pub async fn run(options: LoadOptions) -> anyhow::Result<()> {
    if options.urls.is_empty() {
        anyhow::bail!("give at least one --url");
    }
    let drivers = options.drivers.unwrap_or((options.clients * 6 / 100).max(2));
    let passengers = options.passengers.unwrap_or((options.clients * 4 / 100).max(1));
    let idle = options.clients.saturating_sub(drivers + passengers);
    println!(
        "load: {drivers} drivers, {passengers} passengers, {idle} idle sockets for {} s against {}",
        options.duration_s,
        options.urls.join(", ")
    );
    let config = sim::SimConfig {
        urls: options.urls,
        drivers,
        passengers,
        idle_clients: idle,
        duration: Duration::from_secs(options.duration_s),
        ..sim::SimConfig::default()
    };
    let report = sim::run(config, |s: &sim::Snapshot| {
        print!(
            "\r  {:>5.0} s  clients {:>6}  rides completed {:>5}  failed {:>3}  commands/s {:>7.1}  ack p50 {:>6.1} ms  p99 {:>7.1} ms   ",
            s.elapsed_s, s.clients, s.rides_completed, s.rides_failed, s.commands_per_s, s.ack_p50_ms, s.ack_p99_ms
        );
        let _ = std::io::stdout().flush();
    })
    .await?;
    println!();
    std::fs::write(&options.report, serde_json::to_string_pretty(&report)?)?;
    let md = options.report.with_extension("md");
    std::fs::write(&md, report.markdown())?;
    println!("{}", report.markdown());
    println!("report: {} and {}", options.report.display(), md.display());
    Ok(())
}
