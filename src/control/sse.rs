//! `GET /api/events`: the engine's events as server-sent events, resumable
//! with `Last-Event-ID`.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::engine::events::{Event, Numbered};

/// A comment this often keeps proxies and idle timers from closing the stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn frame(n: &Numbered) -> Bytes {
    let data = serde_json::to_string(&n.event).expect("events serialize");
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        n.seq,
        n.event.name()
    ))
}

fn resync(seq: u64) -> Bytes {
    frame(&Numbered {
        seq,
        event: Event::Resync {},
    })
}

pub(super) fn stream(engine: &Engine, headers: &HeaderMap, stop: CancellationToken) -> Response {
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (mut rx, replay) = engine.subscribe(after);
    // The stream shows live figures: they are sampled while it is open.
    let viewing = engine.view_live();
    let first: Vec<Bytes> = match replay {
        Some(events) => events.iter().map(frame).collect(),
        // Too far behind: tell the client to reload its state.
        None => vec![resync(engine.last_event_seq())],
    };
    let live = async_stream(move |tx| async move {
        let _viewing = viewing;
        for b in first {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let mut keep_alive = tokio::time::interval(KEEP_ALIVE);
        keep_alive.tick().await;
        loop {
            let out = tokio::select! {
                _ = stop.cancelled() => return,
                _ = keep_alive.tick() => Bytes::from_static(b": keep-alive\n\n"),
                r = rx.recv() => match r {
                    Ok(n) => frame(&n),
                    Err(RecvError::Lagged(_)) => resync(0),
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(live.map(Ok::<_, std::convert::Infallible>)),
    )
        .into_response()
}

/// A stream fed by a task through a small channel: the task ends when the
/// client goes away (the receiver is dropped with the response body).
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Bytes> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<Bytes>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
