//! GDPR erasure and retention against the real engine: what an erasure removes from every query and
//! what it leaves (a receipt an auditor can check), that `purge` takes the erased bytes off the disk,
//! that an erasure racing with ingest removes exactly the events committed before it, and that
//! retention steps remove exactly the old events and recompute the states of what remains.
//! model.rs checks the same operations against an in-memory model with random sequences; these
//! tests pin down the cases a model of small ids does not reach (real bytes on disk, threads).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};
use trackstore_engine::{
    Attributes, Direction, Durability, Engine, EngineOptions, Error, Event, Location, LogEntry,
    Lsn, OrderState, Outcome, Page, RemovalKind, RetentionReport, Status, StoredEvent, TimeRange,
    Timestamp,
};

const BASE_MS: i64 = 1_700_000_000_000;

/// No fsync: these tests check logic and bytes on disk after a clean close, not power loss.
fn fast() -> EngineOptions {
    EngineOptions {
        durability: Durability::NoSyncUnsafe,
        ..EngineOptions::default()
    }
}

fn open(dir: &Path) -> Engine {
    Engine::open(dir, fast()).expect("open")
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_millis(BASE_MS + seconds * 1_000).expect("in range")
}

fn event(event_id: &str, order_id: &str, status: Status, seconds: i64) -> Event {
    Event {
        event_id: event_id.to_owned(),
        order_id: order_id.to_owned(),
        status,
        occurred_at: at(seconds),
        source: None,
        carrier: None,
        reason: None,
        location: None,
        eta: None,
        attributes: None,
    }
}

fn with_carrier(mut e: Event, carrier: &str) -> Event {
    e.carrier = Some(carrier.to_owned());
    e
}

fn created(outcomes: &[Outcome]) -> Vec<Lsn> {
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Created(l) => *l,
            Outcome::Duplicate(l) => panic!("expected a new event, got a duplicate of LSN {l}"),
        })
        .collect()
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

/// The log from its first LSN (removals drop the log's prefix of tombstones and removal entries).
fn read_all(engine: &Engine) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = Vec::new();
    loop {
        let from = Lsn(out.last().map_or(engine.first_lsn().0, |e| e.lsn().0 + 1));
        let chunk = engine.read_log(from, 1_000).expect("read_log");
        if chunk.is_empty() {
            return out;
        }
        out.extend(chunk);
    }
}

fn timeline(engine: &Engine, order_id: &str) -> Vec<StoredEvent> {
    all_pages(|c| engine.order_timeline(order_id, Direction::Asc, 3, c))
}

fn in_status(engine: &Engine, status: Status) -> Vec<String> {
    all_pages(|c| engine.orders_in_status(status, None, 3, c))
        .into_iter()
        .map(|s| s.order_id)
        .collect()
}

fn everything(engine: &Engine) -> Vec<StoredEvent> {
    let q = TimeRange {
        from: Timestamp::MIN,
        to: at(1_000_000),
        statuses: vec![],
        carrier: None,
    };
    all_pages(|c| engine.time_range(&q, 4, c))
}

fn assert_verified(engine: &Engine) {
    let report = engine.verify().expect("verify");
    assert!(report.is_ok(), "verify: {:?}", report.problems);
}

fn assert_read_only(err: Error, reason: &str) {
    match err {
        Error::ReadOnly(r) => assert!(r.contains(reason), "{r:?} lacks {reason:?}"),
        other => panic!("expected ReadOnly({reason:?}), got {other:?}"),
    }
}

