//! trackctl against a real `trackstore` on loopback: ingest with its summary, the reads as tables
//! and JSON, pagination, every protocol, errors and exit codes, the live stream across a server
//! restart, quarantine files, certificates and tokens.

mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use support::{Server, base_time, ctl, event, h1, ndjson, over, rfc3339, write};

const MINUTE_MS: i64 = 60_000;

fn lsns(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {events}"))
        .iter()
        .map(|e| e["lsn"].as_u64().expect("an lsn"))
        .collect()
}

#[test]
fn ingest_reports_created_duplicates_and_rejections_with_reasons() {
    let server = Server::start();
    let dir = server.root();
    let base = base_time(60 * MINUTE_MS);
    let mut bad = event("a-3", "a-o-2", "created", base);
    bad["status"] = json!("teleported");
    let array = json!([
        event("a-1", "a-o-1", "created", base),
        event("a-2", "a-o-1", "picked", base + MINUTE_MS),
        bad,
        event("a-4", "a-o-2", "created", base),
        event("a-5", "a-o-2", "allocated", base + MINUTE_MS),
    ]);
    let file = write(dir, "events.json", &array.to_string());
    // Batches of 2: the rejected event is in the second batch, whose good event still goes in.
    let out = ctl(&h1(&server, &["ingest", "-", "--batch-size", "2"]))
        .stdin(Vec::new())
        .run()
        .expect_code(0, "an empty input is nothing to do");
    assert!(out.stdout.starts_with("created    0\n"), "{out:#?}");
    ctl(&h1(&server, &["ingest"]))
        .run()
        .expect_code(2, "no input named: a usage error");
    let path = file.display().to_string();
    let out = ctl(&h1(&server, &["ingest", &path, "--batch-size", "2"]))
        .run()
        .expect_code(1, "one event rejected");
    assert!(out.stdout.contains("created    4"), "{out:#?}");
    assert!(out.stdout.contains("duplicate  0"), "{out:#?}");
    assert!(out.stdout.contains("rejected   1"), "{out:#?}");
    assert!(
        out.stdout
            .contains("rejected #3 \"a-3\": status: unknown status"),
        "the reason names the position, the id and the field: {out:#?}"
    );

    // The same again as NDJSON on stdin, with one new event and one reusing an id with different
    // content (409 conflict): duplicates are not errors, the conflict is a rejection.
    let mut conflict = event("a-1", "a-o-1", "delivered", base);
    conflict["carrier"] = json!("van-9");
    let mut lines: Vec<Value> = array.as_array().expect("array").clone();
    lines.push(event("a-6", "a-o-3", "created", base));
    lines.push(conflict);
    let out = ctl(&h1(
        &server,
        &["--json", "ingest", "-", "--batch-size", "3"],
    ))
    .stdin(ndjson(&lines) + "{not json\n")
    .run()
    .expect_code(1, "rejections");
    let s = out.json();
    assert_eq!(s["created"], 1, "{s}");
    assert_eq!(s["duplicate"], 4, "{s}");
    assert_eq!(s["rejected"], 3, "{s}");
    let rejections = s["rejections"].as_array().expect("rejections");
    let by_pos = |p: u64| {
        rejections
            .iter()
            .find(|r| r["position"] == p)
            .unwrap_or_else(|| panic!("no rejection at {p}: {s}"))
    };
    assert_eq!(by_pos(3)["event_id"], "a-3");
    assert!(
        by_pos(7)["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("event_id:") && r.contains("different content")),
        "{s}"
    );
    assert!(
        by_pos(8)["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("not JSON")),
        "{s}"
    );
    let stats = ctl(&h1(&server, &["--json", "stats"])).run().json();
    assert_eq!(stats["events"], 5, "{stats}");

    // Nothing rejected: exit code 0.
    let out = ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&[event("a-7", "a-o-3", "picked", base + MINUTE_MS)]))
        .run()
        .expect_code(0, "all created");
    assert!(out.stdout.contains("created    1"), "{out:#?}");
    // An unreadable input file is a usage error.
    ctl(&h1(&server, &["ingest", "/nonexistent/events.json"]))
        .run()
        .expect_code(2, "missing file");
}

