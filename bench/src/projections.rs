//! `bench projections`: rebuilding the rides read models and the auditors' `verify`
//! over at least a million events, each beside the raw PostgreSQL rate for the same
//! work measured in the same run; then projection lag while the command pipeline runs.
//!
//! 1. **Store.** Rides are decided by the real domain (create, start, 10 trip points,
//!    arrive, pay — 15 events; every 7th ride declines once before paying, every 11th
//!    is cancelled), hashed exactly as the pipeline hashes them, and loaded with `COPY`
//!    (the pipeline would take minutes to append a million events; what is measured
//!    here is reading them).
//! 2. **Rebuild** (`projections::rebuild`, shadow tables switched in) of `rides`,
//!    `billing_ledger` and `payments`, beside a raw `COPY` of the same number of rows
//!    into tables shaped like them: `ratio rebuild_vs_copy` is the raw COPY's time ÷
//!    the rebuild's.
//! 3. **Verify** (`replay_tools::audit::verify`: every hash chain, the fold, the diff),
//!    beside a raw read of the same event rows: `ratio verify_vs_read`.
//! 4. **Lag.** The projectors run (`projections::run`) while 32 tasks drive rides
//!    through the command pipeline; every 20 ms the head is sampled, and the time until
//!    the rides projector's checkpoint passes it is its lag.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use commands::clock::{new_id, Clock};
use commands::pipeline::{split_event, Handler};
use commands::EventStore;
use domain::chain::{event_hash, HashedFields, GENESIS};
use domain::ride::{PaymentOutcome, Ride, RideCommand};
use domain::{Aggregate, Context, DomainEvent, Policy, RideId, Rupiah};
use futures::TryStreamExt;
use projections::rows::{copy_line, hex};
use projections::{MatchesProjector, Projector, RidesProjector};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::pipeline::{actor_of, fresh_database, ride_script, run_ours, FastForwardClock};
use crate::report::histogram;

/// Rows of `events` and `streams` for `rides` rides, as COPY text.
struct Generated {
    events: Vec<String>,
    streams: String,
    count: i64,
}

/// The script of ride `i`: the benchmark's lifecycle, with declines and cancellations.
fn script(i: usize, ride_id: RideId) -> Vec<RideCommand> {
    let mut script = ride_script(ride_id);
    if i.is_multiple_of(11) {
        // Cancelled while PENDING: keep create, then cancel.
        let driver = actor_of(&script[1]);
        script.truncate(1);
        script.push(RideCommand::Cancel {
            actor: driver,
            reason: "passenger not at pickup".into(),
        });
    } else if i.is_multiple_of(7) {
        let pay = script.len() - 1;
        let passenger = actor_of(&script[pay]);
        script.insert(
            pay,
            RideCommand::Pay {
                actor: passenger,
                amount: Rupiah::new(5000),
                outcome: PaymentOutcome::Declined,
            },
        );
    }
    script
}

/// Decides `target` events' worth of rides with the domain and renders them.
fn generate(target: i64, start: DateTime<Utc>) -> anyhow::Result<Generated> {
    let policy = Policy::default();
    let mut events = Vec::new();
    let mut chunk = String::with_capacity(8 << 20);
    let mut streams = String::new();
    let mut position = 0i64;
    let mut i = 0usize;
    while position < target {
        let ride_id = RideId::from_uuid(new_id());
        let id_text = ride_id.to_string();
        let mut state = Ride::default();
        let mut prev = GENESIS.to_vec();
        let mut sequence = 0i64;
        let mut now = start + TimeDelta::seconds(i as i64);
        for command in script(i, ride_id) {
            let actor = actor_of(&command);
            let decided = state
                .decide(&command, &Context { now, policy: &policy })
                .map_err(|e| anyhow::anyhow!("the bench script was refused: {e}"))?;
            let recorded_at = now.to_rfc3339_opts(SecondsFormat::Micros, true);
            for event in &decided {
                sequence += 1;
                position += 1;
                let (event_type, payload) = split_event(event);
                let metadata = json!({
                    "event_id": new_id(),
                    "command_id": format!("{ride_id}-{sequence}"),
                    "correlation_id": new_id(),
                    "causation_id": null,
                    "actor": { "user_id": actor.user_id, "role": actor.role },
                    "recorded_at": recorded_at,
                });
                let version = i32::from(event.event_version());
                let hash = event_hash(
                    &prev,
                    &HashedFields {
                        aggregate_type: "ride",
                        aggregate_id: &id_text,
                        sequence,
                        event_type,
                        event_version: version,
                        payload: &payload,
                        metadata: &metadata,
                    },
                );
                prev = hash.to_vec();
                copy_line(
                    &mut chunk,
                    &[
                        Some(position.to_string()),
                        Some("ride".into()),
                        Some(id_text.clone()),
                        Some(sequence.to_string()),
                        Some(event_type.to_owned()),
                        Some(version.to_string()),
                        Some(payload.to_string()),
                        Some(metadata.to_string()),
                        Some(recorded_at.clone()),
                        Some(hex(&hash)),
                    ],
                );
                state.evolve(event);
            }
            now += TimeDelta::seconds(10);
        }
        copy_line(
            &mut streams,
            &[
                Some("ride".into()),
                Some(id_text),
                Some(sequence.to_string()),
                Some(hex(&prev)),
                Some(now.to_rfc3339_opts(SecondsFormat::Micros, true)),
            ],
        );
        if chunk.len() > (8 << 20) {
            events.push(std::mem::take(&mut chunk));
        }
        i += 1;
    }
    events.push(chunk);
    Ok(Generated {
        events,
        streams,
        count: position,
    })
}

