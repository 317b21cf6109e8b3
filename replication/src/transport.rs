//! QUIC with mutual TLS for replication, and frames over a QUIC stream. Both ends present a
//! certificate signed by the cluster's CA (`--tls-ca`) and check the other's against it: an
//! unknown node cannot read the log, and a replica cannot be fed by an impostor primary.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::frame::{Frame, FrameError};

/// ALPN of the replication protocol; a peer speaking anything else fails the handshake.
pub const ALPN: &[u8] = b"trackstore-repl/1";
/// A silent peer is dropped after this long (keep-alives run every `KEEP_ALIVE`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: Duration = Duration::from_secs(2);
/// Bytes a peer may have in flight on the session stream (QUIC flow control): this bounds what a
/// slow replica makes the primary buffer, and what a fast primary makes the replica buffer.
const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ReplError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Connection(String),
    #[error("the peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("engine: {0}")]
    Engine(#[from] trackstore_engine::Error),
    #[error("quarantine file: {0}")]
    Quarantine(String),
    /// The divergent tail cannot be truncated (it holds an erasure or retention entry): the node
    /// must be rebuilt; retrying cannot help.
    #[error("{0}")]
    Unrejoinable(String),
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// This node's epoch history fails its checks: replication must stop rather than take it for
    /// an empty one (a replica told to start from LSN 1 would truncate its whole log).
    #[error("this node's epoch history is corrupt: {0}")]
    CorruptHistory(String),
}

/// This node's certificate and key, and the CA every peer must be signed by.
#[derive(Debug)]
pub struct NodeTls {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca: Arc<RootCertStore>,
}

impl NodeTls {
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        ca_file: &Path,
    ) -> Result<NodeTls, ReplError> {
        let pem = std::fs::read(ca_file).map_err(|e| ReplError::File {
            path: ca_file.display().to_string(),
            message: e.to_string(),
        })?;
        let mut ca = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| ReplError::File {
                path: ca_file.display().to_string(),
                message: format!("not a PEM certificate: {e}"),
            })?;
            ca.add(cert).map_err(|e| ReplError::File {
                path: ca_file.display().to_string(),
                message: format!("not a usable CA certificate: {e}"),
            })?;
        }
        if ca.is_empty() {
            return Err(ReplError::File {
                path: ca_file.display().to_string(),
                message: "holds no certificate".into(),
            });
        }
        Ok(NodeTls {
            chain,
            key,
            ca: Arc::new(ca),
        })
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        let mut t = quinn::TransportConfig::default();
        t.max_concurrent_bidi_streams(2u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(STREAM_WINDOW_BYTES.into())
            .receive_window(STREAM_WINDOW_BYTES.into())
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(
                IDLE_TIMEOUT
                    .try_into()
                    .expect("10 s is a valid idle timeout"),
            ));
        Arc::new(t)
    }

    /// The primary's side: requires a client certificate signed by the CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, ReplError> {
        let verifier = WebPkiClientVerifier::builder(self.ca.clone())
            .build()
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    /// The replica's side: presents our certificate, trusts only the CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, ReplError> {
        let mut tls = rustls::ClientConfig::builder()
            .with_root_certificates(self.ca.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ReplError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }
}

/// Reads whole frames from a QUIC stream; buffers at most one frame (bounded by the frame limit).
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    pub fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    /// The next frame, or None when the peer finished the stream cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReplError> {
        loop {
            if let Some(frame) = Frame::decode(&mut self.buf)? {
                return Ok(Some(frame));
            }
            match self.recv.read_chunk(256 * 1024, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Ok(None),
                Ok(None) => {
                    return Err(ReplError::Frame(FrameError::Truncated(
                        "the stream ended inside a frame",
                    )));
                }
                Err(e) => return Err(connection_error(&e)),
            }
        }
    }
}

pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), ReplError> {
    send.write_all(&frame.to_bytes())
        .await
        .map_err(|e| connection_error(&e))
}

/// A stream error with its causes ("connection lost: timed out"): quinn's stream errors name only
/// their kind, the reason (the peer's close code, a timeout, a TLS alert) is their source.
fn connection_error(e: &(dyn std::error::Error + 'static)) -> ReplError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    ReplError::Connection(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_connection_names_why_it_was_lost() {
        let e = quinn::ReadError::ConnectionLost(quinn::ConnectionError::TimedOut);
        match connection_error(&e) {
            ReplError::Connection(text) => assert_eq!(text, "connection lost: timed out"),
            other => panic!("{other:?}"),
        }
    }
}
