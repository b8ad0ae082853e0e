//! The app seen over the session bus, as a desktop would see it: its tray
//! menu (`com.canonical.dbusmenu`, exported by the AppIndicator), and the
//! notifications it sends (to a stand-in `org.freedesktop.Notifications`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::Connection;
use zbus::zvariant::{OwnedValue, Value};

/// Where AppIndicator tray icons live on the bus.
const ITEMS: &str = "/org/ayatana/NotificationItem";

/// One menu item as `GetLayout` describes it.
#[derive(Clone, Debug)]
pub struct Item {
    pub id: i32,
    pub label: String,
    /// `standard` or `separator`.
    pub kind: String,
    pub props: HashMap<String, String>,
    pub children: Vec<Item>,
}

/// The app's tray menu on the bus.
pub struct Menu {
    conn: Connection,
    dest: String,
    path: String,
}

impl Menu {
    /// Find the menu exported by process `pid`.
    pub async fn find(pid: u32, within: Duration) -> Menu {
        let conn = Connection::session().await.expect("session bus");
        let end = Instant::now() + within;
        loop {
            if let Some((dest, path)) = find_menu(&conn, pid).await {
                return Menu { conn, dest, path };
            }
            assert!(
                Instant::now() < end,
                "process {pid} exported no tray menu under {ITEMS} within {within:?} (is libayatana-appindicator3-1 installed?)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The top-level items, with their children.
    pub async fn layout(&self) -> Vec<Item> {
        let reply = self
            .conn
            .call_method(
                Some(self.dest.as_str()),
                self.path.as_str(),
                Some("com.canonical.dbusmenu"),
                "GetLayout",
                &(0i32, -1i32, Vec::<&str>::new()),
            )
            .await
            .expect("GetLayout");
        type Layout = (u32, (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>));
        let (_, (_, _, children)): Layout = reply.body().deserialize().expect("a dbusmenu layout");
        children.iter().map(|c| item(c)).collect()
    }

    /// The item labelled `label` (top level or in a submenu).
    pub async fn item(&self, label: &str) -> Item {
        fn find(items: &[Item], label: &str) -> Option<Item> {
            items.iter().find_map(|i| {
                (i.label == label)
                    .then(|| i.clone())
                    .or_else(|| find(&i.children, label))
            })
        }
        let layout = self.layout().await;
        find(&layout, label)
            .unwrap_or_else(|| panic!("no menu item `{label}` in {:?}", super::labels(&layout)))
    }

    /// What a click on an item sends.
    pub async fn click(&self, id: i32) {
        self.conn
            .call_method(
                Some(self.dest.as_str()),
                self.path.as_str(),
                Some("com.canonical.dbusmenu"),
                "Event",
                &(id, "clicked", Value::from(0i32), 0u32),
            )
            .await
            .expect("dbusmenu Event");
    }
}

async fn find_menu(conn: &Connection, pid: u32) -> Option<(String, String)> {
    let bus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    for name in bus.list_names().await.ok()? {
        let name = name.to_string();
        if !name.starts_with(':') {
            continue;
        }
        let owner = bus
            .get_connection_unix_process_id(name.as_str().try_into().ok()?)
            .await;
        if owner.ok() != Some(pid) {
            continue;
        }
        // Some of the app's connections (accessibility) never answer:
        // don't wait on them.
        let introspect = async {
            zbus::fdo::IntrospectableProxy::builder(conn)
                .destination(name.as_str())
                .ok()?
                .path(ITEMS)
                .ok()?
                .build()
                .await
                .ok()?
                .introspect()
                .await
                .ok()
        };
        let Ok(Some(xml)) = tokio::time::timeout(Duration::from_secs(2), introspect).await else {
            continue;
        };
        if let Some(node) = xml
            .split("<node name=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            return Some((name, format!("{ITEMS}/{node}/Menu")));
        }
    }
    None
}

fn item(v: &Value) -> Item {
    match v {
        Value::Value(inner) => item(inner),
        Value::Structure(s) => {
            let f = s.fields();
            let id = match f.first() {
                Some(Value::I32(i)) => *i,
                _ => -1,
            };
            let mut props = HashMap::new();
            if let Some(Value::Dict(d)) = f.get(1) {
                for (k, v) in d.iter() {
                    props.insert(text(k), text(v));
                }
            }
            let children = match f.get(2) {
                Some(Value::Array(a)) => a.inner().iter().map(item).collect(),
                _ => Vec::new(),
            };
            Item {
                id,
                label: props.get("label").cloned().unwrap_or_default(),
                kind: props
                    .get("type")
                    .cloned()
                    .unwrap_or_else(|| "standard".into()),
                props,
                children,
            }
        }
        other => panic!("not a dbusmenu item: {other:?}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Value(inner) => text(inner),
        Value::Str(s) => s.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::I32(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// A notification as the server got it.
#[derive(Clone, Debug)]
pub struct Notification {
    pub summary: String,
    pub body: String,
}

/// A stand-in notification server (what a desktop's notification daemon
/// is): it keeps what it is sent.
pub struct Notifications {
    _conn: Connection,
    pub got: Arc<Mutex<Vec<Notification>>>,
}

struct Server {
    got: Arc<Mutex<Vec<Notification>>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into(), "actions".into()]
    }

    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut got = self.got.lock().unwrap();
        got.push(Notification { summary, body });
        got.len() as u32
    }

    fn close_notification(&self, _id: u32) {}

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "baton-tests".into(),
            "baton".into(),
            "1".into(),
            "1.2".into(),
        )
    }
}

impl Notifications {
    /// Own `org.freedesktop.Notifications` on the session bus.
    pub async fn start() -> Notifications {
        let got = Arc::new(Mutex::new(Vec::new()));
        let conn = zbus::connection::Builder::session()
            .expect("session bus")
            .name("org.freedesktop.Notifications")
            .expect("bus name")
            .serve_at(
                "/org/freedesktop/Notifications",
                Server { got: got.clone() },
            )
            .expect("serve")
            .build()
            .await
            .expect(
                "own org.freedesktop.Notifications (is a notification daemon running on this bus?)",
            );
        Notifications { _conn: conn, got }
    }

    pub fn all(&self) -> Vec<Notification> {
        self.got.lock().unwrap().clone()
    }

    /// Wait for a notification whose summary contains `text`.
    pub async fn wait_for(&self, text: &str, within: Duration) -> Option<Notification> {
        let end = Instant::now() + within;
        loop {
            if let Some(n) = self.all().into_iter().find(|n| n.summary.contains(text)) {
                return Some(n);
            }
            if Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