/// An erased order is gone from every query and from the stats; the erasure is a log entry with
/// tombstones for its events, a record that names the order only by digest, and the erased events
/// can be sent again as new events. All of it survives a reopen.
#[test]
fn an_erased_order_is_gone_from_every_query() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let victim = [
        with_carrier(event("v-1", "victim", Status::Created, 1), "van-1"),
        event("v-2", "victim", Status::Dispatched, 5),
    ];
    let other = event("k-1", "keeper", Status::Dispatched, 3);
    let victim_lsns = created(&engine.append(victim.to_vec()).expect("append"));
    let mut later_victim = event("v-3", "victim", Status::InTransit, 4);
    later_victim.location = Some(Location {
        lat: 52.5,
        lon: 13.4,
        name: Some("Depot".into()),
    });
    // The victim's events are interleaved with another order's in the log.
    let keeper_lsn = created(&engine.append(vec![other.clone()]).expect("append"))[0];
    let late_lsn = created(&engine.append(vec![later_victim]).expect("append"))[0];
    let victim_lsns: Vec<Lsn> = victim_lsns.into_iter().chain([late_lsn]).collect();
    assert_eq!(victim_lsns, vec![Lsn(1), Lsn(2), Lsn(4)]);
    let before = engine.stats();
    assert_eq!((before.orders, before.events), (2, 4));
    assert_eq!(
        in_status(&engine, Status::Dispatched),
        vec!["keeper", "victim"]
    );
    let keeper_state = engine.order_state("keeper").expect("state");

    let receipt = engine
        .erase_order("victim")
        .expect("erase")
        .expect("the order has events");
    assert_eq!(receipt.order_id, "victim");
    assert_eq!(receipt.lsn, Lsn(5));
    assert_eq!(receipt.events, 3);
    assert_eq!(engine.last_lsn(), Lsn(5));

    let check = |engine: &Engine| {
        assert_eq!(engine.order_state("victim").expect("state"), None);
        assert!(timeline(engine, "victim").is_empty());
        assert!(all_pages(|c| engine.order_timeline("victim", Direction::Desc, 2, c)).is_empty());
        for status in Status::ALL {
            assert!(
                !in_status(engine, status).contains(&"victim".to_owned()),
                "still listed under {status}"
            );
        }
        assert_eq!(in_status(engine, Status::Dispatched), vec!["keeper"]);
        let left: Vec<Lsn> = everything(engine).iter().map(|e| e.lsn).collect();
        assert_eq!(left, vec![keeper_lsn]);
        for l in &victim_lsns {
            assert_eq!(engine.event(*l).expect("event"), None, "LSN {l}");
        }
        let stats = engine.stats();
        assert_eq!((stats.orders, stats.events), (1, 1));
        assert_eq!(stats.orders_in(Status::Dispatched), 1);
        assert_eq!(stats.orders_in(Status::Created), 0);
        assert_eq!(stats.last_lsn, Lsn(5));
        assert_eq!(engine.order_state("keeper").expect("state"), keeper_state);

        // The log drops its prefix of tombstones (LSNs 1 and 2) up to the keeper's event; the
        // erased event after it stays as a tombstone that points at the erasure, so the log has
        // no gap from its first LSN.
        assert_eq!(engine.first_lsn(), keeper_lsn);
        assert_eq!(
            engine.read_log(Lsn(1), 10).expect("read_log"),
            read_all(engine)
        );
        let log = read_all(engine);
        assert_eq!(
            log.iter().map(LogEntry::lsn).collect::<Vec<_>>(),
            vec![Lsn(3), Lsn(4), Lsn(5)]
        );
        assert_eq!(log[0].as_event().map(|e| &e.event), Some(&other));
        match &log[1] {
            LogEntry::Erased { lsn, at, by, .. } => {
                assert_eq!((*lsn, *at, *by), (late_lsn, receipt.erased_at, receipt.lsn));
            }
            other => panic!("expected a tombstone, got {other:?}"),
        }
        match &log[2] {
            LogEntry::Removal(r) => {
                assert_eq!((r.lsn, r.at), (receipt.lsn, receipt.erased_at));
                assert_eq!(r.lsns, victim_lsns);
                assert!(
                    matches!(r.kind, RemovalKind::Erasure { .. }),
                    "{:?}",
                    r.kind
                );
            }
            other => panic!("expected the erasure entry, got {other:?}"),
        }

        // The receipt checks out against the durable record, which names no order in clear.
        let record = engine
            .erasure_record(receipt.lsn)
            .expect("erasure_record")
            .expect("a record at the erasure's LSN");
        assert_eq!(
            (record.lsn, record.erased_at, record.events),
            (receipt.lsn, receipt.erased_at, receipt.events)
        );
        assert!(record.is_of("victim"));
        assert!(!record.is_of("keeper"));
        assert!(!record.is_of("victi"));
        assert_eq!(
            engine.erasure_record(keeper_lsn).expect("erasure_record"),
            None
        );
        assert_eq!(
            engine.erasure_record(Lsn(99)).expect("erasure_record"),
            None
        );
        assert_verified(engine);
    };
    check(&engine);
    drop(engine);
    let engine = open(dir.path());
    check(&engine);

    // The erased events are forgotten: the same event (same id, same content) is new again, and the
    // order is rebuilt from it alone.
    assert_eq!(
        engine.append(vec![victim[1].clone()]).expect("append"),
        vec![Outcome::Created(Lsn(6))]
    );
    let state = engine.order_state("victim").expect("state").expect("state");
    assert_eq!(
        (state.status.value, state.event_count, state.last_lsn),
        (Status::Dispatched, 1, Lsn(6))
    );
    assert_eq!(
        state.carrier, None,
        "the erased event's carrier is gone too"
    );
    assert_eq!(timeline(&engine, "victim").len(), 1);
    // The keeper's event is still a duplicate: its id was not touched.
    assert_eq!(
        engine.append(vec![other]).expect("append"),
        vec![Outcome::Duplicate(keeper_lsn)]
    );
    assert_verified(&engine);
}

