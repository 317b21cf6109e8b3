//! The binary keys of every column family. This module is the only place that knows their layout.
//!
//! RocksDB orders keys by unsigned bytewise comparison, so each encoding is chosen so that byte order
//! equals the order the queries need:
//!
//! ```text
//! log           lsn:u64be                                           (LSN order)
//! by_order      order_id ‖ 0x00 ‖ occurred_at:i64be^sign ‖ lsn:u64be  (per order, by event time, ties by LSN)
//! by_time       occurred_at:i64be^sign ‖ lsn:u64be                  (all events by event time, ties by LSN)
//! orders        order_id                                            (point lookups)
//! status_index  status:u8 ‖ order_id                                (orders currently in a status, by id)
//! event_ids     event_id                                            (point lookups)
//! meta          ascii name [‖ u64be]                                (see `meta_*` below)
//! ```
//!
//! * Integers are big-endian; signed ones have their sign bit flipped so that negative values sort
//!   before positive ones (timestamps are non-negative today, but the encoding does not rely on it).
//! * `order_id` is terminated by 0x00 inside `by_order`: ids are restricted to `[A-Za-z0-9._:-]`
//!   (validated before any write), which never contains 0x00, and a terminator that sorts below every
//!   id byte keeps `"a" < "a-"` in key order too. Decoders reject keys that break these rules.

use crate::event::{Lsn, Status};
use crate::time::Timestamp;

/// A key that does not decode: the database holds something this version did not write.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {family} key: {reason}")]
pub struct KeyError {
    pub family: &'static str,
    pub reason: &'static str,
}

const ORDER_TERMINATOR: u8 = 0x00;

fn put_time(out: &mut Vec<u8>, t: Timestamp) {
    out.extend_from_slice(&((t.as_millis() as u64) ^ (1 << 63)).to_be_bytes());
}

fn get_time(b: &[u8], family: &'static str) -> Result<Timestamp, KeyError> {
    let raw = u64::from_be_bytes(b.try_into().map_err(|_| KeyError {
        family,
        reason: "short time",
    })?);
    Timestamp::from_millis((raw ^ (1 << 63)) as i64).ok_or(KeyError {
        family,
        reason: "time out of range",
    })
}

fn get_lsn(b: &[u8], family: &'static str) -> Result<Lsn, KeyError> {
    Ok(Lsn(u64::from_be_bytes(b.try_into().map_err(|_| {
        KeyError {
            family,
            reason: "short lsn",
        }
    })?)))
}

pub fn log(lsn: Lsn) -> [u8; 8] {
    lsn.0.to_be_bytes()
}

pub fn decode_log(key: &[u8]) -> Result<Lsn, KeyError> {
    get_lsn(key, "log")
}

/// Event time then LSN: the sort order of timelines and time ranges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimePos {
    pub at: Timestamp,
    pub lsn: Lsn,
}

pub fn by_order(order_id: &str, pos: TimePos) -> Vec<u8> {
    let mut k = by_order_prefix(order_id);
    put_time(&mut k, pos.at);
    k.extend_from_slice(&pos.lsn.0.to_be_bytes());
    k
}

/// Every key of one order starts with this; see [`by_order_upper_bound`] for the end.
pub fn by_order_prefix(order_id: &str) -> Vec<u8> {
    debug_assert!(!order_id.as_bytes().contains(&ORDER_TERMINATOR));
    let mut k = Vec::with_capacity(order_id.len() + 17);
    k.extend_from_slice(order_id.as_bytes());
    k.push(ORDER_TERMINATOR);
    k
}

/// The smallest key greater than every key of the order.
pub fn by_order_upper_bound(order_id: &str) -> Vec<u8> {
    let mut k = by_order_prefix(order_id);
    *k.last_mut().expect("prefix ends with the terminator") = ORDER_TERMINATOR + 1;
    k
}

/// The `by_order` prefix extractor (RocksDB's prefix Bloom filter): a key's order part, terminator
/// included. Only for keys [`by_order_key_has_prefix`] accepts; idempotent, as RocksDB requires.
pub fn by_order_key_prefix(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == ORDER_TERMINATOR) {
        Some(end) => &key[..=end],
        None => key,
    }
}

/// Whether a key has an order part (every `by_order` key and prefix; not the upper bound).
pub fn by_order_key_has_prefix(key: &[u8]) -> bool {
    key.contains(&ORDER_TERMINATOR)
}

