//! Soak: many streaming clients against four lab studios while a chaos loop
//! kills, black-holes, delays and pauses them. Nothing may hang or be lost,
//! and the balancer must end as lean as it started.
//!
//! About 60 s by default; `BATON_SOAK_SECS=600 cargo test --test soak` for
//! a longer run. Needs root (network namespaces). A test binary of its own:
//! a minute of sixteen clients and chaos loads the whole machine, which
//! would skew the timing of any test run beside it.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton::config::{BalancerSettings, Config, Worker};
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::Served;
use support::netlab::{self, DelayRelay, Host, StudioProcess};

const TOKENS: u64 = 40;
const CLIENTS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Complete,
    /// An HTTP error before the first byte (the balancer had no studio).
    ErrorBeforeFirstByte,
    /// The stream began, then ended with an SSE error event.
    CleanErrorMidStream,
    /// Anything else: truncated without an error, or a hang.
    Violation,
}

async fn one(c: &reqwest::Client, url: &str) -> (Outcome, String) {
    let body = json!({"model": baton::sim::DEFAULT_MODEL, "stream": true, "max_tokens": TOKENS,
                      "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "soak"}]});
    let run = async {
        let r = match c.post(url).json(&body).send().await {
            Ok(r) => r,
            Err(e) => return (Outcome::Violation, format!("transport: {e}")),
        };
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            let clean = serde_json::from_str::<Value>(&text)
                .is_ok_and(|v| v["error"]["message"].is_string());
            return (
                if clean {
                    Outcome::ErrorBeforeFirstByte
                } else {
                    Outcome::Violation
                },
                format!("{status}: {text}"),
            );
        }
        let mut text = String::new();
        let mut stream = r.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
                Err(e) => {
                    return (
                        Outcome::Violation,
                        format!("body broke without an error event: {e}"),
                    );
                }
            }
        }
        match support::parse_sse(&text) {
            Ok(sse) if sse.done && sse.content_events() as u64 == TOKENS => {
                (Outcome::Complete, String::new())
            }
            Ok(sse) if sse.events.last().is_some_and(|e| e.get("error").is_some()) => (
                Outcome::CleanErrorMidStream,
                sse.events.last().unwrap().to_string(),
            ),
            Ok(sse) => (
                Outcome::Violation,
                format!(
                    "incomplete: {} tokens, done={}",
                    sse.content_events(),
                    sse.done
                ),
            ),
            Err(e) => (Outcome::Violation, e),
        }
    };
    // The balancer's own timeouts (queue 20 s, first token 10 s, idle 5 s)
    // bound every request; past this it hung.
    match tokio::time::timeout(Duration::from_secs(45), run).await {
        Ok(x) => x,
        Err(_) => (
            Outcome::Violation,
            "hung past every configured timeout".into(),
        ),
    }
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

struct Studio {
    host: Host,
    process: StudioProcess,
    relay: DelayRelay,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Killed,
    BlackHole,
    Delay,
    Paused,
}

