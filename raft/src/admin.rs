//! Membership and status of the Raft group, in micro-raft's own types:
//! adding learners, changing the voters, moving a member's address, the
//! status a node reports ([`Status`]), waits on the replica's progress,
//! and handing leadership over before a leader stops
//! ([`Replica::hand_over`]).
//!
//! openraft 0.9 has no leadership transfer; a hand-over is built from what
//! it has. The leader stops its heartbeats, lets the most caught-up voter
//! receive everything it has, and asks that voter (through
//! [`RaftTransport::elect_now`]) to campaign at once. The candidate's
//! term is the leader's plus one, its log is as long as the leader's, and
//! the leader's own lease is long past (it is refreshed only when its vote
//! changes), so the leader grants the vote and the candidate wins a quorum
//! without anyone waiting for an election timeout. A follower that still
//! holds the leader's lease rejects the vote; with three voters the
//! candidate and the old leader are a quorum. If the hand-over fails, the
//! cluster elects a leader the ordinary way once the leader is gone.
//!
//! Must never: expose openraft's types (the node sees only these), start
//! an election on a request from anyone but the leader this replica
//! follows in the term named, or hand leadership to a learner.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState, StoredMembership};

use crate::network::TransportError;
use crate::{BasicNode, Error, NodeId, Replica};

/// What a replica is in the group right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    /// The role's name as users see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }

    fn of(s: ServerState) -> Role {
        match s {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        }
    }
}

/// The members of the group as this replica knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Members that vote (in a joint configuration, those of every
    /// configuration).
    pub voters: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote.
    pub learners: BTreeSet<NodeId>,
    /// Every member's cluster address.
    pub addrs: BTreeMap<NodeId, String>,
}

impl Membership {
    fn of(m: &StoredMembership<NodeId, BasicNode>) -> Membership {
        Membership {
            voters: m.voter_ids().collect(),
            learners: m.membership().learner_ids().collect(),
            addrs: m
                .membership()
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
        }
    }

    /// A member's cluster address.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.addrs.get(&id).map(String::as_str)
    }

    /// Whether `id` is a member (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.addrs.contains_key(&id)
    }

    /// Whether the replica belongs to no group yet.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }
}

/// A replica's Raft progress, as it sees it.
#[derive(Debug, Clone)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// The last log index the current snapshot covers (0: none).
    pub snapshot_index: u64,
    pub membership: Membership,
    /// On the leader only: the highest log index each other member is known
    /// to hold (0: none yet).
    pub matched: Option<BTreeMap<NodeId, u64>>,
}

impl Status {
    /// On the leader: the highest log index a quorum of voters holds.
    pub fn commit_index(&self) -> Option<u64> {
        let matched = self.matched.as_ref()?;
        let mut held: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|v| {
                if *v == self.id {
                    self.last_log_index
                } else {
                    matched.get(v).copied().unwrap_or(0)
                }
            })
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        held.get(self.membership.voters.len() / 2).copied()
    }

    /// On the leader: how many entries each other member is behind.
    pub fn lag(&self) -> Option<BTreeMap<NodeId, u64>> {
        let matched = self.matched.as_ref()?;
        Some(
            matched
                .iter()
                .map(|(id, m)| (*id, self.last_log_index.saturating_sub(*m)))
                .collect(),
        )
    }
}

/// A change of the group's membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// Learners become voters.
    AddVoters(BTreeSet<NodeId>),
    /// Voters become learners.
    RemoveVoters(BTreeSet<NodeId>),
    /// Learners leave the group.
    RemoveNodes(BTreeSet<NodeId>),
    /// A member is reached at another cluster address.
    SetAddress { id: NodeId, addr: String },
}

/// The replica's error for a membership change that did not happen.
fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            match (f.leader_id, f.leader_node) {
                (Some(id), Some(node)) => Error::NotLeader {
                    leader_id: id,
                    leader_addr: node.addr,
                },
                _ => Error::NoLeader,
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Raft(e.to_string())
        }
        RaftError::Fatal(_) => Error::Stopped,
    }
}

