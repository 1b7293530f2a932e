//! I/O vs compute: per forward step (and over the whole recording), compute time by op, I/O busy
//! time, exposed and hidden I/O, the overlap ratio, bytes read and expert-cache hits.
//!
//! Definitions (all times are wall-clock unions, so parallel threads are not double counted,
//! except `compute_by_op_ns`):
//! - **compute_by_op_ns**: per span name starting with `compute.`, the summed duration of its
//!   intervals clipped to the window (CPU time; `compute.expert` is nested in `compute.experts`).
//! - **compute_busy_ns**: union over threads of that thread's `compute.*` time minus the time the
//!   same thread spent in `io.wait` or `io.expert_read` (a blocked thread is not computing).
//! - **io_busy_ns**: union of all `io.expert_read` intervals across all threads.
//! - **io_exposed_ns**: union of `io.wait` intervals plus synchronous reads (an `io.expert_read`
//!   on a thread while that thread is inside a `compute.*` span).
//! - **io_hidden_ns**: `io_busy ∩ compute_busy`: I/O that ran while some thread computed.
//! - **overlap_ratio**: `io_hidden / io_busy` (`None` without I/O).
//!
//! A step's window is its `forward` span `[start, end)`; reads and cache events are attributed to
//! the step in which they start. The aggregate uses the whole recording as one window, so I/O
//! outside any step (e.g. an early prefetch) is counted there.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::intervals::IntervalSet;
use crate::recording::{Recording, SpanRecord, names};

/// I/O and compute numbers of one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowOverlap {
    /// Window start (ns since origin).
    pub start_ns: u64,
    /// Window length.
    pub wall_ns: u64,
    /// CPU time per compute span name (inclusive, summed over threads).
    pub compute_by_op_ns: BTreeMap<String, u64>,
    /// Wall time during which some thread computed (see module docs).
    pub compute_busy_ns: u64,
    /// Wall time during which some expert read was in flight.
    pub io_busy_ns: u64,
    /// Wall time a compute thread was blocked on I/O.
    pub io_exposed_ns: u64,
    /// I/O time overlapped by compute.
    pub io_hidden_ns: u64,
    /// `io_hidden_ns / io_busy_ns`.
    pub overlap_ratio: Option<f64>,
    /// Bytes of the expert reads started in the window.
    pub bytes_read: u64,
    /// Number of expert reads started in the window.
    pub n_reads: u64,
    /// How many of them were prefetches (`prefetch = true`).
    pub n_prefetch_reads: u64,
    /// Expert-cache hits (`engine::moe` `cache` events with `hit = true`).
    pub cache_hits: u64,
    /// Expert-cache misses.
    pub cache_misses: u64,
}

/// One forward step's numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepOverlap {
    /// Index of the step in time order.
    pub index: usize,
    /// The `token` field of the `forward` span (absolute position of its first token).
    pub token: Option<u64>,
    /// Tokens processed by the step (`n_tokens`, default 1).
    pub n_tokens: u64,
    /// `"prefill"` / `"decode"` if the span said so.
    pub phase: Option<String>,
    /// The numbers for the step's window.
    #[serde(flatten)]
    pub window: WindowOverlap,
}

/// Per-step and aggregate I/O vs compute numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OverlapReport {
    /// One entry per `forward` span.
    pub steps: Vec<StepOverlap>,
    /// The whole recording as one window.
    pub total: WindowOverlap,
}

/// Interval sets of one recording, precomputed once for all windows.
struct Sets {
    compute_active: IntervalSet,
    io_busy: IntervalSet,
    io_exposed: IntervalSet,
}

