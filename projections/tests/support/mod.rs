//! Test support: a fresh, migrated database per test on the server of `DATABASE_URL`
//! (tests fail, never skip, when PostgreSQL is missing), a command bus over it with a
//! manual clock, rides driven through the real command pipeline, and what the events
//! say the read models must hold.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{TimeDelta, TimeZone, Utc};
use commands::clock::ManualClock;
use commands::ingress::ClientCommand;
use commands::pipeline::{parse_event, Envelope};
use commands::ports::{ChargeError, InMemoryPositions, ScriptedProvider};
use commands::process::create_rides_once;
use commands::{Ack, CommandBus, EventStore};
use domain::billing::AdjustmentFactor;
use domain::matching::{Candidate, MatchCommand};
use domain::ride::RideEvent;
use domain::{Actor, GeoPoint, MatchId, Policy, RideId, Role, UserId};
use rand::rngs::StdRng;
use rand::Rng;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// The server tests use.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/nebengjek".into())
}

/// A new database with the schema applied.
pub async fn fresh_pool() -> PgPool {
    let url = database_url();
    let base = url.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(url);
    let name = format!("nebengjek_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL must be running at {base} (scripts/services.sh): {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect(&format!("{base}/{name}"))
        .await
        .expect("connect to test database");
    migrations::run(&pool).await.expect("migrations apply");
    pool
}

/// Everything a test drives.
pub struct World {
    pub pool: PgPool,
    pub bus: CommandBus,
    pub clock: Arc<ManualClock>,
    pub payments: Arc<ScriptedProvider>,
}

pub async fn world() -> World {
    let pool = fresh_pool().await;
    let store = EventStore::start(pool.clone());
    let clock = Arc::new(ManualClock::new(
        Utc.with_ymd_and_hms(2026, 11, 22, 8, 0, 0).unwrap(),
    ));
    let payments = Arc::new(ScriptedProvider::default());
    let bus = CommandBus::new(
        store,
        Policy::default(),
        clock.clone(),
        Arc::new(InMemoryPositions::default()),
        payments.clone(),
    );
    World {
        pool,
        bus,
        clock,
        payments,
    }
}

pub fn pickup() -> GeoPoint {
    GeoPoint::new(-6.2, 106.8).unwrap()
}

fn destination() -> GeoPoint {
    GeoPoint::new(-6.17, 106.82).unwrap()
}

fn user(role: Role) -> Actor {
    Actor::new(UserId::from_uuid(Uuid::now_v7()), role)
}

async fn send(w: &World, actor: Actor, cmd: ClientCommand) -> Ack {
    w.bus
        .dispatch(actor, Some(&Uuid::now_v7().to_string()), cmd)
        .await
}

/// How a generated ride ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The passenger gives up the match before any driver: no ride.
    MatchCancelled,
    /// Cancelled while PENDING by either participant.
    Cancelled,
    /// Paid at the first try.
    Completed,
    /// The passenger declines, then pays.
    DeclinedThenPaid,
    /// The provider refuses, then charges.
    FailedThenPaid,
    /// Arrived, declined, never paid.
    LeftUnpaid,
}

impl Ending {
    pub fn random(rng: &mut StdRng) -> Ending {
        match rng.gen_range(0..10) {
            0 => Ending::MatchCancelled,
            1 | 2 => Ending::Cancelled,
            3..=5 => Ending::Completed,
            6 => Ending::DeclinedThenPaid,
            7 => Ending::FailedThenPaid,
            _ => Ending::LeftUnpaid,
        }
    }
}