/// Three orders: r-o-1 (created → picked, van-1), r-o-2 (created, van-2), r-o-3 (created → delivered).
fn fixture(server: &Server, base: i64) {
    let mut e = vec![
        event("r-1", "r-o-1", "created", base),
        event("r-2", "r-o-1", "picked", base + 10 * MINUTE_MS),
        event("r-3", "r-o-2", "created", base + 20 * MINUTE_MS),
        event("r-4", "r-o-3", "created", base + 30 * MINUTE_MS),
        event("r-5", "r-o-3", "delivered", base + 40 * MINUTE_MS),
    ];
    e[0]["carrier"] = json!("van-1");
    e[2]["carrier"] = json!("van-2");
    e[4]["reason"] = json!("left_at_door");
    ctl(&h1(server, &["ingest", "-"]))
        .stdin(ndjson(&e))
        .run()
        .expect_code(0, "fixture");
}

#[test]
fn reads_print_tables_and_json() {
    let server = Server::start();
    let base = base_time(3 * 60 * MINUTE_MS);
    fixture(&server, base);

    let out = ctl(&h1(&server, &["order", "r-o-1"]))
        .run()
        .expect_code(0, "order");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "order_id     r-o-1", "{}", out.stdout);
    assert_eq!(lines[1], "status       picked", "{}", out.stdout);
    assert!(lines.contains(&"carrier      van-1"), "{}", out.stdout);
    assert!(lines.contains(&"event_count  2"), "{}", out.stdout);
    let o = ctl(&h1(&server, &["order", "r-o-1", "--json"]))
        .run()
        .json();
    assert_eq!(o["status"], "picked");
    assert_eq!(o["status_at"], rfc3339(base + 10 * MINUTE_MS));
    assert_eq!(o["last_lsn"], 2);

    let out = ctl(&h1(&server, &["events", "r-o-3"]))
        .run()
        .expect_code(0, "events");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "LSN",
            "OCCURRED_AT",
            "ORDER",
            "STATUS",
            "CARRIER",
            "REASON",
            "EVENT_ID"
        ]
    );
    let row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "5",
            &rfc3339(base + 40 * MINUTE_MS),
            "r-o-3",
            "delivered",
            "-",
            "left_at_door",
            "r-5"
        ]
    );
    let page = ctl(&h1(&server, &["events", "r-o-3", "--desc", "--json"]))
        .run()
        .json();
    assert_eq!(lsns(&page["events"]), [5, 4]);
    assert_eq!(page["next_cursor"], Value::Null);

    let (from, to) = (rfc3339(base), rfc3339(base + 35 * MINUTE_MS));
    let page = ctl(&h1(
        &server,
        &["range", "--from", &from, "--to", &to, "--json"],
    ))
    .run()
    .json();
    assert_eq!(lsns(&page["events"]), [1, 2, 3, 4], "{page}");
    let page = ctl(&h1(
        &server,
        &[
            "range",
            "--from",
            &from,
            "--to",
            &to,
            "--status",
            "created",
            "--carrier",
            "van-2",
            "--json",
        ],
    ))
    .run()
    .json();
    assert_eq!(lsns(&page["events"]), [3], "{page}");
    let out = ctl(&h1(
        &server,
        &[
            "range",
            "--from",
            &from,
            "--to",
            &to,
            "--status",
            "created,picked",
        ],
    ))
    .run()
    .expect_code(0, "range table");
    assert_eq!(out.stdout.lines().count(), 1 + 4, "{}", out.stdout);

    let page = ctl(&h1(&server, &["orders", "--status", "created", "--json"]))
        .run()
        .json();
    let ids: Vec<&str> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["r-o-2"], "{page}");
    let out = ctl(&h1(&server, &["orders", "--status", "delivered"]))
        .run()
        .expect_code(0, "orders table");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[0].starts_with("ORDER  "), "{}", out.stdout);
    assert!(lines[1].starts_with("r-o-3  delivered  "), "{}", out.stdout);

    let stats = ctl(&h1(&server, &["stats", "--json"])).run().json();
    assert_eq!(
        (&stats["orders"], &stats["events"], &stats["last_lsn"]),
        (&json!(3), &json!(5), &json!(5))
    );
    assert_eq!(stats["by_status"]["delivered"], 1);
    let out = ctl(&h1(&server, &["stats"])).run().expect_code(0, "stats");
    assert!(
        out.stdout.starts_with("orders    3\nevents    5\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["picked", "1"])),
        "{}",
        out.stdout
    );

    let r = ctl(&h1(&server, &["replication", "status", "--json"]))
        .run()
        .json();
    assert_eq!(r["role"], "primary", "{r}");
    assert_eq!(r["last_lsn"], 5, "{r}");
    let out = ctl(&h1(&server, &["replication", "status"]))
        .run()
        .expect_code(0, "replication table");
    assert!(
        out.stdout.starts_with("role      primary\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn all_follows_cursors_and_limit_bounds_it() {
    let server = Server::start();
    let base = base_time(5 * 60 * MINUTE_MS);
    let events: Vec<Value> = (0..25)
        .map(|i| event(&format!("p-{i}"), "p-o", "picked", base + i * MINUTE_MS))
        .chain((0..7).map(|i| event(&format!("q-{i}"), &format!("q-o-{i}"), "created", base)))
        .collect();
    ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&events))
        .run()
        .expect_code(0, "ingest");

    let page = ctl(&h1(
        &server,
        &["events", "p-o", "--all", "--page-size", "4", "--json"],
    ))
    .run()
    .json();
    assert_eq!(lsns(&page["events"]), (1..=25).collect::<Vec<u64>>());
    assert_eq!(page["next_cursor"], Value::Null);

    let out = ctl(&h1(
        &server,
        &[
            "events",
            "p-o",
            "--all",
            "--page-size",
            "4",
            "--limit",
            "10",
            "--json",
        ],
    ))
    .run()
    .expect_code(0, "limited");
    let page = out.json();
    assert_eq!(lsns(&page["events"]), (1..=10).collect::<Vec<u64>>());
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a cursor where it stopped");
    assert!(!cursor.is_empty());

    // Without --all: one page, and a hint that there is more.
    let out = ctl(&h1(&server, &["events", "p-o", "--limit", "4"]))
        .run()
        .expect_code(0, "one page");
    assert_eq!(out.stdout.lines().count(), 1 + 4, "{}", out.stdout);
    assert!(out.stderr.contains("--all"), "{out:#?}");

    let page = ctl(&h1(
        &server,
        &[
            "orders",
            "--status",
            "created",
            "--all",
            "--page-size",
            "2",
            "--json",
        ],
    ))
    .run()
    .json();
    let ids: BTreeSet<String> = page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids.len(), 7, "{page}");
    let (from, to) = (rfc3339(base), rfc3339(base + 60 * MINUTE_MS));
    let page = ctl(&h1(
        &server,
        &[
            "range",
            "--from",
            &from,
            "--to",
            &to,
            "--all",
            "--page-size",
            "5",
            "--limit",
            "13",
            "--json",
        ],
    ))
    .run()
    .json();
    assert_eq!(page["events"].as_array().map(Vec::len), Some(13), "{page}");
    ctl(&h1(&server, &["events", "p-o", "--page-size", "0"]))
        .run()
        .expect_code(2, "a zero page size is a usage error");
}

