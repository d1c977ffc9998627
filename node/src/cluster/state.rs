//! This node's view of the cluster and what it does for it: membership
//! (admitting, promoting, removing nodes), where each node is, gossip's
//! opinion of it, and each node's Raft progress.
//!
//! Membership lives in Raft (voters and learners, with their cluster
//! addresses); the addresses a node serves clients on live in the
//! replicated state under `cluster/nodes/<id>`, removed nodes under
//! `cluster/removed/<id>` and each node's certificate under
//! `cluster/certs/<id>` (see [`super::keys`]), so a removed node cannot
//! come back, nor can a new node join under an id that was ever used.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use micro_gossip::Gossip;
use micro_proto::cluster::{AdmitRequest, Member, NodeStatus, Secrets};
use micro_raft::{now_millis, Cond, Membership, MembershipChange, NodeId, Op, Replica, Txn};
use serde::{Deserialize, Serialize};
use tonic::Status;

use super::material::Material;
use super::pki::fingerprint_pem;
use super::transport::{describe, Peers};
use super::trust::Trust;
use crate::keys::cluster as keys;

/// The addresses a node serves on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    pub address: String,
    pub api: String,
    pub grpc: String,
}

/// This node's part in the cluster.
pub struct Cluster {
    pub id: NodeId,
    pub material: Material,
    pub peers: Arc<Peers>,
    /// How many voters the cluster keeps; further nodes stay learners.
    pub size: usize,
    pub me: NodeInfo,
    /// The keys every node shares, sent to joiners: token signing, config secrets.
    pub shared_keys: ([u8; 32], [u8; 32]),
    /// The certificates the cluster still takes.
    pub trust: Arc<Trust>,
    replica: OnceLock<Replica>,
    gossip: OnceLock<Gossip>,
}

use keys::{node as node_key, removed as removed_key};

fn raft_status(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("cannot change the membership: {e}"))
}

impl Cluster {
    pub fn new(
        id: NodeId,
        material: Material,
        peers: Arc<Peers>,
        size: usize,
        me: NodeInfo,
        shared_keys: ([u8; 32], [u8; 32]),
        trust: Arc<Trust>,
    ) -> Arc<Cluster> {
        Arc::new(Cluster {
            id,
            material,
            peers,
            size,
            me,
            shared_keys,
            trust,
            replica: OnceLock::new(),
            gossip: OnceLock::new(),
        })
    }

    /// Completes the cluster once the replica is open.
    pub fn set_replica(&self, replica: Replica) {
        let _ = self.replica.set(replica);
    }

    pub fn set_gossip(&self, gossip: Gossip) {
        let _ = self.gossip.set(gossip);
    }

    pub fn replica(&self) -> &Replica {
        self.replica.get().expect("the replica is opened first")
    }

    pub fn gossip(&self) -> Option<&Gossip> {
        self.gossip.get()
    }

    /// The shared secrets a joiner gets.
    pub fn secrets(&self) -> Secrets {
        Secrets {
            ca_cert_pem: self.material.ca.cert_pem().to_string(),
            ca_key_pem: self.material.ca.key_pem().to_string(),
            gossip_key: self.material.gossip_key.to_vec(),
            auth_signing_key: self.shared_keys.0.to_vec(),
            config_secret_key: self.shared_keys.1.to_vec(),
        }
    }

    /// The membership as this replica knows it.
    fn membership_config(&self) -> Membership {
        self.replica().membership()
    }

    /// Voters and learners, as this replica knows them.
    pub fn membership(&self) -> (BTreeSet<NodeId>, BTreeSet<NodeId>) {
        let m = self.membership_config();
        (m.voters, m.learners)
    }

    /// A member's cluster address.
    pub fn node_addr(&self, id: NodeId) -> Option<String> {
        self.membership_config().addr(id).map(str::to_string)
    }

