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
    use std::io::Write as _;
    thread_local! {
        // The rendering buffer, reused: auditors hash every event of the store.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        // Writing into a Vec cannot fail.
        buf.extend_from_slice(b"{\"aggregate_id\":");
        let _ = serde_json::to_writer(&mut *buf, fields.aggregate_id);
        buf.extend_from_slice(b",\"aggregate_type\":");
        let _ = serde_json::to_writer(&mut *buf, fields.aggregate_type);
        let _ = write!(buf, ",\"event_type\":\"{}\"", fields.event_type);
        let _ = write!(buf, ",\"event_version\":{}", fields.event_version);
        buf.extend_from_slice(b",\"metadata\":");
        write_canonical(buf, fields.metadata);
        buf.extend_from_slice(b",\"payload\":");
        write_canonical(buf, fields.payload);
        let _ = write!(buf, ",\"sequence\":{}}}", fields.sequence);

        let mut hasher = Sha256::new();
        hasher.update([CHAIN_VERSION]);
        hasher.update(prev);
        hasher.update(&buf[..]);
        hasher.finalize().into()
    })
}

/// Appends the canonical rendering of `value`: object keys in byte order, no
/// whitespace, scalars as serde_json writes them. Writes straight into `out` (no
/// allocation per key or scalar): auditors hash every event of the store.
pub fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            out.push(b'{');
            let sorted = map
                .keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| a.as_bytes() <= b.as_bytes());
            if sorted {
                for (i, (k, v)) in map.iter().enumerate() {
                    entry(out, i, k, v);
                }
            } else {
                // Only with serde_json's `preserve_order`: sort a list of references.
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (i, (k, v)) in entries.into_iter().enumerate() {
                    entry(out, i, k, v);
                }
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
        // Writing a scalar into a Vec cannot fail.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

fn entry(out: &mut Vec<u8>, i: usize, key: &str, value: &Value) {
    if i > 0 {
        out.push(b',');
    }
    let _ = serde_json::to_writer(&mut *out, key);
    out.push(b':');
    write_canonical(out, value);
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

    /// The allocation-heavy rendering every stored hash was first made with; the fast
    /// one must give the same bytes, or old chains would no longer verify.
    /// Canonical JSON: objects with keys sorted bytewise, no insignificant whitespace,
    /// strings and numbers as serde_json writes them.
    fn old_write_canonical(out: &mut Vec<u8>, value: &Value) {
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
                    old_write_canonical(out, v);
                }
                out.push(b'}');
            }
            Value::Array(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    old_write_canonical(out, v);
                }
                out.push(b']');
            }
            scalar => out.extend_from_slice(scalar.to_string().as_bytes()),
        }
    }

    #[test]
    fn the_fast_rendering_is_byte_for_byte_the_original() {
        let values = [
            json!({"b": 1, "a": {"y": [1, 2.5, -3e-7, 1e300], "x": "s\"q\\u\n\u{1F697}\u{7}"}}),
            json!({"": null, "é": true, "Z": false, "z": [], "m": {}, "n": [{"k": "v"}, [1, [2]]]}),
            json!([9007199254740993u64, -9223372036854775808i64, 0.1, "日本"]),
            json!({"fare": 5000, "cum_km": 1.4999999999999998, "at": "2026-12-02T05:38:58.123456Z"}),
        ];
        for v in &values {
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            write_canonical(&mut fast, v);
            old_write_canonical(&mut slow, v);
            assert_eq!(String::from_utf8_lossy(&fast), String::from_utf8_lossy(&slow));
        }
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
