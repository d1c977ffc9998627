//! Micro's replicated state: one Raft group (openraft) whose log, vote and
//! state machine live in sled.
//!
//! The state machine is an ordered key space changed only by [`Txn`]s, a
//! small transaction language of conditions and operations. Callers get
//! linearizable writes ([`Replica::write`]), a read barrier for linearizable
//! reads ([`Replica::linearize`]) followed by local reads ([`Replica::reader`]),
//! and a stream of applied changes ([`Replica::subscribe`]).
//!
//! Writes are exactly-once: each carries a request id ([`Txn::request`],
//! drawn at random by [`Replica::write`] unless the caller brings one, kept
//! across every retry and forward), and the state machine applies an id at
//! most once, answering a repeat with the first outcome. So a write may be
//! retried whenever its outcome is unknown — after a leader change, a
//! broken forward, or by a client with the same id.
//!
//! Durable means fsync: everything openraft is told is on disk has been
//! through sled's flush and a real `fdatasync` (`durable.rs`).
//!
//! Cargo feature `no-fsync` (never in a real build): every flush and fsync
//! becomes a no-op and sled's background flusher is off. It exists only so
//! the power-loss harness (`micro-jepsen`) can prove it catches missing
//! fsyncs.
//!
//! Architecture invariant: this crate knows nothing of services. Keys and
//! values are bytes; what they mean belongs to the node.

// openraft's traits return its `StorageError` (over 200 bytes); our helpers
// return the same type so `?` composes, so the size lint does not apply.
#![allow(clippy::result_large_err)]

mod admin;
mod barrier;
mod durable;
mod log_store;
mod network;
mod propose;
mod snapshot;
mod state_machine;
pub mod txn;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ForwardToLeader, RaftError};
pub use openraft::BasicNode;
use tokio::sync::broadcast;

pub use admin::{Membership, MembershipChange, Role, Status};
use barrier::Shared;
pub use durable::Durable;
pub use log_store::LogStore;
pub use network::{Forward, NoPeers, RaftTransport, RpcKind, TransportError};
pub use propose::BatchLimits;
use propose::{Proposer, Rejected};
pub use state_machine::{Change, Reader, StateMachine};
pub use state_machine::{PRUNE_PER_ENTRY, REQUEST_CAP, REQUEST_WINDOW_MS};
pub use txn::{
    now_millis, sequence_key, Batch, Cond, Millis, Op, Record, RequestId, Txn, TxnResult,
};

/// A node's id in the Raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The types this Raft group replicates.
    pub TypeConfig:
        D = Batch,
        R = Vec<TxnResult>,
        SnapshotData = tokio::fs::File,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;

