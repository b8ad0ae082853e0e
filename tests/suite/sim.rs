//! Simulated studios over real sockets on 127.0.0.x.

use crate::support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use baton::sim::{self, Faults, SimConfig, SimHandle};
use baton::studio::StudioKind;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;

async fn chat(c: &reqwest::Client, s: &SimHandle, body: &Value) -> reqwest::Response {
    c.post(format!("{}/v1/chat/completions", s.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn slots_cap_concurrency_and_the_rest_wait_in_batches() {
    // 4 slots, 12 requests of 10 tokens at 100 tok/s after 50 ms: each takes
    // 50 + 90 = 140 ms, so three batches need at least 420 ms.
    let s = start_sim(sim_cfg(4, 50, 100.0)).await;
    let c = client();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = c.clone();
        let url = format!("{}/v1/chat/completions", s.url());
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&chat_body(10, true)).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let sse = parse_sse(&r.text().await.unwrap()).unwrap();
            assert_eq!(sse.content_events(), 10);
            t0.elapsed()
        }));
    }
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(t.await.unwrap());
    }
    let st = s.stats();
    assert_eq!(st.peak_concurrency, 4, "{st:?}");
    assert_eq!(st.peak_in_flight, 12, "{st:?}");
    assert_eq!(st.completed, 12);
    assert_eq!(st.in_flight, 0);
    let total = ends.iter().max().unwrap().as_millis();
    assert!(total >= 420, "three batches cannot finish in {total} ms");
    // Not four or more batches (560 ms); generous against a noisy machine.
    assert!(total < 800, "took {total} ms for three batches of 140 ms");
    ends.sort();
    // The first four finish together, well before the last four.
    assert!(ends[3] + Duration::from_millis(100) < ends[8], "{ends:?}");
}

#[tokio::test]
async fn tokens_stream_at_the_configured_rate() {
    let s = start_sim(sim_cfg(1, 10, 50.0)).await;
    let r = chat(&client(), &s, &chat_body(41, true)).await;
    let mut body = r.bytes_stream();
    let mut stamps = Vec::new();
    let mut buf = String::new();
    while let Some(b) = body.next().await {
        buf.push_str(std::str::from_utf8(&b.unwrap()).unwrap());
        while let Some(i) = buf.find("\n\n") {
            let ev: String = buf.drain(..i + 2).collect();
            if ev.contains("\"content\":\"") && !ev.contains("\"content\":\"\"") {
                stamps.push(Instant::now());
            }
        }
    }
    assert_eq!(stamps.len(), 41);
    let secs = (stamps[40] - stamps[0]).as_secs_f64();
    let tps = 40.0 / secs;
    assert!(
        (tps - 50.0).abs() / 50.0 < 0.10,
        "measured {tps:.1} tok/s, configured 50"
    );
}

