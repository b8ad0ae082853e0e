//! The scheduler: workers, their slots, and one FIFO queue.
//!
//! All slot accounting happens under one short mutex (no `.await` inside),
//! which makes "claim a slot" atomic and lets a released slot go straight to
//! the oldest waiter that can use it.
//!
//! **Invariant (work conservation).** No request waits while a ready
//! worker that serves its model and API (and that it has not already failed
//! on) has a free slot, with three exceptions, each only ever decided while
//! a particular worker is busy, so that worker's next release re-examines
//! the decision: it cannot outlive the moment that slot frees.
//! - a *hold-back*: every free worker is far slower than a busy one that
//!   will free a slot sooner than the slow one would finish;
//! - an *affinity hold* (strategy `cache_affinity`): the busy worker holds
//!   the request's conversation in its prompt cache, and waiting for it is
//!   expected to cost less than the prefill the cache saves;
//! - a *warm hold* (`prefer_loaded`): the free worker would have to load
//!   the request's model (it is only *available* there), while a busy
//!   worker has it loaded (or loading) and the expected wait there (queue
//!   x learned answer time, plus what is left of its load) is no longer
//!   than the free worker's learned load time; or the free worker is busy
//!   with another model, which a load may evict (see [`cold_admissible`]).
//!
//! To keep this true,
//! every event that can change a decision calls [`Pool::dispatch`]: a slot
//! released, a worker ready or readmitted, ejected, drained or removed, a
//! speed learned, an inventory read or a model loaded or unloaded, and a
//! request enqueued. [`Pool::check_invariant`] states
//! the same rule independently; the randomized tests below check it after
//! every step. A studio's state changes only through [`Pool::transition`],
//! so no change of state can forget to call it.
//!
//! One concept, so one file past the usual size: the scheduler with its
//! invariant and the randomized schedules that check it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::affinity::Hit;
use super::answer::Api;
use super::inventory::Residency;
use super::state::{self, Change, Signal, State, Transition};
use super::worker::{EWMA_ALPHA, WorkerEntry};
use crate::config::Strategy;

/// Prefill rate assumed for a studio never seen prefilling a long prompt
/// (a mid-size model on an M-series Mac), to weigh an affinity hold.
const DEFAULT_PREFILL_PER_S: f64 = 1000.0;

/// What a request needs from a worker.
#[derive(Clone, Debug)]
pub struct Demand {
    /// The names it may be served under: its model, or its alias group.
    pub models: Arc<[String]>,
    pub api: Api,
    pub max_tokens: Option<u64>,
    /// The worker holding the longest cached prefix of its prompt.
    pub affinity: Option<Hit>,
}

impl Demand {
    /// A request for one model name on an API, no affinity.
    #[cfg(test)]
    pub fn model(model: &str, api: Api) -> Demand {
        Demand {
            models: Arc::from(vec![model.to_string()]),
            api,
            max_tokens: None,
            affinity: None,
        }
    }

    fn usable_by(&self, w: &WorkerEntry) -> bool {
        w.serves_any(&self.models).is_some() && w.capable(self.api)
    }
}

/// Answer length assumed before any answer has been seen.
const DEFAULT_TOKENS: f64 = 256.0;

/// Expected completion times within this factor of each other are ties.
const TIE_BAND: f64 = 1.10;
/// ... or within this many milliseconds: noise next to any LLM request.
const TIE_MS: f64 = 5.0;

/// A free worker is held back only when it would finish this many times
/// later than waiting for a faster busy one.
const HOLD_BACK_FACTOR: f64 = 1.5;

/// A request waiting in the queue for a slot.
struct Waiter {
    demand: Demand,
    /// Until when it may wait for the busy worker holding its cache: at
    /// most the prefill time the cache saves (set at the first such hold).
    hold_until: Option<Instant>,
    /// Expected output tokens, for the expected completion time.
    tokens: f64,
    exclude: Vec<Arc<WorkerEntry>>,
    tx: oneshot::Sender<(Arc<WorkerEntry>, Instant, u32)>,
}

struct Sched {
    workers: Vec<Arc<WorkerEntry>>,
    queue: VecDeque<Waiter>,
    rotation: usize,
}

