//! Tokenizer against Hugging Face `tokenizers` 0.21.4 (cases.json, extra_cases.json), chat
//! templates against Jinja2 (chat_cases.json), GGUF parts against tokenizer.json, streaming
//! detokenisation and hostile input.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use engine::Error;
use engine::tokenizer::{ChatMessage, ChatOptions, ChatTemplate, GgufTokenizerParts, Tokenizer};
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn read_json(rel: &str) -> Value {
    let path = fixtures().join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The real Qwen tokenizer.json text (decompressed once).
fn qwen_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let xz = std::fs::read(fixtures().join("tokenizer/tokenizer.json.xz")).expect("read xz");
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &xz[..], &mut out).expect("decompress tokenizer.json.xz");
        String::from_utf8(out).expect("tokenizer.json is UTF-8")
    })
}

fn qwen() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| Tokenizer::from_json_str(qwen_json()).expect("load Qwen tokenizer.json"))
}

fn tiny() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_json_file(fixtures().join("tiny-t1/tokenizer.json")).expect("load tiny")
    })
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("ids array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn extra() -> &'static Value {
    static V: OnceLock<Value> = OnceLock::new();
    V.get_or_init(|| read_json("tokenizer/extra_cases.json"))
}

#[test]
fn qwen_reproduces_every_case_exactly() {
    let tok = qwen();
    let cases = read_json("tokenizer/cases.json");
    let manifest = read_json("tokenizer/manifest.json");
    let cases = cases.as_array().expect("cases");
    assert_eq!(cases.len(), 30);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        assert_eq!(got, want, "case {name}");
        let tokens: Vec<&str> = got.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        let want_tokens: Vec<&str> = case["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(tokens, want_tokens, "case {name} tokens");
        let decoded = tok.decode(&got, false).unwrap();
        assert_eq!(
            decoded,
            case["decoded"].as_str().unwrap(),
            "case {name} decode"
        );
        let exact = manifest["decode_roundtrip_exact"][name].as_bool().unwrap();
        assert_eq!(decoded == text, exact, "case {name} round trip");
    }
}

