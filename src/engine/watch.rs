//! While the balancer runs: every change of a studio's state goes on the
//! bus as it happens, and the live figures when they change while a view
//! shows them (with none, nothing ticks here: see `live`).
//!
//! The balancer announces each transition on its own channel (see
//! `balancer::state`), so a studio that goes ready -> ejected -> ready
//! between two looks is two events here, not none: the dashboard, the
//! notifications and the tray see every one.

use std::sync::Arc;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::events::Event;
use super::{Engine, Inner, live};
use crate::balancer::{self, Transition};

/// Follow `transitions` and the figures until `stop`.
pub(super) async fn watch(
    inner: Arc<Inner>,
    mut transitions: broadcast::Receiver<Transition>,
    stats: balancer::StatsSource,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(live::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut viewers = inner.live.viewers();
    let mut watching = *viewers.borrow_and_update() > 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick(), if watching => {}
            Ok(()) = viewers.changed() => {
                let now = *viewers.borrow_and_update() > 0;
                if now && !watching {
                    inner.live.resume();
                    tick.reset();
                }
                watching = now;
            }
            t = transitions.recv() => match t {
                Ok(t) => {
                    publish(&inner, t);
                    // The rest of a burst, before one look at the figures.
                    while let Ok(t) = transitions.try_recv() {
                        publish(&inner, t);
                    }
                }
                // Fell behind (hundreds of changes at once): what was
                // missed is told as the whole list of studios instead.
                Err(RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "state changes came faster than they were shown");
                    Engine { inner: inner.clone() }.publish_workers().await;
                }
                Err(RecvError::Closed) => return,
            },
        }
        if !watching {
            continue;
        }
        if let Some(s) = inner.live.observe(&stats.snapshot()) {
            inner.bus.publish(Event::Stats(s));
        }
    }
}

fn publish(inner: &Inner, t: Transition) {
    inner.bus.publish(Event::WorkerState {
        id: t.id,
        state: t.to,
        previous: t.from,
        reason: t.reason,
        detail: t.detail,
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{Engine, Options, WorkerStatus};
    use super::Event;
    use crate::balancer::State;

    async fn engine(dir: &std::path::Path) -> Engine {
        let engine = Engine::open(Options {
            config_path: Some(dir.join("workers.json")),
            simulate: Some(1),
            store_path: Some(dir.join("history.db")),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Options::default()
        })
        .await
        .unwrap();
        engine.start_balancer().await.unwrap();
        for _ in 0..500 {
            if engine.workers().await[0].status == WorkerStatus::Ready {
                return engine;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the simulated studio never became ready");
    }

    /// A studio drained and put back at once (ready -> draining -> ready)
    /// ends where it started: a look at the states now and then would see
    /// no change at all. The event stream has both.
    #[tokio::test(flavor = "current_thread")]
    async fn a_quick_change_and_back_reaches_the_event_stream_as_two_events() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine(dir.path()).await;
        let id = engine.workers().await[0].id.clone();
        let (mut events, _) = engine.subscribe(None);
        engine.drain(&id, true).await.unwrap();
        engine.drain(&id, false).await.unwrap();
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.len() < 2 {
            let n = tokio::time::timeout_at(deadline, events.recv())
                .await
                .expect("both changes reached the event stream")
                .unwrap();
            if let Event::WorkerState {
                id: of,
                previous,
                state,
                ..
            } = n.event
            {
                assert_eq!(of, id);
                seen.push((previous, state));
            }
        }
        assert_eq!(
            seen,
            [
                (State::Ready, State::Draining),
                (State::Draining, State::Ready)
            ]
        );
        engine.shutdown().await;
    }
}
