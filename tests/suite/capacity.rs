//! `baton bench --mode capacity` on simulated studios whose capacity is
//! known from their slots, speeds and time to first token (the model in
//! `src/sim/mod.rs`), and the what-if predictions checked by measuring the
//! pools they predict.

use crate::support;

use std::sync::Arc;

use baton::bench::report::{Capacity, Change, LimitedBy, Slo};
use baton::bench::run::{self, Mode, Plan};
use baton::config::Config;
use baton::sim::{SimConfig, SimHandle};
use support::{BatonCmd, plan};
use tokio_util::sync::CancellationToken;

const TTFT_MS: u64 = 60;
const TOKENS: u32 = 10;
/// The level: first tokens within 150 ms (the studios give them in 60 ms
/// unless a request waits for a slot) and 20 tokens a second.
const SLO: Slo = Slo {
    ttft_p95_ms: Some(150.0),
    tokens_per_s: Some(20.0),
};

/// A studio's capacity from the sim's model: `slots` answers at once, the
/// rest wait in line for a whole answer (`ttft` + the other tokens at
/// `tps`). Each agent more than a multiple of the slots makes a request in
/// every round wait that long; the level allows waits up to its limit less
/// the studio's own first-token time.
fn known_capacity(slots: usize, tps: f64, slo: &Slo) -> usize {
    let answer_ms = TTFT_MS as f64 + f64::from(TOKENS - 1) * 1000.0 / tps;
    if slo.tokens_per_s.is_some_and(|min| tps < min) {
        return 0;
    }
    let allowed_wait = slo.ttft_p95_ms.unwrap() - TTFT_MS as f64;
    slots * (1 + (allowed_wait / answer_ms).floor() as usize)
}

/// A pool's capacity when each studio alone serves its slots: Baton keeps
/// the requests beyond the slots in one queue, and the p95 shows their
/// wait once more than 1 in 20 requests wait (past slots / 0.95 agents).
/// Beyond that the pool may do a little better than its studios alone:
/// slots free at staggered times, so a queued request can wait less than a
/// whole answer.
fn known_pool_capacity(slots: usize) -> usize {
    (slots as f64 / 0.95).floor() as usize
}

fn sim(slots: usize, tps: f64, seed: u64) -> SimConfig {
    SimConfig {
        seed,
        ..support::sim_cfg(slots, TTFT_MS, tps)
    }
}

fn pool(studios: &[(&str, &SimHandle)]) -> Config {
    Config {
        workers: studios
            .iter()
            .map(|(id, s)| support::worker_for(id, s))
            .collect(),
        ..Config::default()
    }
}

async fn capacity(cfg: Config) -> Capacity {
    let p = Plan {
        mode: Mode::Capacity,
        max_tokens: TOKENS,
        duration: None,
        probe_studios: true,
        slo: SLO,
        ..plan(cfg, &[], 1.0)
    };
    let r = run::run(&p, Arc::new(support::Quiet), CancellationToken::new())
        .await
        .unwrap();
    assert!(!r.interrupted);
    r.capacity.expect("a capacity run keeps its capacity")
}

fn close(measured: usize, predicted: usize, share: f64) -> bool {
    (measured as f64 - predicted as f64).abs() <= predicted as f64 * share
}

