//! Security: secrets and prompts stay out of logs and output; hostile or
//! broken clients are turned away without affecting others.

use crate::support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton::config::{Config, SecretRef};
#[cfg(target_os = "linux")]
use support::throwaway;
use support::*;

const BALANCER_KEY: &str = "bk-4f1d-very-secret-balancer-key";
const STUDIO_KEY: &str = "sk-77aa-very-secret-studio-key";
const PROMPT: &str = "confidential-prompt-zx81-do-not-log";

/// `baton serve` with both kinds of key in play; returns stdout+stderr after
/// a chat, /stats, /metrics, /health and a 401.
async fn serve_and_collect(log: Option<&str>) -> String {
    let s = start_sim(sim_cfg(2, 1, 1000.0)).await;
    let mut w = worker_for("studio", &s);
    w.api_key = Some(SecretRef::Env("STUDIO_KEY".into()));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.json");
    std::fs::write(
        &file,
        Config {
            workers: vec![w],
            balancer: Default::default(),
            ..Default::default()
        }
        .to_json()
        .to_string(),
    )
    .unwrap();
    let port = free_port();
    let mut cmd = BatonCmd::new(["serve", "-c"])
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("BATON_API_KEY", BALANCER_KEY)
        .env("STUDIO_KEY", STUDIO_KEY)
        .env_remove("BATON_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(l) = log {
        cmd = cmd.env("BATON_LOG", l);
    }
    let mut child = cmd.spawn();
    let base = format!("http://127.0.0.1:{port}");
    let c = client();
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok())
        .await
    );
    let mut seen = String::new();
    let mut body = chat_body(4, true);
    body["messages"][0]["content"] = PROMPT.into();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(BALANCER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    seen += &r.text().await.unwrap();
    let r = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("nope")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    seen += &r.text().await.unwrap();
    for path in ["/stats", "/metrics", "/health"] {
        seen += &c
            .get(format!("{base}{path}"))
            .bearer_auth(BALANCER_KEY)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    // A reload and a bad request, so error paths log too.
    let _ = c
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(BALANCER_KEY)
        .body("{oops")
        .send()
        .await;
    child.hang_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill();
    let out = child.wait_with_output();
    seen += &String::from_utf8_lossy(&out.stdout);
    seen += &String::from_utf8_lossy(&out.stderr);
    // The upstream studio did get the worker key: proves it was in use.
    assert!(s.stats().completed >= 1);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_prompts_never_reach_logs_or_output_at_the_default_level() {
    let seen = serve_and_collect(None).await;
    assert!(seen.contains("is serving"), "collected the output: {seen}");
    assert!(!seen.contains(BALANCER_KEY), "balancer key leaked:\n{seen}");
    assert!(!seen.contains(STUDIO_KEY), "studio key leaked:\n{seen}");
    assert!(
        !seen.contains(PROMPT),
        "prompt logged at the default level:\n{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_stay_out_even_of_trace_logs() {
    let seen = serve_and_collect(Some("trace")).await;
    assert!(!seen.contains(BALANCER_KEY), "balancer key in trace logs");
    assert!(!seen.contains(STUDIO_KEY), "studio key in trace logs");
}

#[test]
fn preflight_json_and_config_errors_never_print_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.json");
    std::fs::write(
        &file,
        r#"{"workers":[{"id":"a","host":"127.0.0.1","port":9,"type":"lm_studio","model":"m","max_concurrent_requests":1,"api_key":{"env":"STUDIO_KEY"}}]}"#,
    )
    .unwrap();
    let out = BatonCmd::new(["preflight", "--json", "-c"])
        .arg(&file)
        .env("STUDIO_KEY", STUDIO_KEY)
        .output();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("\"hosts\""), "{text}");
    assert!(!text.contains(STUDIO_KEY));
    // A key written into the file by mistake is refused without echoing it.
    std::fs::write(&file, format!(r#"{{"workers":[{{"id":"a","host":"h","port":1,"type":"lm_studio","model":"m","max_concurrent_requests":1,"api_key":"{STUDIO_KEY}"}}]}}"#)).unwrap();
    let out = BatonCmd::new(["config", "check", "-c"]).arg(&file).output();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("api_key") && !text.contains(STUDIO_KEY),
        "{text}"
    );
}

fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_turned_away_and_others_keep_working() {
    let lab = Lab::start(vec![sim_cfg(4, 1, 50.0)], test_settings()).await;
    let addr = lab.balancer.addr();
    let c = client();
    // A long honest stream runs through everything below.
    let (c2, url) = (c.clone(), lab.url());
    let honest = tokio::spawn(async move { stream_chat(&c2, &url, 60).await });

    // Oversized headers: 431, connection closed.
    let big = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let addr2 = addr;
    let reply = tokio::task::spawn_blocking(move || raw(addr2, big.as_bytes()))
        .await
        .unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        reply.lines().next().unwrap_or("")
    );
    // Invalid UTF-8 and truncated JSON bodies: 400, OpenAI-shaped.
    for body in [
        vec![0xff, 0xfe, b'{', 0x80],
        b"{\"model\": \"mistral".to_vec(),
    ] {
        let r = c
            .post(format!("{}/chat/completions", lab.url()))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));
    }
    // Slow loris: connections that trickle a request head forever.
    let mut lorises = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        lorises.push(s);
    }
    // Everyone else is served as usual meanwhile.
    let t = Instant::now();
    for _ in 0..5 {
        let (status, _, sse) = stream_chat(&c, &lab.url(), 2).await;
        assert_eq!(status, 200);
        assert!(sse.unwrap().done);
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "served slowly next to slow clients: {:?}",
        t.elapsed()
    );
    let (status, _, sse) = honest.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(sse.unwrap().content_events(), 60);
    // The trickling connections are closed once the head timeout passes.
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = lorises.pop().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 512];
        let t = Instant::now();
        let n = s.read(&mut buf);
        (
            n.map(|n| n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"))
                .unwrap_or(true),
            t.elapsed(),
        )
    })
    .await
    .unwrap();
    assert!(
        closed.0 && closed.1 < Duration::from_secs(14),
        "slow client still connected after {:?}",
        closed.1
    );
}

