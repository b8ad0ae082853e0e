//! `baton bench`: the user's benchmark, through Baton's balancer or any URL.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use baton::bench::report::BenchResult;
use baton::bench::run::{self, Gate, Mode, Observer, Plan, Target};
use baton::config::Config;
use baton::sim::{self, SimConfig, SimHandle};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Concurrency,
    Scaling,
    Both,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Workers file (default: the platform config dir's workers.json; when
    /// there is none, simulated studios are benchmarked)
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Benchmark any OpenAI-compatible endpoint instead (base URL, e.g. http://host:1234/v1)
    #[arg(long, conflicts_with = "config")]
    url: Option<String>,
    /// Environment variable holding the API key for --url
    #[arg(long, requires = "url")]
    api_key_env: Option<String>,
    /// Benchmark this many built-in simulated studios
    #[arg(long, value_name = "N", conflicts_with_all = ["config", "url"])]
    simulate: Option<usize>,
    #[arg(long, value_enum, default_value = "both")]
    mode: ModeArg,
    /// Requests per level (default 100, or a 4 s run on simulated studios)
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Seconds per level, instead of a request count
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, num_args = 1.., value_name = "N")]
    concurrency_levels: Vec<usize>,
    #[arg(long, num_args = 1.., value_name = "N")]
    worker_counts: Vec<usize>,
    /// Results file (default: baton-results/run-<id>.json); charts go next to it
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Output tokens asked per request
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Model to ask for (default: the first worker's)
    #[arg(long)]
    model: Option<String>,
    #[arg(long, conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// A file of prompts, one per line, used in turn
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    /// Warm-up requests before each level (default: one per client)
    #[arg(long)]
    warmup: Option<u64>,
    /// Measure each level this many times
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Drop workers that fail preflight (loudly) instead of refusing to start
    #[arg(long)]
    exclude_unhealthy: bool,
    #[arg(long, conflicts_with = "exclude_unhealthy")]
    skip_preflight: bool,
    /// Name this run in `baton runs`
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    no_charts: bool,
}

/// Progress bars on a terminal, plain lines otherwise.
struct Console {
    bar: Mutex<Option<indicatif::ProgressBar>>,
    tty: bool,
}

