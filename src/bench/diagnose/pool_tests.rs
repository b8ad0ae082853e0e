//! The rules about the pool as a whole (saturation, a client-bound run, a
//! level too short for its concurrency, Baton's overhead) on hand-made
//! runs, with the builders of `tests`.

use super::tests::*;
use super::*;
use crate::bench::report::{Evidence, HostUsage, TimeSplit};

#[test]
fn a_knee_a_serialized_studio_explains_is_told_under_serialized() {
    // One studio declared with 4 slots runs one at a time: the pool stops
    // rising at concurrency 1, which is what serialized means, not a
    // second cause.
    let mut p = probe("a", 4);
    p.full = Some(run(4, 4.1, wev(8, 480.0, 630.0)));
    let levels = vec![
        level(1, 4.0, 0.1, 0.25, &[("a", 8)]),
        level(2, 4.05, 0.3, 0.49, &[("a", 8)]),
        level(4, 4.1, 0.55, 0.97, &[("a", 8)]),
    ];
    let ev = Evidence {
        studios: vec![facts("a", 4)],
        probes: vec![p],
        levels: levels
            .iter()
            .map(|l| level_ev(l, l.ttft_avg * 1000.0, l.avg_response_time * 1000.0))
            .collect(),
        connect_timeout_ms: Some(500.0),
        probe_host: None,
    };
    let r = result(levels, Some(ev), &[("a", 4)]);
    let d = only(&r, Cause::Serialized, Some("a"));
    let f = &d.findings[0];
    assert!(
        f.evidence.contains("stops rising at concurrency 1")
            && f.evidence.contains("declare 4 slots"),
        "{}",
        f.evidence
    );
    assert_eq!(f.figures["pool_knee_concurrency"], 1.0);
}

#[test]
fn a_knee_in_the_sweep_is_saturation_with_the_best_concurrency() {
    let mut r = healthy();
    let more = [
        level(8, 16.2, 0.35, 0.5, &[("a", 32), ("b", 32)]),
        level(16, 16.1, 0.85, 1.0, &[("a", 32), ("b", 32)]),
    ];
    for l in more {
        let mut e = level_ev(&l, l.ttft_avg * 1000.0, l.avg_response_time * 1000.0);
        e.baton.as_mut().unwrap().queue_avg = l.concurrency as f64 - 4.0;
        ev(&mut r).levels.push(e);
        r.concurrency_benchmark.push(l);
    }
    let d = only(&r, Cause::Saturated, None);
    let f = &d.findings[0];
    assert_eq!(f.severity, Severity::Warning, "16 is four times the knee");
    assert_eq!(f.figures["best_concurrency"], 4.0);
    assert!(f.evidence.contains("Baton's queue"), "{}", f.evidence);
    assert_eq!(d.time_split.as_ref().unwrap().concurrency, 4);
    // Just past the knee it is only a note.
    for _ in 0..2 {
        r.concurrency_benchmark.pop();
        ev(&mut r).levels.pop();
    }
    let l = level(6, 16.1, 0.2, 0.37, &[("a", 24), ("b", 24)]);
    ev(&mut r).levels.push(level_ev(&l, 200.0, 370.0));
    r.concurrency_benchmark.push(l);
    let d = diagnose(&r);
    assert_eq!(d.findings.len(), 1);
    assert_eq!(d.findings[0].severity, Severity::Info);
    assert!(d.healthy);
}

#[test]
fn fewer_requests_in_flight_than_asked_is_client_bound() {
    let mut r = healthy();
    // Asked for 4, sustained 2: half the throughput at the same latency.
    r.concurrency_benchmark[1] = level(4, 8.0, 0.1, 0.25, &[("a", 8), ("b", 8)]);
    ev(&mut r).levels[1].client_wait_ms = 240.0;
    let d = only(&r, Cause::ClientBound, None);
    assert!(
        d.findings[0].evidence.contains("2.0 requests"),
        "{}",
        d.findings[0].evidence
    );
    assert!(d.findings[0].evidence.contains("free connection"));
    // Baton saw half of what the client had out.
    let mut r = healthy();
    let b = ev(&mut r).levels[1].baton.as_mut().unwrap();
    b.in_flight_avg = 1.5;
    b.client_in_flight_avg = 4.0;
    only(&r, Cause::ClientBound, None);
}

