//! The `learned` eviction policy: each key's chance of being used at its layer's next visit is
//! estimated online from the reuse observed so far by keys in the same (recency, frequency)
//! class, and the victim is the key whose next use is expected furthest away.
//!
//! Why: routing mixes a stable, skewed popularity with short-range reuse between consecutive
//! tokens, in proportions that differ between models, layers and prompts. LRU and LFU each
//! bet on one signal and LRFU on a fixed blend (one half-life); measuring the blend instead is
//! what LHD ("LHD: improving cache hit rate by maximizing hit density", Beckmann et al., NSDI
//! 2018) does with per-age hit statistics. Here the key space is small and dense and the
//! layers are visited in a fixed cycle, so the statistics are exact rather than sampled: at
//! every visit of a layer, each of its experts adds one observation (its class before the
//! visit, and whether the visit used it) to a small table.
//!
//! - **Class** of a key at a visit of its layer: its age (visits of the layer since its last
//!   use, 1 to [`MAX_AGE`], or never used), its use count decayed with a half-life of
//!   [`FREQ_HALF_LIFE`] visits, on a log scale ([`N_FREQ`] buckets), and the rank of its
//!   smoothed router score ([`N_RANK`] classes; [`Policy::on_hint`]): an expert the router
//!   nearly chose for the last tokens is likely for the next one, since the residual stream
//!   changes little between tokens. The score is standardised per visit (the layer's scores
//!   minus their mean, over their standard deviation) and averaged over the layer's visits with
//!   weights that shrink by [`HINT_SMOOTHING`] per visit, so a key's rank follows where the
//!   router has been leaning lately rather than one token's noise.
//! - **Estimate** `p` for a class: its observed share of uses, with a prior of one use in two
//!   observations; all counts are halved every [`TABLE_HALF_LIFE`] visits so the table follows
//!   a changing workload.
//! - **Victim**: the largest expected time to the next use, `d + (1 − p) / p` tokens, where `d`
//!   is the share of the layer cycle until the key's layer runs again: among keys equally
//!   likely to be used, the one whose layer ran last is evicted first (its next use is
//!   furthest). The expectation is taken at the key's next visit.
//!
//! A prefetch ([`Policy::on_prefetch`]) is a guess, not a use: it leaves the statistics alone
//! and protects the key until its layer's visit ends; the demand access that follows counts.
//!
//! Visits come from the cache ([`Policy::on_visit`]): an access or insert of another layer than
//! the last starts a visit of that layer (the forward pass requests a layer's experts together,
//! and a speculative prefetch of the next layer opens its visit a little early, which is what it
//! predicts), unless the layer's visit started less than half a layer cycle ago.

use std::ops::Range;

use super::policy::{Policy, PolicyShape, SlotId};

/// Ages above this many visits share one class.
pub const MAX_AGE: usize = 24;
/// Frequency buckets (log scale of the decayed use count).
pub const N_FREQ: usize = 8;
/// Half-life of a key's use count, in visits of its layer.
pub const FREQ_HALF_LIFE: f32 = 32.0;
/// The class table's counts are halved every this many visits (all layers).
pub const TABLE_HALF_LIFE: u64 = 4096;

/// Router-rank classes: no hint yet, then ranks 0–3, 4–7, 8–15, 16 and above.
pub const N_RANK: usize = 5;

/// Weight of a key's earlier smoothed score when a new hint arrives (the new standardised score
/// gets `1 − HINT_SMOOTHING`). Replaying router scores of greedy decodes of the default 4B
/// model (`router_scores` and `hint_replay` examples; three traces of 200–400 tokens, 361
/// slots), the hit rate as a share of Belady's was 89.0 / 89.3 / 88.9% ranking the last
/// scores alone, 89.4–89.7% at 0.3, 89.7–90.0% at 0.5, 89.5–89.7% at 0.7; at 240 slots
/// 82.5–83.6% → 83.6–84.5%. On a 21B trace (64 experts, top 6) 88.2 → 88.5% at 1,000 slots
/// and unchanged at 1,600 and 2,400.
pub const HINT_SMOOTHING: f32 = 0.5;

