//! HTTP endpoints of a simulated studio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::{Faults, SimState, text};
use crate::studio::StudioKind;

type St = State<Arc<SimState>>;

pub(super) fn router(state: Arc<SimState>) -> Router {
    let mut r = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/sim/stats", get(stats))
        .route("/sim/fault", get(get_fault).post(set_fault));
    r = match state.config.kind {
        StudioKind::LmStudio => r.route("/api/v0/models", get(lmstudio_models)),
        StudioKind::Ollama => r
            .route("/", get(|| async { "Ollama is running" }))
            .route("/api/tags", get(ollama_tags))
            .route(
                "/api/version",
                get(|| async { Json(json!({"version": "0.5.7"})) }),
            ),
        StudioKind::LlamaCpp => r
            .route("/props", get(llamacpp_props))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) })),
        StudioKind::Vllm => r
            .route(
                "/version",
                get(|| async { Json(json!({"version": "0.6.3"})) }),
            )
            .route("/metrics", get(vllm_metrics))
            .route("/health", get(|| async { StatusCode::OK })),
        StudioKind::Exo => r
            .route(
                "/node_id",
                get(|| async { Json(json!({"node_id": "sim-node-1"})) }),
            )
            .route(
                "/state",
                get(|| async { Json(json!({"instances": {}, "topology": {"nodes": []}})) }),
            ),
        StudioKind::Mlx | StudioKind::Openai => r,
    };
    // LM Studio answers 200 with an error object on unknown paths; the
    // others answer 404. Preflight must cope with both.
    let lm = state.config.kind == StudioKind::LmStudio;
    r.fallback(
        move |uri: axum::http::Uri, method: axum::http::Method| async move {
            let msg = format!("Unexpected endpoint or method. ({method} {uri})");
            if lm {
                (StatusCode::OK, Json(json!({ "error": msg }))).into_response()
            } else {
                error(StatusCode::NOT_FOUND, &msg, "invalid_request_error")
            }
        },
    )
    .with_state(state)
}

fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A hung studio hangs on every endpoint, and a slow one is slow on all.
async fn wedge(state: &SimState) {
    let f = state.faults.lock().expect("faults lock").clone();
    if f.hang {
        std::future::pending::<()>().await;
    }
    if f.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
    }
}

async fn models(State(s): St) -> Json<Value> {
    wedge(&s).await;
    let data: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "owned_by": "organization_owner"}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn lmstudio_models(State(s): St) -> Json<Value> {
    wedge(&s).await;
    let data: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| {
            json!({"id": m, "object": "model", "type": "llm", "publisher": "baton-sim",
                   "arch": "llama", "compatibility_type": "gguf", "quantization": "Q4_K_M",
                   "state": "loaded", "max_context_length": 32768})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn ollama_tags(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s
        .config
        .models
        .iter()
        .map(|m| {
            json!({"name": m, "model": m, "size": 4_109_865_159u64,
                   "details": {"format": "gguf", "family": "llama", "parameter_size": "7B",
                               "quantization_level": "Q4_K_M"}})
        })
        .collect();
    Json(json!({"models": data}))
}

async fn llamacpp_props(State(s): St) -> Json<Value> {
    Json(json!({
        "default_generation_settings": {"n_ctx": 8192},
        "total_slots": s.config.slots,
        "model_path": format!("/models/{}.gguf", s.config.models[0]),
    }))
}

async fn vllm_metrics(State(s): St) -> String {
    let st = s.counters.snapshot();
    format!(
        "# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{model_name=\"{m}\"}} {}\n\
         # TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{model_name=\"{m}\"}} {}\n",
        st.active,
        st.queued,
        m = s.config.models[0]
    )
}

async fn stats(State(s): St) -> Json<super::SimStats> {
    Json(s.counters.snapshot())
}

async fn get_fault(State(s): St) -> Json<Faults> {
    Json(s.faults.lock().expect("faults lock").clone())
}

async fn set_fault(State(s): St, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("bad fault settings: {e}"),
                "invalid_request_error",
            );
        }
    };
    if let Some(ms) = faults.refuse_for_ms {
        // Answer this request first, then stop listening for a while.
        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.listening.send_replace(false);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            s2.listening.send_replace(true);
        });
    }
    let mut stored = faults.clone();
    stored.refuse_for_ms = None;
    *s.faults.lock().expect("faults lock") = stored;
    Json(faults).into_response()
}

/// Tracks one request from arrival to its last byte. Dropped early (client
/// gone) it counts as cancelled.
struct Tracker {
    state: Arc<SimState>,
    done: bool,
}

impl Tracker {
    fn new(state: Arc<SimState>) -> Tracker {
        let c = &state.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Tracker { state, done: false }
    }

