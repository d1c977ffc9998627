//! Events topics end to end: publish, read, dedup by id, topics, info,
//! retention, over gRPC against real nodes.

use micro_proto::events::{PublishRequest, ReadRequest};

use crate::harness::Server;

fn publish(topic: &str, payload: &str, id: &str) -> PublishRequest {
    PublishRequest {
        topic: topic.into(),
        payload: payload.as_bytes().to_vec(),
        id: id.into(),
        ..Default::default()
    }
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
