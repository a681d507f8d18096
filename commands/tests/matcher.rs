//! The matcher on real PostgreSQL (and NATS, Redis): nearest first within the round's
//! radius, the radius doubling, decliners never proposed again, a driver coming online
//! proposed to a waiting passenger at once, and the one-open-match invariant when 50
//! passengers and 5 drivers all act at once.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeDelta;
use commands::clock::Clock;
use commands::ingress::ClientCommand;
use commands::matcher::{self, Matcher, MatcherConfig};
use commands::ports::Positions;
use commands::process::fire_due_deadlines;
use commands::redis_positions::RedisPositions;
use domain::location::Ping;
use domain::matching::MatchStatus;
use domain::{Actor, GeoPoint, MatchId, Role, UserId};
use futures::future::join_all;
use support::{another_process, world, World};
use uuid::Uuid;

const PICKUP: (f64, f64) = (-6.2, 106.8);

fn pickup() -> GeoPoint {
    GeoPoint::new(PICKUP.0, PICKUP.1).unwrap()
}

/// About `km` north of the pickup (1° of latitude ≈ 111.195 km).
fn north(km: f64) -> GeoPoint {
    GeoPoint::new(PICKUP.0 + km / 111.195, PICKUP.1).unwrap()
}

fn actor(role: Role) -> Actor {
    Actor::new(UserId::from_uuid(Uuid::now_v7()), role)
}

fn ping(w: &World, driver: Actor, point: GeoPoint) -> Ping {
    Ping {
        driver_id: driver.user_id,
        point,
        is_active: Some(true),
        at: w.clock.now(),
    }
}

