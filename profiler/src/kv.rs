//! KV-cache memory vs context length per layer kind, from `engine::kv` `kv_bytes` events
//! (`layer`, `kind` = `"global"`/`"sliding"`, `allocated_bytes`, `n_positions`).
//!
//! Events are grouped into samples by the `forward` step they follow (an event belongs to the
//! last step that started at or before it); without `forward` spans each distinct `n_positions`
//! is a sample. Within a sample the last event of each layer counts, and the context length is
//! the largest `n_positions` (sliding layers may report a capped count). Samples are
//! deduplicated by context length (the last wins).
//!
//! The all-global baseline is what the same model would allocate if every layer were global:
//! the mean measured allocation of its global layers times the number of layers. It is measured
//! on the global layers' real allocations, not computed from a formula.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::recording::{Recording, names};

/// KV memory at one context length.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KvSample {
    /// Context length (positions processed).
    pub context_len: u64,
    /// Bytes allocated by global (NoPE) layers.
    pub global_bytes: u64,
    /// Bytes allocated by sliding-window (RoPE) layers.
    pub sliding_bytes: u64,
    /// Bytes of layers of another or missing kind.
    pub other_bytes: u64,
    /// All of the above.
    pub total_bytes: u64,
    /// Global layers reporting.
    pub n_global_layers: u64,
    /// Sliding layers reporting.
    pub n_sliding_layers: u64,
    /// Layers of another or missing kind.
    pub n_other_layers: u64,
    /// Mean global-layer bytes × all layers (`None` without global layers).
    pub all_global_baseline_bytes: Option<u64>,
    /// `baseline - total` (negative if the hybrid design used more).
    pub saved_bytes: Option<i64>,
}

#[derive(Default)]
struct Group {
    context_len: u64,
    /// layer → (kind, bytes)
    layers: BTreeMap<u64, (String, u64)>,
}

/// Computes KV samples, sorted by context length.
pub fn kv_samples(rec: &Recording) -> Vec<KvSample> {
    let starts: Vec<u64> = rec.forward_steps().iter().map(|s| s.start_ns).collect();
    let mut groups: BTreeMap<(i64, u64), Group> = BTreeMap::new();
    for e in rec.events_named(names::TARGET_KV, names::EVENT_KV_BYTES) {
        let (Some(layer), Some(bytes)) = (e.u64("layer"), e.u64("allocated_bytes")) else {
            continue;
        };
        let n_pos = e.u64("n_positions").unwrap_or(0);
        let key = if starts.is_empty() {
            (0, n_pos)
        } else {
            // Index of the last step started at or before the event; -1 before the first.
            (starts.partition_point(|&s| s <= e.ts_ns) as i64 - 1, 0)
        };
        let g = groups.entry(key).or_default();
        g.context_len = g.context_len.max(n_pos);
        g.layers
            .insert(layer, (e.str("kind").unwrap_or("").to_owned(), bytes));
    }
    let mut by_len: BTreeMap<u64, KvSample> = BTreeMap::new();
    for g in groups.into_values() {
        let mut s = KvSample {
            context_len: g.context_len,
            ..KvSample::default()
        };
        for (kind, bytes) in g.layers.values() {
            match kind.as_str() {
                "global" => {
                    s.global_bytes += bytes;
                    s.n_global_layers += 1;
                }
                "sliding" => {
                    s.sliding_bytes += bytes;
                    s.n_sliding_layers += 1;
                }
                _ => {
                    s.other_bytes += bytes;
                    s.n_other_layers += 1;
                }
            }
        }
        s.total_bytes = s.global_bytes + s.sliding_bytes + s.other_bytes;
        if s.n_global_layers > 0 {
            let n_layers = s.n_global_layers + s.n_sliding_layers + s.n_other_layers;
            let mean = s.global_bytes as f64 / s.n_global_layers as f64;
            let baseline = (mean * n_layers as f64).round() as u64;
            s.all_global_baseline_bytes = Some(baseline);
            s.saved_bytes = Some(baseline as i64 - s.total_bytes as i64);
        }
        by_len.insert(s.context_len, s);
    }
    by_len.into_values().collect()
}

