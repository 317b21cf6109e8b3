//! The node's role in replication (DESIGN.md §4), between the HTTP API and the `replication`
//! crate: a primary runs the replication listener; a replica runs the follower and refuses client
//! writes; promotion (now, or a planned switchover) turns a replica into a primary in place. A
//! replica started without a store first bootstraps from a snapshot of its primary when the primary
//! sends one ([`bootstrap_if_empty`], before the engine opens).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use trackstore_engine::{Engine, EngineOptions, Lsn};
use trackstore_replication::primary::{self, PrimaryOptions, PrimaryState};
use trackstore_replication::replica::{
    self, Bootstrap, Control, ReplicaOptions, ReplicaStatus, SnapshotInstalled,
};
use trackstore_replication::transport::NodeTls;

use crate::config::{Config, Listen};
use crate::metrics::Metrics;
use crate::server::ServerError;

/// How long shutdown waits for the follower and the replication listener before cancelling them.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica { primary: String },
}

#[derive(Debug)]
pub struct Replication {
    engine: Arc<Engine>,
    role: RwLock<Role>,
    pub primary_state: Arc<PrimaryState>,
    pub replica_status: Arc<Mutex<ReplicaStatus>>,
    control: Mutex<Option<mpsc::Sender<Control>>>,
    tls: Option<Arc<NodeTls>>,
    listen: Listen,
    listening: Mutex<Option<SocketAddr>>,
    head: watch::Receiver<Lsn>,
    shutdown: watch::Receiver<bool>,
    /// Serialises promotions.
    promoting: tokio::sync::Mutex<()>,
    /// The follower and the replication listener: awaited at shutdown so that the engine is released.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// How the replication listener serves replicas (primary role).
    primary_options: PrimaryOptions,
}

/// The replication identity: this node's certificate with the cluster CA, when a CA is configured.
pub fn node_tls(
    config: &Config,
    identity: Option<crate::tls::Identity>,
) -> Result<Option<Arc<NodeTls>>, ServerError> {
    match (&config.tls_ca, identity) {
        (Some(ca), Some(id)) => Ok(Some(Arc::new(
            NodeTls::new(id.chain, id.key, ca)
                .map_err(|e| ServerError::Config(format!("--tls-ca: {e}")))?,
        ))),
        _ => Ok(None),
    }
}

/// This node's name in `Hello` and in its primary's status.
fn node_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "replica".into())
}

/// A replica whose data directory holds no store yet asks its primary for a snapshot and installs
/// it, before the engine opens. Returns what was installed; None when the node starts empty and
/// follows the log from LSN 1 (the primary's log is short, or no snapshot could be asked for: the
/// follower then keeps trying and reports why). An error means a snapshot was received and failed
/// its checks or was cut off: nothing was installed and the node must not start.
pub async fn bootstrap_if_empty(
    config: &Config,
    tls: Option<&NodeTls>,
) -> Result<Option<SnapshotInstalled>, ServerError> {
    let (Some(primary), Some(tls)) = (&config.replica_of, tls) else {
        // Not a replica, or one without a CA: `Replication::start` says what is missing.
        return Ok(None);
    };
    if trackstore_engine::db_path(&config.data).exists()
        && !set_aside_if_empty(&config.data).await?
    {
        return Ok(None);
    }
    tracing::info!(%primary, "no store yet: asking the primary for a snapshot");
    let full_verify = config.replication_snapshot_verify == crate::config::SnapshotVerify::Full;
    match replica::bootstrap(&config.data, tls, primary, &node_name(), full_verify).await {
        Ok(Bootstrap::Installed(info)) => {
            tracing::info!(
                last_lsn = info.last_lsn.0,
                bytes = info.bytes,
                seconds = info.seconds,
                "bootstrapped from a snapshot; following the log after it"
            );
            Ok(Some(info))
        }
        Ok(Bootstrap::FromLog) => {
            tracing::info!("the primary's log is short: following it from LSN 1");
            Ok(None)
        }
        Ok(Bootstrap::Unavailable(why)) => {
            tracing::warn!(%primary, reason = %why,
                "no snapshot could be asked for: starting with an empty store; the follower keeps trying");
            Ok(None)
        }
        Err(e) => Err(ServerError::Runtime(format!(
            "snapshot bootstrap from {primary} failed, nothing was installed: {e}"
        ))),
    }
}

