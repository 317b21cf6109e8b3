//! The primary's side: a QUIC listener that serves each replica a session — `Hello` checked by
//! [`session::on_hello`], then the log from the agreed LSN (catch-up), then live entries as they
//! commit, with heartbeats when idle. The primary never waits for a replica: a session reads the next
//! batch only when the previous one was handed to QUIC, so a slow replica costs one batch of memory
//! and QUIC's flow-control window, never more.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use trackstore_engine::{Engine, Lsn, codec};

use crate::epochs::EpochHistory;
use crate::frame::{BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, Frame};
use crate::session::{self, HelloDecision, LogView};
use crate::transport::{FrameReader, ReplError, write_frame};

/// Heartbeats go out at least this often on an idle session.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Replicas served at once; more are refused (each costs a task and one batch of memory).
pub const REPLICAS_MAX: usize = 16;
/// How long a replica may take to open its stream and say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

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

/// A view of the engine's log for `session`.
pub fn log_view(engine: &Engine) -> LogView {
    let history = EpochHistory::new(engine.epoch_history()).unwrap_or_default();
    LogView {
        epoch: history.current(),
        known_epoch: engine.known_epoch(),
        history,
        last_lsn: engine.last_lsn(),
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone); holds no borrow of the value.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Serves replicas on `endpoint` until `shutdown` turns true. `head` follows the last committed LSN
/// (fed by the engine's commit listener) so that live sessions wake on every commit.
pub async fn serve(
    endpoint: quinn::Endpoint,
    engine: Arc<Engine>,
    state: Arc<PrimaryState>,
    head: watch::Receiver<Lsn>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            _ = stopped(&mut shutdown) => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
        };
        if sessions.len() >= REPLICAS_MAX {
            state.refused.fetch_add(1, Ordering::Relaxed);
            incoming.refuse();
            continue;
        }
        let (engine, state, head, shutdown) = (
            engine.clone(),
            state.clone(),
            head.clone(),
            shutdown.clone(),
        );
        sessions.spawn(async move {
            let addr = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    // Includes a client certificate the CA did not sign.
                    state.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%addr, error = %e, "replication handshake failed");
                    return;
                }
            };
            if let Err(e) = session(conn.clone(), engine, state, head, shutdown).await {
                tracing::warn!(%addr, error = %e, "replication session ended");
                conn.close(1u32.into(), e.to_string().as_bytes());
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    sessions.shutdown().await;
}

async fn session(
    conn: quinn::Connection,
    engine: Arc<Engine>,
    state: Arc<PrimaryState>,
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
        last_lsn: Lsn(last_lsn),
    };
    let view = log_view(&engine);
    if let Some(reason) = engine.read_only_reason() {
        let fenced_by = engine.is_fenced().then(|| engine.known_epoch());
        write_frame(&mut send, &Frame::Refused { reason, fenced_by }).await?;
        let _ = send.finish();
        return Ok(());
    }
    let start_from = match session::on_hello(&view, version, &replica) {
        HelloDecision::Welcome { start_from } => start_from,
        HelloDecision::StepDown { epoch } => {
            tracing::error!(%node, %addr, epoch, own = view.epoch,
                "a peer knows a newer epoch: another node was promoted; this node stops accepting writes");
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.note_epoch(epoch))
                .await
                .map_err(|e| ReplError::Protocol(e.to_string()))??;
            let reason = format!("this node was superseded by epoch {epoch} and stopped writes");
            write_frame(
                &mut send,
                &Frame::Refused {
                    reason,
                    fenced_by: Some(epoch),
                },
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
        HelloDecision::Refuse { reason } => {
            write_frame(
                &mut send,
                &Frame::Refused {
                    reason,
                    fenced_by: None,
                },
            )
            .await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    write_frame(
        &mut send,
        &Frame::Welcome {
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
        let history = EpochHistory::new(engine.epoch_history()).unwrap_or_default();
        if let Some((epoch, end)) =
            session::next_batch(&history, next, last, BATCH_ENTRIES_MAX as u64)
        {
            let (e, from) = (engine.clone(), next);
            let count = (end.0 - next.0 + 1) as usize;
            let events = tokio::task::spawn_blocking(move || e.read_log(from, count))
                .await
                .map_err(|e| ReplError::Protocol(e.to_string()))??;
            let mut entries = Vec::with_capacity(events.len());
            let mut bytes = 0;
            for (i, ev) in events.iter().enumerate() {
                if ev.lsn != Lsn(from.0 + i as u64) {
                    return Err(ReplError::Protocol(format!(
                        "the log has a gap at LSN {}",
                        from.0 + i as u64
                    )));
                }
                let b = codec::encode_event(ev);
                bytes += b.len();
                entries.push(Bytes::from(b));
                if bytes >= BATCH_BYTES_MAX {
                    break;
                }
            }
            if entries.is_empty() {
                return Err(ReplError::Protocol(format!(
                    "LSN {from} is not in the log (last {last})"
                )));
            }
            let n = entries.len() as u64;
            write_frame(
                send,
                &Frame::Entries {
                    epoch,
                    first_lsn: from.0,
                    entries,
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
                return Err(ReplError::Protocol(format!("a replica sent {other:?}")));
            }
        }
    }
    Ok(())
}
