//! Anthropic's Messages API (`POST /v1/messages`, and token counting), as
//! llama.cpp, LM Studio and Ollama serve it.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};

use super::conn::ReqCtx;
use super::generation::{self, Ask, End, FAILURE, Finish, Generation, StreamFormat, chat_prompt};
use super::openai::{content_text, next_id};
use super::{SimState, text};

type St = State<Arc<SimState>>;

/// Errors in Anthropic's shape; the type follows the status.
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    };
    (
        status,
        Json(json!({"type": "error", "error": {"type": kind, "message": message}})),
    )
        .into_response()
}

fn parse(state: &SimState, body: &[u8]) -> Result<Ask, (StatusCode, String)> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
    let model = match v.get("model").and_then(Value::as_str) {
        None | Some("") => state.config.models[0].clone(),
        Some(m) if generation::serves(state, m) => m.to_string(),
        Some(m) => return Err((StatusCode::NOT_FOUND, format!("model: {m}"))),
    };
    let Some(msgs) = v.get("messages").and_then(Value::as_array) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "messages: Field required".to_string(),
        ));
    };
    let system = v.get("system").map(content_text).filter(|s| !s.is_empty());
    let prompt = chat_prompt(
        system
            .map(|s| ("system", s))
            .into_iter()
            .chain(msgs.iter().map(|m| {
                (
                    m.get("role").and_then(Value::as_str).unwrap_or("user"),
                    content_text(m.get("content").unwrap_or(&Value::Null)),
                )
            })),
    );
    Ok(Ask {
        model,
        prompt,
        max_tokens: v
            .get("max_tokens")
            .and_then(Value::as_u64)
            .map(|n| n.min(u64::from(u32::MAX)) as u32),
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(false),
    })
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length => "max_tokens",
        Finish::Stop => "end_turn",
    }
}

/// `POST /v1/messages`.
pub(super) async fn messages(
    State(s): St,
    Extension(ctx): Extension<ReqCtx>,
    body: Bytes,
) -> Response {
    let tracker = match generation::admit(&s).await {
        Ok(t) => t,
        Err(status) => return error(status, FAILURE),
    };
    let ask = match parse(&s, &body) {
        Ok(a) => a,
        Err((status, msg)) => {
            tracker.refused();
            return error(status, &msg);
        }
    };
    let id = format!("msg_sim{}", next_id());
    let (model, input_tokens) = (ask.model.clone(), text::count_tokens(&ask.prompt));
    if ask.stream {
        let fmt = Events {
            id,
            model,
            input_tokens,
        };
        return generation::stream(&s, ctx, tracker, ask, fmt).await;
    }
    let job = Generation::start(&s, ctx, tracker, ask).await;
    let out = job.run().await;
    let whole = json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": out.text}],
        "stop_reason": stop_reason(out.end.finish), "stop_sequence": null,
        "usage": {"input_tokens": input_tokens, "output_tokens": out.end.timings.tokens},
    });
    if out.dropped {
        return generation::cut_body(whole.to_string().into_bytes(), "application/json");
    }
    Json(whole).into_response()
}

/// `POST /v1/messages/count_tokens`: the prompt's size, nothing generated.
pub(super) async fn count_tokens(State(s): St, body: Bytes) -> Response {
    match parse(&s, &body) {
        Ok(ask) => Json(json!({"input_tokens": text::count_tokens(&ask.prompt)})).into_response(),
        Err((status, msg)) => error(status, &msg),
    }
}

fn event(name: &str, data: Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Anthropic's event sequence: message_start, content_block_start, ping,
/// content_block_delta..., content_block_stop, message_delta, message_stop.
struct Events {
    id: String,
    model: String,
    input_tokens: u32,
}

impl StreamFormat for Events {
    fn content_type(&self) -> &'static str {
        "text/event-stream"
    }

    fn open(&mut self) -> Vec<Bytes> {
        vec![
            event(
                "message_start",
                json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "content": [],
                    "model": self.model, "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}}),
            ),
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                       "content_block": {"type": "text", "text": ""}}),
            ),
            event("ping", json!({"type": "ping"})),
        ]
    }

    fn token(&mut self, text: &str) -> Bytes {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": text}}),
        )
    }

    fn finish(&mut self, end: &End, marker: bool) -> Vec<Bytes> {
        let mut out = vec![event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        )];
        if marker {
            out.push(event(
                "message_delta",
                json!({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason(end.finish), "stop_sequence": null},
                       "usage": {"output_tokens": end.timings.tokens}}),
            ));
        }
        out.push(event("message_stop", json!({"type": "message_stop"})));
        out
    }

    fn error(&mut self, message: &str) -> Vec<Bytes> {
        vec![event(
            "error",
            json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        )]
    }
}
