//! The control API over real sockets: who may call it, workers-file edits
//! that never lose anything, jobs, runs, and the event stream.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::control::ControlApi;
use baton::engine::{Engine, Options, WhenMissing};
use serde_json::{Value, json};
use support::*;

/// An engine over a workers file in a temp dir, with its own store, and the
/// control API in front of it.
struct Dash {
    _dir: tempfile::TempDir,
    file: PathBuf,
    engine: Engine,
    api: ControlApi,
    http: reqwest::Client,
    _sims: Vec<baton::sim::SimHandle>,
}

impl Dash {
    async fn start(sims: usize) -> Dash {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("workers.json");
        let handles = start_sims((0..sims).map(|i| baton::sim::SimConfig {
            ttft: Duration::from_millis(20),
            tokens_per_second: 500.0,
            seed: i as u64 + 1,
            ..Default::default()
        }))
        .await;
        let workers: Vec<_> = workers_for(&handles, |i| format!("studio-{i}"))
            .iter()
            .map(|w| w.to_json())
            .collect();
        if sims > 0 {
            std::fs::write(
                &file,
                serde_json::to_string_pretty(&json!({ "workers": workers })).unwrap(),
            )
            .unwrap();
        }
        let engine = Engine::open(Options {
            config_path: Some(file.clone()),
            when_missing: WhenMissing::FirstRun,
            // Where the CLI finds it with XDG_DATA_HOME=<dir>/data.
            store_path: Some(dir.path().join("data/baton/baton.sqlite3")),
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Options::default()
        })
        .await
        .unwrap();
        let api = ControlApi::start(engine.clone(), 0, "t".repeat(64))
            .await
            .unwrap();
        Dash {
            _dir: dir,
            file,
            engine,
            api,
            http: reqwest::Client::new(),
            _sims: handles,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api.base_url())
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(self.api.token())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.req(reqwest::Method::GET, path).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let r = self.req(method, path).json(&body).send().await.unwrap();
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Wait for a job to end; its record.
    async fn job(&self, id: u64) -> Value {
        for _ in 0..600 {
            let (_, j) = self.get(&format!("/api/jobs/{id}")).await;
            if j["status"] != "running" {
                return j;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not end");
    }
}

fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

#[tokio::test]
async fn calls_without_the_token_or_with_a_wrong_one_are_refused_with_a_reason() {
    let d = Dash::start(1).await;
    let r = d.http.get(d.url("/api/state")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing token"),
        "{v}"
    );
    let r = d
        .http
        .get(d.url("/api/state"))
        .bearer_auth("u".repeat(64))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("wrong token"),
        "{v}"
    );
    assert_eq!(d.get("/api/state").await.0, 200);
}

#[tokio::test]
async fn a_foreign_host_or_a_cross_origin_request_is_refused() {
    let d = Dash::start(1).await;
    let r = d
        .req(reqwest::Method::GET, "/api/state")
        .header("Host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // The UI's own files need no token but the right Host too (DNS rebinding).
    let r = d
        .http
        .get(d.url("/"))
        .header("Host", "evil.example:8422")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = d
        .req(reqwest::Method::POST, "/api/balancer/start")
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("evil.example"),
        "{v}"
    );
    assert!(r_has_no_cors(&d).await);
    assert!(
        !d.engine.balancer_status().running,
        "the refused call did nothing"
    );
}

async fn r_has_no_cors(d: &Dash) -> bool {
    let r = d
        .req(reqwest::Method::GET, "/api/state")
        .header("Origin", d.api.base_url())
        .send()
        .await
        .unwrap();
    r.status() == 200 && !r.headers().contains_key("access-control-allow-origin")
}

#[tokio::test]
async fn the_dashboard_page_is_served_without_a_token() {
    let d = Dash::start(1).await;
    let r = d.http.get(d.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(r.text().await.unwrap().contains("<html"));
}

#[tokio::test]
async fn an_invalid_worker_is_refused_with_the_loaders_message_and_the_file_is_unchanged() {
    let d = Dash::start(1).await;
    let before = file_text(&d.file);
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/workers",
            json!({"id": "x", "host": "10.0.0.9", "port": 70000, "type": "lm_studio", "model": "m",
                   "max_concurrent_requests": 2}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["field"], "workers[1].port", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{v}"
    );
    assert!(
        v["error"]["fix"]
            .as_str()
            .unwrap()
            .contains("between 1 and 65535"),
        "{v}"
    );
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/workers",
            json!({"id": "x", "host": "10.0.0.9", "port": 1234, "type": "lmstudio", "model": "m",
                   "max_concurrent_requests": 2}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]["fix"].as_str().unwrap().contains("lm_studio"),
        "{v}"
    );
    assert_eq!(file_text(&d.file), before, "the file must not change");
}

#[tokio::test]
async fn workers_can_be_added_edited_disabled_and_removed_and_the_file_follows() {
    let d = Dash::start(1).await;
    let w = json!({"id": "studio-9", "host": "127.0.0.9", "port": 1234, "type": "ollama",
                   "model": "mistral:7b-instruct", "max_concurrent_requests": 1});
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/workers", w.clone())
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["status"], "stopped");
    let mut edited = w.clone();
    edited["max_concurrent_requests"] = 3.into();
    let (s, v) = d
        .send(reqwest::Method::PUT, "/api/workers/studio-9", edited)
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["max_concurrent_requests"], 3);
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/workers/studio-9/disable",
            json!({}),
        )
        .await;
    assert_eq!((s, v["status"].clone()), (200, json!("disabled")));
    let cfg = baton::config::Config::load(&d.file).unwrap();
    let w9 = cfg.workers.iter().find(|w| w.id == "studio-9").unwrap();
    assert!(!w9.enabled);
    assert_eq!(w9.max_concurrent_requests, baton::config::Slots::Max(3));
    let r = d
        .req(reqwest::Method::DELETE, "/api/workers/studio-9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        baton::config::Config::load(&d.file).unwrap().workers.len(),
        1
    );
    let (s, _) = d
        .send(reqwest::Method::DELETE, "/api/workers/nope", json!({}))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_all_land_and_leave_a_valid_file() {
    let d = std::sync::Arc::new(Dash::start(1).await);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            d.send(
                reqwest::Method::POST,
                "/api/workers",
                json!({"id": format!("w{i}"), "host": format!("127.0.1.{i}"), "port": 1234,
                       "type": "openai", "model": "m", "max_concurrent_requests": 1}),
            )
            .await
            .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let cfg = baton::config::Config::load(&d.file).unwrap();
    assert_eq!(cfg.workers.len(), 17);
}

