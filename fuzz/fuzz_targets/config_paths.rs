//! Config paths and values as `micro config set/get/delete` send them:
//! parse the path, set the value on a document, read it back, delete it.
//! Whatever a set accepts must leave a document that can be stored and
//! read again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use micro_node::services::config::{delete_at, get_at, parse_value, set_at, split_path};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // path, then the value after the first newline
    let (path, value) = text.split_once('\n').unwrap_or((text, "1"));
    let Ok(parts) = split_path(path) else {
        return;
    };
    let mut doc = serde_json::json!({"a": {"b": 1, "c": {"d": [1, 2]}}, "s": "x"});
    let value = parse_value(value);
    if set_at(&mut doc, &parts, value).is_err() {
        return;
    }
    let raw = serde_json::to_vec(&doc).expect("a document serializes");
    let back: serde_json::Value =
        serde_json::from_slice(&raw).expect("a document that was set can be read back");
    assert!(
        get_at(&back, &parts).is_some(),
        "the value just set can be got"
    );
    let mut doc = back;
    delete_at(&mut doc, &parts);
});
