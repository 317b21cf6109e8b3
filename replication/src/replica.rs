//! The replica's side: connect to the primary, say `Hello`, set aside a divergent tail if the
//! `Welcome` says so (quarantine file, then truncation), apply each batch atomically through the
//! engine's append path, acknowledge it; reconnect with backoff when anything breaks. Promotion runs
//! here too, so that no batch can be applied after the node became a primary.
//!
//! Snapshot bootstrap runs before all that, before the engine opens: a node with no store asks the
//! primary for a snapshot ([`bootstrap`]), receives its files into `DATA/snapshot.incoming/db/`
//! ([`SnapshotReceiver`] checks every frame), verifies the result as `trackctl verify` does, and
//! renames it to `DATA/db`. The running engine is never swapped in place.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use trackstore_engine::{Engine, EngineOptions, LogEntry, Lsn, codec};

use crate::epochs::EpochHistory;
use crate::frame::{
    CLOSE_SNAPSHOT_RECEIVED, Frame, PROTOCOL_VERSION, SNAPSHOT_BYTES_MAX, SNAPSHOT_FILE_BYTES_MAX,
    SNAPSHOT_FILES_MAX,
};
use crate::primary::log_view;
use crate::session::{self, Follower, SnapshotDigest};
use crate::transport::{FrameReader, NodeTls, ReplError, write_frame};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a planned switchover waits for the primary to stop and for the last entries.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long bootstrap waits for the primary's handshake before starting without a snapshot.
const BOOTSTRAP_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds on the wait a `Busy` primary asks for.
const BUSY_WAIT_MIN: Duration = Duration::from_millis(100);
const BUSY_WAIT_MAX: Duration = Duration::from_secs(10);
/// Snapshot transfers cut off part way (the connection broke) before bootstrap gives up.
const BOOTSTRAP_TRANSFERS_MAX: u32 = 3;
/// Where a snapshot is received, inside the data directory (its `db/` becomes `DATA/db`).
pub const INCOMING_DIR: &str = "snapshot.incoming";

/// Where to follow from and how to introduce ourselves.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// The primary's replication address (`host:port`).
    pub primary: String,
    /// This node's name in `Hello` and the primary's status.
    pub node: String,
    /// Divergent tails are written here before they are removed (NDJSON).
    pub quarantine_dir: PathBuf,
}

/// The replica's view of its replication, for `/v1/admin/replication` and metrics.
#[derive(Clone, Debug)]
pub struct ReplicaStatus {
    /// Per entry since start: primary `received_at` → durably applied here, in µs. `received_at`
    /// has millisecond precision, so each figure is high by up to 1 ms.
    pub apply_delay_us: hdrhistogram::Histogram<u64>,
    /// Per entry since start: its commit on the primary → durably applied here, in µs: the
    /// replication lag (an acknowledged write is exposed to loss for this long). Only entries the
    /// primary sent with a commit time (`trackstore_engine::commit_clock`): those it committed
    /// long ago (a replica far behind) count in `apply_delay_us` alone.
    pub commit_lag_us: hdrhistogram::Histogram<u64>,
    pub connected: bool,
    pub primary_epoch: u64,
    /// The primary's last LSN as last reported.
    pub primary_last: Lsn,
    pub applied: Lsn,
    /// `received_at` (primary clock, ms) of the last applied entry.
    pub applied_received_ms: i64,
    pub reconnects: u64,
    pub bytes_received: u64,
    pub entries_applied: u64,
    pub quarantined: u64,
    pub quarantine_files: Vec<PathBuf>,
    pub last_error: Option<String>,
    /// Set when the primary refused us because it knows a newer epoch, or similar.
    pub refused: Option<String>,
    /// This start installed a snapshot before the engine opened.
    pub bootstrapped_from_snapshot: Option<SnapshotInstalled>,
}

/// What a snapshot bootstrap installed.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInstalled {
    /// The snapshot holds LSNs 1..=last_lsn; following resumes after it.
    pub last_lsn: Lsn,
    /// Bytes of snapshot files received.
    pub bytes: u64,
    /// From the first connection attempt to the installed store.
    pub seconds: f64,
}

impl Default for ReplicaStatus {
    fn default() -> Self {
        ReplicaStatus {
            // 1 µs .. 1 hour, 3 significant digits: a fixed ~200 KiB whatever the traffic.
            apply_delay_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            commit_lag_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            connected: false,
            primary_epoch: 0,
            primary_last: Lsn(0),
            applied: Lsn(0),
            applied_received_ms: 0,
            reconnects: 0,
            bytes_received: 0,
            entries_applied: 0,
            quarantined: 0,
            quarantine_files: Vec::new(),
            last_error: None,
            refused: None,
            bootstrapped_from_snapshot: None,
        }
    }
}

/// Percentiles of a delay histogram (µs), in ms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DelaySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl DelaySummary {
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> DelaySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        DelaySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

impl ReplicaStatus {
    pub fn lag_lsn(&self) -> u64 {
        self.primary_last.0.saturating_sub(self.applied.0)
    }

    /// Seconds since the primary received the oldest entry we have not applied: 0 when caught up.
    /// Both clocks are assumed synchronised (NTP); on one machine they are the same clock.
    pub fn lag_seconds(&self) -> f64 {
        if self.lag_lsn() == 0 || self.applied_received_ms == 0 {
            return 0.0;
        }
        ((now_ms() - self.applied_received_ms).max(0) as f64) / 1000.0
    }
}

/// Called after each applied batch with the primary's `received_at` (ms) of each entry and the
/// batch's commit times on the primary (runs, see `trackstore_engine::commit_clock`), for the
/// metrics' apply delay and replication lag.
pub type OnApplied = Box<dyn Fn(&[i64], &[(u32, i64)]) + Send + Sync>;

/// How a promotion request is answered: (epoch, first LSN of the epoch), or why it failed.
pub type PromoteReply = oneshot::Sender<Result<(u64, Lsn), String>>;

/// Requests to the follower task.
#[derive(Debug)]
pub enum Control {
    /// Stop following and become primary now (disaster: the primary may be gone). Answers (epoch,
    /// first LSN of the epoch).
    Promote(PromoteReply),
    /// Planned switchover: the primary stops writes, we apply everything up to its final LSN, then
    /// promote and tell it (it fences itself). RPO = 0.
    Switchover(PromoteReply),
}

fn now_ms() -> i64 {
    trackstore_engine::Timestamp::now().as_millis()
}

/// Follows the primary until promoted (returns the new epoch) or until `control` is closed.
pub async fn follow(
    engine: Arc<Engine>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    options: ReplicaOptions,
    status: Arc<Mutex<ReplicaStatus>>,
    on_applied: OnApplied,
    mut control: mpsc::Receiver<Control>,
) -> Option<(u64, Lsn)> {
    let mut backoff = BACKOFF_MIN;
    let mut pending: Option<Control> = None;
    loop {
        if let Some(Control::Promote(reply)) = pending.take() {
            return promote(&engine, reply).await;
        }
        let started = Instant::now();
        let mut queueing = None;
        let result = session(
            &engine,
            &endpoint,
            &client,
            &options,
            &status,
            &on_applied,
            &mut control,
            &mut pending,
            &mut queueing,
        )
        .await;
        // A batch still being queued to the writer when the session ended finishes first (its
        // parts are not cancelled by dropping the task): whatever comes next — the next session's
        // truncation and batches, a promotion — must reach the writer after all of them. An
        // async wait, bounded by the writer's work on the parts before it.
        if let Some(queueing) = queueing {
            let _ = queueing.await;
        }
        {
            let mut s = status.lock().expect("status lock");
            s.connected = false;
            match &result {
                Ok(Some(_)) => {}
                Ok(None) => s.last_error = None,
                Err(e) => s.last_error = Some(e.to_string()),
            }
        }
        match result {
            Ok(Some(promoted)) => return Some(promoted),
            Ok(None) if pending.is_none() && control.is_closed() => return None,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(primary = %options.primary, error = %e, "replication session failed")
            }
        }
        if matches!(pending, Some(Control::Promote(_))) {
            continue;
        }
        if let Some(Control::Switchover(reply)) = pending.take() {
            let _ = reply.send(Err(
                "the primary is not connected: a planned switchover needs it; \
                 promote without --planned if it is gone"
                    .into(),
            ));
        }
        if started.elapsed() > BACKOFF_MAX * 5 {
            backoff = BACKOFF_MIN;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            c = control.recv() => match c {
                Some(c) => pending = Some(c),
                None => return None,
            },
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
        status.lock().expect("status lock").reconnects += 1;
    }
}

