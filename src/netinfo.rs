//! This machine's IPv4 interfaces and subnets (via sysinfo), shared by
//! preflight (same-subnet check) and discovery (what to scan).

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::Serialize;

/// One IPv4 address of a local interface, with its subnet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalNet {
    pub interface: String,
    pub addr: Ipv4Addr,
    pub net: Ipv4Net,
}

impl LocalNet {
    pub fn is_loopback(&self) -> bool {
        self.addr.is_loopback()
    }
    pub fn is_link_local(&self) -> bool {
        self.addr.is_link_local()
    }
}

/// Every IPv4 address on this machine's interfaces.
pub fn local_ipv4() -> Vec<LocalNet> {
    let Ok(networks) = sysinfo::Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, data) in &networks {
        for n in data.ip_networks() {
            if let IpAddr::V4(addr) = n.addr
                && let Ok(net) = Ipv4Net::new(addr, n.prefix)
            {
                out.push(LocalNet {
                    interface: name.to_string_lossy().into_owned(),
                    addr,
                    net: net.trunc(),
                });
            }
        }
    }
    out.sort_by_key(|n| (n.addr.is_loopback(), n.interface.clone(), n.addr));
    out
}

/// The local network `ip` belongs to, if any.
pub fn same_subnet(ip: Ipv4Addr, locals: &[LocalNet]) -> Option<&LocalNet> {
    locals.iter().find(|l| l.net.contains(&ip))
}

/// Whether `ip` is on "the local network" as macOS's Local Network privacy
/// counts it (Apple TN3179, "Understanding local network privacy"): an
/// address on one of this machine's subnets, link-local, multicast or
/// broadcast; not loopback, and not this machine's own addresses. Routed
/// addresses (through a gateway or a VPN) are not local.
pub fn on_local_network(ip: IpAddr, locals: &[LocalNet]) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            if v4.is_loopback() || locals.iter().any(|l| l.addr == v4) {
                return false;
            }
            v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || locals
                    .iter()
                    .any(|l| !l.is_loopback() && l.net.contains(&v4))
        }
        IpAddr::V6(v6) => {
            // fe80::/10 and multicast; this module knows no IPv6 subnets.
            !v6.is_loopback() && ((v6.segments()[0] & 0xffc0) == 0xfe80 || v6.is_multicast())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locals() -> Vec<LocalNet> {
        vec![
            LocalNet {
                interface: "en0".into(),
                addr: Ipv4Addr::new(192, 168, 1, 20),
                net: "192.168.1.0/24".parse().unwrap(),
            },
            LocalNet {
                interface: "lo0".into(),
                addr: Ipv4Addr::LOCALHOST,
                net: "127.0.0.0/8".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn the_local_network_is_this_machines_subnets_link_local_and_multicast() {
        let l = locals();
        let local = |s: &str| on_local_network(s.parse().unwrap(), &l);
        assert!(local("192.168.1.7"));
        assert!(local("169.254.10.1"));
        assert!(local("224.0.0.251"));
        assert!(local("255.255.255.255"));
        assert!(local("fe80::1"));
        assert!(local("ff02::fb"));
        // Not: loopback, this machine itself, routed networks.
        assert!(!local("127.0.0.1"));
        assert!(!local("127.0.0.25"));
        assert!(!local("192.168.1.20"));
        assert!(!local("192.168.2.7"));
        assert!(!local("10.0.0.5"));
        assert!(!local("8.8.8.8"));
        assert!(!local("::1"));
        assert!(!local("2001:db8::1"));
    }
}
