//! Access tokens: bearer tokens with scopes (`ingest`, `read`, `admin`), checked by one middleware
//! inside the router, so that HTTP/1.1, HTTP/2 and HTTP/3 are checked by the same code.
//!
//! A token is `tst_` + base64url (no padding) of 32 random bytes (`trackctl token create`). The
//! configuration holds only `sha256:` + the lowercase hex SHA-256 of the token, so a leaked
//! configuration grants nothing. A presented token is hashed and its digest compared with every
//! configured digest in constant time: the comparison never stops at the first differing byte nor at
//! the first matching token.
//!
//! Route classes ([`classify`]): `POST /v1/events` needs `ingest`; the `GET`/`HEAD` reads need
//! `read`; everything under `/v1/admin/` and `DELETE /v1/orders/{id}` need `admin`; `/healthz` and
//! `/readyz` are open; `/metrics` is open or needs `read` (`metrics_auth`). Any other request (an
//! unknown path, a method a route does not have) needs a valid token of any scope before the router
//! answers 404 or 405: a client without a token learns nothing about which routes exist.
//!
//! With no token configured authentication is off, which the configuration allows only when every
//! API listener is on a loopback address (or with `allow_unauthenticated`). Admin requests are then
//! attributed to [`ANONYMOUS_LOOPBACK`] in the audit log.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::audit::{Audit, AuditRecord, Outcome, Persist};
use crate::config::{ConfigError, Listen};
use crate::metrics::{Metrics, ReasonLabels};
use crate::problem::Problem;

/// Every token `trackctl token create` makes starts with this.
pub const TOKEN_PREFIX: &str = "tst_";
/// The configured form of a token: this prefix and the lowercase hex SHA-256 of the token.
pub const HASH_PREFIX: &str = "sha256:";
/// The caller's name when authentication is off.
pub const ANONYMOUS_LOOPBACK: &str = "anonymous-loopback";
/// Token names appear in the audit log and in logs: short and plain.
pub const TOKEN_NAME_BYTES_MAX: usize = 64;
/// Tokens are compared one by one on every request: the list is bounded.
pub const TOKENS_MAX: usize = 1024;
/// A real token is 47 bytes; anything much longer is refused without hashing it.
const PRESENTED_TOKEN_BYTES_MAX: usize = 256;
const REALM_CHALLENGE: &str = "Bearer realm=\"trackstore\"";
const INVALID_CHALLENGE: &str = "Bearer realm=\"trackstore\", error=\"invalid_token\"";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    Ingest,
    Read,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Ingest, Scope::Read, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Ingest => 1,
            Scope::Read => 2,
            Scope::Admin => 4,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes. Scopes are independent: `admin` does not imply `read` or `ingest`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(1 | 2 | 4);

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A `[[tokens]]` entry as written in the configuration file or a tokens file; checked into a
/// [`TokenSpec`] at start.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub hash: String,
    pub scopes: Vec<String>,
}

/// A tokens file (`--tokens-file`): `[[tokens]]` entries and nothing else, so that a Kubernetes
/// secret can hold the tokens apart from the rest of the configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

/// A checked token: its name, the SHA-256 digest of the token, its scopes.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub name: Arc<str>,
    digest: [u8; 32],
    pub scopes: Scopes,
}

impl fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest is not secret, but it is noise in a printed configuration.
        f.debug_struct("TokenSpec")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Whether `/metrics` needs a token with the `read` scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MetricsAuth {
    /// Anyone who reaches the listener may scrape (the default: scrapers rarely carry tokens).
    #[default]
    Open,
    /// A token with the `read` scope is needed.
    Read,
}

/// The access part of the configuration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthConfig {
    /// Empty: authentication is off.
    pub tokens: Vec<TokenSpec>,
    pub metrics_auth: MetricsAuth,
    /// Serve without tokens even on non-loopback addresses.
    pub allow_unauthenticated: bool,
}