async fn promote(engine: &Arc<Engine>, reply: PromoteReply) -> Option<(u64, Lsn)> {
    let e = engine.clone();
    match tokio::task::spawn_blocking(move || e.promote()).await {
        Ok(Ok(promoted)) => {
            let _ = reply.send(Ok(promoted));
            Some(promoted)
        }
        Ok(Err(e)) => {
            let _ = reply.send(Err(e.to_string()));
            None
        }
        Err(e) => {
            let _ = reply.send(Err(e.to_string()));
            None
        }
    }
}

/// One connection. Ok(Some) when promoted during it; Ok(None) when it ended without error (or a
/// control request needs the loop); Err when it broke. `queueing` holds the batch being queued to
/// the writer (`queue_batch`) when it ends: the caller waits for it before anything else.
#[allow(clippy::too_many_arguments)]
async fn session(
    engine: &Arc<Engine>,
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    options: &ReplicaOptions,
    status: &Arc<Mutex<ReplicaStatus>>,
    on_applied: &OnApplied,
    control: &mut mpsc::Receiver<Control>,
    pending: &mut Option<Control>,
    queueing: &mut Option<Queueing>,
) -> Result<Option<(u64, Lsn)>, ReplError> {
    let addr = tokio::net::lookup_host(&options.primary)
        .await
        .map_err(|e| ReplError::Connection(format!("resolving {}: {e}", options.primary)))?
        .next()
        .ok_or_else(|| ReplError::Connection(format!("{} resolves to nothing", options.primary)))?;
    let server_name = options
        .primary
        .rsplit_once(':')
        .map_or(options.primary.as_str(), |(h, _)| h)
        .trim_matches(['[', ']']);
    let conn = endpoint
        .connect_with(client.clone(), addr, server_name)
        .map_err(|e| ReplError::Connection(e.to_string()))?
        .await
        .map_err(|e| ReplError::Connection(e.to_string()))?;
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ReplError::Connection(e.to_string()))?;
    let mut reader = FrameReader::new(recv);
    let local = log_view(engine)?;
    write_frame(
        &mut send,
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            node: options.node.clone(),
            history: local
                .history
                .entries()
                .iter()
                .map(|(e, l)| (*e, l.0))
                .collect(),
            known_epoch: local.known_epoch,
            last_lsn: local.last_lsn.0,
            // Our engine is open: a snapshot can only be installed by a restart without a store.
            accepts_snapshot: false,
        },
    )
    .await?;
    // With TLS 1.3 a certificate the primary rejects shows up here, on the first read.
    let mut follower = Follower::new();
    match reader.next().await? {
        Some(Frame::Welcome {
            history,
            epoch,
            last_lsn,
            start_from,
            prev_digest,
        }) => {
            if start_from > 1 {
                // Both logs claim the same entry at start_from - 1 (same epoch there): check it.
                let (e, at) = (engine.clone(), Lsn(start_from - 1));
                let ours = tokio::task::spawn_blocking(move || e.anchor_digest(at))
                    .await
                    .map_err(|e| ReplError::Protocol(e.to_string()))??;
                // A tombstone keeps its event's digest: an erasure on one side is no divergence.
                if ours.is_some_and(|d| d != prev_digest) {
                    let msg = format!(
                        "this log and the primary's differ at LSN {} although their epoch \
                         histories agree there: two primaries used the same epoch number. This \
                         node must not follow; move its data directory aside and start it again \
                         to rebuild it from the primary",
                        start_from - 1
                    );
                    status.lock().expect("status lock").refused = Some(msg.clone());
                    return Err(ReplError::Protocol(msg));
                }
            }
            let primary_history =
                EpochHistory::new(history.into_iter().map(|(e, l)| (e, Lsn(l))).collect())
                    .map_err(|e| ReplError::Protocol(format!("the primary's {e}")))?;
            let plan = follower
                .on_welcome(
                    &local,
                    &primary_history,
                    epoch,
                    Lsn(last_lsn),
                    Lsn(start_from),
                )
                .map_err(|e| ReplError::Protocol(e.to_string()))?;
            let e = engine.clone();
            tokio::task::spawn_blocking(move || e.note_epoch(plan.note_epoch))
                .await
                .map_err(|e| ReplError::Protocol(e.to_string()))??;
            if let Some(keep) = plan.truncate_after {
                let (e, dir) = (engine.clone(), options.quarantine_dir.clone());
                let outcome =
                    tokio::task::spawn_blocking(move || quarantine_and_truncate(&e, keep, &dir))
                        .await
                        .map_err(|e| ReplError::Protocol(e.to_string()))?;
                if let Err(ReplError::Unrejoinable(msg)) = &outcome {
                    status.lock().expect("status lock").refused = Some(msg.clone());
                }
                let (file, removed) = outcome?;
                tracing::warn!(removed, file = %file.display(), after = keep.0,
                    "divergent tail moved to quarantine and truncated (re-ingest it with `trackctl quarantine reingest`)");
                let mut s = status.lock().expect("status lock");
                s.quarantined += removed;
                s.quarantine_files.push(file);
            }
            let mut s = status.lock().expect("status lock");
            s.connected = true;
            s.refused = None;
            s.primary_epoch = epoch;
            s.primary_last = Lsn(last_lsn);
            s.applied = engine.last_lsn();
        }
        Some(Frame::Refused { reason, fenced_by }) => {
            if let Some(epoch) = fenced_by {
                let e = engine.clone();
                let _ = tokio::task::spawn_blocking(move || e.note_epoch(epoch)).await;
            }
            status.lock().expect("status lock").refused = Some(reason.clone());
            return Err(ReplError::Protocol(format!(
                "the primary refused: {reason}"
            )));
        }
        Some(Frame::SnapshotBegin { last_lsn, .. }) => {
            // We said we cannot take one; a primary that sends one anyway gets nothing installed.
            let reason = format!(
                "the primary sent a snapshot (up to LSN {last_lsn}) that this running replica \
                 cannot install: stop this node, move its data directory aside and start it again \
                 to bootstrap from a snapshot"
            );
            status.lock().expect("status lock").refused = Some(reason.clone());
            conn.close(0u32.into(), b"cannot install a snapshot while running");
            return Err(ReplError::Snapshot(reason));
        }
        Some(other) => {
            return Err(ReplError::Protocol(format!(
                "expected Welcome, got {}",
                other.kind()
            )));
        }
        None => {
            return Err(ReplError::Connection(
                "the primary closed the stream".into(),
            ));
        }
    }
    tracing::info!(primary = %options.primary, from = engine.last_lsn().0 + 1, "following");

    // A switchover in progress: its answer, and the primary's final LSN once it stopped writes.
    let mut switchover: Option<(PromoteReply, Option<Lsn>)> = None;
    // Armed only while a switchover waits.
    let deadline = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(deadline);
    // Batches handed to the engine's writer and not yet durable, oldest first.
    let mut inflight: VecDeque<Inflight> = VecDeque::new();
    let mut last_ack = Instant::now();
    loop {
        // A switchover completes once the primary's final LSN is applied (and no batch is still
        // being queued: none can be after the final LSN, but the promotion must come after it).
        if let Some((_, Some(final_lsn))) = &switchover
            && engine.last_lsn() >= *final_lsn
            && queueing.is_none()
        {
            let (reply, _) = switchover.take().expect("checked");
            let e = engine.clone();
            let promoted = tokio::task::spawn_blocking(move || e.promote())
                .await
                .map_err(|e| ReplError::Protocol(e.to_string()))?;
            return match promoted {
                Ok((epoch, start)) => {
                    // Tell the old primary: it fences itself durably.
                    let _ = write_frame(&mut send, &Frame::Promoted { epoch }).await;
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    let _ = reply.send(Ok((epoch, start)));
                    Ok(Some((epoch, start)))
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                    Err(ReplError::Engine(e))
                }
            };
        }
        // One batch is queued at a time (so they reach the writer in order), and the next frame is
        // read only once it is.
        let room = queueing.is_none() && inflight.len() < APPLY_PIPELINE;
        let step = tokio::select! {
            done = async { (&mut inflight.front_mut().expect("guarded").done).await }, if !inflight.is_empty() => {
                Step::Applied(done)
            }
            queued = async { queueing.as_mut().expect("guarded").await }, if queueing.is_some() => {
                Step::Queued(queued)
            }
            f = reader.next(), if room => Step::Frame(f?),
            c = control.recv(), if switchover.is_none() => match c {
                Some(Control::Switchover(reply)) => {
                    write_frame(&mut send, &Frame::SwitchoverRequest).await?;
                    switchover = Some((reply, None));
                    deadline.as_mut().reset(tokio::time::Instant::now() + SWITCHOVER_TIMEOUT);
                    continue;
                }
                Some(other) => {
                    // Batches already queued are applied before the promotion (the writer runs
                    // commands in order); nothing more is read.
                    *pending = Some(other);
                    conn.close(0u32.into(), b"promoted");
                    return Ok(None);
                }
                None => {
                    conn.close(0u32.into(), b"stopping");
                    return Ok(None);
                }
            },
            _ = &mut deadline, if switchover.is_some() => {
                let (reply, _) = switchover.take().expect("checked");
                let _ = reply.send(Err(format!(
                    "the switchover did not complete within {} s; the old primary stays read-only \
                     — promote without --planned, or restart it to resume writes",
                    SWITCHOVER_TIMEOUT.as_secs()
                )));
                continue;
            }
        };
        let frame = match step {
            Step::Applied(done) => {
                let batch = inflight.pop_front().expect("guarded");
                let last = match done {
                    Ok(Ok(lsn)) => lsn,
                    Ok(Err(e)) => return Err(ReplError::Engine(e)),
                    Err(_) => return Err(ReplError::Protocol("the engine closed".into())),
                };
                on_applied(&batch.received, &batch.committed);
                {
                    let mut s = status.lock().expect("status lock");
                    s.applied = last;
                    s.primary_last = s.primary_last.max(last);
                    s.applied_received_ms = batch.received.last().copied().unwrap_or(0);
                    s.bytes_received += batch.bytes;
                    s.entries_applied += batch.received.len() as u64;
                    let now_us = trackstore_engine::commit_clock::now_us();
                    for r in &batch.received {
                        s.apply_delay_us
                            .saturating_record((now_us - r * 1000).max(1) as u64);
                    }
                    for &(n, at) in &batch.committed {
                        if at > 0 {
                            s.commit_lag_us
                                .saturating_record_n((now_us - at).max(1) as u64, u64::from(n));
                        }
                    }
                }
                // Acknowledge when the pipeline drains, and at least every ACK_INTERVAL under a
                // continuous stream: the primary's view of our lag needs no more.
                if inflight.is_empty() || last_ack.elapsed() >= ACK_INTERVAL {
                    write_frame(
                        &mut send,
                        &Frame::Ack {
                            applied_lsn: last.0,
                        },
                    )
                    .await?;
                    last_ack = Instant::now();
                }
                continue;
            }
            Step::Queued(queued) => {
                *queueing = None;
                let batch = queued.map_err(|e| ReplError::Protocol(e.to_string()))??;
                inflight.push_back(batch);
                continue;
            }
            Step::Frame(f) => f,
        };
        let Some(frame) = frame else {
            return Err(ReplError::Connection(
                "the primary ended the session".into(),
            ));
        };
        match frame {
            Frame::Entries {
                epoch,
                first_lsn,
                entries,
                committed,
            } => {
                follower
                    .check_entries(epoch, Lsn(first_lsn), entries.len())
                    .map_err(|e| ReplError::Protocol(e.to_string()))?;
                // `check_entries` refused an empty batch.
                let last = Lsn(first_lsn + entries.len() as u64 - 1);
                *queueing = Some(queue_batch(
                    engine.clone(),
                    epoch,
                    first_lsn,
                    entries,
                    committed,
                ));
                // The writer applies queued batches in order: the next batch follows this one.
                follower.applied(epoch, last);
            }
            Frame::Heartbeat {
                last_lsn, epoch, ..
            } => {
                follower.on_heartbeat(Lsn(last_lsn));
                let mut s = status.lock().expect("status lock");
                s.primary_last = s.primary_last.max(Lsn(last_lsn));
                s.primary_epoch = epoch;
            }
            Frame::SwitchoverReady { final_lsn } => {
                if let Some((_, f)) = &mut switchover {
                    *f = Some(Lsn(final_lsn));
                    let mut s = status.lock().expect("status lock");
                    s.primary_last = s.primary_last.max(Lsn(final_lsn));
                }
            }
            other => {
                return Err(ReplError::Protocol(format!(
                    "the primary sent an unexpected {} frame",
                    other.kind()
                )));
            }
        }
    }
}

