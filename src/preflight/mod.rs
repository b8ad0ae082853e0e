//! One-button network preflight: every check the user's guide makes by hand
//! (ping, port, server running, model loaded, same subnet, latency), for
//! every worker in parallel, each with a verdict, the measured value and a
//! remedy.
//!
//! Timeouts are bounded and checks run concurrently, so a black-holed host
//! costs about two seconds, not a stack of TCP timeouts.

mod connect;
mod http;
pub mod icmp;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Worker};
use crate::error_code::ErrorCode;
use crate::netinfo::{self, LocalNet};
use crate::studio;

/// pass / warn / fail, or skip when an earlier check made it moot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Skip,
    Warn,
    Fail,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "ok",
            Status::Skip => "skip",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    /// The measured value, readable.
    pub value: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// The main figure in milliseconds, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ms: Option<f64>,
    /// Ping figures, for the ping check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ping: Option<icmp::PingStats>,
    /// What the UI does about it (e.g. `local_network_denied`: a link to
    /// the macOS setting and "Try again").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

impl Check {
    pub fn new(name: &str, status: Status, value: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            status,
            value: value.into(),
            detail: None,
            remedy: None,
            ms: None,
            ping: None,
            code: None,
        }
    }
    pub fn remedy(mut self, r: impl Into<String>) -> Check {
        self.remedy = Some(r.into());
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Check {
        self.detail = Some(d.into());
        self
    }
    pub fn ms(mut self, ms: f64) -> Check {
        self.ms = Some(ms);
        self
    }
    pub fn code(mut self, code: Option<ErrorCode>) -> Check {
        self.code = code;
        self
    }
}

/// The checks of one host: a worker, or a member host of a cluster worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostReport {
    pub worker: String,
    pub host: String,
    pub port: u16,
    /// `worker`, or `member` for a cluster member host.
    pub role: String,
    pub status: Status,
    pub checks: Vec<Check>,
}

/// A whole preflight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub status: Status,
    /// Unix time in seconds.
    pub started_at: u64,
    pub duration_ms: f64,
    pub thresholds: Thresholds,
    pub hosts: Vec<HostReport>,
}

impl Report {
    pub fn failed(&self) -> impl Iterator<Item = &HostReport> {
        self.hosts.iter().filter(|h| h.status == Status::Fail)
    }

    /// Process exit code: 0 pass, 1 warnings only under `strict`, 2 failure.
    pub fn exit_code(&self, strict: bool) -> u8 {
        match self.status {
            Status::Fail => 2,
            Status::Warn if strict => 1,
            _ => 0,
        }
    }
}

/// Limits, defaulting to the user's checklist (0% loss, RTT under 10 ms).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thresholds {
    pub ping_count: u32,
    pub ping_interval_ms: u64,
    pub ping_timeout_ms: u64,
    pub max_rtt_ms: f64,
    pub max_loss_pct: f64,
    pub connect_timeout_ms: u64,
    pub http_timeout_ms: u64,
    pub completion_timeout_ms: u64,
    /// A first token slower than this is a warning.
    pub warn_ttft_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            ping_count: 5,
            ping_interval_ms: 100,
            ping_timeout_ms: 1000,
            max_rtt_ms: 10.0,
            max_loss_pct: 0.0,
            connect_timeout_ms: 1000,
            http_timeout_ms: 1500,
            completion_timeout_ms: 10_000,
            warn_ttft_ms: 3000,
        }
    }
}

/// Preflight every enabled worker (and cluster member) in parallel.
pub async fn run(config: &Config, t: &Thresholds) -> Report {
    run_observed(config, t, &|_| {}, None).await
}

/// What holds a studio still while preflight asks it over HTTP: the running
/// balancer, which lets no request of Baton's own reach a busy server that
/// answers one request at a time (it would wait behind the generation, or
/// end it). `enter` resolves to a guard to keep while asking, or why not.
pub trait HttpGate: Sync {
    fn enter<'a>(&'a self, worker: &'a str) -> GateEntry<'a>;
}

/// What [`HttpGate::enter`] resolves to: a guard to hold, or why not.
pub type GateEntry<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<Box<dyn Send + 'a>, String>> + Send + 'a>>;