#[tokio::test]
async fn a_workers_key_goes_to_the_keychain_and_is_never_returned() {
    let d = Dash::start(1).await;
    let secret = "sk-test-never-shown-0123456789";
    let r = d
        .req(reqwest::Method::PUT, "/api/workers/studio-0/key")
        .json(&json!({"key": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let (_, state) = d.get("/api/state").await;
    let (_, workers) = d.get("/api/workers").await;
    for text in [state.to_string(), workers.to_string(), file_text(&d.file)] {
        assert!(!text.contains(secret), "the key leaked: {text}");
    }
    assert_eq!(workers[0]["has_api_key"], true);
    let cfg = baton::config::Config::load(&d.file).unwrap();
    assert_eq!(
        cfg.workers[0].api_key,
        Some(baton::config::SecretRef::Keychain("studio-0".into()))
    );
    assert_eq!(baton::secrets::get("studio-0").unwrap(), secret);
    baton::secrets::delete("studio-0").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_starts_and_stops_from_the_api() {
    let d = Dash::start(2).await;
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/balancer/start", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    assert!(v["running"].as_bool().unwrap());
    let models = reqwest::get(format!("{url}/models")).await.unwrap();
    assert_eq!(models.status(), 200);
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/balancer/stop", json!({}))
        .await;
    assert_eq!((s, v["running"].clone()), (200, json!(false)));
    assert!(reqwest::get(format!("{url}/models")).await.is_err());
    // A LAN address needs the API key, and says so.
    let (s, v) = d
        .send(
            reqwest::Method::PUT,
            "/api/balancer/listen",
            json!({"listen": "0.0.0.0:0"}),
        )
        .await;
    if std::env::var("BATON_API_KEY").is_err() {
        assert_eq!(s, 400, "{v}");
        assert_eq!(v["error"]["code"], "needs_api_key");
        assert!(
            v["error"]["fix"]
                .as_str()
                .unwrap()
                .contains("baton key set"),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_runs_as_a_job_and_its_result_is_the_report_the_cli_prints() {
    let d = Dash::start(2).await;
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/preflight", json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let job = d.job(v["job"].as_u64().unwrap()).await;
    assert_eq!(job["status"], "finished", "{job}");
    let report = &job["result"];
    assert_eq!(report["hosts"].as_array().unwrap().len(), 2);
    // The same struct the CLI prints with --json.
    let typed: baton::preflight::Report = serde_json::from_value(report.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap(), *report);
    let (s, last) = d.get("/api/preflight/last").await;
    assert_eq!(s, 200);
    assert_eq!(last, *report);
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/jobs/999/cancel", json!({}))
        .await;
    assert_eq!(s, 404, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_benchmark_job_is_stored_and_its_charts_and_comparison_are_served() {
    let d = Dash::start(2).await;
    let mut ids = Vec::new();
    for label in ["first", "second"] {
        let (s, v) = d
            .send(
                reqwest::Method::POST,
                "/api/bench",
                json!({"mode": "both", "requests": 12, "concurrency_levels": [1, 4],
                       "worker_counts": [1, 2], "max_tokens": 8, "label": label}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let job = d.job(v["job"].as_u64().unwrap()).await;
        assert_eq!(job["status"], "finished", "{job}");
        ids.push(job["result"]["run_id"].as_i64().unwrap());
    }
    let (_, runs) = d.get("/api/runs").await;
    assert_eq!(runs[0]["id"], ids[1], "newest first: {runs}");
    let (s, run) = d.get(&format!("/api/runs/{}", ids[0])).await;
    assert_eq!(s, 200);
    let typed: baton::bench::report::BenchResult = serde_json::from_value(run.clone()).unwrap();
    assert_eq!(typed.concurrency_benchmark.len(), 2);
    let (_, charts) = d.get(&format!("/api/runs/{}/charts", ids[0])).await;
    let names: Vec<&str> = charts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"throughput") && names.contains(&"scaling"),
        "{names:?}"
    );
    let tp = &charts[0];
    assert!(tp["svg"].as_str().unwrap().starts_with("<svg"));
    let points = tp["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "one point per level");
    assert!(
        points[0]["label"]
            .as_str()
            .unwrap()
            .contains("concurrent requests 1")
    );
    let (s, cmp) = d
        .get(&format!("/api/compare?runs={},{}", ids[0], ids[1]))
        .await;
    assert_eq!(s, 200, "{cmp}");
    assert_eq!(cmp["runs"], json!(["first", "second"]));
    let (s, chart) = d
        .get(&format!("/api/compare/chart?runs={},{}", ids[0], ids[1]))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        chart["points"].as_array().unwrap().len(),
        4,
        "two lines of two points"
    );
    let r = d
        .req(reqwest::Method::DELETE, &format!("/api/runs/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(d.get(&format!("/api/runs/{}", ids[0])).await.0, 404);
}

/// Read SSE events from a response until `n` events came (or a second
/// passed without any): (id, event name, data).
async fn read_events(r: reqwest::Response, n: usize) -> Vec<(u64, String, Value)> {
    use futures_util::StreamExt;
    let mut out = Vec::new();
    let mut buf = String::new();
    let mut body = r.bytes_stream();
    while out.len() < n {
        let Ok(Some(Ok(chunk))) =
            tokio::time::timeout(Duration::from_millis(800), body.next()).await
        else {
            break;
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (0, String::new(), Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().unwrap();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap();
                }
            }
            if !name.is_empty() {
                out.push((id, name, data));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_resumes_after_a_reconnect_without_losing_events() {
    let d = Dash::start(2).await;
    let events = d
        .req(reqwest::Method::GET, "/api/events")
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    d.send(reqwest::Method::POST, "/api/balancer/start", json!({}))
        .await;
    let first = read_events(events, 1).await;
    let (last_id, name, data) = first.last().cloned().expect("an event");
    assert_eq!(name, "balancer");
    assert_eq!(data["running"], true);
    // Disconnected: meanwhile the balancer stops and the studios change.
    d.send(reqwest::Method::POST, "/api/balancer/stop", json!({}))
        .await;
    let again = d
        .req(reqwest::Method::GET, "/api/events")
        .header("Last-Event-ID", last_id.to_string())
        .send()
        .await
        .unwrap();
    let missed = read_events(again, 1000).await;
    assert!(
        missed.iter().all(|(id, _, _)| *id > last_id),
        "only later events: {missed:?}"
    );
    assert!(
        missed
            .iter()
            .any(|(_, n, d)| n == "balancer" && d["running"] == false),
        "the stop was replayed: {missed:?}"
    );
    // Too far behind (an id from another run of the engine): resync.
    let stale = d
        .req(reqwest::Method::GET, "/api/events")
        .header("Last-Event-ID", "0")
        .send()
        .await
        .unwrap();
    let got = read_events(stale, 1).await;
    assert!(!got.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_offers_simulated_studios_that_serve_in_one_call() {
    let d = Dash::start(0).await;
    let (_, state) = d.get("/api/state").await;
    assert_eq!(state["config"]["first_run"], true, "{state}");
    assert_eq!(state["workers"], json!([]));
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/setup/simulated",
            json!({"count": 2}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let (_, state) = d.get("/api/state").await;
    assert_eq!(state["config"]["simulated"], true);
    assert_eq!(state["workers"].as_array().unwrap().len(), 2);
    let r = client()
        .post(format!("{url}/chat/completions"))
        .json(&chat_body(4, false))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn a_kill_9_during_edits_leaves_the_old_or_the_new_file_never_a_partial_one() {
    // A real `baton dashboard` process, edited through its API and killed
    // at random moments; after each kill the file must load.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workers.json");
    std::fs::write(
        &file,
        r#"{"workers":[{"id":"a","host":"127.0.0.5","port":1234,"type":"openai","model":"m","max_concurrent_requests":1}]}"#,
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for round in 0..5u64 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
            .args([
                "dashboard",
                "--no-open",
                "--no-balancer",
                "--control-port",
                "0",
                "-c",
            ])
            .arg(&file)
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let url = first_line_with(&mut child, "dashboard: ");
        let (base, token) = url.split_once("/#token=").unwrap();
        let (base, token) = (base.to_string(), token.to_string());
        rt.block_on(async {
            let c = reqwest::Client::new();
            let hammer = async {
                for i in 0.. {
                    let _ = c
                        .post(format!("{base}/api/workers"))
                        .bearer_auth(&token)
                        .json(&json!({"id": format!("r{round}-{i}"), "host": "127.0.0.6",
                                      "port": 1000 + i % 1000, "type": "openai", "model": "m",
                                      "max_concurrent_requests": 1}))
                        .send()
                        .await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(150 + round * 70), hammer).await;
        });
        unsafe {
            libc::kill(child.id() as i32, libc::SIGKILL);
        }
        let _ = child.wait();
        let cfg = baton::config::Config::load(&file)
            .unwrap_or_else(|e| panic!("round {round}: the file is broken: {e}"));
        assert!(cfg.workers.iter().any(|w| w.id == "a"));
    }
}

fn first_line_with(child: &mut std::process::Child, needle: &str) -> String {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    loop {
        let line = lines
            .next()
            .expect("the dashboard printed its address")
            .unwrap();
        if let Some((_, rest)) = line.split_once(needle) {
            // Keep reading stdout in the background so the child never blocks.
            std::thread::spawn(move || for _ in lines {});
            return rest.trim().to_string();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_the_same_structs_the_api_serves_for_a_preflight_and_a_run() {
    let d = Dash::start(2).await;
    // The API's preflight.
    let (_, v) = d
        .send(reqwest::Method::POST, "/api/preflight", json!({}))
        .await;
    let api = d.job(v["job"].as_u64().unwrap()).await["result"].clone();
    // The CLI's, over the same workers file.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["preflight", "--json", "-c"])
        .arg(&d.file)
        .env("XDG_DATA_HOME", dir.path())
        .output()
        .unwrap();
    let cli: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&cli), keys(&api));
    let check_keys = |v: &Value| keys(&v["hosts"][0]["checks"][0]);
    assert_eq!(check_keys(&cli), check_keys(&api));
    for r in [&cli, &api] {
        serde_json::from_value::<baton::preflight::Report>(r.clone()).unwrap();
    }
    // A run: `baton runs show` prints what `GET /api/runs/{id}` serves.
    let (_, v) = d
        .send(
            reqwest::Method::POST,
            "/api/bench",
            json!({"mode": "concurrency", "requests": 6, "concurrency_levels": [2], "max_tokens": 4}),
        )
        .await;
    let job = d.job(v["job"].as_u64().unwrap()).await;
    let id = job["result"]["run_id"].as_i64().unwrap();
    let (_, api_run) = d.get(&format!("/api/runs/{id}")).await;
    let data_home = d.engine.store_path().parent().unwrap().parent().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["runs", "show", &id.to_string()])
        .env("XDG_DATA_HOME", data_home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli_run, api_run);
}
