//! A studio's health: the one policy that decides when it leaves rotation
//! and comes back. (Its state, and the one place it changes, are in
//! `state`; the probes themselves in `probe`.)
//!
//! Real traffic first, and busy is never dead. A studio whose answers are
//! making progress (bytes arriving) is alive, whatever a probe says. A
//! studio with requests in flight gets no HTTP request of Baton's own:
//! single-threaded servers answer them only between generations (and
//! llama-cpp-python ends its generation for them), any Mac under full load
//! answers them slowly, and a long prompt keeps every server silent for
//! tens of seconds before its first token. So:
//! - an idle studio is probed over HTTP every `probe_interval_ms`, holding
//!   one of its slots so no request lands on it mid-probe; once the whole
//!   pool has had no request for [`POOL_IDLE_AFTER`], only every
//!   [`IDLE_PROBE_INTERVAL`] (an app in the menu bar must not wake up
//!   every second for nobody). Traffic is the better probe anyway: a
//!   request that finds a studio dead moves on at once (below), and the
//!   first request after the pause puts the cadence back;
//! - a busy studio that has gone quiet is judged from below HTTP
//!   ([`super::liveness`]): its connections' TCP state, else a bare TCP
//!   connect. Only that, a refused or unreachable connect, or a connect
//!   timeout with nothing heard from the studio, makes it *dead*: it leaves
//!   rotation and the requests waiting on it move elsewhere at once (the
//!   seed-000 black hole goes in about a second, busy or not);
//! - every other reason to leave rotation (a first token later than the
//!   first-token timeout, 5xx answers in a row, answers cut in a row, a
//!   failed probe) stops new traffic but lets requests already waiting on
//!   a live connection wait on: ejecting never kills a request whose studio
//!   is only slow;
//! - a failure on a reused connection is a stale connection, not a sick
//!   studio (the upstream pool retries it fresh and nothing is counted).
//!
//! Ejection opens the circuit; the studio comes back only through a
//! half-open probe (model list and a one-token completion) after an
//! exponential backoff, sent when the studio is idle (or known to answer
//! HTTP while it generates).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Core;
use super::liveness::Peer;
use super::probe::{Probe, discover_apis, probe};
use super::state::{Change, Failure, State};
use super::upstream::SendError;
use super::worker::WorkerEntry;
use crate::studio::ConnectFailure;

/// Consecutive 5xx answers after which a studio is ejected: one can be a
/// bad request the studio chokes on, two in a row is the studio.
const EJECT_AFTER_5XX: u32 = 2;

/// Consecutive cut answers (no complete one in between) that eject a
/// studio. One cut answer is that answer's problem (a client of a
/// single-threaded server interrupted it, say); three in a row is the
/// studio's.
const EJECT_AFTER_CUTS: u32 = 3;

/// Shortest time without a byte from a busy studio that counts as stalled.
/// Tokens arrive every few tens of ms (a 70B model on a Mac: ~100 ms); a
/// studio that sends nothing for most of a second while it has answers to
/// give is worth a look.
const MIN_STALL: Duration = Duration::from_millis(750);

/// A stall is also judged against the studio's own time to first token:
/// three times its usual wait is not a long prompt any more.
const STALL_TTFT_FACTOR: f64 = 3.0;

/// How often a busy studio that has gone quiet is looked at below HTTP
/// (reading its connections' TCP state costs a system call).
const QUIET_CHECK: Duration = Duration::from_millis(250);

/// How often an idle studio's model list is refreshed when its kind has a
/// cheaper health endpoint than the model list.
const MODELS_REFRESH: Duration = Duration::from_secs(30);

/// No request anywhere in the pool for this long: idle studios are probed
/// only every [`IDLE_PROBE_INTERVAL`].
pub(crate) const POOL_IDLE_AFTER: Duration = Duration::from_secs(120);
pub(crate) const IDLE_PROBE_INTERVAL: Duration = Duration::from_secs(30);

/// The pool at rest, as the probers and the request path share it: set
/// while the probers keep their idle cadence, cleared (and the probers
/// woken) by the first request after it.
pub(crate) struct Rest {
    resting: AtomicBool,
    woken: watch::Sender<u64>,
}

impl Rest {
    pub(crate) fn new() -> Rest {
        Rest {
            resting: AtomicBool::new(false),
            woken: watch::Sender::new(0),
        }
    }

