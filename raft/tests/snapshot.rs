//! Snapshots that stream: a snapshot of many chunks reaches a new member
//! through openraft's chunked transport and reads back whole; apply goes on
//! while a snapshot is built and the snapshot holds exactly its cut; a
//! damaged snapshot file is refused and changes nothing.

// openraft's RPC errors are large; the transport returns them as they are.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use micro_raft::{
    open_storage, BasicNode, Entry, NoPeers, NodeId, Op, Options, RaftTransport, Replica, RpcKind,
    StateMachine, TransportError, Txn,
};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every replica of the test cluster, by id, and how many snapshot chunks
/// were sent.
#[derive(Clone, Default)]
struct Mesh {
    replicas: Arc<Mutex<HashMap<NodeId, Replica>>>,
    chunks: Arc<AtomicU64>,
}

impl RaftTransport for Mesh {
    fn call(
        &self,
        target: NodeId,
        _addr: &str,
        kind: RpcKind,
        body: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let mesh = self.clone();
        Box::pin(async move {
            let replica = mesh.replicas.lock().unwrap().get(&target).cloned();
            let replica = replica
                .ok_or_else(|| TransportError::Unreachable(format!("node {target} is not up")))?;
            if matches!(kind, RpcKind::InstallSnapshot) {
                mesh.chunks.fetch_add(1, Ordering::SeqCst);
            }
            replica
                .handle_rpc(kind, &body)
                .await
                .map_err(|e| TransportError::Network(e.to_string()))
        })
    }

    fn elect_now(
        &self,
        target: NodeId,
        _addr: &str,
        _term: u64,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            Err(TransportError::Unreachable(format!(
                "node {target}: no hand-over in this test"
            )))
        })
    }
}

const CHUNK: u64 = 64 * 1024;

/// The snapshot files kept in a data dir, with their sizes.
fn snapshot_files(dir: &std::path::Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir.join("snapshots"))
        .expect("a snapshots directory")
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, e.metadata().unwrap().len())
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_chunks_brings_a_new_member_up_to_date() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mesh = Mesh::default();
    let opts = Options {
        heartbeat: Duration::from_millis(50),
        election_timeout: (Duration::from_millis(300), Duration::from_millis(600)),
        snapshot_after: 100,
        keep_after_snapshot: 5,
        snapshot_chunk: CHUNK,
        ..Options::default()
    };
    let one = Replica::open_with(
        d1.path(),
        1,
        opts.clone(),
        Arc::new(mesh.clone()),
        Arc::new(NoPeers),
    )
    .await
    .unwrap();
    mesh.replicas.lock().unwrap().insert(1, one.clone());
    one.bootstrap_alone("n1".into()).await.unwrap();

    // About 1.2 MiB of state: 300 records of 4 KiB, a few deleted.
    let value = |i: u32| format!("{i:04}-").repeat(820).into_bytes();
    for i in 0..300u32 {
        one.write(Txn::put(format!("k{i:04}"), value(i), None))
            .await
            .unwrap();
    }
    for i in (0..300u32).step_by(50) {
        one.write(Txn::ops(vec![Op::Delete {
            key: format!("k{i:04}").into_bytes(),
        }]))
        .await
        .unwrap();
    }
    // A snapshot of everything, and the log before it gone: the new member
    // can only catch up from the snapshot.
    let last = one.status().last_log_index;
    let covered = one
        .build_snapshot(Duration::from_secs(20))
        .await
        .expect("the leader builds a snapshot");
    assert!(covered >= last, "the snapshot covers every write");

    let two = Replica::open_with(
        d2.path(),
        2,
        opts,
        Arc::new(mesh.clone()),
        Arc::new(NoPeers),
    )
    .await
    .unwrap();
    mesh.replicas.lock().unwrap().insert(2, two.clone());
    tokio::time::timeout(Duration::from_secs(60), one.add_learner(2, "n2"))
        .await
        .expect("the learner catches up within a minute")
        .unwrap();
    two.wait_applied(last, Duration::from_secs(30))
        .await
        .unwrap();

    let now = micro_raft::now_millis();
    for i in 0..300u32 {
        let got = two
            .reader()
            .get(format!("k{i:04}").as_bytes(), now)
            .unwrap();
        if i % 50 == 0 {
            assert!(got.is_none(), "k{i:04} was deleted before the snapshot");
        } else {
            assert_eq!(got.expect("a record").value, value(i), "k{i:04}");
        }
    }
    let sent = mesh.chunks.load(Ordering::SeqCst);
    let files = snapshot_files(d2.path());
    assert_eq!(
        files.len(),
        1,
        "the new member keeps one snapshot: {files:?}"
    );
    let size = files[0].1;
    assert!(
        size > 8 * CHUNK && sent >= size.div_ceil(CHUNK),
        "a snapshot of {size} bytes went in {sent} chunks of at most {CHUNK}"
    );
    assert_eq!(snapshot_files(d1.path()).len(), 1, "the leader keeps one");
    two.shutdown().await;
    one.shutdown().await;
}

fn entry(index: u64, txn: Txn) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(micro_raft::Batch(vec![txn])),
    }
}

fn get(sm: &StateMachine, key: &str) -> Option<Vec<u8>> {
    sm.reader()
        .get(key.as_bytes(), 0)
        .expect("read")
        .map(|r| r.value)
}

