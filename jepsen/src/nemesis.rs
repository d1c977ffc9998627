//! The nemesis: one fault at a time, chosen with the run's seeded RNG.
//!
//! Each round it waits 1–3 s, injects a fault, holds it 2–6 s, heals it,
//! then waits (up to 20 s) for every node to see a healthy cluster again
//! before the next round. The menu:
//!
//! * `kill`: `kill -9` a random node, later restart it (same data
//!   directory and cluster address)
//! * `kill-leader`: the same, to the current leader
//! * `freeze-minority`: SIGSTOP one random node (a minority), later SIGCONT
//! * `freeze-majority`: SIGSTOP a random majority (⌊n/2⌋+1 nodes); the rest
//!   must refuse writes and linearizable reads
//! * `freeze-leader`: SIGSTOP the current leader
//! * `power`: a power failure of one node, a majority or all of them (a
//!   third of the time each): SIGKILL them, cut the power of their disks
//!   ([`crate::lazyfs`]: whatever they never fsynced is gone), later start
//!   them again. A correlated failure of a majority is what can lose writes
//!   a quorum acknowledged but never made durable.
//!
//! `--nemesis LIST` picks the families the menu is drawn from: `kill`
//! (kill, kill-leader), `pause` (the three freezes), `power`.
//!
//! The leader is found by asking a node that is up for the member list. If
//! none names a leader (say, mid-election), a random node is hit instead
//! and the log says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::history::Clock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Fault {
    Kill,
    KillLeader,
    FreezeMinority,
    FreezeMajority,
    FreezeLeader,
    Power,
}

/// The `--nemesis` families when the flag is not given.
pub const DEFAULT_NEMESES: &str = "kill,pause";

/// The faults of a `--nemesis` list (`kill,pause,power`), each once, in
/// [`Fault::ALL`] order.
pub fn parse_nemeses(list: &str) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "kill" => faults.extend([Fault::Kill, Fault::KillLeader]),
            "pause" => faults.extend([
                Fault::FreezeMinority,
                Fault::FreezeMajority,
                Fault::FreezeLeader,
            ]),
            "power" => faults.push(Fault::Power),
            other => {
                return Err(format!(
                    "unknown nemesis {other:?} (known: kill, pause, power)"
                ))
            }
        }
    }
    if faults.is_empty() {
        return Err("--nemesis needs at least one of: kill, pause, power".into());
    }
    Ok(Fault::ALL
        .into_iter()
        .filter(|f| faults.contains(f))
        .collect())
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::FreezeMinority,
        Fault::FreezeMajority,
        Fault::FreezeLeader,
        Fault::Power,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::FreezeMinority => "freeze-minority",
            Fault::FreezeMajority => "freeze-majority",
            Fault::FreezeLeader => "freeze-leader",
            Fault::Power => "power",
        }
    }

    fn kills(self) -> bool {
        matches!(self, Fault::Kill | Fault::KillLeader | Fault::Power)
    }
}

/// One injected fault.
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    pub fault: Fault,
    pub nodes: Vec<usize>,
    pub start_us: u64,
    /// when it was healed (`None`: healed by the final heal)
    pub healed_us: Option<u64>,
    /// how long the cluster took to look healthy again after the heal
    pub recovered_s: Option<f64>,
    /// the leader then
    pub leader_after: Option<usize>,
    /// power: what the cut dropped, per node
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Sleeps for `d`, or less if `stop` is raised; true if it was.
async fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let left = end - tokio::time::Instant::now();
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
    stop.load(Ordering::Relaxed)
}

