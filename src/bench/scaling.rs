//! The worker-scaling sweep's figures. Speedup is the user's ratio: the
//! pool's throughput over one worker's. Efficiency is judged against what
//! the same studios give alone, summed: with unequal studios a linear
//! ideal (n times the first studio) is wrong, since a studio half as fast
//! with half the slots adds a quarter of a fast one, not a whole.

use super::report::{Level, ScalingLevel, StudioProbe};

/// A probe run from fewer answers than this says nothing (as in the
/// diagnosis: one answer is an anecdote).
const MIN_ANSWERS: u64 = 2;

/// What a studio gives alone with all its slots busy (its probe's full
/// run, else one request at a time for a one-slot studio).
pub fn alone_rps(p: &StudioProbe) -> Option<f64> {
    if p.error.is_some() {
        return None;
    }
    let usable = |r: &&super::report::ProbeRun| r.detail.ok >= MIN_ANSWERS;
    p.full
        .as_ref()
        .filter(usable)
        .or(p.single.as_ref().filter(usable))
        .map(|r| r.requests_per_second)
        .filter(|r| *r > 0.0)
}

/// What the studios `ids` give alone, summed; `None` unless every one of
/// them was measured.
pub fn studios_alone(probes: &[StudioProbe], ids: &[String]) -> Option<f64> {
    ids.iter()
        .map(|id| probes.iter().find(|p| &p.worker == id).and_then(alone_rps))
        .sum()
}

/// One worker count's row. `base`: the first count measured and its
/// requests/s (one worker's throughput is derived from it when the sweep
/// does not start at 1); `alone`: what these studios give alone, summed.
pub fn level(
    ids: Vec<String>,
    concurrency: usize,
    l: &Level,
    base: (usize, f64),
    alone: Option<f64>,
) -> ScalingLevel {
    let n = ids.len();
    let one_worker = base.1 / base.0.max(1) as f64;
    let speedup = if one_worker > 0.0 {
        l.requests_per_second / one_worker
    } else {
        0.0
    };
    ScalingLevel {
        workers: n,
        worker_ids: ids,
        concurrency,
        requests_per_second: l.requests_per_second,
        speedup,
        scaling_efficiency: match alone {
            Some(a) if a > 0.0 => l.requests_per_second / a,
            // Not measured alone: every studio taken to be like the first.
            _ => speedup / n.max(1) as f64,
        },
        throughput_per_worker: l.requests_per_second / n.max(1) as f64,
        output_tokens_per_second: l.output_tokens_per_second,
        success_rate: l.success_rate,
        avg_response_time: l.avg_response_time,
        p95_response_time: l.p95_response_time,
        worker_stats: l.worker_stats.clone(),
        studios_alone_requests_per_second: alone,
    }
}

impl ScalingLevel {
    /// The ideal speedup at this count: the studios' sum alone over one
    /// worker's throughput (linear, `workers`, when they were not measured
    /// alone).
    pub fn ideal_speedup(&self) -> f64 {
        match self.studios_alone_requests_per_second {
            Some(a) if self.requests_per_second > 0.0 && self.speedup > 0.0 => {
                a * self.speedup / self.requests_per_second
            }
            _ => self.workers as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{ProbeRun, WorkerEvidence};

    fn probe(id: &str, rps: f64) -> StudioProbe {
        StudioProbe {
            worker: id.into(),
            full: Some(ProbeRun {
                concurrency: 4,
                requests_per_second: rps,
                detail: WorkerEvidence {
                    ok: 8,
                    ..WorkerEvidence::default()
                },
                ..ProbeRun::default()
            }),
            ..StudioProbe::default()
        }
    }

    #[test]
    fn unequal_studios_are_judged_against_their_sum_alone_not_a_linear_ideal() {
        // Two fast studios and one half as fast with half the slots: alone
        // 10, 10 and 2.5 req/s. The pool gives 21.6, the first alone 10.
        let probes = [probe("a", 10.0), probe("b", 10.0), probe("c", 2.5)];
        let ids: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let alone = studios_alone(&probes, &ids);
        assert_eq!(alone, Some(22.5));
        let pool = Level {
            requests_per_second: 21.6,
            ..Level::default()
        };
        let s = level(ids, 10, &pool, (1, 10.0), alone);
        assert!((s.speedup - 2.16).abs() < 1e-9, "the user's ratio is kept");
        assert!((s.scaling_efficiency - 0.96).abs() < 1e-9, "{s:?}");
        assert!((s.ideal_speedup() - 2.25).abs() < 1e-9);
        // A studio not measured alone: the old meaning, said as such.
        let partial = studios_alone(&probes[..2], &["a", "b", "c"].map(String::from));
        assert_eq!(partial, None);
        let s = level(vec!["a".into(); 3], 10, &pool, (1, 10.0), partial);
        assert!((s.scaling_efficiency - 0.72).abs() < 1e-9);
        assert_eq!(s.ideal_speedup(), 3.0);
    }
}
