//! Mutual TLS for the cluster port: the rustls configurations nodes use
//! towards each other, the one a joining node uses before it has a
//! certificate, and the glue that runs tonic over them.
//!
//! Every node presents a certificate issued by the cluster CA (see
//! [`super::pki`]) and verifies its peer against that CA and against the
//! cluster's [`Trust`]: a removed node's certificate is refused in the
//! handshake, and so is a certificate for an id that has another one
//! pinned. A node dialling a given peer verifies that the server's
//! certificate names that peer (`node-<id>.micro-cluster`,
//! [`channel_to`]); only a dial by address alone (a `--join` seed) takes
//! any member ([`SERVER_NAME`]). The server side asks for a client
//! certificate but does not require one, because a joiner has none yet;
//! the connection's [`PeerInfo`] tells handlers whether (and as which node)
//! the peer authenticated, [`split_by_certificate`] separates the two kinds
//! of connection, and handlers must refuse everything but Join when
//! `node_id` is `None`.
//!
//! A joiner knows only the CA fingerprint from its join token. It accepts a
//! server whose certificate chain contains a certificate with that fingerprint
//! and whose leaf verifies under it.
//!
//! This module must never rely on a process-wide rustls crypto provider (it
//! always uses the ring provider explicitly), never skip certificate
//! verification (so no session resumption between nodes: a resumed
//! session is not verified again), never accept TLS versions below 1.3,
//! and never let a slow or broken handshake stall the accept loop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::pki::{fingerprint_der, node_dns_name, node_id_of, normalize_fingerprint};
use super::trust::Trust;

/// The server name every node certificate carries and every client verifies.
pub const SERVER_NAME: &str = "micro-cluster";

/// The only application protocol spoken on the cluster port.
const ALPN_H2: &[u8] = b"h2";

/// Client-side TCP connect timeout (and the endpoint's connect timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 keepalive on client channels.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong building the cluster's TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input held nothing usable.
    #[error("the {0} is not valid PEM")]
    Pem(&'static str),
    /// The cluster CA certificate cannot be used as a trust anchor.
    #[error("the cluster CA certificate is not usable: {0}")]
    Ca(String),
    /// This node's certificate does not verify under the cluster CA.
    #[error("the node certificate does not verify under the cluster CA: {0}")]
    NodeCert(String),
    /// A certificate verifier could not be built.
    #[error("the certificate verifier cannot be built: {0}")]
    Verifier(String),
    /// The CA fingerprint is not 64 hexadecimal digits.
    #[error("the CA fingerprint must be 64 hexadecimal digits")]
    BadFingerprint,
    /// The peer address is not `host:port`.
    #[error("the cluster address {0:?} is not host:port")]
    BadAddress(String),
    /// rustls refused the configuration (for instance, a key that does not
    /// match its certificate).
    #[error("the TLS configuration is invalid: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What this node presents and trusts: the cluster CA certificate, this
/// node's certificate and its private key, all PEM.
#[derive(Clone)]
pub struct Identity {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// This node's certificate (issued by the cluster CA).
    pub cert_pem: String,
    /// This node's private key. Secret.
    pub key_pem: String,
}

/// What a handler learns about the peer of a cluster-port connection. tonic
/// puts it into every request's extensions:
/// `request.extensions().get::<PeerInfo>()`.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// The node id from the peer's verified client certificate; `None` if it
    /// offered none (a joiner).
    pub node_id: Option<u64>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

fn ca_der(id: &Identity) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(id.ca_pem.as_bytes())
        .map_err(|_| TlsError::Pem("cluster CA certificate"))
}

fn ca_roots(ca: &CertificateDer<'static>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| TlsError::Ca(e.to_string()))?;
    Ok(Arc::new(roots))
}

/// This node's chain as sent to peers, `[leaf, ..., ca]`, and its key. The
/// leaf is checked against the CA here, so a mismatched identity fails at
/// startup rather than in every peer's handshake.
fn own_chain(
    id: &Identity,
    ca: &CertificateDer<'static>,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let mut chain = CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::Pem("node certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::Pem("node certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
        .map_err(|_| TlsError::Pem("node private key"))?;

    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &server_name(), &[], UnixTime::now())
        .map_err(|e| TlsError::NodeCert(e.to_string()))?;

    // A joiner pins the CA by fingerprint, so it must be in the chain.
    if !chain.iter().any(|c| c == ca) {
        chain.push(ca.clone());
    }
    Ok((chain, key))
}