    fn finish(mut self) {
        self.done = true;
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let c = &self.state.counters;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            c.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A held generation slot; releases the slot and the gauge when dropped.
struct Slot {
    state: Arc<SimState>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wait in FIFO order for a slot.
async fn acquire_slot(state: &Arc<SimState>) -> Slot {
    let c = &state.counters;
    c.queued.fetch_add(1, Ordering::Relaxed);
    // Decrement `queued` even if this future is dropped while waiting.
    struct Queued<'a>(&'a AtomicU64);
    impl Drop for Queued<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let q = Queued(&c.queued);
    let permit = state
        .slots
        .clone()
        .acquire_owned()
        .await
        .expect("semaphore never closed");
    drop(q);
    let now = c.active.fetch_add(1, Ordering::Relaxed) + 1;
    c.peak_concurrency.fetch_max(now, Ordering::Relaxed);
    Slot {
        state: state.clone(),
        _permit: permit,
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Chat,
    Text,
}

/// What a generation request asked for.
struct Gen {
    model: String,
    stream: bool,
    include_usage: bool,
    max_tokens: u32,
    prompt_tokens: u32,
    prompt_hash: u64,
}

fn parse_gen(state: &SimState, body: &[u8], flavor: Flavor) -> Result<Gen, (StatusCode, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let model = match v.get("model").and_then(Value::as_str) {
        None | Some("") => state.config.models[0].clone(),
        Some(m) if state.config.models.iter().any(|x| x == m) => m.to_string(),
        Some(m) => {
            return Err((
                StatusCode::NOT_FOUND,
                format!(
                    "model `{m}` not found; loaded: {}",
                    state.config.models.join(", ")
                ),
            ));
        }
    };
    let prompt = match flavor {
        Flavor::Chat => {
            let Some(msgs) = v.get("messages").and_then(Value::as_array) else {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "`messages` must be a list".to_string(),
                ));
            };
            msgs.iter()
                .filter_map(|m| m.get("content"))
                .map(|c| match c {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        Flavor::Text => match v.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => {
                return Err((StatusCode::BAD_REQUEST, "`prompt` is required".to_string()));
            }
        },
    };
    let max_tokens = v
        .get("max_completion_tokens")
        .or_else(|| v.get("max_tokens"))
        .and_then(Value::as_u64)
        .map(|n| n.min(u64::from(u32::MAX)) as u32)
        .unwrap_or(state.config.default_tokens);
    Ok(Gen {
        model,
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        max_tokens,
        prompt_tokens: text::count_tokens(&prompt),
        prompt_hash: text::stable_hash(&prompt),
    })
}

/// Apply the faults that act before any answer. `Some` is the answer.
async fn pre_faults(state: &SimState) -> (Option<Response>, Option<u32>) {
    wedge(state).await;
    let f = state.faults.lock().expect("faults lock").clone();
    if state.roll_error(f.error_rate) {
        state.counters.errors.fetch_add(1, Ordering::Relaxed);
        let status = StatusCode::from_u16(if f.error_status == 0 {
            503
        } else {
            f.error_status
        })
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (
            Some(error(status, "simulated studio failure", "server_error")),
            None,
        );
    }
    (None, f.drop_after_tokens)
}

async fn chat(State(s): St, body: Bytes) -> Response {
    generate(s, body, Flavor::Chat).await
}

async fn completions(State(s): St, body: Bytes) -> Response {
    generate(s, body, Flavor::Text).await
}

async fn generate(state: Arc<SimState>, body: Bytes, flavor: Flavor) -> Response {
    let tracker = Tracker::new(state.clone());
    let (early, drop_after) = pre_faults(&state).await;
    if let Some(resp) = early {
        tracker.finish();
        return resp;
    }
    let g = match parse_gen(&state, &body, flavor) {
        Ok(g) => g,
        Err((status, msg)) => {
            tracker.finish();
            return error(status, &msg, "invalid_request_error");
        }
    };
    let slot = acquire_slot(&state).await;
    tokio::time::sleep(state.config.ttft).await;
    let interval = Duration::from_secs_f64(1.0 / state.config.tokens_per_second);
    let ids = Ids {
        n: next_id(),
        created: now_secs(),
        flavor,
    };
    if g.stream {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::spawn(stream_tokens(
            state, tracker, slot, g, ids, interval, drop_after, tx,
        ));
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut resp = Response::new(Body::from_stream(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return resp;
    }
    let n = g.max_tokens;
    let sent = drop_after.map(|d| d.min(n)).unwrap_or(n);
    if sent > 0 {
        tokio::time::sleep(interval * (sent - 1)).await;
    }
    state
        .counters
        .tokens
        .fetch_add(u64::from(sent), Ordering::Relaxed);
    let full = whole_answer(&g, ids);
    drop(slot);
    if drop_after.is_some_and(|d| d < n) {
        // Send half the JSON, then break the connection.
        let bytes = full.to_string().into_bytes();
        let half = Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(half)).await;
            // Let the half reach the client before the connection breaks.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let _ = tx
                .send(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "simulated drop",
                )))
                .await;
        });
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        return (
            [(header::CONTENT_TYPE, "application/json")],
            Body::from_stream(body),
        )
            .into_response();
    }
    tracker.finish();
    state.counters.completed.fetch_add(1, Ordering::Relaxed);
    Json(full).into_response()
}

