//! `micro-bench`: throughput and latency of a node, measured over gRPC with
//! N concurrent clients. Prints figures; asserts nothing.
//!
//! ```text
//! micro-bench store [--address HOST:PORT] [--clients 16] [--seconds 10] [--value-size 100]
//! micro-bench helloworld [--clients 16] [--seconds 10]
//! micro-bench cluster [--nodes 3] [--clients 16] [--seconds 10] [--value-size 100]
//! ```
//!
//! Without `--address` it starts a node in this process on loopback, with a
//! temporary data directory (the figures then include the node's own CPU
//! use on the same machine, as a one-node deployment would).
//!
//! `helloworld` starts a node and the `helloworld` example (built next to
//! this binary: `cargo build --release -p helloworld`) and measures its
//! `Call` (a) with a gRPC client straight to the service, (b) through the
//! node's gRPC router, (c) through the HTTP gateway.
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

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use micro_proto::store::{ReadRequest, Record, WriteRequest};

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
    /// helloworld's Call: direct, through the router, through the gateway
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
}

/// Latencies of one phase, in microseconds.
struct Phase {
    name: &'static str,
    latencies: Vec<u32>,
    /// successful operations per client
    per_client: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn report(mut self) {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        let pct = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
            self.latencies[i] as f64 / 1000.0
        };
        println!(
            "{:<6} ops {:>8}  throughput {:>9.0}/s  p50 {:>7.2}ms  p99 {:>7.2}ms  max {:>7.2}ms  errors {}",
            self.name,
            n,
            n as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(1.0),
            self.errors
        );
    }
}

async fn start_node() -> Result<(String, tempfile::TempDir), String> {
    let (listen, dir) = start_node_full().await?;
    Ok((
        listen["proxy"].as_str().unwrap_or_default().to_string(),
        dir,
    ))
}

async fn start_node_full() -> Result<(serde_json::Value, tempfile::TempDir), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data: PathBuf = dir.path().join("data");
    let opts = micro_node::ServerOptions {
        api_address: "127.0.0.1:0".into(),
        proxy_address: "127.0.0.1:0".into(),
        web_address: "127.0.0.1:0".into(),
        cluster_address: "127.0.0.1:0".into(),
        ..micro_node::ServerOptions::new(data.clone())
    };
    tokio::spawn(async move {
        if let Err(e) = micro_node::run(opts, std::future::pending()).await {
            eprintln!("node: {e}");
        }
    });
    let listen = data.join("listen.json");
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&listen) {
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            return Ok((v, dir));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("the in-process node did not start".into())
}

async fn store(
    address: Option<String>,
    clients: usize,
    seconds: u64,
    value_size: usize,
) -> Result<(), String> {
    let (address, _dir, how) = match address {
        Some(a) => (a, None, "running node"),
        None => {
            let (a, d) = start_node().await?;
            (a, Some(d), "in-process node")
        }
    };
    println!(
        "micro-bench store: {clients} clients, {value_size}-byte values, {seconds}s per phase, {how} at {address}"
    );
    store_phases(&address, clients, seconds, value_size, "bench").await
}

