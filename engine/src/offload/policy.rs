//! Eviction policies of the expert cache: LRU, LFU with aging, LRFU, and the `learned` policy
//! ([`super::learned`]).
//!
//! A policy sees the cache's slots (by index) and the keys in them (by dense key index,
//! `layer · n_experts + expert`), and picks a victim among the evictable slots of its
//! partition (the whole cache, or one layer's share). Because the key space is small and dense
//! (1,024 experts for the 4B model, 3,328 for the 21B), LFU and LRFU keep their statistics for
//! *every* key, resident or not: no sketches or ghost lists are needed, and an expert that
//! returns after an eviction keeps its history.
//!
//! # Which recency + frequency policy, and why LRFU
//! Routing has two signals: a skewed, stable popularity per layer (frequency) and short-range
//! reuse between consecutive tokens (recency). LRFU (Lee et al., "LRFU: a spectrum of policies
//! that subsumes the LRU and LFU policies", IEEE Trans. Computers 2001) scores each key by its
//! combined recency and frequency, `CRF(t) = Σ_i 2^(−λ·(t − t_i))` over past accesses `t_i`,
//! and evicts the smallest. `λ → 0` is LFU, `λ = 1` is LRU; one parameter, the half-life
//! `1/λ`, moves between them. With full per-key history it needs `O(keys)` memory and one score
//! update per access; the victim scan is `O(slots)`, microseconds per miss against a read of
//! hundreds of microseconds. W-TinyLFU's sketch and admission window, or ARC's ghost lists,
//! approximate exactly this history when the key space is too large to keep, which is not the
//! case here.
//!
//! Our LRFU counts time **per layer** (see [`Lrfu`]): the forward pass visits layers in a
//! cycle, so with one global clock the experts of the layers about to run always look oldest,
//! and a global LRU evicts precisely what is needed next. On a synthetic SmallThinker-4B trace
//! (32 × 32 experts, top-4, Zipf 0.8 popularity, 45% reuse of the previous token's experts;
//! `examples/cache_sim.rs`), global-capacity hit rates were, for 128 / 307 / 512 slots: LRU
//! 40.3 / 66.0 / 79.0%, LFU 35.2 / 59.9 / 76.3%, LRFU with a global clock 30.9 / 66.5 / 79.5%,
//! LRFU with per-layer clocks 46.0 / 67.6 / 80.0%, per-layer LRFU plus a hot set of half the
//! slots 43.2 / 71.5 / 82.2%, against Belady's 66.4 / 83.1 / 91.5%. Half-lives from 0.01× to
//! 8× the default (the slots per layer) were tried; the default was best or within 1 point.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use super::learned::Learned;
use crate::error::{Error, Result};

/// Index of a cache slot.
pub type SlotId = usize;

/// An eviction policy over one partition of the cache.
pub trait Policy: Send + fmt::Debug {
    /// Short name (`lru`, `lfu`, `lrfu`, `learned`).
    fn name(&self) -> &'static str;
    /// `key` (dense index) was placed in `slot`.
    fn on_insert(&mut self, slot: SlotId, key: usize);
    /// `key`, in `slot`, was used (a demand access, hit or just-inserted miss).
    fn on_access(&mut self, slot: SlotId, key: usize);
    /// `slot` (holding `key`) was emptied.
    fn on_remove(&mut self, slot: SlotId, key: usize);
    /// `key`, in `slot`, was prefetched (a predicted use). By default counted as a use.
    fn on_prefetch(&mut self, slot: SlotId, key: usize) {
        self.on_access(slot, key);
    }
    /// Whether [`Policy::on_prefetch`] counted the use, so the first demand access of a
    /// prefetched key is not reported again.
    fn prefetch_counts_as_use(&self) -> bool {
        true
    }
    /// A visit of `layer` starts: the cache's accesses (demand or prefetch) moved to this
    /// layer from another. Called before the visit's first `on_insert`/`on_access`. `clock`
    /// counts the whole cache's moves between layers, so the policy of a per-layer partition,
    /// which sees only its own layer's visits, can still tell how long ago its layer ran.
    fn on_visit(&mut self, _layer: usize, _clock: u64) {}
    /// The router's scores for every expert of `layer` at the token just routed (higher: more
    /// likely chosen), after the visit's accesses: a hint for the layer's next visit.
    fn on_hint(&mut self, _layer: usize, _scores: &[f32]) {}
    /// The slot to evict among `slots` for which `evictable` holds; `key_of` gives a slot's key.
    fn victim(
        &mut self,
        slots: Range<SlotId>,
        key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId>;
}

/// The policies, as chosen on the command line (`--cache-policy lru|lfu|lrfu|learned`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// Least frequently used, counts halved periodically (aging).
    Lfu,
    /// Least recently/frequently used (combined score), see the module docs.
    Lrfu,
    /// Reuse probability learned online per (recency, frequency) class, see [`Learned`].
    #[default]
    Learned,
}

