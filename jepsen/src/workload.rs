//! The clients, the test services, and the reads made after healing.
//!
//! Each client is one task with its own gRPC connection to one node (client
//! `c` talks to node `c mod n`). It runs operations one after another, each
//! with a client-side timeout, and records every one it sent. Each op
//! belongs to one of the workloads given to `--workload`, chosen at random:
//!
//! * `register`: registers `r/<k>`: 40% linearizable reads, 30% writes of a
//!   unique value `<c>-<n>`, 30% compare-and-set: read the value and
//!   version, then write a new unique value with `if_version` (`if_absent`
//!   when there was none). The read is an op of its own; the CAS is
//!   recorded as "from the value read to the new one" (values are unique,
//!   so the version read names the value).
//! * `append`: lists `a/<k>`, JSON arrays of unique integers: 60% appends
//!   (read the list and version, write the list and one new element with
//!   `if_version`/`if_absent`; a conflict fails that append, and the next
//!   one starts from a fresh read), 40% reads.
//! * `unique`: 70% writes of a fresh key `w/<c>/<n>` = `<c>-<n>`, 30% reads
//!   of a unique key some client has had acknowledged.
//! * `events`: publishes of a unique event `<c>-<n>` (also its message id)
//!   to the topic [`crate::events::TOPIC`]; the consumers and the final
//!   reads of the topic are in [`crate::events`].
//!
//! Register and list keys rotate: a few are live at a time, and each is
//! retired for a fresh one after [`OPS_PER_KEY`] ops, which bounds the
//! linearizability search per key.
//!
//! A write refused with a definite error (invalid argument, permission
//! denied, a compare-and-set conflict `aborted`, …) is `Fail`: not applied.
//! One that times out, loses its connection or meets
//! `unavailable`/`deadline exceeded`/`unknown`/`internal` is `Unknown`. A
//! read answered `not found` is an `Ok` read of nothing; any other error
//! fails it. After an error other than a conflict the client drops its
//! connection and connects again (to the node's current address: a
//! restarted node listens on new ports), so a dead or frozen node never
//! stalls it for longer than one timeout.
//!
//! Beside the clients, [`services`] registers a test service `jepsen-<n>`
//! through a different node every couple of seconds (as the admin, through
//! `Registry.Register`), for the registry convergence check.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_proto::registry::{ListRequest, Node as ServiceNode, Options, Service};
use micro_proto::store::{ReadOptions, ReadRequest, Record, WriteOptions, WriteRequest};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::checker::{NodeScan, SERVICE_PREFIX};
use crate::cluster::Addrs;
use crate::history::{Clock, Kind, Op, Outcome, FINAL_CLIENT};

/// The namespace the store is used in.
const NAMESPACE: &str = "micro";
/// Ops on one register or list key before it is retired.
pub const OPS_PER_KEY: u32 = 250;
/// Register and list keys live at a time (each).
const LIVE_KEYS: usize = 3;

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// read, write and compare-and-set registers r/<k>
    Register,
    /// append to lists a/<k> with compare-and-set, and read them
    Append,
    /// write fresh keys w/<c>/<n> once, read acknowledged ones back
    Unique,
    /// publish unique events to a topic, consumed by a group and by plain
    /// streams on every node (see `events`)
    Events,
}

/// The live keys of one kind: each slot holds a key until it has had its
/// ops, then a fresh one takes its place.
pub struct Keys {
    prefix: &'static str,
    slots: Vec<(u64, u32)>,
    next: u64,
}

impl Keys {
    fn new(prefix: &'static str) -> Keys {
        Keys {
            prefix,
            slots: (0..LIVE_KEYS as u64).map(|k| (k, 0)).collect(),
            next: LIVE_KEYS as u64,
        }
    }

    /// A live key for an op costing `ops` ops.
    fn pick(&mut self, rng: &mut StdRng, ops: u32) -> String {
        let i = rng.gen_range(0..self.slots.len());
        if self.slots[i].1 + ops > OPS_PER_KEY {
            self.slots[i] = (self.next, 0);
            self.next += 1;
        }
        self.slots[i].1 += ops;
        format!("{}{}", self.prefix, self.slots[i].0)
    }
}

