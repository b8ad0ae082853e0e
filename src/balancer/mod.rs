//! The balancer: one OpenAI-compatible endpoint over many studios.
//!
//! - [`pool`]: slots and the FIFO queue (the scheduler) and its invariant
//! - `worker`: one studio's entry: configuration, counters, learned speed
//! - `state`: a studio's state, and the one place it changes (announced
//!   as typed transitions the engine follows)
//! - `memory`: each studio's learned limit and speed, kept across restarts
//! - `health`: the one policy for ejection and readmission (real traffic
//!   first, probes only while idle or stalled); `probe`: the probes
//! - `liveness`: whether a busy studio is alive, judged below HTTP
//! - `upstream`: connections to a studio (keep-alive that never outlives
//!   the studio's, stale connections retried fresh, bounded connects)
//! - `proxy`: the HTTP server and request forwarding with retries;
//!   `attempt`: one try on one studio, step by step
//! - `relay` and `answer`: streaming an answer through, and telling a
//!   complete answer from a cut one
//! - `outcome`: how an attempt on a studio ends, settled in one place for
//!   whole and streamed answers alike
//! - [`metrics`]: Prometheus text and the JSON stats snapshot
//!
//! A dead studio costs at most one connect timeout (hundreds of ms) once:
//! it is ejected at the first decisive failure and requests move to another
//! studio before their first byte, so the pool is never slower than its
//! healthy part. A busy studio is never mistaken for a dead one.

mod affinity;
mod answer;
mod attempt;
mod catalog;
mod health;
mod inventory;
mod limit;
mod liveness;
mod memory;
mod metrics;
mod origin;
mod outcome;
mod pool;
mod probe;
mod proxy;
mod relay;
mod request;
mod state;
mod upstream;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{BalancerSettings, Config, Worker};
use pool::{Pool, QueueSettings};
use worker::WorkerEntry;

pub use crate::studio::{AUTO_CEILING, health_path};
pub use inventory::{LoadError, ModelInfo, Residency, can_load, cannot_load_reason};
pub use metrics::{SlotsBasis, Snapshot, WorkerStats};
pub use state::{Failure, State, Transition};
pub use worker::Capability;

/// Response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-baton-worker";

/// Response header naming the model that served a request (as the studio
/// was asked for it: an alias's name there, or a fallback).
pub const MODEL_HEADER: &str = "x-baton-model";

/// Default listen address: loopback only.
pub use crate::config::DEFAULT_LISTEN;

/// Why the balancer could not start or reload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "refusing to listen on {0} without an API key: anyone on the network could use your studios.\n  fix: set one with `baton key set` (stored in the OS keychain) or export {env}=..., \
         or listen on 127.0.0.1",
        env = crate::secrets::BALANCER_KEY_ENV
    )]
    NeedsApiKey(SocketAddr),
    #[error(
        "cannot listen on {addr}: {source}\n  fix: pick another port with --listen, or stop whatever uses it"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("worker `{id}`: cannot read its API key: {source}")]
    WorkerKey {
        id: String,
        source: crate::secrets::SecretError,
    },
    #[error("no worker `{0}` in the running balancer")]
    UnknownWorker(String),
    #[error(
        "worker `{id}` ({host}:{port}) is this balancer's own address {addr}: requests sent to it would come back to Baton forever\n  fix: point it at the studio's own server, or move the balancer with --listen"
    )]
    SelfLoop {
        id: String,
        host: String,
        port: u16,
        addr: SocketAddr,
    },
    #[error(
        "`balancer.allowed_origins` has \"*\" but the balancer has no API key: any web page you visit could use your studios.\n  fix: set a key with `baton key set` (or export {env}=...), or list the origins you trust instead of \"*\"",
        env = crate::secrets::BALANCER_KEY_ENV
    )]
    AnyOriginNeedsApiKey,
}

