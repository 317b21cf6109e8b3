//! The connection phase against the real binary, before any request: a TCP, TLS or QUIC
//! connection that does not start a request within the header read timeout is closed (whatever it
//! sent: nothing, part of the HTTP/2 preface, the preface and SETTINGS), an HTTP/3 header section
//! over the bound is refused (431, or the stream reset before the server buffers it when its frame
//! is far over), an HTTP/3 request head that stalls is dropped, and QUIC Initials from addresses
//! that never answer take no connection slot (Retry). After each, the server still serves.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::{Proto, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;

/// The header read timeout the servers of these tests run with: long enough for a first request
/// right after a handshake on a loaded machine.
const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Slack for a loaded machine: a connection must be closed by the timeout plus this.
const MARGIN: Duration = Duration::from_millis(2_500);
/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// H3_EXCESSIVE_LOAD (RFC 9114 §8.1).
const H3_EXCESSIVE_LOAD: u32 = 0x0107;

fn start() -> Server {
    let ms = HEADER_READ_TIMEOUT.as_millis().to_string();
    Server::start_with(&["--header-read-timeout-ms", &ms])
}

/// Reads until the server closes the connection; returns what it sent. Panics if it is still open
/// after the header read timeout plus [`MARGIN`] from `since`, or if it closed well before the
/// timeout (something else closed it).
async fn wait_for_close<S: AsyncRead + Unpin>(mut io: S, since: Instant, what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    let limit = HEADER_READ_TIMEOUT + MARGIN;
    let read = tokio::time::timeout(limit.saturating_sub(since.elapsed()), async {
        let mut chunk = [0u8; 4096];
        loop {
            match io.read(&mut chunk).await {
                Ok(0) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                // A reset, or TLS without close_notify: closed all the same.
                Err(_) => return,
            }
        }
    })
    .await;
    let waited = since.elapsed();
    assert!(
        read.is_ok(),
        "{what}: the connection was still open {waited:?} after it started (header read timeout \
         {HEADER_READ_TIMEOUT:?})"
    );
    assert!(
        waited >= HEADER_READ_TIMEOUT.mul_f64(0.8),
        "{what}: closed after {waited:?}, before the header read timeout"
    );
    received
}

