//! The process supervisor: builds one service from its source folder, runs
//! it, keeps it running, and stops it.
//!
//! A [`Supervisor`] is a handle on a background task that walks
//! `Pending → Building → Starting → Running`. The build and the process each
//! run in a process group of their own, so stopping reaches everything they
//! started. A process that exits on its own is restarted with exponential
//! backoff; a build that fails is final. Everything the build and the process
//! print goes to the service's log file (see [`super::logs`]). Both start
//! from an empty environment: `PATH`, `HOME`, `LANG`, `TZ` (builds also the
//! toolchains' variables, see [`tool_env`]) and the spec's own variables.
//!
//! Must never: pass the node's environment (its secrets) to a service or a
//! build, signal any process group but one it created (a group id is
//! only signalled while this supervisor owns it, and never 0 or 1, which
//! would reach the node itself or every process), block the async runtime on
//! process or disk I/O, or leave the service's processes running once the
//! handle is stopped or dropped.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::logs::{LogSink, MAX_LINE};

/// A process counts as running once it has stayed up this long.
const RUNNING_AFTER: Duration = Duration::from_secs(1);
/// How long a stopped process group gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for a SIGKILLed group to disappear before giving up on
/// it (a process stuck in uninterruptible I/O cannot be hurried).
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How long to wait for the output pipes to drain once the group is gone; a
/// process that escaped the group (setsid) may hold them open forever.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// First restart delay, doubled per consecutive crash up to `BACKOFF_MAX`.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long had recovered: its next crash starts the
/// backoff over.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// How often to look whether a signalled process group is gone.
const GROUP_POLL: Duration = Duration::from_millis(50);

/// How a service is built and what is run.
#[derive(Clone, Debug)]
pub enum Build {
    /// A Cargo project: `cargo build [--release]` with
    /// `CARGO_TARGET_DIR=target_dir` (one target dir shared by all services
    /// so dependencies compile once). The binary run is
    /// `target_dir/{release|debug}/<bin>`; see [`cargo_bin_name`]. With
    /// `framework`, the project's `micro` dependency is patched to that
    /// crate folder (see `crate::framework`).
    Cargo {
        target_dir: PathBuf,
        release: bool,
        framework: Option<PathBuf>,
    },
    /// Anything else: an optional build command and a run command, both run
    /// with `sh -c` in the source dir.
    Command { build: Option<String>, run: String },
}

/// One service to supervise.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The service's name, for the node's own log.
    pub name: String,
    /// The service's source folder; the working directory of build and run.
    pub dir: PathBuf,
    pub build: Build,
    /// Extra environment for the running process and the build.
    pub env: Vec<(String, String)>,
    /// stdout and stderr of the build and of the process are appended here.
    pub log_file: PathBuf,
    /// The build's output is appended here too (`micro logs NAME --build`).
    pub build_log: Option<PathBuf>,
    /// Build, then stop at [`State::Built`] without running anything: how
    /// an update proves its new version builds while the old one serves.
    pub build_only: bool,
}

/// Where a supervised service is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Pending,
    Building,
    /// The build succeeded and, as asked (`build_only`), nothing runs.
    Built,
    Starting,
    Running,
    Stopping,
    Stopped,
    /// Why it is not running: a failed build (final), or the last exit while
    /// a restart is pending.
    Error(String),
}

impl State {
    /// The lowercase name: "pending", "building", …, "error".
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "pending",
            State::Building => "building",
            State::Built => "built",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Error(_) => "error",
        }
    }
}

/// A snapshot of a supervised service.
#[derive(Clone, Debug)]
pub struct Status {
    pub state: State,
    /// How many times the process has been restarted after exiting.
    pub restarts: u32,
    /// The process (group leader) while one is started or running.
    pub pid: Option<u32>,
    /// When this status was set.
    pub updated: SystemTime,
}

/// The binary name of the Cargo project could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("Cargo.toml is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("Cargo.toml has no [package] name and no [[bin]] target (a workspace manifest cannot be run)")]
    NoBinary,
    #[error("a [[bin]] target in Cargo.toml has no name")]
    UnnamedBin,
    #[error("Cargo.toml declares several [[bin]] targets ({0}) and none is named after the package; cannot tell which to run")]
    Ambiguous(String),
}

