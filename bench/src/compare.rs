//! `micro-bench compare`: a cluster of `micro server` processes next to
//! an etcd cluster of the same size, one after the other on loopback,
//! driven by the same HTTP/JSON client (`http.rs`): writes and
//! linearizable reads through the leader and through a follower at each
//! connection count, then failover (kill -9 of the leader to the first
//! acknowledged write through another node) over several runs. Prints one
//! table with both systems and the ratio per row, and the goals of the
//! "write path at the limit" issue, met or not.
//!
//! Per phase: ops/s, p50/p99, CPU ms per op of all nodes, the leader's
//! user/system split, its context switches per op (all its threads) and
//! its fsync + fdatasync calls per op (`fsyncs.rs`).
//!
//! Must never: judge a figure it could not measure (that is "-", with the
//! reason in a note), run both systems at once, or leave a server running.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::etcd::{self, Etcd};
use crate::events::{loadavg, percentile};
use crate::fsyncs::{self, Counter, Method};
use crate::http::{Api, Conn, Target};
use crate::phase::phase;
use crate::{cpu, procstat};

/// One request's limit in the phases.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The failover writer's limit per write: above both systems' own (Micro
/// 10 s, etcd's request timeout about 7 s), so a write a follower holds
/// while it waits for a new leader is not cut short here.
const FAILOVER_WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// The failover writer's pause after a failed write.
const FAILOVER_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long a failover may take before the run gives up on it.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(60);
/// The separate fsync-counting phase when strace must do it.
const STRACE_SECONDS: u64 = 3;

pub struct Opts {
    pub nodes: usize,
    pub seconds: u64,
    pub value_size: usize,
    pub connections: Vec<usize>,
    pub failover_runs: usize,
    pub micro: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Kind {
    Write,
    Read,
}

#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Via {
    Leader,
    Follower,
}

/// One measured phase: what, through which node, at how many connections.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct Spec {
    pub kind: Kind,
    pub via: Via,
    pub conns: usize,
}

impl Spec {
    fn label(&self) -> String {
        let what = match self.kind {
            Kind::Write => "writes",
            Kind::Read => "linearizable reads",
        };
        let via = match self.via {
            Via::Leader => "leader",
            Via::Follower => "follower",
        };
        format!("{what} via {via}, {} conn", self.conns)
    }
}

/// The phases of a run, in the order they run: for each connection count,
/// writes through the leader and a follower, then reads (of the keys the
/// leader phase wrote) through both.
pub fn specs(connections: &[usize]) -> Vec<Spec> {
    let mut out = Vec::new();
    for &conns in connections {
        for (kind, via) in [
            (Kind::Write, Via::Leader),
            (Kind::Write, Via::Follower),
            (Kind::Read, Via::Leader),
            (Kind::Read, Via::Follower),
        ] {
            out.push(Spec { kind, via, conns });
        }
    }
    out
}

/// The figures of one phase on one system.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub errors: u64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU ms per op, all nodes
    pub cpu_ms: Option<f64>,
    /// the leader's user and system CPU ms per op
    pub leader_user_ms: Option<f64>,
    pub leader_sys_ms: Option<f64>,
    /// the leader's context switches per op
    pub switches: Option<f64>,
    /// the leader's fsync + fdatasync calls per op
    pub fsyncs: Option<f64>,
    /// the leader's sync_file_range calls per op
    pub sync_file_range: Option<f64>,
}

/// One system's half of a run.
#[derive(Default)]
pub struct Results {
    /// by the index of `specs`; `Err` says why a phase has no figures
    pub samples: Vec<Result<Sample, String>>,
    /// first acknowledged write after the leader's kill, per run
    pub failovers: Vec<Duration>,
    pub notes: Vec<String>,
}

impl Results {
    fn sample(&self, specs: &[Spec], want: Spec) -> Option<&Sample> {
        let i = specs.iter().position(|s| *s == want)?;
        self.samples.get(i)?.as_ref().ok()
    }
}

/// A running cluster of either system.
enum Sys {
    Micro {
        cluster: Cluster,
        token: Arc<RwLock<String>>,
    },
    Etcd(Etcd),
}

