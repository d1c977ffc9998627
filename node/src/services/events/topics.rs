//! Topics: publish, read, list, info, create, delete, the topic index and
//! retention.
//!
//! A publish is one replicated transaction: append the event under the
//! topic's log prefix (the state machine assigns the next sequence) and,
//! when the publisher named a message id, index that id to the event's key
//! until the dedup window (judged by the entry's timestamp) ends, on the
//! condition that the id is not indexed yet. The reply comes after the
//! entry committed on a quorum and applied here.
//!
//! A read seeks to its start ([`micro_raft::Reader::scan_from`]): reading
//! from sequence N of a long log costs one seek, not a walk over the N
//! events before it. It returns at most [`MAX_READ`] events and about
//! [`MAX_READ_BYTES`] (always at least one event).
//!
//! Info's `bytes` is the stored size: each event's encoded record (payload,
//! metadata, id and timestamp).
//!
//! The topic index ([`Topics`]) is kept by every node from the change
//! stream: per topic it holds one 24-byte slot (sequence, timestamp,
//! stored size) per stored event, so a million events cost about 24 MB
//! (a `VecDeque`, up to twice that while it grows). A topic is indexed when
//! first asked about (Info, retention) by one scan of its log, in the
//! blocking pool; a snapshot install (`Reset`) or a receiver that lagged
//! drops the whole index, and each topic is scanned again when next needed.
//! Changes are applied with set semantics (a put replaces, a delete
//! removes), so changes a scan already saw may be applied again harmlessly.
//!
//! Retention: while this node leads, about once a second, every topic with
//! a `meta` record that sets limits is trimmed: the oldest events beyond
//! `max_count`, older than `max_age_ms` (by the timestamps stored in the
//! events, judged against the leader's clock when it proposes) or beyond
//! `max_bytes` are removed by proposing `DeleteRange` of their log keys, at
//! most [`TRIM_PER_ENTRY`] per entry. The entry carries the decision (a
//! key range), so applying it is deterministic. Dead-letter topics
//! (`<t>.dead`) follow their own `meta` like any topic. Message-id index
//! entries expire by themselves and the node's expiry sweeper purges them.
//!
//! Delete removes the topic's whole prefix (events, meta, message ids,
//! groups) in one entry; its dead-letter topic is a topic of its own and
//! stays. The state machine keeps the topic's sequence counter, so a topic
//! used again after a delete continues after its old last sequence: a
//! consumer never sees a sequence twice.
//!
//! Must never: acknowledge a publish before it committed, hold the index
//! lock across an await, or decide a trim while applying an entry.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use micro_proto::events::*;
use micro_raft::{now_millis, Change, Cond, Op, Reader, Txn};
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use super::{groups, Events};
use crate::grpc::{barrier, status};
use crate::keys::events as keys;

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

/// A metadata key: 1 to [`MAX_METADATA_KEY`] bytes, no control characters.
fn check_metadata_key(k: &str) -> Result<(), Status> {
    if k.is_empty() {
        return Err(Status::invalid_argument("a metadata key must not be empty"));
    }
    if k.len() > MAX_METADATA_KEY {
        return Err(Status::invalid_argument(format!(
            "a metadata key is at most {MAX_METADATA_KEY} bytes"
        )));
    }
    if k.chars().any(|c| c.is_control()) {
        return Err(Status::invalid_argument(
            "a metadata key must not contain control characters",
        ));
    }
    Ok(())
}

/// A message id made by the node for a publish that named none.
fn fresh_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The most bytes of stored events one read returns (always at least one
/// event): well within the 8 MiB a gRPC message may carry. A read that
/// stops early returns fewer events than asked; reading on from the last
/// sequence + 1 gets the rest.
pub const MAX_READ_BYTES: usize = 4 * 1024 * 1024;
/// How often the leader enforces retention.
pub const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// The most events one retention entry removes.
pub const TRIM_PER_ENTRY: u32 = 10_000;
/// The most retention entries proposed for one topic per round.
const TRIM_ENTRIES_PER_ROUND: usize = 10;
/// How long Info waits for the index to catch up with the state it read
/// before it scans the topic again.
const CATCH_UP: Duration = Duration::from_millis(500);
/// The most bytes of one metadata key.
pub const MAX_METADATA_KEY: usize = 256;

/// One stored event as the index keeps it (24 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seq: u64,
    timestamp: i64,
    /// the stored record's encoded length
    size: u64,
}

