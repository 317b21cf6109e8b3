//! Listeners: HTTP/1.1 and HTTP/2 on TCP (cleartext, or TLS with ALPN) through hyper, and HTTP/3 on
//! QUIC through quinn + h3, all handing requests to the same axum `Router`. Connections are bounded by
//! one semaphore across listeners; shutdown stops accepting and lets in-flight requests finish.
//!
//! A connection slot is only worth holding for a client that sends requests: a connection on which
//! no request head is complete within `header_read_timeout` of its start is closed (TCP: of its
//! accept, TLS: of the end of the handshake, QUIC: of the end of the handshake), and a QUIC client
//! must prove its address (Retry) before it gets a slot at all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::quic::{ConnectionErrorIncoming, SendStream as _, StreamErrorIncoming, StreamId, WriteBuf};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulConnection, GracefulShutdown};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::Limits;
use crate::metrics::{ListenerLabels, Metrics, ReasonLabels};

/// Time allowed for a TLS or QUIC handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes of a request's header section, as RFC 9113 (SETTINGS_MAX_HEADER_LIST_SIZE) and RFC 9114
/// (SETTINGS_MAX_FIELD_SECTION_SIZE) count them: every name and value plus 32 bytes per field.
/// hyper's HTTP/2 default, set explicitly so that HTTP/2 and HTTP/3 share one documented bound
/// (h3's default is 2^62). Larger: HTTP/2 and HTTP/3 answer 431.
pub const HEADER_SECTION_BYTES_MAX: u32 = 16 * 1024;

/// Bytes an HTTP/3 frame other than DATA may declare on a request stream or on the control stream.
/// h3 0.0.8 buffers such a frame whole (until its declared length arrived) before it looks at it,
/// and quinn returns flow-control credit as h3 reads, so without this bound one client could make
/// the server buffer without limit before any authentication. A larger frame is refused as soon as
/// its length is read. Four times the header section bound: no QPACK encoding of a section within
/// the bound is longer (a Huffman code takes at most 30 bits per octet and a field line's overhead
/// is under the 32 bytes the section size counts per field), so a section somewhat over the bound
/// still reaches h3's own check and gets its 431.
const H3_FRAME_BYTES_MAX: u64 = 4 * HEADER_SECTION_BYTES_MAX as u64;

/// Unidirectional streams a client may have open on an HTTP/3 connection.
const H3_UNI_STREAMS_MAX: u32 = 8;

/// Bytes a client may have sent on an HTTP/3 connection that the server has not read yet (QUIC's
/// connection-level flow-control window).
const H3_CONNECTION_WINDOW_BYTES: u32 = 16 * 1024 * 1024;

/// After the no-request deadline: how long a TCP connection gets to close cleanly (HTTP/2: the
/// GOAWAY that tells a client about to send its first request that nothing was processed) before it
/// is dropped. A request whose head completes within it is served.
const NO_REQUEST_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What every listener shares.
#[derive(Clone, Debug)]
pub struct Shared {
    pub router: Router,
    pub limits: Limits,
    pub connections: Arc<Semaphore>,
    pub metrics: Arc<Metrics>,
    pub shutdown: watch::Receiver<bool>,
}

struct OpenConnection {
    metrics: Arc<Metrics>,
    listener: &'static str,
}

impl OpenConnection {
    fn new(metrics: Arc<Metrics>, listener: &'static str) -> OpenConnection {
        metrics
            .connections
            .get_or_create(&ListenerLabels { listener })
            .inc();
        OpenConnection { metrics, listener }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics
            .connections
            .get_or_create(&ListenerLabels {
                listener: self.listener,
            })
            .dec();
    }
}

