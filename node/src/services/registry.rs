//! The Registry service: which services run, where, and what they offer.
//!
//! Each registered node of a service is one record at
//! `registry/<namespace>/<service>/<version>/<node id>`, holding the service
//! (name, version, metadata, endpoints, descriptor) with just that node, and
//! expiring after the registration's TTL (90 s unless given). A service
//! re-registers to stay; one that stops heartbeating drops out of every read
//! at once and is purged by the leader. Watches stream changes under the
//! namespace as the replica applies them.

use std::collections::BTreeMap;
use std::time::Duration;

use micro_proto::registry::registry_server::Registry;
use micro_proto::registry::{
    EmptyResponse, GetRequest, GetResponse, ListRequest, ListResponse, Node, Result as WatchResult,
    Service, WatchRequest,
};
use micro_raft::{now_millis, Change, Op, Replica, Txn};
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::grpc::{barrier, check_name, namespace, status};

/// How long a registration lives without a heartbeat, unless it says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(90);
/// The longest TTL a registration may ask for.
const MAX_TTL_SECS: i64 = 24 * 3600;

/// The Registry service over the replicated state.
pub struct RegistryService {
    replica: Replica,
    node_id: u64,
}

impl RegistryService {
    /// The registry of node `node_id`: instances registered through it are
    /// marked as its own (metadata `node`), so other nodes reach them
    /// through it.
    pub fn new(replica: Replica, node_id: u64) -> Self {
        RegistryService { replica, node_id }
    }
}

fn service_prefix(ns: &str, name: &str) -> String {
    format!("registry/{ns}/{name}/")
}

/// Writes one record per node of `svc` in namespace `ns`.
pub async fn register(replica: &Replica, ns: &str, svc: Service) -> Result<(), Status> {
    check_name("service name", &svc.name)?;
    let version = if svc.version.is_empty() {
        "latest".to_string()
    } else {
        svc.version.clone()
    };
    check_name("version", &version)?;
    if svc.nodes.is_empty() {
        return Err(Status::invalid_argument(
            "a registration needs at least one node",
        ));
    }
    let ttl = match svc.options.as_ref().map(|o| o.ttl).unwrap_or(0) {
        0 => DEFAULT_TTL.as_millis() as u64,
        t if (1..=MAX_TTL_SECS).contains(&t) => t as u64 * 1000,
        t => {
            return Err(Status::invalid_argument(format!(
                "ttl {t}s is out of range (1 to {MAX_TTL_SECS})"
            )))
        }
    };
    let now = now_millis();
    let mut ops = Vec::with_capacity(svc.nodes.len());
    for node in &svc.nodes {
        check_name("node id", &node.id)?;
        let one = Service {
            name: svc.name.clone(),
            version: version.clone(),
            metadata: svc.metadata.clone(),
            endpoints: svc.endpoints.clone(),
            nodes: vec![node.clone()],
            options: None,
            descriptor: svc.descriptor.clone(),
        };
        ops.push(Op::Put {
            key: format!("{}{version}/{}", service_prefix(ns, &svc.name), node.id).into_bytes(),
            value: one.encode_to_vec(),
            expires_at: Some(now + ttl),
        });
    }
    let mut txn = Txn::ops(ops);
    txn.now = now;
    replica.write(txn).await.map_err(status)?;
    Ok(())
}

/// Removes the given nodes of `svc`, or every node of its version when it
/// names none.
pub async fn deregister(replica: &Replica, ns: &str, svc: &Service) -> Result<(), Status> {
    check_name("service name", &svc.name)?;
    let version = if svc.version.is_empty() {
        "latest"
    } else {
        &svc.version
    };
    check_name("version", version)?;
    let base = format!("{}{version}/", service_prefix(ns, &svc.name));
    let ops = if svc.nodes.is_empty() {
        vec![Op::DeletePrefix {
            prefix: base.into_bytes(),
        }]
    } else {
        svc.nodes
            .iter()
            .map(|n| Op::Delete {
                key: format!("{base}{}", n.id).into_bytes(),
            })
            .collect()
    };
    replica.write(Txn::ops(ops)).await.map_err(status)?;
    Ok(())
}

