//! The API gateway: HTTP requests become calls to services.
//!
//! Routing: `/foo` -> service `foo`, endpoint `Foo.Call`; `/foo/bar` ->
//! `foo`, `Foo.Bar`; `/foo/bar/baz` -> `foo`, `Bar.Baz`; kebab-case segments
//! become CamelCase. A GET's query parameters are the request (dotted keys
//! nest); other methods send a JSON or form body, merged with the query.
//! `Micro-Namespace` picks the namespace; other headers travel as metadata.
//! Errors are `{"id","code","detail","status"}` with the code as HTTP status.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use micro::errors::Error;
use serde_json::{Map, Value};

use crate::{Backend, Call};

/// The largest request body the gateway accepts.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

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
    "micro-namespace",
    "micro-service",
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

fn pairs_to_object(pairs: Vec<(String, String)>, into: &mut Map<String, Value>) {
    for (k, v) in pairs {
        if !k.is_empty() {
            insert_dotted(into, &k, v);
        }
    }
}

fn bad_request(service: &str, detail: impl Into<String>) -> ApiError {
    ApiError(micro::errors::bad_request(service, detail))
}

/// The JSON request: query parameters, merged with a JSON or form body.
fn request_json(
    service: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut obj = Map::new();
    if let Some(q) = query {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q)
            .map_err(|e| bad_request(service, format!("malformed query string: {e}")))?;
        pairs_to_object(pairs, &mut obj);
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(obj));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| bad_request(service, format!("malformed form body: {e}")))?;
        pairs_to_object(pairs, &mut obj);
        return Ok(Value::Object(obj));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(b)) => {
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
        Err(e) => Err(bad_request(service, format!("malformed JSON: {e}"))),
    }
}

/// Handles every request that is not `GET /`.
pub async fn handle<B: Backend>(State(backend): State<Arc<B>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some((service, endpoint)) = route(parts.uri.path()) else {
        return ApiError(micro::errors::not_found(
            "micro.api",
            format!("no route for {}", parts.uri.path()),
        ))
        .into_response();
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
    let metadata = parts
        .headers
        .iter()
        .filter(|(k, _)| !HOP_HEADERS.contains(&k.as_str()) && !k.as_str().starts_with("grpc-"))
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let call = Call {
        namespace,
        service,
        endpoint,
        request,
        metadata,
        token: micro::bearer::from_headers(&parts.headers).map(str::to_string),
    };
    match backend.call(call).await {
        Ok(reply) => axum::Json(reply).into_response(),
        Err(e) => ApiError(e).into_response(),
    }
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
}
