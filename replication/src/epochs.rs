//! Epoch histories (like Kafka's leader epochs or PostgreSQL's timelines) and where two logs diverge.
//!
//! Each epoch has exactly one primary, which writes each LSN of its epoch once; so two logs hold the
//! same entry at an LSN exactly when that LSN belongs to the same epoch in both histories. The first
//! LSN where the epochs differ is the divergence point; everything before it is common.

use trackstore_engine::Lsn;

/// (epoch, first LSN of the epoch), strictly increasing in both. LSNs before the first recorded epoch
/// belong to epoch 0 (a store that never saw a promotion).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochHistory(Vec<(u64, Lsn)>);

/// An epoch history that is not strictly increasing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("epoch history is not strictly increasing at entry {index}")]
pub struct HistoryError {
    pub index: usize,
}

impl EpochHistory {
    pub fn new(entries: Vec<(u64, Lsn)>) -> Result<EpochHistory, HistoryError> {
        for (index, w) in entries.windows(2).enumerate() {
            // Two epochs may start at the same LSN (a promotion with no write in between): the later
            // one wins that LSN. Epoch numbers themselves must grow.
            if w[1].0 <= w[0].0 || w[1].1 < w[0].1 {
                return Err(HistoryError { index: index + 1 });
            }
        }
        Ok(EpochHistory(entries))
    }

    pub fn entries(&self) -> &[(u64, Lsn)] {
        &self.0
    }

    /// The epoch that wrote `lsn`.
    pub fn epoch_of(&self, lsn: Lsn) -> u64 {
        self.0
            .iter()
            .rev()
            .find(|(_, start)| *start <= lsn)
            .map_or(0, |(e, _)| *e)
    }

    /// The newest epoch.
    pub fn current(&self) -> u64 {
        self.0.last().map_or(0, |(e, _)| *e)
    }
}

/// The last LSN that a log (`local`, ending at `local_last`) has in common with another (`other`,
/// ending at `other_last`). The local entries after it are not in the other log.
pub fn last_common_lsn(
    local: &EpochHistory,
    local_last: Lsn,
    other: &EpochHistory,
    other_last: Lsn,
) -> Lsn {
    let end = local_last.min(other_last);
    // Epochs are constant between consecutive boundaries, so comparing at each boundary suffices.
    let mut boundaries: Vec<Lsn> = local
        .0
        .iter()
        .chain(&other.0)
        .map(|(_, l)| *l)
        .filter(|l| *l <= end)
        .collect();
    boundaries.push(Lsn(1));
    boundaries.sort_unstable();
    boundaries.dedup();
    for b in boundaries {
        if b.0 >= 1 && local.epoch_of(b) != other.epoch_of(b) {
            return Lsn(b.0 - 1);
        }
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A log as the epoch of each entry (index i is LSN i + 1) and its history.
    fn history(log: &[u64]) -> EpochHistory {
        let mut h: Vec<(u64, Lsn)> = Vec::new();
        for (i, e) in log.iter().enumerate() {
            if h.last().is_none_or(|(last, _)| last != e) {
                h.push((*e, Lsn(i as u64 + 1)));
            }
        }
        EpochHistory::new(h).expect("increasing")
    }

    proptest! {
        /// Two logs share a prefix, then each continues in its own epochs (the other's newer primary
        /// took a higher epoch), like an old primary and the replica promoted over it.
        #[test]
        fn finds_exactly_the_common_prefix(
            prefix in proptest::collection::vec(0u64..3, 0..20),
            local_tail in proptest::collection::vec(0u64..3, 0..20),
            other_tail in proptest::collection::vec(0u64..3, 0..20),
        ) {
            let mut prefix = prefix;
            prefix.sort_unstable();
            let base = prefix.last().copied().unwrap_or(0);
            // Local continues in its current epoch or higher ones below 10; the other jumps to 10+.
            let mut lt: Vec<u64> = local_tail.iter().map(|d| base + d).collect();
            lt.sort_unstable();
            let mut ot: Vec<u64> = other_tail.iter().map(|d| 10 + base + d).collect();
            ot.sort_unstable();
            let local: Vec<u64> = prefix.iter().chain(&lt).copied().collect();
            let other: Vec<u64> = prefix.iter().chain(&ot).copied().collect();
            let truth = local.iter().zip(&other).take_while(|(a, b)| a == b).count() as u64;
            let got = last_common_lsn(&history(&local), Lsn(local.len() as u64), &history(&other), Lsn(other.len() as u64));
            prop_assert_eq!(got, Lsn(truth));
        }
    }

    #[test]
    fn rejects_histories_that_do_not_grow() {
        assert!(EpochHistory::new(vec![(2, Lsn(1)), (1, Lsn(5))]).is_err());
        assert!(EpochHistory::new(vec![(1, Lsn(5)), (2, Lsn(3))]).is_err());
        assert!(EpochHistory::new(vec![(1, Lsn(5)), (2, Lsn(5))]).is_ok());
    }

    #[test]
    fn a_replica_behind_in_the_same_epoch_has_everything_in_common() {
        let h = EpochHistory::new(vec![(1, Lsn(1))]).expect("valid");
        assert_eq!(last_common_lsn(&h, Lsn(40), &h, Lsn(90)), Lsn(40));
        assert_eq!(h.epoch_of(Lsn(0)), 0);
    }
}
