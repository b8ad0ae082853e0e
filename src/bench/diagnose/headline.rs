//! The headline: scaling efficiency (the pool's best throughput over the
//! sum of what each studio gives alone), a short waterfall of where the
//! missing part went, and where a request's time went at the knee.

use std::collections::BTreeSet;

use super::facts::{Run, Studio, median, pct};
use super::thresholds::*;
use crate::bench::report::{Cause, Finding, Severity, TimeSplit, WaterfallStep};

type Headline = (
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Vec<WaterfallStep>,
);

/// Scaling efficiency and where the missing part went.
pub(super) fn headline(run: &Run, findings: &[Finding]) -> Headline {
    let best = run
        .levels
        .iter()
        .map(|(l, e)| (*l, *e))
        .filter(|(l, _)| l.successful_requests > 0)
        .max_by(|a, b| a.0.requests_per_second.total_cmp(&b.0.requests_per_second));
    let dead: BTreeSet<&str> = findings
        .iter()
        .filter(|f| {
            f.cause == Cause::DeadStudio
                || (f.severity == Severity::Critical && f.cause == Cause::NetworkBound)
        })
        .filter_map(|f| f.worker.as_deref())
        .collect();
    let alive: Vec<&Studio> = run
        .studios
        .iter()
        .filter(|s| !dead.contains(s.id.as_str()))
        .collect();
    let measured: Vec<(&Studio, f64)> = alive
        .iter()
        .filter_map(|s| s.alone_rps().map(|r| (*s, r)))
        .collect();
    let scaling = run
        .r
        .worker_scaling_benchmark
        .iter()
        .filter(|s| s.workers > 1)
        .max_by_key(|s| s.workers);
    let Some((best, best_ev)) = best else {
        // No concurrency sweep: the scaling sweep, if any, says it.
        return match scaling {
            Some(s) => (
                format!(
                    "{} studios give {:.2}x one studio ({} scaling efficiency, {:.2} req/s)",
                    s.workers,
                    s.speedup,
                    pct(s.scaling_efficiency),
                    s.requests_per_second
                ),
                Some(s.scaling_efficiency),
                Some(s.requests_per_second),
                None,
                Vec::new(),
            ),
            None => (
                "no level finished with a successful request".into(),
                None,
                None,
                None,
                Vec::new(),
            ),
        };
    };
    let pool = best.requests_per_second;
    if measured.is_empty() || measured.len() < alive.len() {
        // Not measured alone: the scaling sweep, if any, says it.
        if let Some(s) = scaling {
            return (
                format!(
                    "{} studios give {:.2}x one studio ({} scaling efficiency); best {:.2} req/s at concurrency {}",
                    s.workers,
                    s.speedup,
                    pct(s.scaling_efficiency),
                    pool,
                    best.concurrency
                ),
                Some(s.scaling_efficiency),
                Some(pool),
                None,
                Vec::new(),
            );
        }
        return (
            format!(
                "best {:.2} req/s at concurrency {} (the studios were not measured alone, so there is no scaling efficiency)",
                pool, best.concurrency
            ),
            None,
            Some(pool),
            None,
            Vec::new(),
        );
    }
    let alive_sum: f64 = measured.iter().map(|(_, r)| r).sum();
    let alive_slots: u32 = alive.iter().map(|s| s.slots).sum();
    let per_slot = median(
        measured
            .iter()
            .map(|(s, r)| r / f64::from(s.slots.max(1)))
            .collect(),
    )
    .unwrap_or(0.0);
    let mut steps = Vec::new();
    let mut ideal = alive_sum;
    for s in run.studios.iter().filter(|s| dead.contains(s.id.as_str())) {
        let est = per_slot * f64::from(s.slots.max(1));
        ideal += est;
        steps.push((
            format!("{} down (estimated from the others' rate per slot)", s.id),
            Some(Cause::DeadStudio),
            Some(s.id.clone()),
            est,
        ));
    }
    let top = run
        .levels
        .iter()
        .map(|(l, _)| l.concurrency)
        .max()
        .unwrap_or(0);
    if alive_slots > 0 && (top as u32) < alive_slots {
        let lost = alive_sum * (1.0 - top as f64 / f64::from(alive_slots));
        steps.push((
            format!("the sweep stopped at concurrency {top}, below the pool's {alive_slots} slots"),
            None,
            None,
            lost,
        ));
    }
    if best.littles_law.client_bound && best.littles_law.ratio > 0.0 {
        steps.push((
            "the client held requests back".into(),
            Some(Cause::ClientBound),
            None,
            pool * (1.0 / best.littles_law.ratio - 1.0),
        ));
    }
    if best.failed_requests > 0 {
        steps.push((
            "failed requests".into(),
            Some(Cause::FlakyStudio),
            None,
            best.requests_per_second * best.failed_requests as f64
                / best.successful_requests.max(1) as f64,
        ));
    }
    // Whatever the named parts do not explain.
    let named: f64 = steps.iter().map(|s| s.3).sum();
    let rest = ideal - pool - named;
    let rest_label = if best_ev.and_then(|e| e.baton.as_ref()).is_some() {
        "Baton, network and uneven completion"
    } else {
        "network and uneven completion"
    };
    // Below 2% of the sum is measurement noise, not a loss.
    if ideal > 0.0 && rest / ideal >= 0.02 {
        steps.push((rest_label.into(), None, None, rest));
    }
    let waterfall: Vec<WaterfallStep> = steps
        .into_iter()
        .filter(|s| s.3 > 0.0)
        .map(|(label, cause, worker, rps)| WaterfallStep {
            label,
            cause,
            worker,
            requests_per_second: rps,
            share: if ideal > 0.0 { rps / ideal } else { 0.0 },
        })
        .collect();
    let efficiency = if ideal > 0.0 { pool / ideal } else { 0.0 };
    let n = run.studios.len();
    (
        format!(
            "pool {:.2} req/s at concurrency {} = {} of the {:.2} req/s its {} give{} alone",
            pool,
            best.concurrency,
            // A few percent above the sum is noise of short measurements.
            pct(efficiency.min(1.0)),
            ideal,
            if n == 1 {
                "studio".to_string()
            } else {
                format!("{n} studios")
            },
            if n == 1 { "s" } else { "" }
        ),
        Some(efficiency),
        Some(pool),
        Some(ideal),
        waterfall,
    )
}

