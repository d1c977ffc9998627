//! The router: calls for user services that arrive on the node's gRPC
//! endpoint are forwarded, at the HTTP/2 level and without decoding the
//! message, to one of the service's registered instances.
//!
//! The call's target (namespace and service: `micro-service` metadata, or
//! else the package of the gRPC path, `/greeter.Greeter/Call` -> `greeter`)
//! is resolved once where the call enters — the guard on the gRPC endpoint,
//! the gateway — and carried in the request's extensions ([`Target`]). The
//! instance comes from the in-memory routing table ([`crate::routing`]):
//! this node's first, then another live node's, the less loaded of two.
//! The request goes on as it came (its headers untouched but `host`), its
//! body streaming through, so client-streaming and bidirectional calls
//! pass; replies stream straight back. A call is tried on a second
//! instance only when it surely never reached the first: the connection
//! was refused or never made (here, or on the node that hosts the
//! instance, which says so with [`NOT_DELIVERED`]), and the request body
//! can be sent again — not yet read, or read whole while it was sent (a
//! message of at most [`REPLAY_LIMIT`]). A failure after the call may have
//! reached a service is returned as it is.
//!
//! Gateway calls to the core services are served by this node's own gRPC
//! stack in process (no loopback connection), marked as already checked.
//! For the gateway, `call` collects a reply and `call_stream` yields its
//! messages as they arrive.
//!
//! An instance on another node is reached through that node's cluster port
//! over mutual TLS, naming the instance in the `micro-instance` header; a
//! call another node passes here for a local instance is sent only to an
//! address registered for that service on this node.
//!
//! Must never: decode a user service's messages, hold a lock across a
//! forwarded call, send a call to an address that is not a registered
//! instance, or send a call twice that may have reached a service.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::Stream;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tonic::Status;

use crate::auth::{Checked, Claims};
use crate::cluster::Cluster;
use crate::routing::{Instance, RoutingTable};
use crate::services::registry::CORE_NAMES;
use crate::target::{Target, INSTANCE_HEADER, MAX_MESSAGE, NOT_DELIVERED, SERVICE_HEADER};

/// The most request bytes kept so that a call can be sent again.
pub const REPLAY_LIMIT: usize = 4 << 20;

/// How many HTTP/2 connections the router keeps to each instance it
/// reaches itself, used in turn. A connection is driven by one task on
/// each side: over a single one, every routed call to an instance would be
/// read and written by one thread of the service and one of the node,
/// whatever their cores.
const CONNECTIONS_PER_INSTANCE: usize = 4;

/// Forwards calls to service instances.
pub struct Router {
    table: RoutingTable,
    cluster: Arc<Cluster>,
    /// Each client keeps one connection per instance.
    http: Box<[Client<HttpConnector, Body>]>,
    next_connection: AtomicUsize,
    /// This node's own gRPC stack, for gateway calls to core services.
    local: OnceLock<axum::Router>,
}

