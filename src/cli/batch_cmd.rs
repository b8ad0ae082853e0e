//! `baton batch`: process a folder of documents across the pool.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use baton::batch::{self, LongDocs, Observer, Options};
use baton::bench::run::Target;
use baton::config::Config;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

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

struct Console {
    bar: Option<indicatif::ProgressBar>,
    base: std::sync::atomic::AtomicU64,
}

impl Observer for Console {
    fn note(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
    fn started(&self, total: u64, already: u64) {
        self.base
            .store(already, std::sync::atomic::Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.set_length(total);
            b.set_position(already);
        }
    }
    fn progress(&self, done: u64, failed: u64) {
        let base = self.base.load(std::sync::atomic::Ordering::Relaxed);
        match &self.bar {
            Some(b) => {
                b.set_position(base + done + failed);
                let per_min = done as f64 * 60.0 / b.elapsed().as_secs_f64().max(0.001);
                b.set_message(format!("{failed} failed, {per_min:.0} tasks/min"));
            }
            None if (done + failed).is_multiple_of(10) => {
                eprintln!("{} done, {failed} failed", base + done)
            }
            None => {}
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
    let store_path = baton::store::default_path().context("no home directory for the job store")?;
    let (mut input, mut output, mut preset, mut saved) =
        (a.input.clone(), a.output.clone(), a.preset.clone(), None);
    if let Some(job) = a.resume.or(a.retry_failed) {
        let store = baton::store::Store::open(&store_path)?;
        let (i, o, p, params) = batch::job_options(&store, job)?;
        (input, output, preset, saved) = (Some(i), Some(o), p, Some(params));
    }
    let saved_str = |k: &str| {
        saved
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let saved_num = |k: &str| {
        saved
            .as_ref()
            .and_then(|s| s.get(k))
            .and_then(|v| v.as_u64())
    };
    let target = match &a.url {
        Some(u) => Target::Url {
            url: u.clone(),
            api_key: std::env::var(baton::secrets::BALANCER_KEY_ENV).ok(),
        },
        None => {
            let path = super::config_path(a.config.clone())?;
            match Config::load(&path) {
                Ok(c) => Target::Balancer(c),
                Err(e) => {
                    eprintln!(
                        "error: {e}\n(batch sends its tasks through the workers in that file, or to --url)"
                    );
                    return Ok(ExitCode::from(2));
                }
            }
        }
    };
    let model = match (&a.model, saved_str("model"), &target) {
        (Some(m), _, _) => m.clone(),
        (None, Some(m), _) => m,
        (None, None, Target::Balancer(c)) => c
            .enabled_workers()
            .next()
            .map(|w| w.model.clone())
            .context("no enabled workers")?,
        (None, None, Target::Url { .. }) => anyhow::bail!("--url needs --model"),
    };
    let opts = Options {
        input: input.context("--input is required")?,
        out_dir: output.context("-o/--output is required")?,
        preset,
        prompts_file: a
            .prompts
            .clone()
            .or(saved_str("prompts_file").map(PathBuf::from)),
        model,
        concurrency: a.concurrency,
        // A resumed job keeps the settings it was started with.
        max_chars: saved_num("max_chars")
            .map(|n| n as usize)
            .unwrap_or(a.max_chars),
        long_docs: match (saved_str("long_docs").as_deref(), a.long_docs) {
            (Some("split"), _) | (None, LongArg::Split) => LongDocs::Split,
            _ => LongDocs::Truncate,
        },
        max_attempts: saved_num("max_attempts")
            .map(|n| n as u32)
            .unwrap_or(a.max_attempts),
        max_tokens: a.max_tokens.or(saved_num("max_tokens").map(|n| n as u32)),
        retry_failed: a.retry_failed.is_some(),
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} tasks  {msg}  ETA {eta}")
                .expect("valid template"),
        );
        b
    });
    let obs = Arc::new(Console {
        bar: bar.clone(),
        base: Default::default(),
    });
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let (s2, a2) = (stop.clone(), abort.clone());
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "\nStopping: no new tasks; waiting for the running ones (Ctrl-C again to abort them)."
            );
            s2.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("Aborting the running tasks; they stay queued for the next run.");
                a2.cancel();
            }
        }
    });
    let s = batch::run(&opts, &target, &store_path, obs, stop, abort).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
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
