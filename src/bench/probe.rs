//! Each studio measured alone and directly (not through Baton) before the
//! sweep: its first answer (a model load shows there), one request at a
//! time, then as many at once as it has slots. The request goes to the API
//! on which the studio reports its own timings: LM Studio's `/api/v0`
//! (`stats`), Ollama's `/api/chat` (durations), llama.cpp's `/v1` stream
//! (`timings`), vLLM's `/v1` with `/metrics` read before and after; other
//! kinds are measured client-side only.
//!
//! The studios' sum alone is what the pool's throughput is judged against
//! (scaling efficiency); one request at a time alone is what Baton's own
//! overhead is judged against.
//!
//! In capacity mode each studio's capacity under the service level is then
//! searched alone too (on its OpenAI stream, where the first token can be
//! timed): what it is worth to the pool.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::capacity::{self, Length};
use super::load::{self, LoadReport, LoadSpec, RunOptions};
use super::report::{ProbeRun, Slo, StudioCapacity, StudioProbe, TimeSplit, WorkerEvidence};
use crate::config::Worker;
use crate::studio::StudioKind;

/// Requests one at a time after the first (which is kept apart): enough
/// for a median, few enough to keep the probe short on slow studios.
const SINGLE_REQUESTS: u64 = 3;
/// Rounds of `slots` requests at once: the first round starts together,
/// the second shows the steady rate.
const FULL_ROUNDS: u64 = 2;

/// The slots a studio is declared with (`max_concurrent_requests`): the
/// one place the diagnosis reads them.
pub fn declared_slots(w: &Worker) -> u32 {
    w.max_concurrent_requests.ceiling()
}

/// What to ask each studio.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    pub model: String,
    pub max_tokens: u32,
    pub prompt: String,
    /// A studio that does not accept a connection in this time is down.
    pub connect_timeout: Duration,
    /// Longest silence within an answer (a model load comes before the
    /// first byte, so this must allow for one).
    pub read_timeout: Duration,
}

fn client(s: &ProbeSettings) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(s.connect_timeout)
        .read_timeout(s.read_timeout)
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .http1_only()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
        .expect("HTTP client")
}

/// The endpoint and body for one generation, on the API that reports the
/// studio's timings.
fn request(w: &Worker, s: &ProbeSettings, native: bool) -> (String, Value) {
    let messages = json!([{"role": "user", "content": s.prompt}]);
    let base = w.base_url();
    match (w.kind, native) {
        (StudioKind::LmStudio, true) => (
            format!("{base}/api/v0/chat/completions"),
            json!({"model": s.model, "messages": messages, "max_tokens": s.max_tokens,
                   "stream": false}),
        ),
        (StudioKind::Ollama, true) => (
            format!("{base}/api/chat"),
            json!({"model": s.model, "messages": messages, "stream": true,
                   "options": {"num_predict": s.max_tokens}}),
        ),
        _ => (
            format!("{base}/v1/chat/completions"),
            json!({"model": s.model, "messages": messages, "max_tokens": s.max_tokens,
                   "stream": true, "stream_options": {"include_usage": true}}),
        ),
    }
}

/// Measure every studio at once (they are separate machines).
pub async fn probe_all(workers: &[Worker], s: &ProbeSettings) -> Vec<StudioProbe> {
    let c = client(s);
    futures_util::future::join_all(workers.iter().map(|w| probe_one(&c, w, s))).await
}

