//! ICMP echo with surge-ping: unprivileged DGRAM sockets where the OS allows
//! them (macOS; Linux when `net.ipv4.ping_group_range` includes our group),
//! RAW sockets as root.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence};

/// Result of a series of echo requests.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    pub loss_pct: f64,
    pub min_ms: Option<f64>,
    pub avg_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Mean absolute difference between consecutive RTTs (as in RFC 3550).
    pub jitter_ms: Option<f64>,
}

impl PingStats {
    pub(crate) fn from_rtts(sent: u32, rtts: &[f64]) -> PingStats {
        let received = rtts.len() as u32;
        let loss_pct = if sent == 0 {
            0.0
        } else {
            100.0 * f64::from(sent - received) / f64::from(sent)
        };
        let (min, max, avg) = if rtts.is_empty() {
            (None, None, None)
        } else {
            (
                Some(rtts.iter().copied().fold(f64::INFINITY, f64::min)),
                Some(rtts.iter().copied().fold(0.0, f64::max)),
                Some(rtts.iter().sum::<f64>() / rtts.len() as f64),
            )
        };
        let jitter = (rtts.len() > 1).then(|| {
            rtts.windows(2).map(|w| (w[1] - w[0]).abs()).sum::<f64>() / (rtts.len() - 1) as f64
        });
        PingStats {
            sent,
            received,
            loss_pct,
            min_ms: min,
            avg_ms: avg,
            max_ms: max,
            jitter_ms: jitter,
        }
    }
}

/// Why a ping series says nothing about the host.
#[derive(Debug)]
pub enum PingError {
    /// No ICMP socket for this process.
    NoSocket(String),
    /// The system refused to send: `EPERM`/`EACCES` at once, or every echo
    /// failed with an error and none came back (e.g. macOS's Local Network
    /// denial, which answers `EHOSTUNREACH`). The caller classifies it.
    Send(std::io::Error),
}

/// A shared ICMP client (one socket and one receive task for every host).
pub struct Pinger {
    client: Option<Client>,
    error: Option<String>,
}

impl Pinger {
    /// Open the ICMP socket; failure is kept and reported per host.
    pub fn new() -> Pinger {
        let cfg = Config::builder()
            .kind(ICMP::V4)
            .sock_type_hint(socket2::Type::DGRAM)
            .build();
        match Client::new(&cfg) {
            Ok(c) => Pinger {
                client: Some(c),
                error: None,
            },
            Err(e) => Pinger {
                client: None,
                error: Some(e.to_string()),
            },
        }
    }

    /// Send `count` echo requests `interval` apart, each waiting up to
    /// `timeout`; all run concurrently, so the whole takes about
    /// `(count - 1) * interval + timeout` at worst.
    pub async fn ping(
        &self,
        ip: IpAddr,
        count: u32,
        interval: Duration,
        timeout: Duration,
    ) -> Result<PingStats, PingError> {
        let Some(client) = &self.client else {
            return Err(PingError::NoSocket(self.error.clone().unwrap_or_default()));
        };
        let payload = [0u8; 56];
        let ident = PingIdentifier(rand_ident());
        let mut tasks = Vec::new();
        for seq in 0..count {
            tasks.push(async move {
                tokio::time::sleep(interval * seq).await;
                let mut p = client.pinger(ip, ident).await;
                p.timeout(timeout);
                p.ping(PingSequence(seq as u16), &payload).await
            });
        }
        let results = futures_util::future::join_all(tasks).await;
        let mut rtts = Vec::new();
        let mut send_error = None;
        for r in results {
            match r {
                Ok((_, rtt)) => rtts.push(rtt.as_secs_f64() * 1000.0),
                Err(surge_ping::SurgeError::IOError(e))
                    if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) =>
                {
                    return Err(PingError::Send(e));
                }
                // Not dropped: with no reply at all, the error may be the
                // reason (see `PingError::Send`).
                Err(surge_ping::SurgeError::IOError(e)) => {
                    send_error.get_or_insert(e);
                }
                Err(_) => {}
            }
        }
        match send_error {
            Some(e) if rtts.is_empty() => Err(PingError::Send(e)),
            _ => Ok(PingStats::from_rtts(count, &rtts)),
        }
    }
}

impl Default for Pinger {
    fn default() -> Self {
        Self::new()
    }
}

fn rand_ident() -> u16 {
    // Distinct enough per host and run; the kernel rewrites it for DGRAM sockets anyway.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    static N: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    (nanos as u16) ^ N.fetch_add(7919, std::sync::atomic::Ordering::Relaxed)
}

/// How to let this machine send pings without root.
pub fn permission_remedy() -> &'static str {
    if cfg!(target_os = "linux") {
        "allow unprivileged ping: sudo sysctl -w net.ipv4.ping_group_range=\"0 2147483647\" (or run as root, or setcap cap_net_raw+ep on the baton binary)"
    } else {
        "ICMP is blocked for this process; reachability is still judged by the TCP check"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_from_rtts() {
        let s = PingStats::from_rtts(5, &[1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s.received, 4);
        assert_eq!(s.loss_pct, 20.0);
        assert_eq!(s.min_ms, Some(1.0));
        assert_eq!(s.max_ms, Some(4.0));
        assert_eq!(s.avg_ms, Some(2.5));
        assert_eq!(s.jitter_ms, Some((2.0 + 1.0 + 2.0) / 3.0));
        let none = PingStats::from_rtts(3, &[]);
        assert_eq!(none.loss_pct, 100.0);
        assert_eq!(none.avg_ms, None);
    }
}
