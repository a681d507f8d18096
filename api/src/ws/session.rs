//! The socket loop of one connection, over any `Sink`/`Stream` of messages so that
//! tests drive it with channels.
//!
//! It first sends the frames it is given (`session_state`), then, until the client
//! closes: every text frame is answered in order (an ack, or an `error` frame for what
//! is not a frame at all), and every push from the registry is forwarded. Frames are
//! handled one at a time, so a `ride_arrived` sent after a `location_update`'s ack sees
//! that point. A frame over the limit closes the socket with 1009.

use async_trait::async_trait;
use axum::extract::ws::{CloseFrame, Message};
use commands::ingress::{ClientCommand, COMMAND_TYPES};
use commands::{Ack, CommandBus};
use domain::{Actor, ErrorCode};
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

/// The command side, as the socket sees it.
#[async_trait]
pub trait Dispatch: Send + Sync {
    /// Handles `command` from `actor`, idempotent per `(actor, command_id)`.
    async fn dispatch(&self, actor: Actor, command_id: &str, command: ClientCommand) -> Ack;
}

#[async_trait]
impl Dispatch for CommandBus {
    async fn dispatch(&self, actor: Actor, command_id: &str, command: ClientCommand) -> Ack {
        CommandBus::dispatch(self, actor, Some(command_id), command).await
    }
}

/// The command bus, plus the location feed: a driver's accepted `beacon_update` or
/// `location_update` is also published to JetStream `LOCATION`, where the geo
/// projection and the matcher (in whichever process runs them) pick it up.
#[derive(Debug)]
pub struct EdgeCommands<'a> {
    /// The command bus.
    pub bus: &'a CommandBus,
    /// Where pings go; `None` keeps them in this process's bus only.
    pub location: Option<&'a projections::location::LocationPublisher>,
    /// The server clock (a ping's time).
    pub clock: &'a dyn commands::clock::Clock,
}

#[async_trait]
impl Dispatch for EdgeCommands<'_> {
    async fn dispatch(&self, actor: Actor, command_id: &str, command: ClientCommand) -> Ack {
        let ping = match (&command, actor.role) {
            (ClientCommand::BeaconUpdate { is_active, point }, domain::Role::Driver) => {
                Some((*point, Some(*is_active)))
            }
            (ClientCommand::LocationUpdate { point, .. }, domain::Role::Driver) => Some((*point, None)),
            _ => None,
        };
        let ack = CommandBus::dispatch(self.bus, actor, Some(command_id), command).await;
        if let (true, Some((point, active)), Some(location)) = (ack.ok, ping, self.location) {
            let now = self.clock.now();
            let published = match active {
                Some(is_active) => location.publish_ping(actor.user_id, point, is_active, now).await,
                None => location.publish_position(actor.user_id, point, now).await,
            };
            if let Err(error) = published {
                // The position is already recorded for the ride; only the index misses it
                // until the next ping.
                tracing::warn!(%error, driver = %actor.user_id, "cannot publish the ping to LOCATION");
            }
        }
        ack
    }
}

/// The close code for a frame over the limit.
pub const MESSAGE_TOO_BIG: u16 = 1009;
/// The close code when the server drops a socket that cannot keep up with its pushes.
pub const TOO_SLOW: u16 = 1008;
/// The close code when the session cannot start (its state could not be read).
pub const INTERNAL_ERROR: u16 = 1011;
/// The close code when the process shuts down.
pub const GOING_AWAY: u16 = 1001;

/// What a session runs with besides its socket.
#[derive(Debug)]
pub struct Session {
    /// Who is connected.
    pub actor: Actor,
    /// Sent before anything else (`session_state`).
    pub first: Vec<Value>,
    /// This socket's pushes.
    pub pushes: mpsc::Receiver<Value>,
    /// Turns `true` when the process goes away.
    pub closing: watch::Receiver<bool>,
    /// The largest frame accepted.
    pub max_frame_bytes: usize,
}

