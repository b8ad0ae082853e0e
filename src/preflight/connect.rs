//! TCP connect with the failure classified and explained (the classes and
//! their remedies are the studio floor's: [`crate::studio`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::netinfo::LocalNet;
use crate::studio::{ConnectFailure, classify_with};

/// Connect once; `Ok` is the time it took. `locals` are this machine's
/// subnets, to recognise macOS's Local Network denial.
pub(crate) async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    locals: &[LocalNet],
) -> Result<Duration, (ConnectFailure, String)> {
    let t0 = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(t0.elapsed()),
        Ok(Err(e)) => Err((classify_with(&e, addr.ip(), locals), e.to_string())),
        Err(_) => Err((
            ConnectFailure::TimedOut,
            format!("no answer within {} ms", timeout.as_millis()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            &[],
        )
        .await;
        assert_eq!(r.unwrap_err().0, ConnectFailure::Refused);
    }
}
