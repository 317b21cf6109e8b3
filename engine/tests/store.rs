//! The RocksDB store under the engine. Format 2: a `by_order` entry holds a copy of its event (a
//! primary's appends) or its position only (a replica's applies: the timeline fetches the event from
//! the log). A format-1 store opens, reads, verifies and erases, and is marked format 2 so that a
//! format-1 build refuses it afterwards. Compactions run at the lowest CPU priority.

use std::path::Path;

use trackstore_engine::store::{self, Cf};
use trackstore_engine::{
    Direction, Engine, EngineOptions, Error, Event, Status, Timestamp, db_path, keys,
};

const BASE_MS: i64 = 1_700_000_000_000;

fn event(order: usize, step: usize, status: Status) -> Event {
    Event {
        event_id: format!("e-{order}-{step}"),
        order_id: format!("o-{order:03}"),
        status,
        // Steps arrive late for odd orders: the timeline order is not the LSN order.
        occurred_at: Timestamp::from_millis(
            BASE_MS
                + (order * 100) as i64 * 1_000
                + if order % 2 == 1 { 50 - step } else { step } as i64 * 1_000,
        )
        .expect("in range"),
        source: None,
        carrier: Some("van-1".to_owned()),
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

const STEPS: [Status; 4] = [
    Status::Created,
    Status::Allocated,
    Status::Picked,
    Status::InTransit,
];

/// 6 orders × 4 steps, interleaved across orders so that each order's events are apart in the log.
fn fill(engine: &Engine) {
    for (step, status) in STEPS.into_iter().enumerate() {
        let batch = (0..6).map(|order| event(order, step, status)).collect();
        engine.append(batch).expect("append");
    }
}

fn timeline(engine: &Engine, order: usize, direction: Direction, limit: usize) -> Vec<u64> {
    let mut lsns = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine
            .order_timeline(
                &format!("o-{order:03}"),
                direction,
                limit,
                cursor.as_deref(),
            )
            .expect("timeline");
        lsns.extend(page.items.iter().map(|e| e.lsn.0));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return lsns,
        }
    }
}

fn raw_values(dir: &Path, cf: Cf) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = store::open(&db_path(dir), &store::Tuning::default()).expect("raw open");
    let mut it = db.raw_iterator_cf_opt(
        store::handle(&db, cf).expect("cf"),
        store::full_scan_read_options(),
    );
    it.seek_to_first();
    let mut out = Vec::new();
    while let Some((k, v)) = it.item() {
        out.push((k.to_vec(), v.to_vec()));
        it.next();
    }
    out
}

fn format_of(dir: &Path) -> Vec<u8> {
    let db = store::open(&db_path(dir), &store::Tuning::default()).expect("raw open");
    db.get_cf(
        store::handle(&db, Cf::Meta).expect("meta"),
        keys::META_FORMAT,
    )
    .expect("get")
    .expect("a format marker")
}

