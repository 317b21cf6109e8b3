//! Removals: GDPR erasure of an order and retention of old events. Both run on the writer thread and
//! see only committed data: a retention step runs alone; erasures share the write (and fsync) of the
//! append group they came with, staged after it, unless that group touches one of their orders. The
//! primary chooses the events to remove; a replica receives the removal entry and removes the same
//! events through the same `stage`, so both stores end equal.
//!
//! One removal is one durable batch: each removed event's log entry becomes a tombstone (the log stays
//! gap-free), its `by_order`, `by_time` and event-id entries are deleted, the states of the orders
//! concerned are recomputed from what remains (an order with nothing left is deleted with its status
//! index entry), the removal entry takes the next LSN, and an erasure leaves a record to check receipts
//! against. A crash leaves the store before or after, never between.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

use rocksdb::{ReadOptions, WriteBatch, WriteOptions};

use crate::codec;
use crate::engine::{CommitInfo, Shared};
use crate::entry::{
    ErasureReceipt, ErasureRecord, LogEntry, Removal, RemovalKind, RetentionReport, SALT_BYTES,
    order_digest,
};
use crate::error::{Error, Result};
use crate::event::{Lsn, StoredEvent};
use crate::keys::{self, TimePos};
use crate::limits::{REMOVAL_EVENTS_MAX, TRIM_SCAN_ENTRIES_MAX};
use crate::plan::IndexEntry;
use crate::query::ByOrderEvents;
use crate::state::{OrderState, Stats};
use crate::store::{self, Cf};
use crate::time::Timestamp;

/// What each erasure of a batch found: its receipt, None (nothing to erase), or its own error.
pub(crate) type Receipts = Vec<Result<Option<ErasureReceipt>>>;
/// Removals and the events each one takes.
type Removals = Vec<(Removal, Vec<StoredEvent>)>;

/// Erases several orders in one durable batch (one fsync): each one found gets its own erasure
/// entry, at consecutive LSNs in the given order. An order named twice is erased once; the later
/// request finds nothing (None), like an erasure that came after it. An order that cannot be erased
/// (too many events, a read error) gets its own error and the others go ahead; an error of the
/// batch's write (or a read-only node) is the outer error.
pub(crate) fn erase_many(
    shared: &Shared,
    order_ids: &[String],
    at: Timestamp,
    opts: &WriteOptions,
) -> Result<Receipts> {
    let (removals, receipts) = plan_erasures(shared, order_ids, at, next_lsn(shared))?;
    commit_many(shared, removals, None, opts)?;
    Ok(receipts)
}

/// Stages erasures into `batch`, to be written with an append group that comes before them in the
/// log (one write, one fsync for both): `base` is the stats after that group, whose last LSN the
/// erasures follow, and `log_end` the group's first LSN (the store does not hold it yet). None of
/// the orders may have events in the group. Returns the receipts (as `erase_many`) and what to
/// publish once the batch is durable; the caller writes `Staged::put_stats` last.
pub(crate) fn stage_erasures(
    shared: &Shared,
    order_ids: &[String],
    at: Timestamp,
    base: Stats,
    log_end: Lsn,
    batch: &mut WriteBatch,
) -> Result<(Receipts, Option<Staged>)> {
    let first = Lsn(base.last_lsn.0 + 1);
    let (removals, receipts) = plan_erasures(shared, order_ids, at, first)?;
    let staged = stage(shared, removals, None, base, log_end, batch)?;
    Ok((receipts, staged))
}

