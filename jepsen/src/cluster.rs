//! The cluster under test: real `micro server` processes, node `i` on its
//! own address (`127.0.0.{i+1}`, or in its own network namespace: see
//! `net`), each with its own data directory, HOME and log file under the
//! run's directory.
//!
//! Node 0 founds the cluster; the others join it with the join token,
//! which the harness obtains over gRPC as the admin (whose password, one
//! per run, it sets with `MICRO_AUTH_ADMIN_PASSWORD`; the same
//! `Cluster.Token` call `micro cluster token` makes). Membership and roles
//! come from `Cluster.Members` (what `micro cluster members` prints), asked
//! of one node at a time with a timeout so a frozen node cannot stall the
//! harness.
//!
//! Faults are carried out on the processes: SIGKILL (then a restart on the
//! same data directory and the same cluster address, which is how the
//! peers know the node), and SIGSTOP/SIGCONT, which freeze and thaw a node
//! (to its peers and clients it looks cut off), and in netns mode network
//! partitions between nodes (nftables rules in their namespaces; clients
//! still reach every node). Clients find a node's current gRPC address in
//! [`Addrs`], which changes when it restarts.
//!
//! With power faults on, each node's data directory is a mount of the
//! harness's own power-loss filesystem ([`crate::lazyfs`]), served from this
//! process; [`Cluster::power_cut`] drops what the node never fsynced.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use micro_proto::auth::TokenRequest;
use micro_proto::cluster::{Member, MembersRequest, RemoveRequest};
use tokio::process::Child;

use crate::history::Clock;
use crate::lazyfs;
use crate::net::Net;

/// How long a node may take to write its `listen.json`.
const READY_WAIT: Duration = Duration::from_secs(60);
/// How long one admin call (connect and ask) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The current gRPC (proxy) address of every node slot; `None` while the
/// node is down. Whether a slot holds a member (spare slots and removed
/// nodes do not). Shared with the clients.
#[derive(Default)]
pub struct Addrs {
    proxy: Vec<RwLock<Option<String>>>,
    member: Vec<AtomicBool>,
}

