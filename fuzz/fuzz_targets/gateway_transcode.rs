//! The gateway's request path up to the protobuf bytes sent to a service:
//! query string, form or JSON body -> JSON request (micro_api::gateway)
//! -> coerced and encoded through a core service's descriptor
//! (micro::dynamic), exactly as the node's backend does it.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use prost_reflect::{DescriptorPool, MethodDescriptor};

fn methods() -> &'static [MethodDescriptor] {
    static METHODS: OnceLock<Vec<MethodDescriptor>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let pool = DescriptorPool::decode(micro_proto::FILE_DESCRIPTOR_SET)
            .expect("the core descriptors decode");
        pool.services()
            .flat_map(|s| s.methods().collect::<Vec<_>>())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, which, rest @ ..] = data else {
        return;
    };
    let methods = methods();
    let method = &methods[*which as usize % methods.len()];
    let mut headers = http::HeaderMap::new();
    // The query and the body are split at the first NUL.
    let (query, body) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let query = std::str::from_utf8(query).ok();
    let content_type = match mode % 3 {
        0 => "application/json",
        1 => "application/x-www-form-urlencoded",
        _ => "text/plain",
    };
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    let Ok(mut request) = micro_api::gateway::request_json("fuzz", query, &headers, body) else {
        return;
    };
    assert!(micro::dynamic::json_depth(&request) <= micro::dynamic::MAX_DEPTH);
    micro::dynamic::coerce_strings(&mut request, &method.input());
    let _ = micro::dynamic::encode_request(method, &request);
});
