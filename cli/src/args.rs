//! Flags shared by the subcommands that load a model.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use engine::model::{ComputeMode, Model, ModelOptions, OffloadOptions};
use engine::offload::budget::Plan;
use engine::offload::{CacheScope, MemoryBudget, OpenMode, PolicyKind, StorageProfile};

/// Which model and how to run it.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Model: a `.gguf` file or a Hugging Face directory (`config.json` + safetensors).
    #[arg(short = 'm', long = "model")]
    pub model: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(short = 't', long, default_value_t = 0)]
    pub threads: usize,
    /// Reference arithmetic (f32 activations, dequantised weights) instead of the fast path.
    #[arg(long)]
    pub exact: bool,
    /// Memory budget for everything the process holds (e.g. `1GiB`, `512MiB`): only the
    /// non-expert weights stay resident; experts are streamed from the model file into an
    /// expert cache sized to fit. Default: everything in memory.
    #[arg(long = "memory-budget", value_name = "SIZE")]
    pub memory_budget: Option<MemoryBudget>,
    /// Storage to read experts from: `real`, or a device emulated on top of real reads
    /// (nvme-gen4, nvme-gen3, ufs-4, ufs-3.1, sata-ssd, emmc, sd-card).
    #[arg(
        long,
        value_name = "PROFILE",
        default_value = "real",
        requires = "memory_budget"
    )]
    pub storage: StorageProfile,
    /// Expert cache eviction policy: lru, lfu, lrfu or learned.
    #[arg(
        long = "cache-policy",
        value_name = "POLICY",
        default_value = "learned",
        requires = "memory_budget"
    )]
    pub cache_policy: PolicyKind,
    /// Expert cache capacity shared by all layers (`global`) or split evenly (`per-layer`).
    #[arg(
        long = "cache-scope",
        value_name = "SCOPE",
        default_value = "global",
        requires = "memory_budget"
    )]
    pub cache_scope: CacheScope,
    /// Experts to pin in the cache: a hot-set file, or a `routing.csv` from `thinker profile`.
    #[arg(long = "hot-experts", value_name = "FILE", requires = "memory_budget")]
    pub hot_experts: Option<PathBuf>,
    /// I/O threads reading experts (= reads in flight).
    #[arg(long = "io-threads", value_name = "N", default_value_t = 4)]
    pub io_threads: usize,
    /// Do not guess and prefetch the next layers' experts.
    #[arg(long = "no-speculative")]
    pub no_speculative: bool,
    /// Layers ahead whose experts are guessed (from the current residual) and prefetched.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub lookahead: usize,
    /// Request a layer's experts only at its MoE step, not before attention (for comparison).
    #[arg(long = "no-prefetch")]
    pub no_prefetch: bool,
    /// How expert reads open the file: auto (O_DIRECT if the filesystem allows), direct or
    /// buffered.
    #[arg(long = "io-mode", value_name = "MODE", default_value = "auto")]
    pub io_mode: OpenMode,
}

/// Context planned for when a command does not say (a chat or server session's default).
pub const DEFAULT_PLAN_CONTEXT: usize = 4096;

/// Largest prompt chunk of a session (`SessionConfig`'s default).
pub const DEFAULT_PLAN_BATCH: usize = 256;

impl ModelArgs {
    /// The compute mode asked for.
    pub fn mode(&self) -> ComputeMode {
        if self.exact {
            ComputeMode::Exact
        } else {
            ComputeMode::Fast
        }
    }

    /// Offloading settings for sessions of up to `context` positions and `max_batch`-token
    /// chunks (`None` without `--memory-budget`).
    pub fn offload_options(&self, context: usize, max_batch: usize) -> Option<OffloadOptions> {
        let budget = self.memory_budget?;
        let mut o = OffloadOptions::new(budget);
        o.storage = self.storage;
        o.policy = self.cache_policy;
        o.scope = self.cache_scope;
        o.hot_experts = self.hot_experts.clone();
        o.io_threads = self.io_threads.max(1);
        o.speculative = !self.no_speculative && self.lookahead > 0;
        o.lookahead = self.lookahead.max(1);
        o.prefetch = !self.no_prefetch;
        o.open_mode = self.io_mode;
        o.context = context.max(1);
        o.max_batch = max_batch.clamp(1, context.max(1));
        Some(o)
    }

