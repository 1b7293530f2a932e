//! Result records: one JSON object per scenario × test, appended to `results.jsonl`.
//!
//! Fields are serialised under llama-bench's JSON names where it has one (`build_commit`,
//! `cpu_info`, `n_threads`, `n_prompt`, `n_gen`, `avg_ts`, `stddev_ts`, `samples_ts`,
//! `avg_ns`, `stddev_ns`, `samples_ns`, `model_size`, `model_n_params`), so tools that read
//! llama-bench output by field name read ours; files written before the rename (`commit`,
//! `cpu_model`, `threads`, `mean_tps`, `sd_tps`, `samples_tps`) still read. Appends are fsynced
//! one line at a time; a torn last line (a run killed mid-write) is skipped on reading, so an
//! interrupted run loses nothing already measured.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Record schema version.
pub const SCHEMA: u32 = 1;

/// One measured scenario × test.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Record {
    /// Schema version ([`SCHEMA`]).
    pub schema: u32,
    /// Identifier of the bench run that produced it.
    pub run_id: String,
    /// Git commit (with `-dirty` when the tree had changes).
    #[serde(rename = "build_commit", alias = "commit")]
    pub commit: String,
    /// RFC 3339 UTC time.
    pub date: String,
    /// CPU model name.
    #[serde(rename = "cpu_info", alias = "cpu_model")]
    pub cpu_model: String,
    /// SIMD features used, comma-separated.
    pub simd: String,
    /// Version of the rustc that built the engine (empty in a peer's records).
    pub rustc: String,
    /// Kernel release.
    pub kernel: String,
    /// Memory limit of the cgroup the process ran in (the smallest on its path), if any.
    pub cgroup_limit_bytes: Option<u64>,
    /// The model's [`crate::machine::model_digest`].
    pub model_digest: Option<String>,
    /// Compute threads.
    #[serde(rename = "n_threads", alias = "threads")]
    pub threads: u32,
    /// "smallthinker-rs" or a peer ("llama.cpp").
    pub engine: String,
    /// Model preset or file stem.
    pub model: String,
    /// Bytes of the model's weights.
    pub model_size: Option<u64>,
    /// Weight parameters (elements) of the model.
    pub model_n_params: Option<u64>,
    /// Quantisation label.
    pub quant: String,
    /// Storage profile ("in-memory", "real", "nvme-gen4", …).
    pub storage: String,
    /// Memory budget in bytes (`None`: unlimited).
    pub budget_bytes: Option<u64>,
    /// Test name, llama-bench style: `pp128`, `tg64`.
    pub test: String,
    /// Prompt tokens.
    pub n_prompt: u32,
    /// Generated tokens.
    pub n_gen: u32,
    /// Tokens per second of every repetition.
    #[serde(rename = "samples_ts", alias = "samples_tps")]
    pub samples_tps: Vec<f64>,
    /// Mean tokens per second.
    #[serde(rename = "avg_ts", alias = "mean_tps")]
    pub mean_tps: f64,
    /// Standard deviation of tokens per second.
    #[serde(rename = "stddev_ts", alias = "sd_tps")]
    pub sd_tps: f64,
    /// Nanoseconds of every repetition (the test's tokens; llama-bench's `samples_ns`).
    pub samples_ns: Vec<u64>,
    /// Mean of `samples_ns`.
    pub avg_ns: Option<u64>,
    /// Sample standard deviation of `samples_ns`.
    pub stddev_ns: Option<u64>,
    /// Median tokens per second.
    pub median_tps: f64,
    /// Peak memory of the process.
    pub peak_mem_bytes: Option<u64>,
    /// Where the peak comes from: "cgroup" (page cache included) or "rss" (VmHWM).
    pub mem_source: Option<String>,
    /// Expert cache hit rate: demand accesses that found their expert resident since its
    /// previous demand access (prefetched ones not counted), comparable with
    /// `belady_hit_rate`.
    pub hit_rate: Option<f64>,
    /// Demand accesses that found their expert ready, cached or prefetched.
    pub ready_rate: Option<f64>,
    /// Belady-optimal hit rate for the same trace and capacity.
    pub belady_hit_rate: Option<f64>,
    /// Share of expert I/O time hidden behind compute.
    pub overlap_ratio: Option<f64>,
    /// Bytes read from storage per token.
    pub bytes_read_per_token: Option<f64>,
    /// Weight bytes touched per generated token.
    pub weight_bytes_per_token: Option<f64>,
    /// Memory-bandwidth bound in tokens/s, measured in the same run.
    pub roofline_tps: Option<f64>,
    /// Measured memory read bandwidth, GB/s.
    pub bandwidth_gbps: Option<f64>,
    /// Share of ReGLU neurons that were exactly zero.
    pub sparsity: Option<f64>,
    /// Storage I/O time per token, ms.
    pub io_ms_per_token: Option<f64>,
    /// Compute time per token, ms: measured time per token minus the time the compute thread
    /// waited for expert reads (offloaded runs; see `measure::OffloadPerToken::compute_ms`).
    pub compute_ms_per_token: Option<f64>,
    /// I/O time the compute waited for, per token, ms.
    pub exposed_io_ms_per_token: Option<f64>,
    /// Emulated storage profiles: the time the real storage added beyond the profile's modelled
    /// read time, as a share of it. The emulation can only slow reads down, so above 10%
    /// (`engine::offload::UNFAITHFUL_SHARE`) the run measured this machine's storage, not the
    /// profile.
    pub emulation_excess: Option<f64>,
    /// Directory with profile artefacts, if any.
    pub profile_dir: Option<String>,
    /// Free text (fallbacks taken, limits not applied, …).
    pub note: Option<String>,
}

