//! The Registry service: which services run, where, and what they offer.
//!
//! Each registered node of a service is one record at
//! `registry/<namespace>/<service>/<version>/<node id>`, holding the service
//! (name, version, metadata) with just that node and the content hashes of
//! its endpoints and descriptor, and expiring after the registration's TTL
//! (90 s unless given). Endpoints and descriptors are stored once per
//! content at `registry-schemas/<namespace>/<sha256 hex>` (the encoded
//! `Service` holding only them), living [`schema_life`] and rewritten only
//! when a registration finds less than half of that left: a heartbeat is a
//! write of a few hundred bytes, never of the schemas. (Records written by
//! older builds hold endpoints and descriptor inline and are still read.)
//! A service re-registers to stay; one that stops heartbeating drops out of
//! every read at once and is purged by the leader. Watches stream changes
//! under the namespace as the replica applies them.
//!
//! Who may register what, through the gRPC call (the node registers its own
//! services directly with [`register`]):
//! * a service name belongs to the account that first registered it
//!   (`registry-owners/<namespace>/<service>`, kept when its instances
//!   expire); after that only that account, a service the runtime runs for
//!   it (the runtime's service account stands for the account that ran the
//!   service) or an admin of the namespace may register or deregister it.
//!   A name nobody owns stays open to anonymous callers, as the rules allow.
//! * core service names (store, config, …) are the node's alone.
//! * an instance must be on the registering node: a loopback address or one
//!   of the node's own IPs, and not one of the node's own ports. Its `node`
//!   metadata is always the registering node.
//!
//! Must never: let a caller name an instance elsewhere than on this node, or
//! register a name another account owns.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use micro_proto::registry::registry_server::Registry;
use micro_proto::registry::{
    EmptyResponse, GetRequest, GetResponse, ListRequest, ListResponse, Node, Result as WatchResult,
    Service, WatchRequest,
};
use micro_raft::{now_millis, Change, Cond, Op, Replica, Txn};
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::{caller, Claims};
use crate::grpc::{barrier, check_name, namespace, status};

/// How long a registration lives without a heartbeat, unless it says.
pub const DEFAULT_TTL: Duration = Duration::from_secs(90);
/// The longest TTL a registration may ask for.
const MAX_TTL_SECS: i64 = 24 * 3600;

/// Names only the node itself registers.
pub const CORE_NAMES: &[&str] = &[
    "store", "config", "registry", "auth", "runtime", "cluster", "broker", "events", "network",
];

/// Who ran a service through the runtime: the account (id, namespace)
/// that `(replica, namespace, name)` runs under, if any. Given by the
/// composition root (the runtime's `runner_of`), so the registry does not
/// import the runtime, which imports the registry.
pub type RunnerOf = fn(&Replica, &str, &str) -> Option<(String, String)>;

/// The Registry service over the replicated state.
pub struct RegistryService {
    replica: Replica,
    node_id: u64,
    /// The node's own listening sockets (gRPC, API, dashboard, cluster).
    listen: Vec<SocketAddr>,
    runner_of: RunnerOf,
}

impl RegistryService {
    /// The registry of node `node_id`, which listens on `listen`: instances
    /// registered through it must be on this host and are marked as its own
    /// (metadata `node`), so other nodes reach them through it.
    pub fn new(
        replica: Replica,
        node_id: u64,
        listen: Vec<SocketAddr>,
        runner_of: RunnerOf,
    ) -> Self {
        RegistryService {
            replica,
            node_id,
            listen,
            runner_of,
        }
    }

