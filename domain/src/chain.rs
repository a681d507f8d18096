//! Tamper evidence: each event's hash covers its content and the previous event's hash
//! in the same aggregate, so editing or deleting an event breaks the chain from there on.
//!
//! The hashed bytes are a canonical JSON rendering (object keys sorted, no whitespace)
//! of the stored fields, so the hash can be recomputed from what PostgreSQL's JSONB
//! returns, whatever key order or spacing it chose. Any change to this function changes
//! every stored hash: it is versioned by [`CHAIN_VERSION`] and never edited.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The version of the hashing scheme below.
pub const CHAIN_VERSION: u8 = 1;

/// The hash that the first event of every aggregate chains to.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// The stored fields an event's hash covers (everything but `position` and `hash`).
#[derive(Debug, Clone, Copy)]
pub struct HashedFields<'a> {
    /// `aggregate_type`.
    pub aggregate_type: &'a str,
    /// `aggregate_id`, hyphenated lower-case.
    pub aggregate_id: &'a str,
    /// `sequence` within the aggregate, from 1.
    pub sequence: i64,
    /// `event_type`.
    pub event_type: &'a str,
    /// `event_version`.
    pub event_version: i32,
    /// `payload`.
    pub payload: &'a Value,
    /// `metadata` (includes `recorded_at`, `actor`, the ids).
    pub metadata: &'a Value,
}

/// `sha256(prev || canonical(fields))`.
pub fn event_hash(prev: &[u8], fields: &HashedFields<'_>) -> [u8; 32] {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"aggregate_id\":");
    write_canonical(&mut buf, &Value::String(fields.aggregate_id.to_owned()));
    buf.extend_from_slice(b",\"aggregate_type\":");
    write_canonical(&mut buf, &Value::String(fields.aggregate_type.to_owned()));
    buf.extend_from_slice(format!(",\"event_type\":\"{}\"", fields.event_type).as_bytes());
    buf.extend_from_slice(format!(",\"event_version\":{}", fields.event_version).as_bytes());
    buf.extend_from_slice(b",\"metadata\":");
    write_canonical(&mut buf, fields.metadata);
    buf.extend_from_slice(b",\"payload\":");
    write_canonical(&mut buf, fields.payload);
    buf.extend_from_slice(format!(",\"sequence\":{}}}", fields.sequence).as_bytes());

    let mut hasher = Sha256::new();
    hasher.update([CHAIN_VERSION]);
    hasher.update(prev);
    hasher.update(&buf);
    hasher.finalize().into()
}

/// Canonical JSON: objects with keys sorted bytewise, no insignificant whitespace,
/// strings and numbers as serde_json writes them.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Serializing a plain string into a Vec cannot fail.
                out.extend_from_slice(serde_json::to_string(k).unwrap_or_default().as_bytes());
                out.push(b':');
                write_canonical(out, v);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, v);
            }
            out.push(b']');
        }
        scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields<'a>(payload: &'a Value, metadata: &'a Value) -> HashedFields<'a> {
        HashedFields {
            aggregate_type: "ride",
            aggregate_id: "0190c6f2-0000-7000-8000-000000000001",
            sequence: 1,
            event_type: "created",
            event_version: 1,
            payload,
            metadata,
        }
    }

    #[test]
    fn key_order_and_spacing_do_not_change_the_hash() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": "s"}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":{"x":"s","y":[1,2]},"b":1}"#).unwrap();
        let m = json!({"actor": "x"});
        assert_eq!(
            event_hash(&GENESIS, &fields(&a, &m)),
            event_hash(&GENESIS, &fields(&b, &m))
        );
    }

    #[test]
    fn any_edit_changes_the_hash() {
        let m = json!({});
        let a = json!({"fare": 5000});
        let b = json!({"fare": 5001});
        assert_ne!(
            event_hash(&GENESIS, &fields(&a, &m)),
            event_hash(&GENESIS, &fields(&b, &m))
        );
        let prev = [1u8; 32];
        assert_ne!(
            event_hash(&GENESIS, &fields(&a, &m)),
            event_hash(&prev, &fields(&a, &m))
        );
    }
}
