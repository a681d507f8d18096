//! RFC 8785, the JSON Canonicalization Scheme (JCS): the one byte rendering of a JSON
//! value that any JCS library produces, so that an outsider can recompute a hash
//! (chain version 2, [`crate::chain`]) or check a signature over it ([`crate::merkle`]
//! tree heads) with off-the-shelf tools.
//!
//! The rules (RFC 8785 §3.2):
//! - no whitespace between tokens;
//! - object members sorted by their keys as arrays of UTF-16 code units (not UTF-8
//!   bytes: the two orders differ for characters above U+FFFF against U+E000..U+FFFF);
//! - strings: only `"`, `\` and the control characters below U+0020 are escaped, the
//!   latter as `\b \t \n \f \r` where those exist, else `\u00xx` in lower-case hex;
//!   everything else is written as its UTF-8;
//! - numbers as IEEE 754 doubles, printed as ECMAScript's `Number.prototype.toString`
//!   (the `ryu-js` crate): `1e+21`, `1e-7`, `0.000001`, `-0` as `0`; integers beyond
//!   2^53 therefore lose precision exactly as they would in JavaScript, and a number
//!   too large for a double (`1e999`) cannot be canonicalized at all.
//!
//! Two entries: [`write_value`] renders a parsed [`serde_json::Value`], and
//! [`write_text`] renders JSON text (as PostgreSQL returns `jsonb`) without building the
//! tree, for `verify`, which hashes every event of the store. Both give the same bytes
//! for the same JSON (property-tested against each other and against `serde_jcs`).

use std::cmp::Ordering;

use serde_json::Value;

/// Why a JSON text or number has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no canonical JSON (RFC 8785) at byte {at}: {what}")]
pub struct JcsError {
    /// Byte offset into the text (0 for a value).
    pub at: usize,
    /// What was expected or found.
    pub what: &'static str,
}

/// The canonical rendering of `value`.
pub fn to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(&mut out, value);
    out
}

/// Appends the canonical rendering of `value`. Cannot fail: a `serde_json` number is
/// always finite.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_json_number(out, n),
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, v);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map is sorted by bytes already; the UTF-16 order differs
            // only for some non-BMP keys, so this is nearly always a no-op check.
            if !entries
                .windows(2)
                .all(|w| key_cmp(w[0].0, w[1].0) == Ordering::Less)
            {
                entries.sort_by(|a, b| key_cmp(a.0, b.0));
            }
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(out, k);
                out.push(b':');
                write_value(out, v);
            }
            out.push(b'}');
        }
    }
}

/// 2^53: every integer of smaller magnitude is a double exactly and prints as itself.
const EXACT: u64 = 1 << 53;

fn write_json_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    use std::io::Write as _;
    if let Some(u) = n.as_u64() {
        if u < EXACT {
            let _ = write!(out, "{u}");
            return;
        }
    } else if let Some(i) = n.as_i64() {
        if i.unsigned_abs() < EXACT {
            let _ = write!(out, "{i}");
            return;
        }
    }
    // Wider integers become the nearest double (round half to even, as JavaScript
    // does); serde_json numbers are finite, so this cannot fail.
    let f = n.as_f64().unwrap_or(0.0);
    let _ = write_f64(out, f);
}

/// Appends `f` as ECMAScript prints it; an error for NaN and the infinities, which
/// JSON cannot hold.
pub fn write_f64(out: &mut Vec<u8>, f: f64) -> Result<(), JcsError> {
    if !f.is_finite() {
        return Err(JcsError {
            at: 0,
            what: "a number outside the range of a double",
        });
    }
    if f == 0.0 {
        // -0 too: ECMAScript prints it as "0".
        out.push(b'0');
        return Ok(());
    }
    let mut buffer = ryu_js::Buffer::new();
    out.extend_from_slice(buffer.format_finite(f).as_bytes());
    Ok(())
}

/// Appends `i` canonically (exact below 2^53, as a double beyond).
pub fn write_i64(out: &mut Vec<u8>, i: i64) {
    write_json_number(out, &serde_json::Number::from(i));
}