/// Refuse a configuration with a worker at the balancer's own address.
fn check_self_loop(config: &Config, addr: SocketAddr) -> Result<(), Error> {
    let local: Vec<std::net::IpAddr> = if addr.ip().is_unspecified() {
        crate::netinfo::local_ipv4()
            .iter()
            .map(|n| std::net::IpAddr::V4(n.addr))
            .collect()
    } else {
        Vec::new()
    };
    match config.self_loop(addr, &local) {
        Some((_, w)) if w.enabled => Err(Error::SelfLoop {
            id: w.id.clone(),
            host: w.host.clone(),
            port: w.port,
            addr,
        }),
        _ => Ok(()),
    }
}

/// What every part of the balancer works with, and all that the health
/// policy and its probers get: the pool (whose `transition` is the only way
/// a studio's state changes), the settings of the moment, and the hop name
/// Baton's requests carry.
pub(crate) struct Core {
    pool: Arc<Pool>,
    /// Replaced whole on reload; each request takes one snapshot.
    settings: RwLock<Arc<BalancerSettings>>,
    /// `Via` value this balancer adds to what it sends studios: a request
    /// that comes back carrying it went round in a loop.
    via: axum::http::HeaderValue,
    /// Whether the probers keep their idle cadence (see `health`).
    rest: health::Rest,
}

impl Core {
    fn settings(&self) -> Arc<BalancerSettings> {
        self.settings.read().expect("settings lock").clone()
    }
}

/// State shared by the server and every request: the core, and what only
/// serving requests needs.
pub(crate) struct Shared {
    core: Arc<Core>,
    aliases: RwLock<Arc<crate::config::Aliases>>,
    fallbacks: RwLock<Arc<crate::config::Fallbacks>>,
    affinity: affinity::Affinity,
    metrics: metrics::Metrics,
    api_key: Option<String>,
    started: Instant,
    probers: Mutex<HashMap<usize, CancellationToken>>,
    shutdown: CancellationToken,
    /// What was learned of studios before, and where to keep what is
    /// learned now (none: every start learns from scratch).
    memory: Option<Arc<memory::Memory>>,
}

/// This balancer's own hop name for `Via`: random, so one Baton in front
/// of another is fine and only a request that comes back is refused.
fn hop_name() -> axum::http::HeaderValue {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
    axum::http::HeaderValue::from_str(&format!("1.1 baton-{token}")).expect("ASCII")
}

impl Shared {
    fn pool(&self) -> &Arc<Pool> {
        &self.core.pool
    }

    fn settings(&self) -> Arc<BalancerSettings> {
        self.core.settings()
    }

    fn aliases(&self) -> Arc<crate::config::Aliases> {
        self.aliases.read().expect("aliases lock").clone()
    }

    fn fallbacks(&self) -> Arc<crate::config::Fallbacks> {
        self.fallbacks.read().expect("fallbacks lock").clone()
    }

    fn start_worker(self: &Arc<Self>, w: Arc<WorkerEntry>) {
        let stop = self.shutdown.child_token();
        self.probers
            .lock()
            .expect("probers lock")
            .insert(Arc::as_ptr(&w) as usize, stop.clone());
        if let Some(m) = &self.memory {
            m.recall(&w);
        }
        self.pool().add(w.clone());
        tokio::spawn(health::run(self.core.clone(), w, stop));
    }

    fn remove_worker(&self, w: &Arc<WorkerEntry>) {
        // Waiters only this worker could serve get a clear error now (the
        // transition dispatches).
        self.pool().transition(w, state::Change::Remove);
        if let Some(t) = self
            .probers
            .lock()
            .expect("probers lock")
            .remove(&(Arc::as_ptr(w) as usize))
        {
            t.cancel();
        }
        self.pool().prune();
        self.affinity.forget(w.id());
    }
}

/// Time a client has to send its request head (and the longest a
/// keep-alive connection waits idle); slow-loris connections that trickle
/// headers are closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head accepted (answered with 431 beyond it).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Client connections served at once (4x the 1,000 streams measured in
/// flight); more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 4096;

