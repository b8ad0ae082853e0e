//! The CLI as a subscriber of the engine's events: a command starts a job
//! and draws its progress from the same events the dashboard gets.

use baton::engine::events::Event;
use baton::engine::jobs::{Job, JobError, JobId, JobStatus, JobUpdate};
use std::process::ExitCode;

use baton::engine::{Engine, EngineError, Options};
use tokio::sync::broadcast::error::RecvError;

/// What Ctrl-C says: the first press, and a second one.
pub struct Interrupt {
    pub first: &'static str,
    pub second: Option<&'static str>,
}

/// Start a job (subscribed first, so no event is missed), hand each of its
/// updates to `on` until it ends, and return it. Ctrl-C cancels the job; a
/// second Ctrl-C cancels again (a batch then aborts its running tasks).
pub async fn run_job(
    engine: &Engine,
    start: impl FnOnce() -> Result<JobId, EngineError>,
    interrupt: Interrupt,
    mut on: impl FnMut(&JobUpdate),
) -> Result<Job, EngineError> {
    let (mut rx, _) = engine.subscribe(None);
    let id = start()?;
    let canceller = {
        let engine = engine.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\n{}", interrupt.first);
                let _ = engine.cancel(id);
                if let Some(second) = interrupt.second
                    && tokio::signal::ctrl_c().await.is_ok()
                {
                    eprintln!("{second}");
                    let _ = engine.cancel(id);
                }
            }
        })
    };
    loop {
        match rx.recv().await {
            Ok(n) => {
                if let Event::Job {
                    id: jid,
                    status,
                    update,
                    ..
                } = &n.event
                    && *jid == id
                {
                    on(update);
                    if *status != JobStatus::Running {
                        break;
                    }
                }
            }
            // Progress was dropped for a slow terminal; the outcome is
            // still on the job.
            Err(RecvError::Lagged(_)) => {
                if engine.job(id)?.status != JobStatus::Running {
                    break;
                }
            }
            Err(RecvError::Closed) => break,
        }
    }
    canceller.abort();
    engine.job(id)
}

/// A failed job's error, as the CLI prints it (with its fix).
pub fn error(e: &JobError) -> anyhow::Error {
    match &e.fix {
        Some(f) => anyhow::anyhow!("{}\n  fix: {f}", e.message),
        None => anyhow::anyhow!("{}", e.message),
    }
}

/// Open the engine; a broken workers file is printed with its fix and
/// becomes exit code 2 (the `Err` side of the inner result).
pub async fn open(opts: Options) -> anyhow::Result<Result<Engine, ExitCode>> {
    match Engine::open(opts).await {
        Ok(e) => Ok(Ok(e)),
        Err(EngineError::Config(e)) => {
            eprintln!("error: {e}");
            Ok(Err(ExitCode::from(2)))
        }
        Err(e) => Err(e.into()),
    }
}
