//! A write retried after a forced leader change is applied once: three
//! real replicas (openraft, sled) in one process, wired by an in-memory
//! transport whose forward can lose its reply.
//!
//! The sequence: a follower forwards a write to the leader, which commits
//! it; before the reply reaches the follower, leadership moves to another
//! node and the reply is lost (the follower sees "outcome unknown", as when
//! the connection breaks). The follower sends the same write again, now to
//! the new leader, whose log already holds the first attempt. The write must
//! land once and the caller get the first outcome. A client retrying with
//! the same request id is covered the same way.

// openraft's RPC errors are large; the transport returns them as they are.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use micro_raft::{
    BasicNode, Error, Forward, NodeId, Op, Options, Raft, Replica, Txn, TxnResult, TypeConfig,
};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

/// Every replica of the test cluster, by id.
#[derive(Clone, Default)]
struct Mesh {
    rafts: Arc<Mutex<HashMap<NodeId, Raft>>>,
    replicas: Arc<Mutex<HashMap<NodeId, Replica>>>,
    /// When set, the next forwarded write is committed, leadership is moved
    /// to `new_leader`, and the reply is lost.
    lose_next_reply: Arc<AtomicBool>,
    new_leader: Arc<Mutex<Option<NodeId>>>,
}

struct Peer {
    target: NodeId,
    mesh: Mesh,
}

impl Peer {
    fn raft<E: std::error::Error>(&self) -> Result<Raft, RPCError<NodeId, BasicNode, E>> {
        self.mesh
            .rafts
            .lock()
            .unwrap()
            .get(&self.target)
            .cloned()
            .ok_or_else(|| {
                let e = std::io::Error::other(format!("node {} is not up", self.target));
                RPCError::Unreachable(Unreachable::new(&e))
            })
    }
}

impl RaftNetworkFactory<TypeConfig> for Mesh {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer {
        Peer {
            target,
            mesh: self.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.raft()?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.raft()?;
        raft.install_snapshot(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.raft()?;
        raft.vote(rpc)
            .await
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl Forward for Mesh {
    fn propose(
        &self,
        leader: NodeId,
        _node: BasicNode,
        txn: Txn,
    ) -> BoxFuture<'static, Result<TxnResult, Error>> {
        let mesh = self.clone();
        Box::pin(async move {
            let replica = mesh.replicas.lock().unwrap().get(&leader).cloned();
            let Some(replica) = replica else {
                return Err(Error::Unreachable(format!("node {leader} is not up")));
            };
            let result = replica.propose_here(txn).await?;
            if mesh.lose_next_reply.swap(false, Ordering::SeqCst) {
                let next = mesh.new_leader.lock().unwrap().take();
                if let Some(next) = next {
                    move_leadership(&mesh, next).await;
                }
                return Err(Error::Unknown(
                    "the connection to the leader broke (the outcome is unknown)".into(),
                ));
            }
            Ok(result)
        })
    }

    fn read_index(
        &self,
        leader: NodeId,
        _node: BasicNode,
    ) -> BoxFuture<'static, Result<u64, Error>> {
        let mesh = self.clone();
        Box::pin(async move {
            let replica = mesh.replicas.lock().unwrap().get(&leader).cloned();
            match replica {
                Some(r) => r.read_index().await,
                None => Err(Error::Unreachable(format!("node {leader} is not up"))),
            }
        })
    }
}

/// Makes `next` the leader: it catches up, campaigns, and every replica
/// sees it lead.
async fn move_leadership(mesh: &Mesh, next: NodeId) {
    let rafts: Vec<(NodeId, Raft)> = mesh
        .rafts
        .lock()
        .unwrap()
        .iter()
        .map(|(id, r)| (*id, r.clone()))
        .collect();
    let last = rafts
        .iter()
        .filter_map(|(_, r)| r.metrics().borrow().last_log_index)
        .max();
    let target = rafts.iter().find(|(id, _)| *id == next).unwrap().1.clone();
    target
        .wait(Some(Duration::from_secs(10)))
        .log_index_at_least(last, "caught up")
        .await
        .expect("the next leader catches up");
    // An election can be lost to a competing one on a loaded machine: try
    // again until `next` leads and everyone sees it.
    for attempt in 1..=10 {
        target.trigger().elect().await.expect("elect");
        let mut seen = true;
        for (_, r) in &rafts {
            let w = r
                .wait(Some(Duration::from_secs(3)))
                .current_leader(next, "new leader")
                .await;
            if w.is_err() {
                seen = false;
                break;
            }
        }
        if seen {
            return;
        }
        assert!(attempt < 10, "node {next} never became the leader");
    }
}

async fn cluster(dirs: &[tempfile::TempDir]) -> (Mesh, Vec<Replica>) {
    let mesh = Mesh::default();
    let opts = Options {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(1500), Duration::from_millis(3000)),
        // The forced leader change happens inside the first attempt (the
        // forward), so the whole write must be allowed the elections it
        // takes on a loaded machine, not the default 10 s.
        request_timeout: Duration::from_secs(60),
        leader_wait: Duration::from_secs(30),
        ..Options::default()
    };
    let mut replicas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as NodeId + 1;
        let r = Replica::open_with(
            dir.path(),
            id,
            opts.clone(),
            mesh.clone(),
            Arc::new(mesh.clone()),
        )
        .await
        .expect("open");
        mesh.rafts.lock().unwrap().insert(id, r.raft().clone());
        mesh.replicas.lock().unwrap().insert(id, r.clone());
        replicas.push(r);
    }
    let members: BTreeMap<NodeId, BasicNode> = (1..=dirs.len() as NodeId)
        .map(|id| (id, BasicNode::new(format!("node-{id}"))))
        .collect();
    replicas[0].raft().initialize(members).await.expect("init");
    for r in &replicas {
        r.raft()
            .wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .expect("a leader is elected");
    }
    (mesh, replicas)
}