/// Chooses the events of each erasure (see `erase_many`), numbering the erasures from `first`.
fn plan_erasures(
    shared: &Shared,
    order_ids: &[String],
    at: Timestamp,
    first: Lsn,
) -> Result<(Removals, Receipts)> {
    writable(shared)?;
    let mut next = first;
    let mut seen = HashSet::new();
    let mut removals = Vec::new();
    let mut receipts = Vec::with_capacity(order_ids.len());
    for order_id in order_ids {
        let victims = if seen.insert(order_id.as_str()) {
            match order_events(shared, order_id) {
                Ok(v) => v,
                Err(e) => {
                    receipts.push(Err(e));
                    continue;
                }
            }
        } else {
            Vec::new()
        };
        if victims.is_empty() {
            receipts.push(Ok(None));
            continue;
        }
        let salt: [u8; SALT_BYTES] = rand::random();
        receipts.push(Ok(Some(ErasureReceipt {
            order_id: order_id.clone(),
            lsn: next,
            erased_at: at,
            events: victims.len() as u64,
        })));
        removals.push((
            Removal {
                lsn: next,
                at,
                kind: RemovalKind::Erasure {
                    salt,
                    digest: order_digest(&salt, order_id),
                },
                lsns: sorted_lsns(&victims),
            },
            victims,
        ));
        next = Lsn(next.0 + 1);
    }
    Ok((removals, receipts))
}

/// Removes up to `max` of the events that occurred before `before`, oldest first.
pub(crate) fn expire(
    shared: &Shared,
    before: Timestamp,
    max: usize,
    at: Timestamp,
    opts: &WriteOptions,
) -> Result<RetentionReport> {
    writable(shared)?;
    let max = max.clamp(1, REMOVAL_EVENTS_MAX);
    let db = &shared.db;
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(keys::by_time(TimePos {
        at: before,
        lsn: Lsn(0),
    }));
    // Every key below the cursor was removed by an earlier step (a commit of an event below it
    // clears it): starting there skips the deletion markers those steps left, which a scan from
    // the first key would walk again on every step until compaction drops them.
    let cursor = *shared.sweep_cursor.lock().expect("cursor lock");
    if let Some(c) = cursor {
        ro.set_iterate_lower_bound(keys::by_time(c));
    }
    let mut it = db.raw_iterator_cf_opt(store::handle(db, Cf::ByTime)?, ro);
    it.seek_to_first();
    let log = store::handle(db, Cf::Log)?;
    let mut victims = Vec::new();
    let mut last_pos = None;
    while let Some(k) = it.key() {
        if victims.len() >= max {
            break;
        }
        let pos = keys::decode_by_time(k)?;
        last_pos = Some(pos);
        let v = db
            .get_pinned_cf(log, keys::log(pos.lsn))?
            .ok_or_else(|| Error::Corrupt(format!("by_time points to LSN {}, missing", pos.lsn)))?;
        victims.push(codec::decode_event(&v)?);
        it.next();
    }
    it.status()?;
    if victims.is_empty() {
        *shared.sweep_cursor.lock().expect("cursor lock") = None;
        return Ok(RetentionReport::default());
    }
    let removal = Removal {
        lsn: next_lsn(shared),
        at,
        kind: RemovalKind::Retention { before },
        lsns: sorted_lsns(&victims),
    };
    let lsn = removal.lsn;
    let events = victims.len() as u64;
    let orders_before = shared.stats.read().expect("stats lock").orders;
    commit_many(shared, vec![(removal, victims)], None, opts)?;
    *shared.sweep_cursor.lock().expect("cursor lock") = last_pos;
    let orders_after = shared.stats.read().expect("stats lock").orders;
    Ok(RetentionReport {
        lsn: Some(lsn),
        events,
        orders: orders_before - orders_after,
    })
}