impl Router {
    pub fn new(table: RoutingTable, cluster: Arc<Cluster>) -> Arc<Router> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(3)));
        let http = (0..CONNECTIONS_PER_INSTANCE)
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector.clone())
            })
            .collect();
        Arc::new(Router {
            table,
            cluster,
            http,
            next_connection: AtomicUsize::new(0),
            local: OnceLock::new(),
        })
    }

    /// The routing table calls are routed by.
    pub fn table(&self) -> &RoutingTable {
        &self.table
    }

    /// Gives the router this node's own gRPC stack (built after it).
    pub fn set_local(&self, stack: axum::Router) {
        let _ = self.local.set(stack);
    }

    /// Refuses a call another node passes here for the instance at `addr`
    /// unless `addr` is a registered instance of the service the call names
    /// (in its namespace) and runs on this node: the registry decides where
    /// calls go, never the caller.
    pub fn check_local_instance(
        &self,
        headers: &HeaderMap,
        path: &str,
        addr: &str,
    ) -> Result<(), Status> {
        let t = Target::of(headers, path)?;
        if self.table.is_local_instance(&t.namespace, &t.service, addr) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "no instance of {} is registered at {addr} on this node",
                t.service
            )))
        }
    }

    /// Forwards one gRPC request; every failure becomes a gRPC status.
    pub async fn forward(&self, req: Request<Body>) -> Response<Body> {
        match self.try_forward(req).await {
            Ok(resp) => resp,
            Err(status) => status.into_http(),
        }
    }

    async fn try_forward(&self, mut req: Request<Body>) -> Result<Response<Body>, Status> {
        let target = match req.extensions_mut().remove::<Target>() {
            Some(t) => t,
            None => Target::of(req.headers(), req.uri().path())?,
        };
        let service = &target.service;
        let routes = self
            .table
            .routes(&target.namespace, service)
            .filter(|r| r.any_live())
            .ok_or_else(|| crate::routing::not_found(service))?;
        let me = self.table.me();
        let down = self.table.down();
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(http::header::HOST);
        parts.headers.remove(INSTANCE_HEADER);
        let body = Replayable::new(body);
        let mut instance = routes.pick(me, &down, None).ok_or_else(|| {
            Status::unavailable(format!(
                "every instance of {service} runs on a node that is down"
            ))
        })?;
        loop {
            let sent = {
                let _counted = instance.start();
                self.send(&instance, &parts, body.lend()).await
            };
            let again = match sent {
                Ok(resp) if resp.headers().contains_key(NOT_DELIVERED) => Err(resp),
                Ok(resp) => return Ok(resp),
                Err(Failed::NeverSent(e)) => {
                    tracing::debug!("{service} at {}: {e}", instance.address);
                    Ok(Status::unavailable(format!(
                        "service {service} is unavailable: {e}"
                    )))
                }
                Err(Failed::Other(e)) => {
                    return Err(Status::unavailable(format!(
                        "service {service} is unavailable: {e}"
                    )))
                }
            };
            // Surely not delivered: once more, elsewhere, if the body can
            // be sent again.
            let next = routes
                .pick(me, &down, Some(&instance))
                .filter(|_| body.can_resend());
            match (next, again) {
                (Some(other), _) => instance = other,
                (None, Ok(status)) => return Err(status),
                (None, Err(resp)) => return Ok(resp),
            }
        }
    }

    /// One attempt at `instance`, here or through its node.
    async fn send(
        &self,
        instance: &Instance,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, Failed> {
        match instance.node.filter(|n| *n != self.table.me()) {
            Some(node) => self.via_node(node, instance, parts, body).await,
            None => self.direct(&instance.address, parts, body).await,
        }
    }

    /// Sends a call straight to an instance this node reaches itself.
    async fn direct(
        &self,
        addr: &str,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, Failed> {
        let uri: Uri = format!("http://{addr}{}", parts.uri.path())
            .parse()
            .map_err(|_| Failed::NeverSent(format!("bad instance address {addr}")))?;
        let mut out = Request::new(body);
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = parts.headers.clone();
        let turn = self.next_connection.fetch_add(1, Ordering::Relaxed);
        match self.http[turn % self.http.len()].request(out).await {
            Ok(r) => Ok(r.map(Body::new)),
            Err(e) if e.is_connect() => Err(Failed::NeverSent(causes(&e))),
            Err(e) => Err(Failed::Other(causes(&e))),
        }
    }

    /// Sends a call to an instance on another node, through that node's
    /// cluster port.
    async fn via_node(
        &self,
        node: u64,
        instance: &Instance,
        parts: &http::request::Parts,
        body: Body,
    ) -> Result<Response<Body>, Failed> {
        use tower::ServiceExt;
        let peer = self
            .cluster
            .node_addr(node)
            .ok_or_else(|| Failed::NeverSent(format!("node {node} is not a member")))?;
        let channel = self
            .cluster
            .peers
            .channel_to(node, &peer)
            .map_err(|s| Failed::NeverSent(s.message().to_string()))?;
        let addr = http::HeaderValue::try_from(&instance.address)
            .map_err(|_| Failed::NeverSent("bad instance address".into()))?;
        let mut out = Request::new(tonic::body::Body::new(body));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() =
            Uri::try_from(parts.uri.path()).map_err(|_| Failed::NeverSent("bad path".into()))?;
        *out.headers_mut() = parts.headers.clone();
        out.headers_mut().insert(INSTANCE_HEADER, addr);
        match channel.oneshot(out).await {
            Ok(r) => Ok(r.map(Body::new)),
            Err(e) if never_sent(&e) => {
                Err(Failed::NeverSent(format!("node {node} at {peer}: {e}")))
            }
            Err(e) => Err(Failed::Other(format!("node {node} at {peer}: {e}"))),
        }
    }

    /// Serves a call another node passed here for one of this node's
    /// instances (never passed on again).
    pub async fn forward_local(&self, addr: &str, req: Request<Body>) -> Response<Body> {
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(http::header::HOST);
        match self.direct(addr, &parts, body).await {
            Ok(resp) => resp,
            Err(Failed::NeverSent(e)) => {
                let mut resp =
                    Status::unavailable(format!("the instance at {addr} is unavailable: {e}"))
                        .into_http();
                resp.headers_mut()
                    .insert(NOT_DELIVERED, http::HeaderValue::from_static("1"));
                resp
            }
            Err(Failed::Other(e)) => {
                Status::unavailable(format!("the instance at {addr} is unavailable: {e}"))
                    .into_http()
            }
        }
    }

    /// Sends a gateway call: core services to this node's own stack (the
    /// caller already checked), others through the routing table.
    async fn gateway_send(
        &self,
        target: Target,
        claims: Option<Claims>,
        path: &str,
        message: &[u8],
        metadata: HeaderMap,
    ) -> Response<Body> {
        let mut req = Request::new(Body::from(micro::dynamic::frame(message)));
        *req.method_mut() = http::Method::POST;
        match Uri::try_from(path) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Status::internal(format!("bad path {path}")).into_http(),
        }
        let headers = req.headers_mut();
        *headers = metadata;
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        headers.insert("te", http::HeaderValue::from_static("trailers"));
        for (name, value) in [
            (micro::NAMESPACE_HEADER, &target.namespace),
            (SERVICE_HEADER, &target.service),
        ] {
            if let Ok(v) = http::HeaderValue::try_from(value) {
                headers.insert(name, v);
            }
        }
        if let Some(local) = self
            .local
            .get()
            .filter(|_| CORE_NAMES.contains(&target.service.as_str()))
        {
            use tower::ServiceExt;
            req.extensions_mut().insert(Checked(target, claims));
            return match local.clone().oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
        }
        req.extensions_mut().insert(target);
        self.forward(req).await
    }

    /// A call with one encoded request, for the gateway, whose reply
    /// messages are yielded as the service sends them; the stream ends
    /// with the service's (after an error, if it failed). Dropping the
    /// stream drops the call.
    pub async fn call_stream(
        &self,
        target: Target,
        claims: Option<Claims>,
        path: &str,
        message: Bytes,
        metadata: HeaderMap,
    ) -> Result<ReplyFrames, Status> {
        let resp = self
            .gateway_send(target, claims, path, &message, metadata)
            .await;
        if let Some(status) = Status::from_header_map(resp.headers()) {
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
        }
        Ok(Box::pin(reply_frames(resp.into_body())))
    }

    /// A call with one encoded request, for the gateway: returns the reply
    /// messages (one for unary methods, each streamed one otherwise), or the
    /// status the service (or routing) gave.
    pub async fn call(
        &self,
        target: Target,
        claims: Option<Claims>,
        path: &str,
        message: Bytes,
        metadata: HeaderMap,
    ) -> Result<Vec<Bytes>, Status> {
        let resp = self
            .gateway_send(target, claims, path, &message, metadata)
            .await;
        if let Some(status) = Status::from_header_map(resp.headers()) {
            if status.code() != tonic::Code::Ok {
                return Err(status);
            }
        }
        let collected = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Status::unavailable(format!("the reply broke off: {e}")))?;
        if let Some(trailers) = collected.trailers() {
            if let Some(status) = Status::from_header_map(trailers) {
                if status.code() != tonic::Code::Ok {
                    return Err(status);
                }
            }
        }
        micro::dynamic::unframe(collected.to_bytes()).map_err(|e| Status::internal(e.to_string()))
    }
}

