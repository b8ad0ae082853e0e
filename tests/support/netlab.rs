//! Studio hosts in network namespaces the tests create (and always remove).
//!
//! Each host is a namespace joined to the root namespace by a veth pair, on
//! its own /30 from 198.18.0.0/15 (a benchmarking range, used only inside
//! these namespaces). Sockets are created *inside* a namespace by a thread
//! that `setns`-es into it, so a simulated studio or an ICMP responder can
//! live there while the test drives it from the root namespace.
//!
//! Needs root; [`NetLab::available`] says why not when it cannot run.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::cmd::{BatonCmd, BatonProcess};

const PREFIX: &str = "btn";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One studio host in its own namespace.
pub struct Host {
    pub ns: String,
    /// The host's address (inside its namespace).
    pub ip: Ipv4Addr,
    /// This machine's address on the link to the host.
    pub gateway: Ipv4Addr,
    veth_root: String,
    veth_ns: String,
    responders: Vec<Arc<AtomicBool>>,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Why namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("network namespaces exist only on Linux".into());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network-namespace tests need root (CI runs them as root)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Remove namespaces left by test processes that died without cleaning up.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: u32 = rest
            .split('x')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != 0 && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = sh(&["ip", "netns", "del", name]);
        }
    }
}

impl Host {
    /// Create a namespace with a veth link to the root namespace.
    pub fn new() -> Result<Host, String> {
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_stale);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{PREFIX}{pid}x{n}");
        // /30 subnets from 198.18.0.0/15, spread by pid so parallel test
        // processes do not collide: 64 per process (a test binary holds
        // several suites' hosts, a few alive at once).
        let index = ((pid % 512) * 64 + n % 64) % 32768;
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + index * 4;
        let (gateway, ip) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let tag = format!("{:x}", (pid % 65536) * 64 + n % 64);
        let (veth_root, veth_ns) = (format!("bvr{tag}"), format!("bvn{tag}"));
        let host = Host {
            ns: ns.clone(),
            ip,
            gateway,
            veth_root: veth_root.clone(),
            veth_ns: veth_ns.clone(),
            responders: Vec::new(),
        };
        sh(&["ip", "netns", "add", &ns])?;
        sh(&[
            "ip", "link", "add", &veth_root, "type", "veth", "peer", "name", &veth_ns,
        ])?;
        sh(&["ip", "link", "set", &veth_ns, "netns", &ns])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{gateway}/30"),
            "dev",
            &veth_root,
        ])?;
        sh(&["ip", "link", "set", &veth_root, "up"])?;
        host.exec(&["ip", "addr", "add", &format!("{ip}/30"), "dev", &veth_ns])?;
        host.exec(&["ip", "link", "set", &veth_ns, "up"])?;
        host.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(host)
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut full = vec!["ip", "netns", "exec", &self.ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Run `f` on a thread that has joined the namespace; sockets it makes
    /// belong to the namespace for their whole life.
    pub fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            join_namespace(&path).expect("join the namespace");
            f()
        })
        .join()
        .expect("namespace thread")
    }

    /// A TCP listener on the host's address.
    pub fn listen(&self, port: u16) -> std::net::TcpListener {
        let addr = SocketAddr::from((self.ip, port));
        self.inside(move || std::net::TcpListener::bind(addr).expect("bind inside the namespace"))
    }

    /// Drop every packet entering or leaving the host (a black hole), with nftables.
    pub fn black_hole(&self) -> Result<(), String> {
        // Nothing in and nothing out, as when a Mac sleeps or its cable is
        // pulled (dropping only what comes in would let the studio's
        // retransmissions keep reaching Baton).
        self.exec(&["nft", "add", "table", "inet", "lab"])?;
        for hook in ["input", "output"] {
            self.exec(&[
                "nft",
                &format!(
                    "add chain inet lab {hook} {{ type filter hook {hook} priority 0 ; policy drop ; }}"
                ),
            ])
            .or_else(|_| {
                self.exec(&[
                    "nft", "add", "chain", "inet", "lab", hook, "{", "type", "filter", "hook",
                    hook, "priority", "0", ";", "policy", "drop", ";", "}",
                ])
            })?;
        }
        Ok(())
    }

    /// Undo [`Host::black_hole`].
    pub fn clear_black_hole(&self) -> Result<(), String> {
        self.exec(&["nft", "delete", "table", "inet", "lab"])
    }

    /// Take the host's link down.
    pub fn link_down(&self) -> Result<(), String> {
        self.exec(&["ip", "link", "set", &self.veth_ns, "down"])
    }

    /// Answer pings after `delay` instead of at once: the kernel's echo
    /// replies are turned off and a raw-socket responder answers instead
    /// (this kernel has no netem).
    pub fn delay_icmp(&mut self, delay: Duration) -> Result<(), String> {
        self.exec(&["sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1"])?;
        let stop = Arc::new(AtomicBool::new(false));
        self.responders.push(stop.clone());
        let sock = self.inside(|| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::ICMPV4),
            )
            .expect("raw ICMP socket");
            s.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            s
        });
        std::thread::spawn(move || echo_responder(sock, delay, stop));
        Ok(())
    }
}

