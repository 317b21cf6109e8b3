//! Value encodings of the column families. Every value starts with a format byte so that a later
//! version can read old data (and an old version refuses new data instead of misreading it).
//!
//! Event (in `log`, and in `by_order` for a primary's appends; a replica's `by_order` values are
//! empty, store format 2 in `engine.rs`), format 1, integers big-endian:
//!
//! ```text
//! 0      u8   format = 1
//! 1      u8   kind   = 1 (event)
//! 2      u64  lsn
//! 10     i64  received_at (ms since the epoch)
//! 18     i64  occurred_at
//! 26     u8   status
//! 27     u8   presence: 1 source, 2 carrier, 4 reason, 8 location, 16 location.name, 32 eta, 64 attributes
//! 28     str8 event_id, str8 order_id        (str8 = u8 length ‖ UTF-8; str16 = u16 length ‖ UTF-8)
//!        [str16 source] [str16 carrier] [str16 reason]
//!        [f64 lat, f64 lon [str16 name]] [i64 eta] [str16 attributes as canonical compact JSON]
//! ```
//!
//! Order state (in `orders`), format 1:
//!
//! ```text
//! u8 format = 1, u8 status, i64 status_at, u64 status_lsn, i64 updated_at, u64 event_count,
//! u64 last_lsn, u8 presence (1 carrier, 2 location, 4 location.name, 8 eta), str8 order_id,
//! [str16 carrier, i64 at, u64 lsn] [f64 lat, f64 lon, [str16 name], i64 at, u64 lsn] [i64 eta, i64 at, u64 lsn]
//! ```
//!
//! Tombstone (in `log`, kind 2): u8 format = 1, u8 kind = 2, u64 lsn, i64 removed at, u64 LSN of the
//! removal, u64 digest of the removed event (`LogEntry::anchor_digest`).
//!
//! Removal (in `log`, kind 3): u8 format = 1, u8 kind = 3, u64 lsn, i64 at, u8 removal kind, then for
//! an erasure (1) 16 bytes salt ‖ 32 bytes digest, for retention (2) i64 before; then u32 count ‖
//! count × u64 removed LSN, ascending.
//!
//! Erasure record (`meta/erasure/LSN`): u8 format = 1, i64 erased at, u64 events, salt, digest.
//!
//! Status index entry (in `status_index`, store format 3): u8 format = 1, then the order's carrier as
//! UTF-8 (nothing when it has none; a carrier is never empty). Stores written before format 3 hold
//! empty values, which record no carrier (`StatusEntry::Unrecorded`).
//!
//! Stats (`meta/stats`): u8 format = 1, u64 orders, u64 events, u64 last_lsn, 12 × u64 orders by status.
//! Epoch (`meta/epoch/N`): u8 format = 1, u64 first LSN of the epoch.

use crate::entry::{ErasureRecord, LogEntry, Removal, RemovalKind, SALT_BYTES};
use crate::event::{Attributes, Event, Location, Lsn, Status, StoredEvent};
use crate::keys::TimePos;
use crate::state::{OrderState, Stamped, Stats};
use crate::time::Timestamp;

const FORMAT_V1: u8 = 1;
const KIND_EVENT: u8 = 1;
const KIND_ERASED: u8 = 2;
const KIND_REMOVAL: u8 = 3;
const REMOVAL_ERASURE: u8 = 1;
const REMOVAL_RETENTION: u8 = 2;

