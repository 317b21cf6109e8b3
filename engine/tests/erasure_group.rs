//! Erasures that arrive with appends share the append group's write (one fsync for both) unless the
//! group writes to one of the orders they erase; either way the erasures come after the group in the
//! log and the log's start never moves past the group's events. The writes are counted (and the
//! first one held, so that the next commands queue behind it) with the `engine::write_group`
//! failpoint: its own test binary, because failpoints are process-global.
#![cfg(feature = "failpoints")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use trackstore_engine::{
    Durability, Engine, EngineOptions, Event, LogEntry, Lsn, Outcome, RemovalKind, Status,
    Timestamp,
};

fn event(id: &str, order: &str, seconds: i64) -> Event {
    Event {
        event_id: id.to_owned(),
        order_id: order.to_owned(),
        status: Status::Dispatched,
        occurred_at: Timestamp::from_millis(1_700_000_000_000 + seconds * 1_000).expect("in range"),
        source: None,
        carrier: None,
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

fn open(dir: &std::path::Path) -> Engine {
    let options = EngineOptions {
        durability: Durability::NoSyncUnsafe,
        ..EngineOptions::default()
    };
    Engine::open(dir, options).expect("open")
}

/// Counts the engine's writes from now on; the first one waits `hold` (the writer is busy, the
/// next commands queue). Returns the counter.
fn count_writes(hold: Duration) -> Arc<AtomicUsize> {
    let writes = Arc::new(AtomicUsize::new(0));
    let w = writes.clone();
    fail::cfg_callback("engine::write_group", move || {
        if w.fetch_add(1, Ordering::SeqCst) == 0 {
            std::thread::sleep(hold);
        }
    })
    .expect("failpoint");
    writes
}

/// Waits until the first write is held.
fn until_held(writes: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while writes.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the first write never came");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn created(outcomes: &[Outcome]) -> Lsn {
    match outcomes {
        [Outcome::Created(lsn)] => *lsn,
        other => panic!("expected one new event, got {other:?}"),
    }
}

#[test]
fn erasures_share_the_write_of_the_group_they_came_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = fail::FailScenario::setup();
    {
        let engine = open(dir.path());
        // x: LSNs 1-3, y: LSNs 4-5. Erasing y (LSN 6), then x with an append to b: once both are
        // committed nothing before b's event stays, so the log starts at b's event, which the
        // store does not hold yet while the erasure of x is staged.
        for (i, order) in ["x", "x", "x", "y", "y"].iter().enumerate() {
            engine
                .append(vec![event(&format!("e{i}"), order, i as i64)])
                .expect("append");
        }
        let writes = count_writes(Duration::from_millis(1_000));
        let (erased_y, appended_b, erased_x) = std::thread::scope(|s| {
            let y = s.spawn(|| engine.erase_order("y"));
            until_held(&writes);
            let b = s.spawn(|| engine.append(vec![event("b1", "b", 100)]));
            let x = s.spawn(|| engine.erase_order("x"));
            (
                y.join().expect("thread"),
                b.join().expect("thread"),
                x.join().expect("thread"),
            )
        });
        fail::remove("engine::write_group");
        let erased_y = erased_y.expect("erase y").expect("y found");
        let b = created(&appended_b.expect("append b"));
        let erased_x = erased_x.expect("erase x").expect("x found");
        assert_eq!(
            writes.load(Ordering::SeqCst),
            2,
            "the erasure of y alone, then the append of b and the erasure of x in one write"
        );
        assert_eq!((erased_y.lsn, b, erased_x.lsn), (Lsn(6), Lsn(7), Lsn(8)));
        assert_eq!((erased_y.events, erased_x.events), (2, 3));
        check_after(&engine, b);
        engine.close();
    }
    scenario.teardown();
    // Durable as one: the reopened store is the same.
    let engine = open(dir.path());
    check_after(&engine, Lsn(7));
}

fn check_after(engine: &Engine, b: Lsn) {
    assert_eq!(
        engine.first_lsn(),
        b,
        "the log starts at b's event, not past it"
    );
    let log = engine.read_log(Lsn(1), 100).expect("read log");
    let lsns: Vec<Lsn> = log.iter().map(LogEntry::lsn).collect();
    assert_eq!(lsns, vec![Lsn(7), Lsn(8)]);
    assert!(matches!(&log[0], LogEntry::Event(e) if e.event.order_id == "b"));
    assert!(matches!(
        &log[1],
        LogEntry::Removal(r) if matches!(r.kind, RemovalKind::Erasure { .. })
            && r.lsns == vec![Lsn(1), Lsn(2), Lsn(3)]
    ));
    for gone in ["x", "y"] {
        assert!(engine.order_state(gone).expect("read").is_none(), "{gone}");
    }
    assert_eq!(
        engine
            .order_state("b")
            .expect("read")
            .expect("b")
            .event_count,
        1
    );
    let stats = engine.stats();
    assert_eq!((stats.events, stats.orders, stats.last_lsn), (1, 1, Lsn(8)));
    assert_eq!(engine.purge_pending(), Some(Lsn(8)));
}

#[test]
fn an_erasure_of_an_order_the_group_writes_to_gets_its_own_write_after_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = fail::FailScenario::setup();
    let engine = open(dir.path());
    for i in 0..3 {
        engine
            .append(vec![event(&format!("x{i}"), "x", i)])
            .expect("append");
    }
    let writes = count_writes(Duration::from_millis(1_000));
    let (held, appended, erased) = std::thread::scope(|s| {
        let held = s.spawn(|| engine.append(vec![event("h", "held", 0)]));
        until_held(&writes);
        let appended = s.spawn(|| engine.append(vec![event("x3", "x", 3)]));
        let erased = s.spawn(|| engine.erase_order("x"));
        (
            held.join().expect("thread"),
            appended.join().expect("thread"),
            erased.join().expect("thread"),
        )
    });
    fail::remove("engine::write_group");
    assert_eq!(created(&held.expect("held append")), Lsn(4));
    let x3 = created(&appended.expect("append x3"));
    let erased = erased.expect("erase x").expect("x found");
    assert_eq!(
        writes.load(Ordering::SeqCst),
        3,
        "the held append, the append to x, then the erasure of x in a write of its own"
    );
    // The erasure comes after the append to x in the same round and removes it too.
    assert_eq!((x3, erased.lsn, erased.events), (Lsn(5), Lsn(6), 4));
    assert!(engine.order_state("x").expect("read").is_none());
    assert_eq!(engine.stats().events, 1);
    engine.close();
    scenario.teardown();
}

