//! `cargo xtask bench`: builds `thinker`, generates the synthetic models, runs the scenario matrix
//! (each scenario in its own process, inside a cgroup memory limit when it has a budget), appends
//! one record per test to `results.jsonl`, profiles one run, and renders the HTML report.
//!
//! With `--peer llama.cpp` every scenario the peer can run is measured by llama.cpp too (through
//! `xtask/peer/llama_cpp_bench.py` in the venv of `cargo xtask peer-setup`), with the same threads,
//! tests, repetitions and cgroup limit; see [`crate::peer`] for what it can run.
//!
//! Resuming: a scenario whose records (same key — engine included —, same commit) are already in
//! `results.jsonl` is skipped, so a re-run after Ctrl-C finishes the rest. Records are appended
//! and fsynced one at a time, so an interruption loses nothing already measured.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_suite::machine::{Machine, kernel_release, model_digest, now_rfc3339};
use bench_suite::record::{self, Record};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cgroup::Cgroup;
use crate::peer::{self, DriverConfig, Peer, Ready, RecordContext};
use crate::plan::{self, Engine, Job, PlanConfig};
use crate::scenario::{Matrix, Scenario, counts_arg, default_matrix};
use crate::stage::{Stager, Staging};
use crate::{profile_data, report, workspace_root};

/// `cargo xtask bench` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Add the 21B model and longer tests (needs ~15 GB of disk and much longer).
    #[arg(long)]
    full: bool,
    /// A user-defined scenario matrix (TOML; see `xtask/src/scenario.rs`).
    #[arg(long)]
    scenarios: Option<PathBuf>,
    /// Only the tiny preset, one repetition: a smoke run of the whole pipeline (seconds).
    #[arg(long)]
    quick: bool,
    /// Where `results.jsonl` lives (default `target/bench`).
    #[arg(long)]
    results_dir: Option<PathBuf>,
    /// Where generated models go (default `target/models`).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Compute threads (default: the matrix's, 0 = all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// Repetitions per test (default: the matrix's).
    #[arg(short = 'r', long)]
    reps: Option<usize>,
    /// Re-measure scenarios already in `results.jsonl` for this commit.
    #[arg(long)]
    fresh: bool,
    /// Compare against the records in this JSONL file in the report.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Skip the profiled run.
    #[arg(long)]
    no_profile: bool,
    /// Also measure a peer engine on the scenarios it can run (needs `cargo xtask peer-setup`):
    /// in memory, and memory budgets on the real disk under the same cgroup limit (mmap); the
    /// emulated storage profiles are ours only.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// RAM-backed directory (tmpfs) where a model is copied for the emulated storage profiles,
    /// so that the profile, not this machine's disk, sets the read pace (see `stage.rs`).
    #[arg(long, default_value = crate::stage::DEFAULT_DIR)]
    stage_dir: PathBuf,
    /// Read the emulated profiles' models from where they are (the records' `emulation_excess`
    /// then shows how much the real disk slowed them).
    #[arg(long)]
    no_stage: bool,
}

/// What the built `thinker` supports (older builds lack offload flags).
struct Capabilities {
    offload: bool,
}

fn capabilities(thinker: &Path) -> Result<Capabilities> {
    let o = Command::new(thinker)
        .args(["bench", "--help"])
        .output()
        .context("running thinker bench --help")?;
    let help = String::from_utf8_lossy(&o.stdout);
    Ok(Capabilities {
        offload: help.contains("--memory-budget"),
    })
}

/// Builds the release `thinker` and returns its path.
pub fn build_thinker(root: &Path) -> Result<PathBuf> {
    eprintln!("building thinker (release)…");
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "thinker"])
        .status()
        .context("running cargo build")?;
    if !st.success() {
        bail!("cargo build --release -p thinker failed");
    }
    Ok(root.join("target/release/thinker"))
}

