//! The write planner: turns append requests (or replicated entries) into the key/value operations of
//! one group commit. It does no I/O itself: it reads the committed store through [`Lookup`] and keeps
//! the effects of the group's earlier requests in memory, so requests in one group see each other.
//!
//! Per request it is all-or-nothing: a request that fails (conflict, divergence) is rolled back out of
//! the group without a trace, and LSNs stay gap-free because they are only taken by events that stay.

use std::collections::HashMap;

use crate::codec;
use crate::entry::LogEntry;
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, Status, StoredEvent};
use crate::keys::{self, TimePos};
use crate::state::{OrderState, Stats};
use crate::store::Cf;
use crate::time::Timestamp;

/// Read access to what is committed.
pub trait Lookup {
    fn event_id_lsn(&self, event_id: &str) -> Result<Option<Lsn>>;
    fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>>;
    fn order_state(&self, order_id: &str) -> Result<Option<OrderState>>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
}

/// What a new event's `by_order` entry holds. A primary serves timelines: a copy of the event makes
/// one a single scan of adjacent keys (twice the timelines per second of fetching each event from
/// the log). A replica mostly applies: positions only spare it a second copy of every event (+5%
/// catch-up), and its timelines (also after a promotion, for the events applied before it) fetch
/// each event from the log (bench/RESULTS.md, session 14). Readers accept both, entry by entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ByOrderValue {
    Copy,
    Position,
}

/// What happened to one event of an append request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored now, at this LSN.
    Created(Lsn),
    /// The same event was already stored, at this LSN; nothing new was written.
    Duplicate(Lsn),
}

impl Outcome {
    pub fn lsn(self) -> Lsn {
        match self {
            Outcome::Created(l) | Outcome::Duplicate(l) => l,
        }
    }
}

/// What an order's `status_index` entry holds: its status (in the key) and its carrier (the value).
/// An entry is rewritten when either changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) status: Status,
    pub(crate) carrier: Option<String>,
}

impl IndexEntry {
    pub(crate) fn of(state: &OrderState) -> IndexEntry {
        IndexEntry {
            status: state.status.value,
            carrier: state.carrier.as_ref().map(|c| c.value.clone()),
        }
    }

    pub(crate) fn key(&self, order_id: &str) -> Vec<u8> {
        keys::status_index(self.status, order_id)
    }

    /// The entry's value (`GroupPlan::finish` encodes it from the state it borrows instead).
    pub(crate) fn value(&self) -> Vec<u8> {
        codec::encode_status_entry(self.carrier.as_deref())
    }
}

#[derive(Debug)]
struct OrderEntry {
    /// The order's index entry in the committed store, before this group (None: a new order).
    committed: Option<IndexEntry>,
    state: OrderState,
}

/// One group commit being planned.
#[derive(Debug)]
pub struct GroupPlan {
    next_lsn: Lsn,
    stats: Stats,
    ops: Vec<Op>,
    new_events: Vec<StoredEvent>,
    /// Event ids stored by this group → index in `new_events`.
    event_ids: HashMap<String, usize>,
    orders: HashMap<String, OrderEntry>,
    bytes: usize,
}

/// What a request changed, to undo it if a later event of the same request fails.
struct Undo {
    next_lsn: Lsn,
    stats: Stats,
    ops: usize,
    new_events: usize,
    bytes: usize,
    /// Orders touched by the request and their entry before it (None: first touched by it).
    orders: HashMap<String, Option<(Option<IndexEntry>, OrderState)>>,
}

impl GroupPlan {
    /// Starts a group after the committed state `stats` (whose `last_lsn` is the last committed LSN).
    pub fn new(stats: Stats) -> GroupPlan {
        GroupPlan {
            next_lsn: Lsn(stats.last_lsn.0 + 1),
            stats,
            ops: Vec::new(),
            new_events: Vec::new(),
            event_ids: HashMap::new(),
            orders: HashMap::new(),
            bytes: 0,
        }
    }

    /// Encoded bytes of the events planned so far.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The LSN the next new event of this group takes.
    pub fn next_lsn(&self) -> Lsn {
        self.next_lsn
    }

    pub fn event_count(&self) -> usize {
        self.new_events.len()
    }

