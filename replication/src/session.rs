//! The decisions of a replication session on both sides, without I/O: what a primary answers to a
//! replica's `Hello` (stream the log, send a snapshot, step down, refuse), which entries it ships
//! next, what a replica does with each frame, and the rules a snapshot's files obey. The QUIC shells
//! (`primary`, `replica`) and the seeded simulation (tests/simulation.rs) drive the same code.

use sha2::{Digest, Sha256};
use trackstore_engine::Lsn;

use crate::epochs::{EpochHistory, last_common_lsn};
use crate::frame::{PROTOCOL_VERSION, SNAPSHOT_NAME_BYTES_MAX};

/// What one node's log looks like, as far as replication cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogView {
    pub history: EpochHistory,
    /// The node's own epoch (the newest in its history).
    pub epoch: u64,
    /// The highest epoch the node has heard of.
    pub known_epoch: u64,
    /// The oldest LSN a replica can be served from: 1 until removals dropped the log's prefix. A
    /// replica that needs an older entry can only be rebuilt from a snapshot.
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
}

/// What decides between a snapshot and the log for a replica's `Hello`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotTerms {
    /// The replica holds no store and can install a snapshot (`Hello.accepts_snapshot`).
    pub replica_accepts: bool,
    /// An empty replica gets a snapshot rather than the log once the primary's log reaches this
    /// LSN (`replication_snapshot_min_lsn`).
    pub min_lsn: u64,
}

impl SnapshotTerms {
    /// A replica that cannot install a snapshot (a running follower, the simulation's nodes).
    pub const NEVER: SnapshotTerms = SnapshotTerms {
        replica_accepts: false,
        min_lsn: u64::MAX,
    };
}

/// The primary's answer to a `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloDecision {
    /// Stream from this LSN; the replica sets aside anything it holds from there on.
    Welcome {
        start_from: Lsn,
    },
    /// Send a snapshot of the whole store (the replica is empty and far behind, or needs entries
    /// the log no longer holds); the replica then follows from the snapshot's last LSN + 1.
    Snapshot,
    /// The replica knows a newer epoch than ours: another node was promoted, so we step down
    /// (fence) and refuse.
    StepDown {
        epoch: u64,
    },
    Refuse {
        reason: String,
    },
}

/// Why a replica that cannot install a snapshot is refused when it needs one: it says what to do.
pub fn snapshot_required_reason(start_from: Lsn, first_lsn: Lsn) -> String {
    format!(
        "this replica needs LSN {start_from} but the primary's log starts at LSN {first_lsn}: it \
         must be rebuilt from a snapshot. Stop this node, move its data directory aside (it may \
         hold entries worth keeping) and start it again: a node without a store bootstraps from \
         a snapshot of the primary"
    )
}

/// Decides how a primary (`primary`, which accepts writes) answers a replica's `Hello`.
pub fn on_hello(
    primary: &LogView,
    version: u16,
    replica: &LogView,
    snapshot: SnapshotTerms,
) -> HelloDecision {
    if version != PROTOCOL_VERSION {
        return HelloDecision::Refuse {
            reason: format!(
                "protocol version {version} is not supported (this primary speaks {PROTOCOL_VERSION})"
            ),
        };
    }
    let replica_newest = replica.known_epoch.max(replica.epoch);
    if replica_newest > primary.epoch {
        return HelloDecision::StepDown {
            epoch: replica_newest,
        };
    }
    let common = last_common_lsn(
        &replica.history,
        replica.last_lsn,
        &primary.history,
        primary.last_lsn,
    );
    let start_from = Lsn(common.0 + 1);
    if start_from < primary.first_lsn {
        return if snapshot.replica_accepts {
            HelloDecision::Snapshot
        } else {
            HelloDecision::Refuse {
                reason: snapshot_required_reason(start_from, primary.first_lsn),
            }
        };
    }
    if snapshot.replica_accepts && replica.last_lsn.0 == 0 && primary.last_lsn.0 >= snapshot.min_lsn
    {
        return HelloDecision::Snapshot;
    }
    HelloDecision::Welcome { start_from }
}

