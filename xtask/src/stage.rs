//! Staging a model on RAM-backed storage for the emulated-device scenarios of `cargo xtask
//! bench`.
//!
//! The engine emulates a device on top of real reads and can only slow them down
//! (`engine::offload::storage`): a profile faster than the disk the model sits on measures that
//! disk. On a machine whose disk reads ~1 GB/s, `nvme-gen4` (7 GB/s) and `ufs-3.1` (2.1 GB/s) came
//! out at the real disk's speed (the real reads added 460% and 70% to the modelled read time). So
//! before an emulated scenario the model is copied to a tmpfs (default `/dev/shm`), whose reads
//! are memory copies, and the scenario reads it there; the record's `emulation_excess` says how
//! faithful the run was all the same.
//!
//! Memory: the staged file's pages belong to the tmpfs (charged to this process's cgroup, not the
//! scenario's), so they do not count against the scenario's cgroup limit, and the scenario's
//! mapped weights are not in its cgroup peak either. The records of a staged run therefore report
//! the larger of the cgroup peak and the process's own peak RSS (which counts mapped tmpfs pages).
//!
//! A file is staged only when the tmpfs has room for it and the machine's available memory holds
//! it plus the scenario's budget plus [`HEADROOM`]; otherwise (or if the copy fails) the
//! scenario reads the real file and its record says why. A model already on a tmpfs is read
//! where it is. One model is staged at a time; the copy is removed before a scenario that does
//! not read it and when the [`Stager`] is dropped (an interrupted run leaves it; the next run
//! removes it before measuring the room).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bench_suite::machine::meminfo_bytes;

/// Memory left free beyond the staged file and the scenario's budget.
pub const HEADROOM: u64 = 2 << 30;

/// Default staging directory's parent (a tmpfs on Linux).
pub const DEFAULT_DIR: &str = "/dev/shm";

/// Name of the directory under the staging parent that holds our copies.
const SUBDIR: &str = "smallthinker-bench";

/// Where a scenario reads its model from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staging {
    /// The model was copied here (RAM-backed).
    Staged(PathBuf),
    /// The real file is used, for this reason.
    Unstaged(String),
}

/// Why a file of `file` bytes cannot be staged with `free` bytes left on the tmpfs, `available`
/// bytes of memory on the machine and a scenario budget of `budget` bytes; `None` if it can.
pub fn refusal(file: u64, free: u64, available: u64, budget: u64) -> Option<String> {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    if file > free {
        return Some(format!(
            "the tmpfs has {:.2} GiB free for a {:.2} GiB model",
            gib(free),
            gib(file)
        ));
    }
    let need = file.saturating_add(budget).saturating_add(HEADROOM);
    if need > available {
        return Some(format!(
            "{:.2} GiB of memory available, {:.2} GiB needed (model {:.2} + budget {:.2} + headroom {:.2})",
            gib(available),
            gib(need),
            gib(file),
            gib(budget),
            gib(HEADROOM)
        ));
    }
    None
}

/// The mount holding `path`: the entry of `mounts` (the text of `/proc/mounts`) with the longest
/// mount point that is a prefix of `path`, the last such entry when a point is mounted over.
/// Returns its device and filesystem type.
pub(crate) fn mount_of(path: &Path, mounts: &str) -> Option<(String, String)> {
    let mut best: Option<(usize, String, String)> = None;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (Some(dev), Some(mnt), Some(ty)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let mnt = mnt.replace("\\040", " ");
        if path.starts_with(&mnt) && best.as_ref().is_none_or(|(n, ..)| mnt.len() >= *n) {
            best = Some((mnt.len(), dev.to_string(), ty.to_string()));
        }
    }
    best.map(|(_, dev, ty)| (dev, ty))
}

/// The filesystem type of the mount holding `path` ([`mount_of`]).
fn fs_type(path: &Path, mounts: &str) -> Option<String> {
    mount_of(path, mounts).map(|(_, ty)| ty)
}

