//! The transaction language applied through a real one-node Raft group:
//! conditions, operations, expiry, sequences, watches, durability across a
//! restart, and snapshots.

use std::time::Duration;

use micro_raft::{Change, Cond, Error, Op, Options, Replica, Txn};

async fn replica(dir: &std::path::Path) -> Replica {
    let r = Replica::open(dir, 1, Options::default())
        .await
        .expect("open");
    r.bootstrap_alone("127.0.0.1:0".into())
        .await
        .expect("bootstrap");
    r
}

fn value(r: &Replica, key: &str) -> Option<Vec<u8>> {
    r.reader()
        .get(key.as_bytes(), micro_raft::now_millis())
        .expect("read")
        .map(|rec| rec.value)
}

#[tokio::test]
async fn put_get_delete_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    let res = r.write(Txn::put("a", "1", None)).await.unwrap();
    assert!(res.succeeded);
    r.linearize().await.unwrap();
    let rec = r
        .reader()
        .get(b"a", micro_raft::now_millis())
        .unwrap()
        .unwrap();
    assert_eq!(rec.value, b"1");
    assert_eq!(
        rec.version, res.index,
        "a record's version is the index of its write"
    );

    // version-equals guards a compare-and-set
    let stale = r
        .write(Txn::put("a", "2", None).when(Cond::VersionEq(b"a".to_vec(), rec.version + 100)))
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(stale.failed_cond, Some(0));
    assert_eq!(
        value(&r, "a").unwrap(),
        b"1",
        "a failed condition changes nothing"
    );
    let ok = r
        .write(Txn::put("a", "2", None).when(Cond::VersionEq(b"a".to_vec(), rec.version)))
        .await
        .unwrap();
    assert!(ok.succeeded);
    assert_eq!(value(&r, "a").unwrap(), b"2");

    // absent / exists / value-equals
    assert!(
        !r.write(Txn::put("a", "3", None).when(Cond::Absent(b"a".to_vec())))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        r.write(Txn::put("b", "x", None).when(Cond::Absent(b"b".to_vec())))
            .await
            .unwrap()
            .succeeded
    );
    assert!(
        r.write(Txn::delete("b").when(Cond::ValueEq(b"b".to_vec(), b"x".to_vec())))
            .await
            .unwrap()
            .succeeded
    );
    assert_eq!(value(&r, "b"), None);
    assert!(
        !r.write(Txn::delete("a").when(Cond::Exists(b"b".to_vec())))
            .await
            .unwrap()
            .succeeded
    );
    r.shutdown().await;
}

#[tokio::test]
async fn operations_in_one_txn_see_each_other_and_are_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    let txn = Txn::ops(vec![
        Op::Put {
            key: b"p/1".to_vec(),
            value: b"a".to_vec(),
            expires_at: None,
        },
        Op::Put {
            key: b"p/2".to_vec(),
            value: b"b".to_vec(),
            expires_at: None,
        },
        Op::Put {
            key: b"q/1".to_vec(),
            value: b"c".to_vec(),
            expires_at: None,
        },
        Op::DeletePrefix {
            prefix: b"p/".to_vec(),
        },
        Op::Put {
            key: b"p/3".to_vec(),
            value: b"d".to_vec(),
            expires_at: None,
        },
    ]);
    let res = r.write(txn).await.unwrap();
    assert_eq!(res.deleted, 2);
    let now = micro_raft::now_millis();
    let keys: Vec<Vec<u8>> = r
        .reader()
        .scan(b"", now, false)
        .map(|i| i.unwrap().0)
        .collect();
    assert_eq!(keys, vec![b"p/3".to_vec(), b"q/1".to_vec()]);
    let rev: Vec<Vec<u8>> = r
        .reader()
        .scan(b"", now, true)
        .map(|i| i.unwrap().0)
        .collect();
    assert_eq!(rev, vec![b"q/1".to_vec(), b"p/3".to_vec()]);
    r.shutdown().await;
}

