//! Batch jobs: every (document, prompt) of a folder is a task sent through
//! the pool; job state lives in the SQLite store so a job survives crashes
//! and re-runs without losing or repeating work.
//!
//! Order of effects per task: the answer is written to its own file
//! (atomically), then the task is marked done. Outputs (one Markdown file
//! per document, `results.jsonl`) are rebuilt from the store at the end of
//! every run, so a crash at any point leaves nothing partial and nothing
//! twice.

pub mod inputs;
pub mod presets;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::balancer::Balancer;
use crate::bench::run::Target;
use crate::files::write_atomic;
use crate::store::{BatchTask, NewTask, Store, TaskStatus};
pub use inputs::LongDocs;

#[derive(Clone, Debug)]
pub struct Options {
    pub input: PathBuf,
    pub out_dir: PathBuf,
    pub preset: String,
    pub prompts_file: Option<PathBuf>,
    pub model: String,
    /// Requests in flight; default: the pool's total slots.
    pub concurrency: Option<usize>,
    /// Longest document part sent, in characters.
    pub max_chars: usize,
    pub long_docs: LongDocs,
    pub max_attempts: u32,
    pub max_tokens: Option<u32>,
    /// Put failed tasks back in the queue first.
    pub retry_failed: bool,
}

/// Progress and messages for whoever shows them.
pub trait Observer: Send + Sync {
    fn note(&self, line: &str);
    fn started(&self, total: u64, already_done: u64);
    fn progress(&self, done: u64, failed: u64);
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub job_id: i64,
    pub tasks: u64,
    pub done: u64,
    pub failed: u64,
    pub pending: u64,
    pub ran_now: u64,
    pub elapsed_s: f64,
    pub tasks_per_minute: f64,
    pub per_worker: BTreeMap<String, u64>,
    pub skipped_files: Vec<(String, String)>,
    /// Documents longer than the limit, and what was done about it.
    pub long_documents: Vec<String>,
    pub interrupted: bool,
    pub out_dir: PathBuf,
}

#[derive(Clone, Debug)]
struct Task {
    id: i64,
    document: String,
    part: usize,
    prompt_id: String,
    body: Value,
}

/// The saved options of a job, for `--resume` / `--retry-failed`.
pub fn job_options(store: &Store, id: i64) -> anyhow::Result<(PathBuf, PathBuf, String, Value)> {
    store
        .batch_job(id)?
        .map(|j| (j.input_dir, j.out_dir, j.preset, j.params))
        .ok_or_else(|| anyhow::anyhow!("batch job {id} is not in the store"))
}

