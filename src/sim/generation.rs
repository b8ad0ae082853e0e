//! The one generation core every wire format uses: admission (faults, model
//! load, slot, prefill), tokens paced at the studio's rate, and how an
//! answer ends, with its timings. Formats (`openai`, `anthropic`, `ollama`)
//! only turn its steps into bytes, so slots, faults, serial and interrupt
//! modes, the log and the counters behave the same whatever the API.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, mpsc, watch};
use tokio::time::Instant;

use super::cache::Blocks;
use super::conn::{ReqCtx, Streamed};
use super::metrics::Phases;
use super::{Faults, SimState, text};

/// Tracks one request from arrival to its last byte. Dropped early (client
/// gone) it counts as cancelled.
pub(super) struct Tracker {
    state: Arc<SimState>,
    arrived: Instant,
    done: bool,
}

impl Tracker {
    fn new(state: Arc<SimState>) -> Tracker {
        let c = &state.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Tracker {
            state,
            arrived: Instant::now(),
            done: false,
        }
    }

    /// The request was answered (whatever the answer).
    pub(super) fn finish(mut self) {
        self.done = true;
    }

    /// The body was not a request the server would run (malformed, or an
    /// empty one asking whether the endpoint exists): answered, and not
    /// counted among the requests.
    pub(super) fn refused(self) {
        self.state.counters.requests.fetch_sub(1, Ordering::Relaxed);
        self.finish();
    }

    /// The request was answered in full.
    pub(super) fn complete(self) {
        self.state
            .counters
            .completed
            .fetch_add(1, Ordering::Relaxed);
        self.finish();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let c = &self.state.counters;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        if !self.done {
            c.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A hung studio hangs on every endpoint, and a slow one is slow on all.
pub(super) async fn wedge(state: &SimState) {
    let f = state.faults();
    if f.hang {
        std::future::pending::<()>().await;
    }
    if f.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
    }
}

/// Admit a generation or embedding request: the faults that act before any
/// answer. `Err` is the status of an injected error.
pub(super) async fn admit(state: &Arc<SimState>) -> Result<Tracker, StatusCode> {
    let tracker = Tracker::new(state.clone());
    wedge(state).await;
    let f = state.faults();
    if state.roll(f.error_rate) {
        state.counters.errors.fetch_add(1, Ordering::Relaxed);
        tracker.finish();
        let status = if f.error_status == 0 {
            503
        } else {
            f.error_status
        };
        return Err(StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE));
    }
    Ok(tracker)
}

/// The message of injected errors.
pub(super) const FAILURE: &str = "simulated studio failure";

/// Why an answer stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finish {
    /// It reached the request's token limit.
    Length,
    /// It ended on its own (the request set no limit).
    Stop,
}

/// What a generation request asks for, whatever its wire format.
pub(super) struct Ask {
    pub(super) model: String,
    /// The text the model reads: for chats, every message with its role, so
    /// a conversation's next turn extends the previous prompt.
    pub(super) prompt: String,
    /// `None`: an answer of the studio's default length that ends on its own.
    pub(super) max_tokens: Option<u32>,
    pub(super) stream: bool,
}

/// The prompt text of a chat: each message as `role: content`, then the
/// assistant's turn.
pub(super) fn chat_prompt<'a>(messages: impl IntoIterator<Item = (&'a str, String)>) -> String {
    let mut p = String::new();
    for (role, content) in messages {
        p.push_str(role);
        p.push_str(": ");
        p.push_str(&content);
        p.push('\n');
    }
    p.push_str("assistant:");
    p
}

/// Where one generation's time went, as servers report it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Timings {
    /// Arrival until a slot was free (the model load included).
    pub(super) queue: Duration,
    pub(super) load: Duration,
    pub(super) prompt_tokens: u32,
    pub(super) cached_tokens: u32,
    /// Slot taken until the first token.
    pub(super) prefill: Duration,
    /// First token until the last.
    pub(super) decode: Duration,
    pub(super) tokens: u32,
    /// Arrival until the end.
    pub(super) total: Duration,
}

impl Timings {
    pub(super) fn prefilled_tokens(&self) -> u32 {
        self.prompt_tokens - self.cached_tokens
    }

    pub(super) fn ttft(&self) -> Duration {
        self.queue + self.prefill
    }

