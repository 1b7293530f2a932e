//! Reading a Hugging Face `tokenizer.json` (and `tokenizer_config.json`) into a [`Spec`].
//!
//! Only what a Qwen2-family tokenizer uses is accepted: a BPE model without subword affixes,
//! dropout or byte fallback; no normaliser or NFC; the Qwen2 `Split` + `ByteLevel`
//! pre-tokenizer; the `ByteLevel` decoder. Anything else is refused with an error rather than
//! tokenised differently from the reference.

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use super::added::AddedToken;
use super::{MAX_VOCAB, QWEN2_PATTERN, Spec, bad};
use crate::error::Result;

/// The parts of `tokenizer.json` that matter. The large vocabulary and merge lists are read
/// straight into vectors (no intermediate JSON tree).
#[derive(Deserialize)]
struct TokenizerJson {
    #[serde(default)]
    normalizer: Option<serde_json::Value>,
    #[serde(default)]
    pre_tokenizer: Option<serde_json::Value>,
    #[serde(default)]
    decoder: Option<serde_json::Value>,
    #[serde(default)]
    added_tokens: Vec<AddedTokenJson>,
    model: ModelJson,
}

#[derive(Deserialize)]
struct AddedTokenJson {
    id: u64,
    content: String,
    #[serde(default)]
    special: bool,
    #[serde(default)]
    single_word: bool,
    #[serde(default)]
    lstrip: bool,
    #[serde(default)]
    rstrip: bool,
    #[serde(default)]
    normalized: Option<bool>,
}

#[derive(Deserialize)]
struct ModelJson {
    #[serde(rename = "type", default)]
    ty: Option<String>,
    #[serde(default)]
    dropout: Option<f64>,
    #[serde(default)]
    continuing_subword_prefix: Option<String>,
    #[serde(default)]
    end_of_word_suffix: Option<String>,
    #[serde(default)]
    byte_fallback: Option<bool>,
    #[serde(default)]
    ignore_merges: Option<bool>,
    vocab: Vocab,
    #[serde(default)]
    merges: Vec<Merge>,
}

/// `model.vocab`: token -> id, kept in file order.
struct Vocab(Vec<(String, u64)>);

impl<'de> Deserialize<'de> for Vocab {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Vocab;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map from token to id")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Vocab, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some((k, v)) = m.next_entry::<String, u64>()? {
                    out.push((k, v));
                }
                Ok(Vocab(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// One merge: `"a b"` (older files) or `["a", "b"]` (newer files).
struct Merge(String, String);

impl<'de> Deserialize<'de> for Merge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Merge;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a merge, \"a b\" or [\"a\", \"b\"]")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Merge, E> {
                let mut it = s.split(' ');
                match (it.next(), it.next(), it.next()) {
                    (Some(a), Some(b), None) => Ok(Merge(a.to_string(), b.to_string())),
                    _ => Err(E::custom(format!("merge '{s}' is not 'a b'"))),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut s: A,
            ) -> std::result::Result<Merge, A::Error> {
                let a: String = s
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("merge pair too short"))?;
                let b: String = s
                    .next_element()?
                    .ok_or_else(|| de::Error::custom("merge pair too short"))?;
                if s.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom("merge pair too long"));
                }
                Ok(Merge(a, b))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parses `tokenizer.json`.
pub(super) fn spec_from_json(json: &str) -> Result<Spec> {
    let tj: TokenizerJson =
        serde_json::from_str(json).map_err(|e| bad(format!("tokenizer.json: {e}")))?;

    let nfc = match &tj.normalizer {
        None | Some(serde_json::Value::Null) => false,
        Some(n) => {
            normalizer_is_nfc(n).ok_or_else(|| bad(format!("unsupported normalizer {n}")))?
        }
    };
    check_pre_tokenizer(tj.pre_tokenizer.as_ref())?;
    match &tj.decoder {
        Some(d) if d.get("type").and_then(|t| t.as_str()) == Some("ByteLevel") => {}
        other => {
            return Err(bad(format!(
                "unsupported decoder {} (only ByteLevel)",
                other.as_ref().map_or("null".to_string(), |d| d.to_string())
            )));
        }
    }

    let model = tj.model;
    let ty = model.ty.as_deref().unwrap_or("BPE");
    if ty != "BPE" {
        return Err(bad(format!(
            "model type '{ty}' is not supported (only BPE)"
        )));
    }
    let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    if non_empty(&model.continuing_subword_prefix) || non_empty(&model.end_of_word_suffix) {
        return Err(bad("BPE subword prefixes/suffixes are not supported"));
    }
    if model.byte_fallback == Some(true) || model.ignore_merges == Some(true) {
        return Err(bad("BPE byte_fallback / ignore_merges are not supported"));
    }
    if model.dropout.is_some_and(|d| d > 0.0) {
        return Err(bad("BPE dropout is not supported"));
    }

    let check_id = |id: u64, what: &str| -> Result<u32> {
        if (id as usize) < MAX_VOCAB {
            Ok(id as u32)
        } else {
            Err(bad(format!("token '{what}': id {id} is too large")))
        }
    };
    let mut added = Vec::with_capacity(tj.added_tokens.len());
    for a in tj.added_tokens {
        let id = check_id(a.id, &a.content)?;
        added.push(AddedToken {
            id,
            special: a.special,
            single_word: a.single_word,
            lstrip: a.lstrip,
            rstrip: a.rstrip,
            // `tokenizers` defaults `normalized` to the opposite of `special`.
            normalized: a.normalized.unwrap_or(!a.special),
            content: a.content,
        });
    }
    let mut max_id = None::<u32>;
    for (tok, id) in &model.vocab.0 {
        max_id = max_id.max(Some(check_id(*id, tok)?));
    }
    for a in &added {
        max_id = max_id.max(Some(a.id));
    }
    let max_id = max_id.ok_or_else(|| bad("empty vocabulary"))?;
    let mut strings: Vec<Option<String>> = vec![None; max_id as usize + 1];
    for (tok, id) in model.vocab.0 {
        strings[id as usize] = Some(tok);
    }
    for a in &added {
        strings[a.id as usize] = Some(a.content.clone());
    }
    let merges = model.merges.into_iter().map(|Merge(a, b)| (a, b)).collect();
    Ok(Spec {
        strings,
        merges,
        added,
        nfc,
        bos_id: None,
        eos_id: None,
        eot_id: None,
        pad_id: None,
        add_bos: false,
        chat_template: None,
    })
}

