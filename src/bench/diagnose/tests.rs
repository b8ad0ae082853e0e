//! Every rule on hand-made runs: each pathology alone gives its own
//! finding and nothing else above `info`; a healthy pool gives none.
//! The hand-made runs' builders are shared with `pool_tests` (the rules
//! about the pool as a whole).

use super::*;
use crate::bench::report::{
    BalancerDelta, BatonSample, Evidence, HostFacts, HostUsage, Level, LevelEvidence, LittlesLaw,
    PreflightFacts, ProbeRun, Settings, Stat, StudioFacts, StudioProbe, TimeSplit, WorkerEvidence,
    WorkerShare,
};

pub(super) fn stat(p50: f64) -> Stat {
    Stat {
        count: 3,
        mean: p50,
        p50,
        p95: p50,
        max: p50,
    }
}

/// A studio's figures: `ok` answers, TTFT and latency in ms.
pub(super) fn wev(ok: u64, ttft: f64, latency: f64) -> WorkerEvidence {
    WorkerEvidence {
        ok,
        tokens: ok * 16,
        ttft_ms: Some(stat(ttft)),
        latency_ms: stat(latency),
        decode_tps: Some(16.0 / ((latency - ttft) / 1000.0)),
        ..WorkerEvidence::default()
    }
}

pub(super) fn run(c: usize, rps: f64, w: WorkerEvidence) -> ProbeRun {
    ProbeRun {
        concurrency: c,
        elapsed_s: 1.0,
        requests_per_second: rps,
        output_tokens_per_second: rps * 16.0,
        detail: w,
    }
}

/// A healthy studio alone: 100 ms to first token, 250 ms an answer.
pub(super) fn probe(id: &str, slots: u32) -> StudioProbe {
    StudioProbe {
        worker: id.into(),
        kind: "lm_studio".into(),
        slots,
        endpoint: "http://x/api/v0/chat/completions".into(),
        timings: Some("LM Studio stats".into()),
        first: Some(wev(1, 100.0, 250.0)),
        single: Some(run(1, 4.0, wev(3, 100.0, 250.0))),
        full: Some(run(
            slots as usize,
            4.0 * f64::from(slots),
            wev(2 * u64::from(slots), 100.0, 250.0),
        )),
        ..StudioProbe::default()
    }
}

pub(super) fn facts(id: &str, slots: u32) -> StudioFacts {
    StudioFacts {
        worker: id.into(),
        kind: "lm_studio".into(),
        host: "10.0.0.1".into(),
        port: 1234,
        slots,
        excluded: false,
        preflight: Some(PreflightFacts {
            status: "pass".into(),
            ping_avg_ms: Some(0.8),
            ping_loss_pct: Some(0.0),
            tcp_connect_ms: Some(0.9),
            first_token_ms: Some(105.0),
            max_rtt_ms: 10.0,
            max_loss_pct: 0.0,
            ..PreflightFacts::default()
        }),
    }
}

/// A level where every studio in `per` served its share.
pub(super) fn level(c: usize, rps: f64, ttft_s: f64, latency_s: f64, per: &[(&str, u64)]) -> Level {
    let ok: u64 = per.iter().map(|(_, n)| n).sum();
    let effective = rps * latency_s;
    Level {
        concurrency: c,
        requests: ok,
        successful_requests: ok,
        failed_requests: 0,
        duration_s: 2.0,
        requests_per_second: rps,
        success_rate: 100.0,
        avg_response_time: latency_s,
        p50_response_time: latency_s,
        p95_response_time: latency_s,
        p99_response_time: latency_s,
        ttft_avg: ttft_s,
        ttft_p50: ttft_s,
        ttft_p95: ttft_s,
        tpot_avg: 0.01,
        output_tokens_per_second: rps * 16.0,
        tokens_approximate: false,
        worker_stats: per
            .iter()
            .map(|(w, n)| {
                (
                    (*w).to_string(),
                    WorkerShare {
                        requests: *n,
                        failed: 0,
                        success_rate: 100.0,
                        load_percentage: 100.0 * *n as f64 / ok.max(1) as f64,
                    },
                )
            })
            .collect(),
        littles_law: LittlesLaw {
            effective_concurrency: effective,
            ratio: effective / c as f64,
            client_bound: effective / (c as f64) < 0.8,
            in_flight_while_sending: None,
            ramp_down_share: None,
        },
        host_usage: HostUsage {
            cpu_avg_percent: 20.0,
            cpu_max_percent: 40.0,
            memory_used_gb: 1.0,
            process_cpu_avg_percent: 10.0,
        },
        errors: vec![],
        repeats_rps: vec![],
    }
}