async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Serves HTTP/1.1 and HTTP/2 (h2c prior knowledge on cleartext, ALPN with TLS) until shutdown, then
/// waits up to the grace period for open connections to finish their requests.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    name: &'static str,
    shared: Shared,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.limits.max_quic_streams)
        .max_header_list_size(HEADER_SECTION_BYTES_MAX)
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = shared.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown_signalled(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown_signalled(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        // A client that stops reading must not keep its connection, the responses queued on it and
        // their in-flight permits for ever (hyper has no write timeout): a write may wait for it as
        // long as a request may take.
        let stream = WriteStallLimit::new(stream, shared.limits.request_timeout);
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_request = Arc::new(AtomicBool::new(false));
        let service = MarkFirstRequest {
            inner: TowerToHyperService::new(shared.router.clone()),
            started: first_request.clone(),
        };
        let tls = tls.clone();
        let open = OpenConnection::new(shared.metrics.clone(), name);
        let header_read_timeout = shared.limits.header_read_timeout;
        let conn_shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            // `graceful.shutdown()` below waits until every watcher is dropped, so holding it
            // keeps this connection counted; the signal to close gracefully comes from
            // `conn_shutdown` (the one that also ends the accept loop), because `drive_connection`
            // must also close the connection itself when no request comes.
            let _watcher = watcher;
            let result = match tls {
                None => {
                    let conn = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .into_owned();
                    drive_connection(conn, &first_request, header_read_timeout, conn_shutdown).await
                }
                Some(acceptor) => {
                    let tls_stream = match tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    // The first request's clock starts after the handshake, which has its own
                    // bound: as hyper's HTTP/1 header timer, which also starts here.
                    let conn = builder
                        .serve_connection(TokioIo::new(tls_stream), service)
                        .into_owned();
                    drive_connection(conn, &first_request, header_read_timeout, conn_shutdown).await
                }
            };
            match result {
                Ok(()) => {}
                Err(e @ ConnectionEnd::NoRequest(_)) => {
                    tracing::debug!(%peer, listener = name, "connection closed: {e}");
                }
                Err(ConnectionEnd::Protocol(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(shared.limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            "connections still open after the shutdown grace period"
        );
    }
}

/// A TCP stream (under TLS, if any) whose writes fail with `TimedOut` once one has waited
/// `limit` for the peer to make room, with no write completing meanwhile: hyper then drops the
/// connection. Reads pass through (their waits are bounded by the header and request timeouts).
struct WriteStallLimit<S> {
    inner: S,
    limit: Duration,
    /// Made at the first write that waits, then re-armed: most connections never wait.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<S> WriteStallLimit<S> {
    fn new(inner: S, limit: Duration) -> WriteStallLimit<S> {
        WriteStallLimit {
            inner,
            limit,
            timer: None,
            armed: false,
        }
    }

    fn bound<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if r.is_ready() {
            self.armed = false;
            return r;
        }
        let deadline = tokio::time::Instant::now() + self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            timer.as_mut().reset(deadline);
            self.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the client read nothing for {:?}", self.limit),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteStallLimit<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteStallLimit<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.bound(cx, r)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.bound(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    // A TCP stream's flush and shutdown never wait: they pass through, and only writes, whose
    // completion is the progress that counts, arm and disarm the timer.
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router's hyper service, marking on its connection that a request started: hyper calls a
/// service once a request head is complete (HTTP/1.1) or a stream's HEADERS arrived (HTTP/2).
#[derive(Clone, Debug)]
struct MarkFirstRequest<S> {
    inner: S,
    started: Arc<AtomicBool>,
}

impl<S, R> hyper::service::Service<R> for MarkFirstRequest<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> S::Future {
        self.started.store(true, Ordering::Release);
        self.inner.call(req)
    }
}

/// How a TCP connection ended, when not by itself or by a graceful shutdown.
#[derive(Debug, thiserror::Error)]
enum ConnectionEnd {
    #[error("no request within {0:?}")]
    NoRequest(Duration),
    #[error(transparent)]
    Protocol(Box<dyn std::error::Error + Send + Sync>),
}

/// Where a connection stands with respect to the no-request deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstRequest {
    /// No request yet: at the deadline the connection is told to close.
    Awaiting,
    /// The deadline passed without a request: the connection was told to close and is dropped at
    /// the end of the grace period unless a request started in between.
    Closing,
    /// A request started: from here on hyper's own timers apply (HTTP/1.1 `header_read_timeout`
    /// between requests, HTTP/2 keep-alive pings).
    Started,
}

/// Serves one HTTP/1.1 or HTTP/2 connection to its end, a graceful close on shutdown, or the
/// no-request deadline: `header_read_timeout` after this call, if no request started (`started`,
/// set by [`MarkFirstRequest`]), the connection is closed. hyper has no such timer of its own: the
/// auto builder first reads up to 24 bytes to tell HTTP/1.1 from the HTTP/2 preface without one,
/// HTTP/1.1's header timer starts only after that, and HTTP/2 has none before a stream.
async fn drive_connection<C>(
    conn: C,
    started: &AtomicBool,
    header_read_timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ConnectionEnd>
where
    C: GracefulConnection<Error = Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(header_read_timeout);
    tokio::pin!(deadline);
    let mut first = FirstRequest::Awaiting;
    let mut shutting_down = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                // Told to close for want of a request (the protocol sniffing cancelled, a half-read
                // head cut, an HTTP/2 GOAWAY acknowledged): however it ended, that is why.
                if first == FirstRequest::Closing && !started.load(Ordering::Acquire) {
                    return Err(ConnectionEnd::NoRequest(header_read_timeout));
                }
                return r.map_err(ConnectionEnd::Protocol);
            }
            () = &mut deadline, if first != FirstRequest::Started => {
                // The service is called from within `conn`'s poll, on this task: no request can
                // start between this load and the close below.
                if started.load(Ordering::Acquire) {
                    first = FirstRequest::Started;
                    continue;
                }
                if first == FirstRequest::Closing {
                    return Err(ConnectionEnd::NoRequest(header_read_timeout));
                }
                // Ends a connection still sniffing the protocol at once, closes an idle HTTP/1.1
                // one (hyper's own header timer ends one with a partial head), and sends HTTP/2's
                // GOAWAY.
                if !shutting_down {
                    conn.as_mut().graceful_shutdown();
                }
                first = FirstRequest::Closing;
                deadline
                    .as_mut()
                    .reset(tokio::time::Instant::now() + NO_REQUEST_CLOSE_GRACE);
            }
            () = shutdown_signalled(&mut shutdown), if !shutting_down => {
                shutting_down = true;
                if first != FirstRequest::Closing {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The quinn endpoint configuration of the HTTP/3 listener.
pub fn h3_server_config(
    tls: rustls::ServerConfig,
    limits: &Limits,
) -> Result<quinn::ServerConfig, String> {
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| format!("QUIC TLS configuration: {e}"))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(limits.max_quic_streams.into())
        // quinn buffers what a client sends up to each stream's window (1.25 MB) whether anyone
        // reads it or not, and h3 never reads the QPACK streams: with quinn's defaults (100
        // unidirectional streams, no connection-wide window) one connection could park 125 MB
        // here. HTTP/3 needs 3 unidirectional streams (control, QPACK encoder and decoder) plus
        // the odd grease stream; a connection's unread bytes are capped at 16 MiB (an 8 MiB body
        // still fits whole).
        .max_concurrent_uni_streams(H3_UNI_STREAMS_MAX.into())
        .receive_window(H3_CONNECTION_WINDOW_BYTES.into())
        .max_idle_timeout(Some(
            Duration::from_secs(60)
                .try_into()
                .map_err(|e| format!("{e}"))?,
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Serves HTTP/3 on a quinn endpoint until shutdown, then lets open requests finish.
pub async fn serve_h3(endpoint: quinn::Endpoint, shared: Shared) {
    let mut connections = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = shutdown_signalled(&mut shutdown) => break,
        };
        while connections.try_join_next().is_some() {}
        // A slot only for a client that proved it receives at its address: an Initial packet is
        // one unauthenticated UDP datagram, so without this a sender of Initials from spoofed
        // addresses would hold slots for up to HANDSHAKE_TIMEOUT each. A Retry keeps no state here
        // (the token is an HMAC of the address) and costs a real client one round trip; a client
        // holding a NEW_TOKEN from an earlier connection skips it.
        if !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                // Not reached: quinn allows a Retry whenever the address is not validated.
                e.into_incoming().refuse();
            }
            continue;
        }
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared
                .metrics
                .overload_rejections
                .get_or_create(&ReasonLabels {
                    reason: "connections",
                })
                .inc();
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let _open = OpenConnection::new(shared.metrics.clone(), "h3");
            if let Err(e) = h3_connection(incoming, shared).await {
                tracing::debug!(error = %e, "HTTP/3 connection ended with an error");
            }
        });
    }
    let drained = tokio::time::timeout(shared.limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("HTTP/3 connections still open after the shutdown grace period");
    }
    endpoint.close(0u32.into(), b"shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

async fn h3_connection(incoming: quinn::Incoming, shared: Shared) -> Result<(), String> {
    let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming)
        .await
        .map_err(|_| "QUIC handshake timed out".to_string())?
        .map_err(|e| format!("QUIC handshake: {e}"))?;
    // As on TCP: a connection on which no request head resolved within the header read timeout
    // of the handshake's end is closed (QUIC's idle timeout alone would let a client that only
    // sends PINGs hold its slot for ever). The clock covers h3's setup too, which waits for the
    // client to allow the server's control stream.
    let header_read_timeout = shared.limits.header_read_timeout;
    let send_timeout = shared.limits.request_timeout;
    let no_request_deadline = tokio::time::Instant::now() + header_read_timeout;
    let mut builder = h3::server::builder();
    builder.max_field_section_size(HEADER_SECTION_BYTES_MAX.into());
    let setup = builder.build::<_, Bytes>(GuardedConnection(h3_quinn::Connection::new(conn)));
    let mut h3 = tokio::time::timeout_at(no_request_deadline, setup)
        .await
        .map_err(|_| format!("HTTP/3 setup not done within {header_read_timeout:?}"))?
        .map_err(|e| format!("HTTP/3 setup: {e}"))?;
    let first_request = Arc::new(AtomicBool::new(false));
    let no_request = tokio::time::sleep_until(no_request_deadline);
    tokio::pin!(no_request);
    let mut awaiting_first = true;
    let mut requests = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    let router = shared.router.clone();
                    let first_request = first_request.clone();
                    requests.spawn(async move {
                        if let Err(e) =
                            h3_request(
                                resolver,
                                router,
                                header_read_timeout,
                                send_timeout,
                                &first_request,
                            )
                            .await
                        {
                            tracing::debug!(error = %e, "HTTP/3 request failed");
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "HTTP/3 connection closed");
                    break;
                }
            },
            () = &mut no_request, if awaiting_first => {
                awaiting_first = false;
                if !first_request.load(Ordering::Acquire) {
                    tracing::debug!(
                        timeout = ?header_read_timeout,
                        "HTTP/3 connection closed: no request"
                    );
                    // GOAWAY: streams already accepted may still resolve (each within the header
                    // read timeout) and be served below. Bounded: the peer's flow control could
                    // hold the control stream's GOAWAY for ever.
                    let _ = tokio::time::timeout(NO_REQUEST_CLOSE_GRACE, h3.shutdown(0)).await;
                    break;
                }
            }
            _ = shutdown_signalled(&mut shutdown) => {
                // GOAWAY: the client sends no new request here; the open ones finish below.
                let _ = h3.shutdown(0).await;
                break;
            }
        }
        while requests.try_join_next().is_some() {}
    }
    // Keep `h3` alive until the requests finish: dropping it closes the QUIC connection.
    while requests.join_next().await.is_some() {}
    drop(h3);
    Ok(())
}