impl AuthConfig {
    /// Checks the tokens of the configuration file (`inline`, from `config_path` if any) and of the
    /// tokens file, together: a name or a token may appear only once across both.
    pub fn load(
        inline: Vec<TokenEntry>,
        config_path: Option<&Path>,
        tokens_file: Option<&Path>,
        metrics_auth: MetricsAuth,
        allow_unauthenticated: bool,
    ) -> Result<AuthConfig, ConfigError> {
        let inline_source = match config_path {
            Some(p) => format!("configuration file {}", p.display()),
            None => "configuration".to_owned(),
        };
        let mut entries: Vec<(String, TokenEntry)> = inline
            .into_iter()
            .map(|e| (inline_source.clone(), e))
            .collect();
        if let Some(path) = tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::Invalid(format!("cannot read tokens file {}: {e}", path.display()))
            })?;
            let file: TokensFile = toml::from_str(&text).map_err(|e| {
                ConfigError::Invalid(format!("tokens file {}: {e}", path.display()))
            })?;
            let source = format!("tokens file {}", path.display());
            entries.extend(file.tokens.into_iter().map(|e| (source.clone(), e)));
        }
        if entries.len() > TOKENS_MAX {
            return Err(ConfigError::Invalid(format!(
                "{} access tokens are configured; at most {TOKENS_MAX} are allowed",
                entries.len()
            )));
        }
        let mut tokens: Vec<TokenSpec> = Vec::with_capacity(entries.len());
        for (source, entry) in entries {
            let spec = TokenSpec::check(&entry)
                .map_err(|m| ConfigError::Invalid(format!("{source}: {m}")))?;
            if let Some(other) = tokens.iter().find(|t| t.name == spec.name) {
                return Err(ConfigError::Invalid(format!(
                    "{source}: token name {:?} is used twice; names identify callers in the \
                     audit log and must be unique",
                    other.name
                )));
            }
            if let Some(other) = tokens.iter().find(|t| t.digest == spec.digest) {
                return Err(ConfigError::Invalid(format!(
                    "{source}: tokens {:?} and {:?} have the same hash; one token cannot have two \
                     names",
                    other.name, spec.name
                )));
            }
            tokens.push(spec);
        }
        Ok(AuthConfig {
            tokens,
            metrics_auth,
            allow_unauthenticated,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }
}

impl TokenSpec {
    /// Checks one `[[tokens]]` entry; the message names the token and what is wrong.
    pub fn check(entry: &TokenEntry) -> Result<TokenSpec, String> {
        let name = entry.name.as_str();
        let name_ok = !name.is_empty()
            && name.len() <= TOKEN_NAME_BYTES_MAX
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if !name_ok {
            return Err(format!(
                "token name {name:?} must be 1 to {TOKEN_NAME_BYTES_MAX} characters of \
                 [A-Za-z0-9._:-]"
            ));
        }
        if name == ANONYMOUS_LOOPBACK {
            return Err(format!(
                "token name {name:?} is reserved for requests served without authentication"
            ));
        }
        let digest = parse_hash(&entry.hash).map_err(|m| format!("token {name:?}: {m}"))?;
        if entry.scopes.is_empty() {
            return Err(format!(
                "token {name:?} has no scope: give at least one of ingest, read, admin"
            ));
        }
        let mut scopes = Scopes::default();
        for s in &entry.scopes {
            match Scope::parse(s) {
                Some(scope) => scopes.insert(scope),
                None => {
                    return Err(format!(
                        "token {name:?}: unknown scope {s:?} (the scopes are ingest, read, admin)"
                    ));
                }
            }
        }
        Ok(TokenSpec {
            name: name.into(),
            digest,
            scopes,
        })
    }
}

