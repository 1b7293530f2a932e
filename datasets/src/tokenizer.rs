//! GGUF tokenizer metadata from the real Qwen tokenizer (Qwen3's `tokenizer.json`, Apache-2.0,
//! shipped xz-compressed in `assets/`; the Qwen2 family shares its BPE, merges and regex), as
//! llama.cpp's converter writes it: model `gpt2`, pre-tokenizer `qwen2`, tokens padded with
//! `[PAD<id>]` (type UNUSED) up to the embedding's rows, added tokens CONTROL when special or
//! `<|…|>`-shaped and USER_DEFINED otherwise, merges as `"a b"`.
//!
//! Models with fewer rows than the tokenizer has tokens (`tiny`, `--vocab` overrides) get a
//! consistent truncation: the first `rows − 3` BPE tokens (ids 0–255 are the byte alphabet, so
//! every text still encodes), the merges among them, and `<|endoftext|>`, `<|im_start|>`,
//! `<|im_end|>` as the last three ids.

use serde_json::Value as Json;

use crate::error::{Error, Result};

/// The compressed `tokenizer.json`.
const TOKENIZER_XZ: &[u8] = include_bytes!("../assets/tokenizer.json.xz");

/// ChatML, the format SmallThinker uses (the HF repo's exact Jinja template was not available).
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Token type ids (`llama_token_type`).
pub mod token_type {
    /// A BPE token.
    pub const NORMAL: i32 = 1;
    /// A special token.
    pub const CONTROL: i32 = 3;
    /// A non-special added token.
    pub const USER_DEFINED: i32 = 4;
    /// A padding row.
    pub const UNUSED: i32 = 5;
}

/// Smallest vocabulary that can hold a truncated tokenizer (bytes + 3 specials).
pub const MIN_VOCAB: usize = 256 + 3;

/// Tokenizer metadata for a model with `rows` embedding rows.
#[derive(Clone, Debug)]
pub struct TokenizerMeta {
    /// `tokenizer.ggml.tokens`, one per row.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`.
    pub token_type: Vec<i32>,
    /// `tokenizer.ggml.merges`.
    pub merges: Vec<String>,
    /// `<|endoftext|>` (BOS and padding).
    pub bos: u32,
    /// `<|im_end|>` (end of turn).
    pub eos: u32,
    /// Padding id.
    pub pad: u32,
}