impl Sys {
    fn name(&self) -> &'static str {
        match self {
            Sys::Micro { .. } => "micro",
            Sys::Etcd(_) => "etcd",
        }
    }

    fn len(&self) -> usize {
        match self {
            Sys::Micro { cluster, .. } => cluster.len(),
            Sys::Etcd(e) => e.len(),
        }
    }

    fn pid(&self, i: usize) -> Option<u32> {
        match self {
            Sys::Micro { cluster, .. } => cluster.pid(i),
            Sys::Etcd(e) => e.pid(i),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Sys::Micro { cluster, .. } => cluster.pids(),
            Sys::Etcd(e) => e.pids(),
        }
    }

    fn target(&self, i: usize) -> Target {
        match self {
            Sys::Micro { cluster, token } => Target {
                api: Api::Micro {
                    token: token.clone(),
                },
                base: format!("http://{}", cluster.api(i)),
            },
            Sys::Etcd(e) => e.target(i),
        }
    }

    /// The leader's index, asked of the first running node.
    async fn leader(&self) -> Result<usize, String> {
        let first = (0..self.len())
            .find(|&i| self.pid(i).is_some())
            .ok_or("no node runs")?;
        match self {
            Sys::Micro { cluster, .. } => cluster.leader_seen_by(first).await,
            Sys::Etcd(e) => e.leader_from(first).await,
        }
    }

    /// A fresh bearer token for Micro (they live 10 minutes); nothing for etcd.
    async fn refresh(&self) -> Result<(), String> {
        if let Sys::Micro { cluster, token } = self {
            let first = (0..cluster.len())
                .find(|&i| cluster.pid(i).is_some())
                .ok_or("no node runs")?;
            let fresh = cluster.token(first).await?;
            if let Ok(mut t) = token.write() {
                *t = fresh;
            }
        }
        Ok(())
    }

    async fn kill(&mut self, i: usize) -> Result<(), String> {
        match self {
            Sys::Micro { cluster, .. } => cluster.kill(i).await,
            Sys::Etcd(e) => e.kill(i).await,
        }
    }

    async fn stop(&mut self) {
        match self {
            Sys::Micro { cluster, .. } => cluster.stop().await,
            Sys::Etcd(e) => e.stop().await,
        }
    }

    fn keep_logs(&mut self) {
        match self {
            Sys::Micro { cluster, .. } => cluster.keep_logs(),
            Sys::Etcd(e) => e.keep_logs(),
        }
    }
}

/// Which system to start.
#[derive(Clone)]
enum Which {
    Micro(Option<PathBuf>),
    Etcd(PathBuf),
}

async fn start(which: &Which, nodes: usize) -> Result<Sys, String> {
    match which {
        Which::Micro(binary) => {
            let mut cluster = Cluster::with_micro(binary.clone())?;
            if let Err(e) = cluster.form(nodes).await {
                cluster.stop().await;
                cluster.keep_logs();
                return Err(e);
            }
            let token = match cluster.token(0).await {
                Ok(t) => t,
                Err(e) => {
                    cluster.stop().await;
                    return Err(e);
                }
            };
            Ok(Sys::Micro {
                cluster,
                token: Arc::new(RwLock::new(token)),
            })
        }
        Which::Etcd(binary) => Ok(Sys::Etcd(Etcd::start(binary, nodes).await?)),
    }
}

