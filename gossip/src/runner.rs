//! The task that owns foca, the socket and the timers.
//!
//! Everything that touches foca happens here, on one task, so foca itself
//! needs no lock. The public handle talks to this task through an unbounded
//! command channel and reads the membership table it publishes into
//! [`Shared`] (a std mutex that is only ever held for short, synchronous
//! sections).

use std::cmp::Ordering as CmpOrdering;
use std::collections::{btree_map, BTreeMap, BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand_010::rngs::SmallRng;
use rand_010::SeedableRng;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::identity::Ident;
use crate::wire::{Sealer, OVERHEAD};
use crate::{Member, State};

/// Largest foca payload; sealed datagrams are `OVERHEAD` bytes larger and
/// still fit a 1500-byte Ethernet MTU.
pub(crate) const MAX_PAYLOAD: usize = 1400;
/// Largest datagram we accept.
pub(crate) const MAX_DATAGRAM: usize = MAX_PAYLOAD + OVERHEAD;
/// Receive buffer: large enough for any UDP datagram, so oversized junk is
/// seen whole and rejected instead of being silently truncated.
const RECV_BUF: usize = 64 * 1024;

/// How often a node that sees no live peer re-announces itself to the
/// peers it knows as Down (foca's own periodic announces only run while
/// it has live peers).
const ISOLATED_REANNOUNCE: Duration = Duration::from_secs(3);
/// Upper bound on how many addresses an isolated node re-announces to per
/// round.
const ISOLATED_REANNOUNCE_MAX: usize = 8;

/// The SWIM parameters, tuned for a LAN or loopback cluster of a handful of
/// nodes: a silent node is Suspect after roughly 1-3 s and Down about 5 s
/// after that.
pub(crate) fn swim_config() -> foca::Config {
    let one = NonZeroUsize::MIN;
    foca::Config {
        probe_period: Duration::from_millis(1000),
        probe_rtt: Duration::from_millis(500),
        num_indirect_probes: NonZeroUsize::new(3).unwrap_or(one),
        max_transmissions: NonZeroU8::new(10).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: Duration::from_secs(5),
        // Our own table keeps Down nodes until `forget`, so foca may drop
        // them eventually; identities always renew, so this never blocks a
        // restarted node from coming back.
        remove_down_after: Some(Duration::from_secs(3600)),
        max_packet_size: NonZeroUsize::new(MAX_PAYLOAD).unwrap_or(one),
        notify_down_members: true,
        periodic_announce: Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: one,
        }),
        periodic_announce_to_down_members: Some(foca::PeriodicParams {
            frequency: Duration::from_secs(5),
            num_members: NonZeroUsize::new(2).unwrap_or(one),
        }),
        periodic_gossip: Some(foca::PeriodicParams {
            frequency: Duration::from_millis(200),
            num_members: NonZeroUsize::new(3).unwrap_or(one),
        }),
    }
}

/// Requests from the public handle.
pub(crate) enum Command {
    Announce(SocketAddr),
    Forget(u64),
    /// Leave gracefully, then acknowledge and stop.
    Leave(oneshot::Sender<()>),
}

/// One row of the published membership table.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) member: Member,
    /// The identity bump the row describes (newest seen for that node id).
    pub(crate) bump: u64,
}

