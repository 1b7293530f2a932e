//! OpenAI-style request parsing and validation, and the JSON error type. Requests are read as a
//! JSON tree and checked field by field so that every rejection names the field and what is
//! wrong with it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use engine::sampler::SamplerConfig;
use engine::tokenizer::ChatMessage;
use serde_json::{Map, Value, json};

/// Most stop strings accepted in one request.
pub const MAX_STOP_STRINGS: usize = 16;
/// Most messages accepted in one chat request.
pub const MAX_MESSAGES: usize = 4096;
/// Highest temperature accepted (OpenAI's range is [0, 2]).
pub const MAX_TEMPERATURE: f64 = 2.0;

/// An error answered as `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// OpenAI error type (`invalid_request_error`, ...).
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// A machine-readable code, if any.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.to_string()),
            code: None,
        }
    }

    /// A 400 not tied to one field.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    /// Any status.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// Sets the code.
    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        r
    }
}

/// Parses a request body into a JSON object.
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    match v {
        Value::Object(m) => Ok(m),
        other => Err(ApiError::bad_request(format!(
            "the request body must be a JSON object, not {}",
            type_name(&other)
        ))),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn present<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn get_bool(m: &Map<String, Value>, key: &str) -> Result<Option<bool>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(ApiError::invalid(
            key,
            format!("'{key}' must be a boolean, not {}", type_name(v)),
        )),
    }
}

fn get_f64(m: &Map<String, Value>, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x.is_finite() && x >= lo && x <= hi {
                Ok(Some(x))
            } else {
                Err(ApiError::invalid(
                    key,
                    format!("'{key}' is {n}; it must be between {lo} and {hi}"),
                ))
            }
        }
        Some(v) => Err(ApiError::invalid(
            key,
            format!("'{key}' must be a number, not {}", type_name(v)),
        )),
    }
}

fn get_int(m: &Map<String, Value>, key: &str, lo: i64, hi: i64) -> Result<Option<i64>, ApiError> {
    match present(m, key) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(x) if x >= lo && x <= hi => Ok(Some(x)),
            Some(x) => Err(ApiError::invalid(
                key,
                format!("'{key}' is {x}; it must be between {lo} and {hi}"),
            )),
            None => Err(ApiError::invalid(
                key,
                format!("'{key}' must be an integer, not {n}"),
            )),
        },
        Some(v) => Err(ApiError::invalid(
            key,
            format!("'{key}' must be an integer, not {}", type_name(v)),
        )),
    }
}

/// Server-side limits and defaults that requests are checked against.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest `max_tokens` accepted (also the default).
    pub max_tokens: usize,
    /// Largest prompt accepted, in tokens.
    pub max_prompt_tokens: usize,
    /// Context size of the session.
    pub ctx: usize,
    /// Sampling settings of requests that do not give their own.
    pub sampling: SamplerConfig,
}

/// Settings common to both endpoints.
#[derive(Clone, Debug)]
pub struct Common {
    /// Stream the answer as server-sent events.
    pub stream: bool,
    /// Send a last chunk with `usage` when streaming.
    pub include_usage: bool,
    /// Tokens to generate at most.
    pub max_tokens: usize,
    /// Sampler settings.
    pub sampler: SamplerConfig,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Keep going past end-of-turn ids (llama-server extension).
    pub ignore_eos: bool,
    /// The `model` field, echoed back.
    pub model: Option<String>,
}