/// Run (or resume) a batch job. `stop` stops taking new tasks and lets the
/// running ones finish; `abort` also drops the running ones (they stay
/// pending for the next run).
pub async fn run(
    opts: &Options,
    target: &Target,
    store_path: &Path,
    obs: Arc<dyn Observer>,
    stop: CancellationToken,
    abort: CancellationToken,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let presets = presets::load(opts.prompts_file.as_deref())?;
    let preset = presets.get(&opts.preset).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "unknown preset `{}`; known presets: {}\n  fix: pick one, or define it in a prompts file (--prompts)",
            opts.preset,
            presets.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    if !opts.input.is_dir() {
        anyhow::bail!(
            "input folder {} does not exist or is not a folder\n  fix: pass a folder of .txt, .md or .pdf files with --input",
            opts.input.display()
        );
    }
    let (docs, skipped) = inputs::read_dir(&opts.input)?;
    for s in &skipped {
        obs.note(&format!("skipped {}: {}", s.name, s.reason));
    }
    if docs.is_empty() {
        anyhow::bail!(
            "no documents to process in {} ({} file(s) skipped)\n  fix: put .txt, .md or .pdf files there",
            opts.input.display(),
            skipped.len()
        );
    }
    let input = opts.input.canonicalize()?;
    std::fs::create_dir_all(&opts.out_dir)?;
    let out = opts.out_dir.canonicalize()?;
    // What an earlier run killed mid-write left behind.
    for dir in [out.clone(), out.join(".baton").join("tasks")] {
        crate::files::remove_stale_temps(&dir)?;
    }
    let store = Store::open(store_path)?;
    let params = json!({"model": opts.model, "max_chars": opts.max_chars,
                        "long_docs": format!("{:?}", opts.long_docs).to_lowercase(),
                        "max_attempts": opts.max_attempts, "max_tokens": opts.max_tokens,
                        "prompts_file": opts.prompts_file});
    let job = store.batch_job_find_or_create(&input, &out, &opts.preset, &params)?;

    // Tasks: one per (document, part, prompt); a changed document hashes
    // differently and gets new tasks.
    let mut long_documents = Vec::new();
    let mut bodies: BTreeMap<(String, usize, String), Value> = BTreeMap::new();
    let mut new_tasks = Vec::new();
    for d in &docs {
        let parts = inputs::parts(&d.text, opts.max_chars, opts.long_docs);
        let chars = d.text.chars().count();
        if chars > opts.max_chars {
            long_documents.push(match opts.long_docs {
                LongDocs::Truncate => format!(
                    "{}: {chars} characters, truncated to the first {}",
                    d.name, opts.max_chars
                ),
                LongDocs::Split => format!(
                    "{}: {chars} characters, split into {} parts",
                    d.name,
                    parts.len()
                ),
            });
        }
        for (i, part) in parts.iter().enumerate() {
            for p in &preset.prompts {
                new_tasks.push(NewTask {
                    document: d.name.clone(),
                    doc_hash: d.hash.clone(),
                    part: i as i64,
                    prompt_id: p.id.clone(),
                });
                let mut body = json!({"model": opts.model, "stream": false,
                        "messages": [{"role": "user", "content": p.template.replace("{document}", part)}]});
                if let Some(m) = opts.max_tokens {
                    body["max_tokens"] = m.into();
                }
                bodies.insert((d.name.clone(), i, p.id.clone()), body);
            }
        }
    }
    store.batch_add_tasks(job, &new_tasks)?;
    if opts.retry_failed {
        store.batch_reset_failed(job)?;
    }
    for l in &long_documents {
        obs.note(&format!("long document: {l} (--max-chars, --long-docs)"));
    }
    let current = |doc: &str, hash: &str| docs.iter().any(|d| d.name == doc && d.hash == hash);
    let mut pending = VecDeque::new();
    let mut total = 0u64;
    let mut already = 0u64;
    for t in store.batch_tasks(job)? {
        if !current(&t.document, &t.doc_hash) {
            continue;
        }
        total += 1;
        match t.status {
            TaskStatus::Pending => {
                let part = t.part as usize;
                let body = bodies[&(t.document.clone(), part, t.prompt_id.clone())].clone();
                pending.push_back(Task {
                    id: t.id,
                    document: t.document,
                    part,
                    prompt_id: t.prompt_id,
                    body,
                });
            }
            TaskStatus::Done | TaskStatus::Failed => already += 1,
        }
    }
    obs.note(&format!(
        "job {job}: {} document(s) x {} prompt(s) = {total} task(s); {already} already finished, {} to run",
        docs.len(),
        preset.prompts.len(),
        pending.len()
    ));
    obs.started(total, already);

    let ran_now;
    let mut per_worker_now: BTreeMap<String, u64> = BTreeMap::new();
    if !pending.is_empty() {
        // Where requests go.
        let (url, api_key, balancer, slots) = match target {
            Target::Url { url, api_key } => (
                url.trim_end_matches('/').to_string(),
                api_key.clone(),
                None,
                4usize,
            ),
            Target::Balancer(cfg) => {
                let b = Balancer::start(cfg, Some("127.0.0.1:0".parse()?), None).await?;
                if !b.wait_ready(Duration::from_secs(10)).await {
                    anyhow::bail!(
                        "no worker became ready within 10 s; run `baton preflight` to see why"
                    );
                }
                let slots = cfg
                    .enabled_workers()
                    .map(|w| w.max_concurrent_requests.ceiling() as usize)
                    .sum();
                (b.url(), None, Some(b), slots)
            }
        };
        let concurrency = opts.concurrency.unwrap_or(slots).max(1);
        let client = crate::bench::load::client();
        let queue = Arc::new(Mutex::new(pending));
        let store = Arc::new(Mutex::new(store));
        let tasks_dir = out.join(".baton").join("tasks");
        let counts = Arc::new(Mutex::new((0u64, 0u64, BTreeMap::<String, u64>::new())));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (queue, store, counts, client, url, api_key, stop, abort, obs, tasks_dir) = (
                queue.clone(),
                store.clone(),
                counts.clone(),
                client.clone(),
                url.clone(),
                api_key.clone(),
                stop.clone(),
                abort.clone(),
                obs.clone(),
                tasks_dir.clone(),
            );
            let max_attempts = opts.max_attempts.max(1);
            set.spawn(async move {
                loop {
                    if stop.is_cancelled() {
                        return;
                    }
                    let Some(task) = queue.lock().expect("queue lock").pop_front() else {
                        return;
                    };
                    let mut attempt = 0;
                    let outcome = loop {
                        attempt += 1;
                        let r = tokio::select! {
                            r = one(&client, &url, api_key.as_deref(), &task.body) => r,
                            _ = abort.cancelled() => return,
                        };
                        match r {
                            Ok(ok) => break Ok(ok),
                            Err(e) if attempt < max_attempts => {
                                let wait = Duration::from_millis(500 * (1 << (attempt - 1).min(5)));
                                tracing::debug!(
                                    task = task.id,
                                    "attempt {attempt} failed ({e}); retrying in {wait:?}"
                                );
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = abort.cancelled() => return,
                                }
                            }
                            Err(e) => break Err(e),
                        }
                    };
                    let s = store.lock().expect("store lock");
                    match outcome {
                        Ok((text, worker, tokens, latency)) => {
                            let path = tasks_dir.join(format!("{}.md", task.id));
                            if let Err(e) = write_atomic(&path, text.as_bytes()) {
                                obs.note(&format!("cannot write {}: {e}", path.display()));
                                continue;
                            }
                            let _ = s
                                .batch_task_done(task.id, attempt, &worker, tokens, latency, &path);
                            let mut c = counts.lock().expect("counts lock");
                            c.0 += 1;
                            *c.2.entry(worker).or_default() += 1;
                            obs.progress(c.0, c.1);
                        }
                        Err(e) => {
                            let _ = s.batch_task_failed(task.id, attempt, &e);
                            obs.note(&format!(
                                "failed after {attempt} attempt(s): {} / {} (part {}): {e}",
                                task.document,
                                task.prompt_id,
                                task.part + 1
                            ));
                            let mut c = counts.lock().expect("counts lock");
                            c.1 += 1;
                            obs.progress(c.0, c.1);
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
        if let Some(b) = balancer {
            b.shutdown().await;
        }
        let c = counts.lock().expect("counts lock");
        ran_now = c.0 + c.1;
        per_worker_now = c.2.clone();
    } else {
        ran_now = 0;
    }

    // Rebuild the outputs from the store.
    let store = Store::open(store_path)?;
    let (done, failed, pending_left) = write_outputs(&store, job, &docs, &preset, &out, opts)?;
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Summary {
        job_id: job,
        tasks: total,
        done,
        failed,
        pending: pending_left,
        ran_now,
        elapsed_s: elapsed,
        tasks_per_minute: if elapsed > 0.0 {
            ran_now as f64 * 60.0 / elapsed
        } else {
            0.0
        },
        per_worker: per_worker_now,
        skipped_files: skipped.into_iter().map(|s| (s.name, s.reason)).collect(),
        long_documents,
        interrupted: stop.is_cancelled() || abort.is_cancelled(),
        out_dir: out,
    })
}

/// Send one task; returns (text, worker, output tokens, latency ms).
async fn one(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<(String, String, u64, f64), String> {
    let t0 = Instant::now();
    let mut rb = client.post(format!("{url}/chat/completions")).json(body);
    if let Some(k) = key {
        rb = rb.bearer_auth(k);
    }
    let r = rb
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = r.status();
    let worker = crate::bench::load::worker_of(&r);
    let text = r
        .text()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(200).collect::<String>()
        ));
    }
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("the answer is not JSON: {e}"))?;
    let content = v
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or("the answer has no message content")?
        .to_string();
    let tokens = v
        .pointer("/usage/completion_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok((content, worker, tokens, t0.elapsed().as_secs_f64() * 1000.0))
}

/// Write one Markdown file per document and `results.jsonl` from the store:
/// every task of the current documents exactly once. Returns (done, failed, pending).
fn write_outputs(
    store: &Store,
    job: i64,
    docs: &[inputs::Document],
    preset: &presets::Preset,
    out: &Path,
    opts: &Options,
) -> anyhow::Result<(u64, u64, u64)> {
    // By document, part, then as added: the order of the outputs.
    let mut rows: Vec<BatchTask> = store.batch_tasks(job)?;
    rows.sort_by(|a, b| (&a.document, a.part, a.id).cmp(&(&b.document, b.part, b.id)));
    let (mut done, mut failed, mut pending) = (0, 0, 0);
    let mut jsonl = String::new();
    for d in docs {
        let mine: Vec<_> = rows
            .iter()
            .filter(|r| r.document == d.name && r.doc_hash == d.hash)
            .collect();
        let mut md = format!("# {}\n\n", d.name);
        let chars = d.text.chars().count();
        if chars > opts.max_chars {
            md += &match opts.long_docs {
                LongDocs::Truncate => format!(
                    "*Note: the document has {chars} characters; only the first {} were sent.*\n\n",
                    opts.max_chars
                ),
                LongDocs::Split => format!(
                    "*Note: the document has {chars} characters; it was sent in parts of {}.*\n\n",
                    opts.max_chars
                ),
            };
        }
        for p in &preset.prompts {
            md += &format!("## {}\n\n", p.title);
            let parts: Vec<_> = mine.iter().filter(|r| r.prompt_id == p.id).collect();
            for r in &parts {
                if parts.len() > 1 {
                    md += &format!("### Part {}\n\n", r.part + 1);
                }
                match r.status {
                    TaskStatus::Done => {
                        let text = r
                            .result_path
                            .as_ref()
                            .and_then(|p| std::fs::read_to_string(p).ok())
                            .unwrap_or_default();
                        md += text.trim();
                        md += "\n\n";
                    }
                    TaskStatus::Failed => {
                        md += &format!("*Failed: {}*\n\n", r.error.clone().unwrap_or_default())
                    }
                    TaskStatus::Pending => md += "*Not processed yet.*\n\n",
                }
            }
        }
        for r in &mine {
            match r.status {
                TaskStatus::Done => done += 1,
                TaskStatus::Failed => failed += 1,
                TaskStatus::Pending => pending += 1,
            }
            jsonl += &json!({"document": r.document, "part": r.part + 1, "prompt": r.prompt_id,
                             "status": r.status, "attempts": r.attempts, "worker": r.worker,
                             "tokens": r.tokens, "latency_ms": r.latency_ms, "error": r.error})
            .to_string();
            jsonl.push('\n');
        }
        let stem = Path::new(&d.name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| d.name.clone());
        write_atomic(&out.join(format!("{stem}.md")), md.as_bytes())?;
    }
    write_atomic(&out.join("results.jsonl"), jsonl.as_bytes())?;
    Ok((done, failed, pending))
}
