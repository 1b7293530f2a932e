//! The expert cache: a fixed slab of slots, each holding one expert's bytes, with a pluggable
//! eviction [`Policy`], pinning, and an optional pinned hot set.
//!
//! - **Slab**: all slots are allocated and faulted in when the cache is built
//!   (`slots × slot_bytes`); nothing is allocated per token, and no read waits on the kernel
//!   zeroing a fresh page. A slot is `Empty`, `Loading` (an I/O thread owns its buffer) or
//!   `Ready`. Only `Ready`, unpinned, non-hot slots can be evicted.
//! - **Pinning**: a slot in use (its bytes are being computed on) is pinned and cannot be
//!   evicted; pins nest.
//! - **Capacity**: in slots or bytes ([`Capacity`]), shared by all layers ([`CacheScope::Global`])
//!   or split evenly between layers ([`CacheScope::PerLayer`], each layer with its own policy).
//! - **Hot set**: the first slots are reserved for the [`HotSet`]'s experts; they are loaded
//!   like any miss but never evicted.
//! - **Stats**: demand accesses split into hits, prefetch hits, in-flight hits and misses;
//!   evictions; bytes read; prefetches evicted unused. A *hit* is an access to an expert that
//!   stayed resident since its previous demand access; an access served by a prefetch (the
//!   speculation or the hot-set warm-up) is a *prefetch hit*. So the hit rate is the one
//!   [`crate::offload::sim::belady`] bounds on the same demand trace and capacity
//!   ([`ExpertCache::slot_shares`]): no cache, with or without prefetching, can beat it.
//!
//! The cache is bookkeeping plus buffers: it does no I/O itself (see
//! [`crate::offload::prefetch::Prefetcher`]) and is used from one thread (the compute thread).
//! Each demand access emits the `tracing` event `cache` (target `engine::moe`, fields `layer`,
//! `expert`, `hit`).

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use super::ExpertKey;
use super::hotset::HotSet;
use super::io::SlotBuf;
use super::layout::ExpertLayout;
use super::policy::{Policy, PolicyKind, PolicyShape, SlotId};
use super::sim::SlotShares;
use super::sys::AlignedBuf;
use crate::error::{Error, Result};

/// How big the cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity {
    /// A number of slots.
    Slots(usize),
    /// A number of bytes (divided by the slot size, rounding down).
    Bytes(u64),
}

/// How capacity is shared between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheScope {
    /// One pool of slots and one policy for all layers.
    #[default]
    Global,
    /// Each layer gets an equal share of slots and its own policy.
    PerLayer,
}

impl std::str::FromStr for CacheScope {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "global" => Ok(CacheScope::Global),
            "per-layer" | "layer" => Ok(CacheScope::PerLayer),
            _ => Err(Error::InvalidInput(format!(
                "unknown cache scope '{s}'; valid: global, per-layer"
            ))),
        }
    }
}

/// Cache settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// Total size, hot set included.
    pub capacity: Capacity,
    /// Sharing between layers.
    pub scope: CacheScope,
    /// Eviction policy for the non-hot slots.
    pub policy: PolicyKind,
    /// Experts to pin (taken from the front while they fit in [`HOT_SHARE_MAX`] of the slots,
    /// leaving at least one evictable slot per partition).
    pub hot: Option<HotSet>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: Capacity::Slots(0),
            scope: CacheScope::Global,
            policy: PolicyKind::default(),
            hot: None,
        }
    }
}

/// What the cache holds for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not cached and not loading.
    Absent,
    /// A read into this slot is in progress.
    Loading(SlotId),
    /// The bytes are in this slot.
    Ready(SlotId),
}

/// Counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Demand accesses that found the expert ready, resident since its previous demand access.
    pub hits: u64,
    /// Demand accesses that found the expert ready thanks to a prefetch (inserted by one and not
    /// demanded since): no demand-only cache could have had it.
    pub prefetch_hits: u64,
    /// Demand accesses that found a read already in progress (usually a prefetch).
    pub inflight_hits: u64,
    /// Demand accesses that needed a new read.
    pub misses: u64,
    /// Slots emptied to make room.
    pub evictions: u64,
    /// Evicted slots that had been prefetched and never used.
    pub wasted_prefetches: u64,
    /// Slots filled by prefetch (not demand).
    pub prefetch_inserts: u64,
    /// Bytes read into slots.
    pub bytes_read: u64,
}