    /// Whether the group writes to this order (its state or its events).
    pub fn touches_order(&self, order_id: &str) -> bool {
        self.orders.contains_key(order_id)
    }

    /// Room for `events` more events, taken once: the maps and vectors grown an insert at a time
    /// rehashed and copied themselves at every doubling (2% of a batch fill's instructions).
    fn reserve(&mut self, events: usize, undo: &mut Undo) {
        /// Ops an event plans at most: its log entry, `by_order`, `by_time` and `event_ids`
        /// entries, its order's state, and a status index entry moved (a delete and a put).
        const OPS_PER_EVENT: usize = 7;
        self.ops.reserve(events.saturating_mul(OPS_PER_EVENT));
        self.new_events.reserve(events);
        self.event_ids.reserve(events);
        self.orders.reserve(events);
        undo.orders.reserve(events);
    }

    fn undo_point(&self) -> Undo {
        Undo {
            next_lsn: self.next_lsn,
            stats: self.stats.clone(),
            ops: self.ops.len(),
            new_events: self.new_events.len(),
            bytes: self.bytes,
            orders: HashMap::new(),
        }
    }

    fn roll_back(&mut self, undo: Undo) {
        for event in self.new_events.drain(undo.new_events..) {
            self.event_ids.remove(&event.event.event_id);
        }
        for (order_id, before) in undo.orders {
            match before {
                Some((committed, state)) => {
                    self.orders
                        .insert(order_id, OrderEntry { committed, state });
                }
                None => {
                    self.orders.remove(&order_id);
                }
            }
        }
        self.ops.truncate(undo.ops);
        self.next_lsn = undo.next_lsn;
        self.stats = undo.stats;
        self.bytes = undo.bytes;
    }

