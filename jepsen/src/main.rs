//! `micro-jepsen`: a fault-injection test of a real Micro cluster.
//!
//! It starts `--nodes` `micro server` processes as one Raft cluster (each
//! in a network namespace of its own when run as root, else on 127.0.0.1,
//! .2, …: `net`), runs `--clients` concurrent store clients against them
//! for `--seconds` while a nemesis (`--nemesis`) kills, restarts, freezes
//! and thaws nodes, cuts the network between them, cuts their power and
//! removes and adds members, then heals everything, reads the final state
//! from every node and checks the recorded history (see `checker` for
//! exactly what is checked: per-key linearizability, list-append order,
//! final state). Exit status: 0 when every check
//! passes, 1 on any violation, 2 when the harness itself could not run.
//!
//! The run's directory (data, logs, `history.jsonl`, `faults.json`) is
//! removed at the end unless `--keep` is given or the run failed.

mod checker;
mod cluster;
mod events;
mod history;
mod lazyfs;
mod nemesis;
mod net;
mod report;
mod selftest;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::checker::{Check, NodeScan, Violation};
use crate::cluster::Cluster;
use crate::history::{Clock, Kind, Op, Outcome};
use crate::nemesis::{Family, Fault, Injected};
use crate::net::{Net, NetMode};
use crate::workload::{ClientConfig, Shared, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "micro-jepsen",
    about = "Fault-injection test of a Micro cluster: a workload, a nemesis, and checks of the history"
)]
struct Args {
    /// Nodes in the cluster (at least 3, at most 9)
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=9))]
    nodes: u8,
    /// How long the workload runs, in seconds
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Concurrent clients (client c talks to node c mod nodes)
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=256))]
    clients: u16,
    /// Seed of the random choices (ops, faults, timings); default: from the clock
    #[arg(long)]
    seed: Option<u64>,
    /// The micro binary (default: `micro` next to this executable)
    #[arg(long, value_name = "PATH")]
    micro: Option<PathBuf>,
    /// Keep the run's directory (data, logs, history) even when it passes
    #[arg(long)]
    keep: bool,
    /// A short run for CI: 20 seconds of workload unless --seconds is given
    #[arg(long)]
    smoke: bool,
    /// Run the workload without injecting faults
    #[arg(long)]
    no_faults: bool,
    /// Client-side timeout of one operation, in seconds
    #[arg(long, default_value_t = 15)]
    op_timeout: u64,
    /// How many acknowledged unique keys to point-read on every node after
    /// healing, chosen at random (0: all). The final scans check every key.
    #[arg(long, default_value_t = 1000)]
    final_reads: usize,
    /// Self-test of the checker: the clients read the local replica
    /// (`stale: true`) instead of linearizably, so the run is expected to
    /// find stale reads and FAIL. The final reads stay linearizable.
    #[arg(long)]
    stale_reads: bool,
    /// The faults to inject, a comma list of: kill (kill -9 a node or the
    /// leader), pause (SIGSTOP a node, a majority or the leader), partition
    /// (network partitions; needs netns), power (power failure of one node,
    /// a majority or all: unsynced data is lost; needs root and /dev/fuse),
    /// membership (replace a node, grow and shrink the cluster)
    #[arg(long, value_delimiter = ',', default_value = "kill,pause", value_parser = nemesis::parse_family)]
    nemesis: Vec<Family>,
    /// The network: netns (a namespace per node on a bridge of the run's
    /// own; needs root, ip and nft), loopback (127.0.0.x), or auto (netns
    /// when it can)
    #[arg(long, value_enum, default_value_t = NetMode::Auto)]
    net: NetMode,
    /// Instead of a run: the partition test (3 nodes in namespaces; the
    /// isolated leader must refuse writes, the majority accept them, and
    /// after healing every acknowledged write is on every node)
    #[arg(long)]
    partition_test: bool,
    /// The workloads, comma-separated: register (read/write/CAS registers),
    /// append (lists appended to by CAS), unique (write-once keys)
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "register,append,unique"
    )]
    workload: Vec<Workload>,
    /// Self-test of the power fault: the run is expected to lose
    /// acknowledged data (say, with a `micro` built with the `no-fsync`
    /// feature). Exit 0 only if the checks found lost or corrupted data, 1
    /// if not.
    #[arg(long)]
    expect_lost_writes: bool,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let mut args = Args::parse();
    if args.smoke && !std::env::args().any(|a| a == "--seconds" || a.starts_with("--seconds=")) {
        args.seconds = 20;
    }
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("micro-jepsen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The micro binary to run.
fn micro_path(given: Option<PathBuf>) -> Result<PathBuf> {
    let path = match given {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this executable")?
            .parent()
            .ok_or_else(|| anyhow!("this executable has no directory"))?
            .join("micro"),
    };
    if !path.is_file() {
        bail!(
            "no micro binary at {} (build it: cargo build -p micro-cli --bin micro, or pass --micro PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// Kills the nodes and tears the network down if the harness is
/// interrupted (Ctrl-C or SIGTERM).
pub fn on_interrupt(pids: cluster::Pids, net: Option<Arc<net::Teardown>>) {
    tokio::spawn(async move {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        let interrupted = tokio::select! {
            r = tokio::signal::ctrl_c() => r.is_ok(),
            _ = term => true,
        };
        if interrupted {
            for pid in pids.lock().unwrap_or_else(|e| e.into_inner()).values() {
                // SAFETY: kill(2) on the pids of our own unreaped children.
                unsafe {
                    libc::kill(*pid as libc::pid_t, libc::SIGKILL);
                }
            }
            lazyfs::unmount_all();
            if let Some(t) = net {
                // A moment for the killed processes to go.
                tokio::time::sleep(Duration::from_millis(200)).await;
                t.run();
                eprintln!("micro-jepsen: interrupted; nodes killed, network torn down");
            } else {
                eprintln!("micro-jepsen: interrupted; nodes killed");
            }
            std::process::exit(130);
        }
    });
}

/// The network `--net` asks for, set up for `nodes` nodes.
pub fn make_net(mode: NetMode, nodes: usize) -> Result<Net> {
    match (mode, net::unavailable()) {
        (NetMode::Loopback, _) => Ok(Net::loopback()),
        (NetMode::Netns, Some(why)) => bail!("--net netns cannot run here: {why}"),
        (NetMode::Auto, Some(why)) => {
            println!("network: {why}, so loopback");
            Ok(Net::loopback())
        }
        (NetMode::Netns, None) => Net::netns(nodes),
        (NetMode::Auto, None) => match Net::netns(nodes) {
            Ok(net) => Ok(net),
            Err(e) => {
                println!("network: cannot set up namespaces ({e:#}), so loopback");
                Ok(Net::loopback())
            }
        },
    }
}

/// Returns whether every check passed (with `--expect-lost-writes`: whether
/// lost data was found).
async fn run(args: Args) -> Result<bool> {
    let wall = Instant::now();
    let micro = micro_path(args.micro.clone())?;
    let power = !args.no_faults && args.nemesis.contains(&Family::Power);
    if power {
        if let Some(why) = lazyfs::unavailable() {
            bail!("{why}; run without power in --nemesis");
        }
    }
    if args.expect_lost_writes && !power {
        bail!("--expect-lost-writes is a self-test of power faults: give --nemesis with power");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let nodes = args.nodes as usize;
    let clients = args.clients as usize;
    if args.partition_test {
        if args.net == NetMode::Loopback {
            bail!("--partition-test needs network namespaces, not --net loopback");
        }
        if let Some(why) = net::unavailable() {
            bail!("--partition-test needs network namespaces: {why}");
        }
        return selftest::partition_test(&micro, Some(on_interrupt)).await;
    }
    let dir = tempfile::Builder::new()
        .prefix("micro-jepsen-")
        .tempdir()
        .context("cannot create the run's directory")?;
    let root = dir.path().to_path_buf();
    println!(
        "micro-jepsen: {nodes} nodes, {clients} clients, {}s, seed {seed}, faults {}{}{}",
        args.seconds,
        nemeses(&args),
        if args.stale_reads {
            ", STALE (local replica) reads: a self-test expected to FAIL"
        } else {
            ""
        },
        if args.expect_lost_writes {
            ", self-test: expected to LOSE acknowledged writes"
        } else {
            ""
        }
    );
    println!("micro binary: {}", micro.display());
    println!("run directory: {}", root.display());

    let clock = Clock::start();
    let outcome = run_in(&args, &micro, &root, seed, nodes, clients, clock).await;
    let passed = matches!(outcome, Ok(true));
    let kept = dir.keep();
    if passed && !args.keep {
        // The report, history and logs stay; the nodes' data goes.
        forget_data(&kept);
    } else {
        println!(
            "kept the run's directory with the nodes' data: {}",
            kept.display()
        );
    }
    println!("total time {:.1}s", wall.elapsed().as_secs_f64());
    outcome
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    args: &Args,
    micro: &Path,
    root: &Path,
    seed: u64,
    nodes: usize,
    clients: usize,
    clock: Clock,
) -> Result<bool> {
    // The membership nemesis grows a cluster of fewer than 5 by two spare
    // slots (started only when used), and shrinks larger ones by two.
    let membership = !args.no_faults && args.nemesis.contains(&Family::Membership);
    let slots = if membership && nodes < 5 {
        nodes + 2
    } else {
        nodes
    };
    let net = make_net(args.net, slots)?;
    println!("network: {}", net.describe());
    if !args.no_faults && args.nemesis.contains(&Family::Partition) && !net.is_netns() {
        bail!("--nemesis partition needs network namespaces: run as root with ip and nft installed (or leave partition out)");
    }
    println!("{} starting the cluster", clock.stamp());
    let pids = cluster::Pids::default();
    on_interrupt(pids.clone(), net.teardown());
    let power = !args.no_faults && args.nemesis.contains(&Family::Power);
    let mut cluster = Cluster::start(micro, root, nodes, slots, clock, pids, net, power).await?;
    if power {
        println!(
            "{} every node's data directory is a power-loss filesystem (kept in memory)",
            clock.stamp()
        );
    }
    let result = exercise(args, &mut cluster, root, seed, clients, clock).await;
    println!("{} stopping the cluster", clock.stamp());
    cluster.shutdown().await;
    cluster.unmount();
    result
}

/// The workload and the nemesis, then the final reads, the checks and the
/// report.
async fn exercise(
    args: &Args,
    cluster: &mut Cluster,
    root: &Path,
    seed: u64,
    clients: usize,
    clock: Clock,
) -> Result<bool> {
    let slots = cluster.len();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared::default());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let cfg = ClientConfig {
            id: c,
            node: c % slots,
            seed: seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(c as u64 + 1)),
            op_timeout: Duration::from_secs(args.op_timeout.max(1)),
            workloads: args.workload.clone(),
            stale_reads: args.stale_reads,
        };
        tasks.push(tokio::spawn(workload::client(
            cfg,
            cluster.addrs.clone(),
            clock,
            stop.clone(),
            shared.clone(),
        )));
    }
    let registrar = tokio::spawn(workload::services(
        clients,
        cluster.addrs.clone(),
        slots,
        cluster.admin_token().to_string(),
        clock,
        stop.clone(),
        Duration::from_secs(args.op_timeout.max(1)),
    ));
    let event_log = Arc::new(events::Log::default());
    let consumers = if args.workload.contains(&Workload::Events) {
        events::spawn_consumers(
            cluster.addrs.clone(),
            slots,
            seed,
            Duration::from_secs(args.op_timeout.max(1)),
            clock,
            stop.clone(),
            event_log.clone(),
        )
    } else {
        Vec::new()
    };
    println!(
        "{} workload started: {clients} clients for {}s",
        clock.stamp(),
        args.seconds
    );

    // The nemesis runs here, in this task, while a timer raises `stop`.
    let timer = {
        let (stop, shared) = (stop.clone(), shared.clone());
        let seconds = args.seconds;
        tokio::spawn(async move {
            let end = tokio::time::Instant::now() + Duration::from_secs(seconds);
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(end) => break,
                    _ = tick.tick() => println!(
                        "{} progress: {} ops ({} ok, {} unknown, {} failed)",
                        clock.stamp(),
                        shared.ops.load(Ordering::Relaxed),
                        shared.ok.load(Ordering::Relaxed),
                        shared.unknown.load(Ordering::Relaxed),
                        shared.failed.load(Ordering::Relaxed),
                    ),
                }
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let mut rng = StdRng::seed_from_u64(seed);
    // Failures to recover: reported as violations, after the checks that
    // can still be made.
    let mut recovery = Vec::new();
    let injected = if args.no_faults {
        timer.await.ok();
        Vec::new()
    } else {
        let (injected, failure) = nemesis::run(
            cluster,
            &args.nemesis,
            &mut rng,
            clock,
            stop.clone(),
            args.expect_lost_writes,
        )
        .await;
        // Without a failure the nemesis stops when the timer raises `stop`;
        // after one, the workload goes on to its end without faults.
        recovery.extend(failure);
        timer.await.ok();
        injected
    };
    let workload_end_us = clock.now();
    println!("{} workload over; healing every node", clock.stamp());
    if let Err(e) = cluster.heal_all().await {
        println!("{} {e:#}", clock.stamp());
        recovery.push(format!("healing failed: {e:#}"));
    }
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.context("a client task panicked")?);
    }
    parts.push(registrar.await.context("the registry task panicked")?);
    for c in consumers {
        c.await.context("an events consumer panicked")?;
    }
    let mut history = history::merge(parts);
    println!(
        "{} clients done: {} ops; waiting for a healthy cluster",
        clock.stamp(),
        history.len()
    );
    match cluster.wait_healthy(Duration::from_secs(60)).await {
        Ok((took, leader)) => println!(
            "{} cluster healthy after {:.1}s, leader n{leader}",
            clock.stamp(),
            took.as_secs_f64()
        ),
        Err(e) => {
            println!("{} {e}", clock.stamp());
            print!("{}", cluster.diagnose().await);
            recovery.push(format!("the cluster did not recover after healing: {e}"));
        }
    }
    // The members now (the membership nemesis may have changed them).
    let nodes = cluster.members_idx();
    if let Err(e) = workload::barrier(&cluster.addrs, &nodes, clock).await {
        println!("{} barrier: {e}", clock.stamp());
        recovery.push(format!("the healed cluster refused writes: {e}"));
    }

    // The final state: scans, service lists, and point reads of every
    // register, list and acknowledged unique key, on every node.
    println!("{} reading the final state from every node", clock.stamp());
    let (finals, scans) = workload::final_state(
        cluster.addrs.clone(),
        &nodes,
        cluster.admin_token(),
        &history,
        args.final_reads,
        &mut rng,
        clock,
    )
    .await;
    history::append(&mut history, finals);
    let event_finals = if args.workload.contains(&Workload::Events) {
        println!(
            "{} reading the topic on every node and draining the group",
            clock.stamp()
        );
        Some(events::final_phase(cluster.addrs.clone(), &nodes, clock, &event_log).await)
    } else {
        None
    };
    println!("{} checking {} ops", clock.stamp(), history.len());

    let (mut violations, notes) = checker::check(&history, &scans, &nodes);
    if let Some(finals) = &event_finals {
        let (deliveries, acks, streams) = event_log.snapshot();
        let (found, n) = checker::events::check(&history, &deliveries, &acks, &streams, finals);
        println!(
            "{} events: {} stored; {} group deliveries ({} redeliveries, {} in the final drain), {} plain-stream deliveries; acks: {} ok, {} failed or unknown",
            clock.stamp(),
            n.stored,
            n.group_deliveries,
            n.redeliveries,
            n.drained,
            n.plain_deliveries,
            n.acks_ok,
            n.acks_other
        );
        violations.extend(found);
    }
    println!(
        "{} checked in {:.1}s ({} keys searched for a linearization, {} ops, {} steps; \
         unknown writes: {} shown applied, {} never seen and left out)",
        clock.stamp(),
        notes.elapsed.as_secs_f64(),
        notes.linear_keys,
        notes.linear_ops,
        notes.linear_steps,
        notes.unknown_placed,
        notes.unknown_unseen
    );
    for f in &recovery {
        violations.push(Violation {
            check: Check::Recovery,
            what: f.clone(),
            ops: vec![],
        });
    }
    save(root, &history, &injected)?;
    let passed = violations.is_empty();
    report(&history, &injected, &violations, &notes, &scans, cluster);
    let spans: Vec<report::FaultSpan> = injected
        .iter()
        .map(|i| report::FaultSpan {
            name: i.fault.name().to_string(),
            targets: i
                .nodes
                .iter()
                .map(|n| format!("n{n}"))
                .collect::<Vec<_>>()
                .join(","),
            start_us: i.start_us,
            end_us: i.healed_us,
            recovered_s: i.recovered_s,
        })
        .collect();
    let info = report::RunInfo {
        nodes: nodes.len(),
        clients,
        seconds: args.seconds,
        seed,
        nemeses: nemeses(args),
        workloads: args
            .workload
            .iter()
            .map(|w| format!("{w:?}").to_lowercase())
            .collect::<Vec<_>>()
            .join(","),
        network: cluster.net.describe(),
        workload_end_us,
    };
    let written = report::write(root, &info, &history, &spans, &violations)?;
    if event_finals.is_some() {
        let path = root.join("events.log");
        if let Err(e) = event_log.write(&path) {
            println!("cannot write {}: {e}", path.display());
        }
    }
    println!(
        "{}  · results in {}",
        report::summary_line(&history, spans.len(), violations.len()),
        written.display()
    );
    if args.expect_lost_writes {
        return Ok(self_test_verdict(&violations, &injected));
    }
    Ok(passed)
}

/// The fault families of the run, as named on the command line (`off`
/// with `--no-faults`).
fn nemeses(args: &Args) -> String {
    if args.no_faults {
        return "off".into();
    }
    args.nemesis
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(",")
}

/// Removes the nodes' data directories (`n*/data`) of a passed run.
fn forget_data(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let data = e.path().join("data");
        if data.is_dir() {
            let _ = std::fs::remove_dir_all(&data);
        }
    }
}

/// `--expect-lost-writes`: prints and returns whether the lost-write check
/// caught the loss the run was meant to provoke.
fn self_test_verdict(violations: &[Violation], injected: &[Injected]) -> bool {
    // Lost or corrupted data in any form: a missing acknowledged write, a
    // history no order explains, a node that cannot come back on what it
    // had made durable.
    let lost = violations
        .iter()
        .filter(|v| {
            matches!(
                v.check,
                Check::LostWrite
                    | Check::NotLinearizable
                    | Check::Incompatible
                    | Check::RealTime
                    | Check::Divergence
                    | Check::Recovery
            )
        })
        .count();
    let power = injected.iter().filter(|i| i.fault == Fault::Power).count();
    if lost > 0 {
        println!(
            "SELF-TEST PASS: the lost-write check found {lost} anomalies of lost data after {power} power faults, as expected"
        );
        true
    } else {
        println!(
            "SELF-TEST FAIL: no acknowledged write was lost after {power} power faults; the harness did not catch what it should have ({} other violations)",
            violations.len()
        );
        false
    }
}

/// Writes the history and the faults into the run's directory.
fn save(root: &Path, history: &[Op], injected: &[Injected]) -> Result<()> {
    use std::io::Write;
    let path = root.join("history.jsonl");
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    for op in history {
        serde_json::to_writer(&mut f, op)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    std::fs::write(
        root.join("faults.json"),
        serde_json::to_string_pretty(injected)?,
    )?;
    Ok(())
}

fn report(
    history: &[Op],
    injected: &[Injected],
    violations: &[Violation],
    notes: &checker::Notes,
    scans: &[NodeScan],
    cluster: &Cluster,
) {
    println!();
    println!("==================== micro-jepsen report ====================");
    println!("operations during the workload:");
    println!(
        "  {:<18} {:>9} {:>9} {:>9} {:>9}",
        "kind", "attempted", "ok", "failed", "unknown"
    );
    let workload: Vec<&Op> = history
        .iter()
        .filter(|o| o.client != history::FINAL_CLIENT)
        .collect();
    for kind in Kind::ALL {
        let of: Vec<&&Op> = workload.iter().filter(|o| o.kind == kind).collect();
        let count = |o: Outcome| of.iter().filter(|x| x.outcome == o).count();
        println!(
            "  {:<18} {:>9} {:>9} {:>9} {:>9}",
            kind.name(),
            of.len(),
            count(Outcome::Ok),
            count(Outcome::Fail),
            count(Outcome::Unknown)
        );
    }
    let not_found = workload
        .iter()
        .filter(|o| {
            matches!(o.kind, Kind::ReadRegister | Kind::ReadUnique)
                && o.outcome == Outcome::Ok
                && o.value.is_none()
        })
        .count();
    println!("  (reads answered not-found: {not_found})");
    let finals = history.len() - workload.len();
    println!("final point reads: {finals}");
    for s in scans {
        let sizes: Vec<String> = s
            .by_prefix
            .iter()
            .map(|(p, r)| match r {
                Ok(m) => format!("{p} {} records", m.len()),
                Err(_) => format!("{p} unreadable"),
            })
            .collect();
        println!("final scan on n{}: {}", s.node, sizes.join(", "));
    }
    println!(
        "unique writes with unknown outcome: {} applied, {} not applied",
        notes.unknown_applied, notes.unknown_absent
    );
    if !notes.failed_write_seen.is_empty() {
        println!(
            "note: {} reads returned the value of a write that had failed with a definite error (ops {:?})",
            notes.failed_write_seen.len(),
            &notes.failed_write_seen[..notes.failed_write_seen.len().min(10)]
        );
    }
    println!("faults injected: {}", injected.len());
    for f in Fault::ALL {
        let n = injected.iter().filter(|i| i.fault == f).count();
        if n > 0 {
            println!("  {:<16} {n}", f.name());
        }
    }
    for i in injected {
        println!(
            "  {:>8.3}s {:<16} {:<9} healed {:<10} recovered {:<8} leader then {}",
            i.start_us as f64 / 1e6,
            i.fault.name(),
            i.nodes
                .iter()
                .map(|n| format!("n{n}"))
                .collect::<Vec<_>>()
                .join(","),
            i.healed_us
                .map(|h| format!("{:.3}s", h as f64 / 1e6))
                .unwrap_or_else(|| "at end".into()),
            i.recovered_s
                .map(|r| format!("in {r:.1}s"))
                .unwrap_or_else(|| "-".into()),
            i.leader_after
                .map(|l| format!("n{l}"))
                .unwrap_or_else(|| "-".into())
        );
        if !i.detail.is_empty() {
            println!("             ({})", i.detail);
        }
    }
    if !notes.inconclusive.is_empty() {
        println!(
            "inconclusive (search budget used up; the weaker register checks ran instead): {}",
            notes.inconclusive.len()
        );
        for (key, why) in &notes.inconclusive {
            println!("  {key}: {why}");
        }
    }
    println!("{}", checker::CHECKED);
    println!("violations: {}", violations.len());
    for check in Check::ALL {
        let of: Vec<&Violation> = violations.iter().filter(|v| v.check == check).collect();
        if of.is_empty() {
            continue;
        }
        println!("  {}: {}", check.name(), of.len());
        for v in of.iter().take(10) {
            print!("    {v}");
        }
        if of.len() > 10 {
            println!("    … and {} more (see history.jsonl)", of.len() - 10);
        }
    }
    if !violations.is_empty() {
        println!("server logs:");
        for n in cluster.nodes.iter().filter(|n| n.log.exists()) {
            println!("  n{} (node id {}): {}", n.idx, n.node_id, n.log.display());
        }
    }
    println!(
        "RESULT: {}",
        if violations.is_empty() {
            "PASS"
        } else {
            "FAIL"
        }
    );
}