/// Drives one passenger from the request to `ending` through the command bus, with
/// random trip points (some jitter, some too fast) and a random adjustment factor.
pub async fn drive(w: &World, rng: &mut StdRng, ending: Ending) -> Option<RideId> {
    let passenger = user(Role::Passenger);
    let driver = user(Role::Driver);
    let ack = send(
        w,
        passenger,
        ClientCommand::RequestMatch {
            pickup: pickup(),
            destination: destination(),
        },
    )
    .await;
    assert!(ack.ok, "{ack:?}");
    let match_id: MatchId = ack.result.as_ref().unwrap()["match_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    if ending == Ending::MatchCancelled {
        let ack = send(w, passenger, ClientCommand::CancelMatch).await;
        assert!(ack.ok, "{ack:?}");
        return None;
    }
    let env = Envelope::system(format!("propose:{match_id}:{}", Uuid::now_v7()), None);
    let candidates = vec![Candidate {
        driver_id: driver.user_id,
        distance_km: 1.0,
        eta_seconds: 120,
    }];
    let ack = commands::bus::answer(
        w.bus
            .matches()
            .execute(match_id.as_uuid(), &env, &MatchCommand::Propose { candidates })
            .await
            .unwrap(),
    );
    assert!(ack.ok, "{ack:?}");
    for actor in [driver, passenger] {
        let ack = send(
            w,
            actor,
            ClientCommand::MatchConfirm {
                match_id,
                accepted: true,
            },
        )
        .await;
        assert!(ack.ok, "{ack:?}");
    }
    create_rides_once(&w.bus).await.unwrap();
    let ride_id = w
        .bus
        .matches()
        .load(match_id.as_uuid())
        .await
        .unwrap()
        .state
        .ride_id()
        .expect("a confirmed match has its ride");

    if ending == Ending::Cancelled {
        let by = if rng.gen_bool(0.5) { driver } else { passenger };
        let reason = format!("reason {}", rng.gen_range(0..100));
        let ack = send(w, by, ClientCommand::RideCancel { ride_id, reason }).await;
        assert!(ack.ok, "{ack:?}");
        return Some(ride_id);
    }

    let beacon = ClientCommand::BeaconUpdate {
        is_active: true,
        point: pickup(),
    };
    assert!(send(w, driver, beacon).await.ok);
    let ack = send(w, driver, ClientCommand::RideStart { ride_id }).await;
    assert_eq!(ack.result.as_ref().unwrap()["status"], "IN_PROGRESS", "{ack:?}");

    let (mut lat, mut lon) = (pickup().lat(), pickup().lon());
    for _ in 0..rng.gen_range(0..9) {
        let (step, seconds) = match rng.gen_range(0..10) {
            0 => (0.00003, 20), // ~3 m: jitter, not an event
            1 => (0.05, 1),     // ~5.5 km in a second: rejected as too fast
            _ => (rng.gen_range(0.0005..0.008), rng.gen_range(40..90)),
        };
        w.clock.advance(TimeDelta::seconds(seconds));
        let candidate = (lat + step, lon + step / 3.0);
        let point = GeoPoint::new(candidate.0, candidate.1).unwrap();
        let ack = send(
            w,
            driver,
            ClientCommand::LocationUpdate {
                point,
                accuracy_m: None,
                recorded_at: None,
                ride_id: None,
            },
        )
        .await;
        assert!(ack.ok, "{ack:?}");
        let rejected = ack.result.as_ref().is_some_and(|r| r.get("rejected").is_some());
        if !rejected && step > 0.0001 {
            (lat, lon) = candidate;
        }
    }
    w.clock.advance(TimeDelta::seconds(30));
    let adjustment_factor = rng
        .gen_bool(0.5)
        .then(|| AdjustmentFactor::from_bps(rng.gen_range(3000..=10_000)).unwrap());
    let ack = send(
        w,
        driver,
        ClientCommand::RideArrived {
            ride_id,
            adjustment_factor,
        },
    )
    .await;
    assert_eq!(ack.result.as_ref().unwrap()["status"], "ARRIVED", "{ack:?}");
    let amount = w
        .bus
        .rides()
        .load(ride_id.as_uuid())
        .await
        .unwrap()
        .state
        .amount_due()
        .unwrap()
        .get();
    let pay = |accepted: bool| ClientCommand::PaymentProcess {
        ride_id,
        amount,
        accepted,
    };
    w.clock.advance(TimeDelta::seconds(10));
    match ending {
        Ending::MatchCancelled | Ending::Cancelled => unreachable!("handled above"),
        Ending::Completed => {}
        Ending::DeclinedThenPaid | Ending::LeftUnpaid => {
            let ack = send(w, passenger, pay(false)).await;
            assert_eq!(ack.result.as_ref().unwrap()["status"], "ARRIVED", "{ack:?}");
        }
        Ending::FailedThenPaid => {
            w.payments
                .push(Err(ChargeError::Declined("card declined".into())));
            let ack = send(w, passenger, pay(true)).await;
            assert!(!ack.ok, "{ack:?}");
        }
    }
    if ending != Ending::LeftUnpaid {
        let ack = send(w, passenger, pay(true)).await;
        assert_eq!(ack.result.as_ref().unwrap()["status"], "COMPLETED", "{ack:?}");
    }
    Some(ride_id)
}