pub async fn compare(opts: Opts) -> Result<(), String> {
    if !(1..=9).contains(&opts.nodes) {
        return Err("--nodes must be between 1 and 9".into());
    }
    if opts.connections.is_empty() || opts.connections.contains(&0) {
        return Err("--connections takes counts above 0, such as 16,64,256".into());
    }
    let started = Instant::now();
    let specs = specs(&opts.connections);
    println!(
        "micro-bench compare: {} nodes of micro, then of etcd, on 127.0.0.1..{}; {}-byte values; {} s per phase at {} connections; {} failover runs; load average {}",
        opts.nodes,
        opts.nodes,
        opts.value_size,
        opts.seconds,
        opts.connections
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        opts.failover_runs,
        loadavg()
    );
    let (method, notes) = fsyncs::method().await;
    for n in &notes {
        println!("note: {n}");
    }

    let micro_bin = Which::Micro(opts.micro.clone());
    if let Ok(c) = Cluster::with_micro(opts.micro.clone()) {
        println!("micro: {}", c.micro().display());
    }
    let micro = half(&micro_bin, &specs, &opts, &method).await?;

    let etcd = match etcd::find() {
        None => {
            println!();
            println!("{}", etcd::MISSING);
            println!("(measured micro only)");
            None
        }
        Some(bin) => {
            println!();
            println!("etcd: {} ({})", bin.display(), etcd::version(&bin).await);
            Some(half(&Which::Etcd(bin), &specs, &opts, &method).await?)
        }
    };

    println!();
    print!("{}", table(&specs, &micro, etcd.as_ref(), opts.nodes));
    for (name, r) in [("micro", Some(&micro)), ("etcd", etcd.as_ref())] {
        let Some(r) = r else { continue };
        for (spec, s) in specs.iter().zip(&r.samples) {
            if let Err(why) = s {
                println!("note: {name}, {}: not measured: {why}", spec.label());
            }
        }
        for n in &r.notes {
            println!("note: {name}: {n}");
        }
    }
    println!(
        "note: CPU ms/op is user+system time of all nodes over acknowledged ops; switches are the leader's voluntary+involuntary context switches over all its threads; fsyncs are its fsync+fdatasync calls and sync_file_range its calls of that (sled's flush: starts write-back, not durable) ({})",
        match &method {
            Method::Perf => "perf stat on the syscall tracepoints".to_string(),
            Method::Strace => format!("strace -c in a separate {STRACE_SECONDS} s phase"),
            Method::None(why) => format!("not counted: {why}"),
        }
    );
    println!();
    println!("goals:");
    for g in goals(&specs, &micro, etcd.as_ref()) {
        println!("  {g}");
    }
    println!(
        "total run time {:.0} s, load average now {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
    Ok(())
}

/// One system's half: a cluster for the phases and the first failover,
/// then a fresh one for each further failover run.
async fn half(
    which: &Which,
    specs: &[Spec],
    opts: &Opts,
    method: &Method,
) -> Result<Results, String> {
    let mut sys = start(which, opts.nodes).await?;
    println!(
        "{}: {} nodes up; phases of {} s",
        sys.name(),
        opts.nodes,
        opts.seconds
    );
    let mut results = Results::default();
    let tag = sys.name();
    let mut per_client = 1u64;
    for spec in specs {
        let prefix = format!("{tag}/{}/{:?}", spec.conns, spec.via).to_lowercase();
        let keys = format!("{tag}/{}/leader", spec.conns);
        let r = measure(&sys, *spec, opts, method, &prefix, &keys, per_client).await;
        match &r {
            Ok((s, min)) => {
                if spec.kind == Kind::Write && spec.via == Via::Leader {
                    per_client = (*min).max(1);
                }
                println!(
                    "  {:<40} {:>8.0}/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                    spec.label(),
                    s.rate,
                    s.p50_ms,
                    s.p99_ms,
                    s.errors
                );
            }
            Err(e) => println!("  {:<40} not measured: {e}", spec.label()),
        }
        results.samples.push(r.map(|(s, _)| s));
    }

    if opts.nodes < 3 {
        results.notes.push(format!(
            "failover not measured: with {} nodes the survivors have no majority",
            opts.nodes
        ));
        sys.stop().await;
        return Ok(results);
    }
    for run in 1..=opts.failover_runs {
        if run > 1 {
            sys = match start(which, opts.nodes).await {
                Ok(s) => s,
                Err(e) => {
                    results
                        .notes
                        .push(format!("failover run {run}: cannot start a cluster: {e}"));
                    break;
                }
            };
        }
        match failover(&mut sys).await {
            Ok((t, failed, first)) => {
                println!(
                    "  failover run {run}: first acknowledged write {:.2} s after kill -9 of the leader ({failed} writes failed meanwhile{})",
                    t.as_secs_f64(),
                    first.map(|f| format!("; {}", f.chars().take(200).collect::<String>())).unwrap_or_default()
                );
                results.failovers.push(t);
            }
            Err(e) => {
                println!("  failover run {run}: {e}");
                results.notes.push(format!("failover run {run}: {e}"));
                sys.stop().await;
                sys.keep_logs();
                continue;
            }
        }
        sys.stop().await;
    }
    if opts.failover_runs == 0 {
        sys.stop().await;
    }
    Ok(results)
}

/// Runs one phase and takes its figures; also returns the fewest
/// operations any one connection completed (the keys each wrote).
#[allow(clippy::too_many_arguments)]
async fn measure(
    sys: &Sys,
    spec: Spec,
    opts: &Opts,
    method: &Method,
    prefix: &str,
    read_prefix: &str,
    per_client: u64,
) -> Result<(Sample, u64), String> {
    sys.refresh().await?;
    let leader = sys.leader().await?;
    let node = match spec.via {
        Via::Leader => leader,
        Via::Follower => (0..sys.len())
            .find(|&i| i != leader)
            .ok_or("one node: no follower")?,
    };
    let leader_pid = sys.pid(leader).ok_or("the leader is not running")?;
    let pids = sys.pids();
    let target = sys.target(node);
    let value = Arc::new(vec![b'x'; opts.value_size]);

    let cpu0 = cpu::total(&pids);
    let split0 = cpu::user_sys(leader_pid);
    let sw0 = procstat::context_switches(leader_pid);
    let counter = match method {
        Method::Perf => Some(Counter::start(method, leader_pid).await),
        _ => None,
    };
    let (p, first_error) = run(
        spec,
        &target,
        &value,
        opts.seconds,
        prefix.to_string(),
        read_prefix.to_string(),
        per_client,
    )
    .await;
    let cpu1 = cpu::total(&pids);
    let split1 = cpu::user_sys(leader_pid);
    let sw1 = procstat::context_switches(leader_pid);
    let mut fsync_count = match counter {
        Some(Ok(c)) => c.stop().await.ok(),
        _ => None,
    };

    let ops = p.latencies.len() as u64;
    let per_op = |d: f64| (ops > 0).then(|| d / ops as f64);
    let mut fsync_ops = ops;
    if *method == Method::Strace && spec.kind == Kind::Write {
        // Counted apart: strace slows the process it traces.
        if let Ok(c) = Counter::start(method, leader_pid).await {
            let (short, _) = run(
                spec,
                &target,
                &value,
                STRACE_SECONDS,
                format!("{prefix}/strace"),
                read_prefix.to_string(),
                per_client,
            )
            .await;
            fsync_ops = short.latencies.len() as u64;
            fsync_count = c.stop().await.ok();
        }
    }
    let min_per_client = p.per_client.iter().copied().min().unwrap_or(0);
    if ops == 0 {
        return Err(format!(
            "no operation succeeded ({} failed{})",
            p.errors,
            first_error
                .get()
                .map(|e| format!("; the first: {e}"))
                .unwrap_or_default()
        ));
    }
    let mut sorted = p.latencies.clone();
    sorted.sort_unstable();
    let sample = Sample {
        errors: p.errors,
        rate: p.throughput(),
        p50_ms: percentile(&sorted, 0.50),
        p99_ms: percentile(&sorted, 0.99),
        cpu_ms: cpu0.zip(cpu1).and_then(|(a, b)| per_op((b - a) * 1000.0)),
        leader_user_ms: split0
            .zip(split1)
            .and_then(|(a, b)| per_op((b.0 - a.0) * 1000.0)),
        leader_sys_ms: split0
            .zip(split1)
            .and_then(|(a, b)| per_op((b.1 - a.1) * 1000.0)),
        switches: sw0
            .zip(sw1)
            .and_then(|(a, b)| per_op(b.saturating_sub(a) as f64)),
        fsyncs: fsync_count
            .and_then(|n| (fsync_ops > 0).then(|| n.fsyncs as f64 / fsync_ops as f64)),
        sync_file_range: fsync_count
            .and_then(|n| (fsync_ops > 0).then(|| n.sync_file_range as f64 / fsync_ops as f64)),
    };
    Ok((sample, min_per_client))
}

/// The phase proper: `spec.conns` connections to `target` for `seconds`;
/// and the first failure's reason, if any.
async fn run(
    spec: Spec,
    target: &Target,
    value: &Arc<Vec<u8>>,
    seconds: u64,
    prefix: String,
    read_prefix: String,
    per_client: u64,
) -> (crate::phase::Phase, Arc<OnceLock<String>>) {
    let first_error = Arc::new(OnceLock::new());
    let conns: Vec<(Conn, Target)> = (0..spec.conns)
        .map(|_| (Conn::new(), target.clone()))
        .collect();
    let (value, errs) = (value.clone(), first_error.clone());
    let p = phase("compare", conns, seconds, move |(conn, target), c, i| {
        let req = match spec.kind {
            Kind::Write => target.write(&format!("{prefix}/{c:03}/{i:09}"), &value),
            Kind::Read => target.read(&format!(
                "{read_prefix}/{c:03}/{:09}",
                i.wrapping_mul(7919) % per_client.max(1)
            )),
        };
        let errs = errs.clone();
        async move {
            match target.call(&conn, req, REQUEST_TIMEOUT).await {
                Ok(()) => true,
                Err(e) => {
                    let _ = errs.set(e);
                    false
                }
            }
        }
    })
    .await;
    (p, first_error)
}

/// One failover: a writer through a follower, one small write after
/// another; kill -9 of the leader a second in; the time from the kill to
/// the first write that both started and was acknowledged after it, and
/// the writes that failed in between.
async fn failover(sys: &mut Sys) -> Result<(Duration, u64, Option<String>), String> {
    sys.refresh().await?;
    let leader = sys.leader().await?;
    let follower = (0..sys.len()).find(|&i| i != leader).ok_or("no follower")?;
    let target = sys.target(follower);
    let killed_at = Arc::new(OnceLock::<Instant>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (killed_at, stop, acked) = (killed_at.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let conn = Conn::new();
            let mut failed_after = 0u64;
            let mut first_failure = None;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Read before the write goes out: a write that may have
                // been sent before the kill never counts.
                let started_after = killed_at.get().copied();
                let req = target.write(&format!("failover/{i:09}"), b"failover");
                i += 1;
                match target.call(&conn, req, FAILOVER_WRITE_TIMEOUT).await {
                    Ok(()) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                        if let Some(kill) = started_after {
                            return (Some(kill.elapsed()), failed_after, first_failure);
                        }
                    }
                    Err(e) => {
                        if let Some(kill) = killed_at.get() {
                            failed_after += 1;
                            if first_failure.is_none() {
                                first_failure = Some(format!(
                                    "the first failed write ended {:.2} s after the kill: {e}",
                                    kill.elapsed().as_secs_f64()
                                ));
                            }
                        }
                        tokio::time::sleep(FAILOVER_RETRY_PAUSE).await;
                    }
                }
            }
            (None, failed_after, first_failure)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    if acked.load(Ordering::Relaxed) == 0 {
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        return Err("the failover writer got no write acknowledged before the kill".into());
    }
    sys.kill(leader).await?;
    let _ = killed_at.set(Instant::now());
    let mut writer = writer;
    let seen = match tokio::time::timeout(FAILOVER_PATIENCE, &mut writer).await {
        Ok(seen) => seen,
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            writer.await
        }
    };
    match seen.map_err(|e| format!("the failover writer: {e}"))? {
        (Some(t), failed, first) => Ok((t, failed, first)),
        (None, failed, _) => Err(format!(
            "no write acknowledged within {} s of the kill ({failed} failed)",
            FAILOVER_PATIENCE.as_secs()
        )),
    }
}