impl CacheStats {
    /// Demand accesses.
    pub fn accesses(&self) -> u64 {
        self.hits + self.prefetch_hits + self.inflight_hits + self.misses
    }

    /// Fraction of accesses that found the expert resident since its previous demand access:
    /// the cache's own merit, at most Belady's hit rate on the same trace and capacity.
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / self.accesses().max(1) as f64
    }

    /// Fraction of accesses that found the expert ready (cached or prefetched): the share the
    /// compute never waited for.
    pub fn ready_rate(&self) -> f64 {
        (self.hits + self.prefetch_hits) as f64 / self.accesses().max(1) as f64
    }

    /// Fraction of accesses that did not start a read (ready or already loading).
    pub fn hit_or_inflight_rate(&self) -> f64 {
        (self.hits + self.prefetch_hits + self.inflight_hits) as f64 / self.accesses().max(1) as f64
    }
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} accesses: {} hits ({:.1}%), {} prefetch hits, {} in flight, {} misses; {} evictions ({} unused prefetches); {:.1} MiB read",
            self.accesses(),
            self.hits,
            100.0 * self.hit_rate(),
            self.prefetch_hits,
            self.inflight_hits,
            self.misses,
            self.evictions,
            self.wasted_prefetches,
            self.bytes_read as f64 / (1u64 << 20) as f64
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Empty,
    Loading,
    Ready,
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Dense key index, when not empty.
    key: Option<usize>,
    state: State,
    pins: u32,
    /// Inserted by a prefetch and not used by demand since.
    prefetched_unused: bool,
    /// Partition index, or `None` for a hot slot.
    partition: Option<usize>,
}

struct Partition {
    slots: Range<SlotId>,
    free: Vec<SlotId>,
    policy: Box<dyn Policy>,
}

const NONE: u32 = u32::MAX;

/// The largest share of the slots a hot set may pin. A hot set learned from a whole
/// `routing.csv` lists nearly every expert; pinning them all would leave the cache one
/// evictable slot. Replaying the 4B model's routing, pinning the top quarter or half of the
/// slots changed LRFU's hit rate by under a point; pinning all but one slot (the earlier
/// behaviour) cut decode speed at 1 GiB by more than half.
pub const HOT_SHARE_MAX: f64 = 0.5;

/// The expert cache; see the module docs.
pub struct ExpertCache {
    n_layers: u32,
    n_experts: u32,
    slot_bytes: usize,
    scope: CacheScope,
    policy_kind: PolicyKind,
    bufs: Vec<SlotBuf>,
    meta: Vec<Meta>,
    /// Dense key → slot holding it (loading or ready), or `NONE`.
    index: Vec<u32>,
    /// Dense key → its reserved hot slot, or `NONE`.
    hot_slot: Vec<u32>,
    n_hot: usize,
    parts: Vec<Partition>,
    /// Layer of the last access or insert (`NONE` before any).
    last_layer: u32,
    /// Moves of the accesses between layers so far (the policies' visit clock).
    layer_changes: u64,
    stats: CacheStats,
}

impl fmt::Debug for ExpertCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpertCache")
            .field("slots", &self.bufs.len())
            .field("slot_bytes", &self.slot_bytes)
            .field("hot", &self.n_hot)
            .field("scope", &self.scope)
            .field("policy", &self.policy_kind)
            .field("stats", &self.stats)
            .finish()
    }
}

