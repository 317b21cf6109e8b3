//! Microbenchmarks of the engine's hot paths: key encoding, request parsing + validation, value
//! encoding, and applying a batch of 1,000 events (planning + RocksDB write, without fsync so the
//! figure is CPU cost, not disk latency).

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use trackstore_bench::workload::Shape;
use trackstore_engine::event::{BodyFormat, parse_request};
use trackstore_engine::keys::{self, TimePos};
use trackstore_engine::{Durability, Engine, EngineOptions, Lsn, StoredEvent, Timestamp, codec};

fn key_encoding(c: &mut Criterion) {
    let pos = TimePos {
        at: Timestamp::from_millis(1_793_491_200_000).expect("in range"),
        lsn: Lsn(123_456_789),
    };
    let mut g = c.benchmark_group("keys");
    g.throughput(Throughput::Elements(1));
    g.bench_function("by_order encode", |b| {
        b.iter(|| keys::by_order(std::hint::black_box("ord-000123456"), pos))
    });
    let k = keys::by_order("ord-000123456", pos);
    g.bench_function("by_order decode", |b| {
        b.iter(|| keys::decode_by_order(std::hint::black_box(&k)).map(|(_, p)| p))
    });
    g.bench_function("by_time encode", |b| {
        b.iter(|| keys::by_time(std::hint::black_box(pos)))
    });
    g.finish();
}

fn validation(c: &mut Criterion) {
    let shape = Shape::default();
    let events: Vec<_> = (0..100).map(|n| shape.nth(n).to_json()).collect();
    let body = serde_json::to_vec(&events).expect("json");
    let now = Timestamp::now();
    let mut g = c.benchmark_group("validation");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse + validate 100 events (JSON array)", |b| {
        b.iter(|| parse_request(std::hint::black_box(&body), BodyFormat::Json, now).expect("valid"))
    });
    // The hot path of single-event POSTs: one ~300-byte object (step 5: carrier, location, eta).
    let one = serde_json::to_vec(&shape.nth(5).to_json()).expect("json");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse + validate 1 event (JSON object)", |b| {
        b.iter(|| parse_request(std::hint::black_box(&one), BodyFormat::Json, now).expect("valid"))
    });
    let events: Vec<_> = (0..1_000).map(|n| shape.nth(n).to_json()).collect();
    let big = serde_json::to_vec(&events).expect("json");
    g.throughput(Throughput::Elements(1_000));
    g.bench_function("parse + validate 1000 events (JSON array)", |b| {
        b.iter(|| parse_request(std::hint::black_box(&big), BodyFormat::Json, now).expect("valid"))
    });
    g.finish();

    let stored = StoredEvent {
        lsn: Lsn(1),
        received_at: now,
        event: shape.nth(5),
    };
    let bytes = codec::encode_event(&stored);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("event encode", |b| {
        b.iter(|| codec::encode_event(std::hint::black_box(&stored)))
    });
    g.bench_function("event decode", |b| {
        b.iter(|| codec::decode_event(std::hint::black_box(&bytes)).expect("valid"))
    });
    g.finish();
}

fn batch_apply(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        dir.path(),
        EngineOptions {
            durability: Durability::NoSyncUnsafe,
            ..EngineOptions::default()
        },
    )
    .expect("open");
    let shape = Shape::default();
    let mut next = 0u64;
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(1_000));
    g.sample_size(20);
    g.bench_function("append 1000 new events (nosync)", |b| {
        b.iter_batched(
            || {
                let events: Vec<_> = (next..next + 1_000).map(|n| shape.nth(n)).collect();
                next += 1_000;
                events
            },
            |events| engine.append(events).expect("append"),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, key_encoding, validation, batch_apply);
criterion_main!(benches);