/// The median, min and max of `d`.
pub fn spread(d: &[Duration]) -> Option<(Duration, Duration, Duration)> {
    let mut v = d.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    };
    Some((median, v[0], v[n - 1]))
}

/// `a / b` with two decimals, or "-" when either is missing or `b` is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

/// A figure with a sensible number of digits, or "-".
fn num(x: Option<f64>) -> String {
    match x {
        Some(x) if !x.is_finite() => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

/// One figure of a sample.
type Figure = fn(&Sample) -> Option<f64>;

/// The one table: per phase four rows (rate, latency, CPU, switches and
/// fsyncs), then failover; micro, etcd, micro/etcd.
pub fn table(specs: &[Spec], micro: &Results, etcd: Option<&Results>, nodes: usize) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    let pick = |r: Option<&Results>, i: usize| -> Option<Sample> {
        r.and_then(|r| r.samples.get(i))
            .and_then(|s| s.as_ref().ok())
            .cloned()
    };
    for (i, spec) in specs.iter().enumerate() {
        let (m, e) = (pick(Some(micro), i), pick(etcd, i));
        let ops = |s: &Option<Sample>| match s {
            Some(s) if s.errors > 0 => format!("{} ({} errors)", num(Some(s.rate)), s.errors),
            Some(s) => num(Some(s.rate)),
            None => "-".into(),
        };
        let f = |s: &Option<Sample>, g: Figure| s.as_ref().and_then(g);
        let pair = |s: &Option<Sample>, a: Figure, b: Figure| {
            format!("{} / {}", num(f(s, a)), num(f(s, b)))
        };
        let pair_ratio = |a: Figure, b: Figure| {
            format!(
                "{} / {}",
                ratio(f(&m, a), f(&e, a)),
                ratio(f(&m, b), f(&e, b))
            )
        };
        rows.push([
            spec.label(),
            "ops/s".into(),
            ops(&m),
            ops(&e),
            ratio(f(&m, |s| Some(s.rate)), f(&e, |s| Some(s.rate))),
        ]);
        let (p50, p99): (Figure, Figure) = (|s| Some(s.p50_ms), |s| Some(s.p99_ms));
        rows.push([
            String::new(),
            "p50 / p99 ms".into(),
            pair(&m, p50, p99),
            pair(&e, p50, p99),
            pair_ratio(p50, p99),
        ]);
        let cpu = |s: &Option<Sample>| {
            format!(
                "{} ({} + {})",
                num(f(s, |s| s.cpu_ms)),
                num(f(s, |s| s.leader_user_ms)),
                num(f(s, |s| s.leader_sys_ms))
            )
        };
        rows.push([
            String::new(),
            format!("CPU ms/op, {nodes} nodes (leader user + sys)"),
            cpu(&m),
            cpu(&e),
            format!(
                "{} ({} + {})",
                ratio(f(&m, |s| s.cpu_ms), f(&e, |s| s.cpu_ms)),
                ratio(f(&m, |s| s.leader_user_ms), f(&e, |s| s.leader_user_ms)),
                ratio(f(&m, |s| s.leader_sys_ms), f(&e, |s| s.leader_sys_ms))
            ),
        ]);
        let leader_io = |s: &Option<Sample>| {
            format!(
                "{} / {} / {}",
                num(f(s, |s| s.switches)),
                num(f(s, |s| s.fsyncs)),
                num(f(s, |s| s.sync_file_range))
            )
        };
        rows.push([
            String::new(),
            "leader per op: switches / fsyncs / sync_file_range".into(),
            leader_io(&m),
            leader_io(&e),
            format!(
                "{} / {} / {}",
                ratio(f(&m, |s| s.switches), f(&e, |s| s.switches)),
                ratio(f(&m, |s| s.fsyncs), f(&e, |s| s.fsyncs)),
                ratio(f(&m, |s| s.sync_file_range), f(&e, |s| s.sync_file_range))
            ),
        ]);
    }
    let fo = |r: Option<&Results>| -> (String, Option<f64>) {
        match r.and_then(|r| spread(&r.failovers)) {
            Some((med, min, max)) => (
                format!(
                    "{:.2} ({:.2}–{:.2}, {} runs)",
                    med.as_secs_f64(),
                    min.as_secs_f64(),
                    max.as_secs_f64(),
                    r.map_or(0, |r| r.failovers.len())
                ),
                Some(med.as_secs_f64()),
            ),
            None => ("-".into(), None),
        }
    };
    let ((mf, mm), (ef, em)) = (fo(Some(micro)), fo(etcd));
    rows.push([
        "failover: kill -9 leader → first acked write via another node".into(),
        "median (min–max) s".into(),
        mf,
        ef,
        ratio(mm, em),
    ]);
    let head = ["phase", "measure", "micro", "etcd", "micro/etcd"];
    let mut widths = head.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 5]| -> String {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(widths) {
            s.push(' ');
            s.push_str(c);
            s.push_str(&" ".repeat(w - c.chars().count()));
            s.push_str(" |");
        }
        s.push('\n');
        s
    };
    let mut out = line(head);
    for w in widths {
        out.push('|');
        out.push_str(&"-".repeat(w + 2));
    }
    out.push_str("|\n");
    for r in &rows {
        out.push_str(&line([&r[0], &r[1], &r[2], &r[3], &r[4]]));
    }
    out
}

