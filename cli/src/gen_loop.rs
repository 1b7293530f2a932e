//! Text generation shared by `thinker chat` and `thinker serve`: a [`Generator`] owns a session
//! (KV cache), a sampler and the tokenizer, reuses the cached prefix of a prompt, streams
//! detokenised text, stops on end-of-turn ids and stop strings, honours a cancellation flag and
//! reports timings.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engine::kv_cache::KvType;
use engine::model::{Logits, Model, Session, SessionConfig};
use engine::sampler::{Sampler, SamplerConfig};
use engine::tokenizer::Tokenizer;

/// Sampling flags shared by `thinker chat` and `thinker serve` (defaults of the server's
/// requests).
#[derive(clap::Args, Debug, Clone)]
pub struct SamplingArgs {
    /// Sampling temperature (0: greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    pub temperature: f32,
    /// Top-k (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Top-p (1: off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p (0: off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Window of the repetition penalty.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed.
    #[arg(short = 's', long, default_value_t = 0x5eed)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The sampler settings.
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed,
        }
    }
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a stop string.
    Stop,
    /// The token budget (`max_tokens`) ran out.
    Length,
    /// The context (KV cache) is full.
    ContextFull,
    /// The cancellation flag was raised or the consumer went away.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI spelling (`stop`, `length`; cancelled generations report `cancelled`).
    pub fn as_openai(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length | FinishReason::ContextFull => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Why a generation could not run.
#[derive(Debug)]
pub enum GenError {
    /// The prompt does not fit in the context.
    ContextFull {
        /// Positions the prompt needs.
        need: usize,
        /// Positions the session holds.
        limit: usize,
    },
    /// The prompt is empty.
    EmptyPrompt,
    /// Cancelled before any token was produced (during prompt processing).
    Cancelled,
    /// The engine failed (tokenizer, forward pass, sampler).
    Engine(engine::Error),
}

impl std::fmt::Display for GenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GenError::ContextFull { need, limit } => write!(
                f,
                "context full: the prompt needs {need} positions, the context holds {limit}"
            ),
            GenError::EmptyPrompt => write!(f, "the prompt encodes to no tokens"),
            GenError::Cancelled => write!(f, "cancelled"),
            GenError::Engine(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GenError {}

impl From<engine::Error> for GenError {
    fn from(e: engine::Error) -> Self {
        GenError::Engine(e)
    }
}

/// A prompt: text (rendered chat or raw completion prompt) or token ids.
#[derive(Clone, Copy, Debug)]
pub enum Prompt<'p> {
    /// Text, encoded with special tokens parsed (`<|im_start|>` becomes its id). The cached
    /// prefix is matched on the text, so a conversation that grows turn by turn only feeds the
    /// new turns, whatever tokens the model generated in between.
    Text(&'p str),
    /// Token ids; the cached prefix is matched on the ids.
    Tokens(&'p [u32]),
}

/// Limits and stop conditions of one generation.
#[derive(Clone, Debug, Default)]
pub struct GenParams {
    /// Largest number of tokens to sample.
    pub max_tokens: usize,
    /// Keep going past end-of-turn ids.
    pub ignore_eos: bool,
    /// Stop strings: generation ends before the first occurrence of any of them, which is not
    /// part of the output.
    pub stop: Vec<String>,
    /// Raised by someone else to stop the generation (checked before every token and between
    /// prompt chunks).
    pub cancel: Option<Arc<AtomicBool>>,
}

/// What a generation did.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The text produced (special tokens skipped, stop string removed).
    pub text: String,
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV entries were reused from the previous generation.
    pub cached_tokens: usize,
    /// The sampled ids, in order (an end-of-turn id included).
    pub ids: Vec<u32>,
    /// Time spent on the new prompt tokens.
    pub prompt_time: Duration,
    /// Time from the first sampled token to the last.
    pub gen_time: Duration,
    /// Why it ended.
    pub finish: FinishReason,
}

impl Outcome {
    /// Tokens sampled (an end-of-turn token included).
    pub fn generated(&self) -> usize {
        self.ids.len()
    }

    /// Prompt tokens processed (not cached).
    pub fn prompt_evaluated(&self) -> usize {
        self.prompt_tokens - self.cached_tokens
    }

    /// Prompt processing speed (tokens/s over the tokens actually evaluated).
    pub fn prompt_tps(&self) -> f64 {
        rate(self.prompt_evaluated(), self.prompt_time)
    }

    /// Generation speed: decode steps per second. The first token comes from the prompt pass,
    /// so `generated - 1` steps are timed.
    pub fn gen_tps(&self) -> f64 {
        rate(self.generated().saturating_sub(1), self.gen_time)
    }
}

/// `n / t` in items per second (0 when nothing was timed).
pub fn rate(n: usize, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    if n == 0 || s <= 0.0 {
        0.0
    } else {
        n as f64 / s
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Holds back text that may be the beginning of a stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty strings are ignored).
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds text; returns the text that is safe to emit and whether a stop string was found
    /// (the text before it is emitted, the rest dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.pending.push_str(text);
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest suffix that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > keep && self.pending.ends_with(&s[..i]) {
                    keep = i;
                }
            }
        }
        let cut = self.pending.len() - keep;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// Ends the stream: whatever was held back is emitted.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// A generator: one session over a model, a sampler and the tokenizer. Generations run one after
/// another; the KV cache of the previous one is reused when the next prompt extends it.
pub struct Generator<'m> {
    tok: &'m Tokenizer,
    session: Session<'m>,
    sampler: Sampler,
    /// The ids in the KV cache, in order.
    cached: Vec<u32>,
    /// The text those ids stand for: prompt text as given, generated ids decoded (invalid UTF-8
    /// replaced by U+FFFD, as in the reply text, so that a conversation whose reply is such text
    /// still extends the cache). `None` when not known (e.g. after a failed prompt pass).
    cached_text: Option<String>,
}