fn looks_special(t: &str) -> bool {
    (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
}

struct Parsed {
    /// BPE tokens by id.
    bpe: Vec<String>,
    /// Added tokens `(id, content, special)`.
    added: Vec<(u32, String, bool)>,
    merges: Vec<(String, String)>,
}

fn parse() -> Result<Parsed> {
    let err = |m: String| Error::Tokenizer(m);
    let mut json = Vec::new();
    lzma_rs::xz_decompress(&mut std::io::BufReader::new(TOKENIZER_XZ), &mut json)
        .map_err(|e| err(format!("cannot decompress the embedded tokenizer: {e}")))?;
    let v: Json =
        serde_json::from_slice(&json).map_err(|e| err(format!("invalid tokenizer.json: {e}")))?;
    let vocab = v["model"]["vocab"]
        .as_object()
        .ok_or_else(|| err("model.vocab is not an object".into()))?;
    let mut bpe = vec![String::new(); vocab.len()];
    for (tok, id) in vocab {
        let id = id
            .as_u64()
            .filter(|&i| (i as usize) < bpe.len())
            .ok_or_else(|| err(format!("bad id for token {tok:?}")))?;
        bpe[id as usize] = tok.clone();
    }
    if bpe.iter().any(|t| t.is_empty()) {
        return Err(err("BPE ids are not contiguous".into()));
    }
    let added = v["added_tokens"]
        .as_array()
        .ok_or_else(|| err("added_tokens is not an array".into()))?
        .iter()
        .map(|a| {
            let id = a["id"]
                .as_u64()
                .ok_or_else(|| err("added token without id".into()))?;
            let content = a["content"]
                .as_str()
                .ok_or_else(|| err("added token without content".into()))?;
            Ok((
                id as u32,
                content.to_string(),
                a["special"].as_bool() == Some(true),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let merges = v["model"]["merges"]
        .as_array()
        .ok_or_else(|| err("model.merges is not an array".into()))?
        .iter()
        .map(|m| match m {
            Json::String(s) => s
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| err(format!("merge {s:?} has no space"))),
            Json::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                _ => Err(err("merge pair is not two strings".into())),
            },
            other => Err(err(format!("unexpected merge {other}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Parsed { bpe, added, merges })
}

/// Tokenizer metadata for `rows` embedding rows, or `None` when `rows` is below [`MIN_VOCAB`].
pub fn qwen_tokenizer(rows: usize) -> Result<Option<TokenizerMeta>> {
    if rows < MIN_VOCAB {
        return Ok(None);
    }
    let p = parse()?;
    let n_real = p.bpe.len() + p.added.len();
    let id_of = |name: &str| {
        p.added
            .iter()
            .find(|a| a.1 == name)
            .map(|a| a.0)
            .ok_or_else(|| Error::Tokenizer(format!("{name} missing")))
    };
    if rows >= n_real {
        let mut tokens = p.bpe.clone();
        let mut types = vec![token_type::NORMAL; tokens.len()];
        tokens.resize(rows, String::new());
        types.resize(rows, token_type::UNUSED);
        for (id, content, special) in &p.added {
            let i = *id as usize;
            if i >= rows || i < p.bpe.len() {
                return Err(Error::Tokenizer(format!("added token id {i} out of place")));
            }
            tokens[i] = content.clone();
            types[i] = if *special || looks_special(content) {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
        }
        for (i, t) in tokens.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[PAD{i}]");
            }
        }
        let merges = p.merges.iter().map(|(a, b)| format!("{a} {b}")).collect();
        let (bos, eos) = (id_of("<|endoftext|>")?, id_of("<|im_end|>")?);
        return Ok(Some(TokenizerMeta {
            tokens,
            token_type: types,
            merges,
            bos,
            eos,
            pad: bos,
        }));
    }
    // Truncated: the first rows − 3 BPE tokens, then the three chat specials.
    let keep = rows - 3;
    let mut tokens: Vec<String> = p.bpe[..keep].to_vec();
    let mut types = vec![token_type::NORMAL; keep];
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(s.to_string());
        types.push(token_type::CONTROL);
    }
    let kept: std::collections::HashSet<&str> = p.bpe[..keep].iter().map(|s| s.as_str()).collect();
    let merges = p
        .merges
        .iter()
        .filter(|(a, b)| {
            kept.contains(a.as_str())
                && kept.contains(b.as_str())
                && kept.contains(format!("{a}{b}").as_str())
        })
        .map(|(a, b)| format!("{a} {b}"))
        .collect();
    let r = rows as u32;
    Ok(Some(TokenizerMeta {
        tokens,
        token_type: types,
        merges,
        bos: r - 3,
        eos: r - 1,
        pad: r - 3,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_vocabulary_is_padded_like_the_converter() {
        let t = qwen_tokenizer(151_936).unwrap().unwrap();
        assert_eq!(t.tokens.len(), 151_936);
        assert_eq!(t.tokens[0], "!");
        assert_eq!(t.tokens[151_643], "<|endoftext|>");
        assert_eq!(t.token_type[151_644], token_type::CONTROL);
        assert_eq!(t.token_type[151_657], token_type::USER_DEFINED); // <tool_call>
        assert_eq!(t.token_type[151_659], token_type::CONTROL); // <|fim_prefix|>
        assert_eq!(t.tokens[151_669], "[PAD151669]");
        assert_eq!(t.token_type[151_935], token_type::UNUSED);
        assert_eq!(t.merges[0], "Ġ Ġ");
        assert_eq!((t.bos, t.eos, t.pad), (151_643, 151_645, 151_643));
    }

    #[test]
    fn truncated_vocabulary_keeps_bytes_and_specials() {
        let t = qwen_tokenizer(512).unwrap().unwrap();
        assert_eq!(t.tokens.len(), 512);
        assert_eq!(t.tokens[511], "<|im_end|>");
        assert_eq!((t.bos, t.eos), (509, 511));
        assert!(!t.merges.is_empty());
        let ids: std::collections::HashSet<&str> = t.tokens.iter().map(|s| s.as_str()).collect();
        for m in &t.merges {
            let (a, b) = m.split_once(' ').unwrap();
            assert!(ids.contains(format!("{a}{b}").as_str()));
        }
        assert!(qwen_tokenizer(100).unwrap().is_none());
    }
}