const ACK_INTERVAL: Duration = Duration::from_millis(50);
/// Batches queued to the engine and not yet acknowledged by it, per session.
const APPLY_PIPELINE: usize = 8;

/// One replicated batch on its way to durability.
struct Inflight {
    done: oneshot::Receiver<trackstore_engine::Result<Lsn>>,
    /// The primary's `received_at` (ms) of each entry.
    received: Vec<i64>,
    /// Their commit times on the primary (runs; empty: unknown).
    committed: trackstore_engine::CommitRuns,
    bytes: u64,
}

enum Step {
    Applied(Result<trackstore_engine::Result<Lsn>, oneshot::error::RecvError>),
    Queued(Result<Result<Inflight, ReplError>, tokio::task::JoinError>),
    Frame(Option<Frame>),
}

/// A batch being decoded and queued to the writer on the blocking pool (`queue_batch`).
type Queueing = tokio::task::JoinHandle<Result<Inflight, ReplError>>;

/// Decodes a batch and queues it to the engine's writer, on the blocking pool: the writer's queue
/// (`WRITER_QUEUE_REQUESTS_MAX` commands) may be full — a batch is one command per removal entry,
/// each written alone with its own fsync, so a batch of erasures fills it by itself — and
/// `Engine::submit_replicated` then waits for room, which must not hold one of the runtime's
/// workers (two on the target machine). Decoding up to a megabyte of entries is off the workers
/// too. The session queues one batch at a time, so batches reach the writer in order.
fn queue_batch(
    engine: Arc<Engine>,
    epoch: u64,
    first_lsn: u64,
    entries: Vec<Bytes>,
    committed: trackstore_engine::CommitRuns,
) -> Queueing {
    tokio::task::spawn_blocking(move || {
        let mut bytes = 0u64;
        let mut events = Vec::with_capacity(entries.len());
        for (i, b) in entries.iter().enumerate() {
            let lsn = first_lsn + i as u64;
            bytes += b.len() as u64;
            let e = codec::decode_log_entry(b)
                .map_err(|e| ReplError::Protocol(format!("entry {lsn} does not decode: {e}")))?;
            if e.lsn() != Lsn(lsn) {
                return Err(ReplError::Protocol(format!(
                    "entry {lsn} carries LSN {}",
                    e.lsn()
                )));
            }
            events.push(e);
        }
        let received: Vec<i64> = events.iter().map(|e| e.received_at().as_millis()).collect();
        let (tx, rx) = oneshot::channel();
        engine.submit_replicated(events, epoch, move |r| {
            let _ = tx.send(r);
        })?;
        Ok(Inflight {
            done: rx,
            received,
            committed,
            bytes,
        })
    })
}

