//! How a client reaches a node's gRPC endpoint: plaintext TCP, or TLS
//! verified against a CA the user gave (or the system's CA bundle), and
//! what a failed connection is called in words a user can act on.
//!
//! This module must never skip or weaken certificate verification (a
//! pinned certificate is trusted only byte for byte), never
//! fall back from TLS to plaintext, and never rely on a process-wide rustls
//! crypto provider (it uses ring explicitly).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::codegen::http::Uri;

/// How long the TCP connect, and then the TLS handshake, may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the HTTP/1 probe of a port that does not speak gRPC may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the system's CA bundle is looked for when `SSL_CERT_FILE` is not
/// set (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, macOS with OpenSSL).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Whom a TLS client trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// These certificates (PEM), and nothing else: a server whose chain
    /// leads to one of them (as a CA), or whose own certificate is one of
    /// them (pinned; this is how a self-signed certificate, or the node's
    /// own certificate handed to the services it runs, is trusted).
    Ca(String),
    /// The system's CA bundle (`SSL_CERT_FILE`, else the usual paths).
    System,
}

/// A node's gRPC endpoint: `host:port`, and how to secure the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port` (`[v6]:port` for IPv6 literals)
    pub address: String,
    /// TLS and whom to trust; `None` is plaintext.
    pub tls: Option<Trust>,
}

impl Target {
    /// A plaintext target.
    pub fn plain(address: &str) -> Target {
        Target {
            address: address.to_string(),
            tls: None,
        }
    }

    /// `https://host:port` is TLS (trusting `ca_pem` when given, else the
    /// system's CAs); `host:port` is plaintext, and takes no CA.
    pub fn parse(address: &str, ca_pem: Option<String>) -> Result<Target, DialError> {
        match address.strip_prefix("https://") {
            Some(rest) => Ok(Target {
                address: rest.trim_end_matches('/').to_string(),
                tls: Some(ca_pem.map_or(Trust::System, Trust::Ca)),
            }),
            None if ca_pem.is_some() => Err(DialError::CaWithoutTls(address.to_string())),
            None => Ok(Target::plain(address)),
        }
    }

    /// The host part, brackets of an IPv6 literal removed.
    fn host(&self) -> &str {
        let host = match self.address.rsplit_once(':') {
            Some((h, port)) if port.parse::<u16>().is_ok() => h,
            _ => &self.address,
        };
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

impl fmt::Display for Target {
    /// `https://host:port` for TLS, `host:port` for plaintext: the address
    /// as the user gave it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tls {
            Some(_) => write!(f, "https://{}", self.address),
            None => f.write_str(&self.address),
        }
    }
}

/// Why a connection could not be set up, before or during the dial.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("a CA certificate is only used with an https:// address, not '{0}'")]
    CaWithoutTls(String),
    #[error("the CA certificate is not valid PEM")]
    BadCa,
    #[error("no CA certificates found on this system ({0}); give the server's CA with --ca")]
    NoSystemCa(String),
    #[error("'{0}' is not a host name or IP address TLS can verify")]
    BadServerName(String),
    /// The TCP connect failed or timed out.
    #[error("{0}")]
    Tcp(io::Error),
    /// The TLS handshake failed or timed out.
    #[error("{0}")]
    Tls(io::Error),
}

fn certs_from_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, DialError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| DialError::BadCa)
}

fn roots_of(certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, DialError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(DialError::BadCa);
    }
    Ok(roots)
}

fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, DialError> {
    roots_of(certs_from_pem(pem)?)
}

/// Trusts a server whose certificate is exactly one of `pinned`, and
/// otherwise verifies it as WebPKI does against the same certificates as
/// roots. Handshake signatures are always checked.
#[derive(Debug)]
struct CaOrPinned {
    pinned: Vec<CertificateDer<'static>>,
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Checks that `pem` holds at least one usable CA certificate.
pub fn check_ca(pem: &str) -> Result<(), DialError> {
    roots_from_pem(pem.as_bytes()).map(|_| ())
}

/// The system's CA bundle: `SSL_CERT_FILE`, else the first of
/// [`SYSTEM_BUNDLES`] that holds certificates.
fn system_roots() -> Result<RootCertStore, DialError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    let candidates: Vec<&Path> = match &from_env {
        Some(p) => vec![Path::new(p)],
        None => SYSTEM_BUNDLES.iter().map(Path::new).collect(),
    };
    for path in &candidates {
        if let Ok(pem) = std::fs::read(path) {
            if let Ok(roots) = roots_from_pem(&pem) {
                return Ok(roots);
            }
        }
    }
    let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    Err(DialError::NoSystemCa(format!("tried {}", tried.join(", "))))
}

/// The rustls client configuration for `trust`: TLS 1.2 and 1.3, ALPN h2,
/// no client certificate.
fn client_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, DialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| DialError::Tls(io::Error::other(e)))?;
    let mut cfg = match trust {
        Trust::Ca(pem) => {
            let pinned = certs_from_pem(pem.as_bytes())?;
            let roots = Arc::new(roots_of(pinned.clone())?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| DialError::Tls(io::Error::other(e)))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CaOrPinned { pinned, webpki }))
                .with_no_client_auth()
        }
        Trust::System => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A byte stream to the node, plaintext or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The connector tonic dials the node with.
