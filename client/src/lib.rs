//! An async (tokio) client of the trackstore HTTP API over HTTP/1.1 (clear text or TLS), HTTP/2
//! (TLS ALPN `h2`, or h2c with prior knowledge) and HTTP/3 (QUIC), used by `trackctl` and the load
//! harness `trackload`.
//!
//! - [`ClientConfig`] (`config`): server URL, [`Proto`], TLS [`Trust`], bearer token, timeouts and
//!   bounds.
//! - [`Client`] (`transport`): a cheap-to-clone factory of connections to one server;
//!   [`Client::connect`] opens a [`Connection`], a cheap-to-clone handle usable from many tasks
//!   (concurrent streams over HTTP/2 and HTTP/3, one request at a time over HTTP/1.1), which
//!   reconnects when the server closed it. [`Connection::send`] is the raw exchange.
//! - `api`: the API's documents ([`Event`], [`StoredEvent`], [`OrderState`], [`Stats`]...) and one
//!   method per operation on [`Connection`] (`ingest`, `order`, `timeline`, `orders`, `range`,
//!   `stats`, `subscribe`, `replication`, `promote`, and the data protection admin calls
//!   `erase_order`, `erasure_record`, `purge`).
//! - `sse`: the incremental Server-Sent Events parser ([`SseParser`]) and [`EventStream`].
//! - `error`: [`Error`], with the server's RFC 9457 [`Problem`] parsed.
//!
//! ```no_run
//! use trackstore_client::{Client, ClientConfig, Event, Proto, Trust};
//!
//! # async fn demo() -> Result<(), trackstore_client::Error> {
//! let config = ClientConfig::new("https://127.0.0.1:8443", Proto::H3)
//!     .with_trust(Trust::CaFile("data/tls/cert.pem".into()));
//! let conn = Client::new(config)?.connect().await?;
//! let event = Event::new("e-1", "o-1", "created", "2026-11-21T09:30:00Z");
//! let answer = conn.ingest(&[event]).await?;
//! assert_eq!(answer.created(), 1);
//! println!("{:?}", conn.order("o-1").await?.status);
//! # Ok(())
//! # }
//! ```

mod api;
mod config;
mod error;
mod sse;
mod tls;
mod transport;

pub use api::{
    ERASURE_LSN_HEADER, ErasureReceipt, ErasureRecord, Event, EventPage, IngestFormat,
    IngestResponse, IngestResult, Location, OrderPage, OrderState, OrdersQuery, Outcome,
    PurgeReport, RangeQuery, ReplicaStatus, ReplicationState, Stats, StoredEvent, StreamQuery,
    TimelineQuery,
};
pub use config::{ClientConfig, ClientIdentity, Proto, Trust};
pub use error::{ApiError, Error, FieldError, Problem};
pub use sse::{EventStream, SseFrame, SseParser, StreamEnd, StreamItem};
pub use transport::{Client, Connection, Request, Response, encode};

/// Re-exported so that callers build headers and statuses with the same `http` crate.
pub use http;
