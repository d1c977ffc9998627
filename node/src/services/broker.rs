//! The Broker service: fire-and-forget publish/subscribe across the
//! cluster. Nothing is stored: a message reaches the subscribers connected,
//! when it is published, to any node gossip holds alive, in the
//! publisher's namespace.
//!
//! * Local hub: per (namespace, topic) the subscribers connected to this
//!   node, each with a bounded queue of [`SUBSCRIBER_QUEUE`] messages. A
//!   subscriber whose queue is full misses the message (counted, logged at
//!   debug): a publisher never waits for a slow subscriber. A subscriber
//!   that disconnects is removed at once (its stream's drop guard); when
//!   the node stops, every subscription ends ([`Broker::close`]).
//! * Queue groups: subscribers of a topic with the same `queue` share its
//!   messages; each message goes to one member cluster-wide, a member on
//!   the publishing node if it has one, else one on a node picked at random
//!   among those with members; on a node, members take turns.
//! * Interest: each node tells every live peer (`Peer.BrokerInterest`,
//!   about 50 ms after its set changes and every 2 s) which (namespace,
//!   topic, queue) it has members for, `""` standing for plain
//!   subscribers. A receiver keeps each node's latest set and forgets it
//!   after [`INTEREST_TTL`] without a refresh or when gossip holds the node
//!   anything but alive. A subscriber on another node therefore hears of
//!   messages published from shortly (tens of ms) after it subscribed.
//! * Fan-out: a publish sends `Peer.BrokerDeliver` to every node with
//!   interest in the topic, concurrently, over the cluster port (mTLS), and
//!   returns when they answered or [`SEND_WAIT`] passed; a failed peer is
//!   logged and never fails the publish.
//!
//! No ordering promise: two messages may reach subscribers in either
//! order (the sends are concurrent), and different subscribers may see
//! different orders.
//!
//! Must never: store a message, block a publisher on a subscriber, hold a
//! lock across an await, deliver a message of one namespace to another's
//! subscribers, or send to this node itself or a node gossip does not hold
//! alive.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use micro_proto::broker::broker_server;
use micro_proto::broker::{Message, PublishRequest, PublishResponse, SubscribeRequest};
use micro_proto::cluster::{BrokerDeliverRequest, BrokerInterestRequest, BrokerQueue};
use micro_raft::NodeId;
use prost::Message as _;
use rand::seq::SliceRandom;
use tokio::sync::{mpsc, Notify};
use tonic::{Request, Response, Status};

use crate::cluster::Cluster;
use crate::grpc::{check_name, namespace};

/// The largest message (body plus header names and values).
pub const MAX_BROKER_MESSAGE: usize = 1024 * 1024;
/// How many undelivered messages a subscriber may have before it misses some.
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// How long a publish waits for other nodes to take its message.
pub const SEND_WAIT: Duration = Duration::from_secs(2);
/// How often a node repeats its interest to every peer.
pub const INTEREST_REFRESH: Duration = Duration::from_secs(2);
/// How long a peer's interest holds without a refresh.
pub const INTEREST_TTL: Duration = Duration::from_secs(6);
/// How long a change of interest waits for more changes before it is sent.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// (namespace, topic)
type TopicKey = (String, String);

/// One connected subscriber.
struct Sub {
    id: u64,
    tx: mpsc::Sender<Message>,
}

/// The members of one queue group on this node.
#[derive(Default)]
struct Group {
    members: Vec<Sub>,
    /// whose turn it is (round-robin)
    next: usize,
}

/// The subscribers of one topic on this node.
#[derive(Default)]
struct Topic {
    plain: Vec<Sub>,
    queues: HashMap<String, Group>,
}

/// Another node's interest, as it last sent it.
struct Interest {
    at: Instant,
    /// per (namespace, topic) the queues it has members of (`""`: plain)
    topics: HashMap<TopicKey, HashSet<String>>,
}

