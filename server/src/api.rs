//! The v1 API (API.md): one axum `Router` served over HTTP/1.1, HTTP/2 and HTTP/3. Engine calls that
//! touch RocksDB run on the blocking pool; appends go through the engine's writer channel and are
//! answered from its reply, so no async worker ever waits on disk.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use trackstore_engine::event::{BodyFormat, check_id, parse_request};
use trackstore_engine::{
    Direction, Engine, InMemory, LogEntry, Lsn, OrderState, Outcome, Page, Status, StoredEvent,
    TimeRange, Timestamp,
};

use crate::config::Limits;
use crate::hub::{Filter, Hub, STEP_EVENTS};
use crate::metrics::{Metrics, ReasonLabels, RequestLabels, RouteLabels};
use crate::problem::Problem;

/// Bodies larger than this are parsed on the blocking pool, not on an async worker.
const PARSE_INLINE_BYTES_MAX: usize = 64 * 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(15);
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Everything the handlers share.
#[derive(Debug)]
pub struct App {
    pub engine: Arc<Engine>,
    pub replication: Arc<crate::replication::Replication>,
    pub hub: Arc<Hub>,
    pub maintenance: Arc<crate::maintenance::Maintenance>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub inflight: Arc<Semaphore>,
    /// Bytes of ingest bodies being read or parsed, in KiB (`max_inflight_body_bytes`).
    pub body_budget: Arc<Semaphore>,
    pub shutdown: watch::Receiver<bool>,
    pub shutting_down: AtomicBool,
    /// The UDP port serving HTTP/3, advertised with `Alt-Svc`.
    pub h3_port: Option<u16>,
}

type AppState = Arc<App>;

/// Every route of `router`, as (method, path template): the OpenAPI document must list exactly these
/// (checked by `tests/openapi_routes.rs`, which also sends each one through the router).
pub const ROUTES: [(&str, &str); 16] = [
    ("POST", "/v1/events"),
    ("GET", "/v1/events"),
    ("GET", "/v1/orders"),
    ("GET", "/v1/orders/{order_id}"),
    ("DELETE", "/v1/orders/{order_id}"),
    ("GET", "/v1/orders/{order_id}/events"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/stream"),
    ("GET", "/v1/admin/replication"),
    ("POST", "/v1/admin/promote"),
    ("GET", "/v1/admin/erasures/{lsn}"),
    ("POST", "/v1/admin/purge"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// The router with authentication off and no audit log (tests that build a router without a data
/// directory); the server uses [`router_with_auth`].
pub fn router(app: AppState) -> Router {
    let auth = Arc::new(crate::auth::Auth::off(app.metrics.clone()));
    router_with_auth(app, auth)
}

/// The router behind the access-token check. The check runs inside `guard`, so refusals are bounded,
/// timed and counted like every other answer.
pub fn router_with_auth(app: AppState, auth: Arc<crate::auth::Auth>) -> Router {
    Router::new()
        .route("/v1/events", get(time_range).post(ingest))
        .route("/v1/orders", get(orders_in_status))
        .route(
            "/v1/orders/{order_id}",
            get(order_state).delete(erase_order),
        )
        .route("/v1/orders/{order_id}/events", get(timeline))
        .route("/v1/stats", get(stats))
        .route("/v1/stream", get(stream))
        .route("/v1/admin/replication", get(replication))
        .route("/v1/admin/promote", post(promote))
        .route("/v1/admin/erasures/{lsn}", get(erasure_record))
        .route("/v1/admin/purge", post(purge))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(auth, crate::auth::authorize))
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// The route label of a request path: the route template, or `unmatched`. Keeps label cardinality
/// bounded whatever clients send.
pub fn route_of(path: &str) -> &'static str {
    match path {
        "/v1/events" => "/v1/events",
        "/v1/orders" => "/v1/orders",
        "/v1/stats" => "/v1/stats",
        "/v1/stream" => "/v1/stream",
        "/v1/admin/replication" => "/v1/admin/replication",
        "/v1/admin/promote" => "/v1/admin/promote",
        "/v1/admin/purge" => "/v1/admin/purge",
        "/v1/openapi.json" => "/v1/openapi.json",
        "/healthz" => "/healthz",
        "/readyz" => "/readyz",
        "/metrics" => "/metrics",
        p if p
            .strip_prefix("/v1/admin/erasures/")
            .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')) =>
        {
            "/v1/admin/erasures/{lsn}"
        }
        p => match p.strip_prefix("/v1/orders/") {
            Some(rest) if !rest.is_empty() && !rest.contains('/') => "/v1/orders/{order_id}",
            Some(rest) if rest.ends_with("/events") && rest.matches('/').count() == 1 => {
                "/v1/orders/{order_id}/events"
            }
            _ => "unmatched",
        },
    }
}

/// The method label of a request: the methods of HTTP/1.1's registry by name, any other `other`
/// (the `http` crate accepts extension methods of any length).
pub fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

pub fn protocol_of(v: Version) -> &'static str {
    match v {
        Version::HTTP_3 => "h3",
        Version::HTTP_2 => "h2",
        Version::HTTP_10 => "http/1.0",
        _ => "http/1.1",
    }
}

/// Every request passes here: the in-flight bound (probes exempt), the request timeout (to the
/// response head), metrics, and `Alt-Svc`.
async fn guard(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(req.uri().path());
    let method = method_label(req.method());
    let protocol = protocol_of(req.version());
    let probe = matches!(route, "/healthz" | "/readyz" | "/metrics");
    let permit = if probe {
        None
    } else {
        match app.inflight.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                app.metrics
                    .overload_rejections
                    .get_or_create(&ReasonLabels {
                        reason: "inflight_requests",
                    })
                    .inc();
                let limit = app.limits.max_inflight_requests;
                return finish(
                    &app,
                    started,
                    route,
                    method,
                    protocol,
                    Problem::overloaded(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("{limit} requests are in flight; retry later"),
                    )
                    .into_response(),
                );
            }
        }
    };
    // A purge rewrites the whole store and may take minutes: it is single-flight and admin-only, so
    // it is exempt from the request timeout rather than cut off while it keeps running. An erasure
    // is exempt too: once queued it commits, and its answer carries the only receipt.
    let timeout =
        if route == "/v1/admin/purge" || (route == "/v1/orders/{order_id}" && method == "DELETE") {
            Duration::MAX
        } else {
            app.limits.request_timeout
        };
    let resp = match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => {
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
                format!(
                    "no answer within {} ms; a write may or may not have been stored: retry it \
                     with the same event ids (idempotent)",
                    app.limits.request_timeout.as_millis()
                ),
            );
            p.retry_after_secs = Some(1);
            p.into_response()
        }
    };
    // A large body keeps the permit until the connection has taken its last piece: a page can be
    // megabytes and a client that reads it slowly must not have it counted as done. But at most
    // for the request timeout: HTTP/2 and HTTP/3 flow control can stall a stream without any TCP
    // write waiting (so no write-stall bound would see it). A small body (the usual answer) is
    // handed over at once and releases it now. A live stream is bounded by the subscriber limit.
    let small = http_body::Body::size_hint(resp.body())
        .upper()
        .is_some_and(|n| n <= BODY_PIECE_BYTES as u64);
    let resp = match permit {
        Some(permit) if !small && route != "/v1/stream" => {
            let slot = Arc::new(std::sync::Mutex::new(Some(permit)));
            let expiry = {
                let slot = slot.clone();
                let after = app.limits.request_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    drop(slot.lock().map(|mut p| p.take()));
                })
                .abort_handle()
            };
            resp.map(|body| {
                Body::new(HoldPermit {
                    body,
                    rest: Bytes::new(),
                    slot,
                    expiry,
                })
            })
        }
        _ => resp,
    };
    finish(&app, started, route, method, protocol, resp)
}