/// Free bytes on the filesystem holding `dir` (`df`; no `statvfs` binding here).
fn free_bytes(dir: &Path) -> Option<u64> {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// Copies models to a tmpfs for emulated-storage scenarios (see the module docs).
#[derive(Debug)]
pub struct Stager {
    /// Parent directory (a tmpfs), e.g. `/dev/shm`; `None` disables staging.
    parent: Option<PathBuf>,
    /// The model staged now: (source, copy).
    current: Option<(PathBuf, PathBuf)>,
}

impl Stager {
    /// Stages under `parent` (`None`: never stage).
    pub fn new(parent: Option<PathBuf>) -> Stager {
        Stager {
            parent,
            current: None,
        }
    }

    /// Makes `src` readable from RAM-backed storage for a scenario with `budget` bytes, copying
    /// it if needed (replacing any other staged model); says why not when it cannot. Never
    /// fails: any problem (no room, no tmpfs, a copy that fails) leaves the scenario on the real
    /// file with the reason, and a partial copy is removed.
    pub fn stage(&mut self, src: &Path, budget: u64) -> Staging {
        let Some(parent) = self.parent.clone() else {
            return Staging::Unstaged("staging disabled (--no-stage)".into());
        };
        if let Some((s, dst)) = &self.current
            && s == src
            && dst.exists()
        {
            return Staging::Staged(dst.clone());
        }
        self.release();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        // A model already on a tmpfs (ours or the user's) is read where it is: no second copy,
        // and nothing of the user's is touched.
        let src_real = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
        if matches!(fs_type(&src_real, &mounts).as_deref(), Some("tmpfs")) {
            return Staging::Staged(src.to_path_buf());
        }
        let parent = match std::fs::canonicalize(&parent) {
            Ok(p) => p,
            Err(e) => {
                return Staging::Unstaged(format!("{}: {e}", parent.display()));
            }
        };
        match fs_type(&parent, &mounts) {
            Some(t) if t == "tmpfs" => {}
            Some(t) => {
                return Staging::Unstaged(format!(
                    "{} is not a tmpfs (filesystem {t})",
                    parent.display()
                ));
            }
            None => {
                return Staging::Unstaged(format!(
                    "cannot tell whether {} is a tmpfs",
                    parent.display()
                ));
            }
        }
        let dir = parent.join(SUBDIR);
        // Copies left by an interrupted run hold memory: remove them before measuring the room.
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        match self.copy_in(src, &dir, budget) {
            Ok(s) => s,
            Err(e) => Staging::Unstaged(format!("{e:#}")),
        }
    }

    /// Checks the room and copies `src` into `dir` (through a `.partial` name, removed if the
    /// copy fails).
    fn copy_in(&mut self, src: &Path, dir: &Path, budget: u64) -> Result<Staging> {
        let file = std::fs::metadata(src)
            .with_context(|| format!("reading the size of {}", src.display()))?
            .len();
        let parent = dir.parent().unwrap_or(dir);
        let Some(free) = free_bytes(parent) else {
            return Ok(Staging::Unstaged(format!(
                "cannot tell the free space on {} (df failed)",
                parent.display()
            )));
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let Some(available) = meminfo_bytes(&meminfo, "MemAvailable") else {
            return Ok(Staging::Unstaged(
                "cannot read MemAvailable from /proc/meminfo".into(),
            ));
        };
        if let Some(why) = refusal(file, free, available, budget) {
            return Ok(Staging::Unstaged(why));
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = src
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "model.gguf".into());
        let dst = dir.join(&name);
        let tmp = dir.join(format!("{}.partial", name.to_string_lossy()));
        let copied = std::fs::copy(src, &tmp)
            .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))
            .and_then(|_| {
                std::fs::rename(&tmp, &dst).with_context(|| format!("renaming {}", tmp.display()))
            });
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.current = Some((src.to_path_buf(), dst.clone()));
        Ok(Staging::Staged(dst))
    }

    /// Removes the staged copy, if any (before scenarios that do not read it, so it does not
    /// hold their memory).
    pub fn release(&mut self) {
        if let Some((_, dst)) = self.current.take() {
            let _ = std::fs::remove_file(&dst);
            if let Some(d) = dst.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

impl Drop for Stager {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn refuses_what_does_not_fit_and_says_why() {
        assert_eq!(refusal(2 * GIB, 12 * GIB, 20 * GIB, GIB), None);
        let why = refusal(12 * GIB, 11 * GIB, 20 * GIB, 8 * GIB).unwrap();
        assert!(why.contains("11.00 GiB free"), "{why}");
        // Fits the tmpfs, but not the memory with the budget and the headroom.
        let why = refusal(11 * GIB, 12 * GIB, 20 * GIB, 8 * GIB).unwrap();
        assert!(why.contains("21.00 GiB needed"), "{why}");
        assert_eq!(refusal(11 * GIB, 12 * GIB, 21 * GIB, 8 * GIB), None);
    }

    #[test]
    fn finds_the_filesystem_of_the_longest_mount_prefix() {
        let mounts = "overlay / overlay rw 0 0\n\
                      tmpfs /dev/shm tmpfs rw,nosuid 0 0\n\
                      /dev/sda1 /dev/shm/disk ext4 rw 0 0\n\
                      /dev/sdb1 /mnt/my\\040disk xfs rw 0 0\n";
        assert_eq!(
            fs_type(Path::new("/dev/shm"), mounts).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type(Path::new("/dev/shm/x"), mounts).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(
            fs_type(Path::new("/dev/shm/disk/x"), mounts).as_deref(),
            Some("ext4")
        );
        assert_eq!(
            fs_type(Path::new("/dev/shmx"), mounts).as_deref(),
            Some("overlay")
        );
        assert_eq!(
            fs_type(Path::new("/mnt/my disk/m"), mounts).as_deref(),
            Some("xfs")
        );
        assert_eq!(fs_type(Path::new("rel"), mounts), None);
        assert_eq!(
            mount_of(Path::new("/mnt/my disk/m"), mounts),
            Some(("/dev/sdb1".to_string(), "xfs".to_string()))
        );
        // A point mounted over: the later entry is the one visible.
        let over = "tmpfs /run tmpfs rw 0 0\n/dev/sdc1 /run ext4 rw 0 0\n";
        assert_eq!(fs_type(Path::new("/run/x"), over).as_deref(), Some("ext4"));
    }

    #[test]
    fn reads_mem_available() {
        let m = "MemTotal: 100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(meminfo_bytes(m, "MemAvailable"), Some(2 << 20));
        assert_eq!(meminfo_bytes("MemTotal: 1 kB\n", "MemAvailable"), None);
    }

    #[test]
    fn stages_once_replaces_and_cleans_up_or_declines_off_tmpfs() {
        let src_dir = tempfile::tempdir().unwrap();
        let a = src_dir.path().join("a.gguf");
        let b = src_dir.path().join("b.gguf");
        std::fs::write(&a, b"model a").unwrap();
        std::fs::write(&b, b"model b").unwrap();
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        let on_tmpfs = |p: &Path| {
            let p = std::fs::canonicalize(p).unwrap();
            fs_type(&p, &mounts).as_deref() == Some("tmpfs")
        };
        if on_tmpfs(src_dir.path()) {
            // A model already on a tmpfs is read where it is.
            let mut st = Stager::new(Some(src_dir.path().to_path_buf()));
            assert_eq!(st.stage(&a, GIB), Staging::Staged(a.clone()));
        } else {
            // A disk-backed parent is declined, saying why; so is a missing model.
            let mut disk = Stager::new(Some(src_dir.path().to_path_buf()));
            match disk.stage(&a, GIB) {
                Staging::Unstaged(why) => assert!(
                    why.contains("not a tmpfs") || why.contains("cannot tell"),
                    "{why}"
                ),
                s => panic!("staged on disk: {s:?}"),
            }
        }
        assert!(matches!(
            Stager::new(None).stage(&a, GIB),
            Staging::Unstaged(_)
        ));
        // The real tmpfs, where the machine has one.
        let shm = Path::new(DEFAULT_DIR);
        if !shm.exists() || !on_tmpfs(shm) {
            eprintln!("note: no tmpfs at {DEFAULT_DIR}; the staging half of this test skipped");
            return;
        }
        // A private parent on the tmpfs, so a bench run's staged model is not touched.
        let private = tempfile::tempdir_in(shm).unwrap();
        let mut st = Stager::new(Some(private.path().to_path_buf()));
        let missing = src_dir.path().join("missing.gguf");
        match st.stage(&missing, 0) {
            Staging::Unstaged(why) => assert!(why.contains("missing.gguf"), "{why}"),
            s => panic!("{s:?}"),
        }
        let Staging::Staged(pa) = st.stage(&a, 0) else {
            eprintln!("note: no room on the tmpfs; the staging half of this test skipped");
            return;
        };
        if on_tmpfs(src_dir.path()) {
            return; // read in place: nothing was copied
        }
        assert_eq!(std::fs::read(&pa).unwrap(), b"model a");
        assert_eq!(st.stage(&a, 0), Staging::Staged(pa.clone()));
        let Staging::Staged(pb) = st.stage(&b, 0) else {
            panic!("b not staged");
        };
        assert!(!pa.exists() || pa == pb, "the previous copy stays");
        assert_eq!(std::fs::read(&pb).unwrap(), b"model b");
        // Released before scenarios that do not read it; staged again when needed.
        st.release();
        assert!(!pb.exists(), "released copy stays");
        let Staging::Staged(pb) = st.stage(&b, 0) else {
            panic!("b not staged again");
        };
        // A model inside the staging directory is used in place, not deleted by the purge.
        let mine = private.path().join("mine.gguf");
        std::fs::write(&mine, b"user model").unwrap();
        assert_eq!(st.stage(&mine, 0), Staging::Staged(mine.clone()));
        assert_eq!(std::fs::read(&mine).unwrap(), b"user model");
        drop(st);
        assert!(!pb.exists(), "the copy outlives the stager");
        let leftovers: Vec<_> = std::fs::read_dir(private.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("mine.gguf")]);
    }
}
