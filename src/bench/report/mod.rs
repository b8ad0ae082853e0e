//! The results file. Names follow the user's `benchmark.py`, so their `jq`
//! lines keep working: `.concurrency_benchmark[] | {concurrency,
//! requests_per_second, success_rate}` and `.worker_scaling_benchmark[] |
//! {workers, requests_per_second, speedup, scaling_efficiency}`.
//! Times are in seconds, rates per second, shares and rates in percent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::load::LoadReport;

/// A whole benchmark run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BenchResult {
    pub baton_version: String,
    /// Unix seconds.
    pub started_at: u64,
    pub finished_at: u64,
    /// Stopped by Ctrl-C: only finished levels are present.
    pub interrupted: bool,
    pub mode: String,
    /// `balancer` (Baton in process over the workers file) or `url`.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub settings: Settings,
    /// The workers benchmarked (the file's, minus any excluded).
    #[serde(default)]
    pub config: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightSummary>,
    pub host: HostFacts,
    #[serde(default)]
    pub concurrency_benchmark: Vec<Level>,
    #[serde(default)]
    pub worker_scaling_benchmark: Vec<ScalingLevel>,
    /// What the diagnosis reads besides the tables: per-studio probes,
    /// per-level and per-studio timings, the balancer's counters. Absent in
    /// runs recorded before Baton kept it (they are diagnosed from the
    /// tables alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    /// What went wrong and what to change (`baton diagnose` recomputes it
    /// from the evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<super::diagnose::Diagnosis>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub model: String,
    pub max_tokens: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    pub warmup_requests: u64,
    pub repeat: u32,
    pub concurrency_levels: Vec<usize>,
    pub worker_counts: Vec<usize>,
    pub prompts: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PreflightSummary {
    pub status: String,
    pub failed_workers: Vec<String>,
    pub excluded_workers: Vec<String>,
    pub skipped: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HostFacts {
    pub os: String,
    pub arch: String,
    pub cpus: usize,
    pub memory_gb: f64,
}

impl HostFacts {
    pub fn here() -> HostFacts {
        let total = sysinfo::System::new()
            .map(|mut s| {
                s.refresh_memory();
                s.total_memory()
            })
            .unwrap_or(0);
        HostFacts {
            os: std::env::consts::OS.to_string(),
            arch: std::env::consts::ARCH.to_string(),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_gb: total as f64 / 1e9,
        }
    }
}

/// Host load while a level ran (sampled every half second).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostUsage {
    pub cpu_avg_percent: f64,
    pub cpu_max_percent: f64,
    pub memory_used_gb: f64,
    /// Baton's own process (client and in-process balancer), as a share of
    /// the whole machine (100 = every core busy): what says the measuring
    /// machine, not the pool, was the limit. Other programs' load is in
    /// `cpu_avg_percent`.
    #[serde(default)]
    pub process_cpu_avg_percent: f64,
}

/// One worker's part of a level.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerShare {
    pub requests: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub load_percentage: f64,
}

/// Little's law: concurrency = throughput x latency. When the measured
/// product falls well short of the configured concurrency, requests sat in
/// the client, not the server, and the figures understate the server.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LittlesLaw {
    pub effective_concurrency: f64,
    pub ratio: f64,
    pub client_bound: bool,
}

/// One concurrency level.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Level {
    pub concurrency: usize,
    pub requests: u64,
    pub successful_requests: u64,
    pub failed_requests: u64,
    pub duration_s: f64,
    pub requests_per_second: f64,
    pub success_rate: f64,
    pub avg_response_time: f64,
    pub p50_response_time: f64,
    pub p95_response_time: f64,
    pub p99_response_time: f64,
    pub ttft_avg: f64,
    pub ttft_p50: f64,
    pub ttft_p95: f64,
    pub tpot_avg: f64,
    pub output_tokens_per_second: f64,
    /// No `usage` in some answers: tokens were counted from chunks.
    pub tokens_approximate: bool,
    pub worker_stats: BTreeMap<String, WorkerShare>,
    pub littles_law: LittlesLaw,
    pub host_usage: HostUsage,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Requests/s of each repeat when `--repeat` > 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repeats_rps: Vec<f64>,
}