    /// Loads the model with these options, planning a memory budget (if any) for sessions of
    /// the default context ([`DEFAULT_PLAN_CONTEXT`]).
    pub fn load(&self) -> Result<Model> {
        self.load_for(DEFAULT_PLAN_CONTEXT, DEFAULT_PLAN_BATCH)
    }

    /// Loads the model, planning a memory budget (if any) for sessions of up to `context`
    /// positions processed in chunks of up to `max_batch` tokens. Prints the plan on stderr.
    pub fn load_for(&self, context: usize, max_batch: usize) -> Result<Model> {
        self.load_with(self.offload_options(context, max_batch))
    }

    /// Loads the model with explicit offloading settings. Prints the plan on stderr.
    pub fn load_with(&self, offload: Option<OffloadOptions>) -> Result<Model> {
        let opts = ModelOptions {
            mode: self.mode(),
            threads: self.threads,
            offload,
        };
        let m = Model::load(&self.model, &opts)
            .with_context(|| format!("cannot load model {}", self.model.display()))?;
        if let Some(o) = m.offload() {
            eprintln!("{o}");
            if let Some(note) = kv_note(o.plan(), o.options().context) {
                eprintln!("note               {note}");
            }
        }
        Ok(m)
    }
}

/// Share of the budget above which the plan's KV cache gets a note: it is planned for the whole
/// context, and what a shorter context would leave to the expert cache is worth saying.
const KV_NOTE_SHARE: f64 = 0.125;

/// A note when the KV cache planned for `context` positions takes a large share of the budget
/// while experts are offloaded: how many expert slots it stands for, and that `-c` trades
/// context for them.
pub fn kv_note(plan: &Plan, context: usize) -> Option<String> {
    let i = &plan.input;
    let share = i.kv_bytes as f64 / i.budget_bytes.max(1) as f64;
    if plan.all_resident || share < KV_NOTE_SHARE || i.slot_bytes == 0 {
        return None;
    }
    Some(format!(
        "the KV cache for {context} positions takes {} ({:.0}% of the budget, the room of {} expert slots next to the {} planned); a shorter context (-c) leaves that room to the expert cache",
        human_bytes(i.kv_bytes),
        100.0 * share,
        i.kv_bytes / i.slot_bytes,
        plan.cache_slots
    ))
}

/// One line of offload counters for stderr, if the model is offloaded.
pub fn offload_summary(model: &Model) -> Option<String> {
    model.offload_snapshot().map(|s| format!("offload: {s}"))
}

/// Parses `1,2,3` (spaces allowed) into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let ids: Vec<u32> = s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u32>()
                .with_context(|| format!("'{p}' is not a token id"))
        })
        .collect::<Result<_>>()?;
    if ids.is_empty() {
        bail!("no token ids given");
    }
    Ok(ids)
}

/// Human-readable bytes.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use engine::offload::budget::PlanInput;

    fn plan(budget: u64, kv: u64) -> Plan {
        Plan::new(PlanInput {
            budget_bytes: budget,
            resident_bytes: 226 << 20,
            kv_bytes: kv,
            scratch_bytes: 27 << 20,
            io_buffer_bytes: 3 << 20,
            io_threads: 4,
            reserve_bytes: 87 << 20,
            slot_bytes: 2 << 20,
            n_experts: 32,
            top_k: 4,
            n_layers: 32,
        })
        .unwrap()
    }

    /// The KV note appears when the KV cache takes at least an eighth of the budget, and says
    /// what it stands for in expert slots.
    #[test]
    fn a_large_planned_kv_cache_gets_a_note_in_slots() {
        let note = kv_note(&plan(1 << 30, 256 << 20), 4096).expect("a quarter of the budget");
        assert!(
            note.contains("4096 positions takes 256.00 MiB (25% of the budget"),
            "{note}"
        );
        assert!(note.contains("the room of 128 expert slots"), "{note}");
        assert_eq!(kv_note(&plan(1 << 30, 16 << 20), 64), None);
        // Everything resident: nothing to trade.
        assert_eq!(kv_note(&plan(64 << 30, 16 << 30), 1 << 20), None);
    }
    use super::*;

    #[test]
    fn ids_parse_and_reject() {
        assert_eq!(parse_ids("1, 2,3").unwrap(), vec![1, 2, 3]);
        assert!(parse_ids("1,x").is_err());
        assert!(parse_ids("").is_err());
        assert!(parse_ids("-1").is_err());
    }

    #[test]
    fn bytes_are_humane() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
    }
}
