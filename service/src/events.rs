//! Events for services: publish to a topic's replicated, ordered stream,
//! consume it (alone or as a member of a consumer group) and read it back.
//! Micro v3's shape, on the default client ([`crate::client::default`]);
//! every function has a `_with` variant taking an explicit [`Client`].
//!
//! ```no_run
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Order { n: u32 }
//! # async fn f() -> Result<(), micro::Error> {
//! let seq = micro::events::publish("orders", &Order { n: 1 }).metadata("k", "v").id("order-1").await?;
//! let mut stream = micro::events::consume("orders").group("billing").manual_ack().await?;
//! while let Some(ev) = stream.next().await {
//!     let ev = ev?;
//!     let order: Order = ev.unmarshal()?;
//!     ev.ack().await?;
//! }
//! let last_ten = micro::events::read("orders").limit(10).desc().await?;
//! # Ok(()) }
//! ```
//!
//! Where a stream starts: with no start given, at the first stored event
//! (never silently skipping history); [`Consume::from_seq`],
//! [`Consume::since`] or [`Consume::new_only`] choose otherwise (the last
//! one called wins). A group that exists resumes from its ack floor.
//!
//! When an ack is sent (group streams only; a stream without a group has
//! nothing to ack):
//! * [`Consume::manual_ack`]: only when the caller calls [`Event::ack`] or
//!   [`Event::nack`]. An event neither acked nor nacked is delivered again
//!   after the group's ack wait.
//! * auto-ack (the default): the event [`EventStream::next`] handed out is
//!   acked when `next` is called again, that is after the caller's code for
//!   it ran; the last one by [`EventStream::close`]. Dropping the stream
//!   (say, a `?` left the loop) acks nothing, so the event that failed comes
//!   back after the ack wait. An event the caller acked or nacked itself is
//!   not acked again.
//! * [`Consume::handler`]: acks each event after the handler returned `Ok`,
//!   nacks it (redelivered at once) when it returned `Err`.
//!
//! Must never: ack an event before the caller's code for it returned, or
//! send a request it already knows is invalid (it fails with
//! [`Error::Invalid`] instead, and nothing is sent).

use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use micro_proto::events as wire;
use serde::{de::DeserializeOwned, Serialize};

use crate::client::{default, Client, Error};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The given client, else the default one.
async fn pick(client: Option<&Client>) -> Result<Client, Error> {
    match client {
        Some(c) => Ok(c.clone()),
        None => Ok(default().await?.clone()),
    }
}

fn millis(t: SystemTime) -> Result<i64, Error> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| Error::Invalid("a start time must be after 1970".into()))?;
    i64::try_from(d.as_millis()).map_err(|_| Error::Invalid("the start time is too far off".into()))
}

fn time_of(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// An event as stored: its topic, its per-topic sequence and when it was
/// committed. Events from a group stream carry what [`Event::ack`] needs.
#[derive(Debug, Clone)]
pub struct Event {
    /// The message id: the publisher's, or one the node made.
    pub id: String,
    pub topic: String,
    /// The per-topic sequence, from 1.
    pub seq: u64,
    /// When the publish committed.
    pub timestamp: SystemTime,
    pub metadata: HashMap<String, String>,
    pub payload: Vec<u8>,
    /// For a group member: how many times this event was delivered to the
    /// group, this time included; 0 without a group.
    pub deliveries: u32,
    ticket: Option<Arc<Ticket>>,
}

impl Event {
    fn from_wire(e: wire::Event, acker: Option<&Arc<Acker>>) -> Event {
        let ticket = acker.map(|a| {
            Arc::new(Ticket {
                acker: a.clone(),
                seq: e.seq,
                settled: AtomicBool::new(false),
            })
        });
        Event {
            id: e.id,
            topic: e.topic,
            seq: e.seq,
            timestamp: time_of(e.timestamp),
            metadata: e.metadata,
            payload: e.payload,
            deliveries: e.deliveries,
            ticket,
        }
    }

    /// The payload decoded from JSON.
    pub fn unmarshal<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    /// The commit time in unix milliseconds.
    pub fn timestamp_millis(&self) -> i64 {
        millis(self.timestamp).unwrap_or(0)
    }

    /// Acks the event for its group: it is done and never delivered to the
    /// group again. Acking twice sends one ack; an event of a stream
    /// without a group has nothing to ack, and this does nothing.
    pub async fn ack(&self) -> Result<(), Error> {
        match &self.ticket {
            Some(t) => t.settle(false, Duration::ZERO).await,
            None => Ok(()),
        }
    }

    /// Gives the event back to its group: it is delivered again at once.
    pub async fn nack(&self) -> Result<(), Error> {
        self.nack_after(Duration::ZERO).await
    }

    /// Gives the event back to its group, to be delivered again after
    /// `delay`. Fails on an event of a stream without a group (nothing
    /// would deliver it again).
    pub async fn nack_after(&self, delay: Duration) -> Result<(), Error> {
        match &self.ticket {
            Some(t) => t.settle(true, delay).await,
            None => Err(Error::Invalid(
                "nack needs a group: a stream without a group delivers nothing again".into(),
            )),
        }
    }
}

/// Where acks of a group stream go.
struct Acker {
    client: Client,
    topic: String,
    group: String,
}

/// One delivered event's ack state, shared by its clones and its stream.
struct Ticket {
    acker: Arc<Acker>,
    seq: u64,
    settled: AtomicBool,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("group", &self.acker.group)
            .field("seq", &self.seq)
            .field("settled", &self.settled.load(Ordering::Relaxed))
            .finish()
    }
}

