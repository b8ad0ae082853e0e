//! Connections to one studio: a small pool of HTTP/1.1 keep-alive
//! connections that never outlive what the studio keeps, and that tells a
//! stale connection from a dead studio.
//!
//! Why our own pool instead of a general-purpose client: real servers close
//! kept-alive connections without saying so (llama.cpp's server after every
//! streamed answer, every server after its keep-alive time), and a request
//! written on such a connection fails before any response byte. That says
//! nothing about the studio's health. Only the pool knows whether the
//! connection was reused, so only the pool can retry it on a fresh one
//! without counting a failure; it also learns the studio's habits (its
//! `Keep-Alive` timeout, closing after streams) so the next request does
//! not pay for them, and it bounds how many connections open at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, Request, Response, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::liveness::{self, Tracked};
use crate::studio::{ConnectFailure, classify_here};

pub(crate) type ReqBody = Full<Bytes>;

/// Idle time assumed for a studio that does not announce its keep-alive:
/// under the 5 s that llama.cpp's server, uvicorn (vLLM, llama-cpp-python)
/// and Node (LM Studio) keep.
const DEFAULT_IDLE: Duration = Duration::from_secs(4);

/// Connections opened to one studio at once. A burst of hundreds of
/// connects overflows small listen backlogs (Python servers use 5) and
/// looks like a dead host; the rest wait their turn here instead.
const MAX_CONNECTING: usize = 16;

/// Idle connections kept per studio.
const MAX_IDLE: usize = 256;

/// How long resolved addresses are reused.
const RESOLVE_TTL: Duration = Duration::from_secs(30);

/// Why a request got no response head.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The TCP connect failed (refused, unreachable, ...).
    Connect(ConnectFailure, String),
    /// The TCP connect did not finish within the connect timeout.
    ConnectTimeout(Duration),
    /// A fresh connection failed before any response byte.
    Request(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The kind says it ("connection refused"); the OS's words only
            // when the kind does not.
            SendError::Connect(ConnectFailure::Other, detail) => {
                write!(f, "connect failed: {detail}")
            }
            SendError::Connect(kind, _) => write!(f, "{}", kind.describe()),
            SendError::ConnectTimeout(t) => write!(f, "connect timed out after {t:?}"),
            SendError::Request(detail) => write!(f, "{detail}"),
        }
    }
}

/// A connection lent to one exchange; give it back with [`Upstream::put_back`]
/// once the response body has ended, or drop it to close it.
pub(crate) struct Conn {
    tx: SendRequest<ReqBody>,
    /// The socket, for the liveness check (see [`Upstream::peers`]).
    _tracked: Option<Arc<Tracked>>,
    /// Requests served on this connection before the current one.
    served: u32,
    /// The studio said it would close this connection after the answer.
    closing: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
    after_stream: bool,
}

/// What the studio has shown about keeping connections.
#[derive(Clone, Copy, Debug)]
struct Habits {
    /// Reuse an idle connection only within this time.
    idle_for: Duration,
    /// Requests per connection the studio allows (`Keep-Alive: max=`).
    max_requests: Option<u32>,
    /// It closes the connection after every streamed answer.
    closes_after_stream: bool,
}

/// The connection pool of one studio.
pub(crate) struct Upstream {
    host: String,
    port: u16,
    authority: HeaderValue,
    idle: Mutex<Vec<Idle>>,
    habits: Mutex<Habits>,
    connecting: Semaphore,
    resolved: Mutex<Option<(Vec<SocketAddr>, Instant)>>,
    /// Every open connection's socket, for the liveness check.
    tracked: Mutex<Vec<Weak<Tracked>>>,
    /// Requests retried on a fresh connection after a stale one failed.
    pub stale_retries: AtomicU64,
    /// Connections opened.
    pub connects: AtomicU64,
}

