//! The open-loop schedule, without I/O or clocks: request `i` is *intended* to be sent at
//! `start + i / rate`, whatever happened to the requests before it.
//!
//! A closed-loop generator waits for each answer before it sends the next request, so when the
//! server stalls it simply stops asking, and the requests a real client population would have sent
//! during the stall never exist: the stall shows up as one slow request instead of thousands
//! ("coordinated omission", Gil Tene). Here the intended times are fixed in advance and every
//! latency is measured from its request's intended time, so the time a request spent waiting for
//! its turn (in the per-connection queue, or because the sender itself was late) is part of its
//! latency. The queues between the schedule and the connections are bounded; a request whose queue
//! is full is counted as an error (`dropped`), never silently skipped.

/// Hands out the intended send times of a fixed-rate schedule, relative to its start, in
/// nanoseconds.
#[derive(Clone, Debug)]
pub struct Pacer {
    rate_per_s: f64,
    next: u64,
    limit: Option<u64>,
    end_ns: Option<u64>,
}

impl Pacer {
    /// A schedule of `rate_per_s` requests a second, ending after `limit` requests or at `end_ns`,
    /// whichever comes first.
    pub fn new(rate_per_s: f64, limit: Option<u64>, end_ns: Option<u64>) -> Pacer {
        assert!(
            rate_per_s.is_finite() && rate_per_s > 0.0,
            "the rate is checked positive by the caller"
        );
        Pacer {
            rate_per_s,
            next: 0,
            limit,
            end_ns,
        }
    }

    /// The intended send time of request `i`.
    pub fn intended_ns(&self, i: u64) -> u64 {
        (i as f64 * 1e9 / self.rate_per_s).round() as u64
    }

    /// When the next request is due, or `None` when the schedule is over.
    pub fn next_due_ns(&self) -> Option<u64> {
        if self.limit.is_some_and(|l| self.next >= l) {
            return None;
        }
        let due = self.intended_ns(self.next);
        match self.end_ns {
            Some(end) if due >= end => None,
            _ => Some(due),
        }
    }

    /// The next request if it is due at `now_ns`: its index and intended time. A sender that
    /// fell behind gets every overdue request, each with its own original time, so that its own
    /// lateness is charged to the requests and not hidden by shifting the schedule.
    pub fn take_due(&mut self, now_ns: u64) -> Option<(u64, u64)> {
        let due = self.next_due_ns()?;
        if due > now_ns {
            return None;
        }
        let i = self.next;
        self.next += 1;
        Some((i, due))
    }

    /// Requests handed out so far.
    pub fn issued(&self) -> u64 {
        self.next
    }

    pub fn is_done(&self) -> bool {
        self.next_due_ns().is_none()
    }
}

/// The latency charged to a request: from its intended send time to its completion.
pub fn latency_ns(intended_ns: u64, done_ns: u64) -> u64 {
    done_ns.saturating_sub(intended_ns)
}

