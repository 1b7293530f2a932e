//! Trace-driven cache simulation: replays a routing trace (the demand accesses, in order)
//! through the real [`ExpertCache`] and its policies without any I/O, and computes Belady's
//! optimal hit count for the same trace and capacity, so a policy's hit rate can be judged
//! against the best possible ("ours ≥ 90% of Belady").

use std::collections::{BTreeSet, HashMap};

use super::ExpertKey;
use super::cache::{CacheConfig, CacheScope, CacheStats, Capacity, ExpertCache, Lookup};
use super::layout::{ExpertLayout, FileRange};
use crate::error::{Error, Result};

/// Replays `trace` through a cache of `n_layers × n_experts` keys configured by `cfg`
/// (`cfg.capacity` should be in slots) and returns its counters.
pub fn simulate(
    n_layers: u32,
    n_experts: u32,
    trace: &[ExpertKey],
    cfg: &CacheConfig,
) -> Result<CacheStats> {
    Ok(replay(n_layers, n_experts, trace, cfg)?.stats())
}

/// A cache of `n_layers × n_experts` one-byte experts configured by `cfg` (capacity in slots):
/// every slot is three blocks, so even large capacities stay small.
fn empty_cache(n_layers: u32, n_experts: u32, cfg: &CacheConfig) -> Result<ExpertCache> {
    let layout = ExpertLayout::from_stacked(n_layers, n_experts, |_, _| {
        Ok(FileRange {
            offset: 0,
            len: u64::from(n_experts),
        })
    })?;
    if let Capacity::Bytes(_) = cfg.capacity {
        return Err(Error::InvalidInput(
            "simulate: give the capacity in slots".into(),
        ));
    }
    ExpertCache::new(&layout, cfg)
}

/// [`simulate`], returning the cache itself (its counters and [`ExpertCache::slot_shares`]).
fn replay(
    n_layers: u32,
    n_experts: u32,
    trace: &[ExpertKey],
    cfg: &CacheConfig,
) -> Result<ExpertCache> {
    let mut c = empty_cache(n_layers, n_experts, cfg)?;
    for &k in trace {
        if c.access(k)? == Lookup::Absent {
            match c.insert(k, true)? {
                Some(s) => c.complete(s, 1),
                None => return Err(Error::Model("simulate: no evictable slot".into())),
            }
        }
    }
    Ok(c)
}

/// One layer visit of a routed token: the experts it chose (distinct) and, optionally, the
/// router's scores for all the layer's experts (given to the cache as the hint the forward pass
/// gives after the layer).
#[derive(Clone, Debug, Default)]
pub struct Visit {
    /// The layer.
    pub layer: u32,
    /// The chosen experts, distinct.
    pub experts: Vec<u32>,
    /// The router's scores for every expert of the layer (empty: no hint).
    pub scores: Vec<f32>,
}

/// [`simulate`] over visits, each followed by its router hint, with the visit's experts pinned
/// while it lasts (as the forward pass holds them while it computes), counting only the
/// accesses of visits from index `from` on (none if `from` is past the last visit). This is the
/// engine's demand path without speculation. A visit's experts must be distinct.
pub fn simulate_visits(
    n_layers: u32,
    n_experts: u32,
    visits: &[Visit],
    cfg: &CacheConfig,
    from: usize,
) -> Result<CacheStats> {
    let mut c = empty_cache(n_layers, n_experts, cfg)?;
    let mut pinned = Vec::new();
    for (i, v) in visits.iter().enumerate() {
        if i == from {
            c.reset_stats();
        }
        debug_assert!(
            v.experts
                .iter()
                .enumerate()
                .all(|(j, e)| !v.experts[..j].contains(e)),
            "a visit's experts must be distinct"
        );
        for &e in &v.experts {
            let k = ExpertKey::new(v.layer, e);
            let s = match c.access(k)? {
                Lookup::Ready(s) | Lookup::Loading(s) => s,
                Lookup::Absent => {
                    let s = c
                        .insert(k, true)?
                        .ok_or_else(|| Error::Model("simulate: no evictable slot".into()))?;
                    c.complete(s, 1);
                    s
                }
            };
            c.pin(s);
            pinned.push(s);
        }
        for s in pinned.drain(..) {
            c.unpin(s);
        }
        if !v.scores.is_empty() {
            c.hint(v.layer, &v.scores);
        }
    }
    if from >= visits.len() {
        c.reset_stats();
    }
    Ok(c.stats())
}

