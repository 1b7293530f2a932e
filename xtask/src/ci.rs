//! `cargo xtask ci`: a small deterministic benchmark set gated against a committed baseline
//! (`bench-suite/baselines/ci-<profile>.json`).
//!
//! Wall time on shared CI machines moves by tens of percent, so the gate uses quantities that do
//! not: the instruction count of a fixed decode run (valgrind/callgrind; it does not implement
//! AVX-512, so the AVX2/scalar path is what is counted), and counters the engine computes (weight
//! bytes per token, ReGLU sparsity). Tokens/s is shown as a ratio to the baseline for information
//! only. `--update-baseline` rewrites the file.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use bench_suite::record::Record;
use serde::{Deserialize, Serialize};

use crate::workspace_root;

/// Allowed growth of the instruction count before the gate fails (release build: codegen is
/// deterministic).
const INSTR_TOLERANCE: f64 = 0.03;
/// The same for the quick mode's dev build, whose incremental codegen partitions code differently
/// in a fresh clone than in a long-lived tree (measured: 3.2% apart for the same source).
const INSTR_TOLERANCE_QUICK: f64 = 0.10;
/// Allowed relative change of engine counters (they are deterministic; this absorbs
/// float-summation-order effects on ReLU zeros).
const COUNTER_TOLERANCE: f64 = 0.005;

/// `cargo xtask ci` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Use the dev build the tests already built (fast; what `.ci/run` does).
    #[arg(long)]
    quick: bool,
    /// Write the measured values as the new baseline.
    #[arg(long)]
    update_baseline: bool,
}

/// The gated values.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Gate {
    /// Instructions of the fixed decode run (None when valgrind is missing).
    pub instructions: Option<u64>,
    /// Weight bytes per decoded token.
    pub weight_bytes_per_token: f64,
    /// Share of zero ReGLU activations over the run.
    pub sparsity: f64,
    /// Decode tokens/s (informative only).
    pub tg_tps: f64,
}

fn thinker_path(root: &Path, quick: bool) -> Result<PathBuf> {
    let profile = if quick { "debug" } else { "release" };
    let mut args = vec!["build", "--quiet", "-p", "thinker"];
    if !quick {
        args.push("--release");
    }
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(&args)
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("building thinker failed");
    }
    Ok(root.join("target").join(profile).join("thinker"))
}

fn bench_args(model: &Path) -> Vec<String> {
    vec![
        "bench".into(),
        "-m".into(),
        model.display().to_string(),
        "-t".into(),
        "1".into(),
        "-p".into(),
        "0".into(),
        "-n".into(),
        "16".into(),
        "-r".into(),
        "1".into(),
        "-o".into(),
        "jsonl".into(),
        "--bandwidth-mib".into(),
        "0".into(),
    ]
}

fn measure(thinker: &Path, model: &Path) -> Result<Gate> {
    let out = Command::new(thinker)
        .args(bench_args(model))
        .output()
        .context("running thinker bench")?;
    if !out.status.success() {
        bail!(
            "thinker bench failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let r: Record =
        serde_json::from_str(line.lines().next().unwrap_or("")).context("parsing the record")?;
    let instructions = callgrind(thinker, model)?;
    Ok(Gate {
        instructions,
        weight_bytes_per_token: r.weight_bytes_per_token.unwrap_or(f64::NAN),
        sparsity: r.sparsity.unwrap_or(f64::NAN),
        tg_tps: r.median_tps,
    })
}

/// Instruction count of the run under callgrind, if valgrind is installed.
fn callgrind(thinker: &Path, model: &Path) -> Result<Option<u64>> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        return Ok(None);
    }
    let dir = tempdir()?;
    let outf = dir.join("callgrind.out");
    let st = Command::new("valgrind")
        .args(["--tool=callgrind", "--quiet"])
        .arg(format!("--callgrind-out-file={}", outf.display()))
        .arg(thinker)
        .args(bench_args(model))
        .env("RAYON_NUM_THREADS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running valgrind")?;
    if !st.success() {
        bail!("valgrind --tool=callgrind failed");
    }
    let text = std::fs::read_to_string(&outf)?;
    let _ = std::fs::remove_dir_all(&dir);
    let n = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok());
    Ok(n)
}

