//! The network the nodes run on, and the partitions cut into it.
//!
//! Two modes. **loopback** (no root needed): node `i` listens on
//! `127.0.0.{i+1}`; nothing can be cut. **netns** (root, with `ip` and
//! `nft`): one network namespace per node (`mj<pid>-n<i>`), each with a veth
//! pair (`mj<pid>-h<i>` on the host side, `mj<pid>-v<i>` inside) on a bridge
//! of this run's own (`mj<pid>-b`) with a private subnet `10.213.S.0/24`
//! that no address or route of the host overlaps. The bridge holds
//! `10.213.S.1`, so the harness (clients, admin calls) reaches every node
//! directly; node `i` is `10.213.S.{i+10}`, its loopback up.
//!
//! Partitions are nftables rules in a table of this run's own
//! (`inet mj<pid>`) inside the node namespaces, dropping every packet (TCP:
//! Raft and forwards over mTLS; UDP: gossip, on the same port) from or to
//! the addresses of the peers cut off. The harness's address is never in
//! them: as in Jepsen, the network between nodes is cut, and each client
//! still talks to its node. Healing deletes the table.
//!
//! It must never touch a name it did not create: it refuses to start when
//! any of its names exists, and tears down exactly its own names — on a
//! normal exit (the [`Net`] guard's `Drop`), after a panic on the main
//! thread (a panic hook), and on Ctrl-C or SIGTERM (the harness's signal
//! handler calls [`Teardown::run`]).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};

/// Which network to run the nodes on (`--net`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NetMode {
    /// netns when running as root with `ip` and `nft`, else loopback
    Auto,
    /// a network namespace per node on a bridge of the run's own
    Netns,
    /// 127.0.0.x addresses, no root needed, no partitions
    Loopback,
}

/// The names and addresses of one run's network, and its teardown.
pub struct Teardown {
    pid: u32,
    subnet: u8,
    nodes: usize,
    done: AtomicBool,
}

impl Teardown {
    fn bridge(&self) -> String {
        format!("mj{}-b", self.pid)
    }

    fn ns(&self, i: usize) -> String {
        format!("mj{}-n{i}", self.pid)
    }

    fn host_veth(&self, i: usize) -> String {
        format!("mj{}-h{i}", self.pid)
    }

    fn node_veth(&self, i: usize) -> String {
        format!("mj{}-v{i}", self.pid)
    }

    fn table(&self) -> String {
        format!("mj{}", self.pid)
    }

    fn host_ip(&self) -> String {
        format!("10.213.{}.1", self.subnet)
    }

    fn node_ip(&self, i: usize) -> String {
        format!("10.213.{}.{}", self.subnet, i + 10)
    }

    /// Deletes the namespaces, veths and bridge of this run (once; later
    /// calls do nothing). Errors are ignored: what is already gone is gone.
    pub fn run(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        for i in 0..self.nodes {
            let _ = quiet(&["netns", "del", &self.ns(i)]);
            let _ = quiet(&["link", "del", &self.host_veth(i)]);
        }
        let _ = quiet(&["link", "del", &self.bridge()]);
    }
}

