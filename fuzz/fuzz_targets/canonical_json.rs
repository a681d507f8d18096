//! The canonical JSON the hash chain covers (`domain::chain`): the streaming rendering
//! of stored text (`write_canonical_text`, what `verify` hashes) must give exactly the
//! bytes of the tree rendering (`write_canonical` of serde_json's parse, what the
//! writer hashes), accept exactly what serde_json accepts, and be a fixed point
//! (canonical text renders to itself). A difference would make `verify` report a
//! broken chain on an untouched store, or miss an edit.
//!
//! Each canonical form is one entry of [`FORMS`]; a new one (an RFC 8785 JCS renderer)
//! is added there and gets the same checks against its own tree rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A canonical form: its name, the rendering from text, and from a parsed tree.
struct Form {
    name: &'static str,
    from_text: fn(&str) -> Result<Vec<u8>, String>,
    from_tree: fn(&Value) -> Vec<u8>,
}

const FORMS: &[Form] = &[Form {
    name: "chain v1",
    from_text: |text| {
        let mut out = Vec::new();
        domain::chain::write_canonical_text(&mut out, text)
            .map(|()| out)
            .map_err(|e| e.to_string())
    },
    from_tree: |value| {
        let mut out = Vec::new();
        domain::chain::write_canonical(&mut out, value);
        out
    },
}];

fn check(form: &Form, text: &str) {
    let streamed = (form.from_text)(text);
    match serde_json::from_str::<Value>(text) {
        Ok(tree) => {
            let canonical = (form.from_tree)(&tree);
            let streamed = streamed.unwrap_or_else(|e| {
                panic!("{}: serde_json reads {text:?} but the text rendering refuses it: {e}", form.name)
            });
            assert_eq!(
                String::from_utf8_lossy(&streamed),
                String::from_utf8_lossy(&canonical),
                "{}: the two renderings of {text:?} differ",
                form.name
            );
            let canonical_text = std::str::from_utf8(&canonical).expect("canonical JSON is UTF-8");
            let again = (form.from_text)(canonical_text).expect("canonical JSON is JSON");
            assert_eq!(again, canonical, "{}: not a fixed point for {text:?}", form.name);
        }
        Err(_) => assert!(
            streamed.is_err(),
            "{}: the text rendering accepts {text:?}, which serde_json refuses",
            form.name
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for form in FORMS {
        check(form, text);
    }
});