/// The scheduler shared by every request.
pub struct Pool {
    sched: Mutex<Sched>,
    /// Itself, for the timers that end affinity holds.
    me: std::sync::Weak<Pool>,
    /// EWMA of output tokens per streamed answer: the length to expect
    /// when a request sets no `max_tokens`.
    typical_tokens: Mutex<f64>,
    settings: Mutex<QueueSettings>,
    /// Where every change of a studio's state is announced.
    signal: Signal,
    pub retries: AtomicU64,
    /// Requests served by a fallback model (config `fallbacks`).
    pub fallbacks: AtomicU64,
    pub rejected_queue_full: AtomicU64,
    pub rejected_queue_timeout: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
pub struct QueueSettings {
    pub limit: usize,
    pub timeout: Duration,
    pub strategy: Strategy,
    /// Route by where models are loaded (the warm hold).
    pub prefer_loaded: bool,
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
    /// When the slot is expected to free (see [`WorkerEntry::claim`]).
    end: Instant,
    /// Requests the studio had, this one included, when it was claimed.
    pub level: u32,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.pool.release(&self.worker, self.end);
    }
}

/// What the scheduler decides for one request.
enum Pick {
    Take(Arc<WorkerEntry>),
    /// Every usable slot is busy.
    Wait,
    /// Free slots exist only on workers far slower than a busy faster one.
    HoldBack,
    /// The busy worker holding its prompt cache is worth waiting for, for
    /// at most this long (the prefill the cache saves).
    HoldForCache(Duration),
}

impl Pool {
    pub fn new(settings: QueueSettings) -> Arc<Pool> {
        Arc::new_cyclic(|me| Pool {
            me: me.clone(),
            sched: Mutex::new(Sched {
                workers: Vec::new(),
                queue: VecDeque::new(),
                rotation: 0,
            }),
            typical_tokens: Mutex::new(DEFAULT_TOKENS),
            settings: Mutex::new(settings),
            signal: Signal::new(),
            retries: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            rejected_queue_full: AtomicU64::new(0),
            rejected_queue_timeout: AtomicU64::new(0),
        })
    }

    /// The one way a studio's state changes (see [`state::apply`]): the
    /// change, if its state allows it, announced; then the queue looked at
    /// again, since a state decides who may take slots.
    pub(crate) fn transition(&self, w: &WorkerEntry, change: Change<'_>) -> Option<Transition> {
        let t = state::apply(w, change, &self.signal)?;
        self.dispatch();
        Some(t)
    }