/// Generates (or reuses) a preset model.
pub fn ensure_model(thinker: &Path, preset: &str, quant: &str, path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let st = Command::new(thinker)
        .args(["gen", "--preset", preset, "--type", quant, "--out"])
        .arg(path)
        .status()
        .context("running thinker gen")?;
    if !st.success() {
        bail!("thinker gen --preset {preset} --type {quant} failed");
    }
    Ok(())
}

fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok()
}

/// The memory cgroup scenarios with a budget run in.
const CGROUP: &str = "smallthinker-bench";

/// What a process run under a scenario's limits left behind.
struct Limited {
    /// Its stdout.
    stdout: String,
    /// Peak memory of its cgroup (page cache included), if it ran in one.
    peak: Option<u64>,
    /// The cgroup's memory limit, if it ran in one.
    limit: Option<u64>,
    /// How the limits were applied.
    notes: Vec<String>,
}

/// Runs `cmd` under the scenario's limits: with a budget, the page cache is dropped first and
/// the process runs in a cgroup limited to budget + 5% (the engine plans for the budget, the
/// cgroup proves it). Without a cgroup the run goes on with a note, unless `require_cgroup`
/// (an engine with no budget of its own would measure nothing then).
fn run_limited(
    cmd: &mut Command,
    s: &Scenario,
    what: &str,
    require_cgroup: bool,
) -> Result<Limited> {
    let mut notes = Vec::new();
    let mut cgroup = None;
    if let Some(b) = s.budget {
        if drop_caches() {
            notes.push("page cache dropped before the run".to_string());
        } else {
            notes
                .push("could not drop the page cache (not root?): storage may be warm".to_string());
        }
        match Cgroup::create(CGROUP, b + b / 20) {
            Ok(cg) => cgroup = Some(cg),
            Err(e) if require_cgroup => return Err(e.context(format!("{what} needs a cgroup"))),
            Err(e) => notes.push(format!("no cgroup limit ({e}); peak is the process RSS")),
        }
    }
    let out = match &cgroup {
        Some(cg) => cg.run(cmd)?,
        None => cmd
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running {what}"))?,
    };
    if !out.status.success() {
        let killed = cgroup.as_ref().is_some_and(|cg| cg.oom_killed());
        bail!(
            "{what} failed ({}){}",
            out.status,
            if killed {
                ": killed by the cgroup memory limit"
            } else {
                ""
            }
        );
    }
    Ok(Limited {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        peak: cgroup.as_ref().and_then(|cg| cg.max_usage()),
        limit: cgroup.as_ref().and(s.budget).map(|b| b + b / 20),
        notes,
    })
}

/// Stamps the scenario's storage, budget, cgroup peak and notes on its records. With the model
/// `staged` on a tmpfs, its mapped pages are not in the cgroup's count: the peak is the larger of
/// the cgroup's and the process's own peak RSS (which includes them).
/// Facts a peer's driver does not report (ours do: the kernel, the cgroup limit it ran under,
/// the model's digest) are filled in here.
fn apply_limits(recs: &mut [Record], s: &Scenario, lim: &Limited, staged: bool) {
    let digest = recs
        .iter()
        .any(|r| r.model_digest.is_none())
        .then(|| model_digest(&s.model_path))
        .flatten();
    for r in recs {
        r.storage = s.storage.clone();
        r.budget_bytes = s.budget;
        if r.kernel.is_empty() {
            r.kernel = kernel_release();
        }
        r.cgroup_limit_bytes = r.cgroup_limit_bytes.or(lim.limit);
        if r.model_digest.is_none() {
            r.model_digest = digest.clone();
        }
        if let Some(p) = lim.peak {
            let rss = r.peak_mem_bytes.filter(|_| staged).unwrap_or(0);
            r.peak_mem_bytes = Some(p.max(rss));
            r.mem_source = Some(if staged { "cgroup+rss" } else { "cgroup" }.into());
        }
        if !lim.notes.is_empty() {
            let prev = r.note.take().unwrap_or_default();
            r.note = Some(
                format!("{prev}; {}", lim.notes.join("; "))
                    .trim_start_matches("; ")
                    .to_string(),
            );
        }
    }
}

