//! What each studio has: the models it can serve and which of them are in
//! memory, read from each kind's own API (LM Studio's `/api/v1/models` or
//! `/api/v0/models`, Ollama's `/api/tags` and `/api/ps`, llama.cpp's
//! `/props`, vLLM's and mlx's `/v1/models`); how long a model takes to load
//! there (learned from the first answer after a cold start); and loading or
//! unloading a model through the kinds that have an API for it.
//!
//! Routing reads it to send a request where its model is warm (see the
//! scheduler's invariant in `pool`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::Method;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Core;
use super::worker::{WorkerEntry, ewma};
use crate::studio::StudioKind;

/// Load time assumed for a model never seen loading on a studio (a mid-size
/// model from an SSD on an M-series Mac).
pub(crate) const DEFAULT_LOAD: Duration = Duration::from_secs(20);

/// Time allowed for a studio to list its models.
const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Time allowed for a studio to load a model on request.
const LOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// Whether a model is in a studio's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residency {
    /// In memory: a request starts at once.
    Loaded,
    /// On disk: the first request pays the load.
    Available,
    /// The studio's kind does not say (OpenAI-compatible servers, exo).
    Unknown,
}

/// One model a studio can serve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    pub state: Residency,
    /// Bytes in memory when loaded (or on disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// The context length it is loaded with, else the most it supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<u64>,
    /// When the studio unloads it if unused (Ollama's `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Learned load time on this studio, ms (absent until seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
}

/// A studio's inventory as routing keeps it.
#[derive(Default)]
pub(crate) struct Inventory {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Empty until the studio was first asked.
    models: Vec<ModelInfo>,
    /// A model Baton sent a request to while it was not loaded: warm from
    /// then on for routing (one cold load, not one per studio).
    loading: Option<(String, Instant)>,
    /// Learned load time per model, ms.
    load_ms: HashMap<String, f64>,
}

impl Inventory {
    /// The models, with what was learned of their load times.
    pub fn models(&self) -> Vec<ModelInfo> {
        let i = self.inner.lock().expect("inventory lock");
        i.models
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if i.loading.as_ref().is_some_and(|(n, _)| *n == m.name) {
                    m.state = Residency::Loaded;
                }
                m.load_ms = i.load_ms.get(&m.name).copied();
                m
            })
            .collect()
    }

    /// Replace what the studio listed; a load Baton started stays warm
    /// until the list shows it (or shows the studio idle without it).
    pub(crate) fn set(&self, models: Vec<ModelInfo>) {
        let mut i = self.inner.lock().expect("inventory lock");
        i.models = models;
        // Lists are read only while the studio is idle: a load still in
        // progress would be listed as loaded, or it ended without loading.
        i.loading = None;
    }

    /// Whether any of `names` is in memory here. Names the studio did not
    /// list, or a studio never asked, count as `Unknown` (treated as warm:
    /// routing as before it read inventories).
    pub fn residency(&self, names: &[String]) -> Residency {
        let i = self.inner.lock().expect("inventory lock");
        if i.loading
            .as_ref()
            .is_some_and(|(n, _)| names.iter().any(|x| x == n))
        {
            return Residency::Loaded;
        }
        let mut out = Residency::Unknown;
        for m in i.models.iter().filter(|m| names.contains(&m.name)) {
            match m.state {
                Residency::Loaded => return Residency::Loaded,
                Residency::Available => out = Residency::Available,
                Residency::Unknown => {}
            }
        }
        out
    }

    /// The expected load time of `name` here.
    pub fn load_time(&self, name: &str) -> Duration {
        let i = self.inner.lock().expect("inventory lock");
        i.load_ms
            .get(name)
            .map_or(DEFAULT_LOAD, |ms| Duration::from_secs_f64(ms / 1000.0))
    }

    /// Time left of a load Baton started of one of `names` (zero when none
    /// is loading, or it is overdue).
    pub fn loading_left(&self, names: &[String]) -> Duration {
        let i = self.inner.lock().expect("inventory lock");
        match &i.loading {
            Some((n, since)) if names.iter().any(|x| x == n) => {
                let total = i
                    .load_ms
                    .get(n)
                    .map_or(DEFAULT_LOAD, |ms| Duration::from_secs_f64(ms / 1000.0));
                total.saturating_sub(since.elapsed())
            }
            _ => Duration::ZERO,
        }
    }

    /// A request for `name` was sent here while it was not loaded.
    pub(crate) fn start_load(&self, name: &str) {
        let mut i = self.inner.lock().expect("inventory lock");
        i.loading = Some((name.to_string(), Instant::now()));
    }

    /// The first byte of an answer for `name` came after `ttft`, where a
    /// warm answer takes `usual_ms`: if it had to load, its load time is
    /// learned and it is loaded now. True when it was such a first answer
    /// (its TTFT says nothing about the studio's speed).
    pub(crate) fn first_byte(&self, name: &str, ttft: Duration, usual_ms: f64) -> bool {
        let mut i = self.inner.lock().expect("inventory lock");
        if i.loading.as_ref().is_none_or(|(n, _)| n != name) {
            return false;
        }
        i.loading = None;
        let extra = (ttft.as_secs_f64() * 1000.0 - usual_ms).max(0.0);
        let learned = i.load_ms.get(name).copied().unwrap_or(0.0);
        i.load_ms.insert(name.to_string(), ewma(learned, extra));
        mark(&mut i.models, name, Residency::Loaded);
        true
    }

    /// A load Baton asked for took `took`.
    pub(crate) fn loaded(&self, name: &str, took: Duration) {
        let mut i = self.inner.lock().expect("inventory lock");
        let learned = i.load_ms.get(name).copied().unwrap_or(0.0);
        i.load_ms
            .insert(name.to_string(), ewma(learned, took.as_secs_f64() * 1000.0));
        mark(&mut i.models, name, Residency::Loaded);
    }

    /// Baton unloaded `name`.
    pub(crate) fn unloaded(&self, name: &str) {
        let mut i = self.inner.lock().expect("inventory lock");
        if i.loading.as_ref().is_some_and(|(n, _)| n == name) {
            i.loading = None;
        }
        mark(&mut i.models, name, Residency::Available);
    }
}

