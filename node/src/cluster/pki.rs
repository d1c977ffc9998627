//! The cluster's public-key infrastructure: its certificate authority, the
//! certificates it issues to nodes, and the join tokens that let a new node
//! find and trust the cluster before it has a certificate of its own.
//!
//! Every node certificate names exactly one node: its common name is
//! `micro-node-<id>` and it carries the DNS names [`CLUSTER_DNS_NAME`] (the
//! name every peer verifies, see `tls::SERVER_NAME`) and
//! `node-<id>.micro-cluster` (the name [`node_id_of`] reads the id from).
//!
//! A join token (`MICRO2.<fingerprint>.<id>.<expiry>.<secret>`) carries the
//! SHA-256 fingerprint of the CA certificate, which a joiner pins, the
//! token's id and expiry (unix seconds), and a random secret whose SHA-256
//! the cluster keeps under the id until the token expires or is revoked.
//!
//! This module must never sign anything a CSR asks for beyond its public key:
//! the issued certificate's names, usages and validity are decided here, and
//! a CSR that names another node (or anything else) is refused. It must never
//! put a private key or a join secret into an error message, a log line or a
//! `Debug` rendering. It does no I/O and reads no process-wide state.

use std::fmt;
use std::time::{Duration, SystemTime};

use rand::distributions::Alphanumeric;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

/// The DNS name every node certificate carries, shared by the whole cluster.
pub const CLUSTER_DNS_NAME: &str = "micro-cluster";

/// The common name of the cluster CA certificate.
const CA_COMMON_NAME: &str = "Micro cluster CA";

/// How long the CA and node certificates are valid: about ten years.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60 + 2 * 24 * 60 * 60);

/// How far into the past a certificate's validity starts, so that a peer
/// whose clock lags a little still accepts a fresh certificate.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// The version prefix of the join token text form.
const TOKEN_PREFIX: &str = "MICRO2";

/// The length of a join token's id.
const TOKEN_ID_LEN: usize = 16;

/// The shortest join secret a token may carry.
const MIN_SECRET_LEN: usize = 32;

/// The longest join secret a token may carry (anything longer is not ours).
const MAX_SECRET_LEN: usize = 256;

/// The length of a fresh join secret.
const NEW_SECRET_LEN: usize = 32;

/// What can go wrong with the cluster's certificates and join tokens.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Generating a key or producing a certificate failed.
    #[error("certificate operation failed: {0}")]
    Crypto(String),
    /// The CA certificate or key could not be used.
    #[error("the cluster CA is invalid: {0}")]
    InvalidCa(String),
    /// The certificate signing request could not be read or is not acceptable.
    #[error("the certificate signing request is invalid: {0}")]
    InvalidCsr(String),
    /// The certificate signing request names a different node than expected.
    #[error("the certificate signing request is for {named}, not for node {expected}")]
    CsrNodeMismatch {
        /// The node the request was to be signed for.
        expected: u64,
        /// What the request names instead.
        named: String,
    },
    /// The join token text could not be parsed.
    #[error(
        "the join token is malformed: expected MICRO2.<fingerprint>.<id>.<expiry>.<secret> ({0})"
    )]
    MalformedToken(&'static str),
}

fn crypto(e: rcgen::Error) -> PkiError {
    PkiError::Crypto(e.to_string())
}

