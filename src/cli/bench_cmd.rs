//! `baton bench`: the user's benchmark, through Baton's balancer or any URL.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use baton::bench::report::{BenchResult, Slo};
use baton::bench::run::{Gate, Mode};
use baton::engine::jobs::{JobResult, JobUpdate};
use baton::engine::{BenchRequest, Options as EngineOptions, SimProfile};
use clap::{Args, ValueEnum};

use super::follow::{self, Interrupt};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    Concurrency,
    Scaling,
    Both,
    /// The most agents served at once under the service level (--slo-*)
    Capacity,
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
    /// Capacity mode: 95 of 100 first tokens within this time (e.g. 2s, 1500ms; off to not apply it)
    #[arg(long, value_name = "TIME", default_value = "2s", value_parser = parse_ttft)]
    slo_ttft_p95: Limit,
    /// Capacity mode: tokens per second each answer streams at least (median; off to not apply it)
    #[arg(long, value_name = "N", default_value = "20", value_parser = parse_rate)]
    slo_tokens_per_s: Limit,
    /// Benchmark only these studios of the pool (ids, comma-separated), e.g. to check a what-if
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "ID,ID",
        conflicts_with = "url"
    )]
    only: Vec<String>,
}

/// A service-level limit from the command line (`None`: off).
type Limit = Option<f64>;

/// `2s`, `1500ms`, `0.5s`, `1m`, or `off`, as milliseconds.
fn parse_ttft(text: &str) -> Result<Limit, String> {
    let t = text.trim();
    if t == "off" {
        return Ok(None);
    }
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else {
        return Err(format!(
            "`{t}` has no unit: write it as 2s or 1500ms (or off)"
        ));
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Some(v * scale)),
        _ => Err(format!(
            "`{t}` is not a time above zero: write it as 2s or 1500ms (or off)"
        )),
    }
}

/// `20`, `12.5`, or `off`.
fn parse_rate(text: &str) -> Result<Limit, String> {
    let t = text.trim();
    if t == "off" {
        return Ok(None);
    }
    match t.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(Some(v)),
        _ => Err(format!(
            "`{t}` is not a number of tokens per second above zero (e.g. 20, or off)"
        )),
    }
}

/// Progress bars on a terminal, plain lines otherwise, drawn from the
/// engine's job events.
struct Console {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
}

impl Console {
    fn show(&mut self, u: &JobUpdate) {
        match u {
            JobUpdate::Note { line } => match &self.bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            },
            JobUpdate::LevelStarted { label, planned, .. } => {
                if !self.tty {
                    eprintln!("{label}: running...");
                    return;
                }
                let bar = match planned {
                    Some(n) => indicatif::ProgressBar::new(*n),
                    None => indicatif::ProgressBar::new_spinner(),
                };
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>32} {bar:30} {pos}/{len} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                bar.set_prefix(label.clone());
                self.bar = Some(bar);
            }
            JobUpdate::Progress { ok, failed, .. } => {
                if let Some(b) = &self.bar {
                    b.set_position(ok + failed);
                    b.set_message(if *failed > 0 {
                        format!("{failed} failed")
                    } else {
                        String::new()
                    });
                }
            }
            JobUpdate::Level { label, summary } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("{label:>32}: {summary}");
            }
            _ => {}
        }
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<ExitCode> {
    // What to benchmark: a URL, simulated studios, or the workers file.
    let url_key = match &a.api_key_env {
        Some(var) => Some(
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?,
        ),
        None => None,
    };
    let mut opts = EngineOptions {
        config_path: a.config.clone(),
        simulate: a.simulate,
        sim_profile: SimProfile::Uniform,
        no_pool: a.url.is_some(),
        ..EngineOptions::default()
    };
    if a.url.is_none() && a.simulate.is_none() {
        let path = super::config_path(a.config.clone())?;
        if a.config.is_none() && !path.exists() {
            eprintln!(
                "No workers file at {} (pass -c FILE for real studios): benchmarking {} simulated studios.",
                path.display(),
                baton::engine::DEFAULT_SIMULATED
            );
        } else {
            if let Err(e) = baton::config::Config::load(&path) {
                eprintln!("error: {e}");
                return Ok(ExitCode::from(2));
            }
            // Only a file that exists: a missing default means "simulate".
            opts.config_path = Some(path);
        }
    }
    let engine = match follow::open(opts).await? {
        Ok(e) => e,
        Err(code) => return Ok(code),
    };
    let prompts = match &a.prompts_file {
        Some(f) => {
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
        None => Vec::new(),
    };
    let req = BenchRequest {
        mode: Some(match a.mode {
            ModeArg::Concurrency => Mode::Concurrency,
            ModeArg::Scaling => Mode::Scaling,
            ModeArg::Both => Mode::Both,
            ModeArg::Capacity => Mode::Capacity,
        }),
        requests: a.requests,
        duration_s: a.duration,
        concurrency_levels: a.concurrency_levels.clone(),
        worker_counts: a.worker_counts.clone(),
        max_tokens: a.max_tokens,
        model: a.model.clone(),
        prompt: a.prompt.clone(),
        prompts,
        warmup: a.warmup,
        repeat: Some(a.repeat),
        label: a.label.clone(),
        gate: Some(if a.skip_preflight {
            Gate::Skip
        } else if a.exclude_unhealthy {
            Gate::ExcludeUnhealthy
        } else {
            Gate::Require
        }),
        url: a.url.clone(),
        url_api_key: url_key,
        slo: Some(Slo {
            ttft_p95_ms: a.slo_ttft_p95,
            tokens_per_s: a.slo_tokens_per_s,
        }),
        only: a.only.clone(),
    };
    let mut console = Console {
        bar: None,
        tty: std::io::stderr().is_terminal(),
    };
    let job = follow::run_job(
        &engine,
        || engine.start_bench(req),
        Interrupt {
            first: "Interrupted: keeping the levels finished so far.",
            second: None,
        },
        |u| console.show(u),
    )
    .await?;
    if let Some(b) = console.bar.take() {
        b.finish_and_clear();
    }
    let (run_id, result) = match (job.result, job.error) {
        (Some(JobResult::Bench { run_id, result }), _) => (run_id, *result),
        (_, Some(e)) => {
            eprintln!("error: {}", follow::error(&e));
            return Ok(ExitCode::from(2));
        }
        _ => return Ok(ExitCode::from(130)),
    };
    let saved = save(
        &result,
        run_id,
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

/// Write the JSON and the charts of a run the engine kept as `id`;
/// returns what to tell the user.
fn save(
    result: &BenchResult,
    id: Option<i64>,
    output: Option<&Path>,
    label: Option<&str>,
    charts: bool,
) -> anyhow::Result<String> {
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
    // The capacity's sentence comes first: it is the answer to the question.
    if let Some(c) = &r.capacity {
        print!("{}", baton::bench::capacity::render(c));
    }
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
    // A capacity run has no sweep for the diagnosis to judge: only what it
    // found about the studios is worth printing.
    if let Some(d) = &r.diagnosis
        && (r.capacity.is_none() || !d.findings.is_empty())
    {
        print!("{}", baton::bench::diagnose::render(d));
    }
}