/// The broker of this node, shared by the gRPC service and the cluster
/// port's `Peer` handlers.
pub struct Broker {
    cluster: Arc<Cluster>,
    hub: Mutex<HashMap<TopicKey, Topic>>,
    remote: Mutex<HashMap<NodeId, Interest>>,
    next_id: AtomicU64,
    /// Local interest changed (a subscriber came or went).
    changed: Notify,
    dropped: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The size a message counts for against [`MAX_BROKER_MESSAGE`].
fn message_size(header: &HashMap<String, String>, body: &[u8]) -> usize {
    body.len() + header.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

impl Broker {
    /// The broker, with its interest task started.
    pub fn start(cluster: Arc<Cluster>) -> Arc<Broker> {
        let broker = Arc::new(Broker {
            cluster,
            hub: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            changed: Notify::new(),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(broker.clone().tell_peers());
        broker
    }

    /// Messages subscribers on this node missed because their queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends every subscription on this node (it is stopping): their streams
    /// end, so the gRPC server can drain instead of waiting for them.
    pub fn close(&self) {
        let subscribers = std::mem::take(&mut *lock(&self.hub));
        drop(subscribers);
        self.changed.notify_one();
    }

    /// Adds a subscriber; it stays until the returned guard is dropped.
    fn subscribe(
        self: &Arc<Self>,
        ns: String,
        topic: String,
        queue: String,
    ) -> (mpsc::Receiver<Message>, Unsubscribe) {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = (ns, topic);
        {
            let mut hub = lock(&self.hub);
            let t = hub.entry(key.clone()).or_default();
            let sub = Sub { id, tx };
            if queue.is_empty() {
                t.plain.push(sub);
            } else {
                t.queues.entry(queue.clone()).or_default().members.push(sub);
            }
        }
        self.changed.notify_one();
        let guard = Unsubscribe {
            broker: self.clone(),
            key,
            queue,
            id,
        };
        (rx, guard)
    }

    fn unsubscribe(&self, key: &TopicKey, queue: &str, id: u64) {
        {
            let mut hub = lock(&self.hub);
            let Some(t) = hub.get_mut(key) else { return };
            if queue.is_empty() {
                t.plain.retain(|s| s.id != id);
            } else if let Some(g) = t.queues.get_mut(queue) {
                g.members.retain(|s| s.id != id);
                if g.members.is_empty() {
                    t.queues.remove(queue);
                }
            }
            if t.plain.is_empty() && t.queues.is_empty() {
                hub.remove(key);
            }
        }
        self.changed.notify_one();
    }

    /// Offers `msg` to one subscriber without waiting.
    fn offer(&self, sub: &Sub, msg: &Message) -> bool {
        match sub.tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    topic = %msg.topic,
                    "a broker subscriber is {SUBSCRIBER_QUEUE} messages behind; it misses one"
                );
                false
            }
            // Gone: its guard removes it.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Gives `msg` to one member of `group`, taking turns (a member whose
    /// queue is full is passed over).
    fn offer_group(&self, group: &mut Group, msg: &Message) {
        let n = group.members.len();
        for i in 0..n {
            let at = (group.next + i) % n;
            if self.offer(&group.members[at], msg) {
                group.next = (at + 1) % n;
                return;
            }
        }
    }

    /// Delivers `msg` to this node's plain subscribers of its topic and to
    /// one member of each local queue group that `queues` admits (all of
    /// them for `None`). Returns the local queue groups it went to.
    fn deliver_local(&self, ns: &str, msg: &Message, queues: Option<&[String]>) -> HashSet<String> {
        let mut served = HashSet::new();
        let mut hub = lock(&self.hub);
        let Some(t) = hub.get_mut(&(ns.to_string(), msg.topic.clone())) else {
            return served;
        };
        for sub in &t.plain {
            self.offer(sub, msg);
        }
        for (name, group) in t.queues.iter_mut() {
            if queues.is_none_or(|q| q.contains(name)) {
                self.offer_group(group, msg);
                served.insert(name.clone());
            }
        }
        served
    }

    /// The peers gossip holds alive, with their cluster addresses.
    fn live_peers(&self) -> Vec<(NodeId, String)> {
        let Some(g) = self.cluster.gossip() else {
            return Vec::new();
        };
        g.members()
            .into_iter()
            .filter(|m| m.node_id != self.cluster.id && m.state == micro_gossip::State::Alive)
            .filter_map(|m| Some((m.node_id, self.cluster.node_addr(m.node_id)?)))
            .collect()
    }

    /// Publishes a message in `ns`: here, and to every other live node with
    /// interest in its topic.
    pub async fn publish(&self, ns: &str, msg: Message) {
        let local_queues = self.deliver_local(ns, &msg, None);
        let peers: HashMap<NodeId, String> = self.live_peers().into_iter().collect();
        if peers.is_empty() {
            return;
        }
        // Per node: the queue groups it is to serve (plain subscribers get
        // every message anyway).
        let mut plan: HashMap<NodeId, Vec<String>> = HashMap::new();
        {
            let key = (ns.to_string(), msg.topic.clone());
            let mut queue_nodes: HashMap<&String, Vec<NodeId>> = HashMap::new();
            let remote = lock(&self.remote);
            for (node, interest) in remote.iter() {
                if !peers.contains_key(node) || interest.at.elapsed() > INTEREST_TTL {
                    continue;
                }
                let Some(queues) = interest.topics.get(&key) else {
                    continue;
                };
                for q in queues {
                    if q.is_empty() {
                        plan.entry(*node).or_default();
                    } else if !local_queues.contains(q) {
                        queue_nodes.entry(q).or_default().push(*node);
                    }
                }
            }
            let mut rng = rand::thread_rng();
            for (q, nodes) in queue_nodes {
                if let Some(node) = nodes.choose(&mut rng) {
                    plan.entry(*node).or_default().push(q.clone());
                }
            }
        }
        if plan.is_empty() {
            return;
        }
        let message = msg.encode_to_vec();
        let sends: Vec<_> = plan
            .into_iter()
            .filter_map(|(node, queues)| {
                let addr = peers.get(&node)?.clone();
                let req = BrokerDeliverRequest {
                    namespace: ns.to_string(),
                    message: message.clone(),
                    queues,
                };
                let peers = self.cluster.peers.clone();
                Some(async move {
                    let sent = async {
                        let mut client = peers.client_to(node, &addr)?;
                        client.broker_deliver(req).await
                    };
                    match tokio::time::timeout(SEND_WAIT, sent).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(s)) => tracing::warn!(
                            "broker: node {node} at {addr} did not take a message: {}",
                            crate::cluster::transport::describe(&s)
                        ),
                        Err(_) => tracing::warn!(
                            "broker: node {node} at {addr} did not take a message within {} s",
                            SEND_WAIT.as_secs()
                        ),
                    }
                })
            })
            .collect();
        // The sends go on by themselves if the publisher stops waiting.
        let all = tokio::spawn(futures::future::join_all(sends));
        let _ = tokio::time::timeout(SEND_WAIT, all).await;
    }

    /// Delivers a message another node published (`Peer.BrokerDeliver`).
    pub fn deliver(&self, from: NodeId, req: BrokerDeliverRequest) -> Result<(), Status> {
        check_name("namespace", &req.namespace)?;
        let msg = Message::decode(req.message.as_slice()).map_err(|e| {
            Status::invalid_argument(format!(
                "node {from} sent a broker message that does not decode: {e}"
            ))
        })?;
        self.deliver_local(&req.namespace, &msg, Some(&req.queues));
        Ok(())
    }

    /// Records another node's interest (`Peer.BrokerInterest`), replacing
    /// what it sent before.
    pub fn interest(&self, from: NodeId, req: BrokerInterestRequest) {
        let mut topics: HashMap<TopicKey, HashSet<String>> = HashMap::new();
        for q in req.queues {
            topics
                .entry((q.namespace, q.topic))
                .or_default()
                .insert(q.queue);
        }
        lock(&self.remote).insert(
            from,
            Interest {
                at: Instant::now(),
                topics,
            },
        );
    }

    /// This node's interest: every (namespace, topic, queue) with a local
    /// member, `""` for plain subscribers.
    fn local_interest(&self) -> Vec<BrokerQueue> {
        let hub = lock(&self.hub);
        let mut out = Vec::new();
        for ((ns, topic), t) in hub.iter() {
            let plain = (!t.plain.is_empty()).then_some(String::new());
            for queue in plain.into_iter().chain(t.queues.keys().cloned()) {
                out.push(BrokerQueue {
                    namespace: ns.clone(),
                    topic: topic.clone(),
                    queue,
                });
            }
        }
        out
    }

    /// Forgets the interest of nodes that stopped refreshing it or that
    /// gossip no longer holds alive.
    fn forget_stale(&self) {
        let live: HashSet<NodeId> = self.live_peers().into_iter().map(|(id, _)| id).collect();
        lock(&self.remote).retain(|node, i| live.contains(node) && i.at.elapsed() <= INTEREST_TTL);
    }

    /// Sends this node's interest to every live peer whenever it changes
    /// (after [`DEBOUNCE`]) and every [`INTEREST_REFRESH`].
    async fn tell_peers(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTEREST_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.changed.notified() => tokio::time::sleep(DEBOUNCE).await,
            }
            self.forget_stale();
            let queues = self.local_interest();
            let sends = self.live_peers().into_iter().map(|(node, addr)| {
                let req = BrokerInterestRequest {
                    queues: queues.clone(),
                };
                let peers = self.cluster.peers.clone();
                async move {
                    let sent = async {
                        let mut client = peers.client_to(node, &addr)?;
                        client.broker_interest(req).await
                    };
                    // Short: a frozen peer must not hold up the others' news.
                    match tokio::time::timeout(Duration::from_secs(1), sent).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(s)) => tracing::debug!(
                            "broker: cannot tell node {node} at {addr} this node's subscriptions: {}",
                            crate::cluster::transport::describe(&s)
                        ),
                        Err(_) => tracing::debug!(
                            "broker: node {node} at {addr} did not take this node's subscriptions within 1 s"
                        ),
                    }
                }
            });
            futures::future::join_all(sends).await;
        }
    }
}

