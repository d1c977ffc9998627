//! The node as the HTTP side sees it: the implementation of
//! [`micro_api::Backend`].

use micro_api::{Backend, NodeSummary, ServiceSummary};
use micro_raft::Replica;

use crate::services::registry;

/// Gives the gateway and dashboard what they need from this node.
pub struct NodeBackend {
    pub replica: Replica,
}

impl Backend for NodeBackend {
    fn version(&self) -> &str {
        crate::VERSION
    }

    fn node(&self) -> NodeSummary {
        let m = self.replica.raft().metrics().borrow().clone();
        NodeSummary {
            id: m.id,
            role: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader,
        }
    }

    async fn services(&self, namespace: &str) -> Result<Vec<ServiceSummary>, String> {
        let list = registry::list(&self.replica, namespace).map_err(|s| s.message().to_string())?;
        Ok(list
            .into_iter()
            .map(|s| ServiceSummary {
                name: s.name,
                version: s.version,
                nodes: s.nodes.len(),
                endpoints: s.endpoints.into_iter().map(|e| e.name).collect(),
            })
            .collect())
    }
}