    /// Plans a client request: each event is new (next LSN), a duplicate (its original LSN), or a
    /// conflict, which fails the whole request. `received_at` is the group's receive time.
    pub fn plan_append(
        &mut self,
        lookup: &impl Lookup,
        events: Vec<Event>,
        received_at: Timestamp,
    ) -> Result<Vec<Outcome>> {
        let mut undo = self.undo_point();
        self.reserve(events.len(), &mut undo);
        let mut outcomes = Vec::with_capacity(events.len());
        for (index, event) in events.into_iter().enumerate() {
            match self.plan_one(lookup, index, event, received_at, &mut undo) {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) => {
                    self.roll_back(undo);
                    return Err(e);
                }
            }
        }
        Ok(outcomes)
    }

    fn plan_one(
        &mut self,
        lookup: &impl Lookup,
        index: usize,
        event: Event,
        received_at: Timestamp,
        undo: &mut Undo,
    ) -> Result<Outcome> {
        let prior = match self.event_ids.get(&event.event_id) {
            Some(&i) => Some(self.new_events[i].clone()),
            None => match lookup.event_id_lsn(&event.event_id)? {
                Some(lsn) => Some(lookup.event(lsn)?.ok_or_else(|| {
                    Error::Corrupt(format!(
                        "event id {:?} points to LSN {lsn}, which is missing",
                        event.event_id
                    ))
                })?),
                None => None,
            },
        };
        if let Some(prior) = prior {
            return if prior.event == event {
                Ok(Outcome::Duplicate(prior.lsn))
            } else {
                Err(Error::Conflict {
                    index,
                    event_id: event.event_id,
                    lsn: prior.lsn,
                })
            };
        }
        let lsn = self.next_lsn;
        self.add_new(
            lookup,
            StoredEvent {
                lsn,
                received_at,
                event,
            },
            undo,
            ByOrderValue::Copy,
        )?;
        Ok(Outcome::Created(lsn))
    }

    /// Plans entries numbered by a primary: events and tombstones (removals run alone, see
    /// `removal`). They must continue this log exactly (next LSN, in order) and carry event ids this
    /// store does not hold; otherwise the whole batch is refused.
    pub fn plan_replicated(&mut self, lookup: &impl Lookup, entries: Vec<LogEntry>) -> Result<()> {
        let mut undo = self.undo_point();
        self.reserve(entries.len(), &mut undo);
        for entry in entries {
            let result = if entry.lsn() != self.next_lsn {
                Err(Error::Diverged(format!(
                    "expected LSN {}, got {}",
                    self.next_lsn,
                    entry.lsn()
                )))
            } else {
                match entry {
                    LogEntry::Event(e) => {
                        if self.event_ids.contains_key(&e.event.event_id)
                            || lookup.event_id_lsn(&e.event.event_id)?.is_some()
                        {
                            Err(Error::Diverged(format!(
                                "LSN {} carries event id {:?}, which this store already holds",
                                e.lsn, e.event.event_id
                            )))
                        } else {
                            self.add_new(lookup, e, &mut undo, ByOrderValue::Position)
                        }
                    }
                    LogEntry::Erased {
                        lsn,
                        at,
                        by,
                        event_digest,
                    } => {
                        // An event removed on the primary before this replica received it: the
                        // LSN is taken, nothing else is stored.
                        self.ops.push(Op::Put(
                            Cf::Log,
                            keys::log(lsn).to_vec(),
                            codec::encode_tombstone(lsn, at, by, event_digest),
                        ));
                        self.stats.last_lsn = lsn;
                        self.next_lsn = Lsn(lsn.0 + 1);
                        Ok(())
                    }
                    LogEntry::Removal(r) => Err(Error::InvalidArgument(format!(
                        "the removal at LSN {} must be applied alone",
                        r.lsn
                    ))),
                }
            };
            if let Err(e) = result {
                self.roll_back(undo);
                return Err(e);
            }
        }
        Ok(())
    }

    fn add_new(
        &mut self,
        lookup: &impl Lookup,
        stored: StoredEvent,
        undo: &mut Undo,
        by_order_value: ByOrderValue,
    ) -> Result<()> {
        let e = &stored.event;
        let pos = TimePos {
            at: e.occurred_at,
            lsn: stored.lsn,
        };
        let value = codec::encode_event(&stored);
        self.bytes += value.len();
        let by_order = match by_order_value {
            ByOrderValue::Copy => value.clone(),
            ByOrderValue::Position => Vec::new(),
        };
        self.ops.push(Op::Put(
            Cf::ByOrder,
            keys::by_order(&e.order_id, pos),
            by_order,
        ));
        self.ops
            .push(Op::Put(Cf::Log, keys::log(stored.lsn).to_vec(), value));
        self.ops.push(Op::Put(
            Cf::ByTime,
            keys::by_time(pos).to_vec(),
            codec::encode_time_entry(e.status).to_vec(),
        ));
        self.ops.push(Op::Put(
            Cf::EventIds,
            e.event_id.as_bytes().to_vec(),
            codec::encode_event_id_entry(stored.lsn).to_vec(),
        ));

        match self.orders.get_mut(&e.order_id) {
            Some(entry) => {
                if !undo.orders.contains_key(&e.order_id) {
                    undo.orders.insert(
                        e.order_id.clone(),
                        Some((entry.committed.clone(), entry.state.clone())),
                    );
                }
                entry.state.apply(&stored);
            }
            None => {
                undo.orders.insert(e.order_id.clone(), None);
                let entry = match lookup.order_state(&e.order_id)? {
                    Some(mut state) => {
                        let committed = Some(IndexEntry::of(&state));
                        state.apply(&stored);
                        OrderEntry { committed, state }
                    }
                    None => {
                        self.stats.orders += 1;
                        OrderEntry {
                            committed: None,
                            state: OrderState::new(&stored),
                        }
                    }
                };
                self.orders.insert(e.order_id.clone(), entry);
            }
        }
        self.stats.events += 1;
        self.stats.last_lsn = stored.lsn;
        self.next_lsn = Lsn(stored.lsn.0 + 1);
        self.event_ids
            .insert(stored.event.event_id.clone(), self.new_events.len());
        self.new_events.push(stored);
        Ok(())
    }

    /// Adds a record of a new epoch starting at the next LSN.
    pub fn plan_epoch(&mut self, epoch: u64) -> Lsn {
        let start = self.next_lsn;
        self.ops.push(Op::Put(
            Cf::Meta,
            keys::meta_epoch(epoch),
            codec::encode_epoch_start(start),
        ));
        start
    }

    /// The group's operations (the orders' final states, status index moves and stats included), the
    /// stats after it, and what it writes (its new events in LSN order among them).
    pub fn finish(mut self) -> (Vec<Op>, Stats, Written) {
        for (order_id, entry) in &self.orders {
            let status = entry.state.status.value;
            let carrier = entry.state.carrier.as_ref().map(|c| c.value.as_str());
            let unchanged = entry
                .committed
                .as_ref()
                .is_some_and(|c| c.status == status && c.carrier.as_deref() == carrier);
            if !unchanged {
                // A carrier change alone deletes and puts the same key: the writer keeps the two
                // in this order (a stable sort), and a put after a single delete keeps its
                // contract (at most one put between single deletes).
                if let Some(old) = &entry.committed {
                    *self.stats.orders_in_mut(old.status) -= 1;
                    self.ops
                        .push(Op::Delete(Cf::StatusIndex, old.key(order_id)));
                }
                *self.stats.orders_in_mut(status) += 1;
                self.ops.push(Op::Put(
                    Cf::StatusIndex,
                    keys::status_index(status, order_id),
                    codec::encode_status_entry(carrier),
                ));
            }
            self.ops.push(Op::Put(
                Cf::Orders,
                order_id.as_bytes().to_vec(),
                codec::encode_state(&entry.state),
            ));
        }
        self.ops.push(Op::Put(
            Cf::Meta,
            keys::META_STATS.to_vec(),
            codec::encode_stats(&self.stats),
        ));
        let written = Written {
            new_events: self.new_events,
            event_ids: self.event_ids,
            orders: self.orders,
        };
        (self.ops, self.stats, written)
    }
}

