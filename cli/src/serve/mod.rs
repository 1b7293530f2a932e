//! `thinker serve`: an OpenAI-compatible HTTP server for one model.
//!
//! HTTP runs on a tokio runtime (axum); generation runs on one dedicated thread that owns the
//! session (the engine is synchronous and parallelises with its own thread pool). Requests are
//! validated and tokenised on the HTTP side, then wait in a bounded FIFO queue; when it is full
//! the answer is 429. Each generation streams text pieces back through a channel; a client that
//! goes away (a dropped SSE stream or response future) raises the request's cancel flag, which
//! the generation thread checks before every token.

mod api;
mod metrics;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use engine::kv_cache::KvType;
use engine::tokenizer::{ChatOptions, Tokenizer};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::args::ModelArgs;
use crate::gen_loop::{GenParams, Outcome, SamplingArgs};
use api::{ApiError, Common, Limits, PromptInput};
use metrics::Metrics;
use worker::{Event, Job};

/// `thinker serve` flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests that may wait while one is being generated; more get 429.
    #[arg(long, default_value_t = 8)]
    queue: usize,
    /// Longest prompt accepted, in tokens (default: the context size - 1).
    #[arg(long)]
    max_prompt_tokens: Option<usize>,
    /// Largest `max_tokens` a request may ask for (also the default).
    #[arg(long, default_value_t = 2048)]
    max_tokens: usize,
    /// Context size in positions (0: the model's context length).
    #[arg(short = 'c', long = "ctx", default_value_t = 4096)]
    ctx: usize,
    /// Largest request body, in bytes (413 above).
    #[arg(long, default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Keep the KV cache in f16 (half the memory).
    #[arg(long)]
    kv_f16: bool,
    /// Model name reported by `/v1/models` (default: the file or directory name).
    #[arg(long)]
    alias: Option<String>,
    /// No log line per request on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Default sampling settings (requests override them).
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// State shared by the HTTP handlers.
struct AppState {
    tok: Arc<Tokenizer>,
    queue: std::sync::mpsc::SyncSender<Job>,
    metrics: Arc<Metrics>,
    limits: Limits,
    model_id: String,
    created: u64,
    next_id: AtomicU64,
    shutdown: Arc<AtomicBool>,
    vocab: usize,
}

