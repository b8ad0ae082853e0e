//! The balancer's HTTP server: OpenAI-compatible endpoints, forwarding with
//! retries before the first byte, unbuffered streaming after it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::health::{classify, eject};
use super::pool::{Failure, NoSlot, SlotGuard, State as WState, WorkerEntry};
use super::{Shared, WORKER_HEADER, metrics};

type St = State<Arc<Shared>>;

/// Consecutive 5xx answers after which a worker is ejected.
const EJECT_AFTER_5XX: u32 = 2;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new()
        .route("/v1/chat/completions", post(forward))
        .route("/v1/completions", post(forward))
        .route("/v1/embeddings", post(forward))
        .route("/v1/responses", post(forward))
        .route("/v1/models", get(models))
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .fallback(not_found);
    if shared.api_key.is_some() {
        r = r.layer(middleware::from_fn_with_state(shared.clone(), authorize));
    }
    // Health stays open: load balancers and the menu bar poll it.
    r.route("/health", get(health)).with_state(shared)
}

/// An OpenAI-shaped error response.
pub(super) fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unavailable(message: &str, code: &str) -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        message,
        "server_error",
        Some(code),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

async fn authorize(State(s): St, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            s.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            return error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>`",
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        &format!(
            "unknown endpoint {}; Baton serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses and /v1/models",
            uri.path()
        ),
        "invalid_request_error",
        Some("unknown_url"),
    )
}

async fn health(State(s): St) -> Response {
    let workers = s.pool.workers();
    let ready = workers
        .iter()
        .filter(|w| w.state() == WState::Ready)
        .count();
    let total = workers
        .iter()
        .filter(|w| w.state() != WState::Removed)
        .count();
    let status = if ready > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({"status": if ready > 0 { "ok" } else { "unavailable" },
                      "ready_workers": ready, "workers": total});
    (status, axum::Json(body)).into_response()
}

async fn stats(State(s): St) -> axum::Json<metrics::Snapshot> {
    axum::Json(metrics::snapshot(&s.pool, s.started.elapsed()))
}

async fn prometheus(State(s): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(&s.pool, &s.metrics),
    )
        .into_response()
}

/// Models of ready workers, de-duplicated, with the workers serving each.
async fn models(State(s): St) -> axum::Json<Value> {
    let mut by_model: Vec<(String, Vec<String>)> = Vec::new();
    for w in s
        .pool
        .workers()
        .iter()
        .filter(|w| w.state() == WState::Ready)
    {
        for m in w.models() {
            match by_model.iter_mut().find(|(id, _)| *id == m) {
                Some((_, ws)) => ws.push(w.id().to_string()),
                None => by_model.push((m, vec![w.id().to_string()])),
            }
        }
    }
    let data: Vec<Value> = by_model
        .into_iter()
        .map(|(id, ws)| json!({"id": id, "object": "model", "owned_by": "baton", "workers": ws}))
        .collect();
    axum::Json(json!({"object": "list", "data": data}))
}

/// Every model any live worker serves, sorted, for error messages.
fn known_models(s: &Shared) -> Vec<String> {
    let mut all: Vec<String> = s
        .pool
        .workers()
        .iter()
        .filter(|w| w.state() != WState::Removed)
        .flat_map(|w| w.models())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// Read the request body, refusing more than `limit` bytes.
async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, Response> {
    let too_big = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body is larger than the {limit}-byte limit (balancer.max_body_bytes)"
            ),
            "invalid_request_error",
            Some("request_too_large"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_big());
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_big()),
        Err(e) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("could not read the request body: {e}"),
            "invalid_request_error",
            None,
        )),
    }
}

#[derive(serde::Deserialize)]
struct RequestHead<'a> {
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    /// Helps estimate how long the answer takes; odd values are ignored.
    #[serde(default, deserialize_with = "lenient_u64")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_completion_tokens: Option<u64>,
}

/// A whole number if it is one; anything else is left to the studio to judge.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Value = serde::Deserialize::deserialize(d)?;
    Ok(v.as_u64())
}

fn parse_head(body: &[u8]) -> Result<RequestHead<'_>, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        return Err("request body must be a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("invalid request: {e}"),
        _ => format!("request body is not valid JSON: {e}"),
    })
}

/// `POST /v1/...`: route to a worker, retrying on another before the first byte.
async fn forward(State(s): St, req: Request) -> Response {
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let (parts, body) = req.into_parts();
    // One snapshot of the settings per request, so a reload mid-request is consistent.
    let settings = s.settings();
    let limit = settings.max_body_bytes;
    let body = match read_body(body, &parts.headers, limit).await {
        Ok(b) => b,
        Err(r) => {
            s.metrics.bad_request.fetch_add(1, Ordering::Relaxed);
            return r;
        }
    };
    // Only `model` matters for routing; the rest is validated as JSON but
    // not built into a tree (prompts can be large).
    let head: RequestHead = match parse_head(&body) {
        Ok(h) => h,
        Err(msg) => {
            s.metrics.bad_request.fetch_add(1, Ordering::Relaxed);
            return error(StatusCode::BAD_REQUEST, &msg, "invalid_request_error", None);
        }
    };
    let model = match head.model.as_deref() {
        Some(m)
            if s.pool
                .workers()
                .iter()
                .any(|w| w.state() != WState::Removed && w.serves(m)) =>
        {
            m.to_string()
        }
        other => {
            let known = known_models(&s);
            s.metrics.unknown_model.fetch_add(1, Ordering::Relaxed);
            let what = match other {
                Some(m) => format!("model `{m}` is not served by any worker"),
                None => "no `model` given".to_string(),
            };
            return error(
                StatusCode::NOT_FOUND,
                &format!("{what}; available models: {}", known.join(", ")),
                "invalid_request_error",
                Some("model_not_found"),
            );
        }
    };

    let mut tried: Vec<Arc<WorkerEntry>> = Vec::new();
    let mut last_failure: Option<String> = None;
    loop {
        let max_tokens = head.max_completion_tokens.or(head.max_tokens);
        let slot = match s
            .pool
            .acquire(&model, max_tokens, &tried, !tried.is_empty())
            .await
        {
            Ok(slot) => slot,
            Err(NoSlot::NoCandidate) => {
                s.metrics.no_worker.fetch_add(1, Ordering::Relaxed);
                return match last_failure {
                    None => unavailable(
                        &format!("no worker serving `{model}` is ready right now; see /stats"),
                        "no_worker_available",
                    ),
                    Some(f) => error(
                        StatusCode::BAD_GATEWAY,
                        &format!("every worker serving `{model}` failed: {f}"),
                        "server_error",
                        Some("upstream_failed"),
                    ),
                };
            }
            Err(NoSlot::QueueFull) => {
                return unavailable(
                    &format!(
                        "all slots are busy and the queue is full ({} waiting); retry shortly",
                        settings.queue_limit
                    ),
                    "queue_full",
                );
            }
            Err(NoSlot::QueueTimeout) => {
                return unavailable(
                    &format!(
                        "no slot became free within {:?}; retry shortly",
                        settings.queue_timeout
                    ),
                    "queue_timeout",
                );
            }
        };
        let w = slot.worker.clone();
        w.counters.requests.fetch_add(1, Ordering::Relaxed);
        match attempt(&s, slot, &path, body.clone(), &settings, started).await {
            Ok(resp) => return resp,
            Err(detail) => {
                tracing::debug!(
                    worker = w.id(),
                    "attempt failed before first byte: {detail}"
                );
                last_failure = Some(format!("{}: {detail}", w.id()));
                tried.push(w);
                s.pool.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Send the request to the slot's worker and wait for its first body byte.
/// `Err` means the worker failed before anything reached the client: the
/// caller tries another worker.
async fn attempt(
    s: &Arc<Shared>,
    slot: SlotGuard,
    path: &str,
    body: Bytes,
    settings: &crate::config::BalancerSettings,
    started: Instant,
) -> Result<Response, String> {
    let w = slot.worker.clone();
    let mut ejected = w.ejected.subscribe();
    let req = s
        .with_auth(s.client().post(w.endpoint(path)), &w)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    let first_byte = async {
        let resp = req.send().await.map_err(|e| classify(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let mut stream = resp.bytes_stream();
        // Wait for the first non-empty chunk (or the end of the body).
        let first = loop {
            match stream.next().await {
                Some(Ok(b)) if b.is_empty() => continue,
                Some(Ok(b)) => break Some(b),
                Some(Err(e)) => return Err(classify(&e)),
                None => break None,
            }
        };
        Ok((status, headers, first, stream))
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(settings.first_token_timeout, first_byte) => match r {
            Ok(r) => r,
            Err(_) => Err((Failure::Timeout, format!("no first byte within {:?}", settings.first_token_timeout))),
        },
        // The prober found the worker dead while we waited: move on now.
        _ = ejected.changed() => {
            let why = w.health.lock().expect("health lock").last_error.clone().unwrap_or_default();
            return Err(format!("worker ejected while waiting for its first byte ({why})"));
        }
    };
    let (status, headers, first, upstream) = match outcome {
        Ok(x) => x,
        Err((reason, detail)) => {
            w.count_failure(reason);
            eject(&w, reason, &detail);
            return Err(detail);
        }
    };
    if status.is_server_error() {
        w.count_failure(Failure::Status5xx);
        let n = {
            let mut h = w.health.lock().expect("health lock");
            h.consecutive_5xx += 1;
            h.consecutive_5xx
        };
        let detail = format!("answered {status}");
        if n >= EJECT_AFTER_5XX {
            eject(&w, Failure::Status5xx, &format!("{n} consecutive {detail}"));
        }
        return Err(detail);
    }
    w.health.lock().expect("health lock").consecutive_5xx = 0;
    let ttft = started.elapsed();
    s.metrics.ttft.observe(ttft);
    let sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if sse && status.is_success() {
        w.learn_ttft(ttft);
    }
    // A whole small answer in the first chunk (the usual non-streamed
    // case): send it with its length and release the slot now.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let complete = !sse && declared.is_some() && declared == first.as_ref().map(Bytes::len);
    let mut builder = Response::builder().status(status);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    if sse {
        builder = builder
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-accel-buffering", "no");
    }
    if let Ok(v) = HeaderValue::from_str(w.id()) {
        builder = builder.header(WORKER_HEADER, v);
    }
    let mut relay = Relay {
        shared: s.clone(),
        slot: Some(slot),
        upstream: Box::pin(upstream),
        first: if complete { None } else { first.clone() },
        sse,
        client_error: status.is_client_error(),
        started,
        ttft,
        idle: settings.idle_timeout,
        events: 0,
        next_rate_at: RATE_FIRST_AT,
        ejected: w.ejected.subscribe(),
        pending: bytes::BytesMut::new(),
        finished: false,
        ended: false,
    };
    if complete {
        relay.succeed();
        return Ok(builder
            .body(Body::from(first.unwrap_or_default()))
            .expect("valid response parts"));
    }
    Ok(builder
        .body(Body::from_stream(relay.into_stream()))
        .expect("valid response parts"))
}

/// How long a stream from an ejected worker may stall before it is ended.
const EJECTED_GRACE: Duration = Duration::from_secs(1);

/// Events after which the streaming rate is first measured (then at 4x, 16x, ...).
const RATE_FIRST_AT: u64 = 8;

type Upstream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Relays the upstream body to the client chunk by chunk, holds the slot
/// until the end, and records the outcome. Dropped early = client went away.
struct Relay {
    shared: Arc<Shared>,
    slot: Option<SlotGuard>,
    upstream: Upstream,
    first: Option<Bytes>,
    sse: bool,
    client_error: bool,
    started: Instant,
    ttft: Duration,
    idle: Duration,
    /// SSE `data:` events seen: a token count good enough for tokens/s.
    events: u64,
    /// Events count at which the streaming rate is next reported.
    next_rate_at: u64,
    /// Fires when the worker is ejected.
    ejected: tokio::sync::watch::Receiver<u64>,
    /// SSE bytes after the last complete event.
    pending: bytes::BytesMut,
    finished: bool,
    ended: bool,
}

impl Relay {
    fn worker(&self) -> &Arc<WorkerEntry> {
        &self.slot.as_ref().expect("slot held until the end").worker
    }

    fn count(&mut self, b: &Bytes) {
        if !self.sse {
            return;
        }
        self.events += b.windows(5).filter(|w| *w == b"data:").count() as u64;
        if self.events >= self.next_rate_at {
            // Learn the studio's streaming rate mid-answer, so a new studio's
            // speed is known long before its first answer ends.
            let streaming = self
                .started
                .elapsed()
                .saturating_sub(self.ttft)
                .as_secs_f64();
            if streaming > 0.0 {
                self.worker()
                    .learn_rate(self.events.saturating_sub(2) as f64 / streaming);
                // A studio whose speed just became known may take more now.
                self.shared.pool.dispatch();
            }
            self.next_rate_at = self.events * 4;
        }
    }

    /// For SSE, pass on whole events only: bytes after the last event
    /// boundary wait for the rest of their event. Then a failure can always
    /// end the stream with a well-formed error event, never glued to half
    /// of a data line. (Studios send whole events per chunk, so this adds no
    /// delay in practice.)
    fn frame(&mut self, b: Bytes) -> Option<Bytes> {
        if !self.sse {
            return Some(b);
        }
        if self.pending.is_empty() && b.ends_with(b"\n\n") {
            return Some(b);
        }
        self.pending.extend_from_slice(&b);
        let end = self.pending.windows(2).rposition(|w| w == b"\n\n")? + 2;
        Some(self.pending.split_to(end).freeze())
    }

    fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures_util::stream::unfold(self, |mut r| async move {
            if r.ended {
                return None;
            }
            if let Some(b) = r.first.take()
                && let Some(out) = r.frame(b)
            {
                r.count(&out);
                return Some((Ok(out), r));
            }
            loop {
                // Wait for the next chunk up to the idle timeout; but once the
                // worker is ejected (its probe found it dead), a stalled stream
                // gets only a short grace instead of the whole idle timeout.
                let idle = r.idle;
                let next = tokio::select! {
                    n = tokio::time::timeout(idle, r.upstream.next()) => n,
                    _ = r.ejected.changed() => {
                        tokio::time::timeout(EJECTED_GRACE.min(idle), r.upstream.next()).await
                    }
                };
                return match next {
                    Ok(Some(Ok(b))) => match r.frame(b) {
                        Some(out) => {
                            r.count(&out);
                            Some((Ok(out), r))
                        }
                        None => continue,
                    },
                    Ok(None) => {
                        r.succeed();
                        r.ended = true;
                        // Whatever trailed the last boundary (a studio that
                        // omits the final blank line) still goes out.
                        let rest = std::mem::take(&mut r.pending).freeze();
                        if rest.is_empty() {
                            None
                        } else {
                            Some((Ok(rest), r))
                        }
                    }
                    Ok(Some(Err(e))) => {
                        let (_, detail) = classify(&e);
                        r.fail(Failure::Stream, &format!("stream broke: {detail}"))
                    }
                    Err(_) if r.worker().state() == WState::Ejected => r.fail(
                        Failure::Timeout,
                        "the worker was ejected and its stream stalled",
                    ),
                    Err(_) => r.fail(
                        Failure::Timeout,
                        &format!("no data for {idle:?} mid-stream"),
                    ),
                };
            }
        })
    }

    fn succeed(&mut self) {
        self.finished = true;
        let w = self.worker().clone();
        if self.client_error {
            w.counters.client_errors.fetch_add(1, Ordering::Relaxed);
        } else {
            w.counters.successes.fetch_add(1, Ordering::Relaxed);
            let total = self.started.elapsed();
            self.shared.metrics.request_duration.observe(total);
            // Role, finish, usage and [DONE] events are not tokens.
            let tokens = self.events.saturating_sub(4);
            w.counters.tokens.fetch_add(tokens, Ordering::Relaxed);
            if self.sse {
                self.shared.pool.learn_tokens(tokens);
            }
            w.learn(total, self.sse.then_some(self.ttft), tokens);
        }
        self.slot.take();
    }

    /// The worker failed after the client got bytes: end the stream with an
    /// SSE error event (or break the body for non-SSE answers).
    fn fail(
        mut self,
        reason: Failure,
        detail: &str,
    ) -> Option<(Result<Bytes, std::io::Error>, Relay)> {
        self.finished = true;
        self.ended = true;
        // An incomplete event is dropped, so the error event stands alone.
        self.pending.clear();
        let w = self.worker().clone();
        w.count_failure(reason);
        eject(&w, reason, detail);
        self.slot.take();
        let message = format!("worker `{}` failed mid-response: {detail}", w.id());
        if self.sse {
            let ev = json!({"error": {"message": message, "type": "server_error", "param": null,
                                      "code": "upstream_failed"}});
            Some((Ok(Bytes::from(format!("data: {ev}\n\n"))), self))
        } else {
            Some((Err(std::io::Error::other(message)), self))
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.finished
            && let Some(slot) = &self.slot
        {
            // Client went away: dropping `upstream` closes the studio
            // connection (cancelling the generation) and the slot frees now.
            slot.worker
                .counters
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}
