//! Simulated studios over real sockets on 127.0.0.x.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use baton::sim::{self, Faults, SimConfig, SimHandle};
use baton::studio::StudioKind;
use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;

async fn start(cfg: SimConfig) -> SimHandle {
    sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), cfg)
        .await
        .unwrap()
}

fn cfg(slots: usize, ttft_ms: u64, tps: f64) -> SimConfig {
    SimConfig {
        slots,
        ttft: Duration::from_millis(ttft_ms),
        tokens_per_second: tps,
        ..SimConfig::default()
    }
}

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
    let s = start(cfg(4, 50, 100.0)).await;
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
    let s = start(cfg(1, 10, 50.0)).await;
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
    let s = start(cfg(2, 5, 1000.0)).await;
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
    let s = start(SimConfig {
        models: vec!["a".into(), "b".into()],
        ..cfg(2, 1, 1000.0)
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
    let s = start(cfg(1, 1, 2000.0)).await;
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
    let s = start(SimConfig {
        faults: Faults {
            error_rate: 1.0,
            error_status: 500,
            ..Faults::default()
        },
        ..cfg(1, 1, 1000.0)
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
    let s = start(SimConfig {
        faults: Faults {
            hang: true,
            ..Faults::default()
        },
        ..cfg(1, 1, 1000.0)
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
    let s = start(SimConfig {
        faults: Faults {
            drop_after_tokens: Some(3),
            ..Faults::default()
        },
        ..cfg(1, 1, 500.0)
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
    let s = start(SimConfig {
        faults: Faults {
            delay_ms: 300,
            ..Faults::default()
        },
        ..cfg(1, 1, 1000.0)
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
    let s = start(cfg(1, 1, 1000.0)).await;
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
    let s = start(cfg(1, 1, 20.0)).await;
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
        let s = start(SimConfig {
            kind: *kind,
            ..cfg(3, 1, 1000.0)
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
    let s = start(SimConfig {
        kind: StudioKind::Ollama,
        ..cfg(3, 1, 1000.0)
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
    let s = start(SimConfig {
        kind: StudioKind::LlamaCpp,
        ..cfg(3, 1, 1000.0)
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
    let s = start(SimConfig {
        kind: StudioKind::Vllm,
        ..cfg(3, 1, 1000.0)
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
    let s = start(cfg(1, 1, 1000.0)).await;
    let r = c.get(format!("{}/nope", s.url())).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Unexpected endpoint"));
}

#[tokio::test]
async fn start_many_binds_consecutive_addresses() {
    let sims = sim::start_many(Ipv4Addr::new(127, 0, 0, 42), 0, 3, &cfg(1, 1, 1000.0))
        .await
        .unwrap();
    let ips: Vec<String> = sims.iter().map(|s| s.addr().ip().to_string()).collect();
    assert_eq!(ips, ["127.0.0.42", "127.0.0.43", "127.0.0.44"]);
    for s in &sims {
        assert_eq!(chat(&client(), s, &chat_body(1, false)).await.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_a_thousand_waiting_connections() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    // One slot busy for a long time; 1000 clients wait behind it.
    let s = start(cfg(1, 1, 10.0)).await;
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
    assert!(
        wait_until(Duration::from_secs(20), || s.stats().in_flight == 1000).await,
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
    let s = start(cfg(1, 1, 1000.0)).await;
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
