//! Consumption: streams without a group, and durable consumer groups.
//!
//! * A stream without a group follows the topic's log: after a read
//!   barrier it sends the stored events from its start, then the events
//!   this node applies (it subscribes to the change stream before it reads
//!   the backlog, and skips sequences it already sent). Nothing about it is
//!   replicated.
//! * A group's state is replicated (see [`keys`]): its config, its ack
//!   floor, its acks above the floor and its claims. On each node one
//!   dispatcher task per group with local members claims events for the
//!   members that have credit, in one conditional transaction per batch,
//!   and only then sends them. Conditions (the floor's version, no claim
//!   and no ack for a fresh event, the claim's version for a redelivery)
//!   make the claim safe whatever the local read saw: a failed condition
//!   means re-read and try again.
//! * Acks from every caller on a node for one group are gathered while one
//!   transaction is in flight and committed together.
//! * The Raft leader's floor keeper advances each group's floor over its
//!   contiguous acks (and over events retention discarded) and deletes the
//!   acks and stray claims below it.
//!
//! Must never: send an event to a group member before its claim committed,
//! hold a lock across an await, poll on a fixed sleep where a change can
//! wake it, or lose or repeat an event of a stream without a group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use micro_proto::events::*;
use micro_raft::{now_millis, Change, Cond, Op, Reader, Replica, Txn};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tonic::Status;

use super::{EventStream, Events};
use crate::grpc::{barrier, status};
use crate::keys::events::{self as keys, Claim, GroupConfig, Kind, Start};

/// How long a delivered event may stay unacked when the group's creator
/// named no ack wait.
pub const DEFAULT_ACK_WAIT_MS: u64 = 30_000;
/// Deliveries of one event before it is dead-lettered, by default.
pub const DEFAULT_MAX_DELIVER: u32 = 10;
/// Events a member may hold unacked, by default.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 100;
/// The most a member may ask to hold unacked.
pub const MAX_IN_FLIGHT: u32 = 10_000;
/// The most claims one claim transaction makes.
const CLAIM_BATCH: usize = 256;
/// The most sequences one ack transaction (or one Ack call) carries.
pub const ACK_BATCH: usize = 1000;
/// How often the leader's floor keeper looks at the groups.
const FLOOR_TICK: Duration = Duration::from_millis(500);
/// The most sequences the floor of one group advances over per tick.
const FLOOR_STEP: usize = 4096;
/// Events buffered towards a stream without a group.
const STREAM_BUFFER: usize = 64;

/// A group: namespace, topic, group name.
type GroupId = (String, String, String);

/// The group dispatchers and ack queues of this node.
pub struct Groups {
    dispatchers: Mutex<HashMap<GroupId, mpsc::UnboundedSender<Cmd>>>,
    acks: Mutex<HashMap<GroupId, AckQueue>>,
    next_member: AtomicU64,
    stop: watch::Sender<bool>,
}

impl Groups {
    pub fn new() -> Self {
        Groups {
            dispatchers: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            next_member: AtomicU64::new(1),
            stop: watch::channel(false).0,
        }
    }

