//! The balancer's HTTP server: the OpenAI, Anthropic and Ollama endpoints,
//! and a request's way in: read, parsed for routing, given a slot, and
//! tried on one studio after another (`attempt`) until one answers or none
//! is left.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;

use super::answer::{Api, Family};
use super::attempt;
use super::health::Verdict;
use super::outcome::Attempt;
use super::pool::{Demand, NoSlot};
use super::request::{self, Job};
use super::state;
use super::worker::WorkerEntry;
use super::{Shared, catalog, metrics, origin};
use crate::config::Strategy;

type St = State<Arc<Shared>>;

/// Request headers an Anthropic client sends that the studio must see.
const PASSED_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let mut r = Router::new();
    for (_, path) in Api::ALL {
        r = r.route(path, post(forward));
    }
    r.route("/v1/models", get(catalog::openai_models))
        .route("/api/tags", get(catalog::ollama_tags))
        .route("/api/ps", get(catalog::ollama_ps))
        .route("/api/version", get(catalog::ollama_version))
        .route("/stats", get(stats))
        .route("/metrics", get(prometheus))
        .route("/health", get(health))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

/// Every request's checks before it is routed, in one layer (each axum
/// layer costs an allocation and a dispatch per request): the Host and
/// Origin guard (on every route, `/health` too: DNS rebinding reads it),
/// the loop guard, then the API key (not for `/health`, which load
/// balancers and the menu bar poll). Refusals carry the CORS headers a
/// listed origin needs to read them.
async fn gate(State(s): St, req: Request, next: Next) -> Response {
    let cors = match origin::admit(&s, &req) {
        origin::Admission::Pass(cors) => cors,
        origin::Admission::Answered(r) => return r,
    };
    let mut refusal = refuse_loop(&s, &req);
    if refusal.is_none() && req.uri().path() != "/health" {
        refusal = authorize(&s, &req);
    }
    let mut r = match refusal {
        Some(r) => r,
        None => next.run(req).await,
    };
    if let Some(origin) = cors {
        origin::allow(&mut r, &origin);
    }
    r
}

/// A request that already passed through this balancer came back: a worker
/// points at the balancer itself (through a name the loader could not
/// check). Answered at once, instead of looping until every slot is taken.
fn refuse_loop(s: &Shared, req: &Request) -> Option<Response> {
    let ours = s.core.via.as_bytes().strip_prefix(b"1.1 ").unwrap_or(b"");
    let looped = req
        .headers()
        .get_all(header::VIA)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), ours).is_some());
    looped.then(|| {
        Family::of_path(req.uri().path()).error(
            StatusCode::LOOP_DETECTED,
            "this request came back to the balancer that sent it: a worker points at Baton itself; point it at the studio's own server",
            "loop_detected",
        )
    })
}