/// State shared between the task and the handles.
pub(crate) struct Shared {
    /// One row per node id, this node included.
    pub(crate) rows: BTreeMap<u64, Row>,
    /// Node ids dropped by `forget`, with the newest bump that was dropped:
    /// identities up to that bump stay hidden, newer ones show up again.
    pub(crate) forgotten: HashMap<u64, u64>,
    /// Counts the changes of `rows` (a member appeared, changed state or
    /// was forgotten), for those who keep a view of their own.
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            rows: BTreeMap::new(),
            forgotten: HashMap::new(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

/// Locks the shared table, shrugging off poisoning (nothing in the table
/// can be left half-updated in a way that matters).
pub(crate) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

type Swim = Foca<Ident, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// A timer foca asked for. Ordered so that the `BinaryHeap` pops the
/// earliest deadline first (ties in submission order).
struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<Ident>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Reversed: the max-heap then yields the smallest (at, seq).
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub(crate) struct Runner {
    foca: Swim,
    runtime: AccumulatingRuntime<Ident>,
    socket: UdpSocket,
    sealer: Sealer,
    commands: mpsc::UnboundedReceiver<Command>,
    timers: BinaryHeap<Scheduled>,
    next_seq: u64,
    shared: Arc<Mutex<Shared>>,
    rejected: Arc<AtomicU64>,
    /// When each identity (node id, bump) was first seen Suspect.
    suspected: HashMap<(u64, u64), Instant>,
}

/// A suspicion older than this is settled by declaring the member Down.
/// foca turns Suspect into Down with a timer, but drops every pending timer
/// when this node renews its own identity (after peers declared *it* Down,
/// say across a healed partition); the suspected peer may also never hear
/// of the suspicion to refute it. Without this the peer would stay Suspect
/// for good. Declared Down, a live peer is told so, renews its identity and
/// shows up Alive again.
const STALE_SUSPICION: Duration = Duration::from_secs(12);

/// Updates `since` (first-seen times of the identities now Suspect) and
/// returns the identities suspected for longer than `limit`.
pub(crate) fn stale_suspicions(
    now: Instant,
    suspects: impl IntoIterator<Item = (u64, u64)>,
    since: &mut HashMap<(u64, u64), Instant>,
    limit: Duration,
) -> Vec<(u64, u64)> {
    let current: HashSet<(u64, u64)> = suspects.into_iter().collect();
    since.retain(|id, _| current.contains(id));
    let mut stale = Vec::new();
    for id in current {
        let first = *since.entry(id).or_insert(now);
        if now.duration_since(first) >= limit {
            stale.push(id);
        }
    }
    stale.sort_unstable();
    stale
}

impl Runner {
    pub(crate) fn new(
        me: Ident,
        socket: UdpSocket,
        sealer: Sealer,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Mutex<Shared>>,
        rejected: Arc<AtomicU64>,
    ) -> Self {
        let rng = SmallRng::seed_from_u64(rand::random::<u64>());
        let foca = Foca::new(me, swim_config(), rng, PostcardCodec);
        let runner = Self {
            foca,
            runtime: AccumulatingRuntime::new(),
            socket,
            sealer,
            commands,
            timers: BinaryHeap::new(),
            next_seq: 0,
            shared,
            rejected,
            suspected: HashMap::new(),
        };
        runner.publish();
        runner
    }

    /// Runs until asked to leave, or until every handle is dropped.
    pub(crate) async fn run(mut self) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut isolated_tick = tokio::time::interval(ISOLATED_REANNOUNCE);
        isolated_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            let next_timer = self.timers.peek().map(|s| s.at);
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Announce(peer)) => self.announce(peer).await,
                    Some(Command::Forget(node_id)) => self.forget(node_id).await,
                    Some(Command::Leave(done)) => {
                        self.leave().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        // Every handle is gone: leave politely and stop.
                        self.leave().await;
                        return;
                    }
                },
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        let datagram = buf.get(..len).unwrap_or_default();
                        self.datagram(datagram, from).await;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "gossip: receive failed");
                        // Some platforms report ICMP errors from earlier
                        // sends here; those are harmless. Anything else
                        // gets a short pause so a broken socket cannot spin.
                        if !matches!(
                            err.kind(),
                            std::io::ErrorKind::ConnectionReset
                                | std::io::ErrorKind::ConnectionRefused
                                | std::io::ErrorKind::Interrupted
                        ) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                },
                () = sleep_until_opt(next_timer), if next_timer.is_some() => {
                    self.fire_due_timers().await;
                }
                _ = isolated_tick.tick() => {
                    self.reannounce_if_isolated().await;
                    self.settle_stale_suspicions().await;
                }
            }
        }
    }

    async fn datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        if datagram.len() > MAX_DATAGRAM {
            self.reject(from, "oversized datagram");
            return;
        }
        let Some(plain) = self.sealer.open(datagram) else {
            self.reject(from, "datagram does not open with the cluster key");
            return;
        };
        let result = self.foca.handle_data(&plain, &mut self.runtime);
        if let Err(err) = result {
            match err {
                foca::Error::Decode(_) | foca::Error::MalformedPacket | foca::Error::DataTooBig => {
                    self.reject(from, "malformed payload");
                }
                other => {
                    tracing::debug!(%from, error = %other, "gossip: payload refused by foca");
                }
            }
        }
        self.settle().await;
    }

    fn reject(&self, from: SocketAddr, why: &'static str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%from, why, "gossip: dropped packet");
    }

    async fn announce(&mut self, peer: SocketAddr) {
        if peer == self.foca.identity().addr {
            tracing::debug!(%peer, "gossip: not announcing to ourselves");
            return;
        }
        let result = self
            .foca
            .announce(Ident::placeholder(peer), &mut self.runtime);
        log_error("announce", result);
        self.settle().await;
    }

    async fn forget(&mut self, node_id: u64) {
        // `Gossip::forget` already removed the row and recorded how far to
        // forget. Here foca is told locally that those identities are Down,
        // so it stops probing them. If the node is in fact still running, it
        // will be told it is Down, renew its identity and show up again.
        let threshold = lock(&self.shared).forgotten.get(&node_id).copied();
        let Some(threshold) = threshold else { return };
        let updates: Vec<foca::Member<Ident>> = self
            .foca
            .iter_membership_state()
            .filter(|m| {
                m.id().node_id == node_id
                    && m.id().bump <= threshold
                    && m.state() != foca::State::Down
            })
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), foca::State::Down))
            .collect();
        if !updates.is_empty() {
            let result = self
                .foca
                .apply_many(updates.into_iter(), false, &mut self.runtime);
            log_error("forget", result);
        }
        self.settle().await;
    }

    async fn leave(&mut self) {
        let result = self.foca.leave_cluster(&mut self.runtime);
        log_error("leave", result);
        // Only the goodbye packets matter now.
        self.flush().await;
        tracing::info!(
            node_id = self.foca.identity().node_id,
            "gossip: left the cluster"
        );
    }

    async fn fire_due_timers(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        while self.timers.peek().is_some_and(|s| s.at <= now) {
            if let Some(scheduled) = self.timers.pop() {
                due.push(scheduled.timer);
            }
        }
        for timer in due {
            let result = self.foca.handle_timer(timer, &mut self.runtime);
            log_error("timer", result);
        }
        self.settle().await;
    }

    /// When foca has no live peer it stops its periodic announces, so a
    /// node cut off from everyone would never find its way back on its own.
    /// Knock on the doors of the peers it still remembers.
    async fn reannounce_if_isolated(&mut self) {
        if self.foca.num_members() > 0 {
            return;
        }
        let me = self.foca.identity().addr;
        let mut targets: HashSet<SocketAddr> = HashSet::new();
        {
            let shared = lock(&self.shared);
            for m in self.foca.iter_membership_state() {
                let id = m.id();
                let forgotten = shared
                    .forgotten
                    .get(&id.node_id)
                    .is_some_and(|&b| id.bump <= b);
                if id.addr != me && !forgotten {
                    targets.insert(id.addr);
                }
                if targets.len() >= ISOLATED_REANNOUNCE_MAX {
                    break;
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        tracing::debug!(peers = targets.len(), "gossip: isolated, re-announcing");
        for peer in targets {
            let result = self
                .foca
                .announce(Ident::placeholder(peer), &mut self.runtime);
            log_error("announce", result);
        }
        self.settle().await;
    }

    /// Declares Down the members that have been Suspect for longer than
    /// [`STALE_SUSPICION`] (see there for why foca can leave them so).
    async fn settle_stale_suspicions(&mut self) {
        let suspects: Vec<(u64, u64)> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == foca::State::Suspect)
            .map(|m| (m.id().node_id, m.id().bump))
            .collect();
        let stale = stale_suspicions(
            Instant::now(),
            suspects,
            &mut self.suspected,
            STALE_SUSPICION,
        );
        if stale.is_empty() {
            return;
        }
        let updates: Vec<foca::Member<Ident>> = self
            .foca
            .iter_membership_state()
            .filter(|m| {
                m.state() == foca::State::Suspect && stale.contains(&(m.id().node_id, m.id().bump))
            })
            .map(|m| foca::Member::new(m.id().clone(), m.incarnation(), foca::State::Down))
            .collect();
        for m in &updates {
            tracing::info!(
                node_id = m.id().node_id,
                "gossip: suspected for {}s without a verdict; declaring it down (a live node renews and returns)",
                STALE_SUSPICION.as_secs()
            );
            self.suspected.remove(&(m.id().node_id, m.id().bump));
        }
        let result = self
            .foca
            .apply_many(updates.into_iter(), false, &mut self.runtime);
        log_error("stale suspicion", result);
        self.settle().await;
    }

    /// Carries out what foca asked for, then republishes the table.
    async fn settle(&mut self) {
        self.flush().await;
        self.publish();
    }

    /// Drains the accumulating runtime: notifications are logged, timers
    /// queued and packets sealed and sent.
    async fn flush(&mut self) {
        while let Some(note) = self.runtime.to_notify() {
            log_notification(&note);
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let seq = self.next_seq;
            self.next_seq = self.next_seq.wrapping_add(1);
            self.timers.push(Scheduled {
                at: Instant::now() + after,
                seq,
                timer,
            });
        }
        while let Some((to, payload)) = self.runtime.to_send() {
            let Some(sealed) = self.sealer.seal(&payload) else {
                tracing::warn!(to = %to.addr, "gossip: could not seal a packet");
                continue;
            };
            if let Err(err) = self.socket.send_to(&sealed, to.addr).await {
                tracing::debug!(to = %to.addr, error = %err, "gossip: send failed");
            }
        }
    }

    /// Rebuilds the shared table from foca's view.
    ///
    /// Rules: one row per node id, describing its newest identity (largest
    /// bump). A row whose identity foca no longer tracks is Down (it was
    /// superseded or dropped after being Down). Rows stay until `forget`.
    /// This node is always present and Alive.
    fn publish(&self) {
        let me = self.foca.identity();
        let mut newest: HashMap<u64, (&Ident, foca::State)> = HashMap::new();
        let mut exact: HashMap<(u64, u64), foca::State> = HashMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.node_id == me.node_id {
                continue;
            }
            exact.insert((id.node_id, id.bump), m.state());
            match newest.entry(id.node_id) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert((id, m.state()));
                }
                std::collections::hash_map::Entry::Occupied(mut slot) => {
                    if id.bump > slot.get().0.bump {
                        slot.insert((id, m.state()));
                    }
                }
            }
        }

        let mut guard = lock(&self.shared);
        let Shared {
            rows,
            forgotten,
            changes,
        } = &mut *guard;
        let mut changed = false;

        for (node_id, row) in rows.iter_mut() {
            if *node_id == me.node_id {
                continue;
            }
            let state = exact
                .get(&(*node_id, row.bump))
                .map_or(State::Down, |s| from_foca(*s));
            if row.member.state != state {
                row.member.state = state;
                log_change(&row.member);
                changed = true;
            }
        }

        for (node_id, (id, state)) in newest {
            if forgotten.get(&node_id).is_some_and(|&b| id.bump <= b) {
                continue;
            }
            let fresh = Row {
                member: Member {
                    node_id,
                    addr: id.addr,
                    state: from_foca(state),
                },
                bump: id.bump,
            };
            match rows.entry(node_id) {
                btree_map::Entry::Vacant(slot) => {
                    log_change(&fresh.member);
                    slot.insert(fresh);
                    changed = true;
                }
                btree_map::Entry::Occupied(mut slot) => {
                    if fresh.bump > slot.get().bump {
                        if slot.get().member != fresh.member {
                            log_change(&fresh.member);
                            changed = true;
                        }
                        slot.insert(fresh);
                    }
                }
            }
        }
        if changed {
            changes.send_modify(|n| *n += 1);
        }

        rows.insert(
            me.node_id,
            Row {
                member: Member {
                    node_id: me.node_id,
                    addr: me.addr,
                    state: State::Alive,
                },
                bump: me.bump,
            },
        );
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn from_foca(state: foca::State) -> State {
    match state {
        foca::State::Alive => State::Alive,
        foca::State::Suspect => State::Suspect,
        foca::State::Down => State::Down,
    }
}

