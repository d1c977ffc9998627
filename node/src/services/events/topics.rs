//! Topics: publish, read, list, info, create, delete, and retention.
//!
//! A publish is one replicated transaction: append the event under the
//! topic's log prefix (the state machine assigns the next sequence) and,
//! when the publisher named a message id, index that id to the event's key
//! until the dedup window (judged by the entry's timestamp) ends, on the
//! condition that the id is not indexed yet. The reply comes after the
//! entry committed on a quorum and applied here.

use micro_proto::events::*;
use micro_raft::{now_millis, Cond, Op, Txn};
use std::sync::Arc;
use tonic::Status;

use super::{keys, Events};
use crate::grpc::{barrier, status};

/// The most bytes of payload and metadata one event may carry.
pub const MAX_EVENT: usize = 1024 * 1024;
/// The most metadata entries of one event.
pub const MAX_METADATA: usize = 64;
/// Events a read returns when no limit is given.
pub const DEFAULT_READ: u64 = 100;
/// The most events one read may return.
pub const MAX_READ: u64 = 1000;

/// Bytes an event counts for limits: payload, id and metadata.
fn event_size(req: &PublishRequest) -> usize {
    req.payload.len()
        + req.id.len()
        + req
            .metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// A message id made by the node for a publish that named none.
fn fresh_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The topic index and retention state of this node.
pub struct Topics {}

impl Topics {
    pub fn new() -> Self {
        Topics {}
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the topic index follower and the leader's retention task.
pub fn spawn(_events: &Arc<Events>) {}

/// Appends one event; replies with its sequence once committed.
pub async fn publish(
    ev: &Events,
    ns: &str,
    req: PublishRequest,
) -> Result<PublishResponse, Status> {
    keys::check_topic(&req.topic)?;
    let size = event_size(&req);
    if size > MAX_EVENT {
        return Err(Status::invalid_argument(format!(
            "the event is {size} bytes; the limit is {MAX_EVENT}"
        )));
    }
    if req.metadata.len() > MAX_METADATA {
        return Err(Status::invalid_argument(format!(
            "the event has {} metadata entries; the limit is {MAX_METADATA}",
            req.metadata.len()
        )));
    }
    if req.metadata.keys().any(|k| k.is_empty()) {
        return Err(Status::invalid_argument("a metadata key must not be empty"));
    }
    let named = !req.id.is_empty();
    if named {
        keys::check_id(&req.id)?;
    }
    let id = if named { req.id.clone() } else { fresh_id() };
    let now = now_millis();
    let event = Event {
        id: id.clone(),
        timestamp: now as i64,
        metadata: req.metadata,
        payload: req.payload,
        ..Default::default()
    };
    let mut ops = vec![Op::Append {
        prefix: keys::log_prefix(ns, &req.topic),
        value: keys::encode_event(&event),
        expires_at: None,
    }];
    let mut txn;
    let id_key = keys::id_key(ns, &req.topic, &id);
    if named {
        ops.push(Op::PutAppendedKey {
            key: id_key.clone(),
            expires_at: Some(now + keys::DEDUP_WINDOW_MS),
        });
        txn = Txn::ops(ops).when(Cond::Absent(id_key.clone()));
    } else {
        txn = Txn::ops(ops);
    }
    txn.now = now;
    let result = ev.replica.write(txn).await.map_err(status)?;
    if result.succeeded {
        let seq = result
            .appended
            .first()
            .and_then(|k| keys::seq_of(k))
            .ok_or_else(|| Status::internal("the publish was applied without a sequence"))?;
        return Ok(PublishResponse {
            seq,
            id,
            duplicate: false,
        });
    }
    // The id is indexed: the write returned after this replica applied the
    // entry, so the index entry it failed on is readable here.
    let first = ev
        .replica
        .reader()
        .get(&id_key, now)
        .map_err(status)?
        .and_then(|r| keys::seq_of(&r.value));
    match first {
        Some(seq) => Ok(PublishResponse {
            seq,
            id,
            duplicate: true,
        }),
        None => Err(Status::aborted(format!(
            "an event with id {id} was published moments ago and its window just ended; publish again"
        ))),
    }
}

/// Lists stored events of a topic, from a sequence, in either order.
pub async fn read(ev: &Events, ns: &str, req: ReadRequest) -> Result<ReadResponse, Status> {
    keys::check_topic(&req.topic)?;
    let limit = match req.limit {
        0 => DEFAULT_READ,
        n if n > MAX_READ => {
            return Err(Status::invalid_argument(format!(
                "a read returns at most {MAX_READ} events; ask for fewer"
            )))
        }
        n => n,
    };
    barrier(&ev.replica, false).await?;
    let prefix = keys::log_prefix(ns, &req.topic);
    let reader = ev.replica.reader();
    let now = now_millis();
    let mut events = Vec::new();
    for item in reader.scan(&prefix, now, req.desc) {
        let (key, rec) = item.map_err(status)?;
        let Some(seq) = keys::seq_of(&key) else {
            continue;
        };
        let before_offset = if req.desc {
            req.offset > 0 && seq > req.offset
        } else {
            seq < req.offset
        };
        if before_offset {
            continue;
        }
        events.push(keys::decode_event(&req.topic, seq, &rec.value)?);
        if events.len() as u64 >= limit {
            break;
        }
    }
    Ok(ReadResponse { events })
}

pub async fn topics(_ev: &Events, _ns: &str) -> Result<TopicsResponse, Status> {
    Err(Status::unimplemented("events topics is not built yet"))
}

pub async fn info(_ev: &Events, _ns: &str, _req: InfoRequest) -> Result<InfoResponse, Status> {
    Err(Status::unimplemented("events info is not built yet"))
}

pub async fn create(
    _ev: &Events,
    _ns: &str,
    _req: CreateRequest,
) -> Result<CreateResponse, Status> {
    Err(Status::unimplemented("events create is not built yet"))
}

pub async fn delete(_ev: &Events, _ns: &str, _topic: &str) -> Result<(), Status> {
    Err(Status::unimplemented("events delete is not built yet"))
}