/// A stored value that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("corrupt {what} value: {reason}")]
pub struct ValueError {
    pub what: &'static str,
    pub reason: &'static str,
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn str8(&mut self, s: &str) {
        let len = u8::try_from(s.len()).expect("validated ids are at most 128 bytes");
        self.0.push(len);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn str16(&mut self, s: &str) {
        let len = u16::try_from(s.len()).expect("validated texts are at most 4 KiB");
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn pos(&mut self, p: TimePos) {
        self.i64(p.at.as_millis());
        self.u64(p.lsn.0);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: &'static str) -> ValueError {
        ValueError {
            what: self.what,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ValueError> {
        if self.buf.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, ValueError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, ValueError> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, ValueError> {
        Ok(i64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn f64(&mut self) -> Result<f64, ValueError> {
        Ok(f64::from_be_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn time(&mut self) -> Result<Timestamp, ValueError> {
        let ms = self.i64()?;
        Timestamp::from_millis(ms).ok_or_else(|| self.err("timestamp out of range"))
    }
    fn status(&mut self) -> Result<Status, ValueError> {
        let b = self.u8()?;
        Status::from_byte(b).ok_or_else(|| self.err("unknown status byte"))
    }
    fn text(&mut self, len: usize) -> Result<String, ValueError> {
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| self.err("text is not UTF-8"))
    }
    fn str8(&mut self) -> Result<String, ValueError> {
        let len = usize::from(self.u8()?);
        self.text(len)
    }
    fn str16(&mut self) -> Result<String, ValueError> {
        let len = usize::from(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ));
        self.text(len)
    }
    fn pos(&mut self) -> Result<TimePos, ValueError> {
        Ok(TimePos {
            at: self.time()?,
            lsn: Lsn(self.u64()?),
        })
    }
    fn format(&mut self) -> Result<(), ValueError> {
        match self.u8()? {
            FORMAT_V1 => Ok(()),
            _ => Err(self.err("unknown format version")),
        }
    }
    fn finish<T>(self, value: T) -> Result<T, ValueError> {
        if self.buf.is_empty() {
            Ok(value)
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

pub fn encode_event(stored: &StoredEvent) -> Vec<u8> {
    let e = &stored.event;
    let attributes = e.attributes.as_ref().map(Attributes::as_str);
    let mut w = Writer(Vec::with_capacity(
        64 + e.event_id.len() + e.order_id.len() + attributes.map_or(0, str::len),
    ));
    w.u8(FORMAT_V1);
    w.u8(KIND_EVENT);
    w.u64(stored.lsn.0);
    w.i64(stored.received_at.as_millis());
    w.i64(e.occurred_at.as_millis());
    w.u8(e.status.to_byte());
    let loc_name = e.location.as_ref().and_then(|l| l.name.as_ref());
    let flags = u8::from(e.source.is_some())
        | u8::from(e.carrier.is_some()) << 1
        | u8::from(e.reason.is_some()) << 2
        | u8::from(e.location.is_some()) << 3
        | u8::from(loc_name.is_some()) << 4
        | u8::from(e.eta.is_some()) << 5
        | u8::from(attributes.is_some()) << 6;
    w.u8(flags);
    w.str8(&e.event_id);
    w.str8(&e.order_id);
    for text in [&e.source, &e.carrier, &e.reason].into_iter().flatten() {
        w.str16(text);
    }
    if let Some(loc) = &e.location {
        w.f64(loc.lat);
        w.f64(loc.lon);
        if let Some(name) = loc_name {
            w.str16(name);
        }
    }
    if let Some(eta) = e.eta {
        w.i64(eta.as_millis());
    }
    if let Some(attrs) = attributes {
        w.str16(attrs);
    }
    w.0
}

pub fn decode_event(bytes: &[u8]) -> Result<StoredEvent, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "event",
    };
    r.format()?;
    if r.u8()? != KIND_EVENT {
        return Err(r.err("unknown entry kind"));
    }
    let lsn = Lsn(r.u64()?);
    let received_at = r.time()?;
    let occurred_at = r.time()?;
    let status = r.status()?;
    let flags = r.u8()?;
    if flags & 0x80 != 0 {
        return Err(r.err("unknown presence flag"));
    }
    let has = |bit: u8| flags & (1 << bit) != 0;
    let event_id = r.str8()?;
    let order_id = r.str8()?;
    let source = if has(0) { Some(r.str16()?) } else { None };
    let carrier = if has(1) { Some(r.str16()?) } else { None };
    let reason = if has(2) { Some(r.str16()?) } else { None };
    let location = if has(3) {
        let (lat, lon) = (r.f64()?, r.f64()?);
        let name = if has(4) { Some(r.str16()?) } else { None };
        Some(Location { lat, lon, name })
    } else {
        None
    };
    let eta = if has(5) { Some(r.time()?) } else { None };
    let attributes = if has(6) {
        match Attributes::from_stored(r.str16()?) {
            Some(attributes) => Some(attributes),
            None => return Err(r.err("attributes are not a JSON object")),
        }
    } else {
        None
    };
    let event = Event {
        event_id,
        order_id,
        status,
        occurred_at,
        source,
        carrier,
        reason,
        location,
        eta,
        attributes,
    };
    r.finish(StoredEvent {
        lsn,
        received_at,
        event,
    })
}

/// Encodes any log entry; an event's encoding is `encode_event`'s.
pub fn encode_log_entry(entry: &LogEntry) -> Vec<u8> {
    match entry {
        LogEntry::Event(e) => encode_event(e),
        LogEntry::Erased {
            lsn,
            at,
            by,
            event_digest,
        } => encode_tombstone(*lsn, *at, *by, *event_digest),
        LogEntry::Removal(r) => {
            let mut w = Writer(Vec::with_capacity(64 + 8 * r.lsns.len()));
            w.u8(FORMAT_V1);
            w.u8(KIND_REMOVAL);
            w.u64(r.lsn.0);
            w.i64(r.at.as_millis());
            match &r.kind {
                RemovalKind::Erasure { salt, digest } => {
                    w.u8(REMOVAL_ERASURE);
                    w.0.extend_from_slice(salt);
                    w.0.extend_from_slice(digest);
                }
                RemovalKind::Retention { before } => {
                    w.u8(REMOVAL_RETENTION);
                    w.i64(before.as_millis());
                }
            }
            let count = u32::try_from(r.lsns.len()).expect("removals are bounded far below 2^32");
            w.0.extend_from_slice(&count.to_be_bytes());
            for l in &r.lsns {
                w.u64(l.0);
            }
            w.0
        }
    }
}

pub fn encode_tombstone(lsn: Lsn, at: Timestamp, by: Lsn, event_digest: u64) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(34));
    w.u8(FORMAT_V1);
    w.u8(KIND_ERASED);
    w.u64(lsn.0);
    w.i64(at.as_millis());
    w.u64(by.0);
    w.u64(event_digest);
    w.0
}

/// Whether a log value is an event (not a tombstone or a removal), without decoding it.
pub fn is_event(bytes: &[u8]) -> Result<bool, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "log entry",
    };
    r.format()?;
    Ok(r.u8()? == KIND_EVENT)
}

/// The LSN a log value (as `encode_log_entry` made it) carries, from its header alone: what a
/// reader that passes the value on undecoded (replication shipping) checks against the key.
pub fn log_entry_lsn(bytes: &[u8]) -> Result<Lsn, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "log entry",
    };
    r.format()?;
    match r.u8()? {
        KIND_EVENT | KIND_ERASED | KIND_REMOVAL => Ok(Lsn(r.u64()?)),
        _ => Err(r.err("unknown entry kind")),
    }
}

pub fn decode_log_entry(bytes: &[u8]) -> Result<LogEntry, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "log entry",
    };
    r.format()?;
    match r.u8()? {
        KIND_EVENT => decode_event(bytes).map(LogEntry::Event),
        KIND_ERASED => {
            let lsn = Lsn(r.u64()?);
            let at = r.time()?;
            let by = Lsn(r.u64()?);
            let event_digest = r.u64()?;
            r.finish(LogEntry::Erased {
                lsn,
                at,
                by,
                event_digest,
            })
        }
        KIND_REMOVAL => {
            let lsn = Lsn(r.u64()?);
            let at = r.time()?;
            let kind = match r.u8()? {
                REMOVAL_ERASURE => RemovalKind::Erasure {
                    salt: r.take(SALT_BYTES)?.try_into().expect("salt length"),
                    digest: r.take(32)?.try_into().expect("32 bytes"),
                },
                REMOVAL_RETENTION => RemovalKind::Retention { before: r.time()? },
                _ => return Err(r.err("unknown removal kind")),
            };
            let count = u32::from_be_bytes(r.take(4)?.try_into().expect("4 bytes")) as usize;
            if count > r.buf.len() / 8 {
                return Err(r.err("removal count beyond the value"));
            }
            let mut lsns = Vec::with_capacity(count);
            for _ in 0..count {
                let l = Lsn(r.u64()?);
                if lsns.last().is_some_and(|p: &Lsn| *p >= l) || l >= lsn {
                    return Err(r.err("removed LSNs not ascending below the removal"));
                }
                lsns.push(l);
            }
            r.finish(LogEntry::Removal(Removal {
                lsn,
                at,
                kind,
                lsns,
            }))
        }
        _ => Err(r.err("unknown entry kind")),
    }
}

