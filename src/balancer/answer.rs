//! The APIs Baton relays, and what a complete answer looks like in each: a
//! stream is complete only when an event says the answer finished, and a
//! whole answer only when it carries its finish. Real servers end streams
//! early without saying so (llama-cpp-python sends `[DONE]` with no finish
//! reason when another request interrupts it; exo and Ollama report errors
//! inside a 200), so a `[DONE]` or a clean end of body is not proof of
//! anything.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

// Whether a studio lacks an API is studio knowledge (preflight asks it too).
pub(crate) use crate::studio::lacks_api;

/// Which API family a request speaks: it decides the error shape, how a
/// stream is framed and how a studio says it lacks the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Family {
    /// OpenAI's API (chat, completions, embeddings, responses).
    Openai,
    /// Anthropic's Messages API (Claude Code and other Anthropic clients).
    Anthropic,
    /// Ollama's own API (Open WebUI and other Ollama clients).
    Ollama,
}

impl Family {
    /// The family of the API a path belongs to (OpenAI for anything unknown).
    pub fn of_path(path: &str) -> Family {
        match Api::from_path(path) {
            Some(api) => api.family(),
            None if path.starts_with("/api/") => Family::Ollama,
            None => Family::Openai,
        }
    }

    /// An error in this API's own shape.
    pub fn error(self, status: StatusCode, message: &str, code: &str) -> Response {
        let body = match self {
            Family::Openai => {
                let kind = if status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request_error"
                };
                json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            }
            Family::Anthropic => {
                let kind = match status.as_u16() {
                    400 | 413 => "invalid_request_error",
                    401 => "authentication_error",
                    403 => "permission_error",
                    404 => "not_found_error",
                    429 => "rate_limit_error",
                    503 | 529 => "overloaded_error",
                    _ => "api_error",
                };
                json!({"type": "error", "error": {"type": kind, "message": message}})
            }
            Family::Ollama => json!({"error": message}),
        };
        let mut r = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }

    /// An error event that ends a stream already under way.
    pub fn stream_error(self, message: &str) -> String {
        match self {
            Family::Openai => {
                let ev = json!({"error": {"message": message, "type": "server_error",
                                          "param": null, "code": "upstream_failed"}});
                format!("data: {ev}\n\n")
            }
            Family::Anthropic => {
                let ev =
                    json!({"type": "error", "error": {"type": "api_error", "message": message}});
                format!("event: error\ndata: {ev}\n\n")
            }
            Family::Ollama => format!("{}\n", json!({ "error": message })),
        }
    }
}

/// One relayed endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    Messages,
    CountTokens,
    OllamaChat,
    OllamaGenerate,
    OllamaEmbed,
    OllamaEmbeddings,
    OllamaShow,
}

impl Api {
    pub const ALL: [(Api, &'static str); 11] = [
        (Api::ChatCompletions, "/v1/chat/completions"),
        (Api::Completions, "/v1/completions"),
        (Api::Embeddings, "/v1/embeddings"),
        (Api::Responses, "/v1/responses"),
        (Api::Messages, "/v1/messages"),
        (Api::CountTokens, "/v1/messages/count_tokens"),
        (Api::OllamaChat, "/api/chat"),
        (Api::OllamaGenerate, "/api/generate"),
        (Api::OllamaEmbed, "/api/embed"),
        (Api::OllamaEmbeddings, "/api/embeddings"),
        (Api::OllamaShow, "/api/show"),
    ];

    pub fn from_path(path: &str) -> Option<Api> {
        Api::ALL.iter().find(|(_, p)| *p == path).map(|(a, _)| *a)
    }

    /// This API's bit in a capability mask.
    pub fn bit(self) -> u32 {
        1 << Api::ALL
            .iter()
            .position(|(a, _)| *a == self)
            .expect("every API is listed")
    }

    pub fn path(self) -> &'static str {
        Api::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map(|(_, p)| *p)
            .expect("every API has a path")
    }