fn predicted(c: &Capacity, change: Change) -> usize {
    c.what_if
        .iter()
        .find(|w| w.change == change)
        .unwrap_or_else(|| panic!("no {change} in {:?}", c.what_if))
        .max_concurrency
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_search_finds_the_capacity_known_from_slots_speeds_and_first_token_time_and_the_what_ifs_hold_within_15_percent()
 {
    // Two fast studios and one half as fast with half the slots.
    let specs = [(8, 100.0), (8, 100.0), (4, 50.0)];
    let sims = support::start_sims(
        specs
            .iter()
            .enumerate()
            .map(|(i, &(slots, tps))| sim(slots, tps, i as u64 + 1)),
    )
    .await;
    let known: Vec<usize> = specs
        .iter()
        .map(|&(slots, tps)| known_capacity(slots, tps, &SLO))
        .collect();
    assert_eq!(known, [8, 8, 4], "the level allows no wait for a slot");

    let all = capacity(pool(&[
        ("fast-1", &sims[0]),
        ("fast-2", &sims[1]),
        ("slow", &sims[2]),
    ]))
    .await;
    let found: Vec<(&str, usize)> = all
        .per_studio
        .iter()
        .map(|s| (s.id.as_str(), s.max_concurrency))
        .collect();
    assert_eq!(
        found,
        [("fast-1", 8), ("fast-2", 8), ("slow", 4)],
        "{:#?}",
        all.per_studio
    );
    assert!(
        all.per_studio
            .iter()
            .all(|s| s.limited_by == Some(LimitedBy::TtftP95))
    );
    let slots: usize = known.iter().sum();
    let pool_known = known_pool_capacity(slots);
    assert_eq!(pool_known, 21);
    assert!(
        (pool_known - 1..=pool_known + 3).contains(&all.max_concurrency),
        "pool: {} agents, {pool_known} known; {:#?}",
        all.max_concurrency,
        all.points
    );
    assert_eq!(all.limited_by, Some(LimitedBy::TtftP95));
    let at = all
        .points
        .iter()
        .find(|p| p.concurrency == all.max_concurrency);
    assert!(at.is_some_and(|p| p.meets && p.ttft_p95_ms <= 150.0));
    assert!(all.goodput_rps > 0.0 && all.tokens_per_s > 0.0);
    // Doubling then bisecting: far fewer points than concurrencies.
    assert!(all.points.len() <= 12, "{} points", all.points.len());
    let p = all.predicted.as_ref().unwrap();
    assert!(p.error_pct.abs() <= 15.0, "{p:?}");
    assert_eq!(all.what_if.len(), 6);
    assert_eq!(all.least_per_slot.as_deref(), Some("slow"));

    // The prediction without a fast studio, measured (`--only fast-1,slow`).
    let without = predicted(&all, Change::Without("fast-2".into()));
    let subset = capacity(pool(&[("fast-1", &sims[0]), ("slow", &sims[2])])).await;
    assert!(
        close(subset.max_concurrency, without, 0.15),
        "without fast-2: predicted {without}, measured {}",
        subset.max_concurrency
    );
    // And from the smaller pool, one more like fast-1 is the whole pool.
    let plus = predicted(&subset, Change::PlusOneLike("fast-1".into()));
    assert!(
        close(all.max_concurrency, plus, 0.15),
        "plus one like fast-1: predicted {plus}, measured {}",
        all.max_concurrency
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_answers_in_one_sentence_first_and_measures_only_the_studios_named() {
    let sims = support::start_sims([sim(2, 100.0, 1), sim(4, 100.0, 2)]).await;
    let dir = tempfile::tempdir().unwrap();
    let workers = dir.path().join("workers.json");
    std::fs::write(
        &workers,
        pool(&[("a", &sims[0]), ("b", &sims[1])])
            .to_json()
            .to_string(),
    )
    .unwrap();
    let bench = |only: &[&str], out: &str| {
        let out = dir.path().join(out);
        let mut cmd = BatonCmd::new(["bench", "--mode", "capacity"])
            .args(["--slo-ttft-p95", "150ms", "--slo-tokens-per-s", "20"])
            .args(["--max-tokens", "10", "--skip-preflight", "--no-charts"])
            .arg("-c")
            .arg(&workers)
            .arg("-o")
            .arg(&out)
            .home(dir.path());
        if !only.is_empty() {
            cmd = cmd.arg("--only").arg(only.join(","));
        }
        (cmd, out)
    };
    // The whole pool first: its studios alone predict any part of it.
    let (cmd, _) = bench(&[], "all.json");
    let whole = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap();
    assert!(
        whole.status.success(),
        "{}",
        String::from_utf8_lossy(&whole.stderr)
    );
    let (cmd, out) = bench(&["a"], "r.json");
    // The studios answer on this runtime while the command runs.
    let run = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let first = stdout.lines().find(|l| !l.trim().is_empty()).unwrap();
    assert_eq!(
        first,
        "This pool serves 2 agents at once with first tokens under 150 ms (p95) and 20 tok/s each; limited by time to first token."
    );
    assert!(stdout.contains("Capacity search"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let c = &v["capacity"];
    assert_eq!(c["max_concurrency"], 2);
    assert_eq!(c["limited_by"], "ttft_p95");
    assert_eq!(
        c["slo"],
        serde_json::json!({"ttft_p95_ms": 150.0, "tokens_per_s": 20.0})
    );
    assert_eq!(c["per_studio"].as_array().unwrap().len(), 1, "only a");
    assert_eq!(c["per_studio"][0]["id"], "a");
    let point = &c["points"][0];
    for key in [
        "concurrency",
        "meets",
        "ttft_p95_ms",
        "tokens_per_s_p50",
        "rps",
    ] {
        assert!(!point[key].is_null(), "{key} in {point}");
    }
    assert_eq!(c["what_if"][0]["change"], "without a");
    // The part measured against the whole pool's prediction for it.
    assert_eq!(c["checked"]["run_id"], 1);
    assert_eq!(c["checked"]["predicted"], 2, "a served 2 alone in run 1");
    assert_eq!(c["checked"]["measured"], 2);
    assert!(
        stdout.contains("Run 1 predicted 2 agents for a (each alone, summed): measured 2 (+0%)."),
        "{stdout}"
    );

    let bad = BatonCmd::new(["bench", "--mode", "capacity", "--slo-ttft-p95", "2"])
        .home(dir.path())
        .output();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("write it as 2s or 1500ms"), "{err}");
}