#[test]
fn a_level_that_ran_out_of_requests_is_short_not_client_bound() {
    // A file from before the drain was measured: 6 requests at
    // concurrency 4 run one round, then drain a half one, so Little's
    // law over the level sees 2.6 in flight.
    let mut r = healthy();
    r.settings.requests = Some(6);
    r.settings.duration_s = None;
    r.concurrency_benchmark[1] = level(4, 10.4, 0.1, 0.25, &[("a", 3), ("b", 3)]);
    let d = only(&r, Cause::ShortLevel, None);
    let f = &d.findings[0];
    assert!(f.evidence.contains("6 requests"), "{}", f.evidence);
    assert!(f.evidence.contains("estimated"), "{}", f.evidence);
    assert!(f.remedy.contains("--requests 40"), "{}", f.remedy);
}

#[test]
fn a_busy_measuring_machine_is_client_bound_and_its_timings_are_not_trusted() {
    // The pool fell to 60% of what the studios alone promise while this
    // machine's CPU was pegged.
    let mut r = healthy();
    r.concurrency_benchmark[1] = level(4, 9.6, 0.16, 0.41, &[("a", 10), ("b", 10)]);
    r.concurrency_benchmark[1].littles_law.client_bound = false;
    r.concurrency_benchmark[1]
        .host_usage
        .process_cpu_avg_percent = 97.0;
    let d = only(&r, Cause::ClientBound, None);
    assert!(
        d.findings[0].evidence.contains("97%"),
        "{}",
        d.findings[0].evidence
    );
    // The same shortfall with Baton idle is not the client's, even with
    // other programs keeping the machine busy.
    r.concurrency_benchmark[1]
        .host_usage
        .process_cpu_avg_percent = 30.0;
    r.concurrency_benchmark[1].host_usage.cpu_avg_percent = 100.0;
    assert!(
        diagnose(&r)
            .findings
            .iter()
            .all(|f| f.cause != Cause::ClientBound)
    );
    // Time outside the studio measured on a pegged machine is no
    // evidence of the network.
    let mut r = healthy();
    let single = ev(&mut r).probes[0].single.as_mut().unwrap();
    single.detail.server = Some(TimeSplit {
        source: Some("LM Studio stats".into()),
        requests: Some(3),
        total_ms: Some(170.0),
        outside_ms: Some(80.0),
        ..TimeSplit::default()
    });
    assert_eq!(
        diagnose(&r).findings.len(),
        1,
        "outside time counts when idle"
    );
    ev(&mut r).probe_host = Some(HostUsage {
        cpu_avg_percent: 99.0,
        cpu_max_percent: 100.0,
        memory_used_gb: 1.0,
        process_cpu_avg_percent: 95.0,
    });
    assert!(diagnose(&r).findings.is_empty());
}

#[test]
fn baton_adding_latency_at_concurrency_one_is_overhead() {
    let mut r = healthy();
    let l = &mut ev(&mut r).levels[0];
    for w in l.workers.values_mut() {
        *w = wev(w.ok, 140.0, 292.0);
    }
    let d = only(&r, Cause::BalancerOverhead, None);
    // 292 ms through Baton against 250 ms direct.
    assert!((d.findings[0].figures["added_ms"] - 42.0).abs() < 1e-9);
    // 5 ms is noise.
    let mut r = healthy();
    for w in ev(&mut r).levels[0].workers.values_mut() {
        *w = wev(w.ok, 105.0, 257.0);
    }
    assert!(diagnose(&r).findings.is_empty());
}
