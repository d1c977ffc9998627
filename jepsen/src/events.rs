//! The events workload: publishes (through the clients' op loop), the
//! consumers that run beside them, and the reads made after healing.
//!
//! * Publishes: each is an op of the history (`Kind::Publish`) of a unique
//!   payload `<c>-<n>`, which is also its message id, to [`TOPIC`].
//! * A consumer group [`GROUP`] with [`MEMBERS`] members, member `i`
//!   talking to node `i mod n`, each with manual acks: of the events it
//!   gets it acks about 80 %, nacks 10 % (to be delivered again at once)
//!   and leaves 10 % to run out their ack wait ([`ACK_WAIT_MS`]).
//! * A plain stream (no group) per node, from sequence 1; after a broken
//!   stream it reconnects from the sequence after the last one it got.
//! * After healing: a linearizable read of the whole topic on every node,
//!   and a final drain: one member of the group on the first node consumes
//!   and acks until nothing has come for a while.
//!
//! Every delivery and ack is recorded with the harness's clock, for
//! [`crate::checker::events`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use micro_proto::events::{AckRequest, ConsumeRequest, Event, PublishRequest, ReadRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::Addrs;
use crate::history::{Clock, Kind, Op, Outcome};
use crate::workload::{connect, describe, write_error};

/// The topic the workload publishes to.
pub const TOPIC: &str = "jepsen-events";
/// The consumer group.
pub const GROUP: &str = "jepsen";
/// The group's members during the run.
pub const MEMBERS: usize = 2;
/// The group's ack wait.
pub const ACK_WAIT_MS: u64 = 2000;
/// The consumer number of the final drain.
pub const DRAIN: usize = 1000;

/// One event a consumer received.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// the consumer (a member number, [`DRAIN`], or 100 + node for a plain
    /// stream)
    pub consumer: usize,
    /// the stream (connection) it came on, unique in the run
    pub stream: u64,
    pub node: usize,
    /// whether it came to a member of the group
    pub group: bool,
    pub seq: u64,
    pub payload: String,
    /// the group's delivery count of this event (0 for a plain stream)
    pub deliveries: u32,
    pub at_us: u64,
}

/// One ack or nack a member sent.
#[derive(Clone, Debug)]
pub struct Ack {
    pub consumer: usize,
    pub node: usize,
    pub seq: u64,
    pub nack: bool,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub start_us: u64,
    pub end_us: u64,
}

/// A stream a consumer opened: where it started, and when it opened and
/// closed.
#[derive(Clone, Debug)]
pub struct Stream {
    pub id: u64,
    pub consumer: usize,
    pub node: usize,
    pub group: bool,
    /// the sequence a plain stream asked to start at
    pub from_seq: u64,
    pub opened_us: u64,
    pub closed_us: Option<u64>,
    /// why it closed
    pub error: Option<String>,
}

/// What the consumers did.
#[derive(Default)]
pub struct Log {
    pub deliveries: Mutex<Vec<Delivery>>,
    pub acks: Mutex<Vec<Ack>>,
    pub streams: Mutex<Vec<Stream>>,
    next_stream: AtomicU64,
}

impl Log {
    fn open(&self, consumer: usize, node: usize, group: bool, from_seq: u64, clock: Clock) -> u64 {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        lock(&self.streams).push(Stream {
            id,
            consumer,
            node,
            group,
            from_seq,
            opened_us: clock.now(),
            closed_us: None,
            error: None,
        });
        id
    }

    fn close(&self, id: u64, error: Option<String>, clock: Clock) {
        if let Some(s) = lock(&self.streams).iter_mut().find(|s| s.id == id) {
            s.closed_us = Some(clock.now());
            s.error = error;
        }
    }

    fn delivered(&self, d: Delivery) {
        lock(&self.deliveries).push(d);
    }

