//! The HTTP server under the gateway and the dashboard: HTTP/1.1 and HTTP/2
//! on one port (hyper-util's auto builder), optionally behind TLS, with the
//! limits a port reachable from the network needs.
//!
//! * A request head must arrive within [`Limits::header_read_timeout`]
//!   (slow or half-sent requests are dropped), and an HTTP/1.1 keep-alive
//!   connection waiting for its next request is closed after the same time.
//!   A connection with no request in flight and no bytes moving for
//!   [`Limits::idle_timeout`] is closed (this covers idle HTTP/2).
//! * Request heads are at most [`Limits::max_head`] bytes and
//!   [`Limits::max_headers`] headers.
//! * The answers hyper writes by itself for a request it cannot parse (400,
//!   414 and 431) get the same JSON error body as every other error.
//!
//! Must never: keep a connection whose request head has not arrived in
//! time, buffer a head larger than the limit, or answer an error without
//! the JSON body `{"id","code","detail","status"}`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

/// How long a client may take to send a request head, by default.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers), by default.
pub const MAX_HEAD: usize = 64 * 1024;

/// The limits of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// time to send a request head (and to start the next one on a
    /// keep-alive connection)
    pub header_read_timeout: Duration,
    /// a connection with no request in flight and no traffic is closed
    /// after this long
    pub idle_timeout: Duration,
    /// time for a TLS handshake
    pub tls_handshake_timeout: Duration,
    /// the largest request head in bytes (HTTP/1.1), or header list
    /// (HTTP/2)
    pub max_head: usize,
    /// the most headers a request may have (HTTP/1.1)
    pub max_headers: usize,
    /// how long a graceful shutdown waits for requests in flight
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_head: MAX_HEAD,
            max_headers: 100,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves `app` on `listener` with the default [`Limits`] until `shutdown`
/// resolves, then lets requests in flight finish (up to the drain timeout).
/// With `tls`, every connection is a TLS handshake first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    serve_with(listener, app, tls, Limits::default(), shutdown).await
}

/// [`serve`] with chosen limits.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // The read buffer must hold a whole head: a longer one is a 431.
        .max_buf_size(limits.max_head.max(8192))
        .max_headers(limits.max_headers)
        // One contiguous write per flush: the automatic error answers are
        // recognized (and given their JSON body) in a single write.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10));
    let builder = Arc::new(builder);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let limits = Arc::new(limits);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather
                    // than spin, and keep serving the connections we have.
                    tracing::warn!("cannot accept an HTTP connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let (builder, acceptor, graceful, limits, app) = (
            builder.clone(),
            acceptor.clone(),
            graceful.watcher(),
            limits.clone(),
            app.clone(),
        );
        tokio::spawn(async move {
            match acceptor {
                None => connection(&builder, graceful, &limits, app, tcp).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(tls)) => connection(&builder, graceful, &limits, app, tls).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections still open after the drain timeout");
    }
    Ok(())
}

/// Errors of `accept` that concern one connection only.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Serves one connection until it ends, goes idle, or the server drains.
async fn connection<T>(
    builder: &auto::Builder<TokioExecutor>,
    graceful: Watcher,
    limits: &Limits,
    app: Router,
    io: T,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Guarded {
        inner: io,
        activity: activity.clone(),
        rewrite: None,
    });
    let in_flight = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let mut app = app.clone();
        let guard = InFlight::new(in_flight.clone());
        async move {
            let response = tower::Service::call(&mut app, req).await;
            drop(guard);
            response
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(io, service)
        .into_owned();
    let conn = graceful.watch(conn);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    loop {
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!("HTTP connection ended: {e}");
                }
                return;
            }
            () = tokio::time::sleep(idle) => {
                if activity.idle_for() >= idle {
                    tracing::debug!("closing an idle HTTP connection");
                    return; // dropping the connection closes it
                }
            }
        }
    }
}

/// When a connection last moved bytes, and how many requests it has in
/// flight.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has had no traffic and no request in
    /// flight (zero while a request is in flight).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Counts a request as in flight until dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(a: Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// A connection's byte stream: notes activity, and gives hyper's automatic
