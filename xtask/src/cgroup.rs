//! A cgroup-v1 memory limit around a child process (page cache included), for honest
//! memory-budget measurements. Needs root and `/sys/fs/cgroup/memory`.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail};

const ROOT: &str = "/sys/fs/cgroup/memory";

/// A memory cgroup with a limit.
pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// Whether a memory cgroup `name` can be made here: the controller is mounted and the group
    /// (created if absent, as [`Cgroup::create`] would) has a writable limit. The root of the
    /// hierarchy reads as mode 0555 even to root, so permissions are probed, not inferred.
    pub fn available(name: &str) -> bool {
        let root = PathBuf::from(ROOT);
        if !root.join("memory.limit_in_bytes").exists() {
            return false;
        }
        let dir = root.join(name);
        (dir.exists() || std::fs::create_dir(&dir).is_ok())
            && std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join("memory.limit_in_bytes"))
                .is_ok()
    }

    /// Creates (or reuses) `name` with `limit` bytes and resets its counters.
    pub fn create(name: &str, limit: u64) -> Result<Cgroup> {
        let root = PathBuf::from(ROOT);
        if !root.join("memory.limit_in_bytes").exists() {
            bail!("cgroup-v1 memory controller not mounted at {ROOT}");
        }
        let dir = root.join(name);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let w = |f: &str, v: String| {
            std::fs::write(dir.join(f), v).with_context(|| format!("writing {}/{f}", dir.display()))
        };
        // Raising the limit first avoids EBUSY when shrinking below the current usage.
        w("memory.limit_in_bytes", limit.to_string())?;
        w("memory.max_usage_in_bytes", "0".into())?;
        let _ = w("memory.failcnt", "0".into());
        Ok(Cgroup { dir })
    }

    /// Runs `cmd` inside the group (it joins before exec), capturing stdout.
    pub fn run(&self, cmd: &mut Command) -> Result<Output> {
        let prog = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let procs = self.dir.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg("echo $$ > \"$0\" && exec \"$@\"")
            .arg(&procs)
            .arg(prog)
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .context("running a command in the cgroup")
    }

    /// Peak usage (page cache included) since creation.
    pub fn max_usage(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("memory.max_usage_in_bytes"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether the OOM killer fired in the group.
    pub fn oom_killed(&self) -> bool {
        std::fs::read_to_string(self.dir.join("memory.oom_control"))
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("oom_kill ") && l.split_whitespace().nth(1) != Some("0"))
            })
            .unwrap_or(false)
    }
}
