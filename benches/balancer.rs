//! Balancer benchmarks: prints each figure beside its reference, all
//! measured in this one run (the machine is shared and noisy, so only
//! same-run ratios mean anything).
//!
//!   cargo bench --bench balancer                 # all sections
//!   cargo bench --bench balancer -- 2 3          # only sections 2 and 3
//!   cargo bench --bench balancer -- --quick      # shorter runs
//!
//! Section 1 needs `nginx` and `wrk` (Debian: `apt-get install nginx-light wrk`).
//! Baton runs as its own process (`baton serve`, release build) so its RSS
//! and CPU are its own; simulated studios and the load generator share this
//! process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::bench::load::{self, LoadReport, LoadSpec};
use baton::config::{BalancerSettings, Config, Strategy, Worker};
use baton::sim::{self, Faults, SimConfig, SimHandle};
use baton::studio::StudioKind;
use serde_json::{Value, json};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

struct Opts {
    sections: Vec<u32>,
    scale: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sections: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let opts = Opts {
        sections: if sections.is_empty() {
            vec![1, 2, 3, 4, 5]
        } else {
            sections
        },
        scale: if args.iter().any(|a| a == "--quick") {
            0.4
        } else {
            1.0
        },
    };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "Baton balancer benchmarks: {} ({} cores)",
        env!("CARGO_PKG_VERSION"),
        num_cores()
    );
    let mut verdicts = Vec::new();
    rt.block_on(async {
        for s in &opts.sections {
            let v = match s {
                1 => proxy_overhead(&opts).await,
                2 => pool_efficiency(&opts).await,
                3 => one_bad_studio(&opts).await,
                4 => one_slow_studio(&opts).await,
                5 => memory(&opts).await,
                6 => client_speed(&opts).await,
                _ => continue,
            };
            verdicts.extend(v);
        }
    });
    println!("\nSummary");
    for (name, pass, detail) in &verdicts {
        println!(
            "  [{}] {name}: {detail}",
            if *pass { "PASS" } else { "MISS" }
        );
    }
}

fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

type Verdict = (String, bool, String);

