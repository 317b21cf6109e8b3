//! Tests of the engine's replication entry points: a replica applying a primary's log answers every
//! query exactly like the primary; truncating a log equals a store that only ever had the prefix;
//! epochs, fencing and promotion behave as documented and survive reopening; `set_read_only` is a
//! barrier that includes every append queued before it and none after. Removals (erasure,
//! retention) replicate too: a replica that held the removed events removes them, one that catches
//! up later receives tombstones, and both end equal to the primary.
//!
//! Queries are compared through a `Snapshot` of everything a client can read (every paged query
//! read to the end with a small random page size), so "the same answers" means the same for all.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use trackstore_engine::{
    Direction, Durability, Engine, EngineOptions, ErasureRecord, Error, Event, LogEntry, Lsn,
    OrderState, Outcome, Page, Stats, Status, StoredEvent, TimeRange, Timestamp, VerifyReport,
};

const BASE_MS: i64 = 1_700_000_000_000;
const CARRIERS: [&str; 3] = ["van-1", "van-2", "dhl"];
/// `event_for` spreads events over orders `o-0` .. `o-5`; `o-6` never exists (misses must match).
const ORDERS: u64 = 7;

/// The event an (id, variant) pair stands for: the same pair is always the same content (a retry),
/// another variant of an id is different content under the same id (a conflict, or a reuse after
/// truncation). Copied from model.rs so that both tests draw from the same event space.
fn event_for(id: u8, variant: u8) -> Event {
    let (i, v) = (u64::from(id), u64::from(variant));
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ v.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    Event {
        event_id: format!("e-{id}"),
        order_id: format!("o-{}", h % 6),
        status: Status::ALL[(h >> 8) as usize % 12],
        // Few distinct times, so out-of-order arrival and ties on occurred_at are common.
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

fn events(specs: &[(u8, u8)]) -> Vec<Event> {
    specs.iter().map(|(id, v)| event_for(*id, *v)).collect()
}

/// A log entry as a primary would ship it; the receive time is fixed so that runs are reproducible.
fn stored(lsn: u64, id: u8, variant: u8) -> LogEntry {
    LogEntry::Event(StoredEvent {
        lsn: Lsn(lsn),
        received_at: Timestamp::from_millis(BASE_MS + 60_000 + lsn as i64).expect("in range"),
        event: event_for(id, variant),
    })
}

/// No fsync: these tests check logic, not power-loss durability (durability.rs and crash.rs do),
/// and a reopen after a clean close reads the WAL either way.
fn fast() -> EngineOptions {
    EngineOptions {
        durability: Durability::NoSyncUnsafe,
        ..EngineOptions::default()
    }
}

fn open(dir: &Path) -> Engine {
    Engine::open(dir, fast()).expect("open")
}

fn open_replica(dir: &Path) -> Engine {
    let engine = open(dir);
    engine.set_read_only("replica").expect("read-only");
    engine
}

fn all_pages<T>(
    mut page: impl FnMut(Option<&str>) -> trackstore_engine::Result<Page<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let p = page(cursor.as_deref()).expect("query");
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

/// The whole log, from its first LSN (1 until removals dropped a prefix of tombstones).
fn read_all(engine: &Engine) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = Vec::new();
    loop {
        let from = Lsn(out.last().map_or(engine.first_lsn().0, |e| e.lsn().0 + 1));
        let chunk = engine.read_log(from, 7).expect("read_log");
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk);
    }
}

/// Everything a client can read from a store. Cursors are left out: they are sealed with a key of
/// each store, so two stores give different cursors for the same position.
#[derive(Debug, PartialEq)]
struct Snapshot {
    verify: VerifyReport,
    stats: Stats,
    first_lsn: Lsn,
    last_lsn: Lsn,
    log: Vec<LogEntry>,
    by_lsn: Vec<Option<StoredEvent>>,
    log_tail: Vec<LogEntry>,
    /// `erasure_record` at every LSN (a replica keeps the primary's records, to check receipts
    /// against after a failover).
    erasures: Vec<Option<ErasureRecord>>,
    states: Vec<Option<OrderState>>,
    timelines: Vec<(Vec<StoredEvent>, Vec<StoredEvent>)>,
    by_status: Vec<Vec<OrderState>>,
    ranges: Vec<Vec<StoredEvent>>,
}

fn ranges() -> Vec<TimeRange> {
    let t = |s: i64| Timestamp::from_millis(BASE_MS + s * 1_000).expect("in range");
    let range = |from, to, statuses: Vec<Status>, carrier: Option<&str>| TimeRange {
        from: t(from),
        to: t(to),
        statuses,
        carrier: carrier.map(str::to_owned),
    };
    vec![
        range(0, 20, vec![], None),
        range(3, 9, vec![], None),
        range(0, 20, vec![Status::Created, Status::Delivered], None),
        range(5, 15, vec![], Some("dhl")),
        range(7, 7, vec![], None),
    ]
}

/// Reads everything and checks the invariants every store must keep (a clean `verify`, stats and
/// last LSN agreeing with the log).
fn snapshot(engine: &Engine, page_size: usize) -> Snapshot {
    let verify = engine.verify().expect("verify");
    assert!(verify.is_ok(), "verify: {:?}", verify.problems);
    let log = read_all(engine);
    let stats = engine.stats();
    let (first_lsn, last_lsn) = (engine.first_lsn(), engine.last_lsn());
    assert_eq!(stats.last_lsn, last_lsn);
    assert_eq!(
        log.len() as u64,
        last_lsn.0 + 1 - first_lsn.0,
        "the log is gap-free from its first LSN"
    );
    assert_eq!(log.first().map_or(first_lsn, LogEntry::lsn), first_lsn);
    let events = log.iter().filter(|e| e.as_event().is_some()).count();
    assert_eq!(stats.events, events as u64);
    let by_lsn = (0..=last_lsn.0 + 2)
        .map(|l| engine.event(Lsn(l)).expect("event"))
        .collect();
    let log_tail = engine
        .read_log(Lsn(last_lsn.0.saturating_sub(2)), 100)
        .expect("read_log");
    let erasures = (0..=last_lsn.0 + 1)
        .map(|l| engine.erasure_record(Lsn(l)).expect("erasure_record"))
        .collect();
    let mut states = Vec::new();
    let mut timelines = Vec::new();
    for o in 0..ORDERS {
        let id = format!("o-{o}");
        states.push(engine.order_state(&id).expect("order_state"));
        let asc = all_pages(|c| engine.order_timeline(&id, Direction::Asc, page_size, c));
        let desc = all_pages(|c| engine.order_timeline(&id, Direction::Desc, page_size, c));
        timelines.push((asc, desc));
    }
    let mut by_status = Vec::new();
    for status in Status::ALL {
        for carrier in [None, Some("van-1"), Some("dhl")] {
            by_status.push(all_pages(|c| {
                engine.orders_in_status(status, carrier, page_size, c)
            }));
        }
    }
    let ranges = ranges()
        .iter()
        .map(|q| all_pages(|c| engine.time_range(q, page_size, c)))
        .collect();
    Snapshot {
        verify,
        stats,
        first_lsn,
        last_lsn,
        log,
        by_lsn,
        log_tail,
        erasures,
        states,
        timelines,
        by_status,
        ranges,
    }
}

/// The epoch of `lsn` in a history, and the first LSN of the next epoch (a batch must end before).
fn epoch_at(history: &[(u64, Lsn)], lsn: Lsn) -> (u64, Option<Lsn>) {
    let epoch = history
        .iter()
        .rev()
        .find(|(_, start)| *start <= lsn)
        .map_or(0, |(e, _)| *e);
    let next = history
        .iter()
        .map(|(_, start)| *start)
        .find(|start| *start > lsn);
    (epoch, next)
}

/// The history a replica that applied the log up to `last` ends with: epochs with no entry (the
/// next epoch starts at the same LSN, or nothing was written yet) never reach it.
fn shipped_history(history: &[(u64, Lsn)], last: Lsn) -> Vec<(u64, Lsn)> {
    history
        .iter()
        .enumerate()
        .filter(|(i, (_, start))| {
            *start <= last && history.get(i + 1).is_none_or(|(_, s)| s != start)
        })
        .map(|(_, e)| *e)
        .collect()
}

/// Ships `log` (a primary's from its first LSN, with its epoch `history`) to `replica` up to `upto`,
/// in batches of at most `batch` entries that never span two epochs, at most `rounds` batches.
/// Returns whether the replica reached `upto`; false at once when the replica needs entries the
/// primary no longer holds (dropped with the log's prefix).
fn ship(
    replica: &Engine,
    log: &[LogEntry],
    history: &[(u64, Lsn)],
    upto: Lsn,
    batch: usize,
    rounds: usize,
) -> bool {
    for _ in 0..rounds {
        let from = replica.last_lsn().0 + 1;
        if from > upto.0 {
            return true;
        }
        let first = log.first().map_or(1, |e| e.lsn().0);
        if from < first {
            return false;
        }
        let (epoch, next) = epoch_at(history, Lsn(from));
        let mut end = (from + batch as u64 - 1).min(upto.0);
        if let Some(next) = next {
            end = end.min(next.0 - 1);
        }
        let entries = log[(from - first) as usize..=(end - first) as usize].to_vec();
        let got = replica
            .apply_replicated(entries, epoch)
            .expect("apply_replicated");
        assert_eq!(got, Lsn(end));
        assert_eq!(replica.last_lsn(), Lsn(end));
    }
    replica.last_lsn() >= upto
}

/// Appends a request on a writable engine; conflicts (another variant of a stored id) are expected.
fn append(engine: &Engine, specs: &[(u8, u8)]) {
    match engine.append(events(specs)) {
        Ok(_) | Err(Error::Conflict { .. }) => {}
        Err(e) => panic!("append: {e}"),
    }
}

fn request() -> impl Strategy<Value = Vec<(u8, u8)>> {
    proptest::collection::vec((0u8..40, prop_oneof![8 => Just(0u8), 1 => Just(1u8)]), 1..6)
}

#[derive(Clone, Debug)]
enum ReplicaOp {
    /// A client request on the primary.
    Append(Vec<(u8, u8)>),
    /// Requests queued back to back on the primary, so that they share group commits.
    Concurrent(Vec<Vec<(u8, u8)>>),
    /// The primary moves to a new epoch (as after a failover back to it).
    Promote,
    /// Up to `rounds` batches of at most `batch` entries shipped to the replica.
    Ship {
        batch: usize,
        rounds: usize,
    },
    /// The replica is sent an entry it already holds (a retransmission): refused, nothing changes.
    Resend,
    ReopenPrimary,
    ReopenReplica,
    /// GDPR erasure of order `o-N` on the primary (`o-6` never exists: nothing is written).
    Erase(u8),
    /// One retention step on the primary: at most `max` events that occurred before second `before`.
    Expire {
        before: u8,
        max: usize,
    },
}

fn replica_op() -> impl Strategy<Value = ReplicaOp> {
    prop_oneof![
        6 => request().prop_map(ReplicaOp::Append),
        2 => proptest::collection::vec(request(), 2..6).prop_map(ReplicaOp::Concurrent),
        1 => Just(ReplicaOp::Promote),
        // Batches from 16 entries read their lookups in one batch first (the writer's prefetch).
        5 => (prop_oneof![3 => 1usize..8, 1 => 16usize..40], 1usize..4)
            .prop_map(|(batch, rounds)| ReplicaOp::Ship { batch, rounds }),
        1 => Just(ReplicaOp::Resend),
        1 => Just(ReplicaOp::ReopenPrimary),
        1 => Just(ReplicaOp::ReopenReplica),
        2 => (0u8..7).prop_map(ReplicaOp::Erase),
        2 => (0u8..21, 1usize..4).prop_map(|(before, max)| ReplicaOp::Expire { before, max }),
    ]
}

/// A replica under test. Once the primary has dropped a log prefix the replica still needs (only
/// tombstones and removals), it is bootstrapped from a checkpoint of the primary, as replication
/// does: it then holds the primary's epoch history as it was, epochs with no entry yet included.
struct Replica {
    engine: Engine,
    dir: tempfile::TempDir,
    bootstrapped: bool,
}

impl Replica {
    fn new() -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        Replica {
            engine: open_replica(dir.path()),
            dir,
            bootstrapped: false,
        }
    }

    fn reopen(self) -> Replica {
        let Replica {
            engine,
            dir,
            bootstrapped,
        } = self;
        drop(engine);
        Replica {
            engine: open_replica(dir.path()),
            dir,
            bootstrapped,
        }
    }

    /// Ships up to `rounds` batches of the primary's log; bootstraps first if the primary no longer
    /// holds the next entry this replica needs.
    fn catch_up(&mut self, primary: &Engine, batch: usize, rounds: usize) -> bool {
        if self.engine.last_lsn().0 + 1 < primary.first_lsn().0 {
            let dir = tempfile::tempdir().expect("tempdir");
            primary.checkpoint(dir.path()).expect("checkpoint");
            self.engine = open_replica(dir.path());
            self.dir = dir;
            self.bootstrapped = true;
            assert_eq!(self.engine.first_lsn(), primary.first_lsn());
        }
        let log = read_all(primary);
        let (history, last) = (primary.epoch_history(), primary.last_lsn());
        ship(&self.engine, &log, &history, last, batch, rounds)
    }
}

