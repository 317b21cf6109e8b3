//! The client library against the real `trackstore` (built by `cargo test --workspace`; found in
//! the target directory, since Cargo names other packages' binaries to their own tests only): one
//! connection shared by many tasks over every protocol, streams multiplexed beside requests, typed
//! errors.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use trackstore_client::{
    Client, ClientConfig, Connection, Error, Event, Outcome, Proto, Request, StreamItem,
    StreamQuery, TimelineQuery, Trust,
};

struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    http: SocketAddr,
    https: SocketAddr,
    cert: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start() -> Server {
    // target/debug/deps/client_e2e-HASH -> target/debug/trackstore
    let exe = std::env::current_exe().expect("the test's path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug")
        .join("trackstore");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace --all-features`",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin)
        .arg("--data")
        .arg(dir.path().join("data"))
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--replication",
            "off",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn trackstore");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("\"ready\"") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let addr = |k: &str| {
        ready[k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("an address")
    };
    Server {
        child,
        http: addr("http"),
        https: addr("https"),
        cert: dir.path().join("data/tls/cert.pem"),
        _dir: dir,
    }
}

/// (label, config) for the five ways in.
fn configs(s: &Server) -> Vec<(&'static str, ClientConfig)> {
    let trust = Trust::CaFile(s.cert.clone());
    let tls = |p| ClientConfig::new(format!("https://{}", s.https), p).with_trust(trust.clone());
    vec![
        (
            "h1",
            ClientConfig::new(format!("http://{}", s.http), Proto::H1),
        ),
        (
            "h2c",
            ClientConfig::new(format!("http://{}", s.http), Proto::H2),
        ),
        ("h1-tls", tls(Proto::H1)),
        ("h2-tls", tls(Proto::H2)),
        ("h3", tls(Proto::H3)),
    ]
}

async fn open_connections(conn: &Connection, listener: &str) -> u64 {
    let metrics = conn
        .send_ok(Request::get("/metrics"))
        .await
        .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    let prefix = format!("trackstore_open_connections{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the metrics:\n{text}"))
}

fn at(minute: u32) -> String {
    format!("2026-01-01T10:{minute:02}:00Z")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_many_tasks_over_every_protocol() {
    let server = start();
    for (label, config) in configs(&server) {
        let conn = Client::new(config)
            .expect("config")
            .connect()
            .await
            .expect("connect");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32u32 {
            let conn = conn.clone();
            tasks.spawn(async move {
                let order = format!("{label}-o-{}", i % 4);
                let e = Event::new(format!("{label}-e-{i}"), &order, "created", at(i % 60));
                let first = conn.ingest(std::slice::from_ref(&e)).await?;
                let again = conn.ingest_ndjson(&[e]).await?;
                let state = conn.order(&order).await?;
                Ok::<_, Error>((first, again, state))
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (first, again, state) = r.expect("task").unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(first.results[0].outcome, Outcome::Created, "{label}");
            assert_eq!(again.results[0].outcome, Outcome::Duplicate, "{label}");
            assert_eq!(again.results[0].lsn, first.results[0].lsn, "{label}");
            assert!(state.event_count >= 1, "{label}");
        }
        let q = TimelineQuery {
            limit: Some(3),
            ..TimelineQuery::default()
        };
        let page = conn
            .timeline(&format!("{label}-o-0"), &q)
            .await
            .expect("timeline");
        assert_eq!(page.events.len(), 3, "{label}");
        assert!(page.next_cursor.is_some(), "{label}");
        // The cleartext listener also counts other tests' clients; the TLS and QUIC listeners of
        // this server serve only the connection under test.
        let listener = match label {
            "h3" => Some("h3"),
            "h1-tls" | "h2-tls" => Some("https"),
            _ => None,
        };
        if let Some(listener) = listener {
            assert_eq!(
                open_connections(&conn, listener).await,
                1,
                "{label}: 32 tasks, one connection"
            );
        }
        let err = conn.order("nobody").await.expect_err("404");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(404), "{label}");
        assert_eq!(
            err.problem().map(|p| p.slug()),
            Some("not-found"),
            "{label}"
        );
        assert!(!err.is_retryable(), "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_and_requests_share_one_multiplexed_connection() {
    let server = start();
    for (label, config) in configs(&server) {
        if config.proto == Proto::H1 {
            continue;
        }
        let conn = Client::new(config)
            .expect("config")
            .connect()
            .await
            .expect("connect");
        let head = conn.stats().await.expect("stats").last_lsn;
        let mut stream = conn
            .subscribe(&StreamQuery {
                order_id: Some(format!("{label}-s")),
                from_lsn: Some(head + 1),
                ..StreamQuery::default()
            })
            .await
            .expect("subscribe");
        // The stream stays open on this connection while the same connection ingests.
        let e = Event::new(
            format!("{label}-s-1"),
            format!("{label}-s"),
            "picked",
            at(1),
        );
        let lsn = conn.ingest(&[e]).await.expect("ingest").results[0].lsn;
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .expect("stream")
            .expect("not closed");
        match item {
            StreamItem::Event(got) => {
                assert_eq!(got.lsn, lsn, "{label}");
                assert_eq!(got.event.status, "picked", "{label}");
            }
            other => panic!("{label}: {other:?}"),
        }
        assert_eq!(stream.last_lsn(), Some(lsn), "{label}");
    }
}

#[tokio::test]
async fn failures_are_typed() {
    let server = start();
    let refused = Client::new(ClientConfig::new("http://127.0.0.1:1", Proto::H1))
        .expect("config")
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    assert!(matches!(refused, Error::Connect { .. }), "{refused}");
    assert!(refused.is_retryable());
    let untrusted = Client::new(
        ClientConfig::new(format!("https://{}", server.https), Proto::H2)
            .with_trust(Trust::CaPem(b"not a pem".to_vec())),
    );
    assert!(matches!(untrusted, Err(Error::Config(_))));
    let conn = Client::new(ClientConfig::new(
        format!("http://{}", server.http),
        Proto::H1,
    ))
    .expect("config")
    .connect()
    .await
    .expect("connect");
    let bad = conn
        .ingest(&[Event::new("x", "o", "teleported", at(0))])
        .await
        .expect_err("invalid");
    let p = bad.problem().expect("a problem");
    assert_eq!(p.slug(), "invalid-event");
    assert_eq!(p.errors[0].index, Some(0));
    assert_eq!(p.errors[0].field, "status");
    let err = conn
        .subscribe(&StreamQuery {
            statuses: vec!["lost".into()],
            ..StreamQuery::default()
        })
        .await
        .expect_err("bad status");
    assert_eq!(err.status().map(|s| s.as_u16()), Some(400), "{err}");
    // After a refused stream, the HTTP/1.1 connection still works.
    conn.stats().await.expect("stats after a refusal");
}
