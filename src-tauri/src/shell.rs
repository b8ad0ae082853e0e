//! What the app holds: the engine and its control API, both in this
//! process, opened exactly as the CLI opens them, and the way out (Quit).

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton::control::{self, ControlApi};
use baton::engine::{Engine, Options, WhenMissing};
use tauri::{AppHandle, Manager, Url};
use tauri_plugin_notification::NotificationExt;

/// How long the balancer lets an answer in flight finish once it stops
/// (`src/balancer`: connections close gracefully within 2 s), plus a margin.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(2300);

/// A quit never hangs longer than this, whatever the engine does.
const QUIT_LIMIT: Duration = Duration::from_secs(10);

/// The engine, the control API and the pages' addresses (managed state).
pub struct Shell {
    pub engine: Engine,
    /// Taken at quit, to stop it.
    api: Mutex<Option<ControlApi>>,
    /// `http://127.0.0.1:port`: what the windows may navigate within.
    pub origin: Url,
    token: String,
    quitting: AtomicBool,
}

impl Shell {
    /// Open the engine the way the CLI does (same workers file, store and
    /// balancer address), except that a missing workers file means "first
    /// run" (the popover offers discovery or simulated studios), and serve
    /// the control API for the windows.
    pub async fn open(listen: Option<SocketAddr>) -> Result<Shell, String> {
        let engine = Engine::open(Options {
            when_missing: WhenMissing::FirstRun,
            listen,
            ..Options::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let token = control::install_token();
        let api =
            match ControlApi::start(engine.clone(), control::DEFAULT_PORT, token.clone()).await {
                Ok(api) => api,
                // Another Baton (`baton dashboard`) holds the usual port: any
                // free one does, since the windows get the address from here.
                Err(first) => ControlApi::start(engine.clone(), 0, token.clone())
                    .await
                    .map_err(|e| format!("{e}\n  (port {}: {first})", control::DEFAULT_PORT))?,
            };
        let origin = Url::parse(&api.base_url()).map_err(|e| e.to_string())?;
        let info = engine.config_info();
        // The address only: the token goes to the windows, never to a log.
        eprintln!(
            "baton-app {}: control API on {} (workers file: {})",
            env!("CARGO_PKG_VERSION"),
            api.base_url(),
            info.path
                .as_deref()
                .map_or_else(|| "none".into(), |p| p.display().to_string())
        );
        Ok(Shell {
            engine,
            api: Mutex::new(Some(api)),
            origin,
            token,
            quitting: AtomicBool::new(false),
        })
    }

    /// A page of the dashboard (`view` as the UI names it: `popover`,
    /// `studios`, ...; `None` = the Overview) with the token in the fragment,
    /// which is never sent to a server.
    pub fn page(&self, view: Option<&str>) -> Url {
        let mut url = self.origin.clone();
        let fragment = match view {
            Some(v) => format!("view={v}&token={}", self.token),
            None => format!("token={}", self.token),
        };
        url.set_fragment(Some(&fragment));
        url
    }

    /// The balancer's address for OpenAI clients, running or not.
    pub fn endpoint(&self) -> String {
        let s = self.engine.balancer_status();
        s.url.unwrap_or_else(|| {
            // A wildcard listen is reached on loopback from this Mac.
            let host = if s.listen.ip().is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                s.listen.ip()
            };
            format!("http://{}/v1", SocketAddr::new(host, s.listen.port()))
        })
    }
}

/// The engine could not open (a broken workers file, no home directory):
/// say so where a menu-bar user will see it, then the caller exits.
pub fn fatal(app: &AppHandle, error: &str) {
    eprintln!("error: {error}");
    let first = error.lines().next().unwrap_or(error);
    let fix = error
        .lines()
        .find_map(|l| l.trim().strip_prefix("fix: "))
        .unwrap_or("run `baton config check` in Terminal for details");
    let _ = app
        .notification()
        .builder()
        .title("Baton could not start")
        .body(format!("{first}\nFix: {fix}"))
        .show();
    // The notification is sent from a background task: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
}

/// Start the balancer at launch when there are studios to serve (as
/// `baton dashboard` does), so a login item serves right away. A failure
/// (the port is taken) shows in the tray and the popover, and as a notice.
pub fn start_if_configured(app: AppHandle) {
    tauri::async_runtime::spawn(async move {
        let engine = app.state::<Shell>().engine.clone();
        if engine.config().workers.is_empty() {
            return;
        }
        if let Err(e) = engine.start_balancer().await {
            tracing::warn!("the balancer did not start: {e}");
            let _ = app
                .notification()
                .builder()
                .title("Baton's balancer did not start")
                .body(e.to_string())
                .show();
        }
    });
}

/// Whether Quit is under way (the one exit the app lets through).
pub fn quitting(app: &AppHandle) -> bool {
    app.try_state::<Shell>()
        .is_none_or(|s| s.quitting.load(Ordering::SeqCst))
}

/// Quit Baton: the balancer stops taking requests, answers in flight get
/// their bounded time, the control API closes, then the process exits 0.
pub fn quit(app: &AppHandle) {
    let shell = app.state::<Shell>();
    if shell.quitting.swap(true, Ordering::SeqCst) {
        return;
    }
    for w in app.webview_windows().values() {
        let _ = w.hide();
    }
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let shell = app.state::<Shell>();
        let engine = shell.engine.clone();
        let api = shell.api.lock().expect("api lock").take();
        let stop = async {
            let busy = engine
                .workers()
                .await
                .iter()
                .filter_map(|w| w.live.as_ref())
                .any(|l| l.in_flight > 0);
            engine.shutdown().await;
            if busy {
                // The listener is closed already; what is in flight finishes
                // (or is cut by the balancer) within its grace.
                tokio::time::sleep(IN_FLIGHT_GRACE).await;
            }
            if let Some(api) = api {
                api.shutdown().await;
            }
        };
        if tokio::time::timeout(QUIT_LIMIT, stop).await.is_err() {
            tracing::warn!("stopping took over {QUIT_LIMIT:?}; quitting anyway");
        }
        app.exit(0);
    });
}

/// SIGTERM and Ctrl-C quit the same clean way as the menu's Quit (logout,
/// `kill`, a terminal running `cargo run`).
pub fn quit_on_signals(app: AppHandle) {
    #[cfg(unix)]
    tauri::async_runtime::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        quit(&app);
    });
    #[cfg(not(unix))]
    tauri::async_runtime::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            quit(&app);
        }
    });
}
