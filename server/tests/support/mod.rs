//! Support for the end-to-end tests: a guard that runs the real `trackstore` binary on loopback ports
//! with a temporary data directory, and one small client per protocol (HTTP/1.1 cleartext and over
//! TLS, h2c, HTTP/2 over TLS, HTTP/3 over QUIC) behind a single `request` method, so that every test
//! can run the same requests over every protocol and compare the answers.

#![allow(
    dead_code,
    reason = "each test target uses a different part of the support module"
)]

pub mod cluster;

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Once, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Map, Value, json};
use tempfile::TempDir;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// How long the server may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a graceful shutdown may take after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------------

/// The addresses the server reported in its ready line.
#[derive(Clone, Debug)]
pub struct Addrs {
    pub http: SocketAddr,
    pub https: SocketAddr,
    pub h3: SocketAddr,
}

/// A running `trackstore` process. Dropping the guard kills the process (SIGKILL if it is still
/// alive) and removes its data directory, so a panicking test leaks nothing.
pub struct Server {
    child: Option<Child>,
    /// Holds `data/` (the server's data directory) and the stderr logs of each start.
    root: TempDir,
    starts: usize,
    extra_args: Vec<String>,
    pub addrs: Addrs,
    stderr_path: PathBuf,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.child.as_ref().map(Child::id))
            .field("data", &self.data_dir())
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl Server {
    /// Starts a primary with plain HTTP, HTTPS and HTTP/3 on ephemeral loopback ports.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with extra command-line arguments after the standard ones.
    pub fn start_with(args: &[&str]) -> Server {
        let root = tempfile::Builder::new()
            .prefix("trackstore-e2e-")
            .tempdir()
            .expect("create a temporary directory");
        let extra_args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let (child, addrs, stderr_path) = spawn(root.path(), &extra_args, 0);
        Server {
            child: Some(child),
            root,
            starts: 1,
            extra_args,
            addrs,
            stderr_path,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// The self-signed certificate the server made in its data directory: the clients' only root.
    pub fn cert_path(&self) -> PathBuf {
        // A node started with a cluster CA serves a certificate that CA signed: trust the CA.
        if let Some(i) = self.extra_args.iter().position(|a| a == "--tls-ca") {
            return PathBuf::from(&self.extra_args[i + 1]);
        }
        self.data_dir().join("tls").join("cert.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// What the server wrote to stderr so far (for failure messages).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", child.id());
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the server") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not exit within {STOP_TIMEOUT:?} of SIGTERM; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again on the same data directory (after [`Server::stop`]). The ports are new.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server before restarting it");
        let (child, addrs, stderr_path) = spawn(self.root.path(), &self.extra_args, self.starts);
        self.starts += 1;
        self.child = Some(child);
        self.addrs = addrs;
        self.stderr_path = stderr_path;
    }

    /// Starts the server again on the same data directory with other extra arguments (a new role).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| (*s).to_owned()).collect();
        self.restart();
    }

    /// Kills the process at once (SIGKILL): a crash, nothing flushed beyond what was synced.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A client for one protocol, connected to this server.
    pub async fn client(&self, proto: Proto) -> Client {
        Client::connect(proto, &self.addrs, &self.cert_path()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// Spawns the binary on `root/data` and waits for its ready line. The stderr log of this start goes
/// to `root/stderr.N.log`, beside (not inside) the data directory the server owns.
fn spawn(root: &Path, extra_args: &[String], start: usize) -> (Child, Addrs, PathBuf) {
    let data = root.join("data");
    let data = data.as_path();
    let stderr_path = root.join(format!("stderr.{start}.log"));
    let stderr = File::create(&stderr_path).expect("create the stderr log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trackstore"))
        .arg("--data")
        .arg(data)
        .args([
            "--http",
            "127.0.0.1:0",
            "--https",
            "127.0.0.1:0",
            "--replication",
            "off",
        ])
        .args(extra_args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn the trackstore binary");
    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<Value>();
    // The reader keeps draining stdout after the ready line so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut ready_sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if ready_sent {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v.get("event").and_then(Value::as_str) == Some("ready")
            {
                ready_sent = true;
                let _ = tx.send(v);
            }
        }
    });
    let ready = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(v) => v,
        Err(e) => {
            let exited = child.try_wait().ok().flatten();
            let _ = child.kill();
            let _ = child.wait();
            let mut log = String::new();
            let _ = File::open(&stderr_path).and_then(|mut f| f.read_to_string(&mut log));
            panic!(
                "trackstore printed no ready line ({e:?}; exit status {exited:?}); stderr:\n{log}"
            );
        }
    };
    let addr = |key: &str| -> SocketAddr {
        ready
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("ready line without a valid `{key}` address: {ready}"))
    };
    let addrs = Addrs {
        http: addr("http"),
        https: addr("https"),
        h3: addr("h3"),
    };
    assert_eq!(
        addrs.https.port(),
        addrs.h3.port(),
        "HTTPS and HTTP/3 share one port number: {ready}"
    );
    let canonical = |p: &Path| p.canonicalize().ok();
    assert_eq!(
        ready
            .get("data")
            .and_then(Value::as_str)
            .and_then(|p| canonical(Path::new(p))),
        canonical(data),
        "the ready line names the data directory: {ready}"
    );
    (child, addrs, stderr_path)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// The protocols the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// HTTP/1.1 in clear text to the `http` listener.
    H1,
    /// HTTP/2 with prior knowledge in clear text (h2c) to the `http` listener.
    H2c,
    /// HTTP/1.1 over TLS (ALPN `http/1.1`) to the `https` listener.
    H1Tls,
    /// HTTP/2 over TLS (ALPN `h2`) to the `https` listener.
    H2,
    /// HTTP/3 over QUIC (ALPN `h3`) to the `h3` address.
    H3,
}

