//! The pool as a whole: past its knee (saturated), held back by the
//! measuring machine (client-bound), or slowed by Baton itself.

use super::facts::{Run, Studio, busy, figures, fmt_s, pct};
use super::thresholds::*;
use crate::bench::report::{Cause, Finding, Level, LevelEvidence, Severity};

pub(super) fn latency_of(l: &Level) -> f64 {
    if l.ttft_avg > 0.0 {
        l.ttft_avg
    } else {
        l.avg_response_time
    }
}

/// The knee of the sweep: the level to run at, or `None` for fewer than
/// two usable levels.
/// A level with its evidence, if kept.
type LevelPair<'a> = (&'a Level, Option<&'a LevelEvidence>);

pub(super) fn knee<'a>(run: &'a Run) -> Option<(&'a Level, Vec<LevelPair<'a>>)> {
    let mut levels: Vec<LevelPair> = run
        .levels
        .iter()
        .filter(|(l, _)| l.successful_requests > 0 && !l.littles_law.client_bound && !short(run, l))
        .copied()
        .collect();
    levels.sort_by_key(|(l, _)| l.concurrency);
    if levels.len() < 2 {
        return None;
    }
    let knee = levels.iter().enumerate().find_map(|(i, (k, _))| {
        let flat = levels[i + 1..].iter().all(|(h, _)| {
            let more = h.concurrency as f64 / k.concurrency as f64 - 1.0;
            h.requests_per_second < (1.0 + KNEE_GAIN * more) * k.requests_per_second
        });
        flat.then_some(*k)
    })?;
    Some((knee, levels))
}

/// Throughput stopped rising while the wait grew.
pub(super) fn saturated(run: &Run, out: &mut Vec<Finding>) {
    let Some((knee, levels)) = knee(run) else {
        return;
    };
    let past: Vec<&LevelPair> = levels
        .iter()
        .filter(|(l, _)| l.concurrency as f64 >= SATURATED_PAST * knee.concurrency as f64)
        .collect();
    let Some((top, top_ev)) = past.last().map(|x| **x) else {
        return;
    };
    let (w0, w1) = (latency_of(knee), latency_of(top));
    if !(w0 > 0.0 && w1 >= SATURATED_TTFT_GROWTH * w0) {
        return;
    }
    let slots: u32 = run
        .studios
        .iter()
        .filter(|s| !s.excluded())
        .map(|s| s.slots)
        .sum();
    if serial_knee(knee, slots, out) {
        return;
    }
    let queue_s = top_ev
        .and_then(|e| e.baton.as_ref())
        .filter(|b| b.samples >= MIN_BATON_SAMPLES && top.requests_per_second > 0.0)
        .map(|b| b.queue_avg / top.requests_per_second);
    let far = top.concurrency as f64 >= SATURATED_FAR * knee.concurrency as f64;
    out.push(Finding {
        cause: Cause::Saturated,
        worker: None,
        severity: if far { Severity::Warning } else { Severity::Info },
        evidence: format!(
            "throughput stops rising at concurrency {} ({:.2} req/s{}); at {} it is {:.2} req/s while the time to first token grows from {:.2} s to {:.2} s{}",
            knee.concurrency,
            knee.requests_per_second,
            if slots > 0 {
                format!(", the pool has {slots} slots")
            } else {
                String::new()
            },
            top.concurrency,
            top.requests_per_second,
            w0,
            w1,
            queue_s
                .filter(|q| *q > 0.0)
                .map(|q| format!("; requests waited {q:.2} s in Baton's queue for a free slot"))
                .unwrap_or_default()
        ),
        remedy: format!(
            "run at concurrency {} (the pool's capacity, {:.2} req/s): more only queues. For more throughput add studios or slots (see the other findings for slots that do not work)",
            knee.concurrency, knee.requests_per_second
        ),
        figures: figures(&[
            ("best_concurrency", knee.concurrency as f64),
            ("capacity_rps", knee.requests_per_second),
            ("ttft_at_knee_s", w0),
            ("ttft_at_top_s", w1),
            ("top_concurrency", top.concurrency as f64),
        ]),
    });
}

