//! Server counters and gauges, rendered in the Prometheus text exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// An `f64` stored in an atomic.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// Adds to the value (single writer: the generation thread).
    pub fn add(&self, v: f64) {
        self.set(self.get() + v);
    }
    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Everything `/metrics` reports.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests accepted into the queue.
    pub requests: AtomicU64,
    /// Requests answered 429 because the queue was full.
    pub rejected_queue_full: AtomicU64,
    /// Requests answered 4xx because they were invalid (including 413).
    pub rejected_invalid: AtomicU64,
    /// Generations that ran to their end.
    pub completed: AtomicU64,
    /// Generations stopped because the client went away (or the server shut down).
    pub cancelled: AtomicU64,
    /// Generations that failed inside the engine.
    pub failed: AtomicU64,
    /// Prompt tokens evaluated.
    pub prompt_tokens: AtomicU64,
    /// Prompt tokens whose KV entries were reused.
    pub prompt_tokens_cached: AtomicU64,
    /// Tokens generated.
    pub tokens_generated: AtomicU64,
    /// Seconds spent on prompts.
    pub prompt_seconds: AtomicF64,
    /// Seconds spent generating.
    pub generation_seconds: AtomicF64,
    /// Prompt speed of the last request.
    pub prompt_tps: AtomicF64,
    /// Generation speed of the last request.
    pub generation_tps: AtomicF64,
    /// Requests waiting in the queue.
    pub queue_depth: AtomicU64,
    /// Capacity of the queue.
    pub queue_capacity: AtomicU64,
    /// Requests being generated (0 or 1).
    pub processing: AtomicU64,
    /// Bytes allocated by the KV cache.
    pub kv_bytes: AtomicU64,
    /// Positions held in the KV cache.
    pub kv_tokens: AtomicU64,
    /// Positions the context holds.
    pub ctx: AtomicU64,
    /// Expert neurons evaluated, cumulative.
    pub expert_neurons: AtomicU64,
    /// Expert neurons with a positive gate, cumulative.
    pub expert_neurons_active: AtomicU64,
    /// Weight bytes not read thanks to zero activations, cumulative.
    pub expert_bytes_skipped: AtomicU64,
}

impl Metrics {
    /// The Prometheus text page.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let u = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut put = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(s, "# HELP thinker_{name} {help}");
            let _ = writeln!(s, "# TYPE thinker_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(s, "thinker_{name}{labels} {v}");
            }
        };
        put(
            "requests_total",
            "counter",
            "Requests accepted into the queue.",
            &[("", u(&self.requests))],
        );
        put(
            "requests_rejected_total",
            "counter",
            "Requests refused: queue full (429) or invalid (4xx).",
            &[
                ("{reason=\"queue_full\"}", u(&self.rejected_queue_full)),
                ("{reason=\"invalid\"}", u(&self.rejected_invalid)),
            ],
        );
        put(
            "requests_finished_total",
            "counter",
            "Generations by outcome.",
            &[
                ("{outcome=\"completed\"}", u(&self.completed)),
                ("{outcome=\"cancelled\"}", u(&self.cancelled)),
                ("{outcome=\"failed\"}", u(&self.failed)),
            ],
        );
        put(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens evaluated.",
            &[("", u(&self.prompt_tokens))],
        );
        put(
            "prompt_tokens_cached_total",
            "counter",
            "Prompt tokens served from the KV cache of the previous request.",
            &[("", u(&self.prompt_tokens_cached))],
        );
        put(
            "tokens_generated_total",
            "counter",
            "Tokens generated.",
            &[("", u(&self.tokens_generated))],
        );
        put(
            "prompt_seconds_total",
            "counter",
            "Seconds spent evaluating prompts.",
            &[("", self.prompt_seconds.get())],
        );
        put(
            "generation_seconds_total",
            "counter",
            "Seconds spent generating tokens.",
            &[("", self.generation_seconds.get())],
        );
        put(
            "prompt_tokens_per_second",
            "gauge",
            "Prompt speed of the last request.",
            &[("", self.prompt_tps.get())],
        );
        put(
            "generation_tokens_per_second",
            "gauge",
            "Generation speed of the last request.",
            &[("", self.generation_tps.get())],
        );
        put(
            "queue_depth",
            "gauge",
            "Requests waiting for the generation thread.",
            &[("", u(&self.queue_depth))],
        );
        put(
            "queue_capacity",
            "gauge",
            "Requests that may wait before new ones get 429.",
            &[("", u(&self.queue_capacity))],
        );
        put(
            "requests_processing",
            "gauge",
            "Requests being generated.",
            &[("", u(&self.processing))],
        );
        put(
            "kv_cache_bytes",
            "gauge",
            "Bytes allocated by the KV cache.",
            &[("", u(&self.kv_bytes))],
        );
        put(
            "kv_cache_tokens",
            "gauge",
            "Positions held in the KV cache.",
            &[("", u(&self.kv_tokens))],
        );
        put(
            "context_size",
            "gauge",
            "Positions the context holds.",
            &[("", u(&self.ctx))],
        );
        let n = u(&self.expert_neurons);
        put(
            "expert_neurons_active_ratio",
            "gauge",
            "Fraction of evaluated expert neurons whose gate was positive.",
            &[(
                "",
                if n > 0.0 {
                    u(&self.expert_neurons_active) / n
                } else {
                    0.0
                },
            )],
        );
        put(
            "expert_bytes_skipped_total",
            "counter",
            "Expert weight bytes not read thanks to zero activations.",
            &[("", u(&self.expert_bytes_skipped))],
        );
        put(
            "peak_rss_bytes",
            "gauge",
            "Peak resident set size of the process.",
            &[("", crate::gen_loop::peak_rss_bytes().unwrap_or(0) as f64)],
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sample_has_help_and_type() {
        let m = Metrics::default();
        m.requests.store(3, Ordering::Relaxed);
        m.generation_tps.set(12.5);
        let page = m.render();
        assert!(page.contains("\nthinker_requests_total 3\n"));
        assert!(page.contains("\nthinker_generation_tokens_per_second 12.5\n"));
        let mut typed = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(typed.contains(name), "{name} has no TYPE line");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
    }
}