/// Each studio's capacity alone under `slo`, all searched at once (they are
/// separate machines); `down` are studios the probe could not reach.
/// Warnings for points too short for their p95.
pub async fn capacity_all<'a>(
    workers: &'a [Worker],
    s: &ProbeSettings,
    slo: &Slo,
    length: Length,
    down: &[String],
) -> (Vec<StudioCapacity>, Vec<String>) {
    let c = client(s);
    let base = capacity::seed();
    let one = |i: usize, w: &'a Worker| {
        let c = c.clone();
        async move {
            let slots = declared_slots(w);
            if down.contains(&w.id) {
                return (
                    StudioCapacity {
                        id: w.id.clone(),
                        slots,
                        error: Some("unreachable when measured alone".into()),
                        ..StudioCapacity::default()
                    },
                    Vec::new(),
                );
            }
            let (url, body) = request(w, s, false);
            let target = capacity::Target {
                url,
                body,
                api_key: w
                    .api_key
                    .as_ref()
                    .and_then(|r| crate::secrets::resolve(r).ok()),
                prompt: s.prompt.clone(),
                worker: Some(w.id.clone()),
            };
            let seed = base.rotate_left(i as u32 * 8);
            let searched = capacity::search(capacity::ceiling(slots), |n| {
                let (c, target) = (&c, &target);
                async move {
                    let p =
                        capacity::point::measure(c, target, length, slo, n, seed ^ n as u64, None)
                            .await;
                    Some(p)
                }
            })
            .await;
            let who = format!("{} alone", w.id);
            let warnings = searched
                .points
                .iter()
                .filter_map(|p| capacity::point::too_few(p, &who))
                .collect();
            (capacity::studio(&w.id, slots, searched), warnings)
        }
    };
    let all =
        futures_util::future::join_all(workers.iter().enumerate().map(|(i, w)| one(i, w))).await;
    let mut warnings = Vec::new();
    let studios = all
        .into_iter()
        .map(|(s, w)| {
            warnings.extend(w);
            s
        })
        .collect();
    (studios, warnings)
}

/// Whether the model is loaded, where the studio says so.
async fn loaded(c: &reqwest::Client, w: &Worker, model: &str, key: Option<&str>) -> Option<bool> {
    let path = match w.kind {
        StudioKind::LmStudio => "/api/v0/models",
        StudioKind::Ollama => "/api/ps",
        _ => return None,
    };
    let mut rb = c
        .get(format!("{}{path}", w.base_url()))
        .timeout(Duration::from_secs(2));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let v: Value = rb.send().await.ok()?.json().await.ok()?;
    match w.kind {
        StudioKind::LmStudio => v
            .get("data")?
            .as_array()?
            .iter()
            .find(|m| m.get("id").and_then(Value::as_str) == Some(model))
            .and_then(|m| m.get("state").and_then(Value::as_str))
            .map(|s| s == "loaded"),
        _ => {
            let base = |n: &str| n.strip_suffix(":latest").unwrap_or(n).to_string();
            Some(v.get("models")?.as_array()?.iter().any(|m| {
                m.get("name")
                    .or_else(|| m.get("model"))
                    .and_then(Value::as_str)
                    .is_some_and(|n| base(n) == base(model))
            }))
        }
    }
}

fn detail(r: &LoadReport, id: &str) -> WorkerEvidence {
    r.evidence
        .workers
        .get(id)
        .map(|w| w.evidence())
        .unwrap_or_default()
}

/// A probe's figures. Throughput is answers over the elapsed time: both
/// rounds start together and end together, so this is the studio's rate
/// with every slot busy (for a studio that runs one at a time it is
/// exactly its serial rate).
fn probe_run(r: &LoadReport, id: &str, concurrency: usize) -> ProbeRun {
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    ProbeRun {
        concurrency,
        elapsed_s: r.elapsed.as_secs_f64(),
        requests_per_second: r.ok as f64 / secs,
        output_tokens_per_second: r.tokens as f64 / secs,
        detail: detail(r, id),
    }
}

/// The first failure of a run, with its class.
fn failure(r: &LoadReport, id: &str) -> (String, String) {
    let class = r
        .evidence
        .workers
        .get(id)
        .map(|w| w.evidence())
        .and_then(|w| w.errors.keys().next().cloned())
        .unwrap_or_default();
    let msg = r
        .errors
        .first()
        .cloned()
        .unwrap_or_else(|| "no answer".into());
    (class, msg)
}

