//! `baton bench` runs in-process: a plan with the usual fields and an
//! observer that keeps quiet.

use std::time::Duration;

use baton::bench::run::{Gate, Mode, Plan, Target};
use baton::config::Config;

/// A concurrency sweep over the balancer on `cfg` at `levels`, `secs` per
/// level, 20-token answers, one warm-up request; set the rest with struct
/// update (`Plan { mode: Mode::Scaling, ..plan(cfg, &[], 2.0) }`).
pub fn plan(cfg: Config, levels: &[usize], secs: f64) -> Plan {
    Plan {
        mode: Mode::Concurrency,
        target: Target::Balancer(cfg),
        model: baton::sim::DEFAULT_MODEL.into(),
        max_tokens: 20,
        prompts: vec![],
        requests: None,
        duration: Some(Duration::from_secs_f64(secs)),
        warmup_requests: 1,
        repeat: 1,
        concurrency_levels: levels.to_vec(),
        worker_counts: vec![],
        gate: Gate::Require,
        probe_studios: false,
        max_connections: None,
        slo: baton::bench::capacity::DEFAULT_SLO,
    }
}

/// Progress nobody watches, for `bench::run::run` and `batch::run`.
pub struct Quiet;

impl baton::bench::run::Observer for Quiet {
    fn note(&self, _: &str) {}
    fn level_started(&self, _: &str, _: Option<u64>, _: Option<Duration>) {}
    fn progress(&self, _: u64, _: u64) {}
    fn level_finished(&self, _: &str, _: &str) {}
}

impl baton::batch::Observer for Quiet {
    fn note(&self, _: &str) {}
    fn started(&self, _: u64, _: u64) {}
    fn progress(&self, _: u64, _: u64) {}
}
