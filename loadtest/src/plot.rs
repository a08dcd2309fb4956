//! A small SVG writer for the run's timeline: delivered messages per second, and p50/p99
//! latency per second. (Hand-written to avoid a plotting library's font stack; see
//! docs/benchmarks.md.)

use crate::stats::Report;
use std::fmt::Write;

const W: f64 = 900.0;
const H: f64 = 260.0;
const PAD: f64 = 55.0;

fn chart(out: &mut String, y0: f64, title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) {
    let n = series.iter().map(|s| s.2.len()).max().unwrap_or(0).max(2);
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |i: usize| PAD + (W - 2.0 * PAD) * i as f64 / (n - 1) as f64;
    let y = |v: f64| y0 + H - PAD + -(H - 2.0 * PAD) * v / max;
    let _ = writeln!(
        out,
        r#"<text x="{PAD}" y="{}" font-family="sans-serif" font-size="14">{title}</text>"#,
        y0 + 20.0
    );
    let _ = writeln!(
        out,
        r#"<line x1="{PAD}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        y0 + H - PAD,
        W - PAD,
        y0 + H - PAD
    );
    let _ = writeln!(
        out,
        r#"<line x1="{PAD}" y1="{}" x2="{PAD}" y2="{}" stroke="black"/>"#,
        y0 + PAD,
        y0 + H - PAD
    );
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="4" y="{:.1}" font-family="sans-serif" font-size="10">{:.1} {unit}</text><line x1="{PAD}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#ddd"/>"##,
            y(v) + 3.0,
            v,
            y(v),
            W - PAD,
            y(v)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-family="sans-serif" font-size="10">seconds</text>"#,
        W / 2.0,
        y0 + H - PAD + 20.0
    );
    for (k, (name, color, values)) in series.iter().enumerate() {
        let points: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-family="sans-serif" font-size="11" fill="{color}">{name}</text>"#,
            W - PAD - 160.0 + 80.0 * k as f64,
            y0 + 20.0
        );
    }
}

pub fn svg(report: &Report, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{}" viewBox="0 0 {W} {}">"#,
        2.0 * H + 30.0,
        2.0 * H + 30.0
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{PAD}" y="18" font-family="sans-serif" font-size="16">{title}</text>"#
    );
    let delivered: Vec<f64> = report
        .timeline_delivered
        .iter()
        .map(|n| *n as f64)
        .collect();
    chart(
        &mut out,
        20.0,
        "delivered messages per second",
        "/s",
        &[("delivered", "#1f77b4", delivered)],
    );
    let pct = |q: f64| -> Vec<f64> {
        report
            .timeline
            .iter()
            .map(|h| {
                let h = h.to_histogram();
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / 1000.0
                }
            })
            .collect()
    };
    chart(
        &mut out,
        20.0 + H,
        "publish-to-receive latency",
        "ms",
        &[("p50", "#2ca02c", pct(0.5)), ("p99", "#d62728", pct(0.99))],
    );
    out.push_str("</svg>\n");
    out
}
