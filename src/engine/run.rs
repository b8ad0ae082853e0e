//! What each job does. Each reports through its [`Reporter`] only, so the
//! CLI, the control API and the tray all see the same progress.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::jobs::{JobError, JobId, JobKind, JobResult, JobUpdate, PROGRESS_EVERY, Reporter};
use super::{Engine, EngineError};
use crate::batch::{self, LongDocs};
use crate::bench::run::{self as bench_run, Gate, Mode, Plan, Target};
use crate::config::Config;
use crate::discover;
use crate::preflight::{self, Thresholds};

/// A benchmark as the dashboard's form (and the CLI's flags) describe it.
/// Unset fields get the CLI's defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchRequest {
    pub mode: Option<Mode>,
    /// Requests per level.
    pub requests: Option<u64>,
    /// Seconds per level, instead of a request count.
    pub duration_s: Option<f64>,
    pub concurrency_levels: Vec<usize>,
    pub worker_counts: Vec<usize>,
    pub max_tokens: Option<u32>,
    pub model: Option<String>,
    pub prompt: Option<String>,
    /// Several prompts used in turn (the CLI's `--prompts-file`).
    pub prompts: Vec<String>,
    pub warmup: Option<u64>,
    pub repeat: Option<u32>,
    pub label: Option<String>,
    pub gate: Option<Gate>,
    /// Benchmark this OpenAI endpoint instead of the pool (the CLI's `--url`).
    pub url: Option<String>,
    #[serde(skip)]
    pub url_api_key: Option<String>,
    /// The service level of the capacity mode (`None`: the defaults, 2 s
    /// and 20 tok/s; an absent limit inside it is not applied).
    pub slo: Option<crate::bench::report::Slo>,
    /// Benchmark only these studios of the pool (the CLI's `--only`).
    pub only: Vec<String>,
}

impl BenchRequest {
    /// The plan for this engine's pool (or the URL).
    fn plan(self, config: &Config, simulated: bool) -> Result<Plan, EngineError> {
        let target = match &self.url {
            Some(u) => Target::Url {
                url: u.clone(),
                api_key: self.url_api_key.clone(),
            },
            None => {
                if config.enabled_workers().next().is_none() {
                    return Err(EngineError::Invalid(
                        "the pool has no enabled studios to benchmark\n  fix: add or enable a studio first".into(),
                    ));
                }
                Target::Balancer(only(config, &self.only)?)
            }
        };
        let model = match (&self.model, &target) {
            (Some(m), _) => m.clone(),
            (None, Target::Balancer(c)) => c
                .enabled_workers()
                .next()
                .map(|w| w.model.clone())
                .unwrap_or_default(),
            (None, Target::Url { .. }) => {
                return Err(EngineError::Invalid(
                    "a URL benchmark needs the model to ask for\n  fix: pass --model".into(),
                ));
            }
        };
        if self.duration_s.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
            return Err(EngineError::Invalid(
                "the duration must be a number of seconds above 0".into(),
            ));
        }
        if self.concurrency_levels.contains(&0) || self.worker_counts.contains(&0) {
            return Err(EngineError::Invalid(
                "concurrency levels and worker counts start at 1".into(),
            ));
        }
        if let Some(slo) = &self.slo {
            let bad = |x: Option<f64>| x.is_some_and(|v| !(v > 0.0 && v.is_finite()));
            if bad(slo.ttft_p95_ms) || bad(slo.tokens_per_s) {
                return Err(EngineError::Invalid(
                    "a service level's limits must be numbers above 0\n  fix: leave a limit out to not apply it".into(),
                ));
            }
        }
        let simulated = simulated && self.url.is_none();
        let mut prompts = self.prompts;
        if let Some(p) = self.prompt {
            prompts = vec![p];
        }
        Ok(Plan {
            mode: self.mode.unwrap_or(Mode::Both),
            target,
            model,
            // Simulated pools get short runs so the whole job takes under a minute.
            max_tokens: self.max_tokens.unwrap_or(if simulated { 32 } else { 128 }),
            prompts,
            requests: self.requests,
            duration: self
                .duration_s
                .map(Duration::from_secs_f64)
                // A capacity point is sized by its answers, not a time.
                .or(
                    (simulated && self.requests.is_none() && self.mode != Some(Mode::Capacity))
                        .then(|| Duration::from_secs(4)),
                ),
            warmup_requests: self.warmup.unwrap_or(1),
            repeat: self.repeat.unwrap_or(1).max(1),
            concurrency_levels: if !self.concurrency_levels.is_empty() {
                self.concurrency_levels
            } else if simulated {
                vec![1, 4, 8, 16, 24]
            } else {
                vec![1, 5, 10, 20, 50, 100]
            },
            worker_counts: if !self.worker_counts.is_empty() {
                self.worker_counts
            } else {
                vec![1, 2, 3, 5, 10]
            },
            gate: self.gate.unwrap_or(Gate::Require),
            probe_studios: true,
            max_connections: None,
            slo: self.slo.unwrap_or(crate::bench::capacity::DEFAULT_SLO),
        })
    }
}

