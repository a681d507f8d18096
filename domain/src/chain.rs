//! Tamper evidence: each event's hash covers its content and the previous event's hash
//! in the same aggregate, so editing or deleting an event breaks the chain from there on.
//!
//! Two versions of the hashed bytes exist; the `events` table says which one each event
//! uses (`hash_version`), and neither is ever edited:
//! - **version 2** (every event written since migration 0005, [`event_hash`]):
//!   `SHA-256(prev || JCS(doc))`, where `doc` is the object `{aggregate_type,
//!   aggregate_id, sequence, event_type, event_version, payload, metadata}` and `JCS` is
//!   RFC 8785 ([`crate::jcs`]), so any JCS library and SHA-256 recompute a stored hash;
//! - **version 1** (the events written before, [`event_hash_v1`]): `SHA-256(0x01 ||
//!   prev || canonical(doc))` with the project's own canonical form (ADR 0006: keys in
//!   byte order, scalars as serde_json writes them).
//!
//! Both are computed from what PostgreSQL's JSONB returns, whatever key order or
//! spacing it chose, with or without parsing the JSON first ([`event_hash_text`]).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The chain version of every event written now.
pub const CHAIN_VERSION: i16 = 2;

/// The first chain version's tag, hashed in front of its bytes.
const V1_TAG: u8 = 1;

/// The hash that the first event of every aggregate chains to.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// Why an event's hash cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Version 1: its payload or metadata is not JSON.
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    /// Version 2: its payload or metadata has no RFC 8785 form.
    #[error(transparent)]
    Jcs(#[from] crate::jcs::JcsError),
    /// A `hash_version` this code does not know.
    #[error("unknown hash_version {0} (known: 1, 2)")]
    UnknownVersion(i16),
}

/// The stored fields an event's hash covers (everything but `position` and `hash`).
/// `J` is how the JSON fields are held: parsed ([`Value`], the default) or, inside
/// [`event_hash_text`], as text.
#[derive(Debug, Clone, Copy)]
pub struct HashedFields<'a, J: ?Sized = Value> {
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
    pub payload: &'a J,
    /// `metadata` (includes `recorded_at`, `actor`, the ids).
    pub metadata: &'a J,
}

/// The current version's hash ([`CHAIN_VERSION`]): `SHA-256(prev || JCS(doc))`.
pub fn event_hash(prev: &[u8], fields: &HashedFields<'_>) -> [u8; 32] {
    hash_jcs(prev, fields, |out, json| {
        crate::jcs::write_value(out, json);
        Ok(())
    })
    .unwrap_or_else(|never: std::convert::Infallible| match never {})
}

/// The hash of `version` of fields whose JSON is still text (`HashedFields<str>`, as
/// PostgreSQL returns them): the same hash as parsing the payload and metadata into
/// `Value`s first, without building them.
pub fn event_hash_text(
    version: i16,
    prev: &[u8],
    fields: &HashedFields<'_, str>,
) -> Result<[u8; 32], HashError> {
    match version {
        1 => Ok(event_hash_text_v1(prev, fields)?),
        2 => Ok(hash_jcs(prev, fields, crate::jcs::write_text)?),
        other => Err(HashError::UnknownVersion(other)),
    }
}

/// The hash of `version` of parsed fields.
pub fn event_hash_versioned(
    version: i16,
    prev: &[u8],
    fields: &HashedFields<'_>,
) -> Result<[u8; 32], HashError> {
    match version {
        1 => Ok(event_hash_v1(prev, fields)),
        2 => Ok(event_hash(prev, fields)),
        other => Err(HashError::UnknownVersion(other)),
    }
}