fn sets(rec: &Recording) -> Sets {
    /// (compute, waits, reads) intervals of one thread.
    type ThreadSpans = (Vec<(u64, u64)>, Vec<(u64, u64)>, Vec<(u64, u64)>);
    let mut by_tid: HashMap<u32, ThreadSpans> = HashMap::new();
    let mut all_reads = Vec::new();
    let mut all_waits = Vec::new();
    for s in &rec.spans {
        let iv = (s.start_ns, s.end_ns);
        let e = by_tid.entry(s.tid).or_default();
        if s.name.starts_with(names::COMPUTE_PREFIX) {
            e.0.push(iv);
        } else if s.name == names::IO_WAIT {
            e.1.push(iv);
            all_waits.push(iv);
        } else if s.name == names::IO_EXPERT_READ {
            e.2.push(iv);
            all_reads.push(iv);
        }
    }
    let mut compute_active = IntervalSet::default();
    let mut sync_reads = IntervalSet::default();
    for (compute, waits, reads) in by_tid.into_values() {
        let c = IntervalSet::from_intervals(compute);
        let r = IntervalSet::from_intervals(reads);
        let blocked = IntervalSet::from_intervals(waits).union(&r);
        compute_active = compute_active.union(&c.subtract(&blocked));
        sync_reads = sync_reads.union(&r.intersect(&c));
    }
    Sets {
        compute_active,
        io_busy: IntervalSet::from_intervals(all_reads),
        io_exposed: IntervalSet::from_intervals(all_waits).union(&sync_reads),
    }
}

fn window(rec: &Recording, sets: &Sets, lo: u64, hi: u64) -> WindowOverlap {
    let mut w = WindowOverlap {
        start_ns: lo,
        wall_ns: hi.saturating_sub(lo),
        ..WindowOverlap::default()
    };
    for s in &rec.spans {
        if s.name.starts_with(names::COMPUTE_PREFIX) {
            let d = s.end_ns.min(hi).saturating_sub(s.start_ns.max(lo));
            if d > 0 {
                *w.compute_by_op_ns.entry(s.name.to_string()).or_default() += d;
            }
        } else if s.name == names::IO_EXPERT_READ && (lo..hi).contains(&s.start_ns) {
            w.n_reads += 1;
            w.bytes_read += s.u64("bytes").unwrap_or(0);
            if s.fields.get("prefetch").and_then(|v| v.as_bool()) == Some(true) {
                w.n_prefetch_reads += 1;
            }
        }
    }
    for e in rec.events_named(names::TARGET_MOE, names::EVENT_CACHE) {
        if (lo..hi).contains(&e.ts_ns) {
            match e.bool("hit") {
                Some(true) => w.cache_hits += 1,
                Some(false) => w.cache_misses += 1,
                None => {}
            }
        }
    }
    let compute = sets.compute_active.clip(lo, hi);
    let io = sets.io_busy.clip(lo, hi);
    w.compute_busy_ns = compute.total();
    w.io_busy_ns = io.total();
    w.io_exposed_ns = sets.io_exposed.clip(lo, hi).total();
    w.io_hidden_ns = io.intersect(&compute).total();
    w.overlap_ratio = (w.io_busy_ns > 0).then(|| w.io_hidden_ns as f64 / w.io_busy_ns as f64);
    w
}

