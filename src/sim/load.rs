//! What the studio has in memory, model by model. Real servers list more
//! models than they hold: LM Studio and Ollama load a listed model on first
//! use (just in time) and may unload another to make room; mlx_lm replaces
//! the one it holds. So each model is unloaded, loading or loaded; the
//! first request for an unloaded one pays its load time; a load past the
//! memory budget unloads the least recently used idle models first, and
//! waits for busy ones to finish before it unloads them too (as Ollama's
//! scheduler does).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tokio::sync::watch;

/// One model the studio can serve.
#[derive(Clone, Debug)]
pub(super) struct Spec {
    pub name: String,
    pub size_bytes: u64,
    pub load: Duration,
    pub context_length: u32,
}

/// A model's state, as the servers' own APIs word it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Unloaded,
    Loading,
    Loaded,
}

/// One model as `GET /sim/models` shows it (and the inventories use).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimModel {
    pub name: String,
    pub status: Status,
    pub size_bytes: u64,
    pub context_length: u32,
    pub load_ms: u64,
    /// Loads of it so far.
    pub loads: u64,
    /// Generations using it now.
    pub active: u32,
    /// When an idle loaded model is unloaded (Ollama's `keep_alive`);
    /// `None`: never.
    #[serde(skip)]
    pub expires_at: Option<SystemTime>,
}

struct Held {
    status: Status,
    last_used: Instant,
    active: u32,
    loads: u64,
    /// Unload after this long idle; `None`: keep.
    keep_alive: Option<Duration>,
}

pub(super) struct Models {
    specs: Vec<Spec>,
    budget: Option<u64>,
    held: Mutex<Vec<Held>>,
    /// Bumped on every change, so waiting loads look again.
    changed: watch::Sender<u64>,
}

/// A generation's hold on its model: while it lives the model is busy and
/// is not unloaded to make room.
pub(super) struct InUse {
    models: Arc<Models>,
    index: usize,
}

impl Drop for InUse {
    fn drop(&mut self) {
        {
            let mut held = self.models.held.lock().expect("models lock");
            let h = &mut held[self.index];
            h.active = h.active.saturating_sub(1);
            h.last_used = Instant::now();
        }
        self.models.changed.send_modify(|n| *n += 1);
    }
}

/// Names match with or without Ollama's default `:latest` tag.
fn base(n: &str) -> &str {
    n.strip_suffix(":latest").unwrap_or(n)
}

impl Models {
    /// `loaded[i]`: whether `specs[i]` is in memory at start; `keep_alive`:
    /// how long an idle model stays (`None`: until unloaded).
    pub(super) fn new(
        specs: Vec<Spec>,
        loaded: &[bool],
        budget: Option<u64>,
        keep_alive: Option<Duration>,
    ) -> Arc<Models> {
        let now = Instant::now();
        let held = specs
            .iter()
            .enumerate()
            .map(|(i, _)| Held {
                status: if loaded.get(i).copied().unwrap_or(false) {
                    Status::Loaded
                } else {
                    Status::Unloaded
                },
                last_used: now,
                active: 0,
                loads: 0,
                keep_alive,
            })
            .collect();
        Arc::new(Models {
            specs,
            budget,
            held: Mutex::new(held),
            changed: watch::channel(0).0,
        })
    }

    pub(super) fn index(&self, name: &str) -> Option<usize> {
        self.specs.iter().position(|s| base(&s.name) == base(name))
    }

    pub(super) fn spec(&self, i: usize) -> &Spec {
        &self.specs[i]
    }

    pub(super) fn is_loading_any(&self) -> bool {
        self.held
            .lock()
            .expect("models lock")
            .iter()
            .any(|h| h.status == Status::Loading)
    }

    /// Every model with its state now.
    pub(super) fn snapshot(&self) -> Vec<SimModel> {
        let mut held = self.held.lock().expect("models lock");
        expire(&mut held);
        let now = (Instant::now(), SystemTime::now());
        self.specs
            .iter()
            .zip(held.iter())
            .map(|(s, h)| SimModel {
                name: s.name.clone(),
                status: h.status,
                size_bytes: s.size_bytes,
                context_length: s.context_length,
                load_ms: s.load.as_millis() as u64,
                loads: h.loads,
                active: h.active,
                expires_at: h
                    .keep_alive
                    .map(|k| now.1 + (h.last_used + k).saturating_duration_since(now.0)),
            })
            .collect()
    }

    /// Serve a generation with model `i`: load it first if needed (making
    /// room), and hold it until the returned guard drops. Also returns
    /// whether this call started a load.
    pub(super) async fn use_model(self: &Arc<Self>, i: usize) -> (InUse, bool) {
        let started = self.ensure(i, true).await;
        (
            InUse {
                models: self.clone(),
                index: i,
            },
            started,
        )
    }

    /// Load model `i` (an explicit load through the server's API); returns
    /// whether this call started the load.
    pub(super) async fn load(
        self: &Arc<Self>,
        i: usize,
        keep_alive: Option<Option<Duration>>,
    ) -> bool {
        if let Some(k) = keep_alive {
            self.held.lock().expect("models lock")[i].keep_alive = k;
        }
        let started = self.ensure(i, false).await;
        self.held.lock().expect("models lock")[i].last_used = Instant::now();
        started
    }

