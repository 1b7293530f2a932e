//! Deterministic synthetic inputs for demos, tests and documentation: a plausible sweep of
//! storage profiles x quantisations x budgets with a llama.cpp peer, a second machine, a
//! baseline, and profile data. The numbers follow a simple model (compute plus exposed I/O per
//! token), not measurements.

use crate::profile::{HitCurve, KvPoint, ProfileData, Span, Stalls};
use crate::record::{Machine, OUR_ENGINE, PEER_ENGINE, Record, SCHEMA_VERSION};

const GIB: u64 = 1 << 30;

/// A tiny deterministic generator (64-bit LCG) so demo data needs no `rand`.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Self {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }
    /// Uniform in 0..1.
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Roughly normal, mean 0, sd 1 (sum of uniforms).
    fn normal(&mut self) -> f64 {
        (0..6).map(|_| self.unit()).sum::<f64>() - 3.0
    }
}

/// The demo machine.
pub fn machine() -> Machine {
    Machine {
        cpu_model: "AMD EPYC 7B13 64-Core Processor".into(),
        cores: 2,
        simd: "avx2,fma,f16c".into(),
        mem_total_bytes: 8 * GIB,
        kernel: "6.1.0-demo".into(),
        disk: Some("virtio-blk (demo)".into()),
        date: "2026-05-01T12:00:00Z".into(),
        commit: "0000000-demo".into(),
    }
}

/// Storage profiles with their read bandwidth in GB/s (`None` = in memory).
const STORAGES: [(&str, Option<f64>); 6] = [
    ("in-memory", None),
    ("real", Some(1.5)),
    ("nvme-gen4", Some(6.0)),
    ("ufs-3.1", Some(2.0)),
    ("sata-ssd", Some(0.5)),
    ("emmc", Some(0.25)),
];

/// Quantisations with bytes per weight and in-memory decode t/s on the demo machine.
const QUANTS: [(&str, f64, f64); 2] = [("q4_0", 0.5625, 12.0), ("q8_0", 1.0625, 7.5)];

/// Memory copy bandwidth of the demo machine, GB/s.
const MEM_BW_GBPS: f64 = 18.0;
/// Active parameters per token of the demo model.
const ACTIVE_PARAMS: f64 = 0.6e9;

