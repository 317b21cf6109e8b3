//! HTTP/3 interoperability: an independent client (Python aioquic's `H3Connection`, see
//! `aioquic_client.py`) writes and reads through the server's HTTP/3 endpoint, and must see exactly
//! what an HTTP/1.1 client sees. The server's own h3 + quinn stack cannot hide a protocol mistake from
//! a client built on another implementation.
//!
//! Needs `python3` with `aioquic` (`make deps` installs it); the test fails, not skips, without it.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{HOUR_MS, MINUTE_MS, Proto, Server, base_time, event, require_aioquic, with};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/aioquic_client.py");

/// What the Python client printed.
#[derive(Debug)]
struct PyResponse {
    status: u16,
    headers: Value,
    body: String,
}

impl PyResponse {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("aioquic: body is not JSON ({e}): {}", self.body))
    }

    fn content_type(&self) -> &str {
        self.headers["content-type"].as_str().unwrap_or("")
    }
}

/// One request through aioquic. `body` is written to a file in `dir` for the script to read.
async fn aioquic(
    server: &Server,
    dir: &Path,
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
) -> PyResponse {
    let body_arg = match body {
        None => "none".to_owned(),
        Some((bytes, _)) => {
            let file = dir.join(format!("body-{}.bin", rand_suffix()));
            std::fs::write(&file, bytes).expect("write the request body file");
            file.to_string_lossy().into_owned()
        }
    };
    let mut args = vec![
        SCRIPT.to_owned(),
        "127.0.0.1".to_owned(),
        server.addrs.h3.port().to_string(),
        server.cert_path().to_string_lossy().into_owned(),
        method.to_owned(),
        path.to_owned(),
        body_arg,
    ];
    if let Some((_, ct)) = body {
        args.push(ct.to_owned());
    }
    let what = format!("aioquic {method} {path}");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3").args(&args).output()
    })
    .await
    .expect("join the python3 task")
    .unwrap_or_else(|e| panic!("{what}: run python3: {e}"));
    assert!(
        out.status.success(),
        "{what}: the aioquic client failed ({}):\n{}\nserver stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: the client printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    assert_eq!(v["alpn"], json!("h3"), "{what}: negotiated ALPN");
    PyResponse {
        status: u16::try_from(v["status"].as_u64().expect("a status")).expect("a u16 status"),
        headers: v["headers"].clone(),
        body: v["body"].as_str().expect("a body").to_owned(),
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_writes_and_reads_what_http1_sees() {
    require_aioquic();
    let server = Server::start();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut h1 = server.client(Proto::H1).await;
    let base = base_time(HOUR_MS);

    // Write over aioquic.
    let e1 = with(
        event("py-e-1", "py-o-1", "out_for_delivery", base),
        &[
            ("carrier", json!("van-3")),
            (
                "location",
                json!({"lat": 48.8566, "lon": 2.3522, "name": "Paris 11e"}),
            ),
            ("eta", json!(support::rfc3339(base + 2 * HOUR_MS))),
            (
                "attributes",
                json!({"slot": "09-12", "floor": 4, "lift": false}),
            ),
        ],
    );
    let body = serde_json::to_vec(&e1).expect("JSON");
    let resp = aioquic(
        &server,
        dir.path(),
        "POST",
        "/v1/events",
        Some((&body, "application/json")),
    )
    .await;
    assert_eq!(resp.status, 200, "aioquic ingest: {}", resp.body);
    assert!(
        resp.content_type().starts_with("application/json"),
        "{resp:?}"
    );
    let results = resp.json();
    assert_eq!(
        results["results"][0]["event_id"],
        json!("py-e-1"),
        "{results}"
    );
    assert_eq!(
        results["results"][0]["outcome"],
        json!("created"),
        "{results}"
    );
    let lsn = results["results"][0]["lsn"].as_u64().expect("an LSN");

    // Read it back over both: byte for byte the same.
    for path in [
        "/v1/orders/py-o-1",
        "/v1/orders/py-o-1/events",
        "/v1/orders/py-o-1/events?order=desc&limit=1",
        "/v1/stats",
    ] {
        let py = aioquic(&server, dir.path(), "GET", path, None).await;
        let http1 = h1.get(path).await;
        assert_eq!(py.status, 200, "aioquic GET {path}: {}", py.body);
        assert_eq!(
            http1.status.as_u16(),
            200,
            "H1 GET {path}: {}",
            http1.text()
        );
        assert_eq!(
            py.body,
            http1.text(),
            "GET {path}: aioquic and HTTP/1.1 bodies"
        );
        assert_eq!(
            py.content_type(),
            http1.content_type(),
            "GET {path}: content types"
        );
    }
    let timeline = h1.get_json("/v1/orders/py-o-1/events").await;
    let stored = &timeline["events"][0];
    for (k, v) in e1.as_object().expect("an object") {
        assert_eq!(&stored[k], v, "stored {k}");
    }
    assert_eq!(stored["lsn"], json!(lsn));

    // Idempotent retry over aioquic, NDJSON over aioquic, a write over H1 seen over aioquic.
    let resp = aioquic(
        &server,
        dir.path(),
        "POST",
        "/v1/events",
        Some((&body, "application/json")),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_eq!(
        resp.json()["results"][0],
        json!({"event_id": "py-e-1", "lsn": lsn, "outcome": "duplicate"})
    );
    let mut ndjson = Vec::new();
    for i in 0..1000 {
        let e = with(
            event(
                &format!("py-n-{i}"),
                &format!("py-o-{}", 2 + i % 10),
                "in_transit",
                base + i64::from(i) * 100,
            ),
            &[("source", json!("carrier:van-3"))],
        );
        serde_json::to_writer(&mut ndjson, &e).expect("JSON");
        ndjson.push(b'\n');
    }
    let resp = aioquic(
        &server,
        dir.path(),
        "POST",
        "/v1/events",
        Some((&ndjson, "application/x-ndjson")),
    )
    .await;
    assert_eq!(
        resp.status, 200,
        "aioquic NDJSON of 1000 events: {}",
        resp.body
    );
    let results = resp.json()["results"].as_array().expect("results").clone();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["outcome"] == json!("created")));
    h1.post_json(
        "/v1/events",
        &event("py-e-2", "py-o-1", "delivered", base + 10 * MINUTE_MS),
    )
    .await
    .expect_json(200, "H1 ingest");
    let py = aioquic(&server, dir.path(), "GET", "/v1/orders/py-o-1", None).await;
    assert_eq!(py.json()["status"], json!("delivered"), "{}", py.body);
    assert_eq!(py.json()["event_count"], json!(2), "{}", py.body);
    let stats = aioquic(&server, dir.path(), "GET", "/v1/stats", None)
        .await
        .json();
    assert_eq!(stats["events"], json!(1002), "{stats}");
    assert_eq!(stats["orders"], json!(11), "{stats}");

    // Errors look the same too.
    let bad = serde_json::to_vec(&with(e1.clone(), &[("status", json!("lost"))])).expect("JSON");
    let py = aioquic(
        &server,
        dir.path(),
        "POST",
        "/v1/events",
        Some((&bad, "application/json")),
    )
    .await;
    let http1 = h1
        .request("POST", "/v1/events", Some("application/json"), bad, &[])
        .await;
    let p1 = http1.expect_problem(400, "invalid-event", "H1 unknown status");
    assert_eq!(py.status, 400, "{}", py.body);
    assert!(
        py.content_type().starts_with("application/problem+json"),
        "{py:?}"
    );
    let pp = py.json();
    for k in ["type", "title", "status", "errors"] {
        assert_eq!(pp[k], p1[k], "problem {k} over aioquic and HTTP/1.1");
    }
    let py = aioquic(&server, dir.path(), "GET", "/v1/nope", None).await;
    assert_eq!(py.status, 404, "{}", py.body);
    assert_eq!(
        py.json()["type"]
            .as_str()
            .and_then(|t| t.rsplit('/').next()),
        Some("not-found"),
        "{}",
        py.body
    );
}