fn queue_settings(s: &BalancerSettings) -> QueueSettings {
    QueueSettings {
        limit: s.queue_limit,
        timeout: s.queue_timeout,
        strategy: s.strategy,
        prefer_loaded: s.prefer_loaded,
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// Takes [`Snapshot`]s of a balancer's figures (for live displays).
#[derive(Clone)]
pub struct StatsSource(Arc<Shared>);

impl StatsSource {
    pub fn snapshot(&self) -> Snapshot {
        metrics::snapshot(self.0.pool(), self.0.started.elapsed())
    }
}

/// Loads and unloads models on a running balancer's studios.
#[derive(Clone)]
pub struct Models(Arc<Shared>);

impl Models {
    /// Load `model` on studio `id` through its kind's API (LM Studio's
    /// `/api/v1/models/load`, Ollama's `/api/generate` with `keep_alive`);
    /// returns how long it took, which routing learns as its load time.
    /// Both kinds answer HTTP while generating, so this may run while the
    /// studio serves.
    pub async fn load(&self, id: &str, model: &str) -> Result<Duration, LoadError> {
        let w = self.live_worker(id)?;
        inventory::load(&self.0.core, &w, model).await
    }

    /// Unload `model` from studio `id` through its kind's API.
    pub async fn unload(&self, id: &str, model: &str) -> Result<(), LoadError> {
        let w = self.live_worker(id)?;
        inventory::unload(&self.0.core, &w, model).await
    }

    fn live_worker(&self, id: &str) -> Result<Arc<WorkerEntry>, LoadError> {
        self.0
            .pool()
            .workers()
            .into_iter()
            .find(|w| w.id() == id && w.state().is_live())
            .ok_or_else(|| {
                LoadError(format!(
                    "no studio `{id}` in the running balancer\n  fix: name one of the pool's studios"
                ))
            })
    }
}

/// Holds studios still for HTTP requests of Baton's own while the balancer
/// serves: a studio that answers one request at a time must get none while
/// a request is inside it (it would wait behind the generation, or end it).
#[derive(Clone)]
pub struct Quiet(Arc<Shared>);

/// Keeps one slot of a studio, so no request is routed to it; dropping it
/// gives the slot back.
pub struct QuietHold {
    _slot: Option<pool::SlotGuard>,
}

impl Quiet {
    /// Wait until `id` may be asked over HTTP: at once when it answers
    /// HTTP while generating or takes no traffic; else until nothing is in
    /// flight there (then one of its slots is held), at most `patience`.
    pub async fn hold(&self, id: &str, patience: Duration) -> Result<QuietHold, String> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let Some(w) = self
                .0
                .pool()
                .workers()
                .into_iter()
                .find(|w| w.id() == id && w.state().is_live())
            else {
                return Ok(QuietHold { _slot: None });
            };
            if w.serves_http_concurrently() || !matches!(w.state(), State::Ready | State::Draining)
            {
                return Ok(QuietHold { _slot: None });
            }
            if let Some(slot) = self.0.pool().try_claim_idle(&w) {
                return Ok(QuietHold { _slot: Some(slot) });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "the studio was answering requests for all of {}s and takes one at a time; \
                     asking it now would wait behind them (or end one): run the preflight when it is idle",
                    patience.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A running balancer. Dropping it stops the server.
pub struct Balancer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Balancer {
    /// Start serving `config`'s enabled workers on `listen` (the config's
    /// `balancer.listen`, else [`DEFAULT_LISTEN`], when `None`). `api_key`
    /// is required for a non-loopback address.
    pub async fn start(
        config: &Config,
        listen: Option<SocketAddr>,
        api_key: Option<String>,
    ) -> Result<Balancer, Error> {
        Balancer::start_with(config, listen, api_key, None).await
    }

    /// The same, starting each known studio from what the store at `store`
    /// remembers of it (no slow start twice) and keeping there what it
    /// learns.
    pub async fn start_remembering(
        config: &Config,
        listen: Option<SocketAddr>,
        api_key: Option<String>,
        store: &std::path::Path,
    ) -> Result<Balancer, Error> {
        let memory = Arc::new(memory::Memory::open(store));
        Balancer::start_with(config, listen, api_key, Some(memory)).await
    }

    async fn start_with(
        config: &Config,
        listen: Option<SocketAddr>,
        api_key: Option<String>,
        memory: Option<Arc<memory::Memory>>,
    ) -> Result<Balancer, Error> {
        let settings = config.balancer.clone();
        let addr = listen.or(settings.listen).unwrap_or(DEFAULT_LISTEN);
        if !addr.ip().is_loopback() && api_key.is_none() {
            return Err(Error::NeedsApiKey(addr));
        }
        if addr.port() != 0 {
            check_self_loop(config, addr)?;
        }
        origin::check_settings(&settings, api_key.is_some())?;
        let entries = resolve_workers(config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        check_self_loop(config, addr)?;
        let shared = Arc::new(Shared {
            core: Arc::new(Core {
                pool: Pool::new(queue_settings(&settings)),
                settings: RwLock::new(Arc::new(settings)),
                via: hop_name(),
                rest: health::Rest::new(),
            }),
            aliases: RwLock::new(Arc::new(config.aliases.clone())),
            fallbacks: RwLock::new(Arc::new(config.fallbacks.clone())),
            affinity: affinity::Affinity::new(),
            metrics: metrics::Metrics::default(),
            api_key,
            started: Instant::now(),
            probers: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            memory,
        });
        for w in entries {
            shared.start_worker(Arc::new(w));
        }
        if let Some(m) = &shared.memory {
            tokio::spawn(memory::keep(
                m.clone(),
                shared.pool().clone(),
                shared.shutdown.clone(),
            ));
        }
        let app = proxy::router(shared.clone());
        let stop = shared.shutdown.clone();
        let task = tokio::spawn(crate::server::serve(
            listener,
            app,
            stop,
            crate::server::Limits {
                header_read_timeout: HEADER_READ_TIMEOUT,
                max_head_bytes: MAX_HEAD_BYTES,
                max_connections: MAX_CONNECTIONS,
            },
        ));
        tracing::debug!(%addr, "balancer listening");
        Ok(Balancer {
            shared,
            addr,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr/v1`, the base URL for OpenAI clients.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Wait until at least one worker is ready; false on timeout.
    pub async fn wait_ready(&self, timeout: Duration) -> bool {
        self.wait_ready_count(1, timeout).await
    }

    /// Wait until every worker is ready; false on timeout.
    pub async fn wait_all_ready(&self, timeout: Duration) -> bool {
        let all = self
            .shared
            .pool()
            .workers()
            .iter()
            .filter(|w| w.state().is_live())
            .count();
        self.wait_ready_count(all.max(1), timeout).await
    }

    async fn wait_ready_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribed before looking, so no change is missed.
        let mut changes = self.shared.pool().signal().changes();
        loop {
            if self.ready_workers() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return self.ready_workers() >= n;
            }
        }
    }

    pub fn ready_workers(&self) -> usize {
        self.shared
            .pool()
            .workers()
            .iter()
            .filter(|w| w.state() == State::Ready)
            .count()
    }

    /// Per-worker statistics, as served at `GET /stats`.
    pub fn stats(&self) -> Snapshot {
        metrics::snapshot(self.shared.pool(), self.shared.started.elapsed())
    }

    /// Apply a new configuration without dropping requests: new workers
    /// start probing, removed ones drain, changed ones are replaced (the
    /// old entry drains). Settings apply to new requests.
    pub fn reload(&self, config: &Config) -> Result<ReloadSummary, Error> {
        check_self_loop(config, self.addr)?;
        origin::check_settings(&config.balancer, self.shared.api_key.is_some())?;
        let entries = resolve_workers(config)?;
        let s = &self.shared;
        let settings = config.balancer.clone();
        s.pool().set_settings(queue_settings(&settings));
        *s.core.settings.write().expect("settings lock") = Arc::new(settings);
        *s.aliases.write().expect("aliases lock") = Arc::new(config.aliases.clone());
        *s.fallbacks.write().expect("fallbacks lock") = Arc::new(config.fallbacks.clone());

        let current: Vec<Arc<WorkerEntry>> = s
            .pool()
            .workers()
            .into_iter()
            .filter(|w| w.state().is_live())
            .collect();
        let mut summary = ReloadSummary::default();
        for w in &current {
            match entries.iter().find(|e| e.cfg.id == w.cfg.id) {
                None => {
                    summary.removed.push(w.cfg.id.clone());
                    s.remove_worker(w);
                }
                Some(e) if e.cfg != w.cfg || e.auth_header != w.auth_header => {
                    summary.changed.push(w.cfg.id.clone());
                    s.remove_worker(w);
                }
                Some(_) => summary.unchanged.push(w.cfg.id.clone()),
            }
        }
        for e in entries {
            if summary.unchanged.contains(&e.cfg.id) {
                continue;
            }
            if !summary.changed.contains(&e.cfg.id) {
                summary.added.push(e.cfg.id.clone());
            }
            s.start_worker(Arc::new(e));
        }
        tracing::info!(
            added = ?summary.added, removed = ?summary.removed, changed = ?summary.changed,
            "configuration reloaded"
        );
        Ok(summary)
    }

    /// Take a worker out of rotation without cancelling anything: it
    /// finishes what it has and takes nothing new (`false` puts it back).
    pub fn drain(&self, id: &str, on: bool) -> Result<(), Error> {
        let w = self
            .shared
            .pool()
            .workers()
            .into_iter()
            .find(|w| w.id() == id && w.state().is_live())
            .ok_or_else(|| Error::UnknownWorker(id.to_string()))?;
        // Only ready <-> draining: an ejected studio stays out either way.
        self.shared.pool().transition(&w, state::Change::Drain(on));
        Ok(())
    }

    /// A cheap handle that loads and unloads models on the studios.
    pub fn models(&self) -> Models {
        Models(self.shared.clone())
    }

    /// A cheap handle that holds studios still for Baton's own HTTP
    /// requests (preflight's checks while serving).
    pub fn quiet_handle(&self) -> Quiet {
        Quiet(self.shared.clone())
    }

    /// A cheap handle that takes snapshots of this balancer's figures.
    pub fn stats_source(&self) -> StatsSource {
        StatsSource(self.shared.clone())
    }

    /// A receiver that changes whenever a worker's state changes.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.shared.pool().signal().changes()
    }

    /// Every change of a worker's state from now on, in order (a receiver
    /// that falls far behind is told it lagged).
    pub fn subscribe_transitions(&self) -> broadcast::Receiver<Transition> {
        self.shared.pool().signal().transitions()
    }

    /// Stop accepting, let the server task end.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(t) = self.task.take() {
            // In-flight streams may last long; don't wait for them forever.
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        // The last of what was learned (a small write, once).
        if let Some(m) = &self.shared.memory {
            m.save(&self.shared.pool().workers());
        }
    }
}

/// Enabled workers with their API keys resolved.
fn resolve_workers(config: &Config) -> Result<Vec<WorkerEntry>, Error> {
    config
        .enabled_workers()
        .map(|w: &Worker| {
            let auth = match &w.api_key {
                None => None,
                Some(r) => Some(
                    crate::secrets::resolve(r).map_err(|source| Error::WorkerKey {
                        id: w.id.clone(),
                        source,
                    })?,
                ),
            };
            Ok(WorkerEntry::new(w.clone(), auth))
        })
        .collect()
}
