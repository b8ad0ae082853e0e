//! One small handler per route; the engine is the state. Each handler
//! turns a request into one engine call and the answer into JSON.

use std::net::SocketAddr;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router, middleware};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::json::{Api, ApiError, JsonBody, bad_request};
use super::security::{self, Guard};
use super::{assets, sse};
use crate::bench::report::BenchResult;
use crate::discover::Found;
use crate::engine::{BatchRequest, BenchRequest, DiscoverRequest, Engine, EngineError};
use crate::preflight::Thresholds;

#[derive(Clone)]
pub(super) struct App {
    engine: Engine,
    stop: CancellationToken,
}

type St = State<App>;

pub(super) fn router(engine: Engine, guard: Guard, stop: CancellationToken) -> Router {
    let api = Router::new()
        .route("/api/state", get(state))
        .route("/api/balancer/start", post(balancer_start))
        .route("/api/balancer/stop", post(balancer_stop))
        .route("/api/balancer/listen", put(balancer_listen))
        .route("/api/workers", get(workers).post(worker_add))
        .route(
            "/api/workers/{id}",
            put(worker_update).delete(worker_remove),
        )
        .route("/api/workers/{id}/key", put(worker_key))
        .route("/api/workers/{id}/{action}", post(worker_action))
        .route("/api/models", get(models))
        .route("/api/models/{*action}", post(model_action))
        .route("/api/discover", post(discover))
        .route("/api/discover/add", post(discover_add))
        .route("/api/preflight", post(preflight))
        .route("/api/preflight/last", get(preflight_last))
        .route("/api/bench", post(bench))
        .route("/api/jobs", get(jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/cancel", post(job_cancel))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run).delete(run_delete))
        .route("/api/runs/{id}/charts", get(run_charts))
        .route("/api/runs/{id}/report.html", get(run_report))
        .route("/api/capacity", get(capacity))
        .route("/api/compare", get(compare))
        .route("/api/compare/chart", get(compare_chart))
        .route("/api/batch", get(batch_jobs).post(batch_start))
        .route("/api/batch/presets", get(batch_presets))
        .route("/api/batch/{id}", get(batch_job))
        .route("/api/batch/{id}/resume", post(batch_resume))
        .route("/api/batch/{id}/retry-failed", post(batch_retry))
        .route("/api/setup/simulated", post(setup_simulated))
        .route("/api/stats/history", get(stats_history))
        .route("/api/events", get(events))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found);
    api.layer(middleware::from_fn_with_state(guard, security::guard))
        .with_state(App { engine, stop })
}

/// Unknown paths: the API's JSON error under `/api/`, else the UI's files.
async fn not_found(method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        ApiError(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("no such API route: {method} {path}"),
                             "fix": "see docs/CONTROL_API.md for the routes", "code": "unknown_route"}}),
        )
        .into_response()
    } else {
        assets::serve(uri).await
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError(
        StatusCode::METHOD_NOT_ALLOWED,
        json!({"error": {"message": format!("{} does not take {method}", uri.path()),
                         "fix": "see docs/CONTROL_API.md for each route's methods", "code": "method_not_allowed"}}),
    )
}

fn accepted(job: u64) -> Response {
    (StatusCode::ACCEPTED, Json(json!({ "job": job }))).into_response()
}

