//! The result of a run for people (a Markdown table, pasteable into `bench/RESULTS.md`) and for
//! machines (`--json`), plus the `.hgrm` and SVG files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::run::{Load, Outcome, RunConfig};
use super::traffic::{GenCounts, OpKind};
use super::{hgrm, svg};

/// Percentiles of a microsecond histogram, in milliseconds (3 decimals: exact microseconds).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean_ms: 0.0,
                p50_ms: 0.0,
                p90_ms: 0.0,
                p99_ms: 0.0,
                p999_ms: 0.0,
                max_ms: 0.0,
            };
        }
        let ms = |us: u64| us as f64 / 1_000.0;
        Percentiles {
            count: h.len(),
            mean_ms: h.mean().round() / 1_000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    fn cells(&self) -> String {
        format!(
            "{:.3} | {:.3} | {:.3} | {:.3} | {:.3}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )
    }
}

/// One kind of call.
#[derive(Clone, Debug, Serialize)]
pub struct OpSummary {
    /// Successful calls; `latency.count` equals it.
    pub ok: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    /// Successful calls per second of the measured phase.
    pub ok_per_s: f64,
    pub latency: Percentiles,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventsSummary {
    /// Events in the ingest requests sent (retries included).
    pub sent: u64,
    pub created: u64,
    pub duplicate: u64,
    /// Events acknowledged (created or duplicate) per second.
    pub acked_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RywSummary {
    pub checked: u64,
    pub violations: u64,
    /// Reads answered 404 for an order none of whose writes was acknowledged when the read left.
    pub not_found_unacked: u64,
    pub examples: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeedSummary {
    pub orders: u64,
    pub events: u64,
    pub wall_s: f64,
    pub events_per_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SubscribeSummary {
    pub subscribers: usize,
    pub expected_per_subscriber: u64,
    pub delivered: u64,
    pub gaps: u64,
    pub out_of_order: u64,
    pub incomplete_subscribers: usize,
    /// Commit to subscriber: arrival on this machine's wall clock minus the event's `received_at`.
    pub delivery_latency: Percentiles,
    pub clock: &'static str,
}

pub const DELIVERY_CLOCK: &str = "received_at (server wall clock, ms, stamped when the writer takes the event, \
     before the WAL write and fsync) to arrival at the subscriber (same machine's wall clock, µs): an upper \
     bound of commit-to-subscriber latency, +0..1 ms from received_at's millisecond truncation";

/// The whole result.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: &'static str,
    pub proto: String,
    pub server: String,
    /// `open` or `closed`.
    pub mode: &'static str,
    pub rate: Option<f64>,
    pub queue: Option<usize>,
    pub connections: usize,
    pub streams: usize,
    pub duration_s: Option<f64>,
    pub requests_limit: Option<u64>,
    pub seed: u64,
    pub run_id: String,
    pub base_time: String,
    pub mix: String,
    pub batch: usize,
    /// Length of the measured phase (seeding excluded).
    pub wall_s: f64,
    /// Calls issued: `ok + errors` (dropped calls are errors).
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_status: BTreeMap<String, u64>,
    /// Successful calls per second.
    pub throughput_rps: f64,
    pub events: EventsSummary,
    /// Per kind of call, and `all`.
    pub ops: BTreeMap<String, OpSummary>,
    pub read_your_writes: RywSummary,
    pub generator: GenCounts,
    pub schedule_lag: Option<Percentiles>,
    pub seed_phase: Option<SeedSummary>,
    pub subscribe: Option<SubscribeSummary>,
}

fn op_summary(r: &super::stats::OpRecord, wall_s: f64) -> OpSummary {
    OpSummary {
        ok: r.ok(),
        errors: r.error_count(),
        errors_by_status: r.errors.clone(),
        ok_per_s: r.ok() as f64 / wall_s,
        latency: Percentiles::of(&r.latency_us),
    }
}

pub fn summarize(cfg: &RunConfig, o: &Outcome) -> Summary {
    let wall_s = o.wall.as_secs_f64().max(1e-9);
    let mut ops = BTreeMap::new();
    for kind in OpKind::ALL {
        let r = o.records.op(kind);
        if r.ok() + r.error_count() > 0 {
            ops.insert(kind.name().to_owned(), op_summary(r, wall_s));
        }
    }
    let all = op_summary(&o.records.all(), wall_s);
    let summary_all = all.clone();
    ops.insert("all".to_owned(), all);
    let (rate, queue) = match cfg.load {
        Load::Open { rate, queue } => (Some(rate), Some(queue)),
        Load::Closed => (None, None),
    };
    Summary {
        scenario: cfg.scenario.name(),
        proto: cfg.proto.to_string(),
        server: cfg.server.clone(),
        mode: if rate.is_some() { "open" } else { "closed" },
        rate,
        queue,
        connections: cfg.connections,
        streams: cfg.streams,
        duration_s: cfg.duration.map(|d| d.as_secs_f64()),
        requests_limit: cfg.requests,
        seed: cfg.traffic.seed,
        run_id: cfg.traffic.run_id.clone(),
        base_time: trackstore_engine::Timestamp::from_millis(cfg.traffic.base_ms)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        mix: cfg.traffic.mix.to_string(),
        batch: cfg.traffic.batch,
        wall_s,
        requests: o.issued,
        ok: summary_all.ok,
        errors: summary_all.errors,
        errors_by_status: summary_all.errors_by_status,
        throughput_rps: summary_all.ok_per_s,
        events: EventsSummary {
            sent: o.events_sent,
            created: o.created,
            duplicate: o.duplicate,
            acked_per_s: (o.created + o.duplicate) as f64 / wall_s,
        },
        ops,
        read_your_writes: RywSummary {
            checked: o.ryw_checked,
            violations: o.ryw_violations,
            not_found_unacked: o.ryw_not_found_unacked,
            examples: o.ryw_examples.clone(),
        },
        generator: o.generator.clone(),
        schedule_lag: o.schedule_lag_us.as_ref().map(Percentiles::of),
        seed_phase: o.seed.as_ref().map(|s| SeedSummary {
            orders: s.orders,
            events: s.events,
            wall_s: s.wall.as_secs_f64(),
            events_per_s: s.events as f64 / s.wall.as_secs_f64().max(1e-9),
        }),
        subscribe: o.subscribe.as_ref().map(|s| SubscribeSummary {
            subscribers: s.subscribers,
            expected_per_subscriber: s.expected_per_subscriber,
            delivered: s.delivered,
            gaps: s.gaps,
            out_of_order: s.out_of_order,
            incomplete_subscribers: s.incomplete_subscribers,
            delivery_latency: Percentiles::of(&s.latency_us),
            clock: DELIVERY_CLOCK,
        }),
    }
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The human-readable report.
pub fn table(s: &Summary) -> String {
    let mut t = String::new();
    let load = match (s.rate, s.queue) {
        (Some(rate), Some(queue)) => format!("open loop at {rate} req/s (queue {queue} per lane)"),
        _ => "closed loop".to_owned(),
    };
    let _ = writeln!(
        t,
        "trackload {} over {} to {}: {load}, {} connections x {} streams; seed {}, run id {}, mix {}, batch {}",
        s.scenario, s.proto, s.server, s.connections, s.streams, s.seed, s.run_id, s.mix, s.batch
    );
    if let Some(sp) = &s.seed_phase {
        let _ = writeln!(
            t,
            "seeded {} orders ({} events) in {:.1} s ({:.0} events/s)",
            sp.orders, sp.events, sp.wall_s, sp.events_per_s
        );
    }
    let _ = writeln!(
        t,
        "{} requests in {:.2} s: {:.0} ok/s, {} errors; events sent {}, created {}, duplicate {} ({:.0} acked/s)\n",
        s.requests,
        s.wall_s,
        s.throughput_rps,
        s.errors,
        s.events.sent,
        s.events.created,
        s.events.duplicate,
        s.events.acked_per_s
    );
    let _ = writeln!(
        t,
        "| operation | ok | errors | ok/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
    );
    let _ = writeln!(t, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let order = OpKind::ALL.iter().map(|k| k.name()).chain(["all"]);
    for name in order {
        if let Some(op) = s.ops.get(name) {
            let _ = writeln!(
                t,
                "| {name} | {} | {} | {:.0} | {} |",
                op.ok,
                op.errors,
                op.ok_per_s,
                op.latency.cells()
            );
        }
    }
    if let Some(sub) = &s.subscribe {
        let _ = writeln!(
            t,
            "| delivery (SSE) | {} | - | {:.0} | {} |",
            sub.delivered,
            sub.delivered as f64 / s.wall_s,
            sub.delivery_latency.cells()
        );
    }
    let _ = writeln!(
        t,
        "\nerrors by status: {}",
        errors_text(&s.errors_by_status)
    );
    let r = &s.read_your_writes;
    let _ = writeln!(
        t,
        "read-your-writes: {} reads checked, {} violations ({} reads found no order before any of its writes was acknowledged)",
        r.checked, r.violations, r.not_found_unacked
    );
    for e in &r.examples {
        let _ = writeln!(t, "  violation: {e}");
    }
    let g = &s.generator;
    let _ = writeln!(
        t,
        "traffic: {} events generated, {} late, {} reordered, {} retried; {} orders started, {} finished",
        g.events, g.late, g.reordered, g.retries, g.orders_started, g.orders_finished
    );
    if let Some(lag) = &s.schedule_lag {
        let _ = writeln!(
            t,
            "schedule lag (dispatcher behind the intended time, included in latencies): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            lag.p50_ms, lag.p99_ms, lag.max_ms
        );
    }
    if let Some(sub) = &s.subscribe {
        let _ = writeln!(
            t,
            "subscribe: {} subscribers delivered {} events ({} expected each); gaps {}, out of order {}, incomplete subscribers {}",
            sub.subscribers,
            sub.delivered,
            sub.expected_per_subscriber,
            sub.gaps,
            sub.out_of_order,
            sub.incomplete_subscribers
        );
        let _ = writeln!(t, "  delivery latency clock: {}", sub.clock);
    }
    t
}

/// The histograms written to files: `all`, each kind with data, and the SSE delivery latency.
pub fn histograms(o: &Outcome) -> Vec<(String, Histogram<u64>)> {
    let mut out = vec![("all".to_owned(), o.records.all().latency_us)];
    for kind in OpKind::ALL {
        let h = &o.records.op(kind).latency_us;
        if !h.is_empty() {
            out.push((kind.name().to_owned(), h.clone()));
        }
    }
    if let Some(s) = &o.subscribe {
        out.push(("delivery".to_owned(), s.latency_us.clone()));
    }
    out
}

/// `FILE` gets the `all` distribution; `FILE`'s stem + `.<kind>.hgrm` each other one. Returns the
/// paths written.
pub fn write_hgrm(path: &Path, o: &Outcome) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, h) in histograms(o) {
        let p = if name == "all" {
            path.to_path_buf()
        } else {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("trackload");
            path.with_file_name(format!("{stem}.{name}.hgrm"))
        };
        std::fs::write(&p, hgrm::render(&h))?;
        written.push(p);
    }
    Ok(written)
}

pub fn write_svg(path: &Path, s: &Summary, o: &Outcome) -> std::io::Result<()> {
    let title = format!(
        "trackload {} over {}: {} requests, {:.0} ok/s ({})",
        s.scenario, s.proto, s.requests, s.throughput_rps, s.mode
    );
    let hs = histograms(o);
    // With a single kind of call, `all` is the same line drawn twice.
    let kinds = hs
        .iter()
        .filter(|(n, _)| n != "all" && n != "delivery")
        .count();
    let series: Vec<(String, &Histogram<u64>)> = hs
        .iter()
        .filter(|(n, _)| kinds > 1 || n != "all")
        .map(|(n, h)| (n.clone(), h))
        .collect();
    std::fs::write(path, svg::render(&title, &series))
}