/// Erasing an order the store does not hold writes nothing; an invalid order id is refused before
/// anything is queued; a read-only engine refuses erasures (and retention) and writes nothing. An
/// erasure takes only its own order, not one whose id extends it.
#[test]
fn erasures_that_write_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    assert_eq!(engine.erase_order("nobody").expect("erase"), None);
    assert_eq!(engine.last_lsn(), Lsn(0));
    engine
        .append(vec![
            event("a-1", "a", Status::Created, 1),
            event("b-1", "b", Status::Created, 2),
            event("a0-1", "a0", Status::Created, 3),
        ])
        .expect("append");
    assert_eq!(engine.erase_order("nobody").expect("erase"), None);
    // Neither a prefix nor an extension of a stored order id is that order.
    assert_eq!(engine.erase_order("a-").expect("erase"), None);
    assert_eq!(engine.erase_order("a0-").expect("erase"), None);
    assert_eq!(engine.erase_order("b0").expect("erase"), None);
    assert_eq!(engine.last_lsn(), Lsn(3));
    assert_eq!(read_all(&engine).len(), 3);

    let long = "x".repeat(129);
    for bad in ["", "has space", "slash/in/it", "ünïcode", long.as_str()] {
        match engine.erase_order(bad) {
            Err(Error::Invalid { error, .. }) => assert_eq!(error.field, "order_id", "{bad:?}"),
            other => panic!("{bad:?}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(engine.last_lsn(), Lsn(3));

    engine.set_read_only("replica").expect("read-only");
    assert_read_only(engine.erase_order("a").expect_err("refused"), "replica");
    assert_read_only(
        engine.expire_before(at(100), 10).expect_err("refused"),
        "replica",
    );
    assert_eq!(engine.last_lsn(), Lsn(3));
    assert!(engine.order_state("a").expect("state").is_some());
    assert_eq!(timeline(&engine, "a").len(), 1);

    engine.set_writable().expect("writable");
    let receipt = engine.erase_order("a").expect("erase").expect("erased");
    assert_eq!((receipt.lsn, receipt.events), (Lsn(4), 1));
    // `a0` sorts right after `a` in every index: untouched.
    assert_eq!(timeline(&engine, "a0").len(), 1);
    assert!(engine.order_state("a0").expect("state").is_some());
    assert_eq!(engine.stats().events, 2);
    // A second erasure of the same order finds nothing left.
    assert_eq!(engine.erase_order("a").expect("erase"), None);
    assert_eq!(engine.last_lsn(), Lsn(4));
    assert_verified(&engine);
}

// ---------------------------------------------------------------------------------------------------
// Physical removal

const GDPR_ORDER: &str = "gdpr-order-7f3a9";
const GDPR_EVENT_IDS: [&str; 3] = ["evt-gdpr-c41d2", "evt-gdpr-c41d3", "evt-gdpr-c41d4"];
const GDPR_RECIPIENT: &str = "Zelda-Quixote-4471";
const GDPR_PLACE: &str = "Quimby-Lane-Drop-9035";

fn needles() -> Vec<&'static str> {
    let mut v = vec![GDPR_ORDER, GDPR_RECIPIENT, GDPR_PLACE];
    v.extend(GDPR_EVENT_IDS);
    v
}

/// Orders that are not erased. Their ids share no prefix, so that each is written out whole at
/// least once per block (RocksDB stores a key as a suffix of the key before it when they share a
/// prefix, and LZ4 replaces repeats by references).
const KEEPERS: [&str; 3] = ["kq7Wb1-alpha", "Hx3pp9-bravo", "Zt5mm2-charlie"];

fn personal(e: &mut Event, recipient: &str, place: &str) {
    let mut attrs = Map::new();
    attrs.insert("recipient".into(), Value::String(recipient.into()));
    attrs.insert("floor".into(), Value::from(3));
    e.attributes = Some(Attributes::from_map(&attrs));
    e.location = Some(Location {
        lat: 48.1,
        lon: 11.6,
        name: Some(place.into()),
    });
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                // RocksDB deletes obsolete files in the background (L0 compactions of the `meta`
                // files that purge's flushes leave): a file listed a moment ago may be gone.
                match std::fs::read(&path) {
                    Ok(bytes) => out.push((path, bytes)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => panic!("read {}: {e}", path.display()),
                }
            }
        }
    }
    out.sort();
    out
}