impl ExpertCache {
    /// Builds a cache for the experts of `layout`, allocating every slot now.
    ///
    /// Errors: fewer slots than the scope needs (one evictable slot, or one per layer for
    /// [`CacheScope::PerLayer`]), or the allocation fails.
    pub fn new(layout: &ExpertLayout, cfg: &CacheConfig) -> Result<ExpertCache> {
        let slot_bytes = layout.slot_bytes();
        let n_slots = match cfg.capacity {
            Capacity::Slots(n) => n,
            Capacity::Bytes(b) => {
                usize::try_from(b / slot_bytes.max(1) as u64).unwrap_or(usize::MAX)
            }
        };
        let n_keys = layout.n_keys();
        let n_slots = n_slots.min(n_keys);
        let n_parts = match cfg.scope {
            CacheScope::Global => 1,
            CacheScope::PerLayer => layout.n_layers() as usize,
        };
        if n_slots < n_parts.max(1) {
            return Err(Error::InvalidInput(format!(
                "expert cache of {n_slots} slots is too small: {:?} scope needs at least {} slot(s) of {slot_bytes} B",
                cfg.scope,
                n_parts.max(1)
            )));
        }
        // Hot keys, valid, at most `HOT_SHARE_MAX` of the slots and what leaves one evictable
        // slot per partition.
        let mut hot_slot = vec![NONE; n_keys];
        let mut hot_keys = Vec::new();
        let max_hot = ((n_slots as f64 * HOT_SHARE_MAX) as usize).min(n_slots - n_parts.max(1));
        if let Some(h) = &cfg.hot {
            for k in h.keys() {
                if hot_keys.len() >= max_hot {
                    break;
                }
                let i = layout.index(k)?;
                hot_slot[i] = hot_keys.len() as u32;
                hot_keys.push(i);
            }
        }
        let n_hot = hot_keys.len();
        let bufs: Vec<_> = AlignedBuf::slab(n_slots, slot_bytes)?
            .into_iter()
            .map(|b| Arc::new(RwLock::new(b)))
            .collect();
        let mut meta = vec![
            Meta {
                key: None,
                state: State::Empty,
                pins: 0,
                prefetched_unused: false,
                partition: None,
            };
            n_slots
        ];
        // Split the rest evenly; the first `rest % n_parts` partitions get one more.
        let rest = n_slots - n_hot;
        let mut parts = Vec::with_capacity(n_parts);
        let mut at = n_hot;
        for p in 0..n_parts {
            let n = rest / n_parts + usize::from(p < rest % n_parts);
            let slots = at..at + n;
            for m in &mut meta[slots.clone()] {
                m.partition = Some(p);
            }
            parts.push(Partition {
                free: slots.clone().rev().collect(),
                policy: cfg.policy.build(PolicyShape {
                    total_slots: n_slots,
                    n_slots: n,
                    n_layers: layout.n_layers() as usize,
                    n_experts: layout.n_experts() as usize,
                }),
                slots,
            });
            at += n;
        }
        Ok(ExpertCache {
            n_layers: layout.n_layers(),
            n_experts: layout.n_experts(),
            slot_bytes,
            scope: cfg.scope,
            policy_kind: cfg.policy,
            bufs,
            meta,
            index: vec![NONE; n_keys],
            hot_slot,
            n_hot,
            parts,
            last_layer: NONE,
            layer_changes: 0,
            stats: CacheStats::default(),
        })
    }

    fn idx(&self, key: ExpertKey) -> Result<usize> {
        if key.layer < self.n_layers && key.expert < self.n_experts {
            Ok(key.layer as usize * self.n_experts as usize + key.expert as usize)
        } else {
            Err(Error::InvalidInput(format!(
                "expert {key} out of range ({} layers x {} experts)",
                self.n_layers, self.n_experts
            )))
        }
    }

    fn key_at(&self, i: usize) -> ExpertKey {
        let e = self.n_experts as usize;
        ExpertKey::new((i / e) as u32, (i % e) as u32)
    }

    /// Total slots (hot included).
    pub fn n_slots(&self) -> usize {
        self.bufs.len()
    }

