//! A failed write poisons the engine: the request fails, later writes are refused (even once the disk
//! is healthy), reads keep working, and a reopen recovers without the failed write having taken an LSN.
//! Its own test binary, because failpoints are process-global.
#![cfg(feature = "failpoints")]

use trackstore_engine::{Engine, EngineOptions, Error, Event, Lsn, Outcome, Status, Timestamp};

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