/// A knee below the declared slots where studios run fewer than they
/// declare is their consequence, not a second cause: it goes under
/// their `serialized` findings. True when it did.
fn serial_knee(knee: &Level, slots: u32, out: &mut [Finding]) -> bool {
    let serial: Vec<&mut Finding> = out
        .iter_mut()
        .filter(|f| f.cause == Cause::Serialized)
        .collect();
    let lost: f64 = serial
        .iter()
        .map(|f| {
            let fig = |k: &str| f.figures.get(k).copied().unwrap_or(0.0);
            fig("declared_slots") - fig("effective_parallel")
        })
        .sum();
    let runs = f64::from(slots) - lost;
    if serial.is_empty() || knee.concurrency >= slots as usize || knee.concurrency as f64 > runs {
        return false;
    }
    for f in serial {
        f.evidence += &format!(
            " So the pool's throughput stops rising at concurrency {} ({:.2} req/s) although its studios declare {slots} slots, and more at once only queues: until this is fixed, run at {}.",
            knee.concurrency, knee.requests_per_second, knee.concurrency
        );
        f.figures
            .insert("pool_knee_concurrency".into(), knee.concurrency as f64);
        f.figures
            .insert("pool_capacity_rps".into(), knee.requests_per_second);
    }
    true
}

/// What the studios measured alone at least promise at `concurrency`:
/// each request served at the slowest studio's one-at-a-time rate, up to
/// the sum of their capacities (a lower bound, whatever the routing).
/// `None` unless every studio that served was measured.
pub(super) fn expected_rps(run: &Run, concurrency: usize) -> Option<f64> {
    let live: Vec<&Studio> = run
        .studios
        .iter()
        .filter(|s| !s.excluded() && s.probe.is_some_and(|p| p.error.is_none()))
        .collect();
    if live.is_empty() || live.iter().any(|s| s.alone_rps().is_none()) {
        return None;
    }
    let capacity: f64 = live.iter().filter_map(|s| s.alone_rps()).sum();
    let one = live
        .iter()
        .filter_map(|s| s.single().map(|r| r.requests_per_second))
        .fold(f64::INFINITY, f64::min);
    one.is_finite()
        .then(|| capacity.min(concurrency as f64 * one))
}

/// The share of a level's time spent draining: measured, or for runs
/// recorded before it was, estimated from the requests per level (equal
/// answers: 48 at concurrency 32 run one full round, then drain a half
/// one; a whole number of rounds still drains for about half an answer).
pub(super) fn ramp_down(run: &Run, l: &Level) -> Option<f64> {
    if let Some(share) = l.littles_law.ramp_down_share {
        return Some(share);
    }
    let s = &run.r.settings;
    let n = s.requests.filter(|_| s.duration_s.is_none())?;
    if l.concurrency == 0 || n == 0 {
        return None;
    }
    let rounds = n as f64 / l.concurrency as f64;
    if rounds < 1.0 {
        return Some(1.0);
    }
    Some((1.0 - rounds.floor() / rounds.ceil()).max(0.5 / rounds))
}

/// A level too short for its concurrency: it drained for much of its
/// time, so its averages describe fewer requests in flight than asked.
pub(super) fn short(run: &Run, l: &Level) -> bool {
    l.littles_law.ratio < CLIENT_LITTLE_MIN
        && ramp_down(run, l).is_some_and(|r| r >= SHORT_RAMP_SHARE)
}