/// What the index knows of one topic's stored events, oldest first.
#[derive(Debug, Default)]
struct TopicIndex {
    slots: VecDeque<Slot>,
    bytes: u64,
}

/// A topic's stored events in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub count: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_timestamp: i64,
    pub last_timestamp: i64,
}

impl TopicIndex {
    /// Scans a topic's log (one pass; blocking, so callers run it in the
    /// blocking pool).
    fn load(reader: &Reader, ns: &str, topic: &str) -> Result<TopicIndex, Status> {
        let mut t = TopicIndex::default();
        for item in reader.scan(&keys::log_prefix(ns, topic), now_millis(), false) {
            let (key, rec) = item.map_err(status)?;
            let Some(seq) = keys::seq_of(&key) else {
                continue;
            };
            t.put(Slot {
                seq,
                timestamp: keys::event_timestamp(&rec.value)?,
                size: rec.value.len() as u64,
            });
        }
        Ok(t)
    }

    /// Adds (or replaces) an event; appends are the common case.
    fn put(&mut self, slot: Slot) {
        match self.slots.back() {
            Some(last) if last.seq >= slot.seq => {
                match self.slots.binary_search_by_key(&slot.seq, |s| s.seq) {
                    Ok(i) => {
                        self.bytes = self.bytes.saturating_sub(self.slots[i].size);
                        self.slots[i] = slot;
                    }
                    Err(i) => self.slots.insert(i, slot),
                }
            }
            _ => self.slots.push_back(slot),
        }
        self.bytes += slot.size;
    }

    /// Removes an event if indexed; trims of the oldest are the common case.
    fn remove(&mut self, seq: u64) {
        let at = match self.slots.front() {
            Some(first) if first.seq == seq => Some(0),
            _ => self.slots.binary_search_by_key(&seq, |s| s.seq).ok(),
        };
        if let Some(slot) = at.and_then(|i| self.slots.remove(i)) {
            self.bytes = self.bytes.saturating_sub(slot.size);
        }
    }

    fn stats(&self) -> Stats {
        let (first, last) = match (self.slots.front(), self.slots.back()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Stats::default(),
        };
        Stats {
            count: self.slots.len() as u64,
            bytes: self.bytes,
            first_seq: first.seq,
            last_seq: last.seq,
            first_timestamp: first.timestamp,
            last_timestamp: last.timestamp,
        }
    }

    /// The highest sequence retention removes (every stored event at or
    /// below it goes), judged at `now` (the proposer's clock); `None` when
    /// the topic is within its limits. The oldest go first, by sequence.
    fn trim(&self, r: &Retention, now: u64) -> Option<u64> {
        let len = self.slots.len() as u64;
        let mut drop = 0usize;
        if r.max_count > 0 && len > r.max_count {
            drop = (len - r.max_count) as usize;
        }
        if r.max_age_ms > 0 {
            let cutoff = now.saturating_sub(r.max_age_ms);
            let old = self
                .slots
                .iter()
                .take_while(|s| s.timestamp < 0 || (s.timestamp as u64) < cutoff)
                .count();
            drop = drop.max(old);
        }
        if r.max_bytes > 0 && self.bytes > r.max_bytes {
            let mut excess = self.bytes - r.max_bytes;
            let mut n = 0;
            for s in &self.slots {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(s.size);
                n += 1;
            }
            drop = drop.max(n);
        }
        drop.checked_sub(1)
            .and_then(|i| self.slots.get(i))
            .map(|s| s.seq)
    }
}

/// Indexed topics, by namespace then topic. Only topics someone asked
/// about are here; the rest are scanned when first needed.
#[derive(Debug, Default)]
struct Index {
    namespaces: HashMap<String, HashMap<String, TopicIndex>>,
}