pub(super) fn level_ev(l: &Level, ttft_ms: f64, latency_ms: f64) -> LevelEvidence {
    let ids: Vec<&String> = l.worker_stats.keys().collect();
    LevelEvidence {
        concurrency: l.concurrency,
        elapsed_s: 2.0,
        in_flight_avg: l.concurrency as f64,
        client_wait_ms: 0.0,
        baton: Some(BatonSample {
            samples: 20,
            in_flight_avg: l.concurrency as f64,
            client_in_flight_avg: l.concurrency as f64,
            queue_avg: 0.0,
            queue_max: 0,
            attempts_per_request: 1.0,
            retries: 0,
            rejected: 0,
        }),
        workers: l
            .worker_stats
            .iter()
            .map(|(w, s)| (w.clone(), wev(s.requests, ttft_ms, latency_ms)))
            .collect(),
        balancer: ids
            .iter()
            .map(|w| {
                (
                    (*w).clone(),
                    BalancerDelta {
                        requests: l.worker_stats[*w].requests,
                        successes: l.worker_stats[*w].requests,
                        state: "ready".into(),
                        in_flight_avg: 1.0,
                        ..BalancerDelta::default()
                    },
                )
            })
            .collect(),
        samples: vec![],
    }
}

pub(super) fn result(
    levels: Vec<Level>,
    evidence: Option<Evidence>,
    slots: &[(&str, u32)],
) -> BenchResult {
    let workers: Vec<serde_json::Value> = slots
        .iter()
        .map(|(id, n)| serde_json::json!({"id": id, "host": "10.0.0.1", "port": 1234, "type": "lm_studio", "model": "m", "max_concurrent_requests": n}))
        .collect();
    BenchResult {
        baton_version: "test".into(),
        started_at: 0,
        finished_at: 0,
        interrupted: false,
        mode: "concurrency".into(),
        target: "balancer".into(),
        url: None,
        settings: Settings {
            model: "m".into(),
            max_tokens: 16,
            requests: None,
            duration_s: Some(2.0),
            warmup_requests: 1,
            repeat: 1,
            concurrency_levels: levels.iter().map(|l| l.concurrency).collect(),
            worker_counts: vec![],
            prompts: 1,
        },
        config: serde_json::json!({ "workers": workers }),
        preflight: None,
        host: HostFacts {
            os: "linux".into(),
            arch: "x86_64".into(),
            cpus: 2,
            memory_gb: 8.0,
        },
        concurrency_benchmark: levels,
        worker_scaling_benchmark: vec![],
        evidence,
        diagnosis: None,
        capacity: None,
    }
}

/// Two healthy studios of 2 slots: 4 req/s each at one at a time.
pub(super) fn healthy() -> BenchResult {
    let l1 = level(1, 4.0, 0.1, 0.25, &[("a", 4), ("b", 4)]);
    let l4 = level(4, 16.0, 0.1, 0.25, &[("a", 16), ("b", 16)]);
    let ev = Evidence {
        studios: vec![facts("a", 2), facts("b", 2)],
        probes: vec![probe("a", 2), probe("b", 2)],
        levels: vec![level_ev(&l1, 100.0, 252.0), level_ev(&l4, 100.0, 252.0)],
        connect_timeout_ms: Some(500.0),
        probe_host: None,
    };
    result(vec![l1, l4], Some(ev), &[("a", 2), ("b", 2)])
}

