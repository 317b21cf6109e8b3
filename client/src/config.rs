//! What a [`Client`](crate::Client) connects to and how: server URL, protocol, TLS trust, token,
//! timeouts and bounds.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::Error;

/// The HTTP version spoken. The URL scheme decides TLS: `http://` is HTTP/1.1 or h2c (HTTP/2 with
/// prior knowledge) in clear text; `https://` is TLS with ALPN `http/1.1` or `h2`, and the only
/// scheme HTTP/3 (QUIC on the same port number, UDP) accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    H1,
    H2,
    H3,
}

impl Proto {
    /// The HTTP version a response over this protocol carries.
    pub fn version(self) -> http::Version {
        match self {
            Proto::H1 => http::Version::HTTP_11,
            Proto::H2 => http::Version::HTTP_2,
            Proto::H3 => http::Version::HTTP_3,
        }
    }

    /// Whether requests can run concurrently on one connection (HTTP/2 and HTTP/3 streams). On an
    /// HTTP/1.1 connection they take turns.
    pub fn multiplexed(self) -> bool {
        !matches!(self, Proto::H1)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::H1 => "h1",
            Proto::H2 => "h2",
            Proto::H3 => "h3",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = Error;
    fn from_str(s: &str) -> Result<Proto, Error> {
        match s.to_ascii_lowercase().as_str() {
            "h1" | "http1" | "http/1.1" => Ok(Proto::H1),
            "h2" | "http2" | "h2c" => Ok(Proto::H2),
            "h3" | "http3" => Ok(Proto::H3),
            _ => Err(Error::Config(format!(
                "unknown protocol {s:?}: use h1, h2 or h3"
            ))),
        }
    }
}

/// Which server certificates an `https://` client accepts. There is no default: trackstore nodes
/// usually present a self-signed or private-CA certificate, which no system store holds.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trust {
    /// A PEM file of one or more CA (or self-signed server) certificates, for example the server's
    /// `DATA/tls/cert.pem`.
    CaFile(PathBuf),
    /// The same, already in memory.
    CaPem(Vec<u8>),
    /// Accept any certificate (signatures are still checked, the chain and name are not). For
    /// loopback testing only: it defeats TLS's protection against impostors.
    Insecure,
}

/// A client certificate and key (PEM files), for servers that require mutual TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything a [`Client`](crate::Client) needs. Make one with [`ClientConfig::new`] and set fields;
/// new fields only ever come with defaults.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port` (a path prefix is allowed and kept).
    pub server: String,
    pub proto: Proto,
    /// Required for `https://`.
    pub trust: Option<Trust>,
    pub client_identity: Option<ClientIdentity>,
    /// Sent as `Authorization: Bearer <token>` on every request.
    pub token: Option<String>,
    /// Connect here instead of resolving the URL's host (which still names the server for TLS and
    /// in `Host` / `:authority`), as curl's `--resolve`.
    pub connect_addr: Option<SocketAddr>,
    /// TCP connect plus TLS or QUIC handshake plus HTTP/2 or HTTP/3 setup.
    pub connect_timeout: Duration,
    /// A whole request: sending it and reading the complete response.
    pub request_timeout: Duration,
    /// An event stream with no byte for this long is dead (the server sends a keep-alive every 15 s).
    pub stream_idle_timeout: Duration,
    /// HTTP/3: a QUIC connection that hears nothing for this long is dead. The client sends
    /// keep-alives at a third of it, so only a vanished server (crash, network cut: QUIC has no
    /// reset a restarted server could send) is noticed, within this time.
    pub quic_idle_timeout: Duration,
    /// The largest response body read into memory.
    pub max_response_bytes: usize,
    /// The longest line accepted in an event stream.
    pub max_stream_line_bytes: usize,
}

impl ClientConfig {
    /// A configuration with the defaults: no trust (set it for `https://`), no token, 10 s to
    /// connect, 30 s per request, 60 s of stream silence, 10 s of QUIC silence, 256 MiB per response, 1 MiB per stream
    /// line.
    pub fn new(server: impl Into<String>, proto: Proto) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            proto,
            trust: None,
            client_identity: None,
            token: None,
            connect_addr: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stream_idle_timeout: Duration::from_secs(60),
            quic_idle_timeout: Duration::from_secs(10),
            max_response_bytes: 256 << 20,
            max_stream_line_bytes: 1 << 20,
        }
    }

    pub fn with_trust(mut self, trust: Trust) -> ClientConfig {
        self.trust = Some(trust);
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> ClientConfig {
        self.token = Some(token.into());
        self
    }

    pub fn with_connect_addr(mut self, addr: SocketAddr) -> ClientConfig {
        self.connect_addr = Some(addr);
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> ClientConfig {
        self.request_timeout = timeout;
        self
    }
}

/// The parsed server URL.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub tls: bool,
    /// The host as written, without IPv6 brackets: the TLS server name and the name resolved.
    pub host: String,
    pub port: u16,
    /// `host:port` as sent in `Host` / `:authority`.
    pub authority: String,
    /// A path prefix without the trailing slash (usually empty).
    pub base_path: String,
}

impl Target {
    pub fn parse(server: &str, proto: Proto) -> Result<Target, Error> {
        let bad = |why: &str| Error::Config(format!("server URL {server:?}: {why}"));
        let uri: http::Uri = server.parse().map_err(|e| bad(&format!("{e}")))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(bad(&format!("scheme {other:?} is not http or https"))),
            None => {
                return Err(bad(
                    "no scheme: write http://host:port or https://host:port",
                ));
            }
        };
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        if proto == Proto::H3 && !tls {
            return Err(bad(
                "HTTP/3 runs over QUIC, which is always TLS: use https://",
            ));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let authority = if bare.contains(':') {
            format!("[{bare}]:{port}")
        } else {
            format!("{bare}:{port}")
        };
        Ok(Target {
            tls,
            host: bare,
            port,
            authority,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080", Proto::H1).unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.base_path, "");
        let t = Target::parse("https://[::1]:8443/prefix/", Proto::H3).unwrap();
        assert!(t.tls);
        assert_eq!(t.host, "::1");
        assert_eq!(t.authority, "[::1]:8443");
        assert_eq!(t.base_path, "/prefix");
        assert_eq!(
            Target::parse("https://localhost", Proto::H2).unwrap().port,
            443
        );
        for bad in ["127.0.0.1:8080", "ftp://x", "http://x?y=1", ""] {
            assert!(Target::parse(bad, Proto::H1).is_err(), "{bad}");
        }
        let e = Target::parse("http://127.0.0.1:8080", Proto::H3).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }

    #[test]
    fn protos() {
        assert_eq!("H2".parse::<Proto>().unwrap(), Proto::H2);
        assert_eq!("h3".parse::<Proto>().unwrap(), Proto::H3);
        assert!("h4".parse::<Proto>().is_err());
    }
}