/// Where a request's time went at the knee (or the best level).
pub(super) fn time_split(run: &Run, findings: &[Finding]) -> Option<TimeSplit> {
    let knee_c = findings
        .iter()
        .find(|f| f.cause == Cause::Saturated)
        .and_then(|f| f.figures.get("best_concurrency"))
        .map(|c| *c as usize);
    let (l, e) = run
        .levels
        .iter()
        .filter(|(l, e)| l.successful_requests > 0 && e.is_some())
        .find(|(l, _)| Some(l.concurrency) == knee_c)
        .or_else(|| {
            run.levels
                .iter()
                .filter(|(l, e)| l.successful_requests > 0 && e.is_some())
                .max_by(|a, b| a.0.requests_per_second.total_cmp(&b.0.requests_per_second))
        })?;
    let e = (*e)?;
    let mut acc = [(0.0, 0u64); 6]; // outside, queue, load, prefill, decode, ttft
    let mut source = None;
    for w in e.workers.values() {
        let Some(s) = &w.server else { continue };
        if source.is_none() {
            source.clone_from(&s.source);
        }
        let n = s.requests.unwrap_or(0);
        for (i, v) in [
            s.outside_ms,
            s.queue_ms,
            s.load_ms,
            s.prefill_ms,
            s.decode_ms,
            s.ttft_ms,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = v {
                acc[i].0 += v * n as f64;
                acc[i].1 += n;
            }
        }
    }
    let get = |i: usize| (acc[i].1 > 0).then(|| acc[i].0 / acc[i].1 as f64);
    let baton_queue_ms = e
        .baton
        .as_ref()
        .filter(|b| b.samples >= MIN_BATON_SAMPLES && l.requests_per_second > 0.0)
        .map(|b| b.queue_avg / l.requests_per_second * 1000.0);
    Some(TimeSplit {
        concurrency: l.concurrency,
        source,
        total_ms: Some(l.avg_response_time * 1000.0),
        ttft_ms: (l.ttft_avg > 0.0).then_some(l.ttft_avg * 1000.0),
        baton_queue_ms,
        outside_ms: get(0),
        queue_ms: get(1),
        load_ms: get(2),
        prefill_ms: get(3),
        decode_ms: get(4),
        ..TimeSplit::default()
    })
}
