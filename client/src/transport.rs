//! The transport core: connections over HTTP/1.1 (clear or TLS), HTTP/2 (h2c or TLS ALPN h2) and
//! HTTP/3 (QUIC), one request/response exchange on them, and response bodies read chunk by chunk.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio::sync::OwnedMutexGuard;

use crate::config::{ClientConfig, Proto, Target};
use crate::error::{ApiError, Error, Problem};

type H1Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type H2Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;
type H3Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;
type H3Stream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// How much of a non-problem error body is kept for the message.
const ERROR_BODY_CHARS_MAX: usize = 2_048;

/// A request to send: method, path (with query), headers and body. The client adds `Host` /
/// `:authority`, the scheme and, when configured, `Authorization`.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: Method,
    /// Starts with `/`; percent-encode query values (see [`crate::encode`]).
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Request {
    pub fn new(method: Method, path: impl Into<String>) -> Request {
        Request {
            method,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    pub fn get(path: impl Into<String>) -> Request {
        Request::new(Method::GET, path)
    }

    /// A `POST` with a body of the given content type.
    pub fn post(
        path: impl Into<String>,
        content_type: &'static str,
        body: impl Into<Bytes>,
    ) -> Request {
        Request::new(Method::POST, path)
            .header(CONTENT_TYPE, HeaderValue::from_static(content_type))
            .with_body(body)
    }

    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Request {
        self.headers.append(name, value);
        self
    }

    /// Adds a header given as text; [`Error::InvalidRequest`] if the name or value is not valid.
    pub fn try_header(self, name: &str, value: &str) -> Result<Request, Error> {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| Error::InvalidRequest(format!("header name {name:?}: {e}")))?;
        let v = HeaderValue::from_str(value)
            .map_err(|e| Error::InvalidRequest(format!("header {name} value {value:?}: {e}")))?;
        Ok(self.header(n, v))
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Request {
        self.body = body.into();
        self
    }
}

/// A complete response, whatever its status.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as JSON of type `T`; [`Error::Decode`] if it is not.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Decode(format!(
                "{} body is not the expected JSON ({e}): {}",
                self.status,
                snippet(&self.body)
            ))
        })
    }

    /// The problem document of an error response, if the body is one.
    pub fn problem(&self) -> Option<Problem> {
        if self.status.is_success() {
            return None;
        }
        serde_json::from_slice::<Problem>(&self.body)
            .ok()
            .filter(|p| !p.type_uri.is_empty() || !p.title.is_empty())
    }

    /// `Ok(self)` for 1xx–3xx, [`Error::Api`] (with the problem parsed) for 4xx and 5xx.
    pub fn error_for_status(self) -> Result<Response, Error> {
        if !(self.status.is_client_error() || self.status.is_server_error()) {
            return Ok(self);
        }
        let problem = self.problem();
        let retry_after = self
            .header(RETRY_AFTER.as_str())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Error::Api(Box::new(ApiError {
            status: self.status,
            body: if problem.is_some() {
                String::new()
            } else {
                snippet(&self.body)
            },
            problem,
            retry_after,
        })))
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut s: String = text.chars().take(ERROR_BODY_CHARS_MAX).collect();
    if text.chars().count() > ERROR_BODY_CHARS_MAX {
        s.push('…');
    }
    s
}

/// The client side of one connection: hyper's senders for HTTP/1.1 and HTTP/2, h3's for HTTP/3.
/// Cloning is cheap: HTTP/2 and HTTP/3 senders open concurrent streams; the HTTP/1.1 sender sits
/// behind a mutex because its requests take turns.
#[derive(Clone)]
enum Sender {
    H1(Arc<tokio::sync::Mutex<H1Sender>>),
    H2(H2Sender),
    H3 {
        send: H3Sender,
        quic: quinn::Connection,
    },
}

impl Sender {
    fn is_usable(&self) -> bool {
        match self {
            // Busy means alive; a turn that finds it closed reconnects then.
            Sender::H1(m) => m.try_lock().map_or(true, |s| !s.is_closed()),
            Sender::H2(s) => !s.is_closed(),
            Sender::H3 { quic, .. } => quic.close_reason().is_none(),
        }
    }
}

