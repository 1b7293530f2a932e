//! Integration tests: generated files load in the engine and behave as designed.

use std::path::Path;

use datasets::measure::measure;
use datasets::prompts::{TokenDist, synthetic_prompt};
use datasets::{GenOptions, GenRequest, OutType, generate};
use engine::model::{Model, ModelOptions};

fn load(path: &Path) -> Model {
    Model::load(path, &ModelOptions::default()).unwrap()
}

#[test]
fn tiny_explore() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [OutType::F32, OutType::Q4_0] {
        let req = GenRequest::new("tiny", ty, 0);
        let path = dir.path().join(req.default_file_name());
        let rep = generate(&req, &path, &GenOptions::default()).unwrap();
        eprintln!("{rep:?}");
        let model = load(&path);
        let prompts: Vec<Vec<u32>> = (0..8)
            .map(|s| synthetic_prompt(s, 256, 512, TokenDist::Uniform))
            .collect();
        let (stats, generated) = measure(&model, &prompts, 32).unwrap();
        eprintln!("{ty}\n{}", stats.table());
        eprintln!("gen {:?}", &generated[0]);
    }
}
