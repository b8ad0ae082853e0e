//! OpenAI's wire format: `/v1/chat/completions`, `/v1/completions` and
//! `/v1/embeddings`, with what particular servers add to it: llama.cpp's
//! `timings` and LM Studio's REST API (`/api/v0/...`) with its `stats`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};

use super::conn::ReqCtx;
use super::generation::{
    self, Ask, End, FAILURE, Finish, Generation, StreamFormat, Timings, chat_prompt,
};
use super::{SimState, text};
use crate::studio::StudioKind;

type St = State<Arc<SimState>>;

pub(super) fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": null}})),
    )
        .into_response()
}

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A number for answer ids, unique within the process.
pub(super) fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Chat,
    Text,
}

/// What a particular server adds to OpenAI's answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extras {
    None,
    /// llama.cpp: a `timings` object on the last chunk and whole answers.
    Timings,
    /// LM Studio's REST API: `stats`, `model_info` and `runtime` on whole
    /// answers (its streams carry none).
    Stats,
}

fn extras(state: &SimState) -> Extras {
    if state.config.kind == StudioKind::LlamaCpp {
        Extras::Timings
    } else {
        Extras::None
    }
}

pub(super) async fn chat(State(s): St, Extension(ctx): Extension<ReqCtx>, body: Bytes) -> Response {
    let x = extras(&s);
    generate(s, ctx, body, Flavor::Chat, x).await
}

pub(super) async fn completions(
    State(s): St,
    Extension(ctx): Extension<ReqCtx>,
    body: Bytes,
) -> Response {
    let x = extras(&s);
    generate(s, ctx, body, Flavor::Text, x).await
}

/// LM Studio's `POST /api/v0/chat/completions`.
pub(super) async fn lmstudio_chat(
    State(s): St,
    Extension(ctx): Extension<ReqCtx>,
    body: Bytes,
) -> Response {
    generate(s, ctx, body, Flavor::Chat, Extras::Stats).await
}

/// LM Studio's `POST /api/v0/completions`.
pub(super) async fn lmstudio_completions(
    State(s): St,
    Extension(ctx): Extension<ReqCtx>,
    body: Bytes,
) -> Response {
    generate(s, ctx, body, Flavor::Text, Extras::Stats).await
}

/// Text of a message's content: a string, or the text parts of a list.
pub(super) fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn parse(
    state: &SimState,
    body: &[u8],
    flavor: Flavor,
) -> Result<(Ask, bool), (StatusCode, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let model = match v.get("model").and_then(Value::as_str) {
        None | Some("") => state.config.models[0].clone(),
        Some(m) if generation::serves(state, m) => m.to_string(),
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
            chat_prompt(msgs.iter().map(|m| {
                (
                    m.get("role").and_then(Value::as_str).unwrap_or("user"),
                    content_text(m.get("content").unwrap_or(&Value::Null)),
                )
            }))
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
        .map(|n| n.min(u64::from(u32::MAX)) as u32);
    let include_usage = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((
        Ask {
            model,
            prompt,
            max_tokens,
            stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
        },
        include_usage,
    ))
}

async fn generate(
    state: Arc<SimState>,
    ctx: ReqCtx,
    body: Bytes,
    flavor: Flavor,
    extras: Extras,
) -> Response {
    let tracker = match generation::admit(&state).await {
        Ok(t) => t,
        Err(status) => return error(status, FAILURE, "server_error"),
    };
    let (ask, include_usage) = match parse(&state, &body, flavor) {
        Ok(a) => a,
        Err((status, msg)) => {
            tracker.refused();
            return error(status, &msg, "invalid_request_error");
        }
    };
    let answer = Answer {
        id: next_id(),
        created: now_secs(),
        flavor,
        model: ask.model.clone(),
        prompt_tokens: text::count_tokens(&ask.prompt),
        extras,
    };
    if ask.stream {
        let fmt = SseStream {
            a: answer,
            include_usage,
        };
        return generation::stream(&state, ctx, tracker, ask, fmt).await;
    }
    let job = Generation::start(&state, ctx, tracker, ask).await;
    let out = job.run().await;
    let whole = answer.whole(&out.text, &out.end);
    if out.dropped {
        return generation::cut_body(whole.to_string().into_bytes(), "application/json");
    }
    Json(whole).into_response()
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "length",
        Finish::Stop => "stop",
    }
}

/// llama.cpp's `timings` object.
fn timings_json(t: &Timings) -> Value {
    let (prompt_n, prompt_ms) = (t.prefilled_tokens(), t.prefill_ms());
    let (predicted_n, predicted_ms) = (t.tokens, t.decode_ms());
    json!({
        "cache_n": t.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / f64::from(prompt_n.max(1)),
        "prompt_per_second": 1e3 / prompt_ms * f64::from(prompt_n),
        "predicted_n": predicted_n,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / f64::from(predicted_n.max(1)),
        "predicted_per_second": 1e3 / predicted_ms * f64::from(predicted_n),
    })
}

/// One answer's identity, shared by all its chunks.
struct Answer {
    id: u64,
    created: u64,
    flavor: Flavor,
    model: String,
    prompt_tokens: u32,
    extras: Extras,
}

impl Answer {
    fn id(&self) -> String {
        match self.flavor {
            Flavor::Chat => format!("chatcmpl-sim{}", self.id),
            Flavor::Text => format!("cmpl-sim{}", self.id),
        }
    }