fn mark(models: &mut [ModelInfo], name: &str, state: Residency) {
    if let Some(m) = models.iter_mut().find(|m| m.name == name) {
        m.state = state;
        if state == Residency::Available {
            m.expires_at = None;
        }
    }
}

/// Whether Baton can load and unload models on a studio of this kind.
pub fn can_load(kind: StudioKind) -> bool {
    matches!(kind, StudioKind::LmStudio | StudioKind::Ollama)
}

/// Why a kind offers no load button.
pub fn cannot_load_reason(kind: StudioKind) -> &'static str {
    match kind {
        StudioKind::LlamaCpp => {
            "llama.cpp's server serves the one model it was started with; restart it with another -m"
        }
        StudioKind::Vllm => "vLLM serves the model it was started with; restart it with another",
        StudioKind::Mlx => "mlx_lm loads whatever model a request names; there is no separate load",
        _ => "this kind of server has no API to load or unload models",
    }
}

/// Ask the studio for its inventory (while it is idle, or serves HTTP
/// concurrently: the caller's rule). `None` when it did not answer one.
pub(crate) async fn read(core: &Core, w: &WorkerEntry) -> Option<Vec<ModelInfo>> {
    let get = |path: &'static str| async move {
        match super::probe::fetch(core, w, Method::GET, path, Bytes::new(), LIST_TIMEOUT).await {
            Ok((s, body)) if s.is_success() => serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(|v| v.get("error").is_none()),
            _ => None,
        }
    };
    match w.cfg.kind {
        StudioKind::LmStudio => match get("/api/v1/models").await {
            Some(v) => parse_lmstudio_v1(&v),
            None => parse_lmstudio_v0(&get("/api/v0/models").await?),
        },
        StudioKind::Ollama => {
            let tags = get("/api/tags").await?;
            let ps = get("/api/ps").await.unwrap_or(Value::Null);
            parse_ollama(&tags, &ps)
        }
        StudioKind::LlamaCpp => {
            let list = get("/v1/models").await?;
            let props = get("/props").await.unwrap_or(Value::Null);
            let ctx = props
                .pointer("/default_generation_settings/n_ctx")
                .and_then(Value::as_u64);
            parse_openai(&list, Residency::Loaded, ctx)
        }
        StudioKind::Vllm => parse_openai(&get("/v1/models").await?, Residency::Loaded, None),
        // mlx_lm lists what it can load, and loads what a request names.
        StudioKind::Mlx => parse_openai(&get("/v1/models").await?, Residency::Available, None),
        StudioKind::Exo | StudioKind::Openai => {
            parse_openai(&get("/v1/models").await?, Residency::Unknown, None)
        }
    }
}

/// Read the inventory and keep it, when the studio answers one.
pub(crate) async fn refresh(core: &Core, w: &WorkerEntry) {
    if let Some(models) = read(core, w).await {
        w.inventory.set(models);
        // Which studios are warm decides where waiting requests go.
        core.pool.dispatch();
    }
}

fn field_u64(v: &Value, keys: &[&str]) -> Option<u64> {
    keys.iter()
        .find_map(|k| v.pointer(k).and_then(Value::as_u64))
}