impl Upstream {
    pub fn new(host: &str, port: u16) -> Upstream {
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Upstream {
            host: host.to_string(),
            port,
            authority: HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(Vec::new()),
            habits: Mutex::new(Habits {
                idle_for: DEFAULT_IDLE,
                max_requests: None,
                closes_after_stream: false,
            }),
            connecting: Semaphore::new(MAX_CONNECTING),
            resolved: Mutex::new(None),
            tracked: Mutex::new(Vec::new()),
            stale_retries: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    /// The `Host` header value for this studio.
    pub fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    /// Whether the studio was seen closing connections after streamed answers.
    pub fn closes_after_stream(&self) -> bool {
        self.habits.lock().expect("habits lock").closes_after_stream
    }

    /// Send one request and wait for the response head. `make` builds the
    /// request (it may be called twice: a request that fails on a reused
    /// connection before any response byte is sent again on a fresh one,
    /// and that is not a failure of the studio).
    pub async fn send(
        &self,
        make: impl Fn() -> Request<ReqBody>,
        connect_timeout: Duration,
    ) -> Result<(Response<Incoming>, Conn), SendError> {
        if let Some((mut conn, after_stream, idle_for)) = self.checkout() {
            match conn.tx.send_request(make()).await {
                Ok(resp) => {
                    self.note_response(resp.headers(), &mut conn);
                    return Ok((resp, conn));
                }
                Err(e) => {
                    self.stale_retries.fetch_add(1, Ordering::Relaxed);
                    self.learn_from_stale(after_stream, idle_for);
                    tracing::debug!(
                        host = %self.authority.to_str().unwrap_or("?"),
                        "reused connection failed before the response ({e}); retrying on a fresh one"
                    );
                }
            }
        }
        let mut conn = self.connect(connect_timeout).await?;
        match conn.tx.send_request(make()).await {
            Ok(resp) => {
                self.note_response(resp.headers(), &mut conn);
                Ok((resp, conn))
            }
            Err(e) => Err(SendError::Request(describe(&e))),
        }
    }

    /// Return a connection whose response body ended cleanly.
    pub fn put_back(&self, mut conn: Conn, was_stream: bool) {
        conn.served += 1;
        let habits = *self.habits.lock().expect("habits lock");
        if conn.closing
            || conn.tx.is_closed()
            || (was_stream && habits.closes_after_stream)
            || habits.max_requests.is_some_and(|m| conn.served + 1 >= m)
        {
            return;
        }
        let mut idle = self.idle.lock().expect("idle lock");
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
            after_stream: was_stream,
        });
    }

    /// Close every idle connection (the studio was ejected or removed).
    pub fn clear(&self) {
        self.idle.lock().expect("idle lock").clear();
    }

    /// The most recently used idle connection that is still good.
    fn checkout(&self) -> Option<(Conn, bool, Duration)> {
        let idle_for = self.habits.lock().expect("habits lock").idle_for;
        let mut idle = self.idle.lock().expect("idle lock");
        while let Some(i) = idle.pop() {
            let age = i.since.elapsed();
            if age < idle_for && !i.conn.tx.is_closed() && i.conn.tx.is_ready() {
                return Some((i.conn, i.after_stream, age));
            }
        }
        None
    }

    /// A reused connection was closed under us: learn why, so the next
    /// request does not pay the failed attempt again.
    fn learn_from_stale(&self, after_stream: bool, idle_age: Duration) {
        let mut h = self.habits.lock().expect("habits lock");
        if after_stream && idle_age < Duration::from_millis(500) {
            if !h.closes_after_stream {
                tracing::info!(
                    host = %self.authority.to_str().unwrap_or("?"),
                    "studio closes connections after streamed answers; using fresh ones for streams"
                );
            }
            h.closes_after_stream = true;
        } else if idle_age >= Duration::from_millis(500) {
            // It keeps idle connections for less than we thought.
            h.idle_for = h.idle_for.min(idle_age.mul_f64(0.8));
        }
    }

    /// Read what the studio says about this connection's future.
    fn note_response(&self, headers: &HeaderMap, conn: &mut Conn) {
        if headers
            .get(header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            conn.closing = true;
        }
        let Some(ka) = headers.get("keep-alive").and_then(|v| v.to_str().ok()) else {
            return;
        };
        let (timeout, max) = parse_keep_alive(ka);
        let mut h = self.habits.lock().expect("habits lock");
        if let Some(t) = timeout {
            // Stay well inside the studio's window: a connection it is
            // about to close must not be picked.
            let margin = Duration::from_secs(1).min(t / 2);
            h.idle_for = h.idle_for.min(t.saturating_sub(margin));
        }
        if max.is_some() {
            h.max_requests = max;
        }
    }