/// The binary `cargo build` makes for the manifest `manifest` (the text of a
/// Cargo.toml): the name of its only `[[bin]]`; with several `[[bin]]`s the
/// one named after the package; with none, `[package].name`.
pub fn cargo_bin_name(manifest: &str) -> Result<String, ManifestError> {
    let doc: toml::Table = toml::from_str(manifest)?;
    let package = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let bins = match doc.get("bin").and_then(|b| b.as_array()) {
        Some(bins) => bins
            .iter()
            .map(|b| {
                b.get("name")
                    .and_then(|n| n.as_str())
                    .map(str::to_string)
                    .ok_or(ManifestError::UnnamedBin)
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    match bins.as_slice() {
        [] => package.ok_or(ManifestError::NoBinary),
        [only] => Ok(only.clone()),
        several => match package {
            Some(p) if several.contains(&p) => Ok(p),
            _ => Err(ManifestError::Ambiguous(several.join(", "))),
        },
    }
}

/// A handle on one supervised service. Dropping it kills the service's
/// process group (SIGKILL) at once; call [`Supervisor::stop`] first for a
/// graceful stop.
pub struct Supervisor {
    status: watch::Receiver<Status>,
    stop: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl Supervisor {
    /// Starts building then running `spec` in a background task. Must be
    /// called within a Tokio runtime.
    pub fn start(spec: Spec) -> Supervisor {
        let (status_tx, status_rx) = watch::channel(Status {
            state: State::Pending,
            restarts: 0,
            pid: None,
            updated: SystemTime::now(),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared::default());
        tokio::spawn(supervise(
            spec,
            Reporter { tx: status_tx },
            stop_rx,
            shared.clone(),
        ));
        Supervisor {
            status: status_rx,
            stop: stop_tx,
            shared,
        }
    }

    /// Watch the status as it changes.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Stops the process: SIGTERM to its process group, SIGKILL after 10 s;
    /// a build in progress is killed; resolves when it is gone. State ends
    /// as Stopped.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let mut status = self.status.clone();
        if status
            .wait_for(|s| s.state == State::Stopped)
            .await
            .is_err()
        {
            // The task is gone without saying Stopped (it panicked): make
            // sure whatever it had running goes with it.
            signal_group(self.shared.pgid.load(Ordering::SeqCst), libc::SIGKILL);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Dropping the stop sender below also tells the task to stop; this
        // makes sure the processes die even if the runtime is shutting down
        // and the task never runs again. `closed` covers a process spawned
        // after we read the group id (see `Shared::track`).
        self.shared.closed.store(true, Ordering::SeqCst);
        signal_group(self.shared.pgid.load(Ordering::SeqCst), libc::SIGKILL);
    }
}

/// What the handle and the task share so that dropping the handle can kill
/// synchronously.
#[derive(Default)]
struct Shared {
    /// The process group currently running (build or service), or 0.
    pgid: AtomicI32,
    /// The handle was dropped.
    closed: AtomicBool,
}

impl Shared {
    fn track(&self, pgid: i32) {
        self.pgid.store(pgid, Ordering::SeqCst);
        // Drop sets `closed` then reads `pgid`; we store `pgid` then read
        // `closed`. With SeqCst at least one side sees the other, so a group
        // spawned while the handle is being dropped is still killed.
        if self.closed.load(Ordering::SeqCst) {
            signal_group(pgid, libc::SIGKILL);
        }
    }

    fn untrack(&self) {
        self.pgid.store(0, Ordering::SeqCst);
    }
}

/// Sends `sig` to the process group `pgid`. Ignores ids that are not a
/// group we could have created: `kill(0, …)` would hit the node's own group
/// and `kill(-1, …)` every process we may signal.
fn signal_group(pgid: i32, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions. ESRCH (the group
    // is already gone) is the expected race and needs no handling.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Whether any process of group `pgid` is still alive. Blocking (it may scan
/// /proc); run it on the blocking pool.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(-pgid, 0) } == -1 {
        // EPERM: members exist that we may not signal; count them as alive
        // so the caller waits for them and then gives up at its deadline.
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    live_member(pgid)
}

/// kill(2) also finds zombies, and an orphaned grandchild stays a zombie for
/// as long as whoever adopted it does not reap it (some container inits
/// never do). A zombie is gone for our purposes, so on Linux look at the
/// members' states.
#[cfg(target_os = "linux")]
fn live_member(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue; // exited meanwhile
        };
        // "pid (comm) state ppid pgrp …"; comm may contain anything, so
        // parse from the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        if pgrp == Some(pgid) && !matches!(state, Some("Z") | Some("X") | Some("x")) {
            return true;
        }
    }
    false
}

#[cfg(not(target_os = "linux"))]
fn live_member(_pgid: i32) -> bool {
    true
}

/// "exit status N" or "killed by signal N".
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => status.to_string(),
    }
}

/// Publishes status changes.
struct Reporter {
    tx: watch::Sender<Status>,
}

impl Reporter {
    fn set(&self, state: State, pid: Option<u32>) {
        self.tx.send_modify(|s| {
            s.state = state;
            s.pid = pid;
            s.updated = SystemTime::now();
        });
    }

    fn restarted(&self) {
        self.tx
            .send_modify(|s| s.restarts = s.restarts.saturating_add(1));
    }
}

/// How the supervision of a service ended.
enum Ended {
    /// A stop was asked for and everything is gone.
    Stopped,
    /// Built as asked, nothing run: wait for stop.
    Built,
    /// It cannot go on (failed build, unreadable manifest, …): wait for stop.
    Failed(String),
}

/// Resolves when a stop is asked for, or the handle is dropped.
async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn stop_pending(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow() || stop.has_changed().is_err()
}

async fn supervise(
    spec: Spec,
    reporter: Reporter,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    match run(&spec, &reporter, &mut stop, &shared).await {
        Ended::Stopped => {}
        Ended::Built => {
            reporter.set(State::Built, None);
            stop_requested(&mut stop).await;
        }
        Ended::Failed(why) => {
            tracing::warn!(service = %spec.name, reason = %why, "service cannot run");
            reporter.set(State::Error(why), None);
            // Failures here are final (no restart loop); the state stays
            // visible until someone stops or drops the service.
            stop_requested(&mut stop).await;
        }
    }
    reporter.set(State::Stopped, None);
}

/// What to spawn, resolved from [`Build`].
enum Program {
    Shell(String),
    CargoBuild {
        target_dir: PathBuf,
        release: bool,
        framework: Option<PathBuf>,
    },
    Exec(PathBuf),
}

/// What a service's process takes from the node's environment; everything
/// else it gets is in [`Spec::env`].
const RUN_ENV: &[&str] = &["PATH", "HOME", "LANG", "TZ"];

/// What builds (and fetching sources) take on top: what cargo, rustup and
/// git need to find toolchains, caches, certificates and proxies.
const TOOL_ENV: &[&str] = &[
    "LC_ALL",
    "USER",
    "CARGO_HOME",
    "RUSTUP_HOME",
    "RUSTUP_TOOLCHAIN",
    "RUSTUP_AUTO_INSTALL",
    "CARGO_NET_OFFLINE",
    "CARGO_BUILD_JOBS",
    "RUSTC_WRAPPER",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
];

fn inherited(names: &'static [&'static str]) -> impl Iterator<Item = (&'static str, OsString)> {
    names
        .iter()
        .filter_map(|k| std::env::var_os(k).map(|v| (*k, v)))
}