/// The replica against the primary whenever both are at the same LSN: every query, the log and the
/// epoch history (as far as it was shipped).
fn assert_replica_matches(primary: &Engine, replica: &Replica, page_size: usize) {
    let (bootstrapped, replica) = (replica.bootstrapped, &replica.engine);
    assert_eq!(primary.last_lsn(), replica.last_lsn());
    assert_eq!(snapshot(replica, page_size), snapshot(primary, page_size));
    let history = shipped_history(&primary.epoch_history(), primary.last_lsn());
    let newest = history.last().map_or(0, |(e, _)| *e);
    if bootstrapped {
        let own = replica.epoch_history();
        assert_eq!(shipped_history(&own, replica.last_lsn()), history);
        assert!(replica.epoch() >= newest);
        assert_eq!(replica.known_epoch(), replica.epoch());
    } else {
        assert_eq!(replica.epoch_history(), history);
        assert_eq!(replica.epoch(), newest);
        assert_eq!(replica.known_epoch(), newest);
    }
    assert!(!replica.is_fenced());
    assert_eq!(replica.read_only_reason().as_deref(), Some("replica"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// (1) A replica that applied the primary's log in random batches answers like the primary,
    /// erasures and retention steps included: a replica that holds the removed events when their
    /// removal arrives removes them; one that is behind receives tombstones instead. A second
    /// replica, shipped only at the end, catches up through tombstones (or a checkpoint, when the
    /// primary dropped the log prefix it needs). Both end equal to the primary.
    #[test]
    fn a_replica_answers_like_its_primary(
        ops in proptest::collection::vec(replica_op(), 1..20),
        page_size in 1usize..5,
        late_batch in 1usize..9,
    ) {
        let pdir = tempfile::tempdir().expect("tempdir");
        let mut primary = open(pdir.path());
        let mut replica = Replica::new();
        for op in ops {
            match op {
                ReplicaOp::Append(specs) => append(&primary, &specs),
                ReplicaOp::Concurrent(requests) => {
                    let (tx, rx) = crossbeam_channel::bounded(requests.len());
                    for specs in &requests {
                        let tx = tx.clone();
                        primary
                            .submit_append(events(specs), move |r| {
                                let _ = tx.send(r.map(|_| ()));
                            })
                            .expect("queued");
                    }
                    drop(tx);
                    for r in rx.iter() {
                        prop_assert!(matches!(r, Ok(()) | Err(Error::Conflict { .. })), "{:?}", r);
                    }
                }
                ReplicaOp::Promote => {
                    let before = primary.known_epoch();
                    let (epoch, start) = primary.promote().expect("promote");
                    prop_assert_eq!(epoch, before + 1);
                    prop_assert_eq!(start, Lsn(primary.last_lsn().0 + 1));
                }
                ReplicaOp::Ship { batch, rounds } => {
                    replica.catch_up(&primary, batch, rounds);
                }
                ReplicaOp::Resend => {
                    let last = replica.engine.last_lsn();
                    if last.0 > 0 && last >= primary.first_lsn() {
                        let before = snapshot(&replica.engine, page_size);
                        let entries = primary.read_log(last, 2).expect("read_log");
                        prop_assert_eq!(entries[0].lsn(), last);
                        let (epoch, _) = epoch_at(&primary.epoch_history(), last);
                        let r = replica.engine.apply_replicated(entries, epoch);
                        prop_assert!(matches!(r, Err(Error::Diverged(_))), "{:?}", r);
                        prop_assert_eq!(snapshot(&replica.engine, page_size), before);
                    }
                }
                ReplicaOp::ReopenPrimary => {
                    drop(primary);
                    primary = open(pdir.path());
                    prop_assert!(primary.read_only_reason().is_none());
                }
                ReplicaOp::ReopenReplica => replica = replica.reopen(),
                ReplicaOp::Erase(o) => {
                    let order_id = format!("o-{o}");
                    let before = primary.last_lsn();
                    match primary.erase_order(&order_id).expect("erase") {
                        Some(receipt) => {
                            prop_assert_eq!(receipt.lsn, Lsn(before.0 + 1));
                            prop_assert_eq!(primary.last_lsn(), receipt.lsn);
                            prop_assert!(receipt.events > 0);
                            let record = primary
                                .erasure_record(receipt.lsn)
                                .expect("erasure_record")
                                .expect("an erasure leaves a record");
                            prop_assert!(record.is_of(&order_id));
                            prop_assert_eq!(record.events, receipt.events);
                        }
                        None => prop_assert_eq!(primary.last_lsn(), before),
                    }
                    prop_assert_eq!(primary.order_state(&order_id).expect("state"), None);
                }
                ReplicaOp::Expire { before, max } => {
                    let cutoff = Timestamp::from_millis(BASE_MS + i64::from(before) * 1_000)
                        .expect("in range");
                    let last = primary.last_lsn();
                    let report = primary.expire_before(cutoff, max).expect("expire");
                    match report.lsn {
                        Some(lsn) => {
                            prop_assert_eq!(lsn, Lsn(last.0 + 1));
                            prop_assert!((1..=max as u64).contains(&report.events));
                        }
                        None => {
                            prop_assert_eq!(primary.last_lsn(), last);
                            prop_assert_eq!((report.events, report.orders), (0, 0));
                        }
                    }
                }
            }
            if primary.last_lsn() == replica.engine.last_lsn() {
                assert_replica_matches(&primary, &replica, page_size);
            }
        }
        prop_assert!(replica.catch_up(&primary, 5, usize::MAX));
        assert_replica_matches(&primary, &replica, page_size);
        let mut late = Replica::new();
        prop_assert!(late.catch_up(&primary, late_batch, usize::MAX));
        assert_replica_matches(&primary, &late, page_size);
    }
}

#[derive(Clone, Debug)]
enum SourceOp {
    Append(Vec<(u8, u8)>),
    Promote,
}

fn source_op() -> impl Strategy<Value = SourceOp> {
    prop_oneof![
        8 => request().prop_map(SourceOp::Append),
        1 => Just(SourceOp::Promote),
    ]
}

/// Builds a store from `ops`. A promotion is skipped when the current epoch has no entry yet, so
/// that every epoch of the history holds an entry except perhaps the last.
fn build(engine: &Engine, ops: &[SourceOp]) {
    for op in ops {
        match op {
            SourceOp::Append(specs) => append(engine, specs),
            SourceOp::Promote => {
                let next = Lsn(engine.last_lsn().0 + 1);
                if engine
                    .epoch_history()
                    .last()
                    .is_none_or(|(_, s)| *s != next)
                {
                    engine.promote().expect("promote");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// (2) Truncating after X gives the store that only ever had the first X entries: same answers,
    /// clean verify, the same after a reopen; the log then continues at X + 1, and the event ids of
    /// the removed entries can be stored again (with other content).
    #[test]
    fn truncation_equals_the_prefix(
        ops in proptest::collection::vec(source_op(), 1..16),
        cut in any::<u64>(),
        batch in 1usize..6,
        reused in proptest::collection::vec((any::<prop::sample::Index>(), 2u8..4), 0..4),
        fresh in proptest::collection::vec(100u8..120, 0..4),
        page_size in 1usize..5,
    ) {
        let sdir = tempfile::tempdir().expect("tempdir");
        let pdir = tempfile::tempdir().expect("tempdir");
        let mut store = open(sdir.path());
        build(&store, &ops);
        let log = read_all(&store);
        let history = store.epoch_history();
        let n = store.last_lsn().0;
        let x = cut % (n + 1);

        prop_assert_eq!(store.set_read_only("rejoin").expect("read-only"), Lsn(n));
        prop_assert_eq!(store.truncate_after(Lsn(x)).expect("truncate"), n - x);
        prop_assert_eq!(store.last_lsn(), Lsn(x));

        let prefix = open_replica(pdir.path());
        prop_assert!(ship(&prefix, &log, &history, Lsn(x), batch, usize::MAX));
        let truncated = snapshot(&store, page_size);
        prop_assert_eq!(&truncated, &snapshot(&prefix, page_size));
        prop_assert_eq!(&truncated.log[..], &log[..x as usize]);
        let kept: Vec<_> = history.iter().copied().filter(|(_, s)| s.0 <= x).collect();
        prop_assert_eq!(store.epoch_history(), kept.clone());
        prop_assert_eq!(prefix.epoch_history(), kept);
        // A second truncation at the same place removes nothing.
        prop_assert_eq!(store.truncate_after(Lsn(x)).expect("truncate"), 0);

        // The truncation is one durable batch: a reopen gives the same store.
        drop(store);
        store = open(sdir.path());
        store.set_read_only("rejoin").expect("read-only");
        prop_assert_eq!(&snapshot(&store, page_size), &truncated);
        prop_assert_eq!(store.epoch_history(), prefix.epoch_history());

        // The log continues at X + 1, in a new epoch, with removed ids reused for other content.
        let removed = &log[x as usize..];
        let mut ids: Vec<(u8, u8)> = Vec::new();
        if !removed.is_empty() {
            for (i, variant) in &reused {
                let e = &removed[i.index(removed.len())]
                    .as_event()
                    .expect("`build` only appends events")
                    .event;
                let id: u8 = e.event_id["e-".len()..].parse().expect("e-N");
                ids.push((id, *variant));
            }
        }
        ids.extend(fresh.iter().map(|id| (*id, 0)));
        let mut seen = BTreeSet::new();
        ids.retain(|(id, _)| seen.insert(*id));
        let more: Vec<LogEntry> = ids
            .iter()
            .enumerate()
            .map(|(i, (id, variant))| stored(x + 1 + i as u64, *id, *variant))
            .collect();
        if !more.is_empty() {
            let epoch = store.known_epoch().max(prefix.known_epoch()) + 1;
            let last = Lsn(x + more.len() as u64);
            prop_assert_eq!(store.apply_replicated(more.clone(), epoch).expect("apply"), last);
            prop_assert_eq!(prefix.apply_replicated(more.clone(), epoch).expect("apply"), last);
            let after = snapshot(&store, page_size);
            prop_assert_eq!(&after, &snapshot(&prefix, page_size));
            prop_assert_eq!(&after.log[x as usize..], &more[..]);
            prop_assert_eq!(store.epoch_history().last().copied(), Some((epoch, Lsn(x + 1))));
            prop_assert_eq!(store.epoch_history(), prefix.epoch_history());
            drop(store);
            store = open(sdir.path());
            prop_assert_eq!(snapshot(&store, page_size), after);
        }
    }
}

fn assert_read_only(err: Error, reason: &str) {
    match err {
        Error::ReadOnly(r) => assert!(r.contains(reason), "{r:?} lacks {reason:?}"),
        other => panic!("expected ReadOnly({reason:?}), got {other:?}"),
    }
}

/// (3) A new epoch is recorded at its batch's first LSN; an older epoch after a newer is refused.
#[test]
fn replicated_epochs_are_recorded_at_their_first_lsn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = open_replica(dir.path());
    let log: Vec<LogEntry> = (1..=9).map(|l| stored(l, l as u8, 0)).collect();

    assert_eq!(
        replica
            .apply_replicated(log[0..3].to_vec(), 1)
            .expect("apply"),
        Lsn(3)
    );
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1))]);
    assert_eq!(
        replica
            .apply_replicated(log[3..5].to_vec(), 1)
            .expect("apply"),
        Lsn(5)
    );
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1))]);
    assert_eq!(
        replica
            .apply_replicated(log[5..7].to_vec(), 3)
            .expect("apply"),
        Lsn(7)
    );
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1)), (3, Lsn(6))]);
    assert_eq!((replica.epoch(), replica.known_epoch()), (3, 3));
    assert!(!replica.is_fenced());

    // Refusals write nothing: an older epoch, a gap, a retransmission.
    let before = snapshot(&replica, 3);
    let refusals = [
        (log[7..8].to_vec(), 2),
        (log[8..9].to_vec(), 3),
        (log[6..8].to_vec(), 3),
        (log[8..9].to_vec(), 4),
    ];
    for (entries, epoch) in refusals {
        let err = replica
            .apply_replicated(entries.clone(), epoch)
            .expect_err("refused");
        assert!(
            matches!(err, Error::Diverged(_)),
            "{entries:?} {epoch}: {err:?}"
        );
        assert_eq!(snapshot(&replica, 3), before);
        assert_eq!(replica.epoch_history(), vec![(1, Lsn(1)), (3, Lsn(6))]);
    }
    // An empty batch is a no-op whatever its epoch.
    assert_eq!(replica.apply_replicated(vec![], 9).expect("empty"), Lsn(7));
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1)), (3, Lsn(6))]);

    assert_eq!(
        replica
            .apply_replicated(log[7..9].to_vec(), 3)
            .expect("apply"),
        Lsn(9)
    );
    let after = snapshot(&replica, 2);
    drop(replica);
    let replica = open(dir.path());
    assert_eq!(snapshot(&replica, 2), after);
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1)), (3, Lsn(6))]);
    assert_eq!((replica.epoch(), replica.known_epoch()), (3, 3));
}