async fn probe_one(c: &reqwest::Client, w: &Worker, s: &ProbeSettings) -> StudioProbe {
    let key = w
        .api_key
        .as_ref()
        .and_then(|r| crate::secrets::resolve(r).ok());
    let mut p = StudioProbe {
        worker: w.id.clone(),
        kind: w.kind.as_str().to_string(),
        slots: declared_slots(w),
        ..StudioProbe::default()
    };
    p.model_loaded_before = loaded(c, w, &s.model, key.as_deref()).await;
    let opts = RunOptions {
        worker: Some(w.id.clone()),
        ..RunOptions::default()
    };
    let spec = |native: bool, requests: u64, concurrency: usize| {
        let (url, body) = request(w, s, native);
        LoadSpec {
            url,
            body,
            concurrency,
            duration: None,
            requests: Some(requests),
            api_key: key.clone(),
            prompts: Vec::new(),
            warmup: Duration::ZERO,
        }
    };
    // The first answer, apart: it may pay for a model load. A studio that
    // answers with an error gets three tries (a flaky one answers in the
    // end); for the third, one that does not know its native API (an older
    // version) is asked on the OpenAI one, measured client-side only.
    let mut native = true;
    let mut first = load::run_with(c, &spec(native, 1, 1), opts.clone()).await;
    while first.ok == 0 {
        let (class, _) = failure(&first, &w.id);
        let reachable = !matches!(class.as_str(), "connect" | "timeout" | "");
        if !reachable || p.first_failures >= 2 {
            p.first_failures += 1;
            break;
        }
        p.first_failures += 1;
        if p.first_failures == 2 && request(w, s, true).0 != request(w, s, false).0 {
            native = false;
        }
        first = load::run_with(c, &spec(native, 1, 1), opts.clone()).await;
    }
    p.endpoint = request(w, s, native).0;
    if first.ok == 0 {
        let (class, msg) = failure(&first, &w.id);
        p.wrong_model = msg.contains("HTTP 404") && msg.to_lowercase().contains("model");
        p.error = Some(if class.is_empty() {
            msg
        } else {
            format!("{msg} ({class})")
        });
        return p;
    }
    p.first = Some(detail(&first, &w.id));
    let vllm = w.kind == StudioKind::Vllm;
    let metrics = |c: &reqwest::Client| {
        let (c, base, key) = (c.clone(), w.base_url(), key.clone());
        async move {
            if vllm {
                vllm_metrics(&c, &base, key.as_deref()).await
            } else {
                None
            }
        }
    };
    let m0 = metrics(c).await;
    let single = load::run_with(c, &spec(native, SINGLE_REQUESTS, 1), opts.clone()).await;
    let m1 = metrics(c).await;
    let mut one = probe_run(&single, &w.id, 1);
    attach_vllm(&mut one.detail, m0.as_ref(), m1.as_ref());
    p.single = Some(one);
    let slots = declared_slots(w).max(1) as usize;
    if slots >= 2 {
        let full = load::run_with(
            c,
            &spec(native, FULL_ROUNDS * slots as u64, slots),
            opts.clone(),
        )
        .await;
        let m2 = metrics(c).await;
        let mut all = probe_run(&full, &w.id, slots);
        attach_vllm(&mut all.detail, m1.as_ref(), m2.as_ref());
        p.full = Some(all);
    }
    p.timings = [p.first.as_ref(), p.single.as_ref().map(|r| &r.detail)]
        .into_iter()
        .flatten()
        .find_map(|d| d.server.as_ref().map(|s| s.source.clone()))
        .flatten();
    p
}

/// vLLM's request histograms: name -> (sum, count).
pub type VllmMetrics = BTreeMap<String, (f64, f64)>;

const VLLM_HISTOGRAMS: [&str; 5] = [
    "vllm:request_queue_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:time_to_first_token_seconds",
];