impl Index {
    fn get_mut(&mut self, ns: &str, topic: &str) -> Option<&mut TopicIndex> {
        self.namespaces.get_mut(ns)?.get_mut(topic)
    }

    fn forget(&mut self, ns: &str, topic: &str) {
        if let Some(topics) = self.namespaces.get_mut(ns) {
            topics.remove(topic);
            if topics.is_empty() {
                self.namespaces.remove(ns);
            }
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Reset => self.namespaces.clear(),
            Change::Put { key, record, .. } => {
                let Some(p) = keys::parse(key) else { return };
                let keys::Kind::Log(seq) = p.kind else { return };
                let Some(t) = self.get_mut(p.namespace, p.topic) else {
                    return;
                };
                match keys::event_timestamp(&record.value) {
                    Ok(timestamp) => t.put(Slot {
                        seq,
                        timestamp,
                        size: record.value.len() as u64,
                    }),
                    Err(e) => {
                        // Rebuilt (and the corruption reported) when next needed.
                        tracing::warn!("events index: {}", e.message());
                        self.forget(p.namespace, p.topic);
                    }
                }
            }
            Change::Delete { key } => {
                let Some(p) = keys::parse(key) else { return };
                let keys::Kind::Log(seq) = p.kind else { return };
                let Some(t) = self.get_mut(p.namespace, p.topic) else {
                    return;
                };
                t.remove(seq);
                if t.slots.is_empty() {
                    // A deleted topic leaves nothing behind; an emptied one
                    // costs one (empty) scan when next needed.
                    self.forget(p.namespace, p.topic);
                }
            }
        }
    }
}

/// The topic index of this node (see the module docs). A std mutex: it is
/// never held across an await; a scan that builds a topic's entry holds
/// it, in the blocking pool (the change follower waits for it meanwhile,
/// which is rare: once per topic after a start, a `Reset` or a lag).
#[derive(Debug, Default)]
pub struct Topics {
    index: Arc<Mutex<Index>>,
}

fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

impl Topics {
    pub fn new() -> Self {
        Topics::default()
    }

    /// Applies one batch of applied changes.
    fn apply(&self, batch: &[Change]) {
        let mut index = lock(&self.index);
        for change in batch {
            index.apply(change);
        }
    }

    /// Drops the whole index (after a lagged receiver).
    fn clear(&self) {
        lock(&self.index).namespaces.clear();
    }

    fn forget(&self, ns: &str, topic: &str) {
        lock(&self.index).forget(ns, topic);
    }

