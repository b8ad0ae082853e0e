//! The app's one subscriber of the engine's events: it keeps the tray's
//! model current and turns studio state changes into notifications.

use std::time::Duration;

use baton::engine::events::Event;
use tauri::{AppHandle, Manager};
use tokio::sync::broadcast::error::RecvError;

use crate::shell::Shell;
use crate::{notify, tray};

pub fn spawn(app: AppHandle) {
    tauri::async_runtime::spawn(run(app));
}

async fn run(app: AppHandle) {
    let engine = app.state::<Shell>().engine.clone();
    // Subscribed before loading, so nothing between the two is missed
    // (an event applied on top of the state it is already in changes nothing).
    let (mut events, _) = engine.subscribe(None);
    let mut model = tray::Model::load(&engine).await;
    let mut shown = tray::Shown::default();
    tray::render(&app, &model, &mut shown);
    // Figures that changed while the menu waited show on the next tick.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            r = events.recv() => match r {
                Ok(n) => {
                    if let Event::WorkerState { id, state, previous, reason, detail } = &n.event
                        && let Some(notice) =
                            notify::notice(id, *previous, *state, *reason, detail.as_deref())
                    {
                        notify::show(&app, notice);
                    }
                    model.apply(&n.event);
                }
                // Too far behind: start again from the engine's state.
                Err(RecvError::Lagged(_)) => model = tray::Model::load(&engine).await,
                Err(RecvError::Closed) => return,
            },
            _ = tick.tick() => {}
        }
        tray::render(&app, &model, &mut shown);
    }
}
