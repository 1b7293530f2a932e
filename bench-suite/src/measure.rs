//! llama-bench-style tests on a loaded model: `ppN` (one prompt batch of N tokens from an empty
//! context) and `tgN` (N single-token decode steps from an empty context), repeated, with a
//! warm-up pass first. Token ids are drawn from a seeded generator, as llama-bench draws random
//! tokens, so every engine and run sees the same workload.

use std::time::Instant;

use anyhow::Result;
use engine::model::{Logits, Model, OffloadSnapshot, Session, SessionConfig};
use engine::sampler::Rng;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Prompt lengths (`ppN` tests); 0 entries are ignored.
    pub n_prompt: Vec<usize>,
    /// Generation lengths (`tgN` tests).
    pub n_gen: Vec<usize>,
    /// Repetitions per test.
    pub reps: usize,
    /// Token workload seed.
    pub seed: u64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            n_prompt: vec![128],
            n_gen: vec![64],
            reps: 3,
            seed: 1234,
        }
    }
}

/// One test's measurements.
#[derive(Clone, Debug)]
pub struct TestResult {
    /// `ppN` or `tgN`.
    pub test: String,
    /// Prompt tokens.
    pub n_prompt: usize,
    /// Generated tokens.
    pub n_gen: usize,
    /// Tokens/s per repetition.
    pub samples_tps: Vec<f64>,
    /// Share of ReGLU neurons exactly zero over the test.
    pub sparsity: Option<f64>,
    /// Tokens processed over all repetitions (prompt tokens for `pp`, decode steps for `tg`).
    pub tokens: usize,
    /// Offload counters accumulated over the test's repetitions (offloaded models only).
    pub offload: Option<OffloadSnapshot>,
    /// Belady's optimal hit rate for the test's demand accesses at the cache's capacity (its
    /// slot shares), the run's earlier accesses warming the cache (offloaded models loaded with
    /// `record_trace`). Same trace, capacity, window and hit definition as
    /// [`OffloadPerToken::hit_rate`], which is therefore never above it.
    pub belady_hit_rate: Option<f64>,
}

impl TestResult {
    /// Offload counters per token: hit rate, bytes read, I/O ms, exposed I/O ms, compute ms,
    /// overlap.
    pub fn offload_per_token(&self) -> Option<OffloadPerToken> {
        let o = self.offload.as_ref()?;
        let n = self.tokens.max(1) as f64;
        let exposed_io_ms = o.exposed_io_ms() / n;
        Some(OffloadPerToken {
            hit_rate: o.hit_rate(),
            ready_rate: o.ready_rate(),
            bytes_read: o.stats.io.bytes as f64 / n,
            io_ms: o.io_ms() / n,
            exposed_io_ms,
            compute_ms: self.timed_ms().map(|t| (t / n - exposed_io_ms).max(0.0)),
            overlap: o.overlap(),
            emulation_excess: o.stats.device.and_then(|d| d.excess_share()),
        })
    }

    /// Wall time of all timed repetitions, ms (from the per-repetition t/s; `None` if a
    /// sample is not a positive finite rate).
    pub fn timed_ms(&self) -> Option<f64> {
        let per_rep = (self.n_prompt + self.n_gen) as f64;
        self.samples_tps
            .iter()
            .map(|&tps| (tps.is_finite() && tps > 0.0).then(|| 1e3 * per_rep / tps))
            .sum()
    }
}

/// Offload counters of a test, per token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OffloadPerToken {
    /// Demand accesses that found their expert resident since its previous demand access
    /// (prefetched experts not counted; comparable with Belady's optimum).
    pub hit_rate: f64,
    /// Demand accesses that found their expert ready, cached or prefetched.
    pub ready_rate: f64,
    /// Bytes read from storage.
    pub bytes_read: f64,
    /// Wall time some expert read was in progress, ms.
    pub io_ms: f64,
    /// Time the compute waited for reads, ms.
    pub exposed_io_ms: f64,
    /// Timed wall time minus the time the compute waited for reads, ms: what the forward
    /// pass spent on its own work (arithmetic, cache lookups, issuing reads). With
    /// `exposed_io_ms` it adds up to the measured time per token. `None` without valid
    /// samples.
    pub compute_ms: Option<f64>,
    /// Share of I/O time not waited for.
    pub overlap: Option<f64>,
    /// Emulated storage: the time the real storage added beyond the profile's modelled read
    /// time, as a share of it (see `engine::offload::DeviceStats::excess_share`).
    pub emulation_excess: Option<f64>,
}