/// `Some(true)` for NFC (alone or in a one-element sequence), `Some(false)` for an empty
/// sequence, `None` for anything else.
fn normalizer_is_nfc(n: &serde_json::Value) -> Option<bool> {
    match n.get("type")?.as_str()? {
        "NFC" => Some(true),
        "Sequence" => {
            let list = n.get("normalizers")?.as_array()?;
            match list.as_slice() {
                [] => Some(false),
                [one] => normalizer_is_nfc(one),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Accepts exactly Qwen2's pre-tokenizer: `Split(QWEN2_PATTERN, Isolated)` then
/// `ByteLevel(add_prefix_space = false, use_regex = false)`.
fn check_pre_tokenizer(p: Option<&serde_json::Value>) -> Result<()> {
    let unsupported = || {
        bad(format!(
            "unsupported pre_tokenizer {} (only Qwen2's Split + ByteLevel)",
            p.map_or("null".to_string(), |x| x.to_string())
        ))
    };
    let p = p.ok_or_else(unsupported)?;
    let list = match p.get("type").and_then(|t| t.as_str()) {
        Some("Sequence") => p
            .get("pretokenizers")
            .and_then(|l| l.as_array())
            .ok_or_else(unsupported)?,
        _ => return Err(unsupported()),
    };
    let [split, bl] = list.as_slice() else {
        return Err(unsupported());
    };
    let ok_split = split.get("type").and_then(|t| t.as_str()) == Some("Split")
        && split
            .get("pattern")
            .and_then(|x| x.get("Regex"))
            .and_then(|x| x.as_str())
            == Some(QWEN2_PATTERN)
        && split.get("behavior").and_then(|x| x.as_str()) == Some("Isolated")
        && !split
            .get("invert")
            .and_then(|x| x.as_bool())
            .unwrap_or(false);
    let ok_bl = bl.get("type").and_then(|t| t.as_str()) == Some("ByteLevel")
        && !bl
            .get("add_prefix_space")
            .and_then(|x| x.as_bool())
            .unwrap_or(false)
        && !bl
            .get("use_regex")
            .and_then(|x| x.as_bool())
            .unwrap_or(true);
    if ok_split && ok_bl {
        Ok(())
    } else {
        Err(unsupported())
    }
}

/// Takes the chat template, BOS/EOS/PAD and `add_bos_token` from `tokenizer_config.json`.
pub(super) fn apply_tokenizer_config(
    spec: &mut Spec,
    config: &str,
) -> std::result::Result<(), String> {
    let cfg: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let lookup = |key: &str| -> std::result::Result<Option<u32>, String> {
        let name = match cfg.get(key) {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.as_str(),
            Some(o) => match o.get("content").and_then(|c| c.as_str()) {
                Some(s) => s,
                None => return Err(format!("{key}: unexpected value {o}")),
            },
        };
        spec.strings
            .iter()
            .position(|s| s.as_deref() == Some(name))
            .map(|i| Some(i as u32))
            .ok_or_else(|| format!("{key} '{name}' is not in the vocabulary"))
    };
    spec.bos_id = lookup("bos_token")?;
    spec.eos_id = lookup("eos_token")?;
    spec.pad_id = lookup("pad_token")?;
    spec.add_bos = cfg
        .get("add_bos_token")
        .and_then(|x| x.as_bool())
        .unwrap_or(false);
    spec.chat_template = match cfg.get("chat_template") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => {
            // Named templates: take "default", else the first.
            let named = |n: &serde_json::Value| {
                Some((
                    n.get("name")?.as_str()?.to_string(),
                    n.get("template")?.as_str()?.to_string(),
                ))
            };
            let all: Vec<(String, String)> = list.iter().filter_map(named).collect();
            all.iter()
                .find(|(n, _)| n == "default")
                .or(all.first())
                .map(|(_, t)| t.clone())
        }
        Some(other) => return Err(format!("chat_template: unexpected value {other}")),
    };
    Ok(())
}
