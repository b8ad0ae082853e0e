//! A notification when a studio goes down and when it comes back: once per
//! change (from the engine's `worker_state` events, which come once per
//! change), never per probe, and never for the start-up `starting -> ready`.

use baton::balancer::{Failure, State};
use tauri::AppHandle;
use tauri_plugin_notification::NotificationExt;

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