/// Runs one connection to its end.
pub async fn run<S, R, E>(mut sink: S, mut stream: R, commands: &dyn Dispatch, session: Session)
where
    S: Sink<Message> + Unpin + Send,
    R: Stream<Item = Result<Message, E>> + Unpin + Send,
    E: std::fmt::Display,
{
    let Session {
        actor,
        first,
        mut pushes,
        mut closing,
        max_frame_bytes,
    } = session;
    for frame in first {
        if send(&mut sink, &frame).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            () = going_away(&mut closing) => {
                close(&mut sink, GOING_AWAY, "the server is restarting; reconnect").await;
                break;
            }
            incoming = stream.next() => {
                let text = match incoming {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Err(error)) => {
                        let error = error.to_string();
                        // tungstenite's capacity error: the frame is over even the
                        // transport's limit.
                        if error.contains("Space limit exceeded") || error.contains("too long") {
                            close(&mut sink, MESSAGE_TOO_BIG, "message too big").await;
                        } else {
                            tracing::debug!(%error, "socket read failed");
                        }
                        break;
                    }
                    Some(Ok(Message::Text(text))) => text.as_str().to_owned(),
                    Some(Ok(Message::Binary(bytes))) => {
                        if bytes.len() > max_frame_bytes {
                            close(&mut sink, MESSAGE_TOO_BIG, "message too big").await;
                            break;
                        }
                        match String::from_utf8(bytes.to_vec()) {
                            Ok(text) => text,
                            Err(_) => {
                                if send(&mut sink, &error_frame(None, "frames are JSON text")).await.is_err() {
                                    break;
                                }
                                continue;
                            }
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                };
                if text.len() > max_frame_bytes {
                    close(&mut sink, MESSAGE_TOO_BIG, "message too big").await;
                    break;
                }
                let reply = answer(&text, actor, commands).await;
                if send(&mut sink, &reply).await.is_err() {
                    break;
                }
            }
            push = pushes.recv() => match push {
                Some(frame) => {
                    if send(&mut sink, &frame).await.is_err() {
                        break;
                    }
                }
                None => {
                    close(&mut sink, TOO_SLOW, "too many pushes pending; reconnect").await;
                    break;
                }
            }
        }
    }
}

