//! `micro-bench store`: store writes then reads over gRPC, against a node
//! started in this process or a running one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use micro_proto::store::{ReadRequest, Record, WriteRequest};

use crate::phase::phase;

async fn start_node() -> Result<(String, tempfile::TempDir), String> {
    let (listen, dir) = start_node_full().await?;
    Ok((
        listen["proxy"].as_str().unwrap_or_default().to_string(),
        dir,
    ))
}

pub async fn start_node_full() -> Result<(serde_json::Value, tempfile::TempDir), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data: PathBuf = dir.path().join("data");
    let opts = micro_node::ServerOptions {
        api_address: "127.0.0.1:0".into(),
        proxy_address: "127.0.0.1:0".into(),
        web_address: "127.0.0.1:0".into(),
        cluster_address: "127.0.0.1:0".into(),
        // Nothing but the node on the CPU while it is measured.
        runtime_warm_up: false,
        ..micro_node::ServerOptions::new(data.clone())
    };
    tokio::spawn(async move {
        if let Err(e) = micro_node::run(opts, std::future::pending()).await {
            eprintln!("node: {e}");
        }
    });
    let listen = data.join("listen.json");
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&listen) {
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
            return Ok((v, dir));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("the in-process node did not start".into())
}

pub async fn store(
    address: Option<String>,
    clients: usize,
    seconds: u64,
    value_size: usize,
) -> Result<(), String> {
    let (address, _dir, how) = match address {
        Some(a) => (a, None, "running node"),
        None => {
            let (a, d) = start_node().await?;
            (a, Some(d), "in-process node")
        }
    };
    println!(
        "micro-bench store: {clients} clients, {value_size}-byte values, {seconds}s per phase, {how} at {address}"
    );
    store_phases(&address, clients, seconds, value_size, "bench").await
}

/// The store benchmark proper: `clients` connections to `address` write
/// fresh keys under `prefix` for `seconds`, then read them back for
/// `seconds`; prints one line per phase.
pub async fn store_phases(
    address: &str,
    clients: usize,
    seconds: u64,
    value_size: usize,
    prefix: &str,
) -> Result<(), String> {
    let mut conns = Vec::new();
    for _ in 0..clients.max(1) {
        conns.push(
            micro::Client::connect(address, "bench")
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let value = Arc::new(vec![b'x'; value_size]);
    let writes = {
        let (value, prefix) = (value.clone(), prefix.to_string());
        phase("write", conns.clone(), seconds, move |client, c, i| {
            let value = value.clone();
            let key = format!("{prefix}/{c:03}/{i:09}");
            async move {
                let req = WriteRequest {
                    record: Some(Record {
                        key,
                        value: value.to_vec(),
                        ..Default::default()
                    }),
                    options: None,
                };
                client.store().write(req).await.is_ok()
            }
        })
        .await
    };
    // Each client reads back keys it wrote, cycling through them. Writes
    // succeed in order, so keys 0..count of each client exist.
    let per_client = writes.per_client.iter().copied().min().unwrap_or(1).max(1);
    writes.report();
    let prefix = prefix.to_string();
    let reads = phase("read", conns, seconds, move |client, c, i| {
        let key = format!("{prefix}/{c:03}/{:09}", (i.wrapping_mul(7919)) % per_client);
        async move {
            let req = ReadRequest { key, options: None };
            client.store().read(req).await.is_ok()
        }
    })
    .await;
    reads.report();
    Ok(())
}
