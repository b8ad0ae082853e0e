//! Routing that knows what is loaded, against routing blind to it: a mixed
//! two-model workload over three simulated studios, at the same offered
//! rate both times, in two pools: one where each studio has room for both
//! models (a load happens once per studio and model, just in time), and
//! one where each has room for one (a load evicts the other). Prints the
//! time to first token (mean and p95), the completed rate, and the loads
//! each routing caused.
//!
//!   cargo bench --bench models
//!   cargo bench --bench models -- --quick      # a shorter run

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use baton::config::{BalancerSettings, Strategy};
use baton::sim::{MODEL_SIZE, SimConfig};
use futures_util::StreamExt;
use serde_json::json;
use support::{Lab, SimCfgExt, sim_cfg, test_settings};

const A: &str = "qwen3-14b";
const B: &str = "llama-3.1-8b";
/// A load from disk, scaled down from the 10-60 s of a real Mac.
const LOAD_MS: u64 = 2_000;

/// Three studios with both models on disk, A loaded on the first two and
/// B on the third; room for one model in memory when `evicting`.
fn studios(evicting: bool) -> Vec<SimConfig> {
    (0..3)
        .map(|i| SimConfig {
            loaded: Some(vec![if i < 2 { A } else { B }.to_string()]),
            model_load_ms: [(A.to_string(), LOAD_MS), (B.to_string(), LOAD_MS)].into(),
            memory_bytes: evicting.then_some(MODEL_SIZE),
            ..sim_cfg(4, 60, 200.0).with_models(&[A, B]).with_seed(i + 1)
        })
        .collect()
}

struct Figures {
    ttft_ms: Vec<f64>,
    failed: usize,
    took: Duration,
    loads: u64,
}

impl Figures {
    fn mean(&self) -> f64 {
        self.ttft_ms.iter().sum::<f64>() / self.ttft_ms.len().max(1) as f64
    }

    fn p95(&self) -> f64 {
        let mut v = self.ttft_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * 0.95).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn rate(&self) -> f64 {
        self.ttft_ms.len() as f64 / self.took.as_secs_f64()
    }
}

/// Open loop: `rate` requests a second for `duration`, two in three for A,
/// each streamed; the time to its first content byte.
async fn run(evicting: bool, prefer_loaded: bool, rate: f64, duration: Duration) -> Figures {
    let lab = Lab::builder()
        .studios(studios(evicting))
        .settings(BalancerSettings {
            strategy: Strategy::LeastTime,
            prefer_loaded,
            ..test_settings()
        })
        .start()
        .await;
    let url = format!("{}/chat/completions", lab.url());
    let client = reqwest::Client::new();
    let n = (rate * duration.as_secs_f64()) as usize;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = t0 + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at.into()).await;
        let model = if i % 3 == 2 { B } else { A };
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": model, "stream": true, "max_tokens": 24,
                              "messages": [{"role": "user", "content": "hello"}]});
            let sent = Instant::now();
            let resp = client.post(&url).json(&body).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let mut stream = resp.bytes_stream();
            let mut first = None;
            while let Some(chunk) = stream.next().await {
                chunk.ok()?;
                first.get_or_insert_with(|| sent.elapsed());
            }
            first.map(|d| d.as_secs_f64() * 1000.0)
        }));
    }
    let mut f = Figures {
        ttft_ms: Vec::new(),
        failed: 0,
        took: Duration::ZERO,
        loads: 0,
    };
    for t in tasks {
        match t.await.ok().flatten() {
            Some(ms) => f.ttft_ms.push(ms),
            None => f.failed += 1,
        }
    }
    f.took = t0.elapsed();
    f.loads = lab
        .sims
        .iter()
        .flat_map(|s| s.models())
        .map(|m| m.loads)
        .sum();
    f
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let duration = Duration::from_secs(if quick { 8 } else { 20 });
    let rate = 20.0;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Models: {A} (2 in 3 requests) and {B} over 3 studios, {A} loaded on two and {B} on one \
         (a load takes {LOAD_MS} ms), {rate} req/s for {duration:?}"
    );
    for (evicting, pool) in [
        (false, "room for both models"),
        (true, "room for one model (a load evicts)"),
    ] {
        println!(" {pool}:");
        let blind = rt.block_on(run(evicting, false, rate, duration));
        let aware = rt.block_on(run(evicting, true, rate, duration));
        for (name, f) in [("model-blind", &blind), ("loaded-aware", &aware)] {
            println!(
                "  {name:<13} TTFT mean {:>7.0} ms  p95 {:>7.0} ms  {:>5.1} req/s done  failed {}  loads {}",
                f.mean(),
                f.p95(),
                f.rate(),
                f.failed,
                f.loads
            );
        }
        let ratio = blind.p95() / aware.p95();
        println!(
            "  TTFT p95 {ratio:.1}x lower when routing knows what is loaded (target >= 3x), at {:.1} vs {:.1} req/s: {}",
            aware.rate(),
            blind.rate(),
            if ratio >= 3.0 { "ok" } else { "MISSED" }
        );
    }
}