async fn state(State(a): St) -> Json<crate::engine::EngineState> {
    Json(a.engine.state().await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Listen {
    listen: Option<SocketAddr>,
}

async fn balancer_start(State(a): St, JsonBody(l): JsonBody<Listen>) -> Api<Response> {
    if let Some(addr) = l.listen {
        a.engine.set_listen(addr).await?;
    }
    Ok(Json(a.engine.start_balancer().await?).into_response())
}

async fn balancer_stop(State(a): St) -> Response {
    Json(a.engine.stop_balancer().await).into_response()
}

async fn balancer_listen(State(a): St, JsonBody(l): JsonBody<Listen>) -> Api<Response> {
    let addr = l.listen.ok_or_else(|| {
        bad_request(
            "no `listen` address given",
            "send {\"listen\": \"127.0.0.1:8421\"} (or 0.0.0.0:8421 to serve the LAN)",
        )
    })?;
    Ok(Json(a.engine.set_listen(addr).await?).into_response())
}

async fn workers(State(a): St) -> Response {
    Json(a.engine.workers().await).into_response()
}

async fn worker_add(State(a): St, JsonBody(w): JsonBody<Value>) -> Api<Response> {
    let view = a.engine.add_worker(w).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn worker_update(
    State(a): St,
    Path(id): Path<String>,
    JsonBody(w): JsonBody<Value>,
) -> Api<Response> {
    Ok(Json(a.engine.update_worker(&id, w).await?).into_response())
}

async fn worker_remove(State(a): St, Path(id): Path<String>) -> Api<StatusCode> {
    a.engine.remove_worker(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn worker_action(State(a): St, Path((id, action)): Path<(String, String)>) -> Api<Response> {
    match action.as_str() {
        "enable" => {
            a.engine.set_enabled(&id, true).await?;
        }
        "disable" => {
            a.engine.set_enabled(&id, false).await?;
        }
        "drain" => a.engine.drain(&id, true).await?,
        "undrain" => a.engine.drain(&id, false).await?,
        other => {
            return Err(bad_request(
                &format!("unknown action `{other}`"),
                "use enable, disable, drain or undrain",
            ));
        }
    }
    let view = a
        .engine
        .workers()
        .await
        .into_iter()
        .find(|w| w.id == id)
        .ok_or_else(|| ApiError::from(EngineError::UnknownWorker(id)))?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    key: String,
}

async fn worker_key(
    State(a): St,
    Path(id): Path<String>,
    JsonBody(k): JsonBody<Key>,
) -> Api<StatusCode> {
    a.engine.set_worker_key(&id, &k.key).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn discover(State(a): St, JsonBody(req): JsonBody<DiscoverRequest>) -> Api<Response> {
    Ok(accepted(a.engine.start_discover(req)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Servers {
    servers: Vec<Found>,
}

async fn discover_add(State(a): St, JsonBody(s): JsonBody<Servers>) -> Api<Response> {
    let added = a.engine.add_found(&s.servers).await?;
    Ok(Json(json!({"added": added, "workers": a.engine.workers().await})).into_response())
}

async fn preflight(State(a): St, JsonBody(t): JsonBody<Thresholds>) -> Api<Response> {
    // An empty body reads as `{}`: every threshold at its default.
    Ok(accepted(a.engine.start_preflight(t)?))
}

async fn preflight_last(State(a): St) -> Api<Response> {
    match a.engine.last_preflight() {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": "no preflight has run yet", "fix": "run one"}}),
        )),
    }
}

async fn bench(State(a): St, JsonBody(req): JsonBody<BenchRequest>) -> Api<Response> {
    Ok(accepted(a.engine.start_bench(req)?))
}

async fn models(State(a): St) -> Json<crate::engine::ModelsView> {
    Json(a.engine.models().await)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ModelTarget {
    studio: Option<String>,
}

/// `POST /api/models/{model}/load|unload {studio}` and
/// `/api/models/{model}/warm`; a model name may hold `/` (LM Studio's keys
/// do), so the action is the path's last segment.
async fn model_action(
    State(a): St,
    Path(path): Path<String>,
    JsonBody(t): JsonBody<ModelTarget>,
) -> Api<Response> {
    use crate::engine::ModelAction;
    let Some((model, action)) = path.rsplit_once('/').filter(|(m, _)| !m.is_empty()) else {
        return Err(bad_request(
            &format!("`/api/models/{path}` names no action"),
            "POST /api/models/<model>/load, /unload or /warm",
        ));
    };
    let action = match action {
        "load" => ModelAction::Load,
        "unload" => ModelAction::Unload,
        "warm" => ModelAction::WarmUp,
        other => {
            return Err(bad_request(
                &format!("unknown action `{other}`"),
                "use load, unload or warm",
            ));
        }
    };
    Ok(accepted(
        a.engine.start_model_job(model, action, t.studio).await?,
    ))
}

async fn jobs(State(a): St) -> Response {
    Json(a.engine.jobs()).into_response()
}

async fn job(State(a): St, Path(id): Path<u64>) -> Api<Response> {
    Ok(Json(a.engine.job(id)?).into_response())
}

async fn job_cancel(State(a): St, Path(id): Path<u64>) -> Api<Response> {
    Ok(Json(a.engine.cancel(id)?).into_response())
}

async fn runs(State(a): St) -> Api<Response> {
    let mut runs = a.engine.store()?.list_runs()?;
    runs.reverse();
    Ok(Json(runs).into_response())
}

async fn run(State(a): St, Path(id): Path<i64>) -> Api<Response> {
    Ok(Json(a.engine.store()?.get_run(id)?).into_response())
}

async fn run_delete(State(a): St, Path(id): Path<i64>) -> Api<StatusCode> {
    a.engine.store()?.delete_run(id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A run's name in charts and tables: its label, else `run N`.
fn named(a: &App, id: i64) -> Api<(String, BenchResult)> {
    let store = a.engine.store()?;
    let result = store.get_run(id)?;
    let label = store
        .list_runs()?
        .into_iter()
        .find(|r| r.id == id)
        .and_then(|r| r.label)
        .unwrap_or_else(|| format!("run {id}"));
    Ok((label, result))
}

fn charts(runs: &[(String, BenchResult)]) -> Api<Vec<crate::chart::Rendered>> {
    let refs: Vec<(String, &BenchResult)> = runs.iter().map(|(n, r)| (n.clone(), r)).collect();
    crate::chart::render_all(&refs).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": format!("cannot draw the charts: {e}")}}),
        )
    })
}

async fn run_charts(State(a): St, Path(id): Path<i64>) -> Api<Response> {
    Ok(Json(charts(&[named(&a, id)?])?).into_response())
}

/// The pool's capacity on record (`null`: none for the pool as it is now).
async fn capacity(State(a): St) -> Api<Response> {
    Ok(Json(json!({ "record": a.engine.capacity_on_record()? })).into_response())
}

/// The run as `baton report` writes it, as a download.
async fn run_report(State(a): St, Path(id): Path<i64>) -> Api<Response> {
    let (name, result) = named(&a, id)?;
    let html = crate::bench::html::render(&name, &result).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": format!("cannot write the report: {e}")}}),
        )
    })?;
    Ok((
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/html; charset=utf-8".to_string(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"baton-run-{id}.html\""),
            ),
        ],
        html,
    )
        .into_response())
}

#[derive(Deserialize)]
struct RunIds {
    runs: String,
}

fn run_ids(q: &RunIds) -> Api<Vec<i64>> {
    let ids: Result<Vec<i64>, _> = q
        .runs
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<i64>())
        .collect();
    match ids {
        Ok(v) if v.len() >= 2 => Ok(v),
        _ => Err(bad_request(
            "compare needs two or more run ids",
            "e.g. /api/compare?runs=3,7",
        )),
    }
}

