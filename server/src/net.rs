//! Listeners: HTTP/1.1 and HTTP/2 on TCP (cleartext, or TLS with ALPN) through hyper, and HTTP/3 on
//! QUIC through quinn + h3, all handing requests to the same axum `Router`. Connections are bounded by
//! one semaphore across listeners; shutdown stops accepting and lets in-flight requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
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
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let service = TowerToHyperService::new(shared.router.clone());
        let tls = tls.clone();
        let open = OpenConnection::new(shared.metrics.clone(), name);
        tokio::spawn(async move {
            let _permit = permit;
            let _open = open;
            let result =
                match tls {
                    None => {
                        let conn = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(conn).await
                    }
                    Some(acceptor) => {
                        let tls_stream =
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
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
                        let conn = builder
                            .serve_connection(TokioIo::new(tls_stream), service)
                            .into_owned();
                        watcher.watch(conn).await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
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
    let mut h3 = h3::server::builder()
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await
        .map_err(|e| format!("HTTP/3 setup: {e}"))?;
    let mut requests = JoinSet::new();
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    let router = shared.router.clone();
                    requests.spawn(async move {
                        if let Err(e) = h3_request(resolver, router).await {
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

type H3Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// The bridge: an HTTP/3 request becomes an `http::Request<Body>` for the router, and the response
/// body's frames are streamed back as HTTP/3 DATA frames (so SSE works over HTTP/3 too).
async fn h3_request(resolver: H3Resolver, router: Router) -> Result<(), String> {
    let (req, stream) = resolver
        .resolve_request()
        .await
        .map_err(|e| format!("reading the request head: {e}"))?;
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
    send.send_response(http::Response::from_parts(parts, ()))
        .await
        .map_err(|e| format!("sending the response head: {e}"))?;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("response body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            send.send_data(data)
                .await
                .map_err(|e| format!("sending the response body: {e}"))?;
        }
    }
    send.finish()
        .await
        .map_err(|e| format!("finishing the response: {e}"))
}
