//! The writer: the only code that writes to the database. The planner thread drains the bounded
//! request queue into a group and plans it (see `plan`); the group is written as one `WriteBatch`
//! with one WAL sync, and only then is each request answered. Groups are committed one at a time, in
//! order. Replicated batches are written by a second thread, the committer, while the planner plans
//! the next group over them (see `Pipeline`). A failed write poisons the engine: no later write is
//! acknowledged, including a group planned over the failed one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use rocksdb::{DB, WriteBatch, WriteOptions};

use crate::engine::{CommitInfo, Durability, Shared};
use crate::entry::{ErasureReceipt, LogEntry, Removal, RetentionReport};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, StoredEvent};
use crate::keys::TimePos;
use crate::limits::{
    ERASURES_PER_BATCH_MAX, EVENTS_PER_REQUEST_MAX, GROUP_BYTES_MAX, GROUP_EVENTS_MAX,
};
use crate::plan::{GroupPlan, Lookup, Op, Outcome, Unwritten, Written};
use crate::state::{OrderState, Stats};
use crate::store::{self, Cf};
use crate::time::Timestamp;
use crate::{codec, keys};

pub(crate) type Reply<T> = Box<dyn FnOnce(Result<T>) + Send>;

pub(crate) enum Command {
    Append {
        events: Vec<Event>,
        reply: Reply<Vec<Outcome>>,
    },
    /// Events and tombstones (a removal comes as `ReplicateRemoval`).
    Replicate {
        entries: Vec<LogEntry>,
        /// The primary's epoch that wrote the entries.
        epoch: u64,
        /// Set when an earlier part of the same replicated batch was refused: refuse this one too.
        batch_refused: Arc<AtomicBool>,
        reply: Reply<Lsn>,
    },
    RecordEpoch {
        epoch: u64,
        reply: Reply<Lsn>,
    },
    /// Refuse (Some(reason)) or accept (None) client appends from the next command on; answers with
    /// the last LSN once every command queued before it is committed.
    SetReadOnly {
        reason: Option<String>,
        reply: Reply<Lsn>,
    },
    /// Raise the highest epoch this node has heard of; fences a writable node that learns of a newer
    /// epoch than its own. Answers whether the node is (now) fenced.
    NoteEpoch {
        epoch: u64,
        reply: Reply<bool>,
    },
    /// Become writable in a new epoch above every epoch heard of; answers (epoch, first LSN).
    Promote {
        reply: Reply<(u64, Lsn)>,
    },
    /// Remove every entry after the LSN (rejoin). Runs alone, never inside a group.
    Truncate {
        after: Lsn,
        reply: Reply<u64>,
    },
    /// Erase an order (GDPR). Runs alone.
    Erase {
        order_id: String,
        reply: Reply<Option<ErasureReceipt>>,
    },
    /// One retention step: remove up to `max` events that occurred before `before`. Runs alone.
    Expire {
        before: Timestamp,
        max: usize,
        reply: Reply<RetentionReport>,
    },
    /// A removal entry from the primary (replica side). Runs alone.
    ReplicateRemoval {
        removal: Removal,
        epoch: u64,
        batch_refused: Arc<AtomicBool>,
        reply: Reply<Lsn>,
    },
}

impl Command {
    fn fail(self, e: Error) {
        match self {
            Command::Append { reply, .. } => reply(Err(e)),
            Command::Replicate { reply, .. } => reply(Err(e)),
            Command::RecordEpoch { reply, .. } => reply(Err(e)),
            Command::SetReadOnly { reply, .. } => reply(Err(e)),
            Command::NoteEpoch { reply, .. } => reply(Err(e)),
            Command::Promote { reply } => reply(Err(e)),
            Command::Truncate { reply, .. } => reply(Err(e)),
            Command::Erase { reply, .. } => reply(Err(e)),
            Command::Expire { reply, .. } => reply(Err(e)),
            Command::ReplicateRemoval { reply, .. } => reply(Err(e)),
        }
    }

    /// Commands that read and write the committed store directly: never part of a group.
    fn runs_alone(&self) -> bool {
        matches!(
            self,
            Command::Truncate { .. } | Command::Expire { .. } | Command::ReplicateRemoval { .. }
        )
    }
}

/// A planned command waiting for the group's commit.
enum Planned {
    Append(Reply<Vec<Outcome>>, Vec<Outcome>),
    Replicate(Reply<Lsn>, Lsn),
    Epoch(Reply<Lsn>, u64, Lsn),
    /// A mode change or epoch note: answered after the group's commit, with no data of its own.
    Barrier(Box<dyn FnOnce(Result<Lsn>) + Send>),
    Promote(Reply<(u64, Lsn)>, u64, Lsn),
}

impl Planned {
    fn answer(self, result: std::result::Result<Lsn, &Error>) {
        let err = |e: &Error| match e {
            Error::Poisoned(r) => Error::Poisoned(r.clone()),
            other => Error::Poisoned(other.to_string()),
        };
        match (self, result) {
            (Planned::Append(reply, outcomes), Ok(_)) => reply(Ok(outcomes)),
            (Planned::Replicate(reply, lsn), Ok(_)) => reply(Ok(lsn)),
            (Planned::Epoch(reply, _, start), Ok(_)) => reply(Ok(start)),
            (Planned::Barrier(reply), Ok(last)) => reply(Ok(last)),
            (Planned::Promote(reply, epoch, start), Ok(_)) => reply(Ok((epoch, start))),
            (Planned::Append(reply, _), Err(e)) => reply(Err(err(e))),
            (Planned::Replicate(reply, _), Err(e)) => reply(Err(err(e))),
            (Planned::Epoch(reply, ..), Err(e)) => reply(Err(err(e))),
            (Planned::Barrier(reply), Err(e)) => reply(Err(err(e))),
            (Planned::Promote(reply, ..), Err(e)) => reply(Err(err(e))),
        }
    }

