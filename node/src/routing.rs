//! The routing table: where each service's calls go, kept in memory.
//!
//! Built from the replica's registry records when the node starts and kept
//! current from its change stream: a change to a record of (namespace,
//! service) re-reads that service's records — one scan per registration
//! change, never one per call — and a `Reset` (a snapshot was installed) or
//! a lagged stream re-reads them all. Gossip's member changes refresh the
//! set of nodes held down. A lookup clones an `Arc` of the current table
//! under a read lock that writers take only to swap that pointer.
//!
//! Per service: its instances (address, node, version, expiry, calls in
//! flight), and the parsed descriptor of its newest registration. A
//! descriptor is parsed once per content hash and shared by every service
//! that names it (the core services all name the node's one set).
//!
//! Instance choice ([`Routes::pick`]): an instance on this node first, then
//! one on another live node; among several, the less loaded of two drawn at
//! random (power of two choices, by calls in flight until the reply's
//! head), so a slow instance gets fewer calls without any coordination.
//!
//! Must never: read the registry on a call's path, or hold its lock across
//! an await.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use micro_raft::{now_millis, Change, Replica};
use prost_reflect::DescriptorPool;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use crate::services::registry::{self, Registration, Stored};

/// Every service's routes, by namespace and name.
type Table = HashMap<String, HashMap<String, Arc<Routes>>>;

/// The routing table of one node. Cheap to clone.
#[derive(Clone)]
pub struct RoutingTable {
    shared: Arc<Shared>,
}

struct Shared {
    replica: Replica,
    me: u64,
    current: RwLock<Arc<Table>>,
    down: RwLock<Arc<HashSet<u64>>>,
    /// Parsed descriptors by content hash (only the updater touches it).
    pools: Mutex<HashMap<Vec<u8>, Arc<DescriptorPool>>>,
}

/// Where one service's calls may go.
#[derive(Default)]
pub struct Routes {
    pub instances: Vec<Arc<Instance>>,
    /// The descriptor of the newest registration that has one.
    pub descriptor: Option<Arc<DescriptorPool>>,
    descriptor_hash: Option<Vec<u8>>,
}

/// One registered instance.
#[derive(Debug)]
pub struct Instance {
    pub address: String,
    /// The node it runs on (`None` for a registration that names none: it
    /// is reached from here).
    pub node: Option<u64>,
    pub version: String,
    expires_at: Option<u64>,
    in_flight: Arc<AtomicUsize>,
}

/// A call in flight to an instance; dropping it ends the count.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Instance {
    /// Counts a call to this instance until the guard is dropped.
    pub fn start(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.in_flight.clone())
    }

    fn live(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }

    /// Whether a call reaches it from node `me` without another node.
    pub fn is_on(&self, me: u64) -> bool {
        self.node.is_none_or(|n| n == me)
    }
}

impl Routes {
    /// The instance to call: one on node `me` first, then one on a node
    /// not in `down`, never `tried`; the less loaded of two random picks
    /// within the first group that has any. `None` when none is left.
    pub fn pick(
        &self,
        me: u64,
        down: &HashSet<u64>,
        tried: Option<&Arc<Instance>>,
    ) -> Option<Arc<Instance>> {
        let now = now_millis();
        let usable = |i: &&Arc<Instance>| {
            i.live(now)
                && !tried.is_some_and(|t| Arc::ptr_eq(t, i))
                && !i.node.is_some_and(|n| n != me && down.contains(&n))
        };
        let local: Vec<&Arc<Instance>> = self
            .instances
            .iter()
            .filter(usable)
            .filter(|i| i.is_on(me))
            .collect();
        let group = if local.is_empty() {
            self.instances.iter().filter(usable).collect()
        } else {
            local
        };
        let pick = match group.len() {
            0 => return None,
            1 => group[0],
            n => {
                let mut rng = rand::thread_rng();
                let a = group[rng.gen_range(0..n)];
                let b = group[rng.gen_range(0..n)];
                if b.in_flight.load(Ordering::Relaxed) < a.in_flight.load(Ordering::Relaxed) {
                    b
                } else {
                    a
                }
            }
        };
        Some(pick.clone())
    }

