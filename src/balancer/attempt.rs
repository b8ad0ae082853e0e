//! One attempt of a request on one studio, step by step: send it and wait
//! for the first byte (within the first-token timeout, and no longer than
//! the studio is alive), judge the response head, then relay a stream
//! (`relay`) or read and judge a whole answer. Whatever happens, the end is
//! settled by the one outcome function, [`Attempt::settle`].

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use super::WORKER_HEADER;
use super::answer::{self, Family, Whole};
use super::health::Verdict;
use super::outcome::{Answer, Attempt, Ending};
use super::relay::{Framing, Relay};
use super::request::{Job, Parsed};
use super::state::Failure;
use super::upstream::Conn;
use super::worker::WorkerEntry;

/// An attempt failed before anything reached the client.
pub(super) struct Retry {
    pub detail: String,
    pub verdict: Verdict,
}

/// Settle a failed attempt; what the request does next.
fn retry(at: Attempt, ending: Ending) -> Retry {
    let detail = ending.to_string();
    let verdict = at.settle(ending).unwrap_or(Verdict::TryAnother);
    Retry { detail, verdict }
}

/// One attempt on the slot's worker, in steps: send and wait for the first
/// byte, judge the head, then relay a stream or check a whole answer. `Err`
/// means the worker failed before anything reached the client: the caller
/// tries again (another worker, or the same one when it was only
/// congested). Every way it ends is settled by [`Attempt::settle`].
pub(super) async fn run(mut at: Attempt) -> Result<Response, Retry> {
    let head = match first_byte(&mut at).await {
        Ok(head) => head,
        Err(ending) => return Err(retry(at, ending)),
    };
    let Head {
        parts,
        body,
        first,
        conn,
        head_ms,
    } = head;
    at.answered(conn, head_ms);
    let status = parts.status;
    // 508 is a loop another balancer saw: the request's answer, not the
    // studio's failure (passed on below like a client error).
    if status.is_server_error() && status != StatusCode::LOOP_DETECTED {
        return Err(retry(at, Ending::ServerError(status)));
    }
    at.first_byte();
    let builder = response_head(&parts, at.worker());
    match framing(&parts, &at.job().parsed).filter(|_| status.is_success()) {
        Some(framing) => Ok(stream(at, builder, body, framing, first)),
        None => whole(at, status, builder, body, first).await,
    }
}

/// What the studio sent up to its first body byte.
struct Head {
    parts: axum::http::response::Parts,
    body: Incoming,
    /// The first non-empty chunk (`None`: the body was empty).
    first: Option<Bytes>,
    conn: Conn,
    /// When the head arrived (the studio's health clock, ms).
    head_ms: u64,
}

/// Send the request and wait for the studio's first body byte, within the
/// first-token timeout. A studio found dead meanwhile ends the wait at once
/// (only dead: a studio ejected for being slow keeps the requests already
/// waiting on its live connections).
async fn first_byte(at: &mut Attempt) -> Result<Head, Ending> {
    let (job, w) = (at.job().clone(), at.worker().clone());
    let (connect_timeout, first_token_timeout) = (
        at.settings().connect_timeout,
        at.settings().first_token_timeout,
    );
    let mut dead = w.health.dead.subscribe();
    let body = job.body_for(&w);
    let make = || upstream_request(&job, &w, &body);
    at.sending();
    let wait = async {
        let (resp, conn) = w
            .upstream
            .send(make, connect_timeout)
            .await
            .map_err(Ending::Unsent)?;
        w.health.progress();
        let head_ms = w.note_head();
        let (parts, mut body) = resp.into_parts();
        // Wait for the first non-empty chunk (or the end of the body).
        let first = loop {
            match body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(b) if !b.is_empty() => break Some(b),
                    _ => continue,
                },
                Some(Err(e)) => {
                    let detail = super::upstream::describe(&e);
                    return Err(Ending::Cut(
                        Failure::Stream,
                        format!("answer broke before its first byte: {detail}"),
                    ));
                }
                None => break None,
            }
        };
        Ok(Head {
            parts,
            body,
            first,
            conn,
            head_ms,
        })
    };
    tokio::select! {
        r = tokio::time::timeout(first_token_timeout, wait) => {
            r.unwrap_or(Err(Ending::NoFirstByte(first_token_timeout)))
        }
        _ = dead.changed() => {
            Err(Ending::FoundDead(w.health.last_error().unwrap_or_default()))
        }
    }
}