/// The pool narrowed to the studios named (all of them when none is).
fn only(config: &Config, ids: &[String]) -> Result<Config, EngineError> {
    if ids.is_empty() {
        return Ok(config.clone());
    }
    let known: Vec<&str> = config.enabled_workers().map(|w| w.id.as_str()).collect();
    if let Some(bad) = ids.iter().find(|id| !known.contains(&id.as_str())) {
        return Err(EngineError::Invalid(format!(
            "--only: no enabled studio `{bad}` in the pool\n  fix: name some of {}",
            known.join(", ")
        )));
    }
    let mut narrowed = config.clone();
    narrowed.workers.retain(|w| ids.contains(&w.id));
    Ok(narrowed)
}

/// A discovery as the dashboard (and the CLI) ask for it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoverRequest {
    /// Networks to scan; empty = this machine's own subnets.
    pub cidrs: Vec<String>,
    /// Ports to probe; empty = the usual ones of LLM servers.
    pub ports: Vec<u16>,
    /// Allow more than a /22.
    pub force: bool,
    /// Skip the mDNS browse.
    pub no_mdns: bool,
    /// TCP connect timeout per probe, ms.
    pub timeout_ms: Option<u64>,
}

impl DiscoverRequest {
    pub fn options(&self) -> Result<discover::Options, EngineError> {
        let mut cidrs = Vec::new();
        for c in &self.cidrs {
            let c = c.trim();
            if c.is_empty() {
                continue;
            }
            cidrs.push(c.parse().map_err(|_| {
                EngineError::Invalid(format!(
                    "`{c}` is not a network\n  fix: write it as address/prefix, e.g. 192.168.1.0/24"
                ))
            })?);
        }
        let d = discover::Options::default();
        let opts = discover::Options {
            cidrs,
            ports: if self.ports.is_empty() {
                discover::DEFAULT_PORTS.to_vec()
            } else {
                self.ports.clone()
            },
            connect_timeout: self
                .timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.connect_timeout),
            force: self.force,
            mdns: !self.no_mdns,
            ..d
        };
        discover::targets(&opts).map_err(|e| EngineError::Invalid(e.to_string()))?;
        Ok(opts)
    }
}

/// A batch job as the dashboard (and the CLI) ask for it. With `resume` or
/// `retry_failed`, the job's saved settings are used and the rest ignored.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchRequest {
    pub input: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub preset: Option<String>,
    pub prompts_file: Option<PathBuf>,
    pub model: Option<String>,
    pub concurrency: Option<usize>,
    pub max_chars: Option<usize>,
    pub split_long_docs: bool,
    pub max_attempts: Option<u32>,
    pub max_tokens: Option<u32>,
    pub resume: Option<i64>,
    pub retry_failed: Option<i64>,
    /// Send the tasks to this OpenAI endpoint instead of the pool.
    pub url: Option<String>,
    #[serde(skip)]
    pub url_api_key: Option<String>,
}