/// Move this thread into the network namespace at `path`.
#[cfg(target_os = "linux")]
fn join_namespace(path: &str) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    // SAFETY: setns on a valid namespace fd only changes this thread.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Elsewhere there are no namespaces; [`unavailable`] keeps tests from
/// getting here.
#[cfg(not(target_os = "linux"))]
fn join_namespace(_path: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "network namespaces exist only on Linux",
    ))
}

impl Drop for Host {
    fn drop(&mut self) {
        for r in &self.responders {
            r.store(true, Ordering::Relaxed);
        }
        // Deleting the namespace removes its end of the veth, and with it the pair.
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = sh(&["ip", "link", "del", &self.veth_root]);
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Reply to echo requests after `delay`.
fn echo_responder(sock: socket2::Socket, delay: Duration, stop: Arc<AtomicBool>) {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        // SAFETY: recv_from initialised the first n bytes.
        let packet: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        let ihl = usize::from(packet[0] & 0x0f) * 4;
        if packet.len() < ihl + 8 || packet[ihl] != 8 {
            continue; // not an echo request
        }
        let mut reply = packet[ihl..].to_vec();
        reply[0] = 0; // echo reply
        reply[2] = 0;
        reply[3] = 0;
        let c = checksum(&reply);
        reply[2..4].copy_from_slice(&c.to_be_bytes());
        std::thread::sleep(delay);
        let _ = sock.send_to(&reply, &from);
    }
}

impl Host {
    /// Drop `pct`% of the packets entering the host, at random (nftables numgen).
    pub fn loss(&self, pct: u32) -> Result<(), String> {
        self.exec(&["nft", "add", "table", "inet", "loss"])?;
        self.exec(&[
            "nft",
            "add chain inet loss input { type filter hook input priority 0 ; }",
        ])?;
        self.exec(&[
            "nft",
            &format!("add rule inet loss input numgen random mod 100 < {pct} drop"),
        ])
    }

    pub fn clear_loss(&self) -> Result<(), String> {
        self.exec(&["nft", "delete", "table", "inet", "loss"])
    }

    /// Answer every new TCP connection to `port` with a reset.
    pub fn reset_tcp(&self, port: u16) -> Result<(), String> {
        self.exec(&["nft", "add", "table", "inet", "rst"])?;
        self.exec(&[
            "nft",
            "add chain inet rst input { type filter hook input priority 0 ; }",
        ])?;
        self.exec(&[
            "nft",
            &format!("add rule inet rst input tcp dport {port} reject with tcp reset"),
        ])
    }

    pub fn clear_reset(&self) -> Result<(), String> {
        self.exec(&["nft", "delete", "table", "inet", "rst"])
    }
}

/// A simulated studio as its own process inside a host's namespace, so it
/// can be killed, restarted, paused and resumed like a real server.
pub struct StudioProcess {
    ns: String,
    args: Vec<String>,
    process: Option<BatonProcess>,
}

impl StudioProcess {
    /// `baton sim` on `ip:port` inside `host`, with extra sim flags.
    pub fn start(host: &Host, port: u16, extra: &[&str]) -> StudioProcess {
        let mut args: Vec<String> = vec![
            "sim".into(),
            "--base".into(),
            host.ip.to_string(),
            "--port".into(),
            port.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = StudioProcess {
            ns: host.ns.clone(),
            args,
            process: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let process = BatonCmd::in_namespace(&self.ns, &self.args).quiet().spawn();
        self.process = Some(process);
    }

    /// Kill -9, as a crashed server.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// SIGSTOP: the process keeps its sockets but answers nothing.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGSTOP);
        }
    }

    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.signal(libc::SIGCONT);
        }
    }
}

impl Drop for StudioProcess {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// A TCP relay in front of a studio that delays every chunk by a settable
/// number of milliseconds (this kernel has no netem).
pub struct DelayRelay {
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl DelayRelay {
    /// Listen on `host`'s `listen_port` (inside its namespace), forward to `upstream`.
    pub fn start(host: &Host, listen_port: u16, upstream: SocketAddr) -> DelayRelay {
        let listener = host.listen(listen_port);
        listener.set_nonblocking(true).unwrap();
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (delay_ms.clone(), stop.clone());
        tokio::spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            while !s.load(Ordering::Relaxed) {
                let Ok(Ok((inbound, _))) =
                    tokio::time::timeout(Duration::from_millis(200), listener.accept()).await
                else {
                    continue;
                };
                let d = d.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(pump(ri, wo, d.clone()), pump(ro, wi, d));
                });
            }
        });
        DelayRelay { delay_ms, stop }
    }

    pub fn set_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let d = delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
