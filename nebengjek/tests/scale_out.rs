//! Scale-out: three `nebengjek serve` processes on one PostgreSQL, NATS and Redis — two
//! running everything (so the relay's advisory lock, the projectors' checkpoint lock,
//! the NATS queue group and the idempotent matcher, process manager and scheduler all
//! meet a second copy) and one edge only (`--role api`). Each pair's driver and
//! passenger hold sockets on different processes, so every push a rider receives is
//! about a command another process handled. Every ride completes, every push arrives,
//! nothing is projected twice, `verify` passes and the read models equal a rebuild.

mod cluster;

use std::time::{Duration, Instant};

use cluster::checks;
use cluster::client::{self, AckLog, App, Pair, Pushes};
use cluster::Cluster;

const PAIRS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rides_across_processes_complete_with_every_push_and_nothing_projected_twice() {
    let started = Instant::now();
    let Some(mut cluster) = Cluster::start("scale").await else {
        return;
    };
    for role in ["all", "all", "api"] {
        cluster.add_node(role);
    }
    tokio::task::block_in_place(|| cluster.start_all());
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    let pool = cluster.pool().clone();
    let log = AckLog::default();

    let mut pairs = Vec::new();
    let mut drivers = Vec::new();
    for i in 0..PAIRS {
        let (driver, driver_token) = client::login(&urls[i % 3], 2 * i as u32, true).await;
        let (passenger, passenger_token) = client::login(&urls[(i + 1) % 3], 2 * i as u32 + 1, false).await;
        drivers.push(driver.clone());
        pairs.push(Pair {
            // Driver on process i, passenger on the next: no pair shares a process.
            driver: App::new(driver, driver_token, urls.clone(), i, log.clone()),
            passenger: App::new(passenger, passenger_token, urls.clone(), i + 1, log.clone()),
            // 0.5° apart: beyond the largest matching radius (20 km).
            pickup: (-6.2 + 0.5 * i as f64, 106.8),
        });
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    let tasks: Vec<_> = pairs
        .into_iter()
        .map(|mut pair| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let ride = client::ride(&mut pair, &pool, Pushes::Required, deadline).await;
                (ride, pair)
            })
        })
        .collect();
    let mut rides = Vec::new();
    for task in tasks {
        let (ride, pair) = task.await.expect("a ride");
        assert_eq!(
            pair.driver.connects + pair.passenger.connects,
            2,
            "nobody had to reconnect"
        );
        rides.push(ride);
    }
    assert_eq!(rides.len(), PAIRS, "every ride completed");

    checks::projections_caught_up(&pool, Duration::from_secs(20)).await;
    checks::no_doubles(&pool, &rides).await;
    let acks = log.lock().unwrap().clone();
    let checked = checks::acks_are_in_the_store(&pool, &acks, &drivers).await;
    assert!(checked >= PAIRS * 8, "{checked} acks checked");
    checks::verify_passes(&pool).await;
    checks::events_stream_matches_store(&cluster.nats_url(), &pool, Duration::from_secs(20)).await;
    cluster.kill_all();
    checks::read_models_equal_rebuild(&pool).await;
    eprintln!(
        "scale_out: {PAIRS} rides over 3 processes in {:?}",
        started.elapsed()
    );
}
