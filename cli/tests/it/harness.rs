//! Starts real `micro server` processes on loopback ports chosen by the OS,
//! with a temporary HOME, and runs the real CLI against them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MICRO: &str = env!("CARGO_BIN_EXE_micro");

/// What a CLI run printed.
#[derive(Debug)]
pub struct Run {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
    /// the log of the server it ran against, for failure messages
    pub server_log: Option<PathBuf>,
}

impl Run {
    /// The last lines of the server's log, to explain a failure.
    fn server_tail(&self) -> String {
        let Some(path) = &self.server_log else {
            return String::new();
        };
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("\n--- server log (last 40 lines) ---\n{tail}")
    }
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            0,
            "command failed: {self:?}{}",
            self.server_tail()
        );
        &self.stdout
    }

    /// Asserts failure with exactly this one-line message and nothing on stdout.
    #[track_caller]
    pub fn fails_with(&self, message: &str) {
        assert_ne!(
            self.code,
            0,
            "command should have failed: {self:?}{}",
            self.server_tail()
        );
        assert_eq!(
            self.stderr,
            format!("{message}\n"),
            "{self:?}{}",
            self.server_tail()
        );
        assert_eq!(self.stdout, "", "{self:?}");
    }

    /// Asserts failure whose last line is this message (after progress
    /// lines, as `micro run` and `update` print while building).
    #[track_caller]
    pub fn fails_ending_with(&self, message: &str) {
        assert_ne!(self.code, 0, "command should have failed: {self:?}");
        assert_eq!(self.stderr.lines().last(), Some(message), "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
    }
}

/// A temporary HOME for the CLI (its `~/.micro`).
pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp home"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `micro ARGS` with this HOME and no MICRO_* variables leaking in.
    pub fn micro(&self, args: &[&str]) -> Run {
        self.micro_in(self.path(), args)
    }

    /// Runs `micro ARGS` in the working directory `dir`.
    pub fn micro_in(&self, dir: &Path, args: &[&str]) -> Run {
        self.micro_fed(dir, args, None)
    }

    /// Runs `micro ARGS` in `dir` with `input` (if any) on its stdin.
    pub fn micro_fed(&self, dir: &Path, args: &[&str], input: Option<&str>) -> Run {
        let mut cmd = Command::new(MICRO);
        cmd.args(args)
            .env("HOME", self.path())
            .current_dir(dir)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("MICRO_") {
                cmd.env_remove(k);
            }
        }
        // Nodes started by a test build nothing unless it asks.
        cmd.env("MICRO_RUNTIME_WARM_UP", "false");
        let mut child = cmd.spawn().expect("run micro");
        if let Some(text) = input {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(text.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("run micro");
        Run {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            code: out.status.code().unwrap_or(-1),
            server_log: None,
        }
    }
}

/// A running node.
pub struct Server {
    pub home: Home,
    pub data: PathBuf,
    child: Option<Child>,
    pub proxy: String,
    pub api: String,
    pub web: String,
    /// the cluster address (Raft, mTLS and gossip)
    pub cluster: String,
    /// this node's Raft id
    pub node_id: u64,
    extra: Vec<(String, String)>,
    /// the loopback address it listens on (127.0.0.x)
    ip: String,
    args: Vec<String>,
}

