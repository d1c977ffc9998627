//! The router: calls for user services that arrive on the node's gRPC
//! endpoint are forwarded, at the HTTP/2 level and without decoding the
//! message, to one of the service's registered instances.
//!
//! The service is named by the `micro-service` metadata, or else by the
//! package of the gRPC path (`/greeter.Greeter/Call` -> `greeter`). An
//! instance on this node is picked first (at random among them), else one
//! on another node at random; a failed attempt (connection refused,
//! `unavailable`, `deadline exceeded` or `internal` without a reply) is
//! retried once on another instance. The request is buffered (it is at most
//! one message under the gRPC size limit) so it can be sent twice; replies
//! stream straight through. For the gateway, `call` collects a reply and
//! `call_stream` yields its messages as they arrive.
//!
//! In a cluster the router sees every node's instances (the registry is
//! replicated). An instance on another node is reached through that node's
//! cluster port over mutual TLS, naming the instance in the
//! `micro-instance` header; instances on nodes gossip holds to be down are
//! skipped. A call another node passes here for a local instance is sent
//! only to an address registered for that service on this node.
//!
//! Must never: decode a user service's messages, hold a lock across a
//! forwarded call, or send a call to an address that is not a registered
//! instance.

use std::sync::Arc;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::Stream;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use micro_proto::registry::Node;
use micro_raft::{now_millis, Replica};
use prost::Message;
use rand::seq::SliceRandom;
use tonic::Status;

use crate::cluster::peer::INSTANCE_HEADER;
use crate::cluster::Cluster;
use crate::server::MAX_MESSAGE;

/// Just the nodes of a registration: decoding only field 5 skips the
/// endpoints and descriptor, which routing does not need.
#[derive(Clone, PartialEq, prost::Message)]
struct NodesOnly {
    #[prost(message, repeated, tag = "5")]
    nodes: Vec<Node>,
}