/// Levels that ran short of requests for their concurrency.
pub(super) fn short_levels(run: &Run, out: &mut Vec<Finding>) {
    let short: Vec<&Level> = run
        .levels
        .iter()
        .map(|(l, _)| *l)
        .filter(|l| l.successful_requests > 0 && short(run, l))
        .collect();
    // The worst one speaks; the others are named.
    let Some(l) = short.iter().copied().max_by(|a, b| {
        let r = |l: &Level| ramp_down(run, l).unwrap_or(0.0);
        r(a).total_cmp(&r(b))
    }) else {
        return;
    };
    let share = ramp_down(run, l).unwrap_or(0.0);
    let measured = l.littles_law.ramp_down_share.is_some();
    let top = short
        .iter()
        .map(|l| l.concurrency)
        .max()
        .unwrap_or(l.concurrency);
    let cpu = l.host_usage.process_cpu_avg_percent;
    let per_level = l.requests / u64::from(run.r.settings.repeat.max(1));
    let others: Vec<String> = short
        .iter()
        .filter(|o| o.concurrency != l.concurrency)
        .map(|o| o.concurrency.to_string())
        .collect();
    out.push(Finding {
        cause: Cause::ShortLevel,
        worker: None,
        severity: Severity::Warning,
        evidence: format!(
            "at concurrency {} the level had {} requests ({:.1} per client): it spent {} of its time draining, after the client had sent them all, with fewer than {} in flight, so its {:.2} req/s and {:.1} requests in flight (Little's law) describe the drain as much as concurrency {}{}{}; the client was not short of CPU (Baton's own process used {cpu:.0}% of this machine's){}",
            l.concurrency,
            per_level,
            per_level as f64 / l.concurrency as f64,
            if measured {
                pct(share)
            } else {
                format!("about {} (estimated from the requests per level)", pct(share))
            },
            l.concurrency,
            l.requests_per_second,
            l.littles_law.effective_concurrency,
            l.concurrency,
            l.littles_law
                .in_flight_while_sending
                .map(|s| format!(
                    "; while it had requests to send it kept {s:.1} in flight"
                ))
                .unwrap_or_default(),
            if busy(Some(&l.host_usage)) {
                " (but see client_bound)"
            } else {
                ""
            },
            if others.is_empty() {
                String::new()
            } else {
                format!(" (also at concurrency {})", others.join(", "))
            }
        ),
        remedy: format!(
            "give each level at least {SHORT_ROUNDS} rounds of its concurrency in requests (`--requests {}` for concurrency {top}), or a length in time (`--duration 10`: the first fifth warms up and only the steady window counts)",
            SHORT_ROUNDS * top as u64
        ),
        figures: figures(&[
            ("concurrency", l.concurrency as f64),
            ("requests", per_level as f64),
            ("ramp_down_share", share),
            ("in_flight", l.littles_law.effective_concurrency),
            ("process_cpu_percent", cpu),
        ]),
    });
}

