//! rustls client configurations, with the ring provider (aws-lc would be a second C build).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::Error;
use crate::config::{ClientIdentity, Trust};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(trust: &Trust) -> Result<RootCertStore, Error> {
    let pem = match trust {
        Trust::CaFile(path) => std::fs::read(path)
            .map_err(|e| Error::Config(format!("read the CA file {}: {e}", path.display())))?,
        Trust::CaPem(pem) => pem.clone(),
        Trust::Insecure => return Ok(RootCertStore::empty()),
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("the CA file is not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Config("the CA file holds no certificate".into()));
    }
    let mut store = RootCertStore::empty();
    for c in certs {
        store
            .add(c)
            .map_err(|e| Error::Config(format!("a CA certificate is not usable: {e}")))?;
    }
    Ok(store)
}

/// The TLS configuration for one ALPN protocol (`http/1.1`, `h2` or `h3`).
pub(crate) fn client_config(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    // QUIC needs TLS 1.3; TCP accepts 1.2 as well, as the server does.
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| Error::Config(format!("TLS versions: {e}")))?;
    let builder = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider))),
        other => builder.with_root_certificates(roots(other)?),
    };
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| Error::Config(format!("read {}: {e}", p.display())))
            };
            let chain = CertificateDer::pem_slice_iter(&read(&id.cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Config(format!("{}: {e}", id.cert.display())))?;
            let key = PrivateKeyDer::from_pem_slice(&read(&id.key)?)
                .map_err(|e| Error::Config(format!("{}: {e}", id.key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Config(format!("client certificate: {e}")))?
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// `--insecure`: any certificate chain and name, but the handshake signatures are still verified so
/// the session is at least bound to the certificate presented.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
