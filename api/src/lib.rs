//! Micro's HTTP side: the API gateway (`:8080`) and the web dashboard
//! (`:8082`).
//!
//! Architecture invariant: this crate never imports the node. Everything it
//! needs from the node comes through the [`Backend`] trait, so the HTTP layer
//! can be tested against a fake backend and the node can change underneath.
//! Both are served by [`serve`], which bounds what a connection may send.

pub mod cors;
pub mod gateway;
pub mod serve;

pub use cors::Cors;
pub use serve::{serve, serve_with, Limits};

use std::future::Future;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

/// A registered service as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    pub name: String,
    pub version: String,
    pub nodes: usize,
    pub endpoints: Vec<String>,
}

/// This node's place in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    pub id: u64,
    pub role: String,
    pub term: u64,
    pub applied_index: u64,
    pub leader: Option<u64>,
}

/// A call the gateway asks the node to make.
#[derive(Debug, Clone)]
pub struct Call {
    pub namespace: String,
    pub service: String,
    /// `Service.Method`
    pub endpoint: String,
    /// the request as JSON; string values may stand for numbers or booleans
    /// (query strings and forms carry only text)
    pub request: serde_json::Value,
    /// request headers to pass on as metadata (hop headers, the token and
    /// cookies left out)
    pub metadata: axum::http::HeaderMap,
    /// the caller's access token (`Authorization: Bearer` or the
    /// `micro-token` cookie)
    pub token: Option<String>,
}

/// A server-streaming method's replies as the service sends them; an
/// error, if any, is the last item.
pub type ReplyStream =
    futures::stream::BoxStream<'static, Result<serde_json::Value, micro::errors::Error>>;

/// The answer to [`Backend::call_stream`]: what the method gives.
pub enum Reply {
    /// A method that is not server-streaming: its one reply.
    Unary(serde_json::Value),
    /// A server-streaming method: its replies, one by one.
    Stream(ReplyStream),
}

/// What the HTTP side needs from the node.
pub trait Backend: Send + Sync + 'static {
    /// The running version of Micro.
    fn version(&self) -> &str;
    /// This node's Raft state.
    fn node(&self) -> NodeSummary;
    /// The services registered in `namespace`, sorted by name, if the
    /// bearer of `token` (or an anonymous caller) may list them: the same
    /// check as `Registry.ListServices` on the gRPC endpoint.
    fn services(
        &self,
        namespace: &str,
        token: Option<&str>,
    ) -> impl Future<Output = Result<Vec<ServiceSummary>, micro::errors::Error>> + Send;
    /// Calls a service endpoint with a JSON request, returning its JSON reply.
    fn call(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<serde_json::Value, micro::errors::Error>> + Send;
    /// Calls a service endpoint like [`Backend::call`], but a
    /// server-streaming method's replies come one by one, as they arrive;
    /// dropping the stream ends the call.
    fn call_stream(
        &self,
        call: Call,
    ) -> impl Future<Output = Result<Reply, micro::errors::Error>> + Send;
}

/// The API gateway's routes: `GET /` for the version, every other path a
/// call to a service. Browsers may call it only from the origins `cors`
/// allows (by default none).
pub fn gateway<B: Backend>(backend: Arc<B>, cors: &Cors) -> Router {
    let router = Router::new()
        .route("/", get(version::<B>))
        .fallback(gateway::handle::<B>)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(backend);
    match cors.layer() {
        Some(layer) => router.layer(layer),
        None => router,
    }
}

async fn method_not_allowed(method: axum::http::Method) -> Response {
    gateway::ApiError(micro::errors::Error::new(
        "micro.api",
        405,
        format!("method {method} is not allowed here"),
    ))
    .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    gateway::ApiError(micro::errors::not_found(
        "micro.api",
        format!("no page at {}", uri.path()),
    ))
    .into_response()
}

async fn version<B: Backend>(State(b): State<Arc<B>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "version": b.version() }))
}

/// The web dashboard's routes.
pub fn dashboard<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route("/", get(dashboard_page::<B>))
        .route("/api/services", get(dashboard_services::<B>))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(backend)
}

