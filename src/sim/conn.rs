//! Sockets and what happens around each request: the accept loop, how
//! connections are kept alive or closed (as real servers do it), the request
//! log, serial mode, interrupts and llama.cpp's answers while loading.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::SimState;
use crate::studio::StudioKind;

/// What a handler learns about its request from the connection layer.
#[derive(Clone, Copy, Debug)]
pub(super) struct ReqCtx {
    /// The request's entry in the log.
    pub(super) log_id: u64,
    /// The arrival count including this request: a streaming generation in
    /// interrupt mode ends when the count moves past its own.
    pub(super) arrival: u64,
}

/// Marks a response as a streamed answer (for `close_after_stream`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Streamed;

/// Accept connections while listening is on. Turning it off drops the
/// listener and cancels every connection of that generation.
pub(super) async fn accept_loop(
    first: TcpListener,
    addr: SocketAddr,
    state: Arc<SimState>,
    shutdown: CancellationToken,
) {
    let router = super::api::router(state.clone());
    let mut listening = state.listening.subscribe();
    let mut listener = Some(first);
    loop {
        // Wait until we should listen, then (re)bind.
        while !*listening.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listening.changed() => if r.is_err() { return },
            }
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match rebind(addr, &shutdown).await {
                Some(l) => l,
                None => return,
            },
        };
        let conns = shutdown.child_token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => { conns.cancel(); return; }
                r = listening.changed() => {
                    if r.is_err() { conns.cancel(); return; }
                    if !*listening.borrow_and_update() { conns.cancel(); break; }
                }
                r = l.accept() => match r {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(serve_connection(
                            state.clone(),
                            router.clone(),
                            stream,
                            conns.clone(),
                        ));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly.
                        tracing::warn!(%addr, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
            }
        }
        drop(l);
    }
}

async fn rebind(addr: SocketAddr, shutdown: &CancellationToken) -> Option<TcpListener> {
    loop {
        match TcpListener::bind(addr).await {
            Ok(l) => return Some(l),
            Err(e) => {
                tracing::debug!(%addr, "rebind failed, retrying: {e}");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        }
    }
}

/// One connection's state, shared by its requests and its task.
struct ConnCtl {
    /// Requests whose answer is not finished yet.
    active: AtomicU32,
    idle_since: Mutex<Instant>,
    /// Close once the current answer is done, without announcing it.
    close: AtomicBool,
    wake: Notify,
}

impl ConnCtl {
    fn begin(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn end(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.idle_since.lock().expect("idle lock") = Instant::now();
        }
        self.wake.notify_one();
    }

    fn close_soon(&self) {
        self.close.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// When an idle connection should be closed, if it is idle.
    fn idle_deadline(&self, idle: Option<u64>) -> Option<Instant> {
        let idle = idle?;
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(*self.idle_since.lock().expect("idle lock") + Duration::from_millis(idle))
    }
}

/// Serve one connection. Closing is hyper's graceful shutdown, asked for
/// only once the answer's head is written: the answer then finishes and the
/// socket closes with no `Connection: close`, as a server that just hangs
/// up would behave.
async fn serve_connection(
    state: Arc<SimState>,
    router: Router,
    stream: TcpStream,
    token: CancellationToken,
) {
    let ctl = Arc::new(ConnCtl {
        active: AtomicU32::new(0),
        idle_since: Mutex::new(Instant::now()),
        close: AtomicBool::new(false),
        wake: Notify::new(),
    });
    let inner = TowerToHyperService::new(router);
    let svc = {
        let (state, ctl) = (state.clone(), ctl.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            handle(state.clone(), ctl.clone(), inner.clone(), req)
        })
    };
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    let mut conn = std::pin::pin!(conn);
    let mut faults_changed = state.faults_changed.subscribe();
    let mut closing = false;
    loop {
        let idle_at = if closing {
            None
        } else {
            ctl.idle_deadline(state.faults().keepalive_idle_ms)
        };
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = token.cancelled() => break,
            _ = ctl.wake.notified() => {
                if !closing && ctl.close.load(Ordering::SeqCst) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() => {
                if ctl.active.load(Ordering::SeqCst) == 0 {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            r = faults_changed.changed() => if r.is_err() { break },
        }
    }
}

/// Everything to undo when an answer is finished or abandoned.
struct AnswerGuard {
    state: Arc<SimState>,
    ctl: Arc<ConnCtl>,
    log_id: Option<u64>,
    close: bool,
    _serial: Option<OwnedSemaphorePermit>,
}

impl AnswerGuard {
    /// Called when the answer's head has been written.
    fn head_written(&self) {
        if self.close {
            self.ctl.close_soon();
        }
    }
}

impl Drop for AnswerGuard {
    fn drop(&mut self) {
        // An answer dropped before its body was polled (an empty body, or a
        // client gone) still closes if it was meant to.
        self.head_written();
        if let Some(id) = self.log_id {
            self.state.log.end(id);
        }
        self.ctl.end();
    }
}

/// Wrap one request: log it, count its arrival, apply serial mode and the
/// loading answer, then decide how the connection ends after the answer.
async fn handle(
    state: Arc<SimState>,
    ctl: Arc<ConnCtl>,
    inner: TowerToHyperService<Router>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let control = path.starts_with("/sim/");
    ctl.begin();
    let mut guard = AnswerGuard {
        state: state.clone(),
        ctl,
        log_id: None,
        close: false,
        _serial: None,
    };
    let faults = state.faults();
    let mut early = None;
    if !control {
        let generating = state.counters.active.load(Ordering::Relaxed);
        let id = state.log.arrive(req.method().as_str(), &path, generating);
        guard.log_id = Some(id);
        let mut arrival = 0;
        state.arrivals.send_modify(|n| {
            *n += 1;
            arrival = *n;
        });
        req.extensions_mut().insert(ReqCtx {
            log_id: id,
            arrival,
        });
        if state.config.kind == StudioKind::LlamaCpp && state.models.is_loading_any() {
            // llama-server answers every route this way until the model is in.
            early = Some(loading_answer());
        } else if faults.serial {
            guard._serial = Some(
                state
                    .serial
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("serial semaphore never closed"),
            );
        }
    }
    let mut resp = match early {
        Some(r) => r,
        None => hyper::service::Service::call(&inner, req)
            .await
            .unwrap_or_else(|e: Infallible| match e {}),
    };
    if let Some(id) = guard.log_id {
        state.log.status(id, resp.status().as_u16());
    }
    if !control {
        let faults = state.faults();
        let streamed = resp.extensions().get::<Streamed>().is_some();
        guard.close = (streamed && faults.close_after_stream) || state.roll(faults.close_random);
        if let Some(ms) = faults.keepalive_idle_ms {
            let secs = ms.div_ceil(1000);
            if let Ok(v) = HeaderValue::from_str(&format!("timeout={secs}, max=100")) {
                resp.headers_mut().insert("keep-alive", v);
            }
        }
    }
    Ok(resp.map(|body| {
        Body::new(Guarded {
            inner: body,
            guard: Some(guard),
            polled: false,
        })
    }))
}

fn loading_answer() -> Response<Body> {
    let body = r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// An answer body that runs its guard when the body ends or is dropped.
struct Guarded {
    inner: Body,
    guard: Option<AnswerGuard>,
    polled: bool,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if !self.polled {
            // hyper writes the head before it polls the body.
            self.polled = true;
            if let Some(g) = &self.guard {
                g.head_written();
            }
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            self.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
