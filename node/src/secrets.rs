//! The key that encrypts config secrets at rest, and the AEAD that uses it
//! (XChaCha20-Poly1305, a fresh random nonce per value).
//!
//! The key is `MICRO_CONFIG_SECRET_KEY` / `--config-secret-key` when given
//! (any string; its SHA-256 is the key), else 32 random bytes generated at
//! first start and kept in `<data-dir>/config-secret.key`, mode 0600.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::data_dir::{DataDir, File, FileError};

const AAD: &[u8] = b"micro config secret v1";

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

    /// The configured key, or the one kept in the data dir (made on first
    /// use).
    pub fn load(data: &DataDir, configured: Option<&str>) -> Result<SecretBox, FileError> {
        if let Some(k) = configured.filter(|k| !k.is_empty()) {
            return Ok(SecretBox::from_passphrase(k));
        }
        let key = data.key_or_new(File::ConfigSecretKey)?;
        Ok(SecretBox {
            cipher: XChaCha20Poly1305::new(&key.into()),
            key,
        })
    }

    /// The key in use: every node of a cluster seals with the same.
    pub fn key(&self) -> [u8; 32] {
        self.key
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::open(tmp.path()).unwrap();
        let a = SecretBox::load(&dir, None).unwrap();
        let mode = std::fs::metadata(dir.path(File::ConfigSecretKey))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = a.seal(b"s3cret");
        assert!(!sealed.contains("s3cret"));
        let b = SecretBox::load(&dir, None).unwrap();
        assert_eq!(b.open(&sealed).unwrap(), b"s3cret");
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
