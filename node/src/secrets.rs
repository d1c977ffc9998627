//! The key that encrypts config secrets at rest, and the AEAD that uses it
//! (XChaCha20-Poly1305, a fresh random nonce per value).
//!
//! The key is `MICRO_CONFIG_SECRET_KEY` / `--config-secret-key` when given
//! (any string; its SHA-256 is the key), else 32 random bytes generated at
//! first start and kept in `<data-dir>/config-secret.key`, mode 0600.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const KEY_FILE: &str = "config-secret.key";
const AAD: &[u8] = b"micro config secret v1";

/// Writes a file readable by its owner only (0600), durably and
/// atomically: a temporary file beside it, fsynced, renamed over `path`,
/// and the directory fsynced, so after a crash or a power cut `path` holds
/// either the old content or the new, whole. Every key, certificate, secret
/// and id the node keeps on disk is written this way (one helper, so none
/// forgets a step). Blocking: a few milliseconds for the two fsyncs.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Creates `dir` and any missing parents, new ones 0700, and makes each
/// new entry durable (fsync of the directory that holds it): a file
/// written durably into a directory whose own entry was lost would be lost
/// with it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for d in missing.iter().rev() {
        if let Some(parent) = d.parent() {
            sync_dir(if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            })?;
        }
    }
    Ok(())
}

/// fsyncs a directory, making the names created or renamed in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Seals and opens secret values.
pub struct SecretBox {
    cipher: XChaCha20Poly1305,
    key: [u8; 32],
}

/// A sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot decrypt a secret: it was sealed with another key or is corrupt")]
pub struct OpenError;

impl SecretBox {
    /// A box keyed by the SHA-256 of `key`.
    pub fn from_passphrase(key: &str) -> SecretBox {
        let digest = Sha256::digest(key.as_bytes());
        SecretBox {
            cipher: XChaCha20Poly1305::new(&digest),
            key: digest.into(),
        }
    }

    /// The configured key, or the one kept in `data_dir` (made on first use).
    pub fn load(data_dir: &Path, configured: Option<&str>) -> std::io::Result<SecretBox> {
        if let Some(k) = configured.filter(|k| !k.is_empty()) {
            return Ok(SecretBox::from_passphrase(k));
        }
        let path = data_dir.join(KEY_FILE);
        let key = match std::fs::read_to_string(&path) {
            Ok(text) => B64
                .decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| {
                    std::io::Error::other(format!(
                        "{} does not hold a 32-byte base64 key",
                        path.display()
                    ))
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                write_private(&path, B64.encode(&key).as_bytes())?;
                key
            }
            Err(e) => return Err(e),
        };
        Ok(SecretBox {
            cipher: XChaCha20Poly1305::new_from_slice(&key).map_err(std::io::Error::other)?,
            key: key.as_slice().try_into().map_err(std::io::Error::other)?,
        })
    }

    /// The key in use: every node of a cluster seals with the same.
    pub fn key(&self) -> [u8; 32] {
        self.key
    }

    /// Replaces the key kept in `data_dir` (a node joining a cluster takes
    /// the cluster's key).
    pub fn install(data_dir: &Path, key: &[u8]) -> std::io::Result<()> {
        if key.len() != 32 {
            return Err(std::io::Error::other(
                "the config secret key is not 32 bytes",
            ));
        }
        write_private(&data_dir.join(KEY_FILE), B64.encode(key).as_bytes())
    }

    /// Encrypts `plain`; the result is base64 of nonce then ciphertext.
    pub fn seal(&self, plain: &[u8]) -> String {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: AAD,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(24 + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        B64.encode(out)
    }

    /// Decrypts what [`SecretBox::seal`] produced.
    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, OpenError> {
        let raw = B64.decode(sealed).map_err(|_| OpenError)?;
        if raw.len() < 24 {
            return Err(OpenError);
        }
        let (nonce, ct) = raw.split_at(24);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: AAD })
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_key_is_kept_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = SecretBox::load(dir.path(), None).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = a.seal(b"s3cret");
        assert!(!sealed.contains("s3cret"));
        let b = SecretBox::load(dir.path(), None).unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"s3cret");
    }

    #[test]
    fn private_files_are_replaced_whole_and_leave_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        write_private(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        // Replacing an existing file: the same name, the new bytes, 0600
        // even if the old one was wider.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"second, longer").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second, longer");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A temp file left by a crash is replaced, and none remains after.
        std::fs::write(dir.path().join(".node.key.tmp"), b"stale").unwrap();
        write_private(&path, b"third").unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["node.key".to_string()]);
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.key");
        write_private(&path, b"old").unwrap();
        // The rename fails: the target became a non-empty directory.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("x"), b"").unwrap();
        assert!(write_private(&blocked, b"new").is_err());
        assert!(!dir.path().join(".blocked.tmp").exists());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn private_dirs_are_created_0700_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        create_private_dir(&deep).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}");
        }
        create_private_dir(&deep).unwrap();
    }

    #[test]
    fn another_key_cannot_open() {
        let a = SecretBox::from_passphrase("one");
        let b = SecretBox::from_passphrase("two");
        let sealed = a.seal(b"x");
        assert!(b.open(&sealed).is_err());
        assert!(a.open("not base64!").is_err());
        assert_ne!(a.seal(b"x"), a.seal(b"x"), "each seal uses a fresh nonce");
    }
}
