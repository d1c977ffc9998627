//! Helpers shared by the gRPC services: the caller's namespace, name
//! validation, read barriers and error mapping.

use micro_raft::Replica;
use tonic::{Request, Status};

/// The namespace a request acts in: the `micro-namespace` metadata, or the
/// default namespace.
pub fn namespace<T>(req: &Request<T>) -> Result<String, Status> {
    namespace_of(req.metadata().as_ref())
}

/// The namespace named by HTTP/2 headers (gRPC metadata), or the default.
pub fn namespace_of(headers: &http::HeaderMap) -> Result<String, Status> {
    match headers.get(micro::NAMESPACE_HEADER) {
        None => Ok(micro::DEFAULT_NAMESPACE.to_string()),
        Some(v) => {
            let ns = v
                .to_str()
                .map_err(|_| Status::invalid_argument("namespace is not valid text"))?;
            if ns.is_empty() {
                return Ok(micro::DEFAULT_NAMESPACE.to_string());
            }
            check_name("namespace", ns)?;
            Ok(ns.to_string())
        }
    }
}

/// Names that become path segments of keys (namespaces, databases, tables,
/// services, versions, node ids): the one grammar of [`crate::paths`].
pub fn check_name(what: &str, name: &str) -> Result<(), Status> {
    crate::paths::check_name(what, name)
}

/// Maps a replicated-state error to the status a caller sees.
pub fn status(e: micro_raft::Error) -> Status {
    use micro_raft::Error::*;
    match e {
        NoLeader => Status::unavailable("no leader: the cluster has no quorum, try again"),
        NotLeader { leader_addr, .. } => Status::unavailable(format!(
            "this node is not the leader; the leader is at {leader_addr}"
        )),
        Stopped => Status::unavailable("the node is shutting down"),
        Storage(m) => Status::internal(format!("storage error: {m}")),
        Raft(m) => Status::internal(format!("raft error: {m}")),
        Unreachable(m) => {
            Status::unavailable(format!("the leader cannot be reached ({m}); try again"))
        }
        Unknown(m) => Status::unavailable(m),
        Timeout(m) => Status::deadline_exceeded(m),
        e @ BadMessage(_) => Status::invalid_argument(e.to_string()),
        Refused(m) => Status::failed_precondition(m),
    }
}

/// Makes the reads that follow linearizable, unless the caller asked for a
/// stale read of the local replica.
pub async fn barrier(replica: &Replica, stale: bool) -> Result<(), Status> {
    if stale {
        return Ok(());
    }
    replica.linearize().await.map_err(status)
}
