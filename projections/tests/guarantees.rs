//! SPEC.md §5 guarantees 4 (exactly-once read models) and 5 (rebuildable), and the
//! billing invariants as the read models show them, on real PostgreSQL with events
//! produced by the real command pipeline.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use migrations::StoredEvent;
use projections::runtime::checkpoint;
use projections::{
    rebuild, run, run_batch, run_batch_with_fault, Fault, MatchesProjector, ProjectionError, Projector,
    RidesProjector,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use sqlx::{PgPool, Postgres, Transaction};
use support::{drive, dump_all, expected, head, projected, world, Ending, World};

/// Drives `n` rides with seeded random endings, trip points and factors.
async fn workload(w: &World, seed: u64, n: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let ending = Ending::random(&mut rng);
        drive(w, &mut rng, ending).await;
    }
}

/// A rerun after a crash at any step of a batch leaves every ledger row and payment
/// exactly once: a fault is injected into every batch, at each step in turn, and the
/// tables must be untouched by it before the normal rerun applies the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_at_any_step_then_a_rerun_neither_loses_nor_doubles_a_ledger_row_or_payment() {
    let w = world().await;
    workload(&w, 7, 12).await;
    let rides = RidesProjector;
    let matches = MatchesProjector;
    let mut faults = Fault::ALL.iter().cycle();
    let mut batches = 0;
    let mut injected = std::collections::BTreeSet::new();
    loop {
        let before = dump_all(&w.pool).await;
        let at = checkpoint(&w.pool, RidesProjector::NAME).await.unwrap();
        let fault = *faults.next().unwrap();
        for projector in [&rides as &dyn Projector, &matches] {
            match run_batch_with_fault(&w.pool, projector, 9, Some(fault)).await {
                Err(ProjectionError::Injected(f)) => {
                    assert_eq!(f, fault);
                    injected.insert(format!("{f:?}"));
                }
                Ok(0) => {}
                other => panic!("{fault:?}: {other:?}"),
            }
        }
        assert_eq!(dump_all(&w.pool).await, before, "{fault:?} left writes behind");
        assert_eq!(checkpoint(&w.pool, RidesProjector::NAME).await.unwrap(), at);
        let applied = run_batch(&w.pool, &rides, 9).await.unwrap();
        run_batch(&w.pool, &matches, 9).await.unwrap();
        if applied == 0 {
            break;
        }
        batches += 1;
    }
    assert!(batches > 8, "the workload spans many batches ({batches})");
    assert_eq!(
        injected.len(),
        Fault::ALL.len(),
        "every step was crashed: {injected:?}"
    );
    assert_eq!(
        checkpoint(&w.pool, RidesProjector::NAME).await.unwrap(),
        head(&w.pool).await
    );
    let want = expected(&w.pool).await;
    assert!(want.values().any(|e| e.payment.is_some()));
    assert_eq!(projected(&w.pool).await, want);
}

