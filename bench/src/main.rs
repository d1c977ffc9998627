//! `micro-bench`: throughput and latency of a node, measured over gRPC with
//! N concurrent clients. Prints figures; asserts nothing.
//!
//! ```text
//! micro-bench store [--address HOST:PORT] [--clients 16] [--seconds 10] [--value-size 100]
//! micro-bench helloworld [--clients 16] [--seconds 10]
//! micro-bench cluster [--nodes 3] [--clients 16] [--seconds 10] [--value-size 100]
//! micro-bench events [--seconds 5] [--rounds 2] [--publishers 1,16,64] [--rate 200]
//!                    [--subscribers 6] [--fanout-publishers 16] [--payload 100]
//!                    [--cases publish,latency,fanout]
//! micro-bench compare [--nodes 3] [--seconds 10] [--value-size 100]
//!                     [--connections 16,64,256] [--failover-runs 5] [--micro PATH]
//! micro-bench disk [--minutes 30] [--nodes 1] [--keys 10000] [--value-size 100] [--micro PATH]
//! micro-bench elections [--minutes 10] [--nodes 3] [--clients 64] [--value-size 100] [--micro PATH]
//! ```
//!
//! Without `--address` it starts a node in this process on loopback, with a
//! temporary data directory (the figures then include the node's own CPU
//! use on the same machine, as a one-node deployment would).
//!
//! `helloworld` starts a node and the `helloworld` example (built next to
//! this binary: `cargo build --release -p helloworld`) and measures its
//! `Call` (a) with a gRPC client straight to the service, (b) through the
//! node's gRPC router, (c) through the HTTP gateway, then (d) on a 3-node
//! cluster, registered with node 1 and called through node 3's router;
//! with the median latency each hop adds.
//!
//! `cluster` starts `--nodes` real `micro server` processes (the `micro`
//! binary next to this one), node i on 127.0.0.i with its own temporary
//! data directory, HOME and log; the first bootstraps the cluster and the
//! others join it with the token `micro cluster token` prints. Once every
//! node is a voter and seen alive, it runs the `store` phases (a) through
//! the leader's gRPC endpoint and (b) through a follower's, which forwards
//! writes to the leader and serves reads at the leader's read index. With
//! three nodes or more it then measures failover: one client writes small
//! records, one at a time, through a follower while the leader is killed
//! with SIGKILL; it reports the time from the kill to the first write that
//! both started and was acknowledged after it, the writes that failed in
//! between, and the new leader. All nodes run on this machine, so the
//! figures include every node's CPU use. The servers are stopped at the
//! end; on failure their directories are kept and their logs named.
//!
//! `events` starts a 1-node and a 3-node cluster the same way, and
//! `nats-server -js` (1 server, and 3 clustered; installed with apt-get
//! when missing) in the same run, and measures events publish throughput,
//! publish-to-consume latency and broker fan-out next to JetStream and
//! core NATS (see `events.rs` and bench/README.md for what each row
//! means).
//!
//! `compare` runs a `micro` cluster and then an etcd cluster (`etcd` on
//! PATH) of the same size and drives both with one HTTP/JSON client
//! (`compare.rs`); `disk` watches data directory size and RSS under
//! steady overwrites (`disk.rs`); `elections` counts the term changes of
//! a cluster under full write load with no node stopped (`elections.rs`).

