//! LAN discovery: scan this machine's subnets (or given CIDRs) on the ports
//! local LLM servers use, browse mDNS, and fingerprint every responder by
//! what it answers.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use crate::error_code::ErrorCode;
use crate::netinfo;
use crate::studio::{self, ConnectFailure, LOCAL_NETWORK_FIX, StudioKind};

/// Ports probed by default: LM Studio, Ollama, llama.cpp / mlx_lm, vLLM, exo.
pub const DEFAULT_PORTS: [u16; 5] = [1234, 11434, 8080, 8000, 52415];

/// Largest scan without `--force`: a /22 (1,024 addresses).
pub const MAX_HOSTS: u64 = 1024;

/// What to scan and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Networks to scan; empty = this machine's own subnets.
    pub cidrs: Vec<Ipv4Net>,
    pub ports: Vec<u16>,
    pub connect_timeout: Duration,
    pub http_timeout: Duration,
    /// Connections in flight at once.
    pub concurrency: usize,
    /// Allow more than [`MAX_HOSTS`] addresses.
    pub force: bool,
    /// Also browse mDNS for advertised HTTP services.
    pub mdns: bool,
    pub mdns_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cidrs: Vec::new(),
            ports: DEFAULT_PORTS.to_vec(),
            connect_timeout: Duration::from_millis(400),
            http_timeout: Duration::from_millis(1500),
            concurrency: 512,
            force: false,
            mdns: true,
            mdns_wait: Duration::from_millis(1500),
        }
    }
}

/// A server that answered like an LLM server.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Found {
    pub host: Ipv4Addr,
    pub port: u16,
    pub kind: StudioKind,
    pub models: Vec<String>,
    /// Models LM Studio reports as loaded (others: empty).
    pub loaded: Vec<String>,
    /// TCP connect time, ms.
    pub rtt_ms: f64,
    /// Parallel slots, when the server says (llama.cpp).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slots: Option<u32>,
    /// How it was found: `scan` or `mdns`.
    pub via: String,
}

/// The outcome of a discovery run.
#[derive(Clone, Debug, Serialize)]
pub struct Discovery {
    pub scanned_networks: Vec<String>,
    pub addresses: u64,
    pub probes: u64,
    pub open_ports: u64,
    pub duration_ms: f64,
    pub found: Vec<Found>,
    /// Connects that macOS's Local Network privacy blocked (some hosts were
    /// reached, so the rest is listed anyway).
    pub denied: u64,
    /// `local_network_denied` when `denied` is not zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "{cidr} has {hosts} addresses, more than the {max} (/22) Baton scans by default\n  fix: narrow it (e.g. a /24), or pass --force to scan it anyway"
    )]
    TooLarge { cidr: Ipv4Net, hosts: u64, max: u64 },
    #[error(
        "no network to scan: this machine has no IPv4 network besides loopback and link-local\n  fix: connect to the studios' network, or name one with --cidr 192.168.1.0/24"
    )]
    NoNetworks,
    #[error(
        "macOS kept Baton off the local network: Local Network privacy blocked {denied} of {probes} connections and no host answered\n  fix: {fix}",
        fix = LOCAL_NETWORK_FIX
    )]
    LocalNetworkDenied { denied: u64, probes: u64 },
}

impl DiscoverError {
    /// The code the UI acts on, for the errors that have one.
    pub fn code(&self) -> Option<ErrorCode> {
        matches!(self, DiscoverError::LocalNetworkDenied { .. })
            .then_some(ErrorCode::LocalNetworkDenied)
    }
}

/// How one probe of the sweep ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    Open,
    Failed(ConnectFailure),
}

/// What the sweep's connects say about Local Network access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LanTally {
    /// Probes to addresses on the local network (macOS's sense).
    probes: u64,
    /// Of those, blocked by Local Network privacy.
    denied: u64,
    /// Of those, reached a host (open, refused, reset).
    answered: u64,
}

