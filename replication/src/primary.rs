//! The primary's side: a QUIC listener that serves each replica a session — `Hello` checked by
//! [`session::on_hello`], then the log from the agreed LSN (catch-up), then live entries as they
//! commit, with heartbeats when idle. The primary never waits for a replica: a session reads the next
//! batch only when the previous one was handed to QUIC, so a slow replica costs one batch of memory
//! and QUIC's flow-control window, never more.
//!
//! An empty replica far behind (or one that needs entries the log no longer holds) gets a snapshot
//! instead: a RocksDB checkpoint made under `DATA/snapshots/`, streamed file by file in chunks of at
//! most 1 MiB (QUIC's flow control again bounds what waits in memory), then deleted. One snapshot
//! at a time: a second replica asking meanwhile gets `Busy` and asks again later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use trackstore_engine::store::Tuning;
use trackstore_engine::{EncodedEntries, Engine, EngineOptions, InMemory, Lsn};

use crate::epochs::EpochHistory;
use crate::frame::{
    BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, CLOSE_SNAPSHOT_RECEIVED, Frame, SNAPSHOT_BYTES_MAX,
    SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_FILE_BYTES_MAX, SNAPSHOT_FILES_MAX,
};
use crate::session::{self, HelloDecision, LogView, SnapshotDigest, SnapshotTerms};
use crate::transport::{FrameReader, ReplError, write_frame};

/// Heartbeats go out at least this often on an idle session.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Replicas served at once, counted from the end of their TLS handshake (their certificate is
/// the CA's); more are refused (each costs a task and one batch of memory).
pub const REPLICAS_MAX: usize = 16;
/// Connections in their QUIC/TLS handshake at once, not yet authenticated; more are refused. Apart
/// from `REPLICAS_MAX`, so that peers without a certificate stalling their handshakes cannot keep
/// replicas out; small, because a handshake between cluster nodes takes a few round trips.
pub const HANDSHAKES_MAX: usize = 8;
/// How long a connection may take to complete its handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a replica may take to open its stream and say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last byte of a snapshot (or a `Busy`) is handed to QUIC, how long the replica may take
/// to read it all before the connection is dropped.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// What a replica refused with `Busy` is told to wait before asking again.
const BUSY_RETRY_MS: u32 = 1_000;
/// Where snapshots are made, inside the data directory; each is deleted once sent.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// How the primary serves replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimaryOptions {
    /// An empty replica gets a snapshot instead of the log once our log reaches this LSN
    /// (`replication_snapshot_min_lsn`).
    pub snapshot_min_lsn: u64,
}

impl Default for PrimaryOptions {
    fn default() -> PrimaryOptions {
        PrimaryOptions {
            snapshot_min_lsn: 1_000_000,
        }
    }
}

/// One connected replica, as the primary sees it.
#[derive(Clone, Debug)]
pub struct ReplicaInfo {
    pub node: String,
    pub addr: SocketAddr,
    /// Shipped up to here.
    pub sent_lsn: Lsn,
    /// Durably applied on the replica up to here.
    pub acked_lsn: Lsn,
    /// When the replica last acknowledged; with `acked_lsn` < our last LSN, the lag in seconds is
    /// how long the oldest unacknowledged entry has waited.
    pub acked_at: Instant,
    pub connected_at: Instant,
}

/// What the primary's sessions share with the server: the replicas and counters for metrics.
#[derive(Debug, Default)]
pub struct PrimaryState {
    replicas: Mutex<BTreeMap<u64, ReplicaInfo>>,
    next_id: AtomicU64,
    pub bytes_shipped: AtomicU64,
    pub entries_shipped: AtomicU64,
    pub sessions: AtomicU64,
    pub refused: AtomicU64,
    /// A snapshot is being made or sent now (at most one at a time).
    pub snapshot_active: AtomicBool,
    /// Snapshots sent completely and read to the end by their replica.
    pub snapshots_served: AtomicU64,
    /// Snapshot transfers that failed part way (the replica installs nothing).
    pub snapshots_failed: AtomicU64,
    /// Replicas told `Busy` because another snapshot was in progress.
    pub snapshots_busy: AtomicU64,
    /// Bytes of snapshot files sent (complete and failed transfers).
    pub snapshot_bytes_sent: AtomicU64,
}

