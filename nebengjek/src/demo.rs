//! `nebengjek demo`: starts the system in this process and drives one ride through it
//! over NATS, as another service would — request, proposal, accept, confirm, start,
//! trip points, arrival with a discount, a declined then a successful payment, a resent
//! command — then prints the ride's events and verifies every hash chain.
//!
//! The matcher (nearest drivers from the Redis geo index) is issue 4; until then the
//! demo plays the matcher and proposes its one driver itself, through the same
//! command pipeline.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use chrono::{SecondsFormat, Utc};
use commands::clock::{new_id, SystemClock};
use commands::pipeline::Envelope;
use commands::ports::{AcceptingProvider, InMemoryPositions};
use commands::{Ack, CommandBus, EventStore};
use domain::matching::{Candidate, MatchCommand};
use domain::{Actor, Role, UserId};
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::config::Config;

struct Client {
    nats: async_nats::Client,
}

impl Client {
    async fn send(&self, who: &str, actor: Actor, subject: &str, data: Value) -> anyhow::Result<Ack> {
        self.send_with_id(who, actor, subject, data, &new_id().to_string())
            .await
    }

    async fn send_with_id(
        &self,
        who: &str,
        actor: Actor,
        subject: &str,
        data: Value,
        command_id: &str,
    ) -> anyhow::Result<Ack> {
        let body = json!({
            "command_id": command_id,
            "actor": {"user_id": actor.user_id, "role": actor.role},
            "data": data,
        });
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.nats
                .request(subject.to_owned(), serde_json::to_vec(&body)?.into()),
        )
        .await
        .context("no answer from the command ingress within 5 s")??;
        let ack: Ack = serde_json::from_slice(&reply.payload)?;
        let shown = match (&ack.result, &ack.error) {
            (Some(r), _) => r.to_string(),
            (_, Some(e)) => format!("{} ({})", e.code, e.message),
            _ => String::new(),
        };
        println!(
            "  {who:<9} {subject:<18} → {} {shown}",
            if ack.ok { "ok " } else { "ERR" }
        );
        Ok(ack)
    }
}

fn field(ack: &Ack, name: &str) -> anyhow::Result<String> {
    ack.result
        .as_ref()
        .and_then(|r| r.get(name))
        .map(|v| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))
        .with_context(|| format!("the answer has no {name}: {ack:?}"))
}

fn expect(ack: &Ack, status: &str) -> anyhow::Result<()> {
    if field(ack, "status")? != status {
        bail!("expected status {status}, got {ack:?}");
    }
    Ok(())
}

