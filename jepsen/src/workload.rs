//! The clients, and the reads made after healing.
//!
//! Each client is one task with its own gRPC connection to one node (client
//! `c` talks to node `c mod n`). It runs operations one after another, each
//! with a client-side timeout, and records every one it sent:
//!
//! * 35%: write a fresh key `w/<c>/<n>` with the value `<c>-<n>`
//! * 25%: write a shared register `r/<k>` (k in 0..5) with the value
//!   `<c>-<n>` (so every value in the run is written at most once)
//! * 30%: linearizable read of a register
//! * 10%: linearizable read of a unique key some client has had
//!   acknowledged (a register read when there is none yet)
//!
//! A write that is refused with a definite error (invalid argument,
//! permission denied, …) is `Fail`; one that times out, loses its
//! connection or meets `unavailable`/`deadline exceeded`/`unknown` is
//! `Unknown`. A read answered `not found` is an `Ok` read of nothing; any
//! other error fails it. After any error the client drops its connection
//! and connects again (to the node's current address: a restarted node
//! listens on new ports), so a dead or frozen node never stalls it for
//! longer than one timeout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_proto::store::{ReadOptions, ReadRequest, Record, WriteRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Addrs;
use crate::history::{Clock, Kind, Op, Outcome, FINAL_CLIENT};

/// The shared registers are `r/0` .. `r/{REGISTERS-1}`.
pub const REGISTERS: usize = 5;
/// The namespace the store is used in.
const NAMESPACE: &str = "micro";

/// What the clients share.
#[derive(Default)]
pub struct Shared {
    /// unique keys whose write was acknowledged, with their value
    pub acked: Mutex<Vec<(String, String)>>,
    pub ops: AtomicU64,
    pub ok: AtomicU64,
    pub unknown: AtomicU64,
    pub failed: AtomicU64,
}

/// How a client runs.
#[derive(Clone)]
pub struct ClientConfig {
    pub id: usize,
    pub node: usize,
    pub seed: u64,
    pub op_timeout: Duration,
    /// Read the local replica (`ReadOptions.stale`) instead of reading
    /// linearizably: a self-test of the checker, which should then find
    /// stale reads.
    pub stale_reads: bool,
}