    /// The current leader, if known: (id, cluster address).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let id = self.replica().leader()?;
        Some((id, self.node_addr(id)?))
    }

    pub fn is_removed(&self, id: NodeId) -> bool {
        matches!(
            self.replica().reader().get(&removed_key(id), now_millis()),
            Ok(Some(_))
        )
    }

    /// Lets a caller through if its certificate names a member that was
    /// not removed. A replica that belongs to no cluster yet (a joiner
    /// waiting for its first append) takes any node the CA certified. (The
    /// handshake already refused revoked and foreign certificates; the check
    /// here, against the in-memory trust set, also stops a connection that
    /// was open when its node was removed.)
    pub fn check_peer(&self, node: Option<NodeId>) -> Result<NodeId, Status> {
        let id = node.ok_or_else(|| {
            Status::unauthenticated("a cluster certificate is required on the cluster port")
        })?;
        if self.trust.is_revoked(id) {
            return Err(Status::permission_denied(format!(
                "node {id} was removed from this cluster"
            )));
        }
        let m = self.membership_config();
        if m.contains(id) || m.is_empty() {
            Ok(id)
        } else {
            Err(Status::permission_denied(format!(
                "node {id} is not a member of this cluster"
            )))
        }
    }

    /// Whether a new node may join as `id`: never an id that is a member,
    /// was removed, or already holds a certificate of this cluster (so no
    /// Join can take over another node's id or address). Call it on a
    /// linearized state; [`Cluster::record_join`] checks again atomically.
    pub fn may_join(&self, id: NodeId) -> Result<(), Status> {
        if self.is_removed(id) {
            return Err(removed_status(id));
        }
        let issued = matches!(
            self.replica().reader().get(&keys::cert(id), now_millis()),
            Ok(Some(_))
        );
        if issued || self.node_addr(id).is_some() || id == self.id {
            return Err(taken_status(id));
        }
        Ok(())
    }

    /// Records the certificate issued to a joining node as the one its id
    /// may use, if the token still holds and the id is still unused.
    pub async fn record_join(&self, id: NodeId, cert_pem: &str, token: Cond) -> Result<(), Status> {
        let fp = fingerprint_pem(cert_pem)
            .ok_or_else(|| Status::internal("the issued certificate cannot be read"))?;
        let result = self
            .replica()
            .write(Txn {
                conds: vec![
                    token,
                    Cond::Absent(removed_key(id)),
                    Cond::Absent(keys::cert(id)),
                ],
                ops: vec![Op::Put {
                    key: keys::cert(id),
                    value: fp.into_bytes(),
                    expires_at: None,
                }],
                now: 0,
                request: None,
            })
            .await
            .map_err(crate::grpc::status)?;
        match result.failed_cond {
            _ if result.succeeded => Ok(()),
            Some(0) => Err(super::tokens::not_valid()),
            Some(1) => Err(removed_status(id)),
            _ => Err(taken_status(id)),
        }
    }

    /// Refuses to run on Raft state that is not this cluster's, or as a
    /// node the cluster removed. Called once the replica is open, before
    /// the node serves or votes.
    pub fn check_own_state(&self, data: &crate::data_dir::DataDir) -> Result<(), String> {
        let reader = self.replica().reader();
        let ours = self.material.ca.fingerprint();
        if let Ok(Some(rec)) = reader.get(keys::CA.as_bytes(), now_millis()) {
            if rec.value != ours.as_bytes() {
                return Err(format!(
                    "the Raft state in {} belongs to another cluster (CA {}), not to the one this node's certificate is from (CA {}): restore this node's own raft/ from a backup, or move the data directory aside and join the cluster again with a fresh --data-dir and a new token",
                    data.raft().display(),
                    short(&String::from_utf8_lossy(&rec.value)),
                    short(&ours),
                ));
            }
        }
        if self.is_removed(self.id) {
            return Err(format!(
                "node {} was removed from this cluster: its certificate is revoked; to bring this machine back, move {} aside and join again with a fresh --data-dir and a new token",
                self.id,
                data.root().display()
            ));
        }
        Ok(())
    }

    /// Writes what this node must find in the replicated state: the
    /// cluster's CA fingerprint and this node's certificate (for state made
    /// before they were kept; never overwriting either).
    async fn record_identity(&self) -> Result<(), Status> {
        let reader = self.replica().reader();
        let now = now_millis();
        let fp = fingerprint_pem(&self.material.identity.cert_pem)
            .ok_or_else(|| Status::internal("this node's certificate cannot be read"))?;
        let mut puts = Vec::new();
        match reader.get(&keys::cert(self.id), now) {
            Ok(None) => puts.push((keys::cert(self.id), fp.into_bytes())),
            Ok(Some(rec)) if rec.value != fp.as_bytes() => {
                tracing::warn!("the cluster holds another certificate for this node's id; peers will refuse this one");
            }
            _ => {}
        }
        if let Ok(None) = reader.get(keys::CA.as_bytes(), now) {
            let ca = self.material.ca.fingerprint().into_bytes();
            puts.push((keys::CA.as_bytes().to_vec(), ca));
        }
        for (key, value) in puts {
            self.replica()
                .write(
                    Txn::ops(vec![Op::Put {
                        key: key.clone(),
                        value,
                        expires_at: None,
                    }])
                    .when(Cond::Absent(key)),
                )
                .await
                .map_err(crate::grpc::status)?;
        }
        Ok(())
    }

    /// Whether gossip holds `node` to be down (no call should go there).
    pub fn is_down(&self, node: NodeId) -> bool {
        node != self.id
            && self
                .gossip()
                .and_then(|g| g.state_of(node))
                .is_some_and(|s| s == micro_gossip::State::Down)
    }

    /// Admits a node (on the leader; forwarded there otherwise): records its
    /// addresses, adds it as a learner once it caught up, and promotes it
    /// while voters are fewer than the cluster size. Returns its role.
    pub async fn admit(&self, r: AdmitRequest) -> Result<String, Status> {
        let replica = self.replica();
        if !replica.is_leader() {
            let (leader, addr) = self
                .leader()
                .ok_or_else(|| Status::unavailable("no leader is elected yet"))?;
            if leader == self.id {
                return Err(Status::unavailable("leadership is changing; try again"));
            }
            let reply = self
                .peers
                .client_to(leader, &addr)?
                .admit(r)
                .await
                .map_err(|s| Status::unavailable(format!("the leader: {}", describe(&s))))?;
            return Ok(reply.into_inner().role);
        }
        let info = NodeInfo {
            address: r.address.clone(),
            api: r.api_address,
            grpc: r.grpc_address,
        };
        replica
            .write(Txn::ops(vec![Op::Put {
                key: node_key(r.node_id),
                value: serde_json::to_vec(&info).map_err(|e| Status::internal(e.to_string()))?,
                expires_at: None,
            }]))
            .await
            .map_err(crate::grpc::status)?;
        let (voters, learners) = self.membership();
        let known_addr = self.node_addr(r.node_id);
        if !voters.contains(&r.node_id)
            && (!learners.contains(&r.node_id) || known_addr.as_deref() != Some(&r.address))
        {
            // Blocks until the learner has caught up (log or snapshot).
            tokio::time::timeout(
                Duration::from_secs(120),
                replica.add_learner(r.node_id, &r.address),
            )
            .await
            .map_err(|_| Status::deadline_exceeded("the new node did not catch up within 120 s"))?
            .map_err(raft_status)?;
            tracing::info!(node = r.node_id, addr = %r.address, "added a learner");
        }
        let (voters, _) = self.membership();
        if voters.contains(&r.node_id) {
            self.set_address(r.node_id, &r.address).await?;
            return Ok("voter".into());
        }
        if voters.len() < self.size {
            replica
                .change_membership(MembershipChange::AddVoters(BTreeSet::from([r.node_id])))
                .await
                .map_err(raft_status)?;
            tracing::info!(node = r.node_id, "promoted to voter");
            return Ok("voter".into());
        }
        Ok("learner".into())
    }

    /// Takes a node out for good (on the leader).
    pub async fn remove(&self, id: NodeId) -> Result<(), Status> {
        let replica = self.replica();
        let (voters, learners) = self.membership();
        if !voters.contains(&id) && !learners.contains(&id) {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        if voters.contains(&id) && voters.len() == 1 {
            return Err(Status::failed_precondition(
                "the last voter cannot be removed",
            ));
        }
        replica
            .write(Txn::ops(vec![Op::Put {
                key: removed_key(id),
                value: now_millis().to_string().into_bytes(),
                expires_at: None,
            }]))
            .await
            .map_err(crate::grpc::status)?;
        if voters.contains(&id) {
            replica
                .change_membership(MembershipChange::RemoveVoters(BTreeSet::from([id])))
                .await
                .map_err(raft_status)?;
        }
        let (_, learners) = self.membership();
        if learners.contains(&id) {
            replica
                .change_membership(MembershipChange::RemoveNodes(BTreeSet::from([id])))
                .await
                .map_err(raft_status)?;
        }
        replica
            .write(Txn::ops(vec![Op::Delete { key: node_key(id) }]))
            .await
            .map_err(crate::grpc::status)?;
        if let Some(g) = self.gossip() {
            g.forget(id);
        }
        tracing::info!(node = id, "removed from the cluster");
        Ok(())
    }

    /// Points the membership at a member's new cluster address (a member
    /// restarted with another `--cluster-address`).
    async fn set_address(&self, id: NodeId, addr: &str) -> Result<(), Status> {
        if self.node_addr(id).as_deref() == Some(addr) {
            return Ok(());
        }
        self.replica()
            .change_membership(MembershipChange::SetAddress {
                id,
                addr: addr.to_string(),
            })
            .await
            .map_err(raft_status)?;
        tracing::info!(node = id, addr, "a member's cluster address changed");
        Ok(())
    }

    /// Records this node's own addresses in the replicated state when they
    /// are missing or changed (the founder is never admitted; a node may
    /// restart on other ports).
    pub async fn record_self(&self) -> Result<(), Status> {
        self.record_identity().await?;
        let current = self
            .replica()
            .reader()
            .get(&node_key(self.id), now_millis())
            .map_err(crate::grpc::status)?
            .and_then(|r| serde_json::from_slice::<NodeInfo>(&r.value).ok());
        if self.replica().is_leader() {
            self.set_address(self.id, &self.me.address).await?;
        }
        if current.is_some_and(|c| {
            c.address == self.me.address && c.api == self.me.api && c.grpc == self.me.grpc
        }) {
            return Ok(());
        }
        let value = serde_json::to_vec(&self.me).map_err(|e| Status::internal(e.to_string()))?;
        self.replica()
            .write(Txn::ops(vec![Op::Put {
                key: node_key(self.id),
                value,
                expires_at: None,
            }]))
            .await
            .map_err(crate::grpc::status)?;
        Ok(())
    }

    /// The addresses a node recorded when it was admitted.
    pub fn node_info(&self, id: NodeId) -> Option<NodeInfo> {
        if id == self.id {
            return Some(self.me.clone());
        }
        let rec = self
            .replica()
            .reader()
            .get(&node_key(id), now_millis())
            .ok()??;
        serde_json::from_slice(&rec.value).ok()
    }

    /// Every member with its addresses, gossip state and role.
    pub fn members(&self) -> Vec<Member> {
        let (voters, learners) = self.membership();
        let leader = self.replica().leader();
        voters
            .iter()
            .chain(learners.iter())
            .map(|&id| {
                let info = self.node_info(id).unwrap_or_default();
                let gossip = if id == self.id {
                    "alive"
                } else {
                    self.gossip()
                        .and_then(|g| g.state_of(id))
                        .map(|s| s.as_str())
                        .unwrap_or("unknown")
                };
                let role = if leader == Some(id) {
                    "leader"
                } else if voters.contains(&id) {
                    "voter"
                } else {
                    "learner"
                };
                Member {
                    id,
                    address: self.node_addr(id).unwrap_or(info.address),
                    api_address: info.api,
                    grpc_address: info.grpc,
                    gossip: gossip.into(),
                    role: role.into(),
                }
            })
            .collect()
    }

    /// This node's Raft progress.
    pub fn local_status(&self) -> NodeStatus {
        let m = self.replica().status();
        NodeStatus {
            id: self.id,
            address: self.me.address.clone(),
            state: m.role.as_str().into(),
            term: m.term,
            leader: m.leader.unwrap_or(0),
            last_log_index: m.last_log_index,
            // Known to the leader only: the highest index a quorum holds.
            commit_index: m.commit_index().unwrap_or(0),
            applied_index: m.applied_index,
            snapshot_index: m.snapshot_index,
            error: String::new(),
        }
    }

    /// Every member's Raft progress, asked of each (2 s each, in parallel).
    pub async fn status_all(&self) -> Vec<NodeStatus> {
        let (voters, learners) = self.membership();
        let asks = voters.iter().chain(learners.iter()).map(|&id| async move {
            if id == self.id {
                return self.local_status();
            }
            let addr = self.node_addr(id).unwrap_or_default();
            let failed = |error: String| NodeStatus {
                id,
                address: addr.clone(),
                state: "unreachable".into(),
                error,
                ..Default::default()
            };
            let mut client = match self.peers.client_to(id, &addr) {
                Ok(c) => c,
                Err(s) => return failed(s.message().to_string()),
            };
            match tokio::time::timeout(
                Duration::from_secs(2),
                client.status(micro_proto::cluster::StatusRequest {}),
            )
            .await
            {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(s)) => failed(describe(&s)),
                Err(_) => failed("no answer within 2 s".into()),
            }
        });
        futures::future::join_all(asks).await
    }

    /// Keeps this node a member: while it is not a voter (and the cluster
    /// has room for one), or not a member at all, it asks to be admitted
    /// through the other members it knows or `seeds`. Also keeps gossip
    /// pointed at members it does not see alive.
    pub fn spawn_keeper(self: &Arc<Self>, seeds: Vec<String>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.announce_to_gossip().await;
                let (voters, learners) = me.membership();
                let moved = me.node_addr(me.id).is_some_and(|a| a != me.me.address);
                let wanted = moved
                    || (!voters.contains(&me.id)
                        && (!learners.contains(&me.id) || voters.len() < me.size));
                if !wanted || me.is_removed(me.id) {
                    continue;
                }
                // Members are dialled as themselves; a seed is any member.
                let mut targets: Vec<(Option<NodeId>, String)> = voters
                    .iter()
                    .filter(|v| **v != me.id)
                    .filter_map(|v| Some((Some(*v), me.node_addr(*v)?)))
                    .collect();
                targets.extend(seeds.iter().map(|s| (None, s.clone())));
                for (node, addr) in targets {
                    let req = AdmitRequest {
                        node_id: me.id,
                        address: me.me.address.clone(),
                        api_address: me.me.api.clone(),
                        grpc_address: me.me.grpc.clone(),
                    };
                    let client = match node {
                        Some(id) => me.peers.client_to(id, &addr),
                        None => me.peers.client(&addr),
                    };
                    let Ok(mut client) = client else {
                        continue;
                    };
                    match client.admit(req).await {
                        Ok(r) => {
                            tracing::info!(role = %r.get_ref().role, via = %addr, "admitted to the cluster");
                            break;
                        }
                        Err(s) => {
                            tracing::info!(via = %addr, "not admitted yet: {}", describe(&s))
                        }
                    }
                }
            }
        })
    }

    /// Points gossip at members it does not see alive.
    async fn announce_to_gossip(&self) {
        let Some(g) = self.gossip() else { return };
        let (voters, learners) = self.membership();
        for id in voters.iter().chain(learners.iter()) {
            if *id == self.id || g.state_of(*id) == Some(micro_gossip::State::Alive) {
                continue;
            }
            if let Some(addr) = self.node_addr(*id) {
                if let Ok(mut addrs) = tokio::net::lookup_host(&addr).await {
                    if let Some(a) = addrs.next() {
                        g.announce(a);
                    }
                }
            }
        }
    }
}

fn removed_status(id: NodeId) -> Status {
    Status::permission_denied(format!(
        "node {id} was removed from this cluster; start it with a fresh data directory"
    ))
}

fn taken_status(id: NodeId) -> Status {
    Status::permission_denied(format!(
        "node id {id} is or was a member of this cluster; a joining node needs a fresh --data-dir"
    ))
}

/// The first 12 hex digits of a fingerprint, for messages.
fn short(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}
