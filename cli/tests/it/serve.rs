//! `thinker serve` over real HTTP on loopback: the built binary on an ephemeral port, a raw
//! HTTP/1.1 client. Every wait is bounded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::{self, Sse};
use crate::{FIXTURES, THINKER};

/// Longest a server may take to start or stop.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a metric may take to reach the expected value.
const METRIC_TIMEOUT: Duration = Duration::from_secs(10);
/// A request served right after a cancelled one must not wait longer than this for the
/// generation thread (the cancelled one, left alone, would need many seconds).
const PROMPT_SERVICE_MS: f64 = 2000.0;

/// A running server; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(THINKER)
            .args([
                "serve",
                "-m",
                &format!("{FIXTURES}/{model}"),
                "--port",
                "0",
                "-t",
                "1",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start thinker serve");
        let err = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        thread::spawn(move || {
            // Keep draining stderr so the server never blocks on it.
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on http://") {
                    let _ = tx.send(line[at + "listening on http://".len()..].trim().to_string());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(a) => a.parse().expect("address"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {}", log.lock().unwrap());
            }
        };
        Server {
            child,
            addr,
            stderr: log,
        }
    }

    fn tiny(extra: &[&str]) -> Server {
        Server::start("tiny-t1-gguf/tiny-t1-Q8_0.gguf", extra)
    }

    fn metrics(&self) -> HashMap<String, f64> {
        let r = http::get(self.addr, "/metrics");
        assert_eq!(r.status, 200);
        parse_metrics(&r.text())
    }

    fn metric(&self, name: &str) -> f64 {
        *self
            .metrics()
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Waits until the server's stderr contains `needle` (the reader thread appends lines as
    /// they come, possibly after the response that caused them); returns the log.
    fn wait_log(&self, needle: &str) -> String {
        let t0 = Instant::now();
        loop {
            let log = self.stderr.lock().unwrap().clone();
            if log.contains(needle) {
                return log;
            }
            assert!(
                t0.elapsed() < METRIC_TIMEOUT,
                "no '{needle}' in the log:\n{log}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `name` satisfies `ok`.
    fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(name);
            if ok(v) {
                return v;
            }
            assert!(
                t0.elapsed() < METRIC_TIMEOUT,
                "{name} stayed at {v}; log:\n{}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses the Prometheus text format strictly: every sample has a `# TYPE`, every value is a
/// number. Keys are `name` or `name{labels}`.
fn parse_metrics(page: &str) -> HashMap<String, f64> {
    let mut typed = std::collections::HashSet::new();
    let mut out = HashMap::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let name = it.next().unwrap();
            let kind = it.next().unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample line");
        let name = key.split('{').next().unwrap();
        assert!(typed.contains(name), "{name} has no TYPE line");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(key.to_string(), v);
    }
    out
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({"model": "tiny", "messages": [{"role": "user", "content": content}]});
    if let (Some(o), Value::Object(e)) = (b.as_object_mut(), extra) {
        o.extend(e);
    }
    b
}

/// A generation that runs for seconds unless cancelled.
fn long_stream(s: &Server, max_tokens: usize) -> Sse {
    let sse = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": true, "stream": true}),
    );
    assert_eq!(sse.status, 200, "{}", String::from_utf8_lossy(&sse.body));
    sse
}

fn error_of(r: &http::Resp) -> Value {
    let v = r.json();
    let e = v["error"].clone();
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    e
}

#[test]
fn health_models_metrics_and_404() {
    let s = Server::tiny(&[]);
    let r = http::get(s.addr, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");

    let r = http::get(s.addr, "/v1/models");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny-t1-Q8_0.gguf");
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["meta"]["n_ctx"], 4096);

    let r = http::get(s.addr, "/metrics");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let m = parse_metrics(&r.text());
    for name in [
        "thinker_requests_total",
        "thinker_tokens_generated_total",
        "thinker_prompt_tokens_total",
        "thinker_generation_tokens_per_second",
        "thinker_prompt_tokens_per_second",
        "thinker_queue_depth",
        "thinker_kv_cache_bytes",
        "thinker_requests_rejected_total{reason=\"queue_full\"}",
        "thinker_peak_rss_bytes",
    ] {
        assert!(m.contains_key(name), "{name} missing");
    }
    assert_eq!(m["thinker_requests_total"], 0.0);
    assert!(m["thinker_peak_rss_bytes"] > 1e6);

    let r = http::get(s.addr, "/v2/nothing");
    assert_eq!(r.status, 404);
    error_of(&r);
}

#[test]
fn chat_and_text_completions() {
    let s = Server::tiny(&["--max-tokens", "64"]);
    let body = chat_body("Hello there", json!({"max_tokens": 12, "temperature": 0}));
    let r = http::post(s.addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["model"], "tiny");
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    let content = c["message"]["content"].as_str().unwrap().to_string();
    let finish = c["finish_reason"].as_str().unwrap();
    assert!(["stop", "length"].contains(&finish), "{finish}");
    let u = &v["usage"];
    let (pt, ct) = (
        u["prompt_tokens"].as_u64().unwrap(),
        u["completion_tokens"].as_u64().unwrap(),
    );
    assert!(pt > 5, "{u}");
    assert!((1..=12).contains(&ct), "{u}");
    assert_eq!(u["total_tokens"].as_u64().unwrap(), pt + ct);
    if finish == "length" {
        assert_eq!(ct, 12);
    }
    let t = &v["timings"];
    assert_eq!(t["predicted_n"].as_u64().unwrap(), ct);
    assert!(t["prompt_per_second"].as_f64().unwrap() > 0.0, "{t}");
    assert!(t["predicted_ms"].as_f64().is_some());

    // Greedy: the same request gives the same answer (and now reuses nothing it must not).
    let again = http::post(s.addr, "/v1/chat/completions", &body).json();
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str());

    // Text completion, from text and from token ids.
    let r = http::post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "The cat", "max_tokens": 5, "ignore_eos": true, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert!(v["choices"][0]["text"].is_string());
    let r = http::post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": [455, 79, 487, 395], "max_tokens": 3, "ignore_eos": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["prompt_tokens"], 4);

    // A conversation that goes on reuses the KV cache of the previous request.
    let first = http::post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": [455, 79, 487, 395, 70, 112], "max_tokens": 1}),
    )
    .json();
    assert_eq!(first["timings"]["cache_n"], 0);
    let next = http::post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": [455, 79, 487, 395, 70, 112, 275, 173], "max_tokens": 1}),
    )
    .json();
    assert_eq!(next["timings"]["cache_n"], 6, "{next}");
    assert_eq!(next["usage"]["prompt_tokens_details"]["cached_tokens"], 6);

    s.wait_log("cmpl-6: prompt 8 (6 cached)");
    let m = s.metrics();
    assert_eq!(m["thinker_requests_total"], 6.0);
    assert_eq!(
        m["thinker_requests_finished_total{outcome=\"completed\"}"],
        6.0
    );
    assert!(m["thinker_tokens_generated_total"] >= 12.0);
    assert!(m["thinker_kv_cache_bytes"] > 0.0);
}

#[test]
fn sse_streaming_matches_the_whole_answer() {
    let s = Server::tiny(&[]);
    let body = chat_body(
        "Tell me a story",
        json!({"max_tokens": 24, "temperature": 0}),
    );
    let whole = http::post(s.addr, "/v1/chat/completions", &body).json();
    let want = whole["choices"][0]["message"]["content"].as_str().unwrap();

    let mut b = body.clone();
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    let sse = Sse::open(s.addr, "/v1/chat/completions", &b);
    assert_eq!(sse.status, 200);
    let ct = sse
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone());
    assert_eq!(ct.as_deref(), Some("text/event-stream"));
    let events = sse.collect();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(u) = c.get("usage") {
            usage = Some(u.clone());
            continue;
        }
        let ch = &c["choices"][0];
        if let Some(t) = ch["delta"]["content"].as_str() {
            text.push_str(t);
        }
        if let Some(f) = ch["finish_reason"].as_str() {
            assert!(finish.is_none(), "two finish reasons");
            finish = Some(f.to_string());
        }
    }
    assert_eq!(text, want);
    assert_eq!(
        finish.as_deref(),
        whole["choices"][0]["finish_reason"].as_str()
    );
    let usage = usage.expect("usage chunk");
    assert_eq!(
        usage["completion_tokens"],
        whole["usage"]["completion_tokens"]
    );
    assert!(chunks.len() >= 3);

    // Text completions stream too.
    let events = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "abc", "max_tokens": 4, "ignore_eos": true, "stream": true}),
    )
    .collect();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["object"], "text_completion");
    assert_eq!(last["choices"][0]["finish_reason"], "length");
}

