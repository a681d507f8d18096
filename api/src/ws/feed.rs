//! The event feed → pushes: each edge process reads JetStream stream `EVENTS` (subjects
//! `<prefix>.<aggregate>.<event>`) with its own ephemeral ordered consumer, starting
//! at new messages (after a reconnect, right after the last one it delivered), and hands each event's pushes to the sockets it holds.
//!
//! Every process sees every event and pushes only to its own sockets, so a client
//! hears about a command whichever process handled it. A process that starts late
//! misses nothing a client needs: a socket's first frame is `session_state`, built from
//! the store.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ws::state::{pushes_for, FeedEvent};
use crate::AppState;

/// Why the feed could not start.
#[derive(Debug, thiserror::Error)]
#[error("event feed: {0}")]
pub struct FeedError(String);

fn feed_error(e: impl std::fmt::Display) -> FeedError {
    FeedError(e.to_string())
}

/// Opens the consumer (creating the stream if the relay has not yet) and runs the
/// feed in a task until `shutdown`. Returns once the consumer exists, so every event
/// published after this returns reaches the sockets.
///
/// The consumer lives in the NATS server's memory: a restarted server has forgotten
/// it, and the client notices only when a pull fails, many seconds later. So whenever
/// the client reconnects (or the consumer ends) the feed is opened again right after
/// the last message it delivered: nothing is pushed twice and nothing is skipped.
pub async fn start(
    state: AppState,
    client: async_nats::Client,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, FeedError> {
    let stats = client.statistics();
    let js = jetstream::new(client);
    let mut last = open_stream(&js, &state)
        .await?
        .info()
        .await
        .map_err(feed_error)?
        .state
        .last_sequence;
    let mut messages = open(&js, &state, last).await?;
    seed_proposals(&state).await;
    let mut connects = stats.connects.load(Ordering::Relaxed);
    tracing::info!(stream = %state.config().events_stream, "pushes follow the event feed");
    Ok(tokio::spawn(async move {
        let mut reconnected = tokio::time::interval(Duration::from_millis(250));
        loop {
            let next = tokio::select! {
                next = messages.next() => Some(next),
                _ = reconnected.tick() => None,
                _ = shutdown.changed() => break,
            };
            let reopen = match next {
                Some(Some(Ok(message))) => {
                    if let Ok(info) = message.info() {
                        last = info.stream_sequence;
                    }
                    deliver(&state, &message.payload).await;
                    false
                }
                Some(Some(Err(error))) => {
                    // The ordered consumer recreates itself after most errors.
                    tracing::warn!(%error, "event feed hiccup");
                    false
                }
                Some(None) => {
                    tracing::error!("the event feed ended; opening it again");
                    true
                }
                None => {
                    let now = stats.connects.load(Ordering::Relaxed);
                    let changed = now != connects;
                    if changed {
                        tracing::warn!(after = last, "reconnected to NATS; opening the event feed again");
                        connects = now;
                    }
                    changed
                }
            };
            if reopen {
                messages = loop {
                    match open(&js, &state, last).await {
                        Ok(messages) => break messages,
                        Err(error) => tracing::error!(%error, "cannot open the event feed"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => return,
                    }
                };
            }
        }
    }))
}

/// Notes the proposals pending in the open matches, read from the store after the
/// consumer is open (so nothing falls between the two; noting twice is harmless). The
/// feed only shows this process proposals made after it started, and a driver who
/// reconnects here must still see one made before (`session_state`).
async fn seed_proposals(state: &AppState) {
    let open = match state.bus().store().with_deadlines("match").await {
        Ok(open) => open,
        Err(error) => {
            tracing::error!(%error, "cannot read the open matches; proposals made before this process started are not shown on reconnect");
            return;
        }
    };
    let mut pending = 0;
    for id in open {
        match state.bus().matches().load(id).await {
            Ok(loaded) => {
                let candidates = loaded.state.candidates();
                pending += candidates.len();
                state.proposals().pending(
                    domain::MatchId::from_uuid(id),
                    candidates.iter().map(|c| c.driver_id),
                );
            }
            Err(error) => tracing::warn!(%error, match_id = %id, "cannot load an open match"),
        }
    }
    tracing::debug!(pending, "pending proposals read from the store");
}

async fn open_stream(js: &jetstream::Context, state: &AppState) -> Result<stream::Stream, FeedError> {
    let config = state.config();
    js.get_or_create_stream(projections::relay::events_stream_config(
        &config.events_stream,
        &config.events_subject_prefix,
    ))
    .await
    .map_err(feed_error)
}

/// An ordered consumer of the feed from the message after stream sequence `after`.
async fn open(
    js: &jetstream::Context,
    state: &AppState,
    after: u64,
) -> Result<consumer::pull::Ordered, FeedError> {
    let consumer = open_stream(js, state)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", state.config().events_subject_prefix),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(feed_error)?;
    consumer.messages().await.map_err(feed_error)
}

/// Pushes one feed message to the sockets of this process.
pub async fn deliver(state: &AppState, body: &[u8]) {
    let event: FeedEvent = match serde_json::from_slice(body) {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(%error, "unreadable message on the event feed");
            return;
        }
    };
    match pushes_for(state, &event).await {
        Ok(pushes) => {
            for (user, frame) in pushes {
                let n = state.registry().push(user, &frame);
                if n > 0 {
                    tracing::debug!(user_id = %user, kind = %frame["type"], position = event.position, "pushed");
                }
            }
        }
        Err(error) => {
            tracing::error!(%error, position = event.position, "cannot build the pushes of an event")
        }
    }
}
