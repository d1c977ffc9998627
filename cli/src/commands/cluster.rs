//! `micro cluster`: issuing (and revoking) join tokens, the members, each
//! node's Raft status, and removing a node.

use micro_proto::cluster::{MembersRequest, RemoveRequest, StatusRequest, TokenRequest};

use super::{columns, out, Context};
use crate::args::{ClusterArgs, ClusterCommand};
use crate::errors::Failure;

pub async fn run(ctx: Context, args: &ClusterArgs) -> Result<(), Failure> {
    let client = ctx.connect().await?;
    let mut cluster = client.cluster();
    match &args.command {
        ClusterCommand::Token { ttl, revoke_all } => {
            let token = cluster
                .token(TokenRequest {
                    ttl_seconds: ttl.as_secs().max(1),
                    revoke_all: *revoke_all,
                })
                .await?
                .into_inner()
                .token;
            out(format!("{token}\n").as_bytes())
        }
        ClusterCommand::Members => {
            let members = cluster
                .members(MembersRequest {})
                .await?
                .into_inner()
                .members;
            let mut rows = vec![vec![
                "ID".to_string(),
                "ADDRESS".into(),
                "API".into(),
                "GRPC".into(),
                "GOSSIP".into(),
                "ROLE".into(),
            ]];
            for m in members {
                rows.push(vec![
                    m.id.to_string(),
                    m.address,
                    m.api_address,
                    m.grpc_address,
                    m.gossip,
                    m.role,
                ]);
            }
            out(columns(&rows).as_bytes())
        }
        ClusterCommand::Status => {
            let nodes = cluster.status(StatusRequest {}).await?.into_inner().nodes;
            let mut rows = vec![vec![
                "ID".to_string(),
                "ADDRESS".into(),
                "STATE".into(),
                "TERM".into(),
                "LEADER".into(),
                "LAST LOG".into(),
                "COMMIT".into(),
                "APPLIED".into(),
                "SNAPSHOT".into(),
            ]];
            let dash = |v: u64| {
                if v == 0 {
                    "-".to_string()
                } else {
                    v.to_string()
                }
            };
            let mut errors = String::new();
            for n in nodes {
                if !n.error.is_empty() {
                    errors.push_str(&format!("node {}: {}\n", n.id, n.error));
                }
                rows.push(vec![
                    n.id.to_string(),
                    n.address,
                    n.state,
                    dash(n.term),
                    dash(n.leader),
                    dash(n.last_log_index),
                    dash(n.commit_index),
                    dash(n.applied_index),
                    dash(n.snapshot_index),
                ]);
            }
            let mut text = columns(&rows);
            text.push_str(&errors);
            out(text.as_bytes())
        }
        ClusterCommand::Remove { node } => {
            cluster.remove(RemoveRequest { id: *node }).await?;
            out(format!("Node {node} removed\n").as_bytes())
        }
    }
}
