//! GGUF reader and writer: the llama.cpp fixtures, byte-exact re-writing, round trips, and a
//! hostile-file suite in which every malformed input must be a typed error, never a panic.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use engine::Error;
use engine::error::GgufError;
use engine::formats::gguf::{
    Array, DEFAULT_ALIGNMENT, GgufFile, GgufWriter, MAX_ARRAY_DEPTH, MAX_STRING_LEN,
    MAX_TENSOR_NAME_WRITE, TensorSpec, Value, encode_header,
};
use engine::formats::mmap::Blob;
use engine::quant::GgmlType;
use proptest::prelude::*;

const FIXTURES: [&str; 4] = ["F32", "F16", "Q8_0", "Q4_0"];

/// Coarse guard against accidentally quadratic or allocation-heavy vocabulary parsing: a
/// 151,936-token vocabulary plus merges parses in tens of milliseconds; this only catches a
/// pathological regression on a loaded shared machine.
const VOCAB_PARSE_BUDGET: Duration = Duration::from_secs(2);

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture(ty: &str) -> PathBuf {
    fixture_dir().join(format!("tiny-t1-gguf/tiny-t1-{ty}.gguf"))
}

fn parse(bytes: Vec<u8>) -> engine::Result<GgufFile> {
    GgufFile::parse(Blob::from_vec(bytes))
}

#[track_caller]
fn expect_invalid(bytes: Vec<u8>, needle: &str) -> u64 {
    match parse(bytes) {
        Err(Error::Gguf(GgufError::Invalid { offset, what })) => {
            assert!(what.contains(needle), "message {what:?} lacks {needle:?}");
            offset
        }
        other => panic!("expected GgufError::Invalid containing {needle:?}, got {other:?}"),
    }
}