/// The greatest key an order can have: seeking back from it finds the order's last event.
pub fn by_order_last(order_id: &str) -> Vec<u8> {
    let mut k = by_order_prefix(order_id);
    k.extend_from_slice(&[0xFF; 16]);
    k
}

pub fn decode_by_order(key: &[u8]) -> Result<(&str, TimePos), KeyError> {
    const F: &str = "by_order";
    if key.len() < 18 || key[key.len() - 17] != ORDER_TERMINATOR {
        return Err(KeyError {
            family: F,
            reason: "bad length or terminator",
        });
    }
    let split = key.len() - 17;
    let order_id = std::str::from_utf8(&key[..split]).map_err(|_| KeyError {
        family: F,
        reason: "order id not UTF-8",
    })?;
    if order_id.as_bytes().contains(&ORDER_TERMINATOR) {
        return Err(KeyError {
            family: F,
            reason: "terminator inside order id",
        });
    }
    let at = get_time(&key[split + 1..split + 9], F)?;
    let lsn = get_lsn(&key[split + 9..], F)?;
    Ok((order_id, TimePos { at, lsn }))
}

pub fn by_time(pos: TimePos) -> [u8; 16] {
    let mut k = Vec::with_capacity(16);
    put_time(&mut k, pos.at);
    k.extend_from_slice(&pos.lsn.0.to_be_bytes());
    k.try_into().expect("16 bytes")
}

pub fn decode_by_time(key: &[u8]) -> Result<TimePos, KeyError> {
    const F: &str = "by_time";
    if key.len() != 16 {
        return Err(KeyError {
            family: F,
            reason: "length is not 16",
        });
    }
    Ok(TimePos {
        at: get_time(&key[..8], F)?,
        lsn: get_lsn(&key[8..], F)?,
    })
}

pub fn status_index(status: Status, order_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(order_id.len() + 1);
    k.push(status.to_byte());
    k.extend_from_slice(order_id.as_bytes());
    k
}

pub fn decode_status_index(key: &[u8]) -> Result<(Status, &str), KeyError> {
    const F: &str = "status_index";
    let (&first, rest) = key.split_first().ok_or(KeyError {
        family: F,
        reason: "empty",
    })?;
    let status = Status::from_byte(first).ok_or(KeyError {
        family: F,
        reason: "unknown status byte",
    })?;
    let order_id = std::str::from_utf8(rest).map_err(|_| KeyError {
        family: F,
        reason: "order id not UTF-8",
    })?;
    Ok((status, order_id))
}

/// Keys of the `meta` family.
pub const META_STATS: &[u8] = b"stats";
pub const META_CURSOR_KEY: &[u8] = b"cursor_key";
pub const META_FORMAT: &[u8] = b"format";
/// The highest epoch this node has heard of (u64be): above its own epoch, the node is fenced.
pub const META_KNOWN_EPOCH: &[u8] = b"known_epoch";
/// The oldest LSN the log holds (u64be); absent: 1.
pub const META_FIRST_LSN: &[u8] = b"first_lsn";
/// The anchor digest (u64be) of the entry just before `first_lsn`, dropped with the prefix.
pub const META_TRIM_ANCHOR: &[u8] = b"trim_anchor";
/// The LSN (u64be) of the newest removal not yet purged from disk; absent: nothing to purge.
pub const META_PURGE_PENDING: &[u8] = b"purge_pending";
/// Rewritten by `purge` to make MANIFEST writes; its value is empty.
pub const META_PURGE: &[u8] = b"purge";
const META_EPOCH_PREFIX: &[u8] = b"epoch/";
const META_ERASURE_PREFIX: &[u8] = b"erasure/";

/// `erasure/` ‖ lsn:u64be → the record of the erasure logged at that LSN (a receipt to check).
pub fn meta_erasure(lsn: Lsn) -> Vec<u8> {
    let mut k = META_ERASURE_PREFIX.to_vec();
    k.extend_from_slice(&lsn.0.to_be_bytes());
    k
}

/// `epoch/` ‖ epoch:u64be → the first LSN of that epoch.
pub fn meta_epoch(epoch: u64) -> Vec<u8> {
    let mut k = META_EPOCH_PREFIX.to_vec();
    k.extend_from_slice(&epoch.to_be_bytes());
    k
}

pub fn meta_epoch_prefix() -> &'static [u8] {
    META_EPOCH_PREFIX
}

