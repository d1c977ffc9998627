//! `micro-bench elections`: whether the Raft timing holds under load.
//!
//! A cluster of `micro server` processes (started as `cluster` starts
//! them) takes writes through its leader from `--clients` connections for
//! `--minutes`, while every 2 s node 1 is asked for every node's term. No
//! node is stopped, so every rise of the term is an election nobody asked
//! for. Prints the writes, each term change with its time and the leader
//! after it, and a verdict.
//!
//! Must never: stop or pause a node, or count a term it could not read.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_proto::store::{Record, WriteRequest};

use crate::cluster::Cluster;
use crate::events::loadavg;
use crate::phase::phase;

/// How often the terms are read.
const POLL: Duration = Duration::from_secs(2);

pub struct Opts {
    pub nodes: usize,
    pub clients: usize,
    pub minutes: u64,
    pub value_size: usize,
    pub micro: Option<PathBuf>,
}

pub async fn elections(opts: Opts) -> Result<(), String> {
    if !(3..=9).contains(&opts.nodes) {
        return Err("--nodes must be between 3 and 9".into());
    }
    if opts.minutes == 0 || opts.clients == 0 {
        return Err("--minutes and --clients take counts above 0".into());
    }
    Cluster::session(opts.micro.clone(), async |c| run(c, &opts).await).await
}

/// What one reading of the terms saw.
struct Seen {
    at: Duration,
    term: u64,
    leader: u64,
}

async fn run(c: &mut Cluster, opts: &Opts) -> Result<(), String> {
    println!(
        "micro-bench elections: {} `micro server` processes ({}), {} clients writing {}-byte values through the leader for {} min; terms read every {} s; load average {}",
        opts.nodes,
        c.micro().display(),
        opts.clients,
        opts.value_size,
        opts.minutes,
        POLL.as_secs(),
        loadavg()
    );
    let leader_id = c.form(opts.nodes).await?;
    let leader = c.index_of(leader_id)?;
    let first = c.terms(0).await?;
    println!("cluster formed: leader {leader_id}, term {}", first.0);

    let mut conns = Vec::new();
    for _ in 0..opts.clients {
        conns.push(
            micro::Client::connect(c.proxy(leader), "bench")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let value = Arc::new(vec![b'x'; opts.value_size]);
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let writes = async {
        let p = phase("write", conns, opts.minutes * 60, move |client, c, i| {
            let value = value.clone();
            async move {
                let req = WriteRequest {
                    record: Some(Record {
                        key: format!("elections/{c:03}/{i:09}"),
                        value: value.to_vec(),
                        ..Default::default()
                    }),
                    options: None,
                };
                client.store().write(req).await.is_ok()
            }
        })
        .await;
        done.store(true, Ordering::Relaxed);
        p
    };
    let watch = async {
        let (mut seen, mut unread) = (
            vec![Seen {
                at: Duration::ZERO,
                term: first.0,
                leader: first.1,
            }],
            0u64,
        );
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(POLL).await;
            match c.terms(0).await {
                Ok((term, leader)) => {
                    let last = seen.last().map_or((0, 0), |s| (s.term, s.leader));
                    if (term, leader) != last {
                        seen.push(Seen {
                            at: started.elapsed(),
                            term,
                            leader,
                        });
                    }
                }
                Err(_) => unread += 1,
            }
        }
        (seen, unread)
    };
    let (writes, (seen, unread)) = tokio::join!(writes, watch);
    writes.report();
    let changes = &seen[1..];
    for s in changes {
        println!(
            "  at {:>5.0} s: term {} (leader {})",
            s.at.as_secs_f64(),
            s.term,
            if s.leader == 0 {
                "none yet".to_string()
            } else {
                s.leader.to_string()
            }
        );
    }
    let last = seen.last().map_or(first.0, |s| s.term);
    println!(
        "terms: {} at the start, {last} at the end: {} term change(s) in {:.0} s with no node stopped; {} reading(s) of the terms failed; load average {}",
        first.0,
        last - first.0,
        started.elapsed().as_secs_f64(),
        unread,
        loadavg()
    );
    println!(
        "verdict: {}",
        if last == first.0 {
            "no spurious election"
        } else {
            "spurious elections: raise --raft-election-timeout (or the heartbeat's margin below it)"
        }
    );
    Ok(())
}