/// A request on a new connection is answered.
async fn still_serves(server: &Server, proto: Proto) {
    let mut c = server.client(proto).await;
    assert_eq!(
        c.get("/healthz").await.status,
        200,
        "{} after the test",
        proto.tag()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_that_sends_nothing_is_closed() {
    let server = start();
    let tcp = TcpStream::connect(server.addrs.http).await.unwrap();
    let started = Instant::now();
    let got = wait_for_close(tcp, started, "silent TCP").await;
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "silent TCP: the server sent {:?}",
        String::from_utf8_lossy(&got)
    );
    still_serves(&server, Proto::H1).await;
    still_serves(&server, Proto::H2c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_http2_preface_is_closed() {
    let server = start();
    // 16 of the 24 bytes: still the preface as far as it goes, so the server waits to tell
    // HTTP/2 from HTTP/1.1.
    let mut tcp = TcpStream::connect(server.addrs.http).await.unwrap();
    let started = Instant::now();
    tcp.write_all(&H2_PREFACE[..16]).await.unwrap();
    wait_for_close(tcp, started, "partial preface").await;
    // "PRI" alone, a byte at a time.
    let mut tcp = TcpStream::connect(server.addrs.http).await.unwrap();
    let started = Instant::now();
    for b in b"PRI" {
        tcp.write_all(std::slice::from_ref(b)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_close(tcp, started, "PRI").await;
    still_serves(&server, Proto::H2c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_a_stream_gets_goaway_and_is_closed() {
    let server = start();
    let mut tcp = TcpStream::connect(server.addrs.http).await.unwrap();
    let started = Instant::now();
    tcp.write_all(H2_PREFACE).await.unwrap();
    // An empty SETTINGS frame: a valid HTTP/2 connection, on which no stream ever opens. The
    // server's keep-alive PINGs go unanswered, but their timeout is 30 s + 20 s away.
    tcp.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    // GOAWAY, PING, then (this client never answers the PING) the close after a 1 s grace.
    let got = wait_for_close(tcp, started, "HTTP/2 without a stream").await;
    let mut types = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = (usize::from(rest[0]) << 16) | (usize::from(rest[1]) << 8) | usize::from(rest[2]);
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(
        types.contains(&0x7),
        "no GOAWAY before the close; frame types {types:?}"
    );
    still_serves(&server, Proto::H2c).await;
}

fn roots(cert: &Path) -> RootCertStore {
    let der = CertificateDer::from_pem_file(cert).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(der).unwrap();
    roots
}

fn rustls_client(cert: &Path, alpn: &[u8]) -> rustls::ClientConfig {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots(cert))
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_that_sends_nothing_after_the_handshake_is_closed() {
    let server = start();
    for alpn in [&b"h2"[..], b"http/1.1"] {
        let what = format!("TLS with ALPN {}", String::from_utf8_lossy(alpn));
        let tcp = TcpStream::connect(server.addrs.https).await.unwrap();
        let connector = TlsConnector::from(Arc::new(rustls_client(&server.cert_path(), alpn)));
        let tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn), "{what}");
        // The clock starts at the end of the handshake.
        let started = Instant::now();
        wait_for_close(tls, started, &what).await;
    }
    still_serves(&server, Proto::H2).await;
    still_serves(&server, Proto::H1Tls).await;
}

/// Verifies what the no-request deadline relies on: between requests, hyper's own HTTP/1.1 header
/// timer closes an idle keep-alive connection (it passed before the deadline existed too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed_by_the_header_read_timeout() {
    let server = start();
    let mut tcp = TcpStream::connect(server.addrs.http).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .expect("a Content-Length");
    let mut body = vec![0; length];
    tcp.read_exact(&mut body).await.unwrap();
    let idle_since = Instant::now();
    let got = wait_for_close(tcp, idle_since, "idle keep-alive").await;
    assert!(!String::from_utf8_lossy(&got).contains("200"), "{got:?}");
}

// ---------------------------------------------------------------------------------------------
// HTTP/3, by hand on quinn: the server's limits must hold whatever a client sends
// ---------------------------------------------------------------------------------------------

fn quic_client_config(cert: &Path) -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots(cert))
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

fn quic_endpoint(cert: &Path) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    endpoint.set_default_client_config(quic_client_config(cert));
    endpoint
}

/// A QUIC connection to the server's HTTP/3 address (the endpoint must outlive it).
async fn quic_connect(server: &Server) -> (quinn::Endpoint, quinn::Connection) {
    let endpoint = quic_endpoint(&server.cert_path());
    let conn = endpoint
        .connect(server.addrs.h3, "localhost")
        .unwrap()
        .await
        .expect("QUIC handshake");
    (endpoint, conn)
}

fn varint(v: u64) -> Vec<u8> {
    match v {
        0..=63 => vec![v as u8],
        64..=16_383 => ((v as u16) | 0x4000).to_be_bytes().to_vec(),
        16_384..=1_073_741_823 => ((v as u32) | 0x8000_0000).to_be_bytes().to_vec(),
        _ => (v | 0xc000_0000_0000_0000).to_be_bytes().to_vec(),
    }
}

/// An HPACK/QPACK integer (RFC 7541 §5.1) with an N-bit prefix after the pattern bits `first`.
fn prefix_int(bits: u32, first: u8, mut value: usize) -> Vec<u8> {
    let max = (1usize << bits) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// A string literal without Huffman coding, its length with a 7-bit prefix.
fn string(s: &[u8]) -> Vec<u8> {
    let mut out = prefix_int(7, 0, s.len());
    out.extend_from_slice(s);
    out
}

/// The QPACK field section of `GET path` (static table only, RFC 9204 Appendix A) with extra fields
/// as literals.
fn get_section(path: &str, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = vec![0x00, 0x00]; // Required Insert Count 0, Base 0: no dynamic table
    block.push(0xc0 | 17); // :method GET
    block.push(0xc0 | 23); // :scheme https
    block.extend(prefix_int(4, 0x50, 0)); // :authority, literal value
    block.extend(string(b"localhost"));
    block.extend(prefix_int(4, 0x50, 1)); // :path, literal value
    block.extend(string(path.as_bytes()));
    for (name, value) in extra {
        block.extend(prefix_int(3, 0x20, name.len())); // literal name, no Huffman
        block.extend_from_slice(name.as_bytes());
        block.extend(string(value));
    }
    block
}

/// An HTTP/3 frame.
fn frame(frame_type: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = varint(frame_type);
    out.extend(varint(payload.len() as u64));
    out.extend_from_slice(payload);
    out
}

/// Sends `bytes` as a request stream (finished) and reads the whole response stream.
async fn raw_request(conn: &quinn::Connection, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(bytes).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())
}

/// The payload of the first frame of a response stream if it is HEADERS.
fn first_headers(response: &[u8]) -> Option<&[u8]> {
    let mut cur = response;
    let mut next_varint = || {
        let first = *cur.first()?;
        let len = 1usize << (first >> 6);
        let bytes = cur.get(..len)?;
        let mut v = u64::from(first & 0x3f);
        for b in &bytes[1..] {
            v = (v << 8) | u64::from(*b);
        }
        cur = &cur[len..];
        Some(v)
    };
    let ty = next_varint()?;
    let len = usize::try_from(next_varint()?).ok()?;
    (ty == 0x01).then(|| cur.get(..len)).flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_header_section_over_the_bound_gets_431() {
    let server = start();
    let (_endpoint, conn) = quic_connect(&server).await;
    // A section within the bound is served: the hand-made request is right.
    let small = frame(0x01, &get_section("/healthz", &[("x-pad", &[b'a'; 1000])]));
    let response = raw_request(&conn, &small).await.unwrap();
    let head = first_headers(&response).expect("a HEADERS frame");
    assert_eq!(
        head.get(2),
        Some(&(0xc0 | 25)),
        "status 200 (static index 25): {head:?}"
    );
    // 20 KiB of field values: over the 16 KiB section bound, within the frame bound, so h3 reads
    // it and answers 431 itself.
    let big = frame(
        0x01,
        &get_section("/healthz", &[("x-pad", &[b'a'; 20 * 1024])]),
    );
    let response = raw_request(&conn, &big).await.unwrap();
    let head = first_headers(&response).expect("a HEADERS frame");
    // `:status` by name reference, its value "431" as is or Huffman-coded (as h3 sends it).
    assert!(
        head.windows(3)
            .any(|w| w == b"431" || w == [0x69, 0x90, 0xff]),
        "a 20 KiB header section is answered 431: {head:02x?}"
    );
    still_serves(&server, Proto::H3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_http3_headers_frame_is_refused_before_it_is_buffered() {
    let server = start();
    let (_endpoint, conn) = quic_connect(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // A HEADERS frame declaring 64 MiB, of which 256 KiB are sent: h3 would buffer it all.
    let mut bytes = varint(0x01);
    bytes.extend(varint(64 << 20));
    bytes.extend(vec![0u8; 256 * 1024]);
    let started = Instant::now();
    // The server stops the stream: the write may fail part way.
    let _ = send.write_all(&bytes).await;
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT + MARGIN, recv.read_to_end(1 << 20))
        .await
        .expect("the stream is still open");
    match read {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            assert_eq!(
                code,
                quinn::VarInt::from_u32(H3_EXCESSIVE_LOAD),
                "reset code"
            );
        }
        other => panic!("the stream ended with {other:?}, not a reset with H3_EXCESSIVE_LOAD"),
    }
    assert!(
        started.elapsed() < HEADER_READ_TIMEOUT,
        "refused at once, not by the header read timeout: {:?}",
        started.elapsed()
    );
    // The connection carries on: another request on it is served.
    let ok = frame(0x01, &get_section("/healthz", &[]));
    let response = raw_request(&conn, &ok).await.unwrap();
    assert_eq!(
        first_headers(&response).and_then(|h| h.get(2)),
        Some(&(0xc0 | 25))
    );
    still_serves(&server, Proto::H3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_request_head_that_stalls_is_dropped_after_the_header_read_timeout() {
    let server = start();
    let (_endpoint, conn) = quic_connect(&server).await;
    // A first request, so that the connection itself is past its no-request deadline.
    let ok = frame(0x01, &get_section("/healthz", &[]));
    raw_request(&conn, &ok).await.unwrap();
    // A HEADERS frame declaring 100 bytes, of which 10 arrive.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut bytes = varint(0x01);
    bytes.extend(varint(100));
    bytes.extend([0u8; 10]);
    send.write_all(&bytes).await.unwrap();
    let started = Instant::now();
    let read = tokio::time::timeout(HEADER_READ_TIMEOUT + MARGIN, recv.read_to_end(1 << 20)).await;
    assert!(
        read.is_ok(),
        "the stalled request stream was still open after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT.mul_f64(0.8),
        "dropped too early: {:?}",
        started.elapsed()
    );
    if let Ok(Ok(body)) = read {
        assert!(body.is_empty(), "a stalled head got a response: {body:?}");
    }
    still_serves(&server, Proto::H3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http3_connection_without_a_request_is_closed() {
    let server = start();
    // A plain client; then one that allows the server no unidirectional stream, so that h3's setup
    // (which opens the control stream) never completes.
    for uni_streams in [100u32, 0] {
        let mut config = quic_client_config(&server.cert_path());
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_uni_streams(uni_streams.into());
        config.transport_config(Arc::new(transport));
        let endpoint = quic_endpoint(&server.cert_path());
        let conn = endpoint
            .connect_with(config, server.addrs.h3, "localhost")
            .unwrap()
            .await
            .expect("QUIC handshake");
        let started = Instant::now();
        let closed = tokio::time::timeout(HEADER_READ_TIMEOUT + MARGIN, conn.closed()).await;
        assert!(
            closed.is_ok(),
            "the QUIC connection without a request (client allowing {uni_streams} \
             unidirectional streams) was still open after {:?}",
            started.elapsed()
        );
        assert!(
            started.elapsed() >= HEADER_READ_TIMEOUT.mul_f64(0.8),
            "closed too early: {:?} ({:?})",
            started.elapsed(),
            closed
        );
    }
    still_serves(&server, Proto::H3).await;
}

/// The destination connection ID of a QUIC long-header packet (RFC 9000 §17.2).
fn long_header_dcid(packet: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*packet.get(5)?);
    packet.get(6..6 + len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_initials_from_addresses_that_never_answer_take_no_connection_slot() {
    // As many Initials as slots: without address validation, each would hold one for the
    // handshake timeout (10 s), and the real client below would be refused.
    const SLOTS: usize = 8;
    let ms = HEADER_READ_TIMEOUT.as_millis().to_string();
    let slots = SLOTS.to_string();
    let server =
        Server::start_with(&["--header-read-timeout-ms", &ms, "--max-connections", &slots]);
    // Genuine client Initials, caught on their way: what a sender with spoofed source addresses
    // sends (it never sees the answers).
    let trap = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let endpoint = quic_endpoint(&server.cert_path());
    let mut attempts = Vec::new();
    for _ in 0..SLOTS {
        let connecting = endpoint
            .connect(trap.local_addr().unwrap(), "localhost")
            .unwrap();
        attempts.push(tokio::spawn(async move {
            let _ = connecting.await;
        }));
    }
    let mut initials: Vec<Vec<u8>> = Vec::new();
    while initials.len() < SLOTS {
        let mut packet = vec![0u8; 65_536];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), trap.recv_from(&mut packet))
            .await
            .expect("the client sends its Initials")
            .unwrap();
        packet.truncate(n);
        // A retransmission carries the same connection ID: one packet per attempt.
        if !initials
            .iter()
            .any(|p| long_header_dcid(p) == long_header_dcid(&packet))
        {
            initials.push(packet);
        }
    }
    for attempt in attempts {
        attempt.abort();
    }
    endpoint.close(0u32.into(), b"");
    let spoofed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for initial in &initials {
        spoofed.send_to(initial, server.addrs.h3).await.unwrap();
    }
    // The server answers the spoofed address (Retry packets, or without validation its
    // handshakes); give it the time to take the slots if it were going to.
    let mut answer = vec![0u8; 65_536];
    tokio::time::timeout(Duration::from_secs(5), spoofed.recv_from(&mut answer))
        .await
        .expect("the server answers the Initials")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A real client still gets in, at once.
    let real = tokio::time::timeout(Duration::from_secs(5), async {
        let endpoint = quic_endpoint(&server.cert_path());
        let conn = endpoint
            .connect(server.addrs.h3, "localhost")
            .unwrap()
            .await
            .map_err(|e| format!("QUIC handshake: {e}"))?;
        raw_request(&conn, &frame(0x01, &get_section("/healthz", &[]))).await
    })
    .await
    .expect("the real client got no answer within 5 s");
    let response = real.expect("the real client is served");
    assert_eq!(
        first_headers(&response).and_then(|h| h.get(2)),
        Some(&(0xc0 | 25))
    );
}