    /// Refuses an instance address that is not on this node: not an IP
    /// and port, not loopback nor one of the node's IPs, or one of the
    /// node's own ports (calls would loop back into it).
    fn check_address(&self, addr: &str) -> Result<(), Status> {
        let sock: SocketAddr = match addr.parse() {
            Ok(a) => a,
            Err(_) => match addr.strip_prefix("localhost:").map(str::parse::<u16>) {
                Some(Ok(port)) => SocketAddr::from(([127, 0, 0, 1], port)),
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "instance address '{}' is not an IP address and port",
                        addr.escape_default()
                    )))
                }
            },
        };
        let ip = sock.ip().to_canonical();
        let own_port = self.listen.iter().any(|l| {
            l.port() == sock.port()
                && (l.ip().is_unspecified() || l.ip().to_canonical() == ip || ip.is_loopback())
        });
        if own_port {
            return Err(Status::permission_denied(format!(
                "instance address {addr} is one of this node's own ports"
            )));
        }
        let listens_everywhere = self.listen.iter().any(|l| l.ip().is_unspecified());
        let on_this_node = !ip.is_unspecified()
            && (ip.is_loopback()
                || self.listen.iter().any(|l| l.ip().to_canonical() == ip)
                || (listens_everywhere && is_local_ip(ip)));
        if on_this_node {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "instance address {addr} is not on this node: register instances at a loopback address or one of this node's own addresses"
            )))
        }
    }

    /// Who registers, as far as ownership goes: a service the runtime runs
    /// stands for the account that ran it; anyone else is their account.
    fn registrant(&self, c: &Claims) -> Owner {
        if c.kind == "service" {
            if let Some((account, issuer)) = (self.runner_of)(&self.replica, &c.iss, &c.sub) {
                return Owner { account, issuer };
            }
        }
        Owner {
            account: c.sub.clone(),
            issuer: c.iss.clone(),
        }
    }

    /// The conditions (and the claim of the name, for a first registrant
    /// with an account) under which `claims` may change `name` in `ns`, or
    /// why not.
    fn ownership(
        &self,
        ns: &str,
        name: &str,
        claims: Option<&Claims>,
        claim: bool,
    ) -> Result<(Cond, Option<Op>), Status> {
        let key = owner_key(ns, name);
        let existing = self
            .replica
            .reader()
            .get(&key, now_millis())
            .map_err(status)?;
        let who = claims.map(|c| self.registrant(c));
        match existing {
            None => {
                let op = match (&who, claim) {
                    (Some(o), true) => Some(Op::Put {
                        key: key.clone(),
                        value: serde_json::to_vec(o)
                            .map_err(|e| Status::internal(e.to_string()))?,
                        expires_at: None,
                    }),
                    _ => None,
                };
                Ok((Cond::Absent(key), op))
            }
            Some(rec) => {
                let owner: Owner = serde_json::from_slice(&rec.value)
                    .map_err(|e| Status::internal(format!("corrupt registry owner: {e}")))?;
                let admin = claims.is_some_and(|c| c.is_admin_in(ns));
                if admin || who.as_ref() == Some(&owner) {
                    return Ok((Cond::ValueEq(key, rec.value), None));
                }
                let who = match &who {
                    Some(o) => format!("account {}", o.account),
                    None => "an anonymous caller".to_string(),
                };
                Err(Status::permission_denied(format!(
                    "service {name} belongs to account {}: {who} may not register or deregister it",
                    owner.account
                )))
            }
        }
    }
}

impl RegistryService {
    /// Writes `txn()` if `claims` may change `name` (see [`Self::ownership`]),
    /// under the condition that the name's owner is still the one checked;
    /// retried when it changed meanwhile.
    async fn write_checked(
        &self,
        ns: &str,
        name: &str,
        claims: Option<&Claims>,
        claim: bool,
        txn: impl Fn() -> Result<Txn, Status>,
    ) -> Result<(), Status> {
        for _ in 0..3 {
            let (cond, take) = self.ownership(ns, name, claims, claim)?;
            let mut t = txn()?.when(cond);
            t.ops.extend(take);
            if self.replica.write(t).await.map_err(status)?.succeeded {
                return Ok(());
            }
        }
        Err(Status::aborted(format!(
            "the owner of service {name} changed meanwhile; try again"
        )))
    }
}

/// The account (id, namespace) that owns service name `name` in `ns`, if
/// one does.
pub fn owner_of(replica: &Replica, ns: &str, name: &str) -> Option<(String, String)> {
    let rec = replica
        .reader()
        .get(&owner_key(ns, name), now_millis())
        .ok()??;
    let o: Owner = serde_json::from_slice(&rec.value).ok()?;
    Some((o.account, o.issuer))
}