impl LanTally {
    fn add(&mut self, on_lan: bool, p: Probe) {
        if !on_lan {
            return;
        }
        self.probes += 1;
        match p {
            Probe::Failed(ConnectFailure::LocalNetworkDenied) => self.denied += 1,
            Probe::Open
            | Probe::Failed(ConnectFailure::Refused)
            | Probe::Failed(ConnectFailure::Reset) => self.answered += 1,
            Probe::Failed(_) => {}
        }
    }

    /// An error when denial is all there is to report: connects were
    /// denied, no host on the local network answered and nothing was found.
    fn verdict(&self, found: usize) -> Result<(), DiscoverError> {
        if self.denied > 0 && self.answered == 0 && found == 0 {
            return Err(DiscoverError::LocalNetworkDenied {
                denied: self.denied,
                probes: self.probes,
            });
        }
        Ok(())
    }
}

/// Progress callback: (probes done, probes total, servers found so far).
pub type Progress = Arc<dyn Fn(u64, u64, usize) + Send + Sync>;

/// The networks a scan covers: the given CIDRs, else the local subnets
/// (without loopback and link-local, which a CIDR must name explicitly).
pub fn targets(opts: &Options) -> Result<Vec<Ipv4Net>, DiscoverError> {
    let nets: Vec<Ipv4Net> = if opts.cidrs.is_empty() {
        let mut v: Vec<Ipv4Net> = netinfo::local_ipv4()
            .into_iter()
            .filter(|l| !l.is_loopback() && !l.is_link_local())
            .map(|l| l.net)
            .collect();
        v.sort();
        v.dedup();
        v
    } else {
        opts.cidrs.iter().map(|c| c.trunc()).collect()
    };
    if nets.is_empty() {
        return Err(DiscoverError::NoNetworks);
    }
    if !opts.force {
        for n in &nets {
            let hosts = 1u64 << (32 - n.prefix_len());
            if hosts > MAX_HOSTS {
                return Err(DiscoverError::TooLarge {
                    cidr: *n,
                    hosts,
                    max: MAX_HOSTS,
                });
            }
        }
    }
    Ok(nets)
}