    /// Whether any instance is registered and unexpired.
    pub fn any_live(&self) -> bool {
        let now = now_millis();
        self.instances.iter().any(|i| i.live(now))
    }
}

impl RoutingTable {
    /// Builds the table of node `me` from `replica`'s registry and keeps it
    /// current from the change stream until the replica stops. Must be
    /// called inside the runtime.
    pub fn start(replica: Replica, me: u64) -> RoutingTable {
        let changes = replica.subscribe();
        let table = RoutingTable {
            shared: Arc::new(Shared {
                replica,
                me,
                current: RwLock::new(Arc::new(Table::new())),
                down: RwLock::new(Arc::new(HashSet::new())),
                pools: Mutex::new(HashMap::new()),
            }),
        };
        table.reload_all();
        tokio::spawn(table.clone().follow(changes));
        table
    }

    /// Keeps the set of down nodes as gossip sees it, from its changes.
    pub fn follow_gossip(&self, gossip: micro_gossip::Gossip) {
        let table = self.clone();
        tokio::spawn(async move {
            let mut changes = gossip.changes();
            loop {
                let down: HashSet<u64> = gossip
                    .members()
                    .into_iter()
                    .filter(|m| m.node_id != table.shared.me)
                    .filter(|m| m.state == micro_gossip::State::Down)
                    .map(|m| m.node_id)
                    .collect();
                *write(&table.shared.down) = Arc::new(down);
                if changes.changed().await.is_err() {
                    return; // gossip stopped
                }
            }
        });
    }

    /// The routes of `service` in `namespace`, if it has any.
    pub fn routes(&self, namespace: &str, service: &str) -> Option<Arc<Routes>> {
        read(&self.shared.current)
            .get(namespace)?
            .get(service)
            .cloned()
    }

    /// The nodes gossip holds down now.
    pub fn down(&self) -> Arc<HashSet<u64>> {
        read(&self.shared.down).clone()
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.shared.me
    }

    /// Whether `addr` is a live instance of `service` registered on this
    /// node.
    pub fn is_local_instance(&self, namespace: &str, service: &str, addr: &str) -> bool {
        let now = now_millis();
        self.routes(namespace, service).is_some_and(|r| {
            r.instances
                .iter()
                .any(|i| i.address == addr && i.node == Some(self.shared.me) && i.live(now))
        })
    }

