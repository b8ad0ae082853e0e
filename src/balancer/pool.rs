//! The scheduler: workers, their slots, and one FIFO queue.
//!
//! All slot accounting happens under one short mutex (no `.await` inside),
//! which makes "claim a slot" atomic and lets a released slot go straight to
//! the oldest waiter that can use it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use crate::config::{Strategy, Worker};

/// Client paths the balancer forwards to workers.
pub const PROXIED: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// Where a worker stands with the balancer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Configured, not yet probed.
    Starting = 0,
    /// Takes traffic.
    Ready = 1,
    /// Circuit open: no traffic until a half-open probe passes.
    Ejected = 2,
    /// Half-open: one probe in flight decides readmission.
    Probing = 3,
    /// Removed by a reload: finishes what it has, takes nothing new.
    Removed = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Starting,
            1 => State::Ready,
            2 => State::Ejected,
            3 => State::Probing,
            _ => State::Removed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready => "ready",
            State::Ejected => "ejected",
            State::Probing => "probing",
            State::Removed => "removed",
        }
    }
}

/// Why a worker was ejected or a request failed on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Failure {
    Connect,
    Timeout,
    Status5xx,
    Stream,
    Probe,
}

impl Failure {
    pub const ALL: [Failure; 5] = [
        Failure::Connect,
        Failure::Timeout,
        Failure::Status5xx,
        Failure::Stream,
        Failure::Probe,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Status5xx => "status_5xx",
            Failure::Stream => "stream",
            Failure::Probe => "probe",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Latency figures learned from traffic, as exponentially weighted averages.
#[derive(Clone, Copy, Debug, Default)]
pub struct Learned {
    /// End-to-end request time in ms; 0 until the first success.
    pub latency_ms: f64,
    pub ttft_ms: f64,
    pub tokens_per_second: f64,
}

impl Learned {
    /// Expected time to complete a request of `tokens` output tokens:
    /// TTFT plus generation at the learned rate, else the plain latency
    /// average; `None` while nothing is known.
    pub fn expected_ms(&self, tokens: f64) -> Option<f64> {
        if self.ttft_ms > 0.0 && self.tokens_per_second > 0.0 {
            Some(self.ttft_ms + tokens / self.tokens_per_second * 1000.0)
        } else if self.latency_ms > 0.0 {
            Some(self.latency_ms)
        } else {
            None
        }
    }
}

const EWMA_ALPHA: f64 = 0.2;

/// Answer length assumed before any answer has been seen.
const DEFAULT_TOKENS: f64 = 256.0;

/// Expected completion times within this factor of each other are ties.
const TIE_BAND: f64 = 1.10;
/// ... or within this many milliseconds: noise next to any LLM request.
const TIE_MS: f64 = 5.0;

fn ewma(old: f64, sample: f64) -> f64 {
    if old == 0.0 {
        sample
    } else {
        old + EWMA_ALPHA * (sample - old)
    }
}

/// Per-worker counters (monotonic).
#[derive(Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub client_errors: AtomicU64,
    pub cancelled: AtomicU64,
    pub failures: [AtomicU64; 5],
    pub ejections: [AtomicU64; 5],
    pub tokens: AtomicU64,
}

impl Counters {
    pub fn failure(&self, f: Failure) -> u64 {
        self.failures[f.index()].load(Ordering::Relaxed)
    }
    pub fn ejections(&self, f: Failure) -> u64 {
        self.ejections[f.index()].load(Ordering::Relaxed)
    }
}

/// Health bookkeeping, guarded by its own small lock.
#[derive(Debug)]
pub struct Health {
    /// Models the worker's last probe listed, plus the configured one.
    pub models: Vec<String>,
    pub last_reason: Option<Failure>,
    pub last_error: Option<String>,
    pub backoff: Duration,
    pub retry_at: Option<Instant>,
    pub probe_rtt_ms: Option<f64>,
    /// Consecutive 5xx answers on real traffic.
    pub consecutive_5xx: u32,
}

/// One worker as the balancer sees it.
pub struct WorkerEntry {
    pub cfg: Worker,
    /// The worker's own API key, resolved from the keychain or environment.
    pub auth: Option<String>,
    pub base_url: String,
    /// Pre-parsed upstream URLs of the proxied endpoints (no parse per request).
    endpoints: Vec<(&'static str, reqwest::Url)>,
    state: AtomicU8,
    /// Slots in use; only changed under the scheduler lock.
    in_flight: AtomicU64,
    pub counters: Counters,
    pub learned: Mutex<Learned>,
    pub health: Mutex<Health>,
    /// Bumped on every ejection so requests waiting for a first byte here
    /// can move on at once.
    pub ejected: watch::Sender<u64>,
}

impl WorkerEntry {
    pub fn new(cfg: Worker, auth: Option<String>) -> WorkerEntry {
        let (ejected, _) = watch::channel(0);
        WorkerEntry {
            auth,
            endpoints: PROXIED
                .iter()
                .filter_map(|p| {
                    reqwest::Url::parse(&format!("{}{p}", cfg.base_url()))
                        .ok()
                        .map(|u| (*p, u))
                })
                .collect(),
            base_url: cfg.base_url(),
            state: AtomicU8::new(State::Starting as u8),
            in_flight: AtomicU64::new(0),
            counters: Counters::default(),
            learned: Mutex::new(Learned::default()),
            health: Mutex::new(Health {
                models: vec![cfg.model.clone()],
                last_reason: None,
                last_error: None,
                backoff: Duration::ZERO,
                retry_at: None,
                probe_rtt_ms: None,
                consecutive_5xx: 0,
            }),
            ejected,
            cfg,
        }
    }