impl Addrs {
    fn new(slots: usize) -> Addrs {
        Addrs {
            proxy: (0..slots).map(|_| RwLock::new(None)).collect(),
            member: (0..slots).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub fn is_member(&self, node: usize) -> bool {
        self.member[node].load(Ordering::SeqCst)
    }

    fn set_member(&self, node: usize, member: bool) {
        self.member[node].store(member, Ordering::SeqCst);
    }

    /// Where a client that prefers slot `pref` should go: `pref` while it
    /// is a member (`None` while it is down: wait for it), else the next
    /// member slot that is up.
    pub fn route(&self, pref: usize) -> Option<(usize, String)> {
        if self.is_member(pref) {
            return self.get(pref).map(|a| (pref, a));
        }
        let n = self.proxy.len();
        (1..n)
            .map(|k| (pref + k) % n)
            .filter(|&s| self.is_member(s))
            .find_map(|s| self.get(s).map(|a| (s, a)))
    }

    pub fn get(&self, node: usize) -> Option<String> {
        self.proxy[node]
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, node: usize, addr: Option<String>) {
        *self.proxy[node].write().unwrap_or_else(|e| e.into_inner()) = addr;
    }
}

/// The process ids of running nodes, for the Ctrl-C handler.
pub type Pids = Arc<Mutex<HashMap<usize, u32>>>;

/// One node.
pub struct Node {
    pub idx: usize,
    ip: String,
    data: PathBuf,
    home: PathBuf,
    pub log: PathBuf,
    /// fixed by the first start: peers know the node by it
    pub cluster_addr: Option<String>,
    pub node_id: u64,
    child: Option<Child>,
    pub frozen: bool,
    /// would not start again (three tries): not tried again by `heal_all`
    pub broken: bool,
    /// how many times it was started (since it last joined)
    starts: u32,
    /// a member of the cluster (not a spare slot, not removed)
    pub member: bool,
    /// the power-loss filesystem on `data` (power faults only); declared
    /// after `child` so a dropped node is killed before it is unmounted
    pub fs: Option<lazyfs::Mount>,
}

/// The running cluster.
pub struct Cluster {
    micro: PathBuf,
    pub nodes: Vec<Node>,
    pub addrs: Arc<Addrs>,
    pub pids: Pids,
    token: String,
    /// an access token of the admin: membership is for accounts
    admin: String,
    /// the admin's password, set at the first start (a node refuses to
    /// listen beyond loopback with the default one)
    password: String,
    clock: Clock,
    /// nodes with partition rules in place
    cut: std::collections::BTreeSet<usize>,
    /// declared last: dropped (torn down) after the node processes
    pub net: Net,
}

impl Cluster {
    /// Starts `n` nodes under `root` and waits until every node reports all
    /// of them as alive voters; `slots - n` more slots stay spare (for the
    /// membership nemesis to grow into). The running nodes' process ids are
    /// kept in `pids` (for the interrupt handler). With `power`, each node's
    /// data directory is a power-loss filesystem mounted first.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        micro: &Path,
        root: &Path,
        n: usize,
        slots: usize,
        clock: Clock,
        pids: Pids,
        net: Net,
        power: bool,
    ) -> Result<Cluster> {
        let mut nodes = Vec::new();
        for idx in 0..slots.max(n) {
            let dir = root.join(format!("n{idx}"));
            let home = dir.join("home");
            std::fs::create_dir_all(&home)
                .with_context(|| format!("cannot create {}", home.display()))?;
            let data = dir.join("data");
            let fs = if power {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&data)
                    .with_context(|| format!("cannot create {}", data.display()))?;
                Some(lazyfs::Mount::new(&data)?)
            } else {
                None
            };
            nodes.push(Node {
                idx,
                ip: net.node_ip(idx),
                data,
                home,
                log: dir.join("server.log"),
                cluster_addr: None,
                node_id: 0,
                child: None,
                frozen: false,
                starts: 0,
                member: false,
                broken: false,
                fs,
            });
        }
        let mut cluster = Cluster {
            micro: micro.to_path_buf(),
            nodes,
            addrs: Arc::new(Addrs::new(slots.max(n))),
            pids,
            token: String::new(),
            admin: String::new(),
            password: format!("jepsen-{:016x}", rand::random::<u64>()),
            clock,
            cut: Default::default(),
            net,
        };
        cluster.set_member(0, true);
        cluster.spawn(0).await?;
        (cluster.token, cluster.admin) = cluster.join_token().await?;
        for idx in 1..n {
            cluster.set_member(idx, true);
            cluster.spawn(idx).await?;
        }
        let (took, leader) = cluster
            .wait_healthy(Duration::from_secs(90))
            .await
            .map_err(|e| anyhow!("the cluster did not form: {e}"))?;
        println!(
            "{} cluster of {n} formed ({:.1}s after the last node started), leader n{leader}",
            clock.stamp(),
            took.as_secs_f64()
        );
        Ok(cluster)
    }

    /// How many node slots there are (members or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The slots that hold members, in order.
    /// An access token of the admin (valid on every node for a day).
    pub fn admin_token(&self) -> &str {
        &self.admin
    }

