//! Sealing and opening of datagrams.
//!
//! A datagram on the wire is `nonce (24 bytes) || ciphertext+tag`, where the
//! ciphertext is the foca payload encrypted with XChaCha20-Poly1305 under the
//! cluster key. The nonce is random per datagram (192 bits is plenty to make
//! collisions a non-issue) and a fixed associated-data label binds the
//! ciphertext to this protocol version.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand::RngCore;

/// Length of the random nonce that starts every datagram.
pub(crate) const NONCE_LEN: usize = 24;
/// Length of the Poly1305 authentication tag.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes a sealed datagram carries on top of its plaintext.
pub(crate) const OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// Associated data mixed into every seal; bump the suffix on any wire change.
const AAD: &[u8] = b"micro-gossip-v1";

/// Holds the cluster cipher. Cheap to use from a single task.
pub(crate) struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// Encrypts `plain` into a self-contained datagram.
    ///
    /// Returns `None` only if the AEAD refuses the input, which does not
    /// happen for the sizes foca produces.
    pub(crate) fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::thread_rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: AAD,
                },
            )
            .ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// Authenticates and decrypts a datagram.
    ///
    /// Returns `None` for anything that is too short to hold a nonce, a tag
    /// and at least one byte of payload, or that fails authentication.
    pub(crate) fn open(&self, datagram: &[u8]) -> Option<Vec<u8>> {
        if datagram.len() <= OVERHEAD {
            return None;
        }
        let (nonce, sealed) = datagram.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: AAD,
                },
            )
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let sealer = Sealer::new(&[7u8; 32]);
        let sealed = sealer.seal(b"hello").expect("seal");
        assert_eq!(sealed.len(), 5 + OVERHEAD);
        assert_eq!(sealer.open(&sealed).as_deref(), Some(&b"hello"[..]));

        // Flipping any single byte (nonce, ciphertext or tag) must fail.
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(sealer.open(&bad).is_none(), "byte {i} tamper accepted");
        }

        // Another key never opens it.
        assert!(Sealer::new(&[8u8; 32]).open(&sealed).is_none());

        // Short inputs are refused without panicking.
        for len in 0..=OVERHEAD {
            assert!(sealer.open(&sealed[..len]).is_none());
        }
        assert!(sealer.open(&[]).is_none());
    }

    #[test]
    fn nonces_differ() {
        let sealer = Sealer::new(&[1u8; 32]);
        let a = sealer.seal(b"x").unwrap();
        let b = sealer.seal(b"x").unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
    }
}
