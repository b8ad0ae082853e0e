//! The engine: one object that owns the workers file, the balancer, the
//! store and the running jobs, and publishes one stream of typed events.
//!
//! Data flows one way: the workers file → the engine → events → the CLI's
//! progress bars, the control API (and through it the dashboard) and the
//! menu-bar tray. Every one of them is a subscriber of [`Engine::subscribe`];
//! none polls.
//!
//! - `events`: the event types and the bus (with replay for reconnects)
//! - `jobs`: preflight, discover, bench and batch as cancellable jobs
//! - `run`: what each job does, reporting through the bus
//! - `live`: live figures and their one-minute history
//! - `watch`: studios' state changes and live figures onto the bus
//! - `workers`: editing the workers file (validated, atomic, hot-reloaded)
//! - `view`: what the UI is shown (the balancer, studios, all of it at once)
//! - `simulated`: the built-in simulated pool
//! - `error`: why the engine could not do something, and the fix
//!
//! This file is one concept at ~620 lines: the engine object itself
//! (opening, the balancer's life, reloads); its parts live beside it.

mod error;
pub mod events;
pub mod jobs;
pub mod live;
mod models;
mod run;
mod simulated;
mod view;
mod watch;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::balancer::{self, Balancer};
use crate::config::Config;
use crate::preflight::Report;
use crate::sim::SimHandle;
use crate::store::Store;
use events::{Bus, Event, Numbered};
use jobs::{Job, JobId, Jobs};
pub use live::LiveViewer;
use live::{Live, LiveStats};

pub use error::EngineError;
pub use models::{ModelAction, ModelOutcome, ModelStep, ModelsView, PoolModel, StudioModels};
pub use run::{BatchRequest, BenchRequest, DiscoverRequest};
use simulated::simulated_pool;
pub use simulated::{DEMO_MODELS, SimProfile, demo_studio, uniform_studio};
pub use view::{BalancerStatus, ConfigInfo, EngineState, WorkerStatus, WorkerView};

/// How many simulated studios stand in when there is no workers file.
pub const DEFAULT_SIMULATED: usize = 3;

/// What to do when the workers file does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenMissing {
    /// Serve built-in simulated studios (the CLI's `serve`, `bench`,
    /// `dashboard`): everything can be tried at once.
    Simulate,
    /// Start empty and let the user choose (the menu-bar app's first run).
    FirstRun,
}

/// How to open the engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// The workers file; `None` = the platform default.
    pub config_path: Option<PathBuf>,
    pub when_missing: WhenMissing,
    /// Ignore any file and serve this many simulated studios.
    pub simulate: Option<usize>,
    /// The history database; `None` = the platform default.
    pub store_path: Option<PathBuf>,
    /// Where the balancer listens; `None` = the file's, else 127.0.0.1:8421.
    pub listen: Option<SocketAddr>,
    /// Load no workers at all (a command that needs none, like discover).
    pub no_pool: bool,
    /// How the built-in simulated studios look.
    pub sim_profile: SimProfile,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config_path: None,
            when_missing: WhenMissing::Simulate,
            simulate: None,
            store_path: None,
            listen: None,
            no_pool: false,
            sim_profile: SimProfile::Mixed,
        }
    }
}

/// Where the pool's workers come from right now.
enum Source {
    File(PathBuf),
    Simulated {
        /// The file that would be written if the user adds a studio.
        path: Option<PathBuf>,
    },
    FirstRun(PathBuf),
}

struct Pool {
    config: Config,
    source: Source,
    /// Running simulated studios (while `source` is `Simulated`).
    sims: Vec<SimHandle>,
}

struct Running {
    balancer: Balancer,
    watcher: CancellationToken,
}

