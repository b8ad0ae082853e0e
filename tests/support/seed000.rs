//! The user's failure (seeds/000), reproduced with real network faults: two
//! studios, one black-holed after Baton has seen it healthy. Shared by the
//! reliability test (which asserts) and `cargo bench --bench reliability`
//! (which prints the table).

use std::time::{Duration, Instant};

use baton::balancer::{Balancer, State};
use baton::bench::load::{self, LoadReport, LoadSpec};
use baton::config::{BalancerSettings, Config};
use baton::sim::{self, SimConfig, SimHandle};
use serde_json::json;

use super::netlab::Host;

/// A Mac Studio-like studio: 6 slots, 30 tok/s, 250 ms to first token.
pub fn studio() -> SimConfig {
    SimConfig {
        slots: 6,
        tokens_per_second: 30.0,
        ttft: Duration::from_millis(250),
        ..SimConfig::default()
    }
}

pub async fn studio_in(h: &Host) -> SimHandle {
    super::studios::start_sim_at(h.listen(1234), studio()).await
}

pub async fn drive(b: &Balancer, concurrency: usize, secs: f64) -> LoadReport {
    let d = Duration::from_secs_f64(secs);
    let spec = LoadSpec {
        url: format!("{}/chat/completions", b.url()),
        body: json!({"model": sim::DEFAULT_MODEL, "stream": true, "stream_options": {"include_usage": true},
                     "max_tokens": 24, "messages": [{"role": "user", "content": "benchmark"}]}),
        concurrency,
        duration: Some(d),
        requests: None,
        api_key: None,
        warmup: d / 5,
        prompts: vec![],
    };
    load::run(&load::client(), &spec).await
}

/// Baton (production settings, in this process) in front of `sims`, every
/// worker ready.
pub async fn start(sims: &[(&str, &SimHandle)]) -> Balancer {
    let cfg = Config {
        workers: sims.iter().map(|(id, s)| sim::worker_for(id, s)).collect(),
        balancer: BalancerSettings::default(),
        ..Default::default()
    };
    super::lab::in_process(&cfg, None, Duration::from_secs(5)).await
}

pub fn state(b: &Balancer, id: &str) -> Option<baton::balancer::State> {
    b.stats()
        .workers
        .iter()
        .find(|w| w.id == id)
        .map(|w| w.state)
}

/// One concurrency level: the healthy studio alone vs the pool with the
/// other studio black-holed.
pub struct Level {
    pub concurrency: usize,
    pub alone: LoadReport,
    pub pool: LoadReport,
}

pub struct Outcome {
    pub levels: Vec<Level>,
    /// Share of the black-holed studio while healthy (warm-up).
    pub warm_share: f64,
    pub ejected_after: Duration,
    pub readmitted_after: Option<Duration>,
    /// Share of requests the studio served once back.
    pub share_after: f64,
    pub failed_after: u64,
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Run the reproduction; `secs` per measured level.
pub async fn run(secs: f64) -> Outcome {
    let (h1, h2) = (Host::new().unwrap(), Host::new().unwrap());
    let (s1, s2) = (studio_in(&h1).await, studio_in(&h2).await);
    let single = start(&[("mac-studio-05", &s1)]).await;
    // Warmed like the pool below: a fresh balancer's slow start (it gives a
    // studio twice what it has seen start on time) would otherwise slow
    // the first second of the single studio's run and flatter the pool.
    drive(&single, 12, 1.0).await;
    let mut alone = Vec::new();
    for c in [6, 12] {
        alone.push(drive(&single, c, secs).await);
    }
    single.shutdown().await;

    let pool = start(&[("mac-studio-05", &s1), ("mac-studio-07", &s2)]).await;
    let warm = drive(&pool, 12, 1.0).await;
    let warm_share =
        *warm.per_worker.get("mac-studio-07").unwrap_or(&0) as f64 / warm.ok.max(1) as f64;
    h2.black_hole().unwrap();
    let ejected_after = wait_for(Duration::from_secs(10), || {
        state(&pool, "mac-studio-07") != Some(State::Ready)
    })
    .await
    .expect("the black-holed studio was never ejected");
    let mut levels = Vec::new();
    for (c, a) in [6, 12].into_iter().zip(alone) {
        let p = drive(&pool, c, secs).await;
        levels.push(Level {
            concurrency: c,
            alone: a,
            pool: p,
        });
    }
    h2.clear_black_hole().unwrap();
    let readmitted_after = wait_for(Duration::from_secs(20), || {
        state(&pool, "mac-studio-07") == Some(State::Ready)
    })
    .await;
    let back = drive(&pool, 12, 2.0).await;
    let share_after =
        *back.per_worker.get("mac-studio-07").unwrap_or(&0) as f64 / back.ok.max(1) as f64;
    drop((s1, s2));
    Outcome {
        levels,
        warm_share,
        ejected_after,
        readmitted_after,
        share_after,
        failed_after: back.failed,
    }
}