/// The request as the studio gets it: its own name for the model, its own
/// key, the hops it came through.
fn upstream_request(job: &Job, w: &WorkerEntry, body: &Bytes) -> axum::http::Request<Full<Bytes>> {
    let api = job.api;
    let mut b = axum::http::Request::builder()
        .method(axum::http::Method::POST)
        .uri(api.path())
        .header(header::HOST, w.upstream.authority())
        .header(header::VIA, &job.via)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = &w.auth_header {
        b = b.header(header::AUTHORIZATION, a);
        if api.family() == Family::Anthropic
            && let Some(k) = a.to_str().ok().and_then(|v| v.strip_prefix("Bearer "))
            && let Ok(mut v) = HeaderValue::from_str(k)
        {
            v.set_sensitive(true);
            b = b.header("x-api-key", v);
        }
    }
    for (name, value) in &job.passed {
        b = b.header(*name, value);
    }
    b.body(Full::new(body.clone()))
        .expect("valid upstream request")
}

/// The client's response head: the studio's status and content type, and
/// which worker answered.
fn response_head(
    parts: &axum::http::response::Parts,
    w: &WorkerEntry,
) -> axum::http::response::Builder {
    let mut builder = Response::builder().status(parts.status);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, ct);
    }
    if let Ok(v) = HeaderValue::from_str(w.id()) {
        builder = builder.header(WORKER_HEADER, v);
    }
    builder
}

/// How the answer streams, if it does: SSE, or Ollama's NDJSON when the
/// request asked for a stream.
fn framing(parts: &axum::http::response::Parts, parsed: &Parsed) -> Option<Framing> {
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type.starts_with("text/event-stream") {
        Some(Framing::Sse)
    } else if content_type.starts_with("application/x-ndjson") && parsed.stream {
        Some(Framing::Ndjson)
    } else {
        None
    }
}

/// Relay a streamed answer; the relay settles the attempt when it ends.
fn stream(
    mut at: Attempt,
    builder: axum::http::response::Builder,
    body: Incoming,
    framing: Framing,
    first: Option<Bytes>,
) -> Response {
    at.streaming();
    let relay = Relay::new(at, body, framing, first);
    builder
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(relay.into_stream()))
        .expect("valid response parts")
}

/// Read and judge a whole answer before anything is sent: a cut one (or a
/// studio without this API) can still go to another studio.
async fn whole(
    at: Attempt,
    status: StatusCode,
    builder: axum::http::response::Builder,
    body: Incoming,
    first: Option<Bytes>,
) -> Result<Response, Retry> {
    let idle = at.settings().idle_timeout;
    let whole = match read_whole(at.worker(), body, first, idle).await {
        Ok(b) => b,
        Err(detail) => return Err(retry(at, Ending::Cut(Failure::Stream, detail))),
    };
    let api = at.job().api;
    if answer::lacks_api(status, &whole) {
        let detail = format!("{} has no {}", at.worker().id(), api.path());
        return Err(retry(at, Ending::Lacks(detail)));
    }
    let ending = match status.is_success().then(|| api.judge_whole(&whole)) {
        Some(Whole::Complete { tokens }) => Ending::Complete(Answer::Whole { tokens }),
        Some(Whole::Cut(why)) => {
            // Nothing reached the client yet: another studio can answer.
            let detail = format!("incomplete answer: {why}");
            return Err(retry(at, Ending::Cut(Failure::Stream, detail)));
        }
        // A 4xx, or an error object under a 200, is the request's answer.
        Some(Whole::Error) | None => Ending::ClientError,
    };
    at.settle(ending);
    Ok(builder
        .body(Body::from(whole))
        .expect("valid response parts"))
}

/// Read a whole (non-streamed) answer: every chunk must come within the
/// idle timeout and the body must end cleanly. These answers are complete
/// JSON documents, of no use to a client half-way, so they are checked
/// whole before anything is sent.
async fn read_whole(
    w: &WorkerEntry,
    mut body: Incoming,
    first: Option<Bytes>,
    idle: Duration,
) -> Result<Bytes, String> {
    // A whole answer that came in one chunk (most short ones) goes on as
    // read, without a copy.
    if let Some(f) = &first
        && http_body::Body::is_end_stream(&body)
    {
        return Ok(f.clone());
    }
    let mut buf = bytes::BytesMut::new();
    if let Some(f) = first {
        buf.extend_from_slice(&f);
    }
    loop {
        // Most of a whole answer is already here: look before arming a
        // timer (timers cost more than the rest of a small answer).
        let next = match futures_util::FutureExt::now_or_never(body.frame()) {
            Some(n) => Ok(n),
            None => tokio::time::timeout(idle, body.frame()).await,
        };
        match next {
            Ok(Some(Ok(f))) => {
                w.health.progress();
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => {
                return Err(format!(
                    "answer broke mid-body: {}",
                    super::upstream::describe(&e)
                ));
            }
            Err(_) => return Err(format!("no data for {idle:?} mid-answer")),
        }
    }
}
