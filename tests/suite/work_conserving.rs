//! The scheduler never parks a request while a usable slot is free: plain
//! back-to-back clients on one keep-alive connection, instant answers, every
//! endpoint; and a request sent the instant `baton serve` listens.

use crate::support;

use std::time::{Duration, Instant};

use baton::sim::SimConfig;
use serde_json::{Value, json};
use support::*;

/// Studios that answer at once: the pattern that used to stall the queue.
fn instant_studio(seed: u64) -> SimConfig {
    SimConfig {
        default_tokens: 4,
        ..sim_cfg(4, 0, 1_000_000.0).with_seed(seed)
    }
}

/// One client, one kept-alive connection, `n` requests back to back; each
/// must be answered within a second, complete.
async fn back_to_back(url: String, path: &'static str, body: Value, n: usize) -> Duration {
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let t0 = Instant::now();
    for i in 0..n {
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            c.post(format!("{url}{path}")).json(&body).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{path}: request {i} waited over a second: the queue stalled"))
        .unwrap();
        assert_eq!(r.status(), 200, "{path}: request {i}");
        let text = tokio::time::timeout(Duration::from_secs(1), r.text())
            .await
            .unwrap_or_else(|_| panic!("{path}: body {i} stalled"))
            .unwrap();
        if stream {
            let sse = parse_sse(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(sse.done, "{path}: request {i} ended without [DONE]");
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            assert!(
                v.get("choices").is_some() || v.get("data").is_some(),
                "{path}: {v}"
            );
        }
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_client_gets_10000_instant_answers_back_to_back_on_every_endpoint() {
    let lab = Lab::start(
        (1..=3).map(instant_studio).collect(),
        baton::config::BalancerSettings {
            // A stalled request must fail the test fast, not wait a minute.
            queue_timeout: Duration::from_secs(5),
            ..test_settings()
        },
    )
    .await;
    let model = baton::sim::DEFAULT_MODEL;
    let chat = |stream| {
        json!({"model": model, "stream": stream, "max_tokens": 4,
               "messages": [{"role": "user", "content": "hi"}]})
    };
    let jobs = vec![
        ("/chat/completions", chat(true)),
        ("/chat/completions", chat(false)),
        (
            "/completions",
            json!({"model": model, "prompt": "hi", "max_tokens": 4}),
        ),
        (
            "/embeddings",
            json!({"model": model, "input": "hello world"}),
        ),
    ];
    let mut tasks = Vec::new();
    for (path, body) in jobs {
        tasks.push(tokio::spawn(back_to_back(lab.url(), path, body, 10_000)));
    }
    for t in tasks {
        let took = t.await.unwrap();
        eprintln!("10,000 back-to-back requests in {took:?}");
    }
    let st = lab.balancer.stats();
    assert_eq!(st.queue_depth, 0);
    assert_eq!(st.rejected_queue_timeout, 0);
    for w in &st.workers {
        assert_eq!(w.ejections.values().sum::<u64>(), 0, "{w:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_clients_back_to_back_over_one_studio_never_stall() {
    // Fewer slots than clients, and answers faster than a probe: waiters,
    // releases and probes interleave all the time.
    let lab = Lab::start(
        vec![SimConfig {
            slots: 2,
            ..instant_studio(7)
        }],
        baton::config::BalancerSettings {
            queue_timeout: Duration::from_secs(5),
            ..test_settings()
        },
    )
    .await;
    let body = json!({"model": baton::sim::DEFAULT_MODEL, "input": "hello"});
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(back_to_back(
            lab.url(),
            "/embeddings",
            body.clone(),
            2_000,
        )));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(lab.balancer.stats().queue_depth, 0);
}

#[test]
fn a_request_sent_the_instant_baton_serve_listens_succeeds() {
    // A free port, then `baton serve` on it over simulated studios.
    let port = free_port();
    let _serve = BatonCmd::new(["serve", "--simulate", "2", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .quiet()
        .spawn();
    // Connect the moment the port accepts: before any studio was probed.
    let t0 = Instant::now();
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_micros(200))
            }
            Err(e) => panic!("baton serve never listened: {e}"),
        }
    };
    let body = json!({"model": baton::sim::DEFAULT_MODEL, "max_tokens": 3,
                      "messages": [{"role": "user", "content": "first"}]})
    .to_string();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"finish_reason\""), "{answer}");
}
