//! Editing the workers file from the dashboard: every change is validated
//! by the workers-file loader itself (so its errors are the loader's
//! messages), written atomically (a crash leaves the old or the new file,
//! never half of one), then hot-reloaded into the running balancer.
//! Edits are serialized, so two at once both land and the file stays valid.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{Engine, EngineError, Pool, Source, WorkerView};
use crate::config::Config;
use crate::discover::Found;

impl Engine {
    /// Add a worker (a workers-file entry as JSON).
    pub async fn add_worker(&self, worker: Value) -> Result<WorkerView, EngineError> {
        let id = worker_id(&worker)?;
        self.edit(|workers| {
            workers.push(worker);
            Ok(())
        })
        .await?;
        self.view(&id).await
    }

    /// Replace a worker's entry (the id may change).
    pub async fn update_worker(&self, id: &str, worker: Value) -> Result<WorkerView, EngineError> {
        let new_id = worker_id(&worker)?;
        self.edit(|workers| {
            let i = position(workers, id)?;
            // The key stays where it was unless the edit says otherwise.
            let mut worker = worker;
            if let (Some(old), Some(obj)) =
                (workers[i].get("api_key").cloned(), worker.as_object_mut())
                && !obj.contains_key("api_key")
            {
                obj.insert("api_key".into(), old);
            }
            workers[i] = worker;
            Ok(())
        })
        .await?;
        self.view(&new_id).await
    }

    pub async fn remove_worker(&self, id: &str) -> Result<(), EngineError> {
        self.edit(|workers| {
            let i = position(workers, id)?;
            workers.remove(i);
            Ok(())
        })
        .await?;
        Ok(())
    }

    pub async fn set_enabled(&self, id: &str, enabled: bool) -> Result<WorkerView, EngineError> {
        self.edit(|workers| {
            let i = position(workers, id)?;
            let obj = workers[i].as_object_mut().expect("workers are objects");
            if enabled {
                obj.remove("enabled");
            } else {
                obj.insert("enabled".into(), false.into());
            }
            Ok(())
        })
        .await?;
        self.view(id).await
    }

    /// Store a worker's API key in the keychain (its own entry,
    /// `worker/<id>`, apart from Baton's own secrets) and reference it from
    /// the file. The key is never read back.
    pub async fn set_worker_key(&self, id: &str, key: &str) -> Result<(), EngineError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(EngineError::Invalid(
                "the API key is empty\n  fix: paste the key the studio's server expects".into(),
            ));
        }
        if let Some(own) = crate::secrets::Own::named(id) {
            return Err(EngineError::Invalid(format!(
                "the worker's id `{id}` is the name of Baton's own keychain entry ({}), so a key cannot be stored under it\n  fix: rename the worker (e.g. \"studio-{id}\"), then set its key",
                own.describe()
            )));
        }
        self.edit(|workers| {
            let i = position(workers, id)?;
            // Stored only once the worker is known to be in the file.
            crate::secrets::set_worker(id, key)?;
            workers[i]
                .as_object_mut()
                .expect("workers are objects")
                .insert("api_key".into(), serde_json::json!({ "keychain": id }));
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// Add discovered servers as workers (unique ids, nothing lost). On a
    /// first run this also starts the balancer: "Discover", then "Add all",
    /// is a working pool.
    pub async fn add_found(&self, found: &[Found]) -> Result<Vec<String>, EngineError> {
        let first_run = self.config_info().first_run;
        let mut added = Vec::new();
        self.edit(|workers| {
            added = crate::discover::add_found(workers, found);
            Ok(())
        })
        .await?;
        if first_run && !added.is_empty() {
            self.start_balancer().await?;
        }
        Ok(added)
    }

    /// Apply `change` to the workers in the file on disk, validate, write,
    /// reload. Every edit starts from the file as it is now (re-read under
    /// the edit lock), never from what is being served: simulated studios,
    /// or a configuration loaded before someone edited the file, must not
    /// replace what the file holds. A missing file starts empty; a broken
    /// one is reported and left alone.
    async fn edit(
        &self,
        change: impl FnOnce(&mut Vec<Value>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
        let _one_at_a_time = self.inner.edit.lock().await;
        let path = {
            let p = self.inner.pool.lock().expect("pool lock");
            match &p.source {
                Source::File(p) | Source::FirstRun(p) => Some(p.clone()),
                Source::Simulated { path } => path.clone(),
            }
        };
        let path: PathBuf = path.ok_or_else(|| {
            EngineError::Other(
                "no place for the workers file (no home directory)\n  fix: pass one with -c FILE"
                    .into(),
            )
        })?;
        let current = on_disk(&path)?;
        let mut root = current.to_json();
        let workers = root
            .get_mut("workers")
            .and_then(Value::as_array_mut)
            .expect("to_json writes a workers list");
        change(workers)?;
        let text = serde_json::to_string_pretty(&root).expect("JSON serializes") + "\n";
        // The loader's own validation and messages, and never a worker at
        // the address the balancer listens on now.
        let config = Config::parse(&text, &path)?;
        config.check_self_loop(self.balancer_status().listen, &[], &path)?;
        if let Some(dir) = path.parent() {
            // Left by a Baton killed mid-write; harmless if it fails.
            let _ = crate::files::remove_stale_temps(dir);
        }
        crate::files::write_atomic(&path, text.as_bytes()).map_err(|e| {
            EngineError::Other(format!(
                "cannot write {}: {e}\n  fix: check that the folder is writable",
                path.display()
            ))
        })?;
        self.replace_pool(
            Pool {
                config,
                source: Source::File(path),
                sims: Vec::new(),
            },
            false,
        )
        .await?;
        Ok(())
    }

    async fn view(&self, id: &str) -> Result<WorkerView, EngineError> {
        self.workers()
            .await
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| EngineError::UnknownWorker(id.to_string()))
    }
}

/// The workers file as it is on disk now; empty when there is none yet.
fn on_disk(path: &Path) -> Result<Config, EngineError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Config::parse(&text, path)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
        Err(e) => Err(EngineError::Other(format!(
            "cannot read {}: {e}\n  fix: check the file's permissions",
            path.display()
        ))),
    }
}

fn worker_id(worker: &Value) -> Result<String, EngineError> {
    worker
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            EngineError::Invalid(
                "the worker has no `id`\n  fix: give it a short name such as \"mac-studio-1\""
                    .into(),
            )
        })
}

fn position(workers: &[Value], id: &str) -> Result<usize, EngineError> {
    workers
        .iter()
        .position(|w| w.get("id").and_then(Value::as_str) == Some(id))
        .ok_or_else(|| EngineError::UnknownWorker(id.to_string()))
}