/// The issue's goals, each "met", "not met" or "not judged", with figures.
pub fn goals(specs: &[Spec], micro: &Results, etcd: Option<&Results>) -> Vec<String> {
    let Some(etcd) = etcd else {
        return vec!["not judged: etcd was not measured".into()];
    };
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    let mut out = Vec::new();
    let at = |kind, conns| Spec {
        kind,
        via: Via::Leader,
        conns,
    };
    let w = at(Kind::Write, 64);
    out.push(match (micro.sample(specs, w), etcd.sample(specs, w)) {
        (Some(m), Some(e)) => format!(
            "writes/s ≥ 2× etcd at 64 connections, p99 no worse: {} (micro {:.0}/s p99 {:.1} ms, etcd {:.0}/s p99 {:.1} ms: {:.2}×)",
            verdict(m.rate >= 2.0 * e.rate && m.p99_ms <= e.p99_ms),
            m.rate,
            m.p99_ms,
            e.rate,
            e.p99_ms,
            m.rate / e.rate.max(1e-9)
        ),
        _ => "writes/s ≥ 2× etcd at 64 connections: not judged (not measured on both; give 64 in --connections)".into(),
    });
    let r = at(Kind::Read, 64);
    out.push(match (micro.sample(specs, r), etcd.sample(specs, r)) {
        (Some(m), Some(e)) => format!(
            "linearizable reads/s ≥ etcd at 64 connections: {} (micro {:.0}/s, etcd {:.0}/s: {:.2}×)",
            verdict(m.rate >= e.rate),
            m.rate,
            e.rate,
            m.rate / e.rate.max(1e-9)
        ),
        _ => "linearizable reads/s ≥ etcd at 64 connections: not judged (not measured on both)".into(),
    });
    out.push(match (spread(&micro.failovers), spread(&etcd.failovers)) {
        (Some((m, ..)), Some((e, ..))) => format!(
            "failover ≤ etcd's (medians): {} (micro {:.2} s, etcd {:.2} s)",
            verdict(m <= e),
            m.as_secs_f64(),
            e.as_secs_f64()
        ),
        _ => "failover ≤ etcd's: not judged (not measured on both)".into(),
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rate: f64, p99: f64) -> Sample {
        Sample {
            rate,
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            cpu_ms: Some(1.5),
            leader_user_ms: Some(0.5),
            leader_sys_ms: Some(0.25),
            switches: Some(27.0),
            fsyncs: Some(3.0),
            sync_file_range: Some(0.5),
            ..Default::default()
        }
    }

    fn results(specs: &[Spec], rate: f64, p99: f64, failover_ms: &[u64]) -> Results {
        Results {
            samples: specs.iter().map(|_| Ok(sample(rate, p99))).collect(),
            failovers: failover_ms
                .iter()
                .map(|&m| Duration::from_millis(m))
                .collect(),
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_phases_cover_both_kinds_both_ways_at_every_count() {
        let s = specs(&[16, 64]);
        assert_eq!(s.len(), 8);
        assert_eq!(
            s[0],
            Spec {
                kind: Kind::Write,
                via: Via::Leader,
                conns: 16
            }
        );
        assert_eq!(s[7].conns, 64);
        assert_eq!((s[7].kind, s[7].via), (Kind::Read, Via::Follower));
    }

    #[test]
    fn ratios_and_spread() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), "0.25");
        assert_eq!(ratio(Some(1.0), Some(0.0)), "-");
        assert_eq!(ratio(None, Some(1.0)), "-");
        let d = |ms: &[u64]| {
            ms.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let (med, min, max) = spread(&d(&[3900, 3100, 3400, 3500, 3300])).unwrap();
        assert_eq!(
            (med.as_millis(), min.as_millis(), max.as_millis()),
            (3400, 3100, 3900)
        );
        assert_eq!(spread(&d(&[1000, 2000])).unwrap().0.as_millis(), 1500);
        assert!(spread(&[]).is_none());
    }

    #[test]
    fn the_table_has_both_systems_and_the_ratio_per_row() {
        let s = specs(&[64]);
        let m = results(&s, 1000.0, 90.0, &[3100, 3400, 3900]);
        let mut e = results(&s, 4000.0, 45.0, &[1000, 1200, 2100]);
        e.samples[3] = Err("refused".into());
        let t = table(&s, &m, Some(&e), 3);
        let lines: Vec<&str> = t.lines().collect();
        // head, rule, 4 rows per phase, failover
        assert_eq!(lines.len(), 2 + 4 * 4 + 1, "{t}");
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() == lines[0].chars().count()),
            "{t}"
        );
        assert!(lines[0].contains("micro/etcd"), "{t}");
        let writes = lines[2];
        assert!(writes.contains("writes via leader, 64 conn"), "{t}");
        assert!(
            writes.contains("1000") && writes.contains("4000") && writes.contains("0.25"),
            "{t}"
        );
        assert!(
            lines[3].contains("45.0 / 90.0") && lines[3].contains("2.00 / 2.00"),
            "{t}"
        );
        assert!(lines[4].contains("1.50 (0.50 + 0.25)"), "{t}");
        assert!(lines[5].contains("27.0 / 3.00 / 0.50"), "{t}");
        // the phase etcd could not measure: "-" and no ratio
        let follower_reads = lines[2 + 3 * 4];
        assert!(follower_reads.contains("reads via follower"), "{t}");
        assert!(follower_reads.contains("| -"), "{t}");
        let fo = lines.last().unwrap();
        assert!(
            fo.contains("3.40 (3.10–3.90, 3 runs)") && fo.contains("2.83"),
            "{t}"
        );
        // without etcd every etcd cell is "-"
        let alone = table(&s, &m, None, 3);
        let cells: Vec<&str> = alone
            .lines()
            .nth(2)
            .unwrap()
            .split('|')
            .map(str::trim)
            .collect();
        assert_eq!(&cells[3..6], &["1000", "-", "-"], "{alone}");
    }

    #[test]
    fn goals_are_met_or_not_by_the_issue_thresholds() {
        let s = specs(&[16, 64]);
        let etcd = results(&s, 1000.0, 40.0, &[1200]);
        let fast = results(&s, 2100.0, 39.0, &[900]);
        let g = goals(&s, &fast, Some(&etcd));
        assert!(
            g[0].starts_with("writes/s") && g[0].contains(": met"),
            "{g:?}"
        );
        assert!(g[1].contains(": met") && g[2].contains(": met"), "{g:?}");
        // twice the rate but a worse p99 is not met; so is a slower failover
        let slow_tail = results(&s, 2100.0, 41.0, &[1300]);
        let g = goals(&s, &slow_tail, Some(&etcd));
        assert!(
            g[0].contains("not met") && g[2].contains("not met"),
            "{g:?}"
        );
        assert!(g[1].contains(": met"), "{g:?}");
        let g = goals(&specs(&[16]), &fast, Some(&etcd));
        assert!(g[0].contains("not judged"), "{g:?}");
        assert_eq!(goals(&s, &fast, None).len(), 1);
    }
}