/// Writes the entries after `keep` to a new quarantine file (NDJSON of stored events, the same
/// shape as the timeline API), syncs it, then truncates the log. Returns the file and the count.
pub fn quarantine_and_truncate(
    engine: &Engine,
    keep: Lsn,
    dir: &Path,
) -> Result<(PathBuf, u64), ReplError> {
    let q = |e: std::io::Error| ReplError::Quarantine(format!("{}: {e}", dir.display()));
    // First make sure the tail can be truncated at all, so that a refusal writes no file (a tail
    // holding a removal would otherwise leave a file of personal data on every retry).
    let mut from = Lsn(keep.0 + 1);
    loop {
        let page = engine.read_log(from, 10_000)?;
        let Some(tail) = page.last() else { break };
        from = Lsn(tail.lsn().0 + 1);
        if let Some(LogEntry::Removal(r)) = page.iter().find(|e| matches!(e, LogEntry::Removal(_)))
        {
            return Err(ReplError::Unrejoinable(format!(
                "this node's divergent tail (after LSN {keep}) holds an erasure or retention entry \
                 at LSN {}, and removed data cannot be brought back to truncate it. Stop this node, \
                 move its data directory aside and start it again to rebuild it from the primary \
                 (repeat the erasure on the primary if it is missing there)",
                r.lsn
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(q)?;
    let last = engine.last_lsn();
    let path = dir.join(format!(
        "quarantine-{}-lsn-{}-{}.ndjson",
        now_ms(),
        keep.0 + 1,
        last.0
    ));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).map_err(q)?);
    let mut from = Lsn(keep.0 + 1);
    let mut written = 0u64;
    loop {
        let page = engine.read_log(from, 10_000)?;
        let Some(tail) = page.last() else { break };
        from = Lsn(tail.lsn().0 + 1);
        // Tombstones and removals carry no event to save; a tail holding a removal cannot be
        // truncated at all (the engine refuses it below).
        for e in page.iter().filter_map(LogEntry::as_event) {
            serde_json::to_writer(&mut file, &e.to_json())
                .map_err(|e| ReplError::Quarantine(e.to_string()))?;
            file.write_all(b"\n").map_err(q)?;
            written += 1;
        }
    }
    let file = file
        .into_inner()
        .map_err(|e| ReplError::Quarantine(e.to_string()))?;
    file.sync_all().map_err(q)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(q)?;
    let removed = engine.truncate_after(keep)?;
    if removed != written {
        return Err(ReplError::Quarantine(format!(
            "wrote {written} entries to {} but truncated {removed}",
            path.display()
        )));
    }
    Ok((path, removed))
}

/// One step of a snapshot transfer, for the caller to carry out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotStep {
    /// Create this new file; `complete` when it is empty (nothing follows for it).
    File { name: String, complete: bool },
    /// Append to the current file; `complete` when these are its last bytes (sync it).
    Data { data: Bytes, complete: bool },
    /// Every announced file arrived whole and the digest matches.
    End,
}

/// The receiving side of a snapshot, without I/O: checks each frame against what `SnapshotBegin`
/// announced and against the bounds (names, sizes, counts), tracks the digest, and says what to
/// write. Holds no file data: the caller writes each chunk before taking the next frame.
#[derive(Debug)]
pub struct SnapshotReceiver {
    last_lsn: Lsn,
    history: Vec<(u64, Lsn)>,
    files: u32,
    bytes: u64,
    files_seen: u32,
    /// Bytes announced by the files seen so far (each file's size counts once it is announced).
    bytes_announced: u64,
    bytes_received: u64,
    /// The file being received and the bytes it still lacks.
    current: Option<(String, u64)>,
    names: HashSet<String>,
    digest: SnapshotDigest,
    ended: bool,
}

fn bad(message: String) -> ReplError {
    ReplError::Snapshot(message)
}

impl SnapshotReceiver {
    /// Checks a `SnapshotBegin`.
    pub fn begin(
        last_lsn: u64,
        history: Vec<(u64, u64)>,
        files: u32,
        bytes: u64,
    ) -> Result<SnapshotReceiver, ReplError> {
        if files > SNAPSHOT_FILES_MAX {
            return Err(bad(format!(
                "{files} files announced; at most {SNAPSHOT_FILES_MAX} are accepted"
            )));
        }
        if bytes > SNAPSHOT_BYTES_MAX {
            return Err(bad(format!(
                "{bytes} bytes announced; at most {SNAPSHOT_BYTES_MAX} are accepted"
            )));
        }
        let history: Vec<(u64, Lsn)> = history.into_iter().map(|(e, l)| (e, Lsn(l))).collect();
        EpochHistory::new(history.clone()).map_err(|e| bad(format!("the snapshot's {e}")))?;
        if history.is_empty() {
            return Err(bad("the snapshot has no epoch history".into()));
        }
        Ok(SnapshotReceiver {
            last_lsn: Lsn(last_lsn),
            history,
            files,
            bytes,
            files_seen: 0,
            bytes_announced: 0,
            bytes_received: 0,
            current: None,
            names: HashSet::new(),
            digest: SnapshotDigest::default(),
            ended: false,
        })
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    pub fn history(&self) -> &[(u64, Lsn)] {
        &self.history
    }

    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// The next frame of the transfer.
    pub fn on_frame(&mut self, frame: Frame) -> Result<SnapshotStep, ReplError> {
        if self.ended {
            return Err(bad("a frame after SnapshotEnd".into()));
        }
        match frame {
            Frame::SnapshotFile { name, size } => {
                if let Some((current, left)) = &self.current {
                    return Err(bad(format!(
                        "file {name:?} started while {current:?} still lacks {left} bytes"
                    )));
                }
                session::check_snapshot_file_name(&name).map_err(bad)?;
                if self.files_seen == self.files {
                    return Err(bad(format!(
                        "file {name:?} is one more than the {} announced",
                        self.files
                    )));
                }
                if size > SNAPSHOT_FILE_BYTES_MAX
                    || self.bytes_announced.saturating_add(size) > self.bytes
                {
                    return Err(bad(format!(
                        "file {name:?} of {size} bytes goes past the {} bytes announced",
                        self.bytes
                    )));
                }
                if !self.names.insert(name.clone()) {
                    return Err(bad(format!("file {name:?} is sent twice")));
                }
                self.files_seen += 1;
                self.bytes_announced += size;
                self.digest.file(&name, size);
                let complete = size == 0;
                if !complete {
                    self.current = Some((name.clone(), size));
                }
                Ok(SnapshotStep::File { name, complete })
            }
            Frame::SnapshotChunk { data } => {
                let Some((name, left)) = &mut self.current else {
                    return Err(bad("a chunk outside any file".into()));
                };
                if data.is_empty() {
                    return Err(bad(format!("an empty chunk in {name:?}")));
                }
                if data.len() as u64 > *left {
                    return Err(bad(format!(
                        "a chunk of {} bytes overruns {name:?}, which lacks {left}",
                        data.len()
                    )));
                }
                *left -= data.len() as u64;
                let complete = *left == 0;
                if complete {
                    self.current = None;
                }
                self.bytes_received += data.len() as u64;
                self.digest.data(&data);
                Ok(SnapshotStep::Data { data, complete })
            }
            Frame::SnapshotEnd { sha256 } => {
                if let Some((name, left)) = &self.current {
                    return Err(bad(format!(
                        "the snapshot ended while {name:?} lacks {left} bytes"
                    )));
                }
                if self.files_seen != self.files || self.bytes_received != self.bytes {
                    return Err(bad(format!(
                        "the snapshot ended after {} files of {} bytes; {} files of {} bytes were \
                         announced",
                        self.files_seen, self.bytes_received, self.files, self.bytes
                    )));
                }
                self.ended = true;
                if std::mem::take(&mut self.digest).finish() != sha256 {
                    return Err(bad(
                        "the SHA-256 of the files received differs from the primary's".into(),
                    ));
                }
                Ok(SnapshotStep::End)
            }
            other => Err(bad(format!(
                "unexpected {} frame during a snapshot",
                other.kind()
            ))),
        }
    }
}

/// The outcome of [`bootstrap`].
#[derive(Clone, Debug, PartialEq)]
pub enum Bootstrap {
    /// A snapshot was received, verified and installed as `DATA/db`.
    Installed(SnapshotInstalled),
    /// The primary streams its log from LSN 1 instead: start with an empty store.
    FromLog,
    /// No snapshot could be asked for (primary unreachable, certificate refused, session refused):
    /// start with an empty store; the follower keeps trying and reports why.
    Unavailable(String),
}

/// What one bootstrap connection ended with.
enum Attempt {
    Done(Bootstrap),
    Busy(Duration),
}

fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), ReplError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| bad(format!("syncing {}: {e}", dir.display())))
}

