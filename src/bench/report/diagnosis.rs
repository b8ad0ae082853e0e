//! The diagnosis as the results file keeps it: what limited the run, per
//! studio, with the evidence and the change to make (`bench::diagnose`
//! computes it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::TimeSplit;

/// What limited the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    DeadStudio,
    FlakyStudio,
    SlowStudio,
    NetworkBound,
    Serialized,
    Saturated,
    ColdModel,
    ClientBound,
    ShortLevel,
    BalancerOverhead,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DeadStudio => "dead_studio",
            Cause::FlakyStudio => "flaky_studio",
            Cause::SlowStudio => "slow_studio",
            Cause::NetworkBound => "network_bound",
            Cause::Serialized => "serialized",
            Cause::Saturated => "saturated",
            Cause::ColdModel => "cold_model",
            Cause::ClientBound => "client_bound",
            Cause::ShortLevel => "short_level",
            Cause::BalancerOverhead => "balancer_overhead",
        }
    }
}

/// How much it matters: `info` is worth knowing, `warning` costs
/// throughput or latency, `critical` breaks the pool's promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One thing found.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub cause: Cause,
    /// The studio it is about (none for pool-wide causes).
    pub worker: Option<String>,
    pub severity: Severity,
    /// What was measured, in a sentence or two with the numbers.
    pub evidence: String,
    /// What to change.
    pub remedy: String,
    /// The key numbers, for charts and cards.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, f64>,
}

/// One step of the waterfall from the studios' sum to the pool.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaterfallStep {
    pub label: String,
    pub cause: Option<Cause>,
    pub worker: Option<String>,
    /// Requests per second lost to it.
    pub requests_per_second: f64,
    /// Its part of the studios' sum (0..1).
    pub share: f64,
}

/// The verdict on a run.
#[skip_serializing_none]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// `no problem found`, or how many problems and which.
    pub verdict: String,
    /// No finding above `info`.
    pub healthy: bool,
    /// Scaling efficiency in words, with the figures.
    pub headline: String,
    /// Pool throughput over the sum of the studios alone (0..1, may exceed
    /// 1 by noise); `None` when the studios were not measured alone.
    pub scaling_efficiency: Option<f64>,
    pub pool_requests_per_second: Option<f64>,
    /// What the studios give alone, summed (dead ones estimated).
    pub studios_alone_requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waterfall: Vec<WaterfallStep>,
    pub time_split: Option<TimeSplit>,
    /// Most severe first.
    pub findings: Vec<Finding>,
    /// `evidence` (probes and per-request timings) or `tables` (a run
    /// recorded without them: fewer causes can be told).
    pub basis: String,
}
