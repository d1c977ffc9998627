//! Micro as a cluster of symmetric nodes: the CA and certificates
//! ([`pki`]), mutual TLS ([`tls`]), what a node keeps on disk to belong to
//! a cluster ([`material`]), node-to-node calls ([`transport`] as client,
//! [`peer`] as server on the cluster port), membership and status
//! ([`state`]) and the admin API behind `micro cluster` ([`admin`]).
//!
//! Must never: let a node without the cluster's certificate or join token
//! read, write or join; or hold a lock across a network call.

pub mod admin;
pub mod material;
pub mod peer;
pub mod pki;
pub mod state;
pub mod tls;
pub mod transport;

pub use state::Cluster;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes a file readable by its owner only (0600), atomically: a
/// temporary file, fsynced, renamed over `path`, and the directory fsynced.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
