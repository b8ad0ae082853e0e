//! The balancer's HTTP server: OpenAI-compatible endpoints, forwarding with
//! retries before the first byte, unbuffered streaming after it.

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
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::answer::{Api, Whole};
use super::health::{self, Failure, State as WState, Verdict};
use super::pool::{NoSlot, SlotGuard};
use super::relay::Relay;
use super::upstream::{Conn, SendError};
use super::worker::WorkerEntry;
use super::{Shared, WORKER_HEADER, metrics};

type St = State<Arc<Shared>>;

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

/// Times a request may be re-queued because its studio was congested (a
/// connect timed out while its other answers flowed) before that studio
/// counts as failed for it.
const MAX_CONGESTED_RETRIES: u32 = 4;

/// `POST /v1/...`: route to a worker, retrying on another before the first byte.
async fn forward(State(s): St, req: Request) -> Response {
    let started = Instant::now();
    let Some(api) = Api::from_path(req.uri().path()) else {
        return not_found(req.uri().clone()).await;
    };
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
                .any(|w| w.state().is_live() && w.serves(m)) =>
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
    let max_tokens = head.max_completion_tokens.or(head.max_tokens);

    let mut tried: Vec<Arc<WorkerEntry>> = Vec::new();
    let mut congested = 0;
    let mut last_failure: Option<String> = None;
    loop {
        let is_retry = !tried.is_empty() || congested > 0;
        let slot = match s.pool.acquire(&model, max_tokens, &tried, is_retry).await {
            Ok(slot) => slot,
            Err(no) => return no_slot(&s, no, &model, &settings, last_failure),
        };
        let w = slot.worker.clone();
        w.counters.requests.fetch_add(1, Ordering::Relaxed);
        match attempt(&s, slot, api, body.clone(), &settings, started).await {
            Ok(resp) => return resp,
            Err(Retry { detail, verdict }) => {
                tracing::debug!(
                    worker = w.id(),
                    "attempt failed before first byte: {detail}"
                );
                last_failure = Some(format!("{}: {detail}", w.id()));
                if verdict == Verdict::Congested && congested < MAX_CONGESTED_RETRIES {
                    congested += 1;
                } else {
                    tried.push(w);
                }
                s.pool.retries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The answer when no slot could be had.
fn no_slot(
    s: &Shared,
    no: NoSlot,
    model: &str,
    settings: &crate::config::BalancerSettings,
    last_failure: Option<String>,
) -> Response {
    match no {
        NoSlot::NoCandidate => {
            s.metrics.no_worker.fetch_add(1, Ordering::Relaxed);
            match last_failure {
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
            }
        }
        NoSlot::QueueFull => unavailable(
            &format!(
                "all slots are busy and the queue is full ({} waiting); retry shortly",
                settings.queue_limit
            ),
            "queue_full",
        ),
        NoSlot::QueueTimeout => unavailable(
            &format!(
                "no slot became free within {:?}; retry shortly",
                settings.queue_timeout
            ),
            "queue_timeout",
        ),
    }
}

/// An attempt failed before anything reached the client.
struct Retry {
    detail: String,
    verdict: Verdict,
}

impl Retry {
    fn another(detail: impl Into<String>) -> Retry {
        Retry {
            detail: detail.into(),
            verdict: Verdict::TryAnother,
        }
    }
}

/// What went wrong while waiting for the first byte.
enum FirstByte {
    Send(SendError),
    Body(String),
}

/// Send the request to the slot's worker and wait for its first body byte.
/// `Err` means the worker failed before anything reached the client: the
/// caller tries again (another worker, or the same one when it was only
/// congested).
async fn attempt(
    s: &Arc<Shared>,
    slot: SlotGuard,
    api: Api,
    body: Bytes,
    settings: &crate::config::BalancerSettings,
    started: Instant,
) -> Result<Response, Retry> {
    let w = slot.worker.clone();
    let mut ejected = w.health.ejected.subscribe();
    let make = || {
        let mut b = axum::http::Request::builder()
            .method(axum::http::Method::POST)
            .uri(api.path())
            .header(header::HOST, w.upstream.authority())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = &w.auth_header {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Full::new(body.clone()))
            .expect("valid upstream request")
    };
    // Sending starts the window in which the studio must show progress.
    w.health.progress();
    let sent_at = Instant::now();
    let first_byte = async {
        let (resp, conn) = w
            .upstream
            .send(make, settings.connect_timeout)
            .await
            .map_err(FirstByte::Send)?;
        w.health.progress();
        let (parts, mut body) = resp.into_parts();
        // Wait for the first non-empty chunk (or the end of the body).
        let first = loop {
            match body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(b) if !b.is_empty() => break Some(b),
                    _ => continue,
                },
                Some(Err(e)) => {
                    return Err(FirstByte::Body(super::upstream::describe(&e)));
                }
                None => break None,
            }
        };
        Ok((parts, body, first, conn))
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(settings.first_token_timeout, first_byte) => r,
        // The prober found the worker dead while we waited: move on now.
        _ = ejected.changed() => {
            let why = w.health.last_error().unwrap_or_default();
            return Err(Retry::another(format!("worker ejected while waiting for its first byte ({why})")));
        }
    };
    let (parts, upstream, first, conn) = match outcome {
        Ok(Ok(x)) => x,
        Ok(Err(FirstByte::Send(e))) => {
            let verdict = health::on_send_error(s, &w, &e);
            return Err(Retry {
                detail: e.to_string(),
                verdict,
            });
        }
        Ok(Err(FirstByte::Body(detail))) => {
            let detail = format!("answer broke before its first byte: {detail}");
            health::on_cut_answer(s, &w, Failure::Stream, &detail);
            return Err(Retry::another(detail));
        }
        Err(_) => {
            let detail = format!("no first byte within {:?}", settings.first_token_timeout);
            health::on_first_byte_timeout(s, &w, &detail);
            return Err(Retry::another(detail));
        }
    };
    let status = parts.status;
    if status.is_server_error() {
        health::on_status_5xx(s, &w, status);
        return Err(Retry::another(format!("answered {status}")));
    }
    health::on_first_byte(&w);
    w.learn_ttft(sent_at.elapsed());
    s.metrics.ttft.observe(started.elapsed());
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut builder = Response::builder().status(status);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(w.id()) {
        builder = builder.header(WORKER_HEADER, v);
    }
    if sse && status.is_success() {
        let relay = Relay::new(
            s.clone(),
            slot,
            conn,
            upstream,
            api,
            first,
            started,
            settings.idle_timeout,
        );
        return Ok(builder
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-accel-buffering", "no")
            .body(Body::from_stream(relay.into_stream()))
            .expect("valid response parts"));
    }
    let whole = read_whole(&w, upstream, first, settings.idle_timeout).await;
    let whole = match whole {
        Ok(b) => b,
        Err(detail) => {
            health::on_cut_answer(s, &w, Failure::Stream, &detail);
            return Err(Retry::another(detail));
        }
    };
    match status.is_success().then(|| api.judge_whole(&whole)) {
        Some(Whole::Complete) => {
            w.counters.successes.fetch_add(1, Ordering::Relaxed);
            health::on_good_answer(&w);
            s.metrics.request_duration.observe(started.elapsed());
            w.learn(started.elapsed(), None, 0);
        }
        Some(Whole::Cut(why)) => {
            // Nothing reached the client yet: another studio can answer.
            let detail = format!("incomplete answer: {why}");
            health::on_cut_answer(s, &w, Failure::Stream, &detail);
            return Err(Retry::another(detail));
        }
        // A 4xx, or an error object under a 200, is the request's answer:
        // relayed as is, never held against the studio.
        Some(Whole::Error) | None => {
            w.counters.client_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    finish_whole(&w, conn, slot);
    Ok(builder
        .body(Body::from(whole))
        .expect("valid response parts"))
}

/// Return the connection to the pool and free the slot.
fn finish_whole(w: &WorkerEntry, conn: Conn, slot: SlotGuard) {
    w.upstream.put_back(conn, false);
    drop(slot);
}

/// Read a whole (non-streamed) answer: every chunk must come within the
/// idle timeout and the body must end cleanly. These answers are complete
/// JSON documents, of no use to a client half-way, so they are checked
/// whole before anything is sent.
async fn read_whole(
    w: &WorkerEntry,
    mut body: Incoming,
    first: Option<Bytes>,
    idle: Duration,
) -> Result<Bytes, String> {
    let mut buf = bytes::BytesMut::new();
    if let Some(f) = first {
        buf.extend_from_slice(&f);
    }
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(f))) => {
                w.health.progress();
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(format!(
                    "answer broke mid-body: {}",
                    super::upstream::describe(&e)
                ));
            }
            Err(_) => return Err(format!("no data for {idle:?} mid-answer")),
        }
    }
}