impl PrimaryState {
    pub fn replicas(&self) -> Vec<ReplicaInfo> {
        self.replicas
            .lock()
            .expect("replicas lock")
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ReplicaInfo)) {
        if let Some(r) = self.replicas.lock().expect("replicas lock").get_mut(&id) {
            f(r);
        }
    }
}

/// A view of the engine's log for `session`. Fails when the engine's epoch history is not one
/// (`own_history`).
pub fn log_view(engine: &Engine) -> Result<LogView, ReplError> {
    let history = own_history(engine.epoch_history())?;
    Ok(LogView {
        epoch: history.current(),
        known_epoch: engine.known_epoch(),
        history,
        // The entry before the first one is gone with the dropped prefix, but its digest (for the
        // divergence check) is kept: a replica can be served from the first LSN held.
        first_lsn: engine.first_lsn(),
        last_lsn: engine.last_lsn(),
    })
}

/// This node's epoch history, checked. One that is not strictly increasing is corruption, never
/// "no history": an empty history says every LSN is epoch 0, so a replica would be told its whole
/// log diverges (start from LSN 1) and would quarantine and truncate all of it.
pub fn own_history(entries: Vec<(u64, Lsn)>) -> Result<EpochHistory, ReplError> {
    let count = entries.len();
    // Only the offending pair: a history may hold many epochs.
    let pair = |at: usize| match (entries.get(at.wrapping_sub(1)), entries.get(at)) {
        (Some((e1, l1)), Some((e2, l2))) => {
            format!("epoch {e1} from LSN {l1}, then epoch {e2} from LSN {l2}")
        }
        _ => String::new(),
    };
    EpochHistory::new(entries.clone()).map_err(|e| {
        ReplError::CorruptHistory(format!(
            "{e} ({}; {count} epochs in all). No replication session is served to or from this \
             node until its store is repaired or rebuilt",
            pair(e.index)
        ))
    })
}

/// Resolves once `shutdown` turns true (or its sender is gone); holds no borrow of the value.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn now_ms() -> i64 {
    trackstore_engine::Timestamp::now().as_millis()
}

/// Serves replicas on `endpoint` until `shutdown` turns true. `head` follows the last committed LSN
/// (fed by the engine's commit listener) so that live sessions wake on every commit.
pub async fn serve(
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    state: Arc<PrimaryState>,
    options: PrimaryOptions,
    head: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Checkpoints left by a crash mid-snapshot: nothing is being sent yet, so all of them are stale.
    let stale = engine.data_dir().join(SNAPSHOTS_DIR);
    match tokio::task::spawn_blocking(move || remove_dir_if_present(&stale)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove stale snapshots"),
        Err(e) => tracing::warn!(error = %e, "cannot remove stale snapshots"),
    }
    let mut sessions = JoinSet::new();
    let admission = Admission::new(HANDSHAKES_MAX, REPLICAS_MAX);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = stopped(&mut shutdown) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        // An address that has not proved it receives our packets is sent a Retry first (one round
        // trip; quinn's client answers it by itself): spoofed sources never reach the handshake.
        if !incoming.remote_address_validated() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let Some(handshake) = admission.handshake() else {
            state.refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        };
        let (engine, state, head, shutdown, admission) = (
            engine.clone(),
            state.clone(),
            head.clone(),
            shutdown.clone(),
            admission.clone(),
        );
        sessions.spawn(async move {
            let addr = incoming.remote_address();
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    // Includes a client certificate the CA did not sign.
                    state.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%addr, error = %e, "replication handshake failed");
                    return;
                }
                Err(_) => {
                    // Dropping the handshake's future abandons the connection.
                    state.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%addr, "replication handshake did not complete within {} s",
                        HANDSHAKE_TIMEOUT.as_secs());
                    return;
                }
            };
            drop(handshake);
            // Authenticated: a node of the cluster. Only now does it count against the replicas.
            let Some(_replica) = admission.replica() else {
                state.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%addr, "replica refused: {REPLICAS_MAX} are served already");
                conn.close(
                    2u32.into(),
                    format!("at most {REPLICAS_MAX} replicas are served at once").as_bytes(),
                );
                return;
            };
            if let Err(e) = session(conn.clone(), engine, state, options, head, shutdown).await {
                tracing::warn!(%addr, error = %e, "replication session ended");
                conn.close(1u32.into(), e.to_string().as_bytes());
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    sessions.shutdown().await;
}

