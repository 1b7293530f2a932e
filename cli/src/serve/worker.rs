//! The generation thread: takes jobs from the bounded queue in order and runs them one at a time
//! on one [`Generator`], so consecutive requests that share a prefix (a growing conversation)
//! reuse the KV cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::http::StatusCode;
use engine::kv_cache::KvType;
use engine::model::Model;
use engine::sampler::SamplerConfig;
use engine::tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use super::api::ApiError;
use super::metrics::Metrics;
use crate::gen_loop::{FinishReason, GenError, GenParams, Generator, Outcome, Prompt};

/// How often the idle thread looks at the shutdown flag.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// One queued request.
pub struct Job {
    /// The response id (`chatcmpl-N`), for the log.
    pub id: String,
    /// Prompt ids.
    pub tokens: Vec<u32>,
    /// Sampler settings.
    pub sampler: SamplerConfig,
    /// Limits, stop strings and the cancel flag.
    pub params: GenParams,
    /// Where text and the result go.
    pub events: UnboundedSender<Event>,
    /// When the request entered the queue.
    pub enqueued: Instant,
}

/// What the generation thread sends back.
pub enum Event {
    /// A piece of generated text.
    Text(String),
    /// The generation ended; with the time spent waiting in the queue.
    Done(Outcome, Duration),
    /// The generation could not run.
    Failed(ApiError),
}

/// Settings of the session.
pub struct Config {
    /// Context size (0: the model's).
    pub ctx: usize,
    /// KV element type.
    pub kv: KvType,
    /// Default sampler.
    pub defaults: SamplerConfig,
    /// Print one line per request on stderr.
    pub log: bool,
}

/// Starts the thread; returns it and the context size once the session exists.
pub fn spawn(
    model: Model,
    tok: Arc<Tokenizer>,
    cfg: Config,
    rx: Receiver<Job>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    current: Arc<Mutex<Option<Arc<AtomicBool>>>>,
) -> Result<(JoinHandle<()>, usize)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<usize, String>>();
    let handle = std::thread::Builder::new()
        .name("generate".into())
        .spawn(move || {
            let mut g = match Generator::new(&model, &tok, cfg.ctx, cfg.kv, cfg.defaults) {
                Ok(g) => g,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            metrics.ctx.store(g.ctx() as u64, Ordering::Relaxed);
            let _ = ready_tx.send(Ok(g.ctx()));
            run(&mut g, &rx, &metrics, &shutdown, &current, cfg.log);
        })
        .context("cannot start the generation thread")?;
    let ctx = ready_rx
        .recv()
        .context("the generation thread stopped before it was ready")?
        .map_err(|e| anyhow::anyhow!("cannot create the session: {e}"))?;
    Ok((handle, ctx))
}

fn run(
    g: &mut Generator<'_>,
    rx: &Receiver<Job>,
    metrics: &Metrics,
    shutdown: &AtomicBool,
    current: &Mutex<Option<Arc<AtomicBool>>>,
    log: bool,
) {
    loop {
        let job = match rx.recv_timeout(IDLE_POLL) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) if shutdown.load(Ordering::SeqCst) => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        let queued = job.enqueued.elapsed();
        if shutdown.load(Ordering::SeqCst) {
            let _ = job.events.send(Event::Failed(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )));
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let cancel = job.params.cancel.clone();
        if job.events.is_closed() || cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if let Ok(mut c) = current.lock() {
            *c = cancel;
        }
        metrics.processing.store(1, Ordering::SeqCst);
        let res = run_job(g, &job);
        if let Ok(mut c) = current.lock() {
            *c = None;
        }
        record(g, metrics, &res);
        if log {
            match &res {
                Ok(o) => eprintln!(
                    "{}: prompt {} ({} cached) {:.0} t/s | {} tokens {:.0} t/s | {} | queued {:.1} ms",
                    job.id,
                    o.prompt_tokens,
                    o.cached_tokens,
                    o.prompt_tps(),
                    o.generated(),
                    o.gen_tps(),
                    o.finish.as_openai(),
                    queued.as_secs_f64() * 1e3
                ),
                Err(e) => eprintln!("{}: {e}", job.id),
            }
        }
        metrics.processing.store(0, Ordering::SeqCst);
        let ev = match res {
            Ok(o) => Event::Done(o, queued),
            Err(e) => Event::Failed(to_api_error(e)),
        };
        let _ = job.events.send(ev);
    }
    // Answer whatever is still queued.
    while let Ok(job) = rx.try_recv() {
        metrics.queue_depth.fetch_sub(1, Ordering::SeqCst);
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(Event::Failed(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )));
    }
}

fn run_job(g: &mut Generator<'_>, job: &Job) -> Result<Outcome, GenError> {
    g.set_sampler(job.sampler.clone())?;
    let events = &job.events;
    g.generate(Prompt::Tokens(&job.tokens), &job.params, |piece| {
        events.send(Event::Text(piece.to_string())).is_ok()
    })
}

fn record(g: &Generator<'_>, m: &Metrics, res: &Result<Outcome, GenError>) {
    let s = g.session();
    m.kv_bytes
        .store(s.kv().total_bytes() as u64, Ordering::Relaxed);
    m.kv_tokens.store(s.pos() as u64, Ordering::Relaxed);
    let moe = s.moe_totals();
    m.expert_neurons.store(moe.n_neurons, Ordering::Relaxed);
    m.expert_neurons_active
        .store(moe.n_active, Ordering::Relaxed);
    m.expert_bytes_skipped
        .store(moe.bytes_skipped, Ordering::Relaxed);
    match res {
        Ok(o) => {
            m.prompt_tokens
                .fetch_add(o.prompt_evaluated() as u64, Ordering::Relaxed);
            m.prompt_tokens_cached
                .fetch_add(o.cached_tokens as u64, Ordering::Relaxed);
            m.tokens_generated
                .fetch_add(o.generated() as u64, Ordering::Relaxed);
            m.prompt_seconds.add(o.prompt_time.as_secs_f64());
            m.generation_seconds.add(o.gen_time.as_secs_f64());
            if o.prompt_evaluated() > 0 {
                m.prompt_tps.set(o.prompt_tps());
            }
            if o.generated() > 1 {
                m.generation_tps.set(o.gen_tps());
            }
            if o.finish == FinishReason::Cancelled {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
            } else {
                m.completed.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(GenError::Cancelled) => {
            m.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        Err(_) => {
            m.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn to_api_error(e: GenError) -> ApiError {
    match e {
        GenError::ContextFull { .. } => {
            ApiError::bad_request(e.to_string()).with_code("context_length_exceeded")
        }
        GenError::EmptyPrompt => ApiError::bad_request(e.to_string()),
        GenError::Cancelled => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the request was cancelled",
        ),
        GenError::Engine(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            format!("generation failed: {e}"),
        ),
    }
}
