//! trackstore's disaster-recovery replication (DESIGN.md §4): log shipping over QUIC with mutual TLS,
//! snapshot bootstrap, promotion with epoch fencing, safe rejoin.
//!
//! | module | job |
//! |---|---|
//! | [`epochs`] | epoch histories and the point where two logs diverge |
//! | [`frame`] | the protocol's frames and their binary encoding |
//! | [`session`] | the decisions of both sides of a session (pure; driven by the QUIC shells) |
//! | [`transport`] | QUIC with mutual TLS, frames over a stream |
//! | [`primary`] | the primary's listener and sessions, snapshots of the store for empty replicas |
//! | [`replica`] | snapshot bootstrap, the follower, quarantine, promotion and switchover |
//!
//! ```
//! use trackstore_engine::Lsn;
//! use trackstore_replication::epochs::{EpochHistory, last_common_lsn};
//! // The old primary wrote LSNs 1..=120 in epoch 1; the replica, promoted at LSN 101 (epoch 2), went on
//! // to LSN 150. The old primary keeps 1..=100 and quarantines 101..=120.
//! let old = EpochHistory::new(vec![(1, Lsn(1))]).unwrap();
//! let new = EpochHistory::new(vec![(1, Lsn(1)), (2, Lsn(101))]).unwrap();
//! assert_eq!(last_common_lsn(&old, Lsn(120), &new, Lsn(150)), Lsn(100));
//! ```

pub mod epochs;
pub mod frame;
pub mod primary;
pub mod replica;
pub mod session;
pub mod transport;