/// The two bounds on connections: handshakes in progress (not authenticated yet) and replicas
/// served (authenticated). Each slot is held by a permit, released however its task ends.
#[derive(Clone, Debug)]
struct Admission {
    handshakes: Arc<Semaphore>,
    replicas: Arc<Semaphore>,
}

impl Admission {
    fn new(handshakes: usize, replicas: usize) -> Admission {
        Admission {
            handshakes: Arc::new(Semaphore::new(handshakes)),
            replicas: Arc::new(Semaphore::new(replicas)),
        }
    }

    /// A slot for one handshake; None when `HANDSHAKES_MAX` are in progress.
    fn handshake(&self) -> Option<OwnedSemaphorePermit> {
        self.handshakes.clone().try_acquire_owned().ok()
    }

    /// A slot for one authenticated replica; None when `REPLICAS_MAX` are served.
    fn replica(&self) -> Option<OwnedSemaphorePermit> {
        self.replicas.clone().try_acquire_owned().ok()
    }
}

async fn session(
    conn: quinn::Connection,
    engine: Arc<Engine>,
    state: Arc<PrimaryState>,
    options: PrimaryOptions,
    mut head: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ReplError> {
    let addr = conn.remote_address();
    let (mut send, recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ReplError::Protocol("no stream opened in time".into()))?
        .map_err(|e| ReplError::Connection(e.to_string()))?;
    let mut reader = FrameReader::new(recv);
    let hello = tokio::time::timeout(HELLO_TIMEOUT, reader.next())
        .await
        .map_err(|_| ReplError::Protocol("no Hello in time".into()))??;
    let Some(Frame::Hello {
        version,
        node,
        history,
        known_epoch,
        last_lsn,
        accepts_snapshot,
    }) = hello
    else {
        return Err(ReplError::Protocol("the first frame is not Hello".into()));
    };
    let replica_history =
        EpochHistory::new(history.into_iter().map(|(e, l)| (e, Lsn(l))).collect())
            .map_err(|e| ReplError::Protocol(format!("the replica's {e}")))?;
    let replica = LogView {
        epoch: replica_history.current(),
        known_epoch,
        history: replica_history,
        first_lsn: Lsn(1),
        last_lsn: Lsn(last_lsn),
    };
    let view = match log_view(&engine) {
        Ok(view) => view,
        Err(e) => {
            // Said to the replica, which shows it as `refused`: not a lost connection to retry.
            tracing::error!(%node, %addr, error = %e, "replica refused");
            return refuse(&mut send, e.to_string(), None).await;
        }
    };
    if let Some(reason) = engine.read_only_reason() {
        let fenced_by = engine.is_fenced().then(|| engine.known_epoch());
        return refuse(&mut send, reason, fenced_by).await;
    }
    let terms = SnapshotTerms {
        replica_accepts: accepts_snapshot,
        min_lsn: options.snapshot_min_lsn,
    };
    let start_from = match session::on_hello(&view, version, &replica, terms) {
        HelloDecision::Welcome { start_from } => start_from,
        HelloDecision::Snapshot => {
            let result = send_snapshot(&mut send, &engine, &state, &node, addr).await;
            if result.is_err() {
                state.snapshots_failed.fetch_add(1, Ordering::Relaxed);
            }
            return result;
        }
        HelloDecision::StepDown { epoch } => {
            tracing::error!(%node, %addr, epoch, own = view.epoch,
                "a peer knows a newer epoch: another node was promoted; this node stops accepting writes");
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.note_epoch(epoch))
                .await
                .map_err(|e| ReplError::Protocol(e.to_string()))??;
            let reason = format!("this node was superseded by epoch {epoch} and stopped writes");
            return refuse(&mut send, reason, Some(epoch)).await;
        }
        HelloDecision::Refuse { reason } => return refuse(&mut send, reason, None).await,
    };
    let prev_digest = if start_from.0 > 1 {
        let (e, at) = (engine.clone(), Lsn(start_from.0 - 1));
        let digest = tokio::task::spawn_blocking(move || e.anchor_digest(at))
            .await
            .map_err(|e| ReplError::Protocol(e.to_string()))??;
        match digest {
            Some(d) => d,
            None => {
                return Err(ReplError::Protocol(format!(
                    "LSN {at} is not in this primary's log"
                )));
            }
        }
    } else {
        0
    };
    write_frame(
        &mut send,
        &Frame::Welcome {
            prev_digest,
            history: view
                .history
                .entries()
                .iter()
                .map(|(e, l)| (*e, l.0))
                .collect(),
            epoch: view.epoch,
            last_lsn: view.last_lsn.0,
            start_from: start_from.0,
        },
    )
    .await?;
    tracing::info!(%node, %addr, start_from = start_from.0, "replica attached");
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    state.sessions.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    state.replicas.lock().expect("replicas lock").insert(
        id,
        ReplicaInfo {
            node: node.clone(),
            addr,
            sent_lsn: Lsn(start_from.0 - 1),
            acked_lsn: Lsn(start_from.0 - 1),
            acked_at: now,
            connected_at: now,
        },
    );
    // Frames the reader half wants sent (switchover answers), bounded: the replica asks rarely.
    let (control_tx, mut control_rx) = mpsc::channel::<Frame>(4);
    let reader_task = {
        let (engine, state) = (engine.clone(), state.clone());
        tokio::spawn(async move { read_replies(reader, engine, state, id, control_tx).await })
    };
    let result = ship(
        &mut send,
        &engine,
        &state,
        id,
        start_from,
        &mut head,
        &mut shutdown,
        &mut control_rx,
    )
    .await;
    reader_task.abort();
    state.replicas.lock().expect("replicas lock").remove(&id);
    tracing::info!(%node, %addr, "replica detached");
    result
}

