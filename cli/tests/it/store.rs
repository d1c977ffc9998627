//! The store through the CLI, gRPC and the gateway, compare-and-set
//! included.

use micro_proto::store::{
    DeleteOptions, DeleteRequest, ReadOptions, ReadRequest, Record, WriteOptions, WriteRequest,
};

use crate::harness::{http_send, Server};

/// The VERSION column of `micro store read KEY -v` (one record).
#[track_caller]
fn version_of(s: &Server, key: &str) -> u64 {
    let table = s.micro(&["store", "read", "-v", key]).ok().to_string();
    let mut lines = table.lines();
    assert_eq!(
        lines
            .next()
            .map(|h| h.split_whitespace().collect::<Vec<_>>()),
        Some(vec!["KEY", "VALUE", "EXPIRY", "VERSION"]),
        "{table}"
    );
    let row = lines.next().unwrap_or_else(|| panic!("no row: {table}"));
    row.split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no version in {row:?}"))
}

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
    // Versions are log indexes: user/1 was written before user/10.
    let table = s
        .micro(&["store", "read", "-v", "-p", "user/1"])
        .ok()
        .to_string();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(rows[0], ["KEY", "VALUE", "EXPIRY", "VERSION"], "{table}");
    assert_eq!(rows[1][..3], ["user/1", "a", "None"], "{table}");
    assert_eq!(rows[2][..3], ["user/10", "c", "None"], "{table}");
    let v1: u64 = rows[1][3].parse().unwrap();
    let v10: u64 = rows[2][3].parse().unwrap();
    assert!(0 < v1 && v1 < v10, "{table}");
    assert!(
        table.starts_with("KEY      VALUE  EXPIRY  VERSION\nuser/1   a      None    "),
        "columns line up: {table}"
    );
    assert_eq!(
        s.micro(&["store", "read", "--output", "json", "user/1"])
            .ok(),
        format!(
            "[{{\"expiry\":0,\"key\":\"user/1\",\"metadata\":{{}},\"value\":\"a\",\"version\":{v1}}}]\n"
        )
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
            .starts_with("KEY   VALUE  EXPIRY  VERSION\ntemp  x      "),
        "{verbose:?}"
    );
    let row: Vec<&str> = verbose
        .stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(row[2].ends_with('s'), "expiry shown as a duration: {row:?}");
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

#[test]
fn compare_and_set_through_the_cli() {
    let s = Server::start();
    assert_eq!(
        s.micro(&["store", "write", "counter", "1", "--if-absent"])
            .ok(),
        "Created\n"
    );
    let v1 = version_of(&s, "counter");
    let second = s.micro(&["store", "write", "counter", "2", "--if-absent"]);
    assert_eq!(second.code, 1, "{second:?}");
    second.fails_with(&format!("Already exists: counter is at version {v1}"));
    assert_eq!(s.micro(&["store", "read", "counter"]).ok(), "1\n");
    assert_eq!(version_of(&s, "counter"), v1, "a conflict writes nothing");

    // The right version: written, as a plain write prints nothing.
    assert_eq!(
        s.micro(&[
            "store",
            "write",
            "counter",
            "2",
            "--if-version",
            &v1.to_string()
        ])
        .ok(),
        ""
    );
    let v2 = version_of(&s, "counter");
    assert!(v2 > v1, "{v2} > {v1}");
    assert_eq!(s.micro(&["store", "read", "counter"]).ok(), "2\n");
    // A stale version: refused, naming the current one.
    let stale = s.micro(&[
        "store",
        "write",
        "counter",
        "3",
        "--if-version",
        &v1.to_string(),
    ]);
    assert_eq!(stale.code, 1, "{stale:?}");
    stale.fails_with(&format!("Version mismatch: counter is at version {v2}"));
    assert_eq!(s.micro(&["store", "read", "counter"]).ok(), "2\n");
    s.micro(&["store", "write", "nothing", "x", "--if-version", "5"])
        .fails_with("Version mismatch: nothing does not exist");
    s.micro(&["store", "read", "nothing"])
        .fails_with("Not found");

    // Conditional delete: a stale version deletes nothing.
    s.micro(&[
        "store",
        "delete",
        "counter",
        "--if-version",
        &v1.to_string(),
    ])
    .fails_with(&format!("Version mismatch: counter is at version {v2}"));
    assert_eq!(s.micro(&["store", "read", "counter"]).ok(), "2\n");
    assert_eq!(
        s.micro(&[
            "store",
            "delete",
            "counter",
            "--if-version",
            &v2.to_string()
        ])
        .ok(),
        ""
    );
    s.micro(&["store", "read", "counter"])
        .fails_with("Not found");
    // Gone: it may be created again.
    assert_eq!(
        s.micro(&["store", "write", "counter", "a", "--if-absent"])
            .ok(),
        "Created\n"
    );

    // The two conditions exclude each other; version 0 is no version.
    let both = s.micro(&[
        "store",
        "write",
        "counter",
        "b",
        "--if-absent",
        "--if-version",
        "3",
    ]);
    assert_eq!(both.code, 1, "{both:?}");
    assert!(
        both.stderr.contains("--if-absent") && both.stderr.lines().count() == 1,
        "{both:?}"
    );
    let zero = s.micro(&["store", "write", "counter", "b", "--if-version", "0"]);
    assert_eq!(zero.code, 1, "{zero:?}");
    assert_eq!(s.micro(&["store", "read", "counter"]).ok(), "a\n");
}

