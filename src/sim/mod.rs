//! Simulated studios: an LM Studio-like server for the demo, the tests and
//! the benchmarks, with modes for the ways real local-LLM servers behave.
//!
//! Capacity model: `slots` generations run at once; further requests wait in
//! FIFO order (tokio's semaphore is fair), then each waits `ttft` (plus the
//! prompt's uncached part at `prefill_tps`) and streams at `tps` tokens per
//! second. Faults (5xx, hang, drop mid-stream, delay, refuse, connection
//! closes, one-request-at-a-time, interrupting streams, truncated streams)
//! can be set at start or changed at run time, through [`SimHandle`] or
//! `POST /sim/fault`.
//!
//! Layout: `conn` owns sockets and per-request bookkeeping (log, serial
//! mode, interrupts, closes); `generation` is the one generation core every
//! wire format uses; `openai`, `anthropic` and `ollama` are the formats;
//! `api` wires routes per kind; `cache` keeps each slot's prompt prefix;
//! `load` the model's load state; `log` the request log; `metrics` vLLM's
//! histograms.

mod anthropic;
mod api;
mod cache;
mod conn;
mod generation;
mod load;
mod log;
mod metrics;
mod ollama;
mod openai;
pub mod text;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::studio::StudioKind;

pub use load::{SimModel, Status as ModelStatus};
pub use log::LogEntry;
pub(crate) use ollama::rfc3339;

/// How a simulated studio behaves when healthy.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub kind: StudioKind,
    /// Models it serves; the first is the default for requests without one.
    pub models: Vec<String>,
    pub slots: usize,
    pub ttft: Duration,
    pub tokens_per_second: f64,
    /// Answer length when a request sets no `max_tokens` (the answer then
    /// ends on its own: finish reason `stop`).
    pub default_tokens: u32,
    pub faults: Faults,
    /// Seed for the error-rate dice, so fault runs are reproducible.
    pub seed: u64,
    /// Model load time paid by the first generation (and the first after an
    /// unload). 0: the model is loaded from the start.
    pub load_ms: u64,
    /// Prompt tokens per second a slot prefills. `None`: the time to first
    /// token is `ttft` whatever the prompt. `Some`: `ttft` plus the prompt
    /// tokens the slot has not cached, at this rate.
    pub prefill_tps: Option<f64>,
    /// Serve Anthropic's `/v1/messages`. `None`: as the kind does (on for
    /// llama_cpp, lm_studio and ollama).
    pub anthropic: Option<bool>,
    /// Models in memory at start (of `models`). `None`: every model when
    /// `load_ms` is 0, none otherwise.
    pub loaded: Option<Vec<String>>,
    /// Load time of a model, instead of `load_ms`.
    pub model_load_ms: BTreeMap<String, u64>,
    /// Memory a model takes once loaded, bytes (default [`MODEL_SIZE`]).
    pub model_size: BTreeMap<String, u64>,
    /// Most memory the loaded models may take: a load past it unloads the
    /// least recently used idle models (and waits for busy ones). `None`:
    /// no limit.
    pub memory_bytes: Option<u64>,
    /// LM Studio 0.4's REST API (`/api/v1/models`, load, unload); `false`:
    /// an older LM Studio with `/api/v0/models` only.
    pub lm_studio_v1: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            kind: StudioKind::LmStudio,
            models: vec![DEFAULT_MODEL.to_string()],
            slots: 4,
            ttft: Duration::from_millis(200),
            tokens_per_second: 40.0,
            default_tokens: 64,
            faults: Faults::default(),
            seed: 1,
            load_ms: 0,
            prefill_tps: None,
            anthropic: None,
            loaded: None,
            model_load_ms: BTreeMap::new(),
            model_size: BTreeMap::new(),
            memory_bytes: None,
            lm_studio_v1: true,
        }
    }
}

impl SimConfig {
    /// Whether `/v1/messages` is served.
    pub fn serves_anthropic(&self) -> bool {
        self.anthropic.unwrap_or(matches!(
            self.kind,
            StudioKind::LlamaCpp | StudioKind::LmStudio | StudioKind::Ollama
        ))
    }
}

/// The model simulated studios serve unless told otherwise (the user's).
pub const DEFAULT_MODEL: &str = "mistral-7b-instruct-v0.2";

/// Memory a simulated model takes once loaded unless told otherwise (a
/// 7B model at 4 bits).
pub const MODEL_SIZE: u64 = 4_109_865_159;

