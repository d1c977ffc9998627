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
//! With `partition` (netns mode only), network partitions between the
//! nodes (clients still reach every node), healed by removing the rules:
//!
//! * `partition-halves`: a random minority and the majority cut apart
//! * `partition-leader`: the leader cut off from every other node
//! * `partition-ring`: the Jepsen "majorities ring": the nodes in a random
//!   ring, each accepting packets only from the majority of the ring
//!   centred on it (so every node sees a majority, no two the same one)
//! * `partition-one-way`: node A's packets to node B dropped, B's to A
//!   delivered (A is the leader half the time)
//!
//! With `membership`:
//!
//! * `member-replace`: remove a random member (`Cluster.Remove`), kill it,
//!   wipe its data; the heal starts it fresh, joining under a new id
//! * `member-grow`: two spare slots join as new nodes
//! * `member-shrink`: two random members removed, killed, wiped (never
//!   below three members; it grows when there is room, else shrinks)
//!
//! `--nemesis` names the families to draw from; each round picks a family,
//! then a fault of it, at random.
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
    PartitionHalves,
    PartitionLeader,
    PartitionRing,
    PartitionOneWay,
    MemberReplace,
    MemberGrow,
    MemberShrink,
    Power,
}

/// A `--nemesis` name: a family of faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Kill,
    Pause,
    Partition,
    Membership,
    Power,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Kill => "kill",
            Family::Pause => "pause",
            Family::Partition => "partition",
            Family::Membership => "membership",
            Family::Power => "power",
        }
    }

    pub fn faults(self) -> &'static [Fault] {
        match self {
            Family::Kill => &[Fault::Kill, Fault::KillLeader],
            Family::Pause => &[
                Fault::FreezeMinority,
                Fault::FreezeMajority,
                Fault::FreezeLeader,
            ],
            Family::Partition => &[
                Fault::PartitionHalves,
                Fault::PartitionLeader,
                Fault::PartitionRing,
                Fault::PartitionOneWay,
            ],
            Family::Membership => &[Fault::MemberReplace, Fault::MemberGrow, Fault::MemberShrink],
            Family::Power => &[Fault::Power],
        }
    }
}

/// Parses one `--nemesis` name.
pub fn parse_family(word: &str) -> Result<Family, String> {
    const KNOWN: [Family; 5] = [
        Family::Kill,
        Family::Pause,
        Family::Partition,
        Family::Membership,
        Family::Power,
    ];
    KNOWN
        .into_iter()
        .find(|f| f.name() == word.trim())
        .ok_or_else(|| {
            format!(
                "unknown nemesis {word:?} (known: {})",
                KNOWN.map(Family::name).join(", ")
            )
        })
}

impl Fault {
    pub const ALL: [Fault; 13] = [
        Fault::Kill,
        Fault::KillLeader,
        Fault::FreezeMinority,
        Fault::FreezeMajority,
        Fault::FreezeLeader,
        Fault::PartitionHalves,
        Fault::PartitionLeader,
        Fault::PartitionRing,
        Fault::PartitionOneWay,
        Fault::MemberReplace,
        Fault::MemberGrow,
        Fault::MemberShrink,
        Fault::Power,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillLeader => "kill-leader",
            Fault::FreezeMinority => "freeze-minority",
            Fault::FreezeMajority => "freeze-majority",
            Fault::FreezeLeader => "freeze-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionRing => "partition-ring",
            Fault::PartitionOneWay => "partition-one-way",
            Fault::MemberReplace => "member-replace",
            Fault::MemberGrow => "member-grow",
            Fault::MemberShrink => "member-shrink",
            Fault::Power => "power",
        }
    }
}

/// Who drops whose packets: `(node, from, to)` as `Cluster::partition`
/// takes them.
pub type Grudges = Vec<(usize, Vec<usize>, Vec<usize>)>;

/// Two groups cut apart, both ways.
pub fn split(a: &[usize], b: &[usize]) -> Grudges {
    let mut g: Grudges = a.iter().map(|&x| (x, b.to_vec(), b.to_vec())).collect();
    g.extend(b.iter().map(|&y| (y, a.to_vec(), a.to_vec())));
    g
}

/// The majorities ring over `ring` (in ring order): each node accepts
/// packets only from the majority window of the ring centred on it.
pub fn majorities_ring(ring: &[usize]) -> Grudges {
    let n = ring.len();
    let m = n / 2 + 1;
    let back = (m - 1) / 2;
    (0..n)
        .map(|p| {
            let window: Vec<usize> = (0..m).map(|k| ring[(p + n - back + k) % n]).collect();
            let from: Vec<usize> = ring
                .iter()
                .copied()
                .filter(|x| !window.contains(x))
                .collect();
            (ring[p], from, Vec::new())
        })
        .collect()
}

