//! The trackstore API, typed: the documents of API.md and one method per operation on
//! [`Connection`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Error;
use crate::sse::EventStream;
use crate::transport::{Connection, Request, Response, encode};

/// The largest error body read from a refused stream request.
const STREAM_ERROR_BODY_MAX: usize = 64 * 1024;

/// The response header of `DELETE /v1/orders/{id}` that repeats the erasure's LSN.
pub const ERASURE_LSN_HEADER: &str = "trackstore-erasure-lsn";

/// An event as a client sends it (DESIGN.md §1). Times are RFC 3339 text.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: String,
    pub order_id: String,
    /// One of the 12 statuses (`created`, `allocated`, ... `delivered`...).
    pub status: String,
    pub occurred_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Map<String, Value>>,
}

impl Event {
    /// An event with only the required fields.
    pub fn new(
        event_id: impl Into<String>,
        order_id: impl Into<String>,
        status: impl Into<String>,
        occurred_at: impl Into<String>,
    ) -> Event {
        Event {
            event_id: event_id.into(),
            order_id: order_id.into(),
            status: status.into(),
            occurred_at: occurred_at.into(),
            source: None,
            carrier: None,
            reason: None,
            location: None,
            eta: None,
            attributes: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An event as stored and served: the event plus its log position and arrival time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub lsn: u64,
    pub received_at: String,
    #[serde(flatten)]
    pub event: Event,
}

/// The current state of an order (`GET /v1/orders/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderState {
    pub order_id: String,
    pub status: String,
    /// `occurred_at` of the event that set `status`.
    pub status_at: String,
    /// `received_at` of the latest event applied.
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta: Option<String>,
    pub event_count: u64,
    pub last_lsn: u64,
}

/// A page of events (timeline or time range); `next_cursor` is `None` on the last page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    pub next_cursor: Option<String>,
}

/// A page of orders in one status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPage {
    pub orders: Vec<OrderState>,
    pub next_cursor: Option<String>,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub orders: u64,
    pub events: u64,
    pub last_lsn: u64,
    /// Orders currently in each status.
    pub by_status: BTreeMap<String, u64>,
}

/// The outcome of one ingested event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A new event.
    Created,
    /// The `event_id` was already stored with identical content (`lsn` is the original's).
    Duplicate,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResult {
    pub event_id: String,
    pub lsn: u64,
    pub outcome: Outcome,
}

/// `POST /v1/events`: one result per event, in request order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub results: Vec<IngestResult>,
}

impl IngestResponse {
    pub fn created(&self) -> usize {
        self.count(Outcome::Created)
    }

    pub fn duplicates(&self) -> usize {
        self.count(Outcome::Duplicate)
    }

    fn count(&self, outcome: Outcome) -> usize {
        self.results.iter().filter(|r| r.outcome == outcome).count()
    }
}

/// How an ingest body is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestFormat {
    /// One object or an array (`application/json`).
    Json,
    /// One object per line (`application/x-ndjson`).
    Ndjson,
}

impl IngestFormat {
    pub fn content_type(self) -> &'static str {
        match self {
            IngestFormat::Json => "application/json",
            IngestFormat::Ndjson => "application/x-ndjson",
        }
    }
}

/// `GET /v1/admin/replication`. Fields that do not apply to the node's role are absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicationState {
    /// `primary` or `replica`.
    pub role: String,
    pub epoch: u64,
    pub last_lsn: u64,
    /// On a replica: the primary it follows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// On a primary: its replicas.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    /// Members this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One replica, as its primary sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub addr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `DELETE /v1/orders/{id}`: the receipt of an erasure. Keep it: `lsn` and `order_id` are what
/// [`Connection::erasure_record`] checks later (the server stores only a salted digest of the id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureReceipt {
    pub order_id: String,
    /// The LSN of the erasure entry in the log.
    pub lsn: u64,
    pub erased_at: String,
    /// Events removed.
    pub events: u64,
}

/// `GET /v1/admin/erasures/{lsn}`: what the store remembers of an erasure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureRecord {
    pub lsn: u64,
    pub erased_at: String,
    /// Events removed.
    pub events: u64,
    /// Whether the erasure was of the order id asked about; present exactly when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id_matches: Option<bool>,
}

/// `POST /v1/admin/purge`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PurgeReport {
    pub purged: bool,
    /// How long the purge took on the server.
    pub seconds: f64,
}