type H3Resolver = h3::server::RequestResolver<GuardedConnection, Bytes>;

/// The bridge: an HTTP/3 request becomes an `http::Request<Body>` for the router, and the response
/// body's frames are streamed back as HTTP/3 DATA frames (so SSE works over HTTP/3 too).
async fn h3_request(
    resolver: H3Resolver,
    router: Router,
    header_read_timeout: Duration,
    send_timeout: Duration,
    first_request: &AtomicBool,
) -> Result<(), String> {
    // The head within the header read timeout of the stream's first bytes (quinn opens a stream
    // when its first frame arrives), as hyper's HTTP/1.1 header timer; the guard bounds its bytes.
    let (req, stream) = tokio::time::timeout(header_read_timeout, resolver.resolve_request())
        .await
        .map_err(|_| format!("no complete request head within {header_read_timeout:?}"))?
        .map_err(|e| format!("reading the request head: {e}"))?;
    first_request.store(true, Ordering::Release);
    let (mut send, recv) = stream.split();
    let body_stream = futures_util::stream::unfold(Some(recv), |recv| async move {
        let mut recv = recv?;
        match recv.recv_data().await {
            Ok(Some(mut chunk)) => {
                let bytes = chunk.copy_to_bytes(chunk.remaining());
                Some((Ok(bytes), Some(recv)))
            }
            Ok(None) => None,
            Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
        }
    });
    let req = req.map(|()| Body::from_stream(body_stream));
    let resp = router
        .oneshot(req)
        .await
        .map_err(|e: std::convert::Infallible| e.to_string())?;
    let (parts, mut body) = resp.into_parts();
    // Each send waits for the client's flow control: one that waits longer than a request may
    // take resets the stream, so a client that stops reading does not keep the response (and its
    // in-flight permit) for ever. Per send, not per response: a live stream runs for hours.
    let stalled = |what: &str| format!("{what}: the client read nothing for {send_timeout:?}");
    let head = tokio::time::timeout(
        send_timeout,
        send.send_response(http::Response::from_parts(parts, ())),
    )
    .await;
    let sent: Result<(), String> = async {
        head.map_err(|_| stalled("sending the response head"))?
            .map_err(|e| format!("sending the response head: {e}"))?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("response body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                tokio::time::timeout(send_timeout, send.send_data(data))
                    .await
                    .map_err(|_| stalled("sending the response body"))?
                    .map_err(|e| format!("sending the response body: {e}"))?;
            }
        }
        tokio::time::timeout(send_timeout, send.finish())
            .await
            .map_err(|_| stalled("finishing the response"))?
            .map_err(|e| format!("finishing the response: {e}"))
    }
    .await;
    if sent.is_err() {
        send.stop_stream(Code::H3_REQUEST_CANCELLED);
    }
    sent
}

