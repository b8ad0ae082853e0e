//! Baton's menu-bar app: the engine and its control API in this process,
//! the dashboard (`ui/`, served by the control API) in its windows, and a
//! tray icon and menu that follow the engine's events. No engine logic
//! lives here: every action is one call on [`baton::engine::Engine`].
//!
//! - `shell`: what the app holds (engine, control API) and how it quits
//! - `tray`: the icon's look and the menu, from the engine's events
//! - `windows`: the popover under the icon and the dashboard window
//! - `notify`: a notification when a studio goes down or comes back
//! - `follow`: the one subscriber of the engine's events that feeds both

// A GUI app on Windows must not open a console; harmless elsewhere.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

mod follow;
mod notify;
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
    baton::logging::init();
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
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
            windows::show_popover(app, false);
        }))
        .plugin(tauri_plugin_positioner::init())
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
            let shell = match tauri::async_runtime::block_on(shell::Shell::open(args.listen)) {
                Ok(s) => s,
                Err(e) => {
                    shell::fatal(app.handle(), &e);
                    std::process::exit(1);
                }
            };
            app.manage(shell);
            windows::create_popover(app.handle())?;
            tray::create(app.handle())?;
            follow::spawn(app.handle().clone());
            shell::quit_on_signals(app.handle().clone());
            if !args.no_balancer {
                shell::start_if_configured(app.handle().clone());
            }
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
    app.run(|app, event| {
        // Only Quit ends the app, since it stops the engine first: with every
        // window hidden there is still the tray, and any other exit request
        // goes through Quit.
        if let RunEvent::ExitRequested { code, api, .. } = event
            && !shell::quitting(app)
        {
            api.prevent_exit();
            if code.is_some() {
                shell::quit(app);
            }
        }
    });
    ExitCode::SUCCESS
}
