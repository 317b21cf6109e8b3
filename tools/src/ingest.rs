//! Sending events in batches with safe retries, and the summary: created, duplicate, rejected with
//! reasons.
//!
//! Retries are safe because the server is idempotent on `event_id`: an event stored by an attempt
//! whose answer was lost comes back as `duplicate`. A batch the server refuses because of some of
//! its events (400 `invalid-event`, 409 `conflict`, each error naming the event's index) is sent
//! again without them; a refusal that names no event is narrowed down by halving the batch.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use trackstore_client::http::StatusCode;
use trackstore_client::{Connection, Error as ClientError, IngestResponse, Outcome};

use crate::input::Item;

/// Rejections kept with their reasons for the report; beyond, they are only counted.
pub const REJECTIONS_LISTED_MAX: usize = 1_000;
/// The longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Array,
    Ndjson,
}

/// One event the server (or the reader) refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// The element number (JSON array) or line number (NDJSON) in the input.
    pub position: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub created: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// The first [`REJECTIONS_LISTED_MAX`] rejections.
    pub rejections: Vec<Rejection>,
    /// Requests sent again after a retryable failure.
    pub retries: u64,
}

impl Summary {
    fn reject(&mut self, item: &Item, reasons: Vec<String>) {
        self.rejected += 1;
        if self.rejections.len() < REJECTIONS_LISTED_MAX {
            self.rejections.push(Rejection {
                position: item.position,
                event_id: item.event_id().map(str::to_owned),
                reasons,
            });
        }
    }

    fn tally(&mut self, resp: &IngestResponse) {
        for r in &resp.results {
            match r.outcome {
                Outcome::Created => self.created += 1,
                Outcome::Duplicate => self.duplicate += 1,
            }
        }
    }

    pub fn sent(&self) -> u64 {
        self.created + self.duplicate + self.rejected
    }
}

/// Called before each retry with the failure and the wait.
pub type RetryNote<'a> = Box<dyn FnMut(&ClientError, Duration) + 'a>;

/// The sender: a connection, how to encode, how often to retry, and where retry notes go.
pub struct Ingester<'a> {
    pub conn: &'a Connection,
    pub encoding: Encoding,
    /// Attempts after the first, per request.
    pub retries: u32,
    pub summary: Summary,
    /// Told about every retry (for stderr).
    pub on_retry: RetryNote<'a>,
}

impl std::fmt::Debug for Ingester<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingester")
            .field("encoding", &self.encoding)
            .field("retries", &self.retries)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// Whether a refusal is about the request's content (so its events are rejected, not the run).
fn content_refusal(e: &ClientError) -> bool {
    matches!(
        e.status(),
        Some(
            StatusCode::BAD_REQUEST
                | StatusCode::CONFLICT
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::UNPROCESSABLE_ENTITY
        )
    )
}

fn backoff(attempt: u32) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    // Jitter (50–100 %) so that many clients retrying after one overload do not return together.
    base.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

impl Ingester<'_> {
    /// Sends one batch read from the input. An error is one the run cannot go on after: the server
    /// unreachable after every retry, or a refusal not about the events (401, 403, 500...).
    pub async fn send(&mut self, items: Vec<Item>) -> Result<(), ClientError> {
        let mut ok = Vec::with_capacity(items.len());
        for item in items {
            match &item.event {
                Ok(_) => ok.push(item),
                Err(reason) => {
                    let reason = reason.clone();
                    self.summary.reject(&item, vec![reason]);
                }
            }
        }
        let mut work: VecDeque<Vec<Item>> = VecDeque::from([ok]);
        while let Some(chunk) = work.pop_front() {
            if chunk.is_empty() {
                continue;
            }
            let err = match self.attempt(&chunk).await {
                Ok(resp) => {
                    self.summary.tally(&resp);
                    continue;
                }
                Err(e) if content_refusal(&e) => e,
                Err(e) => return Err(e),
            };
            // Reasons by index within the chunk, from the problem's errors.
            let mut by_index: BTreeMap<usize, Vec<String>> = BTreeMap::new();
            if let Some(p) = err.problem() {
                for fe in &p.errors {
                    if let Some(i) = fe.index.and_then(|i| usize::try_from(i).ok())
                        && i < chunk.len()
                    {
                        by_index
                            .entry(i)
                            .or_default()
                            .push(format!("{}: {}", fe.field, fe.message));
                    }
                }
            }
            if !by_index.is_empty() {
                let mut rest = Vec::with_capacity(chunk.len());
                for (i, item) in chunk.into_iter().enumerate() {
                    match by_index.remove(&i) {
                        Some(reasons) => self.summary.reject(&item, reasons),
                        None => rest.push(item),
                    }
                }
                work.push_front(rest);
            } else if chunk.len() > 1 {
                let mut first = chunk;
                let second = first.split_off(first.len() / 2);
                work.push_front(second);
                work.push_front(first);
            } else {
                let reason = match err.problem() {
                    Some(p) => format!("{} ({}): {}", p.title, p.status, p.detail),
                    None => err.to_string(),
                };
                self.summary.reject(&chunk[0], vec![reason]);
            }
        }
        Ok(())
    }

    /// One request, retried with backoff on connection failures, timeouts, 429 and 503.
    async fn attempt(&mut self, chunk: &[Item]) -> Result<IngestResponse, ClientError> {
        let events: Vec<&Value> = chunk.iter().filter_map(|i| i.event.as_ref().ok()).collect();
        let mut attempt = 0;
        loop {
            let result = match self.encoding {
                Encoding::Array => self.conn.ingest(&events).await,
                Encoding::Ndjson => self.conn.ingest_ndjson(&events).await,
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.retries => {
                    let wait = backoff(attempt).max(e.retry_after().unwrap_or_default());
                    (self.on_retry)(&e, wait);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    self.summary.retries += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for attempt in 0..40 {
            let b = backoff(attempt);
            assert!(b <= BACKOFF_MAX, "{attempt}: {b:?}");
            assert!(b >= BACKOFF_FIRST / 2, "{attempt}: {b:?}");
        }
        assert!(backoff(20) >= BACKOFF_MAX / 2);
    }

    #[test]
    fn rejections_are_listed_up_to_the_bound_and_all_counted() {
        let mut s = Summary::default();
        let item = Item {
            position: 1,
            event: Ok(serde_json::json!({"event_id": "e"})),
        };
        for _ in 0..REJECTIONS_LISTED_MAX + 5 {
            s.reject(&item, vec!["x".into()]);
        }
        assert_eq!(s.rejected, REJECTIONS_LISTED_MAX as u64 + 5);
        assert_eq!(s.rejections.len(), REJECTIONS_LISTED_MAX);
        assert_eq!(s.rejections[0].event_id.as_deref(), Some("e"));
    }
}