impl Ticket {
    /// Sends the ack or nack unless one was sent already.
    async fn settle(&self, nack: bool, delay: Duration) -> Result<(), Error> {
        if self.settled.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let req = ack_request(&self.acker.topic, &self.acker.group, self.seq, nack, delay);
        match self.acker.client.events().ack(req).await {
            Ok(_) => Ok(()),
            Err(s) => {
                self.settled.store(false, Ordering::SeqCst);
                Err(s.into())
            }
        }
    }
}

fn ack_request(
    topic: &str,
    group: &str,
    seq: u64,
    nack: bool,
    delay: Duration,
) -> wire::AckRequest {
    wire::AckRequest {
        topic: topic.to_string(),
        group: group.to_string(),
        seqs: vec![seq],
        nack,
        delay_ms: if nack {
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
        } else {
            0
        },
    }
}

/// What a publish stored (or found stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    pub id: String,
    /// An event with this id was stored already (within the dedup window);
    /// `seq` is that event's.
    pub duplicate: bool,
}

/// A publish, sent when awaited; replies with the event's sequence once it
/// is committed.
#[must_use = "a publish is sent only when awaited"]
pub struct Publish<'a> {
    client: Option<&'a Client>,
    req: Result<wire::PublishRequest, Error>,
}

/// Publishes `value` as JSON to `topic` (created by its first publish).
pub fn publish<T: Serialize + ?Sized>(topic: &str, value: &T) -> Publish<'static> {
    Publish::new(None, topic, serde_json::to_vec(value).map_err(Error::from))
}

/// [`publish`] through `client`.
pub fn publish_with<'a, T: Serialize + ?Sized>(
    client: &'a Client,
    topic: &str,
    value: &T,
) -> Publish<'a> {
    Publish::new(
        Some(client),
        topic,
        serde_json::to_vec(value).map_err(Error::from),
    )
}

/// Publishes raw bytes to `topic`.
pub fn publish_bytes(topic: &str, payload: impl Into<Vec<u8>>) -> Publish<'static> {
    Publish::new(None, topic, Ok(payload.into()))
}

/// [`publish_bytes`] through `client`.
pub fn publish_bytes_with<'a>(
    client: &'a Client,
    topic: &str,
    payload: impl Into<Vec<u8>>,
) -> Publish<'a> {
    Publish::new(Some(client), topic, Ok(payload.into()))
}

impl<'a> Publish<'a> {
    fn new(client: Option<&'a Client>, topic: &str, payload: Result<Vec<u8>, Error>) -> Self {
        Publish {
            client,
            req: payload.map(|payload| wire::PublishRequest {
                topic: topic.to_string(),
                payload,
                ..Default::default()
            }),
        }
    }

    /// Adds a metadata entry.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Ok(r) = &mut self.req {
            r.metadata.insert(key.into(), value.into());
        }
        self
    }

    /// The message id: a second publish with the same id within the dedup
    /// window (2 minutes) stores nothing and replies with the first
    /// event's sequence.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        if let Ok(r) = &mut self.req {
            r.id = id.into();
        }
        self
    }

    /// Sends the publish and returns what was stored, duplicates included.
    pub async fn receipt(self) -> Result<Published, Error> {
        let req = self.req?;
        let client = pick(self.client).await?;
        let r = client.events().publish(req).await?.into_inner();
        Ok(Published {
            seq: r.seq,
            id: r.id,
            duplicate: r.duplicate,
        })
    }
}