    /// Ends every consumer stream of this node with `unavailable` (the node
    /// is shutting down) and stops the background tasks.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn dispatchers(&self) -> MutexGuard<'_, HashMap<GroupId, mpsc::UnboundedSender<Cmd>>> {
        self.dispatchers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn acks(&self) -> MutexGuard<'_, HashMap<GroupId, AckQueue>> {
        self.acks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for Groups {
    fn default() -> Self {
        Self::new()
    }
}

fn shutting_down() -> Status {
    Status::unavailable("the node is shutting down; consume again through another node")
}

fn replica_stopped() -> Status {
    Status::unavailable("the node's replica stopped; consume again through another node")
}

fn deleted(topic: &str, group: &str) -> Status {
    Status::not_found(format!("group {group} of topic {topic} was deleted"))
}

fn no_group(topic: &str, group: &str) -> Status {
    Status::not_found(format!("topic {topic} has no group {group}"))
}

/// Starts the leader's floor keeper. (Dispatchers start with their first
/// local member and follow the change stream themselves.)
pub fn spawn(events: &Arc<Events>) {
    let ev = events.clone();
    tokio::spawn(async move {
        let mut stop = ev.groups.stop.subscribe();
        let mut tick = tokio::time::interval(FLOOR_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            if !ev.replica.is_leader() {
                continue;
            }
            if let Err(e) = keep_floors(&ev).await {
                tracing::debug!("floor keeper: {}", e.message());
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Reading the log

fn reader_err(e: micro_raft::Error) -> Status {
    status(e)
}

/// The first stored sequence of a topic.
fn first_seq(r: &Reader, ns: &str, topic: &str, now: u64) -> Result<Option<u64>, Status> {
    match r.scan(&keys::log_prefix(ns, topic), now, false).next() {
        Some(item) => Ok(keys::seq_of(&item.map_err(reader_err)?.0)),
        None => Ok(None),
    }
}

/// The last stored sequence of a topic.
fn last_seq(r: &Reader, ns: &str, topic: &str, now: u64) -> Result<Option<u64>, Status> {
    match r.scan(&keys::log_prefix(ns, topic), now, true).next() {
        Some(item) => Ok(keys::seq_of(&item.map_err(reader_err)?.0)),
        None => Ok(None),
    }
}

fn get_event(
    r: &Reader,
    ns: &str,
    topic: &str,
    seq: u64,
    now: u64,
) -> Result<Option<Event>, Status> {
    match r
        .get(&keys::log_key(ns, topic, seq), now)
        .map_err(reader_err)?
    {
        Some(rec) => Ok(Some(keys::decode_event(topic, seq, &rec.value)?)),
        None => Ok(None),
    }
}

/// The first stored event with a timestamp at or after `since`, found by
/// bisection (timestamps follow the sequence: each is the committing
/// proposer's clock). `None` when every stored event is older.
fn seq_since(
    r: &Reader,
    ns: &str,
    topic: &str,
    since: i64,
    now: u64,
) -> Result<Option<u64>, Status> {
    let (Some(first), Some(last)) = (first_seq(r, ns, topic, now)?, last_seq(r, ns, topic, now)?)
    else {
        return Ok(None);
    };
    let (mut lo, mut hi) = (first, last + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        // A hole (retention discarding the oldest meanwhile) counts as old.
        let old = match get_event(r, ns, topic, mid, now)? {
            Some(e) => e.timestamp < since,
            None => true,
        };
        if old {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok((lo <= last).then_some(lo))
}

/// The start a request asks for, checked: at most one option.
fn requested_start(req: &ConsumeRequest) -> Result<Option<Start>, Status> {
    let given = [req.from_seq != 0, req.since != 0, req.new_only];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(Status::invalid_argument(
            "give at most one of from_seq, since and new_only",
        ));
    }
    Ok(if req.from_seq != 0 {
        Some(Start::Seq(req.from_seq))
    } else if req.since != 0 {
        Some(Start::Since(req.since))
    } else if req.new_only {
        Some(Start::New)
    } else {
        None
    })
}

fn describe(start: Start) -> String {
    match start {
        Start::First => "start at the first event".into(),
        Start::Seq(n) => format!("start at sequence {n}"),
        Start::Since(t) => format!("start at time {t}"),
        Start::New => "start with new events only".into(),
    }
}

// ---------------------------------------------------------------------------
// Consume

pub async fn consume(
    ev: &Arc<Events>,
    ns: String,
    req: ConsumeRequest,
) -> Result<EventStream, Status> {
    keys::check_topic(&req.topic)?;
    let start = requested_start(&req)?;
    if req.ack_wait_ms == Some(0) {
        return Err(Status::invalid_argument(
            "ack_wait_ms must be at least 1 ms",
        ));
    }
    if req.max_deliver == Some(0) {
        return Err(Status::invalid_argument("max_deliver must be at least 1"));
    }
    if req.max_in_flight > MAX_IN_FLIGHT {
        return Err(Status::invalid_argument(format!(
            "max_in_flight is at most {MAX_IN_FLIGHT}"
        )));
    }
    if req.group.is_empty() {
        if req.ack_wait_ms.is_some() || req.max_deliver.is_some() {
            return Err(Status::invalid_argument(
                "ack_wait_ms and max_deliver apply only to a group; name one with group",
            ));
        }
        return consume_plain(ev, ns, req.topic, start.unwrap_or(Start::First)).await;
    }
    keys::check_group(&req.group)?;
    join_group(ev, ns, req, start).await
}

/// A stream without a group.
async fn consume_plain(
    ev: &Arc<Events>,
    ns: String,
    topic: String,
    start: Start,
) -> Result<EventStream, Status> {
    // Subscribed before the backlog is read: nothing applied in between is
    // missed, and what both show is skipped by sequence.
    let changes = ev.replica.subscribe();
    barrier(&ev.replica, false).await?;
    let r = ev.replica.reader();
    let now = now_millis();
    let next = match start {
        Start::First => first_seq(r, &ns, &topic, now)?.unwrap_or(1),
        Start::Seq(n) => n,
        Start::Since(t) => match seq_since(r, &ns, &topic, t, now)? {
            Some(s) => s,
            None => last_seq(r, &ns, &topic, now)?.unwrap_or(0) + 1,
        },
        Start::New => last_seq(r, &ns, &topic, now)?.unwrap_or(0) + 1,
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let follow = Follow {
        replica: ev.replica.clone(),
        ns,
        topic,
        next,
        tx,
        stop: ev.groups.stop.subscribe(),
    };
    tokio::spawn(follow.run(changes));
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

/// The task behind a stream without a group.
struct Follow {
    replica: Replica,
    ns: String,
    topic: String,
    /// The next sequence to send.
    next: u64,
    tx: mpsc::Sender<Result<Event, Status>>,
    stop: watch::Receiver<bool>,
}

impl Follow {
    async fn run(mut self, mut changes: tokio::sync::broadcast::Receiver<Arc<Vec<Change>>>) {
        if !self.catch_up().await {
            return;
        }
        loop {
            let batch = tokio::select! {
                _ = self.stop.wait_for(|s| *s) => {
                    let _ = self.tx.try_send(Err(shutting_down()));
                    return;
                }
                _ = self.tx.closed() => return,
                b = changes.recv() => b,
            };
            let batch = match batch {
                Ok(b) => b,
                Err(RecvError::Lagged(_)) => {
                    // Missed changes: the log has them.
                    if !self.catch_up().await {
                        return;
                    }
                    continue;
                }
                Err(RecvError::Closed) => {
                    let _ = self.tx.try_send(Err(replica_stopped()));
                    return;
                }
            };
            for change in batch.iter() {
                let ok = match change {
                    Change::Put { key, record, .. } => {
                        let Some(p) = keys::parse(key) else { continue };
                        let Kind::Log(seq) = p.kind else { continue };
                        if p.namespace != self.ns || p.topic != self.topic || seq < self.next {
                            continue;
                        }
                        if seq == self.next {
                            match keys::decode_event(&self.topic, seq, &record.value) {
                                Ok(e) => {
                                    self.next = seq + 1;
                                    self.send(Ok(e)).await
                                }
                                Err(s) => {
                                    let _ = self.send(Err(s)).await;
                                    false
                                }
                            }
                        } else {
                            self.catch_up().await
                        }
                    }
                    Change::Reset => self.catch_up().await,
                    Change::Delete { .. } => true,
                };
                if !ok {
                    return;
                }
            }
        }
    }

    /// Sends one item; false when the stream is over (consumer gone or the
    /// node stopping).
    async fn send(&mut self, item: Result<Event, Status>) -> bool {
        let failed = item.is_err();
        tokio::select! {
            r = self.tx.send(item) => r.is_ok() && !failed,
            _ = self.stop.wait_for(|s| *s) => {
                let _ = self.tx.try_send(Err(shutting_down()));
                false
            }
        }
    }

    /// Sends the stored events from `next` to the current last one.
    async fn catch_up(&mut self) -> bool {
        loop {
            let now = now_millis();
            let r = self.replica.reader().clone();
            let last = match last_seq(&r, &self.ns, &self.topic, now) {
                Ok(Some(l)) => l,
                Ok(None) => return true,
                Err(s) => return self.send(Err(s)).await,
            };
            if self.next > last {
                return true;
            }
            match get_event(&r, &self.ns, &self.topic, self.next, now) {
                Ok(Some(e)) => {
                    self.next += 1;
                    if !self.send(Ok(e)).await {
                        return false;
                    }
                }
                Ok(None) => {
                    // Discarded by retention: go on from the first stored.
                    match first_seq(&r, &self.ns, &self.topic, now) {
                        Ok(Some(f)) if f > self.next => self.next = f,
                        Ok(_) => self.next += 1,
                        Err(s) => return self.send(Err(s)).await,
                    }
                }
                Err(s) => return self.send(Err(s)).await,
            }
        }
    }
}

/// Creates the group (or checks the options against the one that exists)
/// and adds a member to this node's dispatcher for it.
async fn join_group(
    ev: &Arc<Events>,
    ns: String,
    req: ConsumeRequest,
    start: Option<Start>,
) -> Result<EventStream, Status> {
    let (topic, group) = (req.topic.clone(), req.group.clone());
    let gkey = keys::group_key(&ns, &topic, &group);
    barrier(&ev.replica, false).await?;
    loop {
        let r = ev.replica.reader();
        let now = now_millis();
        if let Some(rec) = r.get(&gkey, now).map_err(status)? {
            let cfg: GroupConfig = keys::decode("group", &rec.value)?;
            check_same(&topic, &group, &cfg, start, &req)?;
            break;
        }
        let cfg = GroupConfig {
            start: start.unwrap_or(Start::First),
            ack_wait_ms: req.ack_wait_ms.unwrap_or(DEFAULT_ACK_WAIT_MS),
            max_deliver: req.max_deliver.unwrap_or(DEFAULT_MAX_DELIVER),
            created: now,
        };
        let floor = match cfg.start {
            Start::First => first_seq(r, &ns, &topic, now)?.map_or(0, |f| f - 1),
            Start::Seq(n) => n - 1,
            Start::Since(t) => match seq_since(r, &ns, &topic, t, now)? {
                Some(s) => s - 1,
                None => last_seq(r, &ns, &topic, now)?.unwrap_or(0),
            },
            Start::New => last_seq(r, &ns, &topic, now)?.unwrap_or(0),
        };
        let mut txn = Txn::ops(vec![
            Op::Put {
                key: gkey.clone(),
                value: keys::encode(&cfg),
                expires_at: None,
            },
            Op::Put {
                key: keys::floor_key(&ns, &topic, &group),
                value: keys::encode_floor(floor),
                expires_at: None,
            },
        ])
        .when(Cond::Absent(gkey.clone()));
        txn.now = now;
        if ev.replica.write(txn).await.map_err(status)?.succeeded {
            // Through a follower the write returns once the leader applied
            // it: the dispatcher here reads the local replica.
            barrier(&ev.replica, false).await?;
            break;
        }
        // Another consumer created it meanwhile: check against that one.
    }
    let max_in_flight = match req.max_in_flight {
        0 => DEFAULT_MAX_IN_FLIGHT,
        n => n,
    } as usize;
    let (tx, rx) = mpsc::channel(max_in_flight + 1);
    let starved = Arc::new(AtomicBool::new(false));
    let id = ev.groups.next_member.fetch_add(1, Ordering::Relaxed);
    let gid: GroupId = (ns, topic, group);
    let leave = {
        let mut map = ev.groups.dispatchers();
        let cmds = match map.get(&gid) {
            Some(c) => c.clone(),
            None => {
                let (ctx, crx) = mpsc::unbounded_channel();
                map.insert(gid.clone(), ctx.clone());
                let d = Dispatcher::new(ev.clone(), gid.clone(), crx);
                tokio::spawn(d.run());
                ctx
            }
        };
        // The dispatcher leaves the map (under this lock) before it drops
        // its receiver, so this send reaches it.
        let _ = cmds.send(Cmd::Join(Member {
            id,
            tx,
            max_in_flight,
            inflight: HashMap::new(),
            starved: starved.clone(),
        }));
        cmds
    };
    Ok(Box::pin(MemberStream {
        rx,
        id,
        leave,
        starved,
    }))
}

/// Options given to a group that exists must be the ones it was made with.
fn check_same(
    topic: &str,
    group: &str,
    cfg: &GroupConfig,
    start: Option<Start>,
    req: &ConsumeRequest,
) -> Result<(), Status> {
    let mut differs = Vec::new();
    if let Some(s) = start {
        if s != cfg.start {
            differs.push(describe(cfg.start));
        }
    }
    if let Some(w) = req.ack_wait_ms {
        if w != cfg.ack_wait_ms {
            differs.push(format!("ack wait {} ms", cfg.ack_wait_ms));
        }
    }
    if let Some(m) = req.max_deliver {
        if m != cfg.max_deliver {
            differs.push(format!("max deliver {}", cfg.max_deliver));
        }
    }
    if differs.is_empty() {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "group {group} exists with {}; start options apply only when a group is created (delete it with `micro events delete {topic} --group {group}`)",
        differs.join(", ")
    )))
}

/// A member's end of its stream; telling the dispatcher when it is dropped.
struct MemberStream {
    rx: mpsc::Receiver<Result<Event, Status>>,
    id: u64,
    leave: mpsc::UnboundedSender<Cmd>,
    /// Set by the dispatcher when a full buffer held this member's credit
    /// back: taking an event then wakes it.
    starved: Arc<AtomicBool>,
}

impl Stream for MemberStream {
    type Item = Result<Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.rx.poll_recv(cx);
        if matches!(r, Poll::Ready(Some(_))) && self.starved.swap(false, Ordering::Relaxed) {
            let _ = self.leave.send(Cmd::Drained);
        }
        r
    }
}

impl Drop for MemberStream {
    fn drop(&mut self) {
        let _ = self.leave.send(Cmd::Leave(self.id));
    }
}

// ---------------------------------------------------------------------------
// The dispatcher

enum Cmd {
    Join(Member),
    Leave(u64),
    /// A member whose buffer was full took an event.
    Drained,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<Result<Event, Status>>,
    max_in_flight: usize,
    /// Events sent to this member and still claimed for it: seq → the
    /// claim's version.
    inflight: HashMap<u64, u64>,
    starved: Arc<AtomicBool>,
}

impl Member {
    /// Events this member may be sent now: within its max in flight, and
    /// within its buffer less the slot kept for a final status (events
    /// whose claims expired may still wait there).
    fn credit(&self) -> usize {
        if self.tx.is_closed() {
            return 0;
        }
        let want = self.max_in_flight.saturating_sub(self.inflight.len());
        let room = self.tx.capacity().saturating_sub(1);
        if room < want {
            self.starved.store(true, Ordering::Relaxed);
        }
        want.min(room)
    }
}

/// Why a round could not go on.
enum Stop {
    /// The members' streams end with this.
    End(Status),
    /// Try again after a pause (a write failed, perhaps without a quorum).
    Pause(Status),
}

struct Dispatcher {
    ev: Arc<Events>,
    id: GroupId,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    members: Vec<Member>,
    /// Where round-robin assignment goes on.
    turn: usize,
}

/// What a round found.
struct Round {
    /// The earliest claim deadline still ahead.
    wake: Option<u64>,
    /// Whether to run another round at once.
    again: bool,
}

impl Dispatcher {
    fn new(ev: Arc<Events>, id: GroupId, cmds: mpsc::UnboundedReceiver<Cmd>) -> Self {
        Dispatcher {
            ev,
            id,
            cmds,
            members: Vec::new(),
            turn: 0,
        }
    }

    async fn run(mut self) {
        let mut changes = self.ev.replica.subscribe();
        let mut stop = self.ev.groups.stop.subscribe();
        let mut dirty = true;
        let mut wake: Option<tokio::time::Instant> = None;
        loop {
            while let Ok(cmd) = self.cmds.try_recv() {
                self.apply(cmd);
                dirty = true;
            }
            if self.members.is_empty() {
                let mut map = self.ev.groups.dispatchers();
                match self.cmds.try_recv() {
                    Ok(cmd) => {
                        drop(map);
                        self.apply(cmd);
                        continue;
                    }
                    Err(_) => {
                        map.remove(&self.id);
                        return;
                    }
                }
            }
            if dirty {
                dirty = false;
                match self.round().await {
                    Ok(r) => {
                        wake = r.wake.map(|at| {
                            let ms = at.saturating_sub(now_millis());
                            tokio::time::Instant::now() + Duration::from_millis(ms)
                        });
                        if r.again {
                            dirty = true;
                            continue;
                        }
                    }
                    Err(Stop::Pause(s)) => {
                        tracing::debug!("group dispatcher: {}", s.message());
                        dirty = true;
                        wake = Some(tokio::time::Instant::now() + Duration::from_millis(250));
                    }
                    Err(Stop::End(s)) => return self.end(s),
                }
            }
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return self.end(shutting_down()),
                cmd = self.cmds.recv() => {
                    if let Some(cmd) = cmd {
                        self.apply(cmd);
                    }
                    dirty = true;
                }
                batch = changes.recv() => match batch {
                    Ok(b) => dirty |= b.iter().any(|c| self.concerns(c)),
                    Err(RecvError::Lagged(_)) => dirty = true,
                    Err(RecvError::Closed) => return self.end(replica_stopped()),
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => {
                    wake = None;
                    dirty = true;
                }
            }
        }
    }

    /// Whether a change may give this group's members something to do.
    fn concerns(&self, c: &Change) -> bool {
        let key = match c {
            Change::Put { key, .. } | Change::Delete { key } => key,
            Change::Reset => return true,
        };
        let Some(p) = keys::parse(key) else {
            return false;
        };
        let (ns, topic, group) = &self.id;
        if p.namespace != ns || p.topic != topic {
            return false;
        }
        match p.kind {
            Kind::Log(_) => matches!(c, Change::Put { .. }),
            Kind::Group(g) | Kind::Floor(g) | Kind::Claim(g, _) | Kind::Acked(g, _) => g == group,
            Kind::Meta | Kind::Id => false,
        }
    }

    fn apply(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Join(m) => self.members.push(m),
            Cmd::Leave(id) => {
                if let Some(i) = self.members.iter().position(|m| m.id == id) {
                    let m = self.members.remove(i);
                    self.release(m.inflight.into_iter().collect());
                }
            }
            Cmd::Drained => {}
        }
    }

    /// Ends every member's stream with `s` and leaves the map; members that
    /// joined meanwhile get the same.
    fn end(mut self, s: Status) {
        for m in &self.members {
            let _ = m.tx.try_send(Err(s.clone()));
        }
        let mut map = self.ev.groups.dispatchers();
        while let Ok(cmd) = self.cmds.try_recv() {
            if let Cmd::Join(m) = cmd {
                let _ = m.tx.try_send(Err(s.clone()));
            }
        }
        map.remove(&self.id);
    }

    /// Gives claims back at once (deadline now) in the background: a member
    /// left, or an event could not be handed to one.
    fn release(&self, held: Vec<(u64, u64)>) {
        if held.is_empty() {
            return;
        }
        let (ns, topic, group) = self.id.clone();
        let replica = self.ev.replica.clone();
        let node = self.ev.node;
        tokio::spawn(async move {
            let now = now_millis();
            let mut txn = Txn::ops(Vec::new());
            for (seq, version) in &held {
                let key = keys::claim_key(&ns, &topic, &group, *seq);
                let Ok(Some(rec)) = replica.reader().get(&key, now) else {
                    continue;
                };
                let Ok(mut c) = keys::decode::<Claim>("claim", &rec.value) else {
                    continue;
                };
                if rec.version != *version {
                    continue;
                }
                c.deadline = now;
                c.node = node;
                txn.conds.push(Cond::VersionEq(key.clone(), *version));
                txn.ops.push(Op::Put {
                    key,
                    value: keys::encode(&c),
                    expires_at: None,
                });
            }
            if txn.ops.is_empty() {
                return;
            }
            txn.now = now;
            // If a claim changed meanwhile (acked, expired and delivered
            // again) nothing is released; the ack wait covers the rest.
            if let Err(e) = replica.write(txn).await {
                tracing::debug!("releasing claims of group {group}: {e}");
            }
        });
    }

    /// Reads the group's state, claims what the members have credit for,
    /// dead-letters what ran out of deliveries, and sends what was claimed.
    async fn round(&mut self) -> Result<Round, Stop> {
        let (ns, topic, group) = self.id.clone();
        let fatal = Stop::End;
        let now = now_millis();
        let r = self.ev.replica.reader().clone();
        let gkey = keys::group_key(&ns, &topic, &group);
        let fkey = keys::floor_key(&ns, &topic, &group);
        let read = |r: &Reader| -> Result<_, Stop> {
            let g = r.get(&gkey, now).map_err(|e| Stop::Pause(status(e)))?;
            let f = r.get(&fkey, now).map_err(|e| Stop::Pause(status(e)))?;
            Ok(g.zip(f))
        };
        let found = match read(&r)? {
            Some(found) => found,
            // Gone here, or not applied here yet: the barrier decides.
            None => {
                self.ev
                    .replica
                    .linearize()
                    .await
                    .map_err(|e| Stop::Pause(status(e)))?;
                read(&r)?.ok_or_else(|| Stop::End(deleted(&topic, &group)))?
            }
        };
        let (grec, frec) = found;
        let cfg: GroupConfig = keys::decode("group", &grec.value).map_err(fatal)?;
        let floor = keys::decode_floor(&frec.value).map_err(Stop::End)?;
        let claims = read_claims(&r, &ns, &topic, &group, now).map_err(Stop::Pause)?;
        let acked = read_acked(&r, &ns, &topic, &group, now).map_err(Stop::Pause)?;

        // Credit comes back for events acked, nacked, expired or taken
        // over. A claim this node made that the local replica has not
        // applied yet (writes through a follower return once the leader
        // applied them) shows as absent or older: still held.
        for m in &mut self.members {
            m.inflight.retain(|seq, ver| match claims.get(seq) {
                Some((c, v)) => (*v == *ver && c.deadline > now) || *v < *ver,
                None => *seq > floor && !acked.contains(seq),
            });
        }
        let held: BTreeSet<u64> = self
            .members
            .iter()
            .flat_map(|m| m.inflight.keys().copied())
            .collect();
        let mut wake = claims
            .iter()
            .filter(|(s, (c, _))| **s > floor && c.deadline > now)
            .map(|(_, (c, _))| c.deadline)
            .min();
        let credit: usize = self.members.iter().map(Member::credit).sum();
        if credit == 0 {
            return Ok(Round { wake, again: false });
        }
        let want = credit.min(CLAIM_BATCH);
        let (Some(first), Some(last)) = (
            first_seq(&r, &ns, &topic, now).map_err(Stop::Pause)?,
            last_seq(&r, &ns, &topic, now).map_err(Stop::Pause)?,
        ) else {
            return Ok(Round { wake, again: false });
        };

        // Candidates in sequence order: fresh, or claimed with the deadline
        // passed (redelivered, or dead-lettered after max_deliver).
        let mut picked: Vec<(Event, Option<(Claim, u64)>)> = Vec::new();
        let mut dead: Vec<(u64, Claim, u64)> = Vec::new();
        let mut seq = (floor + 1).max(first);
        while seq <= last && picked.len() < want && dead.len() < CLAIM_BATCH {
            let s = seq;
            seq += 1;
            if acked.contains(&s) || held.contains(&s) {
                continue;
            }
            let prior = match claims.get(&s) {
                None => None,
                Some((c, _)) if c.deadline > now => continue,
                Some((c, v)) if c.deliveries >= cfg.max_deliver => {
                    dead.push((s, c.clone(), *v));
                    continue;
                }
                Some((c, v)) => Some((c.clone(), *v)),
            };
            match get_event(&r, &ns, &topic, s, now).map_err(Stop::Pause)? {
                Some(e) => picked.push((e, prior)),
                None => continue, // discarded by retention meanwhile
            }
        }
        let mut again = false;
        for (s, c, v) in dead {
            self.dead_letter(&r, &cfg, s, c, v, now).await?;
            again = true;
        }
        if picked.is_empty() {
            return Ok(Round { wake, again });
        }

        let deadline = now + cfg.ack_wait_ms;
        let mut txn = Txn::ops(Vec::new()).when(Cond::VersionEq(fkey, frec.version));
        let mut sends = Vec::with_capacity(picked.len());
        for (mut e, prior) in picked {
            let key = keys::claim_key(&ns, &topic, &group, e.seq);
            let deliveries = match &prior {
                None => {
                    txn.conds.push(Cond::Absent(key.clone()));
                    txn.conds
                        .push(Cond::Absent(keys::acked_key(&ns, &topic, &group, e.seq)));
                    1
                }
                Some((c, v)) => {
                    txn.conds.push(Cond::VersionEq(key.clone(), *v));
                    c.deliveries.saturating_add(1)
                }
            };
            txn.ops.push(Op::Put {
                key,
                value: keys::encode(&Claim {
                    deliveries,
                    deadline,
                    node: self.ev.node,
                }),
                expires_at: None,
            });
            e.deliveries = deliveries;
            sends.push(e);
        }
        txn.now = now;
        let result = self
            .ev
            .replica
            .write(txn)
            .await
            .map_err(|e| Stop::Pause(status(e)))?;
        if !result.succeeded {
            // Someone else claimed, acked or moved the floor: re-read.
            let pause = rand::random::<u64>() % 20 + 2;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            return Ok(Round { wake, again: true });
        }
        let version = result.index;
        let filled = sends.len() == want;
        let mut unsent = Vec::new();
        for e in sends {
            let seq = e.seq;
            match self.next_member() {
                Some(i) => {
                    let m = &mut self.members[i];
                    match m.tx.try_send(Ok(e)) {
                        Ok(()) => {
                            m.inflight.insert(seq, version);
                        }
                        Err(_) => unsent.push((seq, version)),
                    }
                }
                None => unsent.push((seq, version)),
            }
        }
        self.release(unsent);
        wake = Some(wake.map_or(deadline, |w| w.min(deadline)));
        Ok(Round {
            wake,
            again: again || filled,
        })
    }

    /// The next member with credit, round-robin.
    fn next_member(&mut self) -> Option<usize> {
        let n = self.members.len();
        for k in 0..n {
            let i = (self.turn + k) % n;
            if self.members[i].credit() > 0 {
                self.turn = i + 1;
                return Some(i);
            }
        }
        None
    }

    /// Moves an event that ran out of deliveries to `<topic>.dead`, with
    /// why, and counts it acked for the group.
    async fn dead_letter(
        &self,
        r: &Reader,
        cfg: &GroupConfig,
        seq: u64,
        claim: Claim,
        version: u64,
        now: u64,
    ) -> Result<(), Stop> {
        let (ns, topic, group) = &self.id;
        let ckey = keys::claim_key(ns, topic, group, seq);
        let mut ops = Vec::new();
        if let Some(mut e) = get_event(r, ns, topic, seq, now).map_err(Stop::Pause)? {
            e.metadata.insert(
                "dead-reason".into(),
                format!(
                    "delivered {} times without an ack",
                    claim.deliveries.max(cfg.max_deliver)
                ),
            );
            e.metadata.insert("dead-topic".into(), topic.clone());
            e.metadata.insert("dead-seq".into(), seq.to_string());
            e.metadata.insert("dead-group".into(), group.clone());
            e.timestamp = now as i64;
            ops.push(Op::Append {
                prefix: keys::log_prefix(ns, &keys::dead_topic(topic)),
                value: keys::encode_event(&e),
                expires_at: None,
            });
        }
        ops.push(Op::Delete { key: ckey.clone() });
        ops.push(Op::Put {
            key: keys::acked_key(ns, topic, group, seq),
            value: Vec::new(),
            expires_at: None,
        });
        let mut txn = Txn::ops(ops).when(Cond::VersionEq(ckey, version));
        txn.now = now;
        // A failed condition means it was acked or claimed meanwhile.
        self.ev
            .replica
            .write(txn)
            .await
            .map_err(|e| Stop::Pause(status(e)))?;
        Ok(())
    }
}

/// A group's claims: seq → (claim, version).
fn read_claims(
    r: &Reader,
    ns: &str,
    topic: &str,
    group: &str,
    now: u64,
) -> Result<BTreeMap<u64, (Claim, u64)>, Status> {
    let mut out = BTreeMap::new();
    for item in r.scan(&keys::claims_prefix(ns, topic, group), now, false) {
        let (key, rec) = item.map_err(status)?;
        let Some(seq) = keys::seq_of(&key) else {
            continue;
        };
        out.insert(seq, (keys::decode("claim", &rec.value)?, rec.version));
    }
    Ok(out)
}

/// A group's acks above its floor (and any stray below it).
fn read_acked(
    r: &Reader,
    ns: &str,
    topic: &str,
    group: &str,
    now: u64,
) -> Result<BTreeSet<u64>, Status> {
    let mut out = BTreeSet::new();
    for item in r.scan(&keys::acked_prefix(ns, topic, group), now, false) {
        let (key, _) = item.map_err(status)?;
        if let Some(seq) = keys::seq_of(&key) {
            out.insert(seq);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Ack

/// Where an ack's outcome goes.
type AckReply = oneshot::Sender<Result<(), Status>>;

/// Acks waiting for this node's next ack transaction of one group.
#[derive(Default)]
struct AckQueue {
    running: bool,
    waiting: Vec<(Vec<u64>, AckReply)>,
}

pub async fn ack(ev: &Arc<Events>, ns: &str, req: AckRequest) -> Result<AckResponse, Status> {
    keys::check_topic(&req.topic)?;
    if req.group.is_empty() {
        return Err(Status::invalid_argument(
            "name the group the events were delivered to",
        ));
    }
    keys::check_group(&req.group)?;
    if req.seqs.is_empty() {
        return Err(Status::invalid_argument("give at least one sequence"));
    }
    if req.seqs.len() > ACK_BATCH {
        return Err(Status::invalid_argument(format!(
            "one ack carries at most {ACK_BATCH} sequences"
        )));
    }
    if req.seqs.contains(&0) {
        return Err(Status::invalid_argument("sequences start at 1"));
    }
    let gkey = keys::group_key(ns, &req.topic, &req.group);
    // Known here: no barrier needed. Unknown: maybe only not applied yet.
    if ev
        .replica
        .reader()
        .get(&gkey, now_millis())
        .map_err(status)?
        .is_none()
    {
        barrier(&ev.replica, false).await?;
        if ev
            .replica
            .reader()
            .get(&gkey, now_millis())
            .map_err(status)?
            .is_none()
        {
            return Err(no_group(&req.topic, &req.group));
        }
    }
    // An ack of an event not published yet would hide it when it is.
    let highest = req.seqs.iter().copied().max().unwrap_or(0);
    let stored = |ev: &Events| last_seq(ev.replica.reader(), ns, &req.topic, now_millis());
    if stored(ev)?.unwrap_or(0) < highest {
        barrier(&ev.replica, false).await?;
        if stored(ev)?.unwrap_or(0) < highest {
            return Err(Status::invalid_argument(format!(
                "topic {} has no event {highest} yet",
                req.topic
            )));
        }
    }
    if req.nack {
        nack(ev, ns, &req).await?;
        return Ok(AckResponse {});
    }
    let gid: GroupId = (ns.to_string(), req.topic.clone(), req.group.clone());
    let (tx, rx) = oneshot::channel();
    let start = {
        let mut queues = ev.groups.acks();
        let q = queues.entry(gid.clone()).or_default();
        q.waiting.push((req.seqs, tx));
        !std::mem::replace(&mut q.running, true)
    };
    if start {
        tokio::spawn(run_acks(ev.clone(), gid));
    }
    match rx.await {
        Ok(r) => r.map(|()| AckResponse {}),
        Err(_) => Err(Status::unavailable(
            "the ack was interrupted; its outcome is unknown, ack again",
        )),
    }
}

/// Commits the queued acks of one group, a batch at a time, until none
/// are left.
async fn run_acks(ev: Arc<Events>, gid: GroupId) {
    let (ns, topic, group) = &gid;
    loop {
        let batch = {
            let mut queues = ev.groups.acks();
            let Some(q) = queues.get_mut(&gid) else {
                return;
            };
            let mut n = 0;
            let mut take = 0;
            for (seqs, _) in &q.waiting {
                if take > 0 && n + seqs.len() > ACK_BATCH {
                    break;
                }
                n += seqs.len();
                take += 1;
            }
            if take == 0 {
                queues.remove(&gid);
                return;
            }
            q.waiting.drain(..take).collect::<Vec<_>>()
        };
        let seqs: BTreeSet<u64> = batch.iter().flat_map(|(s, _)| s.iter().copied()).collect();
        let now = now_millis();
        let floor = ev
            .replica
            .reader()
            .get(&keys::floor_key(ns, topic, group), now)
            .ok()
            .flatten()
            .and_then(|r| keys::decode_floor(&r.value).ok())
            .unwrap_or(0);
        let mut ops = Vec::new();
        for seq in seqs.into_iter().filter(|s| *s > floor) {
            ops.push(Op::Delete {
                key: keys::claim_key(ns, topic, group, seq),
            });
            ops.push(Op::Put {
                key: keys::acked_key(ns, topic, group, seq),
                value: Vec::new(),
                expires_at: None,
            });
        }
        let outcome = if ops.is_empty() {
            Ok(())
        } else {
            let mut txn = Txn::ops(ops).when(Cond::Exists(keys::group_key(ns, topic, group)));
            txn.now = now;
            match ev.replica.write(txn).await {
                Ok(r) if r.succeeded => Ok(()),
                Ok(_) => Err(deleted(topic, group)),
                Err(e) => Err(status(e)),
            }
        };
        for (_, tx) in batch {
            let _ = tx.send(outcome.clone());
        }
    }
}

/// Nack: the claimed events may be delivered again after the delay.
async fn nack(ev: &Events, ns: &str, req: &AckRequest) -> Result<(), Status> {
    let (topic, group) = (&req.topic, &req.group);
    let seqs: BTreeSet<u64> = req.seqs.iter().copied().collect();
    barrier(&ev.replica, false).await?;
    for _ in 0..5 {
        let now = now_millis();
        let r = ev.replica.reader();
        let mut txn = Txn::ops(Vec::new());
        for seq in &seqs {
            let key = keys::claim_key(ns, topic, group, *seq);
            let Some(rec) = r.get(&key, now).map_err(status)? else {
                return Err(Status::failed_precondition(format!(
                    "event {seq} is not delivered to group {group} and unacked, so it cannot be nacked"
                )));
            };
            let mut c: Claim = keys::decode("claim", &rec.value)?;
            c.deadline = now.saturating_add(req.delay_ms);
            txn.conds.push(Cond::VersionEq(key.clone(), rec.version));
            txn.ops.push(Op::Put {
                key,
                value: keys::encode(&c),
                expires_at: None,
            });
        }
        txn.now = now;
        if ev.replica.write(txn).await.map_err(status)?.succeeded {
            return Ok(());
        }
        // A claim changed meanwhile (delivered again, acked): look again.
    }
    Err(Status::aborted(
        "the events changed hands while nacking; nack again",
    ))
}

// ---------------------------------------------------------------------------
// Info and delete

/// The groups of a topic, for Info, from the local replica (the caller
/// ran the barrier).
pub fn group_infos(ev: &Events, ns: &str, topic: &str) -> Result<Vec<GroupInfo>, Status> {
    let r = ev.replica.reader();
    let now = now_millis();
    let first = first_seq(r, ns, topic, now)?;
    let last = last_seq(r, ns, topic, now)?;
    let prefix = keys::groups_prefix(ns, topic);
    let mut out = Vec::new();
    for item in r.scan(&prefix, now, false) {
        let (key, rec) = item.map_err(status)?;
        let Some(name) = key
            .get(prefix.len()..)
            .and_then(|n| std::str::from_utf8(n).ok())
        else {
            continue;
        };
        let cfg: GroupConfig = keys::decode("group", &rec.value)?;
        let floor = match r
            .get(&keys::floor_key(ns, topic, name), now)
            .map_err(status)?
        {
            Some(f) => keys::decode_floor(&f.value)?,
            None => 0,
        };
        let pending = read_claims(r, ns, topic, name, now)?
            .range(floor + 1..)
            .count() as u64;
        let acked = read_acked(r, ns, topic, name, now)?
            .range(floor + 1..)
            .count() as u64;
        let stored_above = match (first, last) {
            (Some(f), Some(l)) if l > floor => l - floor.max(f - 1),
            _ => 0,
        };
        out.push(GroupInfo {
            name: name.to_string(),
            ack_floor: floor,
            pending,
            acked,
            lag: stored_above.saturating_sub(acked),
            ack_wait_ms: cfg.ack_wait_ms,
            max_deliver: cfg.max_deliver,
        });
    }
    Ok(out)
}

/// Deletes a group with its floor, acks and claims; its members' streams
/// end (their dispatchers see the config gone).
pub async fn delete_group(ev: &Events, ns: &str, topic: &str, group: &str) -> Result<(), Status> {
    keys::check_topic(topic)?;
    keys::check_group(group)?;
    let gkey = keys::group_key(ns, topic, group);
    let txn = Txn::ops(vec![
        Op::DeletePrefix {
            prefix: keys::claims_prefix(ns, topic, group),
        },
        Op::DeletePrefix {
            prefix: keys::acked_prefix(ns, topic, group),
        },
        Op::Delete { key: gkey.clone() },
        Op::Delete {
            key: keys::floor_key(ns, topic, group),
        },
    ])
    .when(Cond::Exists(gkey));
    if ev.replica.write(txn).await.map_err(status)?.succeeded {
        Ok(())
    } else {
        Err(no_group(topic, group))
    }
}

// ---------------------------------------------------------------------------
// The floor keeper

/// One pass over every group (leader only): advance floors.
async fn keep_floors(ev: &Events) -> Result<(), Status> {
    let now = now_millis();
    let r = ev.replica.reader().clone();
    for ns in r
        .children(&keys::root_prefix(), b'/', now)
        .map_err(status)?
    {
        let Ok(ns) = String::from_utf8(ns) else {
            continue;
        };
        let topics = r
            .children(&keys::namespace_prefix(&ns), b'/', now)
            .map_err(status)?;
        for topic in topics {
            let Ok(topic) = String::from_utf8(topic) else {
                continue;
            };
            let prefix = keys::groups_prefix(&ns, &topic);
            let groups: Vec<String> = r
                .scan(&prefix, now, false)
                .filter_map(|item| item.ok())
                .filter_map(|(k, _)| String::from_utf8(k.get(prefix.len()..)?.to_vec()).ok())
                .collect();
            for group in groups {
                if !ev.replica.is_leader() {
                    return Ok(());
                }
                advance_floor(ev, &r, &ns, &topic, &group, now).await?;
            }
        }
    }
    Ok(())
}

/// Advances one group's floor over its contiguous acks and over what
/// retention discarded, deleting the acks and claims it passes.
async fn advance_floor(
    ev: &Events,
    r: &Reader,
    ns: &str,
    topic: &str,
    group: &str,
    now: u64,
) -> Result<(), Status> {
    let fkey = keys::floor_key(ns, topic, group);
    let Some(frec) = r.get(&fkey, now).map_err(status)? else {
        return Ok(());
    };
    let floor = keys::decode_floor(&frec.value)?;
    let mut new = floor;
    if let Some(first) = first_seq(r, ns, topic, now)? {
        new = new.max(first - 1);
    }
    let mut stray = false;
    for item in r
        .scan(&keys::acked_prefix(ns, topic, group), now, false)
        .take(FLOOR_STEP)
    {
        let (key, _) = item.map_err(status)?;
        let Some(seq) = keys::seq_of(&key) else {
            continue;
        };
        if seq <= new {
            stray = true;
        } else if seq == new + 1 {
            new = seq;
        } else {
            break;
        }
    }
    if new == floor && !stray {
        return Ok(());
    }
    let limit = (FLOOR_STEP * 2) as u32;
    let mut txn = Txn::ops(vec![
        Op::Put {
            key: fkey.clone(),
            value: keys::encode_floor(new),
            expires_at: None,
        },
        Op::DeleteRange {
            start: keys::acked_prefix(ns, topic, group),
            end: keys::acked_key(ns, topic, group, new + 1),
            limit,
        },
        Op::DeleteRange {
            start: keys::claims_prefix(ns, topic, group),
            end: keys::claim_key(ns, topic, group, new + 1),
            limit,
        },
    ])
    .when(Cond::VersionEq(fkey, frec.version));
    txn.now = now;
    ev.replica.write(txn).await.map_err(status)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn events(dir: &std::path::Path) -> Arc<Events> {
        let r = Replica::open(dir, 1, micro_raft::Options::default())
            .await
            .expect("open");
        r.bootstrap_alone("127.0.0.1:0".into())
            .await
            .expect("bootstrap");
        Events::start(r, 1)
    }

    /// Publishes `n` events through the service, as a client would.
    async fn publish(ev: &Arc<Events>, n: usize) {
        use micro_proto::events::events_server::Events as _;
        let service = super::super::EventsService::new(ev.clone());
        for i in 0..n {
            let mut req = tonic::Request::new(PublishRequest {
                topic: "t".into(),
                payload: format!("e{i}").into_bytes(),
                ..Default::default()
            });
            req.metadata_mut()
                .insert(micro::NAMESPACE_HEADER, "ns".parse().expect("ascii"));
            service.publish(req).await.expect("publish");
        }
    }

    #[tokio::test]
    async fn info_counts_a_groups_floor_pending_acked_and_lag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ev = events(dir.path()).await;
        publish(&ev, 6).await;
        let mut s = consume(
            &ev,
            "ns".into(),
            ConsumeRequest {
                topic: "t".into(),
                group: "g".into(),
                max_in_flight: 4,
                ack_wait_ms: Some(60_000),
                ..Default::default()
            },
        )
        .await
        .expect("consume");
        use futures::StreamExt;
        for want in 1..=4 {
            let e = s.next().await.expect("an event").expect("no error");
            assert_eq!(e.seq, want);
        }
        let more = tokio::time::timeout(Duration::from_millis(300), s.next()).await;
        assert!(more.is_err(), "four in flight: no fifth before an ack");
        // Acks of 1, 2 and 4: the floor moves over 1 and 2 (the leader's
        // keeper), 4 stays acked above it, 3 is pending, 5 and 6 come next.
        ack(
            &ev,
            "ns",
            AckRequest {
                topic: "t".into(),
                group: "g".into(),
                seqs: vec![1, 2, 4],
                ..Default::default()
            },
        )
        .await
        .expect("ack");
        for want in 5..=6 {
            let e = s.next().await.expect("an event").expect("no error");
            assert_eq!(e.seq, want, "credit came back with the acks");
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let info = loop {
            let infos = group_infos(&ev, "ns", "t").expect("infos");
            if infos.first().is_some_and(|g| g.ack_floor == 2) {
                break infos;
            }
            assert!(tokio::time::Instant::now() < deadline, "floor: {infos:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            info,
            vec![GroupInfo {
                name: "g".into(),
                ack_floor: 2,
                pending: 3,
                acked: 1,
                lag: 3,
                ack_wait_ms: 60_000,
                max_deliver: DEFAULT_MAX_DELIVER,
            }]
        );
        delete_group(&ev, "ns", "t", "g").await.expect("delete");
        assert!(group_infos(&ev, "ns", "t").expect("infos").is_empty());
        let end = s.next().await.expect("the stream ends with a status");
        assert_eq!(
            end.expect_err("deleted").message(),
            "group g of topic t was deleted"
        );
    }
}
