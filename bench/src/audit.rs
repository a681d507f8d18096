//! `bench audit`: what the Merkle audit log costs (ADR 0007).
//!
//! On a database of its own filled with `events` synthetic events (only a position
//! and a hash matter to the tree):
//! - the tree over all of them built in memory (`domain::merkle::Frontier`), leaves/s:
//!   the hashing alone;
//! - the stored tree built from scratch by the signer (`Signer::catch_up`: read the
//!   events in position order, append, write every completed node, sign one head), in
//!   events/s and as the maintenance cost per event (µs), the signer's share of an
//!   append;
//! - inclusion and consistency proof latency (p50, p99) at that size, each proof read
//!   from the stored nodes in one query and verified.

use std::time::{Duration, Instant};

use domain::merkle::{leaf_hash, Frontier};
use projections::audit_log::{AuditConfig, Signer};
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;

use crate::report::{histogram, row};

/// Runs the suite.
pub async fn run(database_url: &str, quick: bool, events: i64) -> anyhow::Result<()> {
    let url = crate::pipeline::fresh_database(database_url, "nebengjek_bench_audit").await?;
    let pool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
    migrations::run(&pool).await?;
    println!("bench audit: {events} events");
    let filled = Instant::now();
    sqlx::query(
        "INSERT INTO events (position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata, recorded_at, hash) \
         SELECT i, 'bench', gen_random_uuid(), 1, 'x', 1, '{}', '{}', now(), sha256(int8send(i)) \
         FROM generate_series(1, $1::bigint) AS i",
    )
    .bind(events)
    .execute(&pool)
    .await?;
    sqlx::query("UPDATE event_store SET head_position = $1")
        .bind(events)
        .execute(&pool)
        .await?;
    println!("  filled in {:.1} s", filled.elapsed().as_secs_f64());

    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM events ORDER BY position")
        .fetch_all(&pool)
        .await?;
    let started = Instant::now();
    let mut frontier = Frontier::new();
    for h in &hashes {
        frontier.push(leaf_hash(h), |_, _| {});
    }
    let memory = started.elapsed();
    drop(hashes);

    let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
    let signer = Signer::new(pool.clone(), None, key, AuditConfig::default()).await?;
    let started = Instant::now();
    let step = signer.catch_up().await?;
    let stored = started.elapsed();
    anyhow::ensure!(
        step.size == events as u64,
        "the signer built {} leaves",
        step.size
    );
    let head = projections::audit_log::stored_head(&pool, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no head signed"))?;
    anyhow::ensure!(
        head.root()? == frontier.root(),
        "the stored tree's root is the in-memory one"
    );

    let samples = if quick { 200 } else { 1000 };
    let size = events as u64;
    let root = frontier.root();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut inclusion, mut consistency) = (histogram(), histogram());
    for _ in 0..samples {
        let index = rng.gen_range(0..size);
        let t = Instant::now();
        let (proof, _) = projections::audit_log::prove_inclusion(&pool, index, size).await?;
        proof.verify(&root)?;
        inclusion.record(t.elapsed().as_micros() as u64)?;
        let first = rng.gen_range(1..=size);
        let t = Instant::now();
        let proof = projections::audit_log::prove_consistency(&pool, first, size).await?;
        consistency.record(t.elapsed().as_micros() as u64)?;
        let first_root = projections::audit_log::root_at(&pool, first).await?;
        proof.verify(&first_root, &root)?;
    }
    let per_s = |d: Duration| events as f64 / d.as_secs_f64().max(1e-9);
    row(&["what".into(), "result".into()]);
    row(&["tree in memory, leaves/s".into(), format!("{:.0}", per_s(memory))]);
    row(&[
        "stored tree from scratch (signer), events/s".into(),
        format!("{:.0}", per_s(stored)),
    ]);
    row(&[
        "maintenance per event, µs".into(),
        format!("{:.2}", stored.as_secs_f64() * 1e6 / events as f64),
    ]);
    row(&[
        "inclusion proof p50 / p99, µs".into(),
        format!(
            "{} / {}",
            inclusion.value_at_quantile(0.5),
            inclusion.value_at_quantile(0.99)
        ),
    ]);
    row(&[
        "consistency proof p50 / p99, µs".into(),
        format!(
            "{} / {}",
            consistency.value_at_quantile(0.5),
            consistency.value_at_quantile(0.99)
        ),
    ]);
    pool.close().await;
    let mut admin =
        <sqlx::PgConnection as sqlx::Connection>::connect(&crate::pipeline::admin_url(database_url)).await?;
    sqlx::query("DROP DATABASE IF EXISTS nebengjek_bench_audit WITH (FORCE)")
        .execute(&mut admin)
        .await?;
    Ok(())
}
