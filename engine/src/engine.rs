//! The engine handle: open, append, replicate, subscribe to commits. Queries are in `query`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded};
use rocksdb::DB;

use crate::codec;
use crate::commit_clock::{CommitClock, CommitRuns, now_us};
use crate::cursor::CursorSealer;
use crate::entry::{ErasureReceipt, LogEntry, Removal, RetentionReport};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, StoredEvent};
use crate::keys;
use crate::limits::{EVENTS_PER_REQUEST_MAX, WRITER_QUEUE_REQUESTS_MAX};
use crate::plan::Outcome;
use crate::state::Stats;
use crate::store::{self, Cf, Tuning};
use crate::time::Timestamp;
use crate::writer::{self, Command, Reply};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// After the group's WAL is fsync'd (fdatasync): an acknowledged event survives power loss.
    #[default]
    Sync,
    /// After the group is written to the WAL without fsync: survives a process crash, NOT a power
    /// loss. For benchmarks and throwaway stores only.
    NoSyncUnsafe,
}

#[derive(Clone, Debug, Default)]
pub struct EngineOptions {
    pub durability: Durability,
    pub tuning: Tuning,
}

/// What one group commit made durable; given to commit listeners.
#[derive(Debug)]
pub struct CommitInfo<'a> {
    pub last_lsn: Lsn,
    pub events: u64,
    pub requests: u64,
    pub bytes: u64,
    /// Time of the `WriteBatch` write including the WAL sync. None when this commit shared the write
    /// of the commit published just before it (erasures staged into a group's write): the write
    /// happened, and was timed, once.
    pub write_time: Option<Duration>,
    /// The group's new events in LSN order.
    pub new_events: &'a [StoredEvent],
    /// LSNs of events removed by this commit (erasure, retention): subscribers and caches must forget
    /// them. Ascending.
    pub removed: &'a [Lsn],
}

type Listener = Box<dyn Fn(&CommitInfo<'_>) + Send + Sync>;

/// Publishes committed LSNs: to blocking waiters (a condition variable) and to registered listeners,
/// which run on the writer's committer thread and so must be quick and must not block (e.g. send on a channel).
pub(crate) struct CommitNotifier {
    last: Mutex<Lsn>,
    /// When recent groups committed, recorded before their LSNs become visible.
    clock: CommitClock,
    cond: Condvar,
    listeners: RwLock<Vec<Listener>>,
}

impl CommitNotifier {
    /// The log was truncated back to `last` (rejoin): waiters and listeners see it from here on.
    pub(crate) fn rewind(&self, last: Lsn) {
        self.clock.rewind(last);
        *self.last.lock().expect("commit lock") = last;
        self.cond.notify_all();
    }

    /// Publishes a commit; `own` when this node created its LSNs (a writable node: a replica's
    /// commits are applies of its primary's entries, whose commit times are the primary's).
    pub(crate) fn publish(&self, info: &CommitInfo<'_>, own: bool) {
        let mut last = self.last.lock().expect("commit lock");
        if own {
            // Before the LSNs are visible (`last`): a reader never finds them without a time.
            self.clock.record(Lsn(last.0 + 1), info.last_lsn, now_us());
        }
        *last = info.last_lsn;
        drop(last);
        self.cond.notify_all();
        for l in self.listeners.read().expect("listeners lock").iter() {
            l(info);
        }
    }
}

pub(crate) struct Shared {
    pub(crate) db: DB,
    pub(crate) stats: RwLock<Stats>,
    pub(crate) poisoned: OnceLock<String>,
    pub(crate) commits: CommitNotifier,
    pub(crate) sealer: CursorSealer,
    pub(crate) epochs: RwLock<Vec<(u64, Lsn)>>,
    /// Why client appends are refused (replica, fenced); None: this node accepts writes.
    pub(crate) read_only: RwLock<Option<String>>,
    /// The highest epoch heard of (durable in `meta`). Above the node's own epoch it is fenced.
    pub(crate) known_epoch: AtomicU64,
    /// The oldest LSN the log holds (durable in `meta`; 1 until a removal trimmed the log's prefix).
    pub(crate) first_lsn: AtomicU64,
    /// (first LSN - 1, its anchor digest) once the prefix was dropped.
    pub(crate) trim_anchor: RwLock<Option<(Lsn, u64)>>,
    /// The newest removal not purged yet (0: none); see `Engine::purge_pending`.
    pub(crate) purge_pending: AtomicU64,
    /// Orders a removal's commit and a purge clearing `purge_pending`.
    pub(crate) purge_lock: Mutex<()>,
    /// Where the next retention step starts in `by_time`: every key below was removed (see
    /// `removal::expire`). Cleared by a commit of an event below it and by an empty step.
    pub(crate) sweep_cursor: Mutex<Option<crate::keys::TimePos>>,
    /// The store is marked format 3 (see `FORMAT_CARRIERS`).
    pub(crate) format_marked: AtomicBool,
}

impl Shared {
    /// Marks the store format 3, durably, once: before this build's first write to it.
    pub(crate) fn mark_format(&self) -> Result<()> {
        if self.format_marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        self.db.put_cf_opt(
            store::handle(&self.db, Cf::Meta)?,
            keys::META_FORMAT,
            FORMAT_CARRIERS,
            &sync,
        )?;
        self.format_marked.store(true, Ordering::Release);
        Ok(())
    }

    /// This node accepts client writes (a primary not fenced nor stopping for a switchover).
    pub(crate) fn writable(&self) -> bool {
        self.read_only.read().expect("mode lock").is_none()
    }
}

/// An open store. Reads may be called from any number of threads; writes are queued to one writer
/// thread. Dropping the engine finishes queued writes, stops the writer and closes the database.
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    tx: Option<Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    data_dir: PathBuf,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// The RocksDB directory inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db")
}

