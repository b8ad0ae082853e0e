//! What the app's end-to-end tests share: the real `baton-app` binary in a
//! throwaway home, a workers file pointing at simulated studios this test
//! process runs, and ways to look at the app from outside (HTTP, D-Bus).
//!
//! Run them with `xvfb-run -a dbus-run-session -- cargo test -p baton-app`.
//! Without a display or a session bus they say SKIPPED and are counted as
//! the engine's tests do (`tests/support/skip.rs`), except under `CI=true`,
//! where they must run.

#![allow(dead_code)] // each test module uses its own part of this module

pub mod dbus;
/// The engine's tests' way to skip: SKIPPED, counted at exit, a failure
/// under `CI=true`.
#[path = "../../../../tests/support/skip.rs"]
pub mod skip;
pub mod webdriver;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton::config::{BalancerSettings, Config};
use baton::sim::{self, SimConfig, SimHandle};

pub const APP: &str = env!("CARGO_BIN_EXE_baton-app");

/// One app at a time: two would share the session bus, and the second
/// would hand over to the first (one instance only).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Whether the app's tests can run here (a display, a session bus, and
/// WebDriver when `needs_webdriver`); `false` after saying SKIPPED and why:
/// the test returns at once. Under `CI=true` a missing piece fails it.
#[must_use = "return from the test when this is false"]
pub fn can_run(needs_webdriver: bool) -> bool {
    skip::can_run(missing(needs_webdriver).map(|why| format!("the app's tests: {why}")))
}

/// `None` when the tests can run here; else why not.
fn missing(needs_webdriver: bool) -> Option<String> {
    let mut why = Vec::new();
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        why.push("no display (run under `xvfb-run -a`)".to_string());
    }
    if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() {
        why.push("no session bus (run under `dbus-run-session --`)".to_string());
    }
    if needs_webdriver {
        if tauri_driver().is_none() {
            why.push(
                "no tauri-driver (`cargo install tauri-driver --version \"^2\" --locked`)".into(),
            );
        }
        if !Path::new(WEBKIT_DRIVER).exists() {
            why.push(format!("no {WEBKIT_DRIVER} (Debian: webkit2gtk-driver)"));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

pub const WEBKIT_DRIVER: &str = "/usr/bin/WebKitWebDriver";

pub fn tauri_driver() -> Option<PathBuf> {
    let cargo_bin =
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tauri-driver"));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("tauri-driver"))
        .chain(cargo_bin)
        .find(|p| p.is_file())
}

pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A throwaway home with a workers file naming the given studios and a
/// balancer on a free port: the same files the CLI would use there.
pub struct Home {
    pub dir: tempfile::TempDir,
    pub balancer_port: u16,
}

impl Home {
    pub fn new(studios: &[(&str, &SimHandle)]) -> Home {
        let dir = tempfile::tempdir().expect("temp dir");
        let balancer_port = free_port();
        let config = Config {
            workers: studios
                .iter()
                .map(|(id, s)| sim::worker_for(id, s))
                .collect(),
            balancer: BalancerSettings {
                listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, balancer_port))),
                ..BalancerSettings::default()
            },
            aliases: Default::default(),
            fallbacks: Default::default(),
        };
        let home = Home { dir, balancer_port };
        let file = home.workers_file();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, config.to_text()).unwrap();
        home
    }

    /// A home where Baton never ran: no workers file (the app's first run).
    pub fn empty() -> Home {
        Home {
            dir: tempfile::tempdir().expect("temp dir"),
            balancer_port: free_port(),
        }
    }

    pub fn workers_file(&self) -> PathBuf {
        self.config_dir().join("baton/workers.json")
    }

    /// The app's log file in this home (Linux: the data directory).
    pub fn log_file(&self) -> PathBuf {
        self.dir
            .path()
            .join(".local/share/baton/logs/baton-app.log")
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join(".config")
    }

    /// The environment the app runs in: this home, nothing of the user's.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("HOME", self.dir.path().to_path_buf()),
            ("XDG_CONFIG_HOME", self.config_dir()),
            ("XDG_DATA_HOME", self.dir.path().join(".local/share")),
            ("XDG_CACHE_HOME", self.dir.path().join(".cache")),
            // No accessibility bus: nothing here reads it, and it is one
            // more process per launch.
            ("NO_AT_BRIDGE", "1".into()),
        ]
    }

    pub fn balancer(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.balancer_port))
    }
}

