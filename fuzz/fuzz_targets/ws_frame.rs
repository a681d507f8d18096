//! A WebSocket text frame → `api::ws::session::answer`: the frame parser, the command
//! parser (`ClientCommand::parse`) and the ack shaping, with a dispatcher that accepts
//! everything (no database). Every frame must get exactly one answer, never a panic:
//! an `ack` carrying the frame's id, or an `invalid_payload` error frame.
#![no_main]

use api::ws::session::{answer, Dispatch};
use commands::ingress::ClientCommand;
use commands::Ack;
use domain::{Actor, Role, UserId};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};

struct Accept;

#[async_trait::async_trait]
impl Dispatch for Accept {
    async fn dispatch(&self, _actor: Actor, command_id: &str, _command: ClientCommand) -> Ack {
        Ack::ok(json!({ "command_id": command_id }))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&role, frame)) = data.split_first() else {
        return;
    };
    // axum hands the session text frames (valid UTF-8); binary frames are checked for
    // UTF-8 before they reach `answer`.
    let Ok(text) = std::str::from_utf8(frame) else {
        return;
    };
    let role = [Role::Passenger, Role::Driver, Role::Analyst][usize::from(role) % 3];
    let actor = Actor::new(UserId::from_uuid(uuid::Uuid::nil()), role);
    let reply = futures::executor::block_on(answer(text, actor, &Accept));
    match reply["type"].as_str() {
        Some("ack") => {
            let sent: Value = serde_json::from_str(text).expect("an ack answers a JSON frame");
            assert_eq!(reply["id"], sent["id"], "the ack carries the frame's id");
            assert!(reply["ok"].is_boolean(), "{reply}");
            if reply["ok"] == false {
                assert!(reply["error"]["code"].is_string(), "{reply}");
            }
        }
        Some("error") => assert_eq!(reply["error"]["code"], "invalid_payload", "{reply}"),
        _ => panic!("neither an ack nor an error frame: {reply}"),
    }
});
