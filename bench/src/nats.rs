//! `nats-server -js` processes for `micro-bench events`: one server, or a
//! cluster of them (node i on 127.0.0.i, routes between all), each with
//! its own temporary config, JetStream store and log; and the JetStream
//! stream the benchmark publishes to.
//!
//! Durability: with nats-server 2.10 or later the config asks for
//! `sync_interval: always` (an fsync before every ack, as Micro does);
//! older servers have no such setting and fsync about every 2 minutes,
//! which [`Nats::sync`] says.
//!
//! Must never: leave a server running (killed on drop, stopped at the
//! end), or touch a NATS server this run did not start (ports are fresh).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long servers get to start, and a cluster to elect a JetStream leader.
const PATIENCE: Duration = Duration::from_secs(60);

/// The JetStream stream of a run: every subject under `bench.`.
pub const STREAM: &str = "BENCH";

/// `nats-server`'s path: on PATH, else installed with apt-get (Debian's
/// package `nats-server`).
pub async fn ensure_installed() -> Result<PathBuf, String> {
    if let Some(p) = on_path("nats-server") {
        return Ok(p);
    }
    println!("nats-server is not installed: apt-get install -y nats-server");
    let install = || async {
        tokio::process::Command::new("apt-get")
            .args(["install", "-y", "-q", "nats-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null())
            .status()
            .await
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install().await {
        // A fresh machine may not have the package lists yet.
        let _ = tokio::process::Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(std::process::Stdio::null())
            .status()
            .await;
        if !install().await {
            return Err(
                "nats-server is missing and `apt-get install -y nats-server` failed (run it as root, or put nats-server on PATH)"
                    .into(),
            );
        }
    }
    on_path("nats-server")
        .ok_or_else(|| "apt-get installed nats-server, but it is not on PATH".to_string())
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `nats-server --version`: its text (`v2.9.10`) and (major, minor).
pub async fn version(bin: &Path) -> Result<(String, (u32, u32)), String> {
    let out = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
        .map_err(|e| format!("cannot run {} --version: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v = parse_version(&text)
        .ok_or_else(|| format!("cannot read nats-server's version from {text:?}"))?;
    let shown = text.rsplit(' ').next().unwrap_or(&text).to_string();
    Ok((shown, v))
}

/// (major, minor) of `nats-server: v2.9.10`.
fn parse_version(text: &str) -> Option<(u32, u32)> {
    let v = text.rsplit(' ').next()?.trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// One server of a run.
struct Server {
    name: String,
    /// `nats://127.0.0.i:port`
    url: String,
    log: PathBuf,
    child: Option<tokio::process::Child>,
}

/// The servers of one system under test (1 or 3 of them).
pub struct Nats {
    dir: tempfile::TempDir,
    servers: Vec<Server>,
    /// what was configured for durability, in words
    pub sync: String,
}

/// A free TCP port on `ip` (bound and released; the server binds it a
/// moment later).
fn free_port(ip: &str) -> Result<u16, String> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on {ip}: {e}"))
}

/// The config file of server `i` of `n`.
fn config(
    i: usize,
    ports: &[(u16, u16)],
    store: &Path,
    sync_always: bool,
    cluster_name: &str,
) -> String {
    let ip = |i: usize| format!("127.0.0.{}", i + 1);
    let mut c = format!(
        "server_name: \"n{}\"\nlisten: \"{}:{}\"\njetstream {{\n  store_dir: \"{}\"\n",
        i + 1,
        ip(i),
        ports[i].0,
        store.display()
    );
    if sync_always {
        c.push_str("  sync_interval: always\n");
    }
    c.push_str("}\n");
    if ports.len() > 1 {
        let routes: Vec<String> = (0..ports.len())
            .filter(|&j| j != i)
            .map(|j| format!("\"nats-route://{}:{}\"", ip(j), ports[j].1))
            .collect();
        c.push_str(&format!(
            "cluster {{\n  name: \"{cluster_name}\"\n  listen: \"{}:{}\"\n  routes: [{}]\n}}\n",
            ip(i),
            ports[i].1,
            routes.join(", ")
        ));
    }
    c
}

impl Nats {
    /// Starts `n` servers of `bin` (version `minor_version`), clustered
    /// when `n > 1`, and waits until each accepts clients.
    pub async fn start(bin: &Path, n: usize, version: (u32, u32)) -> Result<Nats, String> {
        let dir = tempfile::Builder::new()
            .prefix("micro-bench-nats-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
        let sync_always = version >= (2, 10);
        let sync = if sync_always {
            "jetstream sync_interval: always (fsync before every ack)".to_string()
        } else {
            format!(
                "none configurable: nats-server {}.{} has no sync_interval (2.10+); it fsyncs its stream files every 2 minutes",
                version.0, version.1
            )
        };
        let mut ports = Vec::new();
        for i in 0..n {
            let ip = format!("127.0.0.{}", i + 1);
            ports.push((free_port(&ip)?, free_port(&ip)?));
        }
        let mut nats = Nats {
            dir,
            servers: Vec::new(),
            sync,
        };
        let cluster_name = format!("bench{}", std::process::id());
        for i in 0..n {
            let node = nats.dir.path().join(format!("n{}", i + 1));
            std::fs::create_dir_all(&node).map_err(|e| format!("{}: {e}", node.display()))?;
            let conf = node.join("nats.conf");
            std::fs::write(
                &conf,
                config(i, &ports, &node.join("js"), sync_always, &cluster_name),
            )
            .map_err(|e| format!("{}: {e}", conf.display()))?;
            let log = node.join("server.log");
            let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let err = out
                .try_clone()
                .map_err(|e| format!("{}: {e}", log.display()))?;
            let child = tokio::process::Command::new(bin)
                .arg("-c")
                .arg(&conf)
                .current_dir(&node)
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            nats.servers.push(Server {
                name: format!("n{}", i + 1),
                url: format!("nats://127.0.0.{}:{}", i + 1, ports[i].0),
                log,
                child: Some(child),
            });
        }
        for i in 0..n {
            nats.wait_ready(i).await?;
        }
        Ok(nats)
    }

    /// Waits until server `i` accepts a client.
    async fn wait_ready(&mut self, i: usize) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.connect(i).await.is_ok() {
                return Ok(());
            }
            let server = &mut self.servers[i];
            if let Some(child) = server.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    server.child = None;
                    return Err(format!(
                        "nats-server {} exited with {status} (log {})",
                        server.name,
                        server.log.display()
                    ));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nats-server {} accepted no client within {} s (log {})",
                    server.name,
                    PATIENCE.as_secs(),
                    server.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A new client connection to server `i` (one per benchmark client, as
    /// for Micro), which stays on that server.
    pub async fn connect(&self, i: usize) -> Result<async_nats::Client, String> {
        let url = &self.servers[i].url;
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .ignore_discovered_servers()
            .connect(url.as_str())
            .await
            .map_err(|e| format!("cannot connect to nats-server at {url}: {e}"))
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// The servers' process ids (for their CPU time).
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .filter_map(|s| s.child.as_ref().and_then(|c| c.id()))
            .collect()
    }

    /// Creates the run's file-backed stream with one replica per server
    /// (R1 or R3), retrying while the cluster elects its JetStream leader;
    /// returns the index of the server that leads the stream.
    pub async fn create_stream(&self) -> Result<usize, String> {
        let client = self.connect(0).await?;
        let js = async_nats::jetstream::new(client);
        let config = async_nats::jetstream::stream::Config {
            name: STREAM.to_string(),
            subjects: vec!["bench.>".to_string()],
            storage: async_nats::jetstream::stream::StorageType::File,
            num_replicas: self.servers.len(),
            ..Default::default()
        };
        let deadline = Instant::now() + PATIENCE;
        let mut stream = loop {
            match js.get_or_create_stream(config.clone()).await {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "nats: the stream {STREAM} could not be created within {} s: {e}",
                        PATIENCE.as_secs()
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if self.servers.len() == 1 {
            return Ok(0);
        }
        loop {
            let leader = stream
                .info()
                .await
                .ok()
                .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone()));
            if let Some(i) = leader.and_then(|l| self.servers.iter().position(|s| s.name == l)) {
                return Ok(i);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "nats: the stream {STREAM} has no leader within {} s",
                    PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Stops every server (SIGTERM, then SIGKILL after 10 s).
    pub async fn stop(&mut self) {
        for s in &self.servers {
            if let Some(pid) = s.child.as_ref().and_then(|c| c.id()) {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for s in &mut self.servers {
            if let Some(mut child) = s.child.take() {
                if tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Keeps the servers' directory (normally removed) and prints where
    /// their logs are.
    pub fn keep_logs(self) {
        let dir = self.dir.keep();
        for s in &self.servers {
            eprintln!(
                "nats-server {}: log {} (directory {} kept)",
                s.name,
                s.log.display(),
                dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_of_the_debian_package_and_newer() {
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("nats-server: v2.10.24"), Some((2, 10)));
        assert_eq!(parse_version("nats-server: dev"), None);
    }

    #[test]
    fn sync_always_only_when_asked_and_routes_to_the_others() {
        let ports = [(4001, 6001), (4002, 6002), (4003, 6003)];
        let c = config(1, &ports, Path::new("/tmp/js"), false, "b");
        assert!(c.contains("listen: \"127.0.0.2:4002\""));
        assert!(!c.contains("sync_interval"));
        assert!(c.contains("nats-route://127.0.0.1:6001"));
        assert!(c.contains("nats-route://127.0.0.3:6003"));
        assert!(!c.contains("nats-route://127.0.0.2"));
        let one = config(0, &ports[..1], Path::new("/tmp/js"), true, "b");
        assert!(one.contains("sync_interval: always"));
        assert!(!one.contains("cluster"));
    }
}
