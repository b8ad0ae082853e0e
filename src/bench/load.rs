//! A closed-loop load runner: `concurrency` clients each send one streamed
//! request after another for a fixed time (or count), on a monotonic clock.
//! Latencies go into HDR histograms so memory stays flat for any run length.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::sync::Mutex;

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Full endpoint, e.g. `http://127.0.0.1:8421/v1/chat/completions`.
    pub url: String,
    /// Request body; `stream` decides how the answer is read.
    pub body: Value,
    pub concurrency: usize,
    /// Stop starting requests after this long...
    pub duration: Option<Duration>,
    /// ...or after this many requests in total.
    pub requests: Option<u64>,
    pub api_key: Option<String>,
    /// Tokens and completions before this point do not count toward the
    /// steady-state window figures (needs `duration`).
    pub warmup: Duration,
}

/// What one run measured.
#[derive(Debug)]
pub struct LoadReport {
    pub elapsed: Duration,
    pub ok: u64,
    pub failed: u64,
    /// Output tokens (content events, or `usage` when present).
    pub tokens: u64,
    /// End-to-end latency of successful requests, microseconds.
    pub latency_us: Histogram<u64>,
    /// Time to first non-empty content, microseconds.
    pub ttft_us: Histogram<u64>,
    /// Successful requests per `x-baton-worker` header value.
    pub per_worker: BTreeMap<String, u64>,
    /// The first few failure messages.
    pub errors: Vec<String>,
    /// Steady-state window `[warmup, duration]` (zero without a duration).
    pub window: Duration,
    /// Tokens that arrived inside the window, counted as they streamed in,
    /// so requests cut by the window edges count for what they delivered.
    pub window_tokens: u64,
}

impl LoadReport {
    pub fn requests_per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.elapsed.as_secs_f64()
    }
    /// Steady-state output tokens/s: tokens that arrived inside the window.
    /// Falls back to the whole run without a window.
    pub fn window_tokens_per_second(&self) -> f64 {
        if self.window.is_zero() {
            self.tokens_per_second()
        } else {
            self.window_tokens as f64 / self.window.as_secs_f64()
        }
    }
    /// Latency quantile in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
    pub fn mean_latency_ms(&self) -> f64 {
        self.latency_us.mean() / 1000.0
    }
}

struct Shared {
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    per_worker: BTreeMap<String, u64>,
    errors: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Run the load and report. Never panics on a failing endpoint: failures
/// are counted and the first messages kept.
pub async fn run(client: &reqwest::Client, spec: &LoadSpec) -> LoadReport {
    let shared = Arc::new(Mutex::new(Shared {
        latency: histogram(),
        ttft: histogram(),
        per_worker: BTreeMap::new(),
        errors: Vec::new(),
    }));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let window_tokens = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let window = spec.duration.map(|d| (spec.warmup.min(d), d));
    let body = Arc::new(serde_json::to_vec(&spec.body).expect("serializable body"));
    let stream = spec
        .body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut tasks = Vec::with_capacity(spec.concurrency);
    for _ in 0..spec.concurrency.max(1) {
        let (client, spec) = (client.clone(), spec.clone());
        let (shared, ok, failed, tokens, issued, body) = (
            shared.clone(),
            ok.clone(),
            failed.clone(),
            tokens.clone(),
            issued.clone(),
            body.clone(),
        );
        let counter = WindowCounter {
            start,
            window,
            tokens: window_tokens.clone(),
        };
        tasks.push(tokio::spawn(async move {
            loop {
                if spec.duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                if let Some(n) = spec.requests
                    && issued.fetch_add(1, Ordering::Relaxed) >= n
                {
                    break;
                }
                let t0 = Instant::now();
                match one(&client, &spec, &body, stream, t0, &counter).await {
                    Ok(o) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        tokens.fetch_add(o.tokens, Ordering::Relaxed);
                        let mut s = shared.lock().await;
                        let _ = s.latency.record(t0.elapsed().as_micros().max(1) as u64);
                        if let Some(t) = o.ttft {
                            let _ = s.ttft.record(t.as_micros().max(1) as u64);
                        }
                        *s.per_worker.entry(o.worker).or_default() += 1;
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut s = shared.lock().await;
                        if s.errors.len() < 10 {
                            s.errors.push(e);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let s = Arc::try_unwrap(shared)
        .ok()
        .expect("all tasks done")
        .into_inner();
    LoadReport {
        elapsed,
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        tokens: tokens.load(Ordering::Relaxed),
        latency_us: s.latency,
        ttft_us: s.ttft,
        per_worker: s.per_worker,
        errors: s.errors,
        window: window.map(|(a, b)| b - a).unwrap_or_default(),
        window_tokens: window_tokens.load(Ordering::Relaxed),
    }
}

/// Counts tokens that arrive inside the measurement window.
struct WindowCounter {
    start: Instant,
    window: Option<(Duration, Duration)>,
    tokens: Arc<AtomicU64>,
}

impl WindowCounter {
    fn token(&self) {
        if let Some((from, to)) = self.window {
            let t = self.start.elapsed();
            if t >= from && t < to {
                self.tokens.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

struct Outcome {
    tokens: u64,
    ttft: Option<Duration>,
    worker: String,
}

async fn one(
    client: &reqwest::Client,
    spec: &LoadSpec,
    body: &[u8],
    stream: bool,
    t0: Instant,
    counter: &WindowCounter,
) -> Result<Outcome, String> {
    let mut rb = client
        .post(&spec.url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(k) = &spec.api_key {
        rb = rb.bearer_auth(k);
    }
    let r = rb
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status();
    let worker = r
        .headers()
        .get("x-baton-worker")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    if !stream {
        let v: Value = r
            .json()
            .await
            .map_err(|e| format!("bad JSON answer: {e}"))?;
        let tokens = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        return Ok(Outcome {
            tokens,
            ttft: None,
            worker,
        });
    }
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let (mut content_events, mut usage_tokens, mut ttft, mut done) = (0u64, None, None, false);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| format!("stream broke after {content_events} tokens: {e}"))?;
        buf.extend_from_slice(&chunk);
        while let Some(i) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..i + 2).collect();
            let Some(data) = event.strip_prefix(b"data: ") else {
                continue;
            };
            let data = &data[..data.len() - 2];
            if data == b"[DONE]" {
                done = true;
                continue;
            }
            let v: Value =
                serde_json::from_slice(data).map_err(|e| format!("bad SSE event: {e}"))?;
            if let Some(err) = v.get("error") {
                return Err(format!("error event: {err}"));
            }
            if let Some(n) = v
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64)
            {
                usage_tokens = Some(n);
            }
            let content = v
                .pointer("/choices/0/delta/content")
                .or_else(|| v.pointer("/choices/0/text"))
                .and_then(Value::as_str);
            if content.is_some_and(|c| !c.is_empty()) {
                content_events += 1;
                counter.token();
                ttft.get_or_insert_with(|| t0.elapsed());
            }
        }
    }
    if !done {
        return Err(format!(
            "stream ended without [DONE] after {content_events} tokens"
        ));
    }
    Ok(Outcome {
        tokens: usage_tokens.unwrap_or(content_events),
        ttft,
        worker,
    })
}
