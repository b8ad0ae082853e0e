//! `baton bench`: preflight, then concurrency and worker-count sweeps
//! through Baton's own balancer (in process) or any OpenAI endpoint.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::capacity;
use super::diagnose;
use super::load::{self, LoadReport, LoadSpec, RunEvidence, RunOptions};
use super::probe::{self, ProbeSettings};
use super::report::{
    BalancerDelta, BatonSample, BenchResult, Evidence, HostFacts, HostUsage, Level, LevelEvidence,
    PreflightFacts, PreflightSummary, Settings, Slo, StudioFacts,
};
use super::scaling;
use crate::balancer::Balancer;
use crate::config::{Config, Worker};
use crate::preflight::{self, Status, Thresholds};
use crate::studio::StudioKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Concurrency,
    Scaling,
    Both,
    /// The most agents the pool serves under a service level (`Plan::slo`).
    Capacity,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Concurrency => "concurrency",
            Mode::Scaling => "scaling",
            Mode::Both => "both",
            Mode::Capacity => "capacity",
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
// One per run: the size of the configuration variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Measure each studio alone, directly, before the sweep (for the
    /// diagnosis: scaling efficiency, cold models, serialized studios,
    /// network time). Balancer targets only.
    pub probe_studios: bool,
    /// At most this many requests on the wire at once (`None`: as many as
    /// the concurrency), as HTTP client libraries cap connections; the
    /// diagnosis then finds the client the limit.
    pub max_connections: Option<usize>,
    /// The service level of `Mode::Capacity`.
    pub slo: Slo,
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
        evidence: None,
        diagnosis: None,
        capacity: None,
    };
    let mut evidence = Evidence::default();
    let workers: Vec<Worker> = match &plan.target {
        Target::Balancer(cfg) => {
            let mut workers: Vec<Worker> = cfg.enabled_workers().cloned().collect();
            if workers.is_empty() {
                return Err(BenchError::NoWorkers);
            }
            let all = workers.clone();
            let (summary, report) = gate(plan.gate, cfg, &mut workers, &*obs).await?;
            evidence.studios = studio_facts(&all, &summary.excluded_workers, report.as_ref());
            evidence.connect_timeout_ms = Some(cfg.balancer.connect_timeout.as_secs_f64() * 1000.0);
            result.preflight = Some(summary);
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
    if plan.probe_studios && !workers.is_empty() {
        let sampler = HostSampler::start();
        tokio::select! {
            p = probe_studios(plan, &workers, &*obs) => evidence.probes = p,
            _ = cancel.cancelled() => result.interrupted = true,
        }
        evidence.probe_host = Some(sampler.stop().await);
    }
    // Studios the probe could not reach: no need to wait for them.
    let down: Vec<String> = evidence
        .probes
        .iter()
        .filter(|p| p.error.is_some() && !p.wrong_model)
        .map(|p| p.worker.clone())
        .collect();

    if !result.interrupted && plan.mode == Mode::Capacity {
        let alone = capacity::drive::studios_alone(
            plan,
            &probe_settings(plan),
            &workers,
            &down,
            &*obs,
            &cancel,
        )
        .await;
        match alone {
            None => result.interrupted = true,
            Some(alone) => {
                let ep = Endpoint::open(plan, &workers, &down, &*obs).await?;
                let (c, cut) = capacity::drive::pool(
                    plan,
                    &ep.url,
                    ep.api_key.clone(),
                    &workers,
                    alone,
                    &obs,
                    &cancel,
                )
                .await;
                ep.close().await;
                result.interrupted |= cut;
                result.capacity = Some(c);
            }
        }
    }
    if !result.interrupted && matches!(plan.mode, Mode::Concurrency | Mode::Both) {
        let endpoint = Endpoint::open(plan, &workers, &down, &*obs).await?;
        for &c in &plan.concurrency_levels {
            let label = format!("concurrency {c}");
            match level(plan, &endpoint, &workers, c, &label, &obs, &cancel).await {
                Some((l, e)) => {
                    obs.level_finished(&label, &summary(&l));
                    result.concurrency_benchmark.push(l);
                    evidence.levels.push(e);
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
                let endpoint = Endpoint::open(&sub_plan, &subset, &down, &*obs).await?;
                let label = format!("{n} worker(s), concurrency {concurrency}");
                let l = level(
                    &sub_plan,
                    &endpoint,
                    &subset,
                    concurrency,
                    &label,
                    &obs,
                    &cancel,
                )
                .await
                .map(|(l, _)| l);
                endpoint.close().await;
                let Some(l) = l else {
                    result.interrupted = true;
                    break;
                };
                // Speedup relative to one worker's throughput: measured when
                // the sweep starts at 1, else derived from its first count.
                let base = *base.get_or_insert((n, l.requests_per_second));
                let ids: Vec<String> = subset.iter().map(|w| w.id.clone()).collect();
                let alone = scaling::studios_alone(&evidence.probes, &ids);
                let s = scaling::level(ids, concurrency, &l, base, alone);
                obs.level_finished(
                    &label,
                    &format!(
                        "{:.2} req/s, speedup {:.2}x, efficiency {:.0}%{}",
                        s.requests_per_second,
                        s.speedup,
                        s.scaling_efficiency * 100.0,
                        s.studios_alone_requests_per_second
                            .map(|a| format!(" of the {a:.2} req/s its studios give alone"))
                            .unwrap_or_default()
                    ),
                );
                result.worker_scaling_benchmark.push(s);
            }
        }
    }
    result.finished_at = now();
    result.evidence = Some(evidence);
    result.diagnosis = Some(diagnose::diagnose(&result));
    Ok(result)
}

/// Measure each studio alone (all at once: they are separate machines).
async fn probe_studios(
    plan: &Plan,
    workers: &[Worker],
    obs: &dyn Observer,
) -> Vec<super::report::StudioProbe> {
    obs.note(&format!(
        "measuring each of {} studio(s) alone, directly...",
        workers.len()
    ));
    let probes = probe::probe_all(workers, &probe_settings(plan)).await;
    for p in &probes {
        let line = match (&p.error, &p.single, &p.full) {
            (Some(e), _, _) => format!("unreachable: {e}"),
            (None, Some(one), full) => {
                let ttft = one
                    .detail
                    .ttft_ms
                    .as_ref()
                    .map(|t| format!(", TTFT {:.0} ms", t.p50))
                    .unwrap_or_default();
                let all = full
                    .as_ref()
                    .map(|f| {
                        format!(
                            "; {} at once {:.2} req/s",
                            f.concurrency, f.requests_per_second
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "one at a time {:.2} req/s{ttft}{all} ({})",
                    one.requests_per_second,
                    p.timings.as_deref().unwrap_or("client-side only")
                )
            }
            _ => "no figures".to_string(),
        };
        obs.level_finished(&format!("{} alone", p.worker), &line);
    }
    probes
}

/// Every studio as configured, with what preflight found.
fn studio_facts(
    all: &[Worker],
    excluded: &[String],
    report: Option<&preflight::Report>,
) -> Vec<StudioFacts> {
    all.iter()
        .map(|w| {
            let host = report.and_then(|r| {
                r.hosts
                    .iter()
                    .find(|h| h.worker == w.id && h.role == "worker")
                    .map(|h| (r, h))
            });
            StudioFacts {
                worker: w.id.clone(),
                kind: w.kind.as_str().to_string(),
                host: w.host.clone(),
                port: w.port,
                slots: probe::declared_slots(w),
                excluded: excluded.contains(&w.id),
                preflight: host.map(|(r, h)| {
                    let check = |name: &str| h.checks.iter().find(|c| c.name == name);
                    let ping = check("ping").and_then(|c| c.ping.as_ref());
                    PreflightFacts {
                        status: format!("{:?}", h.status).to_lowercase(),
                        ping_avg_ms: ping.and_then(|p| p.avg_ms),
                        ping_loss_pct: ping.map(|p| p.loss_pct),
                        tcp_connect_ms: check("tcp")
                            .filter(|c| c.status == Status::Pass)
                            .and_then(|c| c.ms),
                        first_token_ms: check("completion").and_then(|c| c.ms),
                        problems: h
                            .checks
                            .iter()
                            .filter(|c| matches!(c.status, Status::Warn | Status::Fail))
                            .map(|c| format!("{} {}", c.name, c.value))
                            .collect(),
                        failed_checks: h
                            .checks
                            .iter()
                            .filter(|c| c.status == Status::Fail)
                            .map(|c| c.name.clone())
                            .collect(),
                        remedy: h
                            .checks
                            .iter()
                            .find(|c| c.status == Status::Fail)
                            .and_then(|c| c.remedy.clone()),
                        max_rtt_ms: r.thresholds.max_rtt_ms,
                        max_loss_pct: r.thresholds.max_loss_pct,
                    }
                }),
            }
        })
        .collect()
}

/// What each studio is asked when measured alone.
fn probe_settings(plan: &Plan) -> ProbeSettings {
    let settings = balancer_settings(plan);
    ProbeSettings {
        model: plan.model.clone(),
        max_tokens: plan.max_tokens,
        prompt: plan
            .prompts
            .first()
            .cloned()
            .unwrap_or_else(|| DEFAULT_PROMPT.to_string()),
        connect_timeout: settings.connect_timeout.max(Duration::from_secs(1)),
        read_timeout: settings.first_token_timeout.max(Duration::from_secs(10)),
    }
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
) -> Result<(PreflightSummary, Option<preflight::Report>), BenchError> {
    if g == Gate::Skip {
        obs.note("preflight skipped (--skip-preflight)");
        return Ok((
            PreflightSummary {
                status: "skipped".into(),
                failed_workers: vec![],
                excluded_workers: vec![],
                skipped: true,
            },
            None,
        ));
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
    Ok((
        PreflightSummary {
            status: format!("{:?}", report.status).to_lowercase(),
            failed_workers: failed,
            excluded_workers: excluded,
            skipped: false,
        },
        Some(report),
    ))
}

/// Where requests go for one sweep: an in-process balancer or a URL.
struct Endpoint {
    url: String,
    api_key: Option<String>,
    balancer: Option<Balancer>,
}

impl Endpoint {
    /// `down`: studios the probe found unreachable, not waited for.
    async fn open(
        plan: &Plan,
        workers: &[Worker],
        down: &[String],
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
                let expected = workers.iter().filter(|w| !down.contains(&w.id)).count();
                let ready = if expected < workers.len() {
                    let until = tokio::time::Instant::now() + Duration::from_secs(10);
                    while b.ready_workers() < expected.max(1) && tokio::time::Instant::now() < until
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    b.ready_workers() >= workers.len()
                } else {
                    b.wait_all_ready(Duration::from_secs(10)).await
                };
                if !ready {
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

/// Run one level (warm-up, then `repeat` measured runs), with its
/// evidence; `None` if cancelled.
async fn level(
    plan: &Plan,
    ep: &Endpoint,
    workers: &[Worker],
    concurrency: usize,
    label: &str,
    obs: &Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> Option<(Level, LevelEvidence)> {
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
        let opts = RunOptions {
            max_connections: plan.max_connections,
            ..RunOptions::default()
        };
        tokio::select! {
            _ = load::run_with(&client, &warm, opts) => {}
            _ = cancel.cancelled() => return None,
        }
    }
    let vllm: Vec<&Worker> = workers
        .iter()
        .filter(|w| w.kind == StudioKind::Vllm)
        .collect();
    let scrape = || async {
        let mut m = std::collections::BTreeMap::new();
        for w in &vllm {
            if let Some(x) = probe::vllm_metrics(&client, &w.base_url(), None).await {
                m.insert(w.id.clone(), x);
            }
        }
        m
    };
    let metrics_before = scrape().await;
    let live = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let baton = ep
        .balancer
        .as_ref()
        .map(|b| BatonSampler::start(b, live.clone()));
    let mut runs: Vec<LoadReport> = Vec::new();
    let mut evidence = RunEvidence::default();
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
        let opts = RunOptions {
            progress: Some(progress),
            max_connections: plan.max_connections,
            in_flight: Some(live.clone()),
            ..RunOptions::default()
        };
        let sampler = HostSampler::start();
        let mut report = tokio::select! {
            r = load::run_with(&client, &measured, opts) => r,
            _ = cancel.cancelled() => return None,
        };
        usage.push(sampler.stop().await);
        evidence.merge(std::mem::take(&mut report.evidence));
        runs.push(report);
    }
    let host_usage = HostUsage {
        cpu_avg_percent: usage.iter().map(|u| u.cpu_avg_percent).sum::<f64>() / usage.len() as f64,
        cpu_max_percent: usage.iter().map(|u| u.cpu_max_percent).fold(0.0, f64::max),
        memory_used_gb: usage.iter().map(|u| u.memory_used_gb).fold(0.0, f64::max),
        process_cpu_avg_percent: usage.iter().map(|u| u.process_cpu_avg_percent).sum::<f64>()
            / usage.len() as f64,
    };
    let level = Level::from_runs(concurrency, &runs, host_usage);
    let mut ev = evidence.level(concurrency, runs.len());
    if let Some(b) = baton {
        let (sample, deltas) = b.stop(level.requests).await;
        ev.baton = Some(sample);
        ev.balancer = deltas;
    }
    let metrics_after = scrape().await;
    for (id, after) in &metrics_after {
        if let Some(w) = ev.workers.get_mut(id) {
            probe::attach_vllm(w, metrics_before.get(id), Some(after));
        }
    }
    Some((level, ev))
}

/// Samples the in-process balancer ten times a second while a level
/// runs: requests inside Baton, its queue, and each studio's counters.
struct BatonSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Sampled>,
    before: crate::balancer::Snapshot,
    source: crate::balancer::StatsSource,
}

#[derive(Default)]
struct Sampled {
    n: u64,
    in_flight: f64,
    client: f64,
    queue: f64,
    queue_max: u64,
    per_worker: std::collections::BTreeMap<String, f64>,
}

impl BatonSampler {
    /// `client`: the load runner's live count of requests on the wire.
    fn start(b: &Balancer, client: Arc<std::sync::atomic::AtomicU64>) -> BatonSampler {
        let source = b.stats_source();
        let before = source.snapshot();
        let stop = CancellationToken::new();
        let (s, src) = (stop.clone(), source.clone());
        let task = tokio::spawn(async move {
            let mut acc = Sampled::default();
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                let out = client.load(std::sync::atomic::Ordering::Relaxed);
                let snap = src.snapshot();
                let held: u64 = snap.workers.iter().map(|w| w.in_flight).sum();
                acc.n += 1;
                acc.client += out as f64;
                acc.in_flight += (held + snap.queue_depth as u64) as f64;
                acc.queue += snap.queue_depth as f64;
                acc.queue_max = acc.queue_max.max(snap.queue_depth as u64);
                for w in &snap.workers {
                    *acc.per_worker.entry(w.id.clone()).or_default() += w.in_flight as f64;
                }
            }
            acc
        });
        BatonSampler {
            stop,
            task,
            before,
            source,
        }
    }

    /// Stop; the level's sample and each studio's counters over it.
    /// `requests`: what the client sent.
    async fn stop(
        self,
        requests: u64,
    ) -> (
        BatonSample,
        std::collections::BTreeMap<String, BalancerDelta>,
    ) {
        self.stop.cancel();
        let acc = self.task.await.unwrap_or_default();
        let after = self.source.snapshot();
        let n = acc.n.max(1) as f64;
        let mut attempts = 0;
        let mut deltas = std::collections::BTreeMap::new();
        for w in &after.workers {
            let b = self.before.workers.iter().find(|x| x.id == w.id);
            let sub = |f: fn(&crate::balancer::WorkerStats) -> u64| {
                f(w).saturating_sub(b.map(f).unwrap_or(0))
            };
            let map = |now: &std::collections::BTreeMap<crate::balancer::Failure, u64>,
                       then: Option<&std::collections::BTreeMap<crate::balancer::Failure, u64>>| {
                now.iter()
                    .map(|(k, v)| {
                        let old = then.and_then(|t| t.get(k)).copied().unwrap_or(0);
                        (k.as_str().to_string(), v.saturating_sub(old))
                    })
                    .filter(|(_, v)| *v > 0)
                    .collect()
            };
            let requests = sub(|x| x.requests);
            attempts += requests;
            deltas.insert(
                w.id.clone(),
                BalancerDelta {
                    requests,
                    successes: sub(|x| x.successes),
                    failures: map(&w.failures, b.map(|b| &b.failures)),
                    ejections: map(&w.ejections, b.map(|b| &b.ejections)),
                    state: w.state.as_str().to_string(),
                    in_flight_avg: acc.per_worker.get(&w.id).copied().unwrap_or(0.0) / n,
                    slots: w.slots,
                    slots_declared: w.slots_declared,
                    last_error: w.last_error.clone(),
                },
            );
        }
        let sample = BatonSample {
            samples: acc.n,
            in_flight_avg: acc.in_flight / n,
            client_in_flight_avg: acc.client / n,
            queue_avg: acc.queue / n,
            queue_max: acc.queue_max,
            attempts_per_request: if requests == 0 {
                0.0
            } else {
                attempts as f64 / requests as f64
            },
            retries: after.retries.saturating_sub(self.before.retries),
            rejected: (after.rejected_queue_full + after.rejected_queue_timeout).saturating_sub(
                self.before.rejected_queue_full + self.before.rejected_queue_timeout,
            ),
        };
        (sample, deltas)
    }
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
            let pid = sysinfo::get_current_pid().ok();
            let own = |sys: &mut sysinfo::System| {
                if let Some(p) = pid {
                    sys.refresh_processes_specifics(
                        sysinfo::ProcessesToUpdate::Some(&[p]),
                        false,
                        sysinfo::ProcessRefreshKind::nothing().with_cpu(),
                    );
                }
            };
            sys.refresh_cpu_usage();
            own(&mut sys);
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64;
            let (mut sum, mut n, mut max, mut mem, mut mine) = (0.0, 0u32, 0.0f64, 0.0f64, 0.0);
            loop {
                tokio::select! {
                    _ = s.cancelled() => break,
                    _ = tokio::time::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL.max(Duration::from_millis(500))) => {}
                }
                sys.refresh_cpu_usage();
                sys.refresh_memory();
                own(&mut sys);
                let cpu = f64::from(sys.global_cpu_usage());
                sum += cpu;
                n += 1;
                max = max.max(cpu);
                mem = mem.max(sys.used_memory() as f64 / 1e9);
                mine += pid
                    .and_then(|p| sys.process(p))
                    .map(|p| f64::from(p.cpu_usage()) / cores)
                    .unwrap_or(0.0);
            }
            let avg = |x: f64| if n == 0 { 0.0 } else { x / f64::from(n) };
            HostUsage {
                cpu_avg_percent: avg(sum),
                cpu_max_percent: max,
                memory_used_gb: mem,
                process_cpu_avg_percent: avg(mine),
            }
        });
        HostSampler { stop, task }
    }

    async fn stop(self) -> HostUsage {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}