/// The store benchmark proper: `clients` connections to `address` write
/// fresh keys under `prefix` for `seconds`, then read them back for
/// `seconds`; prints one line per phase.
async fn store_phases(
    address: &str,
    clients: usize,
    seconds: u64,
    value_size: usize,
    prefix: &str,
) -> Result<(), String> {
    let mut conns = Vec::new();
    for _ in 0..clients.max(1) {
        conns.push(
            micro::Client::connect(address, "bench")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let value = Arc::new(vec![b'x'; value_size]);
    let writes = {
        let (value, prefix) = (value.clone(), prefix.to_string());
        phase("write", conns.clone(), seconds, move |client, c, i| {
            let value = value.clone();
            let key = format!("{prefix}/{c:03}/{i:09}");
            async move {
                let req = WriteRequest {
                    record: Some(Record {
                        key,
                        value: value.to_vec(),
                        ..Default::default()
                    }),
                    options: None,
                };
                client.store().write(req).await.is_ok()
            }
        })
        .await
    };
    // Each client reads back keys it wrote, cycling through them. Writes
    // succeed in order, so keys 0..count of each client exist.
    let per_client = writes.per_client.iter().copied().min().unwrap_or(1).max(1);
    writes.report();
    let prefix = prefix.to_string();
    let reads = phase("read", conns, seconds, move |client, c, i| {
        let key = format!("{prefix}/{c:03}/{:09}", (i.wrapping_mul(7919)) % per_client);
        async move {
            let req = ReadRequest { key, options: None };
            client.store().read(req).await.is_ok()
        }
    })
    .await;
    reads.report();
    Ok(())
}

/// helloworld's `CallRequest { name: "Alice" }`, encoded by hand: field 1,
/// length-delimited.
fn call_request() -> bytes::Bytes {
    let name = b"Alice";
    let mut v = vec![0x0a, name.len() as u8];
    v.extend_from_slice(name);
    v.into()
}

async fn raw_call(channel: tonic::transport::Channel, service: Option<&str>) -> bool {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return false;
    }
    let mut req = tonic::Request::new(call_request());
    if let Some(s) = service.and_then(|s| s.parse().ok()) {
        req.metadata_mut().insert("micro-service", s);
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/helloworld.Helloworld/Call");
    grpc.unary(req, path, micro::dynamic::RawCodec)
        .await
        .is_ok()
}

async fn channels(addr: &str, n: usize) -> Result<Vec<tonic::transport::Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        out.push(ch);
    }
    Ok(out)
}

