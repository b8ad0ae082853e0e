//! Launch at Login: what the login item really says, read from its file
//! each time the menu may show it, and re-pointed at this app when the app
//! was moved.
//!
//! tauri-plugin-autostart 2.7.0 (the version in `Cargo.lock`) offers a
//! LaunchAgent or an AppleScript login item on macOS, not `SMAppService`
//! (auto-launch 0.6.0 underneath has it, the plugin does not expose it), so
//! Baton uses the LaunchAgent: `~/Library/LaunchAgents/Baton.plist`, whose
//! `ProgramArguments` holds the absolute path of the executable inside the
//! bundle (auto-launch `src/macos.rs`, `build_launch_agent_plist`). On Linux
//! it is the XDG entry `~/.config/autostart/Baton.desktop` with that path in
//! `Exec=`. Its limitation: the path is fixed when the item is written. An
//! app moved elsewhere (out of Downloads into Applications, say) leaves an
//! item pointing nowhere; the plugin still calls that "enabled" because the
//! file exists. So Baton reads the path itself: such an item shows as off,
//! and the next launch from the new place re-points it.

use std::path::{Path, PathBuf};

use tauri::AppHandle;
use tauri_plugin_autostart::ManagerExt as _;

/// The login item's state for this app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginItem {
    /// No login item.
    Off,
    /// A login item that starts this very executable.
    On,
    /// A login item that starts another path (the app was moved, or another
    /// copy wrote it).
    Stale { program: String },
}

impl LoginItem {
    pub fn is_on(&self) -> bool {
        *self == LoginItem::On
    }
}

/// The state, from the login item's file (`None`: there is none) and the
/// executable the item should start.
pub fn state(entry: Option<&str>, exe: &str) -> LoginItem {
    let Some(text) = entry else {
        return LoginItem::Off;
    };
    match program(text) {
        Some(p) if p == exe => LoginItem::On,
        // `Exec=` is not quoted by auto-launch: a path with spaces is the
        // start of the line.
        Some(_) if desktop_exec(text).is_some_and(|line| starts_with_program(line, exe)) => {
            LoginItem::On
        }
        Some(p) => LoginItem::Stale { program: p },
        None => LoginItem::Stale {
            program: String::new(),
        },
    }
}

/// The program a LaunchAgent plist (first string of `ProgramArguments`) or
/// an XDG desktop entry (first word of `Exec=`) starts.
fn program(text: &str) -> Option<String> {
    if let Some(after) = text.split("<key>ProgramArguments</key>").nth(1) {
        let start = after.find("<string>")? + "<string>".len();
        let len = after[start..].find("</string>")?;
        return Some(unescape_xml(&after[start..start + len]));
    }
    let line = desktop_exec(text)?;
    Some(line.split(' ').next().unwrap_or(line).to_string())
}

fn desktop_exec(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.trim().strip_prefix("Exec="))
}

fn starts_with_program(line: &str, exe: &str) -> bool {
    line.strip_prefix(exe)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '))
}

fn unescape_xml(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// Where the plugin writes the login item (`None` elsewhere than macOS and
/// Linux, where the plugin's own answer is used).
fn entry_path(home: &Path, name: &str) -> Option<PathBuf> {
    if cfg!(target_os = "macos") {
        Some(
            home.join("Library/LaunchAgents")
                .join(format!("{name}.plist")),
        )
    } else if cfg!(target_os = "linux") {
        Some(
            home.join(".config/autostart")
                .join(format!("{name}.desktop")),
        )
    } else {
        None
    }
}

/// The executable as the plugin registers it: canonical on macOS, the
/// AppImage's path when run from one on Linux (tauri-plugin-autostart
/// 2.7.0 `src/lib.rs`, `Builder::build`).
fn registered_exe(app: &AppHandle) -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    #[cfg(target_os = "macos")]
    let _ = app;
    #[cfg(target_os = "macos")]
    let exe = exe.canonicalize().ok()?;
    #[cfg(target_os = "linux")]
    let exe = tauri::Manager::env(app)
        .appimage
        .map(PathBuf::from)
        .unwrap_or(exe);
    #[cfg(not(any(target_os = "macos", target_os = "linux")))]
    let _ = app;
    Some(exe.display().to_string())
}

/// The login item's state now.
pub fn read(app: &AppHandle) -> LoginItem {
    let name = &app.package_info().name;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    match (home.and_then(|h| entry_path(&h, name)), registered_exe(app)) {
        (Some(path), Some(exe)) => state(std::fs::read_to_string(path).ok().as_deref(), &exe),
        // Elsewhere: what the plugin says.
        _ => match app.autolaunch().is_enabled() {
            Ok(true) => LoginItem::On,
            _ => LoginItem::Off,
        },
    }
}

