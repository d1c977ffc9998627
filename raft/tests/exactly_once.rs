//! Exactly-once at the state machine, driven through openraft's storage
//! API (`open_storage`): entries carrying the same request id — an entry an
//! old leader appended that survived into the next term, and the same write
//! proposed again after the leader change — are applied once and both get
//! the first outcome; ids age out by replicated time only, identically on
//! every replica; snapshots carry the table.

use std::io::Cursor;

use micro_raft::{open_storage, Batch, Entry, Op, StateMachine, Txn, TxnResult, REQUEST_WINDOW_MS};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn entry(term: u64, leader: u64, index: u64, txn: Txn) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: EntryPayload::Normal(Batch(vec![txn])),
    }
}

fn blank(term: u64, leader: u64, index: u64) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, leader), index),
        payload: EntryPayload::Blank,
    }
}

fn append(value: &str, now: u64, request: Option<u128>) -> Txn {
    let mut t = Txn::ops(vec![Op::Append {
        prefix: b"list/".to_vec(),
        value: value.as_bytes().to_vec(),
        expires_at: None,
    }]);
    t.now = now;
    t.request = request;
    t
}

fn list(sm: &StateMachine) -> Vec<Vec<u8>> {
    sm.reader()
        .scan(b"list/", 0, false)
        .map(|r| r.expect("scan").1.value)
        .collect()
}

/// Applies entries of one transaction each (or none): one outcome per entry.
async fn apply(sm: &mut StateMachine, entries: Vec<Entry>) -> Vec<TxnResult> {
    let outcomes = sm.apply(entries).await.expect("apply");
    outcomes
        .into_iter()
        .map(|o| o.into_iter().next().unwrap_or_default())
        .collect()
}

const NOW: u64 = 1_700_000_000_000;

#[tokio::test]
async fn an_entry_re_proposed_after_a_leader_change_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_storage(dir.path()).unwrap();
    // Term 1, leader 1 appended the write at index 2 and lost leadership
    // before it learned it committed; its client saw ForwardToLeader and
    // sent the same write (same id) to leader 2, whose log still held it.
    let id = 0x5eed_u128;
    let results = apply(
        &mut sm,
        vec![
            blank(1, 1, 1),
            entry(1, 1, 2, append("a", NOW, Some(id))),
            blank(2, 2, 3),
            entry(2, 2, 4, append("a", NOW, Some(id))),
        ],
    )
    .await;
    assert_eq!(
        list(&sm),
        vec![b"a".to_vec()],
        "the list holds the value once"
    );
    assert_eq!(results[1].index, 2);
    assert_eq!(
        results[3], results[1],
        "the re-proposed write gets the first outcome (same index, same key)"
    );
    assert_eq!(results[3].appended.len(), 1);

    // Same id with different operations: still nothing happens.
    let mut other = Txn::put("x", "1", None);
    other.now = NOW + 1;
    other.request = Some(id);
    let r = apply(&mut sm, vec![entry(2, 2, 5, other)]).await;
    assert_eq!(r[0], results[1]);
    assert_eq!(sm.reader().get(b"x", 0).unwrap(), None);

    // A condition that failed is an outcome too: remembered as it was.
    let mut guarded = Txn::put("y", "1", None).when(micro_raft::Cond::Exists(b"nope".to_vec()));
    guarded.now = NOW + 2;
    guarded.request = Some(99);
    let first = apply(&mut sm, vec![entry(2, 2, 6, guarded.clone())]).await;
    assert!(!first[0].succeeded);
    let again = apply(&mut sm, vec![entry(2, 2, 7, guarded)]).await;
    assert_eq!(again[0], first[0]);

    // Without an id, nothing is deduplicated (the old behaviour).
    apply(
        &mut sm,
        vec![
            entry(2, 2, 8, append("b", NOW, None)),
            entry(2, 2, 9, append("b", NOW, None)),
        ],
    )
    .await;
    assert_eq!(list(&sm).len(), 3);
}

#[tokio::test]
async fn request_ids_age_out_by_replicated_time_on_every_replica_alike() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_la, mut sma) = open_storage(a.path()).unwrap();
    let (_lb, mut smb) = open_storage(b.path()).unwrap();
    let entries = vec![
        entry(1, 1, 1, append("first", NOW, Some(1))),
        // Just inside the window: id 1 is still remembered.
        entry(1, 1, 2, append("other", NOW + REQUEST_WINDOW_MS, Some(2))),
        entry(1, 1, 3, append("first", NOW, Some(1))),
        // Past the window: this entry forgets id 1...
        entry(
            1,
            1,
            4,
            append("late", NOW + REQUEST_WINDOW_MS + 1, Some(3)),
        ),
        // ...so a retry this late applies again.
        entry(1, 1, 5, append("first", NOW, Some(1))),
    ];
    let ra = apply(&mut sma, entries.clone()).await;
    let rb = apply(&mut smb, entries).await;
    assert_eq!(ra, rb, "replicas agree on every outcome");
    assert_eq!(ra[2], ra[0], "inside the window the retry is deduplicated");
    assert_eq!(ra[4].index, 5, "past the window it applies anew");
    let values: Vec<Vec<u8>> = list(&sma);
    assert_eq!(
        values,
        vec![
            b"first".to_vec(),
            b"other".to_vec(),
            b"late".to_vec(),
            b"first".to_vec()
        ]
    );
    assert_eq!(list(&smb), values);
    // The remembered tables are the same bytes on both.
    let sa = sma
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let sb = smb
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(sa.snapshot.into_inner(), sb.snapshot.into_inner());
}

