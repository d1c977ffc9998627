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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use micro_raft::{
    BasicNode, Error, Forward, NodeId, Op, Options, RaftTransport, Replica, RpcKind,
    TransportError, Txn, TxnResult,
};

/// Every replica of the test cluster, by id.
#[derive(Clone, Default)]
pub struct Mesh {
    replicas: Arc<Mutex<HashMap<NodeId, Replica>>>,
    /// When set, the next forwarded write is committed, leadership is moved
    /// to `new_leader`, and the reply is lost.
    lose_next_reply: Arc<AtomicBool>,
    new_leader: Arc<Mutex<Option<NodeId>>>,
}

impl Mesh {
    fn replica(&self, id: NodeId) -> Result<Replica, TransportError> {
        self.replicas
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| TransportError::Unreachable(format!("node {id} is not up")))
    }
}

/// One replica's end of the mesh: the bytes micro-raft made, delivered to
/// the target's `handle_rpc`, as the node's transport does over mTLS.
struct Link {
    from: NodeId,
    mesh: Mesh,
}

impl RaftTransport for Link {
    fn call(
        &self,
        target: NodeId,
        _addr: &str,
        kind: RpcKind,
        body: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let mesh = self.mesh.clone();
        Box::pin(async move {
            mesh.replica(target)?
                .handle_rpc(kind, &body)
                .await
                .map_err(|e| TransportError::Network(e.to_string()))
        })
    }

    fn elect_now(
        &self,
        target: NodeId,
        _addr: &str,
        term: u64,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let (mesh, from) = (self.mesh.clone(), self.from);
        Box::pin(async move {
            mesh.replica(target)?
                .elect_now(from, term)
                .await
                .map_err(|e| TransportError::Network(e.to_string()))
        })
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

/// Makes `next` the leader: the leader hands over to it, and every
/// replica sees it lead.
async fn move_leadership(mesh: &Mesh, next: NodeId) {
    let replicas: Vec<Replica> = mesh.replicas.lock().unwrap().values().cloned().collect();
    // An election can be lost to a competing one on a loaded machine: try
    // again until `next` leads and everyone sees it.
    for attempt in 1..=10 {
        if let Some(leader) = replicas.iter().find(|r| r.is_leader()) {
            if leader.id() != next {
                let _ = leader.hand_over_to(next, Duration::from_secs(3)).await;
            }
        }
        let seen = replicas.iter().all(|r| r.leader() == Some(next));
        if seen {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(attempt < 10, "node {next} never became the leader");
    }
}

/// The options of the forced-leader-change test.
fn quick_options() -> Options {
    Options {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(1500), Duration::from_millis(3000)),
        // The forced leader change happens inside the first attempt (the
        // forward), so the whole write must be allowed the elections it
        // takes on a loaded machine, not the default 10 s.
        request_timeout: Duration::from_secs(60),
        leader_wait: Duration::from_secs(30),
        ..Options::default()
    }
}

async fn cluster(dirs: &[tempfile::TempDir], opts: Options) -> (Mesh, Vec<Replica>) {
    let mesh = Mesh::default();
    let mut replicas = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let id = i as NodeId + 1;
        let link = Link {
            from: id,
            mesh: mesh.clone(),
        };
        let r = Replica::open_with(
            dir.path(),
            id,
            opts.clone(),
            Arc::new(link),
            Arc::new(mesh.clone()),
        )
        .await
        .expect("open");
        mesh.replicas.lock().unwrap().insert(id, r.clone());
        replicas.push(r);
    }
    let members: BTreeMap<NodeId, String> = (1..=dirs.len() as NodeId)
        .map(|id| (id, format!("node-{id}")))
        .collect();
    replicas[0].initialize(members).await.expect("init");
    for r in &replicas {
        r.wait_for_leader(Duration::from_secs(20))
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
    let (mesh, replicas) = cluster(&dirs, quick_options()).await;
    let leader = replicas[0].leader().expect("a leader");
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

/// A leader that hands over is succeeded in one clean election, without
/// the cluster waiting an election timeout: the election timeout here is
/// longer than the hand-over is allowed, so only the hand-over can elect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_hands_over_is_succeeded_in_one_election() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let opts = Options {
        heartbeat: Duration::from_millis(100),
        election_timeout: (Duration::from_secs(4), Duration::from_secs(5)),
        ..Options::default()
    };
    let lease = opts.election_timeout.1;
    let (_mesh, replicas) = cluster(&dirs, opts).await;
    let old = replicas
        .iter()
        .find(|r| r.is_leader())
        .expect("a leader")
        .clone();
    old.write(Txn::put("before", "1", None))
        .await
        .expect("write");
    // A leader's vote is refused by voters while their leader's lease
    // (the longest election timeout) runs; let the one from the first
    // election pass, as it has on any node that has led for a while.
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    let term = old.status().term;

    let started = std::time::Instant::now();
    let next = old
        .hand_over(Duration::from_secs(3))
        .await
        .expect("the hand-over succeeds")
        .expect("another voter takes over");
    eprintln!("hand-over took {:?}", started.elapsed());
    assert_ne!(next, old.id());
    assert!(!old.is_leader(), "the old leader stepped down");
    let new = replicas.iter().find(|r| r.id() == next).unwrap();
    for r in &replicas {
        r.wait_for_leader(Duration::from_secs(10))
            .await
            .expect("a leader");
    }
    assert!(new.is_leader(), "node {next} leads");
    assert_eq!(new.status().term, term + 1, "one election, no more");

    // Writes through a node that did not lead before go through.
    let other = replicas
        .iter()
        .find(|r| r.id() != old.id() && r.id() != next)
        .unwrap();
    other
        .write(Txn::put("after", "1", None))
        .await
        .expect("a write after the hand-over");
    new.linearize().await.unwrap();
    assert!(new.reader().get(b"after", 0).unwrap().is_some());

    // Only the leader of the term may ask for an election.
    let refused = other.elect_now(other.id(), term + 1).await;
    assert!(matches!(refused, Err(Error::Refused(_))), "{refused:?}");
    for r in &replicas {
        r.shutdown().await;
    }
}