/// The demand accesses recorded so far in a run, for Belady comparisons.
#[derive(Default)]
struct TraceLog {
    keys: Vec<engine::offload::ExpertKey>,
}

impl TraceLog {
    /// Appends what the model recorded since the last call; returns the new length.
    fn sync(&mut self, model: &Model) -> usize {
        if let Some(o) = model.offload() {
            self.keys.extend(o.take_trace());
        }
        self.keys.len()
    }

    /// Belady's hit rate for the accesses from `from` on, the earlier ones warming the cache
    /// (`None` without offloading or a recorded trace).
    fn belady_from(&self, model: &Model, from: usize) -> Option<f64> {
        let o = model.offload()?;
        if self.keys.len() <= from {
            return None;
        }
        // The cache's own slot shares (hot slots, uneven per-layer splits included), so that
        // the bound is for the capacity the run had.
        let h = engine::offload::sim::belady_shares_from(&self.keys, &o.slot_shares(), from);
        Some(h.hit_rate())
    }
}

/// `n` token ids below `vocab` from `seed`.
pub fn workload(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| (rng.next_u64() % vocab.max(1) as u64) as u32)
        .collect()
}

fn session(model: &Model, positions: usize, batch: usize) -> Result<Session<'_>> {
    Ok(Session::new(
        model,
        SessionConfig {
            max_positions: positions.max(1),
            max_batch: batch.max(1),
            ..SessionConfig::default()
        },
    )?)
}

/// Times one prompt pass of `n` tokens.
pub fn time_pp(model: &Model, tokens: &[u32]) -> Result<(f64, f64)> {
    let mut s = session(model, tokens.len(), tokens.len())?;
    let t = Instant::now();
    s.forward(tokens, Logits::Last)?;
    let dt = t.elapsed().as_secs_f64();
    Ok((tokens.len() as f64 / dt, sparsity(&s)))
}

/// Times `tokens.len()` decode steps from an empty context.
pub fn time_tg(model: &Model, tokens: &[u32]) -> Result<(f64, f64)> {
    let mut s = session(model, tokens.len(), 1)?;
    let t = Instant::now();
    for &tok in tokens {
        s.forward(&[tok], Logits::Last)?;
    }
    let dt = t.elapsed().as_secs_f64();
    Ok((tokens.len() as f64 / dt, sparsity(&s)))
}

/// Decode step times of one A/B test: the switch's off side and on side, nanoseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AbSteps {
    /// Steps run with the switch off.
    pub off_ns: Vec<u64>,
    /// Steps run with the switch on.
    pub on_ns: Vec<u64>,
}

impl AbSteps {
    /// Per block of four steps (off, on, on, off): the on steps' time over the off steps'
    /// (blocks in order; a trailing partial block is left out).
    pub fn block_ratios(&self) -> Vec<f64> {
        self.off_ns
            .chunks_exact(2)
            .zip(self.on_ns.chunks_exact(2))
            .map(|(off, on)| (on[0] + on[1]) as f64 / (off[0] + off[1]) as f64)
            .filter(|r| r.is_finite())
            .collect()
    }
}

/// Whether decode step `i` of an A/B test runs with the switch on: off, on, on, off, off, on,
/// on, … so both sides see early and late positions (and slow drift) alike.
pub fn ab_side(i: usize) -> bool {
    i.div_ceil(2) % 2 == 1
}

/// Times `tokens.len()` decode steps from an empty context one by one, calling `set(on)`
/// before each step with `on` = [`ab_side`] (and `set(false)` at the end). Interleaving single
/// steps cancels the load changes of a shared machine far better than alternating runs.
pub fn time_tg_ab(model: &Model, tokens: &[u32], mut set: impl FnMut(bool)) -> Result<AbSteps> {
    let mut s = session(model, tokens.len(), 1)?;
    let mut out = AbSteps::default();
    for (i, &tok) in tokens.iter().enumerate() {
        let on = ab_side(i);
        set(on);
        let t = Instant::now();
        s.forward(&[tok], Logits::Last)?;
        let ns = engine::offload::saturating_nanos(t.elapsed());
        if on {
            out.on_ns.push(ns);
        } else {
            out.off_ns.push(ns);
        }
    }
    set(false);
    Ok(out)
}

fn sparsity(s: &Session<'_>) -> f64 {
    let m = s.moe_totals();
    if m.n_neurons == 0 {
        f64::NAN
    } else {
        1.0 - m.n_active as f64 / m.n_neurons as f64
    }
}

