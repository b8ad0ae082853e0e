//! `baton report`: a run as one HTML file, rendered offline in headless
//! Chromium (Playwright, `tests/ui/report.mjs`); its screenshot lands in
//! `target/tmp/ui-screenshots/report.png`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use baton::bench::report::{BenchResult, Slo};
use baton::bench::run::{self, Mode, Plan};
use support::{BatonCmd, plan};
use tokio_util::sync::CancellationToken;

/// Why the browser cannot run here, if it cannot.
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

/// A sweep with its diagnosis, and a capacity search, of two studios.
async fn a_run() -> BenchResult {
    let sims = support::start_sims([
        support::sim_cfg(2, 20, 400.0),
        support::sim_cfg(2, 20, 200.0),
    ])
    .await;
    let cfg = support::pool(&sims);
    let quiet = || Arc::new(support::Quiet);
    let sweep = Plan {
        mode: Mode::Both,
        worker_counts: vec![1, 2],
        probe_studios: true,
        ..plan(cfg.clone(), &[1, 4], 0.6)
    };
    let mut r = run::run(&sweep, quiet(), CancellationToken::new())
        .await
        .unwrap();
    let search = Plan {
        mode: Mode::Capacity,
        max_tokens: 10,
        duration: None,
        probe_studios: true,
        slo: Slo {
            ttft_p95_ms: Some(100.0),
            tokens_per_s: Some(20.0),
        },
        ..plan(cfg, &[], 1.0)
    };
    let c = run::run(&search, quiet(), CancellationToken::new())
        .await
        .unwrap();
    r.capacity = c.capacity;
    r
}

#[test]
fn a_report_renders_offline_in_a_browser_with_every_section_and_no_request() {
    let ui = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    if !support::skip::can_run(
        unavailable(&ui).map(|why| format!("the report's browser test: {why}")),
    ) {
        return;
    }
    let r = tokio::runtime::Runtime::new().unwrap().block_on(a_run());
    assert!(r.capacity.is_some() && r.diagnosis.is_some());
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("run.json");
    std::fs::write(&results, serde_json::to_string(&r).unwrap()).unwrap();
    let html = dir.path().join("report.html");
    let out = BatonCmd::new(["report"])
        .arg(&results)
        .arg("-o")
        .arg(&html)
        .home(dir.path())
        .output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&html).unwrap();
    assert!(text.contains("Content-Security-Policy"));
    // Nothing to fetch: no script, no stylesheet or image by address.
    for banned in ["<script", "<link", "src=\"http", "url(http"] {
        assert!(!text.contains(banned), "{banned} in the report");
    }
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let status = Command::new("node")
        .arg("report.mjs")
        .current_dir(&ui)
        .env("BATON_REPORT", &html)
        .env("BATON_SCREENSHOTS", &shots)
        .status()
        .unwrap();
    eprintln!("screenshot: {}", shots.join("report.png").display());
    assert!(
        status.success(),
        "the report failed in the browser (see above)"
    );
}
