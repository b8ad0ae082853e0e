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

use crate::{follow, notify, windows};

/// How long the balancer lets an answer in flight finish once it stops
/// (`src/balancer`: connections close gracefully within 2 s), plus a margin.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(2300);

/// A quit never hangs longer than this, whatever the engine does.
const QUIT_LIMIT: Duration = Duration::from_secs(10);

/// At logout or restart macOS waits a few seconds for apps to end before it
/// gives up on them; stopping then stays within this.
const EXIT_LIMIT: Duration = Duration::from_secs(4);

/// The engine, the control API and the pages' addresses (managed state).
pub struct Shell {
    pub engine: Engine,
    /// Taken at quit, to stop it.
    api: Mutex<Option<ControlApi>>,
    /// `http://127.0.0.1:port`: what the windows may navigate within.
    pub origin: Url,
    token: String,
    quitting: AtomicBool,
    /// The engine and the control API are stopped (by Quit, or at exit).
    stopped: AtomicBool,
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
        tracing::info!(
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
            stopped: AtomicBool::new(false),
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

/// Open the engine and the control API off the main thread, then bring up
/// what needs them (the popover, the events' follower, the signals, the
/// balancer when `start`). The tray icon exists already: opening reads the
/// keychain (the control token, the balancer's key), and macOS may ask the
/// user about it first; on the main thread that question would hang the
/// app with no icon in the menu bar.
pub fn open_in_background(app: AppHandle, listen: Option<SocketAddr>, start: bool) {
    tauri::async_runtime::spawn(async move {
        let shell = match Shell::open(listen).await {
            Ok(s) => s,
            Err(e) => {
                fatal(&app, &e).await;
                std::process::exit(1);
            }
        };
        app.manage(shell);
        if let Err(e) = windows::create_popover(&app) {
            tracing::error!("cannot create the popover: {e}");
        }
        follow::spawn(app.clone());
        quit_on_signals(app.clone());
        if start {
            start_if_configured(app);
        }
    });
}

/// The engine could not open (a broken workers file, no home directory):
/// say so where a menu-bar user will see it (a notification, and the log
/// for details); the caller exits then.
pub async fn fatal(app: &AppHandle, error: &str) {
    tracing::error!("{error}");
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
    // The plugin delivers from a task of its own: exiting at once loses it.
    tokio::time::sleep(notify::DELIVERY).await;
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
    let Some(shell) = app.try_state::<Shell>() else {
        // Still opening: nothing to stop yet.
        app.exit(0);
        return;
    };
    if shell.quitting.swap(true, Ordering::SeqCst) {
        return;
    }
    for w in app.webview_windows().values() {
        let _ = w.hide();
    }
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        stop(&app, QUIT_LIMIT).await;
        app.exit(0);
    });
}

/// The process ends without Quit (`RunEvent::Exit`): at logout or restart
/// macOS terminates the app (`applicationWillTerminate`, which tao 0.37.2
/// turns into its last event, tauri's `RunEvent::Exit`, with no exit
/// request before it that could be held back: `src/platform_impl/macos/
/// app_delegate.rs`). Stop the engine then, within [`EXIT_LIMIT`], on this
/// (the main) thread, since nothing runs after this returns.
pub fn stop_now(app: &AppHandle) {
    if app
        .try_state::<Shell>()
        .is_none_or(|s| s.stopped.load(Ordering::SeqCst))
    {
        return;
    }
    tracing::info!("exiting without Quit: stopping the engine");
    tauri::async_runtime::block_on(stop(app, EXIT_LIMIT));
}

/// Stop the balancer (answers in flight finish within their grace) and the
/// control API, within `limit`.
async fn stop(app: &AppHandle, limit: Duration) {
    let shell = app.state::<Shell>();
    if shell.stopped.swap(true, Ordering::SeqCst) {
        return;
    }
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
    if tokio::time::timeout(limit, stop).await.is_err() {
        tracing::warn!("stopping took over {limit:?}; quitting anyway");
    }
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