impl<'a> IntoFuture for Publish<'a> {
    type Output = Result<u64, Error>;
    type IntoFuture = BoxFuture<'a, Result<u64, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move { Ok(self.receipt().await?.seq) })
    }
}

/// Where a stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    First,
    Seq(u64),
    Since(SystemTime),
    New,
}

/// A consumer, started when awaited (or by [`Consume::handler`]).
#[must_use = "a consumer starts only when awaited"]
pub struct Consume<'a> {
    client: Option<&'a Client>,
    topic: String,
    group: String,
    start: Start,
    manual: bool,
    ack_wait: Option<Duration>,
    max_deliver: Option<u32>,
    max_in_flight: u32,
}

/// Consumes `topic`: every event from the first stored one unless a start
/// is given. See the module docs for when acks are sent.
pub fn consume(topic: &str) -> Consume<'static> {
    Consume::new(None, topic)
}

/// [`consume`] through `client`.
pub fn consume_with<'a>(client: &'a Client, topic: &str) -> Consume<'a> {
    Consume::new(Some(client), topic)
}

impl<'a> Consume<'a> {
    fn new(client: Option<&'a Client>, topic: &str) -> Self {
        Consume {
            client,
            topic: topic.to_string(),
            group: String::new(),
            start: Start::First,
            manual: false,
            ack_wait: None,
            max_deliver: None,
            max_in_flight: 0,
        }
    }

    /// Consumes as a member of `group`: members share its events, and each
    /// must be acked within the ack wait or it is delivered again.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Starts at sequence `seq` (from 1).
    pub fn from_seq(mut self, seq: u64) -> Self {
        self.start = Start::Seq(seq);
        self
    }

    /// Starts at the first event committed at or after `time`.
    pub fn since(mut self, time: SystemTime) -> Self {
        self.start = Start::Since(time);
        self
    }

    /// Only events published after the consumer started.
    pub fn new_only(mut self) -> Self {
        self.start = Start::New;
        self
    }

    /// The caller acks each event itself ([`Event::ack`]); needs a group.
    pub fn manual_ack(mut self) -> Self {
        self.manual = true;
        self
    }