/// The API key check: the refusal, if the request lacks the key.
fn authorize(s: &Shared, req: &Request) -> Option<Response> {
    let key = s.api_key.as_ref()?;
    let h = req.headers();
    // OpenAI clients send a bearer token; Anthropic clients `x-api-key`.
    let given = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), key.as_bytes()) {
        return None;
    }
    s.metrics.unauthorized.fetch_add(1, Ordering::Relaxed);
    Some(Family::of_path(req.uri().path()).error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`)",
        "invalid_api_key",
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found(uri: axum::http::Uri) -> Response {
    Family::of_path(uri.path()).error(
        StatusCode::NOT_FOUND,
        &format!(
            "unknown endpoint {}; Baton serves the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/models), Anthropic's (/v1/messages) and Ollama's (/api/chat, /api/generate, /api/embed, /api/tags, ...)",
            uri.path()
        ),
        "unknown_url",
    )
}

async fn health(State(s): St) -> Response {
    let workers = s.pool().workers();
    let ready = workers
        .iter()
        .filter(|w| w.state() == state::State::Ready)
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
    axum::Json(metrics::snapshot(s.pool(), s.started.elapsed()))
}

async fn prometheus(State(s): St) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics::render(s.pool(), &s.metrics),
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
    copy_body(http_body_util::Limited::new(body, limit), declared)
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_big()
            } else {
                family.error(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the request body: {e}"),
                    "invalid_request",
                )
            }
        })
}

/// What a request's declared `Content-Length` may reserve before its bytes
/// arrive.
const RESERVE_AT_MOST: usize = 256 * 1024;

/// The body's bytes, copied once into a buffer of their own. The frames as
/// read share the connection's 8 KB read buffer, which a stream's request
/// would otherwise keep for its whole answer; gathering them here (rather
/// than `collect().to_bytes()` and a copy) copies a body in several chunks
/// once, not twice.
async fn copy_body(
    mut body: http_body_util::Limited<Body>,
    declared: Option<usize>,
) -> Result<Bytes, axum::BoxError> {
    // Room for what the client declared, up to a bound: a declared length
    // is a claim, and a silent client must not reserve megabytes.
    let mut buf = bytes::BytesMut::with_capacity(declared.unwrap_or(0).min(RESERVE_AT_MOST));
    while let Some(frame) = body.frame().await {
        // Trailers carry nothing a model request needs.
        if let Ok(data) = frame?.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Times a request may be re-queued because its studio was congested (a
/// connect timed out while its other answers flowed) before that studio
/// counts as failed for it.
const MAX_CONGESTED_RETRIES: u32 = 4;

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
    let Some(asked) = parsed.model.as_deref() else {
        return unknown_model(&s, family, None, None);
    };
    let names = match fallback(&s, &parts.headers, asked, api) {
        Route::Asked(names) => names,
        Route::Fallback(names) => {
            s.pool().fallbacks.fetch_add(1, Ordering::Relaxed);
            names
        }
        Route::Unknown(refused) => return unknown_model(&s, family, Some(asked), refused),
    };
    let affinity = (settings.strategy == Strategy::CacheAffinity && parsed.worth_caching(api))
        .then(|| s.affinity.lookup(&parsed.prefixes))
        .flatten()
        .filter(|hit| hit.tokens >= request::MIN_AFFINITY_TOKENS);
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
    let job = Arc::new(Job {
        api,
        body,
        parsed,
        demand,
        passed,
        via: via_after(&parts.headers, &s.core.via),
        started,
    });

    // The first request after a rest puts the probers' cadence back.
    s.core.rest.request();
    let mut tried: Vec<Arc<WorkerEntry>> = Vec::new();
    let mut congested = 0;
    let mut last_failure: Option<String> = None;
    loop {
        let is_retry = !tried.is_empty() || congested > 0;
        let slot = match s.pool().acquire(&job.demand, &tried, is_retry).await {
            Ok(slot) => slot,
            Err(no) => return no_slot(&s, &job, no, &settings, last_failure),
        };
        let w = slot.worker.clone();
        let at = Attempt::new(s.clone(), job.clone(), settings.clone(), slot);
        match attempt::run(at).await {
            Ok(mut resp) => {
                if let Some(v) = w
                    .serves_any(&job.demand.models)
                    .and_then(|m| HeaderValue::from_str(m).ok())
                {
                    resp.headers_mut().insert(super::MODEL_HEADER, v);
                }
                return resp;
            }
            Err(attempt::Retry { detail, verdict }) => {
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
                s.pool().retries.fetch_add(1, Ordering::Relaxed);
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

/// Where a request for `asked` may go: its own names, a fallback's, or
/// nowhere.
enum Route {
    Asked(Vec<String>),
    Fallback(Vec<String>),
    /// No live studio serves it; the reason a fallback was not taken, if
    /// one was configured.
    Unknown(Option<&'static str>),
}

/// Header a client sends to get exactly the model it asked for, or an error.
const NO_FALLBACK_HEADER: &str = "x-baton-no-fallback";

/// The names a request for `asked` goes to: its own while a ready studio
/// serves them on this API; else the first configured fallback that has one
/// (unless the client or the alias refuses stand-ins); else its own names
/// while a studio is merely down (the queue waits for it), or none.
fn fallback(s: &Shared, headers: &HeaderMap, asked: &str, api: Api) -> Route {
    let aliases = s.aliases();
    let names = aliases.names_for(asked);
    let serves = |names: &[String], ready: bool| {
        s.pool().any_worker(|w| {
            let state = w.state();
            (if ready {
                state == state::State::Ready
            } else {
                state.is_live()
            }) && w.serves_any(names).is_some()
                && w.capable(api)
        })
    };
    if serves(&names, true) {
        return Route::Asked(names);
    }
    let fallbacks = s.fallbacks();
    let list = fallbacks.for_model(&aliases, asked);
    let refused_by_client = headers
        .get(NO_FALLBACK_HEADER)
        .is_some_and(|v| matches!(v.as_bytes(), b"1" | b"true"));
    let refused = if fallbacks.pinned_any(&names) {
        Some("its alias is pinned (\"fallbacks\": false)")
    } else if refused_by_client && !list.is_empty() {
        Some("the request carries x-baton-no-fallback")
    } else {
        None
    };
    if refused.is_none()
        && let Some(f) = list
            .iter()
            .map(|f| aliases.names_for(f))
            .find(|f| serves(f, true))
    {
        return Route::Fallback(f);
    }
    if s.pool()
        .any_worker(|w| w.state().is_live() && w.serves_any(&names).is_some())
    {
        return Route::Asked(names);
    }
    Route::Unknown(refused)
}

fn unknown_model(
    s: &Shared,
    family: Family,
    model: Option<&str>,
    refused: Option<&str>,
) -> Response {
    s.metrics.unknown_model.fetch_add(1, Ordering::Relaxed);
    let what = match (model, refused) {
        (Some(m), Some(why)) => format!(
            "model `{m}` is not served by any worker, and no fallback was tried because {why}"
        ),
        (Some(m), None) => format!("model `{m}` is not served by any worker"),
        (None, _) => "no `model` given".to_string(),
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
            let speaks = s.pool().workers().iter().any(|w| {
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
                        s.pool()
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
