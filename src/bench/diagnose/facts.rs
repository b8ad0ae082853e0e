//! Everything the rules read, gathered once from a run: each studio as
//! configured, probed and measured, each level with its evidence, Baton's
//! counters; and the small helpers the rules' sentences share.

use std::collections::{BTreeMap, BTreeSet};

use super::thresholds::{CLIENT_CPU_BUSY, MIN_REQUESTS};
use crate::bench::report::{
    BenchResult, Evidence, HostUsage, Level, LevelEvidence, ProbeRun, StudioFacts, StudioProbe,
};

/// One studio of the pool, as the rules see it.
pub(super) struct Studio<'a> {
    pub(super) id: String,
    pub(super) kind: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) slots: u32,
    pub(super) facts: Option<&'a StudioFacts>,
    pub(super) probe: Option<&'a StudioProbe>,
}

impl Studio<'_> {
    pub(super) fn single(&self) -> Option<&ProbeRun> {
        self.probe
            .filter(|p| p.error.is_none())
            .and_then(|p| p.single.as_ref())
            .filter(|r| r.detail.ok >= MIN_REQUESTS)
    }

    pub(super) fn full(&self) -> Option<&ProbeRun> {
        self.probe
            .filter(|p| p.error.is_none())
            .and_then(|p| p.full.as_ref())
            .filter(|r| r.detail.ok >= MIN_REQUESTS)
    }

    /// Requests per second alone, with all its slots busy.
    pub(super) fn alone_rps(&self) -> Option<f64> {
        self.full()
            .or(self.single())
            .map(|r| r.requests_per_second)
            .filter(|r| *r > 0.0)
    }

    pub(super) fn excluded(&self) -> bool {
        self.facts.is_some_and(|f| f.excluded)
    }
}

/// Everything the rules read, gathered once.
pub(super) struct Run<'a> {
    pub(super) r: &'a BenchResult,
    pub(super) ev: Option<&'a Evidence>,
    pub(super) studios: Vec<Studio<'a>>,
    /// Level evidence by index of `concurrency_benchmark`.
    pub(super) levels: Vec<(&'a Level, Option<&'a LevelEvidence>)>,
}

pub(super) fn fmt_s(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

pub(super) fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The machine running the benchmark was too busy to time anything.
pub(super) fn busy(h: Option<&HostUsage>) -> bool {
    h.is_some_and(|h| h.process_cpu_avg_percent >= CLIENT_CPU_BUSY)
}

pub(super) fn figures(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| ((*k).to_string(), (*v * 1000.0).round() / 1000.0))
        .collect()
}

impl<'a> Run<'a> {
    pub(super) fn new(r: &'a BenchResult) -> Run<'a> {
        let ev = r.evidence.as_ref();
        let mut studios: Vec<Studio> = Vec::new();
        if let Some(ev) = ev.filter(|e| !e.studios.is_empty()) {
            for f in &ev.studios {
                studios.push(Studio {
                    id: f.worker.clone(),
                    kind: f.kind.clone(),
                    host: f.host.clone(),
                    port: f.port,
                    slots: f.slots,
                    facts: Some(f),
                    probe: ev.probes.iter().find(|p| p.worker == f.worker),
                });
            }
        } else if let Some(ws) = r.config.get("workers").and_then(|w| w.as_array()) {
            // A run recorded before the evidence: the workers file it kept.
            for w in ws {
                let s = |k: &str| w.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
                studios.push(Studio {
                    id: s("id"),
                    kind: s("type"),
                    host: s("host"),
                    port: w.get("port").and_then(|v| v.as_u64()).unwrap_or(0) as u16,
                    slots: w
                        .get("max_concurrent_requests")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(1) as u32,
                    facts: None,
                    probe: None,
                });
            }
        }
        let levels = r
            .concurrency_benchmark
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let e = ev
                    .and_then(|e| e.levels.get(i))
                    .filter(|e| e.concurrency == l.concurrency);
                (l, e)
            })
            .collect();
        Run {
            r,
            ev,
            studios,
            levels,
        }
    }

    pub(super) fn slots_of(&self, ids: &BTreeSet<&str>) -> u32 {
        self.studios
            .iter()
            .filter(|s| ids.contains(s.id.as_str()))
            .map(|s| s.slots)
            .sum()
    }

    /// Successful requests a studio served over all levels.
    pub(super) fn served(&self, id: &str) -> u64 {
        self.levels
            .iter()
            .filter_map(|(l, _)| l.worker_stats.get(id))
            .map(|w| w.requests.saturating_sub(w.failed))
            .sum()
    }

    /// Baton's counters for a studio, summed over the levels.
    pub(super) fn balancer(&self, id: &str) -> Counters {
        let mut c = Counters::default();
        for (_, e) in &self.levels {
            let Some(d) = e.and_then(|e| e.balancer.get(id)) else {
                continue;
            };
            c.seen = true;
            c.requests += d.requests;
            c.successes += d.successes;
            for (k, v) in &d.failures {
                if k != "probe" {
                    *c.failures.entry(k.clone()).or_default() += v;
                }
            }
            c.ejections += d.ejections.values().sum::<u64>();
            c.last_state = Some(d.state.clone());
            c.learned_slots = Some(d.slots);
            c.last_served = d.successes;
            if d.last_error.is_some() {
                c.last_error = d.last_error.clone();
            }
        }
        c
    }
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) seen: bool,
    pub(super) requests: u64,
    pub(super) successes: u64,
    pub(super) failures: BTreeMap<String, u64>,
    pub(super) ejections: u64,
    pub(super) last_state: Option<String>,
    pub(super) last_served: u64,
    pub(super) last_error: Option<String>,
    /// What Baton had learned it runs at once, at the last level.
    pub(super) learned_slots: Option<u64>,
}

impl Counters {
    pub(super) fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
    pub(super) fn ended_down(&self) -> bool {
        matches!(
            self.last_state.as_deref(),
            Some("ejected" | "probing" | "starting")
        )
    }
}
