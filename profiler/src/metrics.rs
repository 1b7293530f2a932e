//! All analyses of a recording in one serialisable [`Metrics`] value (`metrics.json`).

use serde::{Deserialize, Serialize};

use crate::cache::{self, CapacityMode, HitRatioCurves, Policy};
use crate::error::Result;
use crate::kv::{self, KvSample};
use crate::latency::{self, LatencyReport};
use crate::overlap::{self, OverlapReport};
use crate::recording::Recording;
use crate::routing::{self, RoutingAnalysis, RoutingTrace};
use crate::sparsity::{self, SparsityReport};
use crate::stalls::{self, StallReport};

/// Version of the `metrics.json` layout; bumped on incompatible changes.
pub const METRICS_SCHEMA_VERSION: u32 = 1;

/// What [`analyze`] computes beyond the defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisConfig {
    /// Experts per layer (default: largest id seen + 1).
    pub n_experts: Option<usize>,
    /// Policies for the hit-ratio curves.
    pub policies: Vec<Policy>,
    /// Per-layer capacities to replay (default: [`cache::default_capacities`] of the universe).
    pub per_layer_capacities: Option<Vec<usize>>,
    /// Global capacities to replay (default likewise).
    pub global_capacities: Option<Vec<usize>>,
    /// Windows for temporal locality.
    pub locality_ks: Vec<usize>,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            n_experts: None,
            policies: Policy::ALL.to_vec(),
            per_layer_capacities: None,
            global_capacities: None,
            locality_ks: vec![1, 2, 4, 8],
        }
    }
}

/// Everything the profiler computes from one recording.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// [`METRICS_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// I/O vs compute per step and overall.
    pub overlap: OverlapReport,
    /// TTFT, tokens/s, latency percentiles.
    pub latency: LatencyReport,
    /// Routing analyses (`None` without routing events).
    pub routing: Option<RoutingAnalysis>,
    /// Hit-ratio curves, per-layer mode then global mode (empty without routing events).
    pub cache_curves: Vec<HitRatioCurves>,
    /// KV bytes vs context length.
    pub kv: Vec<KvSample>,
    /// ReGLU sparsity.
    pub sparsity: SparsityReport,
    /// Decode steps under offloading: idle storage and waits by cause (absent from files written
    /// before it existed).
    #[serde(default)]
    pub stalls: StallReport,
}

/// Runs every analysis; the routing trace is read from the recording's events.
pub fn analyze(rec: &Recording, cfg: &AnalysisConfig) -> Result<Metrics> {
    let trace = RoutingTrace::from_recording(rec)?;
    analyze_with_trace(rec, &trace, cfg)
}

/// Runs every analysis with a routing trace from elsewhere (e.g. a `routing.csv`).
pub fn analyze_with_trace(
    rec: &Recording,
    trace: &RoutingTrace,
    cfg: &AnalysisConfig,
) -> Result<Metrics> {
    let (routing, cache_curves) = if trace.choices.is_empty() {
        (None, Vec::new())
    } else {
        let r = routing::analyze_routing(trace, cfg.n_experts, &cfg.locality_ks);
        let curves = [
            (CapacityMode::PerLayer, &cfg.per_layer_capacities),
            (CapacityMode::Global, &cfg.global_capacities),
        ]
        .into_iter()
        .map(|(mode, caps)| {
            let caps = caps
                .clone()
                .unwrap_or_else(|| cache::default_capacities(cache::universe(trace, mode)));
            cache::hit_ratio_curves(trace, mode, &cfg.policies, &caps)
        })
        .collect();
        (Some(r), curves)
    };
    Ok(Metrics {
        schema_version: METRICS_SCHEMA_VERSION,
        overlap: overlap::overlap(rec),
        latency: latency::latency(rec)?,
        routing,
        cache_curves,
        kv: kv::kv_samples(rec),
        sparsity: sparsity::sparsity(rec),
        stalls: stalls::stalls(rec),
    })
}