/// For a node that holds no store yet (`DATA/db` absent), before its engine opens: asks `primary`
/// for a snapshot and installs it as `DATA/db` if the primary sends one (its log is long, or no
/// longer holds LSN 1). Waits while the primary is `Busy` with another replica's snapshot, and asks
/// again after a transfer cut off part way (up to 3 transfers). An error means a snapshot was
/// received and failed its checks, or every transfer was cut off: nothing was installed.
pub async fn bootstrap(
    data_dir: &Path,
    tls: &NodeTls,
    primary: &str,
    node: &str,
    full_verify: bool,
) -> Result<Bootstrap, ReplError> {
    let started = Instant::now();
    let incoming = data_dir.join(INCOMING_DIR);
    // What a crash in the middle of an earlier bootstrap left: never installed, start again.
    let leftover = incoming.clone();
    tokio::task::spawn_blocking(move || remove_dir_if_present(&leftover))
        .await
        .map_err(|e| ReplError::Protocol(e.to_string()))?
        .map_err(|e| bad(format!("removing {}: {e}", incoming.display())))?;
    let client = tls.client_config()?;
    let bind: SocketAddr = if primary.starts_with('[') {
        "[::]:0".parse().expect("a valid address")
    } else {
        "0.0.0.0:0".parse().expect("a valid address")
    };
    let endpoint = quinn::Endpoint::client(bind)
        .map_err(|e| ReplError::Connection(format!("binding {bind}: {e}")))?;
    let mut transfers = 0;
    let result = loop {
        match bootstrap_once(
            &endpoint,
            &client,
            primary,
            node,
            data_dir,
            started,
            full_verify,
        )
        .await
        {
            Ok(Attempt::Busy(wait)) => {
                tracing::info!(
                    wait_ms = wait.as_millis() as u64,
                    "the primary is sending a snapshot to another replica; asking again"
                );
                tokio::time::sleep(wait).await;
            }
            Ok(Attempt::Done(outcome)) => break Ok(outcome),
            // Only a broken connection is worth another transfer; a snapshot that arrived whole
            // and failed its checks would fail the same way again.
            Err(e @ ReplError::Connection(_)) if transfers + 1 < BOOTSTRAP_TRANSFERS_MAX => {
                transfers += 1;
                tracing::warn!(error = %e, attempt = transfers, "snapshot transfer cut off; asking again");
                let leftover = incoming.clone();
                tokio::task::spawn_blocking(move || remove_dir_if_present(&leftover))
                    .await
                    .map_err(|e| ReplError::Protocol(e.to_string()))?
                    .map_err(|e| bad(format!("removing {}: {e}", incoming.display())))?;
                tokio::time::sleep(BACKOFF_MAX).await;
            }
            Err(e) => break Err(e),
        }
    };
    endpoint.close(0u32.into(), b"bootstrap done");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    if result.is_err() {
        let leftover = incoming.clone();
        let _ = tokio::task::spawn_blocking(move || remove_dir_if_present(&leftover)).await;
    }
    result
}

async fn bootstrap_once(
    endpoint: &quinn::Endpoint,
    client: &quinn::ClientConfig,
    primary: &str,
    node: &str,
    data_dir: &Path,
    started: Instant,
    full_verify: bool,
) -> Result<Attempt, ReplError> {
    let unavailable = |e: String| Ok(Attempt::Done(Bootstrap::Unavailable(e)));
    let connected = tokio::time::timeout(BOOTSTRAP_CONNECT_TIMEOUT, async {
        let addr = tokio::net::lookup_host(primary)
            .await
            .map_err(|e| format!("resolving {primary}: {e}"))?
            .next()
            .ok_or_else(|| format!("{primary} resolves to nothing"))?;
        let server_name = primary
            .rsplit_once(':')
            .map_or(primary, |(h, _)| h)
            .trim_matches(['[', ']']);
        let conn = endpoint
            .connect_with(client.clone(), addr, server_name)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((conn, send, recv))
    })
    .await;
    let (conn, mut send, recv) = match connected {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return unavailable(e),
        Err(_) => {
            return unavailable(format!(
                "no answer from {primary} within {} s",
                BOOTSTRAP_CONNECT_TIMEOUT.as_secs()
            ));
        }
    };
    let mut reader = FrameReader::new(recv);
    let hello = Frame::Hello {
        version: PROTOCOL_VERSION,
        node: node.to_owned(),
        history: Vec::new(),
        known_epoch: 0,
        last_lsn: 0,
        accepts_snapshot: true,
    };
    if let Err(e) = write_frame(&mut send, &hello).await {
        return unavailable(e.to_string());
    }
    // With TLS 1.3 a certificate the primary rejects shows up here, on the first read.
    let mut rx = match reader.next().await {
        Ok(Some(Frame::SnapshotBegin {
            last_lsn,
            history,
            files,
            bytes,
        })) => SnapshotReceiver::begin(last_lsn, history, files, bytes)?,
        Ok(Some(Frame::Welcome { .. })) => {
            conn.close(0u32.into(), b"following the log");
            return Ok(Attempt::Done(Bootstrap::FromLog));
        }
        Ok(Some(Frame::Busy { retry_after_ms, .. })) => {
            conn.close(0u32.into(), b"busy");
            let wait = Duration::from_millis(u64::from(retry_after_ms));
            return Ok(Attempt::Busy(wait.clamp(BUSY_WAIT_MIN, BUSY_WAIT_MAX)));
        }
        Ok(Some(Frame::Refused { reason, .. })) => {
            return unavailable(format!("the primary refused: {reason}"));
        }
        Ok(Some(other)) => {
            return unavailable(format!(
                "the primary answered with a {} frame",
                other.kind()
            ));
        }
        Ok(None) => return unavailable("the primary closed the stream".into()),
        Err(e) => return unavailable(e.to_string()),
    };
    tracing::info!(
        last_lsn = rx.last_lsn().0,
        "receiving a snapshot from the primary"
    );
    receive_files(&mut reader, &mut rx, &data_dir.join(INCOMING_DIR)).await?;
    // Only now: the close code tells the primary that every byte arrived.
    conn.close(CLOSE_SNAPSHOT_RECEIVED.into(), b"snapshot received");
    let (data, last_lsn, history) = (data_dir.to_owned(), rx.last_lsn(), rx.history().to_vec());
    tokio::task::spawn_blocking(move || verify_and_install(&data, last_lsn, &history, full_verify))
        .await
        .map_err(|e| ReplError::Protocol(e.to_string()))??;
    Ok(Attempt::Done(Bootstrap::Installed(SnapshotInstalled {
        last_lsn,
        bytes: rx.bytes_received(),
        seconds: started.elapsed().as_secs_f64(),
    })))
}