#[test]
fn concurrent_requests_complete_in_fifo_order() {
    let s = Server::tiny(&["--queue", "8", "--ctx", "16384", "--max-tokens", "16000"]);
    // Several at once: all complete.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let addr = s.addr;
            thread::spawn(move || {
                http::post(
                    addr,
                    "/v1/chat/completions",
                    &chat_body(&format!("question {i}"), json!({"max_tokens": 16})),
                )
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Order: hold the generation thread with a long stream, queue three, then let go.
    let mut a = long_stream(&s, 16000);
    assert!(a.next_data().is_some());
    s.wait_metric("thinker_requests_processing", |v| v == 1.0);
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    for i in 0..3 {
        let addr = s.addr;
        let tx = tx.clone();
        handles.push(thread::spawn(move || {
            let r = http::post(
                addr,
                "/v1/completions",
                // Long enough (~100 ms) that thread scheduling cannot reorder the finishes.
                &json!({"prompt": format!("queued {i}"), "max_tokens": 400, "ignore_eos": true}),
            );
            tx.send(i).unwrap();
            r
        }));
        s.wait_metric("thinker_queue_depth", |v| v == (i + 1) as f64);
    }
    drop(a); // the client goes away: cancelled, the queue moves on
    let order: Vec<i32> = (0..3)
        .map(|_| {
            rx.recv_timeout(METRIC_TIMEOUT)
                .expect("queued request finished")
        })
        .collect();
    assert_eq!(order, vec![0, 1, 2]);
    let ids: Vec<u64> = handles
        .into_iter()
        .map(|h| {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            let v = r.json();
            v["id"].as_str().unwrap()[5..].parse().unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    s.wait_metric(
        "thinker_requests_finished_total{outcome=\"cancelled\"}",
        |v| v == 1.0,
    );
}

#[test]
fn full_queue_answers_429() {
    let s = Server::tiny(&["--queue", "1", "--ctx", "16384", "--max-tokens", "16000"]);
    let mut a = long_stream(&s, 16000);
    assert!(a.next_data().is_some());
    s.wait_metric("thinker_requests_processing", |v| v == 1.0);
    let addr = s.addr;
    let b = thread::spawn(move || {
        http::post(
            addr,
            "/v1/chat/completions",
            &chat_body("waiting", json!({"max_tokens": 4})),
        )
    });
    s.wait_metric("thinker_queue_depth", |v| v == 1.0);
    let c = http::post(
        s.addr,
        "/v1/chat/completions",
        &chat_body("too many", json!({})),
    );
    assert_eq!(c.status, 429, "{}", c.text());
    assert_eq!(c.header("retry-after"), Some("1"));
    let e = error_of(&c);
    assert_eq!(e["code"], "queue_full");
    // Streaming requests are refused the same way, before any event.
    let sse = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "x", "stream": true}),
    );
    assert_eq!(sse.status, 429);
    assert_eq!(
        s.metric("thinker_requests_rejected_total{reason=\"queue_full\"}"),
        2.0
    );
    drop(a);
    let b = b.join().unwrap();
    assert_eq!(b.status, 200, "{}", b.text());
}

#[test]
fn invalid_requests_get_clear_400s() {
    let s = Server::tiny(&["--max-tokens", "64", "--max-prompt-tokens", "32"]);
    let raw = |body: &[u8]| http::request(s.addr, "POST", "/v1/chat/completions", Some(body));
    let r = raw(b"{\"messages\": [");
    assert_eq!(r.status, 400);
    assert!(
        error_of(&r)["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON")
    );
    let r = raw(b"");
    assert_eq!(r.status, 400);
    let r = raw(b"[1, 2]");
    assert_eq!(r.status, 400);

    let cases = [
        (json!({}), "messages"),
        (json!({"messages": "hi"}), "messages"),
        (
            json!({"messages": [{"role": "user", "content": 3}]}),
            "messages[0]",
        ),
        (chat_body("x", json!({"temperature": 2.5})), "temperature"),
        (
            chat_body("x", json!({"temperature": "warm"})),
            "temperature",
        ),
        (chat_body("x", json!({"max_tokens": 65})), "max_tokens"),
        (chat_body("x", json!({"stream": 1})), "stream"),
        (chat_body("x", json!({"stop": [1, 2]})), "stop"),
        (chat_body(&"word ".repeat(200), json!({})), "messages"),
    ];
    for (body, param) in cases {
        let r = http::post(s.addr, "/v1/chat/completions", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let e = error_of(&r);
        assert_eq!(e["param"], param, "{body}: {e}");
    }
    let long = http::post(
        s.addr,
        "/v1/chat/completions",
        &chat_body(&"word ".repeat(200), json!({})),
    );
    assert_eq!(error_of(&long)["code"], "context_length_exceeded");
    let r = http::post(s.addr, "/v1/completions", &json!({"prompt": [1, 99999]}));
    assert_eq!(r.status, 400);
    assert_eq!(error_of(&r)["param"], "prompt");
    let m = s.metrics();
    assert_eq!(m["thinker_requests_total"], 0.0);
    assert_eq!(
        m["thinker_requests_rejected_total{reason=\"invalid\"}"],
        14.0
    );
}

#[test]
fn oversized_body_gets_413() {
    let s = Server::tiny(&["--max-body-bytes", "4096"]);
    let big = chat_body(&"x".repeat(64 * 1024), json!({}));
    let r = http::post(s.addr, "/v1/chat/completions", &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(error_of(&r)["code"], "body_too_large");
    // Just under the limit is fine.
    let ok = http::post(
        s.addr,
        "/v1/chat/completions",
        &chat_body(&"y".repeat(100), json!({"max_tokens": 2})),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn client_disconnect_cancels_generation() {
    const LONG: usize = 16000;
    let s = Server::tiny(&["--ctx", "16384", "--max-tokens", "16000"]);
    let mut a = long_stream(&s, LONG);
    for _ in 0..3 {
        assert!(a.next_data().is_some());
    }
    drop(a);
    s.wait_metric(
        "thinker_requests_finished_total{outcome=\"cancelled\"}",
        |v| v == 1.0,
    );
    let generated = s.metric("thinker_tokens_generated_total");
    assert!(generated < LONG as f64, "generated {generated}");
    assert_eq!(s.metric("thinker_requests_processing"), 0.0);
    // The next request is served at once.
    let t0 = Instant::now();
    let r = http::post(
        s.addr,
        "/v1/chat/completions",
        &chat_body("next", json!({"max_tokens": 4})),
    );
    assert_eq!(r.status, 200);
    let queue_ms = r.json()["timings"]["queue_ms"].as_f64().unwrap();
    assert!(queue_ms < PROMPT_SERVICE_MS, "waited {queue_ms} ms");
    assert!(t0.elapsed() < Duration::from_millis(PROMPT_SERVICE_MS as u64));
}

#[test]
fn non_streaming_client_hanging_up_cancels_too() {
    const LONG: usize = 16000;
    let s = Server::tiny(&["--ctx", "16384", "--max-tokens", "16000"]);
    http::send_and_hang_up(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": LONG, "ignore_eos": true}),
        Duration::from_millis(200),
    );
    s.wait_metric(
        "thinker_requests_finished_total{outcome=\"cancelled\"}",
        |v| v == 1.0,
    );
    let generated = s.metric("thinker_tokens_generated_total");
    assert!(generated < LONG as f64, "generated {generated}");
    assert_eq!(
        s.metric("thinker_requests_finished_total{outcome=\"completed\"}"),
        0.0
    );
}

#[test]
fn ctrl_c_shuts_down_gracefully() {
    let mut s = Server::tiny(&["--ctx", "16384", "--max-tokens", "16000"]);
    let mut a = long_stream(&s, 16000);
    assert!(a.next_data().is_some());
    let status = Command::new("kill")
        .args(["-INT", &s.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    // The stream in flight is ended (cancelled), not cut off mid-event.
    let rest = a.collect();
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let t0 = Instant::now();
    let code = loop {
        if let Some(c) = s.child.try_wait().unwrap() {
            break c;
        }
        assert!(t0.elapsed() < START_TIMEOUT, "server did not stop");
        thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
    s.wait_log("shutting down");
}

#[test]
fn binds_loopback_by_default() {
    let s = Server::tiny(&[]);
    assert!(s.addr.ip().is_loopback(), "{}", s.addr);
}

#[test]
fn hf_directory_model_serves() {
    let s = Server::start("tiny-t1", &[]);
    let r = http::post(
        s.addr,
        "/v1/chat/completions",
        &chat_body("hi", json!({"max_tokens": 3})),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        http::get(s.addr, "/v1/models").json()["data"][0]["id"],
        "tiny-t1"
    );
}