/// The lane (connection slot with its own bounded queue) that request `i` goes to: round robin, so
/// that a slow lane keeps receiving its share and its queue shows the backlog.
pub fn lane_for(i: u64, lanes: usize) -> usize {
    (i % lanes as u64) as usize
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn intended_times_follow_the_rate_and_bounds() {
        let mut p = Pacer::new(1_000.0, Some(5), None);
        assert_eq!(p.take_due(0), Some((0, 0)));
        assert_eq!(p.take_due(0), None, "request 1 is due at 1 ms");
        assert_eq!(p.next_due_ns(), Some(MS));
        // A sender that wakes up 3.5 ms late gets the overdue requests with their own times.
        let got: Vec<_> = std::iter::from_fn(|| p.take_due(3 * MS + MS / 2)).collect();
        assert_eq!(got, vec![(1, MS), (2, 2 * MS), (3, 3 * MS)]);
        assert_eq!(p.take_due(100 * MS), Some((4, 4 * MS)));
        assert!(p.is_done(), "the request limit ends the schedule");
        assert_eq!(p.take_due(u64::MAX), None);
        assert_eq!(p.issued(), 5);

        let mut p = Pacer::new(3.0, None, Some(1_000 * MS));
        let got: Vec<_> = std::iter::from_fn(|| p.take_due(u64::MAX)).collect();
        assert_eq!(
            got,
            vec![(0, 0), (1, 333_333_333), (2, 666_666_667)],
            "the end time ends the schedule; fractional intervals do not drift"
        );
        assert_eq!(
            Pacer::new(3.0, None, None).intended_ns(3_000),
            1_000_000_000_000
        );
        assert_eq!(lane_for(7, 3), 1);
        assert_eq!(latency_ns(5, 3), 0);
    }

    /// One lane, a server that answers in 1 ms but stalls for 1 s once: an open-loop run charges the
    /// stall to every request scheduled during it (latencies falling from ~1 s to ~0), a closed-loop
    /// measurement sees one slow request. Requests beyond the queue bound are dropped and counted.
    #[test]
    fn a_stall_is_charged_to_every_request_scheduled_during_it() {
        let service = |start_ns: u64| {
            let stall = (1_000 * MS..2_000 * MS).contains(&start_ns);
            if stall {
                2_000 * MS - start_ns + MS
            } else {
                MS
            }
        };
        let rate = 500.0; // one request every 2 ms: the lane is half busy
        let simulate = |queue_cap: usize| {
            let mut pacer = Pacer::new(rate, None, Some(4_000 * MS));
            let mut queue: VecDeque<u64> = VecDeque::new();
            let (mut free_at, mut corrected, mut naive, mut dropped) = (0u64, vec![], vec![], 0);
            // Discrete events: the next arrival or the lane freeing up, whichever comes first.
            loop {
                let arrival = pacer.next_due_ns();
                let serve_next = !queue.is_empty();
                match (arrival, serve_next) {
                    (Some(a), _) if !serve_next || a <= free_at => {
                        let (_, intended) = pacer.take_due(a).expect("due");
                        if queue.len() == queue_cap {
                            dropped += 1;
                        } else {
                            queue.push_back(intended);
                        }
                    }
                    (_, true) => {
                        let intended = queue.pop_front().expect("not empty");
                        let start = free_at.max(intended);
                        let done = start + service(start);
                        free_at = done;
                        corrected.push(latency_ns(intended, done));
                        naive.push(done - start);
                    }
                    (None, false) => break,
                    (Some(_), false) => unreachable!("covered by the first arm"),
                }
            }
            (corrected, naive, dropped)
        };
        let (mut corrected, mut naive, dropped) = simulate(10_000);
        assert_eq!(dropped, 0);
        assert_eq!(corrected.len(), 2_000, "4 s at 500/s");
        corrected.sort_unstable();
        naive.sort_unstable();
        let p = |v: &[u64], q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
        // ~500 requests were scheduled during the stall: a quarter of all requests wait 0-1 s.
        assert!(
            p(&naive, 0.9) <= MS,
            "the naive p90 sees no stall: {}",
            p(&naive, 0.9)
        );
        assert!(
            p(&corrected, 0.9) > 400 * MS,
            "corrected p90 {}",
            p(&corrected, 0.9)
        );
        assert!(
            p(&corrected, 0.99) > 900 * MS,
            "corrected p99 {}",
            p(&corrected, 0.99)
        );
        assert!(*corrected.last().unwrap() >= 1_000 * MS);
        assert!(p(&corrected, 0.5) <= 2 * MS, "half the run is unaffected");

        // A queue of 100: the stall's backlog overflows and the excess is counted as dropped.
        let (corrected, _, dropped) = simulate(100);
        assert!(dropped > 350, "dropped {dropped}");
        assert_eq!(
            corrected.len() as u64 + dropped,
            2_000,
            "every scheduled request is accounted for"
        );
    }
}