#[track_caller]
fn expect_truncated(bytes: Vec<u8>) -> (u64, u64) {
    match parse(bytes) {
        Err(Error::Gguf(GgufError::Truncated {
            offset, need, len, ..
        })) => {
            assert!(offset + need > len, "offset {offset} need {need} len {len}");
            (offset, need)
        }
        other => panic!("expected GgufError::Truncated, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Building files

fn s(x: &str) -> String {
    x.to_owned()
}

fn sample_metadata() -> Vec<(String, Value)> {
    vec![
        (s("general.architecture"), Value::from("smallthinker")),
        (s("t.u8"), Value::U8(200)),
        (s("t.i8"), Value::I8(-5)),
        (s("t.u16"), Value::U16(65535)),
        (s("t.i16"), Value::I16(-300)),
        (s("t.u32"), Value::U32(4_000_000_000)),
        (s("t.i32"), Value::I32(-7)),
        (s("t.u64"), Value::U64(u64::MAX)),
        (s("t.i64"), Value::I64(i64::MIN)),
        (s("t.f32"), Value::F32(1.5e6)),
        (s("t.f64"), Value::F64(-2.25e-300)),
        (s("t.bool"), Value::Bool(true)),
        (s("t.str"), Value::from("héllo ✓ 日本")),
        (s("t.empty_str"), Value::from("")),
        (s("a.u8"), Value::from(vec![1u8, 2, 255])),
        (s("a.i8"), Value::from(vec![-1i8, 0, 127])),
        (s("a.u16"), Value::from(vec![7u16])),
        (s("a.i16"), Value::from(vec![-2i16, 2])),
        (s("a.u32"), Value::from(vec![0u32, 1, 2, 3])),
        (s("a.i32"), Value::from(vec![1i32, 3, 4, -1])),
        (s("a.u64"), Value::from(vec![u64::MAX, 0])),
        (s("a.i64"), Value::from(vec![i64::MIN])),
        (s("a.f32"), Value::from(vec![0.5f32, -0.25])),
        (s("a.f64"), Value::from(vec![1e100f64])),
        (s("a.bool"), Value::from(vec![true, false, true])),
        (s("a.str"), Value::from(vec![s("Ġ Ġ"), s(""), s("ü")])),
        (s("a.empty"), Value::from(Vec::<u32>::new())),
        (
            s("a.nested"),
            Value::Array(Array::Array(vec![
                Array::U8(vec![1]),
                Array::String(vec![s("x")]),
                Array::Array(vec![Array::F32(vec![2.0])]),
                Array::Array(vec![]),
            ])),
        ),
    ]
}

/// Tensors of several types; the last one's size is a multiple of 32, so the file has no
/// trailing padding and every proper prefix is invalid.
fn sample_tensors() -> Vec<(TensorSpec, Vec<u8>)> {
    let data = |n: usize, seed: u8| (0..n).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    vec![
        (
            TensorSpec::new("a.f32", vec![4, 2], GgmlType::F32),
            data(32, 1),
        ),
        (
            TensorSpec::new("b.q8", vec![32, 2], GgmlType::Q8_0),
            data(68, 2),
        ),
        (TensorSpec::new("c.f16", vec![3], GgmlType::F16), data(6, 3)),
        (
            TensorSpec::new("d.q4", vec![32, 1, 2], GgmlType::Q4_0),
            data(36, 4),
        ),
        (
            TensorSpec::new("e.last", vec![8], GgmlType::F32),
            data(32, 5),
        ),
    ]
}

/// A complete file in memory, laid out by `encode_header`.
fn build(metadata: &[(String, Value)], tensors: &[(TensorSpec, Vec<u8>)], align: u64) -> Vec<u8> {
    let specs: Vec<TensorSpec> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let (mut out, layout) = encode_header(metadata, &specs, align).expect("valid header");
    for ((_, data), &off) in tensors.iter().zip(&layout.tensor_offsets) {
        out.resize((layout.data_offset + off) as usize, 0);
        out.extend_from_slice(data);
    }
    out.resize(layout.total_len as usize, 0);
    out
}

fn small_file() -> Vec<u8> {
    build(&sample_metadata(), &sample_tensors(), DEFAULT_ALIGNMENT)
}

/// Writes raw header fields, for files no well-behaved writer would produce.
struct Raw(Vec<u8>);

impl Raw {
    fn new(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u8(&mut self, v: u8) -> &mut Raw {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw_str(&mut self, b: &[u8]) -> &mut Raw {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, v: &str) -> &mut Raw {
        self.raw_str(v.as_bytes())
    }
    fn kv_u32(&mut self, key: &str, v: u32) -> &mut Raw {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    /// Pads to `align` and appends `data_len` zero bytes of tensor data.
    fn data(&mut self, align: usize, data_len: usize) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len().div_ceil(align) * align + data_len, 0);
        v
    }
}

fn one_tensor(dims: &[u64], ty: u32, offset: u64, data_len: usize) -> Vec<u8> {
    Raw::new(3, 1, 0)
        .tensor("w", dims, ty, offset)
        .data(32, data_len)
}

// ---------------------------------------------------------------------------------------------
// The llama.cpp fixtures

#[test]
fn fixtures_parse_with_the_manifest_metadata_and_tensor_types() {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture_dir().join("tiny-t1-gguf/manifest.json")).unwrap(),
    )
    .unwrap();
    for ty in FIXTURES {
        let f = GgufFile::open(&fixture(ty)).unwrap();
        let m = &manifest["files"][ty];
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.file_len(), m["bytes"].as_u64().unwrap(), "{ty}");
        assert_eq!(f.architecture().unwrap(), "smallthinker");
        assert_eq!(f.metadata().len(), 31);
        assert_eq!(f.data_offset(), 14848);
        assert_eq!(f.path(), Some(fixture(ty).as_path()));

        let md = m["metadata"].as_object().unwrap();
        for (k, want) in md {
            let got = f.get(k).unwrap_or_else(|| panic!("{ty}: missing {k}"));
            match want {
                serde_json::Value::String(w) => assert_eq!(got.as_str(), Some(w.as_str()), "{k}"),
                serde_json::Value::Bool(w) => assert_eq!(got.as_bool(), Some(*w), "{k}"),
                serde_json::Value::Number(w) => {
                    assert_eq!(got.as_f64(), w.as_f64(), "{k}")
                }
                other => panic!("{k}: unexpected manifest value {other}"),
            }
        }
        assert_eq!(f.require_u32("smallthinker.block_count").unwrap(), 4);
        assert_eq!(f.require_u64("smallthinker.expert_count").unwrap(), 8);
        assert_eq!(f.require_f32("smallthinker.rope.freq_base").unwrap(), 1.5e6);
        assert_eq!(
            f.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
            Some(false)
        );
        let tokens = f.require_array("tokenizer.ggml.tokens").unwrap();
        assert_eq!(tokens.as_strings().unwrap().len(), 512);
        assert_eq!(tokens.as_strings().unwrap()[511], "<|im_end|>");
        let types = f.get_array("tokenizer.ggml.token_type").unwrap().unwrap();
        assert_eq!(types.elem_type_name(), "i32");
        assert_eq!(types.to_u64_vec().unwrap().len(), 512);
        let merges = f.get_array("tokenizer.ggml.merges").unwrap().unwrap();
        assert_eq!(merges.as_strings().unwrap()[0], "Ġ Ġ");

        let tt = m["tensor_types"].as_object().unwrap();
        assert_eq!(f.tensors().len(), 42);
        assert_eq!(tt.len(), 42);
        for t in f.tensors() {
            let want = &tt[&t.name];
            assert_eq!(t.ty.name(), want["type"].as_str().unwrap(), "{}", t.name);
            let dims: Vec<u64> = want["ggml_ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(t.dims, dims, "{}", t.name);
            assert_eq!(t.abs_offset, f.data_offset() + t.offset);
            assert_eq!(t.size_bytes, t.row_bytes() * t.n_rows());
            assert_eq!(t.n_elements(), t.row_len() * t.n_rows());
            assert_eq!(f.tensor_data(t).len() as u64, t.size_bytes);
            assert_eq!(f.tensor(&t.name), Some(t));
        }
        let embd = f.require_tensor("token_embd.weight").unwrap();
        assert_eq!((embd.row_len(), embd.n_rows()), (64, 512));
        assert!(f.tensor("output.weight").is_none(), "tied embeddings");
        assert!(matches!(
            f.require_tensor("output.weight"),
            Err(Error::MissingTensor(n)) if n == "output.weight"
        ));
    }
    let q4 = GgufFile::open(&fixture("Q4_0")).unwrap();
    let t = q4.require_tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(
        (t.ty, t.row_bytes(), t.size_bytes),
        (GgmlType::Q4_0, 36, 36 * 64)
    );
    let t = q4.require_tensor("token_embd.weight").unwrap();
    assert_eq!((t.ty, t.row_bytes()), (GgmlType::Q8_0, 68));
}

#[test]
fn f32_fixture_tensor_bytes_equal_the_safetensors_weights() {
    let st_bytes = std::fs::read(fixture_dir().join("tiny-t1/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let f = GgufFile::open(&fixture("F32")).unwrap();
    let data = |name: &str| f.tensor_data(f.require_tensor(name).unwrap());
    let hf = |name: &str| st.tensor(name).unwrap().data().to_vec();
    assert_eq!(data("token_embd.weight"), hf("model.embed_tokens.weight"));
    assert_eq!(data("output_norm.weight"), hf("model.norm.weight"));
    assert_eq!(
        data("blk.3.ffn_gate_inp.weight"),
        hf("model.layers.3.block_sparse_moe.primary_router.weight")
    );
    // Experts are stacked on the slowest axis: expert e is the e-th contiguous slice.
    for proj in ["gate", "up", "down"] {
        let stacked = data(&format!("blk.2.ffn_{proj}_exps.weight"));
        let mut concat = Vec::new();
        for e in 0..8 {
            concat.extend(hf(&format!(
                "model.layers.2.block_sparse_moe.experts.{e}.{proj}.weight"
            )));
        }
        assert_eq!(stacked, concat, "{proj}");
    }
}

#[test]
fn rewriting_each_fixture_from_its_parsed_content_reproduces_it_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    for ty in FIXTURES {
        let original = std::fs::read(fixture(ty)).unwrap();
        let f = GgufFile::open(&fixture(ty)).unwrap();
        let specs: Vec<TensorSpec> = f.tensors().iter().map(TensorSpec::from).collect();
        let (header, layout) = encode_header(f.metadata(), &specs, f.alignment()).unwrap();
        assert_eq!(layout.data_offset, f.data_offset(), "{ty}");
        assert_eq!(header.len() as u64, f.data_offset());
        assert_eq!(header, original[..header.len()], "{ty}: header differs");
        let offsets: Vec<u64> = f.tensors().iter().map(|t| t.offset).collect();
        assert_eq!(layout.tensor_offsets, offsets, "{ty}");
        assert_eq!(layout.total_len, f.file_len(), "{ty}");

        let out = dir.path().join(format!("{ty}.gguf"));
        let mut w =
            GgufWriter::create(&out, f.metadata().to_vec(), specs.clone(), f.alignment()).unwrap();
        for t in f.tensors() {
            assert_eq!(w.current_tensor(), Some(t.name.as_str()));
            w.write_tensor(f.tensor_data(t)).unwrap();
        }
        assert_eq!(w.current_tensor(), None);
        w.finish().unwrap();
        let written = std::fs::read(&out).unwrap();
        assert!(written == original, "{ty}: re-written file differs");
    }
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        FIXTURES.len(),
        "no temporary files left: {names:?}"
    );
}

#[test]
fn every_truncation_of_the_fixture_header_is_a_truncation_error() {
    let bytes = std::fs::read(fixture("Q4_0")).unwrap();
    let f = parse(bytes.clone()).unwrap();
    let specs: Vec<TensorSpec> = f.tensors().iter().map(TensorSpec::from).collect();
    let (_, layout) = encode_header(f.metadata(), &specs, f.alignment()).unwrap();
    let header_len = layout.header_len as usize;
    for n in 0..header_len {
        let (offset, _) = expect_truncated(bytes[..n].to_vec());
        assert!(offset <= n as u64);
    }
    for n in header_len..=f.data_offset() as usize {
        expect_invalid(bytes[..n].to_vec(), "extends past the end of the file");
    }
}

// ---------------------------------------------------------------------------------------------
// Round trips

#[test]
fn writer_round_trips_metadata_tensors_and_bytes_with_chunks_spanning_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for align in [DEFAULT_ALIGNMENT, 64, 1] {
        let mut metadata = sample_metadata();
        if align != DEFAULT_ALIGNMENT {
            metadata.insert(1, (s("general.alignment"), Value::U32(align as u32)));
        }
        let tensors = sample_tensors();
        let specs: Vec<TensorSpec> = tensors.iter().map(|(t, _)| t.clone()).collect();
        let path = dir.path().join(format!("rt-{align}.gguf"));
        let mut w = GgufWriter::create(&path, metadata.clone(), specs.clone(), align).unwrap();
        let all: Vec<u8> = tensors.iter().flat_map(|(_, d)| d.clone()).collect();
        // Odd chunk sizes, so chunks start and end in the middle of tensors.
        let mut rest = &all[..];
        for size in [1usize, 7, 40, 3, 100].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let k = (*size).min(rest.len());
            w.write_chunk(&rest[..k]).unwrap();
            rest = &rest[k..];
        }
        w.finish().unwrap();

        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            bytes,
            build(&metadata, &tensors, align),
            "streamed == in-memory layout"
        );
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), align);
        assert_eq!(f.metadata(), &metadata[..]);
        assert_eq!(f.tensors().len(), tensors.len());
        for (t, (spec, data)) in f.tensors().iter().zip(&tensors) {
            assert_eq!(TensorSpec::from(t), *spec);
            assert_eq!(t.offset % align, 0);
            assert_eq!(f.tensor_data(t), &data[..], "{}", t.name);
        }
        assert_eq!(f.get_u32("t.u32").unwrap(), Some(4_000_000_000));
        assert_eq!(f.get_u64("t.u64").unwrap(), Some(u64::MAX));
        assert_eq!(f.get_str("t.str").unwrap(), Some("héllo ✓ 日本"));
        let nested = f.get_array("a.nested").unwrap().unwrap();
        assert_eq!(nested.depth(), 3);
    }
}