/// [`run`], telling `on_host` about each host as soon as its checks are
/// done (a black-holed studio does not hold back the others' results), and
/// asking each studio over HTTP only through `gate` when there is one.
pub async fn run_observed(
    config: &Config,
    t: &Thresholds,
    on_host: &(dyn Fn(&HostReport) + Sync),
    gate: Option<&dyn HttpGate>,
) -> Report {
    let started = Instant::now();
    let started_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let locals = netinfo::local_ipv4();
    let pinger = icmp::Pinger::new();
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(t.connect_timeout_ms))
        .no_proxy()
        .build()
        .expect("HTTP client");
    let mut jobs = Vec::new();
    let apis = &config.balancer.apis[..];
    let observed = |member| {
        let (pinger, client, locals) = (&pinger, &client, &locals);
        move |w| async move {
            let h = check_host(w, member, t, apis, pinger, client, locals, gate).await;
            on_host(&h);
            h
        }
    };
    for w in config.enabled_workers() {
        jobs.push(Box::pin(observed(None)(w))
            as std::pin::Pin<Box<dyn Future<Output = HostReport> + Send>>);
        for m in &w.members {
            if m != &w.host {
                jobs.push(Box::pin(observed(Some(m))(w)));
            }
        }
    }
    let hosts = futures_util::future::join_all(jobs).await;
    let status = hosts.iter().map(|h| h.status).max().unwrap_or(Status::Pass);
    Report {
        status,
        started_at,
        duration_ms: started.elapsed().as_secs_f64() * 1000.0,
        thresholds: t.clone(),
        hosts,
    }
}

#[allow(clippy::too_many_arguments)]
async fn check_host(
    w: &Worker,
    member: Option<&String>,
    t: &Thresholds,
    apis: &[crate::config::ClientApi],
    pinger: &icmp::Pinger,
    client: &reqwest::Client,
    locals: &[LocalNet],
    gate: Option<&dyn HttpGate>,
) -> HostReport {
    let host = member.unwrap_or(&w.host).clone();
    let mut checks = Vec::new();
    let resolve_t0 = Instant::now();
    let resolved = tokio::time::timeout(
        Duration::from_millis(t.http_timeout_ms),
        tokio::net::lookup_host((host.clone(), w.port)),
    )
    .await;
    let addr: Option<SocketAddr> = match resolved {
        Ok(Ok(mut addrs)) => {
            let all: Vec<SocketAddr> = addrs.by_ref().collect();
            all.iter().find(|a| a.is_ipv4()).or(all.first()).copied()
        }
        _ => None,
    };
    let Some(addr) = addr else {
        checks.push(
            Check::new("resolve", Status::Fail, format!("cannot resolve `{host}`"))
                .remedy("check the host name or use the studio's IP address (System Settings > Wi-Fi > Details on the Mac)"),
        );
        return finish(w, host, member.is_some(), checks);
    };
    let resolve_ms = resolve_t0.elapsed().as_secs_f64() * 1000.0;
    checks.push(Check::new("resolve", Status::Pass, addr.ip().to_string()).ms(resolve_ms));
    let ip = addr.ip();

    // ICMP and the TCP/HTTP chain run side by side.
    let ping = pinger.ping(
        ip,
        t.ping_count,
        Duration::from_millis(t.ping_interval_ms),
        Duration::from_millis(t.ping_timeout_ms),
    );
    let chain = async {
        let mut out = Vec::new();
        let connected =
            match connect::connect(addr, Duration::from_millis(t.connect_timeout_ms), locals).await
            {
                Ok(d) => {
                    let ms = d.as_secs_f64() * 1000.0;
                    out.push(
                        Check::new(
                            "tcp",
                            Status::Pass,
                            format!("port {} open, connected in {ms:.1} ms", w.port),
                        )
                        .ms(ms),
                    );
                    true
                }
                Err((kind, detail)) => {
                    out.push(
                        Check::new(
                            "tcp",
                            Status::Fail,
                            format!("port {}: {}", w.port, kind.describe()),
                        )
                        .detail(detail)
                        .remedy(kind.remedy(w.kind, w.port))
                        .code(kind.code()),
                    );
                    false
                }
            };
        if member.is_some() {
            return (out, connected);
        }
        if !connected {
            for name in ["models", "model", "completion"] {
                out.push(Check::new(name, Status::Skip, "skipped: no connection"));
            }
            return (out, connected);
        }
        // Held (when serving) until the HTTP checks are done.
        let _held = match gate {
            None => None,
            Some(g) => match g.enter(&w.id).await {
                Ok(h) => Some(h),
                Err(why) => {
                    for name in ["models", "model", "completion"] {
                        out.push(Check::new(name, Status::Skip, format!("skipped: {why}")));
                    }
                    return (out, connected);
                }
            },
        };
        let auth = w
            .api_key
            .as_ref()
            .and_then(|r| crate::secrets::resolve(r).ok());
        let http_timeout = Duration::from_millis(t.http_timeout_ms);
        let (models_check, listed) = http::models(client, w, auth.as_deref(), http_timeout).await;
        out.push(models_check);
        match listed {
            Some(listed) => {
                let model = http::model(client, w, auth.as_deref(), &listed, http_timeout).await;
                let model_ok = model.status != Status::Fail;
                out.push(model);
                if model_ok {
                    out.push(
                        http::completion(
                            client,
                            w,
                            auth.as_deref(),
                            Duration::from_millis(t.completion_timeout_ms),
                            Duration::from_millis(t.warn_ttft_ms),
                        )
                        .await,
                    );
                } else {
                    out.push(Check::new(
                        "completion",
                        Status::Skip,
                        "skipped: model missing",
                    ));
                }
            }
            None => {
                out.push(Check::new("model", Status::Skip, "skipped: no model list"));
                out.push(Check::new(
                    "completion",
                    Status::Skip,
                    "skipped: no model list",
                ));
            }
        }
        // One check per other API the pool is asked to serve.
        for api in apis
            .iter()
            .filter(|a| **a != crate::config::ClientApi::Openai)
        {
            out.push(http::api(client, w, auth.as_deref(), *api, http_timeout).await);
        }
        (out, connected)
    };
    // Members are only pinged and connected to; their port may be closed by design.
    let (ping, (chain_checks, connected)) = tokio::join!(ping, chain);
    checks.push(ping_check(ping, connected, t, |e| {
        studio::classify_with(e, ip, locals)
    }));
    checks.extend(chain_checks);
    checks.push(subnet_check(ip, locals));
    if member.is_some()
        && let Some(c) = checks
            .iter_mut()
            .find(|c| c.name == "tcp" && c.status == Status::Fail)
    {
        // A member need not serve the API port itself.
        c.status = Status::Warn;
    }
    finish(w, host, member.is_some(), checks)
}

