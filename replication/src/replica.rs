//! The replica's side: connect to the primary, say `Hello`, set aside a divergent tail if the
//! `Welcome` says so (quarantine file, then truncation), apply each batch atomically through the
//! engine's append path, acknowledge it; reconnect with backoff when anything breaks. Promotion runs
//! here too, so that no batch can be applied after the node became a primary.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use trackstore_engine::{Engine, Lsn, codec};

use crate::epochs::EpochHistory;
use crate::frame::{Frame, PROTOCOL_VERSION};
use crate::primary::log_view;
use crate::session::Follower;
use crate::transport::{FrameReader, ReplError, write_frame};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long a planned switchover waits for the primary to stop and for the last entries.
const SWITCHOVER_TIMEOUT: Duration = Duration::from_secs(30);

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
}

impl Default for ReplicaStatus {
    fn default() -> Self {
        ReplicaStatus {
            // 1 µs .. 1 hour, 3 significant digits: a fixed ~200 KiB whatever the traffic.
            apply_delay_us: hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
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

/// Called after each applied batch with the primary's `received_at` (ms) of each entry: the apply
/// delay per entry is the replication lag the metrics report.
pub type OnApplied = Box<dyn Fn(&[i64]) + Send + Sync>;

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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
        let result = session(
            &engine,
            &endpoint,
            &client,
            &options,
            &status,
            &on_applied,
            &mut control,
            &mut pending,
        )
        .await;
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
/// control request needs the loop); Err when it broke.
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
    let local = log_view(engine);
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
        }) => {
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
                let (file, removed) =
                    tokio::task::spawn_blocking(move || quarantine_and_truncate(&e, keep, &dir))
                        .await
                        .map_err(|e| ReplError::Protocol(e.to_string()))??;
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
        Some(other) => {
            return Err(ReplError::Protocol(format!(
                "expected Welcome, got {other:?}"
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
        // A switchover completes once the primary's final LSN is applied.
        if let Some((_, Some(final_lsn))) = &switchover
            && engine.last_lsn() >= *final_lsn
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
        let room = inflight.len() < APPLY_PIPELINE;
        let step = tokio::select! {
            done = async { (&mut inflight.front_mut().expect("guarded").done).await }, if !inflight.is_empty() => {
                Step::Applied(done)
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
                on_applied(&batch.received);
                {
                    let mut s = status.lock().expect("status lock");
                    s.applied = last;
                    s.primary_last = s.primary_last.max(last);
                    s.applied_received_ms = batch.received.last().copied().unwrap_or(0);
                    s.bytes_received += batch.bytes;
                    s.entries_applied += batch.received.len() as u64;
                    let now_us = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_micros() as i64);
                    for r in &batch.received {
                        s.apply_delay_us
                            .saturating_record((now_us - r * 1000).max(1) as u64);
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
            } => {
                follower
                    .check_entries(epoch, Lsn(first_lsn), entries.len())
                    .map_err(|e| ReplError::Protocol(e.to_string()))?;
                let mut bytes = 0u64;
                let mut events = Vec::with_capacity(entries.len());
                for (i, b) in entries.iter().enumerate() {
                    bytes += b.len() as u64;
                    let e = codec::decode_event(b).map_err(|e| {
                        ReplError::Protocol(format!(
                            "entry {} does not decode: {e}",
                            first_lsn + i as u64
                        ))
                    })?;
                    if e.lsn != Lsn(first_lsn + i as u64) {
                        return Err(ReplError::Protocol(format!(
                            "entry {} carries LSN {}",
                            first_lsn + i as u64,
                            e.lsn
                        )));
                    }
                    events.push(e);
                }
                let received: Vec<i64> = events.iter().map(|e| e.received_at.as_millis()).collect();
                let last = Lsn(first_lsn + events.len() as u64 - 1);
                let (tx, rx) = oneshot::channel();
                engine.submit_replicated(events, epoch, move |r| {
                    let _ = tx.send(r);
                })?;
                // The writer applies queued batches in order: the next batch follows this one.
                follower.applied(epoch, last);
                inflight.push_back(Inflight {
                    done: rx,
                    received,
                    bytes,
                });
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
                return Err(ReplError::Protocol(format!("the primary sent {other:?}")));
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
    bytes: u64,
}

enum Step {
    Applied(Result<trackstore_engine::Result<Lsn>, oneshot::error::RecvError>),
    Frame(Option<Frame>),
}

/// Writes the entries after `keep` to a new quarantine file (NDJSON of stored events, the same
/// shape as the timeline API), syncs it, then truncates the log. Returns the file and the count.
pub fn quarantine_and_truncate(
    engine: &Engine,
    keep: Lsn,
    dir: &Path,
) -> Result<(PathBuf, u64), ReplError> {
    let q = |e: std::io::Error| ReplError::Quarantine(format!("{}: {e}", dir.display()));
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
        from = Lsn(tail.lsn.0 + 1);
        for e in &page {
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