/// Context length simulated models report.
pub const CONTEXT_LENGTH: u32 = 32768;

/// How long Ollama keeps an idle model loaded unless asked otherwise.
const OLLAMA_KEEP_ALIVE: Duration = Duration::from_secs(300);

impl SimConfig {
    /// Each model's load time, size and context.
    fn specs(&self) -> Vec<load::Spec> {
        self.models
            .iter()
            .map(|m| load::Spec {
                name: m.clone(),
                size_bytes: self.model_size.get(m).copied().unwrap_or(MODEL_SIZE),
                load: Duration::from_millis(
                    self.model_load_ms.get(m).copied().unwrap_or(self.load_ms),
                ),
                context_length: CONTEXT_LENGTH,
            })
            .collect()
    }

    /// Which models are in memory at start.
    fn loaded_at_start(&self) -> Vec<bool> {
        self.models
            .iter()
            .map(|m| match &self.loaded {
                Some(l) => l.contains(m),
                None => self.load_ms == 0 && self.model_load_ms.get(m).is_none_or(|t| *t == 0),
            })
            .collect()
    }
}

/// Faults to inject. All off by default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction of generation requests answered with `error_status` (0..=1).
    pub error_rate: f64,
    /// Status for injected errors; 0 means 503.
    pub error_status: u16,
    /// Read requests but never answer them.
    pub hang: bool,
    /// Abort the connection after this many content tokens.
    pub drop_after_tokens: Option<u32>,
    /// Extra delay before any answer (a slow or overloaded studio).
    pub delay_ms: u64,
    /// Over HTTP only: stop listening (and close open connections) for this
    /// long, then listen again. In process use [`SimHandle::set_listening`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refuse_for_ms: Option<u64>,
    /// Close the connection after every streamed answer without saying so
    /// (no `Connection: close`), as llama.cpp's server does.
    pub close_after_stream: bool,
    /// Close a kept-alive connection idle this long, and advertise it in a
    /// `Keep-Alive: timeout=N, max=100` header (llama.cpp, uvicorn and Node
    /// use 5 s).
    pub keepalive_idle_ms: Option<u64>,
    /// Close the connection, unannounced, after this fraction of answers.
    pub close_random: f64,
    /// Serve one request at a time across all connections, probes included
    /// (a single-threaded Python server). `/sim/*` stays exempt.
    pub serial: bool,
    /// A new request ends any streaming generation at once: `[DONE]` without
    /// a finish reason, then the connection breaks (llama-cpp-python's
    /// default). Whole (non-streamed) answers are not interrupted.
    pub interrupt: bool,
    /// A stream's `200` head goes out at once, then nothing (not even an
    /// SSE comment) until the first token, however long the load, queue
    /// and prefill take (llama-cpp-python and other uvicorn servers).
    pub early_headers: bool,
    /// Streams end with `[DONE]` but without the chunk that carries the
    /// finish reason.
    pub done_without_finish: bool,
    /// Streams send everything, `[DONE]` included, then break instead of
    /// ending cleanly.
    pub break_after_done: bool,
    /// After this many content tokens a stream carries an error object, then
    /// ends (with `[DONE]` on OpenAI streams), all under HTTP 200 (as exo).
    pub error_in_stream_after: Option<u32>,
}