#[tokio::test]
async fn streamed_chat_is_valid_sse_with_a_usage_chunk() {
    let s = start_sim(sim_cfg(2, 5, 1000.0)).await;
    let r = chat(&client(), &s, &chat_body(7, true)).await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let sse = parse_sse(&r.text().await.unwrap()).unwrap();
    assert!(sse.done, "ends with [DONE]");
    let first = &sse.events[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(sse.content_events(), 7);
    let usage = sse.usage().expect("usage chunk");
    assert_eq!(usage["completion_tokens"], 7);
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + 7
    );
    assert_eq!(sse.events.last().unwrap()["choices"], json!([]));
    // Deterministic: the same prompt gives the same text, streamed or not.
    let whole: Value = chat(&client(), &s, &chat_body(7, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        sse.text()
    );
    assert_eq!(whole["usage"]["completion_tokens"], 7);
    // Without include_usage there is no usage chunk.
    let mut b = chat_body(3, true);
    b.as_object_mut().unwrap().remove("stream_options");
    let sse = parse_sse(&chat(&client(), &s, &b).await.text().await.unwrap()).unwrap();
    assert!(sse.usage().is_none());
}

#[tokio::test]
async fn legacy_completions_embeddings_and_models() {
    let s = start_sim(SimConfig {
        models: vec!["a".into(), "b".into()],
        ..sim_cfg(2, 1, 1000.0)
    })
    .await;
    let c = client();
    let r: Value = c
        .post(format!("{}/v1/completions", s.url()))
        .json(&json!({"model": "b", "prompt": "hello there", "max_tokens": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "text_completion");
    assert_eq!(r["model"], "b");
    assert_eq!(
        r["choices"][0]["text"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .count(),
        5
    );
    let t = c
        .post(format!("{}/v1/completions", s.url()))
        .json(&json!({"model": "a", "prompt": "hi", "max_tokens": 4, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sse = parse_sse(&t).unwrap();
    assert_eq!(sse.content_events(), 4);
    assert_eq!(sse.events[0]["object"], "text_completion");

    let e: Value = c
        .post(format!("{}/v1/embeddings", s.url()))
        .json(&json!({"model": "a", "input": ["one", "two"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(e["data"].as_array().unwrap().len(), 2);
    assert_eq!(e["data"][1]["index"], 1);

    let m: Value = c
        .get(format!("{}/v1/models", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    let lm: Value = c
        .get(format!("{}/api/v0/models", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lm["data"][0]["state"], "loaded");

    // Unknown model: 404 naming what is loaded; bad JSON: 400.
    let r = c
        .post(format!("{}/v1/chat/completions", s.url()))
        .json(&json!({"model": "zzz", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("loaded: a, b"));
    let r = c
        .post(format!("{}/v1/chat/completions", s.url()))
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn max_tokens_is_honoured() {
    let s = start_sim(sim_cfg(1, 1, 2000.0)).await;
    for n in [1, 3, 50] {
        let sse = parse_sse(
            &chat(&client(), &s, &chat_body(n, true))
                .await
                .text()
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(sse.content_events() as u32, n);
        assert_eq!(sse.usage().unwrap()["completion_tokens"], n);
    }
}

#[tokio::test]
async fn fault_error_rate() {
    let s = start_sim(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        },
        ..sim_cfg(1, 1, 1000.0)
    })
    .await;
    let r = chat(&client(), &s, &chat_body(2, false)).await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "server_error");

    s.set_faults(Faults {
        error_rate: 0.5,
        ..Faults::default()
    });
    let mut errors = 0;
    for _ in 0..200 {
        let r = chat(&client(), &s, &chat_body(1, false)).await;
        if r.status() == 503 {
            errors += 1;
        } else {
            assert_eq!(r.status(), 200);
        }
    }
    assert!((70..=130).contains(&errors), "{errors} of 200 at rate 0.5");
    assert_eq!(s.stats().errors, errors + 1);
}

#[tokio::test]
async fn fault_hang_never_answers() {
    let s = start_sim(SimConfig {
        faults: Faults {
            hang: true,
            ..Faults::default()
        },
        ..sim_cfg(1, 1, 1000.0)
    })
    .await;
    let r = tokio::time::timeout(
        Duration::from_millis(500),
        chat(&client(), &s, &chat_body(2, false)),
    )
    .await;
    assert!(r.is_err(), "a hanging studio answered");
    assert!(wait_until(Duration::from_secs(2), || s.stats().requests == 1).await);
    // Recovers when the fault is cleared.
    s.set_faults(Faults::default());
    assert_eq!(
        chat(&client(), &s, &chat_body(2, false)).await.status(),
        200
    );
}

#[tokio::test]
async fn fault_drop_after_k_tokens() {
    let s = start_sim(SimConfig {
        faults: Faults {
            drop_after_tokens: Some(3),
            ..Faults::default()
        },
        ..sim_cfg(1, 1, 500.0)
    })
    .await;
    let r = chat(&client(), &s, &chat_body(10, true)).await;
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = String::new();
    let mut failed = false;
    while let Some(b) = body.next().await {
        match b {
            Ok(b) => got.push_str(std::str::from_utf8(&b).unwrap()),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body should end with a transport error");
    let sse = parse_sse(&got).unwrap();
    assert_eq!(sse.content_events(), 3);
    assert!(!sse.done);
    // Non-streamed: truncated JSON, then the connection breaks.
    let r = chat(&client(), &s, &chat_body(10, false)).await;
    assert!(r.bytes().await.is_err());
}

#[tokio::test]
async fn fault_delay_slows_every_answer() {
    let s = start_sim(SimConfig {
        faults: Faults {
            delay_ms: 300,
            ..Faults::default()
        },
        ..sim_cfg(1, 1, 1000.0)
    })
    .await;
    let t = Instant::now();
    assert_eq!(
        chat(&client(), &s, &chat_body(1, false)).await.status(),
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn fault_refuse_then_listen_again() {
    let s = start_sim(sim_cfg(1, 1, 1000.0)).await;
    let c = client();
    assert_eq!(chat(&c, &s, &chat_body(1, false)).await.status(), 200);
    s.set_listening(false);
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpStream::connect(
            s.addr()
        )
        .is_err())
        .await,
        "still accepting"
    );
    let e = std::net::TcpStream::connect(s.addr()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/models", s.url()))
        .send()
        .await;
    assert!(r.unwrap_err().is_connect());
    s.set_listening(true);
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpStream::connect(
            s.addr()
        )
        .is_ok())
        .await
    );
    assert_eq!(
        chat(&reqwest::Client::new(), &s, &chat_body(1, false))
            .await
            .status(),
        200
    );

    // The same over HTTP, for studios in another process.
    let r = c
        .post(format!("{}/sim/fault", s.url()))
        .json(&json!({"refuse_for_ms": 300}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        wait_until(Duration::from_secs(1), || std::net::TcpStream::connect(
            s.addr()
        )
        .is_err())
        .await
    );
    assert!(
        wait_until(Duration::from_secs(2), || std::net::TcpStream::connect(
            s.addr()
        )
        .is_ok())
        .await
    );
    // Unknown fault settings are rejected.
    let r = c
        .post(format!("{}/sim/fault", s.url()))
        .json(&json!({"explode": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn client_disconnect_mid_stream_counts_as_cancelled() {
    let s = start_sim(sim_cfg(1, 1, 20.0)).await;
    let r = chat(&client(), &s, &chat_body(100, true)).await;
    let mut body = r.bytes_stream();
    body.next().await.unwrap().unwrap();
    drop(body);
    assert!(
        wait_until(Duration::from_millis(500), || s.stats().cancelled == 1).await,
        "{:?}",
        s.stats()
    );
    let st = s.stats();
    assert_eq!((st.in_flight, st.active, st.completed), (0, 0, 0));
    // The slot is free again: the next request starts at once.
    assert_eq!(
        chat(&client(), &s, &chat_body(1, false)).await.status(),
        200
    );
}

#[tokio::test]
async fn each_kind_answers_its_identifying_endpoints() {
    let c = client();
    let cases: &[(StudioKind, &[&str], &[&str])] = &[
        (
            StudioKind::LmStudio,
            &["/api/v0/models"],
            &["/api/tags", "/props", "/version"],
        ),
        (
            StudioKind::Ollama,
            &["/api/tags", "/api/version", "/"],
            &["/api/v0/models", "/props"],
        ),
        (
            StudioKind::LlamaCpp,
            &["/props", "/health"],
            &["/api/tags", "/version"],
        ),
        (
            StudioKind::Vllm,
            &["/version", "/metrics", "/health"],
            &["/api/tags", "/props"],
        ),
        (
            StudioKind::Openai,
            &["/v1/models"],
            &["/api/tags", "/props", "/version", "/api/v0/models"],
        ),
    ];
    for (kind, present, absent) in cases {
        let s = start_sim(SimConfig {
            kind: *kind,
            ..sim_cfg(3, 1, 1000.0)
        })
        .await;
        for p in *present {
            let r = c.get(format!("{}{p}", s.url())).send().await.unwrap();
            assert_eq!(r.status(), 200, "{kind} {p}");
        }
        for p in *absent {
            let r = c.get(format!("{}{p}", s.url())).send().await.unwrap();
            if *kind == StudioKind::LmStudio {
                // LM Studio answers 200 with an error object on unknown paths.
                assert!(
                    r.text().await.unwrap().contains("Unexpected endpoint"),
                    "{kind} {p}"
                );
            } else {
                assert_eq!(r.status(), 404, "{kind} {p} should not exist");
            }
        }
        assert_eq!(
            c.get(format!("{}/v1/models", s.url()))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let s = start_sim(SimConfig {
        kind: StudioKind::Ollama,
        ..sim_cfg(3, 1, 1000.0)
    })
    .await;
    let tags: Value = c
        .get(format!("{}/api/tags", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["models"][0]["name"], baton::sim::DEFAULT_MODEL);
    let s = start_sim(SimConfig {
        kind: StudioKind::LlamaCpp,
        ..sim_cfg(3, 1, 1000.0)
    })
    .await;
    let props: Value = c
        .get(format!("{}/props", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(props["total_slots"], 3);
    let s = start_sim(SimConfig {
        kind: StudioKind::Vllm,
        ..sim_cfg(3, 1, 1000.0)
    })
    .await;
    let m = c
        .get(format!("{}/metrics", s.url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("vllm:num_requests_running"));
    // LM Studio answers 200 to unknown paths (with an error object).
    let s = start_sim(sim_cfg(1, 1, 1000.0)).await;
    let r = c.get(format!("{}/nope", s.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Unexpected endpoint"));
}

#[tokio::test]
async fn start_many_binds_consecutive_addresses_or_free_ports_on_one() {
    // A port that is free on 127.0.0.42 is very likely free on .43 and .44.
    let port = std::net::TcpListener::bind("127.0.0.42:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let sims = sim::start_many(
        Ipv4Addr::new(127, 0, 0, 42),
        port,
        3,
        &sim_cfg(1, 1, 1000.0),
    )
    .await
    .unwrap();
    let addrs: Vec<String> = sims.iter().map(|s| s.addr().to_string()).collect();
    assert_eq!(
        addrs,
        [42, 43, 44].map(|i| format!("127.0.0.{i}:{port}")),
        "one port on consecutive addresses"
    );
    for s in &sims {
        assert_eq!(chat(&client(), s, &chat_body(1, false)).await.status(), 200);
    }
    // Port 0: all on the base address (all macOS has out of the box).
    let sims = sim::start_many(Ipv4Addr::LOCALHOST, 0, 3, &sim_cfg(1, 1, 1000.0))
        .await
        .unwrap();
    let mut ports: Vec<u16> = sims.iter().map(|s| s.addr().port()).collect();
    assert!(sims.iter().all(|s| s.addr().ip() == Ipv4Addr::LOCALHOST));
    ports.dedup();
    assert_eq!(ports.len(), 3, "three free ports");
    for s in &sims {
        assert_eq!(chat(&client(), s, &chat_body(1, false)).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_thousand_waiting_connections() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // One slot busy for a long time; 1000 clients wait behind it.
    let s = start_sim(sim_cfg(1, 1, 10.0)).await;
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let url = format!("{}/v1/chat/completions", s.url());
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&chat_body(1000, true)).send().await?;
            r.text().await
        }));
    }
    // A request counts as in flight when it arrives and as queued a moment
    // later, when it asks for a slot: wait for both.
    assert!(
        wait_until(Duration::from_secs(20), || {
            let st = s.stats();
            st.in_flight == 1000 && st.queued == 999
        })
        .await,
        "{:?}",
        s.stats()
    );
    let st = s.stats();
    assert_eq!((st.active, st.queued), (1, 999));
    for t in &tasks {
        t.abort();
    }
    assert!(
        wait_until(Duration::from_secs(10), || s.stats().in_flight == 0).await,
        "{:?}",
        s.stats()
    );
    assert_eq!(s.stats().cancelled, 1000);
}

#[tokio::test]
async fn stats_reset_keeps_live_gauges() {
    let s = start_sim(sim_cfg(1, 1, 1000.0)).await;
    chat(&client(), &s, &chat_body(1, false))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(s.stats().completed, 1);
    s.reset_stats();
    let st = s.stats();
    assert_eq!((st.completed, st.requests, st.peak_concurrency), (0, 0, 0));
    let v: Value = client()
        .get(format!("{}/sim/stats", s.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["completed"], 0);
}

async fn post(c: &reqwest::Client, s: &SimHandle, path: &str, body: &Value) -> reqwest::Response {
    c.post(format!("{}{path}", s.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get(c: &reqwest::Client, s: &SimHandle, path: &str) -> reqwest::Response {
    c.get(format!("{}{path}", s.url())).send().await.unwrap()
}

fn faulty(faults: Faults, base: SimConfig) -> SimConfig {
    SimConfig { faults, ..base }
}

/// Read a whole body, noting whether it ended with a transport error.
async fn body_and_break(r: reqwest::Response) -> (String, bool) {
    let mut body = r.bytes_stream();
    let mut got = String::new();
    while let Some(b) = body.next().await {
        match b {
            Ok(b) => got.push_str(std::str::from_utf8(&b).unwrap()),
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// Whether any event carries a finish reason.
fn has_finish_reason(sse: &Sse) -> bool {
    sse.events.iter().any(|e| {
        e.pointer("/choices/0/finish_reason")
            .is_some_and(|f| !f.is_null())
    })
}

/// A plain HTTP/1.1 connection, to see exactly when a server closes it.
struct Raw {
    s: tokio::net::TcpStream,
    buf: Vec<u8>,
}

struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Send a request; a write to a connection the server closed may fail.
    async fn send(&mut self, method: &str, path: &str, body: Option<&Value>) {
        use tokio::io::AsyncWriteExt;
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = self.s.write_all(req.as_bytes()).await;
    }

    /// More bytes; false at end of stream or on an error.
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 8192];
        match tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&b[..n]);
                true
            }
            Ok(_) => false,
            Err(_) => panic!("no answer and no close within 5 s"),
        }
    }

    async fn take_line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf.drain(..i + 2).collect()).unwrap();
                return Some(line.trim_end().to_string());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Read one whole response. `None` if the connection closed before a
    /// byte of it arrived; panics if it breaks midway.
    async fn response(&mut self) -> Option<RawResponse> {
        if self.buf.is_empty() && !self.fill().await {
            return None;
        }
        let status_line = self.take_line().await.expect("status line");
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let line = self.take_line().await.expect("header");
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut r = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if r.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = self.take_line().await.expect("chunk size");
                let size = usize::from_str_radix(&size, 16).unwrap();
                let chunk = self.take(size + 2).await.expect("chunk");
                r.body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            let n: usize = r.header("content-length").unwrap().parse().unwrap();
            r.body = self.take(n).await.expect("body");
        }
        Some(r)
    }

    /// Whether the server closes the connection within `limit` without
    /// sending anything more.
    async fn closed_within(&mut self, limit: Duration) -> bool {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        match tokio::time::timeout(limit, self.s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => panic!("unexpected bytes from an idle connection"),
            Err(_) => false,
        }
    }
}

#[tokio::test]
async fn a_streamed_answer_closes_the_connection_without_announcing_it() {
    let s = start_sim(faulty(
        Faults {
            close_after_stream: true,
            ..Faults::default()
        },
        sim_cfg(2, 1, 1000.0),
    ))
    .await;
    let mut c = Raw::connect(s.addr()).await;
    c.send("POST", "/v1/chat/completions", Some(&chat_body(3, true)))
        .await;
    let r = c.response().await.expect("the stream is answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), None, "the close is not announced");
    let sse = parse_sse(std::str::from_utf8(&r.body).unwrap()).unwrap();
    assert!(sse.done && sse.content_events() == 3, "a complete stream");
    c.send("GET", "/v1/models", None).await;
    assert!(
        c.response().await.is_none(),
        "a second request on the connection must meet a closed socket"
    );

    // A whole answer keeps the connection open.
    let mut c = Raw::connect(s.addr()).await;
    c.send("POST", "/v1/chat/completions", Some(&chat_body(3, false)))
        .await;
    assert_eq!(c.response().await.unwrap().status, 200);
    c.send("GET", "/v1/models", None).await;
    assert_eq!(c.response().await.expect("answered").status, 200);
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let s = start_sim(faulty(
        Faults {
            keepalive_idle_ms: Some(300),
            ..Faults::default()
        },
        sim_cfg(2, 1, 1000.0),
    ))
    .await;
    let mut c = Raw::connect(s.addr()).await;
    c.send("GET", "/v1/models", None).await;
    let r = c.response().await.unwrap();
    assert_eq!(r.header("keep-alive"), Some("timeout=1, max=100"));
    // Used again within the timeout, it is still open.
    tokio::time::sleep(Duration::from_millis(150)).await;
    c.send("GET", "/v1/models", None).await;
    assert_eq!(c.response().await.expect("still open").status, 200);
    let idle = Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(2)).await,
        "never closed"
    );
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(900),
        "closed after {waited:?} idle, configured 300 ms"
    );

    // Without the setting there is no such header.
    let s = start_sim(sim_cfg(1, 1, 1000.0)).await;
    let r = get(&client(), &s, "/v1/models").await;
    assert!(r.headers().get("keep-alive").is_none());
}

#[tokio::test]
async fn close_random_closes_that_share_of_connections_unannounced() {
    let s = start_sim(SimConfig {
        seed: 7,
        ..faulty(
            Faults {
                close_random: 0.5,
                ..Faults::default()
            },
            sim_cfg(2, 1, 1000.0),
        )
    })
    .await;
    let mut c = Raw::connect(s.addr()).await;
    let mut closes = 0;
    for _ in 0..40 {
        c.send("GET", "/v1/models", None).await;
        let r = match c.response().await {
            Some(r) => r,
            None => {
                // The previous answer closed the connection.
                closes += 1;
                c = Raw::connect(s.addr()).await;
                c.send("GET", "/v1/models", None).await;
                c.response().await.expect("a fresh connection is answered")
            }
        };
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), None);
    }
    assert!(
        (8..=32).contains(&closes),
        "{closes} closes after 40 answers at 0.5"
    );
}

#[tokio::test]
async fn serial_mode_serves_one_request_at_a_time_probes_included() {
    // 20 tokens at 50 tok/s: a stream of about 400 ms.
    let s = start_sim(faulty(
        Faults {
            serial: true,
            ..Faults::default()
        },
        sim_cfg(4, 1, 50.0),
    ))
    .await;
    let c = client();
    let (c2, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
    let stream = tokio::spawn(async move {
        let r = c2
            .post(url)
            .json(&chat_body(20, true))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    });
    assert!(wait_until(Duration::from_secs(2), || s.stats().active == 1).await);
    // The control plane is exempt.
    let t = Instant::now();
    assert_eq!(get(&c, &s, "/sim/stats").await.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
    // A models probe waits for the whole stream.
    let t = Instant::now();
    assert_eq!(get(&c, &s, "/v1/models").await.status(), 200);
    let probe = t.elapsed();
    assert!(parse_sse(&stream.await.unwrap()).unwrap().done);
    assert!(
        probe >= Duration::from_millis(250),
        "probe answered in {probe:?}"
    );
    let log = s.log();
    let (stream, models) = (&log[0], &log[1]);
    assert_eq!(models.path, "/v1/models");
    assert!(models.arrived_ms < stream.ended_ms.unwrap());
    assert!(
        models.ended_ms.unwrap() >= stream.ended_ms.unwrap(),
        "{log:?}"
    );

    // Two generations never overlap, whatever the slots.
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (c, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .json(&chat_body(3, true))
                .send()
                .await
                .unwrap()
                .text()
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.stats().peak_concurrency, 1);
}

#[tokio::test]
async fn interrupt_mode_ends_a_stream_when_another_request_arrives() {
    let s = start_sim(faulty(
        Faults {
            interrupt: true,
            ..Faults::default()
        },
        sim_cfg(2, 1, 50.0),
    ))
    .await;
    let c = client();
    let r = chat(&c, &s, &chat_body(50, true)).await;
    let mut body = r.bytes_stream();
    let mut got = String::new();
    while got.matches("\"content\":\"").count() < 4 {
        got.push_str(std::str::from_utf8(&body.next().await.unwrap().unwrap()).unwrap());
    }
    let t = Instant::now();
    assert_eq!(get(&client(), &s, "/v1/models").await.status(), 200);
    let mut broke = false;
    while let Some(b) = body.next().await {
        match b {
            Ok(b) => got.push_str(std::str::from_utf8(&b).unwrap()),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    assert!(broke, "the connection should break after [DONE]");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let sse = parse_sse(&got).unwrap();
    assert!(sse.done, "[DONE] comes first");
    assert!(!has_finish_reason(&sse), "no finish reason: {got}");
    assert!(sse.content_events() < 10);
    assert_eq!(s.stats().interrupted, 1);
    assert!(s.log()[0].interrupted);
    assert!(!s.log()[1].interrupted);

    // Whole answers are not interrupted (llama-cpp-python checks streams only).
    let (c2, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
    let whole = tokio::spawn(async move {
        let r = c2
            .post(url)
            .json(&chat_body(10, false))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    });
    assert!(wait_until(Duration::from_secs(2), || s.stats().active == 1).await);
    get(&c, &s, "/v1/models").await;
    let v = whole.await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 10);
}

#[tokio::test]
async fn done_without_finish_ends_cleanly_but_without_a_finish_reason() {
    let s = start_sim(faulty(
        Faults {
            done_without_finish: true,
            ..Faults::default()
        },
        sim_cfg(1, 1, 1000.0),
    ))
    .await;
    let (got, broke) = body_and_break(chat(&client(), &s, &chat_body(5, true)).await).await;
    assert!(!broke);
    let sse = parse_sse(&got).unwrap();
    assert!(sse.done);
    assert_eq!(sse.content_events(), 5);
    assert!(!has_finish_reason(&sse), "{got}");
}

#[tokio::test]
async fn break_after_done_sends_everything_then_breaks() {
    let s = start_sim(faulty(
        Faults {
            break_after_done: true,
            ..Faults::default()
        },
        sim_cfg(1, 1, 1000.0),
    ))
    .await;
    let (got, broke) = body_and_break(chat(&client(), &s, &chat_body(5, true)).await).await;
    assert!(broke, "the body should not end cleanly");
    let sse = parse_sse(&got).unwrap();
    assert!(sse.done && has_finish_reason(&sse));
    assert_eq!(sse.usage().unwrap()["completion_tokens"], 5);
}

#[tokio::test]
async fn an_error_inside_a_200_stream_is_followed_by_done() {
    let s = start_sim(faulty(
        Faults {
            error_in_stream_after: Some(2),
            ..Faults::default()
        },
        sim_cfg(1, 1, 1000.0),
    ))
    .await;
    let r = chat(&client(), &s, &chat_body(5, true)).await;
    assert_eq!(r.status(), 200);
    let (got, broke) = body_and_break(r).await;
    assert!(!broke);
    let sse = parse_sse(&got).unwrap();
    assert!(sse.done);
    assert_eq!(sse.content_events(), 2);
    let last = sse.events.last().unwrap();
    assert_eq!(last["error"]["type"], "server_error", "{got}");
    assert!(!has_finish_reason(&sse));
    assert_eq!(s.stats().errors, 1);
}

#[tokio::test]
async fn the_first_generation_pays_the_load_and_llama_cpp_answers_503_meanwhile() {
    let s = start_sim(SimConfig {
        kind: StudioKind::LlamaCpp,
        load_ms: 300,
        ..sim_cfg(2, 1, 1000.0)
    })
    .await;
    let c = client();
    assert_eq!(get(&c, &s, "/health").await.status(), 200);
    let (c2, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
    let t0 = Instant::now();
    let first = tokio::spawn(async move {
        let r = c2
            .post(url)
            .json(&chat_body(2, false))
            .send()
            .await
            .unwrap();
        (r.status(), t0.elapsed())
    });
    assert!(wait_until(Duration::from_secs(2), || s.stats().requests == 1).await);
    for path in ["/health", "/v1/models", "/props"] {
        let r = get(&c, &s, path).await;
        assert_eq!(r.status(), 503, "{path} while loading");
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v,
            json!({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}})
        );
    }
    assert_eq!(chat(&c, &s, &chat_body(1, false)).await.status(), 503);
    let (status, took) = first.await.unwrap();
    assert_eq!(status, 200);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // Loaded: the next one is fast, and /health is fine.
    let t = Instant::now();
    assert_eq!(chat(&c, &s, &chat_body(1, false)).await.status(), 200);
    assert!(t.elapsed() < Duration::from_millis(200));
    assert_eq!(get(&c, &s, "/health").await.status(), 200);
    assert_eq!(s.stats().loads, 1);
    // After an unload the next generation loads again.
    let r = c
        .post(format!("{}/sim/unload", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = Instant::now();
    assert_eq!(chat(&c, &s, &chat_body(1, false)).await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(s.stats().loads, 2);
}

#[tokio::test]
async fn other_kinds_make_requests_wait_while_the_model_loads() {
    let s = start_sim(SimConfig {
        load_ms: 300,
        ..sim_cfg(2, 1, 1000.0)
    })
    .await;
    let c = client();
    let lm: Value = get(&c, &s, "/api/v0/models").await.json().await.unwrap();
    assert_eq!(lm["data"][0]["state"], "not-loaded");
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for _ in 0..2 {
        let (c, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&chat_body(1, false)).send().await.unwrap();
            (r.status(), t0.elapsed())
        }));
    }
    assert!(wait_until(Duration::from_secs(2), || s.stats().requests == 2).await);
    let t = Instant::now();
    assert_eq!(get(&c, &s, "/v1/models").await.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "probes answer during a load"
    );
    for task in tasks {
        let (status, took) = task.await.unwrap();
        assert_eq!(status, 200);
        assert!(took >= Duration::from_millis(300), "{took:?}");
    }
    assert_eq!(s.stats().loads, 1, "one load for both");
    let lm: Value = get(&c, &s, "/api/v0/models").await.json().await.unwrap();
    assert_eq!(lm["data"][0]["state"], "loaded");
}

#[tokio::test]
async fn the_request_log_lists_every_request_with_its_timing_and_status() {
    let s = start_sim(sim_cfg(2, 1, 100.0)).await;
    let c = client();
    let (c2, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
    let stream = tokio::spawn(async move {
        let r = c2
            .post(url)
            .json(&chat_body(20, true))
            .send()
            .await
            .unwrap();
        r.text().await.unwrap()
    });
    assert!(wait_until(Duration::from_secs(2), || s.stats().active == 1).await);
    get(&c, &s, "/v1/models").await.text().await.unwrap();
    let r = chat(&c, &s, &json!({"model": "nope", "messages": []})).await;
    assert_eq!(r.status(), 404);
    stream.await.unwrap();
    get(&c, &s, "/sim/stats").await;
    let log: Vec<sim::LogEntry> = get(&c, &s, "/sim/log").await.json().await.unwrap();
    assert_eq!(log, s.log());
    let paths: Vec<(&str, &str, Option<u16>)> = log
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str(), e.status))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/v1/chat/completions", Some(200)),
            ("GET", "/v1/models", Some(200)),
            ("POST", "/v1/chat/completions", Some(404)),
        ],
        "/sim/* requests are not logged"
    );
    assert_eq!(log[0].generating_at_arrival, 0);
    assert_eq!(log[1].generating_at_arrival, 1);
    let streamed = log[0].ended_ms.unwrap() - log[0].arrived_ms;
    assert!(streamed >= 150, "a 200 ms stream logged as {streamed} ms");
    assert!(log.iter().all(|e| e.ended_ms.is_some() && !e.interrupted));
    let r = c
        .post(format!("{}/sim/log/clear", s.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(s.log().is_empty());
    get(&c, &s, "/v1/models").await;
    assert_eq!(s.log().len(), 1);
    c.delete(format!("{}/sim/log", s.url()))
        .send()
        .await
        .unwrap();
    assert!(s.log().is_empty());
}

#[tokio::test]
async fn llama_cpp_reports_timings_on_the_last_chunk_and_on_whole_answers() {
    // 50 ms to first token, then 100 tok/s.
    let s = start_sim(SimConfig {
        kind: StudioKind::LlamaCpp,
        ..sim_cfg(1, 50, 100.0)
    })
    .await;
    let c = client();
    let check = |t: &Value| {
        assert_eq!(t["predicted_n"], 5, "{t}");
        assert!(t["prompt_n"].as_u64().unwrap() > 0);
        assert_eq!(t["cache_n"], 0);
        let prompt_ms = t["prompt_ms"].as_f64().unwrap();
        assert!((45.0..200.0).contains(&prompt_ms), "{t}");
        let predicted_ms = t["predicted_ms"].as_f64().unwrap();
        assert!(
            (35.0..200.0).contains(&predicted_ms),
            "4 intervals of 10 ms: {t}"
        );
        let per_second = t["predicted_per_second"].as_f64().unwrap();
        assert!((per_second - 5000.0 / predicted_ms).abs() < 1e-6);
        assert!((t["predicted_per_token_ms"].as_f64().unwrap() - predicted_ms / 5.0).abs() < 1e-6);
    };
    // With include_usage the timings ride on the usage chunk, the last one.
    let sse = parse_sse(
        &chat(&c, &s, &chat_body(5, true))
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let last = sse.events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    check(&last["timings"]);
    assert_eq!(
        sse.events
            .iter()
            .filter(|e| e.get("timings").is_some())
            .count(),
        1
    );
    // Without it, on the finish chunk.
    let mut b = chat_body(5, true);
    b.as_object_mut().unwrap().remove("stream_options");
    let sse = parse_sse(&chat(&c, &s, &b).await.text().await.unwrap()).unwrap();
    let last = sse.events.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    check(&last["timings"]);
    // Whole answers carry them too; other kinds do not.
    let v: Value = chat(&c, &s, &chat_body(5, false))
        .await
        .json()
        .await
        .unwrap();
    check(&v["timings"]);
    let other = start_sim(sim_cfg(1, 1, 1000.0)).await;
    let v: Value = chat(&c, &other, &chat_body(5, false))
        .await
        .json()
        .await
        .unwrap();
    assert!(v.get("timings").is_none());
}

#[tokio::test]
async fn lm_studio_rest_api_adds_stats_to_whole_answers() {
    let s = start_sim(sim_cfg(1, 50, 100.0)).await;
    let c = client();
    let v: Value = post(&c, &s, "/api/v0/chat/completions", &chat_body(5, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["object"], "chat.completion");
    let st = &v["stats"];
    assert_eq!(st["stop_reason"], "maxPredictedTokensReached");
    let ttft = st["time_to_first_token"].as_f64().unwrap();
    assert!((0.045..0.3).contains(&ttft), "{st}");
    let gen_time = st["generation_time"].as_f64().unwrap();
    assert!((st["tokens_per_second"].as_f64().unwrap() - 5.0 / gen_time).abs() < 1e-6);
    assert_eq!(v["model_info"]["format"], "gguf");
    assert!(v["runtime"]["name"].is_string());
    // A request without a limit ends on its own.
    let v: Value = post(
        &c,
        &s,
        "/api/v0/completions",
        &json!({"prompt": "once upon a time"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["stats"]["stop_reason"], "eosFound");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["completion_tokens"], 64);
    // Streams carry no stats, as LM Studio's do not.
    let t = post(&c, &s, "/api/v0/chat/completions", &chat_body(3, true))
        .await
        .text()
        .await
        .unwrap();
    assert!(parse_sse(&t).unwrap().done && !t.contains("stats"));
    // The OpenAI endpoint has none either.
    let v: Value = chat(&c, &s, &chat_body(2, false))
        .await
        .json()
        .await
        .unwrap();
    assert!(v.get("stats").is_none());
}

#[tokio::test]
async fn vllm_metrics_histograms_count_real_requests() {
    let s = start_sim(SimConfig {
        kind: StudioKind::Vllm,
        ..sim_cfg(1, 50, 100.0)
    })
    .await;
    let c = client();
    // Two at once on one slot: the second queues for the first's ~100 ms.
    let (whole, streamed) = (chat_body(5, false), chat_body(5, true));
    let (a, b) = tokio::join!(chat(&c, &s, &whole), chat(&c, &s, &streamed));
    a.text().await.unwrap();
    b.text().await.unwrap();
    let m = get(&c, &s, "/metrics").await.text().await.unwrap();
    let value = |line: &str| -> f64 {
        let l = m
            .lines()
            .find(|l| l.starts_with(line))
            .unwrap_or_else(|| panic!("no {line} in\n{m}"));
        l.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let model = format!("{{model_name=\"{}\"}}", sim::DEFAULT_MODEL);
    for h in [
        "vllm:request_queue_time_seconds",
        "vllm:request_prefill_time_seconds",
        "vllm:request_decode_time_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:time_to_first_token_seconds",
    ] {
        assert_eq!(value(&format!("{h}_count{model}")), 2.0, "{h}");
        assert!(m.contains(&format!("# TYPE {h} histogram")));
        let inf = format!(
            "{h}_bucket{{le=\"+Inf\",model_name=\"{}\"}}",
            sim::DEFAULT_MODEL
        );
        assert_eq!(value(&inf), 2.0);
    }
    let queued = value(&format!("vllm:request_queue_time_seconds_sum{model}"));
    assert!(queued >= 0.08, "one request queued ~100 ms, sum {queued}");
    let prefill = value(&format!("vllm:request_prefill_time_seconds_sum{model}"));
    assert!(prefill >= 0.09, "two prefills of 50 ms, sum {prefill}");
    assert!(m.contains(&format!("vllm:num_requests_running{model} 0")));
}

/// Anthropic's SSE: (event name, data) pairs; the event line must match the
/// data's type.
fn anthropic_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| {
            let (ev, data) = b.split_once('\n').expect("event and data lines");
            let name = ev.strip_prefix("event: ").expect("event line").to_string();
            let v: Value =
                serde_json::from_str(data.strip_prefix("data: ").expect("data line")).unwrap();
            assert_eq!(v["type"], name.as_str());
            (name, v)
        })
        .collect()
}

fn messages_body(max_tokens: Option<u32>, stream: bool) -> Value {
    let mut b = json!({
        "model": sim::DEFAULT_MODEL,
        "system": "You are terse.",
        "stream": stream,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say something"}]}],
    });
    if let Some(n) = max_tokens {
        b["max_tokens"] = n.into();
    }
    b
}

#[tokio::test]
async fn anthropic_messages_stream_the_real_event_sequence() {
    let s = start_sim(SimConfig {
        kind: StudioKind::LlamaCpp,
        ..sim_cfg(1, 1, 1000.0)
    })
    .await;
    let c = client();
    let r = post(&c, &s, "/v1/messages", &messages_body(Some(3), true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let events = anthropic_events(&r.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let start = &events[0].1["message"];
    assert_eq!(
        (start["role"].as_str(), start["content"].clone()),
        (Some("assistant"), json!([]))
    );
    let input_tokens = start["usage"]["input_tokens"].as_u64().unwrap();
    assert!(input_tokens > 0);
    let delta = &events[7].1;
    assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
    assert_eq!(delta["usage"]["output_tokens"], 3);
    let streamed: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, v)| {
            assert_eq!(v["delta"]["type"], "text_delta");
            v["delta"]["text"].as_str().unwrap().to_string()
        })
        .collect();
    // The same prompt gives the same text whole.
    let whole: Value = post(&c, &s, "/v1/messages", &messages_body(Some(3), false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(whole["content"][0]["text"].as_str().unwrap(), streamed);
    assert_eq!(whole["usage"]["input_tokens"], input_tokens);
}

#[tokio::test]
async fn anthropic_messages_answer_whole_count_tokens_and_fail_in_their_own_shape() {
    let s = start_sim(SimConfig {
        kind: StudioKind::LlamaCpp,
        ..sim_cfg(1, 1, 1000.0)
    })
    .await;
    let c = client();
    let v: Value = post(&c, &s, "/v1/messages", &messages_body(Some(4), false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["type"].as_str(), v["role"].as_str()),
        (Some("message"), Some("assistant"))
    );
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["output_tokens"], 4);
    let v2: Value = post(&c, &s, "/v1/messages", &messages_body(None, false))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v2["stop_reason"], "end_turn",
        "no limit: it ends on its own"
    );
    let n: Value = post(
        &c,
        &s,
        "/v1/messages/count_tokens",
        &messages_body(None, false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(n, json!({"input_tokens": v["usage"]["input_tokens"]}));
    let mut unknown = messages_body(Some(1), false);
    unknown["model"] = "claude-nope".into();
    let r = post(&c, &s, "/v1/messages", &unknown).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        (e["type"].as_str(), e["error"]["type"].as_str()),
        (Some("error"), Some("not_found_error"))
    );
    s.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    let r = post(&c, &s, "/v1/messages", &messages_body(Some(1), false)).await;
    assert_eq!(r.status(), 503);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "overloaded_error");

    // Where the studio has no Messages API, it answers as for any unknown path.
    let cases = [
        (StudioKind::Vllm, None, 404),
        (StudioKind::LlamaCpp, Some(false), 404),
        (StudioKind::Openai, Some(true), 200),
    ];
    for (kind, anthropic, status) in cases {
        let s = start_sim(SimConfig {
            kind,
            anthropic,
            ..sim_cfg(1, 1, 1000.0)
        })
        .await;
        let r = post(&c, &s, "/v1/messages", &messages_body(Some(1), false)).await;
        assert_eq!(r.status(), status, "{kind} anthropic={anthropic:?}");
    }
    // LM Studio and Ollama serve messages but not token counting.
    for kind in [StudioKind::LmStudio, StudioKind::Ollama] {
        let s = start_sim(SimConfig {
            kind,
            ..sim_cfg(1, 1, 1000.0)
        })
        .await;
        let r = post(&c, &s, "/v1/messages", &messages_body(Some(1), false)).await;
        assert_eq!(r.status(), 200, "{kind}");
        let r = post(
            &c,
            &s,
            "/v1/messages/count_tokens",
            &messages_body(None, false),
        )
        .await;
        let t = r.text().await.unwrap();
        assert!(t.contains("Unexpected endpoint"), "{kind}: {t}");
    }
}

fn ollama() -> SimConfig {
    SimConfig {
        kind: StudioKind::Ollama,
        ..sim_cfg(1, 20, 500.0)
    }
}

#[tokio::test]
async fn ollama_native_chat_streams_ndjson_with_durations_in_nanoseconds() {
    let s = start_sim(ollama()).await;
    let c = client();
    let body = json!({"model": format!("{}:latest", sim::DEFAULT_MODEL),
                      "messages": [{"role": "user", "content": "hello"}],
                      "options": {"num_predict": 4}});
    let r = post(&c, &s, "/api/chat", &body).await;
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "4 tokens then the final object");
    for l in &lines[..4] {
        assert_eq!(l["done"], false);
        assert_eq!(l["message"]["role"], "assistant");
        assert!(l["created_at"].as_str().unwrap().ends_with('Z'));
    }
    let last = &lines[4];
    assert_eq!(last["model"], body["model"]);
    assert_eq!(
        (last["done"].as_bool(), last["done_reason"].as_str()),
        (Some(true), Some("length"))
    );
    assert_eq!(last["eval_count"], 4);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    let ns = |k: &str| last[k].as_u64().unwrap_or_else(|| panic!("{k} in {last}"));
    assert!(ns("prompt_eval_duration") >= 20_000_000, "20 ms prefill");
    assert!(ns("eval_duration") >= 5_000_000, "3 intervals of 2 ms");
    assert!(ns("total_duration") >= ns("prompt_eval_duration") + ns("eval_duration"));
    assert!(ns("load_duration") > 0);
    let streamed: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    // `"stream": false` gives one object with the same text.
    let mut whole = body.clone();
    whole["stream"] = false.into();
    let v: Value = post(&c, &s, "/api/chat", &whole)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["message"]["content"].as_str().unwrap(), streamed);
    assert_eq!(v["done"], true);
    // /api/generate answers in `response`, and without a limit ends on its own.
    let v: Value = post(
        &c,
        &s,
        "/api/generate",
        &json!({"model": sim::DEFAULT_MODEL, "prompt": "hi", "stream": false}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        v["response"].as_str().unwrap().split_whitespace().count(),
        64
    );
    assert_eq!(v["done_reason"], "stop");
    // Errors in Ollama's plain shape.
    let r = post(
        &c,
        &s,
        "/api/chat",
        &json!({"model": "llama9", "messages": []}),
    )
    .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"error": "model 'llama9' not found"})
    );
    let r = post(&c, &s, "/api/generate", &json!({"prompt": "hi"})).await;
    assert_eq!(r.status(), 400);
    let r = post(&c, &s, "/api/chat", &json!("nope")).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn ollama_native_model_endpoints_load_show_and_embed() {
    let s = start_sim(SimConfig {
        load_ms: 100,
        ..ollama()
    })
    .await;
    let c = client();
    let ps: Value = get(&c, &s, "/api/ps").await.json().await.unwrap();
    assert_eq!(ps["models"], json!([]), "nothing loaded yet");
    // An empty prompt loads the model; keep_alive 0 unloads it.
    let t = Instant::now();
    let v: Value = post(
        &c,
        &s,
        "/api/generate",
        &json!({"model": sim::DEFAULT_MODEL}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(
        (v["done"].as_bool(), v["done_reason"].as_str()),
        (Some(true), Some("load"))
    );
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(s.stats().loads, 1);
    let ps: Value = get(&c, &s, "/api/ps").await.json().await.unwrap();
    assert_eq!(ps["models"][0]["name"], sim::DEFAULT_MODEL);
    assert!(ps["models"][0]["expires_at"].is_string());
    let v: Value = post(
        &c,
        &s,
        "/api/chat",
        &json!({"model": sim::DEFAULT_MODEL, "messages": [], "keep_alive": 0}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["done_reason"], "unload");
    let ps: Value = get(&c, &s, "/api/ps").await.json().await.unwrap();
    assert_eq!(ps["models"], json!([]));

    let show = post(&c, &s, "/api/show", &json!({"model": sim::DEFAULT_MODEL})).await;
    assert_eq!(show.status(), 200);
    let show: Value = show.json().await.unwrap();
    assert_eq!(show["details"]["format"], "gguf");
    assert!(show["model_info"].is_object());
    assert_eq!(
        post(&c, &s, "/api/show", &json!({"model": "x"}))
            .await
            .status(),
        404
    );
    let tags: Value = get(&c, &s, "/api/tags").await.json().await.unwrap();
    assert_eq!(tags["models"][0]["digest"].as_str().unwrap().len(), 64);

    let e: Value = post(
        &c,
        &s,
        "/api/embed",
        &json!({"model": sim::DEFAULT_MODEL, "input": ["one", "two"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(e["embeddings"].as_array().unwrap().len(), 2);
    assert_eq!(e["prompt_eval_count"], 2);
    let e: Value = post(
        &c,
        &s,
        "/api/embeddings",
        &json!({"model": sim::DEFAULT_MODEL, "prompt": "one"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(e["embedding"].as_array().unwrap().len(), 16);
}

#[tokio::test]
async fn a_conversations_next_turn_reuses_its_slot_cache_and_a_new_prompt_does_not() {
    // 1 ms per uncached prompt token, on top of a 10 ms TTFT.
    let s = start_sim(SimConfig {
        kind: StudioKind::LlamaCpp,
        prefill_tps: Some(1000.0),
        ..sim_cfg(2, 10, 1000.0)
    })
    .await;
    let c = client();
    let words = |w: &str| vec![w; 300].join(" ");
    let ask = |messages: Value| json!({"max_tokens": 8, "messages": messages});
    let timed = |body: Value| {
        let (c, s) = (c.clone(), s.url());
        async move {
            let t = Instant::now();
            let v: Value = c
                .post(format!("{s}/v1/chat/completions"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            (t.elapsed(), v)
        }
    };
    let turn1 = json!([{"role": "user", "content": words("alpha")}]);
    let (first, v) = timed(ask(turn1.clone())).await;
    assert!(
        first >= Duration::from_millis(280),
        "300 uncached tokens took {first:?}"
    );
    assert_eq!(v["timings"]["cache_n"], 0);
    // The next turn extends the first: only the new part is prefilled.
    let mut turn2 = turn1.as_array().unwrap().clone();
    turn2.push(json!({"role": "assistant", "content": v["choices"][0]["message"]["content"]}));
    turn2.push(json!({"role": "user", "content": "and then?"}));
    let (second, v2) = timed(ask(Value::Array(turn2))).await;
    assert!(
        second < Duration::from_millis(150),
        "a cached turn took {second:?}"
    );
    let cached = v2["timings"]["cache_n"].as_u64().unwrap();
    assert!(cached >= 288, "{}", v2["timings"]);
    // Another conversation pays in full (and takes the other slot).
    let (other, _) = timed(ask(json!([{"role": "user", "content": words("beta")}]))).await;
    assert!(other >= Duration::from_millis(280), "{other:?}");
    // The first conversation's slot still holds it.
    let (again, _) = timed(ask(turn1)).await;
    assert!(again < Duration::from_millis(150), "{again:?}");
    let st = s.stats();
    assert!(st.cached_prompt_tokens >= 2 * 288, "{st:?}");
    assert!(
        st.prefilled_tokens >= 600 && st.prefilled_tokens < 700,
        "{st:?}"
    );
}

#[tokio::test]
async fn every_wire_format_shares_the_same_slots_faults_and_counters() {
    let s = start_sim(SimConfig {
        kind: StudioKind::Ollama,
        ..sim_cfg(1, 1, 200.0)
    })
    .await;
    let c = client();
    // One slot: an OpenAI, an Anthropic and an Ollama stream run one after another.
    let openai = chat_body(10, true);
    let anthropic = messages_body(Some(10), true);
    let native =
        json!({"model": sim::DEFAULT_MODEL, "prompt": "x", "options": {"num_predict": 10}});
    let t = Instant::now();
    let (a, b, n) = tokio::join!(
        post(&c, &s, "/v1/chat/completions", &openai),
        post(&c, &s, "/v1/messages", &anthropic),
        post(&c, &s, "/api/generate", &native),
    );
    let (a, b, n) = (
        a.text().await.unwrap(),
        b.text().await.unwrap(),
        n.text().await.unwrap(),
    );
    assert!(
        t.elapsed() >= Duration::from_millis(120),
        "3 x 45 ms, one at a time"
    );
    assert_eq!(parse_sse(&a).unwrap().content_events(), 10);
    assert_eq!(anthropic_events(&b).len(), 16);
    assert_eq!(n.lines().count(), 11);
    let st = s.stats();
    assert_eq!(
        (st.peak_concurrency, st.completed, st.tokens),
        (1, 3, 30),
        "{st:?}"
    );
    assert_eq!(s.log().len(), 3);

    // The same faults strike every format.
    s.set_faults(Faults {
        drop_after_tokens: Some(2),
        ..Faults::default()
    });
    for (path, body) in [("/v1/messages", &anthropic), ("/api/generate", &native)] {
        let (got, broke) = body_and_break(post(&c, &s, path, body).await).await;
        assert!(broke, "{path}: {got}");
    }
    s.set_faults(Faults {
        error_in_stream_after: Some(1),
        ..Faults::default()
    });
    let b = post(&c, &s, "/v1/messages", &anthropic)
        .await
        .text()
        .await
        .unwrap();
    let events = anthropic_events(&b);
    assert_eq!(events.last().unwrap().0, "error");
    let n = post(&c, &s, "/api/generate", &native)
        .await
        .text()
        .await
        .unwrap();
    let last: Value = serde_json::from_str(n.lines().last().unwrap()).unwrap();
    assert!(last["error"].is_string(), "{n}");
    s.set_faults(Faults {
        error_rate: 1.0,
        error_status: 500,
        ..Faults::default()
    });
    let e: Value = post(&c, &s, "/v1/chat/completions", &openai)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["error"]["type"], "server_error");
    let e: Value = post(&c, &s, "/v1/messages", &anthropic)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(e["error"]["type"], "api_error");
    let e: Value = post(&c, &s, "/api/generate", &native)
        .await
        .json()
        .await
        .unwrap();
    assert!(e["error"].is_string());
}

/// Three models on one studio, `a` loaded, each with its own load time, and
/// room for two of them in memory.
fn inventory(kind: StudioKind) -> SimConfig {
    let m = |s: &str| s.to_string();
    SimConfig {
        kind,
        models: vec![m("a"), m("b"), m("c")],
        loaded: Some(vec![m("a")]),
        model_load_ms: [(m("b"), 150), (m("c"), 300)].into(),
        memory_bytes: Some(2 * sim::MODEL_SIZE),
        ..sim_cfg(4, 10, 400.0)
    }
}

fn states(s: &SimHandle) -> Vec<(String, sim::ModelStatus)> {
    s.models().into_iter().map(|m| (m.name, m.status)).collect()
}

fn loaded_names(s: &SimHandle) -> Vec<String> {
    s.models()
        .into_iter()
        .filter(|m| m.status == sim::ModelStatus::Loaded)
        .map(|m| m.name)
        .collect()
}

#[tokio::test]
async fn the_first_request_for_an_unloaded_model_pays_its_own_load_time() {
    let s = start_sim(inventory(StudioKind::LmStudio)).await;
    let c = client();
    let ask = |model: &str| json!({"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let t = Instant::now();
    assert_eq!(chat(&c, &s, &ask("a")).await.status(), 200);
    assert!(t.elapsed() < Duration::from_millis(120), "a was loaded");
    let t = Instant::now();
    assert_eq!(chat(&c, &s, &ask("c")).await.status(), 200);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "c's load is 300 ms"
    );
    let t = Instant::now();
    assert_eq!(chat(&c, &s, &ask("c")).await.status(), 200);
    assert!(
        t.elapsed() < Duration::from_millis(120),
        "then it is loaded"
    );
    assert_eq!(loaded_names(&s), ["a", "c"]);
    // Room for two: loading b unloads a, the one used longest ago.
    assert_eq!(chat(&c, &s, &ask("b")).await.status(), 200);
    assert_eq!(loaded_names(&s), ["b", "c"]);
    let loads: Vec<u64> = s.models().iter().map(|m| m.loads).collect();
    assert_eq!(loads, [0, 1, 1]);
    assert_eq!(s.stats().loads, 2);
}

#[tokio::test]
async fn lm_studio_v1_lists_loads_and_unloads_models_as_0_4_does() {
    let s = start_sim(inventory(StudioKind::LmStudio)).await;
    let c = client();
    let list: Value = get(&c, &s, "/api/v1/models").await.json().await.unwrap();
    let models = list["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(models[0]["key"], "a");
    assert_eq!(models[0]["loaded_instances"][0]["id"], "a");
    assert!(models[0]["loaded_instances"][0]["config"]["context_length"].is_u64());
    assert_eq!(models[1]["loaded_instances"], json!([]));
    assert_eq!(models[1]["size_bytes"], sim::MODEL_SIZE);
    assert!(models[1]["max_context_length"].is_u64());
    // Load answers once the model is in memory, with the time it took.
    let t = Instant::now();
    let r = post(&c, &s, "/api/v1/models/load", &json!({"model": "c"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(v["model_instance_id"], "c");
    assert!(v["load_time_seconds"].as_f64().unwrap() >= 0.3);
    assert_eq!(loaded_names(&s), ["a", "c"]);
    let r = post(
        &c,
        &s,
        "/api/v1/models/unload",
        &json!({"instance_id": "a"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(loaded_names(&s), ["c"]);
    // What is not there is said so.
    let r = post(
        &c,
        &s,
        "/api/v1/models/unload",
        &json!({"instance_id": "a"}),
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = post(&c, &s, "/api/v1/models/load", &json!({"model": "nope"})).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "model_not_found");
    // The older list says the same.
    let v0: Value = get(&c, &s, "/api/v0/models").await.json().await.unwrap();
    let st: Vec<&str> = v0["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap())
        .collect();
    assert_eq!(st, ["not-loaded", "not-loaded", "loaded"]);
}

#[tokio::test]
async fn an_older_lm_studio_has_only_the_v0_list() {
    let s = start_sim(SimConfig {
        lm_studio_v1: false,
        ..inventory(StudioKind::LmStudio)
    })
    .await;
    let c = client();
    // LM Studio answers 200 with an error object on paths it does not know.
    let r = get(&c, &s, "/api/v1/models").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("Unexpected endpoint"));
    let v0: Value = get(&c, &s, "/api/v0/models").await.json().await.unwrap();
    assert_eq!(v0["data"][0]["state"], "loaded");
}

#[tokio::test]
async fn ollama_lists_what_is_on_disk_and_in_memory_and_loads_per_model() {
    let s = start_sim(inventory(StudioKind::Ollama)).await;
    let c = client();
    let names = |v: &Value| -> Vec<String> {
        v["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect()
    };
    let tags: Value = get(&c, &s, "/api/tags").await.json().await.unwrap();
    assert_eq!(names(&tags), ["a", "b", "c"]);
    let ps: Value = get(&c, &s, "/api/ps").await.json().await.unwrap();
    assert_eq!(names(&ps), ["a"]);
    assert!(ps["models"][0]["size_vram"].is_u64());
    assert!(ps["models"][0]["expires_at"].is_string());
    // No prompt and a keep_alive: load (kept forever with -1).
    let t = Instant::now();
    let v: Value = post(
        &c,
        &s,
        "/api/generate",
        &json!({"model": "b", "keep_alive": -1}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["done_reason"], "load");
    assert!(t.elapsed() >= Duration::from_millis(150));
    let ps: Value = get(&c, &s, "/api/ps").await.json().await.unwrap();
    assert_eq!(names(&ps), ["a", "b"]);
    let b = &ps["models"][1];
    assert!(
        b["expires_at"].as_str().unwrap() > "2200",
        "kept forever: {b}"
    );
    // keep_alive 0 unloads that one model only.
    let v: Value = post(
        &c,
        &s,
        "/api/generate",
        &json!({"model": "a", "keep_alive": "0s"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["done_reason"], "unload");
    assert_eq!(
        states(&s),
        [
            ("a".to_string(), sim::ModelStatus::Unloaded),
            ("b".to_string(), sim::ModelStatus::Loaded),
            ("c".to_string(), sim::ModelStatus::Unloaded)
        ]
    );
    // The control plane shows the same.
    let sm: Value = get(&c, &s, "/sim/models").await.json().await.unwrap();
    assert_eq!(sm[1]["status"], "loaded");
    assert_eq!(sm[1]["loads"], 1);
}

#[tokio::test]
async fn a_load_that_needs_a_busy_models_memory_waits_until_it_is_idle() {
    // Room for one model: a long answer on `a` holds it; a request for `b`
    // waits for that answer to end, then for its own load.
    let s = start_sim(SimConfig {
        memory_bytes: Some(sim::MODEL_SIZE),
        ..inventory(StudioKind::Ollama)
    })
    .await;
    let c = client();
    let long = {
        let (c, url) = (c.clone(), format!("{}/v1/chat/completions", s.url()));
        tokio::spawn(async move {
            c.post(url)
                .json(&json!({"model": "a", "max_tokens": 160, "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = chat(
        &c,
        &s,
        &json!({"model": "b", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(long.await.unwrap(), 200);
    // `a`'s answer: 160 tokens at 400/s, 0.4 s, started 0.1 s before.
    assert!(
        t.elapsed() >= Duration::from_millis(300 + 150),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(loaded_names(&s), ["b"]);
}
