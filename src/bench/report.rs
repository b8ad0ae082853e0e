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