/// The measuring machine, not the pool, set the pace.
pub(super) fn client_bound(run: &Run, out: &mut Vec<Finding>) {
    // (level, sustained in flight, reason)
    let mut hits: Vec<(&Level, f64, String)> = Vec::new();
    for (l, e) in &run.levels {
        if l.successful_requests == 0 || l.concurrency == 0 {
            continue;
        }
        let failed_share = l.failed_requests as f64 / l.requests.max(1) as f64;
        if failed_share > CLIENT_MAX_FAILED {
            continue;
        }
        let c = l.concurrency as f64;
        // While the client still had requests to send, it should have kept
        // them all out; after that the level drains (a short level, not
        // the client). Runs recorded before that was measured: Little's law
        // over the whole level, unless the level looks short.
        let sustained = match l.littles_law.in_flight_while_sending {
            Some(s) => Some(s),
            None if !short(run, l) => Some(l.littles_law.effective_concurrency),
            None => None,
        };
        if let Some(sustained) = sustained.filter(|s| *s < CLIENT_LITTLE_MIN * c) {
            let wait = e.map(|e| e.client_wait_ms).unwrap_or(0.0);
            let law = match l.littles_law.in_flight_while_sending {
                Some(_) => format!(
                    "while it had requests to send, the client kept {sustained:.1} in flight"
                ),
                None => format!(
                    "Little's law: {:.2} req/s x {:.2} s = {sustained:.1} requests in flight",
                    l.requests_per_second, l.avg_response_time,
                ),
            };
            hits.push((
                l,
                sustained,
                format!(
                    "{law}{}",
                    if wait > 0.0 {
                        format!(
                            "; each request first waited {} in the client for a free connection",
                            fmt_s(wait)
                        )
                    } else {
                        String::new()
                    }
                ),
            ));
        } else if let Some(expected) = expected_rps(run, l.concurrency)
            && busy(Some(&l.host_usage))
            && l.requests_per_second < CLIENT_CPU_SHORTFALL * expected
        {
            hits.push((
                l,
                c * l.requests_per_second / expected,
                format!(
                    "{:.2} req/s where the studios alone promise {:.2} at this concurrency, with Baton's own process using {:.0}% of this machine's CPU",
                    l.requests_per_second, expected, l.host_usage.process_cpu_avg_percent
                ),
            ));
        } else if let Some(b) = e.and_then(|e| e.baton.as_ref())
            && b.samples >= MIN_BATON_SAMPLES
            && b.client_in_flight_avg >= 1.0
            && b.in_flight_avg < CLIENT_BATON_MIN * b.client_in_flight_avg
        {
            hits.push((
                l,
                b.in_flight_avg * c / b.client_in_flight_avg,
                format!(
                    "Baton held {:.1} requests on average while the client had {:.1} out: the rest were stuck in the client machine",
                    b.in_flight_avg, b.client_in_flight_avg
                ),
            ));
        }
    }
    let Some((l, sustained, why)) = hits
        .iter()
        .min_by(|a, b| (a.1 / a.0.concurrency as f64).total_cmp(&(b.1 / b.0.concurrency as f64)))
    else {
        return;
    };
    let cpu = l.host_usage.process_cpu_avg_percent;
    let others: Vec<String> = hits
        .iter()
        .filter(|h| h.0.concurrency != l.concurrency)
        .map(|h| h.0.concurrency.to_string())
        .collect();
    out.push(Finding {
        cause: Cause::ClientBound,
        worker: None,
        severity: Severity::Warning,
        evidence: format!(
            "at concurrency {} only {:.1} requests were in flight on average ({why}){}{}; the figures there describe the client, not the pool",
            l.concurrency,
            sustained,
            if why.contains("CPU") {
                String::new()
            } else {
                format!("; Baton's own process used {cpu:.0}% of this machine's CPU")
            },
            if others.is_empty() {
                String::new()
            } else {
                format!(" (also at concurrency {})", others.join(", "))
            }
        ),
        remedy: if hits.iter().any(|h| h.2.contains("free connection")) {
            "let the client open as many connections as the concurrency it is asked for (its connection cap held the requests back); the pool itself was not the limit".to_string()
        } else {
            "run the benchmark from a machine with spare CPU (not one of the studios), close other heavy programs and raise the open-files limit (`ulimit -n 4096`); the pool itself was not the limit".to_string()
        },
        figures: figures(&[
            ("concurrency", l.concurrency as f64),
            ("in_flight", *sustained),
            ("ratio", sustained / l.concurrency as f64),
            ("process_cpu_percent", cpu),
        ]),
    });
}

/// Baton's own added latency: through Baton at concurrency 1 against the
/// same studios measured directly.
pub(super) fn balancer_overhead(run: &Run, out: &mut Vec<Finding>) {
    let Some((l1, Some(e))) = run.levels.iter().find(|(l, _)| l.concurrency == 1) else {
        return;
    };
    if busy(Some(&l1.host_usage)) || busy(run.ev.and_then(|e| e.probe_host.as_ref())) {
        return;
    }
    let (mut diff, mut base, mut n) = (0.0, 0.0, 0u64);
    for s in &run.studios {
        let (Some(w), Some(alone)) = (e.workers.get(&s.id), s.single()) else {
            continue;
        };
        if w.ok < MIN_REQUESTS {
            continue;
        }
        diff += (w.latency_ms.p50 - alone.detail.latency_ms.p50) * w.ok as f64;
        base += alone.detail.latency_ms.p50 * w.ok as f64;
        n += w.ok;
    }
    if n == 0 {
        return;
    }
    let (added, direct) = (diff / n as f64, base / n as f64);
    if !(added >= OVERHEAD_MIN_MS && direct > 0.0 && added / direct >= OVERHEAD_MIN_SHARE) {
        return;
    }
    out.push(Finding {
        cause: Cause::BalancerOverhead,
        worker: None,
        severity: Severity::Warning,
        evidence: format!(
            "one request at a time takes {} through Baton against {} sent to the same studios directly: Baton adds {} ({})",
            fmt_s(direct + added),
            fmt_s(direct),
            fmt_s(added),
            pct(added / direct)
        ),
        remedy: "run Baton on a machine wired to the studios' network (not over Wi-Fi or a VPN) with spare CPU, use a release build, and look at `BATON_LOG=debug` for retries".to_string(),
        figures: figures(&[("added_ms", added), ("direct_ms", direct)]),
    });
}