/// The largest piece of a response body handed to hyper at once. hyper (HTTP/1 and HTTP/2) takes
/// the next piece only when it has room to send, so what a slow client leaves buffered outside the
/// in-flight bound is about one piece per stream, not a whole page.
const BODY_PIECE_BYTES: usize = 64 * 1024;

/// A response body that holds an in-flight permit until hyper has taken all of it (or a timer
/// released it), handing it over in pieces of at most [`BODY_PIECE_BYTES`] (slices of the same
/// buffer: nothing is copied).
struct HoldPermit {
    body: Body,
    /// What is left of the last data frame of `body`.
    rest: Bytes,
    slot: Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>,
    /// The task that releases the permit at the request timeout.
    expiry: tokio::task::AbortHandle,
}

impl Drop for HoldPermit {
    fn drop(&mut self) {
        if let Ok(mut p) = self.slot.lock() {
            p.take();
        }
        self.expiry.abort();
    }
}

impl HoldPermit {
    fn piece(&mut self) -> http_body::Frame<Bytes> {
        let n = self.rest.len().min(BODY_PIECE_BYTES);
        http_body::Frame::data(self.rest.split_to(n))
    }
}

impl http_body::Body for HoldPermit {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::task::Poll;
        let this = &mut *self;
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(this.piece())));
        }
        match std::pin::Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.len() > BODY_PIECE_BYTES => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(this.piece())))
                }
                Ok(data) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower() + rest);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

fn finish(
    app: &App,
    started: Instant,
    route: &'static str,
    method: &'static str,
    protocol: &'static str,
    mut resp: Response,
) -> Response {
    let m = &app.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: resp.status().as_u16(),
            protocol,
        })
        .inc();
    m.request_seconds
        .get_or_create(&RouteLabels { route, protocol })
        .observe(started.elapsed().as_secs_f64());
    if let (Some(port), false) = (app.h3_port, protocol == "h3")
        && let Ok(v) = HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400"))
    {
        resp.headers_mut().insert(header::ALT_SVC, v);
    }
    // A replica says how stale its answers may be.
    if let Some((lsn, secs)) = app.replication.lag() {
        let h = resp.headers_mut();
        h.insert("trackstore-replica-lag-lsn", HeaderValue::from(lsn));
        if let Ok(v) = HeaderValue::from_str(&format!("{secs:.3}")) {
            h.insert("trackstore-replica-lag-seconds", v);
        }
    }
    resp
}

