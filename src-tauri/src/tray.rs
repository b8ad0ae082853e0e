//! The tray icon and its menu. What they show is computed from a [`Model`]
//! that only the engine's events change (see `follow`), so the icon, the
//! menu, the popover and the CLI never disagree.

use std::time::{Duration, Instant};

use baton::balancer::State;
use baton::engine::events::Event;
use baton::engine::{BalancerStatus, Engine, WorkerView};
use baton::preflight::Thresholds;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem, Submenu};
use tauri::tray::{MouseButton, MouseButtonState, TrayIconBuilder, TrayIconEvent};
use tauri::{AppHandle, Manager, Wry};
use tauri_plugin_clipboard_manager::ClipboardExt;

use crate::shell::{self, Shell};
use crate::{login, logs, windows};

const TRAY_ID: &str = "baton";

/// Menu item ids (studios are `studio:<id>`).
mod id {
    pub const TOGGLE: &str = "toggle";
    pub const PREFLIGHT: &str = "preflight";
    pub const STUDIOS: &str = "studios";
    pub const NO_STUDIOS: &str = "no-studios";
    pub const DASHBOARD: &str = "dashboard";
    pub const COPY: &str = "copy-endpoint";
    pub const AUTOSTART: &str = "autostart";
    pub const LOGS: &str = "reveal-logs";
    pub const QUIT: &str = "quit";
    pub const STUDIO_PREFIX: &str = "studio:";
}

/// The icon's four looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    Stopped,
    Serving,
    /// Serving, but a studio is down.
    Degraded,
    /// The balancer failed to start, or no studio can serve.
    Error,
}

impl Look {
    /// Black-on-transparent template images (icons/tray-*@2x.png, 36 px:
    /// tray-icon 0.25.1 shows every icon 18 points tall on macOS
    /// (`src/platform_impl/macos/mod.rs`, `icon_height`), so 36 px are
    /// exactly two pixels per point on Retina screens).
    fn icon(self) -> &'static [u8] {
        match self {
            Look::Stopped => include_bytes!("../icons/tray-stopped@2x.png"),
            Look::Serving => include_bytes!("../icons/tray-serving@2x.png"),
            Look::Degraded => include_bytes!("../icons/tray-degraded@2x.png"),
            Look::Error => include_bytes!("../icons/tray-error@2x.png"),
        }
    }
}

/// A studio as the menu shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Studio {
    pub id: String,
    pub enabled: bool,
    /// Its balancer state, while the balancer runs.
    pub state: Option<State>,
    pub rtt_ms: Option<f64>,
    /// The models it has in memory (from its own API; refreshed when the
    /// workers or their models change).
    pub loaded: Vec<String>,
}

/// What the tray knows, kept up to date from the engine's events.
#[derive(Clone, Debug)]
pub struct Model {
    pub balancer: BalancerStatus,
    pub studios: Vec<Studio>,
}

impl Model {
    /// The engine's current state (at start, and after missing events).
    pub async fn load(engine: &Engine) -> Model {
        let mut m = Model {
            balancer: engine.balancer_status(),
            studios: Vec::new(),
        };
        m.set_workers(&engine.workers().await);
        m
    }

