//! Expert-cache simulation: replay a routing trace through a cache of a given capacity under
//! several replacement policies and report hit-ratio curves, so a user sees how far each policy
//! is from the best possible for that trace.
//!
//! The access stream is the trace in token order, then layer order, then rank order; each chosen
//! expert is one access. Two capacity modes:
//! - [`CapacityMode::PerLayer`]: every layer has its own cache of `capacity` experts (key =
//!   expert id); results are summed over layers.
//! - [`CapacityMode::Global`]: one cache of `capacity` (layer, expert) slots shared by all layers.
//!
//! Policies (all insert the missed item, evicting one if full — demand caching):
//! - [`Policy::Lru`]: evict the least recently used.
//! - [`Policy::Lfu`]: evict the least frequently used, counting all accesses since the start of
//!   the trace (counts survive eviction — "perfect" LFU, as an engine keeping a per-expert
//!   counter would); ties broken by least recent use.
//! - [`Policy::Lru2`]: LRU-K with K = 2 (O'Neil et al. 1993), the frequency+recency policy: evict
//!   the item whose second-most-recent access is oldest; items accessed only once (infinite
//!   backward 2-distance) go first, among them the least recently used. Access history is kept
//!   for evicted items too.
//! - [`Policy::Belady`]: Belady's MIN, offline: evict the cached item whose next use is farthest
//!   in the future (never used again = infinitely far). Optimal among demand policies, so its hit
//!   count bounds every policy above. Ties only occur between items never used again, and any
//!   choice among them is optimal.
//! - [`Policy::BeladyBypass`]: MIN when the cache may also decline to insert the missed item
//!   (when its next use is farther than every cached item's). Optimal among policies that may
//!   bypass; a bound for engine policies that skip caching one-off experts.
//!
//! A custom (e.g. the engine's) policy plugs in through [`OnlinePolicy`] and [`simulate_online`].

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::routing::RoutingTrace;

/// A replacement policy simulated by [`simulate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Least recently used.
    Lru,
    /// Least frequently used (whole-history counts, LRU tie-break).
    Lfu,
    /// LRU-2 (frequency + recency).
    Lru2,
    /// Belady's MIN (offline optimum, demand caching).
    Belady,
    /// Belady's MIN allowing the cache to bypass the missed item.
    BeladyBypass,
}

impl Policy {
    /// All policies, online ones first.
    pub const ALL: [Policy; 5] = [
        Policy::Lru,
        Policy::Lfu,
        Policy::Lru2,
        Policy::Belady,
        Policy::BeladyBypass,
    ];

    /// Short name (`lru`, `lfu`, `lru2`, `belady`, `belady_bypass`).
    pub fn name(self) -> &'static str {
        match self {
            Policy::Lru => "lru",
            Policy::Lfu => "lfu",
            Policy::Lru2 => "lru2",
            Policy::Belady => "belady",
            Policy::BeladyBypass => "belady_bypass",
        }
    }
}

/// How capacity is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityMode {
    /// `capacity` experts per layer, one cache per layer.
    PerLayer,
    /// `capacity` (layer, expert) slots shared by all layers.
    Global,
}

/// Result of one replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Accesses replayed.
    pub accesses: u64,
    /// Hits.
    pub hits: u64,
    /// Misses (including cold ones).
    pub misses: u64,
    /// First accesses to a key (misses under any policy).
    pub cold_misses: u64,
}

impl CacheStats {
    /// `hits / accesses` (0 for no accesses).
    pub fn hit_ratio(&self) -> f64 {
        if self.accesses == 0 {
            0.0
        } else {
            self.hits as f64 / self.accesses as f64
        }
    }

    fn add(&mut self, o: &CacheStats) {
        self.accesses += o.accesses;
        self.hits += o.hits;
        self.misses += o.misses;
        self.cold_misses += o.cold_misses;
    }
}

/// An online policy replayed by [`simulate_online`]: it owns its capacity and state.
pub trait OnlinePolicy {
    /// Accesses `key`; returns whether it was a hit. On a miss the policy decides whether and
    /// what to evict.
    fn access(&mut self, key: u64) -> bool;
}

