//! Micro benchmark of the profiler's capture overhead.
//!
//! Run with `cargo run --release -p profiler --example overhead`. Measures (1) the cost of an
//! entered-and-exited span with no subscriber, with the bare `tracing_subscriber` registry and
//! with the registry plus [`profiler::ProfileLayer`]; (2) a decode-like loop (per token and
//! layer: the engine's spans and events around a fixed amount of arithmetic) with and without
//! the layer, as a percentage slowdown.

use std::hint::black_box;
use std::time::{Duration, Instant};

use profiler::ProfileLayer;
use tracing_subscriber::prelude::*;

/// Spans per micro-benchmark run.
const N_SPANS: u64 = 1_000_000;
/// Layers per simulated token (SmallThinker-4B has 32).
const N_LAYERS: u64 = 32;
/// Simulated tokens.
const N_TOKENS: u64 = 50;
/// Multiply-adds of simulated work per layer.
const WORK_PER_LAYER: u64 = 100_000;

fn spans(n: u64) -> Duration {
    timed(|| {
        for i in 0..n {
            let _s = tracing::trace_span!(
                "compute.expert",
                layer = i & 31,
                expert = i & 7,
                n_tokens = 1u64
            )
            .entered();
        }
    })
    .0
}

fn work(seed: u64) -> f64 {
    let mut acc = seed as f64;
    for i in 0..WORK_PER_LAYER {
        acc = acc * 0.999_999 + i as f64 * 1e-9;
    }
    acc
}

fn decode(n_tokens: u64) -> (Duration, f64) {
    timed(|| decode_inner(n_tokens))
}

fn decode_inner(n_tokens: u64) -> f64 {
    let mut sink = 0.0;
    for token in 0..n_tokens {
        let _f =
            tracing::trace_span!("forward", token, n_tokens = 1u64, phase = "decode").entered();
        for layer in 0..N_LAYERS {
            {
                let _a = tracing::trace_span!("compute.attention", layer, token, n_tokens = 1u64)
                    .entered();
                sink += work(layer);
            }
            {
                let _r =
                    tracing::trace_span!("compute.router", layer, token, n_tokens = 1u64).entered();
                let experts = format!("{},{},{},{}", layer % 8, 8 + layer % 8, 16, 24);
                tracing::trace!(target: "engine::routing", token, layer, experts = %experts,
                    weights = "0.4,0.3,0.2,0.1", "route");
            }
            let _x = tracing::trace_span!(
                "compute.experts",
                layer,
                token,
                n_tokens = 1u64,
                n_experts = 4u64
            )
            .entered();
            for expert in 0..4u64 {
                let _e = tracing::trace_span!("compute.expert", layer, expert, n_tokens = 1u64)
                    .entered();
                sink += work(expert) * 1e-3;
            }
            tracing::trace!(target: "engine::moe", layer, token, n_neurons = 4096u64, n_active = 400u64, "sparsity");
            let _k = tracing::trace_span!("kv.append", layer, n_tokens = 1u64, bytes = 1024u64)
                .entered();
        }
    }
    sink
}

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`), so the numbers
/// hold on a machine shared with other work; falls back to wall time elsewhere.
fn cpu_now() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        s.split_whitespace().next()?.parse().ok()?,
    ))
}

/// Runs `f` and returns its on-CPU time (or wall time without schedstat).
fn timed<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let (c0, t0) = (cpu_now(), Instant::now());
    let out = f();
    let d = match (c0, cpu_now()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => t0.elapsed(),
    };
    (d, out)
}

fn per_span_ns(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn main() {
    // Warm up.
    black_box(spans(10_000));
    let none = spans(N_SPANS);

    let registry = tracing::Dispatch::new(tracing_subscriber::registry());
    let bare = tracing::dispatcher::with_default(&registry, || spans(N_SPANS));

    let (layer, handle) = ProfileLayer::new();
    let profiled = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let with = tracing::dispatcher::with_default(&profiled, || spans(N_SPANS));
    let (take, rec) = timed(|| handle.take());

    println!("span enter+exit (create, 3 fields), {N_SPANS} spans, on-CPU time:");
    for (name, d) in [
        ("no subscriber", none),
        ("registry", bare),
        ("registry + ProfileLayer", with),
    ] {
        println!(
            "  {name:<26} {:>7.1} ns/span  {:>6.2} M spans/s",
            per_span_ns(d, N_SPANS),
            N_SPANS as f64 / d.as_secs_f64() / 1e6
        );
    }
    println!(
        "  layer cost over registry: {:.1} ns/span; take() of {} spans: {:.1} ms",
        per_span_ns(with, N_SPANS) - per_span_ns(bare, N_SPANS),
        rec.spans.len(),
        take.as_secs_f64() * 1e3
    );
    drop(rec);
    if std::env::args().nth(1).as_deref() == Some("micro") {
        return;
    }

    // Decode-like loop: alternate runs, keep the best of each to reduce noise.
    let mut best_off = Duration::MAX;
    let mut best_on = Duration::MAX;
    let mut sink = 0.0;
    let (layer, handle) = ProfileLayer::new();
    let profiled = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    for _ in 0..5 {
        let (d, s) = decode(N_TOKENS);
        best_off = best_off.min(d);
        sink += s;
        let (d, s) = tracing::dispatcher::with_default(&profiled, || decode(N_TOKENS));
        best_on = best_on.min(d);
        sink += s;
        black_box(handle.take());
    }
    black_box(sink);
    let spans_per_token = 1 + N_LAYERS * 8;
    let events_per_token = N_LAYERS * 2;
    let tok_off = best_off.as_secs_f64() / N_TOKENS as f64;
    let tok_on = best_on.as_secs_f64() / N_TOKENS as f64;
    println!(
        "decode-like loop: {N_TOKENS} tokens x {N_LAYERS} layers, {spans_per_token} spans + \
         {events_per_token} events per token:"
    );
    println!(
        "  without layer {:.3} ms/token, with layer {:.3} ms/token: {:+.2}% ({:.1} us/token)",
        tok_off * 1e3,
        tok_on * 1e3,
        (tok_on / tok_off - 1.0) * 100.0,
        (tok_on - tok_off) * 1e6
    );
}