    /// Decode time in ms, never 0 (so rates stay finite, as llama.cpp does).
    pub(super) fn decode_ms(&self) -> f64 {
        (self.decode.as_secs_f64() * 1000.0).max(1e-3)
    }

    pub(super) fn prefill_ms(&self) -> f64 {
        (self.prefill.as_secs_f64() * 1000.0).max(1e-3)
    }
}

/// How an answer ended normally.
#[derive(Clone, Copy, Debug)]
pub(super) struct End {
    pub(super) finish: Finish,
    pub(super) timings: Timings,
}

/// One step of an answer.
pub(super) enum Step {
    /// A content token (with its trailing space).
    Token(String),
    /// The answer is complete.
    Done(End),
    /// An error inside a 200 stream (`error_in_stream_after`).
    Error(String),
    /// Another request arrived (interrupt mode).
    Interrupted,
    /// The connection breaks now (`drop_after_tokens`).
    Drop,
}

/// How a generation ends (the books differ for each).
enum Ending {
    Done,
    Error,
    Interrupted,
    Drop,
}

/// A held slot; on release it remembers the prompt and answer for the next
/// request, and the gauge goes down.
struct SlotGuard {
    state: Arc<SimState>,
    index: usize,
    memory: Blocks,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.state
            .slots
            .give_back(self.index, std::mem::take(&mut self.memory));
        self.state.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wait in FIFO order for a slot.
async fn take_slot(state: &Arc<SimState>, prompt: Blocks, prompt_tokens: u32) -> (SlotGuard, u32) {
    let c = &state.counters;
    c.queued.fetch_add(1, Ordering::Relaxed);
    // Decrement `queued` even if this future is dropped while waiting.
    struct Queued<'a>(&'a std::sync::atomic::AtomicU64);
    impl Drop for Queued<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let q = Queued(&c.queued);
    let taken = state.slots.take(&prompt, prompt_tokens).await;
    drop(q);
    let now = c.active.fetch_add(1, Ordering::Relaxed) + 1;
    c.peak_concurrency.fetch_max(now, Ordering::Relaxed);
    (
        SlotGuard {
            state: state.clone(),
            index: taken.index,
            memory: prompt,
            _permit: taken.permit,
        },
        taken.cached_tokens,
    )
}

/// One generation: a slot held from the end of its queueing to its end.
pub(super) struct Generation {
    state: Arc<SimState>,
    tracker: Option<Tracker>,
    slot: Option<SlotGuard>,
    /// The model in use (not unloaded to make room until the answer ends).
    model: Option<super::load::InUse>,
    pub(super) stream: bool,
    seed: u64,
    n: u32,
    finish: Finish,
    i: u32,
    interval: Duration,
    decode_start: Instant,
    faults: Faults,
    /// Arrivals watch and this request's own arrival (interrupt mode).
    interrupt: Option<(watch::Receiver<u64>, u64)>,
    log_id: u64,
    timings: Timings,
    ended: bool,
}