impl Record {
    /// The key that identifies a scenario × test across runs (for resuming).
    pub fn key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}|{}",
            self.engine,
            self.model,
            self.quant,
            self.storage,
            self.budget_bytes
                .map(|b| b.to_string())
                .unwrap_or_else(|| "unlimited".into()),
            self.threads,
            self.test
        )
    }
}

/// llama-bench's time fields from tokens per second: each repetition's nanoseconds for
/// `n_tokens` tokens, their mean and sample standard deviation (`None` without samples).
pub fn ns_fields(samples_tps: &[f64], n_tokens: u32) -> (Vec<u64>, Option<u64>, Option<u64>) {
    let ns: Vec<f64> = samples_tps
        .iter()
        .filter(|t| t.is_finite() && **t > 0.0)
        .map(|t| f64::from(n_tokens) / t * 1e9)
        .collect();
    if ns.is_empty() {
        return (Vec::new(), None, None);
    }
    let (mean, sd, _) = stats(&ns);
    (
        ns.iter().map(|&x| x.round() as u64).collect(),
        Some(mean.round() as u64),
        Some(sd.round() as u64),
    )
}

/// Mean, sample standard deviation and median.
pub fn stats(samples: &[f64]) -> (f64, f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let sd = if samples.len() > 1 {
        (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let mid = s.len() / 2;
    let median = if s.len() % 2 == 1 {
        s[mid]
    } else {
        (s[mid - 1] + s[mid]) / 2.0
    };
    (mean, sd, median)
}

/// Appends one record as a JSON line and fsyncs.
pub fn append(path: &Path, r: &Record) -> Result<()> {
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_data())
        .with_context(|| format!("appending to {}", path.display()))
}

/// Reads a JSONL file; a torn final line is skipped, a bad line elsewhere is an error.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {} // torn last line
            Err(e) => {
                return Err(e).with_context(|| format!("{}:{}: bad record", path.display(), i + 1));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_are_right() {
        let (m, sd, med) = stats(&[1.0, 2.0, 3.0, 10.0]);
        assert_eq!(m, 4.0);
        assert!((sd - 4.082_482_9).abs() < 1e-6);
        assert_eq!(med, 2.5);
        assert_eq!(stats(&[5.0]), (5.0, 0.0, 5.0));
    }

    #[test]
    fn ns_fields_follow_llama_bench() {
        // 128 tokens at 64 and 128 t/s: 2 s and 1 s.
        let (ns, avg, sd) = ns_fields(&[64.0, 128.0], 128);
        assert_eq!(ns, vec![2_000_000_000, 1_000_000_000]);
        assert_eq!(avg, Some(1_500_000_000));
        assert_eq!(sd, Some(707_106_781));
        assert_eq!(ns_fields(&[], 8), (Vec::new(), None, None));
    }

    #[test]
    fn serialised_under_llama_bench_names_and_old_names_still_read() {
        let r = Record {
            schema: SCHEMA,
            commit: "abc".into(),
            cpu_model: "cpu".into(),
            threads: 2,
            test: "tg64".into(),
            n_gen: 64,
            samples_tps: vec![10.0, 12.0],
            mean_tps: 11.0,
            sd_tps: 1.4,
            ..Record::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for (k, want) in [
            ("build_commit", serde_json::json!("abc")),
            ("cpu_info", serde_json::json!("cpu")),
            ("n_threads", serde_json::json!(2)),
            ("n_gen", serde_json::json!(64)),
            ("avg_ts", serde_json::json!(11.0)),
            ("stddev_ts", serde_json::json!(1.4)),
            ("samples_ts", serde_json::json!([10.0, 12.0])),
        ] {
            assert_eq!(v[k], want, "{k}");
        }
        for old in [
            "commit",
            "cpu_model",
            "threads",
            "mean_tps",
            "sd_tps",
            "samples_tps",
        ] {
            assert!(v.get(old).is_none(), "{old} still written");
        }
        let old = r#"{"schema":1,"commit":"abc","cpu_model":"cpu","threads":2,"test":"tg64","n_gen":64,"samples_tps":[10.0,12.0],"mean_tps":11.0,"sd_tps":1.4}"#;
        assert_eq!(serde_json::from_str::<Record>(old).unwrap(), r);
        assert_eq!(serde_json::from_str::<Record>(&v.to_string()).unwrap(), r);
    }

    #[test]
    fn append_read_and_torn_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("r.jsonl");
        let r = Record {
            schema: SCHEMA,
            test: "tg64".into(),
            samples_tps: vec![1.0, 2.0],
            budget_bytes: Some(1 << 30),
            ..Record::default()
        };
        append(&p, &r).unwrap();
        append(&p, &r).unwrap();
        // Simulate a crash mid-write.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"schema\":1,\"te").unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back, vec![r.clone(), r.clone()]);
        assert_eq!(back[0].key(), r.key());
        // A bad line in the middle is an error naming the line.
        std::fs::write(&p, "{}\nnot json\n{}\n").unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains(":2"), "{e}");
    }
}
