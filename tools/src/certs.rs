//! `trackctl certs init`: a private CA and one certificate per node, each usable as a TLS server
//! certificate and as a client certificate (mutual TLS between primary and replicas).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::Error;

/// How long the CA is valid, in years from today.
const CA_YEARS: i32 = 10;
/// How long a node certificate is valid, in years from today (rotate by running `init` again).
const NODE_YEARS: i32 = 2;
/// The most nodes one `init` makes; a cluster has a primary and a few replicas.
pub const NODES_MAX: usize = 64;

/// The files one `init` writes, in writing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub private: bool,
}

/// Checks a node name: it becomes a DNS SAN and a file name, so lowercase DNS labels only.
pub fn check_node_name(name: &str) -> Result<(), Error> {
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(ok_label) || name == "ca" {
        return Err(Error::Config(format!(
            "node name {name:?}: use lowercase DNS labels (a-z, 0-9, '-', dot-separated), not \"ca\""
        )));
    }
    Ok(())
}

/// Today's date (UTC) as (year, month, day).
fn today() -> (i32, u8, u8) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
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
    (
        i32::try_from(y).unwrap_or(1970),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

/// Validity from yesterday (tolerates clock skew between nodes) for `years`. Feb 29 becomes Feb 28
/// in the end year so that the date exists.
fn validity(params: &mut CertificateParams, years: i32) {
    let (y, m, d) = today();
    params.not_before = rcgen::date_time_ymd(y, m, d) - std::time::Duration::from_secs(86_400);
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

fn cert_error(what: &str, e: rcgen::Error) -> Error {
    Error::Cert(format!("{what}: {e}"))
}

/// The CA and node certificates and keys, in PEM: `(file name, contents, private)`.
pub fn generate(nodes: &[String]) -> Result<Vec<(String, String, bool)>, Error> {
    if nodes.is_empty() || nodes.len() > NODES_MAX {
        return Err(Error::Config(format!(
            "give 1 to {NODES_MAX} node names (--nodes primary,replica)"
        )));
    }
    for (i, n) in nodes.iter().enumerate() {
        check_node_name(n)?;
        if nodes[..i].contains(n) {
            return Err(Error::Config(format!("node {n:?} is named twice")));
        }
    }
    let ca_key = KeyPair::generate().map_err(|e| cert_error("make the CA key", e))?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "trackstore cluster CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "trackstore");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, CA_YEARS);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| cert_error("sign the CA", e))?;
    let mut out = vec![
        ("ca.pem".to_owned(), ca_cert.pem(), false),
        ("ca.key".to_owned(), ca_key.serialize_pem(), true),
    ];
    let issuer = Issuer::new(ca, ca_key);
    for node in nodes {
        let key = KeyPair::generate().map_err(|e| cert_error("make a node key", e))?;
        let mut p = CertificateParams::new(vec![
            node.clone(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ])
        .map_err(|e| cert_error(node, e))?;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, node.as_str());
        p.distinguished_name
            .push(DnType::OrganizationName, "trackstore");
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        validity(&mut p, NODE_YEARS);
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| cert_error(&format!("sign {node}"), e))?;
        out.push((format!("{node}.pem"), cert.pem(), false));
        out.push((format!("{node}.key"), key.serialize_pem(), true));
    }
    Ok(out)
}

/// Writes the CA and node files to `dir` (created if missing). Without `force`, refuses before
/// writing anything if one of them exists. Keys are created with mode 0600.
pub fn init(dir: &Path, nodes: &[String], force: bool) -> Result<Vec<Written>, Error> {
    let files = generate(nodes)?;
    let io = |path: &Path, e: std::io::Error| Error::Io {
        path: path.to_owned(),
        message: e.to_string(),
    };
    if !force {
        let existing: Vec<String> = files
            .iter()
            .map(|(name, _, _)| dir.join(name))
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(Error::Config(format!(
                "refusing to overwrite {} (use --force to replace them)",
                existing.join(", ")
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    for (name, pem, private) in files {
        let path = dir.join(&name);
        if force && path.exists() {
            // A replaced key must not keep an old, wider mode: remove and create afresh.
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&path)
            .map_err(|e| io(&path, e))?;
        f.write_all(pem.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io(&path, e))?;
        written.push(Written { path, private });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn cert(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap()
    }

    #[test]
    fn node_certificates_verify_against_the_ca_as_server_and_as_client() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = vec!["primary".to_owned(), "replica-1".to_owned()];
        let written = init(dir.path(), &nodes, false).unwrap();
        assert_eq!(written.len(), 6);
        for w in &written {
            let mode = std::fs::metadata(&w.path).unwrap().permissions().mode() & 0o777;
            if w.private {
                assert_eq!(mode, 0o600, "{}", w.path.display());
            } else {
                assert_eq!(mode & 0o077 & !0o044, 0, "{}", w.path.display());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert(&dir.path().join("ca.pem"))).unwrap();
        let roots = Arc::new(roots);
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .unwrap();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .unwrap();
        let now = UnixTime::now();
        for node in &nodes {
            let leaf = cert(&dir.path().join(format!("{node}.pem")));
            for name in [node.as_str(), "localhost", "127.0.0.1", "::1"] {
                let name = ServerName::try_from(name).unwrap();
                server_verifier
                    .verify_server_cert(&leaf, &[], &name, &[], now)
                    .unwrap_or_else(|e| panic!("{node} as server for {name:?}: {e}"));
            }
            let other = ServerName::try_from("elsewhere.example").unwrap();
            assert!(
                server_verifier
                    .verify_server_cert(&leaf, &[], &other, &[], now)
                    .is_err(),
                "a name not in the SANs is refused"
            );
            client_verifier
                .verify_client_cert(&leaf, &[], now)
                .unwrap_or_else(|e| panic!("{node} as client: {e}"));
            // The key matches the certificate: rustls accepts the pair as an identity.
            let key = PrivateKeyDer::from_pem_file(dir.path().join(format!("{node}.key"))).unwrap();
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![leaf.clone()], key)
                .unwrap();
        }
        // A certificate from another CA is refused.
        let other = tempfile::tempdir().unwrap();
        init(other.path(), &nodes, false).unwrap();
        let stranger = cert(&other.path().join("primary.pem"));
        assert!(
            client_verifier
                .verify_client_cert(&stranger, &[], now)
                .is_err()
        );
    }

    #[test]
    fn existing_files_are_kept_unless_forced() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = vec!["primary".to_owned()];
        init(dir.path(), &nodes, false).unwrap();
        let before = std::fs::read(dir.path().join("ca.pem")).unwrap();
        let e = init(dir.path(), &nodes, false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
        init(dir.path(), &nodes, true).unwrap();
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), before);
    }

    #[test]
    fn node_names_are_checked() {
        for bad in ["", "Primary", "a b", "../x", "ca", "-a", "a..b"] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
        check_node_name("replica-2.dc1").unwrap();
        assert!(generate(&["a".into(), "a".into()]).is_err());
    }
}
