//! The outbox relay against real PostgreSQL and NATS JetStream: every event reaches a
//! JetStream consumer once and in feed order, whatever moment the relay is stopped at.
//! Each test uses a stream and subject prefix of its own, so tests (and a running
//! system) on the same NATS server never see each other's messages.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use migrations::FeedEnvelope;
use projections::relay::{Relay, RelayConfig, Resume, POSITION_HEADER};
use rand::rngs::StdRng;
use rand::SeedableRng;
use support::{drive, head, world, Ending, World};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

async fn nats() -> async_nats::Client {
    async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
        panic!(
            "NATS must be running at {} (scripts/services.sh): {e}",
            nats_url()
        )
    })
}

/// A stream of this test's own; deleted first in case a crashed run left it.
async fn config(batch: i64) -> RelayConfig {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..12].to_uppercase();
    let config = RelayConfig {
        stream: format!("TEST_EVENTS_{tag}"),
        subject_prefix: format!("test_events_{tag}"),
        batch,
    };
    let _ = jetstream::new(nats().await).delete_stream(&config.stream).await;
    config
}

async fn workload(w: &World, seed: u64, rides: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..rides {
        let ending = Ending::random(&mut rng);
        drive(w, &mut rng, ending).await;
    }
}

/// Everything in the stream, read by a fresh consumer from the start.
async fn consume_all(config: &RelayConfig) -> Vec<(FeedEnvelope, i64, String)> {
    let js = jetstream::new(nats().await);
    let stream = js.get_stream(&config.stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut info = stream.get_info().await.expect("info");
    let total = info.state.messages as usize;
    let mut out = Vec::with_capacity(total);
    let mut messages = consumer.messages().await.expect("messages");
    while out.len() < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream delivers what it holds")
            .expect("a message")
            .expect("no error");
        let envelope: FeedEnvelope = serde_json::from_slice(&message.payload).expect("envelope");
        let position: i64 = message
            .headers
            .as_ref()
            .and_then(|h| h.get(POSITION_HEADER))
            .and_then(|v| v.as_str().parse().ok())
            .expect("position header");
        out.push((envelope, position, message.subject.to_string()));
    }
    info = stream.get_info().await.expect("info");
    assert_eq!(
        info.state.messages as usize, total,
        "nothing arrived while reading"
    );
    out
}

