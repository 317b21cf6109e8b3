//! The replication protocol's frames and their binary encoding (pure: no I/O).
//!
//! A frame on the wire is `length:u32be ‖ kind:u8 ‖ body`, where `length` counts `kind ‖ body` and is
//! at most [`FRAME_BYTES_MAX`]. Integers are big-endian; strings and byte strings are `len:u32be ‖
//! bytes`; lists are `count:u32be ‖ items`; flags are one byte, 0 or 1; the fields follow in the
//! order the variants below declare them. One bidirectional QUIC stream per session carries them:
//!
//! ```text
//! replica → primary   Hello, then Ack… (and SwitchoverRequest for a planned switchover)
//! primary → replica   Welcome | Refused, then Entries… and Heartbeat… (SwitchoverReady, Promoted)
//!
//! snapshot bootstrap (a node with no store, `Hello.accepts_snapshot`):
//! primary → replica   SnapshotBegin, (SnapshotFile, SnapshotChunk…)…, SnapshotEnd, end of stream
//!                     — or Busy (another snapshot is being sent: ask again later)
//! ```
//!
//! Entries carry the engine's own encoding of each log entry (`trackstore_engine::codec`: events,
//! tombstones, removals), so the replica applies exactly the bytes the primary stored.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use trackstore_engine::CommitRuns;

/// The protocol version in `Hello`; a primary refuses any other. Version 2 added snapshot bootstrap
/// (`Hello.accepts_snapshot` and the `Snapshot*` and `Busy` frames); version 3 added tombstone and
/// removal entries (erasure, retention) to `Entries`; version 4 added their commit times
/// (`Entries.committed`, see `trackstore_engine::commit_clock`).
pub const PROTOCOL_VERSION: u16 = 4;
/// The largest frame accepted (length field), so a peer can never make us buffer more.
pub const FRAME_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Entries in one `Entries` frame, and their encoded bytes (a frame stays far under the maximum).
pub const BATCH_ENTRIES_MAX: usize = 4_096;
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Epoch history entries in a `Hello` or `Welcome`.
const HISTORY_MAX: usize = 100_000;
/// Bytes of a text field (node names, reasons).
const TEXT_BYTES_MAX: usize = 4096;
/// The QUIC close code with which a replica ends a snapshot session once it has read `SnapshotEnd`
/// and the end of the stream: the primary's proof that the snapshot arrived whole (QUIC's own
/// acknowledgement of the last bytes can come after the close).
pub const CLOSE_SNAPSHOT_RECEIVED: u32 = 0x5a;
/// Bytes of one `SnapshotChunk`: the replica holds at most one chunk (plus one frame being read).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Files in one snapshot (a RocksDB checkpoint: SST files of up to 64 MiB, a manifest, a few more).
pub const SNAPSHOT_FILES_MAX: u32 = 100_000;
/// Bytes of one snapshot file, and of a whole snapshot: far above any store this machine class
/// holds, low enough that a lying peer cannot announce an absurd transfer.
pub const SNAPSHOT_FILE_BYTES_MAX: u64 = 1 << 40;
pub const SNAPSHOT_BYTES_MAX: u64 = 16 << 40;
/// Bytes of a snapshot file name (names are checked further by `session::check_snapshot_file_name`).
pub const SNAPSHOT_NAME_BYTES_MAX: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The replica's first frame: who it is and what its log holds.
    Hello {
        version: u16,
        node: String,
        /// (epoch, first LSN), oldest first.
        history: Vec<(u64, u64)>,
        /// The highest epoch the replica has heard of.
        known_epoch: u64,
        last_lsn: u64,
        /// This node holds no store yet and can install a snapshot instead of following the log
        /// from LSN 1 (a running replica cannot: its engine is never swapped in place).
        accepts_snapshot: bool,
    },
    /// The primary accepts: its history and log end, and the LSN it will stream from. A replica whose
    /// log goes past `start_from - 1` holds a divergent tail and must set it aside first.
    Welcome {
        history: Vec<(u64, u64)>,
        epoch: u64,
        last_lsn: u64,
        start_from: u64,
        /// Digest of the primary's entry at `start_from - 1` (0 when `start_from` is 1): the replica
        /// checks its own entry there, so two primaries that used the same epoch number cannot make a
        /// wrong common prefix pass silently.
        prev_digest: u64,
    },
    /// The primary refuses the session. `fenced_by` is set when the replica showed a newer epoch:
    /// the primary has stepped down.
    Refused {
        reason: String,
        fenced_by: Option<u64>,
    },
    /// Consecutive log entries of one epoch, in LSN order, with their commit times on the primary:
    /// runs of (entries, µs since the Unix epoch, 0 = unknown) covering every entry, or empty when
    /// none is known (see `trackstore_engine::commit_clock`).
    Entries {
        epoch: u64,
        first_lsn: u64,
        entries: Vec<Bytes>,
        committed: CommitRuns,
    },
    /// The primary's log end and clock (ms since the Unix epoch), sent when idle and with batches.
    Heartbeat {
        epoch: u64,
        last_lsn: u64,
        now_ms: i64,
    },
    /// The replica has applied (durably) every entry up to this LSN.
    Ack { applied_lsn: u64 },
    /// Planned switchover, replica → primary: stop writes and tell me your final LSN.
    SwitchoverRequest,
    /// The primary stopped writes at `final_lsn` and will not accept any more in `epoch`.
    SwitchoverReady { final_lsn: u64 },
    /// The replica was promoted to `epoch`: the primary fences itself.
    Promoted { epoch: u64 },
    /// A snapshot follows: a consistent copy of the primary's store (a RocksDB checkpoint) holding
    /// exactly LSNs 1..=`last_lsn` with this epoch `history`, in `files` files of `bytes` bytes.
    SnapshotBegin {
        last_lsn: u64,
        history: Vec<(u64, u64)>,
        files: u32,
        bytes: u64,
    },
    /// The next file of the snapshot: `size` bytes follow in `SnapshotChunk`s.
    SnapshotFile { name: String, size: u64 },
    /// At most [`SNAPSHOT_CHUNK_BYTES_MAX`] bytes of the current file.
    SnapshotChunk { data: Bytes },
    /// Every file was sent; `sha256` covers each file's name, size and content in the order sent
    /// (`session::SnapshotDigest`).
    SnapshotEnd { sha256: [u8; 32] },
    /// The primary cannot serve this request now (it is sending a snapshot to another replica):
    /// ask again after `retry_after_ms`.
    Busy { reason: String, retry_after_ms: u32 },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSED: u8 = 3;
