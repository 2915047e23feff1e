//! The HdrHistogram percentile distribution text format, as Java's
//! `outputPercentileDistribution` and wrk2 write it (values in
//! milliseconds), readable by HdrHistogram's plotter.

use std::fmt::Write;

use hdrhistogram::Histogram;

/// Nanoseconds per output unit (milliseconds).
pub const VALUE_UNIT_NS: f64 = 1e6;

/// Percentile steps per halving of the distance to 100%.
pub const TICKS_PER_HALF_DISTANCE: u32 = 5;

/// Renders `histogram` (values in ns) in the `.hgrm` format.
pub fn render(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !histogram.is_empty() {
        for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
            total += step.count_since_last_iteration();
            let value =
                histogram.highest_equivalent(step.value_iterated_to()) as f64 / VALUE_UNIT_NS;
            let quantile = step.quantile_iterated_to();
            if quantile < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {quantile:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - quantile)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {quantile:2.12} {total:10}");
            }
        }
    }
    let mean = histogram.mean() / VALUE_UNIT_NS;
    let deviation = histogram.stdev() / VALUE_UNIT_NS;
    let max = histogram.max() as f64 / VALUE_UNIT_NS;
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.3}, StdDeviation   = {deviation:12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:12.3}, Total count    = {:12}]",
        histogram.len()
    );
    let sub_buckets = (2 * 10u64.pow(histogram.sigfig() as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {sub_buckets:12}]",
        histogram.buckets()
    );
    out
}

/// Reads back (value ms, quantile) pairs from `.hgrm` text: for tests and
/// for tools that compare runs.
pub fn parse(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let value = fields.next()?.parse().ok()?;
            let quantile = fields.next()?.parse().ok()?;
            Some((value, quantile))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::new_histogram;

    #[test]
    fn renders_a_distribution() {
        let mut histogram = new_histogram();
        for value in 1..=10_000u64 {
            histogram.record(value * 1000).unwrap(); // 1 us .. 10 ms
        }
        let text = render(&histogram);
        assert!(
            text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"),
            "{text}"
        );
        let rows = parse(&text);
        assert!(rows.len() > 20);
        assert_eq!(rows[0].1, 0.0);
        assert_eq!(rows.last().unwrap().1, 1.0);
        assert!(
            (rows.last().unwrap().0 - 10.0).abs() < 0.01,
            "{:?}",
            rows.last()
        );
        let median = rows.iter().find(|(_, quantile)| *quantile >= 0.5).unwrap();
        assert!((median.0 - 5.0).abs() < 0.01, "{median:?}");
        assert!(rows
            .windows(2)
            .all(|pair| pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1));
        assert!(text.contains("Total count    =        10000]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        let last_data = text.lines().rfind(|line| !line.starts_with('#')).unwrap();
        assert!(last_data.ends_with("10000"), "{last_data}");
    }

    #[test]
    fn renders_an_empty_histogram() {
        let text = render(&new_histogram());
        assert!(text.contains("Total count    =            0]"));
    }
}
