//! Why a connect to a studio failed, and what to do about it: the errno
//! classes (with macOS's Local Network denial, which has no errno of its
//! own), one remedy per class, and how to start each kind's server.
//! Preflight explains failures with it; the balancer ejects by it.

use std::io;
use std::net::IpAddr;

use serde::Serialize;

use super::StudioKind;
use crate::error_code::ErrorCode;
use crate::netinfo::{self, LocalNet};

/// Why a TCP connect failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectFailure {
    /// The host answered: nothing listens on the port.
    Refused,
    /// No answer at all within the timeout.
    TimedOut,
    /// The host is known to be unreachable (ARP/ICMP said so).
    NoRoute,
    /// This machine has no route to that network.
    NetworkUnreachable,
    /// The OS refused to let us connect (a local firewall rule, a network
    /// filter).
    NotPermitted,
    /// macOS keeps this process off the local network (Privacy & Security
    /// > Local Network): denied, or not yet answered.
    LocalNetworkDenied,
    /// Something accepted, then reset the connection.
    Reset,
    Other,
}

impl ConnectFailure {
    /// The code the UI acts on, for the failures that have one.
    pub fn code(self) -> Option<ErrorCode> {
        (self == ConnectFailure::LocalNetworkDenied).then_some(ErrorCode::LocalNetworkDenied)
    }

    pub fn describe(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "connection refused",
            ConnectFailure::TimedOut => "timed out",
            ConnectFailure::NoRoute => "no route to host",
            ConnectFailure::NetworkUnreachable => "network unreachable",
            ConnectFailure::NotPermitted => "not permitted by this machine",
            ConnectFailure::LocalNetworkDenied => "blocked by macOS Local Network privacy",
            ConnectFailure::Reset => "connection reset",
            ConnectFailure::Other => "failed",
        }
    }

    /// One line saying what to do about it.
    pub fn remedy(self, kind: StudioKind, port: u16) -> String {
        match self {
            ConnectFailure::Refused => format!(
                "the host is up but nothing listens on port {port}: {}",
                start_server_hint(kind)
            ),
            ConnectFailure::TimedOut => {
                "no answer: the host may be asleep or off, the IP may be wrong, or a firewall drops the packets (macOS: System Settings > Network > Firewall)".into()
            }
            ConnectFailure::NoRoute => {
                "the host is not reachable on this network: check its IP address, that it is awake, and that both machines are on the same network".into()
            }
            ConnectFailure::NetworkUnreachable => {
                "this machine has no route to that network: check this machine's own connection (Wi-Fi/Ethernet, VPN)".into()
            }
            ConnectFailure::NotPermitted => {
                if cfg!(target_os = "macos") {
                    "this Mac refused the connection: a network filter (a firewall app such as Little Snitch or LuLu, a VPN, a content filter) blocks it; allow Baton there".into()
                } else {
                    "this machine refused the connection: check local firewall rules (nftables/iptables) for outgoing traffic".into()
                }
            }
            ConnectFailure::LocalNetworkDenied => LOCAL_NETWORK_FIX.into(),
            ConnectFailure::Reset => {
                format!("something on port {port} accepted then reset the connection: another service on that port, or a firewall")
            }
            ConnectFailure::Other => "check the address and port in the workers file".into(),
        }
    }
}

/// What to do about macOS's Local Network denial.
pub const LOCAL_NETWORK_FIX: &str = "allow Baton in System Settings > Privacy & Security > Local Network (for the `baton` command: the terminal app that runs it), then try again";

/// Whose rules apply to a connect error: macOS has Local Network privacy,
/// other systems do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    MacOs,
    Other,
}

impl Platform {
    pub fn current() -> Platform {
        if cfg!(target_os = "macos") {
            Platform::MacOs
        } else {
            Platform::Other
        }
    }
}