/// The openraft handle (only this crate holds it).
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// What went wrong with the replicated state.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("storage error: {0}")]
    Storage(String),
    #[error("this node is not the leader (the leader is node {leader_id} at {leader_addr})")]
    NotLeader {
        leader_id: NodeId,
        leader_addr: String,
    },
    #[error("no leader is elected: the cluster has no quorum")]
    NoLeader,
    #[error("the replicated state is shutting down")]
    Stopped,
    #[error("raft error: {0}")]
    Raft(String),
    /// The request was never delivered (no connection to the leader), so it
    /// can safely be retried.
    #[error("the leader cannot be reached: {0}")]
    Unreachable(String),
    /// The request may or may not have taken effect (sending it again with
    /// the same request id is safe).
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Timeout(String),
    /// A peer's message could not be read.
    #[error("cannot read {0}")]
    BadMessage(String),
    /// A peer asked for something this replica does not grant it.
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// Whether a forwarded request surely did not take effect, so it may be
    /// sent again (perhaps to the next leader).
    fn never_took_effect(&self) -> bool {
        matches!(
            self,
            Error::Unreachable(_) | Error::NotLeader { .. } | Error::NoLeader
        )
    }

    /// Whether a forwarded write may be sent again: it surely did not take
    /// effect, or its outcome is unknown — safe because the request id makes
    /// the state machine apply it at most once.
    fn retryable_write(&self) -> bool {
        self.never_took_effect() || matches!(self, Error::Unknown(_))
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

/// How often a leader tells its followers it is alive (and sends them new
/// entries when there are none waiting).
/// Log entries between snapshots unless told otherwise.
pub const DEFAULT_SNAPSHOT_AFTER: u64 = 20_000;

pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(100);
/// How long a follower waits without hearing from a leader before it
/// stands for election: a random time in this range. openraft waits out
/// the leader's lease (the maximum) first, so after a leader's crash a
/// follower campaigns 600–800 ms after its last heartbeat: six heartbeats
/// missed at the least (`micro-bench elections` counts the elections a
/// loaded cluster holds with no node stopped).
pub const DEFAULT_ELECTION_TIMEOUT: (Duration, Duration) =
    (Duration::from_millis(200), Duration::from_millis(400));

/// Tuning of the Raft group.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a leader sends heartbeats (whole milliseconds).
    pub heartbeat: Duration,
    /// The range a follower's election timeout is drawn from (whole
    /// milliseconds); its maximum is also the leader's lease: a voter
    /// refuses to vote while its leader was heard from more recently.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_after: u64,
    /// How long a write waits for a leader to be elected before failing.
    pub leader_wait: Duration,
    /// How long a write or read barrier may take in all before it fails
    /// (a leader cut off from its quorum never commits).
    pub request_timeout: Duration,
    /// Log entries kept after a snapshot, for followers that lag a little.
    pub keep_after_snapshot: u64,
    /// Group commit: how writes are gathered into entries.
    pub batch: BatchLimits,
    /// At most this many entries per AppendEntries RPC. openraft 0.9 gives
    /// each AppendEntries one heartbeat interval to complete, follower
    /// fsync included; a bounded payload (this × the batch byte bound)
    /// keeps a lagging follower's catch-up RPCs inside it.
    pub max_entries_per_rpc: u64,
    /// Bytes of a snapshot sent per message to a member that catches up.
    pub snapshot_chunk: u64,
    /// How long one snapshot chunk may take to be received; the last one
    /// includes installing the whole snapshot.
    pub snapshot_chunk_timeout: Duration,
    /// Bytes of sled's page cache (sled's own default is 1 GiB). sled
    /// counts a page by its size in the log, not in memory, and a page of
    /// large values (over ~128 KiB, kept as blobs) counts as a pointer, so
    /// resident memory runs well past this; a small bound keeps it lowest
    /// (measured: 8 MiB against 64 MiB took a 256 MiB install of 4 KiB
    /// values from 494 to 419 MiB peak). The OS page cache still serves
    /// repeated reads.
    pub cache_capacity: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat: DEFAULT_HEARTBEAT,
            election_timeout: DEFAULT_ELECTION_TIMEOUT,
            snapshot_after: DEFAULT_SNAPSHOT_AFTER,
            leader_wait: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_after_snapshot: 1000,
            batch: BatchLimits::default(),
            max_entries_per_rpc: 8,
            snapshot_chunk: 3 * 1024 * 1024,
            snapshot_chunk_timeout: Duration::from_secs(120),
            cache_capacity: 8 * 1024 * 1024,
        }
    }
}

impl Options {
    /// Checks the Raft timing: a heartbeat of at least 1 ms, shorter than
    /// the election timeout's minimum, which is below its maximum (else
    /// followers would campaign against a leader that is alive). The error
    /// is one sentence.
    pub fn check_timing(&self) -> Result<(), String> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let (min, max) = self.election_timeout;
        if self.heartbeat < Duration::from_millis(1) {
            return Err("the Raft heartbeat must be at least 1ms".into());
        }
        if self.heartbeat >= min {
            return Err(format!(
                "the Raft heartbeat ({}) must be shorter than the election timeout's minimum ({})",
                ms(self.heartbeat),
                ms(min)
            ));
        }
        if min >= max {
            return Err(format!(
                "the election timeout's minimum ({}) must be below its maximum ({})",
                ms(min),
                ms(max)
            ));
        }
        Ok(())
    }
}

/// Opens the log store and state machine in `dir`, for tests and tools that
/// drive openraft's storage directly.
pub fn open_storage(dir: &Path) -> Result<(LogStore, StateMachine), Error> {
    let (db, durable) = open_db(dir, &Options::default())?;
    let (tx, _) = broadcast::channel(1024);
    Ok((
        LogStore::open(&db, durable.clone())?,
        StateMachine::open(&db, durable, tx)?,
    ))
}

