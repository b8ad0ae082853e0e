//! The menu-bar app's end-to-end tests, in one binary (each test binary
//! links Tauri and WebKitGTK, so one link instead of five): the real
//! `baton-app` in a throwaway home against simulated studios, under a
//! display and a session bus. Run them with
//! `xvfb-run -a dbus-run-session -- cargo test -p baton-app`; the app is
//! one instance per session bus, so they take turns (`common::serial`).

mod common;

mod first_run;
mod notifications;
mod popover;
mod readme;
mod tray;
