//! libFuzzer target for the GGUF reader: `cargo +nightly fuzz run gguf_parse` from `fuzz/`
//! (seed the corpus with `engine/tests/fixtures/tiny-t1-gguf/*.gguf`).
//!
//! Properties: parsing arbitrary bytes never panics, never over-allocates and never reads out of
//! bounds; a file that parses exposes in-bounds tensor slices; and its content re-encodes to a
//! header that parses back and re-encodes to the same bytes (the writer and reader agree).
#![no_main]

use engine::formats::gguf::{GgufFile, TensorSpec, encode_header};
use engine::formats::mmap::Blob;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::parse(Blob::from_vec(data.to_vec())) else {
        return;
    };
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.size_bytes);
        assert_eq!(t.row_bytes() * t.n_rows(), t.size_bytes);
        assert!(f.tensor(&t.name).is_some());
    }
    for (k, v) in f.metadata() {
        assert!(f.get(k).is_some());
        let _ = (
            f.get_u32(k),
            f.get_f32(k),
            f.get_str(k),
            f.get_bool(k),
            v.type_name(),
        );
        if let Some(a) = v.as_array() {
            let _ = (a.to_u64_vec(), a.to_i64_vec(), a.to_f32_vec(), a.depth());
        }
    }

    // Encoding refuses what the reader tolerates: tensor names of 64+ bytes (llama.cpp's limit)
    // and a `general.alignment` stored with another integer type than u32.
    let specs: Vec<TensorSpec> = f.tensors().iter().map(TensorSpec::from).collect();
    let Ok((header, layout)) = encode_header(f.metadata(), &specs, f.alignment()) else {
        return;
    };
    let mut bytes = header.clone();
    bytes.resize(layout.total_len as usize, 0);
    let g = GgufFile::parse(Blob::from_vec(bytes)).expect("a re-encoded file parses");
    let specs2: Vec<TensorSpec> = g.tensors().iter().map(TensorSpec::from).collect();
    assert_eq!(specs, specs2);
    let (header2, _) = encode_header(g.metadata(), &specs2, g.alignment()).expect("re-encodes");
    assert!(header == header2, "encode(parse(encode(x))) != encode(x)");
});
