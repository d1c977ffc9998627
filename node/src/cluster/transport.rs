//! The client side of node-to-node traffic: one mutual-TLS HTTP/2 channel
//! per peer address, and over it openraft's RPCs ([`RaftNet`]) and the
//! requests a follower forwards to the leader ([`Forwarder`]).
//!
//! Raft messages travel as bincode inside the `Peer.Raft` call; their
//! results (including openraft's own errors) come back the same way. Calls
//! meant for a given node (Raft's target, the leader) go over a channel that
//! verifies the server's certificate names that node.
//!
//! Must never: hold the channel map's lock across an await, or report a
//! request whose outcome is unknown as safe to retry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use micro_proto::cluster::peer_client::PeerClient;
use micro_proto::cluster::{ProposeRequest, RaftKind, RaftRequest, ReadIndexRequest};
use micro_raft::{BasicNode, Error, Forward, NodeId, Txn, TxnResult, TypeConfig};
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
use tonic::transport::Channel;
use tonic::Status;

use super::tls;

/// Largest node-to-node message (snapshot chunks and log batches).
pub const MAX_PEER_MESSAGE: usize = 64 * 1024 * 1024;

/// Channels to peers, by the node meant (if known) and cluster address.
pub struct Peers {
    tls: Arc<rustls::ClientConfig>,
    channels: Mutex<HashMap<(Option<NodeId>, String), Channel>>,
}

impl Peers {
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Arc<Peers> {
        Arc::new(Peers {
            tls,
            channels: Mutex::new(HashMap::new()),
        })
    }

    /// The channel to whichever member serves at `addr` (connected lazily,
    /// reconnecting by itself). Only for addresses whose node is unknown
    /// (a `--join` seed); otherwise use [`Peers::channel_to`].
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        self.cached(None, addr)
    }

    /// The channel to node `node` at `addr`: the server's certificate must
    /// name that node.
    pub fn channel_to(&self, node: NodeId, addr: &str) -> Result<Channel, Status> {
        self.cached(Some(node), addr)
    }

    fn cached(&self, node: Option<NodeId>, addr: &str) -> Result<Channel, Status> {
        let key = (node, addr.to_string());
        if let Some(c) = self.channels.lock().expect("peers lock").get(&key) {
            return Ok(c.clone());
        }
        let c = match node {
            Some(id) => tls::channel_to(addr, id, self.tls.clone()),
            None => tls::channel(addr, self.tls.clone()),
        }
        .map_err(|e| Status::internal(format!("cannot reach {addr}: {e}")))?;
        self.channels
            .lock()
            .expect("peers lock")
            .entry(key)
            .or_insert(c.clone());
        Ok(c)
    }

    /// A Peer client for whichever member serves at `addr`.
    pub fn client(&self, addr: &str) -> Result<PeerClient<Channel>, Status> {
        Ok(Self::limits(PeerClient::new(self.channel(addr)?)))
    }

    /// A Peer client for node `node` at `addr`.
    pub fn client_to(&self, node: NodeId, addr: &str) -> Result<PeerClient<Channel>, Status> {
        Ok(Self::limits(PeerClient::new(self.channel_to(node, addr)?)))
    }

    fn limits(c: PeerClient<Channel>) -> PeerClient<Channel> {
        c.max_decoding_message_size(MAX_PEER_MESSAGE)
            .max_encoding_message_size(MAX_PEER_MESSAGE)
    }
}

/// A status in one line, with the transport error chain behind it.
pub fn describe(s: &Status) -> String {
    let mut out = s.message().to_string();
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = e.source();
    }
    out
}

/// Whether a failed call surely never reached the peer: no connection
/// could be made (refused, unreachable, TLS handshake refused).
pub fn never_sent(s: &Status) -> bool {
    if s.code() != tonic::Code::Unavailable && s.code() != tonic::Code::Unknown {
        return false;
    }
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error")
            || text.contains("error trying to connect")
            || text.contains("handshake")
        {
            return true;
        }
        src = e.source();
    }
    false
}

/// Bincode for node-to-node messages (both sides are this same code).
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    bincode::serialize(v).map_err(|e| Status::internal(format!("cannot encode: {e}")))
}

/// Decodes a peer message. Bounded by the input: bincode 1.3 decoding from
/// a slice never reads past it (a length prefix longer than what is left is
/// an error, and sequences preallocate at most 1 MiB whatever they claim),
/// and tonic caps the message at [`MAX_PEER_MESSAGE`]. (A `with_limit`
/// option would change nothing: bincode ignores it for slices.) The
/// `raft_decode` fuzz target checks this for every peer message type.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, Status> {
    bincode::deserialize(b).map_err(|e| Status::internal(format!("cannot decode: {e}")))
}

/// openraft's view of the transport.
#[derive(Clone)]
pub struct RaftNet {
    pub peers: Arc<Peers>,
}

/// One peer, as openraft sees it.
pub struct RaftPeer {
    target: NodeId,
    addr: String,
    peers: Arc<Peers>,
}

