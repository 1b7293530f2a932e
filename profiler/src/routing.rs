//! Routing traces: which experts the router chose for each token at each layer, read from
//! `engine::routing` events or `routing.csv`, and the analyses on them: expert popularity per
//! layer (Gini coefficient, Zipf fit), reuse distances and temporal locality.
//!
//! `routing.csv` has the header `token,layer,expert,weight` and one row per chosen expert, in
//! token order, then layer order, then the router's rank order.
//!
//! Token "distance" is measured in trace steps: positions in [`RoutingTrace::tokens`] (the
//! distinct token positions, sorted), so gaps in the absolute positions do not count.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::recording::{Recording, names};

/// The experts chosen at one layer in one trace step: (step index, experts in rank order).
pub type StepExperts = (usize, Vec<u32>);

/// One chosen expert.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutingChoice {
    /// Absolute token position.
    pub token: u64,
    /// Layer index.
    pub layer: u32,
    /// Expert index within the layer.
    pub expert: u32,
    /// The router's weight for it.
    pub weight: f32,
}

/// All routing choices of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoutingTrace {
    /// Distinct token positions, sorted.
    pub tokens: Vec<u64>,
    /// Distinct layers, sorted.
    pub layers: Vec<u32>,
    /// Choices sorted by (token, layer), rank order kept within a (token, layer).
    pub choices: Vec<RoutingChoice>,
}

impl RoutingTrace {
    /// Builds a trace from choices in any order (stable: rank order within a token/layer kept).
    pub fn new(mut choices: Vec<RoutingChoice>) -> Self {
        choices.sort_by_key(|c| (c.token, c.layer));
        let mut tokens: Vec<u64> = choices.iter().map(|c| c.token).collect();
        tokens.dedup();
        let mut layers: Vec<u32> = choices.iter().map(|c| c.layer).collect();
        layers.sort_unstable();
        layers.dedup();
        RoutingTrace {
            tokens,
            layers,
            choices,
        }
    }

    /// Reads the `engine::routing` `route` events of a recording.
    pub fn from_recording(rec: &Recording) -> Result<Self> {
        let mut choices = Vec::new();
        for e in rec.events_named(names::TARGET_ROUTING, names::EVENT_ROUTE) {
            let token = e.u64("token");
            let layer = e.u64("layer");
            let err = |reason: String| Error::RoutingEvent {
                token,
                layer,
                reason,
            };
            let (Some(token), Some(layer_u64)) = (token, layer) else {
                return Err(err("missing token or layer".into()));
            };
            let layer = u32::try_from(layer_u64).map_err(|_| err("layer out of range".into()))?;
            let experts = e
                .str("experts")
                .ok_or_else(|| err("missing experts".into()))?;
            let weights = e.str("weights").unwrap_or("");
            let experts: Vec<u32> = split_list(experts)
                .map(|s| {
                    s.parse::<u32>()
                        .map_err(|_| err(format!("bad expert id {s:?}")))
                })
                .collect::<Result<_>>()?;
            let weights: Vec<f32> = split_list(weights)
                .map(|s| {
                    s.parse::<f32>()
                        .map_err(|_| err(format!("bad weight {s:?}")))
                })
                .collect::<Result<_>>()?;
            if !weights.is_empty() && weights.len() != experts.len() {
                return Err(err(format!(
                    "{} experts but {} weights",
                    experts.len(),
                    weights.len()
                )));
            }
            for (i, expert) in experts.into_iter().enumerate() {
                choices.push(RoutingChoice {
                    token,
                    layer,
                    expert,
                    weight: weights.get(i).copied().unwrap_or(f32::NAN),
                });
            }
        }
        Ok(Self::new(choices))
    }

    /// Reads `routing.csv` from a reader.
    pub fn from_csv_reader(r: impl Read) -> Result<Self> {
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(r);
        let choices = rdr
            .deserialize()
            .collect::<std::result::Result<Vec<RoutingChoice>, _>>()
            .map_err(|source| Error::Csv {
                what: "routing.csv".into(),
                source,
            })?;
        Ok(Self::new(choices))
    }

