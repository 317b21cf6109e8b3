//! Latency summaries from HdrHistogram, in microseconds.

use hdrhistogram::Histogram;

/// A histogram of latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// `p50 … max` in milliseconds, for one table cell.
pub fn percentiles_ms(h: &Histogram<u64>) -> String {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1_000.0;
    format!(
        "p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1_000.0
    )
}
