//! `baton diagnose RUN|FILE`: the verdict on a recorded run, worked out
//! again from its results and evidence (so a run recorded before a rule
//! existed gets it too).

use std::process::ExitCode;

use baton::bench::diagnose;
use clap::Args;

#[derive(Args, Debug)]
pub struct DiagnoseArgs {
    /// A run id (see `baton runs`) or a results file (baton-results/run-N.json)
    run: String,
    /// Print the diagnosis as JSON (the `diagnosis` of the results file)
    #[arg(long)]
    json: bool,
}

/// Exit code 0 when no problem was found, 1 when one was.
pub fn run(a: DiagnoseArgs) -> anyhow::Result<ExitCode> {
    let (name, r) = super::results_cmd::load(&a.run)?;
    let d = diagnose::diagnose(&r);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!(
            "{name}: {} over {} level(s){}",
            r.settings.model,
            r.concurrency_benchmark.len(),
            if d.basis == "tables" {
                " (recorded without evidence: diagnosed from its tables only; run `baton bench` again for the full diagnosis)"
            } else {
                ""
            }
        );
        print!("{}", diagnose::render(&d));
    }
    Ok(if d.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