    /// Slots reserved for the hot set.
    pub fn n_hot(&self) -> usize {
        self.n_hot
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Bytes of the slab.
    pub fn capacity_bytes(&self) -> u64 {
        self.bufs.len() as u64 * self.slot_bytes as u64
    }

    /// The eviction policy.
    pub fn policy(&self) -> PolicyKind {
        self.policy_kind
    }

    /// The scope.
    pub fn scope(&self) -> CacheScope {
        self.scope
    }

    /// The slots each part of the key space can use, hot slots included: all of them for
    /// [`CacheScope::Global`]; per layer, its partition plus its hot experts' slots. Belady's
    /// optimum with these shares ([`crate::offload::sim::belady_shares_from`]) bounds the
    /// cache's hit count.
    pub fn slot_shares(&self) -> SlotShares {
        match self.scope {
            CacheScope::Global => SlotShares::Global(self.n_slots()),
            CacheScope::PerLayer => {
                let mut per_layer: Vec<usize> = self.parts.iter().map(|p| p.slots.len()).collect();
                for k in self.hot_keys() {
                    per_layer[k.layer as usize] += 1;
                }
                SlotShares::PerLayer(per_layer)
            }
        }
    }

    /// The hot experts (whether loaded yet or not).
    pub fn hot_keys(&self) -> impl Iterator<Item = ExpertKey> + '_ {
        self.hot_slot
            .iter()
            .enumerate()
            .filter(|(_, s)| **s != NONE)
            .map(|(i, _)| self.key_at(i))
    }

    /// Whether `key` is in the hot set.
    pub fn is_hot(&self, key: ExpertKey) -> bool {
        self.idx(key).is_ok_and(|i| self.hot_slot[i] != NONE)
    }

    /// What the cache holds for `key` (no statistics, no policy update).
    pub fn lookup(&self, key: ExpertKey) -> Result<Lookup> {
        let i = self.idx(key)?;
        let s = self.index[i];
        if s == NONE {
            return Ok(Lookup::Absent);
        }
        let s = s as usize;
        Ok(match self.meta[s].state {
            State::Loading => Lookup::Loading(s),
            State::Ready => Lookup::Ready(s),
            State::Empty => Lookup::Absent,
        })
    }

    /// A demand access to `key`: counts a hit, in-flight hit or miss, informs the policy if
    /// the key is resident, and emits the `cache` event. Returns the state found. On
    /// [`Lookup::Absent`] the caller reads the expert into [`ExpertCache::insert`]'s slot.
    pub fn access(&mut self, key: ExpertKey) -> Result<Lookup> {
        let l = self.lookup(key)?;
        self.note_layer(key.layer);
        match l {
            Lookup::Ready(s) if self.meta[s].prefetched_unused => self.stats.prefetch_hits += 1,
            Lookup::Ready(_) => self.stats.hits += 1,
            Lookup::Loading(_) => self.stats.inflight_hits += 1,
            Lookup::Absent => self.stats.misses += 1,
        }
        tracing::trace!(
            target: "engine::moe",
            layer = key.layer,
            expert = key.expert,
            hit = matches!(l, Lookup::Ready(_)),
            "cache"
        );
        if let Lookup::Ready(s) | Lookup::Loading(s) = l {
            self.touch(s);
        }
        Ok(l)
    }

    /// The router's scores for every expert of `layer` at the token just routed (higher: more
    /// likely chosen), passed to the layer's policy as a hint for the layer's next visit. Given
    /// after the visit's accesses.
    pub fn hint(&mut self, layer: u32, scores: &[f32]) {
        if layer >= self.n_layers || scores.len() != self.n_experts as usize {
            return;
        }
        let p = match self.scope {
            CacheScope::Global => 0,
            CacheScope::PerLayer => layer as usize,
        };
        if let Some(part) = self.parts.get_mut(p) {
            part.policy.on_hint(layer as usize, scores);
        }
    }

    /// Tells the policy of `layer`'s partition when a visit of the layer starts.
    fn note_layer(&mut self, layer: u32) {
        if layer == self.last_layer {
            return;
        }
        self.last_layer = layer;
        self.layer_changes += 1;
        let p = match self.scope {
            CacheScope::Global => 0,
            CacheScope::PerLayer => layer as usize,
        };
        if let Some(part) = self.parts.get_mut(p) {
            part.policy.on_visit(layer as usize, self.layer_changes);
        }
    }

