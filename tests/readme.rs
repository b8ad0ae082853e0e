//! Every command the README shows in a `sh` code block runs here, as
//! written, in README order, in a scratch folder with its own home (so the
//! default workers file is missing and Baton uses its simulated studios):
//! the README cannot drift from what Baton does.
//!
//! How each command is run follows from what it is:
//! - a server (`dashboard`, `serve`, `sim`) runs until it says it is ready,
//!   is used once (a streamed answer through the balancer), then gets
//!   Ctrl-C and must exit cleanly;
//! - `baton discover` scans only inside a network namespace of its own
//!   (loopback only), so no packet reaches a real network;
//! - `baton key ...` uses the keychain: outside CI it is skipped when a
//!   balancer key is already stored (the test would replace it);
//! - `cargo test` is CI itself: it must be a command of `.ci/run`;
//! - commands in a block after `<!-- macos-only -->` must each appear in
//!   `.github/workflows/macos.yml`, which runs them on a Mac;
//! - everything else must exit 0.
//!
//! `sh` blocks hold commands only; usage synopses (`[--flag N]`) live in
//! `text` blocks.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// One command line of a `sh` block (continuation lines joined).
#[derive(Debug, Clone)]
struct Shown {
    /// Which `sh` block (0, 1, ...): a command put in the background with
    /// `&` runs until its block ends.
    block: usize,
    line: usize,
    text: String,
    macos_only: bool,
}

impl Shown {
    /// The command without a trailing comment.
    fn command(&self) -> &str {
        self.text.split("  #").next().unwrap_or(&self.text).trim()
    }

    /// `cmd &`: started, left running for the rest of its block.
    fn background(&self) -> Option<&str> {
        self.command().strip_suffix('&').map(str::trim)
    }
}

/// The commands of every `sh` block of `readme`, in order.
fn commands(readme: &str) -> Vec<Shown> {
    let mut out = Vec::new();
    let mut blocks = 0;
    let mut in_sh = false;
    let mut macos_only = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in readme.lines().enumerate() {
        let line = raw.trim_end();
        if !in_sh {
            if line.trim() == "<!-- macos-only -->" {
                macos_only = true;
            } else if line.starts_with("```sh") {
                in_sh = true;
            } else if !line.trim().is_empty() {
                macos_only = false;
            }
            continue;
        }
        if line.starts_with("```") {
            in_sh = false;
            macos_only = false;
            blocks += 1;
            continue;
        }
        let (start, mut text) = pending.take().unwrap_or((i + 1, String::new()));
        match line.strip_suffix('\\') {
            Some(part) => {
                text.push_str(part);
                text.push(' ');
                pending = Some((start, text));
            }
            None => {
                text.push_str(line.trim_start_matches(' '));
                if !text.trim().is_empty() && !text.trim_start().starts_with('#') {
                    out.push(Shown {
                        block: blocks,
                        line: start,
                        text,
                        macos_only,
                    });
                }
            }
        }
    }
    out
}

/// How a command is checked.
#[derive(Debug, PartialEq)]
enum How {
    /// Runs to the end; must exit 0.
    Completes,
    /// A server: wait for `ready` on its output, use it, Ctrl-C.
    Serves { ready: &'static str },
    /// Scans networks: only inside a namespace of its own.
    InNamespace,
    /// Stores keys in the keychain.
    Keychain,
    /// CI's own command: `.ci/run` must run it.
    CiItself,
    /// The menu-bar app: run as written by the app's own tests, under a
    /// display (`src-tauri/tests/app/readme.rs`).
    AppSuite,
}

fn how(cmd: &str) -> How {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let has = |w: &str| words.contains(&w);
    let baton = has("baton") || cmd.contains("cargo run --release --");
    if cmd.trim() == "cargo test" || cmd.contains(".ci/run") {
        How::CiItself
    } else if cmd.contains("-p baton-app") {
        How::AppSuite
    } else if baton && has("dashboard") {
        How::Serves { ready: "/#token=" }
    } else if baton && has("serve") {
        How::Serves {
            ready: "is serving",
        }
    } else if baton && has("sim") {
        How::Serves {
            ready: "Press Ctrl-C",
        }
    } else if baton && has("discover") {
        How::InNamespace
    } else if baton && has("key") {
        How::Keychain
    } else {
        How::Completes
    }
}

/// Where the commands run: a scratch folder inside the repository (so
/// `cargo` finds the workspace) and a home of their own.
struct Scratch {
    dir: PathBuf,
    home: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = Path::new(REPO).join("target/readme-check");
        let _ = std::fs::remove_dir_all(&dir);
        let home = dir.join("home");
        std::fs::create_dir_all(&home).unwrap();
        Scratch { dir, home }
    }

