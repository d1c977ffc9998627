//! The client side of node-to-node traffic: one mutual-TLS HTTP/2 channel
//! per peer address, and over it the replica's Raft traffic ([`RaftNet`])
//! and the requests a follower forwards to the leader ([`Forwarder`]).
//!
//! Raft messages are bytes micro-raft made (it encodes and decodes them,
//! and knows their kinds); they travel inside the `Peer.Raft` call and
//! their answers come back the same way. Calls
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
use micro_proto::cluster::{
    ElectNowRequest, ProposeRequest, RaftKind, RaftRequest, ReadIndexRequest,
};
use micro_raft::{
    BasicNode, Error, Forward, NodeId, RaftTransport, RpcKind, TransportError, Txn, TxnResult,
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

/// The Raft traffic of the replica: its messages, as bytes, in `Peer.Raft`
/// calls, and hand-overs in `Peer.ElectNow`.
#[derive(Clone)]
pub struct RaftNet {
    pub peers: Arc<Peers>,
}

impl RaftNet {
    /// The transport's error for a failed call to node `target`.
    fn error(target: NodeId, addr: &str, s: &Status) -> TransportError {
        let m = format!("node {target} at {addr}: {}", describe(s));
        if never_sent(s) {
            TransportError::Unreachable(m)
        } else {
            TransportError::Network(m)
        }
    }

    fn no_reply(ttl: Duration) -> Status {
        Status::deadline_exceeded(format!("no reply within {} ms", ttl.as_millis()))
    }
}

impl RaftTransport for RaftNet {
    fn call(
        &self,
        target: NodeId,
        addr: &str,
        kind: RpcKind,
        body: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, TransportError>> {
        let (peers, addr) = (self.peers.clone(), addr.to_string());
        Box::pin(async move {
            let fail = |s: Status| Self::error(target, &addr, &s);
            let mut client = peers.client_to(target, &addr).map_err(fail)?;
            let kind = match kind {
                RpcKind::AppendEntries => RaftKind::AppendEntries,
                RpcKind::Vote => RaftKind::Vote,
                RpcKind::InstallSnapshot => RaftKind::InstallSnapshot,
            };
            let call = client.raft(RaftRequest {
                kind: kind as i32,
                body,
            });
            match tokio::time::timeout(ttl, call).await {
                Ok(r) => Ok(r.map_err(fail)?.into_inner().body),
                Err(_) => Err(fail(Self::no_reply(ttl))),
            }
        })
    }

    fn elect_now(
        &self,
        target: NodeId,
        addr: &str,
        term: u64,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), TransportError>> {
        let (peers, addr) = (self.peers.clone(), addr.to_string());
        Box::pin(async move {
            let fail = |s: Status| Self::error(target, &addr, &s);
            let mut client = peers.client_to(target, &addr).map_err(fail)?;
            let call = client.elect_now(ElectNowRequest { term });
            match tokio::time::timeout(ttl, call).await {
                Ok(r) => r.map(|_| ()).map_err(fail),
                Err(_) => Err(fail(Self::no_reply(ttl))),
            }
        })
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