/// The cluster's certificate authority: a self-signed ECDSA P-256 certificate
/// with common name "Micro cluster CA", valid for about ten years.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// Creates a new CA with a fresh key.
    pub fn generate() -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, CA_COMMON_NAME);
        dn.push(DnType::OrganizationName, "Micro");
        params.distinguished_name = dn;
        // The CA signs node certificates only, never other CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(crypto)?;
        // Go through the same path as a CA loaded from disk, so both behave alike.
        Ca::from_pem(&cert.pem(), &key.serialize_pem())
    }

    /// Loads a CA from its certificate and private key (both PEM). Refuses a
    /// certificate that is not a CA or a key that does not belong to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|_| PkiError::InvalidCa("the certificate is not PEM".into()))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|_| PkiError::InvalidCa("the certificate cannot be parsed".into()))?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        if !is_ca {
            return Err(PkiError::InvalidCa(
                "the certificate is not a CA certificate".into(),
            ));
        }
        // Never echo the key's contents or the parser's view of them.
        let key = KeyPair::from_pem(key_pem)
            .map_err(|_| PkiError::InvalidCa("the private key cannot be read".into()))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::InvalidCa(
                "the private key does not belong to the certificate".into(),
            ));
        }
        let issuer =
            Issuer::from_ca_cert_der(&der, key).map_err(|e| PkiError::InvalidCa(e.to_string()))?;
        Ok(Ca {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der: der.to_vec(),
            issuer,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key, PEM (PKCS#8). Secret: store it, never log it.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the CA certificate's DER, lowercase hex (64 chars): what a
    /// join token pins.
    pub fn fingerprint(&self) -> String {
        fingerprint_der(&self.cert_der)
    }

    /// Signs a node's CSR (PEM) and returns the certificate (PEM).
    ///
    /// The CSR's signature must verify and it must name exactly `node_id`
    /// (common name `micro-node-<id>` and/or DNS name
    /// `node-<id>.micro-cluster`; the only other name allowed is
    /// `micro-cluster`). Only its public key is used: the certificate gets
    /// common name `micro-node-<id>`, DNS names `micro-cluster` and
    /// `node-<id>.micro-cluster`, usages for TLS server and client
    /// authentication, and about ten years of validity.
    pub fn sign_csr(&self, csr_pem: &str, node_id: u64) -> Result<String, PkiError> {
        let der =
            CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|_| {
                PkiError::InvalidCsr("it is not a PEM certificate signing request".into())
            })?;
        // Parses the request and verifies its self-signature.
        let request = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        let (_, parsed) = X509CertificationRequest::from_der(&der)
            .map_err(|_| PkiError::InvalidCsr("it cannot be parsed".into()))?;

        let mut dns_names = Vec::new();
        if let Some(extensions) = parsed.requested_extensions() {
            for ext in extensions {
                if let ParsedExtension::SubjectAlternativeName(san) = ext {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(dns) => dns_names.push(*dns),
                            _ => {
                                return Err(PkiError::InvalidCsr(
                                    "it asks for a name that is not a DNS name".into(),
                                ))
                            }
                        }
                    }
                }
            }
        }
        let named = match named_node(&parsed.certification_request_info.subject, &dns_names) {
            Ok(Some(id)) => id,
            Ok(None) => {
                return Err(PkiError::InvalidCsr("it does not name a node".into()));
            }
            Err(NameError::Conflicting) => {
                return Err(PkiError::CsrNodeMismatch {
                    expected: node_id,
                    named: "several nodes".into(),
                });
            }
            Err(NameError::Foreign) => {
                return Err(PkiError::InvalidCsr(
                    "it asks for a name outside the cluster's naming scheme".into(),
                ));
            }
        };
        if named != node_id {
            return Err(PkiError::CsrNodeMismatch {
                expected: node_id,
                named: format!("node {named}"),
            });
        }

        let mut params = node_params(node_id).map_err(crypto)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(crypto)?;
        Ok(cert.pem())
    }
}

/// A fresh ECDSA P-256 key pair and a CSR for `node_id`: `(key_pem, csr_pem)`.
pub fn new_csr(node_id: u64) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let params = node_params(node_id).map_err(crypto)?;
    let csr = params.serialize_request(&key).map_err(crypto)?;
    let csr_pem = csr.pem().map_err(crypto)?;
    Ok((key.serialize_pem(), csr_pem))
}

/// The node id a certificate (DER) was issued to, read from its
/// `node-<id>.micro-cluster` DNS name (or, failing that, its
/// `micro-node-<id>` common name). `None` if the certificate cannot be
/// parsed, names no node, or names more than one.
///
/// This does not verify the certificate; call it only on one that a
/// verifier has already accepted.
pub fn node_id_of(cert_der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                dns_names.push(*dns);
            }
        }
    }
    // Unrelated names in an issued certificate are not our concern here;
    // only the node names must agree.
    let mut ids = dns_names.iter().filter_map(|n| node_id_from_dns(n));
    let from_san = match ids.next() {
        Some(first) if ids.all(|id| id == first) => Some(first),
        Some(_) => return None,
        None => None,
    };
    let from_cn = ids_from_common_names(cert.subject()).ok()?;
    match (from_san, from_cn) {
        (Some(a), Some(b)) if a != b => None,
        (Some(a), _) => Some(a),
        (None, b) => b,
    }
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint_der(der: &[u8]) -> String {
    to_hex(&Sha256::digest(der))
}