/// A simulated studio on 127.0.0.1 (a free port).
pub async fn studio(seed: u64) -> SimHandle {
    sim::start(
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        SimConfig {
            slots: 2,
            tokens_per_second: 50.0,
            ttft: Duration::from_millis(50),
            seed,
            ..SimConfig::default()
        },
    )
    .await
    .expect("a simulated studio")
}

/// The app, started directly (not through WebDriver), with its output kept.
pub struct App {
    pub child: Child,
    pub output: Arc<Mutex<String>>,
}

impl App {
    pub fn start(home: &Home, args: &[&str]) -> App {
        let mut child = Command::new(APP)
            .args(args)
            .envs(home.env())
            .env("BATON_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start baton-app");
        let output = Arc::new(Mutex::new(String::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        App { child, output }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// The control API's address, from the line the app prints at start.
    pub fn control_api(&self, within: Duration) -> SocketAddr {
        let found = wait_for(within, || {
            self.output()
                .lines()
                .find_map(|l| l.split("control API on http://").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok())
        });
        found.unwrap_or_else(|| {
            panic!(
                "the app did not say where its control API is; output:\n{}",
                self.output()
            )
        })
    }

    /// Wait for the process to end.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        wait_for(within, || self.child.try_wait().ok().flatten())
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A progress line (shown with `--nocapture`, and in a failing test's output).
pub fn step(what: &str) {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed();
    eprintln!("[{:6.1}s] {what}", t.as_secs_f64());
}

/// Poll `f` until it gives something or time is up.
pub fn wait_for<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET path` on `addr` with a plain HTTP/1.1 request: the status code, or
/// the connect error (a refused port is what "stopped" means).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// The balancer answers `GET /v1/models` with 200.
pub fn balancer_answers(addr: SocketAddr) -> bool {
    matches!(http_get(addr, "/v1/models"), Ok((200, _)))
}

/// Nothing listens there any more.
pub fn refused(addr: SocketAddr) -> bool {
    matches!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// A streamed chat completion through the balancer, read to its end: what
/// came back (the `[DONE]` line, or how it ended).
pub fn stream_chat(addr: SocketAddr, max_tokens: u32) -> String {
    let run = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        let body = format!(
            r#"{{"model":"{}","stream":true,"max_tokens":{max_tokens},"messages":[{{"role":"user","content":"count slowly"}}]}}"#,
            sim::DEFAULT_MODEL
        );
        write!(
            s,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text)
    };
    match run() {
        Ok(t) => t,
        Err(e) => format!("error: {e}"),
    }
}

/// Where screenshots go: `$BATON_APP_SCREENSHOTS`, else
/// `<target>/app-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    let dir = std::env::var_os("BATON_APP_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .parent()
                .expect("target dir")
                .join("app-screenshots")
        });
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// Assert the app never printed its control token (the windows get it in
/// a URL fragment; nothing else may).
pub fn assert_no_token(output: &str) {
    assert!(
        !output.contains("token="),
        "the app printed a token-bearing URL:\n{output}"
    );
    // The per-install token itself, when this process can read the keychain
    // entry the app used (read only: a test must not create one).
    if let Ok(token) = baton::secrets::get_own(baton::secrets::Own::ControlToken) {
        assert!(
            !output.contains(&token),
            "the app printed its control token:\n{output}"
        );
    }
}

/// Labels of a menu, for messages.
pub fn labels(items: &[dbus::Item]) -> Vec<String> {
    items
        .iter()
        .filter(|i| i.kind != "separator")
        .map(|i| i.label.clone())
        .collect()
}

pub type Props = HashMap<String, String>;
