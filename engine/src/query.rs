//! Reads. They run on the caller's thread, straight on RocksDB, each on one snapshot so that an index
//! and the values it points to agree. Paged queries return an opaque cursor (see `cursor`).

use rocksdb::{DB, DBRawIteratorWithThreadMode, ReadOptions, ReadTier};

use crate::codec;
use crate::cursor::CursorKind;
use crate::engine::Engine;
use crate::entry::{ErasureRecord, LogEntry};
use crate::error::{Error, Result};
use crate::event::{Lsn, Status, StoredEvent};
use crate::keys::{self, TimePos};
use crate::limits::{
    IN_MEMORY_PAGE_LIMIT_MAX, IN_MEMORY_SKIPPED_KEYS_MAX, PAGE_LIMIT_MAX, READ_LOG_BYTES_MAX,
    READ_LOG_ENTRIES_MAX, SCAN_ENTRIES_PER_PAGE_MAX,
};
use crate::state::OrderState;
use crate::store::{self, Cf};
use crate::time::Timestamp;

/// One page of results. `next_cursor` is `None` when nothing follows; with a filter, a page can be
/// shorter than the limit (even empty) while a cursor still points further (the scan bound).
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The answer of a read restricted to memory, or the news that it needs the disk.
#[derive(Clone, Debug, PartialEq)]
pub enum InMemory<T> {
    Answered(T),
    NeedsDisk,
}

/// Log entries as stored (`codec::encode_log_entry`'s bytes), each with its LSN.
pub type EncodedEntries = Vec<(Lsn, Vec<u8>)>;

/// Timeline direction by (`occurred_at`, LSN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    Asc,
    Desc,
}

/// Events with `from <= occurred_at < to`, optionally only some statuses and one carrier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimeRange {
    pub from: Timestamp,
    pub to: Timestamp,
    /// Empty: every status.
    pub statuses: Vec<Status>,
    pub carrier: Option<String>,
}

impl TimeRange {
    fn binding(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.from.as_millis().to_be_bytes());
        b.extend_from_slice(&self.to.as_millis().to_be_bytes());
        let mut statuses: Vec<u8> = self.statuses.iter().map(|s| s.to_byte()).collect();
        statuses.sort_unstable();
        statuses.dedup();
        b.push(statuses.len() as u8);
        b.extend_from_slice(&statuses);
        b.extend_from_slice(self.carrier.as_deref().unwrap_or("").as_bytes());
        b
    }
}

/// Most entries fetched per `multi_get` while scanning an index.
const FETCH_CHUNK: usize = 256;

/// Entries to fetch next: what the page still needs when nothing has been filtered out yet (a page
/// of 100 fetched 256 values, decoded them and dropped 156: 2.5× the work of the delivery day's list
/// calls, bench/RESULTS.md, session 10), doubling after each chunk that a filter thinned.
fn next_chunk_len(previous: usize, still_needed: usize) -> usize {
    if previous == 0 {
        still_needed.clamp(1, FETCH_CHUNK)
    } else {
        (previous * 2).min(FETCH_CHUNK)
    }
}

/// The events at `lsns` (in that order) from the log, in one `multi_get`. `index` names the index
/// that pointed there: an LSN without an event is `Corrupt`, a corrupt index when the index was read
/// on the same snapshot or on the writer's thread (otherwise a removal since may explain it, and
/// `order_timeline` reads again on one snapshot).
pub(crate) fn events_at(
    db: &DB,
    lsns: &[Lsn],
    ro: &ReadOptions,
    index: &str,
) -> Result<Vec<StoredEvent>> {
    if lsns.is_empty() {
        return Ok(Vec::new());
    }
    let log = store::handle(db, Cf::Log)?;
    let ks: Vec<[u8; 8]> = lsns.iter().map(|l| keys::log(*l)).collect();
    db.batched_multi_get_cf_opt(log, &ks, false, ro)
        .into_iter()
        .zip(lsns)
        .map(|(r, lsn)| {
            let v =
                r?.ok_or_else(|| Error::Corrupt(format!("{index} points to missing LSN {lsn}")))?;
            codec::decode_event(&v)
                .map_err(|e| Error::Corrupt(format!("{index} points to LSN {lsn}: {e}")))
        })
        .collect()
}

