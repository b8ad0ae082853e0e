//! Simulated studios and workers-file entries: what a studio is like
//! ([`sim_cfg`] and the `with_*` adjustments), the one way to start them
//! ([`start_sim_at`], with [`start_sim`] and [`start_sims`] for loopback), and
//! the entries that point Baton at them.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use baton::config::{BalancerSettings, Config, Slots, Worker};
use baton::sim::{self, Faults, SimConfig, SimHandle};
use baton::studio::StudioKind;

/// A studio with `slots` slots, `ttft_ms` to the first token, then `tps`
/// tokens per second; everything else as [`SimConfig::default`].
pub fn sim_cfg(slots: usize, ttft_ms: u64, tps: f64) -> SimConfig {
    SimConfig {
        slots,
        ttft: Duration::from_millis(ttft_ms),
        tokens_per_second: tps,
        ..SimConfig::default()
    }
}

/// Adjustments to a [`SimConfig`], chained: `sim_cfg(2, 20, 400.0).with_seed(3)`.
pub trait SimCfgExt: Sized {
    fn with_seed(self, seed: u64) -> Self;
    fn with_kind(self, kind: StudioKind) -> Self;
    /// The models it serves (the first is its default).
    fn with_models(self, models: &[&str]) -> Self;
    fn with_faults(self, faults: Faults) -> Self;
}

impl SimCfgExt for SimConfig {
    fn with_seed(self, seed: u64) -> Self {
        SimConfig { seed, ..self }
    }

    fn with_kind(self, kind: StudioKind) -> Self {
        SimConfig { kind, ..self }
    }

    fn with_models(self, models: &[&str]) -> Self {
        SimConfig {
            models: models.iter().map(|m| m.to_string()).collect(),
            ..self
        }
    }

    fn with_faults(self, faults: Faults) -> Self {
        SimConfig { faults, ..self }
    }
}

/// Where a simulated studio listens.
pub enum Place {
    /// This address (port 0: a free one).
    Addr(SocketAddr),
    /// A listener made elsewhere, e.g. inside a network namespace
    /// ([`super::netlab::Host::listen`]).
    Listener(std::net::TcpListener),
}

impl From<SocketAddr> for Place {
    fn from(a: SocketAddr) -> Place {
        Place::Addr(a)
    }
}

impl From<([u8; 4], u16)> for Place {
    fn from((ip, port): ([u8; 4], u16)) -> Place {
        Place::Addr(SocketAddr::from((ip, port)))
    }
}

impl From<std::net::TcpListener> for Place {
    fn from(l: std::net::TcpListener) -> Place {
        Place::Listener(l)
    }
}

/// Start one simulated studio at `place`: the one way tests and benches
/// start them.
pub async fn start_sim_at(place: impl Into<Place>, cfg: SimConfig) -> SimHandle {
    match place.into() {
        Place::Addr(a) => sim::start(a, cfg)
            .await
            .unwrap_or_else(|e| panic!("a simulated studio on {a}: {e}")),
        Place::Listener(l) => sim::start_on(l, cfg)
            .await
            .unwrap_or_else(|e| panic!("a simulated studio on a given listener: {e}")),
    }
}

/// One simulated studio on 127.0.0.1, on a port the OS picks.
pub async fn start_sim(cfg: SimConfig) -> SimHandle {
    start_sim_at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), cfg).await
}

/// One simulated studio per config on 127.0.0.1, each on a port the OS picks.
pub async fn start_sims(cfgs: impl IntoIterator<Item = SimConfig>) -> Vec<SimHandle> {
    let mut handles = Vec::new();
    for c in cfgs {
        handles.push(start_sim(c).await);
    }
    handles
}

/// The workers-file entry for a running simulated studio.
pub fn worker_for(id: &str, sim: &SimHandle) -> Worker {
    sim::worker_for(id, sim)
}

/// The workers-file entries for `sims`, the i-th named `name(i)`.
pub fn workers_for(sims: &[SimHandle], name: impl Fn(usize) -> String) -> Vec<Worker> {
    sims.iter()
        .enumerate()
        .map(|(i, s)| worker_for(&name(i), s))
        .collect()
}

/// A workers file over `sims` (`studio-1`, `studio-2`, ...) with the
/// default settings, as a user would write it.
pub fn pool(sims: &[SimHandle]) -> Config {
    Config {
        workers: workers_for(sims, |i| format!("studio-{}", i + 1)),
        balancer: BalancerSettings::default(),
        ..Default::default()
    }
}

/// A hand-written entry for whatever serves at `host:port`: an LM Studio
/// with 4 slots serving the simulated studios' model. Change the rest with
/// struct update: `Worker { kind, ..worker("a", "127.0.0.1", 1234) }`.
pub fn worker(id: &str, host: &str, port: u16) -> Worker {
    Worker {
        id: id.to_string(),
        host: host.to_string(),
        port,
        kind: StudioKind::LmStudio,
        model: sim::DEFAULT_MODEL.to_string(),
        max_concurrent_requests: Slots::Max(4),
        enabled: true,
        weight: 1.0,
        api_key: None,
        members: Vec::new(),
    }
}