/// What a finished group writes, readable before it is committed: the writer plans the next group
/// while this one is written and synced, and that plan must see this group's events and order
/// states (see [`Unwritten`]).
#[derive(Debug)]
pub struct Written {
    new_events: Vec<StoredEvent>,
    /// Event id → index in `new_events`.
    event_ids: HashMap<String, usize>,
    orders: HashMap<String, OrderEntry>,
}

impl Written {
    /// The new events, in LSN order.
    pub fn events(&self) -> &[StoredEvent] {
        &self.new_events
    }

    pub fn contains_event_id(&self, event_id: &str) -> bool {
        self.event_ids.contains_key(event_id)
    }

    pub fn contains_order(&self, order_id: &str) -> bool {
        self.orders.contains_key(order_id)
    }
}

/// The store as it will be once `pending` (a finished group not yet committed, if any) is: its
/// events and order states first, then `committed`. Reading `committed` while `pending` is being
/// written is consistent either way: `pending` holds the same values for every key it writes, and
/// keys it does not write are not changed by it.
#[derive(Debug)]
pub struct Unwritten<'a, L> {
    pub pending: Option<&'a Written>,
    pub committed: &'a L,
}

impl<L: Lookup> Lookup for Unwritten<'_, L> {
    fn event_id_lsn(&self, event_id: &str) -> Result<Option<Lsn>> {
        if let Some(w) = self.pending
            && let Some(&i) = w.event_ids.get(event_id)
        {
            return Ok(Some(w.new_events[i].lsn));
        }
        self.committed.event_id_lsn(event_id)
    }

    fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>> {
        if let Some(w) = self.pending
            && let Ok(i) = w.new_events.binary_search_by_key(&lsn, |e| e.lsn)
        {
            return Ok(Some(w.new_events[i].clone()));
        }
        self.committed.event(lsn)
    }

    fn order_state(&self, order_id: &str) -> Result<Option<OrderState>> {
        if let Some(w) = self.pending
            && let Some(entry) = w.orders.get(order_id)
        {
            return Ok(Some(entry.state.clone()));
        }
        self.committed.order_state(order_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The committed store as plain maps, fed by applying finished plans.
    #[derive(Default)]
    struct MapStore(HashMap<Cf, BTreeMap<Vec<u8>, Vec<u8>>>);

    impl MapStore {
        /// Applies `ops` in the writer's order (`writer::in_key_order`: a stable sort), and checks
        /// the single-delete contract of the status index: a put only where no entry is, a delete
        /// only of an entry.
        fn apply(&mut self, ops: Vec<Op>) {
            for op in crate::writer::in_key_order(ops) {
                match op {
                    Op::Put(cf, k, v) => {
                        let old = self.0.entry(cf).or_default().insert(k, v);
                        assert!(
                            cf != Cf::StatusIndex || old.is_none(),
                            "a second put of a status index entry"
                        );
                    }
                    Op::Delete(cf, k) => {
                        let old = self.0.entry(cf).or_default().remove(&k);
                        assert!(
                            cf != Cf::StatusIndex || old.is_some(),
                            "a single delete of a missing status index entry"
                        );
                    }
                }
            }
        }
        fn get(&self, cf: Cf, k: &[u8]) -> Option<&Vec<u8>> {
            self.0.get(&cf).and_then(|m| m.get(k))
        }
    }

    impl Lookup for MapStore {
        fn event_id_lsn(&self, id: &str) -> Result<Option<Lsn>> {
            Ok(self
                .get(Cf::EventIds, id.as_bytes())
                .map(|v| codec::decode_event_id_entry(v))
                .transpose()?)
        }
        fn event(&self, lsn: Lsn) -> Result<Option<StoredEvent>> {
            Ok(self
                .get(Cf::Log, &keys::log(lsn))
                .map(|v| codec::decode_event(v))
                .transpose()?)
        }
        fn order_state(&self, id: &str) -> Result<Option<OrderState>> {
            Ok(self
                .get(Cf::Orders, id.as_bytes())
                .map(|v| codec::decode_state(v))
                .transpose()?)
        }
    }

    fn event(id: &str, order: &str, status: Status, at: i64) -> Event {
        Event {
            event_id: id.into(),
            order_id: order.into(),
            status,
            occurred_at: Timestamp::from_millis(at).expect("in range"),
            source: None,
            carrier: None,
            reason: None,
            location: None,
            eta: None,
            attributes: None,
        }
    }

    const T: Timestamp = Timestamp::MIN;

    #[test]
    fn duplicates_inside_a_request_and_across_groups_get_the_original_lsn() {
        let mut store = MapStore::default();
        let mut plan = GroupPlan::new(Stats::default());
        let a = event("a", "o1", Status::Created, 10);
        let out = plan
            .plan_append(&store, vec![a.clone(), a.clone()], T)
            .expect("valid");
        assert_eq!(
            out,
            vec![Outcome::Created(Lsn(1)), Outcome::Duplicate(Lsn(1))]
        );
        let (ops, stats, _) = plan.finish();
        store.apply(ops);
        assert_eq!((stats.events, stats.orders, stats.last_lsn), (1, 1, Lsn(1)));

        let mut plan = GroupPlan::new(stats);
        let out = plan
            .plan_append(&store, vec![a, event("b", "o1", Status::Picked, 20)], T)
            .expect("valid");
        assert_eq!(
            out,
            vec![Outcome::Duplicate(Lsn(1)), Outcome::Created(Lsn(2))]
        );
    }

    #[test]
    fn a_conflict_rolls_back_the_whole_request_but_not_the_group() {
        let store = MapStore::default();
        let mut plan = GroupPlan::new(Stats::default());
        plan.plan_append(&store, vec![event("a", "o1", Status::Created, 10)], T)
            .expect("valid");
        let err = plan
            .plan_append(
                &store,
                vec![
                    event("b", "o1", Status::Delivered, 30),
                    event("a", "o1", Status::Picked, 10),
                ],
                T,
            )
            .expect_err("conflict");
        assert!(
            matches!(
                err,
                Error::Conflict {
                    index: 1,
                    lsn: Lsn(1),
                    ..
                }
            ),
            "{err:?}"
        );
        let out = plan
            .plan_append(&store, vec![event("c", "o2", Status::Created, 5)], T)
            .expect("valid");
        assert_eq!(
            out,
            vec![Outcome::Created(Lsn(2))],
            "LSN 2 was released by the failed request"
        );
        let (ops, stats, written) = plan.finish();
        assert_eq!(
            written
                .events()
                .iter()
                .map(|e| e.event.event_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(stats.orders_in(Status::Created), 2);
        assert_eq!(stats.orders_in(Status::Delivered), 0);
        let mut store = store;
        store.apply(ops);
        assert!(
            store.get(Cf::EventIds, b"b").is_none(),
            "no trace of the failed request's event"
        );
        assert_eq!(store.0[&Cf::ByOrder].len(), 2);
        assert_eq!(store.0[&Cf::ByTime].len(), 2);
        let at_2 = codec::decode_event(&store.0[&Cf::Log][&keys::log(Lsn(2)).to_vec()])
            .map(|e| e.event.event_id);
        assert_eq!(at_2, Ok("c".to_owned()));
    }

    #[test]
    fn status_index_moves_once_per_group() {
        let mut store = MapStore::default();
        let mut plan = GroupPlan::new(Stats::default());
        plan.plan_append(&store, vec![event("a", "o1", Status::Created, 10)], T)
            .expect("valid");
        let (ops, stats, _) = plan.finish();
        store.apply(ops);
        let mut plan = GroupPlan::new(stats);
        plan.plan_append(
            &store,
            vec![
                event("b", "o1", Status::Picked, 20),
                event("c", "o1", Status::Delivered, 30),
            ],
            T,
        )
        .expect("valid");
        let (ops, stats, _) = plan.finish();
        let moves: Vec<_> = ops
            .iter()
            .filter(|op| {
                matches!(
                    op,
                    Op::Put(Cf::StatusIndex, ..) | Op::Delete(Cf::StatusIndex, _)
                )
            })
            .collect();
        assert_eq!(moves.len(), 2, "{moves:?}");
        store.apply(ops);
        assert!(
            store
                .get(
                    Cf::StatusIndex,
                    &keys::status_index(Status::Delivered, "o1")
                )
                .is_some()
        );
        assert!(
            store
                .get(Cf::StatusIndex, &keys::status_index(Status::Created, "o1"))
                .is_none()
        );
        assert_eq!(
            (
                stats.orders_in(Status::Delivered),
                stats.orders_in(Status::Created)
            ),
            (1, 0)
        );
    }

    #[test]
    fn the_status_index_records_the_carrier_and_follows_its_changes() {
        let with_carrier = |id: &str, status, at, carrier: Option<&str>| Event {
            carrier: carrier.map(str::to_owned),
            ..event(id, "o1", status, at)
        };
        let index_ops = |ops: &[Op]| -> Vec<Op> {
            ops.iter()
                .filter(|op| {
                    matches!(
                        op,
                        Op::Put(Cf::StatusIndex, ..) | Op::Delete(Cf::StatusIndex, _)
                    )
                })
                .cloned()
                .collect()
        };
        let key = keys::status_index(Status::Picked, "o1");
        let mut store = MapStore::default();
        let mut stats = Stats::default();
        // (event, the index operations its group must plan)
        let steps = [
            // A new order: a put, with its carrier.
            (
                with_carrier("a", Status::Picked, 10, Some("dpd")),
                vec![Op::Put(
                    Cf::StatusIndex,
                    key.clone(),
                    codec::encode_status_entry(Some("dpd")),
                )],
            ),
            // The carrier changes, the status does not: a delete, then a put of the same key.
            (
                with_carrier("b", Status::Picked, 20, Some("ups")),
                vec![
                    Op::Delete(Cf::StatusIndex, key.clone()),
                    Op::Put(
                        Cf::StatusIndex,
                        key.clone(),
                        codec::encode_status_entry(Some("ups")),
                    ),
                ],
            ),
            // Neither changes (no carrier given keeps the last one): nothing.
            (with_carrier("c", Status::Picked, 30, None), vec![]),
            // A late event with another carrier does not change the state's carrier: nothing.
            (with_carrier("d", Status::Picked, 5, Some("dhl")), vec![]),
        ];
        for (event, want) in steps {
            let mut plan = GroupPlan::new(stats);
            plan.plan_append(&store, vec![event], T).expect("valid");
            let (ops, after, _) = plan.finish();
            assert_eq!(index_ops(&ops), want);
            store.apply(ops);
            stats = after;
            assert_eq!(stats.orders_in(Status::Picked), 1);
        }
        assert_eq!(
            store.get(Cf::StatusIndex, &key),
            Some(&codec::encode_status_entry(Some("ups")))
        );
    }

    /// Groups of requests over few orders and event ids: duplicates of earlier groups' events,
    /// conflicts, status moves forward and back, new and known orders.
    fn requests(group: u64) -> Vec<Vec<Event>> {
        let statuses = [Status::Created, Status::Picked, Status::Delivered];
        (0..4)
            .map(|r| {
                (0..3)
                    .map(|i| {
                        let n = group * 7 + r * 3 + i;
                        let id = format!("e{}", n % 19);
                        // The same id keeps the same event, except every 11th, a conflict.
                        let key = n % 19 + if n.is_multiple_of(11) { 100 } else { 0 };
                        // Carriers change with and without the status (and some events name none).
                        let carrier = ["dpd", "ups", ""][(key % 4 % 3) as usize];
                        Event {
                            carrier: (!carrier.is_empty()).then(|| carrier.to_owned()),
                            ..event(
                                &id,
                                &format!("o{}", key % 5),
                                statuses[(key % 3) as usize],
                                key as i64,
                            )
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn plan_group(
        plan: &mut GroupPlan,
        lookup: &impl Lookup,
        group: u64,
    ) -> Vec<std::result::Result<Vec<Outcome>, String>> {
        requests(group)
            .into_iter()
            .map(|events| {
                plan.plan_append(lookup, events, T)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    /// The ops as a comparable set: orders come out of a `HashMap`, in no fixed order.
    fn in_any_order(ops: &[Op]) -> Vec<String> {
        let mut ops: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
        ops.sort();
        ops
    }

    /// The writer plans a group while the previous one is still being written: planned over
    /// `Unwritten`, each group must decide and write exactly what it would after the previous
    /// group's commit.
    #[test]
    fn a_group_planned_over_the_unwritten_previous_group_equals_one_planned_after_it() {
        const GROUPS: u64 = 12;
        let mut after = MapStore::default();
        let mut stats = Stats::default();
        let mut outcomes_after = Vec::new();
        let mut ops_after = Vec::new();
        for group in 0..GROUPS {
            let mut plan = GroupPlan::new(stats);
            outcomes_after.push(plan_group(&mut plan, &after, group));
            let (ops, s, _) = plan.finish();
            ops_after.push(in_any_order(&ops));
            after.apply(ops);
            stats = s;
        }

        let mut over = MapStore::default();
        let mut stats = Stats::default();
        let mut pending: Option<(Vec<Op>, Written)> = None;
        for group in 0..GROUPS {
            let mut plan = GroupPlan::new(stats);
            let lookup = Unwritten {
                pending: pending.as_ref().map(|(_, w)| w),
                committed: &over,
            };
            let outcomes = plan_group(&mut plan, &lookup, group);
            assert_eq!(outcomes, outcomes_after[group as usize], "group {group}");
            let (ops, s, written) = plan.finish();
            assert_eq!(
                in_any_order(&ops),
                ops_after[group as usize],
                "group {group}"
            );
            if let Some((previous, _)) = pending.replace((ops, written)) {
                over.apply(previous);
            }
            stats = s;
        }
        over.apply(pending.expect("the last group").0);
        assert_eq!(over.0, after.0);
        assert!(
            outcomes_after.iter().flatten().any(|o| o
                .as_ref()
                .is_ok_and(|o| o.iter().any(|o| matches!(o, Outcome::Duplicate(_))))),
            "the groups hold duplicates"
        );
        assert!(
            outcomes_after.iter().flatten().any(Result::is_err),
            "and conflicts"
        );
    }

    #[test]
    fn replicated_entries_must_continue_the_log() {
        let store = MapStore::default();
        let mut plan = GroupPlan::new(Stats::default());
        let entry = |lsn, id: &str| {
            LogEntry::Event(StoredEvent {
                lsn: Lsn(lsn),
                received_at: T,
                event: event(id, "o", Status::Created, 1),
            })
        };
        assert!(matches!(
            plan.plan_replicated(&store, vec![entry(2, "x")]),
            Err(Error::Diverged(_))
        ));
        plan.plan_replicated(&store, vec![entry(1, "x"), entry(2, "y")])
            .expect("continues");
        assert!(matches!(
            plan.plan_replicated(&store, vec![entry(3, "z"), entry(4, "x")]),
            Err(Error::Diverged(_))
        ));
        assert_eq!(
            plan.event_count(),
            2,
            "the failed batch left nothing behind"
        );
    }
}