impl Proto {
    pub const ALL: [Proto; 5] = [Proto::H1, Proto::H2c, Proto::H1Tls, Proto::H2, Proto::H3];

    /// The HTTP version the response must carry.
    pub fn version(self) -> Version {
        match self {
            Proto::H1 | Proto::H1Tls => Version::HTTP_11,
            Proto::H2c | Proto::H2 => Version::HTTP_2,
            Proto::H3 => Version::HTTP_3,
        }
    }

    /// A short lowercase tag, usable in ids (`[A-Za-z0-9._:-]`).
    pub fn tag(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2c => "h2c",
            Proto::H1Tls => "h1tls",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Proto::H1Tls | Proto::H2 | Proto::H3)
    }
}

/// A connection to the server over one protocol: a [`trackstore_client::Connection`] (the shared
/// transport core of trackctl and trackload), which reconnects when the server closed the previous
/// connection (as an HTTP/1.1 server may after an error response).
pub struct Client {
    pub proto: Proto,
    addrs: Addrs,
    /// For the hand-written `Expect: 100-continue` exchange, which bypasses the client library.
    roots: Arc<RootCertStore>,
    conn: trackstore_client::Connection,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("proto", &self.proto)
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// A complete response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Tests that build their own rustls configurations rely on the process-wide provider;
        // another test thread of this process may have installed it: that is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn tls_config(roots: &Arc<RootCertStore>, alpn: &[u8]) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(Arc::clone(roots))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

/// The client library's configuration for one of the five ways in: the URL names `localhost`
/// (the name in the server's certificate) for TLS, and the address is the one the server reported.
fn client_config(proto: Proto, addrs: &Addrs, cert: &Path) -> trackstore_client::ClientConfig {
    use trackstore_client::{ClientConfig, Proto as P, Trust};
    let (url, p, addr) = match proto {
        Proto::H1 => (
            format!("http://127.0.0.1:{}", addrs.http.port()),
            P::H1,
            addrs.http,
        ),
        Proto::H2c => (
            format!("http://127.0.0.1:{}", addrs.http.port()),
            P::H2,
            addrs.http,
        ),
        Proto::H1Tls => (
            format!("https://localhost:{}", addrs.https.port()),
            P::H1,
            addrs.https,
        ),
        Proto::H2 => (
            format!("https://localhost:{}", addrs.https.port()),
            P::H2,
            addrs.https,
        ),
        Proto::H3 => (
            format!("https://localhost:{}", addrs.h3.port()),
            P::H3,
            addrs.h3,
        ),
    };
    let mut config = ClientConfig::new(url, p)
        .with_connect_addr(addr)
        .with_request_timeout(REQUEST_TIMEOUT);
    config.connect_timeout = REQUEST_TIMEOUT;
    if proto.is_tls() {
        config.trust = Some(Trust::CaFile(cert.to_owned()));
    }
    config
}

impl Client {
    pub async fn connect(proto: Proto, addrs: &Addrs, cert: &Path) -> Client {
        install_crypto_provider();
        let der = CertificateDer::from_pem_file(cert)
            .unwrap_or_else(|e| panic!("read the server certificate {}: {e}", cert.display()));
        let mut roots = RootCertStore::empty();
        roots
            .add(der)
            .expect("the server certificate is a valid root");
        let client = trackstore_client::Client::new(client_config(proto, addrs, cert))
            .expect("a valid client configuration");
        let conn = client.connect().await.unwrap_or_else(|e| {
            panic!(
                "{}: connect with the server's self-signed certificate as the only root: {e}",
                proto.tag()
            )
        });
        Client {
            proto,
            addrs: addrs.clone(),
            roots: Arc::new(roots),
            conn,
        }
    }