fn by_order_values(dir: &Path) -> Vec<Vec<u8>> {
    raw_values(dir, Cf::ByOrder)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn a_primary_keeps_copies_a_replica_positions_and_both_read_the_same() {
    let (pdir, rdir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let primary = Engine::open(pdir.path(), EngineOptions::default()).expect("open");
    fill(&primary);
    let replica = Engine::open(rdir.path(), EngineOptions::default()).expect("open");
    replica.set_read_only("replica").expect("read-only");
    let entries = primary
        .read_log(trackstore_engine::Lsn(1), 1000)
        .expect("read log");
    replica
        .apply_replicated(entries, primary.epoch())
        .expect("apply");
    // Odd orders' events occurred in the reverse of their LSN order.
    for engine in [&primary, &replica] {
        let asc = timeline(engine, 1, Direction::Asc, 3);
        assert_eq!(asc.len(), 4);
        assert!(asc.windows(2).all(|w| w[0] > w[1]), "{asc:?}");
        let mut desc = timeline(engine, 1, Direction::Desc, 1);
        desc.reverse();
        assert_eq!(asc, desc);
        let full = engine
            .order_timeline("o-002", Direction::Asc, 100, None)
            .expect("timeline");
        assert_eq!(full.items[0].event, event(2, 0, Status::Created));
        assert_eq!(full.items.len(), 4);
        assert!(engine.verify().expect("verify").is_ok());
    }
    for o in 0..6 {
        assert_eq!(
            timeline(&primary, o, Direction::Desc, 3),
            timeline(&replica, o, Direction::Desc, 3)
        );
    }
    // Promoted, the replica appends copies next to its positions; timelines and erasure read both.
    replica.promote().expect("promote");
    replica
        .append(vec![event(3, 4, Status::Delivered)])
        .expect("append");
    assert_eq!(timeline(&replica, 3, Direction::Asc, 2).len(), 5);
    replica.erase_order("o-003").expect("erase");
    assert!(timeline(&replica, 3, Direction::Asc, 100).is_empty());
    assert_eq!(replica.order_state("o-003").expect("state"), None);
    let report = replica.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    drop((primary, replica));

    let copies = by_order_values(pdir.path());
    assert_eq!(copies.len(), 24);
    assert!(copies.iter().all(|v| !v.is_empty()));
    let positions = by_order_values(rdir.path());
    assert_eq!(positions.len(), 20);
    assert!(positions.iter().all(|v| v.is_empty()));
    assert_eq!(format_of(pdir.path()), b"trackstore-engine-2");
}

/// Marks a store format 1: a primary's appends left it as format 1 wrote it (a copy of every event
/// in `by_order`).
fn make_format_1(dir: &Path) {
    let db = store::open(&db_path(dir), &store::Tuning::default()).expect("raw open");
    let meta = store::handle(&db, Cf::Meta).expect("cf");
    db.put_cf(meta, keys::META_FORMAT, b"trackstore-engine-1")
        .expect("put");
}

#[test]
fn a_format_1_store_opens_reads_verifies_erases_and_becomes_format_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    fill(&engine);
    let before: Vec<Vec<u64>> = (0..6)
        .map(|o| timeline(&engine, o, Direction::Asc, 2))
        .collect();
    drop(engine);
    make_format_1(dir.path());
    assert!(by_order_values(dir.path()).iter().all(|v| !v.is_empty()));

    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open format 1");
    let after: Vec<Vec<u64>> = (0..6)
        .map(|o| timeline(&engine, o, Direction::Asc, 2))
        .collect();
    assert_eq!(before, after);
    assert!(engine.verify().expect("verify").is_ok());
    // New events next to the old copies; an erasure reads both kinds.
    engine
        .append(vec![event(3, 4, Status::Delivered)])
        .expect("append");
    assert_eq!(timeline(&engine, 3, Direction::Asc, 100).len(), 5);
    engine.erase_order("o-003").expect("erase");
    assert!(timeline(&engine, 3, Direction::Asc, 100).is_empty());
    assert_eq!(engine.order_state("o-003").expect("state"), None);
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    drop(engine);
    assert_eq!(format_of(dir.path()), b"trackstore-engine-2");
}

#[test]
fn an_unknown_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Engine::open(dir.path(), EngineOptions::default()).expect("open"));
    {
        let db = store::open(&db_path(dir.path()), &store::Tuning::default()).expect("raw open");
        db.put_cf(
            store::handle(&db, Cf::Meta).expect("meta"),
            keys::META_FORMAT,
            b"trackstore-engine-3",
        )
        .expect("put");
    }
    match Engine::open(dir.path(), EngineOptions::default()) {
        Err(Error::Corrupt(m)) => assert!(m.contains("trackstore-engine-3"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a store of an unknown format opened"),
    }
}

#[test]
fn a_by_order_entry_without_its_event_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    fill(&engine);
    drop(engine);
    {
        let db = store::open(&db_path(dir.path()), &store::Tuning::default()).expect("raw open");
        // A position of order 4 pointing to order 5's event.
        let pos = keys::TimePos {
            at: Timestamp::from_millis(BASE_MS).expect("in range"),
            lsn: trackstore_engine::Lsn(6),
        };
        db.put_cf(
            store::handle(&db, Cf::ByOrder).expect("cf"),
            keys::by_order("o-004", pos),
            b"",
        )
        .expect("put");
    }
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    match engine.order_timeline("o-004", Direction::Asc, 100, None) {
        Err(Error::Corrupt(m)) => assert!(m.contains("o-005"), "{m}"),
        other => panic!("expected a corrupt index, got {other:?}"),
    }
    assert!(!engine.verify().expect("verify").is_ok());
}

/// Compactions run at nice 19 (`store::open`): a thread of RocksDB's low-priority pool lowers its
/// priority when it takes its first job.
#[cfg(target_os = "linux")]
#[test]
fn compactions_run_at_the_lowest_cpu_priority() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    fill(&engine);
    engine.flush().expect("flush");
    engine.compact().expect("compact");
    let mut low = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("tasks") {
        let task = task.expect("task").path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() != "rocksdb:low" {
            continue;
        }
        let stat = std::fs::read_to_string(task.join("stat")).expect("stat");
        // Fields after the command's closing parenthesis: state is field 3, nice field 19.
        let after = &stat[stat.rfind(')').expect("comm end") + 2..];
        let nice: i32 = after
            .split(' ')
            .nth(16)
            .expect("nice")
            .parse()
            .expect("number");
        low.push(nice);
    }
    assert!(!low.is_empty(), "no compaction thread found");
    assert!(
        low.iter().all(|n| *n == 19),
        "compaction threads' nice values: {low:?}"
    );
}
