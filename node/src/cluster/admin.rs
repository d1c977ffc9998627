//! The `Cluster` admin service on every node's gRPC endpoint, behind
//! `micro cluster token|members|status|remove`. Minting or revoking join
//! tokens and removing a node need a global admin (an admin of the root
//! namespace); members and status an account of the root namespace. A
//! removal is carried out by the leader (a follower passes the call on,
//! with the caller's credentials).

use std::sync::Arc;
use std::time::Duration;

use micro_proto::cluster::cluster_client::ClusterClient;
use micro_proto::cluster::cluster_server::Cluster as ClusterApi;
use micro_proto::cluster::{
    MembersRequest, MembersResponse, RemoveRequest, RemoveResponse, StatusRequest, StatusResponse,
    TokenRequest, TokenResponse,
};
use tonic::{Request, Response, Status};

use super::tokens;
use super::transport::describe;
use super::Cluster;
use crate::auth::{caller, require_account, require_global_admin, ROOT_NAMESPACE};
use crate::target::HOP_HEADER;

/// The admin service.
pub struct ClusterService {
    cluster: Arc<Cluster>,
}

impl ClusterService {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        ClusterService { cluster }
    }
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn token(&self, req: Request<TokenRequest>) -> Result<Response<TokenResponse>, Status> {
        require_global_admin(&caller(&req))?;
        let r = req.into_inner();
        let ttl = match r.ttl_seconds {
            0 => tokens::DEFAULT_TTL,
            secs => Duration::from_secs(secs),
        };
        let cluster = &self.cluster;
        let token = tokens::mint(
            cluster.replica(),
            &cluster.material.ca.fingerprint(),
            ttl,
            r.revoke_all,
        )
        .await?;
        if r.revoke_all {
            tracing::info!("every join token issued before was revoked");
        }
        Ok(Response::new(TokenResponse {
            expires_at: token.expires_at,
            token: token.to_string(),
        }))
    }

    async fn members(
        &self,
        req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        require_account(&caller(&req), ROOT_NAMESPACE)?;
        Ok(Response::new(MembersResponse {
            members: self.cluster.members(),
        }))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        require_account(&caller(&req), ROOT_NAMESPACE)?;
        Ok(Response::new(StatusResponse {
            nodes: self.cluster.status_all().await,
        }))
    }

    async fn remove(
        &self,
        req: Request<RemoveRequest>,
    ) -> Result<Response<RemoveResponse>, Status> {
        require_global_admin(&caller(&req))?;
        let cluster = &self.cluster;
        if cluster.replica().is_leader() {
            cluster.remove(req.get_ref().id).await?;
            return Ok(Response::new(RemoveResponse {}));
        }
        if req.metadata().contains_key(HOP_HEADER) {
            return Err(Status::unavailable("leadership is changing; try again"));
        }
        let (leader, addr) = cluster.leader().ok_or_else(|| {
            Status::unavailable("no leader is elected: the cluster has no quorum")
        })?;
        let channel = cluster.peers.channel_to(leader, &addr)?;
        let (metadata, _, msg) = req.into_parts();
        let forwarded = Request::from_parts(metadata, Default::default(), msg);
        ClusterClient::new(channel)
            .remove(forwarded)
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable => {
                    Status::unavailable(format!("the leader: {}", describe(&s)))
                }
                _ => s,
            })
    }
}