/// Runs one loop per connection for `seconds`, collecting latencies. `op`
/// gets the connection, the client's index and the iteration number.
async fn phase<C, F, Fut>(name: &'static str, conns: Vec<C>, seconds: u64, op: F) -> Phase
where
    C: Clone + Send + Sync + 'static,
    F: Fn(C, usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, conn) in conns.into_iter().enumerate() {
        let (stop, op) = (stop.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if op(conn.clone(), c, i).await {
                    lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut latencies, mut per_client, mut errors) = (Vec::new(), Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            per_client.push(l.len() as u64);
            latencies.extend(l);
            errors += e;
        }
    }
    Phase {
        name,
        latencies,
        per_client,
        errors,
        elapsed: start.elapsed(),
    }
}

async fn helloworld(clients: usize, seconds: u64) -> Result<(), String> {
    let bin = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("helloworld");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p helloworld`",
            bin.display()
        ));
    }
    let (listen, _dir) = start_node_full().await?;
    let proxy = listen["proxy"].as_str().unwrap_or_default().to_string();
    let api = listen["api"].as_str().unwrap_or_default().to_string();
    let mut child = tokio::process::Command::new(&bin)
        .env("MICRO_PROXY_ADDRESS", &proxy)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    // Wait for its registration, and take its address for direct calls.
    let client = micro::Client::connect(&proxy, "micro")
        .await
        .map_err(|e| e.to_string())?;
    let mut direct = None;
    for _ in 0..100 {
        let req = micro_proto::registry::GetRequest {
            service: "helloworld".into(),
            options: None,
        };
        if let Ok(r) = client.registry().get_service(req).await {
            direct = r
                .into_inner()
                .services
                .first()
                .and_then(|s| s.nodes.first())
                .map(|n| n.address.clone());
            if direct.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct = direct.ok_or("helloworld did not register")?;
    println!("micro-bench helloworld: {clients} clients, {seconds}s per path, Helloworld.Call");
    let a = phase(
        "direct",
        channels(&direct, clients).await?,
        seconds,
        |ch, _, _| raw_call(ch, None),
    )
    .await;
    let b = phase(
        "router",
        channels(&proxy, clients).await?,
        seconds,
        |ch, _, _| raw_call(ch, Some("helloworld")),
    )
    .await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://{api}/helloworld/Call?name=Alice")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    let c = phase(
        "gateway",
        vec![http; clients],
        seconds,
        move |http, _, _| {
            let uri = uri.clone();
            async move {
                match http.get(uri).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        use http_body_util::BodyExt;
                        ok && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let (ta, tb, tc) = (a.throughput(), b.throughput(), c.throughput());
    a.report();
    b.report();
    c.report();
    println!(
        "throughput ratios: router/direct {:.2}, gateway/direct {:.2}",
        tb / ta.max(1e-9),
        tc / ta.max(1e-9)
    );
    let _ = child.kill().await;
    Ok(())
}

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
    /// its cluster address (Raft, mTLS and gossip)
    cluster: String,
}

/// The nodes of a `cluster` run and the CLI's temporary HOME.
struct Cluster {
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
                    node.cluster = field("cluster");
                    if node.node_id == 0 || node.proxy.is_empty() || node.cluster.is_empty() {
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
    async fn stop(&mut self) {
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
    fn keep_logs(&mut self) {
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

    /// The index of the node with Raft id `id`.
    fn index_of(&self, id: u64) -> Result<usize, String> {
        self.nodes
            .iter()
            .position(|n| n.node_id == id)
            .ok_or_else(|| format!("no node of this run has id {id}"))
    }
}

async fn cluster(
    nodes: usize,
    clients: usize,
    seconds: u64,
    value_size: usize,
) -> Result<(), String> {
    if !(1..=9).contains(&nodes) {
        return Err("--nodes must be between 1 and 9".into());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let micro = exe
        .parent()
        .map(|d| d.join("micro"))
        .filter(|m| m.exists())
        .ok_or_else(|| {
            format!(
                "no `micro` next to {}: build it with `cargo build --release -p micro-cli`",
                exe.display()
            )
        })?;
    let home = tempfile::Builder::new()
        .prefix("micro-bench-home-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
    let mut c = Cluster {
        micro,
        home,
        nodes: Vec::new(),
    };
    let started = Instant::now();
    let result = cluster_run(&mut c, nodes, clients, seconds, value_size).await;
    c.stop().await;
    if result.is_err() {
        c.keep_logs();
    } else {
        println!("total run time {:.1} s", started.elapsed().as_secs_f64());
    }
    result
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
    let forming = Instant::now();

    // The founder, and a session on it that can read the join token.
    c.start_server(None).await?;
    let first = &c.nodes[0];
    let (env1, proxy1, seed) = (
        first.env.clone(),
        first.proxy.clone(),
        first.cluster.clone(),
    );
    c.cli(&["env", "add", &env1, &proxy1]).await?;
    c.cli(&["env", "set", &env1]).await?;
    c.cli(&["login", "--username", "admin", "--password", "micro"])
        .await?;
    let token = c.cli(&["cluster", "token"]).await?.trim().to_string();
    if token.is_empty() {
        return Err("`micro cluster token` printed nothing".into());
    }

    // The others join through the founder, one after the other.
    for _ in 1..nodes {
        c.start_server(Some((&seed, &token))).await?;
    }

    // Formed: every node listed, a voter or the leader, and seen alive.
    let ids: Vec<u64> = c.nodes.iter().map(|n| n.node_id).collect();
    let deadline = Instant::now() + CLUSTER_PATIENCE;
    let leader_id = loop {
        let seen = c.members(&env1).await.unwrap_or_default();
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
            let last = c.cli(&["cluster", "members"]).await.unwrap_or_else(|e| e);
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
    for node in &c.nodes[1..] {
        c.cli(&["env", "add", &node.env, &node.proxy]).await?;
        c.cli(&[
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
            } => store(address, clients, seconds, value_size).await,
            What::Helloworld { clients, seconds } => helloworld(clients, seconds).await,
            What::Cluster {
                nodes,
                clients,
                seconds,
                value_size,
            } => cluster(nodes, clients, seconds, value_size).await,
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