/// The node's variables a service's process keeps.
pub fn run_env() -> impl Iterator<Item = (&'static str, OsString)> {
    inherited(RUN_ENV)
}

/// The node's variables a build or a `git` fetch keeps: [`run_env`] and
/// the toolchains'. Never the node's secrets (`MICRO_*` is not among them).
pub fn tool_env() -> impl Iterator<Item = (&'static str, OsString)> {
    inherited(RUN_ENV).chain(inherited(TOOL_ENV))
}

impl Program {
    /// The process (a `build` step or the service), in a clean environment:
    /// the node's own variables never reach either, only what [`run_env`]
    /// (for builds [`tool_env`]) lets through, then the spec's.
    fn command(&self, spec: &Spec, build: bool) -> Command {
        let mut cmd = match self {
            Program::Shell(script) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(script);
                c
            }
            Program::CargoBuild {
                release, framework, ..
            } => {
                let mut c = Command::new("cargo");
                c.arg("build");
                if *release {
                    c.arg("--release");
                }
                if let Some(dir) = framework {
                    c.args(crate::framework::patch_args(dir));
                }
                c
            }
            Program::Exec(path) => Command::new(path),
        };
        cmd.env_clear();
        if build {
            cmd.envs(tool_env());
        } else {
            cmd.envs(run_env());
        }
        if let Program::CargoBuild { target_dir, .. } = self {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        cmd.current_dir(&spec.dir)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so signals reach everything it starts.
            .process_group(0)
            // Last resort if the task is dropped with the runtime: at least
            // the leader dies (the handle's Drop kills the group).
            .kill_on_drop(true);
        cmd
    }

