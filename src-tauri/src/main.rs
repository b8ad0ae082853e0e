//! Baton's menu-bar app: the engine and its control API in this process,
//! the dashboard (`ui/`, served by the control API) in its windows, and a
//! tray icon and menu that follow the engine's events. No engine logic
//! lives here: every action is one call on [`baton::engine::Engine`].
//!
//! - `shell`: what the app holds (engine, control API) and how it quits
//! - `tray`: the icon's look and the menu, from the engine's events
//! - `windows`: the popover under the icon and the dashboard window
//! - `placement`: where the popover goes (a pure function of the screens)
//! - `notify`: a notification when a studio goes down or comes back
//! - `follow`: the one subscriber of the engine's events that feeds them
//! - `login`: Launch at Login as the login item's file says
//! - `nap`: App Nap held off while the balancer serves (macOS)
//! - `logs`: the log file and Reveal Logs

// A GUI app on Windows must not open a console; harmless elsewhere.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod follow;
mod login;
mod logs;
mod nap;
mod notify;
mod placement;
mod shell;
mod tray;
mod windows;

use std::process::ExitCode;

use tauri::{Manager, RunEvent, WindowEvent};

/// Command line: the app takes no arguments but these (a login item starts
/// it with none).
struct Args {
    /// Leave the balancer stopped at launch (start it from the menu).
    no_balancer: bool,
    /// Where the balancer listens, over the workers file's address.
    listen: Option<std::net::SocketAddr>,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut a = Args {
            no_balancer: false,
            listen: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--no-balancer" => a.no_balancer = true,
                "--listen" => {
                    let v = args.next().unwrap_or_default();
                    a.listen = Some(v.parse().map_err(|_| {
                        format!("--listen `{v}` is not an address\n  fix: give IP:PORT, e.g. --listen 127.0.0.1:8421")
                    })?);
                }
                "-h" | "--help" => {
                    println!(
                        "baton-app {}: Baton in the menu bar\n\nUsage: baton-app [--no-balancer] [--listen IP:PORT]\n\n  --no-balancer     do not start the balancer at launch (start it from the menu)\n  --listen IP:PORT  where the balancer listens (default: the workers file's, else 127.0.0.1:8421)\n\nThe workers file, history and settings are the CLI's (`baton config path`).",
                        env!("CARGO_PKG_VERSION")
                    );
                    std::process::exit(0);
                }
                other => {
                    return Err(format!(
                        "unknown argument `{other}`\n  fix: run `baton-app --help` for the options"
                    ));
                }
            }
        }
        Ok(a)
    }
}

fn main() -> ExitCode {
    // To stderr and to a file: opened from Finder, the app's stderr goes
    // nowhere anyone looks.
    let log_file = logs::path();
    match &log_file {
        Some(f) => {
            if let Err(e) = baton::logging::init_with_file(f) {
                tracing::warn!("cannot write the log file {}: {e}", f.display());
            }
        }
        None => baton::logging::init(),
    }
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // launchd starts apps with a soft limit of 256 open files; the balancer
    // holds a socket per client and per studio connection.
    match baton::limits::raise_open_files() {
        Ok((before, after)) => tracing::info!("open-files limit {after} (was {before})"),
        Err(e) => tracing::warn!("could not raise the open-files limit: {e}"),
    }
    // One multi-threaded runtime for the engine and Tauri's async tasks, so
    // the balancer never shares a thread with the UI's event loop.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("baton")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tauri::async_runtime::set(runtime.handle().clone());

    let app = tauri::Builder::default()
        // First: a second launch must hand over and exit before anything
        // else (the engine, the control API) starts in it.
        .plugin(tauri_plugin_single_instance::init(|app, _argv, _cwd| {
            windows::show_popover(app);
        }))
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_clipboard_manager::init())
        .plugin(tauri_plugin_autostart::init(
            tauri_plugin_autostart::MacosLauncher::LaunchAgent,
            None,
        ))
        .invoke_handler(tauri::generate_handler![windows::open_dashboard]);
    // The menu bar's menu while a window is in front (macOS): Edit, so that
    // copy and paste work in the dashboard's fields, and a Quit that stops
    // the engine cleanly. Elsewhere it would be a menu bar in every window.
    #[cfg(target_os = "macos")]
    let app = app.menu(windows::app_menu);
    let app = app
        .setup(move |app| {
            // No Dock icon: Baton lives in the menu bar.
            #[cfg(target_os = "macos")]
            app.set_activation_policy(tauri::ActivationPolicy::Accessory);
            app.manage(logs::LogFile(log_file));
            // The icon first, so Baton is visible while the engine opens
            // (and the keychain may ask about it) off the main thread.
            tray::create(app.handle())?;
            shell::open_in_background(app.handle().clone(), args.listen, !args.no_balancer);
            Ok(())
        })
        .on_window_event(|window, event| match event {
            // Closing a window hides it: the app keeps serving from the menu bar.
            WindowEvent::CloseRequested { api, .. } => {
                api.prevent_close();
                let _ = window.hide();
            }
            WindowEvent::Focused(false) if window.label() == windows::POPOVER => {
                windows::popover_lost_focus(window.app_handle());
            }
            _ => {}
        })
        .build(tauri::generate_context!());
    let app = match app {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "error: cannot start the app: {e}\n  fix: on Linux, install the WebKitGTK and AppIndicator libraries (see the README's Menu-bar app section) and run it inside a desktop session"
            );
            return ExitCode::FAILURE;
        }
    };
    app.run(|app, event| match event {
        // Only Quit ends the app, since it stops the engine first: with every
        // window hidden there is still the tray, and any other exit request
        // goes through Quit.
        RunEvent::ExitRequested { code, api, .. } if !shell::quitting(app) => {
            api.prevent_exit();
            if code.is_some() {
                shell::quit(app);
            }
        }
        // Logout, restart: the system ends the app without asking.
        RunEvent::Exit => shell::stop_now(app),
        // Opened again from Finder, Spotlight or the Dock while running:
        // macOS sends the running app a reopen event (NSApplicationDelegate
        // `applicationShouldHandleReopen:hasVisibleWindows:`; tauri 2.12.5
        // `RunEvent::Reopen`), not a second process, so the single-instance
        // plugin never hears of it.
        #[cfg(target_os = "macos")]
        RunEvent::Reopen { .. } => windows::show_popover(app),
        _ => {}
    });
    ExitCode::SUCCESS
}
