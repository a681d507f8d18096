//! `bench pipeline`: the ride lifecycle (create, start, 10 trip points, arrive, pay)
//! through our command pipeline and through cqrs-es + postgres-es, at 1, 32 and 128
//! concurrent tasks, interleaved in one run; then the raw PostgreSQL ceiling: multi-row
//! INSERTs of the same event rows from 32 connections.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use commands::clock::{new_id, Clock};
use commands::pipeline::{Envelope, Handler, Outcome};
use commands::EventStore;
use domain::ride::{PaymentOutcome, Ride, RideCommand};
use domain::{Actor, GeoPoint, MatchId, Policy, RideId, Role, Rupiah, UserId};
use postgres_es::postgres_cqrs;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use crate::cqrs_baseline::{CqrsRide, Services};
use crate::report::{histogram, row, RunStats};

/// A clock that moves 10 s forward on every reading: trip points decided one after
/// another are then seconds apart, as they are on the road, however fast the bench runs.
#[derive(Debug)]
pub(crate) struct FastForwardClock {
    micros: AtomicI64,
}

impl FastForwardClock {
    pub(crate) fn new() -> Self {
        Self {
            micros: AtomicI64::new(Utc::now().timestamp_micros()),
        }
    }
}

impl Clock for FastForwardClock {
    fn now(&self) -> DateTime<Utc> {
        let t = self.micros.fetch_add(10_000_000, Ordering::Relaxed);
        DateTime::from_timestamp_micros(t).unwrap_or_else(Utc::now)
    }
}

/// The commands of one ride, in order, with the actor who sends each.
pub(crate) fn ride_script(ride_id: RideId) -> Vec<RideCommand> {
    let driver = UserId::from_uuid(new_id());
    let passenger = UserId::from_uuid(new_id());
    let pickup = GeoPoint::new(-6.2, 106.8).unwrap_or_else(|_| unreachable!("a valid point"));
    let destination = GeoPoint::new(-6.17, 106.82).unwrap_or_else(|_| unreachable!("a valid point"));
    let driver_actor = Actor::new(driver, Role::Driver);
    let mut script = vec![
        RideCommand::Create {
            ride_id,
            match_id: MatchId::from_uuid(new_id()),
            driver_id: driver,
            passenger_id: passenger,
            pickup,
            destination,
        },
        RideCommand::Start {
            actor: driver_actor,
            driver_position: Some(pickup),
            passenger_position: Some(pickup),
        },
    ];
    for k in 1..=10 {
        // ~150 m north per point: 1.5 km in all, so the fare is the minimum, 5000.
        let point = GeoPoint::new(-6.2 + 0.00135 * f64::from(k), 106.8).unwrap_or(pickup);
        script.push(RideCommand::RecordTripPoint {
            actor: driver_actor,
            point,
            recorded_at: None,
        });
    }
    script.push(RideCommand::Arrive {
        actor: driver_actor,
        adjustment_factor: None,
    });
    script.push(RideCommand::Pay {
        actor: Actor::new(passenger, Role::Passenger),
        amount: Rupiah::new(5000),
        outcome: PaymentOutcome::Charged {
            provider_ref: "bench".into(),
        },
    });
    script
}

pub(crate) fn actor_of(command: &RideCommand) -> Actor {
    match command {
        RideCommand::Create { .. } => Actor::SYSTEM,
        RideCommand::Start { actor, .. }
        | RideCommand::RecordTripPoint { actor, .. }
        | RideCommand::Arrive { actor, .. }
        | RideCommand::Pay { actor, .. }
        | RideCommand::Cancel { actor, .. } => *actor,
    }
}

const COMMANDS_PER_RIDE: u64 = 14;

pub(crate) async fn run_ours(
    handler: Arc<Handler<Ride>>,
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<RunStats> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let handler = handler.clone();
        joins.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let ride_id = RideId::from_uuid(new_id());
                for (i, command) in ride_script(ride_id).iter().enumerate() {
                    let env = Envelope::from_user(actor_of(command), Some(&format!("{ride_id}-{i}")));
                    let t = Instant::now();
                    let outcome = handler.execute(ride_id.as_uuid(), &env, command).await?;
                    hist.record(t.elapsed().as_micros() as u64).ok();
                    if let Outcome::Refused(e) = outcome {
                        anyhow::bail!("our pipeline refused {i}: {e}");
                    }
                    ops += 1;
                }
            }
            Ok::<_, anyhow::Error>((ops, hist))
        }));
    }
    collect(joins, started).await
}

