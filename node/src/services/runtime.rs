//! The Runtime service: `micro run`, `status`, `logs`, `kill`, `update`.
//!
//! What should run is replicated: `runtime/<ns>/<name>/spec` holds the spec
//! (source, version, env, command, owning node, build id) and
//! `runtime/<ns>/<name>/status` the state the owning node reports as its
//! supervisor changes it, so `micro status` reads the same from any node.
//! The source itself stays on the owning node under `<data>/runtime/src`,
//! with logs under `<data>/runtime/logs`; a node restarts the services it
//! owns when it starts.
//!
//! Must never: run a service's build or process on the async runtime's
//! threads (the supervisor owns them), or unpack an upload outside its
//! folder.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_proto::runtime::runtime_server::Runtime;
use micro_proto::runtime::{
    CreateRequest, CreateResponse, DeleteRequest, DeleteResponse, LogRecord, LogsRequest,
    ReadRequest, ReadResponse, Service, UpdateRequest, UpdateResponse,
};
use micro_raft::{now_millis, Cond, Op, Replica, Txn};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::auth::Claims;
use crate::auth::{caller, require_account};
use crate::cluster::Cluster;
use crate::grpc::{barrier, check_name, namespace, status};
use crate::paths;
use crate::runtime::logs;
use crate::runtime::supervisor::{self, Build, Spec as ProcSpec, State, Supervisor};
use crate::services::auth::AuthStore;
use crate::services::registry;
use crate::target::HOP_HEADER;
use micro_proto::runtime::runtime_client::RuntimeClient;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

/// The scope that lets an account that is not an admin run code.
pub const RUNTIME_SCOPE: &str = "runtime";

/// The caller, who must be logged in and may run code in `ns`: an admin of
/// it or an account holding the `runtime` scope. The public rules never
/// suffice: running code is a right of its own.
fn require_runner<'a>(caller: &'a Option<Claims>, ns: &str) -> Result<&'a Claims, Status> {
    let c = require_account(caller, ns)?;
    if c.is_admin_in(ns) || c.scopes.iter().any(|s| s == RUNTIME_SCOPE) {
        Ok(c)
    } else {
        Err(Status::permission_denied(format!(
            "account {} may not run services in namespace {ns}: that needs the {RUNTIME_SCOPE} scope or an admin",
            c.sub
        )))
    }
}

/// Only the account that ran a service, or an admin of its namespace, may
/// update or kill it or read its logs.
fn require_owner(c: &Claims, ns: &str, spec: &Spec) -> Result<(), Status> {
    let owns = !spec.issuer.is_empty() && c.sub == spec.owner && c.iss == spec.issuer;
    if owns || c.is_admin_in(ns) {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "service {} belongs to account {}: only it or an admin of namespace {ns} may do this",
            spec.name, spec.owner
        )))
    }
}

/// Largest upload kept in the replicated state (so any node can build it
/// when its own node is lost); a larger one stays on the node it was sent
/// to. Eight such entries (a Raft RPC's most) stay well under the peer
/// message limit.
const MAX_REPLICATED_SOURCE: usize = 4 * 1024 * 1024;
/// How often a node brings what it runs in line with the specs, and the
/// leader looks for services to move.
const RECONCILE_EVERY: Duration = Duration::from_secs(2);

/// Largest unpacked upload.
const MAX_UNPACKED: u64 = 512 * 1024 * 1024;
/// Default number of log lines.
const DEFAULT_LINES: usize = 15;
/// How long an update waits for its new version's instance to register
/// once its process runs, before it gives up and keeps the old one.
const REGISTER_WITHIN: Duration = Duration::from_secs(30);

/// How the runtime builds Cargo projects.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// One target dir for every service, so dependencies compile once.
    pub target_dir: PathBuf,
    /// `cargo build --release` (true) or a debug build.
    pub release: bool,
    /// The certificate the gRPC endpoint serves when it serves TLS: services
    /// get its path as `MICRO_PROXY_CA` and trust exactly it.
    pub proxy_cert: Option<PathBuf>,
    /// How long gossip must hold a node down before the leader starts its
    /// services elsewhere.
    pub reschedule_after: Duration,
    /// Build the framework's dependencies into the target dir when the node
    /// starts, so that a first service compiles only its own crate.
    pub warm_up: bool,
}

/// What should run, as replicated.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Spec {
    name: String,
    version: String,
    source: String,
    env: Vec<String>,
    command: String,
    /// The id of the account that ran it ...
    owner: String,
    /// ... and that account's namespace (empty in specs from before
    /// accounts: those only admins manage).
    #[serde(default)]
    issuer: String,
    node: u64,
    build: String,
    updated: u64,
    /// The folder of this version's source under `versions/<ns>/<name>/`;
    /// empty in specs from before versions (their source is `src/<ns>/<name>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    dir: String,
}

/// How it is doing, as the owning node reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Reported {
    status: String,
    error: String,
    restarts: u32,
}

/// `micro.toml`, for services that are not Cargo projects.
#[derive(Debug, Deserialize)]
struct MicroToml {
    build: Option<String>,
    run: String,
}

use crate::keys::runtime::{spec as spec_key, status as status_key};

/// The account (id, namespace) that ran service `name` in `ns` through the
/// runtime, if it runs there under an account: the registry lets the
/// service's own account act for it.
pub fn runner_of(replica: &Replica, ns: &str, name: &str) -> Option<(String, String)> {
    let rec = replica
        .reader()
        .get(&spec_key(ns, name), now_millis())
        .ok()??;
    let spec: Spec = serde_json::from_slice(&rec.value).ok()?;
    (!spec.issuer.is_empty()).then_some((spec.owner, spec.issuer))
}

fn is_git(source: &str) -> bool {
    source.contains("://") || source.starts_with("git@")
}

/// Splits `url@ref`: a ref follows an `@` in the last path segment, so
/// `https://user@host/x` has none and `https://host/x@v1` has `v1`.
fn split_ref(source: &str) -> (&str, Option<&str>) {
    let last_segment = source.rfind('/').map(|i| i + 1).unwrap_or(0);
    match source[last_segment..].rfind('@') {
        Some(i) => {
            let at = last_segment + i;
            (&source[..at], Some(&source[at + 1..]))
        }
        None => (source, None),
    }
}

/// The services a node supervises.
pub struct Manager {
    replica: Replica,
    accounts: AuthStore,
    node_id: u64,
    proxy: String,
    root: PathBuf,
    opts: RuntimeOptions,
    running: Mutex<HashMap<String, Adopted>>,
    /// Services a call is creating, updating or killing here: the
    /// scheduler leaves them alone meanwhile.
    busy: Mutex<HashSet<String>>,
    /// The node is shutting down: the scheduler starts nothing more.
    stopping: std::sync::atomic::AtomicBool,
}