/// Counters served at `GET /sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimStats {
    /// Requests received on any generation or embedding endpoint.
    pub requests: u64,
    /// Requests being handled now (waiting for a slot or generating).
    pub in_flight: u64,
    /// Generations running now (holding a slot).
    pub active: u64,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// Highest number of generations that ever ran at once.
    pub peak_concurrency: u64,
    /// Highest number of requests ever in flight at once.
    pub peak_in_flight: u64,
    pub completed: u64,
    /// Requests whose client went away before the answer was complete.
    pub cancelled: u64,
    /// Injected errors (5xx answers and errors inside streams).
    pub errors: u64,
    /// Content tokens sent.
    pub tokens: u64,
    /// Streams ended early because another request arrived (interrupt mode).
    pub interrupted: u64,
    /// Model loads.
    pub loads: u64,
    /// Prompt tokens a slot already had cached.
    pub cached_prompt_tokens: u64,
    /// Prompt tokens prefilled.
    pub prefilled_tokens: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    in_flight: AtomicU64,
    active: AtomicU64,
    queued: AtomicU64,
    peak_concurrency: AtomicU64,
    peak_in_flight: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    errors: AtomicU64,
    tokens: AtomicU64,
    interrupted: AtomicU64,
    loads: AtomicU64,
    cached_prompt_tokens: AtomicU64,
    prefilled_tokens: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SimStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            requests: l(&self.requests),
            in_flight: l(&self.in_flight),
            active: l(&self.active),
            queued: l(&self.queued),
            peak_concurrency: l(&self.peak_concurrency),
            peak_in_flight: l(&self.peak_in_flight),
            completed: l(&self.completed),
            cancelled: l(&self.cancelled),
            errors: l(&self.errors),
            tokens: l(&self.tokens),
            interrupted: l(&self.interrupted),
            loads: l(&self.loads),
            cached_prompt_tokens: l(&self.cached_prompt_tokens),
            prefilled_tokens: l(&self.prefilled_tokens),
        }
    }

    fn reset(&self) {
        // Gauges (in_flight, active, queued) stay: they describe live requests.
        for c in [
            &self.requests,
            &self.peak_concurrency,
            &self.peak_in_flight,
            &self.completed,
            &self.cancelled,
            &self.errors,
            &self.tokens,
            &self.interrupted,
            &self.loads,
            &self.cached_prompt_tokens,
            &self.prefilled_tokens,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.peak_concurrency
            .store(self.active.load(Ordering::Relaxed), Ordering::Relaxed);
        self.peak_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Shared state of one simulated studio.
struct SimState {
    config: SimConfig,
    faults: Mutex<Faults>,
    /// Bumped on every fault change, so idle connections re-read their timeout.
    faults_changed: watch::Sender<u64>,
    slots: cache::Slots,
    /// The one-request-at-a-time lock of serial mode.
    serial: Arc<Semaphore>,
    /// Count of requests received (control plane excepted); a streaming
    /// generation in interrupt mode ends when it moves past its own.
    arrivals: watch::Sender<u64>,
    counters: Counters,
    dice: Mutex<u64>,
    listening: watch::Sender<bool>,
    models: Arc<load::Models>,
    log: log::RequestLog,
    metrics: metrics::Histograms,
}

impl SimState {
    /// Roll the dice (xorshift; deterministic for a seed): true with `rate`.
    fn roll(&self, rate: f64) -> bool {
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        let mut s = self.dice.lock().expect("dice lock");
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s % 1_000_000) as f64 / 1_000_000.0 < rate
    }

    fn faults(&self) -> Faults {
        self.faults.lock().expect("faults lock").clone()
    }

    fn set_faults(&self, faults: Faults) {
        *self.faults.lock().expect("faults lock") = faults;
        self.faults_changed.send_modify(|n| *n += 1);
    }
}

/// A running simulated studio. Dropping the handle shuts it down.
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SimHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> &SimConfig {
        &self.state.config
    }

    pub fn stats(&self) -> SimStats {
        self.state.counters.snapshot()
    }

    /// Zero the cumulative counters (gauges keep describing live requests).
    pub fn reset_stats(&self) {
        self.state.counters.reset();
    }

    pub fn faults(&self) -> Faults {
        self.state.faults()
    }

    /// Replace the fault settings; takes effect for new requests.
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// Every request received (the last 10,000), oldest first; `/sim/*`
    /// requests are not logged.
    pub fn log(&self) -> Vec<LogEntry> {
        self.state.log.entries()
    }

    pub fn clear_log(&self) {
        self.state.log.clear();
    }

    /// Unload every model: the next generation pays its load again.
    pub fn unload(&self) {
        self.state.models.unload_all();
    }

    /// Every model it can serve, with its state (loaded or not, loads so far).
    pub fn models(&self) -> Vec<SimModel> {
        self.state.models.snapshot()
    }

    /// Stop listening and close every open connection (`false`), as a
    /// studio whose server quit would; or listen again on the same address.
    pub fn set_listening(&self, on: bool) {
        self.state.listening.send_replace(on);
    }

    /// Stop the server and wait until it has closed its socket.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Start a simulated studio on `addr` (port 0 picks a free port).
pub async fn start(addr: SocketAddr, config: SimConfig) -> io::Result<SimHandle> {
    validate(&config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    serve(listener, config)
}

/// Serve on a listener made elsewhere (e.g. inside a network namespace by
/// a test). Note: after `set_listening(false)` it re-binds from the
/// runtime's own namespace.
pub async fn start_on(listener: std::net::TcpListener, config: SimConfig) -> io::Result<SimHandle> {
    validate(&config)?;
    listener.set_nonblocking(true)?;
    serve(TcpListener::from_std(listener)?, config)
}

fn validate(config: &SimConfig) -> io::Result<()> {
    let invalid = |msg: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, msg.to_string()));
    if config.models.is_empty() {
        return invalid("a simulated studio needs at least one model");
    }
    if config.slots == 0 || config.tokens_per_second <= 0.0 {
        return invalid("slots and tokens per second must be above 0");
    }
    if config.prefill_tps.is_some_and(|p| p.is_nan() || p <= 0.0) {
        return invalid("prefill tokens per second must be above 0");
    }
    let named = config
        .loaded
        .iter()
        .flatten()
        .chain(config.model_load_ms.keys())
        .chain(config.model_size.keys());
    for m in named {
        if !config.models.contains(m) {
            return invalid(&format!(
                "`{m}` is not one of the studio's models ({})",
                config.models.join(", ")
            ));
        }
    }
    Ok(())
}

