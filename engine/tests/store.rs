//! The RocksDB store under the engine. A `by_order` entry holds a copy of its event (a primary's
//! appends) or its position only (a replica's applies: the timeline fetches the event from the log);
//! only a store that holds positions is marked format 2. Compactions run at the lowest CPU priority.

use std::path::Path;

use trackstore_engine::store::{self, Cf};
use trackstore_engine::{
    Direction, Engine, EngineOptions, Error, Event, InMemory, Status, Timestamp, db_path, keys,
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
    // A replica's positions need the log: never answered from memory (RocksDB's batched MultiGet
    // would read data blocks from disk in the block-cache-only tier); a primary's copies are.
    for o in 0..6 {
        let id = format!("o-{o:03}");
        assert_eq!(
            replica
                .order_timeline_in_memory(&id, Direction::Asc, 10, None)
                .expect("in memory"),
            InMemory::NeedsDisk
        );
        match primary
            .order_timeline_in_memory(&id, Direction::Asc, 10, None)
            .expect("in memory")
        {
            InMemory::Answered(page) => assert_eq!(page.items.len(), 4),
            InMemory::NeedsDisk => panic!("the primary's memtable holds order {id}"),
        }
    }
    // Promoted, the replica appends copies next to its positions; timelines and erasure read both,
    // in order, pages of two mixing both kinds.
    replica.promote().expect("promote");
    let added: Vec<u64> = replica
        .append(vec![
            event(3, 4, Status::Delivered),
            event(4, 4, Status::Delivered),
        ])
        .expect("append")
        .into_iter()
        .map(|o| o.lsn().0)
        .collect();
    for (o, new) in [(3, added[0]), (4, added[1])] {
        let asc = timeline(&replica, o, Direction::Asc, 2);
        let mut want = timeline(&primary, o, Direction::Asc, 100);
        // Order 3's steps occurred in reverse (the new one first), order 4's in order.
        if o == 3 {
            want.insert(0, new);
        } else {
            want.push(new);
        }
        assert_eq!(asc, want, "order {o}");
        let mut desc = timeline(&replica, o, Direction::Desc, 2);
        desc.reverse();
        assert_eq!(desc, asc, "order {o}");
    }
    replica.erase_order("o-003").expect("erase");
    assert!(timeline(&replica, 3, Direction::Asc, 100).is_empty());
    assert_eq!(replica.order_state("o-003").expect("state"), None);
    let report = replica.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    drop((primary, replica));

    let copies = by_order_values(pdir.path());
    assert_eq!(copies.len(), 24);
    assert!(copies.iter().all(|v| !v.is_empty()));
    let values = by_order_values(rdir.path());
    assert_eq!(values.len(), 21);
    assert_eq!(values.iter().filter(|v| v.is_empty()).count(), 20);
    // Every store this build wrote to is format 3 (its status index records carriers).
    assert_eq!(format_of(pdir.path()), b"trackstore-engine-3");
    assert_eq!(format_of(rdir.path()), b"trackstore-engine-3");
    let reopened = Engine::open(rdir.path(), EngineOptions::default()).expect("reopen format 3");
    assert_eq!(timeline(&reopened, 4, Direction::Asc, 3).len(), 5);
    assert!(reopened.verify().expect("verify").is_ok());
}

#[test]
fn a_primary_refuses_replicated_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    fill(&engine);
    let entries = engine
        .read_log(trackstore_engine::Lsn(1), 10)
        .expect("read log");
    assert!(matches!(
        engine.apply_replicated(entries, engine.epoch()),
        Err(Error::InvalidArgument(_))
    ));
}

fn set_format(dir: &Path, format: &[u8]) {
    let db = store::open(&db_path(dir), &store::Tuning::default()).expect("raw open");
    db.put_cf(
        store::handle(&db, Cf::Meta).expect("meta"),
        keys::META_FORMAT,
        format,
    )
    .expect("put");
}

/// A store of an older build (formats 1 and 2) keeps its format while this build only reads it (an
/// operator's `trackctl verify`), so the older build can still open it; this build's first write
/// marks it format 3, after which the older build refuses it.
#[test]
fn an_older_store_becomes_format_3_at_its_first_write_not_by_reads() {
    for older in [&b"trackstore-engine-1"[..], b"trackstore-engine-2"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
        fill(&engine);
        drop(engine);
        assert_eq!(format_of(dir.path()), b"trackstore-engine-3", "a new store");
        set_format(dir.path(), older);
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open older");
        assert!(engine.verify().expect("verify").is_ok());
        assert_eq!(timeline(&engine, 1, Direction::Asc, 100).len(), STEPS.len());
        drop(engine);
        assert_eq!(format_of(dir.path()), older, "reads keep the format");
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open older");
        engine
            .append(vec![event(9, 0, Status::Created)])
            .expect("append");
        drop(engine);
        assert_eq!(
            format_of(dir.path()),
            b"trackstore-engine-3",
            "after a write"
        );
    }
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
            b"trackstore-engine-4",
        )
        .expect("put");
    }
    match Engine::open(dir.path(), EngineOptions::default()) {
        Err(Error::Corrupt(m)) => assert!(m.contains("trackstore-engine-4"), "{m}"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a store of an unknown format opened"),
    }
}

#[test]
fn a_position_without_its_event_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    fill(&engine);
    drop(engine);
    {
        let db = store::open(&db_path(dir.path()), &store::Tuning::default()).expect("raw open");
        let at = Timestamp::from_millis(BASE_MS).expect("in range");
        let by_order = store::handle(&db, Cf::ByOrder).expect("cf");
        // Order 4: a position of order 5's event (LSN 6). Order 0: a position past the log's end.
        let put = |order: &str, lsn: u64| {
            let pos = keys::TimePos {
                at,
                lsn: trackstore_engine::Lsn(lsn),
            };
            db.put_cf(by_order, keys::by_order(order, pos), b"")
                .expect("put");
        };
        put("o-004", 6);
        put("o-000", 999);
    }
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    match engine.order_timeline("o-004", Direction::Asc, 100, None) {
        Err(Error::Corrupt(m)) => assert!(m.contains("o-005"), "{m}"),
        other => panic!("expected a corrupt index, got {other:?}"),
    }
    match engine.order_timeline("o-000", Direction::Desc, 100, None) {
        Err(Error::Corrupt(m)) => assert!(m.contains("missing LSN 999"), "{m}"),
        other => panic!("expected a corrupt index, got {other:?}"),
    }
    let report = engine.verify().expect("verify");
    assert!(!report.is_ok());
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
    // A thread of the pool that has not run a job yet is still at 0.
    assert!(
        low.contains(&19),
        "compaction threads' nice values: {low:?}"
    );
}