/// Marks a service busy until dropped.
struct Busy<'a>(&'a Manager, String);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// The supervisor of a service on this node, and whether it still is: one
/// replaced by an update stops reporting at once, so its last "stopped"
/// cannot overwrite its successor's "running".
struct Adopted {
    sup: Supervisor,
    current: Arc<std::sync::atomic::AtomicBool>,
}

impl Manager {
    pub fn new(
        replica: Replica,
        node_id: u64,
        proxy: String,
        root: PathBuf,
        accounts: AuthStore,
        opts: RuntimeOptions,
    ) -> Arc<Manager> {
        Arc::new(Manager {
            replica,
            accounts,
            node_id,
            proxy,
            root,
            opts,
            running: Mutex::new(HashMap::new()),
            busy: Mutex::new(HashSet::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Where specs from before versions kept their source.
    fn legacy_src_dir(&self, ns: &str, name: &str) -> Result<PathBuf, Status> {
        paths::under(&self.root, &["src", ns, name])
    }

    /// The folder every version of a service's source is fetched into, one
    /// folder per fetch: an update builds beside the version that serves.
    fn versions_dir(&self, ns: &str, name: &str) -> Result<PathBuf, Status> {
        paths::under(&self.root, &["versions", ns, name])
    }

    /// The source folder of `spec`'s version.
    fn src_dir(&self, ns: &str, spec: &Spec) -> Result<PathBuf, Status> {
        if spec.dir.is_empty() {
            self.legacy_src_dir(ns, &spec.name)
        } else {
            paths::under(&self.root, &["versions", ns, &spec.name, &spec.dir])
        }
    }

    /// Where the output of a service's builds is kept
    /// (`micro logs NAME --build`).
    fn build_log_file(&self, ns: &str, name: &str) -> Result<PathBuf, Status> {
        paths::under(&self.root, &["logs", ns, &format!("{name}.build.log")])
    }

    /// Where the pid of a service's running process is noted, so that a
    /// node killed without a chance to stop its services can stop the
    /// leftovers when it starts again.
    fn pid_file(&self, ns: &str, name: &str) -> Result<PathBuf, Status> {
        paths::under(&self.root, &["pids", ns, name])
    }

    /// The pid of an update's new version while it runs beside the old
    /// one, so that a node killed before the swap stops it too.
    fn next_pid_file(&self, ns: &str, name: &str) -> Result<PathBuf, Status> {
        paths::under(&self.root, &["pids-next", ns, name])
    }

    fn log_file(&self, ns: &str, name: &str) -> Result<PathBuf, Status> {
        paths::under(&self.root, &["logs", ns, &format!("{name}.log")])
    }

    fn spec(&self, ns: &str, name: &str) -> Result<Option<(Spec, u64)>, Status> {
        match self
            .replica
            .reader()
            .get(&spec_key(ns, name), now_millis())
            .map_err(status)?
        {
            Some(rec) => {
                let spec = serde_json::from_slice(&rec.value)
                    .map_err(|e| Status::internal(format!("corrupt spec: {e}")))?;
                Ok(Some((spec, rec.version)))
            }
            None => Ok(None),
        }
    }

    /// Unpacks a gzipped tar into `dir` (created afresh). Only files and
    /// folders are taken; a link, a special file or a path that would land
    /// outside `dir` (absolute, `..`) refuses the whole upload.
    async fn unpack(upload: Vec<u8>, dir: PathBuf) -> Result<(), Status> {
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(upload.as_slice()));
            let mut total = 0u64;
            for entry in archive
                .entries()
                .map_err(|e| format!("not a gzipped tar: {e}"))?
            {
                let mut entry = entry.map_err(|e| format!("corrupt upload: {e}"))?;
                total += entry.header().size().unwrap_or(0);
                if total > MAX_UNPACKED {
                    return Err("the upload unpacks to more than 512 MiB".into());
                }
                check_entry(&entry)?;
                if !entry
                    .unpack_in(&dir)
                    .map_err(|e| format!("cannot unpack: {e}"))?
                {
                    return Err("the upload has a path outside its folder".into());
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::invalid_argument)
    }

    /// Clones a git source into `dir`; returns the short commit id.
    async fn clone(source: &str, dir: &Path) -> Result<String, Status> {
        let (url, reference) = split_ref(source);
        if url.starts_with('-') || reference.is_some_and(|r| r.is_empty() || r.starts_with('-')) {
            return Err(Status::invalid_argument(format!(
                "{source} is not a git URL with an optional @branch or @commit"
            )));
        }
        let _ = tokio::fs::remove_dir_all(dir).await;
        if let Some(parent) = dir.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        let git = |args: Vec<&str>| {
            let mut cmd = tokio::process::Command::new("git");
            // git gets what fetching needs, not the node's secrets.
            cmd.env_clear()
                .envs(supervisor::tool_env())
                .args(args)
                .env("GIT_TERMINAL_PROMPT", "0")
                .kill_on_drop(true);
            cmd
        };
        let dir_s = dir.to_string_lossy().to_string();
        let out = git(vec!["clone", "--quiet", "--", url, &dir_s])
            .output()
            .await
            .map_err(|e| Status::failed_precondition(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            return Err(Status::invalid_argument(format!(
                "cannot clone {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if let Some(r) = reference {
            let out = git(vec!["-C", &dir_s, "checkout", "--quiet", r])
                .output()
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
            if !out.status.success() {
                return Err(Status::invalid_argument(format!(
                    "cannot check out {r}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let out = git(vec!["-C", &dir_s, "rev-parse", "--short", "HEAD"])
            .output()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The embedded framework's `micro` crate, unpacked under
    /// `<target dir>/micro-framework/` (once per framework version): beside
    /// the build cache it belongs to, so that nodes sharing a target dir
    /// share its compiled framework too.
    async fn framework(&self) -> Option<PathBuf> {
        let root = self.opts.target_dir.join("micro-framework");
        match tokio::task::spawn_blocking(move || crate::framework::unpack(&root)).await {
            Ok(Ok(dir)) => Some(dir),
            Ok(Err(e)) => {
                tracing::warn!("cannot unpack the embedded framework: {e}");
                None
            }
            Err(e) => {
                tracing::warn!("cannot unpack the embedded framework: {e}");
                None
            }
        }
    }

    /// How to build and run the source in `dir`.
    async fn build_kind(&self, dir: &Path, command: &str, name: &str) -> Result<Build, Status> {
        if !command.is_empty() {
            return Ok(Build::Command {
                build: None,
                run: command.to_string(),
            });
        }
        if let Ok(text) = tokio::fs::read_to_string(dir.join("micro.toml")).await {
            let m: MicroToml = toml::from_str(&text)
                .map_err(|e| Status::invalid_argument(format!("invalid micro.toml: {e}")))?;
            return Ok(Build::Command {
                build: m.build,
                run: m.run,
            });
        }
        if let Ok(manifest) = tokio::fs::read_to_string(dir.join("Cargo.toml")).await {
            // Only a project of the framework gets it patched in.
            let framework = if crate::framework::depends_on_micro(&manifest) {
                self.framework().await
            } else {
                None
            };
            return Ok(Build::Cargo {
                target_dir: self.opts.target_dir.clone(),
                release: self.opts.release,
                framework,
            });
        }
        Err(Status::invalid_argument(format!(
            "cannot tell how to run {name}: it has no Cargo.toml or micro.toml; give a --command"
        )))
    }

    /// Starts supervising `spec` (stopping a previous process of it first).
    async fn start(self: &Arc<Self>, ns: &str, spec: &Spec) -> Result<(), Status> {
        let sup = self.launch(ns, spec, false).await?;
        self.adopt(ns, spec, sup).await;
        Ok(())
    }

    /// A supervisor of `spec`'s version, not yet the service's: it builds
    /// (and, unless `build_only`, runs) beside whatever runs now, and
    /// reports nothing until [`Manager::adopt`] makes it the service's.
    async fn launch(&self, ns: &str, spec: &Spec, build_only: bool) -> Result<Supervisor, Status> {
        let dir = self.src_dir(ns, spec)?;
        let build = self.build_kind(&dir, &spec.command, &spec.name).await?;
        let log_file = self.log_file(ns, &spec.name)?;
        if let Some(parent) = log_file.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        // Only a run needs the service's account; a build gets no secret.
        let secret = if build_only {
            String::new()
        } else {
            self.service_account(ns, &spec.name).await?
        };
        // The supervisor starts from an empty environment: the service gets
        // what its `--env-var`s name, then what the runtime gives it (last,
        // so it wins: `MICRO_SERVICE_NAME` is how a leftover process is
        // recognised after a crash), and nothing of the node's own.
        let mut env: Vec<(String, String)> = spec
            .env
            .iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend([
            ("MICRO_AUTH_ID".to_string(), spec.name.clone()),
            ("MICRO_AUTH_SECRET".to_string(), secret),
            ("MICRO_PROXY_ADDRESS".to_string(), self.proxy.clone()),
            ("MICRO_NAMESPACE".to_string(), ns.to_string()),
            ("MICRO_SERVICE_NAME".to_string(), spec.name.clone()),
            ("MICRO_SERVICE_VERSION".to_string(), spec.version.clone()),
        ]);
        if let Some(cert) = &self.opts.proxy_cert {
            env.push(("MICRO_PROXY_CA".to_string(), cert.display().to_string()));
        }
        Ok(Supervisor::start(ProcSpec {
            name: spec.name.clone(),
            dir,
            build,
            env,
            log_file,
            build_log: Some(self.build_log_file(ns, &spec.name)?),
            build_only,
        }))
    }

    /// Makes `sup` the one supervisor of `spec`'s service: the previous one
    /// is stopped, and `sup`'s states are reported through the replicated
    /// state from now on.
    async fn adopt(self: &Arc<Self>, ns: &str, spec: &Spec, sup: Supervisor) {
        let pid_file = match self.pid_file(ns, &spec.name) {
            Ok(f) => f,
            Err(e) => {
                // Names were checked before anything was launched.
                tracing::warn!("no pid file for {}: {}", spec.name, e.message());
                return;
            }
        };
        let mut watch = sup.watch();
        let current = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let previous = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                format!("{ns}/{}", spec.name),
                Adopted {
                    sup,
                    current: current.clone(),
                },
            );
        if let Some(old) = previous {
            old.current
                .store(false, std::sync::atomic::Ordering::SeqCst);
            old.sup.stop().await;
        }
        // Adopted while the node shuts down (after `shutdown` took the
        // others): it stops at once too.
        if self.is_stopping() {
            let late = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&format!("{ns}/{}", spec.name));
            if let Some(late) = late {
                late.sup.stop().await;
            }
            return;
        }
        // Report every change of state through the replicated state.
        let (me, ns, name) = (self.clone(), ns.to_string(), spec.name.clone());
        tokio::spawn(async move {
            loop {
                let s = watch.borrow_and_update().clone();
                if !current.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let (status, error) = match &s.state {
                    State::Error(e) => ("error".to_string(), e.clone()),
                    other => (other.as_str().to_string(), String::new()),
                };
                let rep = Reported {
                    status,
                    error,
                    restarts: s.restarts,
                };
                if let Ok(raw) = serde_json::to_vec(&rep) {
                    // Only while the spec still exists: a kill must not be
                    // undone by a late report.
                    let txn = Txn::put(status_key(&ns, &name), raw, None)
                        .when(Cond::Exists(spec_key(&ns, &name)));
                    if let Err(e) = me.replica.write(txn).await {
                        tracing::warn!("cannot report the status of {name}: {e}");
                    }
                }
                if let Some(pid) = s.pid {
                    if let Some(dir) = pid_file.parent() {
                        let _ = tokio::fs::create_dir_all(dir).await;
                    }
                    let _ = tokio::fs::write(&pid_file, pid.to_string()).await;
                }
                if matches!(s.state, State::Stopped) || watch.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Builds and starts `next`, a new version of a service, beside the
    /// one that serves, and hands back its supervisor once the new
    /// version runs and (if the service had registered instances) one of
    /// its instances has registered. Otherwise it is stopped, and the
    /// error says why in words that follow "Update failed: ".
    async fn try_version(&self, ns: &str, next: &Spec) -> Result<Supervisor, String> {
        let name = &next.name;
        let failed = |e: Status| e.message().to_string();
        // Built first without its account: the old version keeps its
        // secret for as long as the build takes.
        {
            let builder = self.launch(ns, next, true).await.map_err(failed)?;
            let mut watch = builder.watch();
            let end = watch
                .wait_for(|s| matches!(s.state, State::Built | State::Error(_) | State::Stopped))
                .await
                .map(|s| s.state.clone());
            builder.stop().await;
            match end {
                Ok(State::Built) => {}
                Ok(State::Error(e)) if e.starts_with("build failed") => {
                    return Err(format!("build error (see `micro logs {name} --build`)"))
                }
                Ok(State::Error(e)) => return Err(e),
                _ => return Err("the build was stopped".to_string()),
            }
        }
        let before = registry::addresses(&self.replica, ns, name).map_err(failed)?;
        let sup = self.launch(ns, next, false).await.map_err(failed)?;
        let mut watch = sup.watch();
        let outcome = async {
            // Noted as soon as it has a pid: a node killed from then on
            // stops it when it starts again.
            let started = watch
                .wait_for(|s| {
                    s.pid.is_some() || matches!(s.state, State::Error(_) | State::Stopped)
                })
                .await
                .map(|s| s.pid);
            if let (Ok(Some(pid)), Ok(file)) = (started, self.next_pid_file(ns, name)) {
                if let Some(dir) = file.parent() {
                    let _ = tokio::fs::create_dir_all(dir).await;
                }
                let _ = tokio::fs::write(&file, pid.to_string()).await;
            }
            let up = watch
                .wait_for(|s| matches!(s.state, State::Running | State::Error(_) | State::Stopped))
                .await
                .map(|s| s.state.clone());
            match up {
                Ok(State::Running) => {}
                Ok(State::Error(e)) if e.starts_with("build failed") => {
                    return Err(format!("build error (see `micro logs {name} --build`)"))
                }
                Ok(State::Error(e)) => return Err(exited(&e)),
                _ => return Err("the new version was stopped".to_string()),
            }
            if before.is_empty() {
                return Ok(());
            }
            // The new instance must be reachable before the old one goes:
            // it counts once it registered an address the old did not have.
            let deadline = tokio::time::Instant::now() + REGISTER_WITHIN;
            loop {
                let now = registry::addresses(&self.replica, ns, name).map_err(failed)?;
                if now.iter().any(|a| !before.contains(a)) {
                    return Ok(());
                }
                if let State::Error(e) = &watch.borrow().state {
                    return Err(exited(e));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "the new version did not register within {} s",
                        REGISTER_WITHIN.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        .await;
        match outcome {
            Ok(()) => Ok(sup),
            Err(e) => {
                sup.stop().await;
                self.forget_next(ns, name).await;
                Err(e)
            }
        }
    }

    /// Drops the note of an update's new version (swapped in or stopped).
    async fn forget_next(&self, ns: &str, name: &str) {
        if let Ok(file) = self.next_pid_file(ns, name) {
            let _ = tokio::fs::remove_file(file).await;
        }
    }

    /// The service's own account (type service, scope `service`), with a
    /// fresh secret each time the service starts: the secret is handed to
    /// the process and kept nowhere else.
    async fn service_account(&self, ns: &str, name: &str) -> Result<String, Status> {
        let secret = crate::auth::random_token(24);
        let acc = crate::auth::StoredAccount {
            id: name.to_string(),
            name: name.to_string(),
            kind: "service".into(),
            issuer: ns.to_string(),
            scopes: vec!["service".into()],
            metadata: HashMap::new(),
            secret_hash: String::new(),
        };
        if let Some(existing) = self.accounts.account(ns, name)? {
            if existing.kind != "service" {
                return Err(Status::already_exists(format!(
                    "an account named {name} exists and is not a service's; run the service under another --name"
                )));
            }
        }
        match self.accounts.set_secret(ns, name, &secret).await {
            Ok(()) => Ok(secret),
            Err(s) if s.code() == tonic::Code::NotFound => {
                let hashed = tokio::task::spawn_blocking({
                    let secret = secret.clone();
                    move || crate::auth::hash_secret(&secret)
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(Status::internal)?;
                self.accounts
                    .create(crate::auth::StoredAccount {
                        secret_hash: hashed,
                        ..acc
                    })
                    .await?;
                Ok(secret)
            }
            Err(s) => Err(s),
        }
    }

    async fn stop(&self, ns: &str, name: &str) {
        let sup = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&format!("{ns}/{name}"));
        if let Some(a) = sup {
            a.sup.stop().await;
        }
    }

    /// When the node starts (and `warm_up` is on and `cargo` is on the
    /// `PATH`): builds a project of the `micro new` template in the
    /// background, with the flags every service build gets, so the shared
    /// target dir holds the framework's whole dependency tree before the
    /// first `micro run`. Its output goes to `logs/warm-up.log`. The
    /// returned supervisor ends the build when dropped (node shutdown).
    pub async fn warm_up(&self) -> Option<Supervisor> {
        if !self.opts.warm_up || !on_path("cargo") {
            return None;
        }
        let dir = paths::under(&self.root, &["warm-up"]).ok()?;
        let log_file = paths::under(&self.root, &["logs", "warm-up.log"]).ok()?;
        let files = crate::framework::project("micro_warm_up", None);
        let written = tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || -> std::io::Result<()> {
                for (rel, text) in files {
                    let path = dir.join(rel);
                    if let Some(parent) = path.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::write(path, text)?;
                }
                // Only the first time: cargo keeps it current afterwards.
                let lock = dir.join("Cargo.lock");
                if !lock.exists() {
                    std::fs::write(lock, crate::framework::lock()?)?;
                }
                Ok(())
            }
        })
        .await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("cannot write the warm-up project in {}", dir.display());
            return None;
        }
        tracing::info!(
            "warming up the build cache in {} (log: {})",
            self.opts.target_dir.display(),
            log_file.display()
        );
        Some(Supervisor::start(ProcSpec {
            name: "warm-up".into(),
            dir,
            build: Build::Cargo {
                target_dir: self.opts.target_dir.clone(),
                release: self.opts.release,
                framework: self.framework().await,
            },
            env: Vec::new(),
            log_file,
            build_log: None,
            build_only: true,
        }))
    }

    /// Marks `ns/name` busy; `None` when a call already works on it.
    fn claim(&self, ns: &str, name: &str) -> Option<Busy<'_>> {
        let key = format!("{ns}/{name}");
        let fresh = self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        fresh.then(|| Busy(self, key))
    }

    /// Every spec in the replica: namespace, spec, record version.
    fn all_specs(&self) -> Vec<(String, Spec, u64)> {
        let mut specs = Vec::new();
        for item in self
            .replica
            .reader()
            .scan(crate::keys::runtime::ALL, now_millis(), false)
        {
            let Ok((key, rec)) = item else { continue };
            let key = String::from_utf8_lossy(&key).to_string();
            let parts: Vec<&str> = key.split('/').collect();
            if parts.len() != 4 || parts[3] != "spec" {
                continue;
            }
            if let Ok(spec) = serde_json::from_slice::<Spec>(&rec.value) {
                specs.push((parts[1].to_string(), spec, rec.version));
            }
        }
        specs
    }

    /// Runs for the node's life: every [`RECONCILE_EVERY`], brings what
    /// this node runs in line with the specs (see [`Manager::reconcile`])
    /// and, on the leader, moves the services of nodes held down (see
    /// [`Manager::reschedule`]). Its first round stops what a killed node
    /// left running.
    pub fn spawn_scheduler(self: &Arc<Self>, cluster: Arc<Cluster>) {
        let me = self.clone();
        tokio::spawn(async move {
            for (ns, spec, _) in me.all_specs() {
                for file in [
                    me.pid_file(&ns, &spec.name),
                    me.next_pid_file(&ns, &spec.name),
                ]
                .into_iter()
                .flatten()
                {
                    kill_leftover(&file, &spec.name).await;
                }
            }
            let mut down_since = HashMap::new();
            let mut failed = HashSet::new();
            while !me.is_stopping() {
                me.reconcile(&mut failed).await;
                if me.replica.leader() == Some(me.node_id) {
                    me.reschedule(&cluster, &mut down_since).await;
                } else {
                    down_since.clear();
                }
                tokio::time::sleep(RECONCILE_EVERY).await;
            }
        });
    }

    /// Starts the services this node owns and does not run (after a
    /// restart, or moved here) and stops those it runs and no longer owns
    /// (moved away while it was down, or killed meanwhile). A spec whose
    /// start failed is not tried again until it changes (`failed`).
    async fn reconcile(self: &Arc<Self>, failed: &mut HashSet<(String, u64)>) {
        let specs = self.all_specs();
        if self.is_stopping() {
            return;
        }
        let mine: HashMap<String, &Spec> = specs
            .iter()
            .filter(|(_, s, _)| s.node == self.node_id)
            .map(|(ns, s, _)| (format!("{ns}/{}", s.name), s))
            .collect();
        let stale: Vec<(String, Adopted)> = {
            let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<String> = running
                .keys()
                .filter(|k| !mine.contains_key(*k) && !busy.contains(*k))
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|k| running.remove(&k).map(|a| (k, a)))
                .collect()
        };
        for (key, a) in stale {
            tracing::info!("stopping {key}: it no longer runs on this node");
            // Its status is its new node's to report now.
            a.current.store(false, std::sync::atomic::Ordering::SeqCst);
            a.sup.stop().await;
        }
        for (ns, spec, version) in &specs {
            let key = format!("{ns}/{}", spec.name);
            if spec.node != self.node_id || failed.contains(&(key.clone(), *version)) {
                continue;
            }
            let Some(_busy) = self.claim(ns, &spec.name) else {
                continue;
            };
            if self.is_stopping() {
                return;
            }
            let runs = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(&key);
            if runs {
                continue;
            }
            tracing::info!("starting service {} in {ns}", spec.name);
            if let Err(e) = self.materialize(ns, spec).await {
                tracing::warn!("cannot start {}: {}", spec.name, e.message());
                failed.insert((key, *version));
                continue;
            }
            if let Err(e) = self.start(ns, spec).await {
                tracing::warn!("cannot start {}: {}", spec.name, e.message());
                failed.insert((key, *version));
            }
        }
    }

    /// Makes sure `spec`'s source is in its folder on this node: it is
    /// when the node fetched it itself; otherwise it comes from the
    /// replicated upload, or from git again.
    async fn materialize(&self, ns: &str, spec: &Spec) -> Result<(), Status> {
        let dir = self.src_dir(ns, spec)?;
        if tokio::fs::metadata(&dir).await.is_ok() {
            return Ok(());
        }
        let upload = self
            .replica
            .reader()
            .get(&crate::keys::runtime::source(ns, &spec.name), now_millis())
            .map_err(status)?;
        match upload {
            Some(rec) => Self::unpack(rec.value, dir).await,
            None if is_git(&spec.source) => Self::clone(&spec.source, &dir).await.map(|_| ()),
            None => Err(Status::failed_precondition(format!(
                "the source of {} was not replicated (too large) and is not on this node",
                spec.name
            ))),
        }
    }

    /// On the leader: the services of nodes gossip has held down for
    /// longer than `reschedule_after` (or that are no longer members) are
    /// given to the live node that runs the fewest, with status `moving`
    /// until their new node reports. `down_since` remembers since when
    /// each node has been seen down.
    async fn reschedule(&self, cluster: &Cluster, down_since: &mut HashMap<u64, Instant>) {
        let (voters, learners) = cluster.membership();
        let members: Vec<u64> = voters.union(&learners).copied().collect();
        let now = Instant::now();
        down_since.retain(|id, _| members.contains(id));
        for id in &members {
            if cluster.is_down(*id) {
                down_since.entry(*id).or_insert(now);
            } else {
                down_since.remove(id);
            }
        }
        let lost = |node: u64| {
            !members.contains(&node)
                || down_since
                    .get(&node)
                    .is_some_and(|t| now.duration_since(*t) >= self.opts.reschedule_after)
        };
        let specs = self.all_specs();
        if !specs.iter().any(|(_, s, _)| lost(s.node)) {
            return;
        }
        let mut load: HashMap<u64, usize> = members
            .iter()
            .filter(|id| !down_since.contains_key(id))
            .map(|id| (*id, 0))
            .collect();
        for (_, s, _) in &specs {
            if let Some(n) = load.get_mut(&s.node) {
                *n += 1;
            }
        }
        for (ns, spec, version) in specs {
            if !lost(spec.node) {
                continue;
            }
            // The least loaded live node (lowest id among equals).
            let Some((&target, _)) = load.iter().min_by_key(|(id, n)| (**n, **id)) else {
                tracing::warn!("no live node to move {} to", spec.name);
                return;
            };
            let from = spec.node;
            let moved = Spec {
                node: target,
                updated: now_millis(),
                ..spec
            };
            let Ok(raw) = serde_json::to_vec(&moved) else {
                continue;
            };
            let moving = serde_json::to_vec(&Reported {
                status: "moving".into(),
                ..Default::default()
            })
            .unwrap_or_default();
            let txn = Txn::ops(vec![
                Op::Put {
                    key: spec_key(&ns, &moved.name),
                    value: raw,
                    expires_at: None,
                },
                Op::Put {
                    key: status_key(&ns, &moved.name),
                    value: moving,
                    expires_at: None,
                },
            ])
            .when(Cond::VersionEq(spec_key(&ns, &moved.name), version));
            match self.replica.write(txn).await {
                Ok(r) if r.succeeded => {
                    tracing::info!(
                        "moving service {} in {ns} from node {from} (down) to node {target}",
                        moved.name
                    );
                    *load.entry(target).or_default() += 1;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot move {}: {e}", moved.name),
            }
        }
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops every process (node shutdown); specs stay, to restart later.
    pub async fn shutdown(&self) {
        // First, so the scheduler starts nothing meanwhile.
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let all: Vec<Supervisor> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, a)| a.sup)
            .collect();
        for s in all {
            s.stop().await;
        }
    }

    /// Fetches the source (upload or git) into a new version folder of the
    /// service; returns the build id and the folder's name (for
    /// [`Spec::dir`]). A failed fetch leaves no folder behind.
    async fn fetch(
        &self,
        ns: &str,
        name: &str,
        source: &str,
        upload: Vec<u8>,
    ) -> Result<(String, String), Status> {
        let folder = format!("{:x}-{:08x}", now_millis(), rand::random::<u32>());
        let dir = paths::under(&self.versions_dir(ns, name)?, &[&folder])?;
        let fetched = if !upload.is_empty() {
            let id = hex8(&Sha256::digest(&upload));
            Self::unpack(upload, dir.clone()).await.map(|()| id)
        } else if is_git(source) {
            Self::clone(source, &dir).await
        } else {
            Err(Status::invalid_argument(format!(
                "{source} is neither an uploaded folder nor a git URL"
            )))
        };
        match fetched {
            Ok(id) => Ok((id, folder)),
            Err(e) => {
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(e)
            }
        }
    }

    /// What an update that failed left: "greeter 4b6d7534 is still
    /// running" when its supervisor here runs it.
    fn left_as_it_was(&self, ns: &str, spec: &Spec) -> String {
        let state = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&format!("{ns}/{}", spec.name))
            .map(|a| a.sup.watch().borrow().state.clone());
        match state {
            Some(State::Running) => format!("{} {} is still running", spec.name, spec.build),
            Some(other) => format!(
                "{} {} is left as it was ({})",
                spec.name,
                spec.build,
                other.as_str()
            ),
            None => format!("{} {} is left as it was", spec.name, spec.build),
        }
    }

    /// Removes the source folder of a version that no longer runs.
    async fn discard(&self, ns: &str, spec: &Spec) {
        if let Ok(dir) = self.src_dir(ns, spec) {
            let _ = tokio::fs::remove_dir_all(dir).await;
        }
    }
}

/// Whether an executable named `program` is in a folder of the `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Another call is creating, updating or killing the service here.
fn busy(name: &str) -> Status {
    Status::aborted(format!(
        "service {name} is being changed by another call; try again"
    ))
}

/// The upload to keep in the replicated state beside its spec, when there
/// is one small enough.
fn replicated_source(upload: &[u8]) -> Option<Vec<u8>> {
    (!upload.is_empty() && upload.len() <= MAX_REPLICATED_SOURCE).then(|| upload.to_vec())
}

/// Writes a spec and, with it, its replicated source; a spec without one
/// (git, or too large) drops a previous version's, which would no longer
/// match it.
fn spec_txn(ns: &str, name: &str, spec: Vec<u8>, source: Option<Vec<u8>>) -> Txn {
    let source_key = crate::keys::runtime::source(ns, name);
    let source_op = match source {
        Some(value) => Op::Put {
            key: source_key,
            value,
            expires_at: None,
        },
        None => Op::Delete { key: source_key },
    };
    Txn::ops(vec![
        Op::Put {
            key: spec_key(ns, name),
            value: spec,
            expires_at: None,
        },
        source_op,
    ])
}

/// Removes everything replicated about a service: its spec, status and
/// upload.
fn forget_txn(ns: &str, name: &str) -> Txn {
    Txn::ops(vec![
        Op::DeletePrefix {
            prefix: crate::keys::runtime::service(ns, name),
        },
        Op::Delete {
            key: crate::keys::runtime::source(ns, name),
        },
    ])
}

/// "exited with status 1; restarting in 1s" as an update's failure: the
/// new version is not restarted, it is given up.
fn exited(state: &str) -> String {
    let exit = state.split(';').next().unwrap_or(state);
    format!("the new version {exit} as it started")
}

/// Kills the process group noted in `pid_file` if, and only if, its leader
/// is still this service's process (its environment names the service): a
/// pid reused by something else is left alone.
async fn kill_leftover(pid_file: &Path, name: &str) {
    let Ok(text) = tokio::fs::read_to_string(pid_file).await else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    if pid <= 1 {
        return;
    }
    let Ok(environ) = tokio::fs::read(format!("/proc/{pid}/environ")).await else {
        return;
    };
    let marker = format!("MICRO_SERVICE_NAME={name}");
    if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
        tracing::info!("stopping {name}'s process {pid}, left over from before the node restarted");
        // SAFETY: kill(2) has no memory-safety preconditions. The negative
        // pid names the group the supervisor made with this pid as leader,
        // checked above to still be this service's.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = tokio::fs::remove_file(pid_file).await;
}

/// Refuses an upload entry that is not a file or a folder. Links are
/// refused too: the CLI never packs one, and a link (to `.`, say) that later
/// entries pass through could place them outside the folder.
fn check_entry<R: std::io::Read>(entry: &tar::Entry<'_, R>) -> Result<(), String> {
    use tar::EntryType;
    match entry.header().entry_type() {
        EntryType::Regular | EntryType::Continuous | EntryType::Directory => Ok(()),
        kind => {
            let path = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let what = if kind.is_symlink() || kind.is_hard_link() {
                "a link"
            } else {
                "a special file"
            };
            Err(format!(
                "the upload holds {what} ({path}): only files and folders are taken"
            ))
        }
    }
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The gRPC face of the [`Manager`].
pub struct RuntimeService {
    manager: Arc<Manager>,
    cluster: Arc<Cluster>,
}

impl RuntimeService {
    pub fn new(manager: Arc<Manager>, cluster: Arc<Cluster>) -> Self {
        RuntimeService { manager, cluster }
    }

    /// A client of the runtime on `node`, which owns a service: calls about
    /// it are served there, with the caller's credentials (once: a call
    /// another node passed here is not passed on again).
    fn owner(&self, node: u64, md: &MetadataMap) -> Result<RuntimeClient<Channel>, Status> {
        if md.contains_key(HOP_HEADER) {
            return Err(Status::unavailable(format!(
                "the service moved to node {node} meanwhile; try again"
            )));
        }
        let addr = self.cluster.node_addr(node).ok_or_else(|| {
            Status::unavailable(format!(
                "the service runs on node {node}, which is no longer a member of the cluster"
            ))
        })?;
        if self.cluster.is_down(node) {
            return Err(Status::unavailable(format!(
                "the service runs on node {node} ({addr}), which is down"
            )));
        }
        Ok(
            RuntimeClient::new(self.cluster.peers.channel_to(node, &addr)?)
                .max_decoding_message_size(crate::target::MAX_MESSAGE)
                .max_encoding_message_size(crate::target::MAX_MESSAGE),
        )
    }
}

/// A spec and its last report as `micro status` shows them; the status is
/// `down` while gossip holds the owning node down (its last report is
/// then kept as `reported`).
fn service_of(spec: &Spec, ns: &str, rep: Option<Reported>, node_down: bool) -> Service {
    let rep = rep.unwrap_or(Reported {
        status: "pending".into(),
        ..Default::default()
    });
    let status = if node_down {
        "down".to_string()
    } else {
        rep.status.clone()
    };
    let mut metadata = HashMap::from([
        ("status".to_string(), status),
        ("node".to_string(), spec.node.to_string()),
        ("build".to_string(), spec.build.clone()),
        ("updated".to_string(), (spec.updated / 1000).to_string()),
        ("owner".to_string(), spec.owner.clone()),
        ("group".to_string(), ns.to_string()),
        ("restarts".to_string(), rep.restarts.to_string()),
    ]);
    if !rep.error.is_empty() {
        metadata.insert("error".to_string(), rep.error);
    }
    if node_down {
        metadata.insert("reported".to_string(), rep.status);
    }
    Service {
        name: spec.name.clone(),
        version: spec.version.clone(),
        source: spec.source.clone(),
        metadata,
    }
}

#[tonic::async_trait]
impl Runtime for RuntimeService {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace(&req)?;
        let caller = caller(&req);
        let runner = require_runner(&caller, &ns)?;
        let req = req.into_inner();
        let svc = req
            .service
            .ok_or_else(|| Status::invalid_argument("a service is required"))?;
        check_name("service name", &svc.name)?;
        // A name another account registered would be refused to the
        // service anyway; say so now rather than run it.
        if let Some((account, issuer)) = registry::owner_of(&self.manager.replica, &ns, &svc.name) {
            let own = account == runner.sub && issuer == runner.iss;
            if !own && !runner.is_admin_in(&ns) {
                return Err(Status::permission_denied(format!(
                    "service name {} is registered by account {account}: run it under another --name",
                    svc.name
                )));
            }
        }
        let opts = req.options.unwrap_or_default();
        for kv in &opts.env {
            let valid = kv.split_once('=').is_some_and(|(k, v)| {
                !k.is_empty()
                    && !k.starts_with(|c: char| c.is_ascii_digit())
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !v.contains('\0')
            });
            if !valid {
                return Err(Status::invalid_argument(format!(
                    "--env-var {}: expected KEY=VALUE, the key made of letters, digits and '_'",
                    kv.escape_default()
                )));
            }
        }
        let m = &self.manager;
        let _busy = m.claim(&ns, &svc.name).ok_or_else(|| busy(&svc.name))?;
        if m.spec(&ns, &svc.name)?.is_some() {
            return Err(Status::already_exists(format!(
                "service {} is already running; use micro update",
                svc.name
            )));
        }
        let source = replicated_source(&req.upload);
        let (build, dir) = m.fetch(&ns, &svc.name, &svc.source, req.upload).await?;
        let spec = Spec {
            name: svc.name.clone(),
            version: if svc.version.is_empty() {
                "latest".into()
            } else {
                svc.version
            },
            source: svc.source,
            env: opts.env,
            command: opts.command,
            // The caller's account, never the client's word.
            owner: runner.sub.clone(),
            issuer: runner.iss.clone(),
            node: m.node_id,
            build,
            updated: now_millis(),
            dir,
        };
        let raw = serde_json::to_vec(&spec).map_err(|e| Status::internal(e.to_string()))?;
        let res = m
            .replica
            .write(
                spec_txn(&ns, &spec.name, raw, source)
                    .when(Cond::Absent(spec_key(&ns, &spec.name))),
            )
            .await
            .map_err(status)?;
        if !res.succeeded {
            m.discard(&ns, &spec).await;
            return Err(Status::already_exists(format!(
                "service {} is already running",
                spec.name
            )));
        }
        if let Err(e) = m.start(&ns, &spec).await {
            let _ = m.replica.write(forget_txn(&ns, &spec.name)).await;
            return Err(e);
        }
        Ok(Response::new(CreateResponse {}))
    }

    async fn read(&self, req: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let ns = namespace(&req)?;
        let name = req.into_inner().name;
        barrier(&self.manager.replica, false).await?;
        let prefix = if name.is_empty() {
            crate::keys::runtime::namespace(&ns)
        } else {
            check_name("service name", &name)?;
            crate::keys::runtime::service(&ns, &name)
        };
        let mut specs: Vec<Spec> = Vec::new();
        let mut reports: HashMap<String, Reported> = HashMap::new();
        for item in self
            .manager
            .replica
            .reader()
            .scan(&prefix, now_millis(), false)
        {
            let (key, rec) = item.map_err(status)?;
            let key = String::from_utf8_lossy(&key).to_string();
            let Some((rest, kind)) = key.rsplit_once('/') else {
                continue;
            };
            let svc = rest.rsplit('/').next().unwrap_or_default().to_string();
            match kind {
                "spec" => specs.push(
                    serde_json::from_slice(&rec.value)
                        .map_err(|e| Status::internal(e.to_string()))?,
                ),
                "status" => {
                    reports.insert(svc, serde_json::from_slice(&rec.value).unwrap_or_default());
                }
                _ => {}
            }
        }
        let services = specs
            .iter()
            .map(|s| {
                let down = self.cluster.is_down(s.node);
                service_of(s, &ns, reports.remove(&s.name), down)
            })
            .collect();
        Ok(Response::new(ReadResponse { services }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let ns = namespace(&req)?;
        let caller = caller(&req);
        let runner = require_runner(&caller, &ns)?;
        let (md, _, req) = req.into_parts();
        let name = req
            .service
            .as_ref()
            .map(|s| s.name.clone())
            .ok_or_else(|| Status::invalid_argument("a service is required"))?;
        check_name("service name", &name)?;
        let m = &self.manager;
        let (spec, version) = m
            .spec(&ns, &name)?
            .ok_or_else(|| Status::not_found("Service not found"))?;
        require_owner(runner, &ns, &spec)?;
        if spec.node != m.node_id {
            let mut owner = self.owner(spec.node, &md)?;
            return owner
                .update(Request::from_parts(md, Default::default(), req))
                .await;
        }
        let Some(svc) = req.service else {
            return Err(Status::invalid_argument("a service is required"));
        };
        let _busy = m.claim(&ns, &name).ok_or_else(|| busy(&name))?;
        if req.upload.is_empty() && !is_git(&spec.source) {
            return Err(Status::invalid_argument(format!(
                "service {} came from a local folder: update it with that folder",
                spec.name
            )));
        }
        // Build, then swap: the new version is fetched into a folder of its
        // own and built and started beside the old one, which serves until
        // the new one runs and has registered.
        let mut next = spec.clone();
        if !svc.source.is_empty() {
            next.source = svc.source;
        }
        let source = replicated_source(&req.upload);
        (next.build, next.dir) = m.fetch(&ns, &name, &next.source, req.upload).await?;
        next.updated = now_millis();
        let sup = match m.try_version(&ns, &next).await {
            Ok(sup) => sup,
            Err(why) => {
                m.discard(&ns, &next).await;
                return Err(Status::failed_precondition(format!(
                    "Update failed: {why}; {}",
                    m.left_as_it_was(&ns, &spec)
                )));
            }
        };
        let raw = serde_json::to_vec(&next).map_err(|e| Status::internal(e.to_string()))?;
        let written = m
            .replica
            .write(
                spec_txn(&ns, &name, raw, source)
                    .when(Cond::VersionEq(spec_key(&ns, &name), version)),
            )
            .await
            .map_err(status);
        match written {
            Ok(res) if res.succeeded => {}
            other => {
                sup.stop().await;
                m.forget_next(&ns, &name).await;
                m.discard(&ns, &next).await;
                other?;
                return Err(Status::aborted(format!(
                    "service {name} changed meanwhile; try again"
                )));
            }
        }
        m.adopt(&ns, &next, sup).await;
        m.forget_next(&ns, &name).await;
        if m.src_dir(&ns, &spec)? != m.src_dir(&ns, &next)? {
            m.discard(&ns, &spec).await;
        }
        Ok(Response::new(UpdateResponse {}))
    }

    async fn delete(
        &self,
        req: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace(&req)?;
        let caller = caller(&req);
        let account = require_account(&caller, &ns)?;
        let (md, _, req) = req.into_parts();
        let name = req.name.clone();
        check_name("service name", &name)?;
        let m = &self.manager;
        let (spec, _) = m
            .spec(&ns, &name)?
            .ok_or_else(|| Status::not_found("Service not found"))?;
        require_owner(account, &ns, &spec)?;
        if spec.node != m.node_id {
            let mut owner = self.owner(spec.node, &md)?;
            return owner
                .delete(Request::from_parts(md, Default::default(), req))
                .await;
        }
        let _busy = m.claim(&ns, &name).ok_or_else(|| busy(&name))?;
        m.stop(&ns, &name).await;
        m.replica
            .write(forget_txn(&ns, &name))
            .await
            .map_err(status)?;
        let (legacy, versions, log, build_log, pid) = (
            m.legacy_src_dir(&ns, &name)?,
            m.versions_dir(&ns, &name)?,
            m.log_file(&ns, &name)?,
            m.build_log_file(&ns, &name)?,
            m.pid_file(&ns, &name)?,
        );
        let _ = m.accounts.delete(&ns, &name).await;
        let _ = tokio::fs::remove_file(pid).await;
        let _ = tokio::fs::remove_dir_all(legacy).await;
        let _ = tokio::fs::remove_dir_all(versions).await;
        for file in [log, build_log] {
            let _ = tokio::fs::remove_file(logs::rotated_path(&file)).await;
            let _ = tokio::fs::remove_file(file).await;
        }
        Ok(Response::new(DeleteResponse {}))
    }

    type LogsStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<LogRecord, Status>> + Send>>;

    async fn logs(&self, req: Request<LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        let ns = namespace(&req)?;
        let caller = caller(&req);
        let account = require_account(&caller, &ns)?;
        let (md, _, req) = req.into_parts();
        check_name("service name", &req.name)?;
        let m = &self.manager;
        let (spec, _) = m
            .spec(&ns, &req.name)?
            .ok_or_else(|| Status::not_found("Service not found"))?;
        require_owner(account, &ns, &spec)?;
        if spec.node != m.node_id {
            // The log file is on the owning node: stream it from there.
            let mut owner = self.owner(spec.node, &md)?;
            let remote = owner
                .logs(Request::from_parts(md, Default::default(), req))
                .await?
                .into_inner();
            return Ok(Response::new(Box::pin(remote)));
        }
        let file = if req.build {
            m.build_log_file(&ns, &req.name)?
        } else {
            m.log_file(&ns, &req.name)?
        };
        let count = match req.count {
            0 => DEFAULT_LINES,
            n if n < 0 => 0,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let (lines, end) = logs::tail_with_end(&file, count).await.unwrap_or_default();
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        // Following starts where the tail ended: no line in between is lost.
        let follow = req.stream.then(|| logs::follow_from(file, end));
        tokio::spawn(async move {
            for line in lines {
                if tx.send(Ok(LogRecord { message: line })).await.is_err() {
                    return;
                }
            }
            if let Some(mut lines) = follow {
                while let Some(line) = lines.recv().await {
                    if tx.send(Ok(LogRecord { message: line })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sources_and_refs() {
        assert!(is_git("https://github.com/micro/services"));
        assert!(is_git("file:///tmp/repo@main"));
        assert!(!is_git("./greeter"));
        assert_eq!(
            split_ref("https://h/x/y@v1.2"),
            ("https://h/x/y", Some("v1.2"))
        );
        assert_eq!(split_ref("https://h/x/y"), ("https://h/x/y", None));
        assert_eq!(
            split_ref("file:///tmp/repo@dev"),
            ("file:///tmp/repo", Some("dev"))
        );
        assert_eq!(split_ref("https://user@h/x"), ("https://user@h/x", None));
    }

    /// A gzipped tar of one entry, its name written raw (the tar crate's
    /// own setters refuse `..`).
    fn tar_of(name: &str, kind: tar::EntryType, link: Option<&str>, body: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(body.len() as u64);
        if let Some(l) = link {
            header.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        header.set_cksum();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        b.append(&header, body).unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    #[tokio::test]
    async fn uploads_cannot_escape_their_folder() {
        use tar::EntryType::*;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("svc");
        let refused = |r: Result<(), Status>| r.unwrap_err().message().to_string();
        let up = tar_of("../evil", Regular, None, b"x");
        assert_eq!(
            refused(Manager::unpack(up, dir.clone()).await),
            "the upload has a path outside its folder"
        );
        let up = tar_of("link", Symlink, Some("/"), b"");
        assert_eq!(
            refused(Manager::unpack(up, dir.clone()).await),
            "the upload holds a link (link): only files and folders are taken"
        );
        let up = tar_of("hard", Link, Some("../../auth-signing.key"), b"");
        assert!(refused(Manager::unpack(up, dir.clone()).await).contains("holds a link"));
        let up = tar_of("fifo", Fifo, None, b"");
        assert!(refused(Manager::unpack(up, dir.clone()).await).contains("a special file"));
        // An absolute path lands inside the folder.
        let up = tar_of("/abs.txt", Regular, None, b"inside");
        Manager::unpack(up, dir.clone()).await.unwrap();
        assert_eq!(std::fs::read(dir.join("abs.txt")).unwrap(), b"inside");
        let beside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, ["svc"], "nothing was written beside the folder");
        assert!(!std::path::Path::new("/abs.txt").exists());
    }
}
