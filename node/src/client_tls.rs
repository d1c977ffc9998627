//! TLS for the ports clients use: the certificate and key given with
//! `--tls-cert`/`--tls-key`, turned into the rustls configurations of the
//! gRPC endpoint (ALPN h2) and of the HTTP ports (ALPN h2 and http/1.1), and
//! the gRPC endpoint's accept stream.
//!
//! This module must never rely on a process-wide rustls crypto provider (it
//! uses ring explicitly), never accept TLS versions below 1.2, and never
//! log or echo key material; a key file others can read is warned about,
//! not refused.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::Stream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::TcpConnectInfo;

use crate::tls_accept::{self, TlsConn};

/// The certificate (chain) and private key files a node serves clients with,
/// both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate, followed by any intermediates.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The rustls server configurations built from [`TlsFiles`].
#[derive(Clone)]
pub struct ClientTls {
    /// For the gRPC endpoint: ALPN h2 only.
    pub grpc: Arc<rustls::ServerConfig>,
    /// For the API gateway and the dashboard: ALPN h2 and http/1.1.
    pub http: Arc<rustls::ServerConfig>,
}

/// Why the client TLS files cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("cannot read the TLS {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("the TLS {what} {path} holds no valid PEM {expected}")]
    Pem {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("the TLS certificate {cert} and key {key} cannot be used together: {reason}")]
    Config {
        cert: String,
        key: String,
        reason: String,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    std::fs::read(path).map_err(|e| ClientTlsError::Read {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Warns when the key file can be read by its group or by everyone.
fn warn_if_shared(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the TLS key {} can be read by others (mode {:o}): make it 0600",
                key.display(),
                mode & 0o777
            );
        }
    }
}

fn config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Reads and checks the certificate and key (TLS 1.2 and 1.3, ring).
pub fn load(files: &TlsFiles) -> Result<ClientTls, ClientTlsError> {
    let cert_pem = read("certificate", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    warn_if_shared(&files.key);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ClientTlsError::Pem {
            what: "certificate",
            path: files.cert.display().to_string(),
            expected: "certificate",
        })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| ClientTlsError::Pem {
        what: "key",
        path: files.key.display().to_string(),
        expected: "private key",
    })?;
    let bad = |e: rustls::Error| ClientTlsError::Config {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        reason: e.to_string(),
    };
    let grpc = config(chain.clone(), key.clone_key(), &[b"h2"]).map_err(bad)?;
    let http = config(chain, key, &[b"h2", b"http/1.1"]).map_err(bad)?;
    Ok(ClientTls { grpc, http })
}

/// The gRPC endpoint's connections over TLS (see [`tls_accept::incoming`]);
/// each carries tonic's own [`TcpConnectInfo`], so handlers see the peer's
/// address as they do without TLS.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConn<TcpConnectInfo>, io::Error>> + Send + 'static {
    tls_accept::incoming(
        listener,
        cfg,
        "gRPC endpoint",
        connect_info,
        Some(|tcp| Box::pin(refuse_plaintext(tcp))),
    )
}

/// What a plaintext gRPC client is told, as the status of every call it
/// makes on the connection.
pub const PLAINTEXT_REFUSED: &str =
    "this micro server serves TLS on this port: use an https:// address (micro env add NAME https://HOST:PORT --ca FILE)";

/// How long a plaintext client may keep its refusal connection.
const REFUSAL_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Answers every request of a plaintext HTTP/2 connection with a gRPC
/// `FAILED_PRECONDITION` saying the port serves TLS, so the user reads why
/// instead of a protocol error. Nothing is served.
async fn refuse_plaintext(tcp: TcpStream) {
    let svc = hyper::service::service_fn(|_req| async {
        http::Response::builder()
            .header("content-type", "application/grpc")
            .header(
                "grpc-status",
                (tonic::Code::FailedPrecondition as i32).to_string(),
            )
            .header("grpc-message", PLAINTEXT_REFUSED)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
    });
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .max_concurrent_streams(8)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
    let _ = tokio::time::timeout(REFUSAL_TIME, conn).await;
}

fn connect_info(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
) -> Option<TcpConnectInfo> {
    Some(TcpConnectInfo {
        local_addr: stream.get_ref().0.local_addr().ok(),
        remote_addr: Some(remote),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write(dir.path(), "cert.pem", &a.cert.pem());
        let key = write(dir.path(), "key.pem", &a.signing_key.serialize_pem());
        let other_key = write(dir.path(), "other.pem", &b.signing_key.serialize_pem());
        let junk = write(dir.path(), "junk.pem", "not pem");

        let ok = load(&TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap();
        assert_eq!(ok.grpc.alpn_protocols, vec![b"h2".to_vec()]);
        assert_eq!(
            ok.http.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );

        let err = |cert: &Path, key: &Path| {
            load(&TlsFiles {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            })
            .err()
            .unwrap()
            .to_string()
        };
        let missing = dir.path().join("missing.pem");
        let e = err(&missing, &key);
        assert!(
            e.starts_with(&format!(
                "cannot read the TLS certificate {}",
                missing.display()
            )),
            "{e}"
        );
        let e = err(&junk, &key);
        assert_eq!(
            e,
            format!(
                "the TLS certificate {} holds no valid PEM certificate",
                junk.display()
            )
        );
        let e = err(&cert, &junk);
        assert_eq!(
            e,
            format!(
                "the TLS key {} holds no valid PEM private key",
                junk.display()
            )
        );
        let e = err(&cert, &other_key);
        assert!(e.contains("cannot be used together"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }
}
