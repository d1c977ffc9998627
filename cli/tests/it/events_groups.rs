//! Events consumption end to end: streams without a group and durable
//! consumer groups (sharing, acks, redelivery, dead letters, resuming on
//! another node), over gRPC against real nodes.

use std::collections::BTreeSet;
use std::time::Duration;

use micro_proto::events::events_client::EventsClient;
use micro_proto::events::{
    AckRequest, ConsumeRequest, DeleteRequest, Event, PublishRequest, ReadRequest,
};
use tonic::{Code, Streaming};

use crate::harness::Server;

type Client = EventsClient<micro::client::Conn>;

async fn publish(ev: &mut Client, topic: &str, payload: &str) -> u64 {
    ev.publish(PublishRequest {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    })
    .await
    .expect("publish")
    .into_inner()
    .seq
}

fn plain(topic: &str) -> ConsumeRequest {
    ConsumeRequest {
        topic: topic.into(),
        ..Default::default()
    }
}

fn group(topic: &str, group: &str) -> ConsumeRequest {
    ConsumeRequest {
        topic: topic.into(),
        group: group.into(),
        ..Default::default()
    }
}

async fn consume(ev: &mut Client, req: ConsumeRequest) -> Streaming<Event> {
    ev.consume(req).await.expect("consume").into_inner()
}

/// The next event within `ms`, or `None`.
async fn next(s: &mut Streaming<Event>, ms: u64) -> Option<Event> {
    match tokio::time::timeout(Duration::from_millis(ms), s.message()).await {
        Ok(Ok(Some(e))) => Some(e),
        Ok(Ok(None)) => None,
        Ok(Err(st)) => panic!("the stream failed: {st}"),
        Err(_) => None,
    }
}

/// The next `n` events (each within 10 s).
async fn take(s: &mut Streaming<Event>, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        match next(s, 10_000).await {
            Some(e) => out.push(e),
            None => panic!("got {} of {n} events: {:?}", out.len(), seqs(&out)),
        }
    }
    out
}

fn seqs(evs: &[Event]) -> Vec<u64> {
    evs.iter().map(|e| e.seq).collect()
}

async fn ack(ev: &mut Client, topic: &str, g: &str, seqs: &[u64]) {
    ev.ack(AckRequest {
        topic: topic.into(),
        group: g.into(),
        seqs: seqs.to_vec(),
        ..Default::default()
    })
    .await
    .expect("ack");
}

#[tokio::test]
async fn streams_and_new_groups_start_at_the_first_event_or_where_asked_and_keep_order() {
    let s = Server::start();
    let mut ev = s.client("default").await.events();
    for i in 1..=3 {
        publish(&mut ev, "orders", &format!("o{i}")).await;
    }
    // Given no start, a stream and a new group see all of history.
    let mut all = consume(&mut ev, plain("orders")).await;
    let mut billing = consume(&mut ev, group("orders", "billing")).await;
    let mut fresh = consume(
        &mut ev,
        ConsumeRequest {
            new_only: true,
            ..plain("orders")
        },
    )
    .await;
    let mut fresh_group = consume(
        &mut ev,
        ConsumeRequest {
            new_only: true,
            ..group("orders", "audit")
        },
    )
    .await;
    assert_eq!(seqs(&take(&mut all, 3).await), vec![1, 2, 3]);
    let got = take(&mut billing, 3).await;
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    assert_eq!(got[0].payload, b"o1");
    assert_eq!(got[0].deliveries, 1, "a first delivery counts 1");
    assert!(
        next(&mut fresh, 300).await.is_none(),
        "new_only sees no history"
    );
    assert!(next(&mut fresh_group, 300).await.is_none());

    // Live events follow, pushed, in order, to every consumer.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 4..=40 {
        publish(&mut ev, "orders", &format!("o{i}")).await;
    }
    let want: Vec<u64> = (4..=40).collect();
    assert_eq!(seqs(&take(&mut all, 37).await), want);
    assert_eq!(seqs(&take(&mut billing, 37).await), want);
    assert_eq!(seqs(&take(&mut fresh, 37).await), want);
    assert_eq!(seqs(&take(&mut fresh_group, 37).await), want);

    // Replay from a sequence and from a time, without and with a group.
    let mut from = consume(
        &mut ev,
        ConsumeRequest {
            from_seq: 38,
            ..plain("orders")
        },
    )
    .await;
    assert_eq!(seqs(&take(&mut from, 3).await), vec![38, 39, 40]);
    let mut from_group = consume(
        &mut ev,
        ConsumeRequest {
            from_seq: 39,
            ..group("orders", "late")
        },
    )
    .await;
    assert_eq!(seqs(&take(&mut from_group, 2).await), vec![39, 40]);
    let mut since_stream = consume(
        &mut ev,
        ConsumeRequest {
            since,
            ..plain("orders")
        },
    )
    .await;
    let got = take(&mut since_stream, 37).await;
    assert_eq!(seqs(&got), want, "from the time: the events after it");
    let mut since_group = consume(
        &mut ev,
        ConsumeRequest {
            since,
            ..group("orders", "since")
        },
    )
    .await;
    assert_eq!(seqs(&take(&mut since_group, 37).await), want);
    assert!(next(&mut since_group, 200).await.is_none());
}