    /// Runs `f` on a topic's index entry, building it by a scan first when
    /// the topic is not indexed.
    async fn query<R: Send + 'static>(
        &self,
        reader: &Reader,
        ns: &str,
        topic: &str,
        f: impl FnOnce(&TopicIndex) -> R + Send + 'static,
    ) -> Result<R, Status> {
        {
            let mut index = lock(&self.index);
            if let Some(t) = index.get_mut(ns, topic) {
                return Ok(f(t));
            }
        }
        let index = self.index.clone();
        let reader = reader.clone();
        let (ns, topic) = (ns.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let mut index = lock(&index);
            if let Some(t) = index.get_mut(&ns, &topic) {
                return Ok(f(t));
            }
            let built = TopicIndex::load(&reader, &ns, &topic)?;
            let r = f(&built);
            index.namespaces.entry(ns).or_default().insert(topic, built);
            Ok(r)
        })
        .await
        .map_err(|e| Status::internal(format!("the topic index scan failed: {e}")))?
    }

    /// A topic's numbers, at least as new as the state the local replica
    /// holds now (the caller ran a read barrier first): waits for the
    /// change stream to catch up, and after [`CATCH_UP`] scans again.
    async fn fresh_stats(&self, reader: &Reader, ns: &str, topic: &str) -> Result<Stats, Status> {
        let prefix = keys::log_prefix(ns, topic);
        let now = now_millis();
        let end = |reverse: bool| -> Result<Option<u64>, Status> {
            match reader.scan(&prefix, now, reverse).next() {
                Some(item) => Ok(keys::seq_of(&item.map_err(status)?.0)),
                None => Ok(None),
            }
        };
        let (first, last) = (end(false)?, end(true)?);
        // First and last sequences only grow (trims remove the oldest,
        // appends add above the last, a deleted topic's sequences go on),
        // so an index at or beyond both has applied every change the
        // replica had applied when they were read.
        let caught_up = move |s: &Stats| match (first, last) {
            (Some(f), Some(l)) => s.count > 0 && s.first_seq >= f && s.last_seq >= l,
            _ => s.count == 0,
        };
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let stats = self.query(reader, ns, topic, |t| t.stats()).await?;
            if caught_up(&stats) {
                return Ok(stats);
            }
            if tokio::time::Instant::now() >= deadline {
                self.forget(ns, topic);
                return self.query(reader, ns, topic, |t| t.stats()).await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Starts the topic index follower and the leader's retention task. Both
/// end when the service is dropped.
pub fn spawn(events: &Arc<Events>) {
    let mut changes = events.replica.subscribe();
    let weak = Arc::downgrade(events);
    tokio::spawn(async move {
        loop {
            let next = changes.recv().await;
            let Some(ev) = weak.upgrade() else { return };
            match next {
                Ok(batch) => ev.topics.apply(&batch),
                Err(RecvError::Lagged(_)) => ev.topics.clear(),
                Err(RecvError::Closed) => return,
            }
        }
    });
    let weak = Arc::downgrade(events);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(ev) = weak.upgrade() else { return };
            if !ev.replica.is_leader() {
                continue;
            }
            if let Err(e) = enforce_retention(&ev).await {
                tracing::warn!("events retention: {}", e.message());
            }
        }
    });
}

/// The topics whose `meta` sets a limit, with that retention. One seek per
/// namespace and topic.
fn retained_topics(reader: &Reader) -> Result<Vec<(String, String, Retention)>, Status> {
    let now = now_millis();
    let mut out = Vec::new();
    for ns in reader
        .children(&keys::root_prefix(), b'/', now)
        .map_err(status)?
    {
        let ns = String::from_utf8_lossy(&ns).into_owned();
        for topic in reader
            .children(&keys::namespace_prefix(&ns), b'/', now)
            .map_err(status)?
        {
            let topic = String::from_utf8_lossy(&topic).into_owned();
            let Some(rec) = reader
                .get(&keys::meta_key(&ns, &topic), now)
                .map_err(status)?
            else {
                continue;
            };
            let r = keys::decode_retention(&rec.value)?;
            if r.max_age_ms > 0 || r.max_count > 0 || r.max_bytes > 0 {
                out.push((ns.clone(), topic, r));
            }
        }
    }
    Ok(out)
}

/// One round of retention on the leader. A topic that fails is reported
/// and the round goes on; a write the cluster cannot take ends it.
async fn enforce_retention(ev: &Events) -> Result<(), Status> {
    let reader = ev.replica.reader().clone();
    let topics = {
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || retained_topics(&reader))
            .await
            .map_err(|e| Status::internal(format!("the retention scan failed: {e}")))??
    };
    for (ns, topic, retention) in topics {
        match trim_topic(ev, &reader, &ns, &topic, retention).await {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                ) =>
            {
                return Err(e)
            }
            Err(e) => tracing::warn!("events retention of {ns}/{topic}: {}", e.message()),
        }
    }
    Ok(())
}

/// Removes a topic's events beyond its retention, judged now.
async fn trim_topic(
    ev: &Events,
    reader: &Reader,
    ns: &str,
    topic: &str,
    retention: Retention,
) -> Result<(), Status> {
    let now = now_millis();
    let upto = ev
        .topics
        .query(reader, ns, topic, move |t| t.trim(&retention, now))
        .await?;
    let Some(upto) = upto else { return Ok(()) };
    let range = Op::DeleteRange {
        start: keys::log_key(ns, topic, 0),
        end: keys::log_key(ns, topic, upto.saturating_add(1)),
        limit: TRIM_PER_ENTRY,
    };
    for _ in 0..TRIM_ENTRIES_PER_ROUND {
        let mut txn = Txn::ops(vec![range.clone()]);
        txn.now = now;
        let done = ev.replica.write(txn).await.map_err(status)?;
        if done.deleted < u64::from(TRIM_PER_ENTRY) {
            break;
        }
    }
    Ok(())
}