    /// Records a demand use of the key in slot `s` with its partition's policy. The first use
    /// of a prefetched slot was already counted when it was inserted, if the policy counts
    /// prefetches as uses.
    fn touch(&mut self, s: SlotId) {
        let m = &mut self.meta[s];
        let prefetched = std::mem::take(&mut m.prefetched_unused);
        if let (Some(p), Some(k)) = (m.partition, m.key) {
            let pol = &mut self.parts[p].policy;
            if !prefetched || !pol.prefetch_counts_as_use() {
                pol.on_access(s, k);
            }
        }
    }

    /// Takes a slot for absent `key` and marks it loading; `demand` tells whether this is the
    /// miss of a demand access (else a prefetch). Evicts per policy if the key's partition is
    /// full. Returns `None` if every slot of the partition is pinned or loading. Hot keys get
    /// their reserved slot.
    pub fn insert(&mut self, key: ExpertKey, demand: bool) -> Result<Option<SlotId>> {
        let i = self.idx(key)?;
        self.note_layer(key.layer);
        if self.index[i] != NONE {
            return Err(Error::InvalidInput(format!("{key} is already cached")));
        }
        let s = if self.hot_slot[i] != NONE {
            self.hot_slot[i] as usize
        } else {
            let p = match self.scope {
                CacheScope::Global => 0,
                CacheScope::PerLayer => key.layer as usize,
            };
            match self.parts[p].free.pop() {
                Some(s) => s,
                None => {
                    let Some(v) = self.victim(p) else {
                        return Ok(None);
                    };
                    self.evict(v);
                    v
                }
            }
        };
        let m = &mut self.meta[s];
        m.key = Some(i);
        m.state = State::Loading;
        m.prefetched_unused = !demand;
        if !demand {
            self.stats.prefetch_inserts += 1;
        }
        self.index[i] = s as u32;
        if let Some(p) = self.meta[s].partition {
            let pol = &mut self.parts[p].policy;
            pol.on_insert(s, i);
            // A demand miss is its access; a prefetch predicts one (so that the speculation is
            // not the policy's first victim).
            if demand {
                pol.on_access(s, i);
            } else {
                pol.on_prefetch(s, i);
            }
        }
        Ok(Some(s))
    }

    fn victim(&mut self, p: usize) -> Option<SlotId> {
        let meta = &self.meta;
        let part = &mut self.parts[p];
        part.policy
            .victim(part.slots.clone(), &|s| meta[s].key, &|s| {
                meta[s].state == State::Ready && meta[s].pins == 0
            })
    }

    fn evict(&mut self, s: SlotId) {
        let m = self.meta[s];
        if let Some(k) = m.key {
            self.index[k] = NONE;
            if let Some(p) = m.partition {
                self.parts[p].policy.on_remove(s, k);
            }
        }
        self.stats.evictions += 1;
        if m.prefetched_unused {
            self.stats.wasted_prefetches += 1;
        }
        self.meta[s] = Meta {
            key: None,
            state: State::Empty,
            pins: 0,
            prefetched_unused: false,
            partition: m.partition,
        };
    }

    /// A loading slot's read finished with `bytes` read: the slot is ready.
    pub fn complete(&mut self, slot: SlotId, bytes: u64) {
        if let Some(m) = self.meta.get_mut(slot)
            && m.state == State::Loading
        {
            m.state = State::Ready;
            self.stats.bytes_read += bytes;
        }
    }

    /// A loading slot's read failed or was cancelled: the slot is empty again.
    pub fn abort(&mut self, slot: SlotId) {
        let Some(m) = self.meta.get(slot).copied() else {
            return;
        };
        if m.state != State::Loading {
            return;
        }
        if let Some(k) = m.key {
            self.index[k] = NONE;
            if let Some(p) = m.partition {
                self.parts[p].policy.on_remove(slot, k);
                self.parts[p].free.push(slot);
            }
        }
        self.meta[slot] = Meta {
            key: None,
            state: State::Empty,
            pins: 0,
            prefetched_unused: false,
            partition: m.partition,
        };
    }

    /// Pins a slot (it cannot be evicted until unpinned as many times).
    pub fn pin(&mut self, slot: SlotId) {
        if let Some(m) = self.meta.get_mut(slot) {
            m.pins += 1;
        }
    }