// ---------------------------------------------------------------------------------------------
// HTTP/3 frame guard
// ---------------------------------------------------------------------------------------------

/// The unidirectional stream type of the control stream (RFC 9114 §6.2.1).
const H3_CONTROL_STREAM_TYPE: u64 = 0x00;
/// The DATA frame type (RFC 9114 §7.2.1): the only frame whose payload h3 streams instead of
/// buffering (request bodies are bounded by the router).
const H3_DATA_FRAME_TYPE: u64 = 0x00;

/// An HTTP/3 frame over [`H3_FRAME_BYTES_MAX`] that is not DATA.
#[derive(Debug, thiserror::Error)]
#[error(
    "HTTP/3 frame of type {frame_type:#x} declares {length} bytes, over the bound of \
     {H3_FRAME_BYTES_MAX}"
)]
struct FrameTooLarge {
    frame_type: u64,
    length: u64,
}

/// A QUIC variable-length integer (RFC 9000 §16) read a byte at a time.
#[derive(Clone, Copy, Debug, Default)]
struct VarIntReader {
    value: u64,
    read: u8,
    len: u8,
}

impl VarIntReader {
    /// Takes the next byte; the value once its last byte arrived.
    fn push(&mut self, byte: u8) -> Option<u64> {
        if self.read == 0 {
            // The two high bits of the first byte give the length: 1, 2, 4 or 8 bytes.
            self.len = 1 << (byte >> 6);
            self.value = u64::from(byte & 0x3f);
        } else {
            self.value = (self.value << 8) | u64::from(byte);
        }
        self.read += 1;
        if self.read < self.len {
            return None;
        }
        let value = self.value;
        *self = VarIntReader::default();
        Some(value)
    }
}

