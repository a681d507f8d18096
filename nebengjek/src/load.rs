//! `nebengjek load`: the city simulator against a running deployment. About a tenth
//! of the clients are active (drivers and passengers), the rest idle sockets that
//! connect and hold; the report is written as JSON and as Markdown.
//!
//! The run ramps up first (every client logs in and connects, `--login-concurrency`
//! at a time), then measures for `--duration` seconds (see `sim`'s "Phases"): the
//! headline ack latency is that of the commands sent inside the window over sockets
//! already open, from writing the frame to reading its ack in this process. The load
//! generator usually shares the machine with the deployment: the report says so.
//! Beside the JSON go the Markdown (`.md`) and a chart of every second of the run
//! (`.svg`: commands/s, ack p50 and p99; [`crate::chart`]).

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
    /// Seconds measured once every client is connected.
    pub duration_s: u64,
    /// Logins in flight at once during the ramp.
    pub login_concurrency: usize,
    /// Where the JSON report goes; Markdown goes beside it with `.md`, the chart with
    /// `.svg`.
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
        "load: {drivers} drivers, {passengers} passengers, {idle} idle sockets; ramp ({} logins at a time), then {} s measured, against {}",
        options.login_concurrency,
        options.duration_s,
        options.urls.join(", ")
    );
    let config = sim::SimConfig {
        urls: options.urls,
        drivers,
        passengers,
        idle_clients: idle,
        duration: Duration::from_secs(options.duration_s),
        login_concurrency: options.login_concurrency,
        ..sim::SimConfig::default()
    };
    let report = sim::run(config, |s: &sim::Snapshot| {
        print!(
            "\r  {:>5.0} s {}  clients {:>6}  rides completed {:>5}  failed {:>3}  commands/s {:>7.1}  ack p50 {:>6.1} ms  p99 {:>7.1} ms   ",
            s.elapsed_s, if s.measuring { "window" } else { "ramp  " }, s.clients, s.rides_completed, s.rides_failed, s.commands_per_s, s.ack_p50_ms, s.ack_p99_ms
        );
        let _ = std::io::stdout().flush();
    })
    .await?;
    println!();
    std::fs::write(&options.report, serde_json::to_string_pretty(&report)?)?;
    let md = options.report.with_extension("md");
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let markdown = format!(
        "{}\n\nAck latency: commands sent inside the window over sockets already open, from writing the frame to reading its ack in the load generator ({cores} cores here, shared with whatever else runs on this machine — usually the deployment itself).\n",
        report.markdown()
    );
    std::fs::write(&md, &markdown)?;
    let svg = options.report.with_extension("svg");
    write_chart(&report, &svg)?;
    println!("{markdown}");
    println!(
        "report: {}, {} and {}",
        options.report.display(),
        md.display(),
        svg.display()
    );
    Ok(())
}

/// Writes the run's chart to `path`.
pub fn write_chart(report: &sim::Report, path: &std::path::Path) -> anyhow::Result<()> {
    let w = &report.window;
    let window = (w.duration_s > 0.0 && w.opened_after_s > 0.0)
        .then_some((w.opened_after_s, w.opened_after_s + w.duration_s));
    let title = format!(
        "nebengjek load: {} users, window {:.0} s, {:.1} commands/s, ack p50 {:.1} ms / p99 {:.1} ms",
        report.users, w.duration_s, w.commands_per_s, w.ack.p50_ms, w.ack.p99_ms
    );
    std::fs::write(path, crate::chart::load_chart(&title, &report.timeline, window))?;
    Ok(())
}
