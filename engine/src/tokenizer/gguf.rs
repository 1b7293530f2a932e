//! The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.

use super::{GgufTokenizerParts, Tokenizer};
use crate::error::{Error, Result};
use crate::formats::gguf::GgufFile;

fn bad(key: &str, what: &str) -> Error {
    Error::BadKey {
        key: key.to_string(),
        what: what.to_string(),
    }
}

/// Reads the tokenizer parts from GGUF metadata.
pub fn parts_from_gguf(g: &GgufFile) -> Result<GgufTokenizerParts> {
    let model = g.require_str("tokenizer.ggml.model")?.to_string();
    let strings = |key: &str| -> Result<Option<Vec<String>>> {
        match g.get_array(key)? {
            None => Ok(None),
            Some(a) => a
                .as_strings()
                .map(|s| Some(s.to_vec()))
                .ok_or_else(|| bad(key, "expected an array of strings")),
        }
    };
    let tokens = strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::MissingKey("tokenizer.ggml.tokens".into()))?;
    let merges = strings("tokenizer.ggml.merges")?.unwrap_or_default();
    let token_types = match g.get_array("tokenizer.ggml.token_type")? {
        None => None,
        Some(a) => Some(
            a.to_i64_vec()
                .ok_or_else(|| bad("tokenizer.ggml.token_type", "expected integers"))?
                .into_iter()
                .map(|v| {
                    i32::try_from(v)
                        .map_err(|_| bad("tokenizer.ggml.token_type", "value out of range"))
                })
                .collect::<Result<Vec<i32>>>()?,
        ),
    };
    Ok(GgufTokenizerParts {
        model,
        pre: g.get_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens,
        token_types,
        merges,
        bos_id: g.get_u32("tokenizer.ggml.bos_token_id")?,
        eos_id: g.get_u32("tokenizer.ggml.eos_token_id")?,
        eot_id: g.get_u32("tokenizer.ggml.eot_token_id")?,
        pad_id: g.get_u32("tokenizer.ggml.padding_token_id")?,
        add_bos: g.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        chat_template: g.get_str("tokenizer.chat_template")?.map(str::to_string),
    })
}

impl Tokenizer {
    /// The tokenizer a GGUF file carries.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        Tokenizer::from_gguf_parts(parts_from_gguf(g)?)
    }
}