const ENTRIES: u8 = 4;
const HEARTBEAT: u8 = 5;
const ACK: u8 = 6;
const SWITCHOVER_REQUEST: u8 = 7;
const SWITCHOVER_READY: u8 = 8;
const PROMOTED: u8 = 9;
const SNAPSHOT_BEGIN: u8 = 10;
const SNAPSHOT_FILE: u8 = 11;
const SNAPSHOT_CHUNK: u8 = 12;
const SNAPSHOT_END: u8 = 13;
const BUSY: u8 = 14;

impl Frame {
    /// The frame's kind, for messages: a frame itself may hold up to [`FRAME_BYTES_MAX`] bytes of
    /// entries or snapshot data, which no error string, log line or status should carry.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Welcome { .. } => "Welcome",
            Frame::Refused { .. } => "Refused",
            Frame::Entries { .. } => "Entries",
            Frame::Heartbeat { .. } => "Heartbeat",
            Frame::Ack { .. } => "Ack",
            Frame::SwitchoverRequest => "SwitchoverRequest",
            Frame::SwitchoverReady { .. } => "SwitchoverReady",
            Frame::Promoted { .. } => "Promoted",
            Frame::SnapshotBegin { .. } => "SnapshotBegin",
            Frame::SnapshotFile { .. } => "SnapshotFile",
            Frame::SnapshotChunk { .. } => "SnapshotChunk",
            Frame::SnapshotEnd { .. } => "SnapshotEnd",
            Frame::Busy { .. } => "Busy",
        }
    }

    /// Appends the frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = out.len();
        out.put_u32(0);
        match self {
            Frame::Hello {
                version,
                node,
                history,
                known_epoch,
                last_lsn,
                accepts_snapshot,
            } => {
                out.put_u8(HELLO);
                out.put_u16(*version);
                put_bytes(out, node.as_bytes());
                put_history(out, history);
                out.put_u64(*known_epoch);
                out.put_u64(*last_lsn);
                out.put_u8(u8::from(*accepts_snapshot));
            }
            Frame::Welcome {
                history,
                epoch,
                last_lsn,
                start_from,
                prev_digest,
            } => {
                out.put_u8(WELCOME);
                put_history(out, history);
                out.put_u64(*epoch);
                out.put_u64(*last_lsn);
                out.put_u64(*start_from);
                out.put_u64(*prev_digest);
            }
            Frame::Refused { reason, fenced_by } => {
                out.put_u8(REFUSED);
                put_bytes(out, reason.as_bytes());
                out.put_u64(fenced_by.unwrap_or(0));
            }
            Frame::Entries {
                epoch,
                first_lsn,
                entries,
                committed,
            } => {
                out.put_u8(ENTRIES);
                out.put_u64(*epoch);
                out.put_u64(*first_lsn);
                out.put_u32(entries.len() as u32);
                for e in entries {
                    put_bytes(out, e);
                }
                out.put_u32(committed.len() as u32);
                for (n, at) in committed {
                    out.put_u32(*n);
                    out.put_i64(*at);
                }
            }
            Frame::Heartbeat {
                epoch,
                last_lsn,
                now_ms,
            } => {
                out.put_u8(HEARTBEAT);
                out.put_u64(*epoch);
                out.put_u64(*last_lsn);
                out.put_i64(*now_ms);
            }
            Frame::Ack { applied_lsn } => {
                out.put_u8(ACK);
                out.put_u64(*applied_lsn);
            }
            Frame::SwitchoverRequest => out.put_u8(SWITCHOVER_REQUEST),
            Frame::SwitchoverReady { final_lsn } => {
                out.put_u8(SWITCHOVER_READY);
                out.put_u64(*final_lsn);
            }
            Frame::Promoted { epoch } => {
                out.put_u8(PROMOTED);
                out.put_u64(*epoch);
            }
            Frame::SnapshotBegin {
                last_lsn,
                history,
                files,
                bytes,
            } => {
                out.put_u8(SNAPSHOT_BEGIN);
                out.put_u64(*last_lsn);
                put_history(out, history);
                out.put_u32(*files);
                out.put_u64(*bytes);
            }
            Frame::SnapshotFile { name, size } => {
                out.put_u8(SNAPSHOT_FILE);
                put_bytes(out, name.as_bytes());
                out.put_u64(*size);
            }
            Frame::SnapshotChunk { data } => {
                out.put_u8(SNAPSHOT_CHUNK);
                put_bytes(out, data);
            }
            Frame::SnapshotEnd { sha256 } => {
                out.put_u8(SNAPSHOT_END);
                out.put_slice(sha256);
            }
            Frame::Busy {
                reason,
                retry_after_ms,
            } => {
                out.put_u8(BUSY);
                put_bytes(out, reason.as_bytes());
                out.put_u32(*retry_after_ms);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Takes one whole frame off the front of `buf` if it holds one (`Ok(None)`: need more bytes).
    /// An oversize length is an error before any of the body arrives.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(len));
        }
        if len == 0 {
            return Err(FrameError::Truncated("empty frame"));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        let mut body = buf.split_to(len).freeze();
        let frame = Frame::decode_body(&mut body)?;
        if body.has_remaining() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(Some(frame))
    }

    fn decode_body(b: &mut Bytes) -> Result<Frame, FrameError> {
        let kind = get_u8(b)?;
        Ok(match kind {
            HELLO => Frame::Hello {
                version: get_u16(b)?,
                node: get_text(b)?,
                history: get_history(b)?,
                known_epoch: get_u64(b)?,
                last_lsn: get_u64(b)?,
                // Absent in version 1: such a Hello still decodes, so the primary can refuse its
                // version by name instead of failing on a short frame.
                accepts_snapshot: if b.has_remaining() {
                    match get_u8(b)? {
                        0 => false,
                        1 => true,
                        _ => return Err(FrameError::Malformed("accepts_snapshot is not 0 or 1")),
                    }
                } else {
                    false
                },
            },
            WELCOME => Frame::Welcome {
                history: get_history(b)?,
                epoch: get_u64(b)?,
                last_lsn: get_u64(b)?,
                start_from: get_u64(b)?,
                prev_digest: get_u64(b)?,
            },
            REFUSED => Frame::Refused {
                reason: get_text(b)?,
                fenced_by: Some(get_u64(b)?).filter(|e| *e > 0),
            },
            ENTRIES => {
                let epoch = get_u64(b)?;
                let first_lsn = get_u64(b)?;
                let n = get_u32(b)? as usize;
                if n > BATCH_ENTRIES_MAX {
                    return Err(FrameError::Malformed("too many entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    entries.push(get_bytes(b)?);
                }
                let runs = get_u32(b)? as usize;
                if runs > n {
                    return Err(FrameError::Malformed("more commit-time runs than entries"));
                }
                let mut committed = Vec::with_capacity(runs);
                let mut covered = 0u64;
                for _ in 0..runs {
                    let run = (get_u32(b)?, get_i64(b)?);
                    if run.0 == 0 {
                        return Err(FrameError::Malformed("an empty commit-time run"));
                    }
                    covered += u64::from(run.0);
                    committed.push(run);
                }
                if runs > 0 && covered != n as u64 {
                    return Err(FrameError::Malformed(
                        "the commit-time runs do not cover the entries",
                    ));
                }
                Frame::Entries {
                    epoch,
                    first_lsn,
                    entries,
                    committed,
                }
            }
            HEARTBEAT => Frame::Heartbeat {
                epoch: get_u64(b)?,
                last_lsn: get_u64(b)?,
                now_ms: get_i64(b)?,
            },
            ACK => Frame::Ack {
                applied_lsn: get_u64(b)?,
            },
            SWITCHOVER_REQUEST => Frame::SwitchoverRequest,
            SWITCHOVER_READY => Frame::SwitchoverReady {
                final_lsn: get_u64(b)?,
            },
            PROMOTED => Frame::Promoted { epoch: get_u64(b)? },
            SNAPSHOT_BEGIN => Frame::SnapshotBegin {
                last_lsn: get_u64(b)?,
                history: get_history(b)?,
                files: get_u32(b)?,
                bytes: get_u64(b)?,
            },
            SNAPSHOT_FILE => {
                let name = get_text(b)?;
                if name.len() > SNAPSHOT_NAME_BYTES_MAX {
                    return Err(FrameError::Malformed("snapshot file name too long"));
                }
                Frame::SnapshotFile {
                    name,
                    size: get_u64(b)?,
                }
            }
            SNAPSHOT_CHUNK => {
                let data = get_bytes(b)?;
                if data.len() > SNAPSHOT_CHUNK_BYTES_MAX {
                    return Err(FrameError::Malformed("snapshot chunk too large"));
                }
                Frame::SnapshotChunk { data }
            }
            SNAPSHOT_END => {
                need(b, 32, "sha256")?;
                let mut sha256 = [0u8; 32];
                b.copy_to_slice(&mut sha256);
                Frame::SnapshotEnd { sha256 }
            }
            BUSY => Frame::Busy {
                reason: get_text(b)?,
                retry_after_ms: get_u32(b)?,
            },
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn put_history(out: &mut BytesMut, h: &[(u64, u64)]) {
    out.put_u32(h.len() as u32);
    for (e, l) in h {
        out.put_u64(*e);
        out.put_u64(*l);
    }
}

fn need(b: &Bytes, n: usize, what: &'static str) -> Result<(), FrameError> {
    if b.remaining() < n {
        Err(FrameError::Truncated(what))
    } else {
        Ok(())
    }
}

fn get_u8(b: &mut Bytes) -> Result<u8, FrameError> {
    need(b, 1, "u8")?;
    Ok(b.get_u8())
}

fn get_u16(b: &mut Bytes) -> Result<u16, FrameError> {
    need(b, 2, "u16")?;
    Ok(b.get_u16())
}

fn get_u32(b: &mut Bytes) -> Result<u32, FrameError> {
    need(b, 4, "u32")?;
    Ok(b.get_u32())
}

fn get_u64(b: &mut Bytes) -> Result<u64, FrameError> {
    need(b, 8, "u64")?;
    Ok(b.get_u64())
}

fn get_i64(b: &mut Bytes) -> Result<i64, FrameError> {
    need(b, 8, "i64")?;
    Ok(b.get_i64())
}

fn get_bytes(b: &mut Bytes) -> Result<Bytes, FrameError> {
    let n = get_u32(b)? as usize;
    need(b, n, "byte string")?;
    Ok(b.split_to(n))
}

fn get_text(b: &mut Bytes) -> Result<String, FrameError> {
    let raw = get_bytes(b)?;
    if raw.len() > TEXT_BYTES_MAX {
        return Err(FrameError::Malformed("text too long"));
    }
    String::from_utf8(raw.to_vec()).map_err(|_| FrameError::Malformed("text not UTF-8"))
}

fn get_history(b: &mut Bytes) -> Result<Vec<(u64, u64)>, FrameError> {
    let n = get_u32(b)? as usize;
    if n > HISTORY_MAX {
        return Err(FrameError::Malformed("epoch history too long"));
    }
    need(b, n * 16, "epoch history")?;
    Ok((0..n).map(|_| (b.get_u64(), b.get_u64())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn history() -> impl Strategy<Value = Vec<(u64, u64)>> {
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..5)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            (
                any::<u16>(),
                "[a-z]{0,12}",
                history(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(
                    |(version, node, history, known_epoch, last_lsn, accepts_snapshot)| {
                        Frame::Hello {
                            version,
                            node,
                            history,
                            known_epoch,
                            last_lsn,
                            accepts_snapshot,
                        }
                    }
                ),
            (
                history(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(history, epoch, last_lsn, start_from, prev_digest)| {
                    Frame::Welcome {
                        history,
                        epoch,
                        last_lsn,
                        start_from,
                        prev_digest,
                    }
                }),
            ("\\PC{0,20}", proptest::option::of(1u64..))
                .prop_map(|(reason, fenced_by)| { Frame::Refused { reason, fenced_by } }),
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
                any::<bool>(),
                any::<i64>(),
            )
                .prop_map(|(epoch, first_lsn, entries, timed, at)| {
                    // Runs of one or two entries covering them all, or none.
                    let mut committed = Vec::new();
                    let mut left = if timed { entries.len() } else { 0 };
                    while left > 0 {
                        let n = left.min(2);
                        committed.push((n as u32, at.wrapping_add(left as i64)));
                        left -= n;
                    }
                    Frame::Entries {
                        epoch,
                        first_lsn,
                        entries: entries.into_iter().map(Bytes::from).collect(),
                        committed,
                    }
                }),
            (any::<u64>(), any::<u64>(), any::<i64>()).prop_map(|(epoch, last_lsn, now_ms)| {
                Frame::Heartbeat {
                    epoch,
                    last_lsn,
                    now_ms,
                }
            }),
            any::<u64>().prop_map(|applied_lsn| Frame::Ack { applied_lsn }),
            Just(Frame::SwitchoverRequest),
            any::<u64>().prop_map(|final_lsn| Frame::SwitchoverReady { final_lsn }),
            any::<u64>().prop_map(|epoch| Frame::Promoted { epoch }),
            (any::<u64>(), history(), any::<u32>(), any::<u64>()).prop_map(
                |(last_lsn, history, files, bytes)| Frame::SnapshotBegin {
                    last_lsn,
                    history,
                    files,
                    bytes
                }
            ),
            ("[A-Za-z0-9._-]{0,40}", any::<u64>())
                .prop_map(|(name, size)| Frame::SnapshotFile { name, size }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|data| {
                Frame::SnapshotChunk {
                    data: Bytes::from(data),
                }
            }),
            any::<[u8; 32]>().prop_map(|sha256| Frame::SnapshotEnd { sha256 }),
            ("\\PC{0,20}", any::<u32>()).prop_map(|(reason, retry_after_ms)| Frame::Busy {
                reason,
                retry_after_ms
            }),
        ]
    }

    proptest! {
        /// Frames survive encoding, also when the bytes arrive in arbitrary pieces.
        #[test]
        fn round_trip_in_pieces(frames in proptest::collection::vec(frame(), 1..8), cut in 1usize..17) {
            let mut wire = BytesMut::new();
            for f in &frames {
                f.encode(&mut wire);
            }
            let wire = wire.freeze();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                buf.extend_from_slice(piece);
                while let Some(f) = Frame::decode(&mut buf).expect("valid frames decode") {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, frames);
        }

        /// A frame's kind is its variant's name, whatever it holds.
        #[test]
        fn the_kind_is_the_variant_name(f in frame()) {
            let debug = format!("{f:?}");
            prop_assert_eq!(debug.split([' ', '{']).next(), Some(f.kind()));
        }

        /// Garbage never panics the decoder: it is a frame, an error, or a request for more bytes.
        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = Frame::decode(&mut buf);
        }
    }

    #[test]
    fn a_version_1_hello_still_decodes_so_that_its_version_can_be_refused() {
        let with_flag = Frame::Hello {
            version: 1,
            node: "old".into(),
            history: vec![(1, 1)],
            known_epoch: 1,
            last_lsn: 7,
            accepts_snapshot: false,
        }
        .to_bytes();
        // Version 1 had no `accepts_snapshot` byte at the end.
        let mut without_flag = BytesMut::from(&with_flag[..with_flag.len() - 1]);
        let len = (with_flag.len() - 1 - 4) as u32;
        without_flag[..4].copy_from_slice(&len.to_be_bytes());
        let Some(Frame::Hello {
            version,
            accepts_snapshot,
            ..
        }) = Frame::decode(&mut without_flag).expect("decodes")
        else {
            panic!("a Hello");
        };
        assert_eq!((version, accepts_snapshot), (1, false));
    }

    #[test]
    fn snapshot_frames_over_their_bounds_are_refused() {
        let big = Frame::SnapshotChunk {
            data: Bytes::from(vec![0u8; SNAPSHOT_CHUNK_BYTES_MAX + 1]),
        };
        let mut buf = BytesMut::from(&big.to_bytes()[..]);
        assert_eq!(
            Frame::decode(&mut buf),
            Err(FrameError::Malformed("snapshot chunk too large"))
        );
        let long = Frame::SnapshotFile {
            name: "a".repeat(SNAPSHOT_NAME_BYTES_MAX + 1),
            size: 1,
        };
        let mut buf = BytesMut::from(&long.to_bytes()[..]);
        assert_eq!(
            Frame::decode(&mut buf),
            Err(FrameError::Malformed("snapshot file name too long"))
        );
        let mut hello = BytesMut::from(
            &Frame::Hello {
                version: PROTOCOL_VERSION,
                node: String::new(),
                history: vec![],
                known_epoch: 0,
                last_lsn: 0,
                accepts_snapshot: true,
            }
            .to_bytes()[..],
        );
        let end = hello.len() - 1;
        hello[end] = 2;
        assert!(Frame::decode(&mut hello).is_err(), "a flag is 0 or 1");
    }

    #[test]
    fn commit_times_must_cover_every_entry_or_none() {
        let entries = |committed| Frame::Entries {
            epoch: 1,
            first_lsn: 1,
            entries: vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
            committed,
        };
        for (committed, error) in [
            (
                vec![(1, 5)],
                "the commit-time runs do not cover the entries",
            ),
            (
                vec![(2, 5), (1, 6)],
                "the commit-time runs do not cover the entries",
            ),
            (
                vec![(1, 5), (0, 6), (1, 7)],
                "more commit-time runs than entries",
            ),
            (vec![(2, 5), (0, 6)], "an empty commit-time run"),
        ] {
            let mut buf = BytesMut::from(&entries(committed).to_bytes()[..]);
            assert_eq!(Frame::decode(&mut buf), Err(FrameError::Malformed(error)));
        }
        for committed in [vec![], vec![(2, 5)], vec![(1, 5), (1, 0)]] {
            let f = entries(committed);
            let mut buf = BytesMut::from(&f.to_bytes()[..]);
            assert_eq!(Frame::decode(&mut buf), Ok(Some(f)));
        }
    }

    #[test]
    fn an_oversize_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&((FRAME_BYTES_MAX + 1) as u32).to_be_bytes()[..]);
        assert_eq!(
            Frame::decode(&mut buf),
            Err(FrameError::TooLarge(FRAME_BYTES_MAX + 1))
        );
    }
}