/// How an attempt failed.
enum Failed {
    /// Nothing reached the instance (no connection was made).
    NeverSent(String),
    /// The call may have reached it.
    Other(String),
}

/// An error with its causes, `outer: inner: …`.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether an error of the cluster channel means the request was never
/// sent: somewhere in its causes a connection was refused or not made.
fn never_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(err) = cause {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            ) {
                return true;
            }
        }
        if err
            .downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|h| h.is_connect())
        {
            return true;
        }
        cause = err.source();
    }
    false
}

/// A request body that can be sent again when the attempt that had it
/// never read it, or read it whole (at most [`REPLAY_LIMIT`] bytes, data
/// only) while passing it on.
struct Replayable(Arc<Mutex<Lending>>);

struct Lending {
    body: Option<Body>,
    read: bool,
    kept: Vec<Bytes>,
    kept_len: usize,
    ended: bool,
    /// More than the limit, or a trailers frame: not kept whole.
    partial: bool,
}

impl Replayable {
    fn new(body: Body) -> Replayable {
        Replayable(Arc::new(Mutex::new(Lending {
            body: Some(body),
            read: false,
            kept: Vec::new(),
            kept_len: 0,
            ended: false,
            partial: false,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Lending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a next attempt can have the body.
    fn can_resend(&self) -> bool {
        let s = self.state();
        !s.read || (s.ended && !s.partial)
    }

    /// The body for an attempt: the request's own while unread, else what
    /// was kept of it.
    fn lend(&self) -> Body {
        let s = self.state();
        if s.read {
            return Body::from(s.kept.concat());
        }
        Body::new(Lent(self.0.clone()))
    }
}

/// The request's own body, read through the shared state.
struct Lent(Arc<Mutex<Lending>>);

impl hyper::body::Body for Lent {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(body) = s.body.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(body).poll_frame(cx);
        s.read = true;
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) if s.kept_len + data.len() <= REPLAY_LIMIT && !s.partial => {
                    s.kept_len += data.len();
                    let data = data.clone();
                    s.kept.push(data);
                }
                _ => {
                    s.partial = true;
                    s.kept.clear();
                }
            },
            Poll::Ready(None) => s.ended = true,
            Poll::Ready(Some(Err(_))) => s.partial = true,
            Poll::Pending => {}
        }
        polled
    }

    // Passed on so that the request's end rides on its last data frame,
    // as the caller sent it (a unary call's one frame ends the stream).
    fn is_end_stream(&self) -> bool {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        s.body
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// A streamed reply's messages, as they arrive.
pub type ReplyFrames = BoxStream<'static, Result<Bytes, Status>>;

/// The messages of a gRPC reply body, each as soon as it is whole; a
/// failure (a broken body, an error in the trailers, a truncated or
/// oversized message) is the last item.
fn reply_frames(body: Body) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static {
    futures::stream::unfold(Some((body, BytesMut::new())), |state| async move {
        let (mut body, mut buf) = state?;
        loop {
            match next_message(&mut buf) {
                Ok(Some(msg)) => return Some((Ok(msg), Some((body, buf)))),
                Ok(None) => {}
                Err(status) => return Some((Err(status), None)),
            }
            match body.frame().await {
                None if buf.is_empty() => return None,
                None => {
                    return Some((
                        Err(Status::internal("the reply ended inside a message")),
                        None,
                    ))
                }
                Some(Err(e)) => {
                    return Some((
                        Err(Status::unavailable(format!("the reply broke off: {e}"))),
                        None,
                    ))
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => buf.extend_from_slice(&data),
                    Err(frame) => {
                        let failed = frame
                            .trailers_ref()
                            .and_then(Status::from_header_map)
                            .filter(|s| s.code() != tonic::Code::Ok);
                        if let Some(status) = failed {
                            return Some((Err(status), None));
                        }
                    }
                },
            }
        }
    })
}

/// Takes the first whole gRPC message out of `buf`, if it holds one.
fn next_message(buf: &mut BytesMut) -> Result<Option<Bytes>, Status> {
    let Some(head) = buf.get(..5) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_MESSAGE {
        return Err(Status::resource_exhausted(format!(
            "a reply message is {len} bytes; the limit is {MAX_MESSAGE}"
        )));
    }
    if buf.len() < 5 + len {
        return Ok(None);
    }
    let whole = buf.split_to(5 + len).freeze();
    let mut msgs = micro::dynamic::unframe(whole).map_err(|e| Status::internal(e.to_string()))?;
    Ok(msgs.pop())
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_raft::Replica;

    #[tokio::test]
    async fn only_registered_instances_of_this_node_are_local() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path(), 1, micro_raft::Options::default())
            .await
            .expect("open");
        r.bootstrap_alone("127.0.0.1:0".into())
            .await
            .expect("bootstrap");
        let table = RoutingTable::start(r.clone(), 1);
        let svc = |addr: &str, node: &str| micro_proto::registry::Service {
            name: "greeter".into(),
            version: "1".into(),
            nodes: vec![micro_proto::registry::Node {
                id: format!("g-{node}-{}", addr.replace(['.', ':'], "-")),
                address: addr.into(),
                metadata: [("node".to_string(), node.to_string())].into(),
            }],
            ..Default::default()
        };
        crate::services::registry::register(&r, "micro", svc("127.0.0.1:5000", "1"))
            .await
            .unwrap();
        crate::services::registry::register(&r, "micro", svc("127.0.0.1:6000", "2"))
            .await
            .unwrap();
        let on = |ns: &str, service: &str, addr: &str| table.is_local_instance(ns, service, addr);
        for _ in 0..100 {
            if on("micro", "greeter", "127.0.0.1:5000") {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(on("micro", "greeter", "127.0.0.1:5000"));
        assert!(!on("micro", "greeter", "127.0.0.1:6000"), "another node's");
        assert!(!on("micro", "greeter", "127.0.0.1:22"), "not registered");
        assert!(!on("micro", "other", "127.0.0.1:5000"), "another service's");
        assert!(
            !on("team", "greeter", "127.0.0.1:5000"),
            "another namespace's"
        );
    }
}
