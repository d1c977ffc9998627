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
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::FreezeMinority,
        Fault::FreezeMajority,
        Fault::FreezeLeader,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::FreezeMinority => "freeze-minority",
            Fault::FreezeMajority => "freeze-majority",
            Fault::FreezeLeader => "freeze-leader",
        }
    }

    fn kills(self) -> bool {
        matches!(self, Fault::Kill | Fault::KillLeader)
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

/// Injects faults until `stop` is raised; leaves the cluster as it is (the
/// caller heals everything). Returns the faults injected, and why it
/// stopped early if a killed node would not start again.
pub async fn run(
    cluster: &mut Cluster,
    rng: &mut StdRng,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> (Vec<Injected>, Option<String>) {
    let mut done = Vec::new();
    let n = cluster.len();
    loop {
        if nap(Duration::from_millis(rng.gen_range(1000..3000)), &stop).await {
            break;
        }
        let fault = *Fault::ALL.choose(rng).expect("faults");
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let targets: Vec<usize> = match fault {
            Fault::Kill | Fault::FreezeMinority => vec![order[0]],
            Fault::FreezeMajority => order[..n / 2 + 1].to_vec(),
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
        let mut record = Injected {
            fault,
            nodes: targets.clone(),
            start_us,
            healed_us: None,
            recovered_s: None,
            leader_after: None,
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
                let why = format!("node n{t} did not start again after kill -9: {e:#}");
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
