//! The end-of-run tables, for a terminal or a markdown report.

use std::fmt::Write;

use super::Ratio;
use crate::config::Scenario;
use crate::summary::Summary;

/// A latency in microseconds as a short human string (`85.3us`, `1.25ms`).
pub fn format_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.1}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1000.0)
    } else {
        format!("{:.2}s", us / 1_000_000.0)
    }
}

fn format_count(value: f64) -> String {
    let whole = value.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (position, digit) in digits.chars().enumerate() {
        if position > 0 && (digits.len() - position) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Renders rows as a markdown table (readable as plain text too).
fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = String>| {
        out.push('|');
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(out, " {cell:>width$} |");
        }
        out.push('\n');
    };
    line(&mut out, &mut header.iter().map(|cell| cell.to_string()));
    line(
        &mut out,
        &mut widths
            .iter()
            .map(|width| format!("{}:", "-".repeat(width - 1))),
    );
    for row in rows {
        line(&mut out, &mut row.iter().cloned());
    }
    out
}

/// The results table; its columns depend on the scenario.
pub fn results(summaries: &[Summary]) -> String {
    let Some(first) = summaries.first() else {
        return String::new();
    };
    let cpu = |summary: &Summary| match summary.server_cpu_percent {
        Some(server) => format!("{:.0}% / {server:.0}%", summary.loadgen_cpu_percent),
        None => format!("{:.0}% / -", summary.loadgen_cpu_percent),
    };
    match first.scenario {
        Scenario::Traffic(_) => {
            let mut header = vec![
                "target",
                "deliveries/s",
                "MB/s",
                "p50",
                "p90",
                "p99",
                "p99.9",
                "max",
                "lost/dup/reord",
                "errors",
                "cpu loadgen/server",
                "cpu ns/delivery loadgen/server",
            ];
            let per_delivery = |s: &Summary| {
                let ns = |value: Option<f64>| value.map_or("-".into(), |ns| format!("{ns:.0}"));
                format!(
                    "{} / {}",
                    ns(s.loadgen_cpu_ns_per_delivery),
                    ns(s.server_cpu_ns_per_delivery)
                )
            };
            let open = matches!(first.load, crate::config::Load::Open { .. });
            if open {
                header.push("loadgen send lag p50/p99");
            }
            let rows: Vec<Vec<String>> = summaries
                .iter()
                .map(|s| {
                    let mut row = vec![
                        s.target.clone(),
                        format_count(s.deliveries_per_s),
                        format!("{:.1}", s.megabytes_per_s),
                        format_us(s.latency.p50_us),
                        format_us(s.latency.p90_us),
                        format_us(s.latency.p99_us),
                        format_us(s.latency.p99_9_us),
                        format_us(s.latency.max_us),
                        format!(
                            "{}/{}/{}",
                            s.sequence.lost, s.sequence.duplicated, s.sequence.reordered
                        ),
                        s.errors.to_string(),
                        cpu(s),
                        per_delivery(s),
                    ];
                    if open {
                        row.push(s.send_lag.as_ref().map_or("-".into(), |lag| {
                            format!("{} / {}", format_us(lag.p50_us), format_us(lag.p99_us))
                        }));
                    }
                    row
                })
                .collect();
            markdown(&header, &rows)
        }
        Scenario::Storm => {
            let header = [
                "target",
                "connected",
                "seconds",
                "connections/s",
                "p50",
                "p99",
                "max",
                "errors",
                "cpu loadgen/server",
            ];
            let rows: Vec<Vec<String>> = summaries
                .iter()
                .map(|s| {
                    let c = s.connections.clone().unwrap_or_default();
                    vec![
                        s.target.clone(),
                        c.connected.to_string(),
                        format!("{:.3}", c.seconds),
                        format_count(c.per_second),
                        format_us(s.latency.p50_us),
                        format_us(s.latency.p99_us),
                        format_us(s.latency.max_us),
                        s.errors.to_string(),
                        cpu(s),
                    ]
                })
                .collect();
            markdown(&header, &rows)
        }
        Scenario::Idle => {
            let header = [
                "target",
                "connected",
                "RSS before",
                "RSS connected",
                "RSS after close",
                "bytes/connection",
                "errors",
            ];
            let kib =
                |value: Option<u64>| value.map_or("-".to_string(), |kib| format!("{kib} KiB"));
            let rows: Vec<Vec<String>> = summaries
                .iter()
                .map(|s| {
                    let c = s.connections.clone().unwrap_or_default();
                    vec![
                        s.target.clone(),
                        c.connected.to_string(),
                        kib(c.rss_before_kib),
                        kib(c.rss_connected_kib),
                        kib(c.rss_after_kib),
                        c.bytes_per_connection
                            .map_or("- (no --server-pid)".into(), |bytes| format!("{bytes:.0}")),
                        s.errors.to_string(),
                    ]
                })
                .collect();
            markdown(&header, &rows)
        }
    }
}

/// The durability table of durable runs (empty if none was durable):
/// publications the server acknowledged and how fast, what reconnects
/// cost, what dedup dropped.
pub fn durable(summaries: &[Summary]) -> String {
    let header = [
        "target",
        "stored/s",
        "stored p50",
        "stored p99",
        "unstored",
        "retried (dup stored)",
        "reconnects",
        "reconnect mean/max",
        "redelivered",
        "dedup dropped",
        "acks",
        "receipts (missing)",
    ];
    let rows: Vec<Vec<String>> = summaries
        .iter()
        .filter_map(|s| {
            let d = s.durable.as_ref()?;
            let c = &d.counts;
            Some(vec![
                s.target.clone(),
                format_count(d.stored_latency.count as f64 / s.duration_s.max(1e-9)),
                format_us(d.stored_latency.p50_us),
                format_us(d.stored_latency.p99_us),
                c.unstored.to_string(),
                format!("{} ({})", c.retried, c.stored_duplicate),
                c.reconnects.to_string(),
                format!("{:.2}ms / {:.2}ms", d.reconnect_ms_mean, d.reconnect_ms_max),
                c.redelivered.to_string(),
                c.deduplicated.to_string(),
                c.acks.to_string(),
                if c.receipts + c.receipts_missing == 0 {
                    "-".into()
                } else {
                    format!("{} ({})", c.receipts, c.receipts_missing)
                },
            ])
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    markdown(&header, &rows)
}

/// The ratios table of a comparison.
pub fn ratios(ratios: &[Ratio]) -> String {
    if ratios.is_empty() {
        return String::new();
    }
    let header = [
        "baseline vs target",
        "deliveries/s",
        "MB/s",
        "p99 latency",
        "connections",
    ];
    let times = |value: f64| {
        if value.is_finite() {
            format!("{value:.2}x")
        } else {
            "-".into()
        }
    };
    let rows: Vec<Vec<String>> = ratios
        .iter()
        .map(|r| {
            vec![
                format!("{} / {}", r.baseline, r.target),
                times(r.deliveries_per_s),
                times(r.megabytes_per_s),
                times(r.p99),
                r.connections.map_or("-".into(), times),
            ]
        })
        .collect();
    markdown(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(format_us(85.34), "85.3us");
        assert_eq!(format_us(1250.0), "1.25ms");
        assert_eq!(format_us(2_500_000.0), "2.50s");
        assert_eq!(format_count(1234567.4), "1,234,567");
        assert_eq!(format_count(999.0), "999");
    }

    #[test]
    fn markdown_aligns() {
        let table = markdown(&["a", "bb"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(
            table,
            "|   a | bb |\n|  --: | -: |\n| xxx |  y |\n".replace("|  --: |", "| --: |")
        );
    }
}