    pub fn family(self) -> Family {
        match self {
            Api::ChatCompletions | Api::Completions | Api::Embeddings | Api::Responses => {
                Family::Openai
            }
            Api::Messages | Api::CountTokens => Family::Anthropic,
            Api::OllamaChat
            | Api::OllamaGenerate
            | Api::OllamaEmbed
            | Api::OllamaEmbeddings
            | Api::OllamaShow => Family::Ollama,
        }
    }

    /// Generates text (takes a slot for a while, may be streamed).
    pub fn generates(self) -> bool {
        matches!(
            self,
            Api::ChatCompletions
                | Api::Completions
                | Api::Responses
                | Api::Messages
                | Api::OllamaChat
                | Api::OllamaGenerate
        )
    }

    /// Whether a request body without `stream` is streamed: Ollama's own
    /// API streams unless told not to; the others answer whole.
    pub fn streams_by_default(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OllamaGenerate)
    }

    /// Does this one event (an SSE event, or an NDJSON line for Ollama)
    /// say the answer finished?
    pub fn event_finishes(self, event: &[u8]) -> bool {
        match self {
            Api::ChatCompletions | Api::Completions => has_finish_reason(event),
            // The Responses API ends with one of these event types.
            Api::Responses => {
                contains(event, b"response.completed")
                    || contains(event, b"response.incomplete")
                    || contains(event, b"response.failed")
            }
            Api::Messages => contains(event, b"message_stop"),
            Api::OllamaChat | Api::OllamaGenerate => has_key_value(event, b"\"done\"", b"true"),
            _ => false,
        }
    }

    /// Judge a whole (non-streamed) answer that came with a 2xx status.
    ///
    /// By scanning its bytes, not parsing it: building a JSON tree of every
    /// answer cost more than the rest of the proxy path together. The body
    /// is known to be whole at the HTTP level (hyper checks its length or
    /// chunking); what is checked here is that the studio said it finished.
    pub fn judge_whole(self, body: &[u8]) -> Whole {
        let b = body.trim_ascii();
        if !(b.starts_with(b"{") && b.ends_with(b"}")) {
            return Whole::Cut("the answer is not a complete JSON object".into());
        }
        // LM Studio answers unknown paths, and some failures, with a 200
        // and an error object: a complete answer that is an error.
        if is_error_object(b) {
            return Whole::Error;
        }
        let need = |key: &'static [u8], why: &str| {
            if has_non_null(b, key) {
                Whole::Complete {
                    tokens: output_tokens(b),
                }
            } else {
                Whole::Cut(why.to_string())
            }
        };
        match self {
            Api::ChatCompletions | Api::Completions => need(
                b"\"finish_reason\"",
                "the answer has no finish_reason (it was cut short)",
            ),
            Api::Embeddings => need(b"\"data\"", "the answer has no `data`"),
            Api::Responses => need(b"\"status\"", "the answer has no `status`"),
            Api::Messages => need(
                b"\"stop_reason\"",
                "the answer has no stop_reason (it was cut short)",
            ),
            Api::CountTokens => need(b"\"input_tokens\"", "the answer has no `input_tokens`"),
            Api::OllamaChat | Api::OllamaGenerate => {
                if has_key_value(b, b"\"done\"", b"true") {
                    Whole::Complete {
                        tokens: output_tokens(b),
                    }
                } else {
                    Whole::Cut("the answer is not `done` (it was cut short)".into())
                }
            }
            Api::OllamaEmbed => need(b"\"embeddings\"", "the answer has no `embeddings`"),
            Api::OllamaEmbeddings => need(b"\"embedding\"", "the answer has no `embedding`"),
            Api::OllamaShow => Whole::Complete { tokens: None },
        }
    }
}

/// An error object: its first key is `error`, or its type says so
/// (`{"type":"error"}` from Anthropic servers, `{"object":"error"}` from
/// older vLLM).
fn is_error_object(b: &[u8]) -> bool {
    let inner = b[1..].trim_ascii_start();
    inner.starts_with(b"\"error\"")
        || has_key_value(&b[..b.len().min(64)], b"\"type\"", b"\"error\"")
        || has_key_value(&b[..b.len().min(64)], b"\"object\"", b"\"error\"")
}