fn apply(s: &mut Studio, f: Fault, on: bool) {
    match (f, on) {
        (Fault::Killed, true) => s.process.kill(),
        (Fault::Killed, false) => s.process.restart(),
        (Fault::BlackHole, true) => s.host.black_hole().unwrap(),
        (Fault::BlackHole, false) => s.host.clear_black_hole().unwrap(),
        (Fault::Delay, true) => s.relay.set_delay(300),
        (Fault::Delay, false) => s.relay.set_delay(0),
        (Fault::Paused, true) => s.process.pause(),
        (Fault::Paused, false) => s.process.resume(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_under_chaos_loses_nothing_and_leaks_nothing() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    let secs: u64 = std::env::var("BATON_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let _ = rlimit::increase_nofile_limit(u64::MAX);

    // Four studio hosts: a sim process on :1235 behind a delay relay on :1234.
    let mut studios = Vec::new();
    for _ in 0..4 {
        let host = Host::new().unwrap();
        let process = StudioProcess::start(
            &host,
            1235,
            &["--slots", "4", "--tps", "50", "--ttft-ms", "100"],
        );
        let relay = DelayRelay::start(&host, 1234, SocketAddr::from((host.ip, 1235)));
        studios.push(Studio {
            host,
            process,
            relay,
        });
    }
    let workers: Vec<Worker> = studios
        .iter()
        .enumerate()
        .map(|(i, s)| support::worker(&format!("studio-{}", i + 1), &s.host.ip.to_string(), 1234))
        .collect();
    let config = Config {
        workers,
        balancer: BalancerSettings {
            connect_timeout: Duration::from_millis(300),
            first_token_timeout: Duration::from_millis(10000),
            idle_timeout: Duration::from_millis(5000),
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(800),
            queue_timeout: Duration::from_millis(20000),
            ..Default::default()
        },
        ..Default::default()
    };
    let baton = Served::start(&config, Stdio::null());
    baton.wait_all_ready(Duration::from_secs(10)).await;
    let pid = baton.pid();
    let url = baton.at("/v1/chat/completions");
    // Warm-up, then the baseline (clients gone, pools warm).
    let client = baton::bench::load::client();
    let warm: Vec<_> = (0..CLIENTS).map(|_| one(&client, &url)).collect();
    futures_util::future::join_all(warm).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, fds0) = (baton.rss_kb(), fds(pid));

    // The soak: clients loop while the chaos loop flaps studios.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (client, url, stop) = (client.clone(), url.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                out.push(one(&client, &url).await);
            }
            out
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut rng: u64 = 0x9e3779b97f4a7c15;
    let mut rand = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let faults = [Fault::Killed, Fault::BlackHole, Fault::Delay, Fault::Paused];
    let mut applied: BTreeMap<&str, u32> = BTreeMap::new();
    while Instant::now() < deadline {
        // At most two studios are bad at once, so two stay healthy.
        let a = rand(4) as usize;
        let b = (a + 1 + rand(3) as usize) % 4;
        let (fa, fb) = (faults[rand(4) as usize], faults[rand(4) as usize]);
        apply(&mut studios[a], fa, true);
        apply(&mut studios[b], fb, true);
        *applied.entry(format!("{fa:?}").leak()).or_default() += 1;
        *applied.entry(format!("{fb:?}").leak()).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(1500 + rand(1500))).await;
        apply(&mut studios[a], fa, false);
        apply(&mut studios[b], fb, false);
        tokio::time::sleep(Duration::from_millis(500 + rand(1000))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    // Every studio back: let the pool settle, then look at the balancer.
    for s in &studios {
        assert!(s.process.is_running());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let end = baton.stats().await.expect("balancer alive after the soak");
    let (rss1, fds1) = (baton.rss_kb(), fds(pid));

    let mut counts: BTreeMap<Outcome, usize> = BTreeMap::new();
    for (o, _) in &all {
        *counts.entry(*o).or_default() += 1;
    }
    eprintln!(
        "soak {secs} s: {} requests {counts:?}; faults {applied:?}; RSS {rss0} -> {rss1} kB; fds {fds0} -> {fds1}",
        all.len()
    );
    let violations: Vec<&String> = all
        .iter()
        .filter(|(o, _)| *o == Outcome::Violation)
        .map(|(_, m)| m)
        .take(5)
        .collect();
    assert!(
        violations.is_empty(),
        "requests neither completed nor cleanly failed: {violations:?}"
    );
    let early: Vec<&String> = all
        .iter()
        .filter(|(o, _)| *o == Outcome::ErrorBeforeFirstByte)
        .map(|(_, m)| m)
        .take(5)
        .collect();
    assert!(
        early.is_empty(),
        "failed before the first byte while healthy studios had slots: {early:?}"
    );
    assert!(
        counts.get(&Outcome::Complete).copied().unwrap_or(0) > all.len() * 8 / 10,
        "{counts:?}"
    );
    for w in end["workers"].as_array().unwrap() {
        assert_eq!(w["in_flight"], 0, "{w}");
    }
    assert_eq!(end["queue_depth"], 0);
    assert!(
        rss1 as f64 <= rss0 as f64 * 1.10,
        "RSS grew from {rss0} kB to {rss1} kB"
    );
    assert!(fds1 <= fds0 + 8, "open files grew from {fds0} to {fds1}");
}
