//! Graceful shutdown under write load: SIGTERM while writers ingest; the server exits 0, every event
//! acknowledged with a 2xx is present after a restart, and a live stream ends cleanly.

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::{Proto, Server, base_time, collect_pages, event, q, rfc3339};
use tokio::net::TcpStream;

/// A writer on its own HTTP/1.1 connection that records what was acknowledged and stops at the
/// first connection error (the server went away).
async fn writer(addr: SocketAddr, w: usize, t0: i64, acked: Arc<Mutex<Vec<String>>>) -> usize {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return 0;
    };
    let Ok((mut send, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return 0;
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut unavailable = 0;
    for batch in 0.. {
        let ids: Vec<String> = (0..10).map(|i| format!("w{w}-{batch}-{i}")).collect();
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                event(
                    id,
                    &format!("o-{w}-{}", batch % 50),
                    "in_transit",
                    t0 + i as i64,
                )
            })
            .collect();
        let req = http::Request::post("/v1/events")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&events).unwrap())))
            .unwrap();
        if send.ready().await.is_err() {
            break;
        }
        let Ok(resp) = send.send_request(req).await else {
            break;
        };
        let status = resp.status();
        let Ok(body) = resp.into_body().collect().await else {
            break;
        };
        match status.as_u16() {
            200 => acked.lock().unwrap().extend(ids),
            503 => unavailable += 1,
            other => panic!(
                "writer {w}: unexpected {other}: {}",
                String::from_utf8_lossy(&body.to_bytes())
            ),
        }
    }
    unavailable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_write_load_loses_nothing_acknowledged() {
    let mut server = Server::start();
    let t0 = base_time(3_600_000);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(server.addrs.http, w, t0, acked.clone())))
        .collect();
    // A live subscriber during the shutdown.
    let stream_addr = server.addrs.http;
    let stream = tokio::spawn(async move {
        let tcp = TcpStream::connect(stream_addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::get("/v1/stream")
            .header("host", stream_addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        // The body must end without a transport error: a clean close.
        let body = resp
            .into_body()
            .collect()
            .await
            .expect("the stream ends cleanly");
        String::from_utf8(body.to_bytes().to_vec()).unwrap()
    });
    // Let the load run, then SIGTERM while it is going on.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.lock().unwrap().len() < 3_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the writers are too slow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = tokio::task::block_in_place(|| server.stop());
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; stderr:\n{}",
        server.stderr()
    );
    for w in writers {
        w.await.expect("writer");
    }
    let streamed = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream ended")
        .expect("stream task");
    assert!(streamed.contains("event: delivery"), "the stream was live");
    assert!(
        streamed.trim_end().ends_with("\"reason\":\"shutdown\"}")
            || streamed.contains("\"reason\":\"shutdown\""),
        "the stream says why it ends: {}",
        &streamed[streamed.len().saturating_sub(300)..]
    );

    let acked: Vec<String> = acked.lock().unwrap().clone();
    server.restart();
    let mut client = server.client(Proto::H1).await;
    let path = format!(
        "/v1/events?from={}&to={}&limit=10000",
        q(&rfc3339(t0 - 1_000)),
        q(&rfc3339(t0 + 60_000))
    );
    let (stored, _) = collect_pages(&mut client, &path, "events", 10_000).await;
    let stored: HashSet<&str> = stored
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !stored.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events are missing after restart, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let stats = client.stats().await;
    assert_eq!(stats["events"].as_u64().unwrap() as usize, stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_drain_period_readyz_turns_503_while_new_connections_are_still_served() {
    let mut server = Server::start_with(&["--shutdown-drain-ms", "3000"]);
    let mut before = server.client(Proto::H1).await;
    assert_eq!(before.get("/readyz").await.status, 200);
    let pid = server.pid().to_string();
    let signalled = std::time::Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill -TERM");
    assert!(kill.success());
    // Within the drain: not ready, yet a new connection is accepted and served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = before.get("/readyz").await;
    ready.expect_problem(503, "not-ready", "readyz while draining");
    let mut fresh = server.client(Proto::H1).await;
    assert_eq!(fresh.get("/v1/stats").await.status, 200);
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "the checks ran after the drain; the test proves nothing"
    );
    // Then it stops as usual, exit 0 (stop() signals again: a second signal cuts the drain short).
    let status = tokio::task::block_in_place(|| server.stop());
    assert_eq!(status.code(), Some(0), "stderr:\n{}", server.stderr());
}