/// The configured form of `token`: `sha256:` + the lowercase hex SHA-256 of its UTF-8 bytes.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn parse_hash(s: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "hash {s:?} is not `sha256:` followed by 64 lowercase hex digits (the SHA-256 of the \
             token; `trackctl token create` prints it)"
        )
    };
    let hex = s.strip_prefix(HASH_PREFIX).ok_or_else(bad)?;
    if hex.len() != 64 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
        let (Some(hi), Some(lo)) = (nibble(pair[0]), nibble(pair[1])) else {
            return Err(bad());
        };
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

/// Compares two digests in time independent of where they differ: every byte is looked at, and
/// the accumulated difference is hidden from the optimiser so the loop cannot be turned into an
/// early exit.
pub fn digest_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

fn is_loopback(addr: SocketAddr) -> bool {
    // `::ffff:127.0.0.1` is loopback too, though `Ipv6Addr::is_loopback` says no.
    addr.ip().to_canonical().is_loopback()
}

/// Why the configuration must not start: a non-loopback API listener with no token and no explicit
/// permission. The replication listener is not checked: it is authenticated by mutual TLS, not by
/// bearer tokens (DESIGN.md §4).
pub fn exposure_error(http: Listen, https: Listen, auth: &AuthConfig) -> Option<String> {
    if auth.enabled() || auth.allow_unauthenticated {
        return None;
    }
    [("http", http), ("https", https)]
        .into_iter()
        .find_map(|(name, listen)| match listen {
            Listen::On(addr) if !is_loopback(addr) => Some(format!(
                "{name} listens on {addr}, which is not a loopback address, and no access token is \
                 configured: anyone who reaches it could write, read and administer the store. \
                 Configure [[tokens]] (in the configuration or --tokens-file; `trackctl token \
                 create` makes one), or accept this with --allow-unauthenticated \
                 (TRACKSTORE_ALLOW_UNAUTHENTICATED=true, allow_unauthenticated = true)"
            )),
            _ => None,
        })
}

/// Says at start how requests are authenticated.
pub fn log_posture(auth: &AuthConfig, http: Listen, https: Listen) {
    if auth.enabled() {
        let names: Vec<&str> = auth.tokens.iter().map(|t| &*t.name).collect();
        tracing::info!(
            tokens = ?names, metrics = ?auth.metrics_auth,
            "access tokens required on every route but /healthz and /readyz"
        );
        return;
    }
    let exposed = [http, https]
        .into_iter()
        .any(|l| matches!(l, Listen::On(a) if !is_loopback(a)));
    if exposed {
        tracing::warn!(
            "no access token configured and allow_unauthenticated set: authentication is OFF on \
             a non-loopback address; anyone who reaches it can write, read and administer"
        );
    } else {
        tracing::warn!(
            "no access token configured: authentication is off (allowed because every listener \
             is on loopback); every local client can write, read and administer"
        );
    }
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// No token.
    Open,
    /// A valid token of any scope: requests no route serves (404, 405).
    AnyToken,
    /// A valid token with this scope.
    Scoped(Scope),
}

/// The class of a request. Every route of [`crate::api::ROUTES`] is `Open` or `Scoped` (checked by
/// a test below), so a new route without a class fails the tests instead of being open to any token.
pub fn classify(method: &Method, path: &str, metrics: MetricsAuth) -> Class {
    match path {
        "/healthz" | "/readyz" => return Class::Open,
        "/metrics" => {
            return match metrics {
                MetricsAuth::Open => Class::Open,
                MetricsAuth::Read => Class::Scoped(Scope::Read),
            };
        }
        _ => {}
    }
    if path == "/v1/admin" || path.starts_with("/v1/admin/") {
        return Class::Scoped(Scope::Admin);
    }
    // HEAD is served by every GET route: it reveals as much as GET (404 or not).
    let read = method == Method::GET || method == Method::HEAD;
    match crate::api::route_of(path) {
        "/v1/events" if method == Method::POST => Class::Scoped(Scope::Ingest),
        "/v1/orders/{order_id}" if method == Method::DELETE => Class::Scoped(Scope::Admin),
        "/v1/events"
        | "/v1/orders"
        | "/v1/orders/{order_id}"
        | "/v1/orders/{order_id}/events"
        | "/v1/stats"
        | "/v1/stream"
        | "/v1/openapi.json"
            if read =>
        {
            Class::Scoped(Scope::Read)
        }
        _ => Class::AnyToken,
    }
}

