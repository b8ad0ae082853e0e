//! A lab: studios and Baton's balancer in front of them, every worker
//! ready. [`Lab::builder`] says which studios (simulated ones from configs,
//! each in a network namespace of its own, or real llama.cpp servers) and
//! where the balancer runs: in this process ([`LabBuilder::start`]) or as
//! `baton serve` ([`LabBuilder::serve`]). The two halves are there on their
//! own too, for studios shared by several balancers: [`in_process`] and
//! [`Served`].

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton::balancer::{Balancer, WorkerStats};
use baton::config::{Aliases, BalancerSettings, Config, Fallbacks};
use baton::sim::{SimConfig, SimHandle};
use serde_json::Value;

use super::cmd::{BatonCmd, BatonProcess};
use super::netlab::Host;
use super::real::{Flavor, Kit, LlamaServer};
use super::studios::{start_sim, start_sim_at, worker_for};

/// Settings tuned for tests: fast probes, short timeouts, a free port.
pub fn test_settings() -> BalancerSettings {
    BalancerSettings {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        connect_timeout: Duration::from_millis(300),
        first_token_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(5),
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Studios plus a balancer in front of them. `B` is where the balancer
/// runs: [`Balancer`] in this process, [`Served`] as a child process.
pub struct Lab<B = Balancer> {
    pub sims: Vec<SimHandle>,
    /// The namespaces the studios live in, one each (`in_namespaces`).
    pub hosts: Vec<Host>,
    /// Real servers (`real_servers`).
    pub servers: Vec<LlamaServer>,
    pub balancer: B,
    /// The workers file the balancer was given.
    pub config: Config,
}

/// What a lab is made of; see [`Lab::builder`].
pub struct LabBuilder {
    sims: Vec<SimConfig>,
    ids: Vec<String>,
    settings: BalancerSettings,
    key: Option<String>,
    aliases: Aliases,
    fallbacks: Fallbacks,
    namespaces: bool,
    real: Option<(Kit, Flavor, usize)>,
    ready_within: Duration,
}

impl Lab {
    /// Simulated studios `s0`, `s1`, ... with [`test_settings`] unless told
    /// otherwise; the balancer in this process unless `serve`d.
    pub fn builder() -> LabBuilder {
        LabBuilder {
            sims: Vec::new(),
            ids: Vec::new(),
            settings: test_settings(),
            key: None,
            aliases: Aliases::default(),
            fallbacks: Fallbacks::default(),
            namespaces: false,
            real: None,
            ready_within: Duration::from_secs(5),
        }
    }

    /// The builder's common case: one studio per config, the balancer in
    /// this process with `settings`.
    pub async fn start(sims: Vec<SimConfig>, settings: BalancerSettings) -> Lab {
        Lab::builder()
            .studios(sims)
            .settings(settings)
            .start()
            .await
    }

    pub async fn wait_all_ready(&self) {
        let ok = self.balancer.wait_all_ready(Duration::from_secs(5)).await;
        assert!(ok, "workers not ready: {:?}", self.balancer.stats());
    }

    pub fn worker(&self, id: &str) -> WorkerStats {
        self.balancer
            .stats()
            .workers
            .into_iter()
            .find(|w| w.id == id)
            .expect("worker in stats")
    }
}

impl LabBuilder {
    /// One simulated studio per config (added after any already given).
    pub fn studios(mut self, cfgs: impl IntoIterator<Item = SimConfig>) -> LabBuilder {
        self.sims.extend(cfgs);
        self
    }

    pub fn studio(self, cfg: SimConfig) -> LabBuilder {
        self.studios([cfg])
    }

    /// The workers' ids, in order (default `s0`, `s1`, ...; real servers
    /// `llama0`, `llama1`, ...).
    pub fn ids<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> LabBuilder {
        self.ids = ids.into_iter().map(Into::into).collect();
        self
    }

    /// The balancer's settings (default [`test_settings`]). Without a
    /// `listen` address it takes a free port on 127.0.0.1.
    pub fn settings(mut self, settings: BalancerSettings) -> LabBuilder {
        self.settings = settings;
        self
    }

    /// The key clients must send.
    pub fn key(mut self, key: Option<String>) -> LabBuilder {
        self.key = key;
        self
    }

    pub fn aliases(mut self, aliases: Aliases) -> LabBuilder {
        self.aliases = aliases;
        self
    }

    pub fn fallbacks(mut self, fallbacks: Fallbacks) -> LabBuilder {
        self.fallbacks = fallbacks;
        self
    }

    /// Each studio in a network namespace of its own (a [`Host`], port
    /// 1234), so its network can fail for real. Needs root: check
    /// [`super::netlab::unavailable`] first.
    pub fn in_namespaces(mut self) -> LabBuilder {
        self.namespaces = true;
        self
    }

    /// `n` real servers of `flavor` instead of simulated studios, with
    /// production settings, given 30 s to be ready behind Baton.
    pub fn real_servers(mut self, kit: &Kit, flavor: Flavor, n: usize) -> LabBuilder {
        self.real = Some((kit.clone(), flavor, n));
        self.settings = BalancerSettings {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..Default::default()
        };
        self.ready_within = Duration::from_secs(30);
        self
    }

    /// How long the workers may take to be ready (default 5 s).
    pub fn ready_within(mut self, within: Duration) -> LabBuilder {
        self.ready_within = within;
        self
    }

    /// The studios and the workers file naming them.
    async fn studios_up(&mut self) -> (Vec<SimHandle>, Vec<Host>, Vec<LlamaServer>, Config) {
        let (mut sims, mut hosts, mut servers) = (Vec::new(), Vec::new(), Vec::new());
        let mut workers = Vec::new();
        let ids = std::mem::take(&mut self.ids);
        let id = |i: usize, default: &str| {
            ids.get(i)
                .cloned()
                .unwrap_or_else(|| format!("{default}{i}"))
        };
        if let Some((kit, flavor, n)) = &self.real {
            servers = super::real::start_servers_of(kit, *flavor, *n).await;
            for (i, s) in servers.iter().enumerate() {
                workers.push(s.worker(&id(i, "llama")));
            }
        }
        for (i, cfg) in self.sims.drain(..).enumerate() {
            let sim = if self.namespaces {
                let h = Host::new().unwrap_or_else(|e| panic!("a studio host: {e}"));
                let s = start_sim_at(h.listen(1234), cfg).await;
                hosts.push(h);
                s
            } else {
                start_sim(cfg).await
            };
            workers.push(worker_for(&id(i, "s"), &sim));
            sims.push(sim);
        }
        let config = Config {
            workers,
            balancer: self.settings.clone(),
            aliases: std::mem::take(&mut self.aliases),
            fallbacks: std::mem::take(&mut self.fallbacks),
        };
        (sims, hosts, servers, config)
    }

    /// Start it all, the balancer in this process; every worker ready.
    pub async fn start(mut self) -> Lab {
        let (sims, hosts, servers, config) = self.studios_up().await;
        let balancer = in_process(&config, self.key.take(), self.ready_within).await;
        Lab {
            sims,
            hosts,
            servers,
            balancer,
            config,
        }
    }

    /// Start it all, the balancer as `baton serve` over a workers file
    /// (its RSS and CPU its own); every worker ready.
    pub async fn serve(mut self) -> Lab<Served> {
        let (sims, hosts, servers, config) = self.studios_up().await;
        let mut cmd_env = Vec::new();
        if let Some(k) = self.key.take() {
            cmd_env.push(("BATON_API_KEY", k));
        }
        let balancer = Served::start_with(&config, Stdio::null(), cmd_env);
        balancer.wait_all_ready(self.ready_within).await;
        Lab {
            sims,
            hosts,
            servers,
            balancer,
            config,
        }
    }
}

/// Where a lab's balancer answers.
pub trait Front {
    fn addr(&self) -> SocketAddr;
}

impl Front for Balancer {
    fn addr(&self) -> SocketAddr {
        Balancer::addr(self)
    }
}

impl Front for Served {
    fn addr(&self) -> SocketAddr {
        Served::addr(self)
    }
}

impl<B: Front> Lab<B> {
    /// `http://addr/v1`, the base URL for OpenAI clients.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.balancer.addr())
    }

    /// `http://addr` without `/v1` (Anthropic and Ollama clients add their
    /// own paths).
    pub fn root(&self) -> String {
        format!("http://{}", self.balancer.addr())
    }

    pub async fn chat(&self, c: &reqwest::Client, body: &Value) -> reqwest::Response {
        c.post(format!("{}/chat/completions", self.url()))
            .json(body)
            .send()
            .await
            .unwrap()
    }
}

/// Baton's balancer in this process over `config` (a free port on
/// 127.0.0.1 unless the settings name one), every worker ready within
/// `within`, else a panic with the stats.
pub async fn in_process(config: &Config, key: Option<String>, within: Duration) -> Balancer {
    let listen = config
        .balancer
        .listen
        .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let b = Balancer::start(config, Some(listen), key)
        .await
        .unwrap_or_else(|e| panic!("the balancer starts: {e}"));
    assert!(
        b.wait_all_ready(within).await,
        "workers not ready within {within:?}: {:?}",
        b.stats()
    );
    b
}

/// `baton serve` as a child process over a workers file holding `config`;
/// killed when dropped.
pub struct Served {
    process: BatonProcess,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    /// Start it (logging errors only, to `stderr`) and wait until it
    /// listens; its workers may not be ready yet.
    pub fn start(config: &Config, stderr: Stdio) -> Served {
        Served::start_with(config, stderr, Vec::new())
    }

    fn start_with(config: &Config, stderr: Stdio, env: Vec<(&str, String)>) -> Served {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("workers.json");
        std::fs::write(&file, config.to_text()).unwrap();
        let listen = config
            .balancer
            .listen
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        let mut cmd = BatonCmd::new(["serve", "-c"])
            .arg(&file)
            .args(["--listen", &listen.to_string()])
            .env("BATON_LOG", "error")
            // Its own store: what it learns of studios stays with it.
            .home(dir.path())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let mut process = cmd.spawn();
        let lines = process.stdout_until("Press Ctrl-C");
        let url = lines
            .iter()
            .find(|l| l.contains("is serving"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_else(|| panic!("baton serve said where it serves: {lines:?}"));
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches("/v1")
            .parse()
            .unwrap_or_else(|e| panic!("baton serve's address {url}: {e}"));
        Served {
            process,
            addr,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://addr{path}`.
    pub fn at(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Its resident memory, from /proc (0 where there is none).
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }

    /// `GET /stats`, or `None` when it does not answer.
    pub async fn stats(&self) -> Option<Value> {
        reqwest::get(self.at("/stats"))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Wait until every worker in `/stats` is ready; panics after `within`.
    pub async fn wait_all_ready(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            let stats = self.stats().await;
            if stats.as_ref().is_some_and(|s| {
                s["workers"]
                    .as_array()
                    .is_some_and(|w| w.iter().all(|w| w["state"] == "ready"))
            }) {
                return;
            }
            assert!(
                t0.elapsed() < within,
                "baton serve's studios not ready within {within:?}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process itself (signals, kill).
    pub fn process(&mut self) -> &mut BatonProcess {
        &mut self.process
    }
}