/// Runs every test, calling `progress` after each repetition.
pub fn run(
    model: &Model,
    cfg: &BenchConfig,
    mut progress: impl FnMut(&str, usize),
) -> Result<Vec<TestResult>> {
    let vocab = model.config.vocab_size;
    let mut log = TraceLog::default();
    // Warm-up: page the weights in, spin the thread pool up.
    time_pp(model, &workload(vocab, 8, cfg.seed ^ 0xfeed))?;
    time_tg(model, &workload(vocab, 2, cfg.seed ^ 0xbeef))?;
    let mut out = Vec::new();
    let tests = cfg
        .n_prompt
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| (true, n))
        .chain(cfg.n_gen.iter().filter(|&&n| n > 0).map(|&n| (false, n)));
    for (is_pp, n) in tests {
        let name = if is_pp {
            format!("pp{n}")
        } else {
            format!("tg{n}")
        };
        let mut samples = Vec::new();
        let mut sp = Vec::new();
        let before = model.offload_snapshot();
        let from = log.sync(model);
        for rep in 0..cfg.reps.max(1) {
            let toks = workload(vocab, n, cfg.seed.wrapping_add(rep as u64));
            let (tps, s) = if is_pp {
                time_pp(model, &toks)?
            } else {
                time_tg(model, &toks)?
            };
            samples.push(tps);
            sp.push(s);
            progress(&name, rep);
        }
        let sparsity = Some(sp.iter().sum::<f64>() / sp.len() as f64).filter(|v| v.is_finite());
        let offload = match (model.offload_snapshot(), before) {
            (Some(after), Some(before)) => Some(after.since(&before)),
            _ => None,
        };
        out.push(TestResult {
            test: name,
            n_prompt: if is_pp { n } else { 0 },
            n_gen: if is_pp { 0 } else { n },
            tokens: n * samples.len(),
            samples_tps: samples,
            sparsity,
            offload,
            belady_hit_rate: {
                log.sync(model);
                log.belady_from(model, from)
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_time_is_timed_wall_time_minus_waits() {
        // Two tg10 repetitions at 10 and 5 t/s: 1 s + 2 s over 20 tokens = 150 ms/token, of
        // which 400 ms in all (20 ms/token) were spent blocked on expert reads.
        let mut snap = OffloadSnapshot::default();
        snap.stats.wait.blocked_ns = 400_000_000;
        snap.stats.io.busy_wall_ns = 1_000_000_000;
        let r = TestResult {
            test: "tg10".into(),
            n_prompt: 0,
            n_gen: 10,
            samples_tps: vec![10.0, 5.0],
            sparsity: None,
            tokens: 20,
            offload: Some(snap),
            belady_hit_rate: None,
        };
        assert!((r.timed_ms().unwrap() - 3000.0).abs() < 1e-9);
        let o = r.offload_per_token().unwrap();
        assert!((o.exposed_io_ms - 20.0).abs() < 1e-9);
        assert!((o.compute_ms.unwrap() - 130.0).abs() < 1e-9);
        assert!((o.io_ms - 50.0).abs() < 1e-9);
        // A broken sample gives no compute time rather than a wrong one.
        let bad = TestResult {
            samples_tps: vec![10.0, f64::NAN],
            ..r
        };
        assert_eq!(bad.offload_per_token().unwrap().compute_ms, None);
        // No offload counters, no per-token offload figures.
        let plain = TestResult {
            offload: None,
            ..bad
        };
        assert!(plain.offload_per_token().is_none());
    }

    #[test]
    fn ab_sides_alternate_in_pairs_and_balance() {
        let sides: Vec<bool> = (0..8).map(ab_side).collect();
        assert_eq!(sides, [false, true, true, false, false, true, true, false]);
        // Over any multiple of 4 steps both sides get as many steps and the same mean position.
        let on: Vec<usize> = (0..64).filter(|&i| ab_side(i)).collect();
        assert_eq!(on.len(), 32);
        assert_eq!(on.iter().sum::<usize>() * 2, (0..64).sum::<usize>());
        // Blocks pair each two on steps with the two off steps around them.
        let steps = AbSteps {
            off_ns: vec![100, 100, 200, 200, 7],
            on_ns: vec![110, 110, 180, 220, 9],
        };
        assert_eq!(steps.block_ratios(), vec![1.1, 1.0]);
    }

    #[test]
    fn workload_is_seeded_and_in_range() {
        let a = workload(100, 50, 7);
        assert_eq!(a, workload(100, 50, 7));
        assert_ne!(a, workload(100, 50, 8));
        assert!(a.iter().all(|&t| t < 100));
    }
}