#[derive(Deserialize)]
struct NsQuery {
    namespace: Option<String>,
}

fn namespace(q: &NsQuery) -> &str {
    q.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(micro::DEFAULT_NAMESPACE)
}

async fn dashboard_services<B: Backend>(
    State(b): State<Arc<B>>,
    Query(q): Query<NsQuery>,
    headers: HeaderMap,
) -> Response {
    let token = micro::bearer::from_headers(&headers);
    match b.services(namespace(&q), token).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => gateway::ApiError(e).into_response(),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn dashboard_page<B: Backend>(
    State(b): State<Arc<B>>,
    Query(q): Query<NsQuery>,
    headers: HeaderMap,
) -> Response {
    let ns = namespace(&q);
    let node = b.node();
    let mut status = StatusCode::OK;
    let rows = match b.services(ns, micro::bearer::from_headers(&headers)).await {
        Ok(list) if list.is_empty() => "<tr><td colspan=4>No services</td></tr>".to_string(),
        Ok(list) => list
            .iter()
            .map(|s| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(&s.name),
                    escape(&s.version),
                    s.nodes,
                    escape(&s.endpoints.join(", "))
                )
            })
            .collect::<String>(),
        Err(e) => {
            status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            format!(
                "<tr><td colspan=4>Cannot list services: {}</td></tr>",
                escape(&e.detail)
            )
        }
    };
    let leader = node
        .leader
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    let page = Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Micro</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;text-align:left}}</style></head>\
         <body><h1>Micro</h1><p>version {} &middot; node {} ({}) &middot; term {} &middot; applied {} &middot; leader {}</p>\
         <h2>Services in namespace {}</h2><table><tr><th>Name</th><th>Version</th><th>Nodes</th><th>Endpoints</th></tr>{}</table>\
         </body></html>",
        escape(b.version()),
        node.id,
        escape(&node.role),
        node.term,
        node.applied_index,
        leader,
        escape(ns),
        rows
    ));
    (status, page).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct Fake;

    /// Set when the endless stream of `Echo.Forever` was dropped.
    static FOREVER_DROPPED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    struct OnDrop;
    impl Drop for OnDrop {
        fn drop(&mut self) {
            FOREVER_DROPPED.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// `Echo.Stream`: `n` replies `{"i": …}`, then an error if `fail` is
    /// set; `Echo.Forever`: one reply, then nothing, never ending.
    fn fake_stream(call: &Call) -> Option<ReplyStream> {
        use futures::StreamExt;
        match call.endpoint.as_str() {
            "Echo.Stream" => {
                let n: u64 = call.request["n"].as_str()?.parse().ok()?;
                let mut items: Vec<Result<serde_json::Value, micro::errors::Error>> =
                    (0..n).map(|i| Ok(serde_json::json!({ "i": i }))).collect();
                if call.request.get("fail").is_some() {
                    items.push(Err(micro::errors::internal_server_error(
                        "echo",
                        "the stream broke",
                    )));
                    items.push(Ok(serde_json::json!({"after": "the error"})));
                }
                Some(futures::stream::iter(items).boxed())
            }
            "Echo.Forever" => {
                let guard = OnDrop;
                let first = futures::stream::iter([Ok(serde_json::json!({"first": true}))]);
                let rest = futures::stream::pending().map(move |()| {
                    let _ = &guard;
                    Ok(serde_json::Value::Null)
                });
                Some(first.chain(rest).boxed())
            }
            _ => None,
        }
    }

    impl Backend for Fake {
        fn version(&self) -> &str {
            "9.9.9"
        }
        fn node(&self) -> NodeSummary {
            NodeSummary {
                id: 7,
                role: "leader".into(),
                term: 2,
                applied_index: 10,
                leader: Some(7),
            }
        }
        async fn services(
            &self,
            namespace: &str,
            token: Option<&str>,
        ) -> Result<Vec<ServiceSummary>, micro::errors::Error> {
            if namespace == "locked" && token != Some("good") {
                return Err(micro::errors::unauthorized("registry", "log in"));
            }
            if namespace != "micro" {
                return Ok(vec![]);
            }
            Ok(vec![ServiceSummary {
                name: "<store>".into(),
                version: "1".into(),
                nodes: 1,
                endpoints: vec!["Store.Read".into()],
            }])
        }
        async fn call(&self, call: Call) -> Result<serde_json::Value, micro::errors::Error> {
            if call.service != "echo" {
                return Err(micro::errors::not_found(
                    &call.service,
                    format!("service {} not found", call.service),
                ));
            }
            if let Some(replies) = fake_stream(&call) {
                // Collected, as the node does without the Accept header.
                use futures::StreamExt;
                let all: Vec<_> = replies.collect().await;
                return all
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map(serde_json::Value::Array);
            }
            Ok(
                serde_json::json!({"endpoint": call.endpoint, "request": call.request, "ns": call.namespace,
                "meta": call.metadata.iter().map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or(""))).collect::<Vec<_>>()}),
            )
        }
        async fn call_stream(&self, call: Call) -> Result<Reply, micro::errors::Error> {
            match fake_stream(&call) {
                Some(replies) => Ok(Reply::Stream(replies)),
                None => self.call(call).await.map(Reply::Unary),
            }
        }
    }

    fn gw() -> Router {
        gateway(Arc::new(Fake), &Cors::default())
    }

    async fn body(router: Router, uri: &str) -> (StatusCode, String) {
        send(router, Request::get(uri).body(Body::empty()).unwrap()).await
    }

    async fn send(router: Router, req: Request<Body>) -> (StatusCode, String) {
        let resp = router.oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn root_reports_the_version() {
        let (status, text) = body(gw(), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, r#"{"version":"9.9.9"}"#);
    }

    #[tokio::test]
    async fn dashboard_lists_services_escaped() {
        let (status, text) = body(dashboard(Arc::new(Fake)), "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("&lt;store&gt;"), "{text}");
        assert!(text.contains("Store.Read"));
        let (_, other) = body(dashboard(Arc::new(Fake)), "/?namespace=other").await;
        assert!(other.contains("No services"));
    }

    #[tokio::test]
    async fn the_dashboard_lists_only_what_the_caller_may_list() {
        let (status, text) =
            body(dashboard(Arc::new(Fake)), "/api/services?namespace=locked").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["code"].as_u64(), v["detail"].as_str()),
            (Some(401), Some("log in"))
        );
        let (status, text) = body(dashboard(Arc::new(Fake)), "/?namespace=locked").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(text.contains("Cannot list services: log in"), "{text}");
        let req = Request::get("/api/services?namespace=locked")
            .header("cookie", "micro-token=good")
            .body(Body::empty())
            .unwrap();
        let (status, _) = send(dashboard(Arc::new(Fake)), req).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the token in the cookie is the caller's"
        );
    }

    #[tokio::test]
    async fn gateway_calls_route_and_errors_have_the_micro_shape() {
        let (status, text) = body(gw(), "/echo/say-hi?name=Alice").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["endpoint"], "Echo.SayHi");
        assert_eq!(v["request"]["name"], "Alice");
        assert_eq!(v["ns"], "micro");

        let req = Request::post("/echo")
            .header("micro-namespace", "team")
            .header("x-trace", "t1")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name":"Joe"}"#))
            .unwrap();
        let (status, text) = send(gw(), req).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (v["endpoint"].as_str(), v["ns"].as_str()),
            (Some("Echo.Call"), Some("team"))
        );
        assert!(v["meta"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("x-trace=t1")));

        let (status, text) = body(gw(), "/nope/call").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            text,
            r#"{"id":"nope","code":404,"detail":"service nope not found","status":"Not Found"}"#
        );

        let req = Request::post("/echo").body(Body::from("{bad")).unwrap();
        let (status, text) = send(gw(), req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains(r#""code":400"#), "{text}");

        let big = vec![b' '; gateway::MAX_BODY + 1];
        let req = Request::post("/echo").body(Body::from(big)).unwrap();
        let (status, _) = send(gw(), req).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    fn events_request(uri: &str) -> Request<Body> {
        Request::get(uri)
            .header("accept", "application/json, text/event-stream")
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn streams_are_server_sent_events_when_asked_for() {
        let resp = gw()
            .oneshot(events_request("/echo/stream?n=2&fail=1"))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert_eq!(
            text,
            "data: {\"i\":0}\n\ndata: {\"i\":1}\n\nevent: error\ndata: \
             {\"id\":\"echo\",\"code\":500,\"detail\":\"the stream broke\",\"status\":\"Internal Server Error\"}\n\n",
            "one event per reply, the error last and nothing after it"
        );
        // Without the header: today's array.
        let (status, text) = body(gw(), "/echo/stream?n=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, r#"[{"i":0},{"i":1}]"#);
        // A unary method answers as always, and errors before the stream
        // are plain error answers.
        let resp = gw()
            .oneshot(events_request("/echo/call?a=1"))
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "application/json");
        let resp = gw().oneshot(events_request("/nope/stream")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn events_arrive_as_they_come_and_a_client_that_leaves_ends_the_call() {
        use http_body_util::BodyExt;
        let mut body = None;
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let resp = gw().oneshot(events_request("/echo/forever")).await.unwrap();
            body.insert(resp.into_body()).frame().await
        })
        .await
        .expect("the first event comes before the stream ends");
        let frame = first.unwrap().unwrap();
        let body = body.expect("a response");
        let data = frame.into_data().unwrap();
        assert_eq!(&data[..], b"data: {\"first\":true}\n\n");
        assert!(!FOREVER_DROPPED.load(std::sync::atomic::Ordering::SeqCst));
        drop(body);
        assert!(
            FOREVER_DROPPED.load(std::sync::atomic::Ordering::SeqCst),
            "the call ends with the response"
        );
    }

    fn from(origin: &str, preflight: bool) -> Request<Body> {
        let b = Request::builder().uri("/echo").header("origin", origin);
        let b = if preflight {
            b.method("OPTIONS")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type")
        } else {
            b.method("GET")
        };
        b.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn cors_is_closed_by_default() {
        for preflight in [true, false] {
            let resp = gw()
                .oneshot(from("https://evil.example", preflight))
                .await
                .unwrap();
            let h = resp.headers();
            assert!(h.get("access-control-allow-origin").is_none(), "{h:?}");
            assert!(h.get("access-control-allow-credentials").is_none(), "{h:?}");
        }
    }

    #[tokio::test]
    async fn named_origins_get_credentials_and_a_wildcard_never_does() {
        let cors = Cors::new(&["https://app.example", "*"]).unwrap();
        let router = gateway(Arc::new(Fake), &cors);
        for preflight in [true, false] {
            let resp = router
                .clone()
                .oneshot(from("https://app.example", preflight))
                .await
                .unwrap();
            let h = resp.headers();
            assert_eq!(h["access-control-allow-origin"], "https://app.example");
            assert_eq!(h["access-control-allow-credentials"], "true");
            if preflight {
                assert_eq!(h["access-control-allow-methods"], "POST");
            }
            let resp = router
                .clone()
                .oneshot(from("https://other.example", preflight))
                .await
                .unwrap();
            let h = resp.headers();
            assert_eq!(h["access-control-allow-origin"], "https://other.example");
            assert!(h.get("access-control-allow-credentials").is_none(), "{h:?}");
        }
        let only = gateway(
            Arc::new(Fake),
            &Cors::new(&["https://app.example"]).unwrap(),
        );
        let resp = only
            .oneshot(from("https://evil.example", true))
            .await
            .unwrap();
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }

    #[tokio::test]
    async fn routing_errors_are_json() {
        let req = Request::post("/").body(Body::empty()).unwrap();
        let (status, text) = send(gw(), req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(text.contains(r#""code":405"#), "{text}");
        let (status, text) = body(dashboard(Arc::new(Fake)), "/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(text.contains(r#""code":404"#), "{text}");
        let long = format!("/echo?q={}", "x".repeat(gateway::MAX_URI));
        let (status, text) = body(gw(), &long).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG);
        assert!(text.contains(r#""code":414"#), "{text}");
    }
}
