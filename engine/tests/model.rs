//! Model-based test: random sequences of appends (with duplicates, conflicts, out-of-order event
//! times), erasures, retention steps (the cutoff is the test's fake clock) and reopens, run against
//! the engine and against a trivially correct in-memory model; after every step every query is
//! compared, paging through all results with small random page sizes.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use trackstore_engine::{
    Direction, Engine, EngineOptions, Error, Event, InMemory, LogEntry, Lsn, OrderState, Outcome,
    Status, StoredEvent, TimeRange, Timestamp, codec,
};

const BASE_MS: i64 = 1_700_000_000_000;
const CARRIERS: [&str; 3] = ["van-1", "van-2", "dhl"];

/// The event an (id, variant) pair stands for: the same pair is always the same content (a retry),
/// another variant of an id is different content under the same id (a conflict).
fn event_for(id: u8, variant: u8) -> Event {
    let (i, v) = (u64::from(id), u64::from(variant));
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    Event {
        event_id: format!("e-{id}"),
        order_id: format!("o-{}", h % 6),
        status: Status::ALL[(h >> 8) as usize % 12],
        // Few distinct times, so ties on occurred_at (broken by LSN) are common.
        occurred_at: Timestamp::from_millis(BASE_MS + ((h >> 16) % 20) as i64 * 1_000)
            .expect("in range"),
        source: None,
        carrier: match (h >> 24) % 4 {
            3 => None,
            c => Some(CARRIERS[c as usize].to_owned()),
        },
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<(u8, u8)>),
    /// Requests submitted back to back without waiting, so that they share group commits.
    Concurrent(Vec<Vec<(u8, u8)>>),
    Reopen,
    /// Flush every memtable and compact every family fully: the status index's single deletes meet
    /// their puts (and, in a store reopened from the WAL, each other's older entries).
    Compact,
    /// Erase order `o-N`.
    Erase(u8),
    /// One retention step: at most `max` events that occurred before second `before`.
    Expire {
        before: u8,
        max: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let spec = (0u8..40, prop_oneof![8 => Just(0u8), 1 => Just(1u8)]);
    // Large requests read their lookups in a batch first (the writer's prefetch, from 16 events).
    let request = prop_oneof![
        3 => proptest::collection::vec(spec.clone(), 1..8),
        1 => proptest::collection::vec(spec, 16..30),
    ];
    prop_oneof![
        8 => request.clone().prop_map(Op::Append),
        3 => proptest::collection::vec(request, 2..8).prop_map(Op::Concurrent),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
        1 => (0u8..7).prop_map(Op::Erase),
        1 => (0u8..21, 1u8..6).prop_map(|(before, max)| Op::Expire { before, max }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Event(Event),
    /// A removed event.
    Tombstone,
    /// A removal and the LSNs it removed.
    Removal(Vec<Lsn>),
}

#[derive(Default)]
struct Model {
    /// Index i holds the entry of LSN i + 1.
    log: Vec<Entry>,
    ids: HashMap<String, Lsn>,
    /// The log's first LSN - 1: removals drop the prefix of tombstones and removals.
    trimmed: usize,
}

impl Model {
    /// What the engine must answer to an append request.
    fn append(&mut self, events: &[Event]) -> Result<Vec<Outcome>, usize> {
        let mut staged: Vec<Event> = Vec::new();
        let mut outcomes = Vec::new();
        for (index, e) in events.iter().enumerate() {
            let existing = self
                .ids
                .get(&e.event_id)
                .map(|l| match &self.log[l.0 as usize - 1] {
                    Entry::Event(e) => (*l, e),
                    other => panic!("event id points to {other:?}"),
                })
                .or_else(|| {
                    staged
                        .iter()
                        .position(|s| s.event_id == e.event_id)
                        .map(|p| (Lsn((self.log.len() + p + 1) as u64), &staged[p]))
                });
            match existing {
                Some((lsn, prior)) if prior == e => outcomes.push(Outcome::Duplicate(lsn)),
                Some(_) => return Err(index),
                None => {
                    outcomes.push(Outcome::Created(Lsn(
                        (self.log.len() + staged.len() + 1) as u64
                    )));
                    staged.push(e.clone());
                }
            }
        }
        for e in staged {
            self.ids
                .insert(e.event_id.clone(), Lsn(self.log.len() as u64 + 1));
            self.log.push(Entry::Event(e));
        }
        Ok(outcomes)
    }

    /// Removes the events at `lsns` with a removal entry; None when there is nothing to remove.
    fn remove(&mut self, mut lsns: Vec<Lsn>) -> Option<Lsn> {
        if lsns.is_empty() {
            return None;
        }
        lsns.sort();
        for l in &lsns {
            let slot = &mut self.log[l.0 as usize - 1];
            if let Entry::Event(e) = slot {
                self.ids.remove(&e.event_id);
            }
            *slot = Entry::Tombstone;
        }
        self.log.push(Entry::Removal(lsns));
        // The log then starts at its first event, or at its last entry when no event is left.
        while self.trimmed + 1 < self.log.len()
            && !matches!(self.log[self.trimmed], Entry::Event(_))
        {
            self.trimmed += 1;
        }
        Some(Lsn(self.log.len() as u64))
    }

    fn erase(&mut self, order_id: &str) -> Option<Lsn> {
        let lsns = self
            .events()
            .filter(|(_, e)| e.order_id == order_id)
            .map(|(l, _)| l)
            .collect();
        self.remove(lsns)
    }

    fn expire(&mut self, before: Timestamp, max: usize) -> Option<Lsn> {
        let mut old: Vec<(Timestamp, Lsn)> = self
            .events()
            .filter(|(_, e)| e.occurred_at < before)
            .map(|(l, e)| (e.occurred_at, l))
            .collect();
        old.sort();
        self.remove(old.into_iter().take(max).map(|(_, l)| l).collect())
    }

    fn events(&self) -> impl Iterator<Item = (Lsn, &Event)> {
        self.log.iter().enumerate().filter_map(|(i, e)| match e {
            Entry::Event(e) => Some((Lsn(i as u64 + 1), e)),
            _ => None,
        })
    }

    fn timeline(&self, order_id: &str) -> Vec<(Lsn, Event)> {
        let mut v: Vec<_> = self
            .events()
            .filter(|(_, e)| e.order_id == order_id)
            .map(|(l, e)| (l, e.clone()))
            .collect();
        v.sort_by_key(|(l, e)| (e.occurred_at, *l));
        v
    }

    /// (status, carrier, event_count, last_lsn) recomputed from scratch.
    fn state(&self, order_id: &str) -> Option<(Status, Option<String>, u64, Lsn)> {
        let t = self.timeline(order_id);
        let (_, newest) = t.last()?;
        let carrier = t.iter().rev().find_map(|(_, e)| e.carrier.clone());
        let last_lsn = t.iter().map(|(l, _)| *l).max()?;
        Some((newest.status, carrier, t.len() as u64, last_lsn))
    }

    fn orders(&self) -> BTreeMap<String, (Status, Option<String>, u64, Lsn)> {
        let ids: std::collections::BTreeSet<_> =
            self.events().map(|(_, e)| e.order_id.clone()).collect();
        ids.into_iter()
            .map(|id| {
                let s = self.state(&id).expect("order has events");
                (id, s)
            })
            .collect()
    }
}

fn state_tuple(s: &OrderState) -> (Status, Option<String>, u64, Lsn) {
    (
        s.status.value,
        s.carrier.as_ref().map(|c| c.value.clone()),
        s.event_count,
        s.last_lsn,
    )
}

fn strip(events: Vec<StoredEvent>) -> Vec<(Lsn, Event)> {
    events.into_iter().map(|s| (s.lsn, s.event)).collect()
}

fn all_pages<T>(
    mut page: impl FnMut(Option<&str>) -> trackstore_engine::Result<trackstore_engine::Page<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1_000 {
        let p = page(cursor.as_deref()).expect("query");
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

fn check_all(engine: &Engine, model: &Model, page_size: usize) {
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    let live = model.events().count() as u64;
    assert_eq!(report.events, live);
    // Log: events, tombstones and removals, gap-free.
    let log = engine.read_log(Lsn(1), 10_000).expect("read_log");
    let got: Vec<(Lsn, Entry)> = log
        .iter()
        .map(|e| {
            let entry = match e {
                LogEntry::Event(s) => Entry::Event(s.event.clone()),
                LogEntry::Erased { .. } => Entry::Tombstone,
                LogEntry::Removal(r) => Entry::Removal(r.lsns.clone()),
            };
            (e.lsn(), entry)
        })
        .collect();
    let want: Vec<(Lsn, Entry)> = model
        .log
        .iter()
        .enumerate()
        .skip(model.trimmed)
        .map(|(i, e)| (Lsn(i as u64 + 1), e.clone()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(engine.first_lsn(), Lsn(model.trimmed as u64 + 1));
    // The log as stored (what replication ships undecoded): the same entries, byte for byte, from
    // any LSN, with the byte bound stopping after the entry that reaches it.
    let encoded: Vec<(Lsn, Vec<u8>)> = log
        .iter()
        .map(|e| (e.lsn(), codec::encode_log_entry(e)))
        .collect();
    for skip in [0, encoded.len() / 2, encoded.len().saturating_sub(1)] {
        let from = encoded.get(skip).map_or(Lsn(1), |(lsn, _)| *lsn);
        let read = engine
            .read_log_encoded(from, 10_000, usize::MAX)
            .expect("read_log_encoded");
        assert_eq!(read, encoded[skip..], "encoded log from {from}");
        match engine
            .read_log_encoded_in_memory(from, 10_000, usize::MAX)
            .expect("read_log_encoded_in_memory")
        {
            InMemory::Answered(r) => assert_eq!(r, read, "in-memory encoded log from {from}"),
            InMemory::NeedsDisk => {}
        }
        if let Some((_, first)) = encoded.get(skip) {
            let bounded = engine
                .read_log_encoded(from, 10_000, first.len())
                .expect("read_log_encoded");
            assert_eq!(bounded, encoded[skip..skip + 1], "bounded by bytes");
            let two = engine.read_log_encoded(from, 2, usize::MAX).expect("read");
            assert_eq!(two, encoded[skip..(skip + 2).min(encoded.len())], "two");
        }
    }
    let log: Vec<StoredEvent> = log.into_iter().filter_map(LogEntry::into_event).collect();
    // Stats.
    let stats = engine.stats();
    let orders = model.orders();
    assert_eq!(stats.events, live);
    assert_eq!(stats.last_lsn, Lsn(model.log.len() as u64));
    assert_eq!(stats.orders, orders.len() as u64);
    for status in Status::ALL {
        assert_eq!(
            stats.orders_in(status),
            orders.values().filter(|s| s.0 == status).count() as u64,
            "{status}"
        );
    }
    // Order states and timelines.
    for o in 0..6 {
        let id = format!("o-{o}");
        let got = engine.order_state(&id).expect("order_state");
        // The memory-only read answers the same (the store is in memory after the full read), or
        // nothing at all.
        match engine
            .order_state_in_memory(&id)
            .expect("order_state_in_memory")
        {
            InMemory::Answered(s) => assert_eq!(s, got, "in-memory state of {id}"),
            InMemory::NeedsDisk => {}
        }
        assert_eq!(
            got.as_ref().map(state_tuple),
            model.state(&id),
            "state of {id}"
        );
        if let Some(s) = got {
            let last = log
                .iter()
                .find(|e| e.lsn == s.last_lsn)
                .expect("last event in log");
            assert_eq!(s.updated_at, last.received_at);
        }
        let want = model.timeline(&id);
        let asc = all_pages(|c| engine.order_timeline(&id, Direction::Asc, page_size, c));
        assert_eq!(strip(asc), want, "timeline asc of {id}");
        let desc = all_pages(|c| engine.order_timeline(&id, Direction::Desc, page_size, c));
        assert_eq!(
            strip(desc),
            want.into_iter().rev().collect::<Vec<_>>(),
            "timeline desc of {id}"
        );
        for direction in [Direction::Asc, Direction::Desc] {
            let full = engine
                .order_timeline(&id, direction, page_size, None)
                .expect("timeline");
            match engine
                .order_timeline_in_memory(&id, direction, page_size, None)
                .expect("timeline in memory")
            {
                InMemory::Answered(page) => assert_eq!(page, full, "in-memory timeline of {id}"),
                InMemory::NeedsDisk => {}
            }
        }
    }
    // Orders by status, with and without a carrier filter.
    for status in Status::ALL {
        for carrier in [None, Some("van-1")] {
            let got: Vec<_> = all_pages(|c| engine.orders_in_status(status, carrier, page_size, c))
                .iter()
                .map(|s| (s.order_id.clone(), state_tuple(s)))
                .collect();
            let want: Vec<_> = orders
                .iter()
                .filter(|(_, s)| s.0 == status && carrier.is_none_or(|c| s.1.as_deref() == Some(c)))
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect();
            assert_eq!(got, want, "orders in {status} carrier {carrier:?}");
        }
    }
    // Time ranges with filters.
    let t = |s: i64| Timestamp::from_millis(BASE_MS + s * 1_000).expect("in range");
    let ranges = [
        TimeRange {
            from: t(0),
            to: t(20),
            statuses: vec![],
            carrier: None,
        },
        TimeRange {
            from: t(3),
            to: t(9),
            statuses: vec![],
            carrier: None,
        },
        TimeRange {
            from: t(0),
            to: t(20),
            statuses: vec![Status::Created, Status::Delivered],
            carrier: None,
        },
        TimeRange {
            from: t(5),
            to: t(15),
            statuses: vec![],
            carrier: Some("dhl".into()),
        },
        TimeRange {
            from: t(7),
            to: t(7),
            statuses: vec![],
            carrier: None,
        },
    ];
    for q in ranges {
        let got = strip(all_pages(|c| engine.time_range(&q, page_size, c)));
        let mut want: Vec<_> = model
            .events()
            .filter(|(_, e)| e.occurred_at >= q.from && e.occurred_at < q.to)
            .filter(|(_, e)| q.statuses.is_empty() || q.statuses.contains(&e.status))
            .filter(|(_, e)| q.carrier.is_none() || e.carrier == q.carrier)
            .map(|(l, e)| (l, e.clone()))
            .collect();
        want.sort_by_key(|(l, e)| (e.occurred_at, *l));
        assert_eq!(got, want, "{q:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..25), page_size in 1usize..5) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut engine = Some(Engine::open(dir.path(), EngineOptions::default()).expect("open"));
        let mut model = Model::default();
        for op in ops {
            match op {
                Op::Append(specs) => {
                    let events: Vec<Event> = specs.iter().map(|(id, v)| event_for(*id, *v)).collect();
                    let want = model.append(&events);
                    let got = engine.as_ref().expect("open").append(events);
                    match (want, got) {
                        (Ok(w), Ok(g)) => prop_assert_eq!(w, g),
                        (Err(index), Err(Error::Conflict { index: i, .. })) => prop_assert_eq!(index, i),
                        (w, g) => prop_assert!(false, "model {:?} engine {:?}", w, g),
                    }
                }
                Op::Concurrent(requests) => {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    let engine_ref = engine.as_ref().expect("open");
                    for (i, specs) in requests.iter().enumerate() {
                        let events: Vec<Event> = specs.iter().map(|(id, v)| event_for(*id, *v)).collect();
                        let tx = tx.clone();
                        engine_ref.submit_append(events, move |r| { let _ = tx.send((i, r)); }).expect("queued");
                    }
                    drop(tx);
                    let mut replies: Vec<_> = rx.iter().collect();
                    replies.sort_by_key(|(i, _)| *i);
                    prop_assert_eq!(replies.len(), requests.len());
                    for ((_, got), specs) in replies.into_iter().zip(&requests) {
                        let events: Vec<Event> = specs.iter().map(|(id, v)| event_for(*id, *v)).collect();
                        match (model.append(&events), got) {
                            (Ok(w), Ok(g)) => prop_assert_eq!(w, g),
                            (Err(index), Err(Error::Conflict { index: i, .. })) => prop_assert_eq!(index, i),
                            (w, g) => prop_assert!(false, "model {:?} engine {:?}", w, g),
                        }
                    }
                }
                Op::Reopen => {
                    drop(engine.take());
                    engine = Some(Engine::open(dir.path(), EngineOptions::default()).expect("reopen"));
                }
                Op::Compact => {
                    let e = engine.as_ref().expect("open");
                    e.flush().expect("flush");
                    e.compact().expect("compact");
                    // A failed compaction poisons the store without `compact` saying so.
                    e.flush().expect("no background error after the compaction");
                }
                Op::Erase(o) => {
                    let order_id = format!("o-{o}");
                    let want = model.erase(&order_id);
                    let got = engine.as_ref().expect("open").erase_order(&order_id).expect("erase");
                    prop_assert_eq!(got.as_ref().map(|r| r.lsn), want);
                    if let Some(receipt) = got {
                        let record = engine.as_ref().expect("open").erasure_record(receipt.lsn)
                            .expect("record").expect("an erasure leaves a record");
                        prop_assert!(record.is_of(&order_id));
                        prop_assert!(!record.is_of("o-9"));
                    }
                }
                Op::Expire { before, max } => {
                    let before = Timestamp::from_millis(BASE_MS + i64::from(before) * 1_000).expect("in range");
                    let want = model.expire(before, usize::from(max));
                    let got = engine.as_ref().expect("open").expire_before(before, usize::from(max)).expect("expire");
                    prop_assert_eq!(got.lsn, want);
                }
            }
            check_all(engine.as_ref().expect("open"), &model, page_size);
        }
    }
}

/// A tampered cursor, or one from another query, is refused and names the problem.
#[test]
fn cursors_refuse_tampering_and_other_queries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let events: Vec<Event> = (0..40).map(|i| event_for(i, 0)).collect();
    engine.append(events).expect("append");
    let order = engine.read_log(Lsn(1), 1).expect("log")[0]
        .as_event()
        .expect("an event")
        .event
        .order_id
        .clone();
    let page = engine
        .order_timeline(&order, Direction::Asc, 1, None)
        .expect("page");
    let cursor = page.next_cursor.expect("more than one event");
    let mut tampered = cursor.clone().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    for (c, order, dir) in [
        (tampered.as_str(), order.as_str(), Direction::Asc),
        (cursor.as_str(), "o-other", Direction::Asc),
        (cursor.as_str(), order.as_str(), Direction::Desc),
        ("garbage!", order.as_str(), Direction::Asc),
    ] {
        let err = engine
            .order_timeline(order, dir, 1, Some(c))
            .expect_err("refused");
        assert!(matches!(err, Error::Cursor(_)), "{err:?}");
        assert!(err.to_string().contains("invalid cursor"), "{err}");
    }
    let range = TimeRange {
        from: Timestamp::MIN,
        to: Timestamp::MAX,
        statuses: vec![],
        carrier: None,
    };
    assert!(matches!(
        engine.time_range(&range, 1, Some(&cursor)),
        Err(Error::Cursor(_))
    ));
    // Cursors survive a reopen: the key is stored.
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    assert!(
        engine
            .order_timeline(&order, Direction::Asc, 1, Some(&cursor))
            .is_ok()
    );
}

/// Timelines of orders whose ids share prefixes (`a`, `a-`, `a-b`, `a0`), with each order's events
/// spread over several SST files, compacted levels and the memtable: the `by_order` prefix Bloom
/// filter must skip only files without the order, and a seek must never run into the next order.
#[test]
fn timelines_of_orders_sharing_id_prefixes_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let orders = ["a", "a-", "a-b", "a0", "b", "a.", "a:"];
    let mut model: BTreeMap<&str, Vec<(Timestamp, u64)>> = BTreeMap::new();
    let mut n = 0u64;
    for round in 0..6u64 {
        // Some orders get events in only some files.
        let mut events = Vec::new();
        for (k, order) in orders.iter().enumerate() {
            if (round + k as u64).is_multiple_of(3) {
                continue;
            }
            for _ in 0..3 {
                n += 1;
                let at = Timestamp::from_millis(BASE_MS + ((n * 7_919) % 50) as i64 * 1_000)
                    .expect("in range");
                events.push(Event {
                    event_id: format!("p-{n}"),
                    order_id: (*order).to_owned(),
                    status: Status::ALL[(n % 12) as usize],
                    occurred_at: at,
                    ..event_for(0, 0)
                });
            }
        }
        let outcomes = engine.append(events.clone()).expect("append");
        for (e, o) in events.iter().zip(outcomes) {
            model
                .entry(orders.iter().find(|x| **x == e.order_id).expect("known"))
                .or_default()
                .push((e.occurred_at, o.lsn().0));
        }
        match round {
            2 => engine.compact().expect("compact"),
            5 => {} // the last round stays in the memtable
            _ => engine.flush().expect("flush"),
        }
    }
    for (order, want) in &mut model {
        want.sort();
        for (dir, page_size) in [
            (Direction::Asc, 1),
            (Direction::Asc, 4),
            (Direction::Desc, 3),
        ] {
            let got: Vec<(Timestamp, u64)> =
                all_pages(|c| engine.order_timeline(order, dir, page_size, c))
                    .into_iter()
                    .map(|e| {
                        assert_eq!(e.event.order_id, *order);
                        (e.event.occurred_at, e.lsn.0)
                    })
                    .collect();
            let mut want = want.clone();
            if dir == Direction::Desc {
                want.reverse();
            }
            assert_eq!(got, want, "order {order:?} {dir:?} pages of {page_size}");
        }
    }
    assert!(
        engine
            .order_timeline("a-c", Direction::Asc, 10, None)
            .expect("empty")
            .items
            .is_empty()
    );
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
}

#[test]
fn memory_only_order_reads_wait_for_the_disk_only_when_the_block_is_not_cached() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let events: Vec<Event> = (0..50)
        .map(|n| Event {
            event_id: format!("m-{n}"),
            order_id: format!("o-{}", n % 5),
            ..event_for(0, 0)
        })
        .collect();
    engine.append(events).expect("append");
    // In the memtable: answered.
    let want = engine.order_state("o-1").expect("read");
    assert!(want.is_some());
    assert_eq!(
        engine.order_state_in_memory("o-1").expect("read"),
        InMemory::Answered(want.clone())
    );
    let log = engine
        .read_log_encoded(Lsn(1), 100, usize::MAX)
        .expect("log");
    assert_eq!(log.len(), 50);
    assert_eq!(
        engine
            .read_log_encoded_in_memory(Lsn(1), 100, usize::MAX)
            .expect("read"),
        InMemory::Answered(log.clone())
    );
    engine.flush().expect("flush");
    engine.close();
    // Reopened: the state is in an SST whose data block no read has cached yet.
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    assert_eq!(
        engine.order_state_in_memory("o-1").expect("read"),
        InMemory::NeedsDisk
    );
    // (The open itself reads the log's last block: the log read is no test of the disk path.)
    assert_eq!(
        engine
            .read_log_encoded(Lsn(1), 100, usize::MAX)
            .expect("read"),
        log
    );
    assert_eq!(
        engine
            .read_log_encoded_in_memory(Lsn(1), 100, usize::MAX)
            .expect("read"),
        InMemory::Answered(log)
    );
    assert_eq!(
        engine
            .order_timeline_in_memory("o-2", Direction::Desc, 3, None)
            .expect("read"),
        InMemory::NeedsDisk
    );
    assert_eq!(engine.order_state("o-1").expect("read"), want);
    assert_eq!(
        engine.order_state_in_memory("o-1").expect("read"),
        InMemory::Answered(want)
    );
    let timeline = |e: &Engine| e.order_timeline_in_memory("o-2", Direction::Desc, 3, None);
    let full = engine
        .order_timeline("o-2", Direction::Desc, 3, None)
        .expect("timeline");
    assert_eq!(full.items.len(), 3);
    assert_eq!(timeline(&engine).expect("read"), InMemory::Answered(full));
    // Bounded work: a page over the in-memory limit is never read in memory.
    assert_eq!(
        engine
            .order_timeline_in_memory("o-2", Direction::Desc, 101, None)
            .expect("read"),
        InMemory::NeedsDisk
    );
    // A missing order is answered too (by the Bloom filter, pinned for L0 files, or the cached block).
    assert_eq!(
        engine.order_state_in_memory("o-9").expect("read"),
        InMemory::Answered(None)
    );
}

#[test]
fn a_memory_only_timeline_gives_up_behind_many_removed_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let events: Vec<Event> = (0..1_500)
        .map(|n| Event {
            event_id: format!("t-{n}"),
            order_id: "erased".to_owned(),
            ..event_for(0, 0)
        })
        .collect();
    engine.append(events).expect("append");
    engine.erase_order("erased").expect("erase").expect("found");
    // 1,500 deletions in the memtable stand before any answer: more than a memory-only read skips.
    assert_eq!(
        engine
            .order_timeline_in_memory("erased", Direction::Asc, 10, None)
            .expect("read"),
        InMemory::NeedsDisk
    );
    let page = engine
        .order_timeline("erased", Direction::Asc, 10, None)
        .expect("read");
    assert!(page.items.is_empty() && page.next_cursor.is_none());
}
