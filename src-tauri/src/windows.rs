//! The two windows, both showing the dashboard that the control API serves:
//! the popover (the compact view, under the tray icon) and the dashboard (a
//! normal window with the full UI). They are only ever hidden, never closed,
//! so showing one again is instant and keeps its place.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem, Submenu};
use tauri::{AppHandle, Manager, Url, WebviewUrl, WebviewWindow, WebviewWindowBuilder, Wry};
use tauri_plugin_positioner::{Position, WindowExt};

use crate::shell::Shell;

pub const POPOVER: &str = "popover";
pub const DASHBOARD: &str = "dashboard";

/// The app menu's Quit (handled with the tray menu's items).
pub const APP_QUIT: &str = "app-quit";

/// A click on the tray icon right after the popover hid itself for losing
/// focus (to that very click) must not show it again.
const REOPEN_GUARD: Duration = Duration::from_millis(400);

/// When the popover last hid itself on losing focus.
#[derive(Default)]
struct LastBlur(Mutex<Option<Instant>>);

/// Create the popover, hidden, at launch: it is loaded and ready when the
/// icon is first clicked.
pub fn create_popover(app: &AppHandle) -> tauri::Result<()> {
    app.manage(LastBlur::default());
    let url = app.state::<Shell>().page(Some("popover"));
    let builder = WebviewWindowBuilder::new(app, POPOVER, WebviewUrl::External(url))
        .title("Baton")
        .inner_size(380.0, 540.0)
        .resizable(false)
        .maximizable(false)
        .minimizable(false)
        .decorations(false)
        .always_on_top(true)
        .skip_taskbar(true)
        .visible(false)
        .focused(false)
        // Over full-screen apps and on every Space, like the menu bar itself.
        .visible_on_all_workspaces(true)
        .on_navigation(stay_on_origin(app));
    builder.build()?;
    Ok(())
}

/// Show the popover: under the tray icon when its place is known (a click
/// on it), else at the top right of the screen (a second launch, a menu
/// action, or Linux, whose tray reports no clicks).
pub fn show_popover(app: &AppHandle, under_icon: bool) {
    let Some(w) = app.get_webview_window(POPOVER) else {
        return;
    };
    let placed = under_icon && w.move_window(Position::TrayBottomCenter).is_ok();
    if !placed {
        let _ = w.move_window(Position::TopRight);
    }
    let _ = w.show();
    let _ = w.set_focus();
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
        let _ = w.hide();
    } else if !just_hid {
        show_popover(app, true);
    }
}

/// Like a menu-bar popover on macOS: it goes away when you click elsewhere.
pub fn popover_lost_focus(app: &AppHandle) {
    if let Some(w) = app.get_webview_window(POPOVER)
        && w.is_visible().unwrap_or(false)
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
        let _ = p.hide();
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

fn open_outside(url: &str) {
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