/// SHA-256 of the first certificate in a PEM text, lowercase hex; `None`
/// if it holds none.
pub fn fingerprint_pem(pem: &str) -> Option<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(fingerprint_der(&der))
}

/// A join token: the CA fingerprint a joiner pins, the token's id and
/// expiry, and its secret. Text form:
/// `MICRO2.<64 hex fingerprint>.<id>.<expiry>.<secret>`, the id being 16
/// letters and digits, the expiry unix seconds, the secret url-safe
/// (letters, digits, `-`, `_`) and at least 32 characters.
///
/// Its `Debug` form leaves the secret out.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate's DER, lowercase hex.
    pub ca_fingerprint: String,
    /// The token's id: where the cluster keeps its secret's digest.
    pub id: String,
    /// When the token stops working, unix seconds.
    pub expires_at: u64,
    /// The token's secret.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .field("id", &self.id)
            .field("expires_at", &self.expires_at)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl JoinToken {
    /// A fresh token for the cluster whose CA has `ca_fingerprint`, with a
    /// random id and secret, expiring at `expires_at` (unix seconds).
    pub fn mint(ca_fingerprint: &str, expires_at: u64) -> JoinToken {
        JoinToken {
            ca_fingerprint: ca_fingerprint.to_string(),
            id: random_alphanumeric(TOKEN_ID_LEN),
            expires_at,
            secret: new_join_secret(),
        }
    }

    /// The SHA-256 of the secret, lowercase hex: what the cluster keeps.
    pub fn secret_digest(&self) -> String {
        to_hex(&Sha256::digest(self.secret.as_bytes()))
    }

    /// Parses the text form. Surrounding whitespace is ignored and the
    /// fingerprint may be given in either case (it is stored lowercase).
    pub fn parse(s: &str) -> Result<JoinToken, PkiError> {
        let mut parts = s.trim().split('.');
        let (Some(prefix), Some(fingerprint), Some(id), Some(expiry), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(PkiError::MalformedToken("it must have exactly five parts"));
        };
        if prefix != TOKEN_PREFIX {
            return Err(PkiError::MalformedToken("it does not start with MICRO2"));
        }
        let ca_fingerprint = normalize_fingerprint(fingerprint).ok_or(PkiError::MalformedToken(
            "the fingerprint is not 64 hexadecimal digits",
        ))?;
        if id.len() != TOKEN_ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(PkiError::MalformedToken(
                "the id is not 16 letters and digits",
            ));
        }
        let expires_at =
            parse_id(expiry).ok_or(PkiError::MalformedToken("the expiry is not a number"))?;
        if secret.len() < MIN_SECRET_LEN {
            return Err(PkiError::MalformedToken("the secret is too short"));
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(PkiError::MalformedToken("the secret is too long"));
        }
        if !secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(PkiError::MalformedToken(
                "the secret may contain only letters, digits, '-' and '_'",
            ));
        }
        Ok(JoinToken {
            ca_fingerprint,
            id: id.to_string(),
            expires_at,
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}.{}.{}",
            self.ca_fingerprint, self.id, self.expires_at, self.secret
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JoinToken::parse(s)
    }
}

/// A new random join secret: 32 alphanumeric characters from the operating
/// system's random source (so it never starts with '-').
pub fn new_join_secret() -> String {
    random_alphanumeric(NEW_SECRET_LEN)
}

fn random_alphanumeric(len: usize) -> String {
    OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Compares two secrets in time that depends on neither their contents nor
/// their lengths (both are hashed first, then compared without branching).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    let diff = ha
        .iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lowercases a 64-hex-digit fingerprint; `None` if it is anything else.
pub(crate) fn normalize_fingerprint(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// Certificate parameters naming `node_id`: its common name and DNS names.
fn node_params(node_id: u64) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(vec![CLUSTER_DNS_NAME.to_string(), node_dns_name(node_id)])?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("micro-node-{node_id}"));
    params.distinguished_name = dn;
    Ok(params)
}

