//! Live subscriptions (DESIGN.md §3). The engine's commit listener publishes the head of the log and,
//! while anyone subscribes, the newest events into a bounded ring. A subscriber is only a position in
//! the log: it reads from the ring when its position is still there and from the log otherwise, so
//! catch-up and live are one loop and can have neither a gap nor a duplicate. Memory is bounded by the
//! ring and by each subscriber's channel; a subscriber further behind the head than the lag bound is
//! disconnected with a reason.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use trackstore_engine::{CommitInfo, Lsn, Status, StoredEvent};

/// Events kept in memory for live subscribers.
pub const RING_EVENTS: usize = 16_384;
/// Events read per step of a subscriber.
pub const STEP_EVENTS: usize = 512;

#[derive(Debug)]
pub struct Hub {
    ring: Mutex<VecDeque<Arc<StoredEvent>>>,
    head: watch::Sender<u64>,
    subscribers: AtomicUsize,
}

impl Hub {
    pub fn new(last_lsn: Lsn) -> Hub {
        Hub {
            ring: Mutex::new(VecDeque::with_capacity(RING_EVENTS)),
            head: watch::Sender::new(last_lsn.0),
            subscribers: AtomicUsize::new(0),
        }
    }

    /// Runs on the writer thread after each commit. Events are copied only while someone listens.
    pub fn publish(&self, info: &CommitInfo<'_>) {
        if !info.removed.is_empty() {
            // Removed (erased or expired) events must not be replayed: readers go to the log, which
            // holds their tombstones.
            self.ring.lock().expect("ring lock").clear();
        }
        if !info.new_events.is_empty() && self.subscribers.load(Ordering::Acquire) > 0 {
            let first = info.new_events[0].lsn.0;
            let skip = info.new_events.len().saturating_sub(RING_EVENTS);
            // Copied before taking the lock, which subscribers' readers take on async workers.
            let fresh: Vec<Arc<StoredEvent>> = info.new_events[skip..]
                .iter()
                .map(|e| Arc::new(e.clone()))
                .collect();
            let mut ring = self.ring.lock().expect("ring lock");
            // The ring holds consecutive LSNs only: after a time without subscribers, start afresh.
            if ring.back().is_some_and(|b| b.lsn.0 + 1 != first) {
                ring.clear();
            }
            for e in fresh {
                if ring.len() == RING_EVENTS {
                    ring.pop_front();
                }
                ring.push_back(e);
            }
        }
        self.head.send_replace(info.last_lsn.0);
    }

    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Up to `max` events from LSN `from` on, if the ring still covers `from`. Within one commit the
    /// ring's LSNs can skip tombstones (a replica applying a catch-up batch): `from` is found by
    /// search, not by offset.
    pub fn from_ring(&self, from: u64, max: usize) -> Option<Vec<Arc<StoredEvent>>> {
        let ring = self.ring.lock().expect("ring lock");
        let front = ring.front()?.lsn.0;
        let back = ring.back()?.lsn.0;
        if from < front || from > back {
            return None;
        }
        let start = ring.partition_point(|e| e.lsn.0 < from);
        Some(ring.range(start..).take(max).cloned().collect())
    }

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Acquire)
    }

    /// Counts a subscriber until the guard drops; `None` when `max` are already subscribed.
    pub fn subscribe(self: &Arc<Self>, max: usize) -> Option<SubscriberGuard> {
        let mut n = self.subscribers.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .subscribers
                .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(SubscriberGuard {
                        hub: Arc::clone(self),
                    });
                }
                Err(now) => n = now,
            }
        }
    }
}

#[derive(Debug)]
pub struct SubscriberGuard {
    hub: Arc<Hub>,
}

