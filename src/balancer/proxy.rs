//! The balancer's HTTP server: the OpenAI, Anthropic and Ollama endpoints,
//! forwarding with retries before the first byte, unbuffered streaming
//! after it.

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

use super::answer::{self, Api, Family, Whole};
use super::health::{self, Failure, Verdict};
use super::limit::Change;
use super::pool::{Demand, NoSlot, SlotGuard};
use super::relay::{Framing, Relay};
use super::request::{self, Parsed};
use super::upstream::{Conn, SendError};
use super::worker::WorkerEntry;
use super::{Shared, WORKER_HEADER, catalog, metrics};
use crate::config::Strategy;

type St = State<Arc<Shared>>;

/// Request headers an Anthropic client sends that the studio must see.
const PASSED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new();
    for (_, path) in Api::ALL {
        r = r.route(path, post(forward));
    }
    let mut r = r
        .route("/v1/models", get(catalog::openai_models))
        .route("/api/tags", get(catalog::ollama_tags))
        .route("/api/ps", get(catalog::ollama_ps))
        .route("/api/version", get(catalog::ollama_version))
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .fallback(not_found);
    if shared.api_key.is_some() {
        r = r.layer(middleware::from_fn_with_state(shared.clone(), authorize));
    }
    // Health stays open: load balancers and the menu bar poll it.
    r.route("/health", get(health))
        .layer(middleware::from_fn_with_state(shared.clone(), refuse_loops))
        // Outermost, so it covers /health too (DNS rebinding reads it).
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            super::origin::guard,
        ))
        .with_state(shared)
}

/// A request that already passed through this balancer came back: a worker
/// points at the balancer itself (through a name the loader could not
/// check). Answered at once, instead of looping until every slot is taken.
async fn refuse_loops(State(s): St, req: Request, next: Next) -> Response {
    let ours = s.via.as_bytes().strip_prefix(b"1.1 ").unwrap_or(b"");
    let looped = req
        .headers()
        .get_all(header::VIA)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), ours).is_some());
    if looped {
        return family_of(req.uri().path()).error(
            StatusCode::LOOP_DETECTED,
            "this request came back to the balancer that sent it: a worker points at Baton itself; point it at the studio's own server",
            "loop_detected",
        );
    }
    next.run(req).await
}

/// The family of the API a path belongs to (OpenAI for anything unknown).
fn family_of(path: &str) -> Family {
    Api::from_path(path).map_or_else(
        || {
            if path.starts_with("/api/") {
                Family::Ollama
            } else {
                Family::Openai
            }
        },
        Api::family,
    )
}

async fn authorize(State(s): St, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let h = req.headers();
        // OpenAI clients send a bearer token; Anthropic clients `x-api-key`.
        let given = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), key.as_bytes()) {
            s.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
            return family_of(req.uri().path()).error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)",
                "invalid_api_key",
            );
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(uri: axum::http::Uri) -> Response {
    family_of(uri.path()).error(
        StatusCode::NOT_FOUND,
        &format!(
            "unknown endpoint {}; Baton serves the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/models), Anthropic's (/v1/messages) and Ollama's (/api/chat, /api/generate, /api/embed, /api/tags, ...)",
            uri.path()
        ),
        "unknown_url",
    )
}

async fn health(State(s): St) -> Response {
    let workers = s.pool.workers();
    let ready = workers
        .iter()
        .filter(|w| w.state() == health::State::Ready)
        .count();
    let total = workers.iter().filter(|w| w.state().is_live()).count();
    let status = if ready > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"status": if ready > 0 { "ok" } else { "unavailable" },
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

/// Read the request body, refusing more than `limit` bytes.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
    family: Family,
) -> Result<Bytes, Response> {
    let too_big = || {
        family.error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "request body is larger than the {limit}-byte limit (balancer.max_body_bytes)"
            ),
            "request_too_large",
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
        Err(e) => Err(family.error(
            StatusCode::BAD_REQUEST,
            &format!("could not read the request body: {e}"),
            "invalid_request",
        )),
    }
}

/// Times a request may be re-queued because its studio was congested (a
/// connect timed out while its other answers flowed) before that studio
/// counts as failed for it.
const MAX_CONGESTED_RETRIES: u32 = 4;

