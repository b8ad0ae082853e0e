//! `baton batch` against simulated studios: complete, resumable, lossless.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use baton::batch::{self, LongDocs, Options};
use baton::bench::run::Target;
use baton::sim::{self, SimHandle};
use serde_json::{Value, json};
use support::{BatonCmd, SimCfgExt};
use tokio_util::sync::CancellationToken;

fn docs(dir: &Path, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(
            dir.join(format!("paper-{i:02}.txt")),
            format!("Paper {i}: pooling studios for inference, result {i}."),
        )
        .unwrap();
    }
}

fn options(input: &Path, out: &Path) -> Options {
    Options {
        input: input.to_path_buf(),
        out_dir: out.to_path_buf(),
        preset: "research".into(),
        prompts_file: None,
        model: sim::DEFAULT_MODEL.into(),
        concurrency: None,
        max_chars: 24_000,
        long_docs: LongDocs::Truncate,
        max_attempts: 3,
        max_tokens: Some(16),
        retry_failed: false,
    }
}

async fn studios(slots: &[usize], tps: f64) -> Vec<SimHandle> {
    support::start_sims(
        slots
            .iter()
            .enumerate()
            .map(|(i, s)| support::sim_cfg(*s, 20, tps).with_seed(i as u64 + 1)),
    )
    .await
}

fn pool(sims: &[SimHandle]) -> Target {
    Target::Balancer(support::pool(sims))
}

async fn run(o: &Options, t: &Target, store: &Path) -> anyhow::Result<batch::Summary> {
    batch::run(
        o,
        t,
        store,
        Arc::new(support::Quiet),
        CancellationToken::new(),
        CancellationToken::new(),
    )
    .await
}

fn results(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn no_temp_files(out: &Path) {
    for e in walk(out) {
        assert!(
            !e.to_string_lossy().ends_with(".tmp"),
            "partial file left: {}",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_documents_five_prompts_three_studios() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, store) = (
        dir.path().join("papers"),
        dir.path().join("out"),
        dir.path().join("s.sqlite3"),
    );
    docs(&input, 20);
    let sims = studios(&[4, 4, 2], 200.0).await;
    let s = run(&options(&input, &out), &pool(&sims), &store)
        .await
        .unwrap();
    assert_eq!((s.tasks, s.done, s.failed, s.pending), (100, 100, 0, 0));
    let r = results(&out);
    assert_eq!(r.len(), 100);
    assert!(r.iter().all(|x| x["status"] == "done" && x["tokens"] == 16));
    for i in 0..20 {
        let md = std::fs::read_to_string(out.join(format!("paper-{i:02}.md"))).unwrap();
        for title in [
            "## Summary",
            "## Key findings",
            "## Methodology",
            "## Limitations",
            "## Future work",
        ] {
            assert!(md.contains(title), "{title} missing in paper {i}");
        }
        assert!(!md.contains("Not processed") && !md.contains("Failed"));
        assert_eq!(md.matches("##").count(), 5);
    }
    // Shares follow the slots (4/4/2 = 40/40/20%).
    let share = |w: &str| *s.per_worker.get(w).unwrap_or(&0) as f64;
    assert!(
        (28.0..=52.0).contains(&share("studio-1")),
        "{:?}",
        s.per_worker
    );
    assert!(
        (28.0..=52.0).contains(&share("studio-2")),
        "{:?}",
        s.per_worker
    );
    assert!(
        (8.0..=32.0).contains(&share("studio-3")),
        "{:?}",
        s.per_worker
    );
    no_temp_files(&out);
    // Re-running redoes nothing; a changed document makes its tasks new.
    let again = run(&options(&input, &out), &pool(&sims), &store)
        .await
        .unwrap();
    assert_eq!(again.ran_now, 0);
    std::fs::write(input.join("paper-03.txt"), "Paper 3, revised.").unwrap();
    let changed = run(&options(&input, &out), &pool(&sims), &store)
        .await
        .unwrap();
    assert_eq!(changed.ran_now, 5);
    assert_eq!(
        results(&out).len(),
        100,
        "the old version's tasks are not reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_part_way_then_rerun_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("papers"), dir.path().join("out"));
    docs(&input, 20);
    let sims = studios(&[2, 2], 40.0).await;
    let cfg = dir.path().join("workers.json");
    let Target::Balancer(c) = pool(&sims) else {
        unreachable!()
    };
    std::fs::write(&cfg, c.to_json().to_string()).unwrap();
    let cmd = || {
        BatonCmd::new(["batch", "--input"])
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .arg("-c")
            .arg(&cfg)
            .args(["--max-tokens", "16"])
            .home(dir.path())
            .quiet()
    };
    let mut child = cmd().spawn();
    let tasks_dir = out.join(".baton").join("tasks");
    let some_done = support::wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&tasks_dir)
            .map(|d| d.count() >= 15)
            .unwrap_or(false)
    })
    .await;
    assert!(some_done, "no progress before the kill");
    child.kill(); // SIGKILL
    let done_before = std::fs::read_dir(&tasks_dir).unwrap().count();
    assert!(done_before < 100, "the kill came too late to test anything");
    let status = cmd().status();
    assert!(status.success(), "{status:?}");
    let r = results(&out);
    assert_eq!(r.len(), 100);
    let mut keys: Vec<(String, String)> = r
        .iter()
        .map(|x| (x["document"].to_string(), x["prompt"].to_string()))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 100, "a task appears twice");
    assert!(r.iter().all(|x| x["status"] == "done"));
    for i in 0..20 {
        let md = std::fs::read_to_string(out.join(format!("paper-{i:02}.md"))).unwrap();
        assert!(!md.contains("Not processed"), "paper {i} incomplete");
    }
    no_temp_files(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_studio_failing_part_way_hands_its_tasks_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, store) = (
        dir.path().join("papers"),
        dir.path().join("out"),
        dir.path().join("s.sqlite3"),
    );
    docs(&input, 10);
    let sims = Arc::new(studios(&[2, 2, 2], 60.0).await);
    let s2 = sims.clone();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        s2[1].set_listening(false);
    });
    let s = run(&options(&input, &out), &pool(&sims), &store)
        .await
        .unwrap();
    killer.await.unwrap();
    assert_eq!((s.done, s.failed), (50, 0), "{s:?}");
}

