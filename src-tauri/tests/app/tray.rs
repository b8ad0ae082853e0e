//! The tray menu over D-Bus, as a desktop's tray shows it: the exact items,
//! Start Balancer starting a real balancer, the Studios submenu following
//! the engine, and Quit stopping cleanly (an answer in flight finishes, the
//! ports close, the process exits 0); Launch at Login following the login
//! item's file (a moved app's item is re-pointed); the log file.

use crate::common;

use std::time::Duration;

use common::dbus::Menu;
use common::{App, Home};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tray_menu_lists_its_items_starts_the_balancer_and_quits_cleanly() {
    if !common::can_run(false) {
        return;
    }
    let _one = common::serial().await;
    let (a, b) = (common::studio(1).await, common::studio(2).await);
    let home = Home::new(&[("studio-a", &a), ("studio-b", &b)]);
    let mut app = App::start(&home, &["--no-balancer"]);
    let control = app.control_api(Duration::from_secs(30));
    let menu = Menu::find(app.pid(), Duration::from_secs(30)).await;

    // Exactly the items of the issue, in order (separators aside).
    let layout = menu.layout().await;
    assert_eq!(
        common::labels(&layout),
        [
            "Start Balancer",
            "Run Preflight",
            "Studios",
            "Open Dashboard",
            "Copy Endpoint URL",
            "Reveal Logs",
            "Launch at Login",
            "Quit Baton"
        ]
    );
    // Launch at Login is a check item that really installs a login item
    // (on Linux an XDG autostart entry) and takes it away again.
    let login = menu.item("Launch at Login").await;
    let check = |i: &common::dbus::Item, key: &str| i.props.get(key).cloned().unwrap_or_default();
    assert_eq!(check(&login, "toggle-type"), "checkmark");
    assert_eq!(check(&login, "toggle-state"), "0");
    let entry = home.dir.path().join(".config/autostart/Baton.desktop");
    menu.click(login.id).await;
    let installed = common::wait_for(Duration::from_secs(5), || {
        std::fs::read_to_string(&entry).ok()
    });
    let installed = installed.expect("Launch at Login wrote no autostart entry");
    assert!(installed.contains("baton-app"), "{installed}");
    assert_eq!(
        check(&menu.item("Launch at Login").await, "toggle-state"),
        "1"
    );
    menu.click(login.id).await;
    let removed = common::wait_for(Duration::from_secs(5), || (!entry.exists()).then_some(()));
    assert!(removed.is_some(), "a second click left the autostart entry");
    assert_eq!(
        check(&menu.item("Launch at Login").await, "toggle-state"),
        "0"
    );
    // The balancer is stopped: its port refuses, and the studios say so.
    assert!(common::refused(home.balancer()));
    let studios = menu.item("Studios").await;
    assert_eq!(
        common::labels(&studios.children),
        ["studio-a — stopped", "studio-b — stopped"]
    );

    // Start Balancer starts it: a real client gets the model list.
    menu.click(menu.item("Start Balancer").await.id).await;
    let up = common::wait_for(Duration::from_secs(15), || {
        common::balancer_answers(home.balancer()).then_some(())
    });
    assert!(
        up.is_some(),
        "the balancer did not answer on {}",
        home.balancer()
    );

    // The menu follows the engine's events: the toggle, and each studio's
    // state, round trip and loaded models ("studio-a — ready · 3 ms · m").
    let mut last = Vec::new();
    let mut last_studios = Vec::new();
    let followed = async {
        for _ in 0..100 {
            let layout = menu.layout().await;
            last = common::labels(&layout);
            let studios = layout.iter().find(|i| i.label == "Studios").unwrap();
            let lines = common::labels(&studios.children);
            last_studios = lines.clone();
            if last[0] == "Stop Balancer"
                && lines.len() == 2
                && lines.iter().all(|l| {
                    let parts: Vec<&str> = l.split(" · ").collect();
                    parts.len() == 3
                        && parts[0].ends_with("— ready")
                        && parts[1].ends_with(" ms")
                        && parts[2].contains(baton::sim::DEFAULT_MODEL)
                })
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(
        followed.await,
        "the menu did not follow the balancer: {last:?}, studios {last_studios:?}"
    );

    // An answer in flight when Quit is clicked still finishes: 40 tokens at
    // 50/s take about a second.
    let balancer = home.balancer();
    let answer = std::thread::spawn(move || common::stream_chat(balancer, 40));
    tokio::time::sleep(Duration::from_millis(300)).await;
    menu.click(menu.item("Quit Baton").await.id).await;
    let status = app.wait_exit(Duration::from_secs(15));
    let answer = answer.join().unwrap();
    assert!(
        answer.contains("data: [DONE]"),
        "the answer in flight was cut by Quit:\n{answer}"
    );
    let status =
        status.unwrap_or_else(|| panic!("Quit did not end the app; output:\n{}", app.output()));
    assert!(
        status.success(),
        "Quit ended the app with {status}; output:\n{}",
        app.output()
    );
    assert!(
        common::refused(home.balancer()),
        "the balancer still listens after Quit"
    );
    assert!(
        common::refused(control),
        "the control API still listens after Quit"
    );
    common::assert_no_token(&app.output());
    // The same lines went to the log file Reveal Logs shows, token-free.
    let log = std::fs::read_to_string(home.log_file()).expect("the app's log file");
    assert!(log.contains("control API on http://"), "{log}");
    assert!(log.contains("open-files limit"), "{log}");
    common::assert_no_token(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_at_login_follows_the_login_item_and_a_moved_apps_item_is_re_pointed() {
    if !common::can_run(false) {
        return;
    }
    let _one = common::serial().await;
    let a = common::studio(1).await;
    let home = Home::new(&[("studio-a", &a)]);
    // A login item written by this app when it lived elsewhere.
    let entry = home.dir.path().join(".config/autostart/Baton.desktop");
    std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
    let old = "/opt/old-place/baton-app";
    std::fs::write(
        &entry,
        format!("[Desktop Entry]\nType=Application\nName=Baton\nExec={old} \n"),
    )
    .unwrap();
    let mut app = App::start(&home, &["--no-balancer"]);
    let menu = Menu::find(app.pid(), Duration::from_secs(30)).await;
    let check = |i: &common::dbus::Item| i.props.get("toggle-state").cloned().unwrap_or_default();
    // Launched from its new place, the app re-points the item at itself.
    let repointed = common::wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&entry)
            .ok()
            .filter(|t| t.contains(common::APP))
    });
    assert!(
        repointed.is_some(),
        "the login item still starts {old}: {:?}; output:\n{}",
        std::fs::read_to_string(&entry),
        app.output()
    );
    assert_eq!(check(&menu.item("Launch at Login").await), "1");
    // Removed behind the app's back (System Settings, a cleanup tool): the
    // checkmark follows the file.
    std::fs::remove_file(&entry).unwrap();
    let mut state = String::new();
    for _ in 0..100 {
        state = check(&menu.item("Launch at Login").await);
        if state == "0" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "0", "the checkmark did not follow the removed item");
    menu.click(menu.item("Quit Baton").await.id).await;
    let status = app.wait_exit(Duration::from_secs(15));
    assert!(status.is_some_and(|s| s.success()), "{}", app.output());
}
