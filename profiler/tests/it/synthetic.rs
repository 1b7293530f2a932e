//! A synthetic engine run: one compute thread and two I/O threads emitting the spans and events
//! of `docs/spans.md`, with short sleeps standing in for work.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use profiler::{ProfileLayer, Recording};
use tracing_subscriber::prelude::*;

/// Layers of the synthetic model.
pub const N_LAYERS: u64 = 3;
/// Experts per layer.
pub const N_EXPERTS: u64 = 8;
/// Prefill chunk length.
pub const PREFILL: u64 = 4;
/// Decode steps.
pub const DECODE: u64 = 4;
/// Bytes of one expert slab.
pub const EXPERT_BYTES: u64 = 4096;
/// Simulated compute time of an attention block.
const ATTN: Duration = Duration::from_micros(300);
/// Simulated read time of an expert.
const READ: Duration = Duration::from_micros(500);
/// Simulated expert FFN time.
const FFN: Duration = Duration::from_micros(100);

/// Deterministic top-2 routing.
pub fn route(token: u64, layer: u64) -> [u64; 2] {
    let a = (token * 3 + layer) % N_EXPERTS;
    let b = (a + 1 + token % 2) % N_EXPERTS;
    [a, b]
}

struct ReadReq {
    layer: u64,
    expert: u64,
    done: mpsc::Sender<()>,
}

fn io_thread(rx: mpsc::Receiver<ReadReq>) {
    for r in rx {
        let _s = tracing::trace_span!(target: "engine::moe", "io.expert_read",
            layer = r.layer, expert = r.expert, bytes = EXPERT_BYTES, prefetch = true)
        .entered();
        thread::sleep(READ);
        let _ = r.done.send(());
    }
}

fn step(token: u64, n_tokens: u64, phase: &str, io: &[mpsc::Sender<ReadReq>]) {
    let _f =
        tracing::trace_span!(target: "engine::model", "forward", token, n_tokens, phase).entered();
    {
        let _e = tracing::trace_span!(target: "engine::model", "compute.embed", token, n_tokens)
            .entered();
    }
    for layer in 0..N_LAYERS {
        let experts = route(token + n_tokens - 1, layer);
        // Issue the reads first so they overlap the attention block.
        let mut pending = Vec::new();
        for (i, &expert) in experts.iter().enumerate() {
            let (tx, rx) = mpsc::channel();
            let _ = io[i % io.len()].send(ReadReq {
                layer,
                expert,
                done: tx,
            });
            pending.push((expert, rx));
        }
        {
            let _a = tracing::trace_span!(target: "engine::model", "compute.attention", layer, token, n_tokens).entered();
            thread::sleep(ATTN);
        }
        {
            let _r = tracing::trace_span!(target: "engine::model", "compute.router", layer, token, n_tokens).entered();
            for t in token..token + n_tokens {
                let e = route(t, layer);
                tracing::trace!(target: "engine::routing", token = t, layer,
                    experts = %format!("{},{}", e[0], e[1]), weights = "0.6,0.4", "route");
            }
        }
        let _x = tracing::trace_span!(target: "engine::moe", "compute.experts", layer, token, n_tokens, n_experts = 2u64).entered();
        for (expert, rx) in pending {
            {
                let _w = tracing::trace_span!(target: "engine::moe", "io.wait", layer, expert, bytes = EXPERT_BYTES).entered();
                let _ = rx.recv();
            }
            tracing::trace!(target: "engine::moe", layer, expert, hit = false, "cache");
            let _e = tracing::trace_span!(target: "engine::moe", "compute.expert", layer, expert, n_tokens).entered();
            thread::sleep(FFN);
        }
        tracing::trace!(target: "engine::moe", layer, token, n_neurons = 1000u64 * n_tokens,
            n_active = 100u64 * n_tokens, bytes_skipped = 900u64 * n_tokens, "sparsity");
    }
    {
        let _h = tracing::trace_span!(target: "engine::model", "compute.lm_head", token, n_tokens)
            .entered();
    }
    let n_positions = token + n_tokens;
    for layer in 0..N_LAYERS {
        let _k = tracing::trace_span!(target: "engine::kv_cache", "kv.append", layer, n_tokens, bytes = 64u64 * n_tokens).entered();
        let (kind, n) = if layer == 0 {
            ("global", n_positions)
        } else {
            ("sliding", n_positions.min(2))
        };
        tracing::trace!(target: "engine::kv", layer, kind, allocated_bytes = 64 * n, n_positions = n, "kv_bytes");
    }
}

/// Runs the synthetic engine under a `ProfileLayer` and returns the recording.
pub fn run() -> Recording {
    let (layer, handle) = ProfileLayer::new();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(layer));
    let mut senders = Vec::new();
    let mut joins = Vec::new();
    for i in 0..2 {
        let (tx, rx) = mpsc::channel();
        senders.push(tx);
        let d = dispatch.clone();
        joins.push(
            thread::Builder::new()
                .name(format!("io-{i}"))
                .spawn(move || tracing::dispatcher::with_default(&d, || io_thread(rx)))
                .expect("spawn io thread"),
        );
    }
    tracing::dispatcher::with_default(&dispatch, || {
        step(0, PREFILL, "prefill", &senders);
        for i in 0..DECODE {
            step(PREFILL + i, 1, "decode", &senders);
        }
    });
    drop(senders);
    for j in joins {
        j.join().expect("io thread");
    }
    handle.take()
}
