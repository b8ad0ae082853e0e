//! The results file. Names follow the user's `benchmark.py`, so their `jq`
//! lines keep working: `.concurrency_benchmark[] | {concurrency,
//! requests_per_second, success_rate}` and `.worker_scaling_benchmark[] |
//! {workers, requests_per_second, speedup, scaling_efficiency}`.
//! Times are in seconds, rates per second, shares and rates in percent.
//!
//! This folder is the file's schema and nothing else: the types as they
//! are written and read, for the runner to fill in and the diagnosis to
//! read (neither is imported here). An absent figure is an absent key,
//! never `null` ([`skip_serializing_none`]); old files must keep parsing, and key names
//! and their order are kept byte for byte (see the tests in `split`).
//!
//! - this file: the run, its settings, and the two tables
//! - `evidence`: what was measured for the diagnosis
//! - `split`: where a request's time went (one type for an answer, a
//!   studio and the pool)
//! - `diagnosis`: the verdict as stored
//! - `capacity`: the capacity search under a service level

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

mod capacity;
mod diagnosis;
mod evidence;
mod split;

pub use capacity::{
    Capacity, CapacityPoint, Change, Checked, LimitedBy, Prediction, Slo, StudioCapacity, WhatIf,
};
pub use diagnosis::{Cause, Diagnosis, Finding, Severity, WaterfallStep};
pub use evidence::{
    BalancerDelta, BatonSample, Evidence, LevelEvidence, PreflightFacts, ProbeRun, RequestSample,
    Stat, StudioFacts, StudioProbe, WorkerEvidence,
};
pub use split::TimeSplit;

/// A whole benchmark run.
#[skip_serializing_none]
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
    pub url: Option<String>,
    pub settings: Settings,
    /// The workers benchmarked (the file's, minus any excluded).
    #[serde(default)]
    pub config: serde_json::Value,
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
    pub evidence: Option<Evidence>,
    /// What went wrong and what to change (`baton diagnose` recomputes it
    /// from the evidence).
    pub diagnosis: Option<Diagnosis>,
    /// `--mode capacity`: the most agents the pool serves under the
    /// service level, and what each studio adds.
    pub capacity: Option<Capacity>,
}

#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub model: String,
    pub max_tokens: u32,
    pub requests: Option<u64>,
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
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LittlesLaw {
    pub effective_concurrency: f64,
    pub ratio: f64,
    /// The client, not the pool, held requests back: fewer in flight than
    /// asked while it still had requests to send (a level that ran short
    /// of requests and drained is not that: see `ramp_down_share`).
    pub client_bound: bool,
    /// Requests in flight, time-averaged, while the client still had
    /// requests to send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_while_sending: Option<f64>,
    /// The share of the level's time after the client had nothing left to
    /// send, draining with fewer requests in flight than asked (a level
    /// with too few requests for its concurrency spends much of it so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_down_share: Option<f64>,
}

/// One concurrency level.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
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
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScalingLevel {
    pub workers: usize,
    pub worker_ids: Vec<String>,
    pub concurrency: usize,
    pub requests_per_second: f64,
    /// Throughput over one worker's (the user's ratio).
    pub speedup: f64,
    /// Throughput over what these studios give alone, summed (over
    /// `speedup / workers` in runs that did not measure them alone).
    pub scaling_efficiency: f64,
    pub throughput_per_worker: f64,
    pub output_tokens_per_second: f64,
    pub success_rate: f64,
    pub avg_response_time: f64,
    pub p95_response_time: f64,
    pub worker_stats: BTreeMap<String, WorkerShare>,
    /// What these studios give alone (each measured directly before the
    /// sweep), summed: the ideal `scaling_efficiency` is judged against.
    /// Absent when one was not measured (and in older runs).
    pub studios_alone_requests_per_second: Option<f64>,
}

#[cfg(test)]
mod tests;