/// The server side of the cluster port: presents this node's certificate
/// (with the CA appended to the chain), verifies a client certificate
/// against the cluster CA and `trust` when one is offered, but lets a
/// client without one complete the handshake. TLS 1.3 only, ALPN "h2".
pub fn server_config(
    id: &Identity,
    trust: Arc<Trust>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let ca = ca_der(id)?;
    let roots = ca_roots(&ca)?;
    let (chain, key) = own_chain(id, &ca, &roots, &provider)?;
    let inner = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(MemberClientVerifier { inner, trust }))
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // A resumed session skips the verifier: a removed node could come back
    // on a ticket from before its removal. Every handshake is a full one.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// The client side between nodes: presents this node's certificate and
/// verifies the server's chain against the cluster CA, the name dialled
/// (see [`channel_to`]) and `trust`. TLS 1.3 only, ALPN "h2".
pub fn client_config(
    id: &Identity,
    trust: Arc<Trust>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let ca = ca_der(id)?;
    let roots = ca_roots(&ca)?;
    let (chain, key) = own_chain(id, &ca, &roots, &provider)?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(MemberServerVerifier { inner, trust }))
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Full handshakes only, so the server's certificate is verified (and
    // checked against the trust set) on every connection.
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// The node a verified certificate names, and whether `trust` still takes
/// it for that node.
fn trusted_node(trust: &Trust, end_entity: &CertificateDer<'_>) -> Result<u64, rustls::Error> {
    // Verified by the cluster CA yet naming no node: not something this
    // cluster issues.
    let id = node_id_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::ApplicationVerificationFailure,
    ))?;
    trust
        .check(id, end_entity)
        .map_err(rustls::Error::InvalidCertificate)?;
    Ok(id)
}

/// Full WebPKI verification of a client's chain under the cluster CA, then
/// the cluster's trust: a removed node, or a certificate other than the one
/// pinned for its id, fails the handshake.
#[derive(Debug)]
struct MemberClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust: Arc<Trust>,
}

impl ClientCertVerifier for MemberClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        trusted_node(&self.trust, end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Full WebPKI verification of a server's chain under the cluster CA and
/// for the name dialled (`node-<id>.micro-cluster` names exactly one node),
/// then the pinned certificate of the node it names.
#[derive(Debug)]
struct MemberServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    trust: Arc<Trust>,
}

