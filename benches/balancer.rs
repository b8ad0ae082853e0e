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

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton::bench::load::{self, LoadReport, LoadSpec};
use baton::config::{BalancerSettings, Config, Slots, Strategy, Worker};
use baton::sim::{self, Faults, SimConfig, SimHandle};
use serde_json::{Value, json};
use support::{Lab, Served, SimCfgExt, free_port, sim_cfg, start_sim};

struct Opts {
    sections: Vec<u32>,
    scale: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sections: Vec<u32> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let opts = Opts {
        sections: if sections.is_empty() {
            vec![1, 2, 3, 4, 5, 7, 8, 9, 10]
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
                7 => server_behaviours(&opts).await,
                8 => conversations(&opts).await,
                9 => no_slow_start_twice(&opts).await,
                10 => idle_cost(&opts).await,
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

/// `baton serve` as its own process (its RSS and CPU its own), errors on
/// this process's stderr.
fn serve(config: &Config) -> Served {
    Served::start(config, Stdio::inherit())
}

/// `GET /stats` of a running `baton serve`.
async fn stats(baton: &Served) -> Value {
    baton.stats().await.expect("baton serve answers /stats")
}

fn rss_mb(baton: &Served) -> f64 {
    baton.rss_kb() as f64 / 1024.0
}

/// User requests each worker has received so far.
async fn requests_by_worker(baton: &Served) -> BTreeMap<String, u64> {
    let s = stats(baton).await;
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

/// The default settings with the `least_time` strategy.
fn least_time() -> BalancerSettings {
    BalancerSettings {
        strategy: Strategy::LeastTime,
        ..Default::default()
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
        ..Default::default()
    }
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
    wrk_c(url, script, duration, 64)
}

fn wrk_c(url: &str, script: &Path, duration: Duration, connections: u32) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
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
        "\n1. Proxy overhead: instant backend (nginx returning a fixed completion), wrk -t1 at 64 and 1 connections"
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
    let cfg = Config {
        workers: vec![Worker {
            model: "m".into(),
            max_concurrent_requests: Slots::Max(1024),
            ..support::worker("instant", "127.0.0.1", backend_port)
        }],
        balancer: BalancerSettings::default(),
        ..Default::default()
    };
    let baton = serve(&cfg);
    let floor = floor_proxy(SocketAddr::from(([127, 0, 0, 1], backend_port))).await;
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
    for port in [backend_port, proxy_port, floor.port(), baton.addr().port()] {
        wrk(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            &script,
            Duration::from_secs(2),
        );
    }
    let mut verdicts = Vec::new();
    // 64 connections (throughput) and 1 (a plain back-to-back client:
    // latency, and the pattern that once stalled the queue).
    for c in [64u32, 1] {
        let run = |port: u16| {
            wrk_c(
                &format!("http://127.0.0.1:{port}/v1/chat/completions"),
                &script,
                d,
                c,
            )
        };
        let direct = run(backend_port);
        let nginx = run(proxy_port);
        let bare = run(floor.port());
        let bat = run(baton.addr().port());
        println!("  {c} connection(s)");
        println!(
            "  {:<14} {:>10} {:>9} {:>9} {:>10}",
            "path", "req/s", "p50 ms", "p99 ms", "vs direct"
        );
        for (name, w) in [
            ("direct", &direct),
            ("nginx proxy", &nginx),
            ("hyper floor", &bare),
            ("baton", &bat),
        ] {
            println!(
                "  {name:<14} {:>10.0} {:>9.3} {:>9.3} {:>9.2}x  {}",
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
            "  added p50: nginx {added_nginx:+.3} ms, baton {added_baton:+.3} ms; baton RSS {:.1} MB",
            rss_mb(&baton)
        );
        verdicts.push((
            format!("proxy throughput >= nginx, {c} connection(s)"),
            bat.rps >= nginx.rps,
            format!(
                "baton {:.3}x of direct, nginx {:.3}x",
                bat.rps / direct.rps,
                nginx.rps / direct.rps
            ),
        ));
        verdicts.push((
            format!("added p50 <= nginx's, {c} connection(s)"),
            added_baton <= added_nginx,
            format!("baton {added_baton:+.3} ms, nginx {added_nginx:+.3} ms"),
        ));
    }
    println!(
        "  hyper floor: the same HTTP stack as Baton (hyper server and client, keep-alive\n  \
         connections, TCP_NODELAY) relaying with no routing, health or checks: the least\n  \
         a hyper-based proxy costs on this machine"
    );
    let _ = backend.kill();
    let _ = proxy.kill();
    let _ = backend.wait();
    let _ = proxy.wait();
    verdicts
}

/// The least a proxy on Baton's HTTP stack does: a hyper server relaying
/// each request to `backend` over pooled hyper client connections, with no
/// routing, health, limits or checks. Its figures separate what hyper and
/// tokio cost per request from what Baton adds on top.
async fn floor_proxy(backend: SocketAddr) -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1::SendRequest;
    use std::sync::{Arc, Mutex};
    type Pool = Arc<Mutex<Vec<SendRequest<Full<bytes::Bytes>>>>>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool: Pool = Arc::default();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let pool = pool.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let idle = pool.lock().unwrap().pop();
                        let mut tx = match idle {
                            Some(tx) if tx.is_ready() => tx,
                            _ => {
                                let s = tokio::net::TcpStream::connect(backend).await.unwrap();
                                let _ = s.set_nodelay(true);
                                let (tx, conn) = hyper::client::conn::http1::handshake(
                                    hyper_util::rt::TokioIo::new(s),
                                )
                                .await?;
                                tokio::spawn(conn);
                                tx
                            }
                        };
                        let mut up = hyper::Request::builder()
                            .method(parts.method)
                            .uri(parts.uri.path())
                            .header(hyper::header::HOST, backend.to_string());
                        if let Some(ct) = parts.headers.get(hyper::header::CONTENT_TYPE) {
                            up = up.header(hyper::header::CONTENT_TYPE, ct);
                        }
                        let resp = tx.send_request(up.body(Full::new(body)).unwrap()).await?;
                        let (parts, body) = resp.into_parts();
                        let body = body.collect().await?.to_bytes();
                        pool.lock().unwrap().push(tx);
                        Ok::<_, hyper::Error>(hyper::Response::from_parts(parts, Full::new(body)))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
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
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(2, 100, 20.0)).await,
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
    // The slots Baton is told: exact, the user's natural guesses, none.
    let guesses: [(&str, Option<Slots>, Strategy); 5] = [
        ("exact slots (4/4/2)", None, Strategy::LeastTime),
        ("uniform guess 4", Some(Slots::Max(4)), Strategy::LeastTime),
        (
            "uniform guess 16",
            Some(Slots::Max(16)),
            Strategy::LeastTime,
        ),
        ("\"auto\"", Some(Slots::Auto), Strategy::LeastTime),
        ("round-robin, exact slots", None, Strategy::RoundRobin),
    ];
    for (name, slots, strategy) in guesses {
        let mut cfg = config_for(&refs, strategy);
        if let Some(sl) = slots {
            for w in &mut cfg.workers {
                w.max_concurrent_requests = sl;
            }
        }
        let baton = serve(&cfg);
        let r = drive(baton.at("/v1/chat/completions"), 20, d, 64).await;
        line(&format!("{name}, concurrency 20"), &r);
        let ratio = r.window_tokens_per_second() / alone_sum;
        let learned: Vec<String> = stats(&baton).await["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["slots"].to_string())
            .collect();
        println!(
            "  {:<34} {ratio:>8.3} of the sum; learned slots {}",
            "",
            learned.join("/")
        );
        if strategy == Strategy::LeastTime {
            out.push((
                format!("pool efficiency, {name} >= 0.95"),
                ratio >= 0.95 && r.failed == 0,
                format!(
                    "{ratio:.3} of the sum of the studios alone, {} failed, learned {}",
                    r.failed,
                    learned.join("/")
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
    let healthy = [
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(4, 100, 40.0)).await,
    ];
    let reference = {
        let refs: Vec<&SimHandle> = healthy.iter().collect();
        let baton = serve(&config_for(&refs, Strategy::LeastTime));
        let r = drive(baton.at("/v1/chat/completions"), 16, d, 64).await;
        line("reference: the two healthy only", &r);
        r.window_tokens_per_second()
    };
    let mut out = Vec::new();
    for how in [Bad::Refuses, Bad::Hangs, Bad::Fast503] {
        for late in [false, true] {
            let bad = start_sim(sim_cfg(4, 100, 40.0)).await;
            let refs: Vec<&SimHandle> = vec![&healthy[0], &healthy[1], &bad];
            if !late {
                break_studio(&bad, how);
            }
            let baton = serve(&config_for(&refs, Strategy::LeastTime));
            let url = baton.at("/v1/chat/completions");
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
                let st = stats(&baton).await;
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
            let after_1s = requests_by_worker(&baton).await["studio-3"];
            let r = run.await.unwrap();
            let end = requests_by_worker(&baton).await["studio-3"];
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
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(4, 100, 4.0)).await,
    ];
    let mut sum = 0.0;
    for (i, s) in sims.iter().enumerate() {
        let r = drive(format!("{}/v1/chat/completions", s.url()), 8, d, 64).await;
        line(&format!("studio-{} alone (direct)", i + 1), &r);
        sum += r.window_tokens_per_second();
    }
    let fast: Vec<&SimHandle> = sims.iter().take(2).collect();
    let without = {
        let baton = serve(&config_for(&fast, Strategy::LeastTime));
        let r = drive(baton.at("/v1/chat/completions"), 12, d, 64).await;
        line("pool without the slow studio", &r);
        r
    };
    let all: Vec<&SimHandle> = sims.iter().collect();
    let baton = serve(&config_for(&all, Strategy::LeastTime));
    let with = drive(baton.at("/v1/chat/completions"), 12, d, 64).await;
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
    println!("\n5. Memory of the balancer process (RSS), idle and with 1,000 streams");
    let (idle, busy, in_flight) = memory_with(opts).await;
    println!(
        "  idle {idle:.1} MB, {busy:.1} MB with {in_flight} streams ({:.1} KB per stream)",
        (busy - idle) * 1024.0 / in_flight.max(1) as f64
    );
    vec![
        (
            "memory < 50 MB with 1,000 streams".into(),
            busy < 50.0 && in_flight >= 1000,
            format!("idle {idle:.1} MB, {busy:.1} MB with {in_flight} in flight"),
        ),
        (
            "engine idle < 30 MB".into(),
            idle < 30.0,
            format!("idle {idle:.1} MB"),
        ),
    ]
}

/// RSS of `baton serve` idle and with 1,000 streams in flight (MB), and how
/// many were in flight.
async fn memory_with(opts: &Opts) -> (f64, f64, u64) {
    let lab = Lab::builder()
        .studios((0..3).map(|_| sim_cfg(400, 100, 5.0)))
        .ids(["studio-1", "studio-2", "studio-3"])
        .settings(least_time())
        .serve()
        .await;
    let baton = &lab.balancer;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_mb(baton);
    let c = client();
    let url = baton.at("/v1/chat/completions");
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
        let st = stats(baton).await;
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
    let busy = rss_mb(baton);
    for t in &tasks {
        t.abort();
    }
    (idle, busy, in_flight)
}

// ---------------------------------------------------------------- section 7

/// Two studios of the same kind at twice their slots: pooled answers per
/// second against the sum of what they can give, and ejections.
async fn mode_pool(name: &str, slots: usize, faults: Faults, d: Duration) -> Verdict {
    let lab = Lab::builder()
        .studios((1..=2).map(|seed| {
            sim_cfg(slots, 100, 50.0)
                .with_faults(faults.clone())
                .with_seed(seed)
        }))
        .ids(["studio-1", "studio-2"])
        .settings(least_time())
        .serve()
        .await;
    let tokens = 24u32;
    let url = format!("{}/chat/completions", lab.url());
    let r = drive(url, 4 * slots, d, tokens).await;
    let answer_s = 0.1 + f64::from(tokens - 1) / 50.0;
    let capacity = 2.0 * slots as f64 / answer_s;
    let rate = r.window_ok / r.window.as_secs_f64().max(1e-9);
    let ratio = rate / capacity;
    let stats = stats(&lab.balancer).await;
    let ejections: u64 = stats["workers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["ejections"].as_object().unwrap().values())
        .filter_map(Value::as_u64)
        .sum();
    println!(
        "  {name:<44} {rate:>6.2} answers/s = {ratio:.3} of the summed capacity ({capacity:.2}/s), {} failed, {ejections} ejections",
        r.failed
    );
    (
        format!("{name}: >= 0.95 of capacity, no ejection"),
        ratio >= 0.95 && ejections == 0 && r.failed == 0,
        format!("{ratio:.3}, {ejections} ejections, {} failed", r.failed),
    )
}

async fn server_behaviours(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n7. Real server behaviours: two studios per mode at 2x their slots, 24-token streams"
    );
    let d = secs(opts, 15.0);
    vec![
        mode_pool("healthy pool", 4, Faults::default(), d).await,
        mode_pool(
            "closes after every stream (llama.cpp)",
            4,
            Faults {
                close_after_stream: true,
                keepalive_idle_ms: Some(5000),
                ..Faults::default()
            },
            d,
        )
        .await,
        mode_pool(
            "one request at a time (single-threaded HTTP)",
            1,
            Faults {
                serial: true,
                ..Faults::default()
            },
            d,
        )
        .await,
        mode_pool(
            "a new request ends the running one",
            1,
            Faults {
                interrupt: true,
                ..Faults::default()
            },
            d,
        )
        .await,
    ]
}

// ---------------------------------------------------------------- section 8

/// Per-turn figures of a conversation workload.
#[derive(Default)]
struct Turns {
    ttft_ms: Vec<f64>,
    total_ms: Vec<f64>,
    failed: u64,
}

impl Turns {
    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }
    fn p95(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get((s.len() as f64 * 0.95) as usize)
            .or(s.last())
            .copied()
            .unwrap_or(0.0)
    }
}

/// One streamed turn: (time to first content, whole time), in ms.
async fn turn(c: &reqwest::Client, url: &str, body: &Value) -> Option<(f64, f64, String)> {
    use futures_util::StreamExt;
    let t0 = Instant::now();
    let r = c.post(url).json(body).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let mut ttft = None;
    let mut text = String::new();
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.ok()?;
        let s = String::from_utf8_lossy(&chunk);
        if ttft.is_none() && s.contains("\"content\":\"") && !s.contains("\"content\":\"\"") {
            ttft = Some(t0.elapsed().as_secs_f64() * 1000.0);
        }
        text.push_str(&s);
    }
    Some((
        ttft.unwrap_or(f64::NAN),
        t0.elapsed().as_secs_f64() * 1000.0,
        text,
    ))
}

/// `conversations` conversations of `turns` turns each, all at once; each
/// turn adds `words` words of user text to the context.
async fn conversation_load(url: String, conversations: usize, turns: usize, words: usize) -> Turns {
    let c = client();
    let mut tasks = Vec::new();
    for conv in 0..conversations {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Turns::default();
            let mut messages = vec![json!({"role": "system", "content": format!("agent {conv}")})];
            for t in 0..turns {
                let text: String = (0..words).map(|i| format!("w{conv}x{t}y{i} ")).collect();
                messages.push(json!({"role": "user", "content": text}));
                let body = json!({"model": sim::DEFAULT_MODEL, "stream": true, "max_tokens": 16,
                                  "messages": messages});
                match turn(&c, &url, &body).await {
                    Some((ttft, total, _)) => {
                        out.ttft_ms.push(ttft);
                        out.total_ms.push(total);
                    }
                    None => out.failed += 1,
                }
                messages.push(json!({"role": "assistant", "content": format!("answer {t}")}));
            }
            out
        }));
    }
    let mut all = Turns::default();
    for t in tasks {
        let r = t.await.unwrap();
        all.ttft_ms.extend(r.ttft_ms);
        all.total_ms.extend(r.total_ms);
        all.failed += r.failed;
    }
    all
}

async fn conversations(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n8. Conversations: 24 agents x 8 turns, context growing to 16k tokens, 4 studios x 6 slots with per-slot prompt caches (prefill 2,000 tok/s, a 7-8B model on an M2 Ultra)"
    );
    let studio = |seed| SimConfig {
        slots: 6,
        ttft: Duration::from_millis(50),
        tokens_per_second: 40.0,
        prefill_tps: Some(2000.0),
        seed,
        ..SimConfig::default()
    };
    let pool = || async {
        let mut v = Vec::new();
        for seed in 1..=4 {
            v.push(start_sim(studio(seed)).await);
        }
        v
    };
    let words = ((2000.0 * opts.scale) as usize).max(200);
    let mut rows = Vec::new();
    for strategy in [Strategy::LeastTime, Strategy::CacheAffinity] {
        let sims = pool().await;
        let refs: Vec<&SimHandle> = sims.iter().collect();
        let baton = serve(&config_for(&refs, strategy));
        let t0 = Instant::now();
        let r = conversation_load(baton.at("/v1/chat/completions"), 24, 8, words).await;
        let wall = t0.elapsed();
        let name = match strategy {
            Strategy::LeastTime => "least_time",
            Strategy::CacheAffinity => "cache_affinity",
            Strategy::RoundRobin => "round_robin",
        };
        let cached: u64 = sims.iter().map(|s| s.stats().cached_prompt_tokens).sum();
        let prefilled: u64 = sims.iter().map(|s| s.stats().prefilled_tokens).sum();
        println!(
            "  {name:<16} mean TTFT {:>7.0} ms  p95 TTFT {:>7.0} ms  mean turn {:>7.0} ms  wall {:>5.1} s  failed {}  prompt tokens from cache {:.0}%",
            Turns::mean(&r.ttft_ms),
            Turns::p95(&r.ttft_ms),
            Turns::mean(&r.total_ms),
            wall.as_secs_f64(),
            r.failed,
            100.0 * cached as f64 / (cached + prefilled).max(1) as f64
        );
        rows.push((Turns::mean(&r.ttft_ms), wall.as_secs_f64(), r.failed));
    }
    let ttft_ratio = rows[0].0 / rows[1].0;
    println!(
        "  affinity: {ttft_ratio:.2}x lower mean TTFT, {:.2}x shorter wall time",
        rows[0].1 / rows[1].1
    );
    // Single-turn traffic: nothing to remember; affinity must cost nothing.
    let mut single = Vec::new();
    for strategy in [Strategy::LeastTime, Strategy::CacheAffinity] {
        let sims = pool().await;
        let refs: Vec<&SimHandle> = sims.iter().collect();
        let baton = serve(&config_for(&refs, strategy));
        let r = drive(baton.at("/v1/chat/completions"), 24, secs(opts, 10.0), 32).await;
        line(&format!("single-turn, {strategy:?}"), &r);
        single.push(r.window_tokens_per_second());
    }
    let single_ratio = single[1] / single[0];
    println!("  single-turn: cache_affinity {single_ratio:.3}x of least_time's tokens/s");
    vec![
        (
            "conversations: >= 2x lower mean TTFT with affinity".into(),
            ttft_ratio >= 2.0 && rows.iter().all(|r| r.2 == 0),
            format!("{ttft_ratio:.2}x"),
        ),
        (
            "single-turn: affinity costs nothing (>= 0.97)".into(),
            single_ratio >= 0.97,
            format!("{single_ratio:.3}x"),
        ),
    ]
}

// ---------------------------------------------------------------- section 9

/// TTFT p50 (ms) of 12 streams for `d` from the start, on `b`.
async fn ttft_p50(b: &baton::balancer::Balancer, d: Duration) -> (f64, LoadReport) {
    let spec = LoadSpec {
        url: format!("{}/chat/completions", b.url()),
        body: chat(64),
        concurrency: 12,
        duration: Some(d),
        requests: None,
        api_key: None,
        warmup: Duration::ZERO,
        prompts: Vec::new(),
    };
    let r = load::run(&client(), &spec).await;
    (r.ttft_us.value_at_quantile(0.5) as f64 / 1000.0, r)
}

async fn no_slow_start_twice(opts: &Opts) -> Vec<Verdict> {
    use baton::balancer::Balancer;
    println!(
        "\n9. No slow start twice: two studios of 4 slots, 12 streams, TTFT p50 of the first 15 s"
    );
    let sims = [
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(4, 100, 40.0)).await,
    ];
    // Declared exactly: only slow start is learned, not probes upward
    // (which cost a queued request now and then, restart or not).
    let cfg = config_for(&sims.iter().collect::<Vec<_>>(), Strategy::LeastTime);
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("baton.sqlite3");
    let d = secs(opts, 15.0);
    let start = || async {
        let b = Balancer::start_remembering(&cfg, None, None, &store)
            .await
            .expect("balancer starts");
        assert!(b.wait_all_ready(Duration::from_secs(10)).await);
        b
    };
    let first = start().await;
    let (fresh, r) = ttft_p50(&first, d).await;
    line("fresh balancer, first 15 s", &r);
    let (warm, r) = ttft_p50(&first, d).await;
    line("same balancer, warm", &r);
    let slots = |b: &Balancer| {
        b.stats()
            .workers
            .iter()
            .map(|w| w.slots.to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    println!("  learned slots {}", slots(&first));
    first.shutdown().await;
    let again = start().await;
    let recalled = slots(&again);
    let (restarted, r) = ttft_p50(&again, d).await;
    line("restarted, first 15 s", &r);
    let ratio = restarted / warm;
    println!(
        "  TTFT p50: fresh {fresh:.0} ms, warm {warm:.0} ms, restarted {restarted:.0} ms ({ratio:.2}x warm; started at slots {recalled})"
    );
    vec![(
        "restart TTFT p50 within 10% of warm".into(),
        ratio <= 1.10,
        format!(
            "restarted {restarted:.0} ms vs warm {warm:.0} ms ({ratio:.2}x; a fresh start: {fresh:.0} ms)"
        ),
    )]
}

// --------------------------------------------------------------- section 10

async fn idle_cost(opts: &Opts) -> Vec<Verdict> {
    println!(
        "\n10. Idle cost: `baton serve` over three studios, nobody using it (Linux: /proc, every thread)"
    );
    let sims = [
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(4, 100, 40.0)).await,
        start_sim(sim_cfg(2, 100, 20.0)).await,
    ];
    let cfg = config_for(&sims.iter().collect::<Vec<_>>(), Strategy::LeastTime);
    let baton = serve(&cfg);
    // Some traffic first, as a pool that was used and then left alone.
    let r = drive(
        baton.at("/v1/chat/completions"),
        4,
        Duration::from_secs(3),
        16,
    )
    .await;
    line("a little traffic first", &r);
    let window = secs(opts, 60.0);
    let i = support::procfs::idle(baton.pid(), window).await;
    println!(
        "  {:<34} {:>6.3}% of a core  {:>6.2} wake-ups/s  RSS {:.1} MB",
        "the first minute after it", i.cpu_pct, i.wakeups_per_s, i.rss_mb
    );
    println!("    woke most: {}", i.busiest_line());
    // The probers slow down once the pool has had no request for 2 min.
    let rest = Duration::from_secs(125).saturating_sub(window);
    tokio::time::sleep(rest).await;
    let i = support::procfs::idle(baton.pid(), window).await;
    println!(
        "  {:<34} {:>6.3}% of a core  {:>6.2} wake-ups/s  RSS {:.1} MB",
        "at rest (no request for 2+ min)", i.cpu_pct, i.wakeups_per_s, i.rss_mb
    );
    println!("    woke most: {}", i.busiest_line());
    let (cpu, wake, rss) = (i.cpu_pct, i.wakeups_per_s, i.rss_mb);
    vec![
        (
            "engine idle CPU < 0.1% of a core".into(),
            cpu < 0.1,
            format!("{cpu:.3}% over {:.0} s", window.as_secs_f64()),
        ),
        (
            "engine idle wake-ups < 2/s".into(),
            wake < 2.0,
            format!("{wake:.2}/s (voluntary context switches, all threads)"),
        ),
        (
            "engine idle RSS < 30 MB".into(),
            rss < 30.0,
            format!("{rss:.1} MB"),
        ),
    ]
}