/// Read vLLM's `/metrics` (sums and counts of its request histograms,
/// over every model label).
pub async fn vllm_metrics(
    c: &reqwest::Client,
    base: &str,
    key: Option<&str>,
) -> Option<VllmMetrics> {
    let mut rb = c
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(2));
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let text = rb.send().await.ok()?.text().await.ok()?;
    Some(parse_vllm(&text))
}

fn parse_vllm(text: &str) -> VllmMetrics {
    let mut m = VllmMetrics::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or("");
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        for h in VLLM_HISTOGRAMS {
            if let Some(rest) = name.strip_prefix(h) {
                let e = m.entry(h.to_string()).or_default();
                match rest {
                    "_sum" => e.0 += v,
                    "_count" => e.1 += v,
                    _ => {}
                }
            }
        }
    }
    m
}

/// The split over the requests between two readings of `/metrics`.
pub fn vllm_split(before: &VllmMetrics, after: &VllmMetrics) -> Option<TimeSplit> {
    let mean = |h: &str| {
        let (s1, n1) = after.get(h).copied()?;
        let (s0, n0) = before.get(h).copied().unwrap_or((0.0, 0.0));
        let n = n1 - n0;
        (n > 0.0).then(|| (s1 - s0) / n * 1000.0)
    };
    let requests = {
        let (_, n1) = after.get(VLLM_HISTOGRAMS[3]).copied()?;
        let (_, n0) = before.get(VLLM_HISTOGRAMS[3]).copied().unwrap_or_default();
        (n1 - n0).max(0.0) as u64
    };
    if requests == 0 {
        return None;
    }
    Some(TimeSplit {
        source: Some("vLLM /metrics".into()),
        requests: Some(requests),
        queue_ms: mean(VLLM_HISTOGRAMS[0]),
        prefill_ms: mean(VLLM_HISTOGRAMS[1]),
        decode_ms: mean(VLLM_HISTOGRAMS[2]),
        total_ms: mean(VLLM_HISTOGRAMS[3]),
        ttft_ms: mean(VLLM_HISTOGRAMS[4]),
        ..TimeSplit::default()
    })
}

/// Give a studio's figures the split vLLM's `/metrics` tell, when the
/// answers carried none.
pub fn attach_vllm(
    w: &mut WorkerEvidence,
    before: Option<&VllmMetrics>,
    after: Option<&VllmMetrics>,
) {
    if w.server.is_some() {
        return;
    }
    let (Some(b), Some(a)) = (before, after) else {
        return;
    };
    if let Some(mut split) = vllm_split(b, a) {
        split.outside_ms = split.total_ms.map(|t| (w.latency_ms.mean - t).max(0.0));
        w.server = Some(split);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_deltas_give_mean_phases() {
        let before = parse_vllm(
            "# HELP x\nvllm:request_queue_time_seconds_sum{model_name=\"m\"} 1\nvllm:request_queue_time_seconds_count{model_name=\"m\"} 2\nvllm:e2e_request_latency_seconds_sum{model_name=\"m\"} 4\nvllm:e2e_request_latency_seconds_count{model_name=\"m\"} 2\n",
        );
        let after = parse_vllm(
            "vllm:request_queue_time_seconds_sum{model_name=\"m\"} 1.5\nvllm:request_queue_time_seconds_count{model_name=\"m\"} 4\nvllm:e2e_request_latency_seconds_sum{model_name=\"m\"} 8\nvllm:e2e_request_latency_seconds_count{model_name=\"m\"} 4\nvllm:e2e_request_latency_seconds_bucket{le=\"+Inf\",model_name=\"m\"} 4\n",
        );
        let s = vllm_split(&before, &after).unwrap();
        assert_eq!(s.requests, Some(2));
        assert!((s.queue_ms.unwrap() - 250.0).abs() < 1e-9);
        assert!((s.total_ms.unwrap() - 2000.0).abs() < 1e-9);
        assert!(s.prefill_ms.is_none());
    }
}
