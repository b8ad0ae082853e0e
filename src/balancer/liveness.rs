//! Is a busy studio alive? Judged below HTTP, so a single-threaded server
//! in the middle of a long prefill is never disturbed.
//!
//! While a studio has requests in flight, an HTTP probe is the one thing
//! that can hurt it: llama-cpp-python answers nothing until its running
//! generation ends (and ends that generation when another request comes),
//! and any Mac under full load answers slowly. Silence before the first
//! token is normal: a long prompt keeps every server quiet for tens of
//! seconds. So a busy studio is judged by its transport only:
//! - every connection to a studio has TCP keep-alive at one second, so the
//!   studio's kernel acknowledges something every second even while the
//!   server process is silent (or frozen);
//! - the kernel's own view of those connections (`TCP_INFO` on Linux,
//!   `TCP_CONNECTION_INFO` on macOS) says whether the peer still answers:
//!   unacknowledged bytes being retransmitted, or keep-alive probes left
//!   unanswered, mean it is gone; an acknowledgement in the last second and
//!   a half means it is there;
//! - when the connections cannot tell, a fresh TCP connect that completes
//!   (closed again without sending a byte) proves the host and its
//!   listener are up; refused, unreachable or timed out means dead.
//!
//! A frozen process whose kernel still answers is, from here, the same as a
//! long prefill: its requests end at the first-token or idle timeout.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Socket, TcpKeepalive};

/// Idle time before the kernel sends a keep-alive probe, and the time
/// between probes: how often a silent studio's kernel must answer.
pub(crate) const KEEPALIVE: Duration = Duration::from_secs(1);

/// Unanswered probes after which the kernel gives the connection up.
const KEEPALIVE_RETRIES: u32 = 3;

/// Slack on top of [`KEEPALIVE`] for a probe's answer (a LAN round trip,
/// Wi-Fi hiccups included).
const ANSWER_GRACE: Duration = Duration::from_millis(500);

/// Retransmissions of unacknowledged bytes that mean the peer is gone
/// (with the kernel's 200 ms minimum timeout: about 0.6 s without an ACK).
const GONE_AFTER_RETRANSMITS: u32 = 2;

/// Turn on fast keep-alive for a connection to a studio.
pub(crate) fn keep_alive(sock: &socket2::SockRef<'_>) {
    let ka = TcpKeepalive::new().with_time(KEEPALIVE);
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    let ka = ka.with_interval(KEEPALIVE).with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!("cannot set TCP keep-alive: {e}");
    }
}

/// A connection the liveness check may look at: a duplicate of its socket
/// (the same kernel socket, so it lives exactly as long as the connection's
/// owner keeps this), and what was seen of it last time.
pub(crate) struct Tracked {
    sock: Socket,
    seen: Mutex<Seen>,
}

/// Cumulative counters from the last look, where the platform gives only
/// those (macOS): a rise since then is what tells.
#[derive(Default)]
struct Seen {
    retransmitted: Option<u64>,
    /// Consecutive looks in which more bytes were retransmitted.
    retransmitting_looks: u32,
    received: Option<u64>,
    /// When `received` last rose.
    heard_at: Option<Instant>,
}

impl Tracked {
    pub(crate) fn new(stream: &tokio::net::TcpStream) -> Option<Arc<Tracked>> {
        let sock = socket2::SockRef::from(stream).try_clone().ok()?;
        Some(Arc::new(Tracked {
            sock,
            seen: Mutex::new(Seen::default()),
        }))
    }

    /// What the kernel says of this connection now.
    pub(crate) fn peer(&self) -> Peer {
        let Some(mut s) = sample(&self.sock) else {
            return Peer::Unknown;
        };
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("seen lock");
        if let (Some(before), Some(total)) = (seen.retransmitted, s.retransmitted_total) {
            // Counted in bytes there: each look (a quarter second apart or
            // more) that saw more of them retransmitted counts as one.
            seen.retransmitting_looks = if total > before && s.unacked {
                seen.retransmitting_looks + 1
            } else {
                0
            };
            s.retransmits = s.retransmits.max(seen.retransmitting_looks);
        }
        seen.retransmitted = s.retransmitted_total;
        if let Some(total) = s.received_total {
            if seen.received.is_none_or(|before| total > before) {
                seen.heard_at = Some(now);
            }
            seen.received = Some(total);
            if s.last_heard.is_none() {
                s.last_heard = seen.heard_at.map(|t| now - t);
            }
        }
        drop(seen);
        judge(&s)
    }
}

/// What the kernel knows of one connection, in the terms [`judge`] needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    pub established: bool,
    /// Bytes we sent that the peer has not acknowledged.
    pub unacked: bool,
    /// Retransmissions of those bytes without an acknowledgement since.
    pub retransmits: u32,
    /// Cumulative retransmitted bytes and received packets, where the
    /// platform gives counters instead of times (macOS).
    pub retransmitted_total: Option<u64>,
    pub received_total: Option<u64>,
    /// Keep-alive probes sent and not answered.
    pub probes: u32,
    /// Time since anything (data or an acknowledgement) came from the
    /// peer; `None` where the platform does not say.
    pub last_heard: Option<Duration>,
}

