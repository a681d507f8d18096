//! SPEC.md §5 guarantees 1–3 on real PostgreSQL, each with a test that fails without
//! the mechanism it guards.

mod support;

use chrono::Utc;
use commands::pipeline::{Envelope, Outcome};
use commands::store::{self, AppendOutcome, AppendRequest, DeadlineChange, EventStore, NewEvent};
use commands::Ack;
use domain::ride::RideCommand;
use domain::{Actor, ErrorCode, GeoPoint, MatchId, RideId, Role, UserId};
use serde_json::json;
use support::{another_process, world};
use uuid::Uuid;

fn jakarta() -> GeoPoint {
    GeoPoint::new(-6.2, 106.8).unwrap()
}

struct RideCast {
    ride_id: RideId,
    driver: Actor,
    passenger: Actor,
}

async fn create_ride(w: &support::World) -> RideCast {
    create_ride_with_id(w, RideId::from_uuid(Uuid::now_v7())).await
}

async fn create_ride_with_id(w: &support::World, ride_id: RideId) -> RideCast {
    let driver = Actor::new(UserId::from_uuid(Uuid::now_v7()), Role::Driver);
    let passenger = Actor::new(UserId::from_uuid(Uuid::now_v7()), Role::Passenger);
    let cmd = RideCommand::Create {
        ride_id,
        match_id: MatchId::from_uuid(Uuid::now_v7()),
        driver_id: driver.user_id,
        passenger_id: passenger.user_id,
        pickup: jakarta(),
        destination: GeoPoint::new(-6.17, 106.82).unwrap(),
    };
    let env = Envelope::system(format!("create:{ride_id}"), None);
    let outcome = w
        .bus
        .rides()
        .execute(ride_id.as_uuid(), &env, &cmd)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Accepted { .. }), "{outcome:?}");
    RideCast {
        ride_id,
        driver,
        passenger,
    }
}

fn raw_request(id: Uuid, expected_version: i64, key: Option<&str>) -> AppendRequest {
    AppendRequest {
        command_key: key.map(str::to_owned),
        aggregate_type: "test",
        aggregate_id: id,
        expected_version,
        events: vec![NewEvent {
            event_type: "happened",
            event_version: 1,
            payload: json!({"n": expected_version}),
            metadata: json!({"event_id": Uuid::now_v7()}),
            hash: vec![0; 32],
        }],
        recorded_at: Utc::now(),
        reservations: vec![],
        deadline: DeadlineChange::Keep,
        response: json!({"ok": true, "result": {}}),
    }
}

async fn stream_len(pool: &sqlx::PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Guarantee 1 at the store: two writers (two processes) appending at the same
/// expected version — exactly one wins, the other is told `Conflict`, every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_writers_at_the_same_version_never_both_win() {
    let w = world().await;
    let other = EventStore::start(w.pool.clone());
    for round in 0..100 {
        let id = Uuid::now_v7();
        let (a, b) = tokio::join!(
            w.store.append(raw_request(id, 0, None)),
            other.append(raw_request(id, 0, None))
        );
        let outcomes = [a.unwrap(), b.unwrap()];
        let wins = outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Written { .. }))
            .count();
        let conflicts = outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Conflict { .. }))
            .count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {outcomes:?}");
        assert_eq!(stream_len(&w.pool, id).await, 1);
    }
}

/// Guarantee 1 through the pipeline: `ride_start` and `ride_cancel` race from two
/// processes on a PENDING ride; exactly one is accepted and the other is decided again
/// against the new state and refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn start_and_cancel_racing_from_two_processes_exactly_one_wins() {
    let w = world().await;
    let other = another_process(&w);
    for round in 0..40 {
        let cast = create_ride(&w).await;
        // The other process has seen the ride too, so both decide against PENDING.
        other.rides().load(cast.ride_id.as_uuid()).await.unwrap();
        let start = RideCommand::Start {
            actor: cast.driver,
            driver_position: Some(jakarta()),
            passenger_position: Some(jakarta()),
        };
        let cancel = RideCommand::Cancel {
            actor: cast.passenger,
            reason: "changed my mind".into(),
        };
        let id = cast.ride_id.as_uuid();
        let (driver_env, passenger_env) = (
            Envelope::from_user(cast.driver, None),
            Envelope::from_user(cast.passenger, None),
        );
        let (a, b) = tokio::join!(
            w.bus.rides().execute(id, &driver_env, &start),
            other.rides().execute(id, &passenger_env, &cancel),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        let accepted = [&a, &b]
            .iter()
            .filter(|o| matches!(o, Outcome::Accepted { .. }))
            .count();
        assert_eq!(accepted, 1, "round {round}: {a:?} / {b:?}");
        for o in [&a, &b] {
            if let Outcome::Refused(e) = o {
                assert!(
                    matches!(e.code, ErrorCode::InvalidTransition | ErrorCode::Conflict),
                    "round {round}: {e:?}"
                );
            }
        }
        assert_eq!(
            stream_len(&w.pool, id).await,
            2,
            "round {round}: created + exactly one more"
        );
    }
}

