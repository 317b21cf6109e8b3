//! trackstore's storage engine: an append-only log of delivery events on RocksDB, addressed by LSN,
//! with indexes by order, by event time and by current status, the current state of every order (the
//! read model), idempotency by `event_id`, and group commit with fsync before acknowledgement.
//!
//! The engine is a synchronous library (no async runtime): one writer thread owns all writes; reads run
//! on the caller's threads. The pure core (no I/O) is `time`, `event`, `keys`, `codec`, `state`,
//! `plan` and `cursor`; `store`, `writer`, `engine` and `query` are the I/O shell around it.
//!
//! | module | job |
//! |---|---|
//! | [`event`] | the event model, JSON parsing and validation |
//! | [`time`] | RFC 3339 timestamps with millisecond precision |
//! | [`keys`] | order-preserving keys of every column family |
//! | [`entry`] | log entries: events, tombstones, removals (erasure, retention) |
//! | [`codec`] | versioned value encodings |
//! | [`commit_clock`] | when recent groups committed (a replica's lag starts there) |
//! | [`state`] | the order state (read model) and its fold rule |
//! | [`plan`] | events → key/value operations of one group commit |
//! | [`cursor`] | sealed pagination cursors |
//! | [`limits`] | every bound, in one place |
//! | [`memory`] | the process's memory limit (cgroup-aware) and the block cache's default share |
//!
//! ```
//! use trackstore_engine::{Engine, EngineOptions, Direction, event::{parse_request, BodyFormat}, time::Timestamp};
//! let dir = tempfile::tempdir().unwrap();
//! let engine = Engine::open(dir.path(), EngineOptions::default()).unwrap();
//! let body = br#"{"event_id":"e-1","order_id":"o-1","status":"created","occurred_at":"2026-11-21T09:30:00Z"}"#;
//! let events = parse_request(body, BodyFormat::Json, Timestamp::now()).unwrap();
//! let outcomes = engine.append(events).unwrap();
//! assert_eq!(outcomes[0].lsn().0, 1);
//! assert_eq!(engine.order_state("o-1").unwrap().unwrap().event_count, 1);
//! let page = engine.order_timeline("o-1", Direction::Asc, 10, None).unwrap();
//! assert_eq!(page.items.len(), 1);
//! ```

pub mod codec;
pub mod commit_clock;
pub mod cursor;
mod engine;
pub mod entry;
pub mod error;
pub mod event;
pub mod keys;
pub mod limits;
pub mod memory;
pub mod plan;
mod query;
mod removal;
pub mod state;
pub mod store;
pub mod time;
mod truncate;
mod verify;
mod writer;

pub use commit_clock::CommitRuns;
pub use engine::{CommitInfo, Durability, Engine, EngineOptions, db_path};
pub use entry::{ErasureReceipt, ErasureRecord, LogEntry, Removal, RemovalKind, RetentionReport};
pub use error::{Error, Result};
pub use event::{Attributes, Event, Location, Lsn, Status, StoredEvent};
pub use plan::Outcome;
pub use query::{Direction, EncodedEntries, InMemory, Page, TimeRange};
pub use state::{OrderState, Stats};
pub use time::Timestamp;
pub use verify::VerifyReport;
