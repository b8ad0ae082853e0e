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