/// An OpenAI-ish server that fails (500) every prompt containing FAILME
/// while `broken` is set.
async fn picky_server(broken: Arc<AtomicBool>) -> String {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |axum::Json(v): axum::Json<Value>| {
            let broken = broken.clone();
            async move {
                let text = v.to_string();
                if broken.load(Ordering::Relaxed) && text.contains("FAILME") {
                    return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"error": {"message": "boom"}})));
                }
                (axum::http::StatusCode::OK, axum::Json(json!({"choices": [{"message": {"content": "fine"}}], "usage": {"completion_tokens": 1}})))
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_always_fails_is_retried_then_failed_then_retried_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out, store) = (
        dir.path().join("docs"),
        dir.path().join("out"),
        dir.path().join("s.sqlite3"),
    );
    docs(&input, 3);
    let prompts = dir.path().join("prompts.toml");
    std::fs::write(
        &prompts,
        "[picky]\ndescription = \"one good, one failing\"\nprompts = [\n { id = \"good\", title = \"Good\", template = \"Summarise {document}\" },\n { id = \"bad\", title = \"Bad\", template = \"FAILME {document}\" },\n]\n",
    )
    .unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    let url = picky_server(broken.clone()).await;
    let target = Target::Url { url, api_key: None };
    let mut o = options(&input, &out);
    o.preset = "picky".into();
    o.prompts_file = Some(prompts);
    o.max_attempts = 2;
    let s = run(&o, &target, &store).await.unwrap();
    assert_eq!((s.done, s.failed), (3, 3));
    let r = results(&out);
    let bad: Vec<&Value> = r.iter().filter(|x| x["prompt"] == "bad").collect();
    assert!(bad.iter().all(|x| x["status"] == "failed"
        && x["attempts"] == 2
        && x["error"].as_str().unwrap().contains("500")));
    let md = std::fs::read_to_string(out.join("paper-00.md")).unwrap();
    assert!(md.contains("*Failed: HTTP 500"), "{md}");
    // Healthy again: --retry-failed completes exactly those.
    broken.store(false, Ordering::Relaxed);
    o.retry_failed = true;
    let s = run(&o, &target, &store).await.unwrap();
    assert_eq!((s.ran_now, s.done, s.failed), (3, 6, 0));
    assert!(results(&out).iter().all(|x| x["status"] == "done"));
}