/// Applies a removal entry received from the primary (replica side). Its events are those it lists
/// that this store still holds as events; a replica that caught up after the removal holds them as
/// tombstones already. `epoch` is the primary's epoch that wrote the entry.
pub(crate) fn apply(
    shared: &Shared,
    removal: Removal,
    epoch: u64,
    opts: &WriteOptions,
) -> Result<Lsn> {
    if shared.writable() {
        return Err(Error::InvalidArgument(
            "this node accepts writes (primary); it does not apply replicated entries".into(),
        ));
    }
    let expected = next_lsn(shared);
    if removal.lsn != expected {
        return Err(Error::Diverged(format!(
            "expected LSN {expected}, got {}",
            removal.lsn
        )));
    }
    let newest = shared
        .epochs
        .read()
        .expect("epochs lock")
        .last()
        .map_or(0, |(e, _)| *e);
    if epoch < newest {
        return Err(Error::Diverged(format!(
            "entries of epoch {epoch} arrive after epoch {newest} was recorded"
        )));
    }
    if removal.lsns.len() > REMOVAL_EVENTS_MAX {
        return Err(Error::Diverged(format!(
            "a removal of {} events, above the limit of {REMOVAL_EVENTS_MAX}",
            removal.lsns.len()
        )));
    }
    let db = &shared.db;
    let log = store::handle(db, Cf::Log)?;
    let mut victims = Vec::with_capacity(removal.lsns.len());
    let first = shared.first_lsn.load(Ordering::SeqCst);
    for lsn in removal.lsns.iter().filter(|l| l.0 >= first) {
        let entry = match db.get_pinned_cf(log, keys::log(*lsn))? {
            Some(v) => codec::decode_log_entry(&v)?,
            None => {
                return Err(Error::Diverged(format!(
                    "the removal at LSN {} names LSN {lsn}, which this log does not hold",
                    removal.lsn
                )));
            }
        };
        match entry {
            LogEntry::Event(e) => {
                // The entry says what it removes: a victim that does not fit means the logs differ.
                let fits = match &removal.kind {
                    RemovalKind::Erasure { salt, digest } => {
                        order_digest(salt, &e.event.order_id) == *digest
                    }
                    RemovalKind::Retention { before } => e.event.occurred_at < *before,
                };
                if !fits {
                    return Err(Error::Diverged(format!(
                        "the removal at LSN {} names LSN {lsn}, whose event it does not match",
                        removal.lsn
                    )));
                }
                victims.push(e);
            }
            LogEntry::Erased { .. } => {}
            LogEntry::Removal(_) => {
                return Err(Error::Diverged(format!(
                    "the removal at LSN {} names LSN {lsn}, which is a removal",
                    removal.lsn
                )));
            }
        }
    }
    let lsn = removal.lsn;
    let opens_epoch = (epoch > newest).then_some(epoch);
    commit_many(shared, vec![(removal, victims)], opens_epoch, opts)?;
    Ok(lsn)
}

fn writable(shared: &Shared) -> Result<()> {
    match shared.read_only.read().expect("mode lock").clone() {
        Some(reason) => Err(Error::ReadOnly(reason)),
        None => Ok(()),
    }
}

fn next_lsn(shared: &Shared) -> Lsn {
    Lsn(shared.stats.read().expect("stats lock").last_lsn.0 + 1)
}

fn sorted_lsns(victims: &[StoredEvent]) -> Vec<Lsn> {
    let mut lsns: Vec<Lsn> = victims.iter().map(|e| e.lsn).collect();
    lsns.sort_unstable();
    lsns
}

/// Every event of the order, bounded by `REMOVAL_EVENTS_MAX`.
fn order_events(shared: &Shared, order_id: &str) -> Result<Vec<StoredEvent>> {
    let db = &shared.db;
    let mut it = db.raw_iterator_cf_opt(
        store::handle(db, Cf::ByOrder)?,
        store::one_order_read_options(order_id),
    );
    it.seek(keys::by_order_prefix(order_id));
    let mut events = ByOrderEvents::default();
    while let Some((k, v)) = it.item() {
        if events.len() >= REMOVAL_EVENTS_MAX {
            return Err(Error::InvalidArgument(format!(
                "order {order_id:?} holds more than {REMOVAL_EVENTS_MAX} events, the most one \
                 erasure removes; nothing was erased"
            )));
        }
        events.push(keys::decode_by_order(k)?.1.lsn, v)?;
        it.next();
    }
    it.status()?;
    events.finish(db, &ReadOptions::default())
}