/// Computes the [`OverlapReport`] of a recording.
pub fn overlap(rec: &Recording) -> OverlapReport {
    let sets = sets(rec);
    let steps = rec
        .forward_steps()
        .into_iter()
        .enumerate()
        .map(|(index, f): (usize, &SpanRecord)| StepOverlap {
            index,
            token: f.u64("token"),
            n_tokens: f.u64("n_tokens").unwrap_or(1),
            phase: f.str("phase").map(str::to_owned),
            window: window(rec, &sets, f.start_ns, f.end_ns),
        })
        .collect();
    // One past the end so reads starting at the very last instant are counted.
    let total = window(rec, &sets, rec.start_ns(), rec.end_ns().saturating_add(1));
    OverlapReport { steps, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::RecordingBuilder;

    /// Compute thread: attention [0,30), experts [30,100) with a wait [60,70) and an expert
    /// [70,100); I/O thread reads [20,70). Expected: io 50, compute 90, hidden [20,60) = 40,
    /// exposed 10, ratio 0.8.
    fn one_step() -> Recording {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        let io = b.thread("io-0");
        b.span(
            c,
            "forward",
            0,
            100,
            &[("token", 5u64.into()), ("phase", "decode".into())],
        );
        b.span(c, "compute.attention", 0, 30, &[("layer", 0u64.into())]);
        b.span(c, "compute.experts", 30, 100, &[("layer", 0u64.into())]);
        b.span(
            c,
            "io.wait",
            60,
            70,
            &[("layer", 0u64.into()), ("expert", 3u64.into())],
        );
        b.span(c, "compute.expert", 70, 100, &[("expert", 3u64.into())]);
        b.span(
            io,
            "io.expert_read",
            20,
            70,
            &[("bytes", 1000u64.into()), ("prefetch", true.into())],
        );
        b.event(c, "engine::moe", "cache", 35, &[("hit", false.into())]);
        b.event(c, "engine::moe", "cache", 36, &[("hit", true.into())]);
        b.build()
    }

    #[test]
    fn hand_built_step_has_known_overlap() {
        let r = overlap(&one_step());
        assert_eq!(r.steps.len(), 1);
        let s = &r.steps[0];
        assert_eq!(s.token, Some(5));
        assert_eq!(s.phase.as_deref(), Some("decode"));
        let w = &s.window;
        assert_eq!(w.wall_ns, 100);
        assert_eq!(w.compute_by_op_ns["compute.attention"], 30);
        assert_eq!(w.compute_by_op_ns["compute.experts"], 70);
        assert_eq!(w.compute_by_op_ns["compute.expert"], 30);
        assert_eq!(w.compute_busy_ns, 90);
        assert_eq!(w.io_busy_ns, 50);
        assert_eq!(w.io_hidden_ns, 40);
        assert_eq!(w.io_exposed_ns, 10);
        assert_eq!(w.overlap_ratio, Some(0.8));
        assert_eq!((w.bytes_read, w.n_reads, w.n_prefetch_reads), (1000, 1, 1));
        assert_eq!((w.cache_hits, w.cache_misses), (1, 1));
        assert_eq!(r.total.io_hidden_ns, 40);
    }

    #[test]
    fn synchronous_read_on_compute_thread_is_exposed_not_hidden() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.span(c, "forward", 0, 100, &[]);
        b.span(c, "compute.experts", 0, 100, &[]);
        b.span(c, "io.expert_read", 40, 60, &[("bytes", 7u64.into())]);
        let r = overlap(&b.build());
        let w = &r.steps[0].window;
        assert_eq!(w.io_busy_ns, 20);
        assert_eq!(w.io_exposed_ns, 20);
        assert_eq!(w.io_hidden_ns, 0);
        assert_eq!(w.compute_busy_ns, 80);
        assert_eq!(w.overlap_ratio, Some(0.0));
    }

    #[test]
    fn io_across_steps_is_clipped_and_prefetch_before_first_step_counts_in_total() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        let io = b.thread("io-0");
        b.span(io, "io.expert_read", 0, 10, &[("bytes", 1u64.into())]);
        b.span(c, "forward", 10, 50, &[("token", 0u64.into())]);
        b.span(c, "compute.attention", 10, 50, &[]);
        b.span(c, "forward", 50, 90, &[("token", 1u64.into())]);
        b.span(c, "compute.attention", 50, 90, &[]);
        // One read straddles the step boundary: 40..60.
        b.span(io, "io.expert_read", 40, 60, &[("bytes", 2u64.into())]);
        let r = overlap(&b.build());
        assert_eq!(r.steps.len(), 2);
        assert_eq!(r.steps[0].window.io_busy_ns, 10);
        assert_eq!(r.steps[1].window.io_busy_ns, 10);
        assert_eq!(r.steps[0].window.bytes_read, 2);
        assert_eq!(r.steps[1].window.bytes_read, 0);
        assert_eq!(r.total.io_busy_ns, 30);
        assert_eq!(r.total.bytes_read, 3);
        assert_eq!(r.total.io_hidden_ns, 20);
        assert_eq!(r.steps[1].window.overlap_ratio, Some(1.0));
    }

    #[test]
    fn no_io_gives_no_ratio() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.span(c, "forward", 0, 10, &[]);
        let r = overlap(&b.build());
        assert_eq!(r.steps[0].window.overlap_ratio, None);
        assert_eq!(r.steps[0].n_tokens, 1);
    }
}