async fn not_found(req: Request) -> Problem {
    Problem::not_found(format!(
        "no route for {} {}",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

fn count_read_from_disk(app: &App, query: &'static str) {
    app.metrics
        .reads_from_disk
        .get_or_create(&crate::metrics::QueryLabels { query })
        .inc();
}

/// Runs a blocking engine call on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Problem::internal(format!("worker failed: {e}")))?
}

// ---- query parameters ----------------------------------------------------------------------

/// Query parameters, checked strictly: unknown or repeated parameters are errors, so a typo
/// (`stauts=`) never silently widens a query.
struct Params(Vec<(String, String)>);

impl Params {
    fn from(
        q: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
    ) -> Result<Params, Problem> {
        match q {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-request",
                "Bad request",
                format!("the query string does not parse: {e}"),
            )),
        }
    }

    fn take(&mut self, name: &str) -> Result<Option<String>, Problem> {
        let mut found = None;
        let mut i = 0;
        while i < self.0.len() {
            if self.0[i].0 == name {
                let (_, v) = self.0.remove(i);
                if found.is_some() {
                    return Err(Problem::invalid_parameter(name, "given more than once"));
                }
                found = Some(v);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    fn finish(self) -> Result<(), Problem> {
        match self.0.first() {
            Some((name, _)) => Err(Problem::invalid_parameter(name, "unknown parameter")),
            None => Ok(()),
        }
    }

    fn limit(&mut self, default: usize) -> Result<usize, Problem> {
        match self.take("limit")? {
            None => Ok(default),
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=trackstore_engine::limits::PAGE_LIMIT_MAX).contains(&n) => Ok(n),
                _ => Err(Problem::invalid_parameter(
                    "limit",
                    format!(
                        "must be an integer from 1 to {}",
                        trackstore_engine::limits::PAGE_LIMIT_MAX
                    ),
                )),
            },
        }
    }

    fn time(&mut self, name: &str) -> Result<Option<Timestamp>, Problem> {
        self.take(name)?
            .map(|s| Timestamp::parse(&s).map_err(|e| Problem::invalid_parameter(name, e)))
            .transpose()
    }

    fn statuses(&mut self) -> Result<Vec<Status>, Problem> {
        let Some(s) = self.take("status")? else {
            return Ok(Vec::new());
        };
        s.split(',')
            .map(|one| {
                Status::parse(one).ok_or_else(|| {
                    Problem::invalid_parameter("status", format!("unknown status {one:?}"))
                })
            })
            .collect()
    }

    fn carrier(&mut self) -> Result<Option<String>, Problem> {
        let c = self.take("carrier")?;
        if let Some(c) = &c
            && (c.is_empty() || c.chars().count() > trackstore_engine::limits::LABEL_CHARS_MAX)
        {
            return Err(Problem::invalid_parameter(
                "carrier",
                format!(
                    "must be 1 to {} characters",
                    trackstore_engine::limits::LABEL_CHARS_MAX
                ),
            ));
        }
        Ok(c)
    }

    fn cursor(&mut self) -> Result<Option<String>, Problem> {
        self.take("cursor")
    }
}

/// A path segment as a string; one axum cannot decode (invalid percent-encoding or UTF-8) is a
/// problem+json 400 naming the parameter, like every other error.
fn path_param(p: Result<Path<String>, PathRejection>, name: &str) -> Result<String, Problem> {
    match p {
        Ok(Path(v)) => Ok(v),
        Err(e) => Err(Problem::invalid_parameter(name, e.body_text())),
    }
}

type RawQuery = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

fn order_id_param(order_id: &str) -> Result<(), Problem> {
    check_id(order_id, "order_id").map_err(|e| Problem::invalid_parameter("order_id", e.message))
}

/// A page of events (`GET /v1/orders/{id}/events`, `GET /v1/events`), serialised straight from the
/// engine's types; fields in byte order, as a `serde_json::Map` would order them.
#[derive(serde::Serialize)]
struct EventsPage<'a> {
    events: &'a [StoredEvent],
    next_cursor: Option<&'a str>,
}

/// A page of orders (`GET /v1/orders?status=`), like [`EventsPage`].
#[derive(serde::Serialize)]
struct OrdersPage<'a> {
    next_cursor: Option<&'a str>,
    orders: &'a [OrderState],
}

fn events_page(page: &Page<StoredEvent>) -> Response {
    axum::Json(EventsPage {
        events: &page.items,
        next_cursor: page.next_cursor.as_deref(),
    })
    .into_response()
}

// ---- ingest ----------------------------------------------------------------------------------

fn body_format(headers: &HeaderMap) -> Result<BodyFormat, Problem> {
    // No Content-Type is refused too: guessing would accept form posts and the like as JSON.
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported content type",
            "the request has no Content-Type: send application/json (an event or an array of \
             events) or application/x-ndjson",
        ));
    };
    let ct = ct.to_str().unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" => Ok(BodyFormat::Ndjson),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported content type",
            format!(
                "Content-Type {ct:?} is not accepted: send application/json (an event or an \
                 array of events) or application/x-ndjson"
            ),
        )),
    }
}

