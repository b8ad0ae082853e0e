//! The balancer: one OpenAI-compatible endpoint over many studios.
//!
//! - [`pool`]: workers, slots and the FIFO queue (the scheduler)
//! - [`health`]: probes, ejection and readmission
//! - [`proxy`]: the HTTP server and request forwarding with retries
//! - [`metrics`]: Prometheus text and the JSON stats snapshot
//!
//! A dead studio costs at most one connect timeout (hundreds of ms) once:
//! it is ejected at the first failure and requests move to another studio
//! before their first byte, so the pool is never slower than its healthy part.

mod health;
pub mod metrics;
pub mod pool;
mod proxy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{BalancerSettings, Config, Worker};
use pool::{Pool, QueueSettings, State, WorkerEntry};

pub use metrics::{Snapshot, WorkerStats};

/// Response header naming the worker that served a request.
pub const WORKER_HEADER: &str = "x-baton-worker";

/// Default listen address: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8421";

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
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// State shared by the server, the probers and every request.
pub(crate) struct Shared {
    pool: Arc<Pool>,
    client: RwLock<reqwest::Client>,
    settings: RwLock<BalancerSettings>,
    metrics: metrics::Metrics,
    api_key: Option<String>,
    started: Instant,
    /// Notified whenever a worker becomes ready.
    ready: Notify,
    probers: Mutex<HashMap<usize, CancellationToken>>,
    shutdown: CancellationToken,
}

impl Shared {
    fn settings(&self) -> BalancerSettings {
        self.settings.read().expect("settings lock").clone()
    }

    fn client(&self) -> reqwest::Client {
        self.client.read().expect("client lock").clone()
    }

    fn with_auth(&self, rb: reqwest::RequestBuilder, w: &WorkerEntry) -> reqwest::RequestBuilder {
        match &w.auth {
            Some(k) => rb.bearer_auth(k),
            None => rb,
        }
    }

    fn start_worker(self: &Arc<Self>, w: Arc<WorkerEntry>) {
        let stop = self.shutdown.child_token();
        self.probers
            .lock()
            .expect("probers lock")
            .insert(Arc::as_ptr(&w) as usize, stop.clone());
        self.pool.add(w.clone());
        tokio::spawn(health::run(self.clone(), w, stop));
    }

    fn remove_worker(&self, w: &Arc<WorkerEntry>) {
        w.set_state(State::Removed);
        if let Some(t) = self
            .probers
            .lock()
            .expect("probers lock")
            .remove(&(Arc::as_ptr(w) as usize))
        {
            t.cancel();
        }
        // Waiters only this worker could serve get a clear error now.
        self.pool.dispatch();
        self.pool.prune();
    }
}

/// Time a client has to send its request head; slow-loris connections that
/// trickle headers are closed after it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request head accepted (answered with 431 beyond it).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Accept loop: our own instead of `axum::serve` so that request heads have
/// a read timeout and a size limit, which `axum::serve` does not set.
async fn serve(listener: TcpListener, app: axum::Router, stop: CancellationToken) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small SSE chunks must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let conn = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(app.clone()),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    // Finish what is in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

fn build_client(s: &BalancerSettings) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .connect_timeout(s.connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(60))
        .http1_only()
        .no_proxy()
        // Retrying is the balancer's own job (on another worker, before the
        // first byte); a proxy never follows redirects.
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .build()
        .map_err(|e| Error::Client(e.to_string()))
}

fn queue_settings(s: &BalancerSettings) -> QueueSettings {
    QueueSettings {
        limit: s.queue_limit,
        timeout: s.queue_timeout,
        strategy: s.strategy,
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
        let settings = config.balancer.clone();
        let addr = listen
            .or(settings.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        if !addr.ip().is_loopback() && api_key.is_none() {
            return Err(Error::NeedsApiKey(addr));
        }
        let entries = resolve_workers(config)?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            pool: Pool::new(queue_settings(&settings)),
            client: RwLock::new(build_client(&settings)?),
            settings: RwLock::new(settings),
            metrics: metrics::Metrics::default(),
            api_key,
            started: Instant::now(),
            ready: Notify::new(),
            probers: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
        });
        for w in entries {
            shared.start_worker(Arc::new(w));
        }
        let app = proxy::router(shared.clone());
        let stop = shared.shutdown.clone();
        let task = tokio::spawn(serve(listener, app, stop));
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
            .pool
            .workers()
            .iter()
            .filter(|w| w.state() != State::Removed)
            .count();
        self.wait_ready_count(all.max(1), timeout).await
    }

    async fn wait_ready_count(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the notification before looking, so none is missed.
            let notified = self.shared.ready.notified();
            if self.ready_workers() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.ready_workers() >= n;
            }
        }
    }

    pub fn ready_workers(&self) -> usize {
        self.shared
            .pool
            .workers()
            .iter()
            .filter(|w| w.state() == State::Ready)
            .count()
    }

    /// Per-worker statistics, as served at `GET /stats`.
    pub fn stats(&self) -> Snapshot {
        metrics::snapshot(&self.shared.pool, self.shared.started.elapsed())
    }

    /// Apply a new configuration without dropping requests: new workers
    /// start probing, removed ones drain, changed ones are replaced (the
    /// old entry drains). Settings apply to new requests.
    pub fn reload(&self, config: &Config) -> Result<ReloadSummary, Error> {
        let entries = resolve_workers(config)?;
        let s = &self.shared;
        let settings = config.balancer.clone();
        {
            let old = s.settings();
            if old.connect_timeout != settings.connect_timeout {
                *s.client.write().expect("client lock") = build_client(&settings)?;
            }
        }
        s.pool.set_settings(queue_settings(&settings));
        *s.settings.write().expect("settings lock") = settings;

        let current: Vec<Arc<WorkerEntry>> = s
            .pool
            .workers()
            .into_iter()
            .filter(|w| w.state() != State::Removed)
            .collect();
        let mut summary = ReloadSummary::default();
        for w in &current {
            match entries.iter().find(|e| e.cfg.id == w.cfg.id) {
                None => {
                    summary.removed.push(w.cfg.id.clone());
                    s.remove_worker(w);
                }
                Some(e) if e.cfg != w.cfg || e.auth != w.auth => {
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