impl Engine {
    /// Run the preflight as a job.
    pub fn start_preflight(&self, t: Thresholds) -> Result<JobId, EngineError> {
        let config = self.config();
        if config.enabled_workers().next().is_none() {
            return Err(EngineError::Invalid(
                "there are no enabled studios to check\n  fix: add one (discover, or add it by hand)".into(),
            ));
        }
        let r = self.begin(JobKind::Preflight)?;
        let id = r.id;
        let engine = self.clone();
        tokio::spawn(async move {
            let on_host = |h: &preflight::HostReport| {
                for c in &h.checks {
                    r.send(JobUpdate::Check {
                        worker: h.worker.clone(),
                        host: h.host.clone(),
                        check: c.clone(),
                    });
                }
            };
            // While the balancer serves, its one-at-a-time studios are
            // asked over HTTP only between requests.
            let gate = engine.quiet_gate().await;
            let report = tokio::select! {
                rep = preflight::run_observed(&config, &t, &on_host, gate.as_ref().map(|g| g as &dyn preflight::HttpGate)) => rep,
                _ = r.cancel.cancelled() => { r.send(JobUpdate::Cancelled); return; }
            };
            // Kept for the dashboard and the benchmark: the latest as a
            // file, and every report in the history store.
            if let Err(e) = preflight::save_last(&report) {
                tracing::warn!("could not keep the preflight report: {e}");
            }
            match engine.store().and_then(|s| Ok(s.save_preflight(&report)?)) {
                Ok(_) => {}
                Err(e) => tracing::warn!("could not record the preflight in the history: {e}"),
            }
            *engine.inner.last_preflight.lock().expect("lock") = Some(report.clone());
            r.finish(JobResult::Preflight(report));
        });
        Ok(id)
    }

    /// Scan the LAN as a job.
    pub fn start_discover(&self, req: DiscoverRequest) -> Result<JobId, EngineError> {
        let opts = req.options()?;
        let r = self.begin(JobKind::Discover)?;
        let id = r.id;
        tokio::spawn(async move {
            let last = Mutex::new(Instant::now() - PROGRESS_EVERY);
            let r2 = r.clone();
            let progress: discover::Progress = Arc::new(move |done, total, found| {
                let mut l = last.lock().expect("lock");
                if done == total || l.elapsed() >= PROGRESS_EVERY {
                    *l = Instant::now();
                    r2.send(JobUpdate::Progress {
                        done,
                        total: Some(total),
                        ok: found as u64,
                        failed: 0,
                        label: None,
                    });
                }
            });
            let outcome = tokio::select! {
                d = discover::run(&opts, Some(progress)) => d,
                _ = r.cancel.cancelled() => { r.send(JobUpdate::Cancelled); return; }
            };
            match outcome {
                Ok(d) => {
                    for f in &d.found {
                        r.send(JobUpdate::Found { server: f.clone() });
                    }
                    r.finish(JobResult::Discover(d));
                }
                Err(e) => {
                    let mut error = JobError::from_text(&e.to_string());
                    error.code = e.code();
                    r.fail(error);
                }
            }
        });
        Ok(id)
    }

    /// Run a benchmark as a job; the run is kept in the history store.
    pub fn start_bench(&self, req: BenchRequest) -> Result<JobId, EngineError> {
        let label = req.label.clone();
        // A run over part of the pool checks the whole pool's prediction.
        let subset = (!req.only.is_empty()).then(|| (self.config(), req.only.clone()));
        let plan = req.plan(&self.config(), self.config_info().simulated)?;
        let r = self.begin(JobKind::Bench)?;
        let id = r.id;
        let engine = self.clone();
        tokio::spawn(async move {
            let obs = Arc::new(BenchProgress {
                r: r.clone(),
                last: Mutex::new(Instant::now() - PROGRESS_EVERY),
            });
            match bench_run::run(&plan, obs, r.cancel.clone()).await {
                Ok(mut result) => {
                    if let (Some((full, ids)), Some(c)) = (&subset, result.capacity.as_mut()) {
                        c.checked = engine.store().ok().and_then(|s| {
                            crate::bench::capacity::record::check(&s, full, ids, c)
                                .ok()
                                .flatten()
                        });
                    }
                    let run_id = match engine
                        .store()
                        .and_then(|s| Ok(s.save_run(&result, label.as_deref())?))
                    {
                        Ok(id) => Some(id),
                        Err(e) => {
                            r.note(format!("warning: the run was not kept in the history: {e}"));
                            None
                        }
                    };
                    r.finish(JobResult::Bench {
                        run_id,
                        result: Box::new(result),
                    });
                }
                Err(e) => r.fail(JobError::from_text(&e.to_string())),
            }
        });
        Ok(id)
    }

