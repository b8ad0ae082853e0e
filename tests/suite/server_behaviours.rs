//! Baton over simulated studios that behave like real servers do: they
//! close kept-alive connections unannounced, serve HTTP one request at a
//! time, end a generation when another request arrives, and end streams
//! without a finish. Busy must never look dead, and a cut answer must never
//! look complete.

use crate::support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton::balancer::{Failure, State};
use baton::config::BalancerSettings;
use baton::sim::{Faults, SimConfig};
use serde_json::json;
use support::*;

/// Production timings except the listen address: probes every second, a
/// one-second probe timeout, the real connect timeout.
fn real_settings() -> BalancerSettings {
    BalancerSettings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..BalancerSettings::default()
    }
}

const TTFT_MS: u64 = 100;
const TPS: f64 = 50.0;
const TOKENS: u32 = 24;

fn studio(slots: usize, faults: Faults, seed: u64) -> SimConfig {
    sim_cfg(slots, TTFT_MS, TPS)
        .with_faults(faults)
        .with_seed(seed)
}

/// Answers per second a studio can give: `slots` at a time, each taking
/// the TTFT plus the time between its first and last token.
fn capacity(slots: usize) -> f64 {
    let answer = TTFT_MS as f64 / 1000.0 + f64::from(TOKENS - 1) / TPS;
    slots as f64 / answer
}

struct ModeRun {
    name: &'static str,
    complete: u64,
    in_window: u64,
    window: Duration,
    ideal_per_s: f64,
    lab: Lab,
}

