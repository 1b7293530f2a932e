//! Optional per-scenario profile data behind the detailed charts (timeline, popularity, reuse,
//! hit-ratio curves, KV memory, latency, sparsity).
//!
//! The profiler or the scenario runner writes one JSON object of this shape per profiled
//! scenario; every field except `name` may be missing, and each missing one turns into a
//! "not measured" note in the report rather than a chart.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Profile data of one scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProfileData {
    /// Scenario name shown as the section heading (e.g. `"nvme-gen4 · q4_0 · 1 GiB · tg64"`).
    pub name: String,
    /// An excerpt of the span timeline, a few tokens long.
    pub timeline: Vec<Span>,
    /// Expert selection share per layer: `popularity[layer][expert]`.
    pub popularity: Vec<Vec<f64>>,
    /// Reuse distances of expert accesses as `(distance, count)`; `u64::MAX` marks first accesses.
    pub reuse_distance_hist: Vec<(u64, u64)>,
    /// Hit ratio against cache capacity, per policy.
    pub hit_curves: Vec<HitCurve>,
    /// KV cache memory against context length.
    pub kv: Vec<KvPoint>,
    /// Per-token decode latency, ms.
    pub latency_ms: Vec<f64>,
    /// Share of FFN neurons skipped, per layer, 0..1.
    pub sparsity_per_layer: Vec<f64>,
    /// Why decoding under a memory budget waits (absent for a run without expert reads).
    pub stalls: Option<Stalls>,
}

/// Where a decoded token's time went under offloading, ms per token (the profiler's `stalls`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stalls {
    /// Wall time per decoded token.
    pub ms_per_token: f64,
    /// Time no expert read was in flight, by what the compute side was doing (`"LM head"`,
    /// `"attention"`, ...).
    pub storage_idle: Vec<(String, f64)>,
    /// Time the compute side waited for an expert, by what that expert was doing (`"being
    /// read"`, `"being repacked"`, ...).
    pub waits: Vec<(String, f64)>,
}

/// One span of the timeline: a named piece of work on one thread.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Span {
    /// Thread (track) name, e.g. `"main"`, `"io-0"`.
    pub thread: String,
    /// Span name in the `area.what` scheme: `io.*`, `compute.*`, `kv.*`.
    pub name: String,
    /// Start, µs from the start of the excerpt.
    pub start_us: f64,
    /// Duration, µs.
    pub dur_us: f64,
}

/// Hit ratio of one cache policy at several capacities.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HitCurve {
    /// Policy name: `"LRU"`, `"LFU"`, `"engine"`, `"Belady"`.
    pub policy: String,
    /// `(capacity, hit_ratio)`: capacity as a share of all experts (0..1) or in slots.
    pub points: Vec<(f64, f64)>,
}

/// KV cache size at one context length, for the hybrid layout and for all layers global.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KvPoint {
    /// Context length, tokens.
    pub context: u64,
    /// Bytes with the model's hybrid (sliding-window + global) attention.
    pub hybrid_bytes: u64,
    /// Bytes if every layer kept the whole context.
    pub all_global_bytes: u64,
}

/// Reads one profile JSON file.
pub fn load_profile(path: &Path) -> Result<ProfileData> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::BadProfile {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_profile_reads_with_defaults() {
        let p: ProfileData =
            serde_json::from_str(r#"{"name":"x","latency_ms":[1.0,2.0],"extra":1}"#).expect("ok");
        assert_eq!(p.name, "x");
        assert_eq!(p.latency_ms, vec![1.0, 2.0]);
        assert!(p.timeline.is_empty() && p.kv.is_empty());
    }

    #[test]
    fn tuples_read_from_json_arrays() {
        let p: ProfileData = serde_json::from_str(
            r#"{"reuse_distance_hist":[[1,5],[4,2]],"hit_curves":[{"policy":"LRU","points":[[0.1,0.3]]}]}"#,
        )
        .expect("ok");
        assert_eq!(p.reuse_distance_hist, vec![(1, 5), (4, 2)]);
        assert_eq!(p.hit_curves[0].points, vec![(0.1, 0.3)]);
    }
}
