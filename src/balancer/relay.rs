//! Relays a streamed answer (SSE, or Ollama's NDJSON) to the client event
//! by event, unbuffered, holds the attempt (its slot and connection) until
//! the end, and makes sure every answer ends either complete or with an
//! error event: never looking complete when it was cut. How it ended is
//! settled by the attempt's one outcome function (`outcome`), as for whole
//! answers; a client that leaves mid-stream is settled as cancelled.
//!
//! OpenAI's `[DONE]` is held back until the studio's body has ended cleanly
//! and an event said the answer finished; otherwise the client gets an
//! error event *instead of* `[DONE]` (clients stop reading at `[DONE]`, so
//! an error after it would never be seen).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::answer::{self, Api};
use super::outcome::{Answer, Attempt, Ending};
use super::state::Failure;
use super::worker::WorkerEntry;

/// How long a stream from a studio found dead may stall before it is ended.
const DEAD_GRACE: Duration = Duration::from_secs(1);

/// Events after which the streaming rate is first measured (then at 4x, 16x, ...).
const RATE_FIRST_AT: u64 = 8;

const DONE: &[u8] = b"data: [DONE]\n\n";

/// How a stream's events are delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Server-sent events, ending with a blank line.
    Sse,
    /// One JSON object per line (Ollama).
    Ndjson,
}

impl Framing {
    fn delimiter(self) -> &'static [u8] {
        match self {
            Framing::Sse => b"\n\n",
            Framing::Ndjson => b"\n",
        }
    }
}

/// A streamed answer in flight.
pub(crate) struct Relay {
    /// The attempt, until it is settled (at the end, or when the client
    /// leaves).
    attempt: Option<Attempt>,
    body: Incoming,
    api: Api,
    framing: Framing,
    /// The first chunk, already read while choosing the worker.
    first: Option<Bytes>,
    idle: Duration,
    dead: tokio::sync::watch::Receiver<u64>,
    /// SSE `data:` events seen: a token count good enough for tokens/s.
    events: u64,
    next_rate_at: u64,
    /// Bytes after the last complete event.
    pending: BytesMut,
    saw_finish: bool,
    saw_done: bool,
    saw_error: bool,
    ended: bool,
}

/// What ended the upstream body.
enum End {
    Clean,
    Broke(String),
    Stalled(String),
}

impl Relay {
    pub fn new(attempt: Attempt, body: Incoming, framing: Framing, first: Option<Bytes>) -> Relay {
        let dead = attempt.worker().health.dead.subscribe();
        Relay {
            api: attempt.job().api,
            idle: attempt.settings().idle_timeout,
            attempt: Some(attempt),
            body,
            framing,
            first,
            dead,
            events: 0,
            next_rate_at: RATE_FIRST_AT,
            pending: BytesMut::new(),
            saw_finish: false,
            saw_done: false,
            saw_error: false,
            ended: false,
        }
    }

    fn attempt(&self) -> &Attempt {
        self.attempt.as_ref().expect("attempt held until the end")
    }

    fn worker(&self) -> &Arc<WorkerEntry> {
        self.attempt().worker()
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
        futures_util::stream::unfold(self, |mut r| async move {
            if r.ended {
                return None;
            }
            if let Some(b) = r.first.take()
                && let Some(out) = r.take_events(b)
            {
                return Some((Ok(out), r));
            }
            loop {
                let end = match r.next_chunk().await {
                    Ok(b) => match r.take_events(b) {
                        Some(out) => return Some((Ok(out), r)),
                        None => continue,
                    },
                    Err(end) => end,
                };
                let last = r.finish(end);
                return if last.is_empty() {
                    None
                } else {
                    Some((Ok(last), r))
                };
            }
        })
    }

    /// The next data chunk, or why the body ended.
    async fn next_chunk(&mut self) -> Result<Bytes, End> {
        loop {
            // Wait for the next chunk up to the idle timeout; but once the
            // studio is found dead, a stalled stream gets only a short
            // grace instead of the whole idle timeout.
            let idle = self.idle;
            let mut found_dead = false;
            let next = tokio::select! {
                n = tokio::time::timeout(idle, self.body.frame()) => n,
                _ = self.dead.changed() => {
                    found_dead = true;
                    tokio::time::timeout(DEAD_GRACE.min(idle), self.body.frame()).await
                }
            };
            match next {
                Ok(Some(Ok(frame))) => {
                    self.worker().health.progress();
                    match frame.into_data() {
                        Ok(b) if !b.is_empty() => return Ok(b),
                        _ => continue,
                    }
                }
                Ok(None) => return Err(End::Clean),
                Ok(Some(Err(e))) => {
                    return Err(End::Broke(format!(
                        "stream broke: {}",
                        super::upstream::describe(&e)
                    )));
                }
                Err(_) if found_dead => {
                    let why = self.worker().health.last_error().unwrap_or_default();
                    return Err(End::Stalled(format!(
                        "the studio stopped answering ({why})"
                    )));
                }
                Err(_) => return Err(End::Stalled(format!("no data for {idle:?} mid-stream"))),
            }
        }
    }

