//! Routes of a simulated studio: which endpoints each kind of server
//! answers, its identifying endpoints, and the `/sim/*` control plane.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::generation::wedge;
use super::openai::error;
use super::{Faults, ModelStatus, SimState, anthropic, ollama, openai};
use crate::studio::StudioKind;

type St = State<Arc<SimState>>;

pub(super) fn router(state: Arc<SimState>) -> Router {
    let kind = state.config.kind;
    let mut r = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/sim/stats", get(stats))
        .route("/sim/fault", get(get_fault).post(set_fault))
        .route("/sim/log", get(get_log).delete(clear_log))
        .route("/sim/log/clear", post(clear_log))
        .route("/sim/unload", post(unload))
        .route("/sim/models", get(sim_models));
    if state.config.serves_anthropic() {
        r = r.route("/v1/messages", post(anthropic::messages));
        // LM Studio and Ollama serve messages but not token counting.
        if !matches!(kind, StudioKind::LmStudio | StudioKind::Ollama) {
            r = r.route("/v1/messages/count_tokens", post(anthropic::count_tokens));
        }
    }
    r = match kind {
        StudioKind::LmStudio if state.config.lm_studio_v1 => r
            .route("/api/v1/models", get(lmstudio_v1_models))
            .route("/api/v1/models/load", post(lmstudio_load))
            .route("/api/v1/models/unload", post(lmstudio_unload))
            .route("/api/v0/models", get(lmstudio_models))
            .route("/api/v0/chat/completions", post(openai::lmstudio_chat))
            .route("/api/v0/completions", post(openai::lmstudio_completions))
            .route("/api/v0/embeddings", post(openai::embeddings)),
        StudioKind::LmStudio => r
            .route("/api/v0/models", get(lmstudio_models))
            .route("/api/v0/chat/completions", post(openai::lmstudio_chat))
            .route("/api/v0/completions", post(openai::lmstudio_completions))
            .route("/api/v0/embeddings", post(openai::embeddings)),
        StudioKind::Ollama => r
            .route("/", get(|| async { "Ollama is running" }))
            .route("/api/tags", get(ollama::tags))
            .route("/api/ps", get(ollama::ps))
            .route("/api/show", post(ollama::show))
            .route("/api/chat", post(ollama::chat))
            .route("/api/generate", post(ollama::generate_text))
            .route("/api/embed", post(ollama::embed))
            .route("/api/embeddings", post(ollama::embeddings))
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
    let lm = kind == StudioKind::LmStudio;
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

async fn models(State(s): St) -> Json<Value> {
    wedge(&s).await;
    let data: Vec<Value> = s
        .models
        .snapshot()
        .iter()
        .map(|m| {
            let mut v = json!({"id": m.name, "object": "model", "owned_by": "organization_owner"});
            // What each server adds to OpenAI's list.
            match s.config.kind {
                StudioKind::Vllm => v["max_model_len"] = m.context_length.into(),
                StudioKind::LlamaCpp => {
                    v["meta"] = json!({"n_ctx_train": m.context_length, "size": m.size_bytes})
                }
                _ => {}
            }
            v
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// LM Studio 0.3's `/api/v0/models`: every model with `state`.
async fn lmstudio_models(State(s): St) -> Json<Value> {
    wedge(&s).await;
    let data: Vec<Value> = s
        .models
        .snapshot()
        .iter()
        .map(|m| {
            let state = if m.status == ModelStatus::Loaded {
                "loaded"
            } else {
                "not-loaded"
            };
            json!({"id": m.name, "object": "model", "type": "llm", "publisher": "baton-sim",
                   "arch": "llama", "compatibility_type": "gguf", "quantization": "Q4_K_M",
                   "state": state, "max_context_length": m.context_length})
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// Context length LM Studio loads models with unless told otherwise.
const LM_STUDIO_CONTEXT: u32 = 4096;

/// LM Studio 0.4's `/api/v1/models`: every model, with its loaded instances.
async fn lmstudio_v1_models(State(s): St) -> Json<Value> {
    wedge(&s).await;
    let models: Vec<Value> = s
        .models
        .snapshot()
        .iter()
        .map(|m| {
            let instances: Vec<Value> = if m.status == ModelStatus::Loaded {
                vec![json!({"id": m.name, "config": {"context_length": LM_STUDIO_CONTEXT}})]
            } else {
                Vec::new()
            };
            json!({"type": "llm", "publisher": "baton-sim", "key": m.name,
                   "display_name": m.name, "architecture": "llama",
                   "quantization": {"name": "Q4_K_M", "bits_per_weight": 4},
                   "size_bytes": m.size_bytes, "params_string": "7B",
                   "loaded_instances": instances, "max_context_length": m.context_length,
                   "format": "gguf",
                   "capabilities": {"vision": false, "trained_for_tool_use": false},
                   "description": null})
        })
        .collect();
    Json(json!({ "models": models }))
}

fn lmstudio_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(
            json!({"error": {"message": message, "type": "invalid_request_error",
                              "code": "model_not_found"}}),
        ),
    )
        .into_response()
}

/// `POST /api/v1/models/load {model}`: answers once the model is loaded.
async fn lmstudio_load(State(s): St, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(name) = v.get("model").and_then(Value::as_str) else {
        return lmstudio_error(StatusCode::BAD_REQUEST, "`model` is required");
    };
    let Some(i) = s.models.index(name) else {
        return lmstudio_error(StatusCode::NOT_FOUND, &format!("Model not found: {name}"));
    };
    let t0 = std::time::Instant::now();
    if s.models.load(i, None).await {
        s.counters.loads.fetch_add(1, Ordering::Relaxed);
    }
    let context = v
        .pointer("/config/context_length")
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(LM_STUDIO_CONTEXT));
    Json(json!({"model_instance_id": s.models.spec(i).name,
                "config": {"context_length": context},
                "load_time_seconds": t0.elapsed().as_secs_f64()}))
    .into_response()
}

/// `POST /api/v1/models/unload {instance_id}`.
async fn lmstudio_unload(State(s): St, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Some(id) = v.get("instance_id").and_then(Value::as_str) else {
        return lmstudio_error(StatusCode::BAD_REQUEST, "`instance_id` is required");
    };
    match s.models.index(id) {
        Some(i) if s.models.unload(i) => Json(json!({ "instance_id": id })).into_response(),
        _ => lmstudio_error(
            StatusCode::NOT_FOUND,
            &format!("No loaded model instance with id {id}"),
        ),
    }
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
    s.metrics.render(&s.config.models[0], st.active, st.queued)
}

async fn stats(State(s): St) -> Json<super::SimStats> {
    Json(s.counters.snapshot())
}

async fn get_fault(State(s): St) -> Json<Faults> {
    Json(s.faults())
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
    s.set_faults(stored);
    Json(faults).into_response()
}

async fn get_log(State(s): St) -> Json<Vec<super::LogEntry>> {
    Json(s.log.entries())
}

async fn clear_log(State(s): St) -> StatusCode {
    s.log.clear();
    StatusCode::NO_CONTENT
}

async fn unload(State(s): St) -> Json<Value> {
    s.models.unload_all();
    Json(json!({"unloaded": true}))
}

async fn sim_models(State(s): St) -> Json<Vec<super::SimModel>> {
    Json(s.models.snapshot())
}
