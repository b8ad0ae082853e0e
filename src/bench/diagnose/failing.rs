//! Studios that fail: dead (served nothing, or ended the run down) and
//! flaky (failed a share of what they were given). A dead studio gets one
//! finding and nothing else.

use std::collections::BTreeSet;

use super::facts::{Run, Studio, figures, pct};
use super::thresholds::*;
use crate::bench::report::{Cause, Finding, Severity};

/// How to start a server of this kind, for a studio that refuses.
pub(super) fn start_hint(kind: &str) -> String {
    match kind.parse::<crate::studio::StudioKind>() {
        Ok(k) => crate::studio::start_server_hint(k).to_string(),
        Err(_) => "start the server".to_string(),
    }
}

pub(super) fn dead_remedy(s: &Studio, why: &str) -> String {
    let w = why.to_lowercase();
    let fix = if w.contains("refused") {
        format!(
            "nothing listens on {}:{}: {}",
            s.host,
            s.port,
            start_hint(&s.kind)
        )
    } else if w.contains("timed out") || w.contains("timeout") || w.contains("unreachable") {
        format!(
            "{} does not answer at all: it is asleep, off the network, at another address, or a firewall drops its packets; wake it (and turn off sleep), check its IP, then run `baton preflight`",
            s.host
        )
    } else if w.contains("404") || w.contains("not found") || w.contains("model") {
        "it does not serve the benchmarked model: load the model on it, or fix `model` in the workers file".to_string()
    } else {
        "check that its server runs and answers (`baton preflight` names the failing step)"
            .to_string()
    };
    format!(
        "{fix}. Baton routes around it meanwhile; set `\"enabled\": false` on it in the workers file until it is back"
    )
}

/// Studios that served nothing because they were down (or left the run
/// down). They get one critical finding and nothing else.
pub(super) fn dead_studios<'a>(run: &'a Run, out: &mut Vec<Finding>) -> BTreeSet<&'a str> {
    let mut dead = BTreeSet::new();
    let connect_timeout_ms = run.ev.and_then(|e| e.connect_timeout_ms);
    let top = run
        .levels
        .iter()
        .map(|(l, _)| l.concurrency)
        .max()
        .unwrap_or(0);
    let served_ids: BTreeSet<&str> = run
        .studios
        .iter()
        .filter(|s| run.served(&s.id) > 0)
        .map(|s| s.id.as_str())
        .collect();
    for s in &run.studios {
        if s.excluded() {
            let f = s.facts.and_then(|f| f.preflight.as_ref());
            let problems = f.map(|f| f.problems.join("; ")).unwrap_or_default();
            let failed: Vec<&str> = f
                .map(|f| f.failed_checks.iter().map(String::as_str).collect())
                .unwrap_or_default();
            // Only the ping failed, on loss short of 100% or on RTT: the
            // studio is up, its network is not good enough.
            let network_only =
                failed == ["ping"] && f.and_then(|f| f.ping_loss_pct).is_some_and(|l| l < 100.0);
            let remedy = f
                .and_then(|f| f.remedy.clone())
                .unwrap_or_else(|| dead_remedy(s, &problems));
            out.push(Finding {
                cause: if network_only {
                    Cause::NetworkBound
                } else {
                    Cause::DeadStudio
                },
                worker: Some(s.id.clone()),
                severity: Severity::Critical,
                evidence: format!(
                    "failed preflight and was left out of the run (--exclude-unhealthy): {problems}; the pool ran without its {} slot(s)",
                    s.slots
                ),
                remedy: format!(
                    "{remedy}; then run `baton bench` again without --exclude-unhealthy"
                ),
                figures: figures(&[("slots", f64::from(s.slots))]),
            });
            dead.insert(s.id.as_str());
            continue;
        }
        let served = run.served(&s.id);
        let c = run.balancer(&s.id);
        let probe_error = s
            .probe
            .filter(|p| !p.wrong_model)
            .and_then(|p| p.error.clone());
        let went_down = served > 0 && c.ended_down() && c.last_served == 0;
        let never = served == 0
            && (probe_error.is_some()
                || c.ended_down()
                || c.failed() > 0
                // Without evidence: the others' slots were all busy at
                // the top level, so a live studio would have had work.
                || (run.ev.is_none()
                    && !served_ids.is_empty()
                    && top > run.slots_of(&served_ids) as usize));
        if !(never || went_down) {
            continue;
        }
        let mut parts = Vec::new();
        if let Some(e) = &probe_error {
            parts.push(format!("measured alone it failed: {e}"));
        }
        if went_down {
            parts.push(format!(
                "it served {served} request(s), then went down and served nothing at the last level"
            ));
        } else {
            parts.push("it served no request in the whole run".to_string());
        }
        if c.seen {
            let failures: Vec<String> = c
                .failures
                .iter()
                .filter(|(_, v)| **v > 0)
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            let timeouts = c.failures.get("timeout").copied().unwrap_or(0);
            let cost_s = connect_timeout_ms.unwrap_or(0.0) * timeouts as f64 / 1000.0;
            if failures.is_empty() {
                parts.push(format!(
                    "Baton found it {} and never sent it a request, so it cost the pool no request time",
                    c.last_state.as_deref().unwrap_or("down")
                ));
            } else {
                parts.push(format!(
                    "Baton's attempts on it failed ({}){}, then it was ejected",
                    failures.join(", "),
                    if cost_s > 0.0 {
                        format!(", costing about {cost_s:.1} s of request time in connect timeouts")
                    } else {
                        String::new()
                    }
                ));
            }
        }
        let why = probe_error
            .clone()
            .or(c.last_error.clone())
            .unwrap_or_default();
        out.push(Finding {
            cause: Cause::DeadStudio,
            worker: Some(s.id.clone()),
            severity: Severity::Critical,
            evidence: parts.join("; "),
            remedy: dead_remedy(s, &why),
            figures: figures(&[
                ("served", served as f64),
                ("failed_attempts", c.failed() as f64),
                ("slots", f64::from(s.slots)),
            ]),
        });
        dead.insert(s.id.as_str());
    }
    dead
}

