//! `baton batch`: process a folder of documents across the pool.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use baton::batch;
use baton::engine::jobs::{JobResult, JobUpdate};
use baton::engine::{BatchRequest, Options as EngineOptions, WhenMissing};
use clap::{Args, ValueEnum};

use super::follow::{self, Interrupt};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LongArg {
    Truncate,
    Split,
}

#[derive(Args, Debug)]
pub struct BatchArgs {
    /// Folder of .txt, .md and .pdf documents
    #[arg(long, required_unless_present_any = ["list_presets", "resume", "retry_failed"])]
    input: Option<PathBuf>,
    /// Prompt preset (see --list-presets)
    #[arg(long, default_value = "research")]
    preset: String,
    /// TOML file adding or replacing presets
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Output folder: one Markdown file per document and results.jsonl
    #[arg(short, long, required_unless_present_any = ["list_presets", "resume", "retry_failed"])]
    output: Option<PathBuf>,
    /// Workers file (default: the platform config dir's workers.json)
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Send the tasks to any OpenAI-compatible endpoint instead (base URL)
    #[arg(long, conflicts_with = "config")]
    url: Option<String>,
    /// Model to ask for (default: the first worker's)
    #[arg(long)]
    model: Option<String>,
    /// Tasks in flight (default: the pool's total slots)
    #[arg(long)]
    concurrency: Option<usize>,
    /// Longest document (part) sent, in characters (about 4 per token)
    #[arg(long, default_value_t = 24_000)]
    max_chars: usize,
    /// What to do with longer documents
    #[arg(long, value_enum, default_value = "truncate")]
    long_docs: LongArg,
    /// Attempts per task before it is marked failed
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    #[arg(long)]
    max_tokens: Option<u32>,
    /// List the presets and exit
    #[arg(long)]
    list_presets: bool,
    /// Resume job ID with its saved settings
    #[arg(long, value_name = "JOB")]
    resume: Option<i64>,
    /// Put job ID's failed tasks back in the queue and run it
    #[arg(long, value_name = "JOB")]
    retry_failed: Option<i64>,
}

/// The progress bar, drawn from the engine's job events.
struct Console {
    bar: Option<indicatif::ProgressBar>,
}

impl Console {
    fn show(&self, u: &JobUpdate) {
        match u {
            JobUpdate::Note { line } => match &self.bar {
                Some(b) => b.println(line),
                None => eprintln!("{line}"),
            },
            JobUpdate::Progress {
                done,
                total,
                ok,
                failed,
                ..
            } => match &self.bar {
                Some(b) => {
                    b.set_length(total.unwrap_or(0));
                    b.set_position(*done);
                    let per_min = *ok as f64 * 60.0 / b.elapsed().as_secs_f64().max(0.001);
                    b.set_message(format!("{failed} failed, {per_min:.0} tasks/min"));
                }
                None => eprintln!("{ok} done, {failed} failed"),
            },
            _ => {}
        }
    }
}

pub async fn run(a: BatchArgs) -> anyhow::Result<ExitCode> {
    if a.list_presets {
        let presets = batch::presets::load(a.prompts.as_deref())?;
        for (name, p) in presets {
            println!(
                "{name:<12} {} prompt(s)  {}",
                p.prompts.len(),
                p.description
            );
            for q in p.prompts {
                println!("    {:<14} {}", q.id, q.title);
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let engine = match follow::open(EngineOptions {
        config_path: a.config.clone(),
        // Batch needs real studios (or --url): no simulated stand-ins.
        when_missing: WhenMissing::FirstRun,
        no_pool: a.url.is_some(),
        ..EngineOptions::default()
    })
    .await?
    {
        Ok(e) => e,
        Err(code) => return Ok(code),
    };
    if a.url.is_none() && engine.config().workers.is_empty() {
        let path = super::config_path(a.config.clone())?;
        eprintln!(
            "error: no workers in {}\n(batch sends its tasks through the workers in that file, or to --url)",
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let req = BatchRequest {
        input: a.input.clone(),
        out_dir: a.output.clone(),
        preset: Some(a.preset.clone()),
        prompts_file: a.prompts.clone(),
        model: a.model.clone(),
        concurrency: a.concurrency,
        max_chars: Some(a.max_chars),
        split_long_docs: matches!(a.long_docs, LongArg::Split),
        max_attempts: Some(a.max_attempts),
        max_tokens: a.max_tokens,
        resume: a.resume,
        retry_failed: a.retry_failed,
        url: a.url.clone(),
        url_api_key: std::env::var(baton::secrets::BALANCER_KEY_ENV).ok(),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tasks  {msg}  ETA {eta}")
                .expect("valid template"),
        );
        b
    });
    let console = Console { bar: bar.clone() };
    let job = follow::run_job(
        &engine,
        || engine.start_batch(req),
        Interrupt {
            first: "Stopping: no new tasks; waiting for the running ones (Ctrl-C again to abort them).",
            second: Some("Aborting the running tasks; they stay queued for the next run."),
        },
        |u| console.show(u),
    )
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let s = match (job.result, job.error) {
        (Some(JobResult::Batch(s)), _) => s,
        (_, Some(e)) => return Err(follow::error(&e)),
        _ => return Ok(ExitCode::from(130)),
    };
    println!(
        "\nBatch job {}: {} tasks: {} done, {} failed, {} pending; ran {} in {:.1} s ({:.1} tasks/min)",
        s.job_id, s.tasks, s.done, s.failed, s.pending, s.ran_now, s.elapsed_s, s.tasks_per_minute
    );
    let total: u64 = s.per_worker.values().sum();
    for (w, n) in &s.per_worker {
        println!(
            "  {w:<24} {n:>5} tasks  {:>5.1}%",
            100.0 * *n as f64 / total.max(1) as f64
        );
    }
    println!(
        "Results: {} (one .md per document, results.jsonl)",
        s.out_dir.display()
    );
    if s.failed > 0 {
        println!(
            "Retry the failed tasks with: baton batch --retry-failed {}",
            s.job_id
        );
    }
    if s.interrupted || s.pending > 0 {
        println!("Resume with: baton batch --resume {}", s.job_id);
        return Ok(ExitCode::from(130));
    }
    Ok(if s.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
