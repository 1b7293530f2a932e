//! Why offloaded decoding waits: where the storage sat idle, and what each wait was waiting for.
//!
//! Under a memory budget a decode step is bound by storage (the missed experts' bytes) or by
//! compute, and the [`overlap`](crate::overlap) ratio says how much of the one hid the other. This
//! analysis says why the rest did not, over the decode steps (`forward` spans with `phase =
//! "decode"`; every step if no step names its phase):
//!
//! - **Storage idle**, by what the compute side was doing: the time no `io.expert_read` was in
//!   flight, labelled with the innermost span the compute side was in at that moment
//!   (`compute.lm_head`, `compute.attention`, `compute.experts`, `compute.router`, `io.wait`, ...;
//!   `other` when it was between spans). The compute side is every thread that carries a
//!   `forward` or an `io.wait` span (not the I/O threads, not the helper threads of a parallel
//!   kernel). Idle storage during `compute.lm_head` cannot be filled (the next token's experts are
//!   not known before it is sampled); idle storage during `io.wait` means the compute side waited
//!   with no read in flight (a repack after a read was running, or the hand-off of a finished
//!   read); idle storage during the layers' own work means nothing was predicted far enough ahead
//!   to read.
//! - **Waits by cause**: each `io.wait` span, split by what the expert it names (`layer`,
//!   `expert`) was doing meanwhile. The read is the first `io.expert_read` of that expert ending
//!   after the wait began (else the last one before it); its repack is the `io.repack` of the same
//!   expert that follows it on the same thread.
//!   - `queued`: its read had not started;
//!   - `reading`: its read was in progress (the device, shared with the other reads in flight);
//!   - `repacking`: its read was over and its repacks were still running (the I/O thread's
//!     `io.repack` span: waiting for the repack threads, or repacking itself);
//!   - `after`: read and repack had finished: the hand-off to the waiting thread (wake-up,
//!     scheduling), or a wait for whichever of several experts came first that ended on another.
//!
//! Every duration is clipped to the decode steps' windows; the four causes add up to the waits'
//! total, and the idle labels to the storage's idle time.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::intervals::IntervalSet;
use crate::recording::{Recording, SpanRecord, names};

/// Label of storage-idle time spent between spans of the compute side.
pub const OTHER: &str = "other";

/// What [`stalls`] found over the decode steps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StallReport {
    /// Decode steps analysed.
    pub steps: u64,
    /// Tokens those steps decoded.
    pub tokens: u64,
    /// Their wall time.
    pub wall_ns: u64,
    /// Time at least one expert read was in flight.
    pub io_busy_ns: u64,
    /// Time no expert read was in flight, by the compute side's innermost span then (see module
    /// docs); sums to `wall_ns - io_busy_ns`.
    pub storage_idle_ns: BTreeMap<String, u64>,
    /// `io.wait` spans.
    pub waits: u64,
    /// Their total time.
    pub wait_ns: u64,
    /// Waiting while the expert's read had not started.
    pub wait_queued_ns: u64,
    /// Waiting while it was being read.
    pub wait_reading_ns: u64,
    /// Waiting while it was being repacked.
    pub wait_repacking_ns: u64,
    /// Waiting after its read and repack had finished.
    pub wait_after_ns: u64,
}

impl StallReport {
    /// Total storage-idle time.
    pub fn storage_idle_total_ns(&self) -> u64 {
        self.storage_idle_ns.values().sum()
    }
}

/// The decode windows: `forward` spans with `phase = "decode"`, or every step if none names a
/// phase. Returns `(start, end, tokens)`.
fn decode_windows(rec: &Recording) -> Vec<(u64, u64, u64)> {
    let steps = rec.forward_steps();
    let any_phase = steps.iter().any(|s| s.str("phase").is_some());
    steps
        .into_iter()
        .filter(|s| !any_phase || s.str("phase") == Some("decode"))
        .map(|s| (s.start_ns, s.end_ns, s.u64("n_tokens").unwrap_or(1)))
        .collect()
}

