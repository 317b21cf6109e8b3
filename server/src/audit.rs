//! The audit log: `DATA/audit.log`, one JSON object per line for every admin action:
//!
//! ```json
//! {"time":"2026-11-21T09:30:00.000Z","who":"ops","action":"GET /v1/admin/replication","target":"replication","outcome":200,"request_id":"r-1"}
//! ```
//!
//! `who` is the token's name (or `anonymous-loopback` with authentication off), `outcome` the status
//! code, or `"started"` for the record written before a state-changing action runs. The auth
//! middleware records every admin request; handlers of state-changing actions (promote, erase) may
//! add their own record with [`Audit::record`], which takes the caller from `Extension<Caller>` and
//! the handle from `Extension<Audit>` (both put there by the middleware).
//!
//! One thread writes the log, fed by a bounded queue, and commits like the engine does: the records
//! queued while it wrote the last batch go out in one write and one fsync (when any of them needs
//! it), so concurrent erasures do not cost two fsyncs each (measured: at 700 erasures/s they
//! doubled the WAL's fsync time and cost ingest a third of its throughput, bench/RESULTS.md). The
//! file is opened for each batch (append mode), which lets an operator rotate it by renaming; a
//! failed write is cut back so that no partial line is left for the next record to run into, and
//! every record of that batch gets the error.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use serde::{Serialize, Serializer};
use trackstore_engine::Timestamp;

use crate::problem::Problem;

/// The audit log's name in the data directory.
pub const AUDIT_FILE: &str = "audit.log";
/// Bounds on a record's fields (in bytes; longer values are cut at a character boundary), so that a
/// client cannot write arbitrarily long lines.
pub const ACTION_PATH_BYTES_MAX: usize = 256;
pub const TARGET_BYTES_MAX: usize = 256;
pub const WHO_BYTES_MAX: usize = 64;
/// A client's `X-Request-Id` longer than this (or not printable ASCII) is replaced by a new one.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Records waiting for the writer thread; a caller past this waits for room.
pub const AUDIT_QUEUE_RECORDS_MAX: usize = 1024;
/// Records written (and fsync'd) together, at most.
pub const AUDIT_BATCH_RECORDS_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("cannot write the audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit log writer failed: {0}")]
    Worker(String),
}

impl From<AuditError> for Problem {
    fn from(e: AuditError) -> Problem {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit-failure",
            "Audit log unavailable",
            format!("{e}; admin changes are refused rather than performed unaudited"),
        )
    }
}

/// The `outcome` of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written (with fsync) before a state-changing action runs; the final record follows with the
    /// same `request_id`. A `started` record with no final one means the outcome is unknown (the
    /// request timed out or the server stopped).
    Started,
    /// The HTTP status of the answer.
    Status(u16),
}

impl Serialize for Outcome {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Outcome::Started => s.serialize_str("started"),
            Outcome::Status(code) => s.serialize_u16(*code),
        }
    }
}

impl From<u16> for Outcome {
    fn from(code: u16) -> Outcome {
        Outcome::Status(code)
    }
}

impl From<StatusCode> for Outcome {
    fn from(code: StatusCode) -> Outcome {
        Outcome::Status(code.as_u16())
    }
}

/// One line of the audit log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub who: String,
    pub action: String,
    pub target: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl AuditRecord {
    /// A record stamped now, its fields cut to their bounds.
    pub fn new(who: &str, action: &str, target: &str, outcome: impl Into<Outcome>) -> AuditRecord {
        AuditRecord {
            time: Timestamp::now().to_string(),
            who: truncate(who, WHO_BYTES_MAX).to_owned(),
            // A method and a space before the path.
            action: truncate(action, ACTION_PATH_BYTES_MAX + 16).to_owned(),
            target: truncate(target, TARGET_BYTES_MAX).to_owned(),
            outcome: outcome.into(),
            request_id: None,
        }
    }

    pub fn with_request_id(mut self, id: String) -> AuditRecord {
        self.request_id = Some(truncate(&id, REQUEST_ID_BYTES_MAX).to_owned());
        self
    }
}

