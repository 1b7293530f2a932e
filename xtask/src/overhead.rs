//! `cargo xtask profiler-overhead`: what the profiler's tracing layer costs a real decode.
//!
//! Two measurements of the same decode (`tgN` from an empty context):
//!
//! 1. Whole runs: `thinker bench` (one repetition per process, after its warm-up) alternately
//!    without a subscriber and with `--profiler` (the profile layer installed globally, as
//!    `thinker profile` does), optionally also a build with `tracing/max_level_off` (every span
//!    compiled out), rotating the order each round. Separate processes keep "no subscriber"
//!    exactly that (a process cannot remove a global subscriber), but on a shared machine whole
//!    runs meet different loads, so these medians are noisy.
//! 2. Single steps: `thinker bench --profiler ab`, the layer switched on and off between
//!    adjacent decode steps in one process; the headline ratio.
//!
//! Prints both and writes the samples to `target/bench/profiler-overhead.json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use bench_suite::machine::{Machine, now_rfc3339};
use bench_suite::record::{self, Record};
use serde::Serialize;

use crate::bench::{build_thinker, ensure_model};
use crate::workspace_root;

/// `cargo xtask profiler-overhead` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model file (default: the synthetic `4b-a0.6b` Q4_0 under `target/models/`, generated if
    /// missing).
    #[arg(short = 'm', long)]
    model: Option<PathBuf>,
    /// Compute threads (0: all cores).
    #[arg(short = 't', long, default_value_t = 2)]
    threads: usize,
    /// Decode steps per run (`tgN`).
    #[arg(short = 'n', long, default_value_t = 64)]
    n_gen: usize,
    /// Rounds; each round runs every variant once.
    #[arg(short = 'r', long, default_value_t = 7)]
    rounds: usize,
    /// Also build `thinker` with `tracing/max_level_off` (into `target/tracing-off`) and
    /// measure it: the cost of the spans' disabled checks with no subscriber.
    #[arg(long)]
    max_level_off: bool,
}

/// One measured variant.
#[derive(Serialize)]
struct Variant {
    name: &'static str,
    /// Tokens per second, one per process, in run order.
    samples_tps: Vec<f64>,
    median_tps: f64,
    /// Median ms per token over the no-subscriber median's (1.0 = no cost).
    ratio_ms_per_token: Option<f64>,
}

/// What `profiler-overhead.json` holds.
#[derive(Serialize)]
struct Report {
    date: String,
    commit: String,
    cpu_model: String,
    model: String,
    threads: usize,
    n_gen: usize,
    rounds: usize,
    /// `/proc/loadavg` before and after.
    loadavg: [String; 2],
    variants: Vec<Variant>,
    /// `thinker bench --profiler ab -o json` output.
    ab: serde_json::Value,
}

struct Setup<'a> {
    name: &'static str,
    thinker: PathBuf,
    extra: &'a [&'a str],
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Builds `thinker` with every `tracing` level compiled out, in its own target directory.
fn build_tracing_off(root: &Path) -> Result<PathBuf> {
    eprintln!("building thinker with tracing/max_level_off (release, target/tracing-off)…");
    let dir = root.join("target/tracing-off");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "thinker"])
        .args(["--features", "tracing/max_level_off", "--target-dir"])
        .arg(&dir)
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build with tracing/max_level_off failed");
    }
    Ok(dir.join("release/thinker"))
}

