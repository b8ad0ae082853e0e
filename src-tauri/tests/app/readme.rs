//! The README's commands for the menu-bar app (the lines of its `sh` blocks
//! that name `-p baton-app`), run as written under the display the app's
//! tests get: the app starts, opens its control API, and quits cleanly on
//! SIGTERM. The engine's `tests/readme.rs` runs every other command.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Home;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The app's command lines in the README's `sh` blocks, comments removed.
fn app_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let mut in_sh = false;
    let mut out = Vec::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line.starts_with("```sh");
            continue;
        }
        if in_sh && line.contains("-p baton-app") {
            out.push(line.split("  #").next().unwrap_or(line).trim().to_string());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_command_for_the_app_starts_it_and_sigterm_quits_it() {
    if !common::can_run(false) {
        return;
    }
    let _one = common::serial().await;
    let commands = app_commands();
    assert!(
        !commands.is_empty(),
        "the README shows no command for the app"
    );
    let real_home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    for cmd in commands {
        common::step(&format!("README: `{cmd}`"));
        let home = Home::empty();
        let mut c = Command::new("sh");
        c.args(["-c", &cmd])
            .current_dir(repo())
            .envs(home.env())
            // Cargo and rustup stay where they are installed.
            .env(
                "CARGO_HOME",
                std::env::var_os("CARGO_HOME").unwrap_or_else(|| real_home.join(".cargo").into()),
            )
            .env(
                "RUSTUP_HOME",
                std::env::var_os("RUSTUP_HOME").unwrap_or_else(|| real_home.join(".rustup").into()),
            )
            .env("BATON_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group: SIGTERM reaches cargo and the app.
        std::os::unix::process::CommandExt::process_group(&mut c, 0);
        let mut child = c.spawn().expect("sh");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        // `cargo run` may build first.
        let t0 = Instant::now();
        let mut seen = Vec::new();
        let api = loop {
            if let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
                let api = l
                    .split("control API on http://")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok());
                seen.push(l);
                if let Some(a) = api {
                    break a;
                }
            }
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "`{cmd}` exited ({s}) before the app was up:\n{}",
                    seen.join("\n")
                );
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20 * 60),
                "`{cmd}`: the app did not come up:\n{}",
                seen.join("\n")
            );
        };
        assert!(
            std::net::TcpStream::connect_timeout(&api, Duration::from_secs(2)).is_ok(),
            "the app's control API on {api} does not answer"
        );
        let group = format!("-{}", child.id());
        let sent = Command::new("kill")
            .args(["-TERM", "--", &group])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM -- {group}");
        let status = common::wait_for(Duration::from_secs(15), || child.try_wait().ok().flatten())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("`{cmd}` did not quit within 15 s of SIGTERM")
            });
        // `cargo run` in front of the app is ended by the same SIGTERM (as
        // a signal, or 143 from a shell); the app's own clean exit shows
        // below (its port closed, no panic).
        let by_sigterm = std::os::unix::process::ExitStatusExt::signal(&status)
            == Some(libc::SIGTERM)
            || status.code() == Some(143);
        assert!(
            !seen.iter().any(|l| l.contains("panicked")),
            "`{cmd}` panicked:\n{}",
            seen.join("\n")
        );
        assert!(
            status.success() || by_sigterm,
            "`{cmd}` ended with {status}:\n{}",
            seen.join("\n")
        );
        // cargo may be gone first; the app itself (same process group)
        // finishes its clean quit on its own.
        assert!(
            common::wait_for(Duration::from_secs(15), || {
                std::net::TcpStream::connect_timeout(&api, Duration::from_millis(200))
                    .is_err()
                    .then_some(())
            })
            .is_some(),
            "the control API still answers 15 s after SIGTERM"
        );
    }
}
