//! `micro-bench events`: Micro's events and broker next to NATS JetStream
//! and core NATS, in one run on this machine.
//!
//! It starts a 1-node and a 3-node Micro cluster (`micro server`
//! processes, see [`crate::cluster`]) and a 1-server and a 3-server
//! `nats-server -js` (see [`crate::nats`]; an R1 and an R3 file stream),
//! then measures, case by case, each system in turn (rounds alternate which
//! goes first), through one client connection per publisher or consumer:
//! tonic for Micro, async-nats for NATS.
//!
//! * `publish`: P publishers, each awaiting its ack before its next
//!   publish (Micro `Events.Publish`'s reply, after commit; JetStream's
//!   publish ack), on the leader (Micro's Raft leader, the stream's
//!   leader). Rate = acked publishes/s; latency = publish to ack.
//! * `publish→consume`: one publisher at a fixed rate (a publish every
//!   1/rate s, not waiting for the previous ack) on the leader, one
//!   consumer on another node (on 1 node: the same one) in a durable
//!   group with explicit acks (Micro: `Consume` with a group, `Ack` in
//!   batches from a task of its own; NATS: a durable pull consumer,
//!   `ack()` per message). Latency = publish call to receipt; rate =
//!   events received/s.
//! * `broker fan-out`: K subscribers spread over the 3 nodes, publishers
//!   spread likewise, each awaiting its call (Micro `Broker.Publish`; core
//!   NATS publish then flush, the server's PONG). Rate = messages
//!   delivered to subscribers/s; latency = the publish call.
//!
//! CPU per operation: user + system seconds of the system's server
//! processes during the case, over its operations (for fan-out: over
//! deliveries).
//!
//! Must never: assert a figure, or report a number it did not measure (a
//! case that cannot run on one side says why instead).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use micro_proto::broker::{PublishRequest as BrokerPublish, SubscribeRequest};
use micro_proto::events::{AckRequest, ConsumeRequest, PublishRequest};

use crate::cluster::Cluster;
use crate::cpu;
use crate::nats::{self, Nats};
use crate::phase::phase;

/// What a run measures; the flags of `micro-bench events`.
pub struct Opts {
    pub seconds: u64,
    pub rounds: usize,
    pub publishers: Vec<usize>,
    pub rate: u64,
    pub subscribers: usize,
    pub fanout_publishers: usize,
    pub payload: usize,
    pub cases: Vec<String>,
}

/// The longest one Micro call may take before it counts as an error (a
/// stuck call must not hold a phase open).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer or the subscribers get to see their first message.
const WARM_PATIENCE: Duration = Duration::from_secs(30);
/// How long the consumer gets, after the last publish, to receive the rest.
const DRAIN: Duration = Duration::from_secs(5);
/// The smallest payload: a send time (8 bytes) and a marker.
const MIN_PAYLOAD: usize = 9;
/// Payload markers: warm-up events are received but not timed.
const WARM: u8 = 0;
const TIMED: u8 = 1;
/// The namespace Micro's side uses.
const NAMESPACE: &str = "bench";

/// One measurement of one system in one round.
struct Sample {
    /// acked publishes, received events or delivered messages
    ops: u64,
    elapsed: Duration,
    /// microseconds
    latencies: Vec<u32>,
    errors: u64,
    /// CPU seconds of the system's servers during the measurement
    cpu: Option<f64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// rate is the figure; ratio micro/nats of rates
    Throughput,
    /// p50 is the figure; ratio micro/nats of p50s
    Latency,
}

/// One row of the table: a case, with both systems' samples.
struct Row {
    name: String,
    kind: Kind,
    micro: Side,
    nats: Side,
}

#[derive(Default)]
struct Side {
    samples: Vec<Sample>,
    /// why this side was not (fully) measured
    skipped: Option<String>,
}

/// The merged figures of one side: rate over all rounds, latency
/// percentiles over all operations, CPU per operation.
struct Summary {
    rate: f64,
    p50: f64,
    p99: f64,
    cpu_per_op: Option<f64>,
    errors: u64,
    rounds: Vec<f64>,
}

