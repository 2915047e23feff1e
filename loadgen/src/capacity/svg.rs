//! p99 latency against offered rate, one curve per target, log-log, with
//! the objective drawn across (hand-written SVG, like the latency plots).

use std::fmt::Write;

use super::{Cell, Verdict};
use crate::report::svg::{escape, open, COLORS};

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// The plot of `cells` (one workload, several targets).
pub fn render(title: &str, cells: &[&Cell], slo_ms: f64) -> String {
    let points: Vec<(f64, f64)> = cells
        .iter()
        .flat_map(|cell| cell.steps.iter())
        .filter(|step| step.verdict != Verdict::Failed && step.p99_us > 0.0)
        .map(|step| (step.offered_per_s, step.p99_us))
        .collect();
    let decades = |values: &mut dyn Iterator<Item = f64>| {
        let (low, high) = values.fold((f64::INFINITY, 0.0f64), |(l, h), v| (l.min(v), h.max(v)));
        let low = if low.is_finite() { low } else { 1.0 };
        (
            low.max(1e-3).log10().floor() as i32,
            high.max(low * 10.0).log10().ceil() as i32,
        )
    };
    let (x_low, x_high) = decades(&mut points.iter().map(|p| p.0));
    let (y_low, y_high) = decades(&mut points.iter().map(|p| p.1).chain([slo_ms * 1000.0]));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |rate: f64| {
        LEFT + plot_w * (rate.max(1e-3).log10() - f64::from(x_low)) / f64::from(x_high - x_low)
    };
    let y_of = |us: f64| {
        TOP + plot_h * (1.0 - (us.max(1e-3).log10() - f64::from(y_low)) / f64::from(y_high - y_low))
    };

    let mut out = String::new();
    open(&mut out, (WIDTH, HEIGHT), LEFT + plot_w / 2.0, title);
    for decade in x_low..=x_high {
        let x = x_of(10f64.powi(decade));
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0,
            rate_label(10f64.powi(decade))
        );
    }
    for decade in y_low..=y_high {
        let y = y_of(10f64.powi(decade));
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            us_label(10f64.powi(decade))
        );
    }
    let slo_y = y_of(slo_ms * 1000.0);
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{slo_y:.1}" x2="{:.1}" y2="{slo_y:.1}" stroke="#000" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}">p99 objective</text>"##,
        LEFT + plot_w,
        LEFT + 4.0,
        slo_y - 4.0
    );
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered publications/s (log)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">p99 latency (log)</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, cell) in cells.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let curve: Vec<String> = cell
            .steps
            .iter()
            .filter(|step| step.verdict != Verdict::Failed && step.p99_us > 0.0)
            .map(|step| format!("{:.1},{:.1}", x_of(step.offered_per_s), y_of(step.p99_us)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            curve.join(" ")
        );
        for step in cell
            .steps
            .iter()
            .filter(|s| s.verdict != Verdict::Failed && s.p99_us > 0.0)
        {
            // Filled: held; hollow: did not.
            let fill = if step.verdict == Verdict::Held {
                color
            } else {
                "white"
            };
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" stroke="{color}" fill="{fill}"/>"#,
                x_of(step.offered_per_s),
                y_of(step.p99_us)
            );
        }
        let legend_y = TOP + 20.0 * i as f64 + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            WIDTH - RIGHT + 15.0,
            WIDTH - RIGHT + 40.0,
            WIDTH - RIGHT + 45.0,
            legend_y + 4.0,
            escape(&cell.target.label)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11">filled: held; hollow: did not</text>"#,
        WIDTH - RIGHT + 15.0,
        TOP + 20.0 * cells.len() as f64 + 20.0
    );
    out.push_str("</svg>\n");
    out
}

fn rate_label(rate: f64) -> String {
    match rate {
        r if r >= 1e6 => format!("{:.0}M", r / 1e6),
        r if r >= 1e3 => format!("{:.0}k", r / 1e3),
        r => format!("{r:.0}"),
    }
}

fn us_label(us: f64) -> String {
    match us {
        u if u >= 1e6 => format!("{:.0}s", u / 1e6),
        u if u >= 1e3 => format!("{:.0}ms", u / 1e3),
        u if u >= 1.0 => format!("{u:.0}us"),
        u => format!("{u}us"),
    }
}
