//! `baton preflight`: check the network to every studio before trusting it.

use std::path::PathBuf;
use std::process::ExitCode;

use std::io::IsTerminal;

use baton::config::Config;
use baton::engine::jobs::{JobResult, JobUpdate};
use baton::engine::{Engine, Options as EngineOptions, WhenMissing};
use baton::preflight::{self, Thresholds};
use clap::Args;

use super::follow::Interrupt;

#[derive(Args, Debug)]
pub struct PreflightArgs {
    /// Workers file (default: the platform config dir's workers.json)
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// Exit with 1 when there are warnings (failures always exit with 2)
    #[arg(long)]
    strict: bool,
    /// Echo requests per host
    #[arg(long, default_value_t = Thresholds::default().ping_count)]
    ping_count: u32,
    /// Highest acceptable average round trip, ms (the user's checklist: 10)
    #[arg(long, default_value_t = Thresholds::default().max_rtt_ms)]
    max_rtt_ms: f64,
    /// Highest acceptable packet loss, percent (the user's checklist: 0)
    #[arg(long, default_value_t = Thresholds::default().max_loss_pct)]
    max_loss_pct: f64,
    /// TCP connect timeout, ms
    #[arg(long, default_value_t = Thresholds::default().connect_timeout_ms)]
    connect_timeout_ms: u64,
    /// Time allowed for the one-token completion, ms
    #[arg(long, default_value_t = Thresholds::default().completion_timeout_ms)]
    completion_timeout_ms: u64,
}

pub async fn run(a: PreflightArgs) -> anyhow::Result<ExitCode> {
    let path = super::config_path(a.config.clone())?;
    if a.config.is_none() && !path.exists() {
        anyhow::bail!(
            "no workers file at {}: pass one with -c FILE, or find your studios with `baton discover --write {}`",
            path.display(),
            path.display()
        );
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    if config.enabled_workers().next().is_none() {
        anyhow::bail!("{}: no enabled workers to check", path.display());
    }
    let t = Thresholds {
        ping_count: a.ping_count.max(1),
        max_rtt_ms: a.max_rtt_ms,
        max_loss_pct: a.max_loss_pct,
        connect_timeout_ms: a.connect_timeout_ms,
        completion_timeout_ms: a.completion_timeout_ms,
        ..Thresholds::default()
    };
    let engine = Engine::open(EngineOptions {
        config_path: Some(path.clone()),
        when_missing: WhenMissing::FirstRun,
        ..EngineOptions::default()
    })
    .await?;
    let hosts: usize = config
        .enabled_workers()
        .map(|w| 1 + w.members.iter().filter(|m| **m != w.host).count())
        .sum();
    if !a.json {
        eprintln!("Checking {} worker(s)...", config.enabled_workers().count());
    }
    // A line per host as its checks come in (on a terminal).
    let live = std::io::stderr().is_terminal() && !a.json;
    let mut seen: Vec<(String, String)> = Vec::new();
    let job = super::follow::run_job(
        &engine,
        || engine.start_preflight(t),
        Interrupt {
            first: "Interrupted.",
            second: None,
        },
        |u| {
            if let JobUpdate::Check { worker, host, .. } = u
                && !seen.iter().any(|(w, h)| w == worker && h == host)
            {
                seen.push((worker.clone(), host.clone()));
                if live {
                    eprintln!("  [{}/{hosts}] {worker} {host} checked", seen.len());
                }
            }
        },
    )
    .await?;
    let report = match job.result {
        Some(JobResult::Preflight(r)) => r,
        _ => {
            eprintln!("preflight did not finish");
            return Ok(ExitCode::from(130));
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", preflight::render(&report));
    }
    Ok(ExitCode::from(report.exit_code(a.strict)))
}