#[test]
fn version_2_files_read_like_version_3() {
    let mut b = small_file();
    b[4] = 2;
    let f = parse(b).unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.metadata(), &sample_metadata()[..]);
}

#[test]
fn a_file_without_tensors_may_omit_the_header_padding() {
    let md = vec![(s("general.architecture"), Value::from("x"))];
    let (header, layout) = encode_header(&md, &[], DEFAULT_ALIGNMENT).unwrap();
    assert_eq!(layout.total_len, layout.data_offset);
    let f = parse(header[..layout.header_len as usize].to_vec()).unwrap();
    assert!(f.tensors().is_empty());
    assert!(f.data_offset() > f.file_len());
    assert_eq!(f.architecture().unwrap(), "x");
}

#[test]
fn typed_getters_convert_leniently_and_reject_wrong_types() {
    let f = parse(small_file()).unwrap();
    assert_eq!(f.get_u64("t.u8").unwrap(), Some(200));
    assert_eq!(f.get_u32("t.u16").unwrap(), Some(65535));
    assert_eq!(f.get_f32("t.i32").unwrap(), Some(-7.0));
    assert_eq!(f.get_f32("t.f64").unwrap(), Some(-0.0)); // -2.25e-300 underflows f32
    assert_eq!(f.get_u64("nope").unwrap(), None);
    let bad_key = |r: engine::Result<()>, key: &str| match r {
        Err(Error::BadKey { key: k, what }) => {
            assert_eq!(k, key);
            assert!(what.contains("expected"), "{what}");
        }
        other => panic!("{key}: expected BadKey, got {other:?}"),
    };
    bad_key(f.get_u64("t.i32").map(drop), "t.i32"); // negative
    bad_key(f.get_u32("t.u64").map(drop), "t.u64"); // does not fit
    bad_key(f.get_u32("t.str").map(drop), "t.str");
    bad_key(f.get_f32("t.bool").map(drop), "t.bool");
    bad_key(f.get_bool("t.u8").map(drop), "t.u8");
    bad_key(f.get_str("a.str").map(drop), "a.str");
    bad_key(f.get_array("t.str").map(drop), "t.str");
    bad_key(f.require_u32("t.f32").map(drop), "t.f32");
    assert!(matches!(f.require_u32("nope"), Err(Error::MissingKey(k)) if k == "nope"));
    assert!(matches!(f.require_u64("nope"), Err(Error::MissingKey(_))));
    assert!(matches!(f.require_f32("nope"), Err(Error::MissingKey(_))));
    assert!(matches!(f.require_str("nope"), Err(Error::MissingKey(_))));
    let no_arch = parse(build(&[], &[], DEFAULT_ALIGNMENT)).unwrap();
    assert!(
        matches!(no_arch.architecture(), Err(Error::MissingKey(k)) if k == "general.architecture")
    );
}

