//! Running a load: connections (through `trackstore-client`), the lanes that send, the open-loop
//! dispatcher, the seed phase, the SSE subscribers, progress lines, and the result.
//!
//! A **lane** is one request in flight at a time: an HTTP/1.1 connection, or one of the `streams`
//! concurrent streams of an HTTP/2 or HTTP/3 connection. In a closed loop each lane takes the next
//! call from the shared generator as soon as its previous call finished. In an open loop a dispatcher
//! thread follows the [`Pacer`] schedule, draws the call and hands it, stamped with its intended
//! time, to the lanes round robin through a bounded queue per lane; the latency of a call is taken
//! from that intended time.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use trackstore_client::http::StatusCode;
use trackstore_client::{
    Client, ClientConfig, Connection, Error as ClientError, Proto, Request, StreamItem,
    StreamQuery, Trust,
};
use trackstore_engine::Timestamp;

use super::ryw::Tracker;
use super::sched::{Pacer, lane_for, latency_ns};
use super::stats::{Failure, Recorder, Records, latency_histogram};
use super::traffic::{GenCounts, Generator, Op, OpKind, TrafficConfig};

/// Recorder shards (lanes map onto them round robin).
const SHARDS: usize = 16;
/// Slots of the read-your-writes table (32 bytes each).
const RYW_SLOTS: usize = 1 << 18;
/// Events per request in the seed phase.
const SEED_BATCH_EVENTS: usize = 1_000;
/// How long subscribers may take, after the load, to deliver the last acknowledged event.
const SUBSCRIBER_DRAIN: Duration = Duration::from_secs(15);
/// How long the lanes may take to finish their queued calls after the schedule ended; past it the
/// calls still queued are abandoned (counted as errors) and only those in flight are awaited.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The open-loop dispatcher's shortest sleep. Sleeping until each call's own time woke the
/// dispatcher once per call, 20,000 times a second at 20k calls/s (and the runtime's threads as
/// often): the load generator's context switches took CPU the server under test needed. Woken at
/// most this often, it sends every call due by then; a call sent late is still charged from its
/// intended time. Below ~5,000 calls/s the calls are further apart than this and nothing changes.
const DISPATCH_TICK: Duration = Duration::from_micros(200);
/// Bounds of the run's shape.
pub const CONNECTIONS_MAX: usize = 4_000;
pub const STREAMS_MAX: usize = 100;
pub const QUEUE_MAX: usize = 1_000_000;
pub const SUBSCRIBERS_MAX: usize = 1_000;

/// Why a run could not be made or finished.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Traffic(#[from] super::traffic::ConfigError),
    #[error("connect to the server: {0}")]
    Connect(ClientError),
    #[error("seed phase: {0}")]
    Seed(String),
    #[error("subscribe to the live stream: {0}")]
    Subscribe(ClientError),
    #[error("a load task failed: {0}")]
    Task(String),
}

/// The named scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Single-event POSTs.
    Ingest,
    /// POSTs of `batch` events.
    IngestBatch,
    /// Seed orders, then read them (order state by default).
    Read,
    /// The delivery-day mix of writes and reads.
    Mixed,
    /// Ingest while SSE subscribers follow the live stream.
    Subscribe,
    /// 10M calls of the delivery-day mix as fast as the server allows.
    Day,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Ingest,
        Scenario::IngestBatch,
        Scenario::Read,
        Scenario::Mixed,
        Scenario::Subscribe,
        Scenario::Day,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ingest => "ingest",
            Scenario::IngestBatch => "ingest-batch",
            Scenario::Read => "read",
            Scenario::Mixed => "mixed",
            Scenario::Subscribe => "subscribe",
            Scenario::Day => "day",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {s:?}: use one of {}",
                    Scenario::ALL.map(Scenario::name).join(", ")
                )
            })
    }
}

/// Open or closed loop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Each lane sends its next call when the previous one is answered.
    Closed,
    /// Calls at `rate` per second on a fixed schedule; `queue` pending calls at most per lane.
    Open { rate: f64, queue: usize },
}

/// How progress is shown on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A line rewritten every second.
    Tty,
    /// A plain line every 10 seconds (logs, CI).
    Plain,
    Off,
}