/// One worker count of the scaling sweep.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScalingLevel {
    pub workers: usize,
    pub worker_ids: Vec<String>,
    pub concurrency: usize,
    pub requests_per_second: f64,
    pub speedup: f64,
    pub scaling_efficiency: f64,
    pub throughput_per_worker: f64,
    pub output_tokens_per_second: f64,
    pub success_rate: f64,
    pub avg_response_time: f64,
    pub p95_response_time: f64,
    pub worker_stats: BTreeMap<String, WorkerShare>,
}

fn secs(us: f64) -> f64 {
    us / 1e6
}

impl Level {
    /// Summarise one (or several repeated) load runs at `concurrency`.
    pub fn from_runs(concurrency: usize, runs: &[LoadReport], host_usage: HostUsage) -> Level {
        let ok: u64 = runs.iter().map(|r| r.ok).sum();
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        let total = ok + failed;
        // Rates are steady-state (window) figures, averaged over repeats.
        let n = runs.len().max(1) as f64;
        let rps = runs
            .iter()
            .map(LoadReport::window_requests_per_second)
            .sum::<f64>()
            / n;
        let tps = runs
            .iter()
            .map(LoadReport::window_tokens_per_second)
            .sum::<f64>()
            / n;
        let mut latency = runs[0].latency_us.clone();
        let mut ttft = runs[0].ttft_us.clone();
        let mut tpot = runs[0].tpot_us.clone();
        for r in &runs[1..] {
            let _ = latency.add(&r.latency_us);
            let _ = ttft.add(&r.ttft_us);
            let _ = tpot.add(&r.tpot_us);
        }
        let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                secs(h.value_at_quantile(q) as f64)
            }
        };
        let mean =
            |h: &hdrhistogram::Histogram<u64>| if h.is_empty() { 0.0 } else { secs(h.mean()) };
        let mut per_worker: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in runs {
            for (w, c) in &r.per_worker {
                per_worker.entry(w.clone()).or_default().0 += c;
            }
            for (w, c) in &r.per_worker_failed {
                per_worker.entry(w.clone()).or_default().1 += c;
            }
        }
        let worker_stats = shares(&per_worker, ok);
        let avg = mean(&latency);
        let effective = rps * avg;
        let ratio = if concurrency == 0 {
            0.0
        } else {
            effective / concurrency as f64
        };
        let mut errors: Vec<String> = runs.iter().flat_map(|r| r.errors.iter().cloned()).collect();
        errors.truncate(5);
        Level {
            concurrency,
            requests: total,
            successful_requests: ok,
            failed_requests: failed,
            duration_s: runs.iter().map(|r| r.elapsed.as_secs_f64()).sum(),
            requests_per_second: rps,
            success_rate: if total == 0 {
                0.0
            } else {
                100.0 * ok as f64 / total as f64
            },
            avg_response_time: avg,
            p50_response_time: q(&latency, 0.5),
            p95_response_time: q(&latency, 0.95),
            p99_response_time: q(&latency, 0.99),
            ttft_avg: mean(&ttft),
            ttft_p50: q(&ttft, 0.5),
            ttft_p95: q(&ttft, 0.95),
            tpot_avg: mean(&tpot),
            output_tokens_per_second: tps,
            tokens_approximate: runs.iter().any(|r| r.approximate_tokens),
            worker_stats,
            littles_law: LittlesLaw {
                effective_concurrency: effective,
                ratio,
                // Queueing inside Baton counts as latency, so a healthy run
                // sits near 1.0; well below means the client held requests.
                client_bound: ok > 0 && ratio < 0.8,
            },
            host_usage,
            errors,
            repeats_rps: if runs.len() > 1 {
                runs.iter()
                    .map(LoadReport::window_requests_per_second)
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Per-worker success counts and shares of the successful requests.
pub fn shares(per_worker: &BTreeMap<String, (u64, u64)>, ok: u64) -> BTreeMap<String, WorkerShare> {
    per_worker
        .iter()
        .map(|(w, (done, failed))| {
            let all = done + failed;
            (
                w.clone(),
                WorkerShare {
                    requests: all,
                    failed: *failed,
                    success_rate: if all == 0 {
                        0.0
                    } else {
                        100.0 * *done as f64 / all as f64
                    },
                    load_percentage: if ok == 0 {
                        0.0
                    } else {
                        100.0 * *done as f64 / ok as f64
                    },
                },
            )
        })
        .collect()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything measured for the diagnosis, kept small: aggregates per studio
/// and level, and a bounded sample of single requests.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Evidence {
    /// Every studio of the pool, as configured and as preflight saw it
    /// (excluded ones included).
    #[serde(default)]
    pub studios: Vec<StudioFacts>,
    /// Each studio measured alone, directly (not through Baton), before
    /// the sweep.
    #[serde(default)]
    pub probes: Vec<StudioProbe>,
    /// One per concurrency level, in the order of `concurrency_benchmark`.
    #[serde(default)]
    pub levels: Vec<LevelEvidence>,
    /// Baton's connect timeout, ms: what a connect that timed out cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<f64>,
    /// This machine's load while the studios were measured alone (a busy
    /// client makes every client-side timing suspect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_host: Option<HostUsage>,
}

/// One studio as configured, and what preflight measured of it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StudioFacts {
    pub worker: String,
    pub kind: String,
    pub host: String,
    pub port: u16,
    /// `max_concurrent_requests`.
    pub slots: u32,
    /// Dropped by `--exclude-unhealthy` after failing preflight.
    #[serde(default)]
    pub excluded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight: Option<PreflightFacts>,
}

/// The figures of a studio's preflight the diagnosis uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PreflightFacts {
    /// `pass`, `warn` or `fail`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_avg_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping_loss_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_connect_ms: Option<f64>,
    /// Time to first token of preflight's one-token completion: the first
    /// generation this run asked of the studio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<f64>,
    /// Checks that did not pass, as `name: value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Names of the checks that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// The limits it was judged by.
    #[serde(default)]
    pub max_rtt_ms: f64,
    #[serde(default)]
    pub max_loss_pct: f64,
}

