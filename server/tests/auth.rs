//! Access tokens and the audit log against the real binary: 401 without a valid token, 403 without
//! the scope, 200 with it, for every route class and over every protocol; `/metrics` open or behind
//! `read`; tokens from the configuration file and from a tokens file (flag and environment); bad token
//! configurations and unauthenticated non-loopback listeners refused at start (exit 2) unless allowed;
//! admin requests recorded in `DATA/audit.log` with the token's name, and admin changes refused when
//! the audit log cannot be written.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Client, Proto, Response, Server, event, now_ms, q, rfc3339};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---- tokens and configuration ------------------------------------------------------------------

/// A token shaped like `trackctl token create`'s: `tst_` and 43 base64url characters.
fn token(name: &str) -> String {
    format!("tst_{name:A<43}")
}

/// The configured form of a token, computed here independently of the server's code.
fn hash(token: &str) -> String {
    let hex: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

fn tokens_toml(tokens: &[(&str, &[&str])]) -> String {
    let mut out = String::new();
    for (name, scopes) in tokens {
        let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
        out.push_str(&format!(
            "[[tokens]]\nname = {name:?}\nhash = {:?}\nscopes = [{}]\n\n",
            hash(&token(name)),
            scopes.join(", ")
        ));
    }
    out
}

/// loader: ingest; reader: read; ops: admin; root: all three.
const STANDARD: [(&str, &[&str]); 4] = [
    ("loader", &["ingest"]),
    ("reader", &["read"]),
    ("ops", &["admin"]),
    ("root", &["ingest", "read", "admin"]),
];

/// A file in a directory that outlives the server using it.
fn write_file(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

fn start_with_config(dir: &TempDir, config: &str, extra: &[&str]) -> Server {
    let path = write_file(dir, "trackstore.toml", config);
    let mut args = vec!["--config", path.to_str().expect("a UTF-8 path")];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

// ---- requests ----------------------------------------------------------------------------------

/// One request with `Authorization: Bearer token(name)` when `who` is given.
async fn call(c: &mut Client, method: &str, path: &str, who: Option<&str>) -> Response {
    call_with(c, method, path, who, &[]).await
}

async fn call_with(
    c: &mut Client,
    method: &str,
    path: &str,
    who: Option<&str>,
    headers: &[(&str, &str)],
) -> Response {
    let auth = who.map(|w| format!("Bearer {}", token(w)));
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(a) = &auth {
        all.push(("authorization", a));
    }
    let (ct, body) = if method == "POST" && path == "/v1/events" {
        let e = event(
            &format!("e-{}", now_ms()),
            "o-1",
            "created",
            now_ms() - 60_000,
        );
        (
            Some("application/json"),
            serde_json::to_vec(&e).expect("JSON"),
        )
    } else {
        (None, Vec::new())
    };
    c.request(method, path, ct, body, &all).await
}

/// Counts the 401s and 403s a test provokes, to compare with `auth_failures_total`.
#[derive(Debug, Default)]
struct Failures {
    missing: u64,
    invalid: u64,
    scope: u64,
}

fn expect_401(resp: &Response, what: &str) {
    resp.expect_problem(401, "unauthorized", what);
    let challenge = resp.header("www-authenticate").unwrap_or("");
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: WWW-Authenticate {challenge:?}"
    );
}

fn expect_403(resp: &Response, scope: &str, what: &str) {
    let p = resp.expect_problem(403, "forbidden", what);
    let detail = p["detail"].as_str().unwrap_or("");
    assert!(
        detail.contains(&format!("`{scope}`")),
        "{what}: the detail names the scope {scope}: {detail}"
    );
}

fn expect_ok(resp: &Response, what: &str) {
    assert_eq!(resp.status, 200, "{what}: body {}", resp.text());
}

/// The value of one sample in an OpenMetrics text.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn check_failure_counters(metrics: &str, f: &Failures) {
    for (reason, n) in [
        ("missing", f.missing),
        ("invalid", f.invalid),
        ("scope", f.scope),
    ] {
        let name = format!("trackstore_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(metrics, &name), n as f64, "{name} in:\n{metrics}");
    }
}

/// A raw HTTP/1.1 exchange that reads the response head only (for streams that never end, and
/// for servers started outside the support module). Returns the status and the head.
async fn raw_head(addr: SocketAddr, method: &str, path: &str, who: Option<&str>) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let auth = who
            .map(|w| format!("authorization: Bearer {}\r\n", token(w)))
            .unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("send");
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tcp.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&head).into_owned()
    };
    let head = tokio::time::timeout(Duration::from_secs(15), exchange)
        .await
        .expect("a response head within 15 s");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head)
}