async fn run_cqrs(
    cqrs: Arc<postgres_es::PostgresCqrs<CqrsRide>>,
    tasks: usize,
    duration: Duration,
) -> anyhow::Result<RunStats> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..tasks {
        let cqrs = cqrs.clone();
        joins.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let ride_id = RideId::from_uuid(new_id());
                let id = ride_id.to_string();
                for (i, command) in ride_script(ride_id).into_iter().enumerate() {
                    let t = Instant::now();
                    cqrs.execute(&id, command)
                        .await
                        .map_err(|e| anyhow::anyhow!("cqrs-es refused {i}: {e}"))?;
                    hist.record(t.elapsed().as_micros() as u64).ok();
                    ops += 1;
                }
            }
            Ok::<_, anyhow::Error>((ops, hist))
        }));
    }
    collect(joins, started).await
}

type TaskResult = anyhow::Result<(u64, hdrhistogram::Histogram<u64>)>;

async fn collect(
    joins: Vec<tokio::task::JoinHandle<TaskResult>>,
    started: Instant,
) -> anyhow::Result<RunStats> {
    let mut latency_us = histogram();
    let mut ops = 0;
    for join in joins {
        let (n, h) = join.await??;
        ops += n;
        latency_us.add(&h).ok();
    }
    Ok(RunStats {
        ops,
        elapsed: started.elapsed(),
        latency_us,
    })
}

/// The server's `postgres` database, for creating and dropping others.
pub(crate) fn admin_url(url: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/postgres")
}

/// Drops and recreates a database on the server of `url`; returns its URL.
pub(crate) async fn fresh_database(url: &str, name: &str) -> anyhow::Result<String> {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    let mut admin = PgConnection::connect(&format!("{base}/postgres")).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    Ok(format!("{base}/{name}"))
}

const POSTGRES_ES_SCHEMA: &str = "
CREATE TABLE events (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL,
    sequence bigint CHECK (sequence >= 0) NOT NULL, event_type text NOT NULL,
    event_version text NOT NULL, payload json NOT NULL, metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence));
CREATE TABLE snapshots (
    aggregate_type text NOT NULL, aggregate_id text NOT NULL,
    last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL, payload json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence));";

/// Multi-row INSERTs of ride-sized event batches into a copy of our `events` table from
/// `connections` connections; returns events/s.
async fn raw_ceiling(pool: &PgPool, connections: usize, duration: Duration) -> anyhow::Result<RunStats> {
    sqlx::query("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        .execute(pool)
        .await?;
    let next = Arc::new(AtomicI64::new(1));
    let sample: (serde_json::Value, serde_json::Value) = sqlx::query_as(
        "SELECT payload, metadata FROM events WHERE event_type = 'trip_point_recorded' LIMIT 1",
    )
    .fetch_one(pool)
    .await?;
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut joins = Vec::new();
    for _ in 0..connections {
        let (pool, next, sample) = (pool.clone(), next.clone(), sample.clone());
        joins.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ops = 0u64;
            while Instant::now() < deadline {
                let n = COMMANDS_PER_RIDE as i64;
                let first = next.fetch_add(n, Ordering::Relaxed);
                let id = new_id();
                let positions: Vec<i64> = (first..first + n).collect();
                let sequences: Vec<i64> = (1..=n).collect();
                let t = Instant::now();
                sqlx::query(
                    "INSERT INTO raw_events (position, aggregate_type, aggregate_id, sequence, event_type, \
                     event_version, payload, metadata, recorded_at, hash) \
                     SELECT p, 'ride', $2, s, 'trip_point_recorded', 1, $3, \
                     jsonb_set($4, '{event_id}', to_jsonb(gen_random_uuid())), now(), '\\x00'::bytea \
                     FROM UNNEST($1::bigint[], $5::bigint[]) AS x(p, s)",
                )
                .bind(&positions)
                .bind(id)
                .bind(&sample.0)
                .bind(&sample.1)
                .bind(&sequences)
                .execute(&pool)
                .await?;
                hist.record(t.elapsed().as_micros() as u64).ok();
                ops += n as u64;
            }
            Ok::<_, anyhow::Error>((ops, hist))
        }));
    }
    collect(joins, started).await
}

