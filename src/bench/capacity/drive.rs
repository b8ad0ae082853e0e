//! Capacity mode within a `baton bench` run: each studio searched alone
//! first (directly, all at once), then the pool through Baton's balancer,
//! after a warm-up that lets Baton learn how many requests each studio
//! runs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Length, Target};
use crate::bench::load::{self, LoadSpec, RunOptions};
use crate::bench::probe::{self, ProbeSettings};
use crate::bench::report::{Capacity, StudioCapacity};
use crate::bench::run::{DEFAULT_PROMPT, Observer, Plan};
use crate::config::Worker;

fn prompt(plan: &Plan) -> String {
    plan.prompts
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_PROMPT.to_string())
}

fn length(plan: &Plan) -> Length {
    Length {
        requests: plan.requests,
        duration: plan.duration,
    }
}

/// What the studios measured alone left: each one's capacity, and
/// warnings.
pub type Alone = (Vec<StudioCapacity>, Vec<String>);

/// Each studio's capacity alone (`down`: unreachable ones); `None` when
/// cancelled.
pub async fn studios_alone(
    plan: &Plan,
    settings: &ProbeSettings,
    workers: &[Worker],
    down: &[String],
    obs: &dyn Observer,
    cancel: &CancellationToken,
) -> Option<Alone> {
    if !plan.probe_studios || workers.is_empty() {
        return Some((Vec::new(), Vec::new()));
    }
    obs.note(&format!(
        "searching each of {} studio(s)' capacity alone, under the same service level...",
        workers.len()
    ));
    let (studios, warnings) = tokio::select! {
        r = probe::capacity_all(workers, settings, &plan.slo, length(plan), down) => r,
        _ = cancel.cancelled() => return None,
    };
    for s in &studios {
        let line = match &s.error {
            Some(e) => format!("not measured: {e}"),
            None => format!(
                "{} agent(s) at once{}",
                s.max_concurrency,
                s.limited_by
                    .map(|l| format!(", limited by {}", l.words()))
                    .unwrap_or_default()
            ),
        };
        obs.level_finished(&format!("{} alone", s.id), &line);
    }
    Some((studios, warnings))
}

/// The pool's capacity through `url` (Baton's `/v1`, or any endpoint),
/// with the studios' own; and whether it was cut short.
pub async fn pool(
    plan: &Plan,
    url: &str,
    api_key: Option<String>,
    workers: &[Worker],
    alone: Alone,
    obs: &Arc<dyn Observer>,
    cancel: &CancellationToken,
) -> (Capacity, bool) {
    let body = json!({
        "model": plan.model, "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": plan.max_tokens,
        "messages": [{"role": "user", "content": prompt(plan)}],
    });
    let target = Target {
        url: format!("{url}/chat/completions"),
        api_key,
        body,
        prompt: prompt(plan),
        worker: None,
    };
    let slots: u32 = workers.iter().map(probe::declared_slots).sum();
    // Baton starts each studio low and raises it as first tokens come on
    // time: two rounds at every slot teach it the pool before any point.
    let warm = (slots as usize).max(1);
    let spec = LoadSpec {
        url: target.url.clone(),
        body: target.body.clone(),
        concurrency: warm,
        duration: None,
        requests: Some(plan.warmup_requests.max(2 * warm as u64)),
        api_key: target.api_key.clone(),
        prompts: Vec::new(),
        warmup: Duration::ZERO,
    };
    obs.note(&format!(
        "warming up the pool at {warm} request(s) at once..."
    ));
    let client = load::client();
    tokio::select! {
        _ = load::run_with(&client, &spec, RunOptions::default()) => {}
        _ = cancel.cancelled() => {
            let none = super::Searched {
                cancelled: true,
                ..Default::default()
            };
            return (super::assemble(plan.slo, none, alone.0, alone.1), true);
        }
    }
    let ceiling = super::ceiling(if workers.is_empty() { 32 } else { slots });
    let (searched, mut warnings) =
        super::measure_pool(&target, length(plan), &plan.slo, ceiling, obs, cancel).await;
    let cut = searched.cancelled;
    warnings.extend(alone.1);
    let c = super::assemble(plan.slo, searched, alone.0, warnings);
    obs.note(&format!("{}.", super::sentence(&c)));
    (c, cut)
}
