//! The engine's error type. Every variant says what happened and what was (not) written.

use crate::codec::ValueError;
use crate::cursor::CursorError;
use crate::event::{FieldError, Lsn};
use crate::keys::KeyError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An event broke a rule of DESIGN.md §1; nothing of the request was written.
    #[error("event {index}: {error}")]
    Invalid { index: usize, error: FieldError },
    /// The request holds no event or more than the limit; nothing was written.
    #[error("{0}")]
    BadRequest(String),
    /// An `event_id` is already stored with different content; nothing of the request was written.
    #[error(
        "event {index}: event_id {event_id:?} is already stored at LSN {lsn} with different content"
    )]
    Conflict {
        index: usize,
        event_id: String,
        lsn: Lsn,
    },
    /// The writer's queue is full: retry later. Nothing was written.
    #[error("the writer queue is full ({0} requests waiting); retry later")]
    Overloaded(usize),
    /// A write or fsync failed earlier: the engine refuses writes until it is reopened, so that nothing
    /// whose durability is unknown is ever acknowledged. Reads still work.
    #[error(
        "writes are refused since a storage failure ({0}); reads still work, reopen the store to recover"
    )]
    Poisoned(String),
    /// RocksDB failed. For a write, nothing of the request was acknowledged.
    #[error("storage failure: {0}")]
    Storage(#[from] rocksdb::Error),
    /// Stored data does not decode or contradicts an invariant.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Replicated entries do not continue this store's log (wrong LSN, or an event id it already has).
    #[error("replicated entries do not continue the log: {0}")]
    Diverged(String),
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// A query argument is out of range (limit, time range...).
    #[error("{0}")]
    InvalidArgument(String),
    /// This node does not accept client writes now: it is a replica, or it was fenced by a newer
    /// epoch. Nothing was written.
    #[error("writes are refused: {0}")]
    ReadOnly(String),
    /// A purge did not complete: removed data may still be on disk. The store itself is intact.
    #[error("purge failed: {0}")]
    Purge(String),
    /// The engine was closed while the request waited.
    #[error("the engine is closed")]
    Closed,
}

impl From<ValueError> for Error {
    fn from(e: ValueError) -> Error {
        Error::Corrupt(e.to_string())
    }
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Error {
        Error::Corrupt(e.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