    /// A TLS connection to the https listener for the hand-written HTTP/1.1 exchange.
    async fn tls(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.addrs.https)
            .await
            .expect("connect to the https listener");
        tcp.set_nodelay(true).expect("set TCP_NODELAY");
        let connector = TlsConnector::from(Arc::new(tls_config(&self.roots, alpn)));
        let name = ServerName::try_from("localhost").expect("a valid server name");
        let tls = connector
            .connect(name, tcp)
            .await
            .expect("TLS handshake with the server's self-signed certificate as the only root");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(alpn),
            "the server negotiates ALPN {}",
            String::from_utf8_lossy(alpn)
        );
        tls
    }

    /// The authority and scheme (for the `Host` of the hand-written exchange).
    fn base(&self) -> String {
        match self.proto {
            Proto::H1 | Proto::H2c => format!("http://127.0.0.1:{}", self.addrs.http.port()),
            Proto::H1Tls | Proto::H2 => format!("https://localhost:{}", self.addrs.https.port()),
            Proto::H3 => format!("https://localhost:{}", self.addrs.h3.port()),
        }
    }

    /// Sends one request and reads the whole response; panics if the exchange fails.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Response {
        match self
            .try_request(method, path, content_type, body, headers)
            .await
        {
            Ok(resp) => resp,
            Err(e) => panic!("{e}"),
        }
    }

    /// Sends one request and reads the whole response, or says why there is no response (connection
    /// reset, protocol error, timeout). The next request reconnects if the connection is gone.
    pub async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> Result<Response, String> {
        let what = format!("{} {method} {path}", self.proto.tag());
        let method = Method::from_bytes(method.as_bytes()).expect("a valid method");
        let mut req = trackstore_client::Request::new(method, path).with_body(body);
        if let Some(ct) = content_type {
            req = req
                .try_header("content-type", ct)
                .expect("a valid content type");
        }
        for (name, value) in headers {
            req = req.try_header(name, value).expect("a valid header");
        }
        let result = self.conn.send(req).await;
        if result.is_err() {
            // Whatever state the connection is in, do not reuse it.
            self.conn.disconnect();
        }
        let resp = result.map_err(|e| format!("{what}: {e}"))?;
        assert_eq!(
            resp.version,
            self.proto.version(),
            "{what}: response HTTP version"
        );
        Ok(Response {
            status: resp.status,
            version: resp.version,
            headers: resp.headers,
            body: resp.body.to_vec(),
        })
    }

    /// An HTTP/1.1 request sent the way curl sends large bodies: the head with `Expect:
    /// 100-continue` first, the body only after `100 Continue`. A server that answers early (413 on
    /// the declared length) is then read without racing its close against the body upload. Uses a
    /// fresh connection; only for [`Proto::H1`] and [`Proto::H1Tls`].
    pub async fn request_expect_continue(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Response, String> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {content_type}\r\n\
             content-length: {}\r\nexpect: 100-continue\r\nconnection: close\r\n\r\n",
            self.base().rsplit('/').next().unwrap_or(""),
            body.len()
        );
        let exchange = async {
            match self.proto {
                Proto::H1 => {
                    let tcp = TcpStream::connect(self.addrs.http)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    expect_continue_exchange(tcp, head.as_bytes(), body).await
                }
                Proto::H1Tls => {
                    let tls = self.tls(b"http/1.1").await;
                    expect_continue_exchange(tls, head.as_bytes(), body).await
                }
                other => panic!("Expect: 100-continue is an HTTP/1.1 mechanism, not {other:?}'s"),
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no response within {REQUEST_TIMEOUT:?}"))?
    }

    // Shorthands.

    pub async fn get(&mut self, path: &str) -> Response {
        self.request("GET", path, None, Vec::new(), &[]).await
    }

    /// `POST` with `application/json`.
    pub async fn post_json(&mut self, path: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).expect("serialise JSON");
        self.request("POST", path, Some("application/json"), bytes, &[])
            .await
    }

    /// `POST /v1/events` with `application/x-ndjson`, one event per line.
    pub async fn post_ndjson(&mut self, events: &[Value]) -> Response {
        let mut body = Vec::new();
        for e in events {
            serde_json::to_writer(&mut body, e).expect("serialise JSON");
            body.push(b'\n');
        }
        self.request(
            "POST",
            "/v1/events",
            Some("application/x-ndjson"),
            body,
            &[],
        )
        .await
    }

    /// `GET` that must answer 200 with JSON; returns the JSON.
    pub async fn get_json(&mut self, path: &str) -> Value {
        let resp = self.get(path).await;
        resp.expect_json(200, &format!("{} GET {path}", self.proto.tag()))
    }

    /// `GET /v1/stats` as JSON.
    pub async fn stats(&mut self) -> Value {
        self.get_json("/v1/stats").await
    }
}

