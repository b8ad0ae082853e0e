//! `baton bench` diagnoses what it measured: each scripted pathology, on
//! loopback with simulated studios or in the network lab, gives its own
//! finding naming the right studio and no other finding above `info`; a
//! healthy pool gives none. Each scenario runs three times (other kinds,
//! seeds and orders), the three at once: they share no studio, and the
//! studios' timing is their own clock, not the CPU.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton::bench::diagnose::{Cause, Severity, render};
use baton::bench::report::BenchResult;
use baton::bench::run::{self, Gate, Plan};
use baton::config::Config;
use baton::sim::{self, SimConfig, SimHandle};
use baton::studio::StudioKind;
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::netlab::{self, DelayRelay, Host};
use support::{BatonCmd, SimCfgExt, start_sim, start_sim_at};
use tokio_util::sync::CancellationToken;

/// A quick studio: 80 ms to first token, 200 tokens/s, so a 16-token
/// answer takes about 155 ms.
fn studio(kind: StudioKind, slots: usize, seed: u64) -> SimConfig {
    support::sim_cfg(slots, 80, 200.0)
        .with_kind(kind)
        .with_seed(seed)
}

/// One workers-file entry, as the user writes it.
fn entry(id: &str, host: &str, port: u16, kind: StudioKind, slots: u32) -> Value {
    json!({"id": id, "host": host, "port": port, "type": kind.as_str(),
           "model": sim::DEFAULT_MODEL, "max_concurrent_requests": slots})
}

fn entry_for(id: &str, s: &SimHandle, slots: u32) -> Value {
    entry(
        id,
        &s.addr().ip().to_string(),
        s.addr().port(),
        s.config().kind,
        slots,
    )
}

/// The workers file, through the same loader as the user's.
fn config(entries: Vec<Value>) -> Config {
    let text = json!({"workers": entries, "balancer": {"probe_interval_ms": 200}}).to_string();
    Config::parse(&text, Path::new("workers.json")).unwrap()
}

/// 16-token answers, 1.5 s per level, each studio probed alone first.
fn plan(cfg: Config, levels: Vec<usize>, gate: Gate) -> Plan {
    Plan {
        max_tokens: 16,
        gate,
        probe_studios: true,
        ..support::plan(cfg, &levels, 1.5)
    }
}

async fn bench(p: Plan) -> BenchResult {
    run::run(&p, Arc::new(support::Quiet), CancellationToken::new())
        .await
        .unwrap()
}

