//! The broker as its users meet it: a publish on any node reaches the
//! subscribers on every live node, a queue group gets each message once,
//! nothing is kept for later subscribers, bad input is one clear error,
//! and the gateway streams a subscription as server-sent events.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use micro_proto::broker::{Message, PublishRequest, SubscribeRequest};
use tonic::Streaming;

use crate::harness::Server;

/// How long a new subscription takes, at most, to be known to the other
/// nodes (they hear of it about 50 ms after it is made).
const SPREAD: Duration = Duration::from_millis(1500);

async fn subscribe(s: &Server, topic: &str, queue: &str) -> Streaming<Message> {
    s.client("micro")
        .await
        .broker()
        .subscribe(SubscribeRequest {
            topic: topic.into(),
            queue: queue.into(),
        })
        .await
        .expect("subscribe")
        .into_inner()
}

async fn publish(s: &Server, topic: &str, body: &[u8]) -> Result<(), tonic::Status> {
    s.client("micro")
        .await
        .broker()
        .publish(PublishRequest {
            topic: topic.into(),
            header: HashMap::from([("k".to_string(), "v".to_string())]),
            body: body.to_vec(),
        })
        .await
        .map(|_| ())
}

/// The bodies of what arrives on `stream` until nothing more comes for `quiet`.
async fn drain(stream: &mut Streaming<Message>, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(quiet, stream.message()).await {
        out.push(String::from_utf8_lossy(&m.body).into_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_and_queue_groups_across_three_nodes() {
    let mut nodes = crate::cluster::cluster(2, &[]);

    // A plain subscriber on every node; a publish on any node reaches each.
    let mut subs = Vec::new();
    for n in &nodes {
        subs.push(subscribe(n, "news", "").await);
    }
    tokio::time::sleep(SPREAD).await;
    publish(&nodes[0], "news", b"from node 0").await.unwrap();
    publish(&nodes[2], "news", b"from node 2").await.unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut got = drain(sub, Duration::from_secs(2)).await;
        got.sort();
        assert_eq!(
            got,
            ["from node 0", "from node 2"],
            "subscriber on node {i}"
        );
    }

    // Queue q has a member on nodes 1 and 2, node 0 a plain subscriber:
    // each message goes to exactly one member of q, and all to the plain one.
    let mut plain = subscribe(&nodes[0], "jobs", "").await;
    let mut q1 = subscribe(&nodes[1], "jobs", "q").await;
    let mut q2 = subscribe(&nodes[2], "jobs", "q").await;
    tokio::time::sleep(SPREAD).await;
    for i in 0..20 {
        publish(&nodes[0], "jobs", format!("job {i:02}").as_bytes())
            .await
            .unwrap();
    }
    let (a, b) = (
        drain(&mut q1, Duration::from_secs(2)).await,
        drain(&mut q2, Duration::from_secs(1)).await,
    );
    let mut both: Vec<String> = a.iter().chain(&b).cloned().collect();
    both.sort();
    let all: Vec<String> = (0..20).map(|i| format!("job {i:02}")).collect();
    assert_eq!(both, all, "each message reached exactly one member of q");
    assert!(
        !a.is_empty() && !b.is_empty(),
        "both members got some: {} and {}",
        a.len(),
        b.len()
    );
    let mut everything = drain(&mut plain, Duration::from_secs(1)).await;
    everything.sort();
    assert_eq!(everything, all, "the plain subscriber got every message");

    // A member on the publishing node is preferred.
    for i in 0..5 {
        publish(&nodes[1], "jobs", format!("local {i}").as_bytes())
            .await
            .unwrap();
    }
    assert_eq!(drain(&mut q1, Duration::from_secs(2)).await.len(), 5);
    assert!(drain(&mut q2, Duration::from_millis(500)).await.is_empty());
    assert_eq!(drain(&mut plain, Duration::from_millis(500)).await.len(), 5);

    // A dead node fails no publish, and the others still get the message.
    nodes[2].kill9();
    let started = Instant::now();
    publish(&nodes[0], "news", b"after the kill").await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the publish waited {:?}",
        started.elapsed()
    );
    assert_eq!(
        drain(&mut subs[1], Duration::from_secs(2)).await,
        ["after the kill"]
    );
    assert_eq!(
        drain(&mut subs[0], Duration::from_millis(500)).await,
        ["after the kill"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_stored_for_later_subscribers() {
    let s = Server::start();
    publish(&s, "t", b"before anyone listened").await.unwrap();
    let mut sub = subscribe(&s, "t", "").await;
    publish(&s, "t", b"after").await.unwrap();
    assert_eq!(drain(&mut sub, Duration::from_secs(1)).await, ["after"]);
    // Another namespace's publish on the same topic is not delivered here.
    s.client("team")
        .await
        .broker()
        .publish(PublishRequest {
            topic: "t".into(),
            header: HashMap::new(),
            body: b"other namespace".to_vec(),
        })
        .await
        .unwrap();
    assert!(drain(&mut sub, Duration::from_millis(500)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_clear_error_and_delivers_nothing() {
    let s = Server::start();
    let mut sub = subscribe(&s, "t", "").await;
    let one_line = |e: tonic::Status, code: tonic::Code, says: &str| {
        assert_eq!(e.code(), code, "{e:?}");
        let m = e.message();
        assert!(m.contains(says), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
    };
    let e = publish(&s, "bad/topic", b"x").await.unwrap_err();
    one_line(e, tonic::Code::InvalidArgument, "topic");
    let big = vec![b'x'; 1024 * 1024 + 1];
    let e = publish(&s, "t", &big).await.unwrap_err();
    one_line(
        e,
        tonic::Code::InvalidArgument,
        "the limit is 1048576 (1 MiB)",
    );
    // Exactly at the limit (header included) is fine.
    let fits = vec![b'x'; 1024 * 1024 - 2];
    publish(&s, "t", &fits).await.unwrap();
    let e = s
        .client("micro")
        .await
        .broker()
        .subscribe(SubscribeRequest {
            topic: "t".into(),
            queue: "no spaces".into(),
        })
        .await
        .unwrap_err();
    one_line(e, tonic::Code::InvalidArgument, "queue");
    let got = drain(&mut sub, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 1, "only the message within the limit arrived");
    assert_eq!(got[0].len(), fits.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_streams_a_subscription_as_server_sent_events() {
    let s = Server::start();
    let mut http = std::net::TcpStream::connect(&s.api).expect("connect http");
    http.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        http,
        "GET /broker/subscribe?topic=health HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        s.api
    )
    .unwrap();
    // The head comes once the subscription is made.
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("\r\n\r\n") && Instant::now() < deadline {
        let n = http.read(&mut buf).expect("read the head");
        assert!(n > 0, "the server closed the stream: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let head = seen.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{seen}");
    assert!(head.contains("content-type: text/event-stream"), "{seen}");

    publish(&s, "health", b"ok").await.unwrap();
    // "ok" is "b2s=" in base64 (protobuf JSON's bytes).
    let wanted = r#"data: {"body":"b2s=","header":{"k":"v"},"topic":"health"}"#;
    while !seen.contains(wanted) && Instant::now() < deadline {
        match http.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => break,
        }
    }
    assert!(seen.contains(wanted), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_ends_its_subscriptions_and_exits() {
    let mut s = Server::start();
    let mut sub = subscribe(&s, "t", "").await;
    let started = Instant::now();
    let code = tokio::task::block_in_place(|| s.terminate());
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a connected subscriber held the node up for {:?}",
        started.elapsed()
    );
    let end = tokio::time::timeout(Duration::from_secs(2), sub.message()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "the subscription ended: {end:?}"
    );
}
