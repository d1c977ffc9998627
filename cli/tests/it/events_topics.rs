//! Events topics end to end: publish, read, dedup by id, topics, info,
//! create, delete, retention, a cluster's one order, bad input, rules and
//! namespaces, over gRPC against real nodes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use micro_proto::events::{
    CreateRequest, DeleteRequest, InfoRequest, PublishRequest, ReadRequest, Retention, TopicInfo,
    TopicsRequest,
};
use tonic::Code;

use crate::cluster::{cluster, leader};
use crate::harness::Server;

type Events = micro_proto::events::events_client::EventsClient<micro::client::Conn>;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn publish(topic: &str, payload: &str, id: &str) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        id: id.into(),
        ..Default::default()
    }
}

fn read_req(topic: &str, limit: u64, offset: u64, desc: bool) -> ReadRequest {
    ReadRequest {
        topic: topic.into(),
        limit,
        offset,
        desc,
    }
}

async fn put(ev: &mut Events, topic: &str, payload: &str) -> u64 {
    ev.publish(publish(topic, payload, ""))
        .await
        .expect("publish")
        .into_inner()
        .seq
}

/// The (seq, payload) pairs a read returns.
async fn read(ev: &mut Events, req: ReadRequest) -> Vec<(u64, String)> {
    ev.read(req)
        .await
        .expect("read")
        .into_inner()
        .events
        .iter()
        .map(|e| (e.seq, String::from_utf8_lossy(&e.payload).into_owned()))
        .collect()
}

