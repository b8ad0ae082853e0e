//! The diagnosis: what limited a benchmark run, named per studio, with the
//! evidence and the change to make. A pure function of the results (and,
//! for runs that kept it, the evidence), so a stored run can be diagnosed
//! again with `baton diagnose` and every rule can be tested on hand-made
//! inputs.
//!
//! The headline is the scaling efficiency: the pool's best throughput over
//! the sum of what each studio gives alone, with a short waterfall of
//! where the missing part went. Findings follow, most severe first; a
//! healthy pool gets none.
//!
//! - `thresholds`: every limit a rule uses, each with why
//! - `facts`: what the rules read, gathered once from the run
//! - `failing`: dead and flaky studios
//! - `serving`: serialized slots, cold models
//! - `speed`: network-bound and slow studios
//! - `pool`: saturation, a client-bound run, a level too short for its
//!   concurrency, Baton's own overhead
//! - `headline`: scaling efficiency, the waterfall, the time split
//! - `render`: the verdict block printed after the tables
//!
//! The types it fills in are the results file's (`bench::report`).

mod facts;
mod failing;
mod headline;
mod pool;
#[cfg(test)]
mod pool_tests;
mod render;
mod serving;
mod speed;
#[cfg(test)]
mod tests;
mod thresholds;

use facts::Run;
use failing::{dead_studios, flaky_studios};
use headline::{headline, time_split};
use pool::{balancer_overhead, client_bound, saturated, short_levels};
use serving::{cold_models, serialized};
use speed::{network_bound, slow_studios};

// The types live with the results file; these paths are kept for callers.
use crate::bench::report::BenchResult;
pub use crate::bench::report::{Cause, Diagnosis, Finding, Severity, TimeSplit, WaterfallStep};
pub use render::render;

/// Diagnose a run. Pure: the same result always gives the same diagnosis.
pub fn diagnose(r: &BenchResult) -> Diagnosis {
    let run = Run::new(r);
    let mut findings = Vec::new();
    let dead = dead_studios(&run, &mut findings);
    flaky_studios(&run, &dead, &mut findings);
    let serial = serialized(&run, &dead, &mut findings);
    cold_models(&run, &dead, &mut findings);
    network_bound(&run, &dead, &mut findings);
    slow_studios(&run, &dead, &serial, &mut findings);
    saturated(&run, &mut findings);
    client_bound(&run, &mut findings);
    short_levels(&run, &mut findings);
    balancer_overhead(&run, &mut findings);
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(a.cause.cmp(&b.cause))
            .then(a.worker.cmp(&b.worker))
    });
    let problems: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity > Severity::Info)
        .collect();
    let verdict = if problems.is_empty() {
        "no problem found".to_string()
    } else {
        let names: Vec<String> = problems
            .iter()
            .map(|f| match &f.worker {
                Some(w) => format!("{} ({w})", f.cause.as_str()),
                None => f.cause.as_str().to_string(),
            })
            .collect();
        format!(
            "{} problem{} found: {}",
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            names.join(", ")
        )
    };
    let healthy = problems.is_empty();
    let (headline, efficiency, pool, ideal, waterfall) = headline(&run, &findings);
    Diagnosis {
        verdict,
        healthy,
        headline,
        scaling_efficiency: efficiency,
        pool_requests_per_second: pool,
        studios_alone_requests_per_second: ideal,
        waterfall,
        time_split: time_split(&run, &findings),
        findings,
        basis: if run.ev.is_some() {
            "evidence".into()
        } else {
            "tables".into()
        },
    }
}