/// A studio measured alone and directly, on the API that reports its own
/// timings (LM Studio's `/api/v0`, Ollama's `/api/chat`, llama.cpp's
/// `timings`, vLLM's `/metrics`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StudioProbe {
    pub worker: String,
    pub kind: String,
    pub slots: u32,
    /// The endpoint used.
    pub endpoint: String,
    /// Where the studio's own timings came from; `None`: client-side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<String>,
    /// Why it could not be measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// It answered that it does not serve the benchmarked model.
    #[serde(default)]
    pub wrong_model: bool,
    /// Whether the model was loaded before the first request (LM Studio's
    /// `/api/v0/models` state, Ollama's `/api/ps`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_loaded_before: Option<bool>,
    /// Its first answer in the probe (kept out of the steady figures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first: Option<WorkerEvidence>,
    /// Tries that failed before that first answer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_failures: u64,
    /// One request at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single: Option<ProbeRun>,
    /// `slots` requests at a time (absent for one slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<ProbeRun>,
}

/// One closed-loop run of a probe.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProbeRun {
    pub concurrency: usize,
    pub elapsed_s: f64,
    pub requests_per_second: f64,
    pub output_tokens_per_second: f64,
    pub detail: WorkerEvidence,
}

/// Latency figures in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stat {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