type Shared = Arc<AppState>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the command.
pub fn main(a: Args) -> Result<()> {
    if a.queue == 0 {
        bail!("--queue must be at least 1");
    }
    if a.max_tokens == 0 {
        bail!("--max-tokens must be at least 1");
    }
    let defaults = a.sampling.config();
    defaults.validate()?;
    let model = a.model.load()?;
    let tok = Arc::new(
        model
            .tokenizer(&a.model.model)
            .context("the model has no usable tokenizer")?,
    );
    let vocab = model.config.vocab_size;
    let model_id = a.alias.clone().unwrap_or_else(|| {
        a.model
            .model
            .file_name()
            .map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned())
    });
    let metrics = Arc::new(Metrics::default());
    metrics
        .queue_capacity
        .store(a.queue as u64, Ordering::Relaxed);
    let shutdown = Arc::new(AtomicBool::new(false));
    let current: Arc<Mutex<Option<Arc<AtomicBool>>>> = Arc::default();
    let (queue, rx) = std::sync::mpsc::sync_channel::<Job>(a.queue);
    let kv = if a.kv_f16 { KvType::F16 } else { KvType::F32 };
    let (worker, ctx) = worker::spawn(
        model,
        tok.clone(),
        worker::Config {
            ctx: a.ctx,
            kv,
            defaults: defaults.clone(),
            log: !a.quiet,
        },
        rx,
        metrics.clone(),
        shutdown.clone(),
        current.clone(),
    )?;
    let max_prompt_tokens = a
        .max_prompt_tokens
        .unwrap_or(ctx.saturating_sub(1))
        .min(ctx.saturating_sub(1));
    if max_prompt_tokens == 0 {
        bail!("the context ({ctx}) leaves no room for a prompt");
    }
    let state = Arc::new(AppState {
        tok,
        queue,
        metrics,
        limits: Limits {
            max_tokens: a.max_tokens,
            max_prompt_tokens,
            ctx,
            sampling: defaults,
        },
        model_id,
        created: unix_now(),
        next_id: AtomicU64::new(1),
        shutdown: shutdown.clone(),
        vocab,
    });
    let app = router(state.clone(), a.max_body_bytes);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .thread_name("http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let served = rt.block_on(async {
        let addr = format!("{}:{}", a.host, a.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local: SocketAddr = listener.local_addr()?;
        eprintln!(
            "thinker serve: {} | context {ctx} | queue {} | listening on http://{local}",
            state.model_id, a.queue
        );
        let sd = shutdown.clone();
        let cur = current.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                wait_for_signal().await;
                eprintln!("thinker serve: shutting down");
                sd.store(true, Ordering::SeqCst);
                if let Ok(c) = cur.lock()
                    && let Some(flag) = c.as_ref()
                {
                    flag.store(true, Ordering::SeqCst);
                }
            })
            .await
            .context("server error")
    });
    shutdown.store(true, Ordering::SeqCst);
    drop(state);
    rt.shutdown_timeout(Duration::from_secs(2));
    if worker.join().is_err() {
        bail!("the generation thread panicked");
    }
    served?;
    eprintln!("thinker serve: stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn router(state: Shared, max_body: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics_page))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found_error",
        format!("no route for {method} {}", uri.path()),
    )
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn models(State(st): State<Shared>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": st.model_id,
            "object": "model",
            "created": st.created,
            "owned_by": "thinker",
            "meta": {
                "n_ctx": st.limits.ctx,
                "n_vocab": st.vocab,
                "max_tokens": st.limits.max_tokens,
                "max_prompt_tokens": st.limits.max_prompt_tokens,
            }
        }]
    }))
    .into_response()
}

async fn metrics_page(State(st): State<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

/// Which endpoint a job answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

impl Kind {
    fn id_prefix(self) -> &'static str {
        match self {
            Kind::Chat => "chatcmpl",
            Kind::Text => "cmpl",
        }
    }
}

fn body_or_error(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        st.metrics.rejected_invalid.fetch_add(1, Ordering::Relaxed);
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "invalid_request_error",
                "the request body is larger than this server accepts (--max-body-bytes)",
            )
            .with_code("body_too_large")
        } else {
            ApiError::new(status, "invalid_request_error", e.body_text())
        }
    })
}

fn count_invalid<T>(st: &AppState, r: Result<T, ApiError>) -> Result<T, ApiError> {
    if r.is_err() {
        st.metrics.rejected_invalid.fetch_add(1, Ordering::Relaxed);
    }
    r
}

async fn chat_completions(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(&st, body)?;
    let prepared = {
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || -> Result<(Common, Vec<u32>), ApiError> {
            let m = api::parse_object(&body)?;
            let common = api::parse_common(&m, &st2.limits)?;
            let chat = api::parse_chat(&m)?;
            let text = st2
                .tok
                .render_chat_with(
                    &chat.messages,
                    &ChatOptions {
                        add_generation_prompt: true,
                        extra_json: chat.template_kwargs,
                        ..ChatOptions::default()
                    },
                )
                .map_err(|e| ApiError::invalid("messages", format!("chat template: {e}")))?;
            let ids = st2
                .tok
                .encode_prompt(&text)
                .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
            Ok((common, ids))
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            )
        })?
    };
    let (common, ids) = count_invalid(&st, prepared)?;
    submit(st, Kind::Chat, common, ids).await
}

async fn completions(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_or_error(&st, body)?;
    let prepared = {
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || -> Result<(Common, Vec<u32>), ApiError> {
            let m = api::parse_object(&body)?;
            let common = api::parse_common(&m, &st2.limits)?;
            let ids = match api::parse_prompt(&m, st2.vocab)? {
                PromptInput::Tokens(ids) => ids,
                PromptInput::Text(t) => st2
                    .tok
                    .encode_prompt(&t)
                    .map_err(|e| ApiError::invalid("prompt", e.to_string()))?,
            };
            Ok((common, ids))
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                e.to_string(),
            )
        })?
    };
    let (common, ids) = count_invalid(&st, prepared)?;
    submit(st, Kind::Text, common, ids).await
}

