//! The HdrHistogram percentile distribution text (`.hgrm`), as Java's
//! `Histogram.outputPercentileDistribution(out, 5, 1000.0)` prints it: values in milliseconds from a
//! microsecond histogram, five ticks per half distance to 100%, the mean, standard deviation, max,
//! total count and bucket geometry in the footer. HdrHistogram's plotter and other tools read it.
//!
//! ```text
//!        Value     Percentile TotalCount 1/(1-Percentile)
//!
//!        0.101 0.000000000000          1           1.00
//!        ...
//!       41.215 1.000000000000     100000
//! #[Mean    =        1.234, StdDeviation   =        0.567]
//! #[Max     =       41.215, Total count    =       100000]
//! #[Buckets =           22, SubBuckets     =         2048]
//! ```

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Ticks per half distance to 100% (the Java default in its examples).
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Microseconds per output unit (milliseconds).
const SCALE: f64 = 1_000.0;

/// The `.hgrm` text of a microsecond histogram (an empty histogram gives the header and footer).
pub fn render(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / SCALE;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    };
    let sub_buckets = 2u64.pow((2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil() as u32);
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {stdev:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        h.buckets()
    );
    out
}

/// One line of a percentile distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Line {
    pub value_ms: f64,
    pub quantile: f64,
    pub total_count: u64,
}

/// A parsed `.hgrm` text.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    pub lines: Vec<Line>,
    pub max_ms: f64,
    pub total_count: u64,
}

impl Distribution {
    /// Bounds, from the file's lines, of the histogram's value at quantile `q`: the value of the last
    /// line whose total count is below `ceil(q · count)` (0 if none) and of the first line at or
    /// above it. The file samples the quantiles (and prints them rounded), so the exact value lies
    /// in `(low, high]`; lines are matched by their counts, which are exact.
    pub fn bracket(&self, q: f64) -> Option<(f64, f64)> {
        let needed = ((q * self.total_count as f64).ceil() as u64).max(1);
        let low = self
            .lines
            .iter()
            .rev()
            .find(|l| l.total_count < needed)
            .map_or(0.0, |l| l.value_ms);
        let high = self.lines.iter().find(|l| l.total_count >= needed)?;
        Some((low, high.value_ms))
    }
}

/// Parses the `.hgrm` text [`render`] writes (and Java's); `None` names no reason, the caller knows
/// the file.
pub fn parse(text: &str) -> Result<Distribution, String> {
    let mut lines = Vec::new();
    let (mut max_ms, mut total_count) = (None, None);
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#[Max") {
            let nums: Vec<&str> = rest.split(['=', ',', ']']).map(str::trim).collect();
            max_ms = nums.get(1).and_then(|s| s.parse::<f64>().ok());
            total_count = nums.get(3).and_then(|s| s.parse::<u64>().ok());
            continue;
        }
        if t.is_empty() || t.starts_with('#') || t.starts_with("Value") {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        let bad = || format!("bad .hgrm line {line:?}");
        if f.len() < 3 {
            return Err(bad());
        }
        lines.push(Line {
            value_ms: f[0].parse().map_err(|_| bad())?,
            quantile: f[1].parse().map_err(|_| bad())?,
            total_count: f[2].parse().map_err(|_| bad())?,
        });
    }
    Ok(Distribution {
        lines,
        max_ms: max_ms.ok_or("no #[Max ...] footer")?,
        total_count: total_count.ok_or("no total count in the footer")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::latency_histogram;

    #[test]
    fn renders_the_java_layout_and_parses_back() {
        let mut h = latency_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 10).unwrap();
        }
        let text = render(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("       Value     Percentile TotalCount 1/(1-Percentile)")
        );
        assert_eq!(lines.next(), Some(""));
        assert_eq!(
            lines.next(),
            Some("       0.010 0.000000000000          1           1.00")
        );
        assert!(
            text.contains("#[Max     =      100.031, Total count    =        10000]"),
            "{text}"
        );
        assert!(
            text.contains("#[Buckets =           22, SubBuckets     =         2048]"),
            "{text}"
        );
        let d = parse(&text).unwrap();
        assert_eq!(d.total_count, 10_000);
        assert_eq!(d.lines.last().unwrap().total_count, 10_000);
        assert_eq!(d.lines.last().unwrap().quantile, 1.0);
        assert!(
            d.lines
                .windows(2)
                .all(|w| w[0].quantile < w[1].quantile && w[0].value_ms <= w[1].value_ms)
        );
        for line in &d.lines {
            let value_us = (line.value_ms * 1_000.0).round() as u64;
            assert_eq!(h.count_between(0, value_us), line.total_count, "{line:?}");
            assert!(
                line.quantile <= line.total_count as f64 / 10_000.0 + 1e-9,
                "{line:?}"
            );
        }
        for q in [0.5, 0.9, 0.99, 0.999] {
            let (lo, hi) = d.bracket(q).unwrap();
            let v = h.value_at_quantile(q) as f64 / 1_000.0;
            assert!(lo < v && v <= hi, "q {q}: {lo} < {v} <= {hi}");
        }
        assert_eq!(d.max_ms, h.max() as f64 / 1_000.0);
        let empty = parse(&render(&latency_histogram())).unwrap();
        assert!(empty.lines.is_empty());
        assert_eq!(empty.total_count, 0);
    }
}
