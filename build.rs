//! Build script: stamps the version string with the git commit, when known,
//! so `baton --version` says exactly what is running. (The dashboard in
//! ui/ is embedded by rust-embed in src/control/assets.rs.)

use std::process::Command;

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=9", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let full = match commit {
        Some(c) => format!("{version} ({c})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=BATON_VERSION={full}");
    // Watch only paths that exist: in a git worktree `.git` is a file, and
    // a missing path would make Cargo rerun this script on every build.
    for p in [".git/HEAD", ".git/refs/heads"] {
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if !std::path::Path::new(".git/HEAD").exists() {
        println!("cargo:rerun-if-changed=build.rs");
    }
}