/// Output tokens a whole answer reports: OpenAI's `usage.completion_tokens`,
/// Anthropic's `usage.output_tokens`, Ollama's `eval_count`.
fn output_tokens(b: &[u8]) -> Option<u64> {
    [
        &b"\"completion_tokens\""[..],
        b"\"output_tokens\"",
        b"\"eval_count\"",
    ]
    .iter()
    .find_map(|k| number_after(b, k))
}

/// The whole number after `"key":`.
fn number_after(b: &[u8], key: &'static [u8]) -> Option<u64> {
    let i = find(b, key)?;
    let rest = b[i + key.len()..].trim_ascii_start().strip_prefix(b":")?;
    let digits: Vec<u8> = rest
        .trim_ascii_start()
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// `"key":` followed by something other than `null`.
fn has_non_null(b: &[u8], key: &'static [u8]) -> bool {
    let mut rest = b;
    while let Some(i) = find(rest, key) {
        rest = &rest[i + key.len()..];
        if let Some(v) = rest.trim_ascii_start().strip_prefix(b":") {
            let v = v.trim_ascii_start();
            if !v.is_empty() && !v.starts_with(b"null") {
                return true;
            }
        }
    }
    false
}

/// What a whole answer turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whole {
    /// Complete, with the output tokens it reports.
    Complete { tokens: Option<u64> },
    /// The studio answered with an error object (relayed as is).
    Error,
    /// Cut short or malformed: why.
    Cut(String),
}

/// One SSE event's `data:` payload is exactly `[DONE]`.
pub(crate) fn is_done(event: &[u8]) -> bool {
    event.split(|b| *b == b'\n').any(|line| {
        line.strip_prefix(b"data:")
            .is_some_and(|d| d.trim_ascii() == b"[DONE]")
    })
}

/// One event carries an error instead of a chunk (exo, Ollama and LM Studio
/// report failures this way under a 200; Anthropic streams send `error`).
pub(crate) fn is_error(event: &[u8]) -> bool {
    event.split(|b| *b == b'\n').any(|line| {
        let line = line.trim_ascii_start();
        let data = line
            .strip_prefix(b"data:")
            .unwrap_or(line)
            .trim_ascii_start();
        data.starts_with(b"{\"error\"")
            || line == b"event: error"
            || data.starts_with(b"{\"type\":\"error\"")
    })
}

/// A `"finish_reason":` whose value is not `null`.
fn has_finish_reason(event: &[u8]) -> bool {
    const KEY: &[u8] = b"\"finish_reason\"";
    let mut rest = event;
    while let Some(i) = find(rest, KEY) {
        rest = &rest[i + KEY.len()..];
        let after = rest.trim_ascii_start();
        if let Some(v) = after.strip_prefix(b":") {
            let v = v.trim_ascii_start();
            if !v.starts_with(b"null") && !v.is_empty() {
                return true;
            }
        }
    }
    false
}

/// `"key": value` somewhere in the event.
fn has_key_value(event: &[u8], key: &'static [u8], value: &[u8]) -> bool {
    let mut rest = event;
    while let Some(i) = find(rest, key) {
        rest = &rest[i + key.len()..];
        if let Some(v) = rest.trim_ascii_start().strip_prefix(b":")
            && v.trim_ascii_start().starts_with(value)
        {
            return true;
        }
    }
    false
}

