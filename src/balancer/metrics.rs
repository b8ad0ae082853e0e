//! Counters and histograms, rendered as Prometheus text (`GET /metrics`)
//! and as a JSON snapshot (`GET /stats`).

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::pool::Pool;
use super::state::{Failure, State};
use super::worker::WorkerEntry;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A fixed-bucket histogram updated with atomics (no lock on the hot path).
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Balancer-wide figures that do not belong to one worker.
#[derive(Default)]
pub struct Metrics {
    pub request_duration: Histogram,
    pub ttft: Histogram,
    /// Requests refused before reaching a worker, by reason.
    pub bad_request: AtomicU64,
    pub unknown_model: AtomicU64,
    pub no_worker: AtomicU64,
    pub unauthorized: AtomicU64,
    /// Turns sent to the studio holding their conversation's cache, and not.
    pub affinity_hits: AtomicU64,
    pub affinity_misses: AtomicU64,
}

/// What a worker's `slots` rests on.
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SlotsBasis {
    /// Learned from its answers: it ran that many at once on time, or
    /// queued beyond them.
    Measured,
    /// Not measured yet: slow start gives it at most twice what it has
    /// been seen to run, so the figure is Baton's caution, not the studio.
    SlowStart,
}

/// One worker in `GET /stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct WorkerStats {
    pub id: String,
    pub url: String,
    pub state: State,
    pub models: Vec<String>,
    /// Its models with their state (loaded or only available), size,
    /// context length and learned load time, from the studio's own API.
    #[serde(default)]
    pub inventory: Vec<super::inventory::ModelInfo>,
    /// Requests it is given at once now (learned).
    pub slots: u64,
    /// Whether `slots` is measured yet.
    pub slots_basis: SlotsBasis,
    /// The declared `max_concurrent_requests` (`None`: "auto").
    pub slots_declared: Option<u32>,
    /// The most it may be given (the declared number, or the auto ceiling).
    pub slots_ceiling: u32,
    pub in_flight: u64,
    pub requests: u64,
    pub successes: u64,
    pub client_errors: u64,
    pub cancelled: u64,
    /// Output tokens streamed (SSE data events), all answers.
    pub tokens: u64,
    pub failures: std::collections::BTreeMap<Failure, u64>,
    pub ejections: std::collections::BTreeMap<Failure, u64>,
    /// Why it was last ejected, while it is out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ejected_for: Option<Failure>,
    /// Connect timeouts forgiven because its other answers were flowing.
    pub congestion: u64,
    /// Connections opened to it, and requests retried on a fresh one after
    /// a kept-alive connection turned out closed (not failures).
    pub connections_opened: u64,
    pub stale_retries: u64,
    /// It closes connections after streamed answers (learned), so streams
    /// get fresh ones.
    pub closes_after_stream: bool,
    /// It answers HTTP while it generates (by its kind, or seen doing it):
    /// Baton's own requests (probes, model lists) may reach it while busy.
    #[serde(default)]
    pub http_concurrent: bool,
    /// APIs the studio showed it has (`yes`) or lacks (`no`), by path.
    pub capabilities: std::collections::BTreeMap<String, super::worker::Capability>,
    /// Prompt tokens per second it prefilled (0 until seen).
    pub prefill_per_second: f64,
    pub ewma_latency_ms: f64,
    pub ewma_ttft_ms: f64,
    pub tokens_per_second: f64,
    /// Fraction of all successful requests this worker served.
    pub share: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_rtt_ms: Option<f64>,
}

/// `GET /stats`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Snapshot {
    pub uptime_s: f64,
    pub queue_depth: usize,
    pub retries: u64,
    /// Requests served by a fallback model because no studio could serve
    /// the one asked for.
    #[serde(default)]
    pub fallbacks: u64,
    pub rejected_queue_full: u64,
    pub rejected_queue_timeout: u64,
    pub workers: Vec<WorkerStats>,
}

pub fn snapshot(pool: &Pool, uptime: Duration) -> Snapshot {
    let workers = pool.workers();
    let total: u64 = workers
        .iter()
        .map(|w| w.counters.successes.load(Ordering::Relaxed))
        .sum();
    Snapshot {
        uptime_s: uptime.as_secs_f64(),
        queue_depth: pool.queue_depth(),
        retries: pool.retries.load(Ordering::Relaxed),
        fallbacks: pool.fallbacks.load(Ordering::Relaxed),
        rejected_queue_full: pool.rejected_queue_full.load(Ordering::Relaxed),
        rejected_queue_timeout: pool.rejected_queue_timeout.load(Ordering::Relaxed),
        workers: workers.iter().map(|w| worker_stats(w, total)).collect(),
    }
}