    /// The upstream URL for a client path.
    pub fn endpoint(&self, path: &str) -> reqwest::Url {
        match self.endpoints.iter().find(|(p, _)| *p == path) {
            Some((_, u)) => u.clone(),
            None => {
                reqwest::Url::parse(&format!("{}{path}", self.base_url)).expect("valid worker URL")
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.cfg.id
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub(super) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn slots(&self) -> u64 {
        u64::from(self.cfg.max_concurrent_requests)
    }

    pub fn learned(&self) -> Learned {
        *self.learned.lock().expect("learned lock")
    }

    pub fn serves(&self, model: &str) -> bool {
        self.health
            .lock()
            .expect("health lock")
            .models
            .iter()
            .any(|m| m == model)
    }

    pub fn models(&self) -> Vec<String> {
        self.health.lock().expect("health lock").models.clone()
    }

    /// Record the time to first byte of a streamed answer, as soon as it is
    /// known: routing learns a new studio's speed within its first answer.
    pub fn learn_ttft(&self, ttft: Duration) {
        let mut l = self.learned.lock().expect("learned lock");
        l.ttft_ms = ewma(l.ttft_ms, ttft.as_secs_f64() * 1000.0);
    }

    /// Record a streaming rate measured part-way through an answer.
    pub fn learn_rate(&self, tokens_per_second: f64) {
        if tokens_per_second.is_finite() && tokens_per_second > 0.0 {
            let mut l = self.learned.lock().expect("learned lock");
            l.tokens_per_second = ewma(l.tokens_per_second, tokens_per_second);
        }
    }

    /// Record a finished request's figures.
    pub fn learn(&self, latency: Duration, ttft: Option<Duration>, tokens: u64) {
        let mut l = self.learned.lock().expect("learned lock");
        let ms = latency.as_secs_f64() * 1000.0;
        l.latency_ms = ewma(l.latency_ms, ms);
        if let Some(t) = ttft {
            let t_ms = t.as_secs_f64() * 1000.0;
            let gen_s = (ms - t_ms) / 1000.0;
            if tokens > 1 && gen_s > 0.0 {
                l.tokens_per_second = ewma(l.tokens_per_second, (tokens - 1) as f64 / gen_s);
            }
        }
    }

    pub fn count_failure(&self, f: Failure) {
        self.counters.failures[f.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// A request waiting in the queue for a slot.
struct Waiter {
    model: Arc<str>,
    /// Expected output tokens, for the expected completion time.
    tokens: f64,
    exclude: Vec<Arc<WorkerEntry>>,
    tx: oneshot::Sender<Arc<WorkerEntry>>,
}

struct Sched {
    workers: Vec<Arc<WorkerEntry>>,
    queue: VecDeque<Waiter>,
    rotation: usize,
}

/// The scheduler shared by every request.
pub struct Pool {
    sched: Mutex<Sched>,
    /// EWMA of output tokens per streamed answer: the length to expect
    /// when a request sets no `max_tokens`.
    typical_tokens: Mutex<f64>,
    settings: Mutex<QueueSettings>,
    pub retries: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_queue_timeout: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
pub struct QueueSettings {
    pub limit: usize,
    pub timeout: Duration,
    pub strategy: Strategy,
}

/// Why no slot could be had.
#[derive(Debug, PartialEq, Eq)]
pub enum NoSlot {
    /// No ready or starting worker serves this model (excluded ones aside).
    NoCandidate,
    QueueFull,
    QueueTimeout,
}

/// A claimed slot. Dropping it frees the slot and hands it to the queue.
pub struct SlotGuard {
    pool: Arc<Pool>,
    pub worker: Arc<WorkerEntry>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.pool.release(&self.worker);
    }
}

impl Pool {
    pub fn new(settings: QueueSettings) -> Arc<Pool> {
        Arc::new(Pool {
            sched: Mutex::new(Sched {
                workers: Vec::new(),
                queue: VecDeque::new(),
                rotation: 0,
            }),
            typical_tokens: Mutex::new(DEFAULT_TOKENS),
            settings: Mutex::new(settings),
            retries: AtomicU64::new(0),
            rejected_queue_full: AtomicU64::new(0),
            rejected_queue_timeout: AtomicU64::new(0),
        })
    }

    /// Record the length of a finished streamed answer.
    pub fn learn_tokens(&self, tokens: u64) {
        if tokens > 0 {
            let mut t = self.typical_tokens.lock().expect("tokens lock");
            *t += EWMA_ALPHA * (tokens as f64 - *t);
        }
    }

    pub fn set_settings(&self, s: QueueSettings) {
        *self.settings.lock().expect("settings lock") = s;
    }

    fn settings(&self) -> QueueSettings {
        *self.settings.lock().expect("settings lock")
    }

    /// Every worker the pool knows, removed ones still draining included.
    pub fn workers(&self) -> Vec<Arc<WorkerEntry>> {
        self.sched.lock().expect("sched lock").workers.clone()
    }

    pub fn queue_depth(&self) -> usize {
        self.sched.lock().expect("sched lock").queue.len()
    }

    pub fn add(&self, w: Arc<WorkerEntry>) {
        self.sched.lock().expect("sched lock").workers.push(w);
    }

    /// Forget workers that are removed and idle.
    pub fn prune(&self) {
        self.sched
            .lock()
            .expect("sched lock")
            .workers
            .retain(|w| !(w.state() == State::Removed && w.in_flight() == 0));
    }

    /// Claim a slot for `model` on a worker not in `exclude`, waiting in the
    /// FIFO queue when every suitable slot is busy.
    pub async fn acquire(
        self: &Arc<Self>,
        model: &str,
        max_tokens: Option<u64>,
        exclude: &[Arc<WorkerEntry>],
        is_retry: bool,
    ) -> Result<SlotGuard, NoSlot> {
        let settings = self.settings();
        let typical = *self.typical_tokens.lock().expect("tokens lock");
        let tokens = max_tokens
            .map(|m| (m as f64).min(typical.max(1.0) * 4.0))
            .unwrap_or(typical);
        let rx = {
            let mut s = self.sched.lock().expect("sched lock");
            let has_candidate = s.workers.iter().any(|w| {
                matches!(w.state(), State::Ready | State::Starting)
                    && !exclude.iter().any(|e| Arc::ptr_eq(e, w))
                    && w.serves(model)
            });
            if !has_candidate {
                return Err(NoSlot::NoCandidate);
            }
            // Only take a slot directly when nobody older is waiting for it.
            let ahead = if is_retry { 0 } else { s.queue.len() };
            if ahead == 0
                && let Some(w) = pick(&mut s, model, tokens, exclude, 0, settings.strategy)
            {
                w.in_flight.fetch_add(1, Ordering::Relaxed);
                return Ok(SlotGuard {
                    pool: self.clone(),
                    worker: w,
                });
            }
            if !is_retry && s.queue.len() >= settings.limit {
                self.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(NoSlot::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let waiter = Waiter {
                model: Arc::from(model),
                tokens,
                exclude: exclude.to_vec(),
                tx,
            };
            // A retry already waited its turn once: it goes first.
            if is_retry {
                s.queue.push_front(waiter);
            } else {
                s.queue.push_back(waiter);
            }
            rx
        };
        match tokio::time::timeout(settings.timeout, rx).await {
            Ok(Ok(w)) => Ok(SlotGuard {
                pool: self.clone(),
                worker: w,
            }),
            // The sender was dropped: the worker set changed under us and the
            // waiter was discarded as unservable.
            Ok(Err(_)) => Err(NoSlot::NoCandidate),
            Err(_) => {
                self.rejected_queue_timeout.fetch_add(1, Ordering::Relaxed);
                // Our waiter may have been handed a slot just now; if so the
                // dropped receiver returns it (see `dispatch`). Sweep closed ones.
                self.dispatch();
                Err(NoSlot::QueueTimeout)
            }
        }
    }

    fn release(&self, w: &Arc<WorkerEntry>) {
        let left = w.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0 && w.state() == State::Removed {
            self.prune();
        }
        self.dispatch();
    }

    /// Hand free slots to waiters, oldest first. Called whenever a slot
    /// frees or a worker becomes ready.
    pub fn dispatch(&self) {
        let strategy = self.settings().strategy;
        let mut s = self.sched.lock().expect("sched lock");
        let mut i = 0;
        while i < s.queue.len() {
            if s.queue[i].tx.is_closed() {
                s.queue.remove(i);
                continue;
            }
            if !s
                .workers
                .iter()
                .any(|w| w.state() == State::Ready && w.in_flight() < w.slots())
            {
                break;
            }
            let (model, exclude) = (s.queue[i].model.clone(), s.queue[i].exclude.clone());
            let tokens = s.queue[i].tokens;
            let Some(w) = pick(&mut s, &model, tokens, &exclude, i, strategy) else {
                // Drop waiters no worker can ever serve now (all excluded or gone).
                let servable = s.workers.iter().any(|w| {
                    matches!(
                        w.state(),
                        State::Ready | State::Starting | State::Probing | State::Ejected
                    ) && !exclude.iter().any(|e| Arc::ptr_eq(e, w))
                        && w.serves(&model)
                });
                if servable {
                    i += 1;
                } else {
                    s.queue.remove(i);
                }
                continue;
            };
            let waiter = s.queue.remove(i).expect("index in range");
            w.in_flight.fetch_add(1, Ordering::Relaxed);
            if waiter.tx.send(w.clone()).is_err() {
                // The waiter gave up a moment ago: take the slot back.
                w.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Choose the worker for the waiter at queue position `position`.
///
/// Least expected completion time: among ready workers with a free slot,
/// the lowest learned latency scaled by how full the worker is. A worker
/// much slower than the rest is held back while waiting for a fast slot
/// would finish sooner (so a 10x slower studio does not drag the tail).
fn pick(
    s: &mut Sched,
    model: &str,
    tokens: f64,
    exclude: &[Arc<WorkerEntry>],
    position: usize,
    strategy: Strategy,
) -> Option<Arc<WorkerEntry>> {
    let n = s.workers.len();
    if n == 0 {
        return None;
    }
    let candidates: Vec<&Arc<WorkerEntry>> = s
        .workers
        .iter()
        .filter(|w| {
            w.state() == State::Ready
                && !exclude.iter().any(|e| Arc::ptr_eq(e, w))
                && w.serves(model)
        })
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let start = s.rotation % n;
    s.rotation = s.rotation.wrapping_add(1);
    // Visit in rotated order so ties go round.
    let rotated = |w: &Arc<WorkerEntry>| {
        let idx = s
            .workers
            .iter()
            .position(|x| Arc::ptr_eq(x, w))
            .unwrap_or(0);
        (idx + n - start) % n
    };
    if strategy == Strategy::RoundRobin {
        return candidates
            .iter()
            .filter(|w| w.in_flight() < w.slots())
            .min_by_key(|w| rotated(w))
            .map(|w| (*w).clone());
    }
    // Unknown speed (no traffic yet) counts as the best known one, so new
    // workers get tried.
    let expected: Vec<Option<f64>> = candidates
        .iter()
        .map(|w| w.learned().expected_ms(tokens))
        .collect();
    let best_known = expected
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let lat = |w: &WorkerEntry| {
        let i = candidates
            .iter()
            .position(|c| std::ptr::eq(c.as_ref(), w))
            .unwrap_or(0);
        match expected[i] {
            Some(l) => l.max(0.001),
            None if best_known.is_finite() => best_known.max(0.001),
            None => 1.0,
        }
    };
    let mut best: Option<(&Arc<WorkerEntry>, f64, usize)> = None;
    let choice = candidates.len() > 1;
    for w in candidates.iter().copied() {
        if w.in_flight() >= w.slots() {
            continue;
        }
        // Slow start: while a worker's speed is unknown (new, or just
        // readmitted) it gets one request at a time, so a studio far slower
        // than the rest costs one slow answer, not a slot-full of them.
        if choice && w.learned().expected_ms(tokens).is_none() && w.in_flight() >= 1 {
            continue;
        }
        let score = lat(w) * (1.0 + w.in_flight() as f64 / w.slots() as f64) / w.cfg.weight;
        let order = rotated(w);
        let better = match best {
            None => true,
            // Near-equal scores are a tie (latency noise): rotate among them.
            Some((_, b, o)) => {
                let tie = score <= b * TIE_BAND + TIE_MS && b <= score * TIE_BAND + TIE_MS;
                if tie { order < o } else { score < b }
            }
        };
        if better {
            best = Some((w, score, order));
        }
    }
    let (chosen, _, _) = best?;
    // Hold-back rule: compare with waiting for a slot on the others.
    let others: Vec<&&Arc<WorkerEntry>> = candidates
        .iter()
        .filter(|w| !Arc::ptr_eq(w, chosen))
        .collect();
    if !others.is_empty() {
        let rate: f64 = others.iter().map(|w| w.slots() as f64 / lat(w)).sum();
        let fastest = others.iter().map(|w| lat(w)).fold(f64::INFINITY, f64::min);
        let wait_instead = (position as f64 + 1.0) / rate + fastest;
        if lat(chosen) > wait_instead * 1.5 {
            return None;
        }
    }
    Some(chosen.clone())
}