/// Runs `ip ARGS`, output discarded; whether it succeeded.
fn quiet(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip ARGS`; its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Why netns mode cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "nft"] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!(
                "`{tool}` is not installed (Debian: apt-get install iproute2 nftables)"
            ));
        }
    }
    None
}

/// The network of a run: loopback, or this run's namespaces (removed when
/// dropped).
pub struct Net {
    netns: Option<Arc<Teardown>>,
}

impl Net {
    pub fn loopback() -> Net {
        Net { netns: None }
    }

    /// Creates `nodes` namespaces on a bridge of this run's own. Refuses if
    /// any of its names exists; tears down what it made if a step fails.
    pub fn netns(nodes: usize) -> Result<Net> {
        let pid = std::process::id();
        let t = Arc::new(Teardown {
            pid,
            subnet: free_subnet(pid)?,
            nodes,
            done: AtomicBool::new(false),
        });
        let namespaces = ip(&["netns", "list"])?;
        let existing: BTreeSet<&str> = namespaces
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let mut taken = Vec::new();
        for i in 0..nodes {
            if existing.contains(t.ns(i).as_str()) {
                taken.push(t.ns(i));
            }
            for link in [t.host_veth(i), t.node_veth(i)] {
                if quiet(&["link", "show", &link]) {
                    taken.push(link);
                }
            }
        }
        if quiet(&["link", "show", &t.bridge()]) {
            taken.push(t.bridge());
        }
        if !taken.is_empty() {
            // Not ours to delete: the teardown guard must not run.
            t.done.store(true, Ordering::SeqCst);
            bail!(
                "cannot set up the network: {} already exist(s) (left over by another run? remove with `ip netns del …` / `ip link del …`)",
                taken.join(", ")
            );
        }
        let net = Net {
            netns: Some(t.clone()),
        };
        install_panic_hook(t.clone());
        let br = t.bridge();
        ip(&["link", "add", &br, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", t.host_ip()), "dev", &br])?;
        ip(&["link", "set", &br, "up"])?;
        for i in 0..nodes {
            let (ns, h, v) = (t.ns(i), t.host_veth(i), t.node_veth(i));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &h, "type", "veth", "peer", "name", &v])?;
            ip(&["link", "set", &v, "netns", &ns])?;
            ip(&["link", "set", &h, "master", &br])?;
            ip(&["link", "set", &h, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", t.node_ip(i)),
                "dev",
                &v,
            ])?;
            ip(&["-n", &ns, "link", "set", &v, "up"])?;
        }
        Ok(net)
    }

    /// Which mode this is, for the log.
    pub fn describe(&self) -> String {
        match &self.netns {
            None => "loopback (node i on 127.0.0.{i+1}; no partitions)".into(),
            Some(t) => format!(
                "netns: namespaces {}..{} on bridge {} ({}/24, harness at {})",
                t.ns(0),
                t.ns(t.nodes.saturating_sub(1)),
                t.bridge(),
                format_args!("10.213.{}.0", t.subnet),
                t.host_ip()
            ),
        }
    }

    pub fn is_netns(&self) -> bool {
        self.netns.is_some()
    }

    /// How many nodes it has room for (`None`: any number up to 254).
    pub fn capacity(&self) -> Option<usize> {
        self.netns.as_ref().map(|t| t.nodes)
    }

    /// The teardown, for the signal handler.
    pub fn teardown(&self) -> Option<Arc<Teardown>> {
        self.netns.clone()
    }

    /// The address node `i` listens on.
    pub fn node_ip(&self, i: usize) -> String {
        match &self.netns {
            None => format!("127.0.0.{}", i + 1),
            Some(t) => t.node_ip(i),
        }
    }

    /// The command that runs `program` as node `i` (in its namespace). `ip
    /// netns exec` execs the program, so the child's pid is the node's.
    pub fn command(&self, i: usize, program: &std::path::Path) -> tokio::process::Command {
        match &self.netns {
            None => tokio::process::Command::new(program),
            Some(t) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", &t.ns(i)]).arg(program);
                c
            }
        }
    }

    /// Cuts node `i` off from some peers: it drops every packet from the
    /// nodes in `from` and every packet it would send to the nodes in `to`.
    /// Replaces any cut node `i` had.
    pub async fn cut(&self, i: usize, from: &[usize], to: &[usize]) -> Result<()> {
        let t = self
            .netns
            .as_ref()
            .ok_or_else(|| anyhow!("partitions need network namespaces (--net netns)"))?;
        let set = |nodes: &[usize]| {
            nodes
                .iter()
                .map(|&n| t.node_ip(n))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rules = String::new();
        if !from.is_empty() {
            rules += &format!(
                "  chain input {{ type filter hook input priority -10; policy accept; ip saddr {{ {} }} drop; }}\n",
                set(from)
            );
        }
        if !to.is_empty() {
            rules += &format!(
                "  chain output {{ type filter hook output priority -10; policy accept; ip daddr {{ {} }} drop; }}\n",
                set(to)
            );
        }
        // Declaring the table first makes the delete succeed when it is not
        // there; the file is applied atomically.
        let table = t.table();
        let script = format!(
            "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{rules}}}\n"
        );
        nft(&t.ns(i), &script).await
    }

    /// Removes every cut of node `i`.
    pub async fn heal(&self, i: usize) -> Result<()> {
        let Some(t) = &self.netns else {
            return Ok(());
        };
        let table = t.table();
        nft(
            &t.ns(i),
            &format!("table inet {table}\ndelete table inet {table}\n"),
        )
        .await
    }
}

impl Net {
    /// The nftables rules in node `i`'s namespace (a diagnostic, for a
    /// cluster that does not recover).
    pub async fn rules(&self, i: usize) -> String {
        let Some(t) = &self.netns else {
            return String::new();
        };
        match tokio::process::Command::new("ip")
            .args(["netns", "exec", &t.ns(i), "nft", "list", "ruleset"])
            .stdin(Stdio::null())
            .output()
            .await
        {
            Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            Err(e) => format!("cannot run nft: {e}"),
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(t) = &self.netns {
            t.run();
        }
    }
}

/// Applies an nft script inside namespace `ns`.
async fn nft(ns: &str, script: &str) -> Result<()> {
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run nft")?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(script.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "nft in {ns} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A `10.213.S.0/24` that no address or route of the host overlaps, S
/// starting from one derived from the pid.
fn free_subnet(pid: u32) -> Result<u8> {
    let addrs = ip(&["-4", "-o", "addr", "show"])?;
    let routes = ip(&["-4", "route", "show", "table", "all"])?;
    let used = |s: u32| {
        let p = format!("10.213.{s}.");
        addrs.contains(&p) || routes.contains(&p)
    };
    let first = 16 + pid % 224;
    (0..224)
        .map(|k| 16 + (first - 16 + k) % 224)
        .find(|&s| !used(s))
        .map(|s| s as u8)
        .ok_or_else(|| anyhow!("every 10.213.S.0/24 subnet is in use on this host"))
}

/// Tears the network down when the main thread panics (a panic on another
/// thread ends a task, whose caller reports it; the run then ends normally
/// and the guard's Drop tears down).
fn install_panic_hook(t: Arc<Teardown>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            t.run();
            let _ = writeln!(std::io::stderr(), "micro-jepsen: network torn down");
        }
        previous(info);
    }));
}