/// Who made a request. The middleware puts it into the request extensions of every request it lets
/// through (except open routes), so handlers can take `Extension<Caller>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or [`ANONYMOUS_LOOPBACK`] when authentication is off.
    pub name: Arc<str>,
    pub scopes: Scopes,
    /// False when authentication is off.
    pub authenticated: bool,
}

/// Why a request was refused with 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Missing,
    Malformed,
    Unknown,
}

impl Failure {
    /// The `reason` label of `auth_failures_total`.
    fn reason(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed | Failure::Unknown => "invalid",
        }
    }

    fn into_response(self) -> Response {
        let detail = match self {
            Failure::Missing => {
                "this endpoint needs an access token: send `Authorization: Bearer <token>`"
            }
            Failure::Malformed => "the Authorization header is not `Bearer <token>`",
            Failure::Unknown => "the access token is not valid",
        };
        let mut resp = Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
        .into_response();
        let challenge = match self {
            Failure::Missing => REALM_CHALLENGE,
            _ => INVALID_CHALLENGE,
        };
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        resp
    }
}

/// The middleware's state: the tokens, the metrics it counts failures in, the audit log.
#[derive(Debug)]
pub struct Auth {
    tokens: Vec<TokenSpec>,
    metrics_auth: MetricsAuth,
    metrics: Arc<Metrics>,
    audit: Option<Audit>,
}

impl Auth {
    pub fn new(config: &AuthConfig, metrics: Arc<Metrics>, audit: Option<Audit>) -> Auth {
        Auth {
            tokens: config.tokens.clone(),
            metrics_auth: config.metrics_auth,
            metrics,
            audit,
        }
    }