/// The run's diagnosis names `cause` (about `worker`), and nothing else
/// rises above `info`.
fn expect(name: &str, r: &BenchResult, cause: Option<Cause>, worker: Option<&str>) {
    let d = r.diagnosis.as_ref().expect("every run is diagnosed");
    let text = render(d);
    let cpu: Vec<String> = r
        .concurrency_benchmark
        .iter()
        .map(|l| {
            format!(
                "{}: {:.0}% (Baton {:.0}%)",
                l.concurrency, l.host_usage.cpu_avg_percent, l.host_usage.process_cpu_avg_percent
            )
        })
        .collect();
    let probe_cpu = r
        .evidence
        .as_ref()
        .and_then(|e| e.probe_host.as_ref())
        .map(|h| h.process_cpu_avg_percent)
        .unwrap_or(0.0);
    eprintln!(
        "--- {name} (CPU: Baton during probes {probe_cpu:.0}%; host (Baton) per level {}){text}",
        cpu.join(", ")
    );
    let above: Vec<_> = d
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .filter(|f| Some(f.cause) != cause || f.worker.as_deref() != worker)
        .collect();
    assert!(above.is_empty(), "{name}: unexpected findings:{text}");
    match cause {
        None => {
            assert!(d.findings.is_empty(), "{name}: a healthy pool:{text}");
            assert!(d.healthy && d.verdict == "no problem found", "{name}");
        }
        Some(c) => {
            let mine: Vec<_> = d
                .findings
                .iter()
                .filter(|f| f.cause == c && f.worker.as_deref() == worker)
                .collect();
            assert_eq!(mine.len(), 1, "{name}: expected {c:?} on {worker:?}:{text}");
            assert!(!mine[0].remedy.is_empty());
        }
    }
    // The JSON carries the same.
    let v = serde_json::to_value(r).unwrap();
    assert!(v["diagnosis"]["findings"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_pool_has_no_problem() {
    let t0 = Instant::now();
    let runs = [
        vec![StudioKind::LmStudio, StudioKind::LmStudio],
        vec![
            StudioKind::LlamaCpp,
            StudioKind::LlamaCpp,
            StudioKind::LlamaCpp,
        ],
        vec![StudioKind::Ollama, StudioKind::Vllm, StudioKind::LmStudio],
    ];
    let results = join_all(runs.iter().enumerate().map(|(i, kinds)| async move {
        let mut sims = Vec::new();
        for (j, k) in kinds.iter().enumerate() {
            sims.push(start_sim(studio(*k, 2, (i * 10 + j) as u64 + 1)).await);
        }
        let entries = sims
            .iter()
            .enumerate()
            .map(|(j, s)| entry_for(&format!("s{j}"), s, 2))
            .collect();
        let r = bench(plan(
            config(entries),
            vec![1, 2 * kinds.len()],
            Gate::Require,
        ))
        .await;
        (sims, r)
    }))
    .await;
    for (i, (_, r)) in results.iter().enumerate() {
        expect(&format!("healthy #{i}"), r, None, None);
        let d = r.diagnosis.as_ref().unwrap();
        // About 1; loose, since the probes and the sweep run at different
        // moments of a machine shared with other work.
        let e = d.scaling_efficiency.unwrap();
        assert!((0.7..=1.35).contains(&e), "efficiency {e}");
        let ev = r.evidence.as_ref().unwrap();
        // Each kind's own timings were read where it reports them.
        for p in &ev.probes {
            assert!(p.error.is_none(), "{p:?}");
            if p.kind != "openai" {
                assert!(p.timings.is_some(), "{} reports its timings: {p:?}", p.kind);
            }
        }
    }
    eprintln!("healthy: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_studio_is_dead() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    // (gate, position of the dead studio, its kind)
    let runs = [
        (Gate::ExcludeUnhealthy, 2, StudioKind::LmStudio),
        (Gate::Skip, 0, StudioKind::LlamaCpp),
        (Gate::ExcludeUnhealthy, 1, StudioKind::Ollama),
    ];
    let results = join_all(
        runs.iter()
            .enumerate()
            .map(|(i, (gate, at, kind))| async move {
                let h = Host::new().unwrap();
                let dark = start_sim_at(h.listen(1234), studio(*kind, 2, i as u64)).await;
                h.black_hole().unwrap();
                let a = start_sim(studio(*kind, 2, 10 + i as u64)).await;
                let b = start_sim(studio(*kind, 2, 20 + i as u64)).await;
                let mut entries = vec![entry_for("a", &a, 2), entry_for("b", &b, 2)];
                entries.insert(*at, entry("dark", &h.ip.to_string(), 1234, *kind, 2));
                let r = bench(plan(config(entries), vec![1, 4], *gate)).await;
                (h, dark, a, b, r)
            }),
    )
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(
            &format!("black hole #{i}"),
            r,
            Some(Cause::DeadStudio),
            Some("dark"),
        );
        let d = r.diagnosis.as_ref().unwrap();
        assert!(
            d.waterfall
                .iter()
                .any(|w| w.worker.as_deref() == Some("dark")),
            "{:?}",
            d.waterfall
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_behind_40_ms_of_delay_is_network_bound() {
    if !support::skip::can_run(netlab::unavailable()) {
        return;
    }
    let runs = [
        (StudioKind::LmStudio, false),
        (StudioKind::LlamaCpp, true),
        (StudioKind::Ollama, false),
    ];
    let results = join_all(
        runs.iter()
            .enumerate()
            .map(|(i, (kind, far_first))| async move {
                let h = Host::new().unwrap();
                let behind = start_sim(studio(*kind, 2, i as u64 + 1)).await;
                let relay = DelayRelay::start(&h, 1234, behind.addr());
                relay.set_delay(40);
                let near = start_sim(studio(*kind, 2, i as u64 + 7)).await;
                let far = entry("far", &h.ip.to_string(), 1234, *kind, 2);
                let mut entries = vec![entry_for("near", &near, 2)];
                if *far_first {
                    entries.insert(0, far);
                } else {
                    entries.push(far);
                }
                let r = bench(plan(config(entries), vec![1, 4], Gate::Require)).await;
                (h, relay, behind, near, r)
            }),
    )
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(
            &format!("delay #{i}"),
            r,
            Some(Cause::NetworkBound),
            Some("far"),
        );
        let f = r
            .diagnosis
            .as_ref()
            .unwrap()
            .findings
            .iter()
            .find(|f| f.cause == Cause::NetworkBound)
            .unwrap();
        // 40 ms each way.
        let outside = f.figures["outside_ms"];
        assert!((60.0..=140.0).contains(&outside), "{outside} ms outside");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_slot_studio_declared_with_four_is_serialized() {
    let runs = [
        (StudioKind::LmStudio, 0),
        (StudioKind::LlamaCpp, 1),
        (StudioKind::Ollama, 0),
    ];
    let results = join_all(runs.iter().enumerate().map(|(i, (kind, at))| async move {
        let one = start_sim(studio(*kind, 1, i as u64 + 1)).await;
        let four = start_sim(studio(*kind, 4, i as u64 + 5)).await;
        let mut entries = vec![entry_for("parallel", &four, 4)];
        entries.insert(*at, entry_for("serial", &one, 4));
        let r = bench(plan(config(entries), vec![1, 8], Gate::Require)).await;
        (one, four, r)
    }))
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(
            &format!("serialized #{i}"),
            r,
            Some(Cause::Serialized),
            Some("serial"),
        );
        let f = r
            .diagnosis
            .as_ref()
            .unwrap()
            .findings
            .iter()
            .find(|f| f.cause == Cause::Serialized)
            .unwrap();
        assert_eq!(f.figures["effective_parallel"], 1.0, "{f:?}");
        // The results JSON says what Baton learned: "declared 4, runs 1-2".
        let ev = r.evidence.as_ref().expect("evidence");
        let last = ev.levels.last().expect("levels");
        let serial = &last.balancer["serial"];
        assert_eq!(serial.slots_declared, Some(4), "{serial:?}");
        assert!((1..4).contains(&serial.slots), "{serial:?}");
        assert_eq!(last.balancer["parallel"].slots, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_driven_far_past_its_slots_is_saturated() {
    let runs = [StudioKind::LmStudio, StudioKind::LlamaCpp, StudioKind::Vllm];
    let results = join_all(runs.iter().enumerate().map(|(i, kind)| async move {
        let a = start_sim(studio(*kind, 2, i as u64 + 1)).await;
        let b = start_sim(studio(*kind, 2, i as u64 + 9)).await;
        let entries = vec![entry_for("a", &a, 2), entry_for("b", &b, 2)];
        let r = bench(plan(config(entries), vec![2, 4, 8, 16], Gate::Require)).await;
        (a, b, r)
    }))
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(&format!("saturated #{i}"), r, Some(Cause::Saturated), None);
        let d = r.diagnosis.as_ref().unwrap();
        let f = d
            .findings
            .iter()
            .find(|f| f.cause == Cause::Saturated)
            .unwrap();
        // The pool's 4 slots; 8 when the machine running the test is so
        // busy that concurrency 4 falls short (the remedy then says 8).
        let best = f.figures["best_concurrency"];
        assert!(best == 4.0 || best == 8.0, "{best}");
        assert_eq!(f.severity, Severity::Warning);
        // The time went to Baton's queue.
        let split = d.time_split.as_ref().unwrap();
        assert_eq!(split.concurrency as f64, best);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_model_load_is_a_cold_model() {
    // (gate: preflight's first request pays the load, or the probe's; kind)
    let runs = [
        (Gate::Require, StudioKind::LmStudio),
        (Gate::Skip, StudioKind::LmStudio),
        (Gate::Skip, StudioKind::Ollama),
    ];
    let results = join_all(runs.iter().enumerate().map(|(i, (gate, kind))| async move {
        let cold = start_sim(SimConfig {
            load_ms: 5000,
            ..studio(*kind, 2, i as u64 + 1)
        })
        .await;
        let warm = start_sim(studio(*kind, 2, i as u64 + 3)).await;
        let entries = vec![entry_for("warm", &warm, 2), entry_for("cold", &cold, 2)];
        let r = bench(plan(config(entries), vec![1, 4], *gate)).await;
        (cold, warm, r)
    }))
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(
            &format!("cold #{i}"),
            r,
            Some(Cause::ColdModel),
            Some("cold"),
        );
        let f = r
            .diagnosis
            .as_ref()
            .unwrap()
            .findings
            .iter()
            .find(|f| f.cause == Cause::ColdModel)
            .unwrap();
        let load = f.figures["load_ms"];
        assert!((4500.0..=6000.0).contains(&load), "load {load} ms");
        // The sweep ran warm: no level paid it.
        for l in &r.concurrency_benchmark {
            assert!(l.ttft_p95 < 1.0, "{} s", l.ttft_p95);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_four_times_slower_is_slow() {
    let runs = [
        (StudioKind::LmStudio, 2),
        (StudioKind::LlamaCpp, 0),
        (StudioKind::Ollama, 1),
    ];
    let results = join_all(runs.iter().enumerate().map(|(i, (kind, at))| async move {
        let slow = start_sim(SimConfig {
            ttft: Duration::from_millis(320),
            tokens_per_second: 50.0,
            ..studio(*kind, 2, i as u64 + 1)
        })
        .await;
        let a = start_sim(studio(*kind, 2, i as u64 + 2)).await;
        let b = start_sim(studio(*kind, 2, i as u64 + 3)).await;
        let mut entries = vec![entry_for("a", &a, 2), entry_for("b", &b, 2)];
        entries.insert(*at, entry_for("slow", &slow, 2));
        let r = bench(plan(config(entries), vec![1, 6], Gate::Require)).await;
        (slow, a, b, r)
    }))
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(
            &format!("slow #{i}"),
            r,
            Some(Cause::SlowStudio),
            Some("slow"),
        );
        let f = r
            .diagnosis
            .as_ref()
            .unwrap()
            .findings
            .iter()
            .find(|f| f.cause == Cause::SlowStudio)
            .unwrap();
        let x = f.figures["slowdown"];
        assert!((3.0..=5.0).contains(&x), "{x}x slower");
        assert!(f.figures.contains_key("tokens_per_second"), "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_limited_on_purpose_is_client_bound() {
    // The client may keep only this many requests out (as an HTTP library
    // capping its connections), while asked for 8.
    let runs = [
        (StudioKind::LmStudio, 2),
        (StudioKind::LlamaCpp, 3),
        (StudioKind::Ollama, 2),
    ];
    let results = join_all(runs.iter().enumerate().map(|(i, (kind, cap))| async move {
        let a = start_sim(studio(*kind, 4, i as u64 + 1)).await;
        let b = start_sim(studio(*kind, 4, i as u64 + 2)).await;
        let entries = vec![entry_for("a", &a, 4), entry_for("b", &b, 4)];
        let mut p = plan(config(entries), vec![1, 8], Gate::Require);
        p.max_connections = Some(*cap);
        let r = bench(p).await;
        (a, b, r)
    }))
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(&format!("client #{i}"), r, Some(Cause::ClientBound), None);
        let f = r
            .diagnosis
            .as_ref()
            .unwrap()
            .findings
            .iter()
            .find(|f| f.cause == Cause::ClientBound)
            .unwrap();
        assert_eq!(f.figures["concurrency"], 8.0);
        let cap = runs[i].1 as f64;
        assert!((f.figures["in_flight"] - cap).abs() < 0.5, "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_failing_one_answer_in_five_is_flaky() {
    let runs = [
        (StudioKind::LmStudio, 0),
        (StudioKind::LlamaCpp, 2),
        (StudioKind::Ollama, 1),
    ];
    let results = join_all(runs.iter().enumerate().map(|(i, (kind, at))| async move {
        let mut cfg = studio(*kind, 2, i as u64 + 11);
        cfg.faults.error_rate = 0.2;
        let bad = start_sim(cfg).await;
        let a = start_sim(studio(*kind, 2, i as u64 + 1)).await;
        let b = start_sim(studio(*kind, 2, i as u64 + 2)).await;
        let mut entries = vec![entry_for("a", &a, 2), entry_for("b", &b, 2)];
        entries.insert(*at, entry_for("flaky", &bad, 2));
        let r = bench(plan(config(entries), vec![1, 6], Gate::Require)).await;
        (bad, a, b, r)
    }))
    .await;
    for (i, (.., r)) in results.iter().enumerate() {
        expect(
            &format!("flaky #{i}"),
            r,
            Some(Cause::FlakyStudio),
            Some("flaky"),
        );
        // Baton retried the failed attempts elsewhere: the client lost nothing.
        for l in &r.concurrency_benchmark {
            assert_eq!(l.failed_requests, 0, "{:?}", l.errors);
        }
    }
}

/// The simulated studio's serial mode: `--slots 1` with
/// `max_concurrent_requests: 4` in the workers file accepts four requests
/// and runs them one after another inside the studio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slot_declared_as_four_queues_inside_the_studio() {
    let s = start_sim(studio(StudioKind::LmStudio, 1, 1)).await;
    let c = support::client();
    let url = format!("{}/v1/chat/completions", s.url());
    let t0 = Instant::now();
    let answers =
        join_all((0..4).map(|_| c.post(&url).json(&support::chat_body(16, false)).send())).await;
    let took = t0.elapsed();
    assert!(answers.iter().all(|a| a.as_ref().unwrap().status() == 200));
    let st = s.stats();
    assert_eq!(st.peak_in_flight, 4, "all four accepted at once");
    assert_eq!(st.peak_concurrency, 1, "one generation at a time");
    assert!(
        took >= Duration::from_millis(4 * 150),
        "{took:?}: one after another"
    );
    // Through Baton with the workers file declaring 4 slots.
    s.reset_stats();
    let cfg = config(vec![entry_for("s", &s, 4)]);
    let b = support::lab::in_process(&cfg, None, Duration::from_secs(5)).await;
    let url = b.url();
    let answers = join_all((0..4).map(|_| support::stream_chat(&c, &url, 16))).await;
    for (status, worker, sse) in answers {
        assert_eq!((status, worker.as_str()), (200, "s"));
        assert!(sse.unwrap().done);
    }
    let st = s.stats();
    assert_eq!(st.peak_concurrency, 1);
    assert!(
        st.peak_in_flight >= 2,
        "Baton sent more than it runs: {st:?}"
    );
}

/// `baton bench` prints the verdict after its tables and writes it in the
/// results JSON; `baton diagnose` works it out again from a file.
#[test]
fn the_cli_prints_the_verdict_and_diagnoses_a_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let bench = BatonCmd::new([
        "bench",
        "--simulate",
        "2",
        "--mode",
        "concurrency",
        "--concurrency-levels",
        "1",
        "8",
        "--duration",
        "1.5",
        "--max-tokens",
        "8",
        "--no-charts",
        "-o",
    ])
    .arg(&out)
    .home(dir.path())
    .output();
    let stdout = String::from_utf8_lossy(&bench.stdout);
    assert!(
        bench.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&bench.stderr)
    );
    assert!(stdout.contains("\nDiagnosis: "), "{stdout}");
    assert!(stdout.contains("studios give alone"), "{stdout}");
    let r: BenchResult = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let d = r.diagnosis.clone().unwrap();
    assert_eq!(r.evidence.as_ref().unwrap().probes.len(), 2);

    // Again from the file: the same verdict, as text and JSON.
    let again = BatonCmd::new(["diagnose", "--json"]).arg(&out).output();
    let v: baton::bench::diagnose::Diagnosis = serde_json::from_slice(&again.stdout).unwrap();
    // (Figures may differ in the last bit: JSON does not round-trip every float.)
    assert_eq!(
        (&v.verdict, v.healthy, &v.findings, &v.basis),
        (&d.verdict, d.healthy, &d.findings, &d.basis)
    );
    assert!((v.scaling_efficiency.unwrap() - d.scaling_efficiency.unwrap()).abs() < 1e-9);
    assert_eq!(again.status.code(), Some(if d.healthy { 0 } else { 1 }));

    // A run recorded before the evidence: diagnosed from its tables.
    let mut old: Value = serde_json::to_value(&r).unwrap();
    old.as_object_mut().unwrap().remove("evidence");
    old.as_object_mut().unwrap().remove("diagnosis");
    let old_path = dir.path().join("old.json");
    std::fs::write(&old_path, old.to_string()).unwrap();
    let text = BatonCmd::new(["diagnose"]).arg(&old_path).output();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("tables only") && text.contains("Diagnosis: "),
        "{text}"
    );
}