impl Progress {
    /// `Tty` when stderr is a terminal, else `Plain`.
    pub fn detect() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress::Tty
        } else {
            Progress::Plain
        }
    }
}

/// A run, fully described.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub scenario: Scenario,
    /// `http://host:port` or `https://host:port`.
    pub server: String,
    pub proto: Proto,
    pub trust: Option<Trust>,
    pub token: Option<String>,
    pub load: Load,
    pub connections: usize,
    /// Concurrent requests per connection (HTTP/2 and HTTP/3 only).
    pub streams: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub timeout: Duration,
    pub traffic: TrafficConfig,
    /// Orders stored before the measured phase (the `read` scenario).
    pub seed_orders: u64,
    pub subscribers: usize,
    pub progress: Progress,
}

impl RunConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        self.traffic.validate()?;
        let bad = |m: String| Err(LoadError::Config(m));
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return bad(format!("--connections must be 1..={CONNECTIONS_MAX}"));
        }
        if !(1..=STREAMS_MAX).contains(&self.streams) {
            return bad(format!("--streams must be 1..={STREAMS_MAX}"));
        }
        if self.streams > 1 && self.proto == Proto::H1 {
            return bad(
                "--streams > 1 needs h2 or h3: HTTP/1.1 sends one request at a time".into(),
            );
        }
        if self.duration.is_none() && self.requests.is_none() {
            return bad("give --duration or --requests (or both): every run is bounded".into());
        }
        if self.duration.is_some_and(|d| d.is_zero()) || self.requests == Some(0) {
            return bad("--duration and --requests must be positive".into());
        }
        if let Load::Open { rate, queue } = self.load {
            if !(rate.is_finite() && rate > 0.0 && rate <= 10_000_000.0) {
                return bad(format!("--rate must be in (0, 10000000], got {rate}"));
            }
            if !(1..=QUEUE_MAX).contains(&queue) {
                return bad(format!("--queue must be 1..={QUEUE_MAX}"));
            }
        }
        if self.subscribers > SUBSCRIBERS_MAX {
            return bad(format!("--subscribers must be at most {SUBSCRIBERS_MAX}"));
        }
        if self.scenario == Scenario::Subscribe && self.subscribers == 0 {
            return bad("the subscribe scenario needs --subscribers ≥ 1".into());
        }
        if self.scenario == Scenario::Read
            && self.seed_orders == 0
            && self.traffic.mix.weight(OpKind::Ingest) == 0
        {
            return bad(
                "the read scenario needs --seed-orders ≥ 1 (nothing to read otherwise)".into(),
            );
        }
        Ok(())
    }

    fn lanes(&self) -> usize {
        self.connections * self.streams
    }
}

/// Everything a run measured.
#[derive(Debug)]
pub struct Outcome {
    pub records: Records,
    pub wall: Duration,
    pub issued: u64,
    pub created: u64,
    pub duplicate: u64,
    pub events_sent: u64,
    pub generator: GenCounts,
    pub ryw_checked: u64,
    pub ryw_violations: u64,
    pub ryw_not_found_unacked: u64,
    pub ryw_examples: Vec<String>,
    /// Open loop: how late the dispatcher handed out calls (µs), part of their latency.
    pub schedule_lag_us: Option<Histogram<u64>>,
    pub seed: Option<SeedOutcome>,
    pub subscribe: Option<SubscribeOutcome>,
}

#[derive(Clone, Debug)]
pub struct SeedOutcome {
    pub orders: u64,
    pub events: u64,
    pub wall: Duration,
}

#[derive(Debug)]
pub struct SubscribeOutcome {
    pub subscribers: usize,
    /// LSNs that each subscriber should have seen: `(baseline, last acknowledged]`.
    pub expected_per_subscriber: u64,
    pub delivered: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub incomplete_subscribers: usize,
    pub latency_us: Histogram<u64>,
}

/// State shared by every task of a run.
struct Shared {
    traffic: Mutex<Generator>,
    recorder: Recorder,
    tracker: Tracker,
    issued: AtomicU64,
    limit: Option<u64>,
    /// Set when the measured phase starts (after seeding).
    deadline: OnceLock<Instant>,
    created: AtomicU64,
    duplicate: AtomicU64,
    events_sent: AtomicU64,
    max_acked_lsn: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn next_op(&self) -> Op {
        self.traffic
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .next_op()
    }
}

