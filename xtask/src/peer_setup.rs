//! `cargo xtask peer-setup`: installs the llama.cpp peer that `cargo xtask bench --peer llama.cpp`
//! measures against — a Python venv under `target/peer/venv` with `llama-cpp-python` built from
//! source for this CPU (`-DGGML_NATIVE=ON`, all cores). Idempotent: when the pinned version is
//! already installed it only reports it. Nothing is written outside `target/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bench_suite::machine::now_rfc3339;

use crate::peer::{self, LLAMA_CPP_PYTHON, SetupInfo};
use crate::workspace_root;

/// CMake flags of the build: native SIMD, and no multimodal library (the driver never imports it).
pub const CMAKE_ARGS: &str = "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF";

/// `cargo xtask peer-setup` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The Python interpreter that creates the venv (3.8 or newer).
    #[arg(long, default_value = "python3")]
    python: String,
    /// Rebuild even when the pinned version is already installed.
    #[arg(long)]
    force: bool,
}

/// Runs `prog args` and returns its trimmed stdout, or `None` when it cannot run or fails.
fn output_of(prog: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Parses `python -c 'print(*sys.version_info[:2])'` output (`"3 11"`) into (major, minor).
pub fn parse_python_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split_whitespace().map(|x| x.parse::<u32>().ok());
    Some((it.next()??, it.next()??))
}

/// Checks the host tools the source build needs; each failure says what to install.
fn check_host(python: &str) -> Result<String> {
    let v = output_of(python, &["-c", "import sys; print(*sys.version_info[:3])"])
        .with_context(|| {
            format!("`{python}` not found or not working: install Python 3.8+ (e.g. apt-get install python3 python3-venv) or pass --python PATH")
        })?;
    match parse_python_version(&v) {
        Some((3, minor)) if minor >= 8 => {}
        _ => bail!("`{python}` is Python {v}; llama-cpp-python needs 3.8 or newer"),
    }
    if output_of(python, &["-c", "import venv, ensurepip"]).is_none() {
        bail!(
            "`{python}` has no working venv/ensurepip module: install it (Debian/Ubuntu: apt-get install python3-venv)"
        );
    }
    for (var, default, what) in [("CC", "cc", "C"), ("CXX", "c++", "C++")] {
        let prog = std::env::var(var).unwrap_or_else(|_| default.into());
        if output_of(&prog, &["--version"]).is_none() {
            bail!(
                "no {what} compiler (`{prog}`; set {var} to choose one): llama.cpp is built from source — install one (Debian/Ubuntu: apt-get install build-essential)"
            );
        }
    }
    Ok(v.replace(' ', "."))
}

/// Creates the venv (if absent) and checks its pip.
fn ensure_venv(python: &str, venv: &Path) -> Result<PathBuf> {
    let py = peer::venv_python(venv);
    if !py.exists() {
        eprintln!("creating venv {}", venv.display());
        let st = Command::new(python)
            .args(["-m", "venv"])
            .arg(venv)
            .status()
            .with_context(|| format!("running {python} -m venv"))?;
        if !st.success() {
            bail!(
                "`{python} -m venv {}` failed (Debian/Ubuntu: apt-get install python3-venv)",
                venv.display()
            );
        }
    }
    let py_s = py.to_string_lossy().into_owned();
    if output_of(&py_s, &["-m", "pip", "--version"]).is_none() {
        bail!(
            "the venv at {} has no pip (remove it and install python3-venv / ensurepip)",
            venv.display()
        );
    }
    Ok(py)
}

/// Prints the last `n` lines of the build log.
fn show_tail(log: &Path, n: usize) {
    if let Ok(t) = std::fs::read_to_string(log) {
        let lines: Vec<&str> = t.lines().collect();
        for l in &lines[lines.len().saturating_sub(n)..] {
            eprintln!("  | {l}");
        }
    }
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let root = workspace_root();
    let dir = peer::peer_dir(&root);
    let venv = dir.join("venv");
    if !a.force
        && let Ok(done) = peer::check_ready(&root)
    {
        println!(
            "llama-cpp-python {} already installed in {} (CMAKE_ARGS \"{}\", built {} in {:.0} s); nothing to do (--force rebuilds)",
            done.info.llama_cpp_python,
            venv.display(),
            done.setup.cmake_args,
            done.setup.date,
            done.setup.seconds
        );
        return Ok(());
    }
    let started = Instant::now();
    let python_version = check_host(&a.python)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let py = ensure_venv(&a.python, &venv)?;
    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let log = dir.join("build.log");
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!(
        "building llama-cpp-python {LLAMA_CPP_PYTHON} from source (CMAKE_ARGS=\"{CMAKE_ARGS}\", {jobs} parallel jobs); this takes minutes — log: {}",
        log.display()
    );
    // The pin matters: its vendored llama.cpp knows the `smallthinker` architecture (and is the
    // one the fixtures were checked with). `--no-binary` forces the source build for this CPU;
    // build tools (cmake, ninja) may still come as wheels. No cache: a cached wheel may have
    // been built with other flags.
    let st = Command::new(&py)
        .args(["-m", "pip", "install", "-v", "--no-cache-dir"])
        .args(["--no-binary", "llama-cpp-python"])
        .arg(format!("llama-cpp-python=={LLAMA_CPP_PYTHON}"))
        .env("CMAKE_ARGS", CMAKE_ARGS)
        .env("CMAKE_BUILD_PARALLEL_LEVEL", jobs.to_string())
        .env("FORCE_CMAKE", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("running pip install")?;
    if !st.success() {
        show_tail(&log, 30);
        bail!(
            "pip install llama-cpp-python=={LLAMA_CPP_PYTHON} failed (full log: {}); a compiler, network access to PyPI and ~2 GB of disk are needed",
            log.display()
        );
    }
    let setup = SetupInfo {
        llama_cpp_python: LLAMA_CPP_PYTHON.into(),
        cmake_args: CMAKE_ARGS.into(),
        build_parallel_level: jobs,
        python: python_version,
        seconds: started.elapsed().as_secs_f64(),
        date: now_rfc3339(),
    };
    std::fs::write(
        peer::setup_file(&root),
        serde_json::to_string_pretty(&setup)? + "\n",
    )?;
    let ready = peer::check_ready(&root)?;
    println!(
        "llama-cpp-python {} installed in {} in {:.1} min ({})",
        ready.info.llama_cpp_python,
        venv.display(),
        setup.seconds / 60.0,
        ready.info.system_info
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_versions_parse() {
        assert_eq!(parse_python_version("3 11 7"), Some((3, 11)));
        assert_eq!(parse_python_version("3 8"), Some((3, 8)));
        assert_eq!(parse_python_version("3"), None);
        assert_eq!(parse_python_version("Python 3.11"), None);
    }

    #[test]
    fn missing_python_is_a_clear_error() {
        let e = check_host("/nonexistent/python3").unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("--python"), "{e}");
    }

    #[test]
    fn build_flags_ask_for_a_native_build() {
        assert!(CMAKE_ARGS.contains("-DGGML_NATIVE=ON"));
    }
}