/// Writes `head`, waits for the server's first response; after `100 Continue` writes `body` and
/// reads the final response.
async fn expect_continue_exchange<S>(
    mut io: S,
    head: &[u8],
    body: &[u8],
) -> Result<Response, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    io.write_all(head)
        .await
        .map_err(|e| format!("write the head: {e}"))?;
    io.flush()
        .await
        .map_err(|e| format!("flush the head: {e}"))?;
    let mut buf = Vec::new();
    let mut resp = read_h1_response(&mut io, &mut buf).await?;
    if resp.status == StatusCode::CONTINUE {
        io.write_all(body)
            .await
            .map_err(|e| format!("write the body: {e}"))?;
        io.flush()
            .await
            .map_err(|e| format!("flush the body: {e}"))?;
        resp = read_h1_response(&mut io, &mut buf).await?;
    }
    Ok(resp)
}

/// Reads one HTTP/1.1 response (interim responses have no body) from `io`, with `buf` holding bytes
/// already read past the previous response.
async fn read_h1_response<S>(io: &mut S, buf: &mut Vec<u8>) -> Result<Response, String>
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    async fn fill<S: tokio::io::AsyncRead + Unpin>(
        io: &mut S,
        buf: &mut Vec<u8>,
    ) -> Result<usize, String> {
        let mut chunk = [0u8; 16 * 1024];
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if fill(io, buf).await? == 0 {
            return Err(format!(
                "connection closed before a response head: {:?}",
                String::from_utf8_lossy(buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let status = StatusCode::from_u16(code).map_err(|e| format!("bad status {code}: {e}"))?;
    let mut headers = HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| format!("{e}"))?,
            HeaderValue::from_str(value.trim()).map_err(|e| format!("{e}"))?,
        );
    }
    let mut body = Vec::new();
    if !status.is_informational() {
        let chunked = headers
            .get(http::header::TRANSFER_ENCODING)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let length = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if fill(io, buf).await? == 0 {
                        return Err("connection closed inside a chunked body".into());
                    }
                };
                let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
                while buf.len() < line_end + 2 + size + 2 {
                    if fill(io, buf).await? == 0 {
                        return Err("connection closed inside a chunk".into());
                    }
                }
                body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
                buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            while buf.len() < n {
                if fill(io, buf).await? == 0 {
                    return Err(format!(
                        "connection closed after {} of {n} body bytes",
                        buf.len()
                    ));
                }
            }
            body = buf.drain(..n).collect();
        } else {
            while fill(io, buf).await? > 0 {}
            body = std::mem::take(buf);
        }
    }
    Ok(Response {
        status,
        version: Version::HTTP_11,
        headers,
        body,
    })
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body: {}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts the status and a JSON content type; returns the JSON.
    pub fn expect_json(&self, status: u16, what: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{what}: status; body: {}",
            self.text()
        );
        assert!(
            self.content_type().starts_with("application/json"),
            "{what}: content type {:?}; body: {}",
            self.content_type(),
            self.text()
        );
        self.json()
    }

    /// Asserts an RFC 9457 problem with this status and `type` slug; returns the problem.
    pub fn expect_problem(&self, status: u16, slug: &str, what: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{what}: status; body: {}",
            self.text()
        );
        assert!(
            self.content_type().starts_with("application/problem+json"),
            "{what}: content type {:?} (want application/problem+json); body: {}",
            self.content_type(),
            self.text()
        );
        let p = self.json();
        let ty = p["type"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: problem without a string `type`: {p}"));
        assert_eq!(
            ty.rsplit('/').next(),
            Some(slug),
            "{what}: problem type {ty:?}; problem: {p}"
        );
        assert_eq!(p["status"], json!(status), "{what}: problem status: {p}");
        assert!(p["title"].is_string(), "{what}: problem title: {p}");
        assert!(p["detail"].is_string(), "{what}: problem detail: {p}");
        p
    }
}