    /// Run (or resume) a batch job. A first cancel stops taking tasks and
    /// lets the running ones finish; a second aborts them (they stay queued).
    pub fn start_batch(&self, req: BatchRequest) -> Result<JobId, EngineError> {
        let (opts, target) = self.batch_plan(req)?;
        let r = self.begin(JobKind::Batch)?;
        let id = r.id;
        let store_path = self.store_path().to_path_buf();
        tokio::spawn(async move {
            let obs = Arc::new(BatchProgress {
                r: r.clone(),
                base: Default::default(),
                total: Default::default(),
                last: Mutex::new(Instant::now() - PROGRESS_EVERY),
            });
            let stop = r.cancel.clone();
            let abort = r.abort.clone();
            match batch::run(&opts, &target, &store_path, obs, stop, abort).await {
                Ok(s) => r.finish(JobResult::Batch(s)),
                Err(e) => r.fail(JobError::from_text(&e.to_string())),
            }
        });
        Ok(id)
    }

    fn batch_plan(&self, req: BatchRequest) -> Result<(batch::Options, Target), EngineError> {
        let mut saved = None;
        let (mut input, mut out_dir, mut preset) =
            (req.input.clone(), req.out_dir.clone(), req.preset.clone());
        if let Some(job) = req.resume.or(req.retry_failed) {
            let store = self.store()?;
            let (i, o, p, params) =
                batch::job_options(&store, job).map_err(|e| EngineError::Invalid(e.to_string()))?;
            (input, out_dir, preset, saved) = (Some(i), Some(o), Some(p), Some(params));
        }
        let saved_str = |k: &str| {
            saved
                .as_ref()
                .and_then(|s: &serde_json::Value| s.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let saved_num = |k: &str| {
            saved
                .as_ref()
                .and_then(|s| s.get(k))
                .and_then(|v| v.as_u64())
        };
        let target = match &req.url {
            Some(u) => Target::Url {
                url: u.clone(),
                api_key: req.url_api_key.clone(),
            },
            None => {
                let c = self.config();
                if c.enabled_workers().next().is_none() {
                    return Err(EngineError::Invalid(
                        "the pool has no enabled studios\n  fix: add one, or pass --url".into(),
                    ));
                }
                Target::Balancer(c)
            }
        };
        let model = match (&req.model, saved_str("model"), &target) {
            (Some(m), _, _) => m.clone(),
            (None, Some(m), _) => m,
            (None, None, Target::Balancer(c)) => c
                .enabled_workers()
                .next()
                .map(|w| w.model.clone())
                .unwrap_or_default(),
            (None, None, Target::Url { .. }) => {
                return Err(EngineError::Invalid(
                    "a batch sent to a URL needs the model\n  fix: pass --model".into(),
                ));
            }
        };
        let need = |v: Option<PathBuf>, what: &str, flag: &str| {
            v.ok_or_else(|| {
                EngineError::Invalid(format!(
                    "the {what} folder is missing\n  fix: give it ({flag})"
                ))
            })
        };
        // A resumed job keeps the settings it was started with.
        let opts = batch::Options {
            input: need(input, "input", "--input")?,
            out_dir: need(out_dir, "output", "-o/--output")?,
            preset: preset.unwrap_or_else(|| "research".into()),
            prompts_file: req
                .prompts_file
                .clone()
                .or(saved_str("prompts_file").map(PathBuf::from)),
            model,
            concurrency: req.concurrency,
            max_chars: saved_num("max_chars")
                .map(|n| n as usize)
                .or(req.max_chars)
                .unwrap_or(24_000),
            long_docs: match (saved_str("long_docs").as_deref(), req.split_long_docs) {
                (Some("split"), _) | (None, true) => LongDocs::Split,
                _ => LongDocs::Truncate,
            },
            max_attempts: saved_num("max_attempts")
                .map(|n| n as u32)
                .or(req.max_attempts)
                .unwrap_or(3),
            max_tokens: req.max_tokens.or(saved_num("max_tokens").map(|n| n as u32)),
            retry_failed: req.retry_failed.is_some(),
        };
        Ok((opts, target))
    }

    /// Register a job of `kind`, refusing a second one at once.
    pub(super) fn begin(&self, kind: JobKind) -> Result<Reporter, EngineError> {
        if let Some(id) = self.inner.jobs.running(kind) {
            return Err(EngineError::Busy(kind.as_str(), id));
        }
        Ok(self.inner.jobs.start(&self.inner.bus, kind))
    }
}

struct BenchProgress {
    r: Reporter,
    last: Mutex<Instant>,
}

impl bench_run::Observer for BenchProgress {
    fn note(&self, line: &str) {
        self.r.note(line);
    }
    fn level_started(&self, label: &str, planned: Option<u64>, duration: Option<Duration>) {
        self.r.send(JobUpdate::LevelStarted {
            label: label.to_string(),
            planned,
            duration_s: duration.map(|d| d.as_secs_f64()),
        });
    }
    fn progress(&self, ok: u64, failed: u64) {
        let mut l = self.last.lock().expect("lock");
        if l.elapsed() >= PROGRESS_EVERY {
            *l = Instant::now();
            self.r.send(JobUpdate::Progress {
                done: ok + failed,
                total: None,
                ok,
                failed,
                label: None,
            });
        }
    }
    fn level_finished(&self, label: &str, summary: &str) {
        self.r.send(JobUpdate::Level {
            label: label.to_string(),
            summary: summary.to_string(),
        });
    }
}

struct BatchProgress {
    r: Reporter,
    base: std::sync::atomic::AtomicU64,
    total: std::sync::atomic::AtomicU64,
    last: Mutex<Instant>,
}

impl batch::Observer for BatchProgress {
    fn note(&self, line: &str) {
        self.r.note(line);
    }
    fn started(&self, total: u64, already_done: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.base.store(already_done, Relaxed);
        self.total.store(total, Relaxed);
        self.r.send(JobUpdate::Progress {
            done: already_done,
            total: Some(total),
            ok: already_done,
            failed: 0,
            label: None,
        });
    }
    fn progress(&self, done: u64, failed: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let (base, total) = (self.base.load(Relaxed), self.total.load(Relaxed));
        let mut l = self.last.lock().expect("lock");
        if l.elapsed() >= PROGRESS_EVERY || base + done + failed >= total {
            *l = Instant::now();
            self.r.send(JobUpdate::Progress {
                done: base + done + failed,
                total: Some(total),
                ok: base + done,
                failed,
                label: None,
            });
        }
    }
}

/// Preflight's HTTP checks through the running balancer: see
/// [`crate::balancer::Quiet`].
pub(super) struct QuietGate(crate::balancer::Quiet);

/// How long preflight waits for a busy one-at-a-time studio to be idle.
const QUIET_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

impl preflight::HttpGate for QuietGate {
    fn enter<'a>(&'a self, worker: &'a str) -> preflight::GateEntry<'a> {
        Box::pin(async move {
            self.0
                .hold(worker, QUIET_PATIENCE)
                .await
                .map(|h| Box::new(h) as Box<dyn Send + 'a>)
        })
    }
}

impl Engine {
    /// The gate preflight goes through while the balancer runs.
    pub(super) async fn quiet_gate(&self) -> Option<QuietGate> {
        self.inner
            .running
            .lock()
            .await
            .as_ref()
            .map(|r| QuietGate(r.balancer.quiet_handle()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Options, WhenMissing};
    use std::time::{Duration, Instant};

    /// A studio that answers one request at a time (probes too) and ends a
    /// stream when another request arrives, like llama-cpp-python.
    fn single_threaded() -> crate::sim::SimConfig {
        crate::sim::SimConfig {
            kind: crate::studio::StudioKind::Openai,
            slots: 1,
            ttft: Duration::from_millis(20),
            tokens_per_second: 20.0,
            faults: crate::sim::Faults {
                serial: true,
                interrupt: true,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn preflight_while_serving_asks_a_busy_single_threaded_studio_only_between_requests() {
        let sim = crate::sim::start("127.0.0.1:0".parse().unwrap(), single_threaded())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("workers.json");
        let mut config = crate::config::Config {
            workers: vec![crate::sim::worker_for("solo", &sim)],
            ..Default::default()
        };
        config.balancer.listen = Some("127.0.0.1:0".parse().unwrap());
        std::fs::write(&file, config.to_text()).unwrap();
        let engine = Engine::open(Options {
            config_path: Some(file),
            when_missing: WhenMissing::FirstRun,
            store_path: Some(dir.path().join("h.sqlite3")),
            ..Options::default()
        })
        .await
        .unwrap();
        let url = engine.start_balancer().await.unwrap().url.unwrap();
        let balancer_ready = Instant::now();
        while engine
            .workers()
            .await
            .iter()
            .any(|w| w.status != crate::engine::WorkerStatus::Ready)
        {
            assert!(balancer_ready.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A two-second stream is inside the studio when the preflight starts.
        let stream = tokio::spawn(async move {
            let body = serde_json::json!({"model": crate::sim::DEFAULT_MODEL, "stream": true,
                "max_tokens": 40, "messages": [{"role": "user", "content": "tell me"}]});
            let r = reqwest::Client::new()
                .post(format!("{url}/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        });
        while sim.stats().active == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let id = engine.start_preflight(Thresholds::default()).unwrap();
        let job = engine.wait(id).await.unwrap();
        let text = stream.await.unwrap();
        assert!(
            text.contains("\"finish_reason\":\"length\"") && text.contains("[DONE]"),
            "the stream was cut: {text}"
        );
        assert_eq!(sim.stats().interrupted, 0);
        let Some(JobResult::Preflight(report)) = job.result else {
            panic!("{job:?}")
        };
        let status = |name: &str| {
            report.hosts[0]
                .checks
                .iter()
                .find(|c| c.name == name)
                .map(|c| c.status)
        };
        // Asked, and answered, once the stream was done.
        assert_eq!(
            status("models"),
            Some(crate::preflight::Status::Pass),
            "{report:?}"
        );
        assert_eq!(
            status("completion"),
            Some(crate::preflight::Status::Pass),
            "{report:?}"
        );
        let log = sim.log();
        for (i, a) in log.iter().enumerate() {
            let end = a.ended_ms.expect("ended");
            for b in &log[i + 1..] {
                assert!(
                    b.arrived_ms >= end,
                    "{} {} arrived while {} {} was inside: {log:?}",
                    b.method,
                    b.path,
                    a.method,
                    a.path
                );
            }
        }
        engine.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_studio_seen_answering_while_it_streams_is_learned_to_serve_http_concurrently() {
        // Two generic OpenAI servers (assumed one request at a time): one
        // really is, the other runs two generations at once.
        let serial = crate::sim::start("127.0.0.1:0".parse().unwrap(), {
            let mut c = single_threaded();
            c.slots = 2;
            c
        })
        .await
        .unwrap();
        let parallel = crate::sim::start(
            "127.0.0.1:0".parse().unwrap(),
            crate::sim::SimConfig {
                kind: crate::studio::StudioKind::Openai,
                slots: 2,
                ttft: Duration::from_millis(20),
                tokens_per_second: 40.0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let mut config = crate::config::Config {
            workers: vec![
                crate::sim::worker_for("serial", &serial),
                crate::sim::worker_for("parallel", &parallel),
            ],
            ..Default::default()
        };
        config.balancer.listen = Some("127.0.0.1:0".parse().unwrap());
        let b = crate::balancer::Balancer::start(&config, None, None)
            .await
            .unwrap();
        assert!(b.wait_all_ready(Duration::from_secs(5)).await);
        let concurrent = |id: &str| {
            b.stats()
                .workers
                .iter()
                .find(|w| w.id == id)
                .map(|w| w.http_concurrent)
                .unwrap()
        };
        assert!(!concurrent("serial") && !concurrent("parallel"), "by kind");
        // Overlapping streams on each studio.
        let client = reqwest::Client::new();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (client, url) = (client.clone(), b.url());
            tasks.push(tokio::spawn(async move {
                let body = serde_json::json!({"model": crate::sim::DEFAULT_MODEL, "stream": true,
                    "max_tokens": 12, "messages": [{"role": "user", "content": "go"}]});
                client
                    .post(format!("{url}/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(concurrent("parallel"), "{:?}", b.stats());
        // The one-at-a-time studio never answered while it streamed.
        assert!(!concurrent("serial"), "{:?}", b.stats());
    }
}
