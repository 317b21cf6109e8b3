//! The read-your-writes check. For every order the run writes, it remembers how many of its events
//! the server acknowledged as `created` and the largest LSN acknowledged (created or duplicate).
//! When a read of that order is sent, it takes a snapshot of those two numbers; the answer must
//! reflect at least that much: `event_count` and `last_lsn` of the order state (or the number of
//! events and their largest LSN in a complete timeline) not below the snapshot. A primary must never
//! violate it; a replica or a cache may.
//!
//! Memory is fixed: a table of `capacity` slots indexed by `order mod capacity`. A slot holds one
//! order; a newer order evicts an older one, whose reads are then not checked (never wrongly
//! flagged). Order numbers only grow, so an order is either tracked from its first acknowledgement
//! or not at all.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Examples of violations kept for the report.
const EXAMPLES_MAX: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// `order + 1`; 0 for an empty slot.
    order_plus_one: u64,
    created: u64,
    max_lsn: u64,
}

/// What a read must reflect: the writes acknowledged before it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expect {
    pub order: u64,
    pub created: u64,
    pub max_lsn: u64,
}

/// The tracker shared by every connection of a run.
#[derive(Debug)]
pub struct Tracker {
    slots: Box<[Mutex<Slot>]>,
    pub checked: AtomicU64,
    pub violations: AtomicU64,
    /// Reads that found no order although none of its writes was acknowledged yet when the read was
    /// sent (its first event may still have been in flight): expected, reported apart.
    pub not_found_unacked: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Tracker {
    pub fn new(capacity: usize) -> Tracker {
        Tracker {
            slots: (0..capacity.max(1))
                .map(|_| Mutex::new(Slot::default()))
                .collect(),
            checked: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            not_found_unacked: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
        }
    }

    fn slot(&self, order: u64) -> std::sync::MutexGuard<'_, Slot> {
        self.slots[(order % self.slots.len() as u64) as usize]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records an acknowledged event of `order` (`created`: a new event, else a duplicate).
    pub fn acked(&self, order: u64, created: bool, lsn: u64) {
        let mut s = self.slot(order);
        if s.order_plus_one < order + 1 {
            *s = Slot {
                order_plus_one: order + 1,
                created: 0,
                max_lsn: 0,
            };
        } else if s.order_plus_one > order + 1 {
            return;
        }
        s.created += u64::from(created);
        s.max_lsn = s.max_lsn.max(lsn);
    }

    /// The snapshot a read of `order` sent now must reflect, if the order is tracked.
    pub fn expect(&self, order: u64) -> Option<Expect> {
        let s = self.slot(order);
        (s.order_plus_one == order + 1).then_some(Expect {
            order,
            created: s.created,
            max_lsn: s.max_lsn,
        })
    }

    /// Checks an answer against its snapshot: `found` is `None` for a 404, else the events and the
    /// largest LSN the answer shows. Returns false for a violation (counted, with an example kept).
    pub fn check(&self, what: &str, expect: Option<Expect>, found: Option<(u64, u64)>) -> bool {
        let Some(e) = expect else {
            if found.is_none() {
                self.not_found_unacked.fetch_add(1, Ordering::Relaxed);
            }
            return true;
        };
        self.checked.fetch_add(1, Ordering::Relaxed);
        let ok = match found {
            None => e.created == 0,
            Some((events, max_lsn)) => events >= e.created && max_lsn >= e.max_lsn,
        };
        if !ok {
            self.violations.fetch_add(1, Ordering::Relaxed);
            let mut ex = self
                .examples
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if ex.len() < EXAMPLES_MAX {
                let shown = match found {
                    None => "404".to_owned(),
                    Some((n, lsn)) => format!("{n} events, last_lsn {lsn}"),
                };
                ex.push(format!(
                    "{what}: answered {shown}, but {} created events up to LSN {} were acknowledged before the read was sent",
                    e.created, e.max_lsn
                ));
            }
        } else if found.is_none() {
            self.not_found_unacked.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn examples(&self) -> Vec<String> {
        self.examples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_must_reflect_acknowledged_writes() {
        let t = Tracker::new(8);
        assert_eq!(t.expect(3), None);
        assert!(
            t.check("o3", None, None),
            "an untracked order is not checked"
        );
        t.acked(3, true, 10);
        t.acked(3, true, 12);
        t.acked(3, false, 11);
        let e = t.expect(3).unwrap();
        assert_eq!((e.created, e.max_lsn), (2, 12));
        assert!(t.check("o3", Some(e), Some((2, 12))));
        assert!(
            t.check("o3", Some(e), Some((5, 40))),
            "newer writes are fine"
        );
        assert!(!t.check("o3", Some(e), Some((1, 12))), "a missing event");
        assert!(!t.check("o3", Some(e), Some((2, 11))), "an old LSN");
        assert!(
            !t.check("o3", Some(e), None),
            "404 after an acknowledged write"
        );
        assert_eq!(t.violations.load(Ordering::Relaxed), 3);
        assert_eq!(t.checked.load(Ordering::Relaxed), 5);
        assert_eq!(t.examples().len(), 3);

        // Order 11 shares order 3's slot: it evicts it; late acknowledgements of 3 are ignored.
        t.acked(11, true, 20);
        assert_eq!(t.expect(3), None);
        t.acked(3, true, 21);
        assert_eq!(t.expect(3), None);
        assert_eq!(t.expect(11).unwrap().created, 1);
        let zero = Expect {
            order: 5,
            created: 0,
            max_lsn: 0,
        };
        assert!(
            t.check("o5", Some(zero), None),
            "404 before any acknowledgement"
        );
        assert_eq!(t.not_found_unacked.load(Ordering::Relaxed), 2);
    }
}
