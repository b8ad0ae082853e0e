//! The capacity search against a fixed sweep of the same resolution: the
//! same points (closed loops sized for a p95) measured on the same pool of
//! simulated studios through Baton's balancer, in this one run (the machine
//! is shared and noisy, so only same-run ratios mean anything).
//!
//!   cargo bench --bench capacity
//!
//! The sweep is given the benefit of knowing where to stop: every
//! concurrency from 1 to the capacity the search found, plus one (the least
//! a sweep of step 1 must measure to find the same answer).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use baton::bench::capacity::{self, Length, Searched, Target, point};
use baton::bench::load::{self, LoadSpec, RunOptions};
use baton::bench::report::Slo;
use serde_json::json;
use support::{Lab, sim_cfg};

const SLO: Slo = Slo {
    ttft_p95_ms: Some(150.0),
    tokens_per_s: Some(20.0),
};

async fn measure(target: &Target, c: usize, seed: u64) -> baton::bench::report::CapacityPoint {
    let client = load::client();
    point::measure(&client, target, Length::default(), &SLO, c, seed, None).await
}

fn line(what: &str, s: &Searched, took: Duration) {
    let points: Vec<String> = s.points.iter().map(|p| p.concurrency.to_string()).collect();
    println!(
        "  {what:<7} capacity {:>3}  {:>2} points  {:>6.1} s  ({})",
        s.max_concurrency,
        s.points.len(),
        took.as_secs_f64(),
        points.join(" ")
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Two fast studios and one half as fast with half the slots: 20 slots.
    let lab = Lab::builder()
        .studios([
            sim_cfg(8, 60, 100.0),
            sim_cfg(8, 60, 100.0),
            sim_cfg(4, 60, 50.0),
        ])
        .start()
        .await;
    let body = json!({
        "model": baton::sim::DEFAULT_MODEL, "stream": true,
        "stream_options": {"include_usage": true}, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let target = Target {
        url: format!("{}/chat/completions", lab.url()),
        api_key: None,
        body: body.clone(),
        prompt: "Say something about capacity.".into(),
        worker: None,
    };
    // Let Baton learn each studio's slots first, as `baton bench` does.
    let warm = LoadSpec {
        url: target.url.clone(),
        body,
        concurrency: 20,
        duration: None,
        requests: Some(60),
        api_key: None,
        prompts: Vec::new(),
        warmup: Duration::ZERO,
    };
    load::run_with(&load::client(), &warm, RunOptions::default()).await;

    println!(
        "Capacity search vs a fixed sweep (first tokens under 150 ms p95, 20 tok/s; 3 studios, 20 slots)"
    );
    let seed = capacity::seed();
    let t = Instant::now();
    let searched = capacity::search(capacity::ceiling(20), |c| {
        let target = &target;
        async move { Some(measure(target, c, seed ^ c as u64).await) }
    })
    .await;
    let search_took = t.elapsed();
    line("search", &searched, search_took);
    let t = Instant::now();
    let swept = capacity::sweep(searched.max_concurrency + 1, |c| {
        let target = &target;
        async move { Some(measure(target, c, seed.rotate_left(7) ^ c as u64).await) }
    })
    .await;
    let sweep_took = t.elapsed();
    line("sweep", &swept, sweep_took);
    println!(
        "  the search took {:.2}x the sweep's time ({} vs {} points); both found {} (the sweep {})",
        search_took.as_secs_f64() / sweep_took.as_secs_f64(),
        searched.points.len(),
        swept.points.len(),
        searched.max_concurrency,
        swept.max_concurrency
    );
}
