//! trackctl's offline commands against real stores, including a deliberately corrupted one.

use std::process::Command;

use trackstore_engine::{Engine, EngineOptions, Event, Status, Timestamp, store::Cf};

fn fill(dir: &std::path::Path) {
    let engine = Engine::open(dir, EngineOptions::default()).expect("open");
    let events: Vec<Event> = (0..50)
        .map(|i| Event {
            event_id: format!("e{i}"),
            order_id: format!("o{}", i % 5),
            status: Status::ALL[i % 12],
            occurred_at: Timestamp::from_millis(1_700_000_000_000 + i as i64).expect("in range"),
            source: None,
            carrier: Some("van".into()),
            reason: None,
            location: None,
            eta: None,
            attributes: None,
        })
        .collect();
    engine.append(events).expect("append");
}

fn trackctl(args: &[&std::ffi::OsStr]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_trackctl"))
        .args(args)
        .output()
        .expect("run trackctl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn verify_passes_a_healthy_store_and_checkpoint_copies_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path());
    let (code, out) = trackctl(&["verify".as_ref(), dir.path().as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 50 events and 5 orders"), "{out}");
    let dest = dir.path().join("copy");
    let (code, out) = trackctl(&[
        "checkpoint".as_ref(),
        dir.path().as_os_str(),
        dest.as_os_str(),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = trackctl(&["verify".as_ref(), dest.as_os_str()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 50 events"), "{out}");
}

#[test]
fn verify_detects_a_corrupted_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    fill(dir.path());
    {
        // Corrupt it behind the engine's back: drop one index entry and damage one state.
        let db = rocksdb::DB::open_cf(
            &rocksdb::Options::default(),
            trackstore_engine::db_path(dir.path()),
            Cf::ALL.map(Cf::name),
        )
        .expect("raw open");
        db.delete_cf(db.cf_handle("event_ids").expect("cf"), b"e7")
            .expect("delete");
        db.put_cf(db.cf_handle("orders").expect("cf"), b"o3", b"\x01garbage")
            .expect("put");
    }
    let (code, out) = trackctl(&["verify".as_ref(), dir.path().as_os_str()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("event id \"e7\" of LSN 8 is missing"), "{out}");
    assert!(out.contains("order \"o3\""), "{out}");
    let (code, out) = trackctl(&[
        "verify".as_ref(),
        dir.path().join("nothing-here").as_os_str(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("holds no store"), "{out}");
}
