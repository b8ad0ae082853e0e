//! Discovery on loopback: simulated studios of every kind on 127.0.1.x.

use crate::support;

use std::net::Ipv4Addr;

use baton::config::Config;
use baton::discover::{self, Options};
use baton::sim::{self, SimConfig};
use baton::studio::StudioKind;
use support::{BatonCmd, SimCfgExt};

async fn studio(ip: [u8; 4], port: u16, kind: StudioKind, models: &[&str]) -> sim::SimHandle {
    let cfg = SimConfig {
        slots: 3,
        ..SimConfig::default()
    };
    support::start_sim_at((ip, port), cfg.with_kind(kind).with_models(models)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_every_kind_with_models_and_port_and_nothing_else() {
    let _studios = [
        studio(
            [127, 0, 1, 2],
            1234,
            StudioKind::LmStudio,
            &["mistral-7b-instruct-v0.2", "qwen2.5-7b"],
        )
        .await,
        studio(
            [127, 0, 1, 3],
            11434,
            StudioKind::Ollama,
            &["llama3:latest"],
        )
        .await,
        studio([127, 0, 1, 4], 8080, StudioKind::LlamaCpp, &["gemma-2b"]).await,
        studio(
            [127, 0, 1, 5],
            8000,
            StudioKind::Vllm,
            &["meta-llama/Llama-3-8B"],
        )
        .await,
        studio([127, 0, 1, 6], 52415, StudioKind::Exo, &["llama-3.2-3b"]).await,
        studio(
            [127, 0, 1, 7],
            8080,
            StudioKind::Openai,
            &["mlx-community/phi-3"],
        )
        .await,
    ];
    // Something else answering HTTP on a probed port must not be listed.
    let other = tokio::net::TcpListener::bind("127.0.1.8:8000")
        .await
        .unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "a web page" }));
    tokio::spawn(async move { axum::serve(other, app).await.unwrap() });
    // And a plain TCP service that speaks no HTTP.
    let raw = tokio::net::TcpListener::bind("127.0.1.9:1234")
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let _ = raw.accept().await;
        }
    });

    let opts = Options {
        cidrs: vec!["127.0.1.0/27".parse().unwrap()],
        mdns: false,
        ..Options::default()
    };
    let progress_calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let p = progress_calls.clone();
    let d = discover::run(
        &opts,
        Some(std::sync::Arc::new(move |_, _, _| {
            p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })),
    )
    .await
    .unwrap();
    assert_eq!(d.addresses, 30);
    assert_eq!(d.probes, 150);
    assert_eq!(
        progress_calls.load(std::sync::atomic::Ordering::Relaxed),
        150
    );
    let got: Vec<(Ipv4Addr, u16, StudioKind, Vec<String>)> = d
        .found
        .iter()
        .map(|f| (f.host, f.port, f.kind, f.models.clone()))
        .collect();
    let want = vec![
        (
            Ipv4Addr::new(127, 0, 1, 2),
            1234,
            StudioKind::LmStudio,
            vec!["mistral-7b-instruct-v0.2".to_string(), "qwen2.5-7b".into()],
        ),
        (
            Ipv4Addr::new(127, 0, 1, 3),
            11434,
            StudioKind::Ollama,
            vec!["llama3:latest".into()],
        ),
        (
            Ipv4Addr::new(127, 0, 1, 4),
            8080,
            StudioKind::LlamaCpp,
            vec!["gemma-2b".into()],
        ),
        (
            Ipv4Addr::new(127, 0, 1, 5),
            8000,
            StudioKind::Vllm,
            vec!["meta-llama/Llama-3-8B".into()],
        ),
        (
            Ipv4Addr::new(127, 0, 1, 6),
            52415,
            StudioKind::Exo,
            vec!["llama-3.2-3b".into()],
        ),
        (
            Ipv4Addr::new(127, 0, 1, 7),
            8080,
            StudioKind::Openai,
            vec!["mlx-community/phi-3".into()],
        ),
    ];
    assert_eq!(got, want);
    assert_eq!(
        d.open_ports, 8,
        "six studios, a web page and a raw TCP port"
    );
    let lm = &d.found[0];
    assert_eq!(lm.loaded.len(), 2, "LM Studio reports what is loaded");
    assert_eq!(d.found[2].slots, Some(3), "llama.cpp reports its slots");

    // --write: new file, then a merge that keeps what is there.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("workers.json");
    let added = discover::merge_into(&file, &d.found).unwrap();
    assert_eq!(added.len(), 6);
    let cfg = Config::load(&file).unwrap();
    assert_eq!(cfg.workers.len(), 6);
    assert_eq!(cfg.workers[0].kind, StudioKind::LmStudio);
    assert_eq!(cfg.workers[0].port, 1234);
    assert_eq!(cfg.workers[0].model, "mistral-7b-instruct-v0.2");
    assert_eq!(
        cfg.workers[2].max_concurrent_requests,
        baton::config::Slots::Max(3)
    );
    // Running it again adds nothing; an existing hand-made entry survives.
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    text["workers"][0]["id"] = "my-studio".into();
    text["balancer"] = serde_json::json!({"queue_limit": 9});
    std::fs::write(&file, text.to_string()).unwrap();
    assert!(discover::merge_into(&file, &d.found).unwrap().is_empty());
    let cfg = Config::load(&file).unwrap();
    assert_eq!(cfg.workers[0].id, "my-studio");
    assert_eq!(cfg.balancer.queue_limit, 9);
    // A broken file is reported, never overwritten.
    std::fs::write(&file, "{ nope").unwrap();
    assert!(discover::merge_into(&file, &d.found).is_err());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "{ nope");
}

#[tokio::test]
async fn unique_ids_when_one_host_serves_twice() {
    let found = vec![
        discover::Found {
            host: Ipv4Addr::new(10, 0, 0, 5),
            port: 1234,
            kind: StudioKind::LmStudio,
            models: vec!["m".into()],
            loaded: vec![],
            rtt_ms: 1.0,
            slots: None,
            via: "scan".into(),
        },
        discover::Found {
            host: Ipv4Addr::new(10, 0, 0, 5),
            port: 1235,
            kind: StudioKind::LmStudio,
            models: vec!["m".into()],
            loaded: vec![],
            rtt_ms: 1.0,
            slots: None,
            via: "scan".into(),
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w.json");
    let added = discover::merge_into(&file, &found).unwrap();
    assert_eq!(added, ["lm-studio-10-0-0-5", "lm-studio-10-0-0-5-2"]);
    Config::load(&file).unwrap();
}

#[test]
fn cli_discover_json_and_refusals() {
    let out = BatonCmd::new(["discover", "--cidr", "10.0.0.0/16", "--no-mdns"]).output();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--force") && err.contains("/22"), "{err}");
    let out = BatonCmd::new([
        "discover",
        "--cidr",
        "127.0.1.96/30",
        "--no-mdns",
        "--json",
        "--timeout-ms",
        "200",
    ])
    .output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["addresses"], 2);
    assert_eq!(v["found"], serde_json::json!([]));
}