pub(super) fn ev(r: &mut BenchResult) -> &mut Evidence {
    r.evidence.as_mut().unwrap()
}

/// The run's only finding above info is `cause` (about `worker`).
pub(super) fn only(r: &BenchResult, cause: Cause, worker: Option<&str>) -> Diagnosis {
    let d = diagnose(r);
    let above: Vec<&Finding> = d
        .findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .collect();
    let mine: Vec<&Finding> = d.findings.iter().filter(|f| f.cause == cause).collect();
    assert_eq!(mine.len(), 1, "{}", render(&d));
    assert_eq!(mine[0].worker.as_deref(), worker, "{}", render(&d));
    assert!(
        above.iter().all(|f| f.cause == cause),
        "other findings: {}",
        render(&d)
    );
    assert!(!mine[0].evidence.is_empty() && !mine[0].remedy.is_empty());
    d
}

#[test]
fn a_healthy_pool_has_nothing_to_report() {
    let d = diagnose(&healthy());
    assert!(d.findings.is_empty(), "{}", render(&d));
    assert!(d.healthy);
    assert_eq!(d.verdict, "no problem found");
    assert!((d.scaling_efficiency.unwrap() - 1.0).abs() < 1e-9);
    assert!(d.waterfall.is_empty(), "{:?}", d.waterfall);
    assert_eq!(d.basis, "evidence");
    let text = render(&d);
    assert!(
        text.contains("no problem found") && text.contains("100%"),
        "{text}"
    );
}

#[test]
fn a_studio_that_served_nothing_and_cannot_be_reached_is_dead() {
    let mut r = healthy();
    ev(&mut r).studios.push(facts("c", 2));
    ev(&mut r).probes.push(StudioProbe {
        worker: "c".into(),
        error: Some("request failed: error sending request: tcp connect error: Connection refused (connect)".into()),
        ..StudioProbe::default()
    });
    for l in &mut ev(&mut r).levels {
        l.balancer.insert(
            "c".into(),
            BalancerDelta {
                state: "ejected".into(),
                ..BalancerDelta::default()
            },
        );
    }
    let d = only(&r, Cause::DeadStudio, Some("c"));
    let f = &d.findings[0];
    assert_eq!(f.severity, Severity::Critical);
    assert!(f.remedy.contains("nothing listens"), "{}", f.remedy);
    assert!(
        f.evidence.contains("never sent it a request"),
        "{}",
        f.evidence
    );
    // Its capacity is the missing part of the waterfall.
    assert_eq!(d.waterfall[0].worker.as_deref(), Some("c"));
    assert!((d.scaling_efficiency.unwrap() - 2.0 / 3.0).abs() < 0.01);
}

#[test]
fn a_studio_excluded_by_preflight_is_dead_or_network_bound_by_what_failed() {
    let mut r = healthy();
    let mut c = facts("c", 2);
    c.excluded = true;
    let p = c.preflight.as_mut().unwrap();
    p.status = "fail".into();
    p.failed_checks = vec!["ping".into(), "tcp".into()];
    p.problems = vec![
        "ping 0/5 replies, 100% loss".into(),
        "tcp port 1234: timed out".into(),
    ];
    p.ping_loss_pct = Some(100.0);
    ev(&mut r).studios.push(c.clone());
    only(&r, Cause::DeadStudio, Some("c"));
    // Loss short of 100% with the port open: the network, not the studio.
    let mut r = healthy();
    let p = c.preflight.as_mut().unwrap();
    p.failed_checks = vec!["ping".into()];
    p.problems = vec!["ping 4/5 replies, 20% loss".into()];
    p.ping_loss_pct = Some(20.0);
    ev(&mut r).studios.push(c);
    let d = only(&r, Cause::NetworkBound, Some("c"));
    assert_eq!(d.findings[0].severity, Severity::Critical);
}

