//! `micro-bench cluster`, and the `micro server` processes every
//! multi-process benchmark starts: node i on 127.0.0.i with its own
//! temporary data directory, HOME and log, formed into one cluster through
//! the `micro` CLI (login, `cluster token`, `--join`).
//!
//! Must never: leave a server running after the run (they are stopped at
//! the end and killed on drop), or remove a failed run's logs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use micro_proto::store::{Record, WriteRequest};

use crate::store::store_phases;

/// How long the failover writer waits for one write before giving up on
/// it: longer than a node's own limit (10 s), so that a write held by the
/// follower while it waits for a new leader is not cut short here.
const FAILOVER_WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// The failover writer's pause after a failed write, so it does not spin
/// while the survivors (on the same cores) elect a leader.
const FAILOVER_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long the cluster gets to form, and then to elect a new leader.
const CLUSTER_PATIENCE: Duration = Duration::from_secs(60);

/// A `micro server` child process of the `cluster` benchmark, with its own
/// temporary directory for data, HOME and log.
struct ServerProc {
    dir: tempfile::TempDir,
    log: PathBuf,
    /// `None` once it has been killed or stopped
    child: Option<tokio::process::Child>,
    /// the CLI environment that points at this node
    env: String,
    node_id: u64,
    /// its gRPC endpoint (the `proxy` of listen.json)
    proxy: String,
    /// its HTTP gateway (the `api` of listen.json)
    api: String,
    /// its cluster address (Raft, mTLS and gossip)
    cluster: String,
}

/// The nodes of a `cluster` run and the CLI's temporary HOME.
pub struct Cluster {
    micro: PathBuf,
    home: tempfile::TempDir,
    nodes: Vec<ServerProc>,
}

/// One row of `micro cluster members`.
struct Member {
    id: u64,
    gossip: String,
    role: String,
}

/// What the failover writer saw.
struct Failover {
    /// from the kill to the first acknowledged write started after it
    first_ack: Option<Duration>,
    /// writes that failed (or timed out) after the kill
    failed_after: u64,
    /// writes that failed before the kill (expected: none)
    failed_before: u64,
    /// the first failures after the kill: when each ended (since the
    /// kill) and why
    failures: Vec<(Duration, String)>,
}

/// `cmd` without the MICRO_* variables of this process's environment.
fn no_micro_env(cmd: &mut tokio::process::Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("MICRO_") {
            cmd.env_remove(k);
        }
    }
}

impl Cluster {
    /// A cluster of no node yet, run with the `micro` binary next to this
    /// one and a temporary HOME for the CLI.
    pub fn new() -> Result<Cluster, String> {
        Cluster::with_micro(None)
    }

    /// Runs `f` on a cluster of the `micro` binary `micro` (by default the
    /// one next to this binary), then stops every server; their logs are
    /// kept, and named, when `f` failed.
    pub async fn session<T>(
        micro: Option<PathBuf>,
        f: impl AsyncFnOnce(&mut Cluster) -> Result<T, String>,
    ) -> Result<T, String> {
        let mut c = Cluster::with_micro(micro)?;
        let result = f(&mut c).await;
        c.stop().await;
        if result.is_err() {
            c.keep_logs();
        }
        result
    }