/// One client per connection: for HTTP/3 each then has its own UDP socket and endpoint driver, so
/// the connections spread over the runtime's threads instead of funnelling through one socket.
fn client(cfg: &RunConfig) -> Result<Client, LoadError> {
    let mut c = ClientConfig::new(cfg.server.clone(), cfg.proto).with_request_timeout(cfg.timeout);
    if let Some(t) = &cfg.trust {
        c = c.with_trust(t.clone());
    }
    if let Some(t) = &cfg.token {
        c = c.with_token(t.clone());
    }
    Client::new(c).map_err(LoadError::Connect)
}

async fn connect_all(cfg: &RunConfig, n: usize) -> Result<Vec<Connection>, LoadError> {
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let c = client(cfg)?;
        tasks.push(tokio::spawn(async move { c.connect().await }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(
            t.await
                .map_err(|e| LoadError::Task(e.to_string()))?
                .map_err(LoadError::Connect)?,
        );
    }
    Ok(out)
}

/// Runs the load and returns what it measured.
pub async fn run(cfg: RunConfig) -> Result<Outcome, LoadError> {
    cfg.validate()?;
    let conns = connect_all(&cfg, cfg.connections).await?;
    let shared = Arc::new(Shared {
        traffic: Mutex::new(Generator::new(cfg.traffic.clone())?),
        recorder: Recorder::new(SHARDS),
        tracker: Tracker::new(RYW_SLOTS),
        issued: AtomicU64::new(0),
        limit: cfg.requests,
        deadline: OnceLock::new(),
        created: AtomicU64::new(0),
        duplicate: AtomicU64::new(0),
        events_sent: AtomicU64::new(0),
        max_acked_lsn: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });

    let seed = if cfg.seed_orders > 0 {
        Some(seed_phase(&cfg, &conns, &shared).await?)
    } else {
        None
    };

    let subs = if cfg.subscribers > 0 {
        Some(Subscribers::start(&cfg, &conns[0]).await?)
    } else {
        None
    };

    let start = Instant::now();
    if let Some(d) = cfg.duration {
        let _ = shared.deadline.set(start + d);
    }
    // Ctrl-C ends the measured phase early (calls in flight finish) and the report is still made.
    let interrupt = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::Relaxed);
            }
        })
    };
    let progress = spawn_progress(
        cfg.progress,
        Arc::clone(&shared),
        start,
        subs.as_ref().map(|s| Arc::clone(&s.delivered)),
    );
    let schedule_lag_us = match cfg.load {
        Load::Closed => {
            closed_loop(&cfg, &conns, &shared).await?;
            None
        }
        Load::Open { rate, queue } => {
            Some(open_loop(&cfg, &conns, &shared, start, rate, queue).await?)
        }
    };
    let wall = start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    interrupt.abort();
    if let Some(p) = progress {
        p.abort();
        let _ = p.await;
        if cfg.progress == Progress::Tty {
            eprintln!();
        }
    }
    let subscribe = match subs {
        Some(s) => Some(s.finish(shared.max_acked_lsn.load(Ordering::Relaxed)).await),
        None => None,
    };
    let traffic = shared
        .traffic
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .counts()
        .clone();
    Ok(Outcome {
        records: shared.recorder.merged(),
        wall,
        issued: shared.issued.load(Ordering::Relaxed),
        created: shared.created.load(Ordering::Relaxed),
        duplicate: shared.duplicate.load(Ordering::Relaxed),
        events_sent: shared.events_sent.load(Ordering::Relaxed),
        generator: traffic,
        ryw_checked: shared.tracker.checked.load(Ordering::Relaxed),
        ryw_violations: shared.tracker.violations.load(Ordering::Relaxed),
        ryw_not_found_unacked: shared.tracker.not_found_unacked.load(Ordering::Relaxed),
        ryw_examples: shared.tracker.examples(),
        schedule_lag_us,
        seed,
        subscribe,
    })
}

