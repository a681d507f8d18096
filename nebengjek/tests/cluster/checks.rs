//! What must hold after a run, whatever happened during it: the store has every
//! acknowledged command's events exactly once, the read models hold no doubled ledger
//! row or payment, `verify` passes, and every read model equals its rebuild.

use std::time::{Duration, Instant};

use projections::{MatchesProjector, RidesProjector};
use sqlx::PgPool;

use super::client::AckRecord;

/// Commands whose acknowledgement promises events, by frame type. A driver's
/// `location_update` is sent only during a ride here, so it is a trip point (recorded
/// or rejected: an event either way; the test keeps it clear of jitter). Excluded by design: `beacon_update` and a
/// passenger's `location_update` are positions (Redis and JetStream `LOCATION`), never
/// events; and a refused command (`ok: false`) appends nothing, which is checked too.
fn promises_events(ack: &AckRecord, drivers: &[String]) -> bool {
    match ack.kind.as_str() {
        "finder_update" | "match_confirm" | "ride_start" | "ride_arrived" | "payment_process"
        | "ride_cancel" => true,
        // Drivers send `location_update` only between an acked `ride_start` and their
        // `ride_arrived`, each ride's points away from every earlier position (see
        // `client::ride`): each is recorded or rejected on the ride, an event either way.
        "location_update" => drivers.contains(&ack.user_id),
        _ => false,
    }
}

/// Every acknowledged command has its events, written by one append; every refused one
/// has none. Returns how many acks were checked against events.
pub async fn acks_are_in_the_store(pool: &PgPool, acks: &[AckRecord], drivers: &[String]) -> usize {
    let mut checked = 0;
    for ack in acks {
        // One append writes all of a command's events with one recorded_at: a second
        // application of the same command would show a second one.
        let (events, appends): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT recorded_at) FROM events \
             WHERE metadata->>'command_id' = $1 AND metadata->'actor'->>'user_id' = $2",
        )
        .bind(&ack.frame_id)
        .bind(&ack.user_id)
        .fetch_one(pool)
        .await
        .unwrap();
        if !ack.ok {
            assert_eq!(
                events, 0,
                "refused {} {} of {} wrote events: {}",
                ack.kind, ack.frame_id, ack.user_id, ack.body
            );
        } else if promises_events(ack, drivers) {
            assert!(
                events > 0,
                "acknowledged {} {} of {} has no events ({})",
                ack.kind,
                ack.frame_id,
                ack.user_id,
                ack.body
            );
            assert_eq!(
                appends, 1,
                "{} {} of {} was applied {appends} times",
                ack.kind, ack.frame_id, ack.user_id
            );
            checked += 1;
        }
    }
    checked
}

/// Waits until both read-model projectors have reached the store's head.
pub async fn projections_caught_up(pool: &PgPool, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let head = migrations::head_position(pool).await.unwrap();
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::text[]) AS n(name) \
             LEFT JOIN checkpoints c ON c.name = n.name WHERE coalesce(c.position, 0) < $2",
        )
        .bind(vec![RidesProjector::NAME, MatchesProjector::NAME])
        .bind(head)
        .fetch_one(pool)
        .await
        .unwrap();
        if behind == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "read models did not reach position {head} within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// No ride has a doubled ledger row or payment; each ride's ledger adds up to its
