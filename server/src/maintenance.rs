//! Data protection jobs: the retention sweep (primary only: its removals replicate) and the purge that
//! makes removed data physically leave the disk (every node, on its own store).
//!
//! Retention runs in steps of at most `retention_step_events` events, each one short write on the
//! engine's writer thread, with a pause between steps, so ingest keeps its throughput while a large
//! backlog expires. The purge rewrites the whole store (see `Engine::purge`), so it runs at most once
//! at a time, on demand (`POST /v1/admin/purge`) or every `purge_interval` while the engine says a
//! purge is owed (`Engine::purge_pending`, durable: a restart, a failed purge or a store received as
//! a snapshot still owes it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use trackstore_engine::{Engine, Timestamp};

use crate::metrics::Metrics;

/// Pause between two retention steps, at least: leaves the writer to client appends.
const RETENTION_STEP_PAUSE: Duration = Duration::from_millis(20);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceConfig {
    /// Events older than this (by `occurred_at`) are removed; None keeps everything.
    pub retention: Option<Duration>,
    pub retention_interval: Duration,
    pub retention_step_events: usize,
    /// A retention step occupies the engine's single writer (each removed event costs about as much
    /// as 3-4 ingested ones, bench/RESULTS.md); after each one the sweep pauses so that it takes at
    /// most this percentage of the writer's time. A sweep need only outpace the day's ingest on
    /// average (10M events a day is 116/s); at 5% it removes about 2,000 events/s.
    pub retention_writer_percent: u32,
    /// Purge after removals at most this often; None: only on demand.
    pub purge_interval: Option<Duration>,
}

#[derive(Debug)]
pub struct Maintenance {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    config: MaintenanceConfig,
    /// True while a purge runs (owned by its blocking task, see `purge`).
    purging: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    #[error("a purge is already running")]
    Running,
    #[error("purge failed: {0}")]
    Engine(#[from] trackstore_engine::Error),
    #[error("purge task failed: {0}")]
    Task(String),
}

impl Maintenance {
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        config: MaintenanceConfig,
    ) -> Maintenance {
        Maintenance {
            engine,
            metrics,
            config,
            purging: Arc::default(),
        }
    }

    /// Runs the purge now unless one is running. Returns how long it took. The purge belongs to its
    /// blocking task: if the caller goes away (a request timeout), it runs to the end and still
    /// holds off other purges until then.
    pub async fn purge(&self) -> Result<Duration, PurgeError> {
        if self.purging.swap(true, Ordering::AcqRel) {
            return Err(PurgeError::Running);
        }
        let running = PurgeRunning(self.purging.clone());
        let (engine, metrics) = (self.engine.clone(), self.metrics.clone());
        let task = tokio::task::spawn_blocking(move || {
            let _running = running;
            let started = Instant::now();
            let result = engine.purge();
            let took = started.elapsed();
            match &result {
                Ok(()) => {
                    metrics.purges.get_or_create(&ok_label()).inc();
                    metrics.purge_seconds.observe(took.as_secs_f64());
                    tracing::info!(
                        seconds = took.as_secs_f64(),
                        "purge done: removed data is off the disk"
                    );
                }
                Err(e) => {
                    metrics.purges.get_or_create(&failed_label()).inc();
                    tracing::error!(error = %e, "purge failed");
                }
            }
            result.map(|()| took)
        });
        Ok(task.await.map_err(|e| PurgeError::Task(e.to_string()))??)
    }

    /// One sweep: retention steps until nothing old is left (or shutdown). Returns events removed.
    async fn sweep(&self, age: Duration, shutdown: &watch::Receiver<bool>) -> u64 {
        let now = Timestamp::now().as_millis();
        let Some(before) = Timestamp::from_millis(now.saturating_sub(age.as_millis() as i64))
        else {
            return 0;
        };
        let mut total = 0;
        while !*shutdown.borrow() {
            let engine = self.engine.clone();
            let step = self.config.retention_step_events;
            let started = Instant::now();
            let report =
                tokio::task::spawn_blocking(move || engine.expire_before(before, step)).await;
            match report {
                Ok(Ok(r)) if r.events > 0 => {
                    total += r.events;
                    self.metrics.retention_events.inc_by(r.events);
                    self.metrics.retention_orders.inc_by(r.orders);
                    let pause = step_pause(started.elapsed(), self.config.retention_writer_percent);
                    tokio::time::sleep(pause).await;
                }
                Ok(Ok(_)) => break,
                // A replica (or a fenced node): retention is the primary's; its removals arrive.
                Ok(Err(trackstore_engine::Error::ReadOnly(_))) => break,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "retention step failed");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "retention task failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(events = total, before = %before, "retention sweep removed events");
        }
        total
    }

    /// The background loop: retention sweeps and purges after removals, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let tick = self
            .config
            .retention
            .map(|_| self.config.retention_interval)
            .into_iter()
            .chain(self.config.purge_interval)
            .min();
        let Some(tick) = tick else { return };
        let mut last_purge = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if let Some(age) = self.config.retention {
                self.sweep(age, &shutdown).await;
            }
            if let Some(every) = self.config.purge_interval
                && last_purge.elapsed() >= every
                && self.engine.purge_pending().is_some()
            {
                last_purge = Instant::now();
                let _ = self.purge().await;
            }
        }
    }
}

/// The pause after a step that took `took`, so that steps take at most `percent`% of the time.
fn step_pause(took: Duration, percent: u32) -> Duration {
    let percent = percent.clamp(1, 100);
    (took * (100 - percent) / percent).max(RETENTION_STEP_PAUSE)
}

/// Clears the running flag when the purge task ends, however it ends.
struct PurgeRunning(Arc<AtomicBool>);

impl Drop for PurgeRunning {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn ok_label() -> crate::metrics::OutcomeLabels {
    crate::metrics::OutcomeLabels { outcome: "ok" }
}

fn failed_label() -> crate::metrics::OutcomeLabels {
    crate::metrics::OutcomeLabels { outcome: "failed" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_take_at_most_their_share_of_the_time() {
        let ms = Duration::from_millis;
        assert_eq!(step_pause(ms(100), 5), ms(1_900));
        assert_eq!(step_pause(ms(100), 10), ms(900));
        assert_eq!(step_pause(ms(100), 50), ms(100));
        // Short steps still leave the writer a moment.
        assert_eq!(step_pause(ms(1), 50), RETENTION_STEP_PAUSE);
        assert_eq!(step_pause(ms(10), 100), RETENTION_STEP_PAUSE);
    }
}