#[test]
fn a_studio_that_went_down_during_the_run_is_dead() {
    let mut r = healthy();
    let last = ev(&mut r).levels.last_mut().unwrap();
    let b = last.balancer.get_mut("b").unwrap();
    b.successes = 0;
    b.requests = 3;
    b.state = "ejected".into();
    b.failures.insert("timeout".into(), 3);
    let d = only(&r, Cause::DeadStudio, Some("b"));
    assert!(
        d.findings[0].evidence.contains("went down"),
        "{}",
        d.findings[0].evidence
    );
    assert!(
        d.findings[0].evidence.contains("1.5 s"),
        "3 connect timeouts of 500 ms"
    );
}

#[test]
fn failures_while_serving_make_a_flaky_studio() {
    let mut r = healthy();
    for l in &mut ev(&mut r).levels {
        let b = l.balancer.get_mut("b").unwrap();
        b.requests += 2;
        b.failures.insert("status_5xx".into(), 2);
    }
    let d = only(&r, Cause::FlakyStudio, Some("b"));
    assert!(d.findings[0].remedy.contains("server log"));
    // One failure in a thousand is not flaky.
    let mut r = healthy();
    let b = ev(&mut r).levels[1].balancer.get_mut("b").unwrap();
    b.requests = 1000;
    b.failures.insert("stream".into(), 1);
    assert!(diagnose(&r).findings.is_empty());
}

#[test]
fn a_studio_running_one_request_at_a_time_is_serialized() {
    let mut r = healthy();
    let p = &mut ev(&mut r).probes[1];
    p.slots = 4;
    ev(&mut r).studios[1].slots = 4;
    // Four at once: the same 4 req/s, and the first token waits.
    ev(&mut r).probes[1].full = Some(run(4, 4.1, wev(8, 480.0, 630.0)));
    let d = only(&r, Cause::Serialized, Some("b"));
    let f = &d.findings[0];
    assert!(
        f.evidence.contains("runs about 1 at a time"),
        "{}",
        f.evidence
    );
    assert!(
        f.remedy.contains("Max Concurrent Predictions"),
        "{}",
        f.remedy
    );
    assert_eq!(f.figures["effective_parallel"], 1.0);
}

#[test]
fn a_first_answer_that_paid_a_model_load_is_a_cold_model() {
    // Seen by preflight's first request...
    let mut r = healthy();
    ev(&mut r).studios[0]
        .preflight
        .as_mut()
        .unwrap()
        .first_token_ms = Some(5200.0);
    let d = only(&r, Cause::ColdModel, Some("a"));
    assert!(
        d.findings[0].evidence.contains("5.20 s"),
        "{}",
        d.findings[0].evidence
    );
    assert!(d.findings[0].remedy.contains("lms load"));
    assert!(d.findings[0].remedy.contains("Warm up the pool"));
    // ...or reported by the studio (Ollama's load_duration).
    let mut r = healthy();
    let first = ev(&mut r).probes[1].first.as_mut().unwrap();
    first.server = Some(TimeSplit {
        source: Some("Ollama durations".into()),
        requests: Some(1),
        load_ms: Some(2500.0),
        ..TimeSplit::default()
    });
    ev(&mut r).studios[1].kind = "ollama".into();
    let d = only(&r, Cause::ColdModel, Some("b"));
    assert!(d.findings[0].remedy.contains("OLLAMA_KEEP_ALIVE"));
    // A first request 300 ms slower is a cold cache, not a load.
    let mut r = healthy();
    ev(&mut r).probes[0].first = Some(wev(1, 400.0, 550.0));
    assert!(diagnose(&r).findings.is_empty());
}

