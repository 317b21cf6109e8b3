//! A failed write poisons the engine: the request fails, later writes are refused (even once the disk
//! is healthy), reads keep working, and a reopen recovers without the failed write having taken an LSN.
//! Its own test binary, because failpoints are process-global; the tests take turns (`FAILPOINTS`).
#![cfg(feature = "failpoints")]

use std::sync::Mutex;

use trackstore_engine::{
    Engine, EngineOptions, Error, Event, LogEntry, Lsn, Outcome, Status, StoredEvent, Timestamp,
};

/// Failpoints are global to the process: one test at a time configures them.
static FAILPOINTS: Mutex<()> = Mutex::new(());

fn event(id: &str, order: u64) -> Event {
    Event {
        event_id: id.to_owned(),
        order_id: format!("o-{order}"),
        status: Status::Dispatched,
        occurred_at: Timestamp::from_millis(1_700_000_000_000).expect("in range"),
        source: None,
        carrier: None,
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

#[test]
fn a_failed_write_poisons_writes_but_not_reads() {
    let _turn = FAILPOINTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = fail::FailScenario::setup();
    {
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
        engine.append(vec![event("before", 1)]).expect("append");
        fail::cfg("engine::write_group", "return").expect("failpoint");
        let err = engine
            .append(vec![event("lost", 2)])
            .expect_err("write fails");
        assert!(matches!(err, Error::Poisoned(_)), "{err:?}");
        fail::remove("engine::write_group");
        // Even with the disk healthy again, the engine refuses writes until reopened.
        let err = engine
            .append(vec![event("after", 3)])
            .expect_err("poisoned");
        assert!(err.to_string().contains("reopen"), "{err}");
        assert!(engine.poisoned().is_some());
        assert_eq!(
            engine
                .order_state("o-1")
                .expect("reads work")
                .expect("present")
                .event_count,
            1
        );
        assert!(
            engine.order_state("o-2").expect("reads work").is_none(),
            "the failed write is not visible"
        );
        assert_eq!(engine.stats().last_lsn, Lsn(1));
    }
    scenario.teardown();
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    assert!(engine.poisoned().is_none());
    let out = engine
        .append(vec![event("after", 3)])
        .expect("append after reopen");
    assert_eq!(
        out,
        vec![Outcome::Created(Lsn(2))],
        "the failed write took no LSN"
    );
}

/// Replicated batches are planned while the group before them is written (writer.rs, `Pipeline`):
/// when that write fails, every batch planned over it fails too, nothing after the failure is
/// acknowledged, and the store keeps exactly the acknowledged prefix.
#[test]
fn a_failed_replicated_write_fails_every_batch_planned_over_it() {
    const BATCHES: u64 = 12;
    const EVENTS: u64 = 4_000;
    let _turn = FAILPOINTS.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let scenario = fail::FailScenario::setup();
    let received_at = Timestamp::from_millis(1_700_000_000_000).expect("in range");
    let batch = |b: u64| -> Vec<LogEntry> {
        (b * EVENTS + 1..=(b + 1) * EVENTS)
            .map(|lsn| {
                LogEntry::Event(StoredEvent {
                    lsn: Lsn(lsn),
                    received_at,
                    // Orders shared between batches: later groups update states the failed one
                    // planned.
                    event: event(&format!("e-{lsn}"), lsn % 997),
                })
            })
            .collect()
    };
    let acknowledged = {
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
        engine.set_read_only("a replica").expect("read-only");
        // The first group (it opens epoch 1) is written, the second fails, later writes would succeed.
        fail::cfg("engine::write_group", "1*off->1*return->off").expect("failpoint");
        let (tx, rx) = crossbeam_channel::unbounded();
        for b in 0..BATCHES {
            let tx = tx.clone();
            engine
                .submit_replicated(batch(b), 1, move |r| {
                    let _ = tx.send((b, r));
                })
                .expect("queued");
        }
        drop(tx);
        let mut results: Vec<(u64, Result<Lsn, Error>)> = rx.iter().collect();
        assert_eq!(results.len() as u64, BATCHES, "every batch is answered");
        results.sort_by_key(|(b, _)| *b);
        let acknowledged = results.iter().take_while(|(_, r)| r.is_ok()).count() as u64;
        assert!(
            (1..BATCHES - 1).contains(&acknowledged),
            "a prefix of the batches is acknowledged, then they fail: {results:?}"
        );
        for (b, r) in &results[acknowledged as usize..] {
            assert!(matches!(r, Err(Error::Poisoned(_))), "batch {b}: {r:?}");
        }
        assert_eq!(
            results[acknowledged as usize - 1].1.as_ref().ok(),
            Some(&Lsn(acknowledged * EVENTS))
        );
        assert_eq!(engine.stats().last_lsn, Lsn(acknowledged * EVENTS));
        fail::remove("engine::write_group");
        acknowledged
    };
    scenario.teardown();
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    let stats = engine.stats();
    assert_eq!(
        (stats.last_lsn, stats.events),
        (Lsn(acknowledged * EVENTS), acknowledged * EVENTS),
        "exactly the acknowledged batches are stored"
    );
}
