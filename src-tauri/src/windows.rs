//! The two windows, both showing the dashboard that the control API serves:
//! the popover (the compact view, under the tray icon) and the dashboard (a
//! normal window with the full UI). They are only ever hidden, never closed,
//! so showing one again is instant and keeps its place.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use baton::engine::jobs::{JobId, JobKind, JobStatus};
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::{
    AppHandle, LogicalPosition, Manager, Monitor, Url, WebviewUrl, WebviewWindow,
    WebviewWindowBuilder, Wry,
};

use crate::placement::{self, Rect, Screen};
use crate::shell::Shell;

pub const POPOVER: &str = "popover";
pub const DASHBOARD: &str = "dashboard";

/// The app menu's Quit (handled with the tray menu's items).
pub const APP_QUIT: &str = "app-quit";

/// A click on the tray icon right after the popover hid itself for losing
/// focus (to that very click) must not show it again.
const REOPEN_GUARD: Duration = Duration::from_millis(400);

/// The popover's size in points: the UI's narrowest layout (the endpoint
/// and Copy on one line).
const POPOVER_SIZE: (f64, f64) = (380.0, 540.0);

/// When the popover last hid itself on losing focus.
#[derive(Default)]
struct LastBlur(Mutex<Option<Instant>>);

/// The tray icon's rect as tray-icon last reported it (physical pixels; see
/// `placement`), for the popover's place.
#[derive(Default)]
pub struct IconRect(Mutex<Option<Rect>>);

impl IconRect {
    pub fn set(app: &AppHandle, rect: &tauri::Rect) {
        let p = rect.position.to_physical::<f64>(1.0);
        let s = rect.size.to_physical::<f64>(1.0);
        if let Some(me) = app.try_state::<IconRect>() {
            *me.0.lock().expect("icon rect lock") = Some(Rect::new(p.x, p.y, s.width, s.height));
        }
    }
}

/// The popover's own jobs: while one runs it stays up when it loses focus
/// (to the Local Network alert during Discover, say), and when it ends the
/// popover shows again with the result. The jobs are the popover's when
/// they start while it shows (its buttons, or the menu's Run Preflight,
/// which shows it).
#[derive(Debug, Default, PartialEq)]
pub struct Hold {
    job: Option<JobId>,
    /// Focus was lost while held: the popover shows again, focused, at the
    /// end, so that a click elsewhere hides it as usual.
    blurred: bool,
}

impl Hold {
    pub fn job_started(&mut self, id: JobId, kind: JobKind, popover_visible: bool) {
        if popover_visible && matches!(kind, JobKind::Preflight | JobKind::Discover) {
            self.job = Some(id);
        }
    }

    /// The popover lost focus: whether to hide it.
    pub fn blur(&mut self) -> bool {
        if self.job.is_some() {
            self.blurred = true;
            return false;
        }
        true
    }

    /// A job ended: whether to show the popover again.
    pub fn job_ended(&mut self, id: JobId) -> bool {
        if self.job != Some(id) {
            return false;
        }
        *self = Hold::default();
        true
    }

    /// The user hid the popover (the icon, Open dashboard): its job's end
    /// does not bring it back.
    pub fn user_hid(&mut self) {
        *self = Hold::default();
    }
}

/// Create the popover, hidden, once the engine is open: it is loaded and
/// ready when the icon is first clicked.
pub fn create_popover(app: &AppHandle) -> tauri::Result<()> {
    app.manage(LastBlur::default());
    app.manage(Mutex::new(Hold::default()));
    let url = app.state::<Shell>().page(Some("popover"));
    let builder = WebviewWindowBuilder::new(app, POPOVER, WebviewUrl::External(url))
        .title("Baton")
        .inner_size(POPOVER_SIZE.0, POPOVER_SIZE.1)
        .resizable(false)
        .maximizable(false)
        .minimizable(false)
        .decorations(false)
        .always_on_top(true)
        .skip_taskbar(true)
        .visible(false)
        .focused(false)
        // On every Space, like the menu bar itself (and over full-screen
        // apps: see `over_full_screen`).
        .visible_on_all_workspaces(true)
        .on_navigation(stay_on_origin(app));
    let w = builder.build()?;
    over_full_screen(app, &w);
    Ok(())
}

