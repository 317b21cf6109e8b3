//! Log entries. The log holds one entry per LSN, gap-free: an event, the tombstone of an event that
//! was removed (erasure or retention), or the removal itself. Removals are log entries so that they
//! replicate in order with the events, and tombstones keep the log gap-free so that a replica catching
//! up later receives the same LSN sequence as one that followed live.
//!
//! Neither a tombstone nor a removal carries personal data: an erasure names its order only by a
//! salted SHA-256 digest, which lets an auditor holding the order id check a receipt.

use sha2::{Digest, Sha256};

use crate::event::{Lsn, StoredEvent};
use crate::time::Timestamp;

/// One entry of the log.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEntry {
    Event(StoredEvent),
    /// An event removed by the removal at `by`; the LSN stays taken. `event_digest` is the removed
    /// event's [`LogEntry::anchor_digest`], so that a node still holding the event and one holding
    /// the tombstone agree on the entry when replication checks where two logs meet.
    Erased {
        lsn: Lsn,
        at: Timestamp,
        by: Lsn,
        event_digest: u64,
    },
    Removal(Removal),
}

impl LogEntry {
    pub fn lsn(&self) -> Lsn {
        match self {
            LogEntry::Event(e) => e.lsn,
            LogEntry::Erased { lsn, .. } => *lsn,
            LogEntry::Removal(r) => r.lsn,
        }
    }

    /// When the primary wrote the entry (for a tombstone: when its event was removed).
    pub fn received_at(&self) -> Timestamp {
        match self {
            LogEntry::Event(e) => e.received_at,
            LogEntry::Erased { at, .. } => *at,
            LogEntry::Removal(r) => r.at,
        }
    }

    /// The digest replication compares where two logs meet (the entry before the first one sent):
    /// the first 8 bytes of the SHA-256 of the entry's encoding, and for a tombstone the digest of
    /// the event it replaced (an erasure does not make a log diverge from a copy taken before it).
    pub fn anchor_digest(&self) -> u64 {
        match self {
            LogEntry::Erased { event_digest, .. } => *event_digest,
            other => bytes_digest(&crate::codec::encode_log_entry(other)),
        }
    }

    pub fn as_event(&self) -> Option<&StoredEvent> {
        match self {
            LogEntry::Event(e) => Some(e),
            _ => None,
        }
    }

    pub fn into_event(self) -> Option<StoredEvent> {
        match self {
            LogEntry::Event(e) => Some(e),
            _ => None,
        }
    }
}

/// A removal of events: every listed LSN (all below `lsn`) becomes a tombstone, its index entries and
/// event id go, and the states of the orders concerned are recomputed from what remains.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub lsn: Lsn,
    pub at: Timestamp,
    pub kind: RemovalKind,
    /// Ascending.
    pub lsns: Vec<Lsn>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemovalKind {
    /// GDPR erasure of one order, named by `SHA-256(salt ‖ order_id)`.
    Erasure {
        salt: [u8; SALT_BYTES],
        digest: [u8; 32],
    },
    /// Retention: events that occurred before `before`.
    Retention { before: Timestamp },
}

pub const SALT_BYTES: usize = 16;

/// The first 8 bytes of the SHA-256 of `bytes`.
pub fn bytes_digest(bytes: &[u8]) -> u64 {
    let d = Sha256::digest(bytes);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// `SHA-256(salt ‖ order_id)`: names an erased order without storing its id.
pub fn order_digest(salt: &[u8; SALT_BYTES], order_id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(order_id.as_bytes());
    h.finalize().into()
}

/// What an erasure returns, and what an auditor checks later (`Engine::erasure_record`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureReceipt {
    pub order_id: String,
    /// The LSN of the erasure entry.
    pub lsn: Lsn,
    pub erased_at: Timestamp,
    /// Events removed.
    pub events: u64,
}

/// The durable record of an erasure (no order id: its salted digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureRecord {
    pub lsn: Lsn,
    pub erased_at: Timestamp,
    pub events: u64,
    pub salt: [u8; SALT_BYTES],
    pub digest: [u8; 32],
}

impl ErasureRecord {
    /// True when this erasure was of `order_id`.
    pub fn is_of(&self, order_id: &str) -> bool {
        order_digest(&self.salt, order_id) == self.digest
    }
}

/// What one retention step removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// The LSN of the removal entry; None when nothing was old enough.
    pub lsn: Option<Lsn>,
    pub events: u64,
    /// Orders left with no event, removed entirely.
    pub orders: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_identifies_its_order_only() {
        let salt = [7u8; SALT_BYTES];
        let record = ErasureRecord {
            lsn: Lsn(9),
            erased_at: Timestamp::MIN,
            events: 2,
            salt,
            digest: order_digest(&salt, "o-1"),
        };
        assert!(record.is_of("o-1"));
        assert!(!record.is_of("o-2"));
        assert_ne!(
            order_digest(&[8u8; SALT_BYTES], "o-1"),
            record.digest,
            "the salt changes the digest"
        );
    }
}
