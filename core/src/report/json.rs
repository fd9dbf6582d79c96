//! The report as JSON for machines: the [`Report`] model itself (schema in `docs/report.md`).

use super::Report;

pub fn render(report: &Report) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(report)
}
