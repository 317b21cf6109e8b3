//! Data protection end to end (issue 6): GDPR erasure through the API on a primary with a replica
//! that follows live and one that catches up afterwards, checked down to the bytes of every file in
//! each data directory after the purge; erasure racing with ingest of the same order; the retention
//! sweep removing exactly the expired events on the primary and, through replication, on the replica.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::*;
use support::{Client, Proto, Server, base_time, event, with};

const SECRET_ORDER: &str = "gdpr-7f3a9-subject";
const SECRET_ATTRIBUTE: &str = "Zelda-Quixote-4471";
const SECRET_PLACE: &str = "Flat-9-Hidden-Lane";
const KEPT_ORDER: &str = "kept-order-5c1e";

async fn delete(c: &mut Client, path: &str) -> support::Response {
    c.request("DELETE", path, None, Vec::new(), &[]).await
}

async fn purge(c: &mut Client) {
    let r = c.post_json("/v1/admin/purge", &json!({})).await;
    r.expect_json(200, "purge");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

fn assert_gone(dir: &Path, what: &str) {
    for needle in [SECRET_ORDER, SECRET_ATTRIBUTE, SECRET_PLACE] {
        let found = files_containing(dir, needle);
        assert!(
            found.is_empty(),
            "{what}: {needle:?} is still on disk in {found:?}"
        );
    }
    assert!(
        !files_containing(dir, KEPT_ORDER).is_empty(),
        "{what}: the search must find data that was not erased"
    );
}

fn secret_events(t0: i64) -> Value {
    let place = json!({"lat": 51.5, "lon": -0.12, "name": SECRET_PLACE});
    let statuses = ["created", "allocated", "picked", "dispatched", "delivered"];
    Value::Array(
        statuses
            .iter()
            .enumerate()
            .map(|(i, s)| {
                with(
                    event(
                        &format!("secret-{i}"),
                        SECRET_ORDER,
                        s,
                        t0 + i as i64 * 1000,
                    ),
                    &[
                        ("attributes", json!({"recipient": SECRET_ATTRIBUTE})),
                        ("location", place.clone()),
                    ],
                )
            })
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erasure_leaves_no_byte_on_the_primary_or_its_replicas() {
    let certs = Certs::new(&["primary", "live", "late"]);
    let (pp, lp, tp) = (free_udp_port(), free_udp_port(), free_udp_port());
    let primary = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let mut live = Server::start_with(&refs(&certs.args("live", lp, Some(pp))));
    let mut pc = primary.client(Proto::H1).await;
    let mut lc = live.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    ingest(&mut pc, "bulk", 0, 5_000, t0).await;
    let kept = event("kept-0", KEPT_ORDER, "created", t0);
    pc.post_json("/v1/events", &kept)
        .await
        .expect_json(200, "kept");
    ingest(&mut pc, "more", 0, 2_000, t0).await;
    // The subject's events are the last entries, so the replica's last entry is one of them.
    let r = pc.post_json("/v1/events", &secret_events(t0)).await;
    r.expect_json(200, "ingest the subject's events");
    wait_converged(&mut pc, &mut lc).await;
    // The data reaches SST files too, not only the memtable and the WAL.
    purge(&mut pc).await;
    purge(&mut lc).await;
    assert!(!files_containing(&primary.data_dir(), SECRET_ATTRIBUTE).is_empty());

    // The live replica is down while the primary erases: when it comes back, the entry where the
    // two logs meet is an event on the replica and a tombstone on the primary. That is no
    // divergence: it resumes and applies the erasure to the events it holds.
    assert!(live.stop().success());
    let before = pc.get_json("/v1/stats").await;
    let r = delete(&mut pc, &format!("/v1/orders/{SECRET_ORDER}")).await;
    let receipt = r.expect_json(200, "erase");
    assert_eq!(receipt["order_id"], SECRET_ORDER, "{receipt}");
    assert_eq!(receipt["events"], 5, "{receipt}");
    let lsn = receipt["lsn"].as_u64().expect("lsn");
    assert_eq!(
        r.header("trackstore-erasure-lsn"),
        Some(lsn.to_string().as_str())
    );
    let again = delete(&mut pc, &format!("/v1/orders/{SECRET_ORDER}")).await;
    again.expect_problem(404, "not-found", "a second erasure finds nothing");
    let after = pc.get_json("/v1/stats").await;
    assert_eq!(
        after["orders"],
        before["orders"].as_u64().unwrap() - 1,
        "{after}"
    );
    assert_eq!(
        after["events"],
        before["events"].as_u64().unwrap() - 5,
        "{after}"
    );
    assert_eq!(after["last_lsn"], lsn, "the erasure is the last log entry");

    live.restart();
    let mut lc = live.client(Proto::H1).await;
    // A replica that catches up after the erasure receives tombstones, not the events.
    let late = Server::start_with(&refs(&certs.args("late", tp, Some(pp))));
    let mut tc = late.client(Proto::H1).await;
    wait_converged(&mut pc, &mut lc).await;
    assert_eq!(
        admin(&mut lc).await["refused"],
        Value::Null,
        "the live replica must not be refused"
    );
    wait_converged(&mut pc, &mut tc).await;
    let want = digest(&mut pc).await;
    assert_eq!(digest(&mut lc).await, want, "the live replica differs");
    assert_eq!(digest(&mut tc).await, want, "the late replica differs");
    for (c, node) in [(&mut pc, "primary"), (&mut lc, "live"), (&mut tc, "late")] {
        c.get(&format!("/v1/orders/{SECRET_ORDER}"))
            .await
            .expect_problem(404, "not-found", node);
        c.get(&format!("/v1/orders/{SECRET_ORDER}/events"))
            .await
            .expect_problem(404, "not-found", node);
        // The receipt checks out everywhere: the erasure record replicated with the entry.
        let rec = c
            .get_json(&format!("/v1/admin/erasures/{lsn}?order_id={SECRET_ORDER}"))
            .await;
        assert_eq!(rec["order_id_matches"], true, "{node}: {rec}");
        assert_eq!(rec["events"], 5, "{node}: {rec}");
        let rec = c
            .get_json(&format!("/v1/admin/erasures/{lsn}?order_id={KEPT_ORDER}"))
            .await;
        assert_eq!(rec["order_id_matches"], false, "{node}: {rec}");
    }
    let replay = pc
        .get_json("/v1/events?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=10000")
        .await;
    assert!(
        !replay.to_string().contains(SECRET_ORDER),
        "a time range still lists the erased order"
    );

    for (c, server, node) in [
        (&mut pc, &primary, "primary"),
        (&mut lc, &live, "live replica"),
        (&mut tc, &late, "late replica"),
    ] {
        purge(c).await;
        assert_gone(&server.data_dir(), node);
    }
    // The audit log names the erasure by its LSN, not by the order id (checked by the byte search).
    let audit = std::fs::read_to_string(primary.data_dir().join("audit.log")).expect("audit log");
    assert!(
        audit.contains(&format!("erasure at LSN {lsn}")),
        "the audit log lacks the erasure: {audit}"
    );

    // An old event of the erased order sent again is new: its event id was erased too.
    let r = pc.post_json("/v1/events", &secret_events(t0)[0]).await;
    let body = r.expect_json(200, "re-ingest");
    assert_eq!(body["results"][0]["outcome"], "created", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn erasure_racing_with_ingest_of_the_same_order_keeps_exactly_the_later_events() {
    let server = Server::start();
    let t0 = base_time(600_000);
    let mut writers = Vec::new();
    for w in 0..3 {
        let mut c = server.client(Proto::H1).await;
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..150 {
                let e = event(&format!("race-{w}-{i}"), "race-order", "picked", t0 + i);
                let r = c.post_json("/v1/events", &e).await;
                let body = r.expect_json(200, "ingest");
                acked.push(body["results"][0]["lsn"].as_u64().expect("lsn"));
            }
            acked
        }));
    }
    let mut ec = server.client(Proto::H1).await;
    let mut erasures = Vec::new();
    for _ in 0..20 {
        let r = delete(&mut ec, "/v1/orders/race-order").await;
        match r.status.as_u16() {
            200 => erasures.push(r.json()["lsn"].as_u64().expect("lsn")),
            404 => {}
            s => panic!("erasure answered {s}: {}", r.text()),
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(!erasures.is_empty(), "no erasure found anything to erase");
    let last_erasure = *erasures.iter().max().expect("one");
    let mut want: Vec<u64> = acked.into_iter().filter(|l| *l > last_erasure).collect();
    want.sort_unstable();
    let mut c = server.client(Proto::H1).await;
    // Erased last, the order is unknown: its timeline is 404 like its state (checked below).
    let items = if want.is_empty() {
        c.get("/v1/orders/race-order/events?limit=1000")
            .await
            .expect_problem(404, "not-found", "the timeline of an erased order");
        Vec::new()
    } else {
        support::collect_pages(
            &mut c,
            "/v1/orders/race-order/events?limit=1000",
            "events",
            1000,
        )
        .await
        .0
    };
    let mut got: Vec<u64> = items
        .iter()
        .map(|e| e["lsn"].as_u64().expect("lsn"))
        .collect();
    got.sort_unstable();
    assert_eq!(
        got, want,
        "events after the last erasure, and only those, remain"
    );
    if want.is_empty() {
        c.get("/v1/orders/race-order")
            .await
            .expect_problem(404, "not-found", "nothing remains");
    } else {
        let state = c.get_json("/v1/orders/race-order").await;
        assert_eq!(state["event_count"], want.len(), "{state}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_removes_exactly_the_expired_events_and_replicates() {
    let certs = Certs::new(&["primary", "replica", "late"]);
    let (pp, rp, lp) = (free_udp_port(), free_udp_port(), free_udp_port());
    // The data goes in before retention is on. A sweep drops the log's prefix as soon as it removes
    // LSN 1, and a running replica that has not received that prefix yet is refused for good (it
    // cannot install a snapshot): with retention on from the start, a replica whose first session
    // came after the first sweep step never left LSN 0. So the replica holds every entry first; then
    // the primary restarts with retention on and the sweep's removals reach the replica by the log.
    let mut primary = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let replica = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    let mut pc = primary.client(Proto::H1).await;
    let mut rc = replica.client(Proto::H1).await;
    let day = 86_400_000;
    let old = base_time(40 * day);
    let recent = base_time(day);
    // o-old: only old events (goes entirely); o-mixed: old and recent (keeps the recent ones, and
    // its status comes from them); o-new: recent only; plus 3,000 old bulk events in 2,000 orders.
    let events = json!([
        event("old-1", "o-old", "created", old),
        event("old-2", "o-old", "delivered", old + 1000),
        event("mixed-1", "o-mixed", "created", old),
        event("mixed-2", "o-mixed", "allocated", recent),
        event("mixed-3", "o-mixed", "returned", old + 5000),
        event("new-1", "o-new", "created", recent),
    ]);
    pc.post_json("/v1/events", &events)
        .await
        .expect_json(200, "ingest");
    ingest(&mut pc, "bulk", 0, 3_000, old).await;
    wait_converged(&mut pc, &mut rc).await;
    assert!(primary.stop().success());
    let mut args = certs.args("primary", pp, None);
    args.extend(
        [
            "--retention-days",
            "30",
            "--retention-interval-ms",
            "200",
            "--retention-step-events",
            "700",
        ]
        .map(String::from),
    );
    primary.restart_with(&refs(&args));
    pc = primary.client(Proto::H1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = pc.get_json("/v1/stats").await;
        if stats["events"] == 2 {
            assert_eq!(stats["orders"], 2, "{stats}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention did not finish: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pc.get("/v1/orders/o-old").await.expect_problem(
        404,
        "not-found",
        "an order with only old events",
    );
    let mixed = pc.get_json("/v1/orders/o-mixed").await;
    assert_eq!(mixed["status"], "allocated", "{mixed}");
    assert_eq!(mixed["event_count"], 1, "{mixed}");
    let t = pc.get_json("/v1/orders/o-mixed/events").await;
    let ids: Vec<&str> = t["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["mixed-2"], "{t}");
    let metrics = pc.get("/metrics").await.text();
    assert!(
        metrics.contains("trackstore_retention_removed_events_total 3004"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("retention"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    wait_converged(&mut pc, &mut rc).await;
    let want = digest(&mut pc).await;
    assert_eq!(digest(&mut rc).await, want, "the replica differs");
    assert_eq!(
        admin(&mut rc).await["refused"],
        Value::Null,
        "the replica must not be refused"
    );

    // The log no longer holds the expired prefix: a new replica cannot follow it from LSN 1 and is
    // bootstrapped from a snapshot instead, then follows the log.
    let swept_to = last_lsn(&mut pc).await;
    let late = Server::start_with(&refs(&certs.args("late", lp, Some(pp))));
    let mut lc = late.client(Proto::H1).await;
    pc.post_json(
        "/v1/events",
        &event("after-1", "o-after", "created", recent),
    )
    .await
    .expect_json(200, "ingest after the sweep");
    wait_converged(&mut pc, &mut lc).await;
    let want = digest(&mut pc).await;
    assert_eq!(digest(&mut lc).await, want, "the late replica differs");
    let status = admin(&mut lc).await;
    assert_eq!(
        status["bootstrapped_from_snapshot"]["last_lsn"], swept_to,
        "the late replica starts from a snapshot at the primary's last LSN: {status}"
    );
}

/// A replica whose store holds nothing yet, restarted after the primary's retention dropped LSN 1
/// from the log, replaces its empty store by a snapshot and follows (before, it was refused for
/// good: a node with a store never installs a snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_empty_replica_behind_the_log_start_bootstraps_from_a_snapshot_at_restart() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let mut args = certs.args("primary", pp, None);
    args.extend(["--retention-days", "30", "--retention-interval-ms", "200"].map(String::from));
    let primary = Server::start_with(&refs(&args));
    // The replica makes its (empty) store, then is down while the sweep drops the log's prefix.
    let mut replica = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    assert!(replica.stop().success());
    let mut pc = primary.client(Proto::H1).await;
    ingest(&mut pc, "old", 0, 10, base_time(40 * 86_400_000)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pc.get_json("/v1/stats").await["events"] != 0 {
        assert!(Instant::now() < deadline, "retention did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ingest(&mut pc, "new", 0, 3, base_time(0)).await;
    replica.restart();
    let mut rc = replica.client(Proto::H1).await;
    wait_converged(&mut pc, &mut rc).await;
    assert_eq!(
        digest(&mut rc).await,
        digest(&mut pc).await,
        "the replica differs"
    );
    let status = admin(&mut rc).await;
    assert!(
        status["bootstrapped_from_snapshot"]["last_lsn"].as_u64() > Some(0),
        "the empty store was not replaced by a snapshot: {status}"
    );
    assert_eq!(status["refused"], Value::Null, "{status}");
}

/// A replica that holds entries but needs some the primary's log no longer holds cannot install a
/// snapshot: the primary refuses it, and the replica must show why (`refused`, with what to do),
/// from its first refused session on, not a bare "connection lost" retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_behind_the_log_start_is_told_why_it_is_refused() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let mut primary = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let mut replica = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    let mut pc = primary.client(Proto::H1).await;
    let mut rc = replica.client(Proto::H1).await;
    let old = base_time(40 * 86_400_000);
    ingest(&mut pc, "early", 0, 5, old).await;
    wait_converged(&mut pc, &mut rc).await;
    assert!(replica.stop().success());
    // While the replica is down: more old events, then a sweep removes them all and drops the log's
    // prefix, past the replica's next LSN.
    ingest(&mut pc, "later", 0, 10, old).await;
    assert!(primary.stop().success());
    let mut args = certs.args("primary", pp, None);
    args.extend(["--retention-days", "30", "--retention-interval-ms", "200"].map(String::from));
    primary.restart_with(&refs(&args));
    pc = primary.client(Proto::H1).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while pc.get_json("/v1/stats").await["events"] != 0 {
        assert!(Instant::now() < deadline, "retention did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replica.restart();
    rc = replica.client(Proto::H1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        // `refused` is set before the session ends, `last_error` after: the first session decides.
        let s = admin(&mut rc).await;
        if s["last_error"].is_string() {
            break s;
        }
        assert!(Instant::now() < deadline, "no session ended: {s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let refused = status["refused"].as_str().unwrap_or_default();
    assert!(
        refused.contains("must be rebuilt from a snapshot"),
        "the replica was not told why: {status}"
    );
    assert_eq!(last_lsn(&mut rc).await, 5, "{status}");
}