impl PolicyKind {
    /// Every policy.
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::Lru,
        PolicyKind::Lfu,
        PolicyKind::Lrfu,
        PolicyKind::Learned,
    ];

    /// Name as parsed.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Lrfu => "lrfu",
            PolicyKind::Learned => "learned",
        }
    }

    /// A policy for one partition of the cache, with default parameters.
    pub fn build(self, shape: PolicyShape) -> Box<dyn Policy> {
        match self {
            PolicyKind::Lru => Box::new(Lru::new(shape.total_slots)),
            PolicyKind::Lfu => Box::new(Lfu::new(
                shape.total_slots,
                shape.n_keys(),
                Lfu::default_period(shape.n_slots),
            )),
            PolicyKind::Lrfu => Box::new(Lrfu::new(shape, Lrfu::default_half_life(shape))),
            PolicyKind::Learned => Box::new(Learned::new(shape)),
        }
    }
}

/// The dimensions a policy is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyShape {
    /// Slot ids are below this (the whole cache).
    pub total_slots: usize,
    /// Slots of this policy's partition.
    pub n_slots: usize,
    /// Layers of the model.
    pub n_layers: usize,
    /// Experts per layer (dense key = layer · n_experts + expert).
    pub n_experts: usize,
}

impl PolicyShape {
    /// Number of keys.
    pub fn n_keys(&self) -> usize {
        self.n_layers * self.n_experts
    }
}

impl FromStr for PolicyKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        PolicyKind::ALL
            .into_iter()
            .find(|p| p.name() == t)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown cache policy '{s}'; valid: lru, lfu, lrfu, learned"
                ))
            })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const NIL: usize = usize::MAX;

/// Least recently used: an intrusive doubly linked list over slots, most recent at the head.
#[derive(Debug)]
pub struct Lru {
    prev: Vec<usize>,
    next: Vec<usize>,
    head: usize,
    tail: usize,
}

impl Lru {
    /// For slot ids below `total_slots`.
    pub fn new(total_slots: usize) -> Lru {
        Lru {
            prev: vec![NIL; total_slots],
            next: vec![NIL; total_slots],
            head: NIL,
            tail: NIL,
        }
    }

    fn linked(&self, s: usize) -> bool {
        self.head == s || self.prev[s] != NIL
    }

    fn unlink(&mut self, s: usize) {
        if !self.linked(s) {
            return;
        }
        let (p, n) = (self.prev[s], self.next[s]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n] = p;
        }
        self.prev[s] = NIL;
        self.next[s] = NIL;
    }

    fn push_front(&mut self, s: usize) {
        self.unlink(s);
        self.next[s] = self.head;
        if self.head != NIL {
            self.prev[self.head] = s;
        }
        self.head = s;
        if self.tail == NIL {
            self.tail = s;
        }
    }
}

impl Policy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    fn on_insert(&mut self, slot: SlotId, _key: usize) {
        self.push_front(slot);
    }
    fn on_access(&mut self, slot: SlotId, _key: usize) {
        self.push_front(slot);
    }
    fn on_remove(&mut self, slot: SlotId, _key: usize) {
        self.unlink(slot);
    }
    fn victim(
        &mut self,
        _slots: Range<SlotId>,
        _key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId> {
        let mut s = self.tail;
        while s != NIL {
            if evictable(s) {
                return Some(s);
            }
            s = self.prev[s];
        }
        None
    }
}

/// Least frequently used with aging: per-key access counts, all halved every `period`
/// accesses (the reset of TinyLFU, Einziger et al. 2017, whose sample is 10× the cache size),
/// ties broken by least recent access.
#[derive(Debug)]
pub struct Lfu {
    freq: Vec<u32>,
    last: Vec<u64>,
    tick: u64,
    accesses: u64,
    period: u64,
}

impl Lfu {
    /// Default aging period for a partition of `n_slots`: 10 × its size.
    pub fn default_period(n_slots: usize) -> u64 {
        10 * n_slots.max(1) as u64
    }

    /// For slot ids below `total_slots` and `n_keys` keys, halving counts every `period`
    /// accesses.
    pub fn new(total_slots: usize, n_keys: usize, period: u64) -> Lfu {
        Lfu {
            freq: vec![0; n_keys],
            last: vec![0; total_slots],
            tick: 0,
            accesses: 0,
            period: period.max(1),
        }
    }
}

