//! Latency: per-step latency percentiles (hdrhistogram), time to first token and tokens/s, from
//! the `forward` spans.
//!
//! A step is prefill if its `phase` is `"prefill"`, decode if `"decode"`; without a `phase` the
//! first step is prefill and the rest decode. TTFT is from the start of the first step to the end
//! of the last prefill step before the first decode step (the step that yields the first token).
//! Decode tokens/s is decode tokens over the wall time from the first decode step's start to the
//! last one's end (so gaps between steps, e.g. sampling, count).

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::recording::{Recording, SpanRecord};

/// Largest latency the histogram tracks (one hour, in ns); longer values are clamped.
const MAX_TRACKED_NS: u64 = 3_600_000_000_000;
/// Significant decimal digits of the histogram (relative error below 0.1%).
const SIG_FIGS: u8 = 3;

/// Latency percentiles of a set of steps, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Smallest.
    pub min_ns: u64,
    /// Mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest.
    pub max_ns: u64,
}

/// Summarises samples with an hdrhistogram (values within 0.1%; `None` for no samples).
pub fn percentiles(samples_ns: &[u64]) -> Result<Option<Percentiles>> {
    if samples_ns.is_empty() {
        return Ok(None);
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, MAX_TRACKED_NS, SIG_FIGS)
        .map_err(|e| Error::Histogram(e.to_string()))?;
    for &s in samples_ns {
        h.saturating_record(s.max(1));
    }
    Ok(Some(Percentiles {
        count: h.len(),
        min_ns: h.min(),
        mean_ns: h.mean(),
        p50_ns: h.value_at_quantile(0.5),
        p90_ns: h.value_at_quantile(0.9),
        p99_ns: h.value_at_quantile(0.99),
        max_ns: h.max(),
    }))
}

/// Latency numbers of a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// Number of `forward` steps.
    pub n_steps: usize,
    /// Tokens processed by prefill steps.
    pub n_prefill_tokens: u64,
    /// Decode steps (= generated tokens after the first).
    pub n_decode_tokens: u64,
    /// Time to first token.
    pub ttft_ns: Option<u64>,
    /// Prefill throughput (prefill tokens over prefill wall time).
    pub prefill_tokens_per_s: Option<f64>,
    /// Decode throughput.
    pub decode_tokens_per_s: Option<f64>,
    /// Percentiles of decode step latency.
    pub decode: Option<Percentiles>,
    /// Decode step latencies in order (ns).
    pub decode_step_ns: Vec<u64>,
}

fn is_prefill(index: usize, s: &SpanRecord) -> bool {
    match s.str("phase") {
        Some("prefill") => true,
        Some("decode") => false,
        _ => index == 0,
    }
}

fn per_s(tokens: u64, ns: u64) -> Option<f64> {
    (tokens > 0 && ns > 0).then(|| tokens as f64 * 1e9 / ns as f64)
}

