//! A one-screen [`Summary`] of [`Metrics`], as plain text (`thinker profile` prints it) and as
//! Markdown (`summary.md`).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::cache::{CapacityMode, HitRatioCurves, Policy};
use crate::kv::KvSample;
use crate::metrics::Metrics;
use crate::routing::Locality;
use crate::stalls::StallReport;

/// Hit ratio of each policy at one capacity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CacheRow {
    /// Capacity mode.
    pub mode: CapacityMode,
    /// Capacity.
    pub capacity: usize,
    /// Share of the mode's universe.
    pub fraction: f64,
    /// (policy, hit ratio).
    pub hit_ratios: Vec<(Policy, f64)>,
}

/// The key numbers of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Forward steps.
    pub n_steps: usize,
    /// Prefill tokens.
    pub n_prefill_tokens: u64,
    /// Decode tokens.
    pub n_decode_tokens: u64,
    /// Time to first token (ms).
    pub ttft_ms: Option<f64>,
    /// Decode throughput.
    pub decode_tokens_per_s: Option<f64>,
    /// Prefill throughput.
    pub prefill_tokens_per_s: Option<f64>,
    /// Decode step latency p50/p90/p99/max (ms).
    pub decode_latency_ms: Option<[f64; 4]>,
    /// Wall time of the recording (ms).
    pub wall_ms: f64,
    /// Compute busy time (ms).
    pub compute_ms: f64,
    /// Compute CPU time by op, largest first (ms).
    pub ops_ms: Vec<(String, f64)>,
    /// I/O busy time (ms).
    pub io_ms: f64,
    /// Exposed (waited) I/O (ms).
    pub io_exposed_ms: f64,
    /// Hidden (overlapped) I/O (ms).
    pub io_hidden_ms: f64,
    /// Hidden / busy.
    pub overlap_ratio: Option<f64>,
    /// Bytes read.
    pub bytes_read: u64,
    /// Expert reads.
    pub n_reads: u64,
    /// Engine expert-cache hits and misses.
    pub cache_hits_misses: (u64, u64),
    /// Mean Gini of expert popularity.
    pub mean_gini: Option<f64>,
    /// Mean Zipf exponent.
    pub mean_zipf: Option<f64>,
    /// Temporal locality.
    pub locality: Vec<Locality>,
    /// Simulated hit ratios at 1/8, 1/4 and 1/2 of the universe.
    pub cache_rows: Vec<CacheRow>,
    /// KV at the longest context sampled.
    pub kv_last: Option<KvSample>,
    /// Share of zero ReGLU activations and bytes skipped.
    pub sparsity: Option<(f64, u64)>,
    /// Decode under offloading: idle storage and waits by cause (`None` without expert reads or
    /// waits in decode steps).
    #[serde(default)]
    pub stalls: Option<StallReport>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn cache_rows(curves: &HitRatioCurves) -> Vec<CacheRow> {
    let mut caps: Vec<usize> = Vec::new();
    for frac in [0.125, 0.25, 0.5] {
        let target = ((curves.universe as f64 * frac).round() as usize).max(1);
        // The replayed capacity nearest to the target.
        if let Some(c) = curves
            .points
            .iter()
            .map(|p| p.capacity)
            .min_by_key(|&c| c.abs_diff(target))
            && !caps.contains(&c)
        {
            caps.push(c);
        }
    }
    caps.into_iter()
        .map(|capacity| CacheRow {
            mode: curves.mode,
            capacity,
            fraction: if curves.universe == 0 {
                0.0
            } else {
                capacity as f64 / curves.universe as f64
            },
            hit_ratios: curves
                .points
                .iter()
                .filter(|p| p.capacity == capacity)
                .map(|p| (p.policy, p.hit_ratio))
                .collect(),
        })
        .collect()
}

/// The storage-idle labels, largest first.
fn stall_idle_rows(st: &StallReport) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = st
        .storage_idle_ns
        .iter()
        .map(|(k, &v)| (k.clone(), v))
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v
}

fn opt<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "n/a".to_owned(), f)
}

/// Bytes with a binary unit.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

