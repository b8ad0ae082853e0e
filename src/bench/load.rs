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
    /// Prompts used in turn (each replaces the body's messages); empty =
    /// the body as it is.
    pub prompts: Vec<String>,
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
    /// Time per output token after the first, microseconds.
    pub tpot_us: Histogram<u64>,
    /// Successful requests per `x-baton-worker` header value.
    pub per_worker: BTreeMap<String, u64>,
    /// Failed requests per worker, where the answer named one.
    pub per_worker_failed: BTreeMap<String, u64>,
    /// Some answers carried no `usage`: token counts are counted chunks.
    pub approximate_tokens: bool,
    /// Successful requests inside the window, each counted by the fraction
    /// of its duration that fell inside (so the figure does not jump with
    /// whether a batch of answers ended just before or after the edge).
    pub window_ok: f64,
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
    /// Steady-state requests/s: completions inside the window.
    pub fn window_requests_per_second(&self) -> f64 {
        if self.window.is_zero() {
            self.requests_per_second()
        } else {
            self.window_ok / self.window.as_secs_f64()
        }
    }
}

struct Shared {
    latency: Histogram<u64>,
    ttft: Histogram<u64>,
    tpot: Histogram<u64>,
    per_worker: BTreeMap<String, u64>,
    per_worker_failed: BTreeMap<String, u64>,
    errors: Vec<String>,
    approximate: bool,
    window_ok: f64,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

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

/// Called after every request with (successes, failures) so far.
pub type Progress = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Run the load and report. Never panics on a failing endpoint: failures
/// are counted and the first messages kept.
pub async fn run(client: &reqwest::Client, spec: &LoadSpec) -> LoadReport {
    run_observed(client, spec, None).await
}

/// The request bodies to cycle through.
fn bodies(spec: &LoadSpec) -> Vec<bytes::Bytes> {
    if spec.prompts.is_empty() {
        return vec![bytes::Bytes::from(
            serde_json::to_vec(&spec.body).expect("serializable body"),
        )];
    }
    spec.prompts
        .iter()
        .map(|p| {
            let mut b = spec.body.clone();
            if b.get("prompt").is_some() {
                b["prompt"] = Value::String(p.clone());
            } else {
                b["messages"] = serde_json::json!([{"role": "user", "content": p}]);
            }
            bytes::Bytes::from(serde_json::to_vec(&b).expect("serializable body"))
        })
        .collect()
}

impl Shared {
    fn new() -> Shared {
        Shared {
            latency: histogram(),
            ttft: histogram(),
            tpot: histogram(),
            per_worker: BTreeMap::new(),
            per_worker_failed: BTreeMap::new(),
            errors: Vec::new(),
            approximate: false,
            window_ok: 0.0,
        }
    }

    fn merge(&mut self, o: Shared) {
        let _ = self.latency.add(&o.latency);
        let _ = self.ttft.add(&o.ttft);
        let _ = self.tpot.add(&o.tpot);
        for (k, v) in o.per_worker {
            *self.per_worker.entry(k).or_default() += v;
        }
        for (k, v) in o.per_worker_failed {
            *self.per_worker_failed.entry(k).or_default() += v;
        }
        for e in o.errors {
            if self.errors.len() < 10 {
                self.errors.push(e);
            }
        }
        self.approximate |= o.approximate;
        self.window_ok += o.window_ok;
    }
}

/// [`run`], reporting progress as it goes. Dropping the future stops every
/// client at once (the tasks live in a `JoinSet`). Each client keeps its
/// own histograms, merged at the end, so clients never contend on a lock.
pub async fn run_observed(
    client: &reqwest::Client,
    spec: &LoadSpec,
    progress: Option<Progress>,
) -> LoadReport {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tokens = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let window_tokens = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let window = spec.duration.map(|d| (spec.warmup.min(d), d));
    let bodies = Arc::new(bodies(spec));
    let seq = Arc::new(AtomicU64::new(0));
    let stream = spec
        .body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Parsed once: reqwest takes a Url as is.
    let url = match reqwest::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => {
            let mut s = Shared::new();
            s.errors.push(format!("bad URL {}: {e}", spec.url));
            return report(start, &ok, &failed, &tokens, &window_tokens, window, s);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (client, spec, url) = (client.clone(), spec.clone(), url.clone());
        let (ok, failed, tokens, issued, bodies, seq, progress) = (
            ok.clone(),
            failed.clone(),
            tokens.clone(),
            issued.clone(),
            bodies.clone(),
            seq.clone(),
            progress.clone(),
        );
        let counter = WindowCounter {
            start,
            window,
            tokens: window_tokens.clone(),
        };
        tasks.spawn(async move {
            let mut s = Shared::new();
            loop {
                if spec.duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                if let Some(n) = spec.requests
                    && issued.fetch_add(1, Ordering::Relaxed) >= n
                {
                    break;
                }
                let body =
                    bodies[seq.fetch_add(1, Ordering::Relaxed) as usize % bodies.len()].clone();
                let t0 = Instant::now();
                match one(&client, &spec, &url, body, stream, t0, &counter).await {
                    Ok(o) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        tokens.fetch_add(o.tokens, Ordering::Relaxed);
                        let latency = t0.elapsed();
                        let _ = s.latency.record(latency.as_micros().max(1) as u64);
                        if let Some(t) = o.ttft {
                            let _ = s.ttft.record(t.as_micros().max(1) as u64);
                            if o.tokens > 1 {
                                let per =
                                    (latency.saturating_sub(t)).as_micros() as u64 / (o.tokens - 1);
                                let _ = s.tpot.record(per.max(1));
                            }
                        }
                        s.approximate |= o.approximate;
                        s.window_ok += counter.share(t0, latency);
                        match s.per_worker.get_mut(&o.worker) {
                            Some(n) => *n += 1,
                            None => {
                                s.per_worker.insert(o.worker, 1);
                            }
                        }
                    }
                    Err((e, worker)) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Some(w) = worker {
                            *s.per_worker_failed.entry(w).or_default() += 1;
                        }
                        if s.errors.len() < 10 {
                            s.errors.push(e);
                        }
                    }
                }
                if let Some(p) = &progress {
                    p(ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
                }
            }
            s
        });
    }
    let mut all = Shared::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            all.merge(s);
        }
    }
    report(start, &ok, &failed, &tokens, &window_tokens, window, all)
}

