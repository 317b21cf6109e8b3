//! Configuration: embedded defaults, overridden by a TOML file, overridden by `TRACKSTORE_*`
//! environment variables, overridden by flags (DESIGN.md §6). Every key has a safe default, so
//! `trackstore` with no argument runs a local primary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;
use trackstore_engine::limits::EVENTS_PER_REQUEST_MAX;

use crate::auth::{AuthConfig, MetricsAuth, TokenEntry};

/// A listener address, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    Off,
    On(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.parse()
            .map(Listen::On)
            .map_err(|e| format!("{s:?} is neither `off` nor an address like 127.0.0.1:8080: {e}"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Listen, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Acknowledge after fsync (the promise of DESIGN.md).
    Sync,
    /// Acknowledge before fsync: loses acknowledged events on power loss. Benchmarks only.
    NosyncUnsafe,
}

/// How a replica checks a snapshot before installing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotVerify {
    /// The SHA-256 of every byte sent, the store opens, and it ends at the announced LSN with the
    /// announced epoch history (RocksDB checks each block's checksum as it is read later).
    Digest,
    /// All of `digest`, plus the full logical check of `trackctl verify` (every index entry against
    /// the log, every order state recomputed): about ten times slower.
    Full,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// The effective configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub data: PathBuf,
    pub http: Listen,
    pub https: Listen,
    pub replication: Listen,
    pub replica_of: Option<String>,
    /// Primary: an empty replica is sent a snapshot instead of the log from this many entries on.
    pub replication_snapshot_min_lsn: u64,
    /// Replica: the checks a received snapshot must pass before it is installed.
    pub replication_snapshot_verify: SnapshotVerify,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub durability: Durability,
    /// The engine's block cache; None: its default, an eighth of the memory limit
    /// (`trackstore_engine::memory`).
    pub block_cache_bytes: Option<usize>,
    pub log_format: LogFormat,
    pub limits: Limits,
    /// Access tokens and who may do what without one (auth.rs, docs/security.md).
    pub auth: AuthConfig,
    /// Retention and purge (maintenance.rs, docs/data-protection.md).
    pub maintenance: crate::maintenance::MaintenanceConfig,
}

/// Bounds of `block_cache_mb`: below 16 MiB the filters and indexes alone do not stay cached.
const BLOCK_CACHE_MB_MIN: usize = 16;
const BLOCK_CACHE_MB_MAX: usize = 1 << 20;

/// Defaults of the maintenance keys.
const RETENTION_INTERVAL_MS: u64 = 60_000;
const RETENTION_STEP_EVENTS: usize = 10_000;
const RETENTION_WRITER_PERCENT: u32 = 5;
const PURGE_INTERVAL_MS: u64 = 24 * 3600 * 1000;

/// The most SSE events a subscriber's queue may hold (each can be a few KiB).
const STREAM_BUFFER_EVENTS_MAX: usize = 65_536;

/// Every bound of the front end. Documented in docs/limits.md.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Bytes of request bodies being read or parsed at once, over all requests (a body without
    /// `Content-Length` counts as `max_body_bytes` until read).
    pub max_inflight_body_bytes: usize,
    pub max_events_per_request: usize,
    pub max_connections: usize,
    pub max_inflight_requests: usize,
    pub max_quic_streams: u32,
    pub header_read_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while the listeners still accept, so that a
    /// load balancer stops sending new connections before they would be refused.
    pub shutdown_drain: Duration,
    /// SSE events queued per subscriber between its reader task and its connection.
    pub stream_buffer_events: usize,
    /// A subscriber further behind the head of the log than this is disconnected.
    pub stream_max_lag_events: u64,
    pub max_subscribers: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_inflight_body_bytes: 256 * 1024 * 1024,
            max_events_per_request: EVENTS_PER_REQUEST_MAX,
            max_connections: 4096,
            max_inflight_requests: 1024,
            max_quic_streams: 100,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            shutdown_drain: Duration::ZERO,
            stream_buffer_events: 256,
            stream_max_lag_events: 100_000,
            max_subscribers: 1024,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            data: PathBuf::from("./data"),
            http: Listen::On(([127, 0, 0, 1], 8080).into()),
            https: Listen::On(([127, 0, 0, 1], 8443).into()),
            replication: Listen::On(([127, 0, 0, 1], 7443).into()),
            replica_of: None,
            replication_snapshot_min_lsn: 1_000_000,
            replication_snapshot_verify: SnapshotVerify::Digest,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            maintenance: crate::maintenance::MaintenanceConfig {
                retention: None,
                retention_interval: Duration::from_millis(RETENTION_INTERVAL_MS),
                retention_step_events: RETENTION_STEP_EVENTS,
                retention_writer_percent: RETENTION_WRITER_PERCENT,
                purge_interval: Some(Duration::from_millis(PURGE_INTERVAL_MS)),
            },
            durability: Durability::Sync,
            block_cache_bytes: None,
            log_format: LogFormat::Text,
            limits: Limits::default(),
            auth: AuthConfig::default(),
        }
    }
}