/// Appends one event; replies with its sequence once committed.
pub async fn publish(
    ev: &Events,
    ns: &str,
    req: PublishRequest,
) -> Result<PublishResponse, Status> {
    // Every check comes before the write: a refused publish stores nothing.
    keys::check_topic(&req.topic)?;
    if req.metadata.len() > MAX_METADATA {
        return Err(Status::invalid_argument(format!(
            "the event has {} metadata entries; the limit is {MAX_METADATA}",
            req.metadata.len()
        )));
    }
    for k in req.metadata.keys() {
        check_metadata_key(k)?;
    }
    let size = event_size(&req);
    if size > MAX_EVENT {
        return Err(Status::invalid_argument(format!(
            "the event is {size} bytes; the limit is {MAX_EVENT}"
        )));
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
    // The last possible key reads newest first from the end.
    let from = match (req.desc, req.offset) {
        (true, 0) => keys::log_key(ns, &req.topic, u64::MAX),
        (_, offset) => keys::log_key(ns, &req.topic, offset),
    };
    let reader = ev.replica.reader();
    let now = now_millis();
    let mut events = Vec::new();
    let mut bytes = 0;
    for item in reader
        .scan_from(&prefix, &from, now, req.desc)
        .take(limit as usize)
    {
        let (key, rec) = item.map_err(status)?;
        let Some(seq) = keys::seq_of(&key) else {
            continue;
        };
        bytes += rec.value.len();
        if bytes > MAX_READ_BYTES && !events.is_empty() {
            break;
        }
        events.push(keys::decode_event(&req.topic, seq, &rec.value)?);
    }
    if events.is_empty() && !exists(reader, ns, &req.topic)? {
        return Err(not_found(&req.topic));
    }
    Ok(ReadResponse { events })
}

fn not_found(topic: &str) -> Status {
    Status::not_found(format!("topic {topic} does not exist"))
}

/// Whether a topic holds anything: events, a retention record, message ids
/// or groups. One seek.
fn exists(reader: &Reader, ns: &str, topic: &str) -> Result<bool, Status> {
    match reader
        .scan(&keys::topic_prefix(ns, topic), now_millis(), false)
        .next()
    {
        Some(item) => item.map(|_| true).map_err(status),
        None => Ok(false),
    }
}

/// The topics of the namespace, sorted.
pub async fn topics(ev: &Events, ns: &str) -> Result<TopicsResponse, Status> {
    barrier(&ev.replica, false).await?;
    let children = ev
        .replica
        .reader()
        .children(&keys::namespace_prefix(ns), b'/', now_millis())
        .map_err(status)?;
    // Key order is byte order, which is the order of the names.
    let topics = children
        .into_iter()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .collect();
    Ok(TopicsResponse { topics })
}

/// A topic's retention, size, sequences and groups.
pub async fn info(ev: &Events, ns: &str, req: InfoRequest) -> Result<InfoResponse, Status> {
    keys::check_topic(&req.topic)?;
    barrier(&ev.replica, false).await?;
    Ok(InfoResponse {
        info: Some(topic_info(ev, ns, &req.topic).await?),
    })
}

/// What Info and Create reply, from this replica's state (after a barrier
/// or a write).
async fn topic_info(ev: &Events, ns: &str, topic: &str) -> Result<TopicInfo, Status> {
    let reader = ev.replica.reader();
    let retention = match reader
        .get(&keys::meta_key(ns, topic), now_millis())
        .map_err(status)?
    {
        Some(rec) => keys::decode_retention(&rec.value)?,
        None if exists(reader, ns, topic)? => Retention::default(),
        None => return Err(not_found(topic)),
    };
    let stats = ev.topics.fresh_stats(reader, ns, topic).await?;
    Ok(TopicInfo {
        topic: topic.to_string(),
        retention: Some(retention),
        count: stats.count,
        bytes: stats.bytes,
        first_seq: stats.first_seq,
        last_seq: stats.last_seq,
        first_timestamp: stats.first_timestamp,
        last_timestamp: stats.last_timestamp,
        groups: groups::group_infos(ev, ns, topic)?,
    })
}

/// Creates a topic with a retention, or sets an existing topic's
/// retention (the reply's info shows the one now in force; the leader
/// applies it within about a second).
pub async fn create(ev: &Events, ns: &str, req: CreateRequest) -> Result<CreateResponse, Status> {
    keys::check_topic(&req.topic)?;
    let retention = req.retention.unwrap_or_default();
    if retention.max_age_ms > i64::MAX as u64 {
        return Err(Status::invalid_argument(
            "max_age_ms is too large; use 0 for no age limit",
        ));
    }
    ev.replica
        .write(Txn::put(
            keys::meta_key(ns, &req.topic),
            retention.encode_to_vec(),
            None,
        ))
        .await
        .map_err(status)?;
    Ok(CreateResponse {
        info: Some(topic_info(ev, ns, &req.topic).await?),
    })
}

/// Deletes a topic: its events, retention, message ids and groups, in one
/// entry. Its dead-letter topic is a topic of its own and stays.
pub async fn delete(ev: &Events, ns: &str, topic: &str) -> Result<(), Status> {
    keys::check_topic(topic)?;
    barrier(&ev.replica, false).await?;
    if !exists(ev.replica.reader(), ns, topic)? {
        return Err(not_found(topic));
    }
    ev.replica
        .write(Txn::ops(vec![Op::DeletePrefix {
            prefix: keys::topic_prefix(ns, topic),
        }]))
        .await
        .map_err(status)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(events: &[(u64, i64, u64)]) -> TopicIndex {
        let mut t = TopicIndex::default();
        for &(seq, timestamp, size) in events {
            t.put(Slot {
                seq,
                timestamp,
                size,
            });
        }
        t
    }

    #[test]
    fn changes_seen_twice_leave_the_index_as_once() {
        let mut t = index(&[(1, 10, 5), (2, 20, 5), (3, 30, 5)]);
        t.remove(1);
        // The same changes again, as after a scan that already saw them.
        t.put(Slot {
            seq: 2,
            timestamp: 20,
            size: 5,
        });
        t.remove(1);
        t.put(Slot {
            seq: 1,
            timestamp: 10,
            size: 5,
        });
        t.remove(1);
        assert_eq!(
            t.stats(),
            Stats {
                count: 2,
                bytes: 10,
                first_seq: 2,
                last_seq: 3,
                first_timestamp: 20,
                last_timestamp: 30
            }
        );
    }

    #[test]
    fn trims_the_oldest_beyond_count_age_or_bytes() {
        let t = index(&[(4, 1000, 10), (5, 2000, 10), (6, 3000, 10), (7, 4000, 10)]);
        let r = |max_count, max_age_ms, max_bytes| Retention {
            max_age_ms,
            max_count,
            max_bytes,
        };
        assert_eq!(t.trim(&r(0, 0, 0), 5000), None, "no limits");
        assert_eq!(t.trim(&r(4, 0, 0), 5000), None);
        assert_eq!(t.trim(&r(3, 0, 0), 5000), Some(4));
        assert_eq!(t.trim(&r(1, 0, 0), 5000), Some(6));
        // older than 2.5 s at t=5000: the events of t=1000 and 2000
        assert_eq!(t.trim(&r(0, 2500, 0), 5000), Some(5));
        assert_eq!(t.trim(&r(0, 0, 40), 5000), None);
        assert_eq!(t.trim(&r(0, 0, 35), 5000), Some(4));
        assert_eq!(t.trim(&r(0, 0, 20), 5000), Some(5));
        assert_eq!(t.trim(&r(3, 2500, 0), 5000), Some(5), "the strictest wins");
    }
}
