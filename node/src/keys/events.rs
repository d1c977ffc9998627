//! Where events live in the replicated key space, and how their records
//! are encoded. Every key of the events service is built here.
//!
//! Under `events/<ns>/<topic>/`:
//!
//! | key | value |
//! |---|---|
//! | `log/<seq:020>` | protobuf [`Event`] without topic and seq (both come from the key) |
//! | `meta` | protobuf [`Retention`]: written by Create; absent means no limits |
//! | `id/<message id>` | the `log/…` key of the event with that id (dedup index, expires with the window) |
//! | `group/<g>` | bincode [`GroupConfig`]: the group exists |
//! | `floor/<g>` | the ack floor, u64 big-endian: every seq at or below it is done |
//! | `claim/<g>/<seq:020>` | bincode [`Claim`]: delivered to a member, not yet acked |
//! | `acked/<g>/<seq:020>` | empty: acked above the floor |
//!
//! Topic, group and namespace names follow [`crate::paths::check_name`],
//! so none contains `/`, and a topic's keys never mix with another's.
//!
//! Must never: build an events key anywhere else, or decode a record
//! without reporting a corrupt one as an error.

use micro_proto::events::{Event, Retention};
use micro_raft::sequence_key;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// How long a message id is remembered, judged by the timestamps in the
/// entries (so every replica agrees).
pub const DEDUP_WINDOW_MS: u64 = 120_000;
/// Longest topic name: room for the `.dead` suffix within the name grammar.
pub const MAX_TOPIC: usize = 120;
/// Longest message id.
pub const MAX_ID: usize = 256;
/// The suffix of a topic's dead-letter topic.
pub const DEAD_SUFFIX: &str = ".dead";

/// Checks a topic name: the name grammar, at most [`MAX_TOPIC`] bytes.
pub fn check_topic(topic: &str) -> Result<(), Status> {
    if topic.len() > MAX_TOPIC {
        return Err(Status::invalid_argument(format!(
            "topic is {} bytes; the limit is {MAX_TOPIC}",
            topic.len()
        )));
    }
    crate::grpc::check_name("topic", topic)
}

/// Checks a group name (the name grammar).
pub fn check_group(group: &str) -> Result<(), Status> {
    crate::grpc::check_name("group", group)
}

/// Checks a message id: 1 to [`MAX_ID`] bytes, no control characters.
pub fn check_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > MAX_ID {
        return Err(Status::invalid_argument(format!(
            "a message id must be 1 to {MAX_ID} bytes"
        )));
    }
    if id.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(
            "a message id must not contain control characters",
        ));
    }
    Ok(())
}

/// The dead-letter topic of `topic`.
pub fn dead_topic(topic: &str) -> String {
    format!("{topic}{DEAD_SUFFIX}")
}

/// `events/`: the namespaces that hold events are its children.
pub fn root_prefix() -> Vec<u8> {
    b"events/".to_vec()
}

/// `events/<ns>/`: the topics of a namespace are its children.
pub fn namespace_prefix(ns: &str) -> Vec<u8> {
    format!("events/{ns}/").into_bytes()
}

/// `events/<ns>/<topic>/`: everything of one topic.
pub fn topic_prefix(ns: &str, topic: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/").into_bytes()
}

/// The prefix a topic's events are appended under.
pub fn log_prefix(ns: &str, topic: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/log/").into_bytes()
}

/// The key of event `seq` of a topic.
pub fn log_key(ns: &str, topic: &str, seq: u64) -> Vec<u8> {
    sequence_key(&log_prefix(ns, topic), seq)
}

/// A topic's retention record.
pub fn meta_key(ns: &str, topic: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/meta").into_bytes()
}

/// The dedup index entry of a message id.
pub fn id_key(ns: &str, topic: &str, id: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/id/{id}").into_bytes()
}

/// Where a topic's group configs live (children are group names).
pub fn groups_prefix(ns: &str, topic: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/group/").into_bytes()
}

/// A group's config: its existence.
pub fn group_key(ns: &str, topic: &str, group: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/group/{group}").into_bytes()
}

