//! What the balancer remembers of its studios across restarts: each
//! studio's learned limit and speed, kept in the store by address and
//! model. A restarted balancer (or app) starts a known studio where it was
//! last seen to run instead of slow-starting it again; traffic re-learns
//! whatever it now answers differently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::pool::Pool;
use super::worker::WorkerEntry;
use crate::store::{Store, StudioMemory};

/// How often what was learned is written down (only what changed); the
/// balancer's end writes the rest.
const SAVE_EVERY: Duration = Duration::from_secs(60);

/// A speed that moved less than this share is not worth a write.
const SPEED_CHANGE: f64 = 0.1;

type Key = (String, String);

pub(crate) struct Memory {
    path: PathBuf,
    /// What the store held at start, then what was last written.
    known: Mutex<HashMap<Key, StudioMemory>>,
}

impl Memory {
    /// Read what the store at `path` remembers; a store that cannot be
    /// read is a warning (the balancer then learns from scratch).
    pub(crate) fn open(path: &Path) -> Memory {
        let known = match Store::open(path).and_then(|s| s.studio_memories()) {
            Ok(all) => all
                .into_iter()
                .map(|m| ((m.address.clone(), m.model.clone()), m))
                .collect(),
            Err(e) => {
                tracing::warn!("studios' learned limits not recalled: {e}");
                HashMap::new()
            }
        };
        Memory {
            path: path.to_path_buf(),
            known: Mutex::new(known),
        }
    }

    /// Start `w` from what was learned of it before, if anything.
    pub(crate) fn recall(&self, w: &WorkerEntry) {
        let known = self.known.lock().expect("memory lock");
        if let Some(m) = known.get(&w.memory_key()) {
            w.recall(m);
            tracing::debug!(
                worker = w.id(),
                slots = m.slots,
                "starts from what it was last seen to run"
            );
        }
    }

    /// Write down what changed since the last write.
    pub(crate) fn save(&self, workers: &[Arc<WorkerEntry>]) {
        let changed: Vec<StudioMemory> = {
            let known = self.known.lock().expect("memory lock");
            workers
                .iter()
                .filter_map(|w| w.memory())
                .filter(|m| {
                    known
                        .get(&(m.address.clone(), m.model.clone()))
                        .is_none_or(|old| differs(old, m))
                })
                .collect()
        };
        if changed.is_empty() {
            return;
        }
        match Store::open(&self.path).and_then(|s| s.remember_studios(&changed)) {
            Ok(()) => {
                let mut known = self.known.lock().expect("memory lock");
                for m in changed {
                    known.insert((m.address.clone(), m.model.clone()), m);
                }
            }
            Err(e) => tracing::warn!("studios' learned limits not saved: {e}"),
        }
    }
}

/// Worth a write: another limit or a speed that moved.
fn differs(old: &StudioMemory, new: &StudioMemory) -> bool {
    let moved = |a: f64, b: f64| (a - b).abs() > a.abs().max(b.abs()) * SPEED_CHANGE;
    old.slots != new.slots
        || old.confirmed != new.confirmed
        || old.concurrent_http != new.concurrent_http
        || moved(old.ttft_ms, new.ttft_ms)
        || moved(old.tokens_per_second, new.tokens_per_second)
        || moved(old.latency_ms, new.latency_ms)
        || moved(old.prefill_per_second, new.prefill_per_second)
}

/// Write down what was learned now and then until `stop`.
pub(crate) async fn keep(memory: Arc<Memory>, pool: Arc<Pool>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SAVE_EVERY) => {}
        }
        let (memory, workers) = (memory.clone(), pool.workers());
        let _ = tokio::task::spawn_blocking(move || memory.save(&workers)).await;
    }
}
