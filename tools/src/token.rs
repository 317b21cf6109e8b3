//! `trackctl token create`: a bearer token and the hash the server's configuration stores.

use base64::Engine as _;
use rand::TryRngCore as _;
use sha2::{Digest, Sha256};

use crate::Error;

/// The scopes the server knows.
pub const SCOPES: [&str; 3] = ["ingest", "read", "admin"];

/// A new token: `tst_` + base64url (no padding) of 32 bytes from the operating system's RNG.
pub fn generate() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Config(format!("the OS random number generator failed: {e}")))?;
    Ok(format!(
        "tst_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What the server stores: `sha256:` + lowercase hex of SHA-256 of the token's UTF-8 bytes.
pub fn hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks and normalises a scope list (`ingest,read`): known scopes, each once, in the order given.
pub fn parse_scopes(list: &str) -> Result<Vec<String>, Error> {
    let mut scopes: Vec<String> = Vec::new();
    for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if !SCOPES.contains(&s) {
            return Err(Error::Config(format!(
                "unknown scope {s:?}: use {}",
                SCOPES.join(", ")
            )));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_owned());
        }
    }
    if scopes.is_empty() {
        return Err(Error::Config(format!(
            "give at least one scope ({})",
            SCOPES.join(", ")
        )));
    }
    Ok(scopes)
}

/// The `[[tokens]]` entry of the server's configuration file for this token.
pub fn toml_snippet(name: &str, hash: &str, scopes: &[String]) -> String {
    // TOML basic strings share JSON's escapes for what a name may hold.
    let q = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let list: Vec<String> = scopes.iter().map(|s| q(s)).collect();
    format!(
        "[[tokens]]\nname = {}\nhash = {}\nscopes = [{}]\n",
        q(name),
        q(hash),
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format_and_hash() {
        let t = generate().unwrap();
        assert!(t.starts_with("tst_"));
        assert_eq!(t.len(), 4 + 43, "32 bytes are 43 base64url characters");
        assert!(
            t[4..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_ne!(generate().unwrap(), t);
        // SHA-256("abc"), the FIPS 180-2 example.
        assert_eq!(
            hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn snippet_parses_as_the_server_config_expects() {
        let scopes = parse_scopes("ingest, read,ingest").unwrap();
        assert_eq!(scopes, ["ingest", "read"]);
        let s = toml_snippet("loader \"1\"", "sha256:00", &scopes);
        let v: toml::Value = toml::from_str(&s).unwrap();
        let t = &v["tokens"][0];
        assert_eq!(t["name"].as_str(), Some("loader \"1\""));
        assert_eq!(t["hash"].as_str(), Some("sha256:00"));
        assert_eq!(t["scopes"][1].as_str(), Some("read"));
        assert!(parse_scopes("read,root").is_err());
        assert!(parse_scopes("").is_err());
    }
}
