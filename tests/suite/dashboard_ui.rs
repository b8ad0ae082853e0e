//! The dashboard in a real browser: `baton dashboard` over simulated studios
//! on 127.0.0.x, driven by headless Chromium (Playwright, `tests/ui/day.mjs`)
//! through the user's day. Screenshots of every view land in
//! `target/tmp/ui-screenshots/`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{BatonCmd, SimCfgExt};

/// Why the browser test cannot run here, if it cannot.
fn unavailable(ui: &Path) -> Option<String> {
    let chromium = std::env::var("BATON_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Some(format!(
            "no Chromium at {chromium} (Debian: apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on the PATH".into());
    }
    if !ui.join("node_modules/playwright-core").exists() {
        return Some(format!(
            "Playwright is not installed: cd {} && npm ci",
            ui.display()
        ));
    }
    None
}

#[test]
fn a_users_day_in_the_dashboard_works_in_a_real_browser() {
    let ui = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    if !support::skip::can_run(unavailable(&ui).map(|why| format!("the browser test: {why}"))) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two studios to discover on 127.0.0.8/29, on LM Studio's port.
    let _sims: Vec<baton::sim::SimHandle> = rt.block_on(async {
        let mut v = Vec::new();
        for (i, ip) in [[127, 0, 0, 9], [127, 0, 0, 10]].into_iter().enumerate() {
            v.push(
                support::start_sim_at(
                    (ip, 1234),
                    // A second model on disk, for the Models view.
                    baton::sim::SimConfig {
                        loaded: Some(vec![baton::sim::DEFAULT_MODEL.into()]),
                        ..support::sim_cfg(4, 50, 200.0)
                            .with_seed(i as u64 + 1)
                            .with_models(&[baton::sim::DEFAULT_MODEL, "qwen3-14b"])
                    },
                )
                .await,
            );
        }
        v
    });
    let dir = tempfile::tempdir().unwrap();
    let lab = dir.path().join("lab.json");
    std::fs::write(
        &lab,
        serde_json::json!({
            "cidr": "127.0.0.8/29",
            "studios": 2,
            "refusing": {"host": "127.0.0.15", "port": 1234},
            "model": baton::sim::DEFAULT_MODEL,
        })
        .to_string(),
    )
    .unwrap();
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let mut dash = BatonCmd::new(["dashboard", "--no-open", "--control-port", "0", "--listen"])
        .arg(format!("127.0.0.1:{}", support::free_port()))
        .arg("-c")
        .arg(dir.path().join("workers.json"))
        .home(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let url = dash.stdout_after("dashboard: ");
    let status = Command::new("node")
        .arg("day.mjs")
        .current_dir(&ui)
        .env("BATON_DASHBOARD_URL", &url)
        .env("BATON_SCREENSHOTS", &shots)
        .env("BATON_LAB", &lab)
        .status()
        .unwrap();
    eprintln!("screenshots: {}", shots.display());
    assert!(
        status.success(),
        "the walk through the dashboard failed (see above)"
    );
}