    /// A cluster of no node yet, run with the `micro` binary `micro` (by
    /// default the one next to this binary).
    pub fn with_micro(micro: Option<PathBuf>) -> Result<Cluster, String> {
        let micro = match micro {
            Some(m) if m.is_file() => m,
            Some(m) => return Err(format!("--micro {}: no such file", m.display())),
            None => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                exe.parent()
                    .map(|d| d.join("micro"))
                    .filter(|m| m.exists())
                    .ok_or_else(|| {
                        format!(
                            "no `micro` next to {}: build it with `cargo build --release -p micro-cli` (or give --micro PATH)",
                            exe.display()
                        )
                    })?
            }
        };
        let home = tempfile::Builder::new()
            .prefix("micro-bench-home-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        Ok(Cluster {
            micro,
            home,
            nodes: Vec::new(),
        })
    }

    /// Starts `nodes` servers, node i on 127.0.0.i: the first founds the
    /// cluster, the others join it one after the other; returns once every
    /// node is a voter (or the leader) and seen alive, with the leader's
    /// Raft id. Leaves a CLI session on every node (environment `n<i>`).
    pub async fn form(&mut self, nodes: usize) -> Result<u64, String> {
        let forming = Instant::now();

        // The founder, and a session on it that can read the join token.
        self.start_server(None).await?;
        let first = &self.nodes[0];
        let (env1, proxy1, seed) = (
            first.env.clone(),
            first.proxy.clone(),
            first.cluster.clone(),
        );
        self.cli(&["env", "add", &env1, &proxy1]).await?;
        self.cli(&["env", "set", &env1]).await?;
        self.cli(&["login", "--username", "admin", "--password", "micro"])
            .await?;
        let token = self.cli(&["cluster", "token"]).await?.trim().to_string();
        if token.is_empty() {
            return Err("`micro cluster token` printed nothing".into());
        }

        // The others join through the founder, one after the other.
        for _ in 1..nodes {
            self.start_server(Some((&seed, &token))).await?;
        }

        // Formed: every node listed, a voter or the leader, and seen alive.
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.node_id).collect();
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        let leader_id = loop {
            let seen = self.members(&env1).await.unwrap_or_default();
            let formed = seen.len() == ids.len()
                && seen.iter().all(|m| {
                    ids.contains(&m.id)
                        && m.gossip == "alive"
                        && (m.role == "leader" || m.role == "voter")
                });
            let leader = seen.iter().find(|m| m.role == "leader").map(|m| m.id);
            if let (true, Some(id)) = (formed, leader) {
                break id;
            }
            if Instant::now() > deadline {
                let last = self
                    .cli(&["cluster", "members"])
                    .await
                    .unwrap_or_else(|e| e);
                return Err(format!(
                    "the cluster did not form within {} s; last members table:\n{last}",
                    CLUSTER_PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        println!(
            "cluster formed in {:.1} s: node ids {}",
            forming.elapsed().as_secs_f64(),
            ids.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        // A session on every other node too, for asking a survivor who leads.
        for node in &self.nodes[1..] {
            self.cli(&["env", "add", &node.env, &node.proxy]).await?;
            self.cli(&[
                "--env",
                &node.env,
                "login",
                "--username",
                "admin",
                "--password",
                "micro",
            ])
            .await?;
        }
        Ok(leader_id)
    }

    /// Runs `micro ARGS` with the benchmark's HOME; its stdout, or why it failed.
    async fn cli(&self, args: &[&str]) -> Result<String, String> {
        let mut cmd = tokio::process::Command::new(&self.micro);
        cmd.args(args)
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        no_micro_env(&mut cmd);
        let what = format!("`micro {}`", args.join(" "));
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .map_err(|_| format!("{what} did not finish within 30 s"))?
            .map_err(|e| format!("cannot run {what}: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{what} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// `micro cluster members` as seen by the node behind CLI environment `env`.
    async fn members(&self, env: &str) -> Result<Vec<Member>, String> {
        let text = self.cli(&["--env", env, "cluster", "members"]).await?;
        Ok(text
            .lines()
            .skip(1)
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let n = f.len();
                if n < 3 {
                    return None;
                }
                Some(Member {
                    id: f[0].parse().ok()?,
                    gossip: f[n - 2].to_string(),
                    role: f[n - 1].to_string(),
                })
            })
            .collect())
    }

    /// Starts node `i` on 127.0.0.{i+1}, joining `join` with `token` if
    /// given, and waits for its listen.json.
    async fn start_server(&mut self, join: Option<(&str, &str)>) -> Result<(), String> {
        let i = self.nodes.len();
        let ip = format!("127.0.0.{}", i + 1);
        let any = format!("{ip}:0");
        let dir = tempfile::Builder::new()
            .prefix(&format!("micro-bench-node{}-", i + 1))
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let (data, home, log) = (
            dir.path().join("data"),
            dir.path().join("home"),
            dir.path().join("server.log"),
        );
        std::fs::create_dir(&home).map_err(|e| format!("{}: {e}", home.display()))?;
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let log_out = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&self.micro);
        // Nothing but the nodes on the CPU while they are measured.
        cmd.env("MICRO_RUNTIME_WARM_UP", "false");
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&data)
            .args(["--api-address", &any])
            .args(["--proxy-address", &any])
            .args(["--web-address", &any])
            .args(["--cluster-address", &any]);
        if let Some((seed, token)) = join {
            cmd.args(["--join", seed, "--token", token]);
        }
        no_micro_env(&mut cmd);
        cmd.env("MICRO_LOG_LEVEL", "warn")
            .env("HOME", &home)
            .current_dir(dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log_out)
            .stderr(log_file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.micro.display()))?;
        self.nodes.push(ServerProc {
            dir,
            log,
            child: Some(child),
            env: format!("n{}", i + 1),
            node_id: 0,
            proxy: String::new(),
            api: String::new(),
            cluster: String::new(),
        });
        let node = &mut self.nodes[i];
        let listen = data.join("listen.json");
        let deadline = Instant::now() + CLUSTER_PATIENCE;
        loop {
            // Written in one go once the node is ready; a half-written file
            // does not parse, and is read again on the next round.
            if let Ok(text) = std::fs::read_to_string(&listen) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                    node.node_id = v["node_id"].as_u64().unwrap_or_default();
                    node.proxy = field("proxy");
                    node.api = field("api");
                    node.cluster = field("cluster");
                    if node.node_id == 0
                        || node.proxy.is_empty()
                        || node.api.is_empty()
                        || node.cluster.is_empty()
                    {
                        return Err(format!("node {}: unexpected listen.json: {text}", i + 1));
                    }
                    return Ok(());
                }
            }
            if let Some(child) = node.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    node.child = None;
                    return Err(format!("node {} ({ip}) exited with {status}", i + 1));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {} ({ip}) wrote no listen.json within {} s",
                    i + 1,
                    CLUSTER_PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM to every running server, up to 10 s for them to exit, then
    /// SIGKILL to those still running.
    pub async fn stop(&mut self) {
        for node in &self.nodes {
            if let Some(pid) = node.child.as_ref().and_then(|c| c.id()) {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            if tokio::time::timeout_at(deadline, child.wait())
                .await
                .is_err()
            {
                eprintln!(
                    "node {} did not stop within 10 s of SIGTERM; killing it",
                    i + 1
                );
                let _ = child.kill().await;
            }
        }
    }

    /// Keeps the nodes' directories (normally removed) and prints where
    /// their logs are.
    pub fn keep_logs(&mut self) {
        for (i, node) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            let dir = node.dir.keep();
            eprintln!(
                "node {} (id {}): log {} (directory {} kept)",
                i + 1,
                node.node_id,
                node.log.display(),
                dir.display()
            );
        }
    }

    /// How many nodes were started.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The gRPC endpoint of node `i` (0-based).
    pub fn proxy(&self, i: usize) -> &str {
        &self.nodes[i].proxy
    }

    /// The HTTP gateway (`host:port`) of node `i` (0-based).
    pub fn api(&self, i: usize) -> &str {
        &self.nodes[i].api
    }

    /// The data directory of node `i` (0-based).
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.path().join("data")
    }

    /// The process id of node `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().and_then(|c| c.id())
    }

    /// Kills node `i` with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) -> Result<(), String> {
        let mut child = self.nodes[i]
            .child
            .take()
            .ok_or_else(|| format!("node {} is not running", i + 1))?;
        child
            .start_kill()
            .map_err(|e| format!("cannot kill node {}: {e}", i + 1))?;
        let _ = child.wait().await;
        Ok(())
    }

    /// A fresh access token of the admin session on node `i` (`micro user
    /// token`, which refreshes it); they live 10 minutes by default.
    pub async fn token(&self, i: usize) -> Result<String, String> {
        let token = self
            .cli(&["--env", &self.nodes[i].env, "user", "token"])
            .await?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err("`micro user token` printed nothing".into());
        }
        Ok(token)
    }

    /// The index of the node that leads now, as node `i` sees it.
    pub async fn leader_seen_by(&self, i: usize) -> Result<usize, String> {
        if self.nodes.len() == 1 {
            return Ok(0);
        }
        let members = self.members(&self.nodes[i].env).await?;
        let id = members
            .iter()
            .find(|m| m.role == "leader")
            .map(|m| m.id)
            .ok_or("the cluster has no leader")?;
        self.index_of(id)
    }

    /// The `micro` binary the servers run.
    pub fn micro(&self) -> &std::path::Path {
        &self.micro
    }

    /// The process ids of the running servers (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|n| n.child.as_ref().and_then(|c| c.id()))
            .collect()
    }

    /// The index of the node that leads now, as node 1 sees it.
    pub async fn leader(&self) -> Result<usize, String> {
        if self.nodes.len() == 1 {
            return Ok(0);
        }
        let members = self.members(&self.nodes[0].env).await?;
        let id = members
            .iter()
            .find(|m| m.role == "leader")
            .map(|m| m.id)
            .ok_or("the cluster has no leader")?;
        self.index_of(id)
    }

    /// The highest term any node reports and the leader of the node that
    /// reports it, from `micro cluster status` asked of node `i`.
    pub async fn terms(&self, i: usize) -> Result<(u64, u64), String> {
        let text = self
            .cli(&["--env", &self.nodes[i].env, "cluster", "status"])
            .await?;
        let mut best: Option<(u64, u64)> = None;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // ID ADDRESS STATE TERM LEADER ...
            let (Some(term), Some(leader)) = (f.get(3), f.get(4)) else {
                continue;
            };
            let (Ok(term), leader) = (term.parse::<u64>(), leader.parse::<u64>().unwrap_or(0))
            else {
                continue;
            };
            if best.is_none_or(|(t, _)| term > t) {
                best = Some((term, leader));
            }
        }
        best.ok_or_else(|| format!("`micro cluster status` showed no term: {text}"))
    }

    /// The index of the node with Raft id `id`.
    pub fn index_of(&self, id: u64) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.node_id == id)
            .ok_or_else(|| format!("no node of this run has id {id}"))
    }
}

