//! Group commit under concurrency: LSNs stay unique and gap-free, commit listeners see each new event
//! once, epochs are recorded durably. (The failed-write test is in `poison.rs`: failpoints are global.)

use std::sync::Arc;

use trackstore_engine::{Engine, EngineOptions, Error, Event, Lsn, Outcome, Status, Timestamp};

fn event(id: String, order: u64) -> Event {
    Event {
        event_id: id,
        order_id: format!("o-{order}"),
        status: Status::Dispatched,
        occurred_at: Timestamp::from_millis(1_700_000_000_000 + order as i64).expect("in range"),
        source: None,
        carrier: None,
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

#[test]
fn concurrent_writers_get_unique_gap_free_lsns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Arc::new(Engine::open(dir.path(), EngineOptions::default()).expect("open"));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let engine = engine.clone();
            std::thread::spawn(move || {
                let mut lsns = Vec::new();
                for i in 0..50u64 {
                    let out = engine
                        .append(vec![event(format!("t{t}-{i}"), i % 7)])
                        .expect("append");
                    let [Outcome::Created(lsn)] = out[..] else {
                        panic!("{out:?}")
                    };
                    lsns.push(lsn.0);
                }
                lsns
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    assert_eq!(engine.stats().events, 800);
    assert_eq!(
        engine.wait_for_commit(Lsn(0), std::time::Duration::ZERO),
        Lsn(800)
    );
}

#[test]
fn commit_listeners_see_every_new_event_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
    let (tx, rx) = crossbeam_channel::unbounded();
    engine.on_commit(move |info| {
        for e in info.new_events {
            let _ = tx.send(e.lsn.0);
        }
    });
    for i in 0..20u64 {
        engine
            .append(vec![event(format!("a{i}"), i), event(format!("b{i}"), i)])
            .expect("append");
        engine
            .append(vec![event(format!("a{i}"), i)])
            .expect("duplicate");
    }
    let seen: Vec<u64> = rx.try_iter().collect();
    assert_eq!(seen, (1..=40).collect::<Vec<_>>());
}

#[test]
fn epochs_are_recorded_durably_and_only_grow() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let engine = Engine::open(dir.path(), EngineOptions::default()).expect("open");
        assert_eq!(engine.record_epoch(1).expect("epoch 1"), Lsn(1));
        engine
            .append(vec![event("x".into(), 1), event("y".into(), 2)])
            .expect("append");
        assert_eq!(engine.record_epoch(2).expect("epoch 2"), Lsn(3));
        assert!(matches!(
            engine.record_epoch(2),
            Err(Error::InvalidArgument(_))
        ));
    }
    let engine = Engine::open(dir.path(), EngineOptions::default()).expect("reopen");
    assert_eq!(engine.epoch_history(), vec![(1, Lsn(1)), (2, Lsn(3))]);
}