#[tokio::test]
async fn a_snapshot_carries_the_remembered_requests() {
    let a = tempfile::tempdir().unwrap();
    let (_la, mut sma) = open_storage(a.path()).unwrap();
    let first = apply(&mut sma, vec![entry(1, 1, 1, append("a", NOW, Some(7)))]).await;
    let snap = sma
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();

    // A follower that catches up from the snapshot, then gets the write
    // proposed again: it must not apply it a second time.
    let b = tempfile::tempdir().unwrap();
    let (_lb, mut smb) = open_storage(b.path()).unwrap();
    let bytes = snap.snapshot.into_inner();
    smb.install_snapshot(&snap.meta, Box::new(Cursor::new(bytes)))
        .await
        .unwrap();
    assert_eq!(list(&smb), vec![b"a".to_vec()]);
    let again = apply(&mut smb, vec![entry(2, 2, 2, append("a", NOW, Some(7)))]).await;
    assert_eq!(again[0], first[0]);
    assert_eq!(list(&smb), vec![b"a".to_vec()]);

    // And across a restart of the installed replica.
    drop(smb);
    drop(_lb);
    // sled lets go of its file lock from its own threads, a moment after
    // the last handle is dropped: wait for it rather than race it.
    let mut tries = 0;
    let (_lb, mut smb) = loop {
        match open_storage(b.path()) {
            Ok(s) => break s,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot reopen the replica: {e}"),
        }
    };
    let again = apply(&mut smb, vec![entry(2, 2, 3, append("a", NOW, Some(7)))]).await;
    assert_eq!(again[0], first[0]);
    assert_eq!(list(&smb), vec![b"a".to_vec()]);
}

#[tokio::test]
async fn entries_written_before_request_ids_still_read() {
    // A data dir from an older build: log entries encoded without the
    // request field. The log store reads them as writes without an id.
    #[derive(serde::Serialize)]
    struct OldTxn {
        conds: Vec<micro_raft::Cond>,
        ops: Vec<Op>,
        now: u64,
    }
    #[derive(serde::Serialize)]
    enum OldPayload {
        #[allow(dead_code)]
        Blank,
        Normal(OldTxn),
    }
    #[derive(serde::Serialize)]
    struct OldEntry {
        log_id: LogId<u64>,
        payload: OldPayload,
    }
    let old = OldEntry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), 9),
        payload: OldPayload::Normal(OldTxn {
            conds: vec![],
            ops: vec![Op::Delete { key: b"k".to_vec() }],
            now: 5,
        }),
    };
    let raw = bincode::serialize(&old).unwrap();
    let e = micro_raft::txn::decode_entry(&raw).expect("old entry decodes");
    assert_eq!(e.log_id.index, 9);
    match e.payload {
        EntryPayload::Normal(Batch(txns)) => {
            assert_eq!(txns.len(), 1);
            let t = &txns[0];
            assert_eq!(t.now, 5);
            assert_eq!(t.request, None);
            assert_eq!(t.ops, vec![Op::Delete { key: b"k".to_vec() }]);
        }
        _ => panic!("expected a normal entry"),
    }
    // An entry of one transaction with a request id (before batches)
    // decodes as a batch of it.
    #[derive(serde::Serialize)]
    enum TxnPayload {
        #[allow(dead_code)]
        Blank,
        Normal(Txn),
    }
    #[derive(serde::Serialize)]
    struct TxnEntry {
        log_id: LogId<u64>,
        payload: TxnPayload,
    }
    let one = append("v", 1, Some(7));
    let raw = bincode::serialize(&TxnEntry {
        log_id: LogId::new(CommittedLeaderId::new(2, 1), 4),
        payload: TxnPayload::Normal(one.clone()),
    })
    .unwrap();
    let e = micro_raft::txn::decode_entry(&raw).expect("entry of one txn decodes");
    assert_eq!(e.payload, EntryPayload::Normal(Batch(vec![one])));
    // And the batch encoding round-trips with its ids.
    let new = Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
        payload: EntryPayload::Normal(Batch(vec![
            append("v", 1, Some(u128::MAX)),
            append("w", 1, Some(3)),
        ])),
    };
    let raw = micro_raft::txn::encode_entry(&new).unwrap();
    let back = micro_raft::txn::decode_entry(&raw).unwrap();
    assert_eq!(back.payload, new.payload);
}
