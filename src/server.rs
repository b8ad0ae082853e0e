//! The accept loop both of Baton's HTTP servers (the balancer and the
//! control API) run, instead of `axum::serve`, which sets no limit on how
//! long a client may take to send its request head or on how many
//! connections it holds:
//!
//! - a request head must arrive within a deadline (slow-loris connections
//!   that trickle headers are closed), and the same deadline closes a
//!   keep-alive connection that sits idle between requests;
//! - heads are limited in size (431 beyond);
//! - at most `max_connections` are served at once: further clients wait in
//!   the kernel's accept queue until one closes.
//!
//! Each request carries the address it arrived on ([`LocalAddr`]), so a
//! server can tell which of its own addresses a client used.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What a server accepts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Time a client has to send a request head, and the longest a
    /// keep-alive connection may wait idle for the next one.
    pub header_read_timeout: Duration,
    /// Largest request head (answered with 431 beyond it).
    pub max_head_bytes: usize,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

/// The local address a request's connection arrived on (a request
/// extension set by [`serve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LocalAddr(pub SocketAddr);

/// Serve `app` on `listener` until `stop`; then connections finish what
/// they are answering (for at most 2 s) and close.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    stop: CancellationToken,
    limits: Limits,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_head_bytes.max(8192));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A free place first, then accept: at the cap, clients wait in the
        // kernel's queue instead of holding memory and a task here.
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = open.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small SSE chunks must leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().map(LocalAddr);
        let service = WithLocal {
            inner: hyper_util::service::TowerToHyperService::new(app.clone()),
            local,
        };
        let conn = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    // Finish what is in flight, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
}

/// The app's service with [`LocalAddr`] added to each request.
struct WithLocal<S> {
    inner: S,
    local: Option<LocalAddr>,
}

impl<S, B> hyper::service::Service<axum::http::Request<B>> for WithLocal<S>
where
    S: hyper::service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: axum::http::Request<B>) -> Self::Future {
        if let Some(l) = self.local {
            req.extensions_mut().insert(l);
        }
        self.inner.call(req)
    }
}

/// Why a header cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BadHeader {
    /// Sent more than once (which one would a proxy on the way believe?).
    Repeated,
    /// Not visible ASCII.
    Unreadable,
}

impl BadHeader {
    pub fn describe(&self, name: &HeaderName) -> String {
        match self {
            BadHeader::Repeated => format!("the request has more than one `{name}` header"),
            BadHeader::Unreadable => format!("the request's `{name}` header is not readable text"),
        }
    }
}

/// The one value of a header that must appear at most once, as text.
pub(crate) fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, BadHeader> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadHeader::Repeated);
    }
    first.to_str().map(Some).map_err(|_| BadHeader::Unreadable)
}

/// `Host`'s (or an authority's) host and port: `name:port`, `[v6]:port`,
/// the port optional. `None` for anything else (userinfo, garbage).
pub(crate) fn split_authority(a: &str) -> Option<(&str, Option<u16>)> {
    if a.is_empty() || a.contains(['@', '/', ' ', '\\']) {
        return None;
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        h.parse::<std::net::Ipv6Addr>().ok()?;
        match after {
            "" => (h, None),
            p => (h, Some(p.strip_prefix(':')?)),
        }
    } else {
        match a.rsplit_once(':') {
            // An IPv6 address needs its brackets.
            Some((h, _)) if h.contains(':') => return None,
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, header};

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(
            split_authority("127.0.0.1:8421"),
            Some(("127.0.0.1", Some(8421)))
        );
        assert_eq!(split_authority("localhost"), Some(("localhost", None)));
        assert_eq!(split_authority("[::1]:80"), Some(("::1", Some(80))));
        assert_eq!(split_authority("[::1]"), Some(("::1", None)));
        for bad in [
            "",
            ":80",
            "a:b",
            "user@host",
            "[::1",
            "[zz]:1",
            "::1",
            "h:99999",
            "a b",
        ] {
            assert_eq!(split_authority(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_repeated_or_unreadable_header_is_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(single_header(&h, &header::HOST), Ok(None));
        h.append(header::HOST, HeaderValue::from_static("a"));
        assert_eq!(single_header(&h, &header::HOST), Ok(Some("a")));
        h.append(header::HOST, HeaderValue::from_static("b"));
        assert_eq!(single_header(&h, &header::HOST), Err(BadHeader::Repeated));
        let mut h = HeaderMap::new();
        h.insert(
            header::ORIGIN,
            HeaderValue::from_bytes(b"http://\xff").unwrap(),
        );
        assert_eq!(
            single_header(&h, &header::ORIGIN),
            Err(BadHeader::Unreadable)
        );
    }
}