/// Appends `s` as a canonical JSON string.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b >= 0x20 && b != b'"' && b != b'\\' {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            control => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(control >> 4)]);
                out.push(HEX[usize::from(control & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The order of object keys: as arrays of UTF-16 code units.
pub fn key_cmp(a: &str, b: &str) -> Ordering {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    match x.iter().zip(y).position(|(p, q)| p != q) {
        None => x.len().cmp(&y.len()),
        // Below 0xEE both the byte and the UTF-16 orders agree: the first differing
        // byte then decides (UTF-8 keeps code point order, and code points below
        // U+E000 order the same as their UTF-16 units).
        Some(i) if x[i] < 0xee && y[i] < 0xee => x[i].cmp(&y[i]),
        Some(_) => a.encode_utf16().cmp(b.encode_utf16()),
    }
}

/// Appends the canonical rendering of the JSON `text`: the same bytes as
/// `write_value(out, &serde_json::from_str(text)?)`, without building the tree. Refuses
/// what is not JSON, numbers beyond a double, and objects with a repeated key (RFC 8785
/// requires I-JSON; PostgreSQL's `jsonb` never has one).
///
/// On an error `out` may hold a partial rendering.
pub fn write_text(out: &mut Vec<u8>, text: &str) -> Result<(), JcsError> {
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

/// serde_json's nesting limit: deeper texts are refused.
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
    fn error(&self, what: &'static str) -> JcsError {
        JcsError { at: self.at, what }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), JcsError> {
        self.skip_ws();
        match self.bytes.get(self.at) {
            Some(b'{') => self.object(out, depth + 1),
            Some(b'[') => self.array(out, depth + 1),
            Some(b'"') => {
                let at = self.at;
                let (raw, escaped) = self.string()?;
                if escaped {
                    let s = unescape(raw, at)?;
                    write_string(out, &s);
                } else {
                    // No escape and no control character: already canonical.
                    out.extend_from_slice(raw.as_bytes());
                }
                Ok(())
            }
            Some(b't') => self.literal(out, "true"),
            Some(b'f') => self.literal(out, "false"),
            Some(b'n') => self.literal(out, "null"),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            Some(_) => Err(self.error("a value")),
            None => Err(self.error("a value, found the end")),
        }
    }

    fn literal(&mut self, out: &mut Vec<u8>, word: &'static str) -> Result<(), JcsError> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            out.extend_from_slice(word.as_bytes());
            Ok(())
        } else {
            Err(self.error("true, false or null"))
        }
    }

    /// A string token, quotes included, and whether it holds an escape.
    fn string(&mut self) -> Result<(&'a str, bool), JcsError> {
        let start = self.at;
        self.at += 1; // the opening quote
        let mut escaped = false;
        loop {
            let rest = &self.bytes[self.at..];
            let Some(stop) = memchr::memchr2(b'"', b'\\', rest) else {
                return Err(self.error("the end of a string"));
            };
            // A fold, not `any`: it vectorizes.
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

    fn number(&mut self, out: &mut Vec<u8>) -> Result<(), JcsError> {
        let start = self.at;
        while let Some(b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') = self.bytes.get(self.at) {
            self.at += 1;
        }
        let token = &self.text[start..self.at];
        let bad = JcsError {
            at: start,
            what: "a number",
        };
        if !is_json_number(token.as_bytes()) {
            return Err(bad);
        }
        let digits = token.strip_prefix('-').unwrap_or(token);
        // An integer of at most 15 digits is exact as a double and prints as itself.
        if digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit()) {
            if digits == "0" {
                out.push(b'0'); // "-0" too
            } else {
                out.extend_from_slice(token.as_bytes());
            }
            return Ok(());
        }
        let f: f64 = token.parse().map_err(|_| bad.clone())?;
        write_f64(out, f).map_err(|e| JcsError {
            at: start,
            what: e.what,
        })
    }

    /// After an array element or object member: a `,` (copied; more follow: false)
    /// or the `close` bracket (consumed, not written: true).
    fn after_member(&mut self, out: &mut Vec<u8>, close: u8, what: &'static str) -> Result<bool, JcsError> {
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

    fn array(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), JcsError> {
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

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), JcsError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting deeper than 128"));
        }
        self.at += 1;
        // Members are written as they come, then, unless their keys came in order,
        // rewritten in key order.
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
                    let key = unescape(raw, key_at)?;
                    write_string(out, &key);
                    std::borrow::Cow::Owned(key)
                } else {
                    out.extend_from_slice(raw.as_bytes());
                    std::borrow::Cow::Borrowed(&raw[1..raw.len() - 1])
                };
                out.push(b':');
                self.skip_ws();
                if self.bytes.get(self.at) != Some(&b':') {
                    return Err(self.error("':'"));
                }
                self.at += 1;
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
            .all(|pair| key_cmp(&pair[0].0, &pair[1].0) == Ordering::Less);
        if !ordered {
            members.sort_by(|a, b| key_cmp(&a.0, &b.0));
            if members.windows(2).any(|pair| pair[0].0 == pair[1].0) {
                self.members.truncate(base);
                return Err(JcsError {
                    at: self.at,
                    what: "an object with a repeated key",
                });
            }
            self.scratch.clear();
            self.scratch.extend_from_slice(&out[body..]);
            out.truncate(body);
            for (i, (_, range)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.scratch[range.start - body..range.end - body]);
            }
        }
        self.members.truncate(base);
        out.push(b'}');
        Ok(())
    }
}