fn describe(s: &tonic::Status) -> String {
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
fn write_error(s: &tonic::Status) -> Outcome {
    use tonic::Code::*;
    match s.code() {
        // Refused before anything was proposed.
        InvalidArgument | PermissionDenied | Unauthenticated | AlreadyExists | OutOfRange
        | Unimplemented | NotFound | FailedPrecondition | ResourceExhausted => Outcome::Fail,
        // unavailable, deadline exceeded, unknown, internal, cancelled, a
        // broken connection: it may have been applied.
        _ => Outcome::Unknown,
    }
}

/// Writes `key = value` through `client`.
pub async fn write(
    client: &micro::Client,
    key: &str,
    value: &str,
    limit: Duration,
) -> (Outcome, Option<String>) {
    let req = WriteRequest {
        record: Some(Record {
            key: key.to_string(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    match tokio::time::timeout(limit, client.store().write(req)).await {
        Ok(Ok(_)) => (Outcome::Ok, None),
        Ok(Err(s)) => (write_error(&s), Some(describe(&s))),
        Err(_) => (
            Outcome::Unknown,
            Some(format!("no reply within {}s", limit.as_secs())),
        ),
    }
}

/// A linearizable read of `key`: `Ok` with the value (`None` if not
/// found), or `Fail`.
pub async fn read(
    client: &micro::Client,
    key: &str,
    limit: Duration,
    stale: bool,
) -> (Outcome, Option<String>, Option<String>) {
    let req = ReadRequest {
        key: key.to_string(),
        options: stale.then(|| ReadOptions {
            stale: true,
            ..Default::default()
        }),
    };
    match tokio::time::timeout(limit, client.store().read(req)).await {
        Ok(Ok(resp)) => {
            let records = resp.into_inner().records;
            match records.as_slice() {
                [r] if r.key == key => (
                    Outcome::Ok,
                    Some(String::from_utf8_lossy(&r.value).into_owned()),
                    None,
                ),
                // Not what a point read may return: record it as a value no
                // one wrote, so the checks report it.
                other => (
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
                ),
            }
        }
        Ok(Err(s)) if s.code() == tonic::Code::NotFound => (Outcome::Ok, None, None),
        Ok(Err(s)) => (Outcome::Fail, None, Some(describe(&s))),
        Err(_) => (
            Outcome::Fail,
            None,
            Some(format!("no reply within {}s", limit.as_secs())),
        ),
    }
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
    let mut ops = Vec::new();
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
        let roll = rng.gen_range(0..100);
        let unique_target = if roll >= 90 {
            let acked = shared.acked.lock().unwrap_or_else(|e| e.into_inner());
            (!acked.is_empty()).then(|| acked[rng.gen_range(0..acked.len())].0.clone())
        } else {
            None
        };
        n += 1;
        let value = format!("{}-{n}", cfg.id);
        let (kind, key) = match roll {
            0..35 => (Kind::WriteUnique, format!("w/{}/{n}", cfg.id)),
            35..60 => (
                Kind::WriteRegister,
                format!("r/{}", rng.gen_range(0..REGISTERS)),
            ),
            _ => match unique_target {
                Some(k) => (Kind::ReadUnique, k),
                None => (
                    Kind::ReadRegister,
                    format!("r/{}", rng.gen_range(0..REGISTERS)),
                ),
            },
        };
        let start_us = clock.now();
        let (outcome, value, error) = if kind.is_write() {
            let (o, e) = write(client, &key, &value, cfg.op_timeout).await;
            (o, Some(value), e)
        } else {
            read(client, &key, cfg.op_timeout, cfg.stale_reads).await
        };
        let end_us = clock.now();
        shared.ops.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Ok => shared.ok.fetch_add(1, Ordering::Relaxed),
            Outcome::Fail => shared.failed.fetch_add(1, Ordering::Relaxed),
            Outcome::Unknown => shared.unknown.fetch_add(1, Ordering::Relaxed),
        };
        if kind == Kind::WriteUnique && outcome == Outcome::Ok {
            if let Some(v) = &value {
                shared
                    .acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((key.clone(), v.clone()));
            }
        }
        let bad = outcome != Outcome::Ok;
        ops.push(Op {
            id: 0,
            client: cfg.id,
            node,
            kind,
            key,
            value,
            outcome,
            error,
            start_us,
            end_us,
        });
        if bad {
            conn = None;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
            None => format!("node {node} is down"),
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
                match write(&c, &key, &value, Duration::from_secs(15)).await {
                    (Outcome::Ok, _) => Ok(()),
                    (_, e) => Err(e.unwrap_or_default()),
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

/// Linearizable point reads of `keys` on every node, after healing, as
/// operations of the history (client `final`). Each read is retried until
/// it gets an answer (or 30 s pass; the failed attempt is then recorded).
pub async fn final_reads(
    addrs: Arc<Addrs>,
    nodes: &[usize],
    keys: Vec<(Kind, String)>,
    clock: Clock,
) -> Vec<Op> {
    const WORKERS_PER_NODE: usize = 3;
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
                    let deadline = Instant::now() + Duration::from_secs(30);
                    loop {
                        if conn.is_none() {
                            if let Some(addr) = addrs.get(node) {
                                conn = connect(&addr).await;
                            }
                        }
                        let start_us = clock.now();
                        let (outcome, value, error) = match &conn {
                            Some(c) => read(c, key, Duration::from_secs(15), false).await,
                            None => (
                                Outcome::Fail,
                                None,
                                Some(format!("cannot connect to node {node}")),
                            ),
                        };
                        let end_us = clock.now();
                        let done = outcome == Outcome::Ok || Instant::now() > deadline;
                        if done {
                            ops.push(Op {
                                id: 0,
                                client: FINAL_CLIENT,
                                node,
                                kind: *kind,
                                key: key.clone(),
                                value,
                                outcome,
                                error,
                                start_us,
                                end_us,
                            });
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
