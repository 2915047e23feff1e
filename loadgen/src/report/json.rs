//! The JSON summary: the settings, every target's summary, the ratios.

use serde::Serialize;

use super::Ratio;
use crate::summary::Summary;

/// The whole JSON document.
#[derive(Serialize)]
pub struct Report<'a> {
    /// The loadgen's version.
    pub loadgen_version: &'static str,
    /// The command line, for reproduction.
    pub command: String,
    /// One entry per target, in the order run.
    pub results: &'a [Summary],
    /// Each target against the baseline.
    pub ratios: Vec<Ratio>,
}

/// Renders the report as pretty JSON.
pub fn render(command: String, summaries: &[Summary]) -> String {
    let report = Report {
        loadgen_version: env!("CARGO_PKG_VERSION"),
        command,
        results: summaries,
        ratios: super::ratios(summaries),
    };
    serde_json::to_string_pretty(&report).expect("plain data serializes")
}
