//! Outputs: the end table and ratios ([`table`]), the HdrHistogram
//! percentile distribution ([`hgrm`]), the JSON summary ([`json`]) and the
//! latency-by-percentile plot ([`svg`]).

pub mod hgrm;
pub mod json;
pub mod svg;
pub mod table;

use std::path::{Path, PathBuf};

use crate::error::LoadgenError;
use crate::summary::Summary;

/// Writes an output file, creating its directory first.
pub fn write_file(path: &Path, text: String) -> Result<(), LoadgenError> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(path, text).map_err(|error| {
        LoadgenError::BadOptions(format!("cannot write {}: {error}", path.display()))
    })
}

/// `out.hgrm` + `nats` -> `out.nats.hgrm`: one file per target.
pub fn path_for_target(path: &Path, target: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(extension) => format!("{stem}.{target}.{}", extension.to_string_lossy()),
        None => format!("{stem}.{target}"),
    };
    path.with_file_name(name)
}

/// Throughput and latency of each target relative to the baseline
/// (relayhub when present, else the first target).
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct Ratio {
    /// The target compared.
    pub target: String,
    /// The baseline it is compared with.
    pub baseline: String,
    /// baseline deliveries/s / target deliveries/s (> 1: baseline faster).
    pub deliveries_per_s: f64,
    /// baseline MB/s / target MB/s.
    pub megabytes_per_s: f64,
    /// baseline p99 / target p99 (< 1: baseline lower latency).
    pub p99: f64,
    /// Storm: baseline connections/s / target's. Idle: baseline bytes per
    /// connection / target's (< 1: baseline leaner).
    pub connections: Option<f64>,
}

/// Ratios of every non-baseline target to the baseline.
pub fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let Some(baseline) = summaries
        .iter()
        .find(|summary| summary.url.starts_with("relayhub"))
        .or(summaries.first())
    else {
        return Vec::new();
    };
    let divide = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    summaries
        .iter()
        .filter(|summary| summary.target != baseline.target)
        .map(|summary| Ratio {
            target: summary.target.clone(),
            baseline: baseline.target.clone(),
            deliveries_per_s: divide(baseline.deliveries_per_s, summary.deliveries_per_s),
            megabytes_per_s: divide(baseline.megabytes_per_s, summary.megabytes_per_s),
            p99: divide(baseline.latency.p99_us, summary.latency.p99_us),
            connections: match (&baseline.connections, &summary.connections) {
                (Some(ours), Some(theirs)) => Some(
                    match (ours.bytes_per_connection, theirs.bytes_per_connection) {
                        (Some(ours), Some(theirs)) => divide(ours, theirs),
                        _ => divide(ours.per_second, theirs.per_second),
                    },
                ),
                _ => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_target_paths() {
        assert_eq!(
            path_for_target(Path::new("out/run.hgrm"), "nats"),
            PathBuf::from("out/run.nats.hgrm")
        );
        assert_eq!(
            path_for_target(Path::new("run"), "redis"),
            PathBuf::from("run.redis")
        );
    }
}