impl<'m> Generator<'m> {
    /// A generator with a context of `ctx` positions (0: the model's context length).
    pub fn new(
        model: &'m Model,
        tok: &'m Tokenizer,
        ctx: usize,
        kv_type: KvType,
        sampler: SamplerConfig,
    ) -> Result<Generator<'m>, GenError> {
        let session = Session::new(
            model,
            SessionConfig {
                max_positions: ctx,
                kv_type,
                ..SessionConfig::default()
            },
        )?;
        Ok(Generator {
            tok,
            session,
            sampler: Sampler::new(sampler)?,
            cached: Vec::new(),
            cached_text: Some(String::new()),
        })
    }

    /// The session (KV memory, position, MoE statistics).
    pub fn session(&self) -> &Session<'m> {
        &self.session
    }

    /// Positions the context holds.
    pub fn ctx(&self) -> usize {
        self.session.config().max_positions
    }

    /// Replaces the sampler (new settings, fresh random state and history).
    pub fn set_sampler(&mut self, cfg: SamplerConfig) -> Result<(), GenError> {
        self.sampler = Sampler::new(cfg)?;
        Ok(())
    }

    /// Forgets the context.
    pub fn reset(&mut self) {
        self.session.reset();
        self.cached.clear();
        self.cached_text = Some(String::new());
    }

    /// Splits a prompt into the cached prefix and the ids still to run: `(reused, new ids,
    /// new text)`. Resets the cache when the prompt does not extend it.
    fn plan(&mut self, prompt: Prompt<'_>) -> Result<(usize, Vec<u32>, Option<String>), GenError> {
        match prompt {
            Prompt::Text(text) => {
                if let Some(ct) = &self.cached_text
                    && !ct.is_empty()
                    && text.len() > ct.len()
                    && text.starts_with(ct.as_str())
                {
                    let suffix = &text[ct.len()..];
                    let ids = self.tok.encode(suffix, true)?;
                    if !ids.is_empty() {
                        return Ok((self.cached.len(), ids, Some(suffix.to_string())));
                    }
                }
                self.reset();
                let ids = self.tok.encode_prompt(text)?;
                Ok((0, ids, Some(text.to_string())))
            }
            Prompt::Tokens(ids) => {
                if !self.cached.is_empty()
                    && ids.len() > self.cached.len()
                    && ids.starts_with(&self.cached)
                {
                    let n = self.cached.len();
                    let text = self.tok.decode(&ids[n..], false).ok();
                    return Ok((n, ids[n..].to_vec(), text));
                }
                self.reset();
                let text = self.tok.decode(ids, false).ok();
                Ok((0, ids.to_vec(), text))
            }
        }
    }

    fn cancelled(p: &GenParams) -> bool {
        p.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Runs one generation. `on_text` receives each piece of text as it becomes final; returning
    /// `false` cancels the generation (the consumer went away).
    pub fn generate(
        &mut self,
        prompt: Prompt<'_>,
        params: &GenParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Outcome, GenError> {
        let (reused, new_ids, new_text) = self.plan(prompt)?;
        let total = reused + new_ids.len();
        if new_ids.is_empty() {
            return Err(GenError::EmptyPrompt);
        }
        let limit = self.ctx();
        if total > limit {
            return Err(GenError::ContextFull { need: total, limit });
        }
        // Prompt pass, in chunks so that cancellation is noticed.
        let t0 = Instant::now();
        let chunk = self.session.config().max_batch.max(1);
        let mut logits = Vec::new();
        let mut done = 0;
        while done < new_ids.len() {
            if Self::cancelled(params) {
                self.cached_text = None;
                return Err(GenError::Cancelled);
            }
            let part = &new_ids[done..(done + chunk).min(new_ids.len())];
            match self.session.forward(part, Logits::Last) {
                Ok(l) => logits = l,
                Err(e) => {
                    // The cache holds what ran before the failing chunk.
                    self.cached_text = None;
                    return Err(e.into());
                }
            }
            self.cached.extend_from_slice(part);
            done += part.len();
        }
        match (&mut self.cached_text, new_text) {
            (Some(ct), Some(t)) => ct.push_str(&t),
            (ct, _) => *ct = None,
        }
        self.sampler.accept(&new_ids);
        let prompt_time = t0.elapsed();

        let t1 = Instant::now();
        let mut decoder = self.tok.stream_decoder(true);
        let mut stops = StopMatcher::new(&params.stop);
        let mut text = String::new();
        let mut finish = FinishReason::Length;
        let mut emit = |piece: &str, text: &mut String| -> bool {
            if piece.is_empty() {
                return true;
            }
            text.push_str(piece);
            on_text(piece)
        };
        let mut stopped_by_string = false;
        // Generated ids that went through the model (all but the last sampled, usually).
        let mut fed = Vec::new();
        let mut ids = Vec::new();
        while ids.len() < params.max_tokens {
            if Self::cancelled(params) {
                finish = FinishReason::Cancelled;
                break;
            }
            let id = self.sampler.sample(&logits)?;
            ids.push(id);
            if !params.ignore_eos && self.tok.is_stop(id) {
                finish = FinishReason::Stop;
                break;
            }
            if let Some(piece) = decoder.push(id)? {
                let (out, hit) = stops.push(&piece);
                if !emit(&out, &mut text) {
                    finish = FinishReason::Cancelled;
                    break;
                }
                if hit {
                    finish = FinishReason::Stop;
                    stopped_by_string = true;
                    break;
                }
            }
            if ids.len() == params.max_tokens {
                finish = FinishReason::Length;
                break;
            }
            if self.session.pos() >= limit {
                finish = FinishReason::ContextFull;
                break;
            }
            logits = match self.session.forward(&[id], Logits::Last) {
                Ok(l) => l,
                Err(e) => {
                    self.cached_text = None;
                    return Err(e.into());
                }
            };
            self.cached.push(id);
            fed.push(id);
        }
        if let Some(ct) = &mut self.cached_text {
            match self.tok.decode(&fed, false) {
                Ok(t) => ct.push_str(&t),
                Err(_) => self.cached_text = None,
            }
        }
        if !stopped_by_string && finish != FinishReason::Cancelled {
            if let Some(rest) = decoder.flush() {
                let (out, _) = stops.push(&rest);
                emit(&out, &mut text);
            }
            let rest = stops.finish();
            emit(&rest, &mut text);
        }
        Ok(Outcome {
            text,
            prompt_tokens: total,
            cached_tokens: reused,
            ids,
            prompt_time,
            gen_time: t1.elapsed(),
            finish,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::tokenizer::ChatMessage;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            let (o, hit) = m.push(p);
            out.push_str(&o);
            if hit {
                return (out, true);
            }
        }
        out.push_str(&m.finish());
        (out, false)
    }

    #[test]
    fn stop_strings_across_pieces() {
        assert_eq!(
            run(&["END"], &["abc E", "N", "Dxyz"]),
            ("abc ".into(), true)
        );
        assert_eq!(
            run(&["END"], &["abc E", "N", "x"]),
            ("abc ENx".into(), false)
        );
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(
            run(&["\n\n", "##"], &["x\n", "#y", "#", "#z"]),
            ("x\n#y".into(), true)
        );
        assert_eq!(run(&["é!"], &["aé", "é!"]), ("aé".into(), true));
    }

    #[test]
    fn stop_matcher_holds_back_only_prefixes() {
        let mut m = StopMatcher::new(&["abc".to_string()]);
        assert_eq!(m.push("xxab"), ("xx".to_string(), false));
        assert_eq!(m.push("x"), ("abx".to_string(), false));
    }

    #[test]
    fn peak_rss_is_read() {
        let rss = peak_rss_bytes().expect("VmHWM");
        assert!(rss > 1024 * 1024, "peak RSS {rss} is implausibly small");
    }

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../engine/tests/fixtures");

    fn npy_ids(rel: &str) -> Vec<u32> {
        let p = std::path::Path::new(FIXTURES).join(rel);
        engine::formats::npy::read(&p)
            .unwrap()
            .to_i32()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    fn load(rel: &str) -> (Model, Tokenizer) {
        let path = std::path::Path::new(FIXTURES).join(rel);
        let m = Model::load(
            &path,
            &engine::model::ModelOptions {
                threads: 1,
                ..Default::default()
            },
        )
        .unwrap();
        let t = m.tokenizer(&path).unwrap();
        (m, t)
    }

    fn greedy(max_tokens: usize) -> GenParams {
        GenParams {
            max_tokens,
            ignore_eos: true,
            ..GenParams::default()
        }
    }

    #[test]
    fn greedy_generation_matches_the_reference() {
        let (m, t) = load("tiny-t1-gguf/tiny-t1-F32.gguf");
        let prompt = npy_ids("tiny-t1/prompt_ids.npy");
        let want = npy_ids("tiny-t1/greedy_ids.npy");
        let mut g = Generator::new(&m, &t, 256, KvType::F32, SamplerConfig::greedy()).unwrap();
        let mut streamed = String::new();
        let o = g
            .generate(Prompt::Tokens(&prompt), &greedy(want.len()), |p| {
                streamed.push_str(p);
                true
            })
            .unwrap();
        assert_eq!(o.ids, want);
        assert_eq!(o.generated(), want.len());
        assert_eq!(o.finish, FinishReason::Length);
        assert_eq!(o.text, streamed);
        assert_eq!(o.text, t.decode(&want, true).unwrap());
        assert_eq!((o.prompt_tokens, o.cached_tokens), (prompt.len(), 0));
        // Every sampled id but the last went through the model.
        assert_eq!(g.session().pos(), prompt.len() + want.len() - 1);
    }

    #[test]
    fn reused_prefix_gives_the_same_tokens_as_a_fresh_session() {
        let (m, t) = load("tiny-t1/");
        let prompt = npy_ids("tiny-t1/prompt_ids.npy");
        let mut g = Generator::new(&m, &t, 512, KvType::F32, SamplerConfig::greedy()).unwrap();
        let first = g
            .generate(Prompt::Tokens(&prompt), &greedy(6), |_| true)
            .unwrap();
        // The conversation goes on: the previous prompt, the reply, and more text.
        let mut next = prompt.clone();
        next.extend_from_slice(&first.ids);
        next.extend_from_slice(&[300, 301, 302, 17]);
        let cont = g
            .generate(Prompt::Tokens(&next), &greedy(12), |_| true)
            .unwrap();
        assert_eq!(cont.cached_tokens, prompt.len() + first.ids.len() - 1);
        assert_eq!(cont.prompt_tokens, next.len());
        let mut fresh = Generator::new(&m, &t, 512, KvType::F32, SamplerConfig::greedy()).unwrap();
        let want = fresh
            .generate(Prompt::Tokens(&next), &greedy(12), |_| true)
            .unwrap();
        assert_eq!(want.cached_tokens, 0);
        assert_eq!(cont.ids, want.ids);
        // A prompt that does not extend the cache starts over.
        let other = g
            .generate(Prompt::Tokens(&prompt[..10]), &greedy(2), |_| true)
            .unwrap();
        assert_eq!(other.cached_tokens, 0);
        assert_eq!(g.session().pos(), 10 + 1);
    }

    #[test]
    fn text_prompts_reuse_the_conversation() {
        let (m, t) = load("tiny-t1-gguf/tiny-t1-Q8_0.gguf");
        let mut g = Generator::new(&m, &t, 1024, KvType::F16, SamplerConfig::default()).unwrap();
        let mut msgs = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Hello there"),
        ];
        let r1 = t.render_chat(&msgs, true).unwrap();
        let p = GenParams {
            max_tokens: 1,
            ..GenParams::default()
        };
        let o1 = g.generate(Prompt::Text(&r1), &p, |_| true).unwrap();
        assert_eq!(o1.cached_tokens, 0);
        msgs.push(ChatMessage::assistant(o1.text.clone()));
        msgs.push(ChatMessage::user("And then?"));
        let r2 = t.render_chat(&msgs, true).unwrap();
        let o2 = g.generate(Prompt::Text(&r2), &p, |_| true).unwrap();
        // One sampled token is never fed, so the cache held exactly the first prompt.
        assert_eq!(o2.cached_tokens, o1.prompt_tokens);
        assert!(o2.prompt_tokens > o1.prompt_tokens + 5);
    }

    #[test]
    fn cancellation_and_consumer_going_away() {
        let (m, t) = load("tiny-t1-gguf/tiny-t1-Q8_0.gguf");
        let prompt = npy_ids("tiny-t1/prompt_ids.npy");
        let mut g = Generator::new(&m, &t, 256, KvType::F32, SamplerConfig::default()).unwrap();
        let flag = Arc::new(AtomicBool::new(true));
        let p = GenParams {
            max_tokens: 100,
            ignore_eos: true,
            cancel: Some(flag.clone()),
            ..GenParams::default()
        };
        assert!(matches!(
            g.generate(Prompt::Tokens(&prompt), &p, |_| true),
            Err(GenError::Cancelled)
        ));
        flag.store(false, Ordering::Relaxed);
        let mut pieces = 0;
        let o = g
            .generate(Prompt::Tokens(&prompt), &p, |_| {
                pieces += 1;
                pieces < 3
            })
            .unwrap();
        assert_eq!(o.finish, FinishReason::Cancelled);
        assert!(o.generated() < 100, "generated {}", o.generated());
        // The flag raised mid-way stops at the next token.
        let mut n = 0;
        let o = g
            .generate(Prompt::Tokens(&prompt), &p, |_| {
                n += 1;
                if n == 5 {
                    flag.store(true, Ordering::Relaxed);
                }
                true
            })
            .unwrap();
        assert_eq!(o.finish, FinishReason::Cancelled);
        assert!(o.generated() < 100);
    }

    #[test]
    fn context_limits() {
        let (m, t) = load("tiny-t1-gguf/tiny-t1-Q8_0.gguf");
        let prompt = npy_ids("tiny-t1/prompt_ids.npy");
        let mut g = Generator::new(&m, &t, 16, KvType::F32, SamplerConfig::greedy()).unwrap();
        assert!(matches!(
            g.generate(Prompt::Tokens(&prompt), &greedy(4), |_| true),
            Err(GenError::ContextFull {
                need: 40,
                limit: 16
            })
        ));
        let mut g = Generator::new(&m, &t, 45, KvType::F32, SamplerConfig::greedy()).unwrap();
        let o = g
            .generate(Prompt::Tokens(&prompt), &greedy(100), |_| true)
            .unwrap();
        assert_eq!(o.finish, FinishReason::ContextFull);
        // 5 positions left: 5 fed tokens plus the one sampled from the last position.
        assert_eq!(o.generated(), 6);
        assert_eq!(g.session().pos(), 45);
    }

    #[test]
    fn stop_strings_end_the_output() {
        let (m, t) = load("tiny-t1-gguf/tiny-t1-F32.gguf");
        let prompt = npy_ids("tiny-t1/prompt_ids.npy");
        let mut g = Generator::new(&m, &t, 256, KvType::F32, SamplerConfig::greedy()).unwrap();
        let full = g
            .generate(Prompt::Tokens(&prompt), &greedy(30), |_| true)
            .unwrap();
        let chars: Vec<(usize, char)> = full.text.char_indices().collect();
        assert!(chars.len() > 8, "{:?}", full.text);
        let (a, b) = (chars[4].0, chars[6].0);
        let stop = full.text[a..b].to_string();
        let first = full.text.find(&stop).unwrap();
        let p = GenParams {
            stop: vec![stop.clone()],
            ..greedy(30)
        };
        let mut streamed = String::new();
        let o = g
            .generate(Prompt::Tokens(&prompt), &p, |s| {
                streamed.push_str(s);
                true
            })
            .unwrap();
        assert_eq!(o.finish, FinishReason::Stop);
        assert_eq!(o.text, full.text[..first], "stop {stop:?}");
        assert_eq!(streamed, o.text);
    }

    #[test]
    fn rates() {
        assert_eq!(rate(0, Duration::from_secs(1)), 0.0);
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert!((rate(10, Duration::from_millis(500)) - 20.0).abs() < 1e-9);
    }
}
