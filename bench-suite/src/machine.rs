//! Facts about the machine and the build that every record carries.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

use serde::{Deserialize, Serialize};

/// Machine and build description.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    /// CPU model name.
    pub cpu_model: String,
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// SIMD features detected (the kernels pick from these).
    pub simd: String,
    /// Physical memory.
    pub mem_total_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// Git commit of the tree, `-dirty` appended when modified.
    pub commit: String,
    /// Version of the rustc that built this binary (recorded at build time; running one here
    /// would charge its libraries' page cache to a memory-budget run's cgroup).
    pub rustc: String,
}

impl Machine {
    /// Reads /proc and git; missing facts are left empty rather than failing.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let mem_total_bytes = machine_memory_bytes().unwrap_or(0);
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            simd: simd_features(),
            mem_total_bytes,
            kernel: kernel_release(),
            commit: git_commit(),
            rustc: env!("BENCH_RUSTC_VERSION").to_string(),
        }
    }
}

/// SIMD features relevant to the kernels, comma-separated.
pub fn simd_features() -> String {
    let mut v: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            v.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            v.push("fma");
        }
        if is_x86_feature_detected!("f16c") {
            v.push("f16c");
        }
        if is_x86_feature_detected!("avx512f") {
            v.push("avx512f");
        }
        if is_x86_feature_detected!("avx512vnni") {
            v.push("avx512vnni");
        }
    }
    #[cfg(target_arch = "aarch64")]
    v.push("neon");
    if v.is_empty() {
        "scalar".into()
    } else {
        v.join(",")
    }
}

fn run_text(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `git rev-parse --short HEAD`, plus `-dirty` when the tree differs; "unknown" outside git.
pub fn git_commit() -> String {
    let c = run_text("git", &["rev-parse", "--short=12", "HEAD"]);
    if c.is_empty() {
        return "unknown".into();
    }
    let dirty = !run_text("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    if dirty { format!("{c}-dirty") } else { c }
}

/// Now as RFC 3339 UTC (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Peak resident set size of this process (VmHWM), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// The kernel release (`/proc/sys/kernel/osrelease`), empty if unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub use engine::offload::budget::{cgroup_memory_limit, machine_memory_bytes, meminfo_bytes};

/// A digest naming the model file (or Hugging Face directory) in records: `sha256:` of the
/// GGUF header, the metadata and tensor table (the bytes before the tensor data), followed by
/// the file's size as a little-endian u64; for a directory, of `config.json` and each
/// `*.safetensors` file's header and size, in name order. It tells files with different
/// metadata, shapes, types or sizes apart without reading the weights (a 21B file is 11 GiB,
/// and under a memory budget reading it would fill the cgroup with page cache); two files that
/// differ only in weight bytes share it. `None` if the files cannot be read.
pub fn model_digest(path: &Path) -> Option<String> {
    let mut h = Sha256::new();
    if path.is_dir() {
        h.update(std::fs::read(path.join("config.json")).ok()?);
        let mut st: Vec<_> = std::fs::read_dir(path)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        st.sort();
        for p in st {
            let mut f = std::fs::File::open(&p).ok()?;
            let size = f.metadata().ok()?.len();
            let mut n = [0u8; 8];
            f.read_exact(&mut n).ok()?;
            let len = u64::from_le_bytes(n).min(100 << 20);
            let mut head = Vec::new();
            f.take(len).read_to_end(&mut head).ok()?;
            h.update(n);
            h.update(&head);
            h.update(size.to_le_bytes());
        }
    } else {
        // The parse maps the file; hash the header from that map rather than reading it again.
        let g = engine::formats::gguf::GgufFile::open(path).ok()?;
        let bytes = g.blob().as_bytes();
        h.update(bytes.get(..usize::try_from(g.data_offset()).ok()?)?);
        h.update((bytes.len() as u64).to_le_bytes());
    }
    let d = h.finalize();
    Some(format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn the_model_digest_changes_with_the_header_and_the_size_only() {
        let d = tempfile::tempdir().unwrap();
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engine/tests/fixtures/tiny-t1-gguf/tiny-t1-Q4_0.gguf");
        let bytes = std::fs::read(&tiny).expect("the tiny fixture");
        let write = |name: &str, b: &[u8]| {
            let p = d.path().join(name);
            std::fs::write(&p, b).unwrap();
            model_digest(&p).expect("a digest")
        };
        let base = write("a.gguf", &bytes);
        assert!(
            base.starts_with("sha256:") && base.len() == 7 + 64,
            "{base}"
        );
        assert_eq!(write("b.gguf", &bytes), base, "same bytes, same digest");
        let mut weights = bytes.clone();
        let last = weights.len() - 1;
        weights[last] ^= 1;
        assert_eq!(write("c.gguf", &weights), base, "weight bytes are not read");
        // The model's name, "Tiny T1", becomes "Tiny T2".
        let mut meta = bytes.clone();
        let at = bytes.windows(7).position(|w| w == b"Tiny T1").unwrap();
        meta[at + 6] = b'2';
        assert_ne!(write("d.gguf", &meta), base);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0; 32]);
        assert_ne!(write("e.gguf", &longer), base);
        assert_eq!(model_digest(&d.path().join("missing.gguf")), None);
    }

    #[test]
    fn detects_something() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        assert!(!m.simd.is_empty());
        assert!(peak_rss_bytes().unwrap_or(1) > 0);
    }
}