pub(crate) struct Inner {
    pool: Mutex<Pool>,
    running: tokio::sync::Mutex<Option<Running>>,
    status: Mutex<BalancerStatus>,
    store_path: PathBuf,
    bus: Arc<Bus>,
    jobs: Arc<Jobs>,
    live: Live,
    /// Serializes edits of the workers file.
    edit: tokio::sync::Mutex<()>,
    last_preflight: Mutex<Option<Report>>,
    /// The keychain denied the balancer's key once: not asked again (each
    /// read would prompt again) until Baton is opened again.
    key_denied: std::sync::atomic::AtomicBool,
}

/// The engine. Cheap to clone (all clones share one engine).
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Load the workers file (or start simulated studios, or start empty),
    /// open the store. The balancer is not started: see [`Engine::start_balancer`].
    pub async fn open(opts: Options) -> Result<Engine, EngineError> {
        let path = match &opts.config_path {
            Some(p) => Some(p.clone()),
            None => crate::config::default_path(),
        };
        let profile = opts.sim_profile;
        let pool = match (opts.simulate, &path) {
            _ if opts.no_pool => empty_pool(path.clone().unwrap_or_default()),
            (Some(n), _) => simulated_pool(n.max(1), path.clone(), profile).await?,
            (None, Some(p)) if p.exists() => Pool {
                config: Config::load(p)?,
                source: Source::File(p.clone()),
                sims: Vec::new(),
            },
            (None, p) => match (opts.when_missing, p) {
                // `-c new.json` names a pool to create: start empty.
                (_, Some(p)) if opts.config_path.is_some() => empty_pool(p.clone()),
                (WhenMissing::FirstRun, Some(p)) => empty_pool(p.clone()),
                _ => simulated_pool(DEFAULT_SIMULATED, p.clone(), profile).await?,
            },
        };
        let store_path = match opts.store_path {
            Some(p) => p,
            None => crate::store::default_path().ok_or_else(|| {
                EngineError::Other("no home directory for the history database".into())
            })?,
        };
        let listen = opts
            .listen
            .or(pool.config.balancer.listen)
            .unwrap_or(balancer::DEFAULT_LISTEN);
        let key = crate::secrets::balancer_key();
        if let Err(e) = &key {
            tracing::warn!("{e}");
        }
        let last_preflight = Store::open(&store_path)
            .ok()
            .and_then(|s| s.last_preflight().ok().flatten())
            .or_else(crate::preflight::load_last);
        Ok(Engine {
            inner: Arc::new(Inner {
                pool: Mutex::new(pool),
                running: tokio::sync::Mutex::new(None),
                status: Mutex::new(BalancerStatus {
                    running: false,
                    url: None,
                    listen,
                    lan_exposed: !listen.ip().is_loopback(),
                    api_key_set: matches!(key, Ok(Some(_))),
                    error: None,
                }),
                store_path,
                bus: Arc::new(Bus::new()),
                jobs: Arc::new(Jobs::new()),
                live: Live::new(),
                edit: tokio::sync::Mutex::new(()),
                last_preflight: Mutex::new(last_preflight),
                key_denied: std::sync::atomic::AtomicBool::new(matches!(
                    key,
                    Err(crate::secrets::SecretError::Denied(_))
                )),
            }),
        })
    }

    /// Every event from now on; with `after`, also the kept ones after that
    /// sequence number (`None` in the pair when too many were missed).
    pub fn subscribe(
        &self,
        after: Option<u64>,
    ) -> (
        tokio::sync::broadcast::Receiver<Numbered>,
        Option<Vec<Numbered>>,
    ) {
        self.inner.bus.subscribe(after)
    }

    pub fn last_event_seq(&self) -> u64 {
        self.inner.bus.last_seq()
    }

    /// The loaded configuration.
    pub fn config(&self) -> Config {
        self.inner.pool.lock().expect("pool lock").config.clone()
    }

    pub fn config_info(&self) -> ConfigInfo {
        let p = self.inner.pool.lock().expect("pool lock");
        match &p.source {
            Source::File(path) => ConfigInfo {
                path: Some(path.clone()),
                simulated: false,
                first_run: false,
            },
            Source::Simulated { path } => ConfigInfo {
                path: path.clone(),
                simulated: true,
                first_run: false,
            },
            Source::FirstRun(path) => ConfigInfo {
                path: Some(path.clone()),
                simulated: false,
                first_run: true,
            },
        }
    }

    pub fn store_path(&self) -> &std::path::Path {
        &self.inner.store_path
    }

    pub fn store(&self) -> Result<Store, EngineError> {
        Ok(Store::open(&self.inner.store_path)?)
    }

    /// The capacity measured for the pool as it is now (the headroom
    /// gauge's denominator), if one is on record.
    pub fn capacity_on_record(
        &self,
    ) -> Result<Option<crate::bench::capacity::record::Record>, EngineError> {
        Ok(crate::bench::capacity::record::on_record(
            &self.store()?,
            &self.config(),
        )?)
    }

    pub fn balancer_status(&self) -> BalancerStatus {
        self.inner.status.lock().expect("status lock").clone()
    }

    /// Everything at once, for `GET /api/state`.
    pub async fn state(&self) -> EngineState {
        EngineState {
            version: env!("BATON_VERSION").to_string(),
            balancer: self.balancer_status(),
            config: self.config_info(),
            workers: self.workers().await,
            stats: self.inner.live.current(),
            last_preflight: self.inner.last_preflight.lock().expect("lock").clone(),
            jobs: self.inner.jobs.list(),
        }
    }

    /// Live figures are sampled and pushed while the returned guard lives
    /// (hold one per open view that shows them).
    pub fn view_live(&self) -> LiveViewer {
        self.inner.live.view()
    }

    /// Live figures of the last minute, one sample a second (while viewed).
    pub fn stats_history(&self) -> Vec<LiveStats> {
        self.inner.live.history()
    }

    /// The workers with their live state.
    pub async fn workers(&self) -> Vec<WorkerView> {
        let stats = match &*self.inner.running.lock().await {
            Some(r) => r.balancer.stats().workers,
            None => Vec::new(),
        };
        let config = self.config();
        config
            .workers
            .iter()
            .map(|w| {
                let live = stats.iter().find(|s| s.id == w.id).cloned();
                let status = match (&live, w.enabled) {
                    (_, false) => WorkerStatus::Disabled,
                    (Some(l), true) => l.state.into(),
                    (None, true) => WorkerStatus::Stopped,
                };
                WorkerView {
                    id: w.id.clone(),
                    host: w.host.clone(),
                    port: w.port,
                    kind: w.kind,
                    model: w.model.clone(),
                    max_concurrent_requests: w.max_concurrent_requests,
                    enabled: w.enabled,
                    weight: w.weight,
                    members: w.members.clone(),
                    has_api_key: w.api_key.is_some(),
                    status,
                    live,
                }
            })
            .collect()
    }

    /// Start the balancer on its listen address. Starting a running one
    /// changes nothing.
    pub async fn start_balancer(&self) -> Result<BalancerStatus, EngineError> {
        let mut running = self.inner.running.lock().await;
        if running.is_some() {
            return Ok(self.balancer_status());
        }
        let config = self.config();
        let listen = self.balancer_status().listen;
        let key = match self.api_key() {
            Ok(k) => k,
            // Denied: beyond loopback that is the error (not "needs an API
            // key": there is one); on loopback no key is needed.
            Err(e) if !listen.ip().is_loopback() => {
                self.set_status(|s| s.error = Some(e.to_string()));
                return Err(e.into());
            }
            Err(e) => {
                tracing::warn!("{e}; the balancer serves on loopback without the key");
                None
            }
        };
        let started =
            Balancer::start_remembering(&config, Some(listen), key.clone(), &self.inner.store_path)
                .await;
        let balancer = match started {
            Ok(b) => b,
            Err(e) => {
                self.set_status(|s| s.error = Some(e.to_string()));
                return Err(e.into());
            }
        };
        let watcher = CancellationToken::new();
        tokio::spawn(watch::watch(
            self.inner.clone(),
            balancer.subscribe_transitions(),
            balancer.stats_source(),
            watcher.clone(),
        ));
        let addr = balancer.addr();
        let url = balancer.url();
        *running = Some(Running { balancer, watcher });
        drop(running);
        self.set_status(|s| {
            s.running = true;
            s.url = Some(url);
            s.listen = addr;
            s.lan_exposed = !addr.ip().is_loopback();
            s.api_key_set = key.is_some();
            s.error = None;
        });
        tracing::debug!(%addr, "balancer started");
        Ok(self.balancer_status())
    }

    /// The balancer's API key: `BATON_API_KEY`, else the keychain (none
    /// when the keychain is unusable). Denied access is an error, and
    /// after one denial the keychain is not asked again.
    fn api_key(&self) -> Result<Option<String>, crate::secrets::SecretError> {
        use std::sync::atomic::Ordering;
        let denied =
            || crate::secrets::SecretError::Denied(crate::secrets::Own::BalancerKey.entry().into());
        if self.inner.key_denied.load(Ordering::Relaxed) {
            return Err(denied());
        }
        let key = crate::secrets::balancer_key();
        if matches!(key, Err(crate::secrets::SecretError::Denied(_))) {
            self.inner.key_denied.store(true, Ordering::Relaxed);
        }
        key
    }

    /// Stop the balancer: it takes nothing new; answers in flight get a
    /// bounded time to finish.
    pub async fn stop_balancer(&self) -> BalancerStatus {
        let running = self.inner.running.lock().await.take();
        if let Some(r) = running {
            r.watcher.cancel();
            r.balancer.shutdown().await;
            self.inner.live.reset();
            tracing::debug!("balancer stopped");
        }
        self.set_status(|s| {
            s.running = false;
            s.url = None;
        });
        self.publish_workers().await;
        self.balancer_status()
    }

    /// Listen somewhere else (restarting a running balancer there). A
    /// non-loopback address needs the API key.
    pub async fn set_listen(&self, addr: SocketAddr) -> Result<BalancerStatus, EngineError> {
        if !addr.ip().is_loopback() && self.api_key()?.is_none() {
            return Err(balancer::Error::NeedsApiKey(addr).into());
        }
        let was_running = self.balancer_status().running;
        if was_running {
            self.stop_balancer().await;
        }
        self.set_status(|s| {
            s.listen = addr;
            s.lan_exposed = !addr.ip().is_loopback();
        });
        if was_running {
            self.start_balancer().await
        } else {
            Ok(self.balancer_status())
        }
    }

    /// Take a studio out of rotation without cancelling anything (`false`
    /// puts it back). Needs the balancer running.
    pub async fn drain(&self, id: &str, on: bool) -> Result<(), EngineError> {
        if !self.config().workers.iter().any(|w| w.id == id) {
            return Err(EngineError::UnknownWorker(id.to_string()));
        }
        match &*self.inner.running.lock().await {
            Some(r) => r.balancer.drain(id, on)?,
            None => {
                return Err(EngineError::Invalid(
                    "the balancer is not running, so there is nothing to drain\n  fix: start the balancer first".into(),
                ));
            }
        }
        self.publish_workers().await;
        Ok(())
    }

    /// Start simulated studios and serve them (the first run's "Try with
    /// simulated studios").
    /// Never over an existing workers file: that is not a first run, and
    /// serving simulated studios in its place invites losing it.
    pub async fn use_simulated(&self, count: usize) -> Result<BalancerStatus, EngineError> {
        let _edit = self.inner.edit.lock().await;
        let path = self.config_info().path;
        if let Some(p) = &path
            && p.symlink_metadata().is_ok()
        {
            return Err(EngineError::FileExists {
                path: p.clone(),
                workers: Config::load(p).ok().map(|c| c.workers.len()),
            });
        }
        let pool = simulated_pool(count.clamp(1, 16), path, SimProfile::Mixed).await?;
        self.replace_pool(pool, true).await
    }

    /// Read the workers file again and apply it to the running balancer
    /// without dropping requests (SIGHUP). A broken file changes nothing.
    pub async fn reload_file(&self) -> Result<crate::balancer::ReloadSummary, EngineError> {
        let _edit = self.inner.edit.lock().await;
        let path = match &self.inner.pool.lock().expect("pool lock").source {
            Source::File(p) => p.clone(),
            _ => {
                return Err(EngineError::Invalid(
                    "not serving a workers file (simulated studios): nothing to reload".into(),
                ));
            }
        };
        let config = Config::load(&path)?;
        let summary = match &*self.inner.running.lock().await {
            Some(r) => r.balancer.reload(&config)?,
            None => Default::default(),
        };
        self.inner.pool.lock().expect("pool lock").config = config;
        self.publish_workers().await;
        Ok(summary)
    }

    /// The jobs, newest first.
    pub fn jobs(&self) -> Vec<Job> {
        self.inner.jobs.list()
    }

    pub fn job(&self, id: JobId) -> Result<Job, EngineError> {
        self.inner.jobs.get(id).ok_or(EngineError::UnknownJob(id))
    }

    pub fn cancel(&self, id: JobId) -> Result<Job, EngineError> {
        if !self.inner.jobs.cancel(id) {
            return Err(EngineError::UnknownJob(id));
        }
        self.job(id)
    }

    /// Wait for a job to end.
    pub async fn wait(&self, id: JobId) -> Result<Job, EngineError> {
        self.inner
            .jobs
            .wait(id)
            .await
            .ok_or(EngineError::UnknownJob(id))
    }

    pub fn last_preflight(&self) -> Option<Report> {
        self.inner.last_preflight.lock().expect("lock").clone()
    }

    /// Stop everything: jobs are cancelled, the balancer stops cleanly.
    pub async fn shutdown(&self) {
        for j in self.jobs() {
            if j.status == jobs::JobStatus::Running {
                self.inner.jobs.cancel(j.id);
            }
        }
        self.stop_balancer().await;
        self.inner.pool.lock().expect("pool lock").sims.clear();
    }

    fn set_status(&self, f: impl FnOnce(&mut BalancerStatus)) {
        let s = {
            let mut s = self.inner.status.lock().expect("status lock");
            f(&mut s);
            s.clone()
        };
        self.inner.bus.publish(Event::Balancer(s));
    }

    async fn publish_workers(&self) {
        let workers = self.workers().await;
        self.inner.bus.publish(Event::Config { workers });
    }

    /// Swap the pool (after an edit or a switch to simulated studios),
    /// reloading a running balancer without dropping requests.
    async fn replace_pool(&self, pool: Pool, start: bool) -> Result<BalancerStatus, EngineError> {
        let config = pool.config.clone();
        let old_sims = {
            let mut p = self.inner.pool.lock().expect("pool lock");
            let old = std::mem::replace(&mut *p, pool);
            old.sims
        };
        let running = {
            let r = self.inner.running.lock().await;
            match &*r {
                Some(r) => {
                    r.balancer.reload(&config)?;
                    true
                }
                None => false,
            }
        };
        // Simulated studios that left the pool finish what they have first.
        if !old_sims.is_empty() {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                drop(old_sims);
            });
        }
        self.publish_workers().await;
        if running || !start {
            Ok(self.balancer_status())
        } else {
            self.start_balancer().await
        }
    }
}

fn empty_pool(path: PathBuf) -> Pool {
    Pool {
        config: Config {
            workers: Vec::new(),
            balancer: Default::default(),
            ..Default::default()
        },
        source: Source::FirstRun(path),
        sims: Vec::new(),
    }
}
