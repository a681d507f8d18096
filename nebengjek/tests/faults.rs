//! Faults during a run: drivers and passengers ride over two `nebengjek serve`
//! processes while, at seeded random moments, a process is SIGKILLed and restarted
//! (several times), NATS is SIGKILLed and restarted on its store directory, and Redis
//! is flushed. Apps reconnect to the other process and resend the frame they had no
//! answer to, as real apps do.
//!
//! Afterwards: every acknowledged command has its events in the store, from one append;
//! no ride has a doubled ledger row or payment; `verify` passes; every read model
//! equals its rebuild; the relay caught up (EVENTS holds every event once); the geo
//! index was rebuilt after the flush; and one more ride per pair, with every push
//! required, shows that pushes resumed.

mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::checks;
use cluster::client::{self, AckLog, App, Pair, Pushes};
use cluster::Cluster;
use rand::{Rng, SeedableRng};

const PAIRS: usize = 4;
const NODE_KILLS: usize = 4;
const SEED: u64 = 20_261_202;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_processes_a_restarted_nats_and_a_flushed_redis_lose_no_acknowledged_command() {
    let started = Instant::now();
    let Some(mut cluster) = Cluster::start("faults").await else {
        return;
    };
    cluster.add_node("all");
    cluster.add_node("all");
    tokio::task::block_in_place(|| cluster.start_all());
    let urls = cluster.urls();
    let pool = cluster.pool().clone();
    let log = AckLog::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);

    let mut pairs = Vec::new();
    let mut drivers = Vec::new();
    for i in 0..PAIRS {
        let (driver, driver_token) = client::login(&urls[i % 2], 2 * i as u32, true).await;
        let (passenger, passenger_token) = client::login(&urls[(i + 1) % 2], 2 * i as u32 + 1, false).await;
        drivers.push(driver.clone());
        pairs.push(Pair {
            driver: App::new(driver, driver_token, urls.clone(), i, log.clone()),
            passenger: App::new(passenger, passenger_token, urls.clone(), i + 1, log.clone()),
            pickup: (-6.2 + 0.5 * i as f64, 106.8),
        });
    }

    // Rides, one after another per pair, until the faults are over; then one ride
    // with every push required.
    let faults_over = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(75);
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|mut pair| {
            let (pool, faults_over) = (pool.clone(), faults_over.clone());
            tokio::spawn(async move {
                let mut rides = Vec::new();
                while !faults_over.load(Ordering::SeqCst) {
                    rides.push(client::ride(&mut pair, &pool, Pushes::BestEffort, deadline).await);
                }
                rides.push(client::ride(&mut pair, &pool, Pushes::Required, deadline).await);
                (rides, pair.driver.connects + pair.passenger.connects)
            })
        })
        .collect();

    // The faults, at seeded random moments (the waits are the point: not polling).
    let pause = |rng: &mut rand::rngs::StdRng, lo: u64, hi: u64| Duration::from_millis(rng.gen_range(lo..hi));
    for _ in 0..NODE_KILLS {
        tokio::time::sleep(pause(&mut rng, 1500, 4000)).await;
        let victim = rng.gen_range(0..cluster.nodes.len());
        cluster.kill_node(victim);
        tokio::time::sleep(pause(&mut rng, 100, 1500)).await;
        tokio::task::block_in_place(|| cluster.start_node(victim));
    }
    tokio::time::sleep(pause(&mut rng, 1000, 3000)).await;
    cluster.kill_nats();
    tokio::time::sleep(pause(&mut rng, 300, 1500)).await;
    tokio::task::block_in_place(|| cluster.start_nats());
    tokio::time::sleep(pause(&mut rng, 1000, 3000)).await;
    cluster.flush_redis().await;
    faults_over.store(true, Ordering::SeqCst);

    let (mut rides, mut sockets) = (Vec::new(), 0);
    for task in tasks {
        let (done, connects) = task.await.expect("a pair's rides");
        rides.extend(done);
        sockets += connects;
    }
    assert!(rides.len() > PAIRS, "{} rides", rides.len());
    // The kills reached the apps: sockets were lost and reopened on the other process.
    assert!(
        sockets > 2 * PAIRS + NODE_KILLS,
        "{sockets} sockets opened by {} apps",
        2 * PAIRS
    );

    // The geo index is rebuilt after the flush: the drivers, free and fresh again,
    // are all available.
    let store_id = migrations::store_id(&pool).await.unwrap();
    let key = domain::location::keys::key("", store_id, domain::location::keys::DRIVERS_AVAILABLE);
    let redis = redis::Client::open(cluster.redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let available: usize = redis::cmd("ZCARD")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if available == PAIRS {
            break;
        }
        assert!(
            Instant::now() < until,
            "{available} of {PAIRS} drivers in {key} after the flush"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    checks::projections_caught_up(&pool, Duration::from_secs(20)).await;
    checks::events_stream_matches_store(&cluster.nats_url(), &pool, Duration::from_secs(20)).await;
    checks::no_doubles(&pool, &rides).await;
    let acks = log.lock().unwrap().clone();
    let checked = checks::acks_are_in_the_store(&pool, &acks, &drivers).await;
    checks::verify_passes(&pool).await;
    cluster.kill_all();
    checks::read_models_equal_rebuild(&pool).await;
    eprintln!(
        "faults: {} rides, {checked} acknowledged commands checked, {sockets} sockets, {NODE_KILLS} kills, NATS restart, FLUSHALL, in {:?}",
        rides.len(),
        started.elapsed()
    );
}