/// (3) A batch refused for a reason found inside it (an event id the store holds) records neither
/// its new epoch nor the epoch as known: a refused batch writes nothing. Found by this file: the
/// epoch used to be planned before the entries and committed even when they were refused.
#[test]
fn a_refused_batch_records_no_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = open_replica(dir.path());
    assert_eq!(
        replica
            .apply_replicated(vec![stored(1, 1, 0)], 1)
            .expect("apply"),
        Lsn(1)
    );

    // LSN 3 repeats the id of LSN 1 (a diverged primary); the batch opens epoch 2.
    let batch = vec![stored(2, 2, 0), stored(3, 1, 1)];
    let err = replica.apply_replicated(batch, 2).expect_err("refused");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");
    // An id repeated inside the batch is refused the same way.
    let batch = vec![stored(2, 2, 0), stored(3, 2, 0)];
    let err = replica.apply_replicated(batch, 2).expect_err("refused");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");
    // And in batches large enough for the writer to read their event ids in one batch first.
    let mut batch: Vec<LogEntry> = (2..=20).map(|l| stored(l, 10 + l as u8, 0)).collect();
    batch.push(stored(21, 1, 1));
    let err = replica.apply_replicated(batch, 2).expect_err("refused");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");
    let mut batch: Vec<LogEntry> = (2..=20).map(|l| stored(l, 10 + l as u8, 0)).collect();
    batch.push(stored(21, 12, 0));
    let err = replica.apply_replicated(batch, 2).expect_err("refused");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");

    assert_eq!(replica.last_lsn(), Lsn(1));
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1))]);
    assert_eq!(replica.known_epoch(), 1);
    drop(replica);
    let replica = open_replica(dir.path());
    assert_eq!(replica.epoch_history(), vec![(1, Lsn(1))]);
    assert_eq!(replica.known_epoch(), 1);
    assert!(replica.verify().expect("verify").is_ok());
}

