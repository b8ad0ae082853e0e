//! Tests that need a part this machine may lack (root for network
//! namespaces, llama-server, a Python client, Chromium, a display): outside
//! CI they are skipped, never silently; under `CI=true` they fail.
//!
//! A skip is recorded and, when the test binary exits (after libtest's own
//! `test result:` line, which counts a skipped test as passed), listed with
//! its reason and counted:
//!
//! ```text
//! SKIPPED: netns::reliability::seed_000_a_black_holed_studio_costs_nothing: not root: ...
//! skipped: 1 test, 0 partly (of the passed above; CI=true fails them instead)
//! ```
//!
//! `.ci/run` adds these up into its summary. Shared by the engine's tests,
//! its benches and the app's tests (`#[path]`), so all three say it alike.
#![allow(dead_code)] // each test binary uses its own part

use std::io::Write;
use std::sync::{Mutex, Once};

/// What was skipped so far in this process: (test, part, why).
static SKIPS: Mutex<Vec<(String, Option<String>, String)>> = Mutex::new(Vec::new());

/// Whether this is CI (`CI=true`), where nothing may be skipped.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The running test's full name: libtest names each test's thread after it
/// (`module::test_name`).
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("(outside a test)")
        .to_string()
}

/// `true`: go on. `false`: this machine lacks what the test needs
/// (`missing` says what, and how to get it); the test must return at once.
/// Recorded and reported as skipped; under `CI=true` a panic instead.
#[must_use = "return from the test when this is false"]
pub fn can_run(missing: Option<String>) -> bool {
    decide(None, missing)
}

/// Skip the running test because `why` (it must return at once); under
/// `CI=true` a panic instead.
pub fn skip_test(why: String) {
    decide(None, Some(why));
}

/// The same for one part of a test (`part`, e.g. one README line): the
/// rest of the test goes on either way.
#[must_use = "leave the part out when this is false"]
pub fn can_run_part(part: &str, missing: Option<String>) -> bool {
    decide(Some(part.to_string()), missing)
}

fn decide(part: Option<String>, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return true;
    };
    let test = current_test();
    let what = match &part {
        Some(p) => format!("{test} ({p})"),
        None => test.clone(),
    };
    if under_ci() {
        panic!("{what}: CI=true, so it must run, but {why}");
    }
    // Shown at once under --nocapture; the summary comes at exit.
    eprintln!("SKIPPED: {what}: {why}");
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain `extern "C"` function once.
        unsafe {
            libc::atexit(report_at_exit);
        }
    });
    SKIPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((test, part, why));
    false
}

/// Runs as the process exits, after libtest's summary line.
extern "C" fn report_at_exit() {
    // A test thread that panicked while holding the lock must not hide
    // the list; one still running at exit must not block it.
    let skips = match SKIPS.try_lock() {
        Ok(s) => s.clone(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    let mut text = String::new();
    let mut whole = std::collections::BTreeSet::new();
    let mut partly = std::collections::BTreeSet::new();
    for (test, part, why) in &skips {
        match part {
            Some(p) => {
                partly.insert(test.clone());
                text.push_str(&format!("SKIPPED: {test} ({p}): {why}\n"));
            }
            None => {
                whole.insert(test.clone());
                text.push_str(&format!("SKIPPED: {test}: {why}\n"));
            }
        }
    }
    let partly = partly.difference(&whole).count();
    text.push_str(&format!(
        "skipped: {} test{}, {partly} partly (of the passed above; CI=true fails them instead)\n",
        whole.len(),
        if whole.len() == 1 { "" } else { "s" }
    ));
    // Straight to the process's stderr: libtest's capture is long gone.
    let _ = std::io::stderr().write_all(text.as_bytes());
}