/// macOS shows a window over another app's full-screen Space only when its
/// collection behaviour has `FullScreenAuxiliary` (AppKit's
/// `NSWindowCollectionBehavior`); tao 0.37.2 sets `CanJoinAllSpaces` for
/// `visible_on_all_workspaces` and nothing else
/// (`src/platform_impl/macos/window.rs`, `set_visible_on_all_workspaces`).
/// Only a real Mac shows the effect.
#[cfg(target_os = "macos")]
fn over_full_screen(app: &AppHandle, w: &WebviewWindow) {
    use objc2_app_kit::{NSWindow, NSWindowCollectionBehavior};
    let w = w.clone();
    let r = app.run_on_main_thread(move || {
        let Ok(ptr) = w.ns_window() else {
            return;
        };
        // SAFETY: tauri hands out the window's live NSWindow pointer, and
        // this runs on the main thread, where AppKit wants it used.
        let ns: &NSWindow = unsafe { &*ptr.cast::<NSWindow>() };
        ns.setCollectionBehavior(
            ns.collectionBehavior()
                | NSWindowCollectionBehavior::CanJoinAllSpaces
                | NSWindowCollectionBehavior::FullScreenAuxiliary,
        );
    });
    if let Err(e) = r {
        tracing::warn!("cannot let the popover show over full-screen apps: {e}");
    }
}

#[cfg(not(target_os = "macos"))]
fn over_full_screen(_app: &AppHandle, _w: &WebviewWindow) {}

fn screen(m: &Monitor) -> Screen {
    let (p, s, work) = (m.position(), m.size(), m.work_area());
    Screen {
        frame: Rect::new(
            f64::from(p.x),
            f64::from(p.y),
            f64::from(s.width),
            f64::from(s.height),
        ),
        work: Rect::new(
            f64::from(work.position.x),
            f64::from(work.position.y),
            f64::from(work.size.width),
            f64::from(work.size.height),
        ),
        scale: m.scale_factor(),
    }
}

/// Show the popover: under the tray icon once its place is known (from a
/// click on it, or the pointer over it), else at the top right of the
/// primary screen (before any click, or on Linux, whose tray reports no
/// clicks). See `placement` for the arithmetic.
pub fn show_popover(app: &AppHandle) {
    let Some(w) = app.get_webview_window(POPOVER) else {
        return;
    };
    let monitors = w.available_monitors().unwrap_or_default();
    let screens: Vec<Screen> = monitors.iter().map(screen).collect();
    let primary = w.primary_monitor().ok().flatten().map(|m| screen(&m));
    let fallback = primary
        .and_then(|p| screens.iter().position(|s| s.frame == p.frame))
        .unwrap_or(0);
    let icon = *app.state::<IconRect>().0.lock().expect("icon rect lock");
    let (x, y) = placement::place(icon, &screens, fallback, POPOVER_SIZE);
    let _ = w.set_position(LogicalPosition::new(x, y));
    let _ = w.show();
    let _ = w.set_focus();
}

/// A job's news (from the engine's events): the popover keeps or regains
/// its own job's result (see [`Hold`]).
pub fn on_job(app: &AppHandle, id: JobId, kind: JobKind, status: JobStatus, started: bool) {
    let (Some(w), Some(hold)) = (
        app.get_webview_window(POPOVER),
        app.try_state::<Mutex<Hold>>(),
    ) else {
        return;
    };
    let reshow = {
        let mut hold = hold.lock().expect("hold lock");
        if started {
            hold.job_started(id, kind, w.is_visible().unwrap_or(false));
        }
        status != JobStatus::Running && hold.job_ended(id)
    };
    if reshow {
        show_popover(app);
    }
}

/// A left click on the tray icon: show the popover, or hide it.
pub fn toggle_popover(app: &AppHandle) {
    let Some(w) = app.get_webview_window(POPOVER) else {
        return;
    };
    let just_hid = app
        .state::<LastBlur>()
        .0
        .lock()
        .expect("blur lock")
        .is_some_and(|t| t.elapsed() < REOPEN_GUARD);
    if w.is_visible().unwrap_or(false) {
        user_hides(app, &w);
    } else if !just_hid {
        show_popover(app);
    }
}

fn user_hides(app: &AppHandle, w: &WebviewWindow) {
    if let Some(hold) = app.try_state::<Mutex<Hold>>() {
        hold.lock().expect("hold lock").user_hid();
    }
    let _ = w.hide();
}

/// Like a menu-bar popover on macOS: it goes away when you click elsewhere,
/// unless a job it started runs (see [`Hold`]).
pub fn popover_lost_focus(app: &AppHandle) {
    if let Some(w) = app.get_webview_window(POPOVER)
        && w.is_visible().unwrap_or(false)
        && app
            .try_state::<Mutex<Hold>>()
            .is_none_or(|h| h.lock().expect("hold lock").blur())
    {
        *app.state::<LastBlur>().0.lock().expect("blur lock") = Some(Instant::now());
        let _ = w.hide();
    }
}

/// The popover's "Open dashboard" (`window.__TAURI__.core.invoke`): the
/// only command the pages may call (capabilities/default.json). Async, so
/// it runs off the main thread, where building a window from a command
/// could deadlock.
#[tauri::command]
pub async fn open_dashboard(app: AppHandle) {
    show_dashboard(&app, None);
}