impl Side {
    fn summary(&self) -> Option<Summary> {
        if self.samples.is_empty() {
            return None;
        }
        let ops: u64 = self.samples.iter().map(|s| s.ops).sum();
        let secs: f64 = self.samples.iter().map(|s| s.elapsed.as_secs_f64()).sum();
        let mut lat: Vec<u32> = self
            .samples
            .iter()
            .flat_map(|s| s.latencies.iter().copied())
            .collect();
        lat.sort_unstable();
        let cpu: Option<f64> = self.samples.iter().map(|s| s.cpu).sum();
        Some(Summary {
            rate: ops as f64 / secs.max(1e-9),
            p50: percentile(&lat, 0.50),
            p99: percentile(&lat, 0.99),
            cpu_per_op: cpu.filter(|_| ops > 0).map(|c| c / ops as f64),
            errors: self.samples.iter().map(|s| s.errors).sum(),
            rounds: self.samples.iter().map(Sample::rate).collect(),
        })
    }
}

/// The `p` quantile of sorted microseconds, in milliseconds.
pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
    sorted[i] as f64 / 1000.0
}

/// The systems under test.
struct Systems {
    micro1: Cluster,
    micro3: Cluster,
    nats1: Nats,
    nats3: Nats,
    /// index of the server leading the JetStream stream
    nats1_leader: usize,
    nats3_leader: usize,
}

#[derive(Clone, Copy)]
enum System {
    Micro,
    Nats,
}

