//! Baton in front of two real llama.cpp servers (`llama-server`, SmolLM2
//! 135M, `-np 2 -c 4096 -t 1`) and two llama-cpp-python servers (one
//! request at a time), driven by the official Python `openai` client. The simulated studios cannot show what a real server does to a
//! balancer: llama-server closes the connection after every streamed answer
//! without saying so (it still advertises `Keep-Alive: timeout=5`), closes
//! idle connections after 5 s, and answers 400 with `Connection: close` for
//! prompts longer than a slot's context.
//!
//! Needs the binary and the model (see `support::real`); without them the
//! tests say SKIPPED and are counted (and fail under `CI=true`). The two
//! servers use both cores, so the tests take turns, in a test binary of
//! their own: nothing else may run beside them.

mod support;

use std::time::Duration;

use baton::balancer::Balancer;
use futures_util::StreamExt;
use serde_json::json;
use support::Lab;
use support::real::{self, Flavor, Kit, Load, Report};

/// One scenario at a time: two servers with one thread each fill the machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Per-worker figures that matter here, one line each, for messages.
fn stats_lines(b: &Balancer) -> String {
    let stats = b.stats();
    let mut lines = vec![format!("balancer: retries {}", stats.retries)];
    lines.extend(stats.workers.iter().map(|w| {
        format!(
            "{} ({}): state {}, slots {} (declared {:?}), requests {}, successes {}, client errors {}, cancelled {}, \
                 failures {:?}, ejections {:?}, last error {:?}",
            w.id,
            w.url,
            w.state,
            w.slots,
            w.slots_declared,
            w.requests,
            w.successes,
            w.client_errors,
            w.cancelled,
            w.failures,
            w.ejections,
            w.last_error
        )
    }));
    lines.join("\n")
}

/// Every worker: no ejection and no failure of any kind, and ready.
fn assert_no_ejections(b: &Balancer, context: &str) {
    let stats = b.stats();
    for w in &stats.workers {
        let ejections: u64 = w.ejections.values().sum();
        let failures: u64 = w.failures.values().sum();
        assert!(
            ejections == 0 && failures == 0 && w.state == baton::balancer::State::Ready,
            "{context}: worker {} has {ejections} ejections and {failures} failures \
             (state {}); the healthy real servers never failed:\n{}",
            w.id,
            w.state,
            stats_lines(b)
        );
    }
}

/// Stats count each answer the client read to its end as a success. The
/// openai client closes the connection right after `data: [DONE]`, often
/// before the chunked body's last empty chunk: that is still a complete
/// answer, not a cancellation.
async fn assert_counted_as_successes(b: &Balancer, complete: usize, context: &str) {
    settle(b).await;
    let stats = b.stats();
    let successes: u64 = stats.workers.iter().map(|w| w.successes).sum();
    let cancelled: u64 = stats.workers.iter().map(|w| w.cancelled).sum();
    assert!(
        successes == complete as u64 && cancelled == 0,
        "{context}: {complete} complete answers, but stats count {successes} successes and \
         {cancelled} cancelled:\n{}",
        stats_lines(b)
    );
}

/// The client has exited; give Baton a moment to see its connections end
/// before reading counters that change when they do.
async fn settle(b: &Balancer) -> bool {
    support::wait_until(Duration::from_secs(5), || {
        b.stats().workers.iter().all(|w| w.in_flight == 0)
    })
    .await
}

/// Every answer complete: a finish_reason, no error.
fn assert_all_complete(r: &Report, expected: usize, context: &str) {
    assert_eq!(
        (r.totals.requests, r.totals.completed),
        (expected, expected),
        "{context}: not every answer was complete: {}",
        r.describe()
    );
    assert_eq!(r.totals.failed, 0, "{context}: {}", r.describe());
    assert_eq!(
        r.totals.without_finish_reason,
        0,
        "{context}: {}",
        r.describe()
    );
}

