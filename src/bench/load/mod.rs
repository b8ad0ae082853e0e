//! A closed-loop load runner: `concurrency` clients each send one streamed
//! request after another for a fixed time (or count), on a monotonic clock.
//!
//! As in oha, the runner is apart from what it adds up:
//! - this file: the spec, the clients' loop, the window, the report
//! - `request`: one request and what its answer says (the HTTP client)
//! - `tally`: histograms and per-studio evidence, per client, merged
//! - `summary`: one level of the results file from one or more runs

mod request;
mod summary;
mod tally;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::Value;

pub use request::{client, server_timings, worker_of};
use tally::Tally;
pub use tally::{RunEvidence, WorkerAcc};

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
    /// When the first client found nothing left to send (the count
    /// reached, or the time up): from then on the run drains, with fewer
    /// than `concurrency` requests in flight.
    pub sending: Duration,
    /// Request-seconds in flight before `sending`: over it, the
    /// concurrency the client kept up while it had requests to send.
    pub sending_busy_s: f64,
    /// Successful answers that met every [`AnswerLimits`] of the run (all
    /// of them when it had none).
    pub good: u64,
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
    /// Count the answers that meet these limits (goodput).
    pub limits: Option<AnswerLimits>,
}

/// What one answer must meet to count toward goodput.
#[derive(Clone, Copy, Debug, Default)]
pub struct AnswerLimits {
    pub ttft: Option<Duration>,
    /// Tokens per second after the first token.
    pub min_tokens_per_s: Option<f64>,
}

impl AnswerLimits {
    /// Whether an answer of `tokens` tokens, first one after `ttft`, whole
    /// after `latency`, meets the limits. An answer of one token has no
    /// streaming rate to judge.
    pub fn met(&self, ttft: Option<Duration>, tokens: u64, latency: Duration) -> bool {
        let first = ttft.unwrap_or(latency);
        if self.ttft.is_some_and(|limit| first > limit) {
            return false;
        }
        let streaming = latency.saturating_sub(first).as_secs_f64();
        match self.min_tokens_per_s {
            Some(min) if tokens > 1 && streaming > 0.0 => (tokens - 1) as f64 / streaming >= min,
            _ => true,
        }
    }
}

/// [`run_observed`] with every option.
pub async fn run_with(client: &reqwest::Client, spec: &LoadSpec, opts: RunOptions) -> LoadReport {
    let progress = opts.progress.clone();
    let gate = opts
        .max_connections
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1))));
    let named = opts.worker.clone();
    let live = opts.in_flight.clone().unwrap_or_default();
    let counters = Arc::new(Counters::new());
    let limits = opts.limits;
    let start = Instant::now();
    let window = spec.duration.map(|d| (spec.warmup.min(d), d));
    let bodies = Arc::new(bodies(spec));
    let stream = spec
        .body
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // Parsed once: reqwest takes a Url as is.
    let url = match reqwest::Url::parse(&spec.url) {
        Ok(u) => u,
        Err(e) => {
            let mut s = Tally::new();
            s.errors.push(format!("bad URL {}: {e}", spec.url));
            return report(start, &counters, window, s);
        }
    };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (client, spec, url) = (client.clone(), spec.clone(), url.clone());
        let (c, bodies, progress) = (counters.clone(), bodies.clone(), progress.clone());
        let (gate, named, live) = (gate.clone(), named.clone(), live.clone());
        let counter = WindowCounter {
            start,
            window,
            tokens: counters.window_tokens.clone(),
        };
        tasks.spawn(async move {
            let mut s = Tally::new();
            loop {
                if spec.duration.is_some_and(|d| start.elapsed() >= d) {
                    break;
                }
                if let Some(n) = spec.requests
                    && c.issued.fetch_add(1, Ordering::Relaxed) >= n
                {
                    break;
                }
                let body =
                    bodies[c.seq.fetch_add(1, Ordering::Relaxed) as usize % bodies.len()].clone();
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
                let result = request::one(&client, &spec, &url, body, stream, t0, &counter).await;
                live.fetch_sub(1, Ordering::Relaxed);
                let took = t0.elapsed();
                s.sent(sent_s, took.as_secs_f64());
                s.evidence.record(&result, named.as_deref(), sent_s, took);
                match result {
                    Ok(o) => {
                        c.ok.fetch_add(1, Ordering::Relaxed);
                        c.tokens.fetch_add(o.tokens, Ordering::Relaxed);
                        let latency = t0.elapsed();
                        if limits.is_none_or(|l| l.met(o.ttft, o.tokens, latency)) {
                            c.good.fetch_add(1, Ordering::Relaxed);
                        }
                        let in_window = counter.share(t0, latency);
                        s.answered(o, latency, in_window, named.as_deref());
                    }
                    Err(f) => {
                        c.failed.fetch_add(1, Ordering::Relaxed);
                        s.failed(f, named.as_deref());
                    }
                }
                if let Some(p) = &progress {
                    p(
                        c.ok.load(Ordering::Relaxed),
                        c.failed.load(Ordering::Relaxed),
                    );
                }
            }
            c.idle
                .fetch_min(start.elapsed().as_micros() as u64, Ordering::Relaxed);
            s.stopped(c.idle.load(Ordering::Relaxed) as f64 / 1e6);
            s
        });
    }
    let mut all = Tally::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(s) = r {
            all.merge(s);
        }
    }
    report(start, &counters, window, all)
}

/// What every client of a run adds to, read once at its end.
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    tokens: AtomicU64,
    /// Requests started (a run of `spec.requests` stops at that many).
    issued: AtomicU64,
    /// Which of the bodies the next request sends.
    seq: AtomicU64,
    /// Tokens that arrived inside the measurement window.
    window_tokens: Arc<AtomicU64>,
    /// When the first client ran out of requests (µs after the start;
    /// `u64::MAX` until one does).
    idle: AtomicU64,
    /// Answers that met the run's limits (goodput).
    good: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            window_tokens: Arc::default(),
            idle: AtomicU64::new(u64::MAX),
            good: AtomicU64::new(0),
        }
    }
}

fn report(
    start: Instant,
    c: &Counters,
    window: Option<(Duration, Duration)>,
    s: Tally,
) -> LoadReport {
    let elapsed = start.elapsed();
    LoadReport {
        sending: match c.idle.load(Ordering::Relaxed) {
            u64::MAX => elapsed,
            us => Duration::from_micros(us).min(elapsed),
        },
        sending_busy_s: s.busy_s - s.drained_s,
        elapsed,
        ok: c.ok.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        tokens: c.tokens.load(Ordering::Relaxed),
        latency_us: s.latency,
        ttft_us: s.ttft,
        tpot_us: s.tpot,
        per_worker: s.per_worker,
        per_worker_failed: s.per_worker_failed,
        approximate_tokens: s.approximate,
        window_ok: s.window_ok,
        errors: s.errors,
        window: window.map(|(a, b)| b - a).unwrap_or_default(),
        window_tokens: c.window_tokens.load(Ordering::Relaxed),
        evidence: s.evidence.ended(start.elapsed().as_secs_f64()),
        good: c.good.load(Ordering::Relaxed),
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
