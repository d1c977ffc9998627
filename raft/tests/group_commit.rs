//! Group commit: many transactions in one Raft entry, each with its own
//! outcome and its own request id, applied in the order they were proposed.

use std::collections::BTreeSet;

use micro_raft::{open_storage, Batch, Cond, Entry, Op, Options, Replica, Txn};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

fn batch_entry(index: u64, txns: Vec<Txn>) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch(txns)),
    }
}

fn put(key: &str, value: &str) -> Txn {
    let mut t = Txn::put(key, value, None);
    t.now = 1_700_000_000_000;
    t
}

#[tokio::test]
async fn a_failing_condition_in_the_middle_of_a_batch_fails_only_its_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_storage(dir.path()).unwrap();
    let txns = vec![
        put("a", "1"),
        // Sees the write before it in the same batch: `a` exists now.
        put("b", "2").when(Cond::Absent(b"a".to_vec())),
        put("c", "3").when(Cond::Exists(b"a".to_vec())),
        put("a", "4").when(Cond::ValueEq(b"a".to_vec(), b"1".to_vec())),
    ];
    let outcomes = sm.apply(vec![batch_entry(1, txns)]).await.unwrap();
    assert_eq!(outcomes.len(), 1, "one entry");
    let o = &outcomes[0];
    assert_eq!(o.len(), 4, "one outcome per transaction");
    assert!(o[0].succeeded);
    assert!(
        !o[1].succeeded,
        "the failed condition fails its transaction"
    );
    assert_eq!(o[1].failed_cond, Some(0));
    assert!(o[2].succeeded, "and the ones after it still apply");
    assert!(o[3].succeeded);
    let r = sm.reader();
    let now = 1_700_000_000_000;
    assert_eq!(r.get(b"a", now).unwrap().unwrap().value, b"4");
    assert!(r.get(b"b", now).unwrap().is_none(), "b was never written");
    assert_eq!(r.get(b"c", now).unwrap().unwrap().value, b"3");
}

#[tokio::test]
async fn request_ids_count_per_transaction_inside_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open_storage(dir.path()).unwrap();
    let append = |v: &str, id: u128| {
        let mut t = Txn::ops(vec![Op::Append {
            prefix: b"l/".to_vec(),
            value: v.as_bytes().to_vec(),
            expires_at: None,
        }])
        .with_request(id);
        t.now = 1_700_000_000_000;
        t
    };
    // The same write twice in one batch (a retry that caught up with its
    // first attempt), between two others.
    let first = sm
        .apply(vec![batch_entry(
            1,
            vec![
                append("x", 1),
                append("y", 2),
                append("y", 2),
                append("z", 3),
            ],
        )])
        .await
        .unwrap();
    let o = &first[0];
    assert_eq!(o[1], o[2], "the repeat gets the first outcome");
    // A later batch repeating the middle write changes nothing either.
    let second = sm
        .apply(vec![batch_entry(2, vec![append("y", 2), append("w", 4)])])
        .await
        .unwrap();
    assert_eq!(second[0][0], o[1]);
    let values: Vec<Vec<u8>> = sm
        .reader()
        .scan(b"l/", 0, false)
        .map(|r| r.unwrap().1.value)
        .collect();
    assert_eq!(
        values,
        vec![b"x".to_vec(), b"y".to_vec(), b"z".to_vec(), b"w".to_vec()],
        "y applied once"
    );
}

/// A client that sends writes one after another without waiting for each
/// (pipelined) sees them applied in the order it sent them, even when they
/// share batches.
#[tokio::test]
async fn batching_keeps_the_order_a_client_sent_its_writes_in() {
    let dir = tempfile::tempdir().unwrap();
    let r = Replica::open(dir.path(), 1, Options::default())
        .await
        .unwrap();
    r.bootstrap_alone("127.0.0.1:0".into()).await.unwrap();
    // The first write makes this replica a leader with a committed entry.
    r.write(Txn::put("warm", "up", None)).await.unwrap();
    let n = 300;
    let writes = (0..n).map(|i| {
        r.write(Txn::ops(vec![Op::Append {
            prefix: b"seq/".to_vec(),
            value: format!("{i}").into_bytes(),
            expires_at: None,
        }]))
    });
    let results = futures::future::join_all(writes).await;
    let mut indexes = BTreeSet::new();
    for res in &results {
        let res = res.as_ref().expect("write");
        assert!(res.succeeded);
        indexes.insert(res.index);
    }
    assert!(
        indexes.len() < n,
        "{n} concurrent writes shared entries (group commit): {} entries",
        indexes.len()
    );
    let values: Vec<String> = r
        .reader()
        .scan(b"seq/", 0, false)
        .map(|x| String::from_utf8(x.unwrap().1.value).unwrap())
        .collect();
    let sent: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
    assert_eq!(values, sent, "applied in the order sent");
    r.shutdown().await;
}