/// Hits and misses of a replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitCount {
    /// Accesses that found the key resident.
    pub hits: u64,
    /// Accesses that did not.
    pub misses: u64,
}

impl HitCount {
    /// `hits / (hits + misses)`.
    pub fn hit_rate(&self) -> f64 {
        self.hits as f64 / (self.hits + self.misses).max(1) as f64
    }
}

/// Belady's optimal replacement (evict the resident key used furthest in the future) for a
/// cache of `n_slots` keys, every missed key being inserted. `O(n log n_slots)`.
pub fn belady(trace: &[ExpertKey], n_slots: usize) -> HitCount {
    belady_counting_from(trace, n_slots, 0)
}

/// [`belady`] over the whole trace, counting only the accesses from index `from` on (the cache
/// is warmed by the earlier ones, as it would be in a run).
pub fn belady_counting_from(trace: &[ExpertKey], n_slots: usize, from: usize) -> HitCount {
    let next = next_uses(trace);
    // Resident keys ordered by next use; `at[k]` is the next use stored for k.
    let mut resident: BTreeSet<(usize, ExpertKey)> = BTreeSet::new();
    let mut at: HashMap<ExpertKey, usize> = HashMap::new();
    let mut h = HitCount::default();
    for (i, &k) in trace.iter().enumerate() {
        let count = u64::from(i >= from);
        if let Some(&nu) = at.get(&k) {
            h.hits += count;
            resident.remove(&(nu, k));
        } else {
            h.misses += count;
            if resident.len() >= n_slots.max(1)
                && let Some(&(nu, victim)) = resident.iter().next_back()
            {
                resident.remove(&(nu, victim));
                at.remove(&victim);
            }
        }
        resident.insert((next[i], k));
        at.insert(k, next[i]);
    }
    h
}

/// For each access, the index of the next access to the same key (`usize::MAX`: none).
fn next_uses(trace: &[ExpertKey]) -> Vec<usize> {
    let mut next = vec![usize::MAX; trace.len()];
    let mut last_seen: HashMap<ExpertKey, usize> = HashMap::new();
    for (i, k) in trace.iter().enumerate().rev() {
        if let Some(&j) = last_seen.get(k) {
            next[i] = j;
        }
        last_seen.insert(*k, i);
    }
    next
}

/// A global cache of `n_slots` that knows the next `window` accesses: it evicts the least
/// recently used key not accessed within the window, or, when every resident key is, the one
/// accessed last (Belady among them). `window = 0` is LRU; a window longer than the trace is
/// Belady. An online policy with a perfect predictor of the next `window` routing decisions
/// (the rest of the current token, say, from routers run ahead) can do no better than a policy
/// of this kind, which bounds what such predictions can add to recency. `O(n · n_slots)`.
pub fn lookahead_lru(trace: &[ExpertKey], n_slots: usize, window: usize) -> HitCount {
    let next = next_uses(trace);
    // Resident keys: (key, last use, next use).
    let mut resident: Vec<(ExpertKey, usize, usize)> = Vec::with_capacity(n_slots.max(1));
    let mut h = HitCount::default();
    for (i, &k) in trace.iter().enumerate() {
        if let Some(r) = resident.iter_mut().find(|r| r.0 == k) {
            h.hits += 1;
            (r.1, r.2) = (i, next[i]);
            continue;
        }
        h.misses += 1;
        if resident.len() >= n_slots.max(1) {
            let horizon = i.saturating_add(window);
            let victim = resident
                .iter()
                .enumerate()
                .filter(|(_, r)| r.2 >= horizon)
                .min_by_key(|(_, r)| r.1)
                .or_else(|| resident.iter().enumerate().max_by_key(|(_, r)| r.2))
                .map(|(v, _)| v);
            if let Some(v) = victim {
                resident.swap_remove(v);
            }
        }
        resident.push((k, i, next[i]));
    }
    h
}

/// Belady per layer, each layer with `slots_per_layer` slots (the optimum for
/// [`CacheScope::PerLayer`]).
pub fn belady_per_layer(trace: &[ExpertKey], n_layers: u32, slots_per_layer: usize) -> HitCount {
    belady_per_layer_from(trace, n_layers, slots_per_layer, 0)
}

