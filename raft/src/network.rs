//! How a replica reaches its peers.
//!
//! Two things cross the network: openraft's own RPCs (an
//! [`openraft::RaftNetworkFactory`]) and requests a follower sends to the
//! leader on a client's behalf ([`Forward`]: writes and read barriers). The
//! node supplies both over its mutual-TLS transport; this crate only defines
//! what it needs. [`NoPeers`] is the transport of a node alone.

use futures::future::BoxFuture;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::{BasicNode, Error, NodeId, Txn, TxnResult, TypeConfig};

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

/// A peer that cannot be reached.
pub struct NoPeer {
    target: NodeId,
    addr: String,
}

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        let e = std::io::Error::other(format!(
            "node {} at {} cannot be reached: this replica has no transport",
            self.target, self.addr
        ));
        RPCError::Unreachable(Unreachable::new(&e))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> NoPeer {
        NoPeer {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
