//! `baton discover`: find studios on the LAN.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use baton::discover;
use baton::engine::jobs::{JobResult, JobUpdate};
use baton::engine::{DiscoverRequest, Engine, Options as EngineOptions};
use clap::Args;

use super::follow::Interrupt;
use ipnet::Ipv4Net;

#[derive(Args, Debug)]
pub struct DiscoverArgs {
    /// Network to scan (repeatable); default: this machine's own subnets
    #[arg(long = "cidr", value_name = "CIDR")]
    cidrs: Vec<Ipv4Net>,
    /// Ports to probe (default: 1234 11434 8080 8000 52415)
    #[arg(long, num_args = 1.., value_name = "PORT")]
    ports: Vec<u16>,
    /// Add the studios found to this workers file (existing entries are kept)
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Allow scanning more than a /22
    #[arg(long)]
    force: bool,
    /// Skip the mDNS browse
    #[arg(long)]
    no_mdns: bool,
    /// TCP connect timeout per probe, ms
    #[arg(long, default_value_t = 400)]
    timeout_ms: u64,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(a: DiscoverArgs) -> anyhow::Result<ExitCode> {
    let req = DiscoverRequest {
        cidrs: a.cidrs.iter().map(|c| c.to_string()).collect(),
        ports: a.ports.clone(),
        force: a.force,
        no_mdns: a.no_mdns,
        timeout_ms: Some(a.timeout_ms),
    };
    let opts = req.options()?;
    let nets = discover::targets(&opts)?;
    if !a.json {
        let list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
        eprintln!(
            "Scanning {} on ports {:?}{}...",
            list.join(", "),
            opts.ports,
            if opts.mdns { " and browsing mDNS" } else { "" }
        );
    }
    let bar = if std::io::stderr().is_terminal() && !a.json {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} probes  {msg}")
                .expect("valid template"),
        );
        Some(b)
    } else {
        None
    };
    let engine = Engine::open(EngineOptions {
        no_pool: true,
        ..EngineOptions::default()
    })
    .await?;
    let job = super::follow::run_job(
        &engine,
        || engine.start_discover(req),
        Interrupt {
            first: "Interrupted.",
            second: None,
        },
        |u| {
            if let (
                Some(b),
                JobUpdate::Progress {
                    done, total, ok, ..
                },
            ) = (&bar, u)
            {
                b.set_length(total.unwrap_or(0));
                b.set_position(*done);
                b.set_message(format!("{ok} found"));
            }
        },
    )
    .await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let d = match (job.result, job.error) {
        (Some(JobResult::Discover(d)), _) => d,
        (_, Some(e)) => return Err(super::follow::error(&e)),
        _ => return Ok(ExitCode::from(130)),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&d)?);
    } else {
        println!(
            "Scanned {} address(es) x {} port(s) in {:.1} s: {} open, {} LLM server(s).",
            d.addresses,
            opts.ports.len(),
            d.duration_ms / 1000.0,
            d.open_ports,
            d.found.len()
        );
        if d.denied > 0 {
            println!(
                "macOS Local Network privacy blocked {} connection(s): {}.",
                d.denied,
                baton::studio::LOCAL_NETWORK_FIX
            );
        }
        if !d.found.is_empty() {
            println!("\n  {:<22} {:<10} {:>8}  models", "address", "type", "rtt");
            for f in &d.found {
                let models = if f.models.is_empty() {
                    "-".to_string()
                } else {
                    f.models.join(", ")
                };
                println!(
                    "  {:<22} {:<10} {:>6.1}ms  {models}{}",
                    format!("{}:{}", f.host, f.port),
                    f.kind.as_str(),
                    f.rtt_ms,
                    if f.via == "mdns" { "  (mDNS)" } else { "" }
                );
            }
        }
    }
    if let Some(path) = &a.write {
        let added = discover::merge_into(path, &d.found)?;
        eprintln!(
            "{}: added {} worker(s){}",
            path.display(),
            added.len(),
            if added.is_empty() {
                String::new()
            } else {
                format!(": {}", added.join(", "))
            }
        );
        if !added.is_empty() {
            eprintln!(
                "Next: baton preflight -c {0}   then   baton serve -c {0}",
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