/// Where the guard is in a stream's byte sequence.
#[derive(Clone, Copy, Debug)]
enum GuardState {
    /// A unidirectional stream's type: the control stream is framed, the others are passed on
    /// unread (h3 reads nothing of the QPACK streams and stops the unknown ones).
    StreamType(VarIntReader),
    FrameType(VarIntReader),
    FrameLength {
        frame_type: u64,
        length: VarIntReader,
    },
    Payload {
        remaining: u64,
    },
    Unframed,
    /// After a refused frame: every later chunk is refused too.
    Refused {
        frame_type: u64,
        length: u64,
    },
}

/// Follows the HTTP/3 frame headers (type, length) on one receive stream, as the bytes pass from
/// quinn to h3, and refuses a frame other than DATA that declares more than [`H3_FRAME_BYTES_MAX`]
/// as soon as its length is read: before h3 buffers any of it. A request stream and the control
/// stream are framed; WebTransport (whose frames have no length) is not enabled.
#[derive(Clone, Copy, Debug)]
struct FrameGuard {
    state: GuardState,
}

impl FrameGuard {
    /// For a bidirectional (request) stream: frames from its first byte.
    fn bidirectional() -> FrameGuard {
        FrameGuard {
            state: GuardState::FrameType(VarIntReader::default()),
        }
    }

