//! `micro-bench helloworld`: the helloworld example's `Call` straight to
//! the service, through the node's gRPC router and through the HTTP
//! gateway on one node, then across nodes: the service registered with
//! node 1 of a 3-node cluster, called through node 3's router. Prints each
//! path's throughput and latency, the ratios to the direct path, and the
//! median latency each hop adds.

use std::time::Duration;

use crate::phase::phase;
use crate::store::start_node_full;

/// helloworld's `CallRequest { name: "Alice" }`, encoded by hand: field 1,
/// length-delimited.
fn call_request() -> bytes::Bytes {
    let name = b"Alice";
    let mut v = vec![0x0a, name.len() as u8];
    v.extend_from_slice(name);
    v.into()
}

async fn raw_call(channel: tonic::transport::Channel, service: Option<&str>) -> bool {
    let mut grpc = tonic::client::Grpc::new(channel);
    if grpc.ready().await.is_err() {
        return false;
    }
    let mut req = tonic::Request::new(call_request());
    if let Some(s) = service.and_then(|s| s.parse().ok()) {
        req.metadata_mut().insert("micro-service", s);
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/helloworld.Helloworld/Call");
    grpc.unary(req, path, micro::dynamic::RawCodec)
        .await
        .is_ok()
}

async fn channels(addr: &str, n: usize) -> Result<Vec<tonic::transport::Channel>, String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        out.push(ch);
    }
    Ok(out)
}

pub async fn helloworld(clients: usize, seconds: u64) -> Result<(), String> {
    let bin = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("helloworld");
    if !bin.exists() {
        return Err(format!(
            "{} is missing: build it with `cargo build --release -p helloworld`",
            bin.display()
        ));
    }
    let (listen, _dir) = start_node_full().await?;
    let proxy = listen["proxy"].as_str().unwrap_or_default().to_string();
    let api = listen["api"].as_str().unwrap_or_default().to_string();
    let mut child = tokio::process::Command::new(&bin)
        .env("MICRO_PROXY_ADDRESS", &proxy)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    // Wait for its registration, and take its address for direct calls.
    let client = micro::Client::connect(&proxy, "micro")
        .await
        .map_err(|e| e.to_string())?;
    let mut direct = None;
    for _ in 0..100 {
        let req = micro_proto::registry::GetRequest {
            service: "helloworld".into(),
            options: None,
        };
        if let Ok(r) = client.registry().get_service(req).await {
            direct = r
                .into_inner()
                .services
                .first()
                .and_then(|s| s.nodes.first())
                .map(|n| n.address.clone());
            if direct.is_some() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct = direct.ok_or("helloworld did not register")?;
    println!("micro-bench helloworld: {clients} clients, {seconds}s per path, Helloworld.Call");
    let a = phase(
        "direct",
        channels(&direct, clients).await?,
        seconds,
        |ch, _, _| raw_call(ch, None),
    )
    .await;
    let b = phase(
        "router",
        channels(&proxy, clients).await?,
        seconds,
        |ch, _, _| raw_call(ch, Some("helloworld")),
    )
    .await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!("http://{api}/helloworld/Call?name=Alice")
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
    let c = phase(
        "gateway",
        vec![http; clients],
        seconds,
        move |http, _, _| {
            let uri = uri.clone();
            async move {
                match http.get(uri).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        use http_body_util::BodyExt;
                        ok && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    let _ = child.kill().await;
    let d = cross_node(&bin, clients, seconds).await?;
    let (ta, tb, tc, td) = (
        a.throughput(),
        b.throughput(),
        c.throughput(),
        d.throughput(),
    );
    let (pa, pb, pc, pd) = (a.p50(), b.p50(), c.p50(), d.p50());
    a.report();
    b.report();
    c.report();
    d.report();
    println!(
        "throughput ratios: router/direct {:.2}, gateway/direct {:.2}, cross-node router/direct {:.2}",
        tb / ta.max(1e-9),
        tc / ta.max(1e-9),
        td / ta.max(1e-9)
    );
    println!(
        "added p50: router +{:.3}ms, gateway +{:.3}ms, cross-node router +{:.3}ms",
        pb - pa,
        pc - pa,
        pd - pa
    );
    Ok(())
}

/// helloworld registered with node 1 of a 3-node cluster, called through
/// node 3's gRPC router (which passes it to node 1 over mutual TLS).
async fn cross_node(
    bin: &std::path::Path,
    clients: usize,
    seconds: u64,
) -> Result<crate::phase::Phase, String> {
    let mut cluster = crate::cluster::Cluster::new()?;
    cluster.form(3).await?;
    let mut child = tokio::process::Command::new(bin)
        .env("MICRO_PROXY_ADDRESS", cluster.proxy(0))
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    // Registered and routed once a call through node 3 succeeds.
    let via = channels(cluster.proxy(2), clients).await?;
    let mut routed = false;
    for _ in 0..100 {
        if raw_call(via[0].clone(), Some("helloworld")).await {
            routed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !routed {
        cluster.stop().await;
        return Err("helloworld on node 1 is not reachable through node 3".into());
    }
    let d = phase("cross", via, seconds, |ch, _, _| {
        raw_call(ch, Some("helloworld"))
    })
    .await;
    let _ = child.kill().await;
    cluster.stop().await;
    Ok(d)
}
