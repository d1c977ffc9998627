//! The node as the HTTP side sees it: the implementation of
//! [`micro_api::Backend`]. A gateway call is resolved, checked and
//! transcoded once: the caller is authorized, the service's descriptor is
//! the one the routing table holds parsed (no registry read), the JSON
//! becomes the protobuf request, and the router sends it on — to this
//! node's own stack in process for core services, marked as checked.
//! A server-streaming method's replies come back whole (an array) through
//! `call`, or one by one as the service sends them through `call_stream`
//! (the gateway's server-sent events).

use std::sync::Arc;

use futures::StreamExt;
use micro::errors::{self, Error};
use micro_api::{Backend, Call, NodeSummary, Reply, ServiceSummary};
use micro_raft::Replica;
use prost_reflect::MethodDescriptor;

use crate::auth::{Authority, Claims};
use crate::router::Router;
use crate::services::registry;
use crate::target::Target;

/// Gives the gateway and dashboard what they need from this node.
pub struct NodeBackend {
    replica: Replica,
    router: Arc<Router>,
    authority: Arc<Authority>,
}

/// A gateway call made ready to send: resolved, checked and encoded once.
struct Prepared {
    target: Target,
    claims: Option<Claims>,
    method: MethodDescriptor,
    message: bytes::Bytes,
    metadata: http::HeaderMap,
}

impl NodeBackend {
    pub fn new(replica: Replica, router: Arc<Router>, authority: Arc<Authority>) -> NodeBackend {
        NodeBackend {
            replica,
            router,
            authority,
        }
    }

    /// Checks the caller, finds the method in the descriptor the routing
    /// table holds parsed for the service, and turns the JSON request into
    /// its encoded message.
    fn prepare(&self, call: Call) -> Result<Prepared, Error> {
        let Call {
            namespace,
            service,
            endpoint,
            mut request,
            mut metadata,
            token,
        } = call;
        let claims = self
            .authority
            .authorize(token.as_deref(), &namespace, &service, &endpoint)
            .map_err(|status| Error::from_status(&service, &status))?;
        let not_found = || errors::not_found(&service, format!("service {service} not found"));
        crate::grpc::check_name("service", &service).map_err(|_| not_found())?;
        let pool = self
            .router
            .table()
            .routes(&namespace, &service)
            .and_then(|r| r.descriptor.clone())
            .ok_or_else(not_found)?;
        let method = micro::dynamic::method(&pool, &service, &endpoint)
            .map_err(|e| errors::not_found(&service, e.to_string()))?;
        micro::dynamic::coerce_strings(&mut request, &method.input());
        let message = micro::dynamic::encode_request(&method, &request)
            .map_err(|e| errors::bad_request(&service, e.to_string()))?;
        if let Some(t) = &token {
            // The service learns who called, as on the gRPC endpoint.
            if let Ok(v) = http::HeaderValue::try_from(format!("Bearer {t}")) {
                metadata.insert(http::header::AUTHORIZATION, v);
            }
        }
        Ok(Prepared {
            target: Target {
                namespace,
                service,
                endpoint,
            },
            claims,
            method,
            message,
            metadata,
        })
    }

    /// Makes the call and returns the whole reply: a unary method's
    /// message, or every message of a stream as an array.
    async fn collected(&self, p: Prepared) -> Result<serde_json::Value, Error> {
        let service = p.target.service.clone();
        let replies = self
            .router
            .call(
                p.target,
                p.claims,
                &micro::dynamic::path(&p.method),
                p.message,
                p.metadata,
            )
            .await
            .map_err(|status| Error::from_status(&service, &status))?;
        let decode = |b: &bytes::Bytes| {
            micro::dynamic::decode_reply(&p.method, b)
                .map_err(|e| errors::internal_server_error(&service, e.to_string()))
        };
        if p.method.is_server_streaming() {
            // Without `Accept: text/event-stream` a stream arrives whole,
            // as an array.
            return replies
                .iter()
                .map(decode)
                .collect::<Result<Vec<_>, _>>()
                .map(serde_json::Value::Array);
        }
        match replies.first() {
            Some(b) => decode(b),
            None => Err(errors::internal_server_error(
                &service,
                "the service sent no reply",
            )),
        }
    }
}

impl Backend for NodeBackend {
    fn version(&self) -> &str {
        crate::VERSION
    }

    fn node(&self) -> NodeSummary {
        let m = self.replica.status();
        NodeSummary {
            id: m.id,
            role: m.role.as_str().into(),
            term: m.term,
            applied_index: m.applied_index,
            leader: m.leader,
        }
    }

    async fn services(
        &self,
        namespace: &str,
        token: Option<&str>,
    ) -> Result<Vec<ServiceSummary>, Error> {
        crate::grpc::check_name("namespace", namespace)
            .map_err(|s| errors::bad_request("registry", s.message()))?;
        self.authority
            .authorize(token, namespace, "registry", "Registry.ListServices")
            .map_err(|status| Error::from_status("registry", &status))?;
        let list = registry::list(&self.replica, namespace)
            .map_err(|s| Error::from_status("registry", &s))?;
        Ok(list
            .into_iter()
            .map(|s| ServiceSummary {
                name: s.name,
                version: s.version,
                nodes: s.nodes.len(),
                endpoints: s.endpoints.into_iter().map(|e| e.name).collect(),
            })
            .collect())
    }

    async fn call(&self, call: Call) -> Result<serde_json::Value, Error> {
        let prepared = self.prepare(call)?;
        self.collected(prepared).await
    }

    async fn call_stream(&self, call: Call) -> Result<Reply, Error> {
        let p = self.prepare(call)?;
        if !p.method.is_server_streaming() {
            return self.collected(p).await.map(Reply::Unary);
        }
        let service = p.target.service.clone();
        let method = p.method;
        let frames = self
            .router
            .call_stream(
                p.target,
                p.claims,
                &micro::dynamic::path(&method),
                p.message,
                p.metadata,
            )
            .await
            .map_err(|status| Error::from_status(&service, &status))?;
        // Each reply as the service sends it; the stream ends after an error.
        let replies = frames.map(move |frame| {
            let bytes = frame.map_err(|status| Error::from_status(&service, &status))?;
            micro::dynamic::decode_reply(&method, &bytes)
                .map_err(|e| errors::internal_server_error(&service, e.to_string()))
        });
        Ok(Reply::Stream(Box::pin(replies)))
    }
}
