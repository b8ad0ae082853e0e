//! `baton dashboard`: the engine, the balancer and the control API, with
//! the web dashboard opened in the default browser.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use baton::control::{self, ControlApi};
use baton::engine::Options as EngineOptions;
use clap::Args;

#[derive(Args, Debug)]
pub struct DashboardArgs {
    /// Workers file (default: the platform config dir's workers.json; when
    /// there is none, simulated studios are served; a file that does not
    /// exist yet starts an empty pool that adding studios creates)
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Print the dashboard's address but do not open a browser
    #[arg(long)]
    no_open: bool,
    /// Port of the control API (always on 127.0.0.1; 0 picks a free one)
    #[arg(long, default_value_t = control::DEFAULT_PORT)]
    control_port: u16,
    /// Where the balancer listens (default: the file's, else 127.0.0.1:8421)
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Ignore any workers file and serve this many simulated studios
    #[arg(long, value_name = "N")]
    simulate: Option<usize>,
    /// Do not start the balancer (start it from the dashboard)
    #[arg(long)]
    no_balancer: bool,
}

pub async fn run(a: DashboardArgs) -> anyhow::Result<ExitCode> {
    let engine = match super::follow::open(EngineOptions {
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
    let api = ControlApi::start(engine.clone(), a.control_port, control::install_token()).await?;
    let info = engine.config_info();
    if !a.no_balancer && !engine.config().workers.is_empty() {
        // A balancer that cannot start (port taken) is shown in the
        // dashboard with its reason; the dashboard still opens.
        if let Err(e) = engine.start_balancer().await {
            eprintln!("warning: the balancer did not start: {e}");
        }
    }
    let status = engine.balancer_status();
    println!(
        "Baton {} dashboard: {}",
        env!("BATON_VERSION"),
        api.dashboard_url()
    );
    match (&info.path, info.simulated, info.first_run) {
        (_, true, _) => println!(
            "Serving {} simulated studios (no workers file yet; discover or add studios in the dashboard).",
            engine.config().workers.len()
        ),
        (Some(p), _, true) => println!(
            "No studios yet: discover or add them in the dashboard; they are saved to {}.",
            p.display()
        ),
        (Some(p), _, _) => println!("Workers file: {}", p.display()),
        _ => {}
    }
    match &status.url {
        Some(u) => println!("Balancer: {u} (OpenAI base URL)"),
        None => println!("Balancer: stopped (start it from the dashboard)"),
    }
    if !a.no_open {
        open_browser(&api.dashboard_url());
    }
    // Listen before saying so: a Ctrl-C right after the line must count.
    let stop = super::serve_cmd::Stop::listen()?;
    println!("Press Ctrl-C to stop.");
    stop.serving(&engine).await?;
    engine.shutdown().await;
    api.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Open `url` in the default browser when there is a display; otherwise the
/// printed address is enough.
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        Some("open")
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        Some("xdg-open")
    } else {
        None
    };
    let Some(cmd) = opener else {
        return;
    };
    let spawned = std::process::Command::new(cmd)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_err() {
        eprintln!("(could not open a browser; open the address above yourself)");
    }
}
