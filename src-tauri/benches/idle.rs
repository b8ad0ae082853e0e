//! The whole app's idle cost: the real `baton-app` (engine, tray and its
//! hidden popover's webview processes) serving a pool of three simulated
//! studios, used a little and then left alone with the popover closed.
//! Prints CPU (% of one core), wake-ups per second (voluntary context
//! switches of every thread of every process, from `/proc`) and RSS.
//!
//! ```text
//! xvfb-run -a dbus-run-session -- cargo bench -p baton-app --bench idle
//! ```
//!
//! Without a display or a session bus it says SKIPPED (as the app's tests
//! do). Linux only: on macOS read the same figures with
//! `top -stats pid,command,cpu,idlew,mem` (see the README).

#[path = "../tests/app/common/mod.rs"]
mod common;
#[path = "../../tests/support/procfs.rs"]
mod procfs;

use std::time::Duration;

use common::{App, Home};

fn show(what: &str, i: &procfs::Idle) {
    println!(
        "  {what:<40} {:>6.3}% of a core  {:>6.2} wake-ups/s  RSS {:.1} MB ({} processes)",
        i.cpu_pct, i.wakeups_per_s, i.rss_mb, i.processes
    );
    println!("    woke most: {}", i.busiest_line());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    println!("Baton app idle cost (Linux: /proc, every thread of every process)");
    if !common::can_run(false) {
        return;
    }
    let (a, b, c) = (
        common::studio(1).await,
        common::studio(2).await,
        common::studio(3).await,
    );
    let home = Home::new(&[("studio-a", &a), ("studio-b", &b), ("studio-c", &c)]);
    let app = App::start(&home, &[]);
    let up = common::wait_for(Duration::from_secs(60), || {
        common::balancer_answers(home.balancer()).then_some(())
    });
    assert!(
        up.is_some(),
        "the app's balancer did not answer on {}; output:\n{}",
        home.balancer(),
        app.output()
    );
    // A pool that was used, then left alone (the popover never opened).
    for _ in 0..6 {
        let answer = common::stream_chat(home.balancer(), 8);
        assert!(answer.contains("data: [DONE]"), "{answer}");
    }
    let window = Duration::from_secs(if quick { 10 } else { 60 });
    let first = procfs::idle(app.pid(), window).await;
    show("the first minute after some traffic", &first);
    // The probers slow down once the pool has had no request for 2 min.
    let rest = Duration::from_secs(125).saturating_sub(window);
    tokio::time::sleep(rest).await;
    let idle = procfs::idle(app.pid(), window).await;
    show("at rest (no request for 2+ min)", &idle);
    println!("\nSummary");
    for (what, ok, figure) in [
        (
            "app idle CPU < 0.1% of a core",
            idle.cpu_pct < 0.1,
            format!("{:.3}%", idle.cpu_pct),
        ),
        (
            "app idle wake-ups < 2/s",
            idle.wakeups_per_s < 2.0,
            format!("{:.2}/s", idle.wakeups_per_s),
        ),
        (
            "app idle RSS (engine + webview), reported",
            true,
            format!("{:.1} MB", idle.rss_mb),
        ),
    ] {
        let verdict = if ok { "PASS" } else { "MISS" };
        println!("  [{verdict}] {what}: {figure}");
    }
}
