//! Discovery and preflight speed: prints each figure beside its target.
//!
//!   cargo bench --bench network
//!
//! The preflight part builds black-holed hosts in network namespaces and
//! needs root; without it that part says so and is skipped.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use baton::config::{BalancerSettings, Config};
use baton::discover::{self, Options};
use baton::preflight::{self, Status, Thresholds};
use baton::sim::SimConfig;
use baton::studio::StudioKind;
use support::{SimCfgExt, netlab, start_sim_at};

fn main() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "Baton network benchmarks ({} cores)",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        );
        scan().await;
        scan_black_holes().await;
        preflight_with_black_holes().await;
    });
}

async fn scan() {
    println!("\n1. Discovery: a /24 on 5 ports (127.0.4.0/24, 3 simulated studios in it)");
    let mut studios = Vec::new();
    for (i, (kind, port)) in [
        (StudioKind::LmStudio, 1234),
        (StudioKind::Ollama, 11434),
        (StudioKind::Vllm, 8000),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = SimConfig::default().with_kind(kind);
        studios.push(start_sim_at(([127, 0, 4, 10 + i as u8], port), cfg).await);
    }
    let opts = Options {
        cidrs: vec!["127.0.4.0/24".parse().unwrap()],
        mdns: false,
        ..Options::default()
    };
    let t0 = Instant::now();
    let d = discover::run(&opts, None).await.unwrap();
    let took = t0.elapsed();
    println!(
        "  {} probes, {} open, {} studios found in {:.2} s  (target < 3 s: {})",
        d.probes,
        d.open_ports,
        d.found.len(),
        took.as_secs_f64(),
        if took < Duration::from_secs(3) && d.found.len() == 3 {
            "PASS"
        } else {
            "MISS"
        }
    );
}

async fn scan_black_holes() {
    println!(
        "\n2. Discovery: a /24 where nothing answers (every SYN dropped, in a namespace), 5 ports"
    );
    if let Some(why) = netlab::unavailable() {
        println!("  skipped: {why}");
        return;
    }
    let h = netlab::Host::new().unwrap();
    h.black_hole().unwrap();
    let third = (h.ip.octets()[2] as u32 + h.ip.octets()[3] as u32) % 256;
    let net = format!("198.19.{third}.0/24");
    let ok = std::process::Command::new("ip")
        .args(["route", "add", &net, "via", &h.ip.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("  skipped: could not route {net} into the namespace");
        return;
    }
    let opts = Options {
        cidrs: vec![net.parse().unwrap()],
        mdns: false,
        ..Options::default()
    };
    let t0 = Instant::now();
    let d = discover::run(&opts, None).await.unwrap();
    let took = t0.elapsed();
    let _ = std::process::Command::new("ip")
        .args(["route", "del", &net])
        .status();
    println!(
        "  {} probes, {} open in {:.2} s  (target < 3 s: {})",
        d.probes,
        d.open_ports,
        took.as_secs_f64(),
        if took < Duration::from_secs(3) {
            "PASS"
        } else {
            "MISS"
        }
    );
}

async fn preflight_with_black_holes() {
    println!("\n3. Preflight of 10 workers, 3 of them black holes (network namespaces)");
    if let Some(why) = netlab::unavailable() {
        println!("  skipped: {why}");
        return;
    }
    let mut hosts = Vec::new();
    let mut sims = Vec::new();
    let mut workers = Vec::new();
    for i in 0..10 {
        let h = netlab::Host::new().unwrap();
        let s = start_sim_at(
            h.listen(1234),
            SimConfig {
                ttft: Duration::from_millis(20),
                ..SimConfig::default()
            },
        )
        .await;
        if i >= 7 {
            h.black_hole().unwrap();
        }
        workers.push(support::worker(
            &format!("studio-{}", i + 1),
            &h.ip.to_string(),
            1234,
        ));
        hosts.push(h);
        sims.push(s);
    }
    let cfg = Config {
        workers,
        balancer: BalancerSettings::default(),
        ..Default::default()
    };
    let t0 = Instant::now();
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    let took = t0.elapsed();
    let failed = r.hosts.iter().filter(|h| h.status == Status::Fail).count();
    let passed = r.hosts.iter().filter(|h| h.status == Status::Pass).count();
    println!(
        "  {passed} passed, {failed} failed in {:.2} s  (target < 3 s with 3 black holes: {})",
        took.as_secs_f64(),
        if took < Duration::from_secs(3) && failed == 3 && passed == 7 {
            "PASS"
        } else {
            "MISS"
        }
    );
}