async fn load(pool: &PgPool, generated: Generated) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    for chunk in generated.events {
        let mut sink = conn
            .copy_in_raw(
                "COPY events (position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                 payload, metadata, recorded_at, hash) FROM STDIN",
            )
            .await?;
        sink.send(chunk.into_bytes()).await?;
        sink.finish().await?;
    }
    let mut sink = conn
        .copy_in_raw("COPY streams (aggregate_type, aggregate_id, version, head_hash, updated_at) FROM STDIN")
        .await?;
    sink.send(generated.streams.into_bytes()).await?;
    sink.finish().await?;
    sqlx::query("UPDATE event_store SET head_position = $1")
        .bind(generated.count)
        .execute(&mut *conn)
        .await?;
    sqlx::query("ANALYZE events").execute(&mut *conn).await?;
    Ok(())
}

/// Reads every event row, the way a reader of the feed would, without interpreting it:
/// each column decoded by position, text and bytes borrowed from the row (the cheapest
/// access sqlx offers, the same `verify` uses), nothing kept.
async fn raw_read(pool: &PgPool) -> anyhow::Result<(u64, Duration)> {
    use sqlx::Row as _;
    let started = Instant::now();
    let mut rows = sqlx::query(
        "SELECT position, aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text, \
         metadata::text, recorded_at, hash FROM events ORDER BY position",
    )
    .fetch(pool);
    let mut n = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        n += 1;
        let _: i64 = row.try_get(0)?;
        bytes += row.try_get::<&str, _>(1)?.len();
        let _: uuid::Uuid = row.try_get(2)?;
        let _: i64 = row.try_get(3)?;
        bytes += row.try_get::<&str, _>(4)?.len();
        let _: i32 = row.try_get(5)?;
        bytes += row.try_get::<&str, _>(6)?.len() + row.try_get::<&str, _>(7)?.len();
        let _: DateTime<Utc> = row.try_get(8)?;
        bytes += row.try_get::<&[u8], _>(9)?.len();
    }
    std::hint::black_box(bytes);
    Ok((n, started.elapsed()))
}

/// COPYs the live rides tables' rows into fresh tables shaped like them; returns the
/// rows and the time the COPY FROM took.
async fn raw_copy(pool: &PgPool) -> anyhow::Result<(u64, Duration)> {
    projections::rebuild::create_shadow(pool, "bench_copy", &["rides", "billing_ledger", "payments"]).await?;
    let mut conn = pool.acquire().await?;
    let mut data = Vec::new();
    for table in ["rides", "billing_ledger", "payments"] {
        let mut out = Vec::new();
        let mut stream = conn.copy_out_raw(&format!("COPY {table} TO STDOUT")).await?;
        while let Some(chunk) = stream.try_next().await? {
            out.extend_from_slice(&chunk);
        }
        drop(stream);
        data.push((table, out));
    }
    let started = Instant::now();
    let mut rows = 0;
    for (table, bytes) in data {
        let mut sink = conn
            .copy_in_raw(&format!("COPY bench_copy.{table} FROM STDIN"))
            .await?;
        for piece in bytes.chunks(4 << 20) {
            sink.send(piece.to_vec()).await?;
        }
        rows += sink.finish().await?;
    }
    let elapsed = started.elapsed();
    sqlx::query("DROP SCHEMA bench_copy CASCADE")
        .execute(&mut *conn)
        .await?;
    Ok((rows, elapsed))
}