/// The DNS name that names one node: `node-<id>.micro-cluster`, the
/// server name a node dials a given peer with.
pub fn node_dns_name(node_id: u64) -> String {
    format!("node-{node_id}.{CLUSTER_DNS_NAME}")
}

fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + VALIDITY).into();
}

/// A random positive serial number of 16 bytes.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    // Positive, and never a leading zero byte that DER would strip.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// Why the names in a certificate or request do not identify one node.
enum NameError {
    /// They name more than one node.
    Conflicting,
    /// They include a name outside the cluster's scheme.
    Foreign,
}

/// The node named by a CSR's subject and DNS names. Every DNS name must be
/// `micro-cluster` or a node name; every common name must be a node name;
/// all node names must agree.
fn named_node(subject: &X509Name<'_>, dns_names: &[&str]) -> Result<Option<u64>, NameError> {
    let mut found: Option<u64> = None;
    let mut note = |id: u64| match found {
        Some(prev) if prev != id => Err(NameError::Conflicting),
        _ => {
            found = Some(id);
            Ok(())
        }
    };
    for name in dns_names {
        if *name == CLUSTER_DNS_NAME {
            continue;
        }
        note(node_id_from_dns(name).ok_or(NameError::Foreign)?)?;
    }
    if let Some(id) = ids_from_common_names(subject)? {
        note(id)?;
    }
    Ok(found)
}

/// The node named by the `micro-node-<id>` common name(s) of `subject`.
fn ids_from_common_names(subject: &X509Name<'_>) -> Result<Option<u64>, NameError> {
    let mut found = None;
    for attr in subject.iter_common_name() {
        let cn = attr.as_str().map_err(|_| NameError::Foreign)?;
        let id = cn
            .strip_prefix("micro-node-")
            .and_then(parse_id)
            .ok_or(NameError::Foreign)?;
        match found {
            Some(prev) if prev != id => return Err(NameError::Conflicting),
            _ => found = Some(id),
        }
    }
    Ok(found)
}

/// The id in `node-<id>.micro-cluster`.
fn node_id_from_dns(name: &str) -> Option<u64> {
    name.strip_prefix("node-")?
        .strip_suffix(CLUSTER_DNS_NAME)?
        .strip_suffix('.')
        .and_then(parse_id)
}