/// Version 2: renders `JCS(doc)` (its members in key order, all ASCII names) into a
/// reused buffer, `payload` and `metadata` written by `json`, and hashes it after `prev`.
fn hash_jcs<J: ?Sized, E>(
    prev: &[u8],
    fields: &HashedFields<'_, J>,
    json: impl Fn(&mut Vec<u8>, &J) -> Result<(), E>,
) -> Result<[u8; 32], E> {
    use crate::jcs::{write_i64, write_string};
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(1024));
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        buf.extend_from_slice(b"{\"aggregate_id\":");
        write_string(buf, fields.aggregate_id);
        buf.extend_from_slice(b",\"aggregate_type\":");
        write_string(buf, fields.aggregate_type);
        buf.extend_from_slice(b",\"event_type\":");
        write_string(buf, fields.event_type);
        buf.extend_from_slice(b",\"event_version\":");
        write_i64(buf, i64::from(fields.event_version));
        buf.extend_from_slice(b",\"metadata\":");
        json(buf, fields.metadata)?;
        buf.extend_from_slice(b",\"payload\":");
        json(buf, fields.payload)?;
        buf.extend_from_slice(b",\"sequence\":");
        write_i64(buf, fields.sequence);
        buf.push(b'}');
        let mut hasher = Sha256::new();
        hasher.update(prev);
        hasher.update(&buf[..]);
        Ok(hasher.finalize().into())
    })
}

/// Version 1: `sha256(0x01 || prev || canonical(fields))`.
pub fn event_hash_v1(prev: &[u8], fields: &HashedFields<'_>) -> [u8; 32] {
    let hashed: Result<_, std::convert::Infallible> = hash_envelope(prev, fields, |buf, json| {
        write_canonical(buf, json);
        Ok(())
    });
    match hashed {
        Ok(hash) => hash,
        Err(never) => match never {},
    }
}

/// [`event_hash_v1`] of fields whose JSON is still text.
pub fn event_hash_text_v1(prev: &[u8], fields: &HashedFields<'_, str>) -> Result<[u8; 32], CanonicalError> {
    hash_envelope(prev, fields, write_canonical_text)
}

