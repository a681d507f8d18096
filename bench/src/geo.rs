//! `bench geo`: the two hot paths of matching, each against the plain Redis approach in
//! the same run.
//!
//! 1. **Nearest 5** among 100,000 online drivers spread uniformly over Jakarta (lat
//!    -6.4..-6.1, lon 106.7..107.0), within 5 km of a random pickup in the same box:
//!    the matcher's in-process grid (`commands::nearest::GridIndex`, with the same
//!    per-candidate freshness check the matcher makes) versus `GEOSEARCH key FROMLONLAT
//!    lon lat BYRADIUS 5 km ASC COUNT 5` on one GEO key holding the same drivers — from
//!    one task, and from 16 concurrent tasks (the baseline's best is the one compared).
//! 2. **Location ingest** into the Redis index: the same pings are published once to a
//!    JetStream stream of their own; then our consumer (`projections::location::run`:
//!    durable, batches of up to 1000 pings per Lua script, one ack per batch) drains
//!    them into the index, and a plain consumer of the same stream drains them with one
//!    `GEOADD` + `HSET` round trip (pipelined together) and one ack per ping. Both
//!    rates are from the first message to the last ping visible in Redis. The publish
//!    rate is printed too.
//!
//! Closing lines: `ratio nearest5_qps`, `ratio ingest`, `p99_us nearest5`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use chrono::Utc;
use commands::nearest::GridIndex;
use domain::location::Ping;
use domain::{GeoPoint, UserId};
use futures::StreamExt;
use projections::geo::{GeoIndex, GeoKeys};
use projections::location::{GeoProjection, LocationPublisher};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use crate::report::{histogram, row, RunStats};

const DRIVERS: usize = 100_000;
const RADIUS_KM: f64 = 5.0;

fn jakarta(rng: &mut StdRng) -> GeoPoint {
    GeoPoint::new(rng.gen_range(-6.4..-6.1), rng.gen_range(106.7..107.0))
        .unwrap_or_else(|_| unreachable!("inside Jakarta's box"))
}

/// Connection settings of the suite.
#[derive(Debug, Clone)]
pub struct Targets {
    /// PostgreSQL server (a database of its own is created and dropped).
    pub database_url: String,
    /// Redis.
    pub redis_url: String,
    /// NATS.
    pub nats_url: String,
}

fn ours_nearest(index: &GridIndex, seen: &HashMap<UserId, i64>, duration: Duration, seed: u64) -> RunStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut latency_us = histogram();
    let mut ops = 0u64;
    let mut found = 0usize;
    let cutoff = 0;
    let start = Instant::now();
    while start.elapsed() < duration {
        let q = jakarta(&mut rng);
        let t = Instant::now();
        let r = index.nearest(&q, RADIUS_KM, 5, |d| seen.get(&d).is_some_and(|at| *at >= cutoff));
        let us = t.elapsed().as_nanos().div_ceil(1000) as u64;
        let _ = latency_us.record(us.max(1));
        found += r.len();
        ops += 1;
    }
    assert!(found > 0, "the grid found nobody");
    RunStats {
        ops,
        elapsed: start.elapsed(),
        latency_us,
    }
}

async fn plain_nearest(
    conn: &redis::aio::MultiplexedConnection,
    key: &str,
    tasks: usize,
    duration: Duration,
    seed: u64,
) -> anyhow::Result<RunStats> {
    let start = Instant::now();
    let runs = futures::future::join_all((0..tasks).map(|t| {
        let (mut conn, key) = (conn.clone(), key.to_owned());
        async move {
            let mut rng = StdRng::seed_from_u64(seed + t as u64);
            let mut latency_us = histogram();
            let mut ops = 0u64;
            let mut found_total = 0usize;
            while start.elapsed() < duration {
                let q = jakarta(&mut rng);
                let t = Instant::now();
                let found: Vec<String> = redis::cmd("GEOSEARCH")
                    .arg(&key)
                    .arg("FROMLONLAT")
                    .arg(q.lon())
                    .arg(q.lat())
                    .arg("BYRADIUS")
                    .arg(RADIUS_KM)
                    .arg("km")
                    .arg("ASC")
                    .arg("COUNT")
                    .arg(5)
                    .query_async(&mut conn)
                    .await?;
                let _ = latency_us.record((t.elapsed().as_micros() as u64).max(1));
                found_total += found.len();
                ops += 1;
            }
            anyhow::ensure!(found_total > 0, "GEOSEARCH found nobody");
            Ok::<_, anyhow::Error>((ops, latency_us))
        }
    }))
    .await;
    let mut latency_us = histogram();
    let mut ops = 0;
    for r in runs {
        let (n, h) = r?;
        ops += n;
        latency_us.add(&h)?;
    }
    Ok(RunStats {
        ops,
        elapsed: start.elapsed(),
        latency_us,
    })
}

