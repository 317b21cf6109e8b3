//! Engine load program: measures the storage engine without the network.
//!
//! ```text
//! engine-load --dir /tmp/ts-bench --events 10000000 all
//! ```
//! Phases (each can be run alone): `fill` loads a store of `--events` generated events; `append` runs
//! the batch-size × writer-count grid on a fresh store; `read` measures point reads, timelines and time
//! ranges with 1 and 2 threads; `reopen` times open → first served read; `disk` compacts and reports
//! bytes on disk per event against the events' JSON size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use trackstore_bench::report::{latency_histogram, percentiles_ms};
use trackstore_bench::workload::Shape;
use trackstore_engine::store::Tuning;
use trackstore_engine::{Direction, Durability, Engine, EngineOptions, Lsn, TimeRange, Timestamp};

#[derive(Parser, Debug)]
#[command(about = "Load the trackstore engine and report throughput and latency percentiles")]
struct Args {
    /// Working directory (stores are created inside it).
    #[arg(long, default_value = "/tmp/trackstore-engine-load")]
    dir: PathBuf,
    /// Events in the read store.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Seconds per append configuration.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds per read configuration.
    #[arg(long, default_value_t = 10)]
    read_seconds: u64,
    /// Batch sizes of the append grid.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    batches: Vec<u64>,
    /// Concurrent writers of the append grid.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    writers: Vec<u64>,
    /// Orders in flight while appending (fill and append grid): 0 appends order after order (each
    /// batch holds a few orders' whole lifecycles: consecutive keys, the figures of the past runs);
    /// N interleaves N orders, as a delivery day arrives (each batch holds unrelated orders).
    #[arg(long, default_value_t = 0)]
    interleave: u64,
    /// Block cache in MiB. Default: the server's, an eighth of the memory limit.
    #[arg(long)]
    block_cache_mb: Option<usize>,
    /// `nosync` acknowledges before fsync: for comparison only.
    #[arg(long, default_value = "sync")]
    durability: DurabilityArg,
    #[arg(value_enum, default_value = "all")]
    phase: Phase,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum DurabilityArg {
    Sync,
    Nosync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Phase {
    All,
    Fill,
    Append,
    Read,
    Reopen,
    Disk,
}

/// The server's allocator (server/src/main.rs), so that the engine is measured as it runs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn options(args: &Args) -> EngineOptions {
    let mut tuning = Tuning::default();
    if let Some(mb) = args.block_cache_mb {
        tuning.block_cache_bytes = mb << 20;
    }
    EngineOptions {
        durability: match args.durability {
            DurabilityArg::Sync => Durability::Sync,
            DurabilityArg::Nosync => Durability::NoSyncUnsafe,
        },
        tuning,
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir).context("create the working directory")?;
    println!(
        "engine-load: {} durability, store of {} events in {}, block cache {} MiB",
        durability_name(&args),
        args.events,
        args.dir.display(),
        options(&args).tuning.block_cache_bytes >> 20
    );
    let read_store = args.dir.join("read-store");
    let p = args.phase;
    if matches!(p, Phase::All | Phase::Append) {
        append_grid(&args)?;
    }
    if matches!(p, Phase::All | Phase::Fill) {
        fill(&args, &read_store)?;
    }
    if matches!(p, Phase::All | Phase::Read) {
        reads(&args, &read_store)?;
    }
    if matches!(p, Phase::All | Phase::Reopen) {
        reopen(&args, &read_store)?;
    }
    if matches!(p, Phase::All | Phase::Disk) {
        disk(&args, &read_store)?;
    }
    Ok(())
}

fn durability_name(args: &Args) -> &'static str {
    match args.durability {
        DurabilityArg::Sync => "sync (fsync before ack)",
        DurabilityArg::Nosync => "NOSYNC (unsafe, comparison only)",
    }
}

