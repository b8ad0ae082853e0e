//! Simulated studios: an LM Studio-like server for the demo, the tests and
//! the benchmarks.
//!
//! Capacity model: `slots` generations run at once; further requests wait in
//! FIFO order (tokio's semaphore is fair), then each waits `ttft` and streams
//! at `tps` tokens per second. Faults (5xx, hang, drop mid-stream, delay,
//! refuse) can be set at start or changed at run time, through
//! [`SimHandle`] or `POST /sim/fault`.

mod api;
pub mod text;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::studio::StudioKind;

/// How a simulated studio behaves when healthy.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub kind: StudioKind,
    /// Models it serves; the first is the default for requests without one.
    pub models: Vec<String>,
    pub slots: usize,
    pub ttft: Duration,
    pub tokens_per_second: f64,
    /// Answer length when a request sets no `max_tokens`.
    pub default_tokens: u32,
    pub faults: Faults,
    /// Seed for the error-rate dice, so fault runs are reproducible.
    pub seed: u64,
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
        }
    }
}

/// The model simulated studios serve unless told otherwise (the user's).
pub const DEFAULT_MODEL: &str = "mistral-7b-instruct-v0.2";

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
}

/// Counters served at `GET /sim/stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Injected 5xx answers.
    pub errors: u64,
    /// Content tokens sent.
    pub tokens: u64,
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
    slots: Arc<Semaphore>,
    counters: Counters,
    dice: Mutex<u64>,
    listening: watch::Sender<bool>,
}

impl SimState {
    /// Roll the error-rate dice (xorshift; deterministic for a seed).
    fn roll_error(&self, rate: f64) -> bool {
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
        self.state.faults.lock().expect("faults lock").clone()
    }

    /// Replace the fault settings; takes effect for new requests.
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().expect("faults lock") = faults;
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
    if config.models.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a simulated studio needs at least one model",
        ));
    }
    if config.slots == 0 || config.tokens_per_second <= 0.0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "slots and tokens per second must be above 0",
        ));
    }
    Ok(())
}

fn serve(listener: TcpListener, config: SimConfig) -> io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let (listening, _) = watch::channel(true);
    let state = Arc::new(SimState {
        faults: Mutex::new(config.faults.clone()),
        slots: Arc::new(Semaphore::new(config.slots)),
        counters: Counters::default(),
        dice: Mutex::new(config.seed.max(1)),
        listening,
        config,
    });
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, addr, state.clone(), shutdown.clone()));
    Ok(SimHandle {
        addr,
        state,
        shutdown,
        task: Some(task),
    })
}

/// Accept connections while listening is on. Turning it off drops the
/// listener and cancels every connection of that generation.
async fn accept_loop(
    first: TcpListener,
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: CancellationToken,
) {
    let router = api::router(state.clone());
    let mut listening = state.listening.subscribe();
    let mut listener = Some(first);
    loop {
        // Wait until we should listen, then (re)bind.
        while !*listening.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listening.changed() => if r.is_err() { return },
            }
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match rebind(addr, &shutdown).await {
                Some(l) => l,
                None => return,
            },
        };
        let conns = shutdown.child_token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => { conns.cancel(); return; }
                r = listening.changed() => {
                    if r.is_err() { conns.cancel(); return; }
                    if !*listening.borrow_and_update() { conns.cancel(); break; }
                }
                r = l.accept() => match r {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let svc = TowerToHyperService::new(router.clone());
                        let token = conns.clone();
                        tokio::spawn(async move {
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = token.cancelled() => {}
                            }
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(%addr, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(l);
    }
}

async fn rebind(addr: SocketAddr, shutdown: &CancellationToken) -> Option<TcpListener> {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::debug!(%addr, "rebind failed, retrying: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
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
        let ip = u32::from(base).checked_add(i as u32).ok_or_else(|| {
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
        max_concurrent_requests: sim.config().slots as u32,
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
        },
        sims,
    ))
}