    fn writes_meta(&self) -> bool {
        matches!(self, Planned::Epoch(..) | Planned::Promote(..))
    }
}

/// Reads the committed state for the planner.
pub(crate) struct DbLookup<'a>(pub &'a DB);

impl Lookup for DbLookup<'_> {
    fn event_id_lsn(&self, event_id: &str) -> Result<Option<Lsn>> {
        let cf = store::handle(self.0, Cf::EventIds)?;
        match self.0.get_pinned_cf(cf, event_id.as_bytes())? {
            Some(v) => Ok(Some(codec::decode_event_id_entry(&v)?)),
            None => Ok(None),
        }
    }

    fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>> {
        let cf = store::handle(self.0, Cf::Log)?;
        match self.0.get_pinned_cf(cf, keys::log(lsn))? {
            Some(v) => Ok(codec::decode_log_entry(&v)?.into_event()),
            None => Ok(None),
        }
    }

    fn order_state(&self, order_id: &str) -> Result<Option<OrderState>> {
        let cf = store::handle(self.0, Cf::Orders)?;
        match self.0.get_pinned_cf(cf, order_id.as_bytes())? {
            Some(v) => Ok(Some(codec::decode_state(&v)?)),
            None => Ok(None),
        }
    }
}

/// Requests with at least this many events read their committed event ids and order states in two
/// batched lookups before planning (`Prefetched`); smaller ones read them one at a time.
const PREFETCH_EVENTS_MIN: usize = 16;

/// The committed event ids and order states a request's events need, read with two RocksDB
/// `MultiGet`s (sorted, batched through each SST's index and filter: cheaper than one `get` per
/// event); anything not prefetched is read from the store. Keys the group in flight writes are not
/// read (its own values shadow them, see `Unwritten`); every other key keeps its committed value
/// while this group is planned: only the writer's committer writes, and only the group in flight.
struct Prefetched<'a> {
    store: &'a DbLookup<'a>,
    event_ids: HashMap<String, Option<Lsn>>,
    /// Taken out when planned: the plan keeps each order's state itself after the first lookup.
    orders: RefCell<HashMap<String, Option<OrderState>>>,
}

impl<'a> Prefetched<'a> {
    fn read<'e>(
        store: &'a DbLookup<'a>,
        unwritten: Option<&Written>,
        event_ids: impl Iterator<Item = &'e str>,
        order_ids: impl Iterator<Item = &'e str>,
    ) -> Result<Prefetched<'a>> {
        let event_ids = event_ids.filter(|id| !unwritten.is_some_and(|w| w.contains_event_id(id)));
        let order_ids = order_ids.filter(|id| !unwritten.is_some_and(|w| w.contains_order(id)));
        Ok(Prefetched {
            store,
            event_ids: multi_get(
                store.0,
                Cf::EventIds,
                event_ids,
                codec::decode_event_id_entry,
            )?,
            orders: RefCell::new(multi_get(
                store.0,
                Cf::Orders,
                order_ids,
                codec::decode_state,
            )?),
        })
    }
}

/// The values of `keys` (each once) in `cf`, decoded, with one sorted `MultiGet`.
fn multi_get<'k, T, E: Into<Error>>(
    db: &DB,
    cf: Cf,
    keys: impl Iterator<Item = &'k str>,
    decode: impl Fn(&[u8]) -> std::result::Result<T, E>,
) -> Result<HashMap<String, Option<T>>> {
    let mut keys: Vec<&str> = keys.collect();
    keys.sort_unstable();
    keys.dedup();
    let found = db.batched_multi_get_cf(
        store::handle(db, cf)?,
        keys.iter().map(|k| k.as_bytes()),
        true,
    );
    // Sized up front: collected from an iterator of results, the map grew an insert at a time.
    let mut values = HashMap::with_capacity(keys.len());
    for (k, v) in keys.iter().zip(found) {
        let value = v?.map(|v| decode(&v).map_err(Into::into)).transpose()?;
        values.insert((*k).to_owned(), value);
    }
    Ok(values)
}

impl Lookup for Prefetched<'_> {
    fn event_id_lsn(&self, event_id: &str) -> Result<Option<Lsn>> {
        match self.event_ids.get(event_id) {
            Some(lsn) => Ok(*lsn),
            None => self.store.event_id_lsn(event_id),
        }
    }

    fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>> {
        self.store.event(lsn)
    }

    fn order_state(&self, order_id: &str) -> Result<Option<OrderState>> {
        match self.orders.borrow_mut().remove(order_id) {
            Some(state) => Ok(state),
            None => self.store.order_state(order_id),
        }
    }
}

fn write_options(durability: Durability) -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(durability == Durability::Sync);
    opts
}

/// A planned group, ready to be committed.
struct Sealed {
    ops: Vec<Op>,
    stats: Stats,
    written: Arc<Written>,
    planned: Vec<Planned>,
    requests: usize,
    events: usize,
    bytes: usize,
    /// Erasures staged after the group in the same write (they touch none of its orders).
    erasures: Vec<Erasure>,
    received_at: Timestamp,
}

impl Sealed {
    fn fail(self, e: &Error) {
        for p in self.planned {
            p.answer(Err(e));
        }
        fail_erasures(self.erasures, e);
    }
}

/// The group the committer thread is writing (or has just written).
struct InFlight {
    written: Arc<Written>,
    stats: Stats,
    committed: bool,
}