    pub fn members_idx(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.nodes[i].member).collect()
    }

    fn set_member(&mut self, idx: usize, member: bool) {
        self.nodes[idx].member = member;
        self.addrs.set_member(idx, member);
    }

    /// The join token, asked of node 0 as the admin, and that
    /// admin's access token (valid on every node, for a day).
    async fn join_token(&self) -> Result<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let attempt = async {
                let addr = self.addrs.get(0).ok_or_else(|| anyhow!("node 0 is down"))?;
                let client = micro::Client::connect(&addr, "micro").await?;
                let token = client
                    .auth()
                    .token(TokenRequest {
                        id: "admin".into(),
                        secret: self.password.clone(),
                        token_expiry: 86_400,
                        ..Default::default()
                    })
                    .await?
                    .into_inner()
                    .token
                    .ok_or_else(|| anyhow!("no access token"))?;
                client.set_token(Some(&token.access_token));
                let join = client
                    .cluster()
                    .token(micro_proto::cluster::TokenRequest::default())
                    .await?
                    .into_inner()
                    .token;
                anyhow::Ok((join, token.access_token))
            };
            let err = match tokio::time::timeout(Duration::from_secs(15), attempt).await {
                Ok(Ok(t)) if !t.0.is_empty() => return Ok(t),
                Ok(Ok(_)) => anyhow!("an empty join token"),
                Ok(Err(e)) => e,
                Err(_) => anyhow!("timed out"),
            };
            if Instant::now() > deadline {
                bail!("cannot get the join token from node 0: {err:#}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Launches node `idx` (the first time: joining a member that is up;
    /// later: on its old data directory and cluster address); see
    /// [`Cluster::await_ready`].
    fn launch(&mut self, idx: usize) -> Result<()> {
        // A node's first start (but the founder's) joins through another
        // member that is up.
        let seed = (0..self.len())
            .filter(|&i| i != idx && self.nodes[i].member && self.is_up(i))
            .find_map(|i| self.nodes[i].cluster_addr.clone());
        let join = (self.nodes[idx].starts == 0 && !(idx == 0 && self.token.is_empty()))
            .then(|| (seed.unwrap_or_default(), self.token.clone()));
        let stamp = self.clock.stamp();
        let slots = self.len();
        let node = &mut self.nodes[idx];
        let listen = node.data.join("listen.json");
        let _ = std::fs::remove_file(&listen);
        let any = format!("{}:0", node.ip);
        let cluster_addr = node.cluster_addr.clone().unwrap_or_else(|| any.clone());
        node.starts += 1;
        {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&node.log)
                .with_context(|| format!("cannot open {}", node.log.display()))?;
            writeln!(
                log,
                "=== micro-jepsen {stamp}: start #{} of node {idx} (cluster address {cluster_addr})",
                node.starts
            )?;
        }
        let log = std::fs::OpenOptions::new().append(true).open(&node.log)?;
        let mut cmd = self.net.command(idx, &self.micro);
        // The harness runs no services: no build beside the nodes.
        cmd.env("MICRO_RUNTIME_WARM_UP", "false");
        cmd.arg("server")
            .arg("--data-dir")
            .arg(&node.data)
            .args(["--api-address", &any])
            .args(["--proxy-address", &any])
            .args(["--web-address", &any])
            .args(["--cluster-address", &cluster_addr]);
        if slots > 5 {
            // The default keeps 5 voters; the others would stay learners.
            cmd.args(["--cluster-size", &slots.min(9).to_string()]);
        }
        if let Some((seed, token)) = &join {
            cmd.args(["--join", seed, "--token", token]);
        }
        for (k, _) in std::env::vars() {
            if k.starts_with("MICRO_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("HOME", &node.home)
            // gossip state changes are few and tell what a node saw
            .env("MICRO_LOG_LEVEL", "warn,micro_gossip=info")
            .env("MICRO_AUTH_ADMIN_PASSWORD", &self.password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", self.micro.display()))?;
        if let Some(pid) = child.id() {
            self.pids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(idx, pid);
        }
        node.child = Some(child);
        node.frozen = false;
        Ok(())
    }

    /// Starts node `idx` and waits for it to serve.
    async fn spawn(&mut self, idx: usize) -> Result<()> {
        self.launch(idx)?;
        self.await_ready(idx).await
    }

    /// Waits for a launched node's `listen.json`.
    async fn await_ready(&mut self, idx: usize) -> Result<()> {
        let node = &mut self.nodes[idx];
        let listen = node.data.join("listen.json");
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&listen) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let field = |name: &str| v[name].as_str().map(str::to_string);
                    let (Some(proxy), Some(cluster)) = (field("proxy"), field("cluster")) else {
                        bail!("node {idx} wrote a listen.json without addresses: {text}");
                    };
                    let id = v["node_id"].as_u64().unwrap_or(0);
                    if node.node_id != 0 && node.node_id != id {
                        bail!("node {idx} came back as {id}, not {}", node.node_id);
                    }
                    node.node_id = id;
                    if let Some(pid) = node.child.as_ref().and_then(Child::id) {
                        check_exe(pid, &self.micro)?;
                    }
                    if node.cluster_addr.is_none() {
                        node.cluster_addr = Some(cluster);
                    }
                    self.addrs.set(idx, Some(proxy));
                    return Ok(());
                }
            }
            if let Some(status) = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                node.child = None;
                self.pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&idx);
                bail!(
                    "node {idx} exited with {status} while starting; last log lines:\n{}",
                    tail(&node.log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "node {idx} wrote no listen.json within {}s; last log lines:\n{}",
                    READY_WAIT.as_secs(),
                    tail(&node.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// An admin client of some member that is up other than `not`.
    async fn admin_client(&self, not: usize) -> Result<(usize, micro::Client)> {
        let mut last = anyhow!("no other member is up");
        for idx in self.members_idx() {
            if idx == not || !self.is_up(idx) {
                continue;
            }
            let Some(addr) = self.addrs.get(idx) else {
                continue;
            };
            match tokio::time::timeout(ADMIN_TIMEOUT, micro::Client::connect(&addr, "micro")).await
            {
                Ok(Ok(c)) => {
                    c.set_token(Some(&self.admin));
                    return Ok((idx, c));
                }
                Ok(Err(e)) => last = anyhow!("cannot connect to n{idx}: {e}"),
                Err(_) => last = anyhow!("n{idx} did not answer"),
            }
        }
        Err(last)
    }

    /// Takes member `idx` out of the cluster (`Cluster.Remove`, as the
    /// admin, through another member), kills it and wipes its data
    /// directory. Its id can never come back; the slot can, as a new node
    /// ([`Cluster::add_member`]).
    pub async fn remove_member(&mut self, idx: usize) -> Result<()> {
        let id = self.nodes[idx].node_id;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let attempt = async {
                let (via, client) = self.admin_client(idx).await?;
                let r = tokio::time::timeout(
                    Duration::from_secs(20),
                    client.cluster().remove(RemoveRequest { id }),
                )
                .await
                .map_err(|_| anyhow!("n{via} did not answer the removal within 20s"))?;
                match r {
                    Ok(_) => Ok(()),
                    // A retry after a removal that went through.
                    Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
                    Err(s) => Err(anyhow!("n{via}: {:?}: {}", s.code(), s.message())),
                }
            };
            match attempt.await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    bail!("cannot remove n{idx} (node id {id}): {e:#}")
                }
                Err(e) => {
                    println!(
                        "{} removing n{idx}: {e:#}; trying again",
                        self.clock.stamp()
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        self.set_member(idx, false);
        self.kill(idx).await;
        let node = &mut self.nodes[idx];
        if node.data.exists() {
            std::fs::remove_dir_all(&node.data)
                .with_context(|| format!("cannot wipe {}", node.data.display()))?;
        }
        node.node_id = 0;
        node.cluster_addr = None;
        node.starts = 0;
        node.broken = false;
        Ok(())
    }

    /// Starts slot `idx` as a fresh node (empty data directory) that joins
    /// the cluster with a fresh join token, under a new id.
    pub async fn add_member(&mut self, idx: usize) -> Result<()> {
        let node = &self.nodes[idx];
        if node.data.exists() {
            std::fs::remove_dir_all(&node.data)
                .with_context(|| format!("cannot wipe {}", node.data.display()))?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let token = loop {
            let attempt = async {
                let (via, client) = self.admin_client(idx).await?;
                let t = tokio::time::timeout(
                    Duration::from_secs(15),
                    client
                        .cluster()
                        .token(micro_proto::cluster::TokenRequest::default()),
                )
                .await
                .map_err(|_| anyhow!("n{via} did not answer within 15s"))?
                .map_err(|s| anyhow!("n{via}: {:?}: {}", s.code(), s.message()))?
                .into_inner()
                .token;
                anyhow::Ok(t)
            };
            match attempt.await {
                Ok(t) if !t.is_empty() => break t,
                Ok(_) => bail!("an empty join token"),
                Err(e) if Instant::now() > deadline => {
                    bail!("cannot get a join token for n{idx}: {e:#}")
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        };
        self.token = token;
        let node = &mut self.nodes[idx];
        node.node_id = 0;
        node.cluster_addr = None;
        node.starts = 0;
        node.broken = false;
        self.set_member(idx, true);
        if let Err(e) = self.spawn(idx).await {
            self.set_member(idx, false);
            self.kill(idx).await;
            return Err(e.context(format!("n{idx} did not join")));
        }
        Ok(())
    }

    /// Restarts a killed node, trying a few times.
    pub async fn restart(&mut self, idx: usize) -> Result<()> {
        let mut last = None;
        // A node on a power-loss filesystem that will not start on what a
        // cut left will not start on a second try either: one try there.
        let tries = if self.nodes[idx].fs.is_some() { 1 } else { 3 };
        for attempt in 0..tries {
            if attempt > 0 {
                println!(
                    "{} node {idx} did not restart ({:#}); trying again",
                    self.clock.stamp(),
                    last.as_ref().unwrap_or(&anyhow!("?"))
                );
                self.kill(idx).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            match self.spawn(idx).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        self.nodes[idx].broken = true;
        Err(last.unwrap_or_else(|| anyhow!("no attempt")))
    }

    /// Restarts several killed nodes at once (a node may serve only once a
    /// quorum is back, so they cannot come back one by one); one try each.
    /// A node that does not come back is marked broken.
    pub async fn restart_all_of(&mut self, targets: &[usize]) -> Result<()> {
        let mut failed = Vec::new();
        for &t in targets {
            if let Err(e) = self.launch(t) {
                failed.push((t, e));
            }
        }
        for &t in targets {
            if failed.iter().any(|(f, _)| *f == t) {
                continue;
            }
            if let Err(e) = self.await_ready(t).await {
                failed.push((t, e));
            }
        }
        match failed.into_iter().next() {
            None => Ok(()),
            Some((t, e)) => {
                self.nodes[t].broken = true;
                Err(e.context(format!("n{t} did not start again")))
            }
        }
    }

    pub fn is_running(&self, idx: usize) -> bool {
        self.nodes[idx].child.is_some()
    }

    /// Running and not frozen: able to answer.
    pub fn is_up(&self, idx: usize) -> bool {
        self.is_running(idx) && !self.nodes[idx].frozen
    }

    /// `kill -9`, and reaps the process.
    pub async fn kill(&mut self, idx: usize) {
        let node = &mut self.nodes[idx];
        self.addrs.set(idx, None);
        if let Some(mut child) = node.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        node.frozen = false;
        self.pids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&idx);
    }

    /// Cuts the power of a killed node's disk: what it never fsynced is
    /// gone. `None` when the node has no power-loss filesystem.
    pub fn power_cut(&mut self, idx: usize) -> Option<lazyfs::CutStats> {
        debug_assert!(!self.is_running(idx), "cut the power of a running node");
        self.nodes[idx].fs.as_ref().map(lazyfs::Mount::power_cut)
    }

    /// The files under node `idx`'s data directory with their sizes, one a
    /// line (to show what a power cut left a node that will not start).
    pub fn listing(&self, idx: usize) -> String {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            let mut entries: Vec<_> = rd.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let path = e.path();
                let rel = path
                    .strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                match e.metadata() {
                    Ok(m) if m.is_dir() => {
                        out.push(format!("  {rel}/"));
                        walk(&path, root, out);
                    }
                    Ok(m) => out.push(format!("  {rel} {} bytes", m.len())),
                    Err(err) => out.push(format!("  {rel}: {err}")),
                }
            }
        }
        let mut out = Vec::new();
        let data = &self.nodes[idx].data;
        walk(data, data, &mut out);
        out.join("\n")
    }

    /// Unmounts every node's power-loss filesystem (after [`Cluster::shutdown`]).
    pub fn unmount(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut fs) = node.fs.take() {
                if let Err(e) = fs.unmount() {
                    println!("{} n{}: {e:#}", self.clock.stamp(), node.idx);
                }
            }
        }
    }

    fn signal(&self, idx: usize, sig: libc::c_int) -> bool {
        match self.nodes[idx].child.as_ref().and_then(Child::id) {
            // SAFETY: kill(2) with a pid of our own child process; it has
            // not been reaped (we hold its Child), so the pid is not reused.
            Some(pid) => unsafe { libc::kill(pid as libc::pid_t, sig) == 0 },
            None => false,
        }
    }

    /// SIGSTOP: the node stops answering anyone.
    pub fn freeze(&mut self, idx: usize) {
        if self.signal(idx, libc::SIGSTOP) {
            self.nodes[idx].frozen = true;
        }
    }

    /// SIGCONT.
    pub fn thaw(&mut self, idx: usize) {
        self.signal(idx, libc::SIGCONT);
        self.nodes[idx].frozen = false;
    }

    /// Cuts the network: each `(node, from, to)` makes `node` drop every
    /// packet from the nodes in `from` and every packet to those in `to`
    /// (replacing any cut it had). Clients still reach every node.
    pub async fn partition(&mut self, grudges: &[(usize, Vec<usize>, Vec<usize>)]) -> Result<()> {
        for (node, from, to) in grudges {
            if from.is_empty() && to.is_empty() {
                continue;
            }
            self.cut.insert(*node);
            self.net.cut(*node, from, to).await?;
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub async fn heal_network(&mut self) -> Result<()> {
        let mut first_error = None;
        for node in std::mem::take(&mut self.cut) {
            if let Err(e) = self.net.heal(node).await {
                self.cut.insert(node);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Heals the network, thaws every frozen node and restarts every
    /// killed one.
    pub async fn heal_all(&mut self) -> Result<()> {
        self.heal_network().await?;
        for idx in 0..self.len() {
            if self.nodes[idx].frozen {
                self.thaw(idx);
            }
        }
        let mut broken = Vec::new();
        let mut down = Vec::new();
        for idx in self.members_idx() {
            if self.nodes[idx].broken {
                broken.push(format!("n{idx}"));
            } else if !self.is_running(idx) {
                down.push(idx);
            }
        }
        match down.as_slice() {
            [] => {}
            [one] => self.restart(*one).await?,
            many => self.restart_all_of(many).await?,
        }
        if !broken.is_empty() {
            bail!(
                "{} would not start again earlier in the run; not tried again",
                broken.join(", ")
            );
        }
        Ok(())
    }

    /// The member list as node `idx` sees it.
    pub async fn members(&self, idx: usize) -> Result<Vec<Member>> {
        let addr = self
            .addrs
            .get(idx)
            .ok_or_else(|| anyhow!("node {idx} is down"))?;
        let ask = async {
            let client = micro::Client::connect(&addr, "micro").await?;
            client.set_token(Some(&self.admin));
            let members = client
                .cluster()
                .members(MembersRequest {})
                .await?
                .into_inner()
                .members;
            anyhow::Ok(members)
        };
        tokio::time::timeout(ADMIN_TIMEOUT, ask)
            .await
            .map_err(|_| anyhow!("node {idx} did not answer within {ADMIN_TIMEOUT:?}"))?
    }

    /// The node index of a Raft node id.
    pub fn index_of(&self, node_id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.node_id == node_id)
    }

    /// The leader: the node most of the nodes that are up name as leader
    /// (asked in `order`; a tie goes to the first named). A lone node's view
    /// can be stale: a thawed old leader may still think it leads.
    pub async fn leader(&self, order: &[usize]) -> Option<usize> {
        let mut votes: Vec<(usize, usize)> = Vec::new();
        for &idx in order {
            if !self.is_up(idx) {
                continue;
            }
            let Ok(members) = self.members(idx).await else {
                continue;
            };
            let named = members
                .iter()
                .find(|m| m.role == "leader")
                .and_then(|m| self.index_of(m.id));
            if let Some(l) = named {
                match votes.iter_mut().find(|(n, _)| *n == l) {
                    Some((_, count)) => *count += 1,
                    None => votes.push((l, 1)),
                }
            }
        }
        let most = votes.iter().map(|(_, c)| *c).max()?;
        votes.into_iter().find(|(_, c)| *c == most).map(|(l, _)| l)
    }

    /// Why node `idx`'s view is not yet that of a healthy cluster (every
    /// node listed, alive, a voter or the leader, exactly one leader);
    /// otherwise the leader it names. (`wait_healthy` also wants every node
    /// to name the same leader.)
    async fn view_of(&self, idx: usize) -> Result<u64, String> {
        let members = match self.members(idx).await {
            Ok(v) => v,
            Err(e) => return Err(format!("{e:#}")),
        };
        let mut problems = Vec::new();
        for node in self.nodes.iter().filter(|n| n.member) {
            match members.iter().find(|m| m.id == node.node_id) {
                None => problems.push(format!("n{} not listed", node.idx)),
                Some(m) => {
                    if m.gossip != "alive" {
                        problems.push(format!("n{} {}", node.idx, m.gossip));
                    }
                    if m.role != "leader" && m.role != "voter" {
                        problems.push(format!("n{} {}", node.idx, m.role));
                    }
                }
            }
        }
        if members.len() != self.members_idx().len() {
            problems.push(format!("{} members listed", members.len()));
        }
        let leaders: Vec<u64> = members
            .iter()
            .filter(|m| m.role == "leader")
            .map(|m| m.id)
            .collect();
        if leaders.len() != 1 {
            problems.push(format!("{} leaders", leaders.len()));
        }
        if problems.is_empty() {
            Ok(leaders[0])
        } else {
            Err(format!("n{idx} sees: {}", problems.join(", ")))
        }
    }

    /// Polls until every node sees a healthy cluster; returns how long it
    /// took and the leader, or the last complaint.
    pub async fn wait_healthy(&self, limit: Duration) -> Result<(Duration, usize), String> {
        let start = Instant::now();
        loop {
            let mut complaint = None;
            let mut leader = None;
            for idx in self.members_idx() {
                match self.view_of(idx).await {
                    Err(why) => complaint = Some(why),
                    Ok(l) if leader.is_some_and(|first| first != l) => {
                        complaint = Some("the nodes name different leaders".to_string())
                    }
                    Ok(l) => leader = Some(l),
                }
                if complaint.is_some() {
                    break;
                }
            }
            match complaint {
                None => {
                    let leader = leader.and_then(|l| self.index_of(l)).unwrap_or(0);
                    return Ok((start.elapsed(), leader));
                }
                Some(why) if start.elapsed() > limit => {
                    return Err(format!("not healthy after {}s: {why}", limit.as_secs()))
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// Every member's view of the cluster and, in netns mode, the rules in
    /// its namespace: printed when the cluster does not recover.
    pub async fn diagnose(&self) -> String {
        let mut out = String::new();
        for idx in self.members_idx() {
            let view = match self.members(idx).await {
                Ok(ms) => ms
                    .iter()
                    .map(|m| {
                        let who = self
                            .index_of(m.id)
                            .map(|i| format!("n{i}"))
                            .unwrap_or_else(|| m.id.to_string());
                        format!("{who} {} {}", m.role, m.gossip)
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(e) => format!("{e:#}"),
            };
            out += &format!("  n{idx} sees: {view}\n");
            let rules = self.net.rules(idx).await;
            if !rules.is_empty() {
                out += &format!("  n{idx} nft rules: {}\n", rules.replace('\n', " "));
            }
        }
        out
    }

    /// Stops every node (SIGCONT, SIGTERM, then SIGKILL after 10 s).
    pub async fn shutdown(&mut self) {
        for idx in 0..self.len() {
            self.signal(idx, libc::SIGCONT);
            self.signal(idx, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for idx in 0..self.len() {
            if let Some(mut child) = self.nodes[idx].child.take() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, child.wait()).await.is_err() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
            self.addrs.set(idx, None);
        }
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// Checks that process `pid` runs `micro` (in netns mode the child is `ip
/// netns exec`, which must have exec'd the server: the signals of the
/// faults go to this pid).
fn check_exe(pid: u32, micro: &Path) -> Result<()> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("cannot read /proc/{pid}/exe"))?;
    let want = std::fs::canonicalize(micro).unwrap_or_else(|_| micro.to_path_buf());
    // A rebuilt binary shows as "… (deleted)".
    let shown = exe.to_string_lossy();
    if !shown.starts_with(&*want.to_string_lossy()) {
        bail!(
            "process {pid} runs {shown}, not {}: signals would miss the node",
            want.display()
        );
    }
    Ok(())
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
