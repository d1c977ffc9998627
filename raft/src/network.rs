//! How a replica reaches its peers.
//!
//! Two things cross the network: Raft's own RPCs and requests a follower
//! sends to the leader on a client's behalf ([`Forward`]: writes and read
//! barriers). The node supplies both over its mutual-TLS transport, which
//! only moves bytes ([`RaftTransport`]): this module turns openraft's
//! requests into bytes and back (bincode of openraft's own types, the same
//! encoding as before the node stopped knowing openraft, so nodes of either
//! version talk), maps transport failures to openraft's errors, and serves
//! the receiving side ([`Replica::handle_rpc`]). [`NoPeers`] is the
//! transport of a node alone.
//!
//! Must never: report a request that may have reached its peer as
//! unreachable (openraft and [`Forward`]'s callers resend what surely never
//! arrived), or expose openraft's types to the node.

use std::time::Duration;

use futures::future::BoxFuture;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::Arc;

use crate::{BasicNode, Error, NodeId, Replica, Txn, TxnResult, TypeConfig};

/// Sends client requests to the leader.
///
/// Errors must tell apart a request that surely never arrived
/// ([`Error::Unreachable`], [`Error::NotLeader`], [`Error::NoLeader`]: the
/// replica retries it, perhaps with another leader) from one whose outcome
/// is unknown ([`Error::Unknown`]: a write is sent again with the same
/// request id, which the state machine applies at most once; a read barrier
/// returns it; anything else goes to the caller as it is). The transaction
/// must reach the leader with its request id intact.
pub trait Forward: Send + Sync + 'static {
    /// Has `leader` replicate `txn`; returns its result.
    fn propose(
        &self,
        leader: NodeId,
        node: BasicNode,
        txn: Txn,
    ) -> BoxFuture<'static, Result<TxnResult, Error>>;
    /// Asks `leader` for its read index, confirmed by a quorum.
    fn read_index(&self, leader: NodeId, node: BasicNode)
        -> BoxFuture<'static, Result<u64, Error>>;
}

/// Which Raft RPC a message is (the receiver decodes the body by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RpcKind {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RpcKind {
    fn as_str(self) -> &'static str {
        match self {
            RpcKind::AppendEntries => "append-entries",
            RpcKind::Vote => "vote",
            RpcKind::InstallSnapshot => "install-snapshot",
        }
    }
}

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The request surely never reached the peer (no connection could be
    /// made): safe to send again.
    #[error("{0}")]
    Unreachable(String),
    /// The request may have reached the peer (the connection broke, no
    /// reply in time, the peer refused it).
    #[error("{0}")]
    Network(String),
}

/// What the node provides to carry Raft traffic: it moves bytes to a peer
/// and back, and knows nothing of what they mean.
pub trait RaftTransport: Send + Sync + 'static {
    /// Sends the Raft message `body` of kind `kind` to node `target` at
    /// cluster address `addr` (whose certificate must name `target`) and
    /// returns the reply's bytes, which the peer made with
    /// [`Replica::handle_rpc`]. Gives up after `timeout`.
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        kind: RpcKind,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>>;

    /// Asks node `target` to start an election at once, because this node,
    /// its leader in `term`, is handing leadership over; the peer passes
    /// the call to [`Replica::elect_now`].
    fn elect_now(
        &self,
        target: NodeId,
        addr: &str,
        term: u64,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// The transport of a replica that has no peers: every peer is unreachable.
#[derive(Clone, Copy, Default)]
pub struct NoPeers;

/// What a replica without peers answers: the leader is elsewhere.
fn elsewhere<T: Send + 'static>(
    leader: NodeId,
    node: BasicNode,
) -> BoxFuture<'static, Result<T, Error>> {
    Box::pin(std::future::ready(Err(Error::NotLeader {
        leader_id: leader,
        leader_addr: node.addr,
    })))
}

impl Forward for NoPeers {
    fn propose(
        &self,
        leader: NodeId,
        node: BasicNode,
        _txn: Txn,
    ) -> BoxFuture<'static, Result<TxnResult, Error>> {
        elsewhere(leader, node)
    }

    fn read_index(
        &self,
        leader: NodeId,
        node: BasicNode,
    ) -> BoxFuture<'static, Result<u64, Error>> {
        elsewhere(leader, node)
    }
}

