//! The registry: the node's own services, TTL expiry, watches, namespaces.

use std::collections::HashMap;
use std::time::Duration;

use micro_proto::registry::{GetRequest, Node, Options, Service, WatchRequest};
use tokio_stream::StreamExt;

use crate::harness::Server;

async fn get(client: &micro::Client, name: &str) -> Result<Vec<Service>, tonic::Status> {
    let req = GetRequest {
        service: name.into(),
        options: None,
    };
    Ok(client
        .registry()
        .get_service(req)
        .await?
        .into_inner()
        .services)
}

fn greeter(ttl: i64, nodes: &[&str]) -> Service {
    Service {
        name: "greeter".into(),
        version: "1.0".into(),
        metadata: HashMap::from([("team".to_string(), "core".to_string())]),
        endpoints: vec![micro_proto::registry::Endpoint {
            name: "Greeter.Call".into(),
            ..Default::default()
        }],
        nodes: nodes
            .iter()
            .map(|id| Node {
                id: id.to_string(),
                address: "127.0.0.1:1".into(),
                metadata: HashMap::new(),
            })
            .collect(),
        options: Some(Options {
            ttl,
            domain: String::new(),
        }),
        descriptor: Vec::new(),
    }
}

#[tokio::test]
async fn the_node_registers_its_own_services_with_endpoints() {
    let s = Server::start();
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nconfig\nregistry\nruntime\nstore\n"
    );
    let client = s.client("micro").await;
    let got = get(&client, "store").await.unwrap();
    let svc = &got[0];
    assert_eq!(svc.nodes.len(), 1);
    assert_eq!(svc.nodes[0].address, s.proxy);
    let names: Vec<&str> = svc.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Store.Read",
            "Store.Write",
            "Store.Delete",
            "Store.List",
            "Store.Databases",
            "Store.Tables"
        ]
    );
    assert!(
        !svc.descriptor.is_empty(),
        "the descriptor set travels with the registration"
    );
}

#[tokio::test]
async fn registrations_expire_without_heartbeats() {
    let s = Server::start();
    let client = s.client("micro").await;
    client
        .registry()
        .register(greeter(2, &["g-1", "g-2"]))
        .await
        .unwrap();
    let got = get(&client, "greeter").await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].nodes.len(), 2, "two nodes merged into one service");
    assert_eq!(got[0].metadata["team"], "core");
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nconfig\ngreeter\nregistry\nruntime\nstore\n"
    );
    // A heartbeat for one node keeps only that one.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .registry()
        .register(greeter(2, &["g-1"]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let got = get(&client, "greeter").await.unwrap();
    let ids: Vec<&str> = got[0].nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["g-1"]);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let err = get(&client, "greeter").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nconfig\nregistry\nruntime\nstore\n"
    );
}

#[tokio::test]
async fn watch_streams_create_update_and_delete() {
    let s = Server::start();
    let client = s.client("micro").await;
    let mut stream = client
        .registry()
        .watch(WatchRequest {
            service: "greeter".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner();
    client
        .registry()
        .register(greeter(60, &["g-1"]))
        .await
        .unwrap();
    client
        .registry()
        .register(greeter(60, &["g-1"]))
        .await
        .unwrap();
    client
        .registry()
        .deregister(greeter(60, &["g-1"]))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("watch event")
            .expect("stream open")
            .expect("event");
        let svc = ev.service.unwrap();
        assert_eq!(svc.name, "greeter");
        assert_eq!(svc.nodes[0].id, "g-1");
        seen.push(ev.action);
    }
    assert_eq!(seen, ["create", "update", "delete"]);
}

#[tokio::test]
async fn the_registry_is_per_namespace() {
    let s = Server::start();
    let other = s.client("other").await;
    other
        .registry()
        .register(greeter(60, &["g-1"]))
        .await
        .unwrap();
    assert_eq!(
        s.micro(&["--namespace", "other", "services"]).ok(),
        "greeter\n"
    );
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nconfig\nregistry\nruntime\nstore\n"
    );
    let err = get(&s.client("micro").await, "greeter").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn grpc_health_reports_serving() {
    let s = Server::start();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.proxy))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for svc in ["store.Store", "config.Config", "registry.Registry"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
}
