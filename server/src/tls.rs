//! The node's certificate (configured, or self-signed on first start) and the TLS configurations of
//! HTTPS (ALPN h2, http/1.1) and HTTP/3 (ALPN h3). rustls uses the ring provider everywhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain and its key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate lives, for operators and for clients that must trust it.
    pub cert_path: PathBuf,
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            cert_path: self.cert_path.clone(),
        }
    }
}

/// Installs ring as the process-wide rustls provider (aws-lc would be a second C build). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Loads a PEM certificate chain and private key.
pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::File {
            path: cert.to_owned(),
            message: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::File {
            path: cert.to_owned(),
            message: "holds no certificate".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::File {
        path: key.to_owned(),
        message: format!("not a PEM private key: {e}"),
    })?;
    Ok(Identity {
        chain,
        key: key_der,
        cert_path: cert.to_owned(),
    })
}

/// The configured identity, or the self-signed one in `DATA/tls`, made on first start.
pub fn identity(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
) -> Result<Identity, TlsError> {
    if let (Some(cert), Some(key)) = (cert, key) {
        return load(cert, key);
    }
    let dir = data_dir.join("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    if !cert_path.exists() || !key_path.exists() {
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
        let io = |path: &Path, e: std::io::Error| TlsError::File {
            path: path.to_owned(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        // Key first, certificate last: a crash between the two leaves no certificate, so the next
        // start makes a fresh pair instead of loading a certificate without its key.
        write_private(&key_path, generated.signing_key.serialize_pem().as_bytes())
            .map_err(|e| io(&key_path, e))?;
        std::fs::write(&cert_path, generated.cert.pem()).map_err(|e| io(&cert_path, e))?;
        tracing::info!(cert = %cert_path.display(), "made a self-signed certificate for localhost");
    }
    load(&cert_path, &key_path)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn server_config(id: &Identity, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// HTTPS on TCP: HTTP/2 preferred, HTTP/1.1 otherwise.
pub fn https_config(id: &Identity) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(Arc::new(server_config(id, &[b"h2", b"http/1.1"])?))
}

/// HTTP/3 on QUIC (TLS 1.3 only, as QUIC requires).
pub fn h3_config(id: &Identity) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h3".to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_identity_is_made_once_and_reused() {
        install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let a = identity(None, None, dir.path()).unwrap();
        let b = identity(None, None, dir.path()).unwrap();
        assert_eq!(a.chain, b.chain, "the second start reuses the certificate");
        https_config(&a).unwrap();
        h3_config(&a).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("tls/key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the key is private");
    }

    #[test]
    fn unreadable_files_are_named() {
        let err = load(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/c.pem"), "{err}");
    }
}