/// Age classes: 1..=MAX_AGE, then "never used" at index 0.
const N_AGE: usize = MAX_AGE + 1;
const N_CLASS: usize = N_AGE * N_FREQ * N_RANK;
const NEVER: u32 = u32::MAX;

/// See the module docs.
#[derive(Debug)]
pub struct Learned {
    n_layers: usize,
    n_experts: usize,
    /// Per key: the visit of its layer that last used it (`NEVER` if none).
    last_visit: Vec<u32>,
    /// Per key: its decayed use count as of `last_visit`.
    freq: Vec<f32>,
    /// Per key: its class at the start of its layer's current visit.
    class_now: Vec<u16>,
    /// Per key: used during its layer's current visit.
    used_now: Vec<bool>,
    /// Per key: rank class of its smoothed router score at its layer's latest hint (0: none).
    rank: Vec<u8>,
    /// Per key: its smoothed standardised router score (see [`HINT_SMOOTHING`]).
    smoothed: Vec<f32>,
    /// Per key: `visits` of its layer when it was last prefetched (`NEVER` if not).
    predicted: Vec<u32>,
    /// Per layer: visits started (the current visit is `visits − 1`).
    visits: Vec<u32>,
    /// Per layer: the global visit count when its last visit started.
    visit_stamp: Vec<u64>,
    /// The cache's clock ([`Policy::on_visit`]) when each layer's current visit started.
    visit_clock: Vec<u64>,
    /// Visits started, all layers.
    global_visits: u64,
    /// Per class: observations where the key was used, and all observations.
    used: Vec<f32>,
    seen: Vec<f32>,
}

impl Learned {
    /// For the keys of `shape`.
    pub fn new(shape: PolicyShape) -> Learned {
        let n_keys = shape.n_keys();
        Learned {
            n_layers: shape.n_layers.max(1),
            n_experts: shape.n_experts.max(1),
            last_visit: vec![NEVER; n_keys],
            freq: vec![0.0; n_keys],
            class_now: vec![0; n_keys],
            used_now: vec![false; n_keys],
            rank: vec![0; n_keys],
            smoothed: vec![0.0; n_keys],
            predicted: vec![NEVER; n_keys],
            visits: vec![0; shape.n_layers.max(1)],
            visit_stamp: vec![0; shape.n_layers.max(1)],
            visit_clock: vec![0; shape.n_layers.max(1)],
            global_visits: 0,
            used: vec![0.0; N_CLASS],
            seen: vec![0.0; N_CLASS],
        }
    }

    /// The class of `key` at visit `v` of its layer (before that visit's accesses).
    fn class_at(&self, key: usize, v: u32) -> usize {
        let last = self.last_visit[key];
        let r = usize::from(self.rank[key]);
        if last == NEVER {
            return r;
        }
        let age = v.saturating_sub(last).max(1) as usize;
        let f = self.freq[key] * (-(v.saturating_sub(last) as f32) / FREQ_HALF_LIFE).exp2();
        // 0, 0.25, 0.75, 1.75, 3.75, … uses: 1 + log2(1 + 4f).
        let fb = ((1.0 + 4.0 * f).log2() as usize).min(N_FREQ - 1);
        (age.min(MAX_AGE) * N_FREQ + fb) * N_RANK + r
    }

    /// Estimated chance that a key of class `c` is used at a visit of its layer.
    fn p(&self, c: usize) -> f32 {
        (self.used[c] + 1.0) / (self.seen[c] + 2.0)
    }

