//! The full-size presets' metadata and tensor tables (written as sparse skeletons), checked
//! against the published configs, llama.cpp's layout rule and the real tokenizer's ids.

use std::path::Path;

use datasets::generate::{GenRequest, write_skeleton};
use datasets::{ModelSpec, OutType};
use engine::formats::gguf::{GgufFile, TensorSpec, encode_header};
use engine::model::load_gguf::config_from_gguf;
use engine::model::{Gating, LayoutSource};
use engine::quant::GgmlType;
use engine::tokenizer::Tokenizer;

fn skeleton(preset: &str, ty: OutType, dir: &Path) -> GgufFile {
    let path = dir.join(format!("{preset}.gguf"));
    let len = write_skeleton(&GenRequest::new(preset, ty, 0), &path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    GgufFile::open(&path).unwrap()
}

/// The same file without our explicit layout keys: what llama.cpp sees.
fn without_layout_keys(g: &GgufFile, path: &Path) -> GgufFile {
    let meta: Vec<_> = g
        .metadata()
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("smallthinker.rope_layout") && k != "smallthinker.sliding_window_layout"
        })
        .cloned()
        .collect();
    let specs: Vec<TensorSpec> = g
        .tensors()
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ty))
        .collect();
    let (header, layout) = encode_header(&meta, &specs, 32).unwrap();
    std::fs::write(path, &header).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(layout.total_len).unwrap();
    GgufFile::open(path).unwrap()
}

#[test]
fn the_4b_matches_its_published_config() {
    let dir = tempfile::tempdir().unwrap();
    let g = skeleton("4b-a0.6b", OutType::Q4_0Mixed, dir.path());
    let c = config_from_gguf(&g).unwrap();
    assert_eq!(
        (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim),
        (32, 1536, 12, 2, 128)
    );
    assert_eq!(
        (c.vocab_size, c.n_experts, c.n_experts_used, c.expert_ffn),
        (151_936, 32, 4, 768)
    );
    assert_eq!(
        (c.rope_theta, c.rms_eps, c.context_length),
        (1.5e6, 1e-6, 32768)
    );
    assert_eq!(c.gating, Gating::Sigmoid);
    assert!(c.tied_embeddings);
    assert_eq!(c.layout_source, LayoutSource::Explicit);
    assert!(c.layers.iter().all(|k| k.rope && !k.sliding));
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone()),
        (Some(151_643), vec![151_645])
    );
    assert_eq!(g.tensors().len(), 322);
    assert!(g.tensor("output.weight").is_none());
    assert!(
        g.get_u32("smallthinker.attention.sliding_window")
            .unwrap()
            .is_none()
    );
    assert_eq!(
        g.get_u32("smallthinker.expert_gating_func").unwrap(),
        Some(2)
    );
    assert_eq!(
        g.get_u32("smallthinker.attention.key_length").unwrap(),
        Some(128)
    );
    assert_eq!(
        g.get_u32("smallthinker.feed_forward_length").unwrap(),
        Some(768)
    );
    assert_eq!(g.get_u32("general.file_type").unwrap(), Some(2));
    assert_eq!(g.get_u32("general.quantization_version").unwrap(), Some(2));
    // llama-quantize's default recipe: tied embedding at the output's type, the rest Q4_0.
    let ty = |n: &str| g.tensor(n).unwrap().ty;
    assert_eq!(ty("token_embd.weight"), GgmlType::Q6_K);
    assert_eq!(ty("blk.0.attn_k.weight"), GgmlType::Q4_0);
    assert_eq!(ty("blk.31.ffn_down_exps.weight"), GgmlType::Q4_0);
    assert_eq!(ty("blk.31.ffn_gate_inp.weight"), GgmlType::F32);
    assert_eq!(
        g.tensor("blk.7.ffn_down_exps.weight").unwrap().dims,
        vec![768, 1536, 32]
    );
    assert_eq!(
        g.tensor("blk.7.ffn_gate_exps.weight").unwrap().dims,
        vec![1536, 768, 32]
    );
    // One expert matrix is 663,552 bytes in Q4_0 (architecture.md a.3).
    assert_eq!(
        g.tensor("blk.0.ffn_up_exps.weight").unwrap().size_bytes,
        663_552 * 32
    );
    // llama.cpp, which ignores our layout keys, finds the same layout.
    let l = without_layout_keys(&g, &dir.path().join("l.gguf"));
    let cl = config_from_gguf(&l).unwrap();
    assert_eq!(cl.layout_source, LayoutSource::AllGlobal);
    assert_eq!(cl.layers, c.layers);
}

#[test]
fn the_21b_matches_its_published_config() {
    let dir = tempfile::tempdir().unwrap();
    let g = skeleton("21b-a3b", OutType::Q4_0, dir.path());
    let c = config_from_gguf(&g).unwrap();
    assert_eq!(
        (c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim),
        (52, 2560, 28, 4, 128)
    );
    assert_eq!((c.n_experts, c.n_experts_used, c.expert_ffn), (64, 6, 768));
    assert_eq!((c.context_length, c.sliding_window), (16384, 4096));
    assert!(!c.tied_embeddings);
    assert_eq!(c.layout_source, LayoutSource::Explicit);
    for (i, k) in c.layers.iter().enumerate() {
        assert_eq!((k.rope, k.sliding), (i % 4 != 0, i % 4 != 0), "layer {i}");
    }
    assert_eq!(g.tensors().len(), 523);
    assert_eq!(g.tensor("output.weight").unwrap().dims, vec![2560, 151_936]);
    assert_eq!(
        g.tensor("blk.0.attn_q.weight").unwrap().dims,
        vec![2560, 3584]
    );
    assert_eq!(
        g.tensor("blk.0.attn_output.weight").unwrap().dims,
        vec![3584, 2560]
    );
    assert_eq!(
        g.get_u32("smallthinker.attention.key_length").unwrap(),
        Some(128)
    );
    assert_eq!(
        g.get_u32("smallthinker.attention.sliding_window").unwrap(),
        Some(4096)
    );
    assert_eq!(
        g.tensor("blk.0.ffn_up_exps.weight").unwrap().size_bytes,
        1_105_920 * 64
    );
    let l = without_layout_keys(&g, &dir.path().join("l.gguf"));
    let cl = config_from_gguf(&l).unwrap();
    assert_eq!(cl.layout_source, LayoutSource::LlamaCppRule);
    assert_eq!(cl.layers, c.layers);
    // The spec's parameter count is the checkpoint's (architecture.md a.3).
    let (_, _, total) = ModelSpec::preset("21b-a3b").unwrap().param_counts();
    let from_file: u64 = g.tensors().iter().map(|t| t.n_elements()).sum();
    assert_eq!(total, from_file);
}

#[test]
fn text_encodes_to_the_real_qwen_ids() {
    let dir = tempfile::tempdir().unwrap();
    let g = skeleton("4b-a0.6b", OutType::Q4_0, dir.path());
    assert_eq!(
        g.get_array("tokenizer.ggml.tokens").unwrap().unwrap().len(),
        151_936
    );
    let tok = Tokenizer::from_gguf(&g).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../engine/tests/fixtures/tokenizer/cases.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let special = case["name"].as_str().unwrap().contains("special")
            || case["name"].as_str().unwrap().contains("endoftext");
        assert_eq!(tok.encode(text, special).unwrap(), want, "{}", case["name"]);
        assert_eq!(
            tok.decode(&want, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        checked += 1;
    }
    assert_eq!(checked, 30);
}