#[test]
fn a_failed_shared_write_fails_the_appends_and_the_erasures_and_keeps_what_was_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = fail::FailScenario::setup();
    {
        let engine = open(dir.path());
        // x: LSNs 1-3, y: LSNs 4-5.
        for (i, order) in ["x", "x", "x", "y", "y"].iter().enumerate() {
            engine
                .append(vec![event(&format!("e{i}"), order, i as i64)])
                .expect("append");
        }
        // The erasure of y is written alone (held); the append to b and the erasure of x queue
        // behind it and share the next write, which fails.
        let writes = count_writes(Duration::from_millis(1_000));
        let (erased_y, appended_b, erased_x) = std::thread::scope(|s| {
            let y = s.spawn(|| engine.erase_order("y"));
            until_held(&writes);
            let b = s.spawn(|| engine.append(vec![event("b1", "b", 100)]));
            let x = s.spawn(|| engine.erase_order("x"));
            // Both queued while the write of y is still held: they make the next group.
            let deadline = Instant::now() + Duration::from_secs(10);
            while engine.writer_queue_len() < 2 {
                assert!(
                    Instant::now() < deadline,
                    "the append and the erasure never queued"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            assert_eq!(
                writes.load(Ordering::SeqCst),
                1,
                "still inside the held write"
            );
            // From the next write on, writing fails.
            fail::cfg("engine::write_group", "return").expect("failpoint");
            (
                y.join().expect("thread"),
                b.join().expect("thread"),
                x.join().expect("thread"),
            )
        });
        fail::remove("engine::write_group");
        let erased_y = erased_y.expect("erase y").expect("y found");
        assert_eq!(erased_y.lsn, Lsn(6));
        let b = appended_b.expect_err("the shared write failed");
        let x = erased_x.expect_err("the shared write failed");
        for e in [&b, &x] {
            assert!(matches!(e, trackstore_engine::Error::Poisoned(_)), "{e:?}");
        }
        check_failed_group(&engine);
        // Poisoned: no write is taken any more, reads go on.
        assert!(engine.poisoned().is_some());
        assert!(engine.erase_order("x").is_err());
        engine.close();
    }
    // Nothing of the failed write survives a reopen; the erasure before it does. (Still inside
    // the scenario: its lock keeps the other tests' failpoint callbacks from counting these writes.)
    let engine = open(dir.path());
    assert!(engine.poisoned().is_none());
    check_failed_group(&engine);
    let b = created(&engine.append(vec![event("b1", "b", 100)]).expect("append"));
    assert_eq!(b, Lsn(7), "the failed write took no LSN");
    let erased_x = engine.erase_order("x").expect("erase").expect("x found");
    assert_eq!((erased_x.lsn, erased_x.events), (Lsn(8), 3));
    engine.close();
    scenario.teardown();
}

/// The store after the erasure of y committed and the write of b and of x's erasure failed.
fn check_failed_group(engine: &Engine) {
    assert!(engine.order_state("y").expect("read").is_none());
    assert!(engine.order_state("b").expect("read").is_none());
    assert_eq!(
        engine
            .order_state("x")
            .expect("read")
            .expect("x stays")
            .event_count,
        3
    );
    let stats = engine.stats();
    assert_eq!((stats.events, stats.orders, stats.last_lsn), (3, 1, Lsn(6)));
    let lsns: Vec<Lsn> = engine
        .read_log(Lsn(1), 100)
        .expect("read log")
        .iter()
        .map(LogEntry::lsn)
        .collect();
    // x's events, y's (erased: tombstones or gone), y's erasure; nothing after it.
    assert!(lsns.len() >= 4, "{lsns:?}");
    assert_eq!(lsns[..3], [Lsn(1), Lsn(2), Lsn(3)]);
    assert_eq!(lsns.last(), Some(&Lsn(6)));
}