fn report(
    start: Instant,
    ok: &AtomicU64,
    failed: &AtomicU64,
    tokens: &AtomicU64,
    window_tokens: &AtomicU64,
    window: Option<(Duration, Duration)>,
    s: Shared,
) -> LoadReport {
    LoadReport {
        elapsed: start.elapsed(),
        ok: ok.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        tokens: tokens.load(Ordering::Relaxed),
        latency_us: s.latency,
        ttft_us: s.ttft,
        tpot_us: s.tpot,
        per_worker: s.per_worker,
        per_worker_failed: s.per_worker_failed,
        approximate_tokens: s.approximate,
        window_ok: s.window_ok,
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
    /// The fraction of a request (sent at `t0`, lasting `d`) inside the window.
    fn share(&self, t0: Instant, d: Duration) -> f64 {
        let Some((from, to)) = self.window else {
            return 1.0;
        };
        let begin = t0.saturating_duration_since(self.start);
        let end = begin + d;
        let overlap = end.min(to).saturating_sub(begin.max(from));
        if d.is_zero() {
            f64::from(u8::from(begin >= from && begin < to))
        } else {
            overlap.as_secs_f64() / d.as_secs_f64()
        }
    }

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
    approximate: bool,
}

#[allow(clippy::too_many_arguments)]
async fn one(
    client: &reqwest::Client,
    spec: &LoadSpec,
    url: &reqwest::Url,
    body: bytes::Bytes,
    stream: bool,
    t0: Instant,
    counter: &WindowCounter,
) -> Result<Outcome, (String, Option<String>)> {
    let mut rb = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = &spec.api_key {
        rb = rb.bearer_auth(k);
    }
    let r = rb
        .send()
        .await
        .map_err(|e| (format!("request failed: {e}"), None))?;
    let status = r.status();
    let worker = worker_of(&r);
    let named = (worker != "-").then(|| worker.clone());
    let fail = |m: String| (m, named.clone());
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(fail(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        )));
    }
    if !stream {
        let v: Value = r
            .json()
            .await
            .map_err(|e| fail(format!("bad JSON answer: {e}")))?;
        let usage = v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64);
        return Ok(Outcome {
            tokens: usage.unwrap_or(0),
            ttft: None,
            worker,
            approximate: usage.is_none(),
        });
    }
    let mut body = r.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let (mut content_events, mut usage_tokens, mut ttft, mut done) = (0u64, None, None, false);
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| fail(format!("stream broke after {content_events} tokens: {e}")))?;
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
                serde_json::from_slice(data).map_err(|e| fail(format!("bad SSE event: {e}")))?;
            if let Some(err) = v.get("error") {
                return Err(fail(format!("error event: {err}")));
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
        return Err(fail(format!(
            "stream ended without [DONE] after {content_events} tokens"
        )));
    }
    Ok(Outcome {
        tokens: usage_tokens.unwrap_or(content_events),
        ttft,
        worker,
        approximate: usage_tokens.is_none(),
    })
}