fn appended(r: &Replica) -> Vec<Vec<u8>> {
    r.reader()
        .scan(b"list/", 0, false)
        .map(|i| i.expect("scan").1.value)
        .collect()
}

fn append(value: &str) -> Txn {
    Txn::ops(vec![Op::Append {
        prefix: b"list/".to_vec(),
        value: value.as_bytes().to_vec(),
        expires_at: None,
    }])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky on a loaded 2-core machine: forcing the leader change inside the forward can lose to the old leader's lease; run with --ignored (tests/exactly_once.rs covers the same log sequence deterministically)"]
async fn a_write_retried_after_a_forced_leader_change_is_applied_once() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mesh, replicas) = cluster(&dirs).await;
    let leader = replicas[0]
        .raft()
        .metrics()
        .borrow()
        .current_leader
        .expect("a leader");
    let others: Vec<&Replica> = replicas.iter().filter(|r| r.id() != leader).collect();
    let (follower, next) = (others[0], others[1]);

    // The follower forwards to the leader, which commits; leadership moves
    // to the other follower; the reply is lost. The follower retries with
    // the new leader.
    *mesh.new_leader.lock().unwrap() = Some(next.id());
    mesh.lose_next_reply.store(true, Ordering::SeqCst);
    let result = follower
        .write(append("once"))
        .await
        .expect("the retried write succeeds");
    assert!(
        !mesh.lose_next_reply.load(Ordering::SeqCst),
        "the reply was lost"
    );
    assert!(next.is_leader(), "leadership moved");
    assert_eq!(result.appended.len(), 1);

    // Every replica holds the value once, under the key first assigned.
    for r in &replicas {
        r.linearize().await.expect("linearize");
        assert_eq!(appended(r), vec![b"once".to_vec()], "node {}", r.id());
        let key = &result.appended[0];
        let rec = r.reader().get(key, 0).unwrap().expect("the first key");
        assert_eq!(rec.version, result.index, "the first outcome came back");
    }

    // A client that did not hear back retries with the same id (and stamp):
    // the same outcome, nothing applied again — through a follower and
    // through the leader.
    let mut txn = append("client");
    txn.now = micro_raft::now_millis();
    txn.request = Some(rand_id());
    let first = follower.write(txn.clone()).await.expect("first");
    let again = follower.write(txn.clone()).await.expect("retry");
    let at_leader = next.write(txn).await.expect("retry at the leader");
    assert_eq!(again, first);
    assert_eq!(at_leader, first);
    next.linearize().await.unwrap();
    assert_eq!(appended(next), vec![b"once".to_vec(), b"client".to_vec()]);

    for r in &replicas {
        r.shutdown().await;
    }
}

fn rand_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(micro_raft::now_millis());
    ((h.finish() as u128) << 64) | 0x1234
}
