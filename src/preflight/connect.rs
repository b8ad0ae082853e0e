//! TCP connect with the failure classified and explained.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::studio::StudioKind;

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
    /// The OS refused to let us connect (macOS Local Network permission, a
    /// local firewall rule).
    NotPermitted,
    /// Something accepted, then reset the connection.
    Reset,
    Other,
}

impl ConnectFailure {
    pub fn describe(self) -> &'static str {
        match self {
            ConnectFailure::Refused => "connection refused",
            ConnectFailure::TimedOut => "timed out",
            ConnectFailure::NoRoute => "no route to host",
            ConnectFailure::NetworkUnreachable => "network unreachable",
            ConnectFailure::NotPermitted => "not permitted by this machine",
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
                    "macOS blocked the connection: allow Baton under System Settings > Privacy & Security > Local Network".into()
                } else {
                    "this machine refused the connection: check local firewall rules (nftables/iptables) for outgoing traffic".into()
                }
            }
            ConnectFailure::Reset => {
                format!("something on port {port} accepted then reset the connection: another service on that port, or a firewall")
            }
            ConnectFailure::Other => "check the address and port in the workers file".into(),
        }
    }
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

/// Connect once; `Ok` is the time it took.
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Duration, (ConnectFailure, String)> {
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err((classify(&e), e.to_string())),
        Err(_) => Err((
            ConnectFailure::TimedOut,
            format!("no answer within {} ms", timeout.as_millis()),
        )),
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

    #[test]
    fn every_failure_has_a_specific_remedy() {
        let all = [
            ConnectFailure::Refused,
            ConnectFailure::TimedOut,
            ConnectFailure::NoRoute,
            ConnectFailure::NetworkUnreachable,
            ConnectFailure::NotPermitted,
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

    #[tokio::test]
    async fn refused_on_loopback_is_refused() {
        // Bind then drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = connect(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(r.unwrap_err().0, ConnectFailure::Refused);
    }
}
