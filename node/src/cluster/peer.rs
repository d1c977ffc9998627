//! The server side of the cluster port: the `Peer` service (join, admit,
//! Raft RPCs (bytes micro-raft reads), a stopping leader's hand-over,
//! forwarded writes and read barriers, status, the broker's
//! deliveries and interest from other nodes) and, for every
//! other path, the node's own gRPC stack or one of its local service
//! instances, for calls other nodes proxy here.
//!
//! Everything runs over mutual TLS. `Join` is the only call taken without a
//! client certificate (it checks the join token instead, and is served by a
//! server of its own, [`join_routes`]); everything else needs a certificate
//! from the cluster CA whose node id is a member of the Raft group, not
//! removed, and the one issued to that id (checked in the handshake too,
//! see `tls`).
//!
//! Must never: answer anything but `Join` for a caller without a member's
//! certificate, sign a certificate for an id that is or was a member,
//! forward a proxied call a second time, or pass one to an address that is
//! not an instance registered on this node.

use std::sync::Arc;

use axum::body::Body;
use micro_proto::cluster::peer_server::{Peer, PeerServer};
use micro_proto::cluster::{
    AdmitRequest, AdmitResponse, BrokerDeliverRequest, BrokerDeliverResponse,
    BrokerInterestRequest, BrokerInterestResponse, ElectNowRequest, ElectNowResponse, JoinRequest,
    JoinResponse, NodeStatus, ProposeRequest, ProposeResponse, RaftKind, RaftRequest, RaftResponse,
    ReadIndexRequest, ReadIndexResponse, StatusRequest,
};
use micro_raft::{NodeId, RpcKind, Txn};
use tonic::{Request, Response, Status};
use tower::ServiceExt;

use super::pki::JoinToken;
use super::tls::PeerInfo;
use super::tokens;
use super::transport::{encode, status_for_peer, MAX_PEER_MESSAGE};
use super::Cluster;
use crate::router::Router;
use crate::services::broker::Broker;
use crate::target::{HOP_HEADER, INSTANCE_HEADER};

/// The node id in the caller's certificate, if it presented one.
fn peer_node<T>(req: &Request<T>) -> Option<NodeId> {
    req.extensions().get::<PeerInfo>().and_then(|p| p.node_id)
}

/// The Peer service.
pub struct PeerService {
    cluster: Arc<Cluster>,
    /// The node's broker (none on the join server, which serves only Join).
    broker: Option<Arc<Broker>>,
}

impl PeerService {
    /// Requires the caller to be a member (by certificate).
    fn member<T>(&self, req: &Request<T>) -> Result<NodeId, Status> {
        self.cluster.check_peer(peer_node(req))
    }

    fn broker(&self) -> Result<&Broker, Status> {
        self.broker
            .as_deref()
            .ok_or_else(|| Status::unavailable("this server has no broker"))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let remote = req.extensions().get::<PeerInfo>().map(|p| p.remote);
        let r = req.into_inner();
        let cluster = &self.cluster;
        let token = JoinToken::parse(&r.token).map_err(|e| {
            tracing::warn!(?remote, "refused a join with a malformed token");
            Status::invalid_argument(e.to_string())
        })?;
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node id 0 is not valid"));
        }
        let holds = tokens::check(
            cluster.replica(),
            &cluster.material.ca.fingerprint(),
            &token,
        )
        .await
        .inspect_err(|s| {
            tracing::warn!(?remote, node = r.node_id, "refused a join: {}", s.message())
        })?;
        // After the token check's linearize: the membership is current.
        cluster.may_join(r.node_id)?;
        let cert_pem = cluster
            .material
            .ca
            .sign_csr(&r.csr_pem, r.node_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        cluster.record_join(r.node_id, &cert_pem, holds).await?;
        tracing::info!(
            node = r.node_id,
            ?remote,
            "issued a certificate to a joining node"
        );
        Ok(Response::new(JoinResponse {
            cert_pem,
            secrets: Some(cluster.secrets()),
        }))
    }

    async fn admit(&self, req: Request<AdmitRequest>) -> Result<Response<AdmitResponse>, Status> {
        let caller = peer_node(&req)
            .ok_or_else(|| Status::unauthenticated("a cluster certificate is required"))?;
        let r = req.into_inner();
        // A node asks for itself; a member may pass a request on.
        if caller != r.node_id {
            self.cluster.check_peer(Some(caller))?;
        }
        if self.cluster.is_removed(r.node_id) {
            return Err(Status::permission_denied(format!(
                "node {} was removed from this cluster",
                r.node_id
            )));
        }
        let role = self.cluster.admit(r).await?;
        Ok(Response::new(AdmitResponse { role }))
    }