/// Commits removals at consecutive LSNs after the last one, in one durable batch. Their events must
/// belong to distinct orders (each order's state is recomputed from the committed store).
fn commit_many(
    shared: &Shared,
    removals: Removals,
    opens_epoch: Option<u64>,
    opts: &WriteOptions,
) -> Result<()> {
    let started = Instant::now();
    let stats = shared.stats.read().expect("stats lock").clone();
    let log_end = Lsn(stats.last_lsn.0 + 1);
    let mut batch = WriteBatch::default();
    let Some(staged) = stage(shared, removals, opens_epoch, stats, log_end, &mut batch)? else {
        return Ok(());
    };
    staged.put_stats(shared, &mut batch)?;
    fail::fail_point!("engine::write_group", |_| Err(Error::Poisoned(
        "injected write failure".to_owned()
    )));
    shared.mark_format()?;
    let _purge = shared.purge_lock.lock().expect("purge lock");
    shared
        .db
        .write_opt(batch, opts)
        .map_err(|e| Error::Poisoned(format!("removal failed: {e}")))?;
    staged.publish(shared, Some(started.elapsed()));
    Ok(())
}

/// Removals staged into a write batch that is not written yet: what they change in memory once it
/// is durable.
pub(crate) struct Staged {
    first_new: Lsn,
    last: Lsn,
    /// The stats after the removals (and after whatever the batch holds before them).
    stats: Stats,
    /// The log's new first LSN and its anchor digest, when the start moves.
    trim: Option<(Lsn, u64)>,
    removed: Vec<Lsn>,
    bytes: u64,
    requests: u64,
    opens_epoch: Option<u64>,
}

impl Staged {
    /// Puts the stats after the removals; last in the batch, over any earlier stats of the batch.
    pub(crate) fn put_stats(&self, shared: &Shared, batch: &mut WriteBatch) -> Result<()> {
        batch.put_cf(
            store::handle(&shared.db, Cf::Meta)?,
            keys::META_STATS,
            codec::encode_stats(&self.stats),
        );
        Ok(())
    }

    /// Makes the written removals visible in memory and tells subscribers. The caller holds the
    /// purge lock from before the write (a purge must not see the removal written but not owed).
    pub(crate) fn publish(self, shared: &Shared, write_time: Option<std::time::Duration>) {
        *shared.stats.write().expect("stats lock") = self.stats;
        if let Some((first, anchor)) = self.trim {
            *shared.trim_anchor.write().expect("anchor lock") = Some((Lsn(first.0 - 1), anchor));
            shared.first_lsn.store(first.0, Ordering::SeqCst);
        }
        shared.purge_pending.store(self.last.0, Ordering::SeqCst);
        if let Some(epoch) = self.opens_epoch {
            shared.known_epoch.fetch_max(epoch, Ordering::SeqCst);
            shared
                .epochs
                .write()
                .expect("epochs lock")
                .push((epoch, self.first_new));
        }
        shared.commits.publish(
            &CommitInfo {
                last_lsn: self.last,
                events: 0,
                requests: self.requests,
                bytes: self.bytes,
                write_time,
                new_events: &[],
                removed: &self.removed,
            },
            shared.writable(),
        );
    }
}