/// A one-page PDF with `text` on it, built with correct cross-references.
fn pdf(text: &str) -> Vec<u8> {
    let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
    ];
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    out
}

#[test]
fn pdf_text_is_extracted_and_other_files_are_listed_as_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("paper.pdf"),
        pdf("Distributed inference on studios"),
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.md"), "# Notes\nsome text").unwrap();
    std::fs::write(dir.path().join("figure.png"), [0u8, 1, 2]).unwrap();
    std::fs::write(dir.path().join("empty.txt"), "  \n").unwrap();
    let (docs, skipped) = batch::inputs::read_dir(dir.path()).unwrap();
    let names: Vec<&str> = docs.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["notes.md", "paper.pdf"]);
    assert!(
        docs[1].text.contains("Distributed inference on studios"),
        "{:?}",
        docs[1].text
    );
    let reasons: Vec<(String, String)> = skipped
        .iter()
        .map(|s| (s.name.clone(), s.reason.clone()))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(n, r)| n == "figure.png" && r.contains("unsupported")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(n, r)| n == "empty.txt" && r.contains("empty")),
        "{reasons:?}"
    );
}

/// The error a run over `o` ends with (nothing listens at the URL: the
/// errors must come before any request).
async fn err(o: Options) -> String {
    let store = o.out_dir.with_file_name("s.sqlite3");
    let target = Target::Url {
        url: "http://127.0.0.1:9/v1".into(),
        api_key: None,
    };
    run(&o, &target, &store).await.unwrap_err().to_string()
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let missing = err(options(&dir.path().join("nope"), &out)).await;
    assert!(
        missing.contains("does not exist") && missing.contains("--input"),
        "{missing}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err(options(&empty, &out)).await;
    assert!(e.contains("no documents"), "{e}");
    docs(&dir.path().join("d"), 1);
    let mut o = options(&dir.path().join("d"), &out);
    o.preset = "poetry".into();
    let e = err(o).await;
    assert!(
        e.contains("unknown preset `poetry`") && e.contains("qa, research, summary"),
        "{e}"
    );
    let bad = dir.path().join("p.toml");
    std::fs::write(&bad, "[x]\nprompts = [ { id = \"a\" title = \"t\" } ]\n").unwrap();
    let mut o = options(&dir.path().join("d"), &out);
    o.prompts_file = Some(bad);
    let e = err(o).await;
    assert!(e.contains("p.toml") && e.contains("line 2"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_cleanly_and_resume_finishes_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (dir.path().join("papers"), dir.path().join("out"));
    docs(&input, 20);
    std::fs::write(input.join("long.txt"), "word ".repeat(400)).unwrap();
    let sims = studios(&[2], 80.0).await;
    let cfg = dir.path().join("workers.json");
    let Target::Balancer(c) = pool(&sims) else {
        unreachable!()
    };
    std::fs::write(&cfg, c.to_json().to_string()).unwrap();
    let baton = |args: &[&str]| {
        BatonCmd::new(["batch"])
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .home(dir.path())
            .quiet()
    };
    let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
    let mut child = baton(&[
        "--input",
        i,
        "-o",
        o,
        "--max-tokens",
        "16",
        "--max-chars",
        "500",
    ])
    .spawn();
    let tasks_dir = out.join(".baton").join("tasks");
    assert!(
        support::wait_until(Duration::from_secs(30), || std::fs::read_dir(&tasks_dir)
            .map(|d| d.count() >= 5)
            .unwrap_or(false))
        .await
    );
    child.interrupt();
    let status = child.wait();
    assert_eq!(status.code(), Some(130), "interrupted runs say so");
    let partial = results(&out);
    assert_eq!(partial.len(), 105, "every task listed, finished or not");
    let finished = partial.iter().filter(|x| x["status"] == "done").count();
    assert!((5..105).contains(&finished), "{finished}");
    assert!(
        partial
            .iter()
            .all(|x| x["status"] == "done" || x["status"] == "pending")
    );
    no_temp_files(&out);
    // --resume with the job's saved settings finishes the rest.
    let status = baton(&["--resume", "1"]).status();
    assert!(status.success(), "{status:?}");
    let r = results(&out);
    assert!(r.iter().all(|x| x["status"] == "done"));
    let md = std::fs::read_to_string(out.join("long.md")).unwrap();
    assert!(
        md.contains("only the first 500 were sent"),
        "truncation is stated: {md}"
    );
}