/// Writes `kv.csv`: a header and one row per sample.
pub fn write_kv_csv(samples: &[KvSample], w: impl std::io::Write) -> crate::Result<()> {
    let csv_err = |source| crate::Error::Csv {
        what: "kv.csv".into(),
        source,
    };
    let mut wtr = csv::Writer::from_writer(w);
    wtr.write_record([
        "context_len",
        "global_bytes",
        "sliding_bytes",
        "other_bytes",
        "total_bytes",
        "n_global_layers",
        "n_sliding_layers",
        "n_other_layers",
        "all_global_baseline_bytes",
        "saved_bytes",
    ])
    .map_err(csv_err)?;
    for s in samples {
        let opt = |v: Option<String>| v.unwrap_or_default();
        wtr.write_record([
            s.context_len.to_string(),
            s.global_bytes.to_string(),
            s.sliding_bytes.to_string(),
            s.other_bytes.to_string(),
            s.total_bytes.to_string(),
            s.n_global_layers.to_string(),
            s.n_sliding_layers.to_string(),
            s.n_other_layers.to_string(),
            opt(s.all_global_baseline_bytes.map(|v| v.to_string())),
            opt(s.saved_bytes.map(|v| v.to_string())),
        ])
        .map_err(csv_err)?;
    }
    wtr.flush().map_err(|e| crate::Error::io("kv.csv", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{FieldValue, RecordingBuilder};

    fn kv(layer: u64, kind: &str, bytes: u64, n: u64) -> Vec<(&'static str, FieldValue)> {
        vec![
            ("layer", layer.into()),
            ("kind", kind.into()),
            ("allocated_bytes", bytes.into()),
            ("n_positions", n.into()),
        ]
    }

    /// 4 layers: 0 global, 1-3 sliding with window 2. Per position: 100 bytes per layer.
    #[test]
    fn samples_per_step_with_baseline() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        for step in 0..3u64 {
            let t0 = step * 100;
            b.span(c, "forward", t0, t0 + 50, &[("token", step.into())]);
            let n = step + 1;
            b.event(
                c,
                "engine::kv",
                "kv_bytes",
                t0 + 60,
                &kv(0, "global", 100 * n, n),
            );
            for l in 1..4 {
                let m = n.min(2);
                b.event(
                    c,
                    "engine::kv",
                    "kv_bytes",
                    t0 + 60 + l,
                    &kv(l, "sliding", 100 * m, m),
                );
            }
        }
        let s = kv_samples(&b.build());
        assert_eq!(s.len(), 3);
        assert_eq!(s[2].context_len, 3);
        assert_eq!(
            (s[2].global_bytes, s[2].sliding_bytes, s[2].total_bytes),
            (300, 600, 900)
        );
        assert_eq!((s[2].n_global_layers, s[2].n_sliding_layers), (1, 3));
        assert_eq!(s[2].all_global_baseline_bytes, Some(1200));
        assert_eq!(s[2].saved_bytes, Some(300));
        assert_eq!(s[0].saved_bytes, Some(0));
        let mut out = Vec::new();
        write_kv_csv(&s, &mut out).expect("writes");
        let text = String::from_utf8(out).expect("utf8");
        let mut lines = text.lines();
        assert!(
            lines
                .next()
                .expect("header")
                .starts_with("context_len,global_bytes,sliding_bytes")
        );
        assert_eq!(lines.count(), 3);
        assert!(
            text.contains("\n3,300,600,0,900,1,3,0,1200,300\n"),
            "{text}"
        );
    }

    #[test]
    fn without_steps_samples_group_by_positions() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.event(c, "engine::kv", "kv_bytes", 1, &kv(0, "global", 10, 1));
        b.event(c, "engine::kv", "kv_bytes", 2, &kv(0, "global", 20, 2));
        b.event(c, "engine::kv", "kv_bytes", 3, &kv(1, "sliding", 5, 2));
        let s = kv_samples(&b.build());
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].total_bytes, 25);
        assert_eq!(s[1].all_global_baseline_bytes, Some(40));
    }
}