fn record(
    rng: &mut Lcg,
    storage: &str,
    bw: Option<f64>,
    quant: (&str, f64, f64),
    budget: Option<u64>,
    test: &str,
    engine: &str,
) -> Record {
    let (q, bytes_per_weight, base_tps) = quant;
    let decode = test.starts_with("tg");
    let weight_bytes = ACTIVE_PARAMS * bytes_per_weight;
    let hit = match budget {
        None => 1.0,
        Some(b) if b >= 2 * GIB => 0.86,
        Some(_) => 0.62,
    };
    let peer = engine != OUR_ENGINE;
    let compute_ms = 1000.0 / base_tps * if peer { 0.85 } else { 1.0 };
    let io_ms = match bw {
        Some(bw) if hit < 1.0 => weight_bytes * (1.0 - hit) / (bw * 1e9) * 1000.0,
        _ => 0.0,
    };
    let overlap = if peer { 0.0 } else { 0.55 };
    let exposed = io_ms * (1.0 - overlap);
    let tps_model = if decode {
        1000.0 / (compute_ms + exposed)
    } else {
        base_tps * 9.0 * if peer { 1.3 } else { 1.0 } / (1.0 + exposed / compute_ms / 4.0)
    };
    let samples: Vec<f64> = (0..5)
        .map(|_| tps_model * (1.0 + 0.02 * rng.normal()))
        .collect();
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let sd = (samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (samples.len() - 1) as f64)
        .sqrt();
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let model_bytes = 4.0e9 * bytes_per_weight;
    let peak = budget.map_or(model_bytes * 1.08, |b| b as f64 * 0.97);
    let offloaded = bw.is_some() && budget.is_some();
    let (n_prompt, n_gen) = if decode { (0, 64) } else { (128, 0) };
    Record {
        schema: SCHEMA_VERSION,
        run_id: "demo-run".into(),
        commit: "0000000-demo".into(),
        date: "2026-05-01T12:00:00Z".into(),
        cpu_model: machine().cpu_model,
        simd: "avx2,fma,f16c".into(),
        rustc: if peer {
            String::new()
        } else {
            "rustc 1.95.0 (demo)".into()
        },
        kernel: machine().kernel,
        cgroup_limit_bytes: budget.map(|b| b + b / 20),
        model_digest: Some(format!("sha256:{:064x}", q.len())),
        threads: 2,
        engine: engine.into(),
        model: "4b-a0.6b".into(),
        quant: q.into(),
        storage: storage.into(),
        budget_bytes: budget,
        test: test.into(),
        n_prompt,
        n_gen,
        samples_tps: samples,
        mean_tps: mean,
        sd_tps: sd,
        median_tps: median,
        peak_mem_bytes: Some(peak as u64),
        mem_source: Some(if budget.is_some() { "cgroup" } else { "rss" }.into()),
        hit_rate: offloaded.then_some(hit),
        belady_hit_rate: offloaded.then_some((hit + 0.08).min(1.0)),
        overlap_ratio: (offloaded && !peer).then_some(overlap),
        bytes_read_per_token: (decode && offloaded).then_some(weight_bytes * (1.0 - hit)),
        weight_bytes_per_token: decode.then_some(weight_bytes),
        roofline_tps: (decode && !peer).then_some(MEM_BW_GBPS * 1e9 / weight_bytes),
        bandwidth_gbps: Some(MEM_BW_GBPS),
        sparsity: (!peer).then_some(0.62),
        io_ms_per_token: (decode && offloaded).then_some(io_ms),
        compute_ms_per_token: (decode && !peer).then_some(compute_ms),
        exposed_io_ms_per_token: (decode && offloaded && !peer).then_some(exposed),
        emulation_excess: (offloaded && !peer && storage != "real").then_some(0.004),
        profile_dir: None,
        note: (storage == "emmc" && budget == Some(GIB))
            .then(|| "demo: cgroup v2 memory controller not delegated; budget enforced by the engine only".into()),
    }
}

/// A full demo sweep on [`machine`]: every storage x quantisation x budget (in-memory only
/// unlimited) with `pp128` and `tg64`, plus llama.cpp peer records for in-memory and real.
pub fn records(seed: u64) -> Vec<Record> {
    let mut rng = Lcg::new(seed);
    let mut out = Vec::new();
    for (storage, bw) in STORAGES {
        for quant in QUANTS {
            let budgets: &[Option<u64>] = if bw.is_none() {
                &[None]
            } else {
                &[None, Some(2 * GIB), Some(GIB)]
            };
            for &budget in budgets {
                for test in ["pp128", "tg64"] {
                    out.push(record(
                        &mut rng, storage, bw, quant, budget, test, OUR_ENGINE,
                    ));
                }
            }
        }
    }
    for (storage, bw) in [STORAGES[0], STORAGES[1]] {
        for budget in if bw.is_none() {
            vec![None]
        } else {
            vec![None, Some(GIB)]
        } {
            for test in ["pp128", "tg64"] {
                out.push(record(
                    &mut rng,
                    storage,
                    bw,
                    QUANTS[0],
                    budget,
                    test,
                    PEER_ENGINE,
                ));
            }
        }
    }
    out
}

/// The same sweep as [`records`] with every speed scaled by a per-scenario factor around 0.97,
/// to serve as a baseline.
pub fn baseline(seed: u64) -> Vec<Record> {
    let mut rng = Lcg::new(seed ^ 0x5eed);
    records(seed)
        .into_iter()
        .filter(|r| r.engine == OUR_ENGINE)
        .map(|mut r| {
            let f = 0.97 + 0.06 * rng.normal();
            r.run_id = "demo-baseline".into();
            r.mean_tps *= f;
            r.sd_tps *= f;
            r.median_tps *= f;
            r.samples_tps.iter_mut().for_each(|s| *s *= f);
            r
        })
        .collect()
}

