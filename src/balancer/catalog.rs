//! What the pool serves, as each API lists it: OpenAI's `/v1/models` (with
//! the aliases), Ollama's `/api/tags` and `/api/ps` (the union over ready
//! studios that speak Ollama's API) and `/api/version`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::Shared;
use super::answer::Family;
use super::probe;
use super::state::State as WState;
use super::worker::WorkerEntry;

type St = State<Arc<Shared>>;

/// Time allowed for a studio to list its models for a catalog answer.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

fn ready(s: &Shared) -> Vec<Arc<WorkerEntry>> {
    s.pool()
        .workers()
        .into_iter()
        .filter(|w| w.state() == WState::Ready)
        .collect()
}

/// Every model any live worker serves, and the aliases, sorted.
pub(super) fn known_models(s: &Shared) -> Vec<String> {
    let mut all: Vec<String> = s
        .pool()
        .workers()
        .iter()
        .filter(|w| w.state().is_live())
        .flat_map(|w| w.models())
        .chain(s.aliases().0.keys().cloned())
        .collect();
    all.sort();
    all.dedup();
    all
}

/// `GET /v1/models`: models of ready workers, de-duplicated, with the
/// workers serving each; then each alias with the workers behind it.
pub(super) async fn openai_models(State(s): St) -> axum::Json<Value> {
    let mut by_model: Vec<(String, Vec<String>)> = Vec::new();
    let workers = ready(&s);
    for w in &workers {
        for m in w.models() {
            match by_model.iter_mut().find(|(id, _)| *id == m) {
                Some((_, ws)) => ws.push(w.id().to_string()),
                None => by_model.push((m, vec![w.id().to_string()])),
            }
        }
    }
    let mut data: Vec<Value> = by_model
        .into_iter()
        .map(|(id, ws)| json!({"id": id, "object": "model", "owned_by": "baton", "workers": ws}))
        .collect();
    for (alias, names) in &s.aliases().0 {
        let group = s.aliases().names_for(alias);
        let ws: Vec<String> = workers
            .iter()
            .filter(|w| w.serves_any(&group).is_some())
            .map(|w| w.id().to_string())
            .collect();
        if !ws.is_empty() {
            data.push(json!({"id": alias, "object": "model", "owned_by": "baton",
                             "aliases": names, "workers": ws}));
        }
    }
    axum::Json(json!({"object": "list", "data": data}))
}

/// Ask every ready studio that may speak Ollama's API for `path`.
async fn ask_all(s: &Shared, path: &str) -> Vec<(Arc<WorkerEntry>, Value)> {
    let api = super::answer::Api::OllamaShow;
    let asks = ready(s)
        .into_iter()
        .filter(|w| w.capable(api))
        // Never a request of Baton's own inside a busy one-at-a-time server.
        .filter(|w| w.serves_http_concurrently() || s.pool().busy_at(w) == 0)
        .map(|w| async move {
            let r = probe::fetch(&s.core, &w, Method::GET, path, Bytes::new(), LIST_TIMEOUT).await;
            match r {
                Ok((status, body)) if status.is_success() => serde_json::from_slice::<Value>(&body)
                    .ok()
                    .filter(|v| v.get("error").is_none())
                    .map(|v| (w, v)),
                _ => None,
            }
        });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The union of the studios' `models` lists, each model once; aliases are
/// listed too, as the model they stand for.
async fn union(s: &Shared, path: &str) -> Value {
    let mut models: Vec<Value> = Vec::new();
    for (_, v) in ask_all(s, path).await {
        for m in v["models"].as_array().into_iter().flatten() {
            let name = m.get("name").or_else(|| m.get("model"));
            if !models
                .iter()
                .any(|x| x.get("name").or_else(|| x.get("model")) == name)
            {
                models.push(m.clone());
            }
        }
    }
    for alias in s.aliases().0.keys() {
        let group = s.aliases().names_for(alias);
        if let Some(m) = models.iter().find(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| group.iter().any(|g| g == n))
        }) {
            let mut a = m.clone();
            a["name"] = alias.clone().into();
            a["model"] = alias.clone().into();
            models.push(a);
        }
    }
    json!({ "models": models })
}

/// `GET /api/tags`.
pub(super) async fn ollama_tags(State(s): St) -> axum::Json<Value> {
    axum::Json(union(&s, "/api/tags").await)
}

/// `GET /api/ps`.
pub(super) async fn ollama_ps(State(s): St) -> axum::Json<Value> {
    axum::Json(union(&s, "/api/ps").await)
}

/// `GET /api/version`: the first ready studio that answers it (Ollama
/// clients use it to tell they talk to Ollama).
pub(super) async fn ollama_version(State(s): St) -> Response {
    match ask_all(&s, "/api/version").await.into_iter().next() {
        Some((_, v)) => axum::Json(v).into_response(),
        None => Family::Ollama.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no ready studio answers Ollama's API",
            "no_worker_available",
        ),
    }
}