/// Writes the snapshot's files into `incoming/db/` as they arrive (one chunk in memory at a time),
/// syncing each file and the directory.
async fn receive_files(
    reader: &mut FrameReader,
    rx: &mut SnapshotReceiver,
    incoming: &Path,
) -> Result<(), ReplError> {
    let db = trackstore_engine::db_path(incoming);
    let io = |what: &Path, e: std::io::Error| bad(format!("{}: {e}", what.display()));
    tokio::fs::create_dir_all(&db)
        .await
        .map_err(|e| io(&db, e))?;
    let mut file: Option<(PathBuf, tokio::fs::File)> = None;
    loop {
        let frame = match reader.next().await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                return Err(ReplError::Connection(
                    "the primary ended the snapshot stream before SnapshotEnd".into(),
                ));
            }
            Err(e @ ReplError::Frame(_)) => return Err(bad(e.to_string())),
            Err(e) => {
                return Err(ReplError::Connection(format!(
                    "the snapshot transfer broke: {e}"
                )));
            }
        };
        match rx.on_frame(frame)? {
            SnapshotStep::File { name, complete } => {
                let path = db.join(&name);
                let f = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .await
                    .map_err(|e| io(&path, e))?;
                if complete {
                    f.sync_all().await.map_err(|e| io(&path, e))?;
                } else {
                    file = Some((path, f));
                }
            }
            SnapshotStep::Data { data, complete } => {
                // The receiver only yields data for a file it announced and left open.
                let (path, f) = file.as_mut().expect("a file is open for its chunks");
                f.write_all(&data).await.map_err(|e| io(path, e))?;
                if complete {
                    f.sync_all().await.map_err(|e| io(path, e))?;
                    file = None;
                }
            }
            SnapshotStep::End => break,
        }
    }
    // Nothing may follow the end: a primary that keeps sending is not speaking this protocol.
    match reader.next().await {
        Ok(None) => {}
        Ok(Some(other)) => return Err(bad(format!("a {} frame after SnapshotEnd", other.kind()))),
        Err(e) => return Err(bad(format!("after SnapshotEnd: {e}"))),
    }
    let dir = db.clone();
    tokio::task::spawn_blocking(move || sync_dir(&dir))
        .await
        .map_err(|e| ReplError::Protocol(e.to_string()))?
}