#[test]
fn qwen_matches_reference_on_generated_strings() {
    let tok = qwen();
    let cases = extra()["qwen"].as_array().unwrap();
    assert!(cases.len() > 600);
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids_of(&case["ids"]);
        let got = tok.encode(text, true).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
            continue;
        }
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tok.decode(&got, true).unwrap(),
            case["decoded_skip"].as_str().unwrap()
        );
        let plain = tok.encode(text, false).unwrap();
        if plain != ids_of(&case["ids_special_as_text"]) {
            failures.push(format!("{text:?} (special tokens as text): got {plain:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn tiny_matches_reference_on_generated_strings() {
    let tok = tiny();
    for case in extra()["tiny"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids_of(&case["ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn added_token_options_match_reference() {
    let added = &extra()["tiny_added"];
    let tok = Tokenizer::from_json_str(added["tokenizer_json"].as_str().unwrap()).unwrap();
    for case in added["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, true).unwrap(),
            ids_of(&case["ids"]),
            "{text:?}"
        );
    }
}

#[test]
fn tiny_reads_tokenizer_config() {
    let tok = tiny();
    assert_eq!(tok.vocab_size(), 512);
    assert_eq!(tok.eos_id(), Some(511));
    assert_eq!(tok.pad_id(), Some(509));
    assert_eq!(tok.bos_id(), None);
    assert!(!tok.add_bos_token());
    assert_eq!(tok.stop_ids(), &[509, 511]);
    assert!(tok.is_stop(511) && !tok.is_stop(13));
    assert_eq!(tok.chat_template(), None);
    assert!(tok.is_special(510) && !tok.is_special(64));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(510));
    assert_eq!(tok.token_bytes(220), Some(&b" "[..]));
}

#[test]
fn special_tokens_are_text_unless_parsed() {
    let tok = qwen();
    let text = "a<|im_end|>b<think>c";
    let parsed = tok.encode(text, true).unwrap();
    assert!(parsed.contains(&151645), "{parsed:?}");
    assert!(
        parsed.contains(&151667),
        "<think> is an added token: {parsed:?}"
    );
    let plain = tok.encode(text, false).unwrap();
    assert!(!plain.contains(&151645), "{plain:?}");
    // Non-special added tokens are matched either way.
    assert!(plain.contains(&151667), "{plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), text);
    assert_eq!(tok.decode(&parsed, true).unwrap(), "ab<think>c");
    assert_eq!(tok.stop_ids(), &[151643, 151645]);
}

// ---------------------------------------------------------------------------------------------
// GGUF parts

/// A minimal reader of a GGUF's metadata (test-only; the engine has its own reader).
mod mini_gguf {
    use std::collections::HashMap;

    /// A metadata value.
    #[derive(Debug, Clone)]
    pub enum Meta {
        Int(i64),
        Bool(bool),
        Str(String),
        Arr(Vec<Meta>),
        Other,
    }

    struct Cursor<'a> {
        b: &'a [u8],
        pos: usize,
    }

    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> &[u8] {
            let s = &self.b[self.pos..self.pos + n];
            self.pos += n;
            s
        }
        fn u32(&mut self) -> u32 {
            u32::from_le_bytes(self.take(4).try_into().unwrap())
        }
        fn u64(&mut self) -> u64 {
            u64::from_le_bytes(self.take(8).try_into().unwrap())
        }
        fn string(&mut self) -> String {
            let n = self.u64() as usize;
            String::from_utf8(self.take(n).to_vec()).unwrap()
        }
        fn value(&mut self, ty: u32) -> Meta {
            match ty {
                0 => Meta::Int(i64::from(self.take(1)[0])),
                1 => Meta::Int(i64::from(self.take(1)[0] as i8)),
                2 => Meta::Int(i64::from(u16::from_le_bytes(
                    self.take(2).try_into().unwrap(),
                ))),
                3 => Meta::Int(i64::from(i16::from_le_bytes(
                    self.take(2).try_into().unwrap(),
                ))),
                4 => Meta::Int(i64::from(self.u32())),
                5 => Meta::Int(i64::from(self.u32() as i32)),
                6 => {
                    self.take(4);
                    Meta::Other
                }
                7 => Meta::Bool(self.take(1)[0] != 0),
                8 => Meta::Str(self.string()),
                9 => {
                    let ety = self.u32();
                    let n = self.u64() as usize;
                    Meta::Arr((0..n).map(|_| self.value(ety)).collect())
                }
                10 => Meta::Int(self.u64() as i64),
                11 => Meta::Int(self.u64() as i64),
                12 => {
                    self.take(8);
                    Meta::Other
                }
                t => panic!("GGUF value type {t}"),
            }
        }
    }

    /// All metadata key/values.
    pub fn metadata(bytes: &[u8]) -> HashMap<String, Meta> {
        let mut c = Cursor { b: bytes, pos: 0 };
        assert_eq!(c.take(4), b"GGUF");
        let version = c.u32();
        assert!(version >= 2);
        let _n_tensors = c.u64();
        let n_kv = c.u64();
        (0..n_kv)
            .map(|_| {
                let k = c.string();
                let ty = c.u32();
                (k, c.value(ty))
            })
            .collect()
    }
}

fn parts_from_gguf(path: &Path) -> GgufTokenizerParts {
    use mini_gguf::Meta;
    let bytes = std::fs::read(path).unwrap();
    let md = mini_gguf::metadata(&bytes);
    let s = |k: &str| match md.get(k) {
        Some(Meta::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let strs = |k: &str| match md.get(k) {
        Some(Meta::Arr(a)) => a
            .iter()
            .map(|x| match x {
                Meta::Str(s) => s.clone(),
                other => panic!("{k}: {other:?}"),
            })
            .collect(),
        _ => Vec::new(),
    };
    let int = |k: &str| match md.get(k) {
        Some(Meta::Int(i)) => Some(*i),
        _ => None,
    };
    let types = match md.get("tokenizer.ggml.token_type") {
        Some(Meta::Arr(a)) => Some(
            a.iter()
                .map(|x| match x {
                    Meta::Int(i) => *i as i32,
                    other => panic!("token_type {other:?}"),
                })
                .collect(),
        ),
        _ => None,
    };
    GgufTokenizerParts {
        model: s("tokenizer.ggml.model").unwrap(),
        pre: s("tokenizer.ggml.pre"),
        tokens: strs("tokenizer.ggml.tokens"),
        token_types: types,
        merges: strs("tokenizer.ggml.merges"),
        bos_id: int("tokenizer.ggml.bos_token_id").map(|i| i as u32),
        eos_id: int("tokenizer.ggml.eos_token_id").map(|i| i as u32),
        eot_id: int("tokenizer.ggml.eot_token_id").map(|i| i as u32),
        pad_id: int("tokenizer.ggml.padding_token_id").map(|i| i as u32),
        add_bos: matches!(
            md.get("tokenizer.ggml.add_bos_token"),
            Some(Meta::Bool(true))
        ),
        chat_template: s("tokenizer.chat_template"),
    }
}

/// Parts as llama.cpp's converter writes them for a tokenizer.json: tokens by id, added special
/// tokens as CONTROL (3), other added tokens as USER_DEFINED (4), merges as "a b".
fn parts_from_json(json: &str) -> GgufTokenizerParts {
    let v: Value = serde_json::from_str(json).unwrap();
    let vocab = v["model"]["vocab"].as_object().unwrap();
    let added = v["added_tokens"].as_array().unwrap();
    let n = vocab.len() + added.len();
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1; n];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    for a in added {
        let id = a["id"].as_u64().unwrap() as usize;
        tokens[id] = a["content"].as_str().unwrap().to_string();
        types[id] = if a["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges = v["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            _ => panic!(),
        })
        .collect();
    GgufTokenizerParts {
        model: "gpt2".into(),
        pre: Some("qwen2".into()),
        tokens,
        token_types: Some(types),
        merges,
        bos_id: None,
        eos_id: Some(151645.min(n as u32 - 1)),
        eot_id: None,
        pad_id: None,
        add_bos: false,
        chat_template: None,
    }
}

#[test]
fn tiny_gguf_metadata_gives_the_same_tokenizer_as_tokenizer_json() {
    let parts = parts_from_gguf(&fixtures().join("tiny-t1-gguf/tiny-t1-Q8_0.gguf"));
    assert_eq!(parts.model, "gpt2");
    assert_eq!(parts.pre.as_deref(), Some("qwen2"));
    assert_eq!(parts.tokens.len(), 512);
    let from_gguf = Tokenizer::from_gguf_parts(parts).unwrap();
    let from_json = tiny();
    assert_eq!(from_gguf.vocab_size(), 512);
    assert_eq!(from_gguf.eos_id(), Some(511));
    assert_eq!(from_gguf.bos_id(), Some(509));
    assert!(!from_gguf.add_bos_token());
    assert_eq!(from_gguf.stop_ids(), &[509, 511]);
    for id in 0..512 {
        assert_eq!(
            from_gguf.token_bytes(id),
            from_json.token_bytes(id),
            "token {id}"
        );
        assert_eq!(
            from_gguf.is_special(id),
            from_json.is_special(id),
            "token {id}"
        );
    }
    let mut compared = 0;
    for case in extra()["tiny"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // The GGUF tokenizer applies Qwen2's NFC normaliser; the tiny tokenizer.json has none.
        if text.nfc().collect::<String>() != text {
            continue;
        }
        for parse_special in [true, false] {
            assert_eq!(
                from_gguf.encode(text, parse_special).unwrap(),
                from_json.encode(text, parse_special).unwrap(),
                "{text:?}"
            );
        }
        compared += 1;
    }
    assert!(compared > 500, "{compared}");
}

#[test]
fn qwen_from_gguf_parts_reproduces_every_case() {
    let tok = Tokenizer::from_gguf_parts(parts_from_json(qwen_json())).unwrap();
    for case in read_json("tokenizer/cases.json").as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "{}", case["name"]);
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    for case in extra()["qwen"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, ids_of(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded_skip"].as_str().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

#[test]
fn stream_decoder_equals_decode_and_never_splits_a_character() {
    let tok = qwen();
    let mut texts: Vec<&str> = extra()["qwen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    texts.push("🦙 家 é 👨\u{200d}👩\u{200d}👧 ภาษาไทย");
    let mut multi_byte_splits = 0;
    for text in texts {
        let ids = tok.encode(text, true).unwrap();
        for skip in [false, true] {
            let mut dec = tok.stream_decoder(skip);
            let mut streamed = String::new();
            for &id in &ids {
                if let Some(piece) = dec.push(id).unwrap() {
                    streamed.push_str(&piece);
                }
                if dec.pending_bytes() > 0 {
                    multi_byte_splits += 1;
                }
            }
            if let Some(rest) = dec.flush() {
                streamed.push_str(&rest);
            }
            assert_eq!(streamed, tok.decode(&ids, skip).unwrap(), "{text:?}");
            if !skip {
                assert_eq!(streamed, text.nfc().collect::<String>(), "{text:?}");
            }
        }
    }
    assert!(multi_byte_splits > 100, "{multi_byte_splits}");
}

#[test]
fn stream_decoder_holds_back_partial_characters() {
    let tok = qwen();
    // "🦙" is four bytes; byte-level tokens for each byte exist.
    let bytes = "🦙".as_bytes();
    let ids: Vec<u32> = bytes
        .iter()
        .map(|&b| {
            (0..tok.vocab_size() as u32)
                .find(|&i| tok.token_bytes(i) == Some(&[b][..]))
                .unwrap()
        })
        .collect();
    let mut dec = tok.stream_decoder(false);
    assert_eq!(dec.push(ids[0]).unwrap(), None);
    assert_eq!(dec.push(ids[1]).unwrap(), None);
    assert_eq!(dec.push(ids[2]).unwrap(), None);
    assert_eq!(dec.pending_bytes(), 3);
    assert_eq!(dec.push(ids[3]).unwrap().as_deref(), Some("🦙"));
    assert_eq!(dec.flush(), None);
    // An incomplete character at the end becomes U+FFFD, as in decode.
    assert_eq!(dec.push(ids[0]).unwrap(), None);
    assert_eq!(dec.flush().as_deref(), Some("\u{FFFD}"));
    assert_eq!(tok.decode(&ids[..1], false).unwrap(), "\u{FFFD}");
    // A continuation byte with no lead byte is invalid at once; text after it comes through.
    let a = tok.encode("a", false).unwrap()[0];
    assert_eq!(dec.push(ids[1]).unwrap().as_deref(), Some("\u{FFFD}"));
    assert_eq!(dec.push(a).unwrap().as_deref(), Some("a"));
}

// ---------------------------------------------------------------------------------------------
// Chat

#[test]
fn chat_templates_match_jinja2() {
    let chat = read_json("tokenizer/chat_cases.json");
    let qwen3 = ChatTemplate::new(chat["qwen3_template"].as_str().unwrap()).unwrap();
    let chatml = ChatTemplate::new(chat["chatml_template"].as_str().unwrap()).unwrap();
    assert_eq!(ChatTemplate::chatml().source(), chatml.source());
    let mut n = 0;
    for case in chat["cases"].as_array().unwrap() {
        let tmpl = match case["template"].as_str().unwrap() {
            "qwen3" => &qwen3,
            _ => &chatml,
        };
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let opts = ChatOptions {
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap(),
            bos_token: Some(String::new()),
            eos_token: Some("<|im_end|>".into()),
            extra_json: Some(case["extra_json"].as_str().unwrap().to_string()),
        };
        let got = tmpl.render(&messages, &opts).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "{case}");
        n += 1;
    }
    assert_eq!(n, 16);
}

#[test]
fn default_chatml_with_system_prompt_encodes_to_turn_tokens() {
    let tok = tiny();
    let msgs = [
        ChatMessage::system("You are a helpful assistant."),
        ChatMessage::user("Hello!"),
    ];
    let text = tok.render_chat(&msgs, true).unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = tok.encode(&text, true).unwrap();
    assert_eq!(ids.iter().filter(|&&i| i == 510).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 511).count(), 2);
    assert_eq!(*ids.first().unwrap(), 510);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    // Without the generation prompt the last turn is closed.
    let closed = tok.render_chat(&msgs, false).unwrap();
    assert!(closed.ends_with("<|im_end|>\n"));
}

#[test]
fn model_chat_template_from_tokenizer_config() {
    let chat = read_json("tokenizer/chat_cases.json");
    let cfg = serde_json::json!({
        "chat_template": chat["qwen3_template"],
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": null,
        "add_bos_token": false
    });
    let tok = Tokenizer::from_json_str_with_config(qwen_json(), &cfg.to_string()).unwrap();
    assert_eq!(tok.chat_template(), chat["qwen3_template"].as_str());
    assert_eq!(tok.eos_id(), Some(151645));
    let text = tok
        .render_chat(&[ChatMessage::system("S"), ChatMessage::user("Q")], true)
        .unwrap();
    assert_eq!(
        text,
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"
    );
    // A template that refuses a conversation reports the template's message.
    let bad = serde_json::json!({"chat_template": "{{ raise_exception('only user turns') }}"});
    let tok = Tokenizer::from_json_str_with_config(qwen_json(), &bad.to_string()).unwrap();
    let err = tok
        .render_chat(&[ChatMessage::user("x")], true)
        .unwrap_err();
    assert!(
        matches!(err, Error::ChatTemplate(ref m) if m.contains("only user turns")),
        "{err}"
    );
    // A template that does not compile loads (the tokenizer is still usable) but cannot render.
    let broken = serde_json::json!({"chat_template": "{% for m in messages %}"});
    let tok = Tokenizer::from_json_str_with_config(qwen_json(), &broken.to_string()).unwrap();
    assert!(tok.render_chat(&[ChatMessage::user("x")], true).is_err());
    assert_eq!(tok.encode("hi", true).unwrap(), vec![6023]);
}

// ---------------------------------------------------------------------------------------------
// Hostile input

#[test]
fn out_of_range_ids_are_errors() {
    let tok = tiny();
    assert!(matches!(
        tok.decode(&[1, 512], false),
        Err(Error::InvalidInput(_))
    ));
    assert!(tok.decode(&[u32::MAX], true).is_err());
    assert_eq!(tok.token_bytes(512), None);
    assert_eq!(tok.id_to_token(u32::MAX), None);
    let mut dec = tok.stream_decoder(false);
    assert!(dec.push(100_000).is_err());
    assert_eq!(dec.push(64).unwrap().as_deref(), Some("a"));
}

#[test]
fn bad_tokenizer_descriptions_are_errors() {
    let good = || {
        parts_from_json(
            &std::fs::read_to_string(fixtures().join("tiny-t1/tokenizer.json")).unwrap(),
        )
    };
    assert!(Tokenizer::from_gguf_parts(good()).is_ok());
    type Change = fn(&mut GgufTokenizerParts);
    let cases: [(&str, Change); 9] = [
        ("llama model", |p| p.model = "llama".into()),
        ("gpt2 pre", |p| p.pre = Some("gpt2".into())),
        ("no pre", |p| p.pre = None),
        ("no tokens", |p| p.tokens.clear()),
        ("short types", |p| {
            p.token_types.as_mut().unwrap().pop();
        }),
        ("unknown merge token", |p| p.merges.push("zzz qqq".into())),
        ("merge without space", |p| p.merges.push("ab".into())),
        ("eos out of range", |p| p.eos_id = Some(100_000)),
        ("bos out of range", |p| p.bos_id = Some(u32::MAX)),
    ];
    for (what, change) in cases {
        let mut p = good();
        change(&mut p);
        let r = Tokenizer::from_gguf_parts(p);
        assert!(matches!(r, Err(Error::Tokenizer(_))), "{what}: {r:?}");
    }
    for json in [
        "",
        "[]",
        "{}",
        r#"{"model": {"type": "Unigram", "vocab": []}}"#,
        r#"{"model": {"type": "BPE", "vocab": {"a": 99999999999}, "merges": []}, "pre_tokenizer": null}"#,
    ] {
        assert!(
            matches!(Tokenizer::from_json_str(json), Err(Error::Tokenizer(_))),
            "{json}"
        );
    }
    // A tokenizer.json with another pre-tokenizer is refused rather than mis-tokenised.
    let other = qwen_json().replace(r"|\\p{N}|", r"|\\p{N}{1,3}|");
    assert_ne!(other, qwen_json());
    assert!(matches!(
        Tokenizer::from_json_str(&other),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn arbitrary_text_round_trips() {
    let tok = qwen();
    // Every code point once, in chunks, plus long runs of each class.
    let all: String = (0..0x11_0000u32).filter_map(char::from_u32).collect();
    for chunk in all.as_bytes().chunks(1 << 16) {
        let s = String::from_utf8_lossy(chunk);
        let ids = tok.encode(&s, false).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            s.nfc().collect::<String>()
        );
    }
    for text in [
        "a".repeat(100_000),
        " ".repeat(100_000),
        "\n".repeat(50_000),
        "1".repeat(50_000),
        "'s".repeat(30_000),
        "<|im_end|>".repeat(5_000),
    ] {
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn decode_inverts_encode(s in "\\PC{0,64}|[ \\t\\n\\r'a-zA-Z0-9<|>_]{0,64}") {
            let tok = qwen();
            let ids = tok.encode(&s, false).unwrap();
            prop_assert_eq!(tok.decode(&ids, false).unwrap(), s.nfc().collect::<String>());
            let special = tok.encode(&s, true).unwrap();
            prop_assert_eq!(tok.decode(&special, false).unwrap(), s.nfc().collect::<String>());
        }

        #[test]
        fn stream_equals_decode_for_any_ids(ids in proptest::collection::vec(0u32..151_669, 0..40)) {
            let tok = qwen();
            let mut dec = tok.stream_decoder(false);
            let mut out = String::new();
            for &id in &ids {
                if let Some(p) = dec.push(id).unwrap() {
                    out.push_str(&p);
                }
            }
            if let Some(p) = dec.flush() {
                out.push_str(&p);
            }
            prop_assert_eq!(out, tok.decode(&ids, false).unwrap());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Speed (reported, not asserted: the machine is shared)

#[test]
fn encoding_speed_is_reported() {
    let start = Instant::now();
    let tok = Tokenizer::from_json_str(qwen_json()).unwrap();
    let dt_load = start.elapsed();
    let prose =
        "The quick brown fox jumps over the lazy dog. It's a sentence that we've all seen; \
                 numbers like 3.14159 and 2024 appear, as do URLs such as https://example.com.\n"
            .repeat(200);
    let start = Instant::now();
    let prose_ids = tok.encode(&prose, false).unwrap();
    let dt_prose = start.elapsed();
    eprintln!(
        "load (tokenizer.json text -> Tokenizer): {:.0} ms; English prose: {} tokens in {:.2} ms",
        dt_load.as_secs_f64() * 1e3,
        prose_ids.len(),
        dt_prose.as_secs_f64() * 1e3
    );
    let cases = read_json("tokenizer/cases.json");
    let corpus: String = cases
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let text = corpus.repeat(10);
    let start = Instant::now();
    let ids = tok.encode(&text, true).unwrap();
    let dt = start.elapsed();
    let start = Instant::now();
    let back = tok.decode(&ids, false).unwrap();
    let dt_dec = start.elapsed();
    assert_eq!(back.len(), text.nfc().collect::<String>().len());
    let mut counts: HashMap<bool, usize> = HashMap::new();
    for &i in &ids {
        *counts.entry(tok.is_special(i)).or_default() += 1;
    }
    eprintln!(
        "encode: {} tokens from {} bytes in {:.2} ms ({:.1} Mtok/s); decode {:.2} ms",
        ids.len(),
        text.len(),
        dt.as_secs_f64() * 1e3,
        ids.len() as f64 / dt.as_secs_f64() / 1e6,
        dt_dec.as_secs_f64() * 1e3
    );
}
