//! One request and what its answer says: send it, read a whole answer or
//! a stream (SSE or Ollama's NDJSON) event by event, time its first and
//! last token, and pick up the studio's own timings where it reports them.
//! The runner (`load`) repeats it; the tallies (`tally`) book it.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;

use super::{LoadSpec, WindowCounter};
use crate::bench::report::TimeSplit;

/// An HTTP client tuned for load generation: no redirects or retries (a
/// benchmark must see what the server does), keep-alive for every client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .http1_only()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
        .expect("HTTP client")
}

/// The worker an answer names in Baton's `x-baton-worker` header, or `-`.
pub fn worker_of(r: &reqwest::Response) -> String {
    r.headers()
        .get(crate::balancer::WORKER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// A successful answer.
pub(super) struct Outcome {
    pub(super) tokens: u64,
    /// First non-empty content (streams only).
    pub(super) ttft: Option<Duration>,
    /// Response headers arrived.
    pub(super) headers: Duration,
    /// Last non-empty content (streams only).
    pub(super) last_token: Option<Duration>,
    pub(super) worker: String,
    pub(super) approximate: bool,
    /// The studio's own timings, when the answer carried them.
    pub(super) server: Option<TimeSplit>,
}

/// A failed request.
pub(super) struct Failed {
    pub(super) message: String,
    /// The studio, when the answer named one.
    pub(super) worker: Option<String>,
    /// `connect`, `timeout`, `http_4xx`, `http_5xx`, `stream`,
    /// `error_event` or `bad_answer`.
    pub(super) class: &'static str,
    pub(super) headers: Option<Duration>,
}

fn classify(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "stream"
    }
}

/// An error with its causes (`connection refused`, `timed out`...).
fn chain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s = format!("{s}: {t}");
        }
        src = x.source();
    }
    s
}

/// A number field, if present.
fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// The studio's own timings in an answer object or chunk: llama.cpp's
/// `timings`, LM Studio's `stats` (seconds), Ollama's durations
/// (nanoseconds). `None` when the object carries none.
pub fn server_timings(v: &Value) -> Option<TimeSplit> {
    if let Some(t) = v.get("timings").filter(|t| t.is_object()) {
        let (prefill, decode) = (num(t, "prompt_ms"), num(t, "predicted_ms"));
        return Some(TimeSplit {
            source: Some("llama.cpp timings".into()),
            prefill_ms: prefill,
            decode_ms: decode,
            // llama.cpp counts neither the wait for a slot nor a load.
            ttft_ms: prefill,
            total_ms: prefill.zip(decode).map(|(a, b)| a + b),
            tokens_per_second: num(t, "predicted_per_second"),
            ..TimeSplit::default()
        });
    }
    if let Some(st) = v.get("stats").filter(|t| t.is_object()) {
        let ttft = num(st, "time_to_first_token").map(|s| s * 1000.0);
        let gen_ms = num(st, "generation_time").map(|s| s * 1000.0);
        return Some(TimeSplit {
            source: Some("LM Studio stats".into()),
            ttft_ms: ttft,
            decode_ms: gen_ms,
            total_ms: ttft.zip(gen_ms).map(|(a, b)| a + b),
            tokens_per_second: num(st, "tokens_per_second"),
            ..TimeSplit::default()
        });
    }
    if v.get("total_duration").is_some() && v.get("eval_duration").is_some() {
        let ns = |k: &str| num(v, k).map(|n| n / 1e6);
        let (total, load, prefill, decode) = (
            ns("total_duration"),
            ns("load_duration"),
            ns("prompt_eval_duration"),
            ns("eval_duration"),
        );
        // Ollama's total runs from arrival: what its phases leave is the
        // wait for the model runner.
        let queue = match (total, load, prefill, decode) {
            (Some(t), l, p, Some(d)) => {
                Some((t - l.unwrap_or(0.0) - p.unwrap_or(0.0) - d).max(0.0))
            }
            _ => None,
        };
        let tps = match (num(v, "eval_count"), decode) {
            (Some(n), Some(d)) if d > 0.0 => Some(n / (d / 1000.0)),
            _ => None,
        };
        return Some(TimeSplit {
            source: Some("Ollama durations".into()),
            queue_ms: queue,
            load_ms: load,
            prefill_ms: prefill,
            decode_ms: decode,
            ttft_ms: total.zip(decode).map(|(t, d)| (t - d).max(0.0)),
            total_ms: total,
            tokens_per_second: tps,
            ..TimeSplit::default()
        });
    }
    None
}

