//! What a run measured for the diagnosis, kept small: aggregates per
//! studio and level, and a bounded sample of single requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{HostUsage, TimeSplit};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Everything measured for the diagnosis, kept small: aggregates per studio
/// and level, and a bounded sample of single requests.
#[skip_serializing_none]
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
    pub connect_timeout_ms: Option<f64>,
    /// This machine's load while the studios were measured alone (a busy
    /// client makes every client-side timing suspect).
    pub probe_host: Option<HostUsage>,
}

/// One studio as configured, and what preflight measured of it.
#[skip_serializing_none]
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
    pub preflight: Option<PreflightFacts>,
}

/// The figures of a studio's preflight the diagnosis uses.
#[skip_serializing_none]
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PreflightFacts {
    /// `pass`, `warn` or `fail`.
    pub status: String,
    pub ping_avg_ms: Option<f64>,
    pub ping_loss_pct: Option<f64>,
    pub tcp_connect_ms: Option<f64>,
    /// Time to first token of preflight's one-token completion: the first
    /// generation this run asked of the studio.
    pub first_token_ms: Option<f64>,
    /// Checks that did not pass, as `name: value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// Names of the checks that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_checks: Vec<String>,
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
#[skip_serializing_none]
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StudioProbe {
    pub worker: String,
    pub kind: String,
    pub slots: u32,
    /// The endpoint used.
    pub endpoint: String,
    /// Where the studio's own timings came from; `None`: client-side only.
    pub timings: Option<String>,
    /// Why it could not be measured.
    pub error: Option<String>,
    /// It answered that it does not serve the benchmarked model.
    #[serde(default)]
    pub wrong_model: bool,
    /// Whether the model was loaded before the first request (LM Studio's
    /// `/api/v0/models` state, Ollama's `/api/ps`).
    pub model_loaded_before: Option<bool>,
    /// Its first answer in the probe (kept out of the steady figures).
    pub first: Option<WorkerEvidence>,
    /// Tries that failed before that first answer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub first_failures: u64,
    /// One request at a time.
    pub single: Option<ProbeRun>,
    /// `slots` requests at a time (absent for one slot).
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
#[skip_serializing_none]
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
    pub ttft_ms: Option<Stat>,
    pub latency_ms: Stat,
    /// Output tokens per second of one answer after its first token.
    pub decode_tps: Option<f64>,
    /// Its first successful answer in this run.
    pub first_ttft_ms: Option<f64>,
    pub first_latency_ms: Option<f64>,
    /// When its last answer ended, seconds after the run started.
    #[serde(default)]
    pub last_end_s: f64,
    /// Request-seconds it spent in flight from this client.
    #[serde(default)]
    pub busy_s: f64,
    /// The studio's own split of the time, where it reports one.
    pub server: Option<TimeSplit>,
}

/// One request, as the load runner saw it (a bounded sample is kept).
#[skip_serializing_none]
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct RequestSample {
    pub worker: String,
    /// Seconds after the run started.
    pub sent_s: f64,
    /// Milliseconds after sending.
    pub headers_ms: Option<f64>,
    pub first_token_ms: Option<f64>,
    pub last_token_ms: Option<f64>,
    pub total_ms: f64,
    pub tokens: u64,
    /// The error class, for a failed request.
    pub error: Option<String>,
    pub server: Option<TimeSplit>,
}

/// One concurrency level's evidence.
#[skip_serializing_none]
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
#[skip_serializing_none]
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
    pub slots_declared: Option<u32>,
    pub last_error: Option<String>,
}
