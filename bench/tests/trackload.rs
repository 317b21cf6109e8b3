//! `trackload` end to end: short runs of every scenario against the real `trackstore` binary on
//! ephemeral loopback ports, over HTTP/1.1, HTTP/2 and HTTP/3, checked from the `--json` output and
//! the `.hgrm` file: calls were made and counted, nothing failed, the percentiles come from the
//! histogram, and every read reflected the writes acknowledged before it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use trackstore_bench::load::hgrm;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A trackload run of these tests takes a few seconds; this bounds a hung one.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// A `trackstore` process on loopback ports with a temporary data directory; killed on drop.
struct Server {
    child: Child,
    dir: TempDir,
    http: String,
    https: String,
}

impl Server {
    fn start() -> Server {
        let bin = Path::new(env!("CARGO_BIN_EXE_trackload"))
            .parent()
            .expect("the binary has a directory")
            .join("trackstore");
        assert!(
            bin.exists(),
            "{} is missing: build the workspace (`cargo build --workspace --all-features`) first",
            bin.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("trackload-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        let stderr = File::create(dir.path().join("stderr.log")).expect("create the stderr log");
        let mut child = Command::new(&bin)
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--http", "127.0.0.1:0", "--https", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn trackstore");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel::<Value>();
        // Keeps draining stdout so that the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["event"] == "ready"
                {
                    let _ = tx.send(v);
                }
            }
        });
        let ready = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(v) => v,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut log = String::new();
                let _ = File::open(dir.path().join("stderr.log"))
                    .and_then(|mut f| f.read_to_string(&mut log));
                panic!("trackstore printed no ready line ({e:?}); stderr:\n{log}");
            }
        };
        let addr = |k: &str| {
            ready[k]
                .as_str()
                .unwrap_or_else(|| panic!("no {k} in {ready}"))
                .to_owned()
        };
        Server {
            http: format!("http://{}", addr("http")),
            https: format!("https://{}", addr("https")),
            child,
            dir,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("data").join("tls").join("cert.pem")
    }

    /// `--url` and trust arguments for a protocol.
    fn target(&self, proto: &str) -> Vec<String> {
        let mut a = vec!["--proto".to_owned(), proto.to_owned(), "--url".to_owned()];
        if proto == "h1" {
            a.push(self.http.clone());
        } else {
            a.push(self.https.clone());
            a.push("--ca".into());
            a.push(self.cert().display().to_string());
        }
        a
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs trackload; returns its exit success, stdout and stderr.
fn trackload_raw(args: &[String]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackload"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn trackload");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for trackload") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("trackload {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.success(),
        out_reader.join().unwrap(),
        err_reader.join().unwrap(),
    )
}