/// Every live registration under `prefix`, merged per (name, version).
fn collect(replica: &Replica, prefix: &str, with_descriptor: bool) -> Result<Vec<Service>, Status> {
    let mut merged: BTreeMap<(String, String), Service> = BTreeMap::new();
    for item in replica
        .reader()
        .scan(prefix.as_bytes(), now_millis(), false)
    {
        let (_, rec) = item.map_err(status)?;
        let mut one = Service::decode(rec.value.as_slice())
            .map_err(|e| Status::internal(format!("corrupt registration: {e}")))?;
        if !with_descriptor {
            one.descriptor.clear();
        }
        match merged.entry((one.name.clone(), one.version.clone())) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().nodes.append(&mut one.nodes)
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(one);
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// The services registered in `ns`, without descriptors.
pub fn list(replica: &Replica, ns: &str) -> Result<Vec<Service>, Status> {
    collect(replica, &format!("registry/{ns}/"), false)
}

/// Decodes a registry key `registry/<ns>/<name>/<version>/<node>`.
fn parse_key(key: &[u8]) -> Option<(String, String, String)> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.splitn(5, '/');
    let (_, _, name, version, node) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    Some((name.to_string(), version.to_string(), node.to_string()))
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().service;
        check_name("service name", &name)?;
        barrier(&self.replica, false).await?;
        let services = collect(&self.replica, &service_prefix(&ns, &name), true)?;
        if services.is_empty() {
            return Err(Status::not_found(format!("service {name} not found")));
        }
        Ok(Response::new(GetResponse { services }))
    }

    async fn register(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let ns = namespace(&req)?;
        let mut svc = req.into_inner();
        for node in &mut svc.nodes {
            node.metadata
                .entry("node".to_string())
                .or_insert_with(|| self.node_id.to_string());
        }
        register(&self.replica, &ns, svc).await?;
        Ok(Response::new(EmptyResponse {}))
    }

    async fn deregister(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let ns = namespace(&req)?;
        deregister(&self.replica, &ns, req.get_ref()).await?;
        Ok(Response::new(EmptyResponse {}))
    }

    async fn list_services(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, Status> {
        let ns = namespace(&req)?;
        barrier(&self.replica, false).await?;
        Ok(Response::new(ListResponse {
            services: list(&self.replica, &ns)?,
        }))
    }

    type WatchStream = ReceiverStream<Result<WatchResult, Status>>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let ns = namespace(&req)?;
        let only = req.into_inner().service;
        if !only.is_empty() {
            check_name("service name", &only)?;
        }
        let prefix = if only.is_empty() {
            format!("registry/{ns}/")
        } else {
            service_prefix(&ns, &only)
        };
        let mut changes = self.replica.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let batch = match changes.recv().await {
                    Ok(b) => b,
                    Err(RecvError::Lagged(_)) => {
                        let _ = tx
                            .send(Err(Status::data_loss("the watch fell behind; watch again")))
                            .await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                };
                for change in batch.iter() {
                    let event = match change {
                        Change::Put {
                            key,
                            record,
                            created,
                        } if key.starts_with(prefix.as_bytes()) => {
                            let Ok(mut svc) = Service::decode(record.value.as_slice()) else {
                                continue;
                            };
                            svc.descriptor.clear();
                            WatchResult {
                                action: if *created { "create" } else { "update" }.into(),
                                service: Some(svc),
                                timestamp: (now_millis() / 1000) as i64,
                            }
                        }
                        Change::Delete { key } if key.starts_with(prefix.as_bytes()) => {
                            let Some((name, version, node)) = parse_key(key) else {
                                continue;
                            };
                            WatchResult {
                                action: "delete".into(),
                                service: Some(Service {
                                    name,
                                    version,
                                    nodes: vec![Node {
                                        id: node,
                                        ..Default::default()
                                    }],
                                    ..Default::default()
                                }),
                                timestamp: (now_millis() / 1000) as i64,
                            }
                        }
                        Change::Reset => {
                            let _ = tx
                                .send(Err(Status::data_loss(
                                    "the registry was reloaded; watch again",
                                )))
                                .await;
                            return;
                        }
                        _ => continue,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return; // the watcher went away
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