fn serve(listener: TcpListener, config: SimConfig) -> io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let (listening, _) = watch::channel(true);
    let state = Arc::new(SimState {
        faults: Mutex::new(config.faults.clone()),
        faults_changed: watch::channel(0).0,
        slots: cache::Slots::new(config.slots),
        serial: Arc::new(Semaphore::new(1)),
        arrivals: watch::channel(0).0,
        counters: Counters::default(),
        dice: Mutex::new(config.seed.max(1)),
        listening,
        models: load::Models::new(
            config.specs(),
            &config.loaded_at_start(),
            config.memory_bytes,
            (config.kind == StudioKind::Ollama).then_some(OLLAMA_KEEP_ALIVE),
        ),
        log: log::RequestLog::new(),
        metrics: metrics::Histograms::default(),
        config,
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(conn::accept_loop(
        listener,
        addr,
        state.clone(),
        shutdown.clone(),
    ));
    Ok(SimHandle {
        addr,
        state,
        shutdown,
        task: Some(task),
    })
}

/// Start `count` studios on consecutive IPv4 addresses from `base`, all on
/// `port` (`baton sim --count 3 --base 127.0.0.2` binds .2, .3 and .4).
pub async fn start_many(
    base: std::net::Ipv4Addr,
    port: u16,
    count: usize,
    config: &SimConfig,
) -> io::Result<Vec<SimHandle>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // Port 0: every studio on `base`, each on a free port (127.0.0.1
        // is the only loopback address macOS has out of the box).
        let step = if port == 0 { 0 } else { i as u32 };
        let ip = u32::from(base).checked_add(step).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "address range overflows 255.255.255.255",
            )
        })?;
        let mut cfg = config.clone();
        cfg.seed = config.seed.wrapping_add(i as u64);
        out.push(start(SocketAddr::from((std::net::Ipv4Addr::from(ip), port)), cfg).await?);
    }
    Ok(out)
}

/// A workers-file entry for a running simulated studio.
pub fn worker_for(id: &str, sim: &SimHandle) -> crate::config::Worker {
    crate::config::Worker {
        id: id.to_string(),
        host: sim.addr().ip().to_string(),
        port: sim.addr().port(),
        kind: sim.config().kind,
        model: sim.config().models[0].clone(),
        max_concurrent_requests: crate::config::Slots::Max(sim.config().slots as u32),
        enabled: true,
        weight: 1.0,
        api_key: None,
        members: Vec::new(),
    }
}

/// Start one studio per config on 127.0.0.1 (free ports) and the workers
/// file that points at them (`sim-studio-1`, `sim-studio-2`, ...): the
/// built-in pool `serve` and `bench` use when no real studios are set up.
pub async fn start_pool(
    configs: Vec<SimConfig>,
) -> io::Result<(crate::config::Config, Vec<SimHandle>)> {
    let mut sims = Vec::with_capacity(configs.len());
    for c in configs {
        sims.push(start(SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0)), c).await?);
    }
    let workers = sims
        .iter()
        .enumerate()
        .map(|(i, s)| worker_for(&format!("sim-studio-{}", i + 1), s))
        .collect();
    Ok((
        crate::config::Config {
            workers,
            balancer: crate::config::BalancerSettings::default(),
            ..Default::default()
        },
        sims,
    ))
}