fn too_large(limit: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Request body too large",
        format!("the body is over the limit of {limit} bytes"),
    )
}

/// Reserves `bytes` (rounded up to KiB) of the ingest body budget shared by all requests.
fn reserve_body_bytes(
    app: &App,
    bytes: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
    let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    app.body_budget
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| {
            app.metrics
                .overload_rejections
                .get_or_create(&ReasonLabels {
                    reason: "inflight_body_bytes",
                })
                .inc();
            Problem::overloaded(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{} bytes of request bodies are being read; retry later",
                    app.limits.max_inflight_body_bytes
                ),
            )
        })
}

/// How much more of the budget a body without `Content-Length` takes each time it outgrows what it
/// holds.
const BODY_RESERVE_STEP: usize = 64 * 1024;

/// Reads an ingest body within the shared budget: its `Content-Length` is reserved before it is
/// read, a body without one reserves as it arrives. The permit is held until the request ends,
/// since the parsed events live as long.
async fn read_ingest_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, tokio::sync::OwnedSemaphorePermit), Problem> {
    let limit = app.limits.max_body_bytes;
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut reserved = declared.map_or(BODY_RESERVE_STEP.min(limit), |n| n as usize);
    let mut permit = reserve_body_bytes(app, reserved)?;
    let bytes = read_limited(declared, body, limit, |total| {
        if total > reserved {
            let more = (total - reserved)
                .max(BODY_RESERVE_STEP)
                .min(limit - reserved);
            permit.merge(reserve_body_bytes(app, more)?);
            reserved += more;
        }
        Ok(())
    })
    .await?;
    Ok((bytes, permit))
}