/// Where `needle` (always a literal) first occurs. Each thread keeps the
/// searchers it built: building one costs more than a short search.
fn find(hay: &[u8], needle: &'static [u8]) -> Option<usize> {
    use std::cell::RefCell;
    thread_local! {
        static FINDERS: RefCell<Vec<(usize, memchr::memmem::Finder<'static>)>> =
            const { RefCell::new(Vec::new()) };
    }
    let key = needle.as_ptr() as usize;
    FINDERS.with(|f| {
        let mut f = f.borrow_mut();
        if let Some((_, finder)) = f.iter().find(|(k, _)| *k == key) {
            return finder.find(hay);
        }
        let finder = memchr::memmem::Finder::new(needle);
        let at = finder.find(hay);
        f.push((key, finder));
        at
    })
}

fn contains(hay: &[u8], needle: &'static [u8]) -> bool {
    find(hay, needle).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_with_a_finish_reason_finishes_and_a_null_one_does_not() {
        let api = Api::ChatCompletions;
        assert!(api.event_finishes(br#"data: {"choices":[{"delta":{},"finish_reason":"stop"}]}"#));
        assert!(
            api.event_finishes(br#"data: {"choices":[{"delta":{},"finish_reason" : "length"}]}"#)
        );
        assert!(!api.event_finishes(
            br#"data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#
        ));
        assert!(!api.event_finishes(b"data: [DONE]"));
    }

    #[test]
    fn anthropic_and_ollama_streams_finish_on_their_own_markers() {
        assert!(
            Api::Messages
                .event_finishes(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
        );
        assert!(!Api::Messages.event_finishes(b"event: ping\ndata: {\"type\":\"ping\"}\n\n"));
        assert!(Api::OllamaChat.event_finishes(b"{\"model\":\"m\",\"done\":true}\n"));
        assert!(!Api::OllamaChat.event_finishes(b"{\"model\":\"m\",\"done\":false}\n"));
    }

    #[test]
    fn done_and_error_events_are_recognised() {
        assert!(is_done(b"data: [DONE]\n\n"));
        assert!(is_done(b"data:[DONE]\n\n"));
        assert!(!is_done(br#"data: {"x":"[DONE]"}"#));
        assert!(is_error(b"data: {\"error\":{\"message\":\"boom\"}}\n\n"));
        assert!(is_error(b"{\"error\":\"model not loaded\"}\n"));
        assert!(is_error(b"event: error\ndata: {\"type\":\"error\"}\n\n"));
        assert!(!is_error(br#"data: {"choices":[]}"#));
    }

    #[test]
    fn a_whole_answer_without_its_finish_is_incomplete() {
        let api = Api::ChatCompletions;
        assert_eq!(
            api.judge_whole(
                br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"completion_tokens":3}}"#
            ),
            Whole::Complete { tokens: Some(3) }
        );
        assert!(matches!(
            api.judge_whole(br#"{"choices":[{"message":{"content":"hi"},"finish_reason":null}]}"#),
            Whole::Cut(_)
        ));
        assert!(matches!(
            api.judge_whole(br#"{"choices":[{"message":"#),
            Whole::Cut(_)
        ));
        assert_eq!(
            Api::Embeddings.judge_whole(br#"{"data":[]}"#),
            Whole::Complete { tokens: None }
        );
        assert_eq!(
            Api::Responses.judge_whole(br#"{"error":"Unexpected endpoint"}"#),
            Whole::Error
        );
        assert!(matches!(
            Api::Messages.judge_whole(br#"{"type":"message","stop_reason":null}"#),
            Whole::Cut(_)
        ));
        assert_eq!(
            Api::OllamaChat.judge_whole(br#"{"done":true,"message":{},"eval_count":7}"#),
            Whole::Complete { tokens: Some(7) }
        );
    }

    #[test]
    fn each_family_has_its_own_error_shape() {
        let body = |f: Family| {
            let r = f.error(StatusCode::NOT_FOUND, "no such model", "model_not_found");
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let b = rt
                .block_on(http_body_util::BodyExt::collect(r.into_body()))
                .unwrap()
                .to_bytes();
            serde_json::from_slice::<serde_json::Value>(&b).unwrap()
        };
        assert_eq!(body(Family::Openai)["error"]["code"], "model_not_found");
        let a = body(Family::Anthropic);
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
        assert_eq!(body(Family::Ollama)["error"], "no such model");
    }
}
