//! Cluster membership for Micro.
//!
//! Every node runs a SWIM failure detector ([foca]) over UDP on its cluster
//! port and learns, by gossip, which other nodes exist and whether they
//! answer: [`State::Alive`], [`State::Suspect`] (missed probes, may still
//! refute) or [`State::Down`]. Higher layers use this view to decide who
//! to talk to; it is advisory and never a source of truth for cluster
//! configuration (Raft is).
//!
//! # Wire format
//!
//! Each datagram is `nonce (24 bytes) || XChaCha20-Poly1305(key, nonce,
//! foca payload)` with the fixed associated data `b"micro-gossip-v1"`. The
//! key is the cluster's 32-byte gossip key. Foca payloads are at most 1400
//! bytes, so datagrams are at most 1440 bytes.
//!
//! # Rules this crate must keep
//!
//! * **Never block the async runtime.** One tokio task owns foca, the
//!   socket and the timers; the public methods only push to a channel or
//!   take a std mutex for a short copy, and no lock is held across `.await`.
//! * **Never trust an unauthenticated packet.** A datagram that does not
//!   open with the cluster key is dropped before foca sees a byte of it,
//!   and counted in [`Gossip::rejected_packets`]. Nothing received may
//!   cause a panic, whatever its size or content.
//!
//! Replays of genuine packets are not filtered; SWIM's incarnation ordering
//! makes replayed state stale rather than harmful.
//!
//! # Timing
//!
//! Probe period 1 s, probe round-trip allowance 500 ms, Suspect to Down
//! after 5 s. A node that stops answering is normally reported Suspect
//! within 1-3 s and Down within about 6-8 s of going silent.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

mod identity;
mod runner;
mod wire;

#[cfg(test)]
mod tests;

use identity::Ident;
use runner::{lock, Command, Runner, Shared};

/// How long `shutdown` waits for the goodbye packets before stopping the
/// task regardless.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings for [`Gossip::start`].
#[derive(Clone)]
pub struct Config {
    /// This node's cluster-wide id (the same id Raft uses).
    pub node_id: u64,
    /// UDP address to bind (the node's cluster port; TCP on the same port is
    /// someone else's).
    pub bind: SocketAddr,
    /// Address peers reach this node on (usually == bind, but bind may be
    /// 0.0.0.0). A zero port is replaced by the bound port, and an
    /// unspecified IP by the bound IP when that one is specific.
    pub advertise: SocketAddr,
    /// The cluster's 32-byte gossip key: every packet is sealed with it.
    pub key: [u8; 32],
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// How this node sees a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Answers probes.
    Alive,
    /// Missed a probe; it has a few seconds to refute before being Down.
    Suspect,
    /// Declared failed (or left). Stays listed until [`Gossip::forget`] or
    /// until the node comes back with a newer identity.
    Down,
}

impl State {
    /// `"alive"`, `"suspect"` or `"down"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Down => "down",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One known node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The node's cluster-wide id.
    pub node_id: u64,
    /// The address the node advertises for gossip.
    pub addr: SocketAddr,
    /// How this node currently sees it.
    pub state: State,
}

