//! `docs/asyncapi.json` is what `api::protocol::asyncapi()` generates (regenerate with
//! `UPDATE_ASYNCAPI=1 cargo test -p api --test asyncapi`), every message schema in it
//! compiles, and the schemas accept the frames of `docs/protocol.md` and refuse
//! malformed ones.

mod schema_check;

use serde_json::{json, Value};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.json");

fn generated() -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(&api::protocol::asyncapi()).expect("serializable")
    )
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = generated();
    if std::env::var("UPDATE_ASYNCAPI").as_deref() == Ok("1") {
        std::fs::write(PATH, &generated).expect("write docs/asyncapi.json");
    }
    let committed = std::fs::read_to_string(PATH)
        .expect("docs/asyncapi.json exists (UPDATE_ASYNCAPI=1 cargo test -p api --test asyncapi writes it)");
    assert!(
        committed == generated,
        "docs/asyncapi.json differs from what api/src/protocol.rs generates: run UPDATE_ASYNCAPI=1 cargo test -p api --test asyncapi and commit it"
    );
}

#[test]
fn the_document_is_asyncapi_3_and_every_reference_resolves() {
    let doc: Value = serde_json::from_str(&generated()).expect("JSON");
    assert_eq!(doc["asyncapi"], "3.0.0");
    let mut refs = Vec::new();
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r);
                }
                map.values().for_each(|v| walk(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&doc, &mut refs);
    assert!(refs.len() > 50, "{}", refs.len());
    for r in refs {
        let pointer = r.strip_prefix('#').expect("a local reference");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        jsonschema::draft7::new(schema).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    // Every command and every push of the protocol is a message of the WebSocket.
    let ws = doc["channels"]["ws"]["messages"]
        .as_object()
        .expect("ws messages");
    for kind in commands::ingress::COMMAND_TYPES {
        assert!(ws.contains_key(kind), "{kind}");
    }
    for kind in [
        "ack_ok",
        "ack_refused",
        "error",
        "session_state",
        "match_proposal",
        "ride_completed",
    ] {
        assert!(ws.contains_key(kind), "{kind}");
    }
}

fn valid(schema: &Value, instance: &Value) -> bool {
    jsonschema::draft7::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("compiles")
        .is_valid(instance)
}

#[test]
fn the_schemas_accept_protocol_frames_and_refuse_malformed_ones() {
    let ride = "0193a6a0-1f2b-7c3d-8e4f-5a6b7c8d9e0f";
    let start = api::protocol::client_frame_schema("ride_start").expect("ride_start");
    assert!(valid(
        &start,
        &json!({"type": "ride_start", "id": "f1", "data": {"ride_id": ride}})
    ));
    assert!(valid(
        &start,
        &json!({"type": "ride_start", "id": 7, "data": {"ride_id": ride}})
    ));
    assert!(!valid(
        &start,
        &json!({"type": "ride_start", "id": "f1", "data": {"ride_id": 5}})
    ));
    assert!(!valid(
        &start,
        &json!({"type": "ride_start", "id": "f1", "data": {"ride_id": "nope"}})
    ));
    assert!(!valid(
        &start,
        &json!({"type": "ride_start", "id": "", "data": {"ride_id": ride}})
    ));
    assert!(!valid(
        &start,
        &json!({"type": "ride_start", "data": {"ride_id": ride}})
    ));
    let pay = api::protocol::client_frame_schema("payment_process").expect("payment_process");
    let frame = |amount: Value| json!({"type": "payment_process", "id": "p", "data": {"ride_id": ride, "amount": amount, "accepted": true}});
    assert!(valid(&pay, &frame(json!(8000))));
    assert!(!valid(&pay, &frame(json!(0))));
    assert!(!valid(&pay, &frame(json!("8000"))));

    let ack = json!({"type": "ack", "id": "f1", "ok": false, "error": {"code": "too_far", "message": "…"}});
    let (name, schema) = api::protocol::server_frame_schema(&ack).expect("an ack");
    assert_eq!(name, "ack_refused");
    assert!(valid(&schema, &ack));
    let mut unknown_code = ack.clone();
    unknown_code["error"]["code"] = json!("teapot");
    assert!(!valid(&schema, &unknown_code));

    let started =
        json!({"type": "ride_started", "data": {"ride_id": ride, "started_at": "2026-12-06T01:02:03.456Z"}});
    let (_, schema) = api::protocol::server_frame_schema(&started).expect("a push");
    assert!(valid(&schema, &started));
    let mut with_id = started.clone();
    with_id["id"] = json!("x");
    assert!(!valid(&schema, &with_id), "a push carries no id");
    let mut bad_time = started.clone();
    bad_time["data"]["started_at"] = json!("yesterday");
    assert!(!valid(&schema, &bad_time));

    // The shared checker panics on a frame the protocol does not have.
    let unknown =
        std::panic::catch_unwind(|| schema_check::server_frame(&json!({"type": "surprise", "data": {}})));
    assert!(unknown.is_err());
}