/// Classify a connect (or send) error to `ip`, recognising macOS's Local
/// Network denial, which has no errno of its own.
///
/// On macOS 15 a process denied Local Network access (or whose prompt is
/// not answered yet) gets `EHOSTUNREACH` ("No route to host") at once for
/// addresses on the local network, on `connect` and `sendto` alike (Apple
/// developer forums, threads 765285 and 776552; TN3179); earlier releases
/// and network extensions answer `EPERM`/`EACCES`. A real unreachable host
/// on one of the Mac's own subnets is reported otherwise: the BSD stack
/// answers `EHOSTDOWN` for an on-link host that does not answer ARP
/// (`arpresolve`), or the connect times out. So on macOS any of these three
/// to an address on the local network is the denial; to a routed address
/// they keep their usual meaning. `is_local` says whether an address is on
/// the local network (see [`netinfo::on_local_network`]), asked only when
/// it matters.
pub fn classify_at(
    e: &io::Error,
    ip: IpAddr,
    platform: Platform,
    is_local: impl FnOnce(IpAddr) -> bool,
) -> ConnectFailure {
    let base = classify(e);
    let candidate = match e.raw_os_error() {
        Some(code) => matches!(code, libc::EHOSTUNREACH | libc::EPERM | libc::EACCES),
        None => matches!(
            e.kind(),
            io::ErrorKind::HostUnreachable | io::ErrorKind::PermissionDenied
        ),
    };
    if platform == Platform::MacOs && candidate && is_local(ip) {
        ConnectFailure::LocalNetworkDenied
    } else {
        base
    }
}

/// [`classify_at`] with this machine's rules and subnets.
pub fn classify_here(e: &io::Error, ip: IpAddr) -> ConnectFailure {
    classify_at(e, ip, Platform::current(), |ip| {
        netinfo::on_local_network(ip, &netinfo::local_ipv4())
    })
}

/// [`classify_at`] with this machine's rules and the subnets already known.
pub fn classify_with(e: &io::Error, ip: IpAddr, locals: &[LocalNet]) -> ConnectFailure {
    classify_at(e, ip, Platform::current(), |ip| {
        netinfo::on_local_network(ip, locals)
    })
}

/// What to do when a studio's server is not running, by software.
pub fn start_server_hint(kind: StudioKind) -> &'static str {
    match kind {
        StudioKind::LmStudio => {
            "start the server in LM Studio (Developer tab > Start Server) and turn on \"Serve on Local Network\""
        }
        StudioKind::Ollama => "start Ollama with OLLAMA_HOST=0.0.0.0 so it listens on the network",
        StudioKind::LlamaCpp => "start llama-server with --host 0.0.0.0 --port <port>",
        StudioKind::Mlx => "start mlx_lm.server with --host 0.0.0.0",
        StudioKind::Vllm => "start vllm serve with --host 0.0.0.0",
        StudioKind::Exo => "start exo on that machine",
        StudioKind::Openai => "start the server on that machine, listening on the network",
    }
}

