//! trackstore's benchmarks. The library holds what the load programs share: a deterministic generator
//! of realistic delivery events ([`workload`]) and latency summaries ([`report`]) for the engine, and
//! the HTTP load harness ([`load`]).
//!
//! Binaries: `engine-load` (the engine without the network: append throughput and latency by batch
//! size and concurrency, read throughput, reopen time, bytes on disk) and `trackload` (the server over
//! HTTP/1.1, HTTP/2 and HTTP/3: scenarios, open or closed loop; see `docs/trackload.md`). Criterion
//! benches in `benches/`.
//! Recorded figures and their exact commands are in `bench/RESULTS.md`.

pub mod load;
pub mod report;
pub mod workload;
