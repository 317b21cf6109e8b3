//! When this node committed its recent log entries (pure: no I/O but the clock read by `now_us`).
//!
//! A replica's lag is measured from the commit of each entry on the primary (the moment the write
//! was acknowledged: from then on, losing it counts against the RPO) to its durable apply on the
//! replica. PostgreSQL's `replay_lag` starts at the same point (the primary's WAL flush). Measured
//! from `received_at` instead, it would also count the primary's own queueing and group commit,
//! which no replica can shorten.
//!
//! A writable node's engine records each group as it publishes it, before its LSNs are visible to
//! readers, so a replication session never ships an entry whose time is not recorded yet. `Entries`
//! frames carry the times as runs (entries, time). Entries travel without a time, and a replica
//! measures only their delay from `received_at`, when the primary committed them before its last
//! start, before it was promoted (a replica records nothing: its commits are applies of another
//! node's entries), or more than [`COMMIT_GROUPS_MAX`] groups ago (a replica far behind).

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::event::Lsn;

/// Groups remembered: 16 bytes each, 256 KiB in all. At 10k single events/s (groups of a few
/// events) that is a few seconds of commits, far more than a live replica trails by.
pub const COMMIT_GROUPS_MAX: usize = 16_384;

/// Runs of (entries, commit time in µs since the Unix epoch, 0 = unknown) covering consecutive
/// entries.
pub type CommitRuns = Vec<(u32, i64)>;

/// The wall clock in µs since the Unix epoch (0 before it): the unit of commit times.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

#[derive(Debug)]
pub struct CommitClock {
    ring: Mutex<Ring>,
}

#[derive(Debug)]
struct Ring {
    /// LSNs up to this one have no known commit time.
    floor: u64,
    /// (last LSN of the group, its commit time in µs), oldest first: each group holds the LSNs
    /// after the one before it (the first, those after `floor`).
    groups: VecDeque<(u64, i64)>,
}

impl CommitClock {
    /// A clock for a log whose entries up to `last` committed before it started (no time known).
    pub fn new(last: Lsn) -> CommitClock {
        CommitClock {
            ring: Mutex::new(Ring {
                floor: last.0,
                groups: VecDeque::with_capacity(COMMIT_GROUPS_MAX),
            }),
        }
    }

    /// Records that LSNs `first..=last` committed at `at_us`; nothing when `last < first` (a commit
    /// that added no LSN). A group that does not continue the record (LSNs committed without being
    /// recorded came between: applies before a promotion) starts it over after them.
    pub fn record(&self, first: Lsn, last: Lsn, at_us: i64) {
        if last < first {
            return;
        }
        let mut ring = self.ring.lock().expect("commit clock lock");
        let top = ring.groups.back().map_or(ring.floor, |&(l, _)| l);
        if top + 1 != first.0 {
            ring.groups.clear();
            ring.floor = first.0 - 1;
        }
        if ring.groups.len() == COMMIT_GROUPS_MAX {
            let (oldest, _) = ring.groups.pop_front().expect("at the bound");
            ring.floor = oldest;
        }
        ring.groups.push_back((last.0, at_us));
    }

    /// The log was truncated back to `last` (rejoin): the times above it are forgotten, and those
    /// at or below it too (the record starts over after `last`).
    pub fn rewind(&self, last: Lsn) {
        let mut ring = self.ring.lock().expect("commit clock lock");
        ring.groups.clear();
        ring.floor = last.0;
    }

    /// The commit times of `count` entries from `first`, as runs; empty when none is known.
    pub fn runs(&self, first: Lsn, count: usize) -> CommitRuns {
        let ring = self.ring.lock().expect("commit clock lock");
        let end = first.0 + count as u64; // exclusive
        let mut runs: CommitRuns = Vec::new();
        let mut push = |n: u64, at: i64| match runs.last_mut() {
            Some((m, t)) if *t == at => *m += n as u32,
            _ => runs.push((n as u32, at)),
        };
        let mut lsn = first.0;
        if lsn <= ring.floor {
            let n = end.min(ring.floor + 1) - lsn;
            push(n, 0);
            lsn += n;
        }
        // The group holding `lsn`, then the ones after it.
        let mut groups = ring
            .groups
            .range(ring.groups.partition_point(|&(l, _)| l < lsn)..);
        while lsn < end {
            let Some(&(last, at)) = groups.next() else {
                push(end - lsn, 0); // not committed
                break;
            };
            let n = end.min(last + 1) - lsn;
            push(n, at);
            lsn += n;
        }
        if runs.iter().all(|&(_, at)| at == 0) {
            runs.clear();
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_follow_the_groups_and_merge_equal_times() {
        let c = CommitClock::new(Lsn(0));
        c.record(Lsn(1), Lsn(3), 100);
        c.record(Lsn(4), Lsn(4), 200);
        c.record(Lsn(5), Lsn(4), 250); // nothing new: ignored
        c.record(Lsn(5), Lsn(9), 300);
        assert_eq!(c.runs(Lsn(1), 9), vec![(3, 100), (1, 200), (5, 300)]);
        assert_eq!(c.runs(Lsn(2), 4), vec![(2, 100), (1, 200), (1, 300)]);
        assert_eq!(c.runs(Lsn(6), 2), vec![(2, 300)]);
    }

    #[test]
    fn entries_not_recorded_have_no_time() {
        // Opened with a log up to LSN 10: its entries have no time.
        let c = CommitClock::new(Lsn(10));
        c.record(Lsn(11), Lsn(12), 500);
        assert_eq!(c.runs(Lsn(9), 5), vec![(2, 0), (2, 500), (1, 0)]);
        assert_eq!(c.runs(Lsn(1), 10), CommitRuns::new());
        assert_eq!(c.runs(Lsn(13), 3), CommitRuns::new());
    }

    #[test]
    fn the_oldest_groups_are_forgotten_past_the_bound() {
        let c = CommitClock::new(Lsn(0));
        for i in 1..=COMMIT_GROUPS_MAX as u64 + 10 {
            c.record(Lsn(i), Lsn(i), i as i64);
        }
        assert_eq!(c.ring.lock().unwrap().groups.len(), COMMIT_GROUPS_MAX);
        assert_eq!(c.runs(Lsn(1), 10), CommitRuns::new());
        assert_eq!(c.runs(Lsn(10), 2), vec![(1, 0), (1, 11)]);
        let last = COMMIT_GROUPS_MAX as u64 + 10;
        assert_eq!(c.runs(Lsn(last), 1), vec![(1, last as i64)]);
    }

    #[test]
    fn a_truncated_log_starts_the_record_over() {
        let c = CommitClock::new(Lsn(0));
        c.record(Lsn(1), Lsn(10), 100);
        c.rewind(Lsn(5));
        c.record(Lsn(6), Lsn(7), 200);
        assert_eq!(c.runs(Lsn(4), 4), vec![(2, 0), (2, 200)]);
    }

    #[test]
    fn entries_committed_unrecorded_in_between_have_no_time() {
        // A replica records nothing (LSNs 1..=20 applied), then is promoted and commits 21..=22.
        let c = CommitClock::new(Lsn(0));
        c.record(Lsn(21), Lsn(22), 700);
        assert_eq!(c.runs(Lsn(1), 22), vec![(20, 0), (2, 700)]);
        // The same after recorded groups: a gap restarts the record.
        c.record(Lsn(30), Lsn(30), 800);
        assert_eq!(c.runs(Lsn(21), 10), vec![(9, 0), (1, 800)]);
    }
}
