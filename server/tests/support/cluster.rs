//! Helpers of the replication tests: a test CA and node flags, free UDP ports, bulk ingest, and a
//! digest of everything a client can read, to compare a primary and its replicas.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use super::{Client, event};

/// How long a replica may take to reach its primary's last LSN.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(90);

/// A test CA and node certificates.
pub struct Certs {
    pub dir: TempDir,
}

impl Certs {
    pub fn new(nodes: &[&str]) -> Certs {
        let dir = tempfile::tempdir().expect("temp dir");
        let nodes: Vec<String> = nodes.iter().map(|s| (*s).to_owned()).collect();
        trackstore_tools::certs::init(dir.path(), &nodes, false).expect("certs init");
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Flags of a node: its certificate, the CA, its replication listener, and its primary if any.
    pub fn args(&self, node: &str, repl_port: u16, replica_of: Option<u16>) -> Vec<String> {
        let mut a = vec![
            "--tls-ca".into(),
            self.path("ca.pem"),
            "--tls-cert".into(),
            self.path(&format!("{node}.pem")),
            "--tls-key".into(),
            self.path(&format!("{node}.key")),
            "--replication".into(),
            format!("127.0.0.1:{repl_port}"),
        ];
        if let Some(p) = replica_of {
            a.push("--replica-of".into());
            a.push(format!("127.0.0.1:{p}"));
        }
        a
    }
}

pub fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A UDP port free right now (the server binds it a moment later).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port")
        .port()
}

pub fn batch(prefix: &str, from: usize, n: usize, t0: i64) -> Value {
    let statuses = [
        "created",
        "allocated",
        "picked",
        "dispatched",
        "out_for_delivery",
        "delivered",
    ];
    Value::Array(
        (from..from + n)
            .map(|i| {
                event(
                    &format!("{prefix}-{i}"),
                    &format!("o-{}", i % 2000),
                    statuses[(i / 2000) % statuses.len()],
                    t0 + i as i64,
                )
            })
            .collect(),
    )
}

pub async fn ingest(c: &mut Client, prefix: &str, from: usize, count: usize, t0: i64) {
    let mut i = from;
    while i < from + count {
        let n = 1000.min(from + count - i);
        let r = c.post_json("/v1/events", &batch(prefix, i, n, t0)).await;
        assert_eq!(r.status, 200, "ingest: {}", r.text());
        i += n;
    }
}

pub async fn last_lsn(c: &mut Client) -> u64 {
    c.get_json("/v1/stats").await["last_lsn"]
        .as_u64()
        .expect("last_lsn")
}

pub async fn wait_converged(primary: &mut Client, replica: &mut Client) -> u64 {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let p = last_lsn(primary).await;
        let r = last_lsn(replica).await;
        if p == r {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "the replica is stuck at LSN {r} (primary {p}): {}",
            replica.get_json("/v1/admin/replication").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Everything a client can read: stats, every order by status, every event by time.
pub async fn digest(c: &mut Client) -> Value {
    let stats = c.get_json("/v1/stats").await;
    let mut orders = Vec::new();
    for s in stats["by_status"].as_object().expect("by_status").keys() {
        let (items, _) = super::collect_pages(
            c,
            &format!("/v1/orders?status={s}&limit=10000"),
            "orders",
            10000,
        )
        .await;
        orders.push(json!({s.as_str(): items}));
    }
    let (events, _) = super::collect_pages(
        c,
        "/v1/events?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z&limit=10000",
        "events",
        10000,
    )
    .await;
    json!({"stats": stats, "orders": orders, "events": events})
}

pub async fn event_ids(c: &mut Client) -> std::collections::HashSet<String> {
    let d = digest(c).await;
    d["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_id"].as_str().expect("id").to_owned())
        .collect()
}

pub async fn admin(c: &mut Client) -> Value {
    c.get_json("/v1/admin/replication").await
}