pub fn encode_erasure_record(r: &ErasureRecord) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(65));
    w.u8(FORMAT_V1);
    w.i64(r.erased_at.as_millis());
    w.u64(r.events);
    w.0.extend_from_slice(&r.salt);
    w.0.extend_from_slice(&r.digest);
    w.0
}

pub fn decode_erasure_record(lsn: Lsn, bytes: &[u8]) -> Result<ErasureRecord, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "erasure record",
    };
    r.format()?;
    let erased_at = r.time()?;
    let events = r.u64()?;
    let salt = r.take(SALT_BYTES)?.try_into().expect("salt length");
    let digest = r.take(32)?.try_into().expect("32 bytes");
    r.finish(ErasureRecord {
        lsn,
        erased_at,
        events,
        salt,
        digest,
    })
}

/// The LSN of an encoded event, without decoding the rest.
pub fn event_lsn(bytes: &[u8]) -> Result<Lsn, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "event",
    };
    r.format()?;
    r.u8()?;
    Ok(Lsn(r.u64()?))
}

pub fn encode_state(s: &OrderState) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(96 + s.order_id.len()));
    w.u8(FORMAT_V1);
    w.u8(s.status.value.to_byte());
    w.pos(s.status.pos);
    w.i64(s.updated_at.as_millis());
    w.u64(s.event_count);
    w.u64(s.last_lsn.0);
    let loc_name = s.location.as_ref().and_then(|l| l.value.name.as_ref());
    let flags = u8::from(s.carrier.is_some())
        | u8::from(s.location.is_some()) << 1
        | u8::from(loc_name.is_some()) << 2
        | u8::from(s.eta.is_some()) << 3;
    w.u8(flags);
    w.str8(&s.order_id);
    if let Some(c) = &s.carrier {
        w.str16(&c.value);
        w.pos(c.pos);
    }
    if let Some(l) = &s.location {
        w.f64(l.value.lat);
        w.f64(l.value.lon);
        if let Some(name) = loc_name {
            w.str16(name);
        }
        w.pos(l.pos);
    }
    if let Some(eta) = &s.eta {
        w.i64(eta.value.as_millis());
        w.pos(eta.pos);
    }
    w.0
}