/// The planner's side of the writer. A group of replicated batches goes to the committer thread,
/// and the planner plans the next group over it (`Unwritten`) while it is written and synced; any
/// other group is committed on the planner's own thread once the group in flight is. At most one
/// group is in flight, so memory stays bounded by two groups.
///
/// Why only replicated batches: a catching-up replica's writer is its bottleneck while the second
/// core is idle, and overlapping made catch-up 14–20% faster; on a primary the front end needs that
/// core, and the same overlap cost client appends 7–15% (bench/RESULTS.md, session 11).
struct Pipeline<'a> {
    shared: &'a Shared,
    write_opts: WriteOptions,
    to_committer: Sender<Sealed>,
    committed: Receiver<()>,
    in_flight: Option<InFlight>,
}

impl Pipeline<'_> {
    /// Waits until the group in flight (if any) is committed.
    fn drain(&mut self) {
        if let Some(f) = self.in_flight.take()
            && !f.committed
            && self.committed.recv().is_err()
        {
            self.committer_gone();
        }
    }

    /// The committer thread ended (it panicked): the group it held was not answered, and no later
    /// write may be acknowledged.
    fn committer_gone(&self) {
        let _ = self
            .shared
            .poisoned
            .set("the writer's committer thread stopped".into());
    }

    /// The next command for the group being planned: one already queued, or, while the previous
    /// group is still being written, the first that comes before that write ends. None when the
    /// group should be sealed.
    fn next_command(&mut self, rx: &Receiver<Command>) -> Option<Command> {
        if let Ok(cmd) = rx.try_recv() {
            return Some(cmd);
        }
        let f = self.in_flight.as_mut().filter(|f| !f.committed)?;
        crossbeam_channel::select! {
            recv(rx) -> cmd => cmd.ok(),
            recv(self.committed) -> done => {
                f.committed = true;
                if done.is_err() {
                    self.committer_gone();
                }
                rx.try_recv().ok()
            }
        }
    }

    /// Commits a group after the one in flight: hands it to the committer when it is `replicated`
    /// (made only of replicated batches, no metadata: the next plan sees all it writes through
    /// `Unwritten`), else commits it here.
    fn commit(&mut self, sealed: Sealed, replicated: bool) {
        self.drain();
        if !replicated {
            return commit_group(self.shared, sealed, &self.write_opts);
        }
        let in_flight = InFlight {
            written: Arc::clone(&sealed.written),
            stats: sealed.stats.clone(),
            committed: false,
        };
        match self.to_committer.send(sealed) {
            Ok(()) => self.in_flight = Some(in_flight),
            Err(e) => {
                self.committer_gone();
                e.into_inner().fail(&Error::Poisoned(
                    "the writer's committer thread stopped".into(),
                ));
            }
        }
    }

    /// What the next group is planned over: the stats and writes of the group in flight, if any.
    fn base(&self) -> (Stats, Option<Arc<Written>>) {
        match &self.in_flight {
            Some(f) => (f.stats.clone(), Some(Arc::clone(&f.written))),
            None => (self.shared.stats.read().expect("stats lock").clone(), None),
        }
    }
}

pub(crate) fn run(
    shared: Arc<Shared>,
    rx: Receiver<Command>,
    durability: Durability,
    last_received: Timestamp,
) {
    let shared = &*shared;
    let (to_committer, groups) = crossbeam_channel::bounded::<Sealed>(1);
    let (done, committed) = crossbeam_channel::bounded::<()>(1);
    std::thread::scope(|scope| {
        // Owns `done`: if it panics, the planner's `committed` disconnects instead of waiting.
        let committer = std::thread::Builder::new()
            .name("trackstore-commit".into())
            .spawn_scoped(scope, move || {
                let opts = write_options(durability);
                for sealed in groups {
                    commit_group(shared, sealed, &opts);
                    if done.send(()).is_err() {
                        break;
                    }
                }
            });
        if let Err(e) = committer {
            let reason = format!("cannot start the committer thread: {e}");
            let _ = shared.poisoned.set(reason.clone());
            for cmd in rx.iter() {
                cmd.fail(Error::Poisoned(reason.clone()));
            }
            return;
        }
        let mut pipeline = Pipeline {
            shared,
            write_opts: write_options(durability),
            to_committer,
            committed,
            in_flight: None,
        };
        plan_groups(&rx, last_received, &mut pipeline);
        pipeline.drain();
        // Dropping the pipeline closes the committer's queue; the scope joins it.
    });
}