/// Where a timeline page starts: the order, the direction and the position its cursor names.
struct TimelineStart<'a> {
    order_id: &'a str,
    direction: Direction,
    kind: CursorKind,
    after: Option<TimePos>,
}

/// The events of `by_order` entries, in the order pushed: decoded from an entry's copy, or fetched
/// from the log (one `multi_get` for all) for an entry that holds its position only
/// (`plan::ByOrderValue`).
#[derive(Default)]
pub(crate) struct ByOrderEvents {
    slots: Vec<Option<StoredEvent>>,
    to_fetch: Vec<Lsn>,
}

impl ByOrderEvents {
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Some entry holds its position only: `finish` reads the log.
    pub(crate) fn needs_fetch(&self) -> bool {
        !self.to_fetch.is_empty()
    }

    pub(crate) fn push(&mut self, lsn: Lsn, value: &[u8]) -> Result<()> {
        if value.is_empty() {
            self.to_fetch.push(lsn);
            self.slots.push(None);
        } else {
            self.slots.push(Some(codec::decode_event(value)?));
        }
        Ok(())
    }

    /// `ro` reads the log: on the snapshot the entries were read on, or later (an event removed in
    /// between then fails as `Corrupt`).
    pub(crate) fn finish(self, db: &DB, ro: &ReadOptions) -> Result<Vec<StoredEvent>> {
        let mut fetched = events_at(db, &self.to_fetch, ro, "by_order")?.into_iter();
        self.slots
            .into_iter()
            .map(|slot| match slot {
                Some(e) => Ok(e),
                None => fetched.next().ok_or_else(|| {
                    Error::Corrupt("the log returned fewer events than asked".into())
                }),
            })
            .collect()
    }
}

fn check_limit(limit: usize) -> Result<()> {
    if (1..=PAGE_LIMIT_MAX).contains(&limit) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "limit must be between 1 and {PAGE_LIMIT_MAX}"
        )))
    }
}

fn decode_pos(bytes: &[u8]) -> Result<TimePos> {
    keys::decode_by_time(bytes)
        .map_err(|_| Error::Corrupt("a cursor sealed by this store holds a bad position".into()))
}

/// Scans index entries (`accept` maps an entry to a candidate position, or skips it), fetches the
/// candidates' values in chunks (`fetch` returns `None` for values its filter rejects) and stops at
/// `limit` results or after `SCAN_ENTRIES_PER_PAGE_MAX` entries. Returns the results and the position
/// to resume after, if anything may follow.
fn scan_and_fetch<P: Clone, T>(
    it: &mut DBRawIteratorWithThreadMode<'_, DB>,
    limit: usize,
    mut accept: impl FnMut(&[u8], &[u8]) -> Result<(P, bool)>,
    mut fetch: impl FnMut(&[P]) -> Result<Vec<Option<T>>>,
) -> Result<(Vec<T>, Option<P>)> {
    let mut out = Vec::new();
    let mut scanned = 0usize;
    let mut last_scanned: Option<P> = None;
    let mut chunk_len = 0;
    loop {
        chunk_len = next_chunk_len(chunk_len, limit - out.len());
        let mut chunk = Vec::with_capacity(chunk_len);
        while chunk.len() < chunk_len && scanned < SCAN_ENTRIES_PER_PAGE_MAX {
            let Some((k, v)) = it.item() else { break };
            let (pos, wanted) = accept(k, v)?;
            scanned += 1;
            last_scanned = Some(pos.clone());
            if wanted {
                chunk.push(pos);
            }
            it.next();
        }
        it.status()?;
        let fetched = if chunk.is_empty() {
            Vec::new()
        } else {
            fetch(&chunk)?
        };
        for (i, item) in fetched.into_iter().enumerate() {
            if let Some(item) = item {
                out.push(item);
                if out.len() == limit {
                    let more = i + 1 < chunk.len() || it.valid();
                    return Ok((out, more.then(|| chunk[i].clone())));
                }
            }
        }
        if !it.valid() {
            return Ok((out, None));
        }
        if scanned >= SCAN_ENTRIES_PER_PAGE_MAX {
            return Ok((out, last_scanned));
        }
    }
}

