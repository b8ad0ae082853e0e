//! How one attempt on a studio ends, settled in one place.
//!
//! An attempt is one try of a request on one studio: it holds a slot there
//! and, once the studio answers, a connection. Two moments teach the
//! balancer something, and both are here:
//! - the first byte ([`Attempt::first_byte`]): the time to first token, and
//!   with it the studio's learned limit;
//! - the end ([`Attempt::settle`], the one place an end is settled, for
//!   whole answers in `proxy` and streamed ones in `relay` alike): the
//!   studio's health, its learned speed, the metrics, the connection (back
//!   to the pool only after a whole exchange, discarded otherwise) and,
//!   last, the slot, so the request it goes to next is routed on what this
//!   one taught.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::Shared;
use super::health::{self, Verdict};
use super::limit;
use super::pool::SlotGuard;
use super::request::Job;
use super::state::Failure;
use super::upstream::{Conn, SendError};
use super::worker::WorkerEntry;
use crate::config::{BalancerSettings, Strategy};

/// Prompt tokens per second assumed where a studio's rate is not known yet:
/// on the slow side, so a long prompt is not taken for queueing.
const ASSUMED_PREFILL_PER_S: f64 = 1000.0;

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Ending {
    /// No response head: the connect or the request failed.
    Unsent(SendError),
    /// No first byte within the first-token timeout.
    NoFirstByte(Duration),
    /// The studio was found dead (and counted so) while this request
    /// waited for its first byte: why.
    FoundDead(String),
    /// A 5xx answer.
    ServerError(StatusCode),
    /// The answer broke, stalled or ended incomplete: as what, and why.
    Cut(Failure, String),
    /// The studio answered that it has no such endpoint.
    Lacks(String),
    /// A complete answer.
    Complete(Answer),
    /// A 4xx, or an error object under a 200: the request's own answer,
    /// relayed as is and never held against the studio.
    ClientError,
    /// The client went away mid-stream.
    Cancelled,
}

/// What a complete answer tells about the studio's speed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer {
    /// A whole answer, with its output tokens when it says.
    Whole { tokens: Option<u64> },
    /// A streamed answer: the data events passed through.
    Streamed { events: u64 },
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::Unsent(e) => write!(f, "{e}"),
            Ending::NoFirstByte(t) => write!(f, "no first byte within {t:?}"),
            Ending::FoundDead(why) => write!(
                f,
                "worker found dead while waiting for its first byte ({why})"
            ),
            Ending::ServerError(status) => write!(f, "answered {status}"),
            Ending::Cut(_, detail) | Ending::Lacks(detail) => f.write_str(detail),
            Ending::Complete(_) => f.write_str("complete"),
            Ending::ClientError => f.write_str("answered with a client error"),
            Ending::Cancelled => f.write_str("the client went away"),
        }
    }
}

/// One try of a request on one studio.
pub(crate) struct Attempt {
    shared: Arc<Shared>,
    job: Arc<Job>,
    /// The request's snapshot of the settings.
    settings: Arc<BalancerSettings>,
    slot: SlotGuard,
    conn: Option<Conn>,
    sent_at: Instant,
    first_byte_at: Instant,
    ttft: Duration,
    /// When the response head arrived (the studio's health clock, ms).
    head_ms: u64,
    /// Its answer is being streamed to the client.
    streaming: bool,
}

impl Attempt {
    pub fn new(
        shared: Arc<Shared>,
        job: Arc<Job>,
        settings: Arc<BalancerSettings>,
        slot: SlotGuard,
    ) -> Attempt {
        slot.worker
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        Attempt {
            shared,
            job,
            settings,
            slot,
            conn: None,
            sent_at: now,
            first_byte_at: now,
            ttft: Duration::ZERO,
            head_ms: 0,
            streaming: false,
        }
    }

    pub fn worker(&self) -> &Arc<WorkerEntry> {
        &self.slot.worker
    }

    pub fn job(&self) -> &Arc<Job> {
        &self.job
    }