/// Replays `stream` through `policy`.
pub fn simulate_online(stream: &[u64], policy: &mut dyn OnlinePolicy) -> CacheStats {
    let mut seen = HashSet::new();
    let mut s = CacheStats::default();
    for &k in stream {
        s.accesses += 1;
        if policy.access(k) {
            s.hits += 1;
        } else {
            s.misses += 1;
        }
        if seen.insert(k) {
            s.cold_misses += 1;
        }
    }
    s
}

/// LRU with `O(log n)` per access.
#[derive(Debug)]
pub struct Lru {
    capacity: usize,
    t: u64,
    last: HashMap<u64, u64>,
    order: BTreeSet<(u64, u64)>,
}

impl Lru {
    /// An empty LRU cache of `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            t: 0,
            last: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl OnlinePolicy for Lru {
    fn access(&mut self, key: u64) -> bool {
        self.t += 1;
        if let Some(old) = self.last.insert(key, self.t) {
            self.order.remove(&(old, key));
            self.order.insert((self.t, key));
            return true;
        }
        self.last.remove(&key);
        if self.capacity == 0 {
            return false;
        }
        if self.last.len() >= self.capacity
            && let Some((_, victim)) = self.order.pop_first()
        {
            self.last.remove(&victim);
        }
        self.last.insert(key, self.t);
        self.order.insert((self.t, key));
        false
    }
}

/// LFU with whole-history counts and LRU tie-break.
#[derive(Debug)]
pub struct Lfu {
    capacity: usize,
    t: u64,
    freq: HashMap<u64, u64>,
    cached: HashMap<u64, (u64, u64)>,
    order: BTreeSet<(u64, u64, u64)>,
}

impl Lfu {
    /// An empty LFU cache of `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Lfu {
            capacity,
            t: 0,
            freq: HashMap::new(),
            cached: HashMap::new(),
            order: BTreeSet::new(),
        }
    }
}

impl OnlinePolicy for Lfu {
    fn access(&mut self, key: u64) -> bool {
        self.t += 1;
        let f = {
            let f = self.freq.entry(key).or_default();
            *f += 1;
            *f
        };
        if let Some(&(of, ot)) = self.cached.get(&key) {
            self.order.remove(&(of, ot, key));
            self.order.insert((f, self.t, key));
            self.cached.insert(key, (f, self.t));
            return true;
        }
        if self.capacity == 0 {
            return false;
        }
        if self.cached.len() >= self.capacity
            && let Some((_, _, victim)) = self.order.pop_first()
        {
            self.cached.remove(&victim);
        }
        self.cached.insert(key, (f, self.t));
        self.order.insert((f, self.t, key));
        false
    }
}

/// LRU-2 with retained history.
#[derive(Debug)]
pub struct Lru2 {
    capacity: usize,
    t: u64,
    /// key → (last access, previous access or 0).
    history: HashMap<u64, (u64, u64)>,
    cached: HashSet<u64>,
    /// (previous access or 0, last access, key) of cached items; the minimum is evicted.
    order: BTreeSet<(u64, u64, u64)>,
}

impl Lru2 {
    /// An empty LRU-2 cache of `capacity` items.
    pub fn new(capacity: usize) -> Self {
        Lru2 {
            capacity,
            t: 0,
            history: HashMap::new(),
            cached: HashSet::new(),
            order: BTreeSet::new(),
        }
    }
}

impl OnlinePolicy for Lru2 {
    fn access(&mut self, key: u64) -> bool {
        self.t += 1;
        let old = self.history.get(&key).copied();
        let new = (self.t, old.map_or(0, |(last, _)| last));
        self.history.insert(key, new);
        if self.cached.contains(&key) {
            if let Some((last, prev)) = old {
                self.order.remove(&(prev, last, key));
            }
            self.order.insert((new.1, new.0, key));
            return true;
        }
        if self.capacity == 0 {
            return false;
        }
        if self.cached.len() >= self.capacity
            && let Some((_, _, victim)) = self.order.pop_first()
        {
            self.cached.remove(&victim);
        }
        self.cached.insert(key);
        self.order.insert((new.1, new.0, key));
        false
    }
}

