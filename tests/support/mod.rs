//! Helpers shared by the integration tests: SSE parsing, polling, clients.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::Value;

/// One parsed SSE stream: the JSON events and whether `[DONE]` arrived.
#[derive(Debug, Default)]
pub struct Sse {
    pub events: Vec<Value>,
    pub done: bool,
}

impl Sse {
    /// Concatenated content of chat deltas or legacy completion texts.
    pub fn text(&self) -> String {
        self.events
            .iter()
            .filter_map(|e| {
                e.pointer("/choices/0/delta/content")
                    .or_else(|| e.pointer("/choices/0/text"))
                    .and_then(Value::as_str)
            })
            .collect()
    }

    /// Events that carry non-empty content.
    pub fn content_events(&self) -> usize {
        self.events
            .iter()
            .filter(|e| {
                e.pointer("/choices/0/delta/content")
                    .or_else(|| e.pointer("/choices/0/text"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
            .count()
    }

    pub fn usage(&self) -> Option<&Value> {
        self.events
            .iter()
            .rev()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()))
    }
}

/// Parse an SSE body strictly: every event must be `data: <json>` or `data: [DONE]`.
pub fn parse_sse(body: &str) -> Result<Sse, String> {
    let mut out = Sse::default();
    for block in body.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let data = block
            .strip_prefix("data: ")
            .ok_or_else(|| format!("event without `data: `: {block:?}"))?;
        if out.done {
            return Err(format!("event after [DONE]: {data}"));
        }
        if data == "[DONE]" {
            out.done = true;
        } else {
            out.events
                .push(serde_json::from_str(data).map_err(|e| format!("bad JSON {data:?}: {e}"))?);
        }
    }
    Ok(out)
}

/// Poll `f` every 5 ms until it returns true or `limit` passes.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap()
}

pub fn chat_body(max_tokens: u32, stream: bool) -> Value {
    serde_json::json!({
        "model": baton::sim::DEFAULT_MODEL,
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Say something about pooled studios"}],
    })
}

/// Simulated studios plus a balancer in front of them, on loopback.
pub struct Lab {
    pub sims: Vec<baton::sim::SimHandle>,
    pub balancer: baton::balancer::Balancer,
    pub config: baton::config::Config,
}

/// Settings tuned for tests: fast probes, short timeouts.
pub fn test_settings() -> baton::config::BalancerSettings {
    baton::config::BalancerSettings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        connect_timeout: Duration::from_millis(300),
        first_token_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5),
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

pub fn worker_for(id: &str, sim: &baton::sim::SimHandle) -> baton::config::Worker {
    baton::sim::worker_for(id, sim)
}

/// Simulated studios on 127.0.0.1, each on a port the OS picks: the one
/// way the tests start a pool of them.
pub async fn start_sims(
    cfgs: impl IntoIterator<Item = baton::sim::SimConfig>,
) -> Vec<baton::sim::SimHandle> {
    let mut handles = Vec::new();
    for c in cfgs {
        handles.push(
            baton::sim::start("127.0.0.1:0".parse().unwrap(), c)
                .await
                .unwrap(),
        );
    }
    handles
}

/// The workers-file entries for `sims`, the i-th named `name(i)`.
pub fn workers_for(
    sims: &[baton::sim::SimHandle],
    name: impl Fn(usize) -> String,
) -> Vec<baton::config::Worker> {
    sims.iter()
        .enumerate()
        .map(|(i, s)| worker_for(&name(i), s))
        .collect()
}

pub fn sim_cfg(slots: usize, ttft_ms: u64, tps: f64) -> baton::sim::SimConfig {
    baton::sim::SimConfig {
        slots,
        ttft: Duration::from_millis(ttft_ms),
        tokens_per_second: tps,
        ..Default::default()
    }
}

impl Lab {
    /// Start one studio per config (ids `s0`, `s1`, ...) and a balancer.
    pub async fn start(
        sims: Vec<baton::sim::SimConfig>,
        settings: baton::config::BalancerSettings,
    ) -> Lab {
        Self::start_with_key(sims, settings, None).await
    }

    pub async fn start_with_key(
        sims: Vec<baton::sim::SimConfig>,
        settings: baton::config::BalancerSettings,
        key: Option<String>,
    ) -> Lab {
        Self::start_full(sims, settings, key, Default::default()).await
    }

    /// The general form: studios, settings, the balancer's key, aliases.
    pub async fn start_full(
        sims: Vec<baton::sim::SimConfig>,
        settings: baton::config::BalancerSettings,
        key: Option<String>,
        aliases: baton::config::Aliases,
    ) -> Lab {
        let handles = start_sims(sims).await;
        let workers = workers_for(&handles, |i| format!("s{i}"));
        let config = baton::config::Config {
            workers,
            balancer: settings,
            aliases,
        };
        let balancer = baton::balancer::Balancer::start(&config, None, key)
            .await
            .unwrap();
        let lab = Lab {
            sims: handles,
            balancer,
            config,
        };
        lab.wait_all_ready().await;
        lab
    }

    pub async fn wait_all_ready(&self) {
        let ok = self.balancer.wait_all_ready(Duration::from_secs(5)).await;
        assert!(ok, "workers not ready: {:?}", self.balancer.stats());
    }

    pub fn url(&self) -> String {
        self.balancer.url()
    }

    /// `http://addr` without `/v1` (Anthropic and Ollama clients add their
    /// own paths).
    pub fn root(&self) -> String {
        format!("http://{}", self.balancer.addr())
    }

    pub fn worker(&self, id: &str) -> baton::balancer::WorkerStats {
        self.balancer
            .stats()
            .workers
            .into_iter()
            .find(|w| w.id == id)
            .expect("worker in stats")
    }

    pub async fn chat(&self, c: &reqwest::Client, body: &Value) -> reqwest::Response {
        c.post(format!("{}/chat/completions", self.url()))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// Run one streamed chat through the balancer; returns (status, worker, parsed SSE).
pub async fn stream_chat(
    c: &reqwest::Client,
    url: &str,
    max_tokens: u32,
) -> (u16, String, Result<Sse, String>) {
    let r = c
        .post(format!("{url}/chat/completions"))
        .json(&chat_body(max_tokens, true))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let worker = r
        .headers()
        .get("x-baton-worker")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = r.text().await.unwrap_or_default();
    (status, worker, parse_sse(&body))
}

pub mod netlab;
pub mod real;
pub mod seed000;
pub mod throwaway;