    /// For a new group: how long a delivered event may stay unacked before
    /// it is delivered again (default 30 s; at least 1 ms).
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = Some(wait);
        self
    }

    /// For a new group: deliveries of one event before it goes to the
    /// dead-letter topic `<topic>.dead` (default 10; at least 1).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// Events delivered to this member and not yet acked (default 100).
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.max_in_flight = n;
        self
    }

    /// The request, or why it must not be sent.
    fn request(&self) -> Result<wire::ConsumeRequest, Error> {
        let bad = |m: &str| Err(Error::Invalid(m.to_string()));
        let grouped = !self.group.is_empty();
        if self.manual && !grouped {
            return bad("manual ack needs a group: a stream without a group has nothing to ack");
        }
        if !grouped && (self.ack_wait.is_some() || self.max_deliver.is_some()) {
            return bad("an ack wait and a delivery limit apply to a group: give a group");
        }
        let ack_wait_ms = match self.ack_wait {
            Some(w) if w < Duration::from_millis(1) => {
                return bad("the ack wait must be at least 1ms")
            }
            Some(w) => Some(u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
            None => None,
        };
        if self.max_deliver == Some(0) {
            return bad("max deliver must be at least 1");
        }
        let mut req = wire::ConsumeRequest {
            topic: self.topic.clone(),
            group: self.group.clone(),
            ack_wait_ms,
            max_deliver: self.max_deliver,
            max_in_flight: self.max_in_flight,
            ..Default::default()
        };
        match self.start {
            Start::First => {}
            Start::Seq(0) => return bad("sequences start at 1"),
            Start::Seq(s) => req.from_seq = s,
            Start::Since(t) => req.since = millis(t)?,
            Start::New => req.new_only = true,
        }
        Ok(req)
    }

    async fn open(self, auto: bool) -> Result<EventStream, Error> {
        let req = self.request()?;
        let client = pick(self.client).await?;
        let inner = client.events().consume(req).await?.into_inner();
        let acker = (!self.group.is_empty()).then(|| {
            Arc::new(Acker {
                client,
                topic: self.topic,
                group: self.group,
            })
        });
        Ok(EventStream {
            inner,
            acker,
            auto,
            last: None,
        })
    }

    /// Runs `handler` for every event until the stream ends; with a group,
    /// acks each event after the handler returned `Ok` and nacks it (to be
    /// delivered again at once) when it returned `Err`, which is logged.
    /// Returns when the stream ends or fails, or an ack cannot be sent.
    pub async fn handler<F, Fut, E>(mut self, mut handler: F) -> Result<(), Error>
    where
        F: FnMut(Event) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        // The handler's outcome decides: the stream itself never acks.
        self.manual = false;
        let mut stream = self.open(false).await?;
        while let Some(ev) = stream.next().await {
            let ev = ev?;
            let (ticket, seq, topic) = (ev.ticket.clone(), ev.seq, ev.topic.clone());
            match handler(ev).await {
                Ok(()) => {
                    if let Some(t) = ticket {
                        t.settle(false, Duration::ZERO).await?;
                    }
                }
                Err(e) => {
                    crate::log::warn(&format!("event {seq} of {topic}: the handler failed: {e}"));
                    if let Some(t) = ticket {
                        t.settle(true, Duration::ZERO).await?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl<'a> IntoFuture for Consume<'a> {
    type Output = Result<EventStream, Error>;
    type IntoFuture = BoxFuture<'a, Result<EventStream, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let auto = !self.manual;
            self.open(auto).await
        })
    }
}

/// A consumer's events, pushed by the node as it applies them.
pub struct EventStream {
    inner: tonic::Streaming<wire::Event>,
    acker: Option<Arc<Acker>>,
    auto: bool,
    /// auto-ack: the event handed out last, acked by the next `next`.
    last: Option<Arc<Ticket>>,
}

impl EventStream {
    /// The next event; `None` when the node ended the stream. With
    /// auto-ack, first acks the event returned before (unless the caller
    /// settled it); if that ack fails, the error is returned and the event
    /// comes back after the ack wait.
    pub async fn next(&mut self) -> Option<Result<Event, Error>> {
        if let Some(t) = self.last.take() {
            if let Err(e) = t.settle(false, Duration::ZERO).await {
                return Some(Err(e));
            }
        }
        match self.inner.message().await {
            Ok(Some(e)) => {
                let ev = Event::from_wire(e, self.acker.as_ref());
                if self.auto {
                    self.last = ev.ticket.clone();
                }
                Some(Ok(ev))
            }
            Ok(None) => None,
            Err(s) => Some(Err(s.into())),
        }
    }

    /// Ends the stream; with auto-ack, acks the last event handed out first.
    pub async fn close(mut self) -> Result<(), Error> {
        match self.last.take() {
            Some(t) => t.settle(false, Duration::ZERO).await,
            None => Ok(()),
        }
    }
}

/// A read of stored events, sent when awaited.
#[must_use = "a read is sent only when awaited"]
pub struct Read<'a> {
    client: Option<&'a Client>,
    req: wire::ReadRequest,
}

/// Reads stored events of `topic`: by default the first 100, oldest first.
pub fn read(topic: &str) -> Read<'static> {
    Read::new(None, topic)
}

/// [`read`] through `client`.
pub fn read_with<'a>(client: &'a Client, topic: &str) -> Read<'a> {
    Read::new(Some(client), topic)
}

impl<'a> Read<'a> {
    fn new(client: Option<&'a Client>, topic: &str) -> Self {
        Read {
            client,
            req: wire::ReadRequest {
                topic: topic.to_string(),
                ..Default::default()
            },
        }
    }

    /// The most events returned (default 100, at most 1000).
    pub fn limit(mut self, n: u64) -> Self {
        self.req.limit = n;
        self
    }

    /// The sequence to start at (default: the first event, or the last
    /// with [`Read::desc`]).
    pub fn offset(mut self, seq: u64) -> Self {
        self.req.offset = seq;
        self
    }

    /// Newest first.
    pub fn desc(mut self) -> Self {
        self.req.desc = true;
        self
    }

    /// Oldest first (the default).
    pub fn asc(mut self) -> Self {
        self.req.desc = false;
        self
    }
}

