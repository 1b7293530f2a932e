//! The llama.cpp peer: where `cargo xtask peer-setup` installs it, how `cargo xtask bench --peer
//! llama.cpp` runs its driver (`xtask/peer/llama_cpp_bench.py`), and how the driver's JSON lines
//! become result records that sit beside ours (`engine = "llama.cpp"`, same keys otherwise).
//!
//! What the peer can run: in-memory scenarios, and memory budgets on the real disk — llama.cpp
//! maps the file (mmap, no weight repacking) and runs inside the same cgroup limit as our engine,
//! so the kernel pages weights in and out under the budget. The emulated storage profiles
//! (NVMe, UFS, SATA, eMMC) are our engine's own device models; llama.cpp cannot be put on them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use bench_suite::record::{self, Record, SCHEMA};
use serde::{Deserialize, Serialize};

use crate::scenario::counts_arg;

/// The pinned llama-cpp-python: its vendored llama.cpp (0c1e570, the fixtures' one) knows the
/// `smallthinker` architecture.
pub const LLAMA_CPP_PYTHON: &str = "0.3.36";

/// The peer's engine name in records.
pub const ENGINE: &str = "llama.cpp";

/// Our engine's name in records.
pub const OUR_ENGINE: &str = "smallthinker-rs";

/// What `--peer` accepts.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// llama.cpp through llama-cpp-python (`cargo xtask peer-setup`).
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

/// `target/peer`.
pub fn peer_dir(root: &Path) -> PathBuf {
    root.join("target/peer")
}

/// The venv's interpreter.
pub fn venv_python(venv: &Path) -> PathBuf {
    venv.join("bin/python")
}

/// The facts `peer-setup` records about its build (`target/peer/setup.json`).
pub fn setup_file(root: &Path) -> PathBuf {
    peer_dir(root).join("setup.json")
}

/// The committed driver script.
pub fn driver_script(root: &Path) -> PathBuf {
    root.join("xtask/peer/llama_cpp_bench.py")
}

/// How the peer was built (written by `peer-setup`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SetupInfo {
    /// Installed llama-cpp-python version.
    pub llama_cpp_python: String,
    /// `CMAKE_ARGS` of the source build.
    pub cmake_args: String,
    /// `CMAKE_BUILD_PARALLEL_LEVEL` of the build.
    pub build_parallel_level: usize,
    /// Python version of the venv.
    pub python: String,
    /// Wall time of the setup, seconds.
    pub seconds: f64,
    /// When it was built, RFC 3339.
    pub date: String,
}

/// What the driver's `--info` reports about the installed library.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PeerInfo {
    /// llama-cpp-python version.
    pub llama_cpp_python: String,
    /// `llama_print_system_info()`.
    pub system_info: String,
    /// Whether the library names the `smallthinker` architecture.
    pub knows_smallthinker: bool,
}

/// A usable peer installation.
#[derive(Clone, Debug)]
pub struct Ready {
    /// The venv interpreter.
    pub python: PathBuf,
    /// The build facts.
    pub setup: SetupInfo,
    /// The library facts.
    pub info: PeerInfo,
}

const NOT_SET_UP: &str = "the llama.cpp peer is not set up: run `cargo xtask peer-setup` first";