/// Per span name, the time a thread spent in that span and in none nested inside it. Spans of one
/// thread nest (a child is clipped to its parent).
fn exclusive_by_name<'a>(spans: &mut [&'a SpanRecord]) -> HashMap<&'a str, Vec<(u64, u64)>> {
    spans.sort_by_key(|s| (s.start_ns, std::cmp::Reverse(s.end_ns)));
    let mut out: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    let mut emit = |name: &'a str, a: u64, b: u64| {
        if b > a {
            out.entry(name).or_default().push((a, b));
        }
    };
    let mut stack: Vec<(u64, &'a str)> = Vec::new();
    let mut t = 0u64;
    for s in spans.iter() {
        while let Some(&(end, name)) = stack.last() {
            if end > s.start_ns {
                break;
            }
            emit(name, t, end);
            t = end;
            stack.pop();
        }
        if let Some(&(_, name)) = stack.last() {
            emit(name, t, s.start_ns);
        }
        t = s.start_ns;
        let end = stack.last().map_or(s.end_ns, |&(pe, _)| s.end_ns.min(pe));
        stack.push((end, s.name.as_ref()));
    }
    while let Some((end, name)) = stack.pop() {
        emit(name, t, end);
        t = t.max(end);
    }
    out
}

/// The storage-idle labels, most specific first: `io.wait`, then the compute spans, then the
/// rest by name (`forward` itself is not a label: time only inside it is [`OTHER`]).
fn label_order<'a>(names_seen: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = names_seen.filter(|n| *n != names::FORWARD).collect();
    v.sort_by_key(|n| {
        (
            if *n == names::IO_WAIT {
                0
            } else if n.starts_with(names::COMPUTE_PREFIX) {
                1
            } else {
                2
            },
            *n,
        )
    });
    v.dedup();
    v
}

type Key = (u64, u64);

fn key_of(s: &SpanRecord) -> Option<Key> {
    Some((s.u64("layer")?, s.u64("expert")?))
}

