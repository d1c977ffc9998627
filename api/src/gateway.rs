//! The API gateway: HTTP requests become calls to services.
//!
//! Routing: `/foo` -> service `foo`, endpoint `Foo.Call`; `/foo/bar` ->
//! `foo`, `Foo.Bar`; `/foo/bar/baz` -> `foo`, `Bar.Baz`; kebab-case segments
//! become CamelCase. A GET's query parameters are the request (dotted keys
//! nest); other methods send a JSON or form body, merged with the query.
//! `Micro-Namespace` picks the namespace; other headers travel as metadata.
//! Errors are `{"id","code","detail","status"}` with the code as HTTP status.
//!
//! A server-streaming method answers with a JSON array of every reply once
//! the stream ended, or, when the request has `Accept: text/event-stream`,
//! with server-sent events as the replies arrive: one `data: <reply JSON>`
//! event per message, and `event: error` with the error JSON as the last
//! event if the stream failed (a call that fails before its first reply is
//! a plain error answer). The response ends when the service's stream does;
//! a client that goes away ends the call. For example
//! `curl -N -H 'Accept: text/event-stream' 'localhost:8080/broker/subscribe?topic=health'`
//! follows the broker's `health` topic. A comment line every 15 s keeps an
//! idle stream's connection open.
//!
//! Everything here runs before the node checks who is calling, so every
//! input is bounded first: URI length, number of fields, nesting depth
//! (dotted keys and JSON bodies), body size, and the headers passed on.
//!
//! Must never: build a value deeper than [`micro::dynamic::MAX_DEPTH`] or
//! with more than [`MAX_FIELDS`] fields from a request, or pass on more
//! metadata than [`MAX_METADATA`] / [`MAX_METADATA_BYTES`].

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use micro::errors::Error;
use serde_json::{Map, Value};

use crate::{Backend, Call, Reply, ReplyStream};

/// The largest request body the gateway accepts.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// The longest request URI (path and query) the gateway accepts.
pub const MAX_URI: usize = 32 * 1024;
/// The most query or form fields a request may have.
pub const MAX_FIELDS: usize = 1000;
/// The most headers passed on to a service as metadata.
pub const MAX_METADATA: usize = 64;
/// The most bytes (names and values) of headers passed on to a service.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// Headers that describe the HTTP exchange itself, not the caller: they are
/// not passed to services.
const HOP_HEADERS: &[&str] = &[
    "host",
    "connection",
    "content-length",
    "content-type",
    "transfer-encoding",
    "te",
    "upgrade",
    "keep-alive",
    "accept-encoding",
    micro::NAMESPACE_HEADER,
    micro::SERVICE_HEADER,
    "authorization",
    "cookie",
];

/// An error as the gateway returns it.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// `kebab-case` or `camelCase` to `CamelCase`.
fn camel(segment: &str) -> String {
    segment
        .split('-')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The service and endpoint a path names.
pub fn route(path: &str) -> Option<(String, String)> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [svc] => Some((svc.to_string(), format!("{}.Call", camel(svc)))),
        [svc, ep] => Some((svc.to_string(), format!("{}.{}", camel(svc), camel(ep)))),
        [svc, handler, ep] => Some((svc.to_string(), format!("{}.{}", camel(handler), camel(ep)))),
        _ => None,
    }
}

/// Sets `value` at the dotted `key` in `obj`.
fn insert_dotted(obj: &mut Map<String, Value>, key: &str, value: String) {
    let mut parts = key.split('.').peekable();
    let mut cur = obj;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            cur.insert(part.to_string(), Value::String(value));
            return;
        }
        let next = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        cur = next.as_object_mut().expect("made an object above");
    }
}