impl Policy for Lfu {
    fn name(&self) -> &'static str {
        "lfu"
    }
    fn on_insert(&mut self, slot: SlotId, _key: usize) {
        self.tick += 1;
        self.last[slot] = self.tick;
    }
    fn on_access(&mut self, slot: SlotId, key: usize) {
        self.tick += 1;
        self.last[slot] = self.tick;
        self.freq[key] = self.freq[key].saturating_add(1);
        self.accesses += 1;
        if self.accesses.is_multiple_of(self.period) {
            for f in &mut self.freq {
                *f /= 2;
            }
        }
    }
    fn on_remove(&mut self, _slot: SlotId, _key: usize) {}
    fn victim(
        &mut self,
        slots: Range<SlotId>,
        key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId> {
        slots
            .filter(|&s| evictable(s))
            .filter_map(|s| key_of(s).map(|k| (self.freq[k], self.last[s], s)))
            .min()
            .map(|(_, _, s)| s)
    }
}

/// LRFU (see the module docs) with per-layer clocks.
///
/// Time is counted per layer (accesses to that layer), not globally: the forward pass visits
/// the layers in a cycle, so a global clock would make the experts of the layers about to run
/// look oldest and evict exactly them. With per-layer clocks a key's score is its combined
/// recency/frequency in its own layer's terms, comparable across layers because every layer is
/// visited equally often. Ties go against the layer visited most recently (its next visit is
/// furthest away), then against the older key.
#[derive(Debug)]
pub struct Lrfu {
    n_experts: usize,
    /// log2 of the CRF at the key's last access (−∞: never accessed).
    log_crf: Vec<f64>,
    /// The key's layer clock at its last access.
    last: Vec<u64>,
    /// Per layer: accesses so far.
    layer_tick: Vec<u64>,
    /// Per layer: global access count at its last access.
    layer_seen: Vec<u64>,
    global: u64,
    lambda: f64,
}

impl Lrfu {
    /// Default half-life, in accesses of a layer: the partition's slots per layer (a key loses
    /// half its weight after its layer has seen as many accesses as the layer has slots).
    pub fn default_half_life(shape: PolicyShape) -> f64 {
        let per_layer = shape.n_slots as f64 / shape.n_layers.max(1) as f64;
        per_layer.max(1.0)
    }

    /// With a half-life of `half_life` accesses of a key's layer (λ = 1 / half-life).
    pub fn new(shape: PolicyShape, half_life: f64) -> Lrfu {
        Lrfu {
            n_experts: shape.n_experts.max(1),
            log_crf: vec![f64::NEG_INFINITY; shape.n_keys()],
            last: vec![0; shape.n_keys()],
            layer_tick: vec![0; shape.n_layers.max(1)],
            layer_seen: vec![0; shape.n_layers.max(1)],
            global: 0,
            lambda: 1.0 / half_life.max(1e-9),
        }
    }

    /// log2 of the key's current CRF value.
    pub fn log_crf_now(&self, key: usize) -> f64 {
        let l = key / self.n_experts;
        let age = (self.layer_tick[l] - self.last[key]) as f64;
        self.log_crf[key] - self.lambda * age
    }
}

