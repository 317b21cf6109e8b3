//! The status index's deletes are single deletes: an order's passage through a status leaves
//! nothing behind once the memtable is flushed, so "orders in status" queries do not step over
//! tombstones (bench/RESULTS.md, session 9).

use trackstore_engine::store::{self, Cf};
use trackstore_engine::{Engine, EngineOptions, Event, Status, Timestamp, db_path, keys};

const BASE_MS: i64 = 1_700_000_000_000;
const ORDERS: usize = 200;

fn event(order: usize, step: usize, status: Status) -> Event {
    Event {
        event_id: format!("e-{order}-{step}"),
        order_id: format!("o-{order:04}"),
        status,
        occurred_at: Timestamp::from_millis(BASE_MS + (order * 10 + step) as i64 * 1_000)
            .expect("in range"),
        source: None,
        carrier: Some("van-1".to_owned()),
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

#[test]
fn an_order_passing_through_statuses_leaves_no_entry_behind_after_a_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let path = [
        Status::Created,
        Status::Allocated,
        Status::Picked,
        Status::InTransit,
    ];
    // One request per step: each status change is its own group, a put and a delete in the memtable.
    for (step, status) in path.into_iter().enumerate() {
        for order in 0..ORDERS {
            engine
                .append(vec![event(order, step, status)])
                .expect("append");
        }
    }
    engine.flush().expect("flush");
    // The estimate counts an SST's entries less twice its deletions: with Deletes the three left
    // statuses would leave 600 tombstones (and the estimate far below the 200 live entries); with
    // single deletes the flush drops each delete with its put, and only the live entries remain.
    let keys = engine
        .property(Cf::StatusIndex, "rocksdb.estimate-num-keys")
        .expect("property")
        .expect("an integer property");
    assert_eq!(keys, ORDERS as u64);
    for status in [Status::Created, Status::Allocated, Status::Picked] {
        let page = engine
            .orders_in_status(status, None, 100, None)
            .expect("query");
        assert!(page.items.is_empty(), "{status:?}: {:?}", page.items.len());
    }
    let mut cursor = None;
    let mut seen = 0;
    loop {
        let page = engine
            .orders_in_status(Status::InTransit, None, 64, cursor.as_deref())
            .expect("query");
        seen += page.items.len();
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ORDERS);
    engine.compact().expect("compact");
    // A compaction that failed (as one where a single delete meets a delete does) poisons the
    // store; `compact` does not report it, the next write and flush do.
    engine
        .append(vec![event(ORDERS, 9, Status::Created)])
        .expect("a write after the compaction");
    engine.flush().expect("no background error");
    let keys = engine
        .property(Cf::StatusIndex, "rocksdb.estimate-num-keys")
        .expect("property")
        .expect("an integer property");
    assert_eq!(keys, ORDERS as u64 + 1);
}

/// Stores written before single deletes hold Deletes of status index entries. Their history is
/// emulated with raw writes (an entry deleted, and put again, as an order leaving a status and
/// coming back made it), some flushed and compacted into SST files, some left in the WAL; then the
/// engine moves every order on, and flushes and compactions must meet the old Deletes cleanly.
#[test]
fn a_store_with_the_deletes_of_earlier_versions_takes_single_deletes_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
        for order in 0..ORDERS {
            engine
                .append(vec![event(order, 0, Status::Created)])
                .expect("append");
        }
    }
    {
        let db = store::open(&db_path(dir.path()), &store::Tuning::default()).expect("raw open");
        let h = store::handle(&db, Cf::StatusIndex).expect("handle");
        for order in 0..ORDERS {
            let id = format!("o-{order:04}");
            let mut batch = rocksdb::WriteBatch::default();
            // Once allocated and back (the allocated entry put, then deleted)...
            batch.put_cf(h, keys::status_index(Status::Allocated, &id), []);
            batch.delete_cf(h, keys::status_index(Status::Allocated, &id));
            // ...and the created entry deleted and put again.
            batch.delete_cf(h, keys::status_index(Status::Created, &id));
            batch.put_cf(h, keys::status_index(Status::Created, &id), []);
            db.write(batch).expect("legacy write");
            if order == ORDERS / 2 {
                db.flush_cf(h).expect("flush");
                db.compact_range_cf(h, None::<&[u8]>, None::<&[u8]>);
            }
        }
    }
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    for (step, status) in [Status::Allocated, Status::Picked].into_iter().enumerate() {
        for order in 0..ORDERS {
            engine
                .append(vec![event(order, step + 1, status)])
                .expect("append");
        }
        engine.flush().expect("flush");
        engine.compact().expect("compact");
    }
    engine
        .append(vec![event(ORDERS, 9, Status::Created)])
        .expect("a write after the compactions");
    engine.flush().expect("no background error");
    assert_eq!(engine.poisoned(), None);
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "{:?}", report.problems);
    for (status, want) in [
        (Status::Created, 1),
        (Status::Allocated, 0),
        (Status::Picked, ORDERS),
    ] {
        let page = engine
            .orders_in_status(status, None, 1_000, None)
            .expect("query");
        assert_eq!(page.items.len(), want, "{status:?}");
    }
}