/// Stages removals at consecutive LSNs after `stats.last_lsn` into `batch`, all but the stats (see
/// `Staged::put_stats`). `log_end` is the first LSN the committed store does not hold: entries of
/// the same batch before the removals are not readable yet, and the log start never moves past
/// them. Their events must belong to distinct orders that nothing earlier in the batch touches
/// (each order's state is recomputed from the committed store). None when there is nothing to do.
fn stage(
    shared: &Shared,
    removals: Removals,
    opens_epoch: Option<u64>,
    mut stats: Stats,
    log_end: Lsn,
    batch: &mut WriteBatch,
) -> Result<Option<Staged>> {
    let Some(first_new) = removals.first().map(|(r, _)| r.lsn) else {
        return Ok(None);
    };
    let db = &shared.db;
    let h = |cf| store::handle(db, cf);
    let all_removed: HashSet<Lsn> = removals
        .iter()
        .flat_map(|(_, v)| v.iter().map(|e| e.lsn))
        .collect();
    let mut bytes = 0u64;
    let mut last = first_new;
    for (removal, victims) in &removals {
        let mut orders: BTreeMap<&str, u64> = BTreeMap::new();
        for e in victims {
            let pos = TimePos {
                at: e.event.occurred_at,
                lsn: e.lsn,
            };
            batch.put_cf(
                h(Cf::Log)?,
                keys::log(e.lsn),
                codec::encode_tombstone(
                    e.lsn,
                    removal.at,
                    removal.lsn,
                    crate::entry::bytes_digest(&codec::encode_event(e)),
                ),
            );
            batch.delete_cf(h(Cf::ByOrder)?, keys::by_order(&e.event.order_id, pos));
            batch.delete_cf(h(Cf::ByTime)?, keys::by_time(pos));
            batch.delete_cf(h(Cf::EventIds)?, e.event.event_id.as_bytes());
            *orders.entry(e.event.order_id.as_str()).or_default() += 1;
        }
        stats.events -= victims.len() as u64;
        restate_orders(
            shared,
            orders,
            |lsn| !all_removed.contains(&lsn),
            batch,
            &mut stats,
        )?;
        if let RemovalKind::Erasure { salt, digest } = &removal.kind {
            let record = ErasureRecord {
                lsn: removal.lsn,
                erased_at: removal.at,
                // What the erasure removed on the primary: a replica that caught up afterwards had
                // only tombstones left to remove.
                events: removal.lsns.len() as u64,
                salt: *salt,
                digest: *digest,
            };
            batch.put_cf(
                h(Cf::Meta)?,
                keys::meta_erasure(removal.lsn),
                codec::encode_erasure_record(&record),
            );
        }
        let entry = codec::encode_log_entry(&LogEntry::Removal(removal.clone()));
        bytes += entry.len() as u64;
        batch.put_cf(h(Cf::Log)?, keys::log(removal.lsn), entry);
        last = removal.lsn;
    }
    if let Some(epoch) = opens_epoch {
        batch.put_cf(
            h(Cf::Meta)?,
            keys::meta_epoch(epoch),
            codec::encode_epoch_start(first_new),
        );
        if shared.known_epoch.load(Ordering::SeqCst) < epoch {
            batch.put_cf(h(Cf::Meta)?, keys::META_KNOWN_EPOCH, epoch.to_be_bytes());
        }
    }
    let trim = trim_point(shared, &all_removed, first_new.min(log_end))?;
    if let Some((first, anchor)) = trim {
        let old = shared.first_lsn.load(Ordering::SeqCst);
        batch.delete_range_cf(h(Cf::Log)?, keys::log(Lsn(old)), keys::log(first));
        batch.put_cf(h(Cf::Meta)?, keys::META_FIRST_LSN, first.0.to_be_bytes());
        // Replication still checks the entry before the first one it sends.
        batch.put_cf(h(Cf::Meta)?, keys::META_TRIM_ANCHOR, anchor.to_be_bytes());
    }
    // Until a purge, the removed bytes may still be in SST files and the WAL (durable, so that a
    // restart does not forget the purge owed).
    batch.put_cf(h(Cf::Meta)?, keys::META_PURGE_PENDING, last.0.to_be_bytes());
    stats.last_lsn = last;
    let mut removed: Vec<Lsn> = all_removed.into_iter().collect();
    removed.sort_unstable();
    Ok(Some(Staged {
        first_new,
        last,
        stats,
        trim,
        removed,
        bytes,
        requests: removals.len() as u64,
        opens_epoch,
    }))
}

/// Where the log will start once a batch removing `removed` commits: past its prefix of tombstones
/// and removal entries, up to the first event that stays, or at most `end`: the batch's first new
/// entry (its first removal, or the appends written before it), since the last entry is always kept
/// (it carries the last LSN) and the store does not hold the batch's entries yet. Returns the
/// new first LSN and the anchor digest of the entry just before it (as it will be once this
/// removal commits), or None when the start does not move. Examines at most
/// `TRIM_SCAN_ENTRIES_MAX` entries.
fn trim_point(shared: &Shared, removed: &HashSet<Lsn>, end: Lsn) -> Result<Option<(Lsn, u64)>> {
    let db = &shared.db;
    let first = Lsn(shared.first_lsn.load(Ordering::SeqCst));
    let mut it = db.raw_iterator_cf(store::handle(db, Cf::Log)?);
    it.seek(keys::log(first));
    let mut cut = end;
    let mut scanned = 0;
    while let Some((k, v)) = it.item() {
        let lsn = keys::decode_log(k)?;
        let gone = removed.contains(&lsn) || !codec::is_event(v)?;
        if !gone || scanned >= TRIM_SCAN_ENTRIES_MAX {
            cut = lsn;
            break;
        }
        scanned += 1;
        it.next();
    }
    it.status()?;
    if cut <= first {
        return Ok(None);
    }
    // The entry just before the new start; an event removed now becomes a tombstone holding its
    // digest, so the anchor is the same either way.
    let before = Lsn(cut.0 - 1);
    let v = db
        .get_pinned_cf(store::handle(db, Cf::Log)?, keys::log(before))?
        .ok_or_else(|| Error::Corrupt(format!("log entry {before} is missing")))?;
    Ok(Some((cut, codec::decode_log_entry(&v)?.anchor_digest())))
}