    /// Unload model `i` (a load under way is abandoned: the next request
    /// loads it again). Generations already running on it finish.
    pub(super) fn unload(&self, i: usize) -> bool {
        let was = {
            let mut held = self.held.lock().expect("models lock");
            std::mem::replace(&mut held[i].status, Status::Unloaded)
        };
        self.changed.send_modify(|n| *n += 1);
        was != Status::Unloaded
    }

    pub(super) fn unload_all(&self) {
        for i in 0..self.specs.len() {
            self.unload(i);
        }
    }

    /// Wait until model `i` is loaded (starting its load when there is
    /// room, unloading idle models to make it), and with `hold` count one
    /// more generation using it, in the same look.
    async fn ensure(self: &Arc<Self>, i: usize, hold: bool) -> bool {
        let mut rx = self.changed.subscribe();
        let mut started = false;
        loop {
            rx.borrow_and_update();
            let start_load = {
                let mut held = self.held.lock().expect("models lock");
                expire(&mut held);
                match held[i].status {
                    Status::Loaded => {
                        if hold {
                            held[i].active += 1;
                        }
                        held[i].last_used = Instant::now();
                        return started;
                    }
                    Status::Loading => false,
                    Status::Unloaded => {
                        if self.make_room(&mut held, i) {
                            held[i].status = Status::Loading;
                            held[i].loads += 1;
                            true
                        } else {
                            false
                        }
                    }
                }
            };
            if start_load {
                started = true;
                self.changed.send_modify(|n| *n += 1);
                let me = self.clone();
                // On its own task, so a client that gives up does not
                // leave the load half done.
                tokio::spawn(async move {
                    tokio::time::sleep(me.specs[i].load).await;
                    let done = {
                        let mut held = me.held.lock().expect("models lock");
                        // An unload during the load wins.
                        let done = held[i].status == Status::Loading;
                        if done {
                            held[i].status = Status::Loaded;
                            held[i].last_used = Instant::now();
                        }
                        done
                    };
                    if done {
                        me.changed.send_modify(|n| *n += 1);
                    }
                });
                continue;
            }
            if rx.changed().await.is_err() {
                return started;
            }
        }
    }

    /// Free memory for model `i` within the budget: unload idle models,
    /// least recently used first. False when busy ones hold too much (the
    /// load waits for them).
    fn make_room(&self, held: &mut [Held], i: usize) -> bool {
        let Some(budget) = self.budget else {
            return true;
        };
        let used = |held: &[Held]| -> u64 {
            held.iter()
                .zip(&self.specs)
                .filter(|(h, _)| h.status != Status::Unloaded)
                .map(|(_, s)| s.size_bytes)
                .sum()
        };
        let need = self.specs[i].size_bytes;
        while used(held) + need > budget {
            let victim = held
                .iter()
                .enumerate()
                .filter(|(j, h)| *j != i && h.status == Status::Loaded && h.active == 0)
                .min_by_key(|(_, h)| h.last_used)
                .map(|(j, _)| j);
            match victim {
                Some(j) => held[j].status = Status::Unloaded,
                // Only busy (or loading) models left: wait for them, unless
                // nothing else is loaded at all (a model larger than the
                // budget still loads, alone).
                None => return used(held) == 0,
            }
        }
        true
    }
}

/// Idle models past their keep-alive are unloaded.
fn expire(held: &mut [Held]) {
    let now = Instant::now();
    for h in held.iter_mut() {
        if h.status == Status::Loaded
            && h.active == 0
            && h.keep_alive
                .is_some_and(|k| now.duration_since(h.last_used) > k)
        {
            h.status = Status::Unloaded;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, load_ms: u64) -> Spec {
        Spec {
            name: name.into(),
            size_bytes: 4,
            load: Duration::from_millis(load_ms),
            context_length: 4096,
        }
    }

    fn status(m: &Models) -> Vec<Status> {
        m.snapshot().into_iter().map(|s| s.status).collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_load_past_the_budget_unloads_the_idle_model_used_longest_ago() {
        let m = Models::new(
            vec![spec("a", 10), spec("b", 10), spec("c", 20)],
            &[true, true, false],
            Some(8),
            None,
        );
        // `b` was used last; `a` goes.
        drop(m.use_model(1).await);
        let (_c, started) = m.use_model(2).await;
        assert!(started);
        assert_eq!(
            status(&m),
            [Status::Unloaded, Status::Loaded, Status::Loaded]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_load_waits_for_the_busy_model_it_must_unload() {
        let m = Models::new(
            vec![spec("a", 10), spec("b", 30)],
            &[true, false],
            Some(4),
            None,
        );
        let (busy, _) = m.use_model(0).await;
        let m2 = m.clone();
        let t0 = tokio::time::Instant::now();
        let load = tokio::spawn(async move { m2.use_model(1).await.1 });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(status(&m), [Status::Loaded, Status::Unloaded], "it waits");
        drop(busy);
        assert!(load.await.unwrap(), "then it loads");
        assert_eq!(status(&m), [Status::Unloaded, Status::Loaded]);
        assert!(t0.elapsed() >= Duration::from_millis(130));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_arriving_during_a_load_wait_for_that_one_load() {
        let m = Models::new(vec![spec("a", 50)], &[false], None, None);
        let (m1, m2) = (m.clone(), m.clone());
        let a = tokio::spawn(async move { m1.use_model(0).await.1 });
        let b = tokio::spawn(async move { m2.use_model(0).await.1 });
        let started = [a.await.unwrap(), b.await.unwrap()];
        assert_eq!(started.iter().filter(|s| **s).count(), 1);
        assert_eq!(m.snapshot()[0].loads, 1);
    }
}