impl Server {
    /// Starts a node and makes it the CLI's current environment.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a node with extra environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        Server::start_node("127.0.0.1", env, &[])
    }

    /// Starts a node listening on `ip` (any 127.0.0.x works without
    /// configuration on Linux) with extra environment and arguments.
    pub fn start_node(ip: &str, env: &[(&str, &str)], args: &[&str]) -> Server {
        let home = Home::new();
        let data = home.path().join("server-data");
        let mut s = Server {
            home,
            data,
            child: None,
            proxy: String::new(),
            api: String::new(),
            web: String::new(),
            cluster: String::new(),
            node_id: 0,
            extra: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: ip.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        let proxy = s.proxy.clone();
        s.home.micro(&["env", "add", "test", &proxy]).ok();
        s.home.micro(&["env", "set", "test"]).ok();
        s
    }

    fn spawn(&mut self) {
        let listen = self.data.join("listen.json");
        let _ = std::fs::remove_file(&listen);
        let any = format!("{}:0", self.ip);
        // A restarted member keeps its cluster address: that is where the
        // others look for it.
        let cluster = if self.cluster.is_empty() {
            any.clone()
        } else {
            self.cluster.clone()
        };
        let mut cmd = Command::new(MICRO);
        cmd.arg("server")
            .args(["--data-dir", self.data.to_str().unwrap()])
            .args(["--api-address", &any])
            .args(["--proxy-address", &any])
            .args(["--web-address", &any])
            .args(["--cluster-address", &cluster])
            .args(&self.args)
            .env("HOME", self.home.path())
            // Nodes started by a test build nothing unless it asks.
            .env("MICRO_RUNTIME_WARM_UP", "false")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.home.path().join("server.log"))
                    .unwrap(),
            ));
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start micro server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&listen) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let proxy = v["proxy"].as_str().unwrap().to_string();
                    if !self.proxy.is_empty() && self.proxy != proxy {
                        // a restart binds new ports: repoint the environment
                        self.home.micro(&["env", "set", "local"]).ok();
                        self.home.micro(&["env", "del", "test"]).ok();
                        self.home.micro(&["env", "add", "test", &proxy]).ok();
                        self.home.micro(&["env", "set", "test"]).ok();
                    }
                    self.proxy = proxy;
                    self.api = v["api"].as_str().unwrap().to_string();
                    self.web = v["web"].as_str().unwrap().to_string();
                    self.cluster = v["cluster"].as_str().unwrap().to_string();
                    self.node_id = v["node_id"].as_u64().unwrap();
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("micro server exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "micro server did not become ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("server.log")).unwrap_or_default()
    }

    /// Runs the CLI against this node.
    pub fn micro(&self, args: &[&str]) -> Run {
        self.micro_in(self.home.path(), args)
    }

    /// Runs the CLI against this node with `input` on its stdin.
    pub fn micro_fed(&self, args: &[&str], input: &str) -> Run {
        let mut run = self.home.micro_fed(self.home.path(), args, Some(input));
        run.server_log = Some(self.home.path().join("server.log"));
        run
    }

    /// Runs the CLI against this node from the working directory `dir`.
    pub fn micro_in(&self, dir: &Path, args: &[&str]) -> Run {
        let mut run = self.home.micro_in(dir, args);
        run.server_log = Some(self.home.path().join("server.log"));
        run
    }

    /// Polls `micro status` until `pred` holds for the line of `name`.
    pub fn wait_status(&self, name: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let run = self.micro(&["status"]);
            let line = run
                .stdout
                .lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .unwrap_or("")
                .to_string();
            if pred(&line) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "status of {name} never matched; last: {run:?}\nserver log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A gRPC client in `namespace`.
    pub async fn client(&self, namespace: &str) -> micro::Client {
        micro::Client::connect(&self.proxy, namespace)
            .await
            .expect("connect")
    }

    /// Logs the CLI in as `user` in the current namespace.
    pub fn login(&self, user: &str, password: &str) {
        let run = self.micro(&["login", "--username", user, "--password", password]);
        assert_eq!(run.ok(), "Successfully logged in.\n");
    }

    /// Logs the CLI in as `user` of namespace `ns`.
    pub fn login_in(&self, ns: &str, user: &str, password: &str) {
        let run = self.micro(&[
            "--namespace",
            ns,
            "login",
            "--username",
            user,
            "--password",
            password,
        ]);
        assert_eq!(run.ok(), "Successfully logged in.\n");
    }

    /// Only logged-in accounts may call anything but auth.
    pub fn lock_down(&self) {
        assert_eq!(
            self.micro(&[
                "auth",
                "create",
                "rule",
                "--access=granted",
                "--scope=*",
                "--resource=*:*:*",
                "onlyloggedin"
            ])
            .ok(),
            "Rule created\n"
        );
        assert_eq!(
            self.micro(&[
                "auth",
                "create",
                "rule",
                "--access=granted",
                "--resource=service:auth:*",
                "auth-public"
            ])
            .ok(),
            "Rule created\n"
        );
        assert_eq!(
            self.micro(&["auth", "delete", "rule", "default"]).ok(),
            "Rule deleted\n"
        );
    }

    /// Logs the CLI in as the default admin (`admin` / `micro`).
    pub fn login_admin(&self) {
        self.login("admin", "micro");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.id())
            .expect("the server runs")
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Waits for the node to exit (after a signal sent before); returns the
    /// exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                c.kill().ok();
                c.wait().ok();
                panic!("server did not stop on SIGTERM: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the node again on the same data directory.
    pub fn restart(&mut self) {
        self.spawn();
    }

    /// Sends a signal to the node's process (STOP and CONT freeze and thaw
    /// it: to its peers it is cut off, as in a partition).
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([&format!("-{sig}"), &c.id().to_string()])
                .status()
                .ok();
        }
    }
}

