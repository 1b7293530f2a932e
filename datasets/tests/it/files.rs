//! Determinism, reuse, replacement rules and atomic writes.

use datasets::OutType;
use datasets::generate::{GenOptions, GenRequest, KEY_FINGERPRINT, generate};
use engine::formats::gguf::GgufFile;
use sha2::{Digest, Sha256};

fn sha(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

/// SHA-256 of `tiny`, q4_0, seed 0. If the design changes on purpose, bump
/// `datasets::generate::DESIGN_VERSION` and update this value.
const TINY_Q4_0_SHA256: &str = "9ed0e1122a67688304a9e1db62fdce58a6bb570e0298da830a2463c17f583054";

#[test]
fn same_request_gives_byte_identical_files_whatever_the_threads_and_io_mode() {
    let dir = tempfile::tempdir().unwrap();
    let req = GenRequest::new("tiny", OutType::Q4_0, 0);
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    let ra = generate(
        &req,
        &a,
        &GenOptions {
            threads: 1,
            direct_io: false,
            ..Default::default()
        },
    )
    .unwrap();
    generate(
        &req,
        &b,
        &GenOptions {
            threads: 2,
            direct_io: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!ra.reused);
    let (ha, hb) = (sha(&a), sha(&b));
    assert_eq!(ha, hb);
    assert_eq!(std::fs::metadata(&a).unwrap().len(), ra.bytes);
    if !TINY_Q4_0_SHA256.is_empty() {
        assert_eq!(ha, TINY_Q4_0_SHA256, "design changed: bump DESIGN_VERSION");
    }
    eprintln!("tiny q4_0 sha256 {ha}");
    // Another seed gives another file.
    let c = dir.path().join("c.gguf");
    generate(
        &GenRequest::new("tiny", OutType::Q4_0, 1),
        &c,
        &GenOptions::default(),
    )
    .unwrap();
    assert_ne!(sha(&c), ha);
}

#[test]
fn matching_files_are_reused_and_others_rebuilt_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let req = GenRequest::new("tiny", OutType::F16, 3);
    assert!(
        !generate(&req, &path, &GenOptions::default())
            .unwrap()
            .reused
    );
    assert!(
        generate(&req, &path, &GenOptions::default())
            .unwrap()
            .reused
    );
    let forced = GenOptions {
        force: true,
        ..Default::default()
    };
    assert!(!generate(&req, &path, &forced).unwrap().reused);
    // Our own file with other settings is rebuilt.
    let other = GenRequest::new("tiny", OutType::F16, 4);
    assert!(
        !generate(&other, &path, &GenOptions::default())
            .unwrap()
            .reused
    );
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(
        g.get_str(KEY_FINGERPRINT).unwrap().unwrap(),
        other.fingerprint(32)
    );
    // A file we did not write is left alone unless forced.
    let foreign = dir.path().join("foreign.gguf");
    std::fs::write(&foreign, b"not a model").unwrap();
    let err = generate(&req, &foreign, &GenOptions::default()).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&foreign).unwrap(), b"not a model");
    assert!(!generate(&req, &foreign, &forced).unwrap().reused);
}

#[test]
fn failed_writes_leave_no_file_and_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir").join("x.gguf");
    let req = GenRequest::new("tiny", OutType::Q8_0, 0);
    assert!(generate(&req, &missing, &GenOptions::default()).is_err());
    assert!(!missing.exists());
    let ok = dir.path().join("ok.gguf");
    generate(&req, &ok, &GenOptions::default()).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        vec!["ok.gguf".to_string()],
        "no temporary left behind"
    );
}

#[test]
fn every_output_type_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [
        OutType::F32,
        OutType::F16,
        OutType::Bf16,
        OutType::Q8_0,
        OutType::Q4_0,
        OutType::Q4_0Mixed,
    ] {
        let req = GenRequest::new("tiny", ty, 0);
        let path = dir.path().join(req.default_file_name());
        generate(&req, &path, &GenOptions::default()).unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(
            g.get_u32("general.file_type").unwrap(),
            Some(ty.file_type()),
            "{ty}"
        );
        let model = crate::load(&path);
        let mut s = engine::model::Session::new(&model, Default::default()).unwrap();
        let logits = s
            .forward(&[1, 2, 3, 4], engine::model::Logits::Last)
            .unwrap();
        assert_eq!(logits.len(), 512);
        assert!(logits.iter().all(|x| x.is_finite()), "{ty}");
    }
}