/// A factory of connections to one server: the parsed URL, the TLS configurations and, for HTTP/3,
/// the UDP endpoint every connection of this client shares. Cheap to clone; make one per server.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    config: ClientConfig,
    target: Target,
    tcp_tls: Option<Arc<rustls::ClientConfig>>,
    quic: Option<quinn::ClientConfig>,
    /// One QUIC endpoint (UDP socket) per address family, made on the first HTTP/3 connect.
    endpoints: Mutex<[Option<quinn::Endpoint>; 2]>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.inner.config.server)
            .field("proto", &self.inner.config.proto)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values stay consistent at every await-free step, so a panic elsewhere leaves them
    // usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Client {
    /// Checks the configuration and prepares TLS; connects nothing yet.
    pub fn new(config: ClientConfig) -> Result<Client, Error> {
        let target = Target::parse(&config.server, config.proto)?;
        if let Some(t) = &config.token {
            HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| Error::Config("the token holds characters a header cannot".into()))?;
        }
        let (mut tcp_tls, mut quic) = (None, None);
        if target.tls {
            let trust = config.trust.as_ref().ok_or_else(|| {
                Error::Config(format!(
                    "{} is https: give the CA or server certificate to trust (the server's is \
                     DATA/tls/cert.pem), or insecure mode for loopback tests",
                    config.server
                ))
            })?;
            let id = config.client_identity.as_ref();
            match config.proto {
                Proto::H1 => {
                    tcp_tls = Some(Arc::new(crate::tls::client_config(trust, id, b"http/1.1")?));
                }
                Proto::H2 => tcp_tls = Some(Arc::new(crate::tls::client_config(trust, id, b"h2")?)),
                Proto::H3 => {
                    let tls = crate::tls::client_config(trust, id, b"h3")?;
                    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
                        .map_err(|e| Error::Config(format!("QUIC TLS configuration: {e}")))?;
                    let idle = quinn::IdleTimeout::try_from(config.quic_idle_timeout)
                        .map_err(|e| Error::Config(format!("QUIC idle timeout: {e}")))?;
                    let mut transport = quinn::TransportConfig::default();
                    transport
                        .max_idle_timeout(Some(idle))
                        .keep_alive_interval(Some(config.quic_idle_timeout / 3));
                    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
                    client.transport_config(Arc::new(transport));
                    quic = Some(client);
                }
            }
        }
        Ok(Client {
            inner: Arc::new(ClientInner {
                config,
                target,
                tcp_tls,
                quic,
                endpoints: Mutex::new([None, None]),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn proto(&self) -> Proto {
        self.inner.config.proto
    }

    /// Opens a connection now (so that an unreachable server is reported here). The returned
    /// handle reconnects by itself when the server closed the connection.
    pub async fn connect(&self) -> Result<Connection, Error> {
        let sender = self.open().await?;
        Ok(Connection {
            inner: Arc::new(ConnInner {
                client: self.clone(),
                slot: Mutex::new(Slot {
                    generation: 1,
                    sender: Some(sender),
                }),
                reconnect: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn connect_error(&self, message: impl Into<String>) -> Error {
        Error::Connect {
            target: format!("{} ({})", self.inner.config.server, self.inner.config.proto),
            message: message.into(),
        }
    }

    async fn addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        if let Some(a) = self.inner.config.connect_addr {
            return Ok(vec![a]);
        }
        let t = &self.inner.target;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(|e| self.connect_error(format!("resolve {}: {e}", t.host)))?
            .collect();
        if addrs.is_empty() {
            return Err(self.connect_error(format!("{} resolves to no address", t.host)));
        }
        Ok(addrs)
    }

    async fn open(&self) -> Result<Sender, Error> {
        let timeout = self.inner.config.connect_timeout;
        match tokio::time::timeout(timeout, self.open_inner()).await {
            Ok(r) => r,
            Err(_) => Err(self.connect_error(format!("no connection within {timeout:?}"))),
        }
    }

    async fn open_inner(&self) -> Result<Sender, Error> {
        let proto = self.inner.config.proto;
        if proto == Proto::H3 {
            return self.open_h3().await;
        }
        let tcp = self.tcp().await?;
        match (&self.inner.tcp_tls, proto) {
            (None, Proto::H1) => self.h1(TokioIo::new(tcp)).await,
            (None, _) => self.h2(TokioIo::new(tcp)).await,
            (Some(tls), _) => {
                let name = ServerName::try_from(self.inner.target.host.clone())
                    .map_err(|e| self.connect_error(format!("not a valid TLS server name: {e}")))?;
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| self.connect_error(format!("TLS handshake: {e}")))?;
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                match (proto, alpn.as_deref()) {
                    (Proto::H1, None | Some(b"http/1.1")) => self.h1(TokioIo::new(stream)).await,
                    (Proto::H2, Some(b"h2")) => self.h2(TokioIo::new(stream)).await,
                    (_, other) => Err(self.connect_error(format!(
                        "the server negotiated ALPN {:?}, not {proto}",
                        other.map(String::from_utf8_lossy)
                    ))),
                }
            }
        }
    }

    async fn tcp(&self) -> Result<TcpStream, Error> {
        let mut last = String::new();
        for addr in self.addrs().await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    // Small requests and answers: do not wait for Nagle.
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(self.connect_error(last))
    }

    async fn h1<T>(&self, io: T) -> Result<Sender, Error>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.connect_error(format!("HTTP/1.1 handshake: {e}")))?;
        tokio::spawn(async move {
            // Ends when the connection closes; errors surface on the requests.
            let _ = conn.await;
        });
        Ok(Sender::H1(Arc::new(tokio::sync::Mutex::new(sender))))
    }

    async fn h2<T>(&self, io: T) -> Result<Sender, Error>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| self.connect_error(format!("HTTP/2 handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    }

    fn endpoint(&self, ipv6: bool) -> Result<quinn::Endpoint, Error> {
        let mut endpoints = lock(&self.inner.endpoints);
        let slot = &mut endpoints[usize::from(ipv6)];
        if let Some(e) = slot {
            return Ok(e.clone());
        }
        let bind: SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| self.connect_error(format!("bind a UDP socket: {e}")))?;
        if let Some(q) = &self.inner.quic {
            endpoint.set_default_client_config(q.clone());
        }
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    async fn open_h3(&self) -> Result<Sender, Error> {
        let addrs = self.addrs().await?;
        // QUIC has no cheap "refused": prefer IPv4, as the server's default listeners are.
        let addr = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| self.connect_error("no address"))?;
        let endpoint = self.endpoint(addr.is_ipv6())?;
        let quic = endpoint
            .connect(addr, &self.inner.target.host)
            .map_err(|e| self.connect_error(format!("start QUIC: {e}")))?
            .await
            .map_err(|e| self.connect_error(format!("QUIC handshake: {e}")))?;
        let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|e| self.connect_error(format!("HTTP/3 setup: {e}")))?;
        tokio::spawn(async move {
            let _closed = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok(Sender::H3 { send, quic })
    }

    /// The `http::Request` as each protocol wants it.
    fn build(&self, req: &Request) -> Result<http::Request<()>, Error> {
        if !req.path.starts_with('/') {
            return Err(Error::InvalidRequest(format!(
                "the path {:?} does not start with /",
                req.path
            )));
        }
        let t = &self.inner.target;
        let path = format!("{}{}", t.base_path, req.path);
        let mut builder = http::Request::builder().method(req.method.clone());
        builder = match self.inner.config.proto {
            Proto::H1 => builder.uri(path).header(HOST, &t.authority),
            Proto::H2 | Proto::H3 => builder.uri(format!("{}://{}{path}", t.scheme(), t.authority)),
        };
        let mut http_req = builder
            .body(())
            .map_err(|e| Error::InvalidRequest(format!("{} {}: {e}", req.method, req.path)))?;
        for (name, value) in &req.headers {
            http_req.headers_mut().append(name.clone(), value.clone());
        }
        if let Some(token) = &self.inner.config.token
            && !http_req.headers().contains_key(AUTHORIZATION)
        {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::InvalidRequest("the token is not a valid header".into()))?;
            value.set_sensitive(true);
            http_req.headers_mut().insert(AUTHORIZATION, value);
        }
        Ok(http_req)
    }
}

/// One connection to the server, over the client's protocol. Clones share the connection and are
/// cheap: hand one to each task. Over HTTP/2 and HTTP/3 the clones' requests run concurrently as
/// streams of the one connection (up to the server's stream limit, beyond which they wait); over
/// HTTP/1.1 they take turns. To spread load over several connections, call
/// [`Client::connect`] several times.
///
/// When the server has closed the connection (an idle HTTP/1.1 keep-alive, a restart), the next
/// request opens a new one; a request that fails before anything was sent is retried once on it.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<ConnInner>,
}

struct ConnInner {
    client: Client,
    slot: Mutex<Slot>,
    /// Held while reconnecting, so that concurrent requests wait for one new connection.
    reconnect: tokio::sync::Mutex<()>,
}

struct Slot {
    generation: u64,
    sender: Option<Sender>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let slot = lock(&self.inner.slot);
        f.debug_struct("Connection")
            .field("client", &self.inner.client)
            .field("generation", &slot.generation)
            .field("open", &slot.sender.is_some())
            .finish()
    }
}

/// Where a request failed: before the server could have seen it (safe to resend on a new
/// connection whatever the method), or after.
enum Failure {
    NotSent(Error),
    Sent(Error),
}

/// A response whose body is still to be read.
pub(crate) struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: BodyReader,
}

/// A response body, read chunk by chunk. Over HTTP/1.1 it holds the connection's turn until it is
/// dropped.
pub(crate) enum BodyReader {
    Hyper {
        body: hyper::body::Incoming,
        _turn: Option<OwnedMutexGuard<H1Sender>>,
    },
    H3(Box<H3Stream>),
}

impl BodyReader {
    /// The next non-empty chunk, `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        match self {
            BodyReader::Hyper { body, .. } => loop {
                match body.frame().await {
                    None => return Ok(None),
                    Some(Err(e)) => {
                        return Err(Error::Transport(format!("read the response body: {e}")));
                    }
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data()
                            && !data.is_empty()
                        {
                            return Ok(Some(data));
                        }
                    }
                }
            },
            BodyReader::H3(stream) => match stream.recv_data().await {
                Ok(Some(mut chunk)) => Ok(Some(chunk.copy_to_bytes(chunk.remaining()))),
                Ok(None) => Ok(None),
                Err(e) => Err(Error::Transport(format!("read the response body: {e}"))),
            },
        }
    }

    async fn collect(&mut self, limit: usize) -> Result<Bytes, Error> {
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if out.len() + chunk.len() > limit {
                return Err(Error::TooLarge { limit });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

impl Connection {
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    pub fn proto(&self) -> Proto {
        self.inner.client.proto()
    }

    /// Drops the current connection (in-flight requests on it finish or fail); the next request
    /// opens a new one.
    pub fn disconnect(&self) {
        lock(&self.inner.slot).sender = None;
    }

    fn current(&self) -> Option<(u64, Sender)> {
        let slot = lock(&self.inner.slot);
        slot.sender
            .as_ref()
            .filter(|s| s.is_usable())
            .map(|s| (slot.generation, s.clone()))
    }

    async fn sender(&self) -> Result<(u64, Sender), Error> {
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let _turn = self.inner.reconnect.lock().await;
        if let Some(s) = self.current() {
            return Ok(s);
        }
        let sender = self.inner.client.open().await?;
        let mut slot = lock(&self.inner.slot);
        slot.generation += 1;
        slot.sender = Some(sender.clone());
        Ok((slot.generation, sender))
    }

    /// Forgets the connection of `generation` after it failed (a newer one is kept).
    fn invalidate(&self, generation: u64) {
        let mut slot = lock(&self.inner.slot);
        if slot.generation == generation {
            slot.sender = None;
        }
    }

    /// Sends the request and waits for the response head, reconnecting once if the connection
    /// turned out to be closed before the request left.
    pub(crate) async fn head(&self, req: &Request) -> Result<Head, Error> {
        let http_req = self.inner.client.build(req)?;
        let mut retried = false;
        loop {
            let (generation, sender) = self.sender().await?;
            match exchange(sender, http_req.clone(), req.body.clone()).await {
                Ok(head) => return Ok(head),
                Err(Failure::NotSent(e)) => {
                    self.invalidate(generation);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                Err(Failure::Sent(e)) => {
                    self.invalidate(generation);
                    return Err(e);
                }
            }
        }
    }

    /// Sends one request and reads the whole response, whatever its status, within
    /// `request_timeout`. Errors are about the exchange only; see [`Response::error_for_status`].
    pub async fn send(&self, req: Request) -> Result<Response, Error> {
        let config = self.inner.client.config();
        let (timeout, limit) = (config.request_timeout, config.max_response_bytes);
        let exchange = async {
            let mut head = self.head(&req).await?;
            let body = head.body.collect(limit).await?;
            Ok(Response {
                status: head.status,
                version: head.version,
                headers: head.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => {
                // The connection may be mid-response: never reuse it.
                self.disconnect();
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// [`Connection::send`], then [`Response::error_for_status`].
    pub async fn send_ok(&self, req: Request) -> Result<Response, Error> {
        self.send(req).await?.error_for_status()
    }

    /// `GET path`, expecting 2xx JSON of type `T`.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send_ok(Request::get(path)).await?.json()
    }
}

async fn exchange(sender: Sender, req: http::Request<()>, body: Bytes) -> Result<Head, Failure> {
    let transport = |what: &str, e: &dyn fmt::Display| Error::Transport(format!("{what}: {e}"));
    match sender {
        Sender::H1(m) => {
            let mut turn = m.lock_owned().await;
            if turn.ready().await.is_err() {
                return Err(Failure::NotSent(Error::Transport(
                    "the server closed the connection".into(),
                )));
            }
            let resp = turn
                .send_request(req.map(|()| Full::new(body)))
                .await
                .map_err(|e| Failure::Sent(transport("HTTP/1.1 request", &e)))?;
            Ok(hyper_head(resp, Some(turn)))
        }
        Sender::H2(mut s) => {
            if s.ready().await.is_err() {
                return Err(Failure::NotSent(Error::Transport(
                    "the server closed the connection".into(),
                )));
            }
            let resp = s
                .send_request(req.map(|()| Full::new(body)))
                .await
                .map_err(|e| Failure::Sent(transport("HTTP/2 request", &e)))?;
            Ok(hyper_head(resp, None))
        }
        Sender::H3 { mut send, .. } => {
            let mut stream = send
                .send_request(req)
                .await
                .map_err(|e| Failure::NotSent(transport("HTTP/3 request", &e)))?;
            // The server may answer (413, say) and stop reading before the whole body is sent: a
            // failed send is then not an error as long as a response arrives.
            let mut send_error = None;
            if !body.is_empty()
                && let Err(e) = stream.send_data(body).await
            {
                send_error = Some(e);
            }
            if send_error.is_none()
                && let Err(e) = stream.finish().await
            {
                send_error = Some(e);
            }
            let head = stream.recv_response().await.map_err(|e| {
                let sent = send_error.map(|s| format!(" (sending failed: {s})"));
                Failure::Sent(Error::Transport(format!(
                    "HTTP/3 response: {e}{}",
                    sent.unwrap_or_default()
                )))
            })?;
            let (parts, ()) = head.into_parts();
            Ok(Head {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body: BodyReader::H3(Box::new(stream)),
            })
        }
    }
}

fn hyper_head(
    resp: http::Response<hyper::body::Incoming>,
    turn: Option<OwnedMutexGuard<H1Sender>>,
) -> Head {
    let (parts, body) = resp.into_parts();
    Head {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: BodyReader::Hyper { body, _turn: turn },
    }
}

/// Percent-encodes a path segment or query value (times carry `:` and `+`).
pub fn encode(value: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_times_and_ids() {
        assert_eq!(
            encode("2026-11-21T09:30:00+01:00"),
            "2026-11-21T09%3A30%3A00%2B01%3A00"
        );
        assert_eq!(encode("o-1.a_b~"), "o-1.a_b~");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
    }

    #[test]
    fn requests_carry_the_token_and_the_authority_each_protocol_wants() {
        let config = ClientConfig::new("http://127.0.0.1:8080/base", Proto::H1).with_token("tst_x");
        let h1 = Client::new(config).unwrap();
        let req = h1.build(&Request::get("/v1/stats")).unwrap();
        assert_eq!(req.uri(), "/base/v1/stats");
        assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer tst_x");
        assert!(req.headers()[AUTHORIZATION].is_sensitive());
        let own = Request::get("/v1/stats")
            .try_header("authorization", "Bearer other")
            .unwrap();
        let req = h1.build(&own).unwrap();
        assert_eq!(req.headers().get_all(AUTHORIZATION).iter().count(), 1);
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer other");
        assert!(h1.build(&Request::get("v1/stats")).is_err());

        let h3 = Client::new(
            ClientConfig::new("https://[::1]:8443", Proto::H3).with_trust(crate::Trust::Insecure),
        )
        .unwrap();
        let req = h3.build(&Request::get("/v1/stats?x=1")).unwrap();
        assert_eq!(req.uri(), "https://[::1]:8443/v1/stats?x=1");
        assert!(req.headers().get(AUTHORIZATION).is_none());
        let e = Client::new(ClientConfig::new("https://127.0.0.1:8443", Proto::H2)).unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = Client::new(
            ClientConfig::new("http://127.0.0.1:1", Proto::H1).with_token("bad\ntoken"),
        )
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
    }

    #[test]
    fn error_responses_carry_the_problem() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        let resp = Response {
            status: StatusCode::SERVICE_UNAVAILABLE,
            version: Version::HTTP_11,
            headers,
            body: Bytes::from_static(
                br#"{"type":"https://trackstore.dev/problems/overloaded","title":"Overloaded, retry later","status":503,"detail":"busy"}"#,
            ),
        };
        let e = resp.error_for_status().unwrap_err();
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert_eq!(e.problem().unwrap().slug(), "overloaded");
        assert_eq!(e.to_string(), "503 Overloaded, retry later: busy");
        let plain = Response {
            status: StatusCode::BAD_GATEWAY,
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"upstream down"),
        };
        let e = plain.error_for_status().unwrap_err();
        assert!(e.problem().is_none());
        assert!(e.to_string().contains("upstream down"), "{e}");
    }
}
