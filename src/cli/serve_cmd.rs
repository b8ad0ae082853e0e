//! `baton serve`: the balancer, over a workers file or built-in simulated studios.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton::balancer::Balancer;
use baton::config::Config;
use baton::sim::{self, SimConfig, SimHandle};
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

/// The demo pool: two bigger studios and a smaller one, so balancing shows.
fn demo_studio(i: usize) -> SimConfig {
    let (slots, tps) = if i % 3 == 2 { (2, 20.0) } else { (4, 40.0) };
    SimConfig {
        slots,
        tokens_per_second: tps,
        ttft: Duration::from_millis(200),
        seed: i as u64 + 1,
        ..SimConfig::default()
    }
}

async fn start_demo(n: usize) -> anyhow::Result<(Config, Vec<SimHandle>)> {
    Ok(sim::start_pool((0..n).map(demo_studio).collect()).await?)
}

pub async fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let t0 = Instant::now();
    let (config, file, _sims) = match (a.simulate, &a.config) {
        (Some(n), _) => {
            let (c, s) = start_demo(n.max(1)).await?;
            (c, None, s)
        }
        (None, explicit) => {
            let path = super::config_path(explicit.clone())?;
            if explicit.is_none() && !path.exists() {
                eprintln!(
                    "No workers file at {} (create one, or pass -c FILE): serving 3 simulated studios instead.",
                    path.display()
                );
                let (c, s) = start_demo(3).await?;
                (c, None, s)
            } else {
                match Config::load(&path) {
                    Ok(c) => (c, Some(path), Vec::new()),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(ExitCode::from(2));
                    }
                }
            }
        }
    };
    if config.enabled_workers().next().is_none() {
        anyhow::bail!(
            "{}: no enabled workers to serve; add one to \"workers\"",
            file.as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
    }
    let api_key = baton::secrets::balancer_key()?;
    let balancer = Balancer::start(&config, a.listen, api_key).await?;
    let ready = balancer.wait_ready(Duration::from_secs(5)).await;
    let url = balancer.url();
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
        println!(
            "No worker is ready yet; requests wait for one. See http://{}/stats for why.",
            balancer.addr()
        );
    }
    let model = config
        .enabled_workers()
        .next()
        .map(|w| w.model.clone())
        .unwrap_or_default();
    println!(
        "\nTry:\n  curl {url}/models\n  curl -N {url}/chat/completions -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{model}\",\"stream\":true,\"max_tokens\":32,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n  curl http://{addr}/stats      (per-worker figures; /metrics for Prometheus)\n\nOpenAI clients: base_url=\"{url}\", any api_key{key_note}.",
        addr = balancer.addr(),
        key_note = if balancer.addr().ip().is_loopback() {
            ""
        } else {
            " = your Baton key"
        }
    );
    if let Some(p) = &file {
        println!(
            "Edit {} and send SIGHUP (kill -HUP {}) to reload without dropping requests.",
            p.display(),
            std::process::id()
        );
    }
    println!("Press Ctrl-C to stop.");
    wait_for_signals(&balancer, file).await?;
    balancer.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(unix)]
async fn wait_for_signals(balancer: &Balancer, file: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("waiting for Ctrl-C")?; return Ok(()); }
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                let Some(path) = &file else {
                    tracing::warn!("SIGHUP ignored: serving simulated studios, not a workers file");
                    continue;
                };
                match Config::load(path) {
                    // A broken file keeps the running configuration.
                    Err(e) => tracing::error!("reload failed, keeping the current workers:\n{e}"),
                    Ok(c) => match balancer.reload(&c) {
                        Ok(s) => println!("Reloaded {}: added {:?}, removed {:?}, changed {:?}", path.display(), s.added, s.removed, s.changed),
                        Err(e) => tracing::error!("reload failed, keeping the current workers: {e}"),
                    },
                }
            }
        }
    }
}

#[cfg(not(unix))]
async fn wait_for_signals(_: &Balancer, _: Option<PathBuf>) -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")
}