pub fn decode_meta_epoch(key: &[u8]) -> Result<u64, KeyError> {
    let rest = key.strip_prefix(META_EPOCH_PREFIX).ok_or(KeyError {
        family: "meta",
        reason: "not an epoch key",
    })?;
    Ok(u64::from_be_bytes(rest.try_into().map_err(|_| {
        KeyError {
            family: "meta",
            reason: "short epoch",
        }
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn order_id() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._:-]{1,20}"
    }

    fn time_pos() -> impl Strategy<Value = TimePos> {
        (
            Timestamp::MIN.as_millis()..=Timestamp::MAX.as_millis(),
            any::<u64>(),
        )
            .prop_map(|(ms, lsn)| TimePos {
                at: Timestamp::from_millis(ms).expect("in range"),
                lsn: Lsn(lsn),
            })
    }

    fn status() -> impl Strategy<Value = Status> {
        proptest::sample::select(Status::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn the_by_order_prefix_extractor_gives_the_order_part(id in order_id(), pos in time_pos()) {
            let key = by_order(&id, pos);
            let prefix = by_order_prefix(&id);
            prop_assert!(by_order_key_has_prefix(&key));
            prop_assert_eq!(by_order_key_prefix(&key), &prefix[..]);
            prop_assert!(by_order_key_has_prefix(&prefix));
            prop_assert_eq!(by_order_key_prefix(&prefix), &prefix[..]);
            let last = by_order_last(&id);
            prop_assert_eq!(by_order_key_prefix(&last), &prefix[..]);
            prop_assert!(key <= last && last < by_order_upper_bound(&id));
            prop_assert!(!by_order_key_has_prefix(&by_order_upper_bound(&id)));
        }
    }

    #[test]
    fn a_longer_id_sharing_a_prefix_sorts_after_every_key_of_the_shorter() {
        let max = TimePos {
            at: Timestamp::MAX,
            lsn: Lsn(u64::MAX),
        };
        let min = TimePos {
            at: Timestamp::MIN,
            lsn: Lsn(0),
        };
        assert!(by_order("a", max) < by_order("a-", min));
        assert!(by_order("a", max) < by_order_upper_bound("a"));
        assert!(by_order_upper_bound("a") <= by_order("a-", min));
        assert!(by_order_prefix("a") <= by_order("a", min));
    }

    proptest! {
        #[test]
        fn by_order_round_trips(id in order_id(), pos in time_pos()) {
            let key = by_order(&id, pos);
            prop_assert_eq!(decode_by_order(&key), Ok((id.as_str(), pos)));
            prop_assert!(key.starts_with(&by_order_prefix(&id)));
            prop_assert!(key < by_order_upper_bound(&id));
        }

        #[test]
        fn by_order_preserves_order(a in (order_id(), time_pos()), b in (order_id(), time_pos())) {
            prop_assert_eq!(by_order(&a.0, a.1).cmp(&by_order(&b.0, b.1)), a.cmp(&b));
        }

        #[test]
        fn by_time_round_trips_and_preserves_order(a in time_pos(), b in time_pos()) {
            prop_assert_eq!(decode_by_time(&by_time(a)), Ok(a));
            prop_assert_eq!(by_time(a).cmp(&by_time(b)), a.cmp(&b));
        }

        #[test]
        fn log_round_trips_and_preserves_order(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(decode_log(&log(Lsn(a))), Ok(Lsn(a)));
            prop_assert_eq!(log(Lsn(a)).cmp(&log(Lsn(b))), a.cmp(&b));
        }

        #[test]
        fn status_index_round_trips_and_preserves_order(a in (status(), order_id()), b in (status(), order_id())) {
            let ka = status_index(a.0, &a.1);
            prop_assert_eq!(decode_status_index(&ka), Ok((a.0, a.1.as_str())));
            prop_assert_eq!(ka.cmp(&status_index(b.0, &b.1)), a.cmp(&b));
        }

        #[test]
        fn epoch_keys_round_trip_and_preserve_order(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(decode_meta_epoch(&meta_epoch(a)), Ok(a));
            prop_assert_eq!(meta_epoch(a).cmp(&meta_epoch(b)), a.cmp(&b));
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_by_order(&bytes);
            let _ = decode_by_time(&bytes);
            let _ = decode_log(&bytes);
            let _ = decode_status_index(&bytes);
            let _ = decode_meta_epoch(&bytes);
        }
    }
}