/// Belady's MIN (offline); `bypass` lets it decline to insert.
fn belady(stream: &[u64], capacity: usize, bypass: bool) -> CacheStats {
    const NEVER: usize = usize::MAX;
    let mut next = vec![NEVER; stream.len()];
    let mut last_pos: HashMap<u64, usize> = HashMap::new();
    for (i, &k) in stream.iter().enumerate().rev() {
        if let Some(&j) = last_pos.get(&k) {
            next[i] = j;
        }
        last_pos.insert(k, i);
    }
    let mut s = CacheStats::default();
    let mut seen = HashSet::new();
    // key → its next use; order = (next use, key), the maximum is evicted.
    let mut cached: HashMap<u64, usize> = HashMap::new();
    let mut order: BTreeSet<(usize, u64)> = BTreeSet::new();
    for (i, &k) in stream.iter().enumerate() {
        s.accesses += 1;
        if seen.insert(k) {
            s.cold_misses += 1;
        }
        if let Some(nu) = cached.get_mut(&k) {
            order.remove(&(*nu, k));
            *nu = next[i];
            order.insert((next[i], k));
            s.hits += 1;
            continue;
        }
        s.misses += 1;
        if capacity == 0 {
            continue;
        }
        if cached.len() >= capacity {
            let Some(&(far, victim)) = order.last() else {
                continue;
            };
            if bypass && next[i] >= far {
                continue;
            }
            order.remove(&(far, victim));
            cached.remove(&victim);
        }
        cached.insert(k, next[i]);
        order.insert((next[i], k));
    }
    s
}

/// Replays `stream` (keys) through a cache of `capacity` items under `policy`.
pub fn simulate(stream: &[u64], capacity: usize, policy: Policy) -> CacheStats {
    match policy {
        Policy::Lru => simulate_online(stream, &mut Lru::new(capacity)),
        Policy::Lfu => simulate_online(stream, &mut Lfu::new(capacity)),
        Policy::Lru2 => simulate_online(stream, &mut Lru2::new(capacity)),
        Policy::Belady => belady(stream, capacity, false),
        Policy::BeladyBypass => belady(stream, capacity, true),
    }
}

/// The access streams of a trace: one per layer (keys = expert ids) in per-layer mode, one
/// stream (keys = `layer << 32 | expert`) in global mode.
pub fn access_streams(trace: &RoutingTrace, mode: CapacityMode) -> Vec<Vec<u64>> {
    match mode {
        CapacityMode::Global => vec![
            trace
                .choices
                .iter()
                .map(|c| (u64::from(c.layer) << 32) | u64::from(c.expert))
                .collect(),
        ],
        CapacityMode::PerLayer => trace
            .per_layer_steps()
            .into_iter()
            .map(|(_, steps)| {
                steps
                    .into_iter()
                    .flat_map(|(_, e)| e.into_iter().map(u64::from))
                    .collect()
            })
            .collect(),
    }
}

/// Distinct keys of the largest stream (per layer) or of the whole trace (global).
pub fn universe(trace: &RoutingTrace, mode: CapacityMode) -> usize {
    access_streams(trace, mode)
        .iter()
        .map(|s| s.iter().collect::<HashSet<_>>().len())
        .max()
        .unwrap_or(0)
}

/// One point of a hit-ratio curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The policy.
    pub policy: Policy,
    /// Capacity (per layer or global, see the curve's mode).
    pub capacity: usize,
    /// Replay result (summed over layers in per-layer mode).
    pub stats: CacheStats,
    /// `stats.hit_ratio()`.
    pub hit_ratio: f64,
}

/// Hit-ratio curves of several policies over several capacities.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HitRatioCurves {
    /// Capacity mode.
    pub mode: CapacityMode,
    /// See [`universe`]: at this capacity and above only cold misses remain.
    pub universe: usize,
    /// Points, by policy then capacity.
    pub points: Vec<CurvePoint>,
}

