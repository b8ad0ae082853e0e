//! `baton serve`: the balancer, over a workers file or built-in simulated studios.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton::engine::{Engine, Options as EngineOptions};
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Workers file (default: the platform config dir's workers.json; when
    /// there is none, simulated studios are started instead)
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Address and port to listen on; a non-loopback address needs an API key
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Ignore any workers file and serve this many built-in simulated studios
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
}

pub async fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let path = super::config_path(a.config.clone())?;
    if a.simulate.is_none() && a.config.is_none() && !path.exists() {
        eprintln!(
            "No workers file at {} (create one, or pass -c FILE): serving {} simulated studios instead.",
            path.display(),
            baton::engine::DEFAULT_SIMULATED
        );
    }
    if a.config.is_some() && !path.exists() {
        eprintln!(
            "error: {}: no such workers file\n  fix: check the path, or find your studios with `baton discover --write {}`",
            path.display(),
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let engine = match super::follow::open(EngineOptions {
        // Only a file named with -c is a pool to create when missing; the
        // default location missing means "serve simulated studios".
        config_path: a.config.clone(),
        simulate: a.simulate,
        listen: a.listen,
        ..EngineOptions::default()
    })
    .await?
    {
        Ok(e) => e,
        Err(code) => return Ok(code),
    };
    let config = engine.config();
    if config.enabled_workers().next().is_none() {
        anyhow::bail!(
            "{}: no enabled workers to serve; add one to \"workers\"",
            engine
                .config_info()
                .path
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let status = engine.start_balancer().await?;
    let url = status.url.clone().unwrap_or_default();
    let addr = status.listen;
    let ready = wait_ready(&engine, Duration::from_secs(5)).await;
    println!(
        "Baton {} is serving {} worker(s) at {url}",
        env!("BATON_VERSION"),
        config.enabled_workers().count()
    );
    for w in config.enabled_workers() {
        println!(
            "  {:<16} {:<24} slots {:<3} {}",
            w.id,
            format!("{}:{}", w.host, w.port),
            w.max_concurrent_requests,
            w.model
        );
    }
    if ready {
        println!("Ready in {} ms.", t0.elapsed().as_millis());
    } else {
        println!("No worker is ready yet; requests wait for one. See http://{addr}/stats for why.");
    }
    let model = config
        .enabled_workers()
        .next()
        .map(|w| w.model.clone())
        .unwrap_or_default();
    println!(
        "\nTry:\n  curl {url}/models\n  curl -N {url}/chat/completions -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{model}\",\"stream\":true,\"max_tokens\":32,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n  curl http://{addr}/stats      (per-worker figures; /metrics for Prometheus)\n\nOpenAI clients: base_url=\"{url}\", any api_key{key_note}.",
        key_note = if addr.ip().is_loopback() {
            ""
        } else {
            " = your Baton key"
        }
    );
    let file = (!engine.config_info().simulated)
        .then(|| engine.config_info().path)
        .flatten();
    if let Some(p) = &file {
        println!(
            "Edit {} and send SIGHUP (kill -HUP {}) to reload without dropping requests.",
            p.display(),
            std::process::id()
        );
    }
    // Listen before saying so: a Ctrl-C right after the line must count.
    let stop = super::serve_cmd::Stop::listen()?;
    println!("Press Ctrl-C to stop.");
    stop.serving(&engine).await?;
    engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Wait until a worker is ready, from the engine's events.
pub async fn wait_ready(engine: &Engine, limit: Duration) -> bool {
    let (mut rx, _) = engine.subscribe(None);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if any_ready(engine).await {
            return true;
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
            _ => return any_ready(engine).await,
        }
    }
}

async fn any_ready(engine: &Engine) -> bool {
    engine
        .workers()
        .await
        .iter()
        .any(|w| w.status == baton::engine::WorkerStatus::Ready)
}

/// The signals that end a command that serves until stopped, listened to
/// from the moment it is made: a signal that comes before the command waits
/// for it is not lost.
pub struct Stop {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Stop {
    #[cfg(unix)]
    pub fn listen() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Stop {
            int: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    #[cfg(not(unix))]
    pub fn listen() -> anyhow::Result<Stop> {
        Ok(Stop {})
    }

    /// Until Ctrl-C or SIGTERM (SIGHUP is ignored here).
    pub async fn interrupted(mut self) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.int.recv() => return,
                _ = self.term.recv() => return,
                _ = self.hup.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }

    /// Until Ctrl-C or SIGTERM; SIGHUP reloads the workers file.
    pub async fn serving(mut self, engine: &Engine) -> anyhow::Result<()> {
        #[cfg(unix)]
        loop {
            tokio::select! {
                _ = self.int.recv() => return Ok(()),
                _ = self.term.recv() => return Ok(()),
                _ = self.hup.recv() => match engine.reload_file().await {
                    Ok(s) => println!("Reloaded: added {:?}, removed {:?}, changed {:?}", s.added, s.removed, s.changed),
                    // A broken file keeps the running configuration.
                    Err(e) => tracing::error!("reload failed, keeping the current workers:\n{e}"),
                },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = engine;
            tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
        }
    }
}