#[tokio::test]
async fn compare_and_set_through_grpc() {
    let s = Server::start();
    let client = s.client("micro").await;
    let write = |value: &str, if_absent: bool, if_version: u64| WriteRequest {
        record: Some(Record {
            key: "k".into(),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        options: Some(WriteOptions {
            if_absent,
            if_version,
            ..Default::default()
        }),
    };
    let read = || async {
        let rec = client
            .store()
            .read(ReadRequest {
                key: "k".into(),
                options: None,
            })
            .await
            .unwrap()
            .into_inner()
            .records
            .remove(0);
        (String::from_utf8(rec.value).unwrap(), rec.version)
    };

    let v1 = client
        .store()
        .write(write("one", true, 0))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(v1 > 0);
    assert_eq!(
        read().await,
        ("one".to_string(), v1),
        "the reply's version is the record's"
    );

    let err = client
        .store()
        .write(write("two", true, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert_eq!(
        err.message(),
        format!("Already exists: k is at version {v1}")
    );
    assert_eq!(read().await, ("one".to_string(), v1));

    let v2 = client
        .store()
        .write(write("two", false, v1))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(v2 > v1);
    assert_eq!(read().await, ("two".to_string(), v2));
    let err = client
        .store()
        .write(write("three", false, v1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert_eq!(
        err.message(),
        format!("Version mismatch: k is at version {v2}")
    );
    assert_eq!(read().await, ("two".to_string(), v2));

    let err = client
        .store()
        .write(write("three", true, v2))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        "if_absent and if_version cannot be combined; use one of them"
    );

    // A plain write still replaces whatever is there, and says its version.
    let v3 = client
        .store()
        .write(write("plain", false, 0))
        .await
        .unwrap()
        .into_inner()
        .version;
    assert!(v3 > v2);
    assert_eq!(read().await, ("plain".to_string(), v3));

    let delete = |if_version| DeleteRequest {
        key: "k".into(),
        options: Some(DeleteOptions {
            if_version,
            ..Default::default()
        }),
    };
    let err = client.store().delete(delete(v2)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert_eq!(
        err.message(),
        format!("Version mismatch: k is at version {v3}")
    );
    assert_eq!(read().await, ("plain".to_string(), v3));
    client.store().delete(delete(v3)).await.unwrap();
    let err = client.store().delete(delete(v3)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Aborted, "{err:?}");
    assert_eq!(err.message(), "Version mismatch: k does not exist");
}

#[test]
fn a_compare_and_set_conflict_over_http_is_a_409() {
    let s = Server::start();
    let write = |body: &str| {
        http_send(
            &s.api,
            "POST",
            "/store/Store/Write",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    // "MQ==" and "Mg==" are "1" and "2": bytes travel as base64 in JSON.
    let first = r#"{"record":{"key":"g","value":"MQ=="},"options":{"if_absent":true}}"#;
    let (status, body) = write(first);
    assert_eq!(status, 200, "{body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    let version = match &reply["version"] {
        serde_json::Value::String(v) => v.parse::<u64>().ok(),
        v => v.as_u64(),
    }
    .unwrap_or_else(|| panic!("no version in {body}"));
    assert_eq!(version_of(&s, "g"), version);

    let (status, body) = write(first.replace("MQ==", "Mg==").as_str());
    assert_eq!(status, 409, "{body}");
    let err: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert_eq!(err["code"], 409, "{body}");
    assert_eq!(err["status"], "Conflict", "{body}");
    assert_eq!(err["id"], "store", "{body}");
    assert_eq!(
        err["detail"],
        format!("Already exists: g is at version {version}"),
        "{body}"
    );

    let stale = format!(
        r#"{{"record":{{"key":"g","value":"Mg=="}},"options":{{"if_version":"{}"}}}}"#,
        version + 1000
    );
    let (status, body) = write(&stale);
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains(&format!("Version mismatch: g is at version {version}")),
        "{body}"
    );
    assert_eq!(s.micro(&["store", "read", "g"]).ok(), "1\n");
    assert_eq!(version_of(&s, "g"), version);
}
