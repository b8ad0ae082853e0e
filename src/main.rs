//! The `baton` command line. Each subcommand is a thin layer over the engine
//! library: parse flags, call the engine, print.

mod cli;

// The system allocator only for heap profilers (heaptrack, massif), which
// see malloc's calls and not mimalloc's: `--features system-alloc`.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    baton::logging::init();
    // Simulated studios and the balancer hold one socket per waiting client.
    match baton::limits::raise_open_files() {
        Ok((before, after)) => tracing::debug!("open-files limit: {before} -> {after}"),
        Err(e) => tracing::debug!("could not raise the open-files limit: {e}"),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match rt.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    };
    // A blocking task still running (a DNS lookup, say) must not keep a
    // command that has finished, or was stopped, alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
