//! trackstore's benchmarks. The library holds what the load programs share: a deterministic generator
//! of realistic delivery events ([`workload`]) and latency summaries ([`report`]).
//!
//! Binaries: `engine-load` (the engine without the network: append throughput and latency by batch
//! size and concurrency, read throughput, reopen time, bytes on disk). Criterion benches in `benches/`.
//! Recorded figures and their exact commands are in `bench/RESULTS.md`.

pub mod report;
pub mod workload;