/// Raises the cancel flag when dropped (the response future or SSE stream went away).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Checks the prompt against the limits, queues the job and answers (JSON or SSE).
async fn submit(st: Shared, kind: Kind, c: Common, ids: Vec<u32>) -> Result<Response, ApiError> {
    let lim = &st.limits;
    let check = if ids.is_empty() {
        Err(ApiError::bad_request("the prompt is empty"))
    } else if ids.len() > lim.max_prompt_tokens {
        Err(ApiError::invalid(
            if kind == Kind::Chat {
                "messages"
            } else {
                "prompt"
            },
            format!(
                "the prompt has {} tokens; this server accepts at most {} (context {})",
                ids.len(),
                lim.max_prompt_tokens,
                lim.ctx
            ),
        )
        .with_code("context_length_exceeded"))
    } else {
        Ok(())
    };
    count_invalid(&st, check)?;
    if st.shutdown.load(Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        ));
    }
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}-{n}", kind.id_prefix());
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let prompt_tokens = ids.len();
    let job = Job {
        id: id.clone(),
        tokens: ids,
        sampler: c.sampler.clone(),
        params: GenParams {
            max_tokens: c.max_tokens,
            ignore_eos: c.ignore_eos,
            stop: c.stop.clone(),
            cancel: Some(cancel.clone()),
        },
        events: tx,
        enqueued: Instant::now(),
    };
    // Count before sending so that the worker's decrement never comes first.
    st.metrics.queue_depth.fetch_add(1, Ordering::SeqCst);
    match st.queue.try_send(job) {
        Ok(()) => {
            st.metrics.requests.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            st.metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
            return Err(match e {
                std::sync::mpsc::TrySendError::Full(_) => {
                    st.metrics
                        .rejected_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limit_error",
                        format!(
                            "the server is busy: {} requests are already waiting; retry later",
                            st.metrics.queue_capacity.load(Ordering::Relaxed)
                        ),
                    )
                    .with_code("queue_full")
                }
                std::sync::mpsc::TrySendError::Disconnected(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "the generation thread has stopped",
                ),
            });
        }
    }
    let guard = CancelOnDrop(cancel);
    let meta = Meta {
        id,
        kind,
        created: unix_now(),
        model: c.model.clone().unwrap_or_else(|| st.model_id.clone()),
        prompt_tokens,
    };
    if c.stream {
        Ok(sse_response(meta, rx, guard, c.include_usage))
    } else {
        collect_response(meta, rx, guard).await
    }
}

/// What every response of one request repeats.
struct Meta {
    id: String,
    kind: Kind,
    created: u64,
    model: String,
    prompt_tokens: usize,
}

