//! `trackload`: the load-test harness of trackstore's HTTP API. See `docs/trackload.md`.
//!
//! ```sh
//! trackload mixed --duration 30s                          # closed loop, 64 HTTP/1.1 connections
//! trackload ingest --rate 20000 --duration 5m --hist-out ingest.hgrm --svg-out ingest.svg
//! trackload read --proto h3 --ca data/tls/cert.pem --duration 20s --json
//! trackload day                                            # 10M calls of a delivery day
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Parser;
use trackstore_bench::load::output;
use trackstore_bench::load::run::{self, Load, Progress, RunConfig, Scenario};
use trackstore_bench::load::traffic::{Mix, TrafficConfig};
use trackstore_client::{Proto, Trust};
use trackstore_engine::Timestamp;

/// mimalloc, as in the server: trackload shares the machine with the server it measures, and
/// with glibc's malloc it took 13% more CPU in the delivery day (bench/RESULTS.md, session 16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Calls of the `day` scenario unless `--requests` says otherwise.
const DAY_CALLS: u64 = 10_000_000;
/// Measured phase when neither `--duration` nor `--requests` is given (other than `day`).
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

/// Load tests for trackstore over HTTP/1.1, HTTP/2 and HTTP/3.
///
/// Scenarios: ingest (single-event POSTs), ingest-batch (--batch events per POST), read (seeds
/// --seed-orders orders, then reads them), mixed (the delivery-day mix), subscribe (SSE subscribers
/// while ingesting), day (10M calls of the delivery-day mix as fast as the server allows).
#[derive(Debug, Parser)]
#[command(name = "trackload", version)]
struct Args {
    /// ingest, ingest-batch, read, mixed, subscribe or day.
    scenario: Scenario,
    /// Server URL; http:// is clear text (HTTP/1.1, or h2c with --proto h2), https:// is TLS (and
    /// the only scheme of h3). Default: http://127.0.0.1:8080 for h1, https://127.0.0.1:8443 for h2/h3.
    #[arg(long)]
    url: Option<String>,
    /// h1, h2 or h3.
    #[arg(long, default_value = "h1")]
    proto: Proto,
    /// PEM file of the CA (or self-signed server certificate) to trust: the server's DATA/tls/cert.pem.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (loopback tests only).
    #[arg(long)]
    insecure: bool,
    /// Bearer token sent with every request.
    #[arg(long, env = "TRACKLOAD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Open loop: calls per second on a fixed schedule, latency from each call's intended send
    /// time. Without it the load is a closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: pending intended sends per lane; a call finding its lane's queue full is counted
    /// as a `dropped` error.
    #[arg(long, default_value_t = 1_000)]
    queue: usize,
    /// Connections (default 64 for h1, 8 for h2 and h3).
    #[arg(long)]
    connections: Option<usize>,
    /// Concurrent requests per HTTP/2 or HTTP/3 connection (default 8; h1: 1).
    #[arg(long)]
    streams: Option<usize>,
    /// Length of the measured phase: 500ms, 30s, 5m, 1h (default 30s unless --requests is given).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Calls in the measured phase (day: 10,000,000 by default).
    #[arg(long)]
    requests: Option<u64>,
    /// Worker threads of trackload's async runtime (default: one per CPU). On the server's own
    /// machine, `--threads 1` leaves it more CPU: in a closed loop one thread drives every
    /// connection without cross-thread wake-ups (a 1M-call `day`: trackload's CPU −10%, calls/s
    /// +1–5%, bench/RESULTS.md). It caps the connections' work at one core (an open loop also has
    /// its dispatcher thread), so check trackload's CPU against the rate.
    #[arg(long)]
    threads: Option<usize>,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Shares of the kinds of call, e.g. ingest=60,order=25,timeline=10,status=3,range=2.
    #[arg(long)]
    mix: Option<Mix>,
    /// Events per ingest request (ingest-batch: default 1000).
    #[arg(long)]
    batch: Option<usize>,
    /// Seed of the traffic: the same seed, run id and base time send the same calls.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of order and event ids (letters and digits; default: from the start time and process id).
    #[arg(long)]
    run_id: Option<String>,
    /// Anchor of event time, RFC 3339: every occurred_at lies in the 48 h before it (default: now).
    #[arg(long)]
    base_time: Option<String>,
    /// Orders in flight at once.
    #[arg(long, default_value_t = 2_000)]
    active_orders: usize,
    /// Most recent orders that reads target.
    #[arg(long, default_value_t = 10_000)]
    read_window: usize,
    /// Share of events sent late (after a later step of their order).
    #[arg(long, default_value_t = 0.02)]
    late: f64,
    /// Share of events swapped with their order's next step.
    #[arg(long, default_value_t = 0.03)]
    reorder: f64,
    /// Share of events sent again (exact duplicates).
    #[arg(long, default_value_t = 0.01)]
    retry: f64,
    /// Orders stored before the measured phase (read: default 10,000).
    #[arg(long)]
    seed_orders: Option<u64>,
    /// SSE subscribers (subscribe: default 4).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Print the result as JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the HdrHistogram percentile distribution of all calls here (.hgrm text), and one
    /// FILE_STEM.<operation>.hgrm beside it per operation.
    #[arg(long)]
    hist_out: Option<PathBuf>,
    /// Write an SVG latency-by-percentile plot here.
    #[arg(long)]
    svg_out: Option<PathBuf>,
    /// No progress line on stderr.
    #[arg(long)]
    no_progress: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 30s, 5m, 1h)"))?;
    let secs = match unit {
        "ms" => n / 1_000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3_600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn config(a: Args) -> anyhow::Result<(RunConfig, Option<PathBuf>, Option<PathBuf>, bool)> {
    let now_ms = Timestamp::now().as_millis();
    let base_ms = match &a.base_time {
        Some(t) => Timestamp::parse(t)
            .map_err(|e| anyhow::anyhow!("--base-time {t:?}: {e}"))?
            .as_millis(),
        None => now_ms,
    };
    // Unique per run (start time in ms and process id), so that runs against one store never reuse
    // an event id with other content (a 409 conflict).
    let run_id = a.run_id.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{ms:x}p{:x}", std::process::id())
    });
    let scenario = a.scenario;
    let mut traffic = TrafficConfig::new(a.seed, &run_id, base_ms);
    traffic.mix = a.mix.unwrap_or(match scenario {
        Scenario::Ingest | Scenario::IngestBatch | Scenario::Subscribe => Mix::INGEST,
        Scenario::Read => Mix::ORDER_READS,
        Scenario::Mixed | Scenario::Day => Mix::DAY,
    });
    traffic.batch = a.batch.unwrap_or(if scenario == Scenario::IngestBatch {
        1_000
    } else {
        1
    });
    traffic.active_orders = a.active_orders;
    traffic.late_share = a.late;
    traffic.reorder_share = a.reorder;
    traffic.retry_share = a.retry;
    let seed_orders = a.seed_orders.unwrap_or(if scenario == Scenario::Read {
        10_000
    } else {
        0
    });
    traffic.read_window = a
        .read_window
        .max(usize::try_from(seed_orders).unwrap_or(usize::MAX));
    let trust = match (&a.ca, a.insecure) {
        (Some(ca), _) => Some(Trust::CaFile(ca.clone())),
        (None, true) => Some(Trust::Insecure),
        (None, false) => None,
    };
    let server = a.url.clone().unwrap_or_else(|| match a.proto {
        Proto::H1 => "http://127.0.0.1:8080".into(),
        Proto::H2 | Proto::H3 => "https://127.0.0.1:8443".into(),
    });
    if server.starts_with("https://") && trust.is_none() {
        bail!(
            "{server} is https: give --ca DATA/tls/cert.pem (the server's certificate) or --insecure"
        );
    }
    let multiplexed = a.proto != Proto::H1;
    let (mut duration, mut requests) = (a.duration, a.requests);
    if scenario == Scenario::Day && requests.is_none() {
        requests = Some(DAY_CALLS);
    }
    if duration.is_none() && requests.is_none() {
        duration = Some(DEFAULT_DURATION);
    }
    let cfg = RunConfig {
        scenario,
        server,
        proto: a.proto,
        trust,
        token: a.token.clone(),
        load: match a.rate {
            Some(rate) => Load::Open {
                rate,
                queue: a.queue,
            },
            None => Load::Closed,
        },
        connections: a.connections.unwrap_or(if multiplexed { 8 } else { 64 }),
        streams: a.streams.unwrap_or(if multiplexed { 8 } else { 1 }),
        duration,
        requests,
        timeout: a.timeout,
        traffic,
        seed_orders,
        subscribers: a.subscribers.unwrap_or(if scenario == Scenario::Subscribe {
            4
        } else {
            0
        }),
        progress: if a.no_progress {
            Progress::Off
        } else {
            Progress::detect()
        },
    };
    cfg.validate()?;
    Ok((cfg, a.hist_out, a.svg_out, a.json))
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trackload: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<ExitCode> {
    // A load generator that stalls on huge-page faults sends its calls in bursts: off, like the
    // server (the measurements are in `disable_transparent_huge_pages`).
    if let Err(e) = trackstore_engine::memory::disable_transparent_huge_pages() {
        eprintln!("trackload: transparent huge pages stay on (prctl failed: {e})");
    }
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    match args.threads {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => {
            builder.worker_threads(n);
        }
        None => {}
    }
    let (cfg, hist_out, svg_out, json) = config(args)?;
    let runtime = builder
        .enable_all()
        .thread_name("trackload")
        .build()
        .context("start the async runtime")?;
    let outcome = runtime
        .block_on(run::run(cfg.clone()))
        .context("run the load")?;
    let summary = output::summarize(&cfg, &outcome);
    if let Some(p) = &hist_out {
        output::write_hgrm(p, &outcome).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &svg_out {
        output::write_svg(p, &summary, &outcome)
            .with_context(|| format!("write {}", p.display()))?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("encode the summary")?
        );
    } else {
        print!("{}", output::table(&summary));
    }
    // The runtime's tasks (subscribers' connections) end with it, without waiting on the server.
    runtime.shutdown_timeout(Duration::from_secs(1));
    // A read that missed an acknowledged write is a correctness failure of the server: say so in
    // the exit code too, for scripts.
    Ok(if summary.read_your_writes.violations > 0 {
        eprintln!(
            "trackload: {} read-your-writes violations",
            summary.read_your_writes.violations
        );
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}