/// A group's ack floor.
pub fn floor_key(ns: &str, topic: &str, group: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/floor/{group}").into_bytes()
}

/// The prefix of a group's claims (delivered, not acked).
pub fn claims_prefix(ns: &str, topic: &str, group: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/claim/{group}/").into_bytes()
}

/// A group's claim on event `seq`.
pub fn claim_key(ns: &str, topic: &str, group: &str, seq: u64) -> Vec<u8> {
    sequence_key(&claims_prefix(ns, topic, group), seq)
}

/// The prefix of a group's acks above the floor.
pub fn acked_prefix(ns: &str, topic: &str, group: &str) -> Vec<u8> {
    format!("events/{ns}/{topic}/acked/{group}/").into_bytes()
}

/// A group's ack of event `seq`.
pub fn acked_key(ns: &str, topic: &str, group: &str, seq: u64) -> Vec<u8> {
    sequence_key(&acked_prefix(ns, topic, group), seq)
}

/// The sequence at the end of a `log/`, `claim/` or `acked/` key (its last
/// 20 digits).
pub fn seq_of(key: &[u8]) -> Option<u64> {
    let digits = key.get(key.len().checked_sub(20)?..)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// What a key of the events space is, for followers of the change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub namespace: &'a str,
    pub topic: &'a str,
    pub kind: Kind<'a>,
}

/// The part of a topic a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Log(u64),
    Meta,
    Id,
    Group(&'a str),
    Floor(&'a str),
    Claim(&'a str, u64),
    Acked(&'a str, u64),
}

/// Parses a key of the events space; `None` for any other key.
pub fn parse(key: &[u8]) -> Option<Parsed<'_>> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix("events/")?;
    let mut parts = rest.splitn(4, '/');
    let namespace = parts.next()?;
    let topic = parts.next()?;
    let what = parts.next()?;
    let tail = parts.next();
    let seq = |s: &str| s.rsplit('/').next().and_then(|d| d.parse::<u64>().ok());
    let kind = match (what, tail) {
        ("log", Some(s)) => Kind::Log(s.parse().ok()?),
        ("meta", None) => Kind::Meta,
        ("id", Some(_)) => Kind::Id,
        ("group", Some(g)) => Kind::Group(g),
        ("floor", Some(g)) => Kind::Floor(g),
        ("claim", Some(s)) => Kind::Claim(s.split('/').next()?, seq(s)?),
        ("acked", Some(s)) => Kind::Acked(s.split('/').next()?, seq(s)?),
        _ => return None,
    };
    Some(Parsed {
        namespace,
        topic,
        kind,
    })
}

/// How a group started, as asked when it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Start {
    /// The first stored event (the default).
    First,
    /// This sequence.
    Seq(u64),
    /// The first event at or after this unix time (ms).
    Since(i64),
    /// Only events published after the group was created.
    New,
}

/// A group's settings, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    pub start: Start,
    pub ack_wait_ms: u64,
    pub max_deliver: u32,
    /// unix ms
    pub created: u64,
}

/// An event delivered to a member of a group and not yet acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Deliveries so far, counting the one this claim is for.
    pub deliveries: u32,
    /// unix ms after which the event may be delivered again.
    pub deadline: u64,
    /// The node that delivered it.
    pub node: u64,
}

/// Encodes a bincode record (group configs, claims).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain structs into a Vec cannot fail.
    bincode::serialize(v).unwrap_or_default()
}

/// Decodes a bincode record, reporting a corrupt one.
pub fn decode<T: for<'de> Deserialize<'de>>(what: &str, raw: &[u8]) -> Result<T, Status> {
    bincode::deserialize(raw).map_err(|e| Status::internal(format!("corrupt {what} record: {e}")))
}

/// Encodes an ack floor.
pub fn encode_floor(floor: u64) -> Vec<u8> {
    floor.to_be_bytes().to_vec()
}

/// Decodes an ack floor.
pub fn decode_floor(raw: &[u8]) -> Result<u64, Status> {
    let b: [u8; 8] = raw
        .try_into()
        .map_err(|_| Status::internal("corrupt ack floor record"))?;
    Ok(u64::from_be_bytes(b))
}