impl Replica {
    /// This replica's Raft progress.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        Status {
            id: self.id,
            role: Role::of(m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or(0),
            membership: Membership::of(&m.membership_config),
            matched: m.replication.as_ref().map(|rep| {
                rep.iter()
                    .filter(|(id, _)| **id != self.id)
                    .map(|(id, l)| (*id, l.map(|l| l.index).unwrap_or(0)))
                    .collect()
            }),
        }
    }

    /// The membership as this replica knows it.
    pub fn membership(&self) -> Membership {
        Membership::of(&self.raft.metrics().borrow().membership_config)
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// Makes `members` (id to cluster address) the first voters of a new
    /// group; only on a replica that belongs to none.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), Error> {
        let members: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| Error::Raft(e.to_string()))
    }

    /// Adds node `id` at cluster address `addr` as a learner (on the
    /// leader), returning once it has caught up with the log (or a
    /// snapshot). Re-adding a learner updates its address.
    pub async fn add_learner(&self, id: NodeId, addr: &str) -> Result<(), Error> {
        self.raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map(|_| ())
            .map_err(change_error)
    }

    /// Changes the membership (on the leader); returns once the change is
    /// committed.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(), Error> {
        let change = match change {
            MembershipChange::AddVoters(ids) => ChangeMembers::AddVoterIds(ids),
            MembershipChange::RemoveVoters(ids) => ChangeMembers::RemoveVoters(ids),
            MembershipChange::RemoveNodes(ids) => ChangeMembers::RemoveNodes(ids),
            MembershipChange::SetAddress { id, addr } => {
                ChangeMembers::SetNodes(BTreeMap::from([(id, BasicNode::new(addr))]))
            }
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| ())
            .map_err(change_error)
    }

    /// Waits up to `timeout` until this replica has applied log index
    /// `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), Error> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .map(|_| ())
            .map_err(|e| wait_error(e, "the replica did not apply the entry in time"))
    }

    /// Waits up to `timeout` until a leader is known; returns it.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, Error> {
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| wait_error(e, "no leader was elected in time"))?;
        m.current_leader.ok_or(Error::NoLeader)
    }

    /// Builds a snapshot of everything applied so far (and compacts the
    /// log), waiting up to `timeout`; returns the index it covers.
    pub async fn build_snapshot(&self, timeout: Duration) -> Result<u64, Error> {
        let applied = self.status().applied_index;
        let deadline = tokio::time::Instant::now() + timeout;
        // openraft ignores a trigger while a build (one `snapshot_after`
        // started) runs: trigger again until a snapshot covers `applied`.
        loop {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|_| Error::Stopped)?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let waited = self
                .raft
                .wait(Some(left.min(Duration::from_millis(500))))
                .metrics(
                    |m| m.snapshot.is_some_and(|s| s.index >= applied),
                    "a snapshot",
                )
                .await;
            match waited {
                Ok(m) => return Ok(m.snapshot.map(|s| s.index).unwrap_or(0)),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(wait_error(e, "the snapshot was not built in time"))
                }
                Err(_) => {}
            }
        }
    }

    /// Hands leadership over to the most caught-up other voter, if this
    /// replica leads: stops heartbeats, lets the chosen voter catch up,
    /// asks it to campaign, and waits until this replica has voted for a
    /// later term (or sees another leader), all within `within`. Returns the voter that took over, or
    /// `None` when this replica does not lead or no other voter exists. On failure heartbeats resume, so a replica that keeps
    /// running stays a working leader until an election says otherwise.
    pub async fn hand_over(&self, within: Duration) -> Result<Option<NodeId>, Error> {
        let status = self.status();
        if status.role != Role::Leader {
            return Ok(None);
        }
        let matched = status.matched.clone().unwrap_or_default();
        // The most caught-up voters first; of equals, the lowest id. One
        // that cannot be reached (down) passes the turn to the next.
        let mut order: Vec<NodeId> = status
            .membership
            .voters
            .iter()
            .filter(|v| **v != self.id)
            .copied()
            .collect();
        order.sort_by_key(|v| (std::cmp::Reverse(matched.get(v).copied().unwrap_or(0)), *v));
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        for target in order {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.hand_over_to(target, left).await {
                Ok(()) => return Ok(Some(target)),
                Err(e @ Error::Unreachable(_)) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        match last {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Hands leadership over to voter `target` (see [`Replica::hand_over`]).
    pub async fn hand_over_to(&self, target: NodeId, within: Duration) -> Result<(), Error> {
        let status = self.status();
        if status.role != Role::Leader {
            return Err(match status.leader {
                Some(id) => Error::NotLeader {
                    leader_id: id,
                    leader_addr: status.membership.addr(id).unwrap_or_default().into(),
                },
                None => Error::NoLeader,
            });
        }
        if target == self.id || !status.membership.voters.contains(&target) {
            return Err(Error::Refused(format!(
                "node {target} is not another voter: leadership cannot go there"
            )));
        }
        self.raft.runtime_config().heartbeat(false);
        let result = self.campaign_elsewhere(&status, target, within).await;
        if result.is_err() {
            self.raft.runtime_config().heartbeat(true);
        }
        result
    }

    async fn campaign_elsewhere(
        &self,
        status: &Status,
        target: NodeId,
        within: Duration,
    ) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + within;
        let addr = status
            .membership
            .addr(target)
            .ok_or_else(|| Error::Raft(format!("node {target} has no address")))?
            .to_string();
        // A candidate whose log is shorter than the leader's is refused by
        // the leader: let it receive everything first (writes may still
        // arrive; the last one seen is what it must hold).
        let me = self.id;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let _ = self
            .raft
            .wait(Some(left))
            .metrics(
                |m| {
                    let held = m
                        .replication
                        .as_ref()
                        .and_then(|r| r.get(&target).copied().flatten())
                        .map(|l| l.index);
                    m.current_leader != Some(me) || held >= m.last_log_index
                },
                "the next leader caught up",
            )
            .await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.transport
            .elect_now(target, &addr, status.term, left)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(m) => Error::Unreachable(m),
                TransportError::Network(m) => Error::Unknown(m),
            })?;
        // Done once this replica has given its vote to a later term (it no
        // longer leads): the successor then holds its vote, and needs
        // nothing more from it. (Seeing the new leader takes its first
        // append, which a loaded follower may be slow to acknowledge.)
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let term = status.term;
        self.raft
            .wait(Some(left))
            .metrics(
                |m| {
                    m.current_leader.is_some_and(|l| l != me)
                        || (m.current_term > term && m.state != ServerState::Leader)
                },
                "another leader",
            )
            .await
            .map_err(|e| wait_error(e, "no other node took over in time"))?;
        Ok(())
    }

    /// The receiving side of a hand-over: node `from`, the leader of
    /// `term`, asks this replica to campaign now. Refused unless this
    /// replica is a voter that follows `from` in `term`.
    pub async fn elect_now(&self, from: NodeId, term: u64) -> Result<(), Error> {
        let status = self.status();
        if status.leader != Some(from) || status.term != term {
            return Err(Error::Refused(format!(
                "node {from} does not lead term {term} here (the leader is {}, term {})",
                status
                    .leader
                    .map(|l| format!("node {l}"))
                    .unwrap_or_else(|| "unknown".into()),
                status.term
            )));
        }
        if !status.membership.voters.contains(&self.id) {
            return Err(Error::Refused(format!("node {} is not a voter", self.id)));
        }
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|_| Error::Stopped)
    }
}

fn wait_error(e: openraft::metrics::WaitError, timeout: &str) -> Error {
    match e {
        openraft::metrics::WaitError::Timeout(..) => Error::Timeout(timeout.into()),
        openraft::metrics::WaitError::ShuttingDown => Error::Stopped,
    }
}
