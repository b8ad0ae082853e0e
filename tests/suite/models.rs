//! Models across the pool (issue 23): fallbacks, what each studio has
//! loaded, routing that knows what is warm, load and unload through the
//! studios' own APIs. Simulated studios on loopback, real HTTP throughout.

use crate::support;

use std::time::{Duration, Instant};

use baton::config::{Aliases, Fallbacks};
use serde_json::{Value, json};
use support::*;

fn ask(model: &str) -> Value {
    json!({"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]})
}

fn fallbacks(pairs: &[(&str, &[&str])]) -> Fallbacks {
    Fallbacks {
        to: pairs
            .iter()
            .map(|(m, to)| (m.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect(),
        pinned: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_no_studio_can_serve_goes_to_its_first_fallback_that_can() {
    let lab = Lab::builder()
        .studios([
            sim_cfg(2, 1, 1000.0).with_models(&["qwen3-32b"]),
            sim_cfg(2, 1, 1000.0).with_models(&["qwen3-14b"]),
        ])
        .fallbacks(fallbacks(&[
            ("qwen3-32b", &["qwen3-8b", "qwen3-14b"]),
            ("qwen3-72b", &["qwen3-14b"]),
        ]))
        .start()
        .await;
    let c = client();
    // Served where it is: no fallback.
    let r = lab.chat(&c, &ask("qwen3-32b")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-baton-worker"], "s0");
    assert_eq!(r.headers()["x-baton-model"], "qwen3-32b");
    assert_eq!(lab.balancer.stats().fallbacks, 0);

    // Listed nowhere: the first fallback that a studio serves (qwen3-8b is
    // served by none), and the studio is asked for that model by name.
    let r = lab.chat(&c, &ask("qwen3-72b")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-baton-worker"], "s1");
    assert_eq!(r.headers()["x-baton-model"], "qwen3-14b");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["model"], "qwen3-14b");
    assert_eq!(lab.balancer.stats().fallbacks, 1);

    // Its studio down: the fallback, past the one nobody serves.
    lab.sims[0].set_listening(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.worker("s0").state == baton::balancer::State::Ready {
        assert!(Instant::now() < deadline, "s0 never left ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = lab.chat(&c, &ask("qwen3-32b")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-baton-model"], "qwen3-14b");
    assert_eq!(lab.balancer.stats().fallbacks, 2);
    let stats: Value = c
        .get(format!("{}/stats", lab.root()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["fallbacks"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_or_an_alias_that_refuses_stand_ins_gets_an_error_saying_why() {
    let mut aliases = Aliases::default();
    aliases
        .0
        .insert("exact".into(), vec!["qwen3-32b@q8_0".into()]);
    let mut fb = fallbacks(&[("qwen3-72b", &["qwen3-14b"])]);
    fb.pinned.insert("exact".into());
    let lab = Lab::builder()
        .studios([sim_cfg(2, 1, 1000.0).with_models(&["qwen3-14b"])])
        .aliases(aliases)
        .fallbacks(fb)
        .start()
        .await;
    let c = client();
    let r = c
        .post(format!("{}/chat/completions", lab.url()))
        .header("x-baton-no-fallback", "1")
        .json(&ask("qwen3-72b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("x-baton-no-fallback"), "{msg}");
    assert!(msg.contains("qwen3-72b"), "{msg}");

    let r = lab.chat(&c, &ask("exact")).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("pinned"), "{msg}");
    assert_eq!(lab.balancer.stats().fallbacks, 0);

    // Without the header, the same request falls back.
    let r = lab.chat(&c, &ask("qwen3-72b")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-baton-model"], "qwen3-14b");
    assert_eq!(lab.balancer.stats().fallbacks, 1);
}