#[allow(clippy::too_many_arguments)]
async fn ship(
    send: &mut quinn::SendStream,
    engine: &Arc<Engine>,
    state: &PrimaryState,
    id: u64,
    start_from: Lsn,
    head: &mut watch::Receiver<Lsn>,
    shutdown: &mut watch::Receiver<bool>,
    control: &mut mpsc::Receiver<Frame>,
) -> Result<(), ReplError> {
    let mut next = start_from;
    let mut last_beat = Instant::now() - HEARTBEAT;
    loop {
        let last = engine.last_lsn();
        let history = own_history(engine.epoch_history())?;
        if let Some((epoch, end)) =
            session::next_batch(&history, next, last, BATCH_ENTRIES_MAX as u64)
        {
            let from = next;
            let count = (end.0 - next.0 + 1) as usize;
            let read = read_for_shipping(engine, from, count).await?;
            let mut entries = Vec::with_capacity(read.len());
            let mut bytes = 0;
            for (i, (lsn, value)) in read.into_iter().enumerate() {
                if lsn != Lsn(from.0 + i as u64) {
                    return Err(ReplError::Protocol(format!(
                        "the log has a gap at LSN {}",
                        from.0 + i as u64
                    )));
                }
                bytes += value.len();
                entries.push(Bytes::from(value));
            }
            if entries.is_empty() {
                return Err(ReplError::Protocol(format!(
                    "LSN {from} is not in the log (last {last})"
                )));
            }
            let n = entries.len() as u64;
            let committed = engine.commit_times(from, entries.len());
            write_frame(
                send,
                &Frame::Entries {
                    epoch,
                    first_lsn: from.0,
                    entries,
                    committed,
                },
            )
            .await?;
            next = Lsn(from.0 + n);
            state
                .bytes_shipped
                .fetch_add(bytes as u64, Ordering::Relaxed);
            state.entries_shipped.fetch_add(n, Ordering::Relaxed);
            state.update(id, |r| r.sent_lsn = Lsn(next.0 - 1));
        }
        if last_beat.elapsed() >= HEARTBEAT || next > last {
            // With every caught-up batch and at least every HEARTBEAT: the replica's lag needs our end.
            write_frame(
                send,
                &Frame::Heartbeat {
                    epoch: history.current(),
                    last_lsn: engine.last_lsn().0,
                    now_ms: now_ms(),
                },
            )
            .await?;
            last_beat = Instant::now();
        }
        if next <= engine.last_lsn() {
            while let Ok(frame) = control.try_recv() {
                write_frame(send, &frame).await?;
            }
            continue;
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return Ok(()) },
            _ = tokio::time::sleep(HEARTBEAT) => {}
            frame = control.recv() => match frame {
                Some(f) => write_frame(send, &f).await?,
                None => return Ok(()),
            },
            _ = stopped(shutdown) => {
                let _ = send.finish();
                return Ok(());
            }
        }
    }
}