#[tokio::test]
async fn append_assigns_ordered_sequence_keys() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    let mut keys = Vec::new();
    for i in 0..12 {
        let res = r
            .write(Txn::ops(vec![Op::Append {
                prefix: b"ev/".to_vec(),
                value: vec![i],
                expires_at: None,
            }]))
            .await
            .unwrap();
        keys.extend(res.appended);
    }
    assert_eq!(keys[0], b"ev/00000000000000000001".to_vec());
    assert_eq!(keys[11], b"ev/00000000000000000012".to_vec());
    let values: Vec<u8> = r
        .reader()
        .scan(b"ev/", micro_raft::now_millis(), false)
        .map(|i| i.unwrap().1.value[0])
        .collect();
    assert_eq!(
        values,
        (0..12).collect::<Vec<u8>>(),
        "sequence keys sort in append order"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn a_range_scan_starts_at_a_key_in_either_direction() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    let mut ops: Vec<Op> = (1..=20u8)
        .map(|i| Op::Append {
            prefix: b"ev/".to_vec(),
            value: vec![i],
            expires_at: None,
        })
        .collect();
    // Neighbours on both sides of the prefix must never show up.
    for k in ["eu/x", "ev", "ev0", "ew/1"] {
        ops.push(Op::Put {
            key: k.as_bytes().to_vec(),
            value: vec![0],
            expires_at: None,
        });
    }
    ops.push(Op::Delete {
        key: micro_raft::sequence_key(b"ev/", 10),
    });
    r.write(Txn::ops(ops)).await.unwrap();
    let at = |seq: u64| micro_raft::sequence_key(b"ev/", seq);
    let scan = |from: &[u8], reverse: bool| -> Vec<u8> {
        r.reader()
            .scan_from(b"ev/", from, micro_raft::now_millis(), reverse)
            .map(|i| i.unwrap().1.value[0])
            .collect()
    };
    assert_eq!(scan(&at(15), false), vec![15, 16, 17, 18, 19, 20]);
    assert_eq!(scan(&at(5), true), vec![5, 4, 3, 2, 1]);
    assert_eq!(
        scan(&at(10), false)[..2],
        [11, 12],
        "a missing start key begins at the next one"
    );
    assert_eq!(scan(&at(10), true)[..2], [9, 8]);
    let all: Vec<u8> = (1..=20).filter(|i| *i != 10).collect();
    assert_eq!(
        scan(b"a", false),
        all,
        "a start before the prefix is clamped"
    );
    assert_eq!(
        scan(b"zz", true),
        all.iter().rev().copied().collect::<Vec<u8>>(),
        "a start after the prefix is clamped"
    );
    assert!(scan(b"zz", false).is_empty());
    assert!(scan(b"a", true).is_empty());
    assert!(scan(&at(21), false).is_empty());
    r.shutdown().await;
}

#[tokio::test]
async fn an_index_names_the_appended_key_and_a_range_delete_trims_the_oldest() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    for i in 0..5u8 {
        let res = r
            .write(
                Txn::ops(vec![
                    Op::Append {
                        prefix: b"t/log/".to_vec(),
                        value: vec![i],
                        expires_at: None,
                    },
                    Op::PutAppendedKey {
                        key: format!("t/id/m{i}").into_bytes(),
                        expires_at: None,
                    },
                ])
                .when(Cond::Absent(format!("t/id/m{i}").into_bytes())),
            )
            .await
            .unwrap();
        assert!(res.succeeded);
    }
    r.linearize().await.unwrap();
    assert_eq!(
        value(&r, "t/id/m3").unwrap(),
        b"t/log/00000000000000000004".to_vec(),
        "the index holds the key its append wrote"
    );
    // a repeat of an indexed name fails its condition and appends nothing
    let again = r
        .write(
            Txn::ops(vec![Op::Append {
                prefix: b"t/log/".to_vec(),
                value: vec![9],
                expires_at: None,
            }])
            .when(Cond::Absent(b"t/id/m3".to_vec())),
        )
        .await
        .unwrap();
    assert!(!again.succeeded);

    // trim everything below sequence 4, two records per entry at most
    let start = micro_raft::sequence_key(b"t/log/", 0);
    let end = micro_raft::sequence_key(b"t/log/", 4);
    let first = r
        .write(Txn::ops(vec![Op::DeleteRange {
            start: start.clone(),
            end: end.clone(),
            limit: 2,
        }]))
        .await
        .unwrap();
    assert_eq!(first.deleted, 2, "the limit bounds one entry's work");
    let second = r
        .write(Txn::ops(vec![Op::DeleteRange {
            start,
            end,
            limit: 100,
        }]))
        .await
        .unwrap();
    assert_eq!(second.deleted, 1);
    r.linearize().await.unwrap();
    let left: Vec<u8> = r
        .reader()
        .scan(b"t/log/", micro_raft::now_millis(), false)
        .map(|i| i.unwrap().1.value[0])
        .collect();
    assert_eq!(
        left,
        vec![3, 4],
        "the oldest went first; the end is excluded"
    );
    assert!(value(&r, "t/id/m0").is_some(), "other keys are untouched");
    r.shutdown().await;
}