    /// Reads `routing.csv` from a file.
    pub fn from_csv_path(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Self::from_csv_reader(std::io::BufReader::new(f)).map_err(|e| match e {
            Error::Csv { source, .. } => Error::Csv {
                what: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Writes `routing.csv` (header `token,layer,expert,weight`).
    pub fn write_csv(&self, w: impl Write) -> Result<()> {
        let csv_err = |source| Error::Csv {
            what: "routing.csv".into(),
            source,
        };
        let mut wtr = csv::Writer::from_writer(w);
        if self.choices.is_empty() {
            wtr.write_record(["token", "layer", "expert", "weight"])
                .map_err(csv_err)?;
        }
        for c in &self.choices {
            wtr.serialize(c).map_err(csv_err)?;
        }
        wtr.flush().map_err(|e| Error::io("routing.csv", e))
    }

    /// One more than the largest expert id seen (a lower bound on experts per layer).
    pub fn n_experts(&self) -> usize {
        self.choices
            .iter()
            .map(|c| c.expert as usize + 1)
            .max()
            .unwrap_or(0)
    }

    /// For each layer (in [`Self::layers`] order): per trace step, the experts chosen in rank
    /// order. Steps are indices into [`Self::tokens`].
    pub fn per_layer_steps(&self) -> Vec<(u32, Vec<StepExperts>)> {
        let token_idx: HashMap<u64, usize> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, i))
            .collect();
        let layer_idx: HashMap<u32, usize> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, &l)| (l, i))
            .collect();
        let mut out: Vec<(u32, Vec<StepExperts>)> =
            self.layers.iter().map(|&l| (l, Vec::new())).collect();
        for c in &self.choices {
            let (Some(&ti), Some(&li)) = (token_idx.get(&c.token), layer_idx.get(&c.layer)) else {
                continue;
            };
            let steps = &mut out[li].1;
            match steps.last_mut() {
                Some((t, ex)) if *t == ti => ex.push(c.expert),
                _ => steps.push((ti, vec![c.expert])),
            }
        }
        out
    }
}

/// Splits `3,7`, and also tolerates what `?` formatting produces (`"3,7"`, `[3, 7]`).
fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',')
        .map(|p| p.trim_matches(|c: char| c.is_whitespace() || matches!(c, '"' | '[' | ']')))
        .filter(|p| !p.is_empty())
}

/// A least-squares fit of `log(count) = c - s * log(rank)` over the non-zero counts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ZipfFit {
    /// The Zipf exponent `s` (0 = uniform, ~1 = classic Zipf).
    pub exponent: f64,
    /// Coefficient of determination of the log-log fit.
    pub r_squared: f64,
    /// Number of points (experts with a non-zero count).
    pub n_points: usize,
}

/// Gini coefficient of counts (0 = all equal, `(n-1)/n` = one item takes everything).
/// Zero counts matter: pass one entry per expert. Empty or all-zero input gives 0.
pub fn gini(counts: &[u64]) -> f64 {
    let n = counts.len();
    let total: u64 = counts.iter().sum();
    if n == 0 || total == 0 {
        return 0.0;
    }
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    let weighted: f64 = sorted
        .iter()
        .enumerate()
        .map(|(i, &c)| (i as f64 + 1.0) * c as f64)
        .sum();
    let n = n as f64;
    2.0 * weighted / (n * total as f64) - (n + 1.0) / n
}

/// Fits a Zipf exponent to counts by least squares on (log rank, log count) of the non-zero
/// counts sorted descending. `None` with fewer than two non-zero counts.
pub fn zipf_fit(counts: &[u64]) -> Option<ZipfFit> {
    let mut c: Vec<u64> = counts.iter().copied().filter(|&c| c > 0).collect();
    if c.len() < 2 {
        return None;
    }
    c.sort_unstable_by(|a, b| b.cmp(a));
    let pts: Vec<(f64, f64)> = c
        .iter()
        .enumerate()
        .map(|(i, &v)| (((i + 1) as f64).ln(), (v as f64).ln()))
        .collect();
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let r_squared = if syy == 0.0 {
        1.0
    } else {
        sxy * sxy / (sxx * syy)
    };
    Some(ZipfFit {
        exponent: -slope,
        r_squared,
        n_points: pts.len(),
    })
}

/// Popularity of the experts of one layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerPopularity {
    /// Layer index.
    pub layer: u32,
    /// Times each expert was chosen, indexed by expert id.
    pub counts: Vec<u64>,
    /// Gini coefficient of `counts`.
    pub gini: f64,
    /// Zipf fit of `counts`.
    pub zipf: Option<ZipfFit>,
    /// Share of choices going to the most popular 10% of experts (at least one expert).
    pub top10_share: f64,
}