/// (3) Only a read-only node applies replicated entries.
#[test]
fn a_writable_engine_refuses_replicated_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let err = engine
        .apply_replicated(vec![stored(1, 1, 0)], 1)
        .expect_err("refused");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    assert_eq!(engine.last_lsn(), Lsn(0));
    assert!(engine.read_log(Lsn(1), 10).expect("read_log").is_empty());
    assert_eq!(engine.epoch_history(), vec![]);
    assert_eq!(engine.known_epoch(), 0);
    assert!(engine.verify().expect("verify").is_ok());
}

/// (3) A read-only engine refuses appends (retries of stored events too) and writes nothing;
/// `set_writable` lifts it.
#[test]
fn a_read_only_engine_refuses_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine.append(events(&[(1, 0), (2, 0)])).expect("append");
    assert_eq!(engine.read_only_reason(), None);
    assert_eq!(engine.set_read_only("replica").expect("read-only"), Lsn(2));
    assert_eq!(engine.read_only_reason().as_deref(), Some("replica"));
    let before = snapshot(&engine, 2);

    assert_read_only(
        engine.append(events(&[(3, 0)])).expect_err("refused"),
        "replica",
    );
    assert_read_only(
        engine.append(events(&[(1, 0)])).expect_err("refused"),
        "replica",
    );
    let (tx, rx) = crossbeam_channel::bounded(1);
    engine
        .submit_append(events(&[(4, 0)]), move |r| {
            let _ = tx.send(r);
        })
        .expect("queued");
    let reply = rx.recv_timeout(Duration::from_secs(10)).expect("reply");
    assert_read_only(reply.expect_err("refused"), "replica");
    assert_eq!(snapshot(&engine, 2), before);
    assert!(!engine.is_fenced());

    assert_eq!(engine.set_writable().expect("writable"), Lsn(2));
    assert_eq!(engine.read_only_reason(), None);
    assert_eq!(
        engine.append(events(&[(3, 0)])).expect("append"),
        vec![Outcome::Created(Lsn(3))]
    );
}

