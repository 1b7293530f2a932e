//! The scenario matrix of `cargo xtask bench`: which models, quantisations, storage profiles and
//! memory budgets to measure, from built-in defaults or a user's TOML file.
//!
//! ```toml
//! # scenarios.toml
//! threads = 2
//! reps = 3
//! [[scenario]]
//! preset = "4b-a0.6b"     # datasets preset (thinker gen) or `model = "path.gguf"`
//! quant = "q4_0"
//! storage = ["in-memory", "real", "nvme-gen4"]
//! budget = ["unlimited", "2GiB", "1GiB"]
//! tests = ["pp128", "tg64"]
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// A whole matrix.
#[derive(Clone, Debug, Deserialize)]
pub struct Matrix {
    /// Compute threads (0: all cores).
    #[serde(default)]
    pub threads: usize,
    /// Repetitions per test.
    #[serde(default = "default_reps")]
    pub reps: usize,
    /// Scenario groups.
    #[serde(rename = "scenario")]
    pub groups: Vec<Group>,
}

fn default_reps() -> usize {
    3
}

/// One `[[scenario]]` table: the cross product of its lists.
#[derive(Clone, Debug, Deserialize)]
pub struct Group {
    /// Synthetic preset to generate (`tiny`, `4b-a0.6b`, `21b-a3b`).
    pub preset: Option<String>,
    /// An existing model file instead of a preset.
    pub model: Option<PathBuf>,
    /// Quantisation (for presets: `thinker gen --type`).
    pub quant: String,
    /// Storage profiles; `in-memory` runs without offload.
    pub storage: Vec<String>,
    /// Budgets (`unlimited` or sizes like `1GiB`).
    pub budget: Vec<String>,
    /// llama-bench style tests.
    pub tests: Vec<String>,
}

/// One runnable scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Model label (preset or file stem).
    pub model_label: String,
    /// Preset to generate, if any.
    pub preset: Option<String>,
    /// Model path (generated under `target/models` for presets).
    pub model_path: PathBuf,
    /// Quantisation label.
    pub quant: String,
    /// Storage profile.
    pub storage: String,
    /// Budget in bytes (`None`: unlimited).
    pub budget: Option<u64>,
    /// Budget as written.
    pub budget_label: String,
    /// Prompt lengths.
    pub pp: Vec<usize>,
    /// Generation lengths.
    pub tg: Vec<usize>,
}

