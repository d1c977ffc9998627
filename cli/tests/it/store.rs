//! The store through the CLI and through gRPC.

use micro_proto::store::{ReadOptions, ReadRequest, Record, WriteOptions, WriteRequest};

use crate::harness::Server;

#[test]
fn write_read_prefix_list_delete() {
    let s = Server::start();
    assert_eq!(s.micro(&["store", "write", "somekey", "val1"]).ok(), "");
    assert_eq!(s.micro(&["store", "read", "somekey"]).ok(), "val1\n");
    s.micro(&["store", "write", "user/2", "b"]).ok();
    s.micro(&["store", "write", "user/1", "a"]).ok();
    s.micro(&["store", "write", "user/10", "c"]).ok();
    assert_eq!(
        s.micro(&["store", "read", "--prefix", "user/"]).ok(),
        "a\nc\nb\n",
        "key order"
    );
    assert_eq!(
        s.micro(&["store", "read", "-p", "user/", "--order", "desc"])
            .ok(),
        "b\nc\na\n"
    );
    assert_eq!(
        s.micro(&["store", "read", "-p", "user/", "-l", "1", "-o", "1"])
            .ok(),
        "c\n"
    );
    assert_eq!(s.micro(&["store", "read", "-s", "/1"]).ok(), "a\n");
    assert_eq!(
        s.micro(&["store", "list"]).ok(),
        "somekey\nuser/1\nuser/10\nuser/2\n"
    );
    assert_eq!(
        s.micro(&["store", "list", "--prefix", "user/", "--limit", "2"])
            .ok(),
        "user/1\nuser/10\n"
    );
    assert_eq!(
        s.micro(&["store", "list", "--prefix", "user/", "--output", "json"])
            .ok(),
        "[\"user/1\",\"user/10\",\"user/2\"]\n"
    );
    assert_eq!(
        s.micro(&["store", "read", "-v", "-p", "user/1"]).ok(),
        "KEY      VALUE  EXPIRY\nuser/1   a      None\nuser/10  c      None\n"
    );
    assert_eq!(
        s.micro(&["store", "read", "--output", "json", "user/1"])
            .ok(),
        "[{\"expiry\":0,\"key\":\"user/1\",\"metadata\":{},\"value\":\"a\"}]\n"
    );
    assert_eq!(s.micro(&["store", "delete", "user/1"]).ok(), "");
    s.micro(&["store", "read", "user/1"])
        .fails_with("Not found");
    s.micro(&["store", "read", "-p", "nothing-here/"])
        .fails_with("Not found");
    assert_eq!(s.micro(&["store", "databases"]).ok(), "micro\n");
    assert_eq!(s.micro(&["store", "tables"]).ok(), "micro\n");
}

#[test]
fn expired_records_read_as_not_found_and_leave_lists() {
    let s = Server::start();
    s.micro(&["store", "write", "temp", "x", "--expiry", "2s"])
        .ok();
    s.micro(&["store", "write", "stay", "y"]).ok();
    let verbose = s.micro(&["store", "read", "-v", "temp"]);
    assert!(
        verbose
            .ok()
            .starts_with("KEY   VALUE  EXPIRY\ntemp  x      "),
        "{verbose:?}"
    );
    assert!(
        verbose.stdout.trim_end().ends_with('s'),
        "expiry shown as a duration"
    );
    std::thread::sleep(std::time::Duration::from_millis(2300));
    s.micro(&["store", "read", "temp"]).fails_with("Not found");
    assert_eq!(s.micro(&["store", "list"]).ok(), "stay\n");
}

#[test]
fn namespaces_databases_and_tables_are_isolated() {
    let s = Server::start();
    s.micro(&["store", "write", "k", "in-micro"]).ok();
    s.micro(&["--namespace", "other", "store", "write", "k", "in-other"])
        .ok();
    s.micro(&["store", "write", "--table", "t2", "k", "in-t2"])
        .ok();
    s.micro(&["store", "write", "--database", "db2", "k", "in-db2"])
        .ok();
    assert_eq!(s.micro(&["store", "read", "k"]).ok(), "in-micro\n");
    assert_eq!(
        s.micro(&["--namespace", "other", "store", "read", "k"])
            .ok(),
        "in-other\n"
    );
    assert_eq!(
        s.micro(&["store", "read", "--table", "t2", "k"]).ok(),
        "in-t2\n"
    );
    assert_eq!(
        s.micro(&["store", "read", "--database", "db2", "k"]).ok(),
        "in-db2\n"
    );
    s.micro(&["--namespace", "third", "store", "read", "k"])
        .fails_with("Not found");
    assert_eq!(s.micro(&["store", "databases"]).ok(), "db2\nmicro\n");
    assert_eq!(s.micro(&["store", "tables"]).ok(), "micro\nt2\n");
    assert_eq!(
        s.micro(&["--namespace", "other", "store", "databases"])
            .ok(),
        "other\n"
    );
    s.micro(&["store", "write", "--table", "a/b", "k", "v"])
        .fails_with(
            "Table 'a/b' is not allowed: use letters, digits, '-', '_' and '.' (at most 128)",
        );
}

#[tokio::test]
async fn oversized_values_are_refused_and_change_nothing() {
    let s = Server::start();
    let client = s.client("micro").await;
    let write = |value: Vec<u8>| WriteRequest {
        record: Some(Record {
            key: "big".into(),
            value,
            ..Default::default()
        }),
        options: Some(WriteOptions::default()),
    };
    let limit = 4 * 1024 * 1024;
    let err = client
        .store()
        .write(write(vec![b'a'; limit + 1]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "value is 4194305 bytes; the limit is 4194304 (4 MiB)"
    );
    s.micro(&["store", "read", "big"]).fails_with("Not found");
    // exactly at the limit is fine, and reads back whole
    client
        .store()
        .write(write(vec![b'z'; limit]))
        .await
        .unwrap();
    let got = client
        .store()
        .read(ReadRequest {
            key: "big".into(),
            options: Some(ReadOptions::default()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.records[0].value.len(), limit);
    // an empty key is refused
    let mut empty = write(b"x".to_vec());
    empty.record.as_mut().unwrap().key.clear();
    let err = client.store().write(empty).await.unwrap_err();
    assert_eq!(err.message(), "key must not be empty");
}

#[tokio::test]
async fn metadata_round_trips() {
    let s = Server::start();
    let client = s.client("micro").await;
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(
        "owner".to_string(),
        micro_proto::store::Field {
            r#type: "string".into(),
            value: "alice".into(),
        },
    );
    client
        .store()
        .write(WriteRequest {
            record: Some(Record {
                key: "m".into(),
                value: b"v".to_vec(),
                expiry: 60,
                metadata,
                ..Default::default()
            }),
            options: None,
        })
        .await
        .unwrap();
    let rec = client
        .store()
        .read(ReadRequest {
            key: "m".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .records
        .remove(0);
    assert_eq!(rec.metadata["owner"].value, "alice");
    assert!(
        rec.expiry > 55 && rec.expiry <= 60,
        "expiry is seconds left: {}",
        rec.expiry
    );
}