impl Generation {
    /// Load the model if needed, wait for a slot, prefill. Returns when the
    /// first token is due.
    pub(super) async fn start(
        state: &Arc<SimState>,
        ctx: ReqCtx,
        tracker: Tracker,
        ask: Ask,
    ) -> Generation {
        let faults = state.faults();
        let cfg = &state.config;
        let t = Instant::now();
        let index = state.models.index(&ask.model).unwrap_or(0);
        let (model, started) = state.models.use_model(index).await;
        if started {
            state.counters.loads.fetch_add(1, Ordering::Relaxed);
        }
        let load = t.elapsed();
        let prompt_tokens = text::count_tokens(&ask.prompt);
        let (slot, cached_tokens) = take_slot(state, Blocks::of(&ask.prompt), prompt_tokens).await;
        let queue = tracker.arrived.elapsed();
        let prefilled = prompt_tokens - cached_tokens;
        let c = &state.counters;
        c.cached_prompt_tokens
            .fetch_add(u64::from(cached_tokens), Ordering::Relaxed);
        c.prefilled_tokens
            .fetch_add(u64::from(prefilled), Ordering::Relaxed);
        let prefill = cfg.ttft
            + cfg
                .prefill_tps
                .map(|r| Duration::from_secs_f64(f64::from(prefilled) / r))
                .unwrap_or_default();
        let t = Instant::now();
        tokio::time::sleep(prefill).await;
        let (n, finish) = match ask.max_tokens {
            Some(n) => (n, Finish::Length),
            None => (cfg.default_tokens, Finish::Stop),
        };
        let interrupt =
            (ask.stream && faults.interrupt).then(|| (state.arrivals.subscribe(), ctx.arrival));
        Generation {
            state: state.clone(),
            tracker: Some(tracker),
            slot: Some(slot),
            model: Some(model),
            seed: text::stable_hash(&ask.prompt),
            stream: ask.stream,
            n,
            finish,
            i: 0,
            interval: Duration::from_secs_f64(1.0 / cfg.tokens_per_second),
            decode_start: Instant::now(),
            faults,
            interrupt,
            log_id: ctx.log_id,
            timings: Timings {
                queue,
                load,
                prompt_tokens,
                cached_tokens,
                prefill: t.elapsed(),
                ..Timings::default()
            },
            ended: false,
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt
            .as_ref()
            .is_some_and(|(rx, mine)| *rx.borrow() > *mine)
    }

    /// The next step, at its time. `None` after the end.
    pub(super) async fn next(&mut self) -> Option<Step> {
        if self.ended {
            return None;
        }
        // Checked after every chunk sent, as llama-cpp-python does.
        if self.interrupted() {
            return Some(self.end(Ending::Interrupted));
        }
        if self.i >= self.n {
            return Some(self.end(Ending::Done));
        }
        // Deadline-based pacing: no drift however long each write takes.
        let at = self.decode_start + self.interval * self.i;
        let cut = match &mut self.interrupt {
            Some((rx, mine)) => {
                let mine = *mine;
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => false,
                    r = rx.wait_for(|n| *n > mine) => r.is_ok(),
                }
            }
            None => {
                tokio::time::sleep_until(at).await;
                false
            }
        };
        if cut {
            return Some(self.end(Ending::Interrupted));
        }
        // Stream faults strike when the next token would have come.
        if self.stream
            && self
                .faults
                .error_in_stream_after
                .is_some_and(|k| self.i >= k)
        {
            return Some(self.end(Ending::Error));
        }
        if self.faults.drop_after_tokens.is_some_and(|d| self.i >= d) {
            return Some(self.end(Ending::Drop));
        }
        if self.i == 0 {
            self.state
                .metrics
                .first_token(self.timings.queue + self.timings.prefill);
        }
        let token = text::token(self.seed, self.i);
        if let Some(s) = &mut self.slot {
            s.memory.push(token.trim_end());
        }
        self.i += 1;
        self.state.counters.tokens.fetch_add(1, Ordering::Relaxed);
        Some(Step::Token(token))
    }

    /// Settle the books for how the answer ended, and free the slot.
    fn end(&mut self, how: Ending) -> Step {
        self.ended = true;
        let t = &mut self.timings;
        t.tokens = self.i;
        if self.i > 0 {
            t.decode = self.decode_start.elapsed();
        }
        if let Some(tr) = &self.tracker {
            t.total = tr.arrived.elapsed();
        }
        let timings = *t;
        self.slot = None;
        self.model = None;
        let c = &self.state.counters;
        let tracker = self.tracker.take();
        match how {
            Ending::Done => {
                self.state.metrics.finished(&Phases {
                    queue: timings.queue,
                    prefill: timings.prefill,
                    decode: timings.decode,
                    e2e: timings.total,
                });
                if let Some(tr) = tracker {
                    tr.complete();
                }
                Step::Done(End {
                    finish: self.finish,
                    timings,
                })
            }
            Ending::Interrupted => {
                c.interrupted.fetch_add(1, Ordering::Relaxed);
                self.state.log.interrupted(self.log_id);
                if let Some(tr) = tracker {
                    tr.finish();
                }
                Step::Interrupted
            }
            Ending::Error => {
                c.errors.fetch_add(1, Ordering::Relaxed);
                if let Some(tr) = tracker {
                    tr.finish();
                }
                Step::Error(format!("{FAILURE} mid-stream"))
            }
            // The connection breaks: counted as cancelled, as a client would see it.
            Ending::Drop => Step::Drop,
        }
    }

