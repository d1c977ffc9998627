//! The partition test (`micro-jepsen --partition-test`, and the `#[test]`
//! below when run as root): three nodes, each in its own network
//! namespace; the leader is cut off from the other two. Writes through the
//! isolated leader must fail with an error that names the lost quorum
//! (never be acknowledged), a linearizable read through it must fail, and
//! writes through the majority must be acknowledged. After healing, every
//! node must return every acknowledged write, and none of the writes the
//! minority refused (they cannot have committed: the leader that took them
//! had no quorum, and its uncommitted entries are overwritten).
//!
//! It must never pass on a run it could not carry out: a step that cannot
//! be done is an error, not a pass.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::cluster::{Cluster, Pids};
use crate::history::{Clock, Outcome};
use crate::nemesis::split;
use crate::net::{Net, Teardown};
use crate::workload::{barrier, connect, Cond};

/// An unconditional write: its outcome and why it was not ok.
async fn write(
    client: &micro::Client,
    key: &str,
    value: &str,
    limit: Duration,
) -> (Outcome, Option<String>) {
    let done = crate::workload::write(client, key, value, Cond::None, limit).await;
    (done.outcome, done.error)
}

/// A read: its outcome, the value found, and why it failed.
async fn read(
    client: &micro::Client,
    key: &str,
    limit: Duration,
    stale: bool,
) -> (Outcome, Option<String>, Option<String>) {
    let done = crate::workload::read(client, key, limit, stale).await;
    (done.outcome, done.value, done.error)
}

/// Writes tried through the isolated leader, at once.
const MINORITY_WRITES: usize = 3;
/// Writes acknowledged through the majority.
const MAJORITY_WRITES: usize = 10;

/// What to call with the pids and the network's teardown once they exist.
pub type OnStart = fn(Pids, Option<Arc<Teardown>>);

/// Runs the test; `on_start` gets the pids and the network's teardown
/// (for an interrupt handler). Prints what it checks; returns whether it
/// passed.
pub async fn partition_test(micro: &Path, on_start: Option<OnStart>) -> Result<bool> {
    let wall = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("micro-jepsen-partition-")
        .tempdir()
        .context("cannot create the run's directory")?;
    let clock = Clock::start();
    let net = Net::netns(3)?;
    println!("partition test: {}", net.describe());
    println!("run directory: {}", dir.path().display());
    let pids = Pids::default();
    if let Some(f) = on_start {
        f(pids.clone(), net.teardown());
    }
    let mut cluster = Cluster::start(micro, dir.path(), 3, 3, clock, pids, net, false).await?;
    let outcome = exercise(&mut cluster, clock).await;
    cluster.shutdown().await;
    drop(cluster);
    let passed = matches!(outcome, Ok(true));
    if !passed {
        let kept = dir.keep();
        println!("kept the run's directory: {}", kept.display());
    }
    println!(
        "partition test: {} in {:.1}s",
        if passed { "PASS" } else { "FAIL" },
        wall.elapsed().as_secs_f64()
    );
    outcome
}