impl Policy for Lrfu {
    fn name(&self) -> &'static str {
        "lrfu"
    }
    fn on_insert(&mut self, _slot: SlotId, _key: usize) {}
    fn on_access(&mut self, _slot: SlotId, key: usize) {
        let l = key / self.n_experts;
        self.layer_tick[l] += 1;
        // CRF(t) = 1 + CRF(t_last) · 2^(−λ·(t − t_last)), in log2.
        let c = 1.0 + self.log_crf_now(key).exp2();
        self.global += 1;
        self.layer_seen[l] = self.global;
        self.log_crf[key] = c.log2();
        self.last[key] = self.layer_tick[l];
    }
    fn on_remove(&mut self, _slot: SlotId, _key: usize) {}
    fn victim(
        &mut self,
        slots: Range<SlotId>,
        key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId> {
        // Minimise (score, −layer_seen, −age).
        let mut best: Option<(f64, u64, u64, SlotId)> = None;
        for s in slots.filter(|&s| evictable(s)) {
            let Some(k) = key_of(s) else { continue };
            let l = k / self.n_experts;
            let score = self.log_crf_now(k);
            let seen = self.layer_seen[l];
            let age = self.layer_tick[l] - self.last[k];
            let better = match best {
                None => true,
                Some((bs, bseen, bage, _)) => {
                    score < bs || (score == bs && (seen > bseen || (seen == bseen && age > bage)))
                }
            };
            if better {
                best = Some((score, seen, age, s));
            }
        }
        best.map(|b| b.3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs accesses through a policy over `n` slots (keys = slot contents) and returns the
    /// victim after the sequence.
    fn victim_after(p: &mut dyn Policy, n: usize, accesses: &[usize]) -> usize {
        // Key k lives in slot k.
        for k in 0..n {
            p.on_insert(k, k);
        }
        for &k in accesses {
            p.on_access(k, k);
        }
        p.victim(0..n, &|s| Some(s), &|_| true).unwrap()
    }

    #[test]
    fn lru_evicts_the_least_recent_and_skips_unevictable() {
        let mut p = Lru::new(4);
        assert_eq!(victim_after(&mut p, 4, &[0, 1, 2, 3, 0, 1]), 2);
        assert_eq!(p.victim(0..4, &|s| Some(s), &|s| s != 2), Some(3));
        p.on_remove(3, 3);
        assert_eq!(p.victim(0..4, &|s| Some(s), &|s| s != 2), Some(0));
        assert_eq!(p.victim(0..4, &|s| Some(s), &|_| false), None);
    }

    #[test]
    fn lfu_evicts_the_least_frequent_and_ages_counts() {
        let mut p = Lfu::new(3, 3, 1000);
        assert_eq!(victim_after(&mut p, 3, &[0, 0, 0, 1, 1, 2, 2, 2]), 1);
        // Aging: with a short period old counts fade.
        let mut p = Lfu::new(3, 3, 4);
        victim_after(&mut p, 3, &[0, 0, 0, 0]);
        assert_eq!(p.freq[0], 2, "halved at the 4th access");
    }

    #[test]
    fn lrfu_spans_lru_and_lfu() {
        let one_layer = PolicyShape {
            total_slots: 3,
            n_slots: 3,
            n_layers: 1,
            n_experts: 3,
        };
        let seq = [0, 0, 0, 0, 1, 2, 1, 2];
        // Long half-life: frequency dominates, key 1 or 2 (2 accesses) goes, not 0 (4).
        let mut p = Lrfu::new(one_layer, 1e6);
        assert_ne!(victim_after(&mut p, 3, &seq), 0);
        // Half-life of one access: recency dominates, key 0 (oldest) goes.
        let mut p = Lrfu::new(one_layer, 1.0);
        assert_eq!(victim_after(&mut p, 3, &seq), 0);
        // Never-accessed keys go first.
        let mut p = Lrfu::new(one_layer, 10.0);
        assert_eq!(victim_after(&mut p, 3, &[0, 2]), 1);
    }

    #[test]
    fn lrfu_clocks_are_per_layer_and_ties_spare_the_layers_about_to_run() {
        // 3 layers x 2 experts, one slot per key; keys 2l and 2l+1 are layer l's.
        let shape = PolicyShape {
            total_slots: 6,
            n_slots: 6,
            n_layers: 3,
            n_experts: 2,
        };
        let mut p = Lrfu::new(shape, 1.0);
        for k in 0..6 {
            p.on_insert(k, k);
        }
        // Token 1 uses expert 0 of every layer, token 2 uses expert 0 of layers 0 and 1 only.
        for k in [0, 2, 4, 0, 2] {
            p.on_access(k, k);
        }
        // Layer 2's expert 0 was used one layer-visit ago, like layer 0's and 1's last visit:
        // with a global clock it would look oldest. The never-used keys go first, the one of
        // the most recently visited layer (1) before those of layers 0 and 2.
        assert_eq!(p.victim(0..6, &|s| Some(s), &|_| true), Some(3));
        // Among the used keys, 0 and 2 (used twice) have CRF 1 + 1/2 and 4 (once) has 1.
        assert_eq!(p.victim(0..6, &|s| Some(s), &|s| s % 2 == 0), Some(4));
    }

    #[test]
    fn policy_names_parse() {
        let shape = PolicyShape {
            total_slots: 4,
            n_slots: 4,
            n_layers: 2,
            n_experts: 4,
        };
        for k in PolicyKind::ALL {
            assert_eq!(k.name().parse::<PolicyKind>().unwrap(), k);
            assert_eq!(k.build(shape).name(), k.name());
        }
        let e = "arc".parse::<PolicyKind>().unwrap_err().to_string();
        assert!(e.contains("lru, lfu, lrfu"), "{e}");
    }
}