/// Recomputes the states of `orders` (each with how many of its events go) from the events `keep`
/// accepts, into `batch` and `stats`: status index moves, counts by status, and deletion of orders
/// left with no event.
pub(crate) fn restate_orders<'a>(
    shared: &Shared,
    orders: impl IntoIterator<Item = (&'a str, u64)>,
    keep: impl Fn(Lsn) -> bool,
    batch: &mut WriteBatch,
    stats: &mut Stats,
) -> Result<()> {
    let db = &shared.db;
    let h = |cf| store::handle(db, cf);
    for (order_id, removing) in orders {
        let before = match db.get_pinned_cf(h(Cf::Orders)?, order_id.as_bytes())? {
            Some(v) => Some(codec::decode_state(&v)?),
            None => None,
        };
        // `removing` of the order's events go: when that is all of them (most orders of a retention
        // step, every erasure) nothing is left to fold, and the order's events need not be read.
        let after = if before.as_ref().is_some_and(|b| b.event_count == removing) {
            None
        } else {
            recompute(shared, order_id, &keep)?
        };
        // As `GroupPlan::finish`: the entry moves when the status or the carrier changes.
        let old = before.as_ref().map(IndexEntry::of);
        let new = after.as_ref().map(IndexEntry::of);
        if old != new {
            if let Some(old) = &old {
                *stats.orders_in_mut(old.status) -= 1;
                store::delete(
                    batch,
                    Cf::StatusIndex,
                    h(Cf::StatusIndex)?,
                    old.key(order_id),
                );
            }
            if let Some(new) = &new {
                *stats.orders_in_mut(new.status) += 1;
                batch.put_cf(h(Cf::StatusIndex)?, new.key(order_id), new.value());
            }
        }
        match &after {
            Some(state) => batch.put_cf(
                h(Cf::Orders)?,
                order_id.as_bytes(),
                codec::encode_state(state),
            ),
            None => {
                if before.is_some() {
                    stats.orders -= 1;
                }
                batch.delete_cf(h(Cf::Orders)?, order_id.as_bytes());
            }
        }
    }
    Ok(())
}

/// The order's state from its events that `keep` accepts, folded in LSN order; None if none remains.
fn recompute(
    shared: &Shared,
    order_id: &str,
    keep: &impl Fn(Lsn) -> bool,
) -> Result<Option<OrderState>> {
    let db = &shared.db;
    let mut it = db.raw_iterator_cf_opt(
        store::handle(db, Cf::ByOrder)?,
        store::one_order_read_options(order_id),
    );
    it.seek(keys::by_order_prefix(order_id));
    let mut kept = ByOrderEvents::default();
    while let Some((k, v)) = it.item() {
        let lsn = keys::decode_by_order(k)?.1.lsn;
        if keep(lsn) {
            kept.push(lsn, v)?;
        }
        it.next();
    }
    it.status()?;
    let mut events = kept.finish(db, &ReadOptions::default())?;
    events.sort_by_key(|e| e.lsn);
    let mut events = events.into_iter();
    let Some(first) = events.next() else {
        return Ok(None);
    };
    let mut state = OrderState::new(&first);
    for e in events {
        state.apply(&e);
    }
    Ok(Some(state))
}