impl Drop for SubscriberGuard {
    fn drop(&mut self) {
        self.hub.subscribers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a subscriber wants to see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub order_id: Option<String>,
    /// Empty: every status.
    pub statuses: Vec<Status>,
    pub carrier: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &StoredEvent) -> bool {
        self.order_id
            .as_ref()
            .is_none_or(|o| *o == e.event.order_id)
            && (self.statuses.is_empty() || self.statuses.contains(&e.event.status))
            && self
                .carrier
                .as_ref()
                .is_none_or(|c| e.event.carrier.as_deref() == Some(c.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use trackstore_engine::{Event, Timestamp};

    fn stored(lsn: u64, order: &str, status: Status) -> StoredEvent {
        StoredEvent {
            lsn: Lsn(lsn),
            received_at: Timestamp::from_millis(1_700_000_000_000).unwrap(),
            event: Event {
                event_id: format!("e-{lsn}"),
                order_id: order.into(),
                status,
                occurred_at: Timestamp::from_millis(1_700_000_000_000).unwrap(),
                source: None,
                carrier: Some("van-1".into()),
                reason: None,
                location: None,
                eta: None,
                attributes: None,
            },
        }
    }

    fn commit(hub: &Hub, events: &[StoredEvent]) {
        hub.publish(&CommitInfo {
            last_lsn: events.last().unwrap().lsn,
            events: events.len() as u64,
            requests: 1,
            bytes: 0,
            write_time: Some(Duration::ZERO),
            new_events: events,
            removed: &[],
        });
    }

    #[test]
    fn ring_holds_consecutive_events_only_while_subscribed() {
        let hub = Arc::new(Hub::new(Lsn(0)));
        commit(&hub, &[stored(1, "o", Status::Created)]);
        assert_eq!(hub.head(), 1);
        assert!(hub.from_ring(1, 10).is_none(), "no subscriber, no copy");
        let guard = hub.subscribe(1).unwrap();
        assert!(hub.subscribe(1).is_none(), "bounded");
        commit(
            &hub,
            &[
                stored(2, "o", Status::Picked),
                stored(3, "o", Status::Picked),
            ],
        );
        let got = hub.from_ring(2, 10).unwrap();
        assert_eq!(got.iter().map(|e| e.lsn.0).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(hub.from_ring(3, 1).unwrap()[0].lsn.0, 3);
        assert!(hub.from_ring(1, 10).is_none(), "1 was never in the ring");
        assert!(hub.from_ring(4, 10).is_none());
        drop(guard);
        commit(&hub, &[stored(4, "o", Status::Picked)]);
        let _g = hub.subscribe(1).unwrap();
        commit(&hub, &[stored(6, "o", Status::Picked)]);
        assert!(hub.from_ring(2, 10).is_none(), "a gap clears the ring");
        assert_eq!(hub.from_ring(6, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_commit_with_tombstones_between_its_events_is_searched_not_indexed() {
        // A replica applying a catch-up batch: LSN 3 is a tombstone, so the commit's events are
        // 2, 4 and 5.
        let hub = Arc::new(Hub::new(Lsn(1)));
        let _g = hub.subscribe(1).unwrap();
        commit(
            &hub,
            &[
                stored(2, "o", Status::Created),
                stored(4, "o", Status::Picked),
                stored(5, "o", Status::Delivered),
            ],
        );
        let lsns = |from| {
            hub.from_ring(from, 10)
                .unwrap()
                .iter()
                .map(|e| e.lsn.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(lsns(3), [4, 5], "the tombstone's LSN is passed over");
        assert_eq!(lsns(4), [4, 5], "LSN 4 is not lost");
        assert_eq!(lsns(5), [5]);
    }

    #[test]
    fn ring_is_bounded() {
        let hub = Arc::new(Hub::new(Lsn(0)));
        let _g = hub.subscribe(1).unwrap();
        let events: Vec<_> = (1..=(RING_EVENTS as u64 + 10))
            .map(|l| stored(l, "o", Status::Created))
            .collect();
        commit(&hub, &events);
        assert!(hub.from_ring(10, 1).is_none());
        assert_eq!(hub.from_ring(11, 1).unwrap()[0].lsn.0, 11);
        assert_eq!(hub.ring.lock().unwrap().len(), RING_EVENTS);
    }

    #[test]
    fn filter_by_order_status_and_carrier() {
        let e = stored(1, "o-1", Status::Delivered);
        assert!(Filter::default().matches(&e));
        let f = Filter {
            order_id: Some("o-1".into()),
            statuses: vec![Status::Delivered, Status::Returned],
            carrier: Some("van-1".into()),
        };
        assert!(f.matches(&e));
        assert!(
            !Filter {
                order_id: Some("o-2".into()),
                ..f.clone()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                statuses: vec![Status::Created],
                ..f.clone()
            }
            .matches(&e)
        );
        assert!(
            !Filter {
                carrier: Some("van-2".into()),
                ..f
            }
            .matches(&e)
        );
    }
}