/// SST and WAL bytes past which a store is not empty, without looking inside: an empty replica store
/// holds a few KiB (its epoch notes).
const EMPTY_STORE_BYTES_MAX: u64 = 1 << 20;

/// Bytes of a store's SST and WAL files (RocksDB's info LOGs and OPTIONS files left out).
fn store_bytes(db: &Path) -> Result<u64, ServerError> {
    let mut total = 0;
    let entries = std::fs::read_dir(db)
        .map_err(|e| ServerError::Runtime(format!("reading {}: {e}", db.display())))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| ServerError::Runtime(format!("reading {}: {e}", db.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".sst") || name.ends_with(".log") {
            total += entry.metadata().map_or(0, |m| m.len());
        }
    }
    Ok(total)
}

/// A store that holds nothing (no log entry, no epoch after the first, no newer epoch heard of) is treated
/// as no store: a replica created, then stopped before its first entry while its primary's retention
/// or erasures dropped LSN 1, would otherwise be refused for good (a node with a store never installs
/// a snapshot) and need an operator to move its directory aside. Moves such a store aside (an atomic
/// rename, then deleted); leaves every other store untouched and answers false.
async fn set_aside_if_empty(data: &Path) -> Result<bool, ServerError> {
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || -> Result<bool, ServerError> {
        let runtime = |what: &str, e: &dyn std::fmt::Display| {
            ServerError::Runtime(format!("{what} {}: {e}", data.display()))
        };
        let aside = data.join("db.empty");
        // What a crash between the rename and the deletion below left.
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| runtime("removing db.empty in", &e))?;
        }
        // A store with data is known without opening it (an open replays the WAL and opens every
        // SST: seconds on a large store, at every start of a replica).
        if store_bytes(&trackstore_engine::db_path(&data))? > EMPTY_STORE_BYTES_MAX {
            return Ok(false);
        }
        let engine = Engine::open(&data, EngineOptions::default())
            .map_err(|e| runtime("opening the store in", &e))?;
        // Epoch 1 from LSN 1 is where every store starts (a replica copies it from its primary's
        // first session): no information. Any later epoch would be worth keeping, for fencing.
        let empty = engine.last_lsn() == Lsn(0)
            && engine.epoch_history().iter().all(|&e| e == (1, Lsn(1)))
            && engine.known_epoch() <= 1;
        engine.close();
        if !empty {
            return Ok(false);
        }
        tracing::info!(
            "the store holds no entry yet: replacing it by a snapshot if the primary sends one"
        );
        std::fs::rename(trackstore_engine::db_path(&data), &aside)
            .map_err(|e| runtime("moving the empty store to db.empty in", &e))?;
        std::fs::File::open(&data)
            .and_then(|d| d.sync_all())
            .map_err(|e| runtime("syncing", &e))?;
        std::fs::remove_dir_all(&aside).map_err(|e| runtime("removing db.empty in", &e))?;
        Ok(true)
    })
    .await
    .map_err(|e| ServerError::Runtime(e.to_string()))?
}

impl Replication {
    /// A primary without a replication listener (tests that build the router alone).
    pub fn standalone(engine: Arc<Engine>) -> Arc<Replication> {
        let head = watch::channel(engine.last_lsn()).1;
        let shutdown = watch::channel(false).1;
        Arc::new(Replication {
            engine,
            role: RwLock::new(Role::Primary),
            primary_state: Arc::default(),
            replica_status: Arc::default(),
            control: Mutex::new(None),
            tls: None,
            listen: Listen::Off,
            listening: Mutex::new(None),
            head,
            shutdown,
            promoting: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            primary_options: PrimaryOptions::default(),
        })
    }

