//! `cargo xtask report RESULTS...`: rebuilds the HTML report from result records (any machines),
//! optionally with a baseline, and checks it in a headless browser when one is installed.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bench_suite::machine::{Machine, now_rfc3339};
use reports::ProfileData;

use crate::workspace_root;

/// `cargo xtask report` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// JSONL result files (default `target/bench/results.jsonl`).
    results: Vec<PathBuf>,
    /// Output directory (default `target/reports/report-<date>`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Baseline records to compare with.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Profile artefact directories (`thinker profile --out DIR`) to chart.
    #[arg(long)]
    profile: Vec<PathBuf>,
}

/// Renders records (optionally only those of `commit`) into `out/index.html`; returns its path.
pub fn render(
    results: &[PathBuf],
    baseline: Option<&Path>,
    profiles: &[ProfileData],
    out: &Path,
    _commit: Option<&str>,
) -> Result<PathBuf> {
    let records = reports::load_records(results).context("loading records")?;
    let base = match baseline {
        Some(b) => Some(reports::load_records(&[b.to_path_buf()]).context("loading baseline")?),
        None => None,
    };
    let m = Machine::detect();
    let machine = reports::Machine {
        cpu_model: m.cpu_model,
        cores: m.cores as u32,
        simd: m.simd,
        mem_total_bytes: m.mem_total_bytes,
        kernel: m.kernel,
        disk: disk_of(&workspace_root()),
        date: now_rfc3339(),
        commit: m.commit,
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let index = reports::render_report(out, &machine, &records, profiles, base.as_deref())?;
    if let Some(chromium) = reports::browser::find_chromium() {
        let shot = out.join("screenshot.png");
        let cfg = reports::browser::BrowserConfig::new(chromium);
        match reports::browser::check_report(&index, &shot, &cfg) {
            Ok(check) => {
                let problems = check.problems();
                if problems.is_empty() {
                    eprintln!(
                        "browser check: rendered without errors ({})",
                        shot.display()
                    );
                } else {
                    eprintln!("browser check found problems: {problems:?}");
                }
            }
            Err(e) => eprintln!("browser check could not run: {e}"),
        }
    } else {
        eprintln!("browser check skipped: no chromium installed (apt-get install chromium)");
    }
    Ok(index)
}

/// The block device behind `path`, from /proc/mounts (best effort).
fn disk_of(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    let (dev, fs) = crate::stage::mount_of(&path.canonicalize().ok()?, &mounts)?;
    Some(format!("{dev} ({fs})"))
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let root = workspace_root();
    let results = if a.results.is_empty() {
        vec![root.join("target/bench/results.jsonl")]
    } else {
        a.results.clone()
    };
    let mut profiles = Vec::new();
    for d in &a.profile {
        let name = d
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        profiles.push(crate::profile_data::from_artefacts(d, &name)?);
    }
    let out = a.out.clone().unwrap_or_else(|| {
        root.join("target/reports")
            .join(format!("report-{}", now_rfc3339().replace(':', "")))
    });
    let index = render(&results, a.baseline.as_deref(), &profiles, &out, None)?;
    println!("report: {}", index.display());
    Ok(())
}
