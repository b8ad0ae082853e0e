//! First run (no workers file): the popover offers "Discover studios" and
//! "Try with simulated studios"; the second leads to a working balancer in
//! two clicks (the icon, then that button).

use crate::common;

use std::time::Duration;

use common::Home;
use common::webdriver::{self, button};
use fantoccini::Locator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_reaches_a_working_balancer_in_two_clicks() {
    if !common::can_run(true) {
        return;
    }
    let _one = common::serial().await;
    let home = Home::empty();
    // The file has no listen address yet: keep tests off the default port.
    let listen = home.balancer().to_string();
    let (_driver, c) = webdriver::session(&home, &["--listen", &listen]).await;
    // Click one: the icon (here, a second launch).
    webdriver::show_popover(&home);
    button(&c, "Discover studios").await;
    let sim = button(&c, "Try with simulated studios").await;
    webdriver::screenshot(&c, "first-run.png").await;
    assert!(
        common::refused(home.balancer()),
        "nothing serves before a choice"
    );

    // Click two.
    sim.click().await.expect("click Try with simulated studios");
    // Working: it lists the studios' model and answers a chat.
    let models = common::wait_for(Duration::from_secs(20), || {
        common::http_get(home.balancer(), "/v1/models")
            .ok()
            .filter(|(code, body)| *code == 200 && body.contains(baton::sim::DEFAULT_MODEL))
    });
    assert!(
        models.is_some(),
        "no working balancer on {listen} after two clicks"
    );
    let answer = common::stream_chat(home.balancer(), 5);
    assert!(answer.contains("data: [DONE]"), "{answer}");
    // The popover now shows the simulated pool, and no welcome any more.
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(
            "//li[contains(@class,'studio')]//span[@class='id' and text()='sim-studio-3']",
        ))
        .await
        .expect("the popover shows the simulated studios");
    let mut welcome = true;
    for _ in 0..50 {
        welcome = !c
            .find_all(Locator::Css("section.first-run"))
            .await
            .unwrap_or_default()
            .is_empty();
        if !welcome {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!welcome, "the welcome card stayed after choosing");
    // Simulated studios are a trial: nothing is written to the user's file.
    assert!(!home.workers_file().exists());
    c.close().await.expect("end the WebDriver session");
}