/// The KiB permits of `body_budget` for `max_inflight_body_bytes`.
pub fn body_budget_permits(max_inflight_body_bytes: usize) -> usize {
    max_inflight_body_bytes.div_ceil(1024)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Reads a body up to `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Problem> {
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    read_limited(declared, body, limit, |_| Ok(())).await
}

/// Reads a body of at most `limit` bytes, and of at most its `declared` length (whatever the
/// protocol enforces: h3 does not), telling `grow` the bytes read so far after each chunk.
async fn read_limited(
    declared: Option<u64>,
    mut body: Body,
    limit: usize,
    mut grow: impl FnMut(usize) -> Result<(), Problem>,
) -> Result<Bytes, Problem> {
    let bad = |detail: String| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    };
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| bad(format!("the request body could not be read: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(too_large(limit));
        }
        if let Some(n) = declared
            && total as u64 > n
        {
            return Err(bad(format!(
                "the body is longer than its Content-Length of {n} bytes"
            )));
        }
        grow(total)?;
        chunks.push(data);
    }
    Ok(match chunks.len() {
        1 => chunks.pop().unwrap_or_default(),
        _ => chunks.concat().into(),
    })
}

/// A replica refuses changes, naming the primary to send them to.
fn refuse_on_replica(app: &App, what: &str) -> Result<(), Problem> {
    match app.replication.primary() {
        Some(primary) => Err(Problem::read_only_replica(
            format!("this node is a read-only replica; send {what} to the primary at {primary}"),
            Some(primary),
        )),
        None => Ok(()),
    }
}

async fn ingest(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    refuse_on_replica(&app, "writes")?;
    let format = body_format(&headers)?;
    let (bytes, _budget) = read_ingest_body(&app, &headers, body).await?;
    let now = Timestamp::now();
    let max = app.limits.max_events_per_request;
    // Parsing, and the engine's check of every event in `submit_append`, take time in proportion to
    // the body: a large one is handled on the blocking pool.
    let (ids, rx) = if bytes.len() > PARSE_INLINE_BYTES_MAX {
        let engine = app.engine.clone();
        blocking(move || parse_and_submit(&engine, &bytes, format, now, max)).await?
    } else {
        parse_and_submit(&app.engine, &bytes, format, now, max)?
    };
    let outcomes = rx
        .await
        .map_err(|_| Problem::from(trackstore_engine::Error::Closed))??;
    let mut created = 0u64;
    let results: Vec<IngestResult> = ids
        .iter()
        .zip(&outcomes)
        .map(|(id, o)| {
            let outcome = match o {
                Outcome::Created(_) => {
                    created += 1;
                    "created"
                }
                Outcome::Duplicate(_) => "duplicate",
            };
            IngestResult {
                event_id: id,
                lsn: o.lsn().0,
                outcome,
            }
        })
        .collect();
    let m = &app.metrics.ingest_events;
    m.get_or_create(&crate::metrics::OutcomeLabels { outcome: "created" })
        .inc_by(created);
    m.get_or_create(&crate::metrics::OutcomeLabels {
        outcome: "duplicate",
    })
    .inc_by(outcomes.len() as u64 - created);
    Ok(axum::Json(IngestResponse { results }).into_response())
}

type AppendReply = oneshot::Receiver<trackstore_engine::Result<Vec<Outcome>>>;

/// Parses an ingest body and queues its events on the engine's writer: the events' ids, in order,
/// and where the outcome will arrive.
fn parse_and_submit(
    engine: &Engine,
    bytes: &[u8],
    format: BodyFormat,
    now: Timestamp,
    max: usize,
) -> Result<(Vec<String>, AppendReply), Problem> {
    let events = parse_request(bytes, format, now)?;
    if events.len() > max {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-events",
            "Too many events in one request",
            format!(
                "the request holds {} events; at most {max} are accepted",
                events.len()
            ),
        ));
    }
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let (tx, rx) = oneshot::channel();
    engine.submit_append(events, move |r| {
        let _ = tx.send(r);
    })?;
    Ok((ids, rx))
}

/// The answer to `POST /v1/events`, serialised without building a `Value` per event.
#[derive(serde::Serialize)]
struct IngestResponse<'a> {
    results: Vec<IngestResult<'a>>,
}

#[derive(serde::Serialize)]
struct IngestResult<'a> {
    event_id: &'a str,
    lsn: u64,
    outcome: &'static str,
}

// ---- reads -----------------------------------------------------------------------------------

async fn order_state(
    State(app): State<AppState>,
    order_id: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, Problem> {
    Params::from(q)?.finish()?;
    let order_id = path_param(order_id, "order_id")?;
    order_id_param(&order_id)?;
    // Answered on this thread when memory holds it (the common case: a few microseconds), on the
    // blocking pool only when it waits for the disk.
    let state = match app.engine.order_state_in_memory(&order_id)? {
        InMemory::Answered(state) => state,
        InMemory::NeedsDisk => {
            count_read_from_disk(&app, "order_state");
            let engine = app.engine.clone();
            let id = order_id.clone();
            blocking(move || engine.order_state(&id).map_err(Problem::from)).await?
        }
    };
    match state {
        Some(s) => Ok(axum::Json(s).into_response()),
        None => Err(Problem::not_found(format!("no order {order_id:?}"))),
    }
}

async fn timeline(
    State(app): State<AppState>,
    order_id: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, Problem> {
    let mut p = Params::from(q)?;
    let limit = p.limit(100)?;
    let cursor = p.cursor()?;
    let direction = match p.take("order")?.as_deref() {
        None | Some("asc") => Direction::Asc,
        Some("desc") => Direction::Desc,
        Some(_) => return Err(Problem::invalid_parameter("order", "must be asc or desc")),
    };
    p.finish()?;
    let order_id = path_param(order_id, "order_id")?;
    order_id_param(&order_id)?;
    let cursor = cursor.as_deref();
    let page = match app
        .engine
        .order_timeline_in_memory(&order_id, direction, limit, cursor)?
    {
        InMemory::Answered(page) => page,
        InMemory::NeedsDisk => {
            count_read_from_disk(&app, "timeline");
            let engine = app.engine.clone();
            let cursor = cursor.map(str::to_owned);
            let id = order_id.clone();
            blocking(move || {
                engine
                    .order_timeline(&id, direction, limit, cursor.as_deref())
                    .map_err(Problem::from)
            })
            .await?
        }
    };
    // An empty first page: the order is unknown (404, as for its state) or has nothing left to show.
    if page.items.is_empty() && page.next_cursor.is_none() && cursor.is_none() {
        let known = match app.engine.order_state_in_memory(&order_id)? {
            InMemory::Answered(state) => state.is_some(),
            InMemory::NeedsDisk => {
                let engine = app.engine.clone();
                let id = order_id.clone();
                blocking(move || engine.order_state(&id).map_err(Problem::from))
                    .await?
                    .is_some()
            }
        };
        if !known {
            return Err(Problem::not_found(format!("no order {order_id:?}")));
        }
    }
    Ok(events_page(&page))
}

async fn orders_in_status(State(app): State<AppState>, q: RawQuery) -> Result<Response, Problem> {
    let mut p = Params::from(q)?;
    let status = match p.take("status")? {
        None => return Err(Problem::invalid_parameter("status", "is required")),
        Some(s) => Status::parse(&s)
            .ok_or_else(|| Problem::invalid_parameter("status", format!("unknown status {s:?}")))?,
    };
    let carrier = p.carrier()?;
    let limit = p.limit(100)?;
    let cursor = p.cursor()?;
    p.finish()?;
    let engine = app.engine.clone();
    let page = blocking(move || {
        engine
            .orders_in_status(status, carrier.as_deref(), limit, cursor.as_deref())
            .map_err(Problem::from)
    })
    .await?;
    Ok(axum::Json(OrdersPage {
        next_cursor: page.next_cursor.as_deref(),
        orders: &page.items,
    })
    .into_response())
}

async fn time_range(State(app): State<AppState>, q: RawQuery) -> Result<Response, Problem> {
    let mut p = Params::from(q)?;
    let from = p
        .time("from")?
        .ok_or_else(|| Problem::invalid_parameter("from", "is required"))?;
    let to = p
        .time("to")?
        .ok_or_else(|| Problem::invalid_parameter("to", "is required"))?;
    if from > to {
        return Err(Problem::invalid_parameter("from", "is after `to`"));
    }
    let statuses = p.statuses()?;
    let carrier = p.carrier()?;
    let limit = p.limit(1000)?;
    let cursor = p.cursor()?;
    p.finish()?;
    let range = TimeRange {
        from,
        to,
        statuses,
        carrier,
    };
    let engine = app.engine.clone();
    let page = blocking(move || {
        engine
            .time_range(&range, limit, cursor.as_deref())
            .map_err(Problem::from)
    })
    .await?;
    Ok(events_page(&page))
}

async fn stats(State(app): State<AppState>, q: RawQuery) -> Result<Response, Problem> {
    Params::from(q)?.finish()?;
    Ok(axum::Json(app.engine.stats().to_json()).into_response())
}

// ---- live stream -----------------------------------------------------------------------------

async fn stream(
    State(app): State<AppState>,
    headers: HeaderMap,
    q: RawQuery,
) -> Result<Response, Problem> {
    let mut p = Params::from(q)?;
    let order_id = p.take("order_id")?;
    if let Some(o) = &order_id {
        order_id_param(o)?;
    }
    let filter = Filter {
        order_id,
        statuses: p.statuses()?,
        carrier: p.carrier()?,
    };
    let from_lsn = match p.take("from_lsn")? {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            Problem::invalid_parameter("from_lsn", "must be a non-negative integer")
        })?),
    };
    p.finish()?;
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    Problem::invalid_parameter("Last-Event-ID", "must be an LSN (an integer)")
                })?,
        ),
    };
    // The browser's reconnect carries the original URL and the last id it saw: the id wins.
    let start = match (last_event_id, from_lsn) {
        (Some(id), _) => id.saturating_add(1),
        (None, Some(from)) => from.max(1),
        (None, None) => app.hub.head() + 1,
    };
    let Some(guard) = app.hub.subscribe(app.limits.max_subscribers) else {
        app.metrics
            .overload_rejections
            .get_or_create(&ReasonLabels {
                reason: "subscribers",
            })
            .inc();
        return Err(Problem::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{} subscribers are connected; retry later",
                app.limits.max_subscribers
            ),
        ));
    };
    // One slot more than the buffer, kept for the final `error` event: a subscriber cut off because
    // it stopped reading gets it after what is queued, whenever it reads again.
    let (tx, rx) = mpsc::channel(app.limits.stream_buffer_events + 1);
    let Ok(last) = tx.clone().try_reserve_owned() else {
        return Err(Problem::internal("a new stream's queue is full"));
    };
    app.metrics.subscribers.inc();
    tokio::spawn(subscriber(app.clone(), filter, start, tx, last, guard));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

type SseItem = Result<SseEvent, Infallible>;

const SHUTDOWN_DETAIL: &str = "the server is shutting down; reconnect with Last-Event-ID to resume";

/// One subscriber: a position in the log, advanced through the ring or the log, sent in LSN order.
async fn subscriber(
    app: AppState,
    filter: Filter,
    mut next: u64,
    tx: mpsc::Sender<SseItem>,
    last: mpsc::OwnedPermit<SseItem>,
    guard: crate::hub::SubscriberGuard,
) {
    let reason = follow(&app, &filter, &mut next, &tx).await;
    if let Some((reason, detail)) = reason {
        app.metrics
            .subscriber_disconnects
            .get_or_create(&ReasonLabels { reason })
            .inc();
        let data = json!({"reason": reason, "detail": detail, "next_lsn": next}).to_string();
        last.send(Ok(SseEvent::default().event("error").data(data)));
    }
    app.metrics.subscribers.dec();
    drop(guard);
}

/// The longest a subscriber may leave its queue full (read nothing) before it is disconnected.
const STREAM_STALL_MAX: Duration = Duration::from_secs(60);

fn fell_behind(head: u64, next: u64, max_lag: u64) -> (&'static str, String) {
    (
        "too_slow",
        format!(
            "the subscriber fell {} events behind the head of the log (limit {max_lag}); \
             reconnect with Last-Event-ID to resume",
            head - next + 1
        ),
    )
}

/// Follows the log until the client leaves (`None`) or the server ends the stream (a reason).
async fn follow(
    app: &App,
    filter: &Filter,
    next: &mut u64,
    tx: &mpsc::Sender<SseItem>,
) -> Option<(&'static str, String)> {
    let mut head_rx = app.hub.watch_head();
    let mut shutdown = app.shutdown.clone();
    let max_lag = app.limits.stream_max_lag_events;
    let mut caught_up = false;
    loop {
        if *shutdown.borrow() {
            return Some(("shutdown", SHUTDOWN_DETAIL.into()));
        }
        // A replay whose filter matches nothing sends nothing, so only this notices a client gone.
        if tx.is_closed() {
            return None;
        }
        let head = *head_rx.borrow_and_update();
        if *next > head {
            caught_up = true;
            tokio::select! {
                r = head_rx.changed() => if r.is_err() { return None },
                _ = shutdown.changed() => {}
                _ = tx.closed() => return None,
            }
            continue;
        }
        // Only a subscriber that was live and fell behind is too slow; a replay from an old LSN
        // reads the log at its own pace with bounded memory.
        if caught_up && head - *next >= max_lag {
            return Some(fell_behind(head, *next, max_lag));
        }
        // The events to send, and the last LSN the read covered (tombstones and removals in the log
        // have nothing to send but are passed over).
        let (batch, scanned_to) = match app.hub.from_ring(*next, STEP_EVENTS) {
            Some(b) => {
                let last = b.last().map(|e| e.lsn.0);
                (b, last)
            }
            None => {
                let engine = app.engine.clone();
                let from = *next;
                let read =
                    tokio::task::spawn_blocking(move || engine.read_log(Lsn(from), STEP_EVENTS))
                        .await;
                match read {
                    Ok(Ok(entries)) => {
                        let last = entries.last().map(|e| e.lsn().0);
                        let events = entries
                            .into_iter()
                            .filter_map(LogEntry::into_event)
                            .map(Arc::new)
                            .collect();
                        (events, last)
                    }
                    Ok(Err(e)) => return Some(("storage_failure", e.to_string())),
                    Err(e) => return Some(("internal", e.to_string())),
                }
            }
        };
        let Some(scanned_to) = scanned_to else {
            // Nothing stored from `next` to the head: skip to the head.
            *next = head + 1;
            continue;
        };
        for e in batch {
            if filter.matches(&e) {
                let item = SseEvent::default()
                    .id(e.lsn.0.to_string())
                    .event("delivery")
                    .data(serde_json::to_string(&*e).unwrap_or_default());
                let permit = match tx.try_reserve() {
                    Ok(p) => p,
                    Err(mpsc::error::TrySendError::Closed(())) => return None,
                    Err(mpsc::error::TrySendError::Full(())) => {
                        // The client is not reading: wait, but not past the lag limit (the head
                        // moves on meanwhile) nor past the stall limit (it may have stopped for good).
                        let stalled = tokio::time::sleep(STREAM_STALL_MAX);
                        tokio::pin!(stalled);
                        loop {
                            tokio::select! {
                                p = tx.reserve() => match p {
                                    Ok(p) => break p,
                                    Err(_) => return None,
                                },
                                r = head_rx.changed() => {
                                    if r.is_err() {
                                        return None;
                                    }
                                    let head = *head_rx.borrow_and_update();
                                    if caught_up && head.saturating_sub(*next) >= max_lag {
                                        return Some(fell_behind(head, *next, max_lag));
                                    }
                                }
                                _ = &mut stalled => return Some((
                                    "too_slow",
                                    format!(
                                        "the subscriber read nothing for {} s; reconnect with \
                                         Last-Event-ID to resume",
                                        STREAM_STALL_MAX.as_secs()
                                    ),
                                )),
                                _ = shutdown.changed() => {
                                    return Some(("shutdown", SHUTDOWN_DETAIL.into()));
                                }
                            }
                        }
                    }
                };
                permit.send(Ok(item));
            }
            // Advanced only once delivered, so that `next_lsn` in a final error is exact.
            *next = e.lsn.0 + 1;
        }
        *next = (*next).max(scanned_to + 1);
    }
}

// ---- operations ------------------------------------------------------------------------------

async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<AppState>) -> Response {
    let primary = matches!(app.replication.role(), crate::replication::Role::Primary);
    let not_ready = if app.shutting_down.load(Ordering::Acquire) {
        Some("the server is shutting down".to_owned())
    } else if let Some(r) = app.engine.poisoned() {
        Some(format!("the engine refuses writes: {r}"))
    } else if primary {
        // A primary's role is taking writes: one that refuses them (it learned of a newer epoch,
        // or it is stopped for a switchover) must leave a write service's endpoints.
        app.engine
            .read_only_reason()
            .map(|r| format!("this primary refuses writes: {r}"))
    } else {
        None
    };
    match not_ready {
        None => {
            let role = if primary { "primary" } else { "replica" };
            axum::Json(json!({"status": "ready", "role": role})).into_response()
        }
        Some(detail) => {
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not-ready",
                "Not ready",
                detail,
            );
            p.retry_after_secs = Some(5);
            p.into_response()
        }
    }
}

async fn metrics(State(app): State<AppState>) -> Result<Response, Problem> {
    let a = app.clone();
    let text = blocking(move || {
        a.metrics.observe_replication(&a.replication, &a.engine);
        Ok(a.metrics.render(&a.engine))
    })
    .await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn replication(State(app): State<AppState>) -> Response {
    axum::Json(app.replication.status_json()).into_response()
}

/// `POST /v1/admin/promote`, body `{"planned": bool}` (optional; default false).
async fn promote(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let bytes = read_body(&headers, body, 4096).await?;
    let planned = if bytes.iter().all(u8::is_ascii_whitespace) {
        false
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct PromoteBody {
            #[serde(default)]
            planned: bool,
        }
        serde_json::from_slice::<PromoteBody>(&bytes)
            .map_err(|e| {
                Problem::new(
                    StatusCode::BAD_REQUEST,
                    "malformed-json",
                    "Malformed JSON",
                    format!("the promote body is {{\"planned\": true|false}}: {e}"),
                )
            })?
            .planned
    };
    match app.replication.promote(planned).await {
        Ok(status) => Ok(axum::Json(status).into_response()),
        Err(e @ crate::replication::PromoteError::AlreadyPrimary) => Err(Problem::new(
            StatusCode::CONFLICT,
            "already-primary",
            "This node is already the primary",
            e.to_string(),
        )),
        Err(e) => Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "promotion-failed",
            "Promotion failed",
            e.to_string(),
        )),
    }
}

// ---- data protection -------------------------------------------------------------------------

/// The response header naming the LSN of an erasure; the audit log records it (not the order id).
pub const ERASURE_LSN_HEADER: &str = "trackstore-erasure-lsn";

async fn erase_order(
    State(app): State<AppState>,
    order_id: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, Problem> {
    Params::from(q)?.finish()?;
    refuse_on_replica(&app, "erasures")?;
    let order_id = path_param(order_id, "order_id")?;
    order_id_param(&order_id)?;
    let engine = app.engine.clone();
    let id = order_id.clone();
    let receipt = blocking(move || engine.erase_order(&id).map_err(Problem::from)).await?;
    let Some(r) = receipt else {
        return Err(Problem::not_found(format!(
            "no order {order_id:?}: nothing to erase (already erased, or never stored)"
        )));
    };
    app.metrics.erasures.inc();
    app.metrics.erased_events.inc_by(r.events);
    let mut resp = axum::Json(json!({
        "order_id": r.order_id,
        "lsn": r.lsn.0,
        "erased_at": r.erased_at.to_string(),
        "events": r.events,
    }))
    .into_response();
    resp.headers_mut()
        .insert(ERASURE_LSN_HEADER, HeaderValue::from(r.lsn.0));
    Ok(resp)
}

/// `GET /v1/admin/erasures/{lsn}[?order_id=...]`: the record of an erasure, and whether it was of the
/// given order (an auditor checking a receipt).
async fn erasure_record(
    State(app): State<AppState>,
    lsn: Result<Path<String>, PathRejection>,
    q: RawQuery,
) -> Result<Response, Problem> {
    let mut p = Params::from(q)?;
    let order_id = p.take("order_id")?;
    p.finish()?;
    let lsn: u64 = path_param(lsn, "lsn")?
        .parse()
        .map_err(|_| Problem::invalid_parameter("lsn", "must be a log sequence number"))?;
    if let Some(id) = &order_id {
        order_id_param(id)?;
    }
    let engine = app.engine.clone();
    let record = blocking(move || engine.erasure_record(Lsn(lsn)).map_err(Problem::from)).await?;
    let Some(record) = record else {
        return Err(Problem::not_found(format!("no erasure at LSN {lsn}")));
    };
    let mut body = json!({
        "lsn": record.lsn.0,
        "erased_at": record.erased_at.to_string(),
        "events": record.events,
    });
    if let Some(id) = order_id {
        body["order_id_matches"] = json!(record.is_of(&id));
    }
    Ok(axum::Json(body).into_response())
}

async fn purge(State(app): State<AppState>, q: RawQuery) -> Result<Response, Problem> {
    Params::from(q)?.finish()?;
    match app.maintenance.purge().await {
        Ok(took) => {
            Ok(axum::Json(json!({"purged": true, "seconds": took.as_secs_f64()})).into_response())
        }
        Err(e @ crate::maintenance::PurgeError::Running) => Err(Problem::new(
            StatusCode::CONFLICT,
            "purge-running",
            "A purge is already running",
            e.to_string(),
        )),
        Err(e) => Err(Problem::internal(e.to_string())),
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_labels_are_bounded() {
        assert_eq!(route_of("/v1/orders/o-1"), "/v1/orders/{order_id}");
        assert_eq!(
            route_of("/v1/orders/o-1/events"),
            "/v1/orders/{order_id}/events"
        );
        assert_eq!(route_of("/v1/orders/o-1/x/events"), "unmatched");
        assert_eq!(route_of("/v1/orders/"), "unmatched");
        assert_eq!(route_of("/random/path"), "unmatched");
        assert_eq!(route_of("/v1/events"), "/v1/events");
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert_eq!(body_format(&h).unwrap_err().slug, "unsupported-media-type");
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(body_format(&h).unwrap(), BodyFormat::Json);
        h.insert(
            header::CONTENT_TYPE,
            "application/x-ndjson".parse().unwrap(),
        );
        assert_eq!(body_format(&h).unwrap(), BodyFormat::Ndjson);
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            body_format(&h).unwrap_err().status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn params_reject_unknown_and_repeated() {
        let mut p = Params(vec![
            ("limit".into(), "5".into()),
            ("stauts".into(), "x".into()),
        ]);
        assert_eq!(p.limit(100).unwrap(), 5);
        let e = p.finish().unwrap_err();
        assert_eq!(e.slug, "invalid-parameter");
        assert!(e.detail.contains("stauts"));
        let mut p = Params(vec![
            ("limit".into(), "5".into()),
            ("limit".into(), "6".into()),
        ]);
        assert!(p.limit(100).is_err());
        let mut p = Params(vec![("limit".into(), "0".into())]);
        assert!(p.limit(100).is_err());
        let mut p = Params(vec![("status".into(), "delivered,returned".into())]);
        assert_eq!(
            p.statuses().unwrap(),
            vec![Status::Delivered, Status::Returned]
        );
        let mut p = Params(vec![("status".into(), "lost".into())]);
        assert!(p.statuses().is_err());
    }
}