fn hosts_of(net: &Ipv4Net) -> Vec<Ipv4Addr> {
    // /31 and /32 have no network/broadcast address to skip.
    if net.prefix_len() >= 31 {
        net.hosts()
            .chain(std::iter::once(net.network()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    } else {
        net.hosts().collect()
    }
}

/// Scan, browse and fingerprint.
pub async fn run(opts: &Options, progress: Option<Progress>) -> Result<Discovery, DiscoverError> {
    let started = Instant::now();
    let nets = targets(opts)?;
    let mut addrs: Vec<Ipv4Addr> = nets.iter().flat_map(hosts_of).collect();
    addrs.sort();
    addrs.dedup();
    let total = (addrs.len() * opts.ports.len()) as u64;
    let client = reqwest::Client::builder()
        .connect_timeout(opts.connect_timeout)
        .timeout(opts.http_timeout)
        .no_proxy()
        .build()
        .expect("HTTP client");
    let mdns = if opts.mdns {
        Some(tokio::spawn(browse_mdns(opts.mdns_wait)))
    } else {
        None
    };

    // Bounded-concurrency TCP sweep. Connect errors are kept: on macOS
    // they are how Local Network privacy shows.
    let locals = Arc::new(netinfo::local_ipv4());
    let done = Arc::new(AtomicU64::new(0));
    let found_count = Arc::new(AtomicU64::new(0));
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for ip in &addrs {
        for port in &opts.ports {
            let addr = SocketAddr::from((*ip, *port));
            let (sem, done, found_count, progress, client, locals) = (
                sem.clone(),
                done.clone(),
                found_count.clone(),
                progress.clone(),
                client.clone(),
                locals.clone(),
            );
            let timeout = opts.connect_timeout;
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await.expect("semaphore open");
                let t0 = Instant::now();
                let probe =
                    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
                    {
                        Ok(Ok(_)) => Probe::Open,
                        Ok(Err(e)) => Probe::Failed(studio::classify_with(&e, addr.ip(), &locals)),
                        Err(_) => Probe::Failed(ConnectFailure::TimedOut),
                    };
                let rtt = t0.elapsed();
                let open = probe == Probe::Open;
                let on_lan = netinfo::on_local_network(addr.ip(), &locals);
                let result = if open {
                    fingerprint(&client, addr, rtt, "scan").await
                } else {
                    None
                };
                if result.is_some() {
                    found_count.fetch_add(1, Ordering::Relaxed);
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(p) = &progress {
                    p(n, total, found_count.load(Ordering::Relaxed) as usize);
                }
                (probe, on_lan, result)
            });
        }
    }
    let mut found = Vec::new();
    let mut open_ports = 0;
    let mut lan = LanTally::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok((probe, on_lan, f)) = r {
            open_ports += u64::from(probe == Probe::Open);
            lan.add(on_lan, probe);
            found.extend(f);
        }
    }
    // mDNS answers not already found by the sweep.
    if let Some(m) = mdns
        && let Ok(services) = m.await
    {
        for addr in services {
            let SocketAddr::V4(v4) = addr else { continue };
            if found
                .iter()
                .any(|f: &Found| f.host == *v4.ip() && f.port == v4.port())
            {
                continue;
            }
            if !opts.cidrs.is_empty() && !opts.cidrs.iter().any(|c| c.contains(v4.ip())) {
                continue;
            }
            let t0 = Instant::now();
            if tokio::time::timeout(opts.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
                .is_ok_and(|r| r.is_ok())
                && let Some(f) = fingerprint(&client, addr, t0.elapsed(), "mdns").await
            {
                found.push(f);
            }
        }
    }
    found.sort_by_key(|f| (f.host, f.port));
    if lan.denied > 0 {
        tracing::info!(
            "discovery: Local Network privacy blocked {} of {} connects to the local network",
            lan.denied,
            lan.probes
        );
    }
    lan.verdict(found.len())?;
    Ok(Discovery {
        scanned_networks: nets.iter().map(|n| n.to_string()).collect(),
        addresses: addrs.len() as u64,
        probes: total,
        open_ports,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        found,
        denied: lan.denied,
        code: (lan.denied > 0).then_some(ErrorCode::LocalNetworkDenied),
    })
}

/// Addresses of services advertised over mDNS as HTTP.
async fn browse_mdns(wait: Duration) -> Vec<SocketAddr> {
    tokio::task::spawn_blocking(move || {
        let Ok(daemon) = mdns_sd::ServiceDaemon::new() else {
            tracing::debug!("mDNS unavailable on this machine");
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Ok(rx) = daemon.browse("_http._tcp.local.") {
            let end = Instant::now() + wait;
            while let Some(left) = end.checked_duration_since(Instant::now()) {
                match rx.recv_timeout(left) {
                    Ok(mdns_sd::ServiceEvent::ServiceResolved(info)) => {
                        for ip in info.get_addresses() {
                            out.push(SocketAddr::new(ip.to_ip_addr(), info.get_port()));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        let _ = daemon.shutdown();
        out
    })
    .await
    .unwrap_or_default()
}

async fn get_json(client: &reqwest::Client, url: String) -> Option<(Vec<u8>, Value)> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    let b = r.bytes().await.ok()?.to_vec();
    let v = serde_json::from_slice(&b).ok()?;
    Some((b, v))
}

async fn get_text(client: &reqwest::Client, url: String) -> Option<String> {
    let r = client.get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.text().await.ok()
}

/// Identify an open port by what it answers; `None` if it is not an LLM server.
pub async fn fingerprint(
    client: &reqwest::Client,
    addr: SocketAddr,
    rtt: Duration,
    via: &str,
) -> Option<Found> {
    let base = format!("http://{addr}");
    let IpAddr::V4(host) = addr.ip() else {
        return None;
    };
    let (lm, tags, props, version, metrics, node, models) = tokio::join!(
        get_json(client, format!("{base}/api/v0/models")),
        get_json(client, format!("{base}/api/tags")),
        get_json(client, format!("{base}/props")),
        get_json(client, format!("{base}/version")),
        get_text(client, format!("{base}/metrics")),
        get_json(client, format!("{base}/node_id")),
        get_json(client, format!("{base}/v1/models")),
    );
    let openai: Option<Vec<String>> = models
        .as_ref()
        .and_then(|(b, _)| studio::parse_openai_models(b));
    let mut f = Found {
        host,
        port: addr.port(),
        kind: StudioKind::Openai,
        models: openai.clone().unwrap_or_default(),
        loaded: Vec::new(),
        rtt_ms: rtt.as_secs_f64() * 1000.0,
        slots: None,
        via: via.to_string(),
    };
    // Most specific first. Every answer is validated: LM Studio answers 200
    // (with an error object) on paths it does not know.
    if let Some(list) = lm
        .as_ref()
        .and_then(|(b, _)| studio::parse_lmstudio_models(b))
    {
        f.kind = StudioKind::LmStudio;
        f.models = list.iter().map(|(id, _)| id.clone()).collect();
        f.loaded = list
            .iter()
            .filter(|(_, s)| s == "loaded")
            .map(|(id, _)| id.clone())
            .collect();
    } else if let Some(names) = tags
        .as_ref()
        .and_then(|(b, _)| studio::parse_ollama_tags(b))
    {
        f.kind = StudioKind::Ollama;
        f.models = names;
    } else if let Some((_, p)) = props
        .as_ref()
        .filter(|(_, v)| v.get("default_generation_settings").is_some())
    {
        f.kind = StudioKind::LlamaCpp;
        f.slots = p
            .get("total_slots")
            .and_then(Value::as_u64)
            .map(|n| n as u32);
    } else if version
        .as_ref()
        .is_some_and(|(_, v)| v.get("version").is_some())
        && metrics.as_deref().is_some_and(|m| m.contains("vllm:"))
    {
        f.kind = StudioKind::Vllm;
    } else if node
        .as_ref()
        .is_some_and(|(_, v)| v.get("node_id").is_some())
    {
        f.kind = StudioKind::Exo;
    } else if openai.is_none() {
        return None;
    }
    Some(f)
}

/// Append found servers to a workers list as entries: servers already there
/// (same host and port) or listing no model are skipped, new ids are
/// unique. Returns the ids added.
pub fn add_found(workers: &mut Vec<Value>, found: &[Found]) -> Vec<String> {
    let mut ids: BTreeSet<String> = workers
        .iter()
        .filter_map(|w| w["id"].as_str().map(str::to_string))
        .collect();
    let mut added = Vec::new();
    for f in found {
        let host = f.host.to_string();
        let exists = workers.iter().any(|w| {
            w["host"].as_str() == Some(host.as_str())
                && w["port"].as_u64() == Some(u64::from(f.port))
        });
        let Some(model) = f.loaded.first().or(f.models.first()) else {
            continue;
        };
        if exists {
            continue;
        }
        let stem = format!(
            "{}-{}",
            f.kind.as_str().replace('_', "-"),
            host.replace('.', "-")
        );
        let mut id = stem.clone();
        let mut n = 2;
        while ids.contains(&id) {
            id = format!("{stem}-{n}");
            n += 1;
        }
        ids.insert(id.clone());
        workers.push(serde_json::json!({
            "id": id, "host": host, "port": f.port, "type": f.kind.as_str(), "model": model,
            "max_concurrent_requests": f.slots.unwrap_or(4),
        }));
        added.push(id);
    }
    added
}

/// Add found studios to a workers file, keeping every existing entry (and
/// anything else in the file); new ids are unique. Returns the ids added.
pub fn merge_into(path: &Path, found: &[Found]) -> anyhow::Result<Vec<String>> {
    let mut root: Value = if path.exists() {
        // Validate first, so a broken file is reported, not overwritten.
        crate::config::Config::load(path)?;
        serde_json::from_str(&std::fs::read_to_string(path)?)?
    } else {
        serde_json::json!({ "workers": [] })
    };
    let workers = root
        .get_mut("workers")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow::anyhow!("{}: `workers` is not a list", path.display()))?;
    let added = add_found(workers, found);
    crate::files::write_atomic(
        path,
        (serde_json::to_string_pretty(&root)? + "\n").as_bytes(),
    )?;
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_networks_need_force() {
        let opts = Options {
            cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            ..Options::default()
        };
        let e = targets(&opts).unwrap_err().to_string();
        assert!(
            e.contains("65536 addresses") && e.contains("--force"),
            "{e}"
        );
        let forced = Options {
            force: true,
            ..opts
        };
        assert_eq!(targets(&forced).unwrap().len(), 1);
        let ok = Options {
            cidrs: vec!["192.168.4.0/22".parse().unwrap()],
            ..Options::default()
        };
        assert!(targets(&ok).is_ok());
    }

    fn tally(probes: &[(bool, Probe)]) -> LanTally {
        let mut t = LanTally::default();
        for (on_lan, p) in probes {
            t.add(*on_lan, *p);
        }
        t
    }

    #[test]
    fn a_sweep_where_every_lan_connect_is_denied_is_an_error_with_its_code() {
        let denied = Probe::Failed(ConnectFailure::LocalNetworkDenied);
        let t = tally(&[
            (true, denied),
            (true, denied),
            (true, Probe::Failed(ConnectFailure::TimedOut)),
        ]);
        let e = t.verdict(0).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::LocalNetworkDenied));
        let text = e.to_string();
        assert!(text.contains("2 of 3 connections"), "{text}");
        assert!(
            text.contains("\n  fix: ") && text.contains("Local Network"),
            "{text}"
        );
        // Off-LAN probes (a routed --cidr) do not count either way.
        let t = tally(&[
            (true, denied),
            (false, Probe::Failed(ConnectFailure::Refused)),
        ]);
        assert!(t.verdict(0).is_err());
    }

    #[test]
    fn a_sweep_that_reached_hosts_reports_denial_in_its_result_not_as_failure() {
        let denied = Probe::Failed(ConnectFailure::LocalNetworkDenied);
        // A host answered (refused): access works at least in part.
        let t = tally(&[
            (true, denied),
            (true, Probe::Failed(ConnectFailure::Refused)),
        ]);
        assert!(t.verdict(0).is_ok());
        assert_eq!((t.probes, t.denied, t.answered), (2, 1, 1));
        // Something was found (say, this Mac's own server over mDNS).
        assert!(tally(&[(true, denied)]).verdict(1).is_ok());
        // No denial: nothing to say, whatever else failed.
        let t = tally(&[
            (true, Probe::Failed(ConnectFailure::TimedOut)),
            (true, Probe::Failed(ConnectFailure::NoRoute)),
        ]);
        assert!(t.verdict(0).is_ok());
        assert_eq!(t.denied, 0);
        assert_eq!(DiscoverError::NoNetworks.code(), None);
    }

    #[test]
    fn host_lists_skip_network_and_broadcast() {
        let n: Ipv4Net = "192.168.1.0/30".parse().unwrap();
        assert_eq!(
            hosts_of(&n),
            vec![Ipv4Addr::new(192, 168, 1, 1), Ipv4Addr::new(192, 168, 1, 2)]
        );
        let one: Ipv4Net = "10.1.2.3/32".parse().unwrap();
        assert_eq!(hosts_of(&one), vec![Ipv4Addr::new(10, 1, 2, 3)]);
    }
}