fn usage(o: &Outcome) -> Value {
    json!({
        "prompt_tokens": o.prompt_tokens,
        "completion_tokens": o.generated(),
        "total_tokens": o.prompt_tokens + o.generated(),
        "prompt_tokens_details": {"cached_tokens": o.cached_tokens},
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// llama-server's `timings` object (plus the time spent waiting in the queue).
fn timings(o: &Outcome, queued: Duration) -> Value {
    let pn = o.prompt_evaluated();
    let gn = o.generated().saturating_sub(1);
    let per = |t: Duration, n: usize| if n > 0 { ms(t) / n as f64 } else { 0.0 };
    json!({
        "cache_n": o.cached_tokens,
        "prompt_n": pn,
        "prompt_ms": ms(o.prompt_time),
        "prompt_per_token_ms": per(o.prompt_time, pn),
        "prompt_per_second": o.prompt_tps(),
        "predicted_n": o.generated(),
        "predicted_ms": ms(o.gen_time),
        "predicted_per_token_ms": per(o.gen_time, gn),
        "predicted_per_second": o.gen_tps(),
        "queue_ms": ms(queued),
    })
}

fn server_error(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
}

async fn collect_response(
    meta: Meta,
    mut rx: UnboundedReceiver<Event>,
    guard: CancelOnDrop,
) -> Result<Response, ApiError> {
    let _guard = guard;
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done(o, queued)) => {
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": o.text},
                        "finish_reason": o.finish.as_openai(),
                    }),
                    Kind::Text => json!({
                        "index": 0,
                        "text": o.text,
                        "logprobs": null,
                        "finish_reason": o.finish.as_openai(),
                    }),
                };
                let body = json!({
                    "id": meta.id,
                    "object": if meta.kind == Kind::Chat { "chat.completion" } else { "text_completion" },
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": usage(&o),
                    "timings": timings(&o, queued),
                });
                return Ok(axum::Json(body).into_response());
            }
            Some(Event::Failed(e)) => return Err(e),
            None => {
                return Err(server_error(format!(
                    "the generation thread dropped the request ({} prompt tokens)",
                    meta.prompt_tokens
                )));
            }
        }
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn chunk(meta: &Meta, delta_text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
    match meta.kind {
        Kind::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), json!("assistant"));
            }
            if let Some(t) = delta_text {
                delta.insert("content".into(), json!(t));
            }
            json!({
                "id": meta.id,
                "object": "chat.completion.chunk",
                "created": meta.created,
                "model": meta.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            })
        }
        Kind::Text => json!({
            "id": meta.id,
            "object": "text_completion",
            "created": meta.created,
            "model": meta.model,
            "choices": [{"index": 0, "text": delta_text.unwrap_or(""), "logprobs": null, "finish_reason": finish}],
        }),
    }
}

/// Streaming state: the receiver, what is left to send, and the cancel guard (dropped with the
/// stream when the client goes away).
struct SseState {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    _guard: CancelOnDrop,
    include_usage: bool,
    started: bool,
    tail: Vec<Bytes>,
    done: bool,
}

fn sse_response(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    guard: CancelOnDrop,
    include_usage: bool,
) -> Response {
    let state = SseState {
        meta,
        rx,
        _guard: guard,
        include_usage,
        started: false,
        tail: Vec::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        if let Some(b) = s.tail.pop() {
            return Some((Ok::<Bytes, std::convert::Infallible>(b), s));
        }
        if s.done {
            return None;
        }
        if !s.started && s.meta.kind == Kind::Chat {
            s.started = true;
            let b = sse(&chunk(&s.meta, Some(""), true, None));
            return Some((Ok(b), s));
        }
        s.started = true;
        let out = match s.rx.recv().await {
            Some(Event::Text(t)) => sse(&chunk(&s.meta, Some(&t), false, None)),
            Some(Event::Done(o, queued)) => {
                s.done = true;
                let mut tail = vec![sse(&chunk(
                    &s.meta,
                    None,
                    false,
                    Some(o.finish.as_openai()),
                ))];
                if s.include_usage {
                    let obj = if s.meta.kind == Kind::Chat {
                        "chat.completion.chunk"
                    } else {
                        "text_completion"
                    };
                    tail.push(sse(&json!({
                        "id": s.meta.id,
                        "object": obj,
                        "created": s.meta.created,
                        "model": s.meta.model,
                        "choices": [],
                        "usage": usage(&o),
                        "timings": timings(&o, queued),
                    })));
                }
                tail.push(Bytes::from_static(b"data: [DONE]\n\n"));
                tail.reverse();
                match tail.pop() {
                    Some(first) => {
                        s.tail = tail;
                        first
                    }
                    None => return None,
                }
            }
            Some(Event::Failed(e)) => {
                s.done = true;
                s.tail = vec![Bytes::from_static(b"data: [DONE]\n\n")];
                sse(&e.body())
            }
            None => {
                s.done = true;
                s.tail = vec![Bytes::from_static(b"data: [DONE]\n\n")];
                sse(&server_error("the generation thread dropped the request".into()).body())
            }
        };
        Some((Ok(out), s))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|e| server_error(e.to_string()).into_response())
}
