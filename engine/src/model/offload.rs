//! Expert offloading wired into the model: with [`OffloadOptions`] a model keeps only its
//! non-expert weights resident (read through the memory map) and streams experts from the model
//! file into an expert cache sized by a memory budget.
//!
//! At load ([`Offload::build`]):
//! 1. the budget is split by [`Plan`]: resident weights, the KV cache of the planned context,
//!    scratch, I/O buffers, a reserve for the process itself, and the expert cache gets the rest;
//!    a budget that cannot hold all that plus one layer's active experts fails with
//!    [`Error::BudgetTooSmall`] stating the minimum;
//! 2. the experts' file ranges come from the GGUF directory ([`ExpertLayout::from_gguf`]) or from
//!    the weight views ([`ExpertLayout::from_weights`]);
//! 3. the non-expert tensors are copied out of the memory map into owned memory and their pages
//!    dropped from the map and the page cache, as are any cached expert bytes: afterwards the map
//!    is never touched, so it holds nothing, and a model file truncated or removed mid-run can
//!    only fail an expert read (a clear, sticky error), never fault the process. Experts are only
//!    ever read by the I/O threads (`O_DIRECT` where the filesystem allows it), into cache slots
//!    or, for a down matrix about to be repacked, into a buffer of the I/O thread;
//! 4. in fast mode, each expert's down matrix is repacked into the sparse planes layout inside
//!    its slot (same size, lossless), from the copy the I/O thread read aside, and its Q4_0 gate
//!    into the x8 layout in place; both repacks run on the I/O pool's repack threads while the
//!    I/O thread reads the up matrix, and the slot is handed over when all are done. The fast
//!    kernels then run on slot bytes exactly as they run on the in-memory weights:
//!    bit-identical results.
//!
//! The forward pass then requests each layer's experts as soon as its router has run (before
//! attention), optionally guesses the next layer's experts from the same residual and prefetches
//! them (cancelled when the real routing disagrees), and computes experts in arrival order.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::ModelConfig;
use super::linear::ComputeMode;
use super::weights::{Matrix, TensorBytes, Weights};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;
use crate::kernels::packed::{BlockQ4_0x8, X8_ROWS, repack_q4_0x8};
use crate::kv_cache::{KvCache, KvCacheConfig, KvType};
use crate::moe::sparse_down::{self, PlaneKind};
use crate::offload::budget::memory_ceiling;
use crate::offload::{
    ALIGN, AlignedBuf, CacheConfig, CacheScope, Capacity, ExpertFile, ExpertKey, ExpertLayout,
    FileRange, HotSet, IoConfig, IoMode, MemoryBudget, OffloadStats, OpenMode, Part, Plan,
    PlanInput, PolicyKind, PrefetchConfig, Prefetcher, SlotLayout, SlotTransform, StorageProfile,
    io::{InPlacePart, StagedPart},
    sim::SlotShares,
};

/// Process overhead the plan sets aside beyond what it counts explicitly: the executable's and
/// libraries' pages (page cache, charged to the process's cgroup: about 42 MiB for a release
/// `thinker` with debug line tables under an 8 MiB readahead window), thread stacks, allocator
/// slack, the tokenizer. Measured on the 4B model: about 20 MiB of anonymous memory beyond the
/// plan's other items, plus the executable's pages.
const RESERVE_BASE_BYTES: u64 = 64 << 20;

/// Parsed GGUF metadata (tokenizer vocabulary and merges as strings) costs about this many times
/// the header's bytes on the heap, on top of the header pages themselves.
const METADATA_OVERHEAD: u64 = 3;

