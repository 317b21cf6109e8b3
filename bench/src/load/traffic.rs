//! The traffic generator: a deterministic (by seed) stream of API calls that looks like a delivery
//! business's day.
//!
//! **Writes.** Orders walk through a lifecycle planned when they start (see [`plan_order`]):
//! `created → allocated → picking → picked → dispatched → in_transit… → out_for_delivery →
//! delivered`, with the branches `attempted_delivery` (then a second round or `returned`),
//! `exception` in transit (then `in_transit` again or `returned`) and early `cancelled`. Each event
//! carries its source, carrier, a location once the parcel moves, an eta once it is out for delivery,
//! and flat attributes (depot, slot, parcels, van). At most `active_orders` orders are in flight;
//! each ingest event advances a random one of them, so the events of many orders interleave.
//!
//! Three kinds of disorder, each with its own share of the events:
//! - **late**: an event is held back until a later step of its order was sent, then released after
//!   a random further delay (a scanner that syncs after it was offline);
//! - **reordered**: two consecutive steps of an order are sent in swapped order;
//! - **retried**: an event already sent is sent again with identical bytes (a client retry); the
//!   server answers `duplicate` for every copy after the first it sees.
//!
//! **Event time.** Every `occurred_at` lies in the 48 hours before `base_ms` (the run's anchor, by
//! default its start on the wall clock): order `k` starts at `base − 48 h + (k · 150 ms mod 24 h)` and
//! no lifecycle lasts 19 h, so nothing is ever in the future (the server refuses more than 5 minutes
//! ahead) and the same seed, run id and base replay byte for byte.
//!
//! **Reads** target the `read_window` most recently started orders (order state, timeline), the
//! orders currently in a status, and one-minute time ranges inside the event-time window.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde::Serialize;
use trackstore_engine::{Status, Timestamp};

use super::rng::Rng64;

pub const MINUTE_MS: i64 = 60_000;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
/// Order start times spread over one day of event time.
const DAY_MS: i64 = 24 * HOUR_MS;
/// Every event time lies in `[base − WINDOW_MS, base)`.
pub const WINDOW_MS: i64 = 48 * HOUR_MS;
/// Start-time spacing of consecutive orders: a busy day of 576,000 orders.
const ORDER_SPACING_MS: i64 = 150;
/// The longest possible lifecycle (sum of the largest gaps of the longest path in [`plan_order`]).
pub const LIFECYCLE_MAX_MS: i64 = 19 * HOUR_MS;
const _: () = assert!(
    DAY_MS + LIFECYCLE_MAX_MS < WINDOW_MS,
    "lifecycles end before the base time"
);

/// Events a late event waits (at most) after a later step of its order was sent.
const LATE_DELAY_MAX_EVENTS: u64 = 2_000;
/// Events a retry waits (at most) after its original.
const RETRY_DELAY_MAX_EVENTS: u64 = 200;
/// Bounds of the queues of delayed events; past them an event is simply sent on time.
const LATE_QUEUE_MAX: usize = 100_000;
const RETRY_QUEUE_MAX: usize = 10_000;
/// Bounds of the configuration (memory: an active order holds its plan, ~1 KiB).
pub const ACTIVE_ORDERS_MAX: usize = 1_000_000;
pub const READ_WINDOW_MAX: usize = 2_000_000;
pub const BATCH_MAX: usize = 10_000;
/// Page size of the list reads (orders in a status, time range).
const LIST_LIMIT: u32 = 100;

/// Why a traffic configuration is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum ConfigError {
    #[error(
        "bad --mix {0:?}: expected comma-separated kind=weight with kinds ingest, order, timeline, status, range"
    )]
    MixSyntax(String),
    #[error("--mix has no positive weight")]
    MixEmpty,
    #[error("run id {0:?} must be 1-24 ASCII letters or digits")]
    RunId(String),
    #[error("{name} must be in {min}..={max}, got {value}")]
    OutOfRange {
        name: &'static str,
        min: u64,
        max: u64,
        value: u64,
    },
    #[error("the {name} share must be in 0..=0.5, got {value}")]
    Share { name: &'static str, value: f64 },
    #[error("the base time must be after 1970-01-03")]
    Base,
}

/// The kinds of call, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    Ingest,
    Order,
    Timeline,
    Status,
    Range,
}

impl OpKind {
    pub const ALL: [OpKind; 5] = [
        OpKind::Ingest,
        OpKind::Order,
        OpKind::Timeline,
        OpKind::Status,
        OpKind::Range,
    ];

