//! What a node keeps to be part of a cluster, in `<data-dir>/cluster/`:
//!
//! * `ca.crt`, `ca.key`     the cluster CA (every node holds it, so any
//!   node can admit a joiner while the others are down)
//! * `node.crt`, `node.key` this node's certificate, naming its node id
//! * `secrets.json`         the gossip key
//! * `joined`               present on nodes that joined (not founded) it
//!
//! Keys and secrets are written 0600, atomically (temporary file, fsync,
//! rename). The first node makes all of it ([`Material::bootstrap`]); a
//! joiner gets it from a member over TLS pinned by the join token
//! ([`Material::join`]), together with the cluster's token-signing and
//! config-secret keys.
//!
//! A data dir that holds this material must also hold the node's Raft
//! state ([`Material::check_raft_state`]): without it a founder would start
//! a new one-voter group beside the cluster (split brain).
//!
//! Must never: write a key with a wider mode than 0600, accept a joining
//! reply from a server whose CA does not match the token, or let a node
//! start on material whose Raft state is gone.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use micro_proto::cluster::peer_client::PeerClient;
use micro_proto::cluster::{JoinRequest, Secrets};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::pki::{self, Ca, JoinToken};
use super::tls::{self, Identity};
use crate::secrets::write_private;

/// The cluster material of this node.
pub struct Material {
    pub ca: Ca,
    pub identity: Identity,
    pub gossip_key: [u8; 32],
    /// Whether this node joined (rather than founded) the cluster: only a
    /// founder ever makes a new Raft group.
    pub joined: bool,
}

/// `secrets.json`. (Files written before join tokens expired also hold a
/// `join_secret`, which is ignored: it no longer admits anyone.)
#[derive(Serialize, Deserialize)]
struct SecretsFile {
    gossip_key: String,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

impl Material {
    /// Where the material lives.
    pub fn dir(data_dir: &Path) -> PathBuf {
        data_dir.join("cluster")
    }

    /// Whether this data dir already belongs to a cluster.
    pub fn exists(data_dir: &Path) -> bool {
        Self::dir(data_dir).join("node.crt").exists()
    }

    /// Refuses a data dir that holds cluster material (`cluster/`) but no
    /// Raft state (`raft/` missing or empty): the node's log, vote and
    /// membership are gone, and starting would make a new cluster.
    pub fn check_raft_state(data_dir: &Path) -> Result<(), String> {
        let has_material = std::fs::read_dir(Self::dir(data_dir))
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let raft = data_dir.join("raft");
        let has_raft = std::fs::read_dir(&raft)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if has_material && !has_raft {
            return Err(format!(
                "{} holds this node's cluster material but its Raft state ({}) is missing or empty, so starting would found a second cluster: restore raft/ from a backup, or move the data directory aside and join the cluster again with a fresh --data-dir and a new token (then `micro cluster remove` the old node id)",
                data_dir.display(),
                raft.display()
            ));
        }
        Ok(())
    }

    /// Reads the material written earlier.
    pub fn load(data_dir: &Path) -> Result<Material, String> {
        let dir = Self::dir(data_dir);
        let ca = Ca::from_pem(&read(&dir.join("ca.crt"))?, &read(&dir.join("ca.key"))?)
            .map_err(|e| format!("the cluster CA in {} is unusable: {e}", dir.display()))?;
        let identity = Identity {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: read(&dir.join("node.crt"))?,
            key_pem: read(&dir.join("node.key"))?,
        };
        let secrets: SecretsFile = serde_json::from_str(&read(&dir.join("secrets.json"))?)
            .map_err(|e| format!("{} is corrupt: {e}", dir.join("secrets.json").display()))?;
        let gossip_key = B64
            .decode(&secrets.gossip_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| format!("{} holds no 32-byte gossip key", dir.display()))?;
        Ok(Material {
            ca,
            identity,
            gossip_key,
            joined: dir.join("joined").exists(),
        })
    }

