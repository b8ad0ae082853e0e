//! Command-line definitions and dispatch.

mod batch_cmd;
mod bench_cmd;
mod config_cmd;
mod dashboard_cmd;
mod diagnose_cmd;
mod discover_cmd;
mod follow;
mod key_cmd;
mod preflight_cmd;
mod results_cmd;
mod serve_cmd;
mod sim_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Pool several Macs running local LLM servers into one fast, dependable
/// OpenAI-compatible endpoint.
#[derive(Parser, Debug)]
#[command(name = "baton", version = env!("BATON_VERSION"), propagate_version = true)]
#[command(
    after_help = "Logs go to stderr; set BATON_LOG=debug (or warn, trace, ...) to change how much."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open the dashboard in a browser (balancer, preflight, studios, benchmarks)
    Dashboard(dashboard_cmd::DashboardArgs),
    /// Serve one OpenAI-compatible endpoint over all studios (the load balancer)
    Serve(serve_cmd::ServeArgs),
    /// Benchmark the pool: sweeps, capacity under a service level, JSON, charts, history
    Bench(bench_cmd::BenchArgs),
    /// Process a folder of documents with prompt presets across the pool (resumable)
    Batch(batch_cmd::BatchArgs),
    /// Compare benchmark runs (files or run ids): the speedup table and a verdict
    Compare(results_cmd::CompareArgs),
    /// Say what limited a benchmark run (run id or results file) and what to change
    Diagnose(diagnose_cmd::DiagnoseArgs),
    /// List past benchmark runs, or show one
    Runs(results_cmd::RunsArgs),
    /// Draw charts (SVG and PNG) of one or more runs
    Chart(results_cmd::ChartArgs),
    /// Write one run as a self-contained HTML report to share (charts inline)
    Report(results_cmd::ReportArgs),
    /// Find studios on the LAN (port scan, mDNS) and optionally add them to a workers file
    Discover(discover_cmd::DiscoverArgs),
    /// Check the network to every studio: ping, port, server, model, latency
    Preflight(preflight_cmd::PreflightArgs),
    /// Run simulated LM Studio-like studios on this machine (for demos and tests)
    Sim(sim_cmd::SimArgs),
    /// Check a workers file, or show where the default one lives
    Config(config_cmd::ConfigArgs),
    /// Store or remove API keys in the OS keychain
    Key(key_cmd::KeyArgs),
}

/// Where to find the workers file: `-c`, else the platform default.
pub fn config_path(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => Ok(p),
        None => baton::config::default_path().ok_or_else(|| {
            anyhow::anyhow!("no home directory found; pass the workers file with -c FILE")
        }),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dashboard(a) => dashboard_cmd::run(a).await,
        Command::Serve(a) => serve_cmd::run(a).await,
        Command::Sim(a) => sim_cmd::run(a).await,
        Command::Preflight(a) => preflight_cmd::run(a).await,
        Command::Discover(a) => discover_cmd::run(a).await,
        Command::Bench(a) => bench_cmd::run(a).await,
        Command::Batch(a) => batch_cmd::run(a).await,
        Command::Compare(a) => results_cmd::compare(a),
        Command::Diagnose(a) => diagnose_cmd::run(a),
        Command::Runs(a) => results_cmd::runs(a),
        Command::Chart(a) => results_cmd::chart(a),
        Command::Report(a) => results_cmd::report(a),
        Command::Key(a) => key_cmd::run(a),
        Command::Config(a) => config_cmd::run(a),
    }
}