    pub fn settings(&self) -> &BalancerSettings {
        &self.settings
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// When the studio's first byte arrived.
    pub fn first_byte_at(&self) -> Instant {
        self.first_byte_at
    }

    /// The request goes out now: the window in which the studio must show
    /// progress starts.
    pub fn sending(&mut self) {
        self.worker().health.progress();
        self.sent_at = Instant::now();
    }

    /// The response head came (at `head_ms`) on `conn`, held to the end.
    pub fn answered(&mut self, conn: Conn, head_ms: u64) {
        self.conn = Some(conn);
        self.head_ms = head_ms;
    }

    /// The first byte of a non-5xx answer: the time to first token, and
    /// from it how many requests the studio really runs at once.
    pub fn first_byte(&mut self) {
        let w = self.slot.worker.clone();
        health::on_first_byte(&w);
        self.first_byte_at = Instant::now();
        self.ttft = self.first_byte_at - self.sent_at;
        // The first answer after a cold start teaches the load time, not
        // the studio's speed.
        let loaded = w
            .serves_any(&self.job.demand.models)
            .is_some_and(|m| w.inventory.first_byte(m, self.ttft, w.learned().ttft_ms));
        if !loaded {
            w.learn_ttft(self.ttft);
        }
        if self.job.api.generates() {
            self.learn_limit(&w);
        }
        self.shared.metrics.ttft.observe(self.job.started.elapsed());
    }

    /// The answer streams to the client from here: the studio speaks this
    /// API and now holds the prompt in its cache.
    pub fn streaming(&mut self) {
        self.streaming = true;
        self.worker().learn_capability(self.job.api, true);
        self.learn_cache();
    }

    /// Settle how the attempt ended: the studio's health, what it taught,
    /// the metrics, the connection, and last the slot. `Some` is what a
    /// request that failed before reaching the client does next; `None`
    /// when it was answered (or its client left).
    pub fn settle(mut self, ending: Ending) -> Option<Verdict> {
        let w = self.slot.worker.clone();
        // The connection goes back to the pool only after a whole exchange:
        // any other ending leaves it mid-answer, so it is discarded (and
        // closes once the answer's body is dropped too).
        let conn = self.conn.take();
        match (&ending, conn) {
            (Ending::Complete(_) | Ending::ClientError | Ending::Lacks(_), Some(c)) => {
                w.upstream.put_back(c, self.streaming);
            }
            (_, c) => drop(c),
        }
        let core = &self.shared.core;
        let verdict = match ending {
            Ending::Unsent(e) => Some(health::on_send_error(core, &w, &e)),
            Ending::NoFirstByte(_) => {
                health::on_first_byte_timeout(core, &w, &ending.to_string());
                Some(Verdict::TryAnother)
            }
            // Whoever found it dead counted it.
            Ending::FoundDead(_) => Some(Verdict::TryAnother),
            Ending::ServerError(status) => {
                health::on_status_5xx(core, &w, status);
                Some(Verdict::TryAnother)
            }
            Ending::Cut(reason, detail) => {
                health::on_cut_answer(core, &w, reason, &detail);
                Some(Verdict::TryAnother)
            }
            Ending::Lacks(_) => {
                // Not a failure: this studio does not speak this API.
                // Remember it, and ask another.
                w.learn_capability(self.job.api, false);
                tracing::info!(
                    worker = w.id(),
                    path = self.job.api.path(),
                    "studio lacks this endpoint; not asking it again"
                );
                Some(Verdict::Lacks)
            }
            Ending::Complete(answer) => {
                self.complete(&w, answer);
                None
            }
            Ending::ClientError => {
                w.counters.client_errors.fetch_add(1, Ordering::Relaxed);
                None
            }
            Ending::Cancelled => {
                w.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        // Last: the slot, and with it a waiter's turn.
        drop(self.slot);
        verdict
    }

    /// A complete answer: the streaks end, and its speed is learned.
    fn complete(&self, w: &WorkerEntry, answer: Answer) {
        w.counters.successes.fetch_add(1, Ordering::Relaxed);
        health::on_good_answer(w);
        let total = self.job.started.elapsed();
        self.shared.metrics.request_duration.observe(total);
        match answer {
            Answer::Whole { tokens } => {
                w.learn_capability(self.job.api, true);
                // A whole answer's generation time is its time minus the
                // studio's first byte (roughly its prompt time).
                let took = self.sent_at.elapsed();
                match tokens {
                    Some(t) => w.learn(took, Some(took.saturating_sub(self.ttft)), t),
                    None => w.learn(took, None, 0),
                }
                self.learn_cache();
            }
            Answer::Streamed { events } => {
                // Role, finish and usage events are not tokens.
                let tokens = events.saturating_sub(3);
                w.counters
                    .tokens
                    .fetch_sub(events - tokens, Ordering::Relaxed);
                self.shared.pool().learn_tokens(tokens);
                w.learn(total, Some(self.first_byte_at.elapsed()), tokens);
                w.note_streamed(self.head_ms);
            }
        }
    }

    /// A first token tells how many requests the studio really runs at once.
    fn learn_limit(&self, w: &WorkerEntry) {
        let rate = match w.learned().prefill_per_second {
            r if r > 0.0 => r,
            _ => ASSUMED_PREFILL_PER_S,
        };
        let prefill = Duration::from_secs_f64(f64::from(self.job.uncached_tokens(w)) / rate);
        let answer = Some(w.learned().latency_ms)
            .filter(|ms| *ms > 0.0)
            .map(|ms| Duration::from_secs_f64(ms / 1000.0));
        match w
            .limit
            .on_first_token(self.ttft, prefill, self.slot.level, answer)
        {
            limit::Change::Raised(n) => {
                tracing::debug!(worker = w.id(), limit = n, "studio takes more at once");
                // A slot more: a waiter may take it now.
                self.shared.pool().dispatch();
            }
            limit::Change::Lowered(n) => {
                tracing::debug!(
                    worker = w.id(),
                    limit = n,
                    "studio queues beyond this; limit lowered"
                );
            }
            limit::Change::None => {}
        }
    }

    /// The studio now holds this prompt in its cache; and how fast it
    /// processed the part it could not have had cached.
    fn learn_cache(&self) {
        let (job, w) = (&self.job, &self.slot.worker);
        let p = &job.parsed.prefixes;
        if !job.api.generates() || p.is_empty() {
            return;
        }
        w.learn_prefill(job.uncached_tokens(w), self.ttft);
        if self.settings.strategy == Strategy::CacheAffinity && job.parsed.worth_caching(job.api) {
            self.shared.affinity.record(p, &w.cfg_id);
            let counter = if job.followed_to(w) {
                &self.shared.metrics.affinity_hits
            } else {
                &self.shared.metrics.affinity_misses
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}