    fn command(&self, text: &str) -> Command {
        self.command_in(None, text)
    }

    /// `text` run by `sh`, inside network namespace `ns` when given.
    fn command_in(&self, ns: Option<&str>, text: &str) -> Command {
        let bin_dir = Path::new(support::cmd::BATON).parent().unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let real_home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "sh", "-c", text]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", text]);
                c
            }
        };
        c.current_dir(&self.dir)
            .env("PATH", path)
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join(".config"))
            .env("XDG_DATA_HOME", self.home.join(".local/share"))
            .env("XDG_CACHE_HOME", self.home.join(".cache"))
            // Cargo and rustup stay where they are installed.
            .env(
                "CARGO_HOME",
                std::env::var_os("CARGO_HOME").unwrap_or_else(|| real_home.join(".cargo").into()),
            )
            .env(
                "RUSTUP_HOME",
                std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real_home.join(".rustup").into()),
            )
            // What `$KEY` stands for in the README's key examples.
            .env("KEY", "readme-example-key-0123456789")
            .env_remove("BATON_API_KEY")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null());
        c
    }
}

/// Run to the end within `limit`; (exit code, stdout + stderr).
fn run_to_end(mut c: Command, limit: Duration) -> (Option<i32>, String) {
    let out_file = tempfile::NamedTempFile::new().unwrap();
    c.stdout(out_file.reopen().unwrap())
        .stderr(out_file.reopen().unwrap());
    let mut child = c.spawn().unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(out_file.path()).unwrap_or_default();
    (status.and_then(|s| s.code()), out)
}

/// A server command that said it is ready, with what it printed so far.
struct Running {
    child: Child,
    seen: Vec<String>,
}

impl Drop for Running {
    /// Whatever happens to the test, nothing it started outlives it: the
    /// whole process group goes (what `sh` started too, not only `sh`).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child's process group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Removes the keychain entries the key examples stored, also when the
/// test fails half-way (a balancer key left behind would make every later
/// `baton serve` on this machine ask for it).
struct ForgetKeys<'a> {
    scratch: &'a Scratch,
    armed: bool,
}

impl Drop for ForgetKeys<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for name in ["", "studio-1"] {
            let mut c = self.scratch.command(&format!("baton key delete {name}"));
            c.stdout(Stdio::null()).stderr(Stdio::null());
            let _ = c.status();
        }
    }
}

/// Start a server command and wait until its output shows `ready`.
fn start_server(mut c: Command, ready: &str, shown: &Shown) -> Running {
    // Its own process group, so Ctrl-C reaches what sh started.
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child: Child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for stream in [
        Box::new(stdout) as Box<dyn std::io::Read + Send>,
        Box::new(stderr),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    // Generous: `cargo run --release` may build first.
    let limit = Duration::from_secs(30 * 60);
    let t0 = Instant::now();
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => {
                let done = line.contains(ready);
                seen.push(line);
                if done {
                    return Running { child, seen };
                }
            }
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "README line {}: `{}` exited ({status}) before it was ready:\n{}",
                        shown.line,
                        shown.text,
                        seen.join("\n")
                    );
                }
                assert!(
                    t0.elapsed() < limit,
                    "README line {}: `{}` not ready within {limit:?}:\n{}",
                    shown.line,
                    shown.text,
                    seen.join("\n")
                );
            }
        }
    }
}

