//! The "should we rewrite?" report: what a rewrite would buy next to the alternatives, in numbers.
//!
//! One model ([`model::build`], pure: a [`Diagnosis`] and [`ReportOptions`] in, a [`Report`] out)
//! and three renderers of it ([`json`], [`markdown`], [`html`]); the renderers print the model's
//! numbers and compute none, so a figure in the HTML is the JSON's figure. The agent calls this
//! for `report` and `diagnose --report`; the collector for `GET /api/v1/services/{s}/report`.
//! The model: `docs/report.md`; each profile number's source: the comment above it in
//! `core/profiles/*.toml`.
//!
//! The model's steps are private modules, one reason each: `baseline` (the measurement in the
//! report's units), `options` (what each option changes, and when it is worth proposing),
//! `scenario` (the queueing model at an option's operating point), `projection` (an option's
//! ranges), `recommend` (ranking and the recommendation's sentence), `assumptions` (what the
//! report took as given).

mod assumptions;
mod baseline;
pub mod format;
pub mod html;
pub mod json;
pub mod markdown;
pub mod model;
mod options;
pub mod profiles;
mod projection;
pub mod queueing;
mod recommend;
mod scenario;

use serde::{Deserialize, Serialize};

use crate::engine::Diagnosis;

pub use model::{build, Report};
pub use profiles::{Profile, Profiles};

/// A projected quantity: low <= central <= high (numerically, whichever end is "good").
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    pub low: f64,
    pub central: f64,
    pub high: f64,
}

impl Range {
    pub fn exact(x: f64) -> Range {
        Range {
            low: x,
            central: x,
            high: x,
        }
    }

    /// From three values in any order, central kept in the middle.
    pub fn sorted(a: f64, central: f64, b: f64) -> Range {
        let low = a.min(b).min(central);
        let high = a.max(b).max(central);
        Range { low, central, high }
    }

    pub fn map(self, f: impl Fn(f64) -> f64) -> Range {
        Range::sorted(f(self.low), f(self.central), f(self.high))
    }
}

/// What kind of CPU work the service does: picks the profile's web or compute range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Web service: framework, syscalls, drivers (the default).
    #[default]
    Web,
    /// Compute-bound: the CPU work is the program's own loops.
    Compute,
}

/// The report's knobs. `Default` is the documented model.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportOptions {
    /// Rewrite targets (profile names); empty = every target profile except the current runtime.
    pub targets: Vec<String>,
    /// The current runtime, overriding what the diagnosis says.
    pub current: Option<String>,
    /// Plan for this request rate instead of the measured one.
    pub peak_rps: Option<f64>,
    /// How many instances the diagnosis covers (its load, cores and memory are their sum).
    pub instances: Option<f64>,
    /// Price of one core for one hour, in the user's currency.
    pub price_core_hour: Option<f64>,
    /// Price of one GiB of memory for one hour.
    pub price_gib_hour: Option<f64>,
    /// Instances are counted so each runs its cores at most this busy.
    pub target_utilisation: f64,
    pub workload: Workload,
    /// `fix_dependency`: the dependency's time is multiplied by this (0.5 = halved).
    pub dependency_factor: f64,
    /// Profiles; `None` = the built-in ones.
    pub profiles: Option<Profiles>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            targets: Vec::new(),
            current: None,
            peak_rps: None,
            instances: None,
            price_core_hour: None,
            price_gib_hour: None,
            target_utilisation: 0.7,
            workload: Workload::Web,
            dependency_factor: 0.5,
            profiles: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Html,
    Md,
    Json,
}

impl Format {
    /// From a file name's extension: `.html`/`.htm`, `.md`/`.markdown`, `.json`.
    pub fn from_path(path: &str) -> Option<Format> {
        let ext = path.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "html" | "htm" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Md),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    /// From a query or flag value: `html`, `md` (or `markdown`), `json`.
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "html" => Some(Format::Html),
            "md" | "markdown" => Some(Format::Md),
            "json" => Some(Format::Json),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Md => "text/markdown; charset=utf-8",
            Format::Json => "application/json",
        }
    }
}