    /// Starts a visit of layer `l`: scores the previous one and classes the keys for this one.
    fn start_visit(&mut self, l: usize) {
        let v = self.visits[l];
        let keys = l * self.n_experts..(l + 1) * self.n_experts;
        if v > 0 {
            for k in keys.clone() {
                let c = self.class_now[k] as usize;
                self.seen[c] += 1.0;
                if std::mem::take(&mut self.used_now[k]) {
                    self.used[c] += 1.0;
                }
            }
        }
        for k in keys {
            self.class_now[k] = self.class_at(k, v) as u16;
        }
        self.visits[l] = v + 1;
        self.global_visits += 1;
        self.visit_stamp[l] = self.global_visits;
        if self.global_visits.is_multiple_of(TABLE_HALF_LIFE) {
            for x in self.used.iter_mut().chain(self.seen.iter_mut()) {
                *x *= 0.5;
            }
        }
    }

    /// Expected tokens until `key`'s next use.
    fn expected_wait(&self, key: usize) -> f32 {
        let l = key / self.n_experts;
        if self.predicted[key] == self.visits[l] {
            // Prefetched for the visit under way and not used yet: expected right now.
            return 0.0;
        }
        // The next visit of the layer: the current one's index + 1, unless the key's layer has
        // not started a visit yet.
        let next = self.visits[l];
        let p = self.p(self.class_at(key, next));
        let since = self.global_visits - self.visit_stamp[l];
        let d = 1.0 - (since as f32 / self.n_layers as f32).min(1.0);
        d + (1.0 - p) / p
    }
}