/// Parses a query string or form body (`what` says which) and sets every
/// dotted key in `into`; first checks that there are not too many fields
/// (counting `fields` already set) and that none nests too deep.
fn parse_pairs(
    service: &str,
    what: &str,
    raw: &[u8],
    fields: &mut usize,
    into: &mut Map<String, Value>,
) -> Result<(), ApiError> {
    // Counted on the raw bytes, before any pair is decoded.
    *fields += raw.split(|b| *b == b'&').filter(|p| !p.is_empty()).count();
    if *fields > MAX_FIELDS {
        return Err(bad_request(
            service,
            format!("the request has {fields} fields; the limit is {MAX_FIELDS}"),
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw)
        .map_err(|e| bad_request(service, format!("malformed {what}: {e}")))?;
    let max = micro::dynamic::MAX_DEPTH;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k.split('.').nth(max).is_some()) {
        let shown: String = k.chars().take(40).collect();
        return Err(bad_request(
            service,
            format!(
                "the field '{shown}…' nests {} levels deep; the limit is {max}",
                k.split('.').count()
            ),
        ));
    }
    for (k, v) in pairs {
        if !k.is_empty() {
            insert_dotted(into, &k, v);
        }
    }
    Ok(())
}

fn bad_request(service: &str, detail: impl Into<String>) -> ApiError {
    ApiError(micro::errors::bad_request(service, detail))
}

/// The JSON request: query parameters, merged with a JSON or form body.
/// Bounded: at most [`MAX_FIELDS`] query and form fields, nesting at most
/// [`micro::dynamic::MAX_DEPTH`] levels, checked before anything is built.
pub fn request_json(
    service: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut obj = Map::new();
    let mut fields = 0;
    if let Some(q) = query {
        parse_pairs(service, "query string", q.as_bytes(), &mut fields, &mut obj)?;
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(obj));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        parse_pairs(service, "form body", body, &mut fields, &mut obj)?;
        return Ok(Value::Object(obj));
    }
    // serde_json stops at 128 levels by itself; the depth check below
    // holds requests to the gateway's own, lower limit.
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(b)) => {
            let depth = 1 + b
                .values()
                .map(micro::dynamic::json_depth)
                .max()
                .unwrap_or(0);
            let max = micro::dynamic::MAX_DEPTH;
            if depth > max {
                return Err(bad_request(
                    service,
                    format!("the request nests {depth} levels deep; the limit is {max}"),
                ));
            }
            // The body wins over the query for the same field.
            for (k, v) in b {
                obj.insert(k, v);
            }
            Ok(Value::Object(obj))
        }
        Ok(_) => Err(bad_request(
            service,
            "the request body must be a JSON object",
        )),
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => Err(bad_request(
            service,
            format!(
                "the request nests more than 128 levels deep; the limit is {}",
                micro::dynamic::MAX_DEPTH
            ),
        )),
        Err(e) => Err(bad_request(service, format!("malformed JSON: {e}"))),
    }
}

/// The headers passed on to the service as metadata: all but the hop
/// headers, at most [`MAX_METADATA`] of them and [`MAX_METADATA_BYTES`].
pub fn metadata(service: &str, headers: &HeaderMap) -> Result<HeaderMap, ApiError> {
    let mut out = HeaderMap::new();
    let mut bytes = 0;
    for (k, v) in headers {
        let name = k.as_str();
        if HOP_HEADERS.contains(&name) || name.starts_with("grpc-") || v.to_str().is_err() {
            continue;
        }
        bytes += name.len() + v.len();
        out.append(k.clone(), v.clone());
        if out.len() > MAX_METADATA || bytes > MAX_METADATA_BYTES {
            return Err(ApiError(Error::new(
                service,
                431,
                format!(
                    "too many or too large headers to pass on to the service: at most {MAX_METADATA} headers and {MAX_METADATA_BYTES} bytes"
                ),
            )));
        }
    }
    Ok(out)
}