#[tokio::test]
async fn members_of_a_group_share_its_events_and_acked_ones_are_not_delivered_again() {
    let s = Server::start();
    let mut ev = s.client("default").await.events();
    let mut a = consume(&mut ev, group("jobs", "workers")).await;
    let mut b = consume(&mut ev, group("jobs", "workers")).await;
    for i in 1..=20 {
        publish(&mut ev, "jobs", &format!("j{i}")).await;
    }
    // Disjoint deliveries whose union is everything; each member got some,
    // each in sequence order.
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.len() + got_b.len() < 20 {
        tokio::select! {
            e = next(&mut a, 10_000) => got_a.push(e.expect("member a's stream ended").seq),
            e = next(&mut b, 10_000) => got_b.push(e.expect("member b's stream ended").seq),
        }
    }
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "both members got events: {got_a:?} {got_b:?}"
    );
    let union: BTreeSet<u64> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(
        union.len(),
        20,
        "no event went to both: {got_a:?} {got_b:?}"
    );
    assert_eq!(union, (1..=20).collect());
    for got in [&got_a, &got_b] {
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    }
    assert!(next(&mut a, 200).await.is_none() && next(&mut b, 200).await.is_none());

    // Ack 1..=12 (from two callers at once), leave the rest unacked.
    let mut ev2 = s.client("default").await.events();
    let (first, second): (Vec<u64>, Vec<u64>) = ((1..=6).collect(), (7..=12).collect());
    tokio::join!(
        ack(&mut ev, "jobs", "workers", &first),
        ack(&mut ev2, "jobs", "workers", &second),
    );
    drop(a);
    drop(b);
    // A member that reconnects gets the unacked events again (the ended
    // streams gave their claims back), and never the acked ones.
    let mut again = consume(&mut ev, group("jobs", "workers")).await;
    let got = take(&mut again, 8).await;
    // (Redeliveries, released by two streams: in any order.)
    let mut got_seqs = seqs(&got);
    got_seqs.sort();
    assert_eq!(got_seqs, (13..=20).collect::<Vec<_>>());
    assert!(got.iter().all(|e| e.deliveries == 2), "a second delivery");
    assert!(
        next(&mut again, 500).await.is_none(),
        "nothing acked comes again"
    );

    // Deleting the group ends its members' streams with one sentence.
    ev.delete(DeleteRequest {
        topic: "jobs".into(),
        group: "workers".into(),
    })
    .await
    .expect("delete group");
    let end = tokio::time::timeout(Duration::from_secs(10), again.message())
        .await
        .expect("the stream ends");
    let st = end.expect_err("the stream ends with a status");
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(st.message(), "group workers of topic jobs was deleted");
    // A group of the same name starts again from the first event.
    let mut new = consume(&mut ev, group("jobs", "workers")).await;
    assert_eq!(take(&mut new, 1).await[0].seq, 1);
}