fn log_change(member: &Member) {
    tracing::info!(
        node_id = member.node_id,
        addr = %member.addr,
        state = member.state.as_str(),
        "gossip: member state"
    );
}

fn log_error(what: &'static str, result: Result<(), foca::Error>) {
    if let Err(err) = result {
        tracing::debug!(what, error = %err, "gossip: foca reported an error");
    }
}

fn log_notification(note: &OwnedNotification<Ident>) {
    match note {
        OwnedNotification::MemberUp(id) => {
            tracing::debug!(node_id = id.node_id, addr = %id.addr, "gossip: member up");
        }
        OwnedNotification::MemberDown(id) => {
            tracing::debug!(node_id = id.node_id, addr = %id.addr, "gossip: member down");
        }
        OwnedNotification::Rename(old, new) => {
            tracing::debug!(
                old_node_id = old.node_id,
                new_node_id = new.node_id,
                addr = %new.addr,
                "gossip: member came back with a new identity"
            );
        }
        OwnedNotification::Active => tracing::info!("gossip: joined the cluster"),
        OwnedNotification::Idle => tracing::info!("gossip: no live peers left"),
        OwnedNotification::Defunct => {
            // Identities always renew, so this only follows our own leave.
            tracing::debug!("gossip: own identity is now down");
        }
        OwnedNotification::Rejoin(id) => {
            tracing::info!(bump = id.bump, "gossip: declared down by peers, rejoined");
        }
        // Extra variants exist only behind foca's unstable features.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}