    fn describe(&self) -> String {
        match self {
            Program::Shell(script) => format!("sh -c {script:?}"),
            Program::CargoBuild { release: true, .. } => "cargo build --release".to_string(),
            Program::CargoBuild { release: false, .. } => "cargo build".to_string(),
            Program::Exec(path) => path.display().to_string(),
        }
    }
}

async fn read_bin_name(dir: &Path) -> Result<String, ManifestError> {
    let path = dir.join("Cargo.toml");
    let text = tokio::fs::read_to_string(&path)
        .await
        .map_err(|source| ManifestError::Read { path, source })?;
    cargo_bin_name(&text)
}

async fn run(
    spec: &Spec,
    reporter: &Reporter,
    stop: &mut watch::Receiver<bool>,
    shared: &Shared,
) -> Ended {
    let sink = match LogSink::open(spec.log_file.clone()).await {
        Ok(s) => s,
        Err(e) => {
            return Ended::Failed(format!(
                "cannot open log file {}: {e}",
                spec.log_file.display()
            ))
        }
    };
    let (build, program) = match &spec.build {
        Build::Cargo {
            target_dir,
            release,
            framework,
        } => {
            // Before building, so a manifest we cannot run fails fast.
            let bin = match read_bin_name(&spec.dir).await {
                Ok(b) => b,
                Err(e) => return Ended::Failed(e.to_string()),
            };
            let profile = if *release { "release" } else { "debug" };
            (
                Some(Program::CargoBuild {
                    target_dir: target_dir.clone(),
                    release: *release,
                    framework: framework.clone(),
                }),
                Program::Exec(target_dir.join(profile).join(bin)),
            )
        }
        Build::Command { build, run } => (
            build.clone().map(Program::Shell),
            Program::Shell(run.clone()),
        ),
    };

    if let Some(build) = build {
        if stop_pending(stop) {
            return Ended::Stopped;
        }
        // The build's own log, when there is one, gets the build's output
        // too: `micro logs NAME --build` shows builds and nothing else.
        let mut sinks = vec![sink.clone()];
        if let Some(file) = &spec.build_log {
            match LogSink::open(file.clone()).await {
                Ok(s) => sinks.push(s),
                Err(e) => tracing::warn!(service = %spec.name, error = %e, "no build log"),
            }
        }
        let note = |text: String| {
            let sinks = sinks.clone();
            async move {
                for s in &sinks {
                    s.note(&text).await;
                }
            }
        };
        reporter.set(State::Building, None);
        note(format!("building: {}", build.describe())).await;
        let mut proc = match Proc::spawn(build.command(spec, true), &sinks, shared) {
            Ok(p) => p,
            Err(e) => {
                return Ended::Failed(format!("cannot start build ({}): {e}", build.describe()))
            }
        };
        let status = tokio::select! {
            status = proc.child.wait() => status,
            _ = stop_requested(stop) => {
                reporter.set(State::Stopping, None);
                // A build has nothing to save: no grace period.
                proc.terminate(Duration::ZERO).await;
                proc.finish(shared).await;
                note("build cancelled".to_string()).await;
                return Ended::Stopped;
            }
        };
        proc.clear_group().await;
        proc.finish(shared).await;
        match status {
            Ok(s) if s.success() => note("build finished".to_string()).await,
            Ok(s) => {
                let why = format!("build failed: {}", describe_exit(s));
                note(why.clone()).await;
                // The output must be in the files before anyone is told to
                // look at it.
                for s in &sinks {
                    s.flush().await;
                }
                return Ended::Failed(why);
            }
            Err(e) => return Ended::Failed(format!("build failed: cannot wait for it: {e}")),
        }
    }
    if spec.build_only {
        sink.flush().await;
        return Ended::Built;
    }

    let mut backoff = BACKOFF_FIRST;
    loop {
        if stop_pending(stop) {
            return Ended::Stopped;
        }
        let started = Instant::now();
        let mut proc = match Proc::spawn(
            program.command(spec, false),
            std::slice::from_ref(&sink),
            shared,
        ) {
            Ok(p) => p,
            Err(e) => return Ended::Failed(format!("cannot start {}: {e}", program.describe())),
        };
        let pid = proc.pid;
        reporter.set(State::Starting, Some(pid));
        sink.note(&format!("started {} (pid {pid})", program.describe()))
            .await;
        tracing::info!(service = %spec.name, pid, "service started");

        let mut running = false;
        let status = loop {
            tokio::select! {
                status = proc.child.wait() => break status,
                _ = stop_requested(stop) => {
                    reporter.set(State::Stopping, Some(pid));
                    proc.terminate(STOP_GRACE).await;
                    proc.finish(shared).await;
                    sink.note("stopped").await;
                    tracing::info!(service = %spec.name, pid, "service stopped");
                    return Ended::Stopped;
                }
                _ = tokio::time::sleep_until(started + RUNNING_AFTER), if !running => {
                    running = true;
                    reporter.set(State::Running, Some(pid));
                }
            }
        };
        // The leader exited on its own; whatever it left behind in its group
        // would be orphaned by the restart.
        proc.clear_group().await;
        proc.finish(shared).await;

        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = BACKOFF_FIRST;
        }
        let exit = match status {
            Ok(s) => match s.code() {
                Some(code) => format!("exited with status {code}"),
                None => describe_exit(s),
            },
            Err(e) => format!("lost track of the process: {e}"),
        };
        let why = format!("{exit}; restarting in {}s", backoff.as_secs());
        sink.note(&why).await;
        tracing::info!(service = %spec.name, pid, reason = %why, "service exited");
        reporter.set(State::Error(why), None);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(stop) => return Ended::Stopped,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        reporter.restarted();
    }
}