/// Renders the hashed envelope around `payload` and `metadata` (written by `json`)
/// into a reused buffer and hashes it: one layout for both kinds of input.
fn hash_envelope<J: ?Sized, E>(
    prev: &[u8],
    fields: &HashedFields<'_, J>,
    json: impl Fn(&mut Vec<u8>, &J) -> Result<(), E>,
) -> Result<[u8; 32], E> {
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
        json(buf, fields.metadata)?;
        buf.extend_from_slice(b",\"payload\":");
        json(buf, fields.payload)?;
        let _ = write!(buf, ",\"sequence\":{}}}", fields.sequence);

        let mut hasher = Sha256::new();
        hasher.update([V1_TAG]);
        hasher.update(prev);
        hasher.update(&buf[..]);
        Ok(hasher.finalize().into())
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

/// A JSON text [`write_canonical_text`] could not read.
#[derive(Debug, thiserror::Error)]
#[error("not JSON at byte {at}: {what}")]
pub struct CanonicalError {
    /// Byte offset into the text.
    pub at: usize,
    /// What was expected or found.
    pub what: &'static str,
}

/// Appends the canonical rendering of the JSON `text`: the same bytes as
/// `write_canonical(out, &serde_json::from_str(text)?)`, without building the tree.
/// Strings without escapes and plain integers are copied as they are; everything else
/// goes through serde_json's own parsing and writing, so the two renderings cannot
/// drift apart. `verify` hashes every event of the store with it (ADR 0006).
///
/// On an error `out` may hold a partial rendering.
pub fn write_canonical_text(out: &mut Vec<u8>, text: &str) -> Result<(), CanonicalError> {
    let mut reader = Reader {
        bytes: text.as_bytes(),
        text,
        at: 0,
        members: Vec::new(),
        scratch: Vec::new(),
    };
    reader.value(out, 0)?;
    reader.skip_ws();
    if reader.at != reader.bytes.len() {
        return Err(reader.error("trailing characters"));
    }
    Ok(())
}

/// serde_json's nesting limit: deeper texts are refused by both renderings.
const MAX_DEPTH: usize = 128;

struct Reader<'a> {
    bytes: &'a [u8],
    text: &'a str,
    at: usize,
    /// The members of the objects being read, innermost last: each object's key and
    /// where its `"key":value` landed in the output.
    members: Vec<(std::borrow::Cow<'a, str>, std::ops::Range<usize>)>,
    /// Where an object's members are set aside while they are put in key order.
    scratch: Vec<u8>,
}

impl<'a> Reader<'a> {
    fn error(&self, what: &'static str) -> CanonicalError {
        CanonicalError { at: self.at, what }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), CanonicalError> {
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        self.skip_ws();
        match self.bytes.get(self.at) {
            Some(b'{') => self.object(out, depth + 1),
            Some(b'[') => self.array(out, depth + 1),
            Some(b'"') => {
                let (raw, escaped) = self.string()?;
                write_string(out, raw, escaped, self.at)
            }
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            Some(_) => Err(self.error("a value")),
            None => Err(self.error("a value, found the end")),
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &'static str) -> Result<(), CanonicalError> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            out.extend_from_slice(word.as_bytes());
            Ok(())
        } else {
            Err(self.error("true, false or null"))
        }
    }

    /// A string token, quotes included, and whether it holds an escape.
    fn string(&mut self) -> Result<(&'a str, bool), CanonicalError> {
        let start = self.at;
        self.at += 1; // the opening quote
        let mut escaped = false;
        loop {
            let rest = &self.bytes[self.at..];
            let Some(stop) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(self.error("the end of a string"));
            };
            // serde_json refuses a raw control character in a string; so must this.
            // (A fold, not `any`: it vectorizes.)
            if rest[..stop].iter().fold(false, |seen, b| seen | (*b < 0x20)) {
                return Err(self.error("a control character in a string"));
            }
            self.at += stop;
            if self.bytes[self.at] == b'"' {
                self.at += 1;
                return Ok((&self.text[start..self.at], escaped));
            }
            escaped = true;
            if self.bytes.get(self.at + 1).is_some_and(|b| *b < 0x20) {
                return Err(self.error("a control character in a string"));
            }
            self.at += 2; // the backslash and the character it escapes
            if self.at > self.bytes.len() {
                return Err(self.error("the end of a string"));
            }
        }
    }

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
        let start = self.at;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
        let token = &self.text[start..self.at];
        let digits = token.strip_prefix('-').unwrap_or(token);
        // A plain integer serde_json keeps as an integer is written back as it is read.
        let plain = !digits.is_empty()
            && digits.len() <= 18
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'))
            && token != "-0";
        if plain {
            out.extend_from_slice(token.as_bytes());
            return Ok(());
        }
        let number: serde_json::Number = serde_json::from_str(token).map_err(|_| CanonicalError {
            at: start,
            what: "a number",
        })?;
        let _ = serde_json::to_writer(&mut *out, &number);
        Ok(())
    }

    /// After an array element or object member: a `,` (copied; more follow: false)
    /// or the `close` bracket (consumed, not written: true).
    fn after_member(
        &mut self,
        out: &mut Vec<u8>,
        close: u8,
        what: &'static str,
    ) -> Result<bool, CanonicalError> {
        self.skip_ws();
        match self.bytes.get(self.at) {
            Some(b',') => {
                self.at += 1;
                out.push(b',');
                Ok(false)
            }
            Some(b) if *b == close => {
                self.at += 1;
                Ok(true)
            }
            _ => Err(self.error(what)),
        }
    }

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting deeper than 128"));
        }
        self.at += 1;
        out.push(b'[');
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b']') {
            self.at += 1;
            out.push(b']');
            return Ok(());
        }
        loop {
            self.value(out, depth)?;
            if self.after_member(out, b']', "',' or ']'")? {
                out.push(b']');
                return Ok(());
            }
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), CanonicalError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting deeper than 128"));
        }
        self.at += 1;
        // Members are written as they come; if their keys are not already in order (or
        // one repeats), they are then rewritten in key order, a repeated key keeping
        // its last value (as serde_json's map does).
        out.push(b'{');
        let body = out.len();
        let base = self.members.len();
        self.skip_ws();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
        } else {
            loop {
                self.skip_ws();
                if self.bytes.get(self.at) != Some(&b'"') {
                    return Err(self.error("a key"));
                }
                let key_at = self.at;
                let (raw, escaped) = self.string()?;
                let member = out.len();
                let key = if escaped {
                    let key = serde_json::from_str::<String>(raw).map_err(|_| CanonicalError {
                        at: key_at,
                        what: "a key",
                    })?;
                    let _ = serde_json::to_writer(&mut *out, &key);
                    std::borrow::Cow::Owned(key)
                } else {
                    out.extend_from_slice(raw.as_bytes());
                    std::borrow::Cow::Borrowed(&raw[1..raw.len() - 1])
                };
                out.push(b':');
                self.expect(b':', "':'")?;
                self.value(out, depth)?;
                self.members.push((key, member..out.len()));
                if self.after_member(out, b'}', "',' or '}'")? {
                    break;
                }
            }
        }
        let members = &mut self.members[base..];
        let ordered = members
            .windows(2)
            .all(|pair| pair[0].0.as_bytes() < pair[1].0.as_bytes());
        if !ordered {
            self.scratch.clear();
            self.scratch.extend_from_slice(&out[body..]);
            out.truncate(body);
            // Stable: of equal keys, the last one given ends up last.
            members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            let mut first = true;
            for (i, (key, range)) in members.iter().enumerate() {
                if members.get(i + 1).is_some_and(|next| next.0 == *key) {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(&self.scratch[range.start - body..range.end - body]);
            }
        }
        self.members.truncate(base);
        out.push(b'}');
        Ok(())
    }
}