/// Flags; each also reads its `TRACKSTORE_*` environment variable. Absent means "not set here", so
/// that the file and the defaults show through.
#[derive(Debug, Default, Parser)]
#[command(
    name = "trackstore",
    version,
    about = "trackstore: a durable tracking store for delivery events",
    // A flag given twice: the last one wins, as scripts that append overrides expect.
    args_override_self = true
)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long, env = "TRACKSTORE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (created if missing). Default ./data.
    #[arg(long, env = "TRACKSTORE_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Cleartext HTTP/1.1 (and h2c) listener, or `off`. Default 127.0.0.1:8080.
    #[arg(long, env = "TRACKSTORE_HTTP", value_name = "ADDR")]
    pub http: Option<Listen>,
    /// TLS on TCP (HTTP/1.1, HTTP/2) and HTTP/3 on UDP, same port, or `off`. Default 127.0.0.1:8443.
    #[arg(long, env = "TRACKSTORE_HTTPS", value_name = "ADDR")]
    pub https: Option<Listen>,
    /// QUIC listener for replicas (primary role), or `off`. Default 127.0.0.1:7443.
    #[arg(long, env = "TRACKSTORE_REPLICATION", value_name = "ADDR")]
    pub replication: Option<Listen>,
    /// Run as a replica of the primary's replication address.
    #[arg(long, env = "TRACKSTORE_REPLICA_OF", value_name = "ADDR")]
    pub replica_of: Option<String>,
    /// Primary: a replica with an empty store gets a snapshot (a checkpoint of the store) instead of
    /// the log once the log holds this many entries. Default 1000000.
    #[arg(
        long,
        env = "TRACKSTORE_REPLICATION_SNAPSHOT_MIN_LSN",
        value_name = "LSN"
    )]
    pub replication_snapshot_min_lsn: Option<u64>,
    /// Replica: how a received snapshot is checked before it is installed: `digest` (transfer
    /// SHA-256, the store opens at the announced LSN and epochs) or `full` (also every index entry
    /// and order state, like `trackctl verify`). Default digest.
    #[arg(
        long,
        env = "TRACKSTORE_REPLICATION_SNAPSHOT_VERIFY",
        value_name = "MODE"
    )]
    pub replication_snapshot_verify: Option<SnapshotVerify>,
    /// CA that signs every node's certificate.
    #[arg(long, env = "TRACKSTORE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate chain (PEM). Default: self-signed, made in DATA/tls on first start.
    #[arg(long, env = "TRACKSTORE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "TRACKSTORE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// When a write is acknowledged. `nosync-unsafe` loses acknowledged events on power loss.
    #[arg(long, env = "TRACKSTORE_DURABILITY", value_enum)]
    pub durability: Option<Durability>,
    /// RocksDB block cache (uncompressed blocks, filters, indexes) in MiB, 16..=1048576. Default: an
    /// eighth of the memory limit (the smaller of the machine's memory and the cgroup limit), at
    /// least 256.
    #[arg(long, env = "TRACKSTORE_BLOCK_CACHE_MB", value_name = "MIB")]
    pub block_cache_mb: Option<usize>,
    /// Log format on stderr.
    #[arg(long, env = "TRACKSTORE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[arg(long, env = "TRACKSTORE_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    #[arg(long, env = "TRACKSTORE_MAX_INFLIGHT_BODY_BYTES")]
    pub max_inflight_body_bytes: Option<usize>,
    #[arg(long, env = "TRACKSTORE_MAX_EVENTS_PER_REQUEST")]
    pub max_events_per_request: Option<usize>,
    #[arg(long, env = "TRACKSTORE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    #[arg(long, env = "TRACKSTORE_MAX_INFLIGHT_REQUESTS")]
    pub max_inflight_requests: Option<usize>,
    #[arg(long, env = "TRACKSTORE_MAX_QUIC_STREAMS")]
    pub max_quic_streams: Option<u32>,
    #[arg(long, env = "TRACKSTORE_HEADER_READ_TIMEOUT_MS")]
    pub header_read_timeout_ms: Option<u64>,
    #[arg(long, env = "TRACKSTORE_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    #[arg(long, env = "TRACKSTORE_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// After SIGTERM, keep accepting for this long with `/readyz` at 503 (Kubernetes: the time its
    /// endpoints take to drop the pod, e.g. 5000). Default 0. A second signal skips it.
    #[arg(long, env = "TRACKSTORE_SHUTDOWN_DRAIN_MS")]
    pub shutdown_drain_ms: Option<u64>,
    #[arg(long, env = "TRACKSTORE_STREAM_BUFFER_EVENTS")]
    pub stream_buffer_events: Option<usize>,
    #[arg(long, env = "TRACKSTORE_STREAM_MAX_LAG_EVENTS")]
    pub stream_max_lag_events: Option<u64>,
    #[arg(long, env = "TRACKSTORE_MAX_SUBSCRIBERS")]
    pub max_subscribers: Option<usize>,
    /// Primary: remove events that occurred more than this many days ago (and orders left with no
    /// event), in the background; the removals replicate. Default: keep everything.
    #[arg(long, env = "TRACKSTORE_RETENTION_DAYS", value_name = "DAYS")]
    pub retention_days: Option<u32>,
    /// How often the retention sweep runs. Default 60000.
    #[arg(long, env = "TRACKSTORE_RETENTION_INTERVAL_MS")]
    pub retention_interval_ms: Option<u64>,
    /// Events removed per retention step (one short write each), 1..=100000. Default 10000.
    #[arg(long, env = "TRACKSTORE_RETENTION_STEP_EVENTS")]
    pub retention_step_events: Option<usize>,
    /// The most of the engine's writer a retention sweep takes, in percent (1..=50): after each step
    /// it pauses long enough to stay under it. Default 5.
    #[arg(
        long,
        env = "TRACKSTORE_RETENTION_WRITER_PERCENT",
        value_name = "PERCENT"
    )]
    pub retention_writer_percent: Option<u32>,
    /// Purge (rewrite removed data off the disk) at most this often when something was erased or
    /// expired since the last purge; 0: only on `POST /v1/admin/purge`. Default 86400000 (a day).
    #[arg(long, env = "TRACKSTORE_PURGE_INTERVAL_MS")]
    pub purge_interval_ms: Option<u64>,
    /// TOML file of `[[tokens]]` entries (e.g. a mounted secret), added to those of --config.
    #[arg(long, env = "TRACKSTORE_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,
    /// Whether /metrics needs a token with the `read` scope. Default open.
    #[arg(long, env = "TRACKSTORE_METRICS_AUTH", value_enum)]
    pub metrics_auth: Option<MetricsAuth>,
    /// Serve without access tokens even on a non-loopback address.
    #[arg(long, env = "TRACKSTORE_ALLOW_UNAUTHENTICATED", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_unauthenticated: bool,
}