pub fn decode_state(bytes: &[u8]) -> Result<OrderState, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "order state",
    };
    r.format()?;
    let status_value = r.status()?;
    let status = Stamped {
        value: status_value,
        pos: r.pos()?,
    };
    let updated_at = r.time()?;
    let event_count = r.u64()?;
    let last_lsn = Lsn(r.u64()?);
    let flags = r.u8()?;
    if flags & 0xF0 != 0 {
        return Err(r.err("unknown presence flag"));
    }
    let order_id = r.str8()?;
    let carrier = if flags & 1 != 0 {
        Some(Stamped {
            value: r.str16()?,
            pos: r.pos()?,
        })
    } else {
        None
    };
    let location = if flags & 2 != 0 {
        let (lat, lon) = (r.f64()?, r.f64()?);
        let name = if flags & 4 != 0 {
            Some(r.str16()?)
        } else {
            None
        };
        Some(Stamped {
            value: Location { lat, lon, name },
            pos: r.pos()?,
        })
    } else {
        None
    };
    let eta = if flags & 8 != 0 {
        Some(Stamped {
            value: r.time()?,
            pos: r.pos()?,
        })
    } else {
        None
    };
    r.finish(OrderState {
        order_id,
        status,
        updated_at,
        event_count,
        last_lsn,
        carrier,
        location,
        eta,
    })
}

pub fn encode_stats(s: &Stats) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(1 + 8 * 15));
    w.u8(FORMAT_V1);
    w.u64(s.orders);
    w.u64(s.events);
    w.u64(s.last_lsn.0);
    for n in s.by_status {
        w.u64(n);
    }
    w.0
}

pub fn decode_stats(bytes: &[u8]) -> Result<Stats, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "stats",
    };
    r.format()?;
    let mut s = Stats {
        orders: r.u64()?,
        events: r.u64()?,
        last_lsn: Lsn(r.u64()?),
        by_status: [0; 12],
    };
    for slot in &mut s.by_status {
        *slot = r.u64()?;
    }
    r.finish(s)
}

pub fn encode_epoch_start(start: Lsn) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(9));
    w.u8(FORMAT_V1);
    w.u64(start.0);
    w.0
}