/// Removes a subscriber when its stream is dropped (the client went away
/// or the node is shutting down).
struct Unsubscribe {
    broker: Arc<Broker>,
    key: TopicKey,
    queue: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.broker.unsubscribe(&self.key, &self.queue, self.id);
    }
}

/// A subscriber's stream of messages.
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
    _guard: Unsubscribe,
}

impl Stream for Subscription {
    type Item = Result<Message, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|m| m.map(Ok))
    }
}

/// The gRPC face of [`Broker`].
pub struct BrokerService {
    broker: Arc<Broker>,
}

impl BrokerService {
    pub fn new(broker: Arc<Broker>) -> Self {
        BrokerService { broker }
    }
}

#[tonic::async_trait]
impl broker_server::Broker for BrokerService {
    async fn publish(
        &self,
        req: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        check_name("topic", &r.topic)?;
        let size = message_size(&r.header, &r.body);
        if size > MAX_BROKER_MESSAGE {
            return Err(Status::invalid_argument(format!(
                "the message is {size} bytes (body and header); the limit is {MAX_BROKER_MESSAGE} (1 MiB)"
            )));
        }
        let msg = Message {
            topic: r.topic,
            header: r.header,
            body: r.body,
        };
        self.broker.publish(&ns, msg).await;
        Ok(Response::new(PublishResponse {}))
    }

    type SubscribeStream = Subscription;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Subscription>, Status> {
        let ns = namespace(&req)?;
        let r = req.into_inner();
        check_name("topic", &r.topic)?;
        if !r.queue.is_empty() {
            check_name("queue", &r.queue)?;
        }
        let (rx, guard) = self.broker.subscribe(ns, r.topic, r.queue);
        Ok(Response::new(Subscription { rx, _guard: guard }))
    }
}