fn worker_stats(w: &Arc<WorkerEntry>, total_successes: u64) -> WorkerStats {
    let c = &w.counters;
    let l = w.learned();
    let h = w.health.detail.lock().expect("health lock");
    let successes = c.successes.load(Ordering::Relaxed);
    let state = w.state();
    WorkerStats {
        id: w.id().to_string(),
        url: w.base_url.clone(),
        state,
        models: w.models(),
        inventory: w.inventory.models(),
        slots: w.slots(),
        slots_basis: if w.limit.measured() {
            SlotsBasis::Measured
        } else {
            SlotsBasis::SlowStart
        },
        slots_declared: w.cfg.max_concurrent_requests.declared(),
        slots_ceiling: w.cfg.max_concurrent_requests.ceiling(),
        in_flight: w.in_flight(),
        requests: c.requests.load(Ordering::Relaxed),
        successes,
        client_errors: c.client_errors.load(Ordering::Relaxed),
        cancelled: c.cancelled.load(Ordering::Relaxed),
        tokens: c.tokens.load(Ordering::Relaxed),
        failures: Failure::ALL.iter().map(|f| (*f, c.failure(*f))).collect(),
        ejections: Failure::ALL.iter().map(|f| (*f, c.ejections(*f))).collect(),
        ejected_for: if matches!(state, State::Ejected | State::Probing) {
            h.last_reason
        } else {
            None
        },
        congestion: c.congestion.load(Ordering::Relaxed),
        connections_opened: w.upstream.connects.load(Ordering::Relaxed),
        stale_retries: w.upstream.stale_retries.load(Ordering::Relaxed),
        closes_after_stream: w.upstream.closes_after_stream(),
        http_concurrent: w.serves_http_concurrently(),
        capabilities: w.capabilities(),
        prefill_per_second: l.prefill_per_second,
        ewma_latency_ms: l.latency_ms,
        ewma_ttft_ms: l.ttft_ms,
        tokens_per_second: l.tokens_per_second,
        share: if total_successes == 0 {
            0.0
        } else {
            successes as f64 / total_successes as f64
        },
        last_error: h.last_error.clone(),
        probe_rtt_ms: h.probe_rtt_ms,
    }
}

/// Prometheus text exposition.
pub fn render(pool: &Pool, m: &Metrics) -> String {
    let mut out = String::with_capacity(4096);
    let workers = pool.workers();
    let label = |w: &WorkerEntry| escape(w.id());

    out.push_str("# HELP baton_requests_total Requests by worker and outcome.\n# TYPE baton_requests_total counter\n");
    for w in &workers {
        let c = &w.counters;
        let id = label(w);
        let mut line = |outcome: &str, v: u64| {
            let _ = writeln!(
                out,
                "baton_requests_total{{worker=\"{id}\",outcome=\"{outcome}\"}} {v}"
            );
        };
        line("success", c.successes.load(Ordering::Relaxed));
        line("client_error", c.client_errors.load(Ordering::Relaxed));
        line("cancelled", c.cancelled.load(Ordering::Relaxed));
        for f in Failure::ALL.iter().filter(|f| **f != Failure::Probe) {
            line(f.as_str(), c.failure(*f));
        }
    }
    for (outcome, v) in [
        ("bad_request", &m.bad_request),
        ("unknown_model", &m.unknown_model),
        ("no_worker", &m.no_worker),
        ("unauthorized", &m.unauthorized),
        ("queue_full", &pool.rejected_queue_full),
        ("queue_timeout", &pool.rejected_queue_timeout),
    ] {
        let _ = writeln!(
            out,
            "baton_requests_total{{worker=\"none\",outcome=\"{outcome}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }

    out.push_str("# HELP baton_in_flight Requests holding a slot.\n# TYPE baton_in_flight gauge\n");
    for w in &workers {
        let _ = writeln!(
            out,
            "baton_in_flight{{worker=\"{}\"}} {}",
            label(w),
            w.in_flight()
        );
    }
    out.push_str("# HELP baton_slots Requests each worker is given at once (learned, under max_concurrent_requests).\n# TYPE baton_slots gauge\n");
    for w in &workers {
        let _ = writeln!(out, "baton_slots{{worker=\"{}\"}} {}", label(w), w.slots());
    }
    out.push_str(
        "# HELP baton_queue_depth Requests waiting for a slot.\n# TYPE baton_queue_depth gauge\n",
    );
    let _ = writeln!(out, "baton_queue_depth {}", pool.queue_depth());
    out.push_str("# HELP baton_worker_state 1 for the state each worker is in.\n# TYPE baton_worker_state gauge\n");
    for w in &workers {
        let now = w.state();
        for s in State::ALL {
            let _ = writeln!(
                out,
                "baton_worker_state{{worker=\"{}\",state=\"{}\"}} {}",
                label(w),
                s.as_str(),
                u8::from(now == s)
            );
        }
    }
    out.push_str("# HELP baton_ejections_total Workers taken out of rotation, by reason.\n# TYPE baton_ejections_total counter\n");
    for w in &workers {
        for f in Failure::ALL {
            let _ = writeln!(
                out,
                "baton_ejections_total{{worker=\"{}\",reason=\"{}\"}} {}",
                label(w),
                f.as_str(),
                w.counters.ejections(f)
            );
        }
    }
    out.push_str("# HELP baton_affinity_total Conversation turns sent to the studio holding their prompt cache (hit) or not (miss).\n# TYPE baton_affinity_total counter\n");
    let _ = writeln!(
        out,
        "baton_affinity_total{{outcome=\"hit\"}} {}\nbaton_affinity_total{{outcome=\"miss\"}} {}",
        m.affinity_hits.load(Ordering::Relaxed),
        m.affinity_misses.load(Ordering::Relaxed)
    );
    out.push_str("# HELP baton_retries_total Requests moved to another worker before their first byte.\n# TYPE baton_retries_total counter\n");
    let _ = writeln!(
        out,
        "baton_retries_total {}",
        pool.retries.load(Ordering::Relaxed)
    );
    m.request_duration.render(
        &mut out,
        "baton_request_duration_seconds",
        "Time from request to last byte, successful requests.",
    );
    m.ttft.render(
        &mut out,
        "baton_ttft_seconds",
        "Time from request to first byte sent to the client.",
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