async fn file_bytes(mut file: Box<tokio::fs::File>) -> Vec<u8> {
    let mut out = Vec::new();
    file.read_to_end(&mut out).await.expect("read snapshot");
    out
}

/// Receives `bytes` the way openraft's chunked receiver does and installs
/// them under `meta`.
async fn install(
    sm: &mut StateMachine,
    meta: &openraft::SnapshotMeta<NodeId, BasicNode>,
    bytes: &[u8],
) -> Result<(), openraft::StorageError<NodeId>> {
    let mut incoming = sm.begin_receiving_snapshot().await?;
    for chunk in bytes.chunks(CHUNK as usize) {
        incoming.write_all(chunk).await.unwrap();
    }
    incoming.flush().await.unwrap();
    sm.install_snapshot(meta, incoming).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_goes_on_while_a_snapshot_is_built_and_the_snapshot_holds_the_cut() {
    let a = tempfile::tempdir().unwrap();
    let (_la, mut sm) = open_storage(a.path()).unwrap();
    let entries: Vec<Entry> = (0..2000u64)
        .map(|i| entry(i + 1, Txn::put(format!("k{i:04}"), "cut", None)))
        .collect();
    sm.apply(entries).await.unwrap();

    // The build stops half-way (after k0999) until the writes are in.
    let (reached_tx, reached_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let pause = Mutex::new((reached_tx, go_rx));
    sm.on_build_progress(Some(Arc::new(move |walked| {
        if walked == 1000 {
            let p = pause.lock().unwrap();
            let _ = p.0.send(());
            let _ = p.1.recv_timeout(Duration::from_secs(30));
        }
    })));
    let mut builder = sm.get_snapshot_builder().await;
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    tokio::task::spawn_blocking(move || reached_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the build reached half-way");

    let later = Txn::ops(vec![
        Op::Delete {
            key: b"k0010".to_vec(),
        },
        Op::Put {
            key: b"k0005".to_vec(),
            value: b"later".to_vec(),
            expires_at: None,
        },
        Op::Put {
            key: b"k1500".to_vec(),
            value: b"later".to_vec(),
            expires_at: None,
        },
        Op::Delete {
            key: b"k1800".to_vec(),
        },
        Op::Put {
            key: b"k2500".to_vec(),
            value: b"later".to_vec(),
            expires_at: None,
        },
    ]);
    tokio::time::timeout(Duration::from_secs(5), sm.apply(vec![entry(2001, later)]))
        .await
        .expect("apply is not blocked by the build")
        .unwrap();
    assert_eq!(get(&sm, "k1500").as_deref(), Some(&b"later"[..]));
    assert_eq!(get(&sm, "k0010"), None);
    go_tx.send(()).unwrap();
    let snap = build.await.unwrap().unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2000));

    let b = tempfile::tempdir().unwrap();
    let (_lb, mut other) = open_storage(b.path()).unwrap();
    let meta = snap.meta.clone();
    let bytes = file_bytes(snap.snapshot).await;
    install(&mut other, &meta, &bytes).await.unwrap();
    let n = other.reader().scan(b"k", 0, false).count();
    assert_eq!(n, 2000, "the snapshot holds the 2000 keys of the cut");
    for key in ["k0005", "k0010", "k1500", "k1800", "k1999"] {
        assert_eq!(
            get(&other, key).as_deref(),
            Some(&b"cut"[..]),
            "{key} as it was at the cut"
        );
    }
    assert_eq!(get(&other, "k2500"), None, "created after the cut");
    let (applied, _) = other.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(2000));
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused_and_changes_nothing() {
    let a = tempfile::tempdir().unwrap();
    let (_la, mut sm) = open_storage(a.path()).unwrap();
    let entries: Vec<Entry> = (0..100u64)
        .map(|i| entry(i + 1, Txn::put(format!("k{i:03}"), "theirs", None)))
        .collect();
    sm.apply(entries).await.unwrap();
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let meta = snap.meta.clone();
    let good = file_bytes(snap.snapshot).await;

    let b = tempfile::tempdir().unwrap();
    let (_lb, mut other) = open_storage(b.path()).unwrap();
    other
        .apply(vec![entry(1, Txn::put("mine", "1", None))])
        .await
        .unwrap();
    let before = other.applied_state().await.unwrap();

    let truncated = &good[..good.len() / 2];
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    for (bytes, reason) in [(truncated, "truncated"), (&flipped[..], "corrupt")] {
        let err = install(&mut other, &meta, bytes).await.unwrap_err();
        assert!(
            err.to_string().contains(reason),
            "the error says the file is {reason}: {err}"
        );
        assert_eq!(get(&other, "mine").as_deref(), Some(&b"1"[..]));
        assert_eq!(get(&other, "k000"), None);
        assert_eq!(other.applied_state().await.unwrap(), before);
        assert!(other.get_current_snapshot().await.unwrap().is_none());
    }
    let files = snapshot_files(b.path());
    assert!(files.is_empty(), "nothing refused is kept: {files:?}");

    // The good file still installs.
    install(&mut other, &meta, &good).await.unwrap();
    assert_eq!(get(&other, "mine"), None);
    assert_eq!(get(&other, "k099").as_deref(), Some(&b"theirs"[..]));
}