/// Injects faults drawn from `menu` until `stop` is raised; leaves the
/// cluster as it is (the caller heals everything). Returns the faults
/// injected, and why it stopped early if a killed node would not start
/// again. With `correlated`, power failures always hit a majority or all
/// nodes (the self-test: one node's loss cannot lose a quorum's writes).
pub async fn run(
    cluster: &mut Cluster,
    rng: &mut StdRng,
    clock: Clock,
    stop: Arc<AtomicBool>,
    menu: &[Fault],
    correlated: bool,
) -> (Vec<Injected>, Option<String>) {
    let mut done = Vec::new();
    let n = cluster.len();
    loop {
        if nap(Duration::from_millis(rng.gen_range(1000..3000)), &stop).await {
            break;
        }
        let Some(&fault) = menu.choose(rng) else {
            break;
        };
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let targets: Vec<usize> = match fault {
            Fault::Kill | Fault::FreezeMinority => vec![order[0]],
            Fault::FreezeMajority => order[..n / 2 + 1].to_vec(),
            Fault::Power => match rng.gen_range(correlated as u32..3) {
                0 => vec![order[0]],
                1 => order[..n / 2 + 1].to_vec(),
                _ => order.clone(),
            },
            Fault::KillLeader | Fault::FreezeLeader => match cluster.leader(&order).await {
                Some(l) => vec![l],
                None => {
                    println!(
                        "{} nemesis: no node names a leader; hitting a random node",
                        clock.stamp()
                    );
                    vec![order[0]]
                }
            },
        };
        let start_us = clock.now();
        for &t in &targets {
            if fault.kills() {
                cluster.kill(t).await;
            } else {
                cluster.freeze(t);
            }
        }
        let mut detail = None;
        if fault == Fault::Power {
            // every target is dead (killed and reaped) before any disk
            // loses power, so no write of theirs lands after the cut
            let mut cuts = Vec::new();
            for &t in &targets {
                if let Some(c) = cluster.power_cut(t) {
                    cuts.push(format!(
                        "n{t}: {} unsynced bytes in {} files dropped, {} entries vanished",
                        c.dropped_bytes, c.reverted, c.vanished
                    ));
                }
            }
            detail = Some(cuts.join("; "));
        }
        let hold = Duration::from_millis(rng.gen_range(2000..6000));
        println!(
            "{} nemesis: {} {:?} (node ids {:?}); healing in {:.1}s",
            clock.stamp(),
            fault.name(),
            targets.iter().map(|t| format!("n{t}")).collect::<Vec<_>>(),
            targets
                .iter()
                .map(|&t| cluster.nodes[t].node_id)
                .collect::<Vec<_>>(),
            hold.as_secs_f64()
        );
        if let Some(d) = &detail {
            println!("{} nemesis: power cut: {d}", clock.stamp());
        }
        let mut record = Injected {
            fault,
            nodes: targets.clone(),
            start_us,
            healed_us: None,
            recovered_s: None,
            leader_after: None,
            detail,
        };
        let stopped = nap(hold, &stop).await;
        if stopped {
            // The final heal takes it from here.
            done.push(record);
            break;
        }
        for &t in &targets {
            if !fault.kills() {
                cluster.thaw(t);
            } else if let Err(e) = cluster.restart(t).await {
                let after = if fault == Fault::Power {
                    "a power cut (its data directory as last fsynced)"
                } else {
                    "kill -9"
                };
                let mut why = format!("node n{t} did not start again after {after}: {e:#}");
                if fault == Fault::Power {
                    why.push_str(&format!(
                        "\nits data directory after the cut:\n{}",
                        cluster.listing(t)
                    ));
                }
                println!("{} nemesis: {why}; no more faults", clock.stamp());
                done.push(record);
                return (done, Some(why));
            }
        }
        record.healed_us = Some(clock.now());
        let how = if fault.kills() { "restarted" } else { "thawed" };
        println!(
            "{} nemesis: {how} {:?}",
            clock.stamp(),
            targets.iter().map(|t| format!("n{t}")).collect::<Vec<_>>()
        );
        // Cut short when the workload ends: the final heal waits anyway.
        let healthy = tokio::select! {
            r = cluster.wait_healthy(Duration::from_secs(20)) => r,
            _ = nap(Duration::from_secs(3600), &stop) => Err("the workload ended first".to_string()),
        };
        match healthy {
            Ok((took, leader)) => {
                record.recovered_s = Some(took.as_secs_f64());
                record.leader_after = Some(leader);
                println!(
                    "{} nemesis: cluster healthy again after {:.1}s, leader n{leader}",
                    clock.stamp(),
                    took.as_secs_f64()
                );
            }
            Err(e) => println!("{} nemesis: {e}; carrying on", clock.stamp()),
        }
        done.push(record);
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    (done, None)
}