/// The verdict on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// The peer stopped answering: why.
    Gone(String),
    /// The peer answered recently.
    Heard,
    /// Nothing to go by.
    Unknown,
}

/// Judge one connection from its kernel state (pure: tested below).
pub(crate) fn judge(s: &Sample) -> Peer {
    if !s.established {
        // Closing or closed: the HTTP layer sees that for itself.
        return Peer::Unknown;
    }
    if s.unacked && s.retransmits >= GONE_AFTER_RETRANSMITS {
        return Peer::Gone(format!(
            "it stopped acknowledging (sent {} times without an answer)",
            s.retransmits + 1
        ));
    }
    let quiet_limit = KEEPALIVE + ANSWER_GRACE;
    match s.last_heard {
        Some(quiet) if s.probes >= 1 && quiet > quiet_limit => Peer::Gone(format!(
            "no answer to TCP keep-alive for {:.1} s",
            quiet.as_secs_f64()
        )),
        Some(quiet) if quiet <= quiet_limit => Peer::Heard,
        _ => Peer::Unknown,
    }
}

#[cfg(target_os = "linux")]
fn sample(sock: &Socket) -> Option<Sample> {
    use std::os::fd::AsRawFd;
    // SAFETY: getsockopt writes at most `len` bytes into a zeroed tcp_info
    // that outlives the call; the fd is owned by `sock`.
    let ti = unsafe {
        let mut ti: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut ti as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if r != 0 {
            return None;
        }
        ti
    };
    const TCP_ESTABLISHED: u8 = 1;
    Some(Sample {
        established: ti.tcpi_state == TCP_ESTABLISHED,
        unacked: ti.tcpi_unacked > 0,
        retransmits: u32::from(ti.tcpi_retransmits),
        retransmitted_total: None,
        received_total: None,
        probes: u32::from(ti.tcpi_probes),
        last_heard: Some(Duration::from_millis(u64::from(
            ti.tcpi_last_data_recv.min(ti.tcpi_last_ack_recv),
        ))),
    })
}

#[cfg(target_os = "macos")]
fn sample(sock: &Socket) -> Option<Sample> {
    use std::os::fd::AsRawFd;
    // SAFETY: as above, with macOS's tcp_connection_info (netinet/tcp.h,
    // TCP_CONNECTION_INFO). It has no "last heard" time and no probe
    // count, only cumulative packet counters: [`Tracked::peer`] turns a
    // rise in received packets (keep-alive answers included) into one.
    let ti = unsafe {
        let mut ti: libc::tcp_connection_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_connection_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONNECTION_INFO,
            (&mut ti as *mut libc::tcp_connection_info).cast(),
            &mut len,
        );
        if r != 0 {
            return None;
        }
        ti
    };
    const TCPS_ESTABLISHED: u8 = 4;
    Some(Sample {
        established: ti.tcpi_state == TCPS_ESTABLISHED,
        unacked: ti.tcpi_snd_sbbytes > 0,
        retransmits: 0,
        retransmitted_total: Some(ti.tcpi_txretransmitbytes),
        received_total: Some(ti.tcpi_rxpackets),
        probes: 0,
        last_heard: None,
    })
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn sample(_: &Socket) -> Option<Sample> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up() -> Sample {
        Sample {
            established: true,
            ..Sample::default()
        }
    }

    #[test]
    fn a_connection_heard_from_within_the_keep_alive_time_is_alive() {
        let s = Sample {
            last_heard: Some(Duration::from_millis(300)),
            ..up()
        };
        assert_eq!(judge(&s), Peer::Heard);
        // A probe just sent and not yet answered is not a verdict.
        let s = Sample {
            probes: 1,
            last_heard: Some(Duration::from_millis(1200)),
            ..up()
        };
        assert_eq!(judge(&s), Peer::Heard);
    }

    #[test]
    fn unanswered_keep_alive_probes_mean_the_peer_is_gone() {
        let s = Sample {
            probes: 1,
            last_heard: Some(Duration::from_millis(1800)),
            ..up()
        };
        assert!(matches!(judge(&s), Peer::Gone(why) if why.contains("keep-alive")));
    }

    #[test]
    fn unacknowledged_bytes_sent_three_times_mean_the_peer_is_gone() {
        let s = Sample {
            unacked: true,
            retransmits: 2,
            last_heard: Some(Duration::from_millis(700)),
            ..up()
        };
        assert!(matches!(judge(&s), Peer::Gone(why) if why.contains("3 times")));
        // One retransmission is ordinary loss.
        let s = Sample {
            retransmits: 1,
            ..s
        };
        assert_eq!(judge(&s), Peer::Heard);
    }

    #[test]
    fn a_long_silence_without_probes_or_a_closing_socket_says_nothing() {
        let quiet = Sample {
            last_heard: Some(Duration::from_secs(30)),
            ..up()
        };
        assert_eq!(judge(&quiet), Peer::Unknown);
        let closing = Sample {
            established: false,
            unacked: true,
            retransmits: 9,
            ..Sample::default()
        };
        assert_eq!(judge(&closing), Peer::Unknown);
        assert_eq!(judge(&up()), Peer::Unknown);
    }
}