    /// Authentication off and no audit log: for routers built in tests without a data directory.
    /// State-changing admin requests are refused (500) there, never performed unaudited.
    pub fn off(metrics: Arc<Metrics>) -> Auth {
        Auth::new(&AuthConfig::default(), metrics, None)
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Failure> {
        if self.tokens.is_empty() {
            return Ok(Caller {
                name: ANONYMOUS_LOOPBACK.into(),
                scopes: Scopes::ALL,
                authenticated: false,
            });
        }
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let value = values.next().ok_or(Failure::Missing)?;
        if values.next().is_some() {
            return Err(Failure::Malformed);
        }
        let value = value.to_str().map_err(|_| Failure::Malformed)?;
        let (scheme, token) = value.split_once(' ').ok_or(Failure::Malformed)?;
        let token = token.trim_matches(' ');
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
            return Err(Failure::Malformed);
        }
        if token.len() > PRESENTED_TOKEN_BYTES_MAX {
            return Err(Failure::Unknown);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every configured digest is compared, whether or not one matched already.
        let mut found = None;
        for t in &self.tokens {
            if digest_eq(&t.digest, &digest) {
                found = Some(t);
            }
        }
        let t = found.ok_or(Failure::Unknown)?;
        Ok(Caller {
            name: t.name.clone(),
            scopes: t.scopes,
            authenticated: true,
        })
    }

    fn count_failure(&self, reason: &'static str) {
        self.metrics
            .auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

fn forbidden(caller: &Caller, scope: Scope, method: &Method, path: &str) -> Response {
    let path = crate::audit::truncate(path, crate::audit::ACTION_PATH_BYTES_MAX);
    let mut resp = Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "Forbidden",
        format!(
            "token {:?} lacks the `{scope}` scope that {method} {path} needs",
            caller.name
        ),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer realm=\"trackstore\", error=\"insufficient_scope\", scope=\"{scope}\""
    )) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The middleware: authenticates, checks the scope, records admin requests in the audit log.
pub async fn authorize(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let class = classify(req.method(), req.uri().path(), auth.metrics_auth);
    if class == Class::Open {
        return next.run(req).await;
    }
    let caller = match auth.authenticate(req.headers()) {
        Ok(c) => c,
        Err(f) => {
            auth.count_failure(f.reason());
            return f.into_response();
        }
    };
    let Class::Scoped(scope) = class else {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    };
    let admin = scope == Scope::Admin;
    if !caller.scopes.contains(scope) {
        auth.count_failure("scope");
        let resp = forbidden(&caller, scope, req.method(), req.uri().path());
        if admin && let Some(audit) = &auth.audit {
            // A refused attempt changes nothing: recorded without fsync, and a failure to record it
            // does not change the answer.
            let record = admin_record(&caller, &req, Outcome::Status(403));
            if let Err(e) = audit.append(&record, Persist::NoFsync).await {
                tracing::error!(error = %e, "cannot record a refused admin request in the audit log");
            }
        }
        return resp;
    }
    if !admin {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    }
    audited(&auth, caller, req, next).await
}

fn admin_record(caller: &Caller, req: &Request, outcome: Outcome) -> AuditRecord {
    let path = req.uri().path();
    // An erasure's audit record must not keep the personal data it removes: the order id is left
    // out, and the final record names the erasure's LSN, whose receipt an auditor holding the order
    // id can check (`trackctl erasure check`).
    let (action, target) = match path.strip_prefix("/v1/admin/") {
        Some(rest) => (format!("{} {path}", req.method()), rest),
        None if crate::api::route_of(path) == "/v1/orders/{order_id}" => (
            format!("{} /v1/orders/{{order_id}}", req.method()),
            ERASURE_TARGET,
        ),
        None => (format!("{} {path}", req.method()), path),
    };
    AuditRecord::new(&caller.name, &action, target, outcome)
        .with_request_id(crate::audit::request_id(req.headers()))
}

/// The target of an erasure's audit records until its LSN is known.
const ERASURE_TARGET: &str = "erasure (order id withheld)";

/// An admin request: a state-changing one (any method but GET and HEAD) runs only after a
/// `started` record is on disk, and its outcome is on disk before the answer leaves; reads are
/// recorded after the answer is made, without fsync.
async fn audited(auth: &Auth, caller: Caller, mut req: Request, next: Next) -> Response {
    let changes_state = !(req.method() == Method::GET || req.method() == Method::HEAD);
    let Some(audit) = auth.audit.clone() else {
        if changes_state {
            return Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit-failure",
                "Audit log unavailable",
                "this server has no audit log: admin changes are refused rather than performed \
                 unaudited",
            )
            .into_response();
        }
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    };
    let mut record = admin_record(&caller, &req, Outcome::Started);
    if changes_state && let Err(e) = audit.append(&record, Persist::Fsync).await {
        tracing::error!(error = %e, action = %record.action, "admin change refused: the audit log cannot be written");
        return Problem::from(e).into_response();
    }
    req.extensions_mut().insert(caller);
    req.extensions_mut().insert(audit.clone());
    let mut resp = next.run(req).await;
    record.outcome = Outcome::Status(resp.status().as_u16());
    if let Some(lsn) = resp
        .headers()
        .get(crate::api::ERASURE_LSN_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        record.target = format!("erasure at LSN {lsn}");
    }
    record.time = trackstore_engine::Timestamp::now().to_string();
    let persist = if changes_state {
        Persist::Fsync
    } else {
        Persist::NoFsync
    };
    if let Err(e) = audit.append(&record, persist).await {
        tracing::error!(error = %e, record = ?record, "cannot record an admin request in the audit log");
        if changes_state {
            // The change ran (its `started` record is on disk) but its outcome is not recorded:
            // the client is told, rather than getting a success the audit log does not show.
            resp = Problem::from(e).into_response();
        }
    }
    if let Some(id) = &record.request_id
        && let Ok(v) = HeaderValue::from_str(id)
    {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, hash: &str, scopes: &[&str]) -> TokenEntry {
        TokenEntry {
            name: name.into(),
            hash: hash.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn hash_is_sha256_hex_with_prefix() {
        // FIPS 180-2 test vector for "abc".
        assert_eq!(
            hash_token("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let d = parse_hash(&hash_token("abc")).unwrap();
        assert_eq!(d[0], 0xba);
        assert_eq!(d[31], 0xad);
    }

    #[test]
    fn constant_time_compare_finds_a_difference_at_every_position() {
        let a: [u8; 32] = Sha256::digest(b"tst_one").into();
        assert!(digest_eq(&a, &a.clone()));
        for i in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!digest_eq(&a, &b), "byte {i} bit {bit}");
            }
        }
        assert!(!digest_eq(&[0; 32], &[0xff; 32]));
    }

    #[test]
    fn the_hash_check_accepts_exactly_the_configured_tokens() {
        let metrics = Arc::new(Metrics::new());
        let config = AuthConfig::load(
            vec![
                entry("a", &hash_token("tst_alpha"), &["read"]),
                entry("b", &hash_token("tst_beta"), &["ingest", "admin"]),
            ],
            None,
            None,
            MetricsAuth::Open,
            false,
        )
        .unwrap();
        let auth = Auth::new(&config, metrics, None);
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            auth.authenticate(&h)
        };
        let a = with("Bearer tst_alpha").unwrap();
        assert_eq!(&*a.name, "a");
        assert!(a.scopes.contains(Scope::Read) && !a.scopes.contains(Scope::Admin));
        let b = with("bearer  tst_beta").unwrap();
        assert_eq!(&*b.name, "b");
        assert_eq!(
            b.scopes.iter().collect::<Vec<_>>(),
            [Scope::Ingest, Scope::Admin]
        );
        assert_eq!(with("Bearer tst_alphA"), Err(Failure::Unknown));
        assert_eq!(with("Bearer tst_alpha2"), Err(Failure::Unknown));
        assert_eq!(
            with(&format!("Bearer {}", hash_token("tst_alpha"))),
            Err(Failure::Unknown),
            "the hash itself is not a token"
        );
        assert_eq!(with("Basic dXNlcjpwYXNz"), Err(Failure::Malformed));
        assert_eq!(with("Bearer"), Err(Failure::Malformed));
        assert_eq!(with("Bearer "), Err(Failure::Malformed));
        assert_eq!(with("Bearer a b"), Err(Failure::Malformed));
        assert_eq!(
            with(&format!("Bearer {}", "x".repeat(300))),
            Err(Failure::Unknown)
        );
        assert_eq!(auth.authenticate(&HeaderMap::new()), Err(Failure::Missing));
        let mut two = HeaderMap::new();
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tst_alpha"),
        );
        two.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tst_beta"),
        );
        assert_eq!(auth.authenticate(&two), Err(Failure::Malformed));
    }

    #[test]
    fn no_token_means_the_anonymous_caller_with_every_scope() {
        let auth = Auth::off(Arc::new(Metrics::new()));
        let c = auth.authenticate(&HeaderMap::new()).unwrap();
        assert_eq!(&*c.name, ANONYMOUS_LOOPBACK);
        assert_eq!(c.scopes, Scopes::ALL);
        assert!(!c.authenticated);
    }

    #[test]
    fn bad_entries_are_named() {
        let good = hash_token("tst_x");
        let check = |e: TokenEntry| TokenSpec::check(&e).unwrap_err();
        assert!(check(entry("", &good, &["read"])).contains("token name"));
        assert!(check(entry("a b", &good, &["read"])).contains("token name"));
        assert!(check(entry(ANONYMOUS_LOOPBACK, &good, &["read"])).contains("reserved"));
        assert!(check(entry("ci", "md5:00", &["read"])).contains("sha256:"));
        assert!(check(entry("ci", &good.to_uppercase(), &["read"])).contains("\"ci\""));
        assert!(check(entry("ci", &good[..good.len() - 1], &["read"])).contains("64"));
        assert!(check(entry("ci", &good, &[])).contains("no scope"));
        assert!(check(entry("ci", &good, &["read", "write"])).contains("\"write\""));
        let dup = AuthConfig::load(
            vec![
                entry("ci", &good, &["read"]),
                entry("ci", &hash_token("tst_y"), &["read"]),
            ],
            None,
            None,
            MetricsAuth::Open,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(dup.contains("\"ci\"") && dup.contains("twice"), "{dup}");
        let same = AuthConfig::load(
            vec![entry("a", &good, &["read"]), entry("b", &good, &["admin"])],
            None,
            None,
            MetricsAuth::Open,
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(same.contains("same hash"), "{same}");
    }

    #[test]
    fn every_route_has_a_class() {
        for (method, path) in crate::api::ROUTES {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let path = path.replace("{order_id}", "o-1");
            let class = classify(&method, &path, MetricsAuth::Open);
            assert_ne!(class, Class::AnyToken, "{method} {path} has no class");
        }
    }

    #[test]
    fn route_classes() {
        let c = |m: Method, p: &str| classify(&m, p, MetricsAuth::Open);
        use Class::*;
        assert_eq!(c(Method::POST, "/v1/events"), Scoped(Scope::Ingest));
        assert_eq!(c(Method::GET, "/v1/events"), Scoped(Scope::Read));
        assert_eq!(c(Method::HEAD, "/v1/orders/o-1"), Scoped(Scope::Read));
        assert_eq!(c(Method::GET, "/v1/orders/o-1/events"), Scoped(Scope::Read));
        assert_eq!(c(Method::DELETE, "/v1/orders/o-1"), Scoped(Scope::Admin));
        assert_eq!(c(Method::POST, "/v1/admin/promote"), Scoped(Scope::Admin));
        assert_eq!(c(Method::GET, "/v1/admin"), Scoped(Scope::Admin));
        assert_eq!(c(Method::GET, "/healthz"), Open);
        assert_eq!(c(Method::GET, "/metrics"), Open);
        assert_eq!(
            classify(&Method::GET, "/metrics", MetricsAuth::Read),
            Scoped(Scope::Read)
        );
        assert_eq!(c(Method::GET, "/v1/adminx"), AnyToken);
        assert_eq!(c(Method::GET, "/nope"), AnyToken);
        assert_eq!(c(Method::PUT, "/v1/stats"), AnyToken);
        assert_eq!(c(Method::DELETE, "/v1/orders/o-1/events"), AnyToken);
    }

    #[test]
    fn exposure_needs_tokens_or_permission() {
        let lo = Listen::On("127.0.0.1:8080".parse().unwrap());
        let lo6 = Listen::On("[::1]:8443".parse().unwrap());
        let mapped = Listen::On("[::ffff:127.0.0.1]:8443".parse().unwrap());
        let any = Listen::On("0.0.0.0:8080".parse().unwrap());
        let none = AuthConfig::default();
        assert_eq!(exposure_error(lo, lo6, &none), None);
        assert_eq!(exposure_error(lo, mapped, &none), None);
        assert_eq!(exposure_error(Listen::Off, lo, &none), None);
        let e = exposure_error(lo, any, &none).unwrap();
        assert!(e.contains("https listens on 0.0.0.0:8080"), "{e}");
        assert!(e.contains("--allow-unauthenticated"), "{e}");
        let allowed = AuthConfig {
            allow_unauthenticated: true,
            ..AuthConfig::default()
        };
        assert_eq!(exposure_error(any, any, &allowed), None);
        let with_token = AuthConfig::load(
            vec![entry("a", &hash_token("tst_a"), &["read"])],
            None,
            None,
            MetricsAuth::Open,
            false,
        )
        .unwrap();
        assert_eq!(exposure_error(any, any, &with_token), None);
    }
}