/// `GET /v1/orders/{id}/events` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimelineQuery {
    /// 1–10,000; the server's default is 100.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// Newest first.
    pub descending: bool,
}

/// `GET /v1/orders` parameters: orders whose current status is `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrdersQuery {
    pub status: String,
    pub carrier: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// `GET /v1/events` parameters: events with `from <= occurred_at < to`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeQuery {
    pub from: String,
    pub to: String,
    /// Any of these statuses (empty: all).
    pub statuses: Vec<String>,
    pub carrier: Option<String>,
    /// 1–10,000; the server's default is 1,000.
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// `GET /v1/stream` parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamQuery {
    pub order_id: Option<String>,
    pub statuses: Vec<String>,
    pub carrier: Option<String>,
    /// Replay from this LSN, then follow live. Without it (and without `last_event_id`) the stream
    /// starts at the head.
    pub from_lsn: Option<u64>,
    /// Resume after this LSN (sent as `Last-Event-ID`, which wins over `from_lsn`).
    pub last_event_id: Option<u64>,
}

/// Builds `path?k=v&...` from the parameters that are set.
struct Query(String);

impl Query {
    fn new(path: &str) -> Query {
        Query(path.to_owned())
    }

    fn add(mut self, key: &str, value: Option<&str>) -> Query {
        if let Some(v) = value {
            let sep = if self.0.contains('?') { '&' } else { '?' };
            let _ = write!(self.0, "{sep}{key}={}", encode(v));
        }
        self
    }
}

fn json_body<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::InvalidRequest(format!("encode JSON: {e}")))
}

impl Connection {
    /// `POST /v1/events` with a JSON array of `events` (typically [`Event`]s or JSON values).
    pub async fn ingest<T: Serialize>(&self, events: &[T]) -> Result<IngestResponse, Error> {
        self.ingest_body(IngestFormat::Json, json_body(&events)?, events.len())
            .await
    }

    /// `POST /v1/events` with the events as NDJSON.
    pub async fn ingest_ndjson<T: Serialize>(&self, events: &[T]) -> Result<IngestResponse, Error> {
        let mut body = Vec::new();
        for e in events {
            body.extend(json_body(e)?);
            body.push(b'\n');
        }
        self.ingest_body(IngestFormat::Ndjson, body, events.len())
            .await
    }

    /// `POST /v1/events` with a body already encoded (as load generators pre-encode). `count`, the
    /// number of events in it, is checked against the results.
    pub async fn ingest_body(
        &self,
        format: IngestFormat,
        body: impl Into<Bytes>,
        count: usize,
    ) -> Result<IngestResponse, Error> {
        let req = Request::post("/v1/events", format.content_type(), body);
        let resp: IngestResponse = self.send_ok(req).await?.json()?;
        if resp.results.len() != count {
            return Err(Error::Decode(format!(
                "{} results for {count} events",
                resp.results.len()
            )));
        }
        Ok(resp)
    }

    /// `GET /v1/orders/{id}`; an unknown order is [`Error::Api`] with status 404.
    pub async fn order(&self, order_id: &str) -> Result<OrderState, Error> {
        self.get_json(&format!("/v1/orders/{}", encode(order_id)))
            .await
    }

    /// `GET /v1/orders/{id}/events`: one page of the order's timeline.
    pub async fn timeline(&self, order_id: &str, q: &TimelineQuery) -> Result<EventPage, Error> {
        let limit = q.limit.map(|l| l.to_string());
        let path = Query::new(&format!("/v1/orders/{}/events", encode(order_id)))
            .add("limit", limit.as_deref())
            .add("cursor", q.cursor.as_deref())
            .add("order", q.descending.then_some("desc"));
        self.get_json(&path.0).await
    }

    /// `GET /v1/orders?status=...`: one page of the orders currently in a status.
    pub async fn orders(&self, q: &OrdersQuery) -> Result<OrderPage, Error> {
        let limit = q.limit.map(|l| l.to_string());
        let path = Query::new("/v1/orders")
            .add("status", Some(&q.status))
            .add("carrier", q.carrier.as_deref())
            .add("limit", limit.as_deref())
            .add("cursor", q.cursor.as_deref());
        self.get_json(&path.0).await
    }

