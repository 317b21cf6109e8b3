//! The library behind `trackctl`: what can be tested without a server or a terminal.
//!
//! - `settings`: the server, protocol, trust and token from flags, environment and config file.
//! - `input`: events read from a JSON array or NDJSON, streamed in bounded batches.
//! - `ingest`: batches sent with safe retries; the created / duplicate / rejected summary.
//! - `quarantine`: the summary of a quarantine file.
//! - `erasure`: the verdict of an erasure receipt check.
//! - `certs`: a cluster CA and node certificates for mutual TLS.
//! - `token`: bearer tokens and their stored hashes.
//! - `table`: plain-text tables.
//!
//! The HTTP client itself is the `trackstore-client` crate.

use std::path::PathBuf;

pub mod certs;
pub mod erasure;
pub mod ingest;
pub mod input;
pub mod quarantine;
pub mod settings;
pub mod table;
pub mod token;

/// What the library's functions fail with (the client's own errors are `trackstore_client::Error`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad settings or arguments.
    #[error("{0}")]
    Config(String),
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    /// The input to ingest cannot be read any further.
    #[error("{0}")]
    Input(String),
    #[error("certificate generation: {0}")]
    Cert(String),
}
