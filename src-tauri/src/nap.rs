//! App Nap: macOS throttles the timers and network I/O of an app with no
//! visible window, which a menu-bar app is most of the time (Apple's Energy
//! Efficiency Guide for Mac Apps, "App Nap"; `NSProcessInfo`
//! `beginActivityWithOptions:reason:`). A balancer with napping timers adds
//! seconds to requests, so Baton holds a user-initiated activity while the
//! balancer serves (idle system sleep stays allowed: a Mac left alone may
//! still sleep) and ends it when the balancer stops. Only a real Mac shows
//! the effect; elsewhere this does nothing.

use tauri::AppHandle;

/// What to do when the balancer's running state is `running` and an
/// activity is `held` now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Begin,
    End,
}

pub fn change(held: bool, running: bool) -> Option<Change> {
    match (held, running) {
        (false, true) => Some(Change::Begin),
        (true, false) => Some(Change::End),
        _ => None,
    }
}

/// Follows the balancer: begins or ends the activity on changes only.
#[derive(Default)]
pub struct Nap {
    held: bool,
}

impl Nap {
    pub fn follow(&mut self, app: &AppHandle, running: bool) {
        let Some(c) = change(self.held, running) else {
            return;
        };
        self.held = c == Change::Begin;
        apply(app, c);
    }
}

#[cfg(target_os = "macos")]
fn apply(app: &AppHandle, c: Change) {
    // The token lives on the main thread (it is not `Send`); NSProcessInfo
    // itself may be called from any thread.
    let r = app.run_on_main_thread(move || mac::apply(c));
    if let Err(e) = r {
        tracing::warn!("cannot change the App Nap activity: {e}");
    }
}

#[cfg(not(target_os = "macos"))]
fn apply(_app: &AppHandle, c: Change) {
    tracing::debug!("balancer activity {c:?} (App Nap exists only on macOS)");
}

#[cfg(target_os = "macos")]
mod mac {
    use std::cell::RefCell;

    use objc2::rc::Retained;
    use objc2::runtime::{NSObjectProtocol, ProtocolObject};
    use objc2_foundation::{NSActivityOptions, NSProcessInfo, NSString};

    use super::Change;

    thread_local! {
        static ACTIVITY: RefCell<Option<Retained<ProtocolObject<dyn NSObjectProtocol>>>> =
            const { RefCell::new(None) };
    }

    pub fn apply(c: Change) {
        let info = NSProcessInfo::processInfo();
        ACTIVITY.with_borrow_mut(|held| match c {
            Change::Begin if held.is_none() => {
                let reason = NSString::from_str("Baton's balancer is serving requests");
                *held = Some(info.beginActivityWithOptions_reason(
                    NSActivityOptions::UserInitiatedAllowingIdleSystemSleep,
                    &reason,
                ));
                tracing::info!("App Nap held off while the balancer serves");
            }
            Change::End => {
                if let Some(token) = held.take() {
                    // SAFETY: the token is the object beginActivity returned.
                    unsafe { info.endActivity(&token) };
                    tracing::info!("App Nap allowed again (balancer stopped)");
                }
            }
            Change::Begin => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_activity_begins_with_serving_and_ends_with_stopping_once_each() {
        assert_eq!(change(false, true), Some(Change::Begin));
        assert_eq!(change(true, true), None);
        assert_eq!(change(true, false), Some(Change::End));
        assert_eq!(change(false, false), None);
    }
}
