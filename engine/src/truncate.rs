//! Truncation of the log's tail: an old primary rejoining as a replica drops the entries the new
//! primary never received (after the caller saved them to a quarantine file). Every trace of each
//! removed entry goes (log, `by_order`, `by_time`, event id), the affected orders' states are
//! recomputed from their remaining events by the same fold rule as on write, and the stats and epoch
//! history follow, all in one durable batch: a crash leaves either the old or the new store.

use std::collections::BTreeMap;

use rocksdb::{WriteBatch, WriteOptions};

use crate::codec;
use crate::engine::Shared;
use crate::entry::LogEntry;
use crate::error::{Error, Result};
use crate::event::{Lsn, StoredEvent};
use crate::keys::{self, TimePos};
use crate::limits::TRUNCATE_ENTRIES_MAX;
use crate::store::{self, Cf};

/// Runs on the writer thread, alone. Returns the number of entries removed.
pub(crate) fn run(shared: &Shared, after: Lsn, opts: &WriteOptions) -> Result<u64> {
    let db = &shared.db;
    let mut stats = shared.stats.read().expect("stats lock").clone();
    // With no entry to remove there may still be an epoch to drop: a promotion that wrote nothing.
    let epoch_after = shared
        .epochs
        .read()
        .expect("epochs lock")
        .iter()
        .any(|(_, start)| *start > after);
    if after >= stats.last_lsn && !epoch_after {
        return Ok(0);
    }
    let removed = tail(shared, after)?;
    let h = |cf| store::handle(db, cf);
    let mut batch = WriteBatch::default();
    let mut orders: BTreeMap<&str, u64> = BTreeMap::new();
    // Every log entry after `after` goes, tombstones included (a tombstone whose removal has not
    // arrived yet can sit in a tail).
    if after < stats.last_lsn {
        batch.delete_range_cf(
            h(Cf::Log)?,
            keys::log(Lsn(after.0 + 1)),
            keys::log(Lsn(stats.last_lsn.0 + 1)),
        );
    }
    for e in &removed {
        let pos = TimePos {
            at: e.event.occurred_at,
            lsn: e.lsn,
        };
        batch.delete_cf(h(Cf::ByOrder)?, keys::by_order(&e.event.order_id, pos));
        batch.delete_cf(h(Cf::ByTime)?, keys::by_time(pos));
        batch.delete_cf(h(Cf::EventIds)?, e.event.event_id.as_bytes());
        *orders.entry(e.event.order_id.as_str()).or_default() += 1;
    }
    stats.events -= removed.len() as u64;
    crate::removal::restate_orders(shared, orders, |lsn| lsn <= after, &mut batch, &mut stats)?;
    // `after` may lie beyond the log when only an epoch is dropped.
    let last = stats.last_lsn.min(after);
    stats.last_lsn = last;
    let mut epochs = shared.epochs.read().expect("epochs lock").clone();
    for (epoch, start) in &epochs {
        if *start > after {
            batch.delete_cf(h(Cf::Meta)?, keys::meta_epoch(*epoch));
        }
    }
    epochs.retain(|(_, start)| *start <= after);
    batch.put_cf(h(Cf::Meta)?, keys::META_STATS, codec::encode_stats(&stats));
    shared.mark_format()?;
    db.write_opt(batch, opts)
        .map_err(|e| Error::Poisoned(format!("truncation failed: {e}")))?;
    *shared.stats.write().expect("stats lock") = stats;
    *shared.epochs.write().expect("epochs lock") = epochs;
    shared.commits.rewind(last);
    Ok(removed.len() as u64)
}

/// The log entries after `after`, bounded.
fn tail(shared: &Shared, after: Lsn) -> Result<Vec<StoredEvent>> {
    let db = &shared.db;
    let mut it = db.raw_iterator_cf(store::handle(db, Cf::Log)?);
    it.seek(keys::log(Lsn(after.0 + 1)));
    let mut out = Vec::new();
    while let Some(v) = it.value() {
        if out.len() >= TRUNCATE_ENTRIES_MAX {
            return Err(Error::InvalidArgument(format!(
                "the tail after LSN {after} holds more than {TRUNCATE_ENTRIES_MAX} entries; \
                 rebuild this node from a snapshot instead"
            )));
        }
        match codec::decode_log_entry(v)? {
            LogEntry::Event(e) => out.push(e),
            // A tombstone holds nothing else to undo; its log entry goes with the range.
            LogEntry::Erased { .. } => {}
            LogEntry::Removal(r) => {
                return Err(Error::InvalidArgument(format!(
                    "the tail after LSN {after} holds a removal (erasure or retention) at LSN {}; \
                     removed data cannot be brought back to truncate it: rebuild this node from a \
                     snapshot, and repeat the removal on the new primary if it is lost",
                    r.lsn
                )));
            }
        }
        it.next();
    }
    it.status()?;
    Ok(out)
}