/// Guarantee 2: the same command id twice, in sequence, appends once and answers the
/// same; a refusal stays the first answer even after the state would now allow it.
#[tokio::test]
async fn the_same_command_id_in_sequence_appends_once_and_answers_the_same() {
    let w = world().await;
    let cast = create_ride(&w).await;
    let far = GeoPoint::new(-6.3, 106.8).unwrap();
    let start_far = RideCommand::Start {
        actor: cast.driver,
        driver_position: Some(far),
        passenger_position: Some(jakarta()),
    };
    let env = Envelope::from_user(cast.driver, Some("frame-1"));
    let id = cast.ride_id.as_uuid();
    let first = commands::bus::answer(w.bus.rides().execute(id, &env, &start_far).await.unwrap());
    assert_eq!(first.code(), Some(ErrorCode::TooFar));
    // The driver comes close, but frame-1 was already answered: same refusal.
    let start_near = RideCommand::Start {
        actor: cast.driver,
        driver_position: Some(jakarta()),
        passenger_position: Some(jakarta()),
    };
    let again = commands::bus::answer(w.bus.rides().execute(id, &env, &start_near).await.unwrap());
    assert_eq!(again, first);
    assert_eq!(stream_len(&w.pool, id).await, 1);

    let env2 = Envelope::from_user(cast.driver, Some("frame-2"));
    let ok = commands::bus::answer(w.bus.rides().execute(id, &env2, &start_near).await.unwrap());
    assert!(ok.ok, "{ok:?}");
    let resend = commands::bus::answer(w.bus.rides().execute(id, &env2, &start_near).await.unwrap());
    assert_eq!(resend, ok);
    assert_eq!(stream_len(&w.pool, id).await, 2);
}

/// Guarantee 2, concurrently: the same command id from two processes at once appends
/// once, and both get the one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_command_id_concurrently_from_two_processes_appends_once() {
    let w = world().await;
    let other = another_process(&w);
    for round in 0..30 {
        let cast = create_ride(&w).await;
        other.rides().load(cast.ride_id.as_uuid()).await.unwrap();
        let start = RideCommand::Start {
            actor: cast.driver,
            driver_position: Some(jakarta()),
            passenger_position: Some(jakarta()),
        };
        let env = Envelope::from_user(cast.driver, Some("same-frame"));
        let id = cast.ride_id.as_uuid();
        let (a, b) = tokio::join!(
            w.bus.rides().execute(id, &env, &start),
            other.rides().execute(id, &env, &start)
        );
        let (a, b): (Ack, Ack) = (
            commands::bus::answer(a.unwrap()),
            commands::bus::answer(b.unwrap()),
        );
        assert!(a.ok, "round {round}: {a:?}");
        assert_eq!(a, b, "round {round}");
        assert_eq!(stream_len(&w.pool, id).await, 2, "round {round}");
    }
}

/// Guarantee 2 at the store: concurrent raw appends with one key write once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_appended_concurrently_by_two_writers_is_written_once() {
    let w = world().await;
    let other = EventStore::start(w.pool.clone());
    let id_a = Uuid::now_v7();
    let id_b = Uuid::now_v7();
    let (a, b) = tokio::join!(
        w.store.append(raw_request(id_a, 0, Some("k1"))),
        other.append(raw_request(id_b, 0, Some("k1")))
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Duplicate(_)))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        stream_len(&w.pool, id_a).await + stream_len(&w.pool, id_b).await,
        1
    );
}

