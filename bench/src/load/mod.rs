//! `trackload`, the load harness of the HTTP API (issue 5): realistic, seeded traffic over HTTP/1.1,
//! HTTP/2 or HTTP/3, in an open loop at a fixed arrival rate (latency from each call's intended send
//! time: no coordinated omission) or a closed loop, with a read-your-writes check, HdrHistogram
//! percentiles, an `.hgrm` file and an SVG plot. `docs/trackload.md` is the user's guide.
//!
//! Modules, along the data path:
//! - [`rng`]: the fixed seeded generator (SplitMix64) every random choice comes from;
//! - [`traffic`]: the traffic (order lifecycles, late, reordered and retried events, the read mix);
//! - [`sched`]: the open-loop schedule and the latency it charges, pure;
//! - [`run`]: connections (`trackstore-client`), lanes, dispatcher, seed phase, SSE subscribers;
//! - [`ryw`]: the read-your-writes table;
//! - [`stats`]: histograms and error counts;
//! - [`output`], [`hgrm`], [`svg`]: the table, `--json`, the `.hgrm` file and the plot.
//!
//! ```no_run
//! # async fn demo() -> Result<(), trackstore_bench::load::run::LoadError> {
//! use std::time::Duration;
//! use trackstore_bench::load::traffic::TrafficConfig;
//! use trackstore_bench::load::run::{run, Load, Progress, RunConfig, Scenario};
//! let cfg = RunConfig {
//!     scenario: Scenario::Mixed,
//!     server: "http://127.0.0.1:8080".into(),
//!     proto: trackstore_client::Proto::H1,
//!     trust: None,
//!     token: None,
//!     load: Load::Open { rate: 1_000.0, queue: 1_000 },
//!     connections: 16,
//!     streams: 1,
//!     duration: Some(Duration::from_secs(10)),
//!     requests: None,
//!     timeout: Duration::from_secs(30),
//!     traffic: TrafficConfig::new(1, "demo", 1_795_000_000_000),
//!     seed_orders: 0,
//!     subscribers: 0,
//!     progress: Progress::Off,
//! };
//! let outcome = run(cfg.clone()).await?;
//! println!("{}", trackstore_bench::load::output::table(&trackstore_bench::load::output::summarize(&cfg, &outcome)));
//! # Ok(())
//! # }
//! ```

pub mod hgrm;
pub mod output;
pub mod rng;
pub mod run;
pub mod ryw;
pub mod sched;
pub mod stats;
pub mod svg;
pub mod traffic;
