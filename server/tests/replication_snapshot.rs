//! Snapshot bootstrap end to end (issue 4, item 2): real `trackstore` processes on loopback. A
//! replica started without a store, whose primary's log is past `--replication-snapshot-min-lsn`,
//! installs a checkpoint of the primary streamed over QUIC (two such replicas at once: one waits
//! while the other is served), then follows the log from the snapshot's end and converges (a digest
//! of the full state); the primary deletes its checkpoints. Below the threshold a fresh replica
//! follows the log from LSN 1. (Corrupt transfers are refused in `replica.rs`'s unit tests.)

mod support;

use std::time::Instant;

use serde_json::Value;
use support::cluster::*;
use support::{Proto, Server, base_time};

/// Starts several servers at once (each start waits for its ready line, which a bootstrapping
/// replica prints only once its snapshot is installed).
async fn start_together(args: Vec<Vec<String>>) -> Vec<Server> {
    let starts: Vec<_> = args
        .into_iter()
        .map(|a| tokio::task::spawn_blocking(move || Server::start_with(&refs(&a))))
        .collect();
    let mut servers = Vec::new();
    for s in starts {
        servers.push(s.await.expect("a server starts"));
    }
    servers
}

/// The checkpoints a primary still holds in DATA/snapshots.
fn leftover_snapshots(primary: &Server) -> Vec<String> {
    match std::fs::read_dir(primary.data_dir().join("snapshots")) {
        Ok(dir) => dir
            .map(|e| {
                e.expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("reading the primary's snapshots directory: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fresh_replicas_bootstrap_from_a_snapshot_then_follow_the_log() {
    let certs = Certs::new(&["primary", "r1", "r2"]);
    let (pp, rp1, rp2) = (free_udp_port(), free_udp_port(), free_udp_port());
    let mut pargs = certs.args("primary", pp, None);
    pargs.extend(["--replication-snapshot-min-lsn".into(), "20000".into()]);
    let primary = Server::start_with(&refs(&pargs));
    let mut pc = primary.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    ingest(&mut pc, "s", 0, 30_000, t0).await;

    // Two empty replicas at once: both get the snapshot (one waits while the other is served).
    let started = Instant::now();
    // r1 checks its snapshot by digest (the default), r2 also with the full logical verification.
    let mut r2 = certs.args("r2", rp2, Some(pp));
    r2.extend(["--replication-snapshot-verify".into(), "full".into()]);
    let mut replicas = start_together(vec![certs.args("r1", rp1, Some(pp)), r2]).await;
    let bootstrap_time = started.elapsed();
    let mut clients = Vec::new();
    for r in &replicas {
        let mut rc = r.client(Proto::H1).await;
        let s = admin(&mut rc).await;
        assert_eq!(s["role"], "replica", "{s}");
        let b = &s["bootstrapped_from_snapshot"];
        assert_eq!(b["last_lsn"], 30_000, "installed from a snapshot: {s}");
        assert!(b["bytes"].as_u64().expect("bytes") > 0, "{s}");
        assert!(b["seconds"].as_f64().expect("seconds") >= 0.0, "{s}");
        clients.push(rc);
    }
    let pstatus = admin(&mut pc).await;
    println!(
        "two replicas bootstrapped from snapshots in {:.2} s: primary snapshots {}, replica {}",
        bootstrap_time.as_secs_f64(),
        pstatus["snapshot"],
        admin(&mut clients[0]).await["bootstrapped_from_snapshot"]
    );
    assert_eq!(pstatus["snapshot"]["served"], 2, "{pstatus}");
    assert_eq!(pstatus["snapshot"]["failed"], 0, "{pstatus}");
    assert_eq!(pstatus["snapshot"]["in_progress"], false, "{pstatus}");
    let metrics = pc.get("/metrics").await.text();
    assert!(
        metrics.contains("trackstore_replication_snapshots{outcome=\"served\"} 2"),
        "the snapshot metric counts both: {}",
        metrics
            .lines()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        leftover_snapshots(&primary),
        Vec::<String>::new(),
        "the primary deletes its checkpoints once sent"
    );

    // Then the log, from LSN 30,001, while 20k more events arrive.
    ingest(&mut pc, "s", 30_000, 20_000, t0).await;
    for rc in &mut clients {
        assert_eq!(wait_converged(&mut pc, rc).await, 50_000);
    }
    let want = digest(&mut pc).await;
    for rc in &mut clients {
        assert_eq!(digest(rc).await, want, "primary and replica differ");
        let s = admin(rc).await;
        assert_eq!(s["connected"], true, "{s}");
        assert_eq!(s["lag_lsn"], 0, "{s}");
        assert_eq!(s["quarantined"], 0, "{s}");
    }

    // The installed store is the replica's own from now on: a restart follows on, no new snapshot.
    let mut r1 = replicas.remove(0);
    assert!(r1.stop().success());
    ingest(&mut pc, "t", 0, 1_000, t0).await;
    r1.restart();
    let mut rc = r1.client(Proto::H1).await;
    assert_eq!(wait_converged(&mut pc, &mut rc).await, 51_000);
    let s = admin(&mut rc).await;
    assert_eq!(s["bootstrapped_from_snapshot"], Value::Null, "{s}");
    assert_eq!(admin(&mut pc).await["snapshot"]["served"], 2);
    assert_eq!(digest(&mut rc).await, digest(&mut pc).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_replica_below_the_threshold_follows_the_log_from_lsn_1() {
    let certs = Certs::new(&["primary", "replica"]);
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let mut pargs = certs.args("primary", pp, None);
    pargs.extend(["--replication-snapshot-min-lsn".into(), "20000".into()]);
    let primary = Server::start_with(&refs(&pargs));
    let mut pc = primary.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    ingest(&mut pc, "l", 0, 5_000, t0).await;

    let replica = Server::start_with(&refs(&certs.args("replica", rp, Some(pp))));
    let mut rc = replica.client(Proto::H1).await;
    assert_eq!(wait_converged(&mut pc, &mut rc).await, 5_000);
    let s = admin(&mut rc).await;
    assert_eq!(
        s["bootstrapped_from_snapshot"],
        Value::Null,
        "no snapshot: {s}"
    );
    let p = admin(&mut pc).await;
    assert_eq!(p["snapshot"]["served"], 0, "{p}");
    assert_eq!(p["snapshot"]["min_lsn"], 20_000, "{p}");
    assert_eq!(digest(&mut pc).await, digest(&mut rc).await);
    assert_eq!(leftover_snapshots(&primary), Vec::<String>::new());
}