/// Guarantee 5: 30 rides projected live in small batches, interleaved with the
/// commands, then rebuilt from position 0 into the same tables, row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_from_position_zero_equals_the_live_read_models_row_for_row() {
    let w = world().await;
    let mut rng = StdRng::seed_from_u64(42);
    let rides = RidesProjector;
    let matches = MatchesProjector;
    for i in 0..30 {
        let ending = Ending::random(&mut rng);
        drive(&w, &mut rng, ending).await;
        // Live, behind the writes, in small batches.
        for _ in 0..(i % 3 + 1) {
            run_batch(&w.pool, &rides, 4).await.unwrap();
            run_batch(&w.pool, &matches, 6).await.unwrap();
        }
    }
    while run_batch(&w.pool, &rides, 4).await.unwrap() > 0 {}
    while run_batch(&w.pool, &matches, 6).await.unwrap() > 0 {}
    let live = dump_all(&w.pool).await;
    // The workload covers what the read models have to handle.
    for (sql, want) in [
        (
            "SELECT DISTINCT status FROM rides",
            &["ARRIVED", "CANCELLED", "COMPLETED"][..],
        ),
        (
            "SELECT DISTINCT kind FROM billing_ledger",
            &["driver_discount", "minimum_fare", "trip_segment"],
        ),
        ("SELECT DISTINCT status FROM payments", &["ACCEPTED", "DECLINED"]),
        ("SELECT DISTINCT status FROM matches", &["CANCELLED", "CONFIRMED"]),
        (
            "SELECT DISTINCT event_type FROM events",
            &["payment_failed", "trip_point_rejected"],
        ),
    ] {
        let have: Vec<String> = sqlx::query_scalar(sql).fetch_all(&w.pool).await.unwrap();
        for v in want {
            assert!(have.iter().any(|h| h == v), "{sql}: {v} missing from {have:?}");
        }
    }
    assert_eq!(projected(&w.pool).await, expected(&w.pool).await);

    let head = head(&w.pool).await;
    assert_eq!(rebuild(&w.pool, &rides).await.unwrap(), head);
    assert_eq!(rebuild(&w.pool, &matches).await.unwrap(), head);
    assert_eq!(dump_all(&w.pool).await, live);
    assert_eq!(checkpoint(&w.pool, RidesProjector::NAME).await.unwrap(), head);

    // The matches read model agrees with the aggregate itself.
    let rows: Vec<(uuid::Uuid, String, Option<uuid::Uuid>)> =
        sqlx::query_as("SELECT match_id, status, ride_id FROM matches")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    for (id, status, ride) in rows {
        let state = w.bus.matches().load(id).await.unwrap().state;
        assert_eq!(Some(status.as_str()), state.match_status().map(|s| s.as_str()));
        assert_eq!(ride, state.ride_id().map(|r| r.as_uuid()));
    }
    // And the chain head each ride recorded is the store's.
    let stale: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rides r JOIN streams s ON s.aggregate_type = 'ride' AND s.aggregate_id = r.ride_id \
         WHERE s.head_hash <> r.last_hash OR s.version <> r.last_sequence",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(stale, 0);
}

/// Counts, in the database and inside the batch transaction, every position applied.
#[derive(Debug)]
struct Counting<P>(P);

#[async_trait]
impl<P: Projector> Projector for Counting<P> {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        events: &[StoredEvent],
    ) -> Result<(), ProjectionError> {
        let positions: Vec<i64> = events.iter().map(|e| e.position).collect();
        sqlx::query("INSERT INTO test_applied SELECT * FROM UNNEST($1::int8[])")
            .bind(&positions)
            .execute(&mut **tx)
            .await?;
        self.0.apply(tx, events).await
    }

    fn tables(&self) -> &'static [&'static str] {
        self.0.tables()
    }
}