/// Read options that never wait for the disk: RocksDB answers `Incomplete` for data outside the
/// memtables and block cache, and for an iterator that would skip more than
/// `IN_MEMORY_SKIPPED_KEYS_MAX` internal keys; obsolete files an iterator's cleanup releases are
/// deleted by a background thread.
fn memory_only(ro: &mut ReadOptions) {
    ro.set_read_tier(ReadTier::BlockCache);
    ro.set_max_skippable_internal_keys(IN_MEMORY_SKIPPED_KEYS_MAX);
    ro.set_background_purge_on_iterator_cleanup(true);
}

/// A memory-only read's result: RocksDB's `Incomplete` (the data is not in memory, or too many
/// removed entries stand before it) means the read needs the blocking path.
fn unless_incomplete<T>(read: Result<T>) -> Result<InMemory<T>> {
    match read {
        Ok(answer) => Ok(InMemory::Answered(answer)),
        Err(Error::Storage(e)) if e.kind() == rocksdb::ErrorKind::Incomplete => {
            Ok(InMemory::NeedsDisk)
        }
        Err(e) => Err(e),
    }
}

impl Engine {
    fn db(&self) -> &DB {
        &self.shared.db
    }

    /// The current state of an order.
    pub fn order_state(&self, order_id: &str) -> Result<Option<OrderState>> {
        self.state_with(order_id, &ReadOptions::default())
    }

    fn state_with(&self, order_id: &str, ro: &ReadOptions) -> Result<Option<OrderState>> {
        let db = self.db();
        match db.get_pinned_cf_opt(store::handle(db, Cf::Orders)?, order_id.as_bytes(), ro)? {
            Some(v) => Ok(Some(codec::decode_state(&v)?)),
            None => Ok(None),
        }
    }

    /// The current state of an order if it can be answered from memory (memtables and block
    /// cache) without waiting for the disk; `NeedsDisk` otherwise. An async caller answers hits on
    /// its own thread and sends only misses to a blocking pool: the hand-off costs more CPU than the
    /// cached read itself. RocksDB never does I/O for such a read (it answers `Incomplete`), and the
    /// file deletions an iterator's cleanup can trigger are left to a background thread.
    pub fn order_state_in_memory(&self, order_id: &str) -> Result<InMemory<Option<OrderState>>> {
        let mut ro = ReadOptions::default();
        memory_only(&mut ro);
        unless_incomplete(self.state_with(order_id, &ro))
    }

    /// The event stored at `lsn`.
    pub fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>> {
        let db = self.db();
        match db.get_pinned_cf(store::handle(db, Cf::Log)?, keys::log(lsn))? {
            Some(v) => Ok(codec::decode_log_entry(&v)?.into_event()),
            None => Ok(None),
        }
    }

    /// The record of the erasure whose log entry is at `lsn`; None if there was none there.
    pub fn erasure_record(&self, lsn: Lsn) -> Result<Option<ErasureRecord>> {
        let db = self.db();
        match db.get_pinned_cf(store::handle(db, Cf::Meta)?, keys::meta_erasure(lsn))? {
            Some(v) => Ok(Some(codec::decode_erasure_record(lsn, &v)?)),
            None => Ok(None),
        }
    }