/// Runs the demo.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let pool = crate::startup::connect(&config).await?;
    migrations::run(&pool).await?;
    let nats = async_nats::connect(&config.nats_url)
        .await
        .with_context(|| format!("cannot connect to NATS at NATS_URL={}", config.nats_url))?;
    let bus = CommandBus::new(
        EventStore::start(pool.clone()),
        config.policy,
        Arc::new(SystemClock),
        Arc::new(InMemoryPositions::default()),
        Arc::new(AcceptingProvider),
    );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(commands::nats::serve(
        nats.clone(),
        bus.clone(),
        String::new(),
        stopped.clone(),
    ));
    tokio::spawn(commands::process::run_ride_creator(bus.clone(), stopped.clone()));
    tokio::spawn(commands::process::run_deadlines(bus.clone(), stopped.clone()));
    let projectors: Vec<Arc<dyn projections::Projector>> = vec![
        Arc::new(projections::RidesProjector),
        Arc::new(projections::MatchesProjector),
    ];
    tokio::spawn(projections::run(pool.clone(), projectors, stopped));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let client = Client { nats };
    let passenger = Actor::new(UserId::from_uuid(new_id()), Role::Passenger);
    let driver = Actor::new(UserId::from_uuid(new_id()), Role::Driver);
    println!(
        "NebengJek demo — one ride over NATS (passenger {}, driver {})\n",
        passenger.user_id, driver.user_id
    );
    let (lat, lon) = (-6.1754, 106.8272); // Monas, Jakarta

    let ack = client
        .send(
            "passenger",
            passenger,
            "cmd.match.request",
            json!({"pickup": {"lat": lat, "lon": lon}, "destination": {"lat": -6.2088, "lon": 106.8456}}),
        )
        .await?;
    let match_id: Uuid = field(&ack, "match_id")?.parse()?;

    let propose = MatchCommand::Propose {
        candidates: vec![Candidate {
            driver_id: driver.user_id,
            distance_km: 0.4,
            eta_seconds: 90,
        }],
    };
    let env = Envelope::system(format!("demo-matcher:{match_id}"), None);
    commands::bus::answer(bus.matches().execute(match_id, &env, &propose).await?);
    println!("  matcher   (in process)       → proposes the match to the driver, 0.4 km away");

    let confirm = json!({"match_id": match_id, "accepted": true});
    expect(
        &client
            .send("driver", driver, "cmd.match.confirm", confirm.clone())
            .await?,
        "DRIVER_ACCEPTED",
    )?;
    expect(
        &client
            .send("passenger", passenger, "cmd.match.confirm", confirm)
            .await?,
        "CONFIRMED",
    )?;

    let mut ride_id = None;
    for _ in 0..50 {
        if let Some((kind, id)) = bus.store().holder_of(passenger.user_id.as_uuid()).await? {
            if kind == "ride" && bus.rides().load(id).await?.state.ride_id().is_some() {
                ride_id = Some(id);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ride_id = ride_id.context("the process manager did not create the ride")?;
    println!("  system    process manager    → ride {ride_id} created from the confirmed match");

    client
        .send(
            "driver",
            driver,
            "cmd.driver.beacon",
            json!({"is_active": true, "lat": lat, "lon": lon}),
        )
        .await?;
    expect(
        &client
            .send("driver", driver, "cmd.ride.start", json!({"ride_id": ride_id}))
            .await?,
        "IN_PROGRESS",
    )?;
    for k in 1..=10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let point = json!({
            "ride_id": ride_id,
            "lat": lat - 0.000_12 * f64::from(k),
            "lon": lon,
            "recorded_at": Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        });
        client.send("driver", driver, "cmd.ride.location", point).await?;
    }
    expect(
        &client
            .send(
                "driver",
                driver,
                "cmd.ride.arrive",
                json!({"ride_id": ride_id, "adjustment_factor": 0.9}),
            )
            .await?,
        "ARRIVED",
    )?;
    let ride = bus.rides().load(ride_id).await?.state;
    let amount = ride
        .amount_due()
        .context("an arrived ride has an amount due")?
        .get();
    let decline = json!({"ride_id": ride_id, "amount": amount, "accepted": false});
    expect(
        &client
            .send("passenger", passenger, "cmd.ride.pay", decline)
            .await?,
        "ARRIVED",
    )?;
    let pay = json!({"ride_id": ride_id, "amount": amount, "accepted": true});
    let paid = client
        .send_with_id("passenger", passenger, "cmd.ride.pay", pay.clone(), "pay-1")
        .await?;
    expect(&paid, "COMPLETED")?;
    let again = client
        .send_with_id("passenger", passenger, "cmd.ride.pay", pay, "pay-1")
        .await?;
    if again != paid {
        bail!("a resent command got a different answer");
    }
    println!("  (the resent pay-1 got the first answer and appended nothing)\n");

    println!("Events of ride {ride_id}:");
    println!("  {:>8}  {:>3}  {:<20}  summary", "position", "seq", "event");
    for e in migrations::read_stream(&pool, "ride", ride_id, 0).await? {
        let p = &e.payload;
        let summary = match e.event_type.as_str() {
            "trip_point_recorded" => format!(
                "+{} m, cost {} (total {} km)",
                p["segment_m"], p["cost"], p["cum_km"]
            ),
            "trip_point_rejected" => format!("rejected: {}", p["reason"]),
            "arrived" => format!(
                "distance {} km, fare {}, factor {}, adjusted {}, admin fee {}, payout {}",
                p["distance_km"],
                p["fare"],
                p["adjustment_factor"],
                p["adjusted_fare"],
                p["admin_fee"],
                p["driver_payout"]
            ),
            "payment_accepted" => format!("amount {}, attempt {}", p["amount"], p["attempt"]),
            "payment_declined" => format!("attempt {}", p["attempt"]),
            _ => String::new(),
        };
        println!(
            "  {:>8}  {:>3}  {:<20}  {summary}",
            e.position, e.sequence, e.event_type
        );
    }

    // The read models analysts query, once the projector has caught up.
    let head = migrations::head_position(&pool).await?;
    for _ in 0..100 {
        if projections::runtime::checkpoint(&pool, projections::RidesProjector::NAME).await? >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, summary): (String, String) = sqlx::query_as(
        "SELECT status, format('%s km, fare %s, adjusted %s, admin fee %s, payout %s', \
         distance_km, fare, adjusted_fare, admin_fee, driver_payout) FROM rides WHERE ride_id = $1",
    )
    .bind(ride_id)
    .fetch_one(&pool)
    .await
    .context("the rides read model has no row for the demo ride")?;
    let (entries, ledger): (i64, Option<i64>) =
        sqlx::query_as("SELECT count(*), sum(cost)::int8 FROM billing_ledger WHERE ride_id = $1")
            .bind(ride_id)
            .fetch_one(&pool)
            .await?;
    println!(
        "\nRead model rides: {status}, {summary}; billing_ledger: {entries} entries summing to {}",
        ledger.unwrap_or_default()
    );

    let report = replay_tools::audit::verify(&pool, None, false, &|_, _| {}).await?;
    let _ = stop.send(true);
    if !report.passed() {
        for b in &report.chain_breaks {
            println!("TAMPERED {b}");
        }
        for d in &report.row_diffs {
            println!("DIFFERS {d}");
        }
        bail!("verify failed");
    }
    println!(
        "\nverify: {} events in the store, every hash chain intact; {} rides in the read models agree with their events",
        report.events, report.rides
    );
    Ok(())
}