/// The next entries to ship, as stored: no decode and re-encode. Entries a live replica asks for
/// were committed a moment ago and are still in the memtables, so the read is answered on this
/// async worker (it never does I/O); older entries (catch-up) are read on the blocking pool.
async fn read_for_shipping(
    engine: &Arc<Engine>,
    from: Lsn,
    count: usize,
) -> Result<EncodedEntries, ReplError> {
    if let InMemory::Answered(read) =
        engine.read_log_encoded_in_memory(from, count, BATCH_BYTES_MAX)?
    {
        return Ok(read);
    }
    let e = engine.clone();
    Ok(
        tokio::task::spawn_blocking(move || e.read_log_encoded(from, count, BATCH_BYTES_MAX))
            .await
            .map_err(|e| ReplError::Protocol(e.to_string()))??,
    )
}

/// Answers a `Hello` with `Refused` and waits (bounded) until the replica's QUIC stack has it.
/// Returning at once would drop the last handle of the connection, and quinn's implicit close
/// discards stream data not sent yet: the replica would see only "connection lost", never the
/// reason (nor set its `refused` status).
async fn refuse(
    send: &mut quinn::SendStream,
    reason: String,
    fenced_by: Option<u64>,
) -> Result<(), ReplError> {
    write_frame(send, &Frame::Refused { reason, fenced_by }).await?;
    delivered(send).await;
    Ok(())
}

/// The replica's frames: acknowledgements, and the switchover handshake.
async fn read_replies(
    mut reader: FrameReader,
    engine: Arc<Engine>,
    state: Arc<PrimaryState>,
    id: u64,
    control: mpsc::Sender<Frame>,
) -> Result<(), ReplError> {
    while let Some(frame) = reader.next().await? {
        match frame {
            Frame::Ack { applied_lsn } => state.update(id, |r| {
                r.acked_lsn = Lsn(applied_lsn);
                r.acked_at = Instant::now();
            }),
            Frame::SwitchoverRequest => {
                let e = engine.clone();
                let final_lsn = tokio::task::spawn_blocking(move || {
                    e.set_read_only("writes stopped for a planned switchover to a replica")
                })
                .await
                .map_err(|e| ReplError::Protocol(e.to_string()))??;
                tracing::warn!(
                    final_lsn = final_lsn.0,
                    "planned switchover: writes stopped"
                );
                let _ = control
                    .send(Frame::SwitchoverReady {
                        final_lsn: final_lsn.0,
                    })
                    .await;
            }
            Frame::Promoted { epoch } => {
                tracing::warn!(epoch, "the replica was promoted: this node is fenced");
                let e = engine.clone();
                tokio::task::spawn_blocking(move || e.note_epoch(epoch))
                    .await
                    .map_err(|e| ReplError::Protocol(e.to_string()))??;
            }
            other => {
                return Err(ReplError::Protocol(format!(
                    "a replica sent an unexpected {} frame",
                    other.kind()
                )));
            }
        }
    }
    Ok(())
}

/// The one snapshot slot, released when the transfer ends however it ends.
struct SnapshotSlot<'a>(&'a AtomicBool);

impl<'a> SnapshotSlot<'a> {
    fn take(flag: &'a AtomicBool) -> Option<SnapshotSlot<'a>> {
        flag.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| SnapshotSlot(flag))
    }
}