async fn compare(State(a): St, Query(q): Query<RunIds>) -> Api<Response> {
    let runs: Vec<(String, BenchResult)> = run_ids(&q)?
        .into_iter()
        .map(|id| named(&a, id))
        .collect::<Result<_, _>>()?;
    Ok(Json(crate::bench::compare::compare(&runs)).into_response())
}

async fn compare_chart(State(a): St, Query(q): Query<RunIds>) -> Api<Response> {
    let runs: Vec<(String, BenchResult)> = run_ids(&q)?
        .into_iter()
        .map(|id| named(&a, id))
        .collect::<Result<_, _>>()?;
    let chart = charts(&runs)?
        .into_iter()
        .find(|c| c.name == "throughput")
        .ok_or_else(|| {
            bad_request(
                "none of these runs has a concurrency sweep to compare",
                "compare runs made with --mode concurrency or both",
            )
        })?;
    Ok(Json(chart).into_response())
}

async fn batch_jobs(State(a): St) -> Api<Response> {
    Ok(Json(a.engine.store()?.list_batch_jobs()?).into_response())
}

async fn batch_presets() -> Api<Response> {
    let presets = crate::batch::presets::load(None).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": {"message": e.to_string()}}),
        )
    })?;
    let list: Vec<Value> = presets
        .into_iter()
        .map(|(name, p)| {
            json!({"name": name, "description": p.description,
                   "prompts": p.prompts.iter().map(|q| json!({"name": q.id, "title": q.title}))
                       .collect::<Vec<_>>()})
        })
        .collect();
    Ok(Json(list).into_response())
}

async fn batch_start(State(a): St, JsonBody(req): JsonBody<BatchRequest>) -> Api<Response> {
    Ok(accepted(a.engine.start_batch(req)?))
}

async fn batch_job(State(a): St, Path(id): Path<i64>) -> Api<Response> {
    let store = a.engine.store()?;
    let summary = store.batch_job_summary(id)?.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("no batch job {id}")}}),
        )
    })?;
    let failed = store.batch_failed_tasks(id)?;
    let mut v = serde_json::to_value(summary).expect("serializes");
    v["failed_tasks"] = serde_json::to_value(failed).expect("serializes");
    Ok(Json(v).into_response())
}

async fn batch_resume(State(a): St, Path(id): Path<i64>) -> Api<Response> {
    Ok(accepted(a.engine.start_batch(BatchRequest {
        resume: Some(id),
        ..Default::default()
    })?))
}

async fn batch_retry(State(a): St, Path(id): Path<i64>) -> Api<Response> {
    Ok(accepted(a.engine.start_batch(BatchRequest {
        retry_failed: Some(id),
        ..Default::default()
    })?))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Simulated {
    count: Option<usize>,
}

async fn setup_simulated(State(a): St, JsonBody(s): JsonBody<Simulated>) -> Api<Response> {
    let n = s.count.unwrap_or(crate::engine::DEFAULT_SIMULATED);
    Ok(Json(a.engine.use_simulated(n).await?).into_response())
}

async fn stats_history(State(a): St) -> Response {
    Json(json!({"step_ms": 1000, "samples": a.engine.stats_history()})).into_response()
}

async fn events(State(a): St, headers: HeaderMap) -> Response {
    sse::stream(&a.engine, &headers, a.stop.clone())
}
