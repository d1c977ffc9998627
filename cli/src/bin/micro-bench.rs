//! `micro-bench`: throughput and latency of a node, measured over gRPC with
//! N concurrent clients. Prints figures; asserts nothing.
//!
//! ```text
//! micro-bench store [--address HOST:PORT] [--clients 16] [--seconds 10] [--value-size 100]
//! micro-bench helloworld [--clients 16] [--seconds 10]
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
    let mut conns = Vec::new();
    for _ in 0..clients.max(1) {
        conns.push(
            micro::Client::connect(&address, "bench")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let value = Arc::new(vec![b'x'; value_size]);
    let writes = {
        let value = value.clone();
        phase("write", conns.clone(), seconds, move |client, c, i| {
            let value = value.clone();
            async move {
                let req = WriteRequest {
                    record: Some(Record {
                        key: format!("bench/{c:03}/{i:09}"),
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
    let reads = phase("read", conns, seconds, move |client, c, i| async move {
        let req = ReadRequest {
            key: format!("bench/{c:03}/{:09}", (i.wrapping_mul(7919)) % per_client),
            options: None,
        };
        client.store().read(req).await.is_ok()
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