/// For each needle, the files that hold its bytes.
fn find(dir: &Path, needles: &[&str]) -> BTreeMap<String, Vec<String>> {
    let files = files(dir);
    needles
        .iter()
        .map(|n| {
            let holders = files
                .iter()
                .filter(|(_, bytes)| bytes.windows(n.len()).any(|w| w == n.as_bytes()))
                .map(|(p, bytes)| format!("{} ({} bytes)", p.display(), bytes.len()))
                .collect();
            ((*n).to_owned(), holders)
        })
        .collect()
}

fn assert_absent(dir: &Path, when: &str) {
    let found: BTreeMap<_, _> = find(dir, &needles())
        .into_iter()
        .filter(|(_, holders)| !holders.is_empty())
        .collect();
    assert!(
        found.is_empty(),
        "{when}: erased data is still on disk: {found:#?}"
    );
}

/// The control: the same search finds data that was not erased.
fn assert_keepers_present(dir: &Path, when: &str) {
    let found = find(dir, &KEEPERS);
    for (id, holders) in found {
        assert!(!holders.is_empty(), "{when}: {id} is not found on disk");
    }
}

/// After an erasure and `purge`, no byte of the erased order (its id, event ids, attribute values,
/// location name) is left in any file of the data directory: not in SST files, WAL, MANIFEST or
/// RocksDB's info LOG. The other orders' data is still found by the same search.
#[test]
fn purge_removes_erased_data_from_every_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let mut keepers = Vec::new();
    for i in 0..30 {
        let mut e = event(
            &format!("keep-{i}"),
            KEEPERS[i % 3],
            Status::Created,
            i as i64,
        );
        personal(&mut e, &format!("Keeper-Person-{i}"), "Keeper Street 1");
        keepers.push(e);
    }
    engine.append(keepers[..15].to_vec()).expect("append");
    let mut victim = Vec::new();
    for (i, id) in GDPR_EVENT_IDS.iter().enumerate() {
        let mut e = event(id, GDPR_ORDER, Status::ALL[i], 20 + i as i64);
        personal(&mut e, GDPR_RECIPIENT, GDPR_PLACE);
        e.carrier = Some("van-9".into());
        victim.push(e);
    }
    engine.append(victim[..2].to_vec()).expect("append");
    // Some of the order's events reach SST files (and the MANIFEST, which names each file's first
    // and last key), the last one stays in the WAL and memtables. `compact` flushes every column
    // family first; `Engine::flush` flushes only RocksDB's default one, which holds nothing.
    engine.compact().expect("compact");
    let present = find(dir.path(), &[GDPR_ORDER, GDPR_RECIPIENT, GDPR_PLACE]);
    for (needle, holders) in &present {
        assert!(
            holders.iter().any(|h| h.contains(".sst")),
            "the search misses {needle} in SST files: {holders:?}"
        );
    }
    assert!(
        present[GDPR_ORDER].iter().any(|h| h.contains("MANIFEST")),
        "{present:?}"
    );
    engine.append(keepers[15..].to_vec()).expect("append");
    engine.append(victim[2..].to_vec()).expect("append");

    let receipt = engine
        .erase_order(GDPR_ORDER)
        .expect("erase")
        .expect("erased");
    assert_eq!(receipt.events, 3);
    // The erasure deletes keys; the bytes are still on disk until the purge.
    let before_purge = find(dir.path(), &needles());
    assert!(
        before_purge.values().all(|holders| !holders.is_empty()),
        "{before_purge:#?}"
    );
    engine.purge().expect("purge");
    assert_absent(dir.path(), "after purge");
    assert_keepers_present(dir.path(), "after purge");
    assert_verified(&engine);
    assert_eq!(engine.order_state(GDPR_ORDER).expect("state"), None);
    assert_eq!(engine.stats().events, 30);
    let record = engine
        .erasure_record(receipt.lsn)
        .expect("erasure_record")
        .expect("record");
    assert!(record.is_of(GDPR_ORDER), "the receipt still checks out");

    // Writes after the purge (they reach the WAL and new SST files) bring nothing back, nor does a
    // close and reopen (a new MANIFEST, a new info LOG).
    engine
        .append(vec![event("after-1", KEEPERS[0], Status::Picked, 40)])
        .expect("append");
    engine.close();
    assert_absent(dir.path(), "after close");
    let engine = open(dir.path());
    assert_absent(dir.path(), "after reopen");
    assert_keepers_present(dir.path(), "after reopen");
    assert_eq!(engine.order_state(GDPR_ORDER).expect("state"), None);
    assert_eq!(engine.stats().events, 31);
    assert!(
        engine
            .erasure_record(receipt.lsn)
            .expect("erasure_record")
            .is_some_and(|r| r.is_of(GDPR_ORDER))
    );
    assert_verified(&engine);
}