impl Scenario {
    /// Human-readable one-liner.
    pub fn describe(&self) -> String {
        format!(
            "{} {} | {} | budget {} | {}",
            self.model_label,
            self.quant,
            self.storage,
            self.budget_label,
            self.pp
                .iter()
                .map(|n| format!("pp{n}"))
                .chain(self.tg.iter().map(|n| format!("tg{n}")))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }

    /// Whether the storage profile is one of our engine's emulated devices (not the real disk and
    /// not in memory): only our engine can run on those.
    pub fn emulated_storage(&self) -> bool {
        self.storage != "in-memory" && self.storage != "real"
    }

    /// Record keys (as `bench_suite::record::Record::key`) this scenario produces for `engine`.
    pub fn keys(&self, threads: u32, engine: &str) -> Vec<String> {
        let b = self
            .budget
            .map(|b| b.to_string())
            .unwrap_or_else(|| "unlimited".into());
        self.pp
            .iter()
            .map(|n| format!("pp{n}"))
            .chain(self.tg.iter().map(|n| format!("tg{n}")))
            .map(|t| {
                format!(
                    "{engine}|{}|{}|{}|{}|{}|{}",
                    self.model_label, self.quant, self.storage, b, threads, t
                )
            })
            .collect()
    }
}

/// Parses sizes like `1GiB`, `512MiB`, `2GB`, `unlimited`.
pub fn parse_budget(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("unlimited") || t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("budget '{s}': expected e.g. 1GiB, 512MiB, unlimited"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        u => bail!("budget '{s}': unknown unit '{u}'"),
    };
    Ok(Some((v * mult) as u64))
}

/// Token counts as a `-p` / `-n` argument of `thinker bench` and the peer driver: `128,512`, or
/// `0` for none.
pub fn counts_arg(v: &[usize]) -> String {
    if v.is_empty() {
        return "0".into();
    }
    v.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_tests(tests: &[String]) -> Result<(Vec<usize>, Vec<usize>)> {
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for t in tests {
        let (kind, n) = t.split_at(2.min(t.len()));
        let n: usize = n
            .parse()
            .with_context(|| format!("test '{t}': expected ppN or tgN"))?;
        match kind {
            "pp" => pp.push(n),
            "tg" => tg.push(n),
            _ => bail!("test '{t}': expected ppN or tgN"),
        }
    }
    Ok((pp, tg))
}

impl Matrix {
    /// Expands groups into scenarios (models under `models_dir`).
    pub fn expand(&self, models_dir: &std::path::Path) -> Result<Vec<Scenario>> {
        let mut out = Vec::new();
        for g in &self.groups {
            let (label, path) = match (&g.preset, &g.model) {
                (Some(p), None) => (p.clone(), models_dir.join(format!("{p}-{}.gguf", g.quant))),
                (None, Some(m)) => (
                    m.file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    m.clone(),
                ),
                _ => bail!("each [[scenario]] needs exactly one of `preset` or `model`"),
            };
            let (pp, tg) = parse_tests(&g.tests)?;
            for st in &g.storage {
                for b in &g.budget {
                    let budget = parse_budget(b)?;
                    if st == "in-memory" && budget.is_some() {
                        continue; // a budget implies offloading from some storage
                    }
                    if st != "in-memory" && budget.is_none() {
                        continue; // offloading without a budget measures nothing new
                    }
                    out.push(Scenario {
                        model_label: label.clone(),
                        preset: g.preset.clone(),
                        model_path: path.clone(),
                        quant: g.quant.clone(),
                        storage: st.clone(),
                        budget,
                        budget_label: b.clone(),
                        pp: pp.clone(),
                        tg: tg.clone(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// The default matrix: the 4B in Q4_0 and Q8_0 in memory, Q4_0 streamed from the real disk at
/// 2 and 1 GiB, and emulated devices at 1 GiB. `full` adds the 21B and longer tests.
pub fn default_matrix(full: bool) -> Matrix {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut groups = vec![
        Group {
            preset: Some("4b-a0.6b".into()),
            model: None,
            quant: "q4_0".into(),
            storage: s(&["in-memory"]),
            budget: s(&["unlimited"]),
            tests: s(&["pp128", "tg64"]),
        },
        Group {
            preset: Some("4b-a0.6b".into()),
            model: None,
            quant: "q8_0".into(),
            storage: s(&["in-memory"]),
            budget: s(&["unlimited"]),
            tests: s(&["pp128", "tg64"]),
        },
        Group {
            preset: Some("4b-a0.6b".into()),
            model: None,
            quant: "q4_0".into(),
            storage: s(&["real"]),
            budget: s(&["2GiB", "1GiB"]),
            tests: s(&["tg32"]),
        },
        Group {
            preset: Some("4b-a0.6b".into()),
            model: None,
            quant: "q4_0".into(),
            storage: s(&["nvme-gen4", "ufs-3.1", "sata-ssd", "emmc"]),
            budget: s(&["1GiB"]),
            tests: s(&["tg32"]),
        },
    ];
    if full {
        groups.push(Group {
            preset: Some("21b-a3b".into()),
            model: None,
            quant: "q4_0".into(),
            storage: s(&["in-memory", "real"]),
            budget: s(&["unlimited", "8GiB", "4GiB"]),
            tests: s(&["pp64", "tg32"]),
        });
        groups.push(Group {
            preset: Some("4b-a0.6b".into()),
            model: None,
            quant: "q4_0".into(),
            storage: s(&["in-memory"]),
            budget: s(&["unlimited"]),
            tests: s(&["pp512", "tg128"]),
        });
    }
    Matrix {
        threads: 0,
        reps: 3,
        groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_parse() {
        assert_eq!(parse_budget("1GiB").unwrap(), Some(1 << 30));
        assert_eq!(parse_budget("512MiB").unwrap(), Some(512 << 20));
        assert_eq!(parse_budget("2GB").unwrap(), Some(2_000_000_000));
        assert_eq!(parse_budget("unlimited").unwrap(), None);
        assert!(parse_budget("lots").is_err());
        assert!(parse_budget("1XB").is_err());
    }

    #[test]
    fn default_matrix_expands_without_nonsense() {
        let sc = default_matrix(false)
            .expand(std::path::Path::new("m"))
            .unwrap();
        assert_eq!(sc.len(), 2 + 2 + 4);
        assert!(
            sc.iter()
                .all(|s| (s.storage == "in-memory") == s.budget.is_none())
        );
        assert_eq!(
            sc[0].model_path,
            std::path::Path::new("m/4b-a0.6b-q4_0.gguf")
        );
        assert_eq!(
            sc[0].keys(2, "llama.cpp"),
            [
                "llama.cpp|4b-a0.6b|q4_0|in-memory|unlimited|2|pp128",
                "llama.cpp|4b-a0.6b|q4_0|in-memory|unlimited|2|tg64"
            ]
        );
        let emulated: Vec<&str> = sc
            .iter()
            .filter(|s| s.emulated_storage())
            .map(|s| s.storage.as_str())
            .collect();
        assert_eq!(emulated, ["nvme-gen4", "ufs-3.1", "sata-ssd", "emmc"]);
    }

    #[test]
    fn toml_matrix_parses() {
        let m: Matrix = toml::from_str(
            r#"
            reps = 2
            [[scenario]]
            model = "x/my.gguf"
            quant = "q4_0"
            storage = ["in-memory", "real"]
            budget = ["unlimited", "1GiB"]
            tests = ["pp32", "tg8"]
            "#,
        )
        .unwrap();
        let sc = m.expand(std::path::Path::new("m")).unwrap();
        assert_eq!(sc.len(), 2);
        assert_eq!(sc[0].model_label, "my");
        assert_eq!((sc[0].pp.clone(), sc[0].tg.clone()), (vec![32], vec![8]));
        let bad: Matrix = toml::from_str(
            "[[scenario]]\nquant='q4_0'\nstorage=['real']\nbudget=['1GiB']\ntests=['xx1']",
        )
        .unwrap();
        assert!(bad.expand(std::path::Path::new("m")).is_err());
    }
}