impl HitRatioCurves {
    /// The points of one policy, by capacity.
    pub fn policy(&self, policy: Policy) -> impl Iterator<Item = &CurvePoint> {
        self.points.iter().filter(move |p| p.policy == policy)
    }
}

/// Capacities worth plotting: every value up to 16, then about 16 steps up to the universe.
pub fn default_capacities(universe: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..=universe.min(16)).collect();
    if universe > 16 {
        let step = (universe - 16).div_ceil(16);
        let mut c = 16 + step;
        while c < universe {
            v.push(c);
            c += step;
        }
        v.push(universe);
    }
    v
}

/// Replays the trace for every policy and capacity.
pub fn hit_ratio_curves(
    trace: &RoutingTrace,
    mode: CapacityMode,
    policies: &[Policy],
    capacities: &[usize],
) -> HitRatioCurves {
    let streams = access_streams(trace, mode);
    let universe = streams
        .iter()
        .map(|s| s.iter().collect::<HashSet<_>>().len())
        .max()
        .unwrap_or(0);
    let mut points = Vec::with_capacity(policies.len() * capacities.len());
    for &policy in policies {
        for &capacity in capacities {
            let mut stats = CacheStats::default();
            for s in &streams {
                stats.add(&simulate(s, capacity, policy));
            }
            points.push(CurvePoint {
                policy,
                capacity,
                stats,
                hit_ratio: stats.hit_ratio(),
            });
        }
    }
    HitRatioCurves {
        mode,
        universe,
        points,
    }
}