#[test]
fn time_outside_the_studio_or_a_slow_ping_is_network_bound() {
    let mut r = healthy();
    // The studio says 100 ms to first token; the client waited 180.
    let single = ev(&mut r).probes[0].single.as_mut().unwrap();
    single.detail = wev(3, 180.0, 330.0);
    single.detail.server = Some(TimeSplit {
        source: Some("LM Studio stats".into()),
        requests: Some(3),
        ttft_ms: Some(100.0),
        decode_ms: Some(150.0),
        total_ms: Some(250.0),
        outside_ms: Some(80.0),
        ..TimeSplit::default()
    });
    let d = only(&r, Cause::NetworkBound, Some("a"));
    assert!(d.findings[0].evidence.contains("outside the studio"));
    assert!((d.findings[0].figures["outside_ms"] - 80.0).abs() < 1e-9);
    // Ping over the checklist's limit.
    let mut r = healthy();
    ev(&mut r).studios[1]
        .preflight
        .as_mut()
        .unwrap()
        .ping_avg_ms = Some(35.0);
    let d = only(&r, Cause::NetworkBound, Some("b"));
    assert!(d.findings[0].evidence.contains("35.0 ms"));
}

#[test]
fn a_studio_four_times_slower_is_slow() {
    let mut r = healthy();
    ev(&mut r).studios.push(facts("c", 2));
    let mut slow = probe("c", 2);
    slow.single = Some(run(1, 1.0, wev(3, 400.0, 1000.0)));
    slow.full = Some(run(2, 2.0, wev(4, 400.0, 1000.0)));
    ev(&mut r).probes.push(slow);
    let d = only(&r, Cause::SlowStudio, Some("c"));
    let f = &d.findings[0];
    assert!(
        (f.figures["slowdown"] - 4.0).abs() < 0.01,
        "{:?}",
        f.figures
    );
    assert!(f.evidence.contains("tok/s"), "{}", f.evidence);
}

#[test]
fn runs_recorded_without_evidence_are_diagnosed_from_their_tables() {
    // Healthy.
    let mut r = healthy();
    r.evidence = None;
    let d = diagnose(&r);
    assert_eq!(d.basis, "tables");
    assert!(d.findings.is_empty(), "{}", render(&d));
    assert!(d.scaling_efficiency.is_none());
    // A studio of the file that never served while the others were full.
    let mut r = healthy();
    r.evidence = None;
    r.config["workers"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"id": "c", "host": "10.0.0.9", "port": 1234, "type": "ollama", "model": "m", "max_concurrent_requests": 2}));
    r.concurrency_benchmark[1].concurrency = 6;
    let d = diagnose(&r);
    assert!(
        d.findings
            .iter()
            .any(|f| f.cause == Cause::DeadStudio && f.worker.as_deref() == Some("c")),
        "{}",
        render(&d)
    );
    // Client-seen failures named by studio.
    let mut r = healthy();
    r.evidence = None;
    let w = r.concurrency_benchmark[1]
        .worker_stats
        .get_mut("a")
        .unwrap();
    w.requests += 4;
    w.failed = 4;
    only(&r, Cause::FlakyStudio, Some("a"));
    // A studio that got a fraction of its slots' share.
    let mut r = healthy();
    r.evidence = None;
    r.concurrency_benchmark[1] = level(4, 10.0, 0.1, 0.4, &[("a", 28), ("b", 4)]);
    only(&r, Cause::SlowStudio, Some("b"));
}

#[test]
fn the_json_shape_is_stable() {
    let mut r = healthy();
    ev(&mut r).probes[1].full = Some(run(2, 4.1, wev(4, 480.0, 630.0)));
    let d = diagnose(&r);
    let v = serde_json::to_value(&d).unwrap();
    let f = &v["findings"][0];
    assert_eq!(f["cause"], "serialized");
    assert_eq!(f["worker"], "b");
    assert_eq!(f["severity"], "warning");
    assert!(f["evidence"].is_string() && f["remedy"].is_string());
    assert!(
        v["verdict"]
            .as_str()
            .unwrap()
            .starts_with("1 problem found")
    );
    assert_eq!(v["healthy"], false);
    assert!(v["scaling_efficiency"].is_number());
    // Round trip through the results file.
    r.diagnosis = Some(d.clone());
    let back: BenchResult = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back.diagnosis.unwrap(), d);
    // Pure: the same run, the same verdict.
    assert_eq!(diagnose(&r), d);
}