async fn seqs(ev: &mut Events, topic: &str) -> Vec<u64> {
    read(ev, read_req(topic, 0, 0, false))
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

async fn info(ev: &mut Events, topic: &str) -> TopicInfo {
    ev.info(InfoRequest {
        topic: topic.into(),
    })
    .await
    .expect("info")
    .into_inner()
    .info
    .expect("an info")
}

async fn create(ev: &mut Events, topic: &str, retention: Retention) -> TopicInfo {
    ev.create(CreateRequest {
        topic: topic.into(),
        retention: Some(retention),
    })
    .await
    .expect("create")
    .into_inner()
    .info
    .expect("an info")
}

async fn topics(ev: &mut Events) -> Vec<String> {
    ev.topics(TopicsRequest {})
        .await
        .expect("topics")
        .into_inner()
        .topics
}

/// Polls the stored sequences of `topic` until they are `want`, for up to
/// `secs` seconds.
async fn wait_for_seqs(ev: &mut Events, topic: &str, want: &[u64], secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = seqs(ev, topic).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic} never held {want:?}; it holds {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The error is `code` with a message of one line containing `text`.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, text: &str) {
    let e = r.expect_err("refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(text),
        "{:?} lacks {text:?}",
        e.message()
    );
    assert!(!e.message().contains('\n'), "one line: {:?}", e.message());
}

#[tokio::test]
async fn publishes_get_sequences_in_order_and_a_repeated_id_is_stored_once() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    let a = ev
        .publish(publish("orders", "{\"n\":1}", ""))
        .await
        .unwrap()
        .into_inner();
    let b = ev
        .publish(publish("orders", "{\"n\":2}", "order-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(!b.duplicate);
    let again = ev
        .publish(publish("orders", "{\"n\":2}", "order-2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.seq, 2,
        "a repeated id answers with the first event's sequence"
    );
    assert!(again.duplicate);
    let read = ev
        .read(ReadRequest {
            topic: "orders".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let got: Vec<(u64, String)> = read
        .events
        .iter()
        .map(|e| (e.seq, String::from_utf8_lossy(&e.payload).into_owned()))
        .collect();
    assert_eq!(
        got,
        vec![(1, "{\"n\":1}".to_string()), (2, "{\"n\":2}".to_string())],
        "the duplicate was not stored"
    );
    assert_eq!(read.events[1].id, "order-2");
    assert_eq!(read.events[0].topic, "orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_each_get_one_sequence_and_read_back_in_that_order() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut ev = c.events();
        tasks.push(tokio::spawn(async move {
            let seq = put(&mut ev, "orders", &format!("p{i}")).await;
            (seq, format!("p{i}"))
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    acked.sort();
    let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=24).collect::<Vec<u64>>(), "one sequence each");
    let mut ev = c.events();
    assert_eq!(
        read(&mut ev, read_req("orders", 0, 0, false)).await,
        acked,
        "a read returns every event in sequence order, each with the sequence its publish got"
    );
}

#[tokio::test]
async fn reads_start_at_an_offset_in_either_order_and_an_unknown_topic_is_not_found() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    for i in 1..=10 {
        put(&mut ev, "log", &format!("e{i}")).await;
    }
    let only = |v: Vec<(u64, String)>| v.into_iter().map(|(s, _)| s).collect::<Vec<u64>>();
    assert_eq!(
        read(&mut ev, read_req("log", 3, 4, false)).await,
        vec![(4, "e4".into()), (5, "e5".into()), (6, "e6".into())]
    );
    assert_eq!(
        only(read(&mut ev, read_req("log", 3, 0, true)).await),
        vec![10, 9, 8],
        "desc without an offset starts at the newest"
    );
    assert_eq!(
        only(read(&mut ev, read_req("log", 2, 5, true)).await),
        vec![5, 4]
    );
    assert_eq!(
        only(read(&mut ev, read_req("log", 0, 0, false)).await),
        (1..=10).collect::<Vec<u64>>()
    );
    assert!(
        read(&mut ev, read_req("log", 0, 11, false))
            .await
            .is_empty(),
        "past the end of an existing topic: nothing, no error"
    );
    refused(
        ev.read(read_req("nope", 0, 0, false)).await,
        Code::NotFound,
        "topic nope does not exist",
    );
    refused(
        ev.info(InfoRequest {
            topic: "nope".into(),
        })
        .await,
        Code::NotFound,
        "topic nope does not exist",
    );
    refused(
        ev.delete(DeleteRequest {
            topic: "nope".into(),
            group: String::new(),
        })
        .await,
        Code::NotFound,
        "topic nope does not exist",
    );
    // A created topic without events exists and is empty.
    create(&mut ev, "empty", Retention::default()).await;
    assert!(read(&mut ev, read_req("empty", 0, 0, false))
        .await
        .is_empty());
}

#[tokio::test]
async fn a_read_of_large_events_stops_before_the_message_limit_and_reads_on() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    // Nine events of 1 MB: more than one gRPC message (8 MiB) may carry.
    let big = "x".repeat(1_000_000);
    for _ in 0..9 {
        put(&mut ev, "big", &big).await;
    }
    let mut got: Vec<u64> = Vec::new();
    let mut reads = 0;
    while got.len() < 9 {
        let from = got.last().map(|s| s + 1).unwrap_or(0);
        let page: Vec<u64> = read(&mut ev, read_req("big", 0, from, false))
            .await
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert!(!page.is_empty(), "a read after {got:?} returned nothing");
        assert!(page.len() <= 4, "about 4 MiB per read: {page:?}");
        got.extend(page);
        reads += 1;
    }
    assert_eq!(got, (1..=9).collect::<Vec<u64>>());
    assert_eq!(reads, 3);
}

#[tokio::test]
async fn topics_info_and_create_report_retention_sizes_and_sequences() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    assert!(topics(&mut ev).await.is_empty());
    let before = now_ms();
    for t in ["b", "a", "c", "a", "a"] {
        put(&mut ev, t, "0123456789").await;
    }
    let after = now_ms();
    assert_eq!(topics(&mut ev).await, vec!["a", "b", "c"], "sorted");
    let a = info(&mut ev, "a").await;
    assert_eq!(a.topic, "a");
    assert_eq!((a.count, a.first_seq, a.last_seq), (3, 1, 3));
    assert!(
        a.bytes >= 30,
        "three 10-byte payloads and more: {}",
        a.bytes
    );
    assert!(
        before <= a.first_timestamp
            && a.first_timestamp <= a.last_timestamp
            && a.last_timestamp <= after,
        "{a:?}"
    );
    assert_eq!(a.retention, Some(Retention::default()), "no limits");
    assert!(a.groups.is_empty());
    let b = info(&mut ev, "b").await;
    assert_eq!((b.count, b.first_seq, b.last_seq), (1, 1, 1));
    assert_eq!(b.bytes * 3, a.bytes, "bytes are the stored size");

    let limits = Retention {
        max_age_ms: 7 * 24 * 3600 * 1000,
        max_count: 1_000_000,
        max_bytes: 1 << 30,
    };
    let created = create(&mut ev, "a", limits).await;
    assert_eq!(created.retention, Some(limits));
    assert_eq!(created.count, 3, "an existing topic keeps its events");
    assert_eq!(info(&mut ev, "a").await.retention, Some(limits));
    let changed = Retention {
        max_count: 10,
        ..Default::default()
    };
    assert_eq!(
        create(&mut ev, "a", changed).await.retention,
        Some(changed),
        "creating it again sets the new retention and says so"
    );
    let fresh = create(&mut ev, "d", Retention::default()).await;
    assert_eq!((fresh.count, fresh.first_seq, fresh.last_seq), (0, 0, 0));
    assert_eq!(topics(&mut ev).await, vec!["a", "b", "c", "d"]);
}

#[tokio::test]
async fn a_deleted_topic_is_gone_and_its_sequences_continue_when_used_again() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    create(
        &mut ev,
        "t",
        Retention {
            max_count: 100,
            ..Default::default()
        },
    )
    .await;
    for i in 0..3 {
        put(&mut ev, "t", &format!("{i}")).await;
    }
    ev.publish(publish("t", "x", "id-1")).await.unwrap();
    put(&mut ev, "other", "stays").await;
    ev.delete(DeleteRequest {
        topic: "t".into(),
        group: String::new(),
    })
    .await
    .expect("delete");
    assert_eq!(topics(&mut ev).await, vec!["other"]);
    refused(
        ev.read(read_req("t", 0, 0, false)).await,
        Code::NotFound,
        "topic t does not exist",
    );
    let again = ev
        .publish(publish("t", "x", "id-1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.duplicate, "the message ids went with the topic");
    assert_eq!(again.seq, 5, "sequences continue after the old last one");
    let t = info(&mut ev, "t").await;
    assert_eq!(
        t.retention,
        Some(Retention::default()),
        "the retention went too"
    );
    assert_eq!((t.count, t.first_seq, t.last_seq), (1, 5, 5));
    assert_eq!(seqs(&mut ev, "other").await, vec![1]);
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    create(
        &mut ev,
        "orders",
        Retention {
            max_count: 3,
            ..Default::default()
        },
    )
    .await;
    for i in 1..=5 {
        put(&mut ev, "orders", &format!("{i}")).await;
    }
    wait_for_seqs(&mut ev, "orders", &[3, 4, 5], 10).await;
    let i = info(&mut ev, "orders").await;
    assert_eq!((i.count, i.first_seq, i.last_seq), (3, 3, 5));
}

#[tokio::test]
async fn retention_by_age_discards_old_events() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    create(
        &mut ev,
        "ticks",
        Retention {
            max_age_ms: 1000,
            ..Default::default()
        },
    )
    .await;
    put(&mut ev, "ticks", "1").await;
    put(&mut ev, "ticks", "2").await;
    wait_for_seqs(&mut ev, "ticks", &[], 10).await;
    assert_eq!(info(&mut ev, "ticks").await.count, 0);
    assert_eq!(
        put(&mut ev, "ticks", "3").await,
        3,
        "the topic goes on after its events aged out"
    );
}

#[tokio::test]
async fn retention_by_bytes_discards_the_oldest() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    put(&mut ev, "blobs", &"x".repeat(1000)).await;
    let one = info(&mut ev, "blobs").await.bytes;
    // Room for two events of this size, not three.
    create(
        &mut ev,
        "blobs",
        Retention {
            max_bytes: one * 2 + one / 2,
            ..Default::default()
        },
    )
    .await;
    for _ in 0..4 {
        put(&mut ev, "blobs", &"x".repeat(1000)).await;
    }
    wait_for_seqs(&mut ev, "blobs", &[4, 5], 10).await;
    let i = info(&mut ev, "blobs").await;
    assert_eq!(i.bytes, one * 2);
}

#[tokio::test]
async fn bad_input_gets_one_clear_line_and_stores_nothing() {
    let s = Server::start();
    let c = s.client("default").await;
    let mut ev = c.events();
    refused(
        ev.publish(publish("a/b", "x", "")).await,
        Code::InvalidArgument,
        "topic 'a/b' is not allowed",
    );
    refused(
        ev.publish(publish("", "x", "")).await,
        Code::InvalidArgument,
        "topic must not be empty",
    );
    refused(
        ev.publish(publish(&"t".repeat(121), "x", "")).await,
        Code::InvalidArgument,
        "the limit is 120",
    );
    refused(
        ev.publish(PublishRequest {
            topic: "t".into(),
            payload: vec![b'x'; 1024 * 1024 + 1],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "the limit is 1048576",
    );
    let many: HashMap<String, String> = (0..65).map(|i| (format!("k{i}"), "v".into())).collect();
    refused(
        ev.publish(PublishRequest {
            topic: "t".into(),
            payload: b"x".to_vec(),
            metadata: many,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "65 metadata entries; the limit is 64",
    );
    refused(
        ev.publish(PublishRequest {
            topic: "t".into(),
            payload: b"x".to_vec(),
            metadata: [("bad\nkey".to_string(), "v".to_string())].into(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "a metadata key must not contain control characters",
    );
    refused(
        ev.publish(publish("t", "x", "bad\u{7}id")).await,
        Code::InvalidArgument,
        "a message id must not contain control characters",
    );
    refused(
        ev.publish(publish("t", "x", &"i".repeat(257))).await,
        Code::InvalidArgument,
        "a message id must be 1 to 256 bytes",
    );
    refused(
        ev.read(read_req("t", 1001, 0, false)).await,
        Code::InvalidArgument,
        "a read returns at most 1000 events",
    );
    refused(
        ev.create(CreateRequest {
            topic: "bad topic".into(),
            retention: None,
        })
        .await,
        Code::InvalidArgument,
        "topic 'bad topic' is not allowed",
    );
    assert!(topics(&mut ev).await.is_empty(), "nothing was stored");
    refused(
        ev.read(read_req("t", 0, 0, false)).await,
        Code::NotFound,
        "topic t does not exist",
    );
    assert_eq!(put(&mut ev, "t", "ok").await, 1, "no sequence was used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_through_a_follower_are_read_in_one_order_on_every_node() {
    let nodes = cluster(2, &[]);
    let lead = leader(&nodes[0]);
    let follower = nodes
        .iter()
        .position(|n| n.node_id != lead)
        .expect("a follower");
    let leading = nodes
        .iter()
        .position(|n| n.node_id == lead)
        .expect("the leader");
    let token = nodes[0].micro(&["user", "token"]).ok().trim().to_string();
    let mut clients = Vec::new();
    for n in &nodes {
        let c = n.client("default").await;
        c.set_token(Some(&token));
        clients.push(c);
    }
    let mut tasks = Vec::new();
    for i in 0..12 {
        // Mostly through the follower, some through the leader at once.
        let at = if i % 3 == 2 { leading } else { follower };
        let mut ev = clients[at].events();
        tasks.push(tokio::spawn(async move {
            let seq = put(&mut ev, "orders", &format!("from-{at}-{i}")).await;
            (seq, format!("from-{at}-{i}"))
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.push(t.await.unwrap());
    }
    acked.sort();
    assert_eq!(
        acked.iter().map(|(s, _)| *s).collect::<Vec<u64>>(),
        (1..=12).collect::<Vec<u64>>()
    );
    for (i, c) in clients.iter().enumerate() {
        let mut ev = c.events();
        assert_eq!(
            read(&mut ev, read_req("orders", 0, 0, false)).await,
            acked,
            "node {i} reads every acknowledged event in the one order"
        );
        assert_eq!(info(&mut ev, "orders").await.count, 12, "node {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_denies_publishing_to_the_public_and_namespaces_are_apart() {
    let s = Server::start();
    s.login_admin();
    s.micro(&[
        "auth",
        "create",
        "rule",
        "--access=granted",
        "--scope=admin",
        "--resource=service:events:Events.Publish",
        "--priority=2",
        "admins-publish",
    ])
    .ok();
    s.micro(&[
        "auth",
        "create",
        "rule",
        "--access=denied",
        "--resource=service:events:Events.Publish",
        "--priority=1",
        "no-public-publish",
    ])
    .ok();
    let anonymous = s.client("a").await;
    let mut ev = anonymous.events();
    // Rules reach the node's rule check through its change stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ev.publish(publish("orders", "anon", "")).await {
            Err(e) if e.code() == Code::Unauthenticated => {
                assert!(
                    e.message()
                        .contains("Unauthorized call made to events:Events.Publish"),
                    "{}",
                    e.message()
                );
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "an anonymous publish was never refused: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admin = s.client("a").await;
    let token = s.micro(&["user", "token"]).ok().trim().to_string();
    admin.set_token(Some(&token));
    let mut ev = admin.events();
    let published = ev
        .publish(publish("orders", "admin", ""))
        .await
        .expect("an admin may publish")
        .into_inner();
    // The anonymous attempts before the rule arrived may have been stored.
    let in_a = read(&mut ev, read_req("orders", 0, 0, false)).await;
    assert_eq!(in_a.last(), Some(&(published.seq, "admin".to_string())));
    // Reading is not denied to the public.
    let mut anon = anonymous.events();
    assert_eq!(read(&mut anon, read_req("orders", 0, 0, false)).await, in_a);

    // Namespace b sees nothing of a.
    let b = s.client("b").await;
    b.set_token(Some(&token));
    let mut eb = b.events();
    assert!(topics(&mut eb).await.is_empty(), "no topics in b");
    refused(
        eb.read(read_req("orders", 0, 0, false)).await,
        Code::NotFound,
        "topic orders does not exist",
    );
    refused(
        eb.info(InfoRequest {
            topic: "orders".into(),
        })
        .await,
        Code::NotFound,
        "topic orders does not exist",
    );
    assert_eq!(
        put(&mut eb, "orders", "b's own").await,
        1,
        "b's own sequence"
    );
    assert_eq!(topics(&mut ev).await, vec!["orders"]);
    assert_eq!(
        read(&mut ev, read_req("orders", 0, 0, false)).await,
        in_a,
        "a is untouched by b"
    );
}