/// A spawned build or service process: the leader of its own group.
struct Proc {
    child: Child,
    pid: u32,
    pumps: Vec<JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut cmd: Command, sinks: &[LogSink], shared: &Shared) -> io::Result<Proc> {
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| io::Error::other("the process has no pid"))?;
        // With process_group(0) the group id is the leader's pid.
        shared.track(pid as i32);
        let mut pumps = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(out, sinks.to_vec())));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(err, sinks.to_vec())));
        }
        Ok(Proc { child, pid, pumps })
    }

    fn pgid(&self) -> i32 {
        self.pid as i32
    }

    /// SIGTERM to the group (SIGKILL at once when `grace` is zero), SIGKILL
    /// to whatever is left after `grace`; returns when the group is gone
    /// (or, after SIGKILL, when waiting longer is pointless).
    async fn terminate(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        signal_group(
            self.pgid(),
            if grace.is_zero() {
                libc::SIGKILL
            } else {
                libc::SIGTERM
            },
        );
        if tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .is_err()
        {
            signal_group(self.pgid(), libc::SIGKILL);
            if let Err(e) = self.child.wait().await {
                tracing::warn!(pid = self.pid, error = %e, "cannot reap a killed process");
            }
        }
        // The leader is gone; the rest of its group may still be finishing.
        self.wait_group(deadline).await;
    }

    /// After the leader exited by itself: SIGKILL what is left of its group.
    async fn clear_group(&mut self) {
        if pool_group_alive(self.pgid()).await {
            signal_group(self.pgid(), libc::SIGKILL);
            self.wait_group(Instant::now()).await;
        }
    }

    /// Waits for the group to empty until `deadline`, then SIGKILLs it and
    /// waits `KILL_WAIT` more at most.
    async fn wait_group(&self, deadline: Instant) {
        let mut killed_at: Option<Instant> = None;
        while pool_group_alive(self.pgid()).await {
            let now = Instant::now();
            match killed_at {
                None if now >= deadline => {
                    signal_group(self.pgid(), libc::SIGKILL);
                    killed_at = Some(now);
                }
                Some(at) if now >= at + KILL_WAIT => {
                    tracing::warn!(
                        pgid = self.pgid(),
                        "processes survive SIGKILL; giving up on them"
                    );
                    return;
                }
                _ => {}
            }
            tokio::time::sleep(GROUP_POLL).await;
        }
    }

    /// Forgets the group and lets the output pipes drain into the log.
    async fn finish(self, shared: &Shared) {
        shared.untrack();
        let drain = Instant::now() + PIPE_DRAIN;
        for mut pump in self.pumps {
            if tokio::time::timeout_at(drain, &mut pump).await.is_err() {
                // Someone outside the group still holds the pipe.
                pump.abort();
            }
        }
    }
}

