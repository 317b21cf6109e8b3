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
    pub route: String,
    pub method: String,
    pub status: u16,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
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
    last_lsn: Gauge,
    events: Gauge,
    orders: Gauge,
    orders_by_status: Family<StatusLabels, Gauge>,
    writes_refused: Gauge,
    rocksdb: Family<RocksLabels, Gauge<f64, AtomicU64>>,
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
            last_lsn: Gauge::default(),
            events: Gauge::default(),
            orders: Gauge::default(),
            orders_by_status: Family::default(),
            writes_refused: Gauge::default(),
            rocksdb: Family::default(),
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
        Metrics { registry, ..m }
    }

    /// Called on the engine's writer thread after each group commit: counters only, no blocking.
    pub fn observe_commit(&self, info: &CommitInfo<'_>) {
        if info.requests > 0 {
            self.commit_group_events.observe(info.events as f64);
            self.commit_group_requests.observe(info.requests as f64);
            self.commit_write_seconds
                .observe(info.write_time.as_secs_f64());
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