/// LM Studio 0.4+: `{"models": [{"key", "size_bytes", "max_context_length",
/// "loaded_instances": [{"id", "config": {"context_length"}}]}]}`.
fn parse_lmstudio_v1(v: &Value) -> Option<Vec<ModelInfo>> {
    let models = v.get("models")?.as_array()?;
    models
        .iter()
        .filter(|m| m.get("type").and_then(Value::as_str) != Some("embedding"))
        .map(|m| {
            let instances = m.get("loaded_instances").and_then(Value::as_array);
            let first = instances.and_then(|i| i.first());
            Some(ModelInfo {
                name: m.get("key")?.as_str()?.to_string(),
                state: if first.is_some() {
                    Residency::Loaded
                } else {
                    Residency::Available
                },
                size_bytes: field_u64(m, &["/size_bytes"]),
                context_length: first
                    .and_then(|i| field_u64(i, &["/config/context_length"]))
                    .or_else(|| field_u64(m, &["/max_context_length"])),
                expires_at: None,
                load_ms: None,
            })
        })
        .collect()
}

/// LM Studio 0.3: `{"data": [{"id", "state": "loaded"|"not-loaded", ...}]}`.
fn parse_lmstudio_v0(v: &Value) -> Option<Vec<ModelInfo>> {
    let data = v.get("data")?.as_array()?;
    data.iter()
        .filter(|m| m.get("type").and_then(Value::as_str) != Some("embeddings"))
        .map(|m| {
            Some(ModelInfo {
                name: m.get("id")?.as_str()?.to_string(),
                state: match m.get("state").and_then(Value::as_str) {
                    Some("loaded") => Residency::Loaded,
                    Some(_) => Residency::Available,
                    None => Residency::Unknown,
                },
                size_bytes: None,
                context_length: field_u64(m, &["/loaded_context_length", "/max_context_length"]),
                expires_at: None,
                load_ms: None,
            })
        })
        .collect()
}