/// A node id in its canonical decimal form (no sign, no leading zeros).
fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MALFORMED: &str =
        "the join token is malformed: expected MICRO2.<fingerprint>.<id>.<expiry>.<secret>";

    fn cert_der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("a PEM certificate")
            .to_vec()
    }

    #[test]
    fn ca_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Ca>();
    }

    #[test]
    fn ca_round_trips_through_pem_with_a_stable_fingerprint() {
        let ca = Ca::generate().unwrap();
        let fp = ca.fingerprint();
        assert_eq!(fp.len(), 64);
        assert!(fp
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert_eq!(fp, ca.fingerprint());
        assert_eq!(fp, fingerprint_der(&cert_der(ca.cert_pem())));

        let loaded = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(loaded.fingerprint(), fp);
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());

        let ca_der = cert_der(ca.cert_pem());
        let (_, cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        let cn: Vec<_> = cert
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cn, ["Micro cluster CA"]);
        assert!(cert.is_ca());

        // A certificate issued by the reloaded CA verifies under the original.
        let (_, csr) = new_csr(3).unwrap();
        let issued = cert_der(&loaded.sign_csr(&csr, 3).unwrap());
        let (_, leaf) = x509_parser::parse_x509_certificate(&issued).unwrap();
        leaf.verify_signature(Some(cert.public_key())).unwrap();

        // Debug never shows the key.
        let debug = format!("{ca:?}");
        assert!(debug.contains(&fp));
        assert!(!debug.contains("PRIVATE"));
    }

    #[test]
    fn ca_from_pem_refuses_a_foreign_key_and_a_leaf_certificate() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let err = Ca::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCa(_)), "{err}");
        assert!(!err.to_string().contains("PRIVATE"));

        let (key, csr) = new_csr(1).unwrap();
        let leaf = ca.sign_csr(&csr, 1).unwrap();
        let err = Ca::from_pem(&leaf, &key).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCa(_)), "{err}");

        assert!(Ca::from_pem("not pem", ca.key_pem()).is_err());
        assert!(Ca::from_pem(ca.cert_pem(), "not pem").is_err());
    }

    #[test]
    fn signed_certificate_names_the_node() {
        let ca = Ca::generate().unwrap();
        for id in [0u64, 1, 42, u64::MAX] {
            let (key_pem, csr_pem) = new_csr(id).unwrap();
            assert!(key_pem.contains("PRIVATE KEY"));
            let cert_pem = ca.sign_csr(&csr_pem, id).unwrap();
            let der = cert_der(&cert_pem);
            assert_eq!(node_id_of(&der), Some(id));

            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert!(!cert.is_ca());
            let cn: Vec<_> = cert
                .subject()
                .iter_common_name()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(cn, [format!("micro-node-{id}")]);
            let san = cert.subject_alternative_name().unwrap().unwrap();
            let dns: Vec<_> = san
                .value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => d.to_string(),
                    other => panic!("unexpected name {other:?}"),
                })
                .collect();
            assert_eq!(
                dns,
                [
                    "micro-cluster".to_string(),
                    format!("node-{id}.micro-cluster")
                ]
            );
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            let validity = cert.validity();
            let years = (validity.not_after.timestamp() - validity.not_before.timestamp())
                / (365 * 24 * 3600);
            assert_eq!(years, 10);
        }
    }

    #[test]
    fn csr_for_another_node_is_refused() {
        let ca = Ca::generate().unwrap();
        let (_, csr) = new_csr(7).unwrap();
        let err = ca.sign_csr(&csr, 8).unwrap_err();
        assert!(
            matches!(err, PkiError::CsrNodeMismatch { expected: 8, .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the certificate signing request is for node 7, not for node 8"
        );
    }

    #[test]
    fn csr_with_foreign_or_conflicting_names_is_refused() {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let ca = Ca::generate().unwrap();

        // An extra name outside the scheme.
        let mut params = node_params(5).unwrap();
        params.subject_alt_names.push(rcgen::SanType::DnsName(
            "evil.example.com".try_into().unwrap(),
        ));
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(ca.sign_csr(&csr, 5), Err(PkiError::InvalidCsr(_))));

        // Common name and DNS name disagree.
        let mut params = node_params(5).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "micro-node-6");
        params.distinguished_name = dn;
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(
            ca.sign_csr(&csr, 5),
            Err(PkiError::CsrNodeMismatch { .. })
        ));

        // No node named at all.
        let mut params = CertificateParams::new(vec!["micro-cluster".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(matches!(ca.sign_csr(&csr, 5), Err(PkiError::InvalidCsr(_))));

        // A non-canonical id.
        let mut params = CertificateParams::new(vec!["node-05.micro-cluster".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        assert!(ca.sign_csr(&csr, 5).is_err());
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = Ca::generate().unwrap();
        for garbage in [
            "",
            "hello",
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        ] {
            let err = ca.sign_csr(garbage, 1).unwrap_err();
            assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
        }
        // A certificate is not a CSR.
        let err = ca.sign_csr(ca.cert_pem(), 1).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");

        // A CSR whose signature does not match its contents.
        let (_, csr) = new_csr(1).unwrap();
        let mut der = CertificateSigningRequestDer::from_pem_slice(csr.as_bytes())
            .unwrap()
            .to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der)
        );
        let err = ca.sign_csr(&tampered, 1).unwrap_err();
        assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
    }

    #[test]
    fn node_id_of_rejects_garbage_and_foreign_certificates() {
        assert_eq!(node_id_of(b"not a certificate"), None);
        assert_eq!(node_id_of(&[]), None);
        // The CA certificate names no node.
        let ca = Ca::generate().unwrap();
        assert_eq!(node_id_of(&cert_der(ca.cert_pem())), None);
        // A certificate for an unrelated name.
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["example.com".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(node_id_of(cert.der()), None);
    }

    #[test]
    fn id_parsing_is_canonical() {
        assert_eq!(node_id_from_dns("node-12.micro-cluster"), Some(12));
        assert_eq!(node_id_from_dns("node-0.micro-cluster"), Some(0));
        assert_eq!(node_id_from_dns("node-012.micro-cluster"), None);
        assert_eq!(node_id_from_dns("node-+1.micro-cluster"), None);
        assert_eq!(node_id_from_dns("node-.micro-cluster"), None);
        assert_eq!(node_id_from_dns("node-1micro-cluster"), None);
        assert_eq!(node_id_from_dns("node-1.micro-cluster.evil"), None);
        assert_eq!(
            node_id_from_dns("node-18446744073709551616.micro-cluster"),
            None
        );
    }

    #[test]
    fn token_round_trips() {
        let ca = Ca::generate().unwrap();
        let token = JoinToken::mint(&ca.fingerprint(), 1_900_000_000);
        let text = token.to_string();
        assert_eq!(
            text,
            format!(
                "MICRO2.{}.{}.1900000000.{}",
                ca.fingerprint(),
                token.id,
                token.secret
            )
        );
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        // Pasted with whitespace and an uppercase fingerprint.
        let sloppy = format!(
            "  MICRO2.{}.{}.1900000000.{}\n",
            ca.fingerprint().to_uppercase(),
            token.id,
            token.secret
        );
        assert_eq!(JoinToken::parse(&sloppy).unwrap(), token);
        // Url-safe punctuation in the secret is fine.
        let dashed = format!(
            "MICRO2.{}.{}.5.{}",
            "ab".repeat(32),
            "a".repeat(16),
            "-_".repeat(16)
        );
        assert_eq!(JoinToken::parse(&dashed).unwrap().secret, "-_".repeat(16));
        // Debug hides the secret.
        assert!(!format!("{token:?}").contains(&token.secret));
        // The digest is the secret's SHA-256, not the secret.
        assert_eq!(token.secret_digest().len(), 64);
        assert_ne!(token.secret_digest(), token.secret);
    }

    #[test]
    fn minted_tokens_are_random() {
        let a = JoinToken::mint(&"ab".repeat(32), 10);
        let b = JoinToken::mint(&"ab".repeat(32), 10);
        assert_ne!(a.id, b.id);
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.id.len(), 16);
        assert_ne!(a.secret_digest(), b.secret_digest());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let fp = "0123456789abcdef".repeat(4);
        let id = "i".repeat(16);
        let secret = "s".repeat(32);
        let cases = [
            String::new(),
            "MICRO2".to_string(),
            format!("MICRO2.{fp}"),
            format!("MICRO2.{fp}.{id}.1."),
            // The old form, without id and expiry.
            format!("MICRO1.{fp}.{secret}"),
            format!("MICRO1.{fp}.{id}.1.{secret}"),
            format!("micro2.{fp}.{id}.1.{secret}"),
            format!("{fp}.{id}.1.{secret}"),
            format!("MICRO2.{}.{id}.1.{secret}", "g".repeat(64)),
            format!("MICRO2.{}.{id}.1.{secret}", &fp[..63]),
            format!("MICRO2.{fp}0.{id}.1.{secret}"),
            format!("MICRO2..{id}.1.{secret}"),
            format!("MICRO2.{fp}.{}.1.{secret}", "i".repeat(15)),
            format!("MICRO2.{fp}.{}!.1.{secret}", "i".repeat(15)),
            format!("MICRO2.{fp}.{id}.x.{secret}"),
            format!("MICRO2.{fp}.{id}.-1.{secret}"),
            format!("MICRO2.{fp}.{id}..{secret}"),
            format!("MICRO2.{fp}.{id}.1.{}", "s".repeat(31)),
            format!("MICRO2.{fp}.{id}.1.{}!", "s".repeat(32)),
            format!("MICRO2.{fp}.{id}.1.{secret}.extra"),
            format!("MICRO2.{fp}.{id}.1.{}", "s".repeat(300)),
        ];
        for case in cases {
            let err = JoinToken::parse(&case).unwrap_err();
            assert!(
                matches!(err, PkiError::MalformedToken(_)),
                "{case:?}: {err}"
            );
            let msg = err.to_string();
            assert!(msg.starts_with(MALFORMED), "{case:?}: {msg}");
            assert!(!msg.contains('\n'));
            if case.len() > 8 {
                assert!(!msg.contains(&secret), "the error echoes the secret: {msg}");
            }
        }
    }

    #[test]
    fn join_secrets_are_random_and_alphanumeric() {
        let a = new_join_secret();
        let b = new_join_secret();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
        assert!(!secrets_equal("", "a"));
        assert!(secrets_equal("", ""));
    }
}