#[tokio::test]
async fn unacked_events_come_again_after_a_nack_or_the_ack_wait_and_go_dead_after_the_limit() {
    let s = Server::start();
    let mut ev = s.client("default").await.events();
    publish(&mut ev, "pay", "p1").await;
    publish(&mut ev, "pay", "p2").await;
    let mut m = consume(
        &mut ev,
        ConsumeRequest {
            ack_wait_ms: Some(500),
            max_deliver: Some(3),
            ..group("pay", "g")
        },
    )
    .await;
    let got = take(&mut m, 2).await;
    assert_eq!(seqs(&got), vec![1, 2]);
    ack(&mut ev, "pay", "g", &[2]).await;

    // A nack with a delay: back after the delay, not before.
    let t = std::time::Instant::now();
    ev.ack(AckRequest {
        topic: "pay".into(),
        group: "g".into(),
        seqs: vec![1],
        nack: true,
        delay_ms: 300,
    })
    .await
    .expect("nack");
    let e = take(&mut m, 1).await.remove(0);
    assert_eq!((e.seq, e.deliveries), (1, 2));
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Unacked: delivered again after the ack wait.
    let t = std::time::Instant::now();
    let e = take(&mut m, 1).await.remove(0);
    assert_eq!((e.seq, e.deliveries), (1, 3));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    // Three deliveries without an ack: to the dead-letter topic, with why.
    assert!(
        next(&mut m, 1500).await.is_none(),
        "not a fourth time (seq 2 was acked)"
    );
    let mut dead = consume(&mut ev, plain("pay.dead")).await;
    let d = take(&mut dead, 1).await.remove(0);
    assert_eq!(d.payload, b"p1");
    assert_eq!(
        d.metadata.get("dead-reason").map(String::as_str),
        Some("delivered 3 times without an ack")
    );
    assert_eq!(
        d.metadata.get("dead-topic").map(String::as_str),
        Some("pay")
    );
    assert_eq!(d.metadata.get("dead-seq").map(String::as_str), Some("1"));
    assert_eq!(d.metadata.get("dead-group").map(String::as_str), Some("g"));
    // A nack of what is not claimed any more is refused.
    let err = ev
        .ack(AckRequest {
            topic: "pay".into(),
            group: "g".into(),
            seqs: vec![1],
            nack: true,
            delay_ms: 0,
        })
        .await
        .expect_err("nothing to nack");
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn bad_consume_and_ack_requests_get_one_sentence_and_change_nothing() {
    let s = Server::start();
    let mut ev = s.client("default").await.events();
    publish(&mut ev, "t", "x").await;
    let refused = |r: Result<tonic::Response<Streaming<Event>>, tonic::Status>| match r {
        Ok(_) => panic!("the consume was accepted"),
        Err(st) => st,
    };
    let st = refused(
        ev.consume(ConsumeRequest {
            ack_wait_ms: Some(0),
            ..group("t", "g")
        })
        .await,
    );
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(st.message(), "ack_wait_ms must be at least 1 ms");
    let st = refused(
        ev.consume(ConsumeRequest {
            max_deliver: Some(0),
            ..group("t", "g")
        })
        .await,
    );
    assert_eq!(st.message(), "max_deliver must be at least 1");
    let st = refused(
        ev.consume(ConsumeRequest {
            from_seq: 1,
            new_only: true,
            ..group("t", "g")
        })
        .await,
    );
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(
        st.message(),
        "give at most one of from_seq, since and new_only"
    );
    let st = refused(
        ev.consume(ConsumeRequest {
            ack_wait_ms: Some(1000),
            ..plain("t")
        })
        .await,
    );
    assert_eq!(st.code(), Code::InvalidArgument);
    let st = ev
        .ack(AckRequest {
            topic: "t".into(),
            group: "g".into(),
            seqs: vec![1],
            ..Default::default()
        })
        .await
        .expect_err("no such group");
    assert_eq!(st.code(), Code::NotFound);
    assert_eq!(st.message(), "topic t has no group g");
    // None of that made the group.
    let mut g = consume(
        &mut ev,
        ConsumeRequest {
            new_only: true,
            ..group("t", "g")
        },
    )
    .await;
    assert!(next(&mut g, 300).await.is_none(), "created now, new only");
    drop(g);
    // A start that differs from the group's is refused; the same one or
    // none is fine.
    let st = refused(
        ev.consume(ConsumeRequest {
            from_seq: 1,
            ..group("t", "g")
        })
        .await,
    );
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(
        st.message(),
        "group g exists with start with new events only; start options apply only when a group is created (delete it with `micro events delete t --group g`)"
    );
    let st = refused(
        ev.consume(ConsumeRequest {
            max_deliver: Some(3),
            ..group("t", "g")
        })
        .await,
    );
    assert_eq!(st.code(), Code::FailedPrecondition);
    consume(
        &mut ev,
        ConsumeRequest {
            new_only: true,
            max_deliver: Some(10),
            ..group("t", "g")
        },
    )
    .await;
    // An ack of an event not published yet would hide it: refused.
    let st = ev
        .ack(AckRequest {
            topic: "t".into(),
            group: "g".into(),
            seqs: vec![2],
            ..Default::default()
        })
        .await
        .expect_err("no event 2 yet");
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(st.message(), "topic t has no event 2 yet");
    let mut g = consume(&mut ev, group("t", "g")).await;
    publish(&mut ev, "t", "y").await;
    assert_eq!(take(&mut g, 1).await[0].seq, 2, "resumes from its floor");
    let read = ev
        .read(ReadRequest {
            topic: "t".into(),
            ..Default::default()
        })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(read.events.len(), 2, "the topic is as it was");

    // A node shutting down ends its consumers' streams with unavailable
    // (and is not held up by them).
    let mut all = consume(&mut ev, plain("t")).await;
    take(&mut all, 2).await;
    // (From another thread: this runtime must go on driving the client.)
    let stopper = tokio::task::spawn_blocking(move || {
        let mut s = s;
        s.terminate()
    });
    for stream in [&mut g, &mut all] {
        let end = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .expect("the stream ends");
        let st = end.expect_err("with a status");
        assert_eq!(st.code(), Code::Unavailable, "{st}");
    }
    assert_eq!(
        stopper.await.expect("terminate"),
        Some(0),
        "a clean exit with open streams"
    );
}

#[tokio::test]
async fn group_members_on_any_node_get_events_and_resume_after_their_node_dies() {
    let mut nodes = crate::cluster::cluster(2, &[]);
    let mut pub1 = nodes[0].client("default").await.events();
    let mut on2 = nodes[1].client("default").await.events();
    // A stream on another node gets what is published on the first.
    let mut watch = consume(&mut on2, plain("clicks")).await;
    let mut member = consume(
        &mut on2,
        ConsumeRequest {
            ack_wait_ms: Some(4000),
            ..group("clicks", "counter")
        },
    )
    .await;
    for i in 1..=10 {
        publish(&mut pub1, "clicks", &format!("c{i}")).await;
    }
    assert_eq!(
        seqs(&take(&mut watch, 10).await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&take(&mut member, 10).await),
        (1..=10).collect::<Vec<_>>()
    );
    ack(&mut on2, "clicks", "counter", &[1, 2, 3, 4, 5, 6]).await;
    // The node the member consumed through dies; a new member through the
    // third node gets the unacked events (after the ack wait) and not the
    // acked ones.
    nodes[1].kill9();
    drop(member);
    let mut on3 = nodes[2].client("default").await.events();
    let mut again = consume(&mut on3, group("clicks", "counter")).await;
    let mut got = Vec::new();
    while got.len() < 4 {
        match next(&mut again, 20_000).await {
            Some(e) => got.push(e),
            None => panic!(
                "got {:?} of 7..=10; node 1: {}\nnode 3: {}",
                seqs(&got),
                nodes[0].log(),
                nodes[2].log()
            ),
        }
    }
    assert_eq!(seqs(&got), vec![7, 8, 9, 10]);
    assert!(got.iter().all(|e| e.deliveries == 2));
    ack(&mut on3, "clicks", "counter", &[7, 8, 9, 10]).await;
    assert!(
        next(&mut again, 4500).await.is_none(),
        "acked: not delivered again after the ack wait"
    );
    publish(&mut pub1, "clicks", "c11").await;
    assert_eq!(take(&mut again, 1).await[0].seq, 11);
}
