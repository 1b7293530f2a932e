//! ReGLU activation sparsity per layer and the bytes it lets the engine skip, from
//! `engine::moe` `sparsity` events (`layer`, `n_neurons`, `n_active`, optional
//! `bytes_skipped`; `total`/`active` are accepted as aliases).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::recording::{EventRecord, Recording, names};

/// Sparsity of one layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    /// Layer index.
    pub layer: u64,
    /// Events (token × layer) summed.
    pub n_events: u64,
    /// Neurons evaluated (summed over tokens and experts).
    pub n_neurons: u64,
    /// Of which non-zero after the ReGLU.
    pub n_active: u64,
    /// `1 - n_active / n_neurons`.
    pub zero_share: f64,
    /// Bytes of weights not read thanks to zero activations.
    pub bytes_skipped: u64,
}

/// Sparsity per layer and overall.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    /// Per layer, by layer index.
    pub layers: Vec<LayerSparsity>,
    /// All layers together (`layer` is 0 and meaningless).
    pub total: LayerSparsity,
}

fn field(e: &EventRecord, a: &str, b: &str) -> Option<u64> {
    e.u64(a).or_else(|| e.u64(b))
}

fn finish(s: &mut LayerSparsity) {
    s.zero_share = if s.n_neurons == 0 {
        0.0
    } else {
        1.0 - s.n_active as f64 / s.n_neurons as f64
    };
}

/// Computes the [`SparsityReport`] of a recording.
pub fn sparsity(rec: &Recording) -> SparsityReport {
    let mut by_layer: BTreeMap<u64, LayerSparsity> = BTreeMap::new();
    for e in rec.events_named(names::TARGET_MOE, names::EVENT_SPARSITY) {
        let (Some(layer), Some(n), Some(a)) = (
            e.u64("layer"),
            field(e, "n_neurons", "total"),
            field(e, "n_active", "active"),
        ) else {
            continue;
        };
        let s = by_layer.entry(layer).or_insert_with(|| LayerSparsity {
            layer,
            ..LayerSparsity::default()
        });
        s.n_events += 1;
        s.n_neurons += n;
        s.n_active += a.min(n);
        s.bytes_skipped += e.u64("bytes_skipped").unwrap_or(0);
    }
    let mut total = LayerSparsity::default();
    let layers = by_layer
        .into_values()
        .map(|mut s| {
            finish(&mut s);
            total.n_events += s.n_events;
            total.n_neurons += s.n_neurons;
            total.n_active += s.n_active;
            total.bytes_skipped += s.bytes_skipped;
            s
        })
        .collect();
    finish(&mut total);
    SparsityReport { layers, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::RecordingBuilder;

    #[test]
    fn zero_share_and_bytes_per_layer() {
        let mut b = RecordingBuilder::new();
        let c = b.thread("main");
        b.event(
            c,
            "engine::moe",
            "sparsity",
            1,
            &[
                ("layer", 0u64.into()),
                ("n_neurons", 100u64.into()),
                ("n_active", 10u64.into()),
                ("bytes_skipped", 900u64.into()),
            ],
        );
        b.event(
            c,
            "engine::moe",
            "sparsity",
            2,
            &[
                ("layer", 0u64.into()),
                ("n_neurons", 100u64.into()),
                ("n_active", 30u64.into()),
            ],
        );
        b.event(
            c,
            "engine::moe",
            "sparsity",
            3,
            &[
                ("layer", 1u64.into()),
                ("total", 200u64.into()),
                ("active", 200u64.into()),
            ],
        );
        let r = sparsity(&b.build());
        assert_eq!(r.layers.len(), 2);
        assert!((r.layers[0].zero_share - 0.8).abs() < 1e-12);
        assert_eq!(r.layers[0].bytes_skipped, 900);
        assert_eq!(r.layers[1].zero_share, 0.0);
        assert_eq!((r.total.n_neurons, r.total.n_active), (400, 240));
        assert!((r.total.zero_share - 0.4).abs() < 1e-12);
    }
}
