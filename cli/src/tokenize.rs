//! `thinker tokenize`: text to token ids with a model's tokenizer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use engine::formats::gguf::GgufFile;
use engine::tokenizer::Tokenizer;

/// `thinker tokenize` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A `tokenizer.json`, a `.gguf` file, or a Hugging Face model directory.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Text to encode.
    #[arg(long)]
    text: String,
    /// Print one JSON array of integers.
    #[arg(long)]
    json: bool,
    /// Treat special-token text (e.g. `<|im_start|>`) as special tokens.
    #[arg(long)]
    parse_special: bool,
}

/// Loads a tokenizer from a `tokenizer.json`, a GGUF file or a model directory.
pub fn load_tokenizer(path: &std::path::Path) -> Result<Tokenizer> {
    let t = if path.is_dir() {
        Tokenizer::from_json_file(path.join("tokenizer.json"))
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        let g = GgufFile::open(path)?;
        Tokenizer::from_gguf(&g)
    } else {
        Tokenizer::from_json_file(path)
    };
    t.with_context(|| format!("cannot load tokenizer from {}", path.display()))
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    let tok = load_tokenizer(&a.tokenizer)?;
    let ids = tok.encode(&a.text, a.parse_special)?;
    if a.json {
        println!("{}", serde_json::to_string(&ids)?);
    } else {
        let s: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{}", s.join(","));
    }
    Ok(())
}