/// A put and its single delete written between two flushes sit in different L0 files, hidden from
/// queries only until a compaction meets them, so the status index compacts every 2 L0 files
/// instead of the other index families' 8 (`store::cf_options`).
#[test]
fn the_status_index_compacts_its_level_0_early() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let path = [
        Status::Created,
        Status::Allocated,
        Status::Picked,
        Status::InTransit,
    ];
    let l0 = |cf| {
        engine
            .property(cf, "rocksdb.num-files-at-level0")
            .expect("property")
            .expect("an integer property")
    };
    for (step, status) in path.into_iter().enumerate() {
        let events = (0..ORDERS)
            .map(|order| event(order, step, status))
            .collect();
        engine.append(events).expect("append");
        engine.flush().expect("flush");
    }
    // The flushes happened: `orders` keeps its 4 L0 files (below its trigger of 8).
    assert_eq!(l0(Cf::Orders), path.len() as u64);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // RocksDB compacts once the L0 holds 2 files; with the other families' 8 these 4 would stay.
    while l0(Cf::StatusIndex) >= 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "status_index still has {} L0 files",
            l0(Cf::StatusIndex)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The compactions met the puts with their single deletes and dropped the pairs: at most the
    // last flush's 200 deletes (of `picked`, if its L0 file is still alone) remain, against 600 in
    // 4 uncompacted files.
    drop(engine);
    let db = store::open(&db_path(dir.path()), &store::Tuning::default()).expect("raw open");
    let deletes: u64 = db
        .live_files()
        .expect("live files")
        .iter()
        .filter(|f| f.column_family_name == Cf::StatusIndex.name())
        .map(|f| f.num_deletions)
        .sum();
    assert!(deletes <= ORDERS as u64, "{deletes} deletes left");
}

fn carried(order: usize, step: usize, status: Status, carrier: &str) -> Event {
    Event {
        carrier: Some(carrier.to_owned()),
        ..event(order, step, status)
    }
}

fn in_status(engine: &Engine, status: Status, carrier: Option<&str>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine
            .orders_in_status(status, carrier, 3, cursor.as_deref())
            .expect("query");
        ids.extend(page.items.into_iter().map(|s| s.order_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return ids,
        }
    }
}

fn ids(orders: &[usize]) -> Vec<String> {
    orders.iter().map(|o| format!("o-{o:04}")).collect()
}

