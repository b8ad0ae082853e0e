//! Models across the pool, as the dashboard's Models view and the control
//! API show them (per model: loaded where, available where, context
//! length), and loading or unloading them as jobs.

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::jobs::{JobError, JobId, JobKind, JobResult, JobUpdate};
use super::{Engine, EngineError};
use crate::balancer::{self, ModelInfo, Residency};
use crate::studio::StudioKind;

/// One model over the pool.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PoolModel {
    pub name: String,
    /// Studios with it in memory.
    pub loaded_on: Vec<String>,
    /// Studios that have it but would load it first.
    pub available_on: Vec<String>,
    /// Studios that serve it without saying whether it is loaded.
    pub served_by: Vec<String>,
    /// The largest context length a studio reports for it.
    pub context_length: Option<u64>,
    pub size_bytes: Option<u64>,
}

/// One studio's models, and whether Baton can load and unload there.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StudioModels {
    pub id: String,
    pub kind: StudioKind,
    pub can_load: bool,
    /// Why there is no load button, when there is none.
    pub cannot_load: Option<String>,
    pub models: Vec<ModelInfo>,
}

/// `GET /api/models`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct ModelsView {
    pub models: Vec<PoolModel>,
    pub studios: Vec<StudioModels>,
}

/// What to do with a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelAction {
    Load,
    Unload,
    /// Load it on every studio that has it available and can load.
    WarmUp,
}

/// One studio's part of a model job.
#[skip_serializing_none]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelStep {
    pub studio: String,
    pub ok: bool,
    /// How long a load took.
    pub took_ms: Option<u64>,
    pub error: Option<String>,
}

/// What a model job did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelOutcome {
    pub model: String,
    pub action: ModelAction,
    pub steps: Vec<ModelStep>,
}

impl Engine {
    /// Every model of the running balancer's studios, and each studio's.
    pub async fn models(&self) -> ModelsView {
        let config = self.config();
        let mut view = ModelsView::default();
        for w in self.workers().await {
            let Some(live) = w.live else { continue };
            let kind = config
                .workers
                .iter()
                .find(|c| c.id == w.id)
                .map_or(w.kind, |c| c.kind);
            for m in &live.inventory {
                let i = match view.models.iter().position(|p| p.name == m.name) {
                    Some(i) => i,
                    None => {
                        view.models.push(PoolModel {
                            name: m.name.clone(),
                            loaded_on: vec![],
                            available_on: vec![],
                            served_by: vec![],
                            context_length: None,
                            size_bytes: None,
                        });
                        view.models.len() - 1
                    }
                };
                let p = &mut view.models[i];
                match m.state {
                    Residency::Loaded => p.loaded_on.push(w.id.clone()),
                    Residency::Available => p.available_on.push(w.id.clone()),
                    Residency::Unknown => p.served_by.push(w.id.clone()),
                }
                p.context_length = p.context_length.max(m.context_length);
                p.size_bytes = p.size_bytes.or(m.size_bytes);
            }
            let can = balancer::can_load(kind);
            view.studios.push(StudioModels {
                id: w.id.clone(),
                kind,
                can_load: can,
                cannot_load: (!can).then(|| balancer::cannot_load_reason(kind).to_string()),
                models: live.inventory,
            });
        }
        view.models.sort_by(|a, b| a.name.cmp(&b.name));
        view
    }

    /// Load or unload `model` on `studio`, or warm it up over the pool, as
    /// a job: one step per studio, with its time or its error.
    pub async fn start_model_job(
        &self,
        model: &str,
        action: ModelAction,
        studio: Option<String>,
    ) -> Result<JobId, EngineError> {
        let handle = match &*self.inner.running.lock().await {
            Some(r) => r.balancer.models(),
            None => {
                return Err(EngineError::Invalid(
                    "the balancer is not running, so no studio can be asked\n  fix: start the balancer first".into(),
                ));
            }
        };
        let view = self.models().await;
        let studios: Vec<String> = match (action, studio) {
            (ModelAction::WarmUp, _) => view
                .studios
                .iter()
                .filter(|s| {
                    s.can_load
                        && s.models
                            .iter()
                            .any(|m| m.name == model && m.state == Residency::Available)
                })
                .map(|s| s.id.clone())
                .collect(),
            (_, Some(s)) => {
                let Some(st) = view.studios.iter().find(|x| x.id == s) else {
                    return Err(EngineError::UnknownWorker(s));
                };
                if let Some(why) = &st.cannot_load {
                    return Err(EngineError::Invalid(format!(
                        "{s} cannot load or unload models from Baton: {why}\n  fix: do it on the studio itself"
                    )));
                }
                vec![s]
            }
            (_, None) => {
                return Err(EngineError::Invalid(
                    "no studio given\n  fix: send {\"studio\": \"<id>\"} (or use warm to load it on every studio that has it)".into(),
                ));
            }
        };
        if studios.is_empty() {
            return Err(EngineError::Invalid(format!(
                "no studio has `{model}` available to load (or it is loaded everywhere already)\n  fix: see GET /api/models"
            )));
        }
        let r = self.begin(JobKind::Models)?;
        let id = r.id;
        let model = model.to_string();
        let engine = self.clone();
        tokio::spawn(async move {
            let total = studios.len() as u64;
            let (mut ok, mut failed) = (0, 0);
            // All at once: each studio loads from its own disk.
            let runs = studios.iter().map(|s| {
                let (handle, model) = (handle.clone(), model.clone());
                async move {
                    let (took, error) = match action {
                        ModelAction::Unload => match handle.unload(s, &model).await {
                            Ok(()) => (None, None),
                            Err(e) => (None, Some(e.to_string())),
                        },
                        _ => match handle.load(s, &model).await {
                            Ok(t) => (Some(t.as_millis() as u64), None),
                            Err(e) => (None, Some(e.to_string())),
                        },
                    };
                    ModelStep {
                        studio: s.clone(),
                        ok: error.is_none(),
                        took_ms: took,
                        error,
                    }
                }
            });
            let steps = tokio::select! {
                s = futures_util::future::join_all(runs) => s,
                _ = r.cancel.cancelled() => { r.send(JobUpdate::Cancelled); return; }
            };
            for s in &steps {
                if s.ok {
                    ok += 1;
                } else {
                    failed += 1;
                }
                r.send(JobUpdate::Progress {
                    done: ok + failed,
                    total: Some(total),
                    ok,
                    failed,
                    label: Some(s.studio.clone()),
                });
            }
            engine.publish_workers().await;
            if ok == 0 {
                let first = steps
                    .iter()
                    .find_map(|s| s.error.clone())
                    .unwrap_or_default();
                r.fail(JobError::from_text(&first));
            } else {
                r.finish(JobResult::Models(ModelOutcome {
                    model,
                    action,
                    steps,
                }));
            }
        });
        Ok(id)
    }
}