/// The planner's loop: plans each group of queued commands and commits it (see `Pipeline`).
fn plan_groups(rx: &Receiver<Command>, mut last_received: Timestamp, pipeline: &mut Pipeline<'_>) {
    let shared = pipeline.shared;
    // A command that runs alone, found while filling a group, waits here for the next round.
    let mut pending: Option<Command> = None;
    loop {
        let first = match pending.take() {
            Some(cmd) => cmd,
            None => match pipeline.next_command(rx) {
                Some(cmd) => cmd,
                None => match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                },
            },
        };
        if first.runs_alone() {
            // It reads and writes the committed store: after the group in flight, which may fail.
            pipeline.drain();
        }
        if let Some(reason) = shared.poisoned.get() {
            first.fail(Error::Poisoned(reason.clone()));
            continue;
        }
        if first.runs_alone() {
            let at = Timestamp::now().max(last_received);
            if run_alone(shared, first, at, &pipeline.write_opts) {
                last_received = at;
            }
            continue;
        }
        let received_at = Timestamp::now().max(last_received);
        let (stats, unwritten) = pipeline.base();
        let mut plan = GroupPlan::new(stats);
        let lookup = DbLookup(&shared.db);
        let mut planned = Vec::new();
        let mut requests = 0usize;
        let mut meta_ops = Vec::new();
        // Erasures read the committed store: they come after the group's appends (queued requests
        // are concurrent, so that is a valid order), in the same write when the group is appends
        // that touch none of their orders (one fsync for both), else in a write of their own right
        // after it (one more fsync for all of them), never one write each.
        let mut erasures: Vec<Erasure> = Vec::new();
        let mut next = Some(first);
        while let Some(cmd) = next.take() {
            match cmd {
                Command::Erase { order_id, reply } => erasures.push((order_id, reply)),
                cmd => {
                    requests += 1;
                    plan_command(
                        shared,
                        &mut plan,
                        &lookup,
                        unwritten.as_deref(),
                        cmd,
                        received_at,
                        &mut planned,
                        &mut meta_ops,
                    );
                }
            }
            let room = plan.event_count() + EVENTS_PER_REQUEST_MAX <= GROUP_EVENTS_MAX
                && plan.bytes() < GROUP_BYTES_MAX
                && erasures.len() < ERASURES_PER_BATCH_MAX;
            if room {
                next = pipeline.next_command(rx);
                if next.as_ref().is_some_and(Command::runs_alone) {
                    pending = next.take();
                }
            }
        }
        drop(unwritten);
        if !planned.is_empty() {
            let joins_group = meta_ops.is_empty()
                && planned.iter().all(|p| matches!(p, Planned::Append(..)))
                && !erasures.iter().any(|(id, _)| plan.touches_order(id));
            let with = if joins_group {
                std::mem::take(&mut erasures)
            } else {
                Vec::new()
            };
            let replicated = meta_ops.is_empty()
                && with.is_empty()
                && planned.iter().all(|p| matches!(p, Planned::Replicate(..)));
            let events = plan.event_count();
            let bytes = plan.bytes();
            let (mut ops, stats, written) = plan.finish();
            ops.append(&mut meta_ops);
            let sealed = Sealed {
                ops,
                stats,
                written: Arc::new(written),
                planned,
                requests,
                events,
                bytes,
                erasures: with,
                received_at,
            };
            pipeline.commit(sealed, replicated);
            last_received = received_at;
        }
        if !erasures.is_empty() {
            pipeline.drain();
            let at = Timestamp::now().max(last_received);
            if erase_batch(shared, erasures, at, &pipeline.write_opts) {
                last_received = at;
            }
        }
    }
}

type Erasure = (String, Reply<Option<ErasureReceipt>>);

/// Answers a batch of erasures, committed in one write.
fn erase_batch(
    shared: &Shared,
    erasures: Vec<Erasure>,
    at: Timestamp,
    opts: &WriteOptions,
) -> bool {
    if let Some(reason) = shared.poisoned.get() {
        for (_, reply) in erasures {
            reply(Err(Error::Poisoned(reason.clone())));
        }
        return false;
    }
    let ids: Vec<String> = erasures.iter().map(|(id, _)| id.clone()).collect();
    match crate::removal::erase_many(shared, &ids, at, opts) {
        Ok(results) => {
            let wrote = results.iter().any(|r| matches!(r, Ok(Some(_))));
            answer_erasures(erasures, results);
            wrote
        }
        Err(e) => {
            if let Error::Poisoned(reason) = &e {
                let _ = shared.poisoned.set(reason.clone());
            }
            fail_erasures(erasures, &e);
            false
        }
    }
}

fn answer_erasures(erasures: Vec<Erasure>, results: crate::removal::Receipts) {
    for ((_, reply), result) in erasures.into_iter().zip(results) {
        reply(result);
    }
}

/// Answers erasures that failed as a whole (their batch could not be read or written).
fn fail_erasures(erasures: Vec<Erasure>, e: &Error) {
    for (_, reply) in erasures {
        reply(Err(match e {
            Error::Poisoned(r) => Error::Poisoned(r.clone()),
            Error::ReadOnly(r) => Error::ReadOnly(r.clone()),
            other => Error::Corrupt(format!("the erasure failed: {other}")),
        }));
    }
}

