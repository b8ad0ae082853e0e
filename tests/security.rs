//! Security: secrets and prompts stay out of logs and output; hostile or
//! broken clients are turned away without affecting others.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baton::config::{Config, SecretRef};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_baton");
const BALANCER_KEY: &str = "bk-4f1d-very-secret-balancer-key";
const STUDIO_KEY: &str = "sk-77aa-very-secret-studio-key";
const PROMPT: &str = "confidential-prompt-zx81-do-not-log";

/// `baton serve` with both kinds of key in play; returns stdout+stderr after
/// a chat, /stats, /metrics, /health and a 401.
async fn serve_and_collect(log: Option<&str>) -> String {
    let s = baton::sim::start("127.0.0.1:0".parse().unwrap(), sim_cfg(2, 1, 1000.0))
        .await
        .unwrap();
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
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "-c"])
        .arg(&file)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("BATON_API_KEY", BALANCER_KEY)
        .env("STUDIO_KEY", STUDIO_KEY)
        .env_remove("BATON_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(l) = log {
        cmd.env("BATON_LOG", l);
    }
    let mut child = cmd.spawn().unwrap();
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
    Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
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
    let out = Command::new(BIN)
        .args(["preflight", "--json", "-c"])
        .arg(&file)
        .env("STUDIO_KEY", STUDIO_KEY)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("\"hosts\""), "{text}");
    assert!(!text.contains(STUDIO_KEY));
    // A key written into the file by mistake is refused without echoing it.
    std::fs::write(&file, format!(r#"{{"workers":[{{"id":"a","host":"h","port":1,"type":"lm_studio","model":"m","max_concurrent_requests":1,"api_key":"{STUDIO_KEY}"}}]}}"#)).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
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
