//! A short city simulation over real WebSocket connections against an in-process
//! system (fresh database, own streams, Redis prefix and command subjects): rides
//! complete and none goes wrong.

use std::time::Duration;

use nebengjek::{config::Config, startup, Role};
use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_simulation_completes_rides_without_failures() {
    let mut config = Config::from_env().expect("config");
    let base = config
        .database_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or_default();
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("nebengjek_test_{tag}");
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .expect("PostgreSQL is running");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create database");
    config.database_url = format!("{base}/{name}");
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.events_stream = format!("EVENTS_{tag}");
    config.events_subject_prefix = format!("events{tag}");
    config.location.stream = format!("LOCATION_{tag}");
    config.redis_key_prefix = format!("simtest:{tag}:");
    config.command_subject_prefix = format!("t{tag}.");
    config.auth_dev_echo_otp = true;
    config.app_env = nebengjek::config::AppEnv::Development;
    let system = startup::start(config, Role::All).await.expect("start");
    let sim = sim::SimConfig {
        urls: vec![format!("http://{}", system.http_addr)],
        drivers: 6,
        passengers: 4,
        duration: Duration::from_secs(12),
        seed: 7,
        idle_clients: 5,
        ack_log: None,
        login_concurrency: 4,
        ramp_timeout: Duration::from_secs(60),
    };
    let report = tokio::time::timeout(Duration::from_secs(150), sim::run(sim, |_| {}))
        .await
        .expect("the simulation ends")
        .expect("the simulation runs");
    system.shutdown().await.expect("shutdown");
    println!("{}", report.markdown());
    assert!(report.rides_completed > 0, "{report:#?}");
    assert_eq!(report.rides_failed, 0, "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert!(report.clients_held >= 15, "{report:#?}");
    // Every user logged in during the ramp and held its socket through the window,
    // whose commands all got an ack (and only those are in the window's latency).
    assert_eq!(report.logins_ok, 15, "{report:#?}");
    let w = &report.window;
    assert!(w.opened_after_s > 0.0, "{report:#?}");
    assert_eq!(w.clients_min, 15, "{report:#?}");
    assert!(w.commands > 0, "{report:#?}");
    assert_eq!(w.unacked, 0, "{report:#?}");
    assert_eq!(w.ack.count, w.acks_ok + w.acks_err, "{report:#?}");
    assert!(w.commands >= w.ack.count, "{report:#?}");
    // Rides in flight finish after the window: those commands are in neither.
    assert!(
        report.ramp_ack.count + w.ack.count <= report.acks_ok + report.acks_err,
        "{report:#?}"
    );
}