/// Opens the store received in `DATA/snapshot.incoming`, runs the checks of `trackctl verify` on it,
/// checks it ends at `last_lsn` with this epoch `history`, closes it, then renames its `db/` to
/// `DATA/db` (atomic: a crash leaves either no store or the whole one) and syncs `DATA`. On any
/// failure nothing is installed. Blocking.
pub fn verify_and_install(
    data_dir: &Path,
    last_lsn: Lsn,
    history: &[(u64, Lsn)],
    full_verify: bool,
) -> Result<(), ReplError> {
    let incoming = data_dir.join(INCOMING_DIR);
    let engine = Engine::open(&incoming, EngineOptions::default())
        .map_err(|e| bad(format!("the snapshot does not open as a store: {e}")))?;
    // The transfer digest was checked already; the full logical check (every index entry, every
    // order state recomputed) is most of a bootstrap's time, so it is the operator's choice.
    let report = if full_verify {
        engine
            .verify()
            .map_err(|e| bad(format!("verifying the snapshot: {e}")))?
    } else {
        trackstore_engine::VerifyReport::default()
    };
    if !report.is_ok() {
        return Err(bad(format!(
            "the snapshot fails verification with {} problem(s): {}",
            report.problem_count,
            report.problems.join("; ")
        )));
    }
    if engine.last_lsn() != last_lsn {
        return Err(bad(format!(
            "the snapshot ends at LSN {} but the primary announced {last_lsn}",
            engine.last_lsn()
        )));
    }
    let held = engine.epoch_history();
    if held != history {
        // Both lists hold up to `HISTORY_MAX` entries: name where they part, not all of them.
        let at = held.iter().zip(history).take_while(|(a, b)| a == b).count();
        return Err(bad(format!(
            "the snapshot's epoch history differs from the announced one at entry {at}: {:?} \
             against {:?} ({} and {} entries)",
            held.get(at),
            history.get(at),
            held.len(),
            history.len()
        )));
    }
    engine.close();
    let target = trackstore_engine::db_path(data_dir);
    if target.exists() {
        return Err(bad(format!(
            "{} appeared during the bootstrap; the snapshot is not installed over it",
            target.display()
        )));
    }
    std::fs::rename(trackstore_engine::db_path(&incoming), &target)
        .map_err(|e| bad(format!("installing {}: {e}", target.display())))?;
    sync_dir(data_dir)?;
    remove_dir_if_present(&incoming)
        .map_err(|e| bad(format!("removing {}: {e}", incoming.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames of a well-formed transfer of `files`, with the primary's digest at the end.
    fn transfer(files: &[(&str, &[u8])], chunk: usize) -> (Frame, Vec<Frame>) {
        let mut digest = SnapshotDigest::default();
        let mut frames = Vec::new();
        for (name, data) in files {
            digest.file(name, data.len() as u64);
            frames.push(Frame::SnapshotFile {
                name: (*name).into(),
                size: data.len() as u64,
            });
            for piece in data.chunks(chunk) {
                digest.data(piece);
                frames.push(Frame::SnapshotChunk {
                    data: Bytes::copy_from_slice(piece),
                });
            }
        }
        frames.push(Frame::SnapshotEnd {
            sha256: digest.finish(),
        });
        let begin = Frame::SnapshotBegin {
            last_lsn: 42,
            history: vec![(1, 1), (2, 30)],
            files: files.len() as u32,
            bytes: files.iter().map(|(_, d)| d.len() as u64).sum(),
        };
        (begin, frames)
    }

    fn receiver(begin: Frame) -> Result<SnapshotReceiver, ReplError> {
        let Frame::SnapshotBegin {
            last_lsn,
            history,
            files,
            bytes,
        } = begin
        else {
            panic!("a SnapshotBegin");
        };
        SnapshotReceiver::begin(last_lsn, history, files, bytes)
    }

    /// Feeds every frame; the first error, or the steps.
    fn run(begin: Frame, frames: Vec<Frame>) -> Result<Vec<SnapshotStep>, String> {
        let mut rx = receiver(begin).map_err(|e| e.to_string())?;
        frames
            .into_iter()
            .map(|f| rx.on_frame(f).map_err(|e| e.to_string()))
            .collect()
    }

    const FILES: &[(&str, &[u8])] = &[
        ("000009.sst", b"sorted strings"),
        ("CURRENT", b"MANIFEST-000005\n"),
        ("IDENTITY", b""),
    ];

    #[test]
    fn a_whole_transfer_says_what_to_write_and_ends_once() {
        let (begin, frames) = transfer(FILES, 4);
        let mut rx = receiver(begin).expect("valid begin");
        assert_eq!(rx.last_lsn(), Lsn(42));
        assert_eq!(rx.history(), &[(1, Lsn(1)), (2, Lsn(30))]);
        let steps: Vec<SnapshotStep> = frames
            .into_iter()
            .map(|f| rx.on_frame(f).expect("valid frame"))
            .collect();
        assert_eq!(
            steps[0],
            SnapshotStep::File {
                name: "000009.sst".into(),
                complete: false
            }
        );
        assert_eq!(
            steps[4],
            SnapshotStep::Data {
                data: Bytes::from_static(b"gs"),
                complete: true
            }
        );
        assert!(steps.contains(&SnapshotStep::File {
            name: "IDENTITY".into(),
            complete: true
        }));
        assert_eq!(steps.last(), Some(&SnapshotStep::End));
        assert_eq!(rx.bytes_received(), 30);
        let again = rx.on_frame(Frame::SnapshotEnd { sha256: [0; 32] });
        assert!(again.is_err(), "nothing after the end");
    }

    #[test]
    fn a_wrong_sha256_is_refused() {
        let (begin, mut frames) = transfer(FILES, 5);
        let Some(Frame::SnapshotEnd { sha256 }) = frames.last_mut() else {
            panic!("ends with SnapshotEnd");
        };
        sha256[0] ^= 1;
        let err = run(begin, frames).expect_err("a wrong digest");
        assert!(err.contains("SHA-256"), "{err}");
        // The same bytes under another order of files do not match either.
        let (begin, _) = transfer(FILES, 5);
        let (_, mut swapped) = transfer(&[FILES[1], FILES[0], FILES[2]], 5);
        let (_, right) = transfer(FILES, 5);
        *swapped.last_mut().expect("end") = right.last().expect("end").clone();
        assert!(run(begin, swapped).is_err());
    }

    #[test]
    fn a_bad_or_repeated_file_name_is_refused() {
        for name in [
            "../db",
            "a/b",
            "..",
            ".",
            "",
            "/etc/passwd",
            "x\0y",
            ".hidden",
        ] {
            let (begin, frames) = transfer(&[(name, b"x")], 4);
            let err = run(begin, frames).expect_err(name);
            assert!(err.contains("snapshot file name"), "{name:?}: {err}");
        }
        let (begin, frames) = transfer(&[("CURRENT", b"a"), ("CURRENT", b"b")], 4);
        let err = run(begin, frames).expect_err("twice");
        assert!(err.contains("sent twice"), "{err}");
    }

    #[test]
    fn sizes_and_counts_must_match_what_was_announced() {
        // A chunk longer than its file.
        let (begin, mut frames) = transfer(&[("a", b"abc")], 4);
        frames.insert(
            1,
            Frame::SnapshotChunk {
                data: Bytes::from_static(b"abcd"),
            },
        );
        assert!(
            run(begin, frames)
                .expect_err("overrun")
                .contains("overruns")
        );
        // A file announced past the total.
        let (mut begin, frames) = transfer(FILES, 4);
        if let Frame::SnapshotBegin { bytes, .. } = &mut begin {
            *bytes -= 1;
        }
        assert!(run(begin, frames).is_err());
        // One more file than announced.
        let (mut begin, frames) = transfer(FILES, 4);
        if let Frame::SnapshotBegin { files, bytes, .. } = &mut begin {
            *files -= 1;
            *bytes += 100;
        }
        assert!(
            run(begin, frames)
                .expect_err("extra file")
                .contains("one more")
        );
        // The end before the last file is whole, or before every file came.
        let (begin, mut frames) = transfer(FILES, 4);
        frames.remove(frames.len() - 3);
        assert!(run(begin, frames).expect_err("short").contains("lacks"));
        let (mut begin, frames) = transfer(FILES, 4);
        if let Frame::SnapshotBegin { files, bytes, .. } = &mut begin {
            *files += 1;
            *bytes += 1;
        }
        assert!(
            run(begin, frames)
                .expect_err("missing file")
                .contains("announced")
        );
        // A new file while the current one lacks bytes; a chunk outside any file.
        let (begin, mut frames) = transfer(FILES, 4);
        frames.remove(1);
        assert!(run(begin, frames).is_err());
        let (begin, mut frames) = transfer(FILES, 4);
        frames.insert(
            0,
            Frame::SnapshotChunk {
                data: Bytes::from_static(b"x"),
            },
        );
        assert!(run(begin, frames).expect_err("stray").contains("outside"));
        // Any other frame in the middle of a transfer.
        let (begin, mut frames) = transfer(FILES, 4);
        frames.insert(1, Frame::Ack { applied_lsn: 1 });
        assert!(
            run(begin, frames)
                .expect_err("other")
                .contains("unexpected")
        );
    }

    #[test]
    fn absurd_announcements_are_refused_before_anything_is_written() {
        assert!(SnapshotReceiver::begin(1, vec![(1, 1)], SNAPSHOT_FILES_MAX + 1, 1).is_err());
        assert!(SnapshotReceiver::begin(1, vec![(1, 1)], 1, SNAPSHOT_BYTES_MAX + 1).is_err());
        assert!(SnapshotReceiver::begin(1, vec![], 1, 1).is_err());
        assert!(SnapshotReceiver::begin(1, vec![(2, 1), (1, 5)], 1, 1).is_err());
        let mut rx = SnapshotReceiver::begin(1, vec![(1, 1)], 1, SNAPSHOT_BYTES_MAX).expect("ok");
        let huge = rx.on_frame(Frame::SnapshotFile {
            name: "000001.sst".into(),
            size: SNAPSHOT_FILE_BYTES_MAX + 1,
        });
        assert!(huge.is_err());
    }

    fn store_with_events(dir: &Path, n: usize) -> Engine {
        use trackstore_engine::event::{BodyFormat, parse_request};
        use trackstore_engine::time::Timestamp;
        let engine = Engine::open(dir, EngineOptions::default()).expect("open");
        engine.record_epoch(1).expect("epoch");
        let body: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"event_id":"e-{i}","order_id":"o-{}","status":"created","occurred_at":"2026-01-01T00:00:00Z"}}"#,
                    i % 7
                )
            })
            .collect();
        let events = parse_request(
            body.join("\n").as_bytes(),
            BodyFormat::Ndjson,
            Timestamp::now(),
        )
        .expect("valid events");
        engine.append(events).expect("append");
        engine
    }

    #[test]
    fn a_received_store_is_installed_only_if_it_verifies_and_matches_the_announcement() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let source = store_with_events(&tmp.path().join("source"), 25);
        let data = tmp.path().join("data");
        let incoming = data.join(INCOMING_DIR);
        source.checkpoint(&incoming).expect("checkpoint");
        let history = source.epoch_history();
        let target = trackstore_engine::db_path(&data);

        let err = verify_and_install(&data, Lsn(24), &history, true).expect_err("wrong end");
        assert!(err.to_string().contains("ends at LSN 25"), "{err}");
        assert!(!target.exists(), "nothing installed");
        let err = verify_and_install(&data, Lsn(25), &[(1, Lsn(1)), (2, Lsn(9))], false)
            .expect_err("wrong history");
        assert!(err.to_string().contains("epoch history"), "{err}");
        assert!(!target.exists(), "nothing installed");

        verify_and_install(&data, Lsn(25), &history, true).expect("a good snapshot installs");
        assert!(!incoming.exists(), "the incoming directory is gone");
        let installed = Engine::open(&data, EngineOptions::default()).expect("open");
        assert_eq!(installed.last_lsn(), Lsn(25));
        assert!(installed.verify().expect("verify").is_ok());
    }

    #[test]
    fn a_received_store_missing_a_file_is_not_installed() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let source = store_with_events(&tmp.path().join("source"), 5);
        let data = tmp.path().join("data");
        let incoming = data.join(INCOMING_DIR);
        source.checkpoint(&incoming).expect("checkpoint");
        std::fs::remove_file(trackstore_engine::db_path(&incoming).join("CURRENT"))
            .expect("remove CURRENT");
        let err = verify_and_install(&data, Lsn(5), &source.epoch_history(), false)
            .expect_err("a store without CURRENT");
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert!(!trackstore_engine::db_path(&data).exists());
    }

    #[test]
    fn a_frame_out_of_place_is_named_by_its_kind_not_printed() {
        // A 4 MiB batch where a snapshot frame belongs: its Debug text would be ~16 MiB.
        let entries = Frame::Entries {
            epoch: 1,
            first_lsn: 1,
            entries: vec![Bytes::from(vec![7u8; 1 << 20]); 4],
            committed: Vec::new(),
        };
        let (begin, _) = transfer(FILES, 4);
        let mut rx = receiver(begin).expect("valid begin");
        let err = rx.on_frame(entries).expect_err("out of place").to_string();
        assert!(err.contains("Entries"), "{err}");
        assert!(err.len() < 200, "{} bytes", err.len());
        let (begin, mut frames) = transfer(FILES, 4);
        frames.insert(0, Frame::Ack { applied_lsn: 1 });
        let err = run(begin, frames).expect_err("out of place");
        assert!(err.contains("unexpected Ack frame"), "{err}");
    }

    /// Holds the replica's writer inside the commit of a removal (a commit listener that waits),
    /// so that its queue can be filled; released when dropped, also when an assertion fails.
    struct Hold(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Hold {
        fn release(&self) {
            *self.0.0.lock().expect("hold lock") = false;
            self.0.1.notify_all();
        }
    }

    impl Drop for Hold {
        fn drop(&mut self) {
            self.release();
        }
    }

    fn event(id: &str, order: &str) -> trackstore_engine::Event {
        trackstore_engine::Event {
            event_id: id.into(),
            order_id: order.into(),
            status: trackstore_engine::Status::Created,
            occurred_at: trackstore_engine::Timestamp::from_millis(1_700_000_000_000)
                .expect("in range"),
            source: None,
            carrier: None,
            reason: None,
            location: None,
            eta: None,
            attributes: None,
        }
    }

    /// How full the replica's writer queue is when the next batch (two commands: a removal, then
    /// an event) is queued.
    enum Fill {
        /// Room for one command: the batch's second command must wait.
        AllButOne,
        /// No room at all.
        Full,
    }

    /// A batch queued while the writer's queue is full neither holds the async worker nor fails:
    /// it waits for room on the blocking pool, and is applied once the writer moves on.
    fn a_batch_meets_a_full_writer_queue(fill: Fill) {
        use trackstore_engine::limits::WRITER_QUEUE_REQUESTS_MAX;
        use trackstore_engine::{Durability, Error};
        let options = || EngineOptions {
            durability: Durability::NoSyncUnsafe,
            ..EngineOptions::default()
        };
        let tmp = tempfile::tempdir().expect("temp dir");
        // The primary's log: three events, two erasures, one more event (the first event stays, so
        // that the log keeps its prefix).
        let primary = Engine::open(&tmp.path().join("primary"), options()).expect("open");
        primary
            .append(vec![
                event("e-0", "o-0"),
                event("e-1", "o-1"),
                event("e-2", "o-2"),
            ])
            .expect("append");
        // Read before the erasures, as a replica following live receives them: events, which the
        // erasures then remove on the replica too.
        let mut log = primary.read_log(Lsn(1), 10).expect("log");
        primary.erase_order("o-1").expect("erase").expect("erased");
        primary.erase_order("o-2").expect("erase").expect("erased");
        primary.append(vec![event("e-3", "o-3")]).expect("append");
        log.extend(primary.read_log(Lsn(4), 10).expect("log"));
        assert_eq!(log.len(), 6);
        assert!(matches!(log[3], LogEntry::Removal(_)));
        assert!(matches!(log[4], LogEntry::Removal(_)));

        let replica = Arc::new(Engine::open(&tmp.path().join("replica"), options()).expect("open"));
        replica.set_read_only("a replica").expect("read-only");
        let hold = Hold(Arc::new((Mutex::new(true), std::sync::Condvar::new())));
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let gate = hold.0.clone();
        // The removal at LSN 4 commits on the writer's planner thread (a removal runs alone): held
        // there, nothing takes commands off the queue.
        replica.on_commit(move |info| {
            if info.last_lsn != Lsn(4) {
                return;
            }
            let mut held = gate.0.lock().expect("hold lock");
            if *held {
                let _ = held_tx.send(());
            }
            while *held {
                held = gate.1.wait(held).expect("hold lock");
            }
        });
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        replica
            .submit_replicated(log[..4].to_vec(), 1, move |r| {
                let _ = first_tx.send(r);
            })
            .expect("queued");
        if held_rx.recv_timeout(Duration::from_secs(10)).is_err() {
            panic!(
                "the writer is not held in the removal at LSN 4: {:?}",
                first_rx.try_recv()
            );
        }
        // Nothing drains the queue now: fill it with appends (refused later: a read-only node).
        let room = match fill {
            Fill::AllButOne => 1,
            Fill::Full => 0,
        };
        for _ in 0..WRITER_QUEUE_REQUESTS_MAX - room {
            replica
                .submit_append(vec![event("x", "o-x")], |_| {})
                .expect("room in the queue");
        }
        if room == 0 {
            assert!(matches!(
                replica.submit_append(vec![event("x", "o-x")], |_| {}),
                Err(Error::Overloaded(_))
            ));
        }

        // The session's side, on a runtime of one worker: queue the next batch, and see that the
        // worker still runs other tasks while the batch waits for room.
        let (tick_tx, tick_rx) = std::sync::mpsc::channel();
        let entries: Vec<Bytes> = log[4..]
            .iter()
            .map(|e| Bytes::from(codec::encode_log_entry(e)))
            .collect();
        let engine = replica.clone();
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let ticker = tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let _ = tick_tx.send(());
                });
                let queued = queue_batch(engine, 1, 5, entries, Vec::new())
                    .await
                    .expect("the queueing task ends");
                let _ = ticker.await;
                let batch = queued?;
                assert_eq!(batch.received.len(), 2);
                batch
                    .done
                    .await
                    .map_err(|_| ReplError::Protocol("no answer".into()))?
                    .map_err(ReplError::Engine)
            })
        });
        let ticked = tick_rx.recv_timeout(Duration::from_secs(5));
        hold.release();
        assert!(
            ticked.is_ok(),
            "the async worker was blocked while the writer's queue was full"
        );
        let applied = worker.join().expect("the worker thread");
        assert_eq!(applied.expect("the batch is applied"), Lsn(6));
        assert_eq!(first_rx.recv().expect("answered").expect("applied"), Lsn(4));
        assert_eq!(replica.last_lsn(), Lsn(6));
        assert_eq!(replica.stats().events, 2, "o-0's and o-3's events are left");
        assert_eq!(
            replica.stats(),
            primary.stats(),
            "the replica equals its primary"
        );
    }

    #[test]
    fn a_batch_waiting_for_room_in_the_writer_queue_does_not_hold_the_async_worker() {
        a_batch_meets_a_full_writer_queue(Fill::AllButOne);
    }

    #[test]
    fn a_batch_meeting_a_full_writer_queue_waits_instead_of_failing() {
        a_batch_meets_a_full_writer_queue(Fill::Full);
    }
}