pub async fn cluster(
    nodes: usize,
    clients: usize,
    seconds: u64,
    value_size: usize,
) -> Result<(), String> {
    if !(1..=9).contains(&nodes) {
        return Err("--nodes must be between 1 and 9".into());
    }
    let started = Instant::now();
    Cluster::session(None, async |c| {
        cluster_run(c, nodes, clients, seconds, value_size).await
    })
    .await?;
    println!("total run time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn cluster_run(
    c: &mut Cluster,
    nodes: usize,
    clients: usize,
    seconds: u64,
    value_size: usize,
) -> Result<(), String> {
    println!(
        "micro-bench cluster: {nodes} `micro server` processes on 127.0.0.1..{nodes}, {clients} clients, {value_size}-byte values, {seconds}s per phase"
    );
    let leader_id = c.form(nodes).await?;
    let env1 = c.nodes[0].env.clone();

    let leader = c.index_of(leader_id)?;
    let follower = (0..nodes).find(|&i| i != leader);

    println!();
    println!(
        "cluster of {nodes}, writes and reads through the leader (node {leader_id}) at {}",
        c.nodes[leader].proxy
    );
    store_phases(
        &c.nodes[leader].proxy,
        clients,
        seconds,
        value_size,
        "bench-leader",
    )
    .await?;

    let Some(follower) = follower else {
        println!();
        println!("one node: no follower to measure through, and no failover");
        return Ok(());
    };
    let follower_id = c.nodes[follower].node_id;
    println!();
    println!(
        "cluster of {nodes}, writes and reads through a follower (node {follower_id}) at {} (writes forwarded to the leader, reads by its read index)",
        c.nodes[follower].proxy
    );
    store_phases(
        &c.nodes[follower].proxy,
        clients,
        seconds,
        value_size,
        "bench-follower",
    )
    .await?;

    println!();
    if nodes < 3 {
        println!(
            "failover: not measured; with {nodes} nodes the survivor has no majority (needs --nodes 3 or more)"
        );
        return Ok(());
    }
    // The leader may have changed during the phases: ask again.
    let members = c.members(&env1).await?;
    let leader_id = members
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.id)
        .ok_or("no leader before the failover")?;
    let leader = c.index_of(leader_id)?;
    let follower = (0..nodes)
        .find(|&i| i != leader)
        .ok_or("no follower before the failover")?;
    println!(
        "failover: one client writing to a follower (node {}), sequentially, a small record to a fresh key each time; kill -9 the leader (node {leader_id})",
        c.nodes[follower].node_id
    );
    let seen = failover(c, leader, follower).await?;
    let new_leader = match seen.first_ack {
        Some(_) => new_leader(c, follower, leader_id).await,
        None => None,
    };
    let failed = match seen.failed_after {
        1 => "1 write failed meanwhile".to_string(),
        n => format!("{n} writes failed meanwhile"),
    };
    match seen.first_ack {
        Some(t) => println!(
            "failover: leader killed -> first acknowledged write after {:.2} s ({failed}); new leader {}",
            t.as_secs_f64(),
            new_leader.map_or_else(|| "unknown".to_string(), |id| id.to_string())
        ),
        None => println!(
            "failover: leader killed -> no write acknowledged within {} s ({failed})",
            CLUSTER_PATIENCE.as_secs()
        ),
    }
    println!(
        "  (each write times out after {} s and is retried {} ms after a failure; only writes started after the kill count)",
        FAILOVER_WRITE_TIMEOUT.as_secs(),
        FAILOVER_RETRY_PAUSE.as_millis()
    );
    for (at, why) in &seen.failures {
        println!(
            "  failed write ended {:.2} s after the kill: {why}",
            at.as_secs_f64()
        );
    }
    if seen.failed_before > 0 {
        println!(
            "  note: {} writes failed before the kill",
            seen.failed_before
        );
    }
    if seen.first_ack.is_none() {
        return Err("no write was acknowledged after the leader was killed".into());
    }
    Ok(())
}

