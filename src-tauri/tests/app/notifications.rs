//! Notifications, sent to the desktop's notification server (a stand-in
//! here): one when a studio goes down and one when it comes back, none at
//! start-up; and why the app cannot start, when its workers file is broken.

use crate::common;

use std::time::Duration;

use common::dbus::Notifications;
use common::{App, Home};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_when_a_studio_goes_down_and_when_it_comes_back() {
    if !common::can_run(false) {
        return;
    }
    let _one = common::serial().await;
    let server = Notifications::start().await;
    let (a, b) = (common::studio(1).await, common::studio(2).await);
    let home = Home::new(&[("studio-a", &a), ("studio-b", &b)]);
    // No --no-balancer: a launch serves what the workers file names.
    let mut app = App::start(&home, &[]);
    let up = common::wait_for(Duration::from_secs(30), || {
        common::balancer_answers(home.balancer()).then_some(())
    });
    assert!(
        up.is_some(),
        "the balancer did not start at launch; output:\n{}",
        app.output()
    );
    // Let both studios settle to ready: start-up makes no notification.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        server.all().is_empty(),
        "notified at start-up: {:?}",
        server.all()
    );

    // The studio's server quits: probes fail, it is ejected.
    b.set_listening(false);
    let down = server
        .wait_for("Studio down: studio-b", Duration::from_secs(15))
        .await;
    let down = down.unwrap_or_else(|| {
        panic!(
            "no notification for a studio going down; got {:?}; output:\n{}",
            server.all(),
            app.output()
        )
    });
    assert!(
        down.body.contains("does not accept connections"),
        "{down:?}"
    );
    // Probes go on failing every second: still one notification.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let downs = server
        .all()
        .iter()
        .filter(|n| n.summary.contains("down"))
        .count();
    assert_eq!(downs, 1, "one change, one notification: {:?}", server.all());

    b.set_listening(true);
    let back = server
        .wait_for("Studio back: studio-b", Duration::from_secs(15))
        .await;
    assert!(
        back.is_some(),
        "no notification for a studio coming back; got {:?}",
        server.all()
    );
    assert_eq!(server.all().len(), 2, "{:?}", server.all());
    assert!(
        server.all().iter().all(|n| !n.summary.contains("studio-a")),
        "the healthy studio was reported: {:?}",
        server.all()
    );

    // SIGTERM quits as cleanly as the menu does.
    sigterm(app.pid());
    let status = app
        .wait_exit(Duration::from_secs(15))
        .expect("SIGTERM ended the app");
    assert!(status.success(), "{status}; output:\n{}", app.output());
    assert!(common::refused(home.balancer()));
    common::assert_no_token(&app.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_workers_file_is_reported_with_its_fix_and_the_app_exits_1() {
    if !common::can_run(false) {
        return;
    }
    let _one = common::serial().await;
    let server = Notifications::start().await;
    let home = Home::empty();
    std::fs::create_dir_all(home.workers_file().parent().unwrap()).unwrap();
    std::fs::write(home.workers_file(), "{\"workers\": [ {\"id\": \"m1\",}] }").unwrap();
    let mut app = App::start(&home, &[]);
    let status = app
        .wait_exit(Duration::from_secs(20))
        .expect("the app exits");
    assert_eq!(status.code(), Some(1), "output:\n{}", app.output());
    let output = app.output();
    assert!(
        output.contains("workers.json") && output.contains("fix:"),
        "{output}"
    );
    let n = server
        .wait_for("Baton could not start", Duration::from_secs(5))
        .await;
    let n = n.unwrap_or_else(|| panic!("no notification; got {:?}", server.all()));
    assert!(n.body.contains("Fix: "), "{n:?}");
    assert!(common::refused(home.balancer()));
}

fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -TERM {pid}");
}