/// Resolves once `closing` turns `true` (never, if its sender is gone).
async fn going_away(closing: &mut watch::Receiver<bool>) {
    loop {
        let going = *closing.borrow_and_update();
        if going {
            return;
        }
        if closing.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn send<S: Sink<Message> + Unpin>(sink: &mut S, frame: &Value) -> Result<(), ()> {
    sink.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|_| ())
}

async fn close<S: Sink<Message> + Unpin>(sink: &mut S, code: u16, reason: &'static str) {
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// `{"type": "error", "error": {"code": "invalid_payload", ...}}`, with the id if read.
pub fn error_frame(id: Option<&Value>, message: impl Into<String>) -> Value {
    let mut frame = json!({
        "type": "error",
        "error": { "code": ErrorCode::InvalidPayload.as_str(), "message": message.into() },
    });
    if let (Some(id), Some(map)) = (id, frame.as_object_mut()) {
        map.insert("id".into(), id.clone());
    }
    frame
}

/// `{"type": "ack", "id", "ok", "result" | "error"}`.
pub fn ack_frame(id: &Value, ack: &Ack) -> Value {
    let mut map = match ack.to_value() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    map.insert("type".into(), Value::String("ack".into()));
    map.insert("id".into(), id.clone());
    Value::Object(map)
}

/// The answer to one text frame.
pub async fn answer(text: &str, actor: Actor, commands: &dyn Dispatch) -> Value {
    let frame: Value = match serde_json::from_str(text) {
        Ok(frame) => frame,
        Err(e) => return error_frame(None, format!("not JSON: {e}")),
    };
    let Value::Object(frame) = frame else {
        return error_frame(None, "a frame is a JSON object {type, id, data}");
    };
    let (id, key) = match frame.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => (Value::String(s.clone()), s.clone()),
        Some(Value::Number(n)) => (Value::Number(n.clone()), n.to_string()),
        Some(_) => return error_frame(None, "id must be a string of 1 to 128 characters or a number"),
        None => return error_frame(None, "a frame needs an id"),
    };
    let kind = match frame.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return error_frame(Some(&id), "type must be a string"),
        None => return error_frame(Some(&id), "a frame needs a type"),
    };
    if !COMMAND_TYPES.contains(&kind) {
        let ack = Ack::error(ErrorCode::UnknownType, format!("unknown frame type {kind:?}"));
        return ack_frame(&id, &ack);
    }
    let data = frame
        .get("data")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let span = tracing::info_span!("ws_frame", frame_id = %key, kind, user_id = %actor.user_id);
    let started = std::time::Instant::now();
    let ack = match ClientCommand::parse(kind, &data) {
        Err(refusal) => Ack::refused(&refusal),
        Ok(command) => commands.dispatch(actor, &key, command).instrument(span).await,
    };
    let outcome = ack.code().map_or("ok", |c| c.as_str());
    metrics::counter!("nebengjek_ws_commands_total", "type" => kind.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!("nebengjek_ws_command_seconds", "type" => kind.to_owned())
        .record(started.elapsed().as_secs_f64());
    ack_frame(&id, &ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Role, UserId};
    use futures::channel::mpsc as fmpsc;
    use std::sync::Mutex;

    /// Remembers the commands and answers `ok` with the command id.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait]
    impl Dispatch for Recorder {
        async fn dispatch(&self, _actor: Actor, command_id: &str, _command: ClientCommand) -> Ack {
            self.0.lock().unwrap().push(command_id.to_owned());
            Ack::ok(json!({ "echo": command_id }))
        }
    }

    fn actor() -> Actor {
        Actor::new(UserId::from_uuid(uuid::Uuid::now_v7()), Role::Driver)
    }

    async fn exchange(frames: Vec<Message>) -> (Vec<Message>, Vec<String>) {
        let (client_tx, server_rx) = fmpsc::unbounded::<Result<Message, std::convert::Infallible>>();
        let (server_tx, server_out) = fmpsc::unbounded::<Message>();
        for f in frames {
            client_tx.unbounded_send(Ok(f)).unwrap();
        }
        drop(client_tx);
        let recorder = Recorder::default();
        let (_push_tx, pushes) = mpsc::channel(4);
        let (_closing_tx, closing) = watch::channel(false);
        let session = Session {
            actor: actor(),
            first: vec![json!({"type": "session_state"})],
            pushes,
            closing,
            max_frame_bytes: 1024,
        };
        run(server_tx, server_rx, &recorder, session).await;
        let out: Vec<Message> = server_out.collect().await;
        (out, recorder.0.into_inner().unwrap())
    }

    fn text(m: &Message) -> Value {
        match m {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_frame_gets_exactly_one_answer_in_order() {
        let beacon = json!({"type": "beacon_update", "id": "b1", "data": {"is_active": true, "lat": -6.2, "lon": 106.8}});
        let frames = vec![
            Message::Text("not json".into()),
            Message::Text(json!({"type": "beacon_update", "data": {}}).to_string().into()),
            Message::Text(json!({"id": "x1", "type": 7}).to_string().into()),
            Message::Text(json!({"id": "x2"}).to_string().into()),
            Message::Text(json!({"id": "x3", "type": "fly", "data": 5}).to_string().into()),
            Message::Text(
                json!({"id": 4, "type": "ride_start", "data": {"ride_id": 5}})
                    .to_string()
                    .into(),
            ),
            Message::Text(beacon.to_string().into()),
        ];
        let (out, dispatched) = exchange(frames).await;
        let out: Vec<Value> = out.iter().map(text).collect();
        assert_eq!(out.len(), 8, "{out:?}");
        assert_eq!(out[0]["type"], "session_state");
        assert_eq!(out[1]["type"], "error");
        assert_eq!(out[1]["error"]["code"], "invalid_payload");
        assert!(out[1].get("id").is_none());
        assert_eq!(out[2]["error"]["code"], "invalid_payload");
        assert!(out[2].get("id").is_none());
        assert_eq!(
            (&out[3]["type"], &out[3]["id"], &out[3]["error"]["code"]),
            (&json!("error"), &json!("x1"), &json!("invalid_payload"))
        );
        assert_eq!(
            (&out[4]["id"], &out[4]["error"]["code"]),
            (&json!("x2"), &json!("invalid_payload"))
        );
        assert_eq!(
            (&out[5]["type"], &out[5]["ok"], &out[5]["error"]["code"]),
            (&json!("ack"), &json!(false), &json!("unknown_type"))
        );
        assert_eq!(
            (&out[6]["id"], &out[6]["error"]["code"]),
            (&json!(4), &json!("validation_failed"))
        );
        assert_eq!(
            (&out[7]["id"], &out[7]["ok"], &out[7]["result"]["echo"]),
            (&json!("b1"), &json!(true), &json!("b1"))
        );
        assert_eq!(
            dispatched,
            vec!["b1".to_owned()],
            "only the valid command reaches the bus"
        );
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_closes_with_1009() {
        let big = format!(
            r#"{{"type":"beacon_update","id":"1","data":{{"pad":"{}"}}}}"#,
            "x".repeat(2000)
        );
        let after = json!({"type": "beacon_update", "id": "2", "data": {"is_active": true, "lat": -6.2, "lon": 106.8}});
        let (out, dispatched) = exchange(vec![
            Message::Text(big.into()),
            Message::Text(after.to_string().into()),
        ])
        .await;
        assert_eq!(out.len(), 2);
        match &out[1] {
            Message::Close(Some(frame)) => assert_eq!(frame.code, MESSAGE_TOO_BIG),
            other => panic!("expected a close, got {other:?}"),
        }
        assert!(dispatched.is_empty());
    }

    fn session(pushes: mpsc::Receiver<Value>, closing: watch::Receiver<bool>) -> Session {
        Session {
            actor: actor(),
            first: Vec::new(),
            pushes,
            closing,
            max_frame_bytes: 1024,
        }
    }

    #[tokio::test]
    async fn pushes_are_forwarded_between_answers() {
        let (client_tx, server_rx) = fmpsc::unbounded::<Result<Message, std::convert::Infallible>>();
        let (server_tx, mut server_out) = fmpsc::unbounded::<Message>();
        let (push_tx, pushes) = mpsc::channel(4);
        let (_closing_tx, closing) = watch::channel(false);
        let recorder = Recorder::default();
        let run = run(server_tx, server_rx, &recorder, session(pushes, closing));
        let drive = async {
            push_tx.send(json!({"type": "ride_started"})).await.unwrap();
            let first = server_out.next().await.unwrap();
            assert_eq!(text(&first)["type"], "ride_started");
            drop(client_tx);
        };
        tokio::join!(run, drive);
    }

    #[tokio::test]
    async fn a_process_going_away_closes_its_sockets_with_1001() {
        let (_client_tx, server_rx) = fmpsc::unbounded::<Result<Message, std::convert::Infallible>>();
        let (server_tx, mut server_out) = fmpsc::unbounded::<Message>();
        let (_push_tx, pushes) = mpsc::channel(4);
        let registry = super::super::registry::Registry::default();
        let recorder = Recorder::default();
        let run = run(
            server_tx,
            server_rx,
            &recorder,
            session(pushes, registry.closing()),
        );
        let drive = async {
            registry.close_all();
            match server_out.next().await {
                Some(Message::Close(Some(frame))) => assert_eq!(frame.code, GOING_AWAY),
                other => panic!("expected a close, got {other:?}"),
            }
        };
        // The session ends by itself although the client never closed.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(run, drive)
        })
        .await
        .expect("the session ends");
    }
}
