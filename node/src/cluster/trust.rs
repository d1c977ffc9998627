//! Which node certificates the cluster still takes: the ids of removed
//! nodes (`cluster/removed/<id>`) and, for every node, the fingerprint of
//! the one certificate issued to it (`cluster/certs/<id>`). The TLS
//! verifiers of the cluster port consult it on every handshake, and
//! `Cluster::check_peer` on every call, so it is a snapshot in memory
//! (read under a short lock, never across an await), replaced whole from
//! the replica's change stream.
//!
//! Every node holds the CA key (any node can admit a joiner), so a removed
//! node could sign itself a certificate for another id: the pinned
//! fingerprints are what refuse that, and the revoked ids what refuse its
//! own certificate.
//!
//! Must never: let a certificate of a removed node through, or let a
//! certificate for an id pass when another certificate is pinned for it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use micro_raft::{now_millis, Change, NodeId, Reader, Replica};
use rustls::CertificateError;

use super::pki::fingerprint_der;
use crate::keys::cluster as keys;

/// What the cluster trusts, at one point of the replicated state.
#[derive(Debug, Default, Clone)]
pub struct TrustSet {
    /// Removed nodes: their certificates are refused.
    pub revoked: HashSet<NodeId>,
    /// The fingerprint (SHA-256 of the DER, hex) of each node's certificate.
    pub pinned: HashMap<NodeId, String>,
}

impl TrustSet {
    /// Reads the set from the replicated state.
    pub fn load(reader: &Reader) -> TrustSet {
        let now = now_millis();
        let mut set = TrustSet::default();
        for (key, _) in reader.scan(keys::REMOVED.as_bytes(), now, false).flatten() {
            if let Some(id) = keys::id_under(keys::REMOVED, &key) {
                set.revoked.insert(id);
            }
        }
        for (key, rec) in reader.scan(keys::CERTS.as_bytes(), now, false).flatten() {
            if let (Some(id), Ok(fp)) = (
                keys::id_under(keys::CERTS, &key),
                String::from_utf8(rec.value),
            ) {
                set.pinned.insert(id, fp);
            }
        }
        set
    }
}

/// The live trust set, shared by the verifiers and the peer service.
#[derive(Debug, Default)]
pub struct Trust {
    set: RwLock<Arc<TrustSet>>,
}

impl Trust {
    /// An empty set (a node whose replica holds nothing yet takes any
    /// certificate of the cluster CA).
    pub fn new() -> Arc<Trust> {
        Arc::new(Trust::default())
    }

    fn current(&self) -> Arc<TrustSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the set.
    pub fn set(&self, set: TrustSet) {
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_revoked(&self, id: NodeId) -> bool {
        self.current().revoked.contains(&id)
    }

    /// Whether the certificate `der`, which names node `id` and verified
    /// under the cluster CA, may be used as `id`: not revoked, and the one
    /// pinned for it (when one is).
    pub fn check(&self, id: NodeId, der: &[u8]) -> Result<(), CertificateError> {
        let set = self.current();
        if set.revoked.contains(&id) {
            return Err(CertificateError::Revoked);
        }
        match set.pinned.get(&id) {
            Some(fp) if *fp != fingerprint_der(der) => {
                Err(CertificateError::ApplicationVerificationFailure)
            }
            _ => Ok(()),
        }
    }

    /// Reloads the set from `replica`, then keeps it current: every applied
    /// change to the removed or pinned keys (or a snapshot) reloads it.
    pub fn spawn_watch(self: &Arc<Self>, replica: &Replica) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        let mut changes = replica.subscribe();
        let reader = replica.reader().clone();
        me.set(TrustSet::load(&reader));
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let ours = |key: &[u8]| {
                key.starts_with(keys::REMOVED.as_bytes()) || key.starts_with(keys::CERTS.as_bytes())
            };
            loop {
                let reload = match changes.recv().await {
                    Ok(batch) => batch.iter().any(|c| match c {
                        Change::Put { key, .. } | Change::Delete { key } => ours(key),
                        Change::Reset => true,
                    }),
                    Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => return,
                };
                if reload {
                    me.set(TrustSet::load(&reader));
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_and_foreign_certificates_are_refused() {
        let trust = Trust::new();
        // Nothing known: anything the CA signed passes.
        assert!(trust.check(1, b"cert-1").is_ok());
        trust.set(TrustSet {
            revoked: HashSet::from([2]),
            pinned: HashMap::from([(1, fingerprint_der(b"cert-1"))]),
        });
        assert!(trust.check(1, b"cert-1").is_ok());
        assert_eq!(
            trust.check(1, b"another cert for 1"),
            Err(CertificateError::ApplicationVerificationFailure)
        );
        assert_eq!(trust.check(2, b"cert-2"), Err(CertificateError::Revoked));
        assert!(trust.is_revoked(2));
        assert!(!trust.is_revoked(1));
    }
}