/// Map an I/O error from `connect` to a failure class.
pub fn classify(e: &io::Error) -> ConnectFailure {
    if let Some(code) = e.raw_os_error() {
        match code {
            libc::ECONNREFUSED => return ConnectFailure::Refused,
            libc::ETIMEDOUT => return ConnectFailure::TimedOut,
            libc::EHOSTUNREACH | libc::EHOSTDOWN => return ConnectFailure::NoRoute,
            libc::ENETUNREACH | libc::ENETDOWN => return ConnectFailure::NetworkUnreachable,
            libc::EACCES | libc::EPERM => return ConnectFailure::NotPermitted,
            libc::ECONNRESET | libc::ECONNABORTED => return ConnectFailure::Reset,
            _ => {}
        }
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
        io::ErrorKind::TimedOut => ConnectFailure::TimedOut,
        io::ErrorKind::HostUnreachable => ConnectFailure::NoRoute,
        io::ErrorKind::NetworkUnreachable | io::ErrorKind::NetworkDown => {
            ConnectFailure::NetworkUnreachable
        }
        io::ErrorKind::PermissionDenied => ConnectFailure::NotPermitted,
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ConnectFailure::Reset,
        _ => ConnectFailure::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_socket_error_kind_is_classified() {
        let os = |c| io::Error::from_raw_os_error(c);
        assert_eq!(classify(&os(libc::ECONNREFUSED)), ConnectFailure::Refused);
        assert_eq!(classify(&os(libc::ETIMEDOUT)), ConnectFailure::TimedOut);
        assert_eq!(classify(&os(libc::EHOSTUNREACH)), ConnectFailure::NoRoute);
        assert_eq!(classify(&os(libc::EHOSTDOWN)), ConnectFailure::NoRoute);
        assert_eq!(
            classify(&os(libc::ENETUNREACH)),
            ConnectFailure::NetworkUnreachable
        );
        assert_eq!(
            classify(&os(libc::ENETDOWN)),
            ConnectFailure::NetworkUnreachable
        );
        assert_eq!(classify(&os(libc::EACCES)), ConnectFailure::NotPermitted);
        assert_eq!(classify(&os(libc::EPERM)), ConnectFailure::NotPermitted);
        assert_eq!(classify(&os(libc::ECONNRESET)), ConnectFailure::Reset);
        assert_eq!(classify(&os(libc::ECONNABORTED)), ConnectFailure::Reset);
        assert_eq!(classify(&os(libc::EADDRNOTAVAIL)), ConnectFailure::Other);
        // Errors without an OS code fall back to their kind.
        let k = |k| io::Error::from(k);
        assert_eq!(
            classify(&k(io::ErrorKind::ConnectionRefused)),
            ConnectFailure::Refused
        );
        assert_eq!(
            classify(&k(io::ErrorKind::TimedOut)),
            ConnectFailure::TimedOut
        );
        assert_eq!(
            classify(&k(io::ErrorKind::HostUnreachable)),
            ConnectFailure::NoRoute
        );
        assert_eq!(
            classify(&k(io::ErrorKind::NetworkUnreachable)),
            ConnectFailure::NetworkUnreachable
        );
        assert_eq!(
            classify(&k(io::ErrorKind::PermissionDenied)),
            ConnectFailure::NotPermitted
        );
        assert_eq!(
            classify(&k(io::ErrorKind::ConnectionReset)),
            ConnectFailure::Reset
        );
        assert_eq!(classify(&k(io::ErrorKind::Other)), ConnectFailure::Other);
    }

    /// macOS rules, with 192.168.1.0/24 as the Mac's own subnet.
    fn on_mac(e: &io::Error, ip: &str) -> ConnectFailure {
        let locals = [LocalNet {
            interface: "en0".into(),
            addr: std::net::Ipv4Addr::new(192, 168, 1, 20),
            net: "192.168.1.0/24".parse().unwrap(),
        }];
        classify_at(e, ip.parse().unwrap(), Platform::MacOs, |ip| {
            netinfo::on_local_network(ip, &locals)
        })
    }

    #[test]
    fn local_network_denial_is_recognised_on_macos_by_errno_and_address() {
        let os = |c| io::Error::from_raw_os_error(c);
        let denied = ConnectFailure::LocalNetworkDenied;
        // EHOSTUNREACH, EPERM, EACCES to an address on the Mac's subnet,
        // link-local or multicast: the denial.
        for errno in [libc::EHOSTUNREACH, libc::EPERM, libc::EACCES] {
            for ip in ["192.168.1.7", "169.254.3.4", "224.0.0.251", "fe80::1"] {
                assert_eq!(on_mac(&os(errno), ip), denied, "errno {errno} to {ip}");
            }
        }
        // The same errors to a routed address keep their meaning.
        assert_eq!(
            on_mac(&os(libc::EHOSTUNREACH), "10.8.0.5"),
            ConnectFailure::NoRoute
        );
        assert_eq!(
            on_mac(&os(libc::EPERM), "10.8.0.5"),
            ConnectFailure::NotPermitted
        );
        assert_eq!(
            on_mac(&os(libc::EACCES), "203.0.113.9"),
            ConnectFailure::NotPermitted
        );
        // Loopback and the Mac's own address are never "the local network".
        assert_eq!(
            on_mac(&os(libc::EHOSTUNREACH), "127.0.0.1"),
            ConnectFailure::NoRoute
        );
        assert_eq!(
            on_mac(&os(libc::EPERM), "192.168.1.20"),
            ConnectFailure::NotPermitted
        );
        // Other errors on the subnet are what they say: a host that does
        // not answer ARP is EHOSTDOWN, a closed port is refused.
        assert_eq!(
            on_mac(&os(libc::EHOSTDOWN), "192.168.1.7"),
            ConnectFailure::NoRoute
        );
        assert_eq!(
            on_mac(&os(libc::ECONNREFUSED), "192.168.1.7"),
            ConnectFailure::Refused
        );
        assert_eq!(
            on_mac(&os(libc::ETIMEDOUT), "192.168.1.7"),
            ConnectFailure::TimedOut
        );
        assert_eq!(
            on_mac(&os(libc::ENETUNREACH), "192.168.1.7"),
            ConnectFailure::NetworkUnreachable
        );
        // Errors without an errno, by kind.
        let k = |k| io::Error::from(k);
        assert_eq!(
            on_mac(&k(io::ErrorKind::HostUnreachable), "192.168.1.7"),
            denied
        );
        assert_eq!(
            on_mac(&k(io::ErrorKind::PermissionDenied), "192.168.1.7"),
            denied
        );
        assert_eq!(
            on_mac(&k(io::ErrorKind::ConnectionRefused), "192.168.1.7"),
            ConnectFailure::Refused
        );
    }

    #[test]
    fn other_systems_have_no_local_network_denial() {
        let os = |c| io::Error::from_raw_os_error(c);
        for (errno, expected) in [
            (libc::EHOSTUNREACH, ConnectFailure::NoRoute),
            (libc::EPERM, ConnectFailure::NotPermitted),
            (libc::EACCES, ConnectFailure::NotPermitted),
        ] {
            let got = classify_at(
                &os(errno),
                "192.168.1.7".parse().unwrap(),
                Platform::Other,
                |_| true,
            );
            assert_eq!(got, expected);
        }
        // Only the denial carries a code for the UI.
        assert_eq!(
            ConnectFailure::LocalNetworkDenied.code(),
            Some(ErrorCode::LocalNetworkDenied)
        );
        assert_eq!(ConnectFailure::NoRoute.code(), None);
    }

    #[test]
    fn every_failure_has_a_specific_remedy() {
        let all = [
            ConnectFailure::Refused,
            ConnectFailure::TimedOut,
            ConnectFailure::NoRoute,
            ConnectFailure::NetworkUnreachable,
            ConnectFailure::NotPermitted,
            ConnectFailure::LocalNetworkDenied,
            ConnectFailure::Reset,
            ConnectFailure::Other,
        ];
        let remedies: std::collections::HashSet<String> = all
            .iter()
            .map(|f| f.remedy(StudioKind::LmStudio, 1234))
            .collect();
        assert_eq!(remedies.len(), all.len(), "remedies must differ");
        assert!(
            ConnectFailure::Refused
                .remedy(StudioKind::LmStudio, 1234)
                .contains("Serve on Local Network")
        );
        assert!(
            ConnectFailure::Refused
                .remedy(StudioKind::Ollama, 11434)
                .contains("OLLAMA_HOST")
        );
        assert!(
            ConnectFailure::TimedOut
                .remedy(StudioKind::LmStudio, 1234)
                .contains("firewall")
        );
    }
}