async fn exercise(cluster: &mut Cluster, clock: Clock) -> Result<bool> {
    let (_, leader) = cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let majority: Vec<usize> = (0..3).filter(|&n| n != leader).collect();
    cluster.partition(&split(&[leader], &majority)).await?;
    println!(
        "{} isolated the leader n{leader} from n{} and n{}",
        clock.stamp(),
        majority[0],
        majority[1]
    );
    let mut failures = Vec::new();

    // The minority: writes and a read through the isolated leader.
    let minority = {
        let addr = cluster
            .addrs
            .get(leader)
            .ok_or_else(|| anyhow!("n{leader} is down"))?;
        tokio::spawn(async move {
            let client = connect(&addr)
                .await
                .ok_or_else(|| anyhow!("cannot connect to the isolated n{leader} at {addr}"))?;
            let mut set = tokio::task::JoinSet::new();
            for i in 0..MINORITY_WRITES {
                let client = client.clone();
                set.spawn(async move {
                    let key = format!("p/minority/{i}");
                    let (outcome, error) =
                        write(&client, &key, "minority", Duration::from_secs(25)).await;
                    (key, outcome, error)
                });
            }
            let mut writes = Vec::new();
            while let Some(w) = set.join_next().await {
                writes.push(w.map_err(|e| anyhow!("a minority write panicked: {e}"))?);
            }
            writes.sort_by(|a, b| a.0.cmp(&b.0));
            let read = read(&client, "p/minority/0", Duration::from_secs(25), false).await;
            anyhow::Ok((writes, read))
        })
    };

    // The majority: writes through both nodes, each retried (same key and
    // value) until acknowledged.
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..MAJORITY_WRITES {
        let node = majority[i % 2];
        let key = format!("p/majority/{i}");
        loop {
            let got = match cluster.addrs.get(node) {
                Some(addr) => match connect(&addr).await {
                    Some(c) => Some(write(&c, &key, &key, Duration::from_secs(15)).await),
                    None => None,
                },
                None => None,
            };
            if let Some((Outcome::Ok, _)) = got {
                acked.push(key.clone());
                break;
            }
            if Instant::now() > deadline {
                failures.push(format!(
                    "the majority did not acknowledge {key} through n{node} within 30 s ({:?})",
                    got.and_then(|g| g.1)
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    println!(
        "{} the majority acknowledged {} of {MAJORITY_WRITES} writes",
        clock.stamp(),
        acked.len()
    );

    let (writes, minority_read) = minority
        .await
        .map_err(|e| anyhow!("the minority's client failed: {e}"))??;
    let mut refused = Vec::new();
    for (key, outcome, error) in writes {
        let error = error.unwrap_or_default();
        println!(
            "{} write {key} through the isolated n{leader}: {outcome:?} ({error})",
            clock.stamp()
        );
        if outcome == Outcome::Ok {
            failures.push(format!(
                "the isolated leader n{leader} acknowledged the write of {key}"
            ));
        } else if !error.contains("quorum") {
            failures.push(format!(
                "the isolated leader n{leader} refused {key} without naming the lost quorum: {error}"
            ));
        }
        refused.push(key);
    }
    match minority_read {
        (Outcome::Ok, value, _) => failures.push(format!(
            "a linearizable read through the isolated leader n{leader} was answered ({value:?})"
        )),
        (_, _, error) => println!(
            "{} linearizable read through the isolated n{leader}: refused ({})",
            clock.stamp(),
            error.unwrap_or_default()
        ),
    }

    cluster.heal_network().await?;
    println!("{} healed the network", clock.stamp());
    let (took, now_leader) = cluster
        .wait_healthy(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow!("the cluster did not recover after healing: {e}"))?;
    println!(
        "{} healthy again after {:.1}s, leader n{now_leader}",
        clock.stamp(),
        took.as_secs_f64()
    );
    barrier(&cluster.addrs, &cluster.members_idx(), clock)
        .await
        .map_err(|e| anyhow!("the healed cluster refused writes: {e}"))?;

    // Everything acknowledged is on every node; nothing refused is anywhere.
    for node in 0..cluster.len() {
        let addr = cluster
            .addrs
            .get(node)
            .ok_or_else(|| anyhow!("n{node} is down"))?;
        let client = connect(&addr)
            .await
            .ok_or_else(|| anyhow!("cannot connect to n{node}"))?;
        for key in &acked {
            match read(&client, key, Duration::from_secs(15), false).await {
                (Outcome::Ok, Some(v), _) if v == *key => {}
                (Outcome::Ok, v, _) => failures.push(format!(
                    "LOST: the acknowledged write of {key} reads {v:?} on n{node}"
                )),
                (_, _, e) => bail!("cannot read {key} on n{node}: {}", e.unwrap_or_default()),
            }
        }
        for key in &refused {
            match read(&client, key, Duration::from_secs(15), false).await {
                (Outcome::Ok, None, _) => {}
                (Outcome::Ok, v, _) => failures.push(format!(
                    "the write of {key} that the minority refused took effect on n{node} ({v:?})"
                )),
                (_, _, e) => bail!("cannot read {key} on n{node}: {}", e.unwrap_or_default()),
            }
        }
    }
    println!(
        "{} read back {} acknowledged and {} refused writes on each of the 3 nodes",
        clock.stamp(),
        acked.len(),
        refused.len()
    );
    for f in &failures {
        println!("VIOLATION: {f}");
    }
    Ok(failures.is_empty())
}

#[cfg(test)]
mod tests {
    /// The partition test against the `micro` binary next to the test
    /// executable's directory (`target/debug/micro`). Skips, saying why,
    /// when not root, without ip/nft, or with no micro binary built.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn partition_minority_refuses_and_nothing_acknowledged_is_lost() {
        if let Some(why) = crate::net::unavailable() {
            println!("skipped: {why} (the partition test needs network namespaces)");
            return;
        }
        let micro = std::env::current_exe()
            .ok()
            .and_then(|p| Some(p.parent()?.parent()?.join("micro")));
        let Some(micro) = micro.filter(|p| p.is_file()) else {
            println!("skipped: no micro binary (build it: cargo build -p micro-cli --bin micro)");
            return;
        };
        match super::partition_test(&micro, None).await {
            Ok(passed) => assert!(
                passed,
                "the partition test found violations (printed above)"
            ),
            Err(e) => panic!("the partition test could not run: {e:#}"),
        }
    }
}
