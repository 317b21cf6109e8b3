//! Where trackctl finds its server: flags, then `TRACKCTL_*` environment variables (both handled by
//! clap), then a small TOML file, then defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use trackstore_client::{ClientConfig, Proto, Trust};

use crate::Error;

/// The server trackctl talks to when nothing says otherwise: `make run`'s cleartext listener.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// The config file: the global flags' names, all optional, nothing else.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub proto: Option<String>,
    pub ca: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub token: Option<String>,
}

/// What the command line (with its environment fallbacks) said.
#[derive(Debug, Default, Clone)]
pub struct Flags {
    pub server: Option<String>,
    pub proto: Option<String>,
    pub ca: Option<PathBuf>,
    pub insecure: bool,
    pub token: Option<String>,
    /// `--config`: must exist when given.
    pub config: Option<PathBuf>,
}

/// The default config file, `$XDG_CONFIG_HOME/trackctl.toml` or `~/.config/trackctl.toml`.
pub fn default_config_path(xdg_config_home: Option<&Path>, home: Option<&Path>) -> Option<PathBuf> {
    match xdg_config_home.filter(|p| p.is_absolute()) {
        Some(dir) => Some(dir.join("trackctl.toml")),
        None => home.map(|h| h.join(".config").join("trackctl.toml")),
    }
}

/// Reads the config file: the one named by `--config` (which must exist), else the default one if
/// present. A relative `ca` in it is relative to the file's directory.
pub fn load_file(explicit: Option<&Path>, default: Option<&Path>) -> Result<FileConfig, Error> {
    let path = match (explicit, default) {
        (Some(p), _) => p,
        (None, Some(p)) if p.exists() => p,
        _ => return Ok(FileConfig::default()),
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut file: FileConfig =
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    if let (Some(ca), Some(dir)) = (&file.ca, path.parent())
        && ca.is_relative()
    {
        file.ca = Some(dir.join(ca));
    }
    Ok(file)
}

/// The client configuration: each setting from the flags (or environment) if given, else the file,
/// else the default. The protocol defaults to h1 for `http://` and h2 for `https://`.
pub fn resolve(flags: &Flags, file: &FileConfig) -> Result<ClientConfig, Error> {
    let server = flags
        .server
        .clone()
        .or_else(|| file.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_owned());
    let https = server.to_ascii_lowercase().starts_with("https://");
    let proto = match flags.proto.as_deref().or(file.proto.as_deref()) {
        Some(p) => p
            .parse::<Proto>()
            .map_err(|e| Error::Config(e.to_string()))?,
        None if https => Proto::H2,
        None => Proto::H1,
    };
    let mut config = ClientConfig::new(server, proto);
    config.trust = if flags.insecure || (flags.ca.is_none() && file.insecure == Some(true)) {
        Some(Trust::Insecure)
    } else {
        flags
            .ca
            .clone()
            .or_else(|| file.ca.clone())
            .map(Trust::CaFile)
    };
    if https && config.trust.is_none() {
        return Err(Error::Config(format!(
            "{} is https: give --ca FILE (the server's certificate, DATA/tls/cert.pem, or the CA \
             that signed it) or, on loopback only, --insecure",
            config.server
        )));
    }
    config.token = flags
        .token
        .clone()
        .or_else(|| file.token.clone())
        .filter(|t| !t.is_empty());
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = FileConfig {
            server: Some("https://10.0.0.1:8443".into()),
            proto: Some("h3".into()),
            ca: Some("/etc/ts/ca.pem".into()),
            insecure: None,
            token: Some("tst_file".into()),
        };
        let c = resolve(&Flags::default(), &file).unwrap();
        assert_eq!(c.server, "https://10.0.0.1:8443");
        assert_eq!(c.proto, Proto::H3);
        assert_eq!(c.trust, Some(Trust::CaFile("/etc/ts/ca.pem".into())));
        assert_eq!(c.token.as_deref(), Some("tst_file"));
        let flags = Flags {
            server: Some("http://127.0.0.1:9".into()),
            proto: Some("h2".into()),
            token: Some("tst_flag".into()),
            ..Flags::default()
        };
        let c = resolve(&flags, &file).unwrap();
        assert_eq!(c.server, "http://127.0.0.1:9");
        assert_eq!(c.proto, Proto::H2);
        assert_eq!(c.token.as_deref(), Some("tst_flag"));
        let c = resolve(&Flags::default(), &FileConfig::default()).unwrap();
        assert_eq!((c.server.as_str(), c.proto), (DEFAULT_SERVER, Proto::H1));
        assert_eq!(c.trust, None);
    }

    #[test]
    fn https_needs_a_trust_and_defaults_to_h2() {
        let flags = Flags {
            server: Some("https://127.0.0.1:8443".into()),
            ..Flags::default()
        };
        let e = resolve(&flags, &FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("--ca FILE"), "{e}");
        let c = resolve(
            &Flags {
                insecure: true,
                ..flags
            },
            &FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.proto, Proto::H2);
        assert_eq!(c.trust, Some(Trust::Insecure));
    }

    #[test]
    fn file_rejects_unknown_keys_and_resolves_relative_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trackctl.toml");
        std::fs::write(&path, "server = \"https://h:1\"\nca = \"ca.pem\"\n").unwrap();
        let f = load_file(Some(&path), None).unwrap();
        assert_eq!(f.ca, Some(dir.path().join("ca.pem")));
        std::fs::write(&path, "sever = \"x\"\n").unwrap();
        let e = load_file(Some(&path), None).unwrap_err().to_string();
        assert!(e.contains("sever"), "{e}");
        let missing = dir.path().join("none.toml");
        assert!(load_file(Some(&missing), None).is_err());
        assert_eq!(
            load_file(None, Some(&missing)).unwrap(),
            FileConfig::default()
        );
        assert_eq!(
            default_config_path(None, Some(Path::new("/home/u"))),
            Some(PathBuf::from("/home/u/.config/trackctl.toml"))
        );
    }
}
