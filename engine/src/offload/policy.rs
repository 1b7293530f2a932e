//! Eviction policies of the expert cache: LRU, LFU with aging, and LRFU.
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
//! `1/λ` in accesses, moves between them. With full per-key history it needs `O(keys)` memory
//! and one score update per access; the victim scan is `O(slots)`, microseconds per miss against
//! a read of hundreds of microseconds. W-TinyLFU's sketch and admission window, or ARC's ghost
//! lists, approximate exactly this history when the key space is too large to keep, which is
//! not the case here. The default half-life is the partition's slot count: an access loses half
//! its weight after one cache's worth of later accesses.

use std::fmt;
use std::ops::Range;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Index of a cache slot.
pub type SlotId = usize;

/// An eviction policy over one partition of the cache.
pub trait Policy: Send + fmt::Debug {
    /// Short name (`lru`, `lfu`, `lrfu`).
    fn name(&self) -> &'static str;
    /// `key` (dense index) was placed in `slot`.
    fn on_insert(&mut self, slot: SlotId, key: usize);
    /// `key`, in `slot`, was used (a demand access, hit or just-inserted miss).
    fn on_access(&mut self, slot: SlotId, key: usize);
    /// `slot` (holding `key`) was emptied.
    fn on_remove(&mut self, slot: SlotId, key: usize);
    /// The slot to evict among `slots` for which `evictable` holds; `key_of` gives a slot's key.
    fn victim(
        &mut self,
        slots: Range<SlotId>,
        key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId>;
}

/// The policies, as chosen on the command line (`--cache-policy lru|lfu|lrfu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// Least frequently used, counts halved periodically (aging).
    Lfu,
    /// Least recently/frequently used (combined score), see the module docs.
    #[default]
    Lrfu,
}

impl PolicyKind {
    /// Every policy.
    pub const ALL: [PolicyKind; 3] = [PolicyKind::Lru, PolicyKind::Lfu, PolicyKind::Lrfu];

    /// Name as parsed.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::Lfu => "lfu",
            PolicyKind::Lrfu => "lrfu",
        }
    }

    /// A policy for a partition of `n_slots` slots (slot ids below `total_slots`) over
    /// `n_keys` keys, with default parameters.
    pub fn build(self, total_slots: usize, n_slots: usize, n_keys: usize) -> Box<dyn Policy> {
        match self {
            PolicyKind::Lru => Box::new(Lru::new(total_slots)),
            PolicyKind::Lfu => {
                Box::new(Lfu::new(total_slots, n_keys, Lfu::default_period(n_slots)))
            }
            PolicyKind::Lrfu => Box::new(Lrfu::new(total_slots, n_keys, n_slots.max(1) as f64)),
        }
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
                Error::InvalidInput(format!("unknown cache policy '{s}'; valid: lru, lfu, lrfu"))
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

/// LRFU (see the module docs): per key, the combined recency-frequency value at its last
/// access, kept as `rank = log2(CRF(t_last)) + λ·t_last` so that comparing ranks compares
/// current CRF values without recomputing decays.
#[derive(Debug)]
pub struct Lrfu {
    /// CRF at the key's last access.
    crf: Vec<f64>,
    last: Vec<u64>,
    rank: Vec<f64>,
    /// Last touch per slot (insertion without access), for ties between never-used keys.
    slot_tick: Vec<u64>,
    lambda: f64,
    tick: u64,
}

impl Lrfu {
    /// For slot ids below `total_slots`, `n_keys` keys, and a half-life of `half_life`
    /// accesses (λ = 1 / half-life).
    pub fn new(total_slots: usize, n_keys: usize, half_life: f64) -> Lrfu {
        Lrfu {
            crf: vec![0.0; n_keys],
            last: vec![0; n_keys],
            rank: vec![f64::NEG_INFINITY; n_keys],
            slot_tick: vec![0; total_slots],
            lambda: 1.0 / half_life.max(1e-9),
            tick: 0,
        }
    }

    /// The key's current CRF value.
    pub fn crf_now(&self, key: usize) -> f64 {
        let dt = (self.tick - self.last[key]) as f64;
        self.crf[key] * (-self.lambda * dt).exp2()
    }
}

impl Policy for Lrfu {
    fn name(&self) -> &'static str {
        "lrfu"
    }
    fn on_insert(&mut self, slot: SlotId, _key: usize) {
        self.slot_tick[slot] = self.tick;
    }
    fn on_access(&mut self, slot: SlotId, key: usize) {
        self.tick += 1;
        let c = 1.0 + self.crf_now(key);
        self.crf[key] = c;
        self.last[key] = self.tick;
        self.rank[key] = c.log2() + self.lambda * self.tick as f64;
        self.slot_tick[slot] = self.tick;
    }
    fn on_remove(&mut self, _slot: SlotId, _key: usize) {}
    fn victim(
        &mut self,
        slots: Range<SlotId>,
        key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId> {
        let mut best: Option<(f64, u64, SlotId)> = None;
        for s in slots.filter(|&s| evictable(s)) {
            let Some(k) = key_of(s) else { continue };
            let cand = (self.rank[k], self.slot_tick[s], s);
            let better = match best {
                None => true,
                Some(b) => cand.0 < b.0 || (cand.0 == b.0 && cand.1 < b.1),
            };
            if better {
                best = Some(cand);
            }
        }
        best.map(|b| b.2)
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
        let seq = [0, 0, 0, 0, 1, 2, 1, 2];
        // Long half-life: frequency dominates, key 1 or 2 (2 accesses) goes, not 0 (4).
        let mut p = Lrfu::new(3, 3, 1e6);
        assert_ne!(victim_after(&mut p, 3, &seq), 0);
        // Half-life of one access: recency dominates, key 0 (oldest) goes.
        let mut p = Lrfu::new(3, 3, 1.0);
        assert_eq!(victim_after(&mut p, 3, &seq), 0);
        // Never-accessed keys go first.
        let mut p = Lrfu::new(3, 3, 10.0);
        assert_eq!(victim_after(&mut p, 3, &[0, 2]), 1);
    }

    #[test]
    fn policy_names_parse() {
        for k in PolicyKind::ALL {
            assert_eq!(k.name().parse::<PolicyKind>().unwrap(), k);
            assert_eq!(k.build(4, 4, 8).name(), k.name());
        }
        let e = "arc".parse::<PolicyKind>().unwrap_err().to_string();
        assert!(e.contains("lru, lfu, lrfu"), "{e}");
    }
}
