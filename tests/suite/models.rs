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

/// A studio serving `models`, with those of `loaded` in memory and each
/// load taking `load_ms`.
fn studio(
    slots: usize,
    ttft_ms: u64,
    models: &[&str],
    loaded: &[&str],
    load_ms: u64,
) -> baton::sim::SimConfig {
    baton::sim::SimConfig {
        loaded: Some(loaded.iter().map(|m| m.to_string()).collect()),
        model_load_ms: models.iter().map(|m| (m.to_string(), load_ms)).collect(),
        ..sim_cfg(slots, ttft_ms, 5000.0).with_models(models)
    }
}

fn loads(sim: &baton::sim::SimHandle, model: &str) -> u64 {
    sim.models().iter().find(|m| m.name == model).unwrap().loads
}

/// `n` requests for `model` at once; the studio that served each.
async fn burst(lab: &Lab, model: &str, n: usize) -> Vec<String> {
    let c = client();
    let asks = (0..n).map(|_| {
        let c = c.clone();
        async move {
            let r = lab.chat(&c, &ask(model)).await;
            assert_eq!(r.status(), 200);
            r.headers()["x-baton-worker"].to_str().unwrap().to_string()
        }
    });
    futures_util::future::join_all(asks).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_warm_studios_capacity_no_request_goes_where_the_model_would_load() {
    let lab = Lab::builder()
        .studios([
            studio(4, 20, &["x", "y"], &["x"], 300),
            studio(4, 20, &["x", "y"], &["y"], 300),
        ])
        .start()
        .await;
    // The inventories were read at first contact.
    let s0 = lab.worker("s0");
    let x0 = s0.inventory.iter().find(|m| m.name == "x").unwrap();
    assert_eq!(x0.state, baton::balancer::Residency::Loaded);
    let x1 = lab
        .worker("s1")
        .inventory
        .into_iter()
        .find(|m| m.name == "x")
        .unwrap();
    assert_eq!(x1.state, baton::balancer::Residency::Available);
    for _ in 0..3 {
        let served = burst(&lab, "x", 4).await;
        assert!(served.iter().all(|s| s == "s0"), "{served:?}");
        let served = burst(&lab, "y", 4).await;
        assert!(served.iter().all(|s| s == "s1"), "{served:?}");
    }
    assert_eq!(loads(&lab.sims[1], "x"), 0, "x was never loaded on s1");
    assert_eq!(loads(&lab.sims[0], "y"), 0, "y was never loaded on s0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_studio_is_used_only_once_the_wait_for_the_warm_one_exceeds_its_load_time() {
    // s0 has x loaded, one slot, answers in about 100 ms; s1 has x on disk
    // and loads it in 250 ms.
    let lab = Lab::builder()
        .studios([
            studio(1, 100, &["x"], &["x"], 0),
            studio(4, 20, &["x"], &[], 250),
        ])
        .start()
        .await;
    // Baton learns s1's load time from a load it asks for, then unloads.
    let models = lab.balancer.models();
    let took = models.load("s1", "x").await.unwrap();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    models.unload("s1", "x").await.unwrap();
    let learned = lab.worker("s1").inventory[0].load_ms.unwrap();
    assert!((250.0..2000.0).contains(&learned), "{learned}");
    // s0's answer time, learned one request at a time.
    for _ in 0..4 {
        assert_eq!(burst(&lab, "x", 1).await, ["s0"]);
    }
    // Two at once: the second waits about 100 ms at s0, less than a load.
    for _ in 0..3 {
        assert_eq!(burst(&lab, "x", 2).await, ["s0", "s0"]);
    }
    assert_eq!(loads(&lab.sims[1], "x"), 1, "only the load Baton asked for");
    // Eight at once: the later ones would wait 300 ms and more at s0, so
    // s1 loads x, once, and serves them.
    let served = burst(&lab, "x", 8).await;
    assert!(served.iter().any(|s| s == "s1"), "{served:?}");
    assert!(served.iter().any(|s| s == "s0"), "{served:?}");
    assert_eq!(
        loads(&lab.sims[1], "x"),
        2,
        "one more load, not one per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_loaded_nowhere_is_loaded_on_one_studio_not_on_every_studio_at_once() {
    let lab = Lab::builder()
        .studios((0..3).map(|_| studio(4, 20, &["x", "y"], &["y"], 300)))
        .start()
        .await;
    let served = burst(&lab, "x", 6).await;
    let first = served[0].clone();
    assert!(served.iter().all(|s| *s == first), "{served:?}");
    let loaded: Vec<u64> = lab.sims.iter().map(|s| loads(s, "x")).collect();
    assert_eq!(loaded.iter().sum::<u64>(), 1, "{loaded:?}");
    // The first answer taught the load time, and the model shows loaded.
    let w = lab.worker(&first);
    let x = w.inventory.iter().find(|m| m.name == "x").unwrap();
    assert_eq!(x.state, baton::balancer::Residency::Loaded);
    assert!(x.load_ms.unwrap() >= 250.0, "{x:?}");
}