/// A status index entry records the order's carrier, so a carrier filter skips other carriers'
/// orders without reading their states; a carrier change alone rewrites the entry (a single delete
/// and a put of the same key), through flushes, compactions and a reopen.
#[test]
fn a_carrier_filter_follows_carrier_changes_through_compactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    for order in 0..10 {
        let carrier = if order % 2 == 0 { "dpd" } else { "ups" };
        engine
            .append(vec![carried(order, 0, Status::InTransit, carrier)])
            .expect("append");
    }
    engine.flush().expect("flush");
    // Order 0 moves to ups, order 1 to dpd, in the same status; order 2's late event names dhl but
    // is older than its state's carrier, so nothing changes for it.
    engine
        .append(vec![
            carried(0, 1, Status::InTransit, "ups"),
            carried(1, 1, Status::InTransit, "dpd"),
        ])
        .expect("append");
    engine
        .append(vec![Event {
            occurred_at: Timestamp::from_millis(BASE_MS).expect("in range"),
            ..carried(2, 1, Status::InTransit, "dhl")
        }])
        .expect("append");
    let check = |engine: &Engine, when: &str| {
        assert_eq!(
            in_status(engine, Status::InTransit, Some("ups")),
            ids(&[0, 3, 5, 7, 9]),
            "{when}"
        );
        assert_eq!(
            in_status(engine, Status::InTransit, Some("dpd")),
            ids(&[1, 2, 4, 6, 8]),
            "{when}"
        );
        assert!(
            in_status(engine, Status::InTransit, Some("dhl")).is_empty(),
            "{when}"
        );
        assert_eq!(
            in_status(engine, Status::InTransit, None),
            ids(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
            "{when}"
        );
        let report = engine.verify().expect("verify");
        assert!(report.is_ok(), "{when}: {report:?}");
    };
    check(&engine, "in the memtable");
    engine.flush().expect("flush");
    check(&engine, "flushed");
    engine.compact().expect("compact");
    engine
        .append(vec![carried(20, 0, Status::Created, "dpd")])
        .expect("a write after the compaction");
    engine.flush().expect("no background error");
    check(&engine, "compacted");
    drop(engine);
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    check(&engine, "reopened");
    // The entries rewritten for a carrier change then leave their status. Had the rewrite been a
    // second put over the first (no single delete in between), a single delete would meet the
    // newer put and the older one would come back after compaction: order 0 listed as in transit.
    engine
        .append(vec![
            carried(0, 2, Status::Delivered, "ups"),
            carried(1, 2, Status::Delivered, "dpd"),
        ])
        .expect("append");
    engine.flush().expect("flush");
    engine.compact().expect("compact");
    engine
        .append(vec![carried(21, 0, Status::Created, "dpd")])
        .expect("a write after the compaction");
    engine.flush().expect("no background error");
    assert_eq!(
        in_status(&engine, Status::InTransit, None),
        ids(&[2, 3, 4, 5, 6, 7, 8, 9])
    );
    assert_eq!(
        in_status(&engine, Status::Delivered, Some("ups")),
        ids(&[0])
    );
    assert_eq!(
        in_status(&engine, Status::Delivered, Some("dpd")),
        ids(&[1])
    );
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
}

/// Entries written before store format 3 are empty: the order's state decides the filter. A recorded
/// carrier that disagrees with the state is corruption, and `verify` says so.
#[test]
fn older_entries_are_filtered_by_the_state_and_verify_checks_recorded_carriers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    for order in 0..4 {
        engine
            .append(vec![carried(order, 0, Status::Picked, "dpd")])
            .expect("append");
    }
    drop(engine);
    // Raw puts over live entries (a second put without a single delete): harmless here, as no
    // later write moves these orders.
    {
        let db = store::open(&db_path(dir.path()), &store::Tuning::default()).expect("raw open");
        let h = store::handle(&db, Cf::StatusIndex).expect("status_index");
        db.put_cf(h, keys::status_index(Status::Picked, "o-0000"), [])
            .expect("an entry as formats 1 and 2 wrote it");
        db.put_cf(
            h,
            keys::status_index(Status::Picked, "o-0001"),
            trackstore_engine::codec::encode_status_entry(Some("dhl")),
        )
        .expect("a corrupt entry");
    }
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    assert_eq!(
        in_status(&engine, Status::Picked, Some("dpd")),
        ids(&[0, 2, 3])
    );
    // The empty entry of order 0 says nothing: its state (dpd) decides, and keeps it out.
    assert!(in_status(&engine, Status::Picked, Some("ups")).is_empty());
    let report = engine.verify().expect("verify");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].contains("o-0001") && report.problems[0].contains("\"dhl\""),
        "{report:?}"
    );
}
