//! Command ingress over NATS: request/reply on `cmd.match.*`, `cmd.ride.*` and
//! `cmd.driver.beacon`, served by a queue group so that several processes share the
//! load. Same parsing, same bus, same answers as the WebSocket.
//!
//! ## Who acts
//! Every request carries the user's token in the header `Authorization: Bearer <jwt>`,
//! the same token as HTTP and WebSocket. The actor is the token's subject and role;
//! the body's `actor`, when present, must be the same (SPEC.md §4 "NATS"). The order of
//! checks: the token (`unauthorized`), the envelope (`invalid_payload`), the envelope's
//! actor (`forbidden`), then the command as on the WebSocket. Nothing is written for a
//! refusal. Who may publish on `cmd.>` at all is the NATS server's business
//! (`deploy/nats/nats-server.conf`); this is the second gate.

use std::sync::Arc;

use domain::{Actor, DomainError, ErrorCode};
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};

use crate::ack::Ack;
use crate::bus::CommandBus;
use crate::ingress::{command_for_subject, NatsEnvelope};
use crate::token::{bearer, TokenVerifier};

/// The queue group every process joins.
pub const QUEUE_GROUP: &str = "nebengjek-commands";

/// Subjects served.
pub const SUBJECTS: [&str; 3] = ["cmd.match.*", "cmd.ride.*", "cmd.driver.beacon"];

/// Commands handled at once per process.
const IN_FLIGHT: usize = 1024;

/// The actor of a request: its `Authorization: Bearer <jwt>` header, checked.
/// Anything else is `unauthorized`.
pub fn authenticate(
    tokens: &TokenVerifier,
    headers: Option<&async_nats::HeaderMap>,
) -> Result<Actor, DomainError> {
    let value = headers
        .and_then(|h| h.get(AUTHORIZATION))
        .map(|v| v.as_str())
        .ok_or_else(|| {
            DomainError::new(
                ErrorCode::Unauthorized,
                "a NATS command needs the header Authorization: Bearer <token>",
            )
        })?;
    let token = bearer(value).ok_or_else(|| {
        DomainError::new(
            ErrorCode::Unauthorized,
            "the Authorization header must be Bearer <token>",
        )
    })?;
    tokens
        .verify(token)
        .map_err(|e| DomainError::new(ErrorCode::Unauthorized, e.to_string()))
}

/// The header that carries the token.
pub const AUTHORIZATION: &str = "Authorization";

/// Answers one request: checks the token, parses the envelope and the command,
/// dispatches, and returns the reply body.
pub async fn handle_request(
    bus: &CommandBus,
    tokens: &TokenVerifier,
    subject: &str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Ack {
    let actor = match authenticate(tokens, headers) {
        Ok(actor) => actor,
        Err(refusal) => return Ack::refused(&refusal),
    };
    let envelope = match NatsEnvelope::parse(payload) {
        Ok(envelope) => envelope,
        Err(refusal) => return Ack::refused(&refusal),
    };
    if let Err(refusal) = envelope.check_actor(actor) {
        tracing::warn!(user_id = %actor.user_id, %subject, "a NATS command named another actor than its token's");
        return Ack::refused(&refusal);
    }
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
    bus.dispatch(actor, Some(&envelope.command_id), command).await
}

/// Serves commands until `shutdown` turns true, acting for the subjects of tokens
/// `tokens` accepts. `prefix` is put before every subject (empty in production; tests
/// use one of their own so they share no subjects).
pub async fn serve(
    client: async_nats::Client,
    bus: CommandBus,
    tokens: TokenVerifier,
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
        let tokens = tokens.clone();
        let client = client.clone();
        let prefix_len = prefix.len();
        tokio::spawn(async move {
            let subject = message.subject.as_str().get(prefix_len..).unwrap_or_default();
            let ack =
                handle_request(&bus, &tokens, subject, message.headers.as_ref(), &message.payload).await;
            let body = serde_json::to_vec(&ack).unwrap_or_default();
            if let Err(error) = client.publish(reply, body.into()).await {
                tracing::warn!(%error, "could not reply to a NATS command");
            }
            drop(permit);
        });
    }
    Ok(())
}