/// Stores `seed_orders` whole orders through every connection (batches of 1,000 events); any
/// failure aborts the run, since the reads that follow would be meaningless.
async fn seed_phase(
    cfg: &RunConfig,
    conns: &[Connection],
    shared: &Arc<Shared>,
) -> Result<SeedOutcome, LoadError> {
    let start = Instant::now();
    let left = Arc::new(Mutex::new(cfg.seed_orders));
    let mut tasks = Vec::new();
    for lane in 0..cfg.lanes() {
        let conn = conns[lane % conns.len()].clone();
        let shared = Arc::clone(shared);
        let left = Arc::clone(&left);
        tasks.push(tokio::spawn(async move {
            loop {
                let op = {
                    let mut left = left
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    let mut traffic = shared
                        .traffic
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    traffic.seed_request(&mut left, SEED_BATCH_EVENTS)
                };
                let Some(op) = op else { return Ok(()) };
                let body = op.body.clone().expect("an ingest has a body");
                let resp = conn
                    .send(Request::post(op.path.clone(), "application/json", body))
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status.is_success() {
                    return Err(format!(
                        "{} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body)
                    ));
                }
                record_ingest(&shared, &op, &resp.body).map_err(|f| format!("{f:?}"))?;
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| LoadError::Task(e.to_string()))?
            .map_err(LoadError::Seed)?;
    }
    let counts = shared
        .traffic
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .counts()
        .clone();
    // The measured phase counts its own acknowledgements; the read-your-writes table keeps the seeds'.
    shared.created.store(0, Ordering::Relaxed);
    shared.duplicate.store(0, Ordering::Relaxed);
    shared
        .recorder
        .live
        .events_acked
        .store(0, Ordering::Relaxed);
    Ok(SeedOutcome {
        orders: counts.seeded_orders,
        events: counts.seeded_events,
        wall: start.elapsed(),
    })
}

/// Claims the next call of a closed loop, or `None` when the run is over.
fn claim(shared: &Shared) -> bool {
    if shared.stop.load(Ordering::Relaxed) {
        return false;
    }
    if shared.deadline.get().is_some_and(|&d| Instant::now() >= d) {
        return false;
    }
    let i = shared.issued.fetch_add(1, Ordering::Relaxed);
    if shared.limit.is_some_and(|l| i >= l) {
        shared.issued.fetch_sub(1, Ordering::Relaxed);
        return false;
    }
    true
}

async fn closed_loop(
    cfg: &RunConfig,
    conns: &[Connection],
    shared: &Arc<Shared>,
) -> Result<(), LoadError> {
    let mut tasks = Vec::new();
    for lane in 0..cfg.lanes() {
        let conn = conns[lane % conns.len()].clone();
        let shared = Arc::clone(shared);
        tasks.push(tokio::spawn(async move {
            while claim(&shared) {
                let op = shared.next_op();
                let sent = Instant::now();
                execute(&shared, &conn, lane, op, sent).await;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| LoadError::Task(e.to_string()))?;
    }
    Ok(())
}

async fn open_loop(
    cfg: &RunConfig,
    conns: &[Connection],
    shared: &Arc<Shared>,
    start: Instant,
    rate: f64,
    queue: usize,
) -> Result<Histogram<u64>, LoadError> {
    let lanes = cfg.lanes();
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let (tx, mut rx) = mpsc::channel::<(Instant, Op)>(queue);
        senders.push(tx);
        let conn = conns[lane % conns.len()].clone();
        let shared = Arc::clone(shared);
        tasks.push(tokio::spawn(async move {
            while let Some((intended, op)) = rx.recv().await {
                if shared.stop.load(Ordering::Relaxed) {
                    shared.recorder.failure(lane, op.kind, &Failure::Abandoned);
                    continue;
                }
                execute(&shared, &conn, lane, op, intended).await;
            }
        }));
    }
    let end_ns = cfg.duration.map(|d| d.as_nanos() as u64);
    let pacer = Pacer::new(rate, cfg.requests, end_ns);
    let shared_d = Arc::clone(shared);
    // A thread, not a task: it sleeps with the OS timer's ~60 µs precision instead of tokio's 1 ms
    // wheel, and it never waits behind the lanes' work on the runtime's threads.
    let dispatcher = std::thread::Builder::new()
        .name("trackload-dispatch".into())
        .spawn(move || dispatch(pacer, start, senders, &shared_d))
        .map_err(|e| LoadError::Task(format!("start the dispatcher thread: {e}")))?;
    let lag = tokio::task::spawn_blocking(move || dispatcher.join())
        .await
        .map_err(|e| LoadError::Task(e.to_string()))?
        .map_err(|_| LoadError::Task("the dispatcher thread panicked".into()))?;
    // The schedule is over; the lanes finish what is queued. A server that cannot catch up within
    // DRAIN_TIMEOUT gets no more calls: the rest of the queues is counted as abandoned, and only the
    // calls in flight (bounded by the request timeout) are awaited.
    let mut pending: std::collections::VecDeque<_> = tasks.into();
    let drain = async {
        while let Some(t) = pending.front_mut() {
            let _ = t.await;
            pending.pop_front();
        }
    };
    if tokio::time::timeout(DRAIN_TIMEOUT, drain).await.is_err() {
        shared.stop.store(true, Ordering::Relaxed);
        for t in pending {
            let _ = t.await;
        }
    }
    Ok(lag)
}

/// The open-loop dispatcher: follows the schedule, draws each call and queues it on its lane.
fn dispatch(
    mut pacer: Pacer,
    start: Instant,
    senders: Vec<mpsc::Sender<(Instant, Op)>>,
    shared: &Shared,
) -> Histogram<u64> {
    let mut lag = latency_histogram();
    while let Some(due) = pacer.next_due_ns() {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = start.elapsed().as_nanos() as u64;
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now).max(DISPATCH_TICK));
            continue;
        }
        while let Some((i, intended_ns)) = pacer.take_due(start.elapsed().as_nanos() as u64) {
            shared.issued.fetch_add(1, Ordering::Relaxed);
            let op = shared.next_op();
            let intended = start + Duration::from_nanos(intended_ns);
            let lane = lane_for(i, senders.len());
            let kind = op.kind;
            if let Err(e) = senders[lane].try_send((intended, op)) {
                match e {
                    mpsc::error::TrySendError::Full(_) => {
                        shared.recorder.failure(lane, kind, &Failure::Dropped);
                    }
                    mpsc::error::TrySendError::Closed(_) => return lag,
                }
            }
            let now_ns = start.elapsed().as_nanos() as u64;
            lag.saturating_record((latency_ns(intended_ns, now_ns) / 1_000).max(1));
        }
    }
    lag
}

/// Sends one call and records its outcome; the latency runs from `intended` (the intended send
/// time in an open loop, the actual one in a closed loop).
async fn execute(shared: &Shared, conn: &Connection, lane: usize, op: Op, intended: Instant) {
    // The read-your-writes snapshot is taken before the request leaves.
    let expect = op.order.and_then(|o| shared.tracker.expect(o));
    let req = match &op.body {
        Some(body) => {
            shared
                .events_sent
                .fetch_add(op.event_orders.len() as u64, Ordering::Relaxed);
            Request::post(op.path.clone(), "application/json", body.clone())
        }
        None => Request::get(op.path.clone()),
    };
    let result = conn.send(req).await;
    let latency_us = (latency_ns(0, intended.elapsed().as_nanos() as u64) / 1_000).max(1);
    let failure = match result {
        Err(ClientError::Timeout(_)) => Some(Failure::Timeout),
        Err(_) => Some(Failure::Transport),
        Ok(resp) => judge(shared, &op, expect, resp.status, &resp.body).err(),
    };
    match failure {
        None => shared.recorder.success(lane, op.kind, latency_us),
        Some(f) => shared.recorder.failure(lane, op.kind, &f),
    }
}

/// Checks an answer: its status, its body's shape, and read-your-writes.
fn judge(
    shared: &Shared,
    op: &Op,
    expect: Option<super::ryw::Expect>,
    status: StatusCode,
    body: &[u8],
) -> Result<(), Failure> {
    #[derive(Deserialize)]
    struct OrderState {
        event_count: u64,
        last_lsn: u64,
    }
    #[derive(Deserialize)]
    struct Lsn {
        lsn: u64,
    }
    #[derive(Deserialize)]
    struct Events {
        events: Vec<Lsn>,
        next_cursor: Option<String>,
    }
    #[derive(Deserialize)]
    struct Orders {
        #[expect(dead_code, reason = "only the shape of the page is checked")]
        orders: Vec<serde::de::IgnoredAny>,
    }
    let what = || format!("{} {}", op.kind, op.path);
    if status == StatusCode::NOT_FOUND && matches!(op.kind, OpKind::Order | OpKind::Timeline) {
        return if shared.tracker.check(&what(), expect, None) {
            Ok(())
        } else {
            Err(Failure::Status(404))
        };
    }
    if !status.is_success() {
        return Err(Failure::Status(status.as_u16()));
    }
    let bad = |_| Failure::BadResponse;
    match op.kind {
        OpKind::Ingest => record_ingest(shared, op, body),
        OpKind::Order => {
            let s: OrderState = serde_json::from_slice(body).map_err(bad)?;
            shared
                .tracker
                .check(&what(), expect, Some((s.event_count, s.last_lsn)));
            Ok(())
        }
        OpKind::Timeline => {
            let page: Events = serde_json::from_slice(body).map_err(bad)?;
            // Orders have far fewer events than a page holds: the first page is the whole timeline.
            if page.next_cursor.is_none() {
                let max = page.events.iter().map(|e| e.lsn).max().unwrap_or(0);
                shared
                    .tracker
                    .check(&what(), expect, Some((page.events.len() as u64, max)));
            }
            Ok(())
        }
        OpKind::Status => serde_json::from_slice::<Orders>(body)
            .map(|_| ())
            .map_err(bad),
        OpKind::Range => serde_json::from_slice::<Events>(body)
            .map(|_| ())
            .map_err(bad),
    }
}

/// Takes an ingest answer: one result per event, in request order; acknowledges each to the
/// read-your-writes table.
fn record_ingest(shared: &Shared, op: &Op, body: &[u8]) -> Result<(), Failure> {
    #[derive(Deserialize)]
    struct Result1 {
        lsn: u64,
        outcome: String,
    }
    #[derive(Deserialize)]
    struct Answer {
        results: Vec<Result1>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|_| Failure::BadResponse)?;
    if a.results.len() != op.event_orders.len() {
        return Err(Failure::BadResponse);
    }
    let (mut created, mut duplicate, mut max_lsn) = (0, 0, 0);
    for (r, &order) in a.results.iter().zip(&op.event_orders) {
        let is_created = match r.outcome.as_str() {
            "created" => true,
            "duplicate" => false,
            _ => return Err(Failure::BadResponse),
        };
        shared.tracker.acked(order, is_created, r.lsn);
        created += u64::from(is_created);
        duplicate += u64::from(!is_created);
        max_lsn = max_lsn.max(r.lsn);
    }
    shared.created.fetch_add(created, Ordering::Relaxed);
    shared.duplicate.fetch_add(duplicate, Ordering::Relaxed);
    shared
        .recorder
        .live
        .events_acked
        .fetch_add(created + duplicate, Ordering::Relaxed);
    shared.max_acked_lsn.fetch_max(max_lsn, Ordering::Relaxed);
    Ok(())
}

fn spawn_progress(
    mode: Progress,
    shared: Arc<Shared>,
    start: Instant,
    delivered: Option<Arc<AtomicU64>>,
) -> Option<tokio::task::JoinHandle<()>> {
    let every = match mode {
        Progress::Off => return None,
        Progress::Tty => Duration::from_secs(1),
        Progress::Plain => Duration::from_secs(10),
    };
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut last = (0u64, Instant::now());
        loop {
            tick.tick().await;
            let l = &shared.recorder.live;
            let ok = l.ok.load(Ordering::Relaxed);
            let errors = l.errors.load(Ordering::Relaxed);
            let dropped = l.dropped.load(Ordering::Relaxed);
            let done = ok + errors + dropped;
            let now = Instant::now();
            let rate = (done - last.0) as f64 / now.duration_since(last.1).as_secs_f64();
            last = (done, now);
            let mut line = format!(
                "[{:7.1}s] {:>9.0} req/s  done {done}  errors {errors}  dropped {dropped}  events acked {}  ryw violations {}",
                start.elapsed().as_secs_f64(),
                rate,
                l.events_acked.load(Ordering::Relaxed),
                shared.tracker.violations.load(Ordering::Relaxed),
            );
            if let Some(d) = &delivered {
                line.push_str(&format!("  delivered {}", d.load(Ordering::Relaxed)));
            }
            if mode == Progress::Tty {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }))
}

// ---- live subscribers --------------------------------------------------------------------------

/// What one subscriber saw.
struct SubscriberResult {
    delivered: u64,
    gaps: u64,
    out_of_order: u64,
    latency_us: Histogram<u64>,
}

struct Subscribers {
    baseline: u64,
    stop: watch::Sender<bool>,
    last_lsns: Vec<watch::Receiver<u64>>,
    tasks: Vec<tokio::task::JoinHandle<SubscriberResult>>,
    delivered: Arc<AtomicU64>,
}

impl Subscribers {
    /// Opens the subscriptions (each on its own connection) at the head of the log; returns once
    /// every one is accepted, so that every event of the load is theirs to deliver.
    async fn start(cfg: &RunConfig, conn: &Connection) -> Result<Subscribers, LoadError> {
        #[derive(Deserialize)]
        struct Stats {
            last_lsn: u64,
        }
        let stats: Stats = conn
            .get_json("/v1/stats")
            .await
            .map_err(LoadError::Subscribe)?;
        let conns = connect_all(cfg, cfg.subscribers).await?;
        let (stop, stop_rx) = watch::channel(false);
        let delivered = Arc::new(AtomicU64::new(0));
        let (mut last_lsns, mut tasks) = (Vec::new(), Vec::new());
        for c in conns {
            let stream = c
                .subscribe(&StreamQuery {
                    from_lsn: Some(stats.last_lsn + 1),
                    ..StreamQuery::default()
                })
                .await
                .map_err(LoadError::Subscribe)?;
            let (lsn_tx, lsn_rx) = watch::channel(stats.last_lsn);
            last_lsns.push(lsn_rx);
            let mut stop_rx = stop_rx.clone();
            let delivered = Arc::clone(&delivered);
            let baseline = stats.last_lsn;
            tasks.push(tokio::spawn(async move {
                // The connection must outlive the stream.
                let _conn = c;
                let mut stream = stream;
                let mut r = SubscriberResult {
                    delivered: 0,
                    gaps: 0,
                    out_of_order: 0,
                    latency_us: latency_histogram(),
                };
                let mut prev = baseline;
                loop {
                    let item = tokio::select! {
                        item = stream.next() => item,
                        _ = stop_rx.changed() => break,
                    };
                    let event = match item {
                        Ok(Some(StreamItem::Event(e))) => e,
                        Ok(Some(_)) => continue,
                        Ok(None) | Err(_) => break,
                    };
                    let arrival_us = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_micros() as i64)
                        .unwrap_or(0);
                    if let Ok(t) = Timestamp::parse(&event.received_at) {
                        let us = (arrival_us - t.as_millis() * 1_000).max(1) as u64;
                        r.latency_us.saturating_record(us);
                    }
                    if event.lsn <= prev {
                        r.out_of_order += 1;
                    } else if event.lsn != prev + 1 {
                        r.gaps += event.lsn - prev - 1;
                    }
                    prev = prev.max(event.lsn);
                    r.delivered += 1;
                    delivered.fetch_add(1, Ordering::Relaxed);
                    let _ = lsn_tx.send(prev);
                }
                r
            }));
        }
        Ok(Subscribers {
            baseline: stats.last_lsn,
            stop,
            last_lsns,
            tasks,
            delivered,
        })
    }

    /// Waits (bounded) until every subscriber has delivered `target`, then ends the streams.
    async fn finish(self, target: u64) -> SubscribeOutcome {
        let wait = async {
            for rx in &self.last_lsns {
                let mut rx = rx.clone();
                let _ = rx.wait_for(|&lsn| lsn >= target).await;
            }
        };
        let _ = tokio::time::timeout(SUBSCRIBER_DRAIN, wait).await;
        let incomplete = self
            .last_lsns
            .iter()
            .filter(|rx| *rx.borrow() < target)
            .count();
        let _ = self.stop.send(true);
        let mut out = SubscribeOutcome {
            subscribers: self.tasks.len(),
            expected_per_subscriber: target.saturating_sub(self.baseline),
            delivered: 0,
            gaps: 0,
            out_of_order: 0,
            incomplete_subscribers: incomplete,
            latency_us: latency_histogram(),
        };
        for t in self.tasks {
            if let Ok(r) = t.await {
                out.delivered += r.delivered;
                out.gaps += r.gaps;
                out.out_of_order += r.out_of_order;
                out.latency_us.add(&r.latency_us).expect("same bounds");
            }
        }
        out
    }
}
