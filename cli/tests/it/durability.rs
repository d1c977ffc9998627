//! Acknowledged writes survive a clean stop and a `kill -9`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use micro_proto::store::{ReadRequest, Record, WriteRequest};

use crate::harness::Server;

#[test]
fn a_clean_stop_and_start_keeps_everything() {
    let mut s = Server::start();
    s.micro(&["store", "write", "k", "v"]).ok();
    s.micro(&["config", "set", "app", r#"{"x":1}"#]).ok();
    assert_eq!(s.terminate(), Some(0), "SIGTERM is a clean exit");
    assert!(
        !s.data.join("listen.json").exists(),
        "a clean stop removes listen.json"
    );
    s.restart();
    assert_eq!(s.micro(&["store", "read", "k"]).ok(), "v\n");
    assert_eq!(s.micro(&["config", "get", "app.x"]).ok(), "1\n");
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nbroker\nconfig\nevents\nregistry\nruntime\nstore\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let mut s = Server::start();
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = s.client("micro").await;
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let mut store = client.store();
            for i in 0.. {
                let key = format!("w{w}/{i:06}");
                let value = format!("value-{w}-{i}");
                let req = WriteRequest {
                    record: Some(Record {
                        key: key.clone(),
                        value: value.clone().into_bytes(),
                        ..Default::default()
                    }),
                    options: None,
                };
                match tokio::time::timeout(Duration::from_secs(5), store.write(req)).await {
                    Ok(Ok(_)) => acked.lock().unwrap().push((key, value)),
                    _ => return, // the server is gone: this write was never acknowledged
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "writers made progress before the kill: {}",
        acked.len()
    );

    s.restart();
    let client = s.client("micro").await;
    let mut store = client.store();
    for (key, value) in &acked {
        let got = store
            .read(ReadRequest {
                key: key.clone(),
                options: None,
            })
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {key} lost: {e}"))
            .into_inner();
        assert_eq!(got.records[0].value, value.as_bytes(), "{key}");
    }
}
