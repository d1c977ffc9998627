//! Every key the cluster keeps in the replicated state, built in one place:
//!
//! * `cluster/nodes/<id>`   the addresses a node serves on (JSON [`crate::cluster::state::NodeInfo`])
//! * `cluster/removed/<id>` a removed node's tombstone: its certificate is
//!   refused and its id never joins again
//! * `cluster/certs/<id>`   the SHA-256 of the one certificate issued to a
//!   node: no other certificate is taken for that id, and Join refuses an id
//!   that has one
//! * `cluster/tokens/<id>`  a join token: the SHA-256 of its secret,
//!   expiring with the token
//! * `cluster/ca`           the fingerprint of the CA whose cluster this
//!   Raft state belongs to
//!
//! Must never: be bypassed by formatting one of these keys elsewhere.

use micro_raft::NodeId;

pub const NODES: &str = "cluster/nodes/";
pub const REMOVED: &str = "cluster/removed/";
pub const CERTS: &str = "cluster/certs/";
pub const TOKENS: &str = "cluster/tokens/";
pub const CA: &str = "cluster/ca";

pub fn node(id: NodeId) -> Vec<u8> {
    format!("{NODES}{id}").into_bytes()
}

pub fn removed(id: NodeId) -> Vec<u8> {
    format!("{REMOVED}{id}").into_bytes()
}

pub fn cert(id: NodeId) -> Vec<u8> {
    format!("{CERTS}{id}").into_bytes()
}

pub fn token(id: &str) -> Vec<u8> {
    format!("{TOKENS}{id}").into_bytes()
}

/// The node id at the end of `key` under `prefix`, if it is one.
pub fn id_under(prefix: &str, key: &[u8]) -> Option<NodeId> {
    std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_keys() {
        assert_eq!(id_under(REMOVED, &removed(42)), Some(42));
        assert_eq!(id_under(CERTS, &cert(u64::MAX)), Some(u64::MAX));
        assert_eq!(id_under(CERTS, &removed(1)), None);
        assert_eq!(id_under(CERTS, b"cluster/certs/x"), None);
        assert_eq!(token("abc"), b"cluster/tokens/abc");
    }
}