/// A smaller sweep on a second, slower machine (a different `cpu_model`).
pub fn other_machine(seed: u64) -> Vec<Record> {
    records(seed.wrapping_add(1))
        .into_iter()
        .filter(|r| {
            r.engine == OUR_ENGINE
                && ["in-memory", "nvme-gen4", "emmc"].contains(&r.storage.as_str())
        })
        .map(|mut r| {
            r.cpu_model = "Rockchip RK3588 (demo)".into();
            r.simd = "neon,dotprod".into();
            r.threads = 4;
            r.mean_tps *= 0.4;
            r.sd_tps *= 0.4;
            r.median_tps *= 0.4;
            r.samples_tps.iter_mut().for_each(|s| *s *= 0.4);
            r
        })
        .collect()
}

/// Profile data of one offloaded decode scenario.
pub fn profiles(seed: u64) -> Vec<ProfileData> {
    let mut rng = Lcg::new(seed ^ 0xfeed);
    let (layers, experts) = (24usize, 64usize);

    // A few tokens: per layer attention then MoE on main; expert reads on two I/O threads.
    let mut timeline = Vec::new();
    let mut t = 0.0;
    for token in 0..3 {
        let token_start = t;
        for layer in 0..layers {
            let attn = 350.0 + 60.0 * rng.unit();
            timeline.push(Span {
                thread: "main".into(),
                name: "compute.attention".into(),
                start_us: t,
                dur_us: attn,
            });
            t += attn;
            if token > 0 && layer % 5 == 2 {
                let stall = 500.0 + 400.0 * rng.unit();
                timeline.push(Span {
                    thread: "main".into(),
                    name: "io.wait".into(),
                    start_us: t,
                    dur_us: stall,
                });
                t += stall;
            }
            let moe = 900.0 + 200.0 * rng.unit();
            timeline.push(Span {
                thread: "main".into(),
                name: "compute.moe".into(),
                start_us: t,
                dur_us: moe,
            });
            timeline.push(Span {
                thread: "main".into(),
                name: "compute.expert_ffn".into(),
                start_us: t + 50.0,
                dur_us: moe * 0.8,
            });
            t += moe;
            timeline.push(Span {
                thread: "main".into(),
                name: "kv.append".into(),
                start_us: t,
                dur_us: 40.0,
            });
            t += 40.0;
            for io in 0..2 {
                if rng.unit() < 0.6 {
                    let start = t - moe - attn * rng.unit();
                    timeline.push(Span {
                        thread: format!("io-{io}"),
                        name: "io.read_expert".into(),
                        start_us: start,
                        dur_us: 700.0 + 900.0 * rng.unit(),
                    });
                }
            }
        }
        timeline.push(Span {
            thread: "main".into(),
            name: "compute.lm_head".into(),
            start_us: t,
            dur_us: 1500.0,
        });
        t += 1500.0;
        let _ = token_start;
    }

    // Zipf-like popularity with a per-layer exponent (sharper in early layers).
    let popularity: Vec<Vec<f64>> = (0..layers)
        .map(|l| {
            let s = 0.6 - 0.3 * l as f64 / layers as f64;
            let mut w: Vec<f64> = (0..experts)
                .map(|e| (e as f64 + 1.0).powf(-s) * (0.8 + 0.4 * rng.unit()))
                .collect();
            // Scramble the order: the heatmap sorts by rank anyway.
            w.rotate_left(l * 7 % experts);
            let sum: f64 = w.iter().sum();
            // Shares of tokens selecting each expert sum to top-k (6 here).
            w.iter().map(|x| x / sum * 6.0).collect()
        })
        .collect();

    let reuse_distance_hist: Vec<(u64, u64)> = (0..12)
        .map(|b| {
            let d = 1u64 << b;
            (
                d,
                (4000.0 * (-(b as f64) / 2.5).exp() * (0.9 + 0.2 * rng.unit())) as u64,
            )
        })
        .chain(std::iter::once((u64::MAX, 900)))
        .collect();

    let caps: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0];
    let curve = |policy: &str, k: f64| HitCurve {
        policy: policy.into(),
        points: caps.iter().map(|&c| (c, 1.0 - (1.0 - c).powf(k))).collect(),
    };
    let hit_curves = vec![
        curve("LRU", 2.2),
        curve("LFU", 2.6),
        curve("engine", 3.0),
        curve("Belady", 4.2),
    ];

    let window = 4096u64;
    let kv: Vec<KvPoint> = [256u64, 1024, 4096, 8192, 16384, 32768]
        .iter()
        .map(|&c| {
            let per_layer_token = 2 * 4 * 128 * 2; // K and V, 4 heads of 128, f16
            let global_layers = 6u64;
            let local_layers = 18u64;
            KvPoint {
                context: c,
                hybrid_bytes: per_layer_token * (global_layers * c + local_layers * c.min(window)),
                all_global_bytes: per_layer_token * (global_layers + local_layers) * c,
            }
        })
        .collect();

    let latency_ms: Vec<f64> = (0..400)
        .map(|_| {
            let base = 95.0 + 6.0 * rng.normal();
            if rng.unit() < 0.06 {
                base + 60.0 + 80.0 * rng.unit()
            } else {
                base
            }
        })
        .collect();

    let sparsity_per_layer: Vec<f64> = (0..layers)
        .map(|l| {
            (0.95 - 0.4 * (l as f64 / layers as f64).sqrt() + 0.03 * rng.normal()).clamp(0.0, 1.0)
        })
        .collect();

    // The token time of the latency model split as a disk-bound decode splits it.
    let token_ms = 95.0;
    let stalls = Some(Stalls {
        ms_per_token: token_ms,
        storage_idle: [("LM head", 0.09), ("experts", 0.07), ("attention", 0.04)]
            .into_iter()
            .map(|(k, share)| (k.to_string(), token_ms * share))
            .collect(),
        waits: [
            ("being read", 0.36),
            ("being repacked", 0.06),
            ("queued", 0.01),
            ("ready (hand-off)", 0.01),
        ]
        .into_iter()
        .map(|(k, share)| (k.to_string(), token_ms * share))
        .collect(),
    });

    vec![ProfileData {
        name: "nvme-gen4 · q4_0 · 1 GiB · tg64".into(),
        timeline,
        popularity,
        reuse_distance_hist,
        hit_curves,
        kv,
        latency_ms,
        sparsity_per_layer,
        stalls,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_data_is_deterministic_and_plausible() {
        let a = records(7);
        assert_eq!(a, records(7));
        assert!(a.iter().all(|r| r.mean_tps.is_finite() && r.mean_tps > 0.0));
        assert!(a.iter().any(|r| r.engine == PEER_ENGINE));
        let fast = a
            .iter()
            .find(|r| r.storage == "nvme-gen4" && r.budget_bytes == Some(GIB) && r.test == "tg64");
        let slow = a
            .iter()
            .find(|r| r.storage == "emmc" && r.budget_bytes == Some(GIB) && r.test == "tg64");
        assert!(fast.expect("nvme").mean_tps > slow.expect("emmc").mean_tps);
        assert!(
            other_machine(7)
                .iter()
                .all(|r| r.cpu_model != machine().cpu_model)
        );
        let p = &profiles(7)[0];
        assert_eq!(p.popularity.len(), 24);
        assert!(
            p.popularity
                .iter()
                .flatten()
                .all(|s| (0.0..=1.0).contains(s)),
            "shares"
        );
    }
}