/// Commits a sealed group and answers its requests, with its erasures staged after it in the same
/// write (the planner checked that the group touches none of their orders). A group planned over
/// one whose write failed is refused: the engine is poisoned by then.
fn commit_group(shared: &Shared, sealed: Sealed, write_opts: &WriteOptions) {
    if let Some(reason) = shared.poisoned.get() {
        return sealed.fail(&Error::Poisoned(reason.clone()));
    }
    let Sealed {
        ops,
        stats,
        written,
        planned,
        requests,
        events,
        bytes,
        erasures,
        received_at,
    } = sealed;
    // The group's LSNs start right after the committed store's.
    let log_end = Lsn(shared.stats.read().expect("stats lock").last_lsn.0 + 1);
    let started = Instant::now();
    let mut batch = WriteBatch::with_capacity_bytes(batch_bytes(&ops));
    // The erasures' part of the batch first (it touches none of the group's keys but the stats,
    // which go last): when staging fails half-way, the batch starts over without it.
    let mut staged_erasures = None;
    if !erasures.is_empty() {
        let ids: Vec<String> = erasures.iter().map(|(id, _)| id.clone()).collect();
        let staged = crate::removal::stage_erasures(
            shared,
            &ids,
            received_at,
            stats.clone(),
            log_end,
            &mut batch,
        );
        match staged {
            Ok((results, staged)) => staged_erasures = Some((erasures, results, staged)),
            Err(e) => {
                batch = WriteBatch::default();
                fail_erasures(erasures, &e);
            }
        }
    }
    let staged = staged_erasures.as_ref().and_then(|(_, _, s)| s.as_ref());
    // From before the write until the erasures are published: a purge must not see them written
    // but not owed (see `Staged::publish`).
    let purge_guard = staged.map(|_| shared.purge_lock.lock().expect("purge lock"));
    let outcome = if events == 0
        && staged.is_none()
        && !planned.iter().any(Planned::writes_meta)
        && ops.len() <= 1
    {
        // Only duplicates of committed events (or mode changes): nothing new to make durable.
        Ok(())
    } else {
        let stats = match staged {
            Some(s) => s.put_stats(shared, &mut batch).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        stats
            .and_then(|()| shared.mark_format().map_err(|e| e.to_string()))
            .and_then(|()| write_group(&shared.db, batch, ops, staged.is_some(), write_opts))
    };
    let write_time = started.elapsed();
    match outcome {
        Ok(()) => {
            let last_lsn = stats.last_lsn;
            *shared.stats.write().expect("stats lock") = stats;
            {
                // A late event below the retention sweep's cursor: the next step starts over.
                let mut cursor = shared.sweep_cursor.lock().expect("cursor lock");
                if let Some(c) = *cursor
                    && written.events().iter().any(|e| {
                        TimePos {
                            at: e.event.occurred_at,
                            lsn: e.lsn,
                        } < c
                    })
                {
                    *cursor = None;
                }
            }
            for p in &planned {
                if let Planned::Epoch(_, epoch, start) | Planned::Promote(_, epoch, start) = p {
                    shared
                        .epochs
                        .write()
                        .expect("epochs lock")
                        .push((*epoch, *start));
                }
            }
            shared.commits.publish(
                &CommitInfo {
                    last_lsn,
                    events: events as u64,
                    requests: requests as u64,
                    bytes: bytes as u64,
                    write_time: Some(write_time),
                    new_events: written.events(),
                    removed: &[],
                },
                // Its LSNs are this node's own unless they are a primary's entries applied here.
                !planned.iter().any(|p| matches!(p, Planned::Replicate(..))),
            );
            for p in planned {
                p.answer(Ok(last_lsn));
            }
            if let Some((erasures, results, staged)) = staged_erasures {
                if let Some(staged) = staged {
                    staged.publish(shared, None);
                }
                drop(purge_guard);
                answer_erasures(erasures, results);
            }
        }
        Err(reason) => {
            let _ = shared.poisoned.set(reason.clone());
            let e = Error::Poisoned(reason);
            for p in planned {
                p.answer(Err(&e));
            }
            if let Some((erasures, ..)) = staged_erasures {
                fail_erasures(erasures, &e);
            }
        }
    }
}

/// Runs a command outside any group; answers it. Returns whether it wrote with receive time `at`.
fn run_alone(shared: &Shared, cmd: Command, at: Timestamp, opts: &WriteOptions) -> bool {
    fn answer<T>(shared: &Shared, reply: Reply<T>, result: Result<T>) -> bool {
        if let Err(Error::Poisoned(reason)) = &result {
            let _ = shared.poisoned.set(reason.clone());
        }
        let ok = result.is_ok();
        reply(result);
        ok
    }
    match cmd {
        Command::Truncate { after, reply } => {
            answer(shared, reply, crate::truncate::run(shared, after, opts));
            false
        }
        Command::Expire { before, max, reply } => answer(
            shared,
            reply,
            crate::removal::expire(shared, before, max, at, opts),
        ),
        Command::ReplicateRemoval {
            batch_refused,
            reply,
            ..
        } if batch_refused.load(Ordering::SeqCst) => {
            reply(Err(earlier_part_refused()));
            false
        }
        Command::ReplicateRemoval {
            removal,
            epoch,
            reply,
            ..
        } => {
            answer(
                shared,
                reply,
                crate::removal::apply(shared, removal, epoch, opts),
            );
            false
        }
        other => {
            other.fail(Error::InvalidArgument(
                "this command runs inside a group".into(),
            ));
            false
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_command(
    shared: &Shared,
    plan: &mut GroupPlan,
    lookup: &DbLookup<'_>,
    unwritten: Option<&Written>,
    cmd: Command,
    received_at: Timestamp,
    planned: &mut Vec<Planned>,
    meta_ops: &mut Vec<Op>,
) {
    // The newest epoch of the history including epochs planned earlier in this group. The
    // committed part is `shared.epochs`, not a scan of `meta`: it holds exactly what `meta` holds
    // when a group is planned (a group that records an epoch writes metadata, so it is committed on
    // this thread before the next group is planned, never by the committer; removals and
    // truncation update it as they commit), and it cannot fail. A failed scan once read as "no
    // epoch": every replicated batch then opened its epoch again, overwriting the epoch's start in
    // `meta` and adding a duplicate to the history.
    let newest_epoch = |planned: &[Planned]| {
        let committed = shared
            .epochs
            .read()
            .expect("epochs lock")
            .iter()
            .map(|(e, _)| *e)
            .max();
        planned
            .iter()
            .filter_map(|p| match p {
                Planned::Epoch(_, e, _) | Planned::Promote(_, e, _) => Some(*e),
                _ => None,
            })
            .chain(committed)
            .max()
            .unwrap_or(0)
    };
    match cmd {
        Command::Append { events, reply } => {
            if let Some(reason) = shared.read_only.read().expect("mode lock").clone() {
                return reply(Err(Error::ReadOnly(reason)));
            }
            let planned_append = if events.len() >= PREFETCH_EVENTS_MIN {
                Prefetched::read(
                    lookup,
                    unwritten,
                    events.iter().map(|e| e.event_id.as_str()),
                    events.iter().map(|e| e.order_id.as_str()),
                )
                .and_then(|prefetched| {
                    plan.plan_append(&over(unwritten, &prefetched), events, received_at)
                })
            } else {
                plan.plan_append(&over(unwritten, lookup), events, received_at)
            };
            match planned_append {
                Ok(outcomes) => planned.push(Planned::Append(reply, outcomes)),
                Err(e) => reply(Err(e)),
            }
        }
        Command::Replicate {
            batch_refused,
            reply,
            ..
        } if batch_refused.load(Ordering::SeqCst) => reply(Err(earlier_part_refused())),
        Command::Replicate {
            entries,
            epoch,
            reply,
            ..
        } => {
            if shared.writable() {
                return reply(Err(Error::InvalidArgument(
                    "this node accepts writes (primary); it does not apply replicated entries"
                        .into(),
                )));
            }
            let newest = newest_epoch(planned);
            if epoch < newest {
                return reply(Err(Error::Diverged(format!(
                    "entries of epoch {epoch} arrive after epoch {newest} was recorded"
                ))));
            }
            let last = entries.last().map(LogEntry::lsn);
            let first = entries.first().map(LogEntry::lsn);
            let start = plan.next_lsn();
            let opens_epoch = epoch > newest && first.is_some();
            if opens_epoch && first != Some(start) {
                return reply(Err(Error::Diverged(format!(
                    "expected LSN {start}, got {}",
                    first.unwrap_or_default()
                ))));
            }
            let events = || {
                entries.iter().filter_map(|e| match e {
                    LogEntry::Event(e) => Some(&e.event),
                    _ => None,
                })
            };
            let applied = if entries.len() >= PREFETCH_EVENTS_MIN {
                Prefetched::read(
                    lookup,
                    unwritten,
                    events().map(|e| e.event_id.as_str()),
                    events().map(|e| e.order_id.as_str()),
                )
                .and_then(|prefetched| plan.plan_replicated(&over(unwritten, &prefetched), entries))
            } else {
                plan.plan_replicated(&over(unwritten, lookup), entries)
            };
            if let Err(e) = applied {
                return reply(Err(e));
            }
            if opens_epoch {
                // The primary's new epoch starts at this batch's first entry (batches never span
                // epochs): recorded in the same atomic commit as the entries, and only once they are
                // accepted, so that a refused batch leaves no epoch behind.
                meta_ops.push(Op::Put(
                    Cf::Meta,
                    keys::meta_epoch(epoch),
                    codec::encode_epoch_start(start),
                ));
                raise_known_epoch(shared, epoch, meta_ops);
                planned.push(Planned::Epoch(Box::new(|_| {}), epoch, start));
            }
            planned.push(Planned::Replicate(reply, last.unwrap_or_default()));
        }
        Command::RecordEpoch { epoch, reply } => {
            let newest = newest_epoch(planned);
            if newest >= epoch && newest > 0 {
                reply(Err(Error::InvalidArgument(format!(
                    "epoch {epoch} is not newer than the newest recorded epoch {newest}"
                ))));
            } else {
                let start = plan.plan_epoch(epoch);
                raise_known_epoch(shared, epoch, meta_ops);
                planned.push(Planned::Epoch(reply, epoch, start));
            }
        }
        Command::SetReadOnly { reason, reply } => {
            *shared.read_only.write().expect("mode lock") = reason;
            planned.push(Planned::Barrier(reply));
        }
        Command::NoteEpoch { epoch, reply } => {
            raise_known_epoch(shared, epoch, meta_ops);
            let own = newest_epoch(planned);
            let mut mode = shared.read_only.write().expect("mode lock");
            if epoch > own && mode.is_none() {
                *mode = Some(format!(
                    "fenced: epoch {epoch} exists, newer than this node's epoch {own}; \
                     another node was promoted"
                ));
            }
            let fenced = shared.known_epoch.load(Ordering::SeqCst) > own;
            planned.push(Planned::Barrier(Box::new(move |r| {
                reply(r.map(|_| fenced));
            })));
        }
        Command::Promote { reply } => {
            let epoch = newest_epoch(planned).max(shared.known_epoch.load(Ordering::SeqCst)) + 1;
            let start = plan.plan_epoch(epoch);
            raise_known_epoch(shared, epoch, meta_ops);
            *shared.read_only.write().expect("mode lock") = None;
            planned.push(Planned::Promote(reply, epoch, start));
        }
        cmd @ (Command::Truncate { .. }
        | Command::Erase { .. }
        | Command::Expire { .. }
        | Command::ReplicateRemoval { .. }) => {
            // The loop never puts these into a group.
            cmd.fail(Error::InvalidArgument(
                "this command cannot run inside a group".into(),
            ));
        }
    }
}

/// The store as the group being planned sees it: the group in flight's writes over `committed`.
fn over<'a, L: Lookup>(unwritten: Option<&'a Written>, committed: &'a L) -> Unwritten<'a, L> {
    Unwritten {
        pending: unwritten,
        committed,
    }
}

fn earlier_part_refused() -> Error {
    Error::Diverged("an earlier part of the same replicated batch was refused".into())
}

/// Raises the highest epoch heard of (in memory now, durably with the group).
fn raise_known_epoch(shared: &Shared, epoch: u64, meta_ops: &mut Vec<Op>) {
    if shared.known_epoch.fetch_max(epoch, Ordering::SeqCst) < epoch {
        meta_ops.retain(|op| !matches!(op, Op::Put(Cf::Meta, k, _) if k == keys::META_KNOWN_EPOCH));
        meta_ops.push(Op::Put(
            Cf::Meta,
            keys::META_KNOWN_EPOCH.to_vec(),
            epoch.to_be_bytes().to_vec(),
        ));
    }
}

/// Writes one group durably. Returns the failure as text: the caller poisons the engine with it.
/// Writes `ops` with what `batch` holds; with `stats_staged`, the ops' own stats are left out: the
/// batch holds newer ones (those after erasures staged to follow the group, see `commit_group`).
fn write_group(
    db: &DB,
    mut batch: WriteBatch,
    ops: Vec<Op>,
    stats_staged: bool,
    opts: &WriteOptions,
) -> std::result::Result<(), String> {
    fail::fail_point!("engine::write_group", |_| Err(
        "injected write failure".to_owned()
    ));
    let handles = Cf::ALL.map(|cf| store::handle(db, cf));
    for op in in_key_order(ops) {
        let cf = family(&op);
        let Ok(h) = handles[cf as usize] else {
            return Err(format!("column family {} is missing", cf.name()));
        };
        match op {
            Op::Put(Cf::Meta, k, _) if stats_staged && k == keys::META_STATS => {}
            Op::Put(_, k, v) => batch.put_cf(h, k, v),
            Op::Delete(cf, k) => store::delete(&mut batch, cf, h, k),
        }
    }
    db.write_opt(batch, opts).map_err(|e| e.to_string())
}

/// The size of the `WriteBatch` holding `ops` (RocksDB's encoding: a 12-byte header; per record a
/// type byte, the family's id and the key's and value's lengths as varints, then key and value),
/// reserved up front: a batch grown by appending copied its bytes again at every doubling, which was
/// a sixth of a catching-up replica's writer (bench/RESULTS.md, session 9).
fn batch_bytes(ops: &[Op]) -> usize {
    const RECORD_OVERHEAD_MAX: usize = 1 + 5 + 5 + 5;
    12 + ops
        .iter()
        .map(|op| {
            RECORD_OVERHEAD_MAX
                + match op {
                    Op::Put(_, k, v) => k.len() + v.len(),
                    Op::Delete(_, k) => k.len(),
                }
        })
        .sum::<usize>()
}

/// The group's operations sorted by column family and key; a stable sort, so operations on one key
/// keep their order. RocksDB inserts a batch into the memtable skiplists in batch order and reuses
/// the search path of the previous insert ("splice"): planned order (event after event, so each
/// family's keys in random order) makes every insert walk the list from the top, sorted order makes
/// most inserts start where the last one ended. On a replica catching up with realistic traffic the
/// skiplist search was a quarter of its CPU (bench/RESULTS.md).
///
/// Split by family first, then each family sorted by key alone: the log's keys arrive in LSN order
/// (one ascending run, which the sort only checks), and the others sort in smaller pieces
/// (bench/RESULTS.md, session 10: one sort of the whole group was 8.5% of the writer on batches).
///
/// Each family sorts small records, (the key's first 16 bytes as a number, the op's place), and
/// compares whole keys only where those 16 bytes tie: sorting the ops themselves followed two
/// pointers and called `memcmp` per comparison, and moved 56-byte ops; it was a tenth of a
/// batch fill's instructions (bench/RESULTS.md, session 18). The place breaks ties between ops on
/// one key, so an unstable sort keeps their order.
pub(crate) fn in_key_order(ops: Vec<Op>) -> Vec<Op> {
    let mut counts = [0usize; Cf::ALL.len()];
    for op in &ops {
        counts[family(op) as usize] += 1;
    }
    let mut by_family = counts.map(Vec::with_capacity);
    let total = ops.len();
    for op in ops {
        by_family[family(&op) as usize].push(op);
    }
    let mut sorted = Vec::with_capacity(total);
    let mut order = Vec::new();
    for family_ops in by_family {
        order.clear();
        order.extend(
            family_ops
                .iter()
                .enumerate()
                .map(|(place, op)| (key_prefix(key(op)), place)),
        );
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| key(&family_ops[a.1]).cmp(key(&family_ops[b.1])))
                .then(a.1.cmp(&b.1))
        });
        let mut slots: Vec<Option<Op>> = family_ops.into_iter().map(Some).collect();
        for &(_, place) in &order {
            // `order` holds each place once.
            if let Some(op) = slots[place].take() {
                sorted.push(op);
            }
        }
    }
    debug_assert_eq!(sorted.len(), total);
    sorted
}

/// The key's first 16 bytes, zero-padded, as a big-endian number: a < b between two prefixes means
/// the same between their keys (a shorter key padded with zeros is a prefix of the other where the
/// two differ only in the padding), and equal prefixes leave the order to the whole keys.
fn key_prefix(key: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    let n = key.len().min(16);
    bytes[..n].copy_from_slice(&key[..n]);
    u128::from_be_bytes(bytes)
}

fn family(op: &Op) -> Cf {
    let (Op::Put(cf, ..) | Op::Delete(cf, _)) = op;
    *cf
}

fn key(op: &Op) -> &[u8] {
    let (Op::Put(_, k, _) | Op::Delete(_, k)) = op;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineOptions};
    use crate::event::Status;

    fn replicated(lsn: u64) -> LogEntry {
        let at = Timestamp::from_millis(1_700_000_000_000).expect("in range");
        LogEntry::Event(StoredEvent {
            lsn: Lsn(lsn),
            received_at: at,
            event: Event {
                event_id: format!("e-{lsn}"),
                order_id: format!("o-{lsn}"),
                status: Status::Dispatched,
                occurred_at: at,
                source: None,
                carrier: None,
                reason: None,
                location: None,
                eta: None,
                attributes: None,
            },
        })
    }

    /// The planner's newest epoch comes from the committed history, which no read error can hide:
    /// a batch in the epoch already recorded must not record it again. With a `meta` scan whose
    /// error read as "no epoch", this batch re-recorded epoch 1 at LSN 3 (a duplicate in the
    /// history, and the epoch's start overwritten in `meta`).
    #[test]
    fn a_batch_in_the_recorded_epoch_does_not_record_it_again_whatever_meta_holds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(
            dir.path(),
            EngineOptions {
                durability: Durability::NoSyncUnsafe,
                ..EngineOptions::default()
            },
        )
        .expect("open");
        engine.set_read_only("a replica").expect("read-only");
        engine
            .apply_replicated(vec![replicated(1), replicated(2)], 1)
            .expect("first batch");
        assert_eq!(engine.epoch_history(), vec![(1, Lsn(1))]);
        // An epoch record that does not decode: a scan of the epochs fails on it (it sorts first).
        let db = &engine.shared.db;
        db.put_cf(
            store::handle(db, Cf::Meta).expect("meta"),
            keys::meta_epoch(0),
            b"not an epoch start",
        )
        .expect("put");
        assert!(crate::engine::read_epochs(db).is_err(), "the scan fails");
        assert_eq!(
            engine
                .apply_replicated(vec![replicated(3), replicated(4)], 1)
                .expect("second batch"),
            Lsn(4)
        );
        assert_eq!(engine.epoch_history(), vec![(1, Lsn(1))]);
        let start = db
            .get_cf(
                store::handle(db, Cf::Meta).expect("meta"),
                keys::meta_epoch(1),
            )
            .expect("get")
            .expect("epoch 1 is recorded");
        assert_eq!(codec::decode_epoch_start(&start).expect("decodes"), Lsn(1));
    }

    /// The prefix sort orders like a stable sort by family then whole key, on keys that share long
    /// prefixes, hold zero bytes and differ in length. The key's length is drawn apart from its
    /// tail, so keys whose zero-padded 16-byte prefixes tie while the keys differ (`ab` and
    /// `ab\0`, a 16-byte key and the same with `\0` after it) come up in every run.
    #[test]
    fn prefix_sort_matches_a_stable_sort_by_family_and_key() {
        use proptest::prelude::*;
        const BASE: &[u8] = b"order-0000000000000000";
        let keys = (
            0..=BASE.len(),
            proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), Just(b'o')], 0..4),
        )
            .prop_map(|(len, tail)| {
                let mut k = BASE[..len].to_vec();
                k.extend(tail);
                k
            });
        let op =
            (0..Cf::ALL.len(), keys, any::<bool>(), any::<u16>()).prop_map(|(cf, k, put, v)| {
                let cf = Cf::ALL[cf];
                if put {
                    Op::Put(cf, k, v.to_be_bytes().to_vec())
                } else {
                    Op::Delete(cf, k)
                }
            });
        proptest!(|(ops in proptest::collection::vec(op, 0..300))| {
            let mut expected = ops.clone();
            expected.sort_by(|a, b| (family(a) as usize, key(a)).cmp(&(family(b) as usize, key(b))));
            prop_assert_eq!(in_key_order(ops), expected);
        });
    }

    /// Keys whose zero-padded 16-byte prefixes are equal: the whole keys decide.
    #[test]
    fn keys_equal_up_to_the_zero_padding_sort_by_the_whole_key() {
        let sixteen = b"order-0000000001".to_vec();
        let mut sixteen_zero = sixteen.clone();
        sixteen_zero.push(0);
        let put = |k: &[u8], v: u8| Op::Put(Cf::Orders, k.to_vec(), vec![v]);
        assert_eq!(
            in_key_order(vec![
                put(b"ab\0", 1),
                put(b"ab", 2),
                put(&sixteen_zero, 3),
                put(&sixteen, 4),
            ]),
            vec![
                put(b"ab", 2),
                put(b"ab\0", 1),
                put(&sixteen, 4),
                put(&sixteen_zero, 3),
            ]
        );
    }

    /// `in_key_order` and `write_group` index by the discriminant: it must be the family's place
    /// in `Cf::ALL`.
    #[test]
    fn family_discriminants_follow_cf_all() {
        for (i, cf) in Cf::ALL.into_iter().enumerate() {
            assert_eq!(cf as usize, i, "{cf:?}");
        }
    }

    #[test]
    fn ops_are_sorted_by_family_then_key_keeping_the_order_of_one_key() {
        let ops = vec![
            Op::Put(Cf::Orders, b"b".to_vec(), b"1".to_vec()),
            Op::Put(Cf::Log, b"z".to_vec(), b"2".to_vec()),
            Op::Delete(Cf::Orders, b"a".to_vec()),
            Op::Put(Cf::Orders, b"a".to_vec(), b"3".to_vec()),
            Op::Delete(Cf::Orders, b"a".to_vec()),
            Op::Put(Cf::Log, b"y".to_vec(), b"4".to_vec()),
            Op::Put(Cf::Meta, b"m".to_vec(), b"5".to_vec()),
            Op::Put(Cf::ByTime, b"c".to_vec(), b"6".to_vec()),
            Op::Put(Cf::Log, b"x".to_vec(), b"7".to_vec()),
        ];
        assert_eq!(
            in_key_order(ops),
            vec![
                Op::Put(Cf::Log, b"x".to_vec(), b"7".to_vec()),
                Op::Put(Cf::Log, b"y".to_vec(), b"4".to_vec()),
                Op::Put(Cf::Log, b"z".to_vec(), b"2".to_vec()),
                Op::Put(Cf::ByTime, b"c".to_vec(), b"6".to_vec()),
                Op::Delete(Cf::Orders, b"a".to_vec()),
                Op::Put(Cf::Orders, b"a".to_vec(), b"3".to_vec()),
                Op::Delete(Cf::Orders, b"a".to_vec()),
                Op::Put(Cf::Orders, b"b".to_vec(), b"1".to_vec()),
                Op::Put(Cf::Meta, b"m".to_vec(), b"5".to_vec()),
            ]
        );
    }
}