/// Runs one scenario's `thinker bench`; returns its records.
fn run_scenario(
    thinker: &Path,
    s: &Scenario,
    threads: usize,
    reps: usize,
    run_id: &str,
    caps: &Capabilities,
    staging: Option<&Staging>,
) -> Result<Vec<Record>> {
    let model = match staging {
        Some(Staging::Staged(p)) => p.as_path(),
        _ => s.model_path.as_path(),
    };
    let mut cmd = Command::new(thinker);
    cmd.arg("bench")
        .arg("-m")
        .arg(model)
        .args(["-t", &threads.to_string()])
        .args(["-r", &reps.to_string()])
        .args(["-o", "jsonl", "--run-id", run_id])
        .args(["--label", &s.model_label, "--quant", &s.quant])
        .args(["-p", &counts_arg(&s.pp), "-n", &counts_arg(&s.tg)]);
    if let Some(b) = s.budget {
        if !caps.offload {
            bail!("this build of thinker has no --memory-budget (offload not available)");
        }
        cmd.args(["--memory-budget", &b.to_string(), "--storage", &s.storage]);
        // Measure without the bandwidth probe's buffer inside the budget.
        cmd.args(["--bandwidth-mib", "0"]);
    }
    let mut lim = run_limited(&mut cmd, s, "thinker bench", false)?;
    let mut recs = Vec::new();
    for line in lim.stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let r: Record = serde_json::from_str(line)
            .with_context(|| format!("bad record from thinker: {line}"))?;
        recs.push(r);
    }
    match staging {
        Some(Staging::Staged(p)) => lim.notes.push(format!(
            "model staged on tmpfs ({}) so the emulated device, not this machine's disk, sets the read pace",
            p.display()
        )),
        Some(Staging::Unstaged(why)) => lim.notes.push(format!(
            "model read from its own disk, not staged on tmpfs ({why}): see emulation_excess"
        )),
        None => {}
    }
    let staged = matches!(staging, Some(Staging::Staged(_)));
    apply_limits(&mut recs, s, &lim, staged);
    Ok(recs)
}

/// Runs one scenario through the llama.cpp driver; returns its records.
fn run_peer_scenario(
    root: &Path,
    ready: &Ready,
    s: &Scenario,
    threads: usize,
    reps: usize,
    cx: RecordContext,
) -> Result<Vec<Record>> {
    let c = DriverConfig {
        model: s.model_path.clone(),
        threads,
        pp: s.pp.clone(),
        tg: s.tg.clone(),
        reps,
        ctx: 0,
    };
    let mut cmd = peer::driver_command(root, ready, &c);
    let mut lim = run_limited(&mut cmd, s, "the llama.cpp driver", true)?;
    if s.budget.is_some() {
        lim.notes.push(
            "llama.cpp has no budget of its own: the kernel pages its mmap'ed weights within the cgroup limit"
                .into(),
        );
    }
    let tests = peer::parse_output(&lim.stdout, &c)?;
    lim.notes.extend(peer::cache_leak_note(&tests, s.budget));
    let mut recs = peer::to_records(
        &tests,
        &RecordContext {
            model: s.model_label.clone(),
            quant: s.quant.clone(),
            storage: s.storage.clone(),
            budget_bytes: s.budget,
            ..cx
        },
    );
    apply_limits(&mut recs, s, &lim, false);
    Ok(recs)
}