    /// For a unidirectional stream: its type first.
    fn unidirectional() -> FrameGuard {
        FrameGuard {
            state: GuardState::StreamType(VarIntReader::default()),
        }
    }

    /// Follows `bytes`, the next bytes of the stream.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), FrameTooLarge> {
        while let Some((&byte, rest)) = bytes.split_first() {
            match &mut self.state {
                GuardState::Unframed => return Ok(()),
                GuardState::Refused { frame_type, length } => {
                    return Err(FrameTooLarge {
                        frame_type: *frame_type,
                        length: *length,
                    });
                }
                GuardState::Payload { remaining } => {
                    // Skipped whole: a DATA payload can be large, and is not looked at.
                    let n = usize::try_from(*remaining).map_or(bytes.len(), |r| r.min(bytes.len()));
                    *remaining -= n as u64;
                    bytes = &bytes[n..];
                    if *remaining == 0 {
                        self.state = GuardState::FrameType(VarIntReader::default());
                    }
                    continue;
                }
                GuardState::StreamType(reader) => {
                    if let Some(stream_type) = reader.push(byte) {
                        self.state = if stream_type == H3_CONTROL_STREAM_TYPE {
                            GuardState::FrameType(VarIntReader::default())
                        } else {
                            GuardState::Unframed
                        };
                    }
                }
                GuardState::FrameType(reader) => {
                    if let Some(frame_type) = reader.push(byte) {
                        self.state = GuardState::FrameLength {
                            frame_type,
                            length: VarIntReader::default(),
                        };
                    }
                }
                GuardState::FrameLength { frame_type, length } => {
                    if let Some(length) = length.push(byte) {
                        let frame_type = *frame_type;
                        if frame_type != H3_DATA_FRAME_TYPE && length > H3_FRAME_BYTES_MAX {
                            self.state = GuardState::Refused { frame_type, length };
                            return Err(FrameTooLarge { frame_type, length });
                        }
                        self.state = if length == 0 {
                            GuardState::FrameType(VarIntReader::default())
                        } else {
                            GuardState::Payload { remaining: length }
                        };
                    }
                }
            }
            bytes = rest;
        }
        Ok(())
    }
}

/// Runs `guard` over a chunk h3 is about to receive; on a refused frame, stops the stream with
/// H3_EXCESSIVE_LOAD (RFC 9114 §8.1) and hands h3 the error (which ends that request, or for the
/// control stream the connection) instead of the chunk.
fn guard_chunk(
    guard: &mut FrameGuard,
    chunk: Poll<Result<Option<Bytes>, StreamErrorIncoming>>,
    stop: impl FnOnce(u64),
) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
    let chunk = ready!(chunk)?;
    if let Some(bytes) = &chunk
        && let Err(e) = guard.inspect(bytes)
    {
        stop(Code::H3_EXCESSIVE_LOAD.value());
        return Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(e))));
    }
    Poll::Ready(Ok(chunk))
}