/// Checks that `peer-setup` finished and the library imports and knows SmallThinker.
pub fn check_ready(root: &Path) -> Result<Ready> {
    let python = venv_python(&peer_dir(root).join("venv"));
    if !python.exists() {
        bail!("{NOT_SET_UP} (no {})", python.display());
    }
    let setup: SetupInfo = std::fs::read_to_string(setup_file(root))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .with_context(|| {
            format!(
                "{NOT_SET_UP} (no valid {}: setup unfinished?)",
                setup_file(root).display()
            )
        })?;
    let o = Command::new(&python)
        .arg(driver_script(root))
        .arg("--info")
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !o.status.success() {
        bail!(
            "{NOT_SET_UP} (the driver cannot use llama_cpp: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    let info: PeerInfo =
        serde_json::from_slice(&o.stdout).context("parsing the driver's --info")?;
    if info.llama_cpp_python != LLAMA_CPP_PYTHON {
        bail!(
            "llama-cpp-python {} is installed but this tree pins {LLAMA_CPP_PYTHON}: run `cargo xtask peer-setup --force`",
            info.llama_cpp_python
        );
    }
    if !info.knows_smallthinker {
        bail!("the installed llama.cpp does not know the smallthinker architecture");
    }
    Ok(Ready {
        python,
        setup,
        info,
    })
}

/// What one driver run measures.
#[derive(Clone, Debug, PartialEq)]
pub struct DriverConfig {
    /// GGUF model.
    pub model: PathBuf,
    /// Compute threads.
    pub threads: usize,
    /// Prompt lengths (`ppN`).
    pub pp: Vec<usize>,
    /// Generation lengths (`tgN`).
    pub tg: Vec<usize>,
    /// Repetitions per test.
    pub reps: usize,
    /// Context size (0: n_prompt + n_gen per test, as llama-bench).
    pub ctx: usize,
}

/// The driver's command line (without the interpreter and script).
pub fn driver_args(c: &DriverConfig) -> Vec<String> {
    vec![
        "-m".into(),
        c.model.to_string_lossy().into_owned(),
        "-t".into(),
        c.threads.to_string(),
        "-p".into(),
        counts_arg(&c.pp),
        "-n".into(),
        counts_arg(&c.tg),
        "-r".into(),
        c.reps.to_string(),
        "-c".into(),
        c.ctx.to_string(),
    ]
}

/// The driver's command.
pub fn driver_command(root: &Path, ready: &Ready, c: &DriverConfig) -> Command {
    let mut cmd = Command::new(&ready.python);
    cmd.arg(driver_script(root)).args(driver_args(c));
    cmd
}

/// One test as the driver prints it (llama-bench field names).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PeerTest {
    /// `ppN` / `tgN`.
    pub test: String,
    /// Prompt tokens.
    pub n_prompt: u32,
    /// Generated tokens.
    pub n_gen: u32,
    /// Threads.
    pub n_threads: u32,
    /// Context size llama.cpp used.
    #[serde(default)]
    pub n_ctx: u32,
    /// Tokens/s per repetition.
    pub samples_ts: Vec<f64>,
    /// Weight repacking on.
    #[serde(default)]
    pub repack: bool,
    /// Load mode (`mmap`).
    #[serde(default)]
    pub load_mode: String,
    /// Share of the model file in the page cache when the driver started.
    #[serde(default)]
    pub model_cached_at_start: Option<f64>,
    /// The process's VmHWM after the test.
    #[serde(default)]
    pub peak_rss_bytes: Option<u64>,
    /// llama-cpp-python version.
    #[serde(default)]
    pub llama_cpp_python: String,
    /// `llama_print_system_info()`.
    #[serde(default)]
    pub system_info: String,
}

/// Parses the driver's stdout (one JSON object per line) and checks it holds exactly the tests
/// of `c`, each with `c.reps` positive finite samples.
pub fn parse_output(stdout: &str, c: &DriverConfig) -> Result<Vec<PeerTest>> {
    let mut out = Vec::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let t: PeerTest = serde_json::from_str(line)
            .with_context(|| format!("bad line from the llama.cpp driver: {line}"))?;
        ensure!(
            t.samples_ts.len() == c.reps && t.samples_ts.iter().all(|x| x.is_finite() && *x > 0.0),
            "{}: expected {} positive samples, got {:?}",
            t.test,
            c.reps,
            t.samples_ts
        );
        out.push(t);
    }
    let want: Vec<String> =
        c.pp.iter()
            .map(|n| format!("pp{n}"))
            .chain(c.tg.iter().map(|n| format!("tg{n}")))
            .collect();
    let got: Vec<String> = out.iter().map(|t| t.test.clone()).collect();
    ensure!(
        got == want,
        "the llama.cpp driver measured {got:?}, expected {want:?}"
    );
    Ok(out)
}

