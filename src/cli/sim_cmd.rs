//! `baton sim`: run simulated studios until Ctrl-C.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use baton::config::{BalancerSettings, Config, Worker};
use baton::sim::{self, DEFAULT_MODEL, Faults, SimConfig};
use baton::studio::StudioKind;
use clap::Args;

#[derive(Args, Debug)]
pub struct SimArgs {
    /// How many studios to start: on consecutive addresses from --base, or all
    /// on --base with --port 0
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// First address to bind (127.0.0.2 then .3, .4, ... with --count)
    #[arg(long, default_value = "127.0.0.1")]
    base: Ipv4Addr,
    /// Port every studio listens on (0: all on --base, each on a free port)
    #[arg(long, default_value_t = 1234)]
    port: u16,
    /// Server software to imitate (its identifying endpoints and native APIs)
    #[arg(long, default_value = "lm_studio", value_parser = parse_kind)]
    kind: StudioKind,
    /// Model served (repeat for several; the first is the default)
    #[arg(long = "model", default_values_t = [DEFAULT_MODEL.to_string()])]
    models: Vec<String>,
    /// Concurrent generations; more requests wait in FIFO order
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Time to first token once a slot is free, in milliseconds
    #[arg(long, default_value_t = 200)]
    ttft_ms: u64,
    /// Tokens per second each slot streams
    #[arg(long, default_value_t = 40.0)]
    tps: f64,
    /// Answer length when a request sets no max_tokens
    #[arg(long, default_value_t = 64)]
    default_tokens: u32,
    /// Fault: fraction of requests answered with --error-status (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Fault: status code of injected errors
    #[arg(long, default_value_t = 503)]
    error_status: u16,
    /// Fault: accept and read requests but never answer
    #[arg(long)]
    hang: bool,
    /// Fault: break the connection after this many tokens
    #[arg(long)]
    drop_after: Option<u32>,
    /// Fault: extra delay before every answer, in milliseconds
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Close the connection after every streamed answer, unannounced (llama.cpp)
    #[arg(long)]
    close_after_stream: bool,
    /// Close kept-alive connections idle this long, in milliseconds (real servers: 5000)
    #[arg(long)]
    keepalive_idle_ms: Option<u64>,
    /// Close the connection, unannounced, after this fraction of answers (0 to 1)
    #[arg(long, default_value_t = 0.0)]
    close_random: f64,
    /// Serve one request at a time, probes included (single-threaded Python servers)
    #[arg(long)]
    serial: bool,
    /// A new request ends any streaming answer: [DONE] without a finish reason, then
    /// the connection breaks (llama-cpp-python)
    #[arg(long)]
    interrupt: bool,
    /// A stream's 200 head goes out at once, then silence until the first token
    /// (llama-cpp-python and other uvicorn servers)
    #[arg(long)]
    early_headers: bool,
    /// Fault: streams end with [DONE] but without a finish reason
    #[arg(long)]
    done_without_finish: bool,
    /// Fault: streams send everything, [DONE] included, then break
    #[arg(long)]
    break_after_done: bool,
    /// Fault: after K tokens a stream carries an error object, then [DONE], under HTTP 200
    #[arg(long, value_name = "K")]
    error_in_stream_after: Option<u32>,
    /// Model load time paid by the first generation (and after POST /sim/unload), in ms
    #[arg(long, default_value_t = 0)]
    load_ms: u64,
    /// A model in memory at start (repeat for several; default: every model when
    /// --load-ms is 0, none otherwise)
    #[arg(long = "loaded", value_name = "MODEL")]
    loaded: Vec<String>,
    /// One model's load time, instead of --load-ms (repeat: --model-load-ms big=20000)
    #[arg(long = "model-load-ms", value_name = "MODEL=MS", value_parser = parse_model_ms)]
    model_load_ms: Vec<(String, u64)>,
    /// Memory the loaded models may take, in GB (each takes 4.1 GB): loading past it
    /// unloads the idle model used longest ago, or waits for a busy one
    #[arg(long)]
    memory_gb: Option<f64>,
    /// Imitate LM Studio before 0.4: /api/v0/models only, no /api/v1 load and unload
    #[arg(long)]
    lm_studio_v0: bool,
    /// Prompt tokens per second a slot prefills; with it, each slot caches its last
    /// prompt and only the uncached part costs time
    #[arg(long)]
    prefill_tps: Option<f64>,
    /// Serve Anthropic's /v1/messages (default: on for llama_cpp, lm_studio, ollama)
    #[arg(long)]
    anthropic: Option<bool>,
    /// Seed for the error-rate and close-random dice
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write a workers file pointing at the started studios
    #[arg(long)]
    write_config: Option<PathBuf>,
}