/// (3) Hearing of a newer epoch fences a writable engine at once and across reopens; only a
/// promotion lifts it.
#[test]
fn a_newer_epoch_fences_a_writable_engine_durably() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    assert_eq!(engine.promote().expect("promote"), (1, Lsn(1)));
    engine.append(events(&[(1, 0), (2, 0)])).expect("append");
    assert!(!engine.note_epoch(1).expect("note"));
    assert!(!engine.note_epoch(0).expect("note"));
    assert_eq!(engine.read_only_reason(), None);

    assert!(engine.note_epoch(4).expect("note"));
    assert!(engine.is_fenced());
    assert_eq!((engine.epoch(), engine.known_epoch()), (1, 4));
    assert_read_only(
        engine.append(events(&[(3, 0)])).expect_err("fenced"),
        "fenced",
    );
    assert_read_only(engine.set_writable().expect_err("fenced"), "fenced");
    assert!(
        engine.note_epoch(2).expect("note"),
        "an older epoch changes nothing"
    );
    assert_eq!(engine.known_epoch(), 4);
    let before = snapshot(&engine, 2);
    assert_eq!(before.last_lsn, Lsn(2));

    drop(engine);
    let engine = open(dir.path());
    assert!(engine.is_fenced());
    assert_eq!((engine.epoch(), engine.known_epoch()), (1, 4));
    assert!(
        engine
            .read_only_reason()
            .is_some_and(|r| r.contains("fenced")),
        "{:?}",
        engine.read_only_reason()
    );
    assert_read_only(
        engine.append(events(&[(3, 0)])).expect_err("fenced"),
        "fenced",
    );
    assert_read_only(engine.set_writable().expect_err("fenced"), "fenced");
    assert_eq!(snapshot(&engine, 2), before);

    // A fenced node that is promoted again takes an epoch above the one it heard of.
    assert_eq!(engine.promote().expect("promote"), (5, Lsn(3)));
    assert!(!engine.is_fenced());
    assert_eq!(
        engine.append(events(&[(3, 0)])).expect("append"),
        vec![Outcome::Created(Lsn(3))]
    );
}