/// h3_quinn's connection with a [`FrameGuard`] on every stream it receives on.
struct GuardedConnection(h3_quinn::Connection);

impl<B: Buf> h3::quic::Connection<B> for GuardedConnection {
    type RecvStream = GuardedRecvStream;
    type OpenStreams = GuardedOpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<GuardedRecvStream, ConnectionErrorIncoming>> {
        let recv = ready!(
            <h3_quinn::Connection as h3::quic::Connection<B>>::poll_accept_recv(&mut self.0, cx)
        )?;
        Poll::Ready(Ok(GuardedRecvStream {
            inner: recv,
            guard: FrameGuard::unidirectional(),
        }))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<GuardedBidiStream<B>, ConnectionErrorIncoming>> {
        let bidi = ready!(
            <h3_quinn::Connection as h3::quic::Connection<B>>::poll_accept_bidi(&mut self.0, cx)
        )?;
        Poll::Ready(Ok(GuardedBidiStream {
            inner: bidi,
            guard: FrameGuard::bidirectional(),
        }))
    }

    fn opener(&self) -> GuardedOpenStreams {
        GuardedOpenStreams(<h3_quinn::Connection as h3::quic::Connection<B>>::opener(
            &self.0,
        ))
    }
}

impl<B: Buf> h3::quic::OpenStreams<B> for GuardedConnection {
    type BidiStream = GuardedBidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<GuardedBidiStream<B>, StreamErrorIncoming>> {
        let bidi = ready!(
            <h3_quinn::Connection as h3::quic::OpenStreams<B>>::poll_open_bidi(&mut self.0, cx)
        )?;
        Poll::Ready(Ok(GuardedBidiStream {
            inner: bidi,
            guard: FrameGuard::bidirectional(),
        }))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<h3_quinn::SendStream<B>, StreamErrorIncoming>> {
        <h3_quinn::Connection as h3::quic::OpenStreams<B>>::poll_open_send(&mut self.0, cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <h3_quinn::Connection as h3::quic::OpenStreams<B>>::close(&mut self.0, code, reason);
    }
}

/// h3_quinn's stream opener, opening guarded streams (h3 opens only unidirectional ones on a
/// server; a bidirectional one would be framed as a request stream).
struct GuardedOpenStreams(h3_quinn::OpenStreams);

impl<B: Buf> h3::quic::OpenStreams<B> for GuardedOpenStreams {
    type BidiStream = GuardedBidiStream<B>;
    type SendStream = h3_quinn::SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<GuardedBidiStream<B>, StreamErrorIncoming>> {
        let bidi = ready!(self.0.poll_open_bidi(cx))?;
        Poll::Ready(Ok(GuardedBidiStream {
            inner: bidi,
            guard: FrameGuard::bidirectional(),
        }))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<h3_quinn::SendStream<B>, StreamErrorIncoming>> {
        self.0.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        <h3_quinn::OpenStreams as h3::quic::OpenStreams<B>>::close(&mut self.0, code, reason);
    }
}

/// A guarded bidirectional stream: its receive side through the guard, its send side as is.
struct GuardedBidiStream<B: Buf> {
    inner: h3_quinn::BidiStream<B>,
    guard: FrameGuard,
}

impl<B: Buf> h3::quic::RecvStream for GuardedBidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let chunk = self.inner.poll_data(cx);
        let inner = &mut self.inner;
        guard_chunk(&mut self.guard, chunk, |code| {
            // The whole request is refused: stop its upload and reset its response.
            inner.stop_sending(code);
            inner.reset(code);
        })
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

impl<B: Buf> h3::quic::SendStream<B> for GuardedBidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.inner.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.inner.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.inner.reset(reset_code);
    }

    fn send_id(&self) -> StreamId {
        self.inner.send_id()
    }
}

impl<B: Buf> h3::quic::BidiStream<B> for GuardedBidiStream<B> {
    type SendStream = h3_quinn::SendStream<B>;
    type RecvStream = GuardedRecvStream;

