//! Log setup: `tracing` to stderr, filtered by `BATON_LOG` (default `info`);
//! for the menu-bar app also to a file, since an app opened from Finder has
//! no stderr anyone reads.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A log file larger than this at start is kept as `<name>.1` and a new one
/// begun, so the logs never grow without bound.
const ROLL_AT: u64 = 5 * 1024 * 1024;

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("BATON_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Install the global subscriber. Safe to call more than once.
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Where the app's logs go: `~/Library/Logs/Baton` on macOS (where Console
/// looks), the platform's data directory elsewhere
/// (`~/.local/share/baton/logs` on Linux).
pub fn log_dir() -> Option<PathBuf> {
    if cfg!(target_os = "macos") {
        directories::BaseDirs::new().map(|d| d.home_dir().join("Library/Logs/Baton"))
    } else {
        directories::ProjectDirs::from("dev", "Baton", "baton").map(|d| d.data_dir().join("logs"))
    }
}

/// [`init`], and the same lines appended to `file` (created with its
/// directory; a large one is rolled over first). If the file cannot be
/// opened, logs go to stderr only and the error is returned.
pub fn init_with_file(file: &Path) -> std::io::Result<()> {
    let (opened, error) = match open_log(file) {
        Ok(f) => (Some(f), None),
        Err(e) => (None, Some(e)),
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal());
    let to_file = opened.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(Mutex::new(f))
            .with_target(false)
            .with_ansi(false)
    });
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(stderr)
        .with(to_file)
        .try_init();
    error.map_or(Ok(()), Err)
}

fn open_log(file: &Path) -> std::io::Result<std::fs::File> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if std::fs::metadata(file).is_ok_and(|m| m.len() > ROLL_AT) {
        let mut old = file.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(file, old)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_log_is_rolled_over_and_a_new_one_begun() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deep/er/baton-app.log");
        drop(open_log(&file).unwrap());
        assert!(file.exists(), "the directory and file are created");
        std::fs::write(&file, vec![b'x'; ROLL_AT as usize + 1]).unwrap();
        let f = open_log(&file).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 0);
        let old = dir.path().join("deep/er/baton-app.log.1");
        assert_eq!(
            std::fs::metadata(old).unwrap().len(),
            ROLL_AT + 1,
            "the old log is kept once"
        );
    }
}
