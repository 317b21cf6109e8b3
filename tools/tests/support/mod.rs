//! Support for trackctl's end-to-end tests: the real `trackstore` binary on loopback ports (found
//! beside `trackctl`: Cargo gives `CARGO_BIN_EXE_*` only for the test's own package, and
//! `cargo test --workspace` builds every binary before running tests), and `trackctl` runs with a
//! deadline and an environment that no user configuration leaks into.

#![allow(
    dead_code,
    reason = "each test target uses a different part of the support module"
)]

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tempfile::TempDir;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one trackctl command may run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn trackctl_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trackctl"))
}

pub fn trackstore_path() -> PathBuf {
    let path = trackctl_path()
        .parent()
        .expect("trackctl lives in a directory")
        .join("trackstore");
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace --all-features`, which builds \
         the server binary too",
        path.display()
    );
    path
}

/// A running `trackstore`. Dropping it kills the process; the temporary directory goes with it.
pub struct Server {
    child: Option<Child>,
    root: TempDir,
    starts: usize,
    extra: Vec<String>,
    pub http: SocketAddr,
    pub https: SocketAddr,
}

impl Server {
    /// A primary with HTTP and HTTPS/HTTP/3 on ephemeral loopback ports.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Server {
        let root = tempfile::Builder::new()
            .prefix("trackctl-e2e-")
            .tempdir()
            .expect("a temporary directory");
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (child, http, https) = spawn(root.path(), "127.0.0.1:0", "127.0.0.1:0", &extra, 0);
        Server {
            child: Some(child),
            root,
            starts: 1,
            extra,
            http,
            https,
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The self-signed certificate the server made on first start.
    pub fn cert(&self) -> PathBuf {
        self.data_dir().join("tls").join("cert.pem")
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn https_url(&self) -> String {
        format!("https://{}", self.https)
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {}", child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while child.try_wait().expect("wait for the server").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not stop within {STOP_TIMEOUT:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: a crash. Acknowledged events survive (writes are acknowledged after fsync).
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().expect("kill the server");
        child.wait().expect("reap the server");
    }

    /// Starts again on the same data directory and the same ports (clients reconnect to the same
    /// address, as after a real restart).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let (http, https) = (self.http.to_string(), self.https.to_string());
        let (child, h, s) = spawn(self.root.path(), &http, &https, &self.extra, self.starts);
        assert_eq!((h, s), (self.http, self.https), "the same ports");
        self.starts += 1;
        self.child = Some(child);
    }

    pub fn stderr(&self) -> String {
        let mut all = String::new();
        for i in 0..self.starts {
            all += &std::fs::read_to_string(self.root.path().join(format!("stderr.{i}.log")))
                .unwrap_or_default();
        }
        all
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(
    root: &Path,
    http: &str,
    https: &str,
    extra: &[String],
    start: usize,
) -> (Child, SocketAddr, SocketAddr) {
    let stderr_path = root.join(format!("stderr.{start}.log"));
    let stderr = File::create(&stderr_path).expect("create the stderr log");
    let mut child = Command::new(trackstore_path())
        .arg("--data")
        .arg(root.join("data"))
        .args(["--http", http, "--https", https, "--replication", "off"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn trackstore");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent
                && let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["event"] == "ready"
            {
                sent = true;
                let _ = tx.send(v);
            }
        }
    });
    let Ok(ready) = rx.recv_timeout(READY_TIMEOUT) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "trackstore printed no ready line; stderr:\n{}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
    };
    let addr = |k: &str| -> SocketAddr {
        ready[k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no `{k}` address in {ready}"))
    };
    (child, addr("http"), addr("https"))
}

/// What a trackctl run printed and returned.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts the exit code; returns self for chaining.
    pub fn expect_code(self, code: i32, what: &str) -> Output {
        assert_eq!(self.code, code, "{what}: exit code; {self:#?}");
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:#?}"))
    }
}

/// A trackctl command builder: arguments, environment, stdin.
pub struct Ctl {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

/// `trackctl ARGS` with a private HOME (no ~/.config/trackctl.toml) and no TRACKCTL_* variables.
pub fn ctl<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Ctl {
    let mut cmd = Command::new(trackctl_path());
    cmd.args(args);
    for var in [
        "TRACKCTL_SERVER",
        "TRACKCTL_PROTO",
        "TRACKCTL_CA",
        "TRACKCTL_TOKEN",
        "TRACKCTL_CONFIG",
        "XDG_CONFIG_HOME",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("HOME", std::env::temp_dir().join("trackctl-tests-no-home"));
    Ctl { cmd, stdin: None }
}

impl Ctl {
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Ctl {
        self.cmd.env(k, v);
        self
    }

    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Ctl {
        self.stdin = Some(bytes.into());
        self
    }

    /// Spawns it with stdout piped (for long-running commands such as `tail`).
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trackctl")
    }

    /// Runs it to the end (killed after [`RUN_TIMEOUT`]).
    pub fn run(mut self) -> Output {
        let mut child = self
            .cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn trackctl");
        if let Some(bytes) = self.stdin.take() {
            let mut stdin = child.stdin.take().expect("piped");
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        // Drained on threads so that a large output never blocks the child on a full pipe.
        let drain = |r: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut r) = r {
                    let _ = r.read_to_string(&mut s);
                }
                s
            })
        };
        let out = drain(
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let err = drain(
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for trackctl") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "trackctl did not finish within {RUN_TIMEOUT:?}; stderr: {}",
                    err.join().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output {
            code: status.code().unwrap_or(-1),
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        }
    }
}

/// The global flags to reach `server` over `proto` (`h1`, `h2`, `h3`), TLS with its certificate.
pub fn over(server: &Server, proto: &str, tls: bool) -> Vec<String> {
    let url = if tls {
        server.https_url()
    } else {
        server.http_url()
    };
    let mut v = vec![
        "--server".to_owned(),
        url,
        "--proto".to_owned(),
        proto.to_owned(),
    ];
    if tls {
        v.push("--ca".to_owned());
        v.push(server.cert().display().to_string());
    }
    v
}

/// `args` after the cleartext HTTP/1.1 flags of `server`.
pub fn h1(server: &Server, args: &[&str]) -> Vec<String> {
    let mut v = over(server, "h1", false);
    v.extend(args.iter().map(|s| (*s).to_owned()));
    v
}

/// Milliseconds since the epoch, a whole second some time ago.
pub fn base_time(ago_ms: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    (i64::try_from(now).expect("representable") - ago_ms) / 1_000 * 1_000
}

/// RFC 3339 UTC with milliseconds, as the API prints times.
pub fn rfc3339(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let secs = ms_of_day / 1_000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60,
        ms_of_day % 1_000
    )
}

pub fn event(event_id: &str, order_id: &str, status: &str, at_ms: i64) -> Value {
    json!({"event_id": event_id, "order_id": order_id, "status": status,
           "occurred_at": rfc3339(at_ms)})
}

pub fn ndjson(events: &[Value]) -> String {
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a test file");
    path
}

/// The server's live subscriber count, from `GET /metrics` (a hand-written HTTP/1.1 request, so
/// that the check does not depend on the client under test).
pub fn subscribers(server: &Server) -> u64 {
    let mut tcp = std::net::TcpStream::connect(server.http).expect("connect for /metrics");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .expect("send the request");
    let mut text = String::new();
    tcp.read_to_string(&mut text).expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("trackstore_stream_subscribers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no trackstore_stream_subscribers in /metrics:\n{text}"))
}

/// Waits (up to 30 s) until the server counts `n` live subscribers.
pub fn wait_for_subscribers(server: &Server, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = subscribers(server);
        if now == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} subscribers, not {n}, after 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
