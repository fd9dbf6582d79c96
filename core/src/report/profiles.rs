//! Target profiles: what a runtime costs in CPU, GC and memory relative to Rust, as TOML shipped
//! in the binary (`core/profiles/*.toml`, every number with its source in a comment).
//! Users override or add profiles with files of the same shape (`--profiles DIR`); reading the
//! files is the caller's job, this module only parses text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Range, ReportError};

const BUILTIN: [(&str, &str); 7] = [
    ("rust", include_str!("../../profiles/rust.toml")),
    ("go", include_str!("../../profiles/go.toml")),
    ("java", include_str!("../../profiles/java.toml")),
    ("csharp", include_str!("../../profiles/csharp.toml")),
    ("node", include_str!("../../profiles/node.toml")),
    ("python", include_str!("../../profiles/python.toml")),
    ("native", include_str!("../../profiles/native.toml")),
];

/// One runtime's model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The name used in `--target`, `--current` and `rewrite:<name>`.
    pub name: String,
    /// How people write it.
    pub display: String,
    /// Offered as a rewrite target when none is asked for (false for `native`).
    #[serde(default = "yes")]
    pub target: bool,
    pub cpu: CpuFactors,
    pub gc: GcModel,
    pub memory: MemoryModel,
}

fn yes() -> bool {
    true
}

