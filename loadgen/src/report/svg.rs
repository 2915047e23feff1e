//! Latency by percentile, several targets overlaid, as a hand-written SVG
//! (no plotting dependency): x is the "nines" axis, log10(1 / (1 - q)),
//! labelled 0%, 90%, 99%, 99.9%, ...; y is latency on a log scale.

use std::fmt::Write;

use crate::summary::Summary;

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Curve colours, in target order.
pub(crate) const COLORS: [&str; 6] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// Most nines on the x axis (99.9999%).
const NINES_MAX: u32 = 6;

/// The plot of the given summaries' histograms.
pub fn render(title: &str, summaries: &[Summary]) -> String {
    let samples = summaries
        .iter()
        .map(|s| s.histogram.len())
        .max()
        .unwrap_or(0);
    // As many nines as the sample count supports, at least 4 (99.99%).
    let nines = ((samples.max(1) as f64).log10().ceil() as u32).clamp(4, NINES_MAX);
    let curves: Vec<Vec<(f64, f64)>> = summaries.iter().map(|s| curve(s, nines)).collect();
    let values = curves.iter().flatten().map(|&(_, us)| us);
    let low = values.clone().fold(f64::INFINITY, f64::min).max(0.1);
    let high = values.fold(0.0, f64::max).max(low * 10.0);
    let (decade_low, decade_high) = (low.log10().floor() as i32, high.log10().ceil() as i32);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |nine: f64| LEFT + plot_w * nine / f64::from(nines);
    let y_of = |us: f64| {
        let span = f64::from(decade_high - decade_low);
        TOP + plot_h * (1.0 - (us.max(0.1).log10() - f64::from(decade_low)) / span)
    };

    let mut out = String::new();
    open(&mut out, (WIDTH, HEIGHT), LEFT + plot_w / 2.0, title);
    let ticks = (0..=nines).map(|nine| (f64::from(nine), percentile_label(nine)));
    for (nine, label) in ticks.chain([(2f64.log10(), "50%".to_string())]) {
        let x = x_of(nine);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            TOP + plot_h + 18.0
        );
    }
    for decade in decade_low..=decade_high {
        let us = 10f64.powi(decade);
        let y = y_of(us);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            y + 4.0,
            super::table::format_us(us)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        out,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">latency (log scale)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    for (index, (summary, points)) in summaries.iter().zip(&curves).enumerate() {
        let color = COLORS[index % COLORS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(nine, us)| format!("{:.1},{:.1}", x_of(nine), y_of(us)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        let y = TOP + 10.0 + 20.0 * index as f64;
        let x = WIDTH - RIGHT + 15.0;
        let _ = writeln!(
            out,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"/>"#,
            x + 20.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}">{}</text>"#,
            x + 26.0,
            y + 4.0,
            escape(&summary.target)
        );
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    out.push_str("</svg>\n");
    out
}

/// (nines, latency us) points of one summary, up to `nines`.
fn curve(summary: &Summary, nines: u32) -> Vec<(f64, f64)> {
    let histogram = &summary.histogram;
    if histogram.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    for step in histogram.iter_quantiles(super::hgrm::TICKS_PER_HALF_DISTANCE) {
        let quantile = step.quantile_iterated_to();
        if quantile >= 1.0 {
            break;
        }
        let nine = (1.0 / (1.0 - quantile)).log10();
        if nine > f64::from(nines) {
            break;
        }
        points.push((
            nine,
            histogram.highest_equivalent(step.value_iterated_to()) as f64 / 1000.0,
        ));
    }
    points.push((f64::from(nines), histogram.max() as f64 / 1000.0));
    points
}

fn percentile_label(nine: u32) -> String {
    match nine {
        0 => "0%".into(),
        1 => "90%".into(),
        2 => "99%".into(),
        more => format!("99.{}%", "9".repeat(more as usize - 2)),
    }
}

/// Starts an SVG of `size` (width, height) on white, with `title` centred
/// on `title_x`.
pub(crate) fn open(out: &mut String, size: (f64, f64), title_x: f64, title: &str) {
    let (width, height) = size;
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{title_x}" y="25" font-size="15" text-anchor="middle">{}</text>"#,
        escape(title)
    );
}

/// `text` with the characters XML gives a meaning escaped.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        let labels: Vec<String> = (0..=5).map(percentile_label).collect();
        assert_eq!(labels, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
    }
}