/// Offloading settings (`--memory-budget` and the flags that go with it).
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadOptions {
    /// Everything the process may hold.
    pub budget: MemoryBudget,
    /// Storage device: real, or emulated on top of real reads.
    pub storage: StorageProfile,
    /// Eviction policy of the expert cache.
    pub policy: PolicyKind,
    /// One cache for all layers, or an equal share per layer.
    pub scope: CacheScope,
    /// Experts to pin (a hot-set file or a profiler `routing.csv`).
    pub hot_experts: Option<PathBuf>,
    /// I/O threads (= reads in flight).
    pub io_threads: usize,
    /// Request a layer's experts right after its router, before attention (off: at the MoE
    /// step, for comparison).
    pub prefetch: bool,
    /// Guess the next layers' experts from the current residual and prefetch them.
    pub speculative: bool,
    /// How many layers ahead to guess (with `speculative`), at least 1.
    pub lookahead: usize,
    /// `O_DIRECT` or buffered reads.
    pub open_mode: OpenMode,
    /// Positions the KV cache is planned for (sessions may not hold more).
    pub context: usize,
    /// Largest prefill chunk the scratch is planned for.
    pub max_batch: usize,
    /// Record the sequence of demand accesses (for comparing with Belady's optimum).
    pub record_trace: bool,
}

impl OffloadOptions {
    /// Defaults for a budget: real storage, the `learned` policy, global cache, 4 I/O threads,
    /// prefetch and speculation on, `O_DIRECT` where possible, a 4096-position context, 256-token chunks.
    pub fn new(budget: MemoryBudget) -> OffloadOptions {
        OffloadOptions {
            budget,
            storage: StorageProfile::Real,
            policy: PolicyKind::default(),
            scope: CacheScope::Global,
            hot_experts: None,
            io_threads: 4,
            prefetch: true,
            speculative: true,
            lookahead: 1,
            open_mode: OpenMode::Auto,
            context: 4096,
            max_batch: 256,
            record_trace: false,
        }
    }
}

/// Counters of the forward pass's speculation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Experts guessed for the next layer.
    pub guessed: u64,
    /// Guesses the next layer's router then chose.
    pub correct: u64,
    /// Experts the layers actually chose, where a guess had been made.
    pub chosen: u64,
}

impl SpecStats {
    /// Share of the chosen experts that had been guessed.
    pub fn recall(&self) -> f64 {
        self.correct as f64 / self.chosen.max(1) as f64
    }
}

/// Offload counters at one moment; subtract two with [`OffloadSnapshot::since`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OffloadSnapshot {
    /// Prefetcher counters (cache, I/O, waiting, emulation).
    pub stats: OffloadStats,
    /// Speculation counters.
    pub spec: SpecStats,
}

impl OffloadSnapshot {
    /// The counts accumulated between `earlier` and `self`.
    pub fn since(&self, earlier: &OffloadSnapshot) -> OffloadSnapshot {
        let (a, b) = (&self.stats, &earlier.stats);
        let mut d = *self;
        d.stats.cache.hits = a.cache.hits - b.cache.hits;
        d.stats.cache.prefetch_hits = a.cache.prefetch_hits - b.cache.prefetch_hits;
        d.stats.cache.inflight_hits = a.cache.inflight_hits - b.cache.inflight_hits;
        d.stats.cache.misses = a.cache.misses - b.cache.misses;
        d.stats.cache.evictions = a.cache.evictions - b.cache.evictions;
        d.stats.cache.wasted_prefetches = a.cache.wasted_prefetches - b.cache.wasted_prefetches;
        d.stats.cache.prefetch_inserts = a.cache.prefetch_inserts - b.cache.prefetch_inserts;
        d.stats.cache.bytes_read = a.cache.bytes_read - b.cache.bytes_read;
        d.stats.io.reads = a.io.reads - b.io.reads;
        d.stats.io.bytes = a.io.bytes - b.io.bytes;
        d.stats.io.cancelled = a.io.cancelled - b.io.cancelled;
        d.stats.io.promoted = a.io.promoted - b.io.promoted;
        d.stats.io.failed = a.io.failed - b.io.failed;
        d.stats.io.busy_ns = a.io.busy_ns - b.io.busy_ns;
        d.stats.io.busy_wall_ns = a.io.busy_wall_ns - b.io.busy_wall_ns;
        d.stats.io.transform_ns = a.io.transform_ns - b.io.transform_ns;
        d.stats.wait.blocked = a.wait.blocked - b.wait.blocked;
        d.stats.wait.blocked_ns = a.wait.blocked_ns - b.wait.blocked_ns;
        d.stats.wait.deferred = a.wait.deferred - b.wait.deferred;
        d.stats.wait.prefetch_dropped = a.wait.prefetch_dropped - b.wait.prefetch_dropped;
        d.stats.wait.prefetch_cancelled = a.wait.prefetch_cancelled - b.wait.prefetch_cancelled;
        d.stats.device = match (a.device, b.device) {
            (Some(x), Some(y)) => Some(x.since(&y)),
            (x, _) => x,
        };
        d.spec.guessed = self.spec.guessed - earlier.spec.guessed;
        d.spec.correct = self.spec.correct - earlier.spec.correct;
        d.spec.chosen = self.spec.chosen - earlier.spec.chosen;
        d
    }

