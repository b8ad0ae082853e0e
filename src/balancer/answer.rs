//! What a complete answer looks like, per API: a stream is complete only
//! when an event says the answer finished, and a whole answer only when it
//! carries its finish. Real servers end streams early without saying so
//! (llama-cpp-python sends `[DONE]` with no finish reason when another
//! request interrupts it; exo and Ollama report errors inside a 200), so a
//! `[DONE]` or a clean end of body is not proof of anything.

use serde_json::Value;

/// The proxied API an answer belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
}

impl Api {
    pub const ALL: [(Api, &'static str); 4] = [
        (Api::ChatCompletions, "/v1/chat/completions"),
        (Api::Completions, "/v1/completions"),
        (Api::Embeddings, "/v1/embeddings"),
        (Api::Responses, "/v1/responses"),
    ];

    pub fn from_path(path: &str) -> Option<Api> {
        Api::ALL.iter().find(|(_, p)| *p == path).map(|(a, _)| *a)
    }

    pub fn path(self) -> &'static str {
        Api::ALL
            .iter()
            .find(|(a, _)| *a == self)
            .map(|(_, p)| *p)
            .expect("every API has a path")
    }

    /// Does this one SSE event say the answer finished?
    pub fn event_finishes(self, event: &[u8]) -> bool {
        match self {
            Api::ChatCompletions | Api::Completions => has_finish_reason(event),
            // The Responses API ends with one of these event types.
            Api::Responses => {
                contains(event, b"response.completed")
                    || contains(event, b"response.incomplete")
                    || contains(event, b"response.failed")
            }
            Api::Embeddings => false,
        }
    }

    /// Judge a whole (non-streamed) answer that came with a 2xx status.
    pub fn judge_whole(self, body: &[u8]) -> Whole {
        let v: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return Whole::Cut(format!("the answer is not complete JSON ({e})")),
        };
        // LM Studio answers unknown paths, and some failures, with a 200
        // and an error object: a complete answer that is an error.
        if v.get("error").is_some_and(|e| !e.is_null()) {
            return Whole::Error;
        }
        match self.check_fields(&v) {
            Ok(()) => Whole::Complete,
            Err(why) => Whole::Cut(why),
        }
    }

    fn check_fields(self, v: &Value) -> Result<(), String> {
        match self {
            Api::ChatCompletions | Api::Completions => {
                let choices = v
                    .get("choices")
                    .and_then(Value::as_array)
                    .filter(|c| !c.is_empty())
                    .ok_or("the answer has no choices")?;
                if choices
                    .iter()
                    .all(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
                {
                    Ok(())
                } else {
                    Err("the answer has no finish_reason (it was cut short)".into())
                }
            }
            Api::Embeddings => v
                .get("data")
                .and_then(Value::as_array)
                .map(|_| ())
                .ok_or_else(|| "the answer has no `data` list".into()),
            Api::Responses => v
                .get("status")
                .and_then(Value::as_str)
                .map(|_| ())
                .ok_or_else(|| "the answer has no `status`".into()),
        }
    }
}

/// What a whole answer turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Whole {
    Complete,
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

/// One SSE event carries an error object instead of a chunk (exo, Ollama
/// and LM Studio report failures this way under a 200).
pub(crate) fn is_error(event: &[u8]) -> bool {
    event.split(|b| *b == b'\n').any(|line| {
        line.strip_prefix(b"data:")
            .map(|d| d.trim_ascii_start())
            .is_some_and(|d| d.starts_with(b"{\"error\""))
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
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
    fn done_and_error_events_are_recognised() {
        assert!(is_done(b"data: [DONE]\n\n"));
        assert!(is_done(b"data:[DONE]\n\n"));
        assert!(!is_done(br#"data: {"x":"[DONE]"}"#));
        assert!(is_error(b"data: {\"error\":{\"message\":\"boom\"}}\n\n"));
        assert!(!is_error(br#"data: {"choices":[]}"#));
    }

    #[test]
    fn a_whole_answer_without_finish_reason_is_incomplete() {
        let api = Api::ChatCompletions;
        assert_eq!(
            api.judge_whole(
                br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}]}"#
            ),
            Whole::Complete
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
            Whole::Complete
        );
        assert_eq!(
            Api::Responses.judge_whole(br#"{"error":"Unexpected endpoint"}"#),
            Whole::Error
        );
    }
}