pub(super) fn flaky_remedy(class: &str) -> &'static str {
    match class {
        "status_5xx" | "http_5xx" => {
            "it answers with server errors: read its server log (out of memory, context overflow, a crashed backend); give it fewer slots (max_concurrent_requests) if it fails under load"
        }
        "stream" => {
            "its answers are cut mid-stream: the server crashes or restarts, or the link drops (Wi-Fi, sleep); use Ethernet and check its log"
        }
        "timeout" => {
            "it stops answering for a while: packet loss, sleep or an overloaded server; check `baton preflight` for loss and keep the studio awake"
        }
        "connect" => {
            "its server refuses connections now and then: it restarts or runs out of connections; check that it stays up"
        }
        _ => "check its server log for errors",
    }
}

/// Studios that served, but failed attempts along the way.
pub(super) fn flaky_studios(run: &Run, dead: &BTreeSet<&str>, out: &mut Vec<Finding>) {
    for s in run.studios.iter().filter(|s| !dead.contains(s.id.as_str())) {
        let c = run.balancer(&s.id);
        let mut classes = c.failures.clone();
        let (mut failed, mut requests) = if c.seen {
            (c.failed(), c.requests)
        } else {
            // Older runs: the failures the client saw, named by studio.
            let mut f = 0;
            let mut n = 0;
            for (l, _) in &run.levels {
                if let Some(w) = l.worker_stats.get(&s.id) {
                    f += w.failed;
                    n += w.requests;
                }
            }
            if f > 0 {
                *classes.entry("failed".into()).or_default() += f;
            }
            (f, n)
        };
        for r in [s.single(), s.full()].into_iter().flatten() {
            failed += r.detail.failed;
            requests += r.detail.ok + r.detail.failed;
            for (k, v) in &r.detail.errors {
                // The client's name for Baton's `status_5xx`.
                let k = if k == "http_5xx" {
                    "status_5xx"
                } else {
                    k.as_str()
                };
                *classes.entry(k.to_string()).or_default() += v;
            }
        }
        if let Some(p) = s
            .probe
            .filter(|p| p.error.is_none() && p.first_failures > 0)
        {
            failed += p.first_failures;
            requests += p.first_failures + 1;
        }
        if requests == 0 || failed == 0 {
            continue;
        }
        let rate = failed as f64 / requests as f64;
        if !((failed >= FLAKY_MIN_FAILURES && rate >= FLAKY_RATE) || c.ejections > 0) {
            continue;
        }
        let main = classes
            .iter()
            .max_by_key(|(_, v)| **v)
            .map(|(k, _)| k.clone())
            .unwrap_or_default();
        let client_failed_s: f64 = run
            .levels
            .iter()
            .filter_map(|(_, e)| e.and_then(|e| e.workers.get(&s.id)))
            .map(|w| w.failed_s)
            .sum();
        let list: Vec<String> = classes
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{v} {k}"))
            .collect();
        out.push(Finding {
            cause: Cause::FlakyStudio,
            worker: Some(s.id.clone()),
            severity: if rate >= FLAKY_CRITICAL_RATE {
                Severity::Critical
            } else {
                Severity::Warning
            },
            evidence: format!(
                "{failed} of {requests} attempts failed ({}: {}){}{}",
                pct(rate),
                list.join(", "),
                if c.ejections > 0 {
                    format!("; Baton ejected it {} time(s)", c.ejections)
                } else {
                    String::new()
                },
                if client_failed_s > 0.0 {
                    format!("; failed answers cost clients {client_failed_s:.1} s")
                } else {
                    String::new()
                }
            ),
            remedy: flaky_remedy(&main).to_string(),
            figures: figures(&[
                ("failed", failed as f64),
                ("attempts", requests as f64),
                ("failure_rate", rate),
                ("ejections", c.ejections as f64),
            ]),
        });
    }
}