/// Whether a record must be on disk before `append` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persist {
    /// `fsync` before returning: for state-changing actions.
    Fsync,
    /// Written to the file only (the page cache): for reads of admin endpoints.
    NoFsync,
}

/// The handle to the audit log; cheap to clone. The writer thread stops after [`Audit::close`] (or
/// once every handle is gone) when the queue is written.
#[derive(Clone, Debug)]
pub struct Audit {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    /// None once closed: later records are refused.
    queue: Mutex<Option<tokio::sync::mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One record for the writer thread, and where its outcome goes.
struct Job {
    line: Vec<u8>,
    persist: Persist,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
}

impl Audit {
    /// Opens (creates if needed) `data_dir/audit.log`, so that an unwritable data directory stops
    /// the start rather than the first admin action, and starts the writer thread.
    pub fn open(data_dir: &Path) -> Result<Audit, AuditError> {
        let path = data_dir.join(AUDIT_FILE);
        write_line(&path, data_dir, b"", Persist::Fsync, &mut true).map_err(|source| {
            AuditError::Io {
                path: path.clone(),
                source,
            }
        })?;
        let (queue, jobs) = tokio::sync::mpsc::channel(AUDIT_QUEUE_RECORDS_MAX);
        let (file, dir) = (path.clone(), data_dir.to_owned());
        let writer = std::thread::Builder::new()
            .name("trackstore-audit".into())
            .spawn(move || write_batches(&file, &dir, jobs))
            .map_err(|e| AuditError::Worker(format!("cannot start the audit writer: {e}")))?;
        Ok(Audit {
            inner: Arc::new(Inner {
                path,
                queue: Mutex::new(Some(queue)),
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// Refuses new records and waits (at most `timeout`) until every record queued before is
    /// written: the last step of a shutdown, so that a record queued by a request that was cut off
    /// (request timeout, end of the grace period) is not lost when the process exits. Returns
    /// whether the writer finished in time.
    pub async fn close(&self, timeout: std::time::Duration) -> bool {
        drop(self.inner.queue.lock().expect("audit queue lock").take());
        let Some(writer) = self.inner.writer.lock().expect("audit writer lock").take() else {
            return true;
        };
        // The writer ends once the queue is drained and the senders cloned by appends in flight
        // are gone.
        let joined = tokio::task::spawn_blocking(move || writer.join());
        matches!(tokio::time::timeout(timeout, joined).await, Ok(Ok(Ok(()))))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Records an action and returns once the record is on disk (fsync'd): the call for handlers of
    /// state-changing admin actions (promote, erase). A handler that gets an error must not report
    /// success (`Problem::from(error)` is a 500 `audit-failure`).
    pub async fn record(
        &self,
        who: &str,
        action: &str,
        target: &str,
        outcome: impl Into<Outcome>,
    ) -> Result<(), AuditError> {
        self.append(
            &AuditRecord::new(who, action, target, outcome),
            Persist::Fsync,
        )
        .await
    }

    /// Appends one record. Once queued, it is written even if the caller goes away (a request
    /// timeout) before the answer.
    pub async fn append(&self, record: &AuditRecord, persist: Persist) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).map_err(|e| AuditError::Worker(e.to_string()))?;
        line.push(b'\n');
        let (done, outcome) = tokio::sync::oneshot::channel();
        let gone = || AuditError::Worker("the audit writer stopped".into());
        let queue = self.inner.queue.lock().expect("audit queue lock").clone();
        queue
            .ok_or_else(|| AuditError::Worker("the audit log is closed (shutting down)".into()))?
            .send(Job {
                line,
                persist,
                done,
            })
            .await
            .map_err(|_| gone())?;
        outcome
            .await
            .map_err(|_| gone())?
            .map_err(|source| AuditError::Io {
                path: self.inner.path.clone(),
                source,
            })
    }
}

/// The writer thread: each batch is what was queued while the last one was written.
fn write_batches(path: &Path, dir: &Path, mut jobs: tokio::sync::mpsc::Receiver<Job>) {
    // Whether the file's directory entry may not be durable yet: a file created by a batch without
    // fsync (an operator renamed the log, then an admin read was recorded) must have it synced by
    // the next batch that promises durability. `Audit::open` synced it.
    let mut entry_unsynced = false;
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < AUDIT_BATCH_RECORDS_MAX {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let lines: Vec<u8> = batch.iter().flat_map(|j| j.line.iter().copied()).collect();
        let persist = if batch.iter().any(|j| j.persist == Persist::Fsync) {
            Persist::Fsync
        } else {
            Persist::NoFsync
        };
        let result = write_line(path, dir, &lines, persist, &mut entry_unsynced);
        for job in batch {
            // A caller that went away needs no answer.
            let _ = job.done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

fn write_line(
    path: &Path,
    dir: &Path,
    line: &[u8],
    persist: Persist,
    entry_unsynced: &mut bool,
) -> std::io::Result<()> {
    if !path.exists() {
        *entry_unsynced = true;
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        // Who did what is not for every local user to read.
        .mode(0o600)
        .open(path)?;
    let before = file.metadata()?.len();
    if let Err(e) = file.write_all(line) {
        // Best effort: cut a partial line back off, so the next record starts on a line of its own.
        let _ = file.set_len(before);
        return Err(e);
    }
    if persist == Persist::Fsync {
        file.sync_data()?;
        if *entry_unsynced {
            // The file's directory entry must be durable too.
            std::fs::File::open(dir)?.sync_all()?;
            *entry_unsynced = false;
        }
    }
    Ok(())
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The request's `X-Request-Id` if it is short printable ASCII, else a new id unique to this
/// process run (start time and a counter).
pub fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get("x-request-id").and_then(|v| v.to_str().ok())
        && !v.is_empty()
        && v.len() <= REQUEST_ID_BYTES_MAX
        && v.bytes().all(|b| b.is_ascii_graphic())
    {
        return v.to_owned();
    }
    static START_MS: OnceLock<i64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let start = *START_MS.get_or_init(|| Timestamp::now().as_millis());
    format!("ts-{start:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn records_are_bounded_json_lines() {
        let r = AuditRecord::new("ops", "GET /v1/admin/replication", "replication", 200u16)
            .with_request_id("r-1".into());
        let v: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["who"], "ops");
        assert_eq!(v["outcome"], 200);
        assert_eq!(v["request_id"], "r-1");
        assert!(Timestamp::parse(v["time"].as_str().unwrap()).is_ok());
        let started = AuditRecord::new("ops", "DELETE /v1/orders/o-1", "o-1", Outcome::Started);
        let v = serde_json::to_value(&started).unwrap();
        assert_eq!(v["outcome"], "started");
        assert!(v.get("request_id").is_none());
        let long = AuditRecord::new("ops", &"é".repeat(1000), &"x".repeat(1000), 200u16);
        assert!(long.action.len() <= ACTION_PATH_BYTES_MAX + 16);
        assert_eq!(long.target.len(), TARGET_BYTES_MAX);
        assert!(long.action.chars().all(|c| c == 'é'));
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", "abc-123".parse().unwrap());
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", "a b".parse().unwrap());
        let made = request_id(&h);
        assert!(made.starts_with("ts-"), "{made}");
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn appends_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(audit.path()).unwrap(), b"");
        audit
            .record("ops", "POST /v1/admin/promote", "promote", StatusCode::OK)
            .await
            .unwrap();
        let r = AuditRecord::new("ci", "GET /v1/admin/replication", "replication", 403u16);
        audit.append(&r, Persist::NoFsync).await.unwrap();
        let text = std::fs::read_to_string(audit.path()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["action"], "POST /v1/admin/promote");
        assert_eq!(lines[0]["outcome"], json!(200));
        assert_eq!(lines[1]["who"], "ci");
        // Rotation by rename: the next record starts a new file.
        std::fs::rename(audit.path(), dir.path().join("audit.log.1")).unwrap();
        audit.record("ops", "x", "y", 200u16).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(audit.path())
                .unwrap()
                .lines()
                .count(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_are_all_written_as_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        // More than the queue and a batch hold, so that callers wait for room and batches fill.
        let n = AUDIT_QUEUE_RECORDS_MAX + AUDIT_BATCH_RECORDS_MAX + 10;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let audit = audit.clone();
                tokio::spawn(async move {
                    let persist = if i % 2 == 0 {
                        Persist::Fsync
                    } else {
                        Persist::NoFsync
                    };
                    let r =
                        AuditRecord::new("ops", "DELETE /v1/orders/x", &format!("t{i}"), 200u16);
                    audit.append(&r, persist).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let text = std::fs::read_to_string(audit.path()).unwrap();
        let mut targets: Vec<usize> = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["target"].as_str().unwrap()[1..].parse().unwrap()
            })
            .collect();
        targets.sort_unstable();
        assert_eq!(targets, (0..n).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_writes_every_queued_record_then_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        // Records queued by callers that went away before their answer (requests cut off at
        // shutdown): nobody waits for them but `close`.
        let n = AUDIT_BATCH_RECORDS_MAX * 3;
        {
            let queue = audit.inner.queue.lock().unwrap().clone().unwrap();
            for i in 0..n {
                let r = AuditRecord::new("ops", "DELETE /v1/orders/x", &format!("t{i}"), 200u16);
                let mut line = serde_json::to_vec(&r).unwrap();
                line.push(b'\n');
                let (done, _gone) = tokio::sync::oneshot::channel();
                queue
                    .send(Job {
                        line,
                        persist: Persist::Fsync,
                        done,
                    })
                    .await
                    .unwrap();
            }
        }
        assert!(audit.close(std::time::Duration::from_secs(30)).await);
        let text = std::fs::read_to_string(audit.path()).unwrap();
        assert_eq!(text.lines().count(), n, "every queued record is written");
        let e = audit.record("ops", "x", "after", 200u16).await.unwrap_err();
        assert!(e.to_string().contains("closed"), "{e}");
        assert!(
            audit.close(std::time::Duration::from_secs(1)).await,
            "twice is fine"
        );
    }

    #[tokio::test]
    async fn a_write_that_cannot_happen_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let audit = Audit::open(dir.path()).unwrap();
        std::fs::remove_file(audit.path()).unwrap();
        std::fs::create_dir(audit.path()).unwrap();
        let e = audit.record("ops", "x", "y", 200u16).await.unwrap_err();
        assert!(e.to_string().contains("audit.log"), "{e}");
        assert_eq!(Problem::from(e).slug, "audit-failure");
        assert!(Audit::open(dir.path()).is_err(), "open checks the file");
    }

    #[test]
    fn a_file_created_without_fsync_has_its_entry_synced_by_the_next_fsync_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUDIT_FILE);
        let mut unsynced = false;
        // Recreated after a rotation by a record that promises nothing.
        write_line(
            &path,
            dir.path(),
            b"read\n",
            Persist::NoFsync,
            &mut unsynced,
        )
        .unwrap();
        assert!(
            unsynced,
            "the new file's directory entry is not durable yet"
        );
        write_line(
            &path,
            dir.path(),
            b"more\n",
            Persist::NoFsync,
            &mut unsynced,
        )
        .unwrap();
        assert!(unsynced, "a second batch without fsync must not forget it");
        write_line(
            &path,
            dir.path(),
            b"change\n",
            Persist::Fsync,
            &mut unsynced,
        )
        .unwrap();
        assert!(!unsynced, "the first batch with fsync syncs the directory");
        write_line(&path, dir.path(), b"again\n", Persist::Fsync, &mut unsynced).unwrap();
        assert!(!unsynced);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "read\nmore\nchange\nagain\n"
        );
    }
}
