//! Live subscriptions (`GET /v1/stream`) against the real binary: replay from an LSN then live with
//! no gap and no duplicate while 10k events are ingested concurrently; filters; resume with
//! `Last-Event-ID`; a slow subscriber is cut off with `event: error` while memory stays bounded.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::{Client, Proto, Server, base_time, event};
use tokio::net::TcpStream;

/// One SSE message.
#[derive(Clone, Debug, Default, PartialEq)]
struct Message {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// A streaming SSE reader over HTTP/1.1.
struct Sse {
    body: Incoming,
    buf: Vec<u8>,
    _conn: tokio::task::JoinHandle<()>,
}

impl Sse {
    async fn open(server: &Server, path_and_query: &str, headers: &[(&str, &str)]) -> Sse {
        let tcp = TcpStream::connect(server.addrs.http)
            .await
            .expect("connect");
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::get(path_and_query)
            .header("host", server.addrs.http.to_string())
            .header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .expect("stream request");
        assert_eq!(resp.status(), 200, "GET {path_and_query}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        Sse {
            body: resp.into_body(),
            buf: Vec::new(),
            _conn: conn,
        }
    }

    /// The next message (comments skipped); `None` when the stream ended.
    async fn next(&mut self, timeout: Duration) -> Option<Message> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).expect("UTF-8 SSE");
                let mut m = Message::default();
                let mut any = false;
                for line in text.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    any = true;
                    let (k, v) = line.split_once(':').unwrap_or((line, ""));
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "id" => m.id = Some(v.to_owned()),
                        "event" => m.event = Some(v.to_owned()),
                        "data" => m.data.push_str(v),
                        _ => {}
                    }
                }
                if any {
                    return Some(m);
                }
                continue;
            }
            match tokio::time::timeout(timeout, self.body.frame()).await {
                Err(_) => panic!(
                    "no SSE message within {timeout:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(None) => return None,
                Ok(Some(Err(e))) => panic!("stream failed: {e}"),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

async fn ingest(client: &mut Client, events: Vec<Value>) -> Vec<u64> {
    let resp = client.post_json("/v1/events", &Value::Array(events)).await;
    let body = resp.expect_json(200, "ingest");
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["lsn"].as_u64().unwrap())
        .collect()
}

fn delivery_lsn(m: &Message) -> u64 {
    assert_eq!(m.event.as_deref(), Some("delivery"), "{m:?}");
    let data: Value = serde_json::from_str(&m.data).expect("event JSON");
    let lsn = data["lsn"].as_u64().unwrap();
    assert_eq!(
        m.id.as_deref(),
        Some(lsn.to_string().as_str()),
        "id is the LSN"
    );
    lsn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_then_live_with_no_gap_and_no_duplicate_under_concurrent_ingest() {
    let server = Server::start();
    let mut client = server.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    // 200 events before anyone subscribes.
    let before: Vec<Value> = (0..200)
        .map(|i| {
            event(
                &format!("pre-{i}"),
                &format!("o-{}", i % 20),
                "created",
                t0 + i,
            )
        })
        .collect();
    let lsns = ingest(&mut client, before).await;
    assert_eq!(lsns.last(), Some(&200));

    // Replay everything from LSN 50, follow one order from the start, and a live-only status filter.
    let mut all = Sse::open(&server, "/v1/stream?from_lsn=50", &[]).await;
    let mut one = Sse::open(&server, "/v1/stream?from_lsn=1&order_id=o-7", &[]).await;
    let mut delivered = Sse::open(&server, "/v1/stream?status=delivered", &[]).await;

    // 10,000 events ingested concurrently by 4 writers while the subscribers read.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let server_addrs = server.addrs.clone();
            let cert = server.cert_path();
            tokio::spawn(async move {
                let mut c = Client::connect(Proto::H1, &server_addrs, &cert).await;
                for batch in 0..50 {
                    let events: Vec<Value> = (0..50)
                        .map(|i| {
                            let n = w * 10_000 + batch * 50 + i;
                            let status = if n % 10 == 0 {
                                "delivered"
                            } else {
                                "in_transit"
                            };
                            event(
                                &format!("w{w}-{n}"),
                                &format!("o-{}", n % 20),
                                status,
                                t0 + 1_000 + n,
                            )
                        })
                        .collect();
                    ingest(&mut c, events).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let last = client.stats().await["last_lsn"].as_u64().unwrap();
    assert_eq!(last, 10_200);

    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let m = all
            .next(Duration::from_secs(20))
            .await
            .expect("stream open");
        seen.push(delivery_lsn(&m));
    }
    let expected: Vec<u64> = (50..=last).collect();
    assert_eq!(seen, expected, "every LSN from 50 exactly once, in order");

    // The o-7 follower got exactly the order's events, in LSN order.
    let (timeline, _) = support::collect_pages(
        &mut client,
        "/v1/orders/o-7/events?limit=1000",
        "events",
        1000,
    )
    .await;
    let mut want: Vec<u64> = timeline
        .iter()
        .map(|e| e["lsn"].as_u64().unwrap())
        .collect();
    want.sort_unstable();
    let mut got = Vec::new();
    while got.len() < want.len() {
        let m = one
            .next(Duration::from_secs(20))
            .await
            .expect("stream open");
        let data: Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(data["order_id"], "o-7");
        got.push(delivery_lsn(&m));
    }
    assert_eq!(got, want);

    // The live delivered-only subscriber: exactly the delivered events ingested after it subscribed.
    let mut got = Vec::new();
    while got.len() < 1_000 {
        let m = delivered
            .next(Duration::from_secs(20))
            .await
            .expect("stream open");
        let data: Value = serde_json::from_str(&m.data).unwrap();
        assert_eq!(data["status"], "delivered");
        got.push(delivery_lsn(&m));
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "LSN order");
    assert!(
        got[0] > 200,
        "live only: nothing from before the subscription"
    );

    // Resume after a given id with Last-Event-ID: the next message is the next LSN.
    let mut resumed = Sse::open(
        &server,
        "/v1/stream?from_lsn=1",
        &[("last-event-id", "9000")],
    )
    .await;
    let m = resumed.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(delivery_lsn(&m), 9001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_with_an_error_event_and_memory_stays_bounded() {
    let mut server = Server::start_with(&[
        "--stream-max-lag-events",
        "2000",
        "--stream-buffer-events",
        "16",
    ]);
    let mut client = server.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    let mut slow = Sse::open(&server, "/v1/stream", &[]).await;
    // ~2 KiB per event: 40,000 events are ~80 MiB of SSE, far more than socket buffers hold.
    support::ingest_padded(&mut client, "s", 40, t0).await;
    // Now read: the stream delivers what was buffered, then the error event, then ends.
    let mut last_lsn = 0;
    let mut error = None;
    while let Some(m) = slow.next(Duration::from_secs(20)).await {
        if m.event.as_deref() == Some("error") {
            error = Some(m);
            assert!(
                slow.next(Duration::from_secs(10)).await.is_none(),
                "the stream ends after the error"
            );
            break;
        }
        last_lsn = delivery_lsn(&m);
    }
    let error = error.expect("an error event before the end of the stream");
    let data: Value = serde_json::from_str(&error.data).unwrap();
    assert_eq!(data["reason"], "too_slow", "{data}");
    assert!(data["next_lsn"].as_u64().unwrap() > last_lsn);
    // Had the server buffered for the subscriber (unbounded memory), it would have delivered all
    // 40,000 events (~80 MiB); it cut the subscriber instead, holding at most its bounded ring.
    assert!(
        last_lsn < 40_000,
        "the subscriber got everything: nothing was bounded"
    );
    let metrics = client.get("/metrics").await.text();
    assert!(
        metrics.contains("trackstore_stream_disconnects_total{reason=\"too_slow\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("stream"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(server.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_cut_off_and_frees_its_slot_without_reading_again() {
    let mut server = Server::start_with(&[
        "--stream-max-lag-events",
        "2000",
        "--stream-buffer-events",
        "16",
        "--max-subscribers",
        "1",
    ]);
    let mut client = server.client(Proto::H1).await;
    let t0 = base_time(3_600_000);
    // Opened, then never read again while 40,000 events (~80 MiB of SSE) are stored: its queue and
    // socket buffers fill, and the head of the log runs far past the lag limit.
    let mut stuck = Sse::open(&server, "/v1/stream", &[]).await;
    support::ingest_padded(&mut client, "k", 40, t0).await;
    // The only subscriber slot is free again although the stuck one read nothing: it was cut off
    // while waiting, not only once it read again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = stream_status(&server, "/v1/stream?order_id=none").await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(
            std::time::Instant::now() < deadline,
            "the stuck subscriber still holds the only slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // When it reads again it gets what was queued, then the error event, then the end.
    let mut error = None;
    while let Some(m) = stuck.next(Duration::from_secs(20)).await {
        if m.event.as_deref() == Some("error") {
            error = Some(m);
            break;
        }
    }
    let data: Value = serde_json::from_str(&error.expect("an error event").data).unwrap();
    assert_eq!(data["reason"], "too_slow", "{data}");
    assert_eq!(server.stop().code(), Some(0));
}

/// The status of a stream request (the stream itself is dropped at once).
async fn stream_status(server: &Server, path_and_query: &str) -> u16 {
    let tcp = TcpStream::connect(server.addrs.http)
        .await
        .expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::get(path_and_query)
        .header("host", server.addrs.http.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let status = send
        .send_request(req)
        .await
        .expect("stream request")
        .status();
    conn.abort();
    status.as_u16()
}
