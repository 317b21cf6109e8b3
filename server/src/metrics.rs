//! Prometheus metrics (OpenMetrics text): requests by route, method, status and protocol, latency
//! histograms, ingest outcomes, group-commit sizes and write+fsync latency, live subscribers, and
//! RocksDB figures read at scrape time.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use trackstore_engine::store::Cf;
use trackstore_engine::{CommitInfo, Engine, Status};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    /// One of a fixed set (`api::method_label`): a label taken from client input as sent would let
    /// clients add series without bound.
    pub method: &'static str,
    pub status: u16,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub query: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RocksLabels {
    pub cf: &'static str,
    pub property: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 20))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub ingest_events: Family<OutcomeLabels, Counter>,
    pub commit_group_events: Histogram,
    pub commit_group_requests: Histogram,
    pub commit_write_seconds: Histogram,
    pub subscribers: Gauge,
    pub subscriber_disconnects: Family<ReasonLabels, Counter>,
    pub connections: Family<ListenerLabels, Gauge>,
    pub overload_rejections: Family<ReasonLabels, Counter>,
    pub auth_failures: Family<ReasonLabels, Counter>,
    last_lsn: Gauge,
    events: Gauge,
    orders: Gauge,
    orders_by_status: Family<StatusLabels, Gauge>,
    writes_refused: Gauge,
    rocksdb: Family<RocksLabels, Gauge<f64, AtomicU64>>,
    /// Replica: per entry, primary receive → applied here.
    pub replication_apply_delay: Histogram,
    /// Replica: per entry, primary commit → applied here: the replication lag (entries the primary
    /// sent with a commit time, see `trackstore_engine::commit_clock`).
    pub replication_commit_lag: Histogram,
    replication_lag_lsn: Gauge,
    replication_lag_seconds: Gauge<f64, AtomicU64>,
    replication_bytes: Family<DirectionLabels, Gauge>,
    replication_entries: Family<DirectionLabels, Gauge>,
    replication_reconnects: Gauge,
    replication_replicas: Gauge,
    replication_snapshots: Family<OutcomeLabels, Gauge>,
    replication_snapshot_bytes: Gauge,
    epoch: Gauge,
    /// Orders erased through the API on this node.
    pub erasures: Counter,
    pub erased_events: Counter,
    /// Order reads memory could not answer (block-cache misses), sent to the blocking pool.
    pub reads_from_disk: Family<QueryLabels, Counter>,
    /// Retention: events and whole orders removed by this node's sweeps.
    pub retention_events: Counter,
    pub retention_orders: Counter,
    pub purges: Family<OutcomeLabels, Counter>,
    pub purge_seconds: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

