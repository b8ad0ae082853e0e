//! One point of the search: a closed loop at one concurrency, long enough
//! for its percentiles, each request with a prompt of its own (a fresh seed
//! per point and per request), so a studio's prompt cache cannot make a
//! point look better than the agents' own, different, prompts would.

use std::time::Duration;

use serde_json::Value;

use crate::bench::load::{self, AnswerLimits, LoadReport, LoadSpec, Progress, RunOptions};
use crate::bench::report::{CapacityPoint, LimitedBy, Slo};

/// Answers a point gets at least, whatever its concurrency: enough for a
/// p95 (at one agent that is 20 answers one after another, the longest
/// point of a search).
pub const MIN_SAMPLES: u64 = P95_SAMPLES;
/// Answers per agent in a point: the first round starts together, the
/// later ones show the steady state, and one agent in twenty that waits
/// each round shows in the p95.
pub const ROUNDS: u64 = 4;
/// Fewer answers than this leave no answer above the 95th percentile.
pub const P95_SAMPLES: u64 = 20;
/// More failures than this share miss the level.
pub const MAX_FAILED_SHARE: f64 = 0.01;

/// Where a point's requests go and what they ask.
#[derive(Clone, Debug)]
pub struct Target {
    /// The full endpoint, e.g. `http://127.0.0.1:8421/v1/chat/completions`.
    pub url: String,
    pub api_key: Option<String>,
    /// A streamed chat request; its messages are replaced per request.
    pub body: Value,
    /// The prompt each request's own is made from.
    pub prompt: String,
    /// A studio measured directly: its answers are named after it.
    pub worker: Option<String>,
}

/// How long each point runs: `requests` in all, or `duration`; neither
/// gives [`MIN_SAMPLES`] or [`ROUNDS`] per agent, whichever is more.
#[derive(Clone, Copy, Debug, Default)]
pub struct Length {
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
}

impl Length {
    /// Requests for a point at `concurrency` (`None`: it runs for a time).
    pub fn requests(&self, concurrency: usize) -> Option<u64> {
        match (self.requests, self.duration) {
            (Some(n), _) => Some(n),
            (None, Some(_)) => None,
            (None, None) => Some(MIN_SAMPLES.max(ROUNDS * concurrency as u64)),
        }
    }
}

/// The limits a single answer must meet to count toward goodput.
pub fn limits(slo: &Slo) -> AnswerLimits {
    AnswerLimits {
        ttft: slo
            .ttft_p95_ms
            .map(|ms| Duration::from_secs_f64(ms / 1000.0)),
        min_tokens_per_s: slo.tokens_per_s,
    }
}

/// Measure one point; `seed` makes its prompts its own.
pub async fn measure(
    client: &reqwest::Client,
    target: &Target,
    length: Length,
    slo: &Slo,
    concurrency: usize,
    seed: u64,
    progress: Option<Progress>,
) -> CapacityPoint {
    let requests = length.requests(concurrency);
    // One prompt per request (a time-bound point cycles through 1,024).
    let distinct = requests.unwrap_or(1024).clamp(1, 1024);
    let prompts = (0..distinct)
        .map(|i| format!("[{seed:016x}-{i}] {}", target.prompt))
        .collect();
    let spec = LoadSpec {
        url: target.url.clone(),
        body: target.body.clone(),
        concurrency,
        duration: if requests.is_some() {
            None
        } else {
            length.duration
        },
        requests,
        api_key: target.api_key.clone(),
        prompts,
        warmup: length.duration.map(|d| d / 5).unwrap_or_default(),
    };
    let opts = RunOptions {
        progress,
        worker: target.worker.clone(),
        limits: Some(limits(slo)),
        ..RunOptions::default()
    };
    let report = load::run_with(client, &spec, opts).await;
    judge(&report, slo, concurrency)
}

/// A point's figures, and whether they meet the level.
pub fn judge(r: &LoadReport, slo: &Slo, concurrency: usize) -> CapacityPoint {
    let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
        (!h.is_empty()).then(|| h.value_at_quantile(q) as f64)
    };
    let ttft_p95_ms = q(&r.ttft_us, 0.95).map(|us| us / 1000.0).unwrap_or(0.0);
    let tokens_per_s_p50 = q(&r.tpot_us, 0.5).map(|us| 1e6 / us).unwrap_or(0.0);
    let total = r.ok + r.failed;
    let mut misses = Vec::new();
    // Errors first: a failing pool's timings describe the answers it gave.
    if r.ok == 0 || r.failed as f64 > total as f64 * MAX_FAILED_SHARE {
        misses.push(LimitedBy::Errors);
    }
    if slo.ttft_p95_ms.is_some_and(|limit| ttft_p95_ms > limit) {
        misses.push(LimitedBy::TtftP95);
    }
    // No rate measured (one-token answers) is no evidence of a slow one.
    if slo
        .tokens_per_s
        .is_some_and(|min| tokens_per_s_p50 > 0.0 && tokens_per_s_p50 < min)
    {
        misses.push(LimitedBy::TokensPerS);
    }
    let rps = r.window_requests_per_second();
    CapacityPoint {
        concurrency,
        meets: misses.is_empty(),
        misses,
        ttft_p95_ms,
        tokens_per_s_p50,
        rps,
        goodput_rps: if r.ok == 0 {
            0.0
        } else {
            rps * r.good as f64 / r.ok as f64
        },
        output_tokens_per_s: r.window_tokens_per_second(),
        requests: total,
        failed: r.failed,
    }
}

/// A warning for a point too short for its p95, if it was.
pub fn too_few(p: &CapacityPoint, who: &str) -> Option<String> {
    (p.requests < P95_SAMPLES).then(|| {
        format!(
            "{who} at concurrency {}: {} answer(s), too few for a p95 ({P95_SAMPLES} needed); lengthen the points with --requests or --duration",
            p.concurrency, p.requests
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_runs_four_rounds_or_twenty_answers_unless_told() {
        let l = Length::default();
        assert_eq!(l.requests(1), Some(20));
        assert_eq!(l.requests(16), Some(64));
        let told = Length {
            requests: Some(12),
            duration: None,
        };
        assert_eq!(told.requests(100), Some(12));
        let timed = Length {
            requests: None,
            duration: Some(Duration::from_secs(3)),
        };
        assert_eq!(timed.requests(8), None);
    }

    #[test]
    fn an_answer_meets_the_limits_on_its_own_first_token_and_rate() {
        let l = limits(&Slo {
            ttft_p95_ms: Some(500.0),
            tokens_per_s: Some(20.0),
        });
        let ms = Duration::from_millis;
        // 11 tokens: 10 after the first, in 0.4 s = 25 tok/s.
        assert!(l.met(Some(ms(300)), 11, ms(700)));
        assert!(!l.met(Some(ms(600)), 11, ms(1000)), "first token late");
        assert!(!l.met(Some(ms(300)), 11, ms(900)), "16.7 tok/s");
        assert!(l.met(Some(ms(300)), 1, ms(300)), "one token: no rate");
    }
}