/// Runs the suite.
pub async fn run(
    database_url: &str,
    quick: bool,
    task_counts: &[usize],
    ours_only: bool,
) -> anyhow::Result<()> {
    let duration = Duration::from_secs(if quick { 8 } else { 20 });
    let ours_url = fresh_database(database_url, "nebengjek_bench_pipeline").await?;
    let theirs_url = fresh_database(database_url, "nebengjek_bench_cqrs").await?;

    let ours_pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&ours_url)
        .await?;
    migrations::run(&ours_pool).await?;
    let clock: Arc<dyn Clock> = Arc::new(FastForwardClock::new());
    let store = EventStore::start(ours_pool.clone());
    let handler = Arc::new(Handler::<Ride>::new(
        store,
        Arc::new(Policy::default()),
        clock.clone(),
        100_000,
    ));

    let theirs_pool = PgPoolOptions::new()
        .max_connections(64)
        .connect(&theirs_url)
        .await?;
    sqlx::raw_sql(POSTGRES_ES_SCHEMA).execute(&theirs_pool).await?;
    let cqrs = Arc::new(postgres_cqrs(
        theirs_pool.clone(),
        vec![],
        Services {
            clock: clock.clone(),
            policy: Policy::default(),
        },
    ));

    println!(
        "## pipeline: ride lifecycle, {COMMANDS_PER_RIDE} commands per ride, {}s per run",
        duration.as_secs()
    );
    println!();
    row(&["tasks", "system", "commands/s", "p50 µs", "p99 µs"].map(String::from));
    row(&["---", "---", "---:", "---:", "---:"].map(String::from));
    let mut ratios = Vec::new();
    for &tasks in task_counts {
        let ours = run_ours(handler.clone(), tasks, duration).await?;
        if ours_only {
            row(&[
                tasks.to_string(),
                "nebengjek".into(),
                format!("{:.0}", ours.rate()),
                ours.p(0.5).to_string(),
                ours.p(0.99).to_string(),
            ]);
            continue;
        }
        let theirs = run_cqrs(cqrs.clone(), tasks, duration).await?;
        for (name, s) in [("nebengjek", &ours), ("cqrs-es + postgres-es", &theirs)] {
            row(&[
                tasks.to_string(),
                name.to_string(),
                format!("{:.0}", s.rate()),
                s.p(0.5).to_string(),
                s.p(0.99).to_string(),
            ]);
        }
        ratios.push((
            format!("pipeline_{tasks}"),
            ours.rate() / theirs.rate(),
            ours.p(0.99),
            theirs.p(0.99),
            ours.rate(),
        ));
    }
    let ceiling = raw_ceiling(&ours_pool, 32, duration).await?;
    let ours_events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&ours_pool)
        .await?;
    println!();
    println!(
        "raw PostgreSQL ceiling (multi-row INSERT of {COMMANDS_PER_RIDE} event rows, 32 connections): {:.0} events/s, p99 {} µs per INSERT",
        ceiling.rate(),
        ceiling.p(0.99)
    );
    println!("events appended by our pipeline in this run: {ours_events}");
    println!();
    if let Some(best) = ratios.iter().map(|r| r.4).reduce(f64::max) {
        // Each ride is 14 commands and 15 events (the payment also completes the ride).
        let events_per_s = best * 15.0 / COMMANDS_PER_RIDE as f64;
        println!(
            "our best: {events_per_s:.0} events/s = {:.0}% of the raw INSERT ceiling",
            100.0 * events_per_s / ceiling.rate()
        );
    }
    for (name, ratio, ours_p99, theirs_p99, _) in &ratios {
        println!("p99_us {name} ours={ours_p99} baseline={theirs_p99}");
        println!("ratio {name} {ratio:.2}");
    }
    ours_pool.close().await;
    theirs_pool.close().await;
    Ok(())
}