/// Guarantee 3: a reader never steps over an event whose transaction commits after a
/// later append was attempted. The slow transaction holds its positions; the fast
/// append waits behind it instead of becoming visible first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_never_skips_an_event_committed_late_by_a_slower_transaction() {
    let w = world().await;
    let slow_id = Uuid::now_v7();
    let fast_id = Uuid::now_v7();

    let mut slow = w.pool.begin().await.unwrap();
    let slow_request = raw_request(slow_id, 0, None);
    store::write_batch_in(&mut slow, &[&slow_request]).await.unwrap();

    // A faster writer appends while the slow transaction is still open.
    let fast_store = w.store.clone();
    let fast = tokio::spawn(async move { fast_store.append(raw_request(fast_id, 0, None)).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // A reader now must not see the fast event at a position past the slow one's.
    let seen = migrations::read_feed(&w.pool, 0, 100).await.unwrap();
    assert!(
        seen.is_empty(),
        "nothing is committed yet, but the feed shows {seen:?}"
    );
    assert!(
        !fast.is_finished(),
        "the fast append must wait for the slow transaction"
    );

    slow.commit().await.unwrap();
    let fast_outcome = fast.await.unwrap().unwrap();
    assert!(
        matches!(
            fast_outcome,
            AppendOutcome::Written {
                first_position: 2,
                ..
            }
        ),
        "{fast_outcome:?}"
    );
    let seen = migrations::read_feed(&w.pool, 0, 100).await.unwrap();
    let order: Vec<(i64, Uuid)> = seen.iter().map(|e| (e.position, e.aggregate_id)).collect();
    assert_eq!(order, vec![(1, slow_id), (2, fast_id)]);
}

/// Positions stay dense even when a batch is rolled back.
#[tokio::test]
async fn a_rolled_back_append_leaves_no_gap() {
    let w = world().await;
    {
        let mut tx = w.pool.begin().await.unwrap();
        let r = raw_request(Uuid::now_v7(), 0, None);
        store::write_batch_in(&mut tx, &[&r]).await.unwrap();
        tx.rollback().await.unwrap();
    }
    let r = raw_request(Uuid::now_v7(), 0, None);
    let outcome = w.store.append(r).await.unwrap();
    assert!(
        matches!(
            outcome,
            AppendOutcome::Written {
                first_position: 1,
                last_position: 1
            }
        ),
        "{outcome:?}"
    );
}

/// The fast path refuses a whole batch when one request in it is a duplicate, writing
/// nothing; the careful path then gives each request its own outcome.
#[tokio::test]
async fn a_batch_with_one_duplicate_falls_back_and_decides_each_request() {
    let w = world().await;
    let first = raw_request(Uuid::now_v7(), 0, Some("seen"));
    assert!(matches!(
        w.store.append(first).await.unwrap(),
        AppendOutcome::Written { .. }
    ));
    let fresh = raw_request(Uuid::now_v7(), 0, Some("new"));
    let again = raw_request(Uuid::now_v7(), 0, Some("seen"));
    let fast = store::write_batch_fast(&w.pool, &[&fresh, &again]).await;
    assert!(matches!(fast, Err(sqlx::Error::Database(_))), "{fast:?}");
    assert_eq!(
        migrations::head_position(&w.pool).await.unwrap(),
        1,
        "the failed fast path wrote nothing"
    );

    let careful = store::write_batch(&w.pool, &[&fresh, &again]).await.unwrap();
    assert!(
        matches!(
            careful[0],
            AppendOutcome::Written {
                first_position: 2,
                ..
            }
        ),
        "{careful:?}"
    );
    assert!(matches!(careful[1], AppendOutcome::Duplicate(_)), "{careful:?}");
}

/// Answers that are only logged (no events, no deadline) share the fast path with an
/// append to the same aggregate — five drivers answering one proposal commit together —
/// while two appends to one stream still go the careful way.
#[tokio::test]
async fn logged_answers_on_one_aggregate_share_the_fast_path() {
    let w = world().await;
    let id = Uuid::now_v7();
    let append = raw_request(id, 0, Some("wins"));
    let logged = |key: &str| AppendRequest {
        events: vec![],
        response: json!({"ok": false, "error": {"code": "already_taken"}}),
        ..raw_request(id, 0, Some(key))
    };
    let (late, later) = (logged("late"), logged("later"));
    let fast = store::write_batch_fast(&w.pool, &[&append, &late, &later])
        .await
        .unwrap()
        .expect("eligible for the fast path");
    assert!(
        fast.iter().all(|o| matches!(o, AppendOutcome::Written { .. })),
        "{fast:?}"
    );
    assert_eq!(stream_len(&w.pool, id).await, 1);
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM command_log WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(logged, 3);

    let (one, two) = (raw_request(id, 1, None), raw_request(id, 2, None));
    let twice = store::write_batch_fast(&w.pool, &[&one, &two]).await.unwrap();
    assert!(twice.is_none(), "two appends to one stream: {twice:?}");
}

/// Guarantee 1 across processes: a process that looked a ride up before another process
/// created it has "no such ride" cached; that "no" is read again from the store, so a
/// command on the ride is not refused `not_found`.
#[tokio::test]
async fn a_cached_no_such_ride_is_read_again_before_a_command_is_refused() {
    let w = world().await;
    let other = another_process(&w);
    let ride_id = RideId::from_uuid(Uuid::now_v7());
    let seen = other.rides().load(ride_id.as_uuid()).await.unwrap();
    assert!(!domain::Aggregate::exists(&seen.state));
    let cast = create_ride_with_id(&w, ride_id).await;
    let cancel = commands::ingress::ClientCommand::RideCancel {
        ride_id,
        reason: "changed my mind".into(),
    };
    let ack = other.dispatch(cast.passenger, Some("cancel-1"), cancel).await;
    assert!(ack.ok, "{ack:?}");
    assert_eq!(ack.result.as_ref().unwrap()["status"], "CANCELLED");
}
