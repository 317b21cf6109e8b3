//! Offline consistency check: every index entry matches the log, order states equal a recomputation
//! from the events, LSNs are gap-free, every removal's events are tombstones, and every value decodes. Used by `trackctl verify` and by tests.

use std::collections::HashMap;

use rocksdb::DB;

use crate::codec;
use crate::engine::Engine;
use crate::entry::{LogEntry, RemovalKind};
use crate::error::Result;
use crate::event::{Lsn, Status};
use crate::keys::{self, TimePos};
use crate::state::{OrderState, Stats};
use crate::store::{self, Cf};

/// Problems listed in a report; the rest are counted.
const PROBLEMS_LISTED_MAX: usize = 100;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub events: u64,
    pub orders: u64,
    /// The first problems found, in the order found.
    pub problems: Vec<String>,
    pub problem_count: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_LISTED_MAX {
            self.problems.push(text);
        }
    }
}

fn count_entries(db: &DB, cf: Cf) -> Result<u64> {
    let mut it = db.raw_iterator_cf_opt(store::handle(db, cf)?, store::full_scan_read_options());
    it.seek_to_first();
    let mut n = 0;
    while it.valid() {
        n += 1;
        it.next();
    }
    it.status()?;
    Ok(n)
}

impl Engine {
    /// Checks the whole store. Run it on a store no one writes to (the counts would move otherwise).
    pub fn verify(&self) -> Result<VerifyReport> {
        let db = &self.shared.db;
        let mut r = VerifyReport::default();
        let (by_order, by_time, event_ids) = (
            store::handle(db, Cf::ByOrder)?,
            store::handle(db, Cf::ByTime)?,
            store::handle(db, Cf::EventIds)?,
        );
        let meta = store::handle(db, Cf::Meta)?;
        let mut states: HashMap<String, OrderState> = HashMap::new();
        // Tombstone LSN → the removal that made it; every removal must find its own.
        let mut tombstones: HashMap<Lsn, Lsn> = HashMap::new();
        let mut it = db.raw_iterator_cf(store::handle(db, Cf::Log)?);
        it.seek_to_first();
        let first = self.first_lsn();
        let mut expected = first;
        while let Some((k, v)) = it.item() {
            let lsn = match keys::decode_log(k) {
                Ok(l) => l,
                Err(e) => {
                    r.problem(format!("log: {e}"));
                    it.next();
                    continue;
                }
            };
            if lsn != expected {
                r.problem(format!(
                    "log: expected LSN {expected}, found {lsn} (gap or disorder)"
                ));
            }
            expected = Lsn(lsn.0 + 1);
            let entry = match codec::decode_log_entry(v) {
                Ok(e) => e,
                Err(err) => {
                    r.problem(format!("log LSN {lsn}: {err}"));
                    it.next();
                    continue;
                }
            };
            if entry.lsn() != lsn {
                r.problem(format!("log LSN {lsn}: value carries LSN {}", entry.lsn()));
            }
            let e = match entry {
                LogEntry::Event(e) => e,
                LogEntry::Erased { by, .. } => {
                    tombstones.insert(lsn, by);
                    it.next();
                    continue;
                }
                LogEntry::Removal(removal) => {
                    // Tombstones below the log's first LSN were dropped with its prefix.
                    for l in removal.lsns.iter().filter(|l| **l >= first) {
                        if tombstones.get(l) != Some(&lsn) {
                            r.problem(format!(
                                "the removal at LSN {lsn} lists LSN {l}, which is not its tombstone"
                            ));
                        }
                    }
                    if matches!(removal.kind, RemovalKind::Erasure { .. })
                        && db.get_pinned_cf(meta, keys::meta_erasure(lsn))?.is_none()
                    {
                        r.problem(format!("the erasure at LSN {lsn} has no erasure record"));
                    }
                    it.next();
                    continue;
                }
            };
            r.events += 1;
            let pos = TimePos {
                at: e.event.occurred_at,
                lsn,
            };
            match db.get_pinned_cf(by_order, keys::by_order(&e.event.order_id, pos))? {
                // Format 2 stores positions only; a store written by format 1 keeps its copies.
                Some(b) if b.is_empty() || *b == *v => {}
                Some(_) => r.problem(format!("by_order entry of LSN {lsn} differs from the log")),
                None => r.problem(format!("by_order entry of LSN {lsn} is missing")),
            }
            match db.get_pinned_cf(by_time, keys::by_time(pos))? {
                Some(b) if codec::decode_time_entry(&b).ok() == Some(e.event.status) => {}
                Some(_) => r.problem(format!("by_time entry of LSN {lsn} has the wrong status")),
                None => r.problem(format!("by_time entry of LSN {lsn} is missing")),
            }
            match db.get_pinned_cf(event_ids, e.event.event_id.as_bytes())? {
                Some(b) if codec::decode_event_id_entry(&b).ok() == Some(lsn) => {}
                Some(_) => r.problem(format!(
                    "event id {:?} does not point to LSN {lsn}",
                    e.event.event_id
                )),
                None => r.problem(format!(
                    "event id {:?} of LSN {lsn} is missing",
                    e.event.event_id
                )),
            }
            match states.get_mut(&e.event.order_id) {
                Some(s) => s.apply(&e),
                None => {
                    states.insert(e.event.order_id.clone(), OrderState::new(&e));
                }
            }
            it.next();
        }
        it.status()?;
        for (cf, name) in [
            (Cf::ByOrder, "by_order"),
            (Cf::ByTime, "by_time"),
            (Cf::EventIds, "event_ids"),
        ] {
            let n = count_entries(db, cf)?;
            if n != r.events {
                r.problem(format!(
                    "{name} holds {n} entries for {} events in the log",
                    r.events
                ));
            }
        }

        let mut recount = Stats {
            events: r.events,
            last_lsn: Lsn(expected.0 - 1),
            ..Stats::default()
        };
        let mut it = db.raw_iterator_cf(store::handle(db, Cf::Orders)?);
        it.seek_to_first();
        while let Some((k, v)) = it.item() {
            let id = String::from_utf8_lossy(k).into_owned();
            match (codec::decode_state(v), states.get(&id)) {
                (Ok(stored), Some(want)) if stored == *want => {}
                (Ok(_), Some(_)) => r.problem(format!(
                    "order {id:?}: stored state differs from the events"
                )),
                (Ok(_), None) => r.problem(format!("order {id:?} has a state but no event")),
                (Err(e), _) => r.problem(format!("order {id:?}: {e}")),
            }
            r.orders += 1;
            it.next();
        }
        it.status()?;
        if r.orders != states.len() as u64 {
            r.problem(format!(
                "{} orders have events but {} states are stored",
                states.len(),
                r.orders
            ));
        }
        recount.orders = states.len() as u64;
        for s in states.values() {
            *recount.orders_in_mut(s.status.value) += 1;
        }

        let mut it = db.raw_iterator_cf(store::handle(db, Cf::StatusIndex)?);
        it.seek_to_first();
        let mut indexed = 0u64;
        while let Some((k, v)) = it.item() {
            indexed += 1;
            match keys::decode_status_index(k) {
                Ok((status, id)) => {
                    let state = states.get(id);
                    let current: Option<Status> = state.map(|s| s.status.value);
                    let carrier = state
                        .and_then(|s| s.carrier.as_ref())
                        .map(|c| c.value.as_str());
                    if current != Some(status) {
                        r.problem(format!(
                            "status index lists {id:?} under {status}, its status is {current:?}"
                        ));
                    } else {
                        match codec::decode_status_entry(v) {
                            Ok(codec::StatusEntry::Carrier(recorded)) if recorded != carrier => r
                                .problem(format!(
                                    "status index records carrier {recorded:?} for {id:?}, its \
                                     carrier is {carrier:?}"
                                )),
                            Ok(_) => {}
                            Err(e) => r.problem(format!("status index entry of {id:?}: {e}")),
                        }
                    }
                }
                Err(e) => r.problem(format!("status_index: {e}")),
            }
            it.next();
        }
        it.status()?;
        if indexed != states.len() as u64 {
            r.problem(format!(
                "status index holds {indexed} entries for {} orders",
                states.len()
            ));
        }
        let stored_stats = match db.get_pinned_cf(store::handle(db, Cf::Meta)?, keys::META_STATS)? {
            Some(v) => codec::decode_stats(&v)?,
            None => Stats::default(),
        };
        if stored_stats != recount {
            r.problem(format!(
                "stats record {stored_stats:?} differs from the recount {recount:?}"
            ));
        }
        Ok(r)
    }
}