/// Ollama: `/api/tags` lists what is on disk, `/api/ps` what is in memory
/// (with its size in memory, context length and expiry).
fn parse_ollama(tags: &Value, ps: &Value) -> Option<Vec<ModelInfo>> {
    let name = |m: &Value| {
        m.get("name")
            .or_else(|| m.get("model"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let running: Vec<&Value> = ps
        .get("models")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    tags.get("models")?
        .as_array()?
        .iter()
        .map(|m| {
            let n = name(m)?;
            let live = running
                .iter()
                .find(|r| name(r).is_some_and(|rn| crate::studio::model_matches(&rn, &n)));
            Some(ModelInfo {
                state: if live.is_some() {
                    Residency::Loaded
                } else {
                    Residency::Available
                },
                size_bytes: live
                    .and_then(|r| field_u64(r, &["/size_vram", "/size"]))
                    .or_else(|| field_u64(m, &["/size"])),
                context_length: live.and_then(|r| field_u64(r, &["/context_length"])),
                expires_at: live
                    .and_then(|r| r.get("expires_at"))
                    .and_then(Value::as_str)
                    .map(str::to_string),
                load_ms: None,
                name: n,
            })
        })
        .collect()
}

/// An OpenAI list, every model in one state (vLLM adds `max_model_len`,
/// llama.cpp `meta.n_ctx_train` and `meta.size`).
fn parse_openai(v: &Value, state: Residency, ctx: Option<u64>) -> Option<Vec<ModelInfo>> {
    v.get("data")?
        .as_array()?
        .iter()
        .map(|m| {
            Some(ModelInfo {
                name: m.get("id")?.as_str()?.to_string(),
                state,
                size_bytes: field_u64(m, &["/meta/size"]),
                context_length: ctx
                    .or_else(|| field_u64(m, &["/max_model_len", "/meta/n_ctx_train"])),
                expires_at: None,
                load_ms: None,
            })
        })
        .collect()
}

/// Why a load or unload failed, with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// Load `model` on `w` through its kind's API; returns how long it took.
/// The caller keeps the studio free of other requests of Baton's own.
pub(crate) async fn load(core: &Core, w: &WorkerEntry, model: &str) -> Result<Duration, LoadError> {
    let (path, body) = match w.cfg.kind {
        StudioKind::LmStudio => ("/api/v1/models/load", json!({ "model": model })),
        // No prompt: Ollama loads the model and keeps it (a negative
        // keep_alive: until told otherwise).
        StudioKind::Ollama => ("/api/generate", json!({"model": model, "keep_alive": -1})),
        k => return Err(LoadError(cannot_load_reason(k).to_string())),
    };
    let t0 = Instant::now();
    call(core, w, path, body, model, "load").await?;
    let took = t0.elapsed();
    w.inventory.loaded(model, took);
    core.pool.dispatch();
    Ok(took)
}

/// Unload `model` from `w` through its kind's API.
pub(crate) async fn unload(core: &Core, w: &WorkerEntry, model: &str) -> Result<(), LoadError> {
    let (path, body) = match w.cfg.kind {
        StudioKind::LmStudio => ("/api/v1/models/unload", json!({ "instance_id": model })),
        StudioKind::Ollama => ("/api/generate", json!({"model": model, "keep_alive": 0})),
        k => return Err(LoadError(cannot_load_reason(k).to_string())),
    };
    call(core, w, path, body, model, "unload").await?;
    w.inventory.unloaded(model);
    core.pool.dispatch();
    Ok(())
}

async fn call(
    core: &Core,
    w: &WorkerEntry,
    path: &str,
    body: Value,
    model: &str,
    what: &str,
) -> Result<(), LoadError> {
    let (status, answer) = super::probe::fetch(
        core,
        w,
        Method::POST,
        path,
        Bytes::from(body.to_string()),
        LOAD_TIMEOUT,
    )
    .await
    .map_err(|(_, detail)| LoadError(format!("{}: {detail}", w.id())))?;
    if status.is_success() {
        return Ok(());
    }
    let said = serde_json::from_slice::<Value>(&answer)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&answer).chars().take(200).collect());
    let fix = if status == axum::http::StatusCode::NOT_FOUND {
        format!("check that {} has `{model}` (its Models list)", w.id())
    } else {
        "see the studio's own log".to_string()
    };
    Err(LoadError(format!(
        "{}: {what} of `{model}` answered {status}: {said}\n  fix: {fix}",
        w.id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kinds_inventory_says_what_is_loaded_and_what_is_only_available() {
        let v1 = json!({"models": [
            {"type": "llm", "key": "a", "size_bytes": 7, "max_context_length": 32768,
             "loaded_instances": [{"id": "a", "config": {"context_length": 4096}}]},
            {"type": "llm", "key": "b", "max_context_length": 8192, "loaded_instances": []},
            {"type": "embedding", "key": "e", "loaded_instances": []}]});
        let m = parse_lmstudio_v1(&v1).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].state, m[0].context_length, m[0].size_bytes),
            (Residency::Loaded, Some(4096), Some(7))
        );
        assert_eq!(
            (m[1].state, m[1].context_length),
            (Residency::Available, Some(8192))
        );

        let v0 = json!({"data": [{"id": "a", "state": "loaded", "max_context_length": 100},
                                 {"id": "b", "state": "not-loaded"}]});
        let m = parse_lmstudio_v0(&v0).unwrap();
        assert_eq!(m[0].state, Residency::Loaded);
        assert_eq!(m[1].state, Residency::Available);

        let tags = json!({"models": [{"name": "q:7b", "size": 5}, {"name": "l:8b", "size": 6}]});
        let ps = json!({"models": [{"name": "q:7b", "size_vram": 9, "context_length": 4096,
                                    "expires_at": "2030-01-01T00:00:00Z"}]});
        let m = parse_ollama(&tags, &ps).unwrap();
        assert_eq!(
            (m[0].state, m[0].size_bytes, m[0].expires_at.as_deref()),
            (Residency::Loaded, Some(9), Some("2030-01-01T00:00:00Z"))
        );
        assert_eq!(
            (m[1].state, m[1].size_bytes),
            (Residency::Available, Some(6))
        );

        let vllm = json!({"data": [{"id": "v", "max_model_len": 2048}]});
        let m = parse_openai(&vllm, Residency::Loaded, None).unwrap();
        assert_eq!(
            (m[0].state, m[0].context_length),
            (Residency::Loaded, Some(2048))
        );
    }

    #[test]
    fn a_load_baton_started_is_warm_until_its_first_byte_teaches_the_load_time() {
        let inv = Inventory::default();
        let info = |n: &str, state| ModelInfo {
            name: n.into(),
            state,
            size_bytes: None,
            context_length: None,
            expires_at: None,
            load_ms: None,
        };
        inv.set(vec![info("x", Residency::Available)]);
        let x = vec!["x".to_string()];
        assert_eq!(inv.residency(&x), Residency::Available);
        assert_eq!(inv.residency(&["other".into()]), Residency::Unknown);
        assert_eq!(inv.load_time("x"), DEFAULT_LOAD);
        inv.start_load("x");
        assert_eq!(inv.residency(&x), Residency::Loaded);
        assert!(inv.loading_left(&x) > Duration::from_secs(19));
        assert!(!inv.first_byte("y", Duration::from_secs(3), 100.0));
        assert!(inv.first_byte("x", Duration::from_millis(3100), 100.0));
        assert_eq!(inv.load_time("x"), Duration::from_secs(3));
        assert_eq!(inv.models()[0].state, Residency::Loaded);
        assert_eq!(inv.loading_left(&x), Duration::ZERO);
        inv.unloaded("x");
        assert_eq!(inv.residency(&x), Residency::Available);
    }
}
