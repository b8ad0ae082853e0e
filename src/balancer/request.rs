//! What routing needs from a request body, read without building a tree of
//! the whole prompt: the model, the expected answer length, whether it
//! streams, and the prompt's prefix hashes (for cache affinity). Also the
//! one rewrite Baton makes: the model name, for aliases.

use std::borrow::Cow;
use std::time::Instant;

use axum::http::HeaderValue;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::affinity::Prefixes;
use super::answer::Api;
use super::pool::Demand;
use super::worker::WorkerEntry;

/// The parts of a request body routing looks at.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default, borrow)]
    model: Option<Cow<'a, str>>,
    /// Helps estimate how long the answer takes; odd values are ignored.
    #[serde(default, deserialize_with = "lenient_u64")]
    max_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient_u64")]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    /// Chat prompts (OpenAI, Anthropic, Ollama): hashed message by message.
    #[serde(default, borrow)]
    messages: Option<Vec<&'a RawValue>>,
    /// Anthropic's system prompt comes before the messages.
    #[serde(default, borrow)]
    system: Option<&'a RawValue>,
    /// Text prompts (completions, Ollama generate).
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    /// Ollama: `options.num_predict` is the answer length.
    #[serde(default, borrow)]
    options: Option<&'a RawValue>,
}

/// A whole number if it is one; anything else is left to the studio to judge.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v: Value = serde::Deserialize::deserialize(d)?;
    Ok(v.as_u64())
}

/// A request, as routing sees it.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub prefixes: Prefixes,
}

/// Read the routing head of a body: `Err` is the message for a 400.
pub(crate) fn parse(body: &[u8], api: Api) -> Result<Parsed, String> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some() && first != Some(&b'{') {
        return Err("request body must be a JSON object".into());
    }
    let h: Head = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("invalid request: {e}"),
        _ => format!("request body is not valid JSON: {e}"),
    })?;
    let num_predict = h
        .options
        .and_then(|o| serde_json::from_str::<Value>(o.get()).ok())
        .and_then(|o| o.get("num_predict").and_then(Value::as_u64));
    let mut parts: Vec<&[u8]> = Vec::new();
    if let Some(s) = h.system {
        parts.push(s.get().as_bytes());
    }
    let prefixes = match (&h.messages, h.prompt) {
        (Some(msgs), _) => {
            parts.extend(msgs.iter().map(|m| m.get().as_bytes()));
            Prefixes::of_parts(parts)
        }
        (None, Some(p)) => match serde_json::from_str::<Cow<str>>(p.get()) {
            Ok(text) => Prefixes::of_text(&text),
            Err(_) => Prefixes::of_text(p.get()),
        },
        (None, None) => Prefixes::default(),
    };
    Ok(Parsed {
        model: h.model.map(Cow::into_owned),
        max_tokens: h.max_completion_tokens.or(h.max_tokens).or(num_predict),
        stream: h.stream.unwrap_or(api.streams_by_default()),
        prefixes,
    })
}

/// Cached prompts shorter than this are not worth following: their prefill
/// takes less than routing by speed saves (256 tokens: a tenth of a second
/// or so on a Mac).
pub(crate) const MIN_AFFINITY_TOKENS: u32 = 256;

impl Parsed {
    /// A generation whose prompt is long enough for its cache to matter.
    pub fn worth_caching(&self, api: Api) -> bool {
        api.generates() && self.prefixes.total_tokens() >= MIN_AFFINITY_TOKENS
    }
}

/// One request on its way: what it is and where it may go. Shared by its
/// attempts (a streamed one outlives the handler that started it).
pub(crate) struct Job {
    pub api: Api,
    pub body: Bytes,
    pub parsed: Parsed,
    pub demand: Demand,
    /// Headers passed on to the studio.
    pub passed: Vec<(&'static str, HeaderValue)>,
    /// The hops it came through, this balancer last.
    pub via: HeaderValue,
    /// When it reached Baton.
    pub started: Instant,
}

impl Job {
    /// Tokens of its prompt `w` must prefill (`w`'s cache holds the rest
    /// when the request followed its conversation there).
    pub fn uncached_tokens(&self, w: &WorkerEntry) -> u32 {
        let cached = match &self.demand.affinity {
            Some(hit) if *hit.worker == *w.id() => hit.tokens,
            _ => 0,
        };
        self.parsed.prefixes.total_tokens().saturating_sub(cached)
    }

    /// It followed its conversation to `w`, the studio holding its cache.
    pub fn followed_to(&self, w: &WorkerEntry) -> bool {
        self.demand
            .affinity
            .as_ref()
            .is_some_and(|h| *h.worker == *w.id())
    }

    /// The request as `w` gets it: its own name for the model.
    pub fn body_for(&self, w: &WorkerEntry) -> Bytes {
        match (
            self.parsed.model.as_deref(),
            w.serves_any(&self.demand.models),
        ) {
            (Some(asked), Some(name)) if asked != name => with_model(&self.body, name)
                .map(Bytes::from)
                .unwrap_or_else(|| self.body.clone()),
            _ => self.body.clone(),
        }
    }
}

/// The body with its `model` replaced (an alias resolved to the name the
/// chosen studio serves). Only called when the name differs.
pub(crate) fn with_model(body: &[u8], model: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    v.insert("model".into(), Value::String(model.to_string()));
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_prompts_hash_per_message_and_the_next_turn_extends_them() {
        let t1 = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let t2 = br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"user","content":"more"}]}"#;
        let p1 = parse(t1, Api::ChatCompletions).unwrap();
        let p2 = parse(t2, Api::ChatCompletions).unwrap();
        assert_eq!(p1.prefixes.hashes[0], p2.prefixes.hashes[0]);
        assert_eq!(p2.prefixes.hashes.len(), 3);
        assert!(!p1.stream);
    }

    #[test]
    fn each_api_gives_its_answer_length_and_stream_default() {
        let o = parse(
            br#"{"model":"m","options":{"num_predict":7},"prompt":"x"}"#,
            Api::OllamaGenerate,
        )
        .unwrap();
        assert_eq!((o.max_tokens, o.stream), (Some(7), true));
        let a = parse(
            br#"{"model":"m","max_tokens":9,"system":"be brief","messages":[],"stream":true}"#,
            Api::Messages,
        )
        .unwrap();
        assert_eq!((a.max_tokens, a.stream), (Some(9), true));
        assert_eq!(a.prefixes.hashes.len(), 1, "the system prompt is a prefix");
    }

    #[test]
    fn the_model_is_rewritten_and_nothing_else() {
        let b = with_model(
            br#"{"model":"alias","messages":[1,2],"x":{"y":true}}"#,
            "real",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["model"], "real");
        assert_eq!(v["messages"], serde_json::json!([1, 2]));
        assert_eq!(v["x"]["y"], true);
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused_with_a_reason() {
        assert!(
            parse(b"[1]", Api::ChatCompletions)
                .unwrap_err()
                .contains("JSON object")
        );
        assert!(
            parse(b"{\"model\":", Api::ChatCompletions)
                .unwrap_err()
                .contains("not valid JSON")
        );
    }
}
