//! `replay-tools`: the auditors' and operators' command line. Run with `--help`.

/// mimalloc: every tool here moves rows between threads (reader → checkers, tasks →
/// the store's batcher), where glibc malloc's arenas contend (ADR 0005).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write as _;
use std::time::Instant;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use indicatif::{ProgressBar, ProgressStyle};
use projections::{MatchesProjector, Projector, RidesProjector};
use replay_tools::{audit, billing, status};
use sqlx::PgPool;
use uuid::Uuid;

/// Audit NebengJek's event store: replay billing from the events, prove the store is
/// complete and untampered, compare the read models with the events, rebuild them.
///
/// Every figure printed is computed from the events themselves, never copied from a
/// read model; where a read model disagrees, the output says so. Times are RFC 3339
/// (UTC), money whole rupiah, distances kilometres to the metre.
///
/// Exit status: 0 when all is well, 1 when `verify` (or `billing ride`) found a
/// difference or a broken chain, 2 on a usage or connection error.
#[derive(Debug, Parser)]
#[command(name = "replay-tools", version, about, verbatim_doc_comment)]
struct Cli {
    /// The event store (PostgreSQL).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/nebengjek",
        global = true
    )]
    database_url: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Billing history replayed from the events.
    #[command(subcommand)]
    Billing(BillingCommand),
    /// Check every hash chain and compare rides, billing_ledger and payments with
    /// what the events say; exits 1 and lists each difference (naming the ride) or
    /// broken chain.
    Verify {
        /// Only aggregates with an event recorded at or after this time (RFC 3339).
        #[arg(long, requires = "to")]
        from: Option<DateTime<Utc>>,
        /// ... and before this time (RFC 3339).
        #[arg(long, requires = "from")]
        to: Option<DateTime<Utc>>,
        /// Also write the rows the events imply into a schema `verify_<time>`, to
        /// query side by side with the live tables.
        #[arg(long)]
        scratch: bool,
        /// Print the report as one JSON document on stdout (the summary goes to
        /// stderr): `passed`, counts, `chain_breaks`, `row_diffs`, `unreadable`.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a read model from position 0 into shadow tables and switch them in
    /// (readers never see a half-built table). Shows progress and events/s.
    Rebuild {
        /// Which read model.
        projection: ProjectionName,
    },
    /// An aggregate as it stood at a moment.
    #[command(subcommand)]
    State(StateCommand),
    /// Every consumer of the event feed (each projector, the outbox relay, the geo
    /// projection, the process manager, the deadline scheduler): its checkpoint, lag,
    /// whether it is stalled at an event and why, and its last error. Exits 1 when any
    /// consumer is stalled.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// The audit log (SPEC.md "Audit proofs"): signed tree heads and proofs, JSON on
    /// stdout.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// An aggregate's raw event stream, one JSON object a line.
    Events {
        /// `ride` or `match`.
        aggregate_type: String,
        /// The aggregate's id.
        id: Uuid,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// `{key_id, public_key}` of the signing key (base64 of the raw 32 bytes).
    PublicKey {
        /// The signing key (PKCS#8 PEM).
        #[arg(long, env = "AUDIT_SIGNING_KEY_FILE", default_value = projections::audit_log::DEVELOPMENT_KEY_FILE)]
        key_file: std::path::PathBuf,
    },
    /// A signed tree head: the latest, or the one of `--size` leaves.
    TreeHead {
        /// The head of this many leaves.
        #[arg(long)]
        size: Option<u64>,
    },
    /// `{leaf_index, tree_size, leaf_hash, audit_path}`: the event at `--position` is
    /// leaf `position - 1` of the tree of `--size` leaves (default: the latest signed
    /// head's).
    ProveInclusion {
        /// The event's position.
        #[arg(long)]
        position: u64,
        /// The tree's size.
        #[arg(long)]
        size: Option<u64>,
    },
    /// `{first, second, proof}`: the tree of `--to` leaves (default: the latest signed
    /// head's) extends the tree of `--from` leaves (RFC 9162 §2.1.4).
    ProveConsistency {
        /// The older size (at least 1).
        #[arg(long)]
        from: u64,
        /// The newer size.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Exits 0 only if the log still extends the signed tree head in `--receipt`:
    /// checks its signature, recomputes the tree from the events up to its size, and
    /// names the first stored signed head that no longer matches.
    Verify {
        /// A signed tree head saved earlier (`audit tree-head > receipt.json`).
        #[arg(long)]
        receipt: std::path::PathBuf,
        /// The public key (base64, as `audit public-key` prints it); by default the
        /// one of the signing key file.
        #[arg(long)]
        public_key: Option<String>,
        /// The signing key, when `--public-key` is not given.
        #[arg(long, env = "AUDIT_SIGNING_KEY_FILE", default_value = projections::audit_log::DEVELOPMENT_KEY_FILE)]
        key_file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum BillingCommand {
    /// Every trip segment, fare clamp, discount, fee, payout and payment attempt of a
    /// ride, with time and actor, and the totals; marks where the read models differ.
    Ride {
        /// The ride.
        ride_id: Uuid,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print JSON with each event of the ride and its inclusion proof against the
        /// latest signed tree head, so anyone with the public key can check the fare's
        /// history.
        #[arg(long)]
        with_proof: bool,
    },
    /// The billing ledger of a period, replayed from the events.
    Period {
        /// From (inclusive, RFC 3339).
        #[arg(long)]
        from: DateTime<Utc>,
        /// To (exclusive, RFC 3339).
        #[arg(long)]
        to: DateTime<Utc>,
        /// Only this driver's rides.
        #[arg(long)]
        driver: Option<Uuid>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Print a JSON report instead (the period, totals per kind, every entry);
        /// `--format json` prints the bare entries.
        #[arg(long, conflicts_with = "format")]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// A ride as it stood at `--as-of`.
    Ride {
        /// The ride.
        ride_id: Uuid,
        /// The moment (RFC 3339).
        #[arg(long)]
        as_of: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProjectionName {
    /// rides, billing_ledger and payments.
    Rides,
    /// matches.
    Matches,
    /// Both.
    All,
}

fn km(m: i64) -> String {
    format!("{}.{:03}", m / 1000, (m % 1000).abs())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn table() -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len.max(1));
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{what} [{{bar:40}}] {{pos}}/{{len}} events, {{per_sec}}, eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

async fn consumer_status(pool: &PgPool, format: Format) -> anyhow::Result<i32> {
    let consumers = status::consumers(pool, &[RidesProjector::NAME, MatchesProjector::NAME]).await?;
    let time = |t: Option<DateTime<Utc>>| opt(t.map(|t| t.to_rfc3339()));
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&consumers)?),
        Format::Csv => {
            let mut out = csv::Writer::from_writer(std::io::stdout().lock());
            out.write_record([
                "consumer",
                "kind",
                "checkpoint",
                "lag",
                "stalled",
                "stalled_at",
                "stalled_since",
                "attempts",
                "last_error",
                "last_error_at",
                "reported_by",
                "updated_at",
            ])?;
            for c in &consumers {
                out.write_record([
                    c.name.clone(),
                    c.kind.clone(),
                    opt(c.checkpoint),
                    c.lag.to_string(),
                    c.stalled.to_string(),
                    opt(c.stalled_at),
                    time(c.stalled_since),
                    c.attempts.to_string(),
                    opt(c.last_error.clone()),
                    time(c.last_error_at),
                    opt(c.reported_by.clone()),
                    time(c.updated_at),
                ])?;
            }
            out.flush()?;
        }
        Format::Table => {
            let mut t = table();
            t.set_header([
                "consumer",
                "kind",
                "checkpoint",
                "lag",
                "state",
                "last error",
                "reported by",
            ]);
            for c in &consumers {
                let state = match (c.stalled, &c.reported_by) {
                    (true, _) => format!(
                        "STALLED at {} since {} ({} attempts)",
                        opt(c.stalled_at),
                        time(c.stalled_since),
                        c.attempts
                    ),
                    (false, Some(_)) => "ok".to_owned(),
                    (false, None) => "never reported".to_owned(),
                };
                let error = match (&c.last_error, c.last_error_at) {
                    (Some(e), Some(at)) => format!("{} — {e}", at.to_rfc3339()),
                    (Some(e), None) => e.clone(),
                    _ => "-".to_owned(),
                };
                t.add_row([
                    c.name.clone(),
                    c.kind.clone(),
                    opt(c.checkpoint),
                    c.lag.to_string(),
                    state,
                    error,
                    opt(c.reported_by.clone()),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(if consumers.iter().any(|c| c.stalled) { 1 } else { 0 })
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let pool = PgPool::connect(&cli.database_url)
        .await
        .with_context(|| "cannot connect to the event store at DATABASE_URL")?;
    match cli.command {
        Command::Events { aggregate_type, id } => {
            let mut out = std::io::stdout().lock();
            for event in migrations::read_stream(&pool, &aggregate_type, id, 0).await? {
                writeln!(out, "{}", serde_json::to_string(&event)?)?;
            }
            Ok(0)
        }
        Command::Billing(BillingCommand::Ride {
            ride_id,
            format,
            with_proof: true,
        }) => {
            let _ = format;
            billing_ride_with_proof(&pool, ride_id).await
        }
        Command::Billing(BillingCommand::Ride { ride_id, format, .. }) => {
            billing_ride(&pool, ride_id, format).await
        }
        Command::Audit(command) => audit(&pool, command).await,
        Command::Billing(BillingCommand::Period {
            from,
            to,
            driver,
            format,
            json,
        }) => {
            if json {
                let entries = billing::period(&pool, from, to, driver).await?;
                let report = replay_tools::report::PeriodJson::new(entries, from, to, driver);
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(0)
            } else {
                billing_period(&pool, from, to, driver, format).await
            }
        }
        Command::Verify {
            from,
            to,
            scratch,
            json,
        } => verify(&pool, from.zip(to), scratch, json).await,
        Command::Status { format } => consumer_status(&pool, format).await,
        Command::Rebuild { projection } => {
            let projectors: Vec<Box<dyn Projector>> = match projection {
                ProjectionName::Rides => vec![Box::new(RidesProjector)],
                ProjectionName::Matches => vec![Box::new(MatchesProjector)],
                ProjectionName::All => vec![Box::new(RidesProjector), Box::new(MatchesProjector)],
            };
            for projector in projectors {
                let head = migrations::head_position(&pool).await?;
                let progress = bar(head as u64, projector.name());
                let started = Instant::now();
                let position = projections::rebuild::rebuild(&pool, projector.as_ref(), &|at, up_to| {
                    progress.set_length(up_to.max(1) as u64);
                    progress.set_position(at as u64);
                })
                .await?;
                progress.finish_and_clear();
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "{}: rebuilt to position {position} in {secs:.1} s ({:.0} events/s), switched in",
                    projector.name(),
                    position as f64 / secs.max(1e-9)
                );
            }
            Ok(0)
        }
        Command::State(StateCommand::Ride { ride_id, as_of }) => {
            let Some((ride, sequence)) = billing::state_as_of(&pool, ride_id, as_of).await? else {
                println!("ride {ride_id} did not exist at {as_of}");
                return Ok(0);
            };
            let mut t = table();
            t.set_header(["field", "value"]);
            let b = ride.fare_breakdown();
            for (k, v) in [
                ("ride_id", ride_id.to_string()),
                ("as_of", as_of.to_rfc3339()),
                ("events applied", sequence.to_string()),
                ("status", domain::Aggregate::status(&ride).to_owned()),
                ("driver_id", opt(ride.driver_id())),
                ("passenger_id", opt(ride.passenger_id())),
                ("started_at", opt(ride.started_at().map(|t| t.to_rfc3339()))),
                ("distance_km", km(ride.distance_m())),
                ("trip segments", ride.trip_segments().to_string()),
                ("segments cost", ride.trip_segments_cost().get().to_string()),
                ("rejected points", ride.rejected_trip_points().to_string()),
                ("arrived_at", opt(ride.arrived_at().map(|t| t.to_rfc3339()))),
                ("fare", opt(b.map(|b| b.fare.get()))),
                ("adjusted_fare", opt(b.map(|b| b.adjusted_fare.get()))),
                ("admin_fee", opt(b.map(|b| b.admin_fee.get()))),
                ("driver_payout", opt(b.map(|b| b.driver_payout.get()))),
                ("payment", opt(ride.payment_status().map(|s| s.as_str()))),
                ("payment attempts", ride.payment_attempts().to_string()),
                ("completed_at", opt(ride.completed_at().map(|t| t.to_rfc3339()))),
            ] {
                t.add_row([k.to_owned(), v]);
            }
            println!("{t}");
            Ok(0)
        }
    }
}

async fn billing_ride(pool: &PgPool, ride_id: Uuid, format: Format) -> anyhow::Result<i32> {
    let Some(b) = billing::ride(pool, ride_id).await? else {
        println!("no events for ride {ride_id}");
        return Ok(1);
    };
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&b)?),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            for line in &b.lines {
                w.serialize(line)?;
            }
            w.flush()?;
        }
        Format::Table => {
            println!("Billing of ride {ride_id}, replayed from its events");
            let mut t = table();
            t.set_header([
                "#",
                "recorded_at",
                "actor",
                "what",
                "distance_km",
                "amount",
                "detail",
            ]);
            for l in &b.lines {
                t.add_row([
                    l.position.to_string(),
                    l.recorded_at.to_rfc3339(),
                    l.actor.clone(),
                    l.what.clone(),
                    opt(l.distance_m.map(km)),
                    opt(l.amount),
                    l.detail.clone(),
                ]);
            }
            println!("{t}");
            let mut totals = table();
            totals.set_header(["total", "replayed"]);
            for (k, v) in [
                ("status", b.status.clone()),
                ("distance_km", km(b.distance_m)),
                ("ledger sum", b.ledger_total.to_string()),
                ("fare", opt(b.fare)),
                ("adjusted_fare", opt(b.adjusted_fare)),
                ("admin_fee", opt(b.admin_fee)),
                ("driver_payout", opt(b.driver_payout)),
                ("payment", opt(b.payment_status.clone())),
                ("payment attempts", b.payment_attempts.to_string()),
            ] {
                totals.add_row([k.to_owned(), v]);
            }
            println!("{totals}");
        }
    }
    if b.differences.is_empty() {
        eprintln!("read models agree with the events");
        Ok(0)
    } else {
        for d in &b.differences {
            eprintln!("DIFFERS {d}");
        }
        Ok(1)
    }
}

async fn billing_period(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    driver: Option<Uuid>,
    format: Format,
) -> anyhow::Result<i32> {
    let entries = billing::period(pool, from, to, driver).await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(std::io::stdout());
            for e in &entries {
                w.serialize(e)?;
            }
            w.flush()?;
        }
        Format::Table => {
            let mut t = table();
            t.set_header([
                "recorded_at",
                "ride_id",
                "driver_id",
                "kind",
                "distance_km",
                "cost",
            ]);
            for e in &entries {
                t.add_row([
                    e.recorded_at.to_rfc3339(),
                    e.ride_id.to_string(),
                    e.driver_id.to_string(),
                    e.kind.clone(),
                    opt(e.distance_m.map(km)),
                    e.cost.to_string(),
                ]);
            }
            println!("{t}");
            let mut by_kind: std::collections::BTreeMap<&str, (usize, i64)> = Default::default();
            for e in &entries {
                let k = by_kind.entry(e.kind.as_str()).or_default();
                k.0 += 1;
                k.1 += e.cost;
            }
            let mut totals = table();
            totals.set_header(["kind", "entries", "sum"]);
            for (kind, (n, sum)) in &by_kind {
                totals.add_row([(*kind).to_owned(), n.to_string(), sum.to_string()]);
            }
            totals.add_row([
                "all".to_owned(),
                entries.len().to_string(),
                entries.iter().map(|e| e.cost).sum::<i64>().to_string(),
            ]);
            println!("{totals}");
        }
    }
    Ok(0)
}

async fn verify(
    pool: &PgPool,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    scratch: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let progress = bar(0, "verify");
    let started = Instant::now();
    let started_at = Utc::now();
    let report = audit::verify(pool, window, scratch, &|done, total| {
        progress.set_length(total.max(1));
        progress.set_position(done);
    })
    .await?;
    progress.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if json {
        let out = replay_tools::report::VerifyJson::new(&report, window, secs);
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    // With --json the human lines go to stderr, so stdout is the document alone.
    let say = |line: String| {
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    for b in &report.chain_breaks {
        say(format!("TAMPERED {b}"));
    }
    for d in &report.row_diffs {
        say(format!("DIFFERS {d}"));
    }
    for u in &report.unreadable {
        say(format!("UNREADABLE {u}"));
    }
    if let Some(schema) = &report.scratch_schema {
        say(format!("the rows the events imply are in schema {schema}"));
    }
    say(format!(
        "verify: {} events of {} aggregates, {} rides compared with the read models in {secs:.1} s ({:.0} events/s): {}",
        report.events,
        report.aggregates,
        report.rides,
        report.events as f64 / secs.max(1e-9),
        if report.passed() {
            "every chain intact, read models agree".to_owned()
        } else {
            format!(
                "{} broken chains, {} differing rows, {} unreadable events",
                report.chain_breaks.len(),
                report.row_diffs.len(),
                report.unreadable.len()
            )
        }
    ));
    // The run is recorded for operators and the console; a store that cannot take the
    // row (a read-only replica) still gets its verdict, with a warning.
    if let Err(error) =
        replay_tools::runs::record_verify_run(pool, &report, started_at, Utc::now(), window).await
    {
        eprintln!("warning: this run could not be recorded in verify_runs: {error}");
    }
    Ok(if report.passed() { 0 } else { 1 })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

async fn latest_head(pool: &PgPool) -> anyhow::Result<domain::merkle::SignedTreeHead> {
    projections::audit_log::stored_head(pool, None)
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!("no signed tree head yet (is `nebengjek serve` running its projections role?)")
        })
}

async fn audit(pool: &PgPool, command: AuditCommand) -> anyhow::Result<i32> {
    use domain::merkle;
    use projections::audit_log;
    match command {
        AuditCommand::PublicKey { key_file } => {
            let key = audit_log::read_signing_key(&key_file)
                .map_err(|e| anyhow::anyhow!("AUDIT_SIGNING_KEY_FILE: {e}"))?
                .verifying_key();
            print_json(&serde_json::json!({
                "key_id": merkle::key_id(&key),
                "public_key": merkle::public_key_base64(&key),
            }))?;
        }
        AuditCommand::TreeHead { size } => {
            let head = audit_log::stored_head(pool, size)
                .await?
                .ok_or_else(|| match size {
                    Some(n) => anyhow::anyhow!("no signed tree head of size {n}"),
                    None => anyhow::anyhow!("no signed tree head yet"),
                })?;
            print_json(&head)?;
        }
        AuditCommand::ProveInclusion { position, size } => {
            let size = match size {
                Some(n) => n,
                None => latest_head(pool).await?.tree_size,
            };
            if position == 0 || position > size {
                anyhow::bail!(
                    "--position {position} is not in a tree of {size} events (positions 1..={size})"
                );
            }
            let (proof, _) = audit_log::prove_inclusion(pool, position - 1, size).await?;
            print_json(&proof)?;
        }
        AuditCommand::ProveConsistency { from, to } => {
            let to = match to {
                Some(n) => n,
                None => latest_head(pool).await?.tree_size,
            };
            print_json(&audit_log::prove_consistency(pool, from, to).await?)?;
        }
        AuditCommand::Verify {
            receipt,
            public_key,
            key_file,
        } => {
            let name = receipt.display().to_string();
            let text = std::fs::read_to_string(&receipt)
                .with_context(|| format!("cannot read the receipt {name}"))?;
            let head: merkle::SignedTreeHead = serde_json::from_str(&text)
                .with_context(|| format!("the receipt {name} is not a signed tree head {{tree_size, root_hash, timestamp, key_id, signature}}"))?;
            let key = match public_key {
                Some(b64) => merkle::public_key_from_base64(&b64)?,
                None => audit_log::read_signing_key(&key_file)
                    .map_err(|e| anyhow::anyhow!("AUDIT_SIGNING_KEY_FILE: {e} (or give --public-key)"))?
                    .verifying_key(),
            };
            let report = replay_tools::audit_log::verify_receipt(pool, &name, &head, &key).await?;
            print_json(&report)?;
            if !report.ok {
                eprintln!(
                    "FAILED receipt {name} (tree_size {}): {}",
                    report.tree_size,
                    report.problems.join("; ")
                );
                match &report.first_mismatching_head {
                    Some(h) => eprintln!(
                        "the first signed tree head that no longer matches: tree_size {} signed at {} (root {})",
                        h.tree_size, h.timestamp, h.root_hash
                    ),
                    None => eprintln!("no stored signed tree head was found not to match"),
                }
                return Ok(1);
            }
            eprintln!(
                "receipt {name}: the log still extends it ({} events checked)",
                report.events_checked
            );
        }
    }
    Ok(0)
}

async fn billing_ride_with_proof(pool: &PgPool, ride_id: Uuid) -> anyhow::Result<i32> {
    let Some(b) = billing::ride(pool, ride_id).await? else {
        println!("no events for ride {ride_id}");
        return Ok(1);
    };
    let head = latest_head(pool).await?;
    let rows: Vec<(i64, i64, String, Vec<u8>, i16)> = sqlx::query_as(
        "SELECT position, sequence, event_type, hash, hash_version FROM events \
         WHERE aggregate_type = 'ride' AND aggregate_id = $1 ORDER BY sequence",
    )
    .bind(ride_id)
    .fetch_all(pool)
    .await?;
    let mut events = Vec::with_capacity(rows.len());
    for (position, sequence, event_type, hash, hash_version) in rows {
        let inclusion = if position as u64 <= head.tree_size {
            Some(
                projections::audit_log::prove_inclusion(pool, position as u64 - 1, head.tree_size)
                    .await?
                    .0,
            )
        } else {
            None
        };
        events.push(serde_json::json!({
            "position": position,
            "sequence": sequence,
            "event_type": event_type,
            "hash": domain::merkle::to_hex(&hash),
            "hash_version": hash_version,
            "inclusion": inclusion,
        }));
    }
    print_json(&serde_json::json!({
        "ride_id": ride_id,
        "billing": b,
        "tree_head": head,
        "events": events,
    }))?;
    Ok(if b.differences.is_empty() { 0 } else { 1 })
}