    /// Writes what the consumers did to `path`, one line per stream,
    /// delivery and ack in the order they happened, for reading a failed
    /// run.
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let (deliveries, acks, streams) = self.snapshot();
        let mut lines: Vec<(u64, String)> = Vec::new();
        for s in &streams {
            lines.push((
                s.opened_us,
                format!(
                    "stream {} of consumer {} on n{} opened (group: {}, from seq {})",
                    s.id, s.consumer, s.node, s.group, s.from_seq
                ),
            ));
            if let Some(at) = s.closed_us {
                lines.push((
                    at,
                    format!(
                        "stream {} closed: {}",
                        s.id,
                        s.error.as_deref().unwrap_or("by the harness")
                    ),
                ));
            }
        }
        for d in &deliveries {
            lines.push((
                d.at_us,
                format!(
                    "consumer {} got seq {} {:?} on stream {} (n{}, delivery #{})",
                    d.consumer, d.seq, d.payload, d.stream, d.node, d.deliveries
                ),
            ));
        }
        for a in &acks {
            lines.push((
                a.start_us,
                format!(
                    "consumer {} {} seq {} on n{}: {:?} {} (until {:.6}s)",
                    a.consumer,
                    if a.nack { "nacks" } else { "acks" },
                    a.seq,
                    a.node,
                    a.outcome,
                    a.error.as_deref().unwrap_or(""),
                    a.end_us as f64 / 1e6
                ),
            ));
        }
        lines.sort_by_key(|l| l.0);
        let text: String = lines
            .iter()
            .map(|(at, l)| format!("{:.6}s {l}\n", *at as f64 / 1e6))
            .collect();
        std::fs::write(path, text)
    }

    /// Copies of what was recorded.
    pub fn snapshot(&self) -> (Vec<Delivery>, Vec<Ack>, Vec<Stream>) {
        (
            lock(&self.deliveries).clone(),
            lock(&self.acks).clone(),
            lock(&self.streams).clone(),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes `value` (payload and message id) to [`TOPIC`], as an op.
pub async fn publish(
    client: &micro::Client,
    (who, node): (usize, usize),
    value: &str,
    limit: Duration,
    clock: Clock,
) -> Op {
    let mut op = Op::new(who, node, Kind::Publish, TOPIC);
    op.value = Some(value.to_string());
    let req = PublishRequest {
        topic: TOPIC.to_string(),
        payload: value.as_bytes().to_vec(),
        id: value.to_string(),
        ..Default::default()
    };
    op.start_us = clock.now();
    let reply = tokio::time::timeout(limit, client.events().publish(req)).await;
    op.end_us = clock.now();
    match reply {
        Ok(Ok(r)) => {
            op.version = Some(r.into_inner().seq);
        }
        Ok(Err(s)) => {
            op.outcome = write_error(&s);
            op.error = Some(describe(&s));
        }
        Err(_) => {
            op.outcome = Outcome::Unknown;
            op.error = Some(format!("no reply within {}s", limit.as_secs()));
        }
    }
    op
}

/// Starts the consumers: the group's members and a plain stream per node.
pub fn spawn_consumers(
    addrs: Arc<Addrs>,
    slots: usize,
    seed: u64,
    op_timeout: Duration,
    clock: Clock,
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for i in 0..MEMBERS {
        let (addrs, stop, log) = (addrs.clone(), stop.clone(), log.clone());
        let rng = StdRng::seed_from_u64(seed ^ (i as u64 + 7));
        tasks.push(tokio::spawn(async move {
            member(i, i % slots, addrs, op_timeout, clock, stop, log, rng).await
        }));
    }
    for node in 0..slots {
        let (addrs, stop, log) = (addrs.clone(), stop.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            follower(100 + node, node, addrs, clock, stop, log).await
        }));
    }
    tasks
}

fn group_request() -> ConsumeRequest {
    ConsumeRequest {
        topic: TOPIC.to_string(),
        group: GROUP.to_string(),
        ack_wait_ms: Some(ACK_WAIT_MS),
        max_deliver: Some(1000),
        max_in_flight: 20,
        ..Default::default()
    }
}

/// The next message of a stream, or `None` when `stop` was raised first.
async fn next(
    stream: &mut tonic::Streaming<Event>,
    stop: &AtomicBool,
) -> Option<Result<Option<Event>, tonic::Status>> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
            return Some(got);
        }
    }
}

/// Opens a consume stream for the log's stream `stream`; on failure
/// records why, waits a moment and returns `None` (the caller retries).
async fn open_stream(
    client: &micro::Client,
    req: ConsumeRequest,
    limit: Duration,
    (log, stream, clock): (&Log, u64, Clock),
) -> Option<tonic::Streaming<Event>> {
    let why = match tokio::time::timeout(limit, client.events().consume(req)).await {
        Ok(Ok(s)) => return Some(s.into_inner()),
        Ok(Err(s)) => describe(&s),
        Err(_) => format!("no stream within {}s", limit.as_secs()),
    };
    log.close(stream, Some(why), clock);
    tokio::time::sleep(Duration::from_millis(200)).await;
    None
}