fn belady_per_layer_from(
    trace: &[ExpertKey],
    n_layers: u32,
    slots_per_layer: usize,
    from: usize,
) -> HitCount {
    let shares = SlotShares::PerLayer(vec![slots_per_layer; n_layers as usize]);
    belady_shares_from(trace, &shares, from)
}

/// How many slots a cache gives each part of the key space (see
/// [`ExpertCache::slot_shares`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotShares {
    /// One pool of this many slots for every key.
    Global(usize),
    /// Layer `l`'s keys have `shares[l]` slots of their own.
    PerLayer(Vec<usize>),
}

/// Belady's hit count for a cache whose slots are shared as `shares` says, counting only the
/// accesses from index `from` on (the earlier ones warm the cache). With the cache's own shares
/// and the demand trace it saw, this bounds its [`CacheStats::hits`] over the same window.
pub fn belady_shares_from(trace: &[ExpertKey], shares: &SlotShares, from: usize) -> HitCount {
    match shares {
        SlotShares::Global(n) => belady_counting_from(trace, *n, from),
        SlotShares::PerLayer(per_layer) => {
            let mut total = HitCount::default();
            for (l, &n) in per_layer.iter().enumerate() {
                let in_layer = |k: &&ExpertKey| k.layer as usize == l;
                let sub: Vec<ExpertKey> = trace.iter().filter(in_layer).copied().collect();
                let before = trace[..from.min(trace.len())]
                    .iter()
                    .filter(in_layer)
                    .count();
                let h = belady_counting_from(&sub, n, before);
                total.hits += h.hits;
                total.misses += h.misses;
            }
            total
        }
    }
}

/// Belady's hit count for the scope of `cfg` (global, or per layer with an even per-layer
/// share, rounded down; a cache built with a hot set or a capacity not a multiple of the layers
/// may hold more per layer: use [`belady_shares_from`] with its [`ExpertCache::slot_shares`]).
pub fn belady_for(
    trace: &[ExpertKey],
    n_layers: u32,
    n_slots: usize,
    scope: CacheScope,
) -> HitCount {
    belady_for_from(trace, n_layers, n_slots, scope, 0)
}

