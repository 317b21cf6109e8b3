//! Replication end to end (issue 4): real `trackstore` processes on loopback, a primary and replicas
//! over QUIC with mutual TLS (certificates from `trackctl certs init`'s library). Convergence with a
//! digest of the full state, catch-up after downtime, the failover drill (SIGKILL, promote, RTO/RPO,
//! rejoin with quarantine, re-ingest), a planned switchover under load, and refusals (a certificate
//! from another CA; an old-epoch node cannot depose the new primary).

mod support;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::cluster::*;
use support::{Client, Proto, Server, base_time};

async fn promote(c: &mut Client, planned: bool) -> Value {
    let r = c
        .post_json("/v1/admin/promote", &json!({"planned": planned}))
        .await;
    r.expect_json(200, "promote")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_converges_catches_up_and_refuses_writes() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let primary = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let mut pc = primary.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    // Catch-up: 50k events exist before the replica starts.
    ingest(&mut pc, "a", 0, 50_000, t0).await;
    let mut replica = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    let mut rc = replica.client(Proto::H1).await;
    // Live: 150k more while it follows.
    ingest(&mut pc, "a", 50_000, 150_000, t0).await;
    let lsn = wait_converged(&mut pc, &mut rc).await;
    assert_eq!(lsn, 200_000);
    assert_eq!(
        digest(&mut pc).await,
        digest(&mut rc).await,
        "primary and replica differ"
    );

    let status = admin(&mut rc).await;
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["primary"], format!("127.0.0.1:{pp}"));
    assert_eq!(status["lag_lsn"], 0, "{status}");
    assert_eq!(status["connected"], true, "{status}");
    let pstatus = admin(&mut pc).await;
    assert_eq!(pstatus["role"], "primary");
    let replicas = pstatus["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.len(), 1, "{pstatus}");
    // Reads on the replica say how stale they are; writes are refused naming the primary.
    let r = rc.get("/v1/stats").await;
    assert_eq!(r.header("trackstore-replica-lag-lsn"), Some("0"));
    assert!(r.header("trackstore-replica-lag-seconds").is_some());
    let r = rc.post_json("/v1/events", &batch("w", 0, 1, t0)).await;
    let p = r.expect_problem(503, "read-only-replica", "write to a replica");
    assert_eq!(p["primary"], format!("127.0.0.1:{pp}"), "{p}");
    let metrics = rc.get("/metrics").await.text();
    for m in [
        "trackstore_replication_apply_delay_seconds_count",
        "trackstore_replication_commit_lag_seconds_count",
    ] {
        assert!(metrics.contains(m), "replica metrics lack {m}");
    }
    // Every entry committed while the primary ran, recently enough that it still knew when: each one
    // has its lag from the commit, never more than its delay from receipt.
    assert_lag_from_commit(&mut rc, 200_000).await;

    // Catch-up after downtime: the replica misses 50k events, then resumes from its own next LSN.
    assert!(replica.stop().success());
    assert!(
        !replica.stderr().contains("engine still referenced"),
        "the follower must release the engine at shutdown: {}",
        replica.stderr()
    );
    ingest(&mut pc, "b", 0, 50_000, t0).await;
    replica.restart();
    let mut rc = replica.client(Proto::H1).await;
    assert_eq!(wait_converged(&mut pc, &mut rc).await, 250_000);
    assert_eq!(digest(&mut pc).await, digest(&mut rc).await);
    assert_eq!(admin(&mut rc).await["quarantined"], 0);
    assert_lag_from_commit(&mut rc, 50_000).await;
}

/// The replica's `commit_lag_ms` (commit on the primary → applied here) covers the same entries
/// as `apply_delay_ms` (receipt on the primary → applied here), `entries` of them unless the
/// session was cut with batches in flight, and stays at or under it: it starts later, and
/// `received_at` is rounded down to the millisecond.
async fn assert_lag_from_commit(rc: &mut Client, entries: u64) {
    // The histograms follow the engine's commit by a moment (the session records each batch once
    // the writer answers it).
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = admin(rc).await;
        if status["apply_delay_ms"]["count"] == entries || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (lag, delay) = (&status["commit_lag_ms"], &status["apply_delay_ms"]);
    assert_eq!(lag["count"], delay["count"], "{status}");
    if status["reconnects"] == 0 {
        assert_eq!(lag["count"], entries, "{status}");
    }
    for q in ["p50", "p99", "max"] {
        let (l, d) = (lag[q].as_f64().expect(q), delay[q].as_f64().expect(q));
        // 3 significant digits in both histograms.
        assert!(
            l <= d * 1.002,
            "{q}: commit lag {l} ms, apply delay {d} ms: {status}"
        );
    }
}

