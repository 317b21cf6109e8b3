//! Tests of the engine's replication entry points: a replica applying a primary's log answers every
//! query exactly like the primary; truncating a log equals a store that only ever had the prefix;
//! epochs, fencing and promotion behave as documented and survive reopening; `set_read_only` is a
//! barrier that includes every append queued before it and none after.
//!
//! Queries are compared through a `Snapshot` of everything a client can read (every paged query
//! read to the end with a small random page size), so "the same answers" means the same for all.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use trackstore_engine::{
    Direction, Durability, Engine, EngineOptions, Error, Event, Lsn, OrderState, Outcome, Page,
    Stats, Status, StoredEvent, TimeRange, Timestamp, VerifyReport,
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
fn stored(lsn: u64, id: u8, variant: u8) -> StoredEvent {
    StoredEvent {
        lsn: Lsn(lsn),
        received_at: Timestamp::from_millis(BASE_MS + 60_000 + lsn as i64).expect("in range"),
        event: event_for(id, variant),
    }
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

fn read_all(engine: &Engine) -> Vec<StoredEvent> {
    let mut out: Vec<StoredEvent> = Vec::new();
    loop {
        let from = Lsn(out.last().map_or(1, |e| e.lsn.0 + 1));
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
    last_lsn: Lsn,
    log: Vec<StoredEvent>,
    by_lsn: Vec<Option<StoredEvent>>,
    log_tail: Vec<StoredEvent>,
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
    let last_lsn = engine.last_lsn();
    assert_eq!(stats.last_lsn, last_lsn);
    assert_eq!(
        log.len() as u64,
        last_lsn.0,
        "the log is gap-free from LSN 1"
    );
    assert_eq!(stats.events, last_lsn.0);
    let by_lsn = (0..=last_lsn.0 + 2)
        .map(|l| engine.event(Lsn(l)).expect("event"))
        .collect();
    let log_tail = engine
        .read_log(Lsn(last_lsn.0.saturating_sub(2)), 100)
        .expect("read_log");
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
        last_lsn,
        log,
        by_lsn,
        log_tail,
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

/// Ships `log` (a primary's, with its epoch `history`) to `replica` up to `upto`, in batches of at
/// most `batch` entries that never span two epochs, at most `rounds` batches. Returns whether the
/// replica reached `upto`.
fn ship(
    replica: &Engine,
    log: &[StoredEvent],
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
        let (epoch, next) = epoch_at(history, Lsn(from));
        let mut end = (from + batch as u64 - 1).min(upto.0);
        if let Some(next) = next {
            end = end.min(next.0 - 1);
        }
        let entries = log[(from - 1) as usize..end as usize].to_vec();
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
}

fn replica_op() -> impl Strategy<Value = ReplicaOp> {
    prop_oneof![
        6 => request().prop_map(ReplicaOp::Append),
        2 => proptest::collection::vec(request(), 2..6).prop_map(ReplicaOp::Concurrent),
        1 => Just(ReplicaOp::Promote),
        5 => (1usize..8, 1usize..4).prop_map(|(batch, rounds)| ReplicaOp::Ship { batch, rounds }),
        1 => Just(ReplicaOp::Resend),
        1 => Just(ReplicaOp::ReopenPrimary),
        1 => Just(ReplicaOp::ReopenReplica),
    ]
}

/// The replica against the primary whenever both are at the same LSN: every query, the log and the
/// epoch history (as far as it was shipped).
fn assert_replica_matches(primary: &Engine, replica: &Engine, page_size: usize) {
    assert_eq!(primary.last_lsn(), replica.last_lsn());
    assert_eq!(snapshot(replica, page_size), snapshot(primary, page_size));
    let history = shipped_history(&primary.epoch_history(), primary.last_lsn());
    assert_eq!(replica.epoch_history(), history);
    let newest = history.last().map_or(0, |(e, _)| *e);
    assert_eq!(replica.epoch(), newest);
    assert_eq!(replica.known_epoch(), newest);
    assert!(!replica.is_fenced());
    assert_eq!(replica.read_only_reason().as_deref(), Some("replica"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// (1) A replica that applied the primary's log in random batches answers like the primary.
    #[test]
    fn a_replica_answers_like_its_primary(
        ops in proptest::collection::vec(replica_op(), 1..20),
        page_size in 1usize..5,
    ) {
        let pdir = tempfile::tempdir().expect("tempdir");
        let rdir = tempfile::tempdir().expect("tempdir");
        let mut primary = open(pdir.path());
        let mut replica = open_replica(rdir.path());
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
                    let log = read_all(&primary);
                    let (history, last) = (primary.epoch_history(), primary.last_lsn());
                    ship(&replica, &log, &history, last, batch, rounds);
                }
                ReplicaOp::Resend => {
                    let last = replica.last_lsn();
                    if last.0 > 0 {
                        let before = snapshot(&replica, page_size);
                        let entries = primary.read_log(last, 2).expect("read_log");
                        let (epoch, _) = epoch_at(&primary.epoch_history(), last);
                        let r = replica.apply_replicated(entries, epoch);
                        prop_assert!(matches!(r, Err(Error::Diverged(_))), "{:?}", r);
                        prop_assert_eq!(snapshot(&replica, page_size), before);
                    }
                }
                ReplicaOp::ReopenPrimary => {
                    drop(primary);
                    primary = open(pdir.path());
                    prop_assert!(primary.read_only_reason().is_none());
                }
                ReplicaOp::ReopenReplica => {
                    drop(replica);
                    replica = open_replica(rdir.path());
                }
            }
            if primary.last_lsn() == replica.last_lsn() {
                assert_replica_matches(&primary, &replica, page_size);
            }
        }
        let log = read_all(&primary);
        let (history, last) = (primary.epoch_history(), primary.last_lsn());
        prop_assert!(ship(&replica, &log, &history, last, 5, usize::MAX));
        assert_replica_matches(&primary, &replica, page_size);
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
                let e = &removed[i.index(removed.len())].event;
                let id: u8 = e.event_id["e-".len()..].parse().expect("e-N");
                ids.push((id, *variant));
            }
        }
        ids.extend(fresh.iter().map(|id| (*id, 0)));
        let mut seen = BTreeSet::new();
        ids.retain(|(id, _)| seen.insert(*id));
        let more: Vec<StoredEvent> = ids
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
    let log: Vec<StoredEvent> = (1..=9).map(|l| stored(l, l as u8, 0)).collect();

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
    let log: Vec<StoredEvent> = (1..=3).map(|l| stored(l, l as u8, 0)).collect();
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
