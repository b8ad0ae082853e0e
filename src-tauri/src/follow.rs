//! The app's one subscriber of the engine's events: it keeps the tray's
//! model current, turns studio state changes into notifications, holds off
//! App Nap while the balancer serves, and tells the popover about its jobs.

use std::time::{Duration, Instant};

use baton::engine::events::Event;
use baton::engine::jobs::JobUpdate;
use tauri::{AppHandle, Manager};
use tokio::sync::broadcast::error::RecvError;

use crate::shell::Shell;
use crate::{nap, notify, tray, windows};

/// How often Launch at Login's checkmark is read again from the login
/// item's file, for trays that report nothing before their menu opens
/// (Linux; macOS reads it at the click as well), and the studios' round
/// trips from the engine: every 5 s while what the menu shows changes,
/// twice as long after each look that changed nothing, up to 30 s (a
/// resting pool is probed every 30 s); any event brings 5 s back.
const CHECK_FIRST: Duration = Duration::from_secs(5);
const CHECK_MOST: Duration = Duration::from_secs(30);

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
    let mut dedup = notify::Dedup::default();
    let mut nap = nap::Nap::default();
    let mut login_at = Instant::now();
    let mut check_every = CHECK_FIRST;
    nap.follow(&app, model.balancer.running);
    let mut held = tray::render(&app, &model, &mut shown);
    loop {
        // No tick while nothing changes (a menu-bar app must not wake up
        // every second for nobody): the next wake-up is the login item's
        // check, or sooner the figures the menu held back.
        let login_due = login_at + check_every;
        let wake = held.map_or(login_due, |at| at.min(login_due));
        tokio::select! {
            r = events.recv() => match r {
                Ok(n) => {
                    check_every = CHECK_FIRST;
                    match &n.event {
                        Event::WorkerState { id, state, previous, reason, detail } => {
                            let notice =
                                notify::notice(id, *previous, *state, *reason, detail.as_deref());
                            if let Some(notice) = dedup.filter(id, *state, notice) {
                                notify::show(&app, notice);
                            }
                        }
                        Event::Job { id, kind, status, update } => windows::on_job(
                            &app,
                            *id,
                            *kind,
                            *status,
                            matches!(update, JobUpdate::Started),
                        ),
                        _ => {}
                    }
                    model.apply(&n.event);
                }
                // Too far behind: start again from the engine's state.
                Err(RecvError::Lagged(_)) => model = tray::Model::load(&engine).await,
                Err(RecvError::Closed) => return,
            },
            _ = tokio::time::sleep_until(wake.into()) => {
                if login_at.elapsed() >= check_every {
                    login_at = Instant::now();
                    let lines = model.studio_lines();
                    let login_changed = tray::refresh_login(&app);
                    // Round trips come as live figures only while a view
                    // shows them: the menu reads them at this pace instead.
                    model = tray::Model::load(&engine).await;
                    check_every = if login_changed || model.studio_lines() != lines {
                        CHECK_FIRST
                    } else {
                        (check_every * 2).min(CHECK_MOST)
                    };
                }
            }
        }
        nap.follow(&app, model.balancer.running);
        held = tray::render(&app, &model, &mut shown);
    }
}