/// Whether `ip` is one of this host's addresses: only those can be bound.
fn is_local_ip(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// The account that owns a service name in a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Owner {
    account: String,
    issuer: String,
}

use crate::keys::registry::{self as keys, owner as owner_key};

/// A stored registration as the API shows it: schemas looked up by their
/// hash (the descriptor only when asked for).
fn to_service(replica: &Replica, ns: &str, one: Stored, with_descriptor: bool) -> Service {
    let mut endpoints = one.endpoints;
    if !one.endpoints_ref.is_empty() {
        endpoints = schema(replica, ns, &one.endpoints_ref)
            .map(|s| s.endpoints)
            .unwrap_or_default();
    }
    let mut descriptor = Vec::new();
    if with_descriptor {
        descriptor = one.descriptor;
        if !one.descriptor_ref.is_empty() {
            descriptor = schema(replica, ns, &one.descriptor_ref)
                .map(|s| s.descriptor)
                .unwrap_or_default();
        }
    }
    Service {
        name: one.name,
        version: one.version,
        metadata: one.metadata,
        endpoints,
        nodes: one.nodes,
        options: None,
        descriptor,
    }
}

fn refuse_core(name: &str) -> Result<(), Status> {
    if CORE_NAMES.contains(&name) {
        return Err(Status::permission_denied(format!(
            "{name} is a core service: only the node registers it"
        )));
    }
    Ok(())
}

/// A registration as stored: a [`Service`] with one node whose endpoints
/// and descriptor are named by content hash (tags 14 and 15; the inline
/// fields 4 and 7 are what older builds wrote, and are still read).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Stored {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(map = "string, string", tag = "3")]
    pub metadata: std::collections::HashMap<String, String>,
    #[prost(message, repeated, tag = "4")]
    pub endpoints: Vec<micro_proto::registry::Endpoint>,
    #[prost(message, repeated, tag = "5")]
    pub nodes: Vec<Node>,
    #[prost(bytes = "vec", tag = "7")]
    pub descriptor: Vec<u8>,
    #[prost(bytes = "vec", tag = "14")]
    pub endpoints_ref: Vec<u8>,
    #[prost(bytes = "vec", tag = "15")]
    pub descriptor_ref: Vec<u8>,
}

