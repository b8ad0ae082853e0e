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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use super::report::{
    BenchResult, Evidence, HostUsage, Level, LevelEvidence, ProbeRun, StudioFacts, StudioProbe,
    WorkerEvidence,
};

// Thresholds, in one place. Each says why it has its value.

/// Figures from fewer requests than this are not compared: one request
/// is an anecdote, two already show whether a value repeats.
const MIN_REQUESTS: u64 = 2;
/// A studio whose failed attempts reach this share is flaky: healthy
/// studios fail none, and 2% is one request in fifty, more than a single
/// unlucky cut in a short run.
const FLAKY_RATE: f64 = 0.02;
/// ...and at least this many, so one lost request in a tiny run is not a
/// verdict.
const FLAKY_MIN_FAILURES: u64 = 2;
/// From this failure share on, the flaky studio costs the pool more than
/// it adds (retries, ejections, cut answers): critical.
const FLAKY_CRITICAL_RATE: f64 = 0.10;
/// A studio is slow when one answer alone takes this many times the
/// median of the others (outside-the-studio time removed). Identical
/// hardware measures within 10-20%; a different chip or model size shows
/// as 2x and more.
const SLOW_FACTOR: f64 = 1.8;
/// Without probes (older runs), a studio that served less than this
/// fraction of its share of the pool's slots at the top level is slow.
const SLOW_SHARE_RATIO: f64 = 0.5;
/// Time outside the studio (network, HTTP, unreported queueing) counts as
/// network-bound from this share of the time to first token: above a
/// quarter, the wire, not the model, decides how fast answers start.
const NETWORK_SHARE: f64 = 0.25;
/// ...and from this many milliseconds: a request and its answer cross
/// the network at least twice, so the checklist's 10 ms RTT limit shows
/// as 20 ms outside the studio (a wired LAN costs 1-5 ms).
const NETWORK_MIN_MS: f64 = 20.0;
/// A studio given N >= 2 slots serializes when N requests at once give
/// less than this many times the throughput of one: parallel slots give
/// 1.5x and more even on busy hardware, a one-at-a-time server 1.0x.
const SERIAL_MAX_GAIN: f64 = 1.4;
/// ...while its time to first token grows by at least this factor (the
/// others queue behind the one running: N slots make the median request
/// wait for about N/2 others).
const SERIAL_TTFT_GROWTH: f64 = 1.8;
/// The knee of the sweep: the lowest level from which no higher one gains
/// more than this share of its extra concurrency in throughput (doubling
/// the concurrency buys less than 25% more). Below saturation doubling
/// it doubles throughput; a loaded client or noise costs 10-20%.
const KNEE_GAIN: f64 = 0.25;
/// Past the knee, the pool is saturated when the time to first token has
/// grown by this factor: queueing, not work.
const SATURATED_TTFT_GROWTH: f64 = 1.5;
/// Levels at least this many times the knee's concurrency count as past
/// it (levels just above it are within the noise of the knee).
const SATURATED_PAST: f64 = 1.5;
/// Running at this many times the knee's concurrency or more is most of
/// the latency spent queueing: a warning rather than a note.
const SATURATED_FAR: f64 = 2.0;
/// A first answer is cold when it took this many times the steady time
/// to first token...
const COLD_FACTOR: f64 = 3.0;
/// ...and at least this much longer: model loads take seconds (5-60 s
/// from disk), while a cold prompt cache or a first connection costs
/// milliseconds.
const COLD_MIN_EXCESS_MS: f64 = 1000.0;
/// Little's law: a level whose requests in flight (throughput x latency)
/// fall below this share of the concurrency asked was held back by the
/// client. Tail effects of a short run cost ~5%.
const CLIENT_LITTLE_MIN: f64 = 0.8;
/// Requests Baton saw in flight below this share of what the client had
/// on the wire at the same moments: the client machine held them
/// (sampling ten times a second is coarse, hence the margin).
const CLIENT_BATON_MIN: f64 = 0.6;
/// Little's law is only read when at most this share failed (fast
/// failures shorten the mean latency and fake a shortfall).
const CLIENT_MAX_FAILED: f64 = 0.05;
/// Baton's own process (the client and the in-process balancer) using
/// this share of the machine's CPU while something was measured makes the
/// client the suspect: with every core busy it delays every socket event,
/// so its client-side timings (time outside the studio, Baton's overhead)
/// are not trusted, and a shortfall of throughput is put on the client.
/// (The machine's overall CPU is not used: other programs' load takes
/// only their share of the cores, and measured figures hold up under it.)
const CLIENT_CPU_BUSY: f64 = 90.0;
/// ...a shortfall below this share of what the studios alone promise at
/// that concurrency (short runs measure within 10-15% of it).
const CLIENT_CPU_SHORTFALL: f64 = 0.8;
/// Baton's own added latency matters from this many milliseconds per
/// request at concurrency 1 (in process on the same machine it adds 1-3
/// ms; a slow host or a debug build adds tens)...
const OVERHEAD_MIN_MS: f64 = 25.0;
/// ...and this share of the request's time.
const OVERHEAD_MIN_SHARE: f64 = 0.05;
/// Baton samples its in-flight count ten times a second; fewer samples
/// than this say nothing.
const MIN_BATON_SAMPLES: u64 = 5;

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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub cause: Cause,
    /// The studio it is about (none for pool-wide causes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaterfallStep {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Requests per second lost to it.
    pub requests_per_second: f64,
    /// Its part of the studios' sum (0..1).
    pub share: f64,
}

/// Where a request's time went at one level, averaged over the pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimeSplit {
    pub concurrency: usize,
    /// The studios' own timings used; `None`: client-side only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub total_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ms: Option<f64>,
    /// Waiting in Baton's queue for a free slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_queue_ms: Option<f64>,
    /// Outside the studio: network, HTTP, Baton, and queueing the studio
    /// does not report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub studio_queue_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_ms: Option<f64>,
}

/// The verdict on a run.
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling_efficiency: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_requests_per_second: Option<f64>,
    /// What the studios give alone, summed (dead ones estimated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub studios_alone_requests_per_second: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waterfall: Vec<WaterfallStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_split: Option<TimeSplit>,
    /// Most severe first.
    pub findings: Vec<Finding>,
    /// `evidence` (probes and per-request timings) or `tables` (a run
    /// recorded without them: fewer causes can be told).
    pub basis: String,
}

/// One studio of the pool, as the rules see it.
struct Studio<'a> {
    id: String,
    kind: String,
    host: String,
    port: u16,
    slots: u32,
    facts: Option<&'a StudioFacts>,
    probe: Option<&'a StudioProbe>,
}