/// Handles every request that is not `GET /`.
pub async fn handle<B: Backend>(State(backend): State<Arc<B>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if parts.method == axum::http::Method::OPTIONS {
        // A CORS preflight (answered by the CORS layer when the origin is
        // allowed) or a question about methods: never a call.
        return (
            StatusCode::NO_CONTENT,
            [(header::ALLOW, "GET, POST, PUT, PATCH, DELETE, OPTIONS")],
        )
            .into_response();
    }
    let Some((service, endpoint)) = route(parts.uri.path()) else {
        return ApiError(micro::errors::not_found(
            "micro.api",
            format!("no route for {}", parts.uri.path()),
        ))
        .into_response();
    };
    let uri_len = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or(0);
    if uri_len > MAX_URI {
        return ApiError(Error::new(
            &service,
            414,
            format!("the request URI is {uri_len} bytes; the limit is {MAX_URI} (32 KiB)"),
        ))
        .into_response();
    }
    let metadata = match metadata(&service, &parts.headers) {
        Ok(m) => m,
        Err(e) => return e.into_response(),
    };
    let body = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError(Error::new(
                &service,
                413,
                format!("the request body is larger than {MAX_BODY} bytes (4 MiB)"),
            ))
            .into_response()
        }
    };
    let request = match request_json(&service, parts.uri.query(), &parts.headers, &body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let namespace = parts
        .headers
        .get("micro-namespace")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(micro::DEFAULT_NAMESPACE)
        .to_string();
    let call = Call {
        namespace,
        service,
        endpoint,
        request,
        metadata,
        token: micro::bearer::from_headers(&parts.headers).map(str::to_string),
    };
    if !wants_events(&parts.headers) {
        return match backend.call(call).await {
            Ok(reply) => axum::Json(reply).into_response(),
            Err(e) => ApiError(e).into_response(),
        };
    }
    match backend.call_stream(call).await {
        Ok(Reply::Unary(reply)) => axum::Json(reply).into_response(),
        Ok(Reply::Stream(replies)) => events(replies).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
}

/// Whether the client asked for server-sent events.
fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A stream of replies as server-sent events: `data: <reply JSON>` each,
/// and `event: error` with the error JSON last if the stream failed.
fn events(replies: ReplyStream) -> impl IntoResponse {
    use futures::StreamExt;
    let events = replies
        .scan(false, |failed, item| {
            // Nothing after an error.
            let next = (!*failed).then(|| {
                *failed = item.is_err();
                let event = match item {
                    Ok(reply) => Event::default().data(reply.to_string()),
                    Err(e) => Event::default()
                        .event("error")
                        .data(serde_json::to_string(&e).unwrap_or_default()),
                };
                Ok::<_, Infallible>(event)
            });
            std::future::ready(next)
        })
        .boxed();
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_table() {
        let r = |p: &str| route(p).map(|(s, e)| format!("{s} {e}"));
        assert_eq!(r("/foo").unwrap(), "foo Foo.Call");
        assert_eq!(r("/foo/bar").unwrap(), "foo Foo.Bar");
        assert_eq!(r("/foo/bar/baz").unwrap(), "foo Bar.Baz");
        assert_eq!(r("/greeter/say-hello").unwrap(), "greeter Greeter.SayHello");
        assert_eq!(
            r("/registry/getService").unwrap(),
            "registry Registry.GetService"
        );
        assert_eq!(r("/a/b/c/d"), None);
    }

    #[test]
    fn queries_nest_and_bodies_merge() {
        let h = HeaderMap::new();
        let v = request_json("s", Some("name=Alice&options.domain=x"), &h, b"").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"name": "Alice", "options": {"domain": "x"}})
        );
        let v = request_json("s", Some("a=1"), &h, br#"{"b": 2}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": "1", "b": 2}));
        let mut form = HeaderMap::new();
        form.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let v = request_json("s", None, &form, b"name=Joe&x.y=z").unwrap();
        assert_eq!(v, serde_json::json!({"name": "Joe", "x": {"y": "z"}}));
        let err = request_json("s", None, &h, b"{nope").err().unwrap();
        assert_eq!(err.0.code, 400);
        assert!(
            err.0.detail.starts_with("malformed JSON"),
            "{}",
            err.0.detail
        );
        assert_eq!(
            request_json("s", None, &h, b"[1]").err().unwrap().0.code,
            400
        );
    }

    #[test]
    fn deep_or_wide_requests_are_refused_before_they_are_built() {
        let h = HeaderMap::new();
        let detail = |q: Option<&str>, h: &HeaderMap, body: &[u8]| {
            let e = request_json("s", q, h, body).expect_err("refused");
            assert_eq!(e.0.code, 400);
            e.0.detail
        };
        // the crash the issue found: a 28 KB dotted key
        let deep = format!("{}=1", vec!["a"; 14_000].join("."));
        let d = detail(Some(&deep), &h, b"");
        assert!(
            d.contains("nests 14000 levels deep; the limit is 32"),
            "{d}"
        );
        let ok = format!("{}=1", vec!["a"; 32].join("."));
        assert!(request_json("s", Some(&ok), &h, b"").is_ok());
        let d = detail(Some(&format!("{}=1", vec!["a"; 33].join("."))), &h, b"");
        assert!(d.contains("limit is 32"), "{d}");

        let wide: String = (0..1001).map(|i| format!("k{i}=1&")).collect();
        let d = detail(Some(&wide), &h, b"");
        assert!(d.contains("1001 fields; the limit is 1000"), "{d}");
        let mut form = HeaderMap::new();
        form.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let half: String = (0..600).map(|i| format!("k{i}=1&")).collect();
        let d = detail(Some(&half), &form, half.as_bytes());
        assert!(d.contains("1200 fields"), "{d}");
        let d = detail(None, &form, deep.as_bytes());
        assert!(d.contains("limit is 32"), "{d}");

        // JSON bodies: past serde_json's own limit, and past ours
        let body = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
        let d = detail(None, &h, body.as_bytes());
        assert!(d.contains("limit is 32"), "{d}");
        let body = format!("{}1{}", "{\"a\":".repeat(40), "}".repeat(40));
        let d = detail(None, &h, body.as_bytes());
        assert!(d.contains("nests 40 levels deep"), "{d}");
    }

    #[test]
    fn metadata_is_bounded() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("cookie", "secret".parse().unwrap());
        let passed = metadata("s", &h).unwrap();
        assert_eq!(passed.len(), 1);
        assert_eq!(passed["x-a"], "1");
        h.insert("x-big", "v".repeat(MAX_METADATA_BYTES).parse().unwrap());
        assert_eq!(metadata("s", &h).err().unwrap().0.code, 431);
        let mut many = HeaderMap::new();
        for i in 0..=MAX_METADATA {
            many.insert(
                header::HeaderName::try_from(format!("x-{i}")).unwrap(),
                "1".parse().unwrap(),
            );
        }
        assert_eq!(metadata("s", &many).err().unwrap().0.code, 431);
    }
}