#[test]
fn every_protocol_and_every_way_to_configure_it_gives_the_same_answers() {
    let server = Server::start();
    fixture(&server, base_time(60 * MINUTE_MS));
    let reference = ctl(&h1(&server, &["order", "r-o-3", "--json"]))
        .run()
        .json();
    for (proto, tls) in [
        ("h1", false),
        ("h2", false),
        ("h1", true),
        ("h2", true),
        ("h3", true),
    ] {
        let mut args = over(&server, proto, tls);
        args.extend(["order".into(), "r-o-3".into(), "--json".into()]);
        let out = ctl(&args).run().expect_code(0, proto);
        assert_eq!(out.json(), reference, "{proto} tls={tls}");
        // Ingest over each protocol too.
        let mut args = over(&server, proto, tls);
        args.extend(["ingest".into(), "-".into()]);
        let id = format!("x-{proto}-{tls}");
        let out = ctl(&args)
            .stdin(ndjson(&[event(&id, &id, "created", base_time(0))]))
            .run()
            .expect_code(0, proto);
        assert!(out.stdout.contains("created    1"), "{proto}: {out:#?}");
    }
    let insecure = ctl(&[
        "--server",
        &server.https_url(),
        "--proto",
        "h3",
        "--insecure",
        "order",
        "r-o-3",
        "--json",
    ])
    .run()
    .expect_code(0, "insecure h3");
    assert_eq!(insecure.json(), reference);

    // The environment.
    let out = ctl(&["order", "r-o-3", "--json"])
        .env("TRACKCTL_SERVER", server.https_url())
        .env("TRACKCTL_PROTO", "h3")
        .env("TRACKCTL_CA", server.cert())
        .run()
        .expect_code(0, "environment");
    assert_eq!(out.json(), reference);
    // A config file, named by --config, and found in ~/.config by default; flags win over it.
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(home.path().join(".config")).expect("mkdir");
    let config = format!(
        "server = \"{}\"\nproto = \"h2\"\nca = \"{}\"\n",
        server.https_url(),
        server.cert().display()
    );
    let file = write(&home.path().join(".config"), "trackctl.toml", &config);
    let out = ctl(&["order", "r-o-3", "--json"])
        .env("HOME", home.path())
        .run()
        .expect_code(0, "default config file");
    assert_eq!(out.json(), reference);
    let out = ctl(&[
        "--config".as_ref(),
        file.as_os_str(),
        "order".as_ref(),
        "r-o-3".as_ref(),
    ])
    .run()
    .expect_code(0, "--config");
    assert!(out.stdout.contains("delivered"), "{out:#?}");
    let out = ctl(&["--server", "http://127.0.0.1:1", "order", "r-o-3"])
        .env("HOME", home.path())
        .run()
        .expect_code(2, "the flag wins over the file");
    assert!(out.stderr.contains("127.0.0.1:1"), "{out:#?}");
    let bad = write(home.path(), "bad.toml", "sever = \"x\"\n");
    let out = ctl(&["--config".as_ref(), bad.as_os_str(), "stats".as_ref()])
        .run()
        .expect_code(2, "unknown config key");
    assert!(out.stderr.contains("sever"), "{out:#?}");
}