    /// Where state changes are announced.
    pub(crate) fn signal(&self) -> &Signal {
        &self.signal
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

    /// Does any worker satisfy `f`? (Looks without copying the list.)
    pub fn any_worker(&self, f: impl Fn(&WorkerEntry) -> bool) -> bool {
        self.sched
            .lock()
            .expect("sched lock")
            .workers
            .iter()
            .any(|w| f(w))
    }

    /// Requests waiting for a slot (not those whose client left).
    pub fn queue_depth(&self) -> usize {
        self.sched
            .lock()
            .expect("sched lock")
            .queue
            .iter()
            .filter(|w| !w.tx.is_closed())
            .count()
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

    /// Requests in flight at `w`'s address: its own, and those of an entry
    /// for the same studio that a reload replaced and that still drains.
    pub(crate) fn busy_at(&self, w: &WorkerEntry) -> u64 {
        let s = self.sched.lock().expect("sched lock");
        busy_at_locked(&s, w)
    }

    /// Claim a slot on `w` only if it is ready and nothing is in flight at
    /// its address: a probe holds it so no request reaches the studio
    /// mid-probe.
    pub(crate) fn try_claim_idle(self: &Arc<Self>, w: &Arc<WorkerEntry>) -> Option<SlotGuard> {
        let s = self.sched.lock().expect("sched lock");
        if busy_at_locked(&s, w) != 0 || !matches!(w.state(), State::Ready | State::Draining) {
            return None;
        }
        let (end, level) = w.claim(0.0);
        Some(SlotGuard {
            pool: self.clone(),
            worker: w.clone(),
            end,
            level,
        })
    }

    /// Claim a slot for `model` on a worker not in `exclude`, waiting in the
    /// FIFO queue when every suitable slot is busy.
    pub async fn acquire(
        self: &Arc<Self>,
        demand: &Demand,
        exclude: &[Arc<WorkerEntry>],
        is_retry: bool,
    ) -> Result<SlotGuard, NoSlot> {
        let settings = self.settings();
        let typical = *self.typical_tokens.lock().expect("tokens lock");
        let tokens = demand
            .max_tokens
            .map(|m| (m as f64).min(typical.max(1.0) * 4.0))
            .unwrap_or(typical);
        let rx = {
            let mut s = self.sched.lock().expect("sched lock");
            let has_candidate = s.workers.iter().any(|w| {
                matches!(w.state(), State::Ready | State::Starting)
                    && !excluded(exclude, w)
                    && demand.usable_by(w)
            });
            if !has_candidate {
                return Err(NoSlot::NoCandidate);
            }
            // Take a slot directly only when nobody older is waiting.
            let ahead = if is_retry { 0 } else { s.queue.len() };
            if ahead == 0
                && let Pick::Take(w) = pick(&mut s, demand, tokens, exclude, 0, None, settings)
            {
                let (end, level) = w.claim(tokens);
                return Ok(SlotGuard {
                    pool: self.clone(),
                    worker: w,
                    end,
                    level,
                });
            }
            if !is_retry && s.queue.len() >= settings.limit {
                self.rejected_queue_full.fetch_add(1, Ordering::Relaxed);
                return Err(NoSlot::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let waiter = Waiter {
                demand: demand.clone(),
                hold_until: None,
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
            // The waiters ahead may be unable to use a slot this request
            // can (another model, a hold-back): look again now, or this
            // request could wait with a free slot in front of it.
            dispatch_locked(self, &mut s, settings);
            rx
        };
        match tokio::time::timeout(settings.timeout, rx).await {
            Ok(Ok((w, end, level))) => Ok(SlotGuard {
                pool: self.clone(),
                worker: w,
                end,
                level,
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

    fn release(&self, w: &Arc<WorkerEntry>, end: Instant) {
        let left = w.unclaim(end);
        if left == 0 && w.state() == State::Removed {
            self.prune();
        }
        self.dispatch();
    }

    /// Hand free slots to waiters, oldest first. Called on every event that
    /// can change a scheduling decision (see the module's invariant).
    pub fn dispatch(&self) {
        let settings = self.settings();
        let mut s = self.sched.lock().expect("sched lock");
        dispatch_locked(self, &mut s, settings);
    }

    /// The work-conservation invariant, checked independently of `pick`:
    /// `Err` names the first waiter that waits although a slot it may use
    /// is free and no faster busy worker justifies holding it back.
    #[cfg(test)]
    pub(crate) fn check_invariant(&self) -> Result<(), String> {
        let s = self.sched.lock().expect("sched lock");
        let typical = *self.typical_tokens.lock().expect("tokens lock");
        let prefer_loaded = self.settings().prefer_loaded;
        let mut position = 0;
        for (i, waiter) in s.queue.iter().enumerate() {
            if waiter.tx.is_closed() {
                continue;
            }
            position += 1;
            let serving: Vec<&Arc<WorkerEntry>> = s
                .workers
                .iter()
                .filter(|w| {
                    w.state() == State::Ready
                        && !excluded(&waiter.exclude, w)
                        && waiter.demand.usable_by(w)
                })
                .collect();
            // A warm hold keeps a cold worker out of the waiter's choice.
            let usable: Vec<&Arc<WorkerEntry>> = serving
                .iter()
                .filter(|w| {
                    !prefer_loaded
                        || cold_admissible(w, &serving, &waiter.demand, waiter.tokens, position - 1)
                })
                .copied()
                .collect();
            let several = usable.len() > 1;
            let speed_known = |w: &WorkerEntry| w.learned().expected_ms(typical).is_some();
            // Busy = no free slot, or in slow start with one request out.
            let free: Vec<_> = usable
                .iter()
                .filter(|w| w.has_free_slot() && !(several && !speed_known(w) && w.in_flight() > 0))
                .collect();
            if free.is_empty() {
                continue;
            }
            // An affinity hold waits for a busy worker that holds its
            // cache, within its budget.
            if let Some(hit) = &waiter.demand.affinity
                && waiter.hold_until.is_none_or(|t| Instant::now() < t)
                && usable
                    .iter()
                    .any(|w| *w.id() == *hit.worker && !w.has_free_slot() && w.in_flight() > 0)
            {
                continue;
            }
            let expected = |w: &WorkerEntry| w.learned().expected_ms(waiter.tokens);
            let slowest_free_beaten = free.iter().all(|f| {
                usable.iter().any(|b| {
                    !b.has_free_slot()
                        && b.in_flight() > 0
                        && match (expected(b), expected(f)) {
                            (Some(bt), Some(ft)) => bt < ft,
                            _ => false,
                        }
                })
            });
            if !slowest_free_beaten {
                return Err(format!(
                    "waiter {i} for `{}` waits while {} has a free slot and no faster worker is busy",
                    waiter.demand.models[0],
                    free[0].id()
                ));
            }
        }
        Ok(())
    }
}

fn busy_at_locked(s: &Sched, w: &WorkerEntry) -> u64 {
    s.workers
        .iter()
        .filter(|x| x.upstream.authority() == w.upstream.authority())
        .map(|x| x.in_flight())
        .sum::<u64>()
        .max(w.in_flight())
}

fn excluded(exclude: &[Arc<WorkerEntry>], w: &Arc<WorkerEntry>) -> bool {
    exclude.iter().any(|e| Arc::ptr_eq(e, w))
}

fn dispatch_locked(pool: &Pool, s: &mut Sched, settings: QueueSettings) {
    let mut i = 0;
    while i < s.queue.len() {
        if s.queue[i].tx.is_closed() {
            s.queue.remove(i);
            continue;
        }
        if !s
            .workers
            .iter()
            .any(|w| w.state() == State::Ready && w.has_free_slot())
        {
            break;
        }
        let (demand, exclude) = (s.queue[i].demand.clone(), s.queue[i].exclude.clone());
        let (tokens, hold_until) = (s.queue[i].tokens, s.queue[i].hold_until);
        match pick(s, &demand, tokens, &exclude, i, hold_until, settings) {
            Pick::Take(w) => {
                let waiter = s.queue.remove(i).expect("index in range");
                let (end, level) = w.claim(tokens);
                if waiter.tx.send((w.clone(), end, level)).is_err() {
                    // The waiter gave up a moment ago: take the slot back.
                    w.unclaim(end);
                }
            }
            Pick::HoldBack => i += 1,
            Pick::HoldForCache(budget) => {
                if s.queue[i].hold_until.is_none() {
                    let until = Instant::now() + budget;
                    s.queue[i].hold_until = Some(until);
                    // Nothing else may happen before the budget runs out:
                    // look again then.
                    if let (Ok(rt), Some(me)) =
                        (tokio::runtime::Handle::try_current(), pool.me.upgrade())
                    {
                        rt.spawn(async move {
                            tokio::time::sleep_until(until.into()).await;
                            me.dispatch();
                        });
                    }
                }
                i += 1;
            }
            Pick::Wait => {
                // Drop waiters no worker can ever serve now (all excluded or gone).
                let servable = s.workers.iter().any(|w| {
                    matches!(
                        w.state(),
                        State::Ready | State::Starting | State::Probing | State::Ejected
                    ) && !excluded(&exclude, w)
                        && demand.usable_by(w)
                });
                if servable {
                    i += 1;
                } else {
                    s.queue.remove(i);
                }
            }
        }
    }
}

/// Choose the worker for the waiter at queue position `position`.
///
/// Least expected completion time: among ready workers with a free slot,
/// the lowest learned time scaled by how full the worker is. A free worker
/// much slower than a *busy* faster one is held back while waiting for the
/// fast slot would finish sooner (so a 10x slower studio does not drag the
/// tail); only busy workers can justify it, since only their release wakes
/// the queue again.
fn pick(
    s: &mut Sched,
    demand: &Demand,
    tokens: f64,
    exclude: &[Arc<WorkerEntry>],
    position: usize,
    hold_until: Option<Instant>,
    settings: QueueSettings,
) -> Pick {
    let p = pick_among(s, demand, tokens, exclude, position, hold_until, settings);
    // A request sent where its model must load first: that studio counts
    // as warm from now on, so one load serves the requests that follow
    // instead of a load on every studio at once.
    if let Pick::Take(w) = &p
        && settings.prefer_loaded
        && is_cold(w, demand)
        && let Some(name) = w.serves_any(&demand.models)
    {
        w.inventory.start_load(name);
    }
    p
}

/// The model is only available on `w`: a request there waits for its load.
fn is_cold(w: &WorkerEntry, demand: &Demand) -> bool {
    w.inventory.residency(&demand.models) == Residency::Available
}

/// The shortest expected wait for a slot on a worker that has the model
/// warm, for the waiter at `position`: what is left of a load it started,
/// plus, when it is full (or still learning its speed with a request out),
/// the queue ahead at its learned answer time. `None`: no warm candidate.
fn warm_wait(
    candidates: &[&Arc<WorkerEntry>],
    demand: &Demand,
    tokens: f64,
    position: usize,
) -> Option<Duration> {
    candidates
        .iter()
        .filter(|w| !is_cold(w, demand))
        .map(|w| {
            let answer_ms = w.learned().expected_ms(tokens);
            let free = w.has_free_slot() && (answer_ms.is_some() || w.in_flight() == 0);
            let queue_ms = if free {
                0.0
            } else {
                (position as f64 + 1.0) / w.slots().max(1) as f64 * answer_ms.unwrap_or(0.0)
            };
            w.inventory.loading_left(&demand.models) + Duration::from_secs_f64(queue_ms / 1000.0)
        })
        .min()
}

/// Whether a cold worker `c` (one that would have to load the model) may
/// take the request: when no candidate has the model warm, any idle one
/// (one busy with another model only when every cold one is); else only an
/// idle one whose learned load time is shorter than the wait for a warm
/// slot. Warm workers are always admissible.
pub(crate) fn cold_admissible(
    c: &WorkerEntry,
    candidates: &[&Arc<WorkerEntry>],
    demand: &Demand,
    tokens: f64,
    position: usize,
) -> bool {
    if !is_cold(c, demand) {
        return true;
    }
    match warm_wait(candidates, demand, tokens, position) {
        None => {
            c.in_flight() == 0
                || candidates
                    .iter()
                    .all(|w| w.in_flight() > 0 || !is_cold(w, demand))
        }
        Some(wait) => {
            let name = c.serves_any(&demand.models).unwrap_or_default();
            c.in_flight() == 0 && wait > c.inventory.load_time(name)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn pick_among(
    s: &mut Sched,
    demand: &Demand,
    tokens: f64,
    exclude: &[Arc<WorkerEntry>],
    position: usize,
    hold_until: Option<Instant>,
    settings: QueueSettings,
) -> Pick {
    let strategy = settings.strategy;
    let n = s.workers.len();
    if n == 0 {
        return Pick::Wait;
    }
    let usable: Vec<&Arc<WorkerEntry>> = s
        .workers
        .iter()
        .filter(|w| w.state() == State::Ready && !excluded(exclude, w) && demand.usable_by(w))
        .collect();
    let candidates: Vec<&Arc<WorkerEntry>> = if settings.prefer_loaded {
        usable
            .iter()
            .filter(|w| cold_admissible(w, &usable, demand, tokens, position))
            .copied()
            .collect()
    } else {
        usable
    };
    if candidates.is_empty() {
        return Pick::Wait;
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
            .filter(|w| w.has_free_slot())
            .min_by_key(|w| rotated(w))
            .map_or(Pick::Wait, |w| Pick::Take((*w).clone()));
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
    let lat = |i: usize| match expected[i] {
        Some(l) => l.max(0.001),
        None if best_known.is_finite() => best_known.max(0.001),
        None => 1.0,
    };
    let several = candidates.len() > 1;
    // Slow start: while a worker's speed is unknown (new, or just
    // readmitted) it gets one request at a time, so a studio far slower
    // than the rest costs one slow answer, not a slot-full of them.
    let free: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let w = candidates[i];
            w.has_free_slot() && !(several && expected[i].is_none() && w.in_flight() >= 1)
        })
        .collect();
    let mut best: Option<(usize, f64, usize)> = None;
    for &i in &free {
        let w = candidates[i];
        let score = lat(i) * (1.0 + w.in_flight() as f64 / w.slots() as f64) / w.cfg.weight;
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
            best = Some((i, score, order));
        }
    }
    if strategy == Strategy::CacheAffinity
        && let Some(hit) = &demand.affinity
        && let Some(a) = candidates.iter().position(|w| *w.id() == *hit.worker)
    {
        // The studio holding the conversation's cache: take it when free,
        // wait for it when that costs less than the prefill it saves.
        if free.contains(&a) {
            return Pick::Take(candidates[a].clone());
        }
        let within_budget = hold_until.is_none_or(|t| Instant::now() < t);
        if within_budget && let Some(budget) = worth_waiting_for(candidates[a], hit.tokens) {
            return Pick::HoldForCache(budget);
        }
    }
    let Some((chosen, _, _)) = best else {
        return Pick::Wait;
    };
    if hold_back(&candidates, &expected, &free, position) {
        return Pick::HoldBack;
    }
    Pick::Take(candidates[chosen].clone())
}

/// A busy worker holding `cached` tokens of the prompt: the prefill time
/// its cache saves, when waiting for its first slot to free (as expected
/// from the answers it is giving) is cheaper than that. The wait is then
/// capped at the saving, so a wrong guess costs at most what a miss would.
fn worth_waiting_for(w: &WorkerEntry, cached: u32) -> Option<Duration> {
    if w.has_free_slot() || w.in_flight() == 0 {
        return None;
    }
    let wait = w.soonest_free()?;
    let rate = match w.learned().prefill_per_second {
        r if r > 0.0 => r,
        _ => DEFAULT_PREFILL_PER_S,
    };
    let saved = Duration::from_secs_f64(f64::from(cached) / rate);
    (wait < saved).then_some(saved)
}

/// Hold-back: every free worker (speeds known) would finish far later than
/// waiting for a slot on a faster *busy* one. Only busy workers count: a
/// free fast one would have been chosen, and only a busy one's release
/// wakes the queue again.
fn hold_back(
    candidates: &[&Arc<WorkerEntry>],
    expected: &[Option<f64>],
    free: &[usize],
    position: usize,
) -> bool {
    let mut fastest_free = f64::INFINITY;
    for &i in free {
        match expected[i] {
            Some(l) => fastest_free = fastest_free.min(l.max(0.001)),
            // Unknown speed: it may be fast; try it.
            None => return false,
        }
    }
    let faster_busy: Vec<(u64, f64)> = (0..candidates.len())
        .filter(|i| !free.contains(i))
        .filter_map(|i| {
            let w = candidates[i];
            let l = expected[i]?.max(0.001);
            (!w.has_free_slot() && w.in_flight() > 0 && l < fastest_free).then_some((w.slots(), l))
        })
        .collect();
    if faster_busy.is_empty() {
        return false;
    }
    let rate: f64 = faster_busy.iter().map(|(slots, l)| *slots as f64 / l).sum();
    let fastest = faster_busy
        .iter()
        .map(|(_, l)| *l)
        .fold(f64::INFINITY, f64::min);
    let wait_instead = (position as f64 + 1.0) / rate + fastest;
    fastest_free > wait_instead * HOLD_BACK_FACTOR
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::inventory::ModelInfo;
    use crate::config::Worker;
    use crate::studio::StudioKind;
    use proptest::prelude::{
        ProptestConfig, Strategy as Gen, TestCaseError, prop, prop_oneof, proptest,
    };

    fn settings() -> QueueSettings {
        QueueSettings {
            limit: 1000,
            timeout: Duration::from_secs(600),
            strategy: Strategy::LeastTime,
            prefer_loaded: true,
        }
    }

    /// A ready worker (ready through the pool, as the prober makes it).
    fn worker(pool: &Pool, i: usize, slots: u32, model: &str) -> Arc<WorkerEntry> {
        let w = WorkerEntry::new(
            Worker {
                id: format!("w{i}"),
                host: "127.0.0.1".into(),
                port: 1,
                kind: StudioKind::Openai,
                model: model.into(),
                max_concurrent_requests: crate::config::Slots::Max(slots),
                enabled: true,
                weight: 1.0,
                api_key: None,
                members: vec![],
            },
            None,
        );
        pool.transition(&w, Change::Admit);
        Arc::new(w)
    }

    /// Let every spawned task run until it blocks.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn back_to_back_requests_never_wait_with_idle_workers_of_very_different_speeds() {
        // The stall that hung `wrk -c1`: a tie (within 5 ms) rotated to a
        // worker 50x slower than another *idle* one, and the hold-back rule
        // then parked the request with nothing in flight to wake it.
        let pool = Pool::new(settings());
        let ws: Vec<_> = (0..3).map(|i| worker(&pool, i, 4, "m")).collect();
        for w in &ws {
            pool.add(w.clone());
        }
        ws[0].learn(Duration::from_micros(100), None, 0);
        ws[1].learn(Duration::from_millis(5), None, 0);
        for _ in 0..1000 {
            let g = tokio::time::timeout(
                Duration::from_secs(1),
                pool.acquire(&Demand::model("m", Api::ChatCompletions), &[], false),
            )
            .await
            .expect("a request waited with idle workers")
            .unwrap();
            drop(g);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Arrive {
            model: usize,
            max_tokens: Option<u64>,
        },
        Release(usize),
        Eject(usize),
        Readmit(usize),
        Drain(usize),
        Learn {
            worker: usize,
            latency_us: u64,
            ttft_us: u64,
            tps: u32,
        },
        Remove(usize),
        Add {
            slots: u32,
            model: usize,
        },
        /// The studio's inventory read: each model loaded or only available.
        Inventory {
            worker: usize,
            loaded: [bool; 2],
        },
        /// A load of a model seen taking this long.
        LearnLoad {
            worker: usize,
            model: usize,
            ms: u64,
        },
    }

    fn op() -> impl Gen<Value = Op> {
        prop_oneof![
            4 => (0..2usize, prop::option::of(1..512u64))
                .prop_map(|(model, max_tokens)| Op::Arrive { model, max_tokens }),
            4 => (0..64usize).prop_map(Op::Release),
            1 => (0..6usize).prop_map(Op::Eject),
            1 => (0..6usize).prop_map(Op::Readmit),
            1 => (0..6usize).prop_map(Op::Drain),
            // Speeds from instant to slow, with many near-ties and 100x gaps.
            3 => (0..6usize, prop::sample::select(vec![50u64, 100, 1_000, 5_000, 6_000, 50_000, 2_000_000]),
                  prop::sample::select(vec![0u64, 0, 100, 20_000, 250_000, 3_000_000]),
                  prop::sample::select(vec![0u32, 0, 20, 40, 400]))
                .prop_map(|(worker, latency_us, ttft_us, tps)| Op::Learn { worker, latency_us, ttft_us, tps }),
            1 => (0..6usize).prop_map(Op::Remove),
            1 => (1..5u32, 0..2usize).prop_map(|(slots, model)| Op::Add { slots, model }),
            2 => (0..6usize, prop::array::uniform2(prop::bool::ANY))
                .prop_map(|(worker, loaded)| Op::Inventory { worker, loaded }),
            1 => (0..6usize, 0..2usize, prop::sample::select(vec![1u64, 50, 5_000, 60_000]))
                .prop_map(|(worker, model, ms)| Op::LearnLoad { worker, model, ms }),
        ]
    }

    const MODELS: [&str; 2] = ["m0", "m1"];

    async fn run_schedule(initial: Vec<(u32, usize)>, ops: Vec<Op>) -> Result<(), String> {
        let pool = Pool::new(settings());
        let mut ws: Vec<Arc<WorkerEntry>> = Vec::new();
        for (i, (slots, m)) in initial.into_iter().enumerate() {
            let w = worker(&pool, i, slots, MODELS[m]);
            pool.add(w.clone());
            ws.push(w);
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SlotGuard>();
        let mut held: Vec<SlotGuard> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op.clone() {
                Op::Arrive { model, max_tokens } => {
                    let (p, tx) = (pool.clone(), tx.clone());
                    tokio::spawn(async move {
                        let d = Demand {
                            max_tokens,
                            ..Demand::model(MODELS[model], Api::ChatCompletions)
                        };
                        if let Ok(g) = p.acquire(&d, &[], false).await {
                            let _ = tx.send(g);
                        }
                    });
                }
                Op::Release(k) => {
                    if !held.is_empty() {
                        let g = held.swap_remove(k % held.len());
                        drop(g);
                    }
                }
                Op::Eject(k) => {
                    if let Some(w) = ws.get(k % ws.len().max(1))
                        && matches!(w.state(), State::Ready | State::Draining)
                    {
                        pool.transition(
                            w,
                            Change::Eject {
                                reason: crate::balancer::Failure::Timeout,
                                detail: "ejected by the schedule",
                                dead: false,
                            },
                        );
                    }
                }
                Op::Readmit(k) => {
                    if let Some(w) = ws.get(k % ws.len().max(1))
                        && matches!(w.state(), State::Ejected | State::Starting)
                    {
                        w.forget_speed();
                        pool.transition(w, Change::Admit);
                    }
                }
                Op::Drain(k) => {
                    if let Some(w) = ws.get(k % ws.len().max(1))
                        && w.state() == State::Ready
                    {
                        pool.transition(w, Change::Drain(true));
                    }
                }
                Op::Learn {
                    worker,
                    latency_us,
                    ttft_us,
                    tps,
                } => {
                    if let Some(w) = ws.get(worker % ws.len().max(1)) {
                        w.learn(Duration::from_micros(latency_us), None, 0);
                        if ttft_us > 0 {
                            w.learn_ttft(Duration::from_micros(ttft_us));
                        }
                        if tps > 0 {
                            w.learn_rate(f64::from(tps));
                        }
                        pool.dispatch();
                    }
                }
                Op::Remove(k) => {
                    if !ws.is_empty() {
                        let w = ws.remove(k % ws.len());
                        pool.transition(&w, Change::Remove);
                        pool.prune();
                    }
                }
                Op::Add { slots, model } => {
                    let w = worker(&pool, 100 + step, slots, MODELS[model]);
                    pool.add(w.clone());
                    pool.dispatch();
                    ws.push(w);
                }
                Op::Inventory { worker, loaded } => {
                    if let Some(w) = ws.get(worker % ws.len().max(1)) {
                        w.set_models(MODELS.iter().map(|m| m.to_string()).collect());
                        w.inventory.set(
                            MODELS
                                .iter()
                                .zip(loaded)
                                .map(|(m, l)| ModelInfo {
                                    name: m.to_string(),
                                    state: if l {
                                        Residency::Loaded
                                    } else {
                                        Residency::Available
                                    },
                                    size_bytes: None,
                                    context_length: None,
                                    expires_at: None,
                                    load_ms: None,
                                })
                                .collect(),
                        );
                        pool.dispatch();
                    }
                }
                Op::LearnLoad { worker, model, ms } => {
                    if let Some(w) = ws.get(worker % ws.len().max(1)) {
                        w.inventory.loaded(MODELS[model], Duration::from_millis(ms));
                        pool.dispatch();
                    }
                }
            }
            settle().await;
            while let Ok(g) = rx.try_recv() {
                held.push(g);
            }
            pool.check_invariant()
                .map_err(|e| format!("after step {step} ({op:?}): {e}"))?;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

        /// Random arrivals, answers from instant to slow (releases in any
        /// order), ejections, readmissions, drains, reloads, models loaded
        /// and unloaded with load times from instant to a minute: after
        /// every step no request waits while a slot it may use is free,
        /// unless a faster busy worker, or a busy one with its model warm,
        /// justifies the wait.
        #[test]
        fn no_request_waits_while_a_usable_slot_is_free(
            initial in prop::collection::vec((1..5u32, 0..2usize), 1..5),
            ops in prop::collection::vec(op(), 1..120),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(run_schedule(initial, ops)).map_err(TestCaseError::fail)?;
        }
    }
}