/// The stored form of an event: topic and seq left out (the key has them).
pub fn encode_event(ev: &Event) -> Vec<u8> {
    Event {
        id: ev.id.clone(),
        topic: String::new(),
        seq: 0,
        timestamp: ev.timestamp,
        metadata: ev.metadata.clone(),
        payload: ev.payload.clone(),
        deliveries: 0,
    }
    .encode_to_vec()
}

/// An event as stored under `log/<seq>` of `topic`.
pub fn decode_event(topic: &str, seq: u64, raw: &[u8]) -> Result<Event, Status> {
    let mut ev =
        Event::decode(raw).map_err(|e| Status::internal(format!("corrupt event record: {e}")))?;
    ev.topic = topic.to_string();
    ev.seq = seq;
    Ok(ev)
}

/// The timestamp of a stored event, read without copying its payload or
/// metadata (the decoder skips the fields it does not name).
pub fn event_timestamp(raw: &[u8]) -> Result<i64, Status> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Stamp {
        #[prost(int64, tag = "4")]
        timestamp: i64,
    }
    Stamp::decode(raw)
        .map(|s| s.timestamp)
        .map_err(|e| Status::internal(format!("corrupt event record: {e}")))
}

/// Decodes a topic's retention record.
pub fn decode_retention(raw: &[u8]) -> Result<Retention, Status> {
    Retention::decode(raw).map_err(|e| Status::internal(format!("corrupt retention record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        let k = log_key("default", "orders", 42);
        assert_eq!(
            parse(&k),
            Some(Parsed {
                namespace: "default",
                topic: "orders",
                kind: Kind::Log(42)
            })
        );
        assert_eq!(seq_of(&k), Some(42));
        let c = claim_key("ns", "orders.dead", "billing", 7);
        assert_eq!(parse(&c).map(|p| p.kind), Some(Kind::Claim("billing", 7)));
        assert_eq!(
            parse(&acked_key("ns", "t", "g", 9)).map(|p| p.kind),
            Some(Kind::Acked("g", 9))
        );
        assert_eq!(
            parse(&meta_key("ns", "t")).map(|p| p.kind),
            Some(Kind::Meta)
        );
        assert_eq!(parse(b"store/ns/db/t/k"), None);
        let ev = Event {
            id: "x".into(),
            timestamp: 1_700_000_000_123,
            payload: vec![7; 100],
            ..Default::default()
        };
        assert_eq!(
            event_timestamp(&encode_event(&ev)).ok(),
            Some(1_700_000_000_123)
        );
    }

    /// Consumers read a topic's log, and a group's claims and acks, by
    /// scanning their prefix: the keys must sort in sequence order, past
    /// the width where a plain decimal would not (9 < 10, 99 < 100), and a
    /// topic's log must not reach a topic whose name extends it.
    #[test]
    fn sequence_keys_sort_in_number_order_and_stay_in_their_topic() {
        let seqs = [0u64, 1, 9, 10, 99, 100, 12_345, u32::MAX as u64, u64::MAX];
        for make in [
            |s| log_key("ns", "t", s),
            |s| claim_key("ns", "t", "g", s),
            |s| acked_key("ns", "t", "g", s),
        ] as [fn(u64) -> Vec<u8>; 3]
        {
            let keys: Vec<Vec<u8>> = seqs.iter().map(|s| make(*s)).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            assert_eq!(sorted, keys);
            for (k, s) in keys.iter().zip(seqs) {
                assert_eq!(seq_of(k), Some(s));
            }
        }
        let log = log_prefix("ns", "t");
        assert!(log_key("ns", "t", 5).starts_with(&log));
        assert!(!log_key("ns", "t2", 5).starts_with(&log));
        assert!(!meta_key("ns", "t").starts_with(&log));
        let claims = claims_prefix("ns", "t", "g");
        assert!(!claim_key("ns", "t", "g2", 5).starts_with(&claims));
        assert!(!acked_key("ns", "t", "g", 5).starts_with(&claims));
    }
}