/// RocksDB properties exported per column family.
const ROCKS_PROPERTIES: [(&str, &str); 5] = [
    ("rocksdb.estimate-num-keys", "estimate_num_keys"),
    ("rocksdb.total-sst-files-size", "sst_bytes"),
    ("rocksdb.cur-size-all-mem-tables", "memtable_bytes"),
    (
        "rocksdb.estimate-pending-compaction-bytes",
        "pending_compaction_bytes",
    ),
    ("rocksdb.num-running-compactions", "running_compactions"),
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trackstore");
        let m = Metrics {
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(latency_histogram),
            ingest_events: Family::default(),
            commit_group_events: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            commit_group_requests: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_write_seconds: latency_histogram(),
            subscribers: Gauge::default(),
            subscriber_disconnects: Family::default(),
            connections: Family::default(),
            overload_rejections: Family::default(),
            auth_failures: Family::default(),
            last_lsn: Gauge::default(),
            events: Gauge::default(),
            orders: Gauge::default(),
            orders_by_status: Family::default(),
            writes_refused: Gauge::default(),
            rocksdb: Family::default(),
            // 100 µs .. ~52 s.
            replication_apply_delay: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            replication_commit_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            replication_lag_lsn: Gauge::default(),
            replication_lag_seconds: Gauge::default(),
            replication_bytes: Family::default(),
            replication_entries: Family::default(),
            replication_reconnects: Gauge::default(),
            replication_replicas: Gauge::default(),
            replication_snapshots: Family::default(),
            replication_snapshot_bytes: Gauge::default(),
            epoch: Gauge::default(),
            erasures: Counter::default(),
            erased_events: Counter::default(),
            reads_from_disk: Family::default(),
            retention_events: Counter::default(),
            retention_orders: Counter::default(),
            purges: Family::default(),
            // 10 ms .. ~1.5 h.
            purge_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 20)),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by route, method, status and protocol",
            m.requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "Time to answer a request (to the response head), by route and protocol",
            Unit::Seconds,
            m.request_seconds.clone(),
        );
        r.register(
            "reads_from_disk",
            "Order state and timeline reads run on the blocking pool: memtables and block cache \
             could not answer them, or a timeline page was over the memory-only bounds (100 \
             events, 1,000 skipped removed entries); by query (order_state, timeline)",
            m.reads_from_disk.clone(),
        );
        r.register(
            "ingest_events",
            "Events acknowledged by POST /v1/events, by outcome (created, duplicate)",
            m.ingest_events.clone(),
        );
        r.register(
            "commit_group_events",
            "Events per group commit (one WriteBatch, one WAL sync)",
            m.commit_group_events.clone(),
        );
        r.register(
            "commit_group_requests",
            "Requests per group commit",
            m.commit_group_requests.clone(),
        );
        r.register_with_unit(
            "commit_write_duration",
            "Time of one group commit's RocksDB write including the WAL fsync",
            Unit::Seconds,
            m.commit_write_seconds.clone(),
        );
        r.register(
            "stream_subscribers",
            "Live SSE subscribers",
            m.subscribers.clone(),
        );
        r.register(
            "stream_disconnects",
            "SSE subscribers ended by the server, by reason",
            m.subscriber_disconnects.clone(),
        );
        r.register(
            "open_connections",
            "Open client connections, by listener (http, https, h3)",
            m.connections.clone(),
        );
        r.register(
            "overload_rejections",
            "Requests refused with 429/503 because a bound was reached, by bound",
            m.overload_rejections.clone(),
        );
        r.register(
            "auth_failures",
            "Requests refused by the access-token check, by reason (missing, invalid, scope)",
            m.auth_failures.clone(),
        );
        r.register(
            "last_lsn",
            "Last committed log sequence number",
            m.last_lsn.clone(),
        );
        r.register("events", "Events stored", m.events.clone());
        r.register("orders", "Orders stored", m.orders.clone());
        r.register(
            "orders_in_status",
            "Orders by current status",
            m.orders_by_status.clone(),
        );
        r.register(
            "writes_refused",
            "1 when a storage failure made the engine refuse writes",
            m.writes_refused.clone(),
        );
        r.register(
            "rocksdb",
            "RocksDB properties by column family",
            m.rocksdb.clone(),
        );
        r.register_with_unit(
            "replication_apply_delay",
            "Replica: per entry, from its receipt on the primary to its durable apply here",
            Unit::Seconds,
            m.replication_apply_delay.clone(),
        );
        r.register_with_unit(
            "replication_commit_lag",
            "Replica: per entry, from its commit on the primary to its durable apply here (entries \
             whose commit time the primary still knew when it sent them)",
            Unit::Seconds,
            m.replication_commit_lag.clone(),
        );
        r.register(
            "replication_lag_lsn",
            "Replica: entries the primary has that this node has not applied; primary: the \
             largest lag of a connected replica (by acknowledged LSN)",
            m.replication_lag_lsn.clone(),
        );
        r.register_with_unit(
            "replication_lag",
            "Replica: age of the oldest entry not applied yet (0 when caught up); primary: the \
             largest of the connected replicas' (time since a lagging replica last acknowledged)",
            Unit::Seconds,
            m.replication_lag_seconds.clone(),
        );
        r.register(
            "replication_bytes",
            "Log bytes shipped (primary, direction=sent) or applied (replica, direction=received)",
            m.replication_bytes.clone(),
        );
        r.register(
            "replication_entries",
            "Log entries shipped (direction=sent) or applied (direction=received)",
            m.replication_entries.clone(),
        );
        r.register(
            "replication_reconnects",
            "Replica: sessions with the primary started again after a failure",
            m.replication_reconnects.clone(),
        );
        r.register(
            "replication_replicas",
            "Primary: replicas connected now",
            m.replication_replicas.clone(),
        );
        r.register(
            "replication_snapshots",
            "Primary: snapshots for replica bootstrap, by outcome (served, failed, busy)",
            m.replication_snapshots.clone(),
        );
        r.register(
            "replication_snapshot_sent_bytes",
            "Primary: bytes of snapshots sent to replicas",
            m.replication_snapshot_bytes.clone(),
        );
        r.register("epoch", "This node's epoch", m.epoch.clone());
        r.register(
            "erasures",
            "Orders erased by DELETE /v1/orders/{order_id} on this node",
            m.erasures.clone(),
        );
        r.register(
            "erased_events",
            "Events removed by erasures on this node",
            m.erased_events.clone(),
        );
        r.register(
            "retention_removed_events",
            "Events removed by the retention sweep (primary)",
            m.retention_events.clone(),
        );
        r.register(
            "retention_removed_orders",
            "Orders removed by the retention sweep because none of their events remained",
            m.retention_orders.clone(),
        );
        r.register(
            "purges",
            "Purges (removed data rewritten off the disk), by outcome (ok, failed)",
            m.purges.clone(),
        );
        r.register_with_unit(
            "purge_duration",
            "Time of one purge (flush, full compaction, MANIFEST rollover)",
            Unit::Seconds,
            m.purge_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Replica: the primary's receive times (ms) of a batch just applied, and its commit times
    /// (runs of (entries, µs); 0: unknown).
    pub fn observe_replicated(&self, received_ms: &[i64], committed_us: &[(u32, i64)]) {
        let now_us = trackstore_engine::commit_clock::now_us();
        for r in received_ms {
            self.replication_apply_delay
                .observe(((now_us / 1000 - r).max(0) as f64) / 1000.0);
        }
        for &(n, at) in committed_us {
            if at > 0 {
                let lag = ((now_us - at).max(0) as f64) / 1e6;
                for _ in 0..n {
                    self.replication_commit_lag.observe(lag);
                }
            }
        }
    }

    /// Refreshes the replication figures (at scrape time).
    pub fn observe_replication(&self, r: &crate::replication::Replication, engine: &Engine) {
        use std::sync::atomic::Ordering::Relaxed;
        self.epoch.set(engine.epoch() as i64);
        let dir = |d| DirectionLabels { direction: d };
        match r.lag() {
            Some((lsn, secs)) => {
                self.replication_lag_lsn.set(lsn as i64);
                self.replication_lag_seconds.set(secs);
                let s = r.replica_status.lock().expect("status lock");
                self.replication_bytes
                    .get_or_create(&dir("received"))
                    .set(s.bytes_received as i64);
                self.replication_entries
                    .get_or_create(&dir("received"))
                    .set(s.entries_applied as i64);
                self.replication_reconnects.set(s.reconnects as i64);
            }
            None => {
                let last = engine.last_lsn().0;
                let replicas = r.primary_state.replicas();
                let now = std::time::Instant::now();
                let (mut worst_lsn, mut worst_secs) = (0, 0.0f64);
                for x in &replicas {
                    let lag = last.saturating_sub(x.acked_lsn.0);
                    worst_lsn = worst_lsn.max(lag);
                    // As in /v1/admin/replication: how long the oldest unacknowledged entry waits.
                    worst_secs = worst_secs.max(crate::replication::lag_seconds(
                        engine,
                        x,
                        trackstore_engine::Lsn(last),
                        now,
                    ));
                }
                self.replication_lag_lsn.set(worst_lsn as i64);
                self.replication_lag_seconds.set(worst_secs);
                self.replication_replicas.set(replicas.len() as i64);
                let p = &r.primary_state;
                self.replication_bytes
                    .get_or_create(&dir("sent"))
                    .set(p.bytes_shipped.load(Relaxed) as i64);
                self.replication_entries
                    .get_or_create(&dir("sent"))
                    .set(p.entries_shipped.load(Relaxed) as i64);
                for (outcome, n) in [
                    ("served", &p.snapshots_served),
                    ("failed", &p.snapshots_failed),
                    ("busy", &p.snapshots_busy),
                ] {
                    self.replication_snapshots
                        .get_or_create(&OutcomeLabels { outcome })
                        .set(n.load(Relaxed) as i64);
                }
                self.replication_snapshot_bytes
                    .set(p.snapshot_bytes_sent.load(Relaxed) as i64);
            }
        }
    }

    /// Called on the engine's writer thread after each group commit: counters only, no blocking.
    pub fn observe_commit(&self, info: &CommitInfo<'_>) {
        // A commit that shared the previous one's write is not a write of its own.
        if let Some(write_time) = info.write_time
            && info.requests > 0
        {
            self.commit_group_events.observe(info.events as f64);
            self.commit_group_requests.observe(info.requests as f64);
            self.commit_write_seconds.observe(write_time.as_secs_f64());
        }
    }

    /// Refreshes the engine figures and encodes everything.
    pub fn render(&self, engine: &Engine) -> String {
        let stats = engine.stats();
        self.last_lsn.set(stats.last_lsn.0 as i64);
        self.events.set(stats.events as i64);
        self.orders.set(stats.orders as i64);
        for s in Status::ALL {
            self.orders_by_status
                .get_or_create(&StatusLabels { status: s.as_str() })
                .set(stats.orders_in(s) as i64);
        }
        self.writes_refused
            .set(i64::from(engine.poisoned().is_some()));
        for cf in Cf::ALL {
            for (name, label) in ROCKS_PROPERTIES {
                if let Ok(Some(v)) = engine.property(cf, name) {
                    self.rocksdb
                        .get_or_create(&RocksLabels {
                            cf: cf.name(),
                            property: label,
                        })
                        .set(v as f64);
                }
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