    pub fn name(self) -> &'static str {
        match self {
            OpKind::Ingest => "ingest",
            OpKind::Order => "order",
            OpKind::Timeline => "timeline",
            OpKind::Status => "status",
            OpKind::Range => "range",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the kinds of call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mix {
    pub weights: [u32; 5],
}

impl Mix {
    /// A delivery day: mostly scans coming in, customers and the control room reading.
    pub const DAY: Mix = Mix {
        weights: [60, 25, 10, 3, 2],
    };
    pub const INGEST: Mix = Mix {
        weights: [1, 0, 0, 0, 0],
    };
    pub const ORDER_READS: Mix = Mix {
        weights: [0, 1, 0, 0, 0],
    };

    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    pub fn has_reads(&self) -> bool {
        self.weights[1..].iter().any(|&w| w > 0)
    }
}

impl FromStr for Mix {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Mix, ConfigError> {
        let mut weights = [0u32; 5];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || ConfigError::MixSyntax(s.to_owned());
            let (name, weight) = part.split_once('=').ok_or_else(bad)?;
            let kind = OpKind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(bad)?;
            weights[kind.index()] = weight.trim().parse().map_err(|_| bad())?;
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(ConfigError::MixEmpty);
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = OpKind::ALL
            .iter()
            .filter(|k| self.weight(**k) > 0)
            .map(|k| format!("{}={}", k.name(), self.weight(*k)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Everything the traffic depends on: the same configuration gives the same calls.
#[derive(Clone, Debug)]
pub struct TrafficConfig {
    pub seed: u64,
    /// Prefix of every order and event id, so that runs against one store do not collide.
    pub run_id: String,
    /// Anchor of event time (ms since the epoch): every `occurred_at` is before it.
    pub base_ms: i64,
    pub mix: Mix,
    /// Events per ingest request (1: a single JSON object; more: a JSON array).
    pub batch: usize,
    pub active_orders: usize,
    pub read_window: usize,
    pub late_share: f64,
    pub reorder_share: f64,
    pub retry_share: f64,
}

impl TrafficConfig {
    pub fn new(seed: u64, run_id: &str, base_ms: i64) -> TrafficConfig {
        TrafficConfig {
            seed,
            run_id: run_id.to_owned(),
            base_ms,
            mix: Mix::DAY,
            batch: 1,
            active_orders: 2_000,
            read_window: 10_000,
            late_share: 0.02,
            reorder_share: 0.03,
            retry_share: 0.01,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = (1..=24).contains(&self.run_id.len())
            && self.run_id.bytes().all(|b| b.is_ascii_alphanumeric());
        if !id_ok {
            return Err(ConfigError::RunId(self.run_id.clone()));
        }
        let ranges = [
            ("--batch", self.batch, BATCH_MAX),
            ("--active-orders", self.active_orders, ACTIVE_ORDERS_MAX),
            ("--read-window", self.read_window, READ_WINDOW_MAX),
        ];
        for (name, value, max) in ranges {
            if !(1..=max).contains(&value) {
                return Err(ConfigError::OutOfRange {
                    name,
                    min: 1,
                    max: max as u64,
                    value: value as u64,
                });
            }
        }
        let shares = [
            ("late", self.late_share),
            ("reorder", self.reorder_share),
            ("retry", self.retry_share),
        ];
        for (name, value) in shares {
            if !(0.0..=0.5).contains(&value) {
                return Err(ConfigError::Share { name, value });
            }
        }
        if self.mix.weights.iter().all(|&w| w == 0) {
            return Err(ConfigError::MixEmpty);
        }
        if self.base_ms < WINDOW_MS {
            return Err(ConfigError::Base);
        }
        Ok(())
    }

    pub fn order_id(&self, order: u64) -> String {
        format!("tl{}-o{order}", self.run_id)
    }
}

/// One API call, ready to send.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    pub kind: OpKind,
    /// Path and query.
    pub path: String,
    /// `POST /v1/events` body (`application/json`) for an ingest; `None` for a `GET`.
    pub body: Option<Bytes>,
    /// The order an order-state or timeline read is about (for the read-your-writes check).
    pub order: Option<u64>,
    /// For an ingest: the order of each event, in request order (the response's results follow it).
    pub event_orders: Vec<u64>,
}

/// What the generator produced, for the report and the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GenCounts {
    pub events: u64,
    pub late: u64,
    pub reordered: u64,
    pub retries: u64,
    pub orders_started: u64,
    pub orders_finished: u64,
    pub seeded_orders: u64,
    pub seeded_events: u64,
}

/// How an event's sending is disturbed (decided when the order is planned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    None,
    /// Hold until a later step of the order was sent.
    Late,
    /// Swap with the next step.
    Reorder,
    /// Swapped already: the next step was sent before it.
    Reordered,
}

/// One planned event of an order.
#[derive(Clone, Debug)]
pub struct Planned {
    pub step: u16,
    pub status: Status,
    pub at_ms: i64,
    pub reason: Option<&'static str>,
    pub location: Option<(f64, f64, Option<&'static str>)>,
    pub eta_ms: Option<i64>,
    flag: Flag,
}

struct OrderSim {
    index: u64,
    /// Planned events not sent yet, in plan (event-time) order.
    pending: VecDeque<Planned>,
    /// Late events waiting for a later step of this order to be sent.
    held: Vec<Planned>,
    announced: bool,
}

/// An event waiting in a delay queue, ordered by the event count at which it is due.
struct Delayed {
    due: u64,
    seq: u64,
    order: u64,
    bytes: Bytes,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// The generator. Not `Sync`: a run shares one behind a mutex so that the sequence of calls is the
/// seed's, whichever connection sends each.
pub struct Generator {
    cfg: TrafficConfig,
    rng: Rng64,
    next_order: u64,
    active: Vec<OrderSim>,
    held_total: usize,
    late: BinaryHeap<Reverse<Delayed>>,
    retries: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    recent: VecDeque<u64>,
    counts: GenCounts,
    /// Per-event probabilities that make the configured shares hold over all events (the last
    /// event of an order cannot be late or reordered: nothing follows it).
    late_p: f64,
    reorder_p: f64,
}

impl fmt::Debug for Generator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generator")
            .field("cfg", &self.cfg)
            .field("active", &self.active.len())
            .field("counts", &self.counts)
            .finish()
    }
}

/// Mean events per order of [`plan_order`], measured (see the test `mean_events_per_order`); used to
/// turn a share of all events into a share of the events that can be delayed.
const MEAN_EVENTS_PER_ORDER: f64 = 9.1;

impl Generator {
    pub fn new(cfg: TrafficConfig) -> Result<Generator, ConfigError> {
        cfg.validate()?;
        let scale = MEAN_EVENTS_PER_ORDER / (MEAN_EVENTS_PER_ORDER - 1.0);
        let mut g = Generator {
            rng: Rng64::new(cfg.seed),
            late_p: cfg.late_share * scale,
            reorder_p: cfg.reorder_share * scale,
            cfg,
            next_order: 0,
            active: Vec::new(),
            held_total: 0,
            late: BinaryHeap::new(),
            retries: BinaryHeap::new(),
            delayed_seq: 0,
            recent: VecDeque::new(),
            counts: GenCounts::default(),
        };
        // Orders start lazily (see `next_event`), so that orders seeded first take the first numbers.
        g.active.reserve(g.cfg.active_orders);
        Ok(g)
    }

    pub fn config(&self) -> &TrafficConfig {
        &self.cfg
    }

    pub fn counts(&self) -> &GenCounts {
        &self.counts
    }

    /// The orders that reads may target (most recent last).
    pub fn readable(&self) -> usize {
        self.recent.len()
    }

    /// The next call of the mix.
    pub fn next_op(&mut self) -> Op {
        let kind = OpKind::ALL[self.rng.weighted(&self.cfg.mix.weights)];
        match kind {
            OpKind::Ingest => self.ingest_op(),
            OpKind::Order | OpKind::Timeline => {
                if self.recent.is_empty() {
                    return self.ingest_op();
                }
                let order = self.recent[self.rng.below(self.recent.len() as u64) as usize];
                let id = self.cfg.order_id(order);
                let path = if kind == OpKind::Order {
                    format!("/v1/orders/{id}")
                } else {
                    format!("/v1/orders/{id}/events?limit={LIST_LIMIT}")
                };
                Op {
                    kind,
                    path,
                    body: None,
                    order: Some(order),
                    event_orders: Vec::new(),
                }
            }
            OpKind::Status => {
                const STATUSES: [(Status, u32); 7] = [
                    (Status::InTransit, 30),
                    (Status::OutForDelivery, 30),
                    (Status::Allocated, 10),
                    (Status::Picking, 8),
                    (Status::AttemptedDelivery, 10),
                    (Status::Exception, 7),
                    (Status::Delivered, 5),
                ];
                let weights = STATUSES.map(|(_, w)| w);
                let status = STATUSES[self.rng.weighted(&weights)].0;
                let mut path = format!("/v1/orders?status={}&limit={LIST_LIMIT}", status.as_str());
                if self.rng.chance(0.25) {
                    let carrier = CARRIERS[self.rng.below(CARRIERS.len() as u64) as usize];
                    path.push_str("&carrier=");
                    path.push_str(carrier);
                }
                Op {
                    kind,
                    path,
                    body: None,
                    order: None,
                    event_orders: Vec::new(),
                }
            }
            OpKind::Range => {
                let span = (WINDOW_MS - LIFECYCLE_MAX_MS + HOUR_MS) / 1_000;
                let from =
                    self.cfg.base_ms - WINDOW_MS + self.rng.below(span as u64) as i64 * 1_000;
                let path = format!(
                    "/v1/events?from={}&to={}&limit={LIST_LIMIT}",
                    query_time(from),
                    query_time(from + MINUTE_MS)
                );
                Op {
                    kind,
                    path,
                    body: None,
                    order: None,
                    event_orders: Vec::new(),
                }
            }
        }
    }

    /// An ingest of `batch` events.
    pub fn ingest_op(&mut self) -> Op {
        let n = self.cfg.batch;
        let mut event_orders = Vec::with_capacity(n);
        let body = if n == 1 {
            let (order, bytes) = self.next_event();
            event_orders.push(order);
            bytes
        } else {
            let mut body = Vec::with_capacity(n * 400);
            body.push(b'[');
            for i in 0..n {
                if i > 0 {
                    body.push(b',');
                }
                let (order, bytes) = self.next_event();
                event_orders.push(order);
                body.extend_from_slice(&bytes);
            }
            body.push(b']');
            Bytes::from(body)
        };
        Op {
            kind: OpKind::Ingest,
            path: "/v1/events".to_owned(),
            body: Some(body),
            order: None,
            event_orders,
        }
    }

    /// A request that stores whole new orders (every planned event, in event-time order, nothing
    /// late, reordered or retried), at most `max_events` events. The orders become readable. Used to
    /// fill the store before a read run; `None` when `*orders_left` is 0.
    pub fn seed_request(&mut self, orders_left: &mut u64, max_events: usize) -> Option<Op> {
        let mut body = vec![b'['];
        let mut event_orders = Vec::new();
        while *orders_left > 0 {
            let index = self.next_order;
            let plan = plan_order(self.cfg.seed, index, self.cfg.base_ms, 0.0, 0.0);
            if !event_orders.is_empty() && event_orders.len() + plan.len() > max_events {
                break;
            }
            self.next_order += 1;
            *orders_left -= 1;
            for p in &plan {
                if !event_orders.is_empty() {
                    body.push(b',');
                }
                body.extend_from_slice(&render(&self.cfg, index, p));
                event_orders.push(index);
            }
            self.counts.seeded_orders += 1;
            self.counts.seeded_events += plan.len() as u64;
            self.remember(index);
        }
        if event_orders.is_empty() {
            return None;
        }
        body.push(b']');
        Some(Op {
            kind: OpKind::Ingest,
            path: "/v1/events".to_owned(),
            body: Some(Bytes::from(body)),
            order: None,
            event_orders,
        })
    }

    /// The next event to send: its order and its JSON bytes.
    pub fn next_event(&mut self) -> (u64, Bytes) {
        let emitted = self.counts.events;
        if self.late.peek().is_some_and(|Reverse(d)| d.due <= emitted)
            && let Some(Reverse(d)) = self.late.pop()
        {
            self.counts.late += 1;
            return self.emit(d.order, d.bytes);
        }
        if self
            .retries
            .peek()
            .is_some_and(|Reverse(d)| d.due <= emitted)
            && let Some(Reverse(d)) = self.retries.pop()
        {
            self.counts.retries += 1;
            return self.emit(d.order, d.bytes);
        }
        if self.active.is_empty() {
            while self.active.len() < self.cfg.active_orders {
                let order = self.start_order();
                self.active.push(order);
            }
        }
        let slot = self.rng.below(self.active.len() as u64) as usize;
        let may_delay = self.held_total + self.late.len() < LATE_QUEUE_MAX;
        let o = &mut self.active[slot];
        let mut e = o
            .pending
            .pop_front()
            .expect("an active order has a pending event");
        if !o.pending.is_empty() {
            match e.flag {
                Flag::Late if may_delay => {
                    o.held.push(e);
                    self.held_total += 1;
                    e = o.pending.pop_front().expect("checked: not empty");
                }
                Flag::Reorder => {
                    e.flag = Flag::Reordered;
                    let next = o.pending.pop_front().expect("checked: not empty");
                    o.pending.push_front(e);
                    e = next;
                }
                _ => {}
            }
        }
        if e.flag == Flag::Reordered {
            self.counts.reordered += 1;
        }
        let index = o.index;
        let first = !o.announced;
        o.announced = true;
        let bytes = render(&self.cfg, index, &e);
        // Held events are older than `e`: from now on they are late.
        let held: Vec<Planned> = o.held.extract_if(.., |h| h.at_ms < e.at_ms).collect();
        let finished = o.pending.is_empty() && o.held.is_empty();
        for h in held {
            self.held_total -= 1;
            let due = emitted + 1 + self.rng.below(LATE_DELAY_MAX_EVENTS);
            let bytes = render(&self.cfg, index, &h);
            self.delay_late(due, index, bytes);
        }
        if first {
            self.remember(index);
        }
        if finished {
            self.counts.orders_finished += 1;
            self.active[slot] = self.start_order();
        }
        if self.retries.len() < RETRY_QUEUE_MAX && self.rng.chance(self.cfg.retry_share) {
            let due = emitted + 1 + self.rng.below(RETRY_DELAY_MAX_EVENTS);
            self.delayed_seq += 1;
            self.retries.push(Reverse(Delayed {
                due,
                seq: self.delayed_seq,
                order: index,
                bytes: bytes.clone(),
            }));
        }
        self.emit(index, bytes)
    }

    fn emit(&mut self, order: u64, bytes: Bytes) -> (u64, Bytes) {
        self.counts.events += 1;
        (order, bytes)
    }

    fn delay_late(&mut self, due: u64, order: u64, bytes: Bytes) {
        self.delayed_seq += 1;
        self.late.push(Reverse(Delayed {
            due,
            seq: self.delayed_seq,
            order,
            bytes,
        }));
    }

    fn start_order(&mut self) -> OrderSim {
        let index = self.next_order;
        self.next_order += 1;
        self.counts.orders_started += 1;
        let plan = plan_order(
            self.cfg.seed,
            index,
            self.cfg.base_ms,
            self.late_p,
            self.reorder_p,
        );
        OrderSim {
            index,
            pending: plan.into(),
            held: Vec::new(),
            announced: false,
        }
    }

    fn remember(&mut self, order: u64) {
        let cap = self.cfg.read_window;
        if self.recent.len() == cap {
            self.recent.pop_front();
        }
        self.recent.push_back(order);
    }
}

/// A time for a query string (`:` percent-encoded).
fn query_time(ms: i64) -> String {
    let t = Timestamp::from_millis(ms).expect("event times are in range");
    t.to_string().replace(':', "%3A")
}

pub const CARRIERS: [&str; 6] = ["dpd", "royal-mail", "evri", "ups", "dhl", "own-fleet"];
/// Depot cities: name, lat, lon.
const CITIES: [(&str, f64, f64); 8] = [
    ("London", 51.507, -0.128),
    ("Birmingham", 52.486, -1.890),
    ("Manchester", 53.481, -2.243),
    ("Leeds", 53.801, -1.549),
    ("Glasgow", 55.864, -4.252),
    ("Bristol", 51.455, -2.588),
    ("Cardiff", 51.481, -3.179),
    ("Newcastle", 54.978, -1.618),
];
const DEPOTS_PER_CITY: u64 = 5;

/// The lifecycle of order `index`: its planned events in event-time order, each with the
/// disturbance decided for it. A function of `(seed, index, base)` only.
pub fn plan_order(
    seed: u64,
    index: u64,
    base_ms: i64,
    late_p: f64,
    reorder_p: f64,
) -> Vec<Planned> {
    let mut rng = Rng64::derive(seed, index);
    let start = base_ms - WINDOW_MS + (index as i64 * ORDER_SPACING_MS).rem_euclid(DAY_MS);
    let city = CITIES[(index % CITIES.len() as u64) as usize];
    let mut plan: Vec<Planned> = Vec::with_capacity(16);
    let mut t = start;
    fn push(
        plan: &mut Vec<Planned>,
        status: Status,
        at_ms: i64,
        reason: Option<&'static str>,
        location: Option<(f64, f64, Option<&'static str>)>,
        eta_ms: Option<i64>,
    ) {
        plan.push(Planned {
            step: plan.len() as u16,
            status,
            at_ms,
            reason,
            location,
            eta_ms,
            flag: Flag::None,
        });
    }
    fn gap(rng: &mut Rng64, lo_min: i64, hi_min: i64) -> i64 {
        rng.range_i64(lo_min * MINUTE_MS, hi_min * MINUTE_MS)
    }
    let near = |rng: &mut Rng64, spread: f64| {
        let lat = city.1 + (rng.unit() - 0.5) * spread;
        let lon = city.2 + (rng.unit() - 0.5) * spread * 1.6;
        ((lat * 1e5).round() / 1e5, (lon * 1e5).round() / 1e5)
    };
    push(&mut plan, Status::Created, t, None, None, None);
    if rng.chance(0.03) {
        if rng.chance(0.5) {
            t += gap(&mut rng, 1, 20);
            push(&mut plan, Status::Allocated, t, None, None, None);
        }
        t += gap(&mut rng, 1, 60);
        push(
            &mut plan,
            Status::Cancelled,
            t,
            Some("customer_request"),
            None,
            None,
        );
        return flag(plan, &mut rng, late_p, reorder_p);
    }
    t += gap(&mut rng, 1, 20);
    push(&mut plan, Status::Allocated, t, None, None, None);
    t += gap(&mut rng, 5, 40);
    push(&mut plan, Status::Picking, t, None, None, None);
    t += gap(&mut rng, 5, 30);
    push(&mut plan, Status::Picked, t, None, None, None);
    t += gap(&mut rng, 10, 60);
    let (lat, lon) = near(&mut rng, 0.05);
    push(
        &mut plan,
        Status::Dispatched,
        t,
        None,
        Some((lat, lon, Some(city.0))),
        None,
    );
    let pings = 1 + rng.below(3);
    let exception_at = rng.chance(0.04).then(|| rng.below(pings));
    for ping in 0..pings {
        t += gap(&mut rng, 15, 60);
        let (lat, lon) = near(&mut rng, 0.4);
        push(
            &mut plan,
            Status::InTransit,
            t,
            None,
            Some((lat, lon, None)),
            None,
        );
        if exception_at == Some(ping) {
            const REASONS: [&str; 3] = ["damaged", "address_not_found", "weather_delay"];
            let reason = REASONS[rng.below(3) as usize];
            t += gap(&mut rng, 15, 60);
            push(
                &mut plan,
                Status::Exception,
                t,
                Some(reason),
                Some((lat, lon, None)),
                None,
            );
            if rng.chance(0.2) {
                t += gap(&mut rng, 30, 120);
                push(&mut plan, Status::Returned, t, Some(reason), None, None);
                return flag(plan, &mut rng, late_p, reorder_p);
            }
            t += gap(&mut rng, 30, 90);
            let (lat, lon) = near(&mut rng, 0.4);
            push(
                &mut plan,
                Status::InTransit,
                t,
                None,
                Some((lat, lon, None)),
                None,
            );
        }
    }
    for attempt in 0..2 {
        t += gap(&mut rng, if attempt == 0 { 15 } else { 30 }, 90);
        let eta = t + gap(&mut rng, 30, 180);
        let (lat, lon) = near(&mut rng, 0.2);
        push(
            &mut plan,
            Status::OutForDelivery,
            t,
            None,
            Some((lat, lon, None)),
            Some(eta),
        );
        t += gap(&mut rng, 10, 180);
        let (lat, lon) = near(&mut rng, 0.2);
        if rng.chance(if attempt == 0 { 0.9 } else { 0.75 }) {
            push(
                &mut plan,
                Status::Delivered,
                t,
                None,
                Some((lat, lon, None)),
                None,
            );
            return flag(plan, &mut rng, late_p, reorder_p);
        }
        const REASONS: [&str; 3] = ["no_one_home", "access_problem", "refused"];
        let reason = REASONS[rng.below(3) as usize];
        push(
            &mut plan,
            Status::AttemptedDelivery,
            t,
            Some(reason),
            Some((lat, lon, None)),
            None,
        );
    }
    t += gap(&mut rng, 30, 120);
    push(
        &mut plan,
        Status::Returned,
        t,
        Some("undeliverable"),
        None,
        None,
    );
    flag(plan, &mut rng, late_p, reorder_p)
}

/// Decides which events (all but the last) are sent late or swapped with the next.
fn flag(mut plan: Vec<Planned>, rng: &mut Rng64, late_p: f64, reorder_p: f64) -> Vec<Planned> {
    let n = plan.len();
    for p in plan.iter_mut().take(n - 1) {
        let x = rng.unit();
        p.flag = if x < late_p {
            Flag::Late
        } else if x < late_p + reorder_p {
            Flag::Reorder
        } else {
            Flag::None
        };
    }
    plan
}

/// The event's JSON as sent: a function of the configuration, the order and the planned event.
pub fn render(cfg: &TrafficConfig, order: u64, p: &Planned) -> Bytes {
    #[derive(Serialize)]
    struct Wire<'a> {
        event_id: &'a str,
        order_id: &'a str,
        status: &'static str,
        occurred_at: String,
        source: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        carrier: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        location: Option<WireLocation>,
        #[serde(skip_serializing_if = "Option::is_none")]
        eta: Option<String>,
        attributes: Attributes<'a>,
    }
    #[derive(Serialize)]
    struct WireLocation {
        lat: f64,
        lon: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'static str>,
    }
    #[derive(Serialize)]
    struct Attributes<'a> {
        depot: &'a str,
        slot: &'a str,
        parcels: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        van: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signed: Option<bool>,
    }
    let order_id = cfg.order_id(order);
    let event_id = format!("{order_id}-{}", p.step);
    let carrier = CARRIERS[(order.wrapping_mul(0x9E37_79B9) >> 7) as usize % CARRIERS.len()];
    let depot = format!(
        "{}-{}",
        CITIES[(order % CITIES.len() as u64) as usize].0,
        order / CITIES.len() as u64 % DEPOTS_PER_CITY
    );
    let slot_hour = 8 + order % 12;
    let slot = format!("{slot_hour:02}-{:02}", slot_hour + 2);
    let van = format!("van-{:03}", order % 400);
    let moving = p.step >= 1 && !matches!(p.status, Status::Cancelled);
    let source = match p.status {
        Status::Created | Status::Cancelled => "shop",
        Status::Allocated | Status::Picking | Status::Picked => "dms",
        _ => carrier,
    };
    let wire = Wire {
        event_id: &event_id,
        order_id: &order_id,
        status: p.status.as_str(),
        occurred_at: Timestamp::from_millis(p.at_ms)
            .expect("event times are in range")
            .to_string(),
        source,
        carrier: moving.then_some(carrier),
        reason: p.reason,
        location: p
            .location
            .map(|(lat, lon, name)| WireLocation { lat, lon, name }),
        eta: p
            .eta_ms
            .map(|ms| Timestamp::from_millis(ms).expect("in range").to_string()),
        attributes: Attributes {
            depot: &depot,
            slot: &slot,
            parcels: 1 + order % 4,
            van: (p.step >= 4).then_some(van.as_str()),
            signed: (p.status == Status::Delivered).then_some(!order.is_multiple_of(3)),
        },
    };
    Bytes::from(serde_json::to_vec(&wire).expect("serialising a plain struct cannot fail"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::Value;
    use trackstore_engine::Event;

    use super::*;

    const BASE: i64 = 1_795_000_000_000;

    fn cfg(seed: u64) -> TrafficConfig {
        TrafficConfig::new(seed, "t1", BASE)
    }

    /// The statuses that may follow each status in a lifecycle.
    fn may_follow(from: Status, to: Status) -> bool {
        use Status::*;
        match from {
            Created => matches!(to, Allocated | Cancelled),
            Allocated => matches!(to, Picking | Cancelled),
            Picking => to == Picked,
            Picked => to == Dispatched,
            Dispatched => to == InTransit,
            InTransit => matches!(to, InTransit | Exception | OutForDelivery),
            Exception => matches!(to, InTransit | Returned),
            OutForDelivery => matches!(to, Delivered | AttemptedDelivery),
            AttemptedDelivery => matches!(to, OutForDelivery | Returned),
            Delivered | Returned | Cancelled => false,
        }
    }

    #[test]
    fn same_seed_same_calls_other_seed_other_calls() {
        let run = |seed| {
            let mut g = Generator::new(cfg(seed)).unwrap();
            (0..5_000).map(|_| g.next_op()).collect::<Vec<_>>()
        };
        let a = run(9);
        assert_eq!(a, run(9), "the same seed replays the same calls");
        assert_ne!(a, run(10), "another seed gives other calls");
        let kinds: HashMap<OpKind, usize> = a.iter().fold(HashMap::new(), |mut m, op| {
            *m.entry(op.kind).or_default() += 1;
            m
        });
        // The default mix is 60/25/10/3/2.
        let share = |k| kinds.get(&k).copied().unwrap_or(0) as f64 / a.len() as f64;
        assert!((0.57..0.63).contains(&share(OpKind::Ingest)), "{kinds:?}");
        assert!((0.22..0.28).contains(&share(OpKind::Order)), "{kinds:?}");
        assert!((0.08..0.12).contains(&share(OpKind::Timeline)), "{kinds:?}");
        assert!(
            share(OpKind::Status) > 0.015 && share(OpKind::Range) > 0.01,
            "{kinds:?}"
        );
    }

    /// Every event is valid for the server, lifecycles follow the state machine in event time, and
    /// the shares of late, reordered and retried events are as configured.
    #[test]
    fn lifecycles_are_valid_and_disorder_shares_hold() {
        let mut c = cfg(42);
        c.late_share = 0.05;
        c.reorder_share = 0.04;
        c.retry_share = 0.02;
        c.active_orders = 500;
        let mut g = Generator::new(c).unwrap();
        let now = Timestamp::from_millis(BASE).unwrap();
        // order -> (status, occurred_at, step) in send order
        let mut orders: HashMap<u64, Vec<(Status, i64, u64)>> = HashMap::new();
        let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
        let (mut dups, mut late_or_reordered) = (0u64, 0u64);
        let n = 200_000;
        for _ in 0..n {
            let (order, bytes) = g.next_event();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            let e = Event::from_json(&v).unwrap_or_else(|err| panic!("{err:?}: {v}"));
            e.validate(now).unwrap_or_else(|err| panic!("{err:?}: {v}"));
            assert!(e.occurred_at.as_millis() < BASE - 5 * HOUR_MS + 1, "{v}");
            assert!(e.occurred_at.as_millis() >= BASE - WINDOW_MS, "{v}");
            assert_eq!(e.order_id, g.config().order_id(order));
            if let Some(prev) = seen.get(&e.event_id) {
                assert_eq!(prev, &bytes.to_vec(), "a retry is byte-identical");
                dups += 1;
                continue;
            }
            seen.insert(e.event_id.clone(), bytes.to_vec());
            let step: u64 = e.event_id.rsplit('-').next().unwrap().parse().unwrap();
            let sent = orders.entry(order).or_default();
            if sent
                .iter()
                .any(|&(_, at, _)| at > e.occurred_at.as_millis())
            {
                late_or_reordered += 1;
            }
            sent.push((e.status, e.occurred_at.as_millis(), step));
        }
        let counts = g.counts().clone();
        assert_eq!(counts.events, n);
        assert_eq!(
            counts.retries, dups,
            "every retry is a resend of an earlier event"
        );
        assert_eq!(
            counts.late + counts.reordered,
            late_or_reordered,
            "every late or reordered event is older than one already sent for its order"
        );
        let share = |x: u64| x as f64 / n as f64;
        assert!((0.043..0.057).contains(&share(counts.late)), "{counts:?}");
        assert!(
            (0.034..0.046).contains(&share(counts.reordered)),
            "{counts:?}"
        );
        assert!(
            (0.017..0.023).contains(&share(counts.retries)),
            "{counts:?}"
        );
        let mut finished = 0;
        for (order, mut events) in orders {
            events.sort_by_key(|&(_, _, step)| step);
            // In event time (= step order) the statuses follow the state machine, strictly later.
            for w in events.windows(2) {
                if w[1].2 == w[0].2 + 1 {
                    assert!(may_follow(w[0].0, w[1].0), "order {order}: {events:?}");
                    assert!(w[1].1 > w[0].1, "order {order}: times increase: {events:?}");
                }
            }
            if events[0].2 == 0 {
                assert_eq!(events[0].0, Status::Created, "order {order}");
            }
            let plan = plan_order(42, order, BASE, 0.0, 0.0);
            if events.len() == plan.len() {
                finished += 1;
                let last = events.last().unwrap().0;
                assert!(
                    matches!(
                        last,
                        Status::Delivered | Status::Returned | Status::Cancelled
                    ),
                    "order {order} ends in {last:?}"
                );
            }
        }
        assert!(finished > 10_000, "{finished} finished orders");
    }

    #[test]
    fn plans_follow_the_state_machine_with_every_branch() {
        let mut ends: HashMap<Status, u64> = HashMap::new();
        let mut total_events = 0usize;
        let mut seen_statuses = std::collections::HashSet::new();
        let orders = 50_000;
        for index in 0..orders {
            let plan = plan_order(3, index, BASE, 0.0, 0.0);
            total_events += plan.len();
            assert_eq!(plan[0].status, Status::Created);
            for w in plan.windows(2) {
                assert!(may_follow(w[0].status, w[1].status), "{plan:?}");
                assert!(w[1].at_ms > w[0].at_ms, "{plan:?}");
            }
            assert!(plan.last().unwrap().at_ms - plan[0].at_ms <= LIFECYCLE_MAX_MS);
            seen_statuses.extend(plan.iter().map(|p| p.status));
            *ends.entry(plan.last().unwrap().status).or_default() += 1;
        }
        assert_eq!(
            seen_statuses.len(),
            12,
            "every status occurs: {seen_statuses:?}"
        );
        let delivered = ends[&Status::Delivered] as f64 / orders as f64;
        assert!((0.85..0.97).contains(&delivered), "{ends:?}");
        let mean = total_events as f64 / orders as f64;
        assert!(
            (mean - MEAN_EVENTS_PER_ORDER).abs() < 0.2,
            "mean events per order {mean}: update MEAN_EVENTS_PER_ORDER"
        );
    }

    #[test]
    fn seeding_writes_whole_orders_that_reads_then_target() {
        let mut c = cfg(5);
        c.mix = Mix::ORDER_READS;
        c.read_window = 1_000;
        let mut g = Generator::new(c).unwrap();
        let mut left = 300;
        let mut events = 0;
        while let Some(op) = g.seed_request(&mut left, 1_000) {
            let v: Value = serde_json::from_slice(op.body.as_ref().unwrap()).unwrap();
            assert_eq!(v.as_array().unwrap().len(), op.event_orders.len());
            assert!(op.event_orders.len() <= 1_000);
            events += op.event_orders.len() as u64;
        }
        assert_eq!(g.counts().seeded_orders, 300);
        assert_eq!(g.counts().seeded_events, events);
        assert_eq!(g.readable(), 300);
        for _ in 0..100 {
            let op = g.next_op();
            assert_eq!(op.kind, OpKind::Order);
            let order = op.order.unwrap();
            assert!(order < 300, "reads target seeded orders");
            assert_eq!(op.path, format!("/v1/orders/tlt1-o{order}"));
        }
    }

    #[test]
    fn batches_and_mix_parsing() {
        let mut c = cfg(1);
        c.batch = 50;
        c.mix = "ingest=1".parse().unwrap();
        let mut g = Generator::new(c).unwrap();
        let op = g.next_op();
        let v: Value = serde_json::from_slice(op.body.as_ref().unwrap()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 50);
        assert_eq!(op.event_orders.len(), 50);
        let m: Mix = "ingest=60, order=25,timeline=10,status=3,range=2"
            .parse()
            .unwrap();
        assert_eq!(m, Mix::DAY);
        assert_eq!(
            m.to_string(),
            "ingest=60,order=25,timeline=10,status=3,range=2"
        );
        assert!(matches!(
            "ingest=x".parse::<Mix>(),
            Err(ConfigError::MixSyntax(_))
        ));
        assert!(matches!(
            "write=3".parse::<Mix>(),
            Err(ConfigError::MixSyntax(_))
        ));
        assert_eq!("ingest=0".parse::<Mix>(), Err(ConfigError::MixEmpty));
        let mut bad = cfg(1);
        bad.run_id = "has-dash".into();
        assert!(matches!(
            Generator::new(bad).map(|_| ()),
            Err(ConfigError::RunId(_))
        ));
        let mut bad = cfg(1);
        bad.late_share = 0.9;
        assert!(matches!(
            Generator::new(bad).map(|_| ()),
            Err(ConfigError::Share { .. })
        ));
    }
}
