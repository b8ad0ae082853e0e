//! `baton compare`, `baton runs` and `baton chart`: working with results,
//! from files or from the history store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use baton::bench::compare;
use baton::bench::report::BenchResult;
use baton::store::Store;
use clap::{Args, Subcommand};

/// Load a run by results-file path, or by id from the store.
pub(super) fn load(reference: &str) -> anyhow::Result<(String, BenchResult)> {
    let path = PathBuf::from(reference);
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let r: BenchResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Baton results file", path.display()))?;
        return Ok((reference.to_string(), r));
    }
    if let Ok(id) = reference.parse::<i64>() {
        let store = Store::open_default()?;
        return Ok((format!("run {id}"), store.get_run(id)?));
    }
    anyhow::bail!("`{reference}` is neither a results file nor a run id (see `baton runs`)")
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Results files or run ids; the first is the baseline
    #[arg(required = true, num_args = 2..)]
    runs: Vec<String>,
    #[arg(long)]
    json: bool,
}

pub fn compare(a: CompareArgs) -> anyhow::Result<ExitCode> {
    let runs = a
        .runs
        .iter()
        .map(|r| load(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let c = compare::compare(&runs);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", compare::render(&c));
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    #[command(subcommand)]
    action: Option<RunsAction>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum RunsAction {
    /// Print one run's results (JSON)
    Show { id: i64 },
}

pub fn runs(a: RunsArgs) -> anyhow::Result<ExitCode> {
    let store = Store::open_default()?;
    match a.action {
        Some(RunsAction::Show { id }) => {
            println!("{}", serde_json::to_string_pretty(&store.get_run(id)?)?);
        }
        None => {
            let runs = store.list_runs()?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else if runs.is_empty() {
                println!("No runs yet: `baton bench` records every run here.");
            } else {
                println!(
                    "{:>5}  {:<16} {:<12} {:<9} {:>7} {:>10}  label",
                    "id", "started", "mode", "target", "workers", "best req/s"
                );
                for r in runs {
                    println!(
                        "{:>5}  {:<16} {:<12} {:<9} {:>7} {:>10.2}  {}{}",
                        r.id,
                        local_time(r.created_at),
                        r.mode,
                        r.target,
                        r.workers,
                        r.best_rps,
                        r.label.unwrap_or_default(),
                        if r.interrupted { " (interrupted)" } else { "" }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as this machine's local date and time, to the minute
/// (the `started` the user reads, not a count of seconds).
fn local_time(unix: i64) -> String {
    let t = unix as libc::time_t;
    // SAFETY: `tm` is plain data that `localtime_r` fills in; both
    // pointers are valid for the call and it keeps neither.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return unix.to_string();
        }
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

#[derive(Args, Debug)]
pub struct ChartArgs {
    /// Results files or run ids (one line per run in the comparison charts)
    #[arg(required = true)]
    runs: Vec<String>,
    /// Directory for the SVG and PNG files
    #[arg(short, long)]
    output: PathBuf,
}

pub fn chart(a: ChartArgs) -> anyhow::Result<ExitCode> {
    let runs = a
        .runs
        .iter()
        .map(|r| load(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let refs: Vec<(String, &BenchResult)> = runs.iter().map(|(n, r)| (n.clone(), r)).collect();
    let files = baton::chart::write_all(&refs, &a.output)?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A run id (see `baton runs`) or a results file
    run: String,
    /// The HTML file to write (default: report-<run>.html here)
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn report(a: ReportArgs) -> anyhow::Result<ExitCode> {
    let (name, r) = load(&a.run)?;
    // A results file is named by its file name, not the path it was read from.
    let name = std::path::Path::new(&name)
        .file_stem()
        .filter(|_| PathBuf::from(&a.run).exists())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or(name);
    let html = baton::bench::html::render(&name, &r)?;
    let out = a.output.unwrap_or_else(|| {
        let stem: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        PathBuf::from(format!("report-{}.html", stem.trim_matches('-')))
    });
    baton::files::write_atomic(&out, html.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}", out.display());
    Ok(ExitCode::SUCCESS)
}