/// llama.cpp's SIMD flags from its system info (`"AVX2 = 1 | F16C = 1 | …"` → `"avx2,f16c"`).
pub fn simd_of(system_info: &str) -> String {
    const SIMD: [&str; 13] = [
        "SSE", "SSSE", "AVX", "F16C", "FMA", "BMI", "AMX", "NEON", "ARM_", "SVE", "DOTPROD",
        "MATMUL", "VSX",
    ];
    system_info
        .split('|')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            let k = k.rsplit(':').next()?.trim();
            (v.trim() == "1" && SIMD.iter().any(|p| k.starts_with(p))).then(|| k.to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Above this share of the model file cached at start, a budget run says the limit leaked.
pub const LEAK_SHARE: f64 = 0.05;

/// Under a budget, a note when much of the model file was in the page cache before the driver
/// read it (after the page cache was dropped, so kept there by other processes mapping the same
/// file): a cgroup charges a page to whoever read it first, so those pages cost the peer nothing.
pub fn cache_leak_note(tests: &[PeerTest], budget: Option<u64>) -> Option<String> {
    budget?;
    let share = tests.first()?.model_cached_at_start?;
    (share > LEAK_SHARE).then(|| {
        format!(
            "{:.0}% of the model file was already in the page cache (held by other processes) and not charged to the cgroup: the budget did not bind fully",
            100.0 * share
        )
    })
}

/// What a peer record shares with our records of the same scenario.
#[derive(Clone, Debug, Default)]
pub struct RecordContext {
    /// Bench run id.
    pub run_id: String,
    /// Our commit (records of one run share it, so resuming works the same).
    pub commit: String,
    /// CPU model.
    pub cpu_model: String,
    /// Model label (preset or file stem).
    pub model: String,
    /// Quantisation label.
    pub quant: String,
    /// Storage profile (`in-memory` or `real`).
    pub storage: String,
    /// Memory budget.
    pub budget_bytes: Option<u64>,
    /// The build facts.
    pub cmake_args: String,
    /// Timestamp.
    pub date: String,
}

/// The driver's tests as records.
pub fn to_records(tests: &[PeerTest], cx: &RecordContext) -> Vec<Record> {
    let peak = tests.iter().filter_map(|t| t.peak_rss_bytes).max();
    tests
        .iter()
        .map(|t| {
            let (mean, sd, median) = record::stats(&t.samples_ts);
            let (samples_ns, avg_ns, stddev_ns) =
                record::ns_fields(&t.samples_ts, t.n_prompt + t.n_gen);
            Record {
                schema: SCHEMA,
                run_id: cx.run_id.clone(),
                commit: cx.commit.clone(),
                date: cx.date.clone(),
                cpu_model: cx.cpu_model.clone(),
                simd: simd_of(&t.system_info),
                threads: t.n_threads,
                engine: ENGINE.into(),
                model: cx.model.clone(),
                quant: cx.quant.clone(),
                storage: cx.storage.clone(),
                budget_bytes: cx.budget_bytes,
                test: t.test.clone(),
                n_prompt: t.n_prompt,
                n_gen: t.n_gen,
                samples_tps: t.samples_ts.clone(),
                mean_tps: mean,
                sd_tps: sd,
                samples_ns,
                avg_ns,
                stddev_ns,
                median_tps: median,
                peak_mem_bytes: peak,
                mem_source: peak.map(|_| "rss".into()),
                note: Some(format!(
                    "llama-cpp-python {} (CMAKE_ARGS \"{}\"); load {}, repack {}, n_ctx {}",
                    t.llama_cpp_python,
                    cx.cmake_args,
                    if t.load_mode.is_empty() {
                        "?"
                    } else {
                        &t.load_mode
                    },
                    if t.repack { "on" } else { "off" },
                    t.n_ctx
                )),
                ..Record::default()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DriverConfig {
        DriverConfig {
            model: "m/x.gguf".into(),
            threads: 2,
            pp: vec![128],
            tg: vec![64],
            reps: 3,
            ctx: 0,
        }
    }

    const SYSINFO: &str = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | AVX_VNNI = 0 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ";

    fn line(test: &str, n_prompt: u32, n_gen: u32, ts: &[f64], rss: u64) -> String {
        serde_json::json!({
            "test": test, "n_prompt": n_prompt, "n_gen": n_gen, "n_threads": 2, "n_ctx": 256,
            "samples_ns": [1, 2, 3], "samples_ts": ts, "avg_ts": 0.0, "stddev_ts": 0.0,
            "repack": false, "load_mode": "mmap", "peak_rss_bytes": rss,
            "llama_cpp_python": "0.3.36", "system_info": SYSINFO, "future_field": 1
        })
        .to_string()
    }

    #[test]
    fn driver_arguments_carry_the_scenario() {
        let a = driver_args(&DriverConfig {
            pp: vec![],
            tg: vec![32, 64],
            ..cfg()
        });
        assert_eq!(
            a,
            [
                "-m", "m/x.gguf", "-t", "2", "-p", "0", "-n", "32,64", "-r", "3", "-c", "0"
            ]
        );
    }

    #[test]
    fn driver_output_becomes_peer_records() {
        let out = format!(
            "{}\n\n{}\n",
            line("pp128", 128, 0, &[100.0, 110.0, 120.0], 900),
            line("tg64", 0, 64, &[10.0, 12.0, 14.0], 1000)
        );
        let tests = parse_output(&out, &cfg()).unwrap();
        let cx = RecordContext {
            run_id: "run".into(),
            commit: "abc".into(),
            model: "4b-a0.6b".into(),
            quant: "q4_0".into(),
            storage: "real".into(),
            budget_bytes: Some(1 << 30),
            cmake_args: "-DGGML_NATIVE=ON".into(),
            ..RecordContext::default()
        };
        let r = to_records(&tests, &cx);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].engine, "llama.cpp");
        assert_eq!((r[0].test.as_str(), r[0].n_prompt), ("pp128", 128));
        assert_eq!((r[1].test.as_str(), r[1].n_gen), ("tg64", 64));
        assert_eq!(r[1].mean_tps, 12.0);
        assert_eq!(r[1].median_tps, 12.0);
        assert!((r[1].sd_tps - 2.0).abs() < 1e-12);
        assert_eq!(r[0].peak_mem_bytes, Some(1000));
        assert_eq!(r[0].mem_source.as_deref(), Some("rss"));
        assert_eq!(r[0].simd, "sse3,ssse3,avx,avx2,f16c,fma,avx512,avx512_vnni");
        assert!(r[0].note.as_deref().unwrap().contains("repack off"));
        // The key differs from ours only in the engine, so resuming and pairing work.
        assert_eq!(
            r[1].key(),
            format!("llama.cpp|4b-a0.6b|q4_0|real|{}|2|tg64", 1u64 << 30)
        );
    }

    #[test]
    fn foreign_page_cache_under_a_budget_is_noted() {
        let mut t: PeerTest =
            serde_json::from_str(&line("tg64", 0, 64, &[1.0, 1.0, 1.0], 9)).unwrap();
        assert_eq!(t.model_cached_at_start, None);
        assert_eq!(
            cache_leak_note(std::slice::from_ref(&t), Some(1 << 30)),
            None
        );
        t.model_cached_at_start = Some(0.99);
        let n = cache_leak_note(std::slice::from_ref(&t), Some(1 << 30)).unwrap();
        assert!(n.starts_with("99% of the model file"), "{n}");
        // In memory the cache is welcome; a cold file is fine under a budget.
        assert_eq!(cache_leak_note(std::slice::from_ref(&t), None), None);
        t.model_cached_at_start = Some(0.01);
        assert_eq!(cache_leak_note(&[t], Some(1 << 30)), None);
    }

    #[test]
    fn driver_output_must_match_the_request() {
        let one = line("pp128", 128, 0, &[100.0, 110.0, 120.0], 900);
        let e = parse_output(&one, &cfg()).unwrap_err().to_string();
        assert!(e.contains("expected [\"pp128\", \"tg64\"]"), "{e}");
        let short = line("pp128", 128, 0, &[100.0], 900);
        assert!(parse_output(&short, &cfg()).is_err());
        let nan = line("pp128", 128, 0, &[100.0, 0.0, 1.0], 900);
        assert!(parse_output(&nan, &cfg()).is_err());
        assert!(parse_output("not json", &cfg()).is_err());
    }

    /// Runs the real driver on the tiny fixture when `cargo xtask peer-setup` was run here;
    /// without the venv there is nothing to run and it says so.
    #[test]
    fn driver_measures_the_tiny_fixture_when_set_up() {
        let root = crate::workspace_root();
        if !venv_python(&peer_dir(&root).join("venv")).exists() {
            eprintln!("skipped: no target/peer/venv (run `cargo xtask peer-setup`)");
            return;
        }
        let ready = check_ready(&root).expect("peer set up");
        assert_eq!(ready.info.llama_cpp_python, LLAMA_CPP_PYTHON);
        let c = DriverConfig {
            model: root.join("engine/tests/fixtures/tiny-t1-gguf/tiny-t1-Q4_0.gguf"),
            threads: 1,
            pp: vec![16],
            tg: vec![8],
            reps: 2,
            ctx: 0,
        };
        let o = driver_command(&root, &ready, &c).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let tests = parse_output(&String::from_utf8_lossy(&o.stdout), &c).unwrap();
        assert_eq!(tests[0].n_prompt, 16);
        assert_eq!(tests[1].n_gen, 8);
        assert_eq!(tests[0].load_mode, "mmap");
        assert!(!tests[0].repack);
        assert!(
            tests[0]
                .model_cached_at_start
                .is_some_and(|f| (0.0..=1.0).contains(&f))
        );
        // n_ctx = n_prompt + n_gen per test, rounded up by llama.cpp.
        assert!(tests[0].n_ctx >= 16 && tests[1].n_ctx >= 8);
        let r = to_records(&tests, &RecordContext::default());
        assert!(r.iter().all(|r| r.engine == ENGINE && r.mean_tps > 0.0));
        assert!(r[0].peak_mem_bytes.unwrap() > 1 << 20);
        // A bad model path fails with a message, not a traceback.
        let bad = DriverConfig {
            model: root.join("no/such.gguf"),
            ..c
        };
        let o = driver_command(&root, &ready, &bad).output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no model file"), "{err}");
    }

    #[test]
    fn missing_venv_tells_to_run_peer_setup() {
        let d = tempfile::tempdir().unwrap();
        let e = check_ready(d.path()).unwrap_err().to_string();
        assert!(e.contains("cargo xtask peer-setup"), "{e}");
    }
}