/// Show the dashboard window (created on first use), on `view` if given.
pub fn show_dashboard(app: &AppHandle, view: Option<&str>) {
    if let Some(p) = app.get_webview_window(POPOVER) {
        user_hides(app, &p);
    }
    let w = match app.get_webview_window(DASHBOARD) {
        Some(w) => {
            if let Some(v) = view {
                // The UI routes on the fragment; the token is in its session already.
                let _ = w.eval(format!("location.hash = {:?}", format!("view={v}")));
            }
            w
        }
        None => match build_dashboard(app, view) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot open the dashboard window: {e}");
                return;
            }
        },
    };
    let _ = w.unminimize();
    let _ = w.show();
    let _ = w.set_focus();
}

fn build_dashboard(app: &AppHandle, view: Option<&str>) -> tauri::Result<WebviewWindow> {
    let url = app.state::<Shell>().page(view);
    WebviewWindowBuilder::new(app, DASHBOARD, WebviewUrl::External(url))
        .title("Baton")
        .inner_size(1180.0, 800.0)
        .min_inner_size(640.0, 480.0)
        .center()
        .on_navigation(stay_on_origin(app))
        .build()
}

/// The windows show Baton's own pages only. A link elsewhere (a studio's
/// page, the Local Network settings on macOS) opens where it belongs, in
/// the browser or System Settings, instead of inside the app with IPC.
fn stay_on_origin(app: &AppHandle) -> impl Fn(&Url) -> bool + Send + 'static {
    let origin = app.state::<Shell>().origin.origin();
    move |url: &Url| {
        if url.origin() == origin {
            return true;
        }
        if matches!(url.scheme(), "http" | "https" | "x-apple.systempreferences") {
            open_outside(url.as_str());
        }
        false
    }
}

pub fn open_outside(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    if let Err(e) = std::process::Command::new(opener)
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        tracing::warn!("cannot open {url} with {opener}: {e}");
    }
}

/// The app menu (macOS): Baton (About, Hide, Quit), Edit, Window. Built on
/// every platform so it is compiled and checked everywhere; used on macOS.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub fn app_menu(app: &AppHandle) -> tauri::Result<Menu<Wry>> {
    let sep = || PredefinedMenuItem::separator(app);
    let quit = MenuItem::with_id(app, APP_QUIT, "Quit Baton", true, Some("CmdOrCtrl+Q"))?;
    let baton = Submenu::with_items(
        app,
        "Baton",
        true,
        &[
            &PredefinedMenuItem::about(app, Some("About Baton"), None)?,
            &sep()?,
            &PredefinedMenuItem::hide(app, Some("Hide Baton"))?,
            &PredefinedMenuItem::hide_others(app, None)?,
            &sep()?,
            &quit,
        ],
    )?;
    let edit = Submenu::with_items(
        app,
        "Edit",
        true,
        &[
            &PredefinedMenuItem::undo(app, None)?,
            &PredefinedMenuItem::redo(app, None)?,
            &sep()?,
            &PredefinedMenuItem::cut(app, None)?,
            &PredefinedMenuItem::copy(app, None)?,
            &PredefinedMenuItem::paste(app, None)?,
            &PredefinedMenuItem::select_all(app, None)?,
        ],
    )?;
    let window = Submenu::with_items(
        app,
        "Window",
        true,
        &[
            &PredefinedMenuItem::minimize(app, None)?,
            // Closing hides (see main.rs): the app keeps serving.
            &PredefinedMenuItem::close_window(app, None)?,
        ],
    )?;
    Menu::with_items(app, &[&baton, &edit, &window])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_popover_stays_up_while_its_own_job_runs_and_comes_back_at_its_end() {
        let mut h = Hold::default();
        // Preflight started from the showing popover: a system alert takes
        // focus, the popover stays.
        h.job_started(7, JobKind::Preflight, true);
        assert!(!h.blur());
        // Another job's end changes nothing; its own brings it back.
        assert!(!h.job_ended(8));
        assert!(h.job_ended(7));
        // Then focus loss hides it again.
        assert!(h.blur());
        assert_eq!(h, Hold::default());
    }

    #[test]
    fn jobs_started_elsewhere_or_hidden_by_the_user_do_not_hold_it() {
        let mut h = Hold::default();
        // A discovery started while the popover was hidden (the dashboard).
        h.job_started(1, JobKind::Discover, false);
        assert!(h.blur());
        assert!(!h.job_ended(1));
        // A benchmark is the dashboard's, even with the popover up.
        h.job_started(2, JobKind::Bench, true);
        assert!(h.blur());
        // The user hid the popover during its preflight: it stays hidden.
        h.job_started(3, JobKind::Preflight, true);
        h.user_hid();
        assert!(!h.job_ended(3));
        // Without a blur during the job it still comes back at the end.
        h.job_started(4, JobKind::Discover, true);
        assert!(h.job_ended(4));
    }
}