/// Prints above the progress bar, or plainly when the bar is hidden (stderr not a terminal).
fn say(pb: &ProgressBar, line: String) {
    if pb.is_hidden() {
        println!("{line}");
    } else {
        pb.println(line);
    }
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let root = workspace_root();
    let results_dir = a
        .results_dir
        .clone()
        .unwrap_or_else(|| root.join("target/bench"));
    let models_dir = a
        .models_dir
        .clone()
        .unwrap_or_else(|| root.join("target/models"));
    std::fs::create_dir_all(&results_dir)?;
    let mut matrix: Matrix = match &a.scenarios {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None if a.quick => {
            let mut m = default_matrix(false);
            m.groups.truncate(1);
            m.groups[0].preset = Some("tiny".into());
            m.groups[0].tests = vec!["pp32".into(), "tg16".into()];
            m.reps = 1;
            m
        }
        None => default_matrix(a.full),
    };
    if let Some(t) = a.threads {
        matrix.threads = t;
    }
    if let Some(r) = a.reps {
        matrix.reps = r;
    }
    let scenarios = matrix.expand(&models_dir)?;
    let machine = Machine::detect();
    let threads = if matrix.threads == 0 {
        machine.cores
    } else {
        matrix.threads
    };
    let run_id = format!("{}-{}", now_rfc3339().replace(':', ""), machine.commit);
    let results = results_dir.join("results.jsonl");

    // Before any build: a missing peer is the user's to fix first.
    let peer_ready = match a.peer {
        Some(Peer::LlamaCpp) => Some(peer::check_ready(&root)?),
        None => None,
    };
    let thinker = build_thinker(&root)?;
    let caps = capabilities(&thinker)?;

    // Plan.
    let done: HashSet<String> = if a.fresh {
        HashSet::new()
    } else {
        record::read(&results)?
            .into_iter()
            .filter(|r| r.commit == machine.commit)
            .map(|r| r.key())
            .collect()
    };
    let tiny = a.quick;
    println!(
        "== cargo xtask bench: {} scenarios, {threads} threads, {} reps",
        scenarios.len(),
        matrix.reps
    );
    if let Some(r) = &peer_ready {
        println!(
            "  peer: llama.cpp via llama-cpp-python {} (CMAKE_ARGS \"{}\"), mmap, no repack; emulated storage profiles are ours only",
            r.info.llama_cpp_python, r.setup.cmake_args
        );
    }
    let p = plan::plan(
        &scenarios,
        &done,
        &PlanConfig {
            threads: threads as u32,
            reps: matrix.reps,
            tiny,
            offload: caps.offload,
            peer: a.peer,
            cgroup: Cgroup::available(CGROUP),
        },
    );
    for l in &p.lines {
        println!("{l}");
    }
    let todo = p.todo;
    let presets: Vec<(String, String, PathBuf)> = {
        let mut v: Vec<(String, String, PathBuf)> = todo
            .iter()
            .map(|j| &j.scenario)
            .filter_map(|s| {
                s.preset
                    .clone()
                    .map(|p| (p, s.quant.clone(), s.model_path.clone()))
            })
            .collect();
        v.sort();
        v.dedup();
        v
    };
    println!(
        "  plus model generation ({} file(s), reused when present) — estimated {:.1} min in all (the default run is designed to stay under 15 min on 2 cores)",
        presets.len(),
        (p.est_secs + 60.0 * presets.len() as f64) / 60.0
    );
    println!("  results: {}", results.display());

    for (preset, quant, path) in &presets {
        ensure_model(&thinker, preset, quant, path)?;
    }

    let pb = ProgressBar::new(todo.len() as u64);
    pb.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} scenarios, {elapsed} elapsed, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut failures = Vec::new();
    let mut stager = Stager::new((!a.no_stage).then(|| a.stage_dir.clone()));
    let started = Instant::now();
    for Job {
        scenario: s,
        engine,
    } in &todo
    {
        let who = match engine {
            Engine::Ours => String::new(),
            Engine::Peer(_) => format!("[{}] ", engine.name()),
        };
        pb.set_message(format!("{who}{}", s.describe()));
        if !(matches!(engine, Engine::Ours) && s.emulated_storage()) {
            // A staged copy would only hold memory this scenario may need.
            stager.release();
        }
        let measured = match (engine, &peer_ready) {
            (Engine::Peer(_), Some(ready)) => run_peer_scenario(
                &root,
                ready,
                s,
                threads,
                matrix.reps,
                RecordContext {
                    run_id: run_id.clone(),
                    commit: machine.commit.clone(),
                    cpu_model: machine.cpu_model.clone(),
                    cmake_args: ready.setup.cmake_args.clone(),
                    date: now_rfc3339(),
                    ..RecordContext::default()
                },
            ),
            (Engine::Peer(_), None) => Err(anyhow::anyhow!("peer not set up")),
            (Engine::Ours, _) => {
                let staging = if s.emulated_storage() {
                    let st = stager.stage(&s.model_path, s.budget.unwrap_or(0));
                    if let Staging::Unstaged(why) = &st {
                        say(
                            &pb,
                            format!("  note: {} reads its model from disk: {why}", s.describe()),
                        );
                    }
                    Some(st)
                } else {
                    None
                };
                run_scenario(
                    &thinker,
                    s,
                    threads,
                    matrix.reps,
                    &run_id,
                    &caps,
                    staging.as_ref(),
                )
            }
        };
        match measured {
            Ok(recs) => {
                for r in &recs {
                    record::append(&results, r)?;
                    say(
                        &pb,
                        format!(
                            "  {who}{:<44} {:>6} {:>9.2} t/s (median){}",
                            s.describe(),
                            r.test,
                            r.median_tps,
                            r.peak_mem_bytes
                                .map(|p| format!(
                                    ", peak {:.2} GiB ({})",
                                    p as f64 / (1u64 << 30) as f64,
                                    r.mem_source.clone().unwrap_or_default()
                                ))
                                .unwrap_or_default()
                        ),
                    );
                }
            }
            Err(e) => {
                say(&pb, format!("  FAILED {who}{}: {e:#}", s.describe()));
                failures.push(format!("{who}{}: {e:#}", s.describe()));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    drop(stager);
    println!(
        "measured {} scenario runs in {:.1} min",
        todo.len(),
        started.elapsed().as_secs_f64() / 60.0
    );

    // One profiled run of the first in-memory scenario, and one of the smallest budget on the
    // real disk (cold, as its scenario, but outside its cgroup): why decoding waits there.
    let mut profiles = Vec::new();
    let report_dir = root.join("target/reports").join(&run_id);
    if !a.no_profile
        && let Some(s) = scenarios.iter().find(|s| s.budget.is_none())
    {
        let dir = report_dir.join(format!("profile-{}-{}", s.model_label, s.quant));
        match profile_data::profile(&thinker, &s.model_path, threads, &dir, tiny) {
            Ok(p) => profiles.push(p),
            Err(e) => failures.push(format!("profile: {e:#}")),
        }
    }
    if !a.no_profile
        && caps.offload
        && let Some(s) = scenarios
            .iter()
            .filter(|s| s.budget.is_some() && s.storage == "real")
            .min_by_key(|s| s.budget)
        && let Some(b) = s.budget
    {
        let dir = report_dir.join(format!(
            "profile-{}-{}-{}",
            s.model_label, s.quant, s.budget_label
        ));
        let mut cmd = profile_data::command(&thinker, &s.model_path, threads, &dir, tiny);
        cmd.args(["--memory-budget", &b.to_string(), "--storage", &s.storage]);
        let name = format!(
            "{} · {} · {}",
            profile_data::model_name(&s.model_path),
            s.budget_label,
            s.storage
        );
        // Cold, as its scenario, but outside the cgroup: the profiler's recording is not part
        // of the budget (`thinker profile` prints its peak against it).
        if !drop_caches() {
            println!(
                "  profile under {}: could not drop the page cache",
                s.budget_label
            );
        }
        match profile_data::run(&mut cmd, &dir, &name) {
            Ok(p) => profiles.push(p),
            Err(e) => failures.push(format!("profile under {}: {e:#}", s.budget_label)),
        }
    }

    let records: Vec<PathBuf> = vec![results.clone()];
    let index = report::render(
        &records,
        a.baseline.as_deref(),
        &profiles,
        &report_dir,
        Some(&machine.commit),
    )?;
    println!("report: {}", index.display());
    if !failures.is_empty() {
        println!("{} problem(s):", failures.len());
        for f in &failures {
            println!("  - {f}");
        }
    }
    Ok(())
}