/// error answers their JSON body.
struct Guarded<T> {
    inner: T,
    activity: Arc<Activity>,
    /// an answer being written in place of the one hyper handed us, and
    /// the length of hyper's to report once it is out
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_none() {
            match automatic_error_with_body(buf) {
                Some(replacement) => this.rewrite = Some((replacement, 0, buf.len())),
                None => {
                    let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
                    this.activity.touch();
                    return Poll::Ready(Ok(n));
                }
            }
        }
        let Some((bytes, written, consumed)) = this.rewrite.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *written < bytes.len() {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            this.activity.touch();
        }
        let consumed = *consumed;
        this.rewrite = None;
        Poll::Ready(Ok(consumed))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// If `buf` is exactly one of the bodiless answers hyper writes for a
/// request it could not parse, the same answer with the JSON error body.
///
/// The application never answers these codes without a body, so a match is
/// hyper's own answer.
pub fn automatic_error_with_body(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let code: u16 = std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()?;
    let detail = match code {
        400 => "the request is malformed",
        414 => "the request's URI is too long",
        431 => "the request's headers are too large (the limit is 64 KiB and 100 headers)",
        _ => return None,
    };
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    if end + 4 != buf.len() {
        return None; // it has a body already
    }
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut empty = false;
    let mut kept = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            empty = value.trim() == "0";
        } else if !name.eq_ignore_ascii_case("connection")
            && !name.eq_ignore_ascii_case("content-type")
        {
            kept.push(line);
        }
    }
    if !empty {
        return None;
    }
    let body = serde_json::to_vec(&micro::errors::Error::new("micro.api", code, detail)).ok()?;
    let mut out = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for line in kept {
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server with short timeouts, its address, and what stops it.
    async fn server(limits: Limits) -> (String, tokio::sync::oneshot::Sender<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with(l, app, None, limits, async {
            rx.await.ok();
        }));
        (addr, tx)
    }

    /// A short header timeout (the idle timeout stays long).
    fn short() -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        }
    }

    /// Sends `raw`, then reads until the server closes (or 5 s pass).
    async fn exchange(addr: &str, raw: &[u8]) -> (String, Duration) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        assert!(read.is_ok(), "the server kept the connection open");
        (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
    }

    fn json_error(answer: &str, code: u16) {
        assert!(answer.starts_with(&format!("HTTP/1.1 {code} ")), "{answer}");
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], code, "{body}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }

    #[tokio::test]
    async fn half_sent_requests_are_dropped_after_the_header_timeout() {
        let (addr, _stop) = server(short()).await;
        let (answer, took) = exchange(&addr, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        assert!(!answer.contains("200 OK"), "{answer}");
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed() {
        let (addr, _stop) = server(short()).await;
        let (answer, took) = exchange(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn silent_connections_are_closed_when_idle() {
        let (addr, _stop) = server(Limits {
            header_read_timeout: Duration::from_secs(3600),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let (answer, took) = exchange(&addr, b"").await;
        assert_eq!(answer, "");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn errors_hyper_answers_by_itself_have_the_json_body() {
        let (addr, _stop) = server(short()).await;
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "v".repeat(100 * 1024)
        );
        json_error(&exchange(&addr, big.as_bytes()).await.0, 431);
        let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        json_error(&exchange(&addr, many.as_bytes()).await.0, 431);
        json_error(&exchange(&addr, b"NOT HTTP AT ALL\r\n\r\n").await.0, 400);
        json_error(
            &exchange(&addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
                .await
                .0,
            400,
        );
    }

    #[tokio::test]
    async fn shutdown_stops_the_server() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(l, app, None, async {
            rx.await.ok();
        }));
        tx.send(()).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(5), server).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    }

    #[test]
    fn hypers_bodiless_errors_get_the_json_body() {
        let raw = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Tue, 01 Dec 2026 20:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(automatic_error_with_body(raw).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains("date: Tue"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], 431);
        assert_eq!(v["status"], "Request Header Fields Too Large");

        // answers with a body, other codes, or more than a head: untouched
        assert!(automatic_error_with_body(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}"
        )
        .is_none());
        assert!(automatic_error_with_body(
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n"
        )
        .is_none());
        assert!(
            automatic_error_with_body(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none()
        );
        assert!(automatic_error_with_body(b"GET / HTTP/1.1\r\n\r\n").is_none());
    }
}