pub async fn events(opts: Opts) -> Result<(), String> {
    if opts.payload < MIN_PAYLOAD {
        return Err(format!("--payload must be at least {MIN_PAYLOAD} bytes"));
    }
    if opts.rounds == 0 || opts.seconds == 0 {
        return Err("--rounds and --seconds must be at least 1".into());
    }
    if opts.rate == 0 || opts.subscribers == 0 || opts.fanout_publishers == 0 {
        return Err("--rate, --subscribers and --fanout-publishers must be at least 1".into());
    }
    if opts.publishers.is_empty() || opts.publishers.contains(&0) {
        return Err("--publishers must list counts of at least 1".into());
    }
    for c in &opts.cases {
        if !["publish", "latency", "fanout"].contains(&c.as_str()) {
            return Err(format!(
                "unknown case {c:?} in --cases (publish, latency, fanout)"
            ));
        }
    }
    let started = Instant::now();
    let nats_bin = nats::ensure_installed().await?;
    let (nats_version, nats_minor) = nats::version(&nats_bin).await?;
    let load_before = loadavg();

    let mut micro1 = Cluster::new()?;
    let mut micro3 = Cluster::new()?;
    println!("starting a 1-node and a 3-node Micro cluster");
    let formed = async {
        micro1.form(1).await?;
        micro3.form(3).await
    }
    .await;
    if let Err(e) = formed {
        micro1.stop().await;
        micro3.stop().await;
        micro1.keep_logs();
        micro3.keep_logs();
        return Err(e);
    }
    println!("starting nats-server -js: 1 server and a cluster of 3");
    let nats = async {
        let n1 = Nats::start(&nats_bin, 1, nats_minor).await?;
        let n3 = Nats::start(&nats_bin, 3, nats_minor).await?;
        let l1 = n1.create_stream().await?;
        let l3 = n3.create_stream().await?;
        Ok::<_, String>((n1, n3, l1, l3))
    }
    .await;
    let (nats1, nats3, nats1_leader, nats3_leader) = match nats {
        Ok(n) => n,
        Err(e) => {
            micro1.stop().await;
            micro3.stop().await;
            return Err(e);
        }
    };
    let mut sys = Systems {
        micro1,
        micro3,
        nats1,
        nats3,
        nats1_leader,
        nats3_leader,
    };

    let micro_path = sys.micro1.micro().display().to_string();
    let micro_build = if micro_path.contains("/release/") {
        "release build"
    } else if micro_path.contains("/debug/") {
        "debug build"
    } else {
        "build unknown"
    };
    println!();
    println!("configuration:");
    println!(
        "  micro-bench: {} build; micro server: {micro_path} ({micro_build})",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("  micro durability: a publish is acked after its Raft entry is fsynced on a majority and applied");
    println!(
        "  nats-server {nats_version} ({}), sync: {}",
        nats_bin.display(),
        sys.nats1.sync
    );
    println!(
        "  streams: Micro topics on the 1- and 3-node clusters; JetStream file stream {} R1 and R3",
        nats::STREAM
    );
    println!("  clients: tonic (Micro), async-nats 0.50 (NATS); one connection per publisher, consumer and subscriber");
    println!(
        "  {}-byte payloads, {} s per case and system, {} rounds alternating which system goes first",
        opts.payload, opts.seconds, opts.rounds
    );
    println!(
        "  machine: {} cores, load average at start {load_before}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();

    let result = run_cases(&mut sys, &opts).await;
    sys.micro1.stop().await;
    sys.micro3.stop().await;
    sys.nats1.stop().await;
    sys.nats3.stop().await;
    let rows = match result {
        Ok(rows) => rows,
        Err(e) => {
            sys.micro1.keep_logs();
            sys.micro3.keep_logs();
            sys.nats1.keep_logs();
            sys.nats3.keep_logs();
            return Err(e);
        }
    };
    println!();
    print_table(&rows);
    println!();
    println!(
        "load average at end {}; total run time {:.0} s",
        loadavg(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The first three fields of /proc/loadavg, or "unknown".
pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

async fn run_cases(sys: &mut Systems, opts: &Opts) -> Result<Vec<Row>, String> {
    let want = |c: &str| opts.cases.is_empty() || opts.cases.iter().any(|x| x == c);
    let mut rows = Vec::new();
    if want("publish") {
        for nodes in [1usize, 3] {
            for &p in &opts.publishers {
                let name = format!("publish, {nodes} node{}, {p} pub", plural(nodes));
                let mut row = Row::new(name.clone(), Kind::Throughput);
                for round in 0..opts.rounds {
                    for system in order(round) {
                        let topic = format!("pub-n{nodes}-p{p}");
                        let r = match system {
                            System::Micro => micro_publish(sys.micro(nodes), p, opts, &topic).await,
                            System::Nats => {
                                let (n, leader) = sys.nats(nodes);
                                nats_publish(n, leader, p, opts, &topic).await
                            }
                        };
                        row.record(system, round, opts.rounds, r);
                    }
                }
                rows.push(row);
            }
        }
    }
    if want("latency") {
        for nodes in [1usize, 3] {
            let name = format!(
                "publish→consume, {nodes} node{}, {}/s",
                plural(nodes),
                opts.rate
            );
            let mut row = Row::new(name, Kind::Latency);
            for round in 0..opts.rounds {
                for system in order(round) {
                    // A topic, group and subject of its own per round: each
                    // consumer starts with nothing left over.
                    let topic = format!("lat-n{nodes}-r{round}");
                    let r = match system {
                        System::Micro => micro_latency(sys.micro(nodes), opts, &topic).await,
                        System::Nats => {
                            let (n, leader) = sys.nats(nodes);
                            nats_latency(n, leader, opts, &topic).await
                        }
                    };
                    row.record(system, round, opts.rounds, r);
                }
            }
            rows.push(row);
        }
    }
    if want("fanout") {
        let name = format!(
            "broker fan-out, 3 nodes, {} sub, {} pub",
            opts.subscribers, opts.fanout_publishers
        );
        let mut row = Row::new(name, Kind::Throughput);
        for round in 0..opts.rounds {
            for system in order(round) {
                let topic = format!("fan-r{round}");
                let r = match system {
                    System::Micro => micro_fanout(&sys.micro3, opts, &topic).await,
                    System::Nats => nats_fanout(&sys.nats3, opts, &topic).await,
                };
                row.record(system, round, opts.rounds, r);
            }
        }
        rows.push(row);
    }
    Ok(rows)
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Which system goes first in `round`: Micro in even rounds, NATS in odd.
fn order(round: usize) -> [System; 2] {
    if round.is_multiple_of(2) {
        [System::Micro, System::Nats]
    } else {
        [System::Nats, System::Micro]
    }
}

impl Systems {
    fn micro(&self, nodes: usize) -> &Cluster {
        if nodes == 1 {
            &self.micro1
        } else {
            &self.micro3
        }
    }

    fn nats(&self, nodes: usize) -> (&Nats, usize) {
        if nodes == 1 {
            (&self.nats1, self.nats1_leader)
        } else {
            (&self.nats3, self.nats3_leader)
        }
    }
}

impl Row {
    fn new(name: String, kind: Kind) -> Row {
        Row {
            name,
            kind,
            micro: Side::default(),
            nats: Side::default(),
        }
    }

    /// Keeps one measurement, or why it failed, and prints it.
    fn record(&mut self, system: System, round: usize, rounds: usize, r: Result<Sample, String>) {
        let (side, label) = match system {
            System::Micro => (&mut self.micro, "micro"),
            System::Nats => (&mut self.nats, "nats "),
        };
        match r {
            Ok(s) => {
                let mut lat = s.latencies.clone();
                lat.sort_unstable();
                let cpu = match s.cpu {
                    Some(c) if s.ops > 0 => format!("{:.0} µs/op", c * 1e6 / s.ops as f64),
                    _ => "-".into(),
                };
                println!(
                    "round {}/{rounds} {label} {:<40} {:>9.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  cpu {cpu}  errors {}",
                    round + 1,
                    self.name,
                    s.rate(),
                    percentile(&lat, 0.50),
                    percentile(&lat, 0.99),
                    s.errors
                );
                side.samples.push(s);
            }
            Err(e) => {
                println!(
                    "round {}/{rounds} {label} {:<40} not measured: {e}",
                    round + 1,
                    self.name
                );
                side.skipped.get_or_insert(e);
            }
        }
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<42} | {:>9} {:>8} {:>8} {:>9} | {:>9} {:>8} {:>8} {:>9} | {:>11}",
        "case",
        "micro/s",
        "p50 ms",
        "p99 ms",
        "cpu µs/op",
        "nats/s",
        "p50 ms",
        "p99 ms",
        "cpu µs/op",
        "micro/nats"
    );
    println!("{}", "-".repeat(42 + 3 + 37 + 3 + 37 + 3 + 11));
    let mut notes = Vec::new();
    for row in rows {
        let (m, n) = (row.micro.summary(), row.nats.summary());
        let side = |s: &Option<Summary>| match s {
            Some(s) => format!(
                "{:>9.0} {:>8.2} {:>8.2} {:>9}",
                s.rate,
                s.p50,
                s.p99,
                s.cpu_per_op
                    .map_or_else(|| "-".to_string(), |c| format!("{:.0}", c * 1e6))
            ),
            None => format!("{:>9} {:>8} {:>8} {:>9}", "-", "-", "-", "-"),
        };
        let ratio = match (&m, &n, row.kind) {
            (Some(m), Some(n), Kind::Throughput) if n.rate > 0.0 => {
                format!("{:.2}x rate", m.rate / n.rate)
            }
            (Some(m), Some(n), Kind::Latency) if n.p50 > 0.0 => {
                format!("{:.2}x p50", m.p50 / n.p50)
            }
            _ => "-".into(),
        };
        println!(
            "{:<42} | {} | {} | {:>11}",
            row.name,
            side(&m),
            side(&n),
            ratio
        );
        for (who, s, sum) in [("micro", &row.micro, &m), ("nats", &row.nats, &n)] {
            if let Some(why) = &s.skipped {
                notes.push(format!("{}, {who}: not (fully) measured: {why}", row.name));
            }
            if let Some(sum) = sum {
                if sum.errors > 0 {
                    notes.push(format!("{}, {who}: {} errors", row.name, sum.errors));
                }
                if sum.rounds.len() > 1 {
                    let r: Vec<String> = sum.rounds.iter().map(|r| format!("{r:.0}")).collect();
                    notes.push(format!("{}, {who}: per round {}/s", row.name, r.join(", ")));
                }
            }
        }
    }
    println!();
    println!("rate: publish rows acked publishes/s; publish→consume rows events received/s; fan-out messages delivered to subscribers/s");
    println!("latency: publish to ack; publish→consume: publish call to receipt by the consumer; fan-out: the publish call");
    println!("micro/nats: of the rates (above 1: Micro does more), or for publish→consume of the p50s (below 1: Micro is faster)");
    for n in notes {
        println!("  {n}");
    }
}

/// A 100-byte (or `size`) payload: the send time in ns since `base`, the
/// marker, then filler.
fn payload(size: usize, base: Instant, marker: u8) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(MIN_PAYLOAD)];
    let t = base.elapsed().as_nanos() as u64;
    p[..8].copy_from_slice(&t.to_le_bytes());
    p[8] = marker;
    p
}

/// (marker, send time in ns since the run's base) of a payload.
fn decode(p: &[u8]) -> Option<(u8, u64)> {
    let t = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    Some((*p.get(8)?, t))
}

/// A gRPC status as one line.
fn status_line(what: &str, s: &tonic::Status) -> String {
    // Unimplemented: the service exists, the call not yet; NotFound
    // "service ... not found": the node has no such service at all.
    let absent = s.code() == tonic::Code::NotFound && s.message().starts_with("service ");
    if s.code() == tonic::Code::Unimplemented || absent {
        format!("{what} is not served by this micro build ({})", s.message())
    } else {
        format!("{what}: {:?}: {}", s.code(), s.message())
    }
}

async fn micro_clients(addr: &str, n: usize) -> Result<Vec<micro::Client>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(
            micro::Client::connect(addr, NAMESPACE)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

async fn nats_clients(
    n: &Nats,
    server: usize,
    count: usize,
) -> Result<Vec<async_nats::Client>, String> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(n.connect(server).await?);
    }
    Ok(out)
}

/// A phase's figures with the CPU the servers used meanwhile.
fn sample_of(p: crate::phase::Phase, cpu0: Option<f64>, cpu1: Option<f64>) -> Sample {
    Sample {
        ops: p.latencies.len() as u64,
        elapsed: p.elapsed,
        latencies: p.latencies,
        errors: p.errors,
        cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
    }
}

async fn micro_publish(
    c: &Cluster,
    publishers: usize,
    opts: &Opts,
    topic: &str,
) -> Result<Sample, String> {
    let leader = c.leader().await?;
    let conns = micro_clients(c.proxy(leader), publishers).await?;
    let base = Instant::now();
    let body = payload(opts.payload, base, TIMED);
    let req = PublishRequest {
        topic: topic.to_string(),
        payload: body,
        ..Default::default()
    };
    conns[0]
        .events()
        .publish(req.clone())
        .await
        .map_err(|s| status_line("events publish", &s))?;
    let pids = c.pids();
    let cpu0 = cpu::total(&pids);
    let p = phase("publish", conns, opts.seconds, move |client, _, _| {
        let req = req.clone();
        async move {
            matches!(
                tokio::time::timeout(OP_TIMEOUT, client.events().publish(req)).await,
                Ok(Ok(_))
            )
        }
    })
    .await;
    Ok(sample_of(p, cpu0, cpu::total(&pids)))
}

async fn nats_publish(
    n: &Nats,
    leader: usize,
    publishers: usize,
    opts: &Opts,
    topic: &str,
) -> Result<Sample, String> {
    let conns: Vec<async_nats::jetstream::Context> = nats_clients(n, leader, publishers)
        .await?
        .into_iter()
        .map(async_nats::jetstream::new)
        .collect();
    let subject = format!("bench.{topic}");
    let body = bytes::Bytes::from(payload(opts.payload, Instant::now(), TIMED));
    let first = conns[0]
        .publish(subject.clone(), body.clone())
        .await
        .map_err(|e| format!("jetstream publish: {e}"))?;
    first
        .await
        .map_err(|e| format!("jetstream publish ack: {e}"))?;
    let pids = n.pids();
    let cpu0 = cpu::total(&pids);
    let p = phase("publish", conns, opts.seconds, move |js, _, _| {
        let (subject, body) = (subject.clone(), body.clone());
        async move {
            match js.publish(subject, body).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await;
    Ok(sample_of(p, cpu0, cpu::total(&pids)))
}

/// What a consumer received: warm-up events counted, timed ones timed.
struct Receipts {
    base: Instant,
    warm: AtomicU64,
    /// publish-to-receipt latencies of the timed events, µs
    timed: Mutex<Vec<u32>>,
}

impl Receipts {
    fn new(base: Instant) -> Arc<Receipts> {
        Arc::new(Receipts {
            base,
            warm: AtomicU64::new(0),
            timed: Mutex::new(Vec::new()),
        })
    }

    fn on(&self, payload: &[u8]) {
        let now = self.base.elapsed().as_nanos() as u64;
        match decode(payload) {
            Some((WARM, _)) => {
                self.warm.fetch_add(1, Ordering::Relaxed);
            }
            Some((TIMED, sent)) => {
                let us = (now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32;
                self.timed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(us);
            }
            _ => {}
        }
    }

    fn timed_count(&self) -> usize {
        self.timed.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

type PublishFn = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, bool> + Send + Sync>;

/// The publish→consume window, the same for both systems: warm-up
/// publishes until the consumer got one, then a publish every 1/rate s
/// for `seconds` (each in a task of its own, so a slow ack does not lower
/// the rate), then up to [`DRAIN`] for the consumer to receive the rest.
async fn latency_window(
    publish: PublishFn,
    got: &Arc<Receipts>,
    opts: &Opts,
    pids: &[u32],
    consumer_alive: &AtomicBool,
) -> Result<Sample, String> {
    let warm_deadline = Instant::now() + WARM_PATIENCE;
    while got.warm.load(Ordering::Relaxed) == 0 {
        if Instant::now() > warm_deadline || !consumer_alive.load(Ordering::Relaxed) {
            return Err(format!(
                "the consumer received no event within {} s",
                WARM_PATIENCE.as_secs()
            ));
        }
        publish(payload(opts.payload, got.base, WARM)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu0 = cpu::total(pids);
    let start = Instant::now();
    let total = opts.seconds * opts.rate;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sends = tokio::task::JoinSet::new();
    let deadline = start + Duration::from_secs(opts.seconds);
    let mut sent = 0u64;
    while sent < total && Instant::now() < deadline {
        tick.tick().await;
        let (publish, body) = (publish.clone(), payload(opts.payload, got.base, TIMED));
        sends.spawn(async move { publish(body).await });
        sent += 1;
    }
    let mut acked = 0u64;
    let mut failed = 0u64;
    while let Some(r) = sends.join_next().await {
        match r {
            Ok(true) => acked += 1,
            _ => failed += 1,
        }
    }
    let elapsed = start.elapsed();
    let drain = Instant::now() + DRAIN;
    while (got.timed_count() as u64) < acked && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = cpu::total(pids);
    let latencies = std::mem::take(&mut *got.timed.lock().unwrap_or_else(|e| e.into_inner()));
    let missing = acked.saturating_sub(latencies.len() as u64);
    Ok(Sample {
        ops: latencies.len() as u64,
        elapsed,
        latencies,
        errors: failed + missing,
        cpu: cpu0.zip(cpu1).map(|(a, b)| b - a),
    })
}

async fn micro_latency(c: &Cluster, opts: &Opts, topic: &str) -> Result<Sample, String> {
    let leader = c.leader().await?;
    let consumer_node = (0..c.len()).find(|&i| i != leader).unwrap_or(leader);
    let publisher = micro::Client::connect(c.proxy(leader), NAMESPACE)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = micro::Client::connect(c.proxy(consumer_node), NAMESPACE)
        .await
        .map_err(|e| e.to_string())?;
    let group = "bench".to_string();
    let mut stream = consumer
        .events()
        .consume(ConsumeRequest {
            topic: topic.to_string(),
            group: group.clone(),
            ..Default::default()
        })
        .await
        .map_err(|s| status_line("events consume", &s))?
        .into_inner();
    let got = Receipts::new(Instant::now());
    let alive = Arc::new(AtomicBool::new(true));
    let failure = Arc::new(Mutex::new(None::<String>));
    // Acks go out from a task of their own, batched: whatever arrived
    // while the previous Ack call was in flight goes in the next one.
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let acker = {
        let (consumer, topic, group) = (consumer.clone(), topic.to_string(), group.clone());
        tokio::spawn(async move {
            while let Some(seq) = ack_rx.recv().await {
                let mut seqs = vec![seq];
                while let Ok(s) = ack_rx.try_recv() {
                    seqs.push(s);
                }
                let req = AckRequest {
                    topic: topic.clone(),
                    group: group.clone(),
                    seqs,
                    ..Default::default()
                };
                let _ = tokio::time::timeout(OP_TIMEOUT, consumer.events().ack(req)).await;
            }
        })
    };
    let reader = {
        let (got, alive, failure) = (got.clone(), alive.clone(), failure.clone());
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        got.on(&ev.payload);
                        if ack_tx.send(ev.seq).is_err() {
                            break;
                        }
                    }
                    Ok(None) => {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some("the consume stream ended".into());
                        break;
                    }
                    Err(s) => {
                        *failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(status_line("events consume", &s));
                        break;
                    }
                }
            }
            alive.store(false, Ordering::Relaxed);
        })
    };
    let topic_owned = topic.to_string();
    let publish: PublishFn = Arc::new(move |body: Vec<u8>| {
        let (client, topic) = (publisher.clone(), topic_owned.clone());
        Box::pin(async move {
            let req = PublishRequest {
                topic,
                payload: body,
                ..Default::default()
            };
            matches!(
                tokio::time::timeout(OP_TIMEOUT, client.events().publish(req)).await,
                Ok(Ok(_))
            )
        })
    });
    let r = latency_window(publish, &got, opts, &c.pids(), &alive).await;
    reader.abort();
    acker.abort();
    let why = failure.lock().unwrap_or_else(|e| e.into_inner()).take();
    match (r, why) {
        (Err(e), Some(why)) => Err(format!("{e}: {why}")),
        (r, _) => r,
    }
}

async fn nats_latency(n: &Nats, leader: usize, opts: &Opts, topic: &str) -> Result<Sample, String> {
    let consumer_node = (0..n.len()).find(|&i| i != leader).unwrap_or(leader);
    let publisher = async_nats::jetstream::new(n.connect(leader).await?);
    let js = async_nats::jetstream::new(n.connect(consumer_node).await?);
    let subject = format!("bench.{topic}");
    let stream = js
        .get_stream(nats::STREAM)
        .await
        .map_err(|e| format!("jetstream stream {}: {e}", nats::STREAM))?;
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(topic.replace('-', "_")),
            filter_subject: subject.clone(),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("jetstream durable consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("jetstream consumer messages: {e}"))?;
    let got = Receipts::new(Instant::now());
    let alive = Arc::new(AtomicBool::new(true));
    let reader = {
        let (got, alive) = (got.clone(), alive.clone());
        tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                let Ok(m) = m else { continue };
                got.on(&m.payload);
                let _ = m.ack().await;
            }
            alive.store(false, Ordering::Relaxed);
        })
    };
    let publish: PublishFn = Arc::new(move |body: Vec<u8>| {
        let (js, subject) = (publisher.clone(), subject.clone());
        Box::pin(async move {
            match js.publish(subject, bytes::Bytes::from(body)).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        })
    });
    let r = latency_window(publish, &got, opts, &n.pids(), &alive).await;
    reader.abort();
    r
}

/// Counts of what each subscriber received.
fn counters(k: usize) -> Arc<Vec<AtomicU64>> {
    Arc::new((0..k).map(|_| AtomicU64::new(0)).collect())
}

fn delivered(c: &[AtomicU64]) -> u64 {
    c.iter().map(|x| x.load(Ordering::Relaxed)).sum()
}

/// Warm-up for fan-out: publishes with `publish` until every subscriber
/// counted one.
async fn wait_all_subscribed(
    publish: impl Fn() -> BoxFuture<'static, bool>,
    counts: &[AtomicU64],
) -> Result<(), String> {
    let deadline = Instant::now() + WARM_PATIENCE;
    while counts.iter().any(|c| c.load(Ordering::Relaxed) == 0) {
        if Instant::now() > deadline {
            let reached = counts
                .iter()
                .filter(|c| c.load(Ordering::Relaxed) > 0)
                .count();
            return Err(format!(
                "only {reached} of {} subscribers received a message within {} s",
                counts.len(),
                WARM_PATIENCE.as_secs()
            ));
        }
        publish().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn micro_fanout(c: &Cluster, opts: &Opts, topic: &str) -> Result<Sample, String> {
    let k = opts.subscribers;
    let counts = counters(k);
    let mut readers = Vec::new();
    let result = async {
        for i in 0..k {
            let client = micro::Client::connect(c.proxy(i % c.len()), NAMESPACE)
                .await
                .map_err(|e| e.to_string())?;
            let mut stream = client
                .broker()
                .subscribe(SubscribeRequest {
                    topic: topic.to_string(),
                    queue: String::new(),
                })
                .await
                .map_err(|s| status_line("broker subscribe", &s))?
                .into_inner();
            let counts = counts.clone();
            readers.push(tokio::spawn(async move {
                let _client = client;
                while let Ok(Some(_)) = stream.message().await {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let mut conns = Vec::new();
        for i in 0..opts.fanout_publishers {
            conns.push(
                micro::Client::connect(c.proxy(i % c.len()), NAMESPACE)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let req = BrokerPublish {
            topic: topic.to_string(),
            body: vec![b'x'; opts.payload],
            ..Default::default()
        };
        conns[0]
            .broker()
            .publish(req.clone())
            .await
            .map_err(|s| status_line("broker publish", &s))?;
        let first = conns[0].clone();
        let warm_req = req.clone();
        wait_all_subscribed(
            move || {
                let (client, req) = (first.clone(), warm_req.clone());
                Box::pin(async move { client.broker().publish(req).await.is_ok() })
            },
            &counts,
        )
        .await?;
        let pids = c.pids();
        let cpu0 = cpu::total(&pids);
        let d0 = delivered(&counts);
        let p = phase("fanout", conns, opts.seconds, move |client, _, _| {
            let req = req.clone();
            async move {
                matches!(
                    tokio::time::timeout(OP_TIMEOUT, client.broker().publish(req)).await,
                    Ok(Ok(_))
                )
            }
        })
        .await;
        let d1 = delivered(&counts);
        let cpu1 = cpu::total(&pids);
        let mut s = sample_of(p, cpu0, cpu1);
        s.ops = d1 - d0;
        Ok::<Sample, String>(s)
    }
    .await;
    for r in readers {
        r.abort();
    }
    result
}

async fn nats_fanout(n: &Nats, opts: &Opts, topic: &str) -> Result<Sample, String> {
    let k = opts.subscribers;
    let counts = counters(k);
    let subject = format!("fan.{topic}");
    let mut readers = Vec::new();
    let result = async {
        for i in 0..k {
            let client = n.connect(i % n.len()).await?;
            let mut sub = client
                .subscribe(subject.clone())
                .await
                .map_err(|e| format!("nats subscribe: {e}"))?;
            client
                .flush()
                .await
                .map_err(|e| format!("nats flush: {e}"))?;
            let counts = counts.clone();
            readers.push(tokio::spawn(async move {
                let _client = client;
                while sub.next().await.is_some() {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let mut conns = Vec::new();
        for i in 0..opts.fanout_publishers {
            conns.push(n.connect(i % n.len()).await?);
        }
        let body = bytes::Bytes::from(vec![b'x'; opts.payload]);
        let first = conns[0].clone();
        let (warm_subject, warm_body) = (subject.clone(), body.clone());
        wait_all_subscribed(
            move || {
                let (client, subject, body) =
                    (first.clone(), warm_subject.clone(), warm_body.clone());
                Box::pin(async move {
                    client.publish(subject, body).await.is_ok() && client.flush().await.is_ok()
                })
            },
            &counts,
        )
        .await?;
        let pids = n.pids();
        let cpu0 = cpu::total(&pids);
        let d0 = delivered(&counts);
        let p =
            phase("fanout", conns, opts.seconds, move |client, _, _| {
                let (subject, body) = (subject.clone(), body.clone());
                async move {
                    client.publish(subject, body).await.is_ok() && client.flush().await.is_ok()
                }
            })
            .await;
        let d1 = delivered(&counts);
        let cpu1 = cpu::total(&pids);
        let mut s = sample_of(p, cpu0, cpu1);
        s.ops = d1 - d0;
        Ok::<Sample, String>(s)
    }
    .await;
    for r in readers {
        r.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_carries_its_send_time_and_marker() {
        let base = Instant::now();
        let p = payload(100, base, TIMED);
        assert_eq!(p.len(), 100);
        let (marker, t) = decode(&p).expect("decodes");
        assert_eq!(marker, TIMED);
        assert!(t > 0 || base.elapsed().as_nanos() == 0);
        assert_eq!(decode(b"short"), None);
    }

    #[test]
    fn rounds_alternate_which_system_goes_first() {
        assert!(matches!(order(0), [System::Micro, System::Nats]));
        assert!(matches!(order(1), [System::Nats, System::Micro]));
        assert!(matches!(order(2), [System::Micro, System::Nats]));
    }

    #[test]
    fn a_summary_merges_rounds() {
        let side = Side {
            samples: vec![
                Sample {
                    ops: 100,
                    elapsed: Duration::from_secs(1),
                    latencies: vec![1000; 100],
                    errors: 0,
                    cpu: Some(0.5),
                },
                Sample {
                    ops: 300,
                    elapsed: Duration::from_secs(1),
                    latencies: vec![3000; 300],
                    errors: 2,
                    cpu: Some(1.5),
                },
            ],
            skipped: None,
        };
        let s = side.summary().expect("two samples");
        assert_eq!(s.rate, 200.0);
        assert_eq!(s.p50, 3.0);
        assert_eq!(s.errors, 2);
        assert_eq!(s.cpu_per_op, Some(2.0 / 400.0));
        assert_eq!(s.rounds, vec![100.0, 300.0]);
        assert!(Side::default().summary().is_none());
    }
}