#[tokio::test]
async fn expired_records_are_hidden_then_purged_by_the_leader() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    let sweeper = r.spawn_expiry_sweeper(Duration::from_millis(100));
    let soon = micro_raft::now_millis() + 300;
    r.write(Txn::put("t", "x", Some(soon))).await.unwrap();
    r.write(Txn::put("keep", "y", None)).await.unwrap();
    assert_eq!(value(&r, "t").unwrap(), b"x");
    // Hidden by the reader's clock as soon as the expiry passes...
    assert_eq!(r.reader().get(b"t", soon).unwrap(), None);
    // ...and an absent-condition judged at a later `now` sees it as gone.
    let mut txn = Txn::put("t", "new", None).when(Cond::Absent(b"t".to_vec()));
    txn.now = soon + 1;
    assert!(r.write(txn).await.unwrap().succeeded);
    r.write(Txn::put("t2", "x", Some(micro_raft::now_millis() + 200)))
        .await
        .unwrap();
    let mut changes = r.subscribe();
    // The sweeper removes it from storage: the delete shows as a change.
    let deleted = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let batch = changes.recv().await.unwrap();
            if batch.iter().any(|c| {
                *c == Change::Delete {
                    key: b"t2".to_vec(),
                }
            }) {
                return;
            }
        }
    })
    .await;
    assert!(deleted.is_ok(), "the expired record was not purged");
    assert_eq!(
        r.reader().first_expiry().unwrap(),
        None,
        "expiry index emptied"
    );
    assert_eq!(value(&r, "keep").unwrap(), b"y");
    sweeper.abort();
    r.shutdown().await;
}

#[tokio::test]
async fn children_lists_distinct_segments() {
    let dir = tempfile::tempdir().unwrap();
    let r = replica(dir.path()).await;
    for k in [
        "s/db1/t1/a",
        "s/db1/t2/a",
        "s/db1/t2/b",
        "s/db2/t1/a",
        "s/x",
        "t/db9/z/a",
    ] {
        r.write(Txn::put(k, "v", None)).await.unwrap();
    }
    let now = micro_raft::now_millis();
    let dbs = r.reader().children(b"s/", b'/', now).unwrap();
    assert_eq!(dbs, vec![b"db1".to_vec(), b"db2".to_vec()]);
    let tables = r.reader().children(b"s/db1/", b'/', now).unwrap();
    assert_eq!(tables, vec![b"t1".to_vec(), b"t2".to_vec()]);
    r.shutdown().await;
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let r = replica(dir.path()).await;
        for i in 0..50 {
            r.write(Txn::put(format!("k{i:02}"), format!("v{i}"), None))
                .await
                .unwrap();
        }
        r.shutdown().await;
    }
    let r = replica(dir.path()).await;
    r.linearize().await.unwrap();
    for i in 0..50 {
        assert_eq!(
            value(&r, &format!("k{i:02}")).unwrap(),
            format!("v{i}").into_bytes()
        );
    }
    // and the sequence counter carried over too
    let res = r.write(Txn::put("after", "restart", None)).await.unwrap();
    assert!(res.index > 50);
    r.shutdown().await;
}

#[tokio::test]
async fn snapshot_compacts_the_log_and_restores_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        snapshot_after: 50,
        ..Options::default()
    };
    {
        let r = Replica::open(dir.path(), 1, opts.clone()).await.unwrap();
        r.bootstrap_alone("127.0.0.1:0".into()).await.unwrap();
        for i in 0..200u32 {
            r.write(Txn::put(format!("k{i:03}"), i.to_string(), None))
                .await
                .unwrap();
        }
        let at = r
            .build_snapshot(Duration::from_secs(10))
            .await
            .expect("snapshot built");
        assert!(at >= 200, "the snapshot covers every write");
        r.shutdown().await;
    }
    let r = Replica::open(dir.path(), 1, opts).await.unwrap();
    r.bootstrap_alone("127.0.0.1:0".into()).await.unwrap();
    r.linearize().await.unwrap();
    for i in [0u32, 99, 199] {
        assert_eq!(
            value(&r, &format!("k{i:03}")).unwrap(),
            i.to_string().into_bytes()
        );
    }
    r.shutdown().await;
}

#[tokio::test]
async fn a_write_without_a_leader_fails_clearly() {
    // A replica that was never bootstrapped has no leader and must say so
    // rather than hang or acknowledge.
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        leader_wait: Duration::from_millis(300),
        ..Options::default()
    };
    let r = Replica::open(dir.path(), 1, opts).await.unwrap();
    let err = r.write(Txn::put("a", "b", None)).await.unwrap_err();
    assert!(matches!(err, Error::NoLeader), "{err}");
    r.shutdown().await;
}