/// CPU time for the same work, Rust = 1.0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuFactors {
    /// Web services (framework, syscalls, drivers: much is language-neutral).
    pub web: Range,
    /// Compute-bound work (the Benchmarks Game kernels).
    pub compute: Range,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GcKind {
    None,
    Tracing,
    Refcount,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcModel {
    pub kind: GcKind,
    /// Stop-the-world pause time per unit of CPU time, for a service rewritten into this runtime.
    pub pause_ratio: Range,
    /// GC cost after trading memory for it (doubling GOGC or the heap), as a fraction of today's.
    /// Absent: tuning is not modelled for this runtime.
    #[serde(default)]
    pub tune_factor: Option<Range>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryModel {
    /// Resident size of the idle runtime and framework, MiB.
    pub runtime_mib: Range,
    /// Resident bytes per byte of live data, Rust = 1.0.
    pub heap_multiplier: Range,
}

/// The set of profiles a report may use, by name.
#[derive(Clone, Debug, PartialEq)]
pub struct Profiles {
    by_name: BTreeMap<String, Profile>,
}

fn check_range(profile: &str, what: &str, r: &Range, min: f64) -> Result<(), ReportError> {
    let ok = [r.low, r.central, r.high]
        .iter()
        .all(|x| x.is_finite() && *x >= min)
        && r.low <= r.central
        && r.central <= r.high;
    if ok {
        Ok(())
    } else {
        Err(ReportError::Profile {
            name: profile.to_string(),
            why: format!(
                "{what} must have {min} <= low <= central <= high, got {} / {} / {}",
                r.low, r.central, r.high
            ),
        })
    }
}

impl Profile {
    /// Parses and checks one profile. `origin` names it in errors (a file name).
    pub fn parse(origin: &str, text: &str) -> Result<Profile, ReportError> {
        let p: Profile = toml::from_str(text).map_err(|e| ReportError::Profile {
            name: origin.to_string(),
            why: e.to_string(),
        })?;
        if p.name.is_empty()
            || !p
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        {
            return Err(ReportError::Profile {
                name: origin.to_string(),
                why: format!(
                    "name {:?} must be lowercase letters, digits, - or _",
                    p.name
                ),
            });
        }
        check_range(&p.name, "cpu.web", &p.cpu.web, f64::MIN_POSITIVE)?;
        check_range(&p.name, "cpu.compute", &p.cpu.compute, f64::MIN_POSITIVE)?;
        check_range(&p.name, "gc.pause_ratio", &p.gc.pause_ratio, 0.0)?;
        if let Some(t) = &p.gc.tune_factor {
            check_range(&p.name, "gc.tune_factor", t, 0.0)?;
        }
        check_range(&p.name, "memory.runtime_mib", &p.memory.runtime_mib, 0.0)?;
        check_range(
            &p.name,
            "memory.heap_multiplier",
            &p.memory.heap_multiplier,
            f64::MIN_POSITIVE,
        )?;
        Ok(p)
    }
}

impl Profiles {
    /// The profiles shipped in the binary.
    pub fn builtin() -> Result<Profiles, ReportError> {
        let mut by_name = BTreeMap::new();
        for (file, text) in BUILTIN {
            let p = Profile::parse(&format!("{file}.toml"), text)?;
            by_name.insert(p.name.clone(), p);
        }
        Ok(Profiles { by_name })
    }

    /// Adds or replaces profiles from user files: `(origin, text)` pairs.
    pub fn with_overrides<'a>(
        mut self,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Profiles, ReportError> {
        for (origin, text) in files {
            let p = Profile::parse(origin, text)?;
            self.by_name.insert(p.name.clone(), p);
        }
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Profile> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Profile for a name, or an error listing the known ones.
    pub fn require(&self, name: &str) -> Result<&Profile, ReportError> {
        self.get(name).ok_or_else(|| ReportError::UnknownRuntime {
            name: name.to_string(),
            known: self.names().collect::<Vec<_>>().join(", "),
        })
    }

    /// Default rewrite targets: every profile marked as a target, in a stable order.
    pub fn default_targets(&self) -> Vec<String> {
        let order = ["rust", "go", "java", "csharp", "node", "python"];
        let mut out: Vec<String> = order
            .iter()
            .filter(|n| self.get(n).is_some_and(|p| p.target))
            .map(|n| n.to_string())
            .collect();
        for (name, p) in &self.by_name {
            if p.target && !out.contains(name) {
                out.push(name.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_parse_and_rust_is_the_reference() {
        let p = Profiles::builtin().expect("builtin");
        for name in ["rust", "go", "java", "csharp", "node", "python", "native"] {
            assert!(p.get(name).is_some(), "{name}");
        }
        let rust = p.require("rust").expect("rust");
        assert_eq!(rust.cpu.web.central, 1.0);
        assert_eq!(rust.gc.kind, GcKind::None);
        // Web ranges are narrower than compute-kernel ranges (research §1).
        let go = p.require("go").expect("go");
        assert!(go.cpu.web.high < go.cpu.compute.high);
        assert!(!p.default_targets().contains(&"native".to_string()));
        assert_eq!(p.default_targets()[0], "rust");
    }

    #[test]
    fn every_builtin_number_has_a_source_comment() {
        // A profile line with a number is preceded by a comment block (its source).
        for (file, text) in BUILTIN {
            let lines: Vec<&str> = text.lines().collect();
            for (i, line) in lines.iter().enumerate() {
                if line.contains("low =") {
                    let mut j = i;
                    let mut found = false;
                    while j > 0 {
                        j -= 1;
                        let l = lines[j].trim();
                        if l.starts_with('#') {
                            found = true;
                            break;
                        }
                        if l.starts_with('[') || l.is_empty() {
                            break;
                        }
                    }
                    assert!(found, "{file}:{}: {line} has no source comment", i + 1);
                }
            }
        }
    }

    #[test]
    fn overrides_replace_and_unknown_fields_are_refused() {
        let go = BUILTIN[1].1.replace("central = 1.5,", "central = 2.0,");
        let p = Profiles::builtin()
            .and_then(|p| p.with_overrides([("go.toml", go.as_str())]))
            .expect("override");
        assert_eq!(p.require("go").expect("go").cpu.web.central, 2.0);
        let bad = format!("{}\nspeed = 3\n", BUILTIN[0].1);
        let err = Profiles::builtin()
            .and_then(|p| p.with_overrides([("x.toml", bad.as_str())]))
            .expect_err("unknown field");
        assert!(err.to_string().contains("speed"), "{err}");
        let inverted = BUILTIN[1].1.replace("low = 1.05", "low = 9.0");
        let err = Profile::parse("go.toml", &inverted).expect_err("low > central");
        assert!(err.to_string().contains("cpu.web"), "{err}");
        let err = Profiles::builtin()
            .expect("builtin")
            .require("cobol")
            .expect_err("unknown");
        assert!(err.to_string().contains("rust"), "{err}");
    }
}
