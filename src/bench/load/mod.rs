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

use super::report::{
    LevelEvidence, RequestSample, ServerSplit, ServerTimings, Stat, WorkerEvidence,
};

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
    /// Per-studio aggregates and a bounded sample of requests, for the
    /// diagnosis.
    pub evidence: RunEvidence,
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
    evidence: RunEvidence,
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
            evidence: RunEvidence::default(),
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
        self.evidence.merge(o.evidence);
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
    run_with(
        client,
        spec,
        RunOptions {
            progress,
            ..RunOptions::default()
        },
    )
    .await
}

/// What a run can do besides the spec.
#[derive(Clone, Default)]
pub struct RunOptions {
    pub progress: Option<Progress>,
    /// At most this many requests on the wire at once, whatever the
    /// concurrency, as HTTP client libraries cap their connections
    /// (aiohttp's and httpx's default is 100). A client waits for a free
    /// one before its clock starts; the wait is reported apart.
    pub max_connections: Option<usize>,
    /// Name every answer after this studio (a direct probe) instead of
    /// reading Baton's `x-baton-worker` header.
    pub worker: Option<String>,
    /// A live count of requests on the wire, for whoever samples it.
    pub in_flight: Option<Arc<AtomicU64>>,
}

/// [`run_observed`] with every option.
pub async fn run_with(client: &reqwest::Client, spec: &LoadSpec, opts: RunOptions) -> LoadReport {
    let progress = opts.progress.clone();
    let gate = opts
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    let named = opts.worker.clone();
    let live = opts.in_flight.clone().unwrap_or_default();
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
        let (gate, named, live) = (gate.clone(), named.clone(), live.clone());
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
                let waited = Instant::now();
                let _permit = match &gate {
                    Some(g) => g.clone().acquire_owned().await.ok(),
                    None => None,
                };
                let t0 = Instant::now();
                if gate.is_some() {
                    s.evidence.waited(t0 - waited);
                }
                let sent_s = (t0 - start).as_secs_f64();
                live.fetch_add(1, Ordering::Relaxed);
                let result = one(&client, &spec, &url, body, stream, t0, &counter).await;
                live.fetch_sub(1, Ordering::Relaxed);
                let took = t0.elapsed();
                s.evidence.record(&result, named.as_deref(), sent_s, took);
                match result {
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
                        let worker = named.clone().unwrap_or(o.worker);
                        match s.per_worker.get_mut(&worker) {
                            Some(n) => *n += 1,
                            None => {
                                s.per_worker.insert(worker, 1);
                            }
                        }
                    }
                    Err(f) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Some(w) = named.clone().or(f.worker) {
                            *s.per_worker_failed.entry(w).or_default() += 1;
                        }
                        if s.errors.len() < 10 {
                            s.errors.push(f.message);
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
        evidence: RunEvidence {
            elapsed_s: start.elapsed().as_secs_f64(),
            ..s.evidence
        },
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

/// A successful answer.
pub(crate) struct Outcome {
    tokens: u64,
    /// First non-empty content (streams only).
    ttft: Option<Duration>,
    /// Response headers arrived.
    headers: Duration,
    /// Last non-empty content (streams only).
    last_token: Option<Duration>,
    worker: String,
    approximate: bool,
    /// The studio's own timings, when the answer carried them.
    server: Option<ServerTimings>,
}

/// A failed request.
pub(crate) struct Failed {
    message: String,
    /// The studio, when the answer named one.
    worker: Option<String>,
    /// `connect`, `timeout`, `http_4xx`, `http_5xx`, `stream`,
    /// `error_event` or `bad_answer`.
    class: &'static str,
    headers: Option<Duration>,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A number field, if present.
fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// The studio's own timings in an answer object or chunk: llama.cpp's
/// `timings`, LM Studio's `stats` (seconds), Ollama's durations
/// (nanoseconds). `None` when the object carries none.
pub fn server_timings(v: &Value) -> Option<ServerTimings> {
    if let Some(t) = v.get("timings").filter(|t| t.is_object()) {
        let (prefill, decode) = (num(t, "prompt_ms"), num(t, "predicted_ms"));
        return Some(ServerTimings {
            source: "llama.cpp timings".into(),
            prefill_ms: prefill,
            decode_ms: decode,
            // llama.cpp counts neither the wait for a slot nor a load.
            ttft_ms: prefill,
            total_ms: prefill.zip(decode).map(|(a, b)| a + b),
            tokens_per_second: num(t, "predicted_per_second"),
            ..ServerTimings::default()
        });
    }
    if let Some(st) = v.get("stats").filter(|t| t.is_object()) {
        let ttft = num(st, "time_to_first_token").map(|s| s * 1000.0);
        let gen_ms = num(st, "generation_time").map(|s| s * 1000.0);
        return Some(ServerTimings {
            source: "LM Studio stats".into(),
            ttft_ms: ttft,
            decode_ms: gen_ms,
            total_ms: ttft.zip(gen_ms).map(|(a, b)| a + b),
            tokens_per_second: num(st, "tokens_per_second"),
            ..ServerTimings::default()
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
        return Some(ServerTimings {
            source: "Ollama durations".into(),
            queue_ms: queue,
            load_ms: load,
            prefill_ms: prefill,
            decode_ms: decode,
            ttft_ms: total.zip(decode).map(|(t, d)| (t - d).max(0.0)),
            total_ms: total,
            tokens_per_second: tps,
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
async fn one(
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
    server: Option<ServerTimings>,
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

/// How many single requests a run keeps as examples: the first few and
/// the slowest few.
const SAMPLE_FIRST: usize = 8;
const SAMPLE_SLOWEST: usize = 8;

/// A running mean.
#[derive(Clone, Copy, Debug, Default)]
struct Mean {
    sum: f64,
    n: u64,
}

impl Mean {
    fn add(&mut self, v: Option<f64>) {
        if let Some(v) = v.filter(|v| v.is_finite()) {
            self.sum += v;
            self.n += 1;
        }
    }
    fn merge(&mut self, o: Mean) {
        self.sum += o.sum;
        self.n += o.n;
    }
    fn get(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Sums of a studio's own timings.
#[derive(Clone, Debug, Default)]
struct SplitAcc {
    source: Option<String>,
    n: u64,
    queue: Mean,
    load: Mean,
    prefill: Mean,
    decode: Mean,
    ttft: Mean,
    total: Mean,
    outside: Mean,
    tps: Mean,
}

impl SplitAcc {
    fn add(&mut self, t: &ServerTimings, latency_ms: f64) {
        self.source.get_or_insert_with(|| t.source.clone());
        self.n += 1;
        self.queue.add(t.queue_ms);
        self.load.add(t.load_ms);
        self.prefill.add(t.prefill_ms);
        self.decode.add(t.decode_ms);
        self.ttft.add(t.ttft_ms);
        self.total.add(t.total_ms);
        self.outside
            .add(t.total_ms.map(|total| (latency_ms - total).max(0.0)));
        self.tps.add(t.tokens_per_second);
    }

    fn merge(&mut self, o: SplitAcc) {
        if self.source.is_none() {
            self.source = o.source;
        }
        self.n += o.n;
        self.queue.merge(o.queue);
        self.load.merge(o.load);
        self.prefill.merge(o.prefill);
        self.decode.merge(o.decode);
        self.ttft.merge(o.ttft);
        self.total.merge(o.total);
        self.outside.merge(o.outside);
        self.tps.merge(o.tps);
    }

    fn split(&self) -> Option<ServerSplit> {
        Some(ServerSplit {
            source: self.source.clone()?,
            requests: self.n,
            queue_ms: self.queue.get(),
            load_ms: self.load.get(),
            prefill_ms: self.prefill.get(),
            decode_ms: self.decode.get(),
            ttft_ms: self.ttft.get(),
            total_ms: self.total.get(),
            outside_ms: self.outside.get(),
            tokens_per_second: self.tps.get(),
        })
    }
}

/// One studio's part of a run, as it goes.
#[derive(Debug)]
pub struct WorkerAcc {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    failed_s: f64,
    tokens: u64,
    ttft: Histogram<u64>,
    latency: Histogram<u64>,
    decode_tps: Mean,
    /// (sent, TTFT ms, latency ms) of its first answer.
    first: Option<(f64, Option<f64>, f64)>,
    last_end_s: f64,
    busy_s: f64,
    server: SplitAcc,
}

impl Default for WorkerAcc {
    fn default() -> Self {
        WorkerAcc {
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            failed_s: 0.0,
            tokens: 0,
            ttft: histogram(),
            latency: histogram(),
            decode_tps: Mean::default(),
            first: None,
            last_end_s: 0.0,
            busy_s: 0.0,
            server: SplitAcc::default(),
        }
    }
}

fn stat(h: &Histogram<u64>) -> Stat {
    if h.is_empty() {
        return Stat::default();
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Stat {
        count: h.len(),
        mean: h.mean() / 1000.0,
        p50: ms(h.value_at_quantile(0.5)),
        p95: ms(h.value_at_quantile(0.95)),
        max: ms(h.max()),
    }
}

impl WorkerAcc {
    fn merge(&mut self, o: WorkerAcc) {
        self.ok += o.ok;
        self.failed += o.failed;
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.failed_s += o.failed_s;
        self.tokens += o.tokens;
        let _ = self.ttft.add(&o.ttft);
        let _ = self.latency.add(&o.latency);
        self.decode_tps.merge(o.decode_tps);
        self.first = match (self.first, o.first) {
            (Some(a), Some(b)) => Some(if b.0 < a.0 { b } else { a }),
            (a, b) => a.or(b),
        };
        self.last_end_s = self.last_end_s.max(o.last_end_s);
        self.busy_s += o.busy_s;
        self.server.merge(o.server);
    }

    /// The serializable summary.
    pub fn evidence(&self) -> WorkerEvidence {
        WorkerEvidence {
            ok: self.ok,
            failed: self.failed,
            errors: self.errors.clone(),
            failed_s: self.failed_s,
            tokens: self.tokens,
            ttft_ms: (!self.ttft.is_empty()).then(|| stat(&self.ttft)),
            latency_ms: stat(&self.latency),
            decode_tps: self.decode_tps.get(),
            first_ttft_ms: self.first.and_then(|f| f.1),
            first_latency_ms: self.first.map(|f| f.2),
            last_end_s: self.last_end_s,
            busy_s: self.busy_s,
            server: self.server.split(),
        }
    }
}

/// What a run gathers for the diagnosis: per-studio aggregates (memory
/// stays flat however long the run) and a bounded sample of requests.
#[derive(Debug, Default)]
pub struct RunEvidence {
    pub workers: BTreeMap<String, WorkerAcc>,
    first: Vec<RequestSample>,
    slowest: Vec<RequestSample>,
    /// Request-seconds in flight (all requests, failed ones included).
    pub busy_s: f64,
    wait: Mean,
    /// How long the run took, seconds.
    pub elapsed_s: f64,
}

impl RunEvidence {
    fn waited(&mut self, d: Duration) {
        self.wait.add(Some(ms(d)));
    }

    /// Book one request (sent `sent_s` after the start, lasting `took`).
    fn record(
        &mut self,
        r: &Result<Outcome, Failed>,
        named: Option<&str>,
        sent_s: f64,
        took: Duration,
    ) {
        let total_ms = ms(took);
        let end_s = sent_s + took.as_secs_f64();
        self.busy_s += took.as_secs_f64();
        let sample = match r {
            Ok(o) => {
                let worker = named.unwrap_or(&o.worker).to_string();
                let w = self.workers.entry(worker.clone()).or_default();
                w.ok += 1;
                w.tokens += o.tokens;
                w.busy_s += took.as_secs_f64();
                w.last_end_s = w.last_end_s.max(end_s);
                let _ = w.latency.record((took.as_micros() as u64).max(1));
                // Whole answers: the first token came when the studio's
                // generation started.
                let ttft_ms = o.ttft.map(ms).or_else(|| {
                    o.server
                        .as_ref()
                        .and_then(|t| t.decode_ms)
                        .map(|d| (total_ms - d).max(0.0))
                });
                if let Some(t) = ttft_ms {
                    let _ = w.ttft.record(((t * 1000.0) as u64).max(1));
                }
                let decode = match (o.ttft, o.last_token) {
                    (Some(a), Some(b)) if o.tokens > 1 && b > a => {
                        Some((o.tokens - 1) as f64 / (b - a).as_secs_f64())
                    }
                    _ => o.server.as_ref().and_then(|t| t.tokens_per_second),
                };
                w.decode_tps.add(decode);
                if w.first.is_none_or(|f| sent_s < f.0) {
                    w.first = Some((sent_s, ttft_ms, total_ms));
                }
                if let Some(t) = &o.server {
                    w.server.add(t, total_ms);
                }
                RequestSample {
                    worker,
                    sent_s,
                    headers_ms: Some(ms(o.headers)),
                    first_token_ms: o.ttft.map(ms),
                    last_token_ms: o.last_token.map(ms),
                    total_ms,
                    tokens: o.tokens,
                    error: None,
                    server: o.server.clone(),
                }
            }
            Err(f) => {
                let worker = named
                    .map(str::to_string)
                    .or_else(|| f.worker.clone())
                    .unwrap_or_else(|| "-".into());
                let w = self.workers.entry(worker.clone()).or_default();
                w.failed += 1;
                w.failed_s += took.as_secs_f64();
                w.busy_s += took.as_secs_f64();
                *w.errors.entry(f.class.to_string()).or_default() += 1;
                RequestSample {
                    worker,
                    sent_s,
                    headers_ms: f.headers.map(ms),
                    total_ms,
                    error: Some(f.class.to_string()),
                    ..RequestSample::default()
                }
            }
        };
        self.keep(sample);
    }

    fn keep(&mut self, s: RequestSample) {
        if self.first.len() < SAMPLE_FIRST {
            self.first.push(s);
        } else {
            self.keep_slow(s);
        }
    }

    fn keep_slow(&mut self, s: RequestSample) {
        if self.slowest.len() < SAMPLE_SLOWEST {
            self.slowest.push(s);
        } else if let Some((i, min)) = self
            .slowest
            .iter()
            .enumerate()
            .min_by(|a, b| a.1.total_ms.total_cmp(&b.1.total_ms))
            && s.total_ms > min.total_ms
        {
            self.slowest[i] = s;
        }
    }

    /// Add another client's (or repeat's) evidence.
    pub fn merge(&mut self, o: RunEvidence) {
        for (k, v) in o.workers {
            self.workers.entry(k).or_default().merge(v);
        }
        // The earliest requests stay the first; the rest compete as slow.
        let mut all_first: Vec<RequestSample> = self.first.drain(..).chain(o.first).collect();
        all_first.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
        let rest = all_first.split_off(all_first.len().min(SAMPLE_FIRST));
        self.first = all_first;
        for s in rest.into_iter().chain(o.slowest) {
            self.keep_slow(s);
        }
        self.busy_s += o.busy_s;
        self.wait.merge(o.wait);
        self.elapsed_s = self.elapsed_s.max(o.elapsed_s);
    }

    /// The level's evidence from the client's side (Baton's part is added
    /// by the caller). Several runs (repeats) are merged beforehand.
    pub fn level(&self, concurrency: usize, runs: usize) -> LevelEvidence {
        let elapsed = self.elapsed_s.max(1e-9);
        let mut samples: Vec<RequestSample> =
            self.first.iter().chain(&self.slowest).cloned().collect();
        samples.sort_by(|a, b| a.sent_s.total_cmp(&b.sent_s));
        LevelEvidence {
            concurrency,
            elapsed_s: self.elapsed_s * runs as f64,
            in_flight_avg: self.busy_s / (elapsed * runs.max(1) as f64),
            client_wait_ms: self.wait.get().unwrap_or(0.0),
            baton: None,
            workers: self
                .workers
                .iter()
                .map(|(k, v)| (k.clone(), v.evidence()))
                .collect(),
            balancer: BTreeMap::new(),
            samples,
        }
    }
}