impl Drop for Server {
    /// A clean stop, so the services the node runs stop with it.
    fn drop(&mut self) {
        self.signal("CONT");
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .ok();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// A minimal HTTP/1.1 GET, returning status code and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_send(addr, "GET", path, &[], b"")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// The build output directory these tests were built into (`target/debug`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    // target/debug/deps/it-xxxx -> target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A helloworld instance (the workspace's example binary) registered with
/// `server`, its stdout kept in a file.
pub struct Instance {
    child: Child,
    pub log: PathBuf,
}

/// The target dir shared by the services the tests build (the runtime's
/// Cargo builds and the helloworld example), kept between runs.
pub fn services_target_dir() -> PathBuf {
    build_dir()
        .parent()
        .expect("target dir")
        .join("micro-runtime")
}

/// The binary of the workspace example `package`, built once per test run.
/// `cargo test` builds only an example's test harness, not its binary;
/// this builds it in the services' target dir so it does not wait on the
/// outer cargo.
pub fn example_bin(package: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, bin)) = built.iter().find(|(p, _)| p == package) {
        return bin.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = services_target_dir();
    let out = Command::new(cargo)
        .args([
            "build",
            "--locked",
            "--quiet",
            "-p",
            package,
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(&workspace)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cannot build examples/{package}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target.join("debug").join(package);
    built.push((package.to_string(), bin.clone()));
    bin
}

/// The helloworld example's binary, built once per test run.
pub fn helloworld_bin() -> PathBuf {
    example_bin("helloworld")
}

impl Instance {
    pub fn start(server: &Server, tag: &str) -> Instance {
        let bin = helloworld_bin();
        let log = server.home.path().join(format!("helloworld-{tag}.log"));
        let child = Command::new(bin)
            .env("MICRO_PROXY_ADDRESS", &server.proxy)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::null())
            .spawn()
            .expect("start helloworld");
        Instance { child, log }
    }

    /// How many calls this instance logged.
    pub fn calls(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("Received Helloworld."))
            .count()
    }

    pub fn kill9(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until `service` has `n` registered nodes.
pub fn wait_for_nodes(server: &Server, service: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = server.micro(&[
            "call",
            "registry",
            "Registry.GetService",
            &format!("{{\"service\":\"{service}\"}}"),
        ]);
        if run.code == 0 {
            let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
            let nodes = v["services"].as_array().map(|s| {
                s.iter()
                    .map(|s| s["nodes"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
            });
            if nodes == Some(n) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{service} never had {n} nodes: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.1 request with a body.
pub fn http_send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = raw.split_once("\r\n\r\n").expect("http response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}