#[test]
fn errors_print_the_problem_and_exit_codes_say_who_refused() {
    let server = Server::start();
    let out = ctl(&h1(&server, &["order", "no-such-order"]))
        .run()
        .expect_code(1, "404");
    assert!(out.stderr.contains("404 Not found"), "{out:#?}");
    assert!(
        out.stderr.contains("no order \"no-such-order\""),
        "{out:#?}"
    );
    assert!(out.stdout.is_empty(), "{out:#?}");

    let out = ctl(&h1(
        &server,
        &[
            "range",
            "--from",
            "yesterday",
            "--to",
            "2026-01-01T00:00:00Z",
        ],
    ))
    .run()
    .expect_code(1, "400");
    assert!(
        out.stderr.contains("400 Invalid query parameter"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("- from: "),
        "the field is listed: {out:#?}"
    );
    let out = ctl(&h1(&server, &["orders", "--status", "lost"]))
        .run()
        .expect_code(1, "unknown status");
    assert!(out.stderr.contains("status"), "{out:#?}");

    // The client side: connection refused, https without trust, unknown protocol, bad usage.
    let out = ctl(&["--server", "http://127.0.0.1:1", "stats"])
        .run()
        .expect_code(2, "connection refused");
    assert!(out.stderr.contains("cannot connect"), "{out:#?}");
    let out = ctl(&["--server", &server.https_url(), "stats"])
        .run()
        .expect_code(2, "https without --ca");
    assert!(out.stderr.contains("--ca FILE"), "{out:#?}");
    let out = ctl(&["--server", &server.https_url(), "--proto", "h3", "stats"])
        .env("TRACKCTL_CA", server.root().join("missing.pem"))
        .run()
        .expect_code(2, "missing CA file");
    assert!(out.stderr.contains("missing.pem"), "{out:#?}");
    ctl(&["--server", &server.http_url(), "--proto", "h4", "stats"])
        .run()
        .expect_code(2, "unknown protocol");
    ctl(&["--server", &server.http_url(), "--proto", "h3", "stats"])
        .run()
        .expect_code(2, "h3 needs https");
    ctl(&["range", "--from", "x"])
        .run()
        .expect_code(2, "missing --to");
    // A certificate the client does not trust: the handshake fails (a connection error).
    let other = Server::start();
    let out = ctl(&[
        "--server".as_ref(),
        server.https_url().as_ref(),
        "--proto".as_ref(),
        "h2".as_ref(),
        "--ca".as_ref(),
        other.cert().as_os_str(),
        "stats".as_ref(),
    ])
    .run()
    .expect_code(2, "untrusted certificate");
    assert!(out.stderr.contains("TLS"), "{out:#?}");
    // Promoting a primary is the server saying no (409 already-primary).
    let out = ctl(&h1(&server, &["promote", "--planned"]))
        .run()
        .expect_code(1, "promote on a primary");
    assert!(out.stderr.contains("409"), "{out:#?}");
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port")
        .port()
}

#[test]
fn replication_status_and_promote_against_a_primary_and_its_replica() {
    // Mutual TLS between the nodes with the certificates trackctl makes.
    let pki = tempfile::tempdir().expect("tempdir");
    let pki_path = pki.path().display().to_string();
    ctl(&["certs", "init", &pki_path, "--nodes", "primary,replica"])
        .run()
        .expect_code(0, "certs");
    let file = |n: &str| pki.path().join(n).display().to_string();
    let node = |name: &str, port: u16, of: Option<u16>| {
        let mut a = vec![
            "--tls-ca".to_owned(),
            file("ca.pem"),
            "--tls-cert".to_owned(),
            file(&format!("{name}.pem")),
            "--tls-key".to_owned(),
            file(&format!("{name}.key")),
            "--replication".to_owned(),
            format!("127.0.0.1:{port}"),
        ];
        if let Some(p) = of {
            a.extend(["--replica-of".to_owned(), format!("127.0.0.1:{p}")]);
        }
        a
    };
    let (pp, rp) = (free_udp_port(), free_udp_port());
    let args = node("primary", pp, None);
    let mut primary = Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let args = node("replica", rp, Some(pp));
    let replica = Server::start_with(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let events: Vec<Value> = (0..20)
        .map(|i| event(&format!("rep-{i}"), "rep-o", "created", base_time(0) - i))
        .collect();
    ctl(&h1(&primary, &["ingest", "-"]))
        .stdin(ndjson(&events))
        .run()
        .expect_code(0, "ingest on the primary");

    let mut converged = None;
    for _ in 0..900 {
        let r = ctl(&h1(&replica, &["--json", "replication", "status"]))
            .run()
            .expect_code(0, "replica status")
            .json();
        if r["last_lsn"] == 20 {
            converged = Some(r);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = converged.expect("the replica caught up within 90 s");
    assert_eq!(r["role"], "replica", "{r}");
    assert!(r["primary"].is_string(), "a replica names its primary: {r}");
    let p = ctl(&h1(&primary, &["--json", "replication", "status"]))
        .run()
        .json();
    assert_eq!(p["role"], "primary", "{p}");
    assert_eq!(p["replicas"].as_array().map(Vec::len), Some(1), "{p}");
    let out = ctl(&h1(&primary, &["replication", "status"]))
        .run()
        .expect_code(0, "primary table");
    assert!(
        out.stdout.starts_with("role      primary\n"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("REPLICA"), "{}", out.stdout);
    // Writes to the replica are refused: the server says no.
    ctl(&h1(&replica, &["ingest", "-"]))
        .stdin(ndjson(&[event("rep-x", "rep-o", "picked", base_time(0))]))
        .run()
        .expect_code(1, "a write to a replica");

    // Failover: the primary dies, the replica is promoted with a new epoch.
    primary.kill();
    let out = ctl(&h1(&replica, &["promote"]))
        .run()
        .expect_code(0, "promote");
    assert!(
        out.stdout.starts_with("role      primary\n"),
        "{}",
        out.stdout
    );
    let s = ctl(&h1(&replica, &["--json", "replication", "status"]))
        .run()
        .json();
    assert_eq!(s["role"], "primary", "{s}");
    assert_eq!(s["epoch"], r["epoch"].as_u64().expect("epoch") + 1, "{s}");
    ctl(&h1(&replica, &["ingest", "-"]))
        .stdin(ndjson(&[event("rep-y", "rep-o", "picked", base_time(0))]))
        .run()
        .expect_code(0, "the new primary takes writes");
    let out = ctl(&h1(&replica, &["--json", "promote", "--planned"]))
        .run()
        .expect_code(1, "promote twice");
    assert!(out.stderr.contains("already"), "{out:#?}");
}

/// Reads trackctl's stdout lines on a thread.
fn lines_of(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_lines(rx: &mpsc::Receiver<String>, n: usize, what: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{what}: line {i} of {n}: {e}"))
        })
        .collect()
}

#[test]
fn tail_follows_the_stream_and_resumes_after_a_server_restart() {
    let mut server = Server::start();
    let base = base_time(60 * MINUTE_MS);
    let first: Vec<Value> = (0..3)
        .map(|i| event(&format!("t-{i}"), "t-o-1", "created", base + i * MINUTE_MS))
        .collect();
    ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&first))
        .run()
        .expect_code(0, "first events");

    // Over HTTP/3 from LSN 1, NDJSON out; a filtered one over HTTP/1.1 from the head, lines out.
    let mut args = over(&server, "h3", true);
    args.extend(["--json", "tail", "--from-lsn", "1", "--max-events", "9"].map(str::to_owned));
    let mut all = ctl(&args).spawn();
    let all_rx = lines_of(&mut all);
    let mut filtered = ctl(&h1(
        &server,
        &["tail", "--order", "t-o-2", "--max-events", "3"],
    ))
    .spawn();
    let filtered_rx = lines_of(&mut filtered);
    // The filtered tail starts at the head: it must be subscribed before the next event.
    support::wait_for_subscribers(&server, 2);
    let got = next_lines(&all_rx, 3, "replay");
    let parsed: Vec<Value> = got
        .iter()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(
        parsed.iter().map(|e| e["lsn"].as_u64()).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    assert_eq!(parsed[0]["event_id"], "t-0");

    // One live event for the filtered tail, then a restart on the same ports.
    ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&[event("t-3", "t-o-2", "picked", base)]))
        .run()
        .expect_code(0, "live event");
    let live = next_lines(&all_rx, 1, "live");
    assert!(live[0].contains("\"lsn\":4"), "{live:?}");
    let line = next_lines(&filtered_rx, 1, "filtered live");
    let cols: Vec<&str> = line[0].split_whitespace().collect();
    assert_eq!(cols, ["4", &rfc3339(base), "t-o-2", "picked", "-", "t-3"]);
    server.stop();
    std::thread::sleep(Duration::from_millis(500));
    server.restart();
    let after: Vec<Value> = vec![
        event("t-4", "t-o-1", "picked", base + 5 * MINUTE_MS),
        event("t-5", "t-o-2", "delivered", base + 6 * MINUTE_MS),
        event("t-6", "t-o-1", "delivered", base + 7 * MINUTE_MS),
    ];
    ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&after))
        .run()
        .expect_code(0, "events after the restart");
    let resumed = next_lines(&all_rx, 3, "after the restart");
    let resumed_lsns: Vec<u64> = resumed
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("NDJSON")["lsn"]
                .as_u64()
                .expect("lsn")
        })
        .collect();
    assert_eq!(resumed_lsns, [5, 6, 7], "no gap, no repeat: {resumed:?}");
    let line = next_lines(&filtered_rx, 1, "filtered after the restart");
    assert!(line[0].starts_with("6  "), "{line:?}");

    // A crash this time: no final event tells the tails where they were; they resume from the
    // last LSN they saw themselves.
    server.kill();
    server.restart();
    let after: Vec<Value> = vec![
        event("t-7", "t-o-1", "returned", base + 8 * MINUTE_MS),
        event("t-8", "t-o-2", "returned", base + 9 * MINUTE_MS),
    ];
    ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&after))
        .run()
        .expect_code(0, "events after the crash");
    let resumed = next_lines(&all_rx, 2, "after the crash");
    let resumed_lsns: Vec<u64> = resumed
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("NDJSON")["lsn"]
                .as_u64()
                .expect("lsn")
        })
        .collect();
    assert_eq!(resumed_lsns, [8, 9], "no gap, no repeat: {resumed:?}");
    let line = next_lines(&filtered_rx, 1, "filtered after the crash");
    assert!(line[0].starts_with("9  "), "{line:?}");

    for (child, what) in [(&mut all, "all"), (&mut filtered, "filtered")] {
        let status = wait(child);
        assert!(
            status.success(),
            "{what}: tail exits 0 after --max-events: {status}"
        );
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(all.stderr.as_mut().expect("piped"), &mut stderr)
        .expect("stderr");
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

fn wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    for _ in 0..3_000 {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    panic!("trackctl tail did not exit");
}

#[test]
fn quarantine_files_are_summarised_and_reingested_idempotently() {
    let server = Server::start();
    let base = base_time(60 * MINUTE_MS);
    let mut events: Vec<Value> = (0..4)
        .map(|i| {
            event(
                &format!("qu-{i}"),
                "qu-o-1",
                "created",
                base + i * MINUTE_MS,
            )
        })
        .collect();
    events[1]["status"] = json!("picked");
    events[2]["order_id"] = json!("qu-o-2");
    events[3]["carrier"] = json!("van-3");
    ctl(&h1(&server, &["ingest", "-"]))
        .stdin(ndjson(&events))
        .run()
        .expect_code(0, "ingest");
    // A quarantine file: stored events exactly as the timeline serves them.
    let mut stored = Vec::new();
    for order in ["qu-o-1", "qu-o-2"] {
        let page = ctl(&h1(&server, &["events", order, "--json"])).run().json();
        stored.extend(page["events"].as_array().expect("events").iter().cloned());
    }
    assert_eq!(stored.len(), 4);
    assert!(stored.iter().all(|e| e.get("received_at").is_some()));
    let file = write(server.root(), "quarantine.ndjson", &ndjson(&stored));
    let path = file.display().to_string();

    let out = ctl(&["quarantine", "show", &path])
        .run()
        .expect_code(0, "show");
    assert!(out.stdout.contains("events     4"), "{}", out.stdout);
    assert!(out.stdout.contains("lsn range  1..4"), "{}", out.stdout);
    assert!(
        out.stdout.contains("orders     2: qu-o-1, qu-o-2"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("created 3, picked 1"), "{}", out.stdout);
    let s = ctl(&["quarantine", "show", &path, "--json"]).run().json();
    assert_eq!((&s["first_lsn"], &s["last_lsn"]), (&json!(1), &json!(4)));
    assert_eq!(s["orders"], json!(["qu-o-1", "qu-o-2"]));
    assert_eq!(s["statuses"], json!({"created": 3, "picked": 1}));

    // Into an empty server: created with the same content (original ids); again: duplicates.
    let fresh = Server::start();
    let out = ctl(&h1(&fresh, &["quarantine", "reingest", &path]))
        .run()
        .expect_code(0, "reingest");
    assert!(out.stdout.contains("created    4"), "{out:#?}");
    let again = ctl(&h1(&fresh, &["--json", "quarantine", "reingest", &path]))
        .run()
        .expect_code(0, "reingest again")
        .json();
    assert_eq!(
        (&again["created"], &again["duplicate"]),
        (&json!(0), &json!(4))
    );
    let back = ctl(&h1(&fresh, &["events", "qu-o-1", "--json"]))
        .run()
        .json();
    let strip = |e: &Value| {
        let mut e = e.clone();
        let m = e.as_object_mut().expect("object");
        m.remove("lsn");
        m.remove("received_at");
        e
    };
    let want: Vec<Value> = stored
        .iter()
        .filter(|e| e["order_id"] == "qu-o-1")
        .map(strip)
        .collect();
    let got: Vec<Value> = back["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(strip)
        .collect();
    assert_eq!(got, want);
    // And into the original server: nothing new.
    let out = ctl(&h1(&server, &["quarantine", "reingest", &path]))
        .run()
        .expect_code(0, "reingest into the source");
    assert!(out.stdout.contains("duplicate  4"), "{out:#?}");
    ctl(&["quarantine", "show", "/nonexistent"])
        .run()
        .expect_code(2, "missing file");
}

#[test]
fn certs_init_makes_a_ca_and_node_certificates_a_server_and_clients_accept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = dir.path().join("pki");
    let out_path = out_dir.display().to_string();
    let out = ctl(&["certs", "init", &out_path, "--nodes", "primary,replica"])
        .run()
        .expect_code(0, "init");
    for name in [
        "ca.pem",
        "ca.key",
        "primary.pem",
        "primary.key",
        "replica.pem",
        "replica.key",
    ] {
        let path = out_dir.join(name);
        assert!(out.stdout.contains(&path.display().to_string()), "{out:#?}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).expect("written").permissions(),
        );
        if name.ends_with(".key") {
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
    let before = std::fs::read(out_dir.join("ca.key")).expect("read");
    let out = ctl(&["certs", "init", &out_path, "--nodes", "primary"])
        .run()
        .expect_code(2, "refuses to overwrite");
    assert!(out.stderr.contains("--force"), "{out:#?}");
    assert_eq!(std::fs::read(out_dir.join("ca.key")).expect("read"), before);
    ctl(&["certs", "init", &out_path, "--nodes", "Bad_Name", "--force"])
        .run()
        .expect_code(2, "bad node name");

    // A server with the primary's certificate; trackctl trusts the CA, over TLS TCP and QUIC.
    let cert = out_dir.join("primary.pem").display().to_string();
    let key = out_dir.join("primary.key").display().to_string();
    let server = Server::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    let ca = out_dir.join("ca.pem").display().to_string();
    for proto in ["h1", "h2", "h3"] {
        let out = ctl(&[
            "--server",
            &server.https_url(),
            "--proto",
            proto,
            "--ca",
            &ca,
            "stats",
            "--json",
        ])
        .run()
        .expect_code(0, proto);
        assert_eq!(out.json()["events"], 0);
    }
    // The names in the certificate: localhost works too.
    let out = ctl(&[
        "--server",
        &format!("https://localhost:{}", server.https.port()),
        "--proto",
        "h3",
        "--ca",
        &ca,
        "stats",
    ])
    .run();
    assert_eq!(out.code, 0, "{out:#?}");
}

#[test]
fn token_create_prints_the_token_and_the_server_config_entry() {
    let out = ctl(&[
        "token",
        "create",
        "--scopes",
        "ingest,read",
        "--name",
        "loader",
    ])
    .run()
    .expect_code(0, "create");
    let token = out.stdout.trim();
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "only the token on stdout: {out:#?}"
    );
    assert!(token.starts_with("tst_"), "{token}");
    let body = &token[4..];
    assert_eq!(
        body.len(),
        43,
        "base64url of 32 bytes without padding: {token}"
    );
    assert!(
        body.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
        "{token}"
    );
    let config: toml::Value = toml::from_str(&out.stderr).expect("stderr is the TOML entry");
    let entry = &config["tokens"][0];
    assert_eq!(entry["name"].as_str(), Some("loader"));
    let hex: String = sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        entry["hash"].as_str(),
        Some(format!("sha256:{hex}").as_str())
    );
    assert_eq!(entry["scopes"], toml::Value::from(vec!["ingest", "read"]));
    assert!(
        out.stderr.contains("scopes = [\"ingest\", \"read\"]"),
        "{}",
        out.stderr
    );

    let other = ctl(&["token", "create", "--scopes", "admin"])
        .run()
        .expect_code(0, "second");
    assert_ne!(other.stdout.trim(), token, "tokens are random");
    ctl(&["token", "create", "--scopes", "root"])
        .run()
        .expect_code(2, "unknown scope");
}

#[test]
fn a_created_token_is_accepted_by_a_server_configured_with_its_snippet() {
    let out = ctl(&[
        "token",
        "create",
        "--scopes",
        "read,ingest",
        "--name",
        "ctl",
    ])
    .run()
    .expect_code(0, "create");
    let token = out.stdout.trim().to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write(dir.path(), "server.toml", &out.stderr);
    let server = Server::start_with(&["--config", &config.display().to_string()]);

    let out = ctl(&h1(&server, &["stats"]))
        .run()
        .expect_code(1, "no token: refused");
    assert!(out.stderr.contains("401"), "{out:#?}");
    for (proto, tls) in [("h1", false), ("h2", true), ("h3", true)] {
        let mut args = over(&server, proto, tls);
        args.extend(["--token".into(), token.clone(), "stats".into()]);
        ctl(&args).run().expect_code(0, proto);
    }
    let out = ctl(&h1(&server, &["ingest", "-"]))
        .env("TRACKCTL_TOKEN", &token)
        .stdin(ndjson(&[event("tk-1", "tk-o", "created", base_time(0))]))
        .run()
        .expect_code(0, "ingest with the token from the environment");
    assert!(out.stdout.contains("created    1"), "{out:#?}");
    let out = ctl(&h1(&server, &["--token", &token, "replication", "status"]))
        .run()
        .expect_code(1, "no admin scope");
    assert!(out.stderr.contains("403"), "{out:#?}");
    ctl(&h1(&server, &["--token", "tst_wrong", "stats"]))
        .run()
        .expect_code(1, "a wrong token");
}