async fn worker(pool: PgPool, projector: Arc<Counting<RidesProjector>>, done: Arc<AtomicBool>) -> usize {
    let mut applied = 0;
    loop {
        let writes_over = done.load(Ordering::SeqCst);
        let n = run_batch(&pool, projector.as_ref(), 3).await.unwrap();
        applied += n;
        if n == 0 {
            if writes_over {
                return applied;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// Two workers on the same projector and database, racing each other and the writes,
/// apply each event exactly once between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_one_projector_apply_each_event_exactly_once() {
    let w = world().await;
    sqlx::query("CREATE TABLE test_applied (position bigint NOT NULL)")
        .execute(&w.pool)
        .await
        .unwrap();
    let projector = Arc::new(Counting(RidesProjector));
    let done = Arc::new(AtomicBool::new(false));
    let a = tokio::spawn(worker(w.pool.clone(), projector.clone(), done.clone()));
    let b = tokio::spawn(worker(w.pool.clone(), projector.clone(), done.clone()));
    workload(&w, 3, 10).await;
    done.store(true, Ordering::SeqCst);
    let (a, b) = (a.await.unwrap(), b.await.unwrap());

    let head = head(&w.pool).await;
    assert_eq!((a + b) as i64, head, "worker a {a}, worker b {b}");
    let (total, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT position) FROM test_applied")
            .fetch_one(&w.pool)
            .await
            .unwrap();
    assert_eq!((total, distinct), (head, head));
    assert_eq!(projected(&w.pool).await, expected(&w.pool).await);
}

/// SPEC.md §3 Billing, as analysts see it: the ledger of every completed ride sums to
/// its adjusted fare, admin fee + driver payout = adjusted fare, the payment agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_of_every_completed_ride_sums_to_its_adjusted_fare_and_the_split_adds_up() {
    let w = world().await;
    workload(&w, 11, 20).await;
    rebuild(&w.pool, &RidesProjector).await.unwrap();
    let completed: i64 = sqlx::query_scalar("SELECT count(*) FROM rides WHERE status = 'COMPLETED'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(completed >= 5, "{completed} completed rides");
    let wrong: Vec<(uuid::Uuid, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT r.ride_id, r.adjusted_fare, (SELECT sum(cost)::bigint FROM billing_ledger l WHERE l.ride_id = r.ride_id) \
         FROM rides r JOIN payments p USING (ride_id) \
         WHERE r.status = 'COMPLETED' AND ( \
             r.adjusted_fare IS DISTINCT FROM (SELECT sum(cost) FROM billing_ledger l WHERE l.ride_id = r.ride_id) \
             OR r.admin_fee + r.driver_payout <> r.adjusted_fare \
             OR p.status <> 'ACCEPTED' OR p.adjusted_cost <> r.adjusted_fare \
             OR p.admin_fee <> r.admin_fee OR p.driver_payout <> r.driver_payout \
             OR r.fare < 5000 OR r.completed_at IS NULL)",
    )
    .fetch_all(&w.pool)
    .await
    .unwrap();
    assert!(wrong.is_empty(), "{wrong:?}");
    // The ride's distance is the sum of its segments.
    let off: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM rides r WHERE r.status = 'COMPLETED' AND r.distance_km <> \
         (SELECT coalesce(sum(distance_km), 0) FROM billing_ledger l WHERE l.ride_id = r.ride_id)",
    )
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(off, 0);
}

/// `run` catches up by itself (woken by NOTIFY or its fallback), keeps up with new
/// writes, and stops when told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_loop_keeps_every_projector_caught_up_and_stops_on_shutdown() {
    let w = world().await;
    workload(&w, 5, 3).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let projectors: Vec<Arc<dyn Projector>> = vec![Arc::new(RidesProjector), Arc::new(MatchesProjector)];
    let task = tokio::spawn(run(w.pool.clone(), projectors, stopped));
    workload(&w, 6, 3).await;
    let head = head(&w.pool).await;
    let caught_up = async {
        loop {
            let r = checkpoint(&w.pool, RidesProjector::NAME).await.unwrap();
            let m = checkpoint(&w.pool, MatchesProjector::NAME).await.unwrap();
            if r == head && m == head {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), caught_up)
        .await
        .expect("caught up");
    assert_eq!(projected(&w.pool).await, expected(&w.pool).await);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap();
}

/// The second line of defence: applying events that are already projected (as a bug
/// or a hand-reset checkpoint would) changes no row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_already_projected_events_again_changes_nothing() {
    let w = world().await;
    workload(&w, 13, 10).await;
    rebuild(&w.pool, &RidesProjector).await.unwrap();
    rebuild(&w.pool, &MatchesProjector).await.unwrap();
    let before = dump_all(&w.pool).await;
    let head = head(&w.pool).await;
    let mut tx = w.pool.begin().await.unwrap();
    let all = migrations::read_feed(&mut *tx, 0, head).await.unwrap();
    // Whole, and in overlapping pieces.
    for events in [&all[..], &all[..all.len() / 2], &all[all.len() / 3..]] {
        RidesProjector.apply(&mut tx, events).await.unwrap();
        MatchesProjector.apply(&mut tx, events).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(dump_all(&w.pool).await, before);
}