async fn pool_group_alive(pgid: i32) -> bool {
    // If the blocking pool fails us, assume alive: the callers' deadlines
    // bound the wait and end in SIGKILL, the safe side.
    tokio::task::spawn_blocking(move || group_alive(pgid))
        .await
        .unwrap_or(true)
}

/// Copies one output pipe to the log, a line at a time so stdout and stderr
/// interleave by whole lines.
async fn pump<R: AsyncRead + Unpin>(reader: R, sinks: Vec<LogSink>) {
    let write = |line: Vec<u8>| {
        let sinks = &sinks;
        async move {
            if let Some((last, others)) = sinks.split_last() {
                for s in others {
                    s.write(line.clone()).await;
                }
                last.write(line).await;
            }
        }
    };
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        let buf = match reader.fill_buf().await {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "reading a service's output");
                break;
            }
        };
        if buf.is_empty() {
            break;
        }
        let room = MAX_LINE - line.len();
        let take = buf
            .iter()
            .position(|&b| b == b'\n')
            .map_or(buf.len(), |i| i + 1)
            .min(room);
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.last() == Some(&b'\n') || line.len() >= MAX_LINE {
            if line.last() != Some(&b'\n') {
                line.push(b'\n');
            }
            write(std::mem::take(&mut line)).await;
        }
    }
    if !line.is_empty() {
        line.push(b'\n');
        write(line).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::logs;

    fn spec(dir: &Path, build: Option<&str>, run: &str) -> Spec {
        Spec {
            name: "test".to_string(),
            dir: dir.to_path_buf(),
            build: Build::Command {
                build: build.map(str::to_string),
                run: run.to_string(),
            },
            env: vec![("GREETING".to_string(), "hello there".to_string())],
            log_file: dir.join("logs").join("test.log"),
            build_log: None,
            build_only: false,
        }
    }

    async fn wait_state(sup: &Supervisor, what: &str, want: impl Fn(&Status) -> bool) -> Status {
        let mut rx = sup.watch();
        let found =
            match tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| want(s))).await {
                Ok(Ok(s)) => Some(s.clone()),
                _ => None,
            };
        found.unwrap_or_else(|| panic!("timed out waiting for {what}; status {:?}", *rx.borrow()))
    }

    async fn wait_log(file: &Path, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let text = tokio::fs::read_to_string(file).await.unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not in the log: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Gone, or a zombie nobody reaps (an orphan adopted by an init that
    /// does not reap): either way not running.
    fn not_running(pid: i32) -> bool {
        // SAFETY: signal 0 only checks existence.
        if unsafe { libc::kill(pid, 0) } == -1 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rfind(')')
                    .is_some_and(|i| s[i + 1..].trim_start().starts_with('Z'))
            })
            .unwrap_or(true)
    }

    async fn stop_within(sup: &Supervisor, secs: u64) {
        tokio::time::timeout(Duration::from_secs(secs), sup.stop())
            .await
            .expect("stop() took too long");
        assert_eq!(sup.watch().borrow().state, State::Stopped);
    }

    #[tokio::test]
    async fn runs_logs_and_stops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(
            dir.path(),
            None,
            r#"echo "out: $GREETING"; echo "err line" >&2; while :; do sleep 0.1; done"#,
        );
        let log = spec.log_file.clone();
        let sup = Supervisor::start(spec);
        let status = wait_state(&sup, "running", |s| s.state == State::Running).await;
        let pid = status.pid.expect("a running process has a pid") as i32;
        assert_eq!(status.restarts, 0);
        wait_log(&log, "out: hello there\n").await;
        wait_log(&log, "err line\n").await;

        stop_within(&sup, 5).await;
        assert_eq!(sup.watch().borrow().pid, None);
        // SAFETY: signal 0 only checks existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "pid {pid} still exists after stop()");
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::ESRCH));
        // A second stop is harmless and immediate.
        stop_within(&sup, 1).await;
    }

    #[tokio::test]
    async fn builds_then_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(
            dir.path(),
            Some(r#"echo compiling; echo "$GREETING" > built.txt"#),
            "cat built.txt; sleep 30",
        );
        let log = spec.log_file.clone();
        let sup = Supervisor::start(spec);
        let mut rx = sup.watch();
        let mut seen = vec![rx.borrow_and_update().state.as_str().to_string()];
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.last().map(String::as_str) != Some("running") {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => seen.push(rx.borrow_and_update().state.as_str().to_string()),
                _ => panic!("never running; saw {seen:?}"),
            }
        }
        assert_eq!(seen, ["pending", "building", "starting", "running"]);
        let text = wait_log(&log, "hello there\n").await;
        assert!(text.contains("compiling\n"), "{text}");
        stop_within(&sup, 5).await;
    }

    #[tokio::test]
    async fn exited_process_is_restarted_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sup = Supervisor::start(spec(dir.path(), None, "echo ran; exit 3"));
        let mut rx = sup.watch();
        let mut reasons = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(2500);
        loop {
            let s = rx.borrow_and_update().clone();
            if let State::Error(why) = &s.state {
                reasons.push(why.clone());
            }
            if s.restarts >= 1 && !reasons.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("not restarted within 2.5 s; last {s:?}, reasons {reasons:?}"),
            }
        }
        assert_eq!(reasons[0], "exited with status 3; restarting in 1s");
        stop_within(&sup, 5).await;
    }

    #[tokio::test]
    async fn failed_build_is_final_and_logged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(
            dir.path(),
            Some("echo compiling; echo 'error: broken' >&2; exit 2"),
            "touch ran; sleep 30",
        );
        let log = spec.log_file.clone();
        let sup = Supervisor::start(spec);
        let status = wait_state(&sup, "an error", |s| matches!(s.state, State::Error(_))).await;
        assert_eq!(
            status.state,
            State::Error("build failed: exit status 2".to_string())
        );
        // Flushed before the state was published: no waiting needed.
        let text = tokio::fs::read_to_string(&log).await.expect("log");
        assert!(
            text.contains("compiling\n") && text.contains("error: broken\n"),
            "{text}"
        );

        // No run, no restart loop.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !dir.path().join("ran").exists(),
            "the run command ran after a failed build"
        );
        let now = sup.watch().borrow().clone();
        assert_eq!(
            (now.state.as_str(), now.restarts, now.pid),
            ("error", 0, None)
        );
        stop_within(&sup, 1).await;
    }

    #[tokio::test]
    async fn stop_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sup = Supervisor::start(spec(
            dir.path(),
            None,
            "sleep 300 & echo $! > child.pid; while :; do sleep 0.1; done",
        ));
        wait_state(&sup, "running", |s| s.state == State::Running).await;
        let pid_file = dir.path().join("child.pid");
        let child: i32 = tokio::fs::read_to_string(&pid_file)
            .await
            .expect("child.pid")
            .trim()
            .parse()
            .expect("a pid");
        assert!(
            !not_running(child),
            "the child should be running before stop()"
        );
        stop_within(&sup, 5).await;
        assert!(
            not_running(child),
            "child {child} of the service survived stop()"
        );
    }

    #[tokio::test]
    async fn stop_during_build_kills_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sup = Supervisor::start(spec(
            dir.path(),
            Some("echo $$ > build.pid; sleep 300"),
            "touch ran",
        ));
        wait_state(&sup, "building", |s| s.state == State::Building).await;
        let pid_file = dir.path().join("build.pid");
        let deadline = Instant::now() + Duration::from_secs(3);
        while !pid_file.exists() {
            assert!(Instant::now() < deadline, "the build never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_within(&sup, 5).await;
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .expect("pid")
            .trim()
            .parse()
            .expect("a pid");
        assert!(not_running(pid), "the build survived stop()");
        assert!(!dir.path().join("ran").exists());
    }

    #[tokio::test]
    async fn drop_kills_the_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sup = Supervisor::start(spec(dir.path(), None, "while :; do sleep 0.1; done"));
        let pid = wait_state(&sup, "running", |s| s.state == State::Running)
            .await
            .pid
            .expect("pid") as i32;
        drop(sup);
        let deadline = Instant::now() + Duration::from_secs(3);
        while !not_running(pid) {
            assert!(
                Instant::now() < deadline,
                "pid {pid} survived dropping the handle"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn tail_reads_what_the_service_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = spec(
            dir.path(),
            None,
            "for i in 1 2 3 4 5; do echo line$i; done; sleep 30",
        );
        let log = spec.log_file.clone();
        let sup = Supervisor::start(spec);
        wait_log(&log, "line5\n").await;
        assert_eq!(logs::tail(&log, 2).await.expect("tail"), ["line4", "line5"]);
        stop_within(&sup, 5).await;
    }

    #[test]
    fn cargo_bin_names() {
        let name = |toml: &str| cargo_bin_name(toml).map_err(|e| e.to_string());
        assert_eq!(
            name("[package]\nname = \"hello-svc\"\nversion = \"0.1.0\"\n").as_deref(),
            Ok("hello-svc")
        );
        assert_eq!(
            name(
                "[package]\nname = \"pkg\"\n\n[[bin]]\nname = \"server\"\npath = \"src/main.rs\"\n"
            )
            .as_deref(),
            Ok("server")
        );
        assert_eq!(
            name("[package]\nname = \"pkg\"\n[[bin]]\nname = \"tool\"\n[[bin]]\nname = \"pkg\"\n")
                .as_deref(),
            Ok("pkg")
        );
        assert_eq!(name("[[bin]]\nname = \"only\"\n").as_deref(), Ok("only"));

        let ambiguous =
            name("[package]\nname = \"pkg\"\n[[bin]]\nname = \"a\"\n[[bin]]\nname = \"b\"\n")
                .unwrap_err();
        assert!(
            ambiguous.contains("several [[bin]] targets (a, b)"),
            "{ambiguous}"
        );
        let workspace = name("[workspace]\nmembers = [\"a\"]\n").unwrap_err();
        assert!(workspace.contains("no [package] name"), "{workspace}");
        assert!(
            name("[package]\nname = \"pkg\"\n[[bin]]\npath = \"x.rs\"\n")
                .unwrap_err()
                .contains("no name")
        );
        assert!(name("[package\nname = ")
            .unwrap_err()
            .contains("not valid TOML"));
    }
}
