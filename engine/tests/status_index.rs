//! The status index's deletes are single deletes: an order's passage through a status leaves
//! nothing behind once the memtable is flushed, so "orders in status" queries do not step over
//! tombstones (bench/RESULTS.md, session 9).

use trackstore_engine::store::Cf;
use trackstore_engine::{Engine, EngineOptions, Event, Status, Timestamp};

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
    // Compaction keeps it so (a single delete that met a delete would fail it).
    engine.compact().expect("compact");
    let keys = engine
        .property(Cf::StatusIndex, "rocksdb.estimate-num-keys")
        .expect("property")
        .expect("an integer property");
    assert_eq!(keys, ORDERS as u64);
}
