//! What the report case files share between the tests that read them.

use scalewise_core::report::ReportOptions;
use serde::Deserialize;

/// A case's report options, as written in `report_cases/*.toml`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CaseOptions {
    #[serde(default)]
    pub targets: Vec<String>,
    pub current: Option<String>,
    pub peak_rps: Option<f64>,
    pub instances: Option<f64>,
    pub price_core_hour: Option<f64>,
    pub price_gib_hour: Option<f64>,
}

impl CaseOptions {
    pub fn report_options(&self) -> ReportOptions {
        ReportOptions {
            targets: self.targets.clone(),
            current: self.current.clone(),
            peak_rps: self.peak_rps,
            instances: self.instances,
            price_core_hour: self.price_core_hour,
            price_gib_hour: self.price_gib_hour,
            ..ReportOptions::default()
        }
    }
}
