//! `baton preflight`: check the network to every studio before trusting it.

use std::path::PathBuf;
use std::process::ExitCode;

use baton::config::Config;
use baton::preflight::{self, Thresholds};
use clap::Args;

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
    if !a.json {
        eprintln!("Checking {} worker(s)...", config.enabled_workers().count());
    }
    let report = preflight::run(&config, &t).await;
    // Kept for the dashboard and the benchmark: the latest as a file, and
    // every report in the history store.
    if let Err(e) = preflight::save_last(&report) {
        tracing::warn!("could not keep the preflight report: {e}");
    }
    if let Err(e) = baton::store::Store::open_default().and_then(|s| s.save_preflight(&report)) {
        tracing::warn!("could not record the preflight in the history: {e}");
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", preflight::render(&report));
    }
    Ok(ExitCode::from(report.exit_code(a.strict)))
}