/// Expert popularity per layer; `n_experts` is the number of experts per layer (experts never
/// chosen count as zeros; ids beyond it widen the table).
pub fn popularity(trace: &RoutingTrace, n_experts: usize) -> Vec<LayerPopularity> {
    let mut by_layer: BTreeMap<u32, Vec<u64>> = trace
        .layers
        .iter()
        .map(|&l| (l, vec![0; n_experts]))
        .collect();
    for c in &trace.choices {
        let counts = by_layer.entry(c.layer).or_default();
        let e = c.expert as usize;
        if counts.len() <= e {
            counts.resize(e + 1, 0);
        }
        counts[e] += 1;
    }
    by_layer
        .into_iter()
        .map(|(layer, counts)| {
            let total: u64 = counts.iter().sum();
            let mut sorted = counts.clone();
            sorted.sort_unstable_by(|a, b| b.cmp(a));
            let top_n = counts.len().div_ceil(10).max(1);
            let top: u64 = sorted.iter().take(top_n).sum();
            LayerPopularity {
                layer,
                gini: gini(&counts),
                zipf: zipf_fit(&counts),
                top10_share: if total == 0 {
                    0.0
                } else {
                    top as f64 / total as f64
                },
                counts,
            }
        })
        .collect()
}

/// Reuse-distance distributions over all layers (each layer is its own stream).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReuseDistances {
    /// Trace steps since the same expert was last chosen at the same layer → count.
    pub token_gap: BTreeMap<u64, u64>,
    /// Distinct other experts of the layer accessed since its last use → count (an LRU cache of
    /// `C` experts per layer hits exactly the accesses with stack distance `< C`).
    pub stack_distance: BTreeMap<u64, u64>,
    /// First uses (no previous use).
    pub cold: u64,
}

/// Share of choices whose expert was already chosen at the same layer in the previous `k` steps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Locality {
    /// Window in trace steps.
    pub k: usize,
    /// Choices considered (all except those of the first step).
    pub n: u64,
    /// How many of them were re-selections within the window.
    pub reused: u64,
    /// `reused / n` (0 when `n` is 0).
    pub share: f64,
}

/// Computes reuse distances. Within one step, experts are accessed in rank order.
pub fn reuse_distances(trace: &RoutingTrace) -> ReuseDistances {
    let mut out = ReuseDistances::default();
    for (_, steps) in trace.per_layer_steps() {
        let mut last_step: HashMap<u32, usize> = HashMap::new();
        // LRU stack, most recent last.
        let mut stack: Vec<u32> = Vec::new();
        for (ti, experts) in steps {
            for &e in &experts {
                match stack.iter().rposition(|&x| x == e) {
                    Some(pos) => {
                        let d = (stack.len() - 1 - pos) as u64;
                        *out.stack_distance.entry(d).or_default() += 1;
                        stack.remove(pos);
                    }
                    None => out.cold += 1,
                }
                stack.push(e);
                if let Some(&prev) = last_step.get(&e) {
                    *out.token_gap.entry((ti - prev) as u64).or_default() += 1;
                }
                last_step.insert(e, ti);
            }
        }
    }
    out
}

/// Temporal locality for each window `k` (e.g. `[1, 2, 4, 8]`). Choices of the first step of
/// the trace are excluded (they have no history); the window is truncated at the start.
pub fn temporal_locality(trace: &RoutingTrace, ks: &[usize]) -> Vec<Locality> {
    let mut n = 0u64;
    let mut reused = vec![0u64; ks.len()];
    for (_, steps) in trace.per_layer_steps() {
        let mut last_step: HashMap<u32, usize> = HashMap::new();
        for (ti, experts) in steps {
            for &e in &experts {
                if ti == 0 {
                    continue;
                }
                n += 1;
                if let Some(&prev) = last_step.get(&e)
                    && prev < ti
                {
                    for (r, &k) in reused.iter_mut().zip(ks) {
                        if ti - prev <= k {
                            *r += 1;
                        }
                    }
                }
            }
            for &e in &experts {
                last_step.insert(e, ti);
            }
        }
    }
    ks.iter()
        .zip(reused)
        .map(|(&k, r)| Locality {
            k,
            n,
            reused: r,
            share: if n == 0 { 0.0 } else { r as f64 / n as f64 },
        })
        .collect()
}

