//! The app under WebDriver: tauri-driver in front of WebKitWebDriver, which
//! starts `baton-app` and drives its webviews like a user.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use super::{App, Home};

/// tauri-driver, stopped with SIGTERM (SIGKILL would orphan WebKitWebDriver
/// and the app).
pub struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = super::wait_for(Duration::from_secs(5), || self.0.try_wait().ok().flatten());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start tauri-driver (free ports) in `home` and open a session on the app
/// started with `args`. Keep the driver until the end of the test.
pub async fn session(home: &Home, args: &[&str]) -> (Driver, Client) {
    let port = super::free_port();
    let driver = Command::new(super::tauri_driver().expect("tauri-driver"))
        .args(["--port", &port.to_string()])
        .args(["--native-port", &super::free_port().to_string()])
        .args(["--native-driver", super::WEBKIT_DRIVER])
        .envs(home.env())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tauri-driver");
    let driver = Driver(driver);
    let listening = super::wait_for(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    assert!(listening.is_some(), "tauri-driver did not listen on {port}");
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("wry"));
    caps.insert(
        "tauri:options".into(),
        json!({ "application": super::APP, "args": args }),
    );
    let client = ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a WebDriver session with baton-app");
    (driver, client)
}

/// The popover starts hidden (it waits for the tray icon), and a hidden
/// window can be neither clicked nor photographed. A second launch shows
/// it, as on a desktop whose tray reports no clicks; it must hand over to
/// the running app and exit 0.
pub fn show_popover(home: &Home) {
    let mut second = App::start(home, &[]);
    let status = second.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "a second launch should hand over and exit 0; output:\n{}",
        second.output()
    );
}

/// The button showing `text`, once it is there.
pub async fn button(c: &Client, text: &str) -> Element {
    c.wait()
        .at_most(Duration::from_secs(20))
        .for_element(Locator::XPath(&format!(
            "//button[normalize-space()='{text}']"
        )))
        .await
        .unwrap_or_else(|e| panic!("no `{text}` button: {e}"))
}

/// Save a screenshot of the current window as `name` in the screenshot
/// folder. Painting lags the DOM under Xvfb: wait two frames and a moment
/// so the picture shows what the DOM says.
pub async fn screenshot(c: &Client, name: &str) -> std::path::PathBuf {
    let _ = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             requestAnimationFrame(() => requestAnimationFrame(() => done(true)));",
            vec![],
        )
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let png = c.screenshot().await.expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
    let path = super::screenshot_dir().join(name);
    std::fs::write(&path, &png).expect("write the screenshot");
    println!("screenshot: {}", path.display());
    path
}