/// Closed-loop clients at twice the pool's slots for `secs`; every answer
/// must be complete (all its tokens, a finish reason, then `[DONE]`).
async fn run_mode(name: &'static str, slots: usize, faults: Faults, secs: u64) -> ModeRun {
    let lab = Lab::start(
        vec![
            studio(slots, faults.clone(), 1),
            studio(slots, faults.clone(), 2),
        ],
        real_settings(),
    )
    .await;
    let clients = 2 * 2 * slots;
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    // Count answers that end inside the steady window (after warm-up).
    let warm = Duration::from_secs(3);
    let (complete, in_window) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, complete, in_window) = (lab.url(), complete.clone(), in_window.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            let body = json!({"model": baton::sim::DEFAULT_MODEL, "stream": true,
                              "max_tokens": TOKENS,
                              "messages": [{"role": "user", "content": "tell me"}]});
            while Instant::now() < end {
                let r = c
                    .post(format!("{url}/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{name}");
                let text = r.text().await.unwrap();
                let sse = parse_sse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert!(sse.done, "{name}: an answer ended without [DONE]: {text}");
                assert_eq!(
                    sse.content_events(),
                    TOKENS as usize,
                    "{name}: an answer is missing tokens: {text}"
                );
                assert!(
                    sse.events
                        .iter()
                        .any(|e| e["choices"][0]["finish_reason"].is_string()),
                    "{name}: no finish_reason: {text}"
                );
                complete.fetch_add(1, Ordering::Relaxed);
                let t = started.elapsed();
                if t >= warm && Instant::now() <= end {
                    in_window.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    ModeRun {
        name,
        complete: complete.load(Ordering::Relaxed),
        in_window: in_window.load(Ordering::Relaxed),
        window: Duration::from_secs(secs) - warm,
        ideal_per_s: 2.0 * capacity(slots),
        lab,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_of_studios_in_every_real_server_mode_run_at_their_summed_capacity_without_ejections()
{
    let secs: u64 = std::env::var("BATON_MODE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let runs = futures_util::future::join_all([
        run_mode(
            "close after every stream (llama.cpp)",
            4,
            Faults {
                close_after_stream: true,
                keepalive_idle_ms: Some(5000),
                ..Faults::default()
            },
            secs,
        ),
        run_mode(
            "close at random",
            4,
            Faults {
                close_random: 0.3,
                ..Faults::default()
            },
            secs,
        ),
        run_mode(
            "one request at a time (single-threaded HTTP)",
            1,
            Faults {
                serial: true,
                ..Faults::default()
            },
            secs,
        ),
        run_mode(
            "a new request ends the running one (llama-cpp-python)",
            1,
            Faults {
                interrupt: true,
                ..Faults::default()
            },
            secs,
        ),
    ])
    .await;
    for r in &runs {
        let rate = r.in_window as f64 / r.window.as_secs_f64();
        let ratio = rate / r.ideal_per_s;
        eprintln!(
            "{}: {} answers, {rate:.2}/s in the steady window = {ratio:.3} of the summed capacity ({:.2}/s)",
            r.name, r.complete, r.ideal_per_s
        );
        let st = r.lab.balancer.stats();
        for w in &st.workers {
            assert_eq!(
                w.ejections.values().sum::<u64>(),
                0,
                "{}: a healthy studio was ejected: {w:?}",
                r.name
            );
            assert_eq!(w.failures.values().sum::<u64>(), 0, "{}: {w:?}", r.name);
            assert_eq!(w.state, State::Ready, "{}", r.name);
        }
        assert!(
            ratio >= 0.95,
            "{}: {ratio:.3} of the summed capacity",
            r.name
        );
    }
    // Interrupt mode: no request (probes included) ever reached a studio
    // while it generated, or it would have cut that answer.
    let interrupt = &runs[3];
    for s in &interrupt.lab.sims {
        let log = s.log();
        let cut: Vec<_> = log.iter().filter(|e| e.interrupted).collect();
        assert!(cut.is_empty(), "answers were interrupted: {cut:?}");
        let during: Vec<_> = log.iter().filter(|e| e.generating_at_arrival > 0).collect();
        assert!(
            during.is_empty(),
            "requests arrived while the studio generated: {:?}",
            &during[..during.len().min(5)]
        );
        assert!(
            log.iter().any(|e| e.path == "/v1/models"),
            "the studio was never probed at all"
        );
    }
}

/// One streamed answer through a one-studio pool with these faults.
async fn cut_answer(faults: Faults) -> (String, Lab) {
    let lab = Lab::start(vec![studio(2, faults, 1)], test_settings()).await;
    let r = client()
        .post(format!("{}/chat/completions", lab.url()))
        .json(&chat_body(8, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap_or_default();
    (text, lab)
}

fn assert_error_instead_of_done(text: &str) {
    assert!(
        !text.contains("[DONE]"),
        "a cut answer must not end with [DONE]: {text}"
    );
    let sse = parse_sse(text).unwrap();
    let last = sse.events.last().expect("some events");
    assert_eq!(last["error"]["code"], "upstream_failed", "{text}");
}

#[tokio::test]
async fn a_stream_that_ends_with_done_but_no_finish_reason_reaches_the_client_as_an_error() {
    let (text, lab) = cut_answer(Faults {
        done_without_finish: true,
        ..Faults::default()
    })
    .await;
    assert_error_instead_of_done(&text);
    assert!(text.contains("without a finish reason"), "{text}");
    let w = lab.worker("s0");
    assert_eq!(w.failures[&Failure::Stream], 1, "{w:?}");
    // One cut answer is that answer's problem, not the studio's.
    assert_eq!(w.ejections.values().sum::<u64>(), 0, "{w:?}");
    assert_eq!(w.state, State::Ready);
}

#[tokio::test]
async fn a_stream_whose_body_breaks_after_done_reaches_the_client_as_an_error() {
    let (text, lab) = cut_answer(Faults {
        break_after_done: true,
        ..Faults::default()
    })
    .await;
    assert_error_instead_of_done(&text);
    let w = lab.worker("s0");
    assert_eq!(w.failures[&Failure::Stream], 1, "{w:?}");
    assert_eq!(w.ejections.values().sum::<u64>(), 0, "{w:?}");
}

#[tokio::test]
async fn an_error_inside_a_200_stream_is_passed_on_without_done() {
    let (text, lab) = cut_answer(Faults {
        error_in_stream_after: Some(3),
        ..Faults::default()
    })
    .await;
    assert!(!text.contains("[DONE]"), "{text}");
    let sse = parse_sse(&text).unwrap();
    assert!(sse.events.last().unwrap()["error"].is_object(), "{text}");
    assert_eq!(lab.worker("s0").failures[&Failure::Stream], 1);
}

#[tokio::test]
async fn a_whole_answer_cut_short_is_a_502_not_a_200() {
    // The studio breaks the JSON half-way: never a 200 with half an answer.
    let lab = Lab::start(
        vec![studio(
            2,
            Faults {
                drop_after_tokens: Some(2),
                ..Faults::default()
            },
            1,
        )],
        test_settings(),
    )
    .await;
    let r = client()
        .post(format!("{}/chat/completions", lab.url()))
        .json(&chat_body(8, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_failed", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_over_four_studios_open_connections_gradually_and_eject_nothing() {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let sims = (0..4)
        .map(|i| SimConfig {
            slots: 250,
            ttft: Duration::from_millis(200),
            tokens_per_second: 20.0,
            seed: i,
            ..SimConfig::default()
        })
        .collect();
    let lab = Lab::start(sims, real_settings()).await;
    let mut tasks = Vec::new();
    let c = client();
    for _ in 0..1000 {
        let (c, url) = (c.clone(), lab.url());
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(format!("{url}/chat/completions"))
                .json(&chat_body(20, true))
                .send()
                .await
                .unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            (status, text)
        }));
    }
    let mut failed = 0;
    for t in tasks {
        let (status, text) = t.await.unwrap();
        if status != 200 || !text.ends_with("data: [DONE]\n\n") {
            failed += 1;
        }
    }
    let st = lab.balancer.stats();
    for w in &st.workers {
        assert_eq!(w.ejections.values().sum::<u64>(), 0, "{w:?}");
    }
    assert_eq!(failed, 0, "{st:?}");
}

/// Prompt tokens a single-threaded studio prefills per second.
const PREFILL_TPS: f64 = 250.0;

/// A studio like llama-cpp-python's server: one request at a time, probes
/// included; a new request ends the running stream; the `200` head at
/// once, then silence until the first token while the prompt prefills.
fn single_threaded(seed: u64) -> SimConfig {
    SimConfig {
        kind: baton::studio::StudioKind::Openai,
        slots: 1,
        ttft: Duration::from_millis(50),
        tokens_per_second: 100.0,
        prefill_tps: Some(PREFILL_TPS),
        faults: Faults {
            serial: true,
            interrupt: true,
            early_headers: true,
            ..Faults::default()
        },
        seed,
        ..SimConfig::default()
    }
}

/// A prompt of `words` tokens that no slot has cached (it starts with `tag`).
fn long_prompt(tag: usize, words: usize) -> String {
    let mut p = format!("request-{tag} ");
    p.push_str(&"context ".repeat(words));
    p
}

/// `clients` streams at once (twice the pool's two slots) through two
/// single-threaded studios, each prompt silent for `prefill` before its
/// first token: every answer must be complete, nothing ejected, and no
/// request of any kind may reach a studio while another is inside it.
async fn long_prompts_on_single_threaded_studios(prefill: Duration, rounds: usize) {
    let lab = Lab::start(
        vec![single_threaded(1), single_threaded(2)],
        real_settings(),
    )
    .await;
    let words = (prefill.as_secs_f64() * PREFILL_TPS) as usize;
    let clients = 4;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = lab.url();
        tasks.push(tokio::spawn(async move {
            let http = client();
            for r in 0..rounds {
                let body = json!({"model": baton::sim::DEFAULT_MODEL, "stream": true,
                                  "max_tokens": 16,
                                  "messages": [{"role": "user", "content": long_prompt(c * 100 + r, words)}]});
                let resp = http
                    .post(format!("{url}/chat/completions"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status();
                let text = resp.text().await.unwrap();
                assert_eq!(status, 200, "{text}");
                let sse = parse_sse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
                assert!(sse.done, "an answer ended without [DONE]: {text}");
                assert_eq!(sse.content_events(), 16, "an answer is missing tokens: {text}");
                assert!(
                    sse.events
                        .iter()
                        .any(|e| e["choices"][0]["finish_reason"] == "length"),
                    "no finish_reason: {text}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let took = started.elapsed();
    // Two studios, one answer at a time each: `clients * rounds / 2` prefills in a row.
    let ideal = prefill.mul_f64((clients * rounds) as f64 / 2.0);
    eprintln!(
        "{} answers with a {prefill:?} silent prefill on two single-threaded studios: {took:.1?} (ideal {ideal:?})",
        clients * rounds
    );
    assert!(
        took < ideal.mul_f64(1.25) + Duration::from_secs(2),
        "took {took:?}"
    );
    for id in ["s0", "s1"] {
        let w = lab.worker(id);
        assert_eq!(w.ejections.values().sum::<u64>(), 0, "{w:?}");
        assert_eq!(w.failures.values().sum::<u64>(), 0, "{w:?}");
    }
    for sim in &lab.sims {
        let log = sim.log();
        assert_eq!(sim.stats().interrupted, 0, "a stream was interrupted");
        for (i, a) in log.iter().enumerate() {
            let a_end = a.ended_ms.expect("every request ended");
            for b in &log[i + 1..] {
                assert!(
                    b.arrived_ms >= a_end,
                    "{} {} arrived at {} ms while {} {} was inside ({}..{} ms)",
                    b.method,
                    b.path,
                    b.arrived_ms,
                    a.method,
                    a.path,
                    a.arrived_ms,
                    a_end
                );
            }
        }
        // Probes and model lists happened, only between answers.
        assert!(
            log.iter().any(|e| e.method == "GET"),
            "no probe at all: {log:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_threaded_studios_with_a_four_second_silent_prefill_serve_every_answer_without_ejections()
 {
    long_prompts_on_single_threaded_studios(Duration::from_secs(4), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_threaded_studios_with_a_thirty_second_silent_prefill_serve_every_answer_without_ejections()
 {
    long_prompts_on_single_threaded_studios(Duration::from_secs(30), 1).await;
}