/// One request on its way: what it is and where it may go.
struct Job {
    api: Api,
    body: Bytes,
    parsed: Parsed,
    demand: Demand,
    /// Headers passed on to the studio.
    passed: Vec<(&'static str, HeaderValue)>,
    /// The hops it came through, this balancer last.
    via: HeaderValue,
    started: Instant,
}

/// `POST` to a relayed endpoint: route to a worker, retrying on another
/// before the first byte.
async fn forward(State(s): St, req: Request) -> Response {
    let started = Instant::now();
    let Some(api) = Api::from_path(req.uri().path()) else {
        return not_found(req.uri().clone()).await;
    };
    let family = api.family();
    let (parts, body) = req.into_parts();
    // One snapshot of the settings per request, so a reload mid-request is consistent.
    let settings = s.settings();
    let body = match read_body(body, &parts.headers, settings.max_body_bytes, family).await {
        Ok(b) => b,
        Err(r) => {
            s.metrics.bad_request.fetch_add(1, Ordering::Relaxed);
            return r;
        }
    };
    // Only what routing needs is read; the prompt is not built into a tree.
    let parsed = match request::parse(&body, api) {
        Ok(p) => p,
        Err(msg) => {
            s.metrics.bad_request.fetch_add(1, Ordering::Relaxed);
            return family.error(StatusCode::BAD_REQUEST, &msg, "invalid_request");
        }
    };
    let names = match parsed.model.as_deref() {
        Some(m) => {
            let names = s.aliases().names_for(m);
            if !s
                .pool
                .any_worker(|w| w.state().is_live() && w.serves_any(&names).is_some())
            {
                return unknown_model(&s, family, Some(m));
            }
            names
        }
        None => return unknown_model(&s, family, None),
    };
    let affinity = (settings.strategy == Strategy::CacheAffinity && worth_caching(api, &parsed))
        .then(|| s.affinity.lookup(&parsed.prefixes))
        .flatten()
        .filter(|hit| hit.tokens >= MIN_AFFINITY_TOKENS);
    let demand = Demand {
        models: Arc::from(names),
        api,
        max_tokens: parsed.max_tokens,
        affinity,
    };
    let passed = PASSED_HEADERS
        .iter()
        .filter_map(|h| parts.headers.get(*h).map(|v| (*h, v.clone())))
        .collect();
    let job = Job {
        api,
        body,
        parsed,
        demand,
        passed,
        via: via_after(&parts.headers, &s.via),
        started,
    };

    let mut tried: Vec<Arc<WorkerEntry>> = Vec::new();
    let mut congested = 0;
    let mut last_failure: Option<String> = None;
    loop {
        let is_retry = !tried.is_empty() || congested > 0;
        let slot = match s.pool.acquire(&job.demand, &tried, is_retry).await {
            Ok(slot) => slot,
            Err(no) => return no_slot(&s, &job, no, &settings, last_failure),
        };
        let w = slot.worker.clone();
        w.counters.requests.fetch_add(1, Ordering::Relaxed);
        match attempt(&s, slot, &job, &settings).await {
            Ok(resp) => return resp,
            Err(Retry { detail, verdict }) => {
                tracing::debug!(
                    worker = w.id(),
                    "attempt failed before first byte: {detail}"
                );
                if verdict != Verdict::Lacks {
                    last_failure = Some(format!("{}: {detail}", w.id()));
                }
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

/// The request's `Via` hops with this balancer's appended, so a loop
/// through several balancers is seen by the first one it reaches again.
fn via_after(headers: &HeaderMap, ours: &HeaderValue) -> HeaderValue {
    let mut hops: Vec<&[u8]> = headers
        .get_all(header::VIA)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if hops.is_empty() {
        return ours.clone();
    }
    hops.push(ours.as_bytes());
    HeaderValue::from_bytes(&hops.join(&b", "[..])).unwrap_or_else(|_| ours.clone())
}

fn unknown_model(s: &Shared, family: Family, model: Option<&str>) -> Response {
    s.metrics.unknown_model.fetch_add(1, Ordering::Relaxed);
    let what = match model {
        Some(m) => format!("model `{m}` is not served by any worker"),
        None => "no `model` given".to_string(),
    };
    family.error(
        StatusCode::NOT_FOUND,
        &format!(
            "{what}; available models: {}",
            catalog::known_models(s).join(", ")
        ),
        "model_not_found",
    )
}

/// The answer when no slot could be had.
fn no_slot(
    s: &Shared,
    job: &Job,
    no: NoSlot,
    settings: &crate::config::BalancerSettings,
    last_failure: Option<String>,
) -> Response {
    let family = job.api.family();
    let model = &job.demand.models[0];
    match no {
        NoSlot::NoCandidate => {
            s.metrics.no_worker.fetch_add(1, Ordering::Relaxed);
            let speaks = s.pool.workers().iter().any(|w| {
                w.state().is_live()
                    && w.serves_any(&job.demand.models).is_some()
                    && w.capable(job.api)
            });
            match last_failure {
                Some(f) => family.error(
                    StatusCode::BAD_GATEWAY,
                    &format!("every worker serving `{model}` failed: {f}"),
                    "upstream_failed",
                ),
                None if !speaks => family.error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "no worker serving `{model}` offers {} ({} answered that they lack it)",
                        job.api.path(),
                        s.pool
                            .workers()
                            .iter()
                            .filter(|w| !w.capable(job.api))
                            .map(|w| w.id().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "unsupported_endpoint",
                ),
                None => family.error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("no worker serving `{model}` is ready right now; see /stats"),
                    "no_worker_available",
                ),
            }
        }
        NoSlot::QueueFull => family.error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "all slots are busy and the queue is full ({} waiting); retry shortly",
                settings.queue_limit
            ),
            "queue_full",
        ),
        NoSlot::QueueTimeout => family.error(
            StatusCode::SERVICE_UNAVAILABLE,
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

/// The request as this worker gets it: its own name for the model.
fn body_for(job: &Job, w: &WorkerEntry) -> Bytes {
    match (
        job.parsed.model.as_deref(),
        w.serves_any(&job.demand.models),
    ) {
        (Some(asked), Some(name)) if asked != name => request::with_model(&job.body, name)
            .map(Bytes::from)
            .unwrap_or_else(|| job.body.clone()),
        _ => job.body.clone(),
    }
}

/// Send the request to the slot's worker and wait for its first body byte.
/// `Err` means the worker failed before anything reached the client: the
/// caller tries again (another worker, or the same one when it was only
/// congested).
async fn attempt(
    s: &Arc<Shared>,
    slot: SlotGuard,
    job: &Job,
    settings: &crate::config::BalancerSettings,
) -> Result<Response, Retry> {
    let w = slot.worker.clone();
    let api = job.api;
    let mut dead = w.health.dead.subscribe();
    let body = body_for(job, &w);
    let make = || {
        let mut b = axum::http::Request::builder()
            .method(axum::http::Method::POST)
            .uri(api.path())
            .header(header::HOST, w.upstream.authority())
            .header(header::VIA, &job.via)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = &w.auth_header {
            b = b.header(header::AUTHORIZATION, a);
            if api.family() == Family::Anthropic
                && let Some(k) = a.to_str().ok().and_then(|v| v.strip_prefix("Bearer "))
                && let Ok(mut v) = HeaderValue::from_str(k)
            {
                v.set_sensitive(true);
                b = b.header("x-api-key", v);
            }
        }
        for (name, value) in &job.passed {
            b = b.header(*name, value);
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
        let head_ms = w.note_head();
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
        Ok((parts, body, first, conn, head_ms))
    };
    let outcome = tokio::select! {
        r = tokio::time::timeout(settings.first_token_timeout, first_byte) => r,
        // The studio was found dead while we waited: move on now. (Only
        // dead: a studio ejected for being slow keeps the requests already
        // waiting on its live connections.)
        _ = dead.changed() => {
            let why = w.health.last_error().unwrap_or_default();
            return Err(Retry::another(format!("worker found dead while waiting for its first byte ({why})")));
        }
    };
    let (parts, upstream, first, conn, head_ms) = match outcome {
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
    // 508 is a loop another balancer saw: the request's answer, not the
    // studio's failure (passed on below like a client error).
    if status.is_server_error() && status != StatusCode::LOOP_DETECTED {
        health::on_status_5xx(s, &w, status);
        return Err(Retry::another(format!("answered {status}")));
    }
    health::on_first_byte(&w);
    let ttft = sent_at.elapsed();
    w.learn_ttft(ttft);
    if api.generates() {
        learn_limit(s, job, &w, ttft, slot.level);
    }
    s.metrics.ttft.observe(job.started.elapsed());
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let framing = if content_type.starts_with("text/event-stream") {
        Some(Framing::Sse)
    } else if content_type.starts_with("application/x-ndjson") && job.parsed.stream {
        Some(Framing::Ndjson)
    } else {
        None
    };
    let mut builder = Response::builder().status(status);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(w.id()) {
        builder = builder.header(WORKER_HEADER, v);
    }
    if let Some(framing) = framing.filter(|_| status.is_success()) {
        w.learn_capability(api, true);
        learn_cache(s, job, &w, ttft);
        let relay = Relay::new(
            s.clone(),
            slot,
            conn,
            upstream,
            api,
            framing,
            first,
            job.started,
            head_ms,
            settings.idle_timeout,
        );
        return Ok(builder
            .header(header::CACHE_CONTROL, "no-cache")
            .header("x-accel-buffering", "no")
            .body(Body::from_stream(relay.into_stream()))
            .expect("valid response parts"));
    }
    let whole = match read_whole(&w, upstream, first, settings.idle_timeout).await {
        Ok(b) => b,
        Err(detail) => {
            health::on_cut_answer(s, &w, Failure::Stream, &detail);
            return Err(Retry::another(detail));
        }
    };
    if answer::lacks_api(status, &whole) {
        // Not a failure: this studio does not speak this API. Remember it
        // and ask another.
        w.learn_capability(api, false);
        tracing::info!(
            worker = w.id(),
            path = api.path(),
            "studio lacks this endpoint; not asking it again"
        );
        finish_whole(&w, conn, slot);
        return Err(Retry {
            detail: format!("{} has no {}", w.id(), api.path()),
            verdict: Verdict::Lacks,
        });
    }
    match status.is_success().then(|| api.judge_whole(&whole)) {
        Some(Whole::Complete { tokens }) => {
            w.learn_capability(api, true);
            w.counters.successes.fetch_add(1, Ordering::Relaxed);
            health::on_good_answer(&w);
            s.metrics.request_duration.observe(job.started.elapsed());
            // A whole answer's generation time is its time minus the
            // studio's first byte (roughly its prompt time).
            let took = sent_at.elapsed();
            match tokens {
                Some(t) => w.learn(took, Some(took.saturating_sub(ttft)), t),
                None => w.learn(took, None, 0),
            }
            learn_cache(s, job, &w, ttft);
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

/// Cached prompts shorter than this are not worth following: their prefill
/// takes less than routing by speed saves (256 tokens: a tenth of a second
/// or so on a Mac).
const MIN_AFFINITY_TOKENS: u32 = 256;

/// A generation whose prompt is long enough for its cache to matter.
fn worth_caching(api: Api, parsed: &Parsed) -> bool {
    api.generates() && parsed.prefixes.total_tokens() >= MIN_AFFINITY_TOKENS
}

/// Prompt tokens per second assumed where a studio's rate is not known yet:
/// on the slow side, so a long prompt is not taken for queueing.
const ASSUMED_PREFILL_PER_S: f64 = 1000.0;

/// Tokens of this request's prompt the worker must prefill (its cache
/// holds the rest when the request followed its conversation there).
fn uncached_tokens(job: &Job, w: &WorkerEntry) -> u32 {
    let cached = match &job.demand.affinity {
        Some(hit) if *hit.worker == *w.id() => hit.tokens,
        _ => 0,
    };
    job.parsed.prefixes.total_tokens().saturating_sub(cached)
}

/// A first token tells how many requests the studio really runs at once.
fn learn_limit(s: &Shared, job: &Job, w: &WorkerEntry, ttft: Duration, level: u32) {
    let rate = match w.learned().prefill_per_second {
        r if r > 0.0 => r,
        _ => ASSUMED_PREFILL_PER_S,
    };
    let prefill = Duration::from_secs_f64(f64::from(uncached_tokens(job, w)) / rate);
    let answer = Some(w.learned().latency_ms)
        .filter(|ms| *ms > 0.0)
        .map(|ms| Duration::from_secs_f64(ms / 1000.0));
    match w.limit.on_first_token(ttft, prefill, level, answer) {
        Change::Raised(n) => {
            tracing::debug!(worker = w.id(), limit = n, "studio takes more at once");
            // A slot more: a waiter may take it now.
            s.pool.dispatch();
        }
        Change::Lowered(n) => {
            tracing::debug!(
                worker = w.id(),
                limit = n,
                "studio queues beyond this; limit lowered"
            );
        }
        Change::None => {}
    }
}

/// The studio now holds this prompt in its cache; and how fast it
/// processed the part it could not have had cached.
fn learn_cache(s: &Shared, job: &Job, w: &Arc<WorkerEntry>, ttft: Duration) {
    let p = &job.parsed.prefixes;
    if !job.api.generates() || p.is_empty() {
        return;
    }
    w.learn_prefill(uncached_tokens(job, w), ttft);
    if s.settings().strategy == Strategy::CacheAffinity && worth_caching(job.api, &job.parsed) {
        s.affinity.record(p, &w.cfg_id);
        let hit = job
            .demand
            .affinity
            .as_ref()
            .is_some_and(|h| *h.worker == *w.id());
        let counter = if hit {
            &s.metrics.affinity_hits
        } else {
            &s.metrics.affinity_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
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
        // Most of a whole answer is already here: look before arming a
        // timer (timers cost more than the rest of a small answer).
        let next = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(n) => Ok(n),
            None => tokio::time::timeout(idle, body.frame()).await,
        };
        match next {
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
