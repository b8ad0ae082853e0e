//! A notification when a studio goes down and when it comes back: once per
//! change (from the engine's `worker_state` events, which come once per
//! change), never per probe, and never for the start-up `starting -> ready`.
//!
//! Where they show: in a bundle (`cargo tauri build`), as Baton in
//! Notification Center. Unbundled (`cargo run -p baton-app`), macOS has no
//! bundle to post them as, so tauri-plugin-notification 2.8.0 posts them as
//! Terminal (`src/desktop.rs`: `com.apple.Terminal` whenever
//! `tauri::is_dev()`, i.e. without the `custom-protocol` feature the
//! bundler turns on), and they follow Terminal's notification settings. On
//! Linux they go to the desktop's notification server over D-Bus.

use std::collections::HashSet;
use std::time::Duration;

use baton::balancer::{Failure, State};
use tauri::AppHandle;
use tauri_plugin_notification::NotificationExt;

/// The plugin hands a notification to a task of its own and returns at
/// once (macOS: `tauri::async_runtime::spawn` around notify-rust; Linux: a
/// blocking task around the D-Bus call). A process about to exit gives it
/// this long to be delivered.
pub const DELIVERY: Duration = Duration::from_millis(1500);

/// What to tell the user.
#[derive(Debug, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// The notice for a state change, if it deserves one.
pub fn notice(
    id: &str,
    previous: State,
    state: State,
    reason: Option<Failure>,
    detail: Option<&str>,
) -> Option<Notice> {
    match (previous, state) {
        // It was serving (or finishing its work) and now it is out.
        (State::Ready | State::Draining, State::Ejected) => {
            let why = match reason {
                Some(Failure::Connect) => "it does not accept connections",
                Some(Failure::Timeout) => "it stopped answering in time",
                Some(Failure::Status5xx) => "it answers with server errors",
                Some(Failure::Stream) => "its answers were cut off",
                Some(Failure::Probe) => "it no longer lists its models",
                None => "it failed",
            };
            let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
            Some(Notice {
                title: format!("Studio down: {id}"),
                body: format!(
                    "Baton stopped sending it requests: {why}{detail}. The other studios take over; it comes back by itself once it answers."
                ),
            })
        }
        // Out, and serving again. (`starting -> ready` is every start-up.)
        (State::Probing | State::Ejected, State::Ready) => Some(Notice {
            title: format!("Studio back: {id}"),
            body: format!("{id} answers again and takes requests."),
        }),
        _ => None,
    }
}

/// The one "down" per outage: a studio already reported down is not
/// reported again until it has been seen serving (any change to `ready`,
/// including a restart's, which has no notice of its own).
#[derive(Debug, Default)]
pub struct Dedup {
    down: HashSet<String>,
}

impl Dedup {
    /// The notice to show for studio `id`, now in `state`, if any.
    pub fn filter(&mut self, id: &str, state: State, notice: Option<Notice>) -> Option<Notice> {
        match state {
            State::Ready => {
                self.down.remove(id);
                notice
            }
            State::Ejected if notice.is_some() => {
                // `insert` is false when it was reported down already.
                self.down.insert(id.to_string()).then_some(notice).flatten()
            }
            _ => notice,
        }
    }
}

pub fn show(app: &AppHandle, n: Notice) {
    if let Err(e) = app
        .notification()
        .builder()
        .title(&n.title)
        .body(&n.body)
        .show()
    {
        tracing::warn!("cannot show a notification ({}): {e}", n.title);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    /// The notices a sequence of changes of one studio shows.
    fn shown(changes: &[(State, State)]) -> Vec<String> {
        let mut d = Dedup::default();
        changes
            .iter()
            .filter_map(|(prev, now)| {
                let n = notice("m1", *prev, *now, Some(Failure::Connect), None);
                d.filter("m1", *now, n).map(|n| n.title)
            })
            .collect()
    }

    #[test]
    fn one_down_per_outage_and_a_restart_starts_afresh() {
        // Down, drained while down, undrained, down again: one notice.
        assert_eq!(
            shown(&[(Ready, Ejected), (Ejected, Draining), (Draining, Ejected)]),
            ["Studio down: m1"]
        );
        // Down, back, down: each told.
        assert_eq!(
            shown(&[(Ready, Ejected), (Probing, Ready), (Ready, Ejected)]),
            ["Studio down: m1", "Studio back: m1", "Studio down: m1"]
        );
        // Down, then the balancer restarted and it served again (no notice
        // for `starting -> ready`), then down: told again.
        assert_eq!(
            shown(&[(Ready, Ejected), (Starting, Ready), (Ready, Ejected)]),
            ["Studio down: m1", "Studio down: m1"]
        );
        // Studios are counted apart.
        let mut d = Dedup::default();
        let down = |id| notice(id, Ready, Ejected, None, None);
        assert!(d.filter("a", Ejected, down("a")).is_some());
        assert!(d.filter("b", Ejected, down("b")).is_some());
        assert!(d.filter("a", Ejected, down("a")).is_none());
    }

    #[test]
    fn down_and_back_once_each_and_never_at_start_up() {
        let down = notice("m1", Ready, Ejected, Some(Failure::Connect), None).unwrap();
        assert_eq!(down.title, "Studio down: m1");
        assert!(down.body.contains("does not accept connections"));
        assert!(notice("m1", Draining, Ejected, None, Some("x")).is_some());
        assert_eq!(
            notice("m1", Probing, Ready, None, None).unwrap().title,
            "Studio back: m1"
        );
        assert!(notice("m1", Ejected, Ready, None, None).is_some());
        // Start-up, probes failing again, draining: no notice.
        assert_eq!(notice("m1", Starting, Ready, None, None), None);
        assert_eq!(notice("m1", Probing, Ejected, None, None), None);
        assert_eq!(notice("m1", Ejected, Probing, None, None), None);
        assert_eq!(notice("m1", Ready, Draining, None, None), None);
        assert_eq!(notice("m1", Starting, Ejected, None, None), None);
    }
}
