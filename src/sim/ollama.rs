//! Ollama's native API: `/api/chat` and `/api/generate` (NDJSON streams by
//! default, durations in nanoseconds), embeddings, and the model endpoints
//! (`/api/tags`, `/api/ps`, `/api/show`, `/api/version`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};

use super::conn::ReqCtx;
use super::generation::{self, Ask, End, FAILURE, Finish, Generation, StreamFormat, chat_prompt};
use super::openai::{content_text, embedding_inputs};
use super::{SimState, text};

type St = State<Arc<SimState>>;

/// Ollama's plain error shape.
fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// A time as Go writes it in JSON (RFC 3339, nanoseconds, UTC).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_nanos()
    )
}

fn now() -> String {
    rfc3339(SystemTime::now())
}

fn nanos(d: Duration) -> u64 {
    // Go omits zero durations; real ones are never exactly zero.
    (d.as_nanos() as u64).max(1)
}

/// Names match with or without Ollama's default `:latest` tag.
fn served(state: &SimState, name: &str) -> bool {
    state.models.index(name).is_some()
}

/// A refusal, answered in Ollama's plain shape.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, &self.1)
    }
}

/// The JSON body and the requested model's name (as Ollama echoes it).
fn parse(state: &SimState, body: &[u8]) -> Result<(String, Value), Refusal> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Refusal(StatusCode::BAD_REQUEST, e.to_string()))?;
    let name = v
        .get("model")
        .or_else(|| v.get("name"))
        .and_then(Value::as_str);
    match name {
        None | Some("") => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "model is required".to_string(),
        )),
        Some(m) if served(state, m) => Ok((m.to_string(), v)),
        Some(m) => Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("model '{m}' not found"),
        )),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Generate,
}

pub(super) async fn chat(State(s): St, Extension(ctx): Extension<ReqCtx>, body: Bytes) -> Response {
    generate(s, ctx, body, Api::Chat).await
}

pub(super) async fn generate_text(
    State(s): St,
    Extension(ctx): Extension<ReqCtx>,
    body: Bytes,
) -> Response {
    generate(s, ctx, body, Api::Generate).await
}

/// A request's `keep_alive`: `None` when it sets none, `Some(None)` to
/// keep the model loaded forever (a negative value), `Some(Some(0))` to
/// unload it now. Numbers are seconds; strings are Go durations ("5m").
fn keep_alive(v: &Value) -> Option<Option<Duration>> {
    let secs = match v.get("keep_alive")? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
                Some(i) => s.split_at(i),
                None => (s, "s"),
            };
            let n: f64 = num.parse().ok()?;
            n * match unit {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some((secs >= 0.0).then(|| Duration::from_secs_f64(secs)))
}

async fn generate(state: Arc<SimState>, ctx: ReqCtx, body: Bytes, api: Api) -> Response {
    let tracker = match generation::admit(&state).await {
        Ok(t) => t,
        Err(status) => return error(status, FAILURE),
    };
    let (model, v) = match parse(&state, &body) {
        Ok(p) => p,
        Err(r) => {
            tracker.refused();
            return r.into_response();
        }
    };
    let prompt = match api {
        Api::Chat => {
            let msgs = v.get("messages").and_then(Value::as_array);
            msgs.filter(|m| !m.is_empty()).map(|msgs| {
                chat_prompt(msgs.iter().map(|m| {
                    (
                        m.get("role").and_then(Value::as_str).unwrap_or("user"),
                        content_text(m.get("content").unwrap_or(&Value::Null)),
                    )
                }))
            })
        }
        Api::Generate => v
            .get("prompt")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(|p| match v.get("system").and_then(Value::as_str) {
                Some(sys) => format!("{sys}\n{p}"),
                None => p.to_string(),
            }),
    };
    let index = state.models.index(&model).unwrap_or(0);
    let Some(prompt) = prompt else {
        // No prompt: a request to load (or, with keep_alive 0, unload) the model.
        let keep = keep_alive(&v);
        let reason = if keep == Some(Some(Duration::ZERO)) {
            state.models.unload(index);
            "unload"
        } else {
            if state.models.load(index, keep).await {
                state.counters.loads.fetch_add(1, Ordering::Relaxed);
            }
            "load"
        };
        tracker.complete();
        let mut o = Lines { api, model }.head();
        match api {
            Api::Chat => o.insert(
                "message".into(),
                json!({"role": "assistant", "content": ""}),
            ),
            Api::Generate => o.insert("response".into(), "".into()),
        };
        o.insert("done".into(), true.into());
        o.insert("done_reason".into(), reason.into());
        return Json(Value::Object(o)).into_response();
    };
    let max_tokens = v
        .pointer("/options/num_predict")
        .and_then(Value::as_i64)
        .filter(|n| *n > 0)
        .map(|n| n.min(i64::from(u32::MAX)) as u32);
    let ask = Ask {
        model: model.clone(),
        prompt,
        max_tokens,
        // Ollama streams unless told not to.
        stream: v.get("stream").and_then(Value::as_bool).unwrap_or(true),
    };
    let lines = Lines { api, model };
    if ask.stream {
        return generation::stream(&state, ctx, tracker, ask, lines).await;
    }
    let job = Generation::start(&state, ctx, tracker, ask).await;
    let out = job.run().await;
    let whole = lines.object(&out.text, Some(&out.end));
    if out.dropped {
        return generation::cut_body(whole.to_string().into_bytes(), "application/json");
    }
    Json(whole).into_response()
}

/// Newline-delimited JSON objects; the last has `done: true` and the
/// durations.
struct Lines {
    api: Api,
    model: String,
}