// ---- processes started outside the support module ----------------------------------------------

/// A `trackstore` run with arbitrary listeners and environment.
struct Proc {
    child: Child,
    ready: Value,
    stderr_path: PathBuf,
    _root: TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn http(&self) -> SocketAddr {
        let a: SocketAddr = self.ready["http"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no http address in {}", self.ready));
        // A wildcard bind is reached on loopback: no test traffic leaves the machine.
        SocketAddr::new([127, 0, 0, 1].into(), a.port())
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

/// Starts the binary with `--data` in a new directory and `args`; returns the running process, or
/// its exit code and stderr if it exits before its ready line.
fn launch(args: &[&str], env: &[(&str, &str)]) -> Result<Proc, (Option<i32>, String)> {
    let root = tempfile::tempdir().expect("a temporary directory");
    let stderr_path = root.path().join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).expect("create the stderr log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackstore"))
        .arg("--data")
        .arg(root.path().join("data"))
        .args(["--replication", "off"])
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn trackstore");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && let Ok(v) = serde_json::from_str::<Value>(&line) {
                sent = tx.send(v).is_ok();
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(ready) => Ok(Proc {
            child,
            ready,
            stderr_path,
            _root: root,
        }),
        Err(_) => {
            let _ = child.kill();
            let status = child.wait().expect("wait for trackstore");
            Err((
                status.code(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default(),
            ))
        }
    }
}

/// Asserts that the arguments make the binary exit 2 before serving; returns its stderr.
fn expect_exit_2(args: &[&str], env: &[(&str, &str)], what: &str) -> String {
    match launch(args, env) {
        Ok(p) => panic!("{what}: the server started: {}", p.ready),
        Err((code, stderr)) => {
            assert_eq!(code, Some(2), "{what}: exit code; stderr:\n{stderr}");
            stderr
        }
    }
}

fn audit_lines(data: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(data.join("audit.log")).expect("read audit.log");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

// ---- tests -------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_class_answers_401_403_and_200() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(&dir, &tokens_toml(&STANDARD), &[]);
    let mut c = server.client(Proto::H1).await;
    let mut f = Failures::default();

    // Ingest: POST /v1/events.
    expect_401(
        &call(&mut c, "POST", "/v1/events", None).await,
        "ingest, no token",
    );
    f.missing += 1;
    for who in ["reader", "ops"] {
        let r = call(&mut c, "POST", "/v1/events", Some(who)).await;
        expect_403(&r, "ingest", &format!("ingest as {who}"));
        f.scope += 1;
    }
    for who in ["loader", "root"] {
        expect_ok(
            &call(&mut c, "POST", "/v1/events", Some(who)).await,
            &format!("ingest as {who}"),
        );
    }

    // Reads.
    let now = now_ms();
    let range = format!(
        "/v1/events?from={}&to={}",
        q(&rfc3339(now - 3_600_000)),
        q(&rfc3339(now + 60_000))
    );
    let reads = [
        "/v1/orders/o-1",
        "/v1/orders/o-1/events",
        "/v1/orders?status=created",
        range.as_str(),
        "/v1/stats",
        "/v1/openapi.json",
    ];
    for path in reads {
        expect_401(&call(&mut c, "GET", path, None).await, path);
        f.missing += 1;
        for who in ["loader", "ops"] {
            expect_403(
                &call(&mut c, "GET", path, Some(who)).await,
                "read",
                &format!("GET {path} as {who}"),
            );
            f.scope += 1;
        }
        for who in ["reader", "root"] {
            expect_ok(
                &call(&mut c, "GET", path, Some(who)).await,
                &format!("GET {path} as {who}"),
            );
        }
    }
    let (status, _) = raw_head(server.addrs.http, "HEAD", "/v1/orders/o-1", Some("loader")).await;
    assert_eq!(status, 403, "HEAD reveals as much as GET: it needs read");
    f.scope += 1;
    // The live stream never ends: its 200 is checked on the head.
    expect_401(&call(&mut c, "GET", "/v1/stream", None).await, "stream");
    f.missing += 1;
    expect_403(
        &call(&mut c, "GET", "/v1/stream", Some("loader")).await,
        "read",
        "stream as loader",
    );
    f.scope += 1;
    let (status, head) = raw_head(server.addrs.http, "GET", "/v1/stream", Some("reader")).await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");

    // Admin.
    let admin = "/v1/admin/replication";
    expect_401(&call(&mut c, "GET", admin, None).await, "admin, no token");
    f.missing += 1;
    for who in ["loader", "reader"] {
        expect_403(
            &call(&mut c, "GET", admin, Some(who)).await,
            "admin",
            &format!("admin as {who}"),
        );
        f.scope += 1;
    }
    let state = call(&mut c, "GET", admin, Some("ops")).await;
    assert_eq!(
        state.expect_json(200, "admin as ops")["role"],
        "primary",
        "admin alone reaches the admin endpoint"
    );
    expect_ok(&call(&mut c, "GET", admin, Some("root")).await, "as root");
    expect_401(
        &call(&mut c, "DELETE", "/v1/orders/o-1", None).await,
        "erasure, no token",
    );
    f.missing += 1;
    expect_403(
        &call(&mut c, "DELETE", "/v1/orders/o-1", Some("reader")).await,
        "admin",
        "erasure as reader",
    );
    f.scope += 1;

    // Open routes, and /metrics open by default.
    for path in ["/healthz", "/readyz", "/metrics"] {
        expect_ok(&call(&mut c, "GET", path, None).await, path);
    }

    // Bad credentials.
    let bad = [
        format!("Bearer {}", token("nobody")),
        "Basic cmVhZGVyOnNlY3JldA==".to_owned(),
        "Bearer".to_owned(),
        format!("Token {}", token("reader")),
        hash(&token("reader")),
    ];
    for value in &bad {
        let r = c
            .request(
                "GET",
                "/v1/stats",
                None,
                Vec::new(),
                &[("authorization", value)],
            )
            .await;
        expect_401(&r, value);
        assert!(
            r.header("www-authenticate")
                .is_some_and(|h| h.contains("invalid_token")),
            "{value}: {:?}",
            r.header("www-authenticate")
        );
        f.invalid += 1;
    }
    let lower = format!("bearer {}", token("reader"));
    let r = c
        .request(
            "GET",
            "/v1/stats",
            None,
            Vec::new(),
            &[("authorization", &lower)],
        )
        .await;
    expect_ok(&r, "the scheme is case-insensitive");

    // Unknown routes: no token learns nothing; any valid token learns 404/405.
    for path in ["/nope", "/v1/admin2", "/v1/orders/o-1/x/y"] {
        expect_401(&call(&mut c, "GET", path, None).await, path);
        f.missing += 1;
        let r = call(&mut c, "GET", path, Some("loader")).await;
        r.expect_problem(404, "not-found", path);
    }
    let r = call(&mut c, "PUT", "/v1/stats", Some("loader")).await;
    r.expect_problem(405, "method-not-allowed", "PUT /v1/stats");

    // Admin passes the check for the data-protection routes: the erasure runs (o-1 was ingested
    // above), then finds nothing the second time; a purge runs.
    let r = call(&mut c, "DELETE", "/v1/orders/o-1", Some("ops")).await;
    assert_eq!(r.expect_json(200, "erasure as ops")["order_id"], "o-1");
    let r = call(&mut c, "DELETE", "/v1/orders/o-1", Some("ops")).await;
    r.expect_problem(404, "not-found", "a second erasure as ops");
    let r = call(&mut c, "POST", "/v1/admin/purge", Some("ops")).await;
    r.expect_json(200, "purge as ops");
    let r = call(&mut c, "GET", "/v1/admin/erasures/1", Some("ops")).await;
    r.expect_problem(404, "not-found", "no erasure at LSN 1");
    for (method, path) in [("POST", "/v1/admin/purge"), ("GET", "/v1/admin/erasures/1")] {
        expect_401(&call(&mut c, method, path, None).await, path);
        f.missing += 1;
        let r = call(&mut c, method, path, Some("reader")).await;
        r.expect_problem(403, "forbidden", path);
        f.scope += 1;
    }

    let metrics = call(&mut c, "GET", "/metrics", None).await.text();
    check_failure_counters(&metrics, &f);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_alike_over_every_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(&dir, &tokens_toml(&STANDARD), &[]);
    for proto in Proto::ALL {
        let mut c = server.client(proto).await;
        let what = |s: &str| format!("{proto:?}: {s}");
        expect_401(
            &call(&mut c, "GET", "/v1/stats", None).await,
            &what("no token"),
        );
        expect_401(
            &call(&mut c, "GET", "/nope", None).await,
            &what("unknown path"),
        );
        expect_403(
            &call(&mut c, "GET", "/v1/stats", Some("loader")).await,
            "read",
            &what("loader reads"),
        );
        expect_ok(
            &call(&mut c, "GET", "/v1/stats", Some("reader")).await,
            &what("reader reads"),
        );
        expect_ok(
            &call(&mut c, "POST", "/v1/events", Some("loader")).await,
            &what("loader ingests"),
        );
        expect_403(
            &call(&mut c, "GET", "/v1/admin/replication", Some("reader")).await,
            "admin",
            &what("reader administers"),
        );
        expect_ok(
            &call(&mut c, "GET", "/v1/admin/replication", Some("ops")).await,
            &what("ops administers"),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_require_the_read_scope() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!("metrics_auth = \"read\"\n{}", tokens_toml(&STANDARD));
    let server = start_with_config(&dir, &config, &[]);
    let mut c = server.client(Proto::H2).await;
    expect_401(
        &call(&mut c, "GET", "/metrics", None).await,
        "metrics, no token",
    );
    expect_403(
        &call(&mut c, "GET", "/metrics", Some("ops")).await,
        "read",
        "metrics as ops",
    );
    let r = call(&mut c, "GET", "/metrics", Some("reader")).await;
    expect_ok(&r, "metrics as reader");
    check_failure_counters(
        &r.text(),
        &Failures {
            missing: 1,
            invalid: 0,
            scope: 1,
        },
    );
    for path in ["/healthz", "/readyz"] {
        expect_ok(&call(&mut c, "GET", path, None).await, path);
    }
    // The flag wins over the file.
    drop(c);
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(&dir, &config, &["--metrics-auth", "open"]);
    let mut c = server.client(Proto::H1).await;
    expect_ok(
        &call(&mut c, "GET", "/metrics", None).await,
        "--metrics-auth open",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_come_from_a_tokens_file_by_flag_or_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        &dir,
        "tokens.toml",
        &tokens_toml(&[("loader", &["ingest"])]),
    );
    let file = file.to_str().unwrap();
    // The configuration's tokens and the tokens file's, together.
    let server = start_with_config(
        &dir,
        &tokens_toml(&[("reader", &["read"])]),
        &["--tokens-file", file],
    );
    let mut c = server.client(Proto::H1).await;
    expect_ok(
        &call(&mut c, "POST", "/v1/events", Some("loader")).await,
        "loader from the tokens file",
    );
    expect_ok(
        &call(&mut c, "GET", "/v1/stats", Some("reader")).await,
        "reader from the configuration",
    );
    expect_401(&call(&mut c, "GET", "/v1/stats", None).await, "no token");
    drop(c);
    drop(server);

    // The environment variable alone, as a Kubernetes secret mounted as a file would be used.
    let p = launch(
        &["--http", "127.0.0.1:0", "--https", "off"],
        &[("TRACKSTORE_TOKENS_FILE", file)],
    )
    .unwrap_or_else(|e| panic!("start with TRACKSTORE_TOKENS_FILE: {e:?}"));
    assert_eq!(raw_head(p.http(), "GET", "/v1/stats", None).await.0, 401);
    assert_eq!(
        raw_head(p.http(), "GET", "/v1/stats", Some("loader"))
            .await
            .0,
        403
    );
    assert_eq!(raw_head(p.http(), "GET", "/healthz", None).await.0, 200);

    // One name in both places is refused.
    let cfg = write_file(&dir, "dup.toml", &tokens_toml(&[("loader", &["read"])]));
    let err = expect_exit_2(
        &["--config", cfg.to_str().unwrap(), "--tokens-file", file],
        &[],
        "a name in the configuration and the tokens file",
    );
    assert!(err.contains("\"loader\"") && err.contains("twice"), "{err}");
}

#[test]
fn bad_token_configuration_exits_2_with_a_clear_message() {
    let good = hash(&token("ci"));
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "[[tokens]]\nname = \"ci\"\nhash = \"{}\"\nscopes = [\"read\"]\n",
                &good[7..]
            ),
            "sha256:",
        ),
        (
            format!(
                "[[tokens]]\nname = \"ci\"\nhash = \"{}\"\nscopes = [\"read\"]\n",
                good.to_uppercase().replace("SHA256", "sha256")
            ),
            "64 lowercase hex",
        ),
        (
            format!(
                "[[tokens]]\nname = \"ci\"\nhash = \"{}\"\nscopes = [\"read\"]\n",
                &good[..40]
            ),
            "64 lowercase hex",
        ),
        (
            format!(
                "[[tokens]]\nname = \"ci\"\nhash = \"{good}\"\nscopes = [\"read\", \"write\"]\n"
            ),
            "unknown scope \"write\"",
        ),
        (
            format!("[[tokens]]\nname = \"ci\"\nhash = \"{good}\"\nscopes = []\n"),
            "no scope",
        ),
        (
            format!(
                "{}{}",
                tokens_toml(&[("ci", &["read"])]),
                tokens_toml(&[("ci", &["admin"])]).replace(&good, &hash("tst_other"))
            ),
            "used twice",
        ),
        (
            format!("[[tokens]]\nname = \"ci\"\nhash = \"{good}\"\nscope = [\"read\"]\n"),
            "unknown field `scope`",
        ),
        (
            format!("[[tokens]]\nname = \"c i\"\nhash = \"{good}\"\nscopes = [\"read\"]\n"),
            "token name \"c i\"",
        ),
        ("metrics_auth = \"closed\"\n".to_owned(), "closed"),
        (
            "tokens_file = \"/nonexistent/tokens.toml\"\n".to_owned(),
            "/nonexistent/tokens.toml",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (i, (config, expected)) in cases.iter().enumerate() {
        let path = write_file(&dir, &format!("bad-{i}.toml"), config);
        let err = expect_exit_2(
            &[
                "--config",
                path.to_str().unwrap(),
                "--http",
                "127.0.0.1:0",
                "--https",
                "off",
            ],
            &[],
            config,
        );
        assert!(
            err.contains(expected),
            "config:\n{config}\nwanted {expected:?} in:\n{err}"
        );
        if expected.contains("lowercase")
            || expected.ends_with("scope")
            || expected.contains("\"write\"")
        {
            assert!(err.contains("\"ci\""), "the token is named: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_without_tokens_refuses_to_start_unless_allowed() {
    for args in [
        ["--http", "0.0.0.0:0", "--https", "off"],
        ["--http", "127.0.0.1:0", "--https", "0.0.0.0:0"],
    ] {
        let err = expect_exit_2(&args, &[], "non-loopback without tokens");
        assert!(
            err.contains("0.0.0.0") && err.contains("not a loopback address"),
            "{err}"
        );
        assert!(
            err.contains("--allow-unauthenticated"),
            "the way out is named: {err}"
        );
    }

    // Allowed by flag, and by environment: starts, serves without tokens, and says so.
    let exposed = ["--http", "0.0.0.0:0", "--https", "off"];
    let by_flag = [&exposed[..], &["--allow-unauthenticated"][..]].concat();
    for (args, env) in [
        (&by_flag[..], &[][..]),
        (
            &exposed[..],
            &[("TRACKSTORE_ALLOW_UNAUTHENTICATED", "true")][..],
        ),
    ] {
        let p = launch(args, env).unwrap_or_else(|e| panic!("{args:?} {env:?}: {e:?}"));
        assert!(
            p.ready["http"].as_str().unwrap().starts_with("0.0.0.0:"),
            "{}",
            p.ready
        );
        assert_eq!(raw_head(p.http(), "GET", "/v1/stats", None).await.0, 200);
        assert!(
            p.stderr().contains("authentication is OFF"),
            "the warning: {}",
            p.stderr()
        );
    }

    // With tokens a non-loopback listener is fine, and tokens are required.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_file(&dir, "t.toml", &tokens_toml(&STANDARD));
    let p = launch(
        &[&exposed[..], &["--config", cfg.to_str().unwrap()][..]].concat(),
        &[],
    )
    .unwrap_or_else(|e| panic!("with tokens: {e:?}"));
    assert_eq!(raw_head(p.http(), "GET", "/v1/stats", None).await.0, 401);
    assert_eq!(
        raw_head(p.http(), "GET", "/v1/stats", Some("reader"))
            .await
            .0,
        200
    );

    // Loopback without tokens: allowed, with a warning.
    let server = Server::start();
    let mut c = server.client(Proto::H1).await;
    expect_ok(
        &call(&mut c, "GET", "/v1/stats", None).await,
        "loopback, no token",
    );
    assert!(
        server.stderr().contains("authentication is off"),
        "the warning: {}",
        server.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_are_audited_with_the_token_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(&dir, &tokens_toml(&STANDARD), &[]);
    let data = server.data_dir();
    let mut c = server.client(Proto::H1).await;
    let admin = "/v1/admin/replication";
    let started = now_ms();

    let r = call_with(
        &mut c,
        "GET",
        admin,
        Some("ops"),
        &[("x-request-id", "audit-1")],
    )
    .await;
    expect_ok(&r, "GET admin as ops");
    assert_eq!(r.header("x-request-id"), Some("audit-1"));
    expect_403(
        &call(&mut c, "GET", admin, Some("reader")).await,
        "admin",
        "reader",
    );
    // Not audited: no caller to name, and not an admin request.
    expect_401(&call(&mut c, "GET", admin, None).await, "no token");
    expect_ok(
        &call(&mut c, "GET", "/v1/stats", Some("root")).await,
        "a read",
    );
    // A state-changing method: a `started` record before, the outcome after.
    let r = call_with(
        &mut c,
        "POST",
        admin,
        Some("ops"),
        &[("x-request-id", "audit-2")],
    )
    .await;
    r.expect_problem(405, "method-not-allowed", "POST admin");

    let lines = audit_lines(&data);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let pick = |l: &Value| {
        json!({"who": l["who"], "action": l["action"], "target": l["target"],
               "outcome": l["outcome"], "request_id": l["request_id"]})
    };
    assert_eq!(
        pick(&lines[0]),
        json!({"who": "ops", "action": "GET /v1/admin/replication", "target": "replication",
               "outcome": 200, "request_id": "audit-1"})
    );
    assert_eq!(lines[1]["who"], "reader");
    assert_eq!(lines[1]["outcome"], 403);
    assert_eq!(
        pick(&lines[2]),
        json!({"who": "ops", "action": "POST /v1/admin/replication", "target": "replication",
               "outcome": "started", "request_id": "audit-2"})
    );
    assert_eq!(lines[3]["outcome"], 405);
    assert_eq!(lines[3]["request_id"], "audit-2");
    for l in &lines {
        let t = trackstore_engine::Timestamp::parse(l["time"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("time of {l}: {e}"));
        assert!(
            (started - 1_000..=now_ms() + 1_000).contains(&t.as_millis()),
            "time {l}"
        );
    }
    let generated = call(&mut c, "GET", admin, Some("root")).await;
    let id = generated
        .header("x-request-id")
        .expect("an id is made")
        .to_owned();
    let last = audit_lines(&data).pop().unwrap();
    assert_eq!(
        (last["who"].clone(), last["request_id"].clone()),
        (json!("root"), json!(id))
    );

    // The audit log cannot be written: admin changes are refused, admin reads still served.
    let log = data.join("audit.log");
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    let r = call(&mut c, "POST", admin, Some("ops")).await;
    r.expect_problem(500, "audit-failure", "POST admin without an audit log");
    expect_ok(
        &call(&mut c, "GET", admin, Some("ops")).await,
        "GET admin without an audit log",
    );
    std::fs::remove_dir(&log).unwrap();
    let r = call(&mut c, "POST", admin, Some("ops")).await;
    r.expect_problem(
        405,
        "method-not-allowed",
        "POST admin with the audit log back",
    );
    let lines = audit_lines(&data);
    assert_eq!(lines.len(), 2, "a new file after the failure: {lines:#?}");
    assert_eq!(lines[0]["outcome"], "started");
    assert_eq!(lines[1]["outcome"], 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_admin_calls_are_audited_as_anonymous_loopback() {
    let server = Server::start();
    let mut c = server.client(Proto::H3).await;
    expect_ok(
        &call(&mut c, "GET", "/v1/admin/replication", None).await,
        "admin without auth",
    );
    let lines = audit_lines(&server.data_dir());
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["who"], "anonymous-loopback");
    assert_eq!(lines[0]["action"], "GET /v1/admin/replication");
    assert_eq!(lines[0]["outcome"], 200);
}
