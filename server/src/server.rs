//! Wiring: open the engine, bind the listeners, announce readiness, serve until SIGTERM/SIGINT, then
//! shut down gracefully: readiness goes false, listeners stop accepting, in-flight requests finish,
//! live streams end, the engine flushes and closes.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use trackstore_engine::{Durability as EngineDurability, Engine, EngineOptions};

use crate::api::{self, App};
use crate::config::{Config, Durability, Listen};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::net::{self, Shared};
use crate::tls;

/// How long shutdown waits for the audit writer to write what is queued.
const AUDIT_DRAIN_MAX: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("opening the store in {dir}: {source}")]
    Engine {
        dir: String,
        source: trackstore_engine::Error,
    },
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Runtime(String),
}

/// Binds the TLS TCP listener and the UDP socket of HTTP/3 on the same port number. With port 0 the
/// TCP port is picked by the system and the UDP bind may find it taken: try again a few times.
async fn bind_https(
    addr: SocketAddr,
    quic: &quinn::ServerConfig,
) -> Result<(TcpListener, quinn::Endpoint), ServerError> {
    let mut last_err = None;
    for _ in 0..(if addr.port() == 0 { 16 } else { 1 }) {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind {
                what: "HTTPS (TCP)",
                addr,
                source,
            })?;
        let bound = tcp.local_addr().map_err(|source| ServerError::Bind {
            what: "HTTPS (TCP)",
            addr,
            source,
        })?;
        match quinn::Endpoint::server(quic.clone(), bound) {
            Ok(ep) => return Ok((tcp, ep)),
            Err(source) => {
                last_err = Some(ServerError::Bind {
                    what: "HTTP/3 (UDP)",
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(last_err.expect("at least one try"))
}

/// SIGTERM and SIGINT, installed before the ready line so that a signal right after it is graceful.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, ServerError> {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate())
            .map_err(|e| ServerError::Runtime(format!("installing the SIGTERM handler: {e}")))?;
        let int = signal(SignalKind::interrupt())
            .map_err(|e| ServerError::Runtime(format!("installing the SIGINT handler: {e}")))?;
        Ok(Signals { term, int })
    }

    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub async fn run(config: Config) -> Result<(), ServerError> {
    tls::install_crypto_provider();
    let mut signals = Signals::install()?;
    let mut options = EngineOptions {
        durability: match config.durability {
            Durability::Sync => EngineDurability::Sync,
            Durability::NosyncUnsafe => EngineDurability::NoSyncUnsafe,
        },
        ..EngineOptions::default()
    };
    let memory_limit = trackstore_engine::memory::limit_bytes();
    if let Some(bytes) = config.block_cache_bytes {
        options.tuning.block_cache_bytes = bytes;
        if memory_limit.is_some_and(|limit| bytes as u64 > limit / 2) {
            tracing::warn!(
                block_cache_mib = bytes >> 20,
                memory_limit_mib = memory_limit.map(|b| b >> 20),
                "the block cache is over half the memory limit: expect the process to be killed \
                 for memory once the cache fills"
            );
        }
    }
    tracing::info!(
        block_cache_mib = options.tuning.block_cache_bytes >> 20,
        memory_limit_mib = memory_limit.map(|b| b >> 20),
        "engine tuning"
    );
    if config.durability == Durability::NosyncUnsafe {
        tracing::warn!("durability nosync-unsafe: acknowledged writes can be lost on power loss");
    }
    // A replica without a store first installs a snapshot of its primary, if the primary sends one:
    // the engine below then opens it and the follower continues after its last LSN.
    let bootstrapped = if config.replica_of.is_some() && config.tls_ca.is_some() {
        let id = tls::identity(
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
            &config.data,
        )?;
        let node_tls = crate::replication::node_tls(&config, Some(id))?;
        tokio::select! {
            b = crate::replication::bootstrap_if_empty(&config, node_tls.as_deref()) => b?,
            signal = signals.wait() => {
                tracing::info!(signal, "stopped during the snapshot bootstrap; nothing was installed");
                return Ok(());
            }
        }
    } else {
        None
    };
    let data = config.data.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::open(&data, options))
        .await
        .map_err(|e| ServerError::Runtime(e.to_string()))?
        .map_err(|source| ServerError::Engine {
            dir: config.data.display().to_string(),
            source,
        })?;
    let engine = Arc::new(engine);
    if engine.epoch_history().is_empty() {
        // A fresh store starts the first epoch of its history: replicas and promotion build on it.
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.record_epoch(1))
            .await
            .map_err(|e| ServerError::Runtime(e.to_string()))?
            .map_err(|source| ServerError::Engine {
                dir: config.data.display().to_string(),
                source,
            })?;
    }
    let audit = crate::audit::Audit::open(&config.data)
        .map_err(|e| ServerError::Runtime(format!("opening the audit log: {e}")))?;
    crate::auth::log_posture(&config.auth, config.http, config.https);
    let metrics = Arc::new(Metrics::new());
    let hub = Arc::new(Hub::new(engine.last_lsn()));
    {
        let (hub, metrics) = (hub.clone(), metrics.clone());
        engine.on_commit(move |info| {
            metrics.observe_commit(info);
            hub.publish(info);
        });
    }

    let identity = tls::identity(
        config.tls_cert.as_deref(),
        config.tls_key.as_deref(),
        &config.data,
    )?;
    let limits = config.limits.clone();
    let (http, https) = (config.http, config.https);
    let http_listener = match http {
        Listen::Off => None,
        Listen::On(addr) => {
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind {
                        what: "HTTP",
                        addr,
                        source,
                    })?,
            )
        }
    };
    let https_listeners = match https {
        Listen::Off => None,
        Listen::On(addr) => {
            let quic = net::h3_server_config(tls::h3_config(&identity)?, &limits)
                .map_err(ServerError::Config)?;
            Some(bind_https(addr, &quic).await?)
        }
    };
    let h3_port = https_listeners
        .as_ref()
        .and_then(|(tcp, _)| tcp.local_addr().ok())
        .map(|a| a.port());

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let replication = crate::replication::Replication::start(
        engine.clone(),
        &config,
        crate::replication::node_tls(&config, config.tls_cert.is_some().then(|| identity.clone()))?,
        bootstrapped,
        metrics.clone(),
        shutdown_rx.clone(),
    )
    .await?;
    let maintenance = Arc::new(crate::maintenance::Maintenance::new(
        engine.clone(),
        metrics.clone(),
        config.maintenance.clone(),
    ));
    let maintenance_task = tokio::spawn(maintenance.clone().run(shutdown_rx.clone()));
    let app = Arc::new(App {
        replication: replication.clone(),
        engine: engine.clone(),
        hub,
        maintenance,
        metrics: metrics.clone(),
        limits: limits.clone(),
        inflight: Arc::new(Semaphore::new(limits.max_inflight_requests)),
        body_budget: Arc::new(Semaphore::new(api::body_budget_permits(
            limits.max_inflight_body_bytes,
        ))),
        shutdown: shutdown_rx.clone(),
        shutting_down: AtomicBool::new(false),
        h3_port,
    });
    let shared = Shared {
        router: api::router_with_auth(
            app.clone(),
            Arc::new(crate::auth::Auth::new(
                &config.auth,
                metrics.clone(),
                Some(audit.clone()),
            )),
        ),
        limits: limits.clone(),
        connections: Arc::new(Semaphore::new(limits.max_connections)),
        metrics,
        shutdown: shutdown_rx,
    };

    let mut tasks = tokio::task::JoinSet::new();
    let mut ready = json!({"event": "ready", "data": config.data.display().to_string(),
        "http": null, "https": null, "h3": null, "replication": null});
    if let Some(l) = http_listener {
        ready["http"] = json!(l.local_addr().map(|a| a.to_string()).unwrap_or_default());
        tasks.spawn(net::serve_tcp(l, None, "http", shared.clone()));
    }
    if let Some((tcp, endpoint)) = https_listeners {
        let addr = tcp.local_addr().map(|a| a.to_string()).unwrap_or_default();
        ready["https"] = json!(addr);
        ready["h3"] = json!(addr);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls::https_config(&identity)?);
        tasks.spawn(net::serve_tcp(tcp, Some(acceptor), "https", shared.clone()));
        tasks.spawn(net::serve_h3(endpoint, shared.clone()));
    }
    if let Some(addr) = replication.listening() {
        ready["replication"] = json!(addr.to_string());
    }
    ready["role"] = json!(match replication.role() {
        crate::replication::Role::Primary => "primary",
        crate::replication::Role::Replica { .. } => "replica",
    });
    tracing::info!(
        http = %ready["http"], https = %ready["https"], data = %config.data.display(),
        last_lsn = engine.last_lsn().0, "trackstore ready"
    );
    // One machine-readable line on stdout for scripts and tests (ports chosen with :0 included).
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{ready}");
        let _ = out.flush();
    }

    let signal = signals.wait().await;
    app.shutting_down.store(true, Ordering::Release);
    if !limits.shutdown_drain.is_zero() {
        tracing::info!(
            signal,
            drain_ms = limits.shutdown_drain.as_millis() as u64,
            "shutting down: /readyz is 503, still accepting while load balancers drop this node"
        );
        tokio::select! {
            _ = tokio::time::sleep(limits.shutdown_drain) => {}
            s = signals.wait() => tracing::info!(signal = s, "second signal: the drain is cut short"),
        }
    }
    tracing::info!(signal, "shutting down: finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    while tasks.join_next().await.is_some() {}
    // A retention step in progress finishes (it is one short write); a running purge is waited for.
    let _ = maintenance_task.await;
    drop(shared);
    drop(app);
    replication.stop().await;
    drop(replication);
    let e = engine.clone();
    let flushed = tokio::task::spawn_blocking(move || e.flush()).await;
    if let Ok(Err(err)) = flushed {
        tracing::warn!(error = %err, "flush at shutdown failed; the WAL still holds every acknowledged write");
    }
    match Arc::try_unwrap(engine) {
        Ok(engine) => tokio::task::spawn_blocking(move || engine.close())
            .await
            .map_err(|e| ServerError::Runtime(e.to_string()))?,
        Err(_) => tracing::warn!(
            "engine still referenced at exit (a straggling stream); its writes are durable already"
        ),
    }
    // Last: records of admin requests cut off above are written before the process exits.
    if !audit.close(AUDIT_DRAIN_MAX).await {
        tracing::warn!("the audit log writer did not finish in time; records may be missing");
    }
    tracing::info!("stopped");
    Ok(())
}