// ---------------------------------------------------------------------------------------------------
// Erasure racing with ingest

const RACE_ORDER: &str = "race-order";
const APPENDERS: usize = 3;
const REQUESTS_PER_APPENDER: usize = 150;
const ERASURES: usize = 6;
/// Requests the appenders may run ahead of an erasure that is due, so that appends race with it
/// but a slow eraser thread (2 shared cores) still erases in the middle of the ingest.
const AHEAD_MAX: usize = 20;

/// Requests answered when the k-th erasure (from 1) is due.
fn erasure_due(k: usize) -> usize {
    APPENDERS * REQUESTS_PER_APPENDER * k / (ERASURES + 1)
}

/// Threads append events of one order (and of others) while another thread erases the order again
/// and again. An erasure runs alone on the writer thread, so it removes exactly the order's events
/// committed before it: every acknowledged event with an LSN below an erasure's LSN is a tombstone
/// of the first erasure after it; every one above the last erasure is still there. Appenders also
/// resend events they were told are stored: a resend is a duplicate of the stored LSN unless an
/// erasure came between, then it is a new event.
#[test]
fn an_erasure_racing_with_ingest_removes_exactly_the_events_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    // Every acknowledged (event id, outcome) of the race order, and every new LSN of another order.
    let acked: Mutex<Vec<(String, Outcome)>> = Mutex::default();
    let others: Mutex<Vec<Lsn>> = Mutex::default();
    let mut erasures: Vec<(Lsn, u64)> = Vec::new();
    // Requests answered and erasures made so far: the erasures are spread over the ingest by them.
    let done = AtomicUsize::new(0);
    let erased = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..APPENDERS {
            let (engine, acked, others, done, erased) = (&engine, &acked, &others, &done, &erased);
            s.spawn(move || {
                for i in 0..REQUESTS_PER_APPENDER {
                    // Waits on commits (the erasure's among them), bounded.
                    for _ in 0..1_000 {
                        let next = erased.load(Ordering::SeqCst) + 1;
                        if next > ERASURES
                            || done.load(Ordering::SeqCst) < erasure_due(next) + AHEAD_MAX
                        {
                            break;
                        }
                        engine.wait_for_commit(engine.last_lsn(), Duration::from_millis(5));
                    }
                    let id = format!("r-{t}-{i}");
                    let mine = event(&id, RACE_ORDER, Status::ALL[i % 12], (i % 50) as i64);
                    let theirs = event(
                        &format!("o-{t}-{i}"),
                        &format!("other-{t}"),
                        Status::Created,
                        1,
                    );
                    let out = engine.append(vec![mine.clone(), theirs]).expect("append");
                    others.lock().expect("lock").extend(created(&out[1..]));
                    let mut got = vec![(id.clone(), out[0])];
                    if i % 4 == 0 {
                        let again = engine.append(vec![mine]).expect("resend");
                        got.push((id, again[0]));
                    }
                    acked.lock().expect("lock").extend(got);
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        let (engine, erasures, done, erased) = (&engine, &mut erasures, &done, &erased);
        s.spawn(move || {
            for k in 1..=ERASURES {
                // Waits on commits, bounded: the appenders keep committing until they are done.
                for _ in 0..1_000 {
                    if done.load(Ordering::SeqCst) >= erasure_due(k) {
                        break;
                    }
                    engine.wait_for_commit(engine.last_lsn(), Duration::from_millis(10));
                }
                if let Some(r) = engine.erase_order(RACE_ORDER).expect("erase") {
                    erasures.push((r.lsn, r.events));
                }
                erased.fetch_add(1, Ordering::SeqCst);
            }
        });
    });
    assert_verified(&engine);
    // Requests were answered between any two erasures, and after the last: each found events.
    assert_eq!(erasures.len(), ERASURES, "{erasures:?}");
    assert!(erasures.windows(2).all(|w| w[0].0 < w[1].0));

    // The LSNs of the race order's events, each with the first erasure after it (if any).
    let first_after = |l: Lsn| erasures.iter().map(|(e, _)| *e).find(|e| *e > l);
    let mut created_lsns = BTreeSet::new();
    let acked = acked.into_inner().expect("lock");
    let mut by_id: HashMap<&str, Vec<&Outcome>> = HashMap::new();
    for (id, outcome) in &acked {
        by_id.entry(id).or_default().push(outcome);
        if let Outcome::Created(l) = outcome {
            assert!(created_lsns.insert(*l), "LSN {l} acknowledged twice");
        }
    }
    // A resend answers Duplicate(L) exactly when no erasure lies between L and the resend: then L
    // is the same event, still stored at that moment; otherwise the resend created a new event.
    for (id, outcomes) in &by_id {
        if let [Outcome::Created(first), Outcome::Duplicate(dup)] = outcomes[..] {
            assert_eq!(first, dup, "{id}: a resend names another LSN");
        }
        if let [Outcome::Created(first), Outcome::Created(second)] = outcomes[..] {
            let e = first_after(*first).expect("only an erasure makes a stored event new again");
            assert!(
                e < *second,
                "{id}: {first} erased at {e}, resent as {second}"
            );
        }
    }

    let log = read_all(&engine);
    let first = engine.first_lsn();
    assert_eq!(log.len() as u64, engine.last_lsn().0 + 1 - first.0);
    // The entry at an LSN; None below the log's first LSN (a dropped prefix of tombstones).
    let entry = |l: Lsn| (l >= first).then(|| &log[(l.0 - first.0) as usize]);
    let mut expected_present = Vec::new();
    for l in &created_lsns {
        match (first_after(*l), entry(*l)) {
            (Some(_), None) => {}
            (Some(e), Some(LogEntry::Erased { by, .. })) => assert_eq!(*by, e, "LSN {l}"),
            (None, Some(LogEntry::Event(ev))) => {
                assert_eq!(ev.event.order_id, RACE_ORDER);
                expected_present.push(*l);
            }
            (e, entry) => panic!("LSN {l}: erasure after it {e:?}, log holds {entry:?}"),
        }
    }
    // Each erasure removed exactly the order's events created since the previous one.
    let mut previous = Lsn(0);
    for (e, events) in &erasures {
        let window = created_lsns.range(Lsn(previous.0 + 1)..*e).count() as u64;
        assert_eq!(*events, window, "erasure at {e}");
        match entry(*e) {
            Some(LogEntry::Removal(r)) => {
                let listed: Vec<Lsn> = created_lsns
                    .range(Lsn(previous.0 + 1)..*e)
                    .copied()
                    .collect();
                assert_eq!(r.lsns, listed, "erasure at {e}");
            }
            None => {}
            other => panic!("LSN {e}: expected the erasure, got {other:?}"),
        }
        previous = *e;
    }
    let mut remaining: Vec<Lsn> = timeline(&engine, RACE_ORDER)
        .iter()
        .map(|e| e.lsn)
        .collect();
    remaining.sort_unstable();
    assert_eq!(remaining, expected_present);
    assert!(
        !remaining.is_empty(),
        "no event was appended after the last erasure"
    );
    // verify() compared the stored state with a fold of what remains; check the count besides.
    let state = engine.order_state(RACE_ORDER).expect("state");
    assert_eq!(
        state.map(|s| s.event_count),
        (!expected_present.is_empty()).then_some(expected_present.len() as u64)
    );
    // The other orders lost nothing.
    for l in others.into_inner().expect("lock") {
        let e = engine
            .event(l)
            .expect("event")
            .expect("another order's event");
        assert_ne!(e.event.order_id, RACE_ORDER);
    }
    assert_eq!(
        engine.stats().events,
        (APPENDERS * REQUESTS_PER_APPENDER + expected_present.len()) as u64
    );
}

// ---------------------------------------------------------------------------------------------------
// Retention

/// Retention steps of at most `max` events remove exactly the events that occurred before the
/// cutoff, oldest first; orders left with nothing are gone, the others are recomputed from what
/// remains (status, carrier, count, last LSN, update time); each report counts what its step did,
/// and a step with nothing left to remove writes nothing.
#[test]
fn retention_removes_exactly_the_old_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    let cutoff = at(100);
    // (event id, order, status, second, carrier)
    let specs: [(&str, &str, Status, i64, Option<&str>); 11] = [
        ("a-1", "all-old", Status::Created, 10, Some("van-1")),
        ("a-2", "all-old", Status::Delivered, 50, None),
        ("m-1", "mixed", Status::Created, 20, Some("van-2")),
        ("m-2", "mixed", Status::InTransit, 150, None),
        ("n-1", "all-new", Status::Created, 100, None),
        ("n-2", "all-new", Status::Picked, 120, Some("dhl")),
        ("k-1", "kept-late", Status::Dispatched, 130, None),
        // A late arrival: it happened long ago but is stored last, so it sets the order's last LSN
        // and update time until retention removes it.
        ("a-3", "all-old", Status::Returned, 99, None),
        ("m-3", "mixed", Status::Exception, 5, Some("van-3")),
        ("k-2", "kept-late", Status::Created, 30, Some("ups")),
        ("o-1", "one-old", Status::Cancelled, 70, None),
    ];
    let mut lsn_of = HashMap::new();
    for (id, order, status, second, carrier) in specs {
        let mut e = event(id, order, status, second);
        e.carrier = carrier.map(str::to_owned);
        let l = created(&engine.append(vec![e]).expect("append"))[0];
        lsn_of.insert(id, l);
        // Distinct receive times, so that the update time tells which event is the last applied.
        std::thread::sleep(Duration::from_millis(2));
    }
    let received = |id: &str| {
        engine
            .event(lsn_of[id])
            .expect("event")
            .expect("stored")
            .received_at
    };
    let (m2_received, k1_received) = (received("m-2"), received("k-1"));
    let mut old: Vec<(i64, Lsn)> = specs
        .iter()
        .filter(|s| at(s.3) < cutoff)
        .map(|s| (s.3, lsn_of[s.0]))
        .collect();
    old.sort_unstable();
    let old_lsns: Vec<Lsn> = old.iter().map(|(_, l)| *l).collect();
    assert_eq!(old_lsns.len(), 7);

    // Orders each step leaves with no event: all-old after its third event goes, one-old after its
    // only one; `mixed` and `kept-late` keep newer events.
    let order_of: HashMap<Lsn, &str> = specs.iter().map(|s| (lsn_of[s.0], s.1)).collect();
    let max = 3;
    let mut removed = Vec::new();
    let mut gone_orders = 0;
    for step in old_lsns.chunks(max) {
        let last = engine.last_lsn();
        let report = engine.expire_before(cutoff, max).expect("expire");
        removed.extend_from_slice(step);
        let remaining_old: BTreeSet<&str> = old_lsns[removed.len()..]
            .iter()
            .map(|l| order_of[l])
            .collect();
        let emptied: BTreeSet<&str> = step
            .iter()
            .map(|l| order_of[l])
            .filter(|o| matches!(*o, "all-old" | "one-old") && !remaining_old.contains(o))
            .collect();
        gone_orders += emptied.len();
        assert_eq!(
            report,
            RetentionReport {
                lsn: Some(Lsn(last.0 + 1)),
                events: step.len() as u64,
                orders: emptied.len() as u64,
            }
        );
        match read_all(&engine).pop() {
            Some(LogEntry::Removal(r)) => {
                let mut want = step.to_vec();
                want.sort_unstable();
                assert_eq!(r.lsns, want, "oldest first");
                assert_eq!(r.kind, RemovalKind::Retention { before: cutoff });
            }
            other => panic!("expected the retention entry, got {other:?}"),
        }
        assert_eq!(engine.stats().orders, 5 - gone_orders as u64);
        assert_verified(&engine);
    }
    assert_eq!(gone_orders, 2);

    // Nothing old is left: a step writes nothing and says so.
    let last = engine.last_lsn();
    assert_eq!(
        engine.expire_before(cutoff, max).expect("expire"),
        RetentionReport::default()
    );
    assert_eq!(engine.last_lsn(), last);

    let check = |engine: &Engine| {
        let left: Vec<(String, i64)> = everything(engine)
            .iter()
            .map(|e| (e.event.event_id.clone(), e.event.occurred_at.as_millis()))
            .collect();
        let want: Vec<(String, i64)> = [("n-1", 100), ("n-2", 120), ("k-1", 130), ("m-2", 150)]
            .iter()
            .map(|(id, s)| ((*id).to_owned(), at(*s).as_millis()))
            .collect();
        assert_eq!(left, want);
        for (id, ..) in specs.iter().filter(|s| at(s.3) < cutoff) {
            assert_eq!(engine.event(lsn_of[id]).expect("event"), None, "{id}");
        }
        assert_eq!(engine.order_state("all-old").expect("state"), None);
        assert_eq!(engine.order_state("one-old").expect("state"), None);
        let state = |o: &str| -> OrderState { engine.order_state(o).expect("state").expect(o) };
        // `mixed` keeps m-2 only: its status, and no carrier (only the removed events had one).
        let mixed = state("mixed");
        assert_eq!(
            (mixed.status.value, mixed.event_count, mixed.last_lsn),
            (Status::InTransit, 1, lsn_of["m-2"])
        );
        assert_eq!((mixed.carrier, mixed.updated_at), (None, m2_received));
        // `kept-late` loses its late old event: last LSN, update time and carrier go back to k-1.
        let kept = state("kept-late");
        assert_eq!(
            (kept.status.value, kept.event_count, kept.last_lsn),
            (Status::Dispatched, 1, lsn_of["k-1"])
        );
        assert_eq!((kept.carrier, kept.updated_at), (None, k1_received));
        // `all-new` is untouched.
        let new = state("all-new");
        assert_eq!(
            (new.status.value, new.event_count, new.last_lsn),
            (Status::Picked, 2, lsn_of["n-2"])
        );
        assert_eq!(new.carrier.map(|c| c.value), Some("dhl".to_owned()));
        assert_eq!(in_status(engine, Status::Created), Vec::<String>::new());
        assert_eq!(in_status(engine, Status::Delivered), Vec::<String>::new());
        assert_eq!(in_status(engine, Status::Cancelled), Vec::<String>::new());
        assert_eq!(in_status(engine, Status::InTransit), vec!["mixed"]);
        assert_eq!(in_status(engine, Status::Dispatched), vec!["kept-late"]);
        let stats = engine.stats();
        assert_eq!((stats.orders, stats.events), (3, 4));
        let by_status: u64 = Status::ALL.iter().map(|s| stats.orders_in(*s)).sum();
        assert_eq!(by_status, 3);
        assert_verified(engine);
    };
    check(&engine);
    drop(engine);
    let engine = open(dir.path());
    check(&engine);

    // A later cutoff reaches the newer events; an order that loses its last one is gone.
    let report = engine.expire_before(at(125), 10).expect("expire");
    assert_eq!((report.events, report.orders), (2, 1));
    assert_eq!(engine.order_state("all-new").expect("state"), None);
    assert!(engine.order_state("mixed").expect("state").is_some());
    assert_verified(&engine);
}