/// What the clients share.
pub struct Shared {
    /// unique keys whose write was acknowledged, with their value
    pub acked: Mutex<Vec<(String, String)>>,
    pub registers: Mutex<Keys>,
    pub lists: Mutex<Keys>,
    /// the next list element (unique in the run)
    pub element: AtomicU64,
    pub ops: AtomicU64,
    pub ok: AtomicU64,
    pub unknown: AtomicU64,
    pub failed: AtomicU64,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            acked: Mutex::default(),
            registers: Mutex::new(Keys::new("r/")),
            lists: Mutex::new(Keys::new("a/")),
            element: AtomicU64::new(1),
            ops: AtomicU64::default(),
            ok: AtomicU64::default(),
            unknown: AtomicU64::default(),
            failed: AtomicU64::default(),
        }
    }
}

/// How a client runs.
#[derive(Clone)]
pub struct ClientConfig {
    pub id: usize,
    pub node: usize,
    pub seed: u64,
    pub op_timeout: Duration,
    /// the workloads to draw ops from (not empty)
    pub workloads: Vec<Workload>,
    /// Read the local replica (`ReadOptions.stale`) instead of reading
    /// linearizably: a self-test of the checker, which should then find
    /// stale reads.
    pub stale_reads: bool,
}

pub(crate) fn describe(s: &tonic::Status) -> String {
    let mut m = format!("{:?}: {}", s.code(), s.message());
    if m.len() > 160 {
        let mut cut = 160;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// The outcome of a write that got an error status.
pub(crate) fn write_error(s: &tonic::Status) -> Outcome {
    use tonic::Code::*;
    match s.code() {
        // Refused before anything was proposed, or a compare-and-set whose
        // condition did not hold (which changes nothing).
        InvalidArgument | PermissionDenied | Unauthenticated | AlreadyExists | OutOfRange
        | Unimplemented | NotFound | FailedPrecondition | ResourceExhausted | Aborted => {
            Outcome::Fail
        }
        // unavailable, deadline exceeded, unknown, internal, cancelled, a
        // broken connection: it may have been applied.
        _ => Outcome::Unknown,
    }
}

/// A write's condition.
#[derive(Clone, Copy)]
pub(crate) enum Cond {
    None,
    Absent,
    Version(u64),
}

/// What a call came to: the outcome, a value read, the version, why not.
pub(crate) struct Done {
    pub(crate) outcome: Outcome,
    pub(crate) value: Option<String>,
    pub(crate) version: Option<u64>,
    pub(crate) error: Option<String>,
    /// a compare-and-set conflict (the connection is fine)
    conflict: bool,
}

/// Writes `key = value` through `client`, under `cond`.
pub(crate) async fn write(
    client: &micro::Client,
    key: &str,
    value: &str,
    cond: Cond,
    limit: Duration,
) -> Done {
    let options = match cond {
        Cond::None => None,
        Cond::Absent => Some(WriteOptions {
            if_absent: true,
            ..Default::default()
        }),
        Cond::Version(v) => Some(WriteOptions {
            if_version: v,
            ..Default::default()
        }),
    };
    let req = WriteRequest {
        record: Some(Record {
            key: key.to_string(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        options,
    };
    let (outcome, version, error, conflict) =
        match tokio::time::timeout(limit, client.store().write(req)).await {
            Ok(Ok(r)) => (Outcome::Ok, Some(r.into_inner().version), None, false),
            Ok(Err(s)) => (
                write_error(&s),
                None,
                Some(describe(&s)),
                s.code() == tonic::Code::Aborted,
            ),
            Err(_) => (
                Outcome::Unknown,
                None,
                Some(format!("no reply within {}s", limit.as_secs())),
                false,
            ),
        };
    Done {
        outcome,
        value: None,
        version,
        error,
        conflict,
    }
}

/// A linearizable (or, for the self-test, stale) read of `key`: `Ok` with
/// the value and version (`None` if not found), or `Fail`.
pub(crate) async fn read(client: &micro::Client, key: &str, limit: Duration, stale: bool) -> Done {
    let req = ReadRequest {
        key: key.to_string(),
        options: stale.then(|| ReadOptions {
            stale: true,
            ..Default::default()
        }),
    };
    let done = |outcome, value, version, error| Done {
        outcome,
        value,
        version,
        error,
        conflict: false,
    };
    match tokio::time::timeout(limit, client.store().read(req)).await {
        Ok(Ok(resp)) => {
            let records = resp.into_inner().records;
            match records.as_slice() {
                [r] if r.key == key => done(
                    Outcome::Ok,
                    Some(String::from_utf8_lossy(&r.value).into_owned()),
                    Some(r.version),
                    None,
                ),
                // Not what a point read may return: record it as a value no
                // one wrote, so the checks report it.
                other => done(
                    Outcome::Ok,
                    Some(format!(
                        "<{} records: {:?}>",
                        other.len(),
                        other
                            .iter()
                            .map(|r| (r.key.clone(), String::from_utf8_lossy(&r.value)))
                            .collect::<Vec<_>>()
                    )),
                    None,
                    None,
                ),
            }
        }
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => done(Outcome::Ok, None, None, None),
        Ok(Err(s)) => done(Outcome::Fail, None, None, Some(describe(&s))),
        Err(_) => done(
            Outcome::Fail,
            None,
            None,
            Some(format!("no reply within {}s", limit.as_secs())),
        ),
    }
}

/// A read of `key` as an op of `kind` (a register, a unique key or a
/// list), timed on `clock`.
async fn read_op(
    client: &micro::Client,
    (who, node): (usize, usize),
    kind: Kind,
    key: &str,
    limit: Duration,
    stale: bool,
    clock: Clock,
) -> Op {
    let mut op = Op::new(who, node, kind, key);
    op.start_us = clock.now();
    let got = read(client, key, limit, stale).await;
    op.end_us = clock.now();
    op.outcome = got.outcome;
    op.error = got.error;
    op.version = got.version;
    if kind == Kind::ReadList {
        match got.value.as_deref().map(serde_json::from_str::<Vec<u64>>) {
            Some(Ok(list)) => op.list = Some(list),
            // unreadable: keep the text, which the checks report
            Some(Err(_)) => op.value = got.value,
            None => {}
        }
    } else {
        op.value = got.value;
    }
    op
}

/// Connects to `addr`, giving up after a few seconds.
pub async fn connect(addr: &str) -> Option<micro::Client> {
    tokio::time::timeout(
        Duration::from_secs(5),
        micro::Client::connect(addr, NAMESPACE),
    )
    .await
    .ok()?
    .ok()
}

/// Runs one client until `stop` is raised; returns what it did.
pub async fn client(
    cfg: ClientConfig,
    addrs: Arc<Addrs>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let mut conn: Option<(String, micro::Client)> = None;
    let mut n = 0u64;
    let mut ops: Vec<Op> = Vec::new();
    let limit = cfg.op_timeout;
    while !stop.load(Ordering::Relaxed) {
        let Some((node, addr)) = addrs.route(cfg.node) else {
            // down: wait for the nemesis to restart it
            conn = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if conn.as_ref().map(|(a, _)| a != &addr).unwrap_or(true) {
            match connect(&addr).await {
                Some(c) => conn = Some((addr, c)),
                None => {
                    conn = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let Some((_, client)) = conn.as_ref() else {
            continue;
        };
        let who = (cfg.id, node);
        let Some(&workload) = cfg.workloads.choose(&mut rng) else {
            return ops;
        };
        let roll = rng.gen_range(0..100);
        n += 1;
        let value = format!("{}-{n}", cfg.id);
        let first = ops.len();
        // the last op's outcome, and whether it was a conflict
        let mut reconnect = false;
        match workload {
            Workload::Unique => {
                let target = if roll >= 70 {
                    let acked = shared.acked.lock().unwrap_or_else(|e| e.into_inner());
                    (!acked.is_empty()).then(|| acked[rng.gen_range(0..acked.len())].0.clone())
                } else {
                    None
                };
                match target {
                    Some(key) => {
                        let op = read_op(
                            client,
                            who,
                            Kind::ReadUnique,
                            &key,
                            limit,
                            cfg.stale_reads,
                            clock,
                        )
                        .await;
                        ops.push(op);
                    }
                    None => {
                        let key = format!("w/{}/{n}", cfg.id);
                        let mut op = Op::new(cfg.id, cfg.node, Kind::WriteUnique, &key);
                        op.start_us = clock.now();
                        let done = write(client, &key, &value, Cond::None, limit).await;
                        op.end_us = clock.now();
                        op.value = Some(value.clone());
                        (op.outcome, op.version, op.error) =
                            (done.outcome, done.version, done.error);
                        if op.outcome == Outcome::Ok {
                            shared
                                .acked
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push((key, value));
                        }
                        ops.push(op);
                    }
                }
            }
            Workload::Events => {
                let op = crate::events::publish(client, who, &value, limit, clock).await;
                reconnect = op.outcome != Outcome::Ok;
                ops.push(op);
            }
            Workload::Register => {
                let cost = if roll >= 70 { 2 } else { 1 };
                let key = shared
                    .registers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pick(&mut rng, cost);
                if roll < 40 {
                    let op = read_op(
                        client,
                        who,
                        Kind::ReadRegister,
                        &key,
                        limit,
                        cfg.stale_reads,
                        clock,
                    )
                    .await;
                    ops.push(op);
                } else {
                    // a plain write, or a CAS from what a read returns
                    let mut cond = Cond::None;
                    let mut expected = None;
                    let mut kind = Kind::WriteRegister;
                    if roll >= 70 {
                        let r = read_op(
                            client,
                            who,
                            Kind::ReadRegister,
                            &key,
                            limit,
                            cfg.stale_reads,
                            clock,
                        )
                        .await;
                        let read_ok = r.outcome == Outcome::Ok;
                        cond = match r.version {
                            Some(v) if r.value.is_some() => Cond::Version(v),
                            _ => Cond::Absent,
                        };
                        expected = r.value.clone();
                        ops.push(r);
                        kind = Kind::CasRegister;
                        if !read_ok {
                            kind = Kind::ReadRegister; // no CAS after a failed read
                        }
                    }
                    if kind != Kind::ReadRegister {
                        let mut op = Op::new(cfg.id, cfg.node, kind, &key);
                        op.expected = expected;
                        op.start_us = clock.now();
                        let done = write(client, &key, &value, cond, limit).await;
                        op.end_us = clock.now();
                        op.value = Some(value.clone());
                        (op.outcome, op.version, op.error) =
                            (done.outcome, done.version, done.error);
                        reconnect = op.outcome != Outcome::Ok && !done.conflict;
                        ops.push(op);
                    }
                }
            }
            Workload::Append => {
                let cost = if roll < 60 { 2 } else { 1 };
                let key = shared
                    .lists
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pick(&mut rng, cost);
                let r = read_op(
                    client,
                    who,
                    Kind::ReadList,
                    &key,
                    limit,
                    cfg.stale_reads,
                    clock,
                )
                .await;
                let base = (r.outcome == Outcome::Ok && r.value.is_none()).then(|| r.list.clone());
                let version = r.version;
                ops.push(r);
                if let (true, Some(base)) = (roll < 60, base) {
                    let element = shared.element.fetch_add(1, Ordering::Relaxed);
                    let mut list = base.clone().unwrap_or_default();
                    list.push(element);
                    let cond = match (&base, version) {
                        (Some(_), Some(v)) => Cond::Version(v),
                        _ => Cond::Absent,
                    };
                    let text = serde_json::to_string(&list).unwrap_or_default();
                    let mut op = Op::new(cfg.id, cfg.node, Kind::Append, &key);
                    op.list = base;
                    op.value = Some(element.to_string());
                    op.start_us = clock.now();
                    let done = write(client, &key, &text, cond, limit).await;
                    op.end_us = clock.now();
                    (op.outcome, op.version, op.error) = (done.outcome, done.version, done.error);
                    reconnect = op.outcome != Outcome::Ok && !done.conflict;
                    ops.push(op);
                }
            }
        }
        for op in &ops[first..] {
            shared.ops.fetch_add(1, Ordering::Relaxed);
            match op.outcome {
                Outcome::Ok => shared.ok.fetch_add(1, Ordering::Relaxed),
                Outcome::Fail => shared.failed.fetch_add(1, Ordering::Relaxed),
                Outcome::Unknown => shared.unknown.fetch_add(1, Ordering::Relaxed),
            };
            if op.kind.is_read() && op.outcome != Outcome::Ok {
                reconnect = true;
            }
            if !matches!(op.kind, Kind::CasRegister | Kind::Append)
                && op.kind.is_write()
                && op.outcome != Outcome::Ok
            {
                reconnect = true;
            }
        }
        if reconnect {
            conn = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    ops
}

/// Registers a test service `jepsen-<n>` every two seconds or so, through
/// the nodes in turn, until `stop` is raised; returns the attempts as ops
/// of client `id`.
pub async fn services(
    id: usize,
    addrs: Arc<Addrs>,
    nodes: usize,
    admin: String,
    clock: Clock,
    stop: Arc<AtomicBool>,
    op_timeout: Duration,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let node = n % nodes;
        n += 1;
        let Some(addr) = addrs.get(node) else {
            continue;
        };
        let Some(client) = connect(&addr).await else {
            continue;
        };
        client.set_token(Some(&admin));
        let name = format!("{SERVICE_PREFIX}{n}");
        let svc = Service {
            name: name.clone(),
            version: "1".into(),
            nodes: vec![ServiceNode {
                id: format!("i{n}"),
                address: format!("127.0.0.1:{}", 20_000 + n % 10_000),
                ..Default::default()
            }],
            options: Some(Options {
                ttl: 3600,
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut op = Op::new(id, node, Kind::Register, &name);
        op.value = Some(name.clone());
        op.start_us = clock.now();
        let reply = tokio::time::timeout(op_timeout, client.registry().register(svc)).await;
        op.end_us = clock.now();
        (op.outcome, op.error) = match reply {
            Ok(Ok(_)) => (Outcome::Ok, None),
            Ok(Err(s)) => (write_error(&s), Some(describe(&s))),
            Err(_) => (
                Outcome::Unknown,
                Some(format!("no reply within {}s", op_timeout.as_secs())),
            ),
        };
        ops.push(op);
    }
    ops
}

/// Retries `what` against node `node` (reconnecting as needed) until it
/// succeeds or `limit` passes; returns the last error otherwise.
async fn with_retries<T, F, Fut>(
    addrs: &Addrs,
    node: usize,
    limit: Duration,
    mut what: F,
) -> Result<T, String>
where
    F: FnMut(micro::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let err = match addrs.get(node) {
            // After the heal a node that is down stays down (it would not
            // start): no use waiting for it.
            None => return Err(format!("node {node} is down")),
            Some(addr) => match connect(&addr).await {
                None => format!("cannot connect to node {node} at {addr}"),
                Some(c) => match what(c).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                },
            },
        };
        if Instant::now() > deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes a marker key through every node until each write is
/// acknowledged: afterwards every node has a leader that has committed in
/// its own term, so no write left over from the faults can still commit.
pub async fn barrier(addrs: &Addrs, nodes: &[usize], clock: Clock) -> Result<(), String> {
    for &node in nodes {
        let key = format!("jepsen/barrier/{node}");
        let value = format!("{}", clock.now());
        with_retries(addrs, node, Duration::from_secs(30), |c| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let done = write(&c, &key, &value, Cond::None, Duration::from_secs(15)).await;
                match done.outcome {
                    Outcome::Ok => Ok(()),
                    _ => Err(done.error.unwrap_or_default()),
                }
            }
        })
        .await
        .map_err(|e| format!("no write through node {node} succeeded: {e}"))?;
    }
    Ok(())
}

/// Every record under `prefix` on node `node`, read in linearizable pages.
pub async fn scan(
    addrs: &Addrs,
    node: usize,
    prefix: &str,
) -> Result<BTreeMap<String, String>, String> {
    const PAGE: u64 = 2000;
    with_retries(addrs, node, Duration::from_secs(30), |c| async move {
        let mut out = BTreeMap::new();
        let mut offset = 0;
        loop {
            let req = ReadRequest {
                key: prefix.to_string(),
                options: Some(ReadOptions {
                    prefix: true,
                    limit: PAGE,
                    offset,
                    ..Default::default()
                }),
            };
            let resp = tokio::time::timeout(Duration::from_secs(20), c.store().read(req))
                .await
                .map_err(|_| "no reply within 20s".to_string())?
                .map_err(|s| describe(&s))?;
            let records = resp.into_inner().records;
            let got = records.len() as u64;
            for r in records {
                out.insert(r.key, String::from_utf8_lossy(&r.value).into_owned());
            }
            if got < PAGE {
                return Ok(out);
            }
            offset += PAGE;
        }
    })
    .await
}

/// The test services node `node` lists (`Registry.ListServices`, as the
/// admin), retried for up to 30 s.
async fn listed_services(
    addrs: &Addrs,
    node: usize,
    admin: &str,
) -> Result<BTreeSet<String>, String> {
    with_retries(addrs, node, Duration::from_secs(30), |c| async move {
        c.set_token(Some(admin));
        let reply = tokio::time::timeout(
            Duration::from_secs(15),
            c.registry().list_services(ListRequest::default()),
        )
        .await
        .map_err(|_| "no reply within 15s".to_string())?
        .map_err(|s| describe(&s))?;
        Ok(reply
            .into_inner()
            .services
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with(SERVICE_PREFIX))
            .collect())
    })
    .await
}

/// The state after healing: on every node, linearizable scans of the
/// prefixes used and the test services listed; then linearizable point
/// reads, on every node, of every register and list the run used and of
/// the acknowledged unique keys (a random `sample` of them; 0: all),
/// returned as ops of client `final`.
pub async fn final_state(
    addrs: Arc<Addrs>,
    nodes: &[usize],
    admin: &str,
    history: &[Op],
    sample: usize,
    rng: &mut StdRng,
    clock: Clock,
) -> (Vec<Op>, Vec<NodeScan>) {
    let used = |p: &str| history.iter().any(|o| o.key.starts_with(p));
    let prefixes: Vec<&str> = ["w/", "r/", "a/"].into_iter().filter(|p| used(p)).collect();
    let registered = history.iter().any(|o| o.kind == Kind::Register);
    let mut scans = Vec::new();
    for &node in nodes {
        let mut by_prefix = BTreeMap::new();
        for prefix in &prefixes {
            by_prefix.insert(prefix.to_string(), scan(&addrs, node, prefix).await);
        }
        let services = if registered {
            Some(listed_services(&addrs, node, admin).await)
        } else {
            None
        };
        scans.push(NodeScan {
            node,
            by_prefix,
            services,
        });
    }
    let mut keys: BTreeSet<(Kind, String)> = BTreeSet::new();
    for o in history {
        if o.kind.is_register() {
            keys.insert((Kind::ReadRegister, o.key.clone()));
        } else if matches!(o.kind, Kind::Append | Kind::ReadList) {
            keys.insert((Kind::ReadList, o.key.clone()));
        }
    }
    let mut keys: Vec<(Kind, String)> = keys.into_iter().collect();
    let mut acked: Vec<String> = history
        .iter()
        .filter(|o| o.kind == Kind::WriteUnique && o.outcome == Outcome::Ok)
        .map(|o| o.key.clone())
        .collect();
    if sample > 0 && acked.len() > sample {
        acked.shuffle(rng);
        acked.truncate(sample);
        println!(
            "{} point-reading a random {} of the acknowledged unique keys (the scans cover all)",
            clock.stamp(),
            acked.len()
        );
    }
    keys.extend(acked.into_iter().map(|k| (Kind::ReadUnique, k)));
    (final_reads(addrs, nodes, keys, clock).await, scans)
}

/// How long the final reads may retry in all.
const FINAL_READS_PATIENCE: Duration = Duration::from_secs(120);

/// Linearizable point reads of `keys` on every node, after healing, as
/// operations of the history (client `final`). Each read is retried until
/// it gets an answer (or 30 s pass; the failed attempt is then recorded).
/// After [`FINAL_READS_PATIENCE`] in all, each key gets one attempt: a
/// cluster that cannot serve (the no-fsync self-test can leave one whose
/// leader stopped) must not hold the run for 30 s per key.
async fn final_reads(
    addrs: Arc<Addrs>,
    nodes: &[usize],
    keys: Vec<(Kind, String)>,
    clock: Clock,
) -> Vec<Op> {
    const WORKERS_PER_NODE: usize = 3;
    let patience = Instant::now() + FINAL_READS_PATIENCE;
    let keys = Arc::new(keys);
    let mut tasks = tokio::task::JoinSet::new();
    for &node in nodes {
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..WORKERS_PER_NODE {
            let (keys, next, addrs) = (keys.clone(), next.clone(), addrs.clone());
            tasks.spawn(async move {
                let mut ops = Vec::new();
                let mut conn: Option<micro::Client> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((kind, key)) = keys.get(i) else {
                        return ops;
                    };
                    let deadline = (Instant::now() + Duration::from_secs(30)).min(patience);
                    loop {
                        if conn.is_none() {
                            if let Some(addr) = addrs.get(node) {
                                conn = connect(&addr).await;
                            }
                        }
                        let who = (FINAL_CLIENT, node);
                        let op = match &conn {
                            Some(c) => {
                                read_op(c, who, *kind, key, Duration::from_secs(15), false, clock)
                                    .await
                            }
                            None => {
                                let mut op = Op::new(FINAL_CLIENT, node, *kind, key);
                                op.start_us = clock.now();
                                op.end_us = op.start_us;
                                op.outcome = Outcome::Fail;
                                op.error = Some(format!("cannot connect to node {node}"));
                                op
                            }
                        };
                        // A node down after the heal stays down: no retries.
                        let down = addrs.get(node).is_none();
                        if op.outcome == Outcome::Ok || down || Instant::now() > deadline {
                            ops.push(op);
                            break;
                        }
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            });
        }
    }
    let mut ops = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(part) = done {
            ops.extend(part);
        }
    }
    ops.sort_by_key(|o| (o.start_us, o.node));
    ops
}