    async fn follow(self, mut changes: tokio::sync::broadcast::Receiver<Arc<Vec<Change>>>) {
        loop {
            match changes.recv().await {
                Ok(batch) => {
                    let mut touched: HashSet<(String, String)> = HashSet::new();
                    for change in batch.iter() {
                        let key = match change {
                            Change::Put { key, .. } | Change::Delete { key } => key,
                            Change::Reset => {
                                touched.clear();
                                self.reload_all();
                                break;
                            }
                        };
                        if let Some((ns, svc)) = registry::service_of_key(key) {
                            touched.insert((ns.to_string(), svc.to_string()));
                        }
                    }
                    for (ns, svc) in touched {
                        self.reload(&ns, &svc);
                    }
                }
                Err(RecvError::Lagged(_)) => self.reload_all(),
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Re-reads every registration.
    fn reload_all(&self) {
        let records = match registry::records(&self.shared.replica, b"registry/") {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the registry: {}", e.message());
                return;
            }
        };
        let mut grouped: HashMap<(String, String), Vec<Registration>> = HashMap::new();
        for reg in records {
            let Some(at) = registry::service_of_key(&reg.key)
                .map(|(ns, svc)| (ns.to_string(), svc.to_string()))
            else {
                continue;
            };
            grouped.entry(at).or_default().push(reg);
        }
        let old = read(&self.shared.current).clone();
        let mut table = Table::new();
        for ((ns, svc), recs) in grouped {
            let previous = old.get(&ns).and_then(|m| m.get(&svc));
            let routes = self.build(&ns, recs, previous.map(|r| &**r));
            table.entry(ns).or_default().insert(svc, Arc::new(routes));
        }
        self.install(table);
    }

    /// Re-reads the registrations of one service.
    fn reload(&self, ns: &str, svc: &str) {
        let prefix = registry::service_prefix(ns, svc);
        let records = match registry::records(&self.shared.replica, prefix.as_bytes()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the registry of {svc}: {}", e.message());
                return;
            }
        };
        let old = read(&self.shared.current).clone();
        let previous = old.get(ns).and_then(|m| m.get(svc));
        let routes = self.build(ns, records, previous.map(|r| &**r));
        let mut table = (*old).clone();
        if routes.instances.is_empty() {
            if let Some(services) = table.get_mut(ns) {
                services.remove(svc);
                if services.is_empty() {
                    table.remove(ns);
                }
            }
        } else {
            table
                .entry(ns.to_string())
                .or_default()
                .insert(svc.to_string(), Arc::new(routes));
        }
        self.install(table);
    }

    /// Publishes `table` and forgets the parsed descriptors it no longer
    /// names.
    fn install(&self, table: Table) {
        let named: HashSet<&Vec<u8>> = table
            .values()
            .flat_map(|m| m.values())
            .filter_map(|r| r.descriptor_hash.as_ref())
            .collect();
        lock(&self.shared.pools).retain(|hash, _| named.contains(hash));
        *write(&self.shared.current) = Arc::new(table);
    }

    /// The routes of one service from its records (with their versions);
    /// instances keep their calls-in-flight counts from `previous`.
    fn build(&self, ns: &str, mut recs: Vec<Registration>, previous: Option<&Routes>) -> Routes {
        let counter = |address: &str, node: Option<u64>| {
            previous
                .and_then(|p| {
                    p.instances
                        .iter()
                        .find(|i| i.address == address && i.node == node)
                })
                .map_or_else(Default::default, |i| i.in_flight.clone())
        };
        // The newest registration first: its descriptor is the one used.
        recs.sort_by_key(|r| std::cmp::Reverse(r.version));
        let mut routes = Routes::default();
        for Registration {
            stored, expires_at, ..
        } in recs
        {
            if routes.descriptor.is_none() {
                if let Some((hash, pool)) = self.descriptor_of(ns, &stored) {
                    routes.descriptor = Some(pool);
                    routes.descriptor_hash = Some(hash);
                }
            }
            for node in stored.nodes {
                let node_id = node.metadata.get("node").and_then(|v| v.parse().ok());
                routes.instances.push(Arc::new(Instance {
                    in_flight: counter(&node.address, node_id),
                    address: node.address,
                    node: node_id,
                    version: stored.version.clone(),
                    expires_at,
                }));
            }
        }
        routes
    }

    /// The parsed descriptor a record names (by hash) or holds (older
    /// records), parsed once per content.
    fn descriptor_of(&self, ns: &str, stored: &Stored) -> Option<(Vec<u8>, Arc<DescriptorPool>)> {
        let (hash, inline) = if !stored.descriptor_ref.is_empty() {
            (stored.descriptor_ref.clone(), None)
        } else if !stored.descriptor.is_empty() {
            (
                Sha256::digest(&stored.descriptor).to_vec(),
                Some(&stored.descriptor),
            )
        } else {
            return None;
        };
        if let Some(pool) = lock(&self.shared.pools).get(&hash) {
            return Some((hash, pool.clone()));
        }
        let bytes = match inline {
            Some(b) => b.clone(),
            None => registry::schema(&self.shared.replica, ns, &hash)?.descriptor,
        };
        match DescriptorPool::decode(bytes.as_slice()) {
            Ok(pool) => {
                let pool = Arc::new(pool);
                lock(&self.shared.pools).insert(hash.clone(), pool.clone());
                Some((hash, pool))
            }
            Err(e) => {
                tracing::warn!("service {} registered a bad descriptor: {e}", stored.name);
                None
            }
        }
    }
}

/// A service that is unknown here, as callers see it.
pub fn not_found(service: &str) -> Status {
    Status::not_found(format!("service {service} not found"))
}

fn read<T: ?Sized>(lock: &RwLock<Arc<T>>) -> Arc<T> {
    lock.read().unwrap_or_else(|e| e.into_inner()).clone()
}

fn write<T: ?Sized>(lock: &RwLock<Arc<T>>) -> std::sync::RwLockWriteGuard<'_, Arc<T>> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