/// (3) Promoting a replica: epoch max(own, known) + 1 starting at the next LSN, writable, durable.
#[test]
fn promoting_a_replica_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = open_replica(dir.path());
    let log: Vec<LogEntry> = (1..=3).map(|l| stored(l, l as u8, 0)).collect();
    replica.apply_replicated(log, 2).expect("apply");
    assert!(
        replica.note_epoch(4).expect("note"),
        "epoch 4 is newer than 2"
    );
    assert!(replica.is_fenced());
    assert_eq!(replica.read_only_reason().as_deref(), Some("replica"));
    // Refused with the reason the node already gives clients.
    assert_read_only(replica.set_writable().expect_err("fenced"), "replica");

    assert_eq!(replica.promote().expect("promote"), (5, Lsn(4)));
    assert_eq!(replica.read_only_reason(), None);
    assert!(!replica.is_fenced());
    assert_eq!((replica.epoch(), replica.known_epoch()), (5, 5));
    assert_eq!(replica.epoch_history(), vec![(2, Lsn(1)), (5, Lsn(4))]);
    assert_eq!(
        replica.append(events(&[(10, 0)])).expect("append"),
        vec![Outcome::Created(Lsn(4))]
    );
    let err = replica
        .apply_replicated(vec![stored(5, 11, 0)], 5)
        .expect_err("a primary applies no replicated entries");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");

    drop(replica);
    let engine = open(dir.path());
    assert_eq!(engine.read_only_reason(), None);
    assert_eq!((engine.epoch(), engine.known_epoch()), (5, 5));
    assert_eq!(engine.epoch_history(), vec![(2, Lsn(1)), (5, Lsn(4))]);
    assert_eq!(
        engine.append(events(&[(11, 0)])).expect("append"),
        vec![Outcome::Created(Lsn(5))]
    );
    // Promoting a primary again just moves it to the next epoch.
    assert_eq!(engine.promote().expect("promote"), (6, Lsn(6)));
}

/// (3) Truncation drops the epochs that start after the cut, an epoch not yet written to included;
/// the highest epoch heard of stays, so a node that lost its own epoch that way is fenced. Found by
/// `truncation_equals_the_prefix`: a cut at the last LSN used to return early and keep the epoch.
#[test]
fn truncation_removes_epochs_that_start_after_the_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    assert_eq!(engine.promote().expect("promote"), (1, Lsn(1)));
    engine
        .append(events(&[(1, 0), (2, 0), (3, 0)]))
        .expect("append");
    assert_eq!(engine.promote().expect("promote"), (2, Lsn(4)));
    engine.append(events(&[(4, 0), (5, 0)])).expect("append");
    // Promoted again, then superseded before writing anything in epoch 3.
    assert_eq!(engine.promote().expect("promote"), (3, Lsn(6)));
    assert!(
        matches!(
            engine.truncate_after(Lsn(5)),
            Err(Error::InvalidArgument(_))
        ),
        "a writable node is not truncated"
    );
    engine.set_read_only("rejoin").expect("read-only");

    assert_eq!(engine.truncate_after(Lsn(5)).expect("truncate"), 0);
    assert_eq!(engine.epoch_history(), vec![(1, Lsn(1)), (2, Lsn(4))]);
    assert_eq!(engine.truncate_after(Lsn(3)).expect("truncate"), 2);
    assert_eq!(engine.epoch_history(), vec![(1, Lsn(1))]);
    assert_eq!(engine.epoch(), 1);
    assert_eq!(engine.known_epoch(), 3);
    assert!(engine.is_fenced());
    assert_read_only(engine.set_writable().expect_err("fenced"), "rejoin");
    assert!(engine.verify().expect("verify").is_ok());

    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine.epoch_history(), vec![(1, Lsn(1))]);
    assert_eq!(engine.known_epoch(), 3);
    assert!(engine.is_fenced());
    assert_eq!(engine.last_lsn(), Lsn(3));
    assert_eq!(engine.promote().expect("promote"), (4, Lsn(4)));
}

/// (2) After a truncation the node's own appends continue at the cut and may reuse removed ids.
#[test]
fn appends_after_truncation_continue_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    engine
        .append(events(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]))
        .expect("append");
    engine.set_read_only("rejoin").expect("read-only");
    assert_eq!(engine.truncate_after(Lsn(2)).expect("truncate"), 3);
    assert_eq!(engine.set_writable().expect("writable"), Lsn(2));
    assert_eq!(
        engine
            .append(events(&[(4, 1), (3, 0), (9, 0)]))
            .expect("append"),
        vec![
            Outcome::Created(Lsn(3)),
            Outcome::Created(Lsn(4)),
            Outcome::Created(Lsn(5))
        ]
    );
    // Ids 1 and 2 are still there; 5 is gone, so its old content is new again.
    assert_eq!(
        engine.append(events(&[(1, 0), (5, 0)])).expect("append"),
        vec![Outcome::Duplicate(Lsn(1)), Outcome::Created(Lsn(6))]
    );
    assert!(matches!(
        engine.append(events(&[(2, 1)])),
        Err(Error::Conflict { .. })
    ));
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 6);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// (4) `set_read_only` is a barrier: every append queued before it is committed and included in
    /// the LSN it returns; every append queued after it is refused. A second thread queues appends
    /// while the barrier is called, so some share its group commit.
    #[test]
    fn set_read_only_includes_every_append_queued_before_it(
        requests in proptest::collection::vec(request(), 1..60),
        queued_first in 0usize..30,
        delay_us in 0u64..2_000,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = open(dir.path());
        let (tx, rx) = crossbeam_channel::bounded(requests.len());
        let returned = std::thread::scope(|s| {
            let submitter = s.spawn(|| {
                for (i, specs) in requests.iter().enumerate() {
                    if i == queued_first {
                        std::thread::sleep(Duration::from_micros(delay_us));
                    }
                    let tx = tx.clone();
                    engine
                        .submit_append(events(specs), move |r| {
                            let _ = tx.send((i, r));
                        })
                        .expect("queued");
                }
            });
            // Let the first requests commit, then close while the rest arrive. The wait is bounded:
            // a first request can fail (a conflict inside it) and commit nothing.
            if queued_first > 0 {
                engine.wait_for_commit(Lsn(0), Duration::from_millis(500));
            }
            let lsn = engine.set_read_only("switchover").expect("read-only");
            submitter.join().expect("submitter");
            lsn
        });
        drop(tx);
        let mut replies: Vec<_> = rx.iter().collect();
        prop_assert_eq!(replies.len(), requests.len());
        replies.sort_by_key(|(i, _)| *i);
        // Commands are served in queue order: answered requests first, then only refusals.
        let accepted = replies
            .iter()
            .take_while(|(_, r)| !matches!(r, Err(Error::ReadOnly(_))))
            .count();
        let mut created = Vec::new();
        for (i, r) in &replies {
            match r {
                Ok(outcomes) => {
                    prop_assert!(*i < accepted);
                    created.extend(outcomes.iter().filter_map(|o| match o {
                        Outcome::Created(l) => Some(l.0),
                        Outcome::Duplicate(_) => None,
                    }));
                }
                Err(Error::Conflict { .. }) => prop_assert!(*i < accepted),
                Err(Error::ReadOnly(reason)) => {
                    prop_assert!(*i >= accepted);
                    prop_assert_eq!(reason.as_str(), "switchover");
                }
                Err(e) => prop_assert!(false, "request {}: {:?}", i, e),
            }
        }
        created.sort_unstable();
        prop_assert_eq!(created, (1..=returned.0).collect::<Vec<_>>());
        prop_assert_eq!(engine.last_lsn(), returned);
        prop_assert_eq!(engine.stats().last_lsn, returned);
        prop_assert_eq!(read_all(&engine).len() as u64, returned.0);
        let report = engine.verify().expect("verify");
        prop_assert!(report.is_ok(), "{:?}", report.problems);
    }
}