impl Studio<'_> {
    fn single(&self) -> Option<&ProbeRun> {
        self.probe
            .filter(|p| p.error.is_none())
            .and_then(|p| p.single.as_ref())
            .filter(|r| r.detail.ok >= MIN_REQUESTS)
    }

    fn full(&self) -> Option<&ProbeRun> {
        self.probe
            .filter(|p| p.error.is_none())
            .and_then(|p| p.full.as_ref())
            .filter(|r| r.detail.ok >= MIN_REQUESTS)
    }

    /// Requests per second alone, with all its slots busy.
    fn alone_rps(&self) -> Option<f64> {
        self.full()
            .or(self.single())
            .map(|r| r.requests_per_second)
            .filter(|r| *r > 0.0)
    }

    fn excluded(&self) -> bool {
        self.facts.is_some_and(|f| f.excluded)
    }
}

/// Everything the rules read, gathered once.
struct Run<'a> {
    r: &'a BenchResult,
    ev: Option<&'a Evidence>,
    studios: Vec<Studio<'a>>,
    /// Level evidence by index of `concurrency_benchmark`.
    levels: Vec<(&'a Level, Option<&'a LevelEvidence>)>,
}

fn fmt_s(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
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
fn busy(h: Option<&HostUsage>) -> bool {
    h.is_some_and(|h| h.process_cpu_avg_percent >= CLIENT_CPU_BUSY)
}

fn figures(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| ((*k).to_string(), (*v * 1000.0).round() / 1000.0))
        .collect()
}