    fn split(self) -> (h3_quinn::SendStream<B>, GuardedRecvStream) {
        let (send, recv) = self.inner.split();
        (
            send,
            GuardedRecvStream {
                inner: recv,
                guard: self.guard,
            },
        )
    }
}

/// A guarded receive stream: a unidirectional one, or a request's receive side once split off
/// (where the guard keeps bounding trailers).
struct GuardedRecvStream {
    inner: h3_quinn::RecvStream,
    guard: FrameGuard,
}

impl h3::quic::RecvStream for GuardedRecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let chunk = self.inner.poll_data(cx);
        let inner = &mut self.inner;
        guard_chunk(&mut self.guard, chunk, |code| inner.stop_sending(code))
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.inner.stop_sending(error_code);
    }

    fn recv_id(&self) -> StreamId {
        self.inner.recv_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(v: u64) -> Vec<u8> {
        match v {
            0..=63 => vec![v as u8],
            64..=16_383 => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
            16_384..=1_073_741_823 => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
            _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
        }
    }

    fn frame_head(frame_type: u64, length: u64) -> Vec<u8> {
        let mut b = varint(frame_type);
        b.extend(varint(length));
        b
    }

    #[test]
    fn varints_of_every_length_are_read() {
        for v in [0, 63, 64, 16_383, 16_384, 1 << 29, (1 << 62) - 1] {
            let mut r = VarIntReader::default();
            let bytes = varint(v);
            let (last, first) = bytes.split_last().unwrap();
            for &b in first {
                assert_eq!(r.push(b), None, "{v}");
            }
            assert_eq!(r.push(*last), Some(v));
        }
    }

    #[test]
    fn frames_within_the_bound_and_data_of_any_length_pass_byte_by_byte() {
        let mut stream = frame_head(0x01, 3);
        stream.extend([1, 2, 3]);
        stream.extend(frame_head(0x00, 1 << 40)); // DATA: not buffered by h3, any length
        stream.extend([0; 100]);
        let mut guard = FrameGuard::bidirectional();
        for b in &stream {
            guard.inspect(std::slice::from_ref(b)).unwrap();
        }
        let mut stream = frame_head(0x21, H3_FRAME_BYTES_MAX); // a reserved (grease) type
        stream.extend(vec![0; H3_FRAME_BYTES_MAX as usize]);
        stream.extend(frame_head(0x01, 0));
        FrameGuard::bidirectional().inspect(&stream).unwrap();
    }

    #[test]
    fn an_oversize_headers_frame_is_refused_at_its_length() {
        let mut guard = FrameGuard::bidirectional();
        let head = frame_head(0x01, H3_FRAME_BYTES_MAX + 1);
        let (last, first) = head.split_last().unwrap();
        guard.inspect(first).unwrap();
        let e = guard.inspect(std::slice::from_ref(last)).unwrap_err();
        assert_eq!((e.frame_type, e.length), (0x01, H3_FRAME_BYTES_MAX + 1));
        assert!(guard.inspect(&[0]).is_err(), "stays refused");
        // Trailers after a body, and unknown frame types, the same.
        let mut stream = frame_head(0x00, 2);
        stream.extend([0, 0]);
        stream.extend(frame_head(0x01, 1 << 30));
        assert!(FrameGuard::bidirectional().inspect(&stream).is_err());
        assert!(
            FrameGuard::bidirectional()
                .inspect(&frame_head(0x1f * 7 + 0x21, 1 << 20))
                .is_err()
        );
    }

    #[test]
    fn the_control_stream_is_framed_and_other_unidirectional_streams_are_not() {
        let mut control = varint(0x00);
        control.extend(frame_head(0x04, 6)); // SETTINGS
        control.extend([0; 6]);
        control.extend(frame_head(0x21, 1 << 20));
        assert!(FrameGuard::unidirectional().inspect(&control).is_err());
        let mut encoder = varint(0x02); // QPACK encoder stream: instructions, not frames
        encoder.extend(frame_head(0x01, 1 << 20));
        FrameGuard::unidirectional().inspect(&encoder).unwrap();
    }
}
