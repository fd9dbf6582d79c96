//! `scalewise-agent report` and `diagnose --report`: the rewrite report from a diagnosis, offline.
//!
//! The model and renderers live in `scalewise_core::report` (pure, shared with the
//! collector); this module reads the saved `diagnose --format json` document and the user's
//! profile files, and writes the reports.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use scalewise_core::engine::Diagnosis;
use scalewise_core::report::{self, Format, Profiles, ReportError, ReportOptions, Workload};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    /// A self-contained HTML page (inline CSS and SVG, prints well).
    Html,
    /// Markdown for a design doc or a pull request.
    Md,
    /// JSON for machines (schema in docs/report.md).
    Json,
}

impl From<ReportFormat> for Format {
    fn from(f: ReportFormat) -> Format {
        match f {
            ReportFormat::Html => Format::Html,
            ReportFormat::Md => Format::Md,
            ReportFormat::Json => Format::Json,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum WorkloadArg {
    /// Web service: framework, syscalls and drivers (the profiles' web ranges).
    #[default]
    Web,
    /// Compute-bound work (the profiles' compute-kernel ranges).
    Compute,
}

/// The report's options, shared by `report` and `diagnose --report`.
#[derive(Args, Debug, Clone, Default)]
pub struct ProjectionArgs {
    /// Rewrite target (a profile: rust, go, java, csharp, node, python); repeat for several.
    /// Default: every profile except the current runtime.
    #[arg(long = "target", value_name = "LANG")]
    pub targets: Vec<String>,
    /// Plan instances for this request rate (req/s over all instances) instead of the measured one.
    #[arg(long, value_name = "N")]
    pub peak_rps: Option<f64>,
    /// Price of one core for one hour (any currency): gives a monthly cost per option.
    #[arg(long, value_name = "X")]
    pub price_core_hour: Option<f64>,
    /// Price of one GiB of memory for one hour.
    #[arg(long, value_name = "Y")]
    pub price_gib_hour: Option<f64>,
    /// The current runtime (a profile name), overriding what the agent detected.
    #[arg(long, value_name = "LANG")]
    pub current: Option<String>,
    /// A directory of profile TOML files that add to or replace the built-in ones.
    #[arg(long, value_name = "DIR")]
    pub profiles: Option<PathBuf>,
    /// How many instances the diagnosis covers (default: its `instances` field, else 1).
    #[arg(long, value_name = "N")]
    pub instances: Option<f64>,
    /// Count instances so that each runs its CPU at most this busy (0-1).
    #[arg(long, default_value_t = 0.7, value_name = "FRACTION")]
    pub target_utilisation: f64,
    /// Which profile ranges apply to the service's CPU work.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Web)]
    pub workload: WorkloadArg,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// A saved `scalewise-agent diagnose --format json` output (or a collector's service
    /// answer); `-` reads stdin.
    #[arg(long, value_name = "DIAGNOSIS.json")]
    pub input: PathBuf,
    /// Output format (default: from --output's extension, else md).
    #[arg(long, value_enum)]
    pub format: Option<ReportFormat>,
    /// Write here instead of stdout. With several services, one file per service:
    /// NAME-<service>.EXT.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Only this service of the input.
    #[arg(long)]
    pub service: Option<String>,
    #[command(flatten)]
    pub projection: ProjectionArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportCmdError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a diagnosis: {why}")]
    Input { path: String, why: String },
    #[error("{0}")]
    Report(#[from] ReportError),
    #[error("{0}")]
    Usage(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReportCmdError + '_ {
    move |source| ReportCmdError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Builds the report options, reading `--profiles DIR` (every `*.toml` in it).
pub fn options(p: &ProjectionArgs) -> Result<ReportOptions, ReportCmdError> {
    let mut profiles = Profiles::builtin()?;
    if let Some(dir) = &p.profiles {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ReportCmdError::Usage(format!(
                "--profiles {}: no .toml files",
                dir.display()
            )));
        }
        let mut texts = Vec::new();
        for f in &files {
            texts.push((
                f.display().to_string(),
                std::fs::read_to_string(f).map_err(io_err(f))?,
            ));
        }
        profiles = profiles.with_overrides(texts.iter().map(|(a, b)| (a.as_str(), b.as_str())))?;
    }
    Ok(ReportOptions {
        targets: p
            .targets
            .iter()
            .flat_map(|t| t.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect(),
        current: p.current.as_ref().map(|c| c.to_ascii_lowercase()),
        peak_rps: p.peak_rps,
        instances: p.instances,
        price_core_hour: p.price_core_hour,
        price_gib_hour: p.price_gib_hour,
        target_utilisation: p.target_utilisation,
        workload: match p.workload {
            WorkloadArg::Web => Workload::Web,
            WorkloadArg::Compute => Workload::Compute,
        },
        dependency_factor: 0.5,
        profiles: Some(profiles),
    })
}

/// The services of a saved diagnosis: `{"services": [...]}` (diagnose), or one service object
/// (the collector's per-service answer). Each with its `instances` when the document has them.
pub fn parse_input(
    path: &str,
    text: &str,
) -> Result<Vec<(Diagnosis, Option<f64>)>, ReportCmdError> {
    let bad = |why: String| ReportCmdError::Input {
        path: path.to_string(),
        why,
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let items: Vec<serde_json::Value> = match v.get("services").and_then(|s| s.as_array()) {
        Some(a) => a.clone(),
        None if v.get("service").is_some() => vec![v.clone()],
        None => {
            return Err(bad(
                "expected {\"services\": [...]} or a service object".into()
            ))
        }
    };
    if items.is_empty() {
        return Err(bad("no services in it".into()));
    }
    items
        .into_iter()
        .map(|item| {
            let instances = match item.get("instances") {
                Some(serde_json::Value::Number(n)) => n.as_f64(),
                Some(serde_json::Value::Array(a)) if !a.is_empty() => Some(a.len() as f64),
                _ => None,
            };
            let d: Diagnosis = serde_json::from_value(item).map_err(|e| bad(e.to_string()))?;
            Ok((d, instances))
        })
        .collect()
}

/// Renders one service's report.
pub fn render_one(
    d: &Diagnosis,
    instances: Option<f64>,
    opts: &ReportOptions,
    format: Format,
) -> Result<String, ReportCmdError> {
    let mut o = opts.clone();
    if o.instances.is_none() {
        o.instances = instances;
    }
    Ok(report::render(d, &o, format)?)
}

fn file_for(output: &Path, service: &str) -> PathBuf {
    let safe: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "report".into());
    let name = match output.extension() {
        Some(ext) => format!("{stem}-{safe}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{safe}"),
    };
    output.with_file_name(name)
}

/// The format of `--output FILE` from its extension, for `diagnose --report FILE`.
pub fn format_of(path: &Path) -> Result<Format, ReportCmdError> {
    Format::from_path(&path.to_string_lossy()).ok_or_else(|| {
        ReportCmdError::Usage(format!(
            "{}: the report format comes from the extension: .html, .md or .json",
            path.display()
        ))
    })
}

/// Writes a report beside a diagnosis (`diagnose --report FILE`): one service to FILE, several to
/// FILE-<service>.EXT. Returns the files written.
pub fn write_for(
    services: &[Diagnosis],
    path: &Path,
    p: &ProjectionArgs,
) -> Result<Vec<PathBuf>, ReportCmdError> {
    let format = format_of(path)?;
    let opts = options(p)?;
    let mut written = Vec::new();
    for d in services {
        let text = render_one(d, None, &opts, format)?;
        let out = if services.len() == 1 {
            path.to_path_buf()
        } else {
            file_for(path, &d.service)
        };
        std::fs::write(&out, text).map_err(io_err(&out))?;
        written.push(out);
    }
    Ok(written)
}

/// What `report` produced: text for stdout, or the files written.
pub enum Output {
    Stdout(String),
    Files(Vec<PathBuf>),
}

/// The `report` command.
pub fn run(args: &ReportArgs) -> Result<Output, ReportCmdError> {
    let text = if args.input.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(io_err(&args.input))?;
        s
    } else {
        std::fs::read_to_string(&args.input).map_err(io_err(&args.input))?
    };
    let mut services = parse_input(&args.input.display().to_string(), &text)?;
    if let Some(name) = &args.service {
        services.retain(|(d, _)| &d.service == name);
        if services.is_empty() {
            return Err(ReportCmdError::Usage(format!(
                "no service {name:?} in {}",
                args.input.display()
            )));
        }
    }
    let format: Format = match (args.format, &args.output) {
        (Some(f), _) => f.into(),
        (None, Some(out)) => format_of(out)?,
        (None, None) => Format::Md,
    };
    let opts = options(&args.projection)?;
    let rendered: Vec<(String, String)> = services
        .iter()
        .map(|(d, inst)| Ok((d.service.clone(), render_one(d, *inst, &opts, format)?)))
        .collect::<Result<_, ReportCmdError>>()?;
    match &args.output {
        Some(out) => {
            let mut written = Vec::new();
            for (service, text) in &rendered {
                let path = if rendered.len() == 1 {
                    out.clone()
                } else {
                    file_for(out, service)
                };
                std::fs::write(&path, text).map_err(io_err(&path))?;
                written.push(path);
            }
            Ok(Output::Files(written))
        }
        None if rendered.len() == 1 => Ok(Output::Stdout(rendered[0].1.clone())),
        None => match format {
            Format::Md => Ok(Output::Stdout(
                rendered
                    .iter()
                    .map(|(_, t)| t.as_str())
                    .collect::<Vec<_>>()
                    .join("\n---\n\n"),
            )),
            Format::Json => {
                let reports: Vec<serde_json::Value> = rendered
                    .iter()
                    .map(|(_, t)| serde_json::from_str(t))
                    .collect::<Result<_, _>>()
                    .map_err(ReportError::from)?;
                Ok(Output::Stdout(
                    serde_json::to_string_pretty(&serde_json::json!({ "reports": reports }))
                        .map_err(ReportError::from)?,
                ))
            }
            Format::Html => Err(ReportCmdError::Usage(format!(
                "{} services in the input: give --output FILE (one file each) or --service NAME",
                rendered.len()
            ))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = r#"{"services": [
      {"service": "a", "pids": [1], "window_s": 30.0, "verdict": "dependency", "confidence": 0.9,
       "breakdown": {"cpu": 0.05, "gc": 0.0, "cpu_wait": 0.0, "downstream": 0.9, "local_wait": 0.05},
       "dependencies": [{"endpoint": "10.0.0.5:5432", "kind": "postgresql", "share": 0.9}],
       "cpu": {"used_cores": 0.5, "capacity_cores": 4.0},
       "requests": {"rate_per_s": 1000.0, "mean_latency_ms": 10.0, "source": "sockets"},
       "evidence": [], "runtime": {"name": "go", "version": "go1.22.1"}},
      {"service": "b/c", "pids": [2], "window_s": 30.0, "verdict": "scale_up", "confidence": 0.9,
       "breakdown": {"cpu": 0.8, "gc": 0.0, "cpu_wait": 0.1, "downstream": 0.0, "local_wait": 0.1},
       "dependencies": [], "cpu": {"used_cores": 3.6, "capacity_cores": 4.0},
       "requests": {"rate_per_s": 900.0, "mean_latency_ms": 5.0, "source": "sockets"},
       "evidence": [], "instances": [{"id": "x"}, {"id": "y"}], "future_field": 1}
    ], "agent": {"version": "0.1.0"}}"#;

    #[test]
    fn reads_every_service_and_their_instances() {
        let s = parse_input("saved.json", SAVED).expect("parse");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0.runtime.as_ref().map(|r| r.name.as_str()), Some("go"));
        assert_eq!(s[0].1, None);
        assert_eq!(s[1].1, Some(2.0), "instances as a list count");
        let one = serde_json::to_string(
            &serde_json::from_str::<serde_json::Value>(SAVED).expect("v")["services"][0],
        )
        .expect("s");
        assert_eq!(parse_input("one.json", &one).expect("one").len(), 1);
        let err = parse_input("x.json", "{\"nope\": 1}").expect_err("error");
        assert!(err.to_string().contains("x.json"), "{err}");
    }

    #[test]
    fn several_services_give_several_reports() {
        let dir = std::env::temp_dir().join(format!("scalewise-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let input = dir.join("d.json");
        std::fs::write(&input, SAVED).expect("write");
        let args = ReportArgs {
            input: input.clone(),
            format: None,
            output: Some(dir.join("r.html")),
            service: None,
            projection: ProjectionArgs {
                target_utilisation: 0.7,
                ..ProjectionArgs::default()
            },
        };
        let Ok(Output::Files(files)) = run(&args) else {
            panic!("files expected");
        };
        assert_eq!(files, vec![dir.join("r-a.html"), dir.join("r-b_c.html")]);
        for f in &files {
            let html = std::fs::read_to_string(f).expect("read");
            assert!(html.starts_with("<!doctype html>"));
        }
        let json = ReportArgs {
            output: None,
            format: Some(ReportFormat::Json),
            ..args.clone()
        };
        let Ok(Output::Stdout(text)) = run(&json) else {
            panic!("stdout expected");
        };
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["reports"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            v["reports"][0]["recommendation"]["option"],
            "fix_dependency:10.0.0.5:5432"
        );
        let html_stdout = ReportArgs {
            output: None,
            format: Some(ReportFormat::Html),
            ..args.clone()
        };
        assert!(matches!(run(&html_stdout), Err(ReportCmdError::Usage(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn profiles_dir_overrides_and_bad_profiles_are_refused() {
        let dir = std::env::temp_dir().join(format!("scalewise-profiles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let go = include_str!("../../core/profiles/go.toml").replace(
            "web = { low = 1.05, central = 1.5, high = 2.7 }",
            "web = { low = 3.0, central = 3.0, high = 3.0 }",
        );
        std::fs::write(dir.join("go.toml"), go).expect("write");
        let p = ProjectionArgs {
            profiles: Some(dir.clone()),
            target_utilisation: 0.7,
            ..ProjectionArgs::default()
        };
        let o = options(&p).expect("options");
        let go = o
            .profiles
            .as_ref()
            .and_then(|p| p.get("go").cloned())
            .expect("go");
        assert_eq!(go.cpu.web.central, 3.0);
        std::fs::write(dir.join("bad.toml"), "name = \"x\"\nnonsense = 1\n").expect("write");
        let err = options(&p).expect_err("bad profile");
        assert!(err.to_string().contains("bad.toml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