/// Content text of an OpenAI chunk or an Ollama line.
fn content_of(v: &Value) -> Option<&str> {
    v.pointer("/choices/0/delta/content")
        .or_else(|| v.pointer("/choices/0/text"))
        .or_else(|| v.pointer("/message/content"))
        .or_else(|| v.get("response"))
        .and_then(Value::as_str)
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn one(
    client: &reqwest::Client,
    spec: &LoadSpec,
    url: &reqwest::Url,
    body: bytes::Bytes,
    stream: bool,
    t0: Instant,
    counter: &WindowCounter,
) -> Result<Outcome, Failed> {
    let mut rb = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = &spec.api_key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.send().await.map_err(|e| Failed {
        message: format!("request failed: {}", chain(&e)),
        worker: None,
        class: classify(&e),
        headers: None,
    })?;
    let headers = t0.elapsed();
    let status = r.status();
    let worker = worker_of(&r);
    let named = (worker != "-").then(|| worker.clone());
    let fail = |m: String, class: &'static str| Failed {
        message: m,
        worker: named.clone(),
        class,
        headers: Some(headers),
    };
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        let class = if status.is_server_error() {
            "http_5xx"
        } else {
            "http_4xx"
        };
        return Err(fail(
            format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ),
            class,
        ));
    }
    let ndjson = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-ndjson"));
    if !stream && !ndjson {
        let v: Value = r
            .json()
            .await
            .map_err(|e| fail(format!("bad JSON answer: {e}"), "bad_answer"))?;
        if let Some(err) = v.get("error") {
            return Err(fail(format!("error answer: {err}"), "error_event"));
        }
        let usage = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .or_else(|| v.get("eval_count").and_then(Value::as_u64));
        return Ok(Outcome {
            tokens: usage.unwrap_or(0),
            ttft: None,
            headers,
            last_token: None,
            worker,
            approximate: usage.is_none(),
            server: server_timings(&v),
        });
    }
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut rd = Reading::default();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            fail(
                format!("stream broke after {} tokens: {e}", rd.content_events),
                "stream",
            )
        })?;
        buf.extend_from_slice(&chunk);
        if ndjson {
            while let Some(i) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..i + 1).collect();
                let line = line.trim_ascii();
                if !line.is_empty() {
                    rd.event(line, true, t0, counter)
                        .map_err(|(m, c)| fail(m, c))?;
                }
            }
            continue;
        }
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let ev: Vec<u8> = buf.drain(..i + 2).collect();
            let Some(data) = ev.strip_prefix(b"data: ") else {
                continue;
            };
            rd.event(&data[..data.len() - 2], false, t0, counter)
                .map_err(|(m, c)| fail(m, c))?;
        }
    }
    if !rd.done {
        return Err(fail(
            format!(
                "stream ended without [DONE] after {} tokens",
                rd.content_events
            ),
            "stream",
        ));
    }
    Ok(Outcome {
        tokens: rd.usage_tokens.unwrap_or(rd.content_events),
        ttft: rd.ttft,
        headers,
        last_token: rd.last_token,
        worker,
        approximate: rd.usage_tokens.is_none(),
        server: rd.server,
    })
}

/// What a streamed answer has told so far.
#[derive(Default)]
struct Reading {
    content_events: u64,
    usage_tokens: Option<u64>,
    ttft: Option<Duration>,
    last_token: Option<Duration>,
    server: Option<TimeSplit>,
    done: bool,
}

impl Reading {
    /// One event: an SSE `data:` payload or an NDJSON line.
    fn event(
        &mut self,
        data: &[u8],
        ndjson: bool,
        t0: Instant,
        counter: &WindowCounter,
    ) -> Result<(), (String, &'static str)> {
        if data == b"[DONE]" {
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_slice(data)
            .map_err(|e| (format!("bad stream event: {e}"), "bad_answer"))?;
        if let Some(err) = v.get("error") {
            return Err((format!("error event: {err}"), "error_event"));
        }
        if let Some(n) = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
        {
            self.usage_tokens = Some(n);
        }
        if let Some(t) = server_timings(&v) {
            self.server = Some(t);
        }
        if content_of(&v).is_some_and(|c| !c.is_empty()) {
            self.content_events += 1;
            counter.token();
            let now = t0.elapsed();
            self.ttft.get_or_insert(now);
            self.last_token = Some(now);
        }
        // Ollama's last line says `done` and counts the tokens.
        if ndjson && v.get("done").and_then(Value::as_bool) == Some(true) {
            if let Some(n) = v.get("eval_count").and_then(Value::as_u64) {
                self.usage_tokens = Some(n);
            }
            self.done = true;
        }
        Ok(())
    }
}