/// The TOML file: the same keys as the flags, in snake_case; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub data: Option<PathBuf>,
    pub http: Option<Listen>,
    pub https: Option<Listen>,
    pub replication: Option<Listen>,
    pub replica_of: Option<String>,
    pub replication_snapshot_min_lsn: Option<u64>,
    pub replication_snapshot_verify: Option<SnapshotVerify>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub durability: Option<Durability>,
    pub block_cache_mb: Option<usize>,
    pub log_format: Option<LogFormat>,
    pub max_body_bytes: Option<usize>,
    pub max_inflight_body_bytes: Option<usize>,
    pub max_events_per_request: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_inflight_requests: Option<usize>,
    pub max_quic_streams: Option<u32>,
    pub header_read_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub shutdown_drain_ms: Option<u64>,
    pub stream_buffer_events: Option<usize>,
    pub stream_max_lag_events: Option<u64>,
    pub max_subscribers: Option<usize>,
    pub retention_days: Option<u32>,
    pub retention_interval_ms: Option<u64>,
    pub retention_step_events: Option<usize>,
    pub retention_writer_percent: Option<u32>,
    pub purge_interval_ms: Option<u64>,
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    pub tokens_file: Option<PathBuf>,
    pub metrics_auth: Option<MetricsAuth>,
    pub allow_unauthenticated: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Merges flags (already holding environment values) over the file over the defaults.
    pub fn resolve(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<File>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            None => File::default(),
        };
        Config::merge(flags, file)
    }

    pub fn merge(f: Flags, file: File) -> Result<Config, ConfigError> {
        let d = Config::default();
        let dl = d.limits;
        let ms = Duration::from_millis;
        let auth = AuthConfig::load(
            file.tokens,
            f.config.as_deref(),
            f.tokens_file.or(file.tokens_file).as_deref(),
            f.metrics_auth.or(file.metrics_auth).unwrap_or_default(),
            f.allow_unauthenticated || file.allow_unauthenticated.unwrap_or(false),
        )?;
        let config = Config {
            data: f.data.or(file.data).unwrap_or(d.data),
            http: f.http.or(file.http).unwrap_or(d.http),
            https: f.https.or(file.https).unwrap_or(d.https),
            replication: f.replication.or(file.replication).unwrap_or(d.replication),
            replica_of: f.replica_of.or(file.replica_of),
            replication_snapshot_min_lsn: f
                .replication_snapshot_min_lsn
                .or(file.replication_snapshot_min_lsn)
                .unwrap_or(d.replication_snapshot_min_lsn),
            replication_snapshot_verify: f
                .replication_snapshot_verify
                .or(file.replication_snapshot_verify)
                .unwrap_or(d.replication_snapshot_verify),
            tls_ca: f.tls_ca.or(file.tls_ca),
            tls_cert: f.tls_cert.or(file.tls_cert),
            tls_key: f.tls_key.or(file.tls_key),
            durability: f.durability.or(file.durability).unwrap_or(d.durability),
            block_cache_bytes: match f.block_cache_mb.or(file.block_cache_mb) {
                Some(mb) if !(BLOCK_CACHE_MB_MIN..=BLOCK_CACHE_MB_MAX).contains(&mb) => {
                    return Err(ConfigError::Invalid(format!(
                        "block_cache_mb must be {BLOCK_CACHE_MB_MIN}..={BLOCK_CACHE_MB_MAX}"
                    )));
                }
                mb => mb.map(|mb| mb << 20),
            },
            log_format: f.log_format.or(file.log_format).unwrap_or(d.log_format),
            limits: Limits {
                max_body_bytes: f
                    .max_body_bytes
                    .or(file.max_body_bytes)
                    .unwrap_or(dl.max_body_bytes),
                max_inflight_body_bytes: f
                    .max_inflight_body_bytes
                    .or(file.max_inflight_body_bytes)
                    .unwrap_or(dl.max_inflight_body_bytes),
                max_events_per_request: f
                    .max_events_per_request
                    .or(file.max_events_per_request)
                    .unwrap_or(dl.max_events_per_request),
                max_connections: f
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(dl.max_connections),
                max_inflight_requests: f
                    .max_inflight_requests
                    .or(file.max_inflight_requests)
                    .unwrap_or(dl.max_inflight_requests),
                max_quic_streams: f
                    .max_quic_streams
                    .or(file.max_quic_streams)
                    .unwrap_or(dl.max_quic_streams),
                header_read_timeout: f
                    .header_read_timeout_ms
                    .or(file.header_read_timeout_ms)
                    .map(ms)
                    .unwrap_or(dl.header_read_timeout),
                request_timeout: f
                    .request_timeout_ms
                    .or(file.request_timeout_ms)
                    .map(ms)
                    .unwrap_or(dl.request_timeout),
                shutdown_grace: f
                    .shutdown_grace_ms
                    .or(file.shutdown_grace_ms)
                    .map(ms)
                    .unwrap_or(dl.shutdown_grace),
                shutdown_drain: f
                    .shutdown_drain_ms
                    .or(file.shutdown_drain_ms)
                    .map(ms)
                    .unwrap_or(dl.shutdown_drain),
                stream_buffer_events: f
                    .stream_buffer_events
                    .or(file.stream_buffer_events)
                    .unwrap_or(dl.stream_buffer_events),
                stream_max_lag_events: f
                    .stream_max_lag_events
                    .or(file.stream_max_lag_events)
                    .unwrap_or(dl.stream_max_lag_events),
                max_subscribers: f
                    .max_subscribers
                    .or(file.max_subscribers)
                    .unwrap_or(dl.max_subscribers),
            },
            auth,
            maintenance: crate::maintenance::MaintenanceConfig {
                retention: f
                    .retention_days
                    .or(file.retention_days)
                    .map(|d| Duration::from_secs(u64::from(d) * 86_400)),
                retention_interval: f
                    .retention_interval_ms
                    .or(file.retention_interval_ms)
                    .map(ms)
                    .unwrap_or(d.maintenance.retention_interval),
                retention_step_events: f
                    .retention_step_events
                    .or(file.retention_step_events)
                    .unwrap_or(d.maintenance.retention_step_events),
                retention_writer_percent: f
                    .retention_writer_percent
                    .or(file.retention_writer_percent)
                    .unwrap_or(d.maintenance.retention_writer_percent),
                purge_interval: match f.purge_interval_ms.or(file.purge_interval_ms) {
                    Some(0) => None,
                    Some(v) => Some(ms(v)),
                    None => d.maintenance.purge_interval,
                },
            },
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if l.max_events_per_request == 0 || l.max_events_per_request > EVENTS_PER_REQUEST_MAX {
            return bad(format!(
                "max_events_per_request must be 1..={EVENTS_PER_REQUEST_MAX}"
            ));
        }
        if l.max_body_bytes < 1024 || l.max_body_bytes > 256 * 1024 * 1024 {
            return bad("max_body_bytes must be 1 KiB..=256 MiB".into());
        }
        if l.max_inflight_body_bytes < l.max_body_bytes || l.max_inflight_body_bytes > 64 << 30 {
            return bad(format!(
                "max_inflight_body_bytes must be max_body_bytes ({})..=64 GiB",
                l.max_body_bytes
            ));
        }
        for (name, v) in [
            ("max_connections", l.max_connections),
            ("max_inflight_requests", l.max_inflight_requests),
            ("stream_buffer_events", l.stream_buffer_events),
            ("max_subscribers", l.max_subscribers),
            ("max_quic_streams", l.max_quic_streams as usize),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if l.stream_buffer_events > STREAM_BUFFER_EVENTS_MAX {
            return bad(format!(
                "stream_buffer_events must be 1..={STREAM_BUFFER_EVENTS_MAX}"
            ));
        }
        if l.stream_max_lag_events == 0 {
            return bad("stream_max_lag_events must be at least 1".into());
        }
        if self.replication_snapshot_min_lsn == 0 {
            return bad(
                "replication_snapshot_min_lsn must be at least 1 (a snapshot of an empty store \
                 helps no one)"
                    .into(),
            );
        }
        let m = &self.maintenance;
        if m.retention.is_some_and(|r| r.is_zero()) {
            return bad(
                "retention_days must be at least 1 (leave it unset to keep everything)".into(),
            );
        }
        if m.retention_interval.is_zero() {
            return bad("retention_interval_ms must be positive".into());
        }
        let step_max = trackstore_engine::limits::REMOVAL_EVENTS_MAX;
        if m.retention_step_events == 0 || m.retention_step_events > step_max {
            return bad(format!("retention_step_events must be 1..={step_max}"));
        }
        if !(1..=50).contains(&m.retention_writer_percent) {
            return bad("retention_writer_percent must be 1..=50".into());
        }
        if l.header_read_timeout.is_zero() || l.request_timeout.is_zero() {
            return bad("timeouts must be positive".into());
        }
        if self.tls_ca.is_some() && self.tls_cert.is_none() {
            return bad(
                "tls_ca needs tls_cert and tls_key: a node certificate signed by that CA \
                 (`trackctl certs init` makes a test CA and node certificates)"
                    .into(),
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return bad("tls_cert and tls_key go together".into());
        }
        if self.http == Listen::Off && self.https == Listen::Off {
            return bad("both http and https are off: nothing would serve the API".into());
        }
        if let Some(m) = crate::auth::exposure_error(self.http, self.https, &self.auth) {
            return bad(m);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Flags {
        let mut all = vec!["trackstore"];
        all.extend_from_slice(args);
        Flags::try_parse_from(all).unwrap()
    }

    #[test]
    fn no_argument_is_a_local_primary() {
        let c = Config::merge(Flags::default(), File::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.data, PathBuf::from("./data"));
        assert_eq!(c.http, Listen::On("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.replica_of, None);
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let file: File =
            toml::from_str("data = \"/srv/a\"\nhttp = \"off\"\nmax_body_bytes = 4096\n").unwrap();
        let c = Config::merge(flags(&["--data", "/srv/b"]), file).unwrap();
        assert_eq!(c.data, PathBuf::from("/srv/b"));
        assert_eq!(c.http, Listen::Off);
        assert_eq!(c.limits.max_body_bytes, 4096);
        assert_eq!(c.https, Config::default().https);
    }

    #[test]
    fn unknown_file_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<File>("dta = \"x\"").is_err());
        assert!(toml::from_str::<File>("http = \"nowhere\"").is_err());
        let file: File = toml::from_str("max_events_per_request = 10001").unwrap();
        assert!(Config::merge(Flags::default(), file).is_err());
        assert!(
            Config::merge(flags(&["--http", "off", "--https", "off"]), File::default()).is_err()
        );
        assert!(Flags::try_parse_from(["trackstore", "--https", "localhost"]).is_err());
    }

    #[test]
    fn the_snapshot_threshold_comes_from_the_file_or_a_flag_and_is_positive() {
        assert_eq!(Config::default().replication_snapshot_min_lsn, 1_000_000);
        let file: File = toml::from_str("replication_snapshot_min_lsn = 5000").unwrap();
        let c = Config::merge(Flags::default(), file).unwrap();
        assert_eq!(c.replication_snapshot_min_lsn, 5000);
        let file: File = toml::from_str("replication_snapshot_min_lsn = 5000").unwrap();
        let c = Config::merge(flags(&["--replication-snapshot-min-lsn", "7"]), file).unwrap();
        assert_eq!(c.replication_snapshot_min_lsn, 7);
        let zero = flags(&["--replication-snapshot-min-lsn", "0"]);
        assert!(Config::merge(zero, File::default()).is_err());
    }

    #[test]
    fn the_retention_writer_share_is_1_to_50_percent() {
        assert_eq!(Config::default().maintenance.retention_writer_percent, 5);
        for (arg, ok) in [("0", false), ("1", true), ("50", true), ("51", false)] {
            let c = Config::merge(flags(&["--retention-writer-percent", arg]), File::default());
            assert_eq!(c.is_ok(), ok, "--retention-writer-percent {arg}");
        }
        let file: File = toml::from_str("retention_writer_percent = 20").unwrap();
        let c = Config::merge(Flags::default(), file).unwrap();
        assert_eq!(c.maintenance.retention_writer_percent, 20);
    }

    #[test]
    fn the_block_cache_is_the_engines_default_or_16_mib_and_up() {
        assert_eq!(Config::default().block_cache_bytes, None);
        for (arg, ok) in [
            ("15", false),
            ("16", true),
            ("4096", true),
            ("1048577", false),
        ] {
            let c = Config::merge(flags(&["--block-cache-mb", arg]), File::default());
            assert_eq!(c.is_ok(), ok, "--block-cache-mb {arg}");
        }
        let file: File = toml::from_str("block_cache_mb = 64").unwrap();
        let c = Config::merge(flags(&["--block-cache-mb", "128"]), file).unwrap();
        assert_eq!(c.block_cache_bytes, Some(128 << 20));
        let file: File = toml::from_str("block_cache_mb = 64").unwrap();
        let c = Config::merge(Flags::default(), file).unwrap();
        assert_eq!(c.block_cache_bytes, Some(64 << 20));
    }
}
