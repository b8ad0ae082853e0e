//! Studios slower than they should be: time lost outside the studio (the
//! network), or a studio slower than the others at the same work.

use std::collections::BTreeSet;

use super::facts::{Run, Studio, busy, figures, fmt_s, median, pct};
use super::thresholds::*;
use crate::bench::report::{Cause, Finding, Severity};

/// Time outside the studio, or a network over the checklist's limits.
pub(super) fn network_bound(run: &Run, dead: &BTreeSet<&str>, out: &mut Vec<Finding>) {
    for s in &run.studios {
        if dead.contains(s.id.as_str()) {
            continue;
        }
        let mut parts = Vec::new();
        let mut figs = Vec::new();
        if let Some(p) = s.facts.and_then(|f| f.preflight.as_ref()) {
            if let Some(loss) = p
                .ping_loss_pct
                .filter(|l| *l > p.max_loss_pct && *l < 100.0)
            {
                parts.push(format!(
                    "{loss:.0}% of pings were lost (limit {}%): every lost packet stalls a stream for a retransmission",
                    p.max_loss_pct
                ));
                figs.push(("loss_pct", loss));
            }
            if let Some(rtt) = p.ping_avg_ms.filter(|r| *r > p.max_rtt_ms) {
                parts.push(format!(
                    "ping takes {rtt:.1} ms on average (limit {} ms)",
                    p.max_rtt_ms
                ));
                figs.push(("rtt_ms", rtt));
            }
        }
        // The studio's own timings against the client's, alone and one
        // request at a time (else at the lowest level it served).
        let lowest = run
            .levels
            .iter()
            .filter_map(|(l, e)| e.and_then(|e| e.workers.get(&s.id)).map(|w| (l, w)))
            .find(|(_, w)| w.ok >= MIN_REQUESTS && w.server.is_some());
        let w = match s.single() {
            Some(r) => (!busy(run.ev.and_then(|e| e.probe_host.as_ref()))).then_some(&r.detail),
            None => lowest
                .filter(|(l, _)| !busy(Some(&l.host_usage)))
                .map(|(_, w)| w),
        };
        if let Some(w) = w
            && let Some(split) = &w.server
            && let Some(outside) = split.outside_ms
        {
            let ttft = w
                .ttft_ms
                .as_ref()
                .map(|t| t.p50)
                .unwrap_or(w.latency_ms.p50);
            if outside >= NETWORK_MIN_MS && ttft > 0.0 && outside / ttft >= NETWORK_SHARE {
                parts.insert(
                    0,
                    format!(
                        "{} of its {} to first token is spent outside the studio ({} says the studio itself took {} per answer, the client waited {})",
                        fmt_s(outside),
                        fmt_s(ttft),
                        split.source.as_deref().unwrap_or("the studio"),
                        fmt_s(split.total_ms.unwrap_or(0.0)),
                        fmt_s(w.latency_ms.p50)
                    ),
                );
                figs.push(("outside_ms", outside));
                figs.push(("ttft_ms", ttft));
                figs.push(("outside_share", outside / ttft));
            }
        }
        if parts.is_empty() {
            continue;
        }
        out.push(Finding {
            cause: Cause::NetworkBound,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: parts.join("; "),
            remedy: format!(
                "put {} on a wired network with the machine running Baton (same switch; not Wi-Fi, a VPN or a routed link) and check `baton preflight` (RTT under 10 ms, no loss)",
                s.id
            ),
            figures: figures(&figs),
        });
    }
}