/// Appends for `seconds` with `writers` threads of `batch`-event requests, on a fresh store.
fn append_grid(args: &Args) -> Result<()> {
    println!(
        "\n## append: fresh store per configuration, {} s each",
        args.seconds
    );
    println!("| batch | writers | events/s | requests/s | request latency |");
    println!("|---:|---:|---:|---:|---|");
    for &batch in &args.batches {
        for &writers in &args.writers {
            let dir = args.dir.join(format!("append-{batch}-{writers}"));
            let _ = std::fs::remove_dir_all(&dir);
            let engine = Arc::new(Engine::open(&dir, options(args)).context("open")?);
            let shape = Shape {
                seed: batch * 1_000 + writers,
                ..Shape::default()
            };
            let next = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let threads: Vec<_> = (0..writers)
                .map(|_| {
                    let (engine, next, stop) = (engine.clone(), next.clone(), stop.clone());
                    let batches = prepared_batches(shape, args.interleave, move || {
                        let first = next.fetch_add(batch, Ordering::Relaxed);
                        first..first + batch
                    });
                    std::thread::spawn(move || -> Result<Histogram<u64>> {
                        let mut h = latency_histogram();
                        while !stop.load(Ordering::Relaxed) {
                            let events = batches.recv().context("the event generator stopped")?;
                            let t = Instant::now();
                            engine.append(events)?;
                            h.saturating_record(t.elapsed().as_micros() as u64);
                        }
                        Ok(h)
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(args.seconds));
            stop.store(true, Ordering::Relaxed);
            let mut h = latency_histogram();
            for t in threads {
                h.add(t.join().expect("writer thread")?)?;
            }
            let secs = started.elapsed().as_secs_f64();
            let events = engine.stats().events as f64;
            println!(
                "| {batch} | {writers} | {:.0} | {:.0} | {} |",
                events / secs,
                h.len() as f64 / secs,
                percentiles_ms(&h)
            );
            drop(engine);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

/// Batches of generated events, built on a thread of their own while the writer waits for its last
/// append, as a server parses the next request while the engine commits the last one: the figures
/// are the engine's, not the generator's (building 1,000 events takes about a millisecond). The
/// generator stops when the receiver is dropped.
fn prepared_batches(
    shape: Shape,
    interleave: u64,
    mut next_range: impl FnMut() -> std::ops::Range<u64> + Send + 'static,
) -> crossbeam_channel::Receiver<Vec<trackstore_engine::Event>> {
    let (tx, rx) = crossbeam_channel::bounded(2);
    std::thread::spawn(move || {
        loop {
            let events: Vec<_> = next_range()
                .map(|n| shape.nth_interleaved(n, interleave))
                .collect();
            if events.is_empty() || tx.send(events).is_err() {
                break;
            }
        }
    });
    rx
}

fn fill(args: &Args, store: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(store);
    let engine = Engine::open(store, options(args)).context("open")?;
    let shape = Shape::default();
    let started = Instant::now();
    let batch = 1_000u64;
    let total = args.events;
    let mut from = 0;
    let batches = prepared_batches(shape, args.interleave, move || {
        let range = from..(from + batch).min(total);
        from = range.end;
        range
    });
    let mut n = 0;
    while n < args.events {
        let events = batches.recv().context("the event generator stopped")?;
        n += events.len() as u64;
        engine.append(events)?;
        if n % 1_000_000 == 0 {
            println!(
                "  filled {n} events, {:.0} events/s",
                n as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\n## fill: {n} events in {secs:.1} s = {:.0} events/s (batches of 1000, one writer, {})",
        n as f64 / secs,
        match args.interleave {
            0 => "order after order".to_owned(),
            k => format!("{k} orders interleaved"),
        }
    );
    engine.flush()?;
    Ok(())
}

fn reads(args: &Args, store: &Path) -> Result<()> {
    let engine = Arc::new(
        Engine::open(store, options(args))
            .context("open the read store (run the fill phase first)")?,
    );
    let events = engine.stats().events;
    if events == 0 {
        bail!("the read store is empty: run the fill phase first");
    }
    let shape = Shape::default();
    let orders = events / shape.events_per_order;
    println!(
        "\n## reads: store of {events} events, {orders} orders, {} s each",
        args.read_seconds
    );
    println!("| query | threads | ops/s | latency |");
    println!("|---|---:|---:|---|");
    type Query = fn(&Engine, &Shape, u64, &mut SmallRng) -> Result<usize>;
    let queries: [(&str, Query); 3] = [
        ("order state", |e, s, orders, rng| {
            let o = rng.random_range(0..orders);
            Ok(e.order_state(&s.order_id(o))?.map(|_| 1).unwrap_or(0))
        }),
        ("timeline, 20 events", |e, s, orders, rng| {
            let o = rng.random_range(0..orders);
            Ok(e.order_timeline(&s.order_id(o), Direction::Asc, 20, None)?
                .items
                .len())
        }),
        ("time range, 1 minute (limit 10000)", |e, s, _, rng| {
            let from = s.start.as_millis() + rng.random_range(0..s.span_ms);
            let q = TimeRange {
                from: Timestamp::from_millis(from).expect("in range"),
                to: Timestamp::from_millis(from + 60_000).expect("in range"),
                statuses: vec![],
                carrier: None,
            };
            Ok(e.time_range(&q, 10_000, None)?.items.len())
        }),
    ];
    for (name, query) in queries {
        for threads in [1u64, 2] {
            let stop = Arc::new(AtomicBool::new(false));
            let started = Instant::now();
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (engine, stop) = (engine.clone(), stop.clone());
                    std::thread::spawn(move || -> Result<(Histogram<u64>, u64)> {
                        let mut rng = SmallRng::seed_from_u64(t);
                        let mut h = latency_histogram();
                        let mut items = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let t0 = Instant::now();
                            items += query(&engine, &shape, orders, &mut rng)? as u64;
                            h.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                        }
                        Ok((h, items))
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(args.read_seconds));
            stop.store(true, Ordering::Relaxed);
            let mut h = latency_histogram();
            let mut items = 0;
            for t in handles {
                let (th, ti) = t.join().expect("reader thread")?;
                h.add(th)?;
                items += ti;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "| {name} | {threads} | {:.0} | {} (avg {:.0} items) |",
                h.len() as f64 / secs,
                percentiles_ms(&h),
                items as f64 / h.len().max(1) as f64
            );
        }
    }
    Ok(())
}

fn reopen(args: &Args, store: &Path) -> Result<()> {
    let started = Instant::now();
    let engine = Engine::open(store, options(args)).context("open")?;
    let last = engine.stats().last_lsn;
    let first = engine.event(last)?.context("the last event is readable")?;
    let state = engine.order_state(&first.event.order_id)?;
    let elapsed = started.elapsed();
    anyhow::ensure!(state.is_some(), "order of the last event has a state");
    println!(
        "\n## reopen: {} events, open → first served read in {:.3} s",
        last.0,
        elapsed.as_secs_f64()
    );
    Ok(())
}

fn disk(args: &Args, store: &Path) -> Result<()> {
    let engine = Engine::open(store, options(args)).context("open")?;
    let events = engine.stats().events;
    // A sample of the log (one `read_log` page), averaged over what was actually read.
    let mut json_bytes = 0u64;
    let sample: Vec<_> = engine
        .read_log(Lsn(1), 100_000)?
        .into_iter()
        .filter_map(trackstore_engine::LogEntry::into_event)
        .collect();
    for e in &sample {
        json_bytes += serde_json::to_vec(&e.event.to_json())?.len() as u64;
    }
    let json_avg = json_bytes as f64 / sample.len().max(1) as f64;
    let started = Instant::now();
    engine.flush()?;
    engine.compact()?;
    let compact_secs = started.elapsed().as_secs_f64();
    drop(engine);
    let bytes = dir_bytes(&trackstore_engine::db_path(store))?;
    let per_event = bytes as f64 / events.max(1) as f64;
    println!(
        "\n## disk: {events} events, {:.1} MiB after full compaction ({compact_secs:.0} s) = {per_event:.1} bytes/event; \
         the client JSON averages {json_avg:.1} bytes/event: ratio {:.2}",
        bytes as f64 / (1 << 20) as f64,
        per_event / json_avg
    );
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