    /// Releases one pin.
    pub fn unpin(&mut self, slot: SlotId) {
        if let Some(m) = self.meta.get_mut(slot) {
            m.pins = m.pins.saturating_sub(1);
        }
    }

    /// Pins on a slot.
    pub fn pins(&self, slot: SlotId) -> u32 {
        self.meta.get(slot).map_or(0, |m| m.pins)
    }

    /// The key a slot holds (loading or ready).
    pub fn key_of(&self, slot: SlotId) -> Option<ExpertKey> {
        self.meta.get(slot)?.key.map(|i| self.key_at(i))
    }

    /// A slot's buffer.
    pub fn buf(&self, slot: SlotId) -> &SlotBuf {
        &self.bufs[slot]
    }

    /// Whether some slot of `key`'s partition could take a new expert now (free, or evictable).
    pub fn has_room_for(&self, key: ExpertKey) -> bool {
        let Ok(i) = self.idx(key) else { return false };
        if self.hot_slot[i] != NONE {
            return true;
        }
        let p = match self.scope {
            CacheScope::Global => 0,
            CacheScope::PerLayer => key.layer as usize,
        };
        let part = &self.parts[p];
        !part.free.is_empty()
            || part
                .slots
                .clone()
                .any(|s| self.meta[s].state == State::Ready && self.meta[s].pins == 0)
    }

    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// Zeroes the counters (e.g. after warm-up).
    pub fn reset_stats(&mut self) {
        self.stats = CacheStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::layout::FileRange;

    /// 2 layers × 4 experts of 3 × 4096 B.
    fn layout() -> ExpertLayout {
        ExpertLayout::from_stacked(2, 4, |l, p| {
            Ok(FileRange {
                offset: (u64::from(l) * 3 + p as u64) * 4 * 4096,
                len: 4 * 4096,
            })
        })
        .unwrap()
    }

    fn k(l: u32, e: u32) -> ExpertKey {
        ExpertKey::new(l, e)
    }

    fn cache(
        slots: usize,
        scope: CacheScope,
        policy: PolicyKind,
        hot: Option<HotSet>,
    ) -> ExpertCache {
        ExpertCache::new(
            &layout(),
            &CacheConfig {
                capacity: Capacity::Slots(slots),
                scope,
                policy,
                hot,
            },
        )
        .unwrap()
    }

    /// Demand access + load if absent; returns whether it was a hit.
    fn use_key(c: &mut ExpertCache, key: ExpertKey) -> bool {
        match c.access(key).unwrap() {
            Lookup::Ready(_) => true,
            Lookup::Loading(_) => panic!("nothing loads in these tests"),
            Lookup::Absent => {
                let s = c.insert(key, true).unwrap().expect("a slot");
                c.complete(s, 100);
                false
            }
        }
    }

    #[test]
    fn hits_misses_and_lru_eviction() {
        let mut c = cache(2, CacheScope::Global, PolicyKind::Lru, None);
        assert_eq!(c.slot_bytes(), 3 * 4096);
        assert!(!use_key(&mut c, k(0, 0)));
        assert!(!use_key(&mut c, k(0, 1)));
        assert!(use_key(&mut c, k(0, 0)));
        assert!(!use_key(&mut c, k(1, 2))); // evicts (0,1)
        assert_eq!(c.lookup(k(0, 1)).unwrap(), Lookup::Absent);
        assert!(use_key(&mut c, k(0, 0)));
        let s = c.stats();
        assert_eq!(
            (s.hits, s.misses, s.evictions, s.bytes_read),
            (2, 3, 1, 300)
        );
        assert!((s.hit_rate() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn pinned_and_loading_slots_are_never_evicted() {
        let mut c = cache(2, CacheScope::Global, PolicyKind::Lru, None);
        use_key(&mut c, k(0, 0));
        let Lookup::Ready(s0) = c.lookup(k(0, 0)).unwrap() else {
            panic!()
        };
        c.pin(s0);
        let s1 = c.insert(k(0, 1), true).unwrap().unwrap(); // loading
        assert_eq!(
            c.insert(k(0, 2), true).unwrap(),
            None,
            "all pinned or loading"
        );
        assert!(!c.has_room_for(k(0, 2)));
        c.complete(s1, 1);
        let v = c.insert(k(0, 2), true).unwrap().unwrap();
        assert_eq!(v, s1, "the unpinned one goes");
        c.unpin(s0);
        c.complete(v, 1);
        assert!(c.has_room_for(k(1, 3)));
    }

    #[test]
    fn aborted_loads_free_the_slot() {
        let mut c = cache(1, CacheScope::Global, PolicyKind::Lfu, None);
        let s = c.insert(k(0, 0), false).unwrap().unwrap();
        assert_eq!(c.lookup(k(0, 0)).unwrap(), Lookup::Loading(s));
        c.abort(s);
        assert_eq!(c.lookup(k(0, 0)).unwrap(), Lookup::Absent);
        assert_eq!(c.insert(k(0, 1), true).unwrap(), Some(s));
        assert!(c.insert(k(0, 1), true).is_err(), "double insert");
    }

    #[test]
    fn per_layer_scope_keeps_layers_apart() {
        let mut c = cache(4, CacheScope::PerLayer, PolicyKind::Lru, None);
        for e in 0..4 {
            use_key(&mut c, k(0, e));
        }
        use_key(&mut c, k(1, 0));
        use_key(&mut c, k(1, 1));
        // Layer 0 only ever had 2 slots; layer 1's experts are still there.
        assert!(use_key(&mut c, k(1, 0)) && use_key(&mut c, k(1, 1)));
        assert!(use_key(&mut c, k(0, 3)));
        assert!(!use_key(&mut c, k(0, 0)));
        assert!(
            ExpertCache::new(
                &layout(),
                &CacheConfig {
                    capacity: Capacity::Slots(1),
                    scope: CacheScope::PerLayer,
                    ..CacheConfig::default()
                }
            )
            .is_err()
        );
    }

    #[test]
    fn hot_experts_have_reserved_slots_and_survive_pressure() {
        let hot = HotSet::from_keys([k(1, 3), k(0, 2)]);
        let mut c = cache(4, CacheScope::Global, PolicyKind::Lrfu, Some(hot));
        assert_eq!(c.n_hot(), 2);
        assert!(c.is_hot(k(1, 3)) && !c.is_hot(k(0, 0)));
        assert!(!use_key(&mut c, k(1, 3)));
        for e in 0..4 {
            use_key(&mut c, k(0, e));
            use_key(&mut c, k(1, e % 3));
        }
        assert!(use_key(&mut c, k(1, 3)));
        assert!(use_key(&mut c, k(0, 2)));
        // The hot set takes at most half the slots, and leaves one evictable slot per
        // partition.
        let hot = HotSet::from_keys((0..8).map(|e| k(e / 4, e % 4)));
        let c = cache(5, CacheScope::Global, PolicyKind::Lru, Some(hot.clone()));
        assert_eq!(c.n_hot(), 2);
        let c = cache(3, CacheScope::PerLayer, PolicyKind::Lru, Some(hot));
        assert_eq!(c.n_hot(), 1);
    }

    #[test]
    fn capacity_in_bytes_rounds_down_to_slots() {
        let c = ExpertCache::new(
            &layout(),
            &CacheConfig {
                capacity: Capacity::Bytes(3 * 3 * 4096 + 100),
                ..CacheConfig::default()
            },
        )
        .unwrap();
        assert_eq!(c.n_slots(), 3);
        assert_eq!(c.capacity_bytes(), 9 * 4096);
        assert!(c.lookup(k(2, 0)).is_err());
        assert_eq!(
            "per-layer".parse::<CacheScope>().unwrap(),
            CacheScope::PerLayer
        );
    }

    #[test]
    fn unused_prefetches_are_counted_when_evicted() {
        let mut c = cache(1, CacheScope::Global, PolicyKind::Lru, None);
        let s = c.insert(k(0, 0), false).unwrap().unwrap();
        c.complete(s, 1);
        use_key(&mut c, k(0, 1));
        let st = c.stats();
        assert_eq!(
            (st.prefetch_inserts, st.wasted_prefetches, st.misses),
            (1, 1, 1)
        );
    }
}