/// A streamed answer through the balancer on the default address.
async fn use_balancer(shown: &Shown, seen: &[String]) {
    let body = support::chat_body(4, true);
    let mut last = String::new();
    let mut ok = false;
    let t0 = Instant::now();
    while !ok && t0.elapsed() < Duration::from_secs(10) {
        match support::client()
            .post("http://127.0.0.1:8421/v1/chat/completions")
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status() == 200 => {
                let text = r.text().await.unwrap_or_default();
                ok = support::parse_sse(&text).is_ok_and(|s| s.done && s.content_events() == 4);
                last = text;
            }
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert!(
        ok,
        "README line {}: `{}` is ready but its balancer does not answer: {last}\n{}",
        shown.line,
        shown.text,
        seen.join("\n")
    );
}

/// Ctrl-C to the command's process group; it must exit cleanly.
fn stop(mut r: Running, shown: &Shown) {
    let pgid = r.child.id() as i32;
    // SAFETY: signalling our own child's process group.
    unsafe {
        libc::kill(-pgid, libc::SIGINT);
    }
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = r.child.try_wait().unwrap() {
            break s;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            // Dropping `r` ends its process group.
            panic!(
                "README line {}: `{}` did not stop within 15 s of Ctrl-C",
                shown.line, shown.text
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // `baton` exits 0 on Ctrl-C; `cargo run` in front of it is ended by
    // the same Ctrl-C (the signal, or 130 from a shell).
    let by_ctrl_c = std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGINT)
        || status.code() == Some(130);
    assert!(
        status.success() || by_ctrl_c,
        "README line {}: `{}` ended with {status} after Ctrl-C:\n{}",
        shown.line,
        shown.text,
        r.seen.join("\n")
    );
}

/// Whether `.ci/run` runs `cmd` as a command line of its own.
fn ci_runs(cmd: &str) -> bool {
    let ci = std::fs::read_to_string(Path::new(REPO).join(".ci/run")).unwrap();
    cmd.contains(".ci/run")
        || ci
            .lines()
            .any(|l| l.trim() == cmd.trim() || l.trim().starts_with(&format!("{} ", cmd.trim())))
}

#[test]
fn the_readme_commands_are_split_into_commands_and_synopses() {
    let shown = commands(
        "text\n```sh\nbaton serve   # serve\n# a comment\nbaton sim --count 3 \\\n          --write-config w.json\n```\n```text\nbaton serve [-c F]\n```\n<!-- macos-only -->\n```sh\ncodesign --verify X\n```\n",
    );
    let texts: Vec<&str> = shown.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "baton serve   # serve",
            "baton sim --count 3  --write-config w.json",
            "codesign --verify X"
        ]
    );
    assert_eq!(
        shown.iter().map(|s| s.macos_only).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert_eq!(shown[1].line, 5);
    assert_eq!(
        how("cargo run --release -- dashboard   # x"),
        How::Serves { ready: "/#token=" }
    );
    assert_eq!(how("cargo test"), How::CiItself);
    assert_eq!(how("baton discover --cidr 10.0.0.0/30"), How::InNamespace);
    assert_eq!(how("echo \"$KEY\" | baton key set"), How::Keychain);
    assert_eq!(how("baton config path"), How::Completes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_in_the_readme_runs_as_written() {
    let readme = std::fs::read_to_string(Path::new(REPO).join("README.md")).unwrap();
    let shown = commands(&readme);
    assert!(shown.len() >= 5, "no commands found: {shown:?}");
    for s in &shown {
        assert!(
            !s.text.contains(" [") && !s.text.contains(" ..."),
            "README line {}: `{}` is a synopsis, not a command: put it in a ```text block",
            s.line,
            s.text
        );
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let scratch = Scratch::new();
    let macos = std::fs::read_to_string(Path::new(REPO).join(".github/workflows/macos.yml"))
        .unwrap_or_default();
    let mut skipped = Vec::new();
    // The key examples store real keychain entries: outside CI, never over
    // keys this machine already has (and what they store is removed below).
    let keys_in_use = baton::secrets::balancer_key().ok().flatten().is_some()
        || baton::secrets::resolve(&baton::config::SecretRef::Keychain("studio-1".into())).is_ok();
    let _forget = ForgetKeys {
        scratch: &scratch,
        armed: !keys_in_use || ci,
    };
    // Commands put in the background with `&`, until their block ends.
    let mut background: Vec<(Running, Shown)> = Vec::new();
    for s in &shown {
        if background.first().is_some_and(|(_, b)| b.block != s.block) {
            for (r, b) in background.drain(..) {
                stop(r, &b);
            }
        }
        let t0 = Instant::now();
        if s.macos_only {
            assert!(
                macos.contains(s.command()),
                "README line {}: `{}` is macOS-only but .github/workflows/macos.yml does not run it",
                s.line,
                s.text
            );
            eprintln!(
                "README line {}: `{}`: run by the macOS workflow",
                s.line, s.text
            );
            continue;
        }
        match how(s.command()) {
            How::CiItself => {
                assert!(
                    ci_runs(s.command()),
                    "README line {}: `{}` should be what CI runs, but .ci/run does not run it",
                    s.line,
                    s.text
                );
                eprintln!("README line {}: `{}`: CI's own command", s.line, s.text);
                continue;
            }
            How::AppSuite => {
                let suite = Path::new(REPO).join("src-tauri/tests/app/readme.rs");
                assert!(
                    std::fs::read_to_string(&suite).is_ok_and(|t| t.contains("-p baton-app")),
                    "README line {}: `{}` must be run by the app's tests ({})",
                    s.line,
                    s.text,
                    suite.display()
                );
                eprintln!(
                    "README line {}: `{}`: run by the app's tests",
                    s.line, s.text
                );
                continue;
            }
            How::Serves { ready } => match s.background() {
                Some(cmd) => {
                    let r = start_server(scratch.command(cmd), ready, s);
                    background.push((r, s.clone()));
                }
                None => {
                    let r = start_server(scratch.command(s.command()), ready, s);
                    let served = r
                        .seen
                        .iter()
                        .any(|l| l.contains("http://127.0.0.1:8421/v1"))
                        || s.text.contains("dashboard");
                    if served {
                        use_balancer(s, &r.seen).await;
                    }
                    stop(r, s);
                }
            },
            How::InNamespace => {
                let part = format!("README line {}: `{}`", s.line, s.text);
                if !support::skip::can_run_part(&part, support::netlab::unavailable()) {
                    skipped.push(s.line);
                    continue;
                }
                // A host of its own with no route anywhere: nothing it
                // sends can leave this machine.
                let host = support::netlab::Host::new().unwrap();
                let (code, out) = run_to_end(
                    scratch.command_in(Some(&host.ns), &s.text),
                    Duration::from_secs(120),
                );
                assert_eq!(
                    code,
                    Some(0),
                    "README line {}: `{}`:\n{out}",
                    s.line,
                    s.text
                );
            }
            How::Keychain => {
                // Under CI=true it runs whatever is stored (CI's keyring
                // holds nothing of a user's).
                let part = format!("README line {}: `{}`", s.line, s.text);
                let stored = (keys_in_use && !ci)
                    .then(|| "it would replace keys stored on this machine".to_string());
                if !support::skip::can_run_part(&part, stored) {
                    skipped.push(s.line);
                    continue;
                }
                let (code, out) = run_to_end(scratch.command(&s.text), Duration::from_secs(60));
                assert_eq!(
                    code,
                    Some(0),
                    "README line {}: `{}`:\n{out}",
                    s.line,
                    s.text
                );
            }
            How::Completes => {
                let (code, out) =
                    run_to_end(scratch.command(&s.text), Duration::from_secs(30 * 60));
                assert_eq!(
                    code,
                    Some(0),
                    "README line {}: `{}`:\n{out}",
                    s.line,
                    s.text
                );
            }
        }
        eprintln!(
            "README line {}: `{}` ({:.1?})",
            s.line,
            s.text,
            t0.elapsed()
        );
    }
    for (r, b) in background.drain(..) {
        stop(r, &b);
    }
    eprintln!(
        "{} README commands checked{}",
        shown.len(),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(", SKIPPED lines {skipped:?}")
        }
    );
}