/// A readable summary of grudges: `n0 drops n1,n2; …`.
fn describe_grudges(g: &Grudges) -> String {
    let names = |v: &[usize]| {
        v.iter()
            .map(|n| format!("n{n}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    g.iter()
        .filter(|(_, f, t)| !f.is_empty() || !t.is_empty())
        .map(|(n, f, t)| match (f.is_empty(), t.is_empty()) {
            (false, false) if f == t => format!("n{n} cut from {}", names(f)),
            _ => {
                let mut parts = Vec::new();
                if !f.is_empty() {
                    parts.push(format!("drops from {}", names(f)));
                }
                if !t.is_empty() {
                    parts.push(format!("drops to {}", names(t)));
                }
                format!("n{n} {}", parts.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One injected fault.
#[derive(Clone, Debug, Serialize)]
pub struct Injected {
    pub fault: Fault,
    /// what was cut, for partitions
    pub detail: String,
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
/// stopped early if a fault could not be carried out or healed (a killed
/// node that would not start again, a cut that could not be made, a node
/// that could not be removed or would not join). With `correlated`, power
/// failures always hit a majority or all nodes (the self-test: one node's
/// loss cannot lose a quorum's writes).
pub async fn run(
    cluster: &mut Cluster,
    families: &[Family],
    rng: &mut StdRng,
    clock: Clock,
    stop: Arc<AtomicBool>,
    correlated: bool,
) -> (Vec<Injected>, Option<String>) {
    let mut done = Vec::new();
    let slots = cluster.len();
    loop {
        if nap(Duration::from_millis(rng.gen_range(1000..3000)), &stop).await {
            break;
        }
        let family = *families.choose(rng).expect("at least one family");
        let mut fault = *family.faults().choose(rng).expect("faults");
        let mut order = cluster.members_idx();
        order.shuffle(rng);
        let n = order.len();
        // The membership arms: grow by two when there is room, else shrink
        // by two (never below three members).
        if fault == Fault::MemberShrink && n + 2 <= slots {
            fault = Fault::MemberGrow;
        } else if fault == Fault::MemberGrow && n + 2 > slots {
            fault = Fault::MemberShrink;
        }
        if fault == Fault::MemberShrink && n < 5 {
            fault = Fault::MemberReplace;
        }
        let leader = match fault {
            Fault::KillLeader
            | Fault::FreezeLeader
            | Fault::PartitionLeader
            | Fault::PartitionOneWay => {
                let l = cluster.leader(&order).await;
                if l.is_none() {
                    println!(
                        "{} nemesis: no node names a leader; hitting a random node",
                        clock.stamp()
                    );
                }
                l
            }
            _ => None,
        };
        let start_us = clock.now();
        let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.node_id).collect();
        let (targets, detail) = match inject(cluster, fault, &order, leader, rng, correlated).await
        {
            Ok(t) => t,
            Err(e) => {
                let why = format!("{} could not be carried out: {e:#}", fault.name());
                println!("{} nemesis: {why}; no more faults", clock.stamp());
                return (done, Some(why));
            }
        };
        let hold = Duration::from_millis(rng.gen_range(2000..6000));
        println!(
            "{} nemesis: {} {:?} (node ids {:?}){}; healing in {:.1}s",
            clock.stamp(),
            fault.name(),
            targets.iter().map(|t| format!("n{t}")).collect::<Vec<_>>(),
            // (as they were: a removed node has none now, a new one its own)
            targets
                .iter()
                .map(|&t| if ids[t] != 0 {
                    ids[t]
                } else {
                    cluster.nodes[t].node_id
                })
                .collect::<Vec<_>>(),
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            },
            hold.as_secs_f64()
        );
        let mut record = Injected {
            fault,
            detail,
            nodes: targets.clone(),
            start_us,
            healed_us: None,
            recovered_s: None,
            leader_after: None,
        };
        let stopped = nap(hold, &stop).await;
        if stopped && fault != Fault::MemberReplace {
            // The final heal takes it from here (it does not add removed
            // nodes back: a replacement is finished here).
            done.push(record);
            break;
        }
        let how = match heal(cluster, fault, &targets).await {
            Ok(how) => how,
            Err(e) => {
                let why = format!("healing {} failed: {e:#}", fault.name());
                println!("{} nemesis: {why}; no more faults", clock.stamp());
                done.push(record);
                return (done, Some(why));
            }
        };
        record.healed_us = Some(clock.now());
        println!(
            "{} nemesis: {how} {:?}{}",
            clock.stamp(),
            targets.iter().map(|t| format!("n{t}")).collect::<Vec<_>>(),
            if fault == Fault::MemberReplace {
                format!(
                    " (now node ids {:?})",
                    targets
                        .iter()
                        .map(|&t| cluster.nodes[t].node_id)
                        .collect::<Vec<_>>()
                )
            } else {
                String::new()
            }
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

/// Carries out `fault` on the members in `order` (shuffled); returns the
/// nodes it hit and, for partitions, what was cut.
async fn inject(
    cluster: &mut Cluster,
    fault: Fault,
    order: &[usize],
    leader: Option<usize>,
    rng: &mut StdRng,
    correlated: bool,
) -> anyhow::Result<(Vec<usize>, String)> {
    let n = order.len();
    let leader_or_any = leader.unwrap_or(order[0]);
    let targets = match fault {
        Fault::Kill | Fault::FreezeMinority => vec![order[0]],
        Fault::FreezeMajority => order[..n / 2 + 1].to_vec(),
        Fault::KillLeader | Fault::FreezeLeader => vec![leader_or_any],
        Fault::PartitionHalves => order[..n / 2].to_vec(),
        Fault::PartitionLeader => vec![leader_or_any],
        Fault::PartitionRing => order.to_vec(),
        Fault::PartitionOneWay => {
            // A's packets to B are dropped (by B); B's reach A.
            let a = match leader {
                Some(l) if rng.gen_bool(0.5) => l,
                _ => order[0],
            };
            let b = *order.iter().find(|&&x| x != a).expect("two nodes");
            vec![a, b]
        }
        Fault::Power => match rng.gen_range(correlated as u32..3) {
            0 => vec![order[0]],
            1 => order[..n / 2 + 1].to_vec(),
            _ => order.to_vec(),
        },
        Fault::MemberReplace => vec![order[0]],
        Fault::MemberShrink => order[..2].to_vec(),
        Fault::MemberGrow => (0..cluster.len())
            .filter(|i| !order.contains(i))
            .take(2)
            .collect(),
    };
    let mut detail = String::new();
    match fault {
        Fault::Kill | Fault::KillLeader => {
            for &t in &targets {
                cluster.kill(t).await;
            }
        }
        Fault::FreezeMinority | Fault::FreezeMajority | Fault::FreezeLeader => {
            for &t in &targets {
                cluster.freeze(t);
            }
        }
        Fault::Power => {
            // Every target is dead (killed and reaped) before any disk
            // loses power, so no write of theirs lands after the cut.
            for &t in &targets {
                cluster.kill(t).await;
            }
            let mut cuts = Vec::new();
            for &t in &targets {
                if let Some(c) = cluster.power_cut(t) {
                    cuts.push(format!(
                        "n{t}: {} unsynced bytes in {} files dropped, {} entries vanished",
                        c.dropped_bytes, c.reverted, c.vanished
                    ));
                }
            }
            detail = format!("power cut: {}", cuts.join("; "));
        }
        Fault::PartitionHalves
        | Fault::PartitionLeader
        | Fault::PartitionRing
        | Fault::PartitionOneWay => {
            let rest = |cut: &[usize]| -> Vec<usize> {
                order.iter().copied().filter(|x| !cut.contains(x)).collect()
            };
            let grudges = match fault {
                Fault::PartitionHalves | Fault::PartitionLeader => split(&targets, &rest(&targets)),
                Fault::PartitionRing => majorities_ring(order),
                _ => vec![(targets[1], vec![targets[0]], vec![])],
            };
            detail = describe_grudges(&grudges);
            cluster.partition(&grudges).await?;
        }
        Fault::MemberReplace | Fault::MemberShrink => {
            for &t in &targets {
                cluster.remove_member(t).await?;
            }
            detail = format!("removed, data wiped; {} members left", n - targets.len());
        }
        Fault::MemberGrow => {
            for &t in &targets {
                cluster.add_member(t).await?;
            }
            detail = format!("joined as new nodes; {} members", n + targets.len());
        }
    }
    Ok((targets, detail))
}

/// Heals `fault`; says what it did.
async fn heal(
    cluster: &mut Cluster,
    fault: Fault,
    targets: &[usize],
) -> anyhow::Result<&'static str> {
    match fault {
        Fault::Kill | Fault::KillLeader => {
            for &t in targets {
                cluster.restart(t).await.map_err(|e| {
                    anyhow::anyhow!("n{t} did not start again after kill -9: {e:#}")
                })?;
            }
            Ok("restarted")
        }
        Fault::Power => {
            if let Err(e) = cluster.restart_all_of(targets).await {
                let listings: Vec<String> = targets
                    .iter()
                    .map(|&t| format!("n{t}:\n{}", cluster.listing(t)))
                    .collect();
                anyhow::bail!(
                    "a node did not start again after a power cut (on its data as last fsynced): {e:#}\ntheir data directories after the cut:\n{}",
                    listings.join("\n")
                );
            }
            Ok("powered on and restarted")
        }
        Fault::FreezeMinority | Fault::FreezeMajority | Fault::FreezeLeader => {
            for &t in targets {
                cluster.thaw(t);
            }
            Ok("thawed")
        }
        Fault::PartitionHalves
        | Fault::PartitionLeader
        | Fault::PartitionRing
        | Fault::PartitionOneWay => {
            cluster.heal_network().await?;
            Ok("healed the network around")
        }
        Fault::MemberReplace => {
            for &t in targets {
                cluster.add_member(t).await?;
            }
            Ok("added back as new nodes")
        }
        // The new size stays.
        Fault::MemberGrow | Fault::MemberShrink => Ok("kept the new membership:"),
    }
}