impl Summary {
    /// Extracts the summary from metrics.
    pub fn from_metrics(m: &Metrics) -> Self {
        let t = &m.overlap.total;
        let mut ops_ms: Vec<(String, f64)> = t
            .compute_by_op_ns
            .iter()
            .map(|(k, &v)| (k.clone(), ms(v)))
            .collect();
        ops_ms.sort_by(|a, b| b.1.total_cmp(&a.1));
        Summary {
            n_steps: m.latency.n_steps,
            n_prefill_tokens: m.latency.n_prefill_tokens,
            n_decode_tokens: m.latency.n_decode_tokens,
            ttft_ms: m.latency.ttft_ns.map(ms),
            decode_tokens_per_s: m.latency.decode_tokens_per_s,
            prefill_tokens_per_s: m.latency.prefill_tokens_per_s,
            decode_latency_ms: m
                .latency
                .decode
                .map(|p| [ms(p.p50_ns), ms(p.p90_ns), ms(p.p99_ns), ms(p.max_ns)]),
            wall_ms: ms(t.wall_ns),
            compute_ms: ms(t.compute_busy_ns),
            ops_ms,
            io_ms: ms(t.io_busy_ns),
            io_exposed_ms: ms(t.io_exposed_ns),
            io_hidden_ms: ms(t.io_hidden_ns),
            overlap_ratio: t.overlap_ratio,
            bytes_read: t.bytes_read,
            n_reads: t.n_reads,
            cache_hits_misses: (t.cache_hits, t.cache_misses),
            mean_gini: m.routing.as_ref().map(|r| r.mean_gini),
            mean_zipf: m.routing.as_ref().and_then(|r| r.mean_zipf_exponent),
            locality: m
                .routing
                .as_ref()
                .map(|r| r.locality.clone())
                .unwrap_or_default(),
            cache_rows: m.cache_curves.iter().flat_map(cache_rows).collect(),
            kv_last: m.kv.last().cloned(),
            sparsity: (m.sparsity.total.n_neurons > 0)
                .then_some((m.sparsity.total.zero_share, m.sparsity.total.bytes_skipped)),
            stalls: (m.stalls.tokens > 0 && (m.stalls.io_busy_ns > 0 || m.stalls.waits > 0))
                .then(|| m.stalls.clone()),
        }
    }

