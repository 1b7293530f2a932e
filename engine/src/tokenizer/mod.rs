//! Tokenizer for Qwen2-family models: byte-level BPE with the Qwen2 pre-tokenizer, built from a
//! GGUF's `tokenizer.ggml.*` metadata ([`GgufTokenizerParts`]) or from a Hugging Face
//! `tokenizer.json`, plus streaming detokenisation ([`StreamDecoder`]) and chat templates
//! ([`ChatTemplate`]).
//!
//! The reference is Hugging Face `tokenizers`: `encode(text, parse_special = true)` gives the ids
//! of `Tokenizer.encode(text, add_special_tokens=False)`, and `decode` the text of
//! `Tokenizer.decode(ids, skip_special_tokens)`. Encoding runs in this order:
//!
//! 1. added tokens matched on the raw text (leftmost-longest; special ones only when
//!    `parse_special`),
//! 2. NFC normalisation of the text between them (Qwen2's normaliser),
//! 3. the Qwen2 split regex (hand-written, see `pretok`),
//! 4. BPE merges over the UTF-8 bytes of each piece, lowest merge rank first.
//!
//! GGUF files carry no normaliser: a GGUF with `tokenizer.ggml.pre = "qwen2"` gets NFC, as the
//! Hugging Face Qwen2 tokenizer has (llama.cpp itself does not normalise).

mod added;
mod bpe;
mod bytelevel;
mod chat;
pub mod gguf;
mod json;
mod pretok;
mod unicode_table;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

use crate::error::{Error, Result};
use added::{AddedToken, Matcher, Piece};
use bpe::{Bpe, BpeScratch, FastBuild, MergeMap, pair_key};
use json::{apply_tokenizer_config, spec_from_json};

pub use chat::{CHATML_TEMPLATE, ChatMessage, ChatOptions, ChatTemplate};

/// The Qwen2 split regex as it appears in `tokenizer.json`.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Largest vocabulary accepted (ids must fit comfortably in memory; real vocabularies are < 1M).
pub const MAX_VOCAB: usize = 1 << 24;

/// Longest text [`Tokenizer::encode`] accepts: positions inside a piece are kept in `u32`.
pub const MAX_TEXT_BYTES: usize = u32::MAX as usize;

/// Token strings that end a turn when present in the vocabulary.
const END_OF_TURN_TOKENS: [&str; 2] = ["<|im_end|>", "<|endoftext|>"];

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp defines them.
pub mod token_type {
    /// Ordinary BPE token.
    pub const NORMAL: i32 = 1;
    /// Unknown token.
    pub const UNKNOWN: i32 = 2;
    /// Control (special) token, e.g. `<|im_end|>`.
    pub const CONTROL: i32 = 3;
    /// User-defined added token, e.g. `<think>`: always matched as a whole.
    pub const USER_DEFINED: i32 = 4;
    /// Padding entry that no text produces.
    pub const UNUSED: i32 = 5;
    /// Raw byte token (`<0x0A>`), used by SentencePiece vocabularies.
    pub const BYTE: i32 = 6;
}

/// Tokenizer description read from a GGUF's `tokenizer.ggml.*` and `tokenizer.chat_template`
/// metadata. Built by the GGUF loader; kept free of the reader's types.
#[derive(Debug, Clone, Default)]
pub struct GgufTokenizerParts {
    /// `tokenizer.ggml.model`; must be `"gpt2"` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`; must be `"qwen2"`.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: byte-level token strings, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, see [`token_type`]; all normal when absent.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"` strings, highest priority first.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// A Qwen2-family byte-level BPE tokenizer. Immutable and `Sync`: share it between threads.
pub struct Tokenizer {
    /// Bytes of each token (`None` for ids that no token has).
    bytes: Vec<Option<Box<[u8]>>>,
    /// Token strings (byte-level form for BPE tokens, content for added tokens).
    strings: Vec<Option<Box<str>>>,
    /// Special (control) tokens, skipped by `decode(.., skip_special = true)`.
    special: Vec<bool>,
    token_to_id: HashMap<String, u32, FastBuild>,
    bpe: Bpe,
    /// Added tokens matched on the raw text.
    raw_added: Matcher,
    /// Added tokens matched on the normalised text.
    norm_added: Matcher,
    nfc: bool,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    stop_ids: Vec<u32>,
    chat_template: Option<String>,
    chat: std::result::Result<ChatTemplate, String>,
}

impl std::fmt::Debug for Tokenizer {
    /// A summary (the vocabulary itself is too large to print).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("merges", &self.bpe.merges.len())
            .field("nfc", &self.nfc)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("stop_ids", &self.stop_ids)
            .field("add_bos", &self.add_bos)
            .field(
                "chat_template_bytes",
                &self.chat_template.as_ref().map(|t| t.len()),
            )
            .finish_non_exhaustive()
    }
}