    fn save(&self, data_dir: &Path) -> Result<(), String> {
        let dir = Self::dir(data_dir);
        crate::secrets::create_private_dir(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let secrets = serde_json::to_vec(&SecretsFile {
            gossip_key: B64.encode(self.gossip_key),
        })
        .map_err(|e| e.to_string())?;
        if self.joined {
            write_private(&dir.join("joined"), b"")
                .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;
        }
        let files: [(&str, &[u8]); 5] = [
            ("ca.crt", self.ca.cert_pem().as_bytes()),
            ("ca.key", self.ca.key_pem().as_bytes()),
            ("node.key", self.identity.key_pem.as_bytes()),
            ("secrets.json", &secrets),
            // Last: its presence means the rest is complete.
            ("node.crt", self.identity.cert_pem.as_bytes()),
        ];
        for (name, bytes) in files {
            let path = dir.join(name);
            write_private(&path, bytes)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }

    /// Makes a new cluster's material: a CA, this node's certificate and a
    /// gossip key.
    pub fn bootstrap(data_dir: &Path, node_id: u64) -> Result<Material, String> {
        let ca = Ca::generate().map_err(|e| format!("cannot make the cluster CA: {e}"))?;
        let (key_pem, csr_pem) = pki::new_csr(node_id).map_err(|e| e.to_string())?;
        let cert_pem = ca.sign_csr(&csr_pem, node_id).map_err(|e| e.to_string())?;
        let mut gossip_key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut gossip_key);
        let m = Material {
            identity: Identity {
                ca_pem: ca.cert_pem().to_string(),
                cert_pem,
                key_pem,
            },
            ca,
            gossip_key,
            joined: false,
        };
        m.save(data_dir)?;
        Ok(m)
    }

    /// Joins the cluster a member at `addr` belongs to: pins its CA by the
    /// token, sends a CSR with the token, and keeps the certificate
    /// and shared secrets it gets back (the token-signing and config-secret
    /// keys go where the node loads them from).
    pub async fn join(
        data_dir: &Path,
        node_id: u64,
        addr: &str,
        token: &str,
    ) -> Result<Material, String> {
        let token = JoinToken::parse(token.trim()).map_err(|e| e.to_string())?;
        let cfg = tls::join_client_config(&token.ca_fingerprint).map_err(|e| e.to_string())?;
        let channel = tls::channel(addr, cfg).map_err(|e| e.to_string())?;
        let (key_pem, csr_pem) = pki::new_csr(node_id).map_err(|e| e.to_string())?;
        let reply = PeerClient::new(channel)
            .join(JoinRequest {
                token: token.to_string(),
                node_id,
                csr_pem,
            })
            .await
            .map_err(|s| match s.code() {
                _ if super::transport::describe(&s).contains("invalid peer certificate") => format!(
                    "cannot join through {addr}: its certificate is not from the CA the token names (is the token from that cluster?)"
                ),
                tonic::Code::Unavailable | tonic::Code::Unknown => format!(
                    "cannot join through {addr}: {} (is a node listening there, and is the token from that cluster?)",
                    super::transport::describe(&s)
                ),
                _ => format!("cannot join through {addr}: {}", s.message()),
            })?
            .into_inner();
        let s: Secrets = reply.secrets.ok_or("the member sent no cluster secrets")?;
        let ca = Ca::from_pem(&s.ca_cert_pem, &s.ca_key_pem).map_err(|e| e.to_string())?;
        if ca.fingerprint() != token.ca_fingerprint {
            return Err("the member sent a CA that does not match the token".into());
        }
        let gossip_key = s
            .gossip_key
            .as_slice()
            .try_into()
            .map_err(|_| "the member sent a malformed gossip key".to_string())?;
        crate::auth::Keys::install(data_dir, &s.auth_signing_key)
            .map_err(|e| format!("cannot keep the cluster's signing key: {e}"))?;
        crate::secrets::SecretBox::install(data_dir, &s.config_secret_key)
            .map_err(|e| format!("cannot keep the cluster's config secret key: {e}"))?;
        let m = Material {
            identity: Identity {
                ca_pem: ca.cert_pem().to_string(),
                cert_pem: reply.cert_pem,
                key_pem,
            },
            ca,
            gossip_key,
            joined: true,
        };
        m.save(data_dir)?;
        Ok(m)
    }
}
