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
        wind_down: false,
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
    // The timeline has a sample a second, and its acks are every ack of the run.
    let t = &report.timeline;
    assert!(
        (t.len() as f64 - report.elapsed_s).abs() <= 2.0,
        "{} samples in {:.1} s",
        t.len(),
        report.elapsed_s
    );
    assert_eq!(
        t.iter().map(|s| s.acks).sum::<u64>(),
        report.acks_ok + report.acks_err,
        "{t:#?}"
    );
    assert!(t.windows(2).all(|p| p[0].t_s < p[1].t_s), "{t:#?}");
    assert!(
        t.iter().any(|s| s.phase == "window" && s.commands_per_s > 0.0),
        "{t:#?}"
    );
    // `nebengjek load --report` draws it: a point a second for commands/s.
    let svg_path = std::env::temp_dir().join(format!("nebengjek-sim-{tag}.svg"));
    nebengjek::load::write_chart(&report, &svg_path).expect("write the chart");
    let svg = std::fs::read_to_string(&svg_path).expect("the chart");
    let _ = std::fs::remove_file(&svg_path);
    let rate = svg
        .lines()
        .find(|l| l.contains(r#"data-name="commands/s""#))
        .expect("a commands/s line");
    assert_eq!(rate.matches(',').count(), t.len(), "{rate}");
    assert!(svg.contains(r#"data-name="ack p99""#) && svg.contains("class=\"window\""));
}

/// `nebengjek demo` ends close to its duration: no ride starts in the window's last
/// third, searches still open at its end are cancelled, drivers go home.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_close_to_its_duration() {
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
    config.events_stream = format!("EVENTS_{tag}");
    config.events_subject_prefix = format!("events{tag}");
    config.location.stream = format!("LOCATION_{tag}");
    config.redis_key_prefix = format!("demotest:{tag}:");
    config.command_subject_prefix = format!("t{tag}.");
    let duration_s = 12;
    let started = std::time::Instant::now();
    let demo = nebengjek::demo::run(
        config.clone(),
        nebengjek::demo::DemoOptions {
            drivers: 6,
            passengers: 4,
            duration_s,
        },
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    // Leave no streams or database behind, whatever the outcome.
    if let Ok(nats) = async_nats::connect(&config.nats_url).await {
        let js = async_nats::jetstream::new(nats);
        for stream in [&config.events_stream, &config.location.stream] {
            let _ = js.delete_stream(stream).await;
        }
    }
    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    demo.expect("the demo completes rides and verifies");
    // Ramp (~3 s: passengers wait 1.5 s for drivers), the window, the last rides
    // (at most one ride's length), verify. Without winding down, drivers alone
    // waited 30 s after their last ride.
    assert!(
        took < duration_s as f64 + 22.0,
        "the demo of {duration_s} s took {took:.1} s"
    );
}