impl Drop for SnapshotSlot<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A checkpoint directory, deleted when dropped: after a complete transfer, and also after an error
/// or a shutdown part way (the session future is dropped, on an async worker: the deletion then
/// goes to the blocking pool, see `Drop`).
#[derive(Debug)]
struct CheckpointDir(Option<DeleteOnDrop>);

impl CheckpointDir {
    fn new(path: PathBuf) -> CheckpointDir {
        CheckpointDir(Some(DeleteOnDrop(path)))
    }

    fn path(&self) -> &Path {
        &self.0.as_ref().expect("held until dropped").0
    }

    /// Deletes the checkpoint now, on this thread (blocking).
    fn delete(mut self) {
        drop(self.0.take());
    }
}

impl Drop for CheckpointDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        // `remove_dir_all` walks the directory and unlinks each file (thousands of SST hard links
        // for a large store): not on an async worker. If the blocking pool does not run the task
        // (the runtime is shutting down), dropping it deletes the directory where it is dropped;
        // a directory left anyway (a crash) goes when the listener starts next.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(dir))),
            Err(_) => drop(dir),
        }
    }
}

/// Deletes a directory when dropped, on the thread that drops it.
#[derive(Debug)]
struct DeleteOnDrop(PathBuf);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Err(e) = remove_dir_if_present(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot delete a snapshot checkpoint");
        }
    }
}

fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A checkpoint ready to send: what it holds and its files (name, size), in sending order.
#[derive(Debug)]
struct Checkpoint {
    last_lsn: Lsn,
    history: Vec<(u64, Lsn)>,
    files: Vec<(String, u64)>,
    bytes: u64,
}

/// Files of a RocksDB directory that a copy must not carry: the lock and the informational logs.
fn skipped_file(name: &str) -> bool {
    name == "LOCK" || name == "LOG" || name.starts_with("LOG.old.")
}

/// Makes a checkpoint of `engine` in `dir` and lists its files (blocking).
fn make_checkpoint(engine: &Engine, dir: &Path) -> Result<Checkpoint, ReplError> {
    engine.checkpoint(dir)?;
    // Writes go on while the checkpoint is made, so only the checkpoint itself knows which LSNs it
    // holds: open it to read its end and its epochs. A small cache: nothing is queried.
    let copy = Engine::open(
        dir,
        EngineOptions {
            tuning: Tuning {
                block_cache_bytes: 8 << 20,
                ..Tuning::default()
            },
            ..EngineOptions::default()
        },
    )?;
    let (last_lsn, history) = (copy.last_lsn(), copy.epoch_history());
    copy.close();
    let db = trackstore_engine::db_path(dir);
    let io = |e: std::io::Error| ReplError::Snapshot(format!("{}: {e}", db.display()));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&db).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| ReplError::Snapshot(format!("checkpoint file name {n:?} is not UTF-8")))?;
        if skipped_file(&name) {
            continue;
        }
        let meta = entry.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(ReplError::Snapshot(format!(
                "the checkpoint holds {name:?}, which is not a regular file"
            )));
        }
        session::check_snapshot_file_name(&name).map_err(ReplError::Snapshot)?;
        if meta.len() > SNAPSHOT_FILE_BYTES_MAX {
            return Err(ReplError::Snapshot(format!(
                "checkpoint file {name} holds {} bytes, over the {SNAPSHOT_FILE_BYTES_MAX}-byte limit",
                meta.len()
            )));
        }
        files.push((name, meta.len()));
    }
    files.sort();
    let bytes = files.iter().map(|(_, n)| n).sum();
    if files.len() > SNAPSHOT_FILES_MAX as usize || bytes > SNAPSHOT_BYTES_MAX {
        return Err(ReplError::Snapshot(format!(
            "the checkpoint holds {} files of {bytes} bytes, over the limits ({SNAPSHOT_FILES_MAX} \
             files, {SNAPSHOT_BYTES_MAX} bytes)",
            files.len()
        )));
    }
    Ok(Checkpoint {
        last_lsn,
        history,
        files,
        bytes,
    })
}