/// The hit-ratio curve of a custom online policy (e.g. the engine's): `make(capacity)` builds a
/// fresh cache for each capacity (and, in per-layer mode, for each layer).
pub fn custom_curve(
    trace: &RoutingTrace,
    mode: CapacityMode,
    capacities: &[usize],
    make: &dyn Fn(usize) -> Box<dyn OnlinePolicy>,
) -> Vec<(usize, CacheStats)> {
    let streams = access_streams(trace, mode);
    capacities
        .iter()
        .map(|&capacity| {
            let mut stats = CacheStats::default();
            for s in &streams {
                stats.add(&simulate_online(s, make(capacity).as_mut()));
            }
            (capacity, stats)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{RoutingChoice, reuse_distances};
    use proptest::prelude::*;

    /// The textbook reference string (Silberschatz, Operating System Concepts, ch. 9).
    const TEXTBOOK: [u64; 20] = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1];

    #[test]
    fn textbook_reference_string_with_three_frames() {
        assert_eq!(simulate(&TEXTBOOK, 3, Policy::Belady).misses, 9);
        assert_eq!(simulate(&TEXTBOOK, 3, Policy::Lru).misses, 12);
        let s = simulate(&TEXTBOOK, 3, Policy::Lru);
        assert_eq!((s.accesses, s.hits, s.cold_misses), (20, 8, 6));
    }

    #[test]
    fn lfu_and_lru2_hand_computed() {
        // A A B C A B with 2 slots.
        // LFU: A(miss) A(hit, f=2) B(miss) C(miss, evict B f=1) A(hit) B(miss, f=2 vs C f=1:
        // evict C) → 2 hits.
        let s = [1, 1, 2, 3, 1, 2];
        assert_eq!(simulate(&s, 2, Policy::Lfu).hits, 2);
        // LRU: A A(hit) B C(evict A) A(evict B) B(evict C) → 1 hit.
        assert_eq!(simulate(&s, 2, Policy::Lru).hits, 1);
        // LRU-2: A A(hit; A has 2 accesses) B C: evict B (only one access, A has two) A(hit)
        // B(miss): C has one access → evicted → 2 hits.
        assert_eq!(simulate(&s, 2, Policy::Lru2).hits, 2);
        // LFU counts survive eviction: B B C B with 2 slots, then A evicts C (f=1), not B (f=3).
        // B(miss) B(hit) C(miss) B(hit) A(miss, evict C) C(miss, evict A: f=1 < B's 3) B(hit)
        // → 3 hits.
        let s = [2, 2, 3, 2, 1, 3, 2];
        assert_eq!(simulate(&s, 2, Policy::Lfu).hits, 3);
    }

    #[test]
    fn belady_handles_ties_between_never_reused_items() {
        // 2, 3 and 5 are never used again, so several cached items share next use = never; a
        // map keyed by next use alone would lose one of them.
        let s = [1, 2, 3, 4, 5, 1, 4];
        // Cap 2, MIN: 1, 2 miss; 3 evicts 2 (never); 4 evicts 3 (never); cache {1@5, 4@6};
        // 5 must be inserted and evicts 4 (farther); 1 hits, 4 misses → 1 hit.
        assert_eq!(simulate(&s, 2, Policy::Belady).hits, 1);
        // Bypass: 5 is never used again → not inserted; 1 and 4 both hit.
        assert_eq!(simulate(&s, 2, Policy::BeladyBypass).hits, 2);
    }

    #[test]
    fn capacity_zero_misses_everything() {
        for p in Policy::ALL {
            let s = simulate(&TEXTBOOK, 0, p);
            assert_eq!((s.hits, s.misses), (0, 20), "{p:?}");
        }
    }

    #[test]
    fn lru_hits_match_stack_distances() {
        let seq = [1u32, 2, 1, 3, 2, 1, 4, 4, 2, 3, 1];
        let trace = RoutingTrace::new(
            seq.iter()
                .enumerate()
                .map(|(t, &e)| RoutingChoice {
                    token: t as u64,
                    layer: 0,
                    expert: e,
                    weight: 1.0,
                })
                .collect(),
        );
        let r = reuse_distances(&trace);
        let stream: Vec<u64> = seq.iter().map(|&e| u64::from(e)).collect();
        for c in 0..6 {
            let expected: u64 = r.stack_distance.range(..c as u64).map(|(_, n)| n).sum();
            assert_eq!(
                simulate(&stream, c, Policy::Lru).hits,
                expected,
                "capacity {c}"
            );
        }
    }

    #[test]
    fn curves_per_layer_and_global_on_small_trace() {
        // Two layers, two tokens, top-1: layer 0 picks 1,1; layer 1 picks 2,3.
        let trace = RoutingTrace::new(vec![
            RoutingChoice {
                token: 0,
                layer: 0,
                expert: 1,
                weight: 1.0,
            },
            RoutingChoice {
                token: 0,
                layer: 1,
                expert: 2,
                weight: 1.0,
            },
            RoutingChoice {
                token: 1,
                layer: 0,
                expert: 1,
                weight: 1.0,
            },
            RoutingChoice {
                token: 1,
                layer: 1,
                expert: 3,
                weight: 1.0,
            },
        ]);
        let per = hit_ratio_curves(&trace, CapacityMode::PerLayer, &[Policy::Lru], &[1]);
        assert_eq!(per.universe, 2);
        assert_eq!(
            per.points[0].stats,
            CacheStats {
                accesses: 4,
                hits: 1,
                misses: 3,
                cold_misses: 3
            }
        );
        // Global stream: (0,1) (1,2) (0,1) (1,3); 1 slot → no hits, 2 slots → 1 hit.
        let g = hit_ratio_curves(&trace, CapacityMode::Global, &[Policy::Lru], &[1, 2]);
        assert_eq!(g.universe, 3);
        assert_eq!(g.points[0].stats.hits, 0);
        assert_eq!(g.points[1].stats.hits, 1);
        assert_eq!(g.points[1].hit_ratio, 0.25);
    }

    #[test]
    fn custom_policy_curve_matches_builtin() {
        let trace = RoutingTrace::new(
            TEXTBOOK
                .iter()
                .enumerate()
                .map(|(t, &e)| RoutingChoice {
                    token: t as u64,
                    layer: (t % 2) as u32,
                    expert: e as u32,
                    weight: 1.0,
                })
                .collect(),
        );
        for mode in [CapacityMode::PerLayer, CapacityMode::Global] {
            let caps = [0, 1, 2, 3, 5];
            let custom = custom_curve(&trace, mode, &caps, &|c| Box::new(Lru::new(c)));
            let builtin = hit_ratio_curves(&trace, mode, &[Policy::Lru], &caps);
            for ((c, s), p) in custom.iter().zip(&builtin.points) {
                assert_eq!((*c, *s), (p.capacity, p.stats));
            }
        }
    }

    #[test]
    fn default_capacities_cover_the_universe() {
        assert_eq!(default_capacities(3), vec![0, 1, 2, 3]);
        let v = default_capacities(100);
        assert_eq!(v.first(), Some(&0));
        assert_eq!(v.last(), Some(&100));
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert!(v.len() <= 34);
    }

    /// Best possible hits by exhaustive search over every eviction choice.
    fn brute_force_opt(stream: &[u64], capacity: usize, bypass: bool) -> u64 {
        fn go(
            stream: &[u64],
            i: usize,
            cache: &mut Vec<u64>,
            cap: usize,
            bypass: bool,
            memo: &mut HashMap<(usize, Vec<u64>), u64>,
        ) -> u64 {
            if i == stream.len() {
                return 0;
            }
            let mut key = cache.clone();
            key.sort_unstable();
            if let Some(&v) = memo.get(&(i, key.clone())) {
                return v;
            }
            let k = stream[i];
            let best = if cache.contains(&k) {
                1 + go(stream, i + 1, cache, cap, bypass, memo)
            } else if cap == 0 {
                go(stream, i + 1, cache, cap, bypass, memo)
            } else if cache.len() < cap {
                cache.push(k);
                let v = go(stream, i + 1, cache, cap, bypass, memo);
                cache.pop();
                v
            } else {
                let mut best = if bypass {
                    go(stream, i + 1, cache, cap, bypass, memo)
                } else {
                    0
                };
                for j in 0..cache.len() {
                    let old = std::mem::replace(&mut cache[j], k);
                    best = best.max(go(stream, i + 1, cache, cap, bypass, memo));
                    cache[j] = old;
                }
                best
            };
            memo.insert((i, key), best);
            best
        }
        go(
            stream,
            0,
            &mut Vec::new(),
            capacity,
            bypass,
            &mut HashMap::new(),
        )
    }

    proptest! {
        #[test]
        fn belady_is_optimal_and_bounds_every_policy(
            stream in proptest::collection::vec(0u64..6, 0..16),
            capacity in 0usize..5,
        ) {
            let min = simulate(&stream, capacity, Policy::Belady);
            let min_bypass = simulate(&stream, capacity, Policy::BeladyBypass);
            prop_assert_eq!(min.hits, brute_force_opt(&stream, capacity, false));
            prop_assert_eq!(min_bypass.hits, brute_force_opt(&stream, capacity, true));
            prop_assert!(min_bypass.hits >= min.hits);
            for p in [Policy::Lru, Policy::Lfu, Policy::Lru2] {
                let s = simulate(&stream, capacity, p);
                prop_assert!(min.hits >= s.hits, "{:?} beat Belady: {} > {}", p, s.hits, min.hits);
                prop_assert_eq!(s.hits + s.misses, s.accesses);
                prop_assert_eq!(s.cold_misses, min.cold_misses);
            }
        }

        #[test]
        fn belady_bounds_policies_on_longer_streams(
            stream in proptest::collection::vec(0u64..20, 0..300),
            capacity in 0usize..22,
        ) {
            let min = simulate(&stream, capacity, Policy::Belady).hits;
            for p in [Policy::Lru, Policy::Lfu, Policy::Lru2] {
                prop_assert!(min >= simulate(&stream, capacity, p).hits, "{:?}", p);
            }
        }

        #[test]
        fn capacity_at_least_universe_gives_only_cold_misses(
            stream in proptest::collection::vec(0u64..12, 0..100),
            extra in 0usize..3,
        ) {
            let universe = stream.iter().collect::<HashSet<_>>().len();
            for p in Policy::ALL {
                let s = simulate(&stream, universe + extra, p);
                prop_assert_eq!(s.misses, s.cold_misses, "{:?}", p);
                prop_assert_eq!(s.cold_misses as usize, universe);
            }
        }
    }
}
