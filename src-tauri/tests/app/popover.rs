//! The popover through WebDriver (tauri-driver + WebKitWebDriver), as a
//! user sees it: the studios of the pool, Start making the balancer answer,
//! Stop making its port refuse, "Open dashboard" opening the dashboard
//! window (the one command the page may call), and screenshots kept.

use crate::common;

use std::time::Duration;

use common::Home;
use common::webdriver::{self, button};
use fantoccini::Locator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn popover_shows_the_pool_and_starts_and_stops_the_balancer() {
    if !common::can_run(true) {
        return;
    }
    let _one = common::serial().await;
    let (a, b) = (common::studio(1).await, common::studio(2).await);
    let home = Home::new(&[("studio-a", &a), ("studio-b", &b)]);
    common::step("starting the app under WebDriver");
    let (_driver, c) = webdriver::session(&home, &["--no-balancer"]).await;
    common::step("second launch: show the popover");
    webdriver::show_popover(&home);

    // The studios of the pool, each with its status.
    for id in ["studio-a", "studio-b"] {
        c.wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::XPath(&format!(
                "//li[contains(@class,'studio')]//span[@class='id' and text()='{id}']"
            )))
            .await
            .unwrap_or_else(|e| panic!("the popover does not show {id}: {e}"));
    }

    common::step("Run preflight");
    button(&c, "Run preflight")
        .await
        .click()
        .await
        .expect("click Run preflight");
    let verdict = c
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(
            "section.pop-preflight p.summary.ok, section.pop-preflight p.summary.wait, section.pop-preflight p.summary.bad",
        ))
        .await
        .expect("a preflight verdict in the popover");
    common::step(&format!(
        "preflight: {}",
        verdict.text().await.unwrap_or_default()
    ));

    common::step("Start");
    assert!(common::refused(home.balancer()));
    button(&c, "Start balancer")
        .await
        .click()
        .await
        .expect("click Start");
    let up = common::wait_for(Duration::from_secs(15), || {
        common::balancer_answers(home.balancer()).then_some(())
    });
    assert!(
        up.is_some(),
        "Start did not start the balancer on {}",
        home.balancer()
    );
    button(&c, "Stop balancer").await;

    // Some traffic, so the picture shows live figures.
    let balancer = home.balancer();
    // Every slot busy with short answers, so some finish in every quarter
    // second and the figures never read zero.
    let traffic: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                (0..12)
                    .map(|_| common::stream_chat(balancer, 20))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ready = 0;
    for _ in 0..100 {
        ready = c
            .find_all(Locator::XPath(
                "//li[contains(@class,'studio')]//span[contains(@class,'word') and text()='Ready']",
            ))
            .await
            .map(|v| v.len())
            .unwrap_or(0);
        if ready == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 2, "the studios did not show as ready");
    // Answers have finished, so tokens per second show.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    common::step("screenshot");
    let figures = c
        .execute(
            "return [...document.querySelectorAll('li.studio')].map(li => li.innerText.replace(/\\s+/g, ' '))",
            vec![],
        )
        .await
        .unwrap_or_default();
    common::step(&format!("the studios say: {figures}"));
    webdriver::screenshot(&c, "popover.png").await;
    for t in traffic {
        for answer in t.join().unwrap() {
            assert!(answer.contains("data: [DONE]"), "{answer}");
        }
    }

    common::step("Stop");
    button(&c, "Stop balancer")
        .await
        .click()
        .await
        .expect("click Stop");
    let down = common::wait_for(Duration::from_secs(15), || {
        common::refused(home.balancer()).then_some(())
    });
    assert!(down.is_some(), "Stop left the balancer listening");
    button(&c, "Start balancer").await;

    common::step("what the page may invoke");
    let denied = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             window.__TAURI__.core.invoke('plugin:notification|is_permission_granted')
               .then(() => done('allowed'), (e) => done('denied: ' + e));",
            vec![],
        )
        .await
        .expect("run a script in the popover");
    assert!(
        denied.as_str().is_some_and(|s| s.starts_with("denied")),
        "the popover's page reached a plugin command: {denied}"
    );
    let popover = c.window().await.expect("the popover's handle");
    let before = c.windows().await.expect("window handles").len();
    button(&c, "Open dashboard")
        .await
        .click()
        .await
        .expect("click Open dashboard");
    let mut opened = false;
    for _ in 0..100 {
        if c.windows().await.map(|w| w.len()).unwrap_or(0) > before {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened, "Open dashboard opened no window");
    // The popover hid itself; the new window is the dashboard.
    let dashboard = c
        .windows()
        .await
        .unwrap()
        .into_iter()
        .find(|w| *w != popover)
        .unwrap();
    c.switch_to_window(dashboard).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::Css("nav#nav a[data-view='benchmarks']"))
        .await
        .expect("the dashboard window shows the full UI");
    webdriver::screenshot(&c, "dashboard.png").await;

    common::step("closing");
    c.close().await.expect("end the WebDriver session");
}