/// Computes the [`StallReport`] of a recording.
pub fn stalls(rec: &Recording) -> StallReport {
    let windows = decode_windows(rec);
    let mut r = StallReport {
        steps: windows.len() as u64,
        tokens: windows.iter().map(|w| w.2).sum(),
        ..StallReport::default()
    };
    let win = IntervalSet::from_intervals(windows.iter().map(|&(a, b, _)| (a, b)));
    r.wall_ns = win.total();
    if windows.is_empty() {
        return r;
    }

    // Storage busy and idle.
    let busy = IntervalSet::from_intervals(
        rec.spans_named(names::IO_EXPERT_READ)
            .map(|s| (s.start_ns, s.end_ns)),
    )
    .intersect(&win);
    r.io_busy_ns = busy.total();
    let mut idle = win.subtract(&busy);

    // The compute side's innermost span at each instant.
    let compute_side: HashSet<u32> = rec
        .spans
        .iter()
        .filter(|s| s.name == names::FORWARD || s.name == names::IO_WAIT)
        .map(|s| s.tid)
        .collect();
    let mut by_thread: HashMap<u32, Vec<&SpanRecord>> = HashMap::new();
    for s in rec.spans.iter().filter(|s| compute_side.contains(&s.tid)) {
        by_thread.entry(s.tid).or_default().push(s);
    }
    let mut labelled: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for spans in by_thread.values_mut() {
        for (name, ivs) in exclusive_by_name(spans) {
            labelled.entry(name).or_default().extend(ivs);
        }
    }
    for name in label_order(labelled.keys().copied()) {
        let set = IntervalSet::from_intervals(labelled[name].iter().copied());
        let part = idle.intersect(&set);
        let t = part.total();
        if t > 0 {
            r.storage_idle_ns.insert(name.to_string(), t);
            idle = idle.subtract(&part);
        }
    }
    let rest = idle.total();
    if rest > 0 {
        r.storage_idle_ns.insert(OTHER.to_string(), rest);
    }

    // Waits by cause.
    let mut reads: HashMap<Key, Vec<&SpanRecord>> = HashMap::new();
    for s in rec.spans_named(names::IO_EXPERT_READ) {
        if let Some(k) = key_of(s) {
            reads.entry(k).or_default().push(s);
        }
    }
    for v in reads.values_mut() {
        v.sort_by_key(|s| s.end_ns);
    }
    let mut repacks: HashMap<(Key, u32), Vec<&SpanRecord>> = HashMap::new();
    for s in rec.spans_named(names::IO_REPACK) {
        if let Some(k) = key_of(s) {
            repacks.entry((k, s.tid)).or_default().push(s);
        }
    }
    for v in repacks.values_mut() {
        v.sort_by_key(|s| s.start_ns);
    }
    for w in rec.spans_named(names::IO_WAIT) {
        let wait = IntervalSet::from_intervals([(w.start_ns, w.end_ns)]).intersect(&win);
        let total = wait.total();
        if total == 0 {
            continue;
        }
        r.waits += 1;
        r.wait_ns += total;
        // The repack that followed a read of the same expert on the same thread, if any.
        let repack_of = |read: &SpanRecord| {
            key_of(read)
                .and_then(|k| repacks.get(&(k, read.tid)))
                .and_then(|v| v.get(v.partition_point(|s| s.start_ns < read.end_ns)))
                .copied()
        };
        let read = key_of(w).and_then(|k| {
            let v = reads.get(&k)?;
            let i = v.partition_point(|s| s.end_ns <= w.start_ns);
            // The read in progress when the wait began, or the next one if it starts in time.
            if let Some(next) = v.get(i).filter(|s| s.start_ns < w.end_ns) {
                return Some(*next);
            }
            // Else the last read before the wait: the one waited for if it had no successor
            // (the hand-off) or its repack was still running when the wait began. A read that
            // finished, repack and all, before a wait that a later read ended belongs to an
            // earlier residency.
            let prev = *i.checked_sub(1).and_then(|j| v.get(j))?;
            let repack_end = repack_of(prev).map_or(prev.end_ns, |p| p.end_ns);
            (v.get(i).is_none() || repack_end > w.start_ns).then_some(prev)
        });
        let Some(read) = read else {
            r.wait_queued_ns += total;
            continue;
        };
        let repack = repack_of(read);
        let span = |a: u64, b: u64| IntervalSet::from_intervals([(a, b)]);
        let queued = wait.intersect(&span(0, read.start_ns)).total();
        let reading = wait.intersect(&span(read.start_ns, read.end_ns)).total();
        let repacking = repack.map_or(0, |p| {
            wait.intersect(&span(p.start_ns.max(read.end_ns), p.end_ns))
                .total()
        });
        r.wait_queued_ns += queued;
        r.wait_reading_ns += reading;
        r.wait_repacking_ns += repacking;
        r.wait_after_ns += total - queued - reading - repacking;
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::RecordingBuilder;

    fn le(layer: u64, expert: u64) -> [(&'static str, crate::FieldValue); 2] {
        [("layer", layer.into()), ("expert", expert.into())]
    }

    /// One decode step [0, 100) on the compute thread: router [0, 5), attention [5, 20), experts
    /// [20, 80) with a wait [30, 60) for expert (0, 3), LM head [80, 100). The I/O thread reads
    /// (0, 3) over [25, 50) and repacks it over [50, 55). A prefill step after it, with a wait
    /// and a read, is left out.
    fn one_decode_step() -> Recording {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        let io = b.thread("io-0");
        let w = b.thread("worker");
        b.span(c, "forward", 100, 200, &[("phase", "prefill".into())]);
        b.span(c, "io.wait", 120, 150, &le(0, 4));
        b.span(io, "io.expert_read", 110, 150, &le(0, 4));
        b.span(
            c,
            "forward",
            0,
            100,
            &[("phase", "decode".into()), ("n_tokens", 1u64.into())],
        );
        b.span(c, "compute.router", 0, 5, &[]);
        b.span(c, "compute.attention", 5, 20, &[]);
        b.span(c, "compute.experts", 20, 80, &[]);
        b.span(c, "io.wait", 30, 60, &le(0, 3));
        b.span(c, "compute.lm_head", 80, 100, &[]);
        // A helper thread's kernel span does not label anything.
        b.span(w, "compute.expert", 0, 100, &[]);
        b.span(io, "io.expert_read", 25, 50, &le(0, 3));
        b.span(io, "io.repack", 50, 55, &le(0, 3));
        b.build()
    }

    #[test]
    fn hand_built_step_splits_idle_storage_and_the_wait() {
        let r = stalls(&one_decode_step());
        assert_eq!(
            (r.steps, r.tokens, r.wall_ns, r.io_busy_ns),
            (1, 1, 100, 25)
        );
        let idle: Vec<(&str, u64)> = r
            .storage_idle_ns
            .iter()
            .map(|(k, &v)| (k.as_str(), v))
            .collect();
        // Idle: [0,25) = router 5 + attention 15 + experts 5; [50,100) = wait 10 + experts 20 +
        // LM head 20.
        assert_eq!(
            idle,
            vec![
                ("compute.attention", 15),
                ("compute.experts", 25),
                ("compute.lm_head", 20),
                ("compute.router", 5),
                ("io.wait", 10),
            ]
        );
        assert_eq!(r.storage_idle_total_ns(), r.wall_ns - r.io_busy_ns);
        assert_eq!((r.waits, r.wait_ns), (1, 30));
        assert_eq!(r.wait_queued_ns, 0);
        assert_eq!(r.wait_reading_ns, 20);
        assert_eq!(r.wait_repacking_ns, 5);
        assert_eq!(r.wait_after_ns, 5);
    }

    #[test]
    fn a_wait_before_its_read_starts_is_queued_and_an_old_read_does_not_count() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        let io = b.thread("io-0");
        b.span(c, "forward", 0, 100, &[]);
        b.span(c, "compute.experts", 0, 100, &[]);
        // An earlier residency of the same expert, long finished.
        b.span(io, "io.expert_read", 0, 5, &le(1, 2));
        b.span(io, "io.repack", 5, 6, &le(1, 2));
        // The wait [10, 50): its read starts at 30, ends at 45; no repack (exact mode).
        b.span(c, "io.wait", 10, 50, &le(1, 2));
        b.span(io, "io.expert_read", 30, 45, &le(1, 2));
        // A wait whose expert is read only after it ended (woken by another expert).
        b.span(c, "io.wait", 60, 70, &le(1, 9));
        b.span(io, "io.expert_read", 80, 90, &le(1, 9));
        let r = stalls(&b.build());
        assert_eq!((r.waits, r.wait_ns), (2, 50));
        assert_eq!(r.wait_queued_ns, 20 + 10);
        assert_eq!(r.wait_reading_ns, 15);
        assert_eq!(r.wait_repacking_ns, 0);
        assert_eq!(r.wait_after_ns, 5);
        assert_eq!(
            r.wait_queued_ns + r.wait_reading_ns + r.wait_repacking_ns + r.wait_after_ns,
            r.wait_ns
        );
        // No phase names: the one step counts; idle storage is labelled by the compute span,
        // or the wait.
        assert_eq!(r.steps, 1);
        assert_eq!(r.storage_idle_ns["io.wait"], 20 + 5 + 10);
        assert_eq!(r.storage_idle_total_ns(), 100 - 5 - 15 - 10);
    }

    /// The expert was read, then evicted and read again later: a wait during the first read's
    /// repack belongs to that read, and a wait after an earlier residency ended, before a
    /// later read, is queued.
    #[test]
    fn a_later_residency_does_not_take_a_wait_from_the_repack_before_it() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        let io = b.thread("io-0");
        b.span(c, "forward", 0, 100, &[]);
        b.span(io, "io.expert_read", 0, 10, &le(0, 5));
        b.span(io, "io.repack", 10, 20, &le(0, 5));
        b.span(c, "io.wait", 12, 22, &le(0, 5));
        b.span(c, "io.wait", 30, 40, &le(0, 5));
        b.span(io, "io.expert_read", 50, 60, &le(0, 5));
        let r = stalls(&b.build());
        assert_eq!((r.waits, r.wait_ns), (2, 20));
        assert_eq!(r.wait_repacking_ns, 8);
        assert_eq!(r.wait_after_ns, 2);
        assert_eq!(r.wait_queued_ns, 10);
        assert_eq!(r.wait_reading_ns, 0);
    }

    #[test]
    fn a_wait_after_its_expert_was_ready_is_the_hand_off() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        let io = b.thread("io-0");
        b.span(c, "forward", 0, 100, &[]);
        b.span(io, "io.expert_read", 0, 10, &le(0, 0));
        b.span(io, "io.repack", 10, 12, &le(0, 0));
        b.span(c, "io.wait", 20, 23, &le(0, 0));
        let r = stalls(&b.build());
        assert_eq!((r.wait_ns, r.wait_after_ns), (3, 3));
        // Time inside `forward` only is `other`.
        assert_eq!(r.storage_idle_ns[OTHER], 100 - 10 - 3);
    }

    #[test]
    fn no_steps_gives_an_empty_report() {
        let mut b = RecordingBuilder::new();
        let io = b.thread("io-0");
        b.span(io, "io.expert_read", 0, 10, &le(0, 0));
        let r = stalls(&b.build());
        assert_eq!(r, StallReport::default());
    }

    #[test]
    fn overlapping_children_are_clipped_to_their_parent() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.span(c, "forward", 0, 50, &[]);
        b.span(c, "compute.experts", 10, 30, &[]);
        // Malformed: ends after its parent.
        b.span(c, "compute.expert", 20, 40, &[]);
        let r = stalls(&b.build());
        assert_eq!(r.storage_idle_ns["compute.experts"], 10);
        assert_eq!(r.storage_idle_ns["compute.expert"], 10);
        assert_eq!(r.storage_idle_ns[OTHER], 30);
        assert_eq!(r.storage_idle_total_ns(), 50);
    }
}