    async fn raft(&self, req: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        self.member(&req)?;
        let r = req.into_inner();
        let kind = match RaftKind::try_from(r.kind) {
            Ok(RaftKind::AppendEntries) => RpcKind::AppendEntries,
            Ok(RaftKind::Vote) => RpcKind::Vote,
            Ok(RaftKind::InstallSnapshot) => RpcKind::InstallSnapshot,
            Err(_) => return Err(Status::invalid_argument("unknown raft message kind")),
        };
        // Run to the end even when the caller gives up: openraft gives an
        // AppendEntries one heartbeat and then drops it, and a follower whose
        // append (and fsync) was cut off every time would never catch up.
        // Finished, the entries are in its log and the retry is quick.
        let replica = self.cluster.replica().clone();
        let handled = tokio::spawn(async move { replica.handle_rpc(kind, &r.body).await });
        let body = handled
            .await
            .map_err(|e| Status::internal(format!("the raft message handler failed: {e}")))?
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(RaftResponse { body }))
    }

    async fn elect_now(
        &self,
        req: Request<ElectNowRequest>,
    ) -> Result<Response<ElectNowResponse>, Status> {
        let from = self.member(&req)?;
        let term = req.into_inner().term;
        self.cluster
            .replica()
            .elect_now(from, term)
            .await
            .map_err(|e| match e {
                micro_raft::Error::Refused(m) => Status::failed_precondition(m),
                e => Status::unavailable(e.to_string()),
            })?;
        tracing::info!(
            from,
            term,
            "the leader is handing over: campaigning at once"
        );
        Ok(Response::new(ElectNowResponse {}))
    }

    async fn propose(
        &self,
        req: Request<ProposeRequest>,
    ) -> Result<Response<ProposeResponse>, Status> {
        self.member(&req)?;
        // The same request id as the follower's attempt, so a retry of this
        // forward is applied once.
        let txn: Txn = micro_raft::txn::decode_txn(&req.into_inner().txn)
            .map_err(|e| Status::internal(format!("cannot decode: {e}")))?;
        let result = self
            .cluster
            .replica()
            .propose_here(txn)
            .await
            .map_err(status_for_peer)?;
        Ok(Response::new(ProposeResponse {
            result: encode(&result)?,
        }))
    }

    async fn read_index(
        &self,
        req: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexResponse>, Status> {
        self.member(&req)?;
        let index = self
            .cluster
            .replica()
            .read_index()
            .await
            .map_err(status_for_peer)?;
        Ok(Response::new(ReadIndexResponse { index }))
    }

    async fn status(&self, req: Request<StatusRequest>) -> Result<Response<NodeStatus>, Status> {
        self.member(&req)?;
        Ok(Response::new(self.cluster.local_status()))
    }

    async fn broker_deliver(
        &self,
        req: Request<BrokerDeliverRequest>,
    ) -> Result<Response<BrokerDeliverResponse>, Status> {
        let from = self.member(&req)?;
        self.broker()?.deliver(from, req.into_inner())?;
        Ok(Response::new(BrokerDeliverResponse {}))
    }

    async fn broker_interest(
        &self,
        req: Request<BrokerInterestRequest>,
    ) -> Result<Response<BrokerInterestResponse>, Status> {
        let from = self.member(&req)?;
        self.broker()?.interest(from, req.into_inner());
        Ok(Response::new(BrokerInterestResponse {}))
    }
}

/// The path of the one call served without a client certificate.
const JOIN_PATH: &str = "/cluster.Peer/Join";

/// The routes for connections without a client certificate: `Join`, and
/// for everything else the answer that a certificate is needed.
pub fn join_routes(cluster: Arc<Cluster>) -> axum::Router {
    let peer = PeerServer::new(PeerService {
        cluster,
        broker: None,
    })
    .max_decoding_message_size(MAX_JOIN_MESSAGE)
    .max_encoding_message_size(MAX_PEER_MESSAGE);
    tonic::service::Routes::new(peer)
        .into_axum_router()
        .layer(axum::middleware::from_fn(
            |req: axum::extract::Request, next: axum::middleware::Next| async move {
                if req.uri().path() != JOIN_PATH {
                    return Status::unauthenticated(
                        "a cluster certificate is required on the cluster port",
                    )
                    .into_http();
                }
                next.run(req).await
            },
        ))
}

/// The largest Join request taken (a token and a CSR are a few KiB).
const MAX_JOIN_MESSAGE: usize = 64 * 1024;

/// The cluster port's routes: the Peer service, and for any other path
/// (from a member only) the local instance named by [`INSTANCE_HEADER`](crate::target::INSTANCE_HEADER) or
/// else the node's own gRPC stack `local`. `broker` takes the broker's
/// fan-out from other nodes.
pub fn routes(
    cluster: Arc<Cluster>,
    local: axum::Router,
    router: Arc<Router>,
    broker: Arc<Broker>,
) -> axum::Router {
    let peer = PeerServer::new(PeerService {
        cluster: cluster.clone(),
        broker: Some(broker),
    })
    .max_decoding_message_size(MAX_PEER_MESSAGE)
    .max_encoding_message_size(MAX_PEER_MESSAGE);
    let fallback = move |mut req: http::Request<Body>| {
        let (cluster, local, router) = (cluster.clone(), local.clone(), router.clone());
        async move {
            let node = req.extensions().get::<PeerInfo>().and_then(|p| p.node_id);
            if let Err(status) = cluster.check_peer(node) {
                return status.into_http();
            }
            if let Some(addr) = req.headers_mut().remove(INSTANCE_HEADER) {
                let Ok(addr) = addr.to_str().map(str::to_string) else {
                    return Status::invalid_argument("bad instance address").into_http();
                };
                // Only to an instance registered on this node, whatever the
                // caller names.
                if let Err(status) =
                    router.check_local_instance(req.headers(), req.uri().path(), &addr)
                {
                    tracing::warn!(?node, %addr, "refused a proxied call to an unregistered address");
                    return status.into_http();
                }
                return router.forward_local(&addr, req).await;
            }
            // Whatever this node does with it, it does here.
            req.headers_mut()
                .insert(HOP_HEADER, http::HeaderValue::from_static("1"));
            match local.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    };
    tonic::service::Routes::new(peer)
        .into_axum_router()
        .fallback(fallback)
}
