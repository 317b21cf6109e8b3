//! What a run records: a latency histogram per kind of call (HdrHistogram, microseconds, 3
//! significant digits, 1 µs to 1 hour), the successes, and the errors by cause. Memory is fixed
//! whatever the run's length: nothing is kept per request.
//!
//! Latency is recorded for successful calls only; errors are counted, not timed, so that fast
//! refusals (a 503 under overload) can never make the percentiles look better.
//!
//! Many tasks record at once, so the recorder is split into shards, each behind its own mutex; a
//! task always uses the same shard. The shards are merged for progress lines and the final report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;

use super::traffic::OpKind;

/// Highest latency a histogram holds (larger values are recorded as this): one hour.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;

/// A histogram of latencies in microseconds.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// The server answered with a status other than 2xx.
    Status(u16),
    /// Connection or protocol error before a complete response.
    Transport,
    /// No complete response within the request timeout.
    Timeout,
    /// Never sent: its connection's queue of pending intended sends was full (open loop).
    Dropped,
    /// A 2xx whose body is not what the API promises (for example an ingest result per event).
    BadResponse,
    /// Still queued when the run ended (Ctrl-C, or the server could not drain the open-loop queues
    /// in time after the schedule ended): never sent.
    Abandoned,
}

impl Failure {
    /// The key in the report's `errors` table: the status code, or the cause.
    pub fn key(&self) -> String {
        match self {
            Failure::Status(code) => code.to_string(),
            Failure::Transport => "transport".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Dropped => "dropped".into(),
            Failure::BadResponse => "bad_response".into(),
            Failure::Abandoned => "abandoned".into(),
        }
    }
}

/// The record of one kind of call.
#[derive(Clone, Debug)]
pub struct OpRecord {
    pub latency_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl OpRecord {
    fn new() -> OpRecord {
        OpRecord {
            latency_us: latency_histogram(),
            errors: BTreeMap::new(),
        }
    }

    pub fn ok(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn merge(&mut self, other: &OpRecord) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of the same bounds add");
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }
}

/// Per-kind records, merged.
#[derive(Clone, Debug)]
pub struct Records {
    pub ops: Vec<OpRecord>,
}

impl Records {
    fn new() -> Records {
        Records {
            ops: OpKind::ALL.iter().map(|_| OpRecord::new()).collect(),
        }
    }

    pub fn op(&self, kind: OpKind) -> &OpRecord {
        &self.ops[kind.index()]
    }

    /// Every kind together.
    pub fn all(&self) -> OpRecord {
        let mut all = OpRecord::new();
        for r in &self.ops {
            all.merge(r);
        }
        all
    }
}

/// Live counters for the progress line, updated without locks.
#[derive(Debug, Default)]
pub struct Live {
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub events_acked: AtomicU64,
}

/// The shared recorder of a run.
#[derive(Debug)]
pub struct Recorder {
    shards: Vec<Mutex<Records>>,
    pub live: Live,
}

impl Recorder {
    pub fn new(shards: usize) -> Recorder {
        Recorder {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(Records::new()))
                .collect(),
            live: Live::default(),
        }
    }

    fn shard(&self, shard: usize) -> std::sync::MutexGuard<'_, Records> {
        // A panic while holding the lock leaves a histogram in a valid state: keep using it.
        self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn success(&self, shard: usize, kind: OpKind, latency_us: u64) {
        self.shard(shard).ops[kind.index()]
            .latency_us
            .saturating_record(latency_us.max(1));
        self.live.ok.fetch_add(1, Ordering::Relaxed);
    }

    pub fn failure(&self, shard: usize, kind: OpKind, failure: &Failure) {
        *self.shard(shard).ops[kind.index()]
            .errors
            .entry(failure.key())
            .or_default() += 1;
        let counter = if *failure == Failure::Dropped {
            &self.live.dropped
        } else {
            &self.live.errors
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// All shards merged.
    pub fn merged(&self) -> Records {
        let mut out = Records::new();
        for i in 0..self.shards.len() {
            let shard = self.shard(i);
            for (o, s) in out.ops.iter_mut().zip(&shard.ops) {
                o.merge(s);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_errors_are_counted_not_timed() {
        let r = Recorder::new(4);
        for i in 0..1_000u64 {
            r.success(i as usize, OpKind::Order, 100 + i);
        }
        r.success(0, OpKind::Ingest, 0);
        r.success(1, OpKind::Ingest, LATENCY_US_MAX * 10);
        r.failure(2, OpKind::Ingest, &Failure::Status(503));
        r.failure(3, OpKind::Ingest, &Failure::Status(503));
        r.failure(3, OpKind::Ingest, &Failure::Dropped);
        let m = r.merged();
        assert_eq!(m.op(OpKind::Order).ok(), 1_000);
        assert_eq!(m.op(OpKind::Order).latency_us.min(), 100);
        let ingest = m.op(OpKind::Ingest);
        assert_eq!(
            ingest.ok(),
            2,
            "a zero latency counts as 1 µs, a huge one saturates"
        );
        assert!(ingest.latency_us.max() >= LATENCY_US_MAX);
        assert_eq!(ingest.errors.get("503"), Some(&2));
        assert_eq!(ingest.errors.get("dropped"), Some(&1));
        assert_eq!(ingest.error_count(), 3);
        let all = m.all();
        assert_eq!(all.ok(), 1_002);
        assert_eq!(all.error_count(), 3);
        assert_eq!(r.live.ok.load(Ordering::Relaxed), 1_002);
        assert_eq!(r.live.errors.load(Ordering::Relaxed), 2);
        assert_eq!(r.live.dropped.load(Ordering::Relaxed), 1);
    }
}