/// A request to the balancer with whatever `Host` and `Origin` a browser
/// would send; (status, body).
async fn as_browser(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    host: Option<&str>,
    origin: Option<&str>,
    body: Option<String>,
) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut r = c.request(method, url);
    if let Some(h) = host {
        r = r.header("Host", h);
    }
    if let Some(o) = origin {
        r = r.header("Origin", o);
    }
    if let Some(b) = body {
        // What a page can send without a CORS preflight.
        r = r.header("Content-Type", "text/plain").body(b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        headers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_web_page_can_use_the_balancer_by_rebinding_its_name_or_from_its_own_origin() {
    let lab = Lab::start(vec![sim_cfg(2, 1, 1000.0)], test_settings()).await;
    let c = client();
    let root = lab.root();
    let port = lab.balancer.addr().port();
    let rebound = format!("attacker.example:{port}");
    let chat = chat_body(4, false).to_string();
    let before = lab.sims[0].stats().requests;

    // DNS rebinding: the page's own name in Host. Nothing is answered, in
    // each API's own error shape, with the fix.
    let (s, v, h) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/chat/completions"),
        Some(&rebound),
        None,
        Some(chat.clone()),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden_host", "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("attacker.example") && m.contains("balancer.allowed_hosts"),
        "{m}"
    );
    assert!(!h.contains_key("access-control-allow-origin"));
    let (s, v, _) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/messages"),
        Some(&rebound),
        None,
        Some("{}".into()),
    )
    .await;
    assert_eq!((s, v["type"].as_str()), (403, Some("error")), "{v}");
    assert_eq!(v["error"]["type"], "permission_error", "{v}");
    let (s, v, _) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/api/chat"),
        Some(&rebound),
        None,
        Some("{}".into()),
    )
    .await;
    assert_eq!(s, 403);
    assert!(
        v["error"].as_str().unwrap().contains("allowed_hosts"),
        "{v}"
    );
    // What a rebinding page would read: models, stats, metrics, health.
    for path in ["/v1/models", "/stats", "/metrics", "/health", "/api/tags"] {
        let (s, v, _) = as_browser(
            &c,
            reqwest::Method::GET,
            format!("{root}{path}"),
            Some(&rebound),
            None,
            None,
        )
        .await;
        assert_eq!(s, 403, "{path}: {v}");
        let text = v.to_string();
        assert!(
            !text.contains(&lab.sims[0].addr().to_string())
                && !text.contains(baton::sim::DEFAULT_MODEL),
            "{path} leaked: {v}"
        );
    }

    // CSRF: a page elsewhere posting text/plain to 127.0.0.1.
    let (s, v, h) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/chat/completions"),
        None,
        Some("https://evil.example"),
        Some(chat.clone()),
    )
    .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], "forbidden_origin");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("https://evil.example") && m.contains("balancer.allowed_origins"),
        "{m}"
    );
    assert!(!h.contains_key("access-control-allow-origin"));
    // Its CORS preflight gets nothing either.
    let r = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{root}/v1/chat/completions"),
        )
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    assert_eq!(
        lab.sims[0].stats().requests,
        before,
        "a refused request reached the studio"
    );

    // Every client that is not a browser sends no Origin: unaffected, by
    // loopback name, address or the address it connected to.
    for host in [
        None,
        Some(format!("localhost:{port}")),
        Some(format!("[::1]:{port}")),
    ] {
        let (s, v, _) = as_browser(
            &c,
            reqwest::Method::POST,
            format!("{root}/v1/chat/completions"),
            host.as_deref(),
            None,
            Some(chat.clone()),
        )
        .await;
        assert_eq!(s, 200, "{host:?}: {v}");
    }
    assert!(lab.sims[0].stats().requests > before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_or_unreadable_host_and_origin_headers_are_refused_by_the_balancer() {
    let lab = Lab::start(vec![sim_cfg(1, 1, 1000.0)], test_settings()).await;
    let addr = lab.balancer.addr();
    let reply =
        |head: &'static str| tokio::task::spawn_blocking(move || raw(addr, head.as_bytes()));
    for (head, code) in [
        (
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
            "invalid_host",
        ),
        (
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://127.0.0.1\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
            "invalid_origin",
        ),
        (
            "GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: https://évil.example\r\nConnection: close\r\n\r\n",
            "invalid_origin",
        ),
        (
            "GET http://attacker.example/v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            "forbidden_host",
        ),
    ] {
        let r = reply(head).await.unwrap();
        assert!(
            r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 403"),
            "{head:?}: {r}"
        );
        assert!(r.contains(code), "{head:?}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_names_and_origins_are_let_in_and_any_origin_needs_the_api_key() {
    let mut settings = test_settings();
    settings.allowed_hosts = vec!["my-mac.local".into()];
    settings.allowed_origins = vec!["http://localhost:3000".into()];
    let lab = Lab::start(vec![sim_cfg(2, 1, 1000.0)], settings.clone()).await;
    let c = client();
    let root = lab.root();
    let chat = chat_body(4, false).to_string();
    let (s, v, _) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/chat/completions"),
        Some("my-mac.local:8421"),
        None,
        Some(chat.clone()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A chat UI the user trusts: its preflight is answered and it can read.
    let r = c
        .request(
            reqwest::Method::OPTIONS,
            format!("{root}/v1/chat/completions"),
        )
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(
        r.headers()["access-control-allow-headers"],
        "authorization, content-type"
    );
    let (s, v, h) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/chat/completions"),
        None,
        Some("http://localhost:3000"),
        Some(chat.clone()),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("x-baton-worker")
    );
    // Another port of localhost is another origin.
    let (s, _, _) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/chat/completions"),
        None,
        Some("http://localhost:3001"),
        Some(chat.clone()),
    )
    .await;
    assert_eq!(s, 403);

    // "*" without a key: refused at start, and on reload (the running
    // settings stay).
    let mut open = settings.clone();
    open.allowed_origins = vec!["*".into()];
    let cfg = baton::config::Config {
        workers: lab.config.workers.clone(),
        balancer: open.clone(),
        ..Default::default()
    };
    let err = baton::balancer::Balancer::start(&cfg, None, None)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("allowed_origins") && err.contains("baton key set"),
        "{err}"
    );
    let err = lab.balancer.reload(&cfg).unwrap_err().to_string();
    assert!(err.contains("\"*\""), "{err}");
    let (s, _, _) = as_browser(
        &c,
        reqwest::Method::POST,
        format!("{root}/v1/chat/completions"),
        None,
        Some("https://elsewhere.example"),
        Some(chat.clone()),
    )
    .await;
    assert_eq!(s, 403, "the refused reload opened the door");
    // With a key, "*" lets any page send requests, and only the key opens.
    let keyed = baton::balancer::Balancer::start(&cfg, None, Some(BALANCER_KEY.into()))
        .await
        .unwrap();
    assert!(keyed.wait_ready(Duration::from_secs(5)).await);
    let url = format!("http://{}/v1/chat/completions", keyed.addr());
    let r = c
        .post(&url)
        .header("Origin", "https://elsewhere.example")
        .header("Content-Type", "text/plain")
        .body(chat.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a page without the key");
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://elsewhere.example"
    );
    let r = c
        .post(&url)
        .header("Origin", "https://elsewhere.example")
        .bearer_auth(BALANCER_KEY)
        .header("Content-Type", "application/json")
        .body(chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_kept_under_their_old_names_are_moved_to_batons_own_namespace_on_first_read() {
    use baton::secrets::{self, Own};
    if !throwaway::in_throwaway_keyring(
        "keys_kept_under_their_old_names_are_moved_to_batons_own_namespace_on_first_read",
    ) {
        return;
    }
    // Joins this process's (throwaway) keyring before planting.
    assert!(secrets::balancer_key().unwrap().is_none());
    let old = |name: &str| keyring::Entry::new(secrets::SERVICE, name).unwrap();
    let token = "c".repeat(64);
    // What earlier versions stored.
    old("control-token").set_password(&token).unwrap();
    old("balancer-api-key").set_password(BALANCER_KEY).unwrap();
    old("studio-a").set_password(STUDIO_KEY).unwrap();

    // First reads find them, where the new names are.
    assert_eq!(baton::control::install_token(), token);
    assert_eq!(
        secrets::balancer_key().unwrap().as_deref(),
        Some(BALANCER_KEY)
    );
    assert_eq!(
        secrets::resolve(&SecretRef::Keychain("studio-a".into())).unwrap(),
        STUDIO_KEY
    );
    let gone = |name: &'static str| async move {
        wait_until(Duration::from_secs(2), || {
            matches!(old(name).get_password(), Err(keyring::Error::NoEntry))
        })
        .await
    };
    for name in ["control-token", "balancer-api-key", "studio-a"] {
        assert!(gone(name).await, "`{name}` is still there");
    }
    for (entry, value) in [
        ("baton/control-token", token.as_str()),
        ("baton/balancer-key", BALANCER_KEY),
        ("worker/studio-a", STUDIO_KEY),
    ] {
        assert_eq!(old(entry).get_password().unwrap(), value, "{entry}");
    }
    // And keep working from there: the dashboard takes the same token,
    // the balancer the same key.
    assert_eq!(secrets::get_own(Own::ControlToken).unwrap(), token);
    let lab = Lab::builder()
        .studio(sim_cfg(1, 1, 1000.0))
        .key(secrets::balancer_key().unwrap())
        .start()
        .await;
    let c = client();
    let r = lab.chat(&c, &chat_body(2, false)).await;
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/chat/completions", lab.url()))
        .bearer_auth(BALANCER_KEY)
        .json(&chat_body(2, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[cfg(target_os = "linux")]
#[test]
fn baton_key_keeps_workers_keys_apart_from_the_balancers() {
    if !throwaway::in_throwaway_keyring("baton_key_keeps_workers_keys_apart_from_the_balancers") {
        return;
    }
    let key = |args: &[&str], stdin: &str| {
        let mut child = BatonCmd::new(["key"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        child.take_stdin().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert_eq!(key(&["set"], &format!("{BALANCER_KEY}\n")).0, Some(0));
    assert_eq!(
        key(&["set", "studio-1"], &format!("{STUDIO_KEY}\n")).0,
        Some(0)
    );
    // Baton's own entries by any of their names are not a worker's.
    for name in ["balancer-api-key", "control-token", "baton/balancer-key"] {
        let (code, text) = key(&["set", name], "stolen\n");
        assert_ne!(code, Some(0), "{name}: {text}");
    }
    let (code, text) = key(&["set", "bad id"], "x\n");
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("letters, digits"), "{text}");
    assert_eq!(
        baton::secrets::balancer_key().unwrap().as_deref(),
        Some(BALANCER_KEY)
    );
    assert_eq!(baton::secrets::get_worker("studio-1").unwrap(), STUDIO_KEY);
    let (code, text) = key(&["status"], "");
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains(BALANCER_KEY), "{text}");
    assert_eq!(key(&["delete", "studio-1"], "").0, Some(0));
    assert_eq!(key(&["status", "studio-1"], "").0, Some(1));
    assert_eq!(key(&["status"], "").0, Some(0), "the balancer's key stayed");
}