fn parse_kind(s: &str) -> Result<StudioKind, String> {
    s.parse()
}

fn parse_model_ms(s: &str) -> Result<(String, u64), String> {
    let (m, ms) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}`: write MODEL=MS, e.g. qwen3-32b=20000"))?;
    let ms = ms
        .parse()
        .map_err(|_| format!("`{ms}` is not a number of milliseconds"))?;
    Ok((m.to_string(), ms))
}

pub async fn run(a: SimArgs) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&a.error_rate) {
        anyhow::bail!("--error-rate must be between 0 and 1, got {}", a.error_rate);
    }
    if !(0.0..=1.0).contains(&a.close_random) {
        anyhow::bail!(
            "--close-random must be between 0 and 1, got {}",
            a.close_random
        );
    }
    if a.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    let cfg = SimConfig {
        kind: a.kind,
        models: a.models.clone(),
        slots: a.slots,
        ttft: Duration::from_millis(a.ttft_ms),
        tokens_per_second: a.tps,
        default_tokens: a.default_tokens,
        faults: Faults {
            error_rate: a.error_rate,
            error_status: a.error_status,
            hang: a.hang,
            drop_after_tokens: a.drop_after,
            delay_ms: a.delay_ms,
            refuse_for_ms: None,
            close_after_stream: a.close_after_stream,
            keepalive_idle_ms: a.keepalive_idle_ms,
            close_random: a.close_random,
            serial: a.serial,
            interrupt: a.interrupt,
            early_headers: a.early_headers,
            done_without_finish: a.done_without_finish,
            break_after_done: a.break_after_done,
            error_in_stream_after: a.error_in_stream_after,
        },
        seed: a.seed,
        load_ms: a.load_ms,
        prefill_tps: a.prefill_tps,
        anthropic: a.anthropic,
        loaded: (!a.loaded.is_empty()).then(|| a.loaded.clone()),
        model_load_ms: a.model_load_ms.iter().cloned().collect(),
        model_size: Default::default(),
        memory_bytes: a.memory_gb.map(|g| (g * 1e9) as u64),
        lm_studio_v1: !a.lm_studio_v0,
    };
    let sims = sim::start_many(a.base, a.port, a.count, &cfg)
        .await
        .context("starting simulated studios")?;
    println!(
        "{} simulated {} studio(s): {} slot(s) each, TTFT {} ms, {} tokens/s per slot",
        sims.len(),
        a.kind,
        a.slots,
        a.ttft_ms,
        a.tps
    );
    for (i, s) in sims.iter().enumerate() {
        println!(
            "  sim-{:<3} {}/v1   models: {}",
            i + 1,
            s.url(),
            a.models.join(", ")
        );
    }
    let first = sims[0].url();
    println!(
        "\nTry:\n  curl {first}/v1/models\n  curl -N {first}/v1/chat/completions -H 'Content-Type: application/json' \\\n    -d '{{\"model\":\"{}\",\"stream\":true,\"max_tokens\":16,\"messages\":[{{\"role\":\"user\",\"content\":\"hello\"}}]}}'\n  curl {first}/sim/stats",
        a.models[0]
    );
    if let Some(path) = &a.write_config {
        let workers = sims
            .iter()
            .enumerate()
            .map(|(i, s)| Worker {
                id: format!("sim-{}", i + 1),
                host: s.addr().ip().to_string(),
                port: s.addr().port(),
                kind: a.kind,
                model: a.models[0].clone(),
                max_concurrent_requests: baton::config::Slots::Max(a.slots as u32),
                enabled: true,
                weight: 1.0,
                api_key: None,
                members: Vec::new(),
            })
            .collect();
        let file = Config {
            workers,
            balancer: BalancerSettings::default(),
            ..Default::default()
        };
        let text = serde_json::to_string_pretty(&file.to_json())? + "\n";
        baton::files::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nWrote a workers file for them: {}", path.display());
    }
    // Listen before saying so: a Ctrl-C right after the line must count.
    let stop = super::serve_cmd::Stop::listen()?;
    println!("\nPress Ctrl-C to stop.");
    stop.interrupted().await;
    for s in sims {
        s.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}