/// Checks the name of a snapshot file: RocksDB's own names (`000012.sst`, `MANIFEST-000005`,
/// `CURRENT`, `OPTIONS-000007`, `000004.log`, `IDENTITY`) fit; nothing that could leave the
/// directory it is written to (no `/`, no `..`, no leading dot) does.
pub fn check_snapshot_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > SNAPSHOT_NAME_BYTES_MAX {
        return Err(format!(
            "snapshot file name {name:?} is not 1..={SNAPSHOT_NAME_BYTES_MAX} bytes"
        ));
    }
    if name.starts_with('.') {
        return Err(format!("snapshot file name {name:?} starts with a dot"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "snapshot file name {name:?} holds {c:?} (only A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(())
}

/// The SHA-256 of a snapshot as sent: for each file in order, its name (`len:u32be ‖ bytes`), its
/// size (`u64be`), then its content. Both sides compute it the same way.
#[derive(Clone, Debug, Default)]
pub struct SnapshotDigest(Sha256);

impl SnapshotDigest {
    pub fn file(&mut self, name: &str, size: u64) {
        self.0.update((name.len() as u32).to_be_bytes());
        self.0.update(name.as_bytes());
        self.0.update(size.to_be_bytes());
    }

    pub fn data(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// The next batch to ship from `from` (inclusive) on a log ending at `last`: entries of one epoch
/// only (an epoch change starts a new batch, so the replica records it at the batch's first LSN),
/// at most `max` of them. Returns (epoch, last LSN of the batch), or None when `from` is past `last`.
pub fn next_batch(history: &EpochHistory, from: Lsn, last: Lsn, max: u64) -> Option<(u64, Lsn)> {
    if from > last || max == 0 {
        return None;
    }
    let epoch = history.epoch_of(from);
    let mut end = Lsn(last.0.min(from.0.saturating_add(max - 1)));
    if let Some((_, next_start)) = history.entries().iter().find(|(_, s)| *s > from)
        && *next_start <= end
    {
        end = Lsn(next_start.0 - 1);
    }
    Some((epoch, end))
}

/// A replica's session state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerState {
    /// `Hello` sent; waiting for the primary's answer.
    AwaitingWelcome,
    /// Applying entries; the next one must have this LSN.
    Streaming { next: Lsn, epoch: u64 },
}

/// What the replica must do with the primary's `Welcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WelcomePlan {
    /// Set aside (quarantine) and remove the local entries after this LSN first.
    pub truncate_after: Option<Lsn>,
    /// Remember the primary's epoch (durably: it fences us if we were a primary).
    pub note_epoch: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The stream does not continue our log: drop the session and start again with a new `Hello`.
    #[error("resynchronise: {0}")]
    Resync(String),
}

/// The replica side of one session.
#[derive(Clone, Debug)]
pub struct Follower {
    pub state: FollowerState,
    /// The primary's log end as last reported.
    pub primary_last: Lsn,
}

impl Default for Follower {
    fn default() -> Self {
        Follower::new()
    }
}

impl Follower {
    pub fn new() -> Follower {
        Follower {
            state: FollowerState::AwaitingWelcome,
            primary_last: Lsn(0),
        }
    }

    /// Checks the `Welcome` against our log and plans the truncation it implies.
    pub fn on_welcome(
        &mut self,
        local: &LogView,
        primary_history: &EpochHistory,
        primary_epoch: u64,
        primary_last: Lsn,
        start_from: Lsn,
    ) -> Result<WelcomePlan, SessionError> {
        if self.state != FollowerState::AwaitingWelcome {
            return Err(SessionError::Protocol("a second Welcome".into()));
        }
        if start_from.0 == 0 || start_from.0 > local.last_lsn.0 + 1 {
            return Err(SessionError::Protocol(format!(
                "the primary streams from LSN {start_from} but this log ends at {}",
                local.last_lsn
            )));
        }
        if primary_epoch < local.epoch {
            return Err(SessionError::Protocol(format!(
                "the primary's epoch {primary_epoch} is older than ours ({})",
                local.epoch
            )));
        }
        // Cross-check the primary's arithmetic: we keep exactly the common prefix.
        let common = last_common_lsn(
            &local.history,
            local.last_lsn,
            primary_history,
            primary_last,
        );
        if common.0 + 1 != start_from.0 {
            return Err(SessionError::Protocol(format!(
                "the primary streams from LSN {start_from} but the common prefix ends at {common}"
            )));
        }
        let keep = Lsn(start_from.0 - 1);
        let epoch = if keep.0 == 0 {
            0
        } else {
            local.history.epoch_of(keep)
        };
        self.state = FollowerState::Streaming {
            next: start_from,
            epoch,
        };
        self.primary_last = primary_last;
        Ok(WelcomePlan {
            truncate_after: (local.last_lsn > keep).then_some(keep),
            note_epoch: primary_epoch,
        })
    }

    /// Accepts a batch of `count` entries of `epoch` starting at `first_lsn` if it continues the log;
    /// the caller then applies it atomically and reports it with [`Follower::applied`].
    pub fn check_entries(
        &self,
        epoch: u64,
        first_lsn: Lsn,
        count: usize,
    ) -> Result<(), SessionError> {
        let FollowerState::Streaming { next, epoch: ours } = self.state else {
            return Err(SessionError::Protocol("entries before Welcome".into()));
        };
        if count == 0 {
            return Err(SessionError::Protocol("an empty batch".into()));
        }
        if first_lsn != next {
            return Err(SessionError::Resync(format!(
                "expected LSN {next}, the batch starts at {first_lsn}"
            )));
        }
        if epoch < ours {
            return Err(SessionError::Resync(format!(
                "a batch of epoch {epoch} after epoch {ours}"
            )));
        }
        Ok(())
    }

    /// Records that a checked batch is applied.
    pub fn applied(&mut self, epoch: u64, last_lsn: Lsn) {
        if let FollowerState::Streaming { next, epoch: e } = &mut self.state {
            *next = Lsn(last_lsn.0 + 1);
            *e = epoch;
        }
        self.primary_last = self.primary_last.max(last_lsn);
    }

    pub fn on_heartbeat(&mut self, primary_last: Lsn) {
        self.primary_last = self.primary_last.max(primary_last);
    }

    /// Entries the primary has that we have not applied yet.
    pub fn lag_lsn(&self) -> u64 {
        match self.state {
            FollowerState::Streaming { next, .. } => self.primary_last.0.saturating_sub(next.0 - 1),
            FollowerState::AwaitingWelcome => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(history: Vec<(u64, Lsn)>, last: u64) -> LogView {
        let h = EpochHistory::new(history).expect("valid");
        LogView {
            epoch: h.current(),
            known_epoch: h.current(),
            history: h,
            first_lsn: Lsn(1),
            last_lsn: Lsn(last),
        }
    }

    /// A node with no store, bootstrapping.
    fn empty() -> LogView {
        LogView {
            epoch: 0,
            known_epoch: 0,
            history: EpochHistory::default(),
            first_lsn: Lsn(1),
            last_lsn: Lsn(0),
        }
    }

    fn terms(replica_accepts: bool, min_lsn: u64) -> SnapshotTerms {
        SnapshotTerms {
            replica_accepts,
            min_lsn,
        }
    }

    #[test]
    fn an_old_primary_rejoining_keeps_the_common_prefix_only() {
        let new_primary = view(vec![(1, Lsn(1)), (2, Lsn(101))], 150);
        let old_primary = view(vec![(1, Lsn(1))], 120);
        let HelloDecision::Welcome { start_from } = on_hello(
            &new_primary,
            PROTOCOL_VERSION,
            &old_primary,
            SnapshotTerms::NEVER,
        ) else {
            panic!("welcome expected");
        };
        assert_eq!(start_from, Lsn(101));
        let mut f = Follower::new();
        let plan = f
            .on_welcome(&old_primary, &new_primary.history, 2, Lsn(150), start_from)
            .expect("consistent");
        assert_eq!(plan.truncate_after, Some(Lsn(100)));
        assert_eq!(plan.note_epoch, 2);
        assert_eq!(f.lag_lsn(), 50);
        assert!(f.check_entries(2, Lsn(101), 10).is_ok());
        assert!(matches!(
            f.check_entries(2, Lsn(102), 10),
            Err(SessionError::Resync(_))
        ));
    }

    #[test]
    fn a_replica_with_a_newer_epoch_makes_the_primary_step_down_but_an_older_one_does_not() {
        let primary = view(vec![(1, Lsn(1))], 10);
        let promoted = view(vec![(1, Lsn(1)), (2, Lsn(8))], 9);
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &promoted, SnapshotTerms::NEVER),
            HelloDecision::StepDown { epoch: 2 }
        );
        let newer_primary = view(vec![(1, Lsn(1)), (2, Lsn(8))], 30);
        let old = view(vec![(1, Lsn(1))], 12);
        assert_eq!(
            on_hello(&newer_primary, PROTOCOL_VERSION, &old, SnapshotTerms::NEVER),
            HelloDecision::Welcome { start_from: Lsn(8) }
        );
    }

    #[test]
    fn an_empty_node_gets_a_snapshot_once_the_primary_reaches_the_threshold() {
        let primary = view(vec![(1, Lsn(1))], 30_000);
        // Below the threshold, or a node that cannot install one: the log, from LSN 1.
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &empty(), terms(true, 30_001)),
            HelloDecision::Welcome { start_from: Lsn(1) }
        );
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &empty(), terms(false, 20_000)),
            HelloDecision::Welcome { start_from: Lsn(1) }
        );
        // At or over it: a snapshot.
        for min in [20_000, 30_000] {
            assert_eq!(
                on_hello(&primary, PROTOCOL_VERSION, &empty(), terms(true, min)),
                HelloDecision::Snapshot
            );
        }
        // A replica that holds entries follows the log whatever the threshold.
        let behind = view(vec![(1, Lsn(1))], 10);
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &behind, terms(true, 1)),
            HelloDecision::Welcome {
                start_from: Lsn(11)
            }
        );
        // A running replica with an empty store (`accepts_snapshot` false) is never sent one.
        let fresh = view(vec![(1, Lsn(1))], 0);
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &fresh, terms(false, 1)),
            HelloDecision::Welcome { start_from: Lsn(1) }
        );
        // A newer epoch still deposes the primary first.
        let mut newer = empty();
        newer.known_epoch = 2;
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &newer, terms(true, 1)),
            HelloDecision::StepDown { epoch: 2 }
        );
    }

    #[test]
    fn a_replica_behind_the_first_held_lsn_needs_a_snapshot() {
        let mut primary = view(vec![(1, Lsn(1)), (2, Lsn(500))], 2_000);
        primary.first_lsn = Lsn(1_001);
        let behind = view(vec![(1, Lsn(1))], 700);
        // Its next LSN (the common prefix ends at 499) is gone: a snapshot or nothing.
        let HelloDecision::Refuse { reason } =
            on_hello(&primary, PROTOCOL_VERSION, &behind, terms(false, u64::MAX))
        else {
            panic!("a running replica cannot take a snapshot");
        };
        assert!(reason.contains("LSN 500"), "{reason}");
        assert!(reason.contains("move its data directory aside"), "{reason}");
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &empty(), terms(true, u64::MAX)),
            HelloDecision::Snapshot,
            "an empty node needs LSN 1, which is gone: a snapshot whatever the threshold"
        );
        // One exactly at the first held LSN follows the log.
        let at_edge = view(vec![(1, Lsn(1)), (2, Lsn(500))], 1_000);
        assert_eq!(
            on_hello(&primary, PROTOCOL_VERSION, &at_edge, terms(false, u64::MAX)),
            HelloDecision::Welcome {
                start_from: Lsn(1_001)
            }
        );
    }

    #[test]
    fn snapshot_file_names_cannot_leave_their_directory() {
        for ok in [
            "000012.sst",
            "MANIFEST-000005",
            "CURRENT",
            "OPTIONS-000007",
            "000004.log",
            "IDENTITY",
        ] {
            assert_eq!(check_snapshot_file_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../db",
            "a/b",
            "/etc",
            ".hidden",
            "a\\b",
            "nul\0",
            "é.sst",
            &"x".repeat(256),
        ] {
            assert!(check_snapshot_file_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_snapshot_digest_covers_names_sizes_and_content() {
        let digest = |files: &[(&str, &[u8])]| {
            let mut d = SnapshotDigest::default();
            for (name, data) in files {
                d.file(name, data.len() as u64);
                d.data(data);
            }
            d.finish()
        };
        let base = digest(&[("a", b"xy"), ("b", b"z")]);
        assert_eq!(base, digest(&[("a", b"xy"), ("b", b"z")]));
        assert_ne!(base, digest(&[("a", b"x"), ("b", b"yz")]), "a moved byte");
        assert_ne!(base, digest(&[("b", b"z"), ("a", b"xy")]), "another order");
        assert_ne!(base, digest(&[("a", b"xy"), ("c", b"z")]), "another name");
    }

    #[test]
    fn a_lying_primary_is_caught() {
        let local = view(vec![(1, Lsn(1))], 10);
        let mut f = Follower::new();
        assert!(
            f.on_welcome(&local, &local.history, 1, Lsn(20), Lsn(5))
                .is_err(),
            "start_from must be the common prefix + 1"
        );
        let mut f = Follower::new();
        assert!(
            f.on_welcome(&local, &local.history, 1, Lsn(20), Lsn(12))
                .is_err(),
            "start_from past our end leaves a gap"
        );
    }

    #[test]
    fn batches_never_span_epochs() {
        let h = EpochHistory::new(vec![(1, Lsn(1)), (3, Lsn(6))]).expect("valid");
        assert_eq!(next_batch(&h, Lsn(1), Lsn(10), 100), Some((1, Lsn(5))));
        assert_eq!(next_batch(&h, Lsn(6), Lsn(10), 100), Some((3, Lsn(10))));
        assert_eq!(next_batch(&h, Lsn(6), Lsn(10), 2), Some((3, Lsn(7))));
        assert_eq!(next_batch(&h, Lsn(11), Lsn(10), 2), None);
    }
}