/// Runs trackload with `--json --no-progress` and the given arguments; returns the summary. Also
/// writes `--hist-out` into `dir` and checks the summary against it.
fn trackload(dir: &Path, args: &[String]) -> Value {
    let hist = dir.join("run.hgrm");
    let svg = dir.join("run.svg");
    let mut all: Vec<String> = args.to_vec();
    all.extend(
        [
            "--json",
            "--no-progress",
            "--hist-out",
            hist.to_str().unwrap(),
            "--svg-out",
            svg.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let (ok, out, err) = trackload_raw(&all);
    assert!(
        ok,
        "trackload {all:?} failed; stderr:\n{err}\nstdout:\n{out}"
    );
    let s: Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {out}"));
    check_summary(&s, &hist, &svg);
    s
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an unsigned integer: {v}"))
}

/// What every run must show: calls made and counted, no error, percentiles ordered and taken from
/// the histogram that the `.hgrm` file also shows, no read-your-writes violation.
fn check_summary(s: &Value, hist: &Path, svg: &Path) {
    let requests = u(&s["requests"]);
    assert!(requests > 0, "no request made: {s}");
    assert_eq!(u(&s["errors"]), 0, "errors: {}", s["errors_by_status"]);
    assert_eq!(
        u(&s["ok"]) + u(&s["errors"]),
        requests,
        "every call is counted once: {s}"
    );
    assert!(f(&s["throughput_rps"]) > 0.0);
    assert_eq!(
        u(&s["read_your_writes"]["violations"]),
        0,
        "{}",
        s["read_your_writes"]
    );
    let all = &s["ops"]["all"];
    assert_eq!(u(&all["ok"]), requests);
    assert_eq!(
        u(&all["latency"]["count"]),
        requests,
        "every call is in the histogram"
    );
    let mut kinds_ok = 0;
    for (name, op) in s["ops"].as_object().unwrap() {
        let l = &op["latency"];
        let (p50, p90, p99, p999, max) = (
            f(&l["p50_ms"]),
            f(&l["p90_ms"]),
            f(&l["p99_ms"]),
            f(&l["p999_ms"]),
            f(&l["max_ms"]),
        );
        assert!(
            0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= p999 && p999 <= max,
            "{name}: percentiles out of order: {l}"
        );
        if name != "all" {
            kinds_ok += u(&op["ok"]);
        }
    }
    assert_eq!(kinds_ok, requests, "the kinds add up to all");

    // The .hgrm file is the same histogram.
    let text = std::fs::read_to_string(hist).expect("the --hist-out file exists");
    let d = hgrm::parse(&text).expect("the --hist-out file parses");
    let l = &all["latency"];
    assert_eq!(d.total_count, requests, "hgrm total count");
    assert_eq!(d.lines.last().unwrap().total_count, requests);
    assert!(
        (d.max_ms - f(&l["max_ms"])).abs() < 1e-9,
        "hgrm max {} vs {}",
        d.max_ms,
        l["max_ms"]
    );
    for (q, key) in [
        (0.5, "p50_ms"),
        (0.9, "p90_ms"),
        (0.99, "p99_ms"),
        (0.999, "p999_ms"),
    ] {
        let (lo, hi) = d.bracket(q).expect("lines around the quantile");
        let v = f(&l[key]);
        assert!(
            lo < v && v <= hi,
            "{key} {v} is not in the hgrm lines' ({lo}, {hi}]"
        );
    }
    for name in s["ops"].as_object().unwrap().keys().filter(|k| *k != "all") {
        let p = hist.with_file_name(format!("run.{name}.hgrm"));
        let per_op = hgrm::parse(&std::fs::read_to_string(&p).expect("a per-operation .hgrm"))
            .expect("parses");
        assert_eq!(
            per_op.total_count,
            u(&s["ops"][name]["ok"]),
            "{}",
            p.display()
        );
    }
    let svg = std::fs::read_to_string(svg).expect("the --svg-out file exists");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("<polyline"), "the plot has a line");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Checks the write side: every event sent was acknowledged exactly once, and the server answered
/// `duplicate` for exactly the retries the generator sent.
fn check_writes(s: &Value) {
    let e = &s["events"];
    assert!(u(&e["sent"]) > 0, "{e}");
    assert_eq!(u(&e["created"]) + u(&e["duplicate"]), u(&e["sent"]), "{e}");
    assert_eq!(
        u(&e["duplicate"]),
        u(&s["generator"]["retries"]),
        "the server answers duplicate for exactly the retried events: {e} {}",
        s["generator"]
    );
}

#[test]
fn ingest_open_loop_over_h1_counts_every_scheduled_call() {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let mut a = args(&[
        "ingest",
        "--rate",
        "400",
        "--duration",
        "2s",
        "--connections",
        "8",
        "--retry",
        "0.05",
    ]);
    a.extend(server.target("h1"));
    let s = trackload(dir.path(), &a);
    assert_eq!(s["mode"], "open");
    // 2 s at 400/s: 800 intended sends, none dropped.
    assert_eq!(u(&s["requests"]), 800, "{s}");
    assert!(s["schedule_lag"]["p50_ms"].is_number(), "{s}");
    assert_eq!(u(&s["ops"]["ingest"]["ok"]), 800);
    check_writes(&s);
    assert!(
        u(&s["generator"]["retries"]) > 0,
        "5% of 800 events are retried: {}",
        s["generator"]
    );
}

/// An open loop far above what two connections can carry: the calls that find their lane's queue
/// full are counted as `dropped` errors, never skipped, and every scheduled call is accounted for.
#[test]
fn an_overloaded_open_loop_counts_dropped_calls_as_errors() {
    let server = Server::start();
    let mut a = args(&[
        "ingest",
        "--rate",
        "20000",
        "--duration",
        "1s",
        "--connections",
        "2",
        "--queue",
        "4",
        "--json",
        "--no-progress",
    ]);
    a.extend(server.target("h1"));
    let (ok, out, err) = trackload_raw(&a);
    assert!(ok, "stderr: {err}");
    let s: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(u(&s["requests"]), 20_000, "1 s at 20,000/s");
    let dropped = u(&s["errors_by_status"]["dropped"]);
    assert!(dropped > 1_000, "{}", s["errors_by_status"]);
    assert_eq!(u(&s["errors"]), dropped, "{}", s["errors_by_status"]);
    assert_eq!(u(&s["ok"]) + dropped, 20_000);
    assert_eq!(u(&s["ops"]["ingest"]["latency"]["count"]), u(&s["ok"]));
    assert_eq!(
        u(&s["events"]["created"]) + u(&s["events"]["duplicate"]),
        u(&s["ok"])
    );
}

#[test]
fn ingest_batch_over_h2() {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let mut a = args(&[
        "ingest-batch",
        "--batch",
        "50",
        "--requests",
        "60",
        "--connections",
        "2",
        "--streams",
        "4",
    ]);
    a.extend(server.target("h2"));
    let s = trackload(dir.path(), &a);
    assert_eq!(s["proto"], "h2");
    assert_eq!(u(&s["requests"]), 60);
    assert_eq!(u(&s["batch"]), 50);
    assert_eq!(u(&s["events"]["sent"]), 3_000, "60 requests of 50 events");
    check_writes(&s);
}

#[test]
fn read_over_h3_checks_every_read_against_the_seeded_writes() {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let mut a = args(&[
        "read",
        "--seed-orders",
        "300",
        "--requests",
        "600",
        "--connections",
        "2",
        "--streams",
        "4",
        "--mix",
        "order=3,timeline=1",
    ]);
    a.extend(server.target("h3"));
    let s = trackload(dir.path(), &a);
    assert_eq!(s["proto"], "h3");
    assert_eq!(u(&s["seed_phase"]["orders"]), 300);
    assert!(u(&s["seed_phase"]["events"]) > 1_500);
    assert_eq!(u(&s["requests"]), 600);
    assert!(
        u(&s["ops"]["order"]["ok"]) > 300 && u(&s["ops"]["timeline"]["ok"]) > 50,
        "{}",
        s["ops"]
    );
    // Every read targets a seeded order, all of whose writes were acknowledged: all are checked.
    assert_eq!(
        u(&s["read_your_writes"]["checked"]),
        600,
        "{}",
        s["read_your_writes"]
    );
    assert_eq!(u(&s["read_your_writes"]["not_found_unacked"]), 0);
}

#[test]
fn mixed_over_every_protocol() {
    let server = Server::start();
    for proto in ["h1", "h2", "h3"] {
        let dir = TempDir::new().unwrap();
        let mut a = args(&[
            "mixed",
            "--requests",
            "500",
            "--connections",
            "4",
            "--active-orders",
            "50",
            "--read-window",
            "100",
        ]);
        if proto != "h1" {
            a.extend(args(&["--streams", "4"]));
        }
        a.extend(server.target(proto));
        let s = trackload(dir.path(), &a);
        assert_eq!(s["proto"], proto);
        assert_eq!(u(&s["requests"]), 500);
        for kind in ["ingest", "order", "timeline"] {
            assert!(
                u(&s["ops"][kind]["ok"]) > 0,
                "{proto}: no {kind} in {}",
                s["ops"]
            );
        }
        // With 50 orders in flight, reads often hit orders written moments before.
        assert!(
            u(&s["read_your_writes"]["checked"]) > 50,
            "{proto}: {}",
            s["read_your_writes"]
        );
        check_writes(&s);
    }
}

#[test]
fn subscribers_receive_every_event_in_order() {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let mut a = args(&[
        "subscribe",
        "--subscribers",
        "3",
        "--requests",
        "300",
        "--connections",
        "4",
    ]);
    a.extend(server.target("h1"));
    let s = trackload(dir.path(), &a);
    let sub = &s["subscribe"];
    let created = u(&s["events"]["created"]);
    assert_eq!(u(&sub["expected_per_subscriber"]), created, "{sub}");
    assert_eq!(u(&sub["delivered"]), 3 * created, "{sub}");
    assert_eq!(u(&sub["gaps"]), 0);
    assert_eq!(u(&sub["out_of_order"]), 0);
    assert_eq!(u(&sub["incomplete_subscribers"]), 0);
    assert_eq!(u(&sub["delivery_latency"]["count"]), 3 * created);
    assert!(f(&sub["delivery_latency"]["p50_ms"]) > 0.0);
    let delivery =
        hgrm::parse(&std::fs::read_to_string(dir.path().join("run.delivery.hgrm")).unwrap())
            .unwrap();
    assert_eq!(delivery.total_count, 3 * created);
}

#[test]
fn day_reports_its_wall_time_with_requests_overridden() {
    let server = Server::start();
    let dir = TempDir::new().unwrap();
    let mut a = args(&[
        "day",
        "--requests",
        "400",
        "--connections",
        "2",
        "--streams",
        "8",
        "--seed",
        "7",
        // As bench/http/run.sh runs the day: one runtime thread drives every connection.
        "--threads",
        "1",
    ]);
    a.extend(server.target("h2"));
    let s = trackload(dir.path(), &a);
    assert_eq!(s["scenario"], "day");
    assert_eq!(u(&s["requests"]), 400);
    assert_eq!(s["mix"], "ingest=60,order=25,timeline=10,status=3,range=2");
    assert!(f(&s["wall_s"]) > 0.0);
    for kind in ["ingest", "order", "timeline", "status", "range"] {
        assert!(
            s["ops"][kind]["ok"].is_u64(),
            "{kind} missing from {}",
            s["ops"]
        );
    }
}

#[test]
fn same_seed_run_id_and_base_time_send_the_same_traffic() {
    let server = Server::start();
    let run = |seed: &str| {
        // One connection: the calls leave in the generator's order.
        let dir = TempDir::new().unwrap();
        let mut a = args(&[
            "ingest",
            "--requests",
            "300",
            "--connections",
            "1",
            "--seed",
            seed,
            "--run-id",
            "replay",
            "--base-time",
            "2026-11-20T12:00:00Z",
        ]);
        a.extend(server.target("h1"));
        trackload(dir.path(), &a)
    };
    let first = run("11");
    assert_eq!(
        u(&first["events"]["created"]) + u(&first["events"]["duplicate"]),
        300
    );
    // The same calls again: every event is already stored with the same content.
    let again = run("11");
    assert_eq!(again["generator"], first["generator"]);
    assert_eq!(u(&again["events"]["created"]), 0, "{}", again["events"]);
    assert_eq!(u(&again["events"]["duplicate"]), 300);
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (a, needle) in [
        (args(&["mixed", "--mix", "ingest=x"]), "--mix"),
        (args(&["nosuch"]), "unknown scenario"),
        (args(&["read", "--proto", "h3"]), "--ca"),
        (args(&["ingest", "--streams", "4"]), "h2 or h3"),
        (args(&["ingest", "--rate", "0"]), "--rate"),
        (args(&["ingest", "--late", "0.9"]), "late"),
        (args(&["ingest", "--threads", "0"]), "--threads"),
    ] {
        let (ok, _, err) = trackload_raw(&a);
        assert!(!ok, "{a:?} must fail");
        assert!(
            err.contains(needle),
            "{a:?}: stderr {err:?} does not mention {needle:?}"
        );
    }
}