    /// Pass on whole events only, minus `[DONE]` (held back until the end).
    /// Bytes after the last event boundary wait for the rest of their event,
    /// so a failure can always end the stream with a well-formed error
    /// event, never glued to half of a data line. (Studios send whole
    /// events per chunk, so this adds no delay in practice.)
    fn take_events(&mut self, b: Bytes) -> Option<Bytes> {
        let delim = self.framing.delimiter();
        let whole = if self.pending.is_empty() && b.ends_with(delim) {
            b
        } else {
            self.pending.extend_from_slice(&b);
            let end = memchr::memmem::rfind(&self.pending, delim)? + delim.len();
            self.pending.split_to(end).freeze()
        };
        let mut out: Option<BytesMut> = None;
        let mut start = 0;
        let events_before = self.events;
        for end in event_ends(&whole, delim) {
            let event = &whole[start..end];
            if self.framing == Framing::Sse && answer::is_done(event) {
                self.saw_done = true;
                // From here on, copy out everything but this event.
                if out.is_none() {
                    out = Some(BytesMut::from(&whole[..start]));
                }
            } else {
                if answer::is_error(event) {
                    self.saw_error = true;
                } else if self.api.event_finishes(event) {
                    self.saw_finish = true;
                }
                if self.framing == Framing::Ndjson
                    || memchr::memmem::find(event, b"data:").is_some()
                {
                    self.events += 1;
                }
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(event);
                }
            }
            start = end;
        }
        // Counted as they stream, so live rates move with the answer (a
        // complete answer takes back its role, finish and usage events).
        let new = self.events - events_before;
        if new > 0 {
            self.worker()
                .counters
                .tokens
                .fetch_add(new, Ordering::Relaxed);
        }
        self.learn_rate();
        let bytes = match out {
            Some(o) => o.freeze(),
            None => whole,
        };
        if bytes.is_empty() {
            // Only `[DONE]` came: nothing to send yet; keep reading.
            return None;
        }
        Some(bytes)
    }

    fn learn_rate(&mut self) {
        if self.events < self.next_rate_at {
            return;
        }
        // Learn the studio's streaming rate mid-answer, so a new studio's
        // speed is known long before its first answer ends.
        let streaming = self.attempt().first_byte_at().elapsed().as_secs_f64();
        if streaming > 0.0 {
            self.worker()
                .learn_rate(self.events.saturating_sub(2) as f64 / streaming);
            // A studio whose speed just became known may take more now.
            self.attempt().shared().pool().dispatch();
        }
        self.next_rate_at = self.events * 4;
    }

    /// The upstream body ended: decide how the client's stream ends,
    /// settle the attempt, and return the stream's last bytes.
    fn finish(&mut self, end: End) -> Bytes {
        self.ended = true;
        let attempt = self.attempt.take().expect("settled once");
        let outcome = match end {
            End::Clean if self.saw_error => Err((
                Failure::Stream,
                "the studio reported an error inside its answer".to_string(),
            )),
            End::Clean if self.saw_finish || self.api == Api::Embeddings => Ok(()),
            End::Clean => Err((
                Failure::Stream,
                "the answer ended without a finish reason (cut short)".to_string(),
            )),
            End::Broke(d) => Err((Failure::Stream, d)),
            End::Stalled(d) => Err((Failure::Timeout, d)),
        };
        match outcome {
            Ok(()) => {
                let events = self.events;
                attempt.settle(Ending::Complete(Answer::Streamed { events }));
                // Whatever trailed the last boundary (a studio that omits
                // the final blank line) still goes out, then `[DONE]`.
                let mut last = BytesMut::from(&std::mem::take(&mut self.pending)[..]);
                if self.saw_done {
                    last.extend_from_slice(DONE);
                }
                last.freeze()
            }
            Err((reason, detail)) => {
                // An incomplete event is dropped, so the error event stands alone.
                self.pending.clear();
                let message = format!(
                    "worker `{}` failed mid-response: {detail}",
                    attempt.worker().id()
                );
                attempt.settle(Ending::Cut(reason, detail));
                if self.saw_error {
                    // The studio's own error event already told the client.
                    return Bytes::new();
                }
                Bytes::from(self.api.family().stream_error(&message))
            }
        }
    }
}

/// Byte offsets just past each delimiter in a buffer of whole events.
fn event_ends<'a>(b: &'a [u8], delim: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memmem::find_iter(b, delim).map(move |i| i + delim.len())
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(attempt) = self.attempt.take() {
            // The client went away: the connection closes (which cancels
            // the generation) and the slot frees now.
            attempt.settle(Ending::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use crate::balancer::Balancer;
    use crate::config::Config;
    use crate::sim::{self, SimConfig};

    /// The per-studio token counter (`/stats`, the live tokens/s) rises
    /// while an answer streams, and a complete answer counts its tokens
    /// once: its role and finish events are not tokens.
    #[tokio::test]
    async fn a_streamed_answer_counts_its_tokens_as_they_stream_and_once() {
        let studio = sim::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            SimConfig {
                ttft: Duration::from_millis(20),
                tokens_per_second: 100.0,
                ..SimConfig::default()
            },
        )
        .await
        .unwrap();
        let config = Config {
            workers: vec![sim::worker_for("s", &studio)],
            ..Default::default()
        };
        let b = Balancer::start(&config, Some("127.0.0.1:0".parse().unwrap()), None)
            .await
            .unwrap();
        assert!(b.wait_ready(Duration::from_secs(5)).await);
        let tokens = || b.stats().workers[0].tokens;
        let body = serde_json::json!({
            "model": sim::DEFAULT_MODEL, "stream": true, "max_tokens": 40,
            "messages": [{"role": "user", "content": "count"}],
        });
        let mut resp = reqwest::Client::new()
            .post(format!("{}/chat/completions", b.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // Events are counted before they are passed on: what the client
        // has seen midway is counted already.
        let mut seen = 0;
        while seen < 8 {
            let chunk = resp.chunk().await.unwrap().expect("the answer goes on");
            seen += chunk.windows(5).filter(|w| w == b"data:").count() as u64;
        }
        let midway = tokens();
        assert!(midway >= seen, "{midway} counted after {seen} events");
        while resp.chunk().await.unwrap().is_some() {}
        // Role + 40 tokens + finish, less the 3 events that may not be tokens.
        assert_eq!(tokens(), 39);
    }
}