/// Writes a string token as serde_json would write the string it stands for.
fn write_string(out: &mut Vec<u8>, raw: &str, escaped: bool, at: usize) -> Result<(), CanonicalError> {
    if escaped {
        let s: String = serde_json::from_str(raw).map_err(|_| CanonicalError { at, what: "a string" })?;
        let _ = serde_json::to_writer(&mut *out, &s);
    } else {
        // No escape and (checked while reading) no control character: serde_json would
        // write exactly these bytes.
        out.extend_from_slice(raw.as_bytes());
    }
    Ok(())
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

    /// The tree-free rendering of a text must be the tree rendering of the same text.
    fn assert_text_matches_tree(text: &str) {
        let tree: Value = serde_json::from_str(text).unwrap();
        let (mut from_text, mut from_tree) = (Vec::new(), Vec::new());
        write_canonical_text(&mut from_text, text).unwrap();
        write_canonical(&mut from_tree, &tree);
        assert_eq!(
            String::from_utf8_lossy(&from_text),
            String::from_utf8_lossy(&from_tree),
            "text: {text}"
        );
    }

    /// How PostgreSQL's `jsonb` prints a value: keys by length then bytes, `", "` and
    /// `": "` between members.
    fn jsonb_style(value: &Value) -> String {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| (a.0.len(), a.0.as_bytes()).cmp(&(b.0.len(), b.0.as_bytes())));
                let inner: Vec<String> = entries
                    .into_iter()
                    .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), jsonb_style(v)))
                    .collect();
                format!("{{{}}}", inner.join(", "))
            }
            Value::Array(items) => {
                format!(
                    "[{}]",
                    items.iter().map(jsonb_style).collect::<Vec<_>>().join(", ")
                )
            }
            scalar => scalar.to_string(),
        }
    }

    #[test]
    fn text_rendering_matches_the_tree_on_edge_cases() {
        for text in [
            r#"{"b": 1, "a": {"y": [1, 2.5, -3e-7, 1e300], "x": "s\"q\\u\n\ud83d\ude97\u0007"}}"#,
            r#"{"k": 1, "k": 2, "a\u0062": 3, "ab": 4}"#,
            r#"[-0, 0, -0.0, 1.0, 1E2, 12345678901234567890, -9223372036854775809, 100000000000000000000]"#,
            r#"[123456789012345678, 1234567890123456789, 0.1, 5e-324, 1.7976931348623157e308]"#,
            " \n[ {} , [ ] , \"\" , true , false , null ] \t",
            r#"{"é": "日本", "Z": "\/", "": null, "\u00e9": 1}"#,
            r#"{"fare": 5000, "cum_km": 1.4999999999999998, "at": "2026-12-02T05:38:58.123456Z"}"#,
        ] {
            assert_text_matches_tree(text);
        }
    }

    #[test]
    fn text_rendering_refuses_what_serde_json_refuses() {
        for text in [
            "",
            "{",
            r#"{"a" 1}"#,
            "[1,]",
            "01",
            "1 2",
            "\"a\u{1}\"",
            "tru",
            "-",
            "1e999",
            "{1: 2}",
        ] {
            let mut out = Vec::new();
            assert!(write_canonical_text(&mut out, text).is_err(), "accepted {text:?}");
            assert!(
                serde_json::from_str::<Value>(text).is_err(),
                "serde_json accepts {text:?}"
            );
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-180.0f64..180.0).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\x00-\\x7f]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z_\\x00-\\x20é]{0,8}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Compact, pretty and jsonb-style texts of any value render as the tree does.
        #[test]
        fn text_rendering_is_the_tree_rendering(value in json_value()) {
            assert_text_matches_tree(&value.to_string());
            assert_text_matches_tree(&serde_json::to_string_pretty(&value).unwrap());
            assert_text_matches_tree(&jsonb_style(&value));
        }
    }

    proptest::proptest! {
        /// Hashing the stored text is hashing the parsed value, for any payload, in
        /// both versions; and version 2 is SHA-256 over an independent JCS library's
        /// rendering of the document (serde_jcs).
        #[test]
        fn hash_of_text_is_hash_of_value(payload in json_value(), metadata in json_value()) {
            let (p, m) = (jsonb_style(&payload), metadata.to_string());
            let text = HashedFields::<str> {
                aggregate_type: "ride",
                aggregate_id: "0190c6f2-0000-7000-8000-000000000001",
                sequence: 1,
                event_type: "created",
                event_version: 1,
                payload: &p,
                metadata: &m,
            };
            let prev = [7u8; 32];
            let parsed = fields(&payload, &metadata);
            proptest::prop_assert_eq!(event_hash_text(1, &prev, &text).unwrap(), event_hash_v1(&prev, &parsed));
            proptest::prop_assert_eq!(event_hash_text(2, &prev, &text).unwrap(), event_hash(&prev, &parsed));
            let doc = json!({
                "aggregate_type": "ride",
                "aggregate_id": "0190c6f2-0000-7000-8000-000000000001",
                "sequence": 1,
                "event_type": "created",
                "event_version": 1,
                "payload": payload,
                "metadata": metadata,
            });
            let mut hasher = Sha256::new();
            hasher.update(prev);
            hasher.update(serde_jcs::to_vec(&crate::jcs::tests::as_doubles(&doc)).unwrap());
            let independent: [u8; 32] = hasher.finalize().into();
            proptest::prop_assert_eq!(event_hash(&prev, &parsed), independent);
        }
    }

    /// Both versions pinned to hashes computed outside Rust (Python's hashlib and
    /// `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`), so
    /// neither can drift: old chains must keep verifying.
    #[test]
    fn both_versions_are_pinned() {
        let payload = json!({"fare": 5000, "note": "é\n"});
        let metadata = json!({"actor": {"role": "driver"}});
        let prev = [7u8; 32];
        let f = fields(&payload, &metadata);
        let hex = |h: [u8; 32]| h.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(
            hex(event_hash_v1(&prev, &f)),
            "9c49748f392a41587038a53552dbbce1e5f8bae713540fdf19150e5e2e8dc0db"
        );
        assert_eq!(
            hex(event_hash(&prev, &f)),
            "90a10e823e082f0fbaedf034808d21ff3f8987b321a283430f8fbb611ac8bd01"
        );
        assert_eq!(
            hex(event_hash_versioned(1, &prev, &f).unwrap()),
            hex(event_hash_v1(&prev, &f))
        );
        assert!(matches!(
            event_hash_versioned(3, &prev, &f),
            Err(HashError::UnknownVersion(3))
        ));
        let (p, m) = (payload.to_string(), metadata.to_string());
        let text = HashedFields::<str> {
            aggregate_type: f.aggregate_type,
            aggregate_id: f.aggregate_id,
            sequence: f.sequence,
            event_type: f.event_type,
            event_version: f.event_version,
            payload: &p,
            metadata: &m,
        };
        assert!(matches!(
            event_hash_text(0, &prev, &text),
            Err(HashError::UnknownVersion(0))
        ));
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
        assert_ne!(
            event_hash_v1(&GENESIS, &fields(&a, &m)),
            event_hash_v1(&GENESIS, &fields(&b, &m))
        );
    }
}