fn tempdir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("xtask-ci-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Compares; returns (markdown rows, failures).
pub fn compare(base: &Gate, now: &Gate, instr_tol: f64) -> (Vec<String>, Vec<String>) {
    let mut rows = Vec::new();
    let mut fails = Vec::new();
    let rel = |a: f64, b: f64| if a == 0.0 { 0.0 } else { (b - a) / a };
    match (base.instructions, now.instructions) {
        (Some(a), Some(b)) => {
            let d = rel(a as f64, b as f64);
            let ok = d <= instr_tol;
            rows.push(format!("| instructions (callgrind) | {a} | {b} | {:+.2}% | {} |", 100.0 * d, if ok { "ok" } else { "REGRESSION" }));
            if !ok {
                fails.push(format!("instructions grew {:+.2}% (limit {:.0}%)", 100.0 * d, 100.0 * instr_tol));
            }
        }
        (_, n) => rows.push(format!("| instructions (callgrind) | {:?} | {:?} | - | not gated (valgrind or baseline missing) |", base.instructions, n)),
    }
    for (name, a, b, higher_is_worse) in [
        (
            "weight bytes / token",
            base.weight_bytes_per_token,
            now.weight_bytes_per_token,
            true,
        ),
        ("ReGLU zero share", base.sparsity, now.sparsity, false),
    ] {
        let d = rel(a, b);
        let bad = if higher_is_worse {
            d > COUNTER_TOLERANCE
        } else {
            d < -COUNTER_TOLERANCE
        };
        rows.push(format!(
            "| {name} | {a:.4} | {b:.4} | {:+.2}% | {} |",
            100.0 * d,
            if bad { "REGRESSION" } else { "ok" }
        ));
        if bad {
            fails.push(format!("{name} moved {:+.2}%", 100.0 * d));
        }
    }
    rows.push(format!(
        "| decode t/s (informative, noisy) | {:.1} | {:.1} | x{:.2} | not gated |",
        base.tg_tps,
        now.tg_tps,
        now.tg_tps / base.tg_tps
    ));
    (rows, fails)
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let root = workspace_root();
    let thinker = thinker_path(&root, a.quick)?;
    let model = root.join("engine/tests/fixtures/tiny-t1-gguf/tiny-t1-Q4_0.gguf");
    let now = measure(&thinker, &model)?;
    let base_path = root.join("bench-suite/baselines").join(format!(
        "ci-{}.json",
        if a.quick { "debug" } else { "release" }
    ));
    if a.update_baseline {
        std::fs::create_dir_all(base_path.parent().unwrap_or(&root))?;
        std::fs::write(&base_path, serde_json::to_string_pretty(&now)? + "\n")?;
        println!("baseline written: {}", base_path.display());
        return Ok(());
    }
    let base: Gate =
        serde_json::from_str(&std::fs::read_to_string(&base_path).with_context(|| {
            format!(
                "no baseline at {} (run with --update-baseline)",
                base_path.display()
            )
        })?)?;
    let tol = if a.quick {
        INSTR_TOLERANCE_QUICK
    } else {
        INSTR_TOLERANCE
    };
    let (rows, fails) = compare(&base, &now, tol);
    println!(
        "### cargo xtask ci ({})\n",
        if a.quick {
            "quick, dev build"
        } else {
            "release build"
        }
    );
    println!(
        "Model: tiny-t1 Q4_0 fixture, 16 decode tokens, 1 thread. Gated on instruction counts and engine counters; wall time is informative.\n"
    );
    println!("| metric | baseline | now | change | verdict |\n| --- | ---: | ---: | ---: | --- |");
    for r in rows {
        println!("{r}");
    }
    if !fails.is_empty() {
        bail!("performance regression: {}", fails.join("; "));
    }
    println!("\nno regression");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_catches_regressions_and_passes_noise() {
        let base = Gate {
            instructions: Some(1_000_000),
            weight_bytes_per_token: 1000.0,
            sparsity: 0.5,
            tg_tps: 100.0,
        };
        let same = Gate {
            tg_tps: 60.0,
            ..base.clone()
        };
        assert!(
            compare(&base, &same, INSTR_TOLERANCE).1.is_empty(),
            "wall time is not gated"
        );
        let slower = Gate {
            instructions: Some(1_050_000),
            ..base.clone()
        };
        assert_eq!(compare(&base, &slower, INSTR_TOLERANCE).1.len(), 1);
        let fatter = Gate {
            weight_bytes_per_token: 1100.0,
            ..base.clone()
        };
        assert_eq!(compare(&base, &fatter, INSTR_TOLERANCE).1.len(), 1);
        let denser = Gate {
            sparsity: 0.4,
            ..base.clone()
        };
        assert_eq!(compare(&base, &denser, INSTR_TOLERANCE).1.len(), 1);
        let no_valgrind = Gate {
            instructions: None,
            ..base.clone()
        };
        assert!(compare(&base, &no_valgrind, INSTR_TOLERANCE).1.is_empty());
    }
}