/// Everything needed to build a [`Tokenizer`], whatever the source.
struct Spec {
    /// Token strings by id (`None` for holes).
    strings: Vec<Option<String>>,
    /// Merges as pairs of token strings, highest priority first.
    merges: Vec<(String, String)>,
    added: Vec<AddedToken>,
    nfc: bool,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    eot_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`. When the same directory holds
    /// `tokenizer_config.json` (and/or `chat_template.jinja`), the chat template, BOS/EOS tokens
    /// and `add_bos_token` are taken from there.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| Error::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let json = read(path)?;
        let mut spec = spec_from_json(&json)?;
        if let Some(dir) = path.parent() {
            let cfg_path = dir.join("tokenizer_config.json");
            if cfg_path.is_file() {
                let cfg = read(&cfg_path)?;
                apply_tokenizer_config(&mut spec, &cfg)
                    .map_err(|e| bad(format!("{}: {e}", cfg_path.display())))?;
            }
            let jinja = dir.join("chat_template.jinja");
            if jinja.is_file() {
                spec.chat_template = Some(read(&jinja)?);
            }
        }
        Tokenizer::build(spec)
    }

    /// Parses the text of a Hugging Face `tokenizer.json` (no BOS/EOS or chat template: those
    /// live in `tokenizer_config.json`; see [`Tokenizer::from_json_str_with_config`]).
    pub fn from_json_str(json: &str) -> Result<Tokenizer> {
        Tokenizer::build(spec_from_json(json)?)
    }

    /// Parses `tokenizer.json` and `tokenizer_config.json` texts.
    pub fn from_json_str_with_config(json: &str, config: &str) -> Result<Tokenizer> {
        let mut spec = spec_from_json(json)?;
        apply_tokenizer_config(&mut spec, config)
            .map_err(|e| bad(format!("tokenizer_config.json: {e}")))?;
        Tokenizer::build(spec)
    }

    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf_parts(parts: GgufTokenizerParts) -> Result<Tokenizer> {
        if parts.model != "gpt2" {
            return Err(bad(format!(
                "tokenizer.ggml.model '{}' is not supported (only byte-level BPE, 'gpt2')",
                parts.model
            )));
        }
        match parts.pre.as_deref() {
            Some("qwen2") => {}
            other => {
                return Err(bad(format!(
                    "tokenizer.ggml.pre {other:?} is not supported (only 'qwen2')"
                )));
            }
        }
        let n = parts.tokens.len();
        if n == 0 || n > MAX_VOCAB {
            return Err(bad(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        if let Some(types) = &parts.token_types
            && types.len() != n
        {
            return Err(bad(format!(
                "tokenizer.ggml.token_type has {} entries, tokens has {n}",
                types.len()
            )));
        }
        let mut added = Vec::new();
        for (id, text) in parts.tokens.iter().enumerate() {
            let ty = parts
                .token_types
                .as_ref()
                .map_or(token_type::NORMAL, |t| t[id]);
            let special = match ty {
                token_type::CONTROL | token_type::UNKNOWN => true,
                token_type::USER_DEFINED => false,
                _ => continue,
            };
            added.push(AddedToken {
                id: id as u32,
                content: text.clone(),
                special,
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
            });
        }
        let mut merges = Vec::with_capacity(parts.merges.len());
        for (i, m) in parts.merges.iter().enumerate() {
            // The separator is the first space after the first character (a token cannot be
            // empty); byte-level tokens never contain a raw space.
            let split = m
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(k, _)| k);
            let Some(k) = split else {
                return Err(bad(format!(
                    "tokenizer.ggml.merges[{i}] '{m}' has no space"
                )));
            };
            merges.push((m[..k].to_string(), m[k + 1..].to_string()));
        }
        let spec = Spec {
            strings: parts.tokens.into_iter().map(Some).collect(),
            merges,
            added,
            nfc: true,
            bos_id: parts.bos_id,
            eos_id: parts.eos_id,
            eot_id: parts.eot_id,
            pad_id: parts.pad_id,
            add_bos: parts.add_bos,
            chat_template: parts.chat_template,
        };
        Tokenizer::build(spec)
    }

    fn build(spec: Spec) -> Result<Tokenizer> {
        let n = spec.strings.len();
        if n == 0 || n > MAX_VOCAB {
            return Err(bad(format!("vocabulary has {n} entries")));
        }
        for (what, id) in [
            ("bos", spec.bos_id),
            ("eos", spec.eos_id),
            ("eot", spec.eot_id),
            ("pad", spec.pad_id),
        ] {
            if let Some(id) = id
                && id as usize >= n
            {
                return Err(bad(format!("{what} token id {id} >= vocabulary size {n}")));
            }
        }
        let mut token_to_id: HashMap<String, u32, FastBuild> =
            HashMap::with_capacity_and_hasher(n, FastBuild::default());
        let mut bytes = Vec::with_capacity(n);
        let mut byte_ids = [None; 256];
        let mut is_added = vec![false; n];
        let mut special = vec![false; n];
        for t in &spec.added {
            is_added[t.id as usize] = true;
            special[t.id as usize] = t.special;
        }
        for (id, s) in spec.strings.iter().enumerate() {
            let Some(s) = s else {
                bytes.push(None);
                continue;
            };
            token_to_id.entry(s.clone()).or_insert(id as u32);
            let b = bytelevel::token_bytes_of(s);
            if !is_added[id] {
                let mut chars = s.chars();
                if let (Some(c), None) = (chars.next(), chars.next())
                    && let Some(byte) = bytelevel::char_to_byte(c)
                {
                    byte_ids[byte as usize].get_or_insert(id as u32);
                }
            }
            bytes.push(Some(b.into_boxed_slice()));
        }
        // Added tokens override model tokens with the same text.
        for t in &spec.added {
            token_to_id.insert(t.content.clone(), t.id);
        }
        let mut merges: MergeMap = MergeMap::default();
        merges.reserve(spec.merges.len());
        for (rank, (a, b)) in spec.merges.iter().enumerate() {
            let look = |s: &str| {
                token_to_id.get(s).copied().ok_or_else(|| {
                    bad(format!(
                        "merge {rank} ('{a} {b}'): token '{s}' is not in the vocabulary"
                    ))
                })
            };
            let ia = look(a)?;
            let ib = look(b)?;
            let merged = format!("{a}{b}");
            let im = look(&merged)?;
            // A pair listed twice keeps its first (highest-priority) rank.
            merges.entry(pair_key(ia, ib)).or_insert((rank as u32, im));
        }
        let (raw, norm): (Vec<_>, Vec<_>) = spec.added.iter().cloned().partition(|t| !t.normalized);

        let mut stop_ids: Vec<u32> = [spec.eos_id, spec.eot_id].into_iter().flatten().collect();
        for t in END_OF_TURN_TOKENS {
            if let Some(&id) = token_to_id.get(t)
                && is_added[id as usize]
            {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();

        let chat = match &spec.chat_template {
            Some(src) => ChatTemplate::new(src).map_err(|e| e.to_string()),
            None => Ok(ChatTemplate::chatml()),
        };
        if let Err(e) = &chat {
            tracing::warn!(error = %e, "the model's chat template does not compile");
        }
        Ok(Tokenizer {
            bytes,
            strings: spec
                .strings
                .into_iter()
                .map(|s| s.map(String::into_boxed_str))
                .collect(),
            special,
            token_to_id,
            bpe: Bpe { byte_ids, merges },
            raw_added: Matcher::new(raw),
            norm_added: Matcher::new(norm),
            nfc: spec.nfc,
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            pad_id: spec.pad_id,
            add_bos: spec.add_bos,
            stop_ids,
            chat_template: spec.chat_template,
            chat,
        })
    }

    /// Token ids of `text`. With `parse_special`, special tokens written in the text (such as
    /// `<|im_start|>`) become their ids; without it they are encoded as plain text, which is what
    /// user-supplied text needs. Non-special added tokens (such as `<think>`) are always matched.
    /// No BOS is added (see [`Tokenizer::add_bos_token`]).
    /// Errors only on text of [`MAX_TEXT_BYTES`] or more.
    pub fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>> {
        if text.len() >= MAX_TEXT_BYTES {
            return Err(Error::InvalidInput(format!(
                "text of {} bytes is too long to tokenize (limit {MAX_TEXT_BYTES})",
                text.len()
            )));
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut st = EncodeScratch::default();
        let mut pieces = Vec::new();
        self.raw_added.split(text, parse_special, &mut pieces);
        for piece in pieces {
            match piece {
                Piece::Token(id) => out.push(id),
                Piece::Text(t) => self.encode_normalizable(t, parse_special, &mut st, &mut out),
            }
        }
        Ok(out)
    }

    /// [`Tokenizer::encode`] with BOS prepended when the model asks for it.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos
            && let Some(b) = self.bos_id
        {
            ids.push(b);
        }
        ids.extend(self.encode(text, true)?);
        Ok(ids)
    }

    fn encode_normalizable(
        &self,
        text: &str,
        parse_special: bool,
        st: &mut EncodeScratch,
        out: &mut Vec<u32>,
    ) {
        let normalized: Cow<'_, str> =
            if self.nfc && is_nfc_quick(text.chars()) != IsNormalized::Yes {
                Cow::Owned(text.nfc().collect())
            } else {
                Cow::Borrowed(text)
            };
        if self.norm_added.is_empty() {
            self.encode_plain(&normalized, st, out);
            return;
        }
        let mut pieces = Vec::new();
        self.norm_added
            .split(&normalized, parse_special, &mut pieces);
        for piece in pieces {
            match piece {
                Piece::Token(id) => out.push(id),
                Piece::Text(t) => self.encode_plain(t, st, out),
            }
        }
    }

    /// Pre-tokenizes and merges normalised text that holds no added token.
    fn encode_plain(&self, text: &str, st: &mut EncodeScratch, out: &mut Vec<u32>) {
        st.ranges.clear();
        pretok::split_qwen2(text, &mut st.chars, &mut st.ranges);
        let bytes = text.as_bytes();
        for &(a, b) in &st.ranges {
            self.bpe.encode_word(&bytes[a..b], &mut st.bpe, out);
        }
    }

    /// Text of `ids`; invalid UTF-8 (a sequence cut in the middle) becomes U+FFFD, as in
    /// `tokenizers`. Errors on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if skip_special && self.is_special(id) {
                continue;
            }
            buf.extend_from_slice(self.checked_bytes(id)?);
        }
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn checked_bytes(&self, id: u32) -> Result<&[u8]> {
        self.token_bytes(id).ok_or_else(|| {
            Error::InvalidInput(format!(
                "token id {id} is not in the vocabulary (size {})",
                self.vocab_size()
            ))
        })
    }

    /// The bytes token `id` stands for (`None` for an id outside the vocabulary).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize)?.as_deref()
    }

    /// The token's string as the vocabulary spells it (`Ġworld` for ` world`).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.strings.get(id as usize)?.as_deref()
    }

    /// The id of a token string (vocabulary spelling, or an added token's content).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.token_to_id.get(token).copied()
    }

    /// Number of ids (one more than the largest id).
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Whether `id` is a special (control) token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Beginning-of-sequence token, if the model has one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// End-of-sequence token, if known.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Padding token, if known.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether prompts start with BOS ([`Tokenizer::encode_prompt`] adds it).
    pub fn add_bos_token(&self) -> bool {
        self.add_bos
    }

    /// Ids that end generation, sorted: EOS, EOT, and `<|im_end|>` / `<|endoftext|>` when the
    /// vocabulary has them as added tokens.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// Whether `id` ends generation.
    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    /// The model's own chat template, if it carries one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders a conversation with the model's template (ChatML when it has none). The result
    /// is meant for `encode(.., parse_special = true)`.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_chat_with(
            messages,
            &ChatOptions {
                add_generation_prompt,
                ..ChatOptions::default()
            },
        )
    }

    /// [`Tokenizer::render_chat`] with further options. `bos_token` / `eos_token` default to the
    /// tokenizer's own.
    pub fn render_chat_with(
        &self,
        messages: &[ChatMessage],
        options: &ChatOptions,
    ) -> Result<String> {
        let tmpl = self
            .chat
            .as_ref()
            .map_err(|e| Error::ChatTemplate(e.clone()))?;
        let name = |id: Option<u32>| id.and_then(|i| self.id_to_token(i)).map(str::to_owned);
        let mut opts = options.clone();
        if opts.bos_token.is_none() {
            opts.bos_token = name(self.bos_id);
        }
        if opts.eos_token.is_none() {
            opts.eos_token = name(self.eos_id);
        }
        tmpl.render(messages, &opts)
    }

    /// A streaming decoder over this tokenizer.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            skip_special,
            pending: Vec::new(),
        }
    }
}

/// Reusable buffers for one `encode` call.
#[derive(Default)]
struct EncodeScratch {
    chars: Vec<(u32, char, pretok::Class)>,
    ranges: Vec<(usize, usize)>,
    bpe: BpeScratch,
}

/// Turns generated ids into text as they come, emitting only complete UTF-8 characters: bytes of
/// a character split across tokens wait for the rest. Concatenating everything it returns
/// (including [`StreamDecoder::flush`]) gives exactly [`Tokenizer::decode`] of all the ids.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// Bytes of an incomplete character.
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text that became complete, if any. Errors on an id outside
    /// the vocabulary (the decoder is then unchanged).
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        if self.skip_special && self.tokenizer.is_special(id) {
            return Ok(None);
        }
        let bytes = self.tokenizer.checked_bytes(id)?;
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The first `valid` bytes are valid UTF-8, so this borrows without change.
                    out.push_str(&String::from_utf8_lossy(&rest[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &rest[valid + bad..];
                        }
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        let start = self.pending.len() - keep;
        self.pending.drain(..start);
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// Ends the stream: any incomplete character left becomes U+FFFD.
    pub fn flush(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        Some(s)
    }

    /// Bytes held back waiting for the rest of a character.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }
}