/// Waits (bounded) until the replica has read everything sent, so that dropping the connection
/// afterwards cannot cut off the end. True when it did: QUIC acknowledged every byte, or the replica
/// closed the connection saying it read the whole snapshot.
async fn delivered(send: &mut quinn::SendStream) -> bool {
    let _ = send.finish();
    match tokio::time::timeout(DELIVERY_TIMEOUT, send.stopped()).await {
        Ok(Ok(None)) => true,
        Ok(Err(quinn::StoppedError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(close),
        ))) => close.error_code == quinn::VarInt::from_u32(CLOSE_SNAPSHOT_RECEIVED),
        _ => false,
    }
}

/// Makes a checkpoint, streams it, deletes it. At most one at a time: a replica asking while
/// another transfer runs is told `Busy`.
async fn send_snapshot(
    send: &mut quinn::SendStream,
    engine: &Arc<Engine>,
    state: &PrimaryState,
    node: &str,
    addr: SocketAddr,
) -> Result<(), ReplError> {
    let Some(_slot) = SnapshotSlot::take(&state.snapshot_active) else {
        state.snapshots_busy.fetch_add(1, Ordering::Relaxed);
        tracing::info!(%node, %addr, "snapshot asked for while another is sent: busy");
        write_frame(
            send,
            &Frame::Busy {
                reason: "another replica is receiving a snapshot; ask again later".into(),
                retry_after_ms: BUSY_RETRY_MS,
            },
        )
        .await?;
        delivered(send).await;
        return Ok(());
    };
    let started = Instant::now();
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let dir = CheckpointDir::new(
        engine
            .data_dir()
            .join(SNAPSHOTS_DIR)
            .join(format!("{}-{id}", now_ms())),
    );
    let (e, path) = (engine.clone(), dir.path().to_owned());
    let cp = tokio::task::spawn_blocking(move || make_checkpoint(&e, &path))
        .await
        .map_err(|e| ReplError::Protocol(e.to_string()))??;
    tracing::info!(%node, %addr, last_lsn = cp.last_lsn.0, files = cp.files.len(), bytes = cp.bytes,
        "sending a snapshot");
    write_frame(
        send,
        &Frame::SnapshotBegin {
            last_lsn: cp.last_lsn.0,
            history: cp.history.iter().map(|(e, l)| (*e, l.0)).collect(),
            files: cp.files.len() as u32,
            bytes: cp.bytes,
        },
    )
    .await?;
    let db = trackstore_engine::db_path(dir.path());
    let mut digest = SnapshotDigest::default();
    for (name, size) in &cp.files {
        let path = db.join(name);
        let io = |e: std::io::Error| ReplError::Snapshot(format!("{}: {e}", path.display()));
        let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
        write_frame(
            send,
            &Frame::SnapshotFile {
                name: name.clone(),
                size: *size,
            },
        )
        .await?;
        digest.file(name, *size);
        let mut left = *size;
        while left > 0 {
            let mut chunk = vec![0u8; left.min(SNAPSHOT_CHUNK_BYTES_MAX as u64) as usize];
            // A short file fails here: the checkpoint's files do not change once made.
            file.read_exact(&mut chunk).await.map_err(io)?;
            digest.data(&chunk);
            left -= chunk.len() as u64;
            state
                .snapshot_bytes_sent
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            write_frame(
                send,
                &Frame::SnapshotChunk {
                    data: Bytes::from(chunk),
                },
            )
            .await?;
        }
        if file.read(&mut [0u8; 1]).await.map_err(io)? != 0 {
            return Err(ReplError::Snapshot(format!(
                "{} grew while it was sent",
                path.display()
            )));
        }
    }
    write_frame(
        send,
        &Frame::SnapshotEnd {
            sha256: digest.finish(),
        },
    )
    .await?;
    // Every byte is in QUIC's hands now: the checkpoint is not needed any more.
    let _ = tokio::task::spawn_blocking(move || dir.delete()).await;
    if !delivered(send).await {
        return Err(ReplError::Connection(
            "the replica did not read the whole snapshot".into(),
        ));
    }
    state.snapshots_served.fetch_add(1, Ordering::Relaxed);
    tracing::info!(%node, %addr, last_lsn = cp.last_lsn.0, bytes = cp.bytes,
        seconds = started.elapsed().as_secs_f64(), "snapshot sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_epoch_history_that_does_not_grow_is_corruption_not_an_empty_history() {
        // A duplicate of an epoch already recorded (what a failed read of the epochs once wrote).
        let err = own_history(vec![(1, Lsn(1)), (2, Lsn(50)), (2, Lsn(80))])
            .expect_err("a history that does not grow");
        assert!(matches!(err, ReplError::CorruptHistory(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("epoch 2 from LSN 50, then epoch 2 from LSN 80"),
            "{text}"
        );
        assert!(text.contains("corrupt"), "{text}");
        // Taken for an empty history instead (every LSN in epoch 0), a replica's log would share
        // nothing with its primary's: told to start from LSN 1, it would set all of it aside.
        let primary = LogView {
            history: own_history(vec![(1, Lsn(1)), (2, Lsn(50))]).expect("valid"),
            epoch: 2,
            known_epoch: 2,
            first_lsn: Lsn(1),
            last_lsn: Lsn(100),
        };
        let defaulted = LogView {
            history: EpochHistory::default(),
            epoch: 0,
            known_epoch: 2,
            first_lsn: Lsn(1),
            last_lsn: Lsn(90),
        };
        assert_eq!(
            session::on_hello(
                &primary,
                crate::frame::PROTOCOL_VERSION,
                &defaulted,
                SnapshotTerms::NEVER
            ),
            HelloDecision::Welcome { start_from: Lsn(1) },
            "what a defaulted history meant"
        );
        assert_eq!(
            own_history(vec![(1, Lsn(1)), (2, Lsn(50))])
                .expect("valid")
                .current(),
            2
        );
        assert_eq!(
            own_history(Vec::new()).expect("empty is valid").current(),
            0
        );
    }

    #[test]
    fn handshakes_in_progress_take_no_replica_slot() {
        let admission = Admission::new(HANDSHAKES_MAX, REPLICAS_MAX);
        let stalled: Vec<_> = (0..HANDSHAKES_MAX)
            .map(|_| admission.handshake().expect("a handshake slot"))
            .collect();
        assert!(admission.handshake().is_none(), "handshakes are bounded");
        // Stalled handshakes keep no authenticated replica out.
        let served: Vec<_> = (0..REPLICAS_MAX)
            .map(|_| admission.replica().expect("a replica slot"))
            .collect();
        assert!(admission.replica().is_none(), "replicas are bounded");
        drop(stalled);
        assert!(
            admission.handshake().is_some(),
            "a handshake that ends frees its slot"
        );
        drop(served);
        assert!(
            admission.replica().is_some(),
            "a session that ends frees its slot"
        );
    }

    fn checkpoint_dir(root: &Path) -> PathBuf {
        let dir = root.join("snapshots").join("1-1");
        std::fs::create_dir_all(dir.join("db")).expect("mkdir");
        std::fs::write(dir.join("db").join("000009.sst"), b"sorted strings").expect("write");
        dir
    }

    #[test]
    fn a_checkpoint_dropped_on_an_async_worker_is_deleted_on_the_blocking_pool() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = checkpoint_dir(tmp.path());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // The blocking pool's only thread is busy: a deletion sent there waits, one made on
            // this worker would be done before `drop` returns.
            let (release, busy) = std::sync::mpsc::channel::<()>();
            let occupied = tokio::task::spawn_blocking(move || {
                let _ = busy.recv();
            });
            drop(CheckpointDir::new(dir.clone()));
            assert!(dir.exists(), "deleted on the async worker");
            release.send(()).expect("release");
            occupied.await.expect("the blocking task");
            for _ in 0..1_000 {
                if !dir.exists() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!dir.exists(), "deleted on the blocking pool");
        });
        // Outside a runtime (and by `delete`), on the spot.
        let dir = checkpoint_dir(tmp.path());
        drop(CheckpointDir::new(dir.clone()));
        assert!(!dir.exists());
        let dir = checkpoint_dir(tmp.path());
        CheckpointDir::new(dir.clone()).delete();
        assert!(!dir.exists());
    }
}