/// (4) With nothing queued, `set_read_only` answers the last LSN, and appends after it are refused
/// even when they only repeat stored events.
#[test]
fn set_read_only_after_acknowledged_appends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    assert_eq!(engine.set_read_only("idle").expect("read-only"), Lsn(0));
    engine.set_writable().expect("writable");
    engine
        .append(events(&[(1, 0), (2, 0), (1, 0)]))
        .expect("append");
    assert_eq!(
        engine.set_read_only("switchover").expect("read-only"),
        Lsn(2)
    );
    assert_eq!(engine.set_read_only("again").expect("read-only"), Lsn(2));
    assert_eq!(engine.read_only_reason().as_deref(), Some("again"));
    assert_read_only(
        engine.append(events(&[(2, 0)])).expect_err("refused"),
        "again",
    );
    assert_eq!(engine.last_lsn(), Lsn(2));
}

/// (3) `record_epoch` starts an epoch at the next LSN; epochs only grow, durably.
#[test]
fn recorded_epochs_only_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    assert_eq!(engine.record_epoch(1).expect("record"), Lsn(1));
    assert!(matches!(
        engine.record_epoch(1),
        Err(Error::InvalidArgument(_))
    ));
    engine.append(events(&[(1, 0), (2, 0)])).expect("append");
    assert_eq!(engine.record_epoch(3).expect("record"), Lsn(3));
    assert!(matches!(
        engine.record_epoch(2),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(engine.epoch_history(), vec![(1, Lsn(1)), (3, Lsn(3))]);
    assert_eq!((engine.epoch(), engine.known_epoch()), (3, 3));
    assert!(!engine.is_fenced());
    drop(engine);
    let engine = open(dir.path());
    assert_eq!(engine.epoch_history(), vec![(1, Lsn(1)), (3, Lsn(3))]);
    assert_eq!((engine.epoch(), engine.known_epoch()), (3, 3));
    assert_eq!(engine.read_only_reason(), None);
}

/// A primary with events of `o-0` .. `o-5` (ids 0..12), for the removal tests below.
fn primary_with_events(dir: &Path) -> Engine {
    let primary = open(dir);
    append(&primary, &[(0, 0), (1, 0), (2, 0), (3, 0)]);
    append(&primary, &[(4, 0), (5, 0), (6, 0), (7, 0)]);
    append(&primary, &[(8, 0), (9, 0), (10, 0), (11, 0)]);
    assert_eq!(primary.last_lsn(), Lsn(12));
    primary
}

/// The order of the event stored at `lsn`.
fn order_at(engine: &Engine, lsn: u64) -> String {
    engine
        .event(Lsn(lsn))
        .expect("event")
        .expect("an event")
        .event
        .order_id
}

/// (1) A replica that holds the events when their removal arrives removes them itself: the entry
/// it receives is the removal, no tombstone, and it ends equal to the primary, erasure record
/// included.
#[test]
fn a_replica_that_holds_the_events_removes_them() {
    let pdir = tempfile::tempdir().expect("tempdir");
    let primary = primary_with_events(pdir.path());
    let mut replica = Replica::new();
    assert!(replica.catch_up(&primary, 5, usize::MAX));
    assert_replica_matches(&primary, &replica, 3);

    let victim = order_at(&primary, 2);
    let receipt = primary
        .erase_order(&victim)
        .expect("erase")
        .expect("erased");
    let cutoff = Timestamp::from_millis(BASE_MS + 10_000).expect("in range");
    let report = primary.expire_before(cutoff, 2).expect("expire");
    assert_eq!(report.events, 2);
    let shipped = primary.read_log(Lsn(13), 10).expect("read_log");
    assert_eq!(shipped.len(), 2);
    assert!(
        shipped.iter().all(|e| matches!(e, LogEntry::Removal(_))),
        "{shipped:?}"
    );
    let held: Vec<Lsn> = match &shipped[0] {
        LogEntry::Removal(r) => r.lsns.clone(),
        _ => unreachable!("checked above"),
    };
    assert!(
        held.iter()
            .all(|l| replica.engine.event(*l).expect("event").is_some())
    );

    assert!(replica.catch_up(&primary, 1, usize::MAX));
    assert!(!replica.bootstrapped);
    // The replica drops the same log prefix as the primary (compared in the snapshot).
    assert_replica_matches(&primary, &replica, 3);
    assert!(
        held.iter()
            .all(|l| replica.engine.event(*l).expect("event").is_none())
    );
    let record = replica
        .engine
        .erasure_record(receipt.lsn)
        .expect("erasure_record")
        .expect("the replica keeps the erasure record");
    assert!(record.is_of(&victim));
    assert_eq!(record.events, receipt.events);
    let replica = replica.reopen();
    assert_replica_matches(&primary, &replica, 3);
}

/// (1) A replica that is behind when events are removed receives their tombstones, then the
/// removal (which finds nothing left to remove); its erasure record still counts the events the
/// primary removed, so a receipt checks out on it after a failover.
#[test]
fn a_replica_that_catches_up_receives_tombstones() {
    let pdir = tempfile::tempdir().expect("tempdir");
    let primary = primary_with_events(pdir.path());
    let mut replica = Replica::new();
    assert!(!replica.catch_up(&primary, 3, 1), "one batch of 3 of 12");
    assert_eq!(replica.engine.last_lsn(), Lsn(3));

    // An order with no event at or below LSN 3: the replica holds none of its events.
    let early: BTreeSet<String> = (1..=3).map(|l| order_at(&primary, l)).collect();
    let victim = (4..=12)
        .map(|l| order_at(&primary, l))
        .find(|o| !early.contains(o))
        .expect("an order with only later events");
    let receipt = primary
        .erase_order(&victim)
        .expect("erase")
        .expect("erased");
    assert_eq!(primary.first_lsn(), Lsn(1));
    let tombstones: Vec<Lsn> = read_all(&primary)
        .iter()
        .filter_map(|e| match e {
            LogEntry::Erased { lsn, by, .. } => {
                assert_eq!(*by, receipt.lsn);
                Some(*lsn)
            }
            _ => None,
        })
        .collect();
    assert_eq!(tombstones.len() as u64, receipt.events);
    assert!(tombstones.iter().all(|l| *l > Lsn(3)));

    assert!(replica.catch_up(&primary, 4, usize::MAX));
    assert!(!replica.bootstrapped);
    assert_replica_matches(&primary, &replica, 2);
    let record = replica
        .engine
        .erasure_record(receipt.lsn)
        .expect("erasure_record")
        .expect("the replica keeps the erasure record");
    assert!(record.is_of(&victim));
    assert_eq!(record.events, receipt.events);
}

/// (1) Once the primary dropped a log prefix (every event in it removed), a replica that needs
/// an entry of that prefix cannot continue the log: the primary's log starts later and the replica
/// refuses the gap. Bootstrapped from a checkpoint, it follows on and equals the primary.
#[test]
fn a_replica_behind_the_dropped_prefix_restarts_from_a_checkpoint() {
    let pdir = tempfile::tempdir().expect("tempdir");
    let primary = open(pdir.path());
    append(&primary, &[(0, 0), (1, 0)]);
    let mut replica = Replica::new();
    assert!(!replica.catch_up(&primary, 1, 1), "one batch of 1 of 2");
    assert_eq!(replica.engine.last_lsn(), Lsn(1));
    let cutoff = Timestamp::from_millis(BASE_MS + 60_000).expect("in range");
    let report = primary.expire_before(cutoff, 10).expect("expire");
    assert_eq!((report.lsn, report.events), (Some(Lsn(3)), 2));
    // Nothing but the removal is left: the log keeps its last entry, which carries the last LSN.
    assert_eq!(primary.first_lsn(), Lsn(3));
    let log = read_all(&primary);
    assert_eq!(
        log.iter().map(LogEntry::lsn).collect::<Vec<_>>(),
        vec![Lsn(3)]
    );
    let err = replica
        .engine
        .apply_replicated(log.clone(), 0)
        .expect_err("a gap");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");
    assert_eq!(replica.engine.last_lsn(), Lsn(1));

    append(&primary, &[(20, 0)]);
    assert!(replica.catch_up(&primary, 2, usize::MAX));
    assert!(replica.bootstrapped);
    assert_replica_matches(&primary, &replica, 2);
    append(&primary, &[(21, 0), (0, 0)]);
    primary.erase_order(&order_at(&primary, 4)).expect("erase");
    assert!(replica.catch_up(&primary, 2, usize::MAX));
    assert_replica_matches(&primary, &replica, 2);
}

/// (1) A retransmitted batch (it starts at an entry the replica holds) is refused and writes
/// nothing, also when it holds a removal: the parts a removal splits a batch into are refused
/// together. Found by `a_replica_answers_like_its_primary`.
#[test]
fn a_refused_batch_with_a_removal_writes_nothing() {
    let pdir = tempfile::tempdir().expect("tempdir");
    let primary = primary_with_events(pdir.path());
    let mut replica = Replica::new();
    assert!(replica.catch_up(&primary, 12, usize::MAX));
    let victim = order_at(&primary, 2);
    let erasure = primary
        .erase_order(&victim)
        .expect("erase")
        .expect("erased");
    append(&primary, &[(30, 0)]);
    assert_eq!((erasure.lsn, primary.last_lsn()), (Lsn(13), Lsn(14)));

    // The held entry 12, then the erasure at 13: the erasure must not be applied.
    let before = snapshot(&replica.engine, 3);
    let entries = primary.read_log(Lsn(12), 2).expect("read_log");
    let err = replica
        .engine
        .apply_replicated(entries, 0)
        .expect_err("a retransmission");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");
    assert_eq!(
        snapshot(&replica.engine, 3),
        before,
        "the erasure was applied"
    );

    // The erasure (held after this ship), then the new event 14: the event must not be applied.
    assert!(!replica.catch_up(&primary, 1, 1), "one batch of 1 of 2");
    assert_eq!(replica.engine.last_lsn(), Lsn(13));
    let before = snapshot(&replica.engine, 3);
    let entries = primary.read_log(Lsn(13), 2).expect("read_log");
    let err = replica
        .engine
        .apply_replicated(entries, 0)
        .expect_err("a retransmission");
    assert!(matches!(err, Error::Diverged(_)), "{err:?}");
    assert_eq!(
        snapshot(&replica.engine, 3),
        before,
        "the event was applied"
    );

    assert!(replica.catch_up(&primary, 5, usize::MAX));
    assert_replica_matches(&primary, &replica, 3);
}

/// (2) A tail holding a removal is not truncated (the removed data cannot come back): refused,
/// nothing changes; a cut at or after the removal works as before.
#[test]
fn truncation_refuses_a_tail_holding_a_removal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = primary_with_events(dir.path());
    let victim = order_at(&engine, 5);
    let erasure = engine.erase_order(&victim).expect("erase").expect("erased");
    append(&engine, &[(30, 0), (31, 0)]);
    assert_eq!((erasure.lsn, engine.last_lsn()), (Lsn(13), Lsn(15)));
    engine.set_read_only("rejoin").expect("read-only");
    let before = snapshot(&engine, 3);
    for cut in [0, 4, 12] {
        let err = engine.truncate_after(Lsn(cut)).expect_err("refused");
        assert!(
            matches!(&err, Error::InvalidArgument(m) if m.contains("removal")),
            "{cut}: {err:?}"
        );
        assert_eq!(snapshot(&engine, 3), before);
    }
    assert_eq!(engine.truncate_after(Lsn(13)).expect("truncate"), 2);
    assert_eq!(engine.last_lsn(), Lsn(13));
    assert!(engine.verify().expect("verify").is_ok());
    assert_eq!(engine.order_state(&victim).expect("state"), None);
}