/// Erasures queued together commit in one write: each still gets its own erasure entry, receipt
/// and record, and an order named twice is erased once (the other request finds nothing).
#[test]
fn concurrent_erasures_commit_together_each_with_its_own_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = open(dir.path());
    for o in 0..40 {
        let events = (0..3)
            .map(|i| event(&format!("c-{o}-{i}"), &format!("c-{o}"), Status::Created, i))
            .collect();
        engine.append(events).expect("append");
    }
    let before = engine.stats();
    // Order c-0 is named by two requests.
    let names: Vec<String> = (0..40)
        .map(|o| format!("c-{o}"))
        .chain(["c-0".to_owned(), "never-stored".to_owned()])
        .collect();
    let receipts = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for name in &names {
            let (engine, receipts) = (&engine, &receipts);
            s.spawn(move || {
                let r = engine.erase_order(name).expect("erase");
                receipts.lock().unwrap().push((name.clone(), r));
            });
        }
    });
    let receipts = receipts.into_inner().unwrap();
    let found: Vec<_> = receipts.iter().filter_map(|(_, r)| r.clone()).collect();
    assert_eq!(
        found.len(),
        40,
        "every stored order erased once: {receipts:?}"
    );
    let lsns: BTreeSet<Lsn> = found.iter().map(|r| r.lsn).collect();
    assert_eq!(lsns.len(), 40, "one erasure entry each");
    assert_eq!(
        lsns.iter().map(|l| l.0).collect::<Vec<_>>(),
        (before.last_lsn.0 + 1..=before.last_lsn.0 + 40).collect::<Vec<_>>(),
        "erasure entries take consecutive LSNs"
    );
    for r in &found {
        assert_eq!(r.events, 3, "{r:?}");
        let record = engine
            .erasure_record(r.lsn)
            .expect("record")
            .expect("an erasure leaves a record");
        assert!(record.is_of(&r.order_id), "{r:?}");
    }
    let stats = engine.stats();
    assert_eq!((stats.orders, stats.events), (0, 0), "{stats:?}");
    assert_eq!(stats.last_lsn, Lsn(before.last_lsn.0 + 40));
    assert_verified(&engine);
}
