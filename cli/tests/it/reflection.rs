//! gRPC server reflection end to end, with tonic-reflection's own clients
//! of both protocol versions: core and user services listed and
//! described, the node-to-node `cluster.Peer` never, and user services
//! only for callers the rules let list the registry.

use prost::Message;
use prost_reflect::prost_types::FileDescriptorProto;

use crate::harness::{wait_for_nodes, Instance, Server};

/// The helloworld example's gRPC service (package `helloworld`).
const HELLOWORLD: &str = "helloworld.Helloworld";

/// What a reflection request got: files, service names, or an error
/// response (code and message).
#[derive(Debug)]
enum Got {
    Files(Vec<FileDescriptorProto>),
    Services(Vec<String>),
    Error(i32, String),
}

/// A version-neutral request.
#[derive(Clone, Copy)]
enum Ask<'a> {
    List,
    Symbol(&'a str),
    File(&'a str),
}

/// One reflection client per protocol version, each asking one question
/// per stream, with the bearer `token` if any.
macro_rules! client {
    ($version:ident) => {
        mod $version {
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use prost::Message;
            use prost_reflect::prost_types::FileDescriptorProto;
            use tonic_reflection::pb::$version as pb;

            use super::{Ask, Got};

            pub async fn ask(addr: &str, token: Option<&str>, ask: Ask<'_>) -> Got {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("endpoint")
                    .connect()
                    .await
                    .expect("connect");
                let message = match ask {
                    Ask::List => MessageRequest::ListServices(String::new()),
                    Ask::Symbol(s) => MessageRequest::FileContainingSymbol(s.to_string()),
                    Ask::File(f) => MessageRequest::FileByFilename(f.to_string()),
                };
                let mut req =
                    tonic::Request::new(tokio_stream::iter(vec![pb::ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(message),
                    }]));
                if let Some(t) = token {
                    req.metadata_mut().insert(
                        "authorization",
                        format!("Bearer {t}").parse().expect("ascii"),
                    );
                }
                let mut replies = ServerReflectionClient::new(channel)
                    .server_reflection_info(req)
                    .await
                    .expect("a reflection stream")
                    .into_inner();
                let reply = replies
                    .message()
                    .await
                    .expect("a reply")
                    .expect("one reply");
                match reply.message_response.expect("an answer") {
                    MessageResponse::ListServicesResponse(l) => {
                        Got::Services(l.service.into_iter().map(|s| s.name).collect())
                    }
                    MessageResponse::FileDescriptorResponse(f) => Got::Files(
                        f.file_descriptor_proto
                            .iter()
                            .map(|b| {
                                FileDescriptorProto::decode(b.as_slice())
                                    .expect("a file descriptor")
                            })
                            .collect(),
                    ),
                    MessageResponse::ErrorResponse(e) => Got::Error(e.error_code, e.error_message),
                    other => panic!("unexpected answer {other:?}"),
                }
            }
        }
    };
}

client!(v1);
client!(v1alpha);

async fn ask(version: &str, addr: &str, token: Option<&str>, what: Ask<'_>) -> Got {
    match version {
        "v1" => v1::ask(addr, token, what).await,
        _ => v1alpha::ask(addr, token, what).await,
    }
}

async fn services(version: &str, addr: &str, token: Option<&str>) -> Vec<String> {
    match ask(version, addr, token, Ask::List).await {
        Got::Services(s) => s,
        other => panic!("{version}: not a listing: {other:?}"),
    }
}

fn declares(file: &FileDescriptorProto, full: &str) -> bool {
    file.service
        .iter()
        .any(|s| format!("{}.{}", file.package(), s.name()) == full)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_core_and_user_services_but_never_peer() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    for version in ["v1", "v1alpha"] {
        let names = services(version, &s.proxy, None).await;
        for name in ["store.Store", "grpc.health.v1.Health", HELLOWORLD] {
            assert!(
                names.iter().any(|n| n == name),
                "{version}: {name} in {names:?}"
            );
        }
        assert!(
            !names.iter().any(|n| n == "cluster.Peer"),
            "{version}: {names:?}"
        );

        match ask(version, &s.proxy, None, Ask::Symbol(HELLOWORLD)).await {
            Got::Files(files) => assert!(
                declares(&files[0], HELLOWORLD),
                "{version}: the first file declares it: {files:?}"
            ),
            other => panic!("{version}: {other:?}"),
        }
        match ask(version, &s.proxy, None, Ask::Symbol("cluster.Peer")).await {
            Got::Error(code, message) => {
                assert_eq!(code, tonic::Code::NotFound as i32, "{version}: {message}");
                assert!(message.contains("cluster.Peer"), "{version}: {message}");
            }
            other => panic!("{version}: cluster.Peer must not be found: {other:?}"),
        }
        for question in [Ask::File("cluster.proto"), Ask::Symbol("cluster.Cluster")] {
            match ask(version, &s.proxy, None, question).await {
                Got::Files(files) => {
                    let cluster = &files[0];
                    assert_eq!(cluster.name(), "cluster.proto");
                    assert!(declares(cluster, "cluster.Cluster"), "{version}");
                    assert!(
                        !declares(cluster, "cluster.Peer"),
                        "{version}: Peer is stripped"
                    );
                    // Encoded as served: the bytes hold no trace of Peer.
                    let bytes = cluster.encode_to_vec();
                    assert!(
                        !bytes.windows(b"Peer".len()).any(|w| w == b"Peer"),
                        "{version}: no Peer in cluster.proto"
                    );
                }
                other => panic!("{version}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lockdown_only_accounts_see_user_services() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    s.login_admin();
    s.lock_down();
    let token = s.micro(&["user", "token"]).ok().trim().to_string();
    for version in ["v1", "v1alpha"] {
        let anonymous = services(version, &s.proxy, None).await;
        assert!(
            anonymous.iter().any(|n| n == "store.Store"),
            "{version}: core services for anyone: {anonymous:?}"
        );
        assert!(
            !anonymous.iter().any(|n| n == HELLOWORLD),
            "{version}: no user service for an anonymous caller: {anonymous:?}"
        );
        match ask(version, &s.proxy, None, Ask::Symbol(HELLOWORLD)).await {
            Got::Error(code, message) => {
                assert_eq!(code, tonic::Code::NotFound as i32, "{version}: {message}")
            }
            other => panic!("{version}: hidden from anonymous callers: {other:?}"),
        }
        let admin = services(version, &s.proxy, Some(&token)).await;
        assert!(
            admin.iter().any(|n| n == HELLOWORLD),
            "{version}: an account sees it: {admin:?}"
        );
        assert!(!admin.iter().any(|n| n == "cluster.Peer"), "{version}");
        match ask(version, &s.proxy, Some(&token), Ask::Symbol(HELLOWORLD)).await {
            Got::Files(files) => assert!(declares(&files[0], HELLOWORLD)),
            other => panic!("{version}: {other:?}"),
        }
    }
}
