//! A level of the results file from the load runs made at it (one, or
//! several with `--repeat`): steady-state rates, merged histograms, each
//! studio's share.

use std::collections::BTreeMap;

use super::LoadReport;
use crate::bench::report::{HostUsage, Level, LittlesLaw, WorkerShare};

/// Below this share of the concurrency asked in flight, the level did not
/// run at it (tail effects of a short run cost ~5%).
const CLIENT_BOUND_RATIO: f64 = 0.8;

fn secs(us: f64) -> f64 {
    us / 1e6
}

impl Level {
    /// Summarise one (or several repeated) load runs at `concurrency`.
    pub fn from_runs(concurrency: usize, runs: &[LoadReport], host_usage: HostUsage) -> Level {
        let ok: u64 = runs.iter().map(|r| r.ok).sum();
        let failed: u64 = runs.iter().map(|r| r.failed).sum();
        let total = ok + failed;
        // Rates are steady-state (window) figures, averaged over repeats.
        let n = runs.len().max(1) as f64;
        let rps = runs
            .iter()
            .map(LoadReport::window_requests_per_second)
            .sum::<f64>()
            / n;
        let tps = runs
            .iter()
            .map(LoadReport::window_tokens_per_second)
            .sum::<f64>()
            / n;
        let mut latency = runs[0].latency_us.clone();
        let mut ttft = runs[0].ttft_us.clone();
        let mut tpot = runs[0].tpot_us.clone();
        for r in &runs[1..] {
            let _ = latency.add(&r.latency_us);
            let _ = ttft.add(&r.ttft_us);
            let _ = tpot.add(&r.tpot_us);
        }
        let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
            if h.is_empty() {
                0.0
            } else {
                secs(h.value_at_quantile(q) as f64)
            }
        };
        let mean =
            |h: &hdrhistogram::Histogram<u64>| if h.is_empty() { 0.0 } else { secs(h.mean()) };
        let mut per_worker: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in runs {
            for (w, c) in &r.per_worker {
                per_worker.entry(w.clone()).or_default().0 += c;
            }
            for (w, c) in &r.per_worker_failed {
                per_worker.entry(w.clone()).or_default().1 += c;
            }
        }
        let worker_stats = shares(&per_worker, ok);
        let avg = mean(&latency);
        let effective = rps * avg;
        let ratio = if concurrency == 0 {
            0.0
        } else {
            effective / concurrency as f64
        };
        let elapsed: f64 = runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let sending: f64 = runs.iter().map(|r| r.sending.as_secs_f64()).sum();
        let while_sending =
            (sending > 0.0).then(|| runs.iter().map(|r| r.sending_busy_s).sum::<f64>() / sending);
        let mut errors: Vec<String> = runs.iter().flat_map(|r| r.errors.iter().cloned()).collect();
        errors.truncate(5);
        Level {
            concurrency,
            requests: total,
            successful_requests: ok,
            failed_requests: failed,
            duration_s: runs.iter().map(|r| r.elapsed.as_secs_f64()).sum(),
            requests_per_second: rps,
            success_rate: if total == 0 {
                0.0
            } else {
                100.0 * ok as f64 / total as f64
            },
            avg_response_time: avg,
            p50_response_time: q(&latency, 0.5),
            p95_response_time: q(&latency, 0.95),
            p99_response_time: q(&latency, 0.99),
            ttft_avg: mean(&ttft),
            ttft_p50: q(&ttft, 0.5),
            ttft_p95: q(&ttft, 0.95),
            tpot_avg: mean(&tpot),
            output_tokens_per_second: tps,
            tokens_approximate: runs.iter().any(|r| r.approximate_tokens),
            worker_stats,
            littles_law: LittlesLaw {
                effective_concurrency: effective,
                ratio,
                // Queueing inside Baton counts as latency, so a healthy run
                // sits near 1.0; well below means the client held requests,
                // unless it kept them all out while it had any to send (the
                // shortfall is then the drain at the end).
                client_bound: ok > 0
                    && ratio < CLIENT_BOUND_RATIO
                    && while_sending.is_none_or(|s| s < CLIENT_BOUND_RATIO * concurrency as f64),
                in_flight_while_sending: while_sending,
                ramp_down_share: (elapsed > 0.0).then(|| (1.0 - sending / elapsed).max(0.0)),
            },
            host_usage,
            errors,
            repeats_rps: if runs.len() > 1 {
                runs.iter()
                    .map(LoadReport::window_requests_per_second)
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Per-worker success counts and shares of the successful requests.
pub fn shares(per_worker: &BTreeMap<String, (u64, u64)>, ok: u64) -> BTreeMap<String, WorkerShare> {
    per_worker
        .iter()
        .map(|(w, (done, failed))| {
            let all = done + failed;
            (
                w.clone(),
                WorkerShare {
                    requests: all,
                    failed: *failed,
                    success_rate: if all == 0 {
                        0.0
                    } else {
                        100.0 * *done as f64 / all as f64
                    },
                    load_percentage: if ok == 0 {
                        0.0
                    } else {
                        100.0 * *done as f64 / ok as f64
                    },
                },
            )
        })
        .collect()
}
