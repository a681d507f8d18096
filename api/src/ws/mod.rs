//! The WebSocket `/ws` of SPEC.md §4: authentication at the upgrade, then one
//! [`session`] per socket, registered in the process's [`registry`] for the pushes that
//! [`feed`] derives from the event feed.

pub mod feed;
pub mod proposals;
pub mod registry;
pub mod session;
pub mod state;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tracing::Instrument as _;

use crate::error::ApiError;
use crate::AppState;

/// `?token=` for browsers, which cannot set headers on a WebSocket.
#[derive(Debug, Deserialize)]
pub struct TokenQuery {
    token: Option<String>,
}

/// How much larger than the protocol's limit the transport may let a message grow
/// before it gives up itself: between the two, the session closes with 1009.
const TRANSPORT_SLACK: usize = 16;

/// Each socket's read buffer. tungstenite's default (128 KiB) is allocated per socket
/// and zero-filled before *every* read: with 10,000 sockets that is 1.3 GB and, in a
/// profile of a 10k-client load run, the largest single cost of the edge (`memset`).
/// Frames are small (acks, pings, commands well under 4 KiB); a larger frame still
/// reads, in several reads (`docs/load-10k.md`).
pub const READ_BUFFER_BYTES: usize = 4 * 1024;

/// `GET /ws`: 401 for a missing, bad or expired token (checked before anything else,
/// so even a request that is no upgrade at all learns it needs a token first);
/// otherwise the upgrade.
pub async fn upgrade(
    State(state): State<AppState>,
    query: Result<Query<TokenQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = query.map_or(TokenQuery { token: None }, |Query(q)| q);
    let token = crate::token::bearer(&headers).map(str::to_owned).or(query.token);
    let Some(token) = token else {
        return ApiError::Unauthorized("a bearer token or ?token= is required".into()).into_response();
    };
    let actor = match state.tokens().verify(&token) {
        Ok(actor) => actor,
        Err(e) => return ApiError::Unauthorized(e.to_string()).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let max = state.config().max_frame_bytes;
    ws.max_message_size(max.saturating_mul(TRANSPORT_SLACK))
        .max_frame_size(max.saturating_mul(TRANSPORT_SLACK))
        .read_buffer_size(READ_BUFFER_BYTES)
        .on_upgrade(move |socket| {
            let span = tracing::info_span!("ws", user_id = %actor.user_id, role = %actor.role);
            async move {
                // Register before reading the state, so no push falls between the two.
                let (registration, pushes) = state.registry().register(actor.user_id);
                let (mut sink, stream) = socket.split();
                let first = match state::session_state(&state, actor).await {
                    Ok(frame) => vec![frame],
                    Err(error) => {
                        // Better no session than a wrong picture: the app reconnects.
                        tracing::error!(%error, "cannot build session_state");
                        let _ = futures::SinkExt::send(
                            &mut sink,
                            Message::Close(Some(CloseFrame {
                                code: session::INTERNAL_ERROR,
                                reason: "internal error; reconnect".into(),
                            })),
                        )
                        .await;
                        return;
                    }
                };
                let session = session::Session {
                    actor,
                    first,
                    pushes,
                    closing: state.registry().closing(),
                    max_frame_bytes: max,
                };
                let commands = session::EdgeCommands {
                    bus: state.bus(),
                    location: state.location(),
                    clock: state.clock().as_ref(),
                };
                session::run(sink, stream, &commands, session).await;
                drop(registration);
            }
            .instrument(span)
        })
}