    /// A one-screen plain-text summary (at most about 24 lines).
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "steps {}  prefill tokens {}  decode tokens {}  wall {:.1} ms",
            self.n_steps, self.n_prefill_tokens, self.n_decode_tokens, self.wall_ms
        );
        let _ = writeln!(
            s,
            "TTFT {}  decode {}  prefill {}",
            opt(self.ttft_ms, |v| format!("{v:.1} ms")),
            opt(self.decode_tokens_per_s, |v| format!("{v:.2} tok/s")),
            opt(self.prefill_tokens_per_s, |v| format!("{v:.1} tok/s")),
        );
        let _ = writeln!(
            s,
            "decode latency p50/p90/p99/max: {}",
            opt(self.decode_latency_ms, |[a, b, c, d]| format!(
                "{a:.2} / {b:.2} / {c:.2} / {d:.2} ms"
            ))
        );
        let _ = writeln!(
            s,
            "compute {:.1} ms  I/O busy {:.1} ms  exposed {:.1} ms  hidden {:.1} ms  overlap {}",
            self.compute_ms,
            self.io_ms,
            self.io_exposed_ms,
            self.io_hidden_ms,
            opt(self.overlap_ratio, |r| format!("{:.0}%", r * 100.0))
        );
        let _ = writeln!(
            s,
            "read {} in {} reads  engine cache hits/misses {}/{}",
            fmt_bytes(self.bytes_read),
            self.n_reads,
            self.cache_hits_misses.0,
            self.cache_hits_misses.1
        );
        if let Some(st) = &self.stalls {
            let per = |ns: u64| ms(ns) / st.tokens as f64;
            let idle: Vec<String> = stall_idle_rows(st)
                .iter()
                .take(4)
                .map(|(k, v)| format!("{} {:.1}", k.trim_start_matches("compute."), per(*v)))
                .collect();
            let _ = writeln!(
                s,
                "decode, ms/token: storage idle {:.1} ({})",
                per(st.storage_idle_total_ns()),
                idle.join(", ")
            );
            let _ = writeln!(
                s,
                "  waits {:.1}: expert queued {:.1}, reading {:.1}, repacking {:.1}, after {:.1}",
                per(st.wait_ns),
                per(st.wait_queued_ns),
                per(st.wait_reading_ns),
                per(st.wait_repacking_ns),
                per(st.wait_after_ns)
            );
        }
        let ops: Vec<String> = self
            .ops_ms
            .iter()
            .take(4)
            .map(|(k, v)| format!("{} {v:.1}", k.trim_start_matches("compute.")))
            .collect();
        if !ops.is_empty() {
            let _ = writeln!(s, "ops (ms): {}", ops.join("  "));
        }
        if self.mean_gini.is_some() {
            let loc: Vec<String> = self
                .locality
                .iter()
                .map(|l| format!("k={} {:.0}%", l.k, l.share * 100.0))
                .collect();
            let _ = writeln!(
                s,
                "routing: gini {}  zipf s {}  reuse {}",
                opt(self.mean_gini, |g| format!("{g:.2}")),
                opt(self.mean_zipf, |z| format!("{z:.2}")),
                loc.join(" ")
            );
        }
        for row in &self.cache_rows {
            let hr: Vec<String> = row
                .hit_ratios
                .iter()
                .map(|(p, r)| format!("{} {:.0}%", p.name(), r * 100.0))
                .collect();
            let mode = match row.mode {
                CapacityMode::PerLayer => "per layer",
                CapacityMode::Global => "global",
            };
            let _ = writeln!(
                s,
                "cache {mode} cap {} ({:.0}%): {}",
                row.capacity,
                row.fraction * 100.0,
                hr.join("  ")
            );
        }
        if let Some(kv) = &self.kv_last {
            let _ = writeln!(
                s,
                "KV @ {} positions: {} (global {}, sliding {}); all-global {}",
                kv.context_len,
                fmt_bytes(kv.total_bytes),
                fmt_bytes(kv.global_bytes),
                fmt_bytes(kv.sliding_bytes),
                opt(kv.all_global_baseline_bytes, fmt_bytes)
            );
        }
        if let Some((z, b)) = self.sparsity {
            let _ = writeln!(
                s,
                "ReGLU: {:.1}% zero activations, {} skipped",
                z * 100.0,
                fmt_bytes(b)
            );
        }
        s
    }

    /// `summary.md`: the same numbers as Markdown.
    pub fn render_markdown(&self) -> String {
        let mut s = String::from("# Profile summary\n\n");
        s.push_str("| metric | value |\n|---|---|\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "| {k} | {v} |");
        };
        row("forward steps", self.n_steps.to_string());
        row("prefill tokens", self.n_prefill_tokens.to_string());
        row("decode tokens", self.n_decode_tokens.to_string());
        row("TTFT", opt(self.ttft_ms, |v| format!("{v:.2} ms")));
        row(
            "decode tokens/s",
            opt(self.decode_tokens_per_s, |v| format!("{v:.2}")),
        );
        row(
            "prefill tokens/s",
            opt(self.prefill_tokens_per_s, |v| format!("{v:.2}")),
        );
        row(
            "decode latency p50 / p90 / p99 / max",
            opt(self.decode_latency_ms, |[a, b, c, d]| {
                format!("{a:.3} / {b:.3} / {c:.3} / {d:.3} ms")
            }),
        );
        row("wall time", format!("{:.2} ms", self.wall_ms));
        row("compute busy", format!("{:.2} ms", self.compute_ms));
        row("I/O busy", format!("{:.2} ms", self.io_ms));
        row(
            "exposed I/O (waited)",
            format!("{:.2} ms", self.io_exposed_ms),
        );
        row(
            "hidden I/O (overlapped)",
            format!("{:.2} ms", self.io_hidden_ms),
        );
        row(
            "overlap ratio",
            opt(self.overlap_ratio, |r| format!("{:.1}%", r * 100.0)),
        );
        row(
            "bytes read",
            format!("{} ({} reads)", fmt_bytes(self.bytes_read), self.n_reads),
        );
        row(
            "engine cache hits / misses",
            format!(
                "{} / {}",
                self.cache_hits_misses.0, self.cache_hits_misses.1
            ),
        );
        if let Some((z, b)) = self.sparsity {
            row("ReGLU zero activations", format!("{:.2}%", z * 100.0));
            row("bytes skipped", fmt_bytes(b));
        }
        if !self.ops_ms.is_empty() {
            s.push_str("\n## Compute by op (CPU time, inclusive)\n\n| op | ms |\n|---|---|\n");
            for (k, v) in &self.ops_ms {
                let _ = writeln!(s, "| `{k}` | {v:.3} |");
            }
        }
        if let Some(st) = &self.stalls {
            let per = |ns: u64| ms(ns) / st.tokens as f64;
            let share = |ns: u64, of: u64| {
                if of == 0 {
                    "n/a".to_owned()
                } else {
                    format!("{:.0}%", ns as f64 * 100.0 / of as f64)
                }
            };
            let _ = writeln!(
                s,
                "\n## Decode under offloading: why it waits\n\n{} decode steps, {} tokens, {:.2} ms/token; \
                 an expert read in flight {:.2} ms/token.\n",
                st.steps,
                st.tokens,
                per(st.wall_ns),
                per(st.io_busy_ns)
            );
            s.push_str(
                "| storage idle (no expert read in flight) while the compute side was in | ms/token | share |\n|---|---|---|\n",
            );
            let idle = st.storage_idle_total_ns();
            for (k, v) in stall_idle_rows(st) {
                let _ = writeln!(s, "| `{k}` | {:.2} | {} |", per(v), share(v, idle));
            }
            let _ = writeln!(s, "| total | {:.2} | |", per(idle));
            let _ = writeln!(
                s,
                "\n| waits ({} `io.wait`), the awaited expert was | ms/token | share |\n|---|---|---|",
                st.waits
            );
            for (k, v) in [
                ("queued (its read had not started)", st.wait_queued_ns),
                ("being read", st.wait_reading_ns),
                ("being repacked", st.wait_repacking_ns),
                ("ready (hand-off to the waiting thread)", st.wait_after_ns),
            ] {
                let _ = writeln!(s, "| {k} | {:.2} | {} |", per(v), share(v, st.wait_ns));
            }
            let _ = writeln!(s, "| total | {:.2} | |", per(st.wait_ns));
        }
        if self.mean_gini.is_some() {
            s.push_str("\n## Routing\n\n");
            let _ = writeln!(
                s,
                "Mean Gini {}, mean Zipf exponent {}.\n",
                opt(self.mean_gini, |g| format!("{g:.3}")),
                opt(self.mean_zipf, |z| format!("{z:.3}"))
            );
            s.push_str("| previous k tokens | re-selected |\n|---|---|\n");
            for l in &self.locality {
                let _ = writeln!(s, "| {} | {:.1}% |", l.k, l.share * 100.0);
            }
        }
        if !self.cache_rows.is_empty() {
            s.push_str("\n## Simulated expert cache (hit ratio)\n\n| mode | capacity |");
            let policies: Vec<Policy> = self.cache_rows[0].hit_ratios.iter().map(|p| p.0).collect();
            for p in &policies {
                let _ = write!(s, " {} |", p.name());
            }
            s.push_str("\n|---|---|");
            s.push_str(&"---|".repeat(policies.len()));
            s.push('\n');
            for r in &self.cache_rows {
                let _ = write!(
                    s,
                    "| {:?} | {} ({:.0}%) |",
                    r.mode,
                    r.capacity,
                    r.fraction * 100.0
                );
                for (_, h) in &r.hit_ratios {
                    let _ = write!(s, " {:.1}% |", h * 100.0);
                }
                s.push('\n');
            }
        }
        if let Some(kv) = &self.kv_last {
            s.push_str("\n## KV cache at the longest context\n\n");
            let _ = writeln!(
                s,
                "{} positions: {} total ({} global in {} layers, {} sliding in {} layers); \
                 all-global baseline {}, saved {}.",
                kv.context_len,
                fmt_bytes(kv.total_bytes),
                fmt_bytes(kv.global_bytes),
                kv.n_global_layers,
                fmt_bytes(kv.sliding_bytes),
                kv.n_sliding_layers,
                opt(kv.all_global_baseline_bytes, fmt_bytes),
                opt(kv.saved_bytes, |b| {
                    if b < 0 {
                        format!("-{}", fmt_bytes(b.unsigned_abs()))
                    } else {
                        fmt_bytes(b as u64)
                    }
                })
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fmt_bytes_units() {
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.50 KiB");
        assert_eq!(fmt_bytes(3 << 30), "3.00 GiB");
    }
}