/// The string a string token with escapes stands for.
fn unescape(raw: &str, at: usize) -> Result<String, JcsError> {
    serde_json::from_str::<String>(raw).map_err(|_| JcsError {
        at,
        what: "a string (bad escape or lone surrogate)",
    })
}

/// The JSON number grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    let mut i = 0;
    let digits = |i: &mut usize| {
        let from = *i;
        while t.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > from
    };
    if t.first() == Some(&b'-') {
        i += 1;
    }
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if let Some(b'e' | b'E') = t.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = t.get(i) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == t.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn text(t: &str) -> String {
        let mut out = Vec::new();
        write_text(&mut out, t).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn value(t: &str) -> String {
        String::from_utf8(to_vec(&serde_json::from_str(t).unwrap())).unwrap()
    }

    /// RFC 8785 §3.2.3's example (sorting by UTF-16 code units), Appendix B's numbers
    /// and the `weird.json`, `values.json`, `arrays.json` and `structures.json` vectors
    /// of the reference implementation (github.com/cyberphone/json-canonicalization).
    #[test]
    fn rfc_8785_reference_vectors() {
        let cases: &[(&str, &str)] = &[
            // §3.2.2 example
            (
                r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                   "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
                   "literals": [null, true, false]}"#,
                "{\"literals\":[null,true,false],\"numbers\":[333333333.3333333,1e+30,4.5,0.002,1e-27],\"string\":\"€$\\u000f\\nA'B\\\"\\\\\\\\\\\"/\"}",
            ),
            // §3.2.3 example: sorting
            (
                r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
                   "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}"#,
                "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}",
            ),
            // arrays.json
            (r#"[56, {"d": true, "10": null, "1": [ ]}]"#, r#"[56,{"1":[],"10":null,"d":true}]"#),
            // structures.json
            (
                r#"{"1": {"f": {"f": "hi","F": 5} ,"\n": 56.0}, "10": { }, "": "empty", "a": { }, "111": [ {"e": "yes","E": "no" } ], "A": { }}"#,
                r#"{"":"empty","1":{"\n":56,"f":{"F":5,"f":"hi"}},"10":{},"111":[{"E":"no","e":"yes"}],"A":{},"a":{}}"#,
            ),
            // values.json
            (
                r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
                   "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}"#,
                r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#,
            ),
            // weird.json
            (
                r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\u000a": "Newline", "1": "One",
                   "\u0080": "Control\u007f", "\ud83d\ude02": "Smiley", "\u00f6": "Latin Small Letter O With Diaeresis",
                   "\ufb33": "Hebrew Letter Dalet With Dagesh", "</script>": "Browser Challenge"}"#,
                "{\"\\n\":\"Newline\",\"\\r\":\"Carriage Return\",\"1\":\"One\",\"</script>\":\"Browser Challenge\",\"\u{80}\":\"Control\u{7f}\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😂\":\"Smiley\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(text(input), *expected, "text of {input}");
            assert_eq!(value(input), *expected, "value of {input}");
        }
    }

    /// RFC 8785 Appendix B: IEEE 754 bit patterns and their ECMAScript renderings.
    #[test]
    fn rfc_8785_appendix_b_numbers() {
        let cases: &[(u64, &str)] = &[
            (0x0000000000000000, "0"),
            (0x8000000000000000, "0"),
            (0x0000000000000001, "5e-324"),
            (0x8000000000000001, "-5e-324"),
            (0x7fefffffffffffff, "1.7976931348623157e+308"),
            (0xffefffffffffffff, "-1.7976931348623157e+308"),
            (0x4340000000000000, "9007199254740992"),
            (0xc340000000000000, "-9007199254740992"),
            (0x4430000000000000, "295147905179352830000"),
            (0x44b52d02c7e14af5, "9.999999999999997e+22"),
            (0x44b52d02c7e14af6, "1e+23"),
            (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
            (0x444b1ae4d6e2ef4e, "999999999999999700000"),
            (0x444b1ae4d6e2ef4f, "999999999999999900000"),
            (0x444b1ae4d6e2ef50, "1e+21"),
            (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
            (0x3eb0c6f7a0b5ed8d, "0.000001"),
            (0x41b3de4355555553, "333333333.3333332"),
            (0x41b3de4355555554, "333333333.33333325"),
            (0x41b3de4355555555, "333333333.3333333"),
            (0x41b3de4355555556, "333333333.3333334"),
            (0x41b3de4355555557, "333333333.33333343"),
            (0xbecbf647612f3696, "-0.0000033333333333333333"),
            (0x43143ff3c1cb0959, "1424953923781206.2"),
        ];
        for (bits, expected) in cases {
            let f = f64::from_bits(*bits);
            let mut out = Vec::new();
            write_f64(&mut out, f).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), *expected, "{bits:#x}");
            // And from text, as PostgreSQL would print it.
            let printed = format!("{f:e}");
            assert_eq!(text(&printed), *expected, "text {printed}");
        }
        for bits in [0x7fffffffffffffffu64, 0x7ff0000000000000, 0xfff0000000000000] {
            assert!(write_f64(&mut Vec::new(), f64::from_bits(bits)).is_err());
        }
    }

    #[test]
    fn integers_are_doubles() {
        assert_eq!(
            text("[-0, 0, 1, -1, 123456789012345, 9007199254740993, 1E2, 10.0]"),
            "[0,0,1,-1,123456789012345,9007199254740992,100,10]"
        );
        assert_eq!(
            value("[9007199254740993, -9223372036854775808, 18446744073709551615]"),
            "[9007199254740992,-9223372036854776000,18446744073709552000]"
        );
        assert_eq!(
            text("[100000000000000000000, 1000000000000000000000]"),
            "[100000000000000000000,1e+21]"
        );
    }

    #[test]
    fn escapes() {
        let s = "\u{0}\u{1}\u{8}\t\n\u{b}\u{c}\r\u{1f} \"\\/\u{7f}\u{2028}é😀";
        let mut out = Vec::new();
        write_string(&mut out, s);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"\\u0000\\u0001\\b\\t\\n\\u000b\\f\\r\\u001f \\\"\\\\/\u{7f}\u{2028}é😀\""
        );
    }

    #[test]
    fn refuses_what_is_not_canonicalizable() {
        for bad in [
            "",
            "{",
            r#"{"a" 1}"#,
            "[1,]",
            "01",
            "1.",
            ".5",
            "+1",
            "1e",
            "-",
            "1 2",
            "\"a\u{1}\"",
            "tru",
            "1e999",
            "-1e400",
            "{1: 2}",
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": 1, "\u0061": 2}"#,
            r#""\ud800""#,
        ] {
            assert!(write_text(&mut Vec::new(), bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn key_order_is_utf16() {
        // U+FB33 (one unit, 0xFB33) sorts after U+1F600 (surrogates 0xD83D...), though
        // its UTF-8 is smaller.
        assert_eq!(key_cmp("\u{fb33}", "\u{1f600}"), Ordering::Greater);
        assert_eq!(key_cmp("\u{e000}", "\u{10000}"), Ordering::Greater);
        assert_eq!(key_cmp("a", "ab"), Ordering::Less);
        assert_eq!(key_cmp("b", "ab"), Ordering::Greater);
        assert_eq!(key_cmp("é", "z"), Ordering::Greater);
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-(1i64 << 53)..(1i64 << 53)).prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            (-1e-5f64..1e-5).prop_map(Value::from),
            (1e20f64..1e22).prop_map(Value::from),
            (-180.0f64..180.0).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
            "[\\x00-\\x7f]{0,6}".prop_map(Value::String),
            "[\u{e000}-\u{e010}\u{fb33}\u{10000}-\u{10010}\u{1f600}a]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(
                    "[a-z_\\x00-\\x20é\u{e000}\u{fb33}\u{ffff}\u{10000}\u{1f600}]{0,6}",
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// How PostgreSQL's `jsonb` prints a value: keys by length then bytes, `", "` and
    /// `": "` between members, numbers in full (no exponent).
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
            Value::Array(items) => format!(
                "[{}]",
                items.iter().map(jsonb_style).collect::<Vec<_>>().join(", ")
            ),
            Value::Number(n) if n.is_f64() => {
                let f = n.as_f64().unwrap_or(0.0);
                // numeric prints every digit; Rust's `{}` of a double does too.
                format!("{f}")
            }
            scalar => scalar.to_string(),
        }
    }

    /// `value` with every integer beyond ±2^53 (outside I-JSON) made the double it
    /// stands for in RFC 8785. serde_jcs (like the Python reference implementation)
    /// prints such integers digit for digit; JavaScript and this module read them as
    /// doubles, which is also the only reading under which a `jsonb` round trip (that
    /// prints `1e22` as 23 digits) keeps the rendering. Events never hold such numbers.
    pub(crate) fn as_doubles(value: &Value) -> Value {
        match value {
            Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() >= EXACT as f64) && !n.is_f64() => {
                Value::from(n.as_f64().unwrap_or(0.0))
            }
            Value::Array(items) => Value::Array(items.iter().map(as_doubles).collect()),
            Value::Object(map) => {
                Value::Object(map.iter().map(|(k, v)| (k.clone(), as_doubles(v))).collect())
            }
            other => other.clone(),
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// The value rendering is the independent implementation's (serde_jcs).
        #[test]
        fn value_rendering_is_serde_jcs(value in json_value()) {
            let ours = String::from_utf8(to_vec(&value)).unwrap();
            let theirs = serde_jcs::to_string(&as_doubles(&value)).unwrap();
            proptest::prop_assert_eq!(ours, theirs);
        }

        /// Compact, pretty and jsonb-style texts render as the parsed value does.
        #[test]
        fn text_rendering_is_the_value_rendering(value in json_value()) {
            let expected = to_vec(&value);
            for t in [value.to_string(), serde_json::to_string_pretty(&value).unwrap(), jsonb_style(&value)] {
                let mut out = Vec::new();
                write_text(&mut out, &t).unwrap();
                proptest::prop_assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&expected), "text {}", t);
            }
        }

        /// Any double renders as serde_jcs renders it, from a value and from text.
        #[test]
        fn numbers_are_ecmascript(f in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO) {
            let mut out = Vec::new();
            write_f64(&mut out, f).unwrap();
            let ours = String::from_utf8(out).unwrap();
            proptest::prop_assert_eq!(&ours, &serde_jcs::to_string(&f).unwrap());
            proptest::prop_assert_eq!(text(&format!("{f:e}")), ours.clone());
            proptest::prop_assert_eq!(text(&format!("{f}")), ours);
        }
    }
}
