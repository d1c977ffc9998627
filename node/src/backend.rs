//! The node as the HTTP side sees it: the implementation of
//! [`micro_api::Backend`]. Gateway calls are turned from JSON into the
//! service's protobuf request with its registered descriptor and sent
//! through the router, without a network hop to this node's own endpoint.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use micro::errors::{self, Error};
use micro_api::{Backend, Call, NodeSummary, ServiceSummary};
use micro_raft::Replica;
use prost_reflect::DescriptorPool;

use crate::auth::Authority;
use crate::router::Router;
use crate::services::registry;

/// Parsed descriptor sets, by a hash of their bytes: parsing one costs far
/// more than a call, and services re-register the same bytes every 30 s.
#[derive(Default)]
struct Pools(Mutex<HashMap<u64, Arc<DescriptorPool>>>);

impl Pools {
    fn get(&self, bytes: &[u8]) -> Result<Arc<DescriptorPool>, prost_reflect::DescriptorError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let key = h.finish();
        if let Some(p) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(p.clone());
        }
        let pool = Arc::new(DescriptorPool::decode(bytes)?);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > 1024 {
            map.clear(); // bounded: stale versions of services fall out
        }
        map.insert(key, pool.clone());
        Ok(pool)
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
            let (_, rec) =
                item.map_err(|e| errors::internal_server_error(service, e.to_string()))?;
            let reg =
                <micro_proto::registry::Service as prost::Message>::decode(rec.value.as_slice())
                    .map_err(|e| errors::internal_server_error(service, e.to_string()))?;
            if !reg.descriptor.is_empty() {
                return self.pools.get(&reg.descriptor).map_err(|e| {
                    errors::internal_server_error(service, format!("bad descriptor: {e}"))
                });
            }
        }
        Err(not_found())
    }
}

impl Backend for NodeBackend {
    fn version(&self) -> &str {
        crate::VERSION
    }

    fn node(&self) -> NodeSummary {
        let m = self.replica.raft().metrics().borrow().clone();
        NodeSummary {
            id: m.id,
            role: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader,
        }
    }

    async fn services(&self, namespace: &str) -> Result<Vec<ServiceSummary>, String> {
        let list = registry::list(&self.replica, namespace).map_err(|s| s.message().to_string())?;
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
        let replies = self
            .router
            .call(
                &call.namespace,
                service,
                &micro::dynamic::path(&method),
                message,
                &metadata,
            )
            .await
            .map_err(|status| Error::from_status(service, &status))?;
        let decode = |b: &bytes::Bytes| {
            micro::dynamic::decode_reply(&method, b)
                .map_err(|e| errors::internal_server_error(service, e.to_string()))
        };
        if method.is_server_streaming() {
            // Over plain HTTP a stream arrives whole, as an array.
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
