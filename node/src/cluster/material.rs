//! What a node keeps to be part of a cluster, in `<data-dir>/cluster/`
//! (the files are named in [`crate::data_dir`]): the cluster CA (every
//! node holds it, so any node can admit a joiner while the others are
//! down), this node's certificate naming its node id, the gossip key, and
//! whether this node joined (rather than founded) the cluster.
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

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use micro_proto::cluster::peer_client::PeerClient;
use micro_proto::cluster::{JoinRequest, Secrets};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::pki::{self, Ca, JoinToken};
use super::tls::{self, Identity};
use crate::data_dir::{DataDir, File, FileError};

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

fn read(data: &DataDir, file: File) -> Result<String, String> {
    data.read_existing(file)
        .map_err(|e| format!("cannot read {}: {}", e.path.display(), e.source))
}

fn written(e: FileError) -> String {
    format!("cannot write {}: {}", e.path.display(), e.source)
}

impl Material {
    /// Whether this data dir already belongs to a cluster.
    pub fn exists(data: &DataDir) -> bool {
        data.exists(File::NodeCert)
    }

    /// Refuses a data dir that holds cluster material (`cluster/`) but no
    /// Raft state (`raft/` missing or empty): the node's log, vote and
    /// membership are gone, and starting would make a new cluster.
    pub fn check_raft_state(data: &DataDir) -> Result<(), String> {
        let has_material = std::fs::read_dir(data.cluster())
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        let raft = data.raft();
        let has_raft = std::fs::read_dir(&raft)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if has_material && !has_raft {
            return Err(format!(
                "{} holds this node's cluster material but its Raft state ({}) is missing or empty, so starting would found a second cluster: restore raft/ from a backup, or move the data directory aside and join the cluster again with a fresh --data-dir and a new token (then `micro cluster remove` the old node id)",
                data.root().display(),
                raft.display()
            ));
        }
        Ok(())
    }

    /// Reads the material written earlier.
    pub fn load(data: &DataDir) -> Result<Material, String> {
        let ca =
            Ca::from_pem(&read(data, File::CaCert)?, &read(data, File::CaKey)?).map_err(|e| {
                format!(
                    "the cluster CA in {} is unusable: {e}",
                    data.cluster().display()
                )
            })?;
        let identity = Identity {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: read(data, File::NodeCert)?,
            key_pem: read(data, File::NodeKey)?,
        };
        let secrets_path = data.path(File::ClusterSecrets);
        let secrets: SecretsFile = serde_json::from_str(&read(data, File::ClusterSecrets)?)
            .map_err(|e| format!("{} is corrupt: {e}", secrets_path.display()))?;
        let gossip_key = B64
            .decode(&secrets.gossip_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| format!("{} holds no 32-byte gossip key", secrets_path.display()))?;
        Ok(Material {
            ca,
            identity,
            gossip_key,
            joined: data.exists(File::Joined),
        })
    }

    fn save(&self, data: &DataDir) -> Result<(), String> {
        let secrets = serde_json::to_vec(&SecretsFile {
            gossip_key: B64.encode(self.gossip_key),
        })
        .map_err(|e| e.to_string())?;
        if self.joined {
            data.write(File::Joined, b"").map_err(written)?;
        }
        let files: [(File, &[u8]); 5] = [
            (File::CaCert, self.ca.cert_pem().as_bytes()),
            (File::CaKey, self.ca.key_pem().as_bytes()),
            (File::NodeKey, self.identity.key_pem.as_bytes()),
            (File::ClusterSecrets, &secrets),
            // Last: its presence means the rest is complete.
            (File::NodeCert, self.identity.cert_pem.as_bytes()),
        ];
        for (file, bytes) in files {
            data.write(file, bytes).map_err(written)?;
        }
        Ok(())
    }

    /// Makes a new cluster's material: a CA, this node's certificate and a
    /// gossip key.
    pub fn bootstrap(data: &DataDir, node_id: u64) -> Result<Material, String> {
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
        m.save(data)?;
        Ok(m)
    }

    /// Joins the cluster a member at `addr` belongs to: pins its CA by the
    /// token, sends a CSR with the token, and keeps the certificate
    /// and shared secrets it gets back (the token-signing and config-secret
    /// keys go where the node loads them from).
    pub async fn join(
        data: &DataDir,
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
        data.set_key(File::AuthSigningKey, &s.auth_signing_key)
            .map_err(|e| format!("cannot keep the cluster's signing key: {e}"))?;
        data.set_key(File::ConfigSecretKey, &s.config_secret_key)
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
        m.save(data)?;
        Ok(m)
    }
}