impl<'a> Run<'a> {
    fn new(r: &'a BenchResult) -> Run<'a> {
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

    fn slots_of(&self, ids: &BTreeSet<&str>) -> u32 {
        self.studios
            .iter()
            .filter(|s| ids.contains(s.id.as_str()))
            .map(|s| s.slots)
            .sum()
    }

    /// Successful requests a studio served over all levels.
    fn served(&self, id: &str) -> u64 {
        self.levels
            .iter()
            .filter_map(|(l, _)| l.worker_stats.get(id))
            .map(|w| w.requests.saturating_sub(w.failed))
            .sum()
    }

    /// Baton's counters for a studio, summed over the levels.
    fn balancer(&self, id: &str) -> Counters {
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
struct Counters {
    seen: bool,
    requests: u64,
    successes: u64,
    failures: BTreeMap<String, u64>,
    ejections: u64,
    last_state: Option<String>,
    last_served: u64,
    last_error: Option<String>,
    /// What Baton had learned it runs at once, at the last level.
    learned_slots: Option<u64>,
}

impl Counters {
    fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
    fn ended_down(&self) -> bool {
        matches!(
            self.last_state.as_deref(),
            Some("ejected" | "probing" | "starting")
        )
    }
}

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

/// How to start a server of this kind, for a studio that refuses.
fn start_hint(kind: &str) -> String {
    match kind.parse::<crate::studio::StudioKind>() {
        Ok(k) => crate::studio::start_server_hint(k).to_string(),
        Err(_) => "start the server".to_string(),
    }
}

fn dead_remedy(s: &Studio, why: &str) -> String {
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
fn dead_studios<'a>(run: &'a Run, out: &mut Vec<Finding>) -> BTreeSet<&'a str> {
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

fn flaky_remedy(class: &str) -> &'static str {
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
fn flaky_studios(run: &Run, dead: &BTreeSet<&str>, out: &mut Vec<Finding>) {
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

/// The setting that makes a studio of this kind run requests in parallel.
fn parallel_setting(kind: &str, slots: u32) -> String {
    match kind {
        "lm_studio" => format!(
            "raise LM Studio's parallel requests (\"Max Concurrent Predictions\" in the model's load settings) to {slots} and reload the model"
        ),
        "ollama" => format!(
            "start Ollama with OLLAMA_NUM_PARALLEL={slots} (e.g. `launchctl setenv OLLAMA_NUM_PARALLEL {slots}`, then restart Ollama)"
        ),
        "llama_cpp" => format!(
            "start llama-server with `-np {slots}` (and `-c` large enough for {slots} contexts)"
        ),
        "vllm" => format!("raise vLLM's `--max-num-seqs` to at least {slots}"),
        "mlx" => "use an mlx_lm version that batches requests (older ones serve one at a time)"
            .to_string(),
        _ => "let the server run requests in parallel".to_string(),
    }
}

/// Studios that accept several requests but run one at a time.
fn serialized<'a>(
    run: &'a Run,
    dead: &BTreeSet<&str>,
    out: &mut Vec<Finding>,
) -> BTreeSet<&'a str> {
    let mut found = BTreeSet::new();
    for s in &run.studios {
        if dead.contains(s.id.as_str()) || s.slots < 2 {
            continue;
        }
        let (Some(one), Some(full)) = (s.single(), s.full()) else {
            continue;
        };
        if one.requests_per_second <= 0.0 {
            continue;
        }
        let gain = full.requests_per_second / one.requests_per_second;
        let ttft = |r: &ProbeRun| {
            r.detail
                .ttft_ms
                .as_ref()
                .map(|t| t.p50)
                .unwrap_or(r.detail.latency_ms.p50)
        };
        let (t1, tn) = (ttft(one), ttft(full));
        if !(gain < SERIAL_MAX_GAIN && t1 > 0.0 && tn >= SERIAL_TTFT_GROWTH * t1) {
            continue;
        }
        let real = gain.round().max(1.0) as u32;
        // Baton's own learned limit agrees when it has seen enough
        // answers; it is what the balancer already does about it.
        let learned = run
            .balancer(&s.id)
            .learned_slots
            .filter(|&l| l > 0 && l < u64::from(s.slots));
        let learned_note = learned
            .map(|l| {
                format!(" Baton learned the same from its answers and gives it {l} at a time.")
            })
            .unwrap_or_default();
        let mut figs = vec![
            ("declared_slots", f64::from(s.slots)),
            ("effective_parallel", f64::from(real)),
            ("throughput_gain", gain),
            ("ttft_one_ms", t1),
            ("ttft_full_ms", tn),
        ];
        if let Some(l) = learned {
            figs.push(("baton_slots", l as f64));
        }
        out.push(Finding {
            cause: Cause::Serialized,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: format!(
                "given {} slots it runs about {real} at a time: alone, {} requests at once gave {:.2} req/s against {:.2} req/s for one ({gain:.1}x), while the time to first token grew from {} to {} (the others wait inside it)",
                s.slots,
                full.concurrency,
                full.requests_per_second,
                one.requests_per_second,
                fmt_s(t1),
                fmt_s(tn)
            ) + &learned_note,
            remedy: format!(
                "{}; or set its max_concurrent_requests to {real} (or \"auto\") so Baton queues the rest where a free studio can take them",
                parallel_setting(&s.kind, s.slots)
            ),
            figures: figures(&figs),
        });
        found.insert(s.id.as_str());
    }
    found
}

fn cold_remedy(kind: &str) -> &'static str {
    match kind {
        "lm_studio" => {
            "load the model before use (`lms load MODEL`, or once in the app) and raise or turn off its JIT auto-unload (\"Auto unload if idle\", 60 min by default)"
        }
        "ollama" => {
            "keep the model loaded: OLLAMA_KEEP_ALIVE=-1 (or `keep_alive: -1` in requests; the default unloads after 5 min idle), and preload it with `ollama run MODEL \"\"`"
        }
        "llama_cpp" => {
            "llama-server loads at start, so this was the page cache: start it with `--mlock` to keep the weights in memory"
        }
        "mlx" => "mlx_lm.server loads on first use: send one request after starting it",
        "vllm" => "vLLM loads at start: warm it with one request after a restart",
        _ => {
            "warm the model with one request after the server starts, and keep it from unloading when idle"
        }
    }
}

/// A first answer that paid for loading the model.
fn cold_models(run: &Run, dead: &BTreeSet<&str>, out: &mut Vec<Finding>) {
    for s in &run.studios {
        if dead.contains(s.id.as_str()) {
            continue;
        }
        // The steady time to first token: the probe's, else the earliest
        // level where it served enough.
        let steady_level = run
            .levels
            .iter()
            .filter_map(|(_, e)| e.and_then(|e| e.workers.get(&s.id)))
            .find(|w| w.ok > MIN_REQUESTS);
        let steady_of = |w: &WorkerEvidence| {
            w.ttft_ms
                .as_ref()
                .map(|t| t.p50)
                .unwrap_or(w.latency_ms.p50)
        };
        let steady = s
            .single()
            .map(|r| steady_of(&r.detail))
            .or(steady_level.map(steady_of));
        let Some(steady) = steady.filter(|v| *v > 0.0) else {
            continue;
        };
        // Candidates for its first answer, earliest first.
        let mut firsts: Vec<(String, f64)> = Vec::new();
        if let Some(t) = s
            .facts
            .and_then(|f| f.preflight.as_ref())
            .and_then(|p| p.first_token_ms)
        {
            firsts.push(("preflight's first request".into(), t));
        }
        let mut load_ms = None;
        if let Some(f) = s.probe.and_then(|p| p.first.as_ref()) {
            if let Some(t) = f.first_ttft_ms.or(f.first_latency_ms) {
                firsts.push(("the probe's first request".into(), t));
            }
            load_ms = f.server.as_ref().and_then(|t| t.load_ms);
        }
        if s.probe.is_none()
            && let Some(w) = steady_level
            && let Some(t) = w.first_ttft_ms
        {
            firsts.push(("its first request of the sweep".into(), t));
        }
        let Some((which, first)) = firsts.into_iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
            continue;
        };
        let excess = first - steady;
        let by_timing = excess >= COLD_MIN_EXCESS_MS && first >= COLD_FACTOR * steady;
        let by_report = load_ms.is_some_and(|l| l >= COLD_MIN_EXCESS_MS);
        if !(by_timing || by_report) {
            continue;
        }
        let unloaded = s.probe.and_then(|p| p.model_loaded_before) == Some(false);
        out.push(Finding {
            cause: Cause::ColdModel,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: format!(
                "{which} waited {} for its first token against {} steady: a model load of about {}{}{}. It was kept out of the figures (the sweep ran warm), but real traffic pays it after every unload",
                fmt_s(first),
                fmt_s(steady),
                fmt_s(load_ms.unwrap_or(excess)),
                if by_report {
                    " (the studio reported the load)"
                } else {
                    ""
                },
                if unloaded {
                    "; the studio listed the model as not loaded before the run"
                } else {
                    ""
                }
            ),
            remedy: cold_remedy(&s.kind).to_string(),
            figures: figures(&[
                ("first_ms", first),
                ("steady_ttft_ms", steady),
                ("load_ms", load_ms.unwrap_or(excess)),
            ]),
        });
    }
}

/// Time outside the studio, or a network over the checklist's limits.
fn network_bound(run: &Run, dead: &BTreeSet<&str>, out: &mut Vec<Finding>) {
    for s in &run.studios {
        if dead.contains(s.id.as_str()) {
            continue;
        }
        let mut parts = Vec::new();
        let mut figs = Vec::new();
        if let Some(p) = s.facts.and_then(|f| f.preflight.as_ref()) {
            if let Some(loss) = p
                .ping_loss_pct
                .filter(|l| *l > p.max_loss_pct && *l < 100.0)
            {
                parts.push(format!(
                    "{loss:.0}% of pings were lost (limit {}%): every lost packet stalls a stream for a retransmission",
                    p.max_loss_pct
                ));
                figs.push(("loss_pct", loss));
            }
            if let Some(rtt) = p.ping_avg_ms.filter(|r| *r > p.max_rtt_ms) {
                parts.push(format!(
                    "ping takes {rtt:.1} ms on average (limit {} ms)",
                    p.max_rtt_ms
                ));
                figs.push(("rtt_ms", rtt));
            }
        }
        // The studio's own timings against the client's, alone and one
        // request at a time (else at the lowest level it served).
        let lowest = run
            .levels
            .iter()
            .filter_map(|(l, e)| e.and_then(|e| e.workers.get(&s.id)).map(|w| (l, w)))
            .find(|(_, w)| w.ok >= MIN_REQUESTS && w.server.is_some());
        let w = match s.single() {
            Some(r) => (!busy(run.ev.and_then(|e| e.probe_host.as_ref()))).then_some(&r.detail),
            None => lowest
                .filter(|(l, _)| !busy(Some(&l.host_usage)))
                .map(|(_, w)| w),
        };
        if let Some(w) = w
            && let Some(split) = &w.server
            && let Some(outside) = split.outside_ms
        {
            let ttft = w
                .ttft_ms
                .as_ref()
                .map(|t| t.p50)
                .unwrap_or(w.latency_ms.p50);
            if outside >= NETWORK_MIN_MS && ttft > 0.0 && outside / ttft >= NETWORK_SHARE {
                parts.insert(
                    0,
                    format!(
                        "{} of its {} to first token is spent outside the studio ({} says the studio itself took {} per answer, the client waited {})",
                        fmt_s(outside),
                        fmt_s(ttft),
                        split.source,
                        fmt_s(split.total_ms.unwrap_or(0.0)),
                        fmt_s(w.latency_ms.p50)
                    ),
                );
                figs.push(("outside_ms", outside));
                figs.push(("ttft_ms", ttft));
                figs.push(("outside_share", outside / ttft));
            }
        }
        if parts.is_empty() {
            continue;
        }
        out.push(Finding {
            cause: Cause::NetworkBound,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: parts.join("; "),
            remedy: format!(
                "put {} on a wired network with the machine running Baton (same switch; not Wi-Fi, a VPN or a routed link) and check `baton preflight` (RTT under 10 ms, no loss)",
                s.id
            ),
            figures: figures(&figs),
        });
    }
}

/// Studios much slower than the others (uneven hardware).
fn slow_studios(run: &Run, dead: &BTreeSet<&str>, serial: &BTreeSet<&str>, out: &mut Vec<Finding>) {
    let live: Vec<&Studio> = run
        .studios
        .iter()
        .filter(|s| !dead.contains(s.id.as_str()))
        .collect();
    // One answer alone, without the time outside the studio.
    let service = |s: &Studio| {
        s.single().map(|r| {
            let outside = r
                .detail
                .server
                .as_ref()
                .and_then(|x| x.outside_ms)
                .unwrap_or(0.0);
            (r.detail.latency_ms.p50 - outside).max(0.0)
        })
    };
    let measured: Vec<(&Studio, f64)> = live
        .iter()
        .filter_map(|s| service(s).map(|v| (*s, v)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let top = run
        .levels
        .iter()
        .filter(|(l, _)| l.successful_requests > 0)
        .max_by_key(|(l, _)| l.concurrency)
        .map(|(l, _)| *l);
    let total_slots: u32 = live.iter().map(|s| s.slots).sum();
    let alone_sum: f64 = live.iter().filter_map(|s| s.alone_rps()).sum();
    // Its share of the load against its share of the capacity (or of the
    // slots when not measured alone), and whether it finished long after
    // the others.
    let share_text = |s: &Studio| -> String {
        let mut out = String::new();
        if let Some(l) = top {
            let served = l
                .worker_stats
                .get(&s.id)
                .map(|w| w.load_percentage)
                .unwrap_or(0.0);
            match s.alone_rps().filter(|_| alone_sum > 0.0) {
                Some(r) => {
                    out += &format!(
                        "; at concurrency {} it served {served:.0}% of the requests with {} of the pool's capacity",
                        l.concurrency,
                        pct(r / alone_sum)
                    )
                }
                None if total_slots > 0 => {
                    out += &format!(
                        "; at concurrency {} it served {served:.0}% of the requests with {} of the slots",
                        l.concurrency,
                        pct(f64::from(s.slots) / f64::from(total_slots))
                    )
                }
                None => {}
            }
        }
        let tail = run
            .levels
            .iter()
            .filter_map(|(l, e)| {
                let e = (*e)?;
                let mine = e.workers.get(&s.id)?.last_end_s;
                let others = e
                    .workers
                    .iter()
                    .filter(|(k, _)| **k != s.id)
                    .map(|(_, w)| w.last_end_s)
                    .fold(0.0, f64::max);
                let late = mine - others;
                (others > 0.0 && late >= 1.0 && late >= 0.2 * e.elapsed_s)
                    .then_some((l.concurrency, late))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((c, late)) = tail {
            out += &format!(
                "; at concurrency {c} its last answer ended {late:.1} s after the others' (the run waited for it)"
            );
        }
        out
    };
    if measured.len() >= 2 {
        for (s, t) in &measured {
            if serial.contains(s.id.as_str()) {
                continue;
            }
            let others: Vec<f64> = measured
                .iter()
                .filter(|(o, _)| o.id != s.id)
                .map(|(_, v)| *v)
                .collect();
            let Some(m) = median(others) else { continue };
            if *t < SLOW_FACTOR * m {
                continue;
            }
            let tps = |x: &Studio| x.single().and_then(|r| r.detail.decode_tps);
            let others_tps = median(
                measured
                    .iter()
                    .filter(|(o, _)| o.id != s.id)
                    .filter_map(|(o, _)| tps(o))
                    .collect(),
            );
            let adds = s.alone_rps().map(|r| r / alone_sum.max(1e-9));
            out.push(Finding {
                cause: Cause::SlowStudio,
                worker: Some(s.id.clone()),
                severity: Severity::Warning,
                evidence: format!(
                    "alone, one answer takes {} against {} for the others ({:.1}x){}{}",
                    fmt_s(*t),
                    fmt_s(m),
                    t / m,
                    match (tps(s), others_tps) {
                        (Some(a), Some(b)) => format!("; it generates {a:.0} tok/s against {b:.0}"),
                        _ => String::new(),
                    },
                    share_text(s)
                ),
                remedy: format!(
                    "uneven hardware: Baton already sends it less work. For throughput keep it{}; for latency, lower its max_concurrent_requests or set \"enabled\": false so answers do not wait on it, or give it a smaller model",
                    adds.map(|a| format!(" (it adds {} of the pool's capacity)", pct(a)))
                        .unwrap_or_default()
                ),
                figures: figures(&[
                    ("answer_ms", *t),
                    ("others_answer_ms", m),
                    ("slowdown", t / m),
                    ("tokens_per_second", tps(s).unwrap_or(f64::NAN)),
                    ("others_tokens_per_second", others_tps.unwrap_or(f64::NAN)),
                ]),
            });
        }
        return;
    }
    // No probes (older runs): its share of the load against its share of
    // the slots at the top level, when it failed nothing there.
    let Some(l) = top else { return };
    if live.len() < 2 || total_slots == 0 || run.ev.is_some_and(|e| !e.probes.is_empty()) {
        return;
    }
    if (l.concurrency as u32) < total_slots {
        return;
    }
    for s in &live {
        let Some(w) = l.worker_stats.get(&s.id) else {
            continue;
        };
        let slot_share = f64::from(s.slots) / f64::from(total_slots);
        if w.failed > 0 || w.load_percentage / 100.0 >= SLOW_SHARE_RATIO * slot_share {
            continue;
        }
        out.push(Finding {
            cause: Cause::SlowStudio,
            worker: Some(s.id.clone()),
            severity: Severity::Warning,
            evidence: format!(
                "at concurrency {} it served {:.0}% of the requests with {} of the pool's slots",
                l.concurrency,
                w.load_percentage,
                pct(slot_share)
            ),
            remedy: "uneven hardware (or fewer real slots than declared): lower its max_concurrent_requests, or run `baton bench` again to measure each studio alone".to_string(),
            figures: figures(&[
                ("load_share", w.load_percentage / 100.0),
                ("slot_share", slot_share),
            ]),
        });
    }
}

fn latency_of(l: &Level) -> f64 {
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

fn knee<'a>(run: &'a Run) -> Option<(&'a Level, Vec<LevelPair<'a>>)> {
    let mut levels: Vec<LevelPair> = run
        .levels
        .iter()
        .filter(|(l, _)| l.successful_requests > 0 && !l.littles_law.client_bound)
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
fn saturated(run: &Run, out: &mut Vec<Finding>) {
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

/// What the studios measured alone at least promise at `concurrency`:
/// each request served at the slowest studio's one-at-a-time rate, up to
/// the sum of their capacities (a lower bound, whatever the routing).
/// `None` unless every studio that served was measured.
fn expected_rps(run: &Run, concurrency: usize) -> Option<f64> {
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

/// The measuring machine, not the pool, set the pace.
fn client_bound(run: &Run, out: &mut Vec<Finding>) {
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
        let ratio = l.littles_law.ratio;
        if ratio < CLIENT_LITTLE_MIN {
            let wait = e.map(|e| e.client_wait_ms).unwrap_or(0.0);
            hits.push((
                l,
                l.littles_law.effective_concurrency,
                format!(
                    "Little's law: {:.2} req/s x {:.2} s = {:.1} requests in flight{}",
                    l.requests_per_second,
                    l.avg_response_time,
                    l.littles_law.effective_concurrency,
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
            if cpu >= CLIENT_CPU_BUSY && !why.contains("CPU") {
                format!("; Baton's own process used {cpu:.0}% of this machine's CPU")
            } else {
                String::new()
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
fn balancer_overhead(run: &Run, out: &mut Vec<Finding>) {
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

type Headline = (
    String,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Vec<WaterfallStep>,
);

/// Scaling efficiency and where the missing part went.
fn headline(run: &Run, findings: &[Finding]) -> Headline {
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
            "pool {:.2} req/s at concurrency {} = {} of the {:.2} req/s its {} studio{} give alone",
            pool,
            best.concurrency,
            // A few percent above the sum is noise of short measurements.
            pct(efficiency.min(1.0)),
            ideal,
            n,
            if n == 1 { "" } else { "s" }
        ),
        Some(efficiency),
        Some(pool),
        Some(ideal),
        waterfall,
    )
}

/// Where a request's time went at the knee (or the best level).
fn time_split(run: &Run, findings: &[Finding]) -> Option<TimeSplit> {
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
        source.get_or_insert_with(|| s.source.clone());
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
                acc[i].0 += v * s.requests as f64;
                acc[i].1 += s.requests;
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
        total_ms: l.avg_response_time * 1000.0,
        ttft_ms: (l.ttft_avg > 0.0).then_some(l.ttft_avg * 1000.0),
        baton_queue_ms,
        outside_ms: get(0),
        studio_queue_ms: get(1),
        load_ms: get(2),
        prefill_ms: get(3),
        decode_ms: get(4),
    })
}

/// The verdict block printed after the tables.
pub fn render(d: &Diagnosis) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nDiagnosis: {}", d.verdict);
    let _ = writeln!(out, "  {}", d.headline);
    if !d.waterfall.is_empty() {
        let parts: Vec<String> = d
            .waterfall
            .iter()
            .map(|w| {
                format!(
                    "{} {:.2} req/s ({})",
                    w.label,
                    w.requests_per_second,
                    pct(w.share)
                )
            })
            .collect();
        let _ = writeln!(out, "  missing: {}", parts.join("; "));
    }
    if let Some(t) = &d.time_split {
        let mut parts = Vec::new();
        if let Some(v) = t.baton_queue_ms.filter(|v| *v >= 1.0) {
            parts.push(format!("Baton queue {}", fmt_s(v)));
        }
        for (name, v) in [
            ("outside the studio's timings", t.outside_ms),
            ("studio queue", t.studio_queue_ms),
            ("model load", t.load_ms),
            ("prefill", t.prefill_ms),
            ("decode", t.decode_ms),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {}", fmt_s(v)));
            }
        }
        let _ = writeln!(
            out,
            "  time per request at concurrency {}: {}{} ({})",
            t.concurrency,
            fmt_s(t.total_ms),
            t.ttft_ms
                .map(|v| format!(", first token {}", fmt_s(v)))
                .unwrap_or_default(),
            match &t.source {
                Some(s) if !parts.is_empty() => format!("{}; from {s}", parts.join(", ")),
                _ if !parts.is_empty() => format!("{}; client-side only", parts.join(", ")),
                _ => "client-side only: the studios do not report their timings".to_string(),
            }
        );
    }
    for f in &d.findings {
        let _ = writeln!(
            out,
            "  {:<8} {}{}: {}",
            f.severity.as_str().to_uppercase(),
            f.cause.as_str(),
            f.worker
                .as_ref()
                .map(|w| format!(" [{w}]"))
                .unwrap_or_default(),
            f.evidence
        );
        let _ = writeln!(out, "           fix: {}", f.remedy);
    }
    out
}

#[cfg(test)]
mod tests {
    //! Every rule on hand-made runs: each pathology alone gives its own
    //! finding and nothing else above `info`; a healthy pool gives none.

    use super::*;
    use crate::bench::report::{
        BalancerDelta, BatonSample, HostFacts, HostUsage, LittlesLaw, PreflightFacts, ServerSplit,
        Settings, Stat, WorkerShare,
    };

    fn stat(p50: f64) -> Stat {
        Stat {
            count: 3,
            mean: p50,
            p50,
            p95: p50,
            max: p50,
        }
    }

    /// A studio's figures: `ok` answers, TTFT and latency in ms.
    fn wev(ok: u64, ttft: f64, latency: f64) -> WorkerEvidence {
        WorkerEvidence {
            ok,
            tokens: ok * 16,
            ttft_ms: Some(stat(ttft)),
            latency_ms: stat(latency),
            decode_tps: Some(16.0 / ((latency - ttft) / 1000.0)),
            ..WorkerEvidence::default()
        }
    }

    fn run(c: usize, rps: f64, w: WorkerEvidence) -> ProbeRun {
        ProbeRun {
            concurrency: c,
            elapsed_s: 1.0,
            requests_per_second: rps,
            output_tokens_per_second: rps * 16.0,
            detail: w,
        }
    }

    /// A healthy studio alone: 100 ms to first token, 250 ms an answer.
    fn probe(id: &str, slots: u32) -> StudioProbe {
        StudioProbe {
            worker: id.into(),
            kind: "lm_studio".into(),
            slots,
            endpoint: "http://x/api/v0/chat/completions".into(),
            timings: Some("LM Studio stats".into()),
            first: Some(wev(1, 100.0, 250.0)),
            single: Some(run(1, 4.0, wev(3, 100.0, 250.0))),
            full: Some(run(
                slots as usize,
                4.0 * f64::from(slots),
                wev(2 * u64::from(slots), 100.0, 250.0),
            )),
            ..StudioProbe::default()
        }
    }

    fn facts(id: &str, slots: u32) -> StudioFacts {
        StudioFacts {
            worker: id.into(),
            kind: "lm_studio".into(),
            host: "10.0.0.1".into(),
            port: 1234,
            slots,
            excluded: false,
            preflight: Some(PreflightFacts {
                status: "pass".into(),
                ping_avg_ms: Some(0.8),
                ping_loss_pct: Some(0.0),
                tcp_connect_ms: Some(0.9),
                first_token_ms: Some(105.0),
                max_rtt_ms: 10.0,
                max_loss_pct: 0.0,
                ..PreflightFacts::default()
            }),
        }
    }

    /// A level where every studio in `per` served its share.
    fn level(c: usize, rps: f64, ttft_s: f64, latency_s: f64, per: &[(&str, u64)]) -> Level {
        let ok: u64 = per.iter().map(|(_, n)| n).sum();
        let effective = rps * latency_s;
        Level {
            concurrency: c,
            requests: ok,
            successful_requests: ok,
            failed_requests: 0,
            duration_s: 2.0,
            requests_per_second: rps,
            success_rate: 100.0,
            avg_response_time: latency_s,
            p50_response_time: latency_s,
            p95_response_time: latency_s,
            p99_response_time: latency_s,
            ttft_avg: ttft_s,
            ttft_p50: ttft_s,
            ttft_p95: ttft_s,
            tpot_avg: 0.01,
            output_tokens_per_second: rps * 16.0,
            tokens_approximate: false,
            worker_stats: per
                .iter()
                .map(|(w, n)| {
                    (
                        (*w).to_string(),
                        WorkerShare {
                            requests: *n,
                            failed: 0,
                            success_rate: 100.0,
                            load_percentage: 100.0 * *n as f64 / ok.max(1) as f64,
                        },
                    )
                })
                .collect(),
            littles_law: LittlesLaw {
                effective_concurrency: effective,
                ratio: effective / c as f64,
                client_bound: effective / (c as f64) < 0.8,
            },
            host_usage: HostUsage {
                cpu_avg_percent: 20.0,
                cpu_max_percent: 40.0,
                memory_used_gb: 1.0,
                process_cpu_avg_percent: 10.0,
            },
            errors: vec![],
            repeats_rps: vec![],
        }
    }

    fn level_ev(l: &Level, ttft_ms: f64, latency_ms: f64) -> LevelEvidence {
        let ids: Vec<&String> = l.worker_stats.keys().collect();
        LevelEvidence {
            concurrency: l.concurrency,
            elapsed_s: 2.0,
            in_flight_avg: l.concurrency as f64,
            client_wait_ms: 0.0,
            baton: Some(BatonSample {
                samples: 20,
                in_flight_avg: l.concurrency as f64,
                client_in_flight_avg: l.concurrency as f64,
                queue_avg: 0.0,
                queue_max: 0,
                attempts_per_request: 1.0,
                retries: 0,
                rejected: 0,
            }),
            workers: l
                .worker_stats
                .iter()
                .map(|(w, s)| (w.clone(), wev(s.requests, ttft_ms, latency_ms)))
                .collect(),
            balancer: ids
                .iter()
                .map(|w| {
                    (
                        (*w).clone(),
                        BalancerDelta {
                            requests: l.worker_stats[*w].requests,
                            successes: l.worker_stats[*w].requests,
                            state: "ready".into(),
                            in_flight_avg: 1.0,
                            ..BalancerDelta::default()
                        },
                    )
                })
                .collect(),
            samples: vec![],
        }
    }

    fn result(
        levels: Vec<Level>,
        evidence: Option<Evidence>,
        slots: &[(&str, u32)],
    ) -> BenchResult {
        let workers: Vec<serde_json::Value> = slots
            .iter()
            .map(|(id, n)| serde_json::json!({"id": id, "host": "10.0.0.1", "port": 1234, "type": "lm_studio", "model": "m", "max_concurrent_requests": n}))
            .collect();
        BenchResult {
            baton_version: "test".into(),
            started_at: 0,
            finished_at: 0,
            interrupted: false,
            mode: "concurrency".into(),
            target: "balancer".into(),
            url: None,
            settings: Settings {
                model: "m".into(),
                max_tokens: 16,
                requests: None,
                duration_s: Some(2.0),
                warmup_requests: 1,
                repeat: 1,
                concurrency_levels: levels.iter().map(|l| l.concurrency).collect(),
                worker_counts: vec![],
                prompts: 1,
            },
            config: serde_json::json!({ "workers": workers }),
            preflight: None,
            host: HostFacts {
                os: "linux".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_gb: 8.0,
            },
            concurrency_benchmark: levels,
            worker_scaling_benchmark: vec![],
            evidence,
            diagnosis: None,
        }
    }

    /// Two healthy studios of 2 slots: 4 req/s each at one at a time.
    fn healthy() -> BenchResult {
        let l1 = level(1, 4.0, 0.1, 0.25, &[("a", 4), ("b", 4)]);
        let l4 = level(4, 16.0, 0.1, 0.25, &[("a", 16), ("b", 16)]);
        let ev = Evidence {
            studios: vec![facts("a", 2), facts("b", 2)],
            probes: vec![probe("a", 2), probe("b", 2)],
            levels: vec![level_ev(&l1, 100.0, 252.0), level_ev(&l4, 100.0, 252.0)],
            connect_timeout_ms: Some(500.0),
            probe_host: None,
        };
        result(vec![l1, l4], Some(ev), &[("a", 2), ("b", 2)])
    }

    fn ev(r: &mut BenchResult) -> &mut Evidence {
        r.evidence.as_mut().unwrap()
    }

    /// The run's only finding above info is `cause` (about `worker`).
    fn only(r: &BenchResult, cause: Cause, worker: Option<&str>) -> Diagnosis {
        let d = diagnose(r);
        let above: Vec<&Finding> = d
            .findings
            .iter()
            .filter(|f| f.severity > Severity::Info)
            .collect();
        let mine: Vec<&Finding> = d.findings.iter().filter(|f| f.cause == cause).collect();
        assert_eq!(mine.len(), 1, "{}", render(&d));
        assert_eq!(mine[0].worker.as_deref(), worker, "{}", render(&d));
        assert!(
            above.iter().all(|f| f.cause == cause),
            "other findings: {}",
            render(&d)
        );
        assert!(!mine[0].evidence.is_empty() && !mine[0].remedy.is_empty());
        d
    }

    #[test]
    fn a_healthy_pool_has_nothing_to_report() {
        let d = diagnose(&healthy());
        assert!(d.findings.is_empty(), "{}", render(&d));
        assert!(d.healthy);
        assert_eq!(d.verdict, "no problem found");
        assert!((d.scaling_efficiency.unwrap() - 1.0).abs() < 1e-9);
        assert!(d.waterfall.is_empty(), "{:?}", d.waterfall);
        assert_eq!(d.basis, "evidence");
        let text = render(&d);
        assert!(
            text.contains("no problem found") && text.contains("100%"),
            "{text}"
        );
    }

    #[test]
    fn a_studio_that_served_nothing_and_cannot_be_reached_is_dead() {
        let mut r = healthy();
        ev(&mut r).studios.push(facts("c", 2));
        ev(&mut r).probes.push(StudioProbe {
            worker: "c".into(),
            error: Some("request failed: error sending request: tcp connect error: Connection refused (connect)".into()),
            ..StudioProbe::default()
        });
        for l in &mut ev(&mut r).levels {
            l.balancer.insert(
                "c".into(),
                BalancerDelta {
                    state: "ejected".into(),
                    ..BalancerDelta::default()
                },
            );
        }
        let d = only(&r, Cause::DeadStudio, Some("c"));
        let f = &d.findings[0];
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.remedy.contains("nothing listens"), "{}", f.remedy);
        assert!(
            f.evidence.contains("never sent it a request"),
            "{}",
            f.evidence
        );
        // Its capacity is the missing part of the waterfall.
        assert_eq!(d.waterfall[0].worker.as_deref(), Some("c"));
        assert!((d.scaling_efficiency.unwrap() - 2.0 / 3.0).abs() < 0.01);
    }

    #[test]
    fn a_studio_excluded_by_preflight_is_dead_or_network_bound_by_what_failed() {
        let mut r = healthy();
        let mut c = facts("c", 2);
        c.excluded = true;
        let p = c.preflight.as_mut().unwrap();
        p.status = "fail".into();
        p.failed_checks = vec!["ping".into(), "tcp".into()];
        p.problems = vec![
            "ping 0/5 replies, 100% loss".into(),
            "tcp port 1234: timed out".into(),
        ];
        p.ping_loss_pct = Some(100.0);
        ev(&mut r).studios.push(c.clone());
        only(&r, Cause::DeadStudio, Some("c"));
        // Loss short of 100% with the port open: the network, not the studio.
        let mut r = healthy();
        let p = c.preflight.as_mut().unwrap();
        p.failed_checks = vec!["ping".into()];
        p.problems = vec!["ping 4/5 replies, 20% loss".into()];
        p.ping_loss_pct = Some(20.0);
        ev(&mut r).studios.push(c);
        let d = only(&r, Cause::NetworkBound, Some("c"));
        assert_eq!(d.findings[0].severity, Severity::Critical);
    }

    #[test]
    fn a_studio_that_went_down_during_the_run_is_dead() {
        let mut r = healthy();
        let last = ev(&mut r).levels.last_mut().unwrap();
        let b = last.balancer.get_mut("b").unwrap();
        b.successes = 0;
        b.requests = 3;
        b.state = "ejected".into();
        b.failures.insert("timeout".into(), 3);
        let d = only(&r, Cause::DeadStudio, Some("b"));
        assert!(
            d.findings[0].evidence.contains("went down"),
            "{}",
            d.findings[0].evidence
        );
        assert!(
            d.findings[0].evidence.contains("1.5 s"),
            "3 connect timeouts of 500 ms"
        );
    }

    #[test]
    fn failures_while_serving_make_a_flaky_studio() {
        let mut r = healthy();
        for l in &mut ev(&mut r).levels {
            let b = l.balancer.get_mut("b").unwrap();
            b.requests += 2;
            b.failures.insert("status_5xx".into(), 2);
        }
        let d = only(&r, Cause::FlakyStudio, Some("b"));
        assert!(d.findings[0].remedy.contains("server log"));
        // One failure in a thousand is not flaky.
        let mut r = healthy();
        let b = ev(&mut r).levels[1].balancer.get_mut("b").unwrap();
        b.requests = 1000;
        b.failures.insert("stream".into(), 1);
        assert!(diagnose(&r).findings.is_empty());
    }

    #[test]
    fn a_studio_running_one_request_at_a_time_is_serialized() {
        let mut r = healthy();
        let p = &mut ev(&mut r).probes[1];
        p.slots = 4;
        ev(&mut r).studios[1].slots = 4;
        // Four at once: the same 4 req/s, and the first token waits.
        ev(&mut r).probes[1].full = Some(run(4, 4.1, wev(8, 480.0, 630.0)));
        let d = only(&r, Cause::Serialized, Some("b"));
        let f = &d.findings[0];
        assert!(
            f.evidence.contains("runs about 1 at a time"),
            "{}",
            f.evidence
        );
        assert!(
            f.remedy.contains("Max Concurrent Predictions"),
            "{}",
            f.remedy
        );
        assert_eq!(f.figures["effective_parallel"], 1.0);
    }

    #[test]
    fn a_knee_in_the_sweep_is_saturation_with_the_best_concurrency() {
        let mut r = healthy();
        let more = [
            level(8, 16.2, 0.35, 0.5, &[("a", 32), ("b", 32)]),
            level(16, 16.1, 0.85, 1.0, &[("a", 32), ("b", 32)]),
        ];
        for l in more {
            let mut e = level_ev(&l, l.ttft_avg * 1000.0, l.avg_response_time * 1000.0);
            e.baton.as_mut().unwrap().queue_avg = l.concurrency as f64 - 4.0;
            ev(&mut r).levels.push(e);
            r.concurrency_benchmark.push(l);
        }
        let d = only(&r, Cause::Saturated, None);
        let f = &d.findings[0];
        assert_eq!(f.severity, Severity::Warning, "16 is four times the knee");
        assert_eq!(f.figures["best_concurrency"], 4.0);
        assert!(f.evidence.contains("Baton's queue"), "{}", f.evidence);
        assert_eq!(d.time_split.as_ref().unwrap().concurrency, 4);
        // Just past the knee it is only a note.
        for _ in 0..2 {
            r.concurrency_benchmark.pop();
            ev(&mut r).levels.pop();
        }
        let l = level(6, 16.1, 0.2, 0.37, &[("a", 24), ("b", 24)]);
        ev(&mut r).levels.push(level_ev(&l, 200.0, 370.0));
        r.concurrency_benchmark.push(l);
        let d = diagnose(&r);
        assert_eq!(d.findings.len(), 1);
        assert_eq!(d.findings[0].severity, Severity::Info);
        assert!(d.healthy);
    }

    #[test]
    fn a_first_answer_that_paid_a_model_load_is_a_cold_model() {
        // Seen by preflight's first request...
        let mut r = healthy();
        ev(&mut r).studios[0]
            .preflight
            .as_mut()
            .unwrap()
            .first_token_ms = Some(5200.0);
        let d = only(&r, Cause::ColdModel, Some("a"));
        assert!(
            d.findings[0].evidence.contains("5.20 s"),
            "{}",
            d.findings[0].evidence
        );
        assert!(d.findings[0].remedy.contains("lms load"));
        // ...or reported by the studio (Ollama's load_duration).
        let mut r = healthy();
        let first = ev(&mut r).probes[1].first.as_mut().unwrap();
        first.server = Some(ServerSplit {
            source: "Ollama durations".into(),
            requests: 1,
            load_ms: Some(2500.0),
            ..ServerSplit::default()
        });
        ev(&mut r).studios[1].kind = "ollama".into();
        let d = only(&r, Cause::ColdModel, Some("b"));
        assert!(d.findings[0].remedy.contains("OLLAMA_KEEP_ALIVE"));
        // A first request 300 ms slower is a cold cache, not a load.
        let mut r = healthy();
        ev(&mut r).probes[0].first = Some(wev(1, 400.0, 550.0));
        assert!(diagnose(&r).findings.is_empty());
    }

    #[test]
    fn time_outside_the_studio_or_a_slow_ping_is_network_bound() {
        let mut r = healthy();
        // The studio says 100 ms to first token; the client waited 180.
        let single = ev(&mut r).probes[0].single.as_mut().unwrap();
        single.detail = wev(3, 180.0, 330.0);
        single.detail.server = Some(ServerSplit {
            source: "LM Studio stats".into(),
            requests: 3,
            ttft_ms: Some(100.0),
            decode_ms: Some(150.0),
            total_ms: Some(250.0),
            outside_ms: Some(80.0),
            ..ServerSplit::default()
        });
        let d = only(&r, Cause::NetworkBound, Some("a"));
        assert!(d.findings[0].evidence.contains("outside the studio"));
        assert!((d.findings[0].figures["outside_ms"] - 80.0).abs() < 1e-9);
        // Ping over the checklist's limit.
        let mut r = healthy();
        ev(&mut r).studios[1]
            .preflight
            .as_mut()
            .unwrap()
            .ping_avg_ms = Some(35.0);
        let d = only(&r, Cause::NetworkBound, Some("b"));
        assert!(d.findings[0].evidence.contains("35.0 ms"));
    }

    #[test]
    fn a_studio_four_times_slower_is_slow() {
        let mut r = healthy();
        ev(&mut r).studios.push(facts("c", 2));
        let mut slow = probe("c", 2);
        slow.single = Some(run(1, 1.0, wev(3, 400.0, 1000.0)));
        slow.full = Some(run(2, 2.0, wev(4, 400.0, 1000.0)));
        ev(&mut r).probes.push(slow);
        let d = only(&r, Cause::SlowStudio, Some("c"));
        let f = &d.findings[0];
        assert!(
            (f.figures["slowdown"] - 4.0).abs() < 0.01,
            "{:?}",
            f.figures
        );
        assert!(f.evidence.contains("tok/s"), "{}", f.evidence);
    }

    #[test]
    fn fewer_requests_in_flight_than_asked_is_client_bound() {
        let mut r = healthy();
        // Asked for 4, sustained 2: half the throughput at the same latency.
        r.concurrency_benchmark[1] = level(4, 8.0, 0.1, 0.25, &[("a", 8), ("b", 8)]);
        ev(&mut r).levels[1].client_wait_ms = 240.0;
        let d = only(&r, Cause::ClientBound, None);
        assert!(
            d.findings[0].evidence.contains("2.0 requests"),
            "{}",
            d.findings[0].evidence
        );
        assert!(d.findings[0].evidence.contains("free connection"));
        // Baton saw half of what the client had out.
        let mut r = healthy();
        let b = ev(&mut r).levels[1].baton.as_mut().unwrap();
        b.in_flight_avg = 1.5;
        b.client_in_flight_avg = 4.0;
        only(&r, Cause::ClientBound, None);
    }

    #[test]
    fn a_busy_measuring_machine_is_client_bound_and_its_timings_are_not_trusted() {
        // The pool fell to 60% of what the studios alone promise while this
        // machine's CPU was pegged.
        let mut r = healthy();
        r.concurrency_benchmark[1] = level(4, 9.6, 0.16, 0.41, &[("a", 10), ("b", 10)]);
        r.concurrency_benchmark[1].littles_law.client_bound = false;
        r.concurrency_benchmark[1]
            .host_usage
            .process_cpu_avg_percent = 97.0;
        let d = only(&r, Cause::ClientBound, None);
        assert!(
            d.findings[0].evidence.contains("97%"),
            "{}",
            d.findings[0].evidence
        );
        // The same shortfall with Baton idle is not the client's, even with
        // other programs keeping the machine busy.
        r.concurrency_benchmark[1]
            .host_usage
            .process_cpu_avg_percent = 30.0;
        r.concurrency_benchmark[1].host_usage.cpu_avg_percent = 100.0;
        assert!(
            diagnose(&r)
                .findings
                .iter()
                .all(|f| f.cause != Cause::ClientBound)
        );
        // Time outside the studio measured on a pegged machine is no
        // evidence of the network.
        let mut r = healthy();
        let single = ev(&mut r).probes[0].single.as_mut().unwrap();
        single.detail.server = Some(ServerSplit {
            source: "LM Studio stats".into(),
            requests: 3,
            total_ms: Some(170.0),
            outside_ms: Some(80.0),
            ..ServerSplit::default()
        });
        assert_eq!(
            diagnose(&r).findings.len(),
            1,
            "outside time counts when idle"
        );
        ev(&mut r).probe_host = Some(HostUsage {
            cpu_avg_percent: 99.0,
            cpu_max_percent: 100.0,
            memory_used_gb: 1.0,
            process_cpu_avg_percent: 95.0,
        });
        assert!(diagnose(&r).findings.is_empty());
    }

    #[test]
    fn baton_adding_latency_at_concurrency_one_is_overhead() {
        let mut r = healthy();
        let l = &mut ev(&mut r).levels[0];
        for w in l.workers.values_mut() {
            *w = wev(w.ok, 140.0, 292.0);
        }
        let d = only(&r, Cause::BalancerOverhead, None);
        // 292 ms through Baton against 250 ms direct.
        assert!((d.findings[0].figures["added_ms"] - 42.0).abs() < 1e-9);
        // 5 ms is noise.
        let mut r = healthy();
        for w in ev(&mut r).levels[0].workers.values_mut() {
            *w = wev(w.ok, 105.0, 257.0);
        }
        assert!(diagnose(&r).findings.is_empty());
    }

    #[test]
    fn runs_recorded_without_evidence_are_diagnosed_from_their_tables() {
        // Healthy.
        let mut r = healthy();
        r.evidence = None;
        let d = diagnose(&r);
        assert_eq!(d.basis, "tables");
        assert!(d.findings.is_empty(), "{}", render(&d));
        assert!(d.scaling_efficiency.is_none());
        // A studio of the file that never served while the others were full.
        let mut r = healthy();
        r.evidence = None;
        r.config["workers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"id": "c", "host": "10.0.0.9", "port": 1234, "type": "ollama", "model": "m", "max_concurrent_requests": 2}));
        r.concurrency_benchmark[1].concurrency = 6;
        let d = diagnose(&r);
        assert!(
            d.findings
                .iter()
                .any(|f| f.cause == Cause::DeadStudio && f.worker.as_deref() == Some("c")),
            "{}",
            render(&d)
        );
        // Client-seen failures named by studio.
        let mut r = healthy();
        r.evidence = None;
        let w = r.concurrency_benchmark[1]
            .worker_stats
            .get_mut("a")
            .unwrap();
        w.requests += 4;
        w.failed = 4;
        only(&r, Cause::FlakyStudio, Some("a"));
        // A studio that got a fraction of its slots' share.
        let mut r = healthy();
        r.evidence = None;
        r.concurrency_benchmark[1] = level(4, 10.0, 0.1, 0.4, &[("a", 28), ("b", 4)]);
        only(&r, Cause::SlowStudio, Some("b"));
    }

    #[test]
    fn the_json_shape_is_stable() {
        let mut r = healthy();
        ev(&mut r).probes[1].full = Some(run(2, 4.1, wev(4, 480.0, 630.0)));
        let d = diagnose(&r);
        let v = serde_json::to_value(&d).unwrap();
        let f = &v["findings"][0];
        assert_eq!(f["cause"], "serialized");
        assert_eq!(f["worker"], "b");
        assert_eq!(f["severity"], "warning");
        assert!(f["evidence"].is_string() && f["remedy"].is_string());
        assert!(
            v["verdict"]
                .as_str()
                .unwrap()
                .starts_with("1 problem found")
        );
        assert_eq!(v["healthy"], false);
        assert!(v["scaling_efficiency"].is_number());
        // Round trip through the results file.
        r.diagnosis = Some(d.clone());
        let back: BenchResult = serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back.diagnosis.unwrap(), d);
        // Pure: the same run, the same verdict.
        assert_eq!(diagnose(&r), d);
    }
}