    /// Generate a whole (non-streamed) answer.
    pub(super) async fn run(mut self) -> Outcome {
        let mut text = String::new();
        loop {
            match self.next().await {
                Some(Step::Token(t)) => text.push_str(&t),
                Some(Step::Done(end)) => {
                    return Outcome {
                        text,
                        end,
                        dropped: false,
                    };
                }
                // Whole answers are not interrupted and carry no stream
                // errors; only a drop remains.
                _ => {
                    let (n, timings) = (self.i, self.timings);
                    return Outcome {
                        text: text::answer(self.seed, self.n.max(n)),
                        end: End {
                            finish: self.finish,
                            timings,
                        },
                        dropped: true,
                    };
                }
            }
        }
    }
}

/// A whole answer.
pub(super) struct Outcome {
    pub(super) text: String,
    pub(super) end: End,
    /// The connection is to break mid-body (`drop_after_tokens`).
    pub(super) dropped: bool,
}

/// How a wire format writes a streamed answer.
pub(super) trait StreamFormat: Send + 'static {
    fn content_type(&self) -> &'static str;
    /// What comes before the first token.
    fn open(&mut self) -> Vec<Bytes>;
    fn token(&mut self, text: &str) -> Bytes;
    /// The normal end. Without `marker` (the `done_without_finish` fault)
    /// the part that says why the answer stopped is left out.
    fn finish(&mut self, end: &End, marker: bool) -> Vec<Bytes>;
    /// An error inside the 200 stream, and the end that follows it.
    fn error(&mut self, message: &str) -> Vec<Bytes>;
    /// What an interrupted stream sends before its connection breaks.
    fn interrupted(&mut self) -> Vec<Bytes> {
        Vec::new()
    }
}

type Chunk = Result<Bytes, io::Error>;

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "simulated drop")
}

/// Stream a generation in `fmt`. The events are produced on their own task
/// into a channel; a closed channel means hyper dropped the body (the
/// client went away), so generation stops at once.
pub(super) async fn stream(
    state: &Arc<SimState>,
    ctx: ReqCtx,
    tracker: Tracker,
    ask: Ask,
    fmt: impl StreamFormat,
) -> Response {
    let start = {
        let state = state.clone();
        async move { Generation::start(&state, ctx, tracker, ask).await }
    };
    if state.faults().early_headers {
        // The 200 head goes out now; the body stays silent through the
        // load, the queue and the prefill (llama-cpp-python, uvicorn).
        stream_from(start, fmt)
    } else {
        let job = start.await;
        stream_from(std::future::ready(job), fmt)
    }
}

/// Relay the generation `start` yields, in `fmt`, once it has started.
fn stream_from(
    start: impl std::future::Future<Output = Generation> + Send + 'static,
    mut fmt: impl StreamFormat,
) -> Response {
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    let content_type = fmt.content_type();
    tokio::spawn(async move {
        let mut job = tokio::select! {
            j = start => j,
            _ = tx.closed() => return,
        };
        let marker = !job.faults.done_without_finish;
        let break_after_done = job.faults.break_after_done;
        for b in fmt.open() {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
        loop {
            let step = tokio::select! {
                s = job.next() => s,
                _ = tx.closed() => return,
            };
            let (bytes, breaks) = match step {
                None => return,
                Some(Step::Token(t)) => (vec![fmt.token(&t)], false),
                Some(Step::Done(end)) => (fmt.finish(&end, marker), break_after_done),
                Some(Step::Error(m)) => (fmt.error(&m), false),
                Some(Step::Interrupted) => (fmt.interrupted(), true),
                Some(Step::Drop) => (Vec::new(), true),
            };
            let last_bytes = !bytes.is_empty();
            for b in bytes {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            if breaks {
                if last_bytes {
                    // Let the last bytes reach the client before the break.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = tx.send(Err(aborted())).await;
                return;
            }
        }
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp.extensions_mut().insert(Streamed);
    resp
}

/// Send the first half of `whole`, then break the connection.
pub(super) fn cut_body(whole: Vec<u8>, content_type: &'static str) -> Response {
    let half = Bytes::copy_from_slice(&whole[..whole.len() / 2]);
    let (tx, mut rx) = mpsc::channel::<Chunk>(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(half)).await;
        // Let the half reach the client before the connection breaks.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let _ = tx.send(Err(aborted())).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(body),
    )
        .into_response()
}

/// Whether `name` is one of the models served.
pub(super) fn serves(state: &SimState, name: &str) -> bool {
    state.models.index(name).is_some()
}