    fn set_workers(&mut self, workers: &[WorkerView]) {
        self.studios = workers
            .iter()
            .map(|w| Studio {
                id: w.id.clone(),
                enabled: w.enabled,
                state: w.live.as_ref().map(|l| l.state),
                rtt_ms: w.live.as_ref().and_then(|l| l.probe_rtt_ms),
                loaded: w
                    .live
                    .as_ref()
                    .map(|l| {
                        l.inventory
                            .iter()
                            .filter(|m| m.state == baton::balancer::Residency::Loaded)
                            .map(|m| m.name.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
    }

    /// Take one event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Balancer(s) => {
                self.balancer = s.clone();
                if !s.running {
                    for st in &mut self.studios {
                        st.state = None;
                        st.rtt_ms = None;
                        st.loaded.clear();
                    }
                }
            }
            Event::Config { workers } => self.set_workers(workers),
            Event::Stats(stats) => {
                for w in &stats.workers {
                    if let Some(st) = self.studios.iter_mut().find(|s| s.id == w.id) {
                        st.state = Some(w.state);
                        st.rtt_ms = w.probe_rtt_ms;
                    }
                }
            }
            Event::WorkerState { id, state, .. } => {
                if let Some(st) = self.studios.iter_mut().find(|s| &s.id == id) {
                    st.state = Some(*state);
                }
            }
            Event::Job { .. } | Event::Resync {} => {}
        }
    }

    pub fn look(&self) -> Look {
        if !self.balancer.running {
            return if self.balancer.error.is_some() {
                Look::Error
            } else {
                Look::Stopped
            };
        }
        // Studios meant to serve: enabled, and not drained on purpose.
        let serving: Vec<&Studio> = self
            .studios
            .iter()
            .filter(|s| s.enabled && !matches!(s.state, Some(State::Draining | State::Removed)))
            .collect();
        let down = serving
            .iter()
            .filter(|s| matches!(s.state, Some(State::Ejected | State::Probing)))
            .count();
        if serving.is_empty() || down == serving.len() {
            Look::Error
        } else if down > 0 {
            Look::Degraded
        } else {
            Look::Serving
        }
    }

    /// The hover text: the state in a few words.
    pub fn tooltip(&self) -> String {
        let enabled = self.studios.iter().filter(|s| s.enabled).count();
        let down = self
            .studios
            .iter()
            .filter(|s| matches!(s.state, Some(State::Ejected | State::Probing)))
            .count();
        let what = match self.look() {
            Look::Stopped => "stopped".to_string(),
            Look::Serving => format!(
                "serving {enabled} studio{} at {}",
                plural(enabled),
                self.balancer.url.as_deref().unwrap_or("")
            ),
            Look::Degraded => format!("{down} of {enabled} studios down"),
            Look::Error => match (&self.balancer.error, self.balancer.running) {
                (Some(e), false) => e.lines().next().unwrap_or(e).to_string(),
                _ if enabled == 0 => "no studios to serve".to_string(),
                _ => "no studio can serve".to_string(),
            },
        };
        format!("Baton: {what}")
    }

    /// The toggle item's text.
    pub fn toggle_text(&self) -> &'static str {
        if self.balancer.running {
            "Stop Balancer"
        } else {
            "Start Balancer"
        }
    }

    /// One line per studio for the Studios submenu: its state, its probe
    /// round trip while it has one, and the models it has loaded.
    pub fn studio_lines(&self) -> Vec<(String, String)> {
        self.studios
            .iter()
            .map(|s| {
                let state = match (s.enabled, s.state) {
                    (false, _) => "disabled",
                    (true, None) if self.balancer.running => "starting",
                    (true, None) => "stopped",
                    (true, Some(st)) => state_word(st),
                };
                let rtt = match (s.state, s.rtt_ms) {
                    (Some(State::Ready | State::Draining), Some(ms)) => format!(" · {}", rtt(ms)),
                    _ => String::new(),
                };
                let loaded = match (s.state, s.loaded.as_slice()) {
                    (Some(State::Ready | State::Draining), [_, ..]) => {
                        format!(" · {}", s.loaded.join(", "))
                    }
                    _ => String::new(),
                };
                (s.id.clone(), format!("{} — {state}{rtt}{loaded}", s.id))
            })
            .collect()
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn state_word(s: State) -> &'static str {
    match s {
        State::Starting => "starting",
        State::Ready => "ready",
        State::Ejected => "down",
        State::Probing => "checking",
        State::Draining => "draining",
        State::Removed => "removed",
    }
}

/// A round trip as people read it: "0.4 ms", "3 ms", "120 ms".
fn rtt(ms: f64) -> String {
    if ms < 9.95 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// The menu items that change.
struct Items {
    toggle: MenuItem<Wry>,
    studios: Submenu<Wry>,
    autostart: CheckMenuItem<Wry>,
}

/// What the tray shows now, to change only what differs.
#[derive(Default)]
pub struct Shown {
    look: Option<Look>,
    tooltip: String,
    toggle: String,
    /// `None` until the submenu was first filled.
    studios: Option<Vec<(String, String)>>,
    studios_at: Option<Instant>,
}

/// Round trips change with every probe; the menu text follows at most this
/// often (state changes show at once).
const FIGURES_EVERY: Duration = Duration::from_secs(2);

/// Build the icon and its menu (before the engine is open: the menu's
/// actions wait for it).
pub fn create(app: &AppHandle) -> tauri::Result<()> {
    app.manage(windows::IconRect::default());
    let toggle = MenuItem::with_id(app, id::TOGGLE, "Start Balancer", true, None::<&str>)?;
    let preflight = MenuItem::with_id(app, id::PREFLIGHT, "Run Preflight", true, None::<&str>)?;
    let studios = Submenu::with_id(app, id::STUDIOS, "Studios", true)?;
    let dashboard = MenuItem::with_id(app, id::DASHBOARD, "Open Dashboard", true, None::<&str>)?;
    let copy = MenuItem::with_id(app, id::COPY, "Copy Endpoint URL", true, None::<&str>)?;
    let logs = MenuItem::with_id(app, id::LOGS, "Reveal Logs", true, None::<&str>)?;
    // Launched from a new place with Launch at Login on: re-point it here.
    let login = login::repair(app).is_on();
    let autostart = CheckMenuItem::with_id(
        app,
        id::AUTOSTART,
        "Launch at Login",
        true,
        login,
        None::<&str>,
    )?;
    let quit = MenuItem::with_id(app, id::QUIT, "Quit Baton", true, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &toggle,
            &preflight,
            &PredefinedMenuItem::separator(app)?,
            &studios,
            &PredefinedMenuItem::separator(app)?,
            &dashboard,
            &copy,
            &logs,
            &PredefinedMenuItem::separator(app)?,
            &autostart,
            &quit,
        ],
    )?;
    app.manage(Items {
        toggle,
        studios,
        autostart,
    });
    TrayIconBuilder::with_id(TRAY_ID)
        .icon(Image::from_bytes(Look::Stopped.icon())?)
        .icon_as_template(true)
        .tooltip("Baton: starting…")
        .menu(&menu)
        // Left click is the popover's; the menu is for the right click.
        .show_menu_on_left_click(false)
        .on_menu_event(on_menu)
        .on_tray_icon_event(|tray, event| {
            let app = tray.app_handle();
            match &event {
                TrayIconEvent::Click {
                    rect,
                    button,
                    button_state,
                    ..
                } => {
                    // Where the icon is, for the popover's place.
                    windows::IconRect::set(app, rect);
                    if *button_state == MouseButtonState::Down {
                        // The menu may open now: show the login item's
                        // real state.
                        let _ = refresh_login(app);
                    } else if *button == MouseButton::Left {
                        windows::toggle_popover(app);
                    }
                }
                TrayIconEvent::Enter { rect, .. } => {
                    windows::IconRect::set(app, rect);
                    let _ = refresh_login(app);
                }
                _ => {}
            }
        })
        .build(app)?;
    Ok(())
}

/// Bring the icon and menu in line with `model`, changing only what differs;
/// `Some(when)` the figures it held back (they change with every probe) are
/// due.
pub fn render(app: &AppHandle, model: &Model, shown: &mut Shown) -> Option<Instant> {
    let tray = app.tray_by_id(TRAY_ID)?;
    let items = app.state::<Items>();
    let look = model.look();
    if shown.look != Some(look) {
        let icon = Image::from_bytes(look.icon()).expect("the tray icons are valid PNGs");
        let _ = tray.set_icon_with_as_template(Some(icon), true);
        shown.look = Some(look);
    }
    let tooltip = model.tooltip();
    if shown.tooltip != tooltip {
        let _ = tray.set_tooltip(Some(&tooltip));
        shown.tooltip = tooltip;
    }
    if shown.toggle != model.toggle_text() {
        let _ = items.toggle.set_text(model.toggle_text());
        shown.toggle = model.toggle_text().to_string();
    }
    let lines = model.studio_lines();
    let before = shown.studios.as_deref();
    if before != Some(lines.as_slice()) {
        let same_ids = before.is_some_and(|b| {
            b.len() == lines.len() && lines.iter().zip(b).all(|(a, b)| a.0 == b.0)
        });
        // A new state shows at once; only figures wait a little.
        let only_figures = same_ids
            && before.is_some_and(|b| {
                lines
                    .iter()
                    .zip(b)
                    .all(|(a, b)| a.1.split(" · ").next() == b.1.split(" · ").next())
            });
        let due = shown
            .studios_at
            .is_none_or(|t| t.elapsed() >= FIGURES_EVERY);
        if !only_figures || due {
            set_studios(app, &items.studios, &lines, same_ids);
            shown.studios = Some(lines);
            shown.studios_at = Some(Instant::now());
        } else {
            return shown.studios_at.map(|t| t + FIGURES_EVERY);
        }
    }
    None
}

fn set_studios(app: &AppHandle, menu: &Submenu<Wry>, lines: &[(String, String)], same_ids: bool) {
    // Same studios: new texts in place (an open menu does not jump).
    if same_ids
        && !lines.is_empty()
        && let Ok(items) = menu.items()
    {
        for (item, (_, text)) in items.iter().zip(lines) {
            if let Some(i) = item.as_menuitem() {
                let _ = i.set_text(text);
            }
        }
        return;
    }
    if let Ok(items) = menu.items() {
        for item in items {
            let _ = menu.remove(&item);
        }
    }
    if lines.is_empty() {
        if let Ok(i) = MenuItem::with_id(app, id::NO_STUDIOS, "No studios yet", false, None::<&str>)
        {
            let _ = menu.append(&i);
        }
        return;
    }
    for (sid, text) in lines {
        // A studio opens the dashboard's Studios view, where it can be edited.
        let item_id = format!("{}{sid}", id::STUDIO_PREFIX);
        if let Ok(i) = MenuItem::with_id(app, item_id, text, true, None::<&str>) {
            let _ = menu.append(&i);
        }
    }
}

/// Set Launch at Login's checkmark from the login item's file as it is now
/// (the user may have removed it in System Settings, or moved the app);
/// whether it changed.
pub fn refresh_login(app: &AppHandle) -> bool {
    let Some(items) = app.try_state::<Items>() else {
        return false;
    };
    let on = login::read(app).is_on();
    if items.autostart.is_checked().ok() == Some(on) {
        return false;
    }
    let _ = items.autostart.set_checked(on);
    true
}

fn on_menu(app: &AppHandle, event: MenuEvent) {
    match event.id().as_ref() {
        // The tray's Quit, and the app menu's (Cmd-Q on macOS).
        id::QUIT | windows::APP_QUIT => return shell::quit(app),
        id::LOGS => return logs::reveal(app),
        id::AUTOSTART => {
            let on = !login::read(app).is_on();
            // Show what is true now, whatever the click did to the check.
            let now = login::set(app, on);
            let _ = app.state::<Items>().autostart.set_checked(now.is_on());
            return;
        }
        _ => {}
    }
    // The rest needs the engine, which opens just after the icon appears.
    let Some(shell) = app.try_state::<Shell>() else {
        return;
    };
    let engine = shell.engine.clone();
    match event.id().as_ref() {
        id::TOGGLE => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                if engine.balancer_status().running {
                    engine.stop_balancer().await;
                } else if engine.start_balancer().await.is_err() {
                    // The popover shows why (the port is taken, no studios...).
                    windows::show_popover(&app);
                }
            });
        }
        id::PREFLIGHT => {
            if let Err(e) = engine.start_preflight(Thresholds::default()) {
                tracing::info!("preflight not started: {e}");
            }
            // The verdict shows in the popover as the checks finish.
            windows::show_popover(app);
        }
        id::DASHBOARD => windows::show_dashboard(app, None),
        id::COPY => {
            let url = shell.endpoint();
            if let Err(e) = app.clipboard().write_text(url) {
                tracing::warn!("cannot copy the endpoint: {e}");
            }
        }
        other if other.starts_with(id::STUDIO_PREFIX) => {
            windows::show_dashboard(app, Some("studios"));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(running: bool, error: Option<&str>) -> BalancerStatus {
        BalancerStatus {
            running,
            url: running.then(|| "http://127.0.0.1:8421/v1".to_string()),
            listen: "127.0.0.1:8421".parse().unwrap(),
            lan_exposed: false,
            api_key_set: false,
            error: error.map(str::to_string),
        }
    }

    fn studio(id: &str, state: Option<State>) -> Studio {
        Studio {
            id: id.into(),
            enabled: true,
            state,
            rtt_ms: Some(0.42),
            loaded: vec![],
        }
    }

    fn model(running: bool, states: &[Option<State>]) -> Model {
        Model {
            balancer: status(running, None),
            studios: states
                .iter()
                .enumerate()
                .map(|(i, s)| studio(&format!("s{i}"), *s))
                .collect(),
        }
    }

    #[test]
    fn the_look_follows_the_balancer_and_the_studios() {
        use State::*;
        assert_eq!(model(false, &[None, None]).look(), Look::Stopped);
        assert_eq!(
            Model {
                balancer: status(false, Some("cannot listen on 127.0.0.1:8421")),
                studios: vec![]
            }
            .look(),
            Look::Error
        );
        assert_eq!(
            model(true, &[Some(Ready), Some(Ready)]).look(),
            Look::Serving
        );
        // Starting is not down: no red flash at every start.
        assert_eq!(model(true, &[Some(Starting), None]).look(), Look::Serving);
        assert_eq!(
            model(true, &[Some(Ready), Some(Ejected)]).look(),
            Look::Degraded
        );
        assert_eq!(
            model(true, &[Some(Probing), Some(Ready)]).look(),
            Look::Degraded
        );
        assert_eq!(
            model(true, &[Some(Ejected), Some(Probing)]).look(),
            Look::Error
        );
        assert_eq!(model(true, &[]).look(), Look::Error);
        // A studio drained on purpose is not "down".
        assert_eq!(
            model(true, &[Some(Ready), Some(Draining)]).look(),
            Look::Serving
        );
        // A disabled one does not count either way.
        let mut m = model(true, &[Some(Ready), None]);
        m.studios[1].enabled = false;
        assert_eq!(m.look(), Look::Serving);
    }

    #[test]
    fn studio_lines_say_state_and_round_trip() {
        use State::*;
        let mut m = model(true, &[Some(Ready), Some(Ejected), None]);
        m.studios[0].rtt_ms = Some(12.4);
        m.studios[2].enabled = false;
        let lines: Vec<String> = m.studio_lines().into_iter().map(|l| l.1).collect();
        assert_eq!(lines, ["s0 — ready · 12 ms", "s1 — down", "s2 — disabled"]);
        // Each ready studio's loaded models follow.
        m.studios[0].loaded = vec!["qwen3-14b".into(), "llama-3.1-8b".into()];
        m.studios[1].loaded = vec!["gone".into()];
        assert_eq!(
            m.studio_lines()[0].1,
            "s0 — ready · 12 ms · qwen3-14b, llama-3.1-8b"
        );
        assert_eq!(m.studio_lines()[1].1, "s1 — down");
        let m = model(false, &[None]);
        assert_eq!(m.studio_lines()[0].1, "s0 — stopped");
        assert_eq!(rtt(0.42), "0.4 ms");
    }

    #[test]
    fn events_move_the_model() {
        use State::*;
        let mut m = model(true, &[Some(Ready), Some(Ready)]);
        m.apply(&Event::WorkerState {
            id: "s1".into(),
            state: Ejected,
            previous: Ready,
            reason: None,
            detail: None,
        });
        assert_eq!(m.look(), Look::Degraded);
        assert_eq!(m.toggle_text(), "Stop Balancer");
        assert!(
            m.tooltip().contains("1 of 2 studios down"),
            "{}",
            m.tooltip()
        );
        m.apply(&Event::Balancer(status(false, None)));
        assert_eq!(m.look(), Look::Stopped);
        assert_eq!(m.toggle_text(), "Start Balancer");
        assert!(m.studios.iter().all(|s| s.state.is_none()));
    }
}