/// The ping check from the series' outcome; `classify` names a send error
/// (macOS's Local Network denial is one).
fn ping_check(
    r: Result<icmp::PingStats, icmp::PingError>,
    tcp_ok: bool,
    t: &Thresholds,
    classify: impl FnOnce(&std::io::Error) -> studio::ConnectFailure,
) -> Check {
    let mut send_detail = None;
    let s = match r {
        Err(icmp::PingError::NoSocket(e)) => {
            return Check::new("ping", Status::Warn, "ICMP not permitted for this process")
                .detail(e)
                .remedy(icmp::permission_remedy());
        }
        Err(icmp::PingError::Send(e)) => match classify(&e) {
            f @ studio::ConnectFailure::LocalNetworkDenied => {
                return Check::new("ping", Status::Fail, f.describe())
                    .detail(e.to_string())
                    .remedy(studio::LOCAL_NETWORK_FIX)
                    .code(f.code());
            }
            studio::ConnectFailure::NotPermitted => {
                return Check::new("ping", Status::Warn, "ICMP not permitted for this process")
                    .detail(e.to_string())
                    .remedy(icmp::permission_remedy());
            }
            // Nothing came back and sending failed: every echo is lost.
            _ => {
                send_detail = Some(e.to_string());
                icmp::PingStats::from_rtts(t.ping_count, &[])
            }
        },
        Ok(s) => s,
    };
    let value = match (s.min_ms, s.avg_ms, s.max_ms) {
        (Some(min), Some(avg), Some(max)) => format!(
            "{}/{} replies, {:.0}% loss, rtt {min:.2}/{avg:.2}/{max:.2} ms, jitter {:.2} ms",
            s.received,
            s.sent,
            s.loss_pct,
            s.jitter_ms.unwrap_or(0.0)
        ),
        _ => format!("0/{} replies, 100% loss", s.sent),
    };
    let mut c = Check::new("ping", Status::Pass, value);
    c.ms = s.avg_ms;
    if s.received == 0 {
        c = if tcp_ok {
            // The port answers, so the host is up and only ICMP is dropped.
            Check { status: Status::Warn, ..c }
                .remedy("the host drops ping (macOS Firewall stealth mode) but its port answers: latency is judged by the TCP check")
        } else {
            Check { status: Status::Fail, ..c }.remedy(
                "100% packet loss: the host is off, asleep, on another network, or its firewall drops everything; check its IP and that it is awake",
            )
        };
    } else if s.loss_pct > t.max_loss_pct {
        c = Check { status: Status::Fail, ..c }
            .remedy(format!("{:.0}% packet loss (limit {}%): use Ethernet instead of Wi-Fi, check cables and switches", s.loss_pct, t.max_loss_pct));
    } else if s.avg_ms.unwrap_or(0.0) > t.max_rtt_ms {
        c = Check { status: Status::Fail, ..c }.remedy(format!(
            "average RTT above {} ms: LLM traffic wants a local wired network; use Ethernet and the same switch",
            t.max_rtt_ms
        ));
    }
    c.ping = Some(s);
    c.detail = c.detail.or(send_detail);
    c
}