/// Turn the login item on or off; the state afterwards.
pub fn set(app: &AppHandle, on: bool) -> LoginItem {
    let auto = app.autolaunch();
    let result = if on { auto.enable() } else { auto.disable() };
    if let Err(e) = result {
        tracing::warn!("cannot change Launch at Login: {e}");
    }
    read(app)
}

/// Whether a launch should re-point the login item at itself: only when
/// the item starts a program that is gone (the app was moved). One that
/// still exists is another copy (an installed Baton while a developer runs
/// `cargo run -p baton-app`, say), which keeps its item.
pub fn should_repair(item: &LoginItem, program_exists: impl FnOnce(&str) -> bool) -> bool {
    matches!(item, LoginItem::Stale { program } if !program_exists(program))
}

/// At launch: a login item left pointing at a place the app is no longer
/// (it was moved) is written again for this one, since the user asked for
/// it.
pub fn repair(app: &AppHandle) -> LoginItem {
    let item = read(app);
    if !should_repair(&item, |p| !p.is_empty() && Path::new(p).exists()) {
        return item;
    }
    let now = set(app, true);
    if let LoginItem::Stale { program } = item {
        tracing::info!(
            "Launch at Login started {program:?}, which is gone; {}",
            if now.is_on() {
                "it now starts this app"
            } else {
                "re-pointing it at this app failed"
            }
        );
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A LaunchAgent as auto-launch 0.6.0 writes it.
    fn plist(path: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<plist version=\"1.0\">\n  <dict>\n  <key>Label</key>\n  <string>Baton</string>\n  <key>AssociatedBundleIdentifiers</key>\n  <array></array>\n  <key>ProgramArguments</key>\n  <array><string>{path}</string></array>\n  <key>RunAtLoad</key>\n  <true/>\n  </dict>\n</plist>"
        )
    }

    /// An XDG autostart entry as auto-launch 0.6.0 writes it.
    fn desktop(path: &str) -> String {
        format!(
            "[Desktop Entry]\nType=Application\nVersion=1.0\nName=Baton\nComment=Baton startup script\nExec={path} \nStartupNotify=false\nTerminal=false"
        )
    }

    const APP: &str = "/Applications/Baton.app/Contents/MacOS/baton-app";

    #[test]
    fn no_file_is_off_and_this_executable_is_on() {
        assert_eq!(state(None, APP), LoginItem::Off);
        assert_eq!(state(Some(&plist(APP)), APP), LoginItem::On);
        assert_eq!(
            state(Some(&desktop("/usr/bin/baton-app")), "/usr/bin/baton-app"),
            LoginItem::On
        );
    }

    #[test]
    fn an_item_for_a_moved_app_is_stale_not_on() {
        let old = "/Users/me/Downloads/Baton.app/Contents/MacOS/baton-app";
        assert_eq!(
            state(Some(&plist(old)), APP),
            LoginItem::Stale {
                program: old.into()
            }
        );
        assert!(!state(Some(&plist(old)), APP).is_on());
        assert_eq!(
            state(Some(&desktop("/opt/old/baton-app")), "/usr/bin/baton-app"),
            LoginItem::Stale {
                program: "/opt/old/baton-app".into()
            }
        );
        // A prefix of the path is another program.
        assert!(!state(Some(&desktop("/usr/bin/baton-app2")), "/usr/bin/baton-app").is_on());
    }

    #[test]
    fn paths_with_spaces_and_xml_escapes_are_read_whole() {
        let spaced = "/Users/me/My Apps/Baton.app/Contents/MacOS/baton-app";
        assert_eq!(state(Some(&plist(spaced)), spaced), LoginItem::On);
        assert_eq!(state(Some(&desktop(spaced)), spaced), LoginItem::On);
        let amp = "/Users/me/R&D/Baton.app/Contents/MacOS/baton-app";
        assert_eq!(
            state(
                Some(&plist(
                    "/Users/me/R&amp;D/Baton.app/Contents/MacOS/baton-app"
                )),
                amp
            ),
            LoginItem::On
        );
    }

    #[test]
    fn only_an_item_for_a_program_that_is_gone_is_re_pointed() {
        let moved = LoginItem::Stale {
            program: "/Users/me/Downloads/Baton.app/Contents/MacOS/baton-app".into(),
        };
        assert!(should_repair(&moved, |_| false));
        // Another copy that still exists keeps its item.
        assert!(!should_repair(&moved, |_| true));
        assert!(!should_repair(&LoginItem::On, |_| false));
        assert!(!should_repair(&LoginItem::Off, |_| false));
    }

    #[test]
    fn an_unreadable_item_is_stale() {
        assert_eq!(
            state(Some("garbage"), APP),
            LoginItem::Stale {
                program: String::new()
            }
        );
    }
}
