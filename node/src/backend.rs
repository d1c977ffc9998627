//! The node as the HTTP side sees it: the implementation of
//! [`micro_api::Backend`]. Gateway calls are turned from JSON into the
//! service's protobuf request with its registered descriptor and sent
//! through the router, without a network hop to this node's own endpoint.
//! A server-streaming method's replies come back whole (an array) through
//! `call`, or one by one as the service sends them through `call_stream`
//! (the gateway's server-sent events).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use micro::errors::{self, Error};
use micro_api::{Backend, Call, NodeSummary, Reply, ServiceSummary};
use micro_raft::Replica;
use prost_reflect::{DescriptorPool, MethodDescriptor};

use crate::auth::Authority;
use crate::router::Router;
use crate::services::registry;

/// Parsed descriptor sets, by registration record and its version: a
/// call whose registration has not changed since the last one costs a map
/// lookup, with no decoding, hashing or parsing of the descriptor bytes.
/// (A heartbeat rewrites the record, so each instance is parsed again at
/// most every 30 s.)
#[derive(Default)]
struct Pools(Mutex<HashMap<Vec<u8>, Versioned>>);

/// A parsed pool and the version of the record it came from.
type Versioned = (u64, Arc<DescriptorPool>);

impl Pools {
    fn cached(&self, key: &[u8], version: u64) -> Option<Arc<DescriptorPool>> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(v, _)| *v == version)
            .map(|(_, p)| p.clone())
    }

    fn insert(&self, key: Vec<u8>, version: u64, pool: Arc<DescriptorPool>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 1024 {
            map.clear(); // bounded: records of gone instances fall out
        }
        map.insert(key, (version, pool));
    }
}

/// Gives the gateway and dashboard what they need from this node.
pub struct NodeBackend {
    replica: Replica,
    router: Arc<Router>,
    authority: Arc<Authority>,
    pools: Pools,
}

impl NodeBackend {
    pub fn new(replica: Replica, router: Arc<Router>, authority: Arc<Authority>) -> NodeBackend {
        NodeBackend {
            replica,
            router,
            authority,
            pools: Pools::default(),
        }
    }

    /// The descriptor set a service registered, parsed.
    fn descriptor(&self, namespace: &str, service: &str) -> Result<Arc<DescriptorPool>, Error> {
        let not_found = || errors::not_found(service, format!("service {service} not found"));
        crate::grpc::check_name("service", service).map_err(|_| not_found())?;
        let prefix = format!("registry/{namespace}/{service}/");
        for item in self
            .replica
            .reader()
            .scan(prefix.as_bytes(), micro_raft::now_millis(), false)
        {
            let (key, rec) =
                item.map_err(|e| errors::internal_server_error(service, e.to_string()))?;
            if let Some(pool) = self.pools.cached(&key, rec.version) {
                return Ok(pool);
            }
            let reg =
                <micro_proto::registry::Service as prost::Message>::decode(rec.value.as_slice())
                    .map_err(|e| errors::internal_server_error(service, e.to_string()))?;
            if reg.descriptor.is_empty() {
                continue;
            }
            let pool = Arc::new(DescriptorPool::decode(reg.descriptor.as_slice()).map_err(
                |e| errors::internal_server_error(service, format!("bad descriptor: {e}")),
            )?);
            self.pools.insert(key, rec.version, pool.clone());
            return Ok(pool);
        }
        Err(not_found())
    }

    /// Checks the caller and turns the JSON request into the method's
    /// encoded message and the metadata to send with it.
    fn prepare(
        &self,
        call: &mut Call,
    ) -> Result<(MethodDescriptor, bytes::Bytes, http::HeaderMap), Error> {
        let service = call.service.as_str();
        self.authority
            .authorize(
                call.token.as_deref(),
                &call.namespace,
                service,
                &call.endpoint,
            )
            .map_err(|status| Error::from_status(service, &status))?;
        let pool = self.descriptor(&call.namespace, service)?;
        let method = micro::dynamic::method(&pool, service, &call.endpoint)
            .map_err(|e| errors::not_found(service, e.to_string()))?;
        micro::dynamic::coerce_strings(&mut call.request, &method.input());
        let message = micro::dynamic::encode_request(&method, &call.request)
            .map_err(|e| errors::bad_request(service, e.to_string()))?;
        let mut metadata = http::HeaderMap::new();
        if let Some(t) = &call.token {
            // The service learns who called, as on the gRPC endpoint.
            if let Ok(v) = http::HeaderValue::try_from(format!("Bearer {t}")) {
                metadata.insert(http::header::AUTHORIZATION, v);
            }
        }
        for (k, v) in &call.metadata {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::try_from(k.as_str()),
                http::HeaderValue::try_from(v.as_str()),
            ) {
                metadata.append(k, v);
            }
        }
        Ok((method, message, metadata))
    }

    /// Makes the call and returns the whole reply: a unary method's
    /// message, or every message of a stream as an array.
    async fn collected(
        &self,
        call: &Call,
        method: &MethodDescriptor,
        message: bytes::Bytes,
        metadata: &http::HeaderMap,
    ) -> Result<serde_json::Value, Error> {
        let service = call.service.as_str();
        let replies = self
            .router
            .call(
                &call.namespace,
                service,
                &micro::dynamic::path(method),
                message,
                metadata,
            )
            .await
            .map_err(|status| Error::from_status(service, &status))?;
        let decode = |b: &bytes::Bytes| {
            micro::dynamic::decode_reply(method, b)
                .map_err(|e| errors::internal_server_error(service, e.to_string()))
        };
        if method.is_server_streaming() {
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
                service,
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

    async fn call(&self, mut call: Call) -> Result<serde_json::Value, Error> {
        let (method, message, metadata) = self.prepare(&mut call)?;
        self.collected(&call, &method, message, &metadata).await
    }

    async fn call_stream(&self, mut call: Call) -> Result<Reply, Error> {
        let (method, message, metadata) = self.prepare(&mut call)?;
        if !method.is_server_streaming() {
            return self
                .collected(&call, &method, message, &metadata)
                .await
                .map(Reply::Unary);
        }
        let service = call.service.clone();
        let frames = self
            .router
            .call_stream(
                &call.namespace,
                &service,
                &micro::dynamic::path(&method),
                message,
                &metadata,
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