async fn zcard(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> anyhow::Result<usize> {
    Ok(redis::cmd("ZCARD").arg(key).query_async(conn).await?)
}

async fn hlen(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> anyhow::Result<usize> {
    Ok(redis::cmd("HLEN").arg(key).query_async(conn).await?)
}

/// The plain consumer: one `GEOADD` + `HSET` round trip and one ack per ping.
async fn plain_ingest(
    stream: &jetstream::stream::Stream,
    conn: &redis::aio::MultiplexedConnection,
    geo_key: &str,
    hash_key: &str,
    n: usize,
) -> anyhow::Result<Duration> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(format!("plain-{}", Uuid::new_v4().simple())),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut conn = conn.clone();
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let Some(message) = messages.next().await else {
            anyhow::bail!("the plain consumer ended");
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let ping: Ping = serde_json::from_slice(&message.payload)?;
        let id = ping.driver_id.to_string();
        redis::pipe()
            .cmd("GEOADD")
            .arg(geo_key)
            .arg(ping.point.lon())
            .arg(ping.point.lat())
            .arg(&id)
            .ignore()
            .cmd("HSET")
            .arg(hash_key)
            .arg(&id)
            .arg(domain::location::encode_position(ping.point, ping.at))
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        done += 1;
    }
    Ok(start.elapsed())
}

/// Runs the suite.
pub async fn run(targets: &Targets, quick: bool) -> anyhow::Result<()> {
    let duration = Duration::from_secs(if quick { 8 } else { 20 });
    let pings_n = if quick { DRIVERS } else { 3 * DRIVERS };
    let mut rng = StdRng::seed_from_u64(42);
    let drivers: Vec<(UserId, GeoPoint)> = (0..DRIVERS)
        .map(|i| {
            (
                UserId::from_uuid(Uuid::from_u128(i as u128 + 1)),
                jakarta(&mut rng),
            )
        })
        .collect();

    // --- nearest 5 ---------------------------------------------------------------
    let mut grid = GridIndex::new();
    let now_ms = Utc::now().timestamp_millis();
    let mut seen = HashMap::with_capacity(DRIVERS);
    for (id, p) in &drivers {
        grid.upsert(*id, *p);
        seen.insert(*id, now_ms);
    }
    let client = redis::Client::open(targets.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let run_id = Uuid::new_v4().simple().to_string();
    let plain_key = format!("bench:{run_id}:drivers");
    for chunk in drivers.chunks(1000) {
        let mut cmd = redis::cmd("GEOADD");
        cmd.arg(&plain_key);
        for (id, p) in chunk {
            cmd.arg(p.lon()).arg(p.lat()).arg(id.to_string());
        }
        cmd.query_async::<()>(&mut conn).await?;
    }
    anyhow::ensure!(zcard(&mut conn, &plain_key).await? == DRIVERS);

    println!(
        "## geo: nearest 5 within {RADIUS_KM} km among {DRIVERS} drivers over Jakarta, {}s per run",
        duration.as_secs()
    );
    println!();
    row(&[
        "what".into(),
        "queries/s".into(),
        "p50 µs".into(),
        "p99 µs".into(),
    ]);
    row(&["---".into(), "---".into(), "---".into(), "---".into()]);
    let ours = tokio::task::block_in_place(|| ours_nearest(&grid, &seen, duration, 7));
    row(&[
        "ours: in-process grid, 1 task".into(),
        format!("{:.0}", ours.rate()),
        ours.p(0.5).to_string(),
        ours.p(0.99).to_string(),
    ]);
    let plain_1 = plain_nearest(&conn, &plain_key, 1, duration, 7).await?;
    row(&[
        "plain GEOSEARCH, 1 task".into(),
        format!("{:.0}", plain_1.rate()),
        plain_1.p(0.5).to_string(),
        plain_1.p(0.99).to_string(),
    ]);
    let plain_16 = plain_nearest(&conn, &plain_key, 16, duration, 7).await?;
    row(&[
        "plain GEOSEARCH, 16 tasks".into(),
        format!("{:.0}", plain_16.rate()),
        plain_16.p(0.5).to_string(),
        plain_16.p(0.99).to_string(),
    ]);
    let best_plain = plain_1.rate().max(plain_16.rate());
    let nearest_ratio = ours.rate() / best_plain.max(1e-9);
    redis::cmd("DEL")
        .arg(&plain_key)
        .query_async::<()>(&mut conn)
        .await?;
    println!();

    // --- ingest ------------------------------------------------------------------
    let nats = async_nats::connect(&targets.nats_url).await?;
    let js = jetstream::new(nats);
    let stream_name = format!("BENCH_LOCATION_{run_id}");
    let publisher = LocationPublisher::new(js.clone(), &stream_name).await?;
    let stream = js
        .get_stream(&stream_name)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let at = Utc::now();
    let pings: Arc<Vec<Ping>> = Arc::new(
        (0..pings_n)
            .map(|i| {
                let (id, p) = drivers[i % DRIVERS];
                Ping {
                    driver_id: if i < DRIVERS {
                        id
                    } else {
                        UserId::from_uuid(Uuid::from_u128(i as u128 + 1))
                    },
                    point: p,
                    is_active: Some(true),
                    at,
                }
            })
            .collect(),
    );
    let publish_start = Instant::now();
    let publishers = 8;
    let results = futures::future::join_all((0..publishers).map(|t| {
        let (publisher, pings) = (publisher.clone(), pings.clone());
        async move {
            let mut acks = Vec::with_capacity(512);
            for ping in pings.iter().skip(t).step_by(publishers) {
                acks.push(publisher.send(ping).await?);
                if acks.len() == 512 {
                    for ack in acks.drain(..) {
                        ack.await.map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                }
            }
            for ack in acks {
                ack.await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok::<_, anyhow::Error>(())
        }
    }))
    .await;
    for r in results {
        r?;
    }
    let publish_elapsed = publish_start.elapsed();

    // Ours: the real location task over a fresh event store.
    let db_name = format!("nebengjek_bench_geo_{run_id}");
    let db_url = crate::pipeline::fresh_database(&targets.database_url, &db_name).await?;
    let pool = PgPoolOptions::new().max_connections(4).connect(&db_url).await?;
    migrations::run(&pool).await?;
    let store_id = migrations::store_id(&pool).await?;
    let prefix = format!("bench:{run_id}:");
    let keys = GeoKeys::new(&prefix, store_id);
    let index = GeoIndex::new(
        client.get_connection_manager().await?,
        keys.clone(),
        Duration::from_secs(3600),
        projections::geo::system_now(),
    );
    // A projection that is already running (its checkpoint exists), so that what is
    // measured is the durable consumer, not the start-up replay of the latest pings.
    redis::cmd("SET")
        .arg(&keys.checkpoint)
        .arg(0)
        .query_async::<()>(&mut conn)
        .await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ours_start = Instant::now();
    let task = tokio::spawn(projections::location::run(
        GeoProjection {
            pool: pool.clone(),
            js: js.clone(),
            stream: stream_name.clone(),
            consumer: projections::location::consumer_name(store_id),
            index: index.clone(),
        },
        stopped,
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    while hlen(&mut conn, &keys.positions).await? < pings_n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "our consumer did not finish in 2 minutes"
        );
        anyhow::ensure!(!task.is_finished(), "our consumer stopped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours_elapsed = ours_start.elapsed();
    let _ = stop.send(true);
    let _ = task.await;
    anyhow::ensure!(zcard(&mut conn, &keys.available).await? == pings_n);

    let plain_geo = format!("bench:{run_id}:plain:available");
    let plain_hash = format!("bench:{run_id}:plain:positions");
    let plain_elapsed = plain_ingest(&stream, &conn, &plain_geo, &plain_hash, pings_n).await?;
    anyhow::ensure!(zcard(&mut conn, &plain_geo).await? == pings_n);

    println!("## geo: location ingest of {pings_n} pings (one per driver) into the Redis index");
    println!();
    row(&["what".into(), "pings/s".into(), "time".into()]);
    row(&["---".into(), "---".into(), "---".into()]);
    let rate = |elapsed: Duration| pings_n as f64 / elapsed.as_secs_f64().max(1e-9);
    row(&[
        "publish to JetStream (8 tasks, acks awaited in windows of 512)".into(),
        format!("{:.0}", rate(publish_elapsed)),
        format!("{:.2}s", publish_elapsed.as_secs_f64()),
    ]);
    row(&[
        "ours: durable consumer, ≤1000 pings per script, one ack per batch".into(),
        format!("{:.0}", rate(ours_elapsed)),
        format!("{:.2}s", ours_elapsed.as_secs_f64()),
    ]);
    row(&[
        "plain: GEOADD + HSET round trip and an ack per ping".into(),
        format!("{:.0}", rate(plain_elapsed)),
        format!("{:.2}s", plain_elapsed.as_secs_f64()),
    ]);
    println!();

    // Clean up what this run made.
    let mut del = redis::cmd("DEL");
    del.arg(&plain_geo).arg(&plain_hash);
    for k in keys.all() {
        del.arg(k);
    }
    del.query_async::<()>(&mut conn).await?;
    let _ = js.delete_stream(&stream_name).await;
    pool.close().await;
    if let Ok(mut admin) =
        <sqlx::PgConnection as sqlx::Connection>::connect(&crate::pipeline::admin_url(&targets.database_url))
            .await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }

    println!("ratio nearest5_qps {nearest_ratio:.2}");
    println!(
        "ratio ingest {:.2}",
        plain_elapsed.as_secs_f64() / ours_elapsed.as_secs_f64().max(1e-9)
    );
    println!("p99_us nearest5 {}", ours.p(0.99));
    Ok(())
}