async fn lag_under_load(database_url: &str, duration: Duration) -> anyhow::Result<(u64, u64, u64, u64, f64)> {
    let url = fresh_database(database_url, "nebengjek_bench_lag").await?;
    let pool = PgPoolOptions::new().max_connections(16).connect(&url).await?;
    migrations::run(&pool).await?;
    let clock: Arc<dyn Clock> = Arc::new(FastForwardClock::new());
    let handler = Arc::new(Handler::<Ride>::new(
        EventStore::start(pool.clone()),
        Arc::new(Policy::default()),
        clock,
        100_000,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projectors: Vec<Arc<dyn Projector>> = vec![Arc::new(RidesProjector), Arc::new(MatchesProjector)];
    let runner = tokio::spawn(projections::run(pool.clone(), projectors, stopped));
    let load = tokio::spawn(run_ours(handler, 32, duration));

    let mut ms = histogram();
    let mut events = histogram();
    let mut waiting: VecDeque<(Instant, i64)> = VecDeque::new();
    let end = Instant::now() + duration;
    while Instant::now() < end || !waiting.is_empty() {
        let head = migrations::head_position(&pool).await?;
        let at = projections::runtime::checkpoint(&pool, RidesProjector::NAME).await?;
        let now = Instant::now();
        events.record((head - at).max(0) as u64).ok();
        if Instant::now() < end {
            waiting.push_back((now, head));
        }
        while waiting.front().is_some_and(|(_, h)| *h <= at) {
            if let Some((t, _)) = waiting.pop_front() {
                ms.record(now.duration_since(t).as_millis() as u64 + 1).ok();
            }
        }
        if Instant::now() > end + Duration::from_secs(30) {
            anyhow::bail!("the projector did not catch up within 30 s of the load ending");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = load.await??;
    stop.send(true).ok();
    let _ = tokio::time::timeout(Duration::from_secs(5), runner).await;
    pool.close().await;
    Ok((
        ms.value_at_quantile(0.5),
        ms.value_at_quantile(0.99),
        events.value_at_quantile(0.5),
        events.value_at_quantile(0.99),
        stats.rate(),
    ))
}

/// Runs the suite.
pub async fn run(database_url: &str, quick: bool, events: i64) -> anyhow::Result<()> {
    let url = fresh_database(database_url, "nebengjek_bench_projections").await?;
    let pool = PgPoolOptions::new().max_connections(8).connect(&url).await?;
    migrations::run(&pool).await?;

    println!(
        "## projections: rebuild and verify over {events} events, against raw PostgreSQL in the same run"
    );
    println!();
    let t = Instant::now();
    // Times to the microsecond, as the system's clock gives them (PostgreSQL keeps no more).
    let start = commands::clock::to_micros(Utc::now() - TimeDelta::days(2));
    let generated = tokio::task::spawn_blocking(move || generate(events, start)).await??;
    let count = generated.count;
    let generated_in = t.elapsed();
    let t = Instant::now();
    load(&pool, generated).await?;
    println!(
        "store: {count} events decided and hashed in {:.1} s, loaded with COPY in {:.1} s",
        generated_in.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    projections::rebuild::rebuild(&pool, &RidesProjector, &|_, _| {}).await?;
    let rebuild = t.elapsed();
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM rides) + (SELECT count(*) FROM billing_ledger) + (SELECT count(*) FROM payments)",
    )
    .fetch_one(&pool)
    .await?;
    let (copied, copy) = raw_copy(&pool).await?;
    anyhow::ensure!(
        copied as i64 == rows,
        "the raw COPY wrote {copied} rows, the rebuild {rows}"
    );

    let t = Instant::now();
    let report = replay_tools::audit::verify(&pool, None, false, &|_, _| {}).await?;
    let verify = t.elapsed();
    anyhow::ensure!(
        report.passed(),
        "verify failed on the generated store: {} chain breaks, {} row differences, first: {:?}",
        report.chain_breaks.len(),
        report.row_diffs.len(),
        report.row_diffs.first()
    );
    let (read_rows, read) = raw_read(&pool).await?;
    anyhow::ensure!(
        read_rows as i64 == count,
        "the raw read saw {read_rows} of {count} events"
    );

    let per_s = |n: f64, d: Duration| n / d.as_secs_f64().max(1e-9);
    println!();
    println!("| work | what | time s | events/s | rows/s |");
    println!("| --- | --- | ---: | ---: | ---: |");
    println!(
        "| rebuild rides + billing_ledger + payments | ours | {:.2} | {:.0} | {:.0} |",
        rebuild.as_secs_f64(),
        per_s(count as f64, rebuild),
        per_s(rows as f64, rebuild)
    );
    println!(
        "| COPY of the same {rows} read-model rows | raw PostgreSQL | {:.2} | | {:.0} |",
        copy.as_secs_f64(),
        per_s(rows as f64, copy)
    );
    println!(
        "| verify: chains + fold + diff | ours | {:.2} | {:.0} | |",
        verify.as_secs_f64(),
        per_s(count as f64, verify)
    );
    println!(
        "| read of the same {count} event rows | raw PostgreSQL | {:.2} | {:.0} | |",
        read.as_secs_f64(),
        per_s(count as f64, read)
    );

    let lag_for = Duration::from_secs(if quick { 10 } else { 30 });
    let (p50_ms, p99_ms, p50_ev, p99_ev, rate) = lag_under_load(database_url, lag_for).await?;
    println!();
    println!(
        "projection lag while the pipeline runs at 32 tasks ({rate:.0} commands/s, {} s): \
         p50 {p50_ms} ms / p99 {p99_ms} ms; p50 {p50_ev} / p99 {p99_ev} events behind",
        lag_for.as_secs()
    );
    println!();
    println!("p99_ms projection_lag {p99_ms}");
    println!(
        "ratio rebuild_vs_copy {:.2}",
        copy.as_secs_f64() / rebuild.as_secs_f64().max(1e-9)
    );
    println!(
        "ratio verify_vs_read {:.2}",
        read.as_secs_f64() / verify.as_secs_f64().max(1e-9)
    );
    pool.close().await;
    Ok(())
}
