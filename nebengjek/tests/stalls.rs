//! Stalls are loud: a consumer that cannot handle an event stops at it and says so,
//! while the others go on (docs/security.md, "Stalls and fuzzing").
//!
//! Rides are written through the real command pipeline into a fresh database; one
//! ride event's payload is then corrupted in PostgreSQL before the system starts on
//! that database. The rides projector must stop right before that event and say so on
//! `/readyz` (503, naming it, its position and the reason), on the gauge
//! `nebengjek_stalled{component}` and in `replay-tools status`; the matches projector
//! and the outbox relay must reach the head regardless. Restoring the row lets it
//! resume by itself (no restart), and `replay-tools verify` passes again.

mod support;

#[path = "../../projections/tests/support/mod.rs"]
mod world;

use std::time::{Duration, Instant};

use migrations::consumers::Backoff;
use projections::{MatchesProjector, RidesProjector};
use rand::SeedableRng;
use serde_json::Value;
use sqlx::PgPool;

/// Long enough for a stall and a resume on a busy machine.
const WAIT: Duration = Duration::from_secs(30);

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn checkpoint(pool: &PgPool, name: &str) -> i64 {
    projections::runtime::checkpoint(pool, name).await.unwrap()
}

fn stalled_gauge(metrics: &str, component: &str) -> Option<f64> {
    let prefix = format!("nebengjek_stalled{{component=\"{component}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn stalled_names(readyz: &Value) -> Vec<String> {
    readyz["stalled"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["component"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_event_stalls_the_rides_projector_loudly_while_the_others_go_on_and_it_resumes_when_restored(
) {
    // Three completed rides through the real pipeline, the process manager included.
    let w = world::world().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for _ in 0..3 {
        world::drive(&w, &mut rng, world::Ending::Completed)
            .await
            .expect("a ride");
    }
    let pool = w.pool.clone();
    let head = migrations::head_position(&pool).await.unwrap();
    // The second ride's start: ride events and match events follow it.
    let (bad, original): (i64, String) = sqlx::query_as(
        "SELECT position, payload::text FROM events WHERE aggregate_type = 'ride' AND event_type = 'started' \
         ORDER BY position OFFSET 1 LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let matches_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'match' AND position > $1")
            .bind(bad)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(matches_after > 0, "match events follow the corrupted one");
    sqlx::query("UPDATE events SET payload = '{\"corrupted\": true}' WHERE position = $1")
        .bind(bad)
        .execute(&pool)
        .await
        .unwrap();

    // The whole system on that database.
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let (mut config, _) = support::test_config();
    let base = config
        .database_url
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap();
    config.database_url = format!("{base}/{database}");
    config.consumer_retry = Backoff::new(Duration::from_millis(50), Duration::from_millis(400)).unwrap();
    let system = nebengjek::startup::start(config.clone(), nebengjek::Role::All)
        .await
        .unwrap_or_else(|e| {
            panic!("the system starts (PostgreSQL, NATS with JetStream, Redis running?): {e:#}")
        });
    let addr = system.http_addr;
    let rides = RidesProjector::NAME;
    let relay = format!("relay.{}", config.events_stream);

    // Stalled at the bad event, and saying so on /readyz.
    let readyz = eventually("/readyz to name the rides projector", async || {
        let (status, body) = support::http(addr, "GET", "/readyz", None, None).await;
        (status == 503 && stalled_names(&body).iter().any(|n| n == rides)).then_some(body)
    })
    .await;
    let stall = readyz["stalled"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["component"] == rides)
        .unwrap()
        .clone();
    assert_eq!(stall["position"], bad, "{readyz}");
    assert_eq!(stall["kind"], "projector", "{readyz}");
    let reason = stall["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("position {bad}")) && reason.contains("ride.started"),
        "the reason names the event: {reason}"
    );
    assert_eq!(
        (
            readyz["postgres"].as_bool(),
            readyz["nats"].as_bool(),
            readyz["redis"].as_bool()
        ),
        (Some(true), Some(true), Some(true)),
        "only the stall makes it unready: {readyz}"
    );
    let names = stalled_names(&readyz);
    assert!(
        !names.iter().any(|n| n == MatchesProjector::NAME || *n == relay),
        "{names:?}"
    );

    // It stopped right before the event, never past it; the others reached the head.
    eventually(
        "the rides projector to stop just before the bad event",
        async || (checkpoint(&pool, rides).await == bad - 1).then_some(()),
    )
    .await;
    eventually(
        "the matches projector and the relay to reach the head",
        async || {
            (checkpoint(&pool, MatchesProjector::NAME).await == head
                && checkpoint(&pool, &relay).await == head)
                .then_some(())
        },
    )
    .await;
    // It keeps trying (backoff capped at 400 ms) and never skips the event.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(checkpoint(&pool, rides).await, bad - 1, "never skipped");

    // The gauge.
    let (_, metrics) = support::http(addr, "GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert_eq!(stalled_gauge(&metrics, rides), Some(1.0), "{metrics}");
    assert_eq!(stalled_gauge(&metrics, MatchesProjector::NAME), Some(0.0));
    assert_eq!(stalled_gauge(&metrics, &relay), Some(0.0));

    // `replay-tools status`: every consumer, the rides projector stalled with why.
    let status = eventually("consumer_status to show the stall", async || {
        let all = replay_tools::status::consumers(&pool, &[rides, MatchesProjector::NAME])
            .await
            .unwrap();
        all.iter()
            .any(|c| c.name == rides && c.stalled && c.attempts >= 2)
            .then_some(all)
    })
    .await;
    let by_name = |name: &str| {
        status
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} is listed: {status:?}"))
            .clone()
    };
    let r = by_name(rides);
    assert_eq!(
        (r.checkpoint, r.lag, r.stalled_at),
        (Some(bad - 1), head - bad + 1, Some(bad))
    );
    assert!(
        r.last_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("position {bad}"))),
        "{r:?}"
    );
    let m = by_name(MatchesProjector::NAME);
    assert_eq!((m.stalled, m.checkpoint, m.lag), (false, Some(head), 0), "{m:?}");
    let rl = by_name(&relay);
    assert_eq!(
        (rl.stalled, rl.checkpoint, rl.lag),
        (false, Some(head), 0),
        "{rl:?}"
    );
    for name in [
        replay_tools::status::RIDE_CREATOR,
        replay_tools::status::DEADLINES,
        &format!("geo.{}", config.location.stream),
    ] {
        let c = by_name(name);
        assert!(c.reported_by.is_some(), "{name} reported: {c:?}");
    }
    // Corrupting the payload broke its hash: verify says so until the row is restored.
    let report = replay_tools::audit::verify(&pool, None, false, &|_, _| {})
        .await
        .unwrap();
    assert!(!report.passed(), "verify sees the corrupted event");

    // Restore the row: it resumes by itself.
    sqlx::query("UPDATE events SET payload = $2::jsonb WHERE position = $1")
        .bind(bad)
        .bind(&original)
        .execute(&pool)
        .await
        .unwrap();
    eventually("the rides projector to reach the head", async || {
        (checkpoint(&pool, rides).await == head).then_some(())
    })
    .await;
    eventually("/readyz to be 200", async || {
        let (status, body) = support::http(addr, "GET", "/readyz", None, None).await;
        (status == 200 && stalled_names(&body).is_empty()).then_some(())
    })
    .await;
    let (_, metrics) = support::http(addr, "GET", "/metrics", None, None).await;
    assert_eq!(
        stalled_gauge(metrics.as_str().unwrap_or_default(), rides),
        Some(0.0)
    );
    let status = eventually("consumer_status to show the resume", async || {
        let all = replay_tools::status::consumers(&pool, &[rides, MatchesProjector::NAME])
            .await
            .unwrap();
        all.iter().all(|c| !c.stalled).then_some(all)
    })
    .await;
    let r = status.iter().find(|c| c.name == rides).unwrap();
    assert_eq!((r.checkpoint, r.lag), (Some(head), 0));
    assert!(r.last_error.is_some(), "the last error is kept for the record");
    let report = replay_tools::audit::verify(&pool, None, false, &|_, _| {})
        .await
        .unwrap();
    assert!(
        report.passed(),
        "verify passes once the row is restored: {report:?}"
    );

    system.shutdown().await.expect("a clean shutdown");
    support::cleanup(&config, &database, &format!("{base}/postgres")).await;
}
