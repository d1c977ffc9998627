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
        "auth\nbroker\nconfig\nevents\nregistry\nruntime\nstore\n"
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
        "auth\nbroker\nconfig\nevents\ngreeter\nregistry\nruntime\nstore\n"
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
        "auth\nbroker\nconfig\nevents\nregistry\nruntime\nstore\n"
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
        "auth\nbroker\nconfig\nevents\nregistry\nruntime\nstore\n"
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

/// A client of `s` logged in as `id`.
async fn client_as(s: &Server, id: &str, secret: &str) -> micro::Client {
    let c = s.client("micro").await;
    c.login(id, secret).await.expect("login");
    c
}

fn one(name: &str, address: &str) -> Service {
    Service {
        name: name.into(),
        version: "1.0".into(),
        nodes: vec![Node {
            id: format!("{name}-1"),
            address: address.into(),
            metadata: HashMap::new(),
        }],
        ..Default::default()
    }
}

async fn addresses(client: &micro::Client, name: &str) -> Vec<String> {
    get(client, name)
        .await
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.nodes)
        .map(|n| n.address)
        .collect()
}

/// A name belongs to the account that registered it first; nobody else but
/// an admin may register instances of it, and only on the node itself.
#[tokio::test]
async fn registering_another_accounts_service_is_refused() {
    let s = Server::start();
    s.micro(&["login", "--username", "admin", "--password", "micro"])
        .ok();
    for id in ["alice", "bob"] {
        s.micro(&["auth", "create", "account", "--secret", "Passw0rd-x", id])
            .ok();
    }
    let alice = client_as(&s, "alice", "Passw0rd-x").await;
    let bob = client_as(&s, "bob", "Passw0rd-x").await;
    let anonymous = s.client("micro").await;
    alice
        .registry()
        .register(one("svc-a", "127.0.0.1:1"))
        .await
        .expect("the first registrant takes the name");

    let refused = bob
        .registry()
        .register(one("svc-a", "127.0.0.1:2"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "service svc-a belongs to account alice: account bob may not register or deregister it"
    );
    let refused = anonymous
        .registry()
        .register(one("svc-a", "127.0.0.1:3"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert!(bob
        .registry()
        .deregister(one("svc-a", "127.0.0.1:1"))
        .await
        .is_err());
    assert_eq!(
        addresses(&anonymous, "svc-a").await,
        ["127.0.0.1:1"],
        "the registry is unchanged"
    );

    let elsewhere = bob
        .registry()
        .register(one("svc-b", "10.1.2.3:1"))
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        elsewhere.message(),
        "instance address 10.1.2.3:1 is not on this node: register instances at a loopback address or one of this node's own addresses"
    );
    let core = bob
        .registry()
        .register(one("store", "127.0.0.1:4"))
        .await
        .unwrap_err();
    assert_eq!(
        core.message(),
        "store is a core service: only the node registers it"
    );
    let own_port = s.proxy.clone();
    assert!(bob
        .registry()
        .register(one("svc-c", &own_port))
        .await
        .is_err());
    assert!(addresses(&anonymous, "svc-b").await.is_empty());
    assert_eq!(addresses(&anonymous, "store").await, [s.proxy.as_str()]);

    // An admin may; a name nobody owns stays open to anonymous callers.
    let admin = client_as(&s, "admin", "micro").await;
    admin
        .registry()
        .register(one("svc-a", "127.0.0.1:5"))
        .await
        .expect("an admin registers any name");
    anonymous
        .registry()
        .register(one("open-svc", "127.0.0.1:6"))
        .await
        .expect("anonymous registration of a new name");
}
