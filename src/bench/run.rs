//! `baton bench`: preflight, then concurrency and worker-count sweeps
//! through Baton's own balancer (in process) or any OpenAI endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::load::{self, LoadReport, LoadSpec};
use super::report::{
    BenchResult, HostFacts, HostUsage, Level, PreflightSummary, ScalingLevel, Settings,
};
use crate::balancer::Balancer;
use crate::config::{Config, Worker};
use crate::preflight::{self, Status, Thresholds};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Concurrency,
    Scaling,
    Both,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Concurrency => "concurrency",
            Mode::Scaling => "scaling",
            Mode::Both => "both",
        }
    }
}

/// What to do when preflight finds a broken worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    /// Refuse to start.
    Require,
    /// Drop the failing workers and go on.
    ExcludeUnhealthy,
    /// Do not run preflight.
    Skip,
}

/// What to benchmark.
#[derive(Clone, Debug)]
pub enum Target {
    /// Baton's balancer, started in process over these workers.
    Balancer(Config),
    /// Any OpenAI-compatible endpoint (base URL ending in /v1).
    Url {
        url: String,
        api_key: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub target: Target,
    pub model: String,
    pub max_tokens: u32,
    pub prompts: Vec<String>,
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
    pub warmup_requests: u64,
    pub repeat: u32,
    pub concurrency_levels: Vec<usize>,
    pub worker_counts: Vec<usize>,
    pub gate: Gate,
}

/// Events for whoever shows progress.
pub trait Observer: Send + Sync {
    fn note(&self, line: &str);
    fn level_started(&self, label: &str, planned: Option<u64>, duration: Option<Duration>);
    fn progress(&self, ok: u64, failed: u64);
    fn level_finished(&self, label: &str, summary: &str);
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "preflight failed, refusing to benchmark a broken pool:\n{0}\n  fix: repair the studios above, or pass --exclude-unhealthy to drop them (or --skip-preflight)"
    )]
    PreflightFailed(String),
    #[error("every worker failed preflight; nothing left to benchmark:\n{0}")]
    NothingHealthy(String),
    #[error("no worker serving `{0}` became ready within 10 s; run `baton preflight` to see why")]
    NotReady(String),
    #[error("the workers file has no enabled workers")]
    NoWorkers,
    #[error("cannot start the balancer: {0}")]
    Balancer(#[from] crate::balancer::Error),
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Run the plan. On cancellation the levels finished so far are kept and the
/// result is marked interrupted.
pub async fn run(
    plan: &Plan,
    obs: Arc<dyn Observer>,
    cancel: CancellationToken,
) -> Result<BenchResult, BenchError> {
    let started_at = now();
    let mut result = BenchResult {
        baton_version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        finished_at: started_at,
        interrupted: false,
        mode: plan.mode.as_str().to_string(),
        target: match &plan.target {
            Target::Balancer(_) => "balancer".into(),
            Target::Url { .. } => "url".into(),
        },
        url: match &plan.target {
            Target::Url { url, .. } => Some(url.clone()),
            _ => None,
        },
        settings: Settings {
            model: plan.model.clone(),
            max_tokens: plan.max_tokens,
            requests: plan.requests,
            duration_s: plan.duration.map(|d| d.as_secs_f64()),
            warmup_requests: plan.warmup_requests,
            repeat: plan.repeat.max(1),
            concurrency_levels: plan.concurrency_levels.clone(),
            worker_counts: plan.worker_counts.clone(),
            prompts: plan.prompts.len().max(1),
        },
        config: serde_json::Value::Null,
        preflight: None,
        host: HostFacts::here(),
        concurrency_benchmark: Vec::new(),
        worker_scaling_benchmark: Vec::new(),
    };
    let workers: Vec<Worker> = match &plan.target {
        Target::Balancer(cfg) => {
            let mut workers: Vec<Worker> = cfg.enabled_workers().cloned().collect();
            if workers.is_empty() {
                return Err(BenchError::NoWorkers);
            }
            result.preflight = Some(gate(plan.gate, cfg, &mut workers, &*obs).await?);
            let kept = Config {
                workers: workers.clone(),
                balancer: cfg.balancer.clone(),
                ..Default::default()
            };
            result.config = kept.to_json();
            workers
        }
        Target::Url { .. } => Vec::new(),
    };

    if matches!(plan.mode, Mode::Concurrency | Mode::Both) {
        let endpoint = Endpoint::open(plan, &workers, &*obs).await?;
        for &c in &plan.concurrency_levels {
            let label = format!("concurrency {c}");
            match level(plan, &endpoint, c, &label, &obs, &cancel).await {
                Some(l) => {
                    obs.level_finished(&label, &summary(&l));
                    result.concurrency_benchmark.push(l);
                }
                None => {
                    result.interrupted = true;
                    break;
                }
            }
        }
        endpoint.close().await;
    }
    if !result.interrupted && matches!(plan.mode, Mode::Scaling | Mode::Both) {
        if let Target::Url { .. } = plan.target {
            obs.note("scaling mode needs a workers file (it starts Baton over the first N workers); skipped for --url");
        } else {
            let counts: Vec<usize> = plan
                .worker_counts
                .iter()
                .copied()
                .filter(|n| *n >= 1 && *n <= workers.len())
                .collect();
            let dropped: Vec<usize> = plan
                .worker_counts
                .iter()
                .copied()
                .filter(|n| *n > workers.len())
                .collect();
            if !dropped.is_empty() {
                obs.note(&format!(
                    "worker counts {dropped:?} exceed the pool of {}: skipped",
                    workers.len()
                ));
            }
            let mut base: Option<(usize, f64)> = None;
            for n in counts {
                let subset: Vec<Worker> = workers[..n].to_vec();
                let concurrency: usize = subset
                    .iter()
                    .map(|w| w.max_concurrent_requests.ceiling() as usize)
                    .sum();
                let sub_plan = Plan {
                    target: Target::Balancer(Config {
                        workers: subset.clone(),
                        balancer: balancer_settings(plan),
                        ..Default::default()
                    }),
                    ..plan.clone()
                };
                let endpoint = Endpoint::open(&sub_plan, &subset, &*obs).await?;
                let label = format!("{n} worker(s), concurrency {concurrency}");
                let l = level(&sub_plan, &endpoint, concurrency, &label, &obs, &cancel).await;
                endpoint.close().await;
                let Some(l) = l else {
                    result.interrupted = true;
                    break;
                };
                // Speedup relative to one worker's throughput: measured when
                // the sweep starts at 1, else derived from its first count.
                let (n0, rps0) = *base.get_or_insert((n, l.requests_per_second));
                let one_worker = rps0 / n0 as f64;
                let speedup = if one_worker > 0.0 {
                    l.requests_per_second / one_worker
                } else {
                    0.0
                };
                let s = ScalingLevel {
                    workers: n,
                    worker_ids: subset.iter().map(|w| w.id.clone()).collect(),
                    concurrency,
                    requests_per_second: l.requests_per_second,
                    speedup,
                    scaling_efficiency: speedup / n as f64,
                    throughput_per_worker: l.requests_per_second / n as f64,
                    output_tokens_per_second: l.output_tokens_per_second,
                    success_rate: l.success_rate,
                    avg_response_time: l.avg_response_time,
                    p95_response_time: l.p95_response_time,
                    worker_stats: l.worker_stats.clone(),
                };
                obs.level_finished(
                    &label,
                    &format!(
                        "{:.2} req/s, speedup {:.2}x, efficiency {:.0}%",
                        s.requests_per_second,
                        s.speedup,
                        s.scaling_efficiency * 100.0
                    ),
                );
                result.worker_scaling_benchmark.push(s);
            }
        }
    }
    result.finished_at = now();
    Ok(result)
}

fn balancer_settings(plan: &Plan) -> crate::config::BalancerSettings {
    match &plan.target {
        Target::Balancer(c) => c.balancer.clone(),
        Target::Url { .. } => Default::default(),
    }
}

fn summary(l: &Level) -> String {
    format!(
        "{:.2} req/s, {:.1}% ok, avg {:.2} s, p95 {:.2} s, TTFT {:.0} ms, {:.0} tok/s{}",
        l.requests_per_second,
        l.success_rate,
        l.avg_response_time,
        l.p95_response_time,
        l.ttft_avg * 1000.0,
        l.output_tokens_per_second,
        if l.littles_law.client_bound {
            "  (warning: client-bound, see littles_law)"
        } else {
            ""
        }
    )
}

/// Preflight the workers and apply the gate.
async fn gate(
    g: Gate,
    cfg: &Config,
    workers: &mut Vec<Worker>,
    obs: &dyn Observer,
) -> Result<PreflightSummary, BenchError> {
    if g == Gate::Skip {
        obs.note("preflight skipped (--skip-preflight)");
        return Ok(PreflightSummary {
            status: "skipped".into(),
            failed_workers: vec![],
            excluded_workers: vec![],
            skipped: true,
        });
    }
    obs.note(&format!("preflight of {} worker(s)...", workers.len()));
    let report = preflight::run(
        &Config {
            workers: workers.clone(),
            balancer: cfg.balancer.clone(),
            ..Default::default()
        },
        &Thresholds::default(),
    )
    .await;
    let _ = preflight::save_last(&report);
    let failed: Vec<String> = report
        .failed()
        .map(|h| h.worker.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let explain = || {
        report
            .hosts
            .iter()
            .filter(|h| h.status == Status::Fail)
            .flat_map(|h| {
                h.checks
                    .iter()
                    .filter(|c| c.status == Status::Fail)
                    .map(move |c| {
                        format!(
                            "  {} {}: {} {}",
                            h.worker,
                            c.name,
                            c.value,
                            c.remedy
                                .as_deref()
                                .map(|r| format!("(fix: {r})"))
                                .unwrap_or_default()
                        )
                    })
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut excluded = Vec::new();
    if !failed.is_empty() {
        match g {
            Gate::Require => return Err(BenchError::PreflightFailed(explain())),
            Gate::ExcludeUnhealthy => {
                obs.note(&format!(
                    "\n!!! EXCLUDING {} unhealthy worker(s): {} — results describe the remaining {} only !!!\n{}\n",
                    failed.len(),
                    failed.join(", "),
                    workers.len() - failed.len(),
                    explain()
                ));
                workers.retain(|w| !failed.contains(&w.id));
                excluded = failed.clone();
                if workers.is_empty() {
                    return Err(BenchError::NothingHealthy(explain()));
                }
            }
            Gate::Skip => {}
        }
    } else {
        obs.note(&format!(
            "preflight passed ({})",
            match report.status {
                Status::Warn => "with warnings",
                _ => "all checks",
            }
        ));
    }
    Ok(PreflightSummary {
        status: format!("{:?}", report.status).to_lowercase(),
        failed_workers: failed,
        excluded_workers: excluded,
        skipped: false,
    })
}

/// Where requests go for one sweep: an in-process balancer or a URL.
struct Endpoint {
    url: String,
    api_key: Option<String>,
    balancer: Option<Balancer>,
}

impl Endpoint {
    async fn open(
        plan: &Plan,
        workers: &[Worker],
        obs: &dyn Observer,
    ) -> Result<Endpoint, BenchError> {
        match &plan.target {
            Target::Url { url, api_key } => Ok(Endpoint {
                url: url.trim_end_matches('/').to_string(),
                api_key: api_key.clone(),
                balancer: None,
            }),
            Target::Balancer(cfg) => {
                let config = Config {
                    workers: workers.to_vec(),
                    balancer: cfg.balancer.clone(),
                    ..Default::default()
                };
                let b = Balancer::start(
                    &config,
                    Some("127.0.0.1:0".parse().expect("valid address")),
                    None,
                )
                .await?;
                if !b.wait_all_ready(Duration::from_secs(10)).await {
                    if b.ready_workers() == 0 {
                        return Err(BenchError::NotReady(plan.model.clone()));
                    }
                    obs.note("not every worker became ready; benchmarking those that did");
                }
                Ok(Endpoint {
                    url: b.url(),
                    api_key: None,
                    balancer: Some(b),
                })
            }
        }
    }

    async fn close(self) {
        if let Some(b) = self.balancer {
            b.shutdown().await;
        }
    }
}

/// Run one level (warm-up, then `repeat` measured runs); `None` if cancelled.
async fn level(
    plan: &Plan,
    ep: &Endpoint,
    concurrency: usize,
    label: &str,
    obs: &Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> Option<Level> {
    let client = load::client();
    let body = json!({
        "model": plan.model, "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": plan.max_tokens,
        "messages": [{"role": "user", "content": plan.prompts.first().cloned().unwrap_or_else(|| DEFAULT_PROMPT.to_string())}],
    });
    let spec = |requests: Option<u64>, duration: Option<Duration>| LoadSpec {
        url: format!("{}/chat/completions", ep.url),
        body: body.clone(),
        concurrency,
        duration,
        requests,
        api_key: ep.api_key.clone(),
        warmup: duration.map(|d| d / 5).unwrap_or_default(),
        prompts: plan.prompts.clone(),
    };
    if plan.warmup_requests > 0 {
        let warm = spec(Some(plan.warmup_requests.max(concurrency as u64)), None);
        tokio::select! {
            _ = load::run(&client, &warm) => {}
            _ = cancel.cancelled() => return None,
        }
    }
    let mut runs: Vec<LoadReport> = Vec::new();
    let mut usage = Vec::new();
    for _ in 0..plan.repeat.max(1) {
        obs.level_started(label, plan.requests, plan.duration);
        let measured = spec(
            plan.requests.or(if plan.duration.is_none() {
                Some(100)
            } else {
                None
            }),
            plan.duration,
        );
        let o = obs.clone();
        let progress: load::Progress = Arc::new(move |ok, failed| o.progress(ok, failed));
        let sampler = HostSampler::start();
        let report = tokio::select! {
            r = load::run_observed(&client, &measured, Some(progress)) => r,
            _ = cancel.cancelled() => return None,
        };
        usage.push(sampler.stop().await);
        runs.push(report);
    }
    let host_usage = HostUsage {
        cpu_avg_percent: usage.iter().map(|u| u.cpu_avg_percent).sum::<f64>() / usage.len() as f64,
        cpu_max_percent: usage.iter().map(|u| u.cpu_max_percent).fold(0.0, f64::max),
        memory_used_gb: usage.iter().map(|u| u.memory_used_gb).fold(0.0, f64::max),
    };
    Some(Level::from_runs(concurrency, &runs, host_usage))
}

/// The prompt used when none is given.
pub const DEFAULT_PROMPT: &str =
    "Explain in one paragraph why a pool of local LLM servers needs health checks.";

/// Samples host CPU and memory every half second while a level runs.
struct HostSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<HostUsage>,
}

impl HostSampler {
    fn start() -> HostSampler {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::task::spawn(async move {
            let Ok(mut sys) = sysinfo::System::new() else {
                return HostUsage::default();
            };
            sys.refresh_cpu_usage();
            let (mut sum, mut n, mut max, mut mem) = (0.0, 0u32, 0.0f64, 0.0f64);
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(500))) => {}
                }
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                let cpu = f64::from(sys.global_cpu_usage());
                sum += cpu;
                n += 1;
                max = max.max(cpu);
                mem = mem.max(sys.used_memory() as f64 / 1e9);
            }
            HostUsage {
                cpu_avg_percent: if n == 0 { 0.0 } else { sum / f64::from(n) },
                cpu_max_percent: max,
                memory_used_gb: mem,
            }
        });
        HostSampler { stop, task }
    }

    async fn stop(self) -> HostUsage {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