fn subnet_check(ip: IpAddr, locals: &[LocalNet]) -> Check {
    let IpAddr::V4(v4) = ip else {
        return Check::new("subnet", Status::Skip, "IPv6 address: not checked");
    };
    if v4.is_loopback() {
        return Check::new("subnet", Status::Pass, "this machine (loopback)");
    }
    match netinfo::same_subnet(v4, locals) {
        Some(l) => Check::new(
            "subnet",
            Status::Pass,
            format!("same subnet as {} ({})", l.interface, l.net),
        ),
        None => {
            let ours: Vec<String> = locals
                .iter()
                .filter(|l| !l.is_loopback())
                .map(|l| l.net.to_string())
                .collect();
            Check::new("subnet", Status::Warn, format!("{v4} is not on a local subnet"))
                .detail(format!("this machine: {}", if ours.is_empty() { "no network".into() } else { ours.join(", ") }))
                .remedy("traffic goes through a router: put the studios and this machine on the same network for the lowest latency")
        }
    }
}

fn finish(w: &Worker, host: String, member: bool, checks: Vec<Check>) -> HostReport {
    let status = checks
        .iter()
        .map(|c| c.status)
        .filter(|s| *s != Status::Skip)
        .max()
        .unwrap_or(Status::Pass);
    HostReport {
        worker: w.id.clone(),
        host,
        port: w.port,
        role: if member {
            "member".into()
        } else {
            "worker".into()
        },
        status,
        checks,
    }
}

/// Human-readable table.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let workers = r.hosts.iter().filter(|h| h.role == "worker").count();
    let _ = writeln!(
        out,
        "Preflight of {workers} worker(s) in {:.1} s: {}",
        r.duration_ms / 1000.0,
        match r.status {
            Status::Pass | Status::Skip => "all checks passed",
            Status::Warn => "passed with warnings",
            Status::Fail => "FAILED",
        }
    );
    for h in &r.hosts {
        let _ = writeln!(
            out,
            "\n{} {}:{}{}  {}",
            h.worker,
            h.host,
            h.port,
            if h.role == "member" {
                " (cluster member)"
            } else {
                ""
            },
            h.status.label()
        );
        for c in &h.checks {
            let _ = writeln!(out, "  {:<4} {:<11} {}", c.status.label(), c.name, c.value);
            if c.status >= Status::Warn {
                if let Some(d) = &c.detail {
                    let _ = writeln!(out, "       {:<11} {d}", "");
                }
                if let Some(rm) = &c.remedy {
                    let _ = writeln!(out, "       {:<11} fix: {rm}", "");
                }
            }
        }
    }
    out
}

/// Where the last preflight is kept for the dashboard and the benchmark.
pub fn last_path() -> Option<PathBuf> {
    directories::ProjectDirs::from("dev", "Baton", "baton")
        .map(|d| d.data_dir().join("last-preflight.json"))
}

/// Keep this report as the last preflight (written atomically).
pub fn save_last(r: &Report) -> std::io::Result<PathBuf> {
    let path = last_path().ok_or_else(|| std::io::Error::other("no home directory"))?;
    crate::files::write_atomic(
        &path,
        &serde_json::to_vec_pretty(r).map_err(std::io::Error::other)?,
    )?;
    Ok(path)
}

/// The last kept preflight, if any.
pub fn load_last() -> Option<Report> {
    let text = std::fs::read(last_path()?).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use studio::ConnectFailure;

    fn send(errno: i32) -> Result<icmp::PingStats, icmp::PingError> {
        Err(icmp::PingError::Send(std::io::Error::from_raw_os_error(
            errno,
        )))
    }

    #[test]
    fn a_ping_denied_by_local_network_privacy_fails_with_its_code_not_as_loss() {
        let t = Thresholds::default();
        let c = ping_check(send(libc::EHOSTUNREACH), false, &t, |_| {
            ConnectFailure::LocalNetworkDenied
        });
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.code, Some(ErrorCode::LocalNetworkDenied));
        assert!(
            c.remedy.as_deref().unwrap().contains("Local Network"),
            "{c:?}"
        );
        assert!(!c.value.contains("loss"), "{c:?}");
        // The code travels in the JSON the UI reads.
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["code"], "local_network_denied");
    }

    #[test]
    fn other_send_errors_are_loss_with_the_error_kept() {
        let t = Thresholds::default();
        let c = ping_check(send(libc::EHOSTUNREACH), false, &t, |_| {
            ConnectFailure::NoRoute
        });
        assert_eq!(c.status, Status::Fail);
        assert_eq!(c.code, None);
        assert!(c.value.contains("100% loss"), "{c:?}");
        assert!(c.detail.is_some(), "{c:?}");
        // EPERM off the local network: this process may not ping.
        let c = ping_check(send(libc::EPERM), true, &t, |_| {
            ConnectFailure::NotPermitted
        });
        assert_eq!(c.status, Status::Warn);
        // A check without a code has no `code` in its JSON, and old reports
        // without one still load.
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("code").is_none());
        let back: Check = serde_json::from_value(json).unwrap();
        assert_eq!(back.code, None);
    }
}
