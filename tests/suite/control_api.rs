//! The control API over real sockets: who may call it, workers-file edits
//! that never lose anything, jobs, runs, and the event stream.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baton::control::ControlApi;
use baton::engine::{Engine, Options, WhenMissing};
use serde_json::{Value, json};
#[cfg(target_os = "linux")]
use support::throwaway;
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
        Self::over((0..sims).map(|i| {
            baton::sim::SimConfig {
                ttft: Duration::from_millis(20),
                tokens_per_second: 500.0,
                ..Default::default()
            }
            .with_seed(i as u64 + 1)
        }))
        .await
    }

    /// Over a workers file of these simulated studios (`studio-0`, ...).
    async fn over(cfgs: impl IntoIterator<Item = baton::sim::SimConfig>) -> Dash {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("workers.json");
        let handles = start_sims(cfgs).await;
        let sims = handles.len();
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
        Self::open(dir, file, None, handles).await
    }

    /// An engine over a workers file holding `text` (none when `None`);
    /// `simulate` as `baton dashboard --simulate N` does.
    async fn with_file(text: Option<&str>, simulate: Option<usize>) -> Dash {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("workers.json");
        if let Some(t) = text {
            std::fs::write(&file, t).unwrap();
        }
        Self::open(dir, file, simulate, Vec::new()).await
    }

    async fn open(
        dir: tempfile::TempDir,
        file: PathBuf,
        simulate: Option<usize>,
        sims: Vec<baton::sim::SimHandle>,
    ) -> Dash {
        let engine = Engine::open(Options {
            config_path: Some(file.clone()),
            when_missing: WhenMissing::FirstRun,
            simulate,
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
            _sims: sims,
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

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_workers_key_goes_to_the_keychain_and_is_never_returned() {
    if !throwaway::in_throwaway_keyring("a_workers_key_goes_to_the_keychain_and_is_never_returned")
    {
        return;
    }
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
    // In the workers' namespace, where Baton's own secrets are not.
    assert_eq!(baton::secrets::get_worker("studio-0").unwrap(), secret);
    assert!(matches!(
        baton::secrets::get_own(baton::secrets::Own::BalancerKey),
        Err(baton::secrets::SecretError::NotInKeychain(_))
    ));
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
    // "Download report": the page `baton report` writes, as a file.
    let report = d
        .req(
            reqwest::Method::GET,
            &format!("/api/runs/{}/report.html", ids[0]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 200);
    let header = |k: &str| report.headers()[k].to_str().unwrap().to_string();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    assert!(header("content-disposition").starts_with("attachment; filename="));
    let page = report.text().await.unwrap();
    assert!(page.starts_with("<!doctype html>") && page.contains("<svg") && page.contains("first"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_capacity_on_record_follows_the_pool_it_was_measured_on() {
    let d = Dash::start(2).await;
    let (s, v) = d.get("/api/capacity").await;
    assert_eq!(
        (s, &v),
        (200, &json!({"record": null})),
        "nothing measured yet"
    );
    // What the dashboard's "Measure capacity" sends.
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/bench",
            json!({"mode": "capacity", "max_tokens": 8, "slo": {"ttft_p95_ms": 60.0}}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let job = d.job(v["job"].as_u64().unwrap()).await;
    assert_eq!(job["status"], "finished", "{job}");
    let run_id = job["result"]["run_id"].as_i64().unwrap();
    let (_, run) = d.get(&format!("/api/runs/{run_id}")).await;
    let measured = run["capacity"]["max_concurrency"].as_u64().unwrap();
    assert!(measured >= 1, "{}", run["capacity"]);
    let (_, v) = d.get("/api/capacity").await;
    let record = &v["record"];
    assert_eq!(record["run_id"], run_id);
    assert_eq!(record["max_concurrency"].as_u64(), Some(measured));
    assert_eq!(record["slo"], json!({"ttft_p95_ms": 60.0}));
    assert!(
        record["sentence"]
            .as_str()
            .unwrap()
            .starts_with("This pool serves"),
        "{record}"
    );
    // Another pool (a studio disabled) has no capacity on record.
    let (s, _) = d
        .send(
            reqwest::Method::POST,
            "/api/workers/studio-1/disable",
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(d.get("/api/capacity").await.1, json!({"record": null}));
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
        let mut child = BatonCmd::new([
            "dashboard",
            "--no-open",
            "--no-balancer",
            "--control-port",
            "0",
            "-c",
        ])
        .arg(&file)
        .home(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
        let url = child.stdout_after("dashboard: ");
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
        child.kill();
        let cfg = baton::config::Config::load(&file)
            .unwrap_or_else(|e| panic!("round {round}: the file is broken: {e}"));
        assert!(cfg.workers.iter().any(|w| w.id == "a"));
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
    let out = BatonCmd::new(["preflight", "--json", "-c"])
        .arg(&d.file)
        .env("XDG_DATA_HOME", dir.path())
        .output();
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
    let out = BatonCmd::new(["runs", "show", &id.to_string()])
        .env("XDG_DATA_HOME", data_home)
        .output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli_run: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli_run, api_run);
}

/// Three studios, a `balancer` section and aliases: what the issue's user
/// had before two clicks wiped it.
const THREE_STUDIOS: &str = r#"{
  "workers": [
    {"id": "mac-studio-1", "host": "127.0.0.11", "port": 9, "type": "lm_studio", "model": "m", "max_concurrent_requests": 4},
    {"id": "mac-studio-2", "host": "127.0.0.12", "port": 9, "type": "ollama", "model": "m", "max_concurrent_requests": 2, "weight": 2.0},
    {"id": "mac-studio-3", "host": "127.0.0.13", "port": 9, "type": "llama_cpp", "model": "m", "enabled": false}
  ],
  "balancer": {"queue_limit": 77, "strategy": "round_robin", "apis": ["openai", "ollama"],
               "allowed_hosts": ["my-mac.local"], "allowed_origins": ["http://localhost:3000"]},
  "aliases": {"m7": ["m", "mistral:7b"]}
}"#;

fn added(id: &str) -> Value {
    json!({"id": id, "host": "127.0.0.14", "port": 9, "type": "openai", "model": "m",
           "max_concurrent_requests": 1})
}

/// The file holds everything `before` did, plus `plus`.
fn assert_kept(file: &Path, before: &str, plus: &[&str]) {
    let now = baton::config::Config::load(file).unwrap();
    let mut want = baton::config::Config::parse(before, file).unwrap();
    for id in plus {
        let w = baton::config::Config::parse(&json!({"workers": [added(id)]}).to_string(), file)
            .unwrap()
            .workers
            .remove(0);
        want.workers.push(w);
    }
    assert_eq!(now, want, "the file lost or changed something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_setup_over_an_existing_file_is_refused_and_the_next_edit_keeps_everything() {
    let d = Dash::with_file(Some(THREE_STUDIOS), None).await;
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/setup/simulated", json!({}))
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"]["code"], "workers_file_exists", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("3 studio"),
        "{v}"
    );
    assert!(
        v["error"]["fix"].as_str().unwrap().contains("--simulate"),
        "{v}"
    );
    let (_, state) = d.get("/api/state").await;
    assert_eq!(state["config"]["simulated"], false);
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/workers", added("mac-studio-4"))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_kept(&d.file, THREE_STUDIOS, &["mac-studio-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_while_simulated_studios_serve_starts_from_the_file_not_from_them() {
    // `baton dashboard --simulate 2 -c workers.json` over a real pool.
    let d = Dash::with_file(Some(THREE_STUDIOS), Some(2)).await;
    let (_, state) = d.get("/api/state").await;
    assert_eq!(state["config"]["simulated"], true, "{state}");
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/workers", added("mac-studio-4"))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_kept(&d.file, THREE_STUDIOS, &["mac-studio-4"]);
    // The pool served is now the file's.
    let (_, workers) = d.get("/api/workers").await;
    assert_eq!(workers.as_array().unwrap().len(), 4, "{workers}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_run_setup_then_an_edit_creates_the_file_with_only_what_was_added() {
    let d = Dash::with_file(None, None).await;
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/setup/simulated",
            json!({"count": 1}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(!d.file.exists(), "setup wrote the file");
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/workers", added("studio-1"))
        .await;
    assert_eq!(s, 201, "{v}");
    let cfg = baton::config::Config::load(&d.file).unwrap();
    let ids: Vec<&str> = cfg.workers.iter().map(|w| w.id.as_str()).collect();
    assert_eq!(ids, ["studio-1"], "simulated studios are never written");
}

#[tokio::test]
async fn an_edit_keeps_a_change_made_to_the_file_by_hand_and_never_overwrites_a_broken_one() {
    let d = Dash::with_file(Some(THREE_STUDIOS), None).await;
    // Edited by hand after the dashboard loaded it (no reload).
    let by_hand = THREE_STUDIOS.replace("\"queue_limit\": 77", "\"queue_limit\": 78");
    std::fs::write(&d.file, &by_hand).unwrap();
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/workers", added("mac-studio-4"))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_kept(&d.file, &by_hand, &["mac-studio-4"]);
    // A file broken by hand is reported, with the loader's message, and kept.
    let broken = "{\"workers\": [ {\"id\": \"x\" ";
    std::fs::write(&d.file, broken).unwrap();
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/workers", added("mac-studio-5"))
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{v}"
    );
    assert_eq!(file_text(&d.file), broken);
}

#[tokio::test]
async fn ids_that_would_become_odd_keychain_names_or_headers_are_refused_exactly_as_written() {
    let d = Dash::start(1).await;
    let before = file_text(&d.file);
    for id in [
        " pad ",
        "a\r\nx-injected: 1",
        "../etc",
        "é",
        &"a".repeat(65),
    ] {
        let (s, v) = d
            .send(reqwest::Method::POST, "/api/workers", added(id))
            .await;
        assert_eq!(s, 400, "{id:?}: {v}");
        assert_eq!(v["error"]["field"], "workers[1].id", "{v}");
        assert!(
            v["error"]["fix"]
                .as_str()
                .unwrap()
                .contains("letters, digits"),
            "{v}"
        );
    }
    assert_eq!(file_text(&d.file), before);
}

#[tokio::test]
async fn unknown_api_routes_and_methods_answer_with_the_apis_json_error() {
    let d = Dash::start(1).await;
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/api/nope", 404, "unknown_route"),
        (
            reqwest::Method::GET,
            "/api/workers/a/b/c",
            404,
            "unknown_route",
        ),
        (
            reqwest::Method::DELETE,
            "/api/state",
            405,
            "method_not_allowed",
        ),
    ] {
        let r = d.req(method.clone(), path).send().await.unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(path),
            "{v}"
        );
        assert!(v["error"]["fix"].is_string(), "{v}");
    }
    // The UI's files keep their plain 404.
    let r = d.http.get(d.url("/ui/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// A raw request to `addr`; the whole reply.
fn raw_reply(addr: std::net::SocketAddr, head: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_unreadable_host_and_origin_headers_are_refused_by_the_control_api() {
    let d = Dash::start(1).await;
    let addr = d.api.addr();
    let port = addr.port();
    let auth = format!("Authorization: Bearer {}", d.api.token());
    let heads = [
        format!(
            "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n{auth}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n{auth}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST /api/balancer/start HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://évil.example\r\n{auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    ];
    for head in heads {
        let reply = tokio::task::spawn_blocking(move || raw_reply(addr, head.as_bytes()))
            .await
            .unwrap();
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        assert!(reply.contains("\"code\":\"invalid_"), "{reply}");
    }
    assert!(
        !d.engine.balancer_status().running,
        "a refused call did something"
    );
    // The same headers, once and readable: served.
    let ok = format!(
        "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://127.0.0.1:{port}\r\n{auth}\r\nConnection: close\r\n\r\n"
    );
    let reply = tokio::task::spawn_blocking(move || raw_reply(addr, ok.as_bytes()))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// Whether the server closed `s` within `limit` (reads until EOF).
fn closed_within(s: &mut std::net::TcpStream, limit: Duration) -> bool {
    use std::io::Read;
    let end = std::time::Instant::now() + limit;
    let mut buf = [0u8; 1024];
    loop {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // A 408 before the close is fine.
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_and_idle_connections_are_closed_and_no_more_than_the_cap_are_held() {
    use std::io::Write;
    let d = std::sync::Arc::new(Dash::start(1).await);
    let addr = d.api.addr();
    let timeout = baton::control::HEADER_READ_TIMEOUT;
    let cap = baton::control::MAX_CONNECTIONS;

    // 200 connections trickling a request head, a byte every 300 ms.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut lorises = Vec::new();
    for _ in 0..200 {
        lorises.push(std::net::TcpStream::connect(addr).unwrap());
    }
    let trickle = {
        let mut socks: Vec<_> = lorises.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let head = b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &mut socks {
                    let _ = s.write_all(&[head.get(i).copied().unwrap_or(b'a')]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // The dashboard is served meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = std::time::Instant::now();
    assert_eq!(d.get("/api/state").await.0, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "slow next to lorises: {:?}",
        t.elapsed()
    );
    // Every one of them is closed once the head timeout passes.
    let started = std::time::Instant::now();
    let all_closed = tokio::task::spawn_blocking(move || {
        lorises
            .iter_mut()
            .all(|s| closed_within(s, timeout + Duration::from_secs(5)))
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickle.join().unwrap();
    assert!(
        all_closed,
        "a slow-loris connection outlived the head timeout"
    );
    assert!(started.elapsed() < timeout + Duration::from_secs(5));

    // An idle keep-alive connection (one request answered, then nothing)
    // is closed too, so idle ones cannot pile up.
    let mut idle = std::net::TcpStream::connect(addr).unwrap();
    idle.write_all(
        format!(
            "GET /api/state HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {}\r\n\r\n",
            addr.port(),
            d.api.token()
        )
        .as_bytes(),
    )
    .unwrap();
    // At the cap, a new client waits until a place frees.
    let mut held: Vec<_> = (0..cap - 1)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = {
        // A new connection, not one from a client's keep-alive pool.
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let req = c.get(d.url("/api/state")).bearer_auth(d.api.token());
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            let s = req.send().await.unwrap().status().as_u16();
            (s, t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !waiting.is_finished(),
        "a connection beyond the cap was served at once"
    );
    let (closed, held_closed) = tokio::task::spawn_blocking(move || {
        let idle_closed = closed_within(&mut idle, timeout + Duration::from_secs(5));
        // Any still waiting for a place is closed a timeout after it gets one.
        let held_closed = held
            .iter_mut()
            .all(|s| closed_within(s, timeout + Duration::from_secs(5)));
        (idle_closed, held_closed)
    })
    .await
    .unwrap();
    assert!(closed, "an idle keep-alive connection stayed open");
    assert!(held_closed, "silent connections stayed open");
    let (status, waited) = tokio::time::timeout(timeout + Duration::from_secs(5), waiting)
        .await
        .expect("the waiting client was served once places freed")
        .unwrap();
    assert_eq!(status, 200);
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_can_never_read_or_replace_batons_own_secrets() {
    use baton::secrets::{self, Own};
    if !throwaway::in_throwaway_keyring("a_worker_can_never_read_or_replace_batons_own_secrets") {
        return;
    }
    let (token, balancer_key) = ("c".repeat(64), "bk-own-balancer-key-0042");
    secrets::set_own(Own::ControlToken, &token).unwrap();
    secrets::set_own(Own::BalancerKey, balancer_key).unwrap();
    let d = Dash::with_file(
        Some(&json!({"workers": [added("balancer-api-key"), added("studio-0")]}).to_string()),
        None,
    )
    .await;
    // A worker named like the balancer's old entry cannot set "its" key.
    let (s, v) = d
        .send(
            reqwest::Method::PUT,
            "/api/workers/balancer-api-key/key",
            json!({"key": "replaced"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Baton's own"),
        "{v}"
    );
    assert!(
        v["error"]["fix"].as_str().unwrap().contains("rename"),
        "{v}"
    );
    // An ordinary worker's key lands in its own entry.
    let (s, v) = d
        .send(
            reqwest::Method::PUT,
            "/api/workers/studio-0/key",
            json!({"key": "sk-studio-0"}),
        )
        .await;
    assert_eq!(s, 204, "{v}");
    assert_eq!(secrets::get_worker("studio-0").unwrap(), "sk-studio-0");
    // No reference from a worker may name Baton's own, by any name.
    for (i, api_key) in [
        json!({"keychain": "control-token"}),
        json!({"keychain": "baton/control-token"}),
        json!({"keychain": "balancer-api-key"}),
        json!({"keychain": "baton/balancer-key"}),
        json!({"env": "BATON_API_KEY"}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut w = added(&format!("thief-{i}"));
        w["api_key"] = api_key.clone();
        let (s, v) = d
            .send(reqwest::Method::POST, "/api/workers", w.clone())
            .await;
        assert_eq!(s, 400, "{api_key}: {v}");
        assert!(
            v["error"]["field"]
                .as_str()
                .unwrap()
                .starts_with("workers[2].api_key"),
            "{v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Baton would send it"),
            "{v}"
        );
        w["id"] = "studio-0".into();
        let (s, _) = d
            .send(reqwest::Method::PUT, "/api/workers/studio-0", w)
            .await;
        assert_eq!(s, 400, "{api_key}");
    }
    // And below the loader: the keychain refuses the names too.
    for name in ["control-token", "balancer-api-key"] {
        let e = secrets::resolve(&baton::config::SecretRef::Keychain(name.into())).unwrap_err();
        assert!(matches!(e, secrets::SecretError::Refused(_)), "{e}");
    }
    assert_eq!(secrets::get_own(Own::ControlToken).unwrap(), token);
    assert_eq!(
        secrets::balancer_key().unwrap().as_deref(),
        Some(balancer_key)
    );
    let cfg = baton::config::Config::load(&d.file).unwrap();
    assert_eq!(cfg.workers.len(), 2);
}

/// The property test's model of the workers file and its steps (the test
/// needs a throwaway keyring, so Linux only).
#[cfg(target_os = "linux")]
mod edits {
    use super::*;
    use proptest::prelude::*;

    /// Ids the steps use: valid ones (which collide, so replace, remove and
    /// duplicates happen) and ones the loader must refuse.
    pub const IDS: [&str; 8] = [
        "a",
        "b",
        "c.d",
        "studio_0",
        "balancer-api-key",
        " pad ",
        "x\r\ny",
        "../up",
    ];
    const VALID_IDS: usize = 5;

    #[derive(Clone, Debug)]
    pub struct Entry {
        pub json: Value,
        /// Whether the loader accepts it (a valid id, a valid port).
        pub valid: bool,
    }

    #[derive(Clone, Debug)]
    pub enum Step {
        Add(Entry),
        Replace(usize, Entry),
        Remove(usize),
        Enable(usize, bool),
        Drain(usize, bool),
        Key(usize),
        Setup,
        Listen,
        Start,
        Stop,
        /// Someone edits the file by hand (no reload).
        HandEdit(u32),
    }

    pub fn entry() -> impl Strategy<Value = Entry> {
        (
            0..IDS.len(),
            1u8..4,
            prop_oneof![Just(9u32), Just(19), Just(0)],
            prop_oneof![Just("lm_studio"), Just("ollama"), Just("openai")],
            prop_oneof![Just(json!(1)), Just(json!(4)), Just(json!("auto"))],
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(id, host, port, kind, slots, enabled, weighted)| {
                let mut json = json!({"id": IDS[id], "host": format!("127.0.0.{host}"),
                    "port": port, "type": kind, "model": "m", "max_concurrent_requests": slots});
                if !enabled {
                    json["enabled"] = false.into();
                }
                if weighted {
                    json["weight"] = 2.5.into();
                }
                Entry {
                    json,
                    valid: id < VALID_IDS && port != 0,
                }
            })
    }

    pub fn step() -> impl Strategy<Value = Step> {
        let id = 0..IDS.len();
        prop_oneof![
            4 => entry().prop_map(Step::Add),
            2 => (id.clone(), entry()).prop_map(|(i, e)| Step::Replace(i, e)),
            2 => id.clone().prop_map(Step::Remove),
            2 => (id.clone(), any::<bool>()).prop_map(|(i, on)| Step::Enable(i, on)),
            1 => (id.clone(), any::<bool>()).prop_map(|(i, on)| Step::Drain(i, on)),
            2 => id.prop_map(Step::Key),
            1 => Just(Step::Setup),
            1 => Just(Step::Listen),
            1 => Just(Step::Start),
            1 => Just(Step::Stop),
            1 => (1u32..5000).prop_map(Step::HandEdit),
        ]
    }

    /// The file at the start: none (a first run) or some valid studios
    /// with a `balancer` section and aliases.
    pub fn initial() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            1 => Just(None),
            3 => proptest::collection::vec(entry(), 0..4).prop_map(|entries| {
                let mut seen = std::collections::HashSet::new();
                let workers: Vec<Value> = entries
                    .into_iter()
                    .filter(|e| e.valid && seen.insert(e.json["id"].clone()))
                    .map(|e| e.json)
                    .collect();
                Some(json!({"workers": workers,
                    "balancer": {"queue_limit": 77, "strategy": "round_robin",
                                 "apis": ["openai", "ollama"], "allowed_hosts": ["my-mac.local"]},
                    "aliases": {"m7": ["m", "mistral:7b"]}}))
            }),
        ]
    }

    /// A path segment for an id, whatever it holds.
    pub fn segment(id: &str) -> String {
        id.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    pub fn position(model: &Option<Value>, id: &str) -> Option<usize> {
        model.as_ref()?["workers"]
            .as_array()
            .unwrap()
            .iter()
            .position(|w| w["id"] == id)
    }
}

/// Random sequences of dashboard edits, through the real control API over
/// HTTP, against a model of the file: after every step the file holds
/// exactly what the model says (studios, `balancer` section, aliases), so
/// nothing that was not removed ever goes missing. Baton's own secrets
/// never change on the way.
#[cfg(target_os = "linux")]
#[test]
fn no_sequence_of_dashboard_edits_loses_a_studio_or_a_setting() {
    use baton::secrets::{self, Own};
    use edits::*;
    use proptest::prelude::{prop_assert, prop_assert_eq};
    use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

    if !throwaway::in_throwaway_keyring(
        "no_sequence_of_dashboard_edits_loses_a_studio_or_a_setting",
    ) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let token = "c".repeat(64);
    secrets::set_own(Own::ControlToken, &token).unwrap();
    secrets::set_own(Own::BalancerKey, "bk-never-touched").unwrap();
    let cases = std::env::var("BATON_PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(128);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = (initial(), proptest::collection::vec(step(), 1..20));
    let result = runner.run(&strategy, |(init, steps)| {
        rt.block_on(async {
            let text = init.as_ref().map(|v| v.to_string());
            let d = Dash::with_file(text.as_deref(), None).await;
            let mut model = init;
            for (n, step) in steps.iter().enumerate() {
                let at = |what: &str| format!("step {n} {step:?}: {what}");
                let (status, body) = apply(&d, step).await;
                let expected = expect(&mut model, step, &d.file);
                if let Some(want) = expected {
                    prop_assert_eq!(status, want, "{}", at(&body.to_string()));
                }
                // The file, exactly as the model says.
                match &model {
                    None => prop_assert!(!d.file.exists(), "{}", at("a file appeared")),
                    Some(m) => {
                        let want = baton::config::Config::parse(&m.to_string(), &d.file)
                            .map_err(|e| TestCaseError::fail(at(&format!("model invalid: {e}"))))?;
                        let got = baton::config::Config::load(&d.file)
                            .map_err(|e| TestCaseError::fail(at(&e.to_string())))?;
                        for w in &want.workers {
                            prop_assert!(
                                got.workers.iter().any(|g| g.id == w.id),
                                "{}",
                                at(&format!("`{}` went missing", w.id))
                            );
                        }
                        prop_assert_eq!(
                            &got.balancer,
                            &want.balancer,
                            "{}",
                            at("balancer section")
                        );
                        prop_assert_eq!(&got.aliases, &want.aliases, "{}", at("aliases"));
                        prop_assert_eq!(got, want, "{}", at("file"));
                    }
                }
                if let Step::Key(i) = step
                    && status == 204
                {
                    prop_assert_eq!(
                        secrets::get_worker(IDS[*i]).ok(),
                        Some(format!("sk-{}", IDS[*i])),
                        "{}",
                        at("key")
                    );
                }
            }
            prop_assert_eq!(
                secrets::get_own(Own::ControlToken).ok(),
                Some(token.clone())
            );
            prop_assert_eq!(
                secrets::get_own(Own::BalancerKey).ok(),
                Some("bk-never-touched".to_string())
            );
            d.engine.shutdown().await;
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    /// Send the step to the API; (status, body).
    async fn apply(d: &Dash, step: &Step) -> (u16, Value) {
        use reqwest::Method;
        let seg = |i: &usize| segment(IDS[*i]);
        match step {
            Step::Add(e) => d.send(Method::POST, "/api/workers", e.json.clone()).await,
            Step::Replace(i, e) => {
                d.send(
                    Method::PUT,
                    &format!("/api/workers/{}", seg(i)),
                    e.json.clone(),
                )
                .await
            }
            Step::Remove(i) => {
                d.send(
                    Method::DELETE,
                    &format!("/api/workers/{}", seg(i)),
                    json!({}),
                )
                .await
            }
            Step::Enable(i, on) => {
                let action = if *on { "enable" } else { "disable" };
                d.send(
                    Method::POST,
                    &format!("/api/workers/{}/{action}", seg(i)),
                    json!({}),
                )
                .await
            }
            Step::Drain(i, on) => {
                let action = if *on { "drain" } else { "undrain" };
                d.send(
                    Method::POST,
                    &format!("/api/workers/{}/{action}", seg(i)),
                    json!({}),
                )
                .await
            }
            Step::Key(i) => {
                d.send(
                    Method::PUT,
                    &format!("/api/workers/{}/key", seg(i)),
                    json!({"key": format!("sk-{}", IDS[*i])}),
                )
                .await
            }
            Step::Setup => {
                d.send(Method::POST, "/api/setup/simulated", json!({"count": 1}))
                    .await
            }
            Step::Listen => {
                d.send(
                    Method::PUT,
                    "/api/balancer/listen",
                    json!({"listen": "127.0.0.1:0"}),
                )
                .await
            }
            Step::Start => d.send(Method::POST, "/api/balancer/start", json!({})).await,
            Step::Stop => d.send(Method::POST, "/api/balancer/stop", json!({})).await,
            Step::HandEdit(n) => {
                if let Ok(text) = std::fs::read_to_string(&d.file) {
                    let mut v: Value = serde_json::from_str(&text).unwrap();
                    v["balancer"]["queue_limit"] = (*n).into();
                    std::fs::write(&d.file, v.to_string()).unwrap();
                }
                (0, Value::Null)
            }
        }
    }

    /// Apply the step to the model; the status the API must answer (`None`
    /// when it depends on the running balancer).
    fn expect(model: &mut Option<Value>, step: &Step, file: &Path) -> Option<u16> {
        let exists = |m: &Option<Value>, i: usize| position(m, IDS[i]);
        match step {
            Step::Add(e) => {
                let dup = position(model, e.json["id"].as_str().unwrap()).is_some();
                if !e.valid || dup {
                    return Some(400);
                }
                model.get_or_insert_with(|| json!({"workers": []}))["workers"]
                    .as_array_mut()
                    .unwrap()
                    .push(e.json.clone());
                Some(201)
            }
            Step::Replace(i, e) => {
                let Some(at) = exists(model, *i) else {
                    return Some(404);
                };
                let new_id = e.json["id"].as_str().unwrap();
                let clash = position(model, new_id).is_some_and(|p| p != at);
                if !e.valid || clash {
                    return Some(400);
                }
                let workers = model.as_mut().unwrap()["workers"].as_array_mut().unwrap();
                let mut w = e.json.clone();
                // The key stays unless the edit says otherwise.
                if let Some(k) = workers[at].get("api_key") {
                    w["api_key"] = k.clone();
                }
                workers[at] = w;
                Some(200)
            }
            Step::Remove(i) => {
                let Some(at) = exists(model, *i) else {
                    return Some(404);
                };
                model.as_mut().unwrap()["workers"]
                    .as_array_mut()
                    .unwrap()
                    .remove(at);
                Some(204)
            }
            Step::Enable(i, on) => {
                let Some(at) = exists(model, *i) else {
                    return Some(404);
                };
                model.as_mut().unwrap()["workers"][at]["enabled"] = (*on).into();
                Some(200)
            }
            // The running balancer decides; the file never changes.
            Step::Drain(..) => None,
            Step::Key(i) => {
                if baton::secrets::Own::named(IDS[*i]).is_some() {
                    return Some(400);
                }
                let Some(at) = exists(model, *i) else {
                    return Some(404);
                };
                model.as_mut().unwrap()["workers"][at]["api_key"] = json!({"keychain": IDS[*i]});
                Some(204)
            }
            Step::Setup => Some(if model.is_some() { 409 } else { 200 }),
            Step::Listen | Step::Start | Step::Stop => Some(200),
            Step::HandEdit(n) => {
                if let Some(m) = model {
                    if m.get("balancer").is_none() {
                        m["balancer"] = json!({});
                    }
                    m["balancer"]["queue_limit"] = (*n).into();
                }
                let _ = file;
                None
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_and_unload_through_lm_studio_and_ollama_and_the_studios_say_so() {
    use baton::sim::{ModelStatus, SimConfig};
    use baton::studio::StudioKind;
    let studio = |kind: StudioKind, models: &[&str], loaded: &[&str]| SimConfig {
        kind,
        models: models.iter().map(|m| m.to_string()).collect(),
        loaded: Some(loaded.iter().map(|m| m.to_string()).collect()),
        model_load_ms: models.iter().map(|m| (m.to_string(), 50)).collect(),
        ..Default::default()
    };
    let d = Dash::over([
        studio(StudioKind::LmStudio, &["x", "y"], &["x"]),
        studio(StudioKind::Ollama, &["x", "y"], &["x"]),
        // llama.cpp's server serves the one model it was started with.
        studio(StudioKind::LlamaCpp, &["x"], &["x"]),
    ])
    .await;
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/balancer/start", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    // Per model: where it is loaded, where only available.
    let mut seen = Value::Null;
    for _ in 0..100 {
        (_, seen) = d.get("/api/models").await;
        let studios = seen["studios"].as_array().cloned().unwrap_or_default();
        if studios.len() == 3 && studios.iter().all(|s| s["models"] != json!([])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let model = |v: &Value, name: &str| {
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {v}"))
    };
    let y = model(&seen, "y");
    assert_eq!(y["loaded_on"], json!([]), "{seen}");
    assert_eq!(y["available_on"], json!(["studio-0", "studio-1"]), "{seen}");
    assert!(y["context_length"].as_u64().is_some(), "{seen}");
    let llama = &seen["studios"][2];
    assert_eq!(llama["can_load"], false);
    assert!(llama["cannot_load"].as_str().unwrap().contains("llama.cpp"));

    // Load y on each kind with an API: the studio's own state follows.
    for (i, id) in ["studio-0", "studio-1"].iter().enumerate() {
        let (s, v) = d
            .send(
                reqwest::Method::POST,
                "/api/models/y/load",
                json!({"studio": id}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let job = d.job(v["job"].as_u64().unwrap()).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert_eq!(job["kind"], "models");
        assert!(
            job["result"]["steps"][0]["took_ms"].as_u64().is_some(),
            "{job}"
        );
        let y = d._sims[i]
            .models()
            .into_iter()
            .find(|m| m.name == "y")
            .unwrap();
        assert_eq!(y.status, ModelStatus::Loaded, "{id}");
    }
    let (_, v) = d.get("/api/models").await;
    assert_eq!(model(&v, "y")["loaded_on"], json!(["studio-0", "studio-1"]));
    // And unload it.
    for (i, id) in ["studio-0", "studio-1"].iter().enumerate() {
        let (s, v) = d
            .send(
                reqwest::Method::POST,
                "/api/models/y/unload",
                json!({"studio": id}),
            )
            .await;
        assert_eq!(s, 202, "{v}");
        let job = d.job(v["job"].as_u64().unwrap()).await;
        assert_eq!(job["status"], "finished", "{job}");
        let y = d._sims[i]
            .models()
            .into_iter()
            .find(|m| m.name == "y")
            .unwrap();
        assert_ne!(y.status, ModelStatus::Loaded, "{id}");
    }
    // Warm up the pool: every studio that has it and can load.
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/models/y/warm", json!({}))
        .await;
    assert_eq!(s, 202, "{v}");
    let job = d.job(v["job"].as_u64().unwrap()).await;
    assert_eq!(job["result"]["steps"].as_array().unwrap().len(), 2, "{job}");
    for sim in &d._sims[..2] {
        let y = sim.models().into_iter().find(|m| m.name == "y").unwrap();
        assert_eq!(y.status, ModelStatus::Loaded);
    }
    // A kind without such an API says so; a model it lacks fails the job
    // with the studio's reason and a fix.
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/models/x/unload",
            json!({"studio": "studio-2"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llama.cpp"),
        "{v}"
    );
    let (s, v) = d
        .send(
            reqwest::Method::POST,
            "/api/models/nope/load",
            json!({"studio": "studio-0"}),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let job = d.job(v["job"].as_u64().unwrap()).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(
        job["error"]["fix"].as_str().unwrap().contains("studio-0"),
        "{job}"
    );
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/models/y/explode", json!({}))
        .await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_pool_shows_a_model_loaded_on_two_studios_one_on_one_and_one_cold() {
    let d = Dash::with_file(None, Some(3)).await;
    let (s, v) = d
        .send(reqwest::Method::POST, "/api/balancer/start", json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let mut view = Value::Null;
    for _ in 0..100 {
        (_, view) = d.get("/api/models").await;
        let studios = view["studios"].as_array().cloned().unwrap_or_default();
        if studios.len() == 3 && studios.iter().all(|s| s["models"] != json!([])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let [two, one, cold] = baton::engine::DEMO_MODELS;
    let on = |name: &str, field: &str| -> usize {
        view["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {view}"))[field]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(on(two, "loaded_on"), 2, "{view}");
    assert_eq!(on(one, "loaded_on"), 1, "{view}");
    assert_eq!(
        (on(cold, "loaded_on"), on(cold, "available_on")),
        (0, 3),
        "{view}"
    );
}