/// [`belady_for`] counting only the accesses from index `from` on (the earlier ones warm the
/// cache): the optimum for a measured stretch of a longer run.
pub fn belady_for_from(
    trace: &[ExpertKey],
    n_layers: u32,
    n_slots: usize,
    scope: CacheScope,
    from: usize,
) -> HitCount {
    match scope {
        CacheScope::Global => belady_counting_from(trace, n_slots, from),
        CacheScope::PerLayer => {
            belady_per_layer_from(trace, n_layers, n_slots / n_layers.max(1) as usize, from)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::HotSet;
    use crate::offload::policy::PolicyKind;

    fn k(e: u32) -> ExpertKey {
        ExpertKey::new(0, e)
    }

    /// A skewed trace over `layers` layers visited in order, `k` distinct experts per visit.
    fn skewed_layered_trace(layers: u32, experts: u32, k: usize, tokens: usize) -> Vec<ExpertKey> {
        let mut s = 11u64;
        let mut t = Vec::new();
        for _ in 0..tokens {
            for layer in 0..layers {
                let mut chosen: Vec<u32> = Vec::new();
                while chosen.len() < k {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    let e = (((s % 1000) as f64 / 1000.0).powi(3) * f64::from(experts)) as u32;
                    if !chosen.contains(&e) {
                        chosen.push(e);
                    }
                }
                t.extend(chosen.into_iter().map(|expert| ExpertKey { layer, expert }));
            }
        }
        t
    }

    #[test]
    fn visits_replay_like_the_plain_trace_and_count_from_their_window() {
        let (layers, experts, k) = (8u32, 32u32, 4usize);
        let trace = skewed_layered_trace(layers, experts, k, 200);
        let visits: Vec<Visit> = trace
            .chunks(k)
            .map(|c| Visit {
                layer: c[0].layer,
                experts: c.iter().map(|x| x.expert).collect(),
                scores: Vec::new(),
            })
            .collect();
        for policy in PolicyKind::ALL {
            let cfg = CacheConfig {
                capacity: Capacity::Slots(40),
                scope: CacheScope::Global,
                policy,
                hot: None,
            };
            let plain = simulate(layers, experts, &trace, &cfg).unwrap();
            let v = simulate_visits(layers, experts, &visits, &cfg, 0).unwrap();
            assert_eq!(v.hits + v.misses, plain.hits + plain.misses);
            // LRU never evicts a key its visit just used, so pinning changes nothing there;
            // other policies may, in the plain replay.
            if policy == PolicyKind::Lru {
                assert_eq!((v.hits, v.misses), (plain.hits, plain.misses));
            }
            let late = simulate_visits(layers, experts, &visits, &cfg, 800).unwrap();
            assert_eq!(late.hits + late.misses, ((visits.len() - 800) * k) as u64);
            let none = simulate_visits(layers, experts, &visits, &cfg, visits.len()).unwrap();
            assert_eq!(none.hits + none.misses, 0);
        }
        // Hints reach the learned policy: different scores, different decisions somewhere.
        let hinted: Vec<Visit> = visits
            .iter()
            .map(|v| Visit {
                scores: (0..experts)
                    .map(|e| if e % 3 == 0 { 1.0 } else { 0.0 })
                    .collect(),
                ..v.clone()
            })
            .collect();
        let cfg = CacheConfig {
            capacity: Capacity::Slots(40),
            scope: CacheScope::Global,
            policy: PolicyKind::Learned,
            hot: None,
        };
        let a = simulate_visits(layers, experts, &visits, &cfg, 0).unwrap();
        let b = simulate_visits(layers, experts, &hinted, &cfg, 0).unwrap();
        assert_ne!(a.hits, b.hits);
    }

    #[test]
    fn learned_keeps_learning_in_per_layer_partitions() {
        // Each per-layer partition's policy sees only its own layer's visits; they must still
        // be told apart (a bug once froze the learned policy in its first visit there: 56% of
        // Belady against LRU's 89% on a real trace).
        let trace = skewed_layered_trace(8, 32, 4, 300);
        for scope in [CacheScope::Global, CacheScope::PerLayer] {
            let run = |policy| {
                let cfg = CacheConfig {
                    capacity: Capacity::Slots(8 * 12),
                    scope,
                    policy,
                    hot: None,
                };
                simulate(8, 32, &trace, &cfg).unwrap().hit_rate()
            };
            let (lru, learned) = (run(PolicyKind::Lru), run(PolicyKind::Learned));
            assert!(
                learned >= lru,
                "{scope:?}: learned {learned:.3} below LRU {lru:.3} on a skewed trace"
            );
        }
    }

    #[test]
    fn lookahead_lru_spans_lru_to_belady() {
        let mut s = 7u64;
        let trace: Vec<ExpertKey> = (0..3000)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Skewed: low experts far more often.
                let e = ((s % 1000) as f64 / 1000.0).powi(3) * 40.0;
                ExpertKey {
                    layer: (s >> 20) as u32 % 2,
                    expert: e as u32,
                }
            })
            .collect();
        for slots in [4, 16, 30] {
            let lru = lookahead_lru(&trace, slots, 0);
            let replay = simulate(
                2,
                40,
                &trace,
                &CacheConfig {
                    capacity: Capacity::Slots(slots),
                    scope: CacheScope::Global,
                    policy: PolicyKind::Lru,
                    hot: None,
                },
            )
            .unwrap();
            assert_eq!(lru.hits, replay.hits, "window 0 is LRU ({slots} slots)");
            let opt = belady(&trace, slots);
            assert_eq!(
                lookahead_lru(&trace, slots, usize::MAX),
                opt,
                "{slots} slots"
            );
            for w in [8, 64, 512] {
                let h = lookahead_lru(&trace, slots, w);
                assert!(h.hits <= opt.hits, "window {w}, {slots} slots beats Belady");
                assert_eq!(h.hits + h.misses, trace.len() as u64);
            }
        }
    }

    #[test]
    fn belady_matches_a_hand_computed_example() {
        // Classic: capacity 3, trace 1 2 3 4 1 2 5 1 2 3 4 5 -> OPT has 5 hits (7 misses).
        let t: Vec<_> = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
            .into_iter()
            .map(k)
            .collect();
        let h = belady(&t, 3);
        assert_eq!((h.hits, h.misses), (5, 7));
    }

    #[test]
    fn counting_from_an_index_only_counts_the_tail_with_a_warm_cache() {
        let t: Vec<_> = [1, 2, 3, 1, 2, 3].into_iter().map(k).collect();
        // Cold over the whole trace: 3 misses, 3 hits; counting the second half: 3 hits.
        let h = belady_counting_from(&t, 3, 3);
        assert_eq!((h.hits, h.misses), (3, 0));
        assert_eq!(belady(&t, 3).hits, 3);
        let h = belady_for_from(&t, 1, 3, CacheScope::PerLayer, 3);
        assert_eq!((h.hits, h.misses), (3, 0));
        let h = belady_for_from(&t, 1, 2, CacheScope::Global, 0);
        assert_eq!(h.hits + h.misses, 6);
    }

    /// A skewed pseudo-random trace over `n_layers × 16` keys.
    fn skewed(n: usize, n_layers: u32) -> Vec<ExpertKey> {
        let mut x = 99u64;
        (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) % 100;
                let e = if r < 60 { r % 4 } else { r % 16 };
                ExpertKey::new(i as u32 % n_layers, e as u32)
            })
            .collect()
    }

    #[test]
    fn belady_with_the_caches_own_slot_shares_bounds_hot_sets_and_uneven_splits() {
        // 3 layers, 11 slots: per layer 4 + 4 + 3 before the hot set, which takes two slots
        // and gives them to layers 0 and 2.
        let t = skewed(6000, 3);
        let hot = HotSet::from_keys([ExpertKey::new(0, 0), ExpertKey::new(2, 1)]);
        for scope in [CacheScope::Global, CacheScope::PerLayer] {
            for hot in [None, Some(hot.clone())] {
                for p in PolicyKind::ALL {
                    let cfg = CacheConfig {
                        capacity: Capacity::Slots(11),
                        scope,
                        policy: p,
                        hot: hot.clone(),
                    };
                    let c = replay(3, 16, &t, &cfg).unwrap();
                    let shares = c.slot_shares();
                    let total = match &shares {
                        SlotShares::Global(n) => *n,
                        SlotShares::PerLayer(v) => v.iter().sum(),
                    };
                    assert_eq!(total, 11, "{shares:?}");
                    let opt = belady_shares_from(&t, &shares, 0);
                    let s = c.stats();
                    // The hot set's warm-up is not part of a demand-only replay.
                    assert_eq!(s.prefetch_hits, 0);
                    assert_eq!(opt.hits + opt.misses, s.accesses());
                    assert!(
                        s.hits <= opt.hits,
                        "{scope:?} {p} hot {}: {} > {}",
                        hot.is_some(),
                        s.hits,
                        opt.hits
                    );
                }
            }
        }
        // The even split rounds down; the cache gives the remainder to the first layers.
        let cfg = CacheConfig {
            capacity: Capacity::Slots(11),
            scope: CacheScope::PerLayer,
            ..CacheConfig::default()
        };
        let shares = replay(3, 16, &[], &cfg).unwrap().slot_shares();
        assert_eq!(shares, SlotShares::PerLayer(vec![4, 4, 3]));
    }

    #[test]
    fn no_policy_beats_belady_and_lru_matches_its_definition() {
        // A skewed pseudo-random trace over 16 keys.
        let mut x = 12345u64;
        let t: Vec<_> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (x >> 33) % 100;
                k(if r < 50 {
                    (r % 3) as u32
                } else {
                    (r % 16) as u32
                })
            })
            .collect();
        let opt = belady(&t, 6);
        for p in PolicyKind::ALL {
            let cfg = CacheConfig {
                capacity: Capacity::Slots(6),
                policy: p,
                ..CacheConfig::default()
            };
            let s = simulate(1, 16, &t, &cfg).unwrap();
            assert_eq!(s.accesses(), 5000);
            assert!(s.hits <= opt.hits, "{p}: {} > {}", s.hits, opt.hits);
            assert!(s.hits > opt.hits / 2, "{p}: {} vs {}", s.hits, opt.hits);
        }
        // LRU on the classic trace with 3 slots: 2 hits.
        let t: Vec<_> = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5]
            .into_iter()
            .map(k)
            .collect();
        let cfg = CacheConfig {
            capacity: Capacity::Slots(3),
            policy: PolicyKind::Lru,
            ..CacheConfig::default()
        };
        assert_eq!(simulate(1, 8, &t, &cfg).unwrap().hits, 2);
    }
}
