//! The step test's chart: p99 latency against connections, relay and floor, as an SVG line
//! chart (logarithmic latency axis, so that both fit).

use std::fmt::Write;

use crate::scenarios::StepResult;

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// The SVG document.
pub(crate) fn step_chart(relay: &StepResult, floor: &StepResult) -> String {
    let points = |r: &StepResult| -> Vec<(f64, f64)> {
        r.steps
            .iter()
            .map(|s| (s.connections as f64, s.latency.p99_ms.max(0.01)))
            .collect()
    };
    let (rp, fp) = (points(relay), points(floor));
    let max_x = rp.iter().chain(&fp).map(|p| p.0).fold(1.0, f64::max);
    // Decades from 0.1 ms up to past the largest latency (and at least 1 s, the verdict's line).
    let max_y = rp.iter().chain(&fp).map(|p| p.1).fold(1000.0, f64::max);
    let (lo, hi) = (-1.0_f64, max_y.log10().ceil());
    let x = |v: f64| LEFT + v / max_x * (W - LEFT - RIGHT);
    let y = |ms: f64| TOP + (hi - ms.log10().clamp(lo, hi)) / (hi - lo) * (H - TOP - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = write!(
        svg,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Step test: p99 latency of a 2 KB echo a second per connection</text>"#,
        W / 2.0
    );
    // Latency axis: one line per decade.
    let mut decade = lo;
    while decade <= hi {
        let ms = 10f64.powf(decade);
        let yy = y(ms);
        let label = if ms >= 1000.0 {
            format!("{} s", ms / 1000.0)
        } else {
            format!("{ms} ms")
        };
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        );
        decade += 1.0;
    }
    // The verdict's limit.
    let one_s = y(1000.0);
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{}" y1="{one_s:.1}" y2="{one_s:.1}" stroke="#c00" stroke-dasharray="4 3"/>"##,
        W - RIGHT
    );
    // Connections axis: the steps.
    for &(cx, _) in &rp {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{cx}</text>"#,
            x(cx),
            H - BOTTOM + 16.0
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">connections</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0
    );
    for (points, color, name, row) in [(&rp, "#1f6feb", "relay", 0.0), (&fp, "#888", "floor", 1.0)]
    {
        let path: Vec<String> = points
            .iter()
            .map(|&(px, py)| format!("{:.1},{:.1}", x(px), y(py)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for &(px, py) in points.iter() {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(px),
                y(py)
            );
        }
        let ly = TOP + 14.0 + row * 16.0;
        let _ = write!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{name}</text>"#,
            LEFT + 10.0,
            LEFT + 30.0,
            LEFT + 36.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