async fn request(w: &World, passenger: Actor) -> MatchId {
    let ack = w
        .bus
        .dispatch(
            passenger,
            Some(&Uuid::now_v7().to_string()),
            ClientCommand::RequestMatch {
                pickup: pickup(),
                destination: GeoPoint::new(-6.17, 106.82).unwrap(),
            },
        )
        .await;
    assert!(ack.ok, "{ack:?}");
    ack.result.as_ref().unwrap()["match_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn answer(w: &World, driver: Actor, m: MatchId, accepted: bool) -> commands::Ack {
    w.bus
        .dispatch(
            driver,
            Some(&Uuid::now_v7().to_string()),
            ClientCommand::MatchConfirm {
                match_id: m,
                accepted,
            },
        )
        .await
}

async fn state(w: &World, m: MatchId) -> domain::matching::Match {
    w.bus.matches().load(m.as_uuid()).await.unwrap().state
}

fn ids(m: &domain::matching::Match) -> Vec<UserId> {
    m.candidates().iter().map(|c| c.driver_id).collect()
}

#[tokio::test]
async fn the_nearest_drivers_within_the_radius_are_proposed_nearest_first() {
    let w = world().await;
    let mut matcher = Matcher::start(w.bus.clone(), MatcherConfig::default())
        .await
        .unwrap();
    let d: Vec<Actor> = (0..6).map(|_| actor(Role::Driver)).collect();
    let mut pings = vec![
        ping(&w, d[2], north(4.5)),
        ping(&w, d[0], north(1.0)),
        ping(&w, d[3], north(6.0)), // outside round 1
        ping(&w, d[1], north(3.0)),
    ];
    // Offline, and stale: neither is proposed.
    pings.push(Ping {
        is_active: Some(false),
        ..ping(&w, d[4], north(0.5))
    });
    pings.push(Ping {
        at: w.clock.now() - TimeDelta::seconds(61),
        ..ping(&w, d[5], north(0.2))
    });
    // A position alone (`location_update`) keeps the offline driver offline.
    pings.push(Ping {
        is_active: None,
        ..ping(&w, d[4], north(0.4))
    });
    matcher.on_pings(&pings).await.unwrap();

    let m = request(&w, actor(Role::Passenger)).await;
    let step = matcher.poll_feed().await.unwrap();
    assert_eq!(step.proposals, 1);
    let s = state(&w, m).await;
    assert_eq!(ids(&s), vec![d[0].user_id, d[1].user_id, d[2].user_id]);
    let first = s.candidates()[0];
    assert!((first.distance_km - 1.0).abs() < 0.01, "{first:?}");
    // 30 km/h: two minutes per km.
    assert!((118..=122).contains(&first.eta_seconds), "{first:?}");
    // Polling again proposes nothing more.
    assert_eq!(matcher.poll_feed().await.unwrap().proposals, 0);
}

#[tokio::test]
async fn the_radius_doubles_when_a_round_finds_nobody() {
    let w = world().await;
    let mut matcher = Matcher::start(w.bus.clone(), MatcherConfig::default())
        .await
        .unwrap();
    let far = actor(Role::Driver);
    matcher.on_pings(&[ping(&w, far, north(8.0))]).await.unwrap();
    let m = request(&w, actor(Role::Passenger)).await;
    let step = matcher.poll_feed().await.unwrap();
    assert_eq!((step.proposals, step.empty), (0, 1));
    assert_eq!(matcher.waiting(), 1);
    // A ping outside the 5 km radius does not reach the waiting passenger.
    w.clock.advance(TimeDelta::seconds(20));
    assert_eq!(
        matcher
            .on_pings(&[ping(&w, far, north(8.0))])
            .await
            .unwrap()
            .proposals,
        0
    );

    w.clock.advance(TimeDelta::seconds(11));
    assert_eq!(fire_due_deadlines(&w.bus).await.unwrap(), 1);
    let step = matcher.poll_feed().await.unwrap();
    assert_eq!(step.proposals, 1);
    let s = state(&w, m).await;
    assert_eq!((s.round(), s.radius_km()), (2, Some(10.0)));
    assert_eq!(ids(&s), vec![far.user_id]);
}

#[tokio::test]
async fn drivers_who_declined_are_never_proposed_the_match_again() {
    let w = world().await;
    let mut matcher = Matcher::start(w.bus.clone(), MatcherConfig::default())
        .await
        .unwrap();
    let d: Vec<Actor> = (0..6).map(|_| actor(Role::Driver)).collect();
    let pings: Vec<Ping> = d
        .iter()
        .enumerate()
        .map(|(i, a)| ping(&w, *a, north(0.5 + i as f64 * 0.5)))
        .collect();
    matcher.on_pings(&pings).await.unwrap();
    let m = request(&w, actor(Role::Passenger)).await;
    matcher.poll_feed().await.unwrap();
    let first: Vec<UserId> = d[..5].iter().map(|a| a.user_id).collect();
    assert_eq!(ids(&state(&w, m).await), first);
    for driver in &d[..5] {
        assert!(answer(&w, *driver, m, false).await.ok);
    }
    // The last decline started round 2; only the sixth driver is left to propose.
    matcher.poll_feed().await.unwrap();
    let s = state(&w, m).await;
    assert_eq!(s.round(), 2);
    assert_eq!(ids(&s), vec![d[5].user_id]);
    // A decliner's accept is refused by the domain too.
    let ack = answer(&w, d[0], m, true).await;
    assert!(!ack.ok, "{ack:?}");
}

#[tokio::test]
async fn a_driver_coming_online_within_reach_is_proposed_to_a_waiting_passenger_at_once() {
    let w = world().await;
    let mut matcher = Matcher::start(w.bus.clone(), MatcherConfig::default())
        .await
        .unwrap();
    let m = request(&w, actor(Role::Passenger)).await;
    assert_eq!(matcher.poll_feed().await.unwrap().empty, 1);
    assert_eq!(state(&w, m).await.match_status(), Some(MatchStatus::Searching));

    let (outside, inside) = (actor(Role::Driver), actor(Role::Driver));
    assert_eq!(
        matcher
            .on_pings(&[ping(&w, outside, north(7.0))])
            .await
            .unwrap()
            .proposals,
        0
    );
    let step = matcher.on_pings(&[ping(&w, inside, north(2.0))]).await.unwrap();
    assert_eq!(step.proposals, 1);
    let s = state(&w, m).await;
    assert_eq!(s.match_status(), Some(MatchStatus::Proposed));
    assert_eq!(ids(&s), vec![inside.user_id]);
    assert_eq!(matcher.waiting(), 0);
}

#[tokio::test]
async fn a_restarted_matcher_still_serves_a_passenger_who_was_waiting() {
    let w = world().await;
    let mut matcher = Matcher::start(w.bus.clone(), MatcherConfig::default())
        .await
        .unwrap();
    let m = request(&w, actor(Role::Passenger)).await;
    matcher.poll_feed().await.unwrap();
    drop(matcher);
    let mut restarted = Matcher::start(another_process(&w), MatcherConfig::default())
        .await
        .unwrap();
    assert_eq!(restarted.waiting(), 1);
    let driver = actor(Role::Driver);
    assert_eq!(
        restarted
            .on_pings(&[ping(&w, driver, north(1.0))])
            .await
            .unwrap()
            .proposals,
        1
    );
    assert_eq!(ids(&state(&w, m).await), vec![driver.user_id]);
}

/// SPEC.md §3 Match rule 6 under load: 50 passengers request at once around 5 drivers,
/// the matcher proposes every match to all of them, and every driver accepts every
/// match at once, from two processes. No driver ends up in two open matches or rides.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_passengers_and_five_drivers_all_at_once_never_double_book_a_driver() {
    let w = world().await;
    let other = another_process(&w);
    let mut matcher = Matcher::start(w.bus.clone(), MatcherConfig::default())
        .await
        .unwrap();
    let drivers: Vec<Actor> = (0..5).map(|_| actor(Role::Driver)).collect();
    let pings: Vec<Ping> = drivers
        .iter()
        .enumerate()
        .map(|(i, d)| ping(&w, *d, north(0.3 + i as f64 * 0.4)))
        .collect();
    matcher.on_pings(&pings).await.unwrap();

    let passengers: Vec<Actor> = (0..50).map(|_| actor(Role::Passenger)).collect();
    let matches: Vec<MatchId> = join_all(passengers.iter().map(|p| request(&w, *p))).await;
    matcher.poll_feed().await.unwrap();
    for m in &matches {
        assert_eq!(
            state(&w, *m).await.candidates().len(),
            5,
            "every match is proposed to all 5"
        );
    }

    let attempts = drivers.iter().enumerate().flat_map(|(i, d)| {
        let bus = if i % 2 == 0 { w.bus.clone() } else { other.clone() };
        matches.iter().map(move |m| {
            let (bus, d, m) = (bus.clone(), *d, *m);
            tokio::spawn(async move {
                let ack = bus
                    .dispatch(
                        d,
                        Some(&Uuid::now_v7().to_string()),
                        ClientCommand::MatchConfirm {
                            match_id: m,
                            accepted: true,
                        },
                    )
                    .await;
                (d.user_id, m, ack)
            })
        })
    });
    let results: Vec<_> = join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    let mut wins: HashMap<UserId, Vec<MatchId>> = HashMap::new();
    for (driver, m, ack) in &results {
        if ack.ok {
            wins.entry(*driver).or_default().push(*m);
        } else {
            let code = ack.error.as_ref().map(|e| e.code.as_str()).unwrap_or_default();
            assert!(
                [
                    "already_active",
                    "already_taken",
                    "conflict",
                    "invalid_transition"
                ]
                .contains(&code),
                "{ack:?}"
            );
        }
    }
    assert!(!wins.is_empty());
    for (driver, won) in &wins {
        assert_eq!(won.len(), 1, "driver {driver} won {won:?}");
    }

    // The store agrees: each driver holds at most one reservation, in an accepted match.
    let held: Vec<(Uuid, String, Uuid)> =
        sqlx::query_as("SELECT user_id, aggregate_type, aggregate_id FROM participant_reservations")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    for d in &drivers {
        let rows: Vec<_> = held
            .iter()
            .filter(|(u, _, _)| *u == d.user_id.as_uuid())
            .collect();
        assert!(rows.len() <= 1);
        if let Some((_, t, id)) = rows.first() {
            assert_eq!(t, "match");
            assert_eq!(wins[&d.user_id], vec![MatchId::from_uuid(*id)]);
        }
    }
    // And the events: one driver_accepted per winner, never two for one driver.
    let accepted: Vec<(serde_json::Value,)> =
        sqlx::query_as("SELECT payload FROM events WHERE event_type = 'driver_accepted'")
            .fetch_all(&w.pool)
            .await
            .unwrap();
    let mut per_driver: HashMap<String, usize> = HashMap::new();
    for (payload,) in &accepted {
        *per_driver
            .entry(payload["driver_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(accepted.len(), wins.len());
    assert!(per_driver.values().all(|n| *n == 1), "{per_driver:?}");
    // Every passenger is still in exactly one match.
    for p in &passengers {
        assert_eq!(
            held.iter().filter(|(u, _, _)| *u == p.user_id.as_uuid()).count(),
            1
        );
    }
    // The matcher sees the winners as busy.
    matcher.poll_feed().await.unwrap();
    assert_eq!(matcher.indexed(), drivers.len() - wins.len());
}

async fn redis() -> redis::aio::ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| panic!("Redis must be running at {url} (scripts/services.sh): {e}"))
}

#[tokio::test]
async fn redis_positions_are_shared_between_processes() {
    let conn = redis().await;
    let prefix = format!("test:{}:", Uuid::new_v4().simple());
    let store = Uuid::new_v4();
    let one = RedisPositions::new(conn.clone(), &prefix, store);
    let two = RedisPositions::new(redis().await, &prefix, store);
    let user = UserId::from_uuid(Uuid::now_v7());
    assert_eq!(two.last(user).await, None);
    let at = chrono::DateTime::from_timestamp_millis(1_795_000_000_000).unwrap();
    one.record(user, north(1.0), at).await;
    assert_eq!(two.last_with_time(user).await.unwrap(), Some((north(1.0), at)));
    one.record(user, north(2.0), at + TimeDelta::seconds(1)).await;
    assert_eq!(two.last(user).await, Some(north(2.0)));
    // An older position (a late writer: the geo projection replaying a ping) does not
    // move the user back; one at the same instant does replace it.
    two.record(user, north(3.0), at).await;
    assert_eq!(two.last(user).await, Some(north(2.0)));
    two.record(user, north(4.0), at + TimeDelta::seconds(1)).await;
    assert_eq!(two.last(user).await, Some(north(4.0)));
    // Another store's positions are another key.
    assert_eq!(
        RedisPositions::new(conn.clone(), &prefix, Uuid::new_v4())
            .last(user)
            .await,
        None
    );
    let mut c = conn;
    redis::cmd("DEL")
        .arg(one.key())
        .query_async::<()>(&mut c)
        .await
        .unwrap();
}

/// The running matcher over a real JetStream stream: a passenger waits; a driver's ping
/// published on `location.driver.<id>` gets them proposed.
#[tokio::test]
async fn the_running_matcher_proposes_a_driver_whose_ping_arrives_on_the_stream() {
    let w = world().await;
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let nats = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS must be running at {url}: {e}"));
    let js = async_nats::jetstream::new(nats);
    let stream = format!("TEST_LOCATION_{}", Uuid::new_v4().simple());
    matcher::ensure_location_stream(&js, &stream).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(matcher::run(
        w.bus.clone(),
        js.clone(),
        stream.clone(),
        MatcherConfig::default(),
        stopped,
    ));
    let m = request(&w, actor(Role::Passenger)).await;
    // The round found nobody (recorded as an empty proposal).
    let mut waited = 0;
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE event_type = 'proposed'")
        .fetch_one(&w.pool)
        .await
        .unwrap()
        == 0
    {
        waited += 1;
        assert!(waited < 100, "the matcher never searched");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let driver = actor(Role::Driver);
    let body = serde_json::to_vec(&ping(&w, driver, north(1.5))).unwrap();
    js.publish(domain::location::subject(&stream, driver.user_id), body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut proposed = false;
    for _ in 0..100 {
        if ids(&state(&w, m).await) == vec![driver.user_id] {
            proposed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proposed, "the driver was never proposed");
    stop.send(true).unwrap();
    task.await.unwrap();
    js.delete_stream(&stream).await.unwrap();
}
