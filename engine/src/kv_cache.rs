//! The KV cache: keys (after RoPE where the layer uses it) and values per layer and kv head.
//!
//! Storage is paged: a page holds `PAGE` positions for every kv head, `[kv_head][slot][head_dim]`,
//! so one head's keys are contiguous within a page and attention walks a few long runs.
//! - Global layers allocate pages as the context grows (memory follows the context, up to
//!   `max_positions`).
//! - Sliding layers keep a ring of `window + max_batch - 1` slots (rounded up to whole pages):
//!   the last `window` positions plus the rest of the batch being processed, whatever the context
//!   length. Position `p` lives in ring slot `p % slots`; keys carry absolute RoPE, so overwriting
//!   a slot is safe.

use half::f16;

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;

/// Positions per page.
pub const PAGE: usize = 256;

/// Element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvType {
    /// f32 (the exact mode's default).
    F32,
    /// IEEE half (llama.cpp's default; half the memory).
    F16,
}

impl KvType {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }
}

/// Sizing of a [`KvCache`].
#[derive(Clone, Copy, Debug)]
pub struct KvCacheConfig {
    /// Largest number of positions a session may hold (global layers stop there).
    pub max_positions: usize,
    /// Largest number of tokens processed in one forward step.
    pub max_batch: usize,
    /// Element type.
    pub dtype: KvType,
}

enum Pages {
    F32(Vec<AnonPage<f32>>),
    F16(Vec<AnonPage<f16>>),
}

