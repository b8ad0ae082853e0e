//! The dashboard in a real browser: `baton dashboard` over simulated studios
//! on 127.0.0.x, driven by headless Chromium (Playwright, `tests/ui/day.mjs`)
//! through the user's day. Screenshots of every view land in
//! `target/tmp/ui-screenshots/`.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_users_day_in_the_dashboard_works_in_a_real_browser() {
    let ui = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    if let Some(why) = unavailable(&ui) {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the browser test must run in CI: {why}");
        }
        eprintln!("SKIPPED (browser test): {why}");
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Two studios to discover on 127.0.0.8/29, on LM Studio's port.
    let _sims: Vec<baton::sim::SimHandle> = rt.block_on(async {
        let mut v = Vec::new();
        for (i, ip) in ["127.0.0.9", "127.0.0.10"].iter().enumerate() {
            v.push(
                baton::sim::start(
                    format!("{ip}:1234").parse().unwrap(),
                    baton::sim::SimConfig {
                        ttft: Duration::from_millis(50),
                        tokens_per_second: 200.0,
                        seed: i as u64 + 1,
                        ..Default::default()
                    },
                )
                .await
                .expect("loopback addresses 127.0.0.9 and .10 port 1234 are free"),
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
    let child = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["dashboard", "--no-open", "--control-port", "0", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("-c")
        .arg(dir.path().join("workers.json"))
        .env("XDG_CONFIG_HOME", dir.path().join("config"))
        .env("XDG_DATA_HOME", dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut dash = Kill(child);
    let out = dash.0.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("baton dashboard printed its address")
            .unwrap();
        if let Some((_, u)) = line.split_once("dashboard: ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
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
