//! Whether the model is loaded: real servers load on first use (LM Studio's
//! JIT loading, Ollama) and unload after idling, and the first request pays
//! for the load.

use std::time::Duration;

use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Unloaded,
    Loading,
    Loaded,
}

pub(super) struct ModelLoad {
    state: watch::Sender<State>,
}

impl ModelLoad {
    pub(super) fn new(loaded: bool) -> ModelLoad {
        ModelLoad {
            state: watch::channel(if loaded {
                State::Loaded
            } else {
                State::Unloaded
            })
            .0,
        }
    }

    pub(super) fn is_loading(&self) -> bool {
        *self.state.borrow() == State::Loading
    }

    pub(super) fn is_loaded(&self) -> bool {
        *self.state.borrow() == State::Loaded
    }

    pub(super) fn unload(&self) {
        self.state.send_replace(State::Unloaded);
    }

    /// Wait until the model is loaded, starting a load of `took` if none is
    /// under way. Returns whether this call started one. The load runs on
    /// its own task, so a client that gives up does not leave it half done.
    pub(super) async fn ensure_loaded(&self, took: Duration) -> bool {
        let mut rx = self.state.subscribe();
        let mut started = false;
        loop {
            let mut start_now = false;
            self.state.send_if_modified(|s| {
                start_now = *s == State::Unloaded;
                if start_now {
                    *s = State::Loading;
                }
                start_now
            });
            if start_now {
                started = true;
                let tx = self.state.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(took).await;
                    // An unload during the load wins: the next request loads again.
                    tx.send_if_modified(|s| {
                        let done = *s == State::Loading;
                        if done {
                            *s = State::Loaded;
                        }
                        done
                    });
                });
            }
            match rx.wait_for(|s| *s != State::Loading).await {
                Ok(s) if *s == State::Loaded => return started,
                Ok(_) => continue, // unloaded meanwhile: load again
                Err(_) => return started,
            }
        }
    }
}
