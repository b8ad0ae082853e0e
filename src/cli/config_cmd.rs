//! `baton config check|path`.

use std::path::PathBuf;
use std::process::ExitCode;

use baton::config::Config;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Validate a workers file and list its workers
    Check {
        /// Workers file (default: the platform config dir's workers.json)
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the default workers file location
    Path,
}

pub fn run(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::Path => {
            let p = super::config_path(None)?;
            println!("{}", p.display());
            Ok(ExitCode::SUCCESS)
        }
        Action::Check { config } => {
            let path = super::config_path(config)?;
            match Config::load(&path) {
                Ok(cfg) => {
                    println!("{}: ok, {} worker(s)", path.display(), cfg.workers.len());
                    for w in &cfg.workers {
                        println!(
                            "  {:<20} {:<28} {:<10} slots {:<4} {}{}",
                            w.id,
                            format!("{}:{}", w.host, w.port),
                            w.kind,
                            w.max_concurrent_requests,
                            w.model,
                            if w.enabled { "" } else { "  (disabled)" }
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}