/// What a ride's events say its ledger and payment must be.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// entry_id → (kind, cost).
    pub ledger: BTreeMap<Uuid, (String, i64)>,
    /// (status, attempts, adjusted_cost, admin_fee, driver_payout), once arrived.
    pub payment: Option<(String, i32, i64, i64, i64)>,
    pub status: String,
}

/// Reads every ride's events from the store and derives its expected rows.
pub async fn expected(pool: &PgPool) -> BTreeMap<Uuid, Expected> {
    let rows: Vec<(Uuid, String, serde_json::Value)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, payload FROM events WHERE aggregate_type = 'ride' ORDER BY position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<Uuid, Expected> = BTreeMap::new();
    for (ride, event_type, payload) in rows {
        let e = out.entry(ride).or_default();
        let set_payment = |e: &mut Expected, status: &str, attempt: u32| {
            let p = e.payment.as_mut().expect("a payment event after arrival");
            p.0 = status.to_owned();
            p.1 = attempt as i32;
        };
        match parse_event::<RideEvent>(&event_type, &payload).unwrap() {
            RideEvent::Created { .. } => e.status = "PENDING".into(),
            RideEvent::Started { .. } => e.status = "IN_PROGRESS".into(),
            RideEvent::TripPointRecorded { entry_id, cost, .. } => {
                e.ledger
                    .insert(entry_id.as_uuid(), ("trip_segment".into(), cost.get()));
            }
            RideEvent::TripPointRejected { .. } => {}
            RideEvent::Arrived {
                fare_adjustment,
                discount,
                adjusted_fare,
                admin_fee,
                driver_payout,
                ..
            } => {
                e.status = "ARRIVED".into();
                for entry in [fare_adjustment, discount].into_iter().flatten() {
                    e.ledger.insert(
                        entry.entry_id.as_uuid(),
                        (entry.kind.as_str().into(), entry.cost.get()),
                    );
                }
                e.payment = Some((
                    "PENDING".into(),
                    0,
                    adjusted_fare.get(),
                    admin_fee.get(),
                    driver_payout.get(),
                ));
            }
            RideEvent::PaymentDeclined { attempt, .. } => set_payment(e, "DECLINED", attempt),
            RideEvent::PaymentFailed { attempt, .. } => set_payment(e, "FAILED", attempt),
            RideEvent::PaymentAccepted { attempt, .. } => set_payment(e, "ACCEPTED", attempt),
            RideEvent::Completed { .. } => e.status = "COMPLETED".into(),
            RideEvent::Cancelled { .. } => e.status = "CANCELLED".into(),
        }
    }
    out
}

/// What the read models hold, in the same shape as [`expected`].
pub async fn projected(pool: &PgPool) -> BTreeMap<Uuid, Expected> {
    let mut out: BTreeMap<Uuid, Expected> = BTreeMap::new();
    let rides: Vec<(Uuid, String)> = sqlx::query_as("SELECT ride_id, status FROM rides")
        .fetch_all(pool)
        .await
        .unwrap();
    for (ride, status) in rides {
        out.entry(ride).or_default().status = status;
    }
    let ledger: Vec<(Uuid, Uuid, String, i64)> =
        sqlx::query_as("SELECT ride_id, entry_id, kind, cost FROM billing_ledger")
            .fetch_all(pool)
            .await
            .unwrap();
    for (ride, entry, kind, cost) in ledger {
        let previous = out.entry(ride).or_default().ledger.insert(entry, (kind, cost));
        assert!(previous.is_none(), "entry {entry} twice");
    }
    let payments: Vec<(Uuid, String, i32, i64, i64, i64)> = sqlx::query_as(
        "SELECT ride_id, status, attempts, adjusted_cost, admin_fee, driver_payout FROM payments",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (ride, status, attempts, cost, fee, payout) in payments {
        out.entry(ride).or_default().payment = Some((status, attempts, cost, fee, payout));
    }
    out
}

/// A table's rows as JSON text, in a stable order: for row-for-row comparisons.
pub async fn dump(pool: &PgPool, table: &str, order: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every read-model table, dumped.
pub async fn dump_all(pool: &PgPool) -> Vec<Vec<String>> {
    vec![
        dump(pool, "rides", "ride_id").await,
        dump(pool, "billing_ledger", "entry_id").await,
        dump(pool, "payments", "payment_id").await,
        dump(pool, "matches", "match_id").await,
    ]
}

pub async fn head(pool: &PgPool) -> i64 {
    migrations::head_position(pool).await.unwrap()
}