/// Computes the [`LatencyReport`] of a recording.
pub fn latency(rec: &Recording) -> Result<LatencyReport> {
    let steps = rec.forward_steps();
    let mut r = LatencyReport {
        n_steps: steps.len(),
        ..LatencyReport::default()
    };
    let Some(first) = steps.first() else {
        return Ok(r);
    };
    let first_decode = steps
        .iter()
        .enumerate()
        .position(|(i, s)| !is_prefill(i, s));
    let prefill = &steps[..first_decode.unwrap_or(steps.len())];
    let decode: Vec<&SpanRecord> = steps
        .iter()
        .enumerate()
        .filter(|(i, s)| !is_prefill(*i, s))
        .map(|(_, s)| *s)
        .collect();
    if let Some(last_prefill) = prefill.last() {
        r.ttft_ns = Some(last_prefill.end_ns.saturating_sub(first.start_ns));
        r.n_prefill_tokens = prefill.iter().map(|s| s.u64("n_tokens").unwrap_or(1)).sum();
        let prefill_ns: u64 = prefill.iter().map(|s| s.dur_ns()).sum();
        r.prefill_tokens_per_s = per_s(r.n_prefill_tokens, prefill_ns);
    } else {
        r.ttft_ns = Some(first.dur_ns());
    }
    r.n_decode_tokens = decode.iter().map(|s| s.u64("n_tokens").unwrap_or(1)).sum();
    if let (Some(a), Some(b)) = (decode.first(), decode.last()) {
        r.decode_tokens_per_s = per_s(r.n_decode_tokens, b.end_ns.saturating_sub(a.start_ns));
    }
    r.decode_step_ns = decode.iter().map(|s| s.dur_ns()).collect();
    r.decode = percentiles(&r.decode_step_ns)?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::RecordingBuilder;

    /// hdrhistogram with 3 significant figures is within 0.1% of the exact value.
    const HDR_REL_TOL: f64 = 1e-3;

    fn close(a: u64, b: u64) -> bool {
        (a as f64 - b as f64).abs() <= HDR_REL_TOL * b as f64
    }

    #[test]
    fn percentiles_of_one_to_hundred_ms() {
        let samples: Vec<u64> = (1..=100).map(|i| i * 1_000_000).collect();
        let p = percentiles(&samples).expect("ok").expect("some");
        assert_eq!(p.count, 100);
        assert!(close(p.p50_ns, 50_000_000), "{p:?}");
        assert!(close(p.p90_ns, 90_000_000), "{p:?}");
        assert!(close(p.p99_ns, 99_000_000), "{p:?}");
        assert!(close(p.max_ns, 100_000_000), "{p:?}");
        assert!(close(p.min_ns, 1_000_000), "{p:?}");
        assert!((p.mean_ns - 50.5e6).abs() <= HDR_REL_TOL * 50.5e6);
        assert!(percentiles(&[]).expect("ok").is_none());
    }

    #[test]
    fn ttft_and_throughput_from_phases() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        // Two prefill chunks of 4 tokens: 0..100, 100..200 ns; decode steps of 10 ns each,
        // 5 ns apart.
        b.span(
            c,
            "forward",
            0,
            100,
            &[("phase", "prefill".into()), ("n_tokens", 4u64.into())],
        );
        b.span(
            c,
            "forward",
            100,
            200,
            &[("phase", "prefill".into()), ("n_tokens", 4u64.into())],
        );
        for i in 0..4u64 {
            let s = 205 + i * 15;
            b.span(
                c,
                "forward",
                s,
                s + 10,
                &[("phase", "decode".into()), ("n_tokens", 1u64.into())],
            );
        }
        let r = latency(&b.build()).expect("ok");
        assert_eq!(r.n_steps, 6);
        assert_eq!(r.ttft_ns, Some(200));
        assert_eq!(r.n_prefill_tokens, 8);
        assert_eq!(r.n_decode_tokens, 4);
        // 8 tokens in 200 ns; 4 tokens in 205..260 = 55 ns.
        assert!((r.prefill_tokens_per_s.expect("some") - 4e7).abs() < 1.0);
        assert!((r.decode_tokens_per_s.expect("some") - 4e9 / 55.0).abs() < 1.0);
        assert_eq!(r.decode_step_ns, vec![10; 4]);
        assert_eq!(r.decode.expect("some").max_ns, 10);
    }

    #[test]
    fn without_phase_first_step_is_prefill() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.span(c, "forward", 10, 50, &[]);
        b.span(c, "forward", 50, 60, &[]);
        let r = latency(&b.build()).expect("ok");
        assert_eq!(r.ttft_ns, Some(40));
        assert_eq!(r.n_decode_tokens, 1);
        assert_eq!(r.decode_step_ns, vec![10]);
    }

    #[test]
    fn empty_recording_has_no_latency() {
        let r = latency(&Recording::default()).expect("ok");
        assert_eq!(r.n_steps, 0);
        assert!(r.ttft_ns.is_none() && r.decode.is_none());
    }
}