    /// A request arrived: one shared read, unless the pool was at rest.
    pub(crate) fn request(&self) {
        if self.resting.load(Ordering::Relaxed) && self.resting.swap(false, Ordering::Relaxed) {
            self.woken.send_modify(|n| *n += 1);
        }
    }
}

/// What one prober knows of the pool's traffic: requests sent to all its
/// studios so far, and since when that number stands.
struct Traffic {
    requests: u64,
    since: Instant,
    woken: watch::Receiver<u64>,
}

impl Traffic {
    fn new(core: &Core) -> Traffic {
        Traffic {
            requests: 0,
            since: Instant::now(),
            woken: core.rest.woken.subscribe(),
        }
    }

    /// Whether the pool has had no request for [`POOL_IDLE_AFTER`] (then
    /// it is marked at rest, so the next request wakes the probers).
    fn idle(&mut self, core: &Core) -> bool {
        let requests = core
            .pool
            .workers()
            .iter()
            .fold(0, |n, w| n + w.counters.requests.load(Ordering::Relaxed));
        if requests != self.requests {
            self.requests = requests;
            self.since = Instant::now();
        }
        let idle = self.since.elapsed() >= POOL_IDLE_AFTER;
        if idle {
            self.woken.borrow_and_update();
            core.rest.resting.store(true, Ordering::Relaxed);
        }
        idle
    }
}

/// How long a busy studio may send nothing before it counts as stalled.
pub(crate) fn stall_window(w: &WorkerEntry) -> Duration {
    let ttft = w.learned().ttft_ms;
    MIN_STALL.max(Duration::from_secs_f64(ttft * STALL_TTFT_FACTOR / 1000.0))
}

/// The studio has requests in flight and bytes are flowing: it is alive.
pub(crate) fn making_progress(w: &WorkerEntry) -> bool {
    w.in_flight() > 0 && w.health.since_progress() < stall_window(w)
}

/// What the request path should do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The studio is in trouble: try another one.
    TryAnother,
    /// The studio is busy, not sick (its other answers flow): try again,
    /// it may be this one or another.
    Congested,
    /// The studio does not offer this API: ask another, count nothing.
    Lacks,
}

/// Something came from the studio lately: its answers flow, or the
/// kernel heard from it on one of its connections.
fn heard_from(w: &WorkerEntry) -> bool {
    making_progress(w) || w.upstream.peers().iter().any(|t| t.peer() == Peer::Heard)
}

/// The request could not get a response head from the studio.
pub(crate) fn on_send_error(core: &Core, w: &WorkerEntry, e: &SendError) -> Verdict {
    match e {
        SendError::Connect(kind, detail) => {
            w.count_failure(Failure::Connect);
            // Refused or unreachable is decisive: nothing is listening.
            let decisive = matches!(
                kind,
                ConnectFailure::Refused
                    | ConnectFailure::NoRoute
                    | ConnectFailure::NetworkUnreachable
                    | ConnectFailure::NotPermitted
                    | ConnectFailure::LocalNetworkDenied
            );
            if decisive || !heard_from(w) {
                eject_dead(
                    core,
                    w,
                    Failure::Connect,
                    &format!("connect {}: {detail}", kind.describe()),
                );
            }
            Verdict::TryAnother
        }
        SendError::ConnectTimeout(t) => {
            if heard_from(w) {
                // Its other answers flow, or its kernel answers: a full
                // backlog or our own burst of connects, not a dead host.
                w.counters.congestion.fetch_add(1, Ordering::Relaxed);
                return Verdict::Congested;
            }
            w.count_failure(Failure::Timeout);
            eject_dead(
                core,
                w,
                Failure::Timeout,
                &format!("connect timed out after {t:?}"),
            );
            Verdict::TryAnother
        }
        SendError::Request(detail) => {
            // A fresh connection accepted the request and closed without
            // a response: count it, let the prober judge the studio.
            w.count_failure(Failure::Stream);
            note_cut(core, w, detail);
            Verdict::TryAnother
        }
    }
}

/// No first byte within the first-token timeout: the studio is too slow
/// (or wedged) for new traffic. Other requests waiting on it keep their
/// own first-token timeouts.
pub(crate) fn on_first_byte_timeout(core: &Core, w: &WorkerEntry, detail: &str) {
    w.count_failure(Failure::Timeout);
    eject(core, w, Failure::Timeout, detail);
}