/// One studio's part of a run, from the client's side, with the studio's
/// own timings where it reports them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WorkerEvidence {
    pub ok: u64,
    pub failed: u64,
    /// Failed requests by class (`connect`, `timeout`, `http_4xx`,
    /// `http_5xx`, `stream`, `error_event`, `bad_answer`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, u64>,
    /// Client time spent on requests that failed, seconds.
    #[serde(default)]
    pub failed_s: f64,
    pub tokens: u64,
    /// Time to first token: measured on streams; on whole answers, the
    /// latency minus the generation time the studio reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<Stat>,
    pub latency_ms: Stat,
    /// Output tokens per second of one answer after its first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_tps: Option<f64>,
    /// Its first successful answer in this run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_latency_ms: Option<f64>,
    /// When its last answer ended, seconds after the run started.
    #[serde(default)]
    pub last_end_s: f64,
    /// Request-seconds it spent in flight from this client.
    #[serde(default)]
    pub busy_s: f64,
    /// The studio's own split of the time, where it reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerSplit>,
}

/// Where a request's time went, by the studio's own account (means over
/// the requests that reported, milliseconds).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerSplit {
    /// `llama.cpp timings`, `LM Studio stats`, `Ollama durations` or
    /// `vLLM /metrics`.
    pub source: String,
    pub requests: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    /// The studio's time to first token (queue, load and prefill it counts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    /// The client's end-to-end time minus the studio's: network, HTTP and
    /// any queueing the studio does not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
}

/// One request, as the load runner saw it (a bounded sample is kept).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestSample {
    pub worker: String,
    /// Seconds after the run started.
    pub sent_s: f64,
    /// Milliseconds after sending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_token_ms: Option<f64>,
    pub total_ms: f64,
    pub tokens: u64,
    /// The error class, for a failed request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerTimings>,
}

/// One answer's timings as its studio reported them, milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ServerTimings {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
}

/// One concurrency level's evidence.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LevelEvidence {
    pub concurrency: usize,
    pub elapsed_s: f64,
    /// Requests in flight on the wire, time-averaged, as the client saw it
    /// (Little's law from the client's own clock).
    pub in_flight_avg: f64,
    /// Mean time a client waited for a connection before sending, ms
    /// (only with a connection cap).
    #[serde(default)]
    pub client_wait_ms: f64,
    /// What Baton itself saw (in-process balancer only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton: Option<BatonSample>,
    /// Per studio, as named by the `x-baton-worker` header (`-` when the
    /// answer named none).
    #[serde(default)]
    pub workers: BTreeMap<String, WorkerEvidence>,
    /// Baton's counters per studio over the level.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub balancer: BTreeMap<String, BalancerDelta>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<RequestSample>,
}

/// Baton's own view of a level, sampled ten times a second.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BatonSample {
    pub samples: u64,
    /// Requests inside Baton (at studios or in its queue), time-averaged.
    pub in_flight_avg: f64,
    /// Requests the client had on the wire at the same moments.
    #[serde(default)]
    pub client_in_flight_avg: f64,
    /// Requests waiting in Baton's queue for a slot, time-averaged.
    pub queue_avg: f64,
    pub queue_max: u64,
    /// Attempts on studios per request the client made (1.0: no retries).
    pub attempts_per_request: f64,
    pub retries: u64,
    pub rejected: u64,
}

/// One studio's balancer counters over a level.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct BalancerDelta {
    pub requests: u64,
    pub successes: u64,
    /// Failed attempts by reason (`connect`, `timeout`, `status_5xx`,
    /// `stream`, `probe`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ejections: BTreeMap<String, u64>,
    /// Its state when the level ended (`ready`, `ejected`, ...).
    pub state: String,
    /// Requests it held, time-averaged.
    pub in_flight_avg: f64,
    /// Requests Baton gave it at once when the level ended: learned from
    /// its answers, never above `slots_declared` ("declared 4, runs 2").
    #[serde(default)]
    pub slots: u64,
    /// `max_concurrent_requests` as a number; absent for `"auto"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots_declared: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}