    /// Demand accesses that found their expert resident since its previous demand access (the
    /// rate Belady's optimum bounds; prefetched experts are not counted, see
    /// [`crate::offload::CacheStats`]).
    pub fn hit_rate(&self) -> f64 {
        self.stats.cache.hit_rate()
    }

    /// Demand accesses that found their expert ready, cached or prefetched.
    pub fn ready_rate(&self) -> f64 {
        self.stats.cache.ready_rate()
    }

    /// Time the compute thread was blocked on expert reads, milliseconds.
    pub fn exposed_io_ms(&self) -> f64 {
        self.stats.wait.blocked_ns as f64 / 1e6
    }

    /// Wall time during which some expert read was in progress, milliseconds.
    pub fn io_ms(&self) -> f64 {
        self.stats.io.busy_wall_ns as f64 / 1e6
    }

    /// Share of the I/O wall time the compute thread did not wait for: `1 − exposed / io`
    /// (`None` without I/O). The engine's own counter; the profiler's overlap metric computes
    /// the same from spans.
    pub fn overlap(&self) -> Option<f64> {
        let io = self.stats.io.busy_wall_ns;
        (io > 0).then(|| (1.0 - self.stats.wait.blocked_ns as f64 / io as f64).clamp(0.0, 1.0))
    }
}

impl fmt::Display for OffloadSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expert cache: {}; {} prefetched ({} cancelled, {} dropped); I/O {} reads, {:.1} ms busy, {:.1} ms exposed ({} waits), repack {:.1} ms",
            self.stats.cache,
            self.stats.cache.prefetch_inserts,
            self.stats.wait.prefetch_cancelled,
            self.stats.wait.prefetch_dropped,
            self.stats.io.reads,
            self.io_ms(),
            self.exposed_io_ms(),
            self.stats.wait.blocked,
            self.stats.io.transform_ns as f64 / 1e6
        )?;
        if let Some(o) = self.overlap() {
            write!(f, ", overlap {:.0}%", 100.0 * o)?;
        }
        if let Some(d) = &self.stats.device {
            write!(f, "; {d}")?;
        }
        if self.spec.guessed > 0 {
            write!(
                f,
                "; speculation: {} guesses, {} right ({:.0}% of chosen experts)",
                self.spec.guessed,
                self.spec.correct,
                100.0 * self.spec.recall()
            )?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Shared {
    spec: SpecStats,
    /// Per layer: the experts guessed for it (awaiting its real routing).
    guesses: Vec<Vec<u32>>,
    trace: Vec<ExpertKey>,
}

/// A model's offloading machinery: the plan, the prefetcher and the counters.
pub struct Offload {
    prefetcher: Prefetcher,
    plan: Plan,
    opts: OffloadOptions,
    planes: Vec<Option<PlaneKind>>,
    gate_x8: Vec<bool>,
    io_mode: IoMode,
    path: PathBuf,
    hot: usize,
    shared: Mutex<Shared>,
}

impl fmt::Debug for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offload")
            .field("plan", &self.plan)
            .field("opts", &self.opts)
            .finish()
    }
}