impl Delivery {
    /// `ev` as consumer `consumer` got it on `stream`, now.
    fn of(
        consumer: usize,
        stream: u64,
        node: usize,
        group: bool,
        ev: &Event,
        clock: Clock,
    ) -> Self {
        Delivery {
            consumer,
            stream,
            node,
            group,
            seq: ev.seq,
            payload: String::from_utf8_lossy(&ev.payload).into_owned(),
            deliveries: ev.deliveries,
            at_us: clock.now(),
        }
    }
}

/// Sends one ack (or nack) and records it.
async fn send_ack(
    client: &micro::Client,
    (consumer, node): (usize, usize),
    seq: u64,
    nack: bool,
    limit: Duration,
    clock: Clock,
    log: &Log,
) -> Outcome {
    let req = AckRequest {
        topic: TOPIC.to_string(),
        group: GROUP.to_string(),
        seqs: vec![seq],
        nack,
        delay_ms: 0,
    };
    let start_us = clock.now();
    let reply = tokio::time::timeout(limit, client.events().ack(req)).await;
    let end_us = clock.now();
    let (outcome, error) = match reply {
        Ok(Ok(_)) => (Outcome::Ok, None),
        Ok(Err(s)) => (write_error(&s), Some(describe(&s))),
        Err(_) => (
            Outcome::Unknown,
            Some(format!("no reply within {}s", limit.as_secs())),
        ),
    };
    lock(&log.acks).push(Ack {
        consumer,
        node,
        seq,
        nack,
        outcome,
        error,
        start_us,
        end_us,
    });
    outcome
}

