//! The decisions of a replication session on both sides, without I/O: what a primary answers to a
//! replica's `Hello`, which entries it ships next, and what a replica does with each frame. The QUIC
//! shells (`primary`, `replica`) and the seeded simulation (tests/simulation.rs) drive the same code.

use trackstore_engine::Lsn;

use crate::epochs::{EpochHistory, last_common_lsn};
use crate::frame::PROTOCOL_VERSION;

/// What one node's log looks like, as far as replication cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogView {
    pub history: EpochHistory,
    /// The node's own epoch (the newest in its history).
    pub epoch: u64,
    /// The highest epoch the node has heard of.
    pub known_epoch: u64,
    pub last_lsn: Lsn,
}

/// The primary's answer to a `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloDecision {
    /// Stream from this LSN; the replica sets aside anything it holds from there on.
    Welcome {
        start_from: Lsn,
    },
    /// The replica knows a newer epoch than ours: another node was promoted, so we step down
    /// (fence) and refuse.
    StepDown {
        epoch: u64,
    },
    Refuse {
        reason: String,
    },
}

/// Decides how a primary (`primary`, which accepts writes) answers a replica's `Hello`.
pub fn on_hello(primary: &LogView, version: u16, replica: &LogView) -> HelloDecision {
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
    HelloDecision::Welcome {
        start_from: Lsn(common.0 + 1),
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
            last_lsn: Lsn(last),
        }
    }

    #[test]
    fn an_old_primary_rejoining_keeps_the_common_prefix_only() {
        let new_primary = view(vec![(1, Lsn(1)), (2, Lsn(101))], 150);
        let old_primary = view(vec![(1, Lsn(1))], 120);
        let HelloDecision::Welcome { start_from } =
            on_hello(&new_primary, PROTOCOL_VERSION, &old_primary)
        else {
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
            on_hello(&primary, PROTOCOL_VERSION, &promoted),
            HelloDecision::StepDown { epoch: 2 }
        );
        let newer_primary = view(vec![(1, Lsn(1)), (2, Lsn(8))], 30);
        let old = view(vec![(1, Lsn(1))], 12);
        assert_eq!(
            on_hello(&newer_primary, PROTOCOL_VERSION, &old),
            HelloDecision::Welcome { start_from: Lsn(8) }
        );
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
