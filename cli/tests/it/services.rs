//! Services: the router, the gateway and `micro call`, against real
//! helloworld instances.

use crate::harness::{http_get, http_send, wait_for_nodes, Instance, Server};

#[test]
fn micro_call_reaches_a_service_and_prints_indented_json() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    assert_eq!(
        s.micro(&["call", "helloworld", "Helloworld.Call", r#"{"name":"Bob"}"#])
            .ok(),
        "{\n  \"msg\": \"Hello Bob\"\n}\n"
    );
    assert_eq!(
        s.micro(&["call", "helloworld", "Helloworld.Stream", r#"{"count":2}"#])
            .ok(),
        "{\n  \"count\": \"0\"\n}\n{\n  \"count\": \"1\"\n}\n"
    );
    s.micro(&["call", "helloworld", "Helloworld.Call", "{}"])
        .fails_with("a name is required");
    s.micro(&["call", "nosuch", "Nosuch.Call"])
        .fails_with("Service \"nosuch\" not found");
    s.micro(&["call", "helloworld", "Helloworld.Nope"])
        .fails_with("Endpoint Helloworld.Nope not found for service helloworld");
    s.micro(&["call", "helloworld", "Helloworld.Call", "{nope"])
        .fails_with("Invalid JSON request: key must be a string at line 1 column 2");
    // core services are callable the same way
    let listed = s.micro(&["call", "store", "Store.List", "{}"]);
    assert_eq!(listed.ok(), "{\n  \"keys\": []\n}\n");
}

#[test]
fn the_gateway_calls_services_and_maps_errors() {
    let s = Server::start();
    let hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    let (status, body) = http_get(&s.api, "/helloworld/Call?name=Alice");
    assert_eq!((status, body.as_str()), (200, r#"{"msg":"Hello Alice"}"#));
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/helloworld/Call",
        &[("Content-Type", "application/json")],
        br#"{"name":"Joe"}"#,
    );
    assert_eq!((status, body.as_str()), (200, r#"{"msg":"Hello Joe"}"#));
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/helloworld/call",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"name=Form",
    );
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"msg":"Hello Form"}"#),
        "form bodies and lower-case endpoints"
    );
    let (status, body) = http_get(&s.api, "/helloworld/Stream?count=3");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"[{"count":"0"},{"count":"1"},{"count":"2"}]"#)
    );
    // Asked for server-sent events, the same stream comes one event per reply.
    let (status, body) = http_send(
        &s.api,
        "GET",
        "/helloworld/Stream?count=2",
        &[("Accept", "text/event-stream")],
        b"",
    );
    assert_eq!(
        (status, body.as_str()),
        (
            200,
            "data: {\"count\":\"0\"}\n\ndata: {\"count\":\"1\"}\n\n"
        )
    );

    // the service's own error code passes through
    let (status, body) = http_get(&s.api, "/helloworld/Call");
    assert_eq!(status, 400);
    assert_eq!(
        body,
        r#"{"id":"helloworld","code":400,"detail":"a name is required","status":"Bad Request"}"#
    );
    // unknown service and endpoint
    let (status, body) = http_get(&s.api, "/nosuch/Call");
    assert_eq!(status, 404);
    assert_eq!(
        body,
        r#"{"id":"nosuch","code":404,"detail":"service nosuch not found","status":"Not Found"}"#
    );
    let (status, body) = http_get(&s.api, "/helloworld/Nope");
    assert_eq!(status, 404);
    assert!(
        body.contains("Endpoint Helloworld.Nope not found for service helloworld"),
        "{body}"
    );
    // malformed JSON and a wrong type
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/helloworld/Call",
        &[("Content-Type", "application/json")],
        b"{\"name\":",
    );
    assert_eq!(status, 400);
    assert!(body.contains("malformed JSON"), "{body}");
    let (status, _) = http_send(
        &s.api,
        "POST",
        "/helloworld/Call",
        &[("Content-Type", "application/json")],
        br#"{"name":{"x":1}}"#,
    );
    assert_eq!(status, 400);
    // an oversized body
    let big = vec![b' '; 4 * 1024 * 1024 + 10];
    let (status, body) = http_send(
        &s.api,
        "POST",
        "/helloworld/Call",
        &[("Content-Type", "application/json")],
        &big,
    );
    assert_eq!(status, 413, "{body}");
    // A preflight is answered without calling the service (CORS headers
    // only for --api-cors-origins: see gateway.rs)
    let calls = hw.calls();
    let (status, _) = http_send(
        &s.api,
        "OPTIONS",
        "/helloworld/Call",
        &[
            ("Origin", "http://example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    );
    assert_eq!(status, 204);
    assert_eq!(hw.calls(), calls, "the preflight called the service");
}

#[tokio::test]
async fn a_registered_but_dead_instance_is_a_500() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    // Register a copy of helloworld's registration at an address nobody serves.
    let client = s.client("micro").await;
    let mut reg = client
        .registry()
        .get_service(micro_proto::registry::GetRequest {
            service: "helloworld".into(),
            options: None,
        })
        .await
        .unwrap()
        .into_inner()
        .services
        .remove(0);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    reg.name = "ghost".into();
    reg.nodes = vec![micro_proto::registry::Node {
        id: "ghost-1".into(),
        address: dead.to_string(),
        metadata: Default::default(),
    }];
    client.registry().register(reg).await.unwrap();
    let (status, body) = http_get(&s.api, "/ghost/Helloworld/Call?name=x");
    assert_eq!(status, 500, "{body}");
    assert!(
        body.starts_with(r#"{"id":"ghost","code":500,"detail":"service ghost is unavailable"#),
        "{body}"
    );
}

#[test]
fn the_router_spreads_calls_and_survives_losing_an_instance() {
    let s = Server::start();
    let a = Instance::start(&s, "a");
    let mut b = Instance::start(&s, "b");
    wait_for_nodes(&s, "helloworld", 2);
    for i in 0..30 {
        let (status, body) = http_get(&s.api, &format!("/helloworld/Call?name=n{i}"));
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(a.calls() + b.calls(), 30);
    assert!(
        a.calls() > 0 && b.calls() > 0,
        "both instances receive calls: {} and {}",
        a.calls(),
        b.calls()
    );

    // Kill one without letting it deregister: its registration stays until
    // the TTL, and the router must retry on the live one.
    b.kill9();
    for i in 0..20 {
        let (status, body) = http_get(&s.api, &format!("/helloworld/Call?name=after{i}"));
        assert_eq!(status, 200, "call {i} after the kill: {body}");
        let run = s.micro(&[
            "call",
            "helloworld",
            "Helloworld.Call",
            r#"{"name":"grpc"}"#,
        ]);
        assert_eq!(run.ok(), "{\n  \"msg\": \"Hello grpc\"\n}\n");
    }
}

#[test]
fn services_are_listed_and_deregister_on_sigterm() {
    let s = Server::start();
    let bin = crate::harness::helloworld_bin();
    let mut child = std::process::Command::new(bin)
        .env("MICRO_PROXY_ADDRESS", &s.proxy)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_nodes(&s, "helloworld", 1);
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nbroker\nconfig\nevents\nhelloworld\nregistry\nruntime\nstore\n"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success(), "a clean exit on SIGTERM");
    assert_eq!(
        s.micro(&["services"]).ok(),
        "auth\nbroker\nconfig\nevents\nregistry\nruntime\nstore\n",
        "deregistered at once"
    );
}

#[test]
fn every_service_is_a_command() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    let hello = |who: &str| format!("{{\n  \"msg\": \"Hello {who}\"\n}}\n");
    assert_eq!(
        s.micro(&["helloworld", "call", "--name=Alice"]).ok(),
        hello("Alice")
    );
    assert_eq!(
        s.micro(&["helloworld", "call", "--name", "Bob"]).ok(),
        hello("Bob")
    );
    assert_eq!(
        s.micro(&["helloworld", "--name=Carol"]).ok(),
        hello("Carol"),
        "no endpoint word means Call"
    );
    assert_eq!(
        s.micro(&["helloworld", "stream", "--count", "2"]).ok(),
        "{\n  \"count\": \"0\"\n}\n{\n  \"count\": \"1\"\n}\n"
    );
    assert_eq!(
        s.micro(&["helloworld", "--help"]).ok(),
        "NAME:\n  micro helloworld\n\nVERSION:\n  latest\n\nUSAGE:\n  micro helloworld [command]\n\nCOMMANDS:\n  call\n  chat\n  stream\n"
    );
    assert_eq!(
        s.micro(&["helloworld", "call", "--help"]).ok(),
        "NAME:\n  micro helloworld call\n\nUSAGE:\n  micro helloworld call [flags]\n\nFLAGS:\n  --name string\n"
    );
    s.micro(&["helloworld", "call", "--bogus", "1"])
        .fails_with("Unknown flag: bogus");
    s.micro(&["helloworld", "stream", "--count", "many"])
        .fails_with("Invalid value for --count: many is not a int64");
    s.micro(&["helloworld", "a", "b", "c"])
        .fails_with("Incorrect number of arguments");
    s.micro(&["helloworld", "nope"])
        .fails_with("Endpoint Helloworld.Nope not found for service helloworld");
    s.micro(&["helloworld", "call"])
        .fails_with("a name is required");
    s.micro(&["nothing", "call"])
        .fails_with("Unrecognized micro command: nothing. Please refer to 'micro --help'");
    // core services are commands too
    let reg = s.micro(&["registry", "getService", "--service=helloworld"]);
    assert!(
        reg.ok().contains("\"name\": \"Helloworld.Call\""),
        "{reg:?}"
    );
    assert_eq!(
        s.micro(&["store", "list"]).ok(),
        "",
        "builtins win over services of the same name"
    );
}

#[test]
fn a_bidirectional_endpoint_streams_through_the_router_and_the_cli() {
    let s = Server::start();
    let _hw = Instance::start(&s, "a");
    wait_for_nodes(&s, "helloworld", 1);
    // The CLI: one JSON request per line of stdin, replies as they come.
    assert_eq!(
        s.micro_fed(
            &["call", "helloworld", "Helloworld.Chat"],
            "{\"name\":\"Ann\"}\n{\"name\":\"Bo\"}\n"
        )
        .ok(),
        "{\n  \"msg\": \"Hello Ann\"\n}\n{\n  \"msg\": \"Hello Bo\"\n}\n"
    );
    assert_eq!(
        s.micro_fed(&["helloworld", "chat"], "{\"name\":\"Cy\"}\n")
            .ok(),
        "{\n  \"msg\": \"Hello Cy\"\n}\n",
        "the dynamic command too"
    );
    s.micro_fed(&["call", "helloworld", "Helloworld.Chat"], "{\"name\":\n")
        .fails_with("Invalid JSON request on line 1: EOF while parsing a value at line 1 column 8");

    // Through the router the stream is not buffered: each reply arrives
    // while the request stream is still open.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = s.client("micro").await;
        let (_, pool) = client.describe("helloworld").await.unwrap();
        let method = micro::dynamic::method(&pool, "helloworld", "Helloworld.Chat").unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut replies = client
            .call_streaming(
                "helloworld",
                &method,
                tokio_stream::wrappers::ReceiverStream::new(rx),
            )
            .await
            .unwrap();
        for name in ["one", "two", "three"] {
            let msg = micro::dynamic::encode_request(&method, &serde_json::json!({ "name": name }))
                .unwrap();
            tx.send(msg).await.unwrap();
            let reply = tokio::time::timeout(std::time::Duration::from_secs(10), replies.message())
                .await
                .expect("a reply before the request stream ends")
                .unwrap()
                .expect("a reply");
            let json = micro::dynamic::decode_reply(&method, &reply).unwrap();
            assert_eq!(json["msg"], format!("Hello {name}"));
        }
        drop(tx);
        assert!(
            replies.message().await.unwrap().is_none(),
            "ends with the requests"
        );
    });
}

/// An instance that counts its calls and answers each `unavailable`.
#[derive(Clone)]
struct Failing(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl tonic::server::NamedService for Failing {
    const NAME: &'static str = "flaky.Flaky";
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Failing {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Ok(
            tonic::Status::unavailable("flaky is overloaded").into_http()
        ))
    }
}

#[tokio::test]
async fn a_call_that_failed_after_reaching_the_service_is_not_retried() {
    let s = Server::start();
    let client = s.client("micro").await;
    let mut counters = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tonic::transport::Server::builder()
            .add_service(Failing(calls.clone()))
            .serve(addr);
        tokio::spawn(server);
        counters.push(calls);
        nodes.push(micro_proto::registry::Node {
            id: format!("flaky-{i}"),
            address: addr.to_string(),
            metadata: Default::default(),
        });
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    client
        .registry()
        .register(micro_proto::registry::Service {
            name: "flaky".into(),
            version: "1".into(),
            nodes,
            ..Default::default()
        })
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.proxy))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for n in 1..=5 {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let mut req = tonic::Request::new(bytes::Bytes::new());
        req.metadata_mut()
            .insert("micro-service", "flaky".parse().unwrap());
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/flaky.Flaky/Call");
        let err = grpc
            .unary(req, path, micro::dynamic::RawCodec)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "flaky is overloaded");
        let total: usize = counters
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::SeqCst))
            .sum();
        assert_eq!(total, n, "each call reached one instance, once");
    }
}