#[cfg(test)]
thread_local! {
    /// Scans of registry records made on this thread (a test's runtime),
    /// for tests that prove a path does not read the registry.
    static RECORD_SCANS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many scans of registry records this thread has made.
#[cfg(test)]
pub fn record_scans() -> u64 {
    RECORD_SCANS.with(|n| n.get())
}

/// One live registration record.
pub(crate) struct Registration {
    pub key: Vec<u8>,
    /// The log index of its last write.
    pub version: u64,
    pub expires_at: Option<u64>,
    pub stored: Stored,
}

/// The live records under `prefix` (`registry/…`). Every read of
/// registrations goes through here.
pub(crate) fn records(replica: &Replica, prefix: &[u8]) -> Result<Vec<Registration>, Status> {
    #[cfg(test)]
    RECORD_SCANS.with(|n| n.set(n.get() + 1));
    let mut out = Vec::new();
    for item in replica.reader().scan(prefix, now_millis(), false) {
        let (key, rec) = item.map_err(status)?;
        let stored = Stored::decode(rec.value.as_slice())
            .map_err(|e| Status::internal(format!("corrupt registration: {e}")))?;
        out.push(Registration {
            key,
            version: rec.version,
            expires_at: rec.expires_at,
            stored,
        });
    }
    Ok(out)
}

use crate::keys::registry::schema as schema_key;

/// How long a stored schema lives: an hour, or four TTLs of the
/// registration that wrote it when that is longer. A registration rewrites
/// it only when less than half is left, so it always outlives the records
/// that name it.
pub fn schema_life(ttl_ms: u64) -> u64 {
    (4 * ttl_ms).max(3_600_000)
}

/// The stored schema named `hash` in `ns` (an encoded `Service` holding
/// endpoints or a descriptor), if it is there.
pub(crate) fn schema(replica: &Replica, ns: &str, hash: &[u8]) -> Option<Service> {
    let rec = replica
        .reader()
        .get(&schema_key(ns, hash), now_millis())
        .ok()??;
    Service::decode(rec.value.as_slice()).ok()
}

/// The content hash of `value` and what the registration's transaction
/// needs so that the schema is stored: a condition that it is (when this
/// replica holds it with more than half its life left and `force` is
/// false) or a put of it.
fn schema_ref(
    replica: &Replica,
    ns: &str,
    value: Vec<u8>,
    now: u64,
    life: u64,
    force: bool,
) -> (Vec<u8>, Result<Cond, Op>) {
    let hash = Sha256::digest(&value).to_vec();
    let key = schema_key(ns, &hash);
    let fresh = !force
        && replica
            .reader()
            .get(&key, now)
            .ok()
            .flatten()
            .is_some_and(|r| r.expires_at.is_none_or(|at| at >= now + life / 2));
    let need = if fresh {
        Ok(Cond::Exists(key))
    } else {
        Err(Op::Put {
            key,
            value,
            expires_at: Some(now + life),
        })
    };
    (hash, need)
}

/// Writes one record per node of `svc` in namespace `ns`, unchecked: for the
/// node's own services.
pub async fn register(replica: &Replica, ns: &str, svc: Service) -> Result<(), Status> {
    for force in [false, true] {
        let txn = register_txn(replica, ns, svc.clone(), force)?;
        if replica.write(txn).await.map_err(status)?.succeeded {
            return Ok(());
        }
    }
    Err(Status::aborted(format!(
        "the schemas of service {} could not be stored",
        svc.name
    )))
}

/// The transaction that writes one record per node of `svc`, and its
/// schemas unless this replica holds them fresh (`force` writes them).
fn register_txn(replica: &Replica, ns: &str, svc: Service, force: bool) -> Result<Txn, Status> {
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
    let life = schema_life(ttl);
    let mut ops = Vec::with_capacity(svc.nodes.len() + 2);
    let mut conds = Vec::new();
    let mut stored = |value: Vec<u8>| {
        let (hash, need) = schema_ref(replica, ns, value, now, life, force);
        match need {
            Ok(cond) => conds.push(cond),
            Err(op) => ops.push(op),
        }
        hash
    };
    let endpoints_ref = if svc.endpoints.is_empty() {
        Vec::new()
    } else {
        stored(
            Service {
                endpoints: svc.endpoints,
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    let descriptor_ref = if svc.descriptor.is_empty() {
        Vec::new()
    } else {
        stored(
            Service {
                descriptor: svc.descriptor,
                ..Default::default()
            }
            .encode_to_vec(),
        )
    };
    for node in &svc.nodes {
        check_name("node id", &node.id)?;
        let one = Stored {
            name: svc.name.clone(),
            version: version.clone(),
            metadata: svc.metadata.clone(),
            nodes: vec![node.clone()],
            endpoints_ref: endpoints_ref.clone(),
            descriptor_ref: descriptor_ref.clone(),
            ..Default::default()
        };
        ops.push(Op::Put {
            key: keys::record(ns, &svc.name, &version, &node.id),
            value: one.encode_to_vec(),
            expires_at: Some(now + ttl),
        });
    }
    let mut txn = Txn::ops(ops);
    txn.conds = conds;
    txn.now = now;
    Ok(txn)
}

/// Removes the given nodes of `svc`, or every node of its version when it
/// names none; unchecked, for the node's own services.
pub async fn deregister(replica: &Replica, ns: &str, svc: &Service) -> Result<(), Status> {
    replica
        .write(deregister_txn(ns, svc)?)
        .await
        .map_err(status)?;
    Ok(())
}

fn deregister_txn(ns: &str, svc: &Service) -> Result<Txn, Status> {
    check_name("service name", &svc.name)?;
    let version = if svc.version.is_empty() {
        "latest"
    } else {
        &svc.version
    };
    check_name("version", version)?;
    let base = keys::version(ns, &svc.name, version);
    let ops = if svc.nodes.is_empty() {
        vec![Op::DeletePrefix { prefix: base }]
    } else {
        svc.nodes
            .iter()
            .map(|n| Op::Delete {
                key: keys::record(ns, &svc.name, version, &n.id),
            })
            .collect()
    };
    Ok(Txn::ops(ops))
}

/// Every live registration of `ns` under `prefix`, merged per (name,
/// version).
fn collect(
    replica: &Replica,
    ns: &str,
    prefix: &[u8],
    with_descriptor: bool,
) -> Result<Vec<Service>, Status> {
    let mut merged: BTreeMap<(String, String), Service> = BTreeMap::new();
    for reg in records(replica, prefix)? {
        let mut one = to_service(replica, ns, reg.stored, with_descriptor);
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

/// The addresses of every live instance of service `name` in `ns`.
pub fn addresses(
    replica: &Replica,
    ns: &str,
    name: &str,
) -> Result<std::collections::HashSet<String>, Status> {
    Ok(records(replica, &keys::service(ns, name))?
        .into_iter()
        .flat_map(|r| r.stored.nodes)
        .map(|n| n.address)
        .collect())
}

/// The services registered in `ns`, without descriptors.
pub fn list(replica: &Replica, ns: &str) -> Result<Vec<Service>, Status> {
    collect(replica, ns, &keys::namespace(ns), false)
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn get_service(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().service;
        check_name("service name", &name)?;
        barrier(&self.replica, false).await?;
        let services = collect(&self.replica, &ns, &keys::service(&ns, &name), true)?;
        if services.is_empty() {
            return Err(Status::not_found(format!("service {name} not found")));
        }
        Ok(Response::new(GetResponse { services }))
    }

    async fn register(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let ns = namespace(&req)?;
        let claims = caller(&req);
        let mut svc = req.into_inner();
        check_name("service name", &svc.name)?;
        refuse_core(&svc.name)?;
        for node in &mut svc.nodes {
            self.check_address(&node.address)?;
            // Where the instance runs is this node's word, not the caller's.
            node.metadata
                .insert("node".to_string(), self.node_id.to_string());
        }
        let forced = std::sync::atomic::AtomicBool::new(false);
        self.write_checked(&ns, &svc.name.clone(), claims.as_ref(), true, || {
            // A failed attempt may have found a schema gone: store it then.
            let force = forced.swap(true, Ordering::Relaxed);
            register_txn(&self.replica, &ns, svc.clone(), force)
        })
        .await?;
        Ok(Response::new(EmptyResponse {}))
    }

    async fn deregister(&self, req: Request<Service>) -> Result<Response<EmptyResponse>, Status> {
        let ns = namespace(&req)?;
        let claims = caller(&req);
        let svc = req.into_inner();
        check_name("service name", &svc.name)?;
        refuse_core(&svc.name)?;
        self.write_checked(&ns, &svc.name, claims.as_ref(), false, || {
            deregister_txn(&ns, &svc)
        })
        .await?;
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
            keys::namespace(&ns)
        } else {
            keys::service(&ns, &only)
        };
        let mut changes = self.replica.subscribe();
        let replica = self.replica.clone();
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
                        } if key.starts_with(&prefix) => {
                            let Ok(stored) = Stored::decode(record.value.as_slice()) else {
                                continue;
                            };
                            let svc = to_service(&replica, &ns, stored, false);
                            WatchResult {
                                action: if *created { "create" } else { "update" }.into(),
                                service: Some(svc),
                                timestamp: (now_millis() / 1000) as i64,
                            }
                        }
                        Change::Delete { key } if key.starts_with(&prefix) => {
                            let Some(k) = keys::parse(key) else {
                                continue;
                            };
                            let (name, version, node) =
                                (k.service.into(), k.version.into(), k.node.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn service(dir: &std::path::Path) -> RegistryService {
        let r = Replica::open(dir, 1, micro_raft::Options::default())
            .await
            .expect("open");
        r.bootstrap_alone("127.0.0.1:0".into())
            .await
            .expect("bootstrap");
        RegistryService::new(
            r,
            1,
            vec![
                "127.0.0.1:8081".parse().unwrap(),
                "192.0.2.7:8080".parse().unwrap(),
            ],
            |_, _, _| None,
        )
    }

    fn account(id: &str, scopes: &[&str]) -> Claims {
        Claims {
            sub: id.into(),
            iss: "micro".into(),
            kind: "user".into(),
            name: id.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            iat: 0,
            exp: u64::MAX,
        }
    }

    fn reg(name: &str, addr: &str) -> Service {
        Service {
            name: name.into(),
            version: "1.0".into(),
            nodes: vec![Node {
                id: format!("{name}-1"),
                address: addr.into(),
                metadata: Default::default(),
            }],
            ..Default::default()
        }
    }

    fn request(svc: Service, who: Option<&Claims>) -> Request<Service> {
        let mut req = Request::new(svc);
        if let Some(c) = who {
            req.extensions_mut().insert(c.clone());
        }
        req
    }

    #[tokio::test]
    async fn instances_must_be_on_this_node() {
        let dir = tempfile::tempdir().unwrap();
        let r = service(dir.path()).await;
        for ok in [
            "127.0.0.1:5000",
            "127.0.0.9:1",
            "[::1]:80",
            "localhost:9",
            "192.0.2.7:1",
        ] {
            assert!(r.check_address(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("10.1.2.3:1", "is not on this node"),
            ("0.0.0.0:5000", "is not on this node"),
            ("example.com:80", "is not an IP address and port"),
            ("127.0.0.1", "is not an IP address and port"),
            ("127.0.0.1:8081", "one of this node's own ports"),
            ("192.0.2.7:8080", "one of this node's own ports"),
        ] {
            let e = r.check_address(bad).unwrap_err();
            assert!(e.message().contains(why), "{bad}: {}", e.message());
        }
        let e = r
            .register(request(reg("svc", "10.1.2.3:1"), None))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(collect(&r.replica, "micro", b"registry/micro/", false)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_name_belongs_to_its_first_registrant() {
        let dir = tempfile::tempdir().unwrap();
        let r = service(dir.path()).await;
        let (a, b, admin) = (
            account("alice", &[]),
            account("bob", &[]),
            account("root", &["admin"]),
        );
        r.register(request(reg("svc-a", "127.0.0.1:5001"), Some(&a)))
            .await
            .expect("the first registrant takes the name");
        r.register(request(reg("svc-a", "127.0.0.1:5001"), Some(&a)))
            .await
            .expect("and keeps registering it");
        let e = r
            .register(request(reg("svc-a", "127.0.0.1:6666"), Some(&b)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            e.message(),
            "service svc-a belongs to account alice: account bob may not register or deregister it"
        );
        let anon = r
            .register(request(reg("svc-a", "127.0.0.1:6666"), None))
            .await
            .unwrap_err();
        assert_eq!(anon.code(), tonic::Code::PermissionDenied);
        assert!(r
            .deregister(request(reg("svc-a", "127.0.0.1:5001"), Some(&b)))
            .await
            .is_err());
        let nodes: Vec<String> = collect(&r.replica, "micro", b"registry/micro/svc-a/", false)
            .unwrap()
            .into_iter()
            .flat_map(|s| s.nodes)
            .map(|n| n.address)
            .collect();
        assert_eq!(nodes, ["127.0.0.1:5001"], "the registry is unchanged");
        r.register(request(reg("svc-a", "127.0.0.1:5002"), Some(&admin)))
            .await
            .expect("an admin may");

        // A name nobody owns is open to anonymous callers; the node marks
        // where its instances run.
        let mut open = reg("open", "127.0.0.1:5003");
        open.nodes[0]
            .metadata
            .insert("node".to_string(), "7".to_string());
        r.register(request(open, None)).await.expect("anonymous");
        let got = collect(&r.replica, "micro", b"registry/micro/open/", false).unwrap();
        assert_eq!(got[0].nodes[0].metadata["node"], "1");

        for core in CORE_NAMES {
            let e = r
                .register(request(reg(core, "127.0.0.1:5004"), Some(&admin)))
                .await
                .unwrap_err();
            assert_eq!(
                e.message(),
                format!("{core} is a core service: only the node registers it")
            );
        }
    }
}