/// Studios much slower than the others (uneven hardware).
pub(super) fn slow_studios(
    run: &Run,
    dead: &BTreeSet<&str>,
    serial: &BTreeSet<&str>,
    out: &mut Vec<Finding>,
) {
    let live: Vec<&Studio> = run
        .studios
        .iter()
        .filter(|s| !dead.contains(s.id.as_str()))
        .collect();
    // One answer alone, without the time outside the studio.
    let service = |s: &Studio| {
        s.single().map(|r| {
            let outside = r
                .detail
                .server
                .as_ref()
                .and_then(|x| x.outside_ms)
                .unwrap_or(0.0);
            (r.detail.latency_ms.p50 - outside).max(0.0)
        })
    };
    let measured: Vec<(&Studio, f64)> = live
        .iter()
        .filter_map(|s| service(s).map(|v| (*s, v)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let top = run
        .levels
        .iter()
        .filter(|(l, _)| l.successful_requests > 0)
        .max_by_key(|(l, _)| l.concurrency)
        .map(|(l, _)| *l);
    let total_slots: u32 = live.iter().map(|s| s.slots).sum();
    let alone_sum: f64 = live.iter().filter_map(|s| s.alone_rps()).sum();
    // Its share of the load against its share of the capacity (or of the
    // slots when not measured alone), and whether it finished long after
    // the others.
    let share_text = |s: &Studio| -> String {
        let mut out = String::new();
        if let Some(l) = top {
            let served = l
                .worker_stats
                .get(&s.id)
                .map(|w| w.load_percentage)
                .unwrap_or(0.0);
            match s.alone_rps().filter(|_| alone_sum > 0.0) {
                Some(r) => {
                    out += &format!(
                        "; at concurrency {} it served {served:.0}% of the requests with {} of the pool's capacity",
                        l.concurrency,
                        pct(r / alone_sum)
                    )
                }
                None if total_slots > 0 => {
                    out += &format!(
                        "; at concurrency {} it served {served:.0}% of the requests with {} of the slots",
                        l.concurrency,
                        pct(f64::from(s.slots) / f64::from(total_slots))
                    )
                }
                None => {}
            }
        }
        let tail = run
            .levels
            .iter()
            .filter_map(|(l, e)| {
                let e = (*e)?;
                let mine = e.workers.get(&s.id)?.last_end_s;
                let others = e
                    .workers
                    .iter()
                    .filter(|(k, _)| **k != s.id)
                    .map(|(_, w)| w.last_end_s)
                    .fold(0.0, f64::max);
                let late = mine - others;
                (others > 0.0 && late >= 1.0 && late >= 0.2 * e.elapsed_s)
                    .then_some((l.concurrency, late))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((c, late)) = tail {
            out += &format!(
                "; at concurrency {c} its last answer ended {late:.1} s after the others' (the run waited for it)"
            );
        }
        out
    };
    if measured.len() >= 2 {
        for (s, t) in &measured {
            if serial.contains(s.id.as_str()) {
                continue;
            }
            let others: Vec<f64> = measured
                .iter()
                .filter(|(o, _)| o.id != s.id)
                .map(|(_, v)| *v)
                .collect();
            let Some(m) = median(others) else { continue };
            if *t < SLOW_FACTOR * m {
                continue;
            }
            let tps = |x: &Studio| x.single().and_then(|r| r.detail.decode_tps);
            let others_tps = median(
                measured
                    .iter()
                    .filter(|(o, _)| o.id != s.id)
                    .filter_map(|(o, _)| tps(o))
                    .collect(),
            );
            let adds = s.alone_rps().map(|r| r / alone_sum.max(1e-9));
            out.push(Finding {
                cause: Cause::SlowStudio,
                worker: Some(s.id.clone()),
                severity: Severity::Warning,
                evidence: format!(
                    "alone, one answer takes {} against {} for the others ({:.1}x){}{}",
                    fmt_s(*t),
                    fmt_s(m),
                    t / m,
                    match (tps(s), others_tps) {
                        (Some(a), Some(b)) => format!("; it generates {a:.0} tok/s against {b:.0}"),
                        _ => String::new(),
                    },
                    share_text(s)
                ),
                remedy: format!(
                    "uneven hardware: Baton already sends it less work. For throughput keep it{}; for latency, lower its max_concurrent_requests or set \"enabled\": false so answers do not wait on it, or give it a smaller model",
                    adds.map(|a| format!(" (it adds {} of the pool's capacity)", pct(a)))
                        .unwrap_or_default()
                ),
                figures: figures(&[
                    ("answer_ms", *t),
                    ("others_answer_ms", m),
                    ("slowdown", t / m),
                    ("tokens_per_second", tps(s).unwrap_or(f64::NAN)),
                    ("others_tokens_per_second", others_tps.unwrap_or(f64::NAN)),
                ]),
            });
        }
        return;
    }
    // No probes (older runs): its share of the load against its share of
    // the slots at the top level, when it failed nothing there.
    let Some(l) = top else { return };
    if live.len() < 2 || total_slots == 0 || run.ev.is_some_and(|e| !e.probes.is_empty()) {
        return;
    }
    if (l.concurrency as u32) < total_slots {
        return;
    }
    for s in &live {
        let Some(w) = l.worker_stats.get(&s.id) else {
            continue;
        };
        let slot_share = f64::from(s.slots) / f64::from(total_slots);
        if w.failed > 0 || w.load_percentage / 100.0 >= SLOW_SHARE_RATIO * slot_share {
            continue;
        }
        out.push(Finding {
            cause: Cause::SlowStudio,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: format!(
                "at concurrency {} it served {:.0}% of the requests with {} of the pool's slots",
                l.concurrency,
                w.load_percentage,
                pct(slot_share)
            ),
            remedy: "uneven hardware (or fewer real slots than declared): lower its max_concurrent_requests, or run `baton bench` again to measure each studio alone".to_string(),
            figures: figures(&[
                ("load_share", w.load_percentage / 100.0),
                ("slot_share", slot_share),
            ]),
        });
    }
}