    /// `GET /v1/events?from=...&to=...`: one page of the events in a time range.
    pub async fn range(&self, q: &RangeQuery) -> Result<EventPage, Error> {
        let limit = q.limit.map(|l| l.to_string());
        let statuses = (!q.statuses.is_empty()).then(|| q.statuses.join(","));
        let path = Query::new("/v1/events")
            .add("from", Some(&q.from))
            .add("to", Some(&q.to))
            .add("status", statuses.as_deref())
            .add("carrier", q.carrier.as_deref())
            .add("limit", limit.as_deref())
            .add("cursor", q.cursor.as_deref());
        self.get_json(&path.0).await
    }

    /// `GET /v1/stats`.
    pub async fn stats(&self) -> Result<Stats, Error> {
        self.get_json("/v1/stats").await
    }

    /// `GET /v1/admin/replication`.
    pub async fn replication(&self) -> Result<ReplicationState, Error> {
        self.get_json("/v1/admin/replication").await
    }

    /// `POST /v1/admin/promote` with `{"planned": planned}`; answers the node's new state.
    pub async fn promote(&self, planned: bool) -> Result<ReplicationState, Error> {
        let body = json_body(&serde_json::json!({ "planned": planned }))?;
        let req = Request::post("/v1/admin/promote", "application/json", body);
        self.send_ok(req).await?.json()
    }

    /// `DELETE /v1/orders/{id}`: erases every event and all state of the order (irreversible; the
    /// data leaves the disk at the next purge). An order without events is [`Error::Api`] 404
    /// (`not-found`); a replica answers 503 `read-only-replica` naming its primary. Not safe to
    /// retry blindly: if the answer is lost, a second call finds nothing (404) and the receipt is
    /// gone, though the erasure's LSN is in the server's audit log.
    pub async fn erase_order(&self, order_id: &str) -> Result<ErasureReceipt, Error> {
        let req = Request::new(
            http::Method::DELETE,
            format!("/v1/orders/{}", encode(order_id)),
        );
        let resp = self.send_ok(req).await?;
        let receipt: ErasureReceipt = resp.json()?;
        // The header is what proxies and the audit trail see; a disagreement is a server bug that
        // would make the receipt unverifiable.
        if let Some(h) = resp.header(ERASURE_LSN_HEADER)
            && h.trim().parse::<u64>().ok() != Some(receipt.lsn)
        {
            return Err(Error::Decode(format!(
                "the {ERASURE_LSN_HEADER} header {h:?} differs from the receipt's lsn {}",
                receipt.lsn
            )));
        }
        if receipt.order_id != order_id {
            return Err(Error::Decode(format!(
                "the receipt names order {:?}, not {order_id:?}",
                receipt.order_id
            )));
        }
        Ok(receipt)
    }

    /// `GET /v1/admin/erasures/{lsn}[?order_id=...]`: the record of the erasure at `lsn` and, given
    /// an order id, whether it was of that order (`order_id_matches` is then always set). No
    /// erasure at `lsn` is [`Error::Api`] 404 (`not-found`).
    pub async fn erasure_record(
        &self,
        lsn: u64,
        order_id: Option<&str>,
    ) -> Result<ErasureRecord, Error> {
        let path = Query::new(&format!("/v1/admin/erasures/{lsn}")).add("order_id", order_id);
        let record: ErasureRecord = self.get_json(&path.0).await?;
        if order_id.is_some() && record.order_id_matches.is_none() {
            return Err(Error::Decode(format!(
                "the erasure record at LSN {lsn} does not say whether it matches the order id"
            )));
        }
        Ok(record)
    }

    /// `POST /v1/admin/purge`: makes erased and expired data leave the disk. Heavy (a full
    /// compaction), and bounded by the server's request timeout as any request; one runs at a
    /// time (409 `purge-running`).
    pub async fn purge(&self) -> Result<PurgeReport, Error> {
        let req = Request::new(http::Method::POST, "/v1/admin/purge");
        self.send_ok(req).await?.json()
    }

