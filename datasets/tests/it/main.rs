//! Integration tests of the generator: files, metadata, tokenizer, and the behaviour the
//! engine's own forward pass shows on generated models.

mod behaviour;
mod files;
mod metadata;

use std::path::Path;

use engine::model::{Model, ModelOptions};

/// Loads a generated model with default options.
pub fn load(path: &Path) -> Model {
    Model::load(path, &ModelOptions::default()).expect("generated model loads")
}
