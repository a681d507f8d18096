//! The event feed → pushes: each edge process reads JetStream stream `EVENTS` (subjects
//! `<prefix>.<aggregate>.<event>`) with its own ephemeral ordered consumer, starting
//! at new messages, and hands each event's pushes to the sockets it holds.
//!
//! Every process sees every event and pushes only to its own sockets, so a client
//! hears about a command whichever process handled it. A process that starts late
//! misses nothing a client needs: a socket's first frame is `session_state`, built from
//! the store.

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
/// published after this returns reaches the sockets. Should the consumer ever end, it
/// is opened again (from new messages: sockets that missed something in between get
/// it with their next `session_state`).
pub async fn start(
    state: AppState,
    client: async_nats::Client,
    mut shutdown: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, FeedError> {
    let js = jetstream::new(client);
    let mut messages = open(&js, &state).await?;
    seed_proposals(&state).await;
    tracing::info!(stream = %state.config().events_stream, "pushes follow the event feed");
    Ok(tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = shutdown.changed() => break,
            };
            match next {
                Some(Ok(message)) => deliver(&state, &message.payload).await,
                Some(Err(error)) => {
                    // The ordered consumer recreates itself after most errors.
                    tracing::warn!(%error, "event feed hiccup");
                }
                None => {
                    tracing::error!("the event feed ended; opening it again");
                    messages = loop {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.changed() => return,
                        }
                        match open(&js, &state).await {
                            Ok(messages) => {
                                seed_proposals(&state).await;
                                break messages;
                            }
                            Err(error) => tracing::error!(%error, "cannot open the event feed"),
                        }
                    };
                }
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

async fn open(js: &jetstream::Context, state: &AppState) -> Result<consumer::pull::Ordered, FeedError> {
    let config = state.config();
    let stream = js
        .get_or_create_stream(stream::Config {
            name: config.events_stream.clone(),
            subjects: vec![format!("{}.>", config.events_subject_prefix)],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(feed_error)?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{}.>", config.events_subject_prefix),
            deliver_policy: consumer::DeliverPolicy::New,
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