    /// `GET /v1/stream`: subscribes and returns once the server accepted (the response head), so a
    /// refusal (400, 503 with too many subscribers) is an error here. Over HTTP/1.1 the stream
    /// holds the connection until dropped; use a connection of its own.
    pub async fn subscribe(&self, q: &StreamQuery) -> Result<EventStream, Error> {
        let from = q.from_lsn.map(|l| l.to_string());
        let statuses = (!q.statuses.is_empty()).then(|| q.statuses.join(","));
        let path = Query::new("/v1/stream")
            .add("order_id", q.order_id.as_deref())
            .add("status", statuses.as_deref())
            .add("carrier", q.carrier.as_deref())
            .add("from_lsn", from.as_deref());
        let mut req = Request::get(path.0).header(
            http::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(id) = q.last_event_id {
            req = req.header(
                HeaderName::from_static("last-event-id"),
                HeaderValue::from(id),
            );
        }
        let config = self.client().config();
        let timeout = config.request_timeout;
        let mut head = tokio::time::timeout(timeout, self.head(&req))
            .await
            .map_err(|_| {
                self.disconnect();
                Error::Timeout(timeout)
            })??;
        if !head.status.is_success() {
            let mut body = Vec::new();
            let read = async {
                while let Some(chunk) = head.body.chunk().await? {
                    body.extend_from_slice(&chunk);
                    if body.len() > STREAM_ERROR_BODY_MAX {
                        break;
                    }
                }
                Ok::<(), Error>(())
            };
            // The status is the news; a body that does not come in time is left out.
            let _ = tokio::time::timeout(timeout, read).await;
            let resp = Response {
                status: head.status,
                version: head.version,
                headers: head.headers,
                body: body.into(),
            };
            return Err(resp
                .error_for_status()
                .err()
                .unwrap_or_else(|| Error::Decode(format!("status {}", head.status))));
        }
        let ct = head
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.starts_with("text/event-stream") {
            return Err(Error::Decode(format!(
                "the stream answered content type {ct:?}, not text/event-stream"
            )));
        }
        Ok(EventStream::new(
            head.body,
            config.max_stream_line_bytes,
            config.stream_idle_timeout,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_round_trip_with_optional_fields() {
        let text = r#"{"lsn":3,"event_id":"e","order_id":"o","status":"picked",
            "occurred_at":"2026-01-01T00:00:00.000Z","received_at":"2026-01-01T00:00:01.000Z",
            "carrier":"van","location":{"lat":1.5,"lon":2.0},"attributes":{"k":1}}"#;
        let e: StoredEvent = serde_json::from_str(text).unwrap();
        assert_eq!(e.lsn, 3);
        assert_eq!(e.event.carrier.as_deref(), Some("van"));
        assert_eq!(e.event.location.as_ref().unwrap().lat, 1.5);
        let back: Value = serde_json::to_value(&e).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn queries_encode_only_what_is_set() {
        let q = Query::new("/v1/events")
            .add("from", Some("2026-01-01T00:00:00+01:00"))
            .add("carrier", None)
            .add("limit", Some("5"));
        assert_eq!(
            q.0,
            "/v1/events?from=2026-01-01T00%3A00%3A00%2B01%3A00&limit=5"
        );
    }

    #[test]
    fn erasure_documents_parse_as_the_server_sends_them() {
        let r: ErasureReceipt = serde_json::from_str(
            r#"{"order_id":"o-1","lsn":42,"erased_at":"2026-01-01T00:00:00.000Z","events":3}"#,
        )
        .unwrap();
        assert_eq!((r.lsn, r.events, r.order_id.as_str()), (42, 3, "o-1"));
        let plain: ErasureRecord =
            serde_json::from_str(r#"{"lsn":42,"erased_at":"2026-01-01T00:00:00.000Z","events":3}"#)
                .unwrap();
        assert_eq!(plain.order_id_matches, None);
        let checked: ErasureRecord = serde_json::from_str(
            r#"{"lsn":42,"erased_at":"2026-01-01T00:00:00.000Z","events":3,
                "order_id_matches":false}"#,
        )
        .unwrap();
        assert_eq!(checked.order_id_matches, Some(false));
        assert!(serde_json::from_str::<ErasureReceipt>(r#"{"lsn":42}"#).is_err());
        let p: PurgeReport = serde_json::from_str(r#"{"purged":true,"seconds":0.25}"#).unwrap();
        assert!(p.purged && p.seconds == 0.25);
    }

    #[test]
    fn replication_state_keeps_unknown_members() {
        let s: ReplicationState = serde_json::from_str(
            r#"{"role":"replica","epoch":2,"last_lsn":9,"primary":"10.0.0.1:7000",
                "lag_lsn":1,"lag_seconds":0.5,"quarantined":3}"#,
        )
        .unwrap();
        assert_eq!(s.primary.as_deref(), Some("10.0.0.1:7000"));
        assert!(s.replicas.is_empty());
        assert_eq!(s.extra["quarantined"], 3);
    }
}