pub fn decode_epoch_start(bytes: &[u8]) -> Result<Lsn, ValueError> {
    let mut r = Reader {
        buf: bytes,
        what: "epoch",
    };
    r.format()?;
    let lsn = Lsn(r.u64()?);
    r.finish(lsn)
}

/// `status_index` values: the order's carrier, so that "orders in status" filtered by carrier reads
/// no order state for the orders of other carriers.
pub fn encode_status_entry(carrier: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + carrier.map_or(0, str::len));
    v.push(FORMAT_V1);
    if let Some(c) = carrier {
        v.extend_from_slice(c.as_bytes());
    }
    v
}

/// What a `status_index` value says about the order's carrier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusEntry<'a> {
    /// Written before store format 3: the carrier is only in the order's state.
    Unrecorded,
    Carrier(Option<&'a str>),
}

pub fn decode_status_entry(bytes: &[u8]) -> Result<StatusEntry<'_>, ValueError> {
    let err = |reason| ValueError {
        what: "status_index",
        reason,
    };
    match bytes {
        [] => Ok(StatusEntry::Unrecorded),
        [FORMAT_V1] => Ok(StatusEntry::Carrier(None)),
        [FORMAT_V1, carrier @ ..] => std::str::from_utf8(carrier)
            .map(|c| StatusEntry::Carrier(Some(c)))
            .map_err(|_| err("carrier is not UTF-8")),
        _ => Err(err("unknown format version")),
    }
}

/// `by_time` values: the event's status, so that a status filter needs no log read.
pub fn encode_time_entry(status: Status) -> [u8; 1] {
    [status.to_byte()]
}

pub fn decode_time_entry(bytes: &[u8]) -> Result<Status, ValueError> {
    match bytes {
        [b] => Status::from_byte(*b).ok_or(ValueError {
            what: "by_time",
            reason: "unknown status byte",
        }),
        _ => Err(ValueError {
            what: "by_time",
            reason: "length is not 1",
        }),
    }
}

/// `event_ids` values: the LSN that first stored the id.
pub fn encode_event_id_entry(lsn: Lsn) -> [u8; 8] {
    lsn.0.to_be_bytes()
}

pub fn decode_event_id_entry(bytes: &[u8]) -> Result<Lsn, ValueError> {
    bytes
        .try_into()
        .map(|b| Lsn(u64::from_be_bytes(b)))
        .map_err(|_| ValueError {
            what: "event_ids",
            reason: "length is not 8",
        })
}

/// Test support shared by unit and property tests: arbitrary valid events.
#[cfg(test)]
pub(crate) mod arbitrary {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    pub fn text() -> impl Strategy<Value = String> {
        "[a-zé:_ -]{1,20}"
    }

