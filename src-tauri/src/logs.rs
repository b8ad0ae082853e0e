//! The app's log file (`~/Library/Logs/Baton/baton-app.log` on macOS,
//! `~/.local/share/baton/logs/baton-app.log` on Linux): an app opened from
//! Finder has no stderr, so this is where its messages can be read, and the
//! menu's Reveal Logs shows it.

use std::path::{Path, PathBuf};

use tauri::{AppHandle, Manager};

/// Where this run logs (managed state; `None` without a home directory).
pub struct LogFile(pub Option<PathBuf>);

/// The log file's path for this user.
pub fn path() -> Option<PathBuf> {
    baton::logging::log_dir().map(|d| d.join("baton-app.log"))
}

/// Show the log: selected in Finder on macOS (`open -R`), its folder in
/// the file manager elsewhere.
pub fn reveal(app: &AppHandle) {
    let Some(file) = app.try_state::<LogFile>().and_then(|f| f.0.clone()) else {
        tracing::warn!("no log file to reveal (no home directory)");
        return;
    };
    let (program, args) = reveal_command(&file);
    if let Err(e) = std::process::Command::new(program)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        tracing::warn!("cannot reveal {} with {program}: {e}", file.display());
    }
}

fn reveal_command(file: &Path) -> (&'static str, Vec<String>) {
    if cfg!(target_os = "macos") {
        ("open", vec!["-R".into(), file.display().to_string()])
    } else {
        let dir = file.parent().unwrap_or(file);
        ("xdg-open", vec![dir.display().to_string()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reveal_selects_the_file_on_macos_and_opens_its_folder_elsewhere() {
        let (program, args) = reveal_command(Path::new("/home/me/logs/baton-app.log"));
        if cfg!(target_os = "macos") {
            assert_eq!(
                (program, args.as_slice()),
                (
                    "open",
                    &["-R".to_string(), "/home/me/logs/baton-app.log".into()][..]
                )
            );
        } else {
            assert_eq!(
                (program, args.as_slice()),
                ("xdg-open", &["/home/me/logs".to_string()][..])
            );
        }
        assert!(path().is_some_and(|p| p.ends_with("baton-app.log")));
    }
}