    async fn connect(&self, timeout: Duration) -> Result<Conn, SendError> {
        // Bounded: the rest queue here, and their connect timeout starts
        // only when it is their turn.
        let _permit = self
            .connecting
            .acquire()
            .await
            .expect("semaphore never closed");
        let stream = self.open_tcp(timeout).await?;
        let _ = stream.set_nodelay(true);
        liveness::keep_alive(&socket2::SockRef::from(&stream));
        let tracked = Tracked::new(&stream);
        if let Some(t) = &tracked {
            let mut all = self.tracked.lock().expect("tracked lock");
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(t));
        }
        let (tx, conn) = http1::Builder::new()
            .handshake::<_, ReqBody>(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Request(describe(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.connects.fetch_add(1, Ordering::Relaxed);
        Ok(Conn {
            tx,
            _tracked: tracked,
            served: 0,
            closing: false,
        })
    }

    /// A TCP connection to the first of the studio's addresses that takes
    /// one within `timeout`.
    async fn open_tcp(&self, timeout: Duration) -> Result<TcpStream, SendError> {
        let mut last = None;
        for addr in self.resolve(timeout).await? {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => return Ok(stream),
                // On macOS, "no route" to a LAN studio may be the Local
                // Network denial; the studio's error then says so.
                Ok(Err(e)) => {
                    last = Some(SendError::Connect(
                        classify_here(&e, addr.ip()),
                        e.to_string(),
                    ))
                }
                Err(_) => last = Some(SendError::ConnectTimeout(timeout)),
            }
        }
        Err(last.unwrap_or_else(|| {
            SendError::Connect(ConnectFailure::Other, "no address to connect to".into())
        }))
    }

    /// The sockets of every open connection to the studio (in flight and
    /// idle in the pool).
    pub fn peers(&self) -> Vec<Arc<Tracked>> {
        let mut all = self.tracked.lock().expect("tracked lock");
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(Weak::upgrade).collect()
    }

    /// Open a TCP connection and close it without sending a byte: the host
    /// and its listener are up (a single-threaded server never notices).
    pub async fn connect_check(&self, timeout: Duration) -> Result<(), SendError> {
        self.open_tcp(timeout).await.map(drop)
    }

    async fn resolve(&self, timeout: Duration) -> Result<Vec<SocketAddr>, SendError> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        if let Some((addrs, at)) = &*self.resolved.lock().expect("resolve lock")
            && at.elapsed() < RESOLVE_TTL
        {
            return Ok(addrs.clone());
        }
        // Names (e.g. `studio.local`) may take longer than a connect.
        let limit = timeout.max(Duration::from_secs(2));
        let found =
            match tokio::time::timeout(limit, tokio::net::lookup_host((&*self.host, self.port)))
                .await
            {
                Ok(Ok(a)) => a.collect::<Vec<_>>(),
                Ok(Err(e)) => {
                    return Err(SendError::Connect(
                        ConnectFailure::Other,
                        format!("cannot resolve {}: {e}", self.host),
                    ));
                }
                Err(_) => {
                    return Err(SendError::Connect(
                        ConnectFailure::Other,
                        format!("resolving {} took over {limit:?}", self.host),
                    ));
                }
            };
        if found.is_empty() {
            return Err(SendError::Connect(
                ConnectFailure::Other,
                format!("{} has no address", self.host),
            ));
        }
        *self.resolved.lock().expect("resolve lock") = Some((found.clone(), Instant::now()));
        Ok(found)
    }
}

/// `timeout=5, max=100` -> (5 s, 100).
fn parse_keep_alive(v: &str) -> (Option<Duration>, Option<u32>) {
    let mut timeout = None;
    let mut max = None;
    for part in v.split(',') {
        let mut kv = part.trim().splitn(2, '=');
        let (Some(k), Some(val)) = (kv.next(), kv.next()) else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "timeout" => timeout = val.trim().parse::<u64>().ok().map(Duration::from_secs),
            "max" => max = val.trim().parse::<u32>().ok(),
            _ => {}
        }
    }
    (timeout, max)
}

/// A hyper error with its causes, for logs and error messages.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let more = s.to_string();
        if !detail.contains(&more) {
            detail = format!("{detail}: {more}");
        }
        src = s.source();
    }
    detail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_alive_header_gives_timeout_and_max() {
        assert_eq!(
            parse_keep_alive("timeout=5, max=100"),
            (Some(Duration::from_secs(5)), Some(100))
        );
        assert_eq!(parse_keep_alive("max=3"), (None, Some(3)));
        assert_eq!(parse_keep_alive("garbage"), (None, None));
    }

    #[test]
    fn announced_keep_alive_shortens_the_idle_time_below_the_studios() {
        let u = Upstream::new("127.0.0.1", 1);
        let mut h = HeaderMap::new();
        h.insert("keep-alive", HeaderValue::from_static("timeout=5, max=100"));
        let (tx, _) = fake_sender();
        let mut c = Conn {
            tx,
            _tracked: None,
            served: 0,
            closing: false,
        };
        u.note_response(&h, &mut c);
        let habits = *u.habits.lock().unwrap();
        assert!(habits.idle_for < Duration::from_secs(5));
        assert_eq!(habits.max_requests, Some(100));
    }

    #[test]
    fn a_stale_connection_right_after_a_stream_teaches_fresh_connections_for_streams() {
        let u = Upstream::new("127.0.0.1", 1);
        u.learn_from_stale(true, Duration::from_millis(1));
        assert!(u.closes_after_stream());
        let u = Upstream::new("127.0.0.1", 1);
        u.learn_from_stale(false, Duration::from_secs(3));
        assert!(!u.closes_after_stream());
        assert!(u.habits.lock().unwrap().idle_for < Duration::from_secs(3));
    }

    /// A sender whose connection is already gone (enough for bookkeeping tests).
    fn fake_sender() -> (SendRequest<ReqBody>, ()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = tokio::io::duplex(64);
            let (tx, conn) = http1::Builder::new()
                .handshake::<_, ReqBody>(TokioIo::new(a))
                .await
                .unwrap();
            drop(conn);
            (tx, ())
        })
    }
}