impl ServerCertVerifier for MemberServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        // A removed node is not dialled (it is no member); only the pin
        // matters here, so that a removal in progress can still reach it.
        let id = node_id_of(end_entity).ok_or(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))?;
        match self.trust.check(id, end_entity) {
            Ok(()) | Err(CertificateError::Revoked) => Ok(verified),
            Err(e) => Err(rustls::Error::InvalidCertificate(e)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The client side for joining: presents no certificate, and trusts the
/// server only if the chain it sends contains a certificate whose SHA-256
/// (DER) is `ca_fingerprint` and the leaf verifies under that certificate as
/// the root, for [`SERVER_NAME`]. TLS 1.3 only, ALPN "h2".
pub fn join_client_config(ca_fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let fingerprint = normalize_fingerprint(ca_fingerprint).ok_or(TlsError::BadFingerprint)?;
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        fingerprint,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

/// Verifies a server by a pinned CA fingerprint: the CA is taken from the
/// chain the server sends, and full WebPKI verification of the leaf is then
/// delegated to a verifier rooted at it.
#[derive(Debug)]
struct PinnedCaVerifier {
    /// Lowercase hex SHA-256 of the CA certificate's DER.
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The leaf itself is never the trust anchor: a CA certificate cannot
        // serve TLS, and only certificates after the leaf are candidates.
        let Some(pos) = intermediates
            .iter()
            .position(|c| fingerprint_der(c) == self.fingerprint)
        else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(intermediates[pos].clone())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .map(|(_, c)| c.clone())
            .collect();
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        // Always the cluster name, whatever name the caller dialled with.
        inner.verify_server_cert(end_entity, &rest, &server_name(), ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// An established server-side TLS connection on the cluster port, ready for
/// tonic's `serve_with_incoming*`. Its connect info is a [`PeerInfo`].
pub type TlsConn = crate::tls_accept::TlsConn<PeerInfo>;

/// Accepts TCP connections from `listener` (with `TCP_NODELAY`), runs their
/// TLS handshakes concurrently, and yields the established connections with
/// the peer's node id (see [`crate::tls_accept::incoming`]).
///
/// Must be polled inside a tokio runtime.
pub fn incoming(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    crate::tls_accept::incoming(listener, cfg, "cluster port", peer_info, None)
}

/// Who the peer of an established connection is; `None` drops it.
fn peer_info(
    stream: &tokio_rustls::server::TlsStream<TcpStream>,
    remote: SocketAddr,
) -> Option<PeerInfo> {
    let node_id = match stream.get_ref().1.peer_certificates() {
        None | Some([]) => None,
        Some([leaf, ..]) => match node_id_of(leaf) {
            Some(id) => Some(id),
            None => {
                // Verified by the cluster CA yet naming no node: not
                // something this cluster issues, so not an identity to
                // downgrade to "anonymous".
                tracing::warn!(%remote, "cluster port: client certificate names no node; dropping");
                return None;
            }
        },
    };
    Some(PeerInfo { remote, node_id })
}

/// One kind of cluster-port connection, for tonic's `serve_with_incoming*`.
pub type Conns = ReceiverStream<Result<TlsConn, io::Error>>;

/// Splits the connections of [`incoming`] in two: those whose client
/// presented a (verified) certificate, and those without one (joiners and
/// strangers), so each kind is served by its own HTTP/2 server with its own
/// limits. A failure of the listener ends both.
///
/// Must be called inside a tokio runtime (it spawns the task that sorts).
pub fn split_by_certificate(
    conns: impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static,
) -> (Conns, Conns) {
    use futures::StreamExt;
    let (members_tx, members_rx) = mpsc::channel(64);
    let (anon_tx, anon_rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut conns = std::pin::pin!(conns);
        loop {
            let next = tokio::select! {
                next = conns.next() => next,
                _ = async { tokio::join!(members_tx.closed(), anon_tx.closed()) } => return,
            };
            match next {
                None => return,
                Some(Ok(conn)) => {
                    let tx = if conn.info().node_id.is_some() {
                        &members_tx
                    } else {
                        &anon_tx
                    };
                    // A server that stopped serving drops its receiver;
                    // its connections have nowhere to go.
                    let _ = tx.send(Ok(conn)).await;
                }
                Some(Err(e)) => {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    let _ = anon_tx.send(Err(copy)).await;
                    let _ = members_tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (
        ReceiverStream::new(members_rx),
        ReceiverStream::new(anon_rx),
    )
}

/// Dials a peer's cluster port: TCP (nodelay, 3 s limit), then TLS with
/// the server name given.
#[derive(Clone)]
struct Connector {
    addr: Arc<str>,
    name: ServerName<'static>,
    tls: TlsConnector,
}

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        // Dial the address as given rather than the URI's host, which keeps
        // IPv6 literals and host names working the same way.
        let addr = self.addr.clone();
        let name = self.name.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&*addr))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {addr} timed out"),
                    )
                })??;
            tcp.set_nodelay(true)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// A lazily connecting tonic channel to a peer's cluster address
/// (`host:port`) over TLS with `cfg` (one of [`client_config`] or
/// [`join_client_config`]), taking any member of the cluster there
/// ([`SERVER_NAME`]). Nothing is dialled until the first request.
pub fn channel(addr: &str, cfg: Arc<rustls::ClientConfig>) -> Result<Channel, TlsError> {
    channel_named(addr, server_name(), cfg)
}

/// Like [`channel`], for a call meant for node `node`: the server's
/// certificate must name that node (with [`client_config`]).
pub fn channel_to(
    addr: &str,
    node: u64,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Channel, TlsError> {
    let name = ServerName::try_from(node_dns_name(node))
        .map_err(|_| TlsError::BadAddress(addr.to_string()))?;
    channel_named(addr, name, cfg)
}

fn channel_named(
    addr: &str,
    name: ServerName<'static>,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<Channel, TlsError> {
    let bad = || TlsError::BadAddress(addr.to_string());
    if addr.is_empty() || addr.contains(['/', '?', '#', '@']) || addr.trim() != addr {
        return Err(bad());
    }
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).map_err(|_| bad())?;
    let uri = endpoint.uri();
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(bad());
    }
    let endpoint = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let connector = Connector {
        addr: Arc::from(addr),
        name,
        tls: TlsConnector::from(cfg),
    };
    Ok(endpoint.connect_with_connector_lazy(connector))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::pki::{new_csr, Ca};
    use crate::cluster::trust::TrustSet;
    use std::collections::{HashMap, HashSet};
    use tokio::io::AsyncWriteExt;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    const PEER_HEADER: &str = "x-test-peer-node";

    fn identity(ca: &Ca, node_id: u64) -> Identity {
        let (key_pem, csr_pem) = new_csr(node_id).unwrap();
        Identity {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: ca.sign_csr(&csr_pem, node_id).unwrap(),
            key_pem,
        }
    }

    /// Reports, in a response header, which node tonic says the peer is.
    async fn echo_peer(
        req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let seen = match req.extensions().get::<PeerInfo>() {
            Some(PeerInfo {
                node_id: Some(id), ..
            }) => id.to_string(),
            Some(PeerInfo { node_id: None, .. }) => "none".to_string(),
            None => "missing".to_string(),
        };
        let mut resp = next.run(req).await;
        resp.headers_mut()
            .insert(PEER_HEADER, seen.parse().unwrap());
        resp
    }

    /// A health server on 127.0.0.1 behind [`incoming`] with `id`'s identity.
    async fn start_server(id: &Identity) -> SocketAddr {
        start_server_trusting(id, Trust::new()).await
    }

    /// A health server with `id`'s identity whose verifier consults `trust`.
    async fn start_server_trusting(id: &Identity, trust: Arc<Trust>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = server_config(id, trust).unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let router = tonic::service::Routes::new(health)
            .into_axum_router()
            .layer(axum::middleware::from_fn(echo_peer));
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming(incoming(listener, cfg))
                .await
                .unwrap();
        });
        addr
    }

    /// Calls Check over `cfg`; the node the server saw, or the failure.
    async fn whoami(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Result<String, String> {
        check_over(channel(&addr.to_string(), cfg).unwrap()).await
    }

    /// [`whoami`] as the member `id`, trusting every member.
    async fn whoami_as(addr: SocketAddr, id: &Identity) -> Result<String, String> {
        whoami(addr, client_config(id, Trust::new()).unwrap()).await
    }

    /// Calls Check over `channel`; the node the server saw, or the failure.
    async fn check_over(channel: Channel) -> Result<String, String> {
        let mut client = HealthClient::new(channel);
        let call = client.check(HealthCheckRequest {
            service: String::new(),
        });
        let resp = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|s| s.to_string())?;
        assert_eq!(resp.get_ref().status, 1, "SERVING");
        Ok(resp
            .metadata()
            .get(PEER_HEADER)
            .expect("the peer header")
            .to_str()
            .unwrap()
            .to_string())
    }

    /// A raw TLS handshake (client side) with `cfg`.
    async fn raw_handshake(
        addr: SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        TlsConnector::from(cfg).connect(server_name(), tcp).await
    }

    /// A client config trusting `ca` and presenting `client` (if any) without
    /// the self-check `client_config` does.
    fn custom_client(ca: &Ca, client: Option<&Identity>) -> Arc<rustls::ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut cfg = match client {
            Some(id) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                        .collect::<Result<Vec<_>, _>>()
                        .unwrap(),
                    PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(cfg)
    }

    #[tokio::test]
    async fn node_client_reaches_server_and_is_identified() {
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let b = identity(&ca, 2);
        let addr = start_server(&b).await;
        let seen = whoami_as(addr, &a).await.unwrap();
        assert_eq!(seen, "1");

        // The raw connection negotiated h2 over TLS 1.3.
        let tls = raw_handshake(addr, client_config(&a, Trust::new()).unwrap())
            .await
            .unwrap();
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(ALPN_H2));
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    #[tokio::test]
    async fn joiner_connects_with_the_right_fingerprint_only() {
        let ca = Ca::generate().unwrap();
        let b = identity(&ca, 2);
        let addr = start_server(&b).await;

        let join = join_client_config(&ca.fingerprint()).unwrap();
        assert_eq!(whoami(addr, join.clone()).await.unwrap(), "none");
        // Uppercase works too.
        let upper = join_client_config(&ca.fingerprint().to_uppercase()).unwrap();
        assert_eq!(whoami(addr, upper).await.unwrap(), "none");

        let other = Ca::generate().unwrap();
        let wrong = join_client_config(&other.fingerprint()).unwrap();
        let err = raw_handshake(addr, wrong.clone()).await.unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");
        assert!(whoami(addr, wrong).await.is_err());

        assert!(matches!(
            join_client_config("abc"),
            Err(TlsError::BadFingerprint)
        ));
        assert!(matches!(
            join_client_config(&"z".repeat(64)),
            Err(TlsError::BadFingerprint)
        ));
    }

    #[tokio::test]
    async fn joiner_refuses_a_server_of_another_cluster_even_if_it_sends_the_pinned_ca() {
        // A server of another cluster appends our CA to its chain: the pin
        // matches, but its leaf does not verify under our CA.
        let ours = Ca::generate().unwrap();
        let theirs = Ca::generate().unwrap();
        let impostor = identity(&theirs, 2);
        let mut cert_pem = impostor.cert_pem.clone();
        cert_pem.push_str(ours.cert_pem());
        let leaf_and_ours = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                leaf_and_ours,
                PrivateKeyDer::from_pem_slice(impostor.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conns = Box::pin(incoming(listener, Arc::new(cfg)));
        tokio::spawn(async move {
            use futures::StreamExt;
            while conns.next().await.is_some() {}
        });

        let join = join_client_config(&ours.fingerprint()).unwrap();
        let err = raw_handshake(addr, join).await.unwrap_err();
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn client_certificates_from_another_ca_are_refused() {
        let ca = Ca::generate().unwrap();
        let other = Ca::generate().unwrap();
        let b = identity(&ca, 2);
        let addr = start_server(&b).await;

        // A cert from another CA (even for a plausible node id) is rejected by
        // the server; in TLS 1.3 the client learns it on its first read.
        let stranger = identity(&other, 1);
        assert!(matches!(
            client_config(
                &Identity {
                    ca_pem: ca.cert_pem().to_string(),
                    ..stranger.clone()
                },
                Trust::new()
            ),
            Err(TlsError::NodeCert(_))
        ));
        let err = whoami(addr, custom_client(&ca, Some(&stranger)))
            .await
            .unwrap_err();
        assert!(err.contains("fatal alert"), "{err}");

        // No certificate at all: the handshake completes, as anonymous.
        assert_eq!(
            whoami(addr, custom_client(&ca, None)).await.unwrap(),
            "none"
        );
    }

    #[tokio::test]
    async fn garbage_and_silent_clients_do_not_block_the_server() {
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let b = identity(&ca, 2);
        let addr = start_server(&b).await;

        // A client that sends garbage and one that sends nothing at all.
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff\x16\x03")
            .await
            .unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let _half = {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
            s
        };

        let seen = tokio::time::timeout(Duration::from_secs(5), whoami_as(addr, &a))
            .await
            .expect("the good client was served promptly")
            .unwrap();
        assert_eq!(seen, "1");
        // And again, after the garbage connection has been dropped.
        drop(garbage);
        assert_eq!(whoami_as(addr, &a).await.unwrap(), "1");
    }

    #[tokio::test]
    async fn configs_refuse_mismatched_or_malformed_identities() {
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let b = identity(&ca, 2);
        // A's certificate with B's key.
        let mixed = Identity {
            key_pem: b.key_pem.clone(),
            ..a.clone()
        };
        assert!(server_config(&mixed, Trust::new()).is_err());
        assert!(client_config(&mixed, Trust::new()).is_err());
        let no_pem = Identity {
            cert_pem: "nope".into(),
            ..a.clone()
        };
        assert!(matches!(
            server_config(&no_pem, Trust::new()),
            Err(TlsError::Pem(_))
        ));
        let no_ca = Identity {
            ca_pem: String::new(),
            ..a
        };
        assert!(matches!(
            client_config(&no_ca, Trust::new()),
            Err(TlsError::Pem(_))
        ));
    }

    #[tokio::test]
    async fn a_client_refuses_a_server_certificate_naming_another_node() {
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let b = identity(&ca, 2);
        let addr = start_server(&b).await.to_string();
        let cfg = client_config(&a, Trust::new()).unwrap();
        // Dialled as node 2: it is node 2.
        let seen = check_over(channel_to(&addr, 2, cfg.clone()).unwrap()).await;
        assert_eq!(seen.unwrap(), "1");
        // Dialled as node 3, the same server (a valid member certificate,
        // but for node 2) is refused.
        let err = check_over(channel_to(&addr, 3, cfg).unwrap())
            .await
            .unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
        assert!(err.contains("NotValidForName"), "{err}");
    }

    #[tokio::test]
    async fn a_removed_nodes_certificate_is_refused_in_the_handshake() {
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let b = identity(&ca, 2);
        let c = identity(&ca, 3);
        let trust = Trust::new();
        let addr = start_server_trusting(&b, trust.clone()).await;
        assert_eq!(whoami_as(addr, &a).await.unwrap(), "1");
        // Node 1 is removed: its next handshake fails, node 3 still passes.
        trust.set(TrustSet {
            revoked: HashSet::from([1]),
            pinned: HashMap::new(),
        });
        let err = whoami_as(addr, &a).await.unwrap_err();
        assert!(err.contains("CertificateRevoked"), "{err}");
        assert_eq!(whoami_as(addr, &c).await.unwrap(), "3");
    }

    #[tokio::test]
    async fn a_second_certificate_for_a_pinned_id_is_refused_both_ways() {
        // Every node holds the CA key, so a removed node could sign itself
        // a certificate for a member's id: the pin refuses it.
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let forged_a = identity(&ca, 1);
        let b = identity(&ca, 2);
        let forged_b = identity(&ca, 2);
        let pins = || TrustSet {
            revoked: HashSet::new(),
            pinned: HashMap::from([
                (1, fingerprint_der(&ca_der_of(&a))),
                (2, fingerprint_der(&ca_der_of(&b))),
            ]),
        };
        let server_trust = Trust::new();
        server_trust.set(pins());
        let addr = start_server_trusting(&b, server_trust).await;
        assert_eq!(whoami_as(addr, &a).await.unwrap(), "1");
        let err = whoami_as(addr, &forged_a).await.unwrap_err();
        assert!(err.contains("fatal alert"), "{err}");

        // A client that knows the pins refuses a server with a forged
        // certificate for node 2.
        let forged_addr = start_server(&forged_b).await.to_string();
        let client_trust = Trust::new();
        client_trust.set(pins());
        let cfg = client_config(&a, client_trust).unwrap();
        let err = check_over(channel_to(&forged_addr, 2, cfg.clone()).unwrap())
            .await
            .unwrap_err();
        assert!(err.contains("invalid peer certificate"), "{err}");
        let real = check_over(channel_to(&addr.to_string(), 2, cfg).unwrap()).await;
        assert_eq!(real.unwrap(), "1");
    }

    fn ca_der_of(id: &Identity) -> Vec<u8> {
        CertificateDer::from_pem_slice(id.cert_pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn connections_are_split_by_whether_a_certificate_was_presented() {
        use futures::StreamExt;
        let ca = Ca::generate().unwrap();
        let a = identity(&ca, 1);
        let b = identity(&ca, 2);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mut members, mut anonymous) =
            split_by_certificate(incoming(listener, server_config(&b, Trust::new()).unwrap()));
        let _member = raw_handshake(addr, client_config(&a, Trust::new()).unwrap())
            .await
            .unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), members.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(conn.info().node_id, Some(1));
        let _joiner = raw_handshake(addr, join_client_config(&ca.fingerprint()).unwrap())
            .await
            .unwrap();
        let conn = tokio::time::timeout(Duration::from_secs(5), anonymous.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(conn.info().node_id, None);
    }

    #[test]
    fn channel_addresses_are_validated() {
        let cfg = join_client_config(&"ab".repeat(32)).unwrap();
        // Lazy channels need a runtime only once used; building one needs it too.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            assert!(channel("127.0.0.1:7000", cfg.clone()).is_ok());
            assert!(channel("node-1.example:7000", cfg.clone()).is_ok());
            assert!(channel("[::1]:7000", cfg.clone()).is_ok());
            for bad in [
                "",
                "127.0.0.1",
                "http://127.0.0.1:7000",
                "127.0.0.1:7000/x",
                " 127.0.0.1:7000",
                "user@127.0.0.1:7000",
                ":7000",
            ] {
                assert!(
                    matches!(channel(bad, cfg.clone()), Err(TlsError::BadAddress(_))),
                    "{bad:?}"
                );
            }
        });
    }
}
