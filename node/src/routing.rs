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

use crate::keys::registry as keys;
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
        let pick = choose(&self.instances, |i| usable(i) && i.is_on(me))
            .or_else(|| choose(&self.instances, usable))?;
        Some(pick.clone())
    }

    /// Whether any instance is registered and unexpired.
    pub fn any_live(&self) -> bool {
        let now = now_millis();
        self.instances.iter().any(|i| i.live(now))
    }
}

/// Two of the instances `keep` lets through, drawn at random, and of
/// these the one with fewer calls in flight (power of two choices);
/// without allocating, as it runs on every call.
fn choose(
    instances: &[Arc<Instance>],
    keep: impl Fn(&&Arc<Instance>) -> bool,
) -> Option<&Arc<Instance>> {
    let n = instances.iter().filter(&keep).count();
    let nth = |k: usize| instances.iter().filter(&keep).nth(k);
    match n {
        0 => None,
        1 => nth(0),
        n => {
            let mut rng = rand::thread_rng();
            let a = nth(rng.gen_range(0..n))?;
            let b = nth(rng.gen_range(0..n))?;
            let load = |i: &Arc<Instance>| i.in_flight.load(Ordering::Relaxed);
            Some(if load(b) < load(a) { b } else { a })
        }
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

    /// Every service of `namespace` with its routes, by name: a snapshot
    /// (the table's `Arc` is cloned, no lock is held while listing).
    pub fn services_in(&self, namespace: &str) -> Vec<(String, Arc<Routes>)> {
        let table = read(&self.shared.current);
        let mut services: Vec<(String, Arc<Routes>)> = table
            .get(namespace)
            .map(|s| s.iter().map(|(n, r)| (n.clone(), r.clone())).collect())
            .unwrap_or_default();
        services.sort_by(|a, b| a.0.cmp(&b.0));
        services
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
                        if let Some(k) = keys::parse(key) {
                            touched.insert((k.namespace.to_string(), k.service.to_string()));
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
        let records = match registry::records(&self.shared.replica, keys::RECORDS) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("cannot read the registry: {}", e.message());
                return;
            }
        };
        let mut grouped: HashMap<(String, String), Vec<Registration>> = HashMap::new();
        for reg in records {
            let Some(at) =
                keys::parse(&reg.key).map(|k| (k.namespace.to_string(), k.service.to_string()))
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
        let records = match registry::records(&self.shared.replica, &keys::service(ns, svc)) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use micro_proto::registry::{Node, Options, Service};
    use std::time::Duration;

    async fn replica(dir: &std::path::Path) -> Replica {
        let r = Replica::open(dir, 1, micro_raft::Options::default())
            .await
            .expect("open");
        r.bootstrap_alone("127.0.0.1:0".into())
            .await
            .expect("bootstrap");
        r
    }

    fn greeter(node: u64, port: u16, ttl: i64, descriptor: Vec<u8>) -> Service {
        Service {
            name: "greeter".into(),
            version: "1".into(),
            nodes: vec![Node {
                id: format!("g-{node}-{port}"),
                address: format!("127.0.0.1:{port}"),
                metadata: [("node".to_string(), node.to_string())].into(),
            }],
            options: Some(Options {
                ttl,
                domain: String::new(),
            }),
            descriptor,
            ..Default::default()
        }
    }

    /// Waits up to a second for `ok` to hold on the table.
    async fn within_a_second(what: &str, ok: impl Fn() -> bool) {
        for _ in 0..100 {
            if ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("within a second: {what}");
    }

    fn addresses(t: &RoutingTable) -> Vec<String> {
        let now = now_millis();
        let mut a: Vec<String> = t
            .routes("micro", "greeter")
            .map(|r| {
                r.instances
                    .iter()
                    .filter(|i| i.live(now))
                    .map(|i| i.address.clone())
                    .collect()
            })
            .unwrap_or_default();
        a.sort();
        a
    }

    /// A descriptor set of one file, package `greeter`, with one service
    /// `Greeter` whose methods are `methods`.
    fn descriptor(methods: &[&str]) -> Vec<u8> {
        use prost::Message;
        use prost_types::{
            DescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto,
            ServiceDescriptorProto,
        };
        FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("greeter.proto".into()),
                package: Some("greeter".into()),
                message_type: vec![DescriptorProto {
                    name: Some("Empty".into()),
                    ..Default::default()
                }],
                service: vec![ServiceDescriptorProto {
                    name: Some("Greeter".into()),
                    method: methods
                        .iter()
                        .map(|m| MethodDescriptorProto {
                            name: Some(m.to_string()),
                            input_type: Some(".greeter.Empty".into()),
                            output_type: Some(".greeter.Empty".into()),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                syntax: Some("proto3".into()),
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    #[tokio::test]
    async fn routes_follow_registrations_expiry_and_deregistrations_without_reads_per_call() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        let t = RoutingTable::start(r.clone(), 1);
        registry::register(&r, "micro", greeter(1, 5000, 60, Vec::new()))
            .await
            .unwrap();
        registry::register(&r, "micro", greeter(2, 6000, 1, Vec::new()))
            .await
            .unwrap();
        within_a_second("both registrations are routed", || {
            addresses(&t) == ["127.0.0.1:5000", "127.0.0.1:6000"]
        })
        .await;

        // Lookups and picks read nothing from the registry.
        let before = registry::record_scans();
        let down = t.down();
        for _ in 0..1000 {
            let routes = t.routes("micro", "greeter").expect("routes");
            let pick = routes.pick(1, &down, None).expect("an instance");
            assert_eq!(pick.address, "127.0.0.1:5000", "this node's first");
        }
        assert_eq!(
            registry::record_scans(),
            before,
            "no registry read per call"
        );

        // A 1 s TTL runs out without a heartbeat.
        within_a_second("the expired instance is gone", || {
            addresses(&t) == ["127.0.0.1:5000"]
        })
        .await;
        registry::deregister(&r, "micro", &greeter(1, 5000, 60, Vec::new()))
            .await
            .unwrap();
        within_a_second("the deregistered instance is gone", || {
            t.routes("micro", "greeter").is_none()
        })
        .await;
        assert!(
            registry::record_scans() > before,
            "a change is read once, by the table"
        );
    }

    #[tokio::test]
    async fn a_changed_descriptor_is_used_at_once_and_parsed_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        let t = RoutingTable::start(r.clone(), 1);
        let methods = |t: &RoutingTable| -> Vec<String> {
            t.routes("micro", "greeter")
                .and_then(|r| r.descriptor.clone())
                .and_then(|p| p.get_service_by_name("greeter.Greeter"))
                .map(|s| s.methods().map(|m| m.name().to_string()).collect())
                .unwrap_or_default()
        };
        let v1 = descriptor(&["Call"]);
        registry::register(&r, "micro", greeter(1, 5000, 60, v1.clone()))
            .await
            .unwrap();
        registry::register(&r, "micro", greeter(2, 6000, 60, v1.clone()))
            .await
            .unwrap();
        within_a_second("the first descriptor", || methods(&t) == ["Call"]).await;
        let first = t.routes("micro", "greeter").unwrap().descriptor.clone();
        // A heartbeat with the same schemas keeps the parsed pool.
        registry::register(&r, "micro", greeter(1, 5000, 60, v1))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = t.routes("micro", "greeter").unwrap().descriptor.clone();
        assert!(Arc::ptr_eq(&first.unwrap(), &again.unwrap()));

        // `micro update`: the new registration's descriptor wins.
        registry::register(
            &r,
            "micro",
            greeter(1, 5000, 60, descriptor(&["Call", "Hello"])),
        )
        .await
        .unwrap();
        within_a_second("the new descriptor", || methods(&t) == ["Call", "Hello"]).await;
    }

    #[tokio::test]
    async fn a_heartbeat_does_not_rewrite_the_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        let big = descriptor(&["Call"]);
        let schema_versions = || {
            r.reader()
                .scan(b"registry-schemas/micro/", now_millis(), false)
                .map(|i| i.unwrap().1.version)
                .collect::<Vec<_>>()
        };
        registry::register(&r, "micro", greeter(1, 5000, 60, big.clone()))
            .await
            .unwrap();
        let first = schema_versions();
        assert_eq!(first.len(), 1, "the descriptor is stored once");
        registry::register(&r, "micro", greeter(1, 5000, 60, big.clone()))
            .await
            .unwrap();
        registry::register(&r, "micro", greeter(2, 6000, 60, big))
            .await
            .unwrap();
        assert_eq!(schema_versions(), first, "heartbeats leave it alone");
        let record = r
            .reader()
            .get(b"registry/micro/greeter/1/g-1-5000", now_millis())
            .unwrap()
            .unwrap();
        assert!(
            record.value.len() < 200,
            "a small record: {}",
            record.value.len()
        );
        // And reads still see the descriptor whole.
        let got = registry::list(&r, "micro").unwrap();
        assert_eq!(got[0].nodes.len(), 2);
    }

    #[tokio::test]
    async fn nodes_gossip_holds_down_are_skipped_and_return_when_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = replica(dir.path()).await;
        let t = RoutingTable::start(r.clone(), 1);
        registry::register(&r, "micro", greeter(2, 6000, 60, Vec::new()))
            .await
            .unwrap();
        within_a_second("routed", || addresses(&t).len() == 1).await;
        let key = [7u8; 32];
        let start = |id: u64| {
            micro_gossip::Gossip::start(micro_gossip::Config {
                node_id: id,
                bind: "127.0.0.1:0".parse().unwrap(),
                advertise: "127.0.0.1:0".parse().unwrap(),
                key,
            })
        };
        let one = start(1).await.unwrap();
        let two = start(2).await.unwrap();
        t.follow_gossip(one.clone());
        one.announce(two.local_addr());
        let live = |t: &RoutingTable| {
            let routes = t.routes("micro", "greeter").unwrap();
            routes.pick(1, &t.down(), None).is_some()
        };
        for _ in 0..100 {
            if one.state_of(2) == Some(micro_gossip::State::Alive) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(live(&t), "node 2 is up");
        let addr = two.local_addr();
        two.shutdown().await;
        for _ in 0..300 {
            if one.state_of(2) == Some(micro_gossip::State::Down) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(one.state_of(2), Some(micro_gossip::State::Down));
        within_a_second("node 2's instance is skipped", || !live(&t)).await;
        let back = micro_gossip::Gossip::start(micro_gossip::Config {
            node_id: 2,
            bind: addr,
            advertise: addr,
            key,
        })
        .await
        .unwrap();
        back.announce(one.local_addr());
        for _ in 0..300 {
            if one.state_of(2) == Some(micro_gossip::State::Alive) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(one.state_of(2), Some(micro_gossip::State::Alive));
        within_a_second("node 2's instance is back", || live(&t)).await;
    }
}