mod cluster;
mod compare;
mod cpu;
mod disk;
mod elections;
mod etcd;
mod events;
mod fsyncs;
mod helloworld;
mod http;
mod nats;
mod phase;
mod procstat;
mod store;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "micro-bench",
    about = "Measure a Micro node's throughput and latency"
)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Store writes, then reads of the written keys
    Store {
        /// A running node's gRPC address; default: start one in-process
        #[arg(long)]
        address: Option<String>,
        /// Concurrent clients, each with its own connection
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds per phase
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes per value
        #[arg(long, default_value_t = 100)]
        value_size: usize,
    },
    /// helloworld's Call: direct, through the router, through the gateway,
    /// and across nodes (registered with node 1, called through node 3)
    Helloworld {
        /// Concurrent clients, each with its own connection
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds per phase
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Store writes and reads on a cluster of `micro server` processes,
    /// through the leader and through a follower, then failover time
    Cluster {
        /// Nodes to start, on 127.0.0.1, 127.0.0.2, ...
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Concurrent clients, each with its own connection
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Seconds per phase
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes per value
        #[arg(long, default_value_t = 100)]
        value_size: usize,
    },
    /// Events and broker on 1- and 3-node clusters next to nats-server -js
    /// (JetStream R1 and R3) and core NATS, started by this run
    Events {
        /// Seconds per case, for each system in each round
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rounds; they alternate which system goes first
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Concurrent publishers of the publish cases, each awaiting its ack
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        publishers: Vec<usize>,
        /// Publishes per second of the publish→consume case
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Broker subscribers of the fan-out case, spread over the 3 nodes
        #[arg(long, default_value_t = 6)]
        subscribers: usize,
        /// Broker publishers of the fan-out case, spread over the 3 nodes
        #[arg(long, default_value_t = 16)]
        fanout_publishers: usize,
        /// Payload bytes
        #[arg(long, default_value_t = 100)]
        payload: usize,
        /// The cases to run (publish, latency, fanout); default all
        #[arg(long, value_delimiter = ',')]
        cases: Vec<String>,
    },
    /// A micro cluster next to an etcd cluster of the same size, one after
    /// the other, through the same HTTP/JSON client: writes and
    /// linearizable reads via the leader and a follower, and failover
    Compare {
        /// Nodes of each cluster, on 127.0.0.1, 127.0.0.2, ...
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Seconds per phase
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Bytes per value
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Connection counts; each phase runs at each
        #[arg(long, value_delimiter = ',', default_value = "16,64,256")]
        connections: Vec<usize>,
        /// Failover runs per system (each after the first on a fresh cluster)
        #[arg(long, default_value_t = 5)]
        failover_runs: usize,
        /// The `micro` binary (default: the one next to micro-bench)
        #[arg(long)]
        micro: Option<std::path::PathBuf>,
    },
    /// A cluster under full write load for minutes, no node stopped:
    /// counts its term changes (spurious elections)
    Elections {
        /// Minutes of writes
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Nodes (3 or more)
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Concurrent writers, through the leader
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Bytes per value
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// The `micro` binary (default: the one next to micro-bench)
        #[arg(long)]
        micro: Option<std::path::PathBuf>,
    },
    /// Overwrites a fixed key set at half the max write rate and prints
    /// each node's data directory size and RSS every 30 s
    Disk {
        /// Minutes of overwrites
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Nodes (1 or 3)
        #[arg(long, default_value_t = 1)]
        nodes: usize,
        /// Keys in the set
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Bytes per value
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// The `micro` binary (default: the one next to micro-bench)
        #[arg(long)]
        micro: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match args.what {
            What::Store {
                address,
                clients,
                seconds,
                value_size,
            } => store::store(address, clients, seconds, value_size).await,
            What::Helloworld { clients, seconds } => helloworld::helloworld(clients, seconds).await,
            What::Cluster {
                nodes,
                clients,
                seconds,
                value_size,
            } => cluster::cluster(nodes, clients, seconds, value_size).await,
            What::Compare {
                nodes,
                seconds,
                value_size,
                connections,
                failover_runs,
                micro,
            } => {
                compare::compare(compare::Opts {
                    nodes,
                    seconds,
                    value_size,
                    connections,
                    failover_runs,
                    micro,
                })
                .await
            }
            What::Disk {
                minutes,
                nodes,
                keys,
                value_size,
                micro,
            } => {
                disk::disk(disk::Opts {
                    minutes,
                    nodes,
                    keys,
                    value_size,
                    micro,
                })
                .await
            }
            What::Elections {
                minutes,
                nodes,
                clients,
                value_size,
                micro,
            } => {
                elections::elections(elections::Opts {
                    nodes,
                    clients,
                    minutes,
                    value_size,
                    micro,
                })
                .await
            }
            What::Events {
                seconds,
                rounds,
                publishers,
                rate,
                subscribers,
                fanout_publishers,
                payload,
                cases,
            } => {
                events::events(events::Opts {
                    seconds,
                    rounds,
                    publishers,
                    rate,
                    subscribers,
                    fanout_publishers,
                    payload,
                    cases,
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("micro-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