/// Reads the fields shared by chat and text completions.
pub fn parse_common(m: &Map<String, Value>, limits: &Limits) -> Result<Common, ApiError> {
    let model = match present(m, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::invalid(
                "model",
                format!("'model' must be a string, not {}", type_name(v)),
            ));
        }
    };
    let stream = get_bool(m, "stream")?.unwrap_or(false);
    let include_usage = match present(m, "stream_options") {
        None => false,
        Some(Value::Object(o)) => get_bool(o, "include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                "stream_options",
                format!("'stream_options' must be an object, not {}", type_name(v)),
            ));
        }
    };
    if let Some(n) = get_int(m, "n", 1, i64::MAX)?
        && n != 1
    {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    if get_bool(m, "logprobs")? == Some(true) || present(m, "top_logprobs").is_some() {
        return Err(ApiError::invalid("logprobs", "logprobs are not supported"));
    }
    if present(m, "tools").is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty())) {
        return Err(ApiError::invalid("tools", "tools are not supported"));
    }
    // Accepted for compatibility; they do not change sampling here.
    get_f64(m, "presence_penalty", -2.0, 2.0)?;
    get_f64(m, "frequency_penalty", -2.0, 2.0)?;

    let hi = limits.max_tokens as i64;
    let mut max_tokens = None;
    for key in ["max_tokens", "max_completion_tokens", "n_predict"] {
        if let Some(v) = present(m, key) {
            let n = match v.as_i64() {
                Some(n) if n < 1 => {
                    return Err(ApiError::invalid(
                        key,
                        format!("'{key}' is {n}; it must be at least 1"),
                    ));
                }
                Some(n) if n > hi => {
                    return Err(ApiError::invalid(
                        key,
                        format!("'{key}' is {n}; this server allows at most {hi}"),
                    )
                    .with_code("max_tokens_exceeded"));
                }
                _ => get_int(m, key, 1, hi)?,
            };
            max_tokens = max_tokens.or(n);
        }
    }
    let d = &limits.sampling;
    let mut s = d.clone();
    if let Some(t) = get_f64(m, "temperature", 0.0, MAX_TEMPERATURE)? {
        s.temperature = t as f32;
    }
    if let Some(p) = get_f64(m, "top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::invalid("top_p", "'top_p' must be greater than 0"));
        }
        s.top_p = p as f32;
    }
    if let Some(k) = get_int(m, "top_k", 0, 1 << 24)? {
        s.top_k = k as usize;
    }
    if let Some(p) = get_f64(m, "min_p", 0.0, 1.0)? {
        s.min_p = p as f32;
    }
    if let Some(p) = get_f64(m, "repeat_penalty", 0.0, 10.0)? {
        if p <= 0.0 {
            return Err(ApiError::invalid(
                "repeat_penalty",
                "'repeat_penalty' must be greater than 0",
            ));
        }
        s.repeat_penalty = p as f32;
    }
    if let Some(n) = get_int(m, "repeat_last_n", 0, 1 << 20)? {
        s.repeat_last_n = n as usize;
    }
    if let Some(seed) = present(m, "seed") {
        s.seed = match seed.as_u64() {
            Some(x) => x,
            None if seed.as_i64() == Some(-1) => random_seed(),
            None => {
                return Err(ApiError::invalid(
                    "seed",
                    format!("'seed' must be a non-negative integer or -1, not {seed}"),
                ));
            }
        };
    }
    let stop = match present(m, "stop") {
        None => Vec::new(),
        Some(Value::String(x)) => vec![x.clone()],
        Some(Value::Array(a)) => {
            if a.len() > MAX_STOP_STRINGS {
                return Err(ApiError::invalid(
                    "stop",
                    format!(
                        "'stop' has {} strings; at most {MAX_STOP_STRINGS} are allowed",
                        a.len()
                    ),
                ));
            }
            let mut out = Vec::with_capacity(a.len());
            for (i, v) in a.iter().enumerate() {
                match v {
                    Value::String(x) => out.push(x.clone()),
                    v => {
                        return Err(ApiError::invalid(
                            "stop",
                            format!("'stop[{i}]' must be a string, not {}", type_name(v)),
                        ));
                    }
                }
            }
            out
        }
        Some(v) => {
            return Err(ApiError::invalid(
                "stop",
                format!(
                    "'stop' must be a string or an array of strings, not {}",
                    type_name(v)
                ),
            ));
        }
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    Ok(Common {
        stream,
        include_usage,
        max_tokens: max_tokens.map_or(limits.max_tokens, |n| n as usize),
        sampler: s,
        stop,
        ignore_eos: get_bool(m, "ignore_eos")?.unwrap_or(false),
        model,
    })
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A chat request's conversation and template variables.
#[derive(Clone, Debug)]
pub struct ChatInput {
    /// The messages, in order.
    pub messages: Vec<ChatMessage>,
    /// `chat_template_kwargs` as JSON object text, if given.
    pub template_kwargs: Option<String>,
}

/// Reads `messages` (and `chat_template_kwargs`).
pub fn parse_chat(m: &Map<String, Value>) -> Result<ChatInput, ApiError> {
    let msgs = match m.get("messages") {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "'messages' is required"));
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(
                "messages",
                format!("'messages' must be an array, not {}", type_name(v)),
            ));
        }
    };
    if msgs.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must not be empty",
        ));
    }
    if msgs.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "'messages' has {} entries; at most {MAX_MESSAGES} are allowed",
                msgs.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(msgs.len());
    for (i, msg) in msgs.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Value::Object(o) = msg else {
            return Err(ApiError::invalid(
                &p,
                format!("'{p}' must be an object, not {}", type_name(msg)),
            ));
        };
        let role = match o.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(&p, format!("'{p}.role' is required")));
            }
            Some(v) => {
                return Err(ApiError::invalid(
                    &p,
                    format!("'{p}.role' must be a string, not {}", type_name(v)),
                ));
            }
        };
        let role = match role {
            "system" | "user" | "assistant" | "tool" => role,
            "developer" => "system",
            other => {
                return Err(ApiError::invalid(
                    &p,
                    format!(
                        "'{p}.role' is '{other}'; expected system, developer, user, assistant or tool"
                    ),
                ));
            }
        };
        let content = match o.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None | Some(Value::Null) => {
                return Err(ApiError::invalid(&p, format!("'{p}.content' is required")));
            }
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let text = part
                        .as_object()
                        .filter(|o| o.get("type").and_then(Value::as_str) == Some("text"))
                        .and_then(|o| o.get("text"))
                        .and_then(Value::as_str);
                    match text {
                        Some(t) => s.push_str(t),
                        None => {
                            return Err(ApiError::invalid(
                                &p,
                                format!(
                                    "'{p}.content[{j}]' must be {{\"type\": \"text\", \"text\": \"...\"}}; only text is supported"
                                ),
                            ));
                        }
                    }
                }
                s
            }
            Some(v) => {
                return Err(ApiError::invalid(
                    &p,
                    format!(
                        "'{p}.content' must be a string or an array of text parts, not {}",
                        type_name(v)
                    ),
                ));
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    let template_kwargs = match present(m, "chat_template_kwargs") {
        None => None,
        Some(v @ Value::Object(_)) => Some(v.to_string()),
        Some(v) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs",
                format!(
                    "'chat_template_kwargs' must be an object, not {}",
                    type_name(v)
                ),
            ));
        }
    };
    Ok(ChatInput {
        messages: out,
        template_kwargs,
    })
}

