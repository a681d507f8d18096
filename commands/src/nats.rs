//! Command ingress over NATS: request/reply on `cmd.match.*`, `cmd.ride.*` and
//! `cmd.driver.beacon`, served by a queue group so that several processes share the
//! load. Same parsing, same bus, same answers as the WebSocket.

use std::sync::Arc;

use domain::ErrorCode;
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};

use crate::ack::Ack;
use crate::bus::CommandBus;
use crate::ingress::{command_for_subject, NatsEnvelope};

/// The queue group every process joins.
pub const QUEUE_GROUP: &str = "nebengjek-commands";

/// Subjects served.
pub const SUBJECTS: [&str; 3] = ["cmd.match.*", "cmd.ride.*", "cmd.driver.beacon"];

/// Commands handled at once per process.
const IN_FLIGHT: usize = 1024;

/// Answers one request: parses the envelope and the command, dispatches, and returns
/// the reply body.
pub async fn handle_request(bus: &CommandBus, subject: &str, payload: &[u8]) -> Ack {
    let envelope = match NatsEnvelope::parse(payload) {
        Ok(envelope) => envelope,
        Err(refusal) => return Ack::refused(&refusal),
    };
    let command = match command_for_subject(subject, &envelope.data) {
        None => {
            return Ack::error(
                ErrorCode::UnknownType,
                format!("no command is served on {subject}"),
            )
        }
        Some(Err(refusal)) => return Ack::refused(&refusal),
        Some(Ok(command)) => command,
    };
    bus.dispatch(envelope.actor(), Some(&envelope.command_id), command)
        .await
}

/// Serves commands until `shutdown` turns true. `prefix` is put before every subject
/// (empty in production; tests use one of their own so they share no subjects).
pub async fn serve(
    client: async_nats::Client,
    bus: CommandBus,
    prefix: String,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), async_nats::SubscribeError> {
    let mut subscriptions = Vec::new();
    for subject in SUBJECTS {
        subscriptions.push(
            client
                .queue_subscribe(format!("{prefix}{subject}"), QUEUE_GROUP.into())
                .await?,
        );
    }
    let mut messages = futures::stream::select_all(subscriptions);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    tracing::info!(subjects = ?SUBJECTS, queue = QUEUE_GROUP, "serving NATS commands");
    loop {
        let message = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.changed() => None,
        };
        let Some(message) = message else { break };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let bus = bus.clone();
        let client = client.clone();
        let prefix_len = prefix.len();
        tokio::spawn(async move {
            let subject = message.subject.as_str().get(prefix_len..).unwrap_or_default();
            let ack = handle_request(&bus, subject, &message.payload).await;
            let body = serde_json::to_vec(&ack).unwrap_or_default();
            if let Err(error) = client.publish(reply, body.into()).await {
                tracing::warn!(%error, "could not reply to a NATS command");
            }
            drop(permit);
        });
    }
    Ok(())
}