#[derive(Clone)]
pub struct Dialer {
    address: Arc<str>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Dialer {
    /// A dialer for `target`; reads the system CAs when it trusts them.
    pub fn new(target: &Target) -> Result<Dialer, DialError> {
        let tls = match &target.tls {
            None => None,
            Some(trust) => {
                let name = ServerName::try_from(target.host().to_string())
                    .map_err(|_| DialError::BadServerName(target.host().to_string()))?;
                Some((TlsConnector::from(client_config(trust)?), name))
            }
        };
        Ok(Dialer {
            address: Arc::from(target.address.as_str()),
            tls,
        })
    }
}

fn timed_out(what: &str, address: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} {address} timed out"),
    )
}

impl tonic::codegen::Service<Uri> for Dialer {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, DialError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // The address as given, not the URI's host: IPv6 literals and host
        // names resolve the same way.
        let (address, tls) = (self.address.clone(), self.tls.clone());
        Box::pin(async move {
            let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&*address))
                .await
                .map_err(|_| DialError::Tcp(timed_out("connecting to", &address)))?
                .map_err(DialError::Tcp)?;
            // Small gRPC frames must go out at once.
            tcp.set_nodelay(true).map_err(DialError::Tcp)?;
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some((connector, name)) => {
                    let tls = tokio::time::timeout(DIAL_TIMEOUT, connector.connect(name, tcp))
                        .await
                        .map_err(|_| DialError::Tls(timed_out("the TLS handshake with", &address)))?
                        .map_err(DialError::Tls)?;
                    Box::new(tls)
                }
            };
            Ok(TokioIo::new(io))
        })
    }
}

/// What went wrong setting up a connection to `target`, in a few words
/// after "Failed to connect to micro server at …: "; `None` when the
/// server simply could not be reached (refused, unresolvable, timed out).
pub fn explain(target: &Target, err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(d) = e.downcast_ref::<DialError>() {
            return match d {
                DialError::Tcp(_) => None,
                DialError::Tls(io) => Some(explain_tls(io)),
                other => Some(other.to_string()),
            };
        }
        cur = e.source();
    }
    // The dial worked, but the HTTP/2 connection did not start.
    Some(match target.tls {
        None => "the server did not answer as a plaintext gRPC endpoint (if it serves TLS, add the environment with an https:// address)".to_string(),
        Some(_) => "the server did not answer as a gRPC endpoint".to_string(),
    })
}

/// Whether `err` comes from after the dial: the TCP connect (and TLS
/// handshake) worked, and the HTTP/2 connection did not start.
pub fn after_dial(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<DialError>() {
            return false;
        }
        cur = e.source();
    }
    true
}

/// Asks `address` (plaintext `host:port`) a minimal HTTP/1.1 request and
/// gives the HTTP version of its status line (`HTTP/1.1`) if it answers
/// one within [`PROBE_TIMEOUT`]; `None` otherwise. Used only once a
/// connection failed, to tell an HTTP port from a gRPC endpoint.
pub async fn http1_version(address: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut tcp = TcpStream::connect(address).await.ok()?;
        let request = format!("GET / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        // "HTTP/1.x" is all that is looked at.
        let mut head = [0u8; 8];
        tcp.read_exact(&mut head).await.ok()?;
        let version = std::str::from_utf8(&head).ok()?;
        version.starts_with("HTTP/1.").then(|| version.to_string())
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
}

/// Why a plaintext target that answers HTTP (`version`), not gRPC, cannot
/// be used, after "Failed to connect to micro server at …: ".
pub fn not_grpc(version: &str) -> String {
    format!(
        "it answers {version}, not gRPC (is this the HTTP API port? the gRPC endpoint is :{} by default)",
        crate::DEFAULT_PROXY_PORT
    )
}

fn explain_tls(io: &io::Error) -> String {
    let rustls_error = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(c)) => {
            let why = match c {
                CertificateError::UnknownIssuer => "it is not signed by a trusted CA".to_string(),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "it does not name this host".to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "it has expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet".to_string()
                }
                CertificateError::Revoked => "it has been revoked".to_string(),
                other => format!("{other:?}"),
            };
            format!("the server's certificate is not trusted ({why})")
        }
        Some(other) => {
            format!("the TLS handshake failed ({other}); is the server serving TLS on this port?")
        }
        None if io.kind() == io::ErrorKind::TimedOut => {
            "the TLS handshake timed out; is the server serving TLS on this port?".to_string()
        }
        None => format!("the TLS handshake failed ({io}); is the server serving TLS on this port?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        let t = Target::parse("https://node:8081", Some("pem".into())).unwrap();
        assert_eq!(t.address, "node:8081");
        assert_eq!(t.tls, Some(Trust::Ca("pem".into())));
        assert_eq!(t.to_string(), "https://node:8081");
        assert_eq!(t.host(), "node");
        let t = Target::parse("https://[::1]:7", None).unwrap();
        assert_eq!((t.host(), &t.tls), ("::1", &Some(Trust::System)));
        let t = Target::parse("10.0.0.1:8081", None).unwrap();
        assert_eq!((t.to_string(), t.tls), ("10.0.0.1:8081".to_string(), None));
        assert!(matches!(
            Target::parse("10.0.0.1:8081", Some("pem".into())),
            Err(DialError::CaWithoutTls(_))
        ));
    }

    #[test]
    fn a_ca_must_be_a_certificate() {
        assert!(matches!(check_ca("nope"), Err(DialError::BadCa)));
        assert!(matches!(
            check_ca("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(DialError::BadCa)
        ));
    }
}