fn no_transport<T: Send + 'static>(
    target: NodeId,
    addr: &str,
) -> BoxFuture<'static, Result<T, TransportError>> {
    let e = TransportError::Unreachable(format!(
        "node {target} at {addr} cannot be reached: this replica has no transport"
    ));
    Box::pin(std::future::ready(Err(e)))
}

impl RaftTransport for NoPeers {
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        _kind: RpcKind,
        _body: Vec<u8>,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        no_transport(target, addr)
    }

    fn elect_now(
        &self,
        target: NodeId,
        addr: &str,
        _term: u64,
        _timeout: Duration,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        no_transport(target, addr)
    }
}

/// Bincode, as both ends of a Raft RPC have always used it.
fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| format!("cannot encode: {e}"))
}

/// Decodes a Raft message. Bounded by the input: bincode 1.3 decoding from
/// a slice never reads past it (a length prefix longer than what is left is
/// an error, and sequences preallocate at most 1 MiB whatever they claim);
/// the transport caps the message's size.
fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    bincode::deserialize(b).map_err(|e| format!("cannot decode: {e}"))
}

/// openraft's view of a [`RaftTransport`].
#[derive(Clone)]
pub(crate) struct Network {
    pub(crate) transport: Arc<dyn RaftTransport>,
}

/// One peer, as openraft sees it.
pub(crate) struct Peer {
    target: NodeId,
    addr: String,
    transport: Arc<dyn RaftTransport>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            transport: self.transport.clone(),
        }
    }
}

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        kind: RpcKind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let io = |m: String| {
            std::io::Error::other(format!("node {} at {}: {m}", self.target, self.addr))
        };
        let body = encode(req).map_err(|m| RPCError::Network(NetworkError::new(&io(m))))?;
        let reply = self
            .transport
            .call(self.target, &self.addr, kind, body, ttl)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&io(m))),
                TransportError::Network(m) => RPCError::Network(NetworkError::new(&io(m))),
            })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            decode(&reply).map_err(|m| RPCError::Network(NetworkError::new(&io(m))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::AppendEntries, &rpc, option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RpcKind::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RpcKind::Vote, &rpc, option.hard_ttl()).await
    }
}

impl Replica {
    /// The receiving side of a Raft RPC: decodes the request of kind
    /// `kind`, has Raft handle it, and returns the encoded result (openraft's
    /// own errors included, for the sender to see as the peer's answer).
    /// Fails only when the request cannot be decoded or the answer encoded.
    pub async fn handle_rpc(&self, kind: RpcKind, body: &[u8]) -> Result<Vec<u8>, Error> {
        let bad = |m: String| Error::BadMessage(format!("a {} request: {m}", kind.as_str()));
        match kind {
            RpcKind::AppendEntries => {
                let rpc: AppendEntriesRequest<TypeConfig> = decode(body).map_err(bad)?;
                encode(&self.raft.append_entries(rpc).await).map_err(bad)
            }
            RpcKind::Vote => {
                let rpc: VoteRequest<NodeId> = decode(body).map_err(bad)?;
                encode(&self.raft.vote(rpc).await).map_err(bad)
            }
            RpcKind::InstallSnapshot => {
                let rpc: InstallSnapshotRequest<TypeConfig> = decode(body).map_err(bad)?;
                encode(&self.raft.install_snapshot(rpc).await).map_err(bad)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_past_the_input_are_refused_without_allocating_them() {
        // A list of entries that claims far more than the message holds.
        let mut raw = (1u64 << 40).to_le_bytes().to_vec();
        raw.extend_from_slice(&[0; 64]);
        assert!(decode::<Vec<crate::Entry>>(&raw).is_err());
        // A message cut short.
        let vote = encode(&VoteRequest::<NodeId>::new(Default::default(), None)).unwrap();
        assert!(decode::<VoteRequest<NodeId>>(&vote[..vote.len() - 1]).is_err());
        assert!(decode::<VoteRequest<NodeId>>(&vote).is_ok());
    }
}
