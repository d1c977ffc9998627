//! The etcd cluster `compare` measures Micro against: `etcd` processes
//! (Debian's `etcd-server`, found on PATH), member i on 127.0.0.i with its
//! own temporary data directory and log, formed with a static initial
//! cluster. Durability as shipped: etcd fsyncs its WAL before it answers
//! (`--unsafe-no-fsync` is never given).
//!
//! Must never: leave a member running after the run (stopped at the end,
//! killed on drop), or remove a failed run's logs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::http::{Api, Conn, Target};

/// How long the members get to elect a first leader, or a new one.
const PATIENCE: Duration = Duration::from_secs(60);

/// The sentence a run without etcd prints.
pub const MISSING: &str = "etcd not found on PATH: apt-get install etcd-server";

struct Member {
    dir: tempfile::TempDir,
    log: PathBuf,
    child: Option<tokio::process::Child>,
    /// `http://127.0.0.i:port`
    client_url: String,
}

/// The members of one etcd cluster.
pub struct Etcd {
    members: Vec<Member>,
    /// member ids (as etcd prints them: decimal) by index, once known
    ids: Vec<String>,
}

/// The `etcd` binary on PATH, if any.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
}

/// `etcd --version`'s first line.
pub async fn version(etcd: &std::path::Path) -> String {
    match tokio::process::Command::new(etcd)
        .arg("--version")
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("etcd (unknown version)")
            .to_string(),
        Err(e) => format!("etcd (cannot ask its version: {e})"),
    }
}

/// A TCP port free on `ip` just now.
fn free_port(ip: &str) -> Result<u16, String> {
    let l = std::net::TcpListener::bind((ip, 0)).map_err(|e| format!("cannot bind {ip}: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("{ip}: {e}"))
}

impl Etcd {
    /// Starts `n` members of a new cluster and returns once one leads and
    /// every member answers.
    pub async fn start(etcd: &std::path::Path, n: usize) -> Result<Etcd, String> {
        let token = format!("micro-bench-{}", std::process::id());
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        for i in 0..n {
            let ip = format!("127.0.0.{}", i + 1);
            peers.push(format!("http://{ip}:{}", free_port(&ip)?));
            clients.push(format!("http://{ip}:{}", free_port(&ip)?));
        }
        let initial: Vec<String> = peers
            .iter()
            .enumerate()
            .map(|(i, p)| format!("m{}={p}", i + 1))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for i in 0..n {
            let dir = tempfile::Builder::new()
                .prefix(&format!("micro-bench-etcd{}-", i + 1))
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            let log = dir.path().join("etcd.log");
            let log_file =
                std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
            let log_out = log_file
                .try_clone()
                .map_err(|e| format!("{}: {e}", log.display()))?;
            let mut cmd = tokio::process::Command::new(etcd);
            cmd.arg("--name")
                .arg(format!("m{}", i + 1))
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-peer-urls", &peers[i]])
                .args(["--initial-advertise-peer-urls", &peers[i]])
                .args(["--listen-client-urls", &clients[i]])
                .args(["--advertise-client-urls", &clients[i]])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--logger", "zap", "--log-level", "warn"]);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD") {
                    cmd.env_remove(k);
                }
            }
            cmd.current_dir(dir.path())
                .stdin(std::process::Stdio::null())
                .stdout(log_out)
                .stderr(log_file)
                .kill_on_drop(true);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", etcd.display()))?;
            members.push(Member {
                dir,
                log,
                child: Some(child),
                client_url: clients[i].clone(),
            });
        }
        let mut e = Etcd {
            members,
            ids: Vec::new(),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(ids) = e.member_ids().await {
                e.ids = ids;
                if e.leader_from(0).await.is_ok() {
                    return Ok(e);
                }
            }
            for (i, m) in e.members.iter_mut().enumerate() {
                if let Some(child) = m.child.as_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        m.child = None;
                        return Err(format!(
                            "etcd member {} exited with {status} (log {})",
                            i + 1,
                            m.log.display()
                        ));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the etcd cluster did not elect a leader within {} s",
                    PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `POST /v3/maintenance/status` on member `i`: its own id and the
    /// leader's, as etcd's JSON gives them (decimal strings).
    async fn status(&self, i: usize) -> Result<(String, String), String> {
        let (code, body) = Conn::new()
            .post(
                &format!("{}/v3/maintenance/status", self.members[i].client_url),
                None,
                "{}".into(),
                Duration::from_secs(5),
            )
            .await?;
        if code != 200 {
            return Err(format!("status of member {}: {code}", i + 1));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("status of member {}: {e}", i + 1))?;
        let id = |x: &serde_json::Value| match x {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Ok((id(&v["header"]["member_id"]), id(&v["leader"])))
    }

    /// Every member's own id, by index.
    async fn member_ids(&self) -> Result<Vec<String>, String> {
        let mut ids = Vec::new();
        for i in 0..self.members.len() {
            ids.push(self.status(i).await?.0);
        }
        Ok(ids)
    }

    /// The index of the leader as member `i` sees it.
    pub async fn leader_from(&self, i: usize) -> Result<usize, String> {
        let (_, leader) = self.status(i).await?;
        self.ids
            .iter()
            .position(|id| *id == leader)
            .ok_or_else(|| format!("member {} knows no leader", i + 1))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn target(&self, i: usize) -> Target {
        Target {
            api: Api::Etcd,
            base: self.members[i].client_url.clone(),
        }
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().and_then(|c| c.id())
    }

    pub fn pids(&self) -> Vec<u32> {
        (0..self.members.len())
            .filter_map(|i| self.pid(i))
            .collect()
    }

    /// Kills member `i` with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self, i: usize) -> Result<(), String> {
        let mut child = self.members[i]
            .child
            .take()
            .ok_or_else(|| format!("etcd member {} is not running", i + 1))?;
        child
            .start_kill()
            .map_err(|e| format!("cannot kill etcd member {}: {e}", i + 1))?;
        let _ = child.wait().await;
        Ok(())
    }

    /// SIGTERM to every member, up to 10 s to exit, then SIGKILL.
    pub async fn stop(&mut self) {
        for m in &self.members {
            if let Some(pid) = m.child.as_ref().and_then(|c| c.id()) {
                let _ = tokio::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                if tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
    }

    /// Keeps the members' directories and prints where their logs are.
    pub fn keep_logs(&mut self) {
        for (i, m) in std::mem::take(&mut self.members).into_iter().enumerate() {
            let dir = m.dir.keep();
            eprintln!(
                "etcd member {}: log {} (directory {} kept)",
                i + 1,
                m.log.display(),
                dir.display()
            );
        }
    }
}