/// A 5xx answer; two in a row eject.
pub(crate) fn on_status_5xx(core: &Core, w: &WorkerEntry, status: StatusCode) {
    w.count_failure(Failure::Status5xx);
    let n = {
        let mut d = w.health.detail.lock().expect("health lock");
        d.consecutive_5xx += 1;
        d.consecutive_5xx
    };
    if n >= EJECT_AFTER_5XX {
        eject(
            core,
            w,
            Failure::Status5xx,
            &format!("{n} consecutive answers {status}"),
        );
    }
}

/// An answer completed (or a non-5xx status arrived): the streaks end.
pub(crate) fn on_good_answer(w: &WorkerEntry) {
    let mut d = w.health.detail.lock().expect("health lock");
    d.consecutive_5xx = 0;
    d.consecutive_cuts = 0;
}

/// The first byte arrived with a non-5xx status.
pub(crate) fn on_first_byte(w: &WorkerEntry) {
    w.health.detail.lock().expect("health lock").consecutive_5xx = 0;
}

/// An answer was cut after the client got bytes (body broke, ended
/// without a finish, or stalled past the idle timeout).
pub(crate) fn on_cut_answer(core: &Core, w: &WorkerEntry, reason: Failure, detail: &str) {
    w.count_failure(reason);
    note_cut(core, w, detail);
}

fn note_cut(core: &Core, w: &WorkerEntry, detail: &str) {
    let n = {
        let mut d = w.health.detail.lock().expect("health lock");
        d.consecutive_cuts += 1;
        d.last_error = Some(detail.to_string());
        d.consecutive_cuts
    };
    if n >= EJECT_AFTER_CUTS {
        eject(
            core,
            w,
            Failure::Stream,
            &format!("{n} answers in a row cut: {detail}"),
        );
    } else {
        // Let the prober look now rather than at its next tick.
        w.health.check_now.notify_one();
    }
}

/// Take a worker out of rotation now: no new traffic until a half-open
/// probe passes. Requests already waiting on it keep waiting on their live
/// connections (up to the first-token timeout).
pub(crate) fn eject(core: &Core, w: &WorkerEntry, reason: Failure, detail: &str) {
    let eject = Change::Eject {
        reason,
        detail,
        dead: false,
    };
    core.pool.transition(w, eject);
}

/// The studio is dead (found so below HTTP, or nothing listens): out of
/// rotation, and requests waiting for its first byte move on at once.
pub(crate) fn eject_dead(core: &Core, w: &WorkerEntry, reason: Failure, detail: &str) {
    let eject = Change::Eject {
        reason,
        detail,
        dead: true,
    };
    core.pool.transition(w, eject);
}

/// A probe passed: note what it found, and put the worker (back) into
/// rotation if it was out.
fn admit(core: &Core, w: &WorkerEntry, models: Option<Vec<String>>, rtt: Duration) {
    {
        let mut d = w.health.detail.lock().expect("health lock");
        d.probe_rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
        d.retry_at = None;
        if w.state() != State::Ready {
            d.backoff = Duration::ZERO;
            d.last_error = None;
        }
        if models.is_some() {
            d.models_at = Some(Instant::now());
        }
    }
    if let Some(m) = models {
        w.set_models(m);
    }
    core.pool.transition(w, Change::Admit);
}

/// Probe loop for one worker; ends when the worker is removed or `stop` fires.
pub(super) async fn run(core: Arc<Core>, w: Arc<WorkerEntry>, stop: CancellationToken) {
    let mut traffic = Traffic::new(&core);
    loop {
        match w.state() {
            State::Removed => return,
            State::Starting => {
                // First contact: the model list tells what it serves, and
                // empty requests tell which other APIs it speaks.
                match probe(&core, &w, Probe::Models).await {
                    Ok((models, rtt)) => {
                        discover_apis(&core, &w).await;
                        super::inventory::refresh(&core, &w).await;
                        admit(&core, &w, models, rtt)
                    }
                    Err((reason, detail)) => {
                        w.count_failure(Failure::Probe);
                        eject(&core, &w, reason, &detail);
                        continue;
                    }
                }
            }
            State::Ejected | State::Probing => {
                let retry_at = w.health.detail.lock().expect("health lock").retry_at;
                let wait = retry_at
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                if w.state() != State::Ejected {
                    continue;
                }
                if core.pool.busy_at(&w) > 0 && !w.serves_http_concurrently() {
                    // Requests still inside a one-at-a-time server: the
                    // probe would wait behind them (or end one). Later.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(core.settings().probe_interval) => {}
                    }
                    continue;
                }
                core.pool.transition(&w, Change::Probe);
                // Half-open: the model list and one real token must both
                // work, so a studio that lists models but fails generations
                // stays out.
                match probe(&core, &w, Probe::Readmit).await {
                    Ok((models, rtt)) => admit(&core, &w, models, rtt),
                    Err((reason, detail)) => {
                        eject(&core, &w, reason, &detail);
                    }
                }
                continue;
            }
            State::Ready | State::Draining => {
                check_serving(&core, &w).await;
            }
        }
        // A busy studio is looked at again the moment its answers would
        // count as quiet, and then often (below HTTP, that is cheap): a
        // studio that dies while serving is dropped in about a second.
        let mut interval = core.settings().probe_interval;
        if making_progress(&w) {
            let left = stall_window(&w).saturating_sub(w.health.since_progress());
            interval = interval.min(left + Duration::from_millis(20));
        } else if w.in_flight() > 0 {
            interval = interval.min(QUIET_CHECK);
        }
        let resting = interval >= core.settings().probe_interval && traffic.idle(&core);
        if resting {
            interval = interval.max(IDLE_PROBE_INTERVAL);
        }
        let mut dead = w.health.dead.subscribe();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
            // The first request after a rest: back to the usual cadence.
            Ok(()) = traffic.woken.changed(), if resting => {}
            _ = w.health.check_now.notified() => {}
            // Found dead by live traffic: start the backoff now.
            _ = dead.changed() => {}
        }
    }
}