fn secs(opts: &Opts, s: f64) -> Duration {
    Duration::from_secs_f64(s * opts.scale)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `baton serve` as a child process over `config`.
struct BatonProc {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl BatonProc {
    fn start(config: &Config) -> BatonProc {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("workers.json");
        let mut json = config.to_json();
        json["balancer"] = settings_json(&config.balancer);
        std::fs::write(&file, json.to_string()).unwrap();
        let port = free_port();
        let mut child = Command::new(BATON)
            .args(["serve", "-c"])
            .arg(&file)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("BATON_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start baton serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if line.unwrap().contains("Press Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        BatonProc {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn rss_mb(&self) -> f64 {
        rss_mb(self.child.id())
    }

    async fn stats(&self) -> Value {
        reqwest::get(self.url("/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// User requests each worker has received so far.
    async fn requests_by_worker(&self) -> BTreeMap<String, u64> {
        let s = self.stats().await;
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["id"].as_str().unwrap().to_string(),
                    w["requests"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for BatonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn settings_json(s: &BalancerSettings) -> Value {
    json!({
        "connect_timeout_ms": s.connect_timeout.as_millis() as u64,
        "first_token_timeout_ms": s.first_token_timeout.as_millis() as u64,
        "idle_timeout_ms": s.idle_timeout.as_millis() as u64,
        "queue_limit": s.queue_limit,
        "queue_timeout_ms": s.queue_timeout.as_millis() as u64,
        "probe_interval_ms": s.probe_interval.as_millis() as u64,
        "probe_timeout_ms": s.probe_timeout.as_millis() as u64,
        "strategy": match s.strategy { Strategy::LeastTime => "least_time", Strategy::RoundRobin => "round_robin" },
    })
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// A worker entry for a backend that is not a simulated studio (nginx).
fn worker(id: &str, addr: SocketAddr, slots: u32) -> Worker {
    Worker {
        id: id.to_string(),
        host: addr.ip().to_string(),
        port: addr.port(),
        kind: StudioKind::LmStudio,
        model: sim::DEFAULT_MODEL.to_string(),
        max_concurrent_requests: slots,
        enabled: true,
        weight: 1.0,
        api_key: None,
        members: Vec::new(),
    }
}

fn config_for(sims: &[&SimHandle], strategy: Strategy) -> Config {
    let workers = sims
        .iter()
        .enumerate()
        .map(|(i, s)| sim::worker_for(&format!("studio-{}", i + 1), s))
        .collect();
    Config {
        workers,
        balancer: BalancerSettings {
            strategy,
            ..Default::default()
        },
    }
}

async fn start_sim(slots: usize, tps: f64, ttft_ms: u64) -> SimHandle {
    let cfg = SimConfig {
        slots,
        tokens_per_second: tps,
        ttft: Duration::from_millis(ttft_ms),
        ..SimConfig::default()
    };
    sim::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .unwrap()
}

fn chat(max_tokens: u32) -> Value {
    json!({"model": sim::DEFAULT_MODEL, "stream": true, "stream_options": {"include_usage": true},
           "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Summarise the benchmark"}]})
}

fn client() -> reqwest::Client {
    load::client()
}

async fn drive(url: String, concurrency: usize, duration: Duration, max_tokens: u32) -> LoadReport {
    // The first 20% warms up; figures come from the steady state after it.
    let spec = LoadSpec {
        url,
        body: chat(max_tokens),
        concurrency,
        duration: Some(duration),
        requests: None,
        api_key: None,
        warmup: duration / 5,
        prompts: Vec::new(),
    };
    load::run(&client(), &spec).await
}

fn line(name: &str, r: &LoadReport) {
    println!(
        "  {name:<34} {:>8.1} tok/s {:>7.2} req/s  p50 {:>7.0} ms  p95 {:>7.0} ms  failed {:>3}  {}",
        r.window_tokens_per_second(),
        r.requests_per_second(),
        r.latency_ms(0.5),
        r.latency_ms(0.95),
        r.failed,
        r.per_worker
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    for e in r.errors.iter().take(2) {
        println!("      error: {e}");
    }
}

// ---------------------------------------------------------------- section 1

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

fn start_nginx(dir: &Path, name: &str, workers: &str, server: &str, upstream: &str) -> Child {
    let prefix = dir.join(name);
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let conf = prefix.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes {workers}; pid {p}/nginx.pid; error_log {p}/logs/error.log error;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {p}/cb; proxy_temp_path {p}/pt;\n\
             fastcgi_temp_path {p}/ft; uwsgi_temp_path {p}/ut; scgi_temp_path {p}/st;\n\
             keepalive_requests 1000000; {upstream}\n server {{ {server} }} }}\n",
            p = prefix.display()
        ),
    )
    .unwrap();
    Command::new("nginx")
        .args(["-p"])
        .arg(&prefix)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx")
}

struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: String,
}

fn wrk(url: &str, script: &Path, duration: Duration) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t1",
            "-c64",
            &format!("-d{}s", duration.as_secs().max(2)),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(url)
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let value = |prefix: &str| -> Option<String> {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .map(|l| l.trim().to_string())
    };
    let ms = |s: &str| -> f64 {
        let v = s.split_whitespace().nth(1).unwrap_or("0");
        if let Some(x) = v.strip_suffix("us") {
            x.parse::<f64>().unwrap_or(0.0) / 1000.0
        } else if let Some(x) = v.strip_suffix("ms") {
            x.parse().unwrap_or(0.0)
        } else if let Some(x) = v.strip_suffix('s') {
            x.parse::<f64>().unwrap_or(0.0) * 1000.0
        } else {
            0.0
        }
    };
    Wrk {
        rps: value("Requests/sec:")
            .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            .unwrap_or(0.0),
        p50_ms: value("50%").map(|l| ms(&l)).unwrap_or(0.0),
        p99_ms: value("99%").map(|l| ms(&l)).unwrap_or(0.0),
        errors: [value("Non-2xx"), value("Socket errors")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; "),
    }
}

async fn wait_port(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("nothing listens on {addr}");
}

async fn proxy_overhead(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n1. Proxy overhead: instant backend (nginx returning a fixed completion), wrk -t1 -c64"
    );
    if !have("nginx") || !have("wrk") {
        println!("  skipped: needs nginx and wrk (Debian: apt-get install nginx-light wrk)");
        return vec![(
            "proxy overhead".into(),
            false,
            "not measured: nginx or wrk missing".into(),
        )];
    }
    let dir = tempfile::tempdir().unwrap();
    let (backend_port, proxy_port) = (free_port(), free_port());
    let models = r#"{"object":"list","data":[{"id":"m","object":"model"}]}"#;
    let mut backend = start_nginx(
        dir.path(),
        "backend",
        "1",
        &format!(
            "listen 127.0.0.1:{backend_port} backlog=4096; default_type application/json;\n\
             location = /v1/models {{ return 200 '{models}'; }}\n\
             location = /v1/chat/completions {{ return 200 '{COMPLETION}'; }}"
        ),
        "",
    );
    let mut proxy = start_nginx(
        dir.path(),
        "proxy",
        "auto",
        &format!(
            "listen 127.0.0.1:{proxy_port} backlog=4096;\n\
             location / {{ proxy_pass http://studios; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}"
        ),
        &format!(
            "upstream studios {{ least_conn; server 127.0.0.1:{backend_port}; keepalive 64; }}"
        ),
    );
    wait_port(SocketAddr::from(([127, 0, 0, 1], backend_port))).await;
    wait_port(SocketAddr::from(([127, 0, 0, 1], proxy_port))).await;
    let mut cfg = Config {
        workers: vec![worker(
            "instant",
            SocketAddr::from(([127, 0, 0, 1], backend_port)),
            1024,
        )],
        balancer: BalancerSettings::default(),
    };
    cfg.workers[0].model = "m".into();
    let baton = BatonProc::start(&cfg);
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}'
"#,
    )
    .unwrap();
    let d = secs(opts, 8.0);
    // Warm every path once, then measure each in turn.
    for port in [backend_port, proxy_port, baton.addr.port()] {
        wrk(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            &script,
            Duration::from_secs(2),
        );
    }
    let direct = wrk(
        &format!("http://127.0.0.1:{backend_port}/v1/chat/completions"),
        &script,
        d,
    );
    let nginx = wrk(
        &format!("http://127.0.0.1:{proxy_port}/v1/chat/completions"),
        &script,
        d,
    );
    let bat = wrk(&baton.url("/v1/chat/completions"), &script, d);
    println!(
        "  {:<14} {:>10} {:>9} {:>9} {:>10}",
        "path", "req/s", "p50 ms", "p99 ms", "vs direct"
    );
    for (name, w) in [
        ("direct", &direct),
        ("nginx proxy", &nginx),
        ("baton", &bat),
    ] {
        println!(
            "  {name:<14} {:>10.0} {:>9.2} {:>9.2} {:>9.2}x  {}",
            w.rps,
            w.p50_ms,
            w.p99_ms,
            w.rps / direct.rps,
            w.errors
        );
    }
    let added_nginx = nginx.p50_ms - direct.p50_ms;
    let added_baton = bat.p50_ms - direct.p50_ms;
    println!(
        "  added p50: nginx {added_nginx:+.2} ms, baton {added_baton:+.2} ms; baton RSS {:.1} MB",
        baton.rss_mb()
    );
    let _ = backend.kill();
    let _ = proxy.kill();
    let _ = backend.wait();
    let _ = proxy.wait();
    vec![
        (
            "proxy throughput >= nginx".into(),
            bat.rps >= nginx.rps,
            format!(
                "baton {:.2}x of direct, nginx {:.2}x",
                bat.rps / direct.rps,
                nginx.rps / direct.rps
            ),
        ),
        (
            "added p50 <= nginx's".into(),
            added_baton <= added_nginx,
            format!("baton {added_baton:+.2} ms, nginx {added_nginx:+.2} ms"),
        ),
    ]
}

// ---------------------------------------------------------------- section 6

/// `baton bench`'s load runner must not be the bottleneck: against an
/// instant backend it should sustain wrk's request rate at the same
/// concurrency.
async fn client_speed(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n6. Load generator speed: baton's runner vs wrk, instant nginx backend, 64 connections"
    );
    if !have("nginx") || !have("wrk") {
        println!("  skipped: needs nginx and wrk (Debian: apt-get install nginx-light wrk)");
        return vec![(
            "load generator speed".into(),
            false,
            "not measured: nginx or wrk missing".into(),
        )];
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut backend = start_nginx(
        dir.path(),
        "backend",
        "1",
        &format!(
            "listen 127.0.0.1:{port} backlog=4096; default_type application/json;\n location = /v1/chat/completions {{ return 200 '{COMPLETION}'; }}"
        ),
        "",
    );
    wait_port(SocketAddr::from(([127, 0, 0, 1], port))).await;
    let script = dir.path().join("post.lua");
    std::fs::write(&script, "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{\"model\":\"m\",\"messages\":[]}'\n").unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let d = secs(opts, 8.0);
    let w = wrk(&url, &script, d);
    let spec = LoadSpec {
        url: url.clone(),
        body: json!({"model": "m", "stream": false, "messages": []}),
        concurrency: 64,
        duration: Some(d),
        requests: None,
        api_key: None,
        warmup: d / 5,
        prompts: Vec::new(),
    };
    let r = load::run(&client(), &spec).await;
    let ours = r.window_requests_per_second();
    println!(
        "  wrk   {:>10.0} req/s\n  baton {:>10.0} req/s  ({:.2}x of wrk, {} failed)",
        w.rps,
        ours,
        ours / w.rps,
        r.failed
    );
    let _ = backend.kill();
    let _ = backend.wait();
    vec![(
        "load generator >= wrk".into(),
        ours >= w.rps && r.failed == 0,
        format!("{:.2}x of wrk's requests/s at concurrency 64", ours / w.rps),
    )]
}

// ---------------------------------------------------------------- section 2

async fn pool_efficiency(opts: &Opts) -> Vec<Verdict> {
    println!("\n2. Pool efficiency: studios with slots 4/4/2 and tps 40/40/20, 64-token streams");
    let sims = [
        start_sim(4, 40.0, 100).await,
        start_sim(4, 40.0, 100).await,
        start_sim(2, 20.0, 100).await,
    ];
    let d = secs(opts, 12.0);
    let mut alone_sum = 0.0;
    for (i, s) in sims.iter().enumerate() {
        let r = drive(
            format!("{}/v1/chat/completions", s.url()),
            s.config().slots * 2,
            d,
            64,
        )
        .await;
        line(&format!("studio-{} alone (direct)", i + 1), &r);
        alone_sum += r.window_tokens_per_second();
    }
    println!("  {:<34} {alone_sum:>8.1} tok/s", "sum of the three alone");
    let refs: Vec<&SimHandle> = sims.iter().collect();
    let mut out = Vec::new();
    for (name, strategy) in [
        ("baton least_time", Strategy::LeastTime),
        ("baton round_robin", Strategy::RoundRobin),
    ] {
        let baton = BatonProc::start(&config_for(&refs, strategy));
        let r = drive(baton.url("/v1/chat/completions"), 20, d, 64).await;
        line(&format!("{name}, concurrency 20"), &r);
        let ratio = r.window_tokens_per_second() / alone_sum;
        println!("  {:<34} {ratio:>8.2} of the sum", "");
        if strategy == Strategy::LeastTime {
            out.push((
                "pool efficiency >= 0.95".into(),
                ratio >= 0.95 && r.failed == 0,
                format!(
                    "{ratio:.3} of the sum of the studios alone, {} failed",
                    r.failed
                ),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------- section 3

#[derive(Clone, Copy, Debug)]
enum Bad {
    Refuses,
    Hangs,
    Fast503,
}

fn break_studio(s: &SimHandle, how: Bad) {
    match how {
        Bad::Refuses => s.set_listening(false),
        Bad::Hangs => s.set_faults(Faults {
            hang: true,
            ..Faults::default()
        }),
        Bad::Fast503 => s.set_faults(Faults {
            error_rate: 1.0,
            ..Faults::default()
        }),
    }
}

async fn one_bad_studio(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n3. One bad studio: two healthy studios (slots 4, 40 tok/s) plus one bad, concurrency 16"
    );
    let d = secs(opts, 12.0);
    let turn_at = Duration::from_secs(2);
    let healthy = [start_sim(4, 40.0, 100).await, start_sim(4, 40.0, 100).await];
    let reference = {
        let refs: Vec<&SimHandle> = healthy.iter().collect();
        let baton = BatonProc::start(&config_for(&refs, Strategy::LeastTime));
        let r = drive(baton.url("/v1/chat/completions"), 16, d, 64).await;
        line("reference: the two healthy only", &r);
        r.window_tokens_per_second()
    };
    let mut out = Vec::new();
    for how in [Bad::Refuses, Bad::Hangs, Bad::Fast503] {
        for late in [false, true] {
            let bad = start_sim(4, 40.0, 100).await;
            let refs: Vec<&SimHandle> = vec![&healthy[0], &healthy[1], &bad];
            if !late {
                break_studio(&bad, how);
            }
            let baton = BatonProc::start(&config_for(&refs, Strategy::LeastTime));
            let url = baton.url("/v1/chat/completions");
            let run = tokio::spawn(drive(url, 16, d, 64));
            let broke_at = if late { turn_at } else { Duration::ZERO };
            tokio::time::sleep(broke_at).await;
            if late {
                break_studio(&bad, how);
            }
            // Its first failure is when Baton can first know: a studio that
            // breaks mid-answer still finishes (or fails) what it streams.
            let seen_bad = Instant::now();
            while seen_bad.elapsed() < d {
                let st = baton.stats().await;
                let w = &st["workers"].as_array().unwrap()[2];
                let failures: u64 = w["failures"]
                    .as_object()
                    .unwrap()
                    .values()
                    .filter_map(Value::as_u64)
                    .sum();
                if failures > 0 || w["state"] != "ready" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after_1s = baton.requests_by_worker().await["studio-3"];
            let r = run.await.unwrap();
            let end = baton.requests_by_worker().await["studio-3"];
            let name = format!(
                "{how:?}{}",
                if late {
                    " (turns bad at 2 s)"
                } else {
                    " (from the start)"
                }
            );
            line(&name, &r);
            let ratio = r.window_tokens_per_second() / reference;
            let later = end - after_1s;
            println!(
                "  {:<34} {ratio:>8.2} of reference; bad studio got {later} request(s) later than 1 s after its first failure",
                ""
            );
            out.push((
                format!("bad studio: {name}"),
                ratio >= 0.95 && r.failed == 0 && later == 0,
                format!("{ratio:.3} of the healthy pair, {} failed, {later} requests to it 1 s after its first failure", r.failed),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------- section 4

async fn one_slow_studio(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n4. One slow studio: two at 40 tok/s and one at 4 tok/s (slots 4 each), concurrency 12"
    );
    let d = secs(opts, 15.0);
    let sims = [
        start_sim(4, 40.0, 100).await,
        start_sim(4, 40.0, 100).await,
        start_sim(4, 4.0, 100).await,
    ];
    let mut sum = 0.0;
    for (i, s) in sims.iter().enumerate() {
        let r = drive(format!("{}/v1/chat/completions", s.url()), 8, d, 64).await;
        line(&format!("studio-{} alone (direct)", i + 1), &r);
        sum += r.window_tokens_per_second();
    }
    let fast: Vec<&SimHandle> = sims.iter().take(2).collect();
    let without = {
        let baton = BatonProc::start(&config_for(&fast, Strategy::LeastTime));
        let r = drive(baton.url("/v1/chat/completions"), 12, d, 64).await;
        line("pool without the slow studio", &r);
        r
    };
    let all: Vec<&SimHandle> = sims.iter().collect();
    let baton = BatonProc::start(&config_for(&all, Strategy::LeastTime));
    let with = drive(baton.url("/v1/chat/completions"), 12, d, 64).await;
    line("pool with the slow studio", &with);
    let ratio = with.window_tokens_per_second() / sum;
    let p95 = with.latency_ms(0.95) / without.latency_ms(0.95);
    println!(
        "  {:<34} {ratio:>8.2} of the sum alone; p95 {p95:.2}x of the pool without it",
        ""
    );
    vec![(
        "slow studio".into(),
        ratio >= 0.90 && p95 <= 1.5 && with.failed == 0,
        format!(
            "{ratio:.3} of the sum of individual throughputs, p95 {p95:.2}x the pool without it"
        ),
    )]
}

// ---------------------------------------------------------------- section 5

async fn memory(opts: &Opts) -> Vec<Verdict> {
    println!("\n5. Memory of the balancer process (RSS)");
    let sims = [
        start_sim(400, 5.0, 100).await,
        start_sim(400, 5.0, 100).await,
        start_sim(400, 5.0, 100).await,
    ];
    let refs: Vec<&SimHandle> = sims.iter().collect();
    let baton = BatonProc::start(&config_for(&refs, Strategy::LeastTime));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = baton.rss_mb();
    println!("  idle: {idle:.1} MB");
    let c = client();
    let url = baton.url("/v1/chat/completions");
    let body = chat(1000);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (c, url, body) = (c.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let r = c.post(url).json(&body).send().await;
            if let Ok(r) = r {
                let _ = r.text().await;
            }
        }));
    }
    let t0 = Instant::now();
    let mut in_flight = 0;
    while t0.elapsed() < Duration::from_secs(30) {
        let st = baton.stats().await;
        in_flight = st["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["in_flight"].as_u64().unwrap())
            .sum::<u64>();
        if in_flight >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let every stream get going before reading RSS.
    tokio::time::sleep(secs(opts, 2.0)).await;
    let busy = baton.rss_mb();
    println!("  with {in_flight} streaming requests in flight: {busy:.1} MB");
    for t in &tasks {
        t.abort();
    }
    vec![(
        "memory < 100 MB with 1,000 streams".into(),
        busy < 100.0 && in_flight >= 1000,
        format!("idle {idle:.1} MB, {busy:.1} MB with {in_flight} in flight"),
    )]
}
