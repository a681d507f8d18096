//! Frames held to the AsyncAPI schemas (`api::protocol`, `docs/asyncapi.json`): the
//! test clients of `api/tests` and `nebengjek/tests` call [`server_frame`] on every
//! frame they read and [`client_frame`] on every command frame they sent, with its
//! ack. A frame the schema does not describe fails the test that saw it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

fn validators() -> &'static Mutex<HashMap<String, jsonschema::Validator>> {
    static CACHE: OnceLock<Mutex<HashMap<String, jsonschema::Validator>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Checks `instance` against `schema` (cached under `name`); the errors, if any.
fn check(name: &str, schema: &Value, instance: &Value) -> Vec<String> {
    let mut cache = validators().lock().unwrap_or_else(|p| p.into_inner());
    let validator = cache.entry(name.to_owned()).or_insert_with(|| {
        jsonschema::draft7::options()
            .should_validate_formats(true)
            .build(schema)
            .unwrap_or_else(|e| panic!("the schema of {name} does not compile: {e}"))
    });
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// A frame the server sent must be a message of the protocol and match its schema.
pub fn server_frame(frame: &Value) {
    let Some((name, schema)) = api::protocol::server_frame_schema(frame) else {
        panic!("the server sent a frame the protocol does not have: {frame}");
    };
    let errors = check(&name, &schema, frame);
    assert!(
        errors.is_empty(),
        "the server's {name} frame does not match its schema (api/src/protocol.rs): {errors:?}\n{frame}"
    );
}

/// A command frame the server accepted must match its schema: the schema is never
/// stricter than the server. (Frames a test sends to be refused may not match.)
pub fn client_frame(frame: &Value, ack: &Value) {
    if ack["ok"] != true {
        return;
    }
    let kind = frame["type"].as_str().unwrap_or_default();
    let Some(schema) = api::protocol::client_frame_schema(kind) else {
        panic!("the server accepted a frame of a type the protocol does not have: {frame} → {ack}");
    };
    let errors = check(&format!("client {kind}"), &schema, frame);
    assert!(
        errors.is_empty(),
        "the server accepted a {kind} frame its schema refuses (api/src/protocol.rs): {errors:?}\n{frame}"
    );
}
