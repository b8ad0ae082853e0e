//! Every client, every studio: the official `anthropic` SDK and the `ollama`
//! Python library through Baton, a mixed pool joined by a model alias,
//! studios that lack an API, errors in each API's own shape, and
//! conversations that return to the studio holding their prompt cache.

use crate::support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use baton::config::{Aliases, BalancerSettings, Strategy};
use baton::sim::SimConfig;
use baton::studio::StudioKind;
use serde_json::{Value, json};
use support::*;

/// The Python interpreter, if it has `module`; else `None` after saying
/// SKIPPED and why (a failure under `CI=true`, where CI installs the clients).
fn python_with(module: &str) -> Option<String> {
    let python = std::env::var("BATON_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(python);
    }
    support::skip::skip_test(format!(
        "the {module} client: `{python} -c 'import {module}'` failed (pip install {module})"
    ));
    None
}

fn run_client(python: &str, script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python).arg(path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn studio(kind: StudioKind, model: &str, seed: u64) -> SimConfig {
    SimConfig {
        ttft: Duration::from_millis(20),
        tokens_per_second: 400.0,
        ..SimConfig::default()
    }
    .with_kind(kind)
    .with_models(&[model])
    .with_seed(seed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_streams_and_answers_whole_and_a_studio_without_the_api_gets_none() {
    let Some(py) = python_with("anthropic") else {
        return;
    };
    let model = baton::sim::DEFAULT_MODEL;
    // llama.cpp's server speaks Anthropic's API; this vLLM does not.
    let lab = Lab::start(
        vec![
            studio(StudioKind::LlamaCpp, model, 1),
            studio(StudioKind::Vllm, model, 2),
        ],
        test_settings(),
    )
    .await;
    let root = lab.root();
    let (py2, root2) = (py.clone(), root.clone());
    let streamed = tokio::task::spawn_blocking(move || {
        run_client(
            &py2,
            "anthropic_client.py",
            &[
                "--base-url",
                &root2,
                "--model",
                model,
                "--stream",
                "--requests",
                "6",
            ],
        )
    })
    .await
    .unwrap();
    let whole = tokio::task::spawn_blocking(move || {
        run_client(
            &py,
            "anthropic_client.py",
            &["--base-url", &root, "--model", model, "--requests", "6"],
        )
    })
    .await
    .unwrap();
    for r in streamed["requests"].as_array().unwrap() {
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["stop_reason"].is_string(), "{r}");
        assert!(!r["text"].as_str().unwrap().is_empty(), "{r}");
        assert_eq!(
            r["events"].as_array().unwrap().last().unwrap(),
            "message_stop"
        );
    }
    for r in whole["requests"].as_array().unwrap() {
        assert_eq!(r["ok"], true, "{r}");
        assert!(r["stop_reason"].is_string(), "{r}");
    }
    // The studio without the API was asked once, empty, at admission, and
    // never got a client's request; nothing counted as a failure.
    let asked: Vec<_> = lab.sims[1]
        .log()
        .into_iter()
        .filter(|e| e.path == "/v1/messages")
        .collect();
    assert!(asked.iter().all(|e| e.status == Some(404)), "{asked:?}");
    assert!(asked.len() <= 1, "{asked:?}");
    let vllm = lab.worker("s1");
    assert_eq!(
        vllm.capabilities.get("/v1/messages"),
        Some(&baton::balancer::Capability::No)
    );
    assert_eq!(vllm.failures.values().sum::<u64>(), 0, "{vllm:?}");
    let served = lab.sims[0]
        .log()
        .into_iter()
        .filter(|e| e.path == "/v1/messages" && e.status == Some(200))
        .count();
    assert_eq!(served, 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ollama_library_chats_generates_embeds_and_lists_through_baton() {
    let Some(py) = python_with("ollama") else {
        return;
    };
    let model = "mistral:7b-instruct";
    let lab = Lab::start(
        vec![
            studio(StudioKind::Ollama, model, 1),
            studio(StudioKind::Ollama, model, 2),
        ],
        test_settings(),
    )
    .await;
    let root = lab.root();
    let out = tokio::task::spawn_blocking(move || {
        run_client(
            &py,
            "ollama_client.py",
            &["--host", &root, "--model", model],
        )
    })
    .await
    .unwrap();
    assert_eq!(out["chat"]["done"], true, "{out}");
    assert!(!out["chat"]["text"].as_str().unwrap().is_empty());
    assert!(
        out["chat_stream"]["chunks"].as_u64().unwrap() > 2,
        "streamed: {out}"
    );
    assert_eq!(out["chat_stream"]["done"], true);
    assert_eq!(out["generate_stream"]["done"], true);
    assert_eq!(out["embed"]["n"], 2);
    assert_eq!(out["tags"], json!([model]), "the union, each model once");
    assert_eq!(out["missing"]["raised"], true);
    assert_eq!(out["missing"]["status"], 404);
    for w in ["s0", "s1"] {
        assert_eq!(lab.worker(w).failures.values().sum::<u64>(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pool_joined_by_an_alias_sends_each_studio_its_own_model_name() {
    let lm = "mistral-7b-instruct-v0.2";
    let ol = "mistral:7b-instruct";
    let aliases = Aliases(BTreeMap::from([(
        "mistral-7b".to_string(),
        vec![lm.to_string(), ol.to_string()],
    )]));
    let lab = Lab::builder()
        .studios([
            studio(StudioKind::LmStudio, lm, 1),
            studio(StudioKind::Ollama, ol, 2),
        ])
        .aliases(aliases)
        .start()
        .await;
    let c = client();
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..16 {
        // Through the alias, and through either real name.
        let asked = ["mistral-7b", lm, ol][i % 3];
        let r = c
            .post(format!("{}/chat/completions", lab.url()))
            .json(&json!({"model": asked, "max_tokens": 4,
                          "messages": [{"role": "user", "content": format!("q{i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let worker = r.headers()["x-baton-worker"].to_str().unwrap().to_string();
        let v: Value = r.json().await.unwrap();
        // The studio echoes the name it was asked for.
        let name = v["model"].as_str().unwrap().to_string();
        if let Some(prev) = got.insert(worker.clone(), name.clone()) {
            assert_eq!(prev, name, "{worker} got two names");
        }
    }
    assert_eq!(got.get("s0").map(String::as_str), Some(lm), "{got:?}");
    assert_eq!(got.get("s1").map(String::as_str), Some(ol), "{got:?}");
    let models: Value = c
        .get(format!("{}/models", lab.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alias = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "mistral-7b")
        .expect("the alias is listed");
    assert_eq!(alias["workers"], json!(["s0", "s1"]));
}

#[tokio::test]
async fn errors_come_back_in_each_apis_own_shape() {
    let lab = Lab::start(
        vec![studio(StudioKind::Ollama, "llama3:8b", 1)],
        test_settings(),
    )
    .await;
    let c = client();
    let post = |path: &str, body: Value| {
        let c = c.clone();
        let url = format!("{}{path}", lab.root());
        async move {
            let r = c.post(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (s, v) = post(
        "/v1/chat/completions",
        json!({"model": "nope", "messages": []}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (404, json!("model_not_found"))
    );
    let (s, v) = post(
        "/v1/messages",
        json!({"model": "nope", "max_tokens": 4, "messages": []}),
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "not_found_error", "{v}");
    let (s, v) = post("/api/chat", json!({"model": "nope", "messages": []})).await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");
    let (s, v) = post("/api/chat", json!({"messages": []})).await;
    assert_eq!(s, 404);
    assert!(v["error"].is_string(), "{v}");
}

fn cached(slots: usize, seed: u64) -> SimConfig {
    SimConfig {
        slots,
        ttft: Duration::from_millis(10),
        tokens_per_second: 400.0,
        // A Mac-like prompt rate, scaled down so the test is short.
        prefill_tps: Some(20_000.0),
        seed,
        ..SimConfig::default()
    }
}

/// A conversation: its turns so far; the next turn's body (`words` long,
/// asking for `answer` tokens).
fn turn_body(history: &[Value], n: usize, words: usize, answer: u32) -> Value {
    let mut messages = history.to_vec();
    messages.push(json!({"role": "user",
        "content": format!("turn {n}: {}", "a long question with context ".repeat(words))}));
    json!({"model": baton::sim::DEFAULT_MODEL, "max_tokens": answer, "messages": messages})
}

async fn converse(
    c: &reqwest::Client,
    url: &str,
    history: &mut Vec<Value>,
    n: usize,
) -> (String, Value) {
    converse_with(c, url, history, n, 200, 8).await
}

async fn converse_with(
    c: &reqwest::Client,
    url: &str,
    history: &mut Vec<Value>,
    n: usize,
    words: usize,
    answer: u32,
) -> (String, Value) {
    let body = turn_body(history, n, words, answer);
    let r = c
        .post(format!("{url}/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let worker = r.headers()["x-baton-worker"].to_str().unwrap().to_string();
    let v: Value = r.json().await.unwrap();
    *history = body["messages"].as_array().unwrap().clone();
    history.push(json!({"role": "assistant", "content": v["choices"][0]["message"]["content"]}));
    (worker, v)
}

fn affinity_settings() -> BalancerSettings {
    BalancerSettings {
        strategy: Strategy::CacheAffinity,
        ..test_settings()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_return_to_the_studio_holding_their_cache() {
    let lab = Lab::start(
        vec![cached(4, 1), cached(4, 2), cached(4, 3)],
        affinity_settings(),
    )
    .await;
    let c = client();
    let mut tasks = Vec::new();
    for conv in 0..6 {
        let (c, url) = (c.clone(), lab.url());
        tasks.push(tokio::spawn(async move {
            let mut history =
                vec![json!({"role": "system", "content": format!("conversation {conv}")})];
            let mut workers = Vec::new();
            for n in 0..5 {
                workers.push(converse(&c, &url, &mut history, n).await.0);
            }
            workers
        }));
    }
    for t in tasks {
        let workers = t.await.unwrap();
        assert!(
            workers.iter().all(|w| *w == workers[0]),
            "a conversation moved although its studio was free: {workers:?}"
        );
    }
    let cached_tokens: u64 = lab
        .sims
        .iter()
        .map(|s| s.stats().cached_prompt_tokens)
        .sum();
    assert!(cached_tokens > 0, "the studios' caches were used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_moves_when_its_studio_is_ejected_or_full() {
    let lab = Lab::start(vec![cached(1, 1), cached(1, 2)], affinity_settings()).await;
    let c = client();
    // Turns long enough to follow (a few hundred tokens), short enough that
    // waiting a second for their studio costs more than their prefill.
    let mut history = vec![json!({"role": "system", "content": "moving"})];
    let (first, _) = converse_with(&c, &lab.url(), &mut history, 0, 40, 4).await;
    let (again, _) = converse_with(&c, &lab.url(), &mut history, 1, 40, 4).await;
    assert_eq!(first, again, "the second turn returns to its studio");
    // Full: a long answer of the same conversation holds its only slot.
    let busy = {
        let (c, url, mut h) = (c.clone(), lab.url(), history.clone());
        tokio::spawn(async move { converse_with(&c, &url, &mut h, 9, 40, 400).await.0 })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t0 = std::time::Instant::now();
    let (moved, _) = converse_with(&c, &lab.url(), &mut history, 2, 40, 4).await;
    let took = t0.elapsed();
    assert_eq!(busy.await.unwrap(), first, "the long turn went home");
    assert_ne!(moved, first, "a full studio is not waited for");
    assert!(took < Duration::from_millis(600), "{took:?}");
    // Ejected: the conversation goes on elsewhere without an error.
    let cur = if moved == "s0" { 0 } else { 1 };
    lab.sims[cur].set_listening(false);
    for n in 3..6 {
        let (w, _) = converse_with(&c, &lab.url(), &mut history, n, 40, 4).await;
        assert_ne!(w, moved, "turn {n} went to the dead studio");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_checks_each_api_the_pool_is_asked_to_serve() {
    use baton::config::ClientApi;
    use baton::preflight::{self, Status, Thresholds};
    let model = baton::sim::DEFAULT_MODEL;
    let a = start_sim(studio(StudioKind::LlamaCpp, model, 1)).await;
    let b = start_sim(studio(StudioKind::Vllm, model, 2)).await;
    let cfg = baton::config::Config {
        workers: vec![worker_for("llama", &a), worker_for("vllm", &b)],
        balancer: BalancerSettings {
            apis: vec![ClientApi::Openai, ClientApi::Anthropic, ClientApi::Ollama],
            ..Default::default()
        },
        ..Default::default()
    };
    let r = preflight::run(&cfg, &Thresholds::default()).await;
    let check = |w: &str, name: &str| {
        r.hosts
            .iter()
            .find(|h| h.worker == w)
            .unwrap()
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{w} has no {name} check"))
            .clone()
    };
    assert_eq!(check("llama", "api_anthropic").status, Status::Pass);
    let no = check("vllm", "api_anthropic");
    assert_eq!(no.status, Status::Warn, "{no:?}");
    assert!(no.remedy.unwrap().contains("studios that have it"));
    assert_eq!(check("vllm", "api_ollama").status, Status::Warn);
}