    pub fn event() -> impl Strategy<Value = Event> {
        let time = || {
            (0i64..4_000_000_000_000).prop_map(|ms| Timestamp::from_millis(ms).expect("in range"))
        };
        let location = (
            -90.0f64..=90.0,
            -180.0f64..=180.0,
            proptest::option::of(text()),
        )
            .prop_map(|(lat, lon, name)| Location { lat, lon, name });
        let attrs = proptest::collection::btree_map(
            "[a-z]{1,8}",
            prop_oneof![
                text().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<bool>().prop_map(Value::from),
                // Any finite double: the canonical text must stay the same through encode and
                // decode (a replica keeps the bytes it receives).
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(Value::from),
            ],
            0..4,
        )
        .prop_map(|m| Attributes::from_map(&m.into_iter().collect::<Map<String, Value>>()));
        (
            ("[A-Za-z0-9._:-]{1,30}", "[A-Za-z0-9._:-]{1,30}"),
            proptest::sample::select(Status::ALL.to_vec()),
            time(),
            (
                proptest::option::of(text()),
                proptest::option::of(text()),
                proptest::option::of("[a-z_]{1,10}"),
            ),
            proptest::option::of(location),
            proptest::option::of(time()),
            proptest::option::of(attrs),
        )
            .prop_map(
                |(
                    (event_id, order_id),
                    status,
                    occurred_at,
                    (source, carrier, reason),
                    location,
                    eta,
                    attributes,
                )| Event {
                    event_id,
                    order_id,
                    status,
                    occurred_at,
                    source,
                    carrier,
                    reason,
                    location,
                    eta,
                    attributes,
                },
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn events_round_trip(event in arbitrary::event(), lsn in any::<u64>(), rx in 0i64..4_000_000_000_000) {
            let stored = StoredEvent { lsn: Lsn(lsn), received_at: Timestamp::from_millis(rx).expect("in range"), event };
            let bytes = encode_event(&stored);
            prop_assert_eq!(event_lsn(&bytes), Ok(Lsn(lsn)));
            prop_assert_eq!(decode_event(&bytes), Ok(stored));
        }

        #[test]
        fn removals_and_tombstones_round_trip(
            lsn in 2u64..1 << 40,
            at in 0i64..4_000_000_000_000,
            picks in proptest::collection::btree_set(1u64..1 << 40, 0..50),
            erasure in any::<bool>(),
            salt in any::<[u8; SALT_BYTES]>(),
        ) {
            let at = Timestamp::from_millis(at).expect("in range");
            let kind = if erasure {
                RemovalKind::Erasure { salt, digest: crate::entry::order_digest(&salt, "o-1") }
            } else {
                RemovalKind::Retention { before: at }
            };
            let lsns = picks.into_iter().filter(|l| *l < lsn).map(Lsn).collect();
            let removal = LogEntry::Removal(Removal { lsn: Lsn(lsn), at, kind, lsns });
            let bytes = encode_log_entry(&removal);
            prop_assert_eq!(event_lsn(&bytes), Ok(Lsn(lsn)));
            prop_assert_eq!(decode_log_entry(&bytes), Ok(removal));
            prop_assert!(decode_event(&bytes).is_err(), "a removal is not an event");
            let tomb = LogEntry::Erased { lsn: Lsn(lsn - 1), at, by: Lsn(lsn), event_digest: lsn ^ 0x5a5a };
            prop_assert_eq!(decode_log_entry(&encode_log_entry(&tomb)), Ok(tomb));
        }

        #[test]
        fn states_round_trip(events in proptest::collection::vec(arbitrary::event(), 1..6)) {
            let stored: Vec<StoredEvent> = events.into_iter().enumerate().map(|(i, event)| StoredEvent {
                lsn: Lsn(i as u64 + 1), received_at: Timestamp::MIN, event,
            }).collect();
            let mut state = OrderState::new(&stored[0]);
            for s in &stored[1..] {
                state.apply(s);
            }
            prop_assert_eq!(decode_state(&encode_state(&state)), Ok(state));
        }

        #[test]
        fn truncated_or_extended_values_are_errors(event in arbitrary::event(), cut in 0usize..200) {
            let bytes = encode_event(&StoredEvent { lsn: Lsn(1), received_at: Timestamp::MIN, event });
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode_event(&bytes[..cut]).is_err());
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(decode_event(&longer).is_err());
        }

        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = decode_event(&bytes);
            let _ = decode_log_entry(&bytes);
            let _ = decode_erasure_record(Lsn(1), &bytes);
            let _ = decode_state(&bytes);
            let _ = decode_stats(&bytes);
            let _ = decode_epoch_start(&bytes);
            let _ = decode_status_entry(&bytes);
        }

        #[test]
        fn status_entries_round_trip(carrier in proptest::option::of("[a-z0-9 é-]{1,20}")) {
            let bytes = encode_status_entry(carrier.as_deref());
            prop_assert_eq!(decode_status_entry(&bytes), Ok(StatusEntry::Carrier(carrier.as_deref())));
        }
    }

    #[test]
    fn status_entries_written_before_format_3_and_foreign_ones() {
        assert_eq!(decode_status_entry(&[]), Ok(StatusEntry::Unrecorded));
        assert!(decode_status_entry(&[2, b'x']).is_err(), "unknown version");
        assert!(decode_status_entry(&[1, 0xff]).is_err(), "not UTF-8");
    }

    #[test]
    fn stats_round_trip() {
        let mut s = Stats {
            orders: 3,
            events: 9,
            last_lsn: Lsn(9),
            by_status: [0; 12],
        };
        *s.orders_in_mut(Status::Delivered) = 2;
        *s.orders_in_mut(Status::Created) = 1;
        assert_eq!(decode_stats(&encode_stats(&s)), Ok(s));
    }
}
