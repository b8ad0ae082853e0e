//! Health: a background prober per worker, ejection (circuit open) on the
//! first connect failure or timeout, and readmission through one half-open
//! probe with exponential backoff.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::pool::{Failure, State, WorkerEntry};

/// First wait before a half-open probe; doubles on each failed probe.
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

/// Take a worker out of rotation now. Requests waiting for a first byte
/// from it are told through `ejected` and move on.
pub(super) fn eject(w: &WorkerEntry, reason: Failure, detail: &str) {
    let mut h = w.health.lock().expect("health lock");
    let state = w.state();
    if !matches!(state, State::Ready | State::Starting | State::Probing) {
        return;
    }
    // A failed half-open probe doubles the wait; a fresh ejection starts small.
    h.backoff = if state == State::Probing {
        (h.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX)
    } else {
        BACKOFF_START
    };
    h.retry_at = Some(Instant::now() + h.backoff);
    h.last_reason = Some(reason);
    h.last_error = Some(detail.to_string());
    h.consecutive_5xx = 0;
    w.set_state(State::Ejected);
    drop(h);
    // A failed half-open probe continues the same outage: not a new ejection.
    if state != State::Probing {
        w.counters.ejections[reason as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    w.ejected.send_modify(|n| *n += 1);
    if state == State::Probing {
        tracing::debug!(worker = w.id(), "half-open probe failed: {detail}");
    } else {
        tracing::warn!(
            worker = w.id(),
            reason = reason.as_str(),
            "worker ejected: {detail}"
        );
    }
}

/// Put a worker (back) into rotation.
fn admit(shared: &Shared, w: &WorkerEntry, models: Vec<String>, rtt: Duration) {
    let was = w.state();
    {
        let mut h = w.health.lock().expect("health lock");
        let mut all = models;
        if !all.contains(&w.cfg.model) {
            all.push(w.cfg.model.clone());
        }
        h.models = all;
        h.probe_rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
        h.retry_at = None;
        if was != State::Ready {
            h.backoff = Duration::ZERO;
            h.last_error = None;
        }
    }
    if matches!(was, State::Probing | State::Ejected) {
        // What it learned before the outage may be stale: start fresh.
        *w.learned.lock().expect("learned lock") = Default::default();
    }
    if was == State::Removed {
        return;
    }
    if was != State::Ready {
        w.set_state(State::Ready);
        match was {
            State::Starting => tracing::debug!(worker = w.id(), url = %w.base_url, "worker ready"),
            _ => tracing::info!(worker = w.id(), "worker readmitted"),
        }
        shared.pool.dispatch();
        shared.ready.notify_waiters();
    }
}

/// Probe loop for one worker; ends when the worker is removed or `stop` fires.
pub(super) async fn run(shared: Arc<Shared>, w: Arc<WorkerEntry>, stop: CancellationToken) {
    loop {
        let state = w.state();
        if state == State::Removed {
            return;
        }
        if state == State::Ejected {
            let retry_at = w.health.lock().expect("health lock").retry_at;
            let wait = retry_at
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or_default();
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if w.state() != State::Ejected {
                continue;
            }
            w.set_state(State::Probing);
            // Half-open: the models list and one real token must both work,
            // so a studio that lists models but fails generations stays out.
            match probe(&shared, &w, true).await {
                Ok((models, rtt)) => admit(&shared, &w, models, rtt),
                Err((reason, detail)) => eject(&w, reason, &detail),
            }
            continue;
        }
        match probe(&shared, &w, false).await {
            Ok((models, rtt)) => admit(&shared, &w, models, rtt),
            Err((reason, detail)) => {
                w.count_failure(Failure::Probe);
                eject(&w, reason, &detail);
                continue;
            }
        }
        let interval = shared.settings().probe_interval;
        let mut ejected = w.ejected.subscribe();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            // Ejected by live traffic: start the backoff now.
            _ = ejected.changed() => {}
        }
    }
}

type ProbeResult = Result<(Vec<String>, Duration), (Failure, String)>;

/// One probe: `GET /v1/models` with validated JSON, and for half-open probes
/// a one-token completion of the configured model.
async fn probe(shared: &Shared, w: &WorkerEntry, with_completion: bool) -> ProbeResult {
    let timeout = shared.settings().probe_timeout;
    let t0 = Instant::now();
    let req = shared.with_auth(shared.client().get(format!("{}/v1/models", w.base_url)), w);
    let resp = match tokio::time::timeout(timeout, req.send()).await {
        Err(_) => {
            return Err((
                Failure::Timeout,
                format!("models probe timed out after {timeout:?}"),
            ));
        }
        Ok(Err(e)) => return Err(classify(&e)),
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    let body = match tokio::time::timeout(timeout.saturating_sub(t0.elapsed()), resp.bytes()).await
    {
        Err(_) => return Err((Failure::Timeout, "models probe body timed out".into())),
        Ok(Err(e)) => return Err((Failure::Connect, format!("models probe failed: {e}"))),
        Ok(Ok(b)) => b,
    };
    let rtt = t0.elapsed();
    if !status.is_success() {
        return Err((Failure::Probe, format!("GET /v1/models answered {status}")));
    }
    let models = crate::studio::parse_openai_models(&body).ok_or_else(|| {
        (
            Failure::Probe,
            "GET /v1/models did not return a model list (is this an OpenAI-compatible server?)"
                .to_string(),
        )
    })?;
    if with_completion {
        let body = serde_json::json!({
            "model": w.cfg.model, "max_tokens": 1, "stream": false,
            "messages": [{"role": "user", "content": "ping"}],
        });
        let req = shared.with_auth(
            shared
                .client()
                .post(format!("{}/v1/chat/completions", w.base_url)),
            w,
        );
        // A cold model may need to load: allow more than the list probe.
        let limit = timeout.max(Duration::from_secs(1)) * 5;
        match tokio::time::timeout(limit, req.json(&body).send()).await {
            Err(_) => {
                return Err((
                    Failure::Timeout,
                    format!("completion probe timed out after {limit:?}"),
                ));
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(r)) if r.status().is_server_error() => {
                return Err((
                    Failure::Status5xx,
                    format!("completion probe answered {}", r.status()),
                ));
            }
            // 2xx, or a 4xx that proves the server is alive and answering.
            Ok(Ok(r)) => {
                let _ = tokio::time::timeout(limit, r.bytes()).await;
            }
        }
    }
    Ok((models, rtt))
}

/// Map a transport error to a failure reason and a readable detail.
pub(super) fn classify(e: &reqwest::Error) -> (Failure, String) {
    let mut detail = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        detail = format!("{detail}: {s}");
        src = s.source();
    }
    if e.is_timeout() {
        (Failure::Timeout, detail)
    } else if e.is_connect() {
        (Failure::Connect, detail)
    } else {
        (Failure::Stream, detail)
    }
}