impl RaftNetworkFactory<TypeConfig> for RaftNet {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> RaftPeer {
        RaftPeer {
            target,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

impl RaftPeer {
    async fn call<Req, Resp, E>(
        &self,
        kind: RaftKind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let net = |s: Status| {
            let e = std::io::Error::other(format!(
                "node {} at {}: {}",
                self.target,
                self.addr,
                describe(&s)
            ));
            if never_sent(&s) {
                RPCError::Unreachable(Unreachable::new(&e))
            } else {
                RPCError::Network(NetworkError::new(&e))
            }
        };
        let body = encode(req).map_err(net)?;
        let mut client = self.peers.client_to(self.target, &self.addr).map_err(net)?;
        let call = client.raft(RaftRequest {
            kind: kind as i32,
            body,
        });
        let reply = match tokio::time::timeout(ttl, call).await {
            Ok(r) => r.map_err(net)?.into_inner(),
            Err(_) => {
                return Err(net(Status::deadline_exceeded(format!(
                    "no reply within {} ms",
                    ttl.as_millis()
                ))))
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = decode(&reply.body).map_err(net)?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::AppendEntries, &rpc, option.hard_ttl())
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
        self.call(RaftKind::InstallSnapshot, &rpc, option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftKind::Vote, &rpc, option.hard_ttl()).await
    }
}

/// Sends writes and read barriers to the leader.
pub struct Forwarder {
    pub peers: Arc<Peers>,
}

/// The replica's error for a failed forwarded call. Statuses the leader
/// gives for "not applied" map to retryable errors; a broken connection
/// after the request left is an unknown outcome.
fn forward_error(leader: NodeId, addr: &str, s: Status) -> Error {
    match s.code() {
        tonic::Code::FailedPrecondition => Error::NoLeader,
        tonic::Code::DeadlineExceeded => Error::Timeout(s.message().to_string()),
        _ if never_sent(&s) => Error::Unreachable(format!(
            "node {leader} at {addr}: {}",
            describe(&s)
        )),
        tonic::Code::Unavailable => Error::Unknown(format!(
            "the connection to the leader (node {leader} at {addr}) broke: {} (the outcome is unknown)",
            describe(&s)
        )),
        _ => Error::Unknown(format!("the leader (node {leader}) failed: {}", s.message())),
    }
}

impl Forward for Forwarder {
    fn propose(
        &self,
        leader: NodeId,
        node: BasicNode,
        txn: Txn,
    ) -> BoxFuture<'static, Result<TxnResult, Error>> {
        let peers = self.peers.clone();
        Box::pin(async move {
            let fail = |s| forward_error(leader, &node.addr, s);
            let body = encode(&txn).map_err(fail)?;
            let mut client = peers.client_to(leader, &node.addr).map_err(fail)?;
            let reply = client
                .propose(ProposeRequest { txn: body })
                .await
                .map_err(fail)?
                .into_inner();
            decode(&reply.result).map_err(fail)
        })
    }

    fn read_index(
        &self,
        leader: NodeId,
        node: BasicNode,
    ) -> BoxFuture<'static, Result<u64, Error>> {
        let peers = self.peers.clone();
        Box::pin(async move {
            let fail = |s| forward_error(leader, &node.addr, s);
            let mut client = peers.client_to(leader, &node.addr).map_err(fail)?;
            let reply = client
                .read_index(ReadIndexRequest {})
                .await
                .map_err(fail)?
                .into_inner();
            Ok(reply.index)
        })
    }
}

/// The status a forwarded request's failure is sent back as (the inverse
/// of [`forward_error`]).
pub fn status_for_peer(e: Error) -> Status {
    match e {
        Error::NotLeader { leader_id, .. } => {
            Status::failed_precondition(format!("not the leader (node {leader_id} is)"))
        }
        Error::NoLeader => Status::failed_precondition("no leader"),
        Error::Timeout(m) => Status::deadline_exceeded(m),
        other => Status::internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_messages_round_trip_in_the_legacy_format() {
        let txn = Txn::put(b"k".to_vec(), b"v".to_vec(), None);
        let raw = encode(&txn).unwrap();
        assert_eq!(
            raw,
            bincode::serialize(&txn).unwrap(),
            "same bytes as before"
        );
        let back: Txn = decode(&raw).unwrap();
        assert_eq!(encode(&back).unwrap(), raw);
    }

    #[test]
    fn lengths_past_the_input_are_refused_without_allocating_them() {
        // A string or a list that claims far more than the message holds.
        let e = decode::<String>(&u64::MAX.to_le_bytes()).unwrap_err();
        assert!(e.message().starts_with("cannot decode"), "{e}");
        let mut raw = (1u64 << 40).to_le_bytes().to_vec();
        raw.extend_from_slice(&[0; 64]);
        assert!(decode::<Vec<u64>>(&raw).is_err());
        assert!(decode::<Txn>(&raw).is_err());
    }
}