impl Observer for Console {
    fn note(&self, line: &str) {
        eprintln!("{line}");
    }
    fn level_started(&self, label: &str, planned: Option<u64>, duration: Option<Duration>) {
        if !self.tty {
            eprintln!("{label}: running...");
            return;
        }
        let bar = match (planned, duration) {
            (Some(n), _) => indicatif::ProgressBar::new(n),
            _ => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>32} {bar:30} {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        *self.bar.lock().expect("bar lock") = Some(bar);
    }
    fn progress(&self, ok: u64, failed: u64) {
        if let Some(b) = self.bar.lock().expect("bar lock").as_ref() {
            b.set_position(ok + failed);
            b.set_message(if failed > 0 {
                format!("{failed} failed")
            } else {
                String::new()
            });
        }
    }
    fn level_finished(&self, label: &str, summary: &str) {
        if let Some(b) = self.bar.lock().expect("bar lock").take() {
            b.finish_and_clear();
        }
        eprintln!("{label:>32}: {summary}");
    }
}

/// Identical simulated studios, so the scaling sweep shows clean 1x/2x/3x.
async fn simulated(n: usize) -> anyhow::Result<(Config, Vec<SimHandle>)> {
    let studio = |i: usize| SimConfig {
        slots: 4,
        tokens_per_second: 80.0,
        ttft: Duration::from_millis(100),
        seed: i as u64 + 1,
        ..SimConfig::default()
    };
    Ok(sim::start_pool((0..n).map(studio).collect()).await?)
}

pub async fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    // What to benchmark.
    let (target, _sims, simulated_pool) = if let Some(url) = &a.url {
        let key = match &a.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .with_context(|| format!("environment variable {var} is not set"))?,
            ),
            None => None,
        };
        (
            Target::Url {
                url: url.clone(),
                api_key: key,
            },
            Vec::new(),
            false,
        )
    } else if let Some(n) = a.simulate {
        let (c, s) = simulated(n.max(1)).await?;
        (Target::Balancer(c), s, true)
    } else {
        let path = super::config_path(a.config.clone())?;
        if a.config.is_none() && !path.exists() {
            eprintln!(
                "No workers file at {} (pass -c FILE for real studios): benchmarking 3 simulated studios.",
                path.display()
            );
            let (c, s) = simulated(3).await?;
            (Target::Balancer(c), s, true)
        } else {
            match Config::load(&path) {
                Ok(c) => (Target::Balancer(c), Vec::new(), false),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    let model = match (&a.model, &target) {
        (Some(m), _) => m.clone(),
        (None, Target::Balancer(c)) => c
            .enabled_workers()
            .next()
            .map(|w| w.model.clone())
            .context("the workers file has no enabled workers")?,
        (None, Target::Url { .. }) => anyhow::bail!("--url needs --model (the model to ask for)"),
    };
    let prompts = match (&a.prompt, &a.prompts_file) {
        (Some(p), _) => vec![p.clone()],
        (_, Some(f)) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading prompts from {}", f.display()))?;
            let v: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            if v.is_empty() {
                anyhow::bail!("{}: no prompts (one per line expected)", f.display());
            }
            v
        }
        _ => Vec::new(),
    };
    // Simulated pools get a short run so the whole job takes under a minute.
    let duration =
        a.duration
            .map(Duration::from_secs_f64)
            .or(if simulated_pool && a.requests.is_none() {
                Some(Duration::from_secs(4))
            } else {
                None
            });
    let levels = if !a.concurrency_levels.is_empty() {
        a.concurrency_levels.clone()
    } else if simulated_pool {
        vec![1, 4, 8, 16, 24]
    } else {
        vec![1, 5, 10, 20, 50, 100]
    };
    let counts = if !a.worker_counts.is_empty() {
        a.worker_counts.clone()
    } else {
        vec![1, 2, 3, 5, 10]
    };
    let plan = Plan {
        mode: match a.mode {
            ModeArg::Concurrency => Mode::Concurrency,
            ModeArg::Scaling => Mode::Scaling,
            ModeArg::Both => Mode::Both,
        },
        target,
        model,
        max_tokens: a
            .max_tokens
            .unwrap_or(if simulated_pool { 32 } else { 128 }),
        prompts,
        requests: a.requests,
        duration,
        warmup_requests: a.warmup.unwrap_or(1),
        repeat: a.repeat.max(1),
        concurrency_levels: levels,
        worker_counts: counts,
        gate: if a.skip_preflight {
            Gate::Skip
        } else if a.exclude_unhealthy {
            Gate::ExcludeUnhealthy
        } else {
            Gate::Require
        },
    };
    let obs = Arc::new(Console {
        bar: Mutex::new(None),
        tty: std::io::stderr().is_terminal(),
    });
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nInterrupted: keeping the levels finished so far.");
            c2.cancel();
        }
    });
    let result = match run::run(&plan, obs, cancel).await {
        Ok(r) => r,
        Err(e @ run::BenchError::PreflightFailed(_))
        | Err(e @ run::BenchError::NothingHealthy(_)) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    let saved = save(
        &result,
        a.output.as_deref(),
        a.label.as_deref(),
        !a.no_charts,
    )?;
    print_summary(&result);
    println!("\n{saved}");
    Ok(if result.interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Store the run, write the JSON and the charts; returns what to tell the user.
fn save(
    result: &BenchResult,
    output: Option<&Path>,
    label: Option<&str>,
    charts: bool,
) -> anyhow::Result<String> {
    let id = match baton::store::Store::open_default().and_then(|s| s.save_run(result, label)) {
        Ok(id) => Some(id),
        Err(e) => {
            eprintln!("warning: the run was not kept in the history: {e}");
            None
        }
    };
    let path = match output {
        Some(p) => p.to_path_buf(),
        None => PathBuf::from("baton-results").join(match id {
            Some(id) => format!("run-{id}.json"),
            None => format!("run-{}.json", result.started_at),
        }),
    };
    baton::files::write_atomic(
        &path,
        (serde_json::to_string_pretty(result)? + "\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    let mut msg = format!("Results: {}", path.display());
    if let Some(id) = id {
        msg += &format!("  (run {id} in `baton runs`)");
    }
    if charts {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("run")
            .to_string();
        let dir = path.with_file_name(format!("{stem}-charts"));
        let name = label
            .map(str::to_string)
            .unwrap_or_else(|| id.map(|i| format!("run {i}")).unwrap_or(stem));
        let files = baton::chart::write_all(&[(name, result)], &dir)?;
        msg += &format!(
            "\nCharts:  {} ({} files: {})",
            dir.display(),
            files.len(),
            files
                .iter()
                .filter_map(|f| f.file_name()?.to_str())
                .filter(|f| f.ends_with(".png"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(msg)
}

fn print_summary(r: &BenchResult) {
    if !r.concurrency_benchmark.is_empty() {
        println!("\nConcurrency benchmark ({})", r.settings.model);
        println!(
            "  {:>11} {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "concurrency", "req/s", "ok %", "avg s", "p95 s", "TTFT ms", "tok/s"
        );
        for l in &r.concurrency_benchmark {
            println!(
                "  {:>11} {:>9.2} {:>8.1} {:>8.2} {:>8.2} {:>8.0} {:>9.0}{}",
                l.concurrency,
                l.requests_per_second,
                l.success_rate,
                l.avg_response_time,
                l.p95_response_time,
                l.ttft_avg * 1000.0,
                l.output_tokens_per_second,
                if l.littles_law.client_bound {
                    "  client-bound!"
                } else {
                    ""
                }
            );
        }
    }
    if !r.worker_scaling_benchmark.is_empty() {
        println!("\nWorker scaling benchmark");
        println!(
            "  {:>7} {:>11} {:>9} {:>8} {:>10}",
            "workers", "concurrency", "req/s", "speedup", "efficiency"
        );
        for s in &r.worker_scaling_benchmark {
            println!(
                "  {:>7} {:>11} {:>9.2} {:>7.2}x {:>9.0}%",
                s.workers,
                s.concurrency,
                s.requests_per_second,
                s.speedup,
                s.scaling_efficiency * 100.0
            );
        }
    }
    if r.interrupted {
        println!("\n(interrupted: later levels were not run)");
    }
}
