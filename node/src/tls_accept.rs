//! The accept loop of every TLS port a node serves (the cluster port, and
//! the gRPC endpoint when it has a certificate): TCP accepts with
//! `TCP_NODELAY`, handshakes run concurrently, established connections
//! handed to tonic with the connect info the port's handlers need.
//!
//! This module must never let a slow, silent or broken handshake stall the
//! accept loop or end the stream, and never decide whom to trust: the
//! rustls configuration it is given and the port's `finish` step do.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

/// How long a server-side handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many server-side handshakes may be in flight at once; beyond that,
/// new connections wait in the listen backlog.
const MAX_PENDING_HANDSHAKES: usize = 1024;

/// How long to pause accepting after an error such as running out of file
/// descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An established server-side TLS connection, ready for tonic's
/// `serve_with_incoming*`; `info` is what tonic puts into every request's
/// extensions.
pub struct TlsConn<I> {
    inner: TlsStream<TcpStream>,
    info: I,
}

impl<I> TlsConn<I> {
    /// What the port learned about the peer.
    pub fn info(&self) -> &I {
        &self.info
    }
}

impl<I: fmt::Debug> fmt::Debug for TlsConn<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConn")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl<I: Clone + Send + Sync + 'static> Connected for TlsConn<I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<I: Unpin> AsyncRead for TlsConn<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for TlsConn<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a port does with a client that speaks plaintext HTTP/2 to it (for
/// instance, tell it in a gRPC status that the port serves TLS); it must
/// bound its own time. `None`: the connection is dropped.
pub type Plaintext = Option<fn(TcpStream) -> Pin<Box<dyn Future<Output = ()> + Send>>>;

/// The first bytes a plaintext HTTP/2 client sends.
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// The state of the accept loop behind [`incoming`].
struct Acceptor<I, F> {
    listener: TcpListener,
    tls: TlsAcceptor,
    handshakes: JoinSet<Option<TlsConn<I>>>,
    finish: F,
    plaintext: Plaintext,
    port: &'static str,
    failed: bool,
}

/// How an `accept` error affects the loop.
enum AcceptFailure {
    /// One connection went away before it was accepted; carry on.
    Connection,
    /// Probably a resource shortage (file descriptors, memory); pause, then
    /// carry on.
    Pause,
    /// The listening socket itself is unusable.
    Fatal,
}

fn classify(e: &io::Error) -> AcceptFailure {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
        | TimedOut => AcceptFailure::Connection,
        _ => match e.raw_os_error() {
            Some(libc::EBADF | libc::EINVAL | libc::ENOTSOCK | libc::EFAULT) => {
                AcceptFailure::Fatal
            }
            _ => AcceptFailure::Pause,
        },
    }
}

/// Accepts TCP connections from `listener` (with `TCP_NODELAY`), runs their
/// TLS handshakes with `cfg` concurrently, and yields the established
/// connections, each with the info `finish` makes from it (`None` drops the
/// connection; `finish` logs why). `port` names the port in the log; a
/// client speaking plaintext HTTP/2 is given to `plaintext`.
///
/// Each handshake runs in its own task with a 10 s limit; one that fails or
/// is too slow is logged at debug level and dropped, without holding up the
/// others or ending the stream. The stream yields an error, and then ends,
/// only when the listening socket fails for good. Dropping the stream closes
/// the listener and abandons handshakes still in flight.
///
/// Must be polled inside a tokio runtime.
pub fn incoming<I, F>(
    listener: TcpListener,
    cfg: Arc<rustls::ServerConfig>,
    port: &'static str,
    finish: F,
    plaintext: Plaintext,
) -> impl Stream<Item = Result<TlsConn<I>, io::Error>> + Send + 'static
where
    I: Send + 'static,
    F: Fn(&TlsStream<TcpStream>, SocketAddr) -> Option<I> + Clone + Send + Sync + 'static,
{
    let state = Acceptor {
        listener,
        tls: TlsAcceptor::from(cfg),
        handshakes: JoinSet::new(),
        finish,
        plaintext,
        port,
        failed: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.failed {
            return None;
        }
        let port = st.port;
        loop {
            let room = st.handshakes.len() < MAX_PENDING_HANDSHAKES;
            tokio::select! {
                accepted = st.listener.accept(), if room => match accepted {
                    Ok((tcp, remote)) => {
                        let (tls, finish) = (st.tls.clone(), st.finish.clone());
                        let plaintext = st.plaintext;
                        st.handshakes.spawn(async move {
                            let stream = handshake(tls, tcp, remote, port, plaintext).await?;
                            let info = finish(&stream, remote)?;
                            Some(TlsConn { inner: stream, info })
                        });
                    }
                    Err(e) => match classify(&e) {
                        AcceptFailure::Connection => {
                            tracing::debug!(error = %e, "{port}: accept failed for one connection");
                        }
                        AcceptFailure::Pause => {
                            tracing::warn!(error = %e, "{port}: accept failed; pausing");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                        }
                        AcceptFailure::Fatal => {
                            tracing::error!(error = %e, "{port}: the listener failed");
                            st.failed = true;
                            return Some((Err(e), st));
                        }
                    },
                },
                Some(done) = st.handshakes.join_next() => match done {
                    Ok(Some(conn)) => return Some((Ok(conn), st)),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "{port}: a handshake task failed");
                    }
                },
            }
        }
    })
}

/// What the client's first bytes say it speaks.
enum Opening {
    Tls,
    PlaintextH2,
    Other,
}

/// Peeks at the first bytes without consuming them; `None` if the client
/// closed or sent nothing in time.
async fn opening(tcp: &TcpStream) -> Option<Opening> {
    let mut buf = [0u8; H2_PREFACE_START.len()];
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        if buf[0] == TLS_HANDSHAKE {
            return Some(Opening::Tls);
        }
        if buf[..n] != H2_PREFACE_START[..n] {
            return Some(Opening::Other);
        }
        if n == buf.len() {
            return Some(Opening::PlaintextH2);
        }
        // A prefix of the preface so far: wait for more.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One server-side handshake; `None` if it failed (already logged) or the
/// client spoke plaintext.
async fn handshake(
    tls: TlsAcceptor,
    tcp: TcpStream,
    remote: SocketAddr,
    port: &'static str,
    plaintext: Plaintext,
) -> Option<TlsStream<TcpStream>> {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(%remote, error = %e, "{port}: cannot set TCP_NODELAY");
    }
    let result = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        match opening(&tcp).await {
            Some(Opening::PlaintextH2) => Err(Some(tcp)),
            // rustls says what is wrong with anything else.
            Some(Opening::Tls | Opening::Other) => tls.accept(tcp).await.map_err(|e| {
                tracing::debug!(%remote, error = %e, "{port}: TLS handshake failed");
                None
            }),
            None => Err(None),
        }
    })
    .await;
    match result {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(Some(tcp))) => {
            tracing::debug!(%remote, "{port}: a client spoke plaintext HTTP/2");
            if let Some(answer) = plaintext {
                answer(tcp).await;
            }
            None
        }
        Ok(Err(None)) => None,
        Err(_) => {
            tracing::debug!(%remote, "{port}: TLS handshake timed out");
            None
        }
    }
}