/// One look at a worker in rotation: leave a serving one alone, probe an
/// idle one over HTTP while holding a slot, and judge a busy one that has
/// gone quiet from below HTTP.
async fn check_serving(core: &Core, w: &Arc<WorkerEntry>) {
    if making_progress(w) {
        return;
    }
    if w.in_flight() > 0 {
        check_quiet(core, w).await;
        return;
    }
    let kind = if w
        .health
        .detail
        .lock()
        .expect("health lock")
        .models_at
        .is_none_or(|t| t.elapsed() > MODELS_REFRESH)
    {
        Probe::Models
    } else {
        Probe::Alive
    };
    // Idle: hold one of its slots, so no request reaches a single-threaded
    // studio while the probe is inside it.
    let Some(slot) = core.pool.try_claim_idle(w) else {
        // A request took it a moment ago: it is serving, not idle.
        return;
    };
    let result = probe(core, w, kind).await;
    if kind == Probe::Models && result.is_ok() {
        // Still holding the slot: what it has loaded, read while idle.
        super::inventory::refresh(core, w).await;
    }
    drop(slot);
    match result {
        Ok((models, rtt)) => admit(core, w, models, rtt),
        Err((reason, detail)) => {
            w.count_failure(Failure::Probe);
            // Nothing waits on an idle studio; a dead one is marked so.
            if matches!(reason, Failure::Connect | Failure::Timeout) {
                eject_dead(core, w, reason, &detail);
            } else {
                eject(core, w, reason, &detail);
            }
        }
    }
}

/// A studio with requests in flight has sent nothing for a while: a long
/// prefill, or a dead host? Asked below HTTP only (see [`super::liveness`]).
async fn check_quiet(core: &Core, w: &WorkerEntry) {
    let mut heard = false;
    for t in w.upstream.peers() {
        match t.peer() {
            Peer::Gone(why) => {
                w.count_failure(Failure::Timeout);
                eject_dead(core, w, Failure::Timeout, &format!("TCP: {why}"));
                return;
            }
            Peer::Heard => heard = true,
            Peer::Unknown => {}
        }
    }
    if heard {
        return;
    }
    // Nothing to go by on its connections: a bare connect, at most once
    // per probe interval.
    let settings = core.settings();
    {
        let mut d = w.health.detail.lock().expect("health lock");
        if d.connect_checked_at
            .is_some_and(|t| t.elapsed() < settings.probe_interval)
        {
            return;
        }
        d.connect_checked_at = Some(Instant::now());
    }
    let (reason, detail) = match w.upstream.connect_check(settings.connect_timeout).await {
        Ok(()) => return,
        Err(SendError::Connect(kind, detail)) => (
            Failure::Connect,
            format!("connect {}: {detail}", kind.describe()),
        ),
        Err(SendError::ConnectTimeout(t)) => {
            (Failure::Timeout, format!("connect timed out after {t:?}"))
        }
        Err(SendError::Request(detail)) => (Failure::Connect, detail),
    };
    // Its answers may have started flowing while we waited.
    if reason == Failure::Timeout && making_progress(w) {
        return;
    }
    w.count_failure(reason);
    eject_dead(core, w, reason, &detail);
}