/// Store formats. Format 1 keeps a copy of every event in `by_order`, as a primary's appends still
/// do; format 2 may also hold positions only there (empty values, a replica's applies:
/// `plan::ByOrderValue`); format 3 also records each order's carrier in its `status_index` entry
/// (`codec::encode_status_entry`), which this build rewrites when the carrier changes and older
/// builds would not. This build reads all three, entry by entry (format 1 and 2 index entries are
/// empty: `codec::StatusEntry::Unrecorded`). A store is marked format 3, durably, before this
/// build's first write to it (`Shared::mark_format`), so that an older build refuses it at open
/// instead of leaving stale carriers in the index; a store this build only opened and read
/// (`trackctl verify`, `trackctl checkpoint`) keeps its format.
const FORMAT_COPIES: &[u8] = b"trackstore-engine-1";
const FORMAT_POSITIONS: &[u8] = b"trackstore-engine-2";
const FORMAT_CARRIERS: &[u8] = b"trackstore-engine-3";

impl Engine {
    /// Opens the store in `data_dir` (created if missing). After a crash this is recovery: the store
    /// opens to exactly the acknowledged state and the LSN sequence continues after it.
    pub fn open(data_dir: &Path, options: EngineOptions) -> Result<Engine> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let db = store::open(&db_path(data_dir), &options.tuning)?;
        let meta = store::handle(&db, Cf::Meta)?;
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        let format_marked = match db.get_pinned_cf(meta, keys::META_FORMAT)? {
            Some(f) if *f == *FORMAT_CARRIERS => true,
            Some(f) if *f == *FORMAT_COPIES || *f == *FORMAT_POSITIONS => false,
            Some(f) => {
                return Err(Error::Corrupt(format!(
                    "unknown store format {:?}; this build reads {:?}, {:?} and {:?}",
                    String::from_utf8_lossy(&f),
                    String::from_utf8_lossy(FORMAT_COPIES),
                    String::from_utf8_lossy(FORMAT_POSITIONS),
                    String::from_utf8_lossy(FORMAT_CARRIERS)
                )));
            }
            None => {
                let mut batch = rocksdb::WriteBatch::default();
                batch.put_cf(meta, keys::META_FORMAT, FORMAT_CARRIERS);
                batch.put_cf(meta, keys::META_CURSOR_KEY, rand::random::<[u8; 32]>());
                db.write_opt(batch, &sync)?;
                true
            }
        };
        let cursor_key: [u8; 32] = db
            .get_pinned_cf(meta, keys::META_CURSOR_KEY)?
            .and_then(|k| (*k).try_into().ok())
            .ok_or_else(|| Error::Corrupt("the cursor key is missing".into()))?;
        let stats = match db.get_pinned_cf(meta, keys::META_STATS)? {
            Some(v) => codec::decode_stats(&v)?,
            None => Stats::default(),
        };
        // The stats record and the log are written in the same batch: check they agree.
        let last = last_log_entry(&db)?;
        let last_lsn = last.as_ref().map(LogEntry::lsn).unwrap_or_default();
        if last_lsn != stats.last_lsn {
            return Err(Error::Corrupt(format!(
                "the log ends at LSN {last_lsn} but the stats record says {}",
                stats.last_lsn
            )));
        }
        let last_received = last.map(|e| e.received_at()).unwrap_or(Timestamp::MIN);
        let epochs = read_epochs(&db)?;
        let own_epoch = epochs.last().map_or(0, |(e, _)| *e);
        let meta_u64 = |key: &[u8]| -> Result<Option<u64>> {
            match db.get_pinned_cf(meta, key)? {
                Some(v) => Ok(Some(u64::from_be_bytes((*v).try_into().map_err(|_| {
                    Error::Corrupt(format!(
                        "meta {:?} is not 8 bytes",
                        String::from_utf8_lossy(key)
                    ))
                })?))),
                None => Ok(None),
            }
        };
        let first_lsn = meta_u64(keys::META_FIRST_LSN)?.unwrap_or(1);
        let trim_anchor = meta_u64(keys::META_TRIM_ANCHOR)?
            .filter(|_| first_lsn > 1)
            .map(|d| (Lsn(first_lsn - 1), d));
        let purge_pending = meta_u64(keys::META_PURGE_PENDING)?.unwrap_or(0);
        let known_epoch = meta_u64(keys::META_KNOWN_EPOCH)?.unwrap_or(own_epoch);
        // A node that has heard of a newer epoch than its own was superseded: it stays fenced across
        // restarts until it rejoins as a replica.
        let read_only = (known_epoch > own_epoch).then(|| {
            format!(
                "fenced: epoch {known_epoch} exists, newer than this node's epoch {own_epoch}; \
                 another node was promoted"
            )
        });
        let shared = Arc::new(Shared {
            db,
            commits: CommitNotifier {
                last: Mutex::new(stats.last_lsn),
                clock: CommitClock::new(stats.last_lsn),
                cond: Condvar::new(),
                listeners: RwLock::new(Vec::new()),
            },
            stats: RwLock::new(stats),
            poisoned: OnceLock::new(),
            sealer: CursorSealer::new(cursor_key),
            epochs: RwLock::new(epochs),
            read_only: RwLock::new(read_only),
            known_epoch: AtomicU64::new(known_epoch),
            first_lsn: AtomicU64::new(first_lsn),
            trim_anchor: RwLock::new(trim_anchor),
            purge_pending: AtomicU64::new(purge_pending),
            purge_lock: Mutex::new(()),
            sweep_cursor: Mutex::new(None),
            format_marked: AtomicBool::new(format_marked),
        });
        let (tx, rx) = bounded(WRITER_QUEUE_REQUESTS_MAX);
        let writer_shared = shared.clone();
        let durability = options.durability;
        let writer = std::thread::Builder::new()
            .name("trackstore-writer".into())
            .spawn(move || writer::run(writer_shared, rx, durability, last_received))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the writer thread: {e}")))?;
        Ok(Engine {
            shared,
            tx: Some(tx),
            writer: Some(writer),
            data_dir: data_dir.to_owned(),
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    fn validate(events: &[Event]) -> Result<()> {
        if events.is_empty() {
            return Err(Error::BadRequest("the request holds no event".into()));
        }
        if events.len() > EVENTS_PER_REQUEST_MAX {
            return Err(Error::BadRequest(format!(
                "the request holds {} events; at most {EVENTS_PER_REQUEST_MAX} are accepted",
                events.len()
            )));
        }
        let now = Timestamp::now();
        for (index, e) in events.iter().enumerate() {
            e.validate(now)
                .map_err(|error| Error::Invalid { index, error })?;
        }
        Ok(())
    }

    /// Commands waiting for the writer thread (appends, erasures, epoch changes), not counting the
    /// group it is committing.
    pub fn writer_queue_len(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    fn sender(&self) -> Result<&Sender<Command>> {
        if let Some(reason) = self.shared.poisoned.get() {
            return Err(Error::Poisoned(reason.clone()));
        }
        self.tx.as_ref().ok_or(Error::Closed)
    }

    fn try_send(&self, cmd: Command) -> Result<()> {
        match self.sender()?.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded(WRITER_QUEUE_REQUESTS_MAX)),
            Err(TrySendError::Disconnected(_)) => Err(Error::Closed),
        }
    }

    /// Queues an append without blocking; `reply` runs on a writer thread once the request is durable
    /// (or failed), so it must be quick. Validation errors and a full queue are returned at once.
    pub fn submit_append(
        &self,
        events: Vec<Event>,
        reply: impl FnOnce(Result<Vec<Outcome>>) + Send + 'static,
    ) -> Result<()> {
        Self::validate(&events)?;
        self.try_send(Command::Append {
            events,
            reply: Box::new(reply),
        })
    }

    /// Appends one request and waits until it is durable. The request is atomic: all its events are
    /// stored (or recognised as duplicates), or none is.
    pub fn append(&self, events: Vec<Event>) -> Result<Vec<Outcome>> {
        Self::validate(&events)?;
        self.call(|reply| Command::Append { events, reply })
    }

    /// Applies entries numbered by a primary (replica side), through the same planner and writer as
    /// local appends (and the same removal code for erasures and retention). They must continue this
    /// log exactly and come from one `epoch` of the primary (recorded in the epoch history at the
    /// batch's first LSN when it is new here). Events and tombstones between two removals commit
    /// atomically; a removal commits alone. Only a read-only node (a replica) applies entries.
    /// Returns the last LSN.
    pub fn apply_replicated(&self, entries: Vec<LogEntry>, epoch: u64) -> Result<Lsn> {
        if entries.is_empty() {
            return Ok(self.last_lsn());
        }
        let (tx, rx) = bounded(1);
        self.submit_replicated(entries, epoch, move |r| {
            let _ = tx.send(r);
        })?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// Queues `apply_replicated` without waiting for it: `reply` runs on a writer thread once the
    /// batch is durable (or refused), so it must be quick. Batches queued in order are applied in
    /// order and may share one group commit (one fsync), which is what lets a replica keep up with a
    /// primary that commits many groups. A batch that does not continue the log is refused, and so
    /// is every batch queued after it (they no longer continue it either).
    ///
    /// Blocking: while the writer's queue is full this waits for room rather than failing, so call
    /// it where a thread may block (not on an async worker: e.g. `spawn_blocking`). A batch is one
    /// command per removal it holds (each runs alone, with its own fsync), so a batch of erasures
    /// can fill the queue by itself; the writer drains it, so the wait is bounded by its work.
    pub fn submit_replicated(
        &self,
        entries: Vec<LogEntry>,
        epoch: u64,
        reply: impl FnOnce(Result<Lsn>) + Send + 'static,
    ) -> Result<()> {
        if entries.is_empty() {
            return Err(Error::BadRequest("an empty replicated batch".into()));
        }
        for (index, e) in entries.iter().enumerate() {
            if let LogEntry::Event(e) = e {
                // Future-dated events are judged against the primary's receive time, not our clock.
                e.event
                    .validate(e.received_at)
                    .map_err(|error| Error::Invalid { index, error })?;
            }
        }
        // Checked again by the writer (a promotion can come in between); here to refuse before
        // queueing anything.
        if self.shared.writable() {
            return Err(Error::InvalidArgument(
                "this node accepts writes (primary); it does not apply replicated entries".into(),
            ));
        }
        let mut commands = split_replicated(entries, epoch);
        let Some(last) = commands.pop() else {
            return Err(Error::BadRequest("an empty replicated batch".into()));
        };
        // The batch's answer is its first failure: the parts after a failed one fail too, with a
        // less telling reason. Every part is queued with a blocking send: a full queue must neither
        // cut a batch in two nor fail it (the replica would drop its session and reconnect only to
        // find the queue as full).
        // A part after a refused one must not be applied even if it happens to continue the log
        // (the refused part was a resend of entries this store holds): the writer checks the flag
        // before planning each part, and a part's answer comes before the next part is planned.
        let first_error: Arc<Mutex<Option<Error>>> = Arc::default();
        let refused: Arc<AtomicBool> = Arc::default();
        let mut parts = Vec::with_capacity(commands.len() + 1);
        for part in commands {
            let (slot, flag) = (first_error.clone(), refused.clone());
            parts.push(part.into_command(
                refused.clone(),
                Box::new(move |r: Result<Lsn>| {
                    if let Err(e) = r {
                        flag.store(true, Ordering::SeqCst);
                        slot.lock().expect("error slot").get_or_insert(e);
                    }
                }),
            ));
        }
        parts.push(last.into_command(
            refused,
            Box::new(
                move |r: Result<Lsn>| match first_error.lock().expect("error slot").take() {
                    Some(e) => reply(Err(e)),
                    None => reply(r),
                },
            ),
        ));
        for part in parts {
            self.sender()?.send(part).map_err(|_| Error::Closed)?;
        }
        Ok(())
    }

    /// Erases every event and all state of an order (GDPR): log entries become tombstones, index
    /// entries, state and event ids are deleted, and an erasure entry naming the order only by a
    /// salted digest is logged (it replicates). Returns the receipt, or None when the store holds no
    /// event of the order (nothing is written). The bytes leave the disk at the next `purge`.
    pub fn erase_order(&self, order_id: &str) -> Result<Option<ErasureReceipt>> {
        crate::event::check_id(order_id, "order_id")
            .map_err(|error| Error::Invalid { index: 0, error })?;
        let order_id = order_id.to_owned();
        self.call(|reply| Command::Erase { order_id, reply })
    }

    /// One retention step: removes up to `max_events` (at most `REMOVAL_EVENTS_MAX`) of the events
    /// that occurred before `before`, oldest first, and orders left with no event. Call repeatedly
    /// until it removes nothing; each step is one short write, so ingest continues between steps.
    pub fn expire_before(&self, before: Timestamp, max_events: usize) -> Result<RetentionReport> {
        self.call(|reply| Command::Expire {
            before,
            max: max_events,
            reply,
        })
    }

    /// Makes removed data physically leave the disk: flushes the memtables (the WAL files holding
    /// removed events are then deleted), rewrites every SST file of every column family without the
    /// deleted entries (bottommost level included), and flushes again so that the MANIFEST, which
    /// records the key range of each SST file, rolls over to one naming only live files. Heavy: it
    /// rewrites the whole store; run it after erasures, not per request.
    pub fn purge(&self) -> Result<()> {
        let db = &self.shared.db;
        let pending = self.shared.purge_pending.load(Ordering::SeqCst);
        let handles = store::handles(db)?;
        self.flush()?;
        let before: std::collections::HashSet<String> =
            db.live_files()?.into_iter().map(|f| f.name).collect();
        let mut flush = rocksdb::FlushOptions::default();
        flush.set_wait(true);
        let mut compact = rocksdb::CompactOptions::default();
        compact.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(false);
        for h in &handles {
            db.compact_range_cf_opt(*h, None::<&[u8]>, None::<&[u8]>, &compact);
        }
        // A manual compaction reports no failure: check that every file from before it is gone.
        let survivors: Vec<String> = db
            .live_files()?
            .into_iter()
            .map(|f| f.name)
            .filter(|n| before.contains(n))
            .collect();
        if !survivors.is_empty() {
            return Err(Error::Purge(format!(
                "{} SST files were not rewritten by the compaction (e.g. {}); the removed data may \
                 still be on disk. Check the RocksDB LOG for a failed compaction (disk full?)",
                survivors.len(),
                survivors[0]
            )));
        }
        // Each flush is a MANIFEST write; past `MANIFEST_BYTES_MAX` the next one starts a new MANIFEST
        // holding only the live files (those written by the compaction above).
        let meta = store::handle(db, Cf::Meta)?;
        let manifest = store::current_manifest(&db_path(&self.data_dir))?;
        for _ in 0..store::PURGE_FLUSHES_MAX {
            db.put_cf(meta, keys::META_PURGE, [])?;
            db.flush_cf_opt(meta, &flush)?;
            if store::current_manifest(&db_path(&self.data_dir))? != manifest {
                // Done: the purge owed up to `pending` is paid, unless a removal came since.
                let _guard = self.shared.purge_lock.lock().expect("purge lock");
                if pending != 0 && self.shared.purge_pending.load(Ordering::SeqCst) == pending {
                    let mut sync = rocksdb::WriteOptions::default();
                    sync.set_sync(true);
                    let mut batch = rocksdb::WriteBatch::default();
                    batch.delete_cf(meta, keys::META_PURGE_PENDING);
                    db.write_opt(batch, &sync)?;
                    self.shared.purge_pending.store(0, Ordering::SeqCst);
                }
                return Ok(());
            }
        }
        Err(Error::Purge(format!(
            "the MANIFEST did not roll over after {} flushes",
            store::PURGE_FLUSHES_MAX
        )))
    }

    /// The LSN of the newest erasure or retention step whose bytes may still be on disk (a purge is
    /// owed); None after a purge that came after every removal. Durable across restarts.
    pub fn purge_pending(&self) -> Option<Lsn> {
        match self.shared.purge_pending.load(Ordering::SeqCst) {
            0 => None,
            l => Some(Lsn(l)),
        }
    }

    /// The digest replication compares for the entry at `lsn` (`LogEntry::anchor_digest`): from the
    /// log, or for the entry just before the log's first LSN, as recorded when the prefix was
    /// dropped. None when this node cannot tell (older, or beyond the log).
    pub fn anchor_digest(&self, lsn: Lsn) -> Result<Option<u64>> {
        if let Some((at, digest)) = *self.shared.trim_anchor.read().expect("anchor lock")
            && at == lsn
            && lsn.0 + 1 == self.first_lsn().0
        {
            return Ok(Some(digest));
        }
        Ok(self
            .read_log(lsn, 1)?
            .into_iter()
            .find(|e| e.lsn() == lsn)
            .map(|e| e.anchor_digest()))
    }

    /// Refuses client appends from now on (a replica, or a primary stopping for a switchover), with
    /// the reason they get. Returns the last LSN once every write queued before is committed: no
    /// client write commits after it.
    pub fn set_read_only(&self, reason: impl Into<String>) -> Result<Lsn> {
        let reason = Some(reason.into());
        self.call(|reply| Command::SetReadOnly { reason, reply })
    }

    /// Accepts client appends again, unless a newer epoch is known (then the node stays fenced and
    /// this fails).
    pub fn set_writable(&self) -> Result<Lsn> {
        if self.is_fenced() {
            return Err(Error::ReadOnly(self.read_only_reason().unwrap_or_default()));
        }
        self.call(|reply| Command::SetReadOnly {
            reason: None,
            reply,
        })
    }

    /// Why client appends are refused now; None when they are accepted.
    pub fn read_only_reason(&self) -> Option<String> {
        self.shared.read_only.read().expect("mode lock").clone()
    }

    /// Durably notes that `epoch` exists (heard from a peer). A writable node whose own epoch is older
    /// stops accepting writes at once and stays fenced across restarts. Returns whether this node is
    /// fenced (it knows an epoch newer than its own).
    pub fn note_epoch(&self, epoch: u64) -> Result<bool> {
        if epoch <= self.known_epoch() {
            return Ok(self.is_fenced());
        }
        self.call(|reply| Command::NoteEpoch { epoch, reply })
    }

    /// The highest epoch this node has heard of (its own included).
    pub fn known_epoch(&self) -> u64 {
        self.shared.known_epoch.load(Ordering::SeqCst)
    }

    /// This node's own epoch: the newest in its history (0 before any was recorded).
    pub fn epoch(&self) -> u64 {
        self.epoch_history().last().map_or(0, |(e, _)| *e)
    }

    /// True when a newer epoch than this node's own exists somewhere: it must not accept writes.
    pub fn is_fenced(&self) -> bool {
        self.known_epoch() > self.epoch()
    }

    /// Makes this node a writable primary in a new epoch, newer than every epoch it has heard of,
    /// recorded durably with its first LSN. Returns (epoch, first LSN).
    pub fn promote(&self) -> Result<(u64, Lsn)> {
        self.call(|reply| Command::Promote { reply })
    }

    /// Removes every entry after `after` (an old primary rejoining: its divergent tail), with its
    /// index entries, event ids and epochs that start after it; order states and stats are
    /// recomputed from what remains. Callers save the tail first (`read_log`). Only on a read-only
    /// node. Returns how many entries were removed.
    pub fn truncate_after(&self, after: Lsn) -> Result<u64> {
        if self.read_only_reason().is_none() {
            return Err(Error::InvalidArgument(
                "truncation needs a read-only node (a replica)".into(),
            ));
        }
        self.call(|reply| Command::Truncate { after, reply })
    }

    /// Durably records that `epoch` starts at the next LSN; returns that LSN. Epochs only grow.
    pub fn record_epoch(&self, epoch: u64) -> Result<Lsn> {
        self.call(|reply| Command::RecordEpoch { epoch, reply })
    }

    /// The epoch history, oldest first: (epoch, first LSN of the epoch).
    pub fn epoch_history(&self) -> Vec<(u64, Lsn)> {
        self.shared.epochs.read().expect("epochs lock").clone()
    }

    fn call<T: Send + 'static>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = bounded(1);
        let cmd = make(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        self.sender()?.send(cmd).map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// The oldest LSN the log holds: 1 until removals made a prefix of only tombstones and removal
    /// entries, which is then dropped (`read_log` starts here; a replica that needs an older entry
    /// is rebuilt from a snapshot).
    pub fn first_lsn(&self) -> Lsn {
        Lsn(self.shared.first_lsn.load(Ordering::SeqCst))
    }

    /// When `count` entries from `first` committed on this node, as runs (entries, µs since the Unix
    /// epoch; 0: unknown); empty when no time is known. Only the most recent groups are remembered
    /// (`commit_clock`).
    pub fn commit_times(&self, first: Lsn, count: usize) -> CommitRuns {
        self.shared.commits.clock.runs(first, count)
    }

    /// The last committed (durable) LSN.
    pub fn last_lsn(&self) -> Lsn {
        *self.shared.commits.last.lock().expect("commit lock")
    }

    /// Waits until an LSN greater than `after` is committed, or the timeout passes; returns the last
    /// committed LSN either way.
    pub fn wait_for_commit(&self, after: Lsn, timeout: Duration) -> Lsn {
        let deadline = Instant::now() + timeout;
        let mut last = self.shared.commits.last.lock().expect("commit lock");
        while *last <= after {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            last = self
                .shared
                .commits
                .cond
                .wait_timeout(last, left)
                .expect("commit lock")
                .0;
        }
        *last
    }

    /// Registers a function called on the writer's committer thread after every group commit, before the group's
    /// requests are answered. It must be quick and must not block (send on a channel, bump a counter).
    pub fn on_commit(&self, listener: impl Fn(&CommitInfo<'_>) + Send + Sync + 'static) {
        self.shared
            .commits
            .listeners
            .write()
            .expect("listeners lock")
            .push(Box::new(listener));
    }

    /// `Some(reason)` once a failed write has made the engine refuse writes.
    pub fn poisoned(&self) -> Option<String> {
        self.shared.poisoned.get().cloned()
    }

    /// Store-wide counts as of the last commit.
    pub fn stats(&self) -> Stats {
        self.shared.stats.read().expect("stats lock").clone()
    }

    /// A RocksDB integer property (e.g. `rocksdb.estimate-num-keys`) of one column family.
    pub fn property(&self, cf: Cf, name: &str) -> Result<Option<u64>> {
        Ok(self
            .shared
            .db
            .property_int_value_cf(store::handle(&self.shared.db, cf)?, name)?)
    }

    /// Flushes memtables to SST files, so that the next open replays no WAL. For graceful shutdown.
    pub fn flush(&self) -> Result<()> {
        // `DB::flush` flushes only the default column family, which holds nothing.
        let db = &self.shared.db;
        let handles = store::handles(db)?;
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        Ok(db.flush_cfs_opt(&handles, &opts)?)
    }

    /// Compacts every column family fully (reclaims space; used to measure bytes on disk).
    pub fn compact(&self) -> Result<()> {
        for cf in Cf::ALL {
            self.shared.db.compact_range_cf(
                store::handle(&self.shared.db, cf)?,
                None::<&[u8]>,
                None::<&[u8]>,
            );
        }
        Ok(())
    }

    /// Writes a consistent copy of the store into the data directory `dest` (which must not hold a
    /// store yet); `Engine::open(dest)` opens it. Safe while the engine serves reads and writes: SST
    /// files are hard-linked, the rest copied, all at one point in the log.
    pub fn checkpoint(&self, dest: &Path) -> Result<()> {
        std::fs::create_dir_all(dest).map_err(|e| {
            Error::InvalidArgument(format!("cannot create {}: {e}", dest.display()))
        })?;
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.shared.db)?;
        Ok(cp.create_checkpoint(db_path(dest))?)
    }

    /// Stops the writer after the queued requests and closes the database.
    pub fn close(mut self) {
        self.stop_writer();
    }

    fn stop_writer(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

fn last_log_entry(db: &DB) -> Result<Option<LogEntry>> {
    let mut it = db.raw_iterator_cf(store::handle(db, Cf::Log)?);
    it.seek_to_last();
    it.status()?;
    match it.item() {
        Some((k, v)) => {
            let lsn = keys::decode_log(k)?;
            let e = codec::decode_log_entry(v)?;
            if e.lsn() != lsn {
                return Err(Error::Corrupt(format!(
                    "log key {lsn} holds the entry of LSN {}",
                    e.lsn()
                )));
            }
            Ok(Some(e))
        }
        None => Ok(None),
    }
}

pub(crate) fn read_epochs(db: &DB) -> Result<Vec<(u64, Lsn)>> {
    let meta = store::handle(db, Cf::Meta)?;
    let mut it = db.raw_iterator_cf(meta);
    it.seek(keys::meta_epoch_prefix());
    let mut out = Vec::new();
    while let Some((k, v)) = it.item() {
        if !k.starts_with(keys::meta_epoch_prefix()) {
            break;
        }
        out.push((keys::decode_meta_epoch(k)?, codec::decode_epoch_start(v)?));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// One part of a replicated batch: a run of events and tombstones (one group) or one removal.
enum ReplicatedPart {
    Entries(Vec<LogEntry>, u64),
    Removal(Removal, u64),
}

impl ReplicatedPart {
    fn into_command(self, batch_refused: Arc<AtomicBool>, reply: Reply<Lsn>) -> Command {
        match self {
            ReplicatedPart::Entries(entries, epoch) => Command::Replicate {
                entries,
                epoch,
                batch_refused,
                reply,
            },
            ReplicatedPart::Removal(removal, epoch) => Command::ReplicateRemoval {
                removal,
                epoch,
                batch_refused,
                reply,
            },
        }
    }
}

fn split_replicated(entries: Vec<LogEntry>, epoch: u64) -> Vec<ReplicatedPart> {
    let mut parts = Vec::new();
    let mut run = Vec::new();
    for entry in entries {
        match entry {
            LogEntry::Removal(r) => {
                if !run.is_empty() {
                    parts.push(ReplicatedPart::Entries(std::mem::take(&mut run), epoch));
                }
                parts.push(ReplicatedPart::Removal(r, epoch));
            }
            other => run.push(other),
        }
    }
    if !run.is_empty() {
        parts.push(ReplicatedPart::Entries(run, epoch));
    }
    parts
}