/// Opens sled in `dir` with the build's flush policy, and the handle that
/// makes its writes durable. Blocking (sled reads and recovers its log).
fn open_db(dir: &Path, options: &Options) -> Result<(sled::Db, Durable), Error> {
    let config = sled::Config::new()
        .path(dir)
        .cache_capacity(options.cache_capacity);
    let db = durable::configure(config).open()?;
    let durable = Durable::open(db.clone(), dir).map_err(|e| {
        Error::Storage(format!(
            "cannot sync the replicated state in {}: {e}",
            dir.display()
        ))
    })?;
    Ok((db, durable))
}

/// One member of the Raft group, with its local copy of the state.
#[derive(Clone)]
pub struct Replica {
    id: NodeId,
    raft: Raft,
    reader: Reader,
    changes: broadcast::Sender<Arc<Vec<Change>>>,
    options: Options,
    forward: Arc<dyn Forward>,
    proposer: Proposer,
    /// Leadership confirmations shared by concurrent reads on the leader.
    confirm: Shared<(), Result<u64, Rejected>>,
    /// Read-index requests to the leader shared by concurrent reads on a
    /// follower.
    ask_leader: Shared<(NodeId, BasicNode), Result<u64, Error>>,
    transport: Arc<dyn RaftTransport>,
}

impl Replica {
    /// Opens (or creates) a replica that never talks to peers: a node alone.
    pub async fn open(dir: &Path, id: NodeId, options: Options) -> Result<Self, Error> {
        Self::open_with(dir, id, options, Arc::new(NoPeers), Arc::new(NoPeers)).await
    }