/// Writes one small record after another through node `follower`, kills
/// node `leader` with SIGKILL a second in, and times the first write that
/// both started and was acknowledged after the kill.
async fn failover(c: &mut Cluster, leader: usize, follower: usize) -> Result<Failover, String> {
    let client = micro::Client::connect(&c.nodes[follower].proxy, "bench")
        .await
        .map_err(|e| e.to_string())?;
    let killed_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (killed_at, stop, acked) = (killed_at.clone(), stop.clone(), acked.clone());
        tokio::spawn(async move {
            let mut seen = Failover {
                first_ack: None,
                failed_after: 0,
                failed_before: 0,
                failures: Vec::new(),
            };
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Read before the write goes out: a write that might have
                // been sent before the kill never counts as the first.
                let started_after = killed_at.get().copied();
                let req = WriteRequest {
                    record: Some(Record {
                        key: format!("bench-failover/{i:09}"),
                        value: b"failover".to_vec(),
                        ..Default::default()
                    }),
                    options: None,
                };
                i += 1;
                let result =
                    tokio::time::timeout(FAILOVER_WRITE_TIMEOUT, client.store().write(req)).await;
                let done = Instant::now();
                let why = match result {
                    Ok(Ok(_)) => None,
                    Ok(Err(status)) => Some(format!("{:?}: {}", status.code(), status.message())),
                    Err(_) => Some("timed out".to_string()),
                };
                if let Some(why) = why {
                    match killed_at.get() {
                        Some(kill) => {
                            seen.failed_after += 1;
                            if seen.failures.len() < 10 {
                                seen.failures.push((done - *kill, why));
                            }
                        }
                        None => seen.failed_before += 1,
                    }
                    tokio::time::sleep(FAILOVER_RETRY_PAUSE).await;
                } else {
                    acked.fetch_add(1, Ordering::Relaxed);
                    if let Some(kill) = started_after {
                        seen.first_ack = Some(done - kill);
                        return seen;
                    }
                }
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    if acked.load(Ordering::Relaxed) == 0 {
        stop.store(true, Ordering::Relaxed);
        let _ = writer.await;
        return Err("the failover writer got no write acknowledged before the kill".into());
    }
    let mut child = c.nodes[leader]
        .child
        .take()
        .ok_or("the leader is not running")?;
    child
        .start_kill()
        .map_err(|e| format!("cannot kill the leader: {e}"))?;
    let _ = killed_at.set(Instant::now());
    let _ = child.wait().await;
    // The writer returns at its first acknowledged write after the kill.
    let mut writer = writer;
    let seen = match tokio::time::timeout(CLUSTER_PATIENCE, &mut writer).await {
        Ok(seen) => seen,
        Err(_) => {
            stop.store(true, Ordering::Relaxed);
            writer.await
        }
    };
    seen.map_err(|e| format!("the failover writer: {e}"))
}

/// The leader a survivor names once it is not `old` (up to a minute).
async fn new_leader(c: &Cluster, survivor: usize, old: u64) -> Option<u64> {
    let deadline = Instant::now() + CLUSTER_PATIENCE;
    while Instant::now() < deadline {
        if let Ok(members) = c.members(&c.nodes[survivor].env).await {
            if let Some(m) = members.iter().find(|m| m.role == "leader" && m.id != old) {
                return Some(m.id);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}
