//! `baton bench` against simulated studios with known capacity.

use crate::support;

use std::process::Stdio;
use std::sync::Arc;

use baton::bench::compare;
use baton::bench::report::BenchResult;
use baton::bench::run::{self, BenchError, Gate, Mode, Plan};
use baton::sim::SimHandle;
use serde_json::Value;
use support::{BatonCmd, SimCfgExt, plan, pool};
use tokio_util::sync::CancellationToken;

/// Studios whose answer takes 200 ms + 19 x 10 ms = 390 ms for 20 tokens.
async fn studios(n: usize) -> Vec<SimHandle> {
    support::start_sims((0..n).map(|i| support::sim_cfg(2, 200, 100.0).with_seed(i as u64 + 1)))
        .await
}

async fn bench(p: &Plan) -> Result<BenchResult, BenchError> {
    run::run(p, Arc::new(support::Quiet), CancellationToken::new()).await
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured - expected).abs() <= expected * tolerance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_latency_and_tokens_match_the_pools_capacity() {
    let sims = studios(2).await;
    let r = bench(&plan(pool(&sims), &[4, 16], 3.0)).await.unwrap();
    let (at4, at16) = (&r.concurrency_benchmark[0], &r.concurrency_benchmark[1]);
    // 4 slots, 390 ms per answer: 10.3 requests/s at saturation.
    let capacity = 4.0 / 0.39;
    assert!(
        within(at16.requests_per_second, capacity, 0.10),
        "{} req/s vs {capacity:.1}",
        at16.requests_per_second
    );
    assert_eq!(at16.success_rate, 100.0);
    // Below saturation nothing queues: TTFT and the streaming rate are the sim's.
    assert!(within(at4.ttft_avg, 0.200, 0.10), "TTFT {} s", at4.ttft_avg);
    assert!(
        within(1.0 / at4.tpot_avg, 100.0, 0.10),
        "{} tok/s per answer",
        1.0 / at4.tpot_avg
    );
    assert!(!at4.tokens_approximate, "usage chunks were present");
    assert!(
        within(at16.output_tokens_per_second, capacity * 20.0, 0.10),
        "{}",
        at16.output_tokens_per_second
    );
    // Both studios served, evenly; the client kept up (Little's law).
    assert_eq!(at16.worker_stats.len(), 2);
    for s in at16.worker_stats.values() {
        assert!((35.0..=65.0).contains(&s.load_percentage), "{s:?}");
    }
    assert!(!at16.littles_law.client_bound, "{:?}", at16.littles_law);
    assert!(at16.host_usage.cpu_max_percent > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_two_three_identical_studios_scale_linearly() {
    let sims = studios(3).await;
    let r = bench(&Plan {
        mode: Mode::Scaling,
        worker_counts: vec![1, 2, 3, 5],
        ..plan(pool(&sims), &[], 2.5)
    })
    .await
    .unwrap();
    let s = &r.worker_scaling_benchmark;
    assert_eq!(s.len(), 3, "5 exceeds the pool and is skipped");
    for (i, level) in s.iter().enumerate() {
        let n = (i + 1) as f64;
        assert_eq!(level.workers, i + 1);
        assert_eq!(level.concurrency, 2 * (i + 1), "workers x slots");
        assert!(
            within(level.speedup, n, 0.10),
            "{} workers: {:.2}x",
            i + 1,
            level.speedup
        );
        assert!(within(level.scaling_efficiency, 1.0, 0.10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unequal_studios_scale_against_their_sum_alone_not_a_linear_ideal() {
    // Two fast studios (4 slots, 210 ms an answer: 19 req/s each) and one
    // half as fast with half the slots (2 slots, 400 ms: 5 req/s).
    let sims = support::start_sims([
        support::sim_cfg(4, 20, 100.0).with_seed(1),
        support::sim_cfg(4, 20, 100.0).with_seed(2),
        support::sim_cfg(2, 20, 50.0).with_seed(3),
    ])
    .await;
    let r = bench(&Plan {
        mode: Mode::Scaling,
        worker_counts: vec![1, 3],
        probe_studios: true,
        ..plan(pool(&sims), &[], 2.5)
    })
    .await
    .unwrap();
    let three = &r.worker_scaling_benchmark[1];
    // The user's ratio stays: about (19 + 19 + 5) / 19 = 2.26x one studio...
    assert!(
        (1.9..=2.6).contains(&three.speedup),
        "speedup {:.2}",
        three.speedup
    );
    // ...but the pool gives what its three studios give alone: efficiency
    // near 100%, not 2.26 / 3 = 75% against a linear ideal.
    assert!(
        (0.88..=1.1).contains(&three.scaling_efficiency),
        "efficiency {:.2} at {:.2}x",
        three.scaling_efficiency,
        three.speedup
    );
    // The chart's ideal is the same sum, not 3x.
    let charts = baton::chart::render_all(&[("run".into(), &r)]).unwrap();
    let scaling = charts.iter().find(|c| c.name == "scaling").unwrap();
    let ideal: Vec<&str> = scaling
        .points
        .iter()
        .filter(|p| p.series.starts_with("ideal"))
        .map(|p| p.label.as_str())
        .collect();
    assert!(
        ideal.iter().any(|l| l.contains("workers 3,"))
            && !ideal.iter().any(|l| l.ends_with(" 3.00")),
        "ideal points: {ideal:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_too_short_for_its_concurrency_is_short_not_client_bound() {
    // 32 slots in all, so concurrency 32 never queues; 48 requests there
    // run one full round, then drain a half one.
    let sims =
        support::start_sims((0..2).map(|i| support::sim_cfg(16, 200, 100.0).with_seed(i + 1)))
            .await;
    let r = bench(&Plan {
        requests: Some(48),
        duration: None,
        ..plan(pool(&sims), &[32], 0.0)
    })
    .await
    .unwrap();
    let level = &r.concurrency_benchmark[0];
    let d = serde_json::to_value(r.diagnosis.as_ref().unwrap()).unwrap();
    let causes: Vec<&str> = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["cause"].as_str().unwrap())
        .collect();
    let text = baton::bench::diagnose::render(r.diagnosis.as_ref().unwrap());
    assert!(
        !causes.contains(&"client_bound") && !level.littles_law.client_bound,
        "the drain is not the client's doing: {text}\n{:?}",
        level.littles_law
    );
    let short = d["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["cause"] == "short_level")
        .unwrap_or_else(|| panic!("no short_level finding: {text}"));
    let evidence = short["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("48 requests") && evidence.contains("CPU"),
        "{evidence}"
    );
    assert!(
        short["remedy"].as_str().unwrap().contains("--requests 320"),
        "{}",
        short["remedy"]
    );
    // What told the two apart: the client kept all 32 out while it had
    // requests to send, and the level drained for about half its time.
    let v = serde_json::to_value(level).unwrap();
    let law = &v["littles_law"];
    assert!(
        law["in_flight_while_sending"].as_f64().unwrap() >= 28.0,
        "{law}"
    );
    assert!(
        (0.3..=0.7).contains(&law["ramp_down_share"].as_f64().unwrap()),
        "{law}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_keeps_the_users_names_and_compare_prints_the_table() {
    let sims = studios(3).await;
    let one = bench(&plan(pool(&sims[..1]), &[2, 6], 2.0)).await.unwrap();
    let three = bench(&Plan {
        mode: Mode::Both,
        worker_counts: vec![1, 3],
        ..plan(pool(&sims), &[2, 6], 2.0)
    })
    .await
    .unwrap();
    // The user's jq lines, as serde_json paths.
    let v: Value = serde_json::to_value(&three).unwrap();
    for l in v["concurrency_benchmark"].as_array().unwrap() {
        for key in ["concurrency", "requests_per_second", "success_rate"] {
            assert!(l[key].is_number(), "concurrency_benchmark[].{key}");
        }
    }
    for l in v["worker_scaling_benchmark"].as_array().unwrap() {
        for key in [
            "workers",
            "requests_per_second",
            "speedup",
            "scaling_efficiency",
        ] {
            assert!(l[key].is_number(), "worker_scaling_benchmark[].{key}");
        }
    }
    assert!(v["preflight"]["status"].is_string());
    assert_eq!(v["config"]["workers"].as_array().unwrap().len(), 3);
    assert!(v["host"]["cpus"].as_u64().unwrap() >= 1);

    // compare: files on disk, through the CLI.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("single.json"),
        dir.path().join("multiple.json"),
    );
    std::fs::write(&a, serde_json::to_string(&one).unwrap()).unwrap();
    std::fs::write(&b, serde_json::to_string(&three).unwrap()).unwrap();
    let out = BatonCmd::new(["compare"]).arg(&a).arg(&b).output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("PERFORMANCE COMPARISON"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("6 ")), "{text}");
    // The user's words: a Speedup and a Status, not `x multiple`.
    let head = text.lines().find(|l| l.starts_with("Concurrency")).unwrap();
    assert!(
        head.contains("Speedup") && head.contains("Status") && !head.contains("x mult"),
        "{text}"
    );
    let at6 = text.lines().find(|l| l.starts_with("6 ")).unwrap();
    assert!(at6.ends_with("x faster"), "{text}");
    let c = compare::compare(&[
        ("single".into(), one.clone()),
        ("multiple".into(), three.clone()),
    ]);
    let at6 = c.rows.iter().find(|r| r.concurrency == 6).unwrap();
    // 1 studio: 2 slots; 3 studios: 6 slots. At concurrency 6 that is ~3x.
    assert!(within(at6.speedup[1].unwrap(), 3.0, 0.12), "{:?}", at6);
    assert!(
        c.verdicts[0].contains("with 3 workers vs 1") && c.verdicts[0].contains("efficient"),
        "{:?}",
        c.verdicts
    );
    let json = BatonCmd::new(["compare"])
        .arg(&a)
        .arg(&b)
        .arg("--json")
        .output();
    let j: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(j["runs"].as_array().unwrap().len(), 2);

    // `baton runs`: when a run started, in local time, not Unix seconds.
    let home = dir.path().join("home");
    let store = baton::store::Store::open(&home.join("data/baton/baton.sqlite3")).unwrap();
    let mut dated = one.clone();
    dated.started_at = 1_700_000_000;
    store.save_run(&dated, None).unwrap();
    drop(store);
    let out = BatonCmd::new(["runs"])
        .home(&home)
        .env("TZ", "UTC")
        .output();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2023-11-14 22:13") && !text.contains("1700000000"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A slower pool gets the warning verdict.
    let c = compare::compare(&[
        ("multiple".into(), three.clone()),
        ("single".into(), one.clone()),
    ]);
    assert!(
        c.verdicts[0].contains("slower than multiple") && c.verdicts[0].contains("preflight"),
        "{:?}",
        c.verdicts
    );

    // Charts: PNGs decode, SVGs parse, one throughput line per run.
    let charts = dir.path().join("charts");
    let files = baton::chart::write_all(
        &[("single".into(), &one), ("multiple".into(), &three)],
        &charts,
    )
    .unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for want in ["throughput", "latency", "ttft_tpot", "share", "scaling"] {
        assert!(
            names.contains(&format!("{want}.png")) && names.contains(&format!("{want}.svg")),
            "{names:?}"
        );
    }
    for f in &files {
        if f.extension().unwrap() == "png" {
            let decoder =
                png::Decoder::new(std::io::BufReader::new(std::fs::File::open(f).unwrap()));
            let reader = decoder.read_info().unwrap();
            assert_eq!(
                (reader.info().width, reader.info().height),
                (1200, 800),
                "{}",
                f.display()
            );
        } else {
            let text = std::fs::read_to_string(f).unwrap();
            roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        }
    }
    // Text that reads where the charts are seen: the dashboard draws them
    // 330-520 px wide, so at 400 px no text may be under 11 px (it was 6).
    for name in ["throughput", "latency", "ttft_tpot", "share", "scaling"] {
        let svg = std::fs::read_to_string(charts.join(format!("{name}.svg"))).unwrap();
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let root = doc.root_element();
        let width: f64 = root
            .attribute("width")
            .and_then(|w| w.trim_end_matches("px").parse().ok())
            .or_else(|| {
                let vb = root.attribute("viewBox")?;
                vb.split_whitespace().nth(2)?.parse().ok()
            })
            .unwrap();
        let sizes: Vec<f64> = doc
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| {
                n.attribute("font-size")?
                    .trim_end_matches("px")
                    .parse()
                    .ok()
            })
            .collect();
        let smallest = sizes.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(
            !sizes.is_empty() && smallest * 400.0 / width >= 11.0,
            "{name}: text of {smallest} in a {width}-wide chart is {:.1} px at 400 px",
            smallest * 400.0 / width
        );
    }
    let svg = std::fs::read_to_string(charts.join("throughput.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let mut strokes: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .filter_map(|n| n.attribute("stroke").map(str::to_string))
        .filter(|c| c != "#000000") // axes
        .collect();
    strokes.sort();
    strokes.dedup();
    assert_eq!(strokes.len(), 2, "one series colour per run: {strokes:?}");
    assert!(
        svg.contains("requests per second") && svg.contains("single") && svg.contains("multiple")
    );
}

#[tokio::test]
async fn preflight_gates_a_pool_with_a_refusing_studio() {
    let sims = studios(1).await;
    let mut cfg = pool(&sims);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut bad = cfg.workers[0].clone();
    bad.id = "refusing".into();
    bad.port = dead;
    cfg.workers.push(bad);
    let err = bench(&plan(cfg.clone(), &[1], 1.0)).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BenchError::PreflightFailed(_)), "{msg}");
    assert!(
        msg.contains("refusing tcp") && msg.contains("--exclude-unhealthy"),
        "{msg}"
    );
    let mut p = plan(cfg, &[1], 1.0);
    p.gate = Gate::ExcludeUnhealthy;
    let r = bench(&p).await.unwrap();
    let pf = r.preflight.unwrap();
    assert_eq!(pf.excluded_workers, ["refusing"]);
    assert_eq!(r.config["workers"].as_array().unwrap().len(), 1);
    assert!(r.concurrency_benchmark[0].successful_requests > 0);
}

#[test]
fn store_round_trip_and_migration_from_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baton.sqlite3");
    std::fs::write(&path, b"").unwrap();
    let store = baton::store::Store::open(&path).unwrap();
    assert_eq!(store.schema_version(), 3);
    let result: BenchResult = serde_json::from_value(serde_json::json!({
        "baton_version": "0.1.0", "started_at": 1700000000, "finished_at": 1700000060, "interrupted": false,
        "mode": "concurrency", "target": "balancer",
        "settings": {"model": "m", "max_tokens": 8, "warmup_requests": 1, "repeat": 1,
                     "concurrency_levels": [1], "worker_counts": [], "prompts": 1},
        "config": {"workers": [{"id": "a"}, {"id": "b"}]},
        "host": {"os": "linux", "arch": "x86_64", "cpus": 2, "memory_gb": 24.0},
        "concurrency_benchmark": [], "worker_scaling_benchmark": []
    }))
    .unwrap();
    let id = store.save_run(&result, Some("first")).unwrap();
    let listed = store.list_runs().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id, listed[0].workers, listed[0].label.as_deref()),
        (id, 2, Some("first"))
    );
    assert_eq!(store.get_run(id).unwrap(), result);
    assert!(matches!(
        store.get_run(id + 1),
        Err(baton::store::StoreError::NoSuchRun(_))
    ));
    drop(store);
    // Reopening migrates nothing twice and keeps the data (3: runs and
    // preflights, batch jobs, what the balancer learned of each studio).
    let again = baton::store::Store::open(&path).unwrap();
    assert_eq!(again.schema_version(), 3);
    assert_eq!(again.list_runs().unwrap().len(), 1);
}

#[test]
fn ctrl_c_keeps_the_finished_levels() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.json");
    let mut child = BatonCmd::new([
        "bench",
        "--simulate",
        "1",
        "--mode",
        "concurrency",
        "--concurrency-levels",
        "1",
        "2",
        "4",
        "8",
        "--duration",
        "1.5",
        "--no-charts",
        "-o",
    ])
    .arg(&out)
    .home(dir.path())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn();
    child.stderr_until(|l: &str| l.contains("concurrency 1:") && l.contains("req/s"));
    // SIGINT, as Ctrl-C in a terminal sends.
    child.interrupt();
    let status = child.wait();
    assert_eq!(status.code(), Some(130));
    let r: BenchResult = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(r.interrupted);
    assert!(
        !r.concurrency_benchmark.is_empty() && r.concurrency_benchmark.len() < 4,
        "{}",
        r.concurrency_benchmark.len()
    );
    assert_eq!(r.concurrency_benchmark[0].concurrency, 1);
}

#[test]
fn preflight_reports_are_kept_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = baton::store::Store::open(&dir.path().join("s.sqlite3")).unwrap();
    assert!(store.last_preflight().unwrap().is_none());
    let report: baton::preflight::Report = serde_json::from_value(serde_json::json!({
        "status": "warn", "started_at": 1700000000, "duration_ms": 12.5,
        "thresholds": baton::preflight::Thresholds::default(),
        "hosts": []
    }))
    .unwrap();
    store.save_preflight(&report).unwrap();
    let back = store.last_preflight().unwrap().unwrap();
    assert_eq!(back.status, baton::preflight::Status::Warn);
}