/// Writes batches of 10 until stopped; records every acknowledged event id.
/// Requests without an answer (connection cut) are recorded in `unanswered`: their outcome is unknown.
fn spawn_writer(
    mut c: Client,
    prefix: &'static str,
    acked: Arc<Mutex<Vec<String>>>,
    unanswered: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Client> {
    tokio::spawn(async move {
        let t0 = base_time(60_000);
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let body = batch(prefix, i, 10, t0);
            let r = c
                .try_request(
                    "POST",
                    "/v1/events",
                    Some("application/json"),
                    serde_json::to_vec(&body).expect("json"),
                    &[],
                )
                .await;
            let ids = body
                .as_array()
                .expect("array")
                .iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned());
            match r {
                Ok(r) if r.status == 200 => acked.lock().expect("acked").extend(ids),
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err(_) => {
                    unanswered.lock().expect("unanswered").extend(ids);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            i += 10;
        }
        c
    })
}

fn read_quarantine(files: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for f in files.as_array().expect("quarantine_files") {
        let text = std::fs::read_to_string(PathBuf::from(f.as_str().expect("path")))
            .expect("read quarantine");
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("NDJSON")),
        );
    }
    out
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_drill_promotes_and_the_old_primary_rejoins_with_its_tail_quarantined() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let mut old = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let new = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let unanswered = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(
        old.client(Proto::H1).await,
        "f",
        acked.clone(),
        unanswered.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Freeze the replica so that the primary acknowledges writes it never ships: the drill must
    // produce a divergent tail, not only allow one.
    signal(new.pid(), "-STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.kill();
    let killed = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = writer.await;
    signal(new.pid(), "-CONT");

    let mut nc = new.client(Proto::H1).await;
    let status = promote(&mut nc, false).await;
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["epoch"], 2, "{status}");
    let t0 = base_time(60_000);
    loop {
        let r = nc.post_json("/v1/events", &batch("after", 0, 1, t0)).await;
        if r.status == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no write within 5 s: {}",
            r.text()
        );
    }
    let rto = killed.elapsed();

    let acked: Vec<String> = acked.lock().expect("acked").clone();
    let present = event_ids(&mut nc).await;
    let missing: Vec<&String> = acked.iter().filter(|id| !present.contains(*id)).collect();
    println!(
        "failover drill: RTO {:.0} ms (kill → first acknowledged write on the new primary), \
         RPO {} acknowledged events missing of {}",
        rto.as_secs_f64() * 1000.0,
        missing.len(),
        acked.len()
    );
    assert!(
        !missing.is_empty(),
        "the frozen replica should have missed acknowledged writes"
    );

    // The old primary rejoins as a replica of the new one.
    old.restart_with(&refs(&certs.args("primary", pp, Some(rp))));
    let mut oc = old.client(Proto::H1).await;
    wait_converged(&mut nc, &mut oc).await;
    let status = admin(&mut oc).await;
    assert_eq!(status["role"], "replica", "{status}");
    let quarantined = read_quarantine(&status["quarantine_files"]);
    let mut q_ids: Vec<&str> = quarantined
        .iter()
        .map(|e| e["event_id"].as_str().expect("id"))
        .collect();
    q_ids.sort_unstable();
    let m_ids: std::collections::HashSet<&str> = missing.iter().map(|s| s.as_str()).collect();
    let unknown: std::collections::HashSet<String> = unanswered
        .lock()
        .expect("unanswered")
        .iter()
        .cloned()
        .collect();
    // Exactly the events the new primary lacks: every acknowledged one, plus those of the request
    // the kill cut off (durable on the old primary, never answered: the client retries those).
    for id in &m_ids {
        assert!(
            q_ids.contains(id),
            "acknowledged {id} is missing and not quarantined"
        );
    }
    for id in &q_ids {
        assert!(
            m_ids.contains(id) || (unknown.contains(*id) && !present.contains(*id)),
            "{id} is quarantined but was neither acknowledged-and-missing nor unanswered"
        );
    }
    assert_eq!(digest(&mut nc).await, digest(&mut oc).await);
    // The old node (epoch 1) did not depose the new primary (epoch 2).
    let r = nc.post_json("/v1/events", &batch("after", 1, 1, t0)).await;
    assert_eq!(
        r.status,
        200,
        "the new primary must still accept writes: {}",
        r.text()
    );

    // Re-ingest the quarantine (original event ids: idempotent) and nothing acknowledged is lost.
    let events: Vec<Value> = quarantined
        .into_iter()
        .map(|mut e| {
            let o = e.as_object_mut().expect("object");
            o.remove("lsn");
            o.remove("received_at");
            e
        })
        .collect();
    for chunk in events.chunks(1000) {
        let r = nc
            .post_json("/v1/events", &Value::Array(chunk.to_vec()))
            .await;
        assert_eq!(r.status, 200, "re-ingest: {}", r.text());
    }
    let present = event_ids(&mut nc).await;
    assert!(
        acked.iter().all(|id| present.contains(id)),
        "an acknowledged event is lost"
    );
    assert_eq!(
        wait_converged(&mut nc, &mut oc).await,
        last_lsn(&mut nc).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_planned_switchover_under_load_loses_nothing_and_fences_the_old_primary() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let mut old = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let new = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(
        old.client(Proto::H1).await,
        "s",
        acked.clone(),
        Arc::default(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut nc = new.client(Proto::H1).await;
    let status = promote(&mut nc, true).await;
    assert_eq!(status["role"], "primary", "{status}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut oc = writer.await.expect("writer");

    let acked: Vec<String> = acked.lock().expect("acked").clone();
    assert!(
        acked.len() > 100,
        "the writer made progress before the switchover"
    );
    let present = event_ids(&mut nc).await;
    let missing = acked.iter().filter(|id| !present.contains(*id)).count();
    assert_eq!(missing, 0, "a planned switchover loses nothing");
    // The old primary refuses writes (fenced by epoch 2) and says so.
    let r = oc
        .post_json("/v1/events", &batch("late", 0, 1, base_time(0)))
        .await;
    r.expect_problem(503, "read-only-replica", "write to the old primary");
    let s = admin(&mut oc).await;
    assert_eq!(s["writes"], "refused", "{s}");
    // And leaves a write service's endpoints: a primary that refuses writes is not ready.
    let ready = oc.get("/readyz").await;
    ready.expect_problem(503, "not-ready", "readyz of the fenced old primary");
    assert!(ready.text().contains("refuses writes"), "{}", ready.text());
    // It rejoins as a replica with nothing to quarantine.
    old.stop();
    old.restart_with(&refs(&certs.args("primary", pp, Some(rp))));
    let mut oc = old.client(Proto::H1).await;
    wait_converged(&mut nc, &mut oc).await;
    assert_eq!(admin(&mut oc).await["quarantined"], 0);
    assert_eq!(digest(&mut nc).await, digest(&mut oc).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_certificate_another_ca_signed_is_refused() {
    let certs = Certs::new(&["primary"]);
    let rogue = Certs::new(&["rogue"]);
    let pp = free_udp_port();
    let primary = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let mut pc = primary.client(Proto::H1).await;
    ingest(&mut pc, "x", 0, 100, base_time(60_000)).await;
    // Trusts the real CA (so the primary's certificate passes) but presents a foreign certificate.
    let args: Vec<String> = vec![
        "--tls-ca".into(),
        certs.path("ca.pem"),
        "--tls-cert".into(),
        rogue.path("rogue.pem"),
        "--tls-key".into(),
        rogue.path("rogue.key"),
        "--replication".into(),
        "off".into(),
        "--replica-of".into(),
        format!("127.0.0.1:{pp}"),
    ];
    let replica = Server::start_with(&refs(&args));
    let mut rc = replica.client(Proto::H1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = admin(&mut rc).await;
    assert_eq!(s["connected"], false, "{s}");
    assert!(s["last_error"].is_string(), "the refusal is reported: {s}");
    assert_eq!(s["last_lsn"], 0, "nothing was shipped: {s}");
    assert_eq!(admin(&mut pc).await["replicas"], json!([]));
}

#[test]
fn replica_of_without_a_ca_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_trackstore"))
        .args(["--data"])
        .arg(dir.path().join("data"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "off",
            "--replica-of",
            "127.0.0.1:9",
        ])
        .output()
        .expect("run trackstore");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--tls-ca"), "stderr: {err}");
}

/// Two nodes that both wrote epoch 1 on their own (two primaries with the same epoch number): their
/// epoch histories agree, their logs do not. The divergence-point digest of `Welcome` makes the
/// would-be replica refuse to follow instead of stacking the other log on a different prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_log_that_differs_under_the_same_epoch_is_refused_not_merged() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let primary = Server::start_with(&refs(&certs.args("primary", pp, None)));
    let mut other = Server::start_with(&refs(&certs.args("replica", rp, None)));
    let t0 = base_time(60_000);
    let mut pc = primary.client(Proto::H1).await;
    ingest(&mut pc, "p", 0, 10, t0).await;
    let mut oc = other.client(Proto::H1).await;
    ingest(&mut oc, "o", 0, 10, t0).await;
    let before = digest(&mut oc).await;
    other.stop();
    other.restart_with(&refs(&certs.args("replica", rp, Some(pp))));
    let mut oc = other.client(Proto::H1).await;
    ingest(&mut pc, "p", 10, 5, t0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = admin(&mut oc).await;
        if s["refused"].is_string() || Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status["refused"]
            .as_str()
            .is_some_and(|r| r.contains("same epoch number")),
        "the replica must refuse to follow: {status}"
    );
    assert_eq!(status["quarantined"], 0, "{status}");
    assert_eq!(
        digest(&mut oc).await,
        before,
        "nothing was applied or truncated"
    );
}