fn report(label: &str, r: &Report, b: Option<&Balancer>) {
    eprintln!("{label}: {}", r.describe());
    if let Some(b) = b {
        eprintln!("{}", stats_lines(b));
    }
}

/// Start two llama-servers and Baton, or say why not (`None` = skipped).
async fn lab() -> Option<(Kit, Lab)> {
    let kit = real::kit_or_skip()?;
    baton::logging::init();
    let lab = Lab::builder()
        .real_servers(&kit, Flavor::Cpp, 2)
        .start()
        .await;
    Some((kit, lab))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_streams_every_answer_complete_through_two_real_servers_without_ejections()
 {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    let r = real::run_client(&kit, &baton.url(), &Load::streamed(24, 8)).await;
    report("through Baton", &r, Some(&baton));
    assert_all_complete(&r, 24, "24 streamed answers on 8 threads");
    assert_no_ejections(&baton, "24 streamed answers on 8 threads");
    assert_counted_as_successes(&baton, 24, "24 streamed answers on 8 threads").await;
    for w in baton.stats().workers {
        assert!(
            w.successes > 0,
            "{} served nothing: {}",
            w.id,
            stats_lines(&baton)
        );
    }
}

/// Two llama-cpp-python servers (one generation at a time behind a lock,
/// a new request ends the running stream, the model list waits for the
/// lock), `max_concurrent_requests: 1`: the openai client streams 16
/// answers on 4 threads, with a short or a long prompt.
async fn single_threaded_real_servers(context_words: usize, label: &str) {
    let _turn = SERIAL.lock().await;
    let Some(kit) = real::kit_for_or_skip(Flavor::Python) else {
        return;
    };
    baton::logging::init();
    let Lab {
        balancer: baton,
        servers: _servers,
        ..
    } = Lab::builder()
        .real_servers(&kit, Flavor::Python, 2)
        .start()
        .await;
    // A ~1,300-token prompt takes 7-15 s on one busy core here: each request
    // may wait for one other in Baton's queue, so allow the client 5 minutes
    // per request and the run 10.
    let load = Load::streamed(16, 4)
        .tokens(32)
        .context(context_words)
        .with("--timeout")
        .with("300")
        .within(Duration::from_secs(600));
    let r = real::run_client(&kit, &baton.url(), &load).await;
    report(label, &r, Some(&baton));
    let ttft: Vec<f64> = baton
        .stats()
        .workers
        .iter()
        .map(|w| w.ewma_ttft_ms)
        .collect();
    eprintln!("{label}: learned time to first token per server {ttft:.0?} ms");
    assert_all_complete(&r, 16, label);
    assert_no_ejections(&baton, label);
    assert_counted_as_successes(&baton, 16, label).await;
    for w in baton.stats().workers {
        assert!(
            w.successes > 0,
            "{} served nothing: {}",
            w.id,
            stats_lines(&baton)
        );
    }
    if context_words > 0 {
        // The scenario is real: each first token came after a silence
        // longer than the old stall window (750 ms) that probed and
        // ejected these servers.
        assert!(
            ttft.iter().all(|t| *t > 750.0),
            "{label}: prefill was too short to test anything: {ttft:?} ms"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_single_threaded_llama_cpp_python_servers_answer_every_stream_without_ejections() {
    single_threaded_real_servers(0, "llama-cpp-python, short prompts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_prompts_on_single_threaded_llama_cpp_python_servers_eject_nothing_and_fail_nothing() {
    // About 1,500 tokens of context: seconds of silent prefill on one core.
    single_threaded_real_servers(1150, "llama-cpp-python, ~1,500-token prompts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_real_servers_behind_baton_are_faster_than_one_alone() {
    let _turn = SERIAL.lock().await;
    let Some(kit) = real::kit_or_skip() else {
        return;
    };
    baton::logging::init();
    let servers = real::start_servers(&kit, 2).await;
    // Same prompts, temperature 0 and max_tokens in both runs: the same work.
    let load = Load::streamed(24, 8);
    let alone = real::run_client(&kit, &servers[0].v1(), &load).await;
    report("one server alone", &alone, None);
    assert_all_complete(&alone, 24, "the baseline (one server, no Baton)");

    let baton = real::balancer_over(&servers).await;
    let pooled = real::run_client(&kit, &baton.url(), &load).await;
    report("two servers through Baton", &pooled, Some(&baton));
    let (a, p) = (alone.totals.wall_seconds, pooled.totals.wall_seconds);
    eprintln!(
        "wall time, 24 streamed answers of 56 tokens on 8 threads: one server alone {a:.2} s, \
         two through Baton {p:.2} s, speedup {:.2}x",
        a / p
    );
    // Fast by failing does not count.
    assert_all_complete(&pooled, 24, "through Baton");
    assert!(
        p < a,
        "two servers through Baton took {p:.2} s, one server alone {a:.2} s\n{}",
        stats_lines(&baton)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_complete_after_idle_gaps_longer_than_the_servers_keep_alive() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    // llama-server closes a connection idle for 5 s: 6 s gaps let it close
    // every pooled connection Baton holds (probes keep only one per server busy).
    let gap = Duration::from_secs(6);
    let mut reports = Vec::new();
    for batch in 0..3 {
        if batch > 0 {
            tokio::time::sleep(gap).await;
        }
        let r = real::run_client(&kit, &baton.url(), &Load::streamed(8, 4).tokens(32)).await;
        report(&format!("batch {batch}"), &r, Some(&baton));
        reports.push(r);
    }
    for (i, r) in reports.iter().enumerate() {
        assert_all_complete(r, 8, &format!("batch {i} of 3, 6 s idle between batches"));
    }
    assert_no_ejections(&baton, "three batches with 6 s idle gaps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_sending_streamed_requests_back_to_back_gets_every_answer_complete() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    // One thread: each request starts the moment the previous answer ended,
    // i.e. right when llama-server closes the connection that carried it.
    let load = Load::streamed(8, 1).tokens(32);
    let r = real::run_client(&kit, &baton.url(), &load).await;
    report("back to back", &r, Some(&baton));
    assert_all_complete(&r, 8, "8 back-to-back streamed answers");
    assert_no_ejections(&baton, "8 back-to-back streamed answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_streamed_answers_handed_straight_to_queued_requests_all_complete() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    // 8 threads on 4 slots keep a queue, so every slot goes to a waiting
    // request the moment a stream ends, when llama-server is closing that
    // connection. Short answers: many such handoffs in a few seconds.
    let load = Load::streamed(48, 8).tokens(16);
    let r = real::run_client(&kit, &baton.url(), &load).await;
    report("handoffs", &r, Some(&baton));
    assert_all_complete(&r, 48, "48 short streamed answers on 8 threads");
    assert_no_ejections(&baton, "48 short streamed answers on 8 threads");
    assert_counted_as_successes(&baton, 48, "48 short streamed answers on 8 threads").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_and_plain_answers_mixed_all_complete_without_ejections() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    // Plain answers keep their connection alive, streamed ones close it: a
    // plain request on a connection a stream just left must still work.
    let r = real::run_client(
        &kit,
        &baton.url(),
        &Load::streamed(12, 4).tokens(32).with("--mixed"),
    )
    .await;
    report("mixed", &r, Some(&baton));
    assert_all_complete(&r, 12, "6 streamed + 6 plain answers");
    assert_no_ejections(&baton, "6 streamed + 6 plain answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_answers_with_include_usage_carry_usage_and_a_finish_reason() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    let r = real::run_client(
        &kit,
        &baton.url(),
        &Load::streamed(12, 4).tokens(32).with("--include-usage"),
    )
    .await;
    report("include_usage", &r, Some(&baton));
    assert_all_complete(&r, 12, "12 streamed answers with include_usage");
    assert_eq!(
        r.totals.with_usage,
        12,
        "every answer must end with its usage chunk: {}",
        r.describe()
    );
    for o in &r.requests {
        let tokens = o
            .usage
            .as_ref()
            .and_then(|u| u.get("completion_tokens"))
            .and_then(|t| t.as_u64());
        assert_eq!(tokens, Some(32), "request {}: usage {:?}", o.index, o.usage);
    }
    assert_no_ejections(&baton, "12 streamed answers with include_usage");
    assert_counted_as_successes(&baton, 12, "12 streamed answers with include_usage").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_longer_than_a_slots_context_is_the_clients_error_and_ejects_nothing() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    // -c 4096 over -np 2 leaves 2048 tokens per slot; this prompt is ~3000.
    let http = reqwest::Client::new();
    for stream in [false, true, false, true] {
        let body = json!({
            "model": real::MODEL, "stream": stream, "max_tokens": 8,
            "messages": [{"role": "user", "content": "word ".repeat(3000)}],
        });
        let r = http
            .post(format!("{}/chat/completions", baton.url()))
            .json(&body)
            .send()
            .await
            .expect("Baton answers");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        assert_eq!(
            status,
            400,
            "stream={stream}: the server's 400 must reach the client: {text}\n{}",
            stats_lines(&baton)
        );
        assert!(text.contains("context"), "stream={stream}: {text}");
    }
    let r = real::run_client(&kit, &baton.url(), &Load::streamed(4, 4)).await;
    report("after four 400s", &r, Some(&baton));
    assert_all_complete(&r, 4, "answers after the 400s");
    assert_no_ejections(&baton, "four context-overflow 400s");
    let client_errors: u64 = baton.stats().workers.iter().map(|w| w.client_errors).sum();
    assert_eq!(client_errors, 4, "{}", stats_lines(&baton));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_client_abandons_free_their_slots_and_eject_nothing() {
    let _turn = SERIAL.lock().await;
    let Some((
        kit,
        Lab {
            balancer: baton,
            servers: _servers,
            ..
        },
    )) = lab().await
    else {
        return;
    };
    // Four clients (every slot) read the first chunk of a long answer and
    // hang up: Baton must close those upstream connections so llama-server
    // stops generating, and the slots must serve the next clients.
    // `ignore_eos`: a 135M model may end its "long story" early, and an
    // answer that finished before the hang-up is rightly a success.
    let http = reqwest::Client::new();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let body = json!({
            "model": real::MODEL, "stream": true, "max_tokens": 1500, "ignore_eos": true,
            "messages": [{"role": "user", "content": "Tell me a very long story."}],
        });
        let r = http
            .post(format!("{}/chat/completions", baton.url()))
            .json(&body)
            .send()
            .await
            .expect("Baton answers");
        assert_eq!(r.status().as_u16(), 200);
        readers.push(r.bytes_stream());
    }
    for s in &mut readers {
        assert!(matches!(s.next().await, Some(Ok(_))), "first chunk");
    }
    drop(readers);
    assert!(
        settle(&baton).await,
        "slots still held:\n{}",
        stats_lines(&baton)
    );
    // 1500-token answers would keep the servers busy for ~30 s if they did
    // not stop: these 8 short ones (~3 s) would wait behind them.
    let r = real::run_client(&kit, &baton.url(), &Load::streamed(8, 4).tokens(32)).await;
    report("after four abandoned streams", &r, Some(&baton));
    assert_all_complete(&r, 8, "answers after abandoned streams");
    assert!(
        r.totals.wall_seconds < 15.0,
        "the servers kept generating the abandoned answers? {}",
        r.describe()
    );
    settle(&baton).await;
    let stats = baton.stats();
    let cancelled: u64 = stats.workers.iter().map(|w| w.cancelled).sum();
    let successes: u64 = stats.workers.iter().map(|w| w.successes).sum();
    assert_eq!(
        (cancelled, successes),
        (4, 8),
        "4 abandoned streams and 8 complete answers, counted as (cancelled, successes):\n{}",
        stats_lines(&baton)
    );
    assert_no_ejections(&baton, "four abandoned streams");
}