impl ReportOptions {
    /// Options and format from a query string's pairs, for the collector's
    /// `GET /api/v1/services/{service}/report?format=html&target=rust&target=go&peak_rps=...`:
    /// `format` (html, md, json; default html), `target` (repeated or comma-separated), `current`,
    /// `peak_rps`, `instances`, `price_core_hour`, `price_gib_hour`, `target_utilisation`,
    /// `workload` (web, compute). Unknown keys are refused, so a typo is not silently ignored.
    pub fn from_query<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(ReportOptions, Format), ReportError> {
        let mut o = ReportOptions::default();
        let mut format = Format::Html;
        let number = |k: &str, v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| ReportError::Option(format!("{k}={v:?} is not a number")))
        };
        for (k, v) in pairs {
            match k {
                "format" => {
                    format = Format::parse(v).ok_or_else(|| {
                        ReportError::Option(format!("format={v:?}: use html, md or json"))
                    })?
                }
                "target" => o.targets.extend(
                    v.split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !t.is_empty()),
                ),
                "current" => o.current = Some(v.trim().to_ascii_lowercase()),
                "peak_rps" => o.peak_rps = Some(number(k, v)?),
                "instances" => o.instances = Some(number(k, v)?),
                "price_core_hour" => o.price_core_hour = Some(number(k, v)?),
                "price_gib_hour" => o.price_gib_hour = Some(number(k, v)?),
                "target_utilisation" => o.target_utilisation = number(k, v)?,
                "workload" => {
                    o.workload = match v {
                        "web" => Workload::Web,
                        "compute" => Workload::Compute,
                        _ => {
                            return Err(ReportError::Option(format!(
                                "workload={v:?}: use web or compute"
                            )))
                        }
                    }
                }
                "window" => {} // the collector's own parameter
                _ => return Err(ReportError::Option(format!("unknown parameter {k:?}"))),
            }
        }
        Ok((o, format))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("profile {name}: {why}")]
    Profile { name: String, why: String },
    #[error("unknown runtime {name:?} (known: {known})")]
    UnknownRuntime { name: String, known: String },
    #[error("invalid option: {0}")]
    Option(String),
    #[error("serialising the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// Builds the report for one service and renders it: the collector's and the agent's one call.
pub fn render(d: &Diagnosis, opts: &ReportOptions, format: Format) -> Result<String, ReportError> {
    let report = build(d, opts)?;
    render_report(&report, format)
}

/// Renders an already built report.
pub fn render_report(report: &Report, format: Format) -> Result<String, ReportError> {
    Ok(match format {
        Format::Json => json::render(report)?,
        Format::Md => markdown::render(report),
        Format::Html => html::render(report),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_become_options() {
        let (o, f) = ReportOptions::from_query([
            ("format", "md"),
            ("target", "rust,Go"),
            ("target", "java"),
            ("peak_rps", "5000"),
            ("window", "5m"),
        ])
        .expect("query");
        assert_eq!(f, Format::Md);
        assert_eq!(o.targets, ["rust", "go", "java"]);
        assert_eq!(o.peak_rps, Some(5000.0));
        let (_, f) = ReportOptions::from_query([]).expect("empty");
        assert_eq!(f, Format::Html);
        for bad in [("format", "pdf"), ("peak_rps", "lots"), ("colour", "red")] {
            let e = ReportOptions::from_query([bad]).expect_err("bad");
            assert!(e.to_string().contains(bad.0), "{e}");
        }
        assert_eq!(Format::from_path("a/b.HTML"), Some(Format::Html));
        assert_eq!(Format::from_path("r.markdown"), Some(Format::Md));
        assert_eq!(Format::from_path("r.pdf"), None);
    }
}