/// A completion prompt: text, or token ids.
#[derive(Clone, Debug)]
pub enum PromptInput {
    /// Text (special tokens in it are parsed).
    Text(String),
    /// Token ids.
    Tokens(Vec<u32>),
}

/// Reads `prompt`: a string, an array with one string, or an array of token ids.
pub fn parse_prompt(m: &Map<String, Value>, vocab: usize) -> Result<PromptInput, ApiError> {
    let bad = |what: String| Err(ApiError::invalid("prompt", what));
    match m.get("prompt") {
        None | Some(Value::Null) => bad("'prompt' is required".into()),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(a)) => match a.first() {
            None => bad("'prompt' must not be empty".into()),
            Some(Value::String(s)) if a.len() == 1 => Ok(PromptInput::Text(s.clone())),
            Some(Value::String(_)) => bad("only one prompt per request is supported".into()),
            Some(Value::Number(_)) => {
                let mut ids = Vec::with_capacity(a.len());
                for (i, v) in a.iter().enumerate() {
                    match v.as_u64() {
                        Some(id) if (id as usize) < vocab => ids.push(id as u32),
                        _ => {
                            return bad(format!(
                                "'prompt[{i}]' is {v}; token ids must be integers below the vocabulary size {vocab}"
                            ));
                        }
                    }
                }
                Ok(PromptInput::Tokens(ids))
            }
            Some(v) => bad(format!(
                "'prompt' must be a string, an array of one string or an array of token ids; found an array of {}",
                type_name(v)
            )),
        },
        Some(v) => bad(format!(
            "'prompt' must be a string or an array, not {}",
            type_name(v)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_tokens: 100,
            max_prompt_tokens: 1000,
            ctx: 2048,
            sampling: SamplerConfig::default(),
        }
    }

    fn obj(s: &str) -> Map<String, Value> {
        parse_object(s.as_bytes()).expect("valid JSON object")
    }

    fn err(s: &str) -> ApiError {
        let m = obj(s);
        match parse_common(&m, &limits()).and_then(|_| parse_chat(&m)) {
            Ok(_) => panic!("{s} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn bodies_must_be_objects() {
        assert!(parse_object(b"").unwrap_err().message.contains("empty"));
        assert!(
            parse_object(b"{\"a\":")
                .unwrap_err()
                .message
                .contains("malformed JSON")
        );
        assert!(
            parse_object(b"[1]")
                .unwrap_err()
                .message
                .contains("an array")
        );
    }

    #[test]
    fn good_chat_request() {
        let m = obj(
            r#"{"model":"x","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}],
                "temperature":0,"top_p":0.5,"max_tokens":7,"stop":["\n"],"seed":3,"stream":true,
                "stream_options":{"include_usage":true}}"#,
        );
        let c = parse_common(&m, &limits()).unwrap();
        assert!(c.stream && c.include_usage);
        assert_eq!(c.max_tokens, 7);
        assert_eq!(c.sampler.temperature, 0.0);
        assert_eq!(c.sampler.seed, 3);
        assert_eq!(c.stop, vec!["\n".to_string()]);
        let chat = parse_chat(&m).unwrap();
        assert_eq!(chat.messages[1], ChatMessage::user("hi there"));
    }

    #[test]
    fn defaults_apply() {
        let m = obj(r#"{"messages":[{"role":"user","content":"x"}]}"#);
        let c = parse_common(&m, &limits()).unwrap();
        assert_eq!(c.max_tokens, 100);
        assert_eq!(c.sampler, SamplerConfig::default());
        assert!(!c.stream);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases: &[(&str, &str)] = &[
            (r#"{}"#, "messages"),
            (r#"{"messages":"hi"}"#, "messages"),
            (r#"{"messages":[]}"#, "messages"),
            (r#"{"messages":[{"content":"x"}]}"#, "messages[0]"),
            (
                r#"{"messages":[{"role":"bot","content":"x"}]}"#,
                "messages[0]",
            ),
            (
                r#"{"messages":[{"role":"user","content":5}]}"#,
                "messages[0]",
            ),
            (r#"{"messages":[{"role":"user"}]}"#, "messages[0]"),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                "messages[0]",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":101}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1.5}"#,
                "max_tokens",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
                "stream",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"top_p":0}"#,
                "top_p",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":[1]}"#,
                "stop",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"stop":""}"#,
                "stop",
            ),
            (r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#, "n"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"seed":-5}"#,
                "seed",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"model":3}"#,
                "model",
            ),
        ];
        for (body, param) in cases {
            let e = err(body);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.param.as_deref(), Some(*param), "{body}: {}", e.message);
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn prompts() {
        let p = |s: &str| parse_prompt(&obj(s), 512);
        assert!(matches!(p(r#"{"prompt":"hi"}"#), Ok(PromptInput::Text(t)) if t == "hi"));
        assert!(matches!(p(r#"{"prompt":["hi"]}"#), Ok(PromptInput::Text(t)) if t == "hi"));
        assert!(matches!(p(r#"{"prompt":[1,2]}"#), Ok(PromptInput::Tokens(t)) if t == [1, 2]));
        assert!(p(r#"{"prompt":[1,512]}"#).is_err());
        assert!(p(r#"{"prompt":["a","b"]}"#).is_err());
        assert!(p(r#"{"prompt":[]}"#).is_err());
        assert!(p(r#"{}"#).is_err());
        assert!(p(r#"{"prompt":{}}"#).is_err());
    }
}