#[test]
fn open_errors_name_the_path() {
    let err = GgufFile::open(Path::new("/nonexistent/x.gguf")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/x.gguf"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    std::fs::write(&p, b"GGUF\x01\x00\x00\x00").unwrap();
    let err = GgufFile::open(&p).unwrap_err();
    assert!(err.to_string().contains(&p.display().to_string()), "{err}");
    assert!(matches!(&err, Error::InFile { path, .. } if path == &p));
    assert!(matches!(
        err.inner(),
        Error::Gguf(GgufError::Invalid { offset: 4, .. })
    ));

    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty).unwrap_err().inner(),
        Error::Gguf(GgufError::Truncated { offset: 0, .. })
    ));
}

#[test]
fn vocabulary_sized_arrays_parse_quickly() {
    const N_VOCAB: usize = 151_936;
    let tokens: Vec<String> = (0..N_VOCAB).map(|i| format!("tok{i}Ġ✓")).collect();
    let merges: Vec<String> = (0..151_387).map(|i| format!("a{i} b{i}")).collect();
    let types: Vec<i32> = (0..N_VOCAB as i32).map(|i| 1 + i % 5).collect();
    let md = vec![
        (s("tokenizer.ggml.tokens"), Value::from(tokens.clone())),
        (s("tokenizer.ggml.merges"), Value::from(merges)),
        (s("tokenizer.ggml.token_type"), Value::from(types)),
    ];
    let bytes = build(&md, &[], DEFAULT_ALIGNMENT);
    let t0 = Instant::now();
    let f = parse(bytes).unwrap();
    let elapsed = t0.elapsed();
    eprintln!("parsed a {N_VOCAB}-token vocabulary + merges in {elapsed:?}");
    assert!(elapsed < VOCAB_PARSE_BUDGET, "{elapsed:?}");
    assert_eq!(
        f.get_array("tokenizer.ggml.tokens")
            .unwrap()
            .unwrap()
            .as_strings(),
        Some(&tokens[..])
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile files

#[test]
fn every_truncation_of_a_small_file_is_a_typed_error() {
    let bytes = small_file();
    let specs: Vec<TensorSpec> = sample_tensors().into_iter().map(|(t, _)| t).collect();
    let (_, layout) = encode_header(&sample_metadata(), &specs, DEFAULT_ALIGNMENT).unwrap();
    assert!(parse(bytes.clone()).is_ok());
    for n in 0..bytes.len() {
        let prefix = bytes[..n].to_vec();
        if n < layout.header_len as usize {
            expect_truncated(prefix);
        } else {
            expect_invalid(prefix, "extends past the end of the file");
        }
    }
}

#[test]
fn bad_magic_is_rejected() {
    let mut b = small_file();
    b[..4].copy_from_slice(b"GGML");
    assert_eq!(expect_invalid(b, "bad magic"), 0);
    let mut b = small_file();
    b[..4].copy_from_slice(b"FUGG");
    expect_invalid(b, "big-endian");
}

#[test]
fn unsupported_versions_are_rejected_with_the_reason() {
    for (v, needle) in [
        (0u32, "unsupported GGUF version 0"),
        (1, "version 1 is not supported"),
        (4, "unsupported GGUF version 4"),
        (3u32.swap_bytes(), "big-endian"),
        (2u32.swap_bytes(), "big-endian"),
        (0x0001_0000, "unsupported"),
    ] {
        let mut b = small_file();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(expect_invalid(b, needle), 4, "version {v:#x}");
    }
}

#[test]
fn absurd_counts_fail_before_allocating() {
    expect_invalid(Raw::new(3, u64::MAX, 0).data(1, 0), "tensor count");
    expect_invalid(Raw::new(3, 1 << 21, 0).data(1, 0), "tensor count");
    expect_invalid(Raw::new(3, 0, u64::MAX).data(1, 0), "key/value count");
    // Under the caps but more than the bytes left could hold.
    expect_truncated(Raw::new(3, 1 << 20, 0).data(1, 0));
    expect_truncated(Raw::new(3, 0, 1 << 20).data(1, 0));
    expect_truncated(Raw::new(3, 0, 3).kv_u32("a", 1).kv_u32("b", 2).0.clone());
}

#[test]
fn absurd_string_lengths_are_capped_and_bounded_by_the_file() {
    let mut r = Raw::new(3, 0, 1);
    r.u64(u64::MAX).u32(0).u8(0);
    assert_eq!(expect_invalid(r.0.clone(), "exceeds the cap"), 24);
    let mut r = Raw::new(3, 0, 1);
    r.u64(MAX_STRING_LEN + 1);
    expect_invalid(r.data(1, 64), "exceeds the cap");
    let mut r = Raw::new(3, 0, 1);
    r.u64(MAX_STRING_LEN).u32(0).u8(0);
    let (offset, need) = expect_truncated(r.0.clone());
    assert_eq!((offset, need), (32, MAX_STRING_LEN));
    // A string value and a tensor name too.
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(8).u64(1000).u8(b'x');
    expect_truncated(r.0.clone());
    let mut r = Raw::new(3, 1, 0);
    r.u64(u64::MAX / 2);
    expect_invalid(r.data(1, 100), "tensor name");
}

#[test]
fn absurd_array_lengths_fail_before_allocating() {
    for (ety, count) in [
        (10u32, u64::MAX),  // u64 elements: count * 8 overflows
        (10, u64::MAX / 8), // fits u64 but not the file
        (0, 1 << 40),       // u8
        (8, 1 << 40),       // strings, at least 8 bytes each
        (9, 1 << 40),       // arrays, at least 12 bytes each
        (7, 1 << 40),       // bools
    ] {
        let mut r = Raw::new(3, 0, 1);
        r.str("k").u32(9).u32(ety).u64(count).u64(0);
        match parse(r.0.clone()) {
            Err(Error::Gguf(_)) => {}
            other => panic!("type {ety} count {count}: {other:?}"),
        }
    }
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(9).u32(10).u64(u64::MAX);
    expect_invalid(r.0.clone(), "overflows");
    // Each string of a string array is bounded too.
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(9).u32(8).u64(2).str("ok").u64(1 << 20);
    expect_truncated(r.data(1, 16));
}

#[test]
fn nested_arrays_are_read_up_to_the_depth_cap() {
    let mut a = Array::U8(vec![7]);
    for _ in 1..MAX_ARRAY_DEPTH {
        a = Array::Array(vec![a]);
    }
    assert_eq!(a.depth(), MAX_ARRAY_DEPTH);
    let md = vec![(s("deep"), Value::Array(a.clone()))];
    let f = parse(build(&md, &[], DEFAULT_ALIGNMENT)).unwrap();
    assert_eq!(f.get_array("deep").unwrap(), Some(&a));

    // One level more: the writer refuses to produce it and the reader rejects it.
    let too_deep = vec![(s("deep"), Value::Array(Array::Array(vec![a])))];
    assert!(matches!(
        encode_header(&too_deep, &[], DEFAULT_ALIGNMENT),
        Err(Error::BadKey { .. })
    ));
    let mut r = Raw::new(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..MAX_ARRAY_DEPTH {
        r.u32(9).u64(1);
    }
    r.u32(0).u64(1).u8(7);
    expect_invalid(r.0.clone(), "nested deeper");
    // A very deep nest is rejected without recursing into it.
    let mut r = Raw::new(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..100_000 {
        r.u32(9).u64(1);
    }
    expect_invalid(r.0.clone(), "nested deeper");
}

#[test]
fn unknown_value_types_and_bad_bools_are_rejected() {
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(13).u32(0);
    assert_eq!(expect_invalid(r.0.clone(), "unknown value type 13"), 24 + 9);
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(9).u32(99).u64(0);
    expect_invalid(r.0.clone(), "unknown array element type 99");
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(7).u8(2);
    assert_eq!(expect_invalid(r.0.clone(), "bool value 2"), 24 + 9 + 4);
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(9).u32(7).u64(3).u8(1).u8(0).u8(255);
    assert_eq!(
        expect_invalid(r.0.clone(), "bool element 2"),
        24 + 9 + 4 + 12 + 2
    );
}

#[test]
fn invalid_utf8_is_rejected_in_keys_values_and_tensor_names() {
    let bad: &[u8] = b"ab\xff";
    let mut r = Raw::new(3, 0, 1);
    r.raw_str(bad).u32(0).u8(0);
    assert_eq!(expect_invalid(r.0.clone(), "invalid UTF-8"), 24 + 8 + 2);
    let mut r = Raw::new(3, 0, 1);
    r.str("k").u32(8).raw_str(b"\xc3");
    expect_invalid(r.0.clone(), "invalid UTF-8");
    let mut r = Raw::new(3, 0, 1);
    r.str("k")
        .u32(9)
        .u32(8)
        .u64(2)
        .str("fine")
        .raw_str(b"\xed\xa0\x80"); // surrogate
    expect_invalid(r.0.clone(), "invalid UTF-8");
    let mut r = Raw::new(3, 1, 0);
    r.raw_str(bad).u32(1).u64(8).u32(0).u64(0);
    expect_invalid(r.data(32, 32), "invalid UTF-8");
}

#[test]
fn duplicate_keys_and_tensor_names_are_rejected() {
    let mut r = Raw::new(3, 0, 2);
    r.kv_u32("a.b", 1).kv_u32("a.b", 2);
    assert_eq!(expect_invalid(r.0.clone(), "duplicate key 'a.b'"), 24 + 19);
    let mut r = Raw::new(3, 2, 0);
    r.tensor("w", &[8], 0, 0).tensor("w", &[8], 0, 32);
    expect_invalid(r.data(32, 64), "duplicate tensor name 'w'");
}

#[test]
fn bad_dimensions_are_rejected() {
    expect_invalid(one_tensor(&[1, 1, 1, 1, 1], 0, 0, 4), "5 dimensions");
    let mut r = Raw::new(3, 1, 0);
    r.str("w").u32(u32::MAX);
    expect_invalid(r.data(1, 64), "dimensions");
    expect_invalid(one_tensor(&[4, 0], 0, 0, 16), "dimension 1 is 0");
    expect_invalid(one_tensor(&[1 << 63], 0, 0, 0), "must be in 1..=i64::MAX");
    expect_invalid(
        one_tensor(&[1 << 32, 1 << 32], 0, 0, 0),
        "element count overflows",
    );
    expect_invalid(
        one_tensor(&[1 << 31, 1 << 31, 4], 0, 0, 0),
        "element count overflows",
    );
    // Element count fits, byte size does not.
    expect_invalid(one_tensor(&[1 << 62], 0, 0, 0), "byte size overflows");
    // Up to 4 dims, and a scalar, are fine.
    let f = parse(one_tensor(&[2, 1, 3, 1], 0, 0, 24)).unwrap();
    assert_eq!(
        (f.tensors()[0].n_rows(), f.tensors()[0].size_bytes),
        (3, 24)
    );
    let f = parse(one_tensor(&[], 0, 0, 4)).unwrap();
    assert_eq!(
        (f.tensors()[0].n_elements(), f.tensors()[0].size_bytes),
        (1, 4)
    );
}

#[test]
fn unknown_tensor_types_are_named() {
    for id in [4u32, 5, 31, 36, 40, u32::MAX] {
        match parse(one_tensor(&[32], id, 0, 64)) {
            Err(Error::UnknownTensorType { tensor, type_id }) => {
                assert_eq!((tensor.as_str(), type_id), ("w", id));
            }
            other => panic!("type {id}: {other:?}"),
        }
    }
}

#[test]
fn row_lengths_must_fill_whole_blocks() {
    expect_invalid(
        one_tensor(&[33, 2], 2, 0, 64),
        "not a multiple of the Q4_0 block size 32",
    );
    expect_invalid(one_tensor(&[128], 12, 0, 256), "block size 256");
    assert!(parse(one_tensor(&[256], 12, 0, 144)).is_ok());
}

#[test]
fn offsets_must_be_aligned() {
    expect_invalid(
        one_tensor(&[8], 0, 16, 64),
        "not a multiple of the alignment 32",
    );
    // With general.alignment = 64, 32 is misaligned; with 16, 16 is fine.
    let mut r = Raw::new(3, 1, 1);
    r.kv_u32("general.alignment", 64).tensor("w", &[8], 0, 32);
    expect_invalid(r.data(64, 128), "alignment 64");
    let mut r = Raw::new(3, 1, 1);
    r.kv_u32("general.alignment", 16).tensor("w", &[8], 0, 16);
    let f = parse(r.data(16, 48)).unwrap();
    assert_eq!((f.alignment(), f.data_offset() % 16), (16, 0));
    assert_eq!(f.tensors()[0].abs_offset, f.data_offset() + 16);
}

#[test]
fn bad_alignments_are_rejected() {
    for (ty, payload, needle) in [
        (4u32, 0u64.to_le_bytes()[..4].to_vec(), "u32 0"),
        (4, 3u32.to_le_bytes().to_vec(), "u32 3"),
        (4, 48u32.to_le_bytes().to_vec(), "u32 48"),
        (10, (1u64 << 40).to_le_bytes().to_vec(), "u64 1099511627776"),
        (5, (-32i32).to_le_bytes().to_vec(), "i32 -32"),
        (6, 32f32.to_le_bytes().to_vec(), "f32 32"),
    ] {
        let mut r = Raw::new(3, 0, 1);
        r.str("general.alignment").u32(ty);
        r.0.extend_from_slice(&payload);
        let off = expect_invalid(r.0.clone(), needle);
        assert_eq!(off, 24 + 8 + 17, "{needle}");
    }
}

#[test]
fn tensors_past_the_end_are_rejected() {
    expect_invalid(one_tensor(&[8], 0, 0, 31), "extends past the end");
    expect_invalid(one_tensor(&[8], 0, 32, 63), "extends past the end");
    // Offsets near u64::MAX must not overflow.
    expect_invalid(one_tensor(&[8], 0, !31, 64), "extends past the end");
    expect_invalid(
        one_tensor(&[8], 0, (1u64 << 63) & !31, 64),
        "extends past the end",
    );
    assert!(parse(one_tensor(&[8], 0, 32, 64)).is_ok());
}

#[test]
fn overlapping_tensors_are_rejected_in_any_order() {
    let mut r = Raw::new(3, 2, 0);
    r.tensor("a", &[16], 0, 0).tensor("b", &[8], 0, 32);
    expect_invalid(
        r.data(32, 128),
        "'a' (offset 0, 64 bytes) overlaps tensor 'b'",
    );
    let mut r = Raw::new(3, 2, 0);
    r.tensor("b", &[8], 0, 32).tensor("a", &[16], 0, 0);
    expect_invalid(r.data(32, 128), "overlaps");
    let mut r = Raw::new(3, 2, 0);
    r.tensor("a", &[8], 0, 0).tensor("b", &[8], 0, 0);
    expect_invalid(r.data(32, 128), "overlaps");
    // Out of file order but disjoint, with a gap: accepted (llama.cpp would insist on packing).
    let mut r = Raw::new(3, 2, 0);
    r.tensor("b", &[8], 0, 64).tensor("a", &[8], 0, 0);
    let f = parse(r.data(32, 96)).unwrap();
    assert_eq!(f.tensor("b").unwrap().offset, 64);
}

// ---------------------------------------------------------------------------------------------
// Writer misuse

#[test]
fn writer_rejects_bad_alignment_and_metadata() {
    let md = sample_metadata();
    let specs: Vec<TensorSpec> = sample_tensors().into_iter().map(|(t, _)| t).collect();
    for a in [0u64, 3, 48, 1 << 40] {
        assert!(
            matches!(encode_header(&md, &specs, a), Err(Error::InvalidInput(_))),
            "{a}"
        );
    }
    // A non-default alignment needs the key, and the key must match.
    assert!(matches!(
        encode_header(&md, &specs, 64),
        Err(Error::InvalidInput(_))
    ));
    let mut with_key = md.clone();
    with_key.push((s("general.alignment"), Value::U32(64)));
    assert!(encode_header(&with_key, &specs, 64).is_ok());
    assert!(matches!(
        encode_header(&with_key, &specs, 32),
        Err(Error::BadKey { .. })
    ));
    let mut wrong_type = md.clone();
    wrong_type.push((s("general.alignment"), Value::U64(32)));
    assert!(matches!(
        encode_header(&wrong_type, &specs, 32),
        Err(Error::BadKey { .. })
    ));
    let mut dup = md.clone();
    dup.push((s("t.u8"), Value::U8(1)));
    assert!(
        matches!(encode_header(&dup, &specs, 32), Err(Error::BadKey { key, .. }) if key == "t.u8")
    );

    let bad_specs = [
        TensorSpec::new("x", vec![33], GgmlType::Q4_0),
        TensorSpec::new("x", vec![0, 4], GgmlType::F32),
        TensorSpec::new("x", vec![1, 1, 1, 1, 1], GgmlType::F32),
        TensorSpec::new("x", vec![1 << 40, 1 << 40], GgmlType::F32),
    ];
    for spec in bad_specs {
        assert!(
            encode_header(&md, std::slice::from_ref(&spec), 32).is_err(),
            "{spec:?}"
        );
    }
    let long = TensorSpec::new("n".repeat(MAX_TENSOR_NAME_WRITE), vec![8], GgmlType::F32);
    assert!(matches!(
        encode_header(&md, &[long], 32),
        Err(Error::InvalidInput(_))
    ));
    let longest = TensorSpec::new(
        "n".repeat(MAX_TENSOR_NAME_WRITE - 1),
        vec![8],
        GgmlType::F32,
    );
    assert!(encode_header(&md, &[longest], 32).is_ok());
    let twice = [
        TensorSpec::new("x", vec![8], GgmlType::F32),
        TensorSpec::new("x", vec![8], GgmlType::F32),
    ];
    assert!(matches!(
        encode_header(&md, &twice, 32),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn writer_refuses_extra_bytes_and_incomplete_files_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let tensors = sample_tensors();
    let specs: Vec<TensorSpec> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let total: usize = tensors.iter().map(|(_, d)| d.len()).sum();

    let mut w = GgufWriter::create(&path, sample_metadata(), specs.clone(), 32).unwrap();
    assert!(matches!(
        w.write_chunk(&vec![0; total + 1]),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        w.write_tensor(&[0; 31]),
        Err(Error::InvalidInput(_))
    ));
    w.write_chunk(&[0; 5]).unwrap();
    assert!(
        matches!(w.write_tensor(&tensors[0].1), Err(Error::InvalidInput(_))),
        "mid-tensor"
    );
    w.write_chunk(&tensors[0].1[5..]).unwrap();
    w.write_tensor(&tensors[1].1).unwrap();
    assert!(matches!(w.finish(), Err(Error::InvalidInput(m)) if m.contains("'c.f16'")));
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temporary file removed"
    );

    let mut w = GgufWriter::create(&path, sample_metadata(), specs.clone(), 32).unwrap();
    for (_, d) in &tensors {
        w.write_tensor(d).unwrap();
    }
    assert!(matches!(w.write_chunk(&[1]), Err(Error::InvalidInput(_))));
    assert!(matches!(w.write_tensor(&[1]), Err(Error::InvalidInput(_))));
    w.write_chunk(&[]).unwrap();
    drop(w);
    assert!(!path.exists(), "dropped without finish");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    // An existing file is replaced only on finish.
    std::fs::write(&path, b"old").unwrap();
    let mut w = GgufWriter::create(&path, sample_metadata(), specs, 32).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    for (_, d) in &tensors {
        w.write_tensor(d).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), small_file());
}

// ---------------------------------------------------------------------------------------------
// Mutation testing

/// Parses `bytes`; if that succeeds, uses everything the parse produced, and checks that the
/// content re-encodes to a file that parses back and re-encodes to the same header.
fn exercise(bytes: Vec<u8>) {
    let Ok(f) = parse(bytes) else { return };
    for t in f.tensors() {
        let d = f.tensor_data(t);
        assert_eq!(d.len() as u64, t.size_bytes);
        assert!(t.abs_offset + t.size_bytes <= f.file_len());
        assert_eq!(f.tensor(&t.name), Some(t));
        assert_eq!(t.row_bytes() * t.n_rows(), t.size_bytes);
        assert!(t.n_elements() >= t.n_rows());
    }
    for (k, v) in f.metadata() {
        // Same entry (by address: NaN values make `==` useless here).
        assert!(
            f.get(k).is_some_and(|g| std::ptr::eq(g, v)),
            "lookup of {k}"
        );
        let _ = (f.get_u32(k), f.get_f32(k), f.get_str(k), f.get_bool(k));
        if let Value::Array(a) = v {
            let _ = (a.to_u64_vec(), a.to_i64_vec(), a.to_f32_vec(), a.len());
        }
        let _ = v.type_name();
    }
    let _ = f.architecture();

    let specs: Vec<TensorSpec> = f.tensors().iter().map(TensorSpec::from).collect();
    // Encoding refuses what the reader tolerates: long tensor names, a non-u32 alignment key.
    let Ok((header, layout)) = encode_header(f.metadata(), &specs, f.alignment()) else {
        return;
    };
    let mut again = header.clone();
    again.resize(layout.total_len as usize, 0);
    let g = parse(again).expect("a re-encoded file parses");
    let specs2: Vec<TensorSpec> = g.tensors().iter().map(TensorSpec::from).collect();
    assert_eq!(specs, specs2);
    let (header2, _) = encode_header(g.metadata(), &specs2, g.alignment()).unwrap();
    assert!(header == header2, "encode(parse(encode(x))) != encode(x)");
}

#[derive(Debug, Clone)]
enum Edit {
    Byte(prop::sample::Index, u8),
    Word(prop::sample::Index, u64),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        (
            any::<prop::sample::Index>(),
            prop_oneof![
                any::<u64>(),
                0u64..64,
                Just(u64::MAX),
                Just(1 << 32),
                Just(MAX_STRING_LEN)
            ]
        )
            .prop_map(|(i, w)| Edit::Word(i, w)),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut b: Vec<u8>, edits: &[Edit], cut: Option<prop::sample::Index>) -> Vec<u8> {
    for e in edits {
        match e {
            Edit::Byte(i, v) => {
                let k = i.index(b.len());
                b[k] = *v;
            }
            Edit::Word(i, w) => {
                let k = i.index(b.len());
                let end = (k + 8).min(b.len());
                b[k..end].copy_from_slice(&w.to_le_bytes()[..end - k]);
            }
        }
    }
    if let Some(c) = cut {
        let n = c.index(b.len() + 1);
        b.truncate(n);
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_small_files_never_panic(edits in edits(), cut in any::<Option<prop::sample::Index>>()) {
        exercise(apply(small_file(), &edits, cut));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn mutated_fixture_headers_never_panic(edits in edits()) {
        // Mutations restricted to the header region, where they matter.
        let full = std::fs::read(fixture("Q4_0")).unwrap();
        let header = full[..14846].to_vec();
        let mutated = apply(header, &edits, None);
        let mut b = mutated;
        b.extend_from_slice(&full[14846..]);
        exercise(b);
    }
}