/// Where a model's experts are and how big a cache slot is.
fn expert_layout(
    config: &ModelConfig,
    weights: &Weights,
    gguf: Option<&GgufFile>,
) -> Result<(ExpertLayout, PathBuf)> {
    let (layout, path) = match gguf.and_then(|g| g.path().map(|p| (g, p.to_path_buf()))) {
        Some((g, p)) => (ExpertLayout::from_gguf(g, config.n_layers as u32)?, p),
        None => ExpertLayout::from_weights(weights)?,
    };
    // The file ranges must be exactly the matrices the model was built from.
    for (l, lw) in weights.layers.iter().enumerate() {
        for (e, ew) in lw.experts.iter().enumerate() {
            let r = layout.ranges(ExpertKey::new(l as u32, e as u32))?;
            for (m, fr) in [&ew.gate, &ew.up, &ew.down].into_iter().zip(r) {
                let (_, start) = m.data.location();
                if fr.len != m.data.len() as u64 || fr.offset != start as u64 {
                    return Err(Error::Model(format!(
                        "tensor '{}': file range {}+{} does not match its weights ({}+{})",
                        m.name,
                        fr.offset,
                        fr.len,
                        start,
                        m.data.len()
                    )));
                }
            }
        }
    }
    Ok((layout, path))
}

/// The planes kind of each layer's down matrices, in fast mode (`None`: kept dense).
fn planes_of(weights: &Weights, mode: ComputeMode) -> Vec<Option<PlaneKind>> {
    weights
        .layers
        .iter()
        .map(|l| {
            let e = l.experts.first()?;
            if mode != ComputeMode::Fast || e.down_transposed {
                return None;
            }
            PlaneKind::for_down(e.down.ty, e.down.rows, e.down.cols)
        })
        .collect()
}

/// Per layer: whether its experts' gates are x8-packed in their slots (fast mode, Q4_0 gates
/// with rows in eights), as the in-memory model packs them.
fn gates_x8_of(weights: &Weights, mode: ComputeMode) -> Vec<bool> {
    weights
        .layers
        .iter()
        .map(|l| {
            l.experts.first().is_some_and(|e| {
                mode == ComputeMode::Fast
                    && e.gate.ty == crate::quant::GgmlType::Q4_0
                    && e.gate.rows > 0
                    && e.gate.rows.is_multiple_of(X8_ROWS)
            })
        })
        .collect()
}

/// KV cache bytes (f32) a session of `positions` positions and `max_batch` chunks holds at
/// its fullest.
pub fn plan_kv_bytes(config: &ModelConfig, positions: usize, max_batch: usize) -> Result<u64> {
    let kv = KvCache::new(
        config,
        KvCacheConfig {
            max_positions: positions.max(1),
            max_batch: max_batch.clamp(1, positions.max(1)),
            dtype: KvType::F32,
        },
    )?;
    Ok((0..config.n_layers)
        .map(|l| kv.predicted_layer_bytes(l, positions) as u64)
        .sum())
}

/// The memory plan [`Offload::build`] would make for a model under `opts` (the expert file is
/// opened to learn whether `O_DIRECT` is available), and the read mode.
pub fn plan(
    config: &ModelConfig,
    weights: &Weights,
    gguf: Option<&GgufFile>,
    mode: ComputeMode,
    opts: &OffloadOptions,
) -> Result<(Plan, IoMode)> {
    let (layout, path) = expert_layout(config, weights, gguf)?;
    let io_mode = ExpertFile::open(&path, opts.open_mode)?.mode().clone();
    let p = plan_with_layout(config, weights, gguf, mode, opts, &io_mode, &layout)?;
    Ok((p, io_mode))
}

fn plan_with_layout(
    config: &ModelConfig,
    weights: &Weights,
    gguf: Option<&GgufFile>,
    mode: ComputeMode,
    opts: &OffloadOptions,
    io_mode: &IoMode,
    layout: &ExpertLayout,
) -> Result<Plan> {
    let wb = weights.bytes(config.tied_embeddings, config.n_experts_used);
    let threads = opts.io_threads.max(1) as u64;
    let slot = layout.slot_bytes() as u64;
    let first = weights.layers.first().and_then(|l| l.experts.first());
    // With planes in any layer, every down matrix is read aside into a buffer of each I/O
    // thread (and repacked from there into its slot): the buffer grows to the longest aligned
    // read of a down matrix.
    let down_stage = if planes_of(weights, mode).iter().any(Option::is_some) {
        layout.max_read_len(Part::Down)
    } else {
        0
    };
    // Eight gate rows at a time are copied aside for the x8 repack.
    let gate_tmp = if gates_x8_of(weights, mode).iter().any(|&b| b) {
        first.map_or(0, |e| x8_group_bytes(e.gate.cols) as u64)
    } else {
        0
    };
    let repack_tmp = down_stage + gate_tmp;
    // Buffered reads pass through the page cache before they are dropped.
    let page_cache = if io_mode.is_direct() { 0 } else { slot };
    let metadata = gguf.map_or(0, |g| g.data_offset());
    Plan::new(PlanInput {
        budget_bytes: opts.budget.bytes(),
        resident_bytes: wb.non_expert(),
        kv_bytes: plan_kv_bytes(config, opts.context, opts.max_batch)?,
        scratch_bytes: super::forward::scratch_bytes(config, opts.max_batch),
        io_buffer_bytes: threads * (repack_tmp + page_cache),
        io_threads: threads as u32,
        reserve_bytes: RESERVE_BASE_BYTES + metadata * (1 + METADATA_OVERHEAD),
        slot_bytes: slot,
        n_experts: layout.n_experts(),
        top_k: config.n_experts_used as u32,
        n_layers: layout.n_layers(),
    })
}