/// A member of the group until `stop`.
#[allow(clippy::too_many_arguments)]
async fn member(
    me: usize,
    node: usize,
    addrs: Arc<Addrs>,
    limit: Duration,
    clock: Clock,
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
    mut rng: StdRng,
) {
    while !stop.load(Ordering::Relaxed) {
        let Some((at, addr)) = addrs.route(node) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(client) = connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let stream = log.open(me, at, true, 0, clock);
        let Some(mut events) =
            open_stream(&client, group_request(), limit, (&log, stream, clock)).await
        else {
            continue;
        };
        // Acks go out concurrently, as a real consumer's would.
        let mut acking = tokio::task::JoinSet::new();
        let why = loop {
            match next(&mut events, &stop).await {
                None => break None,
                Some(Ok(Some(ev))) => {
                    log.delivered(Delivery::of(me, stream, at, true, &ev, clock));
                    let roll = rng.gen_range(0..100);
                    if roll < 90 {
                        let (client, log) = (client.clone(), log.clone());
                        acking.spawn(async move {
                            send_ack(&client, (me, at), ev.seq, roll >= 80, limit, clock, &log)
                                .await
                        });
                    }
                    while acking.try_join_next().is_some() {}
                }
                Some(Ok(None)) => break Some("the stream ended".to_string()),
                Some(Err(s)) => break Some(describe(&s)),
            }
        };
        while acking.join_next().await.is_some() {}
        drop(events);
        log.close(stream, why, clock);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain stream of node `node` until `stop`, resuming after the last
/// sequence it got.
async fn follower(
    me: usize,
    node: usize,
    addrs: Arc<Addrs>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    log: Arc<Log>,
) {
    let mut from = 1u64;
    while !stop.load(Ordering::Relaxed) {
        // A plain stream stays on its node: a stream that moved would
        // check another node's order.
        let Some(addr) = addrs.get(node) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let Some(client) = connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let stream = log.open(me, node, false, from, clock);
        let req = ConsumeRequest {
            topic: TOPIC.to_string(),
            from_seq: from,
            ..Default::default()
        };
        let Some(mut events) =
            open_stream(&client, req, Duration::from_secs(10), (&log, stream, clock)).await
        else {
            continue;
        };
        let why = loop {
            match next(&mut events, &stop).await {
                None => break None,
                Some(Ok(Some(ev))) => {
                    from = from.max(ev.seq + 1);
                    log.delivered(Delivery::of(me, stream, node, false, &ev, clock));
                }
                Some(Ok(None)) => break Some("the stream ended".to_string()),
                Some(Err(s)) => break Some(describe(&s)),
            }
        };
        log.close(stream, why, clock);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A topic as read after healing: seq -> payload, or why it could not be
/// read.
pub type TopicRead = Result<BTreeMap<u64, String>, String>;

/// What was read after healing.
pub struct Finals {
    /// per node: the whole topic
    pub logs: Vec<(usize, TopicRead)>,
    /// the final drain: `Err` when it could not run to its end
    pub drain: Result<(), String>,
}

/// The whole topic on node `node`, read linearizably in pages.
async fn read_all(addrs: &Addrs, node: usize) -> TopicRead {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = match addrs.get(node) {
            None => return Err(format!("node {node} is down")),
            Some(addr) => match connect(&addr).await {
                None => format!("cannot connect to node {node}"),
                Some(c) => match read_pages(&c).await {
                    Ok(all) => return Ok(all),
                    Err(e) => e,
                },
            },
        };
        if Instant::now() > deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn read_pages(c: &micro::Client) -> Result<BTreeMap<u64, String>, String> {
    const PAGE: u64 = 1000;
    let mut out = BTreeMap::new();
    let mut offset = 1;
    loop {
        let req = ReadRequest {
            topic: TOPIC.to_string(),
            limit: PAGE,
            offset,
            desc: false,
        };
        let reply = tokio::time::timeout(Duration::from_secs(20), c.events().read(req))
            .await
            .map_err(|_| "no reply within 20s".to_string())?;
        let events = match reply {
            Ok(r) => r.into_inner().events,
            // nothing was ever published
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(out),
            Err(s) => return Err(describe(&s)),
        };
        let got = events.len() as u64;
        for ev in events {
            offset = offset.max(ev.seq + 1);
            out.insert(ev.seq, String::from_utf8_lossy(&ev.payload).into_owned());
        }
        if got < PAGE {
            return Ok(out);
        }
    }
}

/// Reads the topic on every node, then drains the group through the first.
pub async fn final_phase(
    addrs: Arc<Addrs>,
    nodes: &[usize],
    clock: Clock,
    log: &Arc<Log>,
) -> Finals {
    let mut logs = Vec::new();
    for &node in nodes {
        logs.push((node, read_all(&addrs, node).await));
    }
    let drain = match nodes.first() {
        Some(&node) => drain(&addrs, node, clock, log).await,
        None => Err("no member is left to drain the group through".into()),
    };
    Finals { logs, drain }
}

/// Consumes the group through `node`, acking everything, until nothing
/// came for twice the ack wait and a few seconds (at most 90 s).
async fn drain(addrs: &Addrs, node: usize, clock: Clock, log: &Arc<Log>) -> Result<(), String> {
    let mut acking = tokio::task::JoinSet::new();
    let quiet = Duration::from_millis(2 * ACK_WAIT_MS + 3000);
    let end = Instant::now() + Duration::from_secs(90);
    let mut last = Instant::now();
    let limit = Duration::from_secs(15);
    loop {
        if Instant::now() > end {
            return Err("the group was still delivering after 90 s".into());
        }
        let addr = addrs
            .get(node)
            .ok_or_else(|| format!("node {node} is down"))?;
        let Some(client) = connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let stream = log.open(DRAIN, node, true, 0, clock);
        let Some(mut events) =
            open_stream(&client, group_request(), limit, (log, stream, clock)).await
        else {
            continue;
        };
        loop {
            let left = quiet.saturating_sub(last.elapsed());
            if left.is_zero() {
                while acking.join_next().await.is_some() {}
                log.close(stream, None, clock);
                return Ok(());
            }
            match tokio::time::timeout(left, events.message()).await {
                Err(_) => continue, // quiet: checked above
                Ok(Ok(Some(ev))) => {
                    last = Instant::now();
                    log.delivered(Delivery::of(DRAIN, stream, node, true, &ev, clock));
                    // acked until it sticks: an unacked event would come back
                    let (client, log) = (client.clone(), log.clone());
                    acking.spawn(async move {
                        for _ in 0..5 {
                            let ok =
                                send_ack(&client, (DRAIN, node), ev.seq, false, limit, clock, &log)
                                    .await;
                            if ok == Outcome::Ok {
                                break;
                            }
                        }
                    });
                }
                Ok(Ok(None)) => {
                    log.close(stream, Some("the stream ended".into()), clock);
                    break;
                }
                Ok(Err(s)) => {
                    log.close(stream, Some(describe(&s)), clock);
                    break;
                }
            }
        }
    }
}
