//! The results file is a user-facing format: a file written before this
//! schema changed still parses and is written back byte for byte, and a
//! run made today writes the keys that file has.
//!
//! `testdata/run-before-one-split.json` is a real `baton bench` run (three
//! simulated studios: llama.cpp, Ollama and LM Studio, whose answers carry
//! each kind's own timings) written by Baton before the three timing-split
//! types became one.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::BenchResult;
use crate::bench::run::{self, Gate, Mode, Observer, Plan, Target};
use crate::config::{BalancerSettings, Config};
use crate::sim::{self, SimConfig};
use crate::studio::StudioKind;

const BEFORE: &str = include_str!("testdata/run-before-one-split.json");

#[test]
fn a_results_file_written_before_the_split_types_merged_reads_and_writes_back_unchanged() {
    let r: BenchResult = serde_json::from_str(BEFORE).unwrap();
    // Every kind of split is in it: an answer's, a studio's, the pool's.
    let ev = r.evidence.as_ref().unwrap();
    assert!(
        ev.levels
            .iter()
            .any(|l| l.samples.iter().any(|s| s.server.is_some()))
    );
    assert!(
        ev.probes
            .iter()
            .all(|p| p.first.as_ref().unwrap().server.is_some())
    );
    assert!(r.diagnosis.as_ref().unwrap().time_split.is_some());
    // As `baton bench` writes it. The file's own text, read as plain JSON
    // and written again, is the reference: serde_json's default parser
    // may round a float's last digit (a reading matter, the same on both
    // sides), while keys, their order and every value must be the same.
    let plain: Value = serde_json::from_str(BEFORE).unwrap();
    let reference = serde_json::to_string_pretty(&plain).unwrap() + "\n";
    let again = serde_json::to_string_pretty(&r).unwrap() + "\n";
    assert!(
        again == reference,
        "the results file changed:\n{}",
        first_difference(&reference, &again)
    );
}

fn first_difference(before: &str, now: &str) -> String {
    let at = now
        .bytes()
        .zip(before.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(now.len().min(before.len()));
    let from = before[..at].rfind('\n').unwrap_or(0);
    let line = |s: &str| s[from..].lines().nth(1).unwrap_or("").to_string();
    format!("before: {}\nnow:    {}", line(before), line(now))
}

/// Every key path of a JSON value, with array indexes and the names of
/// studios and figures (map keys chosen by the data) as `*`.
fn key_paths(v: &Value, path: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            let named_by_data = [
                "worker_stats",
                "workers",
                "balancer",
                "figures",
                "errors",
                "failures",
                "ejections",
            ]
            .iter()
            .any(|k| path.ends_with(&format!(".{k}")));
            for (k, v) in m {
                let key = if named_by_data { "*" } else { k.as_str() };
                let p = format!("{path}.{key}");
                out.insert(p.clone());
                key_paths(v, &p, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                key_paths(v, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

/// Keys that come and go with what a run measured, not with the format:
/// findings and the waterfall's steps depend on this machine's load,
/// errors on failures, Baton's queue share on how long requests waited.
fn measured_not_format(p: &str) -> bool {
    [
        ".diagnosis.findings[]",
        ".diagnosis.waterfall[]",
        ".diagnosis.time_split.baton_queue_ms",
        ".errors",
        ".first_failures",
        ".last_error",
        ".failures",
        ".ejections",
    ]
    .iter()
    .any(|k| p.starts_with(k) || p.contains(k))
}

/// Keys added to the format since that file was written (an older file
/// reads without them); anything else new is a rename or a slip.
const ADDED_SINCE: &[&str] = &[
    // Issue 22: efficiency against the studios alone.
    ".worker_scaling_benchmark[].studios_alone_requests_per_second",
    // Issue 22: a level that drained apart from a client-bound one.
    ".concurrency_benchmark[].littles_law.in_flight_while_sending",
    ".concurrency_benchmark[].littles_law.ramp_down_share",
];

struct Quiet;

impl Observer for Quiet {
    fn note(&self, _: &str) {}
    fn level_started(&self, _: &str, _: Option<u64>, _: Option<Duration>) {}
    fn progress(&self, _: u64, _: u64) {}
    fn level_finished(&self, _: &str, _: &str) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_made_today_writes_the_keys_of_one_made_before() {
    // The run the file above came from, shorter.
    let kinds = [
        ("llama", StudioKind::LlamaCpp),
        ("ollama", StudioKind::Ollama),
        ("lmstudio", StudioKind::LmStudio),
    ];
    let mut sims = Vec::new();
    let mut workers = Vec::new();
    for (i, (id, kind)) in kinds.into_iter().enumerate() {
        let s = sim::start(
            ([127, 0, 0, 1], 0).into(),
            SimConfig {
                kind,
                slots: 2,
                ttft: Duration::from_millis(50),
                tokens_per_second: 200.0,
                seed: i as u64 + 1,
                ..SimConfig::default()
            },
        )
        .await
        .unwrap();
        workers.push(sim::worker_for(id, &s));
        sims.push(s);
    }
    let plan = Plan {
        mode: Mode::Both,
        target: Target::Balancer(Config {
            workers,
            balancer: BalancerSettings::default(),
            ..Default::default()
        }),
        model: sim::DEFAULT_MODEL.into(),
        max_tokens: 16,
        prompts: vec![],
        requests: Some(12),
        duration: None,
        warmup_requests: 1,
        repeat: 1,
        concurrency_levels: vec![1, 4],
        worker_counts: vec![1, 3],
        gate: Gate::Require,
        probe_studios: true,
        max_connections: None,
        slo: crate::bench::capacity::DEFAULT_SLO,
    };
    let r = run::run(&plan, Arc::new(Quiet), CancellationToken::new())
        .await
        .unwrap();
    let (mut before, mut now) = (BTreeSet::new(), BTreeSet::new());
    key_paths(&serde_json::from_str(BEFORE).unwrap(), "", &mut before);
    key_paths(&serde_json::to_value(&r).unwrap(), "", &mut now);
    let format = |s: &BTreeSet<String>| -> BTreeSet<String> {
        s.iter()
            .filter(|p| !measured_not_format(p))
            .cloned()
            .collect()
    };
    let (before, now) = (format(&before), format(&now));
    let lost: Vec<_> = before.difference(&now).collect();
    let new: Vec<_> = now
        .difference(&before)
        .filter(|p| !ADDED_SINCE.contains(&p.as_str()))
        .collect();
    assert!(
        lost.is_empty() && new.is_empty(),
        "keys lost: {lost:#?}\nkeys new: {new:#?}"
    );
    drop(sims);
}
