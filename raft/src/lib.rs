//! Micro's replicated state: one Raft group (openraft) whose log, vote and
//! state machine live in sled.
//!
//! The state machine is an ordered key space changed only by [`Txn`]s, a
//! small transaction language of conditions and operations. Callers get
//! linearizable writes ([`Replica::write`]), a read barrier for linearizable
//! reads ([`Replica::linearize`]) followed by local reads ([`Replica::reader`]),
//! and a stream of applied changes ([`Replica::subscribe`]).
//!
//! Architecture invariant: this crate knows nothing of services. Keys and
//! values are bytes; what they mean belongs to the node.

// openraft's traits return its `StorageError` (over 200 bytes); our helpers
// return the same type so `?` composes, so the size lint does not apply.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod state_machine;
pub mod txn;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
pub use openraft::BasicNode;
use tokio::sync::broadcast;

pub use log_store::LogStore;
pub use network::Network;
pub use state_machine::{Change, Reader, StateMachine};
pub use txn::{now_millis, Cond, Millis, Op, Record, Txn, TxnResult};

/// A node's id in the Raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// The types this Raft group replicates.
    pub TypeConfig:
        D = Txn,
        R = TxnResult,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;

/// The openraft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// What went wrong with the replicated state.
#[derive(Debug, thiserror::Error)]
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
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

/// Tuning of the Raft group.
#[derive(Debug, Clone)]
pub struct Options {
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_after: u64,
    /// How long a write waits for a leader to be elected before failing.
    pub leader_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            heartbeat: Duration::from_millis(250),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_after: 20_000,
            leader_wait: Duration::from_secs(5),
        }
    }
}

/// Opens the log store and state machine in `dir`, for tests and tools that
/// drive openraft's storage directly.
pub fn open_storage(dir: &Path) -> Result<(LogStore, StateMachine), Error> {
    let db = sled::Config::new().path(dir).open()?;
    let (tx, _) = broadcast::channel(1024);
    Ok((LogStore::open(&db)?, StateMachine::open(&db, tx)?))
}

/// One member of the Raft group, with its local copy of the state.
#[derive(Clone)]
pub struct Replica {
    id: NodeId,
    raft: Raft,
    reader: Reader,
    changes: broadcast::Sender<Arc<Vec<Change>>>,
    options: Options,
}

impl Replica {
    /// Opens (or creates) the replica's storage in `dir` and starts Raft.
    pub async fn open(dir: &Path, id: NodeId, options: Options) -> Result<Self, Error> {
        let dir = dir.to_path_buf();
        // sled's open reads and recovers the whole log: keep it off the runtime.
        let db = tokio::task::spawn_blocking(move || sled::Config::new().path(dir).open())
            .await
            .map_err(|e| Error::Storage(e.to_string()))??;
        let (changes, _) = broadcast::channel(4096);
        let log = LogStore::open(&db)?;
        let sm = StateMachine::open(&db, changes.clone())?;
        let reader = sm.reader();
        let config = openraft::Config {
            cluster_name: "micro".into(),
            heartbeat_interval: options.heartbeat.as_millis() as u64,
            election_timeout_min: options.election_timeout.0.as_millis() as u64,
            election_timeout_max: options.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(options.snapshot_after),
            max_in_snapshot_log_to_keep: 1000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Raft(e.to_string()))?;
        let raft = Raft::new(id, Arc::new(config), Network, log, sm)
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(Replica {
            id,
            raft,
            reader,
            changes,
            options,
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

    /// Waits until some node leads, up to the configured leader wait.
    async fn wait_for_leader(&self) -> Result<(), Error> {
        self.raft
            .wait(Some(self.options.leader_wait))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map(|_| ())
            .map_err(|_| Error::NoLeader)
    }

    /// Replicates `txn` and returns its result once it is durable on a quorum
    /// and applied here. Stamps the transaction with this node's clock when
    /// its `now` is zero.
    pub async fn write(&self, mut txn: Txn) -> Result<TxnResult, Error> {
        if txn.now == 0 {
            txn.now = now_millis();
        }
        let mut waited = false;
        loop {
            match self.raft.client_write(txn.clone()).await {
                Ok(resp) => return Ok(resp.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    self.no_leader_here(f, &mut waited).await?
                }
                Err(RaftError::APIError(e)) => return Err(Error::Raft(e.to_string())),
                Err(RaftError::Fatal(_)) => return Err(Error::Stopped),
            }
        }
    }

    /// Handles "this node does not lead": names the leader when another node
    /// leads; otherwise waits once for an election, so the caller can retry.
    async fn no_leader_here(
        &self,
        f: ForwardToLeader<NodeId, BasicNode>,
        waited: &mut bool,
    ) -> Result<(), Error> {
        match (f.leader_id, f.leader_node) {
            (Some(id), Some(node)) if id != self.id => Err(Error::NotLeader {
                leader_id: id,
                leader_addr: node.addr,
            }),
            _ if !*waited => {
                *waited = true;
                self.wait_for_leader().await
            }
            _ => Err(Error::NoLeader),
        }
    }

    /// A read barrier: returns once this replica has applied everything that
    /// was committed when it was called, as confirmed by a quorum (read-index).
    /// Reads from [`Replica::reader`] after it are linearizable.
    pub async fn linearize(&self) -> Result<(), Error> {
        use openraft::error::CheckIsLeaderError;
        let mut waited = false;
        loop {
            match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    self.no_leader_here(f, &mut waited).await?
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                    return Err(Error::NoLeader)
                }
                Err(RaftError::Fatal(_)) => return Err(Error::Stopped),
            }
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

    /// The openraft handle, for metrics and membership.
    pub fn raft(&self) -> &Raft {
        &self.raft
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