/// Asserts that a problem lists a field error for `field` at event `index` (`None`: no index).
pub fn assert_field_error(problem: &Value, index: Option<u64>, field: &str, what: &str) {
    let errors = problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: problem without an `errors` array: {problem}"));
    let found = errors.iter().any(|e| {
        e["field"].as_str() == Some(field)
            && e.get("index").and_then(Value::as_u64) == index
            && e["message"].as_str().is_some_and(|m| !m.is_empty())
    });
    assert!(
        found,
        "{what}: no error for field {field:?} at index {index:?} (with a message) in {problem}"
    );
}

// ---------------------------------------------------------------------------------------------
// Time and events
// ---------------------------------------------------------------------------------------------

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("a representable time")
}

/// RFC 3339 in UTC with milliseconds, as the API prints times: `2026-11-21T09:30:00.000Z`.
pub fn rfc3339(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    // Howard Hinnant's civil_from_days.
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

/// A whole second some time ago, so that test times print without surprises.
pub fn base_time(ago_ms: i64) -> i64 {
    (now_ms() - ago_ms) / 1_000 * 1_000
}

/// A minimal valid event.
pub fn event(event_id: &str, order_id: &str, status: &str, occurred_at_ms: i64) -> Value {
    json!({
        "event_id": event_id,
        "order_id": order_id,
        "status": status,
        "occurred_at": rfc3339(occurred_at_ms),
    })
}

/// Sets (or with `Value::Null`, removes) fields of an event object.
/// Ingests `batches` × 1,000 events of ~2 KiB each (a padding attribute) into 100 orders, one
/// millisecond apart from `t0`: far more bytes than socket buffers hold, for tests of clients that
/// read slowly or not at all. Event ids are `{prefix}-{n}`, orders `{prefix}-o-{n % 100}`.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub async fn ingest_padded(client: &mut Client, prefix: &str, batches: i64, t0: i64) {
    let pad = "x".repeat(1_900);
    for batch in 0..batches {
        let events: Vec<Value> = (0..1_000)
            .map(|i| {
                let n = batch * 1_000 + i;
                with(
                    event(
                        &format!("{prefix}-{n}"),
                        &format!("{prefix}-o-{}", n % 100),
                        "in_transit",
                        t0 + n,
                    ),
                    &[("attributes", json!({ "pad": pad }))],
                )
            })
            .collect();
        client
            .post_json("/v1/events", &Value::Array(events))
            .await
            .expect_json(200, "ingest padded events");
    }
}

pub fn with(mut event: Value, fields: &[(&str, Value)]) -> Value {
    let obj: &mut Map<String, Value> = event.as_object_mut().expect("an event object");
    for (k, v) in fields {
        if v.is_null() {
            obj.remove(*k);
        } else {
            obj.insert((*k).to_owned(), v.clone());
        }
    }
    event
}

/// Percent-encodes a query parameter value (times carry `:` and `+`).
pub fn q(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Follows `next_cursor` from `first_path` (which has a `?`) until it is null; returns every item of
/// `key` and the page sizes. Every page but the last must be full (`limit` items).
pub async fn collect_pages(
    client: &mut Client,
    first_path: &str,
    key: &str,
    limit: usize,
) -> (Vec<Value>, Vec<usize>) {
    let mut items = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            None => first_path.to_owned(),
            Some(c) => format!("{first_path}&cursor={}", q(c)),
        };
        let page = client.get_json(&path).await;
        let list = page[key]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: no `{key}` array in {page}"));
        assert!(
            list.len() <= limit,
            "GET {path}: {} items for limit {limit}",
            list.len()
        );
        sizes.push(list.len());
        items.extend(list.iter().cloned());
        match &page["next_cursor"] {
            Value::Null => {
                for (i, &n) in sizes.iter().enumerate().take(sizes.len() - 1) {
                    assert_eq!(
                        n, limit,
                        "{first_path}: page {i} is not full but a cursor followed it (sizes {sizes:?})"
                    );
                }
                return (items, sizes);
            }
            Value::String(c) => cursor = Some(c.clone()),
            other => panic!("GET {path}: next_cursor is neither a string nor null: {other}"),
        }
    }
    panic!("{first_path}: more than 100 pages");
}

/// Checks that python3 can import aioquic; panics with the fix otherwise.
pub fn require_aioquic() {
    let out = Command::new("python3")
        .args(["-c", "import aioquic"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import aioquic, which the HTTP/3 interoperability test needs: run `make deps` \
             (it runs `pip install aioquic`). python3 said: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "python3 is not available ({e}); the HTTP/3 interoperability test needs python3 with aioquic: \
             run `make deps`"
        ),
    }
}