/// Bytes of one group of [`X8_ROWS`] Q4_0 rows of `cols` columns: the unit the gate is
/// repacked in, in place, inside its cache slot.
fn x8_group_bytes(cols: usize) -> usize {
    X8_ROWS * (cols / crate::quant::QK) * std::mem::size_of::<crate::quant::BlockQ4_0>()
}

thread_local! {
    /// Per thread that repacks gates (the I/O pool's repack threads, at most two, or an I/O
    /// thread when a repack runs in turn): eight rows of the gate while they are repacked in
    /// place. The plan counts one per I/O thread, which covers both.
    static REPACK_TMP: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The post-read transform repacking each expert's down matrix into planes (from the copy the
/// I/O thread read aside) and its gate into the x8 layout (in place), both beside the read of
/// the up matrix.
fn repack_transform(
    planes: Vec<Option<PlaneKind>>,
    gate_x8: Vec<bool>,
    h: usize,
    f: usize,
) -> SlotTransform {
    let any_x8 = gate_x8.iter().any(|&b| b);
    let in_place = move |key: ExpertKey, _: &SlotLayout, dst: &mut [u8]| -> Result<()> {
        if !gate_x8.get(key.layer as usize).copied().unwrap_or(false) {
            return Ok(());
        }
        // Eight rows at a time, in place: a group of x8 blocks takes exactly the bytes of the
        // eight rows it interleaves, so only those rows are copied aside (a few KiB, in L1)
        // instead of the whole matrix.
        let nb = h / crate::quant::QK;
        let group = x8_group_bytes(h);
        if group == 0 || !dst.len().is_multiple_of(group) {
            return Err(Error::Model(format!(
                "{key}: gate of {} B is not whole groups of {X8_ROWS} rows",
                dst.len()
            )));
        }
        REPACK_TMP.with(|t| -> Result<()> {
            let mut t = t.borrow_mut();
            for rows in dst.chunks_exact_mut(group) {
                t.clear();
                t.extend_from_slice(rows);
                let src: &[crate::quant::BlockQ4_0] = crate::quant::blocks::as_blocks(&t)
                    .ok_or_else(|| Error::Model(format!("{key}: gate is not Q4_0 blocks")))?;
                let out: &mut [BlockQ4_0x8] = bytemuck::try_cast_slice_mut(rows)
                    .map_err(|_| Error::Model(format!("{key}: gate slot not x8 blocks")))?;
                repack_q4_0x8(src, nb, out)?;
            }
            Ok(())
        })
    };
    let staged = planes.iter().any(Option::is_some).then(|| {
        // The down matrix is read aside whenever a layer has planes (the plan counts that
        // buffer): repacked into the slot for those layers, copied in as read for the others.
        let apply = move |key: ExpertKey, _: &SlotLayout, dst: &mut [u8], src: &[u8]| {
            if src.len() != dst.len() {
                return Err(Error::Model(format!(
                    "{key}: down matrix of {} B read aside for a slot range of {} B",
                    src.len(),
                    dst.len()
                )));
            }
            match planes.get(key.layer as usize).copied().flatten() {
                Some(kind) => {
                    // Written whole first, the destination's lines come into the cache without
                    // being read from memory; the repack's scattered 16-byte stores would read
                    // each one.
                    dst.fill(0);
                    sparse_down::repack(kind, h, f, src, dst)
                }
                None => {
                    dst.copy_from_slice(src);
                    Ok(())
                }
            }
        };
        StagedPart {
            part: Part::Down,
            apply: Arc::new(apply),
        }
    });
    SlotTransform {
        staged,
        in_place: any_x8.then(|| InPlacePart {
            part: Part::Gate,
            apply: Arc::new(in_place),
        }),
    }
}

impl Offload {
    /// Plans the budget and starts the prefetcher for a model whose experts are memory-mapped
    /// views of one file (never read through the map). The non-expert weights are copied out of
    /// the map (see the module docs).
    pub fn build(
        config: &ModelConfig,
        weights: &mut Weights,
        gguf: Option<&GgufFile>,
        mode: ComputeMode,
        opts: &OffloadOptions,
    ) -> Result<Offload> {
        let (layout, path) = expert_layout(config, weights, gguf)?;
        let file = ExpertFile::open(&path, opts.open_mode)?;
        let io_mode = file.mode().clone();
        let plan = plan_with_layout(config, weights, gguf, mode, opts, &io_mode, &layout)?;
        // Before anything is allocated: the cache's memory is faulted in when it is built, and
        // a plan the process cannot hold would be killed there (or thrash) instead of failing.
        plan.check_ceiling(memory_ceiling())?;
        let hot = match &opts.hot_experts {
            Some(p) => Some(HotSet::load(p)?),
            None => None,
        };
        let planes = planes_of(weights, mode);
        let gate_x8 = gates_x8_of(weights, mode);
        let transform =
            (planes.iter().any(Option::is_some) || gate_x8.iter().any(|&b| b)).then(|| {
                let e = &weights.layers[0].experts[0];
                repack_transform(planes.clone(), gate_x8.clone(), e.down.rows, e.down.cols)
            });
        take_resident(weights, &file, mode)?;
        let file = Arc::new(file);
        let cfg = PrefetchConfig {
            io: IoConfig {
                threads: opts.io_threads.max(1),
                storage: opts.storage,
            },
            cache: CacheConfig {
                capacity: Capacity::Slots(usize::try_from(plan.cache_slots).unwrap_or(usize::MAX)),
                scope: opts.scope,
                policy: opts.policy,
                hot,
            },
        };
        let prefetcher = Prefetcher::with_transform(file, layout, &cfg, transform)?;
        prefetcher.warm_hot_set()?;
        let hot = prefetcher.with_cache(|c| c.n_hot());
        Ok(Offload {
            prefetcher,
            plan,
            opts: opts.clone(),
            planes,
            gate_x8,
            io_mode,
            path,
            hot,
            shared: Mutex::new(Shared {
                guesses: vec![Vec::new(); config.n_layers],
                ..Shared::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prefetcher serving the experts.
    pub fn prefetcher(&self) -> &Prefetcher {
        &self.prefetcher
    }

    /// The memory plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The options the model was loaded with.
    pub fn options(&self) -> &OffloadOptions {
        &self.opts
    }

    /// How the expert file is read.
    pub fn io_mode(&self) -> &IoMode {
        &self.io_mode
    }

    /// The planes kind of layer `l`'s slots (fast mode), if repacked.
    pub fn planes(&self, l: usize) -> Option<PlaneKind> {
        self.planes.get(l).copied().flatten()
    }

    /// Whether layer `l`'s slots hold x8-packed gates (fast mode).
    pub fn gate_x8(&self, l: usize) -> bool {
        self.gate_x8.get(l).copied().unwrap_or(false)
    }

    /// Counters now.
    pub fn snapshot(&self) -> OffloadSnapshot {
        OffloadSnapshot {
            stats: self.prefetcher.stats(),
            spec: self.lock().spec,
        }
    }

    /// The slots the cache gives each layer (see [`crate::offload::ExpertCache::slot_shares`]):
    /// with the recorded trace, the capacity for Belady's bound.
    pub fn slot_shares(&self) -> SlotShares {
        self.prefetcher.with_cache(|c| c.slot_shares())
    }

    /// The demand accesses recorded so far (with [`OffloadOptions::record_trace`]), emptied.
    pub fn take_trace(&self) -> Vec<ExpertKey> {
        std::mem::take(&mut self.lock().trace)
    }

    /// Layer `l` chose `experts` (distinct): records the trace and scores the guess made for it.
    pub(crate) fn routed(&self, l: usize, experts: &[u32]) {
        let mut sh = self.lock();
        let sh = &mut *sh;
        if self.opts.record_trace {
            sh.trace
                .extend(experts.iter().map(|&e| ExpertKey::new(l as u32, e)));
        }
        if let Some(g) = sh.guesses.get_mut(l)
            && !g.is_empty()
        {
            sh.spec.chosen += experts.len() as u64;
            sh.spec.correct += experts.iter().filter(|e| g.contains(e)).count() as u64;
            g.clear();
        }
    }

    /// `experts` were guessed for layer `l`.
    pub(crate) fn guessed(&self, l: usize, experts: &[u32]) {
        let mut sh = self.lock();
        sh.spec.guessed += experts.len() as u64;
        if let Some(g) = sh.guesses.get_mut(l) {
            g.clear();
            g.extend_from_slice(experts);
        }
    }

    /// KV bytes the plan allows.
    pub(crate) fn kv_allowance(&self) -> u64 {
        self.plan.input.kv_bytes + self.plan.unused_bytes
    }
}

impl fmt::Display for Offload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.plan)?;
        write!(
            f,
            "expert store       {} read with {}; storage {}; {} I/O threads; cache {} {} ({} hot); prefetch {}, speculation {}",
            self.path.display(),
            self.io_mode,
            self.opts.storage,
            self.opts.io_threads.max(1),
            self.opts.policy,
            match self.opts.scope {
                CacheScope::Global => "global",
                CacheScope::PerLayer => "per-layer",
            },
            self.hot,
            if self.opts.prefetch { "on" } else { "off" },
            if self.opts.speculative {
                format!("{} layer(s) ahead", self.opts.lookahead.max(1))
            } else {
                "off".to_string()
            },
        )
    }
}

/// Bytes read per positioned read when loading the resident weights.
const LOAD_CHUNK: usize = 8 << 20;

/// Reads the non-expert matrices from the file into owned memory (tied embeddings stay shared)
/// with positioned reads (`O_DIRECT` where possible, so they do not pass through the page cache),
/// replacing their views of the memory map; then drops whatever the map or the page cache holds
/// of the file (the parsed header included).
///
/// In fast mode, Q4_0 matrices with rows in eights are kept only as their x8-packed copy (as
/// the in-memory model computes with), read in row-major and packed on the way; their views of
/// the map stay but are never read (embedding lookups read the packed copy).
///
/// After this the map is never touched again: a model file truncated or removed mid-run can
/// only fail the experts' positioned reads (a clear error), never fault the process (`SIGBUS`).
fn take_resident(weights: &mut Weights, file: &ExpertFile, mode: ComputeMode) -> Result<()> {
    let blob = weights.embed.data.location().0.clone();
    if blob.path().is_none() {
        return Ok(());
    }
    let mut staging = AlignedBuf::new(LOAD_CHUNK + 2 * ALIGN)?;
    let mut own = |m: &mut Matrix| -> Result<()> {
        let (b, start) = m.data.location();
        if b.path().is_none() {
            return Ok(());
        }
        let mut v = Vec::with_capacity(m.data.len());
        let end = (start + m.data.len()) as u64;
        let mut at = start as u64;
        while at < end {
            let len = (end - at).min(LOAD_CHUNK as u64);
            v.extend_from_slice(file.read(FileRange { offset: at, len }, &mut staging)?);
            at += len;
        }
        let packable = mode == ComputeMode::Fast
            && m.ty == crate::quant::GgmlType::Q4_0
            && m.rows.is_multiple_of(X8_ROWS);
        if packable {
            let mut owned = m.clone();
            owned.data = TensorBytes::owned(v);
            if owned.pack_x8()? {
                m.packed = owned.packed;
            } else {
                m.data = owned.data;
            }
        } else {
            m.data = TensorBytes::owned(v);
        }
        Ok(())
    };
    let tied = weights.lm_head_is_embedding();
    own(&mut weights.embed)?;
    if tied {
        weights.lm_head.data = weights.embed.data.clone();
        weights.lm_head.packed = weights.embed.packed.clone();
    } else {
        own(&mut weights.lm_head)?;
    }
    for l in &mut weights.layers {
        for m in [&mut l.wq, &mut l.wk, &mut l.wv, &mut l.wo, &mut l.router] {
            own(m)?;
        }
    }
    blob.release_pages(0, blob.len());
    file.drop_cached(FileRange {
        offset: 0,
        len: blob.len() as u64,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The down matrix the I/O thread read aside is repacked into its slot range for a layer
    /// with planes and copied in as read for one without; a length that does not match the
    /// range is an error.
    #[test]
    fn the_transform_fills_the_down_range_from_the_staged_copy() {
        let (h, f) = (64usize, 96usize);
        let bytes = h * (f / 32) * 18;
        let src: Vec<u8> = (0..bytes).map(|i| (i * 7 % 253) as u8).collect();
        let mut want = vec![0u8; bytes];
        sparse_down::repack(PlaneKind::Q4, h, f, &src, &mut want).unwrap();
        let range = |offset: u64| FileRange {
            offset,
            len: bytes as u64,
        };
        let layout = SlotLayout::new(&[range(100), range(100 + 5000), range(100 + 10_000)]);
        let t = repack_transform(vec![Some(PlaneKind::Q4), None], vec![false; 2], h, f);
        let staged = t.staged.as_ref().expect("down is staged");
        assert_eq!(staged.part, Part::Down);
        assert!(t.in_place.is_none(), "no layer has an x8 gate");

        let mut dst = vec![0xaau8; bytes];
        (staged.apply)(ExpertKey::new(0, 3), &layout, &mut dst, &src).unwrap();
        assert_eq!(dst, want);

        let mut dst = vec![0xaau8; bytes];
        (staged.apply)(ExpertKey::new(1, 3), &layout, &mut dst, &src).unwrap();
        assert_eq!(dst, src);

        let short = &src[..bytes - 1];
        let err = (staged.apply)(ExpertKey::new(1, 3), &layout, &mut dst, short).unwrap_err();
        assert!(err.to_string().contains("read aside"), "{err}");

        let none = repack_transform(vec![None, None], vec![false; 2], h, f);
        assert!(none.staged.is_none() && none.in_place.is_none());
    }

    /// The in-place function repacks the gate of a layer with an x8 gate into the layout
    /// `Matrix::pack_x8_into` gives and leaves other layers' gates as they are.
    #[test]
    fn the_transform_repacks_x8_gates_in_place() {
        let (h, f) = (64usize, 16usize);
        let gate_bytes = f * (h / 32) * 18;
        let gate: Vec<u8> = (0..gate_bytes)
            .map(|i| {
                if i % 18 == 1 {
                    0x3c
                } else {
                    (i * 13 % 251) as u8
                }
            })
            .collect();
        let m = crate::model::weights::Matrix::new(
            "gate",
            crate::quant::GgmlType::Q4_0,
            f,
            h,
            crate::model::weights::TensorBytes::owned(gate.clone()),
        )
        .unwrap();
        let mut want = vec![0u8; gate_bytes];
        m.pack_x8_into(&mut want).unwrap();
        let range = |offset: u64, len: usize| FileRange {
            offset,
            len: len as u64,
        };
        let layout = SlotLayout::new(&[
            range(100, gate_bytes),
            range(9000, gate_bytes),
            range(20_000, 64 * 18),
        ]);
        let t = repack_transform(vec![None, None], vec![true, false], h, 32);
        let p = t.in_place.as_ref().expect("layer 0 has an x8 gate");
        assert_eq!(p.part, Part::Gate);
        let mut g = gate.clone();
        (p.apply)(ExpertKey::new(0, 1), &layout, &mut g).unwrap();
        assert_eq!(g, want);
        let mut g = gate.clone();
        (p.apply)(ExpertKey::new(1, 1), &layout, &mut g).unwrap();
        assert_eq!(g, gate);
        let err = (p.apply)(ExpertKey::new(0, 1), &layout, &mut g[..gate_bytes - 18]).unwrap_err();
        assert!(err.to_string().contains("whole groups"), "{err}");
    }
}