fn assert_once_in_order(delivered: &[(FeedEnvelope, i64, String)], head: i64, prefix: &str) {
    let positions: Vec<i64> = delivered.iter().map(|(e, _, _)| e.position).collect();
    let expected: Vec<i64> = (1..=head).collect();
    assert_eq!(positions, expected, "each event once, in feed order");
    for (envelope, header_position, subject) in delivered {
        assert_eq!(envelope.position, *header_position);
        assert_eq!(
            subject,
            &format!("{prefix}.{}.{}", envelope.aggregate_type, envelope.event_type)
        );
        assert!(envelope.event_id.is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_in_feed_order_with_the_spec_envelope() {
    let w = world().await;
    workload(&w, 7, 12).await;
    let config = config(50).await;
    let relay = Relay::new(w.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    let end = relay.drain().await.expect("drain");
    let head = head(&w.pool).await;
    assert_eq!(end.position, head);
    let delivered = consume_all(&config).await;
    assert_once_in_order(&delivered, head, &config.subject_prefix);
    // The body is exactly the stored event.
    let first = migrations::read_feed(&w.pool, 0, 1)
        .await
        .expect("feed")
        .remove(0);
    assert_eq!(delivered[0].0, first.envelope());
    assert_eq!(delivered[0].2, first.subject(&config.subject_prefix));
    jetstream::new(nats().await)
        .delete_stream(&config.stream)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_mid_batch_at_any_point_and_restarted_delivers_each_event_once() {
    let w = world().await;
    workload(&w, 11, 10).await;
    let config = config(40).await;
    let head = head(&w.pool).await;
    // Crash after 0, 1, 17 and 39 messages of successive batches: each time the broker
    // has more than the checkpoint says.
    for cut in [0usize, 1, 17, 39] {
        let relay = Relay::new(w.pool.clone(), nats().await, config.clone())
            .await
            .expect("relay");
        let at = relay.resume().await.expect("resume");
        let crashed = relay.step(at, Some(cut)).await;
        assert!(crashed.is_err(), "the injected crash stops the batch");
    }
    // A fresh relay (a new process) finishes the job.
    let relay = Relay::new(w.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    let end = relay.drain().await.expect("drain");
    assert_eq!(end.position, head);
    let delivered = consume_all(&config).await;
    assert_once_in_order(&delivered, head, &config.subject_prefix);
    jetstream::new(nats().await)
        .delete_stream(&config.stream)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_from_an_old_checkpoint_is_dropped_by_the_message_id() {
    let w = world().await;
    workload(&w, 5, 6).await;
    let config = config(1000).await;
    let relay = Relay::new(w.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    relay.drain().await.expect("drain");
    // As if the relay had forgotten everything (its checkpoint and the stream's end):
    // every message id is a duplicate within the window, so the consumer sees nothing new.
    relay
        .step(
            Resume {
                position: 0,
                last_event_id: None,
            },
            None,
        )
        .await
        .expect("republish");
    let head = head(&w.pool).await;
    assert_once_in_order(&consume_all(&config).await, head, &config.subject_prefix);
    jetstream::new(nats().await)
        .delete_stream(&config.stream)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_another_store_is_not_resumed_from() {
    let config = config(100).await;
    let first = world().await;
    workload(&first, 3, 4).await;
    Relay::new(first.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay")
        .drain()
        .await
        .expect("drain");
    // A new database behind the same stream starts from its own position 0.
    let second = world().await;
    workload(&second, 4, 2).await;
    let relay = Relay::new(second.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    assert_eq!(relay.resume().await.expect("resume").position, 0);
    jetstream::new(nats().await)
        .delete_stream(&config.stream)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_relay_follows_new_events_and_a_second_one_stands_by() {
    let w = world().await;
    let config = config(100).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let one = Relay::new(w.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    let two = Relay::new(w.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    let a = tokio::spawn(one.run(stopped.clone()));
    let b = tokio::spawn(two.run(stopped.clone()));
    workload(&w, 9, 8).await;
    let head = head(&w.pool).await;
    let js = jetstream::new(nats().await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = js
            .get_stream(&config.stream)
            .await
            .expect("stream")
            .get_info()
            .await
            .expect("info");
        if info.state.messages as i64 >= head {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay follows the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_once_in_order(&consume_all(&config).await, head, &config.subject_prefix);
    stop.send(true).expect("stop");
    let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), b).await;
    js.delete_stream(&config.stream).await.ok();
}

/// A message that claims this store's id at the stream's end (published by anyone who
/// can publish on the subjects) is checked against the store before the relay resumes
/// from it: a far position, a wrong event id, or a right id with another body stops
/// the relay (no event published, `Health` names it) instead of skipping events; once
/// the message is gone, the relay goes on by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_message_at_the_stream_tail_stops_the_relay_instead_of_resuming_from_it() {
    use projections::relay::{RelayError, STORE_ID_HEADER};
    let w = world().await;
    workload(&w, 13, 3).await;
    let config = config(100).await;
    // A short duplicate window, so that a forgery may reuse a real event id (JetStream
    // would otherwise drop it as a repeat, for two minutes).
    let mut short_window = projections::relay::events_stream_config(&config.stream, &config.subject_prefix);
    short_window.duplicate_window = Duration::from_millis(100);
    jetstream::new(nats().await)
        .create_stream(short_window)
        .await
        .expect("stream");
    let relay = Relay::new(w.pool.clone(), nats().await, config.clone())
        .await
        .expect("relay");
    relay.drain().await.expect("drain");
    let head = head(&w.pool).await;
    let store_id = migrations::store_id(&w.pool).await.expect("store id");
    let last = migrations::read_feed(&w.pool, head - 1, 1)
        .await
        .expect("feed")
        .remove(0);
    let js = jetstream::new(nats().await);
    let forge = |position: i64, id: uuid::Uuid, body: Vec<u8>| {
        let js = js.clone();
        let subject = format!("{}.ride.created", config.subject_prefix);
        async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(STORE_ID_HEADER, store_id.to_string().as_str());
            headers.insert(POSITION_HEADER, position.to_string().as_str());
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id.to_string().as_str());
            js.publish_with_headers(subject, headers, body.into())
                .await
                .expect("publish")
                .await
                .expect("stored")
                .sequence
        }
    };
    let mut envelope = serde_json::to_value(last.envelope()).unwrap();
    let cases = [
        // Far ahead: resuming would skip a million events.
        (head + 1_000_000, uuid::Uuid::now_v7(), b"{}".to_vec()),
        // The right position, another id.
        (head, uuid::Uuid::now_v7(), serde_json::to_vec(&envelope).unwrap()),
        // The right position and id, another body.
        (head, last.event_id().unwrap(), {
            envelope["payload"] = serde_json::json!({"fare": 1});
            serde_json::to_vec(&envelope).unwrap()
        }),
    ];
    let stream = js.get_stream(&config.stream).await.expect("stream");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (position, id, body) in cases {
        let sequence = forge(position, id, body).await;
        let error = relay.resume().await.expect_err("a forged tail is refused");
        assert!(
            matches!(error, RelayError::ForgedTail { position: p, .. } if p == position),
            "{error}"
        );
        stream.delete_message(sequence).await.expect("remove the forgery");
    }

    // The running relay: a forged tail, then new events. Nothing is published and
    // health names the relay; the message removed, every event follows once.
    forge(head + 1_000_000, uuid::Uuid::now_v7(), b"{}".to_vec()).await;
    let health = projections::health::Health::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(relay.clone().with_health(health.clone()).run(stopped));
    workload(&w, 17, 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !health.stopped().contains_key("relay") {
        assert!(
            std::time::Instant::now() < deadline,
            "the relay reports itself stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        health.stopped()["relay"].contains("position"),
        "{:?}",
        health.stopped()
    );
    let info = js
        .get_stream(&config.stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap();
    assert_eq!(
        info.state.messages as i64,
        head + 1,
        "nothing published after the forgery"
    );
    stream
        .delete_message(info.state.last_sequence)
        .await
        .expect("remove");
    let new_head = self::head(&w.pool).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = js
            .get_stream(&config.stream)
            .await
            .unwrap()
            .get_info()
            .await
            .unwrap();
        if info.state.messages as i64 == new_head && health.stopped().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay resumes once the forgery is gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let _ = running.await;
    assert_once_in_order(&consume_all(&config).await, new_head, &config.subject_prefix);
    js.delete_stream(&config.stream).await.ok();
}