    /// An order's events by (`occurred_at`, LSN), a page at a time. Unknown orders give an empty page.
    pub fn order_timeline(
        &self,
        order_id: &str,
        direction: Direction,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<StoredEvent>> {
        let at = self.timeline_start(order_id, direction, limit, cursor)?;
        let db = self.db();
        let read = |ro: ReadOptions, fetch: &ReadOptions| {
            let (events, resume) = self.timeline_entries(&at, limit, ro)?;
            let items = events.finish(db, fetch)?;
            self.timeline_page(&at, items, resume)
        };
        // Without a snapshot first: most pages fetch nothing (a primary's entries hold copies), and
        // a snapshot takes the DB mutex twice. An event fetched for a position can have been removed
        // since the index was read (`Corrupt`): then once more, both reads on one snapshot.
        match read(
            store::one_order_read_options(order_id),
            &ReadOptions::default(),
        ) {
            Err(Error::Corrupt(_)) => {
                let snapshot = db.snapshot();
                let mut ro = store::one_order_read_options(order_id);
                ro.set_snapshot(&snapshot);
                let mut fetch = ReadOptions::default();
                fetch.set_snapshot(&snapshot);
                read(ro, &fetch)
            }
            page => page,
        }
    }

    /// `order_timeline` if memory holds the page, like `order_state_in_memory`; pages over
    /// `IN_MEMORY_PAGE_LIMIT_MAX` events, pages behind more than `IN_MEMORY_SKIPPED_KEYS_MAX`
    /// removed entries, and pages with entries that hold positions only, always answer `NeedsDisk`.
    pub fn order_timeline_in_memory(
        &self,
        order_id: &str,
        direction: Direction,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<InMemory<Page<StoredEvent>>> {
        if limit > IN_MEMORY_PAGE_LIMIT_MAX {
            return Ok(InMemory::NeedsDisk);
        }
        let at = self.timeline_start(order_id, direction, limit, cursor)?;
        let mut ro = store::one_order_read_options(order_id);
        memory_only(&mut ro);
        let (events, resume) = match unless_incomplete(self.timeline_entries(&at, limit, ro))? {
            InMemory::Answered(entries) => entries,
            InMemory::NeedsDisk => return Ok(InMemory::NeedsDisk),
        };
        // RocksDB's batched MultiGet reads data blocks from the files even in the block-cache-only
        // tier (only index and filter blocks answer `Incomplete`), so a fetch is left to the disk
        // path.
        if events.needs_fetch() {
            return Ok(InMemory::NeedsDisk);
        }
        let items = events.finish(self.db(), &ReadOptions::default())?;
        Ok(InMemory::Answered(self.timeline_page(&at, items, resume)?))
    }

    fn timeline_start<'a>(
        &self,
        order_id: &'a str,
        direction: Direction,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<TimelineStart<'a>> {
        check_limit(limit)?;
        let kind = match direction {
            Direction::Asc => CursorKind::TimelineAsc,
            Direction::Desc => CursorKind::TimelineDesc,
        };
        let after = match cursor {
            Some(c) => Some(decode_pos(&self.shared.sealer.open(
                c,
                kind,
                order_id.as_bytes(),
            )?)?),
            None => None,
        };
        Ok(TimelineStart {
            order_id,
            direction,
            kind,
            after,
        })
    }

    /// A timeline page's `by_order` entries, read with `ro` (bounded to the order), and the position
    /// the next page starts after, if an entry follows.
    fn timeline_entries(
        &self,
        at: &TimelineStart<'_>,
        limit: usize,
        ro: ReadOptions,
    ) -> Result<(ByOrderEvents, Option<TimePos>)> {
        let (order_id, direction) = (at.order_id, at.direction);
        let db = self.db();
        let mut it = db.raw_iterator_cf_opt(store::handle(db, Cf::ByOrder)?, ro);
        // Every seek key holds the order prefix, so that the prefix Bloom filter applies.
        match (direction, at.after) {
            (Direction::Asc, None) => it.seek(keys::by_order_prefix(order_id)),
            (Direction::Desc, None) => it.seek_for_prev(keys::by_order_last(order_id)),
            (Direction::Asc, Some(pos)) => {
                let k = keys::by_order(order_id, pos);
                it.seek(&k);
                if it.key() == Some(&k[..]) {
                    it.next();
                }
            }
            (Direction::Desc, Some(pos)) => {
                let k = keys::by_order(order_id, pos);
                it.seek_for_prev(&k);
                if it.key() == Some(&k[..]) {
                    it.prev();
                }
            }
        }
        let mut events = ByOrderEvents::default();
        let mut last = None;
        while events.len() < limit {
            let Some((k, v)) = it.item() else { break };
            let (_, pos) = keys::decode_by_order(k)?;
            events.push(pos.lsn, v)?;
            last = Some(pos);
            match direction {
                Direction::Asc => it.next(),
                Direction::Desc => it.prev(),
            }
        }
        it.status()?;
        Ok((events, last.filter(|_| it.valid())))
    }

    fn timeline_page(
        &self,
        at: &TimelineStart<'_>,
        items: Vec<StoredEvent>,
        resume: Option<TimePos>,
    ) -> Result<Page<StoredEvent>> {
        let order_id = at.order_id;
        if let Some(e) = items.iter().find(|e| e.event.order_id != order_id) {
            return Err(Error::Corrupt(format!(
                "by_order of order {order_id:?} points to LSN {}, an event of order {:?}",
                e.lsn, e.event.order_id
            )));
        }
        let next_cursor = resume.map(|last| {
            self.shared
                .sealer
                .seal(at.kind, &keys::by_time(last), order_id.as_bytes())
        });
        Ok(Page { items, next_cursor })
    }

    /// Events of every order with `from <= occurred_at < to`, by (`occurred_at`, LSN).
    pub fn time_range(
        &self,
        q: &TimeRange,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<StoredEvent>> {
        check_limit(limit)?;
        if q.from > q.to {
            return Err(Error::InvalidArgument("`from` is after `to`".into()));
        }
        let binding = q.binding();
        let sealer = &self.shared.sealer;
        let start = match cursor {
            Some(c) => Some(decode_pos(&sealer.open(
                c,
                CursorKind::TimeRange,
                &binding,
            )?)?),
            None => None,
        };
        let db = self.db();
        let snapshot = db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snapshot);
        ro.set_iterate_upper_bound(
            keys::by_time(TimePos {
                at: q.to,
                lsn: Lsn(0),
            })
            .to_vec(),
        );
        let mut it = db.raw_iterator_cf_opt(store::handle(db, Cf::ByTime)?, ro);
        match start {
            Some(pos) => {
                let k = keys::by_time(pos);
                it.seek(k);
                if it.key() == Some(&k[..]) {
                    it.next();
                }
            }
            None => it.seek(keys::by_time(TimePos {
                at: q.from,
                lsn: Lsn(0),
            })),
        }
        let mut fetch_opts = ReadOptions::default();
        fetch_opts.set_snapshot(&snapshot);
        let (items, resume) = scan_and_fetch(
            &mut it,
            limit,
            |k, v| {
                let pos = keys::decode_by_time(k)?;
                let status = codec::decode_time_entry(v)?;
                Ok((pos, q.statuses.is_empty() || q.statuses.contains(&status)))
            },
            |positions: &[TimePos]| {
                let lsns: Vec<Lsn> = positions.iter().map(|p| p.lsn).collect();
                Ok(events_at(db, &lsns, &fetch_opts, "by_time")?
                    .into_iter()
                    .map(|e| {
                        let wanted = q
                            .carrier
                            .as_ref()
                            .is_none_or(|c| e.event.carrier.as_ref() == Some(c));
                        wanted.then_some(e)
                    })
                    .collect())
            },
        )?;
        let next_cursor =
            resume.map(|pos| sealer.seal(CursorKind::TimeRange, &keys::by_time(pos), &binding));
        Ok(Page { items, next_cursor })
    }

    /// Orders whose current status is `status` (optionally of one carrier), by order id.
    pub fn orders_in_status(
        &self,
        status: Status,
        carrier: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page<OrderState>> {
        check_limit(limit)?;
        let mut binding = vec![status.to_byte()];
        binding.extend_from_slice(carrier.unwrap_or("").as_bytes());
        let sealer = &self.shared.sealer;
        let after = match cursor {
            Some(c) => Some(sealer.open(c, CursorKind::OrdersByStatus, &binding)?),
            None => None,
        };
        let db = self.db();
        let snapshot = db.snapshot();
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snapshot);
        ro.set_iterate_lower_bound(vec![status.to_byte()]);
        ro.set_iterate_upper_bound(vec![status.to_byte() + 1]);
        let mut it = db.raw_iterator_cf_opt(store::handle(db, Cf::StatusIndex)?, ro);
        match &after {
            Some(order_id) => {
                let mut k = vec![status.to_byte()];
                k.extend_from_slice(order_id);
                it.seek(&k);
                if it.key() == Some(&k[..]) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        let orders = store::handle(db, Cf::Orders)?;
        let mut fetch_opts = ReadOptions::default();
        fetch_opts.set_snapshot(&snapshot);
        let (items, resume) = scan_and_fetch(
            &mut it,
            limit,
            |k, v| {
                let (_, order_id) = keys::decode_status_index(k)?;
                // The entry's carrier decides without the order's state; an entry written before
                // store format 3 does not record it, and the state (fetched below) decides.
                let wanted = match carrier {
                    None => true,
                    Some(c) => match codec::decode_status_entry(v)? {
                        codec::StatusEntry::Unrecorded => true,
                        codec::StatusEntry::Carrier(recorded) => recorded == Some(c),
                    },
                };
                Ok((order_id.as_bytes().to_vec(), wanted))
            },
            |ids: &[Vec<u8>]| {
                db.batched_multi_get_cf_opt(orders, ids, true, &fetch_opts)
                    .into_iter()
                    .zip(ids)
                    .map(|(r, id)| {
                        let v = r?.ok_or_else(|| {
                            Error::Corrupt(format!(
                                "status index names missing order {:?}",
                                String::from_utf8_lossy(id)
                            ))
                        })?;
                        let s = codec::decode_state(&v)?;
                        if s.status.value != status {
                            return Err(Error::Corrupt(format!(
                                "order {:?} is indexed under the wrong status",
                                s.order_id
                            )));
                        }
                        let wanted = carrier
                            .is_none_or(|c| s.carrier.as_ref().is_some_and(|x| x.value == c));
                        Ok(wanted.then_some(s))
                    })
                    .collect()
            },
        )?;
        let next_cursor = resume.map(|id| sealer.seal(CursorKind::OrdersByStatus, &id, &binding));
        Ok(Page { items, next_cursor })
    }

    /// Up to `max` log entries from `from` on, in LSN order, as stored (the bytes of
    /// `codec::encode_log_entry`), each with its LSN: for a reader that passes them on, such as
    /// replication, which then neither decodes nor re-encodes them. Stops after the entry that
    /// reaches `max_bytes` (so at least one entry when any follows `from` and `max_bytes > 0`), and at
    /// `READ_LOG_ENTRIES_MAX` entries or `READ_LOG_BYTES_MAX` bytes. Each value's header is checked
    /// against its key; the caller checks that the LSNs follow `from` without a gap.
    pub fn read_log_encoded(
        &self,
        from: Lsn,
        max: usize,
        max_bytes: usize,
    ) -> Result<EncodedEntries> {
        self.log_encoded_with(from, max, max_bytes, ReadOptions::default())
    }

    /// `read_log_encoded` if memory holds the entries, like `order_state_in_memory`: the entries a
    /// replica asks for right after their commit are still in the memtables.
    pub fn read_log_encoded_in_memory(
        &self,
        from: Lsn,
        max: usize,
        max_bytes: usize,
    ) -> Result<InMemory<EncodedEntries>> {
        let mut ro = ReadOptions::default();
        memory_only(&mut ro);
        unless_incomplete(self.log_encoded_with(from, max, max_bytes, ro))
    }

    fn log_encoded_with(
        &self,
        from: Lsn,
        max: usize,
        max_bytes: usize,
        ro: ReadOptions,
    ) -> Result<EncodedEntries> {
        let max = max.min(READ_LOG_ENTRIES_MAX);
        let max_bytes = max_bytes.min(READ_LOG_BYTES_MAX);
        let db = self.db();
        let mut it = db.raw_iterator_cf_opt(store::handle(db, Cf::Log)?, ro);
        it.seek(keys::log(from));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max && bytes < max_bytes {
            let Some((k, v)) = it.item() else { break };
            let lsn = keys::decode_log(k)?;
            let carried = codec::log_entry_lsn(v)?;
            if carried != lsn {
                return Err(Error::Corrupt(format!(
                    "log key {lsn} holds the entry of LSN {carried}"
                )));
            }
            bytes += v.len();
            out.push((lsn, v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Up to `max` log entries from `from` on, in LSN order (at most `READ_LOG_ENTRIES_MAX` entries and
    /// about `READ_LOG_BYTES_MAX` bytes per call).
    /// Erased events appear as tombstones (`LogEntry::Erased`), so the sequence has no gap.
    pub fn read_log(&self, from: Lsn, max: usize) -> Result<Vec<LogEntry>> {
        let max = max.min(READ_LOG_ENTRIES_MAX);
        let db = self.db();
        let mut it = db.raw_iterator_cf(store::handle(db, Cf::Log)?);
        it.seek(keys::log(from));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < max && bytes < READ_LOG_BYTES_MAX {
            let Some((k, v)) = it.item() else { break };
            let lsn = keys::decode_log(k)?;
            let e = codec::decode_log_entry(v)?;
            if e.lsn() != lsn {
                return Err(Error::Corrupt(format!(
                    "log key {lsn} holds the entry of LSN {}",
                    e.lsn()
                )));
            }
            bytes += v.len();
            out.push(e);
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}