/// A zeroed page of `T`s in an anonymous mapping of its own, returned to the system when
/// dropped. With `Vec` pages, a session's pages came from the malloc arena of whichever compute
/// thread ran the step that grew the cache, and freed pages stayed in that arena: sessions whose
/// steps ran on different threads left one arena each holding a whole KV cache (a 21B
/// `thinker bench` under a budget sometimes peaked 50 MiB, one KV cache, higher).
struct AnonPage<T> {
    map: memmap2::MmapMut,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> AnonPage<T> {
    fn new(len: usize) -> Result<Self> {
        let bytes = len * std::mem::size_of::<T>();
        let map = memmap2::MmapMut::map_anon(bytes.max(1)).map_err(|_| Error::OutOfMemory {
            bytes: bytes as u64,
            what: "KV cache page",
        })?;
        Ok(AnonPage {
            map,
            len,
            _t: std::marker::PhantomData,
        })
    }

    fn as_slice(&self) -> &[T] {
        // A mapping starts on a page boundary, aligned for any `T` here.
        &bytemuck::cast_slice(&self.map[..])[..self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [T] {
        &mut bytemuck::cast_slice_mut(&mut self.map[..])[..self.len]
    }
}

struct LayerKv {
    /// Ring slots for sliding layers; `None` for global layers.
    ring_slots: Option<usize>,
    /// Window of a sliding layer.
    window: usize,
    k: Pages,
    v: Pages,
}

/// A contiguous run of cached positions for one kv head.
#[derive(Clone, Copy, Debug)]
pub enum Run<'a> {
    /// f32 keys and values, `n · head_dim` each.
    F32(&'a [f32], &'a [f32]),
    /// f16 keys and values.
    F16(&'a [f16], &'a [f16]),
}

/// The cache for all layers of one session.
pub struct KvCache {
    layers: Vec<LayerKv>,
    n_kv_heads: usize,
    head_dim: usize,
    cfg: KvCacheConfig,
    /// Positions written so far (the next position to write).
    n_positions: usize,
}

impl KvCache {
    /// An empty cache for `model`.
    pub fn new(model: &ModelConfig, cfg: KvCacheConfig) -> Result<KvCache> {
        if cfg.max_batch == 0 || cfg.max_positions == 0 {
            return Err(Error::InvalidInput(
                "KV cache needs max_batch and max_positions > 0".into(),
            ));
        }
        let layers = model
            .layers
            .iter()
            .map(|kind| {
                let ring_slots = kind.sliding.then(|| {
                    let slots = model.sliding_window + cfg.max_batch - 1;
                    slots.div_ceil(PAGE) * PAGE
                });
                let empty = || match cfg.dtype {
                    KvType::F32 => Pages::F32(Vec::new()),
                    KvType::F16 => Pages::F16(Vec::new()),
                };
                LayerKv {
                    ring_slots,
                    window: model.sliding_window,
                    k: empty(),
                    v: empty(),
                }
            })
            .collect();
        Ok(KvCache {
            layers,
            n_kv_heads: model.n_kv_heads,
            head_dim: model.head_dim,
            cfg,
            n_positions: 0,
        })
    }

    /// Number of positions written.
    pub fn len(&self) -> usize {
        self.n_positions
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.n_positions == 0
    }

    /// The sizing this cache was built with.
    pub fn config(&self) -> KvCacheConfig {
        self.cfg
    }

    /// Forgets every position (keeps allocations for reuse).
    pub fn clear(&mut self) {
        self.n_positions = 0;
    }

    /// Checks that `n` more positions fit, before any work is done for them.
    pub fn check_room(&self, n: usize) -> Result<()> {
        if n > self.cfg.max_batch {
            return Err(Error::InvalidInput(format!(
                "batch of {n} tokens exceeds the session's max batch {}",
                self.cfg.max_batch
            )));
        }
        if self.n_positions + n > self.cfg.max_positions {
            return Err(Error::InvalidInput(format!(
                "context full: {} + {n} positions exceed the limit of {}",
                self.n_positions, self.cfg.max_positions
            )));
        }
        Ok(())
    }

    /// Marks `n` positions as written (after every layer has stored them).
    pub fn advance(&mut self, n: usize) {
        self.n_positions += n;
    }

    fn page_elems(&self) -> usize {
        self.n_kv_heads * PAGE * self.head_dim
    }

    /// Stores position `pos`'s keys and values (`n_kv_heads · head_dim` each) for `layer`.
    ///
    /// # Errors
    /// [`Error::OutOfMemory`] when a new page cannot be mapped.
    pub fn store(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let (hd, nkv) = (self.head_dim, self.n_kv_heads);
        debug_assert_eq!(k.len(), nkv * hd);
        let page_elems = self.page_elems();
        let l = &mut self.layers[layer];
        let slot = match l.ring_slots {
            Some(s) => pos % s,
            None => pos,
        };
        let (page, off) = (slot / PAGE, slot % PAGE);
        let before = l.k.len();
        l.k.ensure(page + 1, page_elems)?;
        l.v.ensure(page + 1, page_elems)?;
        if l.k.len() != before {
            tracing::trace!(
                target: "engine::kv",
                layer,
                bytes = (l.k.len() * page_elems * 2 * self.cfg.dtype.bytes()) as u64,
                "kv.grow"
            );
        }
        for g in 0..nkv {
            let at = (g * PAGE + off) * hd;
            l.k.write(page, at, &k[g * hd..(g + 1) * hd]);
            l.v.write(page, at, &v[g * hd..(g + 1) * hd]);
        }
        Ok(())
    }

    /// The positions a query at `pos` may attend to in `layer`: `lo..=pos`.
    pub fn visible_range(&self, layer: usize, pos: usize) -> (usize, usize) {
        let l = &self.layers[layer];
        match l.ring_slots {
            Some(_) => ((pos + 1).saturating_sub(l.window), pos),
            None => (0, pos),
        }
    }

    /// Calls `f` for each contiguous run of positions `lo..=hi` of kv head `g` in `layer`, in
    /// position order, with the run's first position and length.
    pub fn for_each_run(
        &self,
        layer: usize,
        g: usize,
        lo: usize,
        hi: usize,
        mut f: impl FnMut(usize, usize, Run<'_>),
    ) {
        let hd = self.head_dim;
        let l = &self.layers[layer];
        let mut p = lo;
        while p <= hi {
            let slot = match l.ring_slots {
                Some(s) => p % s,
                None => p,
            };
            let (page, off) = (slot / PAGE, slot % PAGE);
            let mut n = (PAGE - off).min(hi - p + 1);
            if let Some(s) = l.ring_slots {
                n = n.min(s - slot);
            }
            let a = (g * PAGE + off) * hd;
            let b = a + n * hd;
            let run = match (&l.k, &l.v) {
                (Pages::F32(k), Pages::F32(v)) => {
                    Run::F32(&k[page].as_slice()[a..b], &v[page].as_slice()[a..b])
                }
                (Pages::F16(k), Pages::F16(v)) => {
                    Run::F16(&k[page].as_slice()[a..b], &v[page].as_slice()[a..b])
                }
                _ => unreachable!("k and v pages share a type"),
            };
            f(p, n, run);
            p += n;
        }
    }

    /// Bytes allocated for `layer` (keys and values).
    pub fn layer_bytes(&self, layer: usize) -> usize {
        let l = &self.layers[layer];
        (l.k.len() + l.v.len()) * self.page_elems() * self.cfg.dtype.bytes()
    }

    /// Bytes allocated in total.
    pub fn total_bytes(&self) -> usize {
        (0..self.layers.len()).map(|l| self.layer_bytes(l)).sum()
    }

    /// Whether `layer` is a sliding (ring) layer.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.layers[layer].ring_slots.is_some()
    }

    /// Bytes `layer` will hold at `n_positions` positions, by the same rule `store` allocates
    /// with (whole pages; rings capped).
    pub fn predicted_layer_bytes(&self, layer: usize, n_positions: usize) -> usize {
        let pages = match self.layers[layer].ring_slots {
            Some(s) => n_positions.min(s).div_ceil(PAGE),
            None => n_positions.div_ceil(PAGE),
        };
        2 * pages * self.page_elems() * self.cfg.dtype.bytes()
    }
}

impl Pages {
    fn len(&self) -> usize {
        match self {
            Pages::F32(p) => p.len(),
            Pages::F16(p) => p.len(),
        }
    }

    fn ensure(&mut self, n: usize, elems: usize) -> Result<()> {
        fn grow<T: bytemuck::Pod>(p: &mut Vec<AnonPage<T>>, n: usize, elems: usize) -> Result<()> {
            while p.len() < n {
                p.push(AnonPage::new(elems)?);
            }
            Ok(())
        }
        match self {
            Pages::F32(p) => grow(p, n, elems),
            Pages::F16(p) => grow(p, n, elems),
        }
    }

    fn write(&mut self, page: usize, at: usize, src: &[f32]) {
        match self {
            Pages::F32(p) => p[page].as_mut_slice()[at..at + src.len()].copy_from_slice(src),
            Pages::F16(p) => {
                for (d, &s) in p[page].as_mut_slice()[at..at + src.len()]
                    .iter_mut()
                    .zip(src)
                {
                    *d = f16::from_f32(s);
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::config::{Gating, LayerKind, LayoutSource};

    /// Two layers (global, then sliding with `window`), 2 query heads on 1 kv head of 4.
    pub(crate) fn cfg(window: usize) -> ModelConfig {
        ModelConfig {
            n_layers: 2,
            hidden: 8,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            vocab_size: 10,
            n_experts: 2,
            n_experts_used: 1,
            expert_ffn: 4,
            rope_theta: 1e4,
            rms_eps: 1e-6,
            context_length: 100_000,
            sliding_window: window,
            layers: vec![
                LayerKind {
                    rope: false,
                    sliding: false,
                },
                LayerKind {
                    rope: true,
                    sliding: true,
                },
            ],
            layout_source: LayoutSource::Explicit,
            gating: Gating::Sigmoid,
            tied_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    fn collect(c: &KvCache, layer: usize, lo: usize, hi: usize) -> Vec<f32> {
        let mut keys = Vec::new();
        c.for_each_run(layer, 0, lo, hi, |_, _, run| match run {
            Run::F32(k, _) => keys.extend(k.iter().step_by(4)),
            Run::F16(k, _) => keys.extend(k.iter().step_by(4).map(|x| x.to_f32())),
        });
        keys
    }

    #[test]
    fn sliding_layer_memory_stays_bounded_while_global_grows() {
        let m = cfg(300);
        let kc = KvCacheConfig {
            max_positions: 5000,
            max_batch: 8,
            dtype: KvType::F32,
        };
        let mut c = KvCache::new(&m, kc).unwrap();
        for p in 0..3000 {
            let k = [p as f32; 4];
            c.store(0, p, &k, &k).unwrap();
            c.store(1, p, &k, &k).unwrap();
            c.advance(1);
            assert_eq!(c.layer_bytes(1), c.predicted_layer_bytes(1, p + 1));
            assert_eq!(c.layer_bytes(0), c.predicted_layer_bytes(0, p + 1));
        }
        // Ring: 300 + 8 - 1 slots rounded to 2 pages.
        assert_eq!(c.layer_bytes(1), 2 * 2 * PAGE * 4 * 4);
        assert_eq!(
            c.layer_bytes(0),
            2 * 3000usize.div_ceil(PAGE) * PAGE * 4 * 4
        );
        // The window of the last query holds exactly the last 300 positions, in order.
        let (lo, hi) = c.visible_range(1, 2999);
        assert_eq!((lo, hi), (2700, 2999));
        let keys = collect(&c, 1, lo, hi);
        assert_eq!(keys, (2700..3000).map(|p| p as f32).collect::<Vec<_>>());
        let all = collect(&c, 0, 0, 2999);
        assert_eq!(all.len(), 3000);
        assert_eq!(all[1234], 1234.0);
    }

    #[test]
    fn context_limit_and_batch_limit_are_errors() {
        let m = cfg(4);
        let kc = KvCacheConfig {
            max_positions: 10,
            max_batch: 4,
            dtype: KvType::F16,
        };
        let mut c = KvCache::new(&m, kc).unwrap();
        assert!(
            c.check_room(5)
                .unwrap_err()
                .to_string()
                .contains("max batch")
        );
        c.advance(8);
        assert!(
            c.check_room(3)
                .unwrap_err()
                .to_string()
                .contains("context full")
        );
        c.check_room(2).unwrap();
    }
}