/// Handle to a running gossip agent. Cheap to clone; all clones drive the
/// same agent. When the last clone is dropped the agent leaves the cluster
/// and stops on its own.
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    local_addr: SocketAddr,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
    rejected: Arc<AtomicU64>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Gossip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gossip")
            .field("node_id", &self.inner.node_id)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// Binds the UDP socket and starts the gossip task(s).
    ///
    /// Must be called from within a tokio runtime. Fails only if the socket
    /// cannot be bound (for example, the UDP port is taken).
    pub async fn start(cfg: Config) -> std::io::Result<Gossip> {
        let socket = UdpSocket::bind(cfg.bind).await?;
        let local_addr = socket.local_addr()?;
        let advertise = resolve_advertise(cfg.advertise, local_addr);
        if advertise.ip().is_unspecified() {
            tracing::warn!(
                %advertise,
                "gossip: advertised address is unspecified; peers will not reach this node"
            );
        }

        let me = Ident::fresh(cfg.node_id, advertise);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let rejected = Arc::new(AtomicU64::new(0));
        let (commands, command_rx) = mpsc::unbounded_channel();

        let runner = Runner::new(
            me,
            socket,
            wire::Sealer::new(&cfg.key),
            command_rx,
            Arc::clone(&shared),
            Arc::clone(&rejected),
        );
        let span = tracing::info_span!("gossip", node_id = cfg.node_id);
        let task = tokio::spawn(runner.run().instrument(span));
        tracing::info!(node_id = cfg.node_id, %local_addr, %advertise, "gossip: started");

        Ok(Gossip {
            inner: Arc::new(Inner {
                node_id: cfg.node_id,
                local_addr,
                commands,
                shared,
                rejected,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Asks to join the cluster through a known peer (idempotent; call again
    /// any time, e.g. every few seconds for known Raft members that gossip
    /// doesn't see alive).
    ///
    /// `peer` must be the address that peer advertises. Announcing to our
    /// own address is ignored.
    pub fn announce(&self, peer: SocketAddr) {
        let _ = self.inner.commands.send(Command::Announce(peer));
    }

    /// Every node known: this node itself (Alive) plus every other node
    /// gossip has heard of, including Suspect and Down ones, one entry per
    /// node id (its newest identity), sorted by node id. Down entries stay
    /// until [`Gossip::forget`] or until the node comes back.
    pub fn members(&self) -> Vec<Member> {
        lock(&self.inner.shared)
            .rows
            .values()
            .map(|row| row.member.clone())
            .collect()
    }

    /// The state of one node (`None` when never seen, or forgotten). This
    /// node itself is always Alive.
    pub fn state_of(&self, node_id: u64) -> Option<State> {
        lock(&self.inner.shared)
            .rows
            .get(&node_id)
            .map(|row| row.member.state)
    }

    /// A receiver that sees a new value whenever a member appears, changes
    /// state or is forgotten: a caller keeping its own view of the members
    /// re-reads [`members`](Self::members) then, instead of asking on every
    /// use.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        lock(&self.inner.shared).changes.subscribe()
    }

    /// Drops a node from the list (after it was removed from the cluster).
    ///
    /// Takes effect immediately for [`members`](Self::members) and
    /// [`state_of`](Self::state_of). If that node is in fact still running it
    /// will reappear once it rejoins with a newer identity. Forgetting this
    /// node itself does nothing.
    pub fn forget(&self, node_id: u64) {
        if node_id == self.inner.node_id {
            return;
        }
        {
            let mut shared = lock(&self.inner.shared);
            let bump = shared.rows.remove(&node_id).map_or(0, |row| row.bump);
            let threshold = shared.forgotten.entry(node_id).or_insert(bump);
            *threshold = (*threshold).max(bump);
            shared.changes.send_modify(|n| *n += 1);
        }
        let _ = self.inner.commands.send(Command::Forget(node_id));
    }

    /// How many received packets were dropped because they did not open
    /// with the key (or were malformed).
    pub fn rejected_packets(&self) -> u64 {
        self.inner.rejected.load(Ordering::Relaxed)
    }

    /// Leaves the cluster gracefully (tells peers) and stops the tasks.
    ///
    /// Waits at most about two seconds. After this, `members` keeps
    /// returning the last known view, `announce` and `forget` do nothing,
    /// and the UDP port is free again. Calling it twice is harmless.
    pub async fn shutdown(&self) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.inner.commands.send(Command::Leave(done_tx)).is_ok() {
            let _ = tokio::time::timeout(LEAVE_TIMEOUT, done_rx).await;
        }
        self.stop_task().await;
    }

    /// Stops the task without telling anyone, as a crashed process would.
    #[cfg(test)]
    pub(crate) async fn crash(&self) {
        self.stop_task().await;
    }

    /// Aborts the task (a no-op if it already finished) and waits until it
    /// is gone, so the socket is closed when this returns.
    async fn stop_task(&self) {
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Fills in the parts of the advertised address that are left open.
fn resolve_advertise(advertise: SocketAddr, bound: SocketAddr) -> SocketAddr {
    let mut resolved = advertise;
    if resolved.port() == 0 {
        resolved.set_port(bound.port());
    }
    if resolved.ip().is_unspecified() && !bound.ip().is_unspecified() {
        resolved.set_ip(bound.ip());
    }
    resolved
}