/// Forwards calls to service instances.
pub struct Router {
    replica: Replica,
    cluster: Arc<Cluster>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A registered instance: its address and the node it runs on (when the
/// registration names one).
#[derive(Debug, Clone)]
pub struct Instance {
    pub address: String,
    pub node: Option<u64>,
}

/// gRPC status codes after which another instance is tried.
const RETRYABLE: &[&str] = &["4", "13", "14"];

impl Router {
    pub fn new(replica: Replica, cluster: Arc<Cluster>) -> Arc<Router> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(3)));
        let http = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        Arc::new(Router {
            replica,
            cluster,
            http,
        })
    }

    /// The addresses of `service`'s live instances in `namespace` (a local,
    /// possibly stale read: routing tolerates a moment's lag).
    pub fn instances(&self, namespace: &str, service: &str) -> Result<Vec<Instance>, Status> {
        instances_of(&self.replica, namespace, service)
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
        let service = target_service(headers, path)?;
        let namespace = crate::grpc::namespace_of(headers)?;
        if is_instance_on(&self.replica, &namespace, &service, addr, self.cluster.id)? {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "no instance of {service} is registered at {addr} on this node"
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

    async fn try_forward(&self, req: Request<Body>) -> Result<Response<Body>, Status> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        let service = target_service(&parts.headers, &path)?;
        let namespace = crate::grpc::namespace_of(&parts.headers)?;
        let body = axum::body::to_bytes(body, MAX_MESSAGE + 5)
            .await
            .map_err(|_| Status::resource_exhausted("the request is larger than 8 MiB"))?;
        let mut instances = self.instances(&namespace, &service)?;
        if instances.is_empty() {
            return Err(Status::not_found(format!("service {service} not found")));
        }
        instances.retain(|i| !i.node.is_some_and(|n| self.cluster.is_down(n)));
        if instances.is_empty() {
            return Err(Status::unavailable(format!(
                "every instance of {service} runs on a node that is down"
            )));
        }
        // Local instances first (no hop to another node: a core service is
        // served by the node the call reached), at random among them; then
        // the others, at random.
        instances.shuffle(&mut rand::thread_rng());
        let me = self.cluster.id;
        instances.sort_by_key(|i| i.node.is_some_and(|n| n != me));
        let attempts = instances.len().min(2);
        let mut last = Status::unavailable(format!("no instance of {service} answered"));
        for (i, instance) in instances.iter().take(attempts).enumerate() {
            let addr = &instance.address;
            let last_try = i + 1 == attempts;
            let sent = match instance.node.filter(|n| *n != self.cluster.id) {
                Some(node) => self.via_node(node, instance, &parts, body.clone()).await,
                None => self.direct(addr, &parts, body.clone()).await,
            };
            match sent {
                Ok(resp) => {
                    let failed = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|c| RETRYABLE.contains(&c));
                    if failed && !last_try {
                        tracing::debug!("{service} at {addr} failed; trying another instance");
                        continue;
                    }
                    return Ok(resp.map(Body::new));
                }
                Err(e) => {
                    tracing::debug!("{service} at {addr}: {e}");
                    last = Status::unavailable(format!("service {service} is unavailable: {e}"));
                }
            }
        }
        Err(last)
    }

    /// Sends a call straight to an instance this node reaches itself.
    async fn direct(
        &self,
        addr: &str,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Body>, String> {
        let uri: Uri = format!("http://{addr}{}", parts.uri.path())
            .parse()
            .map_err(|_| format!("bad instance address {addr}"))?;
        let mut out = Request::builder().method(parts.method.clone()).uri(uri);
        for (k, v) in parts.headers.iter() {
            if k != http::header::HOST {
                out = out.header(k, v);
            }
        }
        let out = out.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.http
            .request(out)
            .await
            .map(|r| r.map(Body::new))
            .map_err(|e| e.to_string())
    }

    /// Sends a call to an instance on another node, through that node's
    /// cluster port.
    async fn via_node(
        &self,
        node: u64,
        instance: &Instance,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> Result<Response<Body>, String> {
        use tower::ServiceExt;
        let peer = self
            .cluster
            .node_addr(node)
            .ok_or_else(|| format!("node {node} is not a member of the cluster"))?;
        let channel = self
            .cluster
            .peers
            .channel_to(node, &peer)
            .map_err(|s| s.message().to_string())?;
        let mut out = Request::builder()
            .method(parts.method.clone())
            .uri(parts.uri.path());
        for (k, v) in parts.headers.iter() {
            if k != http::header::HOST && k != INSTANCE_HEADER {
                out = out.header(k, v);
            }
        }
        let out = out
            .header(INSTANCE_HEADER, &instance.address)
            .body(tonic::body::Body::new(Full::new(body)))
            .map_err(|e| e.to_string())?;
        channel
            .oneshot(out)
            .await
            .map(|r| r.map(Body::new))
            .map_err(|e| format!("node {node} at {peer}: {e}"))
    }

    /// Serves a call another node passed here for one of this node's
    /// instances (never passed on again).
    pub async fn forward_local(&self, addr: &str, req: Request<Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, MAX_MESSAGE + 5).await {
            Ok(b) => b,
            Err(_) => {
                return Status::resource_exhausted("the request is larger than 8 MiB").into_http()
            }
        };
        match self.direct(addr, &parts, body).await {
            Ok(resp) => resp,
            Err(e) => Status::unavailable(format!("the instance at {addr} is unavailable: {e}"))
                .into_http(),
        }
    }

    /// The gRPC request of a gateway call: one encoded message.
    fn gateway_request(
        namespace: &str,
        service: &str,
        path: &str,
        message: &[u8],
        metadata: &HeaderMap,
    ) -> Result<Request<Body>, Status> {
        let mut req = Request::builder()
            .method(http::Method::POST)
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .header(micro::NAMESPACE_HEADER, namespace)
            .header("micro-service", service);
        for (k, v) in metadata.iter() {
            req = req.header(k, v);
        }
        req.body(Body::from(micro::dynamic::frame(message)))
            .map_err(|e| Status::internal(e.to_string()))
    }

    /// A call with one encoded request, for the gateway, whose reply
    /// messages are yielded as the service sends them; the stream ends
    /// with the service's (after an error, if it failed). Dropping the
    /// stream drops the call.
    pub async fn call_stream(
        &self,
        namespace: &str,
        service: &str,
        path: &str,
        message: Bytes,
        metadata: &HeaderMap,
    ) -> Result<ReplyFrames, Status> {
        let req = Self::gateway_request(namespace, service, path, &message, metadata)?;
        let resp = self.forward(req).await;
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
        namespace: &str,
        service: &str,
        path: &str,
        message: Bytes,
        metadata: &HeaderMap,
    ) -> Result<Vec<Bytes>, Status> {
        let req = Self::gateway_request(namespace, service, path, &message, metadata)?;
        let resp = self.forward(req).await;
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

/// The live instances of `service` in `namespace`, as registered.
fn instances_of(
    replica: &Replica,
    namespace: &str,
    service: &str,
) -> Result<Vec<Instance>, Status> {
    let prefix = format!("registry/{namespace}/{service}/");
    let mut out = Vec::new();
    for item in replica
        .reader()
        .scan(prefix.as_bytes(), now_millis(), false)
    {
        let (_, rec) = item.map_err(crate::grpc::status)?;
        let reg =
            NodesOnly::decode(rec.value.as_slice()).map_err(|e| Status::internal(e.to_string()))?;
        out.extend(reg.nodes.into_iter().map(|n| Instance {
            node: n.metadata.get("node").and_then(|v| v.parse().ok()),
            address: n.address,
        }));
    }
    Ok(out)
}

/// Whether `addr` is a registered instance of `service` that runs on node
/// `node`.
fn is_instance_on(
    replica: &Replica,
    namespace: &str,
    service: &str,
    addr: &str,
    node: u64,
) -> Result<bool, Status> {
    Ok(instances_of(replica, namespace, service)?
        .iter()
        .any(|i| i.address == addr && i.node == Some(node)))
}

/// The service a call is for: `micro-service` metadata, else the package of
/// the gRPC path.
pub(crate) fn target_service(headers: &HeaderMap, path: &str) -> Result<String, Status> {
    if let Some(v) = headers.get("micro-service").and_then(|v| v.to_str().ok()) {
        if !v.is_empty() {
            crate::grpc::check_name("service", v)?;
            return Ok(v.to_string());
        }
    }
    let grpc_service = path
        .strip_prefix('/')
        .and_then(|p| p.split('/').next())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::unimplemented(format!("no service at {path}")))?;
    let name = match grpc_service.rsplit_once('.') {
        Some((package, _)) => package.to_string(),
        None => grpc_service.to_ascii_lowercase(),
    };
    crate::grpc::check_name("service", &name)?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_comes_from_metadata_or_the_package() {
        let mut h = HeaderMap::new();
        assert_eq!(
            target_service(&h, "/greeter.Greeter/Call").unwrap(),
            "greeter"
        );
        assert_eq!(target_service(&h, "/Greeter/Call").unwrap(), "greeter");
        h.insert("micro-service", "other".parse().unwrap());
        assert_eq!(
            target_service(&h, "/greeter.Greeter/Call").unwrap(),
            "other"
        );
        assert!(target_service(&HeaderMap::new(), "/").is_err());
    }

    #[tokio::test]
    async fn only_registered_instances_of_this_node_are_local() {
        let dir = tempfile::tempdir().unwrap();
        let r = Replica::open(dir.path(), 1, micro_raft::Options::default())
            .await
            .expect("open");
        r.bootstrap_alone("127.0.0.1:0".into())
            .await
            .expect("bootstrap");
        let svc = |addr: &str, node: &str| micro_proto::registry::Service {
            name: "greeter".into(),
            version: "1".into(),
            nodes: vec![Node {
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
        let on =
            |ns: &str, service: &str, addr: &str| is_instance_on(&r, ns, service, addr, 1).unwrap();
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
