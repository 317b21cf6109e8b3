//! A latency-by-percentile plot in plain SVG, in the style of HdrHistogram's plotter: the x axis is
//! logarithmic in `1 / (1 − percentile)` (0%, 90%, 99%, 99.9%, ... equally spaced), so the tail gets
//! as much room as the median; the y axis is latency in milliseconds, linear. One line per series.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" axis maximum at or above `v`: 1, 2 or 5 times a power of ten.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * p)
}

/// The percentile label of decade `d` (0 → "0%", 1 → "90%", 3 → "99.9%").
fn decade_label(d: u32) -> String {
    match d {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        _ => format!("99.{}%", "9".repeat(d as usize - 2)),
    }
}

/// The plot of `series` (name, microsecond histogram); empty histograms are left out.
pub fn render(title: &str, series: &[(String, &Histogram<u64>)]) -> String {
    let series: Vec<&(String, &Histogram<u64>)> =
        series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let count_max = series.iter().map(|(_, h)| h.len()).max().unwrap_or(1);
    // As many decades as the largest series can resolve, 2 to 6 (99.9999%).
    let decades = ((count_max as f64).log10().ceil() as u32).clamp(2, 6);
    let x_max = f64::from(decades);
    let y_top = nice_ceiling(
        series
            .iter()
            .map(|(_, h)| h.max() as f64 / 1_000.0)
            .fold(0.0, f64::max)
            * 1.05,
    );
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |decade: f64| LEFT + decade.min(x_max) / x_max * plot_w;
    let y = |ms: f64| TOP + plot_h - (ms / y_top).min(1.0) * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="28" font-size="16" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Grid and axis labels.
    for d in 0..=decades {
        let gx = x(f64::from(d));
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            decade_label(d)
        );
    }
    for i in 0..=5 {
        let ms = y_top * f64::from(i) / 5.0;
        let gy = y(ms);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            gy + 4.0,
            trim_float(ms)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency (ms)</text>"#,
        TOP + plot_h / 2.0
    );
    // Series.
    for (i, (name, h)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut points = String::new();
        for v in h.iter_quantiles(5) {
            let q = v.quantile_iterated_to();
            let decade = if q >= 1.0 {
                x_max
            } else {
                (1.0 / (1.0 - q)).log10()
            };
            let ms = v.value_iterated_to() as f64 / 1_000.0;
            let _ = write!(points, "{:.1},{:.1} ", x(decade), y(ms));
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.trim_end()
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{} (max {} ms)</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name),
            trim_float(h.max() as f64 / 1_000.0)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// A number without trailing zeros (up to 3 decimals).
fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::latency_histogram;

    #[test]
    fn plots_each_series_on_a_log_percentile_axis() {
        let mut a = latency_histogram();
        let mut b = latency_histogram();
        for i in 1..=5_000u64 {
            a.record(i).unwrap();
            b.record(2 * i).unwrap();
        }
        let svg = render(
            "t <1>",
            &[
                ("order".into(), &a),
                ("ingest".into(), &b),
                ("none".into(), &latency_histogram()),
            ],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "empty series are left out"
        );
        assert!(svg.contains("t &lt;1&gt;"));
        for label in ["0%", "90%", "99%", "99.9%", "99.99%"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{label}");
        }
        assert!(!svg.contains(">99.999%<"), "5,000 values resolve 4 decades");
        assert!(svg.contains("ingest (max 10.007 ms)"), "{svg}");
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.07), 0.1);
        assert_eq!(decade_label(4), "99.99%");
    }
}