/// Identity of one answer, shared by all its chunks.
#[derive(Clone, Copy)]
struct Ids {
    n: u64,
    created: u64,
    flavor: Flavor,
}

impl Ids {
    fn id(&self) -> String {
        match self.flavor {
            Flavor::Chat => format!("chatcmpl-sim{}", self.n),
            Flavor::Text => format!("cmpl-sim{}", self.n),
        }
    }
}

fn usage(g: &Gen, n: u32) -> Value {
    json!({"prompt_tokens": g.prompt_tokens, "completion_tokens": n, "total_tokens": g.prompt_tokens + n})
}

fn whole_answer(g: &Gen, ids: Ids) -> Value {
    let n = g.max_tokens;
    let content = text::answer(g.prompt_hash, n);
    match ids.flavor {
        Flavor::Chat => json!({
            "id": ids.id(), "object": "chat.completion", "created": ids.created, "model": g.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "length"}],
            "usage": usage(g, n),
        }),
        Flavor::Text => json!({
            "id": ids.id(), "object": "text_completion", "created": ids.created, "model": g.model,
            "choices": [{"index": 0, "text": content, "logprobs": null, "finish_reason": "length"}],
            "usage": usage(g, n),
        }),
    }
}

/// One streamed chunk: `content` is the delta text (chat) or text (legacy).
fn chunk(g: &Gen, ids: Ids, content: Option<&str>, role: bool, finish: Option<&str>) -> Bytes {
    let v = match ids.flavor {
        Flavor::Chat => {
            let mut delta = serde_json::Map::new();
            if role {
                delta.insert("role".into(), "assistant".into());
            }
            if let Some(c) = content {
                delta.insert("content".into(), c.into());
            }
            json!({"id": ids.id(), "object": "chat.completion.chunk", "created": ids.created,
                   "model": g.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        }
        Flavor::Text => json!({"id": ids.id(), "object": "text_completion", "created": ids.created,
                   "model": g.model, "choices": [{"index": 0, "text": content.unwrap_or(""),
                   "logprobs": null, "finish_reason": finish}]}),
    };
    Bytes::from(format!("data: {v}\n\n"))
}

/// Produce the SSE events of one answer into `tx`, paced at the studio's
/// token rate. A closed channel means hyper dropped the body: the client
/// went away, so stop at once and count the request as cancelled.
#[allow(clippy::too_many_arguments)]
async fn stream_tokens(
    state: Arc<SimState>,
    tracker: Tracker,
    slot: Slot,
    g: Gen,
    ids: Ids,
    interval: Duration,
    drop_after: Option<u32>,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let start = Instant::now();
    let send = |b: Result<Bytes, std::io::Error>| {
        let tx = tx.clone();
        async move { tx.send(b).await.is_ok() }
    };
    if ids.flavor == Flavor::Chat && !send(Ok(chunk(&g, ids, Some(""), true, None))).await {
        return;
    }
    for i in 0..g.max_tokens {
        // Deadline-based pacing: no drift however long each write takes.
        tokio::select! {
            _ = tokio::time::sleep_until(start + interval * i) => {}
            _ = tx.closed() => return,
        }
        // The connection dies when the next token would have come.
        if drop_after.is_some_and(|d| i >= d) {
            let _ = send(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "simulated drop",
            )))
            .await;
            return;
        }
        if !send(Ok(chunk(
            &g,
            ids,
            Some(&text::token(g.prompt_hash, i)),
            false,
            None,
        )))
        .await
        {
            return;
        }
        state.counters.tokens.fetch_add(1, Ordering::Relaxed);
    }
    if !send(Ok(chunk(&g, ids, None, false, Some("length")))).await {
        return;
    }
    if g.include_usage {
        let object = if ids.flavor == Flavor::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let u = json!({"id": ids.id(), "object": object, "created": ids.created, "model": g.model,
                       "choices": [], "usage": usage(&g, g.max_tokens)});
        if !send(Ok(Bytes::from(format!("data: {u}\n\n")))).await {
            return;
        }
    }
    if !send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await {
        return;
    }
    drop(slot);
    tracker.finish();
    state.counters.completed.fetch_add(1, Ordering::Relaxed);
}

async fn embeddings(State(s): St, body: Bytes) -> Response {
    let tracker = Tracker::new(s.clone());
    let (early, _) = pre_faults(&s).await;
    if let Some(resp) = early {
        tracker.finish();
        return resp;
    }
    let v: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            tracker.finish();
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid JSON body: {e}"),
                "invalid_request_error",
            );
        }
    };
    let inputs: Vec<String> = match v.get("input") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| i.to_string())
            })
            .collect(),
        _ => {
            tracker.finish();
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or a list",
                "invalid_request_error",
            );
        }
    };
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&s.config.models[0])
        .to_string();
    let tokens: u32 = inputs.iter().map(|i| text::count_tokens(i)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| json!({"object": "embedding", "index": i, "embedding": text::embedding(t, 16)}))
        .collect();
    tracker.finish();
    s.counters.completed.fetch_add(1, Ordering::Relaxed);
    Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}