    /// Starts the node in its configured role: a replica starts following; a primary opens the
    /// replication listener (when a CA is configured: replicas must be authenticated).
    /// `tls` comes from [`node_tls`]; `bootstrapped` from [`bootstrap_if_empty`].
    pub async fn start(
        engine: Arc<Engine>,
        config: &Config,
        tls: Option<Arc<NodeTls>>,
        bootstrapped: Option<SnapshotInstalled>,
        metrics: Arc<Metrics>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Replication>, ServerError> {
        let (head_tx, head) = watch::channel(engine.last_lsn());
        engine.on_commit(move |info| {
            head_tx.send_replace(info.last_lsn);
        });
        let role = match &config.replica_of {
            Some(p) => Role::Replica { primary: p.clone() },
            None => Role::Primary,
        };
        let replica_status = ReplicaStatus {
            bootstrapped_from_snapshot: bootstrapped,
            ..ReplicaStatus::default()
        };
        let r = Arc::new(Replication {
            engine: engine.clone(),
            role: RwLock::new(role.clone()),
            primary_state: Arc::default(),
            replica_status: Arc::new(Mutex::new(replica_status)),
            control: Mutex::new(None),
            tls,
            listen: config.replication,
            listening: Mutex::new(None),
            head,
            shutdown,
            promoting: tokio::sync::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            primary_options: PrimaryOptions {
                snapshot_min_lsn: config.replication_snapshot_min_lsn,
            },
        });
        match role {
            Role::Replica { primary } => {
                let Some(tls) = r.tls.clone() else {
                    return Err(ServerError::Config(
                        "--replica-of needs --tls-ca, --tls-cert and --tls-key: replication uses \
                         mutual TLS with certificates signed by the cluster's CA \
                         (`trackctl certs init` makes a test CA)"
                            .into(),
                    ));
                };
                let e = engine.clone();
                let reason = format!(
                    "this node is a read-only replica of {primary}; send writes to the primary"
                );
                tokio::task::spawn_blocking(move || e.set_read_only(reason))
                    .await
                    .map_err(|e| ServerError::Runtime(e.to_string()))?
                    .map_err(|e| ServerError::Runtime(e.to_string()))?;
                r.start_follower(primary, tls, &config.data, metrics)?;
            }
            Role::Primary => {
                if engine.is_fenced() {
                    tracing::error!(
                        epoch = engine.epoch(),
                        known = engine.known_epoch(),
                        "this node was superseded by a newer epoch: it refuses writes; restart it \
                         with --replica-of <new primary> to rejoin"
                    );
                }
                r.start_listener().await?;
            }
        }
        Ok(r)
    }

    fn start_follower(
        self: &Arc<Self>,
        primary: String,
        tls: Arc<NodeTls>,
        data: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> Result<(), ServerError> {
        let client = tls
            .client_config()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let bind: SocketAddr = if primary.starts_with('[') {
            "[::]:0".parse().expect("valid")
        } else {
            "0.0.0.0:0".parse().expect("valid")
        };
        let endpoint = quinn::Endpoint::client(bind).map_err(|source| ServerError::Bind {
            what: "replication client (UDP)",
            addr: bind,
            source,
        })?;
        let (tx, rx) = mpsc::channel(4);
        *self.control.lock().expect("control lock") = Some(tx);
        let options = ReplicaOptions {
            primary: primary.clone(),
            node: node_name(),
            quarantine_dir: data.join("quarantine"),
        };
        let on_applied: replica::OnApplied = Box::new(move |received, committed| {
            metrics.observe_replicated(received, committed);
        });
        let this = self.clone();
        let engine = self.engine.clone();
        let status = self.replica_status.clone();
        let task = tokio::spawn(async move {
            let promoted =
                replica::follow(engine, endpoint, client, options, status, on_applied, rx).await;
            if let Some((epoch, start)) = promoted {
                tracing::warn!(
                    epoch,
                    start = start.0,
                    "promoted: this node is the primary now"
                );
                *this.role.write().expect("role lock") = Role::Primary;
                if let Err(e) = this.start_listener().await {
                    tracing::error!(error = %e, "the replication listener did not start after promotion");
                }
            }
        });
        self.tasks.lock().expect("tasks lock").push(task);
        Ok(())
    }

    /// Stops following and serving replicas (the listener stops on the shutdown signal; the follower
    /// when its control channel closes) and waits for both, so that nothing holds the engine after.
    pub async fn stop(&self) {
        drop(self.control.lock().expect("control lock").take());
        loop {
            let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock().expect("tasks lock"));
            if tasks.is_empty() {
                return;
            }
            for mut task in tasks {
                // A follower stuck connecting to an unreachable primary would wait for QUIC's idle
                // timeout: bound the wait, then cancel it.
                if tokio::time::timeout(SHUTDOWN_WAIT, &mut task)
                    .await
                    .is_err()
                {
                    task.abort();
                    let _ = task.await;
                }
            }
        }
    }

    async fn start_listener(self: &Arc<Self>) -> Result<(), ServerError> {
        let Listen::On(addr) = self.listen else {
            return Ok(());
        };
        let Some(tls) = self.tls.clone() else {
            tracing::info!(
                "replication listener off: it needs --tls-ca with --tls-cert/--tls-key, so that \
                 only nodes signed by the cluster's CA can read the log"
            );
            return Ok(());
        };
        let config = tls
            .server_config()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let endpoint =
            quinn::Endpoint::server(config, addr).map_err(|source| ServerError::Bind {
                what: "replication (UDP)",
                addr,
                source,
            })?;
        let bound = endpoint.local_addr().unwrap_or(addr);
        *self.listening.lock().expect("listening lock") = Some(bound);
        tracing::info!(%bound, "replication listener ready");
        let task = tokio::spawn(primary::serve(
            endpoint,
            self.engine.clone(),
            self.primary_state.clone(),
            self.primary_options,
            self.head.clone(),
            self.shutdown.clone(),
        ));
        self.tasks.lock().expect("tasks lock").push(task);
        Ok(())
    }

    pub fn role(&self) -> Role {
        self.role.read().expect("role lock").clone()
    }

    /// The primary's address when this node is a replica.
    pub fn primary(&self) -> Option<String> {
        match self.role() {
            Role::Replica { primary } => Some(primary),
            Role::Primary => None,
        }
    }

    /// The replication listener's bound address (primary role).
    pub fn listening(&self) -> Option<SocketAddr> {
        *self.listening.lock().expect("listening lock")
    }

    /// (entries behind, seconds behind) on a replica.
    pub fn lag(&self) -> Option<(u64, f64)> {
        self.primary()?;
        let s = self.replica_status.lock().expect("status lock");
        Some((s.lag_lsn(), s.lag_seconds()))
    }

    /// `GET /v1/admin/replication`.
    pub fn status_json(&self) -> Value {
        let e = &self.engine;
        let mut v = json!({
            "epoch": e.epoch(),
            "last_lsn": e.last_lsn().0,
            "epochs": e.epoch_history().iter().map(|(ep, l)| json!({"epoch": ep, "start_lsn": l.0})).collect::<Vec<_>>(),
        });
        if let Some(reason) = e.read_only_reason() {
            v["writes"] = json!("refused");
            v["read_only_reason"] = json!(reason);
        } else {
            v["writes"] = json!("accepted");
        }
        match self.role() {
            Role::Primary => {
                v["role"] = json!("primary");
                let last = e.last_lsn();
                let now = Instant::now();
                let replicas: Vec<Value> = self
                    .primary_state
                    .replicas()
                    .iter()
                    .map(|r| {
                        let lag = last.0.saturating_sub(r.acked_lsn.0);
                        json!({
                            "node": r.node,
                            "addr": r.addr.to_string(),
                            "acked_lsn": r.acked_lsn.0,
                            "sent_lsn": r.sent_lsn.0,
                            "lag_lsn": lag,
                            "lag_seconds": lag_seconds(e, r, last, now),
                        })
                    })
                    .collect();
                v["replicas"] = json!(replicas);
                let p = &self.primary_state;
                v["snapshot"] = json!({
                    "min_lsn": self.primary_options.snapshot_min_lsn,
                    "in_progress": p.snapshot_active.load(Ordering::Relaxed),
                    "served": p.snapshots_served.load(Ordering::Relaxed),
                    "failed": p.snapshots_failed.load(Ordering::Relaxed),
                    "busy": p.snapshots_busy.load(Ordering::Relaxed),
                    "bytes_sent": p.snapshot_bytes_sent.load(Ordering::Relaxed),
                });
                if let Some(a) = self.listening() {
                    v["listen"] = json!(a.to_string());
                }
            }
            Role::Replica { primary } => {
                let s = self.replica_status.lock().expect("status lock");
                v["role"] = json!("replica");
                v["primary"] = json!(primary);
                v["connected"] = json!(s.connected);
                v["primary_epoch"] = json!(s.primary_epoch);
                v["primary_last_lsn"] = json!(s.primary_last.0);
                v["lag_lsn"] = json!(s.lag_lsn());
                v["lag_seconds"] = json!(s.lag_seconds());
                v["reconnects"] = json!(s.reconnects);
                v["quarantined"] = json!(s.quarantined);
                v["quarantine_files"] = json!(
                    s.quarantine_files
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                );
                let ms = |h| {
                    let d = replica::DelaySummary::of(h);
                    json!({
                        "count": d.count,
                        "p50": d.p50_ms,
                        "p99": d.p99_ms,
                        "p999": d.p999_ms,
                        "max": d.max_ms,
                    })
                };
                v["apply_delay_ms"] = ms(&s.apply_delay_us);
                v["commit_lag_ms"] = ms(&s.commit_lag_us);
                if let Some(err) = &s.last_error {
                    v["last_error"] = json!(err);
                }
                if let Some(r) = &s.refused {
                    v["refused"] = json!(r);
                }
                v["bootstrapped_from_snapshot"] = match &s.bootstrapped_from_snapshot {
                    Some(b) => json!({
                        "last_lsn": b.last_lsn.0,
                        "bytes": b.bytes,
                        "seconds": b.seconds,
                    }),
                    None => Value::Null,
                };
            }
        }
        v
    }

    /// Promotes this replica: at once (`planned = false`: the primary may be gone; entries it had
    /// not shipped are lost to this node and come back as the old primary's quarantine when it
    /// rejoins), or as a planned switchover (the primary stops writes, this node applies
    /// everything, then promotes: nothing is lost). Returns the new status.
    pub async fn promote(&self, planned: bool) -> Result<Value, PromoteError> {
        let _one = self.promoting.lock().await;
        if self.role() == Role::Primary {
            return Err(PromoteError::AlreadyPrimary);
        }
        let control = self
            .control
            .lock()
            .expect("control lock")
            .clone()
            .ok_or_else(|| PromoteError::Failed("the follower is not running".into()))?;
        let (tx, rx) = oneshot::channel();
        let msg = if planned {
            Control::Switchover(tx)
        } else {
            Control::Promote(tx)
        };
        control
            .send(msg)
            .await
            .map_err(|_| PromoteError::Failed("the follower stopped".into()))?;
        let (epoch, start) = rx
            .await
            .map_err(|_| PromoteError::Failed("the follower stopped".into()))?
            .map_err(PromoteError::Failed)?;
        // The follower task switches the role right after answering: wait for it.
        for _ in 0..200 {
            if self.role() == Role::Primary {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        tracing::warn!(epoch, start = start.0, planned, "promotion done");
        Ok(self.status_json())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PromoteError {
    #[error("this node is already the primary")]
    AlreadyPrimary,
    #[error("promotion failed: {0}")]
    Failed(String),
}

/// How long a replica has lagged, seen from the primary: the age of the oldest entry it has not
/// acknowledged (from that entry's commit, as a replica measures its own lag), 0 when it has
/// everything. (The time since its last acknowledgement would count an idle hour before a write
/// as an hour of lag.) When this node no longer knows that commit's time (more than the commit
/// clock's groups ago, or before its start), the time since the replica last acknowledged.
pub fn lag_seconds(
    engine: &trackstore_engine::Engine,
    r: &trackstore_replication::primary::ReplicaInfo,
    last: trackstore_engine::Lsn,
    now: Instant,
) -> f64 {
    if r.acked_lsn >= last {
        return 0.0;
    }
    let oldest = trackstore_engine::Lsn(r.acked_lsn.0 + 1);
    match engine.commit_times(oldest, 1).first() {
        Some(&(_, at_us)) if at_us > 0 => {
            (trackstore_engine::commit_clock::now_us() - at_us).max(0) as f64 / 1e6
        }
        _ => now.duration_since(r.acked_at).as_secs_f64(),
    }
}