impl<'a> IntoFuture for Read<'a> {
    type Output = Result<Vec<Event>, Error>;
    type IntoFuture = BoxFuture<'a, Result<Vec<Event>, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let client = pick(self.client).await?;
            let resp = client.events().read(self.req).await?.into_inner();
            Ok(resp
                .events
                .into_iter()
                .map(|e| Event::from_wire(e, None))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_start_is_the_first_event() {
        let r = consume("orders").request().unwrap();
        assert_eq!((r.from_seq, r.since, r.new_only), (0, 0, false));
        assert_eq!(r.group, "");
    }

    #[test]
    fn starts_reach_the_wire_and_the_last_one_wins() {
        let r = consume("t").from_seq(5).request().unwrap();
        assert_eq!(r.from_seq, 5);
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let r = consume("t").from_seq(5).since(t).request().unwrap();
        assert_eq!((r.from_seq, r.since), (0, 1_700_000_000_123));
        let r = consume("t").since(t).new_only().request().unwrap();
        assert!(r.new_only && r.since == 0);
    }

    #[test]
    fn group_options_reach_the_wire() {
        let r = consume("t")
            .group("billing")
            .ack_wait(Duration::from_secs(2))
            .max_deliver(3)
            .max_in_flight(7)
            .manual_ack()
            .request()
            .unwrap();
        assert_eq!(r.group, "billing");
        assert_eq!(r.ack_wait_ms, Some(2000));
        assert_eq!(r.max_deliver, Some(3));
        assert_eq!(r.max_in_flight, 7);
        // Not given: the server's defaults apply.
        let r = consume("t").group("g").request().unwrap();
        assert_eq!((r.ack_wait_ms, r.max_deliver), (None, None));
    }

    #[test]
    fn invalid_consumers_are_refused_before_sending() {
        let refused = |c: Consume<'static>| match c.request() {
            Err(Error::Invalid(m)) => m,
            other => panic!("{:?}", other.map(|_| ())),
        };
        assert!(refused(consume("t").manual_ack()).contains("needs a group"));
        assert!(refused(consume("t").group("g").ack_wait(Duration::ZERO)).contains("1ms"));
        assert!(
            refused(consume("t").group("g").ack_wait(Duration::from_micros(999))).contains("1ms")
        );
        assert!(refused(consume("t").group("g").max_deliver(0)).contains("at least 1"));
        assert!(refused(consume("t").ack_wait(Duration::from_secs(1))).contains("group"));
        assert!(refused(consume("t").from_seq(0)).contains("start at 1"));
        assert!(refused(consume("t").since(UNIX_EPOCH - Duration::from_secs(1))).contains("1970"));
    }

    #[test]
    fn publish_encodes_json_with_metadata_and_id() {
        #[derive(Serialize)]
        struct Order {
            n: u32,
        }
        let p = publish("orders", &Order { n: 1 })
            .metadata("k", "v")
            .id("order-1");
        let r = p.req.unwrap();
        assert_eq!(r.topic, "orders");
        assert_eq!(r.payload, br#"{"n":1}"#);
        assert_eq!(r.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(r.id, "order-1");
        let raw = publish_bytes("t", b"\x00raw".to_vec()).req.unwrap();
        assert_eq!(raw.payload, b"\x00raw");
        assert_eq!(raw.id, "");
    }

    #[test]
    fn a_value_that_is_not_json_is_an_error_not_a_publish() {
        let mut m = HashMap::new();
        m.insert(vec![1u8], 1);
        assert!(matches!(publish("t", &m).req, Err(Error::Json(_))));
    }

    #[test]
    fn read_options_reach_the_wire() {
        let r = read("t").limit(10).offset(5).desc().req;
        assert_eq!((r.limit, r.offset, r.desc), (10, 5, true));
        assert!(!read("t").desc().asc().req.desc);
    }

    #[test]
    fn acks_and_nacks_reach_the_wire() {
        let a = ack_request("t", "g", 4, false, Duration::from_secs(9));
        assert_eq!((a.seqs, a.nack, a.delay_ms), (vec![4], false, 0));
        let n = ack_request("t", "g", 4, true, Duration::from_secs(5));
        assert_eq!((n.nack, n.delay_ms), (true, 5000));
    }

    #[tokio::test]
    async fn events_without_a_group_have_nothing_to_ack() {
        let ev = Event::from_wire(
            wire::Event {
                seq: 3,
                timestamp: 1_700_000_000_123,
                payload: br#"{"n":2}"#.to_vec(),
                ..Default::default()
            },
            None,
        );
        assert_eq!(ev.timestamp_millis(), 1_700_000_000_123);
        let v: serde_json::Value = ev.unmarshal().unwrap();
        assert_eq!(v["n"], 2);
        assert!(ev.ack().await.is_ok());
        assert!(matches!(ev.nack().await, Err(Error::Invalid(_))));
        assert!(matches!(ev.unmarshal::<u32>(), Err(Error::Json(_))));
    }
}