impl Lines {
    fn head(&self) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("model".into(), self.model.clone().into());
        o.insert("created_at".into(), now().into());
        o
    }

    /// A chunk of content, or with `end` the final object.
    fn object(&self, content: &str, end: Option<&End>) -> Value {
        let mut o = self.head();
        match self.api {
            Api::Chat => o.insert(
                "message".into(),
                json!({"role": "assistant", "content": content}),
            ),
            Api::Generate => o.insert("response".into(), content.into()),
        };
        o.insert("done".into(), end.is_some().into());
        if let Some(end) = end {
            let t = &end.timings;
            let reason = match end.finish {
                Finish::Length => "length",
                Finish::Stop => "stop",
            };
            o.insert("done_reason".into(), reason.into());
            o.insert("total_duration".into(), nanos(t.total).into());
            o.insert("load_duration".into(), nanos(t.load).into());
            o.insert("prompt_eval_count".into(), t.prefilled_tokens().into());
            o.insert("prompt_eval_duration".into(), nanos(t.prefill).into());
            o.insert("eval_count".into(), t.tokens.into());
            o.insert("eval_duration".into(), nanos(t.decode).into());
        }
        Value::Object(o)
    }
}

fn line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

impl StreamFormat for Lines {
    fn content_type(&self) -> &'static str {
        "application/x-ndjson"
    }

    fn open(&mut self) -> Vec<Bytes> {
        Vec::new()
    }

    fn token(&mut self, text: &str) -> Bytes {
        line(&self.object(text, None))
    }

    fn finish(&mut self, end: &End, marker: bool) -> Vec<Bytes> {
        if marker {
            vec![line(&self.object("", Some(end)))]
        } else {
            Vec::new()
        }
    }

    fn error(&mut self, message: &str) -> Vec<Bytes> {
        vec![line(&json!({"error": message}))]
    }
}

/// `POST /api/embed`.
pub(super) async fn embed(State(s): St, body: Bytes) -> Response {
    let tracker = match generation::admit(&s).await {
        Ok(t) => t,
        Err(status) => return error(status, FAILURE),
    };
    let started = std::time::Instant::now();
    let (model, v) = match parse(&s, &body) {
        Ok(p) => p,
        Err(r) => {
            tracker.refused();
            return r.into_response();
        }
    };
    let Some(inputs) = embedding_inputs(v.get("input")) else {
        tracker.finish();
        return error(StatusCode::BAD_REQUEST, "invalid input type");
    };
    let tokens: u32 = inputs.iter().map(|i| text::count_tokens(i)).sum();
    let embeddings: Vec<Vec<f32>> = inputs.iter().map(|i| text::embedding(i, 16)).collect();
    tracker.complete();
    Json(json!({"model": model, "embeddings": embeddings,
                "total_duration": nanos(started.elapsed()), "load_duration": 1,
                "prompt_eval_count": tokens}))
    .into_response()
}

/// `POST /api/embeddings` (the older, one-prompt form).
pub(super) async fn embeddings(State(s): St, body: Bytes) -> Response {
    let tracker = match generation::admit(&s).await {
        Ok(t) => t,
        Err(status) => return error(status, FAILURE),
    };
    let v = match parse(&s, &body) {
        Ok((_, v)) => v,
        Err(r) => {
            tracker.refused();
            return r.into_response();
        }
    };
    let prompt = v.get("prompt").and_then(Value::as_str).unwrap_or("");
    tracker.complete();
    Json(json!({"embedding": text::embedding(prompt, 16)})).into_response()
}

fn digest(model: &str) -> String {
    let h = text::stable_hash(model);
    format!("{h:016x}").repeat(4)
}

fn details() -> Value {
    json!({"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
           "parameter_size": "7B", "quantization_level": "Q4_K_M"})
}

/// `GET /api/tags`: every model on disk.
pub(super) async fn tags(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s
        .models
        .snapshot()
        .iter()
        .map(|m| {
            json!({"name": m.name, "model": m.name, "modified_at": now(), "size": m.size_bytes,
                   "digest": digest(&m.name), "details": details()})
        })
        .collect();
    Json(json!({"models": data}))
}

/// Far in the future: what a model kept loaded forever expires at.
const FOREVER: Duration = Duration::from_secs(300 * 365 * 86_400);

/// `GET /api/ps`: the models in memory.
pub(super) async fn ps(State(s): St) -> Json<Value> {
    let data: Vec<Value> = s
        .models
        .snapshot()
        .iter()
        .filter(|m| m.status == super::ModelStatus::Loaded)
        .map(|m| {
            let expires = m.expires_at.unwrap_or_else(|| SystemTime::now() + FOREVER);
            json!({"name": m.name, "model": m.name, "size": m.size_bytes, "digest": digest(&m.name),
                   "details": details(), "expires_at": rfc3339(expires), "size_vram": m.size_bytes,
                   "context_length": 4096})
        })
        .collect();
    Json(json!({"models": data}))
}

/// `POST /api/show`.
pub(super) async fn show(State(s): St, body: Bytes) -> Response {
    let model = match parse(&s, &body) {
        Ok((m, _)) => m,
        Err(r) => return r.into_response(),
    };
    Json(json!({
        "modelfile": format!("# Modelfile generated by \"ollama show\"\nFROM {model}\n"),
        "parameters": "num_ctx                        4096",
        "template": "{{ .Prompt }}",
        "details": details(),
        "model_info": {"general.architecture": "llama", "general.parameter_count": 7_241_732_096u64,
                       "llama.context_length": 32768},
        "capabilities": ["completion"],
        "modified_at": now(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_go_does() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let leap = UNIX_EPOCH + Duration::new(951_825_600, 5);
        assert_eq!(rfc3339(leap), "2000-02-29T12:00:00.000000005Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000000000Z");
    }
}