/// All routing analyses together.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoutingAnalysis {
    /// Number of trace steps.
    pub n_tokens: usize,
    /// Number of layers.
    pub n_layers: usize,
    /// Experts per layer used for popularity.
    pub n_experts: usize,
    /// Total choices.
    pub n_choices: usize,
    /// Popularity per layer.
    pub popularity: Vec<LayerPopularity>,
    /// Mean Gini over layers.
    pub mean_gini: f64,
    /// Mean Zipf exponent over layers that have a fit.
    pub mean_zipf_exponent: Option<f64>,
    /// Reuse distances.
    pub reuse: ReuseDistances,
    /// Temporal locality per window.
    pub locality: Vec<Locality>,
}

/// Runs all routing analyses; `n_experts` defaults to [`RoutingTrace::n_experts`].
pub fn analyze_routing(
    trace: &RoutingTrace,
    n_experts: Option<usize>,
    ks: &[usize],
) -> RoutingAnalysis {
    let n_experts = n_experts.unwrap_or_else(|| trace.n_experts());
    let popularity = popularity(trace, n_experts);
    let mean_gini = if popularity.is_empty() {
        0.0
    } else {
        popularity.iter().map(|p| p.gini).sum::<f64>() / popularity.len() as f64
    };
    let fits: Vec<f64> = popularity
        .iter()
        .filter_map(|p| p.zipf.map(|z| z.exponent))
        .collect();
    RoutingAnalysis {
        n_tokens: trace.tokens.len(),
        n_layers: trace.layers.len(),
        n_experts,
        n_choices: trace.choices.len(),
        mean_gini,
        mean_zipf_exponent: (!fits.is_empty())
            .then(|| fits.iter().sum::<f64>() / fits.len() as f64),
        popularity,
        reuse: reuse_distances(trace),
        locality: temporal_locality(trace, ks),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::RecordingBuilder;

    /// Tolerance for closed-form float results.
    const EPS: f64 = 1e-9;

    fn ch(token: u64, layer: u32, expert: u32) -> RoutingChoice {
        RoutingChoice {
            token,
            layer,
            expert,
            weight: 0.5,
        }
    }

    #[test]
    fn gini_known_values() {
        assert!(gini(&[5, 5, 5, 5]).abs() < EPS);
        assert!((gini(&[0, 0, 0, 8]) - 0.75).abs() < EPS);
        // Sorted [1,2,3,4]: 2*(1+4+9+16)/(4*10) - 5/4 = 0.25.
        assert!((gini(&[4, 1, 3, 2]) - 0.25).abs() < EPS);
        assert_eq!(gini(&[]), 0.0);
        assert_eq!(gini(&[0, 0]), 0.0);
    }

    #[test]
    fn zipf_fit_recovers_exact_power_law() {
        let s = 1.3f64;
        let counts: Vec<u64> = (1..=32)
            .map(|r| (1e9 / (r as f64).powf(s)).round() as u64)
            .collect();
        let fit = zipf_fit(&counts).expect("fit");
        assert!((fit.exponent - s).abs() < 1e-6, "{fit:?}");
        assert!(fit.r_squared > 0.999_999);
        assert_eq!(fit.n_points, 32);
        let flat = zipf_fit(&[7, 7, 7]).expect("fit");
        assert!(flat.exponent.abs() < EPS);
        assert!(zipf_fit(&[0, 9, 0]).is_none());
    }

    #[test]
    fn popularity_counts_include_unchosen_experts() {
        let t = RoutingTrace::new(vec![ch(0, 0, 1), ch(1, 0, 1), ch(2, 0, 3), ch(0, 1, 0)]);
        let p = popularity(&t, 4);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].counts, vec![0, 2, 0, 1]);
        assert_eq!(p[1].counts, vec![1, 0, 0, 0]);
        assert!((p[1].gini - 0.75).abs() < EPS);
        assert!((p[0].top10_share - 2.0 / 3.0).abs() < EPS);
    }

    /// Layer 0, one expert per step: A B A C B A (A=1, B=2, C=3).
    fn abacba() -> RoutingTrace {
        let seq = [1, 2, 1, 3, 2, 1];
        RoutingTrace::new(
            seq.iter()
                .enumerate()
                .map(|(t, &e)| ch(t as u64 + 100, 0, e))
                .collect(),
        )
    }

    #[test]
    fn reuse_distances_known_sequence() {
        let r = reuse_distances(&abacba());
        assert_eq!(r.cold, 3);
        // A at 2 (gap 2), B at 4 (gap 3), A at 5 (gap 3).
        assert_eq!(r.token_gap, BTreeMap::from([(2, 1), (3, 2)]));
        // A at 2: {B} → 1; B at 4: {A, C} → 2; A at 5: {C, B} → 2.
        assert_eq!(r.stack_distance, BTreeMap::from([(1, 1), (2, 2)]));
    }

    #[test]
    fn temporal_locality_known_sequence() {
        let l = temporal_locality(&abacba(), &[1, 2, 4, 8]);
        // 5 choices after the first step; gaps of the reuses: 2, 3, 3.
        assert_eq!(l.iter().map(|x| x.n).collect::<Vec<_>>(), vec![5; 4]);
        assert_eq!(
            l.iter().map(|x| x.reused).collect::<Vec<_>>(),
            vec![0, 1, 3, 3]
        );
        assert!((l[1].share - 0.2).abs() < EPS);
    }

    #[test]
    fn locality_of_top2_within_a_step_counts_each_expert_once() {
        // Step 0 picks {1,2}, step 1 picks {2,1}: both reused at k=1.
        let t = RoutingTrace::new(vec![ch(0, 0, 1), ch(0, 0, 2), ch(1, 0, 2), ch(1, 0, 1)]);
        let l = temporal_locality(&t, &[1]);
        assert_eq!((l[0].n, l[0].reused), (2, 2));
    }

    #[test]
    fn from_recording_parses_events_and_rejects_malformed() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.event(
            c,
            "engine::routing",
            "route",
            1,
            &[
                ("token", 0u64.into()),
                ("layer", 2u64.into()),
                ("experts", "3,7".into()),
                ("weights", "0.51,0.49".into()),
            ],
        );
        let t = RoutingTrace::from_recording(&b.build()).expect("parses");
        assert_eq!(
            t.choices,
            vec![
                RoutingChoice {
                    token: 0,
                    layer: 2,
                    expert: 3,
                    weight: 0.51
                },
                RoutingChoice {
                    token: 0,
                    layer: 2,
                    expert: 7,
                    weight: 0.49
                },
            ]
        );

        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.event(
            c,
            "engine::routing",
            "route",
            1,
            &[
                ("token", 0u64.into()),
                ("layer", 2u64.into()),
                ("experts", "3,x".into()),
            ],
        );
        assert!(matches!(
            RoutingTrace::from_recording(&b.build()),
            Err(Error::RoutingEvent { .. })
        ));
    }

    #[test]
    fn from_recording_accepts_debug_formatted_lists() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.event(
            c,
            "engine::routing",
            "route",
            1,
            &[
                ("token", 1u64.into()),
                ("layer", 0u64.into()),
                ("experts", "[4, 1]".into()),
                ("weights", "\"0.75,0.25\"".into()),
            ],
        );
        let t = RoutingTrace::from_recording(&b.build()).expect("parses");
        let got: Vec<(u32, f32)> = t.choices.iter().map(|c| (c.expert, c.weight)).collect();
        assert_eq!(got, vec![(4, 0.75), (1, 0.25)]);
    }

    #[test]
    fn routing_csv_round_trips() {
        let t = RoutingTrace::new(vec![
            RoutingChoice {
                token: 0,
                layer: 0,
                expert: 5,
                weight: 0.7,
            },
            RoutingChoice {
                token: 0,
                layer: 0,
                expert: 2,
                weight: 0.3,
            },
            RoutingChoice {
                token: 0,
                layer: 1,
                expert: 0,
                weight: 1.0 / 3.0,
            },
            RoutingChoice {
                token: 1,
                layer: 0,
                expert: 2,
                weight: 0.123_456_79,
            },
        ]);
        let mut buf = Vec::new();
        t.write_csv(&mut buf).expect("writes");
        let text = String::from_utf8(buf.clone()).expect("utf8");
        assert!(
            text.starts_with("token,layer,expert,weight\n0,0,5,0.7\n"),
            "{text}"
        );
        let back = RoutingTrace::from_csv_reader(&buf[..]).expect("reads");
        assert_eq!(back, t);
    }

    #[test]
    fn bad_csv_is_an_error_not_a_panic() {
        let r = RoutingTrace::from_csv_reader("token,layer,expert,weight\n0,0,x,1\n".as_bytes());
        assert!(matches!(r, Err(Error::Csv { .. })));
    }
}