/// adjusted fare; `completed` rides are all `COMPLETED` with an accepted payment.
pub async fn no_doubles(pool: &PgPool, completed: &[String]) {
    let doubled_ledger: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT ride_id, kind, position FROM billing_ledger \
         GROUP BY 1, 2, 3 HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(doubled_ledger, 0, "ledger rows projected twice");
    let doubled_payments: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT ride_id FROM payments GROUP BY 1 HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(doubled_payments, 0, "a ride with two payments");
    let off: Vec<(uuid::Uuid, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT r.ride_id, r.adjusted_fare, (SELECT sum(cost)::bigint FROM billing_ledger l WHERE l.ride_id = r.ride_id) \
         FROM rides r WHERE r.adjusted_fare IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    for (ride, fare, ledger) in &off {
        assert_eq!(
            fare, ledger,
            "ride {ride}: the ledger does not add up to the fare"
        );
    }
    for ride in completed {
        let id = uuid::Uuid::parse_str(ride).unwrap();
        let (status, payment): (String, Option<String>) = sqlx::query_as(
            "SELECT r.status, (SELECT p.status FROM payments p WHERE p.ride_id = r.ride_id) FROM rides r WHERE r.ride_id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("ride {ride} is not in the read model: {e}"));
        assert_eq!(
            (status.as_str(), payment.as_deref()),
            ("COMPLETED", Some("ACCEPTED")),
            "ride {ride}"
        );
    }
}

/// `replay-tools verify` over the whole store.
pub async fn verify_passes(pool: &PgPool) {
    let report = replay_tools::audit::verify(pool, None, false, &|_, _| {})
        .await
        .expect("verify runs");
    assert!(report.passed(), "verify failed: {report:?}");
    assert!(report.rides > 0, "verify folded no ride");
}

async fn dump(pool: &PgPool, table: &str, order: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT to_jsonb(t)::text FROM {table} t ORDER BY {order}"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn dump_all(pool: &PgPool) -> Vec<Vec<String>> {
    vec![
        dump(pool, "rides", "ride_id").await,
        dump(pool, "billing_ledger", "entry_id").await,
        dump(pool, "payments", "payment_id").await,
        dump(pool, "matches", "match_id").await,
    ]
}

/// Every read model equals its rebuild from position 0, row for row. Run with the
/// nodes stopped (nothing moves while it compares).
pub async fn read_models_equal_rebuild(pool: &PgPool) {
    let live = dump_all(pool).await;
    let head = migrations::head_position(pool).await.unwrap();
    assert_eq!(
        projections::rebuild::rebuild(pool, &RidesProjector, &|_, _| {})
            .await
            .unwrap(),
        head
    );
    assert_eq!(
        projections::rebuild::rebuild(pool, &MatchesProjector, &|_, _| {})
            .await
            .unwrap(),
        head
    );
    let rebuilt = dump_all(pool).await;
    for (i, table) in ["rides", "billing_ledger", "payments", "matches"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            live[i].len(),
            rebuilt[i].len(),
            "{table}: row count differs from its rebuild"
        );
        assert_eq!(live[i], rebuilt[i], "{table} differs from its rebuild");
    }
}

/// The relay (one at a time, whichever process holds its lock) has put every event
/// into JetStream `EVENTS` exactly once and in order: as many messages as positions,
/// the last one the store's head.
pub async fn events_stream_matches_store(nats_url: &str, pool: &PgPool, timeout: Duration) {
    let (client, _) = super::nats_as(nats_url, super::NATS_SERVICE).await;
    let js = async_nats::jetstream::new(client);
    let deadline = Instant::now() + timeout;
    loop {
        let head = migrations::head_position(pool).await.unwrap();
        let mut stream = js.get_stream("EVENTS").await.expect("EVENTS");
        let state = stream.info().await.expect("stream info").state.clone();
        if state.messages == head as u64 {
            let last = stream
                .get_raw_message(state.last_sequence)
                .await
                .expect("last message");
            let position = last
                .headers
                .get(projections::relay::POSITION_HEADER)
                .map(|v| v.as_str().to_owned());
            assert_eq!(
                position,
                Some(head.to_string()),
                "the stream's last message is the head"
            );
            return;
        }
        assert!(
            state.messages < head as u64,
            "EVENTS holds {} messages for {head} events: something was relayed twice",
            state.messages
        );
        assert!(
            Instant::now() < deadline,
            "EVENTS holds {} of {head} events after {timeout:?}",
            state.messages
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