    /// Opens (or creates) the replica's storage in `dir` and starts Raft,
    /// reaching peers through `transport` (Raft RPCs, hand-overs) and
    /// `forward` (writes and read barriers sent to the leader).
    pub async fn open_with(
        dir: &Path,
        id: NodeId,
        options: Options,
        transport: Arc<dyn RaftTransport>,
        forward: Arc<dyn Forward>,
    ) -> Result<Self, Error> {
        options.check_timing().map_err(Error::Raft)?;
        let network = network::Network {
            transport: transport.clone(),
        };
        let dir = dir.to_path_buf();
        let (changes, _) = broadcast::channel(4096);
        // sled's open reads and recovers the whole log, and the state
        // machine may finish an interrupted snapshot install: keep both off
        // the runtime.
        let (opts, tx) = (options.clone(), changes.clone());
        let (db, durable, sm) = tokio::task::spawn_blocking(move || {
            let (db, durable) = open_db(&dir, &opts)?;
            let sm = StateMachine::open(&db, durable.clone(), tx)?;
            Ok::<_, Error>((db, durable, sm))
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
        let log = LogStore::open(&db, durable.clone())?;
        let reader = sm.reader();
        let config = openraft::Config {
            cluster_name: "micro".into(),
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_timeout.0.as_millis() as u64,
            election_timeout_max: options.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_after),
            max_in_snapshot_log_to_keep: options.keep_after_snapshot,
            max_payload_entries: options.max_entries_per_rpc.max(1),
            install_snapshot_timeout: options.snapshot_chunk_timeout.as_millis() as u64,
            snapshot_max_chunk_size: options.snapshot_chunk,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        let proposer = Proposer::start(raft.clone(), options.batch);
        let confirm = {
            let raft = raft.clone();
            let limit = options.request_timeout;
            Shared::new(move |()| confirm_leadership(raft.clone(), limit))
        };
        let ask_leader = {
            let forward = forward.clone();
            Shared::new(move |(leader, node): (NodeId, BasicNode)| forward.read_index(leader, node))
        };
        Ok(Replica {
            id,
            raft,
            reader,
            changes,
            options,
            forward,
            proposer,
            confirm,
            ask_leader,
            transport,
        })
    }

    /// This replica's node id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Makes this replica a one-voter cluster if it belongs to none yet; on a
    /// restart of a lone voter, starts the election at once instead of waiting
    /// for the election timeout.
    pub async fn bootstrap_alone(&self, addr: String) -> Result<(), Error> {
        let fatal = |e: openraft::error::Fatal<NodeId>| Error::Raft(e.to_string());
        if !self.raft.is_initialized().await.map_err(fatal)? {
            let mut members = BTreeMap::new();
            members.insert(self.id, BasicNode { addr });
            self.raft
                .initialize(members)
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        } else {
            let voters: BTreeSet<NodeId> = self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .voter_ids()
                .collect();
            if voters.len() == 1 && voters.contains(&self.id) {
                self.raft.trigger().elect().await.map_err(fatal)?;
            }
        }
        Ok(())
    }

    /// Replicates `txn` and returns its result once it is durable on a quorum
    /// and applied here. Stamps the transaction with this node's clock when
    /// its `now` is zero. On a follower the transaction is forwarded to the
    /// leader; a leader that cannot be reached, or none at all, is waited for
    /// (an election) up to the leader wait. Fails after the request timeout
    /// rather than wait for a quorum that is gone.
    ///
    /// Exactly once: the transaction keeps its request id, or gets a random
    /// one, for every attempt (local, forwarded, after a leader change), so
    /// however many of them reach the log it is applied once and each gets
    /// the first outcome. A caller retrying a write whose outcome it does not
    /// know passes the same id (and the same `now`) again.
    pub async fn write(&self, mut txn: Txn) -> Result<TxnResult, Error> {
        if txn.now == 0 {
            txn.now = now_millis();
        }
        if txn.request.is_none() {
            txn.request = Some(rand::random());
        }
        let limit = self.options.request_timeout;
        match tokio::time::timeout(limit, self.write_inner(txn)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "the write was not committed within {}s: the cluster may have lost its quorum (the outcome is unknown)",
                limit.as_secs()
            ))),
        }
    }

    async fn write_inner(&self, txn: Txn) -> Result<TxnResult, Error> {
        let deadline = tokio::time::Instant::now() + self.options.leader_wait;
        loop {
            let f = match self.proposer.propose(txn.clone()).await {
                Ok(r) => return Ok(r),
                Err(Rejected::Forward(f)) => f,
                Err(Rejected::Failed(e)) => return Err(e),
            };
            let err = match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) if id != self.id => {
                    match self.forward.propose(id, node, txn.clone()).await {
                        Ok(r) => return Ok(r),
                        Err(e) if e.retryable_write() => e,
                        Err(e) => return Err(e),
                    }
                }
                _ => Error::NoLeader,
            };
            self.await_leader_change(f.leader_id, deadline, err).await?;
        }
    }

    /// After a failed attempt through leader `was`: waits until another
    /// leader is known (or, with none known, any leader), giving up with
    /// `err` at `deadline`.
    async fn await_leader_change(
        &self,
        was: Option<NodeId>,
        deadline: tokio::time::Instant,
        err: Error,
    ) -> Result<(), Error> {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(err);
        }
        // Up to a second for the view to change; then the same leader is
        // tried again (a connection may have failed only for a moment).
        let _ = self
            .raft
            .wait(Some((deadline - now).min(Duration::from_secs(1))))
            .metrics(
                |m| m.current_leader.is_some() && (was.is_none() || m.current_leader != was),
                "another leader",
            )
            .await;
        // A new leader may not answer for a moment; do not spin.
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(())
    }

    /// A read barrier: returns once this replica has applied everything that
    /// was committed when it was called, as confirmed by a quorum (read-index;
    /// a follower asks the leader for its read index). Reads from
    /// [`Replica::reader`] after it are linearizable.
    pub async fn linearize(&self) -> Result<(), Error> {
        let limit = self.options.request_timeout;
        match tokio::time::timeout(limit, self.linearize_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(format!(
                "no quorum confirmed the read within {}s: the cluster may have lost its quorum",
                limit.as_secs()
            ))),
        }
    }

    async fn linearize_inner(&self) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + self.options.leader_wait;
        loop {
            let f = match self.confirm.run(()).await {
                Some(Ok(index)) => return self.applied_at_least(index).await,
                Some(Err(Rejected::Forward(f))) => f,
                Some(Err(Rejected::Failed(e))) => return Err(e),
                None => return Err(Error::Stopped),
            };
            let err = match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) if id != self.id => {
                    match self.ask_leader.run((id, node)).await {
                        Some(Ok(index)) => return self.applied_at_least(index).await,
                        Some(Err(e)) if e.never_took_effect() => e,
                        Some(Err(e)) => return Err(e),
                        None => return Err(Error::Stopped),
                    }
                }
                _ => Error::NoLeader,
            };
            self.await_leader_change(f.leader_id, deadline, err).await?;
        }
    }

    /// Waits until this replica has applied log index `index`.
    async fn applied_at_least(&self, index: u64) -> Result<(), Error> {
        self.raft
            .wait(None)
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|_| Error::Stopped)
    }

    /// The leader's side of a forwarded read barrier: confirms leadership
    /// with a quorum (one confirmation for all the barriers that arrive
    /// meanwhile) and returns the index a reader must have applied.
    pub async fn read_index(&self) -> Result<u64, Error> {
        match self.confirm.run(()).await {
            Some(Ok(index)) => Ok(index),
            Some(Err(Rejected::Forward(f))) => Err(not_leader(f)),
            Some(Err(Rejected::Failed(e))) => Err(e),
            None => Err(Error::Stopped),
        }
    }

    /// The leader's side of a forwarded write: applies `txn` only if this
    /// replica leads (never forwards again, so a request cannot loop). It
    /// joins the leader's next batch like a local write.
    pub async fn propose_here(&self, txn: Txn) -> Result<TxnResult, Error> {
        let fut = self.proposer.propose(txn);
        match tokio::time::timeout(self.options.request_timeout, fut).await {
            Err(_) => Err(Error::Timeout(format!(
                "the write was not committed within {}s: the cluster may have lost its quorum (the outcome is unknown)",
                self.options.request_timeout.as_secs()
            ))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(Rejected::Forward(f))) => Err(not_leader(f)),
            Ok(Err(Rejected::Failed(e))) => Err(e),
        }
    }

    /// Local reads of the applied state (stale unless preceded by
    /// [`Replica::linearize`]).
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Changes as they are applied on this replica, in log order.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<Change>>> {
        self.changes.subscribe()
    }

    /// Whether this replica leads the group right now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Runs the expiry sweeper until the replica stops: while this replica
    /// leads, it proposes the deletion of records whose expiry has passed.
    /// Reads hide expired records anyway; this reclaims their space.
    pub fn spawn_expiry_sweeper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if !me.is_leader() {
                    continue;
                }
                let now = now_millis();
                match me.reader.first_expiry() {
                    Ok(Some(at)) if at <= now => {}
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!("expiry sweep: {e}");
                        continue;
                    }
                }
                match me
                    .write(Txn::ops(vec![Op::PurgeExpired { limit: 1000 }]))
                    .await
                {
                    Ok(_) | Err(Error::NotLeader { .. }) | Err(Error::NoLeader) => {}
                    Err(Error::Stopped) => return,
                    Err(e) => tracing::warn!("expiry sweep: {e}"),
                }
            }
        })
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}

/// What a caller of the leader's side is told when this replica does not lead.
fn not_leader(f: ForwardToLeader<NodeId, BasicNode>) -> Error {
    match (f.leader_id, f.leader_node) {
        (Some(id), Some(node)) => Error::NotLeader {
            leader_id: id,
            leader_addr: node.addr,
        },
        _ => Error::NoLeader,
    }
}

/// One leadership confirmation round: a quorum acknowledges this replica
/// still leads; returns the read index (what a reader must have applied).
async fn confirm_leadership(raft: Raft, limit: Duration) -> Result<u64, Rejected> {
    match tokio::time::timeout(limit, raft.get_read_log_id()).await {
        Err(_) => Err(Rejected::Failed(Error::Timeout(format!(
            "no quorum confirmed the read within {}s: the cluster may have lost its quorum",
            limit.as_secs()
        )))),
        Ok(Ok((read, _))) => Ok(read.map(|l| l.index).unwrap_or(0)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(Rejected::Forward(f))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
            Err(Rejected::Failed(Error::NoLeader))
        }
        Ok(Err(RaftError::Fatal(_))) => Err(Rejected::Failed(Error::Stopped)),
    }
}