/// One `thinker bench` process: its single tg sample, t/s.
fn run_once(s: &Setup<'_>, model: &Path, a: &Args) -> Result<f64> {
    let out = Command::new(&s.thinker)
        .arg("bench")
        .arg("-m")
        .arg(model)
        .args(["-t", &a.threads.to_string(), "-p", "0"])
        .args(["-n", &a.n_gen.to_string(), "-r", "1"])
        .args(["-o", "jsonl", "--bandwidth-mib", "0"])
        .args(s.extra)
        .stderr(Stdio::null())
        .output()
        .context("running thinker bench")?;
    if !out.status.success() {
        bail!("thinker bench ({}) failed: {}", s.name, out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .context("thinker bench printed no record")?;
    let r: Record = serde_json::from_str(line).context("parsing thinker's record")?;
    Ok(r.median_tps)
}

/// `thinker bench --profiler ab`: its JSON rows.
fn run_ab(thinker: &Path, model: &Path, a: &Args) -> Result<serde_json::Value> {
    let out = Command::new(thinker)
        .arg("bench")
        .arg("-m")
        .arg(model)
        .args(["-t", &a.threads.to_string(), "-p", "0"])
        .args(["-n", &a.n_gen.to_string(), "-r", &a.rounds.to_string()])
        .args(["-o", "json", "--bandwidth-mib", "0", "--profiler", "ab"])
        .stderr(Stdio::null())
        .output()
        .context("running thinker bench --profiler ab")?;
    if !out.status.success() {
        bail!("thinker bench --profiler ab failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing thinker bench --profiler ab output")
}

/// Median ms/token of `v` over that of `base` (from the t/s medians).
fn ratio(v: f64, base: f64) -> Option<f64> {
    (v > 0.0 && base > 0.0).then(|| base / v)
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    if a.rounds == 0 || a.n_gen == 0 {
        bail!("--rounds and -n must be at least 1");
    }
    let root = workspace_root();
    let thinker = build_thinker(&root)?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => {
            let p = root.join("target/models/4b-a0.6b-q4_0.gguf");
            ensure_model(&thinker, "4b-a0.6b", "q4_0", &p)?;
            p
        }
    };
    let mut setups = vec![
        Setup {
            name: "no subscriber",
            thinker: thinker.clone(),
            extra: &[],
        },
        Setup {
            name: "profiler layer",
            thinker: thinker.clone(),
            extra: &["--profiler"],
        },
    ];
    if a.max_level_off {
        setups.push(Setup {
            name: "tracing compiled out",
            thinker: build_tracing_off(&root)?,
            extra: &[],
        });
    }
    let machine = Machine::detect();
    let load_before = loadavg();
    println!(
        "== profiler overhead: {} rounds x {} variants, tg{} on {} thread(s), {}; load {load_before}",
        a.rounds,
        setups.len(),
        a.n_gen,
        a.threads,
        model.display()
    );
    let mut samples = vec![Vec::new(); setups.len()];
    for round in 0..a.rounds {
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let tps = run_once(&setups[i], &model, &a)?;
            println!(
                "  round {}/{} {:<22} {tps:>7.3} t/s",
                round + 1,
                a.rounds,
                setups[i].name
            );
            samples[i].push(tps);
        }
    }
    println!(
        "  in-process A/B: {} repetitions of tg{}, layer switched between steps…",
        a.rounds, a.n_gen
    );
    let ab = run_ab(&thinker, &model, &a)?;
    let load_after = loadavg();
    let medians: Vec<f64> = samples.iter().map(|s| record::stats(s).2).collect();
    let base = medians[0];
    println!(
        "\n| variant | runs | median t/s | median ms/token | ms/token vs no subscriber |\n| --- | ---: | ---: | ---: | ---: |"
    );
    let mut variants = Vec::new();
    for ((s, v), &m) in setups.iter().zip(samples).zip(&medians) {
        let r = ratio(m, base);
        println!(
            "| {} | {} | {m:.3} | {:.2} | {} |",
            s.name,
            v.len(),
            1e3 / m,
            r.map_or_else(
                || "-".into(),
                |r| format!("{r:.4} ({:+.2}%)", (r - 1.0) * 100.0)
            )
        );
        variants.push(Variant {
            name: s.name,
            samples_tps: v,
            median_tps: m,
            ratio_ms_per_token: r,
        });
    }
    println!(
        "\nsingle steps, layer off/on alternating (off, on, on, off, …) in one process:\n\n| test | steps off / on | off ms/step (median) | on ms/step (median) | on/off (median of 4-step blocks) | on/off (mean step) |\n| --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in ab.as_array().into_iter().flatten() {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} / {} | {:.3} | {:.3} | {:.4} ({:+.2}%) | {:.4} ({:+.2}%) |",
            r["test"].as_str().unwrap_or("?"),
            r["steps_off"],
            r["steps_on"],
            f("median_ms_off"),
            f("median_ms_on"),
            f("ratio_block_median"),
            (f("ratio_block_median") - 1.0) * 100.0,
            f("ratio_total"),
            (f("ratio_total") - 1.0) * 100.0
        );
        println!("  {}", r["captured"].as_str().unwrap_or(""));
    }
    println!("load average (1/5/15 min) before: {load_before}; after: {load_after}");
    let report = Report {
        date: now_rfc3339(),
        commit: machine.commit,
        cpu_model: machine.cpu_model,
        model: model.display().to_string(),
        threads: a.threads,
        n_gen: a.n_gen,
        rounds: a.rounds,
        loadavg: [load_before, load_after],
        variants,
        ab,
    };
    let dir = root.join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("profiler-overhead.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    println!("samples: {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_is_time_per_token_over_the_baseline() {
        // 10 t/s against a 10.5 t/s baseline: 5% more time per token.
        let r = ratio(10.0, 10.5).unwrap();
        assert!((r - 1.05).abs() < 1e-12);
        assert_eq!(ratio(0.0, 10.0), None);
    }
}