impl Policy for Learned {
    fn name(&self) -> &'static str {
        "learned"
    }
    fn on_insert(&mut self, _slot: SlotId, _key: usize) {}
    fn on_visit(&mut self, layer: usize, clock: u64) {
        // Coming back to a layer within half a cycle of the layers continues its visit: with
        // demand requests at the MoE step (no prefetch) and speculation on, accesses alternate
        // between a layer and the next one's guesses. Measured on the cache's clock: a
        // per-layer partition sees only its own layer (its own count of visits would never
        // advance between them, and its first visit would never end).
        let half_cycle = (self.n_layers as u64 / 2).max(1);
        let fresh = self.visits.get(layer).is_some_and(|&v| {
            v == 0 || clock.saturating_sub(self.visit_clock[layer]) >= half_cycle
        });
        if fresh {
            self.visit_clock[layer] = clock;
            self.start_visit(layer);
        }
    }
    fn on_access(&mut self, _slot: SlotId, key: usize) {
        let l = key / self.n_experts;
        if self.visits[l] == 0 {
            self.start_visit(l);
        }
        self.used_now[key] = true;
        let v = self.visits[l] - 1;
        let last = self.last_visit[key];
        if last != v {
            let decayed = if last == NEVER {
                0.0
            } else {
                self.freq[key] * (-(v.saturating_sub(last) as f32) / FREQ_HALF_LIFE).exp2()
            };
            self.freq[key] = decayed + 1.0;
            self.last_visit[key] = v;
        }
    }
    fn on_prefetch(&mut self, _slot: SlotId, key: usize) {
        // A guess, not a use: kept out of the statistics, protected until its visit ends.
        self.predicted[key] = self.visits[key / self.n_experts];
    }
    fn prefetch_counts_as_use(&self) -> bool {
        false
    }
    fn on_hint(&mut self, layer: usize, scores: &[f32]) {
        if layer >= self.n_layers || scores.len() != self.n_experts {
            return;
        }
        let n = scores.len() as f32;
        let mean = scores.iter().sum::<f32>() / n;
        let var = scores.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n;
        // A non-finite score (never from a real router) would poison the averages: such a
        // hint is dropped whole.
        if !var.is_finite() {
            return;
        }
        let inv_sd = if var > 0.0 { 1.0 / var.sqrt() } else { 0.0 };
        let keys = layer * self.n_experts..(layer + 1) * self.n_experts;
        let smoothed = &mut self.smoothed[keys.clone()];
        for (s, &x) in smoothed.iter_mut().zip(scores) {
            *s = HINT_SMOOTHING * *s + (1.0 - HINT_SMOOTHING) * (x - mean) * inv_sd;
        }
        let smoothed = &self.smoothed[keys.clone()];
        for (e, &x) in smoothed.iter().enumerate() {
            let above = smoothed.iter().filter(|&&y| y > x).count();
            self.rank[keys.start + e] = match above {
                0..4 => 1,
                4..8 => 2,
                8..16 => 3,
                _ => 4,
            };
        }
    }
    fn on_remove(&mut self, _slot: SlotId, _key: usize) {}
    fn victim(
        &mut self,
        slots: Range<SlotId>,
        key_of: &dyn Fn(SlotId) -> Option<usize>,
        evictable: &dyn Fn(SlotId) -> bool,
    ) -> Option<SlotId> {
        let mut best: Option<(f32, SlotId)> = None;
        for s in slots.filter(|&s| evictable(s)) {
            let Some(k) = key_of(s) else { continue };
            let w = self.expected_wait(k);
            if best.is_none_or(|(bw, _)| w > bw) {
                best = Some((w, s));
            }
        }
        best.map(|b| b.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(n_layers: usize, n_experts: usize, n_slots: usize) -> PolicyShape {
        PolicyShape {
            total_slots: n_slots,
            n_slots,
            n_layers,
            n_experts,
        }
    }

    #[test]
    fn one_token_does_not_undo_a_keys_recent_router_scores() {
        // Layer 1 of two, 32 experts, baseline scores rising with the index; expert 0 is the
        // router's clear favourite for three tokens, then scores lowest of all for one.
        let mut p = Learned::new(shape(2, 32, 8));
        let base = |e: usize| e as f32 * 0.1;
        for _ in 0..3 {
            let s: Vec<f32> = (0..32)
                .map(|e| if e == 0 { 10.0 } else { base(e) })
                .collect();
            p.on_hint(1, &s);
            assert_eq!(p.rank[32], 1);
        }
        let s: Vec<f32> = (0..32).map(base).collect();
        p.on_hint(1, &s);
        // Ranked on this token alone, expert 0 (lowest) would be in the last class.
        assert_eq!(p.rank[32], 1, "smoothed: still among the top four");
        assert_eq!(p.rank[63], 1);
        assert_eq!(
            p.rank[33], 4,
            "a key low every time stays in the last class"
        );
        // Non-finite scores are ignored rather than poisoning the averages.
        p.on_hint(1, &[f32::NAN; 32]);
        assert!(p.smoothed.iter().all(|x| x.is_finite()));
        // Layer 0's keys were never hinted.
        assert!(p.rank[..32].iter().all(|&r| r == 0));
        assert_eq!(p.rank[32], 1);
    }

    #[test]
    fn learns_that_popular_keys_come_back_and_evicts_the_one_off() {
        // Layer 0 of 8 experts: expert 0 every visit, expert 1 every other, 2–7 every sixth.
        let mut p = Learned::new(shape(2, 8, 4));
        let mut clock = 0;
        let mut visit = |p: &mut Learned, l: usize| {
            clock += 1;
            p.on_visit(l, clock);
        };
        for t in 0..200u32 {
            visit(&mut p, 0);
            for e in [0usize, if t % 2 == 0 { 1 } else { 2 + (t as usize % 6) }] {
                p.on_access(e, e);
            }
            // A second layer so visits alternate.
            visit(&mut p, 1);
            p.on_access(4, 8 + (t as usize % 8));
        }
        // Resident: 0, 1 and 3.
        let slots = [0usize, 1, 3];
        let v = p
            .victim(0..3, &|s| Some(slots[s]), &|_| true)
            .map(|s| slots[s]);
        assert_eq!(v, Some(3));
        assert!(p.expected_wait(0) < p.expected_wait(1));
        assert_eq!(p.victim(0..3, &|s| Some(slots[s]), &|_| false), None);
        // A prefetch of 3 for the visit starting protects it during that visit only.
        visit(&mut p, 0);
        p.on_prefetch(2, 3);
        let v = p.victim(0..3, &|s| Some(slots[s]), &|_| true);
        assert_ne!(v.map(|s| slots[s]), Some(3));
        assert_eq!(p.expected_wait(3), 0.0);
        visit(&mut p, 1);
        visit(&mut p, 0);
        assert!(p.expected_wait(3) > 1.0);
    }
}