    fn usage(&self, n: u32) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
               "total_tokens": self.prompt_tokens + n})
    }

    fn whole(&self, content: &str, end: &End) -> Value {
        let n = end.timings.tokens;
        let reason = finish_reason(end.finish);
        let mut v = match self.flavor {
            Flavor::Chat => json!({
                "id": self.id(), "object": "chat.completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                             "logprobs": null, "finish_reason": reason}],
                "usage": self.usage(n),
            }),
            Flavor::Text => json!({
                "id": self.id(), "object": "text_completion", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": content, "logprobs": null,
                             "finish_reason": reason}],
                "usage": self.usage(n),
            }),
        };
        let o = v.as_object_mut().expect("an object");
        match self.extras {
            Extras::None => {}
            Extras::Timings => {
                o.insert("timings".into(), timings_json(&end.timings));
            }
            Extras::Stats => {
                let t = &end.timings;
                let gen_secs = t.decode_ms() / 1000.0;
                o.insert(
                    "stats".into(),
                    json!({
                        "tokens_per_second": f64::from(n) / gen_secs,
                        "time_to_first_token": t.ttft().as_secs_f64(),
                        "generation_time": gen_secs,
                        "stop_reason": match end.finish {
                            Finish::Length => "maxPredictedTokensReached",
                            Finish::Stop => "eosFound",
                        },
                    }),
                );
                o.insert(
                    "model_info".into(),
                    json!({"arch": "llama", "quant": "Q4_K_M", "format": "gguf",
                           "context_length": 32768}),
                );
                o.insert(
                    "runtime".into(),
                    json!({"name": "llama.cpp-mac-arm64-apple-metal-advsimd",
                           "version": "1.3.0", "supported_formats": ["gguf"]}),
                );
            }
        }
        v
    }

    /// One streamed chunk: `content` is the delta text (chat) or text (legacy).
    fn chunk(&self, content: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.flavor {
            Flavor::Chat => {
                let mut delta = Map::new();
                if role {
                    delta.insert("role".into(), "assistant".into());
                }
                if let Some(c) = content {
                    delta.insert("content".into(), c.into());
                }
                json!({"id": self.id(), "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            }
            Flavor::Text => json!({"id": self.id(), "object": "text_completion",
                       "created": self.created, "model": self.model,
                       "choices": [{"index": 0, "text": content.unwrap_or(""), "logprobs": null,
                                    "finish_reason": finish}]}),
        }
    }

    fn object(&self) -> &'static str {
        match self.flavor {
            Flavor::Chat => "chat.completion.chunk",
            Flavor::Text => "text_completion",
        }
    }
}

fn data(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// Server-sent events, ending with `data: [DONE]`.
struct SseStream {
    a: Answer,
    include_usage: bool,
}

impl StreamFormat for SseStream {
    fn content_type(&self) -> &'static str {
        "text/event-stream"
    }

    fn open(&mut self) -> Vec<Bytes> {
        match self.a.flavor {
            Flavor::Chat => vec![data(&self.a.chunk(Some(""), true, None))],
            Flavor::Text => Vec::new(),
        }
    }

    fn token(&mut self, text: &str) -> Bytes {
        data(&self.a.chunk(Some(text), false, None))
    }

    fn finish(&mut self, end: &End, marker: bool) -> Vec<Bytes> {
        let mut events = Vec::new();
        if marker {
            events.push(self.a.chunk(None, false, Some(finish_reason(end.finish))));
        }
        if self.include_usage {
            events.push(json!({"id": self.a.id(), "object": self.a.object(),
                               "created": self.a.created, "model": self.a.model,
                               "choices": [], "usage": self.a.usage(end.timings.tokens)}));
        }
        // llama.cpp puts its timings on the last chunk before [DONE].
        if self.a.extras == Extras::Timings
            && let Some(Value::Object(last)) = events.last_mut()
        {
            last.insert("timings".into(), timings_json(&end.timings));
        }
        let mut out: Vec<Bytes> = events.iter().map(data).collect();
        out.push(Bytes::from_static(DONE));
        out
    }

    fn error(&mut self, message: &str) -> Vec<Bytes> {
        vec![
            data(&json!({"error": {"message": message, "type": "server_error"}})),
            Bytes::from_static(DONE),
        ]
    }

    fn interrupted(&mut self) -> Vec<Bytes> {
        vec![Bytes::from_static(DONE)]
    }
}

/// `POST /v1/embeddings` (and LM Studio's `/api/v0/embeddings`).
pub(super) async fn embeddings(State(s): St, body: Bytes) -> Response {
    let tracker = match generation::admit(&s).await {
        Ok(t) => t,
        Err(status) => return error(status, FAILURE, "server_error"),
    };
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
    let Some(inputs) = embedding_inputs(v.get("input")) else {
        tracker.finish();
        return error(
            StatusCode::BAD_REQUEST,
            "`input` must be a string or a list",
            "invalid_request_error",
        );
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
    tracker.complete();
    Json(json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

/// Embedding inputs: a string or a non-empty list.
pub(super) fn embedding_inputs(input: Option<&Value>) -> Option<Vec<String>> {
    match input? {
        Value::String(t) => Some(vec![t.clone()]),
        Value::Array(items) if !items.is_empty() => Some(
            items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| i.to_string())
                })
                .collect(),
        ),
        _ => None,
    }
}
